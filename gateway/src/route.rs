//! Routing of player inputs to the instance that owns each region, across handoffs. No I/O.
//!
//! Each region has an owner (a region-server connection) and the ownership epoch. While a handoff
//! is prepared, inputs still go to the owner and the target is connected ahead of time. From the
//! freeze until the outcome, inputs are **held** here, in arrival order. At cutover the route flips
//! atomically to the new owner and the held inputs are replayed to it in order (the new owner drops
//! any it already has, by sequence number); on abort they go to the source, which owns the region
//! again. So every input accepted here is forwarded exactly once to an owner, in order (invariant 2),
//! and only to the owner of the current epoch (invariant 1): control events and updates stamped with
//! an older epoch are refused.
//!
//! Consistency: inputs of one region keep their arrival order through a handoff; inputs of
//! different regions are independent. What is held is bounded ([`RouteConfig::max_held`]).

use std::collections::VecDeque;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use dashmap::mapref::one::RefMut;

use baton_wire::{Epoch, PlayerInput, RegionId};

/// A region-server connection of the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerId(pub u32);

/// Limits of the route table.
#[derive(Clone, Copy, Debug)]
pub struct RouteConfig {
    /// Most inputs held for one region during a freeze.
    pub max_held: usize,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig { max_held: 65_536 }
    }
}

/// A control-plane event about a region (from the coordinator or the region servers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteEvent {
    /// `server` owns `region` at `epoch` (a new region, or a failover); must be newer than known.
    Assign {
        /// The region.
        region: RegionId,
        /// Its owner.
        server: ServerId,
        /// The epoch.
        epoch: Epoch,
    },
    /// The owner at `epoch` started handing the region to `target`.
    HandoffStarted {
        /// The region.
        region: RegionId,
        /// The source's epoch.
        epoch: Epoch,
        /// The target.
        target: ServerId,
    },
    /// The owner at `epoch` froze: hold inputs.
    Frozen {
        /// The region.
        region: RegionId,
        /// The source's epoch.
        epoch: Epoch,
    },
    /// The handoff committed: `server` owns the region at `epoch`.
    Committed {
        /// The region.
        region: RegionId,
        /// The new owner.
        server: ServerId,
        /// The new epoch.
        epoch: Epoch,
    },
    /// The handoff failed; the source owns the region at `epoch` (its old one, or one more).
    Aborted {
        /// The region.
        region: RegionId,
        /// The source's epoch now.
        epoch: Epoch,
    },
}

/// What the gateway must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteAction {
    /// Send `input` to `server`, stamped with `epoch`.
    Forward {
        /// The region.
        region: RegionId,
        /// Where.
        server: ServerId,
        /// The owner's epoch.
        epoch: Epoch,
        /// The input.
        input: PlayerInput,
    },
    /// The region's owner changed to one that is not the target of a handoff this gateway
    /// followed (a failover, or a handoff it missed entirely): its players must send again every
    /// input not yet durable, because the new owner may hold older state than the one they were
    /// acknowledged by.
    Resend {
        /// The region.
        region: RegionId,
    },
}

/// Errors of the route table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// No route is known for the region.
    #[error("no route to region {0}")]
    UnknownRegion(RegionId),
    /// An event or update carries an epoch older than (or inconsistent with) the route's.
    #[error("stale epoch {got} for region {region} (route is at {current})")]
    StaleEpoch {
        /// The region.
        region: RegionId,
        /// The epoch it carried.
        got: Epoch,
        /// The route's epoch.
        current: Epoch,
    },
    /// The event does not fit the route's state (e.g. a freeze without a handoff).
    #[error("region {region}: {event} while {state}")]
    OutOfOrder {
        /// The region.
        region: RegionId,
        /// What arrived.
        event: &'static str,
        /// The route's state.
        state: &'static str,
    },
    /// Too many inputs are held for the region; this one was not accepted.
    #[error("region {0} holds too many inputs during a handoff")]
    HoldFull(RegionId),
}

#[derive(Clone, Debug)]
enum Stage {
    Open,
    Preparing { target: ServerId },
    Held { target: ServerId, held: VecDeque<PlayerInput> },
}

impl Stage {
    fn name(&self) -> &'static str {
        match self {
            Stage::Open => "open",
            Stage::Preparing { .. } => "preparing",
            Stage::Held { .. } => "held",
        }
    }
}

