//! Players through the gateway while regions hand off and avatars cross borders (invariants 1-3),
//! and the gateway's defences against bad clients. Every process is a real binary on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton_client::{Client, ClientError, Event};
use baton_gateway::token::Claims;
use baton_gateway::{GatewayCommand, GatewayStats};
use baton_harness::players::{
    ClusterSpec, GatewayCluster, Movement, PlayerOutcome, PlayerPlan, patrol_player, run_player,
};
use baton_wire::player::CloseCode;
use baton_wire::serve::{ServerCommand, ServerEvent};
use baton_wire::{Epoch, PlayerId, RegionId};

fn spec(servers: usize, gateways: usize, gateway_args: &[&str]) -> ClusterSpec {
    ClusterSpec {
        servers,
        gateways,
        world_regions: 2,
        columns: 2,
        server_args: ["--tick-rate", "20"].iter().map(|arg| (*arg).to_owned()).collect(),
        gateway_args: gateway_args.iter().map(|arg| (*arg).to_owned()).collect(),
        placement: None,
    }
}

/// Polls gateway 0's counter `key` until it reaches `at_least`; fails after `within`.
fn wait_for_stat(cluster: &mut GatewayCluster, key: fn(&GatewayStats) -> u64, at_least: u64, within: Duration) {
    baton_harness::wait_until(within, &format!("a counter reaching {at_least}"), || {
        let stats = cluster.gateway_stats(0).map_err(|error| error.to_string())?;
        if key(&stats) >= at_least { Ok(()) } else { Err(format!("{stats:?}")) }
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn players_keep_playing_through_handoffs_and_border_crossings() {
    let mut cluster = GatewayCluster::start(&spec(2, 1, &[])).unwrap();
    cluster.host(0, 1, 200).unwrap();
    cluster.host(1, 2, 200).unwrap();
    // Players play until the test has seen what it waits for; `play_for` only bounds a hang.
    let play_for = Duration::from_secs(180);
    let stop = Arc::new(AtomicBool::new(false));
    let mut plans = Vec::new();
    for player in 1..=180u64 {
        let region = 1 + player % 2;
        plans.push((player, region, Movement::Wander));
    }
    for index in 0..10 {
        plans.push((patrol_player(true, index), 1, Movement::Patrol { heading: 1.0 }));
        plans.push((patrol_player(false, index), 2, Movement::Patrol { heading: -1.0 }));
    }
    assert!(plans.len() >= 200);
    let runtime = runtime();
    let options = cluster.client_options(0);
    let tasks: Vec<_> = plans
        .iter()
        .enumerate()
        .map(|(index, (player, region, movement))| {
            let plan = PlayerPlan {
                start_after: Duration::from_millis(index as u64 * 10),
                settle_for: Duration::from_secs(15),
                stop: Some(stop.clone()),
                ..PlayerPlan::new(*player, *region, *movement, play_for)
            };
            runtime.spawn(run_player(options.clone(), cluster.token(*player, *region), plan))
        })
        .collect();

    // Every player is in before the first handoff.
    wait_for_stat(&mut cluster, |stats| stats.sessions, plans.len() as u64, Duration::from_secs(60));
    // Hand both regions back and forth between the two servers while the players play: six
    // committed handoffs, each after the players sent another 400 inputs through the gateway.
    let mut owners = [0usize, 1usize];
    let mut handoffs = Vec::new();
    let mut turn = 0;
    while handoffs.iter().filter(|event| matches!(event, ServerEvent::HandedOff { .. })).count() < 6 {
        assert!(handoffs.len() < 12, "most handoffs did not commit: {handoffs:?}");
        let forwarded = cluster.gateway_stats(0).unwrap().inputs_forwarded;
        wait_for_stat(&mut cluster, |stats| stats.inputs_forwarded, forwarded + 400, Duration::from_secs(30));
        let region = 1 + (turn % 2) as u64;
        let from = owners[turn % 2];
        let to = 1 - from;
        let event = cluster.handoff(region, from, to).unwrap();
        if matches!(event, ServerEvent::HandedOff { .. }) {
            owners[turn % 2] = to;
        }
        handoffs.push(event);
        turn += 1;
    }
    // Patrolling avatars walk across the border between the regions, both ways.
    wait_for_stat(&mut cluster, |stats| stats.crossings, 20, Duration::from_secs(90));
    stop.store(true, Ordering::Relaxed);

    let outcomes: Vec<PlayerOutcome> = tasks.into_iter().map(|task| runtime.block_on(task).unwrap().unwrap()).collect();
    let stats = cluster.gateway_stats(0).unwrap();
    let committed = handoffs.iter().filter(|event| matches!(event, ServerEvent::HandedOff { .. })).count();
    let disconnects: u64 = outcomes.iter().map(|outcome| outcome.disconnects).sum();
    let sent: u64 = outcomes.iter().map(|outcome| outcome.sent).sum();
    let crossings: u64 = outcomes.iter().map(|outcome| outcome.crossings).sum();
    let neighbour_views: u64 = outcomes.iter().map(|outcome| outcome.neighbour_views).sum();
    let max_gap = outcomes.iter().map(|outcome| outcome.max_gap_ms).fold(0.0, f64::max);
    let mut gaps: Vec<u64> = outcomes.iter().flat_map(|outcome| outcome.gaps_us.iter().copied()).collect();
    gaps.sort_unstable();
    let p99_gap = gaps.get(gaps.len() * 99 / 100).copied().unwrap_or(0) as f64 / 1000.0;
    eprintln!(
        "{} players, {sent} inputs, {committed}/{} handoffs committed, {crossings} crossings, \
         {neighbour_views} neighbour views, {disconnects} disconnects, update gap p99 {p99_gap:.1} ms max {max_gap:.1} ms; gateway {stats:?}",
        outcomes.len(),
        handoffs.len()
    );
    for event in &handoffs {
        eprintln!("handoff: {event:?}");
    }
    for outcome in outcomes.iter().filter(|outcome| !outcome.chain_ok || outcome.disconnects > 0) {
        eprintln!(
            "player {} (region {}): sent {} acked {} applied {} updates {} max gap {:.0} ms crossings {} closes {:?}",
            outcome.player,
            outcome.region,
            outcome.sent,
            outcome.acked,
            outcome.applied,
            outcome.updates,
            outcome.max_gap_ms,
            outcome.crossings,
            outcome.close_reasons
        );
    }
    for outcome in &outcomes {
        assert_eq!(outcome.disconnects, 0, "player {} was disconnected: {:?}", outcome.player, outcome.close_reasons);
        assert_eq!(
            (outcome.acked, outcome.applied),
            (outcome.sent, outcome.sent),
            "player {}: every input applied exactly once ({outcome:?})",
            outcome.player
        );
        assert!(outcome.chain_ok, "player {}: inputs applied out of order or altered", outcome.player);
    }
    assert!(crossings >= 20, "patrolling avatars should cross borders, saw {crossings}");
    assert!(neighbour_views > 0, "players near a border should see the neighbour's objects");
    assert_eq!(stats.protocol_errors, 0);
    // The owners count, per player, inputs that reached them twice (since the avatar's last
    // crossing, which starts a new session there): the gateway forwarded each once, also across
    // the handoffs (held, then replayed). (Inputs that arrive ahead of an earlier one are allowed:
    // a frozen source forwards stragglers, and an input bounced during a crossing comes back
    // after later ones; the region applies them in order, which the chains above prove.)
    for (region, owner) in [(1, owners[0]), (2, owners[1])] {
        for player in player_reports(&mut cluster, owner, region) {
            assert_eq!(player.duplicates, 0, "player {} in region {region}: inputs forwarded twice", player.player);
        }
    }
}

async fn refused(cluster: &GatewayCluster, token: &str) -> (Option<CloseCode>, String) {
    match Client::connect(&cluster.client_options(0), token).await {
        Err(ClientError::Refused { code, reason }) => (code, reason),
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("a bad token was accepted"),
    }
}

async fn wait_for_update(client: &mut Client) -> Option<baton_wire::player::StateUpdate> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, client.next_event()).await {
            Ok(Some(Event::Update(update))) => return Some(update),
            Ok(Some(Event::Closed { .. }) | None) | Err(_) => return None,
            Ok(Some(_)) => {}
        }
    }
}

