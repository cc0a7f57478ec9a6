//! Hosts as Linux network namespaces on one machine, joined by veth pairs through a bridge, with
//! per-link bandwidth limits (`tc` `tbf`) and links taken down and up (`ip link set`).
//!
//! Every namespace is named `baton-tb-<site>`; the bridge lives in `baton-tb-switch`, so the
//! machine's own namespace is never touched and traffic only flows between the test bed's
//! addresses (10.77.0.0/24). One test bed runs on a machine at a time: [`Testbed::create`] waits
//! for the lock on [`LOCK_PATH`] that a live test bed holds (a test started beside a soak waits
//! for it instead of removing it), then removes whatever an earlier, crashed run left (every
//! `baton-tb-` namespace and every process in one); dropping the [`Testbed`] removes everything
//! again, also on a panic, and [`on_signals_clean_up`] does so on Ctrl-C or a CI job's SIGTERM in
//! the `baton-testbed` binary (a test process killed by its runner leaves its test bed to the next
//! run's start; the kernel releases its lock).

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use baton_harness::players::Site;

/// Prefix of every namespace of the test bed.
pub const PREFIX: &str = "baton-tb-";
const SWITCH: &str = "baton-tb-switch";
const BRIDGE: &str = "br0";
/// The device name of a host's link inside its namespace.
pub const DEVICE: &str = "uplink";
/// The file whose lock a live test bed holds (it names the holder's pid).
pub const LOCK_PATH: &str = "/run/baton-testbed.lock";

/// Whether this process holds the lock (its signal handler may then remove the test bed; a
/// process still waiting for the lock must not remove another's).
static HOLDING: AtomicBool = AtomicBool::new(false);

/// The machine's test bed lock, held until dropped (or until the process ends).
#[derive(Debug)]
pub struct MachineLock {
    _file: File,
}

impl MachineLock {
    /// Takes the lock, waiting (and saying so once) while another process holds it.
    pub fn wait() -> anyhow::Result<MachineLock> {
        MachineLock::take(true)?.context("the test bed lock")
    }

    /// Takes the lock if no other process holds it: `None` when one does.
    pub fn try_now() -> anyhow::Result<Option<MachineLock>> {
        MachineLock::take(false)
    }

    fn take(wait: bool) -> anyhow::Result<Option<MachineLock>> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(LOCK_PATH)
            .with_context(|| format!("opening {LOCK_PATH}"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) if wait => {
                eprintln!(
                    "baton-testbed: another test bed is in use on this machine ({}); waiting for it to end",
                    MachineLock::holder()
                );
                file.lock().with_context(|| format!("waiting for the lock on {LOCK_PATH}"))?;
            }
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(error)) => {
                return Err(error).with_context(|| format!("locking {LOCK_PATH}"));
            }
        }
        file.set_len(0).and_then(|()| write!(file, "pid {}", std::process::id())).context("naming the holder")?;
        HOLDING.store(true, Ordering::SeqCst);
        Ok(Some(MachineLock { _file: file }))
    }

    /// Who holds the lock, as its file says.
    #[must_use]
    pub fn holder() -> String {
        std::fs::read_to_string(LOCK_PATH)
            .ok()
            .map(|text| text.trim().to_owned())
            .filter(|holder| !holder.is_empty())
            .unwrap_or_else(|| "holder unknown".to_owned())
    }
}

impl Drop for MachineLock {
    fn drop(&mut self) {
        HOLDING.store(false, Ordering::SeqCst);
    }
}

/// One site (a host, the gateway's machine, the players' network).
#[derive(Clone, Debug)]
pub struct SiteSpec {
    /// Short name (the namespace is `baton-tb-<name>`; at most 8 characters).
    pub name: String,
    /// Its address's last byte (10.77.0.N).
    pub host_byte: u8,
}

/// The test bed; removed when dropped.
#[derive(Debug)]
pub struct Testbed {
    sites: Vec<(SiteSpec, Site)>,
    /// Released after the test bed is removed (fields drop after `Drop::drop`).
    _lock: MachineLock,
}

/// Why the test bed cannot run here, if it cannot: it needs root (namespaces, links, qdiscs) and
/// `ip` and `tc` from iproute2.
#[must_use]
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("the test bed needs root (network namespaces, veth links and tc qdiscs)".into());
    }
    for tool in ["ip", "tc"] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Some(format!("the test bed needs `{tool}` (Debian: apt-get install iproute2)"));
        }
    }
    // Root in a container may still lack the right to make namespaces.
    let probe = probe_name("can");
    if let Err(error) = run("ip", &["netns", "add", &probe]) {
        return Some(format!("the test bed cannot make network namespaces here: {error:#}"));
    }
    let _ = run("ip", &["netns", "delete", &probe]);
    None
}

/// Whether this kernel offers `netem` (the usual tool for delay and loss; the test bed shapes
/// links with `tbf` only, which every kernel here has). Tried in a namespace of its own.
#[must_use]
pub fn netem_available() -> bool {
    let probe = probe_name("probe");
    if run("ip", &["netns", "add", &probe]).is_err() {
        return false;
    }
    let added = run("tc", &["-n", &probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]).is_ok();
    let _ = run("ip", &["netns", "delete", &probe]);
    added
}

