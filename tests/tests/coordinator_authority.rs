//! Handoff commits decided by the coordinator's persistent region directory, across a coordinator
//! crash (kill -9) and restart in the middle of a handoff (invariants 1, 2 and 5).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use baton_harness::cluster::{Cluster, coordinator_binary, sample_world, server_binary};
use baton_wire::serve::{GameObject, ServerEvent};

fn spec() -> GameObject {
    sample_world(500, 50, 50, 0, 5)
}

#[test]
fn handoffs_commit_at_the_coordinator() {
    let mut cluster =
        Cluster::start_coordinated(&server_binary().unwrap(), &coordinator_binary().unwrap(), 2, &[]).unwrap();
    cluster.host(&spec(), 20).unwrap();
    for _ in 0..6 {
        let to = 1 - cluster.owner;
        let outcome = cluster.handoff(to, Duration::from_secs(30)).unwrap();
        assert!(outcome.committed, "{outcome:?}");
        cluster.play(Duration::from_millis(200)).unwrap();
    }
    let settled = cluster.settle_and_check().unwrap();
    assert!(settled.sent > 0);
    assert_eq!((settled.lost, settled.applied_twice, settled.arrived_twice), (0, 0, 0));
    // The directory knows the owner and the epoch: registered at 1, plus six commits.
    let owner_name = cluster.processes[cluster.owner].name.clone();
    assert_eq!(cluster.directory_rows().unwrap(), vec![(1, owner_name, 7)]);
}

#[test]
fn a_coordinator_killed_mid_handoff_restarts_and_the_handoff_resolves_to_one_owner() {
    let coordinator = coordinator_binary().unwrap();
    let mut cluster = Cluster::start_coordinated(&server_binary().unwrap(), &coordinator, 2, &[]).unwrap();
    cluster.host(&spec(), 20).unwrap();
    // The coordinator hangs (SIGSTOP) before the handoff starts, so the target's commit finds no
    // answer; it is killed while the source is frozen and the commit is not yet decided.
    cluster.pause_coordinator().unwrap();
    let mark = cluster.begin_handoff(1).unwrap();
    cluster.play_until(mark, Duration::from_secs(30), |event| matches!(event, ServerEvent::Frozen { .. })).unwrap();
    cluster.kill_coordinator();
    // The commit and the source's settling both find the authority gone; they keep asking.
    cluster.play(Duration::from_millis(2500)).unwrap();
    cluster.restart_coordinator(&coordinator).unwrap();
    let outcome = cluster
        .play_until(mark, Duration::from_secs(30), |event| {
            matches!(event, ServerEvent::HandedOff { .. } | ServerEvent::Aborted { owning: true, .. })
        })
        .unwrap();
    eprintln!("outcome after the coordinator's restart: {outcome:?}");
    let handed_off = matches!(outcome, ServerEvent::HandedOff { .. });
    if handed_off {
        cluster.owner = 1;
    }
    cluster.play(Duration::from_millis(500)).unwrap();
    // Exactly one owner: the directory's, and only it still ticks the region.
    let rows = cluster.directory_rows().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, cluster.processes[cluster.owner].name, "directory {rows:?}, outcome {outcome:?}");
    assert_eq!(rows[0].2, 2, "one change of owner (a commit, or the source reclaiming)");
    // The other side let go: a source that handed off retires its copy; a target that lost
    // discards what it received.
    if handed_off {
        cluster.processes[0]
            .wait_for(mark, Duration::from_secs(10), |event| matches!(event, ServerEvent::Retired { .. }))
            .unwrap();
    } else {
        cluster.processes[1]
            .wait_for(0, Duration::from_secs(10), |event| matches!(event, ServerEvent::Aborted { owning: false, .. }))
            .unwrap();
    }
    let settled = cluster.settle_and_check().unwrap();
    assert_eq!((settled.lost, settled.applied_twice), (0, 0));
}
