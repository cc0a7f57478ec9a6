use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_wire::serve::{ServerCommand, ServerEvent};
use baton_wire::{Epoch, RegionId};

use super::{OwnerAt, Placement, StandbySettings};
use crate::hosts::{Happened, HostsError, ProcessEvent};
use crate::migrations::Action;

const REGION: RegionId = RegionId(3);

fn owner() -> OwnerAt {
    OwnerAt { host: "h1".into(), process: "h1-p1".into(), epoch: Epoch(2) }
}

fn address() -> SocketAddr {
    "127.0.0.1:9100".parse().unwrap()
}

fn event(host: &str, process: &str, event: ServerEvent) -> ProcessEvent {
    ProcessEvent { host: host.into(), process: process.into(), happened: Happened::Event(event) }
}

fn release() -> Vec<Action> {
    vec![Action::Release { host: "h2".into(), process: "h2-p4".into() }]
}

fn holding(tick: u64) -> ServerEvent {
    ServerEvent::StandbyHolding { region: REGION, owner_epoch: Epoch(2), tick, bytes: tick * 1000 }
}

/// A placement whose standby holds tick 100.
fn placed() -> (Placement, Instant) {
    let now = Instant::now();
    let (mut placement, actions) = Placement::start(REGION, owner(), "h2", StandbySettings::default(), now);
    assert_eq!(actions, vec![Action::Claim { host: "h2".into() }]);
    let actions = placement.handle_claimed("h2", Ok(("h2-p4".into(), address())), now);
    assert_eq!(
        actions,
        vec![Action::Run {
            host: "h2".into(),
            process: "h2-p4".into(),
            command: ServerCommand::Prepare { region: REGION }
        }]
    );
    assert_eq!(placement.promotable(Epoch(2)), None, "nothing held yet");
    let actions = placement.handle_event(&event("h2", "h2-p4", ServerEvent::Prepared { region: REGION }), now);
    assert_eq!(
        actions,
        vec![Action::Run {
            host: "h1".into(),
            process: "h1-p1".into(),
            command: ServerCommand::FeedStandby { region: REGION, to: address() },
        }],
        "the owner is told to feed the prepared slot"
    );
    assert_eq!(placement.promotable(Epoch(2)), None, "fed, but holding nothing yet");
    placement.handle_event(&event("h2", "h2-p4", holding(100)), now);
    (placement, now)
}

#[test]
fn a_standby_is_claimed_prepared_fed_and_then_promotable_for_its_owners_epoch_only() {
    let (mut placement, now) = placed();
    assert_eq!(placement.promotable(Epoch(2)), Some(("h2".into(), "h2-p4".into(), 100)));
    assert_eq!(placement.promotable(Epoch(3)), None, "a standby of another epoch's owner");
    // A report from another process, or about another region or epoch, changes nothing.
    placement.handle_event(&event("h3", "h2-p4", holding(200)), now);
    let other_epoch = ServerEvent::StandbyHolding { region: REGION, owner_epoch: Epoch(1), tick: 300, bytes: 0 };
    placement.handle_event(&event("h2", "h2-p4", other_epoch), now);
    assert_eq!(placement.promotable(Epoch(2)), Some(("h2".into(), "h2-p4".into(), 100)));
    placement.handle_event(&event("h2", "h2-p4", holding(130)), now + Duration::from_secs(1));
    assert_eq!(placement.promotable(Epoch(2)).map(|(_, _, tick)| tick), Some(130));
    let view = placement.view();
    assert_eq!((view.state.as_str(), view.tick), ("holding", Some(130)));
    assert!((view.bytes_per_second - 30_000.0).abs() < 1.0, "{}", view.bytes_per_second);
}

