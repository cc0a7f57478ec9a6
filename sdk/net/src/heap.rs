//! The live heap of a process: bytes allocated and not yet freed, counted by the allocator.
//!
//! A process's resident memory is not its heap. An allocator keeps freed memory for later, in
//! pages the kernel still counts, and returns it on its own schedule; after a burst (a region taken
//! over, a thousand players arriving at once) resident memory steps up and comes down slowly or
//! not at all, with nothing leaked. Whether a long-running process leaks is told by its live heap.
//!
//! A binary counts it by wrapping its global allocator in `cap::Cap` (which counts the bytes asked
//! for, as a heap profiler does, not what the allocator rounds them up to) and naming it here:
//!
//! ```
//! #[global_allocator]
//! static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);
//!
//! fn main() {
//!     baton_net::heap::count_with(|| ALLOCATOR.allocated());
//!     let held = vec![0u8; 1 << 20];
//!     assert!(baton_net::heap::live_bytes().is_some_and(|live| live >= 1 << 20));
//!     drop(held);
//! }
//! ```
//!
//! Baton's agent, coordinator, gateway and the sample region server count their heap: region
//! servers report it to their agent (`ServerEvent::Heap`), which reports it with the host's
//! processes; every process serving metrics shows it as the gauge [`LIVE_BYTES_GAUGE`].

use std::sync::OnceLock;

/// The gauge of the live heap, in bytes, on a process's metrics.
pub const LIVE_BYTES_GAUGE: &str = "baton_heap_live_bytes";

/// Reads the counting allocator's live bytes.
static READ: OnceLock<fn() -> usize> = OnceLock::new();

/// Names how to read the live heap: the counting global allocator's count (see the module
/// documentation). Only the first call of a process counts.
pub fn count_with(read: fn() -> usize) {
    let _ = READ.set(read);
}

/// The process's live heap in bytes, if it counts it ([`count_with`]).
#[must_use]
pub fn live_bytes() -> Option<u64> {
    READ.get().map(|read| read() as u64)
}
