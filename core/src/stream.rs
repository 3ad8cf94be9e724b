//! The engine conversation for each room's stream: room-level reads,
//! live messages, gap detection and refill, and periodic stream checks.
//!
//! Per room this node tracks the cursor `(epoch, last seq)` its members
//! have been given. A live message (or an append's answer) one past the
//! cursor is fanned out; an older one is a duplicate and dropped; a jump or
//! another epoch starts one room-level read (never one per member), during
//! which live messages are buffered. The read's frames fill the gap; when
//! they cannot, every member is told with a `ROOM_GAP` warning carrying
//! the position the read's frames resume from (after data loss: the start
//! of the new epoch), and then gets those frames. Because the live stream
//! is at most once, a room with members is also read every
//! `stream_check_interval_ms`, so a lost last message is noticed even when
//! nothing follows it.

use serde::Serialize;

use crate::calls::Call;
use crate::engine::{EngineError, EngineRequest, Numbered, Position, ReadResult};
use crate::envelope;
use crate::machine::{impossible, Core};
use crate::names::RoomName;
use crate::time::Now;

impl Core {
    /// Starts the room's read, answering the joins in `next_joins` and
    /// refilling the members from the cursor. At most one per room.
    pub(crate) fn start_read(&mut self, room: &RoomName) {
        let now = self.now;
        let has_room = self.engine_has_room(1);
        // A read answers what the room's check would have: it is taken down.
        let Some(state) = self.rooms.get_unchecked_mut(room) else {
            self.impossible("read of an unknown room");
            return;
        };
        if state.reading.is_some() {
            self.impossible("two reads of one room");
            return;
        }
        state.joins.append(&mut state.next_joins);
        if !has_room {
            // The engine has too much in flight: refuse the joins, retry the
            // members' refill later.
            let joins: Vec<_> = state.joins.drain(..).collect();
            state.buffered_live.clear();
            state.read_again = true;
            for join in joins {
                self.refuse_join(now, join, "the engine is overloaded");
            }
            self.schedule_check(room, self.config.limits.engine_retry_ms);
            self.forget_if_idle(room);
            return;
        }
        // The engine's rollback check gets the cursor only: a client's
        // `since` is not evidence (it must not move a room to a new epoch).
        let known = state.cursor.clone();
        let mut after = state.cursor.clone();
        for since in state.joins.iter().filter_map(|j| j.since.as_ref()) {
            match &mut after {
                None => {
                    after = Some(Position {
                        epoch: since.epoch.as_str().into(),
                        seq: since.seq,
                    })
                }
                Some(after) if *after.epoch == *since.epoch => after.seq = after.seq.min(since.seq),
                Some(_) => {}
            }
        }
        state.read_again = false;
        let call = self.engine.call(Call::Read { room: room.clone() });
        let Some(state) = self.rooms.get_mut(room) else {
            unreachable!("checked above")
        };
        state.reading = Some((call, after.clone()));
        self.engine.push(EngineRequest::Read {
            call,
            room: room.clone(),
            after,
            limit: self.config.limits.history_messages_max,
            known,
        });
    }