/// A namespace name for a probe of `what`, of this process and this call alone: probes run before
/// the machine's lock is taken, beside another run's test bed or probes.
fn probe_name(what: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!("{PREFIX}{what}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Kills every process in the test bed's namespaces and removes them (idempotent: what an
/// earlier run left, or this one). Goes on past a namespace it cannot remove and reports them all
/// (one gone meanwhile, another process's probe, is not a failure).
pub fn clean_up() -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for namespace in namespaces()? {
        // A process may be starting in it while it is emptied: kill until none is left.
        for _ in 0..10 {
            let pids = output("ip", &["netns", "pids", &namespace]).unwrap_or_default();
            let pids: Vec<i32> = pids.split_whitespace().filter_map(|pid| pid.parse().ok()).collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if let Err(error) = run("ip", &["netns", "delete", &namespace])
            && namespaces().is_ok_and(|left| left.contains(&namespace))
        {
            failures.push(format!("{error:#}"));
        }
    }
    if failures.is_empty() { Ok(()) } else { bail!("{}", failures.join("; ")) }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (call it first in `main`, before any other
/// thread starts, so that they inherit the mask) and waits for them on a thread of its own: one
/// of them removes the test bed (when this process holds the machine's lock: one still waiting
/// for it leaves the other's alone) and ends the process with 130.
pub fn on_signals_clean_up() -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    signals.thread_block().context("blocking signals")?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        if let Ok(signal) = signals.wait() {
            if !HOLDING.load(Ordering::SeqCst) {
                eprintln!("baton-testbed: {signal}: this process holds no test bed; nothing to remove");
                std::process::exit(130);
            }
            eprintln!("baton-testbed: {signal}: removing the test bed");
            // The main thread may be making a namespace meanwhile: go again until none is left.
            for _ in 0..5 {
                if let Err(error) = clean_up() {
                    eprintln!("baton-testbed: cleaning up: {error:#}");
                }
                if namespaces().is_ok_and(|left| left.is_empty()) {
                    break;
                }
            }
            std::process::exit(130);
        }
    })?;
    Ok(())
}

impl Testbed {
    /// Creates one namespace per site, each with a link to the switch and the address
    /// 10.77.0.N/24; waits while another test bed runs on this machine, then removes what an
    /// earlier run left.
    pub fn create(sites: &[SiteSpec]) -> anyhow::Result<Testbed> {
        if let Some(why) = unavailable() {
            bail!("{why}");
        }
        let lock = MachineLock::wait()?;
        clean_up().context("removing an earlier test bed")?;
        let mut testbed = Testbed { sites: Vec::new(), _lock: lock };
        run("ip", &["netns", "add", SWITCH])?;
        run("ip", &["-n", SWITCH, "link", "add", BRIDGE, "type", "bridge"])?;
        run("ip", &["-n", SWITCH, "link", "set", BRIDGE, "up"])?;
        for spec in sites {
            if spec.name.len() > 8 || spec.name.is_empty() {
                bail!("a site's name has 1 to 8 characters: {:?}", spec.name);
            }
            let namespace = format!("{PREFIX}{}", spec.name);
            let port = format!("p-{}", spec.name);
            let ip = Ipv4Addr::new(10, 77, 0, spec.host_byte);
            run("ip", &["netns", "add", &namespace])?;
            testbed.sites.push((spec.clone(), Site { netns: namespace.clone(), ip: IpAddr::V4(ip) }));
            run("ip", &["-n", &namespace, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &["-n", &namespace, "link", "add", DEVICE, "type", "veth", "peer", "name", &port, "netns", SWITCH],
            )?;
            run("ip", &["-n", &namespace, "addr", "add", &format!("{ip}/24"), "dev", DEVICE])?;
            run("ip", &["-n", &namespace, "link", "set", DEVICE, "up"])?;
            run("ip", &["-n", SWITCH, "link", "set", &port, "master", BRIDGE])?;
            run("ip", &["-n", SWITCH, "link", "set", &port, "up"])?;
        }
        Ok(testbed)
    }

    /// The site named `name`.
    pub fn site(&self, name: &str) -> anyhow::Result<Site> {
        self.sites
            .iter()
            .find(|(spec, _)| spec.name == name)
            .map(|(_, site)| site.clone())
            .with_context(|| format!("no site {name} in the test bed"))
    }

    fn namespace(&self, name: &str) -> anyhow::Result<String> {
        Ok(self.site(name)?.netns)
    }

    /// Limits the link of site `name` to `mbit` megabits per second each way, with a queue of
    /// `queue_ms` milliseconds at that rate (a token bucket on both ends of the link).
    pub fn limit(&self, name: &str, mbit: u32, queue_ms: u32) -> anyhow::Result<()> {
        let namespace = self.namespace(name)?;
        let port = format!("p-{name}");
        let rate = format!("{mbit}mbit");
        let latency = format!("{queue_ms}ms");
        for (space, device) in [(namespace.as_str(), DEVICE), (SWITCH, port.as_str())] {
            run(
                "tc",
                &[
                    "-n", space, "qdisc", "replace", "dev", device, "root", "tbf", "rate", &rate, "burst", "64kb",
                    "latency", &latency,
                ],
            )?;
        }
        Ok(())
    }

    /// Takes the link of site `name` down or brings it back up.
    pub fn set_link(&self, name: &str, up: bool) -> anyhow::Result<()> {
        let namespace = self.namespace(name)?;
        run("ip", &["-n", &namespace, "link", "set", DEVICE, if up { "up" } else { "down" }])
    }

    /// Moves the calling thread into the network namespace `netns`: sockets it opens from then on
    /// are in that namespace (use it in a runtime's `on_thread_start`).
    pub fn enter(netns: &str) -> anyhow::Result<()> {
        let file = std::fs::File::open(format!("/run/netns/{netns}")).with_context(|| format!("opening {netns}"))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {netns}"))?;
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Err(error) = clean_up() {
            eprintln!("removing the test bed: {error:#}");
        }
    }
}

/// Runs `ip`/`tc` with `args`; fails with what it printed.
fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The test bed's namespaces that exist now.
fn namespaces() -> anyhow::Result<Vec<String>> {
    Ok(output("ip", &["netns", "list"])?
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(PREFIX))
        .map(str::to_owned)
        .collect())
}
