//! Hot standbys: for every region that wants one, a warm process on another host follows the
//! owner tick by tick (protocol.md §14), so that a failover promotes it instead of restoring the
//! newest checkpoint.
//!
//! [`Placement`] is one standby's life as a state machine without I/O: claim a warm process on a
//! host other than the owner's (anti-affinity), prepare an empty slot there, tell the owner to
//! feed it, and watch it hold ticks. It ends (releasing the process) when the feed or the standby
//! fails, when the region's owner changes (a migration, a failover that did not promote it), or
//! when a step takes too long; [`Standbys`] then makes a new one after a pause. A failover takes a
//! placement that holds a tick of the lost owner's epoch out of the table ([`Standbys::take`]) and
//! promotes its process.
//!
//! protocol.md §14: a coordinator that restarts has lost its table while each owner goes on
//! feeding its standby (and refuses to feed a second one). So a process that reports holding a
//! tick of the region's owner, and that no placement of the region knows, is adopted as the
//! region's standby ([`StandbyState::adopt`]) unless it was released or taken by a failover in
//! the last minute; it replaces a placement that is not yet holding.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_wire::authority::OwnershipAuthority;
use baton_wire::serve::{ServerCommand, ServerEvent};
use baton_wire::{Epoch, RegionId};
use serde::Serialize;

use crate::directory::Directory;
use crate::hosts::{ClaimResult, Happened, Hosts, OwnerState, ProcessEvent};
use crate::migrations::{Action as HostAction, Migrations};

/// Standby settings.
#[derive(Clone, Copy, Debug)]
pub struct StandbySettings {
    /// Whether regions have a standby unless created without one.
    pub by_default: bool,
    /// A claim must be answered within this.
    pub claim: Duration,
    /// The prepared slot must be reported within this.
    pub prepare: Duration,
    /// The standby must hold its first tick within this of being fed (the snapshot's time).
    pub first_hold: Duration,
    /// A standby that lost its owner's feed (it keeps what it holds, for a failover) is released
    /// after this if no failover took it.
    pub detached_keep: Duration,
    /// After a standby of a region failed, the next is tried after this.
    pub retry_after: Duration,
}

impl Default for StandbySettings {
    fn default() -> Self {
        StandbySettings {
            by_default: true,
            claim: Duration::from_secs(5),
            prepare: Duration::from_secs(10),
            first_hold: Duration::from_secs(60),
            detached_keep: Duration::from_secs(15),
            retry_after: Duration::from_secs(5),
        }
    }
}

/// The region's owner, as the directory and hosts name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerAt {
    /// Its host.
    pub host: String,
    /// Its process.
    pub process: String,
    /// Its epoch.
    pub epoch: Epoch,
}

/// Where a standby stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Claiming { host: String },
    Preparing { host: String, process: String, address: SocketAddr },
    Feeding { host: String, process: String },
    Holding { host: String, process: String, tick: u64 },
    Detached { host: String, process: String, tick: Option<u64> },
    Done,
}

/// One region's standby (see the module documentation). No I/O; time is passed in.
#[derive(Debug)]
pub struct Placement {
    region: RegionId,
    owner: OwnerAt,
    step: Step,
    step_started: Instant,
    settings: StandbySettings,
    /// Why it ended, once it has.
    ended: Option<String>,
    /// Archive bytes the standby reported received, and when (for its rate).
    bytes: Option<(Instant, u64)>,
    bytes_per_second: f64,
    /// Since when the standby has heard nothing from the owner, as it reported.
    owner_silent_since: Option<Instant>,
    /// Adopted from its reports rather than made: the owner was never asked to feed it, so an
    /// owner's `feed_ended` (which names no feed) is its refusal of another placement's request.
    adopted: bool,
}