async fn closed_with(client: &mut Client) -> Option<CloseCode> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, client.next_event()).await {
            Ok(Some(Event::Closed { code, .. })) => return code,
            Ok(None) | Err(_) => return None,
            Ok(Some(_)) => {}
        }
    }
}

#[test]
fn bad_clients_are_refused_and_nobody_else_notices() {
    let mut cluster =
        GatewayCluster::start(&spec(1, 1, &["--max-connections", "6", "--input-rate", "40", "--input-burst", "40"]))
            .unwrap();
    cluster.host(0, 1, 100).unwrap();
    let runtime = runtime();
    runtime.block_on(async {
        // A well-behaved player, watched throughout.
        let mut good = Client::connect(&cluster.client_options(0), &cluster.token(1, 1)).await.unwrap();
        assert!(wait_for_update(&mut good).await.is_some());

        // Tokens: signed with another key, expired, another player's claims under a stolen mac, garbage.
        let stranger = baton_gateway::token::TokenKey::new(&[9; 32]).unwrap();
        let far_future = u64::MAX / 2;
        let (code, reason) =
            refused(&cluster, &stranger.issue(&Claims { player: 1, region: 1, expires_at: far_future })).await;
        assert_eq!(code, Some(CloseCode::Unauthorized), "{reason}");
        let (code, reason) =
            refused(&cluster, &cluster.token_with(&Claims { player: 5, region: 1, expires_at: 1 })).await;
        assert_eq!(code, Some(CloseCode::Unauthorized));
        assert!(reason.contains("expired"), "{reason}");
        // Claiming player 1's avatar with player 2's signature.
        let mine = cluster.token(2, 1);
        let theirs = cluster.token(1, 1);
        let forged = format!("{}.{}", theirs.rsplit_once('.').unwrap().0, mine.rsplit_once('.').unwrap().1);
        let (code, _) = refused(&cluster, &forged).await;
        assert_eq!(code, Some(CloseCode::Unauthorized));
        let (code, _) = refused(&cluster, "not a token").await;
        assert_eq!(code, Some(CloseCode::Unauthorized));

        // Garbage on the reliable stream, an oversized frame, an input out of sequence, a skip
        // past any real input number: each closes only that connection, with a protocol error.
        let skip = baton_wire::player::encode(&baton_wire::player::ClientFrame::Skip { through: u64::MAX }).unwrap();
        for bytes in [vec![3, 0, 0xff, 0xff, 0xff], vec![0xff, 0xff, 1, 2, 3], skip, {
            let mut out =
                baton_wire::player::encode(&baton_wire::player::ClientFrame::Input { seq: 9, payload: vec![1] })
                    .unwrap();
            out.extend_from_slice(&[0; 4]);
            out
        }] {
            let mut bad = Client::connect(&cluster.client_options(0), &cluster.token(3, 1)).await.unwrap();
            bad.send_raw(&bytes).await.unwrap();
            assert_eq!(closed_with(&mut bad).await, Some(CloseCode::Protocol), "after sending {bytes:?}");
        }

        // A connection that never says Hello is closed after the hello timeout (5 s), with a reason.
        let silent = {
            let options = cluster.client_options(0);
            let endpoint = options.shared_endpoint().unwrap();
            let connection = endpoint.connect(options.gateway, &options.server_name).unwrap().await.unwrap();
            connection.closed().await
        };
        match silent {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(CloseCode::from_u32(close.error_code.into_inner() as u32), Some(CloseCode::Idle))
            }
            other => panic!("expected the gateway to close a silent connection, got {other}"),
        }

        // Garbage datagrams to the gateway's port are ignored.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for size in [1usize, 20, 1200, 1500] {
            socket.send_to(&vec![0xab; size], cluster.gateway_addresses[0]).unwrap();
        }

        // An input flood: dropped over the rate, then disconnected.
        let mut flooder = Client::connect(&cluster.client_options(0), &cluster.token(4, 1)).await.unwrap();
        for _ in 0..5_000 {
            if flooder.send_input(vec![1, 0, 0, 0, 0, 0, 0, 0, 0]).await.is_err() {
                break;
            }
        }
        assert_eq!(closed_with(&mut flooder).await, Some(CloseCode::Flood));

        // The connection limit: 6 in all.
        let mut extra = Vec::new();
        let mut full = None;
        for player in 10..20 {
            match Client::connect(&cluster.client_options(0), &cluster.token(player, 1)).await {
                Ok(client) => extra.push(client),
                Err(ClientError::Refused { code, .. }) => {
                    full = code;
                    break;
                }
                Err(other) => panic!("{other}"),
            }
        }
        assert_eq!(full, Some(CloseCode::Full));
        assert!(extra.len() <= 5);

        // The good player noticed nothing: still connected, still updated, its inputs applied.
        let seq = good.send_input(vec![1, 0, 0, 0, 0, 0, 0, 0, 0]).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while good.acked() < seq && Instant::now() < deadline {
            assert!(wait_for_update(&mut good).await.is_some(), "the good player lost its updates");
        }
        assert_eq!(good.acked(), seq);
    });
    let stats = cluster.gateway_stats(0).unwrap();
    assert!(stats.protocol_errors >= 3, "{stats:?}");
    assert!(stats.refused_token >= 4, "{stats:?}");
    assert!(stats.inputs_dropped_rate > 0, "{stats:?}");
    assert_eq!(stats.flood_disconnects, 1, "{stats:?}");
    assert!(stats.refused_full >= 1, "{stats:?}");
}

