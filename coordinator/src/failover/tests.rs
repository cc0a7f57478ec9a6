use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_wire::serve::{GameObject, ServerCommand, ServerEvent};
use baton_wire::{Epoch, RegionId};

use super::{Action, Cause, Failover, FailoverSettings, HostAction, Lost, OwnerWatch, judge};
use crate::hosts::{Happened, HostsError, OwnerState, ProcessEvent};
use crate::migrations::Phase;

const REGION: RegionId = RegionId(7);

fn lost() -> Lost {
    Lost {
        region: REGION,
        owner: "h1-p1".into(),
        epoch: Epoch(4),
        host: Some("h1".into()),
        cause: Cause::ProcessExited,
        silent_for: Duration::ZERO,
    }
}

fn candidates() -> Vec<String> {
    vec!["h2".into(), "h3".into()]
}

fn address() -> SocketAddr {
    "127.0.0.1:9000".parse().unwrap()
}

fn event(host: &str, process: &str, event: ServerEvent) -> ProcessEvent {
    ProcessEvent { host: host.into(), process: process.into(), happened: Happened::Event(event) }
}

fn restore(host: &str, process: &str) -> Action {
    Action::Host(HostAction::Run {
        host: host.into(),
        process: process.into(),
        command: ServerCommand::Host {
            region: REGION,
            world: GameObject::new(),
            from_checkpoint: true,
            take_over: Some(Epoch(4)),
        },
    })
}

fn started() -> (Failover, Instant) {
    started_with(FailoverSettings::default())
}

fn started_with(settings: FailoverSettings) -> (Failover, Instant) {
    let now = Instant::now();
    let (machine, actions) = Failover::start(1, lost(), None, &candidates(), settings, now);
    assert_eq!(actions, vec![Action::Host(HostAction::Claim { host: "h2".into() })]);
    (machine, now)
}

#[test]
fn judge_tells_lost_owners_from_live_ones() {
    let settings = FailoverSettings::default();
    let watch = |state, exited, unserved_ms| OwnerWatch {
        state,
        exited,
        unserved_for: Duration::from_millis(unserved_ms),
        witnessed_silence: None,
    };
    assert_eq!(judge(watch(OwnerState::Serving, true, 60_000), &settings), None, "a serving owner is never lost");
    let silent = Duration::from_millis(900);
    assert_eq!(
        judge(watch(OwnerState::HostDead { silent_for: silent }, false, 0), &settings),
        Some((Cause::HostSilent, silent))
    );
    assert_eq!(judge(watch(OwnerState::NotServing, true, 0), &settings), Some((Cause::ProcessExited, Duration::ZERO)));
    assert_eq!(judge(watch(OwnerState::Unknown, true, 0), &settings), Some((Cause::ProcessExited, Duration::ZERO)));
    // With no word of why, only after the orphan limit (a region just created or moved is
    // reported by its new owner a moment after the directory names it).
    let limit = settings.orphan_after.as_millis() as u64;
    assert_eq!(judge(watch(OwnerState::NotServing, false, limit - 1), &settings), None);
    assert_eq!(judge(watch(OwnerState::Unknown, false, limit - 1), &settings), None);
    assert_eq!(
        judge(watch(OwnerState::Unknown, false, limit), &settings),
        Some((Cause::NotServed, Duration::from_millis(limit)))
    );
    assert_eq!(
        judge(watch(OwnerState::NotServing, false, limit), &settings),
        Some((Cause::NotServed, Duration::from_millis(limit)))
    );
}

#[test]
fn an_owner_still_reported_serving_is_lost_only_when_its_agent_and_its_standby_both_went_silent() {
    let settings = FailoverSettings::default();
    let watch = |silence_ms: Option<u64>| OwnerWatch {
        state: OwnerState::Serving,
        exited: false,
        unserved_for: Duration::ZERO,
        witnessed_silence: silence_ms.map(Duration::from_millis),
    };
    let limit = settings.suspect_after.as_millis() as u64;
    assert_eq!(judge(watch(None), &settings), None, "one witness or none: not lost");
    assert_eq!(judge(watch(Some(limit - 1)), &settings), None);
    assert_eq!(
        judge(watch(Some(limit)), &settings),
        Some((Cause::OwnerSilent, Duration::from_millis(limit))),
        "both silent for the limit: lost, sooner than a dead host"
    );
    assert!(settings.suspect_after < settings.dead_after);
}

