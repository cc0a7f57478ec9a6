//! The coordinator's console: JSON lines on standard input and output with `--control` (tests and
//! tools use it; operators use the admin API).
//!
//! Typed on both ends, so a harness that reads the coordinator's output parses these types instead
//! of matching names by string.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A console command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum ConsoleCommand {
    /// Print the directory (`regions`).
    Regions,
    /// Stop the coordinator.
    Quit,
}

/// One region of the directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryEntry {
    /// The region.
    pub region: u64,
    /// Its owner.
    pub owner: String,
    /// The owner's epoch.
    pub epoch: u64,
}

/// What the coordinator prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ConsoleEvent {
    /// The first line: where the cluster endpoint and the admin API listen.
    Listening {
        /// The coordinator's name.
        name: String,
        /// The cluster endpoint (agents, region servers, gateways).
        addr: SocketAddr,
        /// The admin HTTP API.
        api: SocketAddr,
        /// Regions in the directory at start.
        regions: usize,
    },
    /// The answer to [`ConsoleCommand::Regions`].
    Regions {
        /// Every region of the directory.
        regions: Vec<DirectoryEntry>,
    },
    /// A line was not a command, or the command failed.
    Error {
        /// Why.
        error: String,
    },
}
