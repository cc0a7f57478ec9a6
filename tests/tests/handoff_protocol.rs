//! The handoff protocol, stepped deterministically: every phase x every failure, on a busy sample
//! region (physics, scripts, 20 players sending 20 inputs/s), checking the brief's invariants:
//! one owner (1), every input applied once in order (2), same state (4), abort is safe (5).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use baton_harness::headless::SimulatedPlayers;
use baton_sdk::RegionConfig;
use baton_sdk::codec::ChunkConfig;
use baton_sdk::handoff::testing::{HandoffPair, Record, Side};
use baton_sdk::handoff::{Culprit, OwnershipAuthority, SourceConfig, SourcePhase, TargetPhase};
use baton_sdk::wire::serve::HandoffTicks;
use baton_sdk::wire::{Epoch, RegionId};
use sample_region_server::{SampleLogic, WorldSpec, new_region, populate};

const REGION: RegionId = RegionId(1);

fn pair(objects: usize) -> HandoffPair<SampleLogic> {
    let mut source = new_region(REGION, RegionConfig::default()).unwrap();
    populate(&mut source, WorldSpec { objects, npcs: 80, plants: 80, seed: 3, churn: 0 }).unwrap();
    let mut players = SimulatedPlayers::join(&mut source, 20, 1, 20, 3).unwrap();
    let mut pair = HandoffPair::new(
        REGION,
        source,
        Box::new(|| new_region(REGION, RegionConfig::default()).unwrap()),
        Box::new(move |round| players.inputs_for_tick(round)),
    );
    // Small chunks on a 4 MB/s link, so the snapshot spans several ticks, and a freeze budget just
    // under one tick of changes (~4-6 kB here), so there are several delta rounds: every phase
    // lasts long enough to be hit.
    pair.link.bytes_per_second = 4_000_000;
    pair.link.latency = Duration::from_millis(2);
    pair.set_source_config(SourceConfig {
        chunk: ChunkConfig { target_chunk_bytes: 16 * 1024, max_chunk_bytes: 64 * 1024 },
        freeze_budget_bytes: 5_000,
        max_freeze: None,
        max_rounds: 5,
        ..SourceConfig::default()
    });
    pair
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    Prepare,
    Snapshot,
    Rounds,
    /// The source froze; the target has not committed.
    Frozen,
    /// The target committed; the source has not heard.
    Committed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    CrashTarget,
    /// The source process dies.
    CrashSource,
    Partition,
    /// The authority is unreachable for 1 s.
    AuthorityDown,
    /// The target's world differs from the source's (digest check must catch it).
    CorruptTarget,
    /// A third instance takes the region.
    Stolen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The target owns the region and ticks.
    Committed,
    /// The source owns it (again) and ticks.
    SourceKept,
    /// A third instance owns it; neither side ticks.
    Fenced,
    /// Nobody ticks it: its owner died (the source before the commit, the target after it); the
    /// harness has no failover (the coordinator's, tested in tests/tests/failover.rs).
    Down,
}

fn reached(pair: &HandoffPair<SampleLogic>, when: When) -> bool {
    match when {
        When::Prepare => pair.source_phase() == Some(SourcePhase::Prepare),
        When::Snapshot => {
            pair.source_phase() == Some(SourcePhase::Snapshot)
                && pair.handoff().is_some_and(|h| h.stats().snapshot_chunks >= 2)
        }
        When::Rounds => {
            pair.source_phase() == Some(SourcePhase::Rounds) && pair.handoff().is_some_and(|h| h.stats().rounds >= 1)
        }
        When::Frozen => {
            pair.source_phase() == Some(SourcePhase::Frozen) && pair.target_phase() != TargetPhase::Authoritative
        }
        When::Committed => {
            pair.source_phase() == Some(SourcePhase::Frozen) && pair.target_phase() == TargetPhase::Authoritative
        }
    }
}

/// Runs one scenario: 1 s of play, a handoff, `fault` injected when `when` is reached, 6 s more.
fn check(when: When, fault: Fault, expected: Outcome) -> u64 {
    check_with(when, fault, expected, Duration::ZERO)
}

