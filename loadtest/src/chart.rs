//! `report.html`: one self-contained page (inline SVG charts drawn with plotters, text in the
//! bundled DejaVu Sans, no scripts, nothing fetched): the summary, update gap over time with the
//! region moves marked, round-trip percentiles over time, each host's load, and with the balancer
//! on, each host's load over its capacity and the hosts in use with its decisions marked.

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::report::Report;

/// The font plotters lays text out with (DejaVu Sans, bundled: see `assets/DejaVuSans.LICENSE`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// A line of a chart: its name, colour and points.
type Line = (String, RGBColor, Vec<(f64, f64)>);

/// Renders the report as HTML.
pub fn html(report: &Report) -> anyhow::Result<String> {
    // Registering twice (several reports in one process) is harmless.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let end = report.duration_s as f64 + 5.0;
    let markers: Vec<(f64, String)> = report
        .handoffs
        .iter()
        .filter(|handoff| handoff.kind != "crossing")
        .map(|handoff| (handoff.at_s, format!("{} r{}", handoff.kind, handoff.region)))
        .collect();
    let gap = chart(
        "Update gap per second (ms): p99 and max; grey lines: region moves",
        end,
        &[
            (
                "p99".into(),
                BLUE,
                report.seconds.iter().map(|second| (second.at_s as f64, second.update_gap_ms.p99)).collect(),
            ),
            (
                "max".into(),
                RED,
                report.seconds.iter().map(|second| (second.at_s as f64, second.update_gap_ms.max)).collect(),
            ),
        ],
        &markers,
    )?;
    let rtt = chart(
        "Input round trip per second (ms): p50, p99",
        end,
        &[
            (
                "p50".into(),
                GREEN,
                report.seconds.iter().map(|second| (second.at_s as f64, second.rtt_ms.p50)).collect(),
            ),
            ("p99".into(), BLUE, report.seconds.iter().map(|second| (second.at_s as f64, second.rtt_ms.p99)).collect()),
        ],
        &markers,
    )?;
    let mut host_names: Vec<&str> = report.hosts.iter().map(|sample| sample.host.as_str()).collect();
    host_names.sort_unstable();
    host_names.dedup();
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    let lines_of = |value: fn(&crate::report::HostSample) -> f64| -> Vec<Line> {
        host_names
            .iter()
            .enumerate()
            .map(|(index, host)| {
                let points = report
                    .hosts
                    .iter()
                    .filter(|sample| sample.host == *host)
                    .map(|sample| (sample.at_s, value(sample)))
                    .collect();
                ((*host).to_owned(), palette[index % palette.len()], points)
            })
            .collect()
    };
    let cpu = chart("CPU of each host's region servers (cores)", end, &lines_of(|sample| sample.cpu_cores), &markers)?;
    let players = chart("Players on each host", end, &lines_of(|sample| sample.players as f64), &markers)?;

    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Baton load test: {name}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}.bad{{color:#b00}}.good{{color:#070}}</style>\
         </head><body><h1>Baton load test: {name}</h1>",
        name = escape(&report.scenario)
    );
    let verdict = if report.slo_ok {
        "<p class=\"good\"><b>SLO met.</b></p>".to_owned()
    } else {
        format!("<p class=\"bad\"><b>SLO violated:</b> {}</p>", escape(&report.slo_violations.join("; ")))
    };
    page.push_str(&verdict);
    let _ = write!(
        page,
        "<table><tr><th>avatars</th><th>seconds</th><th>inputs sent</th><th>acknowledged</th><th>lost</th>\
         <th>applied twice</th><th>disconnects</th><th>update gap p50 / p99 / p99.9 / max ms</th>\
         <th>round trip p50 / p99 / p99.9 / max ms</th></tr><tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{:.1} / {:.1} / {:.1} / {:.1}</td><td>{:.1} / {:.1} / {:.1} / {:.1}</td></tr></table>",
        report.avatars,
        report.duration_s,
        report.inputs_sent,
        report.inputs_acked,
        report.inputs_lost,
        report.inputs_duplicated,
        report.disconnects,
        report.update_gap_ms.p50,
        report.update_gap_ms.p99,
        report.update_gap_ms.p999,
        report.update_gap_ms.max,
        report.rtt_ms.p50,
        report.rtt_ms.p99,
        report.rtt_ms.p999,
        report.rtt_ms.max,
    );
    for svg in [gap, rtt, cpu, players] {
        page.push_str("<div>");
        page.push_str(&svg);
        page.push_str("</div>");
    }
    if let Some(balancer) = &report.balancer {
        balancer_section(&mut page, balancer, end)?;
    }
    page.push_str("<h2>Region moves</h2>");
    moves_table(&mut page, report, "freeze ms");
    let crossings = report.handoffs.iter().filter(|handoff| handoff.kind == "crossing").count();
    let worst_crossing = report
        .handoffs
        .iter()
        .filter(|handoff| handoff.kind == "crossing")
        .map(|handoff| handoff.max_player_gap_ms)
        .fold(0.0, f64::max);
    let _ = write!(
        page,
        "<p>{crossings} border crossings; the worst gap a crossing player saw within a second of \
         crossing: {worst_crossing:.0} ms.</p><p>Definitions: the update gap is the time between two state \
         updates a player receives; the round trip is from sending an input to the first update that \
         acknowledges it (it includes the wait for the next tick).</p>"
    );
    if let Some(baseline) = &report.baseline {
        page.push_str(
            "<h2>Baton against the restart baseline</h2><p>The same scenario on a fresh deployment, with \
             each move done the old way: stop the region (its host saves it), start it on the new host \
             from the save; its players are disconnected and log in again every 250 ms until it runs.</p>\
             <table><tr><th></th><th>Baton</th><th>restart</th></tr>",
        );
        for (name, baton, restart) in crate::report::comparison(report, baseline) {
            let _ = write!(
                page,
                "<tr><td style=\"text-align:left\">{}</td><td>{}</td><td>{}</td></tr>",
                escape(&name),
                escape(&baton),
                escape(&restart)
            );
        }
        page.push_str("</table>");
        let per_second = |report: &Report| -> Vec<(f64, f64)> {
            report.seconds.iter().map(|second| (second.at_s as f64, second.update_gap_ms.max)).collect()
        };
        let side_by_side = chart(
            "Longest update gap per second (ms): Baton and the restart baseline; grey lines: moves",
            end.max(baseline.duration_s as f64 + 5.0),
            &[("Baton".into(), BLUE, per_second(report)), ("restart".into(), RED, per_second(baseline))],
            &markers,
        )?;
        let _ = write!(page, "<div>{side_by_side}</div><h3>Moves in the restart baseline</h3>");
        moves_table(&mut page, baseline, "down ms");
    }
    page.push_str("</body></html>");
    Ok(page)
}

