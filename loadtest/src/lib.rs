//! Baton's load test: simulated avatars through a real deployment on this machine (a coordinator,
//! host agents with sample region servers, a gateway), driven by scenario files that also act as
//! the operator (migrations and drains through the admin API), judged by SLOs.
//!
//! - [`scenario`]: the TOML scenario files (`loadtest/scenarios/`).
//! - [`run`]: starts the deployment, runs the avatars and the events, shows progress.
//! - [`report`]: `report.json`, the terminal summary, the SLO verdict; `chart`: `report.html`.
//!
//! Not built yet: the side-by-side restart baseline (stop, save, start elsewhere, reconnect).
//! Every figure comes from the avatars' own clients; nothing is estimated.

mod chart;
pub mod report;
pub mod run;
pub mod scenario;

pub use report::Report;
pub use run::{RunOptions, run};
pub use scenario::Scenario;

/// Runs a scenario to the end (or Ctrl-C), writes the report into `out`, prints the summary and
/// the report's paths; `Ok(true)` when every SLO held.
pub fn run_and_report(scenario: &Scenario, options: &RunOptions, out: &std::path::Path) -> anyhow::Result<bool> {
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
