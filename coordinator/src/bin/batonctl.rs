//! `batonctl`: the command line of the coordinator's admin API.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

/// Operate a Baton cluster through its coordinator's admin API.
///
/// The token comes from --token-file or the BATON_API_TOKEN environment variable. Output is a
/// readable table; --json prints the API's JSON instead.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// The admin API's base URL.
    #[arg(long, default_value = "http://127.0.0.1:7480", env = "BATON_API")]
    api: String,
    /// File holding the bearer token.
    #[arg(long, value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List hosts and their processes.
    Hosts,
    /// List regions with their owner, epoch and host.
    Regions,
    /// Create a region on a host.
    Create {
        /// The region id.
        #[arg(long)]
        region: u64,
        /// The host.
        #[arg(long)]
        host: String,
        /// The initial world as JSON (for the sample: {"objects":2000,"npcs":200,"plants":200,"seed":1}).
        #[arg(long, default_value = "{}", conflicts_with = "from_checkpoint")]
        world: String,
        /// Restore the region from its newest checkpoint instead (after a full restart, or when its
        /// host died; refused while a host serves it).
        #[arg(long)]
        from_checkpoint: bool,
    },
    /// Stop a region the old way: its host saves it to the checkpoint store and stops serving
    /// it, and its players are disconnected. Start it again with `create --from-checkpoint`.
    /// (To move a region while players stay connected, use `migrate`.)
    Stop {
        /// The region.
        region: u64,
    },
    /// Move a region to another host.
    Migrate {
        /// The region.
        #[arg(long)]
        region: u64,
        /// The host to move it to.
        #[arg(long)]
        to: String,
        /// Wait until it commits or aborts, showing its phase.
        #[arg(long)]
        wait: bool,
    },
    /// List migrations (the history with per-phase timings).
    Migrations,
    /// Show one migration.
    Migration {
        /// Its id.
        id: u64,
    },
    /// Cancel a migration that has not started its handoff.
    Cancel {
        /// Its id.
        id: u64,
    },
    /// Drain a host: its regions move elsewhere and it takes no new ones.
    Drain {
        /// The host.
        host: String,
    },
    /// The automatic balancer: its state, its plan, its mode.
    Balancer {
        #[command(subcommand)]
        command: BalancerCommand,
    },
    /// Make (or reuse) a development cluster CA in DIR and issue certificates for each --node (the
    /// coordinator, each host, each gateway). Needs no running coordinator. For production, issue
    /// them from your own CA: DIR holds ca.pem and <node>.pem/<node>.key.
    Certs {
        /// The folder (created if missing; an existing CA in it is reused).
        dir: std::path::PathBuf,
        /// A node to issue a certificate for (repeat it).
        #[arg(long = "node", value_name = "NAME", required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum BalancerCommand {
    /// Its mode, settings, hosts in use and free, and its latest decisions.
    Status {
        /// Decisions to show, newest last.
        #[arg(long, default_value_t = 20)]
        last: usize,
    },
    /// What it would do now and why (whatever its mode; changes nothing).
    Plan,
    /// Set its mode: off, dry-run (records what it would do) or on.
    Mode {
        /// off, dry-run or on.
        #[arg(value_parser = ["off", "dry-run", "on"])]
        mode: String,
    },
}