#[test]
fn a_failover_claims_restores_at_the_lost_epoch_and_commits_when_the_new_owner_reports() {
    let (mut machine, now) = started();
    assert_eq!(machine.record().kind, "failover");
    assert_eq!(machine.record().from_process, "h1-p1");
    let actions = machine.handle_claimed("h2", Ok(("h2-p5".into(), address())), &candidates(), now);
    assert_eq!(actions, vec![restore("h2", "h2-p5")]);
    assert_eq!(machine.record().phase, Phase::Restoring);
    // Events of other processes, hosts or regions change nothing.
    let owning_elsewhere = ServerEvent::Owning { region: REGION, epoch: Epoch(5) };
    assert!(machine.handle_event(&event("h3", "h2-p5", owning_elsewhere.clone()), &candidates(), now).is_empty());
    assert!(machine.handle_event(&event("h2", "h2-p6", owning_elsewhere.clone()), &candidates(), now).is_empty());
    let other_region = ServerEvent::Owning { region: RegionId(8), epoch: Epoch(5) };
    assert!(machine.handle_event(&event("h2", "h2-p5", other_region), &candidates(), now).is_empty());
    assert_eq!(machine.record().phase, Phase::Restoring);
    let restored =
        ServerEvent::Restored { region: REGION, tick: 600, from_epoch: Epoch(4), epoch: Epoch(5), path: "/c/7".into() };
    machine.handle_event(&event("h2", "h2-p5", restored), &candidates(), now);
    let later = now + Duration::from_millis(420);
    assert!(machine.handle_event(&event("h2", "h2-p5", owning_elsewhere), &candidates(), later).is_empty());
    assert!(machine.is_done());
    let record = machine.record();
    assert_eq!(record.phase, Phase::Committed);
    assert_eq!(record.to_host, "h2");
    assert_eq!(record.to_process.as_deref(), Some("h2-p5"));
    let figures = record.failover.as_ref().unwrap();
    assert_eq!(figures.restored_tick, Some(600));
    assert_eq!(figures.recovery_ms, Some(420.0));
    assert_eq!(figures.lost_epoch, 4);
    assert_eq!(figures.attempts, 1);
    assert!(!figures.players_told);
    let phases: Vec<Phase> = record.phases.iter().map(|timing| timing.phase).collect();
    assert_eq!(phases, vec![Phase::Claiming, Phase::Restoring]);
}

#[test]
fn a_failed_attempt_moves_to_the_next_host_and_releases_what_it_claimed() {
    let (mut machine, now) = started();
    // No warm process on h2: h3 is asked.
    let actions = machine.handle_claimed("h2", Err(HostsError::NoWarmProcess("busy".into())), &candidates(), now);
    assert_eq!(actions, vec![Action::Host(HostAction::Claim { host: "h3".into() })]);
    machine.handle_claimed("h3", Ok(("h3-p1".into(), address())), &candidates(), now);
    // The restore fails on h3 (no checkpoint there, say): its process goes, and with both hosts
    // failed lately the failover waits.
    let refused = ServerEvent::Error { region: Some(REGION), error: "no checkpoint of region 7".into() };
    let actions = machine.handle_event(&event("h3", "h3-p1", refused), &candidates(), now);
    assert_eq!(actions, vec![Action::Host(HostAction::Release { host: "h3".into(), process: "h3-p1".into() })]);
    assert!(machine.handle_time(now + Duration::from_secs(1), true, &candidates()).is_empty());
    // A host that failed is asked again once the retry interval passed.
    let retry = now + FailoverSettings::default().retry_after;
    assert_eq!(
        machine.handle_time(retry, true, &candidates()),
        vec![Action::Host(HostAction::Claim { host: "h2".into() })]
    );
    // The target process dying while it restores is a failed attempt too.
    machine.handle_claimed("h2", Ok(("h2-p9".into(), address())), &candidates(), retry);
    let exited =
        ProcessEvent { host: "h2".into(), process: "h2-p9".into(), happened: Happened::Exited { regions: Vec::new() } };
    let actions = machine.handle_event(&exited, &candidates(), retry);
    assert_eq!(
        actions,
        vec![
            Action::Host(HostAction::Release { host: "h2".into(), process: "h2-p9".into() }),
            Action::Host(HostAction::Claim { host: "h3".into() })
        ]
    );
    assert_eq!(machine.record().failover.as_ref().unwrap().attempts, 4);
    assert!(!machine.is_done());
}

