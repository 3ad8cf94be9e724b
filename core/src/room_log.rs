//! A room's sequence numbers, epoch and bounded history: the one interface
//! behind which a room's ordering and recovery live.
//!
//! Today every room's log is in this node's memory. The multi-node engine
//! will answer [`RoomLog::append`] and [`RoomLog::replay_after`] from the
//! shared engine (a Redis counter and stream) so that `seq`, `epoch` and
//! history hold across nodes; nothing outside this file assigns a `seq` or
//! keeps a past broadcast.

use std::collections::VecDeque;

use crate::output::TextFrame;

/// How much history a room keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryBounds {
    /// Broadcasts kept per room (0 = no history).
    pub messages_max: usize,
    /// Age after which a broadcast leaves the history, in µs.
    pub age_max_us: u64,
}

/// One kept broadcast: its number, when it was published, and its exact bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    seq: u64,
    published_us: u64,
    frame: TextFrame,
}

/// Sequence state and history of one room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomLog {
    /// Identifies this log's lifetime: a client holding `(epoch, seq)` can
    /// tell "nothing missed" from "history gone" after a restart.
    epoch: String,
    /// The `seq` of the newest broadcast (0 before the first).
    last_seq: u64,
    /// The newest broadcasts, oldest first, consecutive `seq`s ending at `last_seq`.
    history: VecDeque<Entry>,
}

/// The answer to "replay everything after `seq`".
#[derive(Debug, PartialEq, Eq)]
pub enum Replay<'a> {
    /// The history covers the gap: these frames, in `seq` order (possibly none).
    Complete(Vec<&'a TextFrame>),
    /// Another epoch, a future `seq`, or history no longer reaching back far enough.
    Unavailable,
}

impl RoomLog {
    /// A fresh log under `epoch`.
    pub fn new(epoch: String) -> RoomLog {
        RoomLog {
            epoch,
            last_seq: 0,
            history: VecDeque::new(),
        }
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
    pub fn next_seq(&self) -> u64 {
        self.last_seq + 1
    }

    /// Records the broadcast numbered [`next_seq`](Self::next_seq), built as `frame`.
    /// Entries older than the age bound leave the history first.
    pub fn append(&mut self, bounds: HistoryBounds, now_us: u64, frame: TextFrame) -> u64 {
        self.expire(bounds, now_us);
        self.last_seq += 1;
        if bounds.messages_max > 0 {
            self.history.push_back(Entry {
                seq: self.last_seq,
                published_us: now_us,
                frame,
            });
            while self.history.len() > bounds.messages_max {
                self.history.pop_front();
            }
        }
        self.last_seq
    }

    /// Forgets broadcasts older than the age bound.
    pub fn expire(&mut self, bounds: HistoryBounds, now_us: u64) {
        while self
            .history
            .front()
            .is_some_and(|e| now_us.saturating_sub(e.published_us) >= bounds.age_max_us)
        {
            self.history.pop_front();
        }
    }

    /// When the newest kept broadcast ages out (`None` without history).
    pub fn history_expires_at_us(&self, bounds: HistoryBounds) -> Option<u64> {
        self.history
            .back()
            .map(|e| e.published_us.saturating_add(bounds.age_max_us))
    }

    /// Whether the log must outlive the room's last member: while it still
    /// holds history a returning client can recover from.
    pub fn retain_when_empty(&self) -> bool {
        !self.history.is_empty()
    }

    /// Everything published after `(epoch, seq)`, or `Unavailable` when
    /// the history cannot prove the client would miss nothing.
    pub fn replay_after(&self, epoch: &str, seq: u64) -> Replay<'_> {
        if epoch != self.epoch || seq > self.last_seq {
            return Replay::Unavailable;
        }
        if seq == self.last_seq {
            return Replay::Complete(Vec::new());
        }
        match self.history.front() {
            Some(oldest) if oldest.seq <= seq + 1 => Replay::Complete(
                self.history
                    .iter()
                    .filter(|e| e.seq > seq)
                    .map(|e| &e.frame)
                    .collect(),
            ),
            _ => Replay::Unavailable,
        }
    }

    /// Checks the log's own invariants (used by `Core::check_invariants`).
    pub fn check(&self, bounds: HistoryBounds) -> Result<(), String> {
        if self.history.len() > bounds.messages_max {
            return Err(format!(
                "history holds {} entries, over {}",
                self.history.len(),
                bounds.messages_max
            ));
        }
        let expected = self.last_seq + 1 - self.history.len() as u64;
        for (offset, entry) in self.history.iter().enumerate() {
            if entry.seq != expected + offset as u64 {
                return Err(format!(
                    "history is not consecutive ending at {}",
                    self.last_seq
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: HistoryBounds = HistoryBounds {
        messages_max: 3,
        age_max_us: 1_000,
    };

    fn frame(n: u64) -> TextFrame {
        TextFrame::from(format!("{{\"n\":{n}}}"))
    }

    fn log_with(n: u64) -> RoomLog {
        let mut log = RoomLog::new("e".into());
        for i in 1..=n {
            log.append(BOUNDS, i * 10, frame(i));
        }
        log
    }

    #[test]
    fn replays_exactly_the_missed_frames() {
        let log = log_with(5); // keeps 3, 4, 5
        assert_eq!(log.replay_after("e", 5), Replay::Complete(vec![]));
        assert_eq!(log.replay_after("e", 4), Replay::Complete(vec![&frame(5)]));
        assert_eq!(
            log.replay_after("e", 2),
            Replay::Complete(vec![&frame(3), &frame(4), &frame(5)])
        );
        assert_eq!(
            log.replay_after("e", 1),
            Replay::Unavailable,
            "seq 2 is gone"
        );
        assert_eq!(log.replay_after("other", 4), Replay::Unavailable);
        assert_eq!(
            log.replay_after("e", 6),
            Replay::Unavailable,
            "a future seq is not ours"
        );
        log.check(BOUNDS).unwrap();
    }

    #[test]
    fn ages_out_and_stops_being_retained() {
        let mut log = log_with(2);
        assert!(log.retain_when_empty());
        assert_eq!(log.history_expires_at_us(BOUNDS), Some(1_020));
        log.expire(BOUNDS, 1_010);
        assert_eq!(log.replay_after("e", 0), Replay::Unavailable);
        assert_eq!(log.replay_after("e", 1), Replay::Complete(vec![&frame(2)]));
        log.expire(BOUNDS, 1_020);
        assert!(!log.retain_when_empty());
        assert_eq!(log.last_seq(), 2, "seq survives the history");
    }

    #[test]
    fn without_history_nothing_is_kept() {
        let bounds = HistoryBounds {
            messages_max: 0,
            age_max_us: 1_000,
        };
        let mut log = RoomLog::new("e".into());
        log.append(bounds, 0, frame(1));
        assert!(!log.retain_when_empty());
        assert_eq!(log.replay_after("e", 0), Replay::Unavailable);
        assert_eq!(log.replay_after("e", 1), Replay::Complete(vec![]));
    }
}