/// Makes the development CA and the nodes' certificates (`batonctl certs`).
fn issue_certificates(directory: &std::path::Path, nodes: &[String]) -> anyhow::Result<()> {
    let ca = baton_net::DevCa::open_or_create(directory)
        .with_context(|| format!("creating the CA in {}", directory.display()))?;
    for node in nodes {
        ca.issue(node).with_context(|| format!("issuing a certificate for {node}"))?;
    }
    eprintln!("certificates for {} written to {}", nodes.join(", "), directory.display());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("batonctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

struct Api {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Api {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base.trim_end_matches('/'));
        let authorization = format!("Bearer {}", self.token);
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &authorization).call(),
            ("PUT", Some(body)) => self.agent.put(&url).header("Authorization", &authorization).send_json(body),
            (_, Some(body)) => self.agent.post(&url).header("Authorization", &authorization).send_json(body),
            (_, None) => self.agent.post(&url).header("Authorization", &authorization).send_empty(),
        };
        let mut response = response.with_context(|| format!("calling {url}"))?;
        let status = response.status();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            anyhow::bail!("{} {}: {}", status.as_u16(), path, value["error"].as_str().unwrap_or(&text));
        }
        Ok(value)
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect::<Vec<_>>().join("  ")
    };
    println!("{}", line(headers.iter().map(|header| (*header).to_owned()).collect()));
    for row in rows {
        println!("{}", line(row));
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn migration_rows(migrations: &[Value]) -> Vec<Vec<String>> {
    migrations
        .iter()
        .map(|record| {
            let timings: Vec<String> = record["phases"]
                .as_array()
                .map(|phases| {
                    phases
                        .iter()
                        .map(|timing| {
                            format!("{}={:.0}ms", text(&timing["phase"]), timing["ms"].as_f64().unwrap_or(0.0))
                        })
                        .collect()
                })
                .unwrap_or_default();
            vec![
                text(&record["id"]),
                text(&record["region"]),
                text(&record["kind"]),
                format!("{}/{}", text(&record["from_host"]), text(&record["from_process"])),
                format!("{}/{}", text(&record["to_host"]), text(&record["to_process"])),
                text(&record["phase"]),
                record["freeze_ms"].as_f64().map_or("-".into(), |ms| format!("{ms:.1}")),
                timings.join(" "),
                text(&record["reason"]),
            ]
        })
        .collect()
}

fn step_row(step: &Value) -> Vec<String> {
    match step["step"].as_str() {
        Some("move") => vec![
            text(&step["kind"]),
            text(&step["region"]),
            text(&step["from"]),
            text(&step["to"]),
            format!(
                "{:.0}%->{:.0}%",
                step["from_before"].as_f64().unwrap_or(0.0) * 100.0,
                step["from_after"].as_f64().unwrap_or(0.0) * 100.0
            ),
            format!(
                "{:.0}%->{:.0}%",
                step["to_before"].as_f64().unwrap_or(0.0) * 100.0,
                step["to_after"].as_f64().unwrap_or(0.0) * 100.0
            ),
            text(&step["reason"]),
        ],
        kind => vec![
            kind.unwrap_or("?").to_owned(),
            "-".into(),
            text(&step["host"]),
            "-".into(),
            "-".into(),
            "-".into(),
            text(&step["reason"]),
        ],
    }
}

const STEP_HEADERS: [&str; 7] = ["STEP", "REGION", "FROM/HOST", "TO", "FROM LOAD", "TO LOAD", "REASON"];

fn print_balancer(status: &Value, last: usize) {
    println!("mode: {}", text(&status["mode"]));
    println!("hosts in use: {}", text(&status["hosts_in_use"]));
    println!("free hosts: {}", text(&status["free_hosts"]));
    println!("emptying: {}", text(&status["emptying"]));
    let settings = &status["settings"];
    println!(
        "levels: fill {} < wake {} < high {}; cool-down {} s; at most {} moves at once; at least {} host(s)",
        text(&settings["fill"]),
        text(&settings["wake"]),
        text(&settings["high"]),
        text(&settings["cooldown_s"]),
        text(&settings["max_moves"]),
        text(&settings["min_hosts"]),
    );
    if last == 0 {
        return;
    }
    let decisions = status["decisions"].as_array().cloned().unwrap_or_default();
    let shown = &decisions[decisions.len().saturating_sub(last)..];
    let rows = shown
        .iter()
        .map(|decision| {
            let mut row = vec![text(&decision["at_unix_ms"]), text(&decision["outcome"])];
            row.extend(step_row(&decision["step"]));
            row
        })
        .collect();
    let mut headers = vec!["AT (UNIX MS)", "OUTCOME"];
    headers.extend(STEP_HEADERS);
    table(&headers, rows);
}

fn print_plan(plan: &Value) {
    let hosts = plan["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|host| {
            vec![
                text(&host["host"]),
                format!("{:.0}%", host["cpu"].as_f64().unwrap_or(0.0) * 100.0),
                format!("{:.0}%", host["memory"].as_f64().unwrap_or(0.0) * 100.0),
                if host["free"] == true {
                    "free".into()
                } else if host["in_use"] == true {
                    "in use".into()
                } else {
                    "unavailable".into()
                },
            ]
        })
        .collect();
    table(&["HOST", "CPU", "MEMORY", "STATE"], hosts);
    println!();
    let steps: Vec<Vec<String>> = plan["steps"].as_array().into_iter().flatten().map(step_row).collect();
    if steps.is_empty() {
        println!("nothing to do");
    } else {
        table(&STEP_HEADERS, steps);
    }
    for note in plan["notes"].as_array().into_iter().flatten() {
        println!("note: {}", text(note));
    }
}

const MIGRATION_HEADERS: [&str; 9] = ["ID", "REGION", "KIND", "FROM", "TO", "PHASE", "FREEZE MS", "PHASES", "REASON"];

