//! Baton's harness for process-level tests, the load test and the benches.
//!
//! - [`cluster`]: region-server processes of any game served by `baton_runtime::serve`, driven
//!   through the serve protocol's types (and a coordinator on its console), for the multi-process
//!   tests and `handoff-bench`;
//! - [`fleet`]: a whole deployment on loopback (coordinator, host agents with warm pools, a gateway)
//!   operated through the admin API, as an operator would;
//! - [`players`]: simulated players through the client library, their live statistics, and direct
//!   probes for the latency baseline;
//! - [`headless`]: one sample region in this process with simulated players (the `headless`
//!   binary, and in-process tests);
//! - [`udp_floor`]: what plain UDP costs on the machine, the floor under `gateway-bench`;
//! - [`quic_floor`]: what QUIC itself costs, `quinn-proto` driven from a plain loop.
//!
//! Binaries are found next to the running executable (`target/<profile>/`), or where the
//! `BATON_<NAME>` variables say. The harness never reaches into a process: it reads what the
//! processes print and what players receive.
//!
//! It plays the sample game (`sample-region-server`); a game of its own is one `--serve` command
//! away (`Cluster::start_with` takes the binary).

pub mod cluster;
pub mod fleet;
pub mod headless;
pub mod players;
pub mod quic_floor;
pub mod udp_floor;

/// Polls `probe` every 20 ms until it gives a value; panics, saying `what` and the last thing
/// `probe` saw, after `within`. Tests wait for what they need to have happened with this, never
/// with a sleep of a guessed length.
pub fn wait_until<T>(within: std::time::Duration, what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(seen) => {
                assert!(std::time::Instant::now() < deadline, "{what} did not happen in {within:?}: {seen}");
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
