//! A region server's own metrics (its live heap among them) and settings file: what an operator
//! scrapes and sets. (JSON logs are
//! tested with the harness's binaries, `tests/harness/tests/bins.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use baton_harness::cluster::{Cluster, sample_world, server_binary};
use baton_wire::serve::ServerEvent;

fn binary() -> PathBuf {
    server_binary().expect("the sample-region-server binary (cargo build --bins)")
}

#[test]
fn a_region_server_serves_prometheus_metrics_and_takes_its_settings_from_a_file() {
    // The metrics address comes from a settings file; port 0, and the server says which it got.
    let directory = std::env::temp_dir().join(format!("baton-observability-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let settings = directory.join("server.toml");
    std::fs::write(&settings, "metrics_listen = \"127.0.0.1:0\"\n").unwrap();
    let extra = vec!["--config".to_owned(), settings.display().to_string()];
    let mut cluster = Cluster::start(&binary(), 1, &extra).unwrap();
    let metrics = cluster.processes[0]
        .log
        .iter()
        .find_map(|event| match event {
            ServerEvent::Listening { metrics, .. } => *metrics,
            _ => None,
        })
        .expect("the listening event names the metrics address");
    assert_ne!(metrics.port(), 0);
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
    // The sample server counts its heap: a `heap` event every second, and the gauge when scraped.
    let (_, heap) = cluster.processes[0]
        .wait_for(0, Duration::from_secs(10), |event| matches!(event, ServerEvent::Heap { .. }))
        .unwrap();
    let ServerEvent::Heap { live_bytes } = heap else { unreachable!("matched above") };
    let gauge = baton_harness::fleet::metric_value(&text, baton_net::heap::LIVE_BYTES_GAUGE).unwrap();
    // A region of 20 objects and its engines, a QUIC endpoint, two runtimes: a few MB, not 0, not GBs.
    for bytes in [live_bytes as f64, gauge] {
        assert!((1e6..1e9).contains(&bytes), "a live heap of {bytes} bytes");
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(directory);
}
