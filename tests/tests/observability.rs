//! A region server's own metrics, settings file and JSON logs: what an operator scrapes and ships.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use baton_harness::cluster::{Cluster, sample_world, server_binary};

fn binary() -> PathBuf {
    server_binary().expect("the sample-region-server binary (cargo build --bins)")
}

#[test]
fn a_region_server_serves_prometheus_metrics_and_takes_its_settings_from_a_file() {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // The metrics address comes from a settings file.
    let directory = std::env::temp_dir().join(format!("baton-observability-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let settings = directory.join("server.toml");
    std::fs::write(&settings, format!("metrics_listen = \"{metrics}\"\n")).unwrap();
    let extra = vec!["--config".to_owned(), settings.display().to_string()];
    let mut cluster = Cluster::start(&binary(), 1, &extra).unwrap();
    cluster.host(&sample_world(20, 2, 2, 0, 1), 2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = ureq::get(format!("http://{metrics}/metrics"))
            .call()
            .ok()
            .and_then(|mut response| response.body_mut().read_to_string().ok())
            .unwrap_or_default();
        if text.contains("baton_ticks_total") && text.contains("baton_tick_duration_seconds") {
            break text;
        }
        assert!(Instant::now() < deadline, "no region metrics at {metrics}: {text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(text.contains("# HELP baton_ticks_total"), "metrics are described: {text}");
    drop(cluster);
    let _ = std::fs::remove_dir_all(directory);
}

#[test]
fn logs_can_be_json_lines() {
    // With BATON_LOG_FORMAT=json every log line is a JSON object (here: the ticks, at trace).
    let headless = baton_harness::cluster::headless_binary().expect("the headless binary (cargo build --bins)");
    let output = std::process::Command::new(headless)
        .args(["--seconds", "0.2", "--objects", "10", "--avatars", "2", "--npcs", "2", "--plants", "2", "--json"])
        .env("RUST_LOG", "baton_sdk=trace")
        .env("BATON_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "nothing was logged");
    for line in lines {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(value.get("level").is_some() && value.get("fields").is_some(), "{value}");
    }
}