    /// The answer to a room's read.
    pub(crate) fn on_read(
        &mut self,
        now: Now,
        call: crate::engine::CallId,
        result: Result<ReadResult, EngineError>,
    ) {
        let Some(Call::Read { room }) = self.engine.take(call) else {
            self.impossible("a read answer for no read in flight");
            return;
        };
        let Some(state) = self.rooms.get_mut(&room) else {
            self.impossible("a room forgotten while its read was in flight");
            return;
        };
        if state.reading.as_ref().map(|r| r.0) != Some(call) {
            impossible(
                &mut self.broken,
                "a read answer that is not the room's read",
            );
        }
        state.reading = None;
        let buffered = std::mem::take(&mut state.buffered_live);
        let failed = result.is_err();
        let mut stale = false;
        match result {
            Ok(read) => {
                stale = self.catch_up(&room, &read);
                while let Some(join) = self.next_waiting_join(&room) {
                    self.complete_join(now, &room, join, Some(&read));
                }
                for message in buffered {
                    // The read is the room's truth for its epoch: a buffered
                    // message of another one is stale (or from a later
                    // reset, which the soon check below will find).
                    if message.epoch == read.epoch {
                        self.on_stream(message);
                    } else {
                        stale = true;
                    }
                }
            }
            Err(error) => {
                let has_cursor = self.rooms.get(&room).is_some_and(|r| r.cursor.is_some());
                while let Some(join) = self.next_waiting_join(&room) {
                    if has_cursor {
                        // The room's position is known: the join succeeds,
                        // honestly unrecovered when it asked for history.
                        self.complete_join(now, &room, join, None);
                    } else {
                        self.refuse_join(now, join, error.message());
                    }
                }
                if let Some(state) = self.rooms.get_mut(&room) {
                    // Buffered live messages are not lost: the retry reads them.
                    state.read_again = has_cursor;
                }
            }
        }
        let limits = &self.config.limits;
        let (retry_ms, check_ms) = (limits.engine_retry_ms, limits.stream_check_interval_ms);
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        if state.reading.is_none() && state.cursor.is_some() {
            if !state.next_joins.is_empty() || (state.read_again && !failed) {
                self.start_read(&room);
            } else if state.read_again || stale {
                self.schedule_check(&room, retry_ms);
            } else {
                self.schedule_check(&room, check_ms);
            }
        } else if state.reading.is_none() && !state.next_joins.is_empty() {
            self.start_read(&room);
        }
        self.forget_if_idle(&room);
    }

    /// The next join the answered read serves. Taken one at a time: the
    /// rest keep the room alive even if this one's joiner is closed.
    fn next_waiting_join(&mut self, room: &RoomName) -> Option<crate::rooms::PendingJoin> {
        self.rooms.get_mut(room)?.joins.pop_front()
    }

    /// Brings the members up to the read's top: the missed frames when
    /// the read covers them, otherwise a `ROOM_GAP` warning naming where
    /// the read's frames resume, then those frames.
    /// Returns whether the read was behind the cursor (asked again soon).
    fn catch_up(&mut self, room: &RoomName, read: &ReadResult) -> bool {
        let Some(state) = self.rooms.get_mut(room) else {
            return false;
        };
        let top = Position {
            epoch: read.epoch.clone(),
            seq: read.top,
        };
        let Some(cursor) = state.cursor.clone() else {
            state.cursor = Some(top);
            return false;
        };
        if cursor.epoch == read.epoch && cursor.seq >= read.top {
            // Behind the cursor in the same epoch is a store that lost
            // messages this node streamed. The read carried the cursor
            // (`known`), so the engine's rollback check moves the room to
            // a new epoch; an engine that did not (a read that crossed a
            // restart) is asked again soon. Nothing goes backwards.
            return cursor.seq > read.top;
        }
        let from = if read.covers(&cursor) {
            cursor
        } else {
            // What history cannot give is announced; what it still holds
            // after that (the new epoch's messages after data loss, the
            // retained tail after a long outage) is still delivered.
            let resume = Position {
                epoch: read.epoch.clone(),
                seq: read.resume_after(),
            };
            if cursor.epoch == resume.epoch && cursor.seq >= resume.seq {
                impossible(
                    &mut self.broken,
                    "a gap that does not move the cursor forward",
                );
            }
            state.cursor = Some(resume.clone());
            self.announce_gap(room, &resume);
            resume
        };
        let missed: Vec<Numbered> = read
            .frames_after(from.seq)
            .map(|(seq, frame)| Numbered {
                room: room.clone(),
                epoch: read.epoch.clone(),
                seq: *seq,
                frame: frame.clone(),
                // Refilled messages are not conflated.
                series: None,
            })
            .collect();
        for message in missed {
            if let Some(state) = self.rooms.get_mut(room) {
                state.cursor = Some(Position {
                    epoch: message.epoch.clone(),
                    seq: message.seq,
                });
            }
            self.fan_out(room, &message);
        }
        false
    }

