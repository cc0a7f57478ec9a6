//! The test bed itself (links that go down and come back, limits in place, nothing left behind,
//! one test bed on a machine at a time),
//! its short interference run (a region moves across a shaped link; nothing is lost) and one cell
//! of the fault matrix (a source killed at the freeze). They need root and skip, saying so,
//! without it (CI runs as root).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton_runtime::fault_point::FaultPhase;
use baton_testbed::interference::{self, Mode, Options};
use baton_testbed::matrix::{self, Cell, Fault};
use baton_testbed::netns::{self, MachineLock, SiteSpec, Testbed};

/// One test bed test at a time in this process (`cargo test` runs them as threads; nextest runs
/// them one at a time anyway): each checks the machine's namespaces and lock between its steps.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn skip() -> bool {
    if let Some(why) = netns::unavailable() {
        eprintln!("skipped: {why}");
        return true;
    }
    false
}

fn leftovers() -> Vec<String> {
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|line| line.starts_with(netns::PREFIX))
        .map(str::to_owned)
        .collect()
}

/// A UDP echo in `netns` at `address`, answering until `stop` is set.
fn echo(netns: String, address: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (ready, bound) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        Testbed::enter(&netns).unwrap();
        let socket = UdpSocket::bind(address).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        ready.send(()).unwrap();
        let mut buffer = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((length, from)) = socket.recv_from(&mut buffer) {
                let _ = socket.send_to(&buffer[..length], from);
            }
        }
    });
    bound.recv().unwrap();
    handle
}

/// From `netns`, sends to `to` until an answer comes back (true) or `within` passes (false).
fn reaches(netns: &str, to: SocketAddr, within: Duration) -> bool {
    let netns = netns.to_owned();
    std::thread::spawn(move || {
        Testbed::enter(&netns).unwrap();
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let deadline = Instant::now() + within;
        let mut buffer = [0u8; 64];
        while Instant::now() < deadline {
            // A link just brought up may refuse to send for a moment.
            let _ = socket.send_to(b"ping", to);
            if let Ok((length, _)) = socket.recv_from(&mut buffer) {
                return &buffer[..length] == b"ping";
            }
        }
        false
    })
    .join()
    .unwrap()
}

#[test]
fn a_live_test_bed_holds_the_machine_so_another_run_cannot_remove_it() {
    let _serial = serial();
    if skip() {
        return;
    }
    let testbed = Testbed::create(&[SiteSpec { name: "la".into(), host_byte: 1 }]).unwrap();
    // Another run (another open of the lock file, as another process makes) finds it taken: a
    // second `Testbed::create` waits on it, and `baton-testbed clean` refuses.
    assert!(MachineLock::try_now().unwrap().is_none(), "the live test bed holds the lock");
    assert_eq!(MachineLock::holder(), format!("pid {}", std::process::id()));
    assert!(leftovers().contains(&format!("{}la", netns::PREFIX)));
    drop(testbed);
    assert!(leftovers().is_empty(), "{:?}", leftovers());
    let lock = MachineLock::try_now().unwrap();
    assert!(lock.is_some(), "a removed test bed lets the machine go");
}

#[test]
fn links_are_limited_go_down_and_come_back_and_nothing_is_left_behind() {
    let _serial = serial();
    if skip() {
        return;
    }
    let sites = [SiteSpec { name: "ta".into(), host_byte: 1 }, SiteSpec { name: "tb".into(), host_byte: 2 }];
    let testbed = Testbed::create(&sites).unwrap();
    let (a, b) = (testbed.site("ta").unwrap(), testbed.site("tb").unwrap());
    testbed.limit("ta", 100, 50).unwrap();
    let qdisc = Command::new("tc").args(["-n", &a.netns, "qdisc", "show", "dev", netns::DEVICE]).output().unwrap();
    let qdisc = String::from_utf8_lossy(&qdisc.stdout).into_owned();
    assert!(qdisc.contains("tbf") && qdisc.contains("100Mbit"), "{qdisc}");
    let server = SocketAddr::new(b.ip, 9000);
    let stop = Arc::new(AtomicBool::new(false));
    let answering = echo(b.netns.clone(), server, stop.clone());
    assert!(reaches(&a.netns, server, Duration::from_secs(10)), "the link carries traffic");
    testbed.set_link("ta", false).unwrap();
    // Down: nothing gets through however long one tries (a short try is enough to see it).
    assert!(!reaches(&a.netns, server, Duration::from_millis(300)), "a link that is down carries nothing");
    testbed.set_link("ta", true).unwrap();
    assert!(reaches(&a.netns, server, Duration::from_secs(10)), "the link is back");
    stop.store(true, Ordering::Relaxed);
    answering.join().unwrap();
    drop(testbed);
    assert_eq!(leftovers(), Vec::<String>::new(), "every namespace is removed");
}

#[test]
fn a_region_moves_across_a_shaped_link_without_losing_a_player_or_an_input() {
    let _serial = serial();
    if skip() {
        return;
    }
    let options = Options::quick();
    let report = interference::run(Mode::Paced, &options).unwrap();
    assert!(report.committed, "{report:?}");
    assert_eq!((report.lost, report.disconnects, report.not_applied_once), (0, 0, 0), "{report:?}");
    assert!(report.state_bytes >= options.state_mb * 900_000, "the region's state crossed the link: {report:?}");
    assert!(report.samples > 0, "the other regions' players played during the move: {report:?}");
    assert_eq!(leftovers(), Vec::<String>::new(), "every namespace is removed");
}

/// One cell of the fault matrix end to end: the source's region server is killed at the freeze
/// (its thread held there by the fault point). The target commits if the final delta left the
/// source before it died, else the handoff aborts and the region is restored elsewhere; either
/// way nothing is lost.
#[test]
fn a_source_killed_at_the_freeze_leaves_one_owner_and_every_input_applied_once() {
    let _serial = serial();
    if skip() {
        return;
    }
    let report = matrix::run(Cell { phase: FaultPhase::Frozen, fault: Fault::KillSource }).unwrap();
    eprintln!("{report:?}");
    assert_eq!(report.held, "source", "the source stopped at the freeze: {report:?}");
    assert!(matches!(report.outcome.as_str(), "committed" | "aborted+failover"), "{report:?}");
    assert!(report.single_owner, "{report:?}");
    assert_eq!((report.inputs_lost, report.inputs_duplicated, report.disconnects), (0, 0, 0), "{report:?}");
    assert!(report.serving_after_ms.is_some(), "the region serves again: {report:?}");
    assert!(report.held_up(), "{report:?}");
    assert_eq!(leftovers(), Vec::<String>::new(), "every namespace is removed");
}