#[test]
fn the_owners_death_keeps_the_standby_for_the_failover() {
    let (mut placement, now) = placed();
    let exited = ProcessEvent {
        host: "h1".into(),
        process: "h1-p1".into(),
        happened: Happened::Exited { regions: vec![REGION] },
    };
    assert!(placement.handle_event(&exited, now).is_empty());
    let detached = ServerEvent::StandbyLost { region: REGION, reason: "link lost".into(), detached: true };
    assert!(placement.handle_event(&event("h2", "h2-p4", detached), now).is_empty());
    assert_eq!(placement.promotable(Epoch(2)), Some(("h2".into(), "h2-p4".into(), 100)), "kept for the failover");
    // Nobody serves the region: it is kept for the keep time, then released.
    let settings = StandbySettings::default();
    assert!(placement.handle_time(now + settings.detached_keep / 2, None, true).is_empty());
    assert_eq!(placement.handle_time(now + settings.detached_keep, None, true), release());
    assert!(placement.is_done());
}

#[test]
fn a_detached_standby_is_replaced_once_its_owner_reports_serving_after_the_feed_broke() {
    let (mut placement, now) = placed();
    let detached = ServerEvent::StandbyLost { region: REGION, reason: "the owner went silent".into(), detached: true };
    placement.handle_event(&event("h2", "h2-p4", detached), now);
    // The owner's last report is not newer than the detachment: its host may be dead and not yet
    // declared so (a killed host's last report still says its processes serve), so the standby
    // stays for the failover.
    let later = now + Duration::from_millis(500);
    assert!(placement.handle_time(later, Some((&owner(), now)), true).is_empty());
    assert_eq!(placement.promotable(Epoch(2)), Some(("h2".into(), "h2-p4".into(), 100)));
    // A report after it: the owner lives (it was starved, or the link broke), and a fresh standby
    // is better.
    assert_eq!(placement.handle_time(later, Some((&owner(), now + Duration::from_millis(1))), true), release());
}

#[test]
fn failures_end_the_standby_and_release_its_process() {
    let ends: Vec<(ProcessEvent, Vec<Action>)> = vec![
        (event("h1", "h1-p1", ServerEvent::FeedEnded { region: REGION, reason: "a migration".into() }), release()),
        (
            event("h2", "h2-p4", ServerEvent::StandbyLost { region: REGION, reason: "digest".into(), detached: false }),
            release(),
        ),
        (event("h2", "h2-p4", ServerEvent::Error { region: Some(REGION), error: "no slot".into() }), release()),
        // An exited process has nothing to release.
        (
            ProcessEvent { host: "h2".into(), process: "h2-p4".into(), happened: Happened::Exited { regions: vec![] } },
            vec![],
        ),
    ];
    for (end, released) in ends {
        let (mut placement, now) = placed();
        assert_eq!(placement.handle_event(&end, now), released, "{end:?}");
        assert!(placement.is_done() && placement.ended().is_some());
        assert_eq!(placement.promotable(Epoch(2)), None);
    }
}

#[test]
fn a_new_owner_or_an_unusable_host_ends_the_standby() {
    let (mut placement, now) = placed();
    assert!(placement.handle_time(now, Some((&owner(), now)), true).is_empty(), "same owner, usable host: nothing");
    let moved = OwnerAt { host: "h3".into(), process: "h3-p1".into(), epoch: Epoch(3) };
    assert_eq!(placement.handle_time(now, Some((&moved, now)), true), release());
    let (mut placement, now) = placed();
    assert_eq!(
        placement.handle_time(now, Some((&owner(), now)), false),
        release(),
        "its host is dead, draining or freed"
    );
}