#[test]
fn sessions_survive_address_changes_lost_connections_and_a_dead_gateway() {
    let mut cluster = GatewayCluster::start(&spec(1, 2, &["--resume-grace-s", "20"])).unwrap();
    cluster.host(0, 1, 100).unwrap();
    let runtime = runtime();
    runtime.block_on(async {
        let mut client = Client::connect(&cluster.client_options(0), &cluster.token(7, 1)).await.unwrap();
        let mut chain = 0u64;
        let send = async |client: &mut Client, count: u64, chain: &mut u64| {
            for _ in 0..count {
                let payload = vec![1, 0, 0, 0, 0, 0, 0, 0, 0, fastrand::u8(..)];
                let seq = client.next_seq();
                *chain = baton_harness::players::chain_step(*chain, seq, &payload);
                client.send_input(payload).await.unwrap();
            }
        };
        send(&mut client, 20, &mut chain).await;

        // Connection migration: the client's address changes, the session carries on.
        let before = client.local_address().unwrap();
        client.rebind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(client.local_address().unwrap(), before);
        send(&mut client, 20, &mut chain).await;
        let update = wait_for_update(&mut client).await.expect("updates after the address change");
        assert!(update.last_applied <= 40);

        // The gateway dies with inputs in flight: resume on the other gateway; the unacknowledged
        // inputs are sent again and applied once.
        send(&mut client, 20, &mut chain).await;
        cluster.gateways[0].kill();
        client.resume(cluster.gateway_addresses[1]).await.unwrap();
        send(&mut client, 20, &mut chain).await;

        // A lost connection, resumed on the same gateway.
        client.resume(cluster.gateway_addresses[1]).await.unwrap();
        send(&mut client, 20, &mut chain).await;

        let deadline = Instant::now() + Duration::from_secs(15);
        let mut view = None;
        while Instant::now() < deadline {
            if let Some(update) = wait_for_update(&mut client).await {
                view = sample_region_server::PlayerView::parse(&update.payload);
                if update.last_applied == 100 {
                    break;
                }
            }
        }
        let view = view.expect("a view");
        assert_eq!(client.acked(), 100, "every input acknowledged");
        assert_eq!(view.inputs_applied, 100, "each input applied exactly once");
        assert_eq!(view.input_chain, chain, "in order");
    });
}

