//! Baton's network test bed: hosts as Linux network namespaces on one machine, joined through a
//! bridge by links with bandwidth limits, each running Baton's real processes; and the runs
//! measured across it ([`interference`], [`matrix`], [`soak`]).
//!
//! It needs root; [`netns::unavailable`] says why it cannot run when it cannot.

pub mod interference;
pub mod matrix;
pub mod netns;
pub mod soak;
