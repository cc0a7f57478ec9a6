//! Failover across processes: a deployment (coordinator, two host agents, a gateway) with players
//! in a region whose process is killed with SIGKILL, then a whole host killed the same way. The
//! coordinator takes each region over from its newest checkpoint on another process; the players
//! stay connected, send again what was not durable, and every input they sent is applied exactly
//! once (the avatar's hash chain over its applied inputs matches the one each player computed).
//! A region stopped on purpose is not brought back. With hot standbys: a standby is promoted
//! when its owner's host dies (also together with the players' gateway: they resume on another),
//! and a host that hangs and comes back again and again loses its region once, never ping-pong.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use baton_harness::fleet::{Fleet, FleetSpec};
use baton_harness::players::{Movement, PlayerOutcome, PlayerPlan, Playing, patrol_player, unix_ms};
use serde_json::{Value, json};

fn spec() -> FleetSpec {
    FleetSpec {
        hosts: 2,
        pool: 1,
        capacity: 6,
        world_regions: 2,
        columns: 2,
        tick_rate: 20,
        checkpoint_every_s: 0.5,
        capacity_cores: Vec::new(),
        coordinator_args: Vec::new(),
    }
}

/// Every process that reports serving `region`: `(host, process, pid)`, as the hosts report.
fn servers_of(fleet: &Fleet, region: u64) -> Vec<(String, String, u64)> {
    let hosts = fleet.ok("GET", "/v1/hosts", None).unwrap();
    let mut servers = Vec::new();
    for host in hosts.as_array().unwrap() {
        for process in host["processes"].as_array().unwrap() {
            if process["regions"].as_array().unwrap().contains(&json!(region)) {
                servers.push((
                    host["name"].as_str().unwrap().to_owned(),
                    process["name"].as_str().unwrap().to_owned(),
                    process["pid"].as_u64().unwrap(),
                ));
            }
        }
    }
    servers
}

/// The process serving `region` and its pid, once it is the only one that reports it: an old
/// owner that was frozen or cut off reports the region until it learns it lost it.
fn server_of(fleet: &Fleet, region: u64) -> Option<(String, String, u64)> {
    let mut servers = servers_of(fleet, region);
    if servers.len() == 1 { servers.pop() } else { None }
}

