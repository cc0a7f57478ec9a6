//! The gateway's players: sessions, resume grace, border crossings and their retries. No I/O.
//!
//! [`SessionTable`] knows, per player, the session's generation (each new connection of the player
//! is one), the region it plays in, whether it is connected, and the inputs waiting while its
//! avatar crosses a border. Events come in through `handle_*` with the time; what must be done
//! later (a session whose grace ran out leaves its region; a refused crossing is tried again; an
//! input its own region bounced is routed again, [`SessionTable::handle_bounced`]) comes out of
//! [`SessionTable::handle_timeout`] as [`SessionAction`]s, and
//! [`SessionTable::poll_timeout`] says when. The service (`service.rs`) owns the sockets, one timer
//! task, and the per-connection links players' updates go out on; it holds the table behind one
//! lock and carries out what the table answers after releasing it.
//!
//! Invariants it keeps:
//! - One session per player: a newer connection to this gateway takes the session over with its
//!   region and its waiting inputs; the older connection's end changes nothing any more
//!   (generations). A resume through another gateway ends the session here (`Detached`); the
//!   client sends again what was not acknowledged.
//! - Invariant 2: inputs that arrive while the avatar is between regions wait, in order, and go to
//!   the new region when it says the avatar arrived (at most [`MAX_TRANSIT_INPUTS`] per player;
//!   more are dropped and counted, and the region asks for them again once a later input of the
//!   player reaches it); a crossing is never dropped (it
//!   is retried, and turned back after [`crate::crossing::SEND_BACK_AFTER`] failures, see
//!   [`Crossings`]). Inputs bounced back by the player's own region wait [`BOUNCE_RETRY`] (at most
//!   [`MAX_TRANSIT_INPUTS`] a player, more dropped and counted); a session whose inputs bounce
//!   [`MAX_BOUNCES`] times over [`BOUNCING_FOR_AT_LEAST`] with no update between is ended.
//!
//! What it does not do: routes and epochs ([`crate::route::RouteTable`]), tokens, limits, or
//! anything with a socket.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use baton_wire::upstream::Transfer;
use baton_wire::{PlayerId, PlayerInput, RegionId};

use crate::crossing::{Crossings, Delivery};

/// How long after a refused or unroutable delivery a crossing is tried again.
pub(crate) const CROSSING_RETRY: Duration = Duration::from_millis(100);

/// Most inputs of one player that wait while its avatar crosses a border: 12.8 s of a client
/// sending 20 a second, 4.3 s at the gateway's default rate limit of 60 a second (a crossing
/// takes a few ticks, or seconds when its destination is being moved); 256 KiB of payload at
/// most. The rest are dropped and counted: the client keeps every input until it is
/// acknowledged, and the region asks for the missing ones again once a later input of the
/// player reaches it past the gap. So a client that floods inputs during a crossing cannot grow
/// the gateway's memory without bound.
pub(crate) const MAX_TRANSIT_INPUTS: usize = 256;

/// Inputs of one player bounced back with no update for it in between, after which (and after
/// [`BOUNCING_FOR_AT_LEAST`]) its session ends: its region does not have its avatar. A crossing
/// or a handoff bounces a few; a failover that lost the avatar bounces every input, for ever.
pub(crate) const MAX_BOUNCES: u32 = 1000;

/// The least time a player's inputs must have been bouncing, with no update for it in between,
/// before its session ends. A count alone ran out within a fraction of a second with many inputs
/// in flight: after a host's link came back, a region whose avatar had crossed out while it was
/// cut off bounced every input of the player until it could send the crossing again
/// (protocol.md §10), and the gateway gave up on the player first.
pub(crate) const BOUNCING_FOR_AT_LEAST: Duration = Duration::from_secs(5);

/// How long an input bounced by the owner of the region the player is in (no crossing under
/// way) waits before it goes there again. Sent back at once, every input in flight would circle
/// between the gateway and a region that bounces it, a network round trip a lap, until the region
/// sends the crossing that explains it.
pub(crate) const BOUNCE_RETRY: Duration = Duration::from_millis(50);

/// What becomes of an input a server bounced back ([`SessionTable::handle_bounced`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Bounced {
    /// Route it again now (like a new input).
    Route(PlayerInput),
    /// It comes back out of [`SessionTable::handle_timeout`] after [`BOUNCE_RETRY`], with the
    /// player's other inputs bounced meanwhile; the table's next deadline may be earlier now.
    Later,
    /// It comes back with the player's inputs already held for [`BOUNCE_RETRY`] (no new deadline).
    Held,
    /// The player's region keeps refusing its inputs: end its session (said once; later bounces
    /// are dropped until an update for the player comes).
    EndSession,
    /// Dropped (to be counted): the session was ended for its bounces, or [`MAX_TRANSIT_INPUTS`]
    /// of the player's bounced inputs are held already.
    Dropped,
}

/// What the service must do when a timer of the table fires.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum SessionAction {
    /// The player's session ended (its resume grace ran out): tell its region it left for good.
    Leave {
        /// The player.
        player: PlayerId,
        /// The region it was in.
        region: RegionId,
    },
    /// Deliver a crossing avatar again, onward or turned back.
    Deliver {
        /// The avatar.
        transfer: Transfer,
        /// Which way.
        delivery: Delivery,
    },
    /// Route a bounced input again ([`Bounced::Later`]): to where the player is now, to wait for
    /// its crossing, or to be dropped and counted if its session is gone.
    Route(PlayerInput),
}

