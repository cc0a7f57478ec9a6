//! Baton's load test: simulated avatars through a real deployment on this machine (a coordinator,
//! host agents with sample region servers, a gateway), driven by scenario files that also act as
//! the operator (migrations and drains through the admin API), judged by SLOs.
//!
//! - [`scenario`]: the TOML scenario files (`loadtest/scenarios/`).
//! - [`run`]: starts the deployment, runs the avatars and the events, shows progress.
//! - [`report`]: `report.json`, the terminal summary, the SLO verdict; `chart`: `report.html`.
//!
//! With `--baseline restart` the scenario runs again with every move done the old way (stop, save,
//! start elsewhere, players reconnect), side by side. Every figure comes from the avatars' own
//! clients or the coordinator's records; nothing is estimated.

mod chart;
pub mod report;
pub mod run;
pub mod scenario;

pub use report::Report;
pub use run::{RunOptions, run};
pub use scenario::Scenario;

/// The binaries a deployment runs, which must stand next to this executable.
const CLUSTER_BINARIES: [(&str, &str); 4] = [
    ("sample-region-server", "sample-region-server"),
    ("baton-coordinator", "baton-coordinator"),
    ("baton-agent", "baton-agent"),
    ("baton-gateway", "baton-gateway"),
];

/// Makes sure the deployment's binaries stand next to this executable. Under `cargo run` (which
/// builds only this package's binaries) missing ones are built with the same profile, so the
/// README's one command works on a fresh machine; otherwise a missing one is a clear error.
pub fn ensure_cluster_binaries() -> anyhow::Result<()> {
    let executable = std::env::current_exe()?;
    let directory = executable.parent().ok_or_else(|| anyhow::anyhow!("the executable has no folder"))?;
    let missing: Vec<&str> = CLUSTER_BINARIES
        .iter()
        .filter(|(name, _)| !directory.join(name).exists())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let Ok(cargo) = std::env::var("CARGO") else {
        anyhow::bail!(
            "{} missing next to {}; build them first: cargo build --release --bins",
            missing.join(", "),
            executable.display()
        );
    };
    let release = directory.file_name().is_some_and(|name| name == "release");
    eprintln!("building the cluster's binaries ({}); only the first run does this", missing.join(", "));
    let mut command = std::process::Command::new(cargo);
    command.arg("build").arg("--bins");
    if release {
        command.arg("--release");
    }
    for package in &missing {
        command.args(["-p", package]);
    }
    let status = command.status().map_err(|error| anyhow::anyhow!("running cargo build: {error}"))?;
    if !status.success() {
        anyhow::bail!("building {} failed", missing.join(", "));
    }
    Ok(())
}

/// Runs a scenario to the end (or Ctrl-C), writes the report into `out`, prints the summary and
/// the report's paths; `Ok(true)` when every SLO held.
pub fn run_and_report(scenario: &Scenario, options: &RunOptions, out: &std::path::Path) -> anyhow::Result<bool> {
    ensure_cluster_binaries()?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    // Ctrl-C stops the run; the deployment's processes are stopped when it unwinds.
    let watcher = std::thread::Builder::new().name("ctrl-c".into()).spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            runtime.block_on(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("stopping (Ctrl-C): every process this run started is being stopped");
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    let report = run(scenario, options, &stop)?;
    drop(watcher);
    let (json, html) = report.write(out)?;
    print!("{}", report.summary());
    println!("report: {}\n        {}", json.display(), html.display());
    Ok(report.slo_ok)
}
