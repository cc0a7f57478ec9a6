//! `baton-agent`: one per host; keeps pre-warmed region-server processes and reports to the coordinator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use baton_agent::AgentConfig;
use baton_net::ClusterIdentity;
use clap::Parser;

/// Counts the live heap (`baton_net::heap`) over the system allocator.
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Register this host with the coordinator and keep a pool of pre-warmed region-server processes.
///
/// The agent starts `--pool` idle processes from the command after `--` (adding `--name
/// <host>-pN --listen 127.0.0.1:0`), starts a replacement whenever the coordinator claims one,
/// restarts a process that crashed, reports load every interval, and stops every process it
/// started when it stops (Ctrl-C, SIGTERM).
///
/// Example:
///   baton-agent --host h1 --certs certs --coordinator 127.0.0.1:7400 --pool 2 -- \
///     sample-region-server --serve --certs certs --cert-name h1 --coordinator 127.0.0.1:7400
#[derive(Debug, Parser)]
#[command(version, about, long_about, args_override_self = true)]
struct Cli {
    /// Settings file (TOML: each key is a long option without its dashes, `pool_size = 3` for
    /// `--pool-size 3`).
    /// BATON_AGENT_<OPTION> environment variables override it, options given here override both.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// This host's name; its cluster certificate is <certs>/<host>.pem.
    #[arg(long)]
    host: String,
    /// Folder with the cluster CA (ca.pem) and this host's certificate and key.
    #[arg(long, value_name = "DIR")]
    certs: PathBuf,
    /// The coordinator's address.
    #[arg(long, value_name = "ADDR")]
    coordinator: SocketAddr,
    /// Warm processes to keep ready.
    #[arg(long, default_value_t = 2)]
    pool: usize,
    /// Most region-server processes on this host.
    #[arg(long, default_value_t = 16)]
    capacity: usize,
    /// CPU cores the region servers of this host may use: the coordinator's balancer keeps each
    /// host's load below its watermarks of this. Default: the cores this process may run on.
    #[arg(long, value_name = "CORES")]
    capacity_cores: Option<f64>,
    /// Memory the region servers of this host may use, e.g. `16GiB` or `512MB` (plain numbers are
    /// bytes). Default: the host's total memory (/proc/meminfo).
    #[arg(long, value_name = "SIZE")]
    capacity_memory: Option<bytesize::ByteSize>,
    /// Milliseconds between status reports. They are also the host's heartbeat: the coordinator
    /// declares a host dead after --host-dead-after-ms (800 by default) without one.
    #[arg(long, default_value_t = 200)]
    status_interval_ms: u64,
    /// Serve Prometheus metrics over HTTP on this address (e.g. 127.0.0.1:9101; any path; port 0
    /// picks a free one, printed on standard output as `{"event":"metrics","addr":...}`).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// The address this host's region servers listen on, each on a free port: this host's address
    /// on the cluster network (other hosts and the gateways dial it; the default suits a cluster on
    /// one machine).
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    server_ip: std::net::IpAddr,
    /// The region-server command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn main() -> ExitCode {
    baton_net::heap::count_with(|| ALLOCATOR.allocated());
    baton_config::main("baton-agent", "BATON_AGENT", |cli: Cli| run(cli))
}

/// The host's total memory in bytes, from `/proc/meminfo`.
fn total_memory() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let line = text.lines().find(|line| line.starts_with("MemTotal:")).context("no MemTotal in /proc/meminfo")?;
    let kib: u64 = line.trim_start_matches("MemTotal:").trim().trim_end_matches("kB").trim().parse()?;
    Ok(kib * 1024)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.status_interval_ms == 0 {
        anyhow::bail!("--status-interval-ms must be at least 1");
    }
    if cli.server_ip.is_unspecified() {
        anyhow::bail!(
            "--server-ip must be an address other hosts can dial (this host's on the cluster network), not {}",
            cli.server_ip
        );
    }
    let identity = ClusterIdentity::load(&cli.certs, &cli.host)
        .with_context(|| format!("loading the cluster certificate of {} from {}", cli.host, cli.certs.display()))?;
    if let Some(address) = cli.metrics_listen {
        let bound = baton_net::metrics::serve(address).context("serving metrics")?;
        baton_agent::describe_metrics();
        tracing::info!(%bound, "serving metrics");
        // One line on standard output, for whoever started the agent with port 0.
        println!("{}", serde_json::to_string(&baton_agent::AgentEvent::Metrics { addr: bound })?);
    }
    let capacity_cores = match cli.capacity_cores {
        Some(cores) => cores,
        None => {
            std::thread::available_parallelism().context("counting this host's cores (set --capacity-cores)")?.get()
                as f64
        }
    };
    let capacity_memory = match cli.capacity_memory {
        Some(size) => size.as_u64(),
        None => total_memory().context("reading this host's memory (set --capacity-memory)")?,
    };
    let config = AgentConfig {
        host: cli.host,
        coordinator: cli.coordinator,
        pool: cli.pool,
        capacity: cli.capacity,
        capacity_cores,
        capacity_memory,
        server_ip: cli.server_ip,
        command: cli.command,
        status_interval: Duration::from_millis(cli.status_interval_ms),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let stop = async {
            let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match terminate.as_mut() { Some(signal) => { signal.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        baton_agent::run(config, identity, stop).await
    })
}
