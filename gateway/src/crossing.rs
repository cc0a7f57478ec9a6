//! Retries of border crossings. No I/O.
//!
//! An avatar crossing a border is a `Transfer` that the gateway delivers to the owner of the region
//! it enters. A delivery fails when the destination has no route or is frozen in a handoff (the
//! gateway does not send it), or when the owner answers `ImmigrationRefused` (it does not own the
//! region any more, the region stopped, the avatar is not valid there). The gateway then tries
//! again; [`Crossings`] counts the failed deliveries of each player's crossing, of both kinds
//! together, and after [`SEND_BACK_AFTER`] of them in a row turns the avatar back the way it came
//! (docs/protocol.md §10). The count goes on after the turn: if the way back fails as often, the
//! avatar turns around once more, so a crossing is retried until one side takes it and nothing is
//! dropped. An arrival ends the count; the player's next crossing starts from zero.
//!
//! It does not time the retries nor send anything: the service does both and asks this module
//! which way the next delivery goes.

use std::collections::HashMap;

use baton_wire::PlayerId;

/// Failed deliveries in a row after which a crossing avatar goes back where it came from.
pub(crate) const SEND_BACK_AFTER: u32 = 30;

/// Which way the next delivery of a crossing goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// To `transfer.to`, as before.
    Onward,
    /// Turn around: swap `transfer.from` and `transfer.to` and deliver it there.
    Back,
}

/// The crossings in flight, by player (a player's avatar crosses one border at a time).
#[derive(Debug, Default)]
pub(crate) struct Crossings {
    failures: HashMap<PlayerId, u32>,
}

impl Crossings {
    /// `player`'s avatar left its region: a new crossing, delivered onward.
    pub(crate) fn handle_emigrated(&mut self, player: PlayerId) -> Delivery {
        self.failures.insert(player, 0);
        Delivery::Onward
    }

    /// The owner of the destination refused `player`'s avatar; returns the next delivery's way.
    pub(crate) fn handle_refused(&mut self, player: PlayerId) -> Delivery {
        // A refusal continues the crossing's count: restarting it would let an avatar that is
        // refused every time retry forever without ever going back.
        self.handle_failure(player)
    }

    /// `player`'s avatar could not be sent (its destination has no route or is frozen); returns
    /// the next delivery's way.
    pub(crate) fn handle_unroutable(&mut self, player: PlayerId) -> Delivery {
        self.handle_failure(player)
    }

    /// `player`'s avatar arrived: its crossing is over.
    pub(crate) fn handle_arrived(&mut self, player: PlayerId) {
        self.failures.remove(&player);
    }

    fn handle_failure(&mut self, player: PlayerId) -> Delivery {
        // A crossing with no count yet (a late refusal after its arrival, say) starts from zero.
        let failures = self.failures.entry(player).or_insert(0);
        // Reaching the top takes years of retries 100 ms apart; saturating only rules out an
        // overflow panic in debug builds.
        *failures = failures.saturating_add(1);
        if failures.is_multiple_of(SEND_BACK_AFTER) { Delivery::Back } else { Delivery::Onward }
    }
}

#[cfg(test)]
mod tests {
    use super::{Crossings, Delivery, SEND_BACK_AFTER};
    use baton_wire::PlayerId;

    /// What happens to one player's crossing.
    #[derive(Clone, Copy, Debug)]
    enum Event {
        Emigrated,
        Refused,
        Unroutable,
        Arrived,
    }

    /// `count` times `event`.
    fn times(count: u32, event: Event) -> impl Iterator<Item = Event> {
        std::iter::repeat_n(event, count as usize)
    }

    /// Feeds `events` for one player and checks at which of them (counted from 1) the avatar is
    /// turned back.
    fn check(events: impl IntoIterator<Item = Event>, turned_back_at: &[usize]) {
        let mut crossings = Crossings::default();
        let player = PlayerId(7);
        let mut turned = Vec::new();
        for (index, event) in events.into_iter().enumerate() {
            let delivery = match event {
                Event::Emigrated => Some(crossings.handle_emigrated(player)),
                Event::Refused => Some(crossings.handle_refused(player)),
                Event::Unroutable => Some(crossings.handle_unroutable(player)),
                Event::Arrived => {
                    crossings.handle_arrived(player);
                    None
                }
            };
            if delivery == Some(Delivery::Back) {
                turned.push(index + 1);
            }
        }
        assert_eq!(turned, turned_back_at, "events after which the avatar was turned back");
    }

    #[test]
    fn an_avatar_refused_again_and_again_goes_back_and_then_turns_around_again() {
        let limit = SEND_BACK_AFTER as usize;
        // Event 1 is the emigration; refusal n is event n + 1.
        check(
            std::iter::once(Event::Emigrated).chain(times(3 * SEND_BACK_AFTER, Event::Refused)),
            &[limit + 1, 2 * limit + 1, 3 * limit + 1],
        );
    }

    #[test]
    fn refusals_and_missing_routes_count_together() {
        let events = std::iter::once(Event::Emigrated)
            .chain(times(SEND_BACK_AFTER / 2, Event::Unroutable))
            .chain(times(SEND_BACK_AFTER / 2 - 1, Event::Refused))
            .chain(std::iter::once(Event::Unroutable));
        check(events, &[SEND_BACK_AFTER as usize + 1]);
    }

    #[test]
    fn an_arrival_ends_the_crossing_and_the_next_one_starts_from_zero() {
        let events = std::iter::once(Event::Emigrated)
            .chain(times(SEND_BACK_AFTER - 1, Event::Unroutable))
            .chain([Event::Arrived, Event::Emigrated])
            .chain(times(SEND_BACK_AFTER - 1, Event::Refused));
        check(events, &[]);
    }

    #[test]
    fn an_arrival_forgets_the_crossing_and_a_late_refusal_starts_from_zero() {
        // No emigration after the arrival: a late refusal does not continue the forgotten count.
        let events = std::iter::once(Event::Emigrated)
            .chain(times(SEND_BACK_AFTER - 1, Event::Unroutable))
            .chain([Event::Arrived])
            .chain(times(SEND_BACK_AFTER - 1, Event::Refused));
        check(events, &[]);
        // Nothing is kept for a player whose crossing ended.
        let mut crossings = Crossings::default();
        crossings.handle_emigrated(PlayerId(7));
        crossings.handle_arrived(PlayerId(7));
        assert!(crossings.failures.is_empty());
    }
}
