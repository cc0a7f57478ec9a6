//! Frees what a finished region thread leaves behind on a thread of the lowest priority.
//!
//! A region thread ends when its region has been handed off (after the straggler grace) or
//! stopped. Its node then holds the whole region: a world of up to millions of entities, the
//! physics engine's sets, every script instance. Freeing that is a great many `free` calls and
//! pages given back to the kernel: about 12 ms of a core for the sample world of 10,000 physics
//! objects and 500 scripted NPCs (docs/benchmarks.md). On the region thread, at the priority of
//! the regions still running, those frees took a core from whatever ran beside them: with
//! handoffs a few hundred milliseconds apart, often the next handoff's freeze. Here they run at
//! nice 19, behind every thread of normal priority that wants a core; on a host whose cores are
//! all busy the memory is given back later (nice 19 still gets a small share of a busy core).

use std::sync::mpsc;

/// Hands values to the reaper thread to be dropped there. Clones share the thread, which ends
/// once every clone is gone and everything sent has been dropped.
#[derive(Clone, Debug)]
pub(crate) struct Reaper {
    sender: mpsc::Sender<Box<dyn Send>>,
}

/// The nice value of the reaper thread: the lowest priority a normal thread can have.
pub(crate) const REAPER_NICE: i32 = 19;

impl Reaper {
    /// Starts the reaper thread. Should it not start, values are dropped where they are sent
    /// from, as without a reaper.
    pub(crate) fn start() -> Reaper {
        let (sender, receiver) = mpsc::channel::<Box<dyn Send>>();
        let spawned = std::thread::Builder::new().name("baton-reaper".to_owned()).spawn(move || {
            lower_this_thread();
            for value in receiver {
                drop(value);
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "could not start the thread that frees finished regions; they are freed on their own threads");
        }
        Reaper { sender }
    }

    /// Drops `value` on the reaper thread (or here, if that thread is gone).
    pub(crate) fn drop_later<T: Send + 'static>(&self, value: T) {
        if let Err(mpsc::SendError(value)) = self.sender.send(Box::new(value)) {
            drop(value);
        }
    }
}

/// Sets the calling thread's nice value to [`REAPER_NICE`] (on Linux the nice value is the
/// thread's own). Raising it needs no privilege; should it fail, the thread runs as it is.
fn lower_this_thread() {
    let thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(thread), REAPER_NICE) {
        tracing::warn!(%error, "could not lower the priority of the thread that frees finished regions");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Records the thread it was dropped on.
    struct Marker {
        dropped_on: mpsc::Sender<(Option<String>, i32)>,
        dropped: Arc<AtomicBool>,
    }

    impl Drop for Marker {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
            let nice = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(i32::MIN);
            let _ = self.dropped_on.send((std::thread::current().name().map(str::to_owned), nice));
        }
    }

    #[test]
    fn a_value_is_dropped_on_the_reaper_thread_at_the_lowest_priority() {
        let reaper = Reaper::start();
        let (dropped_on, report) = mpsc::channel();
        let dropped = Arc::new(AtomicBool::new(false));
        reaper.drop_later(Marker { dropped_on, dropped: dropped.clone() });
        let (thread, nice) = report.recv().unwrap();
        assert_eq!(thread.as_deref(), Some("baton-reaper"));
        assert_eq!(nice, REAPER_NICE);
        assert!(dropped.load(Ordering::SeqCst));
    }

    #[test]
    fn without_its_thread_a_value_is_dropped_where_it_was_sent_from() {
        let (sender, receiver) = mpsc::channel::<Box<dyn Send>>();
        drop(receiver);
        let reaper = Reaper { sender };
        let (dropped_on, report) = mpsc::channel();
        let dropped = Arc::new(AtomicBool::new(false));
        reaper.drop_later(Marker { dropped_on, dropped: dropped.clone() });
        assert!(dropped.load(Ordering::SeqCst), "dropped before drop_later returned");
        let (thread, _) = report.recv().unwrap();
        assert_eq!(thread, std::thread::current().name().map(str::to_owned));
    }
}