/// [`check`] with an authority that answers after `latency`.
fn check_with(when: When, fault: Fault, expected: Outcome, latency: Duration) -> u64 {
    let mut pair = pair(600);
    pair.authority_latency = latency;
    pair.drive_until(Duration::from_secs(1));
    pair.start_handoff();
    let hit = pair.drive_while(Duration::from_secs(10), |pair| reached(pair, when));
    assert!(hit, "{when:?} was never reached (source {:?}, target {:?})", pair.source_phase(), pair.target_phase());
    match fault {
        Fault::None => {}
        Fault::CrashTarget => pair.crash_target(),
        Fault::CrashSource => pair.crash_source(),
        Fault::Partition => pair.partition(),
        Fault::AuthorityDown => pair.authority_down = true,
        Fault::CorruptTarget => pair.corrupt_target(),
        Fault::Stolen => pair.steal_ownership(),
    }
    if fault == Fault::AuthorityDown {
        let resume_at = pair.elapsed() + Duration::from_secs(1);
        pair.drive_until(resume_at);
        pair.authority_down = false;
    }
    let end = pair.elapsed() + Duration::from_secs(6);
    pair.drive_until(end);

    let missed = pair.check_invariants();
    let owner = pair.authority.current(REGION).unwrap();
    let outcome = match pair.ticking() {
        Some(Side::Target) => Outcome::Committed,
        Some(Side::Source) => Outcome::SourceKept,
        None if matches!(fault, Fault::CrashSource | Fault::CrashTarget) => Outcome::Down,
        None => Outcome::Fenced,
    };
    assert_eq!(
        outcome,
        expected,
        "{when:?} + {fault:?}: records {:?}",
        pair.records.iter().filter(|r| !matches!(r, Record::Tick { .. })).collect::<Vec<_>>()
    );
    match outcome {
        Outcome::Committed => {
            assert_eq!(owner.owner, pair.target_name());
            assert_eq!(owner.epoch, Epoch(2));
            // Same state: the target committed the world the source froze (re-checked from outside).
            assert!(pair.freeze_digest().is_some());
            assert_eq!(pair.commit_digest(), pair.freeze_digest());
        }
        Outcome::SourceKept => {
            assert_eq!(owner.owner, pair.source_name());
            let source = pair.handoff().unwrap();
            let reason = source.abort_reason().expect("an abort has a reason");
            // A target that refuses says why at once, and the source resumes on its word (not
            // after its own timeout).
            if fault == Fault::CorruptTarget {
                let said = if when == When::Prepare { "world is not empty" } else { "digest mismatch" };
                assert_eq!(reason.culprit, Culprit::Target, "{when:?}: {reason}");
                assert!(reason.reason.contains(said), "{when:?}: {reason}");
            }
        }
        Outcome::Fenced => assert_eq!(owner.owner, "intruder"),
        // The dead target owns it after its commit.
        Outcome::Down if fault == Fault::CrashTarget => {
            assert_eq!((owner.owner.as_str(), owner.epoch), (pair.target_name(), Epoch(2)));
            assert_eq!(pair.commit_digest(), pair.freeze_digest());
        }
        // The dead source still owns it at the authority; the target gave up and holds nothing.
        Outcome::Down => {
            assert_eq!(owner.owner, pair.source_name());
            assert!(
                matches!(pair.target_phase(), TargetPhase::Aborted | TargetPhase::Idle),
                "the target gave up: {:?}",
                pair.target_phase()
            );
        }
    }
    // The harness's gateway sends each input once, in order, and holds (not sends) what arrives
    // during the freeze: whoever holds the region saw no input twice and none ahead of a gap.
    if fault == Fault::None {
        assert_eq!(pair.arrivals(), (0, 0), "{when:?}: inputs that arrived twice, and ahead of a gap");
        // The source hands off on the target's word, not after asking the authority when its
        // commit timeout ran out (virtual time: the harness's clock, not the machine's).
        let freeze = pair.handoff().and_then(|source| source.stats().freeze).expect("the source handed off");
        assert!(freeze < SourceConfig::default().timeouts.commit, "{when:?}: frozen for {freeze:?}");
    }
    let (sent, applied) = pair.input_counts();
    if outcome != Outcome::Fenced && outcome != Outcome::Down {
        assert!(sent - applied <= 20 * 4, "{sent} inputs sent, {applied} applied");
    }
    missed
}

const PHASES: [When; 5] = [When::Prepare, When::Snapshot, When::Rounds, When::Frozen, When::Committed];

