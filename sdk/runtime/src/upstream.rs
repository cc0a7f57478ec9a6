//! The region server's side of the upstream protocol: gateways connect (mutual TLS, ALPN
//! `baton-upstream/1`) and multiplex their players over one stream each.
//!
//! The [`GatewayHub`] knows every connected gateway, which gateway serves which player, and which
//! regions this host owns at which epoch. Region threads hand it what players must see (updates,
//! route changes, avatars leaving across a border); it never blocks them: each gateway has a
//! writer task fed through an unbounded channel, which batches frames into few stream writes.
//! What a gateway sends is checked (frame size, decoding, epochs) before it reaches a region;
//! a malformed frame closes that gateway's connection and nothing else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use baton_sdk::RegionLogic;
use baton_sdk::node::GatewayRequest;
use baton_sdk::wire::upstream::{GatewayMessage, ServerMessage, UPSTREAM_VERSION, UpstreamReader, encode_batch};
use baton_sdk::wire::{Epoch, PlayerId, PlayerInput, RegionId};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::Slot;
use crate::region_loop::Command;

/// Identifies one gateway connection on this host.
pub use baton_sdk::node::GatewayId;

/// Connected gateways, the players they serve, and the regions this host owns.
#[derive(Default)]
pub struct GatewayHub {
    next_id: AtomicU64,
    server_name: String,
    gateways: Mutex<HashMap<GatewayId, UnboundedSender<ServerMessage>>>,
    players: Mutex<HashMap<PlayerId, GatewayId>>,
    owned: Mutex<HashMap<RegionId, Epoch>>,
}

impl GatewayHub {
    pub(crate) fn new(server_name: &str) -> GatewayHub {
        GatewayHub { server_name: server_name.to_owned(), ..GatewayHub::default() }
    }

    /// Whether any gateway is connected.
    #[must_use]
    pub fn has_gateways(&self) -> bool {
        self.gateways.lock().is_ok_and(|gateways| !gateways.is_empty())
    }

    /// Whether a gateway serves `player`.
    #[must_use]
    pub fn serves(&self, player: PlayerId) -> bool {
        self.players.lock().is_ok_and(|players| players.contains_key(&player))
    }

    /// The epoch at which this host owns `region`.
    #[must_use]
    pub fn owned_epoch(&self, region: RegionId) -> Option<Epoch> {
        self.owned.lock().ok().and_then(|owned| owned.get(&region).copied())
    }

    /// Records that this host owns `region` at `epoch`, and tells every gateway when `announce`
    /// (a handoff's own messages announce the other changes).
    pub(crate) fn set_owned(&self, region: RegionId, epoch: Epoch, announce: bool) {
        if let Ok(mut owned) = self.owned.lock() {
            owned.insert(region, epoch);
        }
        if announce {
            self.broadcast(&ServerMessage::Owning { region, epoch });
        }
    }

    /// Records that this host no longer owns `region`.
    pub(crate) fn clear_owned(&self, region: RegionId) {
        if let Ok(mut owned) = self.owned.lock() {
            owned.remove(&region);
        }
    }

    /// Sends `message` to every gateway.
    pub(crate) fn broadcast(&self, message: &ServerMessage) {
        if let Ok(gateways) = self.gateways.lock() {
            for sender in gateways.values() {
                let _ = sender.send(message.clone());
            }
        }
    }

    /// Sends `message` to one gateway.
    pub(crate) fn to_gateway(&self, gateway: GatewayId, message: ServerMessage) {
        if let Ok(gateways) = self.gateways.lock()
            && let Some(sender) = gateways.get(&gateway)
        {
            let _ = sender.send(message);
        }
    }

    /// Sends each message to the gateway serving its player (players without one are skipped).
    /// Returns how many were sent.
    pub(crate) fn to_players(&self, messages: Vec<(PlayerId, ServerMessage)>) -> usize {
        let (Ok(players), Ok(gateways)) = (self.players.lock(), self.gateways.lock()) else { return 0 };
        let mut sent = 0;
        for (player, message) in messages {
            if let Some(sender) = players.get(&player).and_then(|gateway| gateways.get(gateway))
                && sender.send(message).is_ok()
            {
                sent += 1;
            }
        }
        sent
    }