#[test]
fn slow_claims_and_restores_time_out_and_a_late_claim_answer_is_released() {
    let (mut machine, now) = started();
    let settings = FailoverSettings::default();
    assert!(machine.handle_time(now + settings.claim - Duration::from_millis(1), true, &candidates()).is_empty());
    let timed_out = now + settings.claim;
    assert_eq!(
        machine.handle_time(timed_out, true, &candidates()),
        vec![Action::Host(HostAction::Claim { host: "h3".into() })]
    );
    // h2's process arrives after the failover moved on to h3: it goes back to h2, and the
    // failover still waits for h3's answer.
    let late = machine.handle_claimed("h2", Ok(("h2-p2".into(), address())), &candidates(), timed_out);
    assert_eq!(late, vec![Action::Host(HostAction::Release { host: "h2".into(), process: "h2-p2".into() })]);
    assert_eq!(machine.record().phase, Phase::Claiming);
    let actions = machine.handle_claimed("h3", Ok(("h3-p4".into(), address())), &candidates(), timed_out);
    assert_eq!(actions, vec![restore("h3", "h3-p4")]);
    // (Players are told only after a grace longer than this restore's limit here.)
    let (mut machine, now) = started_with(FailoverSettings { grace: Duration::from_secs(3600), ..settings });
    machine.handle_claimed("h2", Ok(("h2-p5".into(), address())), &candidates(), now);
    let stuck = now + settings.restore;
    assert_eq!(
        machine.handle_time(stuck, true, &candidates()),
        vec![
            Action::Host(HostAction::Release { host: "h2".into(), process: "h2-p5".into() }),
            Action::Host(HostAction::Claim { host: "h3".into() })
        ]
    );
}

#[test]
fn players_are_told_once_after_the_grace_and_the_failover_gives_up_in_the_end() {
    let now = Instant::now();
    let settings = FailoverSettings::default();
    // No host can take the region.
    let (mut machine, actions) = Failover::start(1, lost(), None, &[], settings, now);
    assert!(actions.is_empty());
    assert!(machine.handle_time(now + settings.grace - Duration::from_millis(1), true, &[]).is_empty());
    let told = machine.handle_time(now + settings.grace, true, &[]);
    assert!(
        matches!(&told[..], [Action::TellUnavailable { region, reason }] if *region == REGION && reason.contains("h1-p1 on h1 exited")),
        "{told:?}"
    );
    assert!(machine.handle_time(now + settings.grace + Duration::from_secs(1), true, &[]).is_empty(), "told once");
    assert!(machine.record().failover.as_ref().unwrap().players_told);
    // A host shows up: it is asked.
    let later = now + settings.grace + Duration::from_secs(2);
    assert_eq!(
        machine.handle_time(later, true, &candidates()),
        vec![Action::Host(HostAction::Claim { host: "h2".into() })]
    );
    machine.handle_claimed("h2", Ok(("h2-p5".into(), address())), &candidates(), later);
    let end = now + settings.give_up;
    assert_eq!(
        machine.handle_time(end, true, &candidates()),
        vec![Action::Host(HostAction::Release { host: "h2".into(), process: "h2-p5".into() })]
    );
    assert!(machine.is_done());
    assert_eq!(machine.record().phase, Phase::Aborted);
    assert!(machine.record().reason.as_deref().unwrap().starts_with("gave up"));
}

