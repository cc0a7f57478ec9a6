//! Inputs are applied in order, exactly once, and the queue state migrates with the world.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use baton_sdk::codec::{self, ChunkConfig, DecodeLimits};
use baton_sdk::sessions::{InputOutcome, MAX_PENDING_INPUTS, PlayerSession, SessionError, Sessions};
use baton_sdk::wire::player::MAX_KEPT_INPUTS;
use baton_sdk::wire::{MAX_INPUT_PAYLOAD, PlayerId, PlayerInput};
use baton_sdk::{Registry, World};

fn world() -> World {
    let mut registry = Registry::new();
    registry.register::<PlayerSession>().unwrap();
    World::new(registry)
}

fn input(player: u64, seq: u64) -> PlayerInput {
    PlayerInput { player: PlayerId(player), seq, payload: vec![seq as u8; 4] }
}

fn applied(sessions: &Sessions, world: &mut World) -> Vec<(u64, u64)> {
    sessions.take_ready(world).iter().map(|ready| (ready.player.0, ready.seq)).collect()
}

#[test]
fn inputs_apply_in_order_once_and_wait_for_gaps() {
    let mut world = world();
    let mut sessions = Sessions::default();
    let avatar = world.spawn();
    sessions.join(&mut world, PlayerId(7), avatar).unwrap();
    assert_eq!(sessions.submit(&mut world, input(7, 2)).unwrap(), InputOutcome::Early);
    assert_eq!(applied(&sessions, &mut world), vec![], "seq 2 waits for seq 1");
    assert_eq!(sessions.submit(&mut world, input(7, 1)).unwrap(), InputOutcome::Queued);
    assert_eq!(sessions.submit(&mut world, input(7, 1)).unwrap(), InputOutcome::Duplicate);
    assert_eq!(applied(&sessions, &mut world), vec![(7, 1), (7, 2)]);
    // A replay of already-applied inputs (what the gateway does after a handoff) is dropped.
    assert_eq!(sessions.submit(&mut world, input(7, 2)).unwrap(), InputOutcome::Duplicate);
    assert_eq!(applied(&sessions, &mut world), vec![]);
    let session = world.get::<PlayerSession>(avatar).unwrap();
    assert_eq!(session.last_applied, 2);
    // Counted per player: one arrived ahead of its gap (2), two arrived again (1 queued, 2 applied).
    assert_eq!((session.early, session.duplicates), (1, 2));
}

#[test]
fn joining_and_leaving_keep_the_index_and_the_session() {
    let mut world = world();
    let mut sessions = Sessions::default();
    assert!(sessions.is_empty());
    let (first, second) = (world.spawn(), world.spawn());
    sessions.join(&mut world, PlayerId(1), first).unwrap();
    assert_eq!((sessions.len(), sessions.is_empty()), (1, false));
    sessions.join(&mut world, PlayerId(2), second).unwrap();
    assert_eq!(sessions.len(), 2);
    sessions.submit(&mut world, input(1, 1)).unwrap();
    sessions.submit(&mut world, input(1, 3)).unwrap();
    applied(&sessions, &mut world);
    // Leaving hands back the avatar and everything the region held of the player.
    let (avatar, session) = sessions.leave(&mut world, PlayerId(1)).unwrap();
    assert_eq!(avatar, first);
    assert_eq!((session.player, session.last_applied, session.pending.len()), (1, 1, 1));
    assert!(world.get::<PlayerSession>(first).is_none(), "the avatar no longer carries a session");
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions.leave(&mut world, PlayerId(1)), None, "left already");
    assert_eq!(sessions.submit(&mut world, input(1, 2)), Err(SessionError::UnknownPlayer(PlayerId(1))));
    sessions.leave(&mut world, PlayerId(2)).unwrap();
    assert!(sessions.is_empty());
}

