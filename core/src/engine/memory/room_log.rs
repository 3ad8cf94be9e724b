//! A room's sequence numbers and bounded history, as the in-memory engine
//! ([`MemoryEngine`](crate::engine::memory::MemoryEngine)) keeps them.
//! Nothing outside the engine assigns a `seq` or keeps a past broadcast.

use std::collections::VecDeque;

use crate::engine::EngineBroken;
use crate::output::TextFrame;

/// How much history the in-memory engine keeps: per room (count, age) and
/// in total (bytes, rooms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryBounds {
    /// Broadcasts kept per room (0 = no history).
    pub messages_max: usize,
    /// Age after which a broadcast leaves the history, in µs.
    pub age_max_us: u64,
    /// Bytes of kept frames across all rooms; beyond it the oldest entries
    /// (across rooms) leave the history.
    pub bytes_max: usize,
    /// Rooms kept (followed, or holding history).
    pub rooms_max: usize,
}

/// One kept broadcast: its number, when it was published, and its exact bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    seq: u64,
    published_us: u64,
    frame: TextFrame,
}

/// Sequence state and history of one room.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomLog {
    /// The `seq` of the newest broadcast (0 before the first).
    last_seq: u64,
    /// The newest broadcasts, oldest first, consecutive `seq`s ending at `last_seq`.
    history: VecDeque<Entry>,
    /// Bytes of the kept frames.
    bytes: usize,
}

impl RoomLog {
    /// A fresh, empty log.
    pub fn new() -> RoomLog {
        RoomLog::default()
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
            self.bytes += frame.len();
            self.history.push_back(Entry {
                seq: self.last_seq,
                published_us: now_us,
                frame,
            });
            while self.history.len() > bounds.messages_max {
                self.evict_oldest();
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
            self.evict_oldest();
        }
    }

    /// Forgets the oldest kept broadcast (the engine's byte budget). The
    /// rest stays consecutive up to `last_seq`, so a read after an older
    /// position is simply not covered.
    pub fn evict_oldest(&mut self) {
        if let Some(entry) = self.history.pop_front() {
            self.bytes -= entry.frame.len();
        }
    }

    /// Forgets every broadcast after `seq` (a store rolled back to an
    /// earlier point): the next one is numbered `seq + 1` again.
    pub fn truncate(&mut self, seq: u64) {
        self.last_seq = self.last_seq.min(seq);
        while self.history.back().is_some_and(|e| e.seq > seq) {
            if let Some(entry) = self.history.pop_back() {
                self.bytes -= entry.frame.len();
            }
        }
    }

    /// Bytes of the kept frames.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When the oldest kept broadcast was published (`None` without history).
    pub fn oldest_published_us(&self) -> Option<u64> {
        self.history.front().map(|e| e.published_us)
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

    /// The kept frames numbered after `seq`, oldest first, at most `limit`.
    pub fn frames_after(&self, seq: u64, limit: usize) -> Vec<(u64, TextFrame)> {
        self.history
            .iter()
            .filter(|e| e.seq > seq)
            .take(limit)
            .map(|e| (e.seq, e.frame.clone()))
            .collect()
    }

    /// Checks the log's own invariants (used by `Core::check_invariants`).
    pub fn check(&self, bounds: HistoryBounds) -> Result<(), EngineBroken> {
        if self.history.len() > bounds.messages_max {
            return Err(EngineBroken(format!(
                "history holds {} entries, over {}",
                self.history.len(),
                bounds.messages_max
            )));
        }
        let bytes: usize = self.history.iter().map(|e| e.frame.len()).sum();
        if bytes != self.bytes {
            return Err(EngineBroken(format!(
                "history counts {} bytes but holds {bytes}",
                self.bytes
            )));
        }
        let expected = self.last_seq + 1 - self.history.len() as u64;
        for (offset, entry) in self.history.iter().enumerate() {
            if entry.seq != expected + offset as u64 {
                return Err(EngineBroken(format!(
                    "history is not consecutive ending at {}",
                    self.last_seq
                )));
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
        bytes_max: usize::MAX,
        rooms_max: usize::MAX,
    };

    fn frame(n: u64) -> TextFrame {
        TextFrame::from(format!("{{\"n\":{n}}}"))
    }

    fn log_with(n: u64) -> RoomLog {
        let mut log = RoomLog::new();
        for i in 1..=n {
            log.append(BOUNDS, i * 10, frame(i));
        }
        log
    }

    #[test]
    fn keeps_the_newest_frames_in_order() {
        let log = log_with(5); // keeps 3, 4, 5
        assert_eq!(log.frames_after(5, 10), vec![]);
        assert_eq!(log.frames_after(4, 10), vec![(5, frame(5))]);
        assert_eq!(
            log.frames_after(0, 10),
            vec![(3, frame(3)), (4, frame(4)), (5, frame(5))]
        );
        assert_eq!(log.frames_after(0, 2), vec![(3, frame(3)), (4, frame(4))]);
        log.check(BOUNDS).unwrap();
    }

    #[test]
    fn ages_out_and_stops_being_retained() {
        let mut log = log_with(2);
        assert!(log.retain_when_empty());
        assert_eq!(log.history_expires_at_us(BOUNDS), Some(1_020));
        log.expire(BOUNDS, 1_010);
        assert_eq!(log.frames_after(0, 10), vec![(2, frame(2))]);
        log.expire(BOUNDS, 1_020);
        assert!(!log.retain_when_empty());
        assert_eq!(log.last_seq(), 2, "seq survives the history");
    }

    #[test]
    fn without_history_nothing_is_kept() {
        let bounds = HistoryBounds {
            messages_max: 0,
            ..BOUNDS
        };
        let mut log = RoomLog::new();
        log.append(bounds, 0, frame(1));
        assert!(!log.retain_when_empty());
        assert_eq!(log.frames_after(0, 10), vec![]);
        assert_eq!(log.last_seq(), 1);
    }
}