/// What the design says each fault in each phase must end in. Every cell of the matrix runs.
fn expected(when: When, fault: Fault) -> Outcome {
    match (fault, when) {
        // A fault-free handoff commits wherever the test looks at it.
        (Fault::None, _) => Outcome::Committed,
        // Before the target's commit, a dead target leaves the region with the source (after the
        // freeze too: the source's commit timeout, then it wins the next epoch for itself).
        (Fault::CrashTarget, When::Prepare | When::Snapshot | When::Rounds | When::Frozen) => Outcome::SourceKept,
        // After it, the dead target owns the region: nobody may tick it until failover (the
        // coordinator's, tested across processes in tests/tests/failover.rs).
        (Fault::CrashTarget, When::Committed) => Outcome::Down,
        // Nobody else may take a region whose owner died mid-handoff without the authority: the
        // target never ticks what it was not given. Failover is what brings it back.
        (Fault::CrashSource, When::Prepare | When::Snapshot | When::Rounds | When::Frozen) => Outcome::Down,
        // Once the target's commit won, the source's death changes nothing.
        (Fault::CrashSource, When::Committed) => Outcome::Committed,
        // A silent link before the commit: the source's timeouts end the handoff and it keeps (or,
        // frozen, wins back at the next epoch) the region; the target, silent, gives up.
        (Fault::Partition, When::Prepare | When::Snapshot | When::Rounds | When::Frozen) => Outcome::SourceKept,
        // The target committed, then the link died before the source heard: the source learns the
        // outcome from the authority and hands off instead of resuming (no split brain).
        (Fault::Partition, When::Committed) => Outcome::Committed,
        // An authority down for a second delays the commit (nobody ticks while ownership cannot be
        // settled) and changes no outcome.
        (Fault::AuthorityDown, _) => Outcome::Committed,
        // A target whose world differs (an extra entity). In the prepare it refuses to take a
        // snapshot into a world that is not empty: the source resumes. While the snapshot streams,
        // the chunks still to come are authoritative for their id ranges, the last up to the end,
        // and remove it: the handoff commits. After the snapshot the digest check at the freeze
        // fails: the source resumes. At the commit the target holds the region; its world is its own.
        (Fault::CorruptTarget, When::Prepare | When::Rounds | When::Frozen) => Outcome::SourceKept,
        (Fault::CorruptTarget, When::Snapshot) => Outcome::Committed,
        (Fault::CorruptTarget, When::Committed) => Outcome::Committed,
        // A third instance takes the region: both sides stay off it (after the commit, the target
        // lets go when it reads the newer owner from the authority).
        (Fault::Stolen, _) => Outcome::Fenced,
    }
}

/// Runs `fault` in every phase; returns the late ticks per phase.
fn row(fault: Fault) -> Vec<u64> {
    PHASES.iter().map(|&when| check(when, fault, expected(when, fault))).collect()
}

#[test]
fn a_fault_free_handoff_commits_in_every_phase_without_missing_a_tick() {
    assert_eq!(row(Fault::None), vec![0; PHASES.len()]);
}

#[test]
fn a_target_crash_in_every_phase() {
    let missed = row(Fault::CrashTarget);
    assert_eq!(&missed[..3], &[0, 0, 0], "before the freeze the source never stops ticking");
}

#[test]
fn a_source_crash_in_every_phase() {
    row(Fault::CrashSource);
}

#[test]
fn a_partition_in_every_phase() {
    let missed = row(Fault::Partition);
    assert_eq!(&missed[..3], &[0, 0, 0], "before the freeze the source never stops ticking");
}

#[test]
fn an_unavailable_authority_in_every_phase_blocks_rather_than_splits() {
    let missed = row(Fault::AuthorityDown);
    // Down at the freeze, nobody may tick until it is back.
    assert!(missed[3] >= 1, "ticks must stop while ownership cannot be settled");
}

#[test]
fn a_corrupt_target_in_every_phase() {
    row(Fault::CorruptTarget);
}

#[test]
fn a_region_taken_by_a_third_instance_in_every_phase() {
    row(Fault::Stolen);
}

/// Crashes the target if `fault` says so, plays 6 s more, checks the invariants and says who
/// ticks the region.
fn crash_target_if(pair: &mut HandoffPair<SampleLogic>, fault: Fault) -> Outcome {
    if fault == Fault::CrashTarget {
        pair.crash_target();
    }
    let end = pair.elapsed() + Duration::from_secs(6);
    pair.drive_until(end);
    pair.check_invariants();
    match pair.ticking() {
        Some(Side::Target) => Outcome::Committed,
        Some(Side::Source) => Outcome::SourceKept,
        None => Outcome::Down,
    }
}

