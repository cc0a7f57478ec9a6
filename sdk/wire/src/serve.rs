//! The serve protocol (version 4): what a region-server process is told and what it reports.
//!
//! A region-server process (`baton_runtime::serve`) reads [`ServerCommand`]s as JSON lines on its
//! standard input and prints [`ServerEvent`]s as JSON lines on its standard output, one object per
//! line (logs go to standard error). Its host agent speaks it on the process's behalf, and relays
//! the events to the coordinator inside the control protocol ([`crate::control`]) as the same
//! types, so every party reads and writes these enums and nobody matches an event's name or a
//! field by string. protocol.md §11 lists the commands and events.
//!
//! Consistency: the events of one process are in the order it printed them. A command's outcome is
//! an event naming the same region (`owning` for `host`, `prepared` for `prepare`, `handed_off` or
//! `aborted` for `handoff`, `stopped` or `stop_refused` for `stop`), or an `error` naming the
//! region when the command was refused outright.
//!
//! What it deliberately does not carry: player traffic (gateways speak `upstream` to the same
//! process), world state (handoff links), or anything game-specific except the opaque `world`
//! object a game reads when it creates a region, the `spawn` of a joining player and the `game`
//! part of a player's report.

use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Epoch, PlayerId, RegionId};

/// Version of the serve protocol; a process says it in its `listening` event.
pub const SERVE_VERSION: u16 = 4;

/// A JSON object a game defines (a region's initial world, a player's spawn point, a report's
/// game-specific part). Baton passes it through without reading it.
pub type GameObject = serde_json::Map<String, serde_json::Value>;

/// A game's own value (a world request, a spawn point, a report) as a [`GameObject`]; a value that
/// is not a JSON object (or cannot be written) gives an empty one.
#[must_use]
pub fn to_game_object<T: Serialize>(value: &T) -> GameObject {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(object)) => object,
        _ => GameObject::new(),
    }
}

/// Reads a game's own value from a [`GameObject`] (the game refuses keys it does not know with
/// `#[serde(deny_unknown_fields)]`).
pub fn from_game_object<T: DeserializeOwned>(object: &GameObject) -> Result<T, serde_json::Error> {
    serde_json::from_value(serde_json::Value::Object(object.clone()))
}

/// A command to a region-server process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerCommand {
    /// Create `region` here and own it: afresh from `world`, or restored from the newest checkpoint
    /// in the process's checkpoint store. Answered by `owning` (afresh), `restored` and `owning`
    /// (checkpoint; in that order with `take_over`), or `error`.
    Host {
        /// The region.
        region: RegionId,
        /// The game's initial world (game-defined keys; empty: the game's default).
        #[serde(default)]
        world: GameObject,
        /// Restore from the newest checkpoint instead of creating the world.
        #[serde(default)]
        from_checkpoint: bool,
        /// With `from_checkpoint`: take the region over only from this epoch (the one of an owner
        /// declared lost), so a restore never replaces an owner that moved on meanwhile.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        take_over: Option<Epoch>,
    },
    /// Pre-warm an empty slot to receive `region` in a handoff. Answered by `prepared`.
    Prepare {
        /// The region.
        region: RegionId,
    },
    /// Hand `region` off to the prepared process listening at `to`. Answered by `handed_off` or
    /// `aborted`.
    Handoff {
        /// The region.
        region: RegionId,
        /// The target's cluster address.
        to: SocketAddr,
    },
    /// Feed a hot standby of `region` (owned here) to the prepared process listening at `to`:
    /// the snapshot, then a round after every tick. Answered by `standby_holding` from the
    /// standby, or `feed_ended` when the feed stops.
    FeedStandby {
        /// The region.
        region: RegionId,
        /// The standby's cluster address.
        to: SocketAddr,
    },
    /// Promote this process's standby of `region`: the owner at `epoch` is lost. Answered by
    /// `promoted` and `owning`, or `promote_refused`.
    Promote {
        /// The region.
        region: RegionId,
        /// The lost owner's epoch.
        epoch: Epoch,
    },
    /// Save `region` to the checkpoint store and stop serving it (the old way of moving a region;
    /// its players are disconnected). Answered by `stopped` or `stop_refused`.
    Stop {
        /// The region.
        region: RegionId,
    },
    /// Add players without a gateway (tests and tools): the game places each at its `spawn`.
    Join {
        /// The region.
        region: RegionId,
        /// The players.
        players: Vec<JoinRequest>,
    },
    /// Feed the game's scripted inputs `(player, sequence)` without a gateway (tests and tools).
    /// An input the region cannot take is reported as `input_refused`.
    Inputs {
        /// The region.
        region: RegionId,
        /// The inputs.
        inputs: Vec<(PlayerId, u64)>,
    },
    /// Report the region's tick, digest and players. Answered by `report`.
    Report {
        /// The region.
        region: RegionId,
    },
    /// Stop every region thread and exit.
    Quit,
}