/// What the API shows of a standby.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct StandbyView {
    /// The region.
    pub region: u64,
    /// The host of the standby's process (empty while a claim is out).
    pub host: String,
    /// Its process, once claimed.
    pub process: Option<String>,
    /// `claiming`, `preparing`, `feeding`, `holding` or `detached`.
    pub state: String,
    /// The newest tick it holds.
    pub tick: Option<u64>,
    /// The epoch of the owner it follows.
    pub owner_epoch: u64,
    /// What following the owner costs the link, in bytes per second (from its reports).
    pub bytes_per_second: f64,
}

impl Placement {
    /// Starts a standby of `region`, owned by `owner`, on `host`.
    #[must_use]
    pub fn start(
        region: RegionId,
        owner: OwnerAt,
        host: &str,
        settings: StandbySettings,
        now: Instant,
    ) -> (Placement, Vec<HostAction>) {
        let placement = Placement::at(region, owner, Step::Claiming { host: host.to_owned() }, settings, now);
        (placement, vec![HostAction::Claim { host: host.to_owned() }])
    }

    fn at(region: RegionId, owner: OwnerAt, step: Step, settings: StandbySettings, now: Instant) -> Placement {
        Placement {
            region,
            owner,
            step,
            step_started: now,
            settings,
            ended: None,
            bytes: None,
            bytes_per_second: 0.0,
            owner_silent_since: None,
            adopted: false,
        }
    }

    /// A placement of the standby on `host`'s `process`, which reports holding `tick` of
    /// `owner` while no placement knows it (see the module documentation).
    #[must_use]
    fn adopt(
        region: RegionId,
        owner: OwnerAt,
        host: &str,
        process: &str,
        tick: u64,
        settings: StandbySettings,
        now: Instant,
    ) -> Placement {
        let step = Step::Holding { host: host.to_owned(), process: process.to_owned(), tick };
        Placement { adopted: true, ..Placement::at(region, owner, step, settings, now) }
    }

    /// Whether a standby that no placement knows, reporting from `host`'s `process` that it
    /// holds a tick of `owner`, replaces this placement: it does unless this placement follows
    /// the same owner and is that process or holds a tick itself (an owner feeds one standby at a
    /// time: while this one is only being fed, the other is the one the owner feeds, and refuses
    /// this one).
    fn yields_to(&self, owner: &OwnerAt, host: &str, process: &str) -> bool {
        let holds = matches!(self.step, Step::Holding { .. } | Step::Detached { .. });
        !(*owner == self.owner && (holds || self.process() == Some((host, process))))
    }

    /// Ends this placement because an adopted standby replaces it (its claimed process goes back).
    fn replaced(&mut self) -> Vec<HostAction> {
        self.end("another standby of the owner holds the region".into())
    }

    /// Whether it is over.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }

    /// Why it ended, once it has.
    #[must_use]
    pub fn ended(&self) -> Option<&str> {
        self.ended.as_deref()
    }

    /// The owner it follows.
    #[must_use]
    pub fn owner(&self) -> &OwnerAt {
        &self.owner
    }

    /// The standby a failover of the owner at `epoch` can promote: `(host, process, tick)`.
    #[must_use]
    pub fn promotable(&self, epoch: Epoch) -> Option<(String, String, u64)> {
        if self.owner.epoch != epoch {
            return None;
        }
        match &self.step {
            Step::Holding { host, process, tick } | Step::Detached { host, process, tick: Some(tick) } => {
                Some((host.clone(), process.clone(), *tick))
            }
            _ => None,
        }
    }

    /// How long the standby has heard nothing from the owner at `epoch`, as it reported (`None`:
    /// it hears it, or holds nothing of that epoch).
    #[must_use]
    pub fn owner_silent(&self, epoch: Epoch, now: Instant) -> Option<Duration> {
        if self.owner.epoch != epoch
            || !matches!(self.step, Step::Holding { .. } | Step::Detached { tick: Some(_), .. })
        {
            return None;
        }
        self.owner_silent_since.map(|since| now.saturating_duration_since(since))
    }