#[test]
fn a_region_served_again_ends_a_failover_that_has_not_started_restoring() {
    let (mut machine, now) = started();
    assert!(machine.handle_time(now, false, &candidates()).is_empty());
    assert!(machine.is_done());
    assert_eq!(machine.record().phase, Phase::Aborted);
    // A restore under way reports its own outcome first: being served (by it) does not end it.
    let (mut machine, now) = started();
    machine.handle_claimed("h2", Ok(("h2-p5".into(), address())), &candidates(), now);
    assert!(machine.handle_time(now, false, &candidates()).is_empty());
    assert!(!machine.is_done());
}

fn promote(host: &str, process: &str) -> Action {
    Action::Host(HostAction::Run {
        host: host.into(),
        process: process.into(),
        command: ServerCommand::Promote { region: REGION, epoch: Epoch(4) },
    })
}

#[test]
fn a_region_with_a_standby_is_taken_over_by_promoting_it() {
    let now = Instant::now();
    let standby = Some(("h3".to_owned(), "h3-p2".to_owned(), 900));
    let (mut machine, actions) = Failover::start(1, lost(), standby, &candidates(), FailoverSettings::default(), now);
    assert_eq!(actions, vec![promote("h3", "h3-p2")], "no claim: the standby is promoted at the lost epoch");
    assert_eq!(machine.record().phase, Phase::Restoring);
    assert_eq!(machine.record().to_process.as_deref(), Some("h3-p2"));
    let promoted = ServerEvent::Promoted { region: REGION, epoch: Epoch(5), tick: 901 };
    assert!(machine.handle_event(&event("h3", "h3-p2", promoted), &candidates(), now).is_empty());
    let later = now + Duration::from_millis(30);
    let owning = ServerEvent::Owning { region: REGION, epoch: Epoch(5) };
    machine.handle_event(&event("h3", "h3-p2", owning), &candidates(), later);
    assert!(machine.is_done());
    let figures = machine.record().failover.clone().unwrap();
    assert!(figures.standby, "recorded as a promotion");
    assert_eq!(figures.restored_tick, Some(901));
    assert_eq!(figures.attempts, 1);
    assert!((figures.recovery_ms.unwrap() - 30.0).abs() < 1.0);
}

#[test]
fn a_refused_or_lost_promotion_falls_back_to_the_newest_checkpoint() {
    for failure in [
        ServerEvent::PromoteRefused { region: REGION, reason: "the standby holds no complete tick yet".into() },
        ServerEvent::StandbyLost { region: REGION, reason: "the promotion lost".into(), detached: false },
    ] {
        let now = Instant::now();
        let standby = Some(("h3".to_owned(), "h3-p2".to_owned(), 900));
        let (mut machine, _) = Failover::start(1, lost(), standby, &candidates(), FailoverSettings::default(), now);
        let actions = machine.handle_event(&event("h3", "h3-p2", failure), &candidates(), now);
        // The standby's process goes; a claim for the checkpoint path goes out on the best host
        // that has not just failed.
        assert_eq!(
            actions,
            vec![
                Action::Host(HostAction::Release { host: "h3".into(), process: "h3-p2".into() }),
                Action::Host(HostAction::Claim { host: "h2".into() }),
            ]
        );
        machine.handle_claimed("h2", Ok(("h2-p5".into(), address())), &candidates(), now);
        let owning = ServerEvent::Owning { region: REGION, epoch: Epoch(5) };
        machine.handle_event(&event("h2", "h2-p5", owning), &candidates(), now);
        assert!(machine.is_done());
        let figures = machine.record().failover.clone().unwrap();
        assert!(!figures.standby, "recorded as a restore");
        assert_eq!(figures.restored_tick, None, "the standby's tick is not the restore's");
        assert_eq!(figures.attempts, 2);
    }
}

#[test]
fn outcomes_have_the_names_the_metrics_use() {
    assert_eq!(super::Outcome::Recovered.name(), "recovered");
    assert_eq!(super::Outcome::Superseded.name(), "superseded");
    assert_eq!(super::Outcome::GaveUp.name(), "gave_up");
}