/// The players `server` reports in `region`.
fn players_in(cluster: &mut GatewayCluster, server: usize, region: u64) -> Vec<PlayerId> {
    player_reports(cluster, server, region).into_iter().map(|player| player.player).collect()
}

/// What region server `server` reports of the players of `region`.
fn player_reports(cluster: &mut GatewayCluster, server: usize, region: u64) -> Vec<baton_wire::serve::PlayerReport> {
    let region = RegionId(region);
    let process = &mut cluster.servers[server];
    let mark = process.log.len();
    process.command(&ServerCommand::Report { region }).unwrap();
    let (_, event) = process
        .wait_for(
            mark,
            Duration::from_secs(10),
            |event| matches!(event, ServerEvent::Report { region: about, .. } if *about == region),
        )
        .unwrap();
    let ServerEvent::Report { players, .. } = event else { unreachable!("matched a report") };
    players
}

/// A border crossing travels through the player's gateway. Here the gateway is killed while the
/// avatar walks on towards the border: the region it leaves sends the avatar to the dead gateway,
/// so the crossing never arrives. The player resumes at the other gateway with a token naming the
/// region it left; that region still has the avatar as it left (`JoinMoved`), the gateway delivers
/// it on, and the player plays on in the new region with every input applied once, in order.
#[test]
fn an_avatar_crossing_while_its_gateway_dies_is_found_again_when_its_player_resumes() {
    let mut cluster = GatewayCluster::start(&spec(2, 2, &["--resume-grace-s", "20"])).unwrap();
    cluster.host(0, 1, 20).unwrap();
    cluster.host(1, 2, 20).unwrap();
    // Spawns 29 m west of the border with region 2 (east).
    let player = patrol_player(true, 0);
    let runtime = runtime();
    let mut client = runtime.block_on(Client::connect(&cluster.client_options(0), &cluster.token(player, 1))).unwrap();
    assert_eq!(client.region(), 1);
    let east = vec![1, 0, 0, 0x80, 0x3f, 0, 0, 0, 0];
    let mut chain = 0u64;
    let mut sent = 0u64;
    // Walk east until the avatar is 6 m (1.5 s) from the border, every input applied: it crosses
    // before the region server notices the dead gateway (the cluster link's 3 s idle timeout).
    runtime.block_on(async {
        loop {
            let seq = client.next_seq();
            chain = baton_harness::players::chain_step(chain, seq, &east);
            client.send_input(east.clone()).await.unwrap();
            sent += 1;
            let update = wait_for_update(&mut client).await.expect("updates while walking");
            let view = sample_region_server::PlayerView::parse(&update.payload).expect("a view");
            if view.position[0] > sample_region_server::HALF_SIZE - 6.0 && update.last_applied == sent {
                break;
            }
            assert!(sent < 400, "the avatar never neared the border: {view:?}");
        }
    });
    // The avatar walks on (its last input keeps it walking) and leaves region 1 through the dead
    // gateway: neither region has it now.
    cluster.gateways[0].kill();
    baton_harness::wait_until(Duration::from_secs(20), "the avatar leaving region 1", || {
        let players = players_in(&mut cluster, 0, 1);
        if players.contains(&PlayerId(player)) { Err(format!("{players:?}")) } else { Ok(()) }
    });
    assert!(
        !players_in(&mut cluster, 1, 2).contains(&PlayerId(player)),
        "the crossing went out through the dead gateway and must not have arrived"
    );

    runtime.block_on(client.resume(cluster.gateway_addresses[1])).expect("resumed at the other gateway");
    assert_eq!(client.region(), 2, "the session continues where the avatar went");
    runtime.block_on(async {
        for _ in 0..20 {
            let seq = client.next_seq();
            chain = baton_harness::players::chain_step(chain, seq, &east);
            client.send_input(east.clone()).await.unwrap();
            sent += 1;
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut view = None;
        while Instant::now() < deadline && client.acked() < sent {
            if let Some(update) = wait_for_update(&mut client).await {
                view = sample_region_server::PlayerView::parse(&update.payload).or(view);
            }
        }
        let view = view.expect("a view after the resume");
        assert_eq!(client.acked(), sent, "every input acknowledged");
        assert_eq!(view.inputs_applied, sent, "each input applied exactly once, by the avatar that crossed");
        assert_eq!(view.input_chain, chain, "in order");
    });
    assert_eq!(players_in(&mut cluster, 1, 2), vec![PlayerId(player)]);
    assert!(!players_in(&mut cluster, 0, 1).contains(&PlayerId(player)), "one avatar");
}

/// A server's side of one upstream connection from the gateway, as a test drives it: reads the
/// gateway's messages, sends the server's.
struct FakeServerLink {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    reader: baton_wire::upstream::UpstreamReader,
    connection: quinn::Connection,
}

impl FakeServerLink {
    /// Accepts the gateway's next connection, reads its `Hello` and answers `Welcome` with
    /// `regions`.
    async fn accept(endpoint: &quinn::Endpoint, regions: Vec<(RegionId, Epoch)>) -> FakeServerLink {
        use baton_wire::upstream::{GatewayMessage, ServerMessage};
        let incoming = tokio::time::timeout(Duration::from_secs(10), endpoint.accept())
            .await
            .expect("the gateway connects to the server")
            .unwrap();
        let connection = incoming.await.unwrap();
        let (send, recv) = connection.accept_bi().await.unwrap();
        let mut link = FakeServerLink { send, recv, reader: Default::default(), connection };
        let hello = link.next().await;
        assert!(matches!(hello, GatewayMessage::Hello { .. }), "first message: {hello:?}");
        link.say(ServerMessage::Welcome { server: "fake".into(), regions }).await;
        link
    }

    async fn next(&mut self) -> baton_wire::upstream::GatewayMessage {
        loop {
            if let Some(message) = self.reader.next_message().unwrap() {
                return message;
            }
            let chunk = self.recv.read_chunk(64 * 1024, true).await.unwrap().expect("the gateway goes on");
            self.reader.feed(&chunk.bytes);
        }
    }

    async fn say(&mut self, message: baton_wire::upstream::ServerMessage) {
        let mut bytes = Vec::new();
        assert!(baton_wire::upstream::encode_batch(message, || None, &mut bytes, 1 << 20).is_empty());
        self.send.write_all(&bytes).await.unwrap();
    }

    /// Waits (up to 20 s) for the gateway to deliver `player`'s avatar.
    async fn immigration_of(&mut self, player: u64) -> baton_wire::upstream::Transfer {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let baton_wire::upstream::GatewayMessage::Immigrate { transfer, .. } = self.next().await
                    && transfer.player == PlayerId(player)
                {
                    return transfer;
                }
            }
        })
        .await
        .expect("the gateway delivers the crossing avatar")
    }
}