    /// The host and process of the standby, once claimed.
    fn process(&self) -> Option<(&str, &str)> {
        match &self.step {
            Step::Preparing { host, process, .. }
            | Step::Feeding { host, process }
            | Step::Holding { host, process, .. }
            | Step::Detached { host, process, .. } => Some((host, process)),
            Step::Claiming { .. } | Step::Done => None,
        }
    }

    /// What the API shows.
    #[must_use]
    pub fn view(&self) -> StandbyView {
        let (host, process, state, tick) = match &self.step {
            Step::Claiming { host } => (host.clone(), None, "claiming", None),
            Step::Preparing { host, process, .. } => (host.clone(), Some(process.clone()), "preparing", None),
            Step::Feeding { host, process } => (host.clone(), Some(process.clone()), "feeding", None),
            Step::Holding { host, process, tick } => (host.clone(), Some(process.clone()), "holding", Some(*tick)),
            Step::Detached { host, process, tick } => (host.clone(), Some(process.clone()), "detached", *tick),
            Step::Done => (String::new(), None, "ended", None),
        };
        StandbyView {
            region: self.region.0,
            host,
            process,
            state: state.to_owned(),
            tick,
            owner_epoch: self.owner.epoch.0,
            bytes_per_second: self.bytes_per_second,
        }
    }

    fn end(&mut self, reason: String) -> Vec<HostAction> {
        let release = self
            .process()
            .map(|(host, process)| HostAction::Release { host: host.to_owned(), process: process.to_owned() });
        tracing::info!(region = %self.region, reason, "standby ended");
        self.ended = Some(reason);
        self.step = Step::Done;
        release.into_iter().collect()
    }

    /// The answer to the claim on `host`.
    pub fn handle_claimed(&mut self, host: &str, result: ClaimResult, now: Instant) -> Vec<HostAction> {
        let Step::Claiming { host: claiming } = &self.step else {
            // Too late: this placement moved on; the process goes back.
            return result
                .map(|(process, _)| vec![HostAction::Release { host: host.to_owned(), process }])
                .unwrap_or_default();
        };
        if claiming != host {
            return Vec::new();
        }
        match result {
            Ok((process, address)) => {
                self.step = Step::Preparing { host: host.to_owned(), process: process.clone(), address };
                self.step_started = now;
                vec![HostAction::Run {
                    host: host.to_owned(),
                    process,
                    command: ServerCommand::Prepare { region: self.region },
                }]
            }
            Err(error) => self.end(format!("no warm process on {host}: {error}")),
        }
    }