/// The balancer's charts (each host's load over its capacity, hosts in use; its decisions
/// marked) and its decisions.
fn balancer_section(page: &mut String, balancer: &crate::report::BalancerReport, end: f64) -> anyhow::Result<()> {
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    let decisions: Vec<(f64, String)> =
        balancer.decisions.iter().map(|decision| (decision.at_s, decision.kind.clone())).collect();
    let loads: Vec<Line> = balancer
        .host_load
        .iter()
        .enumerate()
        .map(|(index, (host, load))| {
            let points = load.iter().enumerate().skip(1).map(|(second, share)| (second as f64, *share)).collect();
            (host.clone(), palette[index % palette.len()], points)
        })
        .collect();
    let load =
        chart("Each host's CPU over its declared capacity; grey lines: balancer decisions", end, &loads, &decisions)?;
    let in_use = chart(
        "Hosts in use; grey lines: balancer decisions",
        end,
        &[(
            "hosts in use".into(),
            BLUE,
            balancer
                .hosts_in_use
                .iter()
                .enumerate()
                .skip(1)
                .map(|(second, hosts)| (second as f64, *hosts as f64))
                .collect(),
        )],
        &decisions,
    )?;
    let _ = write!(page, "<h2>Balancer ({})</h2><div>{load}</div><div>{in_use}</div>", escape(&balancer.mode));
    page.push_str(
        "<table><tr><th>at s</th><th>decision</th><th>region</th><th>from / host</th><th>to</th><th>why</th>\
         <th>outcome</th></tr>",
    );
    for decision in &balancer.decisions {
        let _ = write!(
            page,
            "<tr><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td style=\"text-align:left\">{}</td>\
             <td>{}</td></tr>",
            decision.at_s,
            escape(&decision.kind),
            decision.region.map_or("-".into(), |region| region.to_string()),
            escape(&decision.from),
            escape(&decision.to),
            escape(&decision.reason),
            escape(&decision.outcome),
        );
    }
    page.push_str("</table>");
    Ok(())
}

/// The table of a report's region moves.
fn moves_table(page: &mut String, report: &Report, frozen: &str) {
    let _ = write!(
        page,
        "<table><tr><th>at s</th><th>kind</th><th>region</th><th>from</th><th>to</th>\
         <th>outcome</th><th>{frozen}</th><th>worst player gap ms</th></tr>"
    );
    for handoff in report.moves() {
        let _ = write!(
            page,
            "<tr><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td></tr>",
            handoff.at_s,
            escape(&handoff.kind),
            handoff.region,
            escape(&handoff.from),
            escape(&handoff.to),
            escape(&handoff.outcome),
            handoff.freeze_ms.map_or("-".into(), |ms| format!("{ms:.1}")),
            handoff.max_player_gap_ms
        );
    }
    page.push_str("</table>");
}

/// One line chart as an SVG string, with vertical markers.
fn chart(title: &str, end: f64, lines: &[Line], markers: &[(f64, String)]) -> anyhow::Result<String> {
    let top =
        lines.iter().flat_map(|(_, _, points)| points.iter().map(|(_, y)| *y)).fold(0.0f64, f64::max).max(1.0) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(|error| anyhow::anyhow!("drawing: {error}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..end, 0.0..top)
            .map_err(|error| anyhow::anyhow!("drawing: {error}"))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|error| anyhow::anyhow!("drawing: {error}"))?;
        for (at, _) in markers {
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(*at, 0.0), (*at, top)], BLACK.mix(0.25))))
                .map_err(|error| anyhow::anyhow!("drawing: {error}"))?;
        }
        for (name, colour, points) in lines {
            let colour = *colour;
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour))
                .map_err(|error| anyhow::anyhow!("drawing: {error}"))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|error| anyhow::anyhow!("drawing: {error}"))?;
        root.present().map_err(|error| anyhow::anyhow!("drawing: {error}"))?;
    }
    Ok(svg)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
