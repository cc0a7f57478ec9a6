//! `sample-region-server --serve`: a region-server process hosting sample regions and moving them.
//!
//! Until the coordinator exists, it is controlled through JSON lines on standard input and reports
//! through JSON lines on standard output (one object per line; logs go to standard error):
//!
//! ```text
//! {"cmd":"host","region":1,"objects":2000,"npcs":200,"plants":200,"churn":0,"seed":1}
//! {"cmd":"host","region":1,"checkpoint":true}        restore region 1 from its newest checkpoint
//! {"cmd":"prepare","region":1}                       pre-warm an empty slot to receive region 1
//! {"cmd":"handoff","region":1,"to":"127.0.0.1:4433"} move region 1 to the host listening there
//! {"cmd":"stop","region":1}                          save region 1 to the checkpoint store and let it go
//! {"cmd":"join","region":1,"players":[{"id":7,"x":0.0,"z":0.0}]}
//! {"cmd":"inputs","region":1,"inputs":[[7,1],[7,2]]} (player, seq): `scripted_input(player, seq)`
//! {"cmd":"report","region":1}
//! {"cmd":"quit"}
//! ```
//!
//! Events: `listening`, `owning`, `prepared`, `frozen`, `authoritative`, `first_tick`,
//! `handed_off`, `aborted`, `retired`, `input_refused`, `report`, `checkpointed`,
//! `checkpoint_failed`, `restored`, `stopped`, `stop_refused`, `load` (once a second per owned
//! region), `error`.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use baton_net::{ClusterIdentity, LinkSettings};
use baton_runtime::{Host, HostConfig, HostEvent};
use baton_sdk::RegionConfig;
use baton_sdk::handoff::{FileAuthority, SourceConfig};
use baton_sdk::sessions::PlayerSession;
use baton_sdk::wire::{PlayerId, RegionId};
use serde::Deserialize;
use serde_json::json;

use crate::{Avatar, SampleLogic, WorldSpec, join_avatar, new_region_in, populate, scripted_input};

/// The ownership authority a serving process uses.
#[derive(Clone, Debug)]
pub enum AuthoritySource {
    /// A folder of the file-backed authority shared by processes on one host.
    Directory(PathBuf),
    /// The coordinator at this address.
    Coordinator(SocketAddr),
}

/// Settings of a serving process.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// This instance's name (its certificate is `<certs>/<name>.pem`).
    pub name: String,
    /// The name of its cluster certificate (`<certs>/<cert_name>.pem`; processes of one host share
    /// the host's).
    pub cert_name: String,
    /// Where to accept handoff links.
    pub listen: SocketAddr,
    /// Folder with `ca.pem`, `<name>.pem`, `<name>.key`.
    pub certs: PathBuf,
    /// Where ownership is decided.
    pub authority: AuthoritySource,
    /// Region settings.
    pub config: RegionConfig,
    /// One in this many churn entities changes per tick (0: none).
    pub churn_period: u64,
    /// Bulk bytes per second for handoffs.
    pub bulk_bytes_per_second: u64,
    /// Handoff settings.
    pub source: SourceConfig,
    /// Fault injection for tests: hold the commit this long after the digest check.
    pub test_commit_delay: Option<std::time::Duration>,
    /// How the cluster's regions tile the world (border crossings need it).
    pub layout: Option<crate::Layout>,
    /// What players get through gateways.
    pub players: baton_runtime::PlayerSettings,
    /// Periodic checkpoints, and where `host` with `"checkpoint": true` restores from.
    pub checkpoints: Option<baton_runtime::CheckpointSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
