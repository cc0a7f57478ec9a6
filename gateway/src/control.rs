//! The gateway's control lines (`--control`): commands read from standard input and events
//! printed on standard output, one JSON object a line. The harness and the load test read and
//! write these types, so both ends agree on the fields.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::service::GatewayStats;

/// A command on standard input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum GatewayCommand {
    /// Open an upstream connection to the region server at `addr`.
    Server {
        /// The server's address.
        addr: SocketAddr,
    },
    /// Route `region` to `owner` at ownership epoch `epoch`.
    Assign {
        /// The region.
        region: u64,
        /// The owner's address.
        owner: SocketAddr,
        /// The owner's epoch.
        epoch: u64,
    },
    /// Print the counters as a `stats` event.
    Stats,
    /// Stop.
    Quit,
}

/// An event on standard output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum GatewayEvent {
    /// Serving players; printed once, first.
    Listening {
        /// The gateway's name.
        name: String,
        /// Where players connect.
        addr: SocketAddr,
        /// Where metrics are served, if they are.
        metrics: Option<SocketAddr>,
    },
    /// The counters, in answer to [`GatewayCommand::Stats`].
    Stats {
        /// The counters.
        stats: GatewayStats,
    },
    /// A command was malformed or failed.
    Error {
        /// What went wrong.
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_their_documented_shape() {
        let command: GatewayCommand =
            serde_json::from_str(r#"{"cmd":"assign","region":3,"owner":"127.0.0.1:4000","epoch":2}"#).unwrap();
        assert_eq!(command, GatewayCommand::Assign { region: 3, owner: "127.0.0.1:4000".parse().unwrap(), epoch: 2 });
        assert_eq!(serde_json::from_str::<GatewayCommand>(r#"{"cmd":"stats"}"#).unwrap(), GatewayCommand::Stats);
        let extra = r#"{"cmd":"server","addr":"127.0.0.1:4000","port":1}"#;
        assert!(serde_json::from_str::<GatewayCommand>(extra).is_err(), "unknown fields");
        assert!(serde_json::from_str::<GatewayCommand>(r#"{"cmd":"reboot"}"#).is_err());
        let listening = GatewayEvent::Listening {
            name: "g0".into(),
            addr: "127.0.0.1:5000".parse().unwrap(),
            metrics: Some("127.0.0.1:9102".parse().unwrap()),
        };
        let line = serde_json::to_string(&listening).unwrap();
        assert_eq!(line, r#"{"event":"listening","name":"g0","addr":"127.0.0.1:5000","metrics":"127.0.0.1:9102"}"#);
        assert_eq!(serde_json::from_str::<GatewayEvent>(&line).unwrap(), listening);
        let stats = GatewayEvent::Stats { stats: GatewayStats { crossings: 4, ..GatewayStats::default() } };
        let line = serde_json::to_string(&stats).unwrap();
        assert!(line.starts_with(r#"{"event":"stats","stats":{"#) && line.contains(r#""crossings":4"#), "{line}");
        assert_eq!(serde_json::from_str::<GatewayEvent>(&line).unwrap(), stats);
    }
}