/// Where an input goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Routed {
    /// To the route of this region.
    To(RegionId, PlayerInput),
    /// Nowhere yet: the avatar is crossing a border; the input waits for the arrival.
    Waiting,
    /// Nowhere: the player has no session here.
    NoSession(PlayerId),
    /// Nowhere: [`MAX_TRANSIT_INPUTS`] of the player's inputs wait for its avatar's arrival already.
    TransitFull(PlayerId),
}

/// A new connection's session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Opened {
    /// This connection's generation.
    pub(crate) generation: u64,
    /// The region to join: the session's, if the player had one, else the token's.
    pub(crate) region: RegionId,
    /// Whether an earlier session was taken over (its connection must be closed).
    pub(crate) resumed: bool,
}

#[derive(Debug)]
struct Record {
    generation: u64,
    region: RegionId,
    connected: bool,
    /// Inputs waiting while the avatar crosses a border.
    transit: Option<Vec<PlayerInput>>,
    /// The crossings count of the avatar being delivered (`Transfer::crossings`), set whenever a
    /// crossing starts and kept after its arrival (the latest crossing heard).
    delivering: Option<u64>,
    /// Its inputs bounced back since its last update.
    bounces: Option<Bounces>,
    /// Bounced inputs held for [`BOUNCE_RETRY`] (at most [`MAX_TRANSIT_INPUTS`]), under one timer.
    held: Vec<PlayerInput>,
}

/// A player's inputs bounced back since its last update.
#[derive(Clone, Copy, Debug)]
struct Bounces {
    count: u32,
    /// When the first of them came back.
    since: Instant,
    /// Its session was ended for them.
    ended: bool,
}

#[derive(Clone, Debug, PartialEq)]
enum Timer {
    ResumeEnds { player: PlayerId, generation: u64 },
    RetryCrossing { transfer: Transfer, delivery: Delivery },
    RouteBounced(PlayerId),
}

/// Every player's session on this gateway (see the module documentation).
#[derive(Debug)]
pub(crate) struct SessionTable {
    sessions: HashMap<PlayerId, Record>,
    next_generation: u64,
    crossings: Crossings,
    timers: BTreeMap<(Instant, u64), Timer>,
    next_timer: u64,
    resume_grace: Duration,
}

impl SessionTable {
    /// A table whose disconnected sessions wait `resume_grace` for a resume.
    pub(crate) fn new(resume_grace: Duration) -> SessionTable {
        SessionTable {
            sessions: HashMap::new(),
            next_generation: 1,
            crossings: Crossings::default(),
            timers: BTreeMap::new(),
            next_timer: 0,
            resume_grace,
        }
    }

    /// Sessions (connected or waiting for a resume).
    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    /// `player` connected with a token for `token_region`: a new session, or the player's existing
    /// one taken over (its region wins over the token's, its waiting inputs stay).
    pub(crate) fn handle_connected(&mut self, player: PlayerId, token_region: RegionId) -> Opened {
        let generation = self.next_generation;
        self.next_generation += 1;
        match self.sessions.get_mut(&player) {
            Some(record) => {
                record.generation = generation;
                record.connected = true;
                // A new connection is a fresh start for a session ended for its bounces.
                record.bounces = None;
                Opened { generation, region: record.region, resumed: true }
            }
            None => {
                let record = Record {
                    generation,
                    region: token_region,
                    connected: true,
                    transit: None,
                    delivering: None,
                    bounces: None,
                    held: Vec::new(),
                };
                self.sessions.insert(player, record);
                Opened { generation, region: token_region, resumed: false }
            }
        }
    }

    /// The join of connection `generation` succeeded in `region`.
    pub(crate) fn handle_joined(&mut self, player: PlayerId, generation: u64, region: RegionId) {
        if let Some(record) = self.sessions.get_mut(&player).filter(|record| record.generation == generation) {
            record.region = region;
        }
    }

    /// The join of connection `generation` failed: the session ends unless a newer connection took
    /// it over meanwhile.
    pub(crate) fn handle_join_failed(&mut self, player: PlayerId, generation: u64) {
        if self.sessions.get(&player).is_some_and(|record| record.generation == generation) {
            self.sessions.remove(&player);
        }
    }

    /// Connection `generation` of `player` ended: its session waits for a resume until the grace
    /// period (plus a second, so a resume racing the deadline wins) is over.
    pub(crate) fn handle_disconnected(&mut self, now: Instant, player: PlayerId, generation: u64) {
        if let Some(record) = self.sessions.get_mut(&player).filter(|record| record.generation == generation) {
            record.connected = false;
            let at = now + self.resume_grace + Duration::from_secs(1);
            self.schedule(at, Timer::ResumeEnds { player, generation });
        }
    }

    /// An input of `player` (from its connection, or bounced back by a server): where it goes now.
    pub(crate) fn handle_input(&mut self, input: PlayerInput) -> Routed {
        let Some(record) = self.sessions.get_mut(&input.player) else { return Routed::NoSession(input.player) };
        match record.transit.as_mut() {
            Some(waiting) if waiting.len() >= MAX_TRANSIT_INPUTS => Routed::TransitFull(input.player),
            Some(waiting) => {
                waiting.push(input);
                Routed::Waiting
            }
            None => Routed::To(record.region, input),
        }
    }

