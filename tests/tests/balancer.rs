//! The balancer on a real deployment, with players on board: it packs idle regions onto one host
//! and frees the others (their warm pools released), then, when the operator lowers the
//! watermarks below the load (as if the load had risen), takes a free host back and relieves the
//! crowded one. Throughout: one owner per region, every input applied exactly once, no disconnect.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use baton_harness::fleet::{Fleet, FleetSpec};
use baton_harness::players::{Movement, PlayerOutcome, PlayerPlan, run_player};
use serde_json::{Value, json};

fn wait_for(fleet: &Fleet, what: &str, timeout: Duration, mut done: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let status = fleet.ok("GET", "/v1/balancer", None).unwrap();
        if done(&status) {
            return status;
        }
        let plan = fleet.ok("GET", "/v1/balancer/plan", None).unwrap();
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}\nstatus {status}\nplan {plan}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn count(value: &Value) -> usize {
    value.as_array().map_or(0, Vec::len)
}

fn decisions_of(status: &Value, step: &str) -> Vec<Value> {
    status["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|decision| decision["step"]["step"] == step)
        .cloned()
        .collect()
}

#[test]
fn the_balancer_frees_idle_hosts_and_takes_one_back_when_the_load_needs_it() {
    // The operator's hook records what it is told (an autoscaler would switch hosts off and on).
    let hooks = std::env::temp_dir().join(format!("baton-balancer-hook-{}", std::process::id()));
    std::fs::create_dir_all(&hooks).unwrap();
    let hook = hooks.join("hook.sh");
    let told = hooks.join("told");
    std::fs::write(&hook, format!("#!/bin/sh\necho \"$1 $2\" >> {}\n", told.display())).unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&hook).status().unwrap();
    let spec = FleetSpec {
        hosts: 3,
        pool: 1,
        capacity: 8,
        world_regions: 6,
        columns: 3,
        tick_rate: 20,
        checkpoint_every_s: 30.0,
        capacity_cores: vec![2.0, 2.0, 2.0],
        coordinator_args: [
            "--balancer",
            "on",
            "--balancer-interval-ms",
            "300",
            "--balancer-cooldown-s",
            "3",
            "--balancer-settle-s",
            "1",
            "--balancer-peak-window-s",
            "3",
            "--balancer-consolidate-window-s",
            "5",
            "--balancer-hook",
            hook.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec(),
    };
    let fleet = Fleet::start(&spec).unwrap();
    fleet.wait_hosts_ready(3, 1, Duration::from_secs(90)).unwrap();
    // Before any region exists the balancer would free two empty hosts at once; hold it off.
    fleet.ok("PUT", "/v1/balancer", Some(json!({"mode": "dry-run"}))).unwrap();
    for region in 1..=6u64 {
        let host = format!("h{}", (region - 1) % 3 + 1);
        fleet
            .ok("POST", "/v1/regions", Some(json!({"region": region, "host": host, "world": {"objects": 30, "npcs": 3, "plants": 3, "seed": region}})))
            .unwrap();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let options = fleet.client_options();
    // The players play until the balancer's work below is done (`play_for` only bounds a hang).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let players: Vec<_> = (1..=12u64)
        .map(|player| {
            let region = (player - 1) % 6 + 1;
            let plan = PlayerPlan {
                start_after: Duration::from_millis(player * 50),
                settle_for: Duration::from_secs(20),
                stop: Some(stop.clone()),
                ..PlayerPlan::new(player, region, Movement::Wander, Duration::from_secs(300))
            };
            runtime.spawn(run_player(options.clone(), fleet.token(player, region), plan))
        })
        .collect();
    // Dry run: once the hosts have reported their load, the plan says what it would do, and
    // nothing moves.
    baton_harness::wait_until(Duration::from_secs(30), "idle hosts: a plan that consolidates", || {
        let plan = fleet.ok("GET", "/v1/balancer/plan", None).unwrap();
        if count(&plan["steps"]) > 0 { Ok(()) } else { Err(plan.to_string()) }
    });
    assert!(count(&fleet.ok("GET", "/v1/migrations", None).unwrap()) == 0);

    // On: the regions are packed onto one host, two hosts are freed and release their pools.
    fleet.ok("PUT", "/v1/balancer", Some(json!({"mode": "on"}))).unwrap();
    let status =
        wait_for(&fleet, "two hosts freed", Duration::from_secs(60), |status| count(&status["free_hosts"]) == 2);
    assert_eq!(count(&status["hosts_in_use"]), 1, "{status}");
    let kept = status["hosts_in_use"][0].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hosts = fleet.ok("GET", "/v1/hosts", None).unwrap();
        let free: Vec<&Value> = hosts.as_array().unwrap().iter().filter(|host| host["free"] == true).collect();
        if free.len() == 2 && free.iter().all(|host| count(&host["processes"]) == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "free hosts still run processes: {hosts}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let regions = fleet.ok("GET", "/v1/regions", None).unwrap();
    assert!(regions.as_array().unwrap().iter().all(|row| row["host"] == kept.as_str()), "{regions}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut freed: Vec<String> = status["free_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|host| format!("free {}", host.as_str().unwrap()))
        .collect();
    freed.sort();
    loop {
        let mut lines: Vec<String> =
            std::fs::read_to_string(&told).unwrap_or_default().lines().map(str::to_owned).collect();
        lines.sort();
        if lines == freed {
            break;
        }
        assert!(Instant::now() < deadline, "the hook was told {lines:?}, not {freed:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A free host takes no migration asked for by hand.
    let free_host = status["free_hosts"][0].as_str().unwrap();
    let (refused, body) =
        fleet.call("POST", "/v1/migrations", Some(json!({"region": 1, "to_host": free_host}))).unwrap();
    assert_eq!(refused, 409, "{body}");

    // The operator lowers the watermarks under the host's load (as a rising load would cross
    // them): the balancer takes a free host back and relieves the crowded one.
    let plan = fleet.ok("GET", "/v1/balancer/plan", None).unwrap();
    let pressure = plan["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|host| host["host"] == kept.as_str())
        .map(|host| host["cpu"].as_f64().unwrap().max(host["memory"].as_f64().unwrap()))
        .unwrap();
    assert!(pressure > 0.0, "{plan}");
    let settings = json!({
        "fill": pressure * 0.6, "wake": pressure * 0.65, "high": pressure * 0.7,
        "cooldown_s": 3.0, "settle_s": 60.0, "peak_window_s": 3.0, "consolidate_window_s": 5.0, "move_overhead_core_s": 0.0,
        "move_bytes_per_core_s": 1e12
    });
    let (status_code, body) =
        fleet.call("PUT", "/v1/balancer", Some(json!({"settings": {"fill": 0.9, "high": 0.5}}))).unwrap();
    assert_eq!(status_code, 400, "falling levels are refused: {body}");
    fleet.ok("PUT", "/v1/balancer", Some(json!({"settings": settings}))).unwrap();
    let status = wait_for(&fleet, "a host back in use and a region moved to it", Duration::from_secs(40), |status| {
        !decisions_of(status, "use").is_empty()
            && decisions_of(status, "move").iter().any(|decision| decision["step"]["kind"] == "rebalance")
    });
    let taken_back = decisions_of(&status, "use")[0]["step"]["host"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&told).unwrap_or_default().contains(&format!("use {taken_back}")) {
        assert!(Instant::now() < deadline, "the hook was not told {taken_back} is back in use");
        std::thread::sleep(Duration::from_millis(100));
    }
    let migrations = fleet.ok("GET", "/v1/migrations", None).unwrap();
    let rebalanced: Vec<&Value> =
        migrations.as_array().unwrap().iter().filter(|record| record["kind"] == "rebalance").collect();
    assert!(!rebalanced.is_empty(), "{migrations}");
    // A relief went to the host taken back, and committed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let migrations = fleet.ok("GET", "/v1/migrations", None).unwrap();
        let landed = migrations.as_array().unwrap().iter().any(|record| {
            record["kind"] == "rebalance" && record["to_host"] == taken_back.as_str() && record["phase"] == "committed"
        });
        if landed {
            break;
        }
        assert!(Instant::now() < deadline, "no relief committed on {taken_back}: {migrations}");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(rebalanced.iter().all(|record| record["cause"].as_str().is_some_and(|cause| cause.contains(&kept))));
    eprintln!("balancer: {}", status["decisions"]);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes: Vec<PlayerOutcome> =
        players.into_iter().map(|task| runtime.block_on(task).unwrap().unwrap()).collect();
    // Every move ends (the last ones may still be cleaning up their sources).
    let migrations = baton_harness::wait_until(Duration::from_secs(30), "every move ended", || {
        let migrations = fleet.ok("GET", "/v1/migrations", None).unwrap();
        let ended = migrations
            .as_array()
            .unwrap()
            .iter()
            .all(|record| record["phase"] == "committed" || record["phase"] == "aborted");
        if ended { Ok(migrations) } else { Err(migrations.to_string()) }
    });
    let records = migrations.as_array().unwrap();
    assert!(records.iter().any(|record| record["kind"] == "consolidate" && record["phase"] == "committed"));
    for outcome in &outcomes {
        assert_eq!(outcome.disconnects, 0, "player {}: {:?}", outcome.player, outcome.close_reasons);
        assert!(outcome.chain_ok && outcome.acked == outcome.sent, "player {}: {outcome:?}", outcome.player);
    }
    // One owner per region: the directory's owner is the one process serving it.
    let regions = fleet.ok("GET", "/v1/regions", None).unwrap();
    let hosts = fleet.ok("GET", "/v1/hosts", None).unwrap();
    for row in regions.as_array().unwrap() {
        let serving: Vec<&str> = hosts
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|host| host["processes"].as_array().cloned().unwrap_or_default())
            .filter(|process| process["regions"].as_array().is_some_and(|owned| owned.contains(&row["region"])))
            .map(|process| process["name"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<String>>()
            .iter()
            .map(|name| if name == row["owner"].as_str().unwrap_or_default() { "owner" } else { "other" })
            .collect();
        assert_eq!(serving, ["owner"], "{row} {hosts}");
    }
    let _ = std::fs::remove_dir_all(hooks);
}