    /// `gateway` serves `player` from now on; a gateway that served it before is told to let go.
    /// Without `take_over`, only if no gateway serves the player here.
    pub(crate) fn attach(&self, player: PlayerId, gateway: GatewayId, take_over: bool) {
        let previous = self.players.lock().ok().and_then(|mut players| {
            if !take_over && players.contains_key(&player) {
                return None;
            }
            players.insert(player, gateway)
        });
        if let Some(previous) = previous
            && previous != gateway
        {
            self.to_gateway(previous, ServerMessage::Detached { player });
        }
    }

    /// `player` has no gateway here any more (it left, or its gateway went away).
    pub(crate) fn detach(&self, player: PlayerId, gateway: GatewayId) {
        if let Ok(mut players) = self.players.lock()
            && players.get(&player) == Some(&gateway)
        {
            players.remove(&player);
        }
    }

    fn register(&self) -> (GatewayId, UnboundedReceiver<ServerMessage>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (sender, receiver) = unbounded_channel();
        if let Ok(mut gateways) = self.gateways.lock() {
            gateways.insert(id, sender);
        }
        (id, receiver)
    }

    fn unregister(&self, gateway: GatewayId) {
        if let Ok(mut gateways) = self.gateways.lock() {
            gateways.remove(&gateway);
        }
        if let Ok(mut players) = self.players.lock() {
            players.retain(|_, served_by| *served_by != gateway);
        }
    }

    fn welcome(&self) -> ServerMessage {
        let regions = self
            .owned
            .lock()
            .map(|owned| owned.iter().map(|(region, epoch)| (*region, *epoch)).collect())
            .unwrap_or_default();
        ServerMessage::Welcome { server: self.server_name.clone(), regions }
    }
}

/// Serves one gateway connection until it closes or misbehaves.
pub(crate) async fn serve_gateway<L: RegionLogic + 'static>(
    connection: quinn::Connection,
    hub: Arc<GatewayHub>,
    regions: Arc<Mutex<HashMap<RegionId, Slot<L>>>>,
) {
    let peer = connection.remote_address();
    let (send, mut recv) = match connection.accept_bi().await {
        Ok(streams) => streams,
        Err(error) => {
            tracing::info!(%peer, %error, "gateway connection closed before its stream opened");
            return;
        }
    };
    let (gateway, outbound) = hub.register();
    tracing::info!(%peer, gateway, "gateway connected");
    hub.to_gateway(gateway, hub.welcome());
    let writer = tokio::spawn(write_loop(send, outbound));
    let result = read_loop(&mut recv, gateway, &hub, &regions).await;
    hub.unregister(gateway);
    writer.abort();
    match result {
        Ok(()) => tracing::info!(%peer, gateway, "gateway disconnected"),
        Err(reason) => {
            tracing::warn!(%peer, gateway, reason, "closing a misbehaving gateway connection");
            connection.close(1u32.into(), reason.as_bytes());
        }
    }
}

async fn write_loop(mut send: quinn::SendStream, mut outbound: UnboundedReceiver<ServerMessage>) {
    let mut buffer = Vec::with_capacity(64 * 1024);
    while let Some(message) = outbound.recv().await {
        buffer.clear();
        // Batch whatever is queued into one write: few large stream writes, few packets.
        for error in encode_batch(message, || outbound.try_recv().ok(), &mut buffer, 60 * 1024) {
            tracing::error!(%error, "dropping an upstream message that cannot be encoded");
        }
        if send.write_all(&buffer).await.is_err() {
            return;
        }
    }
}

