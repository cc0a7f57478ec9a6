//! `baton-gateway`: the players' QUIC endpoint of a Baton cluster.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use baton_gateway::token::TokenKey;
use baton_gateway::{Gateway, GatewayCommand, GatewayConfig, GatewayEvent, Limits};
use baton_net::public::PlayerTransport;
use baton_net::{ClusterIdentity, LinkSettings};
use baton_wire::{Epoch, RegionId};
use clap::Parser;

/// mimalloc: the gateway allocates and frees a few small buffers per packet (quinn's, tokio's
/// channels), where glibc's allocator cost about a seventh of the gateway's CPU at 2,000 avatars.
/// Off without the `mimalloc` feature, for heap profilers that follow the system allocator. Either
/// way its live heap is counted (`baton_net::heap`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: cap::Cap<mimalloc::MiMalloc> = cap::Cap::new(mimalloc::MiMalloc, usize::MAX);
#[cfg(not(feature = "mimalloc"))]
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Keep players' QUIC connections and route them to whichever region server owns their region.
///
/// Players connect with a session token signed by the login service (HMAC-SHA256 with the key in
/// --token-key-file). The gateway connects to region servers with its cluster certificate (mutual
/// TLS) and learns from them which regions they own. With --coordinator it follows the
/// coordinator's route feed, which names every region's owner; --server names servers at start,
/// and the control lines on standard input (--control) add servers and routes later:
///
///   {"cmd":"server","addr":"127.0.0.1:4433"}
///   {"cmd":"assign","region":1,"owner":"127.0.0.1:4433","epoch":3}
///   {"cmd":"stats"}
///   {"cmd":"quit"}
///
/// Events and answers are JSON lines on standard output; logs go to standard error (RUST_LOG).
#[derive(Debug, Parser)]
#[command(version, about, long_about, args_override_self = true)]
struct Cli {
    /// Settings file (TOML: each key is a long option without its dashes, `pool_size = 3` for
    /// `--pool-size 3`).
    /// BATON_GATEWAY_<OPTION> environment variables override it, options given here override both.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// This gateway's name; its cluster certificate is <certs>/<name>.pem.
    #[arg(long)]
    name: String,
    /// Where players connect (UDP).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Folder with the cluster CA (ca.pem) and this gateway's certificate and key.
    #[arg(long, value_name = "DIR")]
    certs: PathBuf,
    /// The players' TLS certificate chain (PEM); with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key", conflicts_with = "dev_tls")]
    tls_cert: Option<PathBuf>,
    /// The players' TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Development mode: make (or reuse) a self-signed player certificate for "localhost" in DIR
    /// (gateway.pem is what clients trust).
    #[arg(long, value_name = "DIR")]
    dev_tls: Option<PathBuf>,
    /// File holding the token key shared with the login service (at least 32 bytes; surrounding
    /// whitespace is ignored).
    #[arg(long, value_name = "FILE")]
    token_key_file: PathBuf,
    /// The coordinator's cluster address: follow its route feed (every region's owner, pushed as
    /// it changes). Without it, routes come from --server and the control lines.
    #[arg(long, value_name = "ADDR")]
    coordinator: Option<SocketAddr>,
    /// A region server to connect to at start (repeatable).
    #[arg(long = "server", value_name = "ADDR")]
    servers: Vec<SocketAddr>,
    /// Read control lines from standard input.
    #[arg(long)]
    control: bool,
    /// Most player connections at once.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Inputs per second a player may send on average.
    #[arg(long, default_value_t = Limits::default().inputs_per_second)]
    input_rate: u32,
    /// Inputs a player may send in a burst.
    #[arg(long, default_value_t = Limits::default().input_burst)]
    input_burst: u32,
    /// Seconds of silence after which a player connection is closed.
    #[arg(long, default_value_t = 15)]
    idle_timeout_s: u64,
    /// Seconds a disconnected player's session waits for a resume.
    #[arg(long, default_value_t = 30)]
    resume_grace_s: u64,
    /// Serve Prometheus metrics over HTTP on this address (e.g. 127.0.0.1:9102; any path; port 0
    /// picks a free one, named in the `listening` line as `metrics`).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Worker threads of the async runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn emit(event: &GatewayEvent) {
    let mut out = std::io::stdout().lock();
    if let Ok(line) = serde_json::to_string(event) {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.idle_timeout_s == 0 || cli.idle_timeout_s > 600 {
        anyhow::bail!("--idle-timeout-s must be within 1..=600, got {}", cli.idle_timeout_s);
    }
    if cli.input_rate == 0 || cli.input_burst == 0 || cli.max_connections == 0 {
        anyhow::bail!("--input-rate, --input-burst and --max-connections must be at least 1");
    }
    if cli.threads == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    let key_text = std::fs::read(&cli.token_key_file)
        .with_context(|| format!("reading the token key {}", cli.token_key_file.display()))?;
    let token_key = TokenKey::new(key_text.trim_ascii())
        .map_err(|error| anyhow::anyhow!("token key {}: {error}", cli.token_key_file.display()))?;
    let tls = match (&cli.tls_cert, &cli.tls_key, &cli.dev_tls) {
        (Some(cert), Some(key), _) => baton_net::public::load_certificate(cert, key)?,
        (_, _, Some(directory)) => {
            let (cert, key) = baton_net::public::dev_gateway_certificate(directory)?;
            baton_net::public::load_certificate(&cert, &key)?
        }
        _ => anyhow::bail!("give the players' certificate with --tls-cert/--tls-key, or --dev-tls DIR for development"),
    };
    let identity = ClusterIdentity::load(&cli.certs, &cli.name)
        .with_context(|| format!("loading the cluster certificate of {} from {}", cli.name, cli.certs.display()))?;
    // Outside the data plane's runtime: the listener has a thread of its own, so metrics answer
    // even when the player traffic saturates the runtime.
    let metrics = cli.metrics_listen.map(baton_net::metrics::serve).transpose().context("serving metrics")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let config = GatewayConfig {
        name: cli.name.clone(),
        listen: cli.listen,
        tls: Some(tls),
        identity,
        token_key,
        limits: Limits {
            max_connections: cli.max_connections,
            inputs_per_second: cli.input_rate,
            input_burst: cli.input_burst,
            ..Limits::default()
        },
        transport: PlayerTransport {
            idle_timeout: Duration::from_secs(cli.idle_timeout_s),
            ..PlayerTransport::default()
        },
        resume_grace: Duration::from_secs(cli.resume_grace_s),
        link: LinkSettings::default(),
    };
    let gateway = runtime.block_on(async { Gateway::start(config) }).context("starting the gateway")?;
    let address = gateway.player_address()?;
    {
        let _guard = runtime.enter();
        for server in &cli.servers {
            gateway.add_server(*server);
        }
        let publisher = gateway.clone();
        runtime.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            while !publisher.is_shut_down() {
                every.tick().await;
                publisher.stats().record_metrics();
            }
        });
        if let Some(coordinator) = cli.coordinator {
            gateway.follow_coordinator(coordinator).context("following the coordinator's route feed")?;
        }
    }
    emit(&GatewayEvent::Listening { name: cli.name.clone(), addr: address, metrics });

    if cli.control {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let line = line.context("reading standard input")?;
            if line.trim().is_empty() {
                continue;
            }
            let _guard = runtime.enter();
            match serde_json::from_str::<GatewayCommand>(&line) {
                Ok(GatewayCommand::Server { addr }) => {
                    gateway.add_server(addr);
                }
                Ok(GatewayCommand::Assign { region, owner, epoch }) => {
                    if let Err(error) = gateway.assign(RegionId(region), owner, Epoch(epoch)) {
                        emit(&GatewayEvent::Error { error: error.to_string() });
                    }
                }
                Ok(GatewayCommand::Stats) => emit(&GatewayEvent::Stats { stats: gateway.stats() }),
                Ok(GatewayCommand::Quit) => break,
                Err(error) => emit(&GatewayEvent::Error { error: format!("bad control line: {error}") }),
            }
        }
    } else {
        runtime.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    }
    gateway.shutdown();
    runtime.shutdown_timeout(Duration::from_millis(500));
    Ok(())
}

fn main() -> ExitCode {
    baton_net::heap::count_with(|| ALLOCATOR.allocated());
    baton_config::main("baton-gateway", "BATON_GATEWAY", |cli: Cli| run(cli))
}
