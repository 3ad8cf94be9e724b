//! The inbound byte budget: bytes of client messages and publish bodies
//! that were received and are not yet handled by the hub, across all
//! connections (`limits.inbound_bytes_max`).
//!
//! Counts bound the hub's channel (4096 inputs), but an input can be a
//! 64 KiB message, and every reader waiting for room in a full channel
//! holds one more. The budget bounds them in bytes: a message is taken
//! into it before it is handed over (waiting included) and leaves it when
//! the hub has handled it (the [`InboundBytes`] share is dropped). A
//! message that does not fit is refused at once, with a clear answer
//! (error `SERVER_BUSY`, or 503 for a publish), instead of being queued.
//!
//! The last eighth of the budget is kept for small messages (up to
//! [`SMALL_MESSAGE_BYTES`]): clients flooding big messages cannot take it
//! all, so the pings and joins of everyone else still get through.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Messages up to this size may use the whole budget; larger ones only
/// seven eighths of it.
pub const SMALL_MESSAGE_BYTES: usize = 4096;

/// The shared budget.
#[derive(Debug)]
pub struct InboundBudget {
    used: AtomicUsize,
    max: usize,
}

/// A share of the budget, given back when dropped.
#[derive(Debug)]
pub struct InboundBytes {
    budget: Arc<InboundBudget>,
    bytes: usize,
}

impl InboundBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Arc<InboundBudget> {
        Arc::new(InboundBudget {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Takes `bytes`, or `None` when they do not fit.
    pub fn try_take(self: &Arc<Self>, bytes: usize) -> Option<InboundBytes> {
        let limit = if bytes <= SMALL_MESSAGE_BYTES {
            self.max
        } else {
            self.max - self.max / 8
        };
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= limit)
            })
            .ok()
            .map(|_| InboundBytes {
                budget: self.clone(),
                bytes,
            })
    }

    /// Bytes taken now.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Drop for InboundBytes {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_fit_within_the_budget_and_come_back_when_dropped() {
        let budget = InboundBudget::new(100);
        let a = budget.try_take(60).expect("fits");
        assert!(budget.try_take(41).is_none());
        let b = budget.try_take(40).expect("fits exactly");
        assert_eq!(budget.used(), 100);
        assert!(budget.try_take(1).is_none());
        drop(a);
        assert_eq!(budget.used(), 40);
        let c = budget.try_take(60).expect("room again");
        drop((b, c));
        assert_eq!(budget.used(), 0);
        assert!(budget.try_take(usize::MAX).is_none());
    }

    #[test]
    fn big_messages_leave_the_last_eighth_to_small_ones() {
        let budget = InboundBudget::new(80_000);
        let big = budget.try_take(60_000).expect("fits");
        assert!(budget.try_take(10_001).is_none(), "big: 7/8 at most");
        let more_big = budget.try_take(10_000).expect("up to 70,000");
        let small: Vec<_> = (0..2)
            .map(|_| budget.try_take(4096).expect("small fits"))
            .collect();
        assert!(budget.try_take(4096).is_none());
        assert!(budget.try_take(30).is_some());
        drop((big, more_big, small));
        assert_eq!(budget.used(), 0);
    }
}
