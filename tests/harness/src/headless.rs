//! One sample region run in this process, without a network: simulated players feed it inputs at
//! 20 Hz and the run reports tick times, inputs applied and the world's digest (the `headless`
//! binary, and the in-process tests that need players).
//!
//! It measures the game, not Baton's moving parts; it lives here, out of the game, because it is a
//! tool around the game like the rest of the harness.

use baton_sdk::region::TickSchedule;
use baton_sdk::wire::{PlayerId, PlayerInput, RegionId};
use baton_sdk::{Region, RegionConfig};
use sample_region_server::{SampleLogic, WorldSpec, join_avatar, new_region, populate, walk_payload};

/// Simulated players: each sends inputs at `inputs_per_second` with payloads of 256-512 bytes,
/// walking a random walk. Deterministic for a seed.
#[derive(Clone, Debug)]
pub struct SimulatedPlayers {
    rng: fastrand::Rng,
    players: Vec<SimulatedPlayer>,
    inputs_per_second: u32,
    tick_rate_hz: u32,
}

#[derive(Clone, Debug)]
struct SimulatedPlayer {
    id: PlayerId,
    next_seq: u64,
    heading: f32,
}

impl SimulatedPlayers {
    /// `count` players with ids `first_id..`, joined to `region` at random places.
    pub fn join(
        region: &mut Region<SampleLogic>,
        count: usize,
        first_id: u64,
        inputs_per_second: u32,
        seed: u64,
    ) -> Result<SimulatedPlayers, anyhow::Error> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut players = Vec::with_capacity(count);
        for index in 0..count {
            let id = PlayerId(first_id + index as u64);
            let position = [(rng.f32() * 2.0 - 1.0) * 100.0, (rng.f32() * 2.0 - 1.0) * 100.0];
            join_avatar(region, id, position)?;
            players.push(SimulatedPlayer { id, next_seq: 1, heading: rng.f32() * std::f32::consts::TAU });
        }
        Ok(SimulatedPlayers { rng, players, inputs_per_second, tick_rate_hz: region.config().tick_rate_hz })
    }

    /// The inputs every player sends during tick `tick` (spreading `inputs_per_second` evenly).
    pub fn inputs_for_tick(&mut self, tick: u64) -> Vec<PlayerInput> {
        let rate = u64::from(self.inputs_per_second);
        let ticks = u64::from(self.tick_rate_hz.max(1));
        let due = ((tick + 1) * rate / ticks) - (tick * rate / ticks);
        let mut inputs = Vec::with_capacity(self.players.len() * due as usize);
        for player in &mut self.players {
            for _ in 0..due {
                player.heading += (self.rng.f32() - 0.5) * 0.6;
                let walk =
                    if self.rng.u8(..10) == 0 { [0.0, 0.0] } else { [player.heading.cos(), player.heading.sin()] };
                let length = 256 + self.rng.usize(..=256);
                let payload = walk_payload(walk, length, &mut self.rng);
                inputs.push(PlayerInput { player: player.id, seq: player.next_seq, payload });
                player.next_seq += 1;
            }
        }
        inputs
    }

    /// Number of inputs sent so far, over all players.
    #[must_use]
    pub fn inputs_sent(&self) -> u64 {
        self.players.iter().map(|player| player.next_seq - 1).sum()
    }
}

/// What a headless run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HeadlessSummary {
    /// Ticks run.
    pub ticks: u64,
    /// Live entities at the end.
    pub entities: usize,
    /// Script components at the end.
    pub scripts: usize,
    /// Physics bodies at the end.
    pub bodies: usize,
    /// Tick durations in milliseconds.
    pub tick_ms: Percentiles,
    /// The world digest at the end, hex.
    pub digest: String,
    /// Inputs the simulated players sent.
    pub inputs_sent: u64,
    /// Inputs the region applied.
    pub inputs_applied: u64,
    /// Ticks that started more than half an interval late.
    pub late_ticks: u64,
    /// Largest number of physics bodies awake after a step.
    pub awake_bodies_max: usize,
}

/// Percentiles of a measurement.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of a histogram of microseconds, in milliseconds.
    #[must_use]
    pub fn from_micros(histogram: &hdrhistogram::Histogram<u64>) -> Percentiles {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Percentiles {
            p50: ms(histogram.value_at_quantile(0.50)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

/// Options of a headless run.
#[derive(Clone, Copy, Debug)]
pub struct HeadlessOptions {
    /// How long to run, in seconds of wall time (or simulated time when `paced` is false).
    pub seconds: f64,
    /// The world to build.
    pub spec: WorldSpec,
    /// Simulated players.
    pub avatars: usize,
    /// Inputs per second per player.
    pub inputs_per_second: u32,
    /// Region settings.
    pub config: RegionConfig,
    /// Sleep between ticks to hold the tick rate (false: run ticks back to back).
    pub paced: bool,
    /// Print a progress line to standard error every 5 s of simulated time.
    pub progress: bool,
}

/// Runs a populated sample region with simulated players and reports what it measured.
pub fn run_headless(options: HeadlessOptions) -> Result<HeadlessSummary, anyhow::Error> {
    let mut region = new_region(RegionId(1), options.config)?;
    populate(&mut region, options.spec)?;
    let mut players =
        SimulatedPlayers::join(&mut region, options.avatars, 1, options.inputs_per_second, options.spec.seed ^ 0x5eed)?;
    let interval = options.config.tick_interval();
    let total_ticks = (options.seconds * f64::from(options.config.tick_rate_hz)).round().max(0.0) as u64;
    let mut tick_micros = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut schedule = TickSchedule::new(interval, std::time::Instant::now());
    let mut inputs_applied = 0u64;
    let mut late_ticks = 0u64;
    let mut awake_bodies_max = 0usize;
    for _ in 0..total_ticks {
        if options.paced {
            let now = std::time::Instant::now();
            if let Some(wait) = schedule.next_due().checked_duration_since(now) {
                std::thread::sleep(wait);
            }
            let timing = schedule.start_tick(std::time::Instant::now());
            if timing.late_by > interval / 2 {
                late_ticks += 1;
                baton_sdk::events::tick_overrun(region.id(), region.world().tick(), timing.late_by);
            }
        }
        for input in players.inputs_for_tick(region.world().tick()) {
            region.submit_input(input)?;
        }
        let report = region.tick();
        inputs_applied += report.applied.len() as u64;
        awake_bodies_max = awake_bodies_max.max(report.physics.awake);
        tick_micros.record((report.duration.as_micros() as u64).max(1))?;
        let progress_every = u64::from(options.config.tick_rate_hz) * 5;
        if options.progress && report.tick % progress_every == 0 {
            eprintln!(
                "  {:>5} s  tick {:>6}/{total_ticks}  tick p99 {:.2} ms  awake bodies {}  inputs applied {inputs_applied}",
                report.tick / u64::from(options.config.tick_rate_hz),
                report.tick,
                tick_micros.value_at_quantile(0.99) as f64 / 1000.0,
                report.physics.awake,
            );
        }
    }
    let world = region.world_mut();
    let digest = world.digest().to_string();
    Ok(HeadlessSummary {
        ticks: total_ticks,
        entities: world.entity_count(),
        scripts: world.count::<baton_sdk::scripts::Script>(),
        bodies: world.count::<baton_sdk::physics::Body>(),
        tick_ms: Percentiles::from_micros(&tick_micros),
        digest,
        inputs_sent: players.inputs_sent(),
        inputs_applied,
        late_ticks,
        awake_bodies_max,
    })
}