#[test]
fn steps_that_take_too_long_end_the_standby() {
    let settings = StandbySettings::default();
    let now = Instant::now();
    let (mut claiming, _) = Placement::start(REGION, owner(), "h2", settings, now);
    // The agent's own claim timeout plus a second for its answer to arrive.
    assert!(claiming.handle_time(now + settings.claim, Some((&owner(), now)), true).is_empty());
    assert!(!claiming.is_done(), "the agent may still answer");
    assert!(
        claiming.handle_time(now + settings.claim + Duration::from_secs(1), Some((&owner(), now)), true).is_empty()
    );
    assert!(claiming.is_done(), "nothing to release before a process was claimed");
    // A late claim answer gives the process back.
    assert_eq!(claiming.handle_claimed("h2", Ok(("h2-p4".into(), address())), now), release());
    let (mut preparing, _) = Placement::start(REGION, owner(), "h2", settings, now);
    preparing.handle_claimed("h2", Ok(("h2-p4".into(), address())), now);
    assert!(preparing.handle_time(now + settings.prepare / 2, Some((&owner(), now)), true).is_empty());
    assert_eq!(preparing.handle_time(now + settings.prepare, Some((&owner(), now)), true), release());
    let (mut feeding, _) = Placement::start(REGION, owner(), "h2", settings, now);
    feeding.handle_claimed("h2", Ok(("h2-p4".into(), address())), now);
    feeding.handle_event(&event("h2", "h2-p4", ServerEvent::Prepared { region: REGION }), now);
    let first_hold = now + settings.first_hold;
    assert!(feeding.handle_time(first_hold - Duration::from_millis(1), Some((&owner(), now)), true).is_empty());
    assert_eq!(feeding.view().state, "feeding");
    assert_eq!(feeding.handle_time(first_hold, Some((&owner(), now)), true), release());
    assert_eq!(feeding.ended(), Some("the standby held no tick in time"));
    let (mut failed, _) = Placement::start(REGION, owner(), "h2", settings, now);
    assert!(failed.handle_claimed("h2", Err(HostsError::NoWarmProcess("none".into())), now).is_empty());
    assert!(failed.is_done());
}

#[test]
fn the_standby_witnesses_its_owners_silence_until_it_hears_it_again() {
    let (mut placement, now) = placed();
    assert_eq!(placement.owner_silent(Epoch(2), now), None);
    let silent = ServerEvent::OwnerSilent { region: REGION, owner_epoch: Epoch(2), silent_ms: 200 };
    placement.handle_event(&event("h2", "h2-p4", silent), now);
    assert_eq!(placement.owner_silent(Epoch(2), now + Duration::from_millis(100)), Some(Duration::from_millis(300)));
    assert_eq!(placement.owner_silent(Epoch(3), now), None, "another epoch's owner");
    // Heard again: no longer a witness.
    placement.handle_event(&event("h2", "h2-p4", ServerEvent::OwnerHeard { region: REGION }), now);
    assert_eq!(placement.owner_silent(Epoch(2), now), None);
    // A newer held tick also says the owner is alive; a report of the same tick does not.
    let silent = ServerEvent::OwnerSilent { region: REGION, owner_epoch: Epoch(2), silent_ms: 200 };
    placement.handle_event(&event("h2", "h2-p4", silent), now);
    placement.handle_event(&event("h2", "h2-p4", holding(100)), now);
    assert!(placement.owner_silent(Epoch(2), now).is_some());
    placement.handle_event(&event("h2", "h2-p4", holding(101)), now);
    assert_eq!(placement.owner_silent(Epoch(2), now), None);
    // Another process's word is not the standby's.
    let silent = ServerEvent::OwnerSilent { region: REGION, owner_epoch: Epoch(2), silent_ms: 200 };
    placement.handle_event(&event("h3", "h3-p4", silent), now);
    assert_eq!(placement.owner_silent(Epoch(2), now), None);
}

#[test]
fn a_standby_whose_feed_broke_stays_a_witness_of_its_owners_silence() {
    let (mut placement, now) = placed();
    let detached = ServerEvent::StandbyLost { region: REGION, reason: "link lost".into(), detached: true };
    placement.handle_event(&event("h2", "h2-p4", detached), now);
    assert_eq!(placement.owner_silent(Epoch(2), now + Duration::from_millis(300)), Some(Duration::from_millis(300)));
    // Silent since before it detached: the earlier time stands.
    let (mut placement, now) = placed();
    let silent = ServerEvent::OwnerSilent { region: REGION, owner_epoch: Epoch(2), silent_ms: 200 };
    placement.handle_event(&event("h2", "h2-p4", silent), now);
    let detached = ServerEvent::StandbyLost { region: REGION, reason: "link lost".into(), detached: true };
    placement.handle_event(&event("h2", "h2-p4", detached), now + Duration::from_millis(100));
    assert_eq!(placement.owner_silent(Epoch(2), now + Duration::from_millis(100)), Some(Duration::from_millis(300)));
}

