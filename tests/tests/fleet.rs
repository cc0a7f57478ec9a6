//! A deployment operated through the admin API: a coordinator, three host agents with warm pools,
//! a gateway, twelve regions and players. Regions are created, migrated and a host drained while
//! the players play; the coordinator is killed mid-migration and restarted. Zero disconnects, no
//! input lost or applied twice, one owner per region throughout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton_harness::fleet::{Fleet, FleetSpec};
use baton_harness::players::{Movement, PlayerOutcome, PlayerPlan, run_player};
use baton_harness::wait_until;
use serde_json::{Value, json};

fn spec(hosts: usize, pool: usize) -> FleetSpec {
    FleetSpec {
        hosts,
        pool,
        capacity: 12,
        world_regions: 12,
        columns: 4,
        tick_rate: 20,
        checkpoint_every_s: 5.0,
        capacity_cores: Vec::new(),
        coordinator_args: Vec::new(),
    }
}

/// Invariant 1 at a quiet moment (no migration running): every region of the directory is served by
/// exactly one process, and that process is the directory's owner.
fn assert_one_owner_each(fleet: &Fleet) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let regions = fleet.ok("GET", "/v1/regions", None).unwrap();
        let hosts = fleet.ok("GET", "/v1/hosts", None).unwrap();
        let processes: Vec<Value> = hosts
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|host| host["processes"].as_array().cloned().unwrap_or_default())
            .collect();
        let wrong: Vec<String> = regions
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|row| {
                let serving: Vec<&str> = processes
                    .iter()
                    .filter(|process| {
                        process["regions"].as_array().is_some_and(|regions| regions.contains(&row["region"]))
                    })
                    .filter_map(|process| process["name"].as_str())
                    .collect();
                (serving != [row["owner"].as_str().unwrap_or_default()]).then(|| format!("{row} served by {serving:?}"))
            })
            .collect();
        if wrong.is_empty() {
            return;
        }
        // A retiring source stops listing the region a moment after the handoff's last event.
        assert!(std::time::Instant::now() < deadline, "regions without exactly one owner: {wrong:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the hosts' load reports (once a second) count `players` in all regions.
fn wait_for_players(fleet: &Fleet, players: u64) {
    fleet.wait_for_players(players, Duration::from_secs(60));
}

/// A player who wanders about `region` at 20 inputs/s.
fn wanderer(player: u64, region: u64, start_after: Duration, play_for: Duration, settle_for: Duration) -> PlayerPlan {
    PlayerPlan { start_after, settle_for, ..PlayerPlan::new(player, region, Movement::Wander, play_for) }
}

/// Starts moving `region` to `to`, kills the coordinator with SIGKILL as soon as the handoff runs,
/// starts it again after 2 s and returns the migration's final record.
fn migrate_through_a_coordinator_crash(fleet: &mut Fleet, region: u64, to: &str) -> Value {
    let record = fleet.ok("POST", "/v1/migrations", Some(json!({"region": region, "to_host": to}))).unwrap();
    let id = record["id"].as_u64().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fleet.ok("GET", &format!("/v1/migrations/{id}"), None).unwrap()["phase"] != "transferring" {
        assert!(std::time::Instant::now() < deadline, "migration {id} never reached the handoff");
        std::thread::sleep(Duration::from_millis(5));
    }
    fleet.kill_coordinator();
    std::thread::sleep(Duration::from_secs(2));
    fleet.restart_coordinator().unwrap();
    let resolved = fleet.wait_migration(id, Duration::from_secs(60)).unwrap();
    eprintln!("after the coordinator's restart: {resolved}");
    resolved
}

fn host_of(fleet: &Fleet, region: u64) -> String {
    let regions = fleet.ok("GET", "/v1/regions", None).unwrap();
    let row = regions.as_array().unwrap().iter().find(|row| row["region"] == region).cloned().unwrap_or(Value::Null);
    row["host"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn operators_migrate_regions_and_drain_a_host_while_players_play() {
    let mut fleet = Fleet::start(&spec(3, 3)).unwrap();
    fleet.wait_hosts_ready(3, 3, Duration::from_secs(90)).unwrap();
    for region in 1..=12u64 {
        let host = format!("h{}", (region - 1) % 3 + 1);
        let created = fleet
            .ok("POST", "/v1/regions", Some(json!({"region": region, "host": host, "world": {"objects": 40, "npcs": 4, "plants": 4, "seed": region}})))
            .unwrap();
        assert_eq!(created["host"], json!(host), "{created}");
    }
    assert_one_owner_each(&fleet);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let options = fleet.client_options();
    // The players play until every step below is done (`play_for` only bounds a hang).
    let play_for = Duration::from_secs(300);
    let stop = Arc::new(AtomicBool::new(false));
    let players: Vec<_> = (1..=48u64)
        .map(|player| {
            let region = (player - 1) % 12 + 1;
            let plan = PlayerPlan {
                stop: Some(stop.clone()),
                ..wanderer(player, region, Duration::from_millis(player * 20), play_for, Duration::from_secs(20))
            };
            runtime.spawn(run_player(options.clone(), fleet.token(player, region), plan))
        })
        .collect();
    // Hosts report what each region costs (players, tick time) once a second.
    wait_for_players(&fleet, 48);
    assert_one_owner_each(&fleet);

    // Migrations asked for through the API.
    for (region, to) in [(1u64, "h2"), (5, "h3"), (9, "h1")] {
        let record = fleet.migrate(region, to, Duration::from_secs(90)).unwrap();
        assert_eq!(record["phase"], "committed", "{record}");
        assert_eq!(host_of(&fleet, region), to);
        let phases: Vec<&str> =
            record["phases"].as_array().unwrap().iter().filter_map(|timing| timing["phase"].as_str()).collect();
        assert_eq!(phases, ["claiming", "preparing", "transferring", "cleaning_up"], "{record}");
    }

    // Drain h3: its regions move away, one or two at a time.
    let drain = fleet.ok("POST", "/v1/hosts/h3/drain", None).unwrap();
    assert!(!drain["regions"].as_array().unwrap().is_empty(), "{drain}");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let regions = fleet.ok("GET", "/v1/regions", None).unwrap();
        if regions.as_array().unwrap().iter().all(|row| row["host"] != "h3" && !row["host"].is_null()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "h3 did not drain: {regions}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (status, _) = fleet.call("POST", "/v1/regions", Some(json!({"region": 99, "host": "h3"}))).unwrap();
    assert_eq!(status, 409, "a draining host takes no new region");
    // h3 reports the bytes it sent its regions away with (in its next load report).
    wait_until(Duration::from_secs(30), "h3's migration bytes reported", || {
        let hosts = fleet.ok("GET", "/v1/hosts", None).unwrap();
        let h3 = hosts.as_array().unwrap().iter().find(|host| host["name"] == "h3").cloned().unwrap();
        if h3["migration_bytes"].as_u64().unwrap_or(0) > 0 { Ok(()) } else { Err(h3.to_string()) }
    });
    // The drain's migrations finish cleaning up (the sources retire) before the next step.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let migrations = fleet.ok("GET", "/v1/migrations", None).unwrap();
        let records = migrations.as_array().unwrap();
        if records.iter().all(|record| record["phase"] == "committed" || record["phase"] == "aborted") {
            assert!(
                records.iter().filter(|record| record["kind"] == "drain").all(|record| record["phase"] == "committed"),
                "{migrations}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "drain migrations did not finish: {migrations}");
        std::thread::sleep(Duration::from_millis(200));
    }

    assert_one_owner_each(&fleet);

    // At most two migrations involve one host at a time (--migrations-per-host): a third is
    // refused while two run, clearly.
    let regions = fleet.ok("GET", "/v1/regions", None).unwrap();
    let on_h1: Vec<u64> = regions
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["host"] == "h1")
        .filter_map(|row| row["region"].as_u64())
        .collect();
    assert!(on_h1.len() >= 3, "{regions}");
    let mut started = Vec::new();
    for region in &on_h1[..2] {
        started.push(fleet.ok("POST", "/v1/migrations", Some(json!({"region": region, "to_host": "h2"}))).unwrap());
    }
    let (status, body) =
        fleet.call("POST", "/v1/migrations", Some(json!({"region": on_h1[2], "to_host": "h2"}))).unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("the limit"), "{body}");
    for record in started {
        let done = fleet.wait_migration(record["id"].as_u64().unwrap(), Duration::from_secs(60)).unwrap();
        assert_eq!(done["phase"], "committed", "{done}");
    }
    assert_one_owner_each(&fleet);

    // The coordinator dies in the middle of a migration and comes back.
    let from = host_of(&fleet, 2);
    let to = if from == "h1" { "h2" } else { "h1" };
    let resolved = migrate_through_a_coordinator_crash(&mut fleet, 2, to);
    // One owner: the directory's owner is the process its host reports serving the region.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let regions = fleet.ok("GET", "/v1/regions", None).unwrap();
        let hosts = fleet.ok("GET", "/v1/hosts", None).unwrap();
        let row = regions.as_array().unwrap().iter().find(|row| row["region"] == 2).cloned().unwrap();
        let servers: Vec<String> = hosts
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|host| host["processes"].as_array().cloned().unwrap_or_default())
            .filter(|process| process["regions"].as_array().is_some_and(|regions| regions.contains(&json!(2))))
            .filter_map(|process| process["name"].as_str().map(str::to_owned))
            .collect();
        if servers == vec![row["owner"].as_str().unwrap().to_owned()] {
            let expected_host = if resolved["phase"] == "committed" { to.to_owned() } else { from.clone() };
            assert_eq!(row["host"], json!(expected_host), "{row} {resolved}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "region 2 has owners {servers:?}, directory {row}");
        std::thread::sleep(Duration::from_millis(200));
    }

    stop.store(true, Ordering::Relaxed);
    let outcomes: Vec<PlayerOutcome> =
        players.into_iter().map(|task| runtime.block_on(task).unwrap().unwrap()).collect();
    assert_one_owner_each(&fleet);
    let disconnects: u64 = outcomes.iter().map(|outcome| outcome.disconnects).sum();
    let sent: u64 = outcomes.iter().map(|outcome| outcome.sent).sum();
    let max_gap = outcomes.iter().map(|outcome| outcome.max_gap_ms).fold(0.0, f64::max);
    let migrations = fleet.ok("GET", "/v1/migrations", None).unwrap();
    eprintln!(
        "{} players, {sent} inputs, {disconnects} disconnects, max update gap {max_gap:.0} ms, {} migrations",
        outcomes.len(),
        migrations.as_array().unwrap().len()
    );
    for outcome in outcomes.iter().filter(|outcome| !outcome.chain_ok || outcome.disconnects > 0) {
        eprintln!(
            "player {} region {}: sent {} acked {} updates {}",
            outcome.player, outcome.region, outcome.sent, outcome.acked, outcome.updates
        );
    }
    for record in migrations.as_array().unwrap() {
        eprintln!(
            "migration {} region {} {}: {} -> {} {} freeze_ms {} phases {} {}",
            record["id"],
            record["region"],
            record["kind"],
            record["from_process"],
            record["to_process"],
            record["phase"],
            record["freeze_ms"],
            record["phases"],
            record["reason"]
        );
    }
    for outcome in &outcomes {
        assert_eq!(outcome.disconnects, 0, "player {}: {:?}", outcome.player, outcome.close_reasons);
        assert!(outcome.chain_ok && outcome.acked == outcome.sent, "player {}: {outcome:?}", outcome.player);
        assert_eq!(outcome.updates_without_view, 0, "player {}: updates without a view", outcome.player);
    }
    assert!(
        migrations
            .as_array()
            .unwrap()
            .iter()
            .all(|record| record["phase"] == "committed" || record["phase"] == "aborted")
    );
    // The processes the migrations and the drain released are gone, and the gateway, which
    // learned every server from the route feed, forgets them: in the end it keeps an upstream to
    // the owners alone (it kept every server it ever knew, and grew as the cluster churned).
    let owners: std::collections::BTreeSet<String> = fleet
        .ok("GET", "/v1/regions", None)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["owner"].as_str().unwrap().to_owned())
        .collect();
    baton_harness::wait_until(Duration::from_secs(60), "the gateway forgetting the released servers", || {
        let stats = fleet.gateway_stats().map_err(|error| error.to_string())?;
        if stats.servers == owners.len() as u64 {
            Ok(())
        } else {
            Err(format!("{} servers known, {} owners", stats.servers, owners.len()))
        }
    });
}

#[test]
fn the_admin_api_refuses_bad_requests_clearly() {
    let fleet = Fleet::start(&spec(1, 1)).unwrap();
    fleet.wait_hosts_ready(1, 1, Duration::from_secs(60)).unwrap();
    let (status, body) = fleet.call_with("GET", "/v1/hosts", None, None).unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Bearer"));
    let (status, _) = fleet.call_with("GET", "/v1/regions", None, Some("not-the-token")).unwrap();
    assert_eq!(status, 401);
    let (status, body) =
        fleet.call("POST", "/v1/migrations", Some(Value::String("{\"region\": \"one\"}".into()))).unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, _) = fleet.call("POST", "/v1/regions", Some(json!({"region": 1, "host": "nowhere"}))).unwrap();
    assert_eq!(status, 404);
    let (status, _) = fleet.call("POST", "/v1/migrations", Some(json!({"region": 77, "to_host": "h1"}))).unwrap();
    assert_eq!(status, 404, "an unknown region");
    let (status, body) = fleet.call("POST", "/v1/regions/77/stop", None).unwrap();
    assert_eq!(status, 404, "stopping an unknown region: {body}");
    let (status, body) = fleet.call("POST", "/v1/regions/seven/stop", None).unwrap();
    assert_eq!(status, 400, "{body}");
    fleet.ok("POST", "/v1/regions", Some(json!({"region": 1, "host": "h1", "world": {"objects": 10}}))).unwrap();
    let (status, _) = fleet.call("POST", "/v1/regions", Some(json!({"region": 1, "host": "h1"}))).unwrap();
    assert_eq!(status, 409, "the region exists");

    // A gateway that starts after the region exists learns its route from the coordinator's feed
    // alone (it is given no server): its player plays, every input applied once.
    let (late_gateway, late_address) = fleet.start_late_gateway().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut options = fleet.client_options();
    options.gateway = late_address;
    // The gateway takes players for the region once the feed gave it the route.
    wait_until(Duration::from_secs(30), "the late gateway admitting a player", || {
        match runtime.block_on(baton_client::Client::connect(&options, &fleet.token(1, 1))) {
            Ok(client) => {
                client.close();
                Ok(())
            }
            Err(error) => Err(error.to_string()),
        }
    });
    let plan = wanderer(1, 1, Duration::ZERO, Duration::from_secs(3), Duration::from_secs(10));
    let outcome = runtime.block_on(run_player(options, fleet.token(1, 1), plan)).unwrap();
    assert!(outcome.sent > 0 && outcome.acked == outcome.sent && outcome.chain_ok, "{outcome:?}");
    assert_eq!(outcome.disconnects, 0, "{:?}", outcome.close_reasons);
    drop(late_gateway);

    let (status, _) = fleet.call("POST", "/v1/migrations", Some(json!({"region": 1, "to_host": "h1"}))).unwrap();
    assert_eq!(status, 409, "already there");
    let (status, _) = fleet.call("GET", "/v1/migrations/12345", None).unwrap();
    assert_eq!(status, 404);
    let (status, _) = fleet.call("GET", "/v1/migrations/abc", None).unwrap();
    assert_eq!(status, 400);
    let (status, _) = fleet.call("POST", "/v1/hosts/nowhere/drain", None).unwrap();
    assert_eq!(status, 404);
    let (status, openapi) = fleet.call_with("GET", "/openapi.json", None, None).unwrap();
    assert_eq!(status, 200);
    for path in ["/v1/hosts", "/v1/regions", "/v1/migrations", "/v1/migrations/{id}/cancel", "/v1/hosts/{host}/drain"] {
        assert!(openapi["paths"].get(path).is_some(), "the OpenAPI document lacks {path}");
    }
    let metrics = ureq::get(format!("{}/metrics", fleet.api)).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(metrics.contains("baton_coordinator_hosts 1"), "{metrics}");
    // The agent's and the gateway's own metrics.
    let scrape = |address: std::net::SocketAddr| {
        ureq::get(format!("http://{address}/metrics")).call().unwrap().body_mut().read_to_string().unwrap()
    };
    let agent_metrics = scrape(fleet.agent_metrics[0]);
    assert!(agent_metrics.contains("baton_agent_warm_processes"), "{agent_metrics}");
    // Every process counts its live heap: the coordinator, the agent and the gateway on their
    // metrics, region servers in the host's process list (their `heap` events, once a second).
    let heap = |page: &str| baton_harness::fleet::metric_value(page, baton_net::heap::LIVE_BYTES_GAUGE).unwrap();
    for (process, page) in
        [("coordinator", &metrics), ("agent", &agent_metrics), ("gateway", &scrape(fleet.gateway_metrics))]
    {
        assert!((1e5..1e9).contains(&heap(page)), "the {process}'s live heap: {page}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let hosts = fleet.ok("GET", "/v1/hosts", None).unwrap();
        let heaps: Vec<Option<u64>> =
            hosts[0]["processes"].as_array().unwrap().iter().map(|process| process["heap_bytes"].as_u64()).collect();
        if !heaps.is_empty()
            && heaps.iter().all(|heap| heap.is_some_and(|bytes| (100_000..1_000_000_000).contains(&bytes)))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "region servers' heaps: {hosts}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let gateway_metrics = scrape(fleet.gateway_metrics);
        // g0 carried no player in this test (the late gateway did): its counters read 0.
        if gateway_metrics.contains("baton_gateway_connections_total 0")
            && gateway_metrics.contains("baton_gateway_sessions 0")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{gateway_metrics}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // batonctl over the same API: readable tables, --json, and clear refusals.
    let token_file = fleet.directory().join("api.token");
    let batonctl = |token: &std::path::Path, arguments: &[&str]| {
        std::process::Command::new(baton_harness::cluster::batonctl_binary().unwrap())
            .args(["--api", &fleet.api])
            .arg("--token-file")
            .arg(token)
            .args(arguments)
            .output()
            .unwrap()
    };
    let hosts = batonctl(&token_file, &["hosts"]);
    let table = String::from_utf8_lossy(&hosts.stdout);
    assert!(
        hosts.status.success()
            && table.starts_with("HOST")
            && table.contains("h1")
            && table.contains("serving")
            && table.contains(" MB"),
        "{table}"
    );
    let regions = batonctl(&token_file, &["--json", "regions"]);
    let regions: Value = serde_json::from_slice(&regions.stdout).unwrap();
    assert_eq!(regions[0]["region"], 1, "{regions}");
    let refused = batonctl(&token_file, &["migrate", "--region", "1", "--to", "nowhere"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("404") && stderr.contains("unknown host nowhere"), "{stderr}");
    // The agent restarts a process that dies (kill -9 of its warm one), and stops every child
    // when it stops.
    let processes = |fleet: &Fleet| -> Vec<Value> {
        let hosts = fleet.ok("GET", "/v1/hosts", None).unwrap();
        hosts[0]["processes"].as_array().cloned().unwrap_or_default()
    };
    // The agent refills its warm pool a moment after a claim took its warm process.
    let warm = wait_until(Duration::from_secs(30), "a warm process on h1", || {
        processes(&fleet)
            .into_iter()
            .find(|process| process["warm"] == true && process["pid"].as_u64().is_some_and(|pid| pid > 0))
            .ok_or_else(|| "none running yet".to_owned())
    });
    let (name, pid) = (warm["name"].as_str().unwrap().to_owned(), warm["pid"].as_u64().unwrap());
    assert!(pid > 0, "{warm}");
    assert!(std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let restarted = processes(&fleet).into_iter().find(|process| process["name"] == name.as_str());
        if let Some(process) = restarted
            && process["restarts"] == 1
            && process["warm"] == true
            && process["pid"].as_u64().is_some_and(|new| new != pid && new > 0)
            && process["address"] != "0.0.0.0:0"
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{name} was not restarted: {:?}", processes(&fleet));
        std::thread::sleep(Duration::from_millis(100));
    }
    let pids: Vec<u64> = processes(&fleet).iter().filter_map(|process| process["pid"].as_u64()).collect();
    assert_eq!(pids.len(), 2, "the serving process and the warm one");

    let wrong_token = fleet.directory().join("wrong.token");
    std::fs::write(&wrong_token, "not-the-token-at-all").unwrap();
    let refused = batonctl(&wrong_token, &["hosts"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("401"), "{stderr}");

    let mut fleet = fleet;
    fleet.stop_everything();
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = status.rsplit_once(") ").map(|(_, rest)| rest.chars().next().unwrap_or('?'));
        assert!(status.is_empty() || state == Some('Z'), "region server {pid} outlived its agent: {status}");
    }
}

/// One player plays `seconds` in `region` through the fleet's gateway.
fn play(fleet: &Fleet, player: u64, region: u64, seconds: u64) -> PlayerOutcome {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let plan = wanderer(player, region, Duration::ZERO, Duration::from_secs(seconds), Duration::from_secs(10));
    runtime.block_on(run_player(fleet.client_options(), fleet.token(player, region), plan)).unwrap()
}

#[test]
fn a_world_survives_a_restart_of_everything() {
    let spec = FleetSpec {
        hosts: 1,
        pool: 1,
        capacity: 4,
        world_regions: 1,
        columns: 1,
        tick_rate: 20,
        checkpoint_every_s: 0.5,
        capacity_cores: Vec::new(),
        // A person brings the region back here; with failover on, the coordinator would (after
        // --orphan-after-ms without a host serving it: tests/tests/failover.rs).
        coordinator_args: vec!["--failover".into(), "off".into()],
    };
    let mut fleet = Fleet::start(&spec).unwrap();
    fleet.wait_hosts_ready(1, 1, Duration::from_secs(60)).unwrap();
    let created = fleet
        .ok(
            "POST",
            "/v1/regions",
            Some(json!({"region": 1, "host": "h1", "world": {"objects": 60, "npcs": 6, "plants": 6}})),
        )
        .unwrap();
    let first = play(&fleet, 7, 1, 3);
    assert!(first.sent > 0 && first.acked == first.sent && first.chain_ok, "{first:?}");
    // Every input of the first session was applied before it ended, so it is in any checkpoint
    // written after that (one every 0.5 s).
    let ended = std::time::SystemTime::now();
    let checkpoints = fleet.directory().join("checkpoints");
    wait_until(Duration::from_secs(30), "a checkpoint written after the first session", || {
        let newest = std::fs::read_dir(&checkpoints)
            .map_err(|error| error.to_string())?
            .filter_map(|entry| entry.ok()?.metadata().ok()?.modified().ok())
            .max();
        if newest.is_some_and(|written| written > ended) { Ok(()) } else { Err(format!("newest {newest:?}")) }
    });

    fleet.stop_everything();
    fleet.start_again().unwrap();
    fleet.wait_hosts_ready(1, 1, Duration::from_secs(60)).unwrap();
    // The directory survived: the region is known, its old owner is gone, no host serves it.
    let regions = fleet.ok("GET", "/v1/regions", None).unwrap();
    let row = regions.as_array().unwrap().iter().find(|row| row["region"] == 1).cloned().unwrap();
    assert_eq!(row["epoch"], created["epoch"], "{row}");
    assert!(row["host"].is_null(), "{row}");
    let (status, body) = fleet.call("POST", "/v1/regions", Some(json!({"region": 1, "host": "h1"}))).unwrap();
    assert_eq!(status, 409, "starting an existing region afresh would lose its world: {body}");
    assert!(body["error"].as_str().unwrap().contains("from_checkpoint"), "{body}");
    let (status, body) = fleet
        .call(
            "POST",
            "/v1/regions",
            Some(json!({"region": 1, "host": "h1", "from_checkpoint": true, "world": {"objects": 1}})),
        )
        .unwrap();
    assert_eq!(status, 400, "{body}");

    let restored =
        fleet.ok("POST", "/v1/regions", Some(json!({"region": 1, "host": "h1", "from_checkpoint": true}))).unwrap();
    assert_eq!(restored["epoch"].as_u64(), created["epoch"].as_u64().map(|epoch| epoch + 1), "{restored}");
    let (status, body) =
        fleet.call("POST", "/v1/regions", Some(json!({"region": 1, "host": "h1", "from_checkpoint": true}))).unwrap();
    assert_eq!(status, 409, "a served region is not restored over its owner: {body}");

    // The same player comes back to the same avatar: every input of the first session is there,
    // and the new ones are applied once each on top.
    let second = play(&fleet, 7, 1, 2);
    assert_eq!(second.acked_before, first.sent, "{second:?}");
    assert_eq!(second.acked, first.sent + second.sent, "{second:?}");
    assert!(second.chain_ok && second.disconnects == 0, "{second:?}");
}

#[test]
fn a_migration_survives_a_coordinator_crash_with_players_on_board() {
    let spec = FleetSpec { capacity: 4, ..spec(2, 2) };
    let mut fleet = Fleet::start(&spec).unwrap();
    fleet.wait_hosts_ready(2, 2, Duration::from_secs(60)).unwrap();
    for (region, host) in [(1u64, "h1"), (2, "h2"), (3, "h1")] {
        fleet.ok("POST", "/v1/regions", Some(json!({"region": region, "host": host, "world": {"objects": 40, "npcs": 4, "plants": 4, "seed": region}}))).unwrap();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let players: Vec<_> = (1..=9u64)
        .map(|player| {
            let region = (player - 1) % 3 + 1;
            let plan = PlayerPlan {
                stop: Some(stop.clone()),
                ..wanderer(
                    player,
                    region,
                    Duration::from_millis(player * 50),
                    Duration::from_secs(300),
                    Duration::from_secs(15),
                )
            };
            runtime.spawn(run_player(fleet.client_options(), fleet.token(player, region), plan))
        })
        .collect();
    wait_for_players(&fleet, 9);
    let resolved = migrate_through_a_coordinator_crash(&mut fleet, 2, "h1");
    let expected_host = if resolved["phase"] == "committed" { "h1" } else { "h2" };
    // The players on board go on through the migration and the coordinator's crash, until region
    // 2's three are reported where it ended up; then they stop.
    wait_until(Duration::from_secs(60), "region 2's players where it ended up", || {
        let hosts = fleet.ok("GET", "/v1/hosts", None).unwrap();
        let host =
            hosts.as_array().unwrap().iter().find(|host| host["name"] == expected_host).cloned().unwrap_or_default();
        let there =
            host["regions"].as_array().into_iter().flatten().any(|load| load["region"] == 2 && load["players"] == 3);
        if there { Ok(()) } else { Err(host.to_string()) }
    });
    stop.store(true, Ordering::Relaxed);
    for task in players {
        let outcome = runtime.block_on(task).unwrap().unwrap();
        eprintln!(
            "player {} region {}: sent {} acked {} applied {} chain {} gap {:.0} ms",
            outcome.player,
            outcome.region,
            outcome.sent,
            outcome.acked,
            outcome.applied,
            outcome.chain_ok,
            outcome.max_gap_ms
        );
        assert_eq!(outcome.disconnects, 0, "{:?}", outcome.close_reasons);
        assert!(outcome.chain_ok && outcome.acked == outcome.sent, "player {}", outcome.player);
    }
    assert_one_owner_each(&fleet);
    assert_eq!(host_of(&fleet, 2), expected_host, "{resolved}");
}

/// The old way of moving a region, which the load test's restart baseline measures: stop it (its
/// host saves it), start it on another host from the save, and its players log in again. Nothing
/// it had applied is lost; what it had not applied at the stop is, and the players say how much.
#[test]
fn a_region_stopped_the_old_way_comes_back_from_its_save_and_its_players_log_in_again() {
    let spec = FleetSpec { checkpoint_every_s: 30.0, ..spec(2, 1) };
    let fleet = Fleet::start(&spec).unwrap();
    fleet.wait_hosts_ready(2, 1, Duration::from_secs(60)).unwrap();
    let created = fleet
        .ok("POST", "/v1/regions", Some(json!({"region": 1, "host": "h1", "world": {"objects": 60, "npcs": 6}})))
        .unwrap();
    fleet.ok("POST", "/v1/regions", Some(json!({"region": 2, "host": "h2", "world": {"objects": 60}}))).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (1..=8u64)
        .map(|player| {
            let region = 1 + player % 2;
            let plan = PlayerPlan {
                relogin: Some(fleet.login()),
                stop: Some(stop.clone()),
                ..wanderer(player, region, Duration::ZERO, Duration::from_secs(300), Duration::from_secs(15))
            };
            runtime.spawn(run_player(fleet.client_options(), fleet.token(player, region), plan))
        })
        .collect();
    wait_for_players(&fleet, 8);
    let stopped = fleet.ok("POST", "/v1/regions/1/stop", None).unwrap();
    assert_eq!(stopped["host"], "h1", "{stopped}");
    assert_eq!(stopped["epoch"], created["epoch"], "{stopped}");
    assert!(stopped["tick"].as_u64().unwrap() > 0 && stopped["bytes"].as_u64().unwrap() > 0, "{stopped}");
    assert!(std::path::Path::new(stopped["checkpoint"].as_str().unwrap()).exists(), "{stopped}");
    let (status, body) = fleet.call("POST", "/v1/regions/1/stop", None).unwrap();
    assert_eq!(status, 409, "a stopped region is not stopped twice: {body}");
    // It starts on h2 from the save; until then the players of region 1 cannot play.
    let restored =
        fleet.ok("POST", "/v1/regions", Some(json!({"region": 1, "host": "h2", "from_checkpoint": true}))).unwrap();
    assert_eq!(restored["epoch"].as_u64(), created["epoch"].as_u64().map(|epoch| epoch + 1), "{restored}");
    assert_eq!(host_of(&fleet, 1), "h2");
    // Region 1's four players are back (logged in again, on h2) before the players stop.
    wait_until(Duration::from_secs(60), "region 1's players back on h2", || {
        let hosts = fleet.ok("GET", "/v1/hosts", None).unwrap();
        let h2 = hosts.as_array().unwrap().iter().find(|host| host["name"] == "h2").cloned().unwrap_or_default();
        let back =
            h2["regions"].as_array().into_iter().flatten().any(|load| load["region"] == 1 && load["players"] == 4);
        if back { Ok(()) } else { Err(h2.to_string()) }
    });
    stop.store(true, Ordering::Relaxed);

    let outcomes: Vec<PlayerOutcome> = tasks.into_iter().map(|task| runtime.block_on(task).unwrap().unwrap()).collect();
    for outcome in &outcomes {
        let region_one = outcome.player % 2 == 0;
        eprintln!(
            "player {}: sent {} acked {} lost {} disconnects {} relogins {} max gap {:.0} ms",
            outcome.player,
            outcome.sent,
            outcome.acked,
            outcome.lost,
            outcome.disconnects,
            outcome.relogins,
            outcome.max_gap_ms
        );
        // Every input is accounted for: applied exactly once, in order (the avatar's chain is the
        // chain of what the region took), or lost at the stop.
        assert!(outcome.chain_ok, "{outcome:?}");
        assert_eq!(outcome.acked + outcome.lost, outcome.sent, "{outcome:?}");
        assert_eq!(outcome.applied, outcome.acked, "{outcome:?}");
        if region_one {
            assert_eq!((outcome.disconnects, outcome.relogins), (1, 1), "{:?}", outcome.close_reasons);
            assert!(outcome.close_reasons[0].contains("stopped"), "{:?}", outcome.close_reasons);
            assert_eq!(outcome.region, 1);
        } else {
            assert_eq!((outcome.disconnects, outcome.lost), (0, 0), "region 2 was not touched: {outcome:?}");
        }
    }
    // The process that served it went away; the agent keeps its warm pool full.
    let hosts = fleet.ok("GET", "/v1/hosts", None).unwrap();
    let stopped_process = stopped["process"].as_str().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let hosts = fleet.ok("GET", "/v1/hosts", None).unwrap();
        let names: Vec<String> = hosts
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|host| host["processes"].as_array().cloned().unwrap_or_default())
            .filter_map(|process| process["name"].as_str().map(str::to_owned))
            .collect();
        if !names.iter().any(|name| name == stopped_process) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{stopped_process} still runs: {hosts}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(hosts);
    assert_one_owner_each(&fleet);
}
