//! A short scenario end to end: a deployment on loopback, avatars that wander and patrol, a
//! migration through the admin API, the same again with the move done the old way (the restart
//! baseline), and a report whose numbers add up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::AtomicBool;

use baton_loadtest::{RunOptions, Scenario};

#[test]
fn a_short_scenario_measures_what_players_felt_and_writes_its_reports() {
    let scenario: Scenario = toml::from_str(
        r#"
        name = "smoke"
        avatars = 24
        duration_s = 8
        ramp_s = 2
        hosts = 2
        regions = 4
        columns = 2
        objects_per_region = 40
        [movement]
        random_walk = 0.5
        border_patrol = 0.5
        [[events]]
        at_s = 4
        migrate = { region = 1, to = "h2" }
        [slo]
        update_gap_p99_ms = 10000
        rtt_p99_ms = 10000
        "#,
    )
    .unwrap();
    let report = baton_loadtest::run(
        &scenario,
        &RunOptions { avatars: None, seconds: None, quiet: true, baseline: true },
        &AtomicBool::new(false),
    )
    .unwrap();
    eprint!("{}", report.summary());
    assert_eq!(report.avatars, 24);
    assert!(report.inputs_sent > 0);
    assert_eq!(report.inputs_acked, report.inputs_sent, "every input sent was acknowledged");
    assert_eq!(report.inputs_lost, 0);
    assert_eq!(report.inputs_duplicated, 0);
    assert_eq!(report.disconnects, 0);
    // How long the gaps are is the benchmarks' business (docs/benchmarks.md); that they are
    // measured is this test's.
    assert!(report.update_gap_ms.count > 0, "{:?}", report.update_gap_ms);
    assert!(report.rtt_ms.count as u64 >= report.inputs_acked / 2, "{:?}", report.rtt_ms);
    let moves: Vec<_> = report.handoffs.iter().filter(|handoff| handoff.kind == "migration").collect();
    assert_eq!(moves.len(), 1, "{:?}", report.handoffs);
    assert_eq!(
        (moves[0].region, moves[0].from.as_str(), moves[0].to.as_str(), moves[0].outcome.as_str()),
        (1, "h1", "h2", "committed")
    );
    assert!(moves[0].freeze_ms.is_some_and(|freeze| freeze > 0.0));
    let crossings: Vec<_> = report.handoffs.iter().filter(|handoff| handoff.kind == "crossing").collect();
    assert!(!crossings.is_empty(), "patrolling avatars cross borders");
    // A crossing's transit, as its player saw it: from the old region's last update to the new one's first.
    let timed = crossings.iter().filter(|crossing| crossing.freeze_ms.is_some_and(|ms| ms > 0.0)).count();
    assert!(timed * 10 >= crossings.len() * 9, "{timed} of {} crossings timed", crossings.len());
    assert!(!report.seconds.is_empty() && !report.hosts.is_empty());

    // The restart baseline: the same move done the old way disconnects the region's players,
    // who log in again; what the region applied is kept, nothing is applied twice.
    let baseline = report.baseline.as_deref().expect("the scenario moves a region: a baseline ran");
    eprint!("{}", baseline.summary());
    assert_eq!((report.mode.as_str(), baseline.mode.as_str()), ("baton", "restart"));
    let restarts: Vec<_> = baseline.moves().collect();
    assert_eq!(restarts.len(), 1, "{:?}", baseline.handoffs);
    assert_eq!(
        (restarts[0].region, restarts[0].from.as_str(), restarts[0].to.as_str(), restarts[0].outcome.as_str()),
        (1, "h1", "h2", "committed")
    );
    let down = restarts[0].freeze_ms.unwrap();
    assert!(down > 0.0, "the region's downtime is measured");
    assert!(baseline.disconnects > 0 && baseline.relogins > 0, "region 1's players were disconnected");
    assert!(baseline.offline_ms.count > 0, "every relogin's time offline is measured: {:?}", baseline.offline_ms);
    assert_eq!(baseline.inputs_duplicated, 0);
    assert_eq!(baseline.failed_to_connect, 0);
    let rows = baton_loadtest::report::comparison(&report, baseline);
    assert!(
        rows.iter().any(|(name, baton, restart)| name == "disconnects" && baton == "0" && restart != "0"),
        "{rows:?}"
    );

    let out = std::env::temp_dir().join(format!("baton-loadtest-smoke-{}", std::process::id()));
    let (json, html) = report.write(&out).unwrap();
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    for field in [
        "scenario",
        "avatars",
        "duration_s",
        "inputs_sent",
        "inputs_acked",
        "inputs_lost",
        "inputs_duplicated",
        "disconnects",
        "rtt_ms",
        "update_gap_ms",
        "handoffs",
        "slo_ok",
    ] {
        assert!(written.get(field).is_some(), "report.json lacks {field}");
    }
    for field in ["p50", "p99", "p999", "max"] {
        assert!(written["rtt_ms"].get(field).is_some() && written["update_gap_ms"].get(field).is_some());
    }
    for field in ["scenario", "inputs_lost", "disconnects", "update_gap_ms", "handoffs", "slo_ok"] {
        assert!(written["baseline"].get(field).is_some(), "report.json's baseline lacks {field}");
    }
    assert_eq!(written["baseline"]["mode"], "restart");
    let page = std::fs::read_to_string(html).unwrap();
    assert!(page.matches("<svg").count() >= 5, "four charts and the side-by-side one");
    assert!(page.contains("restart baseline"), "the side-by-side table");
    assert!(page.contains("Update gap per second") && page.contains("<text"), "charts carry their text");
    let _ = std::fs::remove_dir_all(out);

    // A violated SLO is reported as such.
    let mut strict = report.clone();
    strict.slo.update_gap_p99_ms = 1.0;
    strict.judge();
    assert!(!strict.slo_ok && strict.slo_violations[0].contains("update gap p99"), "{:?}", strict.slo_violations);
}
