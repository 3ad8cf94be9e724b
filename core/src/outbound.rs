//! The outbound queue and the node-wide byte budget
//! ([`Limits::outbound_bytes_max`](crate::limits::Limits::outbound_bytes_max)).
//!
//! Every frame the core hands a connection is counted twice: in the
//! connection's own backlog (`Connection::queued_bytes`, bounded by
//! `outbound_queue_bytes_max`, close 4008 when full) and in the node's
//! total ([`Outbox::queued_total`]). The total shrinks when the shell
//! reports bytes written (`Input::Written`) or a connection closes.
//!
//! When the total passes the budget, the connections that do not keep up
//! (their socket pushed back, `Input::Blocked`, and they have not caught up
//! since) are closed with 4008, the largest backlog first (ties: the
//! lowest id), until the total is back under 15/16 of the budget. Members
//! that keep up are never closed for it: their bytes are about to be
//! written, so the total may stay above the budget for as long as that
//! takes. Nothing is dropped silently: a closed connection gets its 4008.
//!
//! Cost: the selection scans the connections once (O(n), plus sorting the
//! ones behind). A scan either frees at least 1/16 of the budget (the
//! total falls from above the budget to 15/16 of it) or, when too few
//! connections are behind, raises the level at which the next scan may
//! run by 1/16 of the budget. So at most one scan per `budget / 16`
//! bytes queued, however many inputs arrive while the node is over it.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};

use crate::codes::CloseCode;
use crate::machine::Core;
use crate::names::ConnectionId;
use crate::output::Output;

/// The core's outputs in order, with the bytes of `Send` frames handed to
/// connections and not yet reported written (all connections together).
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: VecDeque<Output>,
    /// Sum of every open connection's `queued_bytes`.
    pub(crate) queued_total: usize,
    /// After a scan that could not bring the total under the budget: the
    /// total above which the next scan may run (0: none pending).
    rescan_above: usize,
}

impl Deref for Outbox {
    type Target = VecDeque<Output>;
    fn deref(&self) -> &VecDeque<Output> {
        &self.queue
    }
}

impl DerefMut for Outbox {
    fn deref_mut(&mut self) -> &mut VecDeque<Output> {
        &mut self.queue
    }
}

impl Outbox {
    /// Moves `other`'s outputs and byte count into this one (at the end).
    pub(crate) fn append(&mut self, other: Outbox) {
        self.queued_total += other.queued_total;
        self.queue.extend(other.queue);
    }

    /// `bytes` left the node's backlog (written, or their connection closed).
    pub(crate) fn forget(&mut self, bytes: usize) {
        debug_assert!(
            bytes <= self.queued_total,
            "more bytes forgotten than queued"
        );
        self.queued_total = self.queued_total.saturating_sub(bytes);
    }
}

impl Core {
    /// Whether the node's backlog is over the budget and a scan is due.
    pub(crate) fn outbound_over_budget(&mut self) -> bool {
        let budget = self.config.limits.outbound_bytes_max;
        let total = self.outputs.queued_total;
        if total <= budget {
            self.outputs.rescan_above = 0;
            return false;
        }
        total > self.outputs.rescan_above
    }

    /// Closes the connections that do not keep up, largest backlog first,
    /// until the node's backlog is back under 15/16 of the budget (see the
    /// module doc).
    pub(crate) fn enforce_outbound_budget(&mut self) {
        let budget = self.config.limits.outbound_bytes_max;
        let target = budget - budget / 16;
        let mut behind: Vec<(usize, ConnectionId)> = self
            .conns
            .iter()
            .filter(|c| c.pushed_back && c.queued_bytes > 0)
            .map(|c| (c.queued_bytes, c.id))
            .collect();
        // Largest backlog first; the slab's order depends on slot reuse, so
        // ties go by id (deterministic).
        behind.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, conn) in behind {
            if self.outputs.queued_total <= target {
                break;
            }
            // Closing forgets its backlog (`close`), and is a presence
            // change like any other close.
            self.close(conn, Some(CloseCode::SlowConsumer));
        }
        let total = self.outputs.queued_total;
        self.outputs.rescan_above = if total > budget {
            total.saturating_add((budget / 16).max(1))
        } else {
            0
        };
    }
}
