//! `baton-coordinator`: the region directory of a Baton cluster, served as the ownership authority.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use baton_coordinator::balancer::{Mode, Settings};
use baton_coordinator::console::{ConsoleCommand, ConsoleEvent, DirectoryEntry};
use baton_coordinator::directory::Directory;
use baton_coordinator::failover::{FailoverSettings, Failovers};
use baton_coordinator::routes::RouteNotices;
use baton_net::ClusterIdentity;
use clap::Parser;

/// Counts the live heap (`baton_net::heap`) over the system allocator.
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Keep the region directory (who owns each region, at which epoch) and serve it to region servers
/// as the authority of handoff commits.
///
/// The directory is an embedded redb store in --data; it survives crashes and restarts: a restarted
/// coordinator answers exactly what it had committed. Region servers reach it with
/// `--coordinator ADDR` over mutual TLS (cluster certificates in --certs).
///
/// Host agents register on the same endpoint. The admin HTTP API (--api-listen; bearer token from
/// --api-token-file; OpenAPI document at /openapi.json, Prometheus metrics at /metrics) creates
/// regions, moves them between hosts and drains hosts; `batonctl` is its command line.
///
/// With --balancer on, the coordinator balances on its own: a host above its high watermark is
/// relieved (its cheapest region that fixes it moves to the host with most room; a region too big
/// for its host goes to a bigger one), and when the load fits on fewer hosts the least loaded host
/// is emptied and freed (its warm pool released, --balancer-hook told) until it is needed again.
/// --balancer dry-run only records what it would do (GET /v1/balancer, /v1/balancer/plan).
///
/// With --control, standard input takes JSON lines: {"cmd":"regions"} prints the directory,
/// {"cmd":"quit"} stops. Without it, the coordinator runs until Ctrl-C.
#[derive(Debug, Parser)]
#[command(version, about, long_about, args_override_self = true)]
struct Cli {
    /// Settings file (TOML: each key is a long option without its dashes, `pool_size = 3` for
    /// `--pool-size 3`).
    /// BATON_COORDINATOR_<OPTION> environment variables override it, options given here override both.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
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
    /// Where the admin HTTP API listens (TCP).
    #[arg(long, default_value = "127.0.0.1:7480")]
    api_listen: SocketAddr,
    /// File holding the admin API's bearer token (at least 16 characters; surrounding whitespace
    /// is ignored).
    #[arg(long, value_name = "FILE")]
    api_token_file: PathBuf,
    /// Most migrations running at once that involve one host.
    #[arg(long, default_value_t = 2)]
    migrations_per_host: usize,
    #[command(flatten)]
    balancer: BalancerArgs,
    #[command(flatten)]
    failover: FailoverArgs,
}

/// Failover: regions whose owner is lost are taken over by their hot standby, or restored from
/// their newest checkpoint elsewhere.
#[derive(Debug, clap::Args)]
struct FailoverArgs {
    /// Take lost regions over automatically: `on` or `off` (then a person restores them with
    /// `POST /v1/regions {"from_checkpoint": true}`). Hosts are declared dead either way.
    #[arg(long = "failover", value_enum, default_value = "on")]
    failover: Switch,
    /// Milliseconds without a report from a host's agent before the host is declared dead and
    /// its regions are failed over (agents report every --status-interval-ms, 200 by default).
    #[arg(long = "host-dead-after-ms", default_value_t = 800)]
    dead_after_ms: u64,
    /// Milliseconds after which a region's owner is lost when its host's agent has not reported
    /// and its hot standby has heard nothing from it either (two witnesses; with --standby on).
    /// Its other regions wait for --host-dead-after-ms.
    #[arg(long = "host-suspect-after-ms", default_value_t = 300)]
    suspect_after_ms: u64,
    /// Milliseconds a region may have no host serving it, with no word of why, before it is
    /// failed over (a host lost while the coordinator was down).
    #[arg(long = "orphan-after-ms", default_value_t = 3000)]
    orphan_after_ms: u64,
    /// Seconds a failover may take before the region's players are told it is unavailable (it
    /// keeps trying).
    #[arg(long = "failover-grace-s", default_value_t = 10.0)]
    grace_s: f64,
    /// Keep a hot standby of every region on another host: `on` or `off`. It follows the owner
    /// tick by tick (its bytes count as the owner host's migration bytes) and a failover promotes
    /// it, rolling back only the ticks it had not acknowledged, instead of restoring the newest
    /// checkpoint. Needs --failover on.
    #[arg(long = "standby", value_enum, default_value = "off")]
    standby: Switch,
    /// Seconds a process claimed from a host's warm pool may own, receive and follow nothing
    /// (the old owner of a region that failed over while its host was only cut off) before it
    /// is released: its agent stops it, which frees its place (the warm pool is refilled if
    /// short). 0 never releases one: a host then runs out of processes after enough link faults.
    #[arg(long = "idle-release-s", default_value_t = baton_coordinator::idle::DEFAULT_GRACE.as_secs_f64())]
    idle_release_s: f64,
}

