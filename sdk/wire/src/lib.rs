//! Identifiers shared by every Baton component: regions, players, ownership epochs, inputs.
//!
//! This crate is deliberately tiny and has no physics, no script engine and no async runtime, so the
//! gateway and the coordinator can depend on it without compiling what only region servers need.
//! It owns the *meaning* of these identifiers (for example that epochs only grow), not any transport.

pub mod authority;
pub mod control;
pub mod framing;
pub mod player;
pub mod serve;
pub mod token;
pub mod upstream;

use std::fmt;

/// A region of the world (one zone, e.g. a 256 m x 256 m square), stable across hosts and restarts.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[serde(transparent)]
pub struct RegionId(pub u64);

impl fmt::Display for RegionId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "r{}", self.0)
    }
}

/// A player account as issued by the operator's login service.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord))]
#[serde(transparent)]
pub struct PlayerId(pub u64);

impl fmt::Display for PlayerId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "p{}", self.0)
    }
}

/// An ownership epoch: the fencing token of a region's authority.
///
/// Invariant 1 (single authority): each change of owner takes `epoch + 1`, and anything stamped
/// with an epoch lower than the current one is refused. Epochs never go backwards.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch a new owner takes over from this one.
    #[must_use]
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }

    /// Whether a message stamped with `stamped` may be accepted by an owner at `self`.
    #[must_use]
    pub fn admits(self, stamped: Epoch) -> bool {
        stamped >= self
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "e{}", self.0)
    }
}

/// The per-player input sequence number. The first input a player sends is 1; 0 means "none yet".
pub type InputSeq = u64;

/// Largest input payload (game-defined bytes) the SDK accepts, in bytes.
pub const MAX_INPUT_PAYLOAD: usize = 1024;

/// One player input as it travels from the gateway to the owning region instance.
///
/// The payload is opaque game data; the sequence number orders and deduplicates it (invariant 2).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct PlayerInput {
    /// Who sent it.
    pub player: PlayerId,
    /// Per-player sequence number, starting at 1, without gaps.
    pub seq: InputSeq,
    /// Game-defined bytes, at most [`MAX_INPUT_PAYLOAD`].
    pub payload: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_fence_stale_stamps() {
        let current = Epoch(7);
        assert!(current.admits(Epoch(7)));
        assert!(current.admits(Epoch(8)));
        assert!(!current.admits(Epoch(6)));
        assert_eq!(current.next(), Epoch(8));
        assert_eq!(Epoch(u64::MAX).next(), Epoch(u64::MAX));
    }
}