    /// An input of `player` that `region`'s server bounced back at `now`; `from_its_owner`: that
    /// server owns `region` by the gateway's routes (not an owner a handoff replaced). Bounced by
    /// the owner of the region the player is in with no crossing under way, it waits
    /// [`BOUNCE_RETRY`] with the player's others (one timer a player; one copy of an input; at most
    /// [`MAX_TRANSIT_INPUTS`], more are dropped); any other goes again now (to where the player
    /// is, or to wait for its crossing). After [`MAX_BOUNCES`] bounces over at least [`BOUNCING_FOR_AT_LEAST`] with no
    /// update for the player between, its session ends. A player with no session here: routed
    /// again (and dropped there, counted).
    pub(crate) fn handle_bounced(
        &mut self,
        now: Instant,
        region: RegionId,
        input: PlayerInput,
        from_its_owner: bool,
    ) -> Bounced {
        let Some(record) = self.sessions.get_mut(&input.player) else { return Bounced::Route(input) };
        let bounces = record.bounces.get_or_insert(Bounces { count: 0, since: now, ended: false });
        bounces.count = bounces.count.saturating_add(1);
        if bounces.ended {
            return Bounced::Dropped;
        }
        if bounces.count > MAX_BOUNCES && now.duration_since(bounces.since) >= BOUNCING_FOR_AT_LEAST {
            bounces.ended = true;
            return Bounced::EndSession;
        }
        if from_its_owner && record.region == region && record.transit.is_none() {
            if record.held.iter().any(|held| held.seq == input.seq) {
                return Bounced::Held;
            }
            if record.held.len() >= MAX_TRANSIT_INPUTS {
                return Bounced::Dropped;
            }
            let player = input.player;
            record.held.push(input);
            if record.held.len() > 1 {
                return Bounced::Held;
            }
            self.schedule(now + BOUNCE_RETRY, Timer::RouteBounced(player));
            return Bounced::Later;
        }
        Bounced::Route(input)
    }

    /// An update for `player` from `region`: true if the player plays there (the update is its
    /// region's), and then its bounces so far are forgiven (the region has its avatar).
    pub(crate) fn handle_update(&mut self, player: PlayerId, region: RegionId) -> bool {
        match self.sessions.get_mut(&player) {
            Some(record) if record.region == region => {
                record.bounces = None;
                true
            }
            _ => false,
        }
    }

    /// The region `player` plays in.
    pub(crate) fn region_of(&self, player: PlayerId) -> Option<RegionId> {
        self.sessions.get(&player).map(|record| record.region)
    }

    /// The players whose session is in `region`.
    pub(crate) fn players_in(&self, region: RegionId) -> Vec<PlayerId> {
        self.sessions.iter().filter(|(_, record)| record.region == region).map(|(player, _)| *player).collect()
    }

    /// The player's session continues on another gateway: it ends here.
    pub(crate) fn handle_detached(&mut self, player: PlayerId) -> bool {
        self.sessions.remove(&player).is_some()
    }

    /// `region` was stopped (the old way of restarting it): its players' sessions end here; they
    /// are returned so the service can close their connections.
    pub(crate) fn handle_stopped(&mut self, region: RegionId) -> Vec<PlayerId> {
        let players = self.players_in(region);
        for player in &players {
            self.sessions.remove(player);
        }
        players
    }

    /// The player's avatar left its region: its inputs wait until it arrives, and the crossing is
    /// delivered onward.
    ///
    /// `None` when the player's session is in another region than the one the avatar left: that
    /// avatar is a stale copy (a region restored from a standby or a checkpoint taken before the
    /// player's avatar left it, still ticking it), and delivering it would give the player a second
    /// avatar beside the live one. It is dropped.
    ///
    /// `None` too for the crossing being delivered already (the same avatar with the same
    /// crossings: its region sent it again, see protocol.md §10): one delivery per crossing, so a
    /// crossing turned back can never meet a copy of itself still going onward.
    pub(crate) fn handle_emigrated(&mut self, transfer: Transfer) -> Option<SessionAction> {
        if let Some(record) = self.sessions.get_mut(&transfer.player) {
            // During a crossing the gateway cannot tell where the avatar is (its destination may
            // have taken it in and passed it on before its arrival was heard): delivered.
            if record.region != transfer.from && record.transit.is_none() {
                return None;
            }
            if record.transit.is_some() && record.delivering == Some(transfer.crossings) {
                return None;
            }
            if record.transit.is_none() {
                record.transit = Some(Vec::new());
            }
            record.delivering = Some(transfer.crossings);
        }
        let delivery = self.crossings.handle_emigrated(transfer.player);
        Some(SessionAction::Deliver { transfer, delivery })
    }

    /// Whether `player`'s avatar is crossing a border (its inputs wait).
    pub(crate) fn in_transit(&self, player: PlayerId) -> bool {
        self.sessions.get(&player).is_some_and(|record| record.transit.is_some())
    }

    /// The crossings count of the avatar `player`'s crossing is delivering, while it crosses.
    pub(crate) fn delivering(&self, player: PlayerId) -> Option<u64> {
        self.sessions.get(&player).filter(|record| record.transit.is_some()).and_then(|record| record.delivering)
    }

    /// The crossings count of `player`'s latest crossing heard here, delivering or over.
    pub(crate) fn last_crossing(&self, player: PlayerId) -> Option<u64> {
        self.sessions.get(&player).and_then(|record| record.delivering)
    }