/// A fake region server's cluster endpoint, trusted by `cluster`'s gateways.
fn fake_server_endpoint(cluster: &GatewayCluster, runtime: &tokio::runtime::Runtime) -> quinn::Endpoint {
    use baton_wire::upstream::ALPN_UPSTREAM;
    let identity = cluster.probe_identity().unwrap();
    runtime.block_on(async {
        baton_net::cluster_endpoint_with(
            "127.0.0.1:0".parse().unwrap(),
            &identity,
            baton_net::LinkSettings::default(),
            &[ALPN_UPSTREAM],
            ALPN_UPSTREAM,
        )
        .unwrap()
    })
}

/// A player walking east from region 1 (the cluster's server) towards region 2, for ever: the
/// task gives the client back when aborted.
fn walk_east(
    cluster: &GatewayCluster,
    runtime: &tokio::runtime::Runtime,
    player: u64,
) -> tokio::task::JoinHandle<Client> {
    let mut client = runtime.block_on(Client::connect(&cluster.client_options(0), &cluster.token(player, 1))).unwrap();
    let east = vec![1, 0, 0, 0x80, 0x3f, 0, 0, 0, 0];
    runtime.spawn(async move {
        for _ in 0..600 {
            if client.send_input(east.clone()).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client
    })
}

/// protocol.md §10: a crossing sent to a server whose connection then broke, before it answered,
/// is delivered again when the server connects again: nothing else would answer it, and the
/// player's inputs wait for the crossing.
#[test]
fn a_crossing_lost_with_a_broken_server_connection_is_delivered_again_when_the_server_reconnects() {
    let mut cluster = GatewayCluster::start(&spec(1, 1, &[])).unwrap();
    cluster.host(0, 1, 20).unwrap();
    let runtime = runtime();
    let endpoint = fake_server_endpoint(&cluster, &runtime);
    // Region 2, east of region 1, is this test's: the gateway learns so from its `Welcome`.
    cluster.gateways[0].send(&GatewayCommand::Server { addr: endpoint.local_addr().unwrap() }).unwrap();
    let regions = vec![(RegionId(2), Epoch(1))];
    let mut first = runtime.block_on(FakeServerLink::accept(&endpoint, regions.clone()));
    // A player walks east from region 1 across the border.
    let player = patrol_player(true, 0);
    let walking = walk_east(&cluster, &runtime, player);
    let transfer = runtime.block_on(async {
        let transfer = first.immigration_of(player).await;
        // The connection breaks before the server answers: the `Immigrate` is lost with it.
        first.connection.close(0u32.into(), b"lost");
        transfer
    });
    assert_eq!((transfer.from, transfer.to), (RegionId(1), RegionId(2)));
    let again = runtime.block_on(async {
        let mut second = FakeServerLink::accept(&endpoint, regions).await;
        second.immigration_of(player).await
    });
    assert_eq!(again.player, transfer.player);
    assert_eq!(again.crossings, transfer.crossings, "the same crossing, not a new one");
    walking.abort();
}

/// protocol.md §10: a crossing that reached a handoff's source as it froze waits there for the
/// outcome; when the source dies before it answers, the gateway delivers the crossing to the new
/// owner once the handoff commits (the player's inputs wait for it, for good otherwise).
#[test]
fn a_crossing_held_by_a_handoff_source_that_dies_is_delivered_to_the_new_owner_at_the_commit() {
    use baton_wire::upstream::{GatewayMessage, ServerMessage};

    let mut cluster = GatewayCluster::start(&spec(1, 1, &[])).unwrap();
    cluster.host(0, 1, 20).unwrap();
    let runtime = runtime();
    let (source_endpoint, target_endpoint) =
        (fake_server_endpoint(&cluster, &runtime), fake_server_endpoint(&cluster, &runtime));
    let target_address = target_endpoint.local_addr().unwrap();
    cluster.gateways[0].send(&GatewayCommand::Server { addr: source_endpoint.local_addr().unwrap() }).unwrap();
    let mut source = runtime.block_on(FakeServerLink::accept(&source_endpoint, vec![(RegionId(2), Epoch(1))]));
    let player = patrol_player(true, 0);
    let walking = walk_east(&cluster, &runtime, player);
    let transfer = runtime.block_on(async {
        let transfer = source.immigration_of(player).await;
        // The source takes it while freezing for a handoff to the target, and is killed.
        source
            .say(ServerMessage::HandoffStarted { region: RegionId(2), epoch: Epoch(1), target: target_address })
            .await;
        source.say(ServerMessage::Frozen { region: RegionId(2), epoch: Epoch(1) }).await;
        transfer
    });
    let (mut target, delivered) = runtime.block_on(async {
        // The gateway connects to the target when it hears of the handoff.
        let mut target = FakeServerLink::accept(&target_endpoint, Vec::new()).await;
        source.connection.close(0u32.into(), b"killed");
        target.say(ServerMessage::Committed { region: RegionId(2), epoch: Epoch(2), owner: target_address }).await;
        let delivered = target.immigration_of(player).await;
        (target, delivered)
    });
    assert_eq!((delivered.player, delivered.to), (transfer.player, RegionId(2)));
    assert_eq!(delivered.crossings, transfer.crossings, "the same crossing, not a new one");
    // The target takes it: the player plays on in region 2 and its held inputs arrive there.
    runtime.block_on(async {
        target
            .say(ServerMessage::Arrived {
                region: RegionId(2),
                epoch: Epoch(2),
                player: PlayerId(player),
                last_applied: delivered.last_applied,
                crossings: delivered.crossings,
            })
            .await;
        // Each input once: those that waited for the crossing, then those sent since.
        let seqs = tokio::time::timeout(Duration::from_secs(20), async {
            let mut seqs = Vec::new();
            while seqs.len() < 20 {
                if let GatewayMessage::Input { region, player: from, seq, .. } = target.next().await
                    && from == PlayerId(player)
                {
                    assert_eq!(region, RegionId(2));
                    seqs.push(seq);
                }
            }
            seqs
        })
        .await
        .expect("the player's inputs go to the region it crossed into");
        let mut distinct = seqs.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), seqs.len(), "an input forwarded twice: {seqs:?}");
        assert!(seqs.iter().all(|seq| *seq > delivered.last_applied), "{seqs:?}");
    });
    walking.abort();
}