/// A player to add with [`ServerCommand::Join`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The player.
    pub player: PlayerId,
    /// Where to place the avatar (game-defined; the sample reads `x` and `z`).
    #[serde(default)]
    pub spawn: GameObject,
}

/// What a handoff moved and how long its freeze was, as the source measured it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HandoffFigures {
    /// From the source's last authoritative tick to the target's first, in microseconds (when the
    /// source learned it).
    pub freeze_us: Option<u64>,
    /// From the start of the handoff to its commit, in microseconds.
    pub total_us: Option<u64>,
    /// Delta rounds before the freeze.
    pub rounds: u32,
    /// Bytes of the streamed snapshot.
    pub snapshot_bytes: u64,
    /// Bytes of the delta rounds.
    pub delta_bytes: u64,
    /// Bytes of the final delta sent at the freeze.
    pub final_bytes: u64,
    /// The delivery rate the source last measured (a delta round's bytes over the time from
    /// sending it to its being applied), in bytes per second; none when no round was measured.
    #[serde(default)]
    pub delivery_bytes_per_second: Option<u64>,
    /// Bytes of changes per tick in the last round.
    #[serde(default)]
    pub change_bytes_per_tick: Option<u64>,
    /// How long the source waited for a quieter moment before the freeze, in microseconds.
    #[serde(default)]
    pub waited_us: Option<u64>,
    /// How long the freeze waited for the target's engines after a round fitted, in microseconds.
    #[serde(default)]
    pub engines_waited_us: Option<u64>,
    /// The source's ticks before and during the handoff.
    #[serde(default)]
    pub ticks: Box<HandoffTicks>,
}

/// A handoff source's ticks, as its region thread timed them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffTicks {
    /// The last ticks it ran without a handoff, before this one started.
    pub before: TickSamples,
    /// Its ticks from the start of the handoff to the freeze (the last one included).
    pub during: TickSamples,
}

/// Ticks of a region as its thread timed them, one entry per tick in each list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickSamples {
    /// Microseconds the region thread spent on the tick up to putting out its updates: the tick
    /// and its updates. What waits for the updates to go out (a checkpoint, a standby feed's round:
    /// `after_us`; a handoff's work at the tick: `handoff_us`) is not in here; when it delays the
    /// next tick, that tick's `late_us` shows it. (Before 2026-12-07 a checkpoint and a standby's
    /// round were in here: figures from before are not comparable for regions with either.)
    pub busy_us: Vec<u32>,
    /// Microseconds the tick started after it was due.
    pub late_us: Vec<u32>,
    /// During a handoff: microseconds of the handoff's work after the tick (its delta round
    /// collected and encoded, or the freeze's final round), on the region thread before the next
    /// tick. Empty for ticks without a handoff.
    #[serde(default)]
    pub handoff_us: Vec<u32>,
    /// Microseconds of the work that waited for the tick's updates to go out: a checkpoint's
    /// encoding when one was due, a standby feed's round (0 when there was none).
    #[serde(default)]
    pub after_us: Vec<u32>,
}

impl HandoffFigures {
    /// Every byte the handoff sent.
    #[must_use]
    pub fn total_bytes(&self) -> u64 {
        self.snapshot_bytes.saturating_add(self.delta_bytes).saturating_add(self.final_bytes)
    }
}

/// The phase a handoff's source entered ([`ServerEvent::Phase`]); docs/protocol.md §2-§6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandoffPhase {
    /// Waiting for the prepared target's answer.
    Prepare,
    /// Streaming the snapshot while the region ticks.
    Snapshot,
    /// Sending delta rounds.
    Rounds,
    /// Frozen at a tick boundary; the final delta is out.
    Frozen,
    /// Asking the authority how the commit went.
    Settling,
    /// The target owns the region; stragglers are forwarded.
    HandedOff,
    /// The region is freed here.
    Retired,
    /// The handoff failed; the source owns the region.
    Aborted,
}