    /// The destination refused `refused` as a stale copy of the avatar, which had come there
    /// and left again as `onward`: the crossing goes on with `onward` (a new delivery, counted
    /// afresh). Nothing when `refused` is over already (a late answer: the crossing arrived, or a
    /// newer one is out), protocol.md §10.
    pub(crate) fn handle_moved_on(&mut self, refused: &Transfer, onward: Transfer) -> Option<SessionAction> {
        if self.is_over(refused) {
            return None;
        }
        if let Some(record) = self.sessions.get_mut(&onward.player) {
            record.delivering = Some(onward.crossings);
        }
        let delivery = self.crossings.handle_emigrated(onward.player);
        Some(SessionAction::Deliver { transfer: onward, delivery })
    }

    /// The player's avatar arrived in `region` by its crossing numbered `crossings`: the crossing
    /// is over; returns the inputs that waited, in order, if the player has a session here.
    /// Nothing for an arrival repeated where the player already is with no crossing out (a
    /// crossing delivered twice, protocol.md §10), nor for the arrival of an earlier crossing than
    /// the latest heard (delivered again after a reconnect or a commit and answered late): it
    /// must not end the later one, nor put the player back in the region it has left since.
    pub(crate) fn handle_arrived(
        &mut self,
        player: PlayerId,
        region: RegionId,
        crossings: u64,
    ) -> Option<Vec<PlayerInput>> {
        let record = self.sessions.get_mut(&player);
        if record.as_ref().is_some_and(|record| record.delivering.is_some_and(|latest| crossings < latest)) {
            return None;
        }
        self.crossings.handle_arrived(player);
        let record = record?;
        if record.transit.is_none() && record.region == region {
            return None;
        }
        record.region = region;
        Some(record.transit.take().unwrap_or_default())
    }

    /// The destination's owner refused the crossing: it is tried again shortly (turned back once
    /// it failed too often). False, and nothing is tried again, for a late refusal of a crossing
    /// of a player served here that is over (it arrived: a source that held the crossing while
    /// frozen refuses it after the commit, when it was delivered to the new owner already) or that
    /// a newer crossing replaced. A player with no session here has its crossing retried anyway:
    /// nothing else carries that avatar.
    pub(crate) fn handle_immigration_refused(&mut self, now: Instant, transfer: Transfer) -> bool {
        if self.is_over(&transfer) {
            return false;
        }
        let delivery = self.crossings.handle_refused(transfer.player);
        self.schedule(now + CROSSING_RETRY, Timer::RetryCrossing { transfer, delivery });
        true
    }

    /// The crossing could not be sent (its destination has no route or is frozen): it is tried
    /// again shortly.
    pub(crate) fn handle_unroutable(&mut self, now: Instant, transfer: Transfer) {
        let delivery = self.crossings.handle_unroutable(transfer.player);
        self.schedule(now + CROSSING_RETRY, Timer::RetryCrossing { transfer, delivery });
    }

