//! Real processes, real sockets: a busy sample region moves back and forth between two
//! `sample-region-server --serve` processes over mutually authenticated QUIC while 50 players
//! send 20 inputs/s each; then target processes are killed (SIGKILL) mid-handoff.
//!
//! These live with the sample server because they run its binary (`CARGO_BIN_EXE_*` is only
//! given to a package's own tests).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use sample_region_server::cluster::Cluster;
use serde_json::json;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sample-region-server"))
}

#[test]
fn a_busy_region_moves_back_and_forth_twenty_times_without_losing_an_input() {
    let mut cluster = Cluster::start(binary(), 2, &[]).unwrap();
    cluster.host(&json!({"objects": 2000, "npcs": 200, "plants": 200, "seed": 5}), 50).unwrap();
    cluster.play(Duration::from_secs(1)).unwrap();
    let mut freezes = Vec::new();
    for handoff in 0..20 {
        let to = 1 - cluster.owner;
        let outcome = cluster.handoff(to, Duration::from_secs(30)).unwrap();
        // Every handoff commits: the digest check passed (a mismatch aborts), the epoch moved.
        assert!(outcome.committed && outcome.aborted.is_none(), "handoff {handoff}: {outcome:?}");
        assert!(outcome.snapshot_bytes > 0);
        freezes.push(outcome.freeze_us);
        cluster.play(Duration::from_millis(300)).unwrap();
    }
    let (sent, lost, duplicated, digest) = cluster.settle_and_check().unwrap();
    println!(
        "20 handoffs: {sent} inputs sent, {lost} lost, {duplicated} duplicated; freezes (us) {freezes:?}; final digest {digest}"
    );
    assert!(sent > 50 * 20 * 6, "the players kept playing ({sent} inputs)");
    assert_eq!(lost, 0, "inputs lost");
    assert_eq!(duplicated, 0, "inputs applied twice or out of order");
}