#[test]
fn a_standby_says_whether_and_why_it_ended() {
    let (mut placement, now) = placed();
    assert!(!placement.is_done());
    assert_eq!(placement.ended(), None);
    let refused = ServerEvent::Error { region: Some(REGION), error: "no slot".into() };
    placement.handle_event(&event("h2", "h2-p4", refused), now);
    assert!(placement.is_done());
    assert_eq!(placement.ended(), Some("the standby's process refused: no slot"));
}

/// What the standby's process or the owner says about another region (each may serve several),
/// and what another process on the owner's host says, changes nothing.
#[test]
fn events_about_another_region_or_from_another_process_leave_the_standby_alone() {
    let other = RegionId(4);
    let from_standby = [
        ServerEvent::OwnerSilent { region: other, owner_epoch: Epoch(2), silent_ms: 200 },
        ServerEvent::OwnerSilent { region: REGION, owner_epoch: Epoch(1), silent_ms: 200 },
        ServerEvent::StandbyLost { region: other, reason: "x".into(), detached: true },
        ServerEvent::StandbyLost { region: other, reason: "x".into(), detached: false },
        ServerEvent::Error { region: Some(other), error: "x".into() },
    ];
    for said in from_standby {
        let (mut placement, now) = placed();
        assert!(placement.handle_event(&event("h2", "h2-p4", said.clone()), now).is_empty(), "{said:?}");
        assert_eq!(placement.view().state, "holding", "{said:?}");
        assert_eq!(placement.owner_silent(Epoch(2), now), None, "{said:?}");
    }
    let from_owner_host = [
        ("h1-p1", ServerEvent::FeedEnded { region: other, reason: "x".into() }),
        ("h1-p9", ServerEvent::FeedEnded { region: REGION, reason: "x".into() }),
    ];
    for (process, said) in from_owner_host {
        let (mut placement, now) = placed();
        assert!(placement.handle_event(&event("h1", process, said.clone()), now).is_empty(), "{said:?}");
        assert_eq!(placement.view().state, "holding", "{said:?} from {process}");
    }
    // Heard about another region: the owner stays unheard.
    let (mut placement, now) = placed();
    let silent = ServerEvent::OwnerSilent { region: REGION, owner_epoch: Epoch(2), silent_ms: 200 };
    placement.handle_event(&event("h2", "h2-p4", silent), now);
    placement.handle_event(&event("h2", "h2-p4", ServerEvent::OwnerHeard { region: other }), now);
    assert!(placement.owner_silent(Epoch(2), now).is_some());
    // A slot prepared for another region does not start the feed.
    let now = Instant::now();
    let (mut preparing, _) = Placement::start(REGION, owner(), "h2", StandbySettings::default(), now);
    preparing.handle_claimed("h2", Ok(("h2-p4".into(), address())), now);
    assert!(preparing.handle_event(&event("h2", "h2-p4", ServerEvent::Prepared { region: other }), now).is_empty());
    assert_eq!(preparing.view().state, "preparing");
}

#[test]
fn the_owner_refusing_to_feed_ends_the_standby_but_not_once_it_holds() {
    let now = Instant::now();
    let (mut feeding, _) = Placement::start(REGION, owner(), "h2", StandbySettings::default(), now);
    feeding.handle_claimed("h2", Ok(("h2-p4".into(), address())), now);
    feeding.handle_event(&event("h2", "h2-p4", ServerEvent::Prepared { region: REGION }), now);
    assert_eq!(feeding.view().state, "feeding");
    let refused = ServerEvent::Error { region: Some(REGION), error: "no such region".into() };
    assert_eq!(feeding.handle_event(&event("h1", "h1-p1", refused.clone()), now), release());
    assert_eq!(feeding.ended(), Some("the owner refused to feed the standby: no such region"));
    // Holding, the owner's error answers some other command about the region.
    let (mut holding_one, now) = placed();
    assert!(holding_one.handle_event(&event("h1", "h1-p1", refused), now).is_empty());
    assert!(!holding_one.is_done());
}

#[test]
fn the_link_cost_is_bytes_over_seconds_between_reports() {
    let (mut placement, now) = placed();
    // Two reports at the same instant give no rate (no division by zero).
    placement.handle_event(&event("h2", "h2-p4", holding(150)), now);
    assert_eq!(placement.view().bytes_per_second, 0.0);
    placement.handle_event(&event("h2", "h2-p4", holding(250)), now + Duration::from_secs(2));
    assert_eq!(placement.view().bytes_per_second, 50_000.0);
}

