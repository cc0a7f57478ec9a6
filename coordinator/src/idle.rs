//! Processes claimed from a host's warm pool that no longer do anything, given back.
//!
//! A process leaves the warm pool when it is claimed (a migration's target, a failover's restore,
//! a hot standby) and goes back only when something releases it. Most paths do: a migration
//! releases its source once it committed and its target once it aborted, a standby's process is
//! released when its feed ends. One did not: a region that failed over while its owner's host was
//! only cut off (a link down for a few seconds) leaves the old owner alive; it lets the region go
//! once it hears of the new owner, and then owns nothing, follows nothing, and stays claimed for
//! good. A host whose processes are all claimed takes no more regions, standbys or failovers
//! ("all N processes of this host are busy": the soak found hosts there within ten minutes of
//! link faults). Rather than finding every such path, the coordinator gives back any claimed
//! process that has had nothing to do for a while.
//!
//! On by default (`--idle-release-s 30`; 0 turns it off). For a day it was off: two 30-minute
//! soaks with it saw players' inputs collapse after a gateway kill, which turned out to be a
//! resend loop between the regions' asks for lost inputs, the client and the gateway's rate limit
//! that had begun before any release (docs/testing.md, "The soak"); with that loop broken, a soak
//! with the release on held every player's input. Every user of a
//! claim names its process at once (a migration's or failover's record, a standby's placement,
//! the admin API's [`crate::hosts::Hosts::placing`]); a grace of 30 s covers the moment between
//! the agent reporting a process claimed and the claim's answer reaching its user.
//!
//! [`IdleProcesses`] is the no-I/O judge: a process on a connected host that is not warm, owns no
//! region, and is not `in use` (the directory's owner of a region, a running migration's or
//! failover's source or target, a region's standby, a process the admin API is giving a region)
//! for `grace` in a row is released: its agent
//! stops it, which frees its place on the host (the agent refills its warm pool when it is short).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How long a claimed process may do nothing before it is released, by default (see the module's
/// notes on the grace).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Metric: claimed processes released for having nothing to do.
pub const IDLE_RELEASED_TOTAL: &str = "baton_idle_processes_released_total";

/// Describes the metric.
pub fn describe_metrics() {
    metrics::describe_counter!(
        IDLE_RELEASED_TOTAL,
        "Claimed region-server processes released for owning, receiving and following nothing."
    );
}

/// One process as its host reports it.
#[derive(Clone, Copy, Debug)]
pub struct Reported<'a> {
    /// Its host (connected: a release can reach it).
    pub host: &'a str,
    /// Its name.
    pub process: &'a str,
    /// Idle in the warm pool.
    pub warm: bool,
    /// Owns at least one region.
    pub owns: bool,
}

/// Claimed processes with nothing to do, and since when.
#[derive(Debug)]
pub struct IdleProcesses {
    grace: Duration,
    since: HashMap<(String, String), Instant>,
}

impl IdleProcesses {
    /// Releases processes idle for `grace`.
    #[must_use]
    pub fn new(grace: Duration) -> IdleProcesses {
        IdleProcesses { grace, since: HashMap::new() }
    }

    /// One look at the connected hosts' processes (`reported`); `in_use` names every process the
    /// directory, a running migration or failover, or a standby names. Returns the processes to
    /// release now, as `(host, process)`. A process released is judged afresh from here: if it is
    /// still reported (the release did not reach its agent) it is released again after `grace`.
    pub fn check<'a>(
        &mut self,
        now: Instant,
        reported: impl IntoIterator<Item = Reported<'a>>,
        in_use: &HashSet<&str>,
    ) -> Vec<(String, String)> {
        let mut seen = HashSet::new();
        let mut release = Vec::new();
        for process in reported {
            let key = (process.host.to_owned(), process.process.to_owned());
            if process.warm || process.owns || in_use.contains(process.process) {
                continue;
            }
            let since = *self.since.entry(key.clone()).or_insert(now);
            if now.duration_since(since) >= self.grace {
                self.since.remove(&key);
                release.push(key);
            } else {
                seen.insert(key);
            }
        }
        // A process that is busy again, or no longer reported, starts afresh.
        self.since.retain(|key, _| seen.contains(key));
        release
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed<'a>(host: &'a str, process: &'a str) -> Reported<'a> {
        Reported { host, process, warm: false, owns: false }
    }

    #[test]
    fn a_claimed_process_with_nothing_to_do_is_released_after_the_grace_once() {
        let grace = Duration::from_secs(30);
        let mut idle = IdleProcesses::new(grace);
        let start = Instant::now();
        let none = HashSet::new();
        assert!(idle.check(start, [claimed("h1", "h1-p2")], &none).is_empty());
        assert!(idle.check(start + grace - Duration::from_millis(1), [claimed("h1", "h1-p2")], &none).is_empty());
        assert_eq!(idle.check(start + grace, [claimed("h1", "h1-p2")], &none), vec![("h1".into(), "h1-p2".into())]);
        // Still reported: the release did not reach it; another grace, then again.
        let later = start + grace + Duration::from_secs(1);
        assert!(idle.check(later, [claimed("h1", "h1-p2")], &none).is_empty());
        assert!(idle.check(later + grace - Duration::from_millis(1), [claimed("h1", "h1-p2")], &none).is_empty());
        assert_eq!(idle.check(later + grace, [claimed("h1", "h1-p2")], &none).len(), 1);
    }

    #[test]
    fn warm_owning_and_used_processes_are_kept_and_busy_moments_restart_the_clock() {
        let grace = Duration::from_secs(30);
        let mut idle = IdleProcesses::new(grace);
        let start = Instant::now();
        let used: HashSet<&str> = ["h2-p7"].into();
        let reported = [
            Reported { warm: true, ..claimed("h1", "h1-p1") },
            Reported { owns: true, ..claimed("h1", "h1-p3") },
            claimed("h2", "h2-p7"),
        ];
        for seconds in [0, 30, 60, 600] {
            assert!(idle.check(start + Duration::from_secs(seconds), reported, &used).is_empty());
        }
        // Idle for 20 s, then a standby for a moment, then idle again: 30 s from then.
        let none = HashSet::new();
        idle.check(start, [claimed("h1", "h1-p4")], &none);
        let busy: HashSet<&str> = ["h1-p4"].into();
        idle.check(start + Duration::from_secs(20), [claimed("h1", "h1-p4")], &busy);
        let again = start + Duration::from_secs(21);
        idle.check(again, [claimed("h1", "h1-p4")], &none);
        assert!(idle.check(again + grace - Duration::from_millis(1), [claimed("h1", "h1-p4")], &none).is_empty());
        assert_eq!(idle.check(again + grace, [claimed("h1", "h1-p4")], &none).len(), 1);
        // One that is no longer reported (its host lost it) is forgotten, not released.
        idle.check(start, [claimed("h3", "h3-p1")], &none);
        assert!(idle.check(start + grace, [], &none).is_empty());
        assert!(idle.check(start + grace, [claimed("h3", "h3-p1")], &none).is_empty(), "judged afresh");
    }
}