enum ServeCommand {
    Host {
        region: u64,
        #[serde(default)]
        objects: usize,
        #[serde(default)]
        npcs: usize,
        #[serde(default)]
        plants: usize,
        #[serde(default)]
        churn: usize,
        #[serde(default = "one")]
        seed: u64,
        /// Restore the region from its newest checkpoint instead of populating it.
        #[serde(default)]
        checkpoint: bool,
    },
    Prepare {
        region: u64,
    },
    Handoff {
        region: u64,
        to: SocketAddr,
    },
    Stop {
        region: u64,
    },
    Join {
        region: u64,
        players: Vec<JoinSpec>,
    },
    Inputs {
        region: u64,
        inputs: Vec<(u64, u64)>,
    },
    Report {
        region: u64,
    },
    Quit,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinSpec {
    id: u64,
    x: f32,
    z: f32,
}

/// Runs until `quit` or end of input.
pub fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let identity = ClusterIdentity::load(&options.certs, &options.cert_name)
        .with_context(|| format!("loading certificates for {}", options.cert_name))?;
    let authority: Arc<dyn baton_sdk::handoff::OwnershipAuthority> = match &options.authority {
        AuthoritySource::Directory(folder) => Arc::new(
            FileAuthority::open(folder).with_context(|| format!("opening the authority in {}", folder.display()))?,
        ),
        AuthoritySource::Coordinator(address) => Arc::new(
            baton_runtime::remote_authority::RemoteAuthority::new(*address, &identity, runtime.handle().clone())
                .context("setting up the coordinator connection")?,
        ),
    };
    let config = options.config;
    let churn_period = options.churn_period;
    let layout = options.layout;
    let factory: baton_runtime::RegionFactory<SampleLogic> =
        Arc::new(move |region| new_region_in(region, config, churn_period, layout));
    let host_config = HostConfig {
        name: options.name.clone(),
        bind: options.listen,
        identity,
        authority,
        bulk_bytes_per_second: options.bulk_bytes_per_second,
        bulk_burst_bytes: 256 * 1024,
        source: options.source,
        link: LinkSettings::default(),
        test_commit_delay: options.test_commit_delay,
        players: options.players,
        checkpoints: options.checkpoints.clone(),
    };
    let (host, mut events) =
        Host::start(host_config, factory.clone(), runtime.handle().clone()).context("starting the host")?;
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    emit(&out, json!({"event": "listening", "name": options.name, "addr": host.local_address().to_string()}));

    let event_out = out.clone();
    runtime.spawn(async move {
        while let Some(event) = events.recv().await {
            emit(&event_out, event_json(&event));
        }
    });

    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.context("reading standard input")?;
        if line.trim().is_empty() {
            continue;
        }
        let command: ServeCommand = match serde_json::from_str(&line) {
            Ok(command) => command,
            Err(error) => {
                emit(&out, json!({"event": "error", "error": format!("bad command: {error}")}));
                continue;
            }
        };
        if let Err(error) = execute(&host, &factory, options.checkpoints.as_ref(), command, &out) {
            if error.to_string() == "quit" {
                break;
            }
            emit(&out, json!({"event": "error", "error": format!("{error:#}")}));
        }
    }
    host.shutdown();
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

fn execute(
    host: &Host<SampleLogic>,
    factory: &baton_runtime::RegionFactory<SampleLogic>,
    checkpoints: Option<&baton_runtime::CheckpointSettings>,
    command: ServeCommand,
    out: &Arc<std::sync::Mutex<std::io::Stdout>>,
) -> anyhow::Result<()> {
    match command {
        ServeCommand::Host { region, checkpoint: true, .. } => {
            let store = &checkpoints.context("this server has no checkpoint store (--checkpoint-dir)")?.store;
            let stored = store
                .latest(RegionId(region))
                .with_context(|| format!("reading the checkpoint store {}", store.directory().display()))?
                .with_context(|| format!("no checkpoint of region {region} in {}", store.directory().display()))?;
            let bytes = std::fs::read(&stored.path).with_context(|| format!("reading {}", stored.path.display()))?;
            let mut built = factory(RegionId(region)).context("creating the region")?;
            let info = baton_sdk::checkpoint::restore(&mut built, &bytes)
                .with_context(|| format!("restoring {}", stored.path.display()))?;
            let epoch = host.restore_region(built).map_err(anyhow::Error::msg)?;
            emit(
                out,
                json!({"event": "restored", "region": region, "tick": info.tick, "from_epoch": info.epoch.0,
                       "epoch": epoch.0, "path": stored.path.display().to_string()}),
            );
        }
        ServeCommand::Host { region, objects, npcs, plants, churn, seed, checkpoint: false } => {
            let mut built = factory(RegionId(region)).context("creating the region")?;
            populate(&mut built, WorldSpec { objects, npcs, plants, seed, churn })?;
            host.host_region(built).map_err(anyhow::Error::msg)?;
        }
        ServeCommand::Prepare { region } => host.prepare(RegionId(region)).map_err(anyhow::Error::msg)?,
        ServeCommand::Handoff { region, to } => host.start_handoff(RegionId(region), to).map_err(anyhow::Error::msg)?,
        ServeCommand::Stop { region } => host.stop_region(RegionId(region)).map_err(anyhow::Error::msg)?,
        ServeCommand::Join { region, players } => {
            let out = out.clone();
            host.query(
                RegionId(region),
                Box::new(move |built| {
                    for player in players {
                        if let Err(error) = join_avatar(built, PlayerId(player.id), [player.x, player.z]) {
                            emit(&out, json!({"event": "error", "error": format!("join {}: {error:#}", player.id)}));
                        }
                    }
                }),
            )
            .map_err(anyhow::Error::msg)?;
        }
        ServeCommand::Inputs { region, inputs } => {
            for (player, seq) in inputs {
                host.submit_input(RegionId(region), scripted_input(player, seq));
            }
        }
        ServeCommand::Report { region } => {
            let out = out.clone();
            host.query(
                RegionId(region),
                Box::new(move |built| {
                    let tick = built.world().tick();
                    let late_ticks = built.late_ticks();
                    let digest = built.world_mut().digest().to_string();
                    let world = built.world();
                    let players: Vec<serde_json::Value> = world
                        .iter::<PlayerSession>()
                        .map(|(entity, session)| {
                            let avatar = world.get::<Avatar>(entity);
                            json!({
                                "id": session.player,
                                "last_applied": session.last_applied,
                                "pending": session.pending.len(),
                                "applied": avatar.map_or(0, |avatar| avatar.inputs_applied),
                                "chain": avatar.map_or(0, |avatar| avatar.input_chain),
                            })
                        })
                        .collect();
                    emit(&out, json!({"event": "report", "region": region, "tick": tick, "late_ticks": late_ticks, "digest": digest, "entities": world.entity_count(), "players": players}));
                }),
            )
            .map_err(anyhow::Error::msg)?;
        }
        ServeCommand::Quit => anyhow::bail!("quit"),
    }
    Ok(())
}

