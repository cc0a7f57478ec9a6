//! `handoff-bench`: moves a busy region between two `sample-region-server --serve` processes on
//! loopback, again and again, and prints one JSON object with what it measured.
//!
//! The region holds `--entities` entities (or `--state-mb` of them) of which `--dirty` change every
//! tick at 30 Hz, or with `--world sample` the sample game's world at the size of a real game
//! server (10,000 physics objects, 500 scripted NPCs, 1,000 plants), plus `--avatars` players
//! sending 20 inputs/s. `source_ticks` in the JSON compares the source's ticks before and during
//! the handoffs. Run it from a release build:
//! `cargo run --release -p baton-harness --bin handoff-bench -- --entities 10000 --dirty 0.05 --handoffs 20`

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use baton_harness::cluster::{CHURN_BYTES_PER_ENTITY, Cluster, HandoffOutcome, server_binary, world_object};
use baton_wire::serve::TickSamples;
use clap::Parser;
use sample_region_server::game::WorldRequest;
use serde_json::json;

/// Benchmark live handoffs between two region-server processes.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// What the region holds: `churn` entities that only change (`--entities`, `--dirty`), or the
    /// sample game's world at a real game server's size (`sample`: 10,000 physics objects, 500
    /// scripted NPCs, 1,000 plants; `--entities` and `--state-mb` do not apply).
    #[arg(long, value_enum, default_value_t = BenchWorld::Churn)]
    world: BenchWorld,
    /// Churn entities in the region (each with 48 bytes of state that can change); 10,000 when
    /// neither this nor `--state-mb` is given.
    #[arg(long, conflicts_with = "state_mb")]
    entities: Option<usize>,
    /// Size of the churn region's state in MB of snapshot: entities = MB x 1,000,000 / 67 (a
    /// million churn entities snapshot to 67.6 MB; smaller regions take 64-66 bytes each, so this
    /// is good to about 5%; the JSON's `bytes.snapshot` says what was moved).
    #[arg(long)]
    state_mb: Option<u64>,
    /// Fraction of the churn entities that change every tick (0 to 1; default 0.05).
    #[arg(long)]
    dirty: Option<f64>,
    /// Handoffs to run (alternating between the two processes).
    #[arg(long, default_value_t = 20)]
    handoffs: usize,
    /// Players sending 20 inputs/s each.
    #[arg(long, default_value_t = 50)]
    avatars: u64,
    /// Bulk bandwidth a handoff may use, MB/s.
    #[arg(long, default_value_t = 50)]
    bulk_mbps: u64,
    /// The freeze a handoff aims at, ms (the servers' --max-freeze-ms; up to four times this once
    /// the rounds stop shrinking).
    #[arg(long, default_value_t = 2.0)]
    max_freeze_ms: f64,
    /// Whether the servers' links compress the state they stream (`auto` or `off`: the servers'
    /// --bulk-compression).
    #[arg(long, default_value = "auto")]
    bulk_compression: String,
    /// Seconds of play between handoffs.
    #[arg(long, default_value_t = 0.5)]
    pause: f64,
    /// Physics objects of a second region that stays on the first process the whole time (its
    /// late ticks show whether moving one region disturbs another); 0 for none.
    #[arg(long, default_value_t = 2000)]
    bystander_objects: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BenchWorld {
    /// Entities that only carry churn state.
    Churn,
    /// The sample game's world at a real game server's size.
    Sample,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("handoff-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn percentile(sorted: &[f64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * quantile).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if cli.world == BenchWorld::Sample && cli.dirty.is_some() {
        anyhow::bail!("--dirty sets how many churn entities change; --world sample has none");
    }
    let dirty = cli.dirty.unwrap_or(0.05);
    if !(0.0..=1.0).contains(&dirty) {
        anyhow::bail!("--dirty must be within 0..=1");
    }
    if cli.handoffs == 0 {
        anyhow::bail!("--handoffs must be at least 1");
    }
    let entities = match (cli.world, cli.entities, cli.state_mb) {
        (BenchWorld::Sample, Some(_), _) | (BenchWorld::Sample, _, Some(_)) => {
            anyhow::bail!("--entities and --state-mb size a churn world; --world sample has a fixed size")
        }
        (BenchWorld::Sample, None, None) => 0,
        (BenchWorld::Churn, Some(0), _) => anyhow::bail!("--entities must be at least 1"),
        (BenchWorld::Churn, Some(entities), _) => entities,
        (BenchWorld::Churn, None, Some(0)) => anyhow::bail!("--state-mb must be at least 1"),
        (BenchWorld::Churn, None, Some(mb)) => (mb * 1_000_000 / CHURN_BYTES_PER_ENTITY) as usize,
        (BenchWorld::Churn, None, None) => 10_000,
    };
    let world = match cli.world {
        BenchWorld::Churn => WorldRequest { churn: entities, seed: Some(1), ..WorldRequest::default() },
        BenchWorld::Sample => WorldRequest { objects: 10_000, npcs: 500, plants: 1_000, churn: 0, seed: Some(1) },
    };
    let binary = server_binary()?;
    let extra = vec![
        "--dirty".to_owned(),
        dirty.to_string(),
        "--bulk-mbps".to_owned(),
        cli.bulk_mbps.to_string(),
        "--max-freeze-ms".to_owned(),
        cli.max_freeze_ms.to_string(),
        "--bulk-compression".to_owned(),
        cli.bulk_compression.clone(),
    ];
    let mut cluster = Cluster::start(&binary, 2, &extra).context("starting two region servers")?;
    cluster.host(&world_object(world), cli.avatars)?;
    const BYSTANDER: u64 = 2;
    if cli.bystander_objects > 0 {
        let world = WorldRequest { objects: cli.bystander_objects, npcs: 200, plants: 200, churn: 0, seed: Some(2) };
        cluster.host_other(0, BYSTANDER, &world_object(world))?;
    }
    cluster.play(Duration::from_secs(1))?;
    let bystander_before = if cli.bystander_objects > 0 { Some(cluster.report(0, BYSTANDER)?) } else { None };
    let mut outcomes: Vec<HandoffOutcome> = Vec::new();
    let mut digest_mismatches = 0;
    let mut aborts = Vec::new();
    for index in 0..cli.handoffs {
        let to = 1 - cluster.owner;
        let outcome = cluster.handoff(to, Duration::from_secs(120))?;
        if let Some(reason) = &outcome.aborted {
            if reason.contains("digest") {
                digest_mismatches += 1;
            }
            aborts.push(reason.clone());
        }
        if let Some(reason) = &outcome.aborted {
            eprintln!("handoff {:>3}/{}: aborted: {reason}", index + 1, cli.handoffs);
        } else {
            eprintln!(
                "handoff {:>3}/{}: committed, freeze {:.2} ms, total {:.1} ms, {} rounds, tick gap {:.1} ms, {} kB changed a tick, delivery {}, waited {:.0} ms, engines waited {:.0} ms",
                index + 1,
                cli.handoffs,
                outcome.freeze_us as f64 / 1000.0,
                outcome.total_us as f64 / 1000.0,
                outcome.rounds,
                outcome.tick_gap_us as f64 / 1000.0,
                outcome.change_bytes_per_tick / 1000,
                match outcome.delivery_bytes_per_second {
                    0 => "not measured".to_owned(),
                    rate => format!("{:.1} MB/s", rate as f64 / 1e6),
                },
                outcome.waited_us as f64 / 1000.0,
                outcome.engines_waited_us as f64 / 1000.0
            );
        }
        outcomes.push(outcome);
        cluster.play(Duration::from_secs_f64(cli.pause))?;
    }
    let settled = cluster.settle_and_check()?;
    let (lost, duplicated) = (settled.lost, settled.applied_twice);
    let bystander = match bystander_before {
        Some(before) => {
            let after = cluster.report(0, BYSTANDER)?;
            let ticks = after.tick.saturating_sub(before.tick);
            let late = after.late_ticks.saturating_sub(before.late_ticks);
            json!({"objects": cli.bystander_objects, "ticks": ticks, "late_ticks": late})
        }
        None => json!(null),
    };
    let committed: Vec<&HandoffOutcome> = outcomes.iter().filter(|outcome| outcome.committed).collect();
    let sorted = |values: Vec<f64>| {
        let mut values = values;
        values.sort_by(f64::total_cmp);
        values
    };
    let freeze = sorted(committed.iter().map(|outcome| outcome.freeze_us as f64 / 1000.0).collect());
    let total = sorted(committed.iter().map(|outcome| outcome.total_us as f64 / 1000.0).collect());
    let rounds = sorted(committed.iter().map(|outcome| outcome.rounds as f64).collect());
    let delivery = sorted(
        committed
            .iter()
            .filter(|outcome| outcome.delivery_bytes_per_second > 0)
            .map(|outcome| outcome.delivery_bytes_per_second as f64 / 1e6)
            .collect(),
    );
    let waited = sorted(committed.iter().map(|outcome| outcome.waited_us as f64 / 1000.0).collect());
    let engines_waited = sorted(committed.iter().map(|outcome| outcome.engines_waited_us as f64 / 1000.0).collect());
    // Every committed handoff's source ticks, pooled: those it ran before each handoff and those
    // during it (to its freeze). Busy is the region thread's time from a tick's start to its
    // updates, late how long after its due time it started, handoff the handoff's work after it,
    // after the rest of the work that waited for its updates (a checkpoint, a standby's round).
    type Pick = fn(&HandoffOutcome) -> &TickSamples;
    type Field = fn(&TickSamples) -> &Vec<u32>;
    let pooled = |pick: Pick, field: Field| {
        sorted(
            committed
                .iter()
                .flat_map(|outcome| field(pick(outcome)).iter().map(|us| f64::from(*us) / 1000.0))
                .collect(),
        )
    };
    let figures = |values: &[f64]| json!({"p50": percentile(values, 0.5), "p99": percentile(values, 0.99), "max": values.last().copied().unwrap_or(0.0)});
    let tick_figures = |pick: Pick| {
        let busy = pooled(pick, |samples| &samples.busy_us);
        json!({
            "ticks": busy.len(),
            "busy_ms": figures(&busy),
            "late_ms": figures(&pooled(pick, |samples| &samples.late_us)),
            "handoff_ms": figures(&pooled(pick, |samples| &samples.handoff_us)),
            "after_ms": figures(&pooled(pick, |samples| &samples.after_us)),
        })
    };
    let busy_p99 = |pick: Pick| percentile(&pooled(pick, |samples| &samples.busy_us), 0.99);
    let (before_p99, during_p99) =
        (busy_p99(|outcome| &outcome.ticks.before), busy_p99(|outcome| &outcome.ticks.during));
    let source_ticks = json!({
        "before": tick_figures(|outcome| &outcome.ticks.before),
        "during": tick_figures(|outcome| &outcome.ticks.during),
        "busy_p99_rise": if before_p99 > 0.0 { json!(during_p99 / before_p99 - 1.0) } else { json!(null) },
    });
    let interval_us = cluster.tick_interval.as_micros() as u64;
    let missed_ticks = committed.iter().filter(|outcome| outcome.tick_gap_us > interval_us * 3 / 2).count();
    let mean = |pick: fn(&HandoffOutcome) -> u64| {
        if committed.is_empty() {
            0
        } else {
            committed.iter().map(|outcome| pick(outcome)).sum::<u64>() / committed.len() as u64
        }
    };
    let report = json!({
        "world": format!("{:?}", cli.world).to_lowercase(),
        "entities": entities,
        "dirty": if cli.world == BenchWorld::Churn { json!(dirty) } else { json!(null) },
        "objects": world.objects,
        "npcs": world.npcs,
        "plants": world.plants,
        "handoffs": cli.handoffs,
        "committed": committed.len(),
        "freeze_ms": {"p50": percentile(&freeze, 0.5), "p99": percentile(&freeze, 0.99), "max": freeze.last().copied().unwrap_or(0.0)},
        "total_ms": {"p50": percentile(&total, 0.5), "p99": percentile(&total, 0.99)},
        "rounds": {"p50": percentile(&rounds, 0.5), "max": rounds.last().copied().unwrap_or(0.0)},
        "delivery_mb_s": {"p50": percentile(&delivery, 0.5), "min": delivery.first().copied().unwrap_or(0.0)},
        "waited_ms": {"max": waited.last().copied().unwrap_or(0.0)},
        "engines_waited_ms": {"max": engines_waited.last().copied().unwrap_or(0.0)},
        "bytes": {"snapshot": mean(|outcome| outcome.snapshot_bytes), "deltas": mean(|outcome| outcome.delta_bytes), "final": mean(|outcome| outcome.final_bytes)},
        "digest_mismatches": digest_mismatches,
        "inputs_lost": lost,
        "inputs_duplicated": duplicated,
        "missed_ticks": missed_ticks,
        "aborts": aborts,
        "bystander": bystander,
        "source_ticks": source_ticks,
    });
    println!("{report}");
    Ok(())
}