    /// When [`SessionTable::handle_timeout`] has something to do next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    /// What is due at `now`, in the order it was scheduled.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Vec<SessionAction> {
        let mut actions = Vec::new();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            match entry.remove() {
                Timer::ResumeEnds { player, generation } => {
                    // Only the connection that ended, and only if nobody resumed since.
                    if self
                        .sessions
                        .get(&player)
                        .is_some_and(|record| record.generation == generation && !record.connected)
                        && let Some(record) = self.sessions.remove(&player)
                    {
                        actions.push(SessionAction::Leave { player, region: record.region });
                    }
                }
                Timer::RetryCrossing { transfer, delivery } => {
                    // Not once the crossing is over: its answer came by another delivery.
                    if !self.is_over(&transfer) {
                        actions.push(SessionAction::Deliver { transfer, delivery });
                    }
                }
                Timer::RouteBounced(player) => {
                    let held = self.sessions.get_mut(&player).map(|record| std::mem::take(&mut record.held));
                    actions.extend(held.unwrap_or_default().into_iter().map(SessionAction::Route));
                }
            }
        }
        actions
    }

    /// Whether `transfer` is a crossing of a player served here that is over: it arrived, or a
    /// newer crossing replaced it (protocol.md §10). (The crossing of a player with no session
    /// here is never over for the table: nothing else carries that avatar.)
    fn is_over(&self, transfer: &Transfer) -> bool {
        self.sessions
            .get(&transfer.player)
            .is_some_and(|record| record.transit.is_none() || record.delivering != Some(transfer.crossings))
    }

    fn schedule(&mut self, at: Instant, timer: Timer) {
        self.next_timer += 1;
        self.timers.insert((at, self.next_timer), timer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crossing::SEND_BACK_AFTER;

    const GRACE: Duration = Duration::from_secs(5);
    const HOME: RegionId = RegionId(1);
    const NEXT: RegionId = RegionId(2);

    fn input(player: u64, seq: u64) -> PlayerInput {
        PlayerInput { player: PlayerId(player), seq, payload: vec![seq as u8] }
    }

    fn transfer(player: u64) -> Transfer {
        Transfer {
            player: PlayerId(player),
            from: HOME,
            to: NEXT,
            last_applied: 0,
            pending: Vec::new(),
            avatar: Vec::new(),
            crossings: 1,
        }
    }

    #[test]
    fn a_resume_takes_the_session_over_and_only_the_last_connection_ending_counts() {
        let start = Instant::now();
        let mut table = SessionTable::new(GRACE);
        let first = table.handle_connected(PlayerId(7), HOME);
        assert!(!first.resumed);
        table.handle_joined(PlayerId(7), first.generation, NEXT);
        // A resume (with a token for another region) continues where the session is.
        let second = table.handle_connected(PlayerId(7), RegionId(9));
        assert_eq!((second.resumed, second.region), (true, NEXT));
        // The first connection's end is old news; the second's starts the grace.
        table.handle_disconnected(start, PlayerId(7), first.generation);
        assert_eq!(table.poll_timeout(), None);
        table.handle_disconnected(start, PlayerId(7), second.generation);
        let deadline = table.poll_timeout().unwrap();
        assert_eq!(deadline, start + GRACE + Duration::from_secs(1));
        assert!(table.handle_timeout(deadline - Duration::from_millis(1)).is_empty());
        assert_eq!(table.handle_timeout(deadline), vec![SessionAction::Leave { player: PlayerId(7), region: NEXT }]);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_resume_within_the_grace_keeps_the_player_in_its_region() {
        let start = Instant::now();
        let mut table = SessionTable::new(GRACE);
        let first = table.handle_connected(PlayerId(7), HOME);
        table.handle_disconnected(start, PlayerId(7), first.generation);
        let again = table.handle_connected(PlayerId(7), HOME);
        assert!(again.resumed);
        assert!(table.handle_timeout(start + GRACE * 2).is_empty(), "a resumed session does not leave");
        assert_eq!(table.region_of(PlayerId(7)), Some(HOME));
        // A failed join of an old connection does not end the newer one's session.
        table.handle_join_failed(PlayerId(7), first.generation);
        assert_eq!(table.len(), 1);
        table.handle_join_failed(PlayerId(7), again.generation);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn inputs_wait_during_a_crossing_and_go_on_in_order_with_the_arrival() {
        let mut table = SessionTable::new(GRACE);
        table.handle_connected(PlayerId(7), HOME);
        assert_eq!(table.handle_input(input(7, 1)), Routed::To(HOME, input(7, 1)));
        assert_eq!(
            table.handle_emigrated(transfer(7)),
            Some(SessionAction::Deliver { transfer: transfer(7), delivery: Delivery::Onward })
        );
        for seq in 2..=4 {
            assert_eq!(table.handle_input(input(7, seq)), Routed::Waiting, "input {seq} waits for the arrival");
        }
        // A resume in the middle of the crossing keeps the waiting inputs.
        let resumed = table.handle_connected(PlayerId(7), HOME);
        assert!(resumed.resumed);
        assert_eq!(table.handle_input(input(7, 5)), Routed::Waiting);
        let waited = table.handle_arrived(PlayerId(7), NEXT, 1).unwrap();
        assert_eq!(waited.iter().map(|input| input.seq).collect::<Vec<_>>(), vec![2, 3, 4, 5]);
        assert_eq!(table.handle_input(input(7, 6)), Routed::To(NEXT, input(7, 6)));
        assert_eq!(table.players_in(NEXT), vec![PlayerId(7)]);
    }

    #[test]
    fn a_crossing_sent_again_while_it_is_delivered_is_not_delivered_twice() {
        let mut table = SessionTable::new(GRACE);
        table.handle_connected(PlayerId(7), HOME);
        assert!(table.handle_emigrated(transfer(7)).is_some());
        assert_eq!(table.handle_emigrated(transfer(7)), None, "its region sent it again");
        // The avatar's next crossing (one more) during the same transit is another one.
        let next = Transfer { from: NEXT, to: RegionId(9), crossings: 2, ..transfer(7) };
        assert!(table.handle_emigrated(next.clone()).is_some());
        table.handle_arrived(PlayerId(7), RegionId(9), 2);
        // After the arrival, the same crossing again is a stale copy's (the player is elsewhere).
        assert_eq!(table.handle_emigrated(next), None);
    }

    #[test]
    fn an_arrival_of_an_earlier_crossing_ends_neither_a_later_one_nor_moves_the_player_back() {
        let mut table = SessionTable::new(GRACE);
        table.handle_connected(PlayerId(7), HOME);
        // Crossing 1 (HOME to NEXT) arrives; crossing 2 (NEXT to 9) is out.
        table.handle_emigrated(transfer(7));
        assert!(table.handle_arrived(PlayerId(7), NEXT, 1).is_some());
        let second = Transfer { from: NEXT, to: RegionId(9), crossings: 2, ..transfer(7) };
        assert!(table.handle_emigrated(second).is_some());
        assert_eq!(table.handle_input(input(7, 1)), Routed::Waiting);
        // Crossing 1 delivered again (a reconnect) is answered again, late: ignored.
        assert_eq!(table.handle_arrived(PlayerId(7), NEXT, 1), None);
        assert!(table.in_transit(PlayerId(7)), "the second crossing still holds the inputs");
        assert_eq!(table.delivering(PlayerId(7)), Some(2));
        // Its own arrival ends it.
        assert_eq!(table.handle_arrived(PlayerId(7), RegionId(9), 2), Some(vec![input(7, 1)]));
        // Once over, a late arrival of crossing 1 does not put the player back in NEXT.
        assert_eq!(table.handle_arrived(PlayerId(7), NEXT, 1), None);
        assert_eq!(table.region_of(PlayerId(7)), Some(RegionId(9)));
        assert_eq!(table.handle_input(input(7, 2)), Routed::To(RegionId(9), input(7, 2)));
    }

    #[test]
    fn an_avatar_leaving_a_region_its_player_is_not_in_is_a_stale_copy_and_is_dropped() {
        let mut table = SessionTable::new(GRACE);
        table.handle_connected(PlayerId(7), HOME);
        // The player is in HOME; a copy of its avatar left in NEXT (restored from older state)
        // crosses towards HOME: dropped, and the player's inputs keep flowing to HOME.
        let stale = Transfer { from: NEXT, to: HOME, ..transfer(7) };
        assert_eq!(table.handle_emigrated(stale), None);
        assert_eq!(table.handle_input(input(7, 1)), Routed::To(HOME, input(7, 1)), "no crossing began");
        // During the live avatar's crossing the gateway cannot tell: an avatar leaving its
        // destination (taken in there, arrival not heard yet) goes on.
        assert!(table.handle_emigrated(transfer(7)).is_some());
        assert!(
            table.handle_emigrated(Transfer { from: NEXT, to: RegionId(9), crossings: 2, ..transfer(7) }).is_some()
        );
        assert_eq!(table.handle_arrived(PlayerId(7), RegionId(9), 2), Some(Vec::new()));
        assert_eq!(
            table.handle_emigrated(Transfer { from: NEXT, crossings: 3, ..transfer(7) }),
            None,
            "crossing over: stale"
        );
        // A player with no session here: its avatar is delivered (this gateway cannot tell).
        assert!(table.handle_emigrated(transfer(8)).is_some());
    }

    #[test]
    fn inputs_waiting_for_a_crossing_are_bounded_per_player() {
        let mut table = SessionTable::new(GRACE);
        table.handle_connected(PlayerId(7), HOME);
        table.handle_connected(PlayerId(8), HOME);
        table.handle_emigrated(transfer(7));
        table.handle_emigrated(transfer(8));
        for seq in 1..=MAX_TRANSIT_INPUTS as u64 {
            assert_eq!(table.handle_input(input(7, seq)), Routed::Waiting);
        }
        let over = MAX_TRANSIT_INPUTS as u64 + 1;
        assert_eq!(table.handle_input(input(7, over)), Routed::TransitFull(PlayerId(7)));
        assert_eq!(table.handle_input(input(8, 1)), Routed::Waiting, "another player's inputs still wait");
        let waited = table.handle_arrived(PlayerId(7), NEXT, 1).expect("the player has a session");
        assert_eq!(waited.len(), MAX_TRANSIT_INPUTS);
        assert!(waited.iter().map(|input| input.seq).eq(1..=MAX_TRANSIT_INPUTS as u64), "the first ones, in order");
        assert_eq!(table.handle_input(input(7, over)), Routed::To(NEXT, input(7, over)), "arrived: routed again");
    }

    #[test]
    fn a_crossing_refused_as_a_stale_copy_goes_on_as_the_avatar_left_and_counts_afresh() {
        let start = Instant::now();
        let mut table = SessionTable::new(GRACE);
        table.handle_connected(PlayerId(7), HOME);
        assert!(!table.in_transit(PlayerId(7)));
        table.handle_emigrated(transfer(7));
        assert!(table.in_transit(PlayerId(7)));
        assert_eq!(table.delivering(PlayerId(7)), Some(transfer(7).crossings));
        assert_eq!(table.delivering(PlayerId(8)), None, "no session");
        // Failures so far count towards turning back...
        for _ in 0..SEND_BACK_AFTER - 1 {
            table.handle_immigration_refused(start, transfer(7));
        }
        // ...until NEXT says the avatar came there and left again towards 9, as `onward`.
        let onward = Transfer { from: NEXT, to: RegionId(9), crossings: 3, ..transfer(7) };
        assert_eq!(
            table.handle_moved_on(&transfer(7), onward.clone()),
            Some(SessionAction::Deliver { transfer: onward.clone(), delivery: Delivery::Onward })
        );
        assert!(table.in_transit(PlayerId(7)), "inputs still wait for the arrival");
        assert_eq!(table.delivering(PlayerId(7)), Some(3), "the crossing delivered now is the onward one");
        assert_eq!(table.handle_emigrated(onward.clone()), None, "the same crossing sent again: one delivery");
        table.handle_immigration_refused(start, onward.clone());
        let retried = table.handle_timeout(start + CROSSING_RETRY);
        assert!(
            retried.contains(&SessionAction::Deliver { transfer: onward.clone(), delivery: Delivery::Onward }),
            "a new count: one refusal does not turn it back ({retried:?})"
        );
        assert_eq!(table.handle_arrived(PlayerId(7), RegionId(9), 3), Some(Vec::new()));
        assert_eq!(table.region_of(PlayerId(7)), Some(RegionId(9)));
        // A late answer once the crossing is over changes nothing, and a repeated arrival ends
        // nothing.
        assert_eq!(table.handle_moved_on(&onward, Transfer { crossings: 4, ..onward.clone() }), None);
        assert_eq!(table.handle_arrived(PlayerId(7), RegionId(9), 3), None);
        assert!(!table.in_transit(PlayerId(7)));
        assert_eq!(table.delivering(PlayerId(7)), None, "arrived: nothing is being delivered");
        assert_eq!(table.last_crossing(PlayerId(7)), Some(3), "the latest crossing is remembered");
        assert_eq!(table.last_crossing(PlayerId(8)), None, "no session");
    }

    #[test]
    fn a_refused_crossing_is_retried_later_and_turned_back_after_thirty_failures() {
        let start = Instant::now();
        let mut table = SessionTable::new(GRACE);
        table.handle_connected(PlayerId(7), HOME);
        table.handle_emigrated(transfer(7));
        let mut now = start;
        let mut ways = Vec::new();
        for failure in 1..=31u32 {
            if failure % 2 == 0 {
                table.handle_immigration_refused(now, transfer(7));
            } else {
                table.handle_unroutable(now, transfer(7));
            }
            assert_eq!(table.poll_timeout(), Some(now + CROSSING_RETRY), "retried after a pause, not at once");
            assert!(table.handle_timeout(now).is_empty());
            now += CROSSING_RETRY;
            match &table.handle_timeout(now)[..] {
                [SessionAction::Deliver { delivery, .. }] => ways.push(*delivery),
                other => panic!("failure {failure}: {other:?}"),
            }
        }
        assert!(ways[..29].iter().all(|way| *way == Delivery::Onward), "{ways:?}");
        assert_eq!(ways[29], Delivery::Back, "after 30 failures the avatar goes back");
        // The arrival (wherever) ends the crossing; the player's inputs flow again.
        assert!(table.handle_arrived(PlayerId(7), HOME, 1).is_some());
        assert_eq!(table.handle_input(input(7, 1)), Routed::To(HOME, input(7, 1)));
    }

    #[test]
    fn a_refusal_or_a_retry_of_a_crossing_that_is_over_delivers_nothing() {
        let start = Instant::now();
        let mut table = SessionTable::new(GRACE);
        table.handle_connected(PlayerId(7), HOME);
        table.handle_emigrated(transfer(7));
        // Refused once (the source frozen at the time); the retry is due...
        assert!(table.handle_immigration_refused(start, transfer(7)));
        // ...but another delivery (to the new owner) arrived first: the retry sends nothing.
        assert!(table.handle_arrived(PlayerId(7), NEXT, 1).is_some());
        assert_eq!(table.handle_timeout(start + CROSSING_RETRY), Vec::new());
        // A refusal that comes after the arrival is late: nothing is scheduled.
        assert!(!table.handle_immigration_refused(start, transfer(7)));
        assert_eq!(table.poll_timeout(), None);
        // The next crossing is out: a refusal of the earlier one is late too, its own is not.
        let next = Transfer { from: NEXT, to: RegionId(9), crossings: 2, ..transfer(7) };
        assert!(table.handle_emigrated(next.clone()).is_some());
        assert!(!table.handle_immigration_refused(start, transfer(7)));
        assert!(table.handle_immigration_refused(start, next.clone()));
        assert_eq!(
            table.handle_timeout(start + CROSSING_RETRY),
            vec![SessionAction::Deliver { transfer: next, delivery: Delivery::Onward }]
        );
        // A player with no session here: its avatar is carried on whatever the table knows.
        assert!(table.handle_immigration_refused(start, transfer(8)));
        assert_eq!(
            table.handle_timeout(start + CROSSING_RETRY),
            vec![SessionAction::Deliver { transfer: transfer(8), delivery: Delivery::Onward }]
        );
    }

    #[test]
    fn a_stopped_region_ends_its_players_sessions_only() {
        let mut table = SessionTable::new(GRACE);
        table.handle_connected(PlayerId(1), HOME);
        table.handle_connected(PlayerId(2), NEXT);
        table.handle_connected(PlayerId(3), HOME);
        let mut ended = table.handle_stopped(HOME);
        ended.sort();
        assert_eq!(ended, vec![PlayerId(1), PlayerId(3)]);
        assert_eq!(table.len(), 1);
        assert!(table.handle_detached(PlayerId(2)));
        assert!(!table.handle_detached(PlayerId(2)));
        assert_eq!(table.handle_input(input(2, 1)), Routed::NoSession(PlayerId(2)), "no session, nowhere to go");
    }

    #[test]
    fn timers_due_at_the_same_instant_all_fire_in_the_order_scheduled() {
        let start = Instant::now();
        let mut table = SessionTable::new(GRACE);
        let first = table.handle_connected(PlayerId(1), HOME);
        let second = table.handle_connected(PlayerId(2), HOME);
        table.handle_disconnected(start, PlayerId(1), first.generation);
        table.handle_disconnected(start, PlayerId(2), second.generation);
        let due = table.poll_timeout().unwrap();
        assert_eq!(
            table.handle_timeout(due),
            vec![
                SessionAction::Leave { player: PlayerId(1), region: HOME },
                SessionAction::Leave { player: PlayerId(2), region: HOME }
            ]
        );
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn an_older_connections_grace_does_not_end_a_session_that_resumed_and_dropped_again() {
        let start = Instant::now();
        let mut table = SessionTable::new(GRACE);
        let first = table.handle_connected(PlayerId(7), HOME);
        table.handle_disconnected(start, PlayerId(7), first.generation);
        let second = table.handle_connected(PlayerId(7), HOME);
        let later = start + Duration::from_secs(3);
        table.handle_disconnected(later, PlayerId(7), second.generation);
        // The first connection's grace ends: the session is the second connection's now.
        assert!(table.handle_timeout(start + GRACE + Duration::from_secs(1)).is_empty());
        assert_eq!(table.len(), 1);
        assert_eq!(
            table.handle_timeout(later + GRACE + Duration::from_secs(1)),
            vec![SessionAction::Leave { player: PlayerId(7), region: HOME }]
        );
    }

    #[test]
    fn an_input_bounced_by_its_region_s_owner_goes_again_after_the_retry_others_at_once() {
        let start = Instant::now();
        let mut table = SessionTable::new(GRACE);
        table.handle_connected(PlayerId(7), HOME);
        // By the owner of the region the player is in: it waits, then comes back out to be routed.
        assert_eq!(table.handle_bounced(start, HOME, input(7, 1), true), Bounced::Later);
        assert_eq!(table.poll_timeout(), Some(start + BOUNCE_RETRY));
        assert!(table.handle_timeout(start + BOUNCE_RETRY - Duration::from_millis(1)).is_empty());
        assert_eq!(table.handle_timeout(start + BOUNCE_RETRY), vec![SessionAction::Route(input(7, 1))]);
        // Held together under one timer, one copy of each; at most MAX_TRANSIT_INPUTS of them.
        assert_eq!(table.handle_bounced(start, HOME, input(7, 10), true), Bounced::Later);
        let later = start + Duration::from_millis(10);
        assert_eq!(table.handle_bounced(later, HOME, input(7, 11), true), Bounced::Held);
        assert_eq!(table.handle_bounced(later, HOME, input(7, 10), true), Bounced::Held);
        for seq in 12..(10 + MAX_TRANSIT_INPUTS as u64) {
            assert_eq!(table.handle_bounced(later, HOME, input(7, seq), true), Bounced::Held);
        }
        let over = 10 + MAX_TRANSIT_INPUTS as u64;
        assert_eq!(table.handle_bounced(later, HOME, input(7, over), true), Bounced::Dropped);
        assert_eq!(table.poll_timeout(), Some(start + BOUNCE_RETRY));
        let routed = table.handle_timeout(start + BOUNCE_RETRY);
        assert_eq!(routed, (10..over).map(|seq| SessionAction::Route(input(7, seq))).collect::<Vec<_>>());
        // A player whose session ended meanwhile: nothing is held for it any more.
        assert_eq!(table.handle_bounced(start, HOME, input(7, 1), true), Bounced::Later);
        assert!(table.handle_detached(PlayerId(7)));
        assert!(table.handle_timeout(start + BOUNCE_RETRY * 2).is_empty());
        table.handle_connected(PlayerId(7), HOME);
        // By an owner a handoff replaced, or by another region's: at once.
        assert_eq!(table.handle_bounced(start, HOME, input(7, 2), false), Bounced::Route(input(7, 2)));
        assert_eq!(table.handle_bounced(start, NEXT, input(7, 3), true), Bounced::Route(input(7, 3)));
        // While the avatar crosses: at once too (routed, it waits for the arrival).
        assert!(table.handle_emigrated(transfer(7)).is_some());
        assert_eq!(table.handle_bounced(start, HOME, input(7, 4), true), Bounced::Route(input(7, 4)));
        // A player with no session here: routed (and dropped there, counted).
        assert_eq!(table.handle_bounced(start, HOME, input(8, 1), true), Bounced::Route(input(8, 1)));
        assert_eq!(table.poll_timeout(), None);
    }

    #[test]
    fn a_session_ends_for_bounces_only_after_many_over_a_while_and_an_update_forgives_them() {
        let start = Instant::now();
        let mut table = SessionTable::new(GRACE);
        table.handle_connected(PlayerId(7), HOME);
        let bounce =
            |table: &mut SessionTable, at: Instant, seq: u64| table.handle_bounced(at, HOME, input(7, seq), false);
        // Far more than the count within a moment (inputs in flight): the session stays.
        for seq in 1..=u64::from(MAX_BOUNCES) * 2 {
            assert_eq!(bounce(&mut table, start, seq), Bounced::Route(input(7, seq)));
        }
        let almost = start + BOUNCING_FOR_AT_LEAST - Duration::from_millis(1);
        assert!(matches!(bounce(&mut table, almost, 1), Bounced::Route(_)));
        // Still bouncing once the while is over: it ends, said once; what bounces later is dropped.
        let over = start + BOUNCING_FOR_AT_LEAST;
        assert_eq!(bounce(&mut table, over, 2), Bounced::EndSession);
        assert_eq!(bounce(&mut table, over, 3), Bounced::Dropped);
        // An update from the player's region forgives them (one from another region does not).
        assert!(!table.handle_update(PlayerId(7), NEXT));
        assert_eq!(bounce(&mut table, over, 4), Bounced::Dropped);
        assert!(table.handle_update(PlayerId(7), HOME));
        assert!(matches!(bounce(&mut table, over, 5), Bounced::Route(_)));
        // Nor do up to MAX_BOUNCES over a long while; one more then does.
        let much_later = over + BOUNCING_FOR_AT_LEAST * 10;
        for seq in 6..=u64::from(MAX_BOUNCES) + 4 {
            assert!(matches!(bounce(&mut table, much_later, seq), Bounced::Route(_)));
        }
        assert_eq!(bounce(&mut table, much_later, 1), Bounced::EndSession);
        // A new connection of the player starts afresh.
        table.handle_connected(PlayerId(7), HOME);
        assert!(matches!(bounce(&mut table, much_later, 2), Bounced::Route(_)));
    }
}