#[test]
fn a_skip_counts_the_gap_lost_and_applies_what_follows_it_once() {
    let mut world = world();
    let mut sessions = Sessions::default();
    let avatar = world.spawn();
    sessions.join(&mut world, PlayerId(7), avatar).unwrap();
    for seq in 1..=3 {
        sessions.submit(&mut world, input(7, seq)).unwrap();
    }
    assert_eq!(applied(&sessions, &mut world).len(), 3);
    // Restored at 3; the client dropped up to 8 as durable and sends 9 on. 5 and 8 were waiting.
    sessions.submit(&mut world, input(7, 5)).unwrap();
    sessions.submit(&mut world, input(7, 8)).unwrap();
    sessions.submit(&mut world, input(7, 9)).unwrap();
    sessions.submit(&mut world, input(7, 10)).unwrap();
    assert_eq!(applied(&sessions, &mut world), vec![], "9 and 10 wait at the gap");
    assert_eq!(sessions.skip(&mut world, PlayerId(7), 8), Ok(5));
    assert_eq!(applied(&sessions, &mut world), vec![(7, 9), (7, 10)]);
    // Nothing in the gap or before it is ever applied afterwards.
    for seq in [4, 5, 8, 10] {
        assert_eq!(sessions.submit(&mut world, input(7, seq)).unwrap(), InputOutcome::Duplicate, "{seq}");
    }
    // A skip the region is already past changes nothing; an unknown player is an error.
    assert_eq!(sessions.skip(&mut world, PlayerId(7), 6), Ok(0));
    assert_eq!(sessions.skip(&mut world, PlayerId(7), 10), Ok(0));
    assert_eq!(world.get::<PlayerSession>(avatar).unwrap().last_applied, 10);
    assert_eq!(sessions.skip(&mut world, PlayerId(8), 3), Err(SessionError::UnknownPlayer(PlayerId(8))));
}

#[test]
fn bad_inputs_get_clear_errors() {
    let mut world = world();
    let mut sessions = Sessions::default();
    let avatar = world.spawn();
    sessions.join(&mut world, PlayerId(1), avatar).unwrap();
    assert_eq!(sessions.join(&mut world, PlayerId(1), avatar), Err(SessionError::AlreadyJoined(PlayerId(1))));
    assert_eq!(sessions.submit(&mut world, input(2, 1)), Err(SessionError::UnknownPlayer(PlayerId(2))));
    assert_eq!(sessions.submit(&mut world, input(1, 0)), Err(SessionError::ZeroSequence));
    let huge = PlayerInput { player: PlayerId(1), seq: 1, payload: vec![0; MAX_INPUT_PAYLOAD + 1] };
    assert_eq!(sessions.submit(&mut world, huge), Err(SessionError::PayloadTooLarge(MAX_INPUT_PAYLOAD + 1)));
    let largest = PlayerInput { player: PlayerId(1), seq: 1, payload: vec![0; MAX_INPUT_PAYLOAD] };
    assert_eq!(sessions.submit(&mut world, largest), Ok(InputOutcome::Queued), "the limit itself is allowed");
    applied(&sessions, &mut world);
    for seq in 3..(3 + MAX_PENDING_INPUTS as u64) {
        sessions.submit(&mut world, input(1, seq)).unwrap();
    }
    assert_eq!(sessions.submit(&mut world, input(1, 9999)), Err(SessionError::QueueFull(PlayerId(1))));
}

#[test]
fn unapplied_inputs_and_last_applied_migrate() {
    let mut source = world();
    let mut sessions = Sessions::default();
    let avatar = source.spawn();
    sessions.join(&mut source, PlayerId(3), avatar).unwrap();
    for seq in 1..=3 {
        sessions.submit(&mut source, input(3, seq)).unwrap();
    }
    assert_eq!(applied(&sessions, &mut source).len(), 3);
    sessions.submit(&mut source, input(3, 4)).unwrap();
    sessions.submit(&mut source, input(3, 6)).unwrap();

    let mut target = world();
    for chunk in codec::encode_snapshot(&source, ChunkConfig::default()).unwrap() {
        codec::apply(&mut target, &chunk, DecodeLimits::default()).unwrap();
    }
    let target_sessions = Sessions::from_world(&target);
    assert_eq!(target_sessions.avatar_of(PlayerId(3)), Some(avatar));
    // The held inputs are replayed by the gateway; the target drops what it already has.
    for seq in 1..=6 {
        let _ = target_sessions.submit(&mut target, input(3, seq)).unwrap();
    }
    assert_eq!(applied(&target_sessions, &mut target), vec![(3, 4), (3, 5), (3, 6)]);
}