/// Rounds that may read only 100 change records at a tick boundary (fewer than the busy region
/// changes in a tick) read the oldest and leave the rest for the next boundaries; the target still
/// commits the world the source froze, every input once, or a target lost meanwhile leaves the
/// source owning the region.
#[test]
fn rounds_that_read_a_few_records_at_a_time_move_the_frozen_world() {
    for (fault, expected) in [(Fault::None, Outcome::Committed), (Fault::CrashTarget, Outcome::SourceKept)] {
        let mut pair = pair(600);
        pair.set_source_config(SourceConfig {
            chunk: ChunkConfig { target_chunk_bytes: 16 * 1024, max_chunk_bytes: 64 * 1024 },
            freeze_budget_bytes: 5_000,
            max_freeze: None,
            max_rounds: 5,
            read_records: 100,
            ..SourceConfig::default()
        });
        pair.drive_until(Duration::from_secs(1));
        pair.start_handoff();
        let partial =
            |pair: &HandoffPair<SampleLogic>| pair.handoff().is_some_and(|source| source.stats().partial_rounds > 1);
        assert!(pair.drive_while(Duration::from_secs(10), |pair| partial(pair)), "{fault:?}: no round read in part");
        assert_eq!(crash_target_if(&mut pair, fault), expected, "{fault:?}");
        if expected == Outcome::Committed {
            assert!(pair.freeze_digest().is_some());
            assert_eq!(pair.commit_digest(), pair.freeze_digest());
        }
        assert_eq!(pair.arrivals().0, 0, "{fault:?}: inputs that arrived twice");
    }
}

/// Inputs in flight reach the source after it froze (the gateway has not heard of the freeze
/// yet): the source holds them and forwards them to the new owner, which applies each once; or,
/// when the handoff aborts (here the target dies before it asks for the region), applies them
/// itself when it resumes.
#[test]
fn inputs_that_reach_the_frozen_source_are_applied_once_by_whoever_owns_the_region() {
    for (fault, expected) in [(Fault::None, Outcome::Committed), (Fault::CrashTarget, Outcome::SourceKept)] {
        let mut pair = pair(600);
        pair.inputs_reach_frozen_source = true;
        // A slow authority keeps the source frozen (or settling) for a few input rounds.
        pair.authority_latency = Duration::from_millis(120);
        pair.drive_until(Duration::from_secs(1));
        pair.start_handoff();
        assert!(pair.drive_while(Duration::from_secs(10), |pair| reached(pair, When::Frozen)));
        assert_eq!(crash_target_if(&mut pair, fault), expected, "{fault:?}");
        assert!(pair.inputs_to_frozen_source > 0, "{fault:?}: no input reached the frozen source");
        assert_eq!(pair.arrivals().0, 0, "{fault:?}: inputs that arrived twice");
    }
}

#[test]
fn rounds_encoded_away_from_the_region_s_thread_while_it_ticks_move_the_frozen_world() {
    // Rounds over four budgets (20 kB here) are encoded on another thread, which here takes 120 ms
    // (over three ticks) to hand them back, while the region ticks and its players' inputs
    // arrive; a target lost while one is out leaves the source owning the region.
    for (fault, expected) in [(Fault::None, Outcome::Committed), (Fault::CrashTarget, Outcome::SourceKept)] {
        let mut pair = pair(600);
        // A budget a little under one tick of changes: a round's estimate (its records times the
        // snapshot's bytes per entity, which the scripted NPCs make large) is over four of them.
        pair.set_source_config(SourceConfig {
            chunk: ChunkConfig { target_chunk_bytes: 16 * 1024, max_chunk_bytes: 64 * 1024 },
            freeze_budget_bytes: 4_000,
            max_freeze: None,
            max_rounds: 5,
            ..SourceConfig::default()
        });
        pair.encode_time = Duration::from_millis(120);
        pair.drive_until(Duration::from_secs(1));
        pair.start_handoff();
        let out = pair.drive_while(Duration::from_secs(10), |pair| pair.encodes_out() > 0);
        assert!(out, "{fault:?}: no round was encoded away");
        assert_eq!(crash_target_if(&mut pair, fault), expected, "{fault:?}");
        assert!(pair.rounds_encoded > 0, "{fault:?}: delivered {}", pair.rounds_encoded);
        assert_eq!(pair.arrivals().0, 0, "{fault:?}: inputs that arrived twice");
    }
}