/// Waits for the failover of `region` to end; returns its record.
fn failover_of(fleet: &Fleet, region: u64, after: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records = fleet.ok("GET", "/v1/migrations", None).unwrap();
        let done = records.as_array().unwrap().iter().find(|record| {
            record["kind"] == "failover"
                && record["region"] == region
                && record["id"].as_u64().unwrap() > after
                && matches!(record["phase"].as_str(), Some("committed" | "aborted"))
        });
        if let Some(record) = done {
            return record.clone();
        }
        assert!(Instant::now() < deadline, "no failover of region {region} ended: {records}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn last_record_id(fleet: &Fleet) -> u64 {
    let records = fleet.ok("GET", "/v1/migrations", None).unwrap();
    records.as_array().unwrap().iter().filter_map(|record| record["id"].as_u64()).max().unwrap_or(0)
}

/// `count` wandering players in `region`, from player `first` on, who play until
/// [`Playing::finish`]; returns once every one of them had an input acknowledged.
fn players(fleet: &Fleet, first: u64, count: u64, region: u64) -> Playing {
    let plans = (first..first + count)
        .map(|player| {
            let plan = PlayerPlan {
                settle_for: Duration::from_secs(20),
                ..PlayerPlan::new(player, region, Movement::Wander, Duration::from_secs(300))
            };
            (plan, fleet.token(player, region))
        })
        .collect();
    let playing = Playing::start(&fleet.client_options(), plans);
    playing.wait_in_play(Duration::from_secs(30)).unwrap();
    playing
}

/// Every player stayed connected and every input it sent was applied exactly once, in order.
fn assert_nothing_lost(outcomes: &[PlayerOutcome]) {
    for outcome in outcomes {
        assert!(outcome.sent > 0, "{outcome:?}");
        assert_eq!(outcome.disconnects, 0, "{outcome:?}");
        assert_eq!(outcome.lost, 0, "{outcome:?}");
        assert_eq!(outcome.acked, outcome.sent, "every input applied: {outcome:?}");
        assert!(outcome.chain_ok, "every input applied once, in order: {outcome:?}");
    }
}

#[test]
fn regions_survive_a_killed_process_and_a_killed_host_with_their_players_connected() {
    let mut fleet = Fleet::start(&spec()).unwrap();
    fleet.wait_hosts_ready(2, 1, Duration::from_secs(60)).unwrap();
    let world = json!({"objects": 40, "npcs": 4, "plants": 4});
    fleet.ok("POST", "/v1/regions", Some(json!({"region": 1, "host": "h1", "world": world}))).unwrap();
    fleet.ok("POST", "/v1/regions", Some(json!({"region": 2, "host": "h2", "world": world}))).unwrap();

    // 1. The process serving region 1 is killed while four players play in it.
    let playing = players(&fleet, 1, 4, 1);
    let (_, process, pid) = wait_for(|| server_of(&fleet, 1));
    let before = last_record_id(&fleet);
    assert!(std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    let record = failover_of(&fleet, 1, before);
    eprintln!("after the process was killed: {record}");
    assert_eq!(record["phase"], "committed", "{record}");
    assert_eq!(record["from_process"], process.as_str(), "{record}");
    let figures = &record["failover"];
    assert_eq!(figures["cause"], "process_exited", "{record}");
    assert!(figures["restored_tick"].as_u64().is_some() && figures["recovery_ms"].as_f64().is_some(), "{record}");
    let outcomes = playing.finish().unwrap();
    assert_nothing_lost(&outcomes);
    assert!(
        outcomes.iter().any(|outcome| outcome.recoveries > 0),
        "the gateway asked the players of the region for their kept inputs: {outcomes:?}"
    );

    // 2. The whole host now serving region 1 dies (its agent and every process, SIGKILL), with
    // players on board; region 1 comes back on the other host.
    let (host, _, _) = wait_for(|| server_of(&fleet, 1));
    let index: usize = host.trim_start_matches('h').parse().unwrap();
    let playing = players(&fleet, 11, 3, 1);
    let before = last_record_id(&fleet);
    fleet.kill_host(index).unwrap();
    let record = failover_of(&fleet, 1, before);
    eprintln!("after the host was killed: {record}");
    assert_eq!(record["phase"], "committed", "{record}");
    assert_eq!(record["failover"]["cause"], "host_silent", "{record}");
    assert_ne!(record["to_host"], host.as_str(), "{record}");
    assert_nothing_lost(&playing.finish().unwrap());
    let hosts = fleet.ok("GET", "/v1/hosts", None).unwrap();
    let dead = hosts.as_array().unwrap().iter().find(|view| view["name"] == host.as_str()).unwrap();
    assert!(dead["dead"] == true && dead["connected"] == false, "{dead}");

    // 3. A region stopped on purpose stays stopped: no failover brings it back.
    let (other, _, _) = wait_for(|| server_of(&fleet, 2));
    assert_ne!(other, host, "region 2 lived on the other host, or was failed over there");
    let before = last_record_id(&fleet);
    fleet.ok("POST", "/v1/regions/2/stop", None).unwrap();
    // A check that something does not happen waits: longer than the limit for a region no host
    // serves (3 s by default). A slow machine can only make this pass wrongly, never fail wrongly.
    std::thread::sleep(Duration::from_secs(5));
    assert!(servers_of(&fleet, 2).is_empty());
    assert_eq!(last_record_id(&fleet), before, "{}", fleet.ok("GET", "/v1/migrations", None).unwrap());
}

/// Waits up to 30 s for `probe` to find what it looks for.
fn wait_for<T>(mut probe: impl FnMut() -> Option<T>) -> T {
    baton_harness::wait_until(Duration::from_secs(30), "what the test waited for", || {
        probe().ok_or_else(|| "not yet".to_owned())
    })
}

/// Sends `signal` to the agent of host `h{index}` (its region servers keep running).
fn signal_agent(fleet: &Fleet, index: usize, signal: &str) {
    let pid = fleet.agent_pid(index).unwrap();
    assert!(std::process::Command::new("kill").args([signal, &pid.to_string()]).status().unwrap().success());
}

#[test]
fn a_host_cut_off_is_replaced_and_its_old_owner_lets_go_and_a_coordinator_down_catches_up() {
    // Claimed processes with nothing to do go back after 2 s rather than 30.
    let spec = FleetSpec { coordinator_args: vec!["--idle-release-s".into(), "2".into()], ..spec() };
    let mut fleet = Fleet::start(&spec).unwrap();
    fleet.wait_hosts_ready(2, 1, Duration::from_secs(60)).unwrap();
    let world = json!({"objects": 40, "npcs": 4, "plants": 4});
    fleet.ok("POST", "/v1/regions", Some(json!({"region": 1, "host": "h1", "world": world}))).unwrap();

    // 1. h1's agent stops reporting (SIGSTOP: a host cut off from the coordinator) while its
    // region server keeps ticking region 1 with players on board. The coordinator declares h1
    // dead and restores region 1 on h2; the old owner, still alive, reads the newer epoch after
    // its next checkpoint and lets the region go. The players notice nothing but a pause.
    let playing = players(&fleet, 1, 3, 1);
    let (_, old_owner, _) = wait_for(|| server_of(&fleet, 1));
    let before = last_record_id(&fleet);
    signal_agent(&fleet, 1, "-STOP");
    let record = failover_of(&fleet, 1, before);
    eprintln!("after h1 was cut off: {record}");
    assert_eq!(record["phase"], "committed", "{record}");
    assert_eq!(record["failover"]["cause"], "host_silent", "{record}");
    assert_eq!(record["to_host"], "h2", "{record}");
    signal_agent(&fleet, 1, "-CONT");
    assert_nothing_lost(&playing.finish().unwrap());
    // One owner in the end: the directory's, and the old one serves nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hosts = fleet.ok("GET", "/v1/hosts", None).unwrap();
        let serving: Vec<String> = hosts
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|host| host["processes"].as_array().cloned().unwrap_or_default())
            .filter(|process| process["regions"].as_array().unwrap().contains(&json!(1)))
            .map(|process| process["name"].as_str().unwrap().to_owned())
            .collect();
        let owner = fleet.ok("GET", "/v1/regions", None).unwrap()[0]["owner"].as_str().unwrap().to_owned();
        if serving == [owner.clone()] && owner != old_owner {
            break;
        }
        assert!(Instant::now() < deadline, "region 1 served by {serving:?}, owner {owner}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The old owner, which now owns, receives and follows nothing, is given back: its agent
    // stops it once the coordinator's idle grace passed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet
        .ok("GET", "/v1/hosts", None)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .any(|host| host["processes"].as_array().unwrap().iter().any(|process| process["name"] == old_owner.as_str()))
    {
        assert!(Instant::now() < deadline, "{old_owner} is still claimed, with nothing to do");
        std::thread::sleep(Duration::from_millis(200));
    }

    // 2. The coordinator is down when region 1's process is killed: nobody hears the exit. Once
    // the coordinator is back, no host reports serving region 1, and it is failed over.
    let (host, _, pid) = wait_for(|| server_of(&fleet, 1));
    let agent: usize = host.trim_start_matches('h').parse().unwrap();
    let restarts = fleet.agent_metric(agent, baton_agent::RESTARTS_TOTAL).unwrap();
    let before = last_record_id(&fleet);
    fleet.kill_coordinator();
    assert!(std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    // The coordinator comes back only once the agent saw the exit (and told nobody).
    wait_for(|| fleet.agent_metric(agent, baton_agent::RESTARTS_TOTAL).ok().filter(|now| *now > restarts));
    fleet.restart_coordinator().unwrap();
    let record = failover_of(&fleet, 1, before);
    eprintln!("after the coordinator came back: {record}");
    assert_eq!(record["phase"], "committed", "{record}");
    assert_eq!(record["failover"]["cause"], "not_served", "{record}");
    let (_, serving, _) = wait_for(|| server_of(&fleet, 1));
    assert_eq!(fleet.ok("GET", "/v1/regions", None).unwrap()[0]["owner"], serving.as_str());
}

#[test]
fn a_source_host_that_dies_mid_migration_leaves_one_owner_and_loses_nothing() {
    // Either the target committed (it had everything) or it gave up and a failover restored the
    // region there: one process serves region 1 in the end, on h2.
    host_dies_mid_migration(1, "h2");
}

#[test]
fn a_target_host_that_dies_mid_migration_leaves_one_owner_and_loses_nothing() {
    // Either the source kept the region (the handoff aborted), or the target had committed and a
    // failover brought the region back to h1: one process serves it in the end, on h1.
    host_dies_mid_migration(2, "h1");
}

/// Region 1 migrates from h1 to h2 with players on board; host `h{killed}` dies while the region
/// streams. In the end one process serves it, on `survivor`, it is the directory's owner, and every
/// player input was applied exactly once.
fn host_dies_mid_migration(killed: usize, survivor: &str) {
    let mut fleet = Fleet::start(&spec()).unwrap();
    fleet.wait_hosts_ready(2, 1, Duration::from_secs(60)).unwrap();
    let world = json!({"objects": 400, "npcs": 20, "plants": 20});
    fleet.ok("POST", "/v1/regions", Some(json!({"region": 1, "host": "h1", "world": world}))).unwrap();
    let playing = players(&fleet, 1, 3, 1);
    // A checkpoint exists to fail over from if the handoff cannot finish (one every 0.5 s).
    let checkpoints = fleet.directory().join("checkpoints");
    wait_for(|| std::fs::read_dir(&checkpoints).ok()?.next().map(|_| ()));
    let migration = fleet.ok("POST", "/v1/migrations", Some(json!({"region": 1, "to_host": "h2"}))).unwrap();
    let id = migration["id"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet.ok("GET", &format!("/v1/migrations/{id}"), None).unwrap()["phase"] != "transferring" {
        assert!(Instant::now() < deadline, "migration {id} never reached the handoff");
        std::thread::sleep(Duration::from_millis(5));
    }
    fleet.kill_host(killed).unwrap();
    let record = fleet.wait_migration(id, Duration::from_secs(60)).unwrap();
    eprintln!("the migration: {record}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let owner = fleet.ok("GET", "/v1/regions", None).unwrap()[0]["owner"].as_str().unwrap_or_default().to_owned();
        if let Some((host, process, _)) = server_of(&fleet, 1)
            && host == survivor
            && process == owner
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "region 1 not served by its owner on {survivor}: {}",
            fleet.ok("GET", "/v1/hosts", None).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_nothing_lost(&playing.finish().unwrap());
}

/// A region whose only checkpoint is damaged (and with no standby) has nothing to come back from
/// when its host dies: each attempt to restore it fails, and none of them takes the region over
/// at the directory on the way (an owner at a new epoch that serves nothing would be judged lost
/// again, at a higher epoch each time, by one failover after another).
#[test]
fn a_failed_restore_leaves_the_directory_as_it_was() {
    let spec = FleetSpec { checkpoint_every_s: 600.0, ..spec() };
    let mut fleet = Fleet::start(&spec).unwrap();
    fleet.wait_hosts_ready(2, 1, Duration::from_secs(60)).unwrap();
    let world = json!({"objects": 40, "npcs": 4, "plants": 4});
    let created = fleet.ok("POST", "/v1/regions", Some(json!({"region": 1, "host": "h1", "world": world}))).unwrap();
    wait_for(|| server_of(&fleet, 1));
    // The checkpoint of its first tick is written, then damaged (a flipped byte in its body).
    let checkpoints = fleet.directory().join("checkpoints");
    let written = wait_for(|| {
        let entries = std::fs::read_dir(&checkpoints).ok()?.filter_map(Result::ok);
        entries.map(|entry| entry.path()).find(|path| path.extension().is_some_and(|extension| extension == "ckpt"))
    });
    fleet.kill_host(1).unwrap();
    let mut bytes = std::fs::read(&written).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&written, bytes).unwrap();
    // The failover tries h2, fails there (the checksum), and tries again after its retry interval.
    let record = wait_for(|| {
        let records = fleet.ok("GET", "/v1/migrations", None).unwrap();
        records
            .as_array()
            .unwrap()
            .iter()
            .find(|record| record["kind"] == "failover" && record["failover"]["attempts"].as_u64() >= Some(2))
            .cloned()
    });
    eprintln!("the failover: {record}");
    let regions = fleet.ok("GET", "/v1/regions", None).unwrap();
    let row = &regions[0];
    assert_eq!((&row["owner"], &row["epoch"]), (&created["owner"], &created["epoch"]), "{row}");
    assert_ne!(record["phase"], "aborted", "the failover did not take its own failed restore for another's: {record}");
}

/// Waits until the standby of `region` holds `ticks` ticks more than it held when called. The
/// coordinator's view is up to a second old, so the count starts from the first report that
/// changed after the call.
fn wait_for_standby_ticks(fleet: &Fleet, region: u64, ticks: u64) {
    let stale = wait_for(|| standby_tick(fleet, region));
    let from = wait_for(|| standby_tick(fleet, region).filter(|tick| *tick > stale));
    wait_for(|| standby_tick(fleet, region).filter(|tick| *tick >= from + ticks));
}

/// The newest tick the standby of `region` holds (reported about once a second).
fn standby_tick(fleet: &Fleet, region: u64) -> Option<u64> {
    let standbys = fleet.ok("GET", "/v1/standbys", None).unwrap();
    standbys.as_array().unwrap().iter().find(|standby| standby["region"] == region)?["tick"].as_u64()
}

/// The standby of `region` once it holds a tick: `(host, process)`.
fn holding_standby(fleet: &Fleet, region: u64) -> Option<(String, String)> {
    let standbys = fleet.ok("GET", "/v1/standbys", None).unwrap();
    standbys.as_array().unwrap().iter().find_map(|standby| {
        (standby["region"] == region && standby["state"] == "holding")
            .then(|| (standby["host"].as_str().unwrap().to_owned(), standby["process"].as_str().unwrap().to_owned()))
    })
}

#[test]
fn a_hot_standby_is_promoted_when_its_owners_host_dies_rolling_back_only_a_few_ticks() {
    // Checkpoints once a minute (and when the region starts and players join): once the standby
    // holds 40 ticks more than the players' joins, a restore would roll back at least those, a
    // promoted standby only the ticks it had not acknowledged.
    let spec =
        FleetSpec { checkpoint_every_s: 60.0, coordinator_args: vec!["--standby".into(), "on".into()], ..spec() };
    let mut fleet = Fleet::start(&spec).unwrap();
    fleet.wait_hosts_ready(2, 1, Duration::from_secs(60)).unwrap();
    let world = json!({"objects": 40, "npcs": 4, "plants": 4});
    fleet.ok("POST", "/v1/regions", Some(json!({"region": 1, "host": "h1", "world": world}))).unwrap();
    // A region created without a standby gets none.
    let body = json!({"region": 2, "host": "h2", "world": world, "standby": false});
    fleet.ok("POST", "/v1/regions", Some(body)).unwrap();
    // Anti-affinity: the standby is on the other host.
    let (standby_host, standby_process) = wait_for(|| holding_standby(&fleet, 1));
    assert_eq!(standby_host, "h2");
    let standbys = fleet.ok("GET", "/v1/standbys", None).unwrap();
    assert!(standbys.as_array().unwrap().iter().all(|standby| standby["region"] != 2), "{standbys}");
    let playing = players(&fleet, 1, 4, 1);
    wait_for_standby_ticks(&fleet, 1, 40);
    // The coordinator is killed and started again: its table of standbys is gone, the owner
    // goes on feeding the standby (and would refuse to feed a second one). The coordinator
    // adopts it from its reports, so the failover below still promotes it.
    fleet.kill_coordinator();
    fleet.restart_coordinator().unwrap();
    assert_eq!(wait_for(|| holding_standby(&fleet, 1)), (standby_host.clone(), standby_process.clone()));
    wait_for_standby_ticks(&fleet, 1, 40);
    let before = last_record_id(&fleet);
    fleet.kill_host(1).unwrap();
    let record = failover_of(&fleet, 1, before);
    eprintln!("after the owner's host was killed: {record}");
    assert_eq!(record["phase"], "committed", "{record}");
    // Two witnesses (the host's agent silent, and the standby hearing no rounds) judge the owner
    // lost before the host is declared dead.
    assert_eq!(record["failover"]["cause"], "owner_silent", "{record}");
    assert_eq!(record["failover"]["standby"], true, "the standby was promoted: {record}");
    assert_eq!(record["to_process"], standby_process.as_str(), "{record}");
    let restored = record["failover"]["restored_tick"].as_u64().unwrap();
    let outcomes = playing.finish().unwrap();
    assert_nothing_lost(&outcomes);
    // The standby held the region's recent past: what players saw rolled back by fewer than the
    // 40 ticks a restore from the join's checkpoint would have lost. How few ticks it is, is
    // measured in docs/benchmarks.md.
    for outcome in &outcomes {
        for &(_, region, seen, _) in &outcome.rollbacks {
            assert_eq!(region, 1);
            eprintln!("player {} saw tick {seen}, the standby held {restored}", outcome.player);
            assert!(
                seen.saturating_sub(restored) < 40,
                "player {} saw tick {seen}, the standby held {restored}",
                outcome.player
            );
        }
    }
    assert!(outcomes.iter().any(|outcome| outcome.recoveries > 0), "{outcomes:?}");
    // The promoted owner serves the region; with its old host dead no host is left for a new
    // standby (never on the owner's own host). (Until h1 is declared dead, its last report
    // still lists what its processes served.)
    wait_for(|| host_dead(&fleet, "h1").then_some(()));
    let (host, process, _) = wait_for(|| server_of(&fleet, 1));
    assert_eq!((host.as_str(), process.as_str()), ("h2", standby_process.as_str()));
    let standbys = fleet.ok("GET", "/v1/standbys", None).unwrap();
    assert!(standbys.as_array().unwrap().iter().all(|standby| standby["host"] != "h2"), "{standbys}");
}

#[test]
fn a_host_that_dies_while_avatars_cross_its_borders_loses_no_avatar_and_no_input() {
    // Regions 1 (h1) and 2 (h2) side by side; avatars patrol across their border both ways, so
    // crossings are in flight, in both directions, when h1 dies.
    let mut fleet = Fleet::start(&spec()).unwrap();
    fleet.wait_hosts_ready(2, 1, Duration::from_secs(60)).unwrap();
    let world = json!({"objects": 40, "npcs": 4, "plants": 4});
    fleet.ok("POST", "/v1/regions", Some(json!({"region": 1, "host": "h1", "world": world}))).unwrap();
    fleet.ok("POST", "/v1/regions", Some(json!({"region": 2, "host": "h2", "world": world}))).unwrap();
    let plans: Vec<(PlayerPlan, String)> = (0..8)
        .flat_map(|index| [(patrol_player(true, index), 1, 1.0), (patrol_player(false, index), 2, -1.0)])
        .map(|(player, region, heading)| {
            let plan = PlayerPlan {
                settle_for: Duration::from_secs(20),
                ..PlayerPlan::new(player, region, Movement::Patrol { heading }, Duration::from_secs(12))
            };
            (plan, fleet.token(player, region))
        })
        .collect();
    let playing = Playing::start(&fleet.client_options(), plans);
    playing.wait_in_play(Duration::from_secs(30)).unwrap();
    // Avatars cross both ways before the kill (the gateway counts each crossing it carries)...
    wait_for(|| (fleet.gateway_stats().ok()?.crossings >= 4).then_some(()));
    let before = last_record_id(&fleet);
    let killed = unix_ms();
    fleet.kill_host(1).unwrap();
    let record = failover_of(&fleet, 1, before);
    eprintln!("after h1 was killed: {record}");
    assert_eq!(record["phase"], "committed", "{record}");
    // ...and after the region came back.
    let recovered = unix_ms();
    let crossed = fleet.gateway_stats().unwrap().crossings;
    wait_for(|| (fleet.gateway_stats().ok()?.crossings >= crossed + 2).then_some(()));
    let outcomes = playing.finish().unwrap();
    assert_nothing_lost(&outcomes);
    let crossings: Vec<(u64, u64, u64)> = outcomes.iter().flat_map(|outcome| outcome.crossing_log.clone()).collect();
    // A player logs its crossing when the gateway's word reaches it, a moment after the gateway
    // counted it (the wait above): one counted before the kill can be logged in its millisecond.
    let before_kill = |from: u64| crossings.iter().any(|(at, left, _)| *left == from && *at <= killed + 100);
    assert!(
        before_kill(1) && before_kill(2),
        "crossings both ways before the kill: {crossings:?} (killed at {killed})"
    );
    assert!(crossings.iter().any(|(at, _, _)| *at > recovered), "crossings after the failover: {crossings:?}");
}

#[test]
fn an_owner_and_its_standby_lost_together_fall_back_to_a_checkpoint_and_the_inputs_lost_are_counted() {
    // Checkpoints once a minute (and when the region starts and players join); the standby
    // acknowledges every tick, so the players' clients drop inputs the checkpoint does not hold.
    let spec = FleetSpec {
        hosts: 3,
        checkpoint_every_s: 60.0,
        coordinator_args: vec!["--standby".into(), "on".into()],
        ..spec()
    };
    let mut fleet = Fleet::start(&spec).unwrap();
    fleet.wait_hosts_ready(3, 1, Duration::from_secs(60)).unwrap();
    let world = json!({"objects": 40, "npcs": 4, "plants": 4});
    fleet.ok("POST", "/v1/regions", Some(json!({"region": 1, "host": "h1", "world": world}))).unwrap();
    let (standby_host, _) = wait_for(|| holding_standby(&fleet, 1));
    assert_ne!(standby_host, "h1");
    let playing = players(&fleet, 1, 4, 1);
    // The players are in a checkpoint (taken when they joined); then the standby holds 40 ticks
    // more (2 s of their inputs, acknowledged durable), which the fallback loses.
    wait_for_standby_ticks(&fleet, 1, 40);
    let before = last_record_id(&fleet);
    fleet.kill_host(1).unwrap();
    fleet.kill_host(standby_host.trim_start_matches('h').parse().unwrap()).unwrap();
    let record = failover_of(&fleet, 1, before);
    eprintln!("after the owner's and the standby's hosts were killed: {record}");
    assert_eq!(record["phase"], "committed", "{record}");
    assert_eq!(record["failover"]["standby"], false, "restored from a checkpoint: {record}");
    let outcomes = playing.finish().unwrap();
    // Nobody was disconnected, and nobody waits for inputs its client no longer has: every input
    // sent was acknowledged in the end, including all those after the loss.
    for outcome in &outcomes {
        assert_eq!(outcome.disconnects, 0, "{outcome:?}");
        assert_eq!(outcome.acked, outcome.sent, "{outcome:?}");
        assert!(outcome.applied <= outcome.acked, "{outcome:?}");
        if outcome.applied == outcome.acked {
            assert!(outcome.chain_ok, "{outcome:?}");
        }
    }
    // Exactly the inputs the avatars never applied are counted lost, on the failover's record.
    let lost: u64 = outcomes.iter().map(|outcome| outcome.acked - outcome.applied).sum();
    assert!(lost > 0, "the checkpoint was older than what the standby had acknowledged: {outcomes:?}");
    let counted = wait_for(|| {
        let records = fleet.ok("GET", "/v1/migrations", None).unwrap();
        let record = records.as_array().unwrap().iter().find(|found| found["id"] == record["id"]).cloned().unwrap();
        let counted = record["failover"]["inputs_lost"].as_u64().unwrap();
        (counted >= lost).then_some(counted)
    });
    assert_eq!(counted, lost);
}

/// The next state update, or `None` after 10 s or when the connection closed.
async fn next_update(client: &mut baton_client::Client) -> Option<baton_wire::player::StateUpdate> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, client.next_event()).await {
            Ok(Some(baton_client::Event::Update(update))) => return Some(update),
            Ok(Some(baton_client::Event::Closed { .. }) | None) | Err(_) => return None,
            Ok(Some(_)) => {}
        }
    }
}

#[test]
fn a_gateway_dying_with_the_owners_host_leaves_its_players_to_resume_on_another_gateway() {
    let spec = FleetSpec { coordinator_args: vec!["--standby".into(), "on".into()], ..spec() };
    let mut fleet = Fleet::start(&spec).unwrap();
    fleet.wait_hosts_ready(2, 1, Duration::from_secs(60)).unwrap();
    let world = json!({"objects": 40, "npcs": 4, "plants": 4});
    fleet.ok("POST", "/v1/regions", Some(json!({"region": 1, "host": "h1", "world": world}))).unwrap();
    wait_for(|| holding_standby(&fleet, 1));
    let (_g1, g1_address) = fleet.start_late_gateway().unwrap();
    let options = fleet.client_options();
    let token = fleet.token(7, 1);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut client = runtime.block_on(baton_client::Client::connect(&options, &token)).unwrap();
    let mut chain = 0u64;
    let send = |client: &mut baton_client::Client, count: u64, chain: &mut u64| {
        runtime.block_on(async {
            for _ in 0..count {
                let payload = vec![1, 0, 0, 0, 0, 0, 0, 0, 0, fastrand::u8(..)];
                *chain = baton_harness::players::chain_step(*chain, client.next_seq(), &payload);
                client.send_input(payload).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    };
    send(&mut client, 20, &mut chain);
    assert!(runtime.block_on(next_update(&mut client)).is_some());
    // The standby must still hold the region when its owner dies (on a starved machine its feed
    // can end and be placed again in between; a region without one is restored from a checkpoint,
    // which is another test's case).
    wait_for(|| holding_standby(&fleet, 1));
    // Inputs in flight; then the owner's host and the player's gateway die together.
    send(&mut client, 20, &mut chain);
    let before = last_record_id(&fleet);
    fleet.kill_host(1).unwrap();
    fleet.gateway.kill();
    // The player resumes on the other gateway; until the region is back its join waits or is
    // refused, and the player tries again, as a client would.
    let resumed = runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match client.resume(g1_address).await {
                Ok(()) => return true,
                Err(error) if tokio::time::Instant::now() < deadline => {
                    eprintln!("resume refused ({error}); trying again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => return false,
            }
        }
    });
    assert!(resumed, "the session resumed on the other gateway");
    let record = failover_of(&fleet, 1, before);
    assert_eq!(record["phase"], "committed", "{record}");
    assert_eq!(record["failover"]["standby"], true, "{record}");
    send(&mut client, 20, &mut chain);
    let view = runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut view = None;
        while tokio::time::Instant::now() < deadline {
            let Some(update) = next_update(&mut client).await else { break };
            view = sample_region_server::PlayerView::parse(&update.payload);
            if update.last_applied == 60 {
                break;
            }
        }
        view
    });
    let view = view.expect("a view from the promoted owner");
    assert_eq!(client.acked(), 60, "every input acknowledged");
    assert_eq!(view.inputs_applied, 60, "each input applied exactly once");
    assert_eq!(view.input_chain, chain, "in order");
}

#[test]
fn a_flapping_host_loses_its_region_once_and_never_gets_it_back_by_failover() {
    let spec = FleetSpec { coordinator_args: vec!["--standby".into(), "on".into()], ..spec() };
    let mut fleet = Fleet::start(&spec).unwrap();
    fleet.wait_hosts_ready(2, 1, Duration::from_secs(60)).unwrap();
    let world = json!({"objects": 40, "npcs": 4, "plants": 4});
    fleet.ok("POST", "/v1/regions", Some(json!({"region": 1, "host": "h1", "world": world}))).unwrap();
    wait_for(|| holding_standby(&fleet, 1));
    let playing = players(&fleet, 1, 3, 1);
    // 1. h1 hangs (every process of it frozen): its region is taken over by its standby on h2.
    let before = last_record_id(&fleet);
    let frozen = fleet.signal_host(1, "-STOP").unwrap();
    let record = failover_of(&fleet, 1, before);
    assert_eq!(record["phase"], "committed", "{record}");
    assert_eq!(record["to_host"], "h2", "{record}");
    // 2. It comes back, hangs again, comes back again: the old owner lets the region go and
    // nothing fails over again (the region stays on h2).
    let arguments: Vec<String> = frozen.iter().map(u32::to_string).collect();
    assert!(std::process::Command::new("kill").arg("-CONT").args(&arguments).status().unwrap().success());
    wait_for(|| host_alive(&fleet, "h1").then_some(()));
    let settled = last_record_id(&fleet);
    for _ in 0..2 {
        let frozen_again = fleet.signal_host(1, "-STOP").unwrap();
        // An outage the coordinator takes for a dead host.
        wait_for(|| (!host_alive(&fleet, "h1")).then_some(()));
        let arguments: Vec<String> = frozen_again.iter().map(u32::to_string).collect();
        assert!(std::process::Command::new("kill").arg("-CONT").args(&arguments).status().unwrap().success());
        wait_for(|| host_alive(&fleet, "h1").then_some(()));
    }
    assert_nothing_lost(&playing.finish().unwrap());
    let (host, process, _) = wait_for(|| server_of(&fleet, 1));
    assert_eq!(host, "h2", "the region stayed where the failover put it");
    assert_eq!(fleet.ok("GET", "/v1/regions", None).unwrap()[0]["owner"], process.as_str(), "the directory agrees");
    let records = fleet.ok("GET", "/v1/migrations", None).unwrap();
    let later: Vec<&Value> = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|record| record["id"].as_u64().unwrap() > settled && record["region"] == 1)
        .collect();
    assert!(later.is_empty(), "no ping-pong: {later:?}");
}

/// Whether host `name` was declared dead.
fn host_dead(fleet: &Fleet, name: &str) -> bool {
    let hosts = fleet.ok("GET", "/v1/hosts", None).unwrap();
    hosts.as_array().unwrap().iter().any(|host| host["name"] == name && host["dead"] == true)
}

/// Whether host `name` reports (connected and not declared dead).
fn host_alive(fleet: &Fleet, name: &str) -> bool {
    let hosts = fleet.ok("GET", "/v1/hosts", None).unwrap();
    hosts
        .as_array()
        .unwrap()
        .iter()
        .any(|host| host["name"] == name && host["connected"] == true && host["dead"] == false)
}
