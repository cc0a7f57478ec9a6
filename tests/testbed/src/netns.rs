//! Hosts as Linux network namespaces on one machine, joined by veth pairs through a bridge, with
//! per-link bandwidth limits (`tc` `tbf`) and links taken down and up (`ip link set`).
//!
//! Every namespace is named `baton-tb-<site>`; the bridge lives in `baton-tb-switch`, so the
//! machine's own namespace is never touched and traffic only flows between the test bed's
//! addresses (10.77.0.0/24). [`Testbed::create`] first removes whatever an earlier, crashed run
//! left (every `baton-tb-` namespace and every process in one); dropping the [`Testbed`] removes
//! everything again, also on a panic, and [`on_signals_clean_up`] does so on Ctrl-C or a CI job's
//! SIGTERM in the `baton-testbed` binary (a test process killed by its runner leaves its test bed
//! to the next run's start).

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use anyhow::{Context, bail};
use baton_harness::players::Site;

/// Prefix of every namespace of the test bed.
pub const PREFIX: &str = "baton-tb-";
const SWITCH: &str = "baton-tb-switch";
const BRIDGE: &str = "br0";
/// The device name of a host's link inside its namespace.
pub const DEVICE: &str = "uplink";

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
    let probe = format!("{PREFIX}can");
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
    let probe = format!("{PREFIX}probe");
    if run("ip", &["netns", "add", &probe]).is_err() {
        return false;
    }
    let added = run("tc", &["-n", &probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]).is_ok();
    let _ = run("ip", &["netns", "delete", &probe]);
    added
}

/// Kills every process in the test bed's namespaces and removes them (idempotent: what an
/// earlier run left, or this one). Goes on past a namespace it cannot remove and reports them all.
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
        if let Err(error) = run("ip", &["netns", "delete", &namespace]) {
            failures.push(format!("{error:#}"));
        }
    }
    if failures.is_empty() { Ok(()) } else { bail!("{}", failures.join("; ")) }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (call it first in `main`, before any other
/// thread starts, so that they inherit the mask) and waits for them on a thread of its own: one
/// of them removes the test bed and ends the process with 130.
pub fn on_signals_clean_up() -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    signals.thread_block().context("blocking signals")?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        if let Ok(signal) = signals.wait() {
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
    /// 10.77.0.N/24; removes what an earlier run left first.
    pub fn create(sites: &[SiteSpec]) -> anyhow::Result<Testbed> {
        if let Some(why) = unavailable() {
            bail!("{why}");
        }
        clean_up().context("removing an earlier test bed")?;
        let mut testbed = Testbed { sites: Vec::new() };
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