#[test]
fn taking_pending_inputs_keeps_what_was_applied_and_frees_the_next_numbers() {
    let mut world = world();
    let mut sessions = Sessions::default();
    let (first, second) = (world.spawn(), world.spawn());
    sessions.join(&mut world, PlayerId(1), first).unwrap();
    sessions.join(&mut world, PlayerId(2), second).unwrap();
    for seq in 1..=3 {
        sessions.submit(&mut world, input(1, seq)).unwrap();
    }
    assert_eq!(applied(&sessions, &mut world).len(), 3);
    sessions.submit(&mut world, input(1, 4)).unwrap();
    sessions.submit(&mut world, input(1, 6)).unwrap();
    sessions.submit(&mut world, input(2, 1)).unwrap();
    let taken = sessions.take_pending(&mut world);
    let taken_ids: Vec<(u64, u64)> = taken.iter().map(|input| (input.player.0, input.seq)).collect();
    assert_eq!(taken_ids, vec![(1, 4), (1, 6), (2, 1)]);
    assert_eq!(applied(&sessions, &mut world), vec![], "nothing taken is applied later");
    assert_eq!(world.get::<PlayerSession>(first).unwrap().last_applied, 3);
    // A player who reconnects continues at last_applied + 1 with new inputs.
    assert_eq!(sessions.submit(&mut world, input(1, 4)).unwrap(), InputOutcome::Queued);
    assert_eq!(applied(&sessions, &mut world), vec![(1, 4)]);
    assert!(sessions.take_pending(&mut world).is_empty());
    // Submitting taken inputs again puts them back (a stop that could not save goes on).
    sessions.submit(&mut world, input(2, 1)).unwrap();
    assert_eq!(applied(&sessions, &mut world), vec![(2, 1)]);
}

/// One step of a single-player input scenario and what it must produce.
enum Step {
    /// Submits the inputs with these sequence numbers, in order; each must give the outcome.
    Submit(std::ops::RangeInclusive<u64>, Result<InputOutcome, SessionError>),
    /// Takes what is ready (one tick); these sequence numbers must come out, in order.
    Tick(Vec<u64>),
}

/// Runs `steps` for one player who joined with nothing applied, and checks after every step that
/// the queue holds at most [`MAX_PENDING_INPUTS`] inputs behind a gap (those in sequence from
/// `last_applied + 1` aside, at most [`MAX_KEPT_INPUTS`] in all).
fn check(steps: Vec<Step>) {
    let mut world = world();
    let mut sessions = Sessions::default();
    let avatar = world.spawn();
    sessions.join(&mut world, PlayerId(1), avatar).unwrap();
    for (index, step) in steps.into_iter().enumerate() {
        match step {
            Step::Submit(seqs, expected) => {
                for seq in seqs {
                    let outcome = sessions.submit(&mut world, input(1, seq));
                    assert_eq!(outcome, expected, "step {index}: submitting input {seq}");
                }
            }
            Step::Tick(expected) => {
                let taken: Vec<u64> = sessions.take_ready(&mut world).iter().map(|ready| ready.seq).collect();
                assert_eq!(taken, expected, "step {index}: inputs applied by the tick");
            }
        }
        let session = world.get::<PlayerSession>(avatar).unwrap();
        let in_run = session
            .pending
            .iter()
            .enumerate()
            .take_while(|(at, pending)| pending.seq == session.last_applied + 1 + *at as u64)
            .count();
        let behind_gap = session.pending.len() - in_run;
        assert!(behind_gap <= MAX_PENDING_INPUTS, "step {index}: {behind_gap} inputs waiting behind a gap");
        assert!(session.pending.len() <= MAX_KEPT_INPUTS, "step {index}: {} waiting", session.pending.len());
    }
}

#[test]
fn a_full_queue_still_takes_the_input_that_fills_its_gap() {
    let max = MAX_PENDING_INPUTS as u64;
    let full = || Err(SessionError::QueueFull(PlayerId(1)));
    check(vec![
        // Input 1 is late (held elsewhere, or resent after a resume): the queue fills behind the gap.
        Step::Submit(2..=max + 1, Ok(InputOutcome::Early)),
        Step::Submit(max + 2..=max + 2, full()),
        Step::Tick(vec![]),
        // The one input that unblocks the player is taken although the queue is at its bound...
        Step::Submit(1..=1, Ok(InputOutcome::Queued)),
        Step::Submit(1..=1, Ok(InputOutcome::Duplicate)),
        // ...and so is the next in sequence (the run from 1 goes on); one behind a new gap is not.
        Step::Submit(max + 3..=max + 3, full()),
        Step::Submit(max + 2..=max + 2, Ok(InputOutcome::Queued)),
        Step::Tick((1..=max + 2).collect()),
        Step::Submit(max + 3..=max + 3, Ok(InputOutcome::Queued)),
        Step::Tick(vec![max + 3]),
    ]);
}

