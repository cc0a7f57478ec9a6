//! Fault points: a region thread that reaches a chosen phase of a handoff, of a border crossing
//! or of a failover stops there, says so in a file, and waits until it is told to go on, so a
//! fault (a killed process, a link taken down) can be injected at exactly that phase. Used by the
//! test bed's fault matrix (`baton-testbed matrix`); never set in production.
//!
//! Set with the environment variable [`FAULT_POINT_VARIABLE`] as `<phase>:<path>`, for example
//! `frozen:/tmp/fault`. The first region thread of any process sharing `<path>` that enters
//! `<phase>` creates `<path>` (exclusively: a fault point fires once per path, across processes)
//! with one line, `<pid> <region> <phase>`, then waits until `<path>.release` exists, for at most
//! [`FaultPoint::MOST_HELD`]. Phases ([`FaultPhase`]): of a handoff, the source's `prepare`,
//! `snapshot`, `rounds`, `frozen` and `handed_off`, and the target's `committing`; of a border
//! crossing, `emigrated` (the region the avatar left sent it to the player's gateway) and
//! `immigrated` (the region it entered took it in and answered `Arrived`); of a failover that
//! promotes a hot standby, `promoting` (the standby asked the authority for the region) and
//! `promoted` (the swap won: the standby owns the region and has announced it). `<region>` in the
//! file is the region whose thread stopped. At a crossing the line has a fourth word, the other
//! region of the crossing (where the avatar went, at `emigrated`; where it came from, at
//! `immigrated`), when the thread knows it.
//!
//! `armed:<path>` takes the phase from the file `<path>.phase` instead, read when a region thread
//! enters a phase (none there: the point is disarmed). A long run arms it again and again: it
//! writes the next phase there and removes `<path>` and `<path>.release`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use baton_sdk::handoff::{FollowerPhase, SourcePhase, TargetPhase};

/// The environment variable that sets a fault point.
pub const FAULT_POINT_VARIABLE: &str = "BATON_FAULT_POINT";

/// A phase a fault point can stop at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPhase {
    /// The source asked the target to accept (`Begin` sent).
    Prepare,
    /// The source streams the snapshot.
    Snapshot,
    /// The source streams delta rounds.
    Rounds,
    /// The source froze and sent the final delta.
    Frozen,
    /// The target asked the authority for the region (its commit).
    Committing,
    /// The source learned the target owns the region.
    HandedOff,
    /// A border crossing: the region an avatar left sent it to the player's gateway.
    Emigrated,
    /// A border crossing: the region an avatar entered took it in and answered `Arrived`.
    Immigrated,
    /// A failover: the hot standby being promoted asked the authority for the region.
    Promoting,
    /// A failover: the promotion's swap won; the standby owns the region and announced it.
    Promoted,
}

impl FaultPhase {
    /// The phases of a handoff, in order.
    pub const HANDOFF: [FaultPhase; 6] = [
        FaultPhase::Prepare,
        FaultPhase::Snapshot,
        FaultPhase::Rounds,
        FaultPhase::Frozen,
        FaultPhase::Committing,
        FaultPhase::HandedOff,
    ];

    /// The phases of a border crossing, in order.
    pub const CROSSING: [FaultPhase; 2] = [FaultPhase::Emigrated, FaultPhase::Immigrated];

    /// The phases of a failover that promotes a hot standby, in order.
    pub const FAILOVER: [FaultPhase; 2] = [FaultPhase::Promoting, FaultPhase::Promoted];

    /// Every phase: a handoff's, a crossing's, then a failover's.
    pub const ALL: [FaultPhase; 10] = [
        FaultPhase::Prepare,
        FaultPhase::Snapshot,
        FaultPhase::Rounds,
        FaultPhase::Frozen,
        FaultPhase::Committing,
        FaultPhase::HandedOff,
        FaultPhase::Emigrated,
        FaultPhase::Immigrated,
        FaultPhase::Promoting,
        FaultPhase::Promoted,
    ];

    /// Whether it is a phase of a border crossing.
    #[must_use]
    pub fn is_crossing(self) -> bool {
        FaultPhase::CROSSING.contains(&self)
    }

    /// Whether it is a phase of a failover.
    #[must_use]
    pub fn is_failover(self) -> bool {
        FaultPhase::FAILOVER.contains(&self)
    }

