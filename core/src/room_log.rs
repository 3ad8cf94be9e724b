//! A room's sequence numbers and epoch: the one interface behind which a
//! room's ordering (and, later, its history) lives.
//!
//! Today every room's log is in this node's memory. The multi-node engine
//! will replace the body of [`RoomLog::append`] with the shared engine's
//! answer (a Redis counter and stream), so that `seq`, `epoch` and history
//! hold across nodes; nothing outside this file assigns a `seq`.

/// Sequence state of one room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomLog {
    /// Identifies this log's lifetime: a client holding `(epoch, seq)` can
    /// tell "nothing missed" from "history gone" after a restart.
    epoch: String,
    /// The `seq` of the newest broadcast (0 before the first).
    last_seq: u64,
}

impl RoomLog {
    /// A fresh log under `epoch`.
    pub fn new(epoch: String) -> RoomLog {
        RoomLog { epoch, last_seq: 0 }
    }

    /// This log's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The newest `seq` (0 when nothing was published yet).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Numbers the next broadcast: gapless, starting at 1.
    pub fn append(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// Whether the log must outlive the room's last member. Without history
    /// there is nothing to recover, so an empty room is dropped at once and
    /// its next use starts a new epoch.
    pub fn retain_when_empty(&self) -> bool {
        false
    }
}
