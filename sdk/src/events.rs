//! The catalogue of the SDK's observable events.
//!
//! Every event is declared here once: its tracing record and the metric it feeds. Code elsewhere
//! calls these functions instead of naming metrics, so names stay consistent (Prometheus style:
//! base units, `_total` for counters) and every metric is described in one place ([`describe`]).

use std::time::Duration;

use baton_wire::RegionId;

use crate::world::EntityId;

/// Histogram: time to run one tick, in seconds. Label: `region`.
pub const TICK_DURATION_SECONDS: &str = "baton_tick_duration_seconds";
/// Counter: ticks run. Label: `region`.
pub const TICKS_TOTAL: &str = "baton_ticks_total";
/// Counter: ticks that started more than half an interval late. Label: `region`.
pub const TICK_OVERRUNS_TOTAL: &str = "baton_tick_overruns_total";
/// Gauge: live entities. Label: `region`.
pub const REGION_ENTITIES: &str = "baton_region_entities";
/// Counter: player inputs applied. Label: `region`.
pub const INPUTS_APPLIED_TOTAL: &str = "baton_inputs_applied_total";
/// Counter: player inputs refused (bad, duplicate or overflowing). Labels: `region`, `reason`.
pub const INPUTS_REFUSED_TOTAL: &str = "baton_inputs_refused_total";
/// Counter: player inputs lost: acknowledged durable, then lost with the state that held them
/// (a region restored from older state; its players said they no longer have them). Label: `region`.
pub const INPUTS_LOST_TOTAL: &str = "baton_inputs_lost_total";
/// Counter: players asked to send their inputs again because the region waited at a gap in their
/// sequence (an input lost on its way). Label: `region`.
pub const INPUTS_ASKED_AGAIN_TOTAL: &str = "baton_inputs_asked_again_total";
/// Counter: script calls. Label: `region`.
pub const SCRIPT_CALLS_TOTAL: &str = "baton_script_calls_total";
/// Counter: scripts stopped for a trap, fuel or memory. No label (the entity is in the log).
pub const SCRIPT_FAULTS_TOTAL: &str = "baton_script_faults_total";
/// Gauge: awake physics bodies. Label: `region`.
pub const PHYSICS_AWAKE_BODIES: &str = "baton_physics_awake_bodies";

/// Histogram: handoff freeze, source's view (end of its last tick to the target's commit), seconds.
pub const HANDOFF_FREEZE_SECONDS: &str = "baton_handoff_freeze_seconds";
/// Histogram: delta rounds before the freeze.
pub const HANDOFF_ROUNDS: &str = "baton_handoff_rounds";
/// Histogram: bytes of each delta round before the freeze (how fast rounds converge).
pub const HANDOFF_ROUND_BYTES: &str = "baton_handoff_round_bytes";
/// Counter: archive bytes sent by handoffs. Label: `phase` (`snapshot`, `deltas`, `final`).
pub const HANDOFF_BYTES_TOTAL: &str = "baton_handoff_bytes_total";
/// Counter: bulk messages (snapshot chunks and delta rounds, of handoffs and standby feeds) the
/// link compressed because that paid, in bytes: `form` `raw` (before) and `packed` (what crossed).
pub const BULK_PACKED_BYTES_TOTAL: &str = "baton_bulk_packed_bytes_total";
/// Counter: finished handoffs. Label: `outcome` (`committed`, `aborted`).
pub const HANDOFFS_TOTAL: &str = "baton_handoffs_total";
/// Counter: handoffs that said their rounds could not converge and waited for a quieter moment.
pub const HANDOFF_WAITS_TOTAL: &str = "baton_handoff_waits_total";
/// Counter: handoffs that froze before the target's engines were ready (`engines_ready_wait`).
pub const HANDOFF_UNREADY_FREEZES_TOTAL: &str = "baton_handoff_unready_freezes_total";
/// Counter: avatars that left a region across a border, by region.
pub const BORDER_CROSSINGS_TOTAL: &str = "baton_border_crossings_total";
/// Histogram: seconds the ownership authority took to answer a compare-and-swap (a handoff's
/// commit is one, inside the freeze), by outcome.
pub const AUTHORITY_SWAP_SECONDS: &str = "baton_authority_swap_seconds";