#[derive(Clone, Debug)]
struct Route {
    owner: ServerId,
    epoch: Epoch,
    stage: Stage,
}

/// The gateway's routes, one per region.
#[derive(Debug, Default)]
pub struct RouteTable {
    config: RouteConfig,
    /// One entry per region; each operation holds only its region's shard lock, so the hold, flip
    /// and replay of one region are atomic and different regions never wait for each other.
    routes: DashMap<RegionId, Route>,
}

impl RouteTable {
    /// An empty table.
    #[must_use]
    pub fn new(config: RouteConfig) -> RouteTable {
        RouteTable { config, routes: DashMap::new() }
    }

    /// The owner and epoch of `region`.
    #[must_use]
    pub fn owner(&self, region: RegionId) -> Option<(ServerId, Epoch)> {
        self.routes.get(&region).map(|route| (route.owner, route.epoch))
    }

    /// Whether any route names `server`, as its owner or as a handoff's target.
    #[must_use]
    pub fn references(&self, server: ServerId) -> bool {
        self.routes.iter().any(|route| {
            route.owner == server
                || matches!(&route.stage, Stage::Preparing { target } | Stage::Held { target, .. } if *target == server)
        })
    }

    /// The target a handoff of `region` is moving to, while one is prepared or frozen.
    #[must_use]
    pub fn handoff_target(&self, region: RegionId) -> Option<ServerId> {
        let route = self.routes.get(&region)?;
        match &route.stage {
            Stage::Preparing { target } | Stage::Held { target, .. } => Some(*target),
            Stage::Open => None,
        }
    }

    /// Inputs held for `region` now.
    #[must_use]
    pub fn held(&self, region: RegionId) -> usize {
        self.routes.get(&region).map_or(0, |route| match &route.stage {
            Stage::Held { held, .. } => held.len(),
            _ => 0,
        })
    }

    /// Whether a state update from `server` stamped `epoch` for `region` may reach players: only
    /// the current owner at the current epoch is heard (invariant 1).
    #[must_use]
    pub fn admits_update(&self, region: RegionId, server: ServerId, epoch: Epoch) -> bool {
        self.routes.get(&region).is_some_and(|route| route.owner == server && route.epoch == epoch)
    }

    /// A player's input for `region`: forwarded to the owner, or held during a freeze.
    pub fn handle_input(&self, region: RegionId, input: PlayerInput) -> Result<Option<RouteAction>, RouteError> {
        let max_held = self.config.max_held;
        let mut route = self.routes.get_mut(&region).ok_or(RouteError::UnknownRegion(region))?;
        let (owner, epoch) = (route.owner, route.epoch);
        match &mut route.stage {
            Stage::Open | Stage::Preparing { .. } => {
                Ok(Some(RouteAction::Forward { region, server: owner, epoch, input }))
            }
            Stage::Held { held, .. } => {
                if held.len() >= max_held {
                    return Err(RouteError::HoldFull(region));
                }
                held.push_back(input);
                Ok(None)
            }
        }
    }