/// One player in a [`ServerEvent::Report`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlayerReport {
    /// The player.
    pub player: PlayerId,
    /// The highest input sequence applied.
    pub last_applied: u64,
    /// Inputs received and waiting (at a gap, or for the next tick).
    pub pending: u64,
    /// Inputs that arrived again after being applied or queued here, and were dropped.
    #[serde(default)]
    pub duplicates: u64,
    /// Inputs that arrived here ahead of a gap (out of order).
    #[serde(default)]
    pub early: u64,
    /// The game's own figures for this player (the sample: inputs applied and their hash chain).
    #[serde(default)]
    pub game: GameObject,
}

/// What a region-server process reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ServerEvent {
    /// The first line: the process is ready and accepts handoff links and gateways at `addr`.
    Listening {
        /// Its instance name.
        name: String,
        /// Its cluster address.
        addr: SocketAddr,
        /// [`SERVE_VERSION`].
        version: u16,
        /// Where it serves Prometheus metrics, when it was asked to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metrics: Option<SocketAddr>,
    },
    /// `region` is hosted here and owned by this process at `epoch`.
    Owning {
        /// The region.
        region: RegionId,
        /// The epoch.
        epoch: Epoch,
    },
    /// A slot waits to receive `region`.
    Prepared {
        /// The region.
        region: RegionId,
    },
    /// A handoff this process started entered a phase.
    Phase {
        /// The region.
        region: RegionId,
        /// The source's phase.
        phase: HandoffPhase,
    },
    /// This process's copy of `region` froze after its last tick.
    Frozen {
        /// The region.
        region: RegionId,
        /// The last tick.
        tick: u64,
        /// When that tick started, in microseconds since the Unix epoch.
        last_tick_at_us: u64,
        /// The world digest at the freeze (hex; empty from a server that predates it).
        #[serde(default)]
        digest: String,
    },
    /// This process took `region` over in a handoff.
    Authoritative {
        /// The region.
        region: RegionId,
        /// The new epoch.
        epoch: Epoch,
        /// The world digest when it took over (hex; empty from a server that predates it).
        #[serde(default)]
        digest: String,
    },
    /// The first tick this process ran after taking `region` over.
    FirstTick {
        /// The region.
        region: RegionId,
        /// The tick.
        tick: u64,
        /// When it started, in microseconds since the Unix epoch.
        at_us: u64,
    },
    /// This process gave `region` away to the owner at `epoch`.
    HandedOff {
        /// The region.
        region: RegionId,
        /// The new owner's epoch.
        epoch: Epoch,
        /// What the handoff moved.
        #[serde(flatten)]
        figures: HandoffFigures,
    },
    /// A handoff of `region` failed; `owning` says whether this process owns it afterwards.
    Aborted {
        /// The region.
        region: RegionId,
        /// Who failed, in which phase, and why.
        reason: String,
        /// Whether this process owns the region now.
        owning: bool,
    },
    /// `region` was freed here after handing it off.
    Retired {
        /// The region.
        region: RegionId,
    },
    /// Once a second: what owning `region` costs.
    Load {
        /// The region.
        region: RegionId,
        /// Mean tick duration over the last second, in milliseconds.
        tick_ms: f64,
        /// Longest tick in it, in milliseconds.
        tick_ms_max: f64,
        /// The tick interval (a tick's budget), in milliseconds (0 from servers before it was
        /// reported).
        #[serde(default)]
        tick_budget_ms: f64,
        /// Players with a session in the region.
        players: u64,
        /// Live entities.
        entities: u64,
        /// Bytes sent to the region's hot standby since the previous report (the host's agent adds
        /// them to its migration bytes; 0 from servers before it was reported).
        #[serde(default)]
        standby_bytes: u64,
    },
    /// A checkpoint of `region` was stored.
    Checkpointed {
        /// The region.
        region: RegionId,
        /// The tick it holds.
        tick: u64,
        /// The owner's epoch.
        epoch: Epoch,
        /// Its size in bytes.
        bytes: u64,
        /// Where it is.
        path: String,
    },
    /// Storing a checkpoint of `region` failed (the region goes on ticking).
    CheckpointFailed {
        /// The region.
        region: RegionId,
        /// Why.
        error: String,
    },
    /// `region` was restored from a checkpoint (an `owning` follows).
    Restored {
        /// The region.
        region: RegionId,
        /// The tick the checkpoint held.
        tick: u64,
        /// The epoch the checkpoint was taken at.
        from_epoch: Epoch,
        /// The epoch this process owns it at.
        epoch: Epoch,
        /// The checkpoint's file.
        path: String,
    },
    /// `region` was saved to the checkpoint store and is no longer served here.
    Stopped {
        /// The region.
        region: RegionId,
        /// The epoch it had here.
        epoch: Epoch,
        /// The tick the checkpoint holds.
        tick: u64,
        /// The checkpoint's size in bytes.
        bytes: u64,
        /// Where it is.
        path: String,
        /// Inputs received but not applied, which the checkpoint does not hold.
        inputs_discarded: u64,
    },
    /// A stop of `region` was refused; it goes on here.
    StopRefused {
        /// The region.
        region: RegionId,
        /// Why.
        reason: String,
    },
    /// This process's standby of `region` holds the owner's world after `tick` (at the first
    /// tick it holds, then at most once a second).
    StandbyHolding {
        /// The region.
        region: RegionId,
        /// The epoch of the owner it follows.
        owner_epoch: Epoch,
        /// The tick.
        tick: u64,
        /// Archive bytes it received so far.
        bytes: u64,
    },
    /// This process's standby of `region` stopped following: `detached` when it keeps what it
    /// holds for a promotion, else it was discarded (the slot is empty again).
    StandbyLost {
        /// The region.
        region: RegionId,
        /// Why.
        reason: String,
        /// Whether it can still be promoted.
        detached: bool,
    },
    /// The owner's feed of `region`'s standby ended (the region goes on without one).
    FeedEnded {
        /// The region.
        region: RegionId,
        /// Why.
        reason: String,
    },
    /// This process's standby took `region` over at `epoch`, continuing from `tick`.
    Promoted {
        /// The region.
        region: RegionId,
        /// The new epoch.
        epoch: Epoch,
        /// The tick it held.
        tick: u64,
    },
    /// This process's standby of `region` heard nothing from its owner for `silent_ms` (several
    /// ticks); a witness for failure detection.
    OwnerSilent {
        /// The region.
        region: RegionId,
        /// The epoch of the owner it follows.
        owner_epoch: Epoch,
        /// How long nothing came, in milliseconds.
        silent_ms: u64,
    },
    /// This process's standby of `region` hears its owner again.
    OwnerHeard {
        /// The region.
        region: RegionId,
    },
    /// Every second, from a process that counts its heap (`baton_net::heap`): bytes allocated and
    /// not yet freed. Since version 4.
    Heap {
        /// The live heap, in bytes.
        live_bytes: u64,
    },
    /// `player`'s inputs up to `through` were acknowledged durable, and `lost` of them are not in
    /// the state `region` was restored from (its standby was lost with its owner): counted lost.
    InputsLost {
        /// The region.
        region: RegionId,
        /// The player.
        player: PlayerId,
        /// How many.
        lost: u64,
        /// The last input the player's client dropped.
        through: u64,
    },
    /// A promotion of this process's standby of `region` was refused.
    PromoteRefused {
        /// The region.
        region: RegionId,
        /// Why.
        reason: String,
    },
    /// An input reached a process that does not serve the region.
    InputRefused {
        /// The region.
        region: RegionId,
        /// The player.
        player: PlayerId,
        /// The input's sequence.
        seq: u64,
    },
    /// The answer to [`ServerCommand::Report`].
    Report {
        /// The region.
        region: RegionId,
        /// Its tick.
        tick: u64,
        /// Ticks that started later than their schedule.
        late_ticks: u64,
        /// The world digest (hex).
        digest: String,
        /// Live entities.
        entities: u64,
        /// The players with a session.
        players: Vec<PlayerReport>,
    },
    /// A command was refused or failed (bad JSON, unknown region, the game refused it).
    Error {
        /// The region the command named, if it named one.
        #[serde(default)]
        region: Option<RegionId>,
        /// What went wrong.
        error: String,
    },
}

