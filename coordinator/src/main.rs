//! `baton-coordinator`: the region directory of a Baton cluster, served as the ownership authority.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use baton_coordinator::directory::Directory;
use baton_net::ClusterIdentity;
use clap::Parser;
use serde_json::json;

/// Keep the region directory (who owns each region, at which epoch) and serve it to region servers
/// as the authority of handoff commits.
///
/// The directory is an embedded redb store in --data; it survives crashes and restarts: a restarted
/// coordinator answers exactly what it had committed. Region servers reach it with
/// `--coordinator ADDR` over mutual TLS (cluster certificates in --certs).
///
/// With --control, standard input takes JSON lines: {"cmd":"regions"} prints the directory,
/// {"cmd":"quit"} stops. Without it, the coordinator runs until Ctrl-C.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// This coordinator's name; its cluster certificate is <certs>/<name>.pem.
    #[arg(long, default_value = "coordinator")]
    name: String,
    /// Folder with the cluster CA (ca.pem) and this node's certificate and key.
    #[arg(long, value_name = "DIR")]
    certs: PathBuf,
    /// Where region servers reach the authority (UDP).
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Folder of the persistent directory.
    #[arg(long, value_name = "DIR", default_value = "baton-data")]
    data: PathBuf,
    /// Read control lines from standard input.
    #[arg(long)]
    control: bool,
}

fn emit(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let identity = ClusterIdentity::load(&cli.certs, &cli.name)
        .with_context(|| format!("loading the cluster certificate of {} from {}", cli.name, cli.certs.display()))?;
    let directory = Arc::new(
        Directory::open(&cli.data).with_context(|| format!("opening the directory in {}", cli.data.display()))?,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let endpoint = {
        let _guard = runtime.enter();
        baton_coordinator::authority::serve(cli.listen, &identity, directory.clone())
            .context("starting the authority endpoint")?
    };
    let address = endpoint.local_addr()?;
    emit(
        &json!({"event": "listening", "name": cli.name, "addr": address.to_string(), "regions": directory.list()?.len()}),
    );
    if cli.control {
        for line in std::io::stdin().lock().lines() {
            let line = line.context("reading standard input")?;
            match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(command) if command["cmd"] == "quit" => break,
                Ok(command) if command["cmd"] == "regions" => {
                    let regions: Vec<serde_json::Value> = directory
                        .list()?
                        .into_iter()
                        .map(|(region, ownership)| json!({"region": region.0, "owner": ownership.owner, "epoch": ownership.epoch.0}))
                        .collect();
                    emit(&json!({"event": "regions", "regions": regions}));
                }
                Ok(other) => emit(&json!({"event": "error", "error": format!("unknown command {other}")})),
                Err(error) => emit(&json!({"event": "error", "error": format!("bad control line: {error}")})),
            }
        }
    } else {
        runtime.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    }
    endpoint.close(0u32.into(), b"coordinator stopping");
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("baton-coordinator: {error:#}");
            ExitCode::FAILURE
        }
    }
}