    /// `handoff`, `crossing` or `failover`: the operation the phase is part of.
    #[must_use]
    pub fn operation(self) -> &'static str {
        if self.is_crossing() {
            "crossing"
        } else if self.is_failover() {
            "failover"
        } else {
            "handoff"
        }
    }

    /// The name used in [`FAULT_POINT_VARIABLE`].
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            FaultPhase::Prepare => "prepare",
            FaultPhase::Snapshot => "snapshot",
            FaultPhase::Rounds => "rounds",
            FaultPhase::Frozen => "frozen",
            FaultPhase::Committing => "committing",
            FaultPhase::HandedOff => "handed_off",
            FaultPhase::Emigrated => "emigrated",
            FaultPhase::Immigrated => "immigrated",
            FaultPhase::Promoting => "promoting",
            FaultPhase::Promoted => "promoted",
        }
    }

    /// The phase named `name`.
    #[must_use]
    pub fn parse(name: &str) -> Option<FaultPhase> {
        FaultPhase::ALL.into_iter().find(|phase| phase.name() == name)
    }

    /// The phase a region thread is in, from its handoff source's and target's phases, its hot
    /// standby's (`standby`), the phase it was in before (`was`) and whether it owns the region
    /// now (`owns`): a thread that was promoting and owns the region is `promoted`.
    #[must_use]
    pub fn of(
        source: Option<SourcePhase>,
        target: TargetPhase,
        standby: Option<FollowerPhase>,
        was: Option<FaultPhase>,
        owns: bool,
    ) -> Option<FaultPhase> {
        match (source, target, standby) {
            (_, _, Some(FollowerPhase::Promoting)) => Some(FaultPhase::Promoting),
            (None, _, None) if owns && matches!(was, Some(FaultPhase::Promoting | FaultPhase::Promoted)) => {
                Some(FaultPhase::Promoted)
            }
            (_, TargetPhase::Committing, _) => Some(FaultPhase::Committing),
            (Some(SourcePhase::Prepare), _, _) => Some(FaultPhase::Prepare),
            (Some(SourcePhase::Snapshot), _, _) => Some(FaultPhase::Snapshot),
            (Some(SourcePhase::Rounds), _, _) => Some(FaultPhase::Rounds),
            (Some(SourcePhase::Frozen), _, _) => Some(FaultPhase::Frozen),
            (Some(SourcePhase::HandedOff), _, _) => Some(FaultPhase::HandedOff),
            _ => None,
        }
    }
}

/// A configured fault point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultPoint {
    /// Where to stop; `None`: the phase named in the file `<path>.phase`, if any.
    pub phase: Option<FaultPhase>,
    /// The file that says it stopped (and, with `.release` added, lets it go on).
    pub path: PathBuf,
}

impl FaultPoint {
    /// The longest a region thread waits at a fault point.
    pub const MOST_HELD: Duration = Duration::from_secs(10);