/// The gateway's bound on a player's inputs waiting for its avatar to cross a border
/// (`MAX_TRANSIT_INPUTS` in gateway/src/sessions.rs): an input dropped at the bound is asked for
/// again by the region the avatar entered, once a later input reaches it past the gap (`GapWatch`,
/// protocol.md §9), and every input is applied once in the end. The region east of the player's
/// stalls (its server stopped with SIGSTOP) while the avatar walks into it sending 200 inputs a
/// second; the stall outlasts the gateway's link to that server (its idle timeout), so the
/// crossing reaches the region only when the server is back and the link connected again.
#[test]
fn an_input_dropped_at_the_crossing_bound_is_asked_for_again_and_applied_once() {
    let mut cluster =
        GatewayCluster::start(&spec(2, 1, &["--input-rate", "1000000", "--input-burst", "1000000"])).unwrap();
    cluster.host(0, 1, 20).unwrap();
    cluster.host(1, 2, 20).unwrap();
    let runtime = runtime();
    let player = patrol_player(true, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let plan = PlayerPlan {
        inputs_per_second: 200,
        stop: Some(stop.clone()),
        settle_for: Duration::from_secs(30),
        ..PlayerPlan::new(player, 1, Movement::Patrol { heading: 1.0 }, Duration::from_secs(120))
    };
    let playing = runtime.spawn(run_player(cluster.client_options(0), cluster.token(player, 1), plan));
    wait_for_stat(&mut cluster, |stats| stats.sessions, 1, Duration::from_secs(30));
    let east = cluster.servers[1].pid().to_string();
    let signal = |signal: &str| {
        assert!(std::process::Command::new("kill").args([signal, &east]).status().unwrap().success());
    };
    signal("-STOP");
    // The avatar crosses into the stalled region: its inputs wait at the gateway, up to the bound,
    // and those over it are dropped.
    wait_for_stat(&mut cluster, |stats| stats.inputs_dropped_unroutable, 50, Duration::from_secs(60));
    signal("-CONT");
    // The region takes the avatar in, gets the inputs that waited and then later ones past the
    // gap, and asks the player for the dropped ones.
    wait_for_stat(&mut cluster, |stats| stats.inputs_asked_again, 1, Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    let outcome = runtime.block_on(playing).unwrap().unwrap();
    let stats = cluster.gateway_stats(0).unwrap();
    eprintln!("{outcome:?}\n{stats:?}");
    assert!(outcome.crossings >= 1, "the avatar crossed");
    assert!(outcome.inputs_asked_again >= 1, "the region asked for the dropped inputs");
    assert_eq!(outcome.disconnects, 0, "{:?}", outcome.close_reasons);
    assert_eq!((outcome.acked, outcome.applied), (outcome.sent, outcome.sent), "every input applied exactly once");
    assert!(outcome.chain_ok, "inputs applied out of order or altered");
}

/// A client's sends are cancel-safe: a caller that drops `send_input` (or `next_event`, which sends
/// kept inputs again) while the stream is full never leaves half a frame on it. Sends, each given
/// a single poll, until 200 were dropped halfway, then one awaited to the end: the gateway reads nothing but
/// whole frames (no protocol error; the session goes on and answers a ping).
#[test]
fn a_client_send_dropped_halfway_never_leaves_half_a_frame_on_the_stream() {
    let mut cluster =
        GatewayCluster::start(&spec(1, 1, &["--input-rate", "1000000", "--input-burst", "1000000"])).unwrap();
    cluster.host(0, 1, 20).unwrap();
    let runtime = runtime();
    let mut client = runtime.block_on(Client::connect(&cluster.client_options(0), &cluster.token(7, 1))).unwrap();
    let payload =
        vec![1, 0, 0, 0, 0, 0, 0, 0, 0].into_iter().chain(std::iter::repeat_n(0u8, 1000)).collect::<Vec<u8>>();
    let (sent, dropped) = runtime.block_on(async {
        let (mut sent, mut dropped) = (0, 0);
        // Until 200 sends were dropped halfway (a gateway that reads fast keeps the stream from
        // filling for a while), at most 40,000.
        while dropped < 200 && sent < 40_000 {
            // One poll: whatever the stream does not take at once is left to later sends.
            let send = std::pin::pin!(client.send_input(payload.clone()));
            sent += 1;
            if futures_poll_once(send).await.is_none() {
                dropped += 1;
            }
        }
        client.send_input(payload.clone()).await.expect("the session is open");
        (sent, dropped)
    });
    eprintln!("{dropped} of {sent} sends were dropped before they finished");
    assert!(dropped > 0, "the stream never filled: nothing was tested");
    let pong = runtime.block_on(async {
        client.ping(42).await.expect("the session is open");
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match client.next_event().await {
                    Some(Event::Pong { nonce }) => return nonce,
                    Some(Event::Closed { code, reason }) => panic!("closed: {code:?} {reason}"),
                    Some(_) => {}
                    None => panic!("the session ended"),
                }
            }
        })
        .await
        .expect("the gateway answers the ping")
    });
    assert_eq!(pong, 42);
    assert_eq!(cluster.gateway_stats(0).unwrap().protocol_errors, 0);
}

