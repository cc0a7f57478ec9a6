//! `quic-floor`: what QUIC itself costs on this machine (`baton_harness::quic_floor` says how it
//! is measured): many connections driven by `quinn-proto` from a plain loop per thread, carrying
//! a gateway's traffic (an update per player per tick, inputs at each player's phase). Run it from
//! a release build: `cargo build --release --bins && target/release/quic-floor --connections 1000`

use std::process::ExitCode;

use baton_harness::quic_floor::{QuicFloorPlan, measure};
use clap::Parser;

/// Measure the CPU cost of a gateway's QUIC traffic over many connections, without an async
/// runtime.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Player connections (50 share a socket).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Updates per second to each player (one per tick).
    #[arg(long, default_value_t = 20)]
    tick_rate: u32,
    /// Inputs per second from each player.
    #[arg(long, default_value_t = 20)]
    input_rate: u32,
    /// Bytes of an update.
    #[arg(long, default_value_t = 350)]
    update_bytes: usize,
    /// Bytes of an input.
    #[arg(long, default_value_t = 384)]
    input_bytes: usize,
    /// Seconds to run once every connection is up.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Send with `sendmmsg`, up to 64 datagrams of a loop's pass per system call (across
    /// connections), instead of one `sendmsg` per datagram.
    #[arg(long)]
    batch_sends: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    baton_config::init_logging();
    let plan = QuicFloorPlan {
        connections: cli.connections,
        tick_hz: cli.tick_rate,
        inputs_per_second: cli.input_rate,
        update_bytes: cli.update_bytes,
        input_bytes: cli.input_bytes,
        seconds: cli.seconds,
        batch_sends: cli.batch_sends,
    };
    match measure(plan).and_then(|floor| Ok(serde_json::to_string_pretty(&floor)?)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("quic-floor: {error:#}");
            ExitCode::FAILURE
        }
    }
}