impl ServerEvent {
    /// The region the event is about, if any.
    #[must_use]
    pub fn region(&self) -> Option<RegionId> {
        match self {
            ServerEvent::Listening { .. } | ServerEvent::Heap { .. } => None,
            ServerEvent::Error { region, .. } => *region,
            ServerEvent::Owning { region, .. }
            | ServerEvent::Prepared { region }
            | ServerEvent::Phase { region, .. }
            | ServerEvent::Frozen { region, .. }
            | ServerEvent::Authoritative { region, .. }
            | ServerEvent::FirstTick { region, .. }
            | ServerEvent::HandedOff { region, .. }
            | ServerEvent::Aborted { region, .. }
            | ServerEvent::Retired { region }
            | ServerEvent::Load { region, .. }
            | ServerEvent::Checkpointed { region, .. }
            | ServerEvent::CheckpointFailed { region, .. }
            | ServerEvent::Restored { region, .. }
            | ServerEvent::Stopped { region, .. }
            | ServerEvent::StopRefused { region, .. }
            | ServerEvent::InputRefused { region, .. }
            | ServerEvent::StandbyHolding { region, .. }
            | ServerEvent::StandbyLost { region, .. }
            | ServerEvent::FeedEnded { region, .. }
            | ServerEvent::Promoted { region, .. }
            | ServerEvent::PromoteRefused { region, .. }
            | ServerEvent::OwnerSilent { region, .. }
            | ServerEvent::OwnerHeard { region }
            | ServerEvent::InputsLost { region, .. }
            | ServerEvent::Report { region, .. } => Some(*region),
        }
    }