    /// A control-plane event; returns what to do, in order.
    pub fn handle_event(&self, event: RouteEvent) -> Result<Vec<RouteAction>, RouteError> {
        match event {
            RouteEvent::Assign { region, server, epoch } => {
                let fresh = Route { owner: server, epoch, stage: Stage::Open };
                // A newer owner (failover) takes the region whatever was going on; held inputs
                // go to it, in order, and then its players send again what is not durable.
                let (held, replaced) = match self.routes.entry(region) {
                    Entry::Occupied(mut occupied) => {
                        if epoch <= occupied.get().epoch {
                            return Err(RouteError::StaleEpoch { region, got: epoch, current: occupied.get().epoch });
                        }
                        // The handoff's own target at a newer epoch is its commit, heard first from
                        // elsewhere (the feed): nothing was lost, nobody sends anything again.
                        let (held, handoff_target) = match std::mem::replace(occupied.get_mut(), fresh).stage {
                            Stage::Held { held, target } => (held, target == server),
                            Stage::Preparing { target } => (VecDeque::new(), target == server),
                            Stage::Open => (VecDeque::new(), false),
                        };
                        (held, !handoff_target)
                    }
                    Entry::Vacant(vacant) => {
                        vacant.insert(fresh);
                        (VecDeque::new(), false)
                    }
                };
                let mut actions: Vec<RouteAction> =
                    held.into_iter().map(|input| RouteAction::Forward { region, server, epoch, input }).collect();
                if replaced {
                    actions.push(RouteAction::Resend { region });
                }
                Ok(actions)
            }
            RouteEvent::HandoffStarted { region, epoch, target } => {
                let mut route = self.current(region, epoch)?;
                match route.stage {
                    Stage::Open => {
                        route.stage = Stage::Preparing { target };
                        // The gateway connects to the target when it learns its address (its
                        // `ServerId` exists only once a connection to it was started), so
                        // nothing more is needed here to pre-connect.
                        Ok(Vec::new())
                    }
                    ref stage => Err(RouteError::OutOfOrder { region, event: "handoff started", state: stage.name() }),
                }
            }
            RouteEvent::Frozen { region, epoch } => {
                let mut route = self.current(region, epoch)?;
                match route.stage {
                    Stage::Preparing { target } => {
                        route.stage = Stage::Held { target, held: VecDeque::new() };
                        Ok(Vec::new())
                    }
                    ref stage => Err(RouteError::OutOfOrder { region, event: "frozen", state: stage.name() }),
                }
            }
            RouteEvent::Committed { region, server, epoch } => {
                let mut route = self.routes.get_mut(&region).ok_or(RouteError::UnknownRegion(region))?;
                if epoch <= route.epoch {
                    return Err(RouteError::StaleEpoch { region, got: epoch, current: route.epoch });
                }
                let stage = std::mem::replace(&mut route.stage, Stage::Open);
                let held = match stage {
                    Stage::Held { held, .. } => held,
                    // A commit can only follow a freeze; a commit reported before we heard of the
                    // freeze still flips (the region moved), with nothing held.
                    Stage::Preparing { .. } | Stage::Open => VecDeque::new(),
                };
                // protocol.md §6: the flip is atomic for this region: every input after this point
                // goes to the new owner, and the held ones go first, in order.
                route.owner = server;
                route.epoch = epoch;
                Ok(held.into_iter().map(|input| RouteAction::Forward { region, server, epoch, input }).collect())
            }
            RouteEvent::Aborted { region, epoch } => {
                let mut route = self.routes.get_mut(&region).ok_or(RouteError::UnknownRegion(region))?;
                if epoch < route.epoch {
                    return Err(RouteError::StaleEpoch { region, got: epoch, current: route.epoch });
                }
                let stage = std::mem::replace(&mut route.stage, Stage::Open);
                route.epoch = epoch;
                let owner = route.owner;
                let held = match stage {
                    Stage::Held { held, .. } => held,
                    _ => VecDeque::new(),
                };
                Ok(held.into_iter().map(|input| RouteAction::Forward { region, server: owner, epoch, input }).collect())
            }
        }
    }

    fn current(&self, region: RegionId, epoch: Epoch) -> Result<RefMut<'_, RegionId, Route>, RouteError> {
        let route = self.routes.get_mut(&region).ok_or(RouteError::UnknownRegion(region))?;
        if route.epoch != epoch {
            return Err(RouteError::StaleEpoch { region, got: epoch, current: route.epoch });
        }
        Ok(route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_wire::PlayerId;
    use proptest::prelude::*;

    const REGION: RegionId = RegionId(1);

    #[derive(Clone, Debug)]
    enum Op {
        Input(u8),
        Start(u32),
        Freeze,
        Commit(u32),
        Abort {
            reclaimed: bool,
        },
        Failover(u32),
        /// An event stamped with an epoch older than the route's.
        StaleFreeze,
        StaleCommit(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u8..4).prop_map(Op::Input),
            2 => (1u32..4).prop_map(Op::Start),
            2 => Just(Op::Freeze),
            2 => (1u32..4).prop_map(Op::Commit),
            1 => any::<bool>().prop_map(|reclaimed| Op::Abort { reclaimed }),
            1 => (1u32..4).prop_map(Op::Failover),
            1 => Just(Op::StaleFreeze),
            1 => (1u32..4).prop_map(Op::StaleCommit),
        ]
    }

    /// What the control plane would really send, and what the gateway must then do.
    struct Model {
        owner: ServerId,
        epoch: Epoch,
        target: Option<ServerId>,
        frozen: bool,
    }