/// On or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

impl FailoverArgs {
    fn settings(&self) -> anyhow::Result<FailoverSettings> {
        if self.dead_after_ms == 0 || self.orphan_after_ms == 0 || self.suspect_after_ms == 0 {
            anyhow::bail!("--host-dead-after-ms, --host-suspect-after-ms and --orphan-after-ms must be at least 1");
        }
        if !(self.grace_s.is_finite() && self.grace_s >= 0.0 && self.grace_s <= 86_400.0) {
            anyhow::bail!("--failover-grace-s must be between 0 and 86400, not {}", self.grace_s);
        }
        if !(self.idle_release_s.is_finite()
            && (self.idle_release_s == 0.0 || (1.0..=86_400.0).contains(&self.idle_release_s)))
        {
            anyhow::bail!("--idle-release-s must be 0 (never) or between 1 and 86400, not {}", self.idle_release_s);
        }
        Ok(FailoverSettings {
            enabled: self.failover == Switch::On,
            dead_after: std::time::Duration::from_millis(self.dead_after_ms),
            suspect_after: std::time::Duration::from_millis(self.suspect_after_ms),
            orphan_after: std::time::Duration::from_millis(self.orphan_after_ms),
            grace: std::time::Duration::from_secs_f64(self.grace_s),
            idle_release: std::time::Duration::from_secs_f64(self.idle_release_s),
            ..FailoverSettings::default()
        })
    }
}

/// Automatic balancing (the admin API shows and changes all of it: /v1/balancer).
#[derive(Debug, clap::Args)]
struct BalancerArgs {
    /// Automatic balancing: `off`, `dry-run` (plans every round and records what it would do) or
    /// `on` (relieves hosts above --balancer-high; empties and frees the least loaded host when the
    /// others can take its regions within --balancer-fill).
    #[arg(long = "balancer", value_enum, default_value = "off")]
    mode: Mode,
    /// Milliseconds between the balancer's rounds.
    #[arg(long = "balancer-interval-ms", default_value_t = 2000)]
    interval_ms: u64,
    /// A program the balancer runs as `PROGRAM free HOST` when it frees a host (an autoscaler may
    /// switch it off) and `PROGRAM use HOST` when it takes one back (it must be on).
    #[arg(long = "balancer-hook", value_name = "PROGRAM")]
    hook: Option<PathBuf>,
    /// A host above this share of its capacity (CPU or memory) is relieved.
    #[arg(long = "balancer-high", default_value_t = Settings::default().high)]
    high: f64,
    /// A free host comes back when a host in use is above this share and the others have no room.
    #[arg(long = "balancer-wake", default_value_t = Settings::default().wake)]
    wake: f64,
    /// Moves fill a host to at most this share.
    #[arg(long = "balancer-fill", default_value_t = Settings::default().fill)]
    fill: f64,
    /// Seconds a region stays where a move put it.
    #[arg(long = "balancer-cooldown-s", default_value_t = Settings::default().cooldown_s)]
    cooldown_s: f64,
    /// Seconds a host that received a region or came back into use is not emptied.
    #[arg(long = "balancer-settle-s", default_value_t = Settings::default().settle_s)]
    settle_s: f64,
    /// Seconds of load history for relief: regions are sized by their peak over it.
    #[arg(long = "balancer-peak-window-s", default_value_t = Settings::default().peak_window_s)]
    peak_window_s: f64,
    /// Seconds of load history for consolidation: a host is emptied only if its regions fit
    /// elsewhere at their peak over it.
    #[arg(long = "balancer-consolidate-window-s", default_value_t = Settings::default().consolidate_window_s)]
    consolidate_window_s: f64,
    /// Hosts that always stay in use.
    #[arg(long = "balancer-min-hosts", default_value_t = Settings::default().min_hosts)]
    min_hosts: usize,
    /// Balancer moves running at once in the whole cluster.
    #[arg(long = "balancer-max-moves", default_value_t = Settings::default().max_moves)]
    max_moves: usize,
    /// A region the balancer never moves (repeat for more).
    #[arg(long = "balancer-pin", value_name = "REGION")]
    pin: Vec<u64>,
}

