//! The handoff protocol: moving a running region from a source instance to a pre-warmed target.
//!
//! Both sides are plain state machines ([`HandoffSource`], [`HandoffTarget`]) with no I/O: a driver
//! feeds them events (`handle_*`, with the current time and the region's world) and drains what
//! they want done (`poll_*`: messages to send, ownership requests, the next timeout). The rules
//! are in `docs/protocol.md`; comments cite its sections.
//!
//! Phases: prepare → snapshot (streamed while the source ticks) → delta rounds → freeze at a tick
//! boundary → digest check → commit (the target's compare-and-swap of the region's epoch at the
//! [`OwnershipAuthority`]) → cutover (the target ticks on the source's schedule) → the source
//! forwards stragglers for a grace period and retires.
//!
//! What it does not do: sockets, timers, pacing of bytes on the link (the driver's token bucket),
//! choosing when to move (the coordinator).

pub mod authority;
pub mod message;
pub mod source;
pub mod standby;
pub mod target;
pub mod testing;

use std::fmt;
use std::time::Duration;

pub use authority::{
    AuthorityError, FileAuthority, InMemoryAuthority, Ownership, OwnershipAuthority, check_owner_name,
};
pub use message::{Message, MessageError};
pub use source::{
    EncodeJob, EncodedRound, HandoffPlan, HandoffSource, SourceAction, SourceConfig, SourcePhase, SourceStats,
};
pub use standby::{
    FeedEvent, FeedPhase, FeedStats, FollowerAction, FollowerPhase, PromoteError, StandbyFeed, StandbyFollower,
};
pub use target::{HandoffTarget, TargetAction, TargetConfig, TargetPhase};

/// Identifies one handoff attempt (random, chosen by the source).
pub type HandoffId = u64;

/// Who caused a handoff to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Culprit {
    /// The source instance.
    Source,
    /// The target instance.
    Target,
    /// The link between them.
    Link,
    /// The ownership authority (coordinator).
    Authority,
}

/// The phase a handoff was in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the target to accept.
    Prepare,
    /// Streaming the snapshot.
    Snapshot,
    /// Streaming delta rounds.
    Rounds,
    /// Source frozen; final delta and digest check.
    Freeze,
    /// Settling ownership at the authority.
    Commit,
}

impl fmt::Display for Phase {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Phase::Prepare => "prepare",
            Phase::Snapshot => "snapshot",
            Phase::Rounds => "delta rounds",
            Phase::Freeze => "freeze",
            Phase::Commit => "commit",
        };
        formatter.write_str(name)
    }
}

/// Why a handoff was aborted: who, in which phase, and what happened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("handoff aborted in {phase} by the {culprit:?}: {reason}")]
pub struct AbortReason {
    /// Who failed.
    pub culprit: Culprit,
    /// The phase.
    pub phase: Phase,
    /// What happened, lower-case.
    pub reason: String,
}

/// Timeouts and limits shared by both sides.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// The target must accept within this.
    pub prepare: Duration,
    /// Everything before the freeze must finish within this.
    pub transfer: Duration,
    /// After the freeze, the target must report commit within this before the source settles
    /// ownership itself.
    pub commit: Duration,
    /// Between retries of an unavailable authority.
    pub authority_retry: Duration,
    /// How long a retired source forwards stragglers.
    pub straggler_grace: Duration,
    /// The link counts as lost when nothing arrived for this long while a reply is expected.
    pub silence: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            prepare: Duration::from_secs(5),
            transfer: Duration::from_secs(120),
            commit: Duration::from_secs(2),
            authority_retry: Duration::from_millis(50),
            straggler_grace: Duration::from_secs(2),
            silence: Duration::from_secs(3),
        }
    }
}