    /// An event from a process.
    pub fn handle_event(&mut self, event: &ProcessEvent, now: Instant) -> Vec<HostAction> {
        let region = self.region;
        let from_owner = event.host == self.owner.host && event.process == self.owner.process;
        let from_standby = self.process().is_some_and(|(host, process)| event.host == host && event.process == process);
        if !from_owner && !from_standby {
            return Vec::new();
        }
        match (&event.happened, from_standby) {
            (Happened::Exited { .. }, true) => {
                // The process is gone: nothing to release.
                self.step = Step::Done;
                self.ended = Some("the standby's process exited".into());
                Vec::new()
            }
            (Happened::Event(ServerEvent::Prepared { region: prepared }), true) if *prepared == region => {
                let Step::Preparing { host, process, address } = &self.step else { return Vec::new() };
                let to = *address;
                self.step = Step::Feeding { host: host.clone(), process: process.clone() };
                self.step_started = now;
                vec![HostAction::Run {
                    host: self.owner.host.clone(),
                    process: self.owner.process.clone(),
                    command: ServerCommand::FeedStandby { region, to },
                }]
            }
            (Happened::Event(ServerEvent::StandbyHolding { region: held, owner_epoch, tick, bytes }), true)
                if *held == region && *owner_epoch == self.owner.epoch =>
            {
                if let Some((at, before)) = self.bytes {
                    let seconds = now.duration_since(at).as_secs_f64();
                    if seconds > 0.0 {
                        self.bytes_per_second = bytes.saturating_sub(before) as f64 / seconds;
                    }
                }
                self.bytes = Some((now, *bytes));
                if self.promotable(self.owner.epoch).is_none_or(|(_, _, held)| held < *tick) {
                    self.owner_silent_since = None;
                }
                if let Step::Feeding { host, process } | Step::Holding { host, process, .. } = &self.step {
                    self.step = Step::Holding { host: host.clone(), process: process.clone(), tick: *tick };
                    self.step_started = now;
                }
                Vec::new()
            }
            (Happened::Event(ServerEvent::OwnerSilent { region: silent, owner_epoch, silent_ms }), true)
                if *silent == region && *owner_epoch == self.owner.epoch =>
            {
                self.owner_silent_since = Some(now.checked_sub(Duration::from_millis(*silent_ms)).unwrap_or(now));
                Vec::new()
            }
            (Happened::Event(ServerEvent::OwnerHeard { region: heard }), true) if *heard == region => {
                self.owner_silent_since = None;
                Vec::new()
            }
            (Happened::Event(ServerEvent::StandbyLost { region: lost, reason, detached: true }), true)
                if *lost == region =>
            {
                let tick = match &self.step {
                    Step::Holding { tick, .. } => Some(*tick),
                    _ => None,
                };
                if let Some((host, process)) = self.process() {
                    tracing::info!(region = %region, reason, "the standby lost its feed; kept for a failover");
                    self.step = Step::Detached { host: host.to_owned(), process: process.to_owned(), tick };
                    self.step_started = now;
                    // A feed that broke is the standby's word that its owner is silent, often
                    // before five ticks without a round would have said so: it stays a witness.
                    self.owner_silent_since.get_or_insert(now);
                }
                Vec::new()
            }
            (Happened::Event(ServerEvent::StandbyLost { region: lost, reason, detached: false }), true)
                if *lost == region =>
            {
                let reason = format!("the standby gave up: {reason}");
                self.end(reason)
            }
            (Happened::Event(ServerEvent::FeedEnded { region: ended, reason }), false)
                if *ended == region && !self.adopted =>
            {
                let reason = format!("the owner's feed ended: {reason}");
                self.end(reason)
            }
            (Happened::Event(ServerEvent::Error { region: about, error }), true)
                if about.is_none_or(|about| about == region) =>
            {
                let reason = format!("the standby's process refused: {error}");
                self.end(reason)
            }
            (Happened::Event(ServerEvent::Error { region: Some(about), error }), false)
                if *about == region && matches!(self.step, Step::Feeding { .. }) =>
            {
                let reason = format!("the owner refused to feed the standby: {error}");
                self.end(reason)
            }
            // Anything else, the owner's exit among it: the owner's death is what the standby is
            // for, it stays for the failover.
            _ => Vec::new(),
        }
    }

    /// The time passes. `owner` is the region's owner now and when its host last reported
    /// (`None`: not known to be served); `standby_host_usable` whether the standby's host still
    /// takes work (connected, not dead, draining or freed).
    pub fn handle_time(
        &mut self,
        now: Instant,
        owner: Option<(&OwnerAt, Instant)>,
        standby_host_usable: bool,
    ) -> Vec<HostAction> {
        let waited = now.duration_since(self.step_started);
        let moved_on = owner.is_some_and(|(owner, _)| *owner != self.owner);
        // An owner counts as serving again only on a report made after the standby lost its
        // feed: until its host is declared dead, a dead owner's last report still says it serves.
        let serving_since_detached = owner.is_some_and(|(_, reported)| reported > self.step_started);
        match &self.step {
            Step::Done => Vec::new(),
            _ if moved_on => self.end("the region's owner changed".into()),
            _ if !standby_host_usable && self.process().is_some() => {
                self.end("the standby's host no longer takes work".into())
            }
            Step::Claiming { .. } if waited >= self.settings.claim + Duration::from_secs(1) => {
                self.end("the claim was not answered".into())
            }
            Step::Preparing { .. } if waited >= self.settings.prepare => {
                self.end("the standby's slot was not prepared in time".into())
            }
            Step::Feeding { .. } if waited >= self.settings.first_hold => {
                self.end("the standby held no tick in time".into())
            }
            // Kept only while a failover may want it: once the owner reports serving after the
            // feed broke (the link broke, not the owner), or after the keep time, a fresh
            // standby is better.
            Step::Detached { .. } if serving_since_detached || waited >= self.settings.detached_keep => {
                self.end("the standby lost its feed".into())
            }
            _ => Vec::new(),
        }
    }
}