fn run(cli: &Cli) -> anyhow::Result<()> {
    if let Command::Certs { dir, nodes } = &cli.command {
        return issue_certificates(dir, nodes);
    }
    let token = match &cli.token_file {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        None => std::env::var("BATON_API_TOKEN").context("give --token-file FILE or set BATON_API_TOKEN")?,
    };
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(150)))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let api = Api { base: cli.api.clone(), token: token.trim().to_owned(), agent };
    let output = match &cli.command {
        Command::Hosts => api.call("GET", "/v1/hosts", None)?,
        Command::Regions => api.call("GET", "/v1/regions", None)?,
        Command::Create { region, host, world, from_checkpoint } => {
            let world: Value = serde_json::from_str(world).context("--world must be a JSON object")?;
            let body = if *from_checkpoint {
                json!({"region": region, "host": host, "from_checkpoint": true})
            } else {
                json!({"region": region, "host": host, "world": world})
            };
            api.call("POST", "/v1/regions", Some(body))?
        }
        Command::Migrate { region, to, wait } => {
            let mut record = api.call("POST", "/v1/migrations", Some(json!({"region": region, "to_host": to})))?;
            if *wait {
                let id = record["id"].as_u64().unwrap_or(0);
                let deadline = Instant::now() + Duration::from_secs(300);
                let mut shown = String::new();
                while !matches!(record["phase"].as_str(), Some("committed" | "aborted")) && Instant::now() < deadline {
                    let phase = text(&record["phase"]);
                    if phase != shown && !cli.json {
                        eprintln!("migration {id}: {phase}");
                        shown = phase;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                    record = api.call("GET", &format!("/v1/migrations/{id}"), None)?;
                }
            }
            record
        }
        Command::Stop { region } => api.call("POST", &format!("/v1/regions/{region}/stop"), None)?,
        Command::Migrations => api.call("GET", "/v1/migrations", None)?,
        Command::Migration { id } => api.call("GET", &format!("/v1/migrations/{id}"), None)?,
        Command::Cancel { id } => api.call("POST", &format!("/v1/migrations/{id}/cancel"), None)?,
        Command::Drain { host } => api.call("POST", &format!("/v1/hosts/{host}/drain"), None)?,
        Command::Balancer { command: BalancerCommand::Status { .. } } => api.call("GET", "/v1/balancer", None)?,
        Command::Balancer { command: BalancerCommand::Plan } => api.call("GET", "/v1/balancer/plan", None)?,
        Command::Balancer { command: BalancerCommand::Mode { mode } } => {
            api.call("PUT", "/v1/balancer", Some(json!({ "mode": mode })))?
        }
        Command::Certs { .. } => return Ok(()),
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&output)?);
        return Ok(());
    }
    match &cli.command {
        Command::Hosts => {
            let mut rows = Vec::new();
            for host in output.as_array().into_iter().flatten() {
                let use_state = if host["free"] == true {
                    "free"
                } else if host["draining"] == true {
                    "draining"
                } else {
                    "in use"
                };
                let cpu = format!(
                    "{:.2}/{}",
                    host["cpu_cores"].as_f64().unwrap_or(0.0),
                    host["capacity_cores"].as_f64().unwrap_or(0.0)
                );
                if host["processes"].as_array().is_none_or(Vec::is_empty) {
                    rows.push(vec![
                        text(&host["name"]),
                        if host["connected"] == true { "up".into() } else { "down".into() },
                        use_state.into(),
                        cpu.clone(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                    ]);
                }
                for process in host["processes"].as_array().into_iter().flatten() {
                    rows.push(vec![
                        text(&host["name"]),
                        if host["connected"] == true { "up".into() } else { "down".into() },
                        use_state.into(),
                        cpu.clone(),
                        text(&process["name"]),
                        text(&process["address"]),
                        if process["warm"] == true { "warm".into() } else { "serving".into() },
                        text(&process["regions"]),
                        text(&process["restarts"]),
                        process["heap_bytes"].as_f64().map_or("-".into(), |bytes| format!("{:.1} MB", bytes / 1e6)),
                    ]);
                }
            }
            table(
                &["HOST", "AGENT", "USE", "CPU/CORES", "PROCESS", "ADDRESS", "STATE", "REGIONS", "RESTARTS", "HEAP"],
                rows,
            );
        }
        Command::Regions | Command::Create { .. } => {
            let regions = if output.is_array() { output.as_array().cloned().unwrap_or_default() } else { vec![output] };
            let rows = regions
                .iter()
                .map(|region| {
                    vec![
                        text(&region["region"]),
                        text(&region["owner"]),
                        text(&region["epoch"]),
                        text(&region["host"]),
                        text(&region["address"]),
                        region["tick_ms"].as_f64().map_or("-".into(), |ms| format!("{ms:.2}")),
                        text(&region["players"]),
                    ]
                })
                .collect();
            table(&["REGION", "OWNER", "EPOCH", "HOST", "ADDRESS", "TICK MS", "PLAYERS"], rows);
        }
        Command::Migrate { .. } | Command::Migration { .. } => table(&MIGRATION_HEADERS, migration_rows(&[output])),
        Command::Migrations => {
            table(&MIGRATION_HEADERS, migration_rows(output.as_array().map(Vec::as_slice).unwrap_or_default()))
        }
        Command::Cancel { id } => println!("migration {id}: cancel requested"),
        Command::Stop { region } => println!(
            "region {region} stopped on {} at tick {}; saved to {} ({} bytes); restore it with: batonctl create --region {region} --host HOST --from-checkpoint",
            text(&output["host"]),
            text(&output["tick"]),
            text(&output["checkpoint"]),
            text(&output["bytes"]),
        ),
        Command::Drain { host } => println!("draining {host}: regions {} will move", text(&output["regions"])),
        Command::Balancer { command: BalancerCommand::Status { last } } => print_balancer(&output, *last),
        Command::Balancer { command: BalancerCommand::Mode { .. } } => print_balancer(&output, 0),
        Command::Balancer { command: BalancerCommand::Plan } => print_plan(&output),
        Command::Certs { .. } => {}
    }
    Ok(())
}