#[test]
fn the_source_reports_every_tick_it_ran_during_the_handoff_and_the_work_after_each() {
    // Long enough a handoff to span several ticks: the target's engine takes 300 ms to build.
    let mut pair = pair(600);
    pair.engine_build_time = Duration::from_millis(300);
    pair.drive_until(Duration::from_secs(1));
    let started = pair.elapsed();
    pair.start_handoff();
    let end = started + Duration::from_secs(5);
    pair.drive_until(end);
    pair.check_invariants();
    assert_eq!(pair.ticking(), Some(Side::Target), "committed");
    let ran = pair
        .records
        .iter()
        .filter(|record| matches!(record, Record::Tick { side: Side::Source, at, .. } if *at > started))
        .count();
    let reported: Vec<&HandoffTicks> = pair
        .records
        .iter()
        .filter_map(|record| match record {
            Record::HandedOff(ticks) => Some(ticks),
            _ => None,
        })
        .collect();
    let [HandoffTicks { before, during }] = reported[..] else { panic!("one handoff reported: {reported:?}") };
    assert!(ran > 1, "the source ticked {ran} times during the handoff");
    assert_eq!(during.busy_us.len(), ran, "one entry per tick, the freezing one included");
    assert_eq!(during.late_us.len(), ran);
    assert_eq!(during.handoff_us.len(), ran);
    let ticks_before = pair
        .records
        .iter()
        .filter(|record| matches!(record, Record::Tick { side: Side::Source, at, .. } if *at <= started))
        .count();
    assert_eq!(before.busy_us.len(), ticks_before, "every tick before it");
    assert!(before.handoff_us.is_empty());
}

/// A busy sample region of 600 crates and 20 avatars (over `engines_ready_bodies`) whose target
/// takes `build` to build its engine: the handoff commits with every invariant, and the source
/// froze only once the engine was in, or `engines_ready_wait` after its first round.
fn moved_with_an_engine_build_of(build: Duration) -> (HandoffPair<SampleLogic>, Duration) {
    let mut pair = pair(600);
    pair.engine_build_time = build;
    pair.drive_until(Duration::from_secs(1));
    pair.start_handoff();
    let end = pair.elapsed() + Duration::from_secs(8);
    pair.drive_until(end);
    pair.check_invariants();
    assert_eq!(pair.ticking(), Some(Side::Target), "committed");
    assert_eq!(pair.commit_digest(), pair.freeze_digest());
    assert_eq!(pair.engines_built.0, 1, "one build per attempt");
    let waited = pair.handoff().and_then(|source| source.stats().engines_waited).unwrap_or_default();
    (pair, waited)
}

#[test]
fn a_region_with_many_bodies_freezes_only_once_the_target_s_engine_is_built() {
    let (pair, waited) = moved_with_an_engine_build_of(Duration::from_millis(300));
    let stats = pair.handoff().unwrap().stats();
    // Rounds of one tick each fit the budget, and went out as ordinary rounds while the target
    // built: the freeze came after the build, 300 ms after the first round.
    assert!(stats.rounds >= 5, "{stats:?}");
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_millis(400), "{waited:?}");
    assert!(!pair.target.region().physics().is_following(), "the followed engine steps the region");
}

#[test]
fn a_target_whose_engine_is_not_built_in_time_is_frozen_after_the_wait_and_builds_it_then() {
    let wait = SourceConfig::default().engines_ready_wait;
    let (pair, waited) = moved_with_an_engine_build_of(Duration::from_secs(5));
    assert!(waited >= wait - Duration::from_millis(100) && waited <= wait, "{waited:?}");
    // The build that never came back in time was dropped; the target built its engine at the commit.
    assert!(pair.engines_built.1.is_some());
    assert!(!pair.target.region().physics().is_following());
}

#[test]
fn a_slow_authority_delays_the_commit_but_changes_no_outcome() {
    // The answer takes 20 ms to come back (as it does over a loaded cluster link): the target ticks
    // only once it hears its swap won, and a lost commit report is still recovered.
    let slow = Duration::from_millis(20);
    check_with(When::Prepare, Fault::None, Outcome::Committed, slow);
    check_with(When::Committed, Fault::Partition, Outcome::Committed, slow);
    check_with(When::Frozen, Fault::CrashTarget, Outcome::SourceKept, slow);
}