/// Registers descriptions and units of every SDK metric with the installed recorder.
pub fn describe() {
    metrics::describe_histogram!(
        HANDOFF_FREEZE_SECONDS,
        metrics::Unit::Seconds,
        "Handoff freeze: source's last tick to the target's commit."
    );
    metrics::describe_histogram!(HANDOFF_ROUNDS, "Delta rounds before a handoff's freeze.");
    metrics::describe_histogram!(
        AUTHORITY_SWAP_SECONDS,
        metrics::Unit::Seconds,
        "Time the ownership authority took to answer a compare-and-swap, by outcome."
    );
    metrics::describe_histogram!(
        HANDOFF_ROUND_BYTES,
        metrics::Unit::Bytes,
        "Bytes of each delta round before the freeze."
    );
    metrics::describe_counter!(
        HANDOFF_BYTES_TOTAL,
        metrics::Unit::Bytes,
        "World archive bytes sent by handoffs, by phase."
    );
    metrics::describe_counter!(
        BULK_PACKED_BYTES_TOTAL,
        metrics::Unit::Bytes,
        "Bulk messages the link compressed, before (form=raw) and after (form=packed)."
    );
    metrics::describe_counter!(HANDOFFS_TOTAL, "Finished handoffs, by outcome.");
    metrics::describe_counter!(
        HANDOFF_WAITS_TOTAL,
        "Handoffs whose rounds could not converge and that waited for a quieter moment."
    );
    metrics::describe_counter!(
        HANDOFF_UNREADY_FREEZES_TOTAL,
        "Handoffs that froze before the target's engines were ready (the target built them in the freeze)."
    );
    metrics::describe_histogram!(TICK_DURATION_SECONDS, metrics::Unit::Seconds, "Time to run one region tick.");
    metrics::describe_counter!(TICKS_TOTAL, "Region ticks run.");
    metrics::describe_counter!(TICK_OVERRUNS_TOTAL, "Ticks that started more than half a tick interval late.");
    metrics::describe_gauge!(REGION_ENTITIES, "Live entities in the region's world.");
    metrics::describe_counter!(INPUTS_APPLIED_TOTAL, "Player inputs applied.");
    metrics::describe_counter!(INPUTS_REFUSED_TOTAL, "Player inputs refused, by reason.");
    metrics::describe_counter!(
        INPUTS_LOST_TOTAL,
        "Player inputs acknowledged durable and then lost with the state that held them."
    );
    metrics::describe_counter!(
        INPUTS_ASKED_AGAIN_TOTAL,
        "Players asked to send their inputs again after the region waited at a gap in their sequence."
    );
    metrics::describe_counter!(SCRIPT_CALLS_TOTAL, "Calls into region scripts.");
    metrics::describe_counter!(SCRIPT_FAULTS_TOTAL, "Scripts stopped for a trap, exhausted fuel or memory.");
    metrics::describe_gauge!(PHYSICS_AWAKE_BODIES, "Physics bodies awake after the last step.");
}

/// Facts about one finished tick.
#[derive(Clone, Copy, Debug)]
pub struct TickFacts {
    /// The region.
    pub region: RegionId,
    /// The tick number just completed.
    pub tick: u64,
    /// How long the tick ran.
    pub duration: Duration,
    /// Live entities after the tick.
    pub entities: usize,
    /// Inputs applied in the tick.
    pub inputs_applied: u64,
    /// Script calls in the tick.
    pub script_calls: u64,
    /// Physics bodies awake after the tick.
    pub awake_bodies: usize,
}

/// A tick finished.
pub fn tick_completed(facts: &TickFacts) {
    let region = facts.region.to_string();
    metrics::histogram!(TICK_DURATION_SECONDS, "region" => region.clone()).record(facts.duration.as_secs_f64());
    metrics::counter!(TICKS_TOTAL, "region" => region.clone()).increment(1);
    metrics::gauge!(REGION_ENTITIES, "region" => region.clone()).set(facts.entities as f64);
    metrics::counter!(INPUTS_APPLIED_TOTAL, "region" => region.clone()).increment(facts.inputs_applied);
    metrics::counter!(SCRIPT_CALLS_TOTAL, "region" => region.clone()).increment(facts.script_calls);
    metrics::gauge!(PHYSICS_AWAKE_BODIES, "region" => region).set(facts.awake_bodies as f64);
    tracing::trace!(
        region = %facts.region,
        tick = facts.tick,
        duration_us = facts.duration.as_micros() as u64,
        entities = facts.entities,
        "tick completed"
    );
}