async fn read_loop<L: RegionLogic + 'static>(
    recv: &mut quinn::RecvStream,
    gateway: GatewayId,
    hub: &GatewayHub,
    regions: &Mutex<HashMap<RegionId, Slot<L>>>,
) -> Result<(), String> {
    let mut reader = UpstreamReader::default();
    let mut greeted = false;
    loop {
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => reader.feed(&chunk.bytes),
            Ok(None) => return Ok(()),
            Err(error) => {
                tracing::debug!(gateway, %error, "gateway stream ended");
                return Ok(());
            }
        }
        while let Some(message) = reader.next_message::<GatewayMessage>().map_err(|error| error.to_string())? {
            if !greeted {
                match message {
                    GatewayMessage::Hello { version: UPSTREAM_VERSION, gateway: name } => {
                        tracing::info!(gateway, name, "gateway introduced itself");
                        greeted = true;
                        continue;
                    }
                    GatewayMessage::Hello { version, .. } => {
                        return Err(format!("upstream version {version} is not supported (want {UPSTREAM_VERSION})"));
                    }
                    _ => return Err("the first upstream message must be Hello".into()),
                }
            }
            dispatch(message, gateway, hub, regions);
        }
    }
}

fn dispatch<L: RegionLogic + 'static>(
    message: GatewayMessage,
    gateway: GatewayId,
    hub: &GatewayHub,
    regions: &Mutex<HashMap<RegionId, Slot<L>>>,
) {
    let send = |region: RegionId, command: Command<L>| -> bool {
        let sender = regions.lock().ok().and_then(|regions| regions.get(&region).map(|slot| slot.sender.clone()));
        sender.is_some_and(|sender| send_command(&sender, command))
    };
    // Invariant 1: only the owner at the current epoch takes anything; a stamp older than our epoch
    // comes from a gateway that has not heard of a newer owner yet.
    let admits = |region: RegionId, epoch: Epoch| hub.owned_epoch(region).is_some_and(|owned| owned.admits(epoch));
    match message {
        GatewayMessage::Hello { .. } => {}
        GatewayMessage::Join { region, epoch, player } => {
            if !admits(region, epoch) || !send(region, Command::Gateway(GatewayRequest::Join { player, gateway })) {
                hub.to_gateway(gateway, ServerMessage::JoinRefused { region, player, reason: "not the owner".into() });
            }
        }
        GatewayMessage::Leave { region, epoch, player } => {
            hub.detach(player, gateway);
            if admits(region, epoch) {
                send(region, Command::Gateway(GatewayRequest::Leave { player }));
            }
        }
        GatewayMessage::Forget { player } => {
            let senders: Vec<_> = regions
                .lock()
                .map(|regions| regions.values().map(|slot| slot.sender.clone()).collect())
                .unwrap_or_default();
            for sender in senders {
                send_command(&sender, Command::Gateway(GatewayRequest::Forget { player }));
            }
        }
        GatewayMessage::Input { region, epoch, player, seq, payload } => {
            let input = PlayerInput { player, seq, payload };
            let bounced = |input: PlayerInput| ServerMessage::Bounced {
                region,
                player: input.player,
                seq: input.seq,
                payload: input.payload,
            };
            if !admits(region, epoch) {
                hub.to_gateway(gateway, bounced(input));
                return;
            }
            // A region thread that is gone hands the input back in the send error: no copy of
            // the payload is made on the way in.
            let sender = regions.lock().ok().and_then(|regions| regions.get(&region).map(|slot| slot.sender.clone()));
            let refused = match sender {
                Some(sender) => match sender.send(Command::Input(input)) {
                    Ok(()) => None,
                    Err(mpsc::SendError(Command::Input(input))) => Some(input),
                    Err(mpsc::SendError(_)) => None,
                },
                None => Some(input),
            };
            if let Some(input) = refused {
                hub.to_gateway(gateway, bounced(input));
            }
        }
        GatewayMessage::Attach { region, epoch, players } => {
            if admits(region, epoch) {
                for player in players {
                    hub.attach(player, gateway, true);
                }
            }
        }
        GatewayMessage::Immigrate { epoch, transfer } => {
            let region = transfer.to;
            if !admits(region, epoch) {
                hub.to_gateway(
                    gateway,
                    ServerMessage::ImmigrationRefused { transfer, reason: "not the owner".into(), onward: None },
                );
            } else if let Err(transfer) = send_immigrant(regions, region, transfer, gateway) {
                hub.to_gateway(
                    gateway,
                    ServerMessage::ImmigrationRefused { transfer, reason: "region stopped".into(), onward: None },
                );
            }
        }
        // Stale or unroutable skips are dropped: the client says it again while the owner's
        // updates still show the gap.
        GatewayMessage::Skip { region, epoch, player, through } => {
            if admits(region, epoch) {
                send(region, Command::Gateway(GatewayRequest::Skip { player, through }));
            }
        }
    }
}

