//! The SDK's example game (`sdk/runtime/examples/tally-region.rs`, one file, no Baton code of its
//! own) is a whole region server: host agents keep it as their warm pool, the coordinator creates
//! a region of it and migrates it between hosts through the same handoff as the sample's, and a
//! player playing through the gateway meanwhile has every input applied once, on one connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use baton_client::{Client, ClientOptions, Event};
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
        capacity_cores: Vec::new(),
        coordinator_args: Vec::new(),
    };
    let server = ServerCommandLine { binary: tally_region_binary().unwrap(), args: Vec::new(), env: Vec::new() };
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

    // A player plays through the gateway the whole time: 20 inputs/s, each adding its first byte
    // to the avatar's tally, which the game's view reports back.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (options, token) = (fleet.client_options(), fleet.token(7, 1));
    let playing = Arc::new(AtomicBool::new(true));
    let player = runtime.spawn({
        let playing = playing.clone();
        async move { play(options, token, playing).await }
    });
    // The player is in (the host's load report counts it) before the region moves.
    fleet.wait_for_players(1, Duration::from_secs(30));
    for to in ["h2", "h1"] {
        let record = fleet.migrate(1, to, Duration::from_secs(60)).unwrap();
        assert_eq!(record["phase"], "committed", "{record}");
        assert!(record["freeze_ms"].as_f64().is_some(), "the source reports its freeze: {record}");
        let regions = fleet.ok("GET", "/v1/regions", None).unwrap();
        let row = regions.as_array().unwrap().iter().find(|row| row["region"] == 1).cloned().unwrap();
        assert_eq!(row["host"], to, "{regions}");
    }
    playing.store(false, Ordering::Relaxed);
    let (sent, tally) = runtime.block_on(player).unwrap();
    // Every input applied exactly once, through two migrations, on one connection.
    assert!(sent > 0, "the player played");
    assert_eq!(tally, (sent, expected_sum(sent)), "the avatar's tally after {sent} inputs");
}

/// The sum of the first bytes of inputs 1..=n (each input's first byte is its sequence mod 251).
fn expected_sum(inputs: u64) -> u64 {
    (1..=inputs).map(|seq| seq % 251).sum()
}

/// Plays until `playing` turns false, then waits for the update that acknowledges the last input;
/// returns the inputs sent and the tally the game reports `(inputs, sum)`. Panics on a disconnect.
async fn play(options: ClientOptions, token: String, playing: Arc<AtomicBool>) -> (u64, (u64, u64)) {
    let mut client = Client::connect(&options, &token).await.expect("connect");
    let mut sent = 0;
    let mut interval = tokio::time::interval(Duration::from_millis(50));
    let mut tally = (0, 0);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                if playing.load(Ordering::Relaxed) {
                    sent = client.send_input(vec![((sent + 1) % 251) as u8, 0, 0]).await.expect("send");
                } else if tally.0 == sent {
                    return (sent, tally);
                }
            }
            event = client.next_event() => match event {
                Some(Event::Update(update)) if update.payload.len() == 16 => {
                    let field = |at: usize| u64::from_le_bytes(update.payload[at..at + 8].try_into().unwrap());
                    tally = (field(0), field(8));
                }
                Some(Event::Closed { reason, .. }) => panic!("disconnected: {reason}"),
                Some(_) => {}
                None => panic!("the session ended"),
            }
        }
    }
}
