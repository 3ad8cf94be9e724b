//! Delivery: one frame to the connections it is for. A room's numbered
//! message (handed over by `stream` once it is next in the room's order,
//! after gaps are filled or announced) goes to every member, sharing the
//! same bytes, with progress events held back for members that are
//! behind (conflation); a member whose backlog would overflow is closed
//! with 4008 before anything later reaches it. A direct message goes to
//! this node's connections of a user or the one connection named.

use crate::codes::CloseCode;
use crate::engine::Numbered;
use crate::input::SendTarget;
use crate::machine::{impossible, Core};
use crate::names::{ConnectionId, RoomName};
use crate::output::TextFrame;

impl Core {
    /// Hands one numbered frame to every member of `room`: every member
    /// shares the same bytes. Progress events may be held (conflation).
    pub(crate) fn fan_out(&mut self, room: &RoomName, message: &Numbered) {
        let now = self.now;
        // Split borrow: the room (here) and the connection slab (in the loop).
        let Some(state) = self.rooms.get(room) else {
            return;
        };
        let conflating = message
            .series
            .as_ref()
            .filter(|_| self.config.rooms.conflates(room));
        let flush_at_us = now.monotonic_us + self.config.rooms.conflation_window_ms.max(1) * 1000;
        let behind_bytes = self.config.limits.conflation_behind_bytes;
        let mut newly_holding: Vec<u32> = Vec::new();
        let mut overflowed = Vec::new();
        for &slot in state.members.values() {
            let Some(connection) = self.conns.at_mut(slot) else {
                // Members always occupy their slot (`check_invariants`).
                impossible(&mut self.broken, "a member's slot is empty");
                continue;
            };
            if let Some(series) = conflating {
                // Behind (its socket pushed back, or its backlog is past the
                // threshold), or already holding this series: hold (newest
                // wins). Bytes merely waiting for the shell's next write do
                // not make a member behind.
                let behind = connection.pushed_back || connection.queued_bytes > behind_bytes;
                if behind || connection.conflated.holds(room, series) {
                    if connection.conflated.is_empty() {
                        newly_holding.push(slot);
                    }
                    connection.conflated.hold(
                        room,
                        series.clone(),
                        message.seq,
                        message.frame.clone(),
                        flush_at_us,
                    );
                    continue;
                }
            }
            // Anything held for this room goes first: seq never goes backwards.
            let ok = Self::send_conflated(
                &mut self.outputs,
                &self.config.limits,
                connection,
                Some(room),
            );
            if !(ok
                && Self::try_send(
                    &mut self.outputs,
                    &self.config.limits,
                    connection,
                    &message.frame,
                ))
            {
                overflowed.push(connection.id);
            }
        }
        // Members that started holding frames need their flush timer.
        for slot in newly_holding {
            self.schedule(slot);
        }
        // Close overflowing members now so they get nothing after their gap.
        self.close_each(overflowed, CloseCode::SlowConsumer);
    }

    /// A direct message to this node's connections among `target`.
    pub(crate) fn deliver_direct(&mut self, target: &SendTarget, frame: &TextFrame) -> u64 {
        let targets: Vec<ConnectionId> = match target {
            SendTarget::Connection(conn) => {
                self.conns.get(*conn).map(|c| c.id).into_iter().collect()
            }
            SendTarget::User(user) => self.conns.of_user(user),
        };
        let mut delivered = 0;
        for conn in targets {
            let Some(slot) = self.conns.slot(conn) else {
                continue;
            };
            self.send(slot, frame.clone());
            delivered += u64::from(self.conns.is_open(conn));
        }
        delivered
    }
}
