//! The in-memory engine's own invariants, checked by tests, the simulator
//! and the fuzzers: per room (log, followers, expiry timer, byte count,
//! oldest-entry index) and across rooms (the indexes and the budgets).

use super::MemoryEngine;
use crate::engine::EngineBroken;

impl MemoryEngine {
    /// Checks the engine's own invariants (tests, simulator, fuzzers).
    pub fn invariants(&self) -> Result<(), EngineBroken> {
        self.presence.check()?;
        for (name, room) in &self.rooms {
            room.log
                .check(self.bounds)
                .map_err(|e| EngineBroken(format!("engine room {name:?}: {e}")))?;
            if room.followers.is_empty() && !room.log.retain_when_empty() {
                return Err(EngineBroken(format!(
                    "engine room {name:?} has no followers and no history but is kept"
                )));
            }
            let scheduled = room
                .expiry_at_us
                .is_some_and(|at| self.expiries.contains(&(at, name.clone())));
            if room.followers.is_empty() != scheduled {
                return Err(EngineBroken(format!(
                    "engine room {name:?}: an expiry timer must run exactly while nobody follows it"
                )));
            }
            if room.counted_bytes != room.log.bytes() {
                return Err(EngineBroken(format!(
                    "engine room {name:?}: {} history bytes counted, {} kept",
                    room.counted_bytes,
                    room.log.bytes()
                )));
            }
            let indexed = room
                .oldest_us
                .is_some_and(|at| self.oldest.contains(&(at, name.clone())));
            if room.oldest_us != room.log.oldest_published_us()
                || indexed != room.oldest_us.is_some()
            {
                return Err(EngineBroken(format!(
                    "engine room {name:?}: its oldest entry is not indexed for the byte budget"
                )));
            }
        }
        let unfollowed = self.rooms.values().filter(|r| r.followers.is_empty());
        if self.expiries.len() != unfollowed.count() {
            return Err(EngineBroken(format!(
                "{} engine expiry timers for the unfollowed rooms",
                self.expiries.len()
            )));
        }
        let with_history = self.rooms.values().filter(|r| r.oldest_us.is_some());
        if self.oldest.len() != with_history.count() {
            return Err(EngineBroken(format!(
                "{} oldest-entry index entries for the rooms with history",
                self.oldest.len()
            )));
        }
        let counted: usize = self.rooms.values().map(|r| r.counted_bytes).sum();
        if counted != self.history_bytes {
            return Err(EngineBroken(format!(
                "{} history bytes in total, {counted} in the rooms",
                self.history_bytes
            )));
        }
        if self.history_bytes > self.bounds.bytes_max {
            return Err(EngineBroken(format!(
                "{} history bytes kept, over history_bytes_max {}",
                self.history_bytes, self.bounds.bytes_max
            )));
        }
        if self.rooms.len() > self.bounds.rooms_max {
            return Err(EngineBroken(format!(
                "{} rooms kept, over rooms_max {}",
                self.rooms.len(),
                self.bounds.rooms_max
            )));
        }
        for (node, name) in &self.refused {
            if self
                .rooms
                .get(name)
                .is_some_and(|r| r.followers.contains(node))
            {
                return Err(EngineBroken(format!(
                    "node {node} follows {name:?} but its interest is marked refused"
                )));
            }
        }
        Ok(())
    }
}