fn emit(out: &Arc<std::sync::Mutex<std::io::Stdout>>, value: serde_json::Value) {
    if let Ok(mut out) = out.lock() {
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    }
}

fn event_json(event: &HostEvent) -> serde_json::Value {
    match event {
        HostEvent::Owning { region, epoch } => json!({"event": "owning", "region": region.0, "epoch": epoch.0}),
        HostEvent::Prepared { region } => json!({"event": "prepared", "region": region.0}),
        HostEvent::Phase { region, phase } => json!({"event": "phase", "region": region.0, "phase": phase}),
        HostEvent::Frozen { region, tick, last_tick_at_us } => {
            json!({"event": "frozen", "region": region.0, "tick": tick, "last_tick_at_us": last_tick_at_us})
        }
        HostEvent::Authoritative { region, epoch } => {
            json!({"event": "authoritative", "region": region.0, "epoch": epoch.0})
        }
        HostEvent::FirstTick { region, tick, at_us } => {
            json!({"event": "first_tick", "region": region.0, "tick": tick, "at_us": at_us})
        }
        HostEvent::HandedOff { region, epoch, stats } => json!({
            "event": "handed_off",
            "region": region.0,
            "epoch": epoch.0,
            "freeze_us": stats.freeze.map(|freeze| freeze.as_micros() as u64),
            "total_us": stats.total.map(|total| total.as_micros() as u64),
            "rounds": stats.rounds,
            "snapshot_bytes": stats.snapshot_bytes,
            "delta_bytes": stats.delta_bytes,
            "final_bytes": stats.final_bytes,
        }),
        HostEvent::Aborted { region, reason, owning } => {
            json!({"event": "aborted", "region": region.0, "reason": reason, "owning": owning})
        }
        HostEvent::Retired { region } => json!({"event": "retired", "region": region.0}),
        HostEvent::Checkpointed { region, tick, epoch, bytes, path } => json!({
            "event": "checkpointed",
            "region": region.0,
            "tick": tick,
            "epoch": epoch.0,
            "bytes": bytes,
            "path": path.display().to_string(),
        }),
        HostEvent::Load { region, tick_ms_mean, tick_ms_max, players, entities } => json!({
            "event": "load",
            "region": region.0,
            "tick_ms": tick_ms_mean,
            "tick_ms_max": tick_ms_max,
            "players": players,
            "entities": entities,
        }),
        HostEvent::Stopped { region, epoch, tick, bytes, path, inputs_discarded } => json!({
            "event": "stopped",
            "region": region.0,
            "epoch": epoch.0,
            "tick": tick,
            "bytes": bytes,
            "path": path.display().to_string(),
            "inputs_discarded": inputs_discarded,
        }),
        HostEvent::StopRefused { region, reason } => {
            json!({"event": "stop_refused", "region": region.0, "reason": reason})
        }
        HostEvent::CheckpointFailed { region, error } => {
            json!({"event": "checkpoint_failed", "region": region.0, "error": error})
        }
        HostEvent::InputRefused { region, input } => {
            json!({"event": "input_refused", "region": region.0, "player": input.player.0, "seq": input.seq})
        }
    }
}