#[test]
fn an_ended_standby_stays_ended_with_its_first_reason() {
    let (mut placement, now) = placed();
    let gave_up = ServerEvent::StandbyLost { region: REGION, reason: "digest".into(), detached: false };
    placement.handle_event(&event("h2", "h2-p4", gave_up), now);
    let moved = OwnerAt { host: "h3".into(), process: "h3-p1".into(), epoch: Epoch(3) };
    assert!(placement.handle_time(now + Duration::from_secs(600), Some((&moved, now)), false).is_empty());
    assert_eq!(placement.ended(), Some("the standby gave up: digest"));
}

/// The table with a standby of `owner()` that the coordinator knows: `h2-p4`, holding tick 100.
fn known() -> (super::StandbyState, Instant) {
    let (placement, now) = placed();
    let mut state = super::StandbyState::default();
    state.placements.insert(REGION, placement);
    (state, now)
}

#[test]
fn a_standby_made_before_the_coordinator_restarted_is_adopted_and_promotable() {
    let now = Instant::now();
    let mut state = super::StandbyState::default();
    let actions = state.adopt(&event("h3", "h3-p2", holding(700)), Some(owner()), StandbySettings::default(), now);
    assert_eq!(actions, Vec::new());
    let placement = &state.placements[&REGION];
    assert_eq!(placement.promotable(Epoch(2)), Some(("h3".into(), "h3-p2".into(), 700)));
    assert_eq!(placement.view().state, "holding");
    // It then follows the owner as any standby does.
    let placement = state.placements.get_mut(&REGION).unwrap();
    placement.handle_event(&event("h3", "h3-p2", holding(720)), now);
    assert_eq!(placement.promotable(Epoch(2)), Some(("h3".into(), "h3-p2".into(), 720)));
}

#[test]
fn an_adopted_standby_replaces_a_placement_not_yet_holding_whose_process_goes_back() {
    let now = Instant::now();
    for fed in [false, true] {
        let mut state = super::StandbyState::default();
        let (mut placement, _) = Placement::start(REGION, owner(), "h2", StandbySettings::default(), now);
        placement.handle_claimed("h2", Ok(("h2-p4".into(), address())), now);
        if fed {
            placement.handle_event(&event("h2", "h2-p4", ServerEvent::Prepared { region: REGION }), now);
            assert_eq!(placement.view().state, "feeding");
        }
        state.placements.insert(REGION, placement);
        let actions = state.adopt(&event("h3", "h3-p2", holding(700)), Some(owner()), StandbySettings::default(), now);
        assert_eq!(actions, vec![(REGION, Action::Release { host: "h2".into(), process: "h2-p4".into() })]);
        assert_eq!(state.placements[&REGION].promotable(Epoch(2)), Some(("h3".into(), "h3-p2".into(), 700)));
        // The owner refuses the replaced placement's feed: the adopted standby is the one it feeds.
        let refused = ServerEvent::FeedEnded { region: REGION, reason: "the region has a standby already".into() };
        let placement = state.placements.get_mut(&REGION).unwrap();
        assert_eq!(placement.handle_event(&event("h1", "h1-p1", refused), now), Vec::new());
        assert_eq!(placement.promotable(Epoch(2)), Some(("h3".into(), "h3-p2".into(), 700)));
        // It ends as any standby does: when it gives up, its process goes back.
        let gave_up = ServerEvent::StandbyLost { region: REGION, reason: "the feed ended".into(), detached: false };
        let actions = placement.handle_event(&event("h3", "h3-p2", gave_up), now);
        assert_eq!(actions, vec![Action::Release { host: "h3".into(), process: "h3-p2".into() }]);
    }
    // A claim still out when the standby is adopted goes back when it is answered.
    let mut state = super::StandbyState::default();
    let (placement, _) = Placement::start(REGION, owner(), "h2", StandbySettings::default(), now);
    state.placements.insert(REGION, placement);
    assert_eq!(
        state.adopt(&event("h3", "h3-p2", holding(700)), Some(owner()), StandbySettings::default(), now),
        Vec::new()
    );
    let placement = state.placements.get_mut(&REGION).unwrap();
    assert_eq!(placement.handle_claimed("h2", Ok(("h2-p4".into(), address())), now), release());
    assert_eq!(placement.promotable(Epoch(2)), Some(("h3".into(), "h3-p2".into(), 700)));
}