#[test]
fn the_record_says_how_long_detection_and_each_phase_took() {
    let now = Instant::now();
    let silent = Lost { cause: Cause::HostSilent, silent_for: Duration::from_millis(1500), ..lost() };
    let (mut machine, _) = Failover::start(1, silent, None, &candidates(), FailoverSettings::default(), now);
    assert_eq!(machine.record().failover.as_ref().unwrap().detect_ms, 1500.0);
    machine.handle_claimed("h2", Ok(("h2-p5".into(), address())), &candidates(), now + Duration::from_millis(250));
    let owning = ServerEvent::Owning { region: REGION, epoch: Epoch(5) };
    machine.handle_event(&event("h2", "h2-p5", owning), &candidates(), now + Duration::from_millis(1250));
    let phases: Vec<(Phase, f64)> = machine.record().phases.iter().map(|timing| (timing.phase, timing.ms)).collect();
    assert_eq!(phases, vec![(Phase::Claiming, 250.0), (Phase::Restoring, 1000.0)]);
}

/// What the restoring process says about another region (it may serve several) changes nothing
/// about this one's take-over.
#[test]
fn events_about_another_region_leave_the_take_over_alone() {
    let other = RegionId(8);
    let about_other = [
        ServerEvent::Restored { region: other, tick: 1, from_epoch: Epoch(1), epoch: Epoch(2), path: "/c/8".into() },
        ServerEvent::Promoted { region: other, epoch: Epoch(2), tick: 1 },
        ServerEvent::PromoteRefused { region: other, reason: "no".into() },
        ServerEvent::StandbyLost { region: other, reason: "gone".into(), detached: false },
        ServerEvent::Error { region: Some(other), error: "unknown region".into() },
    ];
    for event_about_other in about_other {
        let now = Instant::now();
        let standby = Some(("h3".to_owned(), "h3-p2".to_owned(), 900));
        let (mut machine, _) = Failover::start(1, lost(), standby, &candidates(), FailoverSettings::default(), now);
        let actions = machine.handle_event(&event("h3", "h3-p2", event_about_other.clone()), &candidates(), now);
        assert!(actions.is_empty(), "{event_about_other:?}");
        assert_eq!(machine.restoring(), Some("h3-p2"), "{event_about_other:?}");
        let figures = machine.record().failover.clone().unwrap();
        assert_eq!(figures.restored_tick, Some(900), "{event_about_other:?}");
        assert_eq!(figures.attempts, 1, "{event_about_other:?}");
    }
    // An error naming no region answers the command this failover sent: the attempt failed.
    let (mut machine, now) = started();
    machine.handle_claimed("h2", Ok(("h2-p5".into(), address())), &candidates(), now);
    let unreadable = ServerEvent::Error { region: None, error: "bad line".into() };
    machine.handle_event(&event("h2", "h2-p5", unreadable), &candidates(), now);
    assert_eq!(machine.restoring(), None);
    assert_eq!(machine.record().failover.as_ref().unwrap().attempts, 2, "the next host was asked");
}

#[test]
fn the_restoring_process_and_the_outcome_are_known_while_and_after_it_runs() {
    let (mut machine, now) = started();
    assert_eq!(machine.restoring(), None, "claiming");
    assert_eq!(machine.outcome(), None);
    machine.handle_claimed("h2", Ok(("h2-p5".into(), address())), &candidates(), now);
    assert_eq!(machine.restoring(), Some("h2-p5"));
    machine.handle_serving(now);
    assert_eq!(machine.restoring(), None);
    assert_eq!(machine.outcome(), Some(super::Outcome::Recovered));

    let (mut machine, now) = started();
    machine.handle_time(now, false, &candidates());
    assert_eq!(machine.outcome(), Some(super::Outcome::Superseded));

    let settings = FailoverSettings::default();
    let (mut machine, now) = started_with(settings);
    machine.handle_time(now + settings.give_up, true, &candidates());
    assert_eq!(machine.outcome(), Some(super::Outcome::GaveUp));
}