impl BalancerArgs {
    fn settings(&self) -> Settings {
        Settings {
            high: self.high,
            wake: self.wake,
            fill: self.fill,
            cooldown_s: self.cooldown_s,
            settle_s: self.settle_s,
            peak_window_s: self.peak_window_s,
            consolidate_window_s: self.consolidate_window_s,
            min_hosts: self.min_hosts,
            max_moves: self.max_moves,
            pinned: self.pin.clone(),
            ..Settings::default()
        }
    }
}

fn emit(event: &ConsoleEvent) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string(event).unwrap_or_default());
    let _ = out.flush();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(&cli.api_token_file)
        .with_context(|| format!("reading the API token {}", cli.api_token_file.display()))?
        .trim()
        .to_owned();
    if token.len() < 16 {
        anyhow::bail!("the API token in {} must have at least 16 characters", cli.api_token_file.display());
    }
    if cli.migrations_per_host == 0 {
        anyhow::bail!("--migrations-per-host must be at least 1");
    }
    let failover_settings = cli.failover.settings()?;
    let balancer_settings = cli.balancer.settings();
    balancer_settings.validate().map_err(|error| anyhow::anyhow!("the --balancer-* settings: {error}"))?;
    if cli.balancer.interval_ms == 0 {
        anyhow::bail!("--balancer-interval-ms must be at least 1");
    }
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
    let hosts = Arc::new(baton_coordinator::hosts::Hosts::default());
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().ok();
    baton_coordinator::balancing::describe_metrics();
    baton_coordinator::failover::describe_metrics();
    baton_coordinator::idle::describe_metrics();
    let notices = Arc::new(RouteNotices::default());
    let (endpoint, api_address) = runtime.block_on(async {
        let endpoint = baton_coordinator::authority::serve(
            cli.listen,
            &identity,
            directory.clone(),
            hosts.clone(),
            directory.clone(),
            notices.clone(),
        )
        .context("starting the cluster endpoint")?;
        let migrations = baton_coordinator::migrations::Migrations::open(
            hosts.clone(),
            directory.clone(),
            cli.migrations_per_host,
            baton_coordinator::migrations::Timeouts::default(),
        )
        .map_err(anyhow::Error::msg)?;
        let standbys = (cli.failover.failover == Switch::On && cli.failover.standby == Switch::On).then(|| {
            baton_coordinator::standby::Standbys::start(
                hosts.clone(),
                directory.clone(),
                migrations.clone(),
                baton_coordinator::standby::StandbySettings::default(),
            )
        });
        let balancing = baton_coordinator::balancing::Balancing::new(
            hosts.clone(),
            migrations.clone(),
            cli.balancer.mode,
            balancer_settings,
            std::time::Duration::from_millis(cli.balancer.interval_ms),
            cli.balancer.hook.clone(),
            standbys.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        tokio::spawn(balancing.clone().run());
        Failovers::start(
            hosts.clone(),
            directory.clone(),
            migrations.clone(),
            notices,
            standbys.clone(),
            failover_settings,
        );
        let state = baton_coordinator::api::ApiState {
            token: Arc::new(token),
            directory: directory.clone(),
            hosts: hosts.clone(),
            migrations,
            balancing,
            metrics,
            standbys,
        };
        let listener = tokio::net::TcpListener::bind(cli.api_listen)
            .await
            .with_context(|| format!("binding the admin API on {}", cli.api_listen))?;
        let api_address = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, baton_coordinator::api::router(state)).await {
                tracing::error!(%error, "the admin API stopped");
            }
        });
        Ok::<_, anyhow::Error>((endpoint, api_address))
    })?;
    let address = endpoint.local_addr()?;
    emit(&ConsoleEvent::Listening {
        name: cli.name.clone(),
        addr: address,
        api: api_address,
        regions: directory.list()?.len(),
    });
    if cli.control {
        for line in std::io::stdin().lock().lines() {
            let line = line.context("reading standard input")?;
            match serde_json::from_str::<ConsoleCommand>(&line) {
                Ok(ConsoleCommand::Quit) => break,
                Ok(ConsoleCommand::Regions) => {
                    let regions = directory
                        .list()?
                        .into_iter()
                        .map(|(region, ownership)| DirectoryEntry {
                            region: region.0,
                            owner: ownership.owner,
                            epoch: ownership.epoch.0,
                        })
                        .collect();
                    emit(&ConsoleEvent::Regions { regions });
                }
                Err(error) => emit(&ConsoleEvent::Error { error: format!("bad control line: {error}") }),
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
    baton_net::heap::count_with(|| ALLOCATOR.allocated());
    baton_config::main("baton-coordinator", "BATON_COORDINATOR", |cli: Cli| run(cli))
}