    /// A numbered message for a room: fanned out when it is the next one,
    /// dropped when already given, buffered when a read is in flight, or the
    /// start of a refill when it jumps.
    pub(crate) fn on_stream(&mut self, message: Numbered) {
        let buffer_max = self.config.limits.stream_buffer_max;
        let Some(state) = self.rooms.get_mut(&message.room) else {
            return; // nobody here follows the room (any more)
        };
        if state.reading.is_some() {
            if state.buffered_live.len() < buffer_max {
                state.buffered_live.push(message);
            } else {
                // The read answers first; the next read picks this up.
                state.read_again = true;
            }
            return;
        }
        let Some(cursor) = state.cursor.as_mut() else {
            self.impossible("a room without a read in flight has no cursor");
            return;
        };
        if cursor.epoch == message.epoch {
            if message.seq <= cursor.seq {
                return; // already given (live and answer both arrive)
            }
            if message.seq == cursor.seq + 1 {
                cursor.seq = message.seq;
                let room = message.room.clone();
                return self.fan_out(&room, &message);
            }
        }
        if state.read_again {
            return; // a retry read is scheduled and will carry this
        }
        let room = message.room.clone();
        state.buffered_live.push(message);
        self.start_read(&room);
    }

    /// Tells every member that the room's messages up to `top` cannot be
    /// recovered: they continue from `top`.
    fn announce_gap(&mut self, room: &RoomName, top: &Position) {
        #[derive(Serialize)]
        struct Gap<'a> {
            code: &'static str,
            message: String,
            room: &'a str,
            epoch: &'a str,
            seq: u64,
        }
        let data = Gap {
            code: "ROOM_GAP",
            message: format!(
                "messages of room {room} were lost and cannot be recovered; \
                 it continues after epoch {} seq {}",
                top.epoch, top.seq
            ),
            room: room.as_str(),
            epoch: &top.epoch,
            seq: top.seq,
        };
        let frame = envelope::envelope("system_warning", self.now.unix_ms, None, &data, None);
        let Some(state) = self.rooms.get(room) else {
            return;
        };
        let mut overflowed = Vec::new();
        for (&member, &slot) in &state.members {
            let Some(connection) = self.conns.at_mut(slot) else {
                continue;
            };
            // Held progress events are older than the gap: they go first.
            let ok =
                Self::send_conflated(
                    &mut self.outputs,
                    &self.config.limits,
                    connection,
                    Some(room),
                ) && Self::try_send(&mut self.outputs, &self.config.limits, connection, &frame);
            if !ok {
                overflowed.push(member);
            }
        }
        // Closed now, not later: a member that missed the warning must not
        // get the messages after it.
        self.close_each(overflowed, crate::codes::CloseCode::SlowConsumer);
    }

    /// (Re)schedules the room's stream check `after_ms` from now.
    pub(crate) fn schedule_check(&mut self, room: &RoomName, after_ms: u64) {
        let at = self
            .now
            .monotonic_us
            .saturating_add(after_ms.max(1).saturating_mul(1000));
        self.rooms.set_check(room, at);
    }

    /// A room's check is due: read it (which refills any gap).
    pub(crate) fn check_stream(&mut self, room: &RoomName) {
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        state.check_at_us = None;
        if state.reading.is_none() {
            self.start_read(room);
        }
        // Members told nothing yet after a stream reset: list the room again.
        self.resync_presence(room);
    }

    /// The live stream may have lost messages of any room: every room
    /// whose position the node keeps is read now (one with a read in
    /// flight is read again after it, as that read may predate the loss).
    pub(crate) fn on_stream_reset(&mut self) {
        let followed: Vec<RoomName> = self
            .rooms
            .iter()
            .filter(|(_, state)| state.cursor.is_some())
            .map(|(room, _)| room.clone())
            .collect();
        for room in followed {
            let Some(state) = self.rooms.get_mut(&room) else {
                continue;
            };
            if state.reading.is_some() {
                state.read_again = true;
            } else {
                // `start_read` also takes the room's check timer down.
                self.start_read(&room);
            }
        }
    }
}