    /// The fault point [`FAULT_POINT_VARIABLE`] sets, if it is set; an error says what is wrong
    /// with its value.
    pub fn from_env() -> Result<Option<FaultPoint>, String> {
        match std::env::var(FAULT_POINT_VARIABLE) {
            Ok(value) => FaultPoint::parse(&value).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!("{FAULT_POINT_VARIABLE} is not UTF-8")),
        }
    }

    /// Parses `<phase>:<path>`.
    pub fn parse(value: &str) -> Result<FaultPoint, String> {
        let (phase, path) = value
            .split_once(':')
            .ok_or_else(|| format!("{FAULT_POINT_VARIABLE}={value:?}: expected <phase>:<path>"))?;
        let phase = match phase {
            "armed" => None,
            name => Some(FaultPhase::parse(name).ok_or_else(|| {
                let names: Vec<&str> = FaultPhase::ALL.iter().map(|phase| phase.name()).collect();
                format!("{FAULT_POINT_VARIABLE}: unknown phase {name:?} (armed, or one of {})", names.join(", "))
            })?),
        };
        if path.is_empty() {
            return Err(format!("{FAULT_POINT_VARIABLE}={value:?}: the path is empty"));
        }
        Ok(FaultPoint { phase, path: PathBuf::from(path) })
    }

    /// The file whose existence lets a held thread go on.
    #[must_use]
    pub fn release_path(&self) -> PathBuf {
        self.beside(".release")
    }

    /// The file that names the phase of an `armed` point.
    #[must_use]
    pub fn phase_path(&self) -> PathBuf {
        self.beside(".phase")
    }

    fn beside(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(suffix);
        PathBuf::from(name)
    }

    /// The phase to stop at now.
    fn wanted(&self) -> Option<FaultPhase> {
        self.phase.or_else(|| FaultPhase::parse(std::fs::read_to_string(self.phase_path()).ok()?.trim()))
    }

    /// Called by a region thread when it enters `phase`: holds the thread if this is the fault
    /// point's phase and the point has not fired yet (in any process); returns whether it held.
    pub fn reached(&self, phase: FaultPhase, region: u64) -> bool {
        self.hold(phase, region, None)
    }

    /// As [`FaultPoint::reached`], for a border crossing of `region` whose other region is `peer`
    /// (when the thread knows it), which the file names too.
    pub fn crossed(&self, phase: FaultPhase, region: u64, peer: Option<u64>) -> bool {
        self.hold(phase, region, peer)
    }

    fn hold(&self, phase: FaultPhase, region: u64, peer: Option<u64>) -> bool {
        if self.wanted() != Some(phase) {
            return false;
        }
        let Ok(mut file) = OpenOptions::new().write(true).create_new(true).open(&self.path) else {
            return false;
        };
        let peer = peer.map(|peer| format!(" {peer}")).unwrap_or_default();
        let written =
            writeln!(file, "{} {region} {}{peer}", std::process::id(), phase.name()).and_then(|()| file.sync_all());
        drop(file);
        if let Err(error) = written {
            tracing::warn!(%error, path = %self.path.display(), "writing the fault point's file");
        }
        tracing::warn!(region, phase = phase.name(), "held at a fault point");
        let release = self.release_path();
        let until = Instant::now() + FaultPoint::MOST_HELD;
        while !release.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_point_is_a_phase_and_a_path_and_bad_values_say_what_is_wrong() {
        let point = FaultPoint::parse("frozen:/tmp/x:y").unwrap();
        assert_eq!(point, FaultPoint { phase: Some(FaultPhase::Frozen), path: PathBuf::from("/tmp/x:y") });
        assert_eq!(point.release_path(), PathBuf::from("/tmp/x:y.release"));
        let armed = FaultPoint::parse("armed:/tmp/p").unwrap();
        assert_eq!(armed, FaultPoint { phase: None, path: PathBuf::from("/tmp/p") });
        assert_eq!(armed.phase_path(), PathBuf::from("/tmp/p.phase"));
        for phase in FaultPhase::ALL {
            assert_eq!(FaultPhase::parse(phase.name()), Some(phase));
        }
        assert!(FaultPoint::parse("frozen").unwrap_err().contains("<phase>:<path>"));
        assert!(FaultPoint::parse("melted:/tmp/x").unwrap_err().contains("unknown phase \"melted\""));
        assert!(FaultPoint::parse("frozen:").unwrap_err().contains("path is empty"));
    }

    #[test]
    fn the_phase_of_a_region_thread_comes_from_its_source_and_its_target() {
        let phase = |source, target| FaultPhase::of(source, target, None, None, true);
        assert_eq!(phase(None, TargetPhase::Committing), Some(FaultPhase::Committing));
        assert_eq!(phase(None, TargetPhase::Receiving), None);
        assert_eq!(phase(None, TargetPhase::Idle), None);
        assert_eq!(phase(Some(SourcePhase::Prepare), TargetPhase::Idle), Some(FaultPhase::Prepare));
        assert_eq!(phase(Some(SourcePhase::Snapshot), TargetPhase::Idle), Some(FaultPhase::Snapshot));
        assert_eq!(phase(Some(SourcePhase::Rounds), TargetPhase::Idle), Some(FaultPhase::Rounds));
        assert_eq!(phase(Some(SourcePhase::Frozen), TargetPhase::Idle), Some(FaultPhase::Frozen));
        assert_eq!(phase(Some(SourcePhase::Settling), TargetPhase::Idle), None);
        assert_eq!(phase(Some(SourcePhase::HandedOff), TargetPhase::Idle), Some(FaultPhase::HandedOff));
        assert_eq!(phase(Some(SourcePhase::Retired), TargetPhase::Idle), None);
        assert_eq!(phase(Some(SourcePhase::Aborted), TargetPhase::Idle), None);
    }

    #[test]
    fn a_standby_is_promoting_while_it_asks_and_promoted_once_it_owns() {
        let phase = |standby, was, owns| FaultPhase::of(None, TargetPhase::Idle, standby, was, owns);
        assert_eq!(phase(Some(FollowerPhase::Following), None, false), None);
        assert_eq!(phase(Some(FollowerPhase::Detached), None, false), None);
        assert_eq!(phase(Some(FollowerPhase::Promoting), None, false), Some(FaultPhase::Promoting));
        // The swap won: the thread owns the region and has no follower any more.
        assert_eq!(phase(None, Some(FaultPhase::Promoting), true), Some(FaultPhase::Promoted));
        assert_eq!(phase(None, Some(FaultPhase::Promoted), true), Some(FaultPhase::Promoted));
        // Refused: it owns nothing.
        assert_eq!(phase(None, Some(FaultPhase::Promoting), false), None);
        // An owner that was never promoting is no failover's.
        assert_eq!(phase(None, None, true), None);
        assert_eq!(phase(None, Some(FaultPhase::HandedOff), true), None);
        for phase in FaultPhase::ALL {
            let kinds = [!phase.is_crossing() && !phase.is_failover(), phase.is_crossing(), phase.is_failover()];
            assert_eq!(kinds.iter().filter(|kind| **kind).count(), 1, "{phase:?}");
        }
        assert_eq!(FaultPhase::Promoted.operation(), "failover");
        assert_eq!(FaultPhase::Emigrated.operation(), "crossing");
        assert_eq!(FaultPhase::Rounds.operation(), "handoff");
    }

    #[test]
    fn a_fault_point_holds_the_first_thread_to_reach_its_phase_until_released_and_only_once() {
        let folder = std::env::temp_dir().join(format!("baton-fault-point-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let point = FaultPoint { phase: Some(FaultPhase::Rounds), path: folder.join("point") };
        let _ = std::fs::remove_file(&point.path);
        let _ = std::fs::remove_file(point.release_path());
        assert!(!point.reached(FaultPhase::Snapshot, 7), "another phase passes");
        assert!(!point.path.exists());
        let held = std::thread::spawn({
            let point = point.clone();
            move || point.reached(FaultPhase::Rounds, 7)
        });
        // The thread says where it stopped, then waits for the release.
        while !std::fs::read_to_string(&point.path).is_ok_and(|text| text.ends_with('\n')) {
            std::thread::yield_now();
        }
        let text = std::fs::read_to_string(&point.path).unwrap();
        assert_eq!(text, format!("{} 7 rounds\n", std::process::id()));
        assert!(!held.is_finished(), "held until released");
        std::fs::write(point.release_path(), b"").unwrap();
        assert!(held.join().unwrap());
        assert!(!point.reached(FaultPhase::Rounds, 7), "a fault point fires once");
        std::fs::remove_dir_all(&folder).unwrap();
    }

    #[test]
    fn an_armed_fault_point_stops_at_the_phase_its_file_names_each_time_it_is_armed_again() {
        let folder = std::env::temp_dir().join(format!("baton-fault-armed-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let point = FaultPoint { phase: None, path: folder.join("point") };
        assert!(!point.reached(FaultPhase::Frozen, 1), "disarmed: no phase named");
        for phase in [FaultPhase::Frozen, FaultPhase::Prepare] {
            let _ = std::fs::remove_file(&point.path);
            std::fs::write(point.phase_path(), format!("{}\n", phase.name())).unwrap();
            // Released before it is reached: the thread goes on at once.
            std::fs::write(point.release_path(), b"").unwrap();
            let other = if phase == FaultPhase::Frozen { FaultPhase::Rounds } else { FaultPhase::Snapshot };
            assert!(!point.reached(other, 1), "another phase passes");
            assert!(point.reached(phase, 1), "{phase:?} is the armed one");
            assert!(std::fs::read_to_string(&point.path).unwrap().ends_with(&format!(" 1 {}\n", phase.name())));
            assert!(!point.reached(phase, 1), "once per arming");
        }
        let _ = std::fs::remove_file(&point.path);
        std::fs::write(point.phase_path(), "immigrated\n").unwrap();
        std::fs::write(point.release_path(), b"").unwrap();
        assert!(point.crossed(FaultPhase::Immigrated, 3, Some(4)));
        assert!(
            std::fs::read_to_string(&point.path).unwrap().ends_with(" 3 immigrated 4\n"),
            "the crossing's other region"
        );
        std::fs::remove_dir_all(&folder).unwrap();
    }
}