/// Polls `future` once: its output if it was ready, `None` if it was not (it is then dropped by
/// the caller, as a `select!` drops the branch that lost).
async fn futures_poll_once<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> Option<F::Output> {
    let mut future = Some(future);
    std::future::poll_fn(move |context| {
        let polled = future.take().map(|future| future.poll(context));
        std::task::Poll::Ready(match polled {
            Some(std::task::Poll::Ready(output)) => Some(output),
            _ => None,
        })
    })
    .await
}

/// A resume token expires a grace after it was issued; the gateway sends a fresh one every third of
/// the grace, so a session older than the grace still resumes at another gateway when its own dies.
#[test]
fn a_session_older_than_the_resume_grace_still_resumes_at_another_gateway() {
    let mut cluster = GatewayCluster::start(&spec(1, 2, &["--resume-grace-s", "2"])).unwrap();
    cluster.host(0, 1, 20).unwrap();
    let runtime = runtime();
    let mut client = runtime.block_on(Client::connect(&cluster.client_options(0), &cluster.token(7, 1))).unwrap();
    let first = client.resume_token();
    let expires_at = cluster.verify_token(&first, 0).unwrap().expires_at;
    // Play on until the welcome's token has expired; the session keeps getting fresh ones.
    runtime.block_on(async {
        while cluster.verify_token(&first, baton_harness::players::unix_ms() / 1000).is_ok() {
            client.send_input(vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 7]).await.unwrap();
            let _ = wait_for_update(&mut client).await;
        }
    });
    let fresh = client.resume_token();
    assert!(cluster.verify_token(&fresh, 0).unwrap().expires_at > expires_at, "a newer token came");
    cluster.gateways[0].kill();
    runtime.block_on(client.resume(cluster.gateway_addresses[1])).expect("resumed with the refreshed token");
    let sent = client.next_seq() - 1;
    let acked = runtime.block_on(async {
        while client.acked() < sent {
            if wait_for_update(&mut client).await.is_none() {
                break;
            }
        }
        client.acked()
    });
    assert_eq!(acked, sent, "every input acknowledged after the resume");
}