/// The standbys of every region (see the module documentation).
pub struct Standbys {
    hosts: Arc<Hosts>,
    directory: Arc<Directory>,
    migrations: Arc<Migrations>,
    settings: StandbySettings,
    state: Mutex<StandbyState>,
    claims: tokio::sync::mpsc::UnboundedSender<(RegionId, String, ClaimResult)>,
}

#[derive(Default)]
struct StandbyState {
    placements: HashMap<RegionId, Placement>,
    /// When a region's last standby ended (the next waits `retry_after`).
    ended: HashMap<RegionId, Instant>,
    /// Processes released or taken by a failover lately, by host and name: a report they send
    /// on their way out, or before a promotion lands, is not a standby to adopt.
    released: HashMap<(String, String), Instant>,
}

/// How long a released or taken process's reports are not taken as a standby to adopt.
const RELEASED_KEEP: Duration = Duration::from_secs(60);

impl StandbyState {
    /// See [`Standbys::take`].
    fn take(&mut self, region: RegionId, epoch: Epoch, now: Instant) -> Option<(String, String, u64)> {
        let promotable = self.placements.get(&region)?.promotable(epoch)?;
        self.placements.remove(&region);
        // Until its promotion lands, it still reports holding the lost owner's ticks.
        let (host, process, _) = &promotable;
        self.released.insert((host.clone(), process.clone()), now);
        Some(promotable)
    }

    /// Takes `event` as a standby to adopt when it reports holding a tick of `owner` (the
    /// region's owner now, serving) from a process no placement of the region knows (see the
    /// module documentation); returns what the placement it replaces releases.
    fn adopt(
        &mut self,
        event: &ProcessEvent,
        owner: Option<OwnerAt>,
        settings: StandbySettings,
        now: Instant,
    ) -> Vec<(RegionId, HostAction)> {
        let Happened::Event(ServerEvent::StandbyHolding { region, owner_epoch, tick, .. }) = &event.happened else {
            return Vec::new();
        };
        let Some(owner) = owner.filter(|owner| owner.epoch == *owner_epoch && owner.host != event.host) else {
            return Vec::new();
        };
        let key = (event.host.clone(), event.process.clone());
        if self.released.get(&key).is_some_and(|at| now.duration_since(*at) < RELEASED_KEEP) {
            return Vec::new();
        }
        let mut released = Vec::new();
        match self.placements.get_mut(region) {
            Some(placement) if !placement.yields_to(&owner, &event.host, &event.process) => return Vec::new(),
            Some(placement) => released = placement.replaced(),
            None => {}
        }
        tracing::info!(region = %region, host = event.host, process = event.process, tick, "adopting a standby");
        let adopted = Placement::adopt(*region, owner, &event.host, &event.process, *tick, settings, now);
        self.placements.insert(*region, adopted);
        released.into_iter().map(|action| (*region, action)).collect()
    }
}

impl Standbys {
    /// Starts watching the cluster and making standbys.
    #[must_use]
    pub fn start(
        hosts: Arc<Hosts>,
        directory: Arc<Directory>,
        migrations: Arc<Migrations>,
        settings: StandbySettings,
    ) -> Arc<Standbys> {
        let (claims, claimed) = tokio::sync::mpsc::unbounded_channel();
        let standbys = Arc::new(Standbys {
            hosts,
            directory,
            migrations,
            settings,
            state: Mutex::new(StandbyState::default()),
            claims,
        });
        let driver = standbys.clone();
        tokio::spawn(async move { driver.run(claimed).await });
        standbys
    }

