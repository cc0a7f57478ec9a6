//! The SDK's example game (`sdk/runtime/examples/tally-region.rs`, one file, no Baton code of its
//! own) is a whole region server: host agents keep it as their warm pool, the coordinator creates
//! a region of it and migrates it between hosts through the same handoff as the sample's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use baton_harness::cluster::tally_region_binary;
use baton_harness::fleet::{Fleet, FleetSpec, ServerCommandLine};
use serde_json::json;

#[test]
fn the_example_game_runs_under_the_coordinator_and_migrates() {
    let spec = FleetSpec {
        hosts: 2,
        pool: 1,
        capacity: 4,
        world_regions: 0,
        columns: 1,
        tick_rate: 20,
        checkpoint_every_s: 5.0,
    };
    let server = ServerCommandLine { binary: tally_region_binary().unwrap(), args: Vec::new() };
    let fleet = Fleet::start_with(&spec, server).unwrap();
    fleet.wait_hosts_ready(2, 1, Duration::from_secs(90)).unwrap();

    // The game refuses a world it does not understand, and the refusal reaches the operator.
    let (status, refused) =
        fleet.call("POST", "/v1/regions", Some(json!({"region": 1, "host": "h1", "world": {"crates": 3}}))).unwrap();
    assert_eq!(status, 409, "{refused}");
    assert!(refused["error"].as_str().unwrap_or_default().contains("unknown world key"), "{refused}");
    fleet.wait_hosts_ready(2, 1, Duration::from_secs(30)).unwrap();

    let created =
        fleet.ok("POST", "/v1/regions", Some(json!({"region": 1, "host": "h1", "world": {"lamps": 12}}))).unwrap();
    assert_eq!(created["host"], "h1", "{created}");
    for to in ["h2", "h1"] {
        let record = fleet.migrate(1, to, Duration::from_secs(60)).unwrap();
        assert_eq!(record["phase"], "committed", "{record}");
        assert!(record["freeze_ms"].as_f64().is_some(), "the source reports its freeze: {record}");
        let regions = fleet.ok("GET", "/v1/regions", None).unwrap();
        let row = regions.as_array().unwrap().iter().find(|row| row["region"] == 1).cloned().unwrap();
        assert_eq!(row["host"], to, "{regions}");
    }
}