    fn check(ops: Vec<Op>) {
        let table = RouteTable::new(RouteConfig::default());
        table.handle_event(RouteEvent::Assign { region: REGION, server: ServerId(0), epoch: Epoch(1) }).unwrap();
        let mut model = Model { owner: ServerId(0), epoch: Epoch(1), target: None, frozen: false };
        let mut next_seq = [1u64; 4];
        let mut accepted = 0u64;
        let mut forwarded: Vec<(PlayerId, u64)> = Vec::new();
        let verify = |actions: Vec<RouteAction>, model: &Model, forwarded: &mut Vec<(PlayerId, u64)>| {
            for action in actions {
                let RouteAction::Forward { server, epoch, input, .. } = action else { continue };
                // Invariant 1: only to the owner of the current epoch.
                assert_eq!((server, epoch), (model.owner, model.epoch), "forwarded to a non-owner");
                forwarded.push((input.player, input.seq));
            }
        };
        for op in ops {
            match op {
                Op::Input(player) => {
                    let seq = next_seq[usize::from(player)];
                    next_seq[usize::from(player)] += 1;
                    let input = PlayerInput { player: PlayerId(u64::from(player)), seq, payload: vec![player] };
                    let action = table.handle_input(REGION, input).unwrap();
                    accepted += 1;
                    assert_eq!(action.is_none(), model.frozen, "inputs are held exactly while frozen");
                    verify(action.into_iter().collect(), &model, &mut forwarded);
                }
                Op::Start(target) => {
                    let result = table.handle_event(RouteEvent::HandoffStarted {
                        region: REGION,
                        epoch: model.epoch,
                        target: ServerId(target),
                    });
                    if model.target.is_none() {
                        assert_eq!(result.unwrap(), Vec::new());
                        model.target = Some(ServerId(target));
                    } else {
                        assert!(result.is_err());
                    }
                }
                Op::Freeze => {
                    let result = table.handle_event(RouteEvent::Frozen { region: REGION, epoch: model.epoch });
                    if model.target.is_some() && !model.frozen {
                        assert!(result.unwrap().is_empty());
                        model.frozen = true;
                    } else {
                        assert!(result.is_err());
                    }
                }
                Op::Commit(server) => {
                    if let Some(target) = model.target {
                        let _ = server;
                        model.owner = target;
                        model.epoch = model.epoch.next();
                        model.target = None;
                        model.frozen = false;
                        let actions = table
                            .handle_event(RouteEvent::Committed { region: REGION, server: target, epoch: model.epoch })
                            .unwrap();
                        verify(actions, &model, &mut forwarded);
                    }
                }
                Op::Abort { reclaimed } => {
                    if model.target.is_some() {
                        // A source that froze settles by taking epoch + 1 itself; one that had not
                        // frozen keeps its epoch.
                        if reclaimed && model.frozen {
                            model.epoch = model.epoch.next();
                        }
                        model.target = None;
                        model.frozen = false;
                        let actions =
                            table.handle_event(RouteEvent::Aborted { region: REGION, epoch: model.epoch }).unwrap();
                        verify(actions, &model, &mut forwarded);
                    }
                }
                Op::Failover(server) => {
                    let handoff_target = model.target == Some(ServerId(server));
                    model.owner = ServerId(server);
                    model.epoch = Epoch(model.epoch.0 + 5);
                    model.target = None;
                    model.frozen = false;
                    let actions = table
                        .handle_event(RouteEvent::Assign {
                            region: REGION,
                            server: ServerId(server),
                            epoch: model.epoch,
                        })
                        .unwrap();
                    // The players are asked to send again what is not durable, after the held
                    // inputs went to the new owner; unless the new owner is the handoff's target
                    // (its commit, heard from the feed first).
                    let resends = actions.iter().filter(|action| matches!(action, RouteAction::Resend { .. })).count();
                    if handoff_target {
                        assert_eq!(resends, 0);
                    } else {
                        assert_eq!(actions.last(), Some(&RouteAction::Resend { region: REGION }));
                        assert_eq!(resends, 1);
                    }
                    verify(actions, &model, &mut forwarded);
                }
                Op::StaleFreeze => {
                    if model.epoch.0 > 1 {
                        let stale = Epoch(model.epoch.0 - 1);
                        assert!(matches!(
                            table.handle_event(RouteEvent::Frozen { region: REGION, epoch: stale }),
                            Err(RouteError::StaleEpoch { .. })
                        ));
                    }
                }
                Op::StaleCommit(server) => {
                    let result = table.handle_event(RouteEvent::Committed {
                        region: REGION,
                        server: ServerId(server),
                        epoch: model.epoch,
                    });
                    assert!(
                        matches!(result, Err(RouteError::StaleEpoch { .. })),
                        "a commit at the current epoch is stale"
                    );
                    assert!(
                        !table.admits_update(REGION, ServerId(server + 10), model.epoch),
                        "only the owner is heard"
                    );
                }
            }
            assert_eq!(table.owner(REGION), Some((model.owner, model.epoch)));
        }
        // Settle whatever is still held.
        if model.target.is_some() {
            let actions = table.handle_event(RouteEvent::Aborted { region: REGION, epoch: model.epoch }).unwrap();
            verify(actions, &model, &mut forwarded);
        }
        // Invariant 2: every accepted input was forwarded exactly once, each player's in order.
        assert_eq!(forwarded.len() as u64, accepted, "inputs lost or duplicated");
        for player in 0..4u64 {
            let seqs: Vec<u64> = forwarded.iter().filter(|(who, _)| who.0 == player).map(|(_, seq)| *seq).collect();
            let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(seqs, expected, "player {player}'s inputs out of order");
        }
        assert_eq!(table.held(REGION), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn inputs_reach_the_owner_once_in_order_across_handoffs(ops in proptest::collection::vec(op(), 0..200)) {
            check(ops);
        }
    }

    #[test]
    fn the_hold_is_bounded_and_refuses_rather_than_drops_silently() {
        let table = RouteTable::new(RouteConfig { max_held: 2 });
        table.handle_event(RouteEvent::Assign { region: REGION, server: ServerId(0), epoch: Epoch(1) }).unwrap();
        table
            .handle_event(RouteEvent::HandoffStarted { region: REGION, epoch: Epoch(1), target: ServerId(1) })
            .unwrap();
        table.handle_event(RouteEvent::Frozen { region: REGION, epoch: Epoch(1) }).unwrap();
        let input = |seq| PlayerInput { player: PlayerId(1), seq, payload: Vec::new() };
        assert_eq!(table.handle_input(REGION, input(1)), Ok(None));
        assert_eq!(table.handle_input(REGION, input(2)), Ok(None));
        assert_eq!(table.handle_input(REGION, input(3)), Err(RouteError::HoldFull(REGION)));
        assert_eq!(table.handle_input(RegionId(9), input(1)), Err(RouteError::UnknownRegion(RegionId(9))));
        let actions =
            table.handle_event(RouteEvent::Committed { region: REGION, server: ServerId(1), epoch: Epoch(2) }).unwrap();
        assert_eq!(actions.len(), 2);
        assert!(table.admits_update(REGION, ServerId(1), Epoch(2)));
        assert!(!table.admits_update(REGION, ServerId(0), Epoch(1)), "the old owner's updates are refused");
    }

    /// Invariant 1, pinned: what an older epoch says changes nothing, even from the server that
    /// owns the region again now.
    #[test]
    fn stale_routes_aborts_and_updates_are_refused() {
        let table = RouteTable::new(RouteConfig::default());
        let (a, b) = (ServerId(0), ServerId(1));
        table.handle_event(RouteEvent::Assign { region: REGION, server: a, epoch: Epoch(1) }).unwrap();
        // A at 1, B at 2 (a commit), A at 3 (a later move back).
        table.handle_event(RouteEvent::Committed { region: REGION, server: b, epoch: Epoch(2) }).unwrap();
        table.handle_event(RouteEvent::Committed { region: REGION, server: a, epoch: Epoch(3) }).unwrap();
        assert!(table.admits_update(REGION, a, Epoch(3)));
        assert!(!table.admits_update(REGION, a, Epoch(1)), "A's update stamped with its old epoch is refused");
        assert!(!table.admits_update(REGION, b, Epoch(2)), "B is no longer the owner");
        assert!(!table.admits_update(REGION, a, Epoch(4)), "an epoch nobody granted yet is refused too");
        // A late route assignment (the coordinator's feed repeating an old route) is refused.
        assert_eq!(
            table.handle_event(RouteEvent::Assign { region: REGION, server: b, epoch: Epoch(2) }),
            Err(RouteError::StaleEpoch { region: REGION, got: Epoch(2), current: Epoch(3) })
        );
        assert_eq!(table.owner(REGION), Some((a, Epoch(3))));
        // A late abort of an older handoff neither moves the route nor lowers its epoch.
        assert_eq!(
            table.handle_event(RouteEvent::Aborted { region: REGION, epoch: Epoch(2) }),
            Err(RouteError::StaleEpoch { region: REGION, got: Epoch(2), current: Epoch(3) })
        );
        assert_eq!(table.owner(REGION), Some((a, Epoch(3))));
        // A stale commit does not flip.
        assert!(table.handle_event(RouteEvent::Committed { region: REGION, server: b, epoch: Epoch(3) }).is_err());
        assert_eq!(table.owner(REGION), Some((a, Epoch(3))));
        // Inputs go to the owner at the current epoch.
        let input = PlayerInput { player: PlayerId(1), seq: 1, payload: Vec::new() };
        assert_eq!(
            table.handle_input(REGION, input.clone()),
            Ok(Some(RouteAction::Forward { region: REGION, server: a, epoch: Epoch(3), input }))
        );
    }

    /// A freeze in progress: what an older epoch says neither releases nor redirects what is held,
    /// and the table answers for the handoff's target and what it holds.
    #[test]
    fn a_stale_abort_during_a_freeze_leaves_the_hold_alone() {
        let table = RouteTable::new(RouteConfig::default());
        let (a, b, c) = (ServerId(0), ServerId(1), ServerId(2));
        table.handle_event(RouteEvent::Assign { region: REGION, server: a, epoch: Epoch(1) }).unwrap();
        table.handle_event(RouteEvent::Committed { region: REGION, server: b, epoch: Epoch(2) }).unwrap();
        assert_eq!((table.handoff_target(REGION), table.held(REGION)), (None, 0));
        assert!(table.references(b) && !table.references(a) && !table.references(c));
        table.handle_event(RouteEvent::HandoffStarted { region: REGION, epoch: Epoch(2), target: c }).unwrap();
        assert_eq!(table.handoff_target(REGION), Some(c));
        assert!(table.references(c), "a handoff's target is in use while it is prepared");
        // Frozen twice is out of order, and the error names the stage the route is in.
        table.handle_event(RouteEvent::Frozen { region: REGION, epoch: Epoch(2) }).unwrap();
        assert_eq!(
            table.handle_event(RouteEvent::HandoffStarted { region: REGION, epoch: Epoch(2), target: c }),
            Err(RouteError::OutOfOrder { region: REGION, event: "handoff started", state: "held" })
        );
        let input = |seq| PlayerInput { player: PlayerId(1), seq, payload: Vec::new() };
        assert_eq!(table.handle_input(REGION, input(1)), Ok(None));
        assert_eq!(table.handle_input(REGION, input(2)), Ok(None));
        assert_eq!((table.handoff_target(REGION), table.held(REGION)), (Some(c), 2));
        assert!(table.references(c) && table.references(b));
        // The abort of the handoff before (epoch 1) changes nothing.
        assert_eq!(
            table.handle_event(RouteEvent::Aborted { region: REGION, epoch: Epoch(1) }),
            Err(RouteError::StaleEpoch { region: REGION, got: Epoch(1), current: Epoch(2) })
        );
        assert_eq!(
            (table.owner(REGION), table.handoff_target(REGION), table.held(REGION)),
            (Some((b, Epoch(2))), Some(c), 2)
        );
        // The commit releases the hold to the new owner, in order.
        let actions = table.handle_event(RouteEvent::Committed { region: REGION, server: c, epoch: Epoch(3) }).unwrap();
        let forwarded: Vec<(ServerId, u64)> = actions
            .iter()
            .filter_map(|action| match action {
                RouteAction::Forward { server, input, .. } => Some((*server, input.seq)),
                _ => None,
            })
            .collect();
        assert_eq!(forwarded, vec![(c, 1), (c, 2)]);
        assert_eq!((table.handoff_target(REGION), table.held(REGION)), (None, 0));
        assert!(!table.references(b) && table.references(c));
    }

    #[test]
    fn only_an_owner_change_that_is_not_a_followed_handoff_asks_players_to_send_again() {
        let (a, b, c) = (ServerId(1), ServerId(2), ServerId(3));
        let table = RouteTable::new(RouteConfig::default());
        // The first route is no change.
        assert_eq!(table.handle_event(RouteEvent::Assign { region: REGION, server: a, epoch: Epoch(1) }), Ok(vec![]));
        // The feed names the handoff's target before its commit reached us: that is the commit.
        table.handle_event(RouteEvent::HandoffStarted { region: REGION, epoch: Epoch(1), target: b }).unwrap();
        table.handle_event(RouteEvent::Frozen { region: REGION, epoch: Epoch(1) }).unwrap();
        let input = PlayerInput { player: PlayerId(1), seq: 1, payload: Vec::new() };
        assert_eq!(table.handle_input(REGION, input.clone()), Ok(None), "held");
        assert_eq!(
            table.handle_event(RouteEvent::Assign { region: REGION, server: b, epoch: Epoch(2) }),
            Ok(vec![RouteAction::Forward { region: REGION, server: b, epoch: Epoch(2), input }])
        );
        // An owner nobody handed the region to (a failover): the players send again.
        table.handle_event(RouteEvent::HandoffStarted { region: REGION, epoch: Epoch(2), target: a }).unwrap();
        assert_eq!(
            table.handle_event(RouteEvent::Assign { region: REGION, server: c, epoch: Epoch(3) }),
            Ok(vec![RouteAction::Resend { region: REGION }])
        );
        assert_eq!(
            table.handle_event(RouteEvent::Assign { region: REGION, server: a, epoch: Epoch(4) }),
            Ok(vec![RouteAction::Resend { region: REGION }])
        );
    }

    /// Hold, flip and replay while players' threads keep sending: every input is forwarded exactly
    /// once, each to the owner at the epoch the table had when it decided. (Which of a flip's
    /// replay and a player's next input reaches the new owner first is not decided here; the
    /// region's sessions put a player's inputs back in order by sequence number.)
    #[test]
    fn concurrent_inputs_across_handoffs_are_forwarded_once_to_the_owner_of_their_epoch() {
        const PLAYERS: u64 = 4;
        const INPUTS: u64 = 400;
        let table = RouteTable::new(RouteConfig { max_held: 100_000 });
        table.handle_event(RouteEvent::Assign { region: REGION, server: ServerId(0), epoch: Epoch(1) }).unwrap();
        let forwarded = std::sync::Mutex::new(Vec::new());
        let record = |actions: Vec<RouteAction>| {
            let mut forwarded = forwarded.lock().unwrap();
            for action in actions {
                let RouteAction::Forward { server, epoch, input, .. } = action else {
                    panic!("no failover in this run: {action:?}");
                };
                // Epoch e is owned by server e - 1 in this run (every commit moves to a new one).
                assert_eq!(server, ServerId((epoch.0 - 1) as u32), "forwarded to a non-owner");
                forwarded.push((input.player, input.seq));
            }
        };
        std::thread::scope(|scope| {
            for player in 0..PLAYERS {
                let (table, record) = (&table, &record);
                scope.spawn(move || {
                    for seq in 1..=INPUTS {
                        let input = PlayerInput { player: PlayerId(player), seq, payload: Vec::new() };
                        record(table.handle_input(REGION, input).unwrap().into_iter().collect());
                    }
                });
            }
            let (table, record) = (&table, &record);
            scope.spawn(move || {
                for epoch in 1..=20u64 {
                    let (current, next) = (Epoch(epoch), Epoch(epoch + 1));
                    let target = ServerId(epoch as u32);
                    record(
                        table
                            .handle_event(RouteEvent::HandoffStarted { region: REGION, epoch: current, target })
                            .unwrap(),
                    );
                    record(table.handle_event(RouteEvent::Frozen { region: REGION, epoch: current }).unwrap());
                    std::thread::yield_now();
                    record(
                        table
                            .handle_event(RouteEvent::Committed { region: REGION, server: target, epoch: next })
                            .unwrap(),
                    );
                }
            });
        });
        let forwarded = forwarded.into_inner().unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for (player, seq) in &forwarded {
            assert!(seen.insert((*player, *seq)), "{player} input {seq} forwarded twice");
        }
        assert_eq!(seen.len() as u64, PLAYERS * INPUTS, "every input forwarded");
        assert_eq!(table.held(REGION), 0);
    }
}
