//! Frees what a finished region thread leaves behind on a thread of the lowest priority.
//!
//! A region thread ends when its node is done with the region, for whatever reason (handed off
//! and the straggler grace over, stopped, fenced, shut down). Its node then holds the whole
//! region: a world of up to millions of entities, the physics engine's sets, every script
//! instance, the game's own state. Freeing that is a great many `free` calls and pages given back
//! to the kernel: about 12 ms of a core for the sample world of 10,000 physics objects and 500
//! scripted NPCs (docs/benchmarks.md). On the region thread, at the priority of the regions still
//! running, those frees competed with them for the cores; in `handoff-bench`, where a handoff
//! follows every 0.67 s and a source's thread ends 2 s after its own, they often fell into a later
//! handoff's freeze. Here they run at nice 19: a weight of about 1.5% of a thread at nice 0 when
//! both want the same core (within one scheduling group), not a strict precedence.
//!
//! At most [`Reaper::QUEUE`] regions wait to be freed; a region ending while the queue is full (a
//! host whose cores are all busy, so the reaper gets little time) is freed on its own thread, as
//! without a reaper, so finished regions never pile up in memory.

use std::sync::mpsc;

/// Hands values to the reaper thread to be dropped there. Clones share the thread, which ends
/// once every clone is gone and everything sent has been dropped.
#[derive(Clone, Debug)]
pub(crate) struct Reaper {
    sender: mpsc::SyncSender<Box<dyn Send>>,
}

/// The nice value of the reaper thread: the lowest priority a normal thread can have.
#[cfg(target_os = "linux")]
pub(crate) const REAPER_NICE: i32 = 19;

impl Reaper {
    /// How many values may wait to be dropped; past it, [`Reaper::drop_later`] drops in place.
    pub(crate) const QUEUE: usize = 4;

    /// Starts the reaper thread. Should it not start, values are dropped where they are sent
    /// from, as without a reaper.
    pub(crate) fn start() -> Reaper {
        let (sender, receiver) = mpsc::sync_channel::<Box<dyn Send>>(Self::QUEUE);
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

    /// Drops `value` on the reaper thread, or here if that thread is gone or has
    /// [`Reaper::QUEUE`] values waiting already.
    pub(crate) fn drop_later<T: Send + 'static>(&self, value: T) {
        match self.sender.try_send(Box::new(value)) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(value) | mpsc::TrySendError::Disconnected(value)) => drop(value),
        }
    }
}

/// Sets the calling thread's nice value to [`REAPER_NICE`] (on Linux the nice value is the
/// thread's own). Raising it needs no privilege; should it fail, the thread runs as it is.
#[cfg(target_os = "linux")]
fn lower_this_thread() {
    let thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(thread), REAPER_NICE) {
        tracing::warn!(%error, "could not lower the priority of the thread that frees finished regions");
    }
}

/// Elsewhere the nice value is the whole process's: the reaper runs at the process's priority.
#[cfg(not(target_os = "linux"))]
fn lower_this_thread() {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(10);

    /// Reports the thread it was dropped on (and its nice value), after waiting at `gate` if any.
    struct Marker {
        dropped_on: mpsc::Sender<(Option<String>, i32)>,
        gate: Option<Arc<Barrier>>,
    }

    impl Drop for Marker {
        fn drop(&mut self) {
            if let Some(gate) = &self.gate {
                gate.wait();
            }
            #[cfg(target_os = "linux")]
            let nice = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(i32::MIN);
            #[cfg(not(target_os = "linux"))]
            let nice = 0;
            let _ = self.dropped_on.send((std::thread::current().name().map(str::to_owned), nice));
        }
    }

    #[test]
    fn a_value_is_dropped_on_the_reaper_thread_at_the_lowest_priority() {
        let reaper = Reaper::start();
        let (dropped_on, report) = mpsc::channel();
        reaper.drop_later(Marker { dropped_on, gate: None });
        let (thread, _nice) = report.recv_timeout(WAIT).unwrap();
        assert_eq!(thread.as_deref(), Some("baton-reaper"));
        #[cfg(target_os = "linux")]
        assert_eq!(_nice, REAPER_NICE);
    }

    #[test]
    fn a_value_is_dropped_where_it_was_sent_from_when_the_reaper_is_gone_or_behind() {
        let here = std::thread::current().name().map(str::to_owned);
        // Gone.
        let (sender, receiver) = mpsc::sync_channel::<Box<dyn Send>>(Reaper::QUEUE);
        drop(receiver);
        let (dropped_on, report) = mpsc::channel();
        Reaper { sender }.drop_later(Marker { dropped_on, gate: None });
        assert_eq!(report.try_recv().unwrap().0, here, "dropped before drop_later returned");
        // Behind: one value being dropped (held at the gate) and a full queue.
        let reaper = Reaper::start();
        let gate = Arc::new(Barrier::new(2));
        let (dropped_on, report) = mpsc::channel();
        reaper.drop_later(Marker { dropped_on: dropped_on.clone(), gate: Some(gate.clone()) });
        // Once the reaper took the first off the queue, QUEUE more fit; the one after does not.
        while reaper.sender.try_send(Box::new(())).is_ok() {}
        reaper.drop_later(Marker { dropped_on, gate: None });
        assert_eq!(report.try_recv().unwrap().0, here, "a full queue drops in place");
        gate.wait();
        assert_eq!(report.recv_timeout(WAIT).unwrap().0.as_deref(), Some("baton-reaper"));
    }
}
