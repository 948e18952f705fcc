//! Requests being served, by when they started (their admission), so that a stall shows while
//! it lasts: a request held by a lock finishes only when the lock goes, but from the moment it
//! has been served longer than the latency target it counts here as evidence of an incident.
//!
//! Arrivals are counted in 100 ms slots of a ring covering [`SPAN_MS`]; each slot packs the
//! round of the ring it belongs to with its count into one `AtomicU64`, so arriving and leaving
//! are one compare-and-swap each and a slot reused by a later round is never mistaken for the
//! earlier one. A request still running after a whole span has gone round is no longer counted
//! (its slot was reused); the healer meets it again when it finishes.

use std::sync::atomic::{AtomicU64, Ordering};

/// Width of one slot (ms).
const SLOT_MS: i64 = 100;
/// Slots in the ring.
const SLOTS: usize = 128;
/// How far back in-flight requests are counted (ms).
pub const SPAN_MS: i64 = SLOT_MS * SLOTS as i64;

/// In-flight requests per arrival slot.
pub struct Arrivals {
    slots: Box<[AtomicU64]>,
}

impl Default for Arrivals {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// Where one in-flight request was counted; given back, once, to [`Arrivals::leave`].
#[derive(Debug)]
pub struct Ticket(i64);

fn slot_of(tick: i64) -> (usize, u64) {
    let slot = tick.rem_euclid(SLOTS as i64) as usize;
    let round = tick.div_euclid(SLOTS as i64) as u64 & u64::from(u32::MAX);
    (slot, round)
}

impl Arrivals {
    /// Counts a request that arrived at `now_ms` (Unix ms).
    pub fn arrive(&self, now_ms: i64) -> Ticket {
        let tick = now_ms.div_euclid(SLOT_MS);
        let (slot, round) = slot_of(tick);
        let _ = self.slots[slot].fetch_update(Ordering::AcqRel, Ordering::Acquire, |packed| {
            Some(if packed >> 32 == round {
                packed + 1
            } else {
                (round << 32) | 1
            })
        });
        Ticket(tick)
    }

    /// The request of `ticket` finished (or was dropped).
    pub fn leave(&self, ticket: Ticket) {
        let (slot, round) = slot_of(ticket.0);
        let _ = self.slots[slot].fetch_update(Ordering::AcqRel, Ordering::Acquire, |packed| {
            (packed >> 32 == round && packed & u64::from(u32::MAX) > 0).then(|| packed - 1)
        });
    }

    /// Requests still in flight that arrived more than `age_ms` before `now_ms` (and within
    /// [`SPAN_MS`] of it). A slot counts once it is wholly older than `age_ms`.
    pub fn older_than(&self, now_ms: i64, age_ms: i64) -> u64 {
        let newest = (now_ms - age_ms).div_euclid(SLOT_MS) - 1;
        let oldest = now_ms.div_euclid(SLOT_MS) - SLOTS as i64 + 1;
        (oldest..=newest)
            .map(|tick| {
                let (slot, round) = slot_of(tick);
                let packed = self.slots[slot].load(Ordering::Acquire);
                if packed >> 32 == round {
                    packed & u64::from(u32::MAX)
                } else {
                    0
                }
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_count_as_old_once_they_have_run_past_the_age() {
        let a = Arrivals::default();
        let t0 = 1_796_000_000_000;
        let first = a.arrive(t0);
        let _second = a.arrive(t0 + 50);
        let third = a.arrive(t0 + 1_000);
        assert_eq!(a.older_than(t0 + 100, 100), 0, "not yet past the age");
        assert_eq!(a.older_than(t0 + 250, 100), 2);
        assert_eq!(a.older_than(t0 + 1_250, 100), 3);
        a.leave(first);
        a.leave(third);
        assert_eq!(a.older_than(t0 + 1_250, 100), 1);
    }

    #[test]
    fn a_slot_of_an_earlier_round_is_not_counted_again() {
        let a = Arrivals::default();
        let t0 = 1_796_000_000_000;
        let old = a.arrive(t0);
        // A whole span later the same slot takes new arrivals; the old request is forgotten.
        let _new = a.arrive(t0 + SPAN_MS);
        assert_eq!(a.older_than(t0 + SPAN_MS + 500, 100), 1);
        // Its leaving does not touch the new round's count.
        a.leave(old);
        assert_eq!(a.older_than(t0 + SPAN_MS + 500, 100), 1);
    }
}