    /// Takes the standby of `region` that holds a tick of the owner at `epoch` out of the table,
    /// for a failover to promote: `(host, process, tick)`.
    pub fn take(&self, region: RegionId, epoch: Epoch) -> Option<(String, String, u64)> {
        self.state.lock().ok()?.take(region, epoch, Instant::now())
    }

    /// How long the standby of `region` has heard nothing from its owner at `epoch`, as it
    /// reported (a witness for failure detection).
    #[must_use]
    pub fn owner_silent(&self, region: RegionId, epoch: Epoch) -> Option<Duration> {
        let state = self.state.lock().ok()?;
        state.placements.get(&region)?.owner_silent(epoch, Instant::now())
    }

    /// What the API shows, by region.
    #[must_use]
    pub fn views(&self) -> Vec<StandbyView> {
        let Ok(state) = self.state.lock() else { return Vec::new() };
        let mut views: Vec<StandbyView> = state.placements.values().map(Placement::view).collect();
        views.sort_by_key(|view| view.region);
        views
    }

    async fn run(self: Arc<Self>, mut claimed: tokio::sync::mpsc::UnboundedReceiver<(RegionId, String, ClaimResult)>) {
        let mut events = self.hosts.subscribe();
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let actions = tokio::select! {
                _ = ticker.tick() => self.check(Instant::now()),
                event = events.recv() => match event {
                    Ok(event) => self.on_event(&event),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Vec::new(),
                    Err(_) => return,
                },
                Some((region, host, result)) = claimed.recv() => self.on_claimed(region, &host, result),
            };
            for (region, action) in actions {
                self.perform(region, action);
            }
        }
    }

    fn on_event(&self, event: &ProcessEvent) -> Vec<(RegionId, HostAction)> {
        let owner = match &event.happened {
            Happened::Event(ServerEvent::StandbyHolding { region, .. }) => self.serving_owner(*region),
            _ => None,
        };
        let Ok(mut state) = self.state.lock() else { return Vec::new() };
        let now = Instant::now();
        let mut actions = state.adopt(event, owner, self.settings, now);
        for (region, placement) in &mut state.placements {
            actions.extend(placement.handle_event(event, now).into_iter().map(|action| (*region, action)));
        }
        Self::sweep(&mut state, now);
        actions
    }

    fn on_claimed(&self, region: RegionId, host: &str, result: ClaimResult) -> Vec<(RegionId, HostAction)> {
        let Ok(mut state) = self.state.lock() else { return Vec::new() };
        let now = Instant::now();
        let actions = match state.placements.get_mut(&region) {
            Some(placement) => placement.handle_claimed(host, result, now),
            // The placement is gone (a failover took it, or it ended): the process goes back.
            None => result
                .map(|(process, _)| vec![HostAction::Release { host: host.to_owned(), process }])
                .unwrap_or_default(),
        };
        Self::sweep(&mut state, now);
        actions.into_iter().map(|action| (region, action)).collect()
    }

    /// The owner of `region` as the directory names it, if its host reports it serving.
    fn serving_owner(&self, region: RegionId) -> Option<OwnerAt> {
        let ownership = self.directory.current(region).ok()?;
        match self.hosts.owner_state(&ownership.owner, region) {
            (OwnerState::Serving, Some(host)) => {
                Some(OwnerAt { host, process: ownership.owner, epoch: ownership.epoch })
            }
            _ => None,
        }
    }

    /// Ended placements leave the table; their region waits `retry_after` for the next.
    fn sweep(state: &mut StandbyState, now: Instant) {
        let ended: Vec<RegionId> =
            state.placements.iter().filter(|(_, placement)| placement.is_done()).map(|(region, _)| *region).collect();
        for region in ended {
            state.placements.remove(&region);
            state.ended.insert(region, now);
        }
    }

    /// One look at the cluster: placements time out or end, and regions that want a standby and
    /// have none get one.
    fn check(&self, now: Instant) -> Vec<(RegionId, HostAction)> {
        let Ok(regions) = self.directory.list() else { return Vec::new() };
        let Ok(stopped) = self.directory.stopped() else { return Vec::new() };
        let busy: Vec<u64> = self
            .migrations
            .list()
            .into_iter()
            .filter(|record| !record.phase.is_final())
            .map(|record| record.region)
            .collect();
        let views = self.hosts.views();
        let usable = |host: &str| {
            views.iter().any(|view| view.name == host && view.connected && !view.dead && !view.draining && !view.free)
        };
        let Ok(mut state) = self.state.lock() else { return Vec::new() };
        let retry_after = self.settings.retry_after;
        state.ended.retain(|_, at| now.duration_since(*at) < retry_after);
        let mut actions = Vec::new();
        let mut owners: HashMap<RegionId, (OwnerAt, Instant)> = HashMap::new();
        for (region, ownership) in &regions {
            if let (OwnerState::Serving, Some(host)) = self.hosts.owner_state(&ownership.owner, *region) {
                let reported = self.hosts.silence(&host).map_or(now, |silent| now.checked_sub(silent).unwrap_or(now));
                let owner = OwnerAt { host, process: ownership.owner.clone(), epoch: ownership.epoch };
                owners.insert(*region, (owner, reported));
            }
        }
        for (region, placement) in &mut state.placements {
            let standby_usable = placement.process().is_none_or(|(host, _)| usable(host));
            let owner = owners.get(region).map(|(owner, reported)| (owner, *reported));
            actions
                .extend(placement.handle_time(now, owner, standby_usable).into_iter().map(|action| (*region, action)));
        }
        Self::sweep(&mut state, now);
        for (region, _) in regions {
            let wanted = self.directory.standby_choice(region).ok().flatten().unwrap_or(self.settings.by_default);
            let Some((owner, _)) = owners.get(&region) else { continue };
            if !wanted
                || stopped.contains(&region)
                || busy.contains(&region.0)
                || state.placements.contains_key(&region)
                || state.ended.contains_key(&region)
            {
                continue;
            }
            // Anti-affinity: never on the owner's host; the host with the most spare CPU first.
            let mut candidates: Vec<&crate::hosts::HostView> = views
                .iter()
                .filter(|view| view.name != owner.host && usable(&view.name))
                .filter(|view| view.processes.iter().any(|process| process.warm))
                .collect();
            candidates.sort_by(|a, b| (b.capacity_cores - b.cpu_cores).total_cmp(&(a.capacity_cores - a.cpu_cores)));
            let Some(host) = candidates.first().map(|view| view.name.clone()) else { continue };
            tracing::info!(%region, host, owner = owner.process, "making a standby");
            let (placement, started) = Placement::start(region, owner.clone(), &host, self.settings, now);
            state.placements.insert(region, placement);
            actions.extend(started.into_iter().map(|action| (region, action)));
        }
        actions
    }

    fn perform(&self, region: RegionId, action: HostAction) {
        match action {
            HostAction::Claim { host } => {
                let hosts = self.hosts.clone();
                let claims = self.claims.clone();
                let timeout = self.settings.claim;
                tokio::spawn(async move {
                    let result = hosts.claim(&host, timeout).await;
                    let _ = claims.send((region, host, result));
                });
            }
            HostAction::Run { host, process, command } => {
                if let Err(error) = self.hosts.run(&host, &process, command) {
                    tracing::warn!(%region, host, process, %error, "could not send a standby command");
                }
            }
            HostAction::Release { host, process } => {
                let _ = self.hosts.release(&host, &process);
                if let Ok(mut state) = self.state.lock() {
                    let now = Instant::now();
                    state.released.retain(|_, at| now.duration_since(*at) < RELEASED_KEEP);
                    state.released.insert((host, process), now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