#[test]
fn every_input_a_client_keeps_sent_again_at_once_is_taken_in_one_tick() {
    // After a failover a client sends all it kept again at once, in sequence: more than the bound
    // for inputs behind a gap, none of them refused; past what a client keeps, refused.
    let kept = MAX_KEPT_INPUTS as u64;
    check(vec![
        Step::Submit(1..=kept, Ok(InputOutcome::Queued)),
        Step::Submit(kept + 1..=kept + 1, Err(SessionError::QueueFull(PlayerId(1)))),
        Step::Tick((1..=kept).collect()),
    ]);
}

#[test]
fn players_waiting_at_a_gap_are_found_and_asked_again_only_once_the_gap_stays() {
    use baton_sdk::sessions::{GAP_RESEND_MAX_TICKS, GAP_RESEND_TICKS, GapWatch};
    let mut world = world();
    let mut sessions = Sessions::default();
    for player in [7, 8, 9] {
        let avatar = world.spawn();
        sessions.join(&mut world, PlayerId(player), avatar).unwrap();
    }
    // 7 waits for 2 (3 and 4 are queued), 8 has nothing waiting, 9's inputs are in order.
    for (player, seq) in [(7, 1), (7, 3), (7, 4), (9, 1), (9, 2)] {
        sessions.submit(&mut world, input(player, seq)).unwrap();
    }
    assert_eq!(applied(&sessions, &mut world), vec![(7, 1), (9, 1), (9, 2)]);
    assert_eq!(sessions.stalled(&world), vec![(PlayerId(7), 2)]);
    // 9's next input arrived and waits only for the tick: not a gap.
    sessions.submit(&mut world, input(9, 3)).unwrap();
    assert_eq!(sessions.stalled(&world), vec![(PlayerId(7), 2)]);

    let mut watch = GapWatch::default();
    let stalled = sessions.stalled(&world);
    for tick in 100..100 + GAP_RESEND_TICKS {
        assert_eq!(watch.observe(tick, &stalled), vec![], "tick {tick}: not waited long enough");
    }
    // Asked once it waited GAP_RESEND_TICKS, then after twice as long each time, up to the cap.
    let mut asked_at = Vec::new();
    for tick in 100 + GAP_RESEND_TICKS..100 + 1000 {
        let ask = watch.observe(tick, &stalled);
        if !ask.is_empty() {
            assert_eq!(ask, vec![(PlayerId(7), 2)], "tick {tick}");
            asked_at.push(tick - 100);
        }
    }
    let first = GAP_RESEND_TICKS;
    assert_eq!(GAP_RESEND_MAX_TICKS, 16 * first);
    let mut expected = vec![first, 3 * first, 7 * first, 15 * first, 31 * first];
    while *expected.last().unwrap() + GAP_RESEND_MAX_TICKS < 1000 {
        expected.push(expected.last().unwrap() + GAP_RESEND_MAX_TICKS);
    }
    assert_eq!(asked_at, expected, "asks back off to one every {GAP_RESEND_MAX_TICKS} ticks");
    let at = 1100;

    // The gap fills; a new gap of the same player starts a new wait.
    sessions.submit(&mut world, input(7, 2)).unwrap();
    sessions.submit(&mut world, input(7, 6)).unwrap();
    assert_eq!(applied(&sessions, &mut world), vec![(7, 2), (7, 3), (7, 4), (9, 3)]);
    let stalled = sessions.stalled(&world);
    assert_eq!(stalled, vec![(PlayerId(7), 5)]);
    assert_eq!(watch.observe(at, &stalled), vec![]);
    assert_eq!(watch.observe(at + GAP_RESEND_TICKS - 1, &stalled), vec![]);
    assert_eq!(watch.observe(at + GAP_RESEND_TICKS, &stalled), vec![(PlayerId(7), 5)]);
    // A player no longer waiting is forgotten: waiting again starts over.
    assert_eq!(watch.observe(at + GAP_RESEND_TICKS + 1, &[]), vec![]);
    assert_eq!(watch.observe(at + GAP_RESEND_TICKS + 2, &stalled), vec![]);
    assert_eq!(watch.observe(at + 2 * GAP_RESEND_TICKS + 1, &stalled), vec![]);
    assert_eq!(watch.observe(at + 2 * GAP_RESEND_TICKS + 2, &stalled), vec![(PlayerId(7), 5)]);
}