/// A tick started later than half an interval after it was due.
pub fn tick_overrun(region: RegionId, tick: u64, late_by: Duration) {
    metrics::counter!(TICK_OVERRUNS_TOTAL, "region" => region.to_string()).increment(1);
    tracing::debug!(%region, tick, late_by_us = late_by.as_micros() as u64, "tick started late");
}

/// A player input was refused.
pub fn input_refused(region: RegionId, player: baton_wire::PlayerId, reason: &'static str) {
    metrics::counter!(INPUTS_REFUSED_TOTAL, "region" => region.to_string(), "reason" => reason).increment(1);
    tracing::debug!(%region, %player, reason, "input refused");
}

/// `players` of `region` were asked to send their inputs again: the region waited at a gap in
/// their sequence for [`GAP_RESEND_TICKS`](crate::sessions::GAP_RESEND_TICKS).
pub fn inputs_asked_again(region: RegionId, players: usize) {
    metrics::counter!(INPUTS_ASKED_AGAIN_TOTAL, "region" => region.to_string()).increment(players as u64);
    tracing::warn!(%region, players, "players waited at a gap in their inputs; asking for them again");
}

/// `player`'s inputs up to `through` were acknowledged durable, and `lost` of them are not in the
/// state `region` was restored from.
pub fn inputs_lost(region: RegionId, player: baton_wire::PlayerId, lost: u64, through: u64) {
    metrics::counter!(INPUTS_LOST_TOTAL, "region" => region.to_string()).increment(lost);
    tracing::warn!(%region, %player, lost, through, "inputs acknowledged as durable were lost with the state that held them");
}

/// An avatar left `region` across its border into `to`.
pub fn border_crossed(region: RegionId, to: RegionId, player: baton_wire::PlayerId) {
    metrics::counter!(BORDER_CROSSINGS_TOTAL, "region" => region.to_string()).increment(1);
    tracing::info!(%region, %to, %player, "avatar crossed the border");
}

/// A script was stopped.
pub fn script_faulted(entity: EntityId, reason: &str) {
    metrics::counter!(SCRIPT_FAULTS_TOTAL).increment(1);
    tracing::warn!(%entity, reason, "script stopped");
}

/// A link compressed a bulk message of `raw` bytes into `packed` bytes, and sent that.
pub fn bulk_packed(raw: usize, packed: usize) {
    metrics::counter!(BULK_PACKED_BYTES_TOTAL, "form" => "raw").increment(raw as u64);
    metrics::counter!(BULK_PACKED_BYTES_TOTAL, "form" => "packed").increment(packed as u64);
}

/// The ownership authority answered a compare-and-swap after `took`: `ok`, `conflict` (another
/// owner or epoch), `unavailable` (outcome unknown: asked again) or `refused` (an unknown region
/// or an owner name it cannot keep).
pub fn authority_swap(took: std::time::Duration, result: &Result<(), crate::handoff::AuthorityError>) {
    use crate::handoff::AuthorityError;
    let outcome = match result {
        Ok(()) => "ok",
        Err(AuthorityError::Conflict { .. }) => "conflict",
        Err(AuthorityError::Unavailable(_)) => "unavailable",
        Err(AuthorityError::UnknownRegion(_) | AuthorityError::BadOwner(_)) => "refused",
    };
    metrics::histogram!(AUTHORITY_SWAP_SECONDS, "outcome" => outcome).record(took.as_secs_f64());
}

/// A handoff's source froze after its last tick.
pub fn handoff_frozen(region: RegionId, epoch: baton_wire::Epoch, round: u32, final_bytes: u64) {
    tracing::debug!(%region, %epoch, round, final_bytes, "handoff frozen");
}

/// A handoff committed: the target owns the region at `epoch`.
pub fn handoff_committed(region: RegionId, epoch: baton_wire::Epoch, stats: &crate::handoff::source::SourceStats) {
    if let Some(freeze) = stats.freeze {
        metrics::histogram!(HANDOFF_FREEZE_SECONDS).record(freeze.as_secs_f64());
    }
    metrics::histogram!(HANDOFF_ROUNDS).record(f64::from(stats.rounds));
    metrics::counter!(HANDOFF_BYTES_TOTAL, "phase" => "snapshot").increment(stats.snapshot_bytes);
    metrics::counter!(HANDOFF_BYTES_TOTAL, "phase" => "deltas").increment(stats.delta_bytes);
    metrics::counter!(HANDOFF_BYTES_TOTAL, "phase" => "final").increment(stats.final_bytes);
    metrics::counter!(HANDOFFS_TOTAL, "outcome" => "committed").increment(1);
    tracing::info!(
        %region,
        %epoch,
        rounds = stats.rounds,
        snapshot_bytes = stats.snapshot_bytes,
        delta_bytes = stats.delta_bytes,
        final_bytes = stats.final_bytes,
        freeze_us = stats.freeze.map_or(0, |freeze| freeze.as_micros() as u64),
        "handoff committed"
    );
}