#[test]
fn no_standby_is_adopted_over_one_that_holds_or_from_a_released_process_another_epoch_or_the_owners_host() {
    let settings = StandbySettings::default();
    let adopted = |state: &mut super::StandbyState, event: ProcessEvent, owner: Option<OwnerAt>, now: Instant| {
        state.adopt(&event, owner, settings, now);
        state.placements.get(&REGION).and_then(|placement| placement.promotable(Epoch(2)))
    };
    let held = Some(("h2".into(), "h2-p4".into(), 100));
    // The known standby holds ticks: the other report is not the one the owner feeds.
    let (mut state, now) = known();
    assert_eq!(adopted(&mut state, event("h3", "h3-p2", holding(700)), Some(owner()), now), held);
    // Its own reports are its own.
    let (mut state, now) = known();
    assert_eq!(adopted(&mut state, event("h2", "h2-p4", holding(700)), Some(owner()), now), held);
    // A process released lately reports on its way out.
    let now = Instant::now();
    let mut state = super::StandbyState::default();
    state.released.insert(("h3".into(), "h3-p2".into()), now);
    assert_eq!(adopted(&mut state, event("h3", "h3-p2", holding(700)), Some(owner()), now), None);
    let later = now + super::RELEASED_KEEP;
    assert_eq!(
        adopted(&mut state, event("h3", "h3-p2", holding(700)), Some(owner()), later),
        Some(("h3".into(), "h3-p2".into(), 700)),
        "a release long past does not stand in the way"
    );
    // The owner is not known to serve, or at another epoch, or the report is from its host.
    let mut state = super::StandbyState::default();
    assert_eq!(adopted(&mut state, event("h3", "h3-p2", holding(700)), None, now), None);
    let newer = OwnerAt { epoch: Epoch(3), ..owner() };
    assert_eq!(adopted(&mut state, event("h3", "h3-p2", holding(700)), Some(newer), now), None);
    assert_eq!(adopted(&mut state, event("h1", "h1-p2", holding(700)), Some(owner()), now), None);
    // Another kind of event adopts nothing.
    let prepared = event("h3", "h3-p2", ServerEvent::Prepared { region: REGION });
    assert_eq!(adopted(&mut state, prepared, Some(owner()), now), None);
    assert!(state.placements.is_empty());
}

#[test]
fn a_placement_following_an_older_owner_yields_to_a_standby_of_the_new_one() {
    let (mut state, now) = known();
    let newer = OwnerAt { process: "h4-p1".into(), host: "h4".into(), epoch: Epoch(3) };
    let event = event(
        "h3",
        "h3-p2",
        ServerEvent::StandbyHolding { region: REGION, owner_epoch: Epoch(3), tick: 900, bytes: 1 },
    );
    let actions = state.adopt(&event, Some(newer), StandbySettings::default(), now);
    assert_eq!(actions, vec![(REGION, Action::Release { host: "h2".into(), process: "h2-p4".into() })]);
    assert_eq!(state.placements[&REGION].promotable(Epoch(3)), Some(("h3".into(), "h3-p2".into(), 900)));
}

#[test]
fn a_standby_taken_by_a_failover_is_not_adopted_again_before_its_promotion_lands() {
    let (mut state, now) = known();
    assert_eq!(state.take(REGION, Epoch(1), now), None, "it holds no tick of that epoch");
    assert_eq!(state.take(REGION, Epoch(2), now), Some(("h2".into(), "h2-p4".into(), 100)));
    assert!(state.placements.is_empty());
    // The owner is slow, not dead: it sends one more round, the standby reports it.
    let actions = state.adopt(&event("h2", "h2-p4", holding(101)), Some(owner()), StandbySettings::default(), now);
    assert_eq!(actions, Vec::new());
    assert!(state.placements.is_empty(), "promoting, not a standby");
    assert_eq!(state.take(REGION, Epoch(2), now), None);
}
