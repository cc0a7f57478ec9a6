//! Hosts as Linux network namespaces on one machine, joined by veth pairs through a bridge, with
//! per-link bandwidth limits (`tc` `tbf`) and links taken down and up (`ip link set`).
//!
//! Every namespace is named `bt-<site>`; the bridge lives in `bt-switch`, so the machine's own
//! namespace is never touched and traffic only flows between the test bed's addresses
//! (10.77.0.0/24). [`Testbed::create`] first removes whatever an earlier, crashed run left (every
//! `bt-` namespace and every process in one); dropping the [`Testbed`] removes everything again,
//! also on a panic, and [`on_signals_clean_up`] does so on Ctrl-C or a CI job's SIGTERM.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use anyhow::{Context, bail};
use baton_harness::players::Site;

/// Prefix of every namespace of the test bed.
pub const PREFIX: &str = "bt-";
const SWITCH: &str = "bt-switch";
const BRIDGE: &str = "br0";
/// The device name of a host's link inside its namespace.
pub const DEVICE: &str = "uplink";

/// One site (a host, the gateway's machine, the players' network).
#[derive(Clone, Debug)]
pub struct SiteSpec {
    /// Short name (the namespace is `bt-<name>`; at most 8 characters).
    pub name: String,
    /// Its address's last byte (10.77.0.N).
    pub host_byte: u8,
}

/// The test bed; removed when dropped.
#[derive(Debug)]
pub struct Testbed {
    sites: Vec<(SiteSpec, Site)>,
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
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
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
    None
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

/// Kills every process in the test bed's namespaces and removes them (idempotent: what an
/// earlier run left, or this one).
pub fn clean_up() -> anyhow::Result<()> {
    for namespace in namespaces()? {
        for pid in output("ip", &["netns", "pids", &namespace])?.split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        run("ip", &["netns", "delete", &namespace])?;
    }
    Ok(())
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
            if let Err(error) = clean_up() {
                eprintln!("baton-testbed: cleaning up: {error:#}");
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

    /// Whether this kernel offers `netem` (the seeds' usual tool for delay and loss; the test bed
    /// uses only `tbf`).
    pub fn has_netem(&self) -> anyhow::Result<bool> {
        let (_, site) = self.sites.first().context("an empty test bed")?;
        let added = Command::new("tc")
            .args(["-n", &site.netns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"])
            .output()?
            .status
            .success();
        if added {
            run("tc", &["-n", &site.netns, "qdisc", "del", "dev", "lo", "root"])?;
        }
        Ok(added)
    }

    /// Moves the calling thread into site `name`'s namespace: sockets it opens from then on are
    /// in that namespace (use it in a runtime's `on_thread_start`).
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