fn send_immigrant<L: RegionLogic + 'static>(
    regions: &Mutex<HashMap<RegionId, Slot<L>>>,
    region: RegionId,
    transfer: baton_sdk::wire::upstream::Transfer,
    gateway: GatewayId,
) -> Result<(), baton_sdk::wire::upstream::Transfer> {
    let Some(sender) = regions.lock().ok().and_then(|regions| regions.get(&region).map(|slot| slot.sender.clone()))
    else {
        return Err(transfer);
    };
    match sender.send(Command::Gateway(GatewayRequest::Immigrate { transfer, gateway })) {
        Err(mpsc::SendError(Command::Gateway(GatewayRequest::Immigrate { transfer, .. }))) => Err(transfer),
        _ => Ok(()),
    }
}

fn send_command<L: RegionLogic>(sender: &mpsc::Sender<Command<L>>, command: Command<L>) -> bool {
    sender.send(command).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_game::NoGame;

    const REGION: RegionId = RegionId(4);

    /// What [`setup`] makes.
    type Setup = (
        GatewayHub,
        GatewayId,
        UnboundedReceiver<ServerMessage>,
        Mutex<HashMap<RegionId, Slot<NoGame>>>,
        mpsc::Receiver<Command<NoGame>>,
    );

    /// A hub owning `REGION` at epoch 3, one gateway, and the region's thread's channel.
    fn setup() -> Setup {
        let hub = GatewayHub::new("s1");
        hub.set_owned(REGION, Epoch(3), false);
        let (gateway, to_gateway) = hub.register();
        let (sender, commands) = mpsc::channel();
        let regions = Mutex::new(HashMap::from([(
            REGION,
            Slot { generation: 1, sender, registry: Arc::new(baton_sdk::Registry::new()) },
        )]));
        (hub, gateway, to_gateway, regions, commands)
    }

    fn input(epoch: u64) -> GatewayMessage {
        GatewayMessage::Input { region: REGION, epoch: Epoch(epoch), player: PlayerId(7), seq: 5, payload: vec![9] }
    }

    /// Invariant 1 on the server: joins and inputs stamped with an older epoch than the one this
    /// host owns the region at never reach the region; the gateway gets them back.
    #[test]
    fn joins_and_inputs_at_a_stale_epoch_are_refused_and_handed_back() {
        let (hub, gateway, mut to_gateway, regions, commands) = setup();
        dispatch(input(2), gateway, &hub, &regions);
        assert!(commands.try_recv().is_err(), "a stale input reached the region");
        assert_eq!(
            to_gateway.try_recv().ok(),
            Some(ServerMessage::Bounced { region: REGION, player: PlayerId(7), seq: 5, payload: vec![9] })
        );
        let join = GatewayMessage::Join { region: REGION, epoch: Epoch(2), player: PlayerId(7) };
        dispatch(join, gateway, &hub, &regions);
        assert!(commands.try_recv().is_err(), "a stale join reached the region");
        assert!(matches!(to_gateway.try_recv(), Ok(ServerMessage::JoinRefused { player: PlayerId(7), .. })));
        // At the owned epoch both go through, and nothing comes back.
        dispatch(input(3), gateway, &hub, &regions);
        assert!(matches!(commands.try_recv(), Ok(Command::Input(PlayerInput { seq: 5, .. }))));
        let join = GatewayMessage::Join { region: REGION, epoch: Epoch(3), player: PlayerId(7) };
        dispatch(join, gateway, &hub, &regions);
        assert!(matches!(commands.try_recv(), Ok(Command::Gateway(GatewayRequest::Join { player: PlayerId(7), .. }))));
        assert!(to_gateway.try_recv().is_err());
    }

    /// Leaves and skips stamped with an older epoch do not reach the region either (a stale
    /// skip would count inputs lost that the owner may still get); at the owned epoch, or a newer
    /// one this host has not heard of yet (its own commit on the way), they do.
    #[test]
    fn leaves_and_skips_at_a_stale_epoch_never_reach_the_region() {
        let (hub, gateway, mut to_gateway, regions, commands) = setup();
        let leave = |epoch| GatewayMessage::Leave { region: REGION, epoch: Epoch(epoch), player: PlayerId(7) };
        let skip =
            |epoch| GatewayMessage::Skip { region: REGION, epoch: Epoch(epoch), player: PlayerId(7), through: 9 };
        dispatch(leave(2), gateway, &hub, &regions);
        dispatch(skip(2), gateway, &hub, &regions);
        assert!(commands.try_recv().is_err(), "a stale leave or skip reached the region");
        dispatch(skip(3), gateway, &hub, &regions);
        assert!(matches!(
            commands.try_recv(),
            Ok(Command::Gateway(GatewayRequest::Skip { player: PlayerId(7), through: 9 }))
        ));
        dispatch(leave(4), gateway, &hub, &regions);
        assert!(matches!(commands.try_recv(), Ok(Command::Gateway(GatewayRequest::Leave { player: PlayerId(7) }))));
        dispatch(input(4), gateway, &hub, &regions);
        assert!(matches!(commands.try_recv(), Ok(Command::Input(PlayerInput { seq: 5, .. }))));
        assert!(to_gateway.try_recv().is_err());
    }

    /// An input for a region whose thread is gone comes back whole (nothing is copied or lost).
    #[test]
    fn an_input_for_a_stopped_region_thread_comes_back_whole() {
        let (hub, gateway, mut to_gateway, regions, commands) = setup();
        drop(commands);
        dispatch(input(3), gateway, &hub, &regions);
        assert_eq!(
            to_gateway.try_recv().ok(),
            Some(ServerMessage::Bounced { region: REGION, player: PlayerId(7), seq: 5, payload: vec![9] })
        );
        // A region this host does not own at all bounces the same way.
        hub.clear_owned(REGION);
        dispatch(input(3), gateway, &hub, &regions);
        assert!(matches!(to_gateway.try_recv(), Ok(ServerMessage::Bounced { .. })));
    }
    /// A gateway the player has left (it resumed elsewhere) may still deliver its crossing again:
    /// the arrival's attach does not take the player over from the gateway serving it now; a
    /// join's does.
    #[test]
    fn only_a_taking_over_attach_moves_a_player_between_gateways() {
        let (hub, old, mut to_old, _regions, _commands) = setup();
        let (new, mut to_new) = hub.register();
        hub.attach(PlayerId(7), new, true);
        hub.attach(PlayerId(7), old, false);
        assert_eq!(hub.to_players(vec![(PlayerId(7), ServerMessage::Detached { player: PlayerId(8) })]), 1);
        assert!(matches!(to_new.try_recv(), Ok(ServerMessage::Detached { player: PlayerId(8) })), "still the new one");
        assert!(to_old.try_recv().is_err());
        // A player no gateway serves here is served by whoever delivers it.
        hub.attach(PlayerId(9), old, false);
        assert!(hub.serves(PlayerId(9)));
        // A join takes over, and the gateway let go of is told.
        hub.attach(PlayerId(7), old, true);
        assert!(matches!(to_new.try_recv(), Ok(ServerMessage::Detached { player: PlayerId(7) })));
    }

    /// `Forget` reaches every region of the server, whoever owns what.
    #[test]
    fn a_forget_reaches_every_region() {
        let (hub, gateway, _to_gateway, regions, commands) = setup();
        dispatch(GatewayMessage::Forget { player: PlayerId(7) }, gateway, &hub, &regions);
        assert!(matches!(commands.try_recv(), Ok(Command::Gateway(GatewayRequest::Forget { player: PlayerId(7) }))));
    }
}