/// Invariant 1 at the gateway: a region server that does not own a region can neither stop it nor
/// speak for it. An impostor with a valid cluster certificate connects as a region server and
/// sends, for a region another server owns, at every epoch it could guess, an update for a player
/// there and a `Stopped`: the gateway refuses and counts them, and the player goes on playing with
/// the real owner's updates only.
#[test]
fn a_server_that_does_not_own_a_region_can_neither_stop_it_nor_speak_for_it() {
    use baton_wire::upstream::{ALPN_UPSTREAM, GatewayMessage, ServerMessage, UpstreamReader, encode_batch};

    let mut cluster = GatewayCluster::start(&spec(1, 1, &[])).unwrap();
    cluster.host(0, 1, 20).unwrap();
    let identity = cluster.probe_identity().unwrap();
    let runtime = runtime();
    let (endpoint, impostor) = runtime.block_on(async {
        let endpoint = baton_net::cluster_endpoint_with(
            "127.0.0.1:0".parse().unwrap(),
            &identity,
            baton_net::LinkSettings::default(),
            &[ALPN_UPSTREAM],
            ALPN_UPSTREAM,
        )
        .unwrap();
        let address = endpoint.local_addr().unwrap();
        (endpoint, address)
    });
    let mut client = runtime.block_on(Client::connect(&cluster.client_options(0), &cluster.token(7, 1))).unwrap();
    assert!(runtime.block_on(wait_for_update(&mut client)).is_some(), "the player gets the owner's updates");

    cluster.gateways[0].send(&GatewayCommand::Server { addr: impostor }).unwrap();
    let connection = runtime.block_on(async {
        let incoming = tokio::time::timeout(Duration::from_secs(10), endpoint.accept())
            .await
            .expect("the gateway connects to the server it was told of")
            .unwrap();
        let connection = incoming.await.unwrap();
        let (mut send, mut recv) = connection.accept_bi().await.unwrap();
        let mut reader = UpstreamReader::default();
        let hello = loop {
            if let Some(message) = reader.next_message::<GatewayMessage>().unwrap() {
                break message;
            }
            let chunk = recv.read_chunk(64 * 1024, true).await.unwrap().expect("the gateway says hello");
            reader.feed(&chunk.bytes);
        };
        assert!(matches!(hello, GatewayMessage::Hello { .. }), "first message: {hello:?}");
        let mut lies = vec![ServerMessage::Welcome { server: "impostor".into(), regions: Vec::new() }];
        for epoch in 0..4 {
            lies.push(ServerMessage::Update {
                region: RegionId(1),
                epoch: Epoch(epoch),
                player: PlayerId(7),
                tick: u64::MAX / 2,
                last_applied: 1_000_000,
                durable: 1_000_000,
                payload: b"impostor".to_vec(),
            });
            lies.push(ServerMessage::Stopped { region: RegionId(1), epoch: Epoch(epoch) });
        }
        let mut bytes = Vec::new();
        let mut rest = lies.into_iter();
        let first = rest.next().unwrap();
        assert!(encode_batch(first, || rest.next(), &mut bytes, 1 << 20).is_empty());
        send.write_all(&bytes).await.unwrap();

        connection
    });
    // The gateway refused the impostor's four updates (and its stops)...
    wait_for_stat(&mut cluster, |stats| stats.updates_stale, 4, Duration::from_secs(30));
    // ...and after that the player still gets the owner's updates, none of the impostor's, and
    // its session goes on.
    runtime.block_on(async {
        let mut updates = 0;
        while updates < 20 {
            let event = tokio::time::timeout(Duration::from_secs(30), client.next_event())
                .await
                .expect("the owner's updates keep coming");
            match event {
                Some(Event::Update(update)) => {
                    assert_ne!(
                        update.payload,
                        b"impostor".to_vec(),
                        "an update from a server that does not own the region"
                    );
                    assert!(update.last_applied < 1_000_000);
                    updates += 1;
                }
                Some(Event::Closed { code, reason }) => panic!("the session ended ({code:?}): {reason}"),
                None => panic!("the session's events ended"),
                Some(_) => {}
            }
        }
        connection.close(0u32.into(), b"done");
    });
    let stats = cluster.gateway_stats(0).unwrap();
    assert_eq!(stats.stopped_sessions, 0, "{stats:?}");
    assert!(stats.updates_stale >= 4, "the impostor's updates are counted: {stats:?}");
    assert_eq!(stats.sessions, 1, "{stats:?}");
    client.close();
}
