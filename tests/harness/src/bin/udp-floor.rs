//! `udp-floor`: what plain UDP costs on this machine, without QUIC, crypto or Baton.
//!
//! The floor under `gateway-bench` (`baton_harness::udp_floor`, which says how it is measured),
//! alone. Prints the CPU the whole process used per second and per datagram moved (each datagram
//! counted once, sent and received). Run it from a release build:
//! `cargo build --release --bins && target/release/udp-floor --rate 100000`

use std::process::ExitCode;

use baton_harness::udp_floor::{FloorPlan, measure};
use clap::Parser;

/// Measure the CPU cost of plain UDP datagrams on loopback.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Datagrams per second the clients send (the echo doubles what the machine moves).
    #[arg(long, default_value_t = 50_000)]
    rate: u64,
    /// Bytes per datagram.
    #[arg(long, default_value_t = 400)]
    bytes: usize,
    /// Client sockets (each with a thread reading its echoes).
    #[arg(long, default_value_t = 4)]
    sockets: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let plan = FloorPlan { rate: cli.rate, bytes: cli.bytes, sockets: cli.sockets, seconds: cli.seconds };
    match measure(plan).and_then(|floor| Ok(serde_json::to_string_pretty(&floor)?)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("udp-floor: {error:#}");
            ExitCode::FAILURE
        }
    }
}