    /// How the owner of regions changes with this event, for whoever keeps a process's list of
    /// owned regions (the agent and the coordinator).
    #[must_use]
    pub fn ownership_change(&self) -> Option<(RegionId, bool)> {
        match self {
            ServerEvent::Owning { region, .. } | ServerEvent::Authoritative { region, .. } => Some((*region, true)),
            ServerEvent::HandedOff { region, .. }
            | ServerEvent::Retired { region }
            | ServerEvent::Stopped { region, .. } => Some((*region, false)),
            ServerEvent::Aborted { region, owning, .. } => Some((*region, *owning)),
            _ => None,
        }
    }
}

/// Why a line is not a serve-protocol message.
#[derive(Debug, thiserror::Error)]
#[error("not a serve-protocol line: {0}")]
pub struct LineError(#[from] serde_json::Error);

/// Reads one command line.
pub fn parse_command(line: &str) -> Result<ServerCommand, LineError> {
    Ok(serde_json::from_str(line)?)
}

/// Reads one event line.
pub fn parse_event(line: &str) -> Result<ServerEvent, LineError> {
    Ok(serde_json::from_str(line)?)
}

/// Writes a message as one line (without the newline).
#[must_use]
pub fn to_line<T: Serialize>(message: &T) -> String {
    // Serialising these types cannot fail: their maps have string keys and no custom
    // serialisers; an empty object is still a line the reader refuses loudly.
    serde_json::to_string(message).unwrap_or_else(|_| String::from("{}"))
}

/// A value carried as JSON text inside another encoding (the control protocol's postcard frames
/// carry serve-protocol messages this way, since their shape needs a self-describing format).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsJson<T>(pub T);

impl<T: Serialize> Serialize for AsJson<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(&self.0).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&text)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for AsJson<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        serde_json::from_str(&text).map(AsJson).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_read_as_operators_type_them() {
        let host = parse_command(r#"{"cmd":"host","region":1,"world":{"objects":20}}"#).unwrap();
        let mut world = GameObject::new();
        world.insert("objects".into(), 20.into());
        assert_eq!(host, ServerCommand::Host { region: RegionId(1), world, from_checkpoint: false, take_over: None });
        let promote = parse_command(r#"{"cmd":"promote","region":1,"epoch":4}"#).unwrap();
        assert_eq!(promote, ServerCommand::Promote { region: RegionId(1), epoch: Epoch(4) });
        let feed = parse_command(r#"{"cmd":"feed_standby","region":1,"to":"127.0.0.1:4434"}"#).unwrap();
        assert_eq!(feed, ServerCommand::FeedStandby { region: RegionId(1), to: "127.0.0.1:4434".parse().unwrap() });
        let handoff = parse_command(r#"{"cmd":"handoff","region":1,"to":"127.0.0.1:4433"}"#).unwrap();
        assert_eq!(handoff, ServerCommand::Handoff { region: RegionId(1), to: "127.0.0.1:4433".parse().unwrap() });
        assert_eq!(parse_command(r#"{"cmd":"quit"}"#).unwrap(), ServerCommand::Quit);
        // A misspelt field or command is refused, never ignored.
        assert!(parse_command(r#"{"cmd":"prepare","regoin":1}"#).is_err());
        assert!(parse_command(r#"{"cmd":"prepare","region":1,"extra":2}"#).is_err());
        assert!(parse_command(r#"{"cmd":"migrate","region":1}"#).is_err());
        assert!(parse_command(r#"{"cmd":"prepare","region":-1}"#).is_err());
    }

    /// One event of every kind. `kind` below matches exhaustively, so a new variant does not
    /// compile until it is listed here too.
    fn one_of_each() -> Vec<ServerEvent> {
        let region = RegionId(3);
        vec![
            ServerEvent::Listening {
                name: "h1-p1".into(),
                addr: "127.0.0.1:9".parse().unwrap(),
                version: SERVE_VERSION,
                metrics: Some("127.0.0.1:10".parse().unwrap()),
            },
            ServerEvent::Owning { region, epoch: Epoch(2) },
            ServerEvent::Prepared { region },
            ServerEvent::Phase { region, phase: HandoffPhase::HandedOff },
            ServerEvent::Frozen { region, tick: 9, last_tick_at_us: 1_700_000_000_000_000, digest: "ab".into() },
            ServerEvent::Authoritative { region, epoch: Epoch(3), digest: "ab".into() },
            ServerEvent::FirstTick { region, tick: 10, at_us: 1_700_000_000_050_000 },
            ServerEvent::HandedOff {
                region,
                epoch: Epoch(3),
                figures: HandoffFigures {
                    freeze_us: Some(2500),
                    total_us: None,
                    rounds: 2,
                    snapshot_bytes: 9,
                    delta_bytes: 1,
                    final_bytes: 1,
                    delivery_bytes_per_second: Some(40_000_000),
                    change_bytes_per_tick: Some(12_000),
                    waited_us: None,
                    engines_waited_us: None,
                    ticks: Box::new(HandoffTicks {
                        before: TickSamples {
                            busy_us: vec![900, 1100],
                            late_us: vec![40, 60],
                            handoff_us: Vec::new(),
                            after_us: vec![0, 0],
                        },
                        during: TickSamples {
                            busy_us: vec![1000],
                            late_us: vec![50],
                            handoff_us: vec![300],
                            after_us: vec![0],
                        },
                    }),
                },
            },
            ServerEvent::Aborted { region, reason: "target: frozen: gone".into(), owning: true },
            ServerEvent::Retired { region },
            ServerEvent::Load {
                region,
                tick_ms: 1.25,
                tick_ms_max: 7.5,
                tick_budget_ms: 50.0,
                players: 4,
                entities: 900,
                standby_bytes: 65_536,
            },
            ServerEvent::Checkpointed { region, tick: 300, epoch: Epoch(2), bytes: 4096, path: "/c/r3-e2-t300".into() },
            ServerEvent::CheckpointFailed { region, error: "disk full".into() },
            ServerEvent::Restored { region, tick: 300, from_epoch: Epoch(2), epoch: Epoch(3), path: "/c/x".into() },
            ServerEvent::Stopped {
                region,
                epoch: Epoch(3),
                tick: 400,
                bytes: 5000,
                path: "/c/y".into(),
                inputs_discarded: 2,
            },
            ServerEvent::StopRefused { region, reason: "a handoff".into() },
            ServerEvent::InputRefused { region, player: PlayerId(5), seq: 8 },
            ServerEvent::StandbyHolding { region, owner_epoch: Epoch(2), tick: 500, bytes: 70_000 },
            ServerEvent::StandbyLost { region, reason: "the owner went silent".into(), detached: true },
            ServerEvent::FeedEnded { region, reason: "link lost".into() },
            ServerEvent::Promoted { region, epoch: Epoch(3), tick: 500 },
            ServerEvent::PromoteRefused { region, reason: "holds nothing".into() },
            ServerEvent::OwnerSilent { region, owner_epoch: Epoch(2), silent_ms: 250 },
            ServerEvent::OwnerHeard { region },
            ServerEvent::InputsLost { region, player: PlayerId(7), lost: 12, through: 340 },
            ServerEvent::Heap { live_bytes: 12_345_678 },
            ServerEvent::Report {
                region,
                tick: 7,
                late_ticks: 0,
                digest: "ab".into(),
                entities: 4,
                players: vec![PlayerReport {
                    player: PlayerId(5),
                    last_applied: 9,
                    pending: 1,
                    duplicates: 2,
                    early: 3,
                    game: GameObject::new(),
                }],
            },
            ServerEvent::Error { region: None, error: "bad".into() },
            ServerEvent::Error { region: Some(region), error: "refused".into() },
        ]
    }

    fn kind(event: &ServerEvent) -> usize {
        match event {
            ServerEvent::Listening { .. } => 0,
            ServerEvent::Owning { .. } => 1,
            ServerEvent::Prepared { .. } => 2,
            ServerEvent::Phase { .. } => 3,
            ServerEvent::Frozen { .. } => 4,
            ServerEvent::Authoritative { .. } => 5,
            ServerEvent::FirstTick { .. } => 6,
            ServerEvent::HandedOff { .. } => 7,
            ServerEvent::Aborted { .. } => 8,
            ServerEvent::Retired { .. } => 9,
            ServerEvent::Load { .. } => 10,
            ServerEvent::Checkpointed { .. } => 11,
            ServerEvent::CheckpointFailed { .. } => 12,
            ServerEvent::Restored { .. } => 13,
            ServerEvent::Stopped { .. } => 14,
            ServerEvent::StopRefused { .. } => 15,
            ServerEvent::InputRefused { .. } => 16,
            ServerEvent::Report { .. } => 17,
            ServerEvent::Error { .. } => 18,
            ServerEvent::StandbyHolding { .. } => 19,
            ServerEvent::StandbyLost { .. } => 20,
            ServerEvent::FeedEnded { .. } => 21,
            ServerEvent::Promoted { .. } => 22,
            ServerEvent::PromoteRefused { .. } => 23,
            ServerEvent::OwnerSilent { .. } => 24,
            ServerEvent::OwnerHeard { .. } => 25,
            ServerEvent::InputsLost { .. } => 26,
            ServerEvent::Heap { .. } => 27,
        }
    }

    #[test]
    fn every_event_round_trips_through_a_line_and_a_postcard_frame() {
        let events = one_of_each();
        let kinds: std::collections::BTreeSet<usize> = events.iter().map(kind).collect();
        assert_eq!(kinds.len(), 28, "one event of every kind");
        for event in events {
            let line = to_line(&event);
            assert_eq!(parse_event(&line).unwrap(), event, "{line}");
            let frame = postcard::to_allocvec(&AsJson(event.clone())).unwrap();
            let back: AsJson<ServerEvent> = postcard::from_bytes(&frame).unwrap();
            assert_eq!(back.0, event);
        }
        // The phase is a name on the wire.
        let line = to_line(&ServerEvent::Phase { region: RegionId(1), phase: HandoffPhase::HandedOff });
        assert!(line.contains(r#""phase":"handed_off""#), "{line}");
    }

    #[test]
    fn handoff_figures_of_an_older_server_parse_without_the_measured_rates() {
        let figures = HandoffFigures { freeze_us: Some(1), ..HandoffFigures::default() };
        let event = ServerEvent::HandedOff { region: RegionId(1), epoch: Epoch(2), figures };
        let line = to_line(&event);
        let older =
            line.replace(r#","delivery_bytes_per_second":null,"change_bytes_per_tick":null,"waited_us":null,"engines_waited_us":null"#, "");
        assert_ne!(older, line, "{line}");
        assert_eq!(parse_event(&older).unwrap(), event);
    }

    #[test]
    fn ownership_changes_follow_the_events() {
        let region = RegionId(4);
        assert_eq!(ServerEvent::Owning { region, epoch: Epoch(1) }.ownership_change(), Some((region, true)));
        assert_eq!(ServerEvent::Retired { region }.ownership_change(), Some((region, false)));
        let kept = ServerEvent::Aborted { region, reason: String::new(), owning: true };
        assert_eq!(kept.ownership_change(), Some((region, true)));
        let lost = ServerEvent::Aborted { region, reason: String::new(), owning: false };
        assert_eq!(lost.ownership_change(), Some((region, false)));
        assert_eq!(ServerEvent::Prepared { region }.ownership_change(), None);
        // A standby never owns the region until it says `owning`.
        let holding = ServerEvent::StandbyHolding { region, owner_epoch: Epoch(1), tick: 9, bytes: 1 };
        assert_eq!(holding.ownership_change(), None);
    }
}