/// A handoff was aborted.
pub fn handoff_aborted(region: RegionId, reason: &crate::handoff::AbortReason) {
    metrics::counter!(HANDOFFS_TOTAL, "outcome" => "aborted").increment(1);
    tracing::warn!(%region, culprit = ?reason.culprit, phase = %reason.phase, reason = %reason.reason, "handoff aborted");
}

/// A handoff's rounds cannot converge now (round `round` holds `bytes`, over four budgets of
/// `budget`); the source goes on sending them, waiting for a quieter moment.
pub fn handoff_waiting(
    region: RegionId,
    round: u32,
    bytes: usize,
    budget: usize,
    change_bytes_per_tick: usize,
    delivery_bytes_per_second: Option<u64>,
) {
    metrics::counter!(HANDOFF_WAITS_TOTAL).increment(1);
    tracing::warn!(
        %region,
        round,
        bytes,
        budget,
        change_bytes_per_tick,
        delivery_bytes_per_second,
        "handoff waits for a quieter moment"
    );
}

/// A handoff of a region with many bodies freezes although the target never said its engines
/// were ready, `waited` after its first round: the target builds them in the freeze.
pub fn handoff_freezes_unready(region: RegionId, waited: std::time::Duration) {
    metrics::counter!(HANDOFF_UNREADY_FREEZES_TOTAL).increment(1);
    tracing::warn!(
        %region,
        waited_ms = waited.as_millis() as u64,
        "handoff freezes before the target's engines are ready"
    );
}

/// A delta round was sent before the freeze.
pub fn handoff_round(region: RegionId, round: u32, bytes: usize) {
    metrics::histogram!(HANDOFF_ROUND_BYTES).record(bytes as f64);
    tracing::debug!(%region, round, bytes, "handoff delta round");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::AuthorityError;
    use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Keeps every histogram value recorded, with its key.
    #[derive(Default)]
    struct Recorded(Arc<Mutex<Vec<(Key, f64)>>>);

    struct Value(Key, Arc<Mutex<Vec<(Key, f64)>>>);

    impl metrics::HistogramFn for Value {
        fn record(&self, value: f64) {
            self.1.lock().unwrap().push((self.0.clone(), value));
        }
    }

    impl Recorder for Recorded {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(Arc::new(Value(key.clone(), self.0.clone())))
        }
    }

    #[test]
    fn an_authority_swap_is_timed_by_its_outcome() {
        let recorded = Recorded::default();
        let results = [
            Ok(()),
            Err(AuthorityError::Conflict {
                region: RegionId(1),
                expected_epoch: baton_wire::Epoch(1),
                actual_epoch: baton_wire::Epoch(2),
                actual_owner: "elsewhere".to_owned(),
            }),
            Err(AuthorityError::Unavailable("disk".to_owned())),
            Err(AuthorityError::UnknownRegion(RegionId(1))),
            Err(AuthorityError::BadOwner("a\nb".to_owned())),
        ];
        metrics::with_local_recorder(&recorded, || {
            for (millis, result) in (1u64..).zip(&results) {
                authority_swap(Duration::from_millis(millis), result);
            }
        });
        let values = recorded.0.lock().unwrap();
        let seen: Vec<(&str, String, f64)> = values
            .iter()
            .map(|(key, value)| {
                let outcome = key.labels().find(|label| label.key() == "outcome").map(|label| label.value().to_owned());
                (key.name(), outcome.unwrap_or_default(), *value)
            })
            .collect();
        let expected =
            [("ok", 0.001), ("conflict", 0.002), ("unavailable", 0.003), ("refused", 0.004), ("refused", 0.005)];
        assert_eq!(seen.len(), expected.len(), "{seen:?}");
        for ((name, outcome, value), (want, seconds)) in seen.iter().zip(expected) {
            assert_eq!(*name, AUTHORITY_SWAP_SECONDS);
            assert_eq!(outcome, want);
            assert!((value - seconds).abs() < 1e-12, "{value} for {want}");
        }
    }
}
