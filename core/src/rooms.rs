//! Rooms on this node: joining (at once, or after the room's read),
//! leaving, and the room's local lifetime (presence diffs:
//! [`presence_diffs`](crate::presence_diffs)).
//!
//! A room exists here while it has members, joins waiting for its read, or
//! a read in flight; the engine is told `interest on` when it appears and
//! `interest off` when it goes. History outlives local members in the
//! engine, not here.

use serde::Serialize;

use crate::codes::ErrorCode;
use crate::engine::{EngineRequest, Position, PresenceEntry, ReadResult};
use crate::envelope;
use crate::machine::{Core, PendingJoin, Room};
use crate::names::{ConnectionId, RoomName};
use crate::presence_diffs::Change;
use crate::request::{RequestId, Since};
use crate::requests::unreachable_slot;
use crate::time::Now;

impl Core {
    /// Joins `room`: answered at once when the room's stream is known here
    /// and nothing needs history, otherwise after the room's next read.
    pub(crate) fn join(
        &mut self,
        now: Now,
        slot: u32,
        room: RoomName,
        since: Option<Since>,
        id: Option<RequestId>,
    ) {
        if self.join_admitted(now, slot, &room, &since, &id) {
            self.join_member(now, slot, room, since, id);
        }
    }

    /// A join the access rules (or the join hook, [`crate::checks`])
    /// allowed.
    pub(crate) fn join_member(
        &mut self,
        now: Now,
        slot: u32,
        room: RoomName,
        since: Option<Since>,
        id: Option<RequestId>,
    ) {
        let Some(connection) = self.conns[slot as usize].as_mut() else {
            unreachable_slot()
        };
        let conn = connection.id;
        if connection.rooms.contains(&room) {
            // A member already has everything since its join: nothing to
            // replay; "recovered" only when it claims exactly our position.
            let Some(cursor) = self.rooms.get(&room).and_then(|r| r.cursor.clone()) else {
                self.impossible("a member's room has no cursor");
                return;
            };
            let recovered = since
                .as_ref()
                .map(|s| *s.epoch == *cursor.epoch && s.seq == cursor.seq);
            let frame = joined_reply(now, &room, &cursor, recovered, id.as_ref());
            return self.send(slot, frame);
        }
        let limit = self.config.limits.rooms_per_connection_max;
        if connection.rooms.len() >= limit {
            let message = format!("at most {limit} rooms per connection");
            let frame =
                envelope::error(now.unix_ms, ErrorCode::TooManyRooms, &message, id.as_ref());
            return self.send(slot, frame);
        }
        let join = PendingJoin { conn, since, id };
        let ready = self
            .rooms
            .get(&room)
            .is_some_and(|r| r.reading.is_none() && r.cursor.is_some());
        if ready && join.since.is_none() {
            return self.complete_join(now, &room, join, None);
        }
        // Wait for the room's read; the connection's next messages wait too.
        self.start_waiting(conn);
        let state = self.ensure_room(&room);
        match &state.reading {
            Some((_, after)) if reaches(after.as_ref(), join.since.as_ref()) => {
                state.joins.push_back(join)
            }
            Some(_) => state.next_joins.push_back(join),
            None => {
                state.next_joins.push_back(join);
                self.start_read(&room);
            }
        }
    }

    /// Makes a pending (or immediate) join a membership: presence diff to
    /// the others, the reply, then the recovered frames. The room's cursor
    /// is already up to date with `read` (when the join waited for one).
    pub(crate) fn complete_join(
        &mut self,
        now: Now,
        room: &RoomName,
        join: PendingJoin,
        read: Option<&ReadResult>,
    ) {
        let Some(&slot) = self.slot_of.get(&join.conn) else {
            return; // closed while waiting
        };
        self.finish_waiting(join.conn);
        let Some(cursor) = self.rooms.get(room).and_then(|r| r.cursor.clone()) else {
            self.impossible("completing a join without a cursor");
            return;
        };
        let recovered = join.since.as_ref().map(|since| {
            let from = Position {
                epoch: since.epoch.as_str().into(),
                seq: since.seq,
            };
            read.is_some_and(|r| r.epoch == cursor.epoch && r.top == cursor.seq && r.covers(&from))
        });
        let Some(connection) = self.conns[slot as usize].as_mut() else {
            unreachable_slot()
        };
        connection.rooms.insert(room.clone());
        let user = connection.identity.user().map(|u| u.id.clone());
        let Some(state) = self.rooms.get_mut(room) else {
            unreachable_slot()
        };
        state.members.insert(join.conn, slot);
        let entry = PresenceEntry {
            conn: join.conn,
            user: user.clone(),
        };
        self.engine_out.push_back(EngineRequest::PresenceAdd {
            room: room.clone(),
            entry,
        });
        self.keep_presence_alive();
        self.notify_presence(room, join.conn, user.as_deref(), Change::Joined);
        let reply = joined_reply(now, room, &cursor, recovered, join.id.as_ref());
        self.send(slot, reply);
        if let (Some(true), Some(since), Some(read)) = (recovered, &join.since, read) {
            for (_, frame) in read.frames_after(since.seq) {
                if !self.slot_of.contains_key(&join.conn) {
                    break; // closed as a slow consumer mid-replay
                }
                self.send(slot, frame.clone());
            }
        }
    }

    /// Answers a join that cannot be served (the room's first read failed).
    pub(crate) fn refuse_join(&mut self, now: Now, join: PendingJoin, why: &str) {
        let Some(&slot) = self.slot_of.get(&join.conn) else {
            return;
        };
        self.finish_waiting(join.conn);
        let message = format!("join failed: {why}; try again");
        let frame = envelope::error(
            now.unix_ms,
            ErrorCode::EngineUnavailable,
            &message,
            join.id.as_ref(),
        );
        self.send(slot, frame);
    }

    pub(crate) fn remove_member(
        &mut self,
        room: &RoomName,
        conn: ConnectionId,
        user: Option<&str>,
    ) {
        if let Some(state) = self.rooms.get_mut(room) {
            state.members.remove(&conn);
        }
        // At shutdown one `PresenceClear` (sent first) removes them all.
        if !self.shutting_down {
            self.engine_out.push_back(EngineRequest::PresenceRemove {
                room: room.clone(),
                conn,
            });
        }
        self.notify_presence(room, conn, user, Change::Left);
        self.forget_if_idle(room);
    }

    /// Starts the periodic presence refresh when it is not running: the
    /// engine keeps this node's entries only while it hears from it.
    fn keep_presence_alive(&mut self) {
        if self.presence_refresh_at_us.is_none() {
            let every_ms = (self.config.limits.presence_ttl_ms / 3).max(1);
            let at = self.now.monotonic_us.saturating_add(every_ms * 1000);
            self.presence_refresh_at_us = Some(at);
        }
    }

    /// The room, created (and the engine told `interest on`) when absent.
    pub(crate) fn ensure_room(&mut self, room: &RoomName) -> &mut Room {
        if !self.rooms.contains_key(room) {
            self.rooms.insert(room.clone(), Room::default());
            self.engine_out.push_back(EngineRequest::Interest {
                room: room.clone(),
                on: true,
            });
        }
        self.rooms.get_mut(room).expect("inserted above")
    }

    /// Forgets a room with no local business left (and tells the engine).
    pub(crate) fn forget_if_idle(&mut self, room: &RoomName) {
        let Some(state) = self.rooms.get(room) else {
            return;
        };
        let idle = state.members.is_empty()
            && state.joins.is_empty()
            && state.next_joins.is_empty()
            && state.reading.is_none();
        if !idle {
            return;
        }
        if let Some(at) = state.check_at_us {
            self.room_timers.remove(&(at, room.clone()));
        }
        self.rooms.remove(room);
        self.engine_out.push_back(EngineRequest::Interest {
            room: room.clone(),
            on: false,
        });
        if self.rooms.is_empty() {
            // No member left anywhere: nothing to keep alive.
            self.presence_refresh_at_us = None;
        }
    }
}

/// Whether a read after `after` also carries what a join from `since` needs.
fn reaches(after: Option<&Position>, since: Option<&Since>) -> bool {
    match (after, since) {
        (_, None) => true,
        (Some(after), Some(since)) => *after.epoch == *since.epoch && after.seq <= since.seq,
        (None, Some(_)) => false,
    }
}

/// The `system_info` reply to a join: the room's position, and with
/// `since` whether the missed messages follow.
fn joined_reply(
    now: Now,
    room: &RoomName,
    cursor: &Position,
    recovered: Option<bool>,
    id: Option<&RequestId>,
) -> crate::output::TextFrame {
    #[derive(Serialize)]
    struct Joined<'a> {
        message: String,
        room: &'a str,
        seq: u64,
        epoch: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    }
    let data = Joined {
        message: format!("Joined room: {room}"),
        room: room.as_str(),
        seq: cursor.seq,
        epoch: &cursor.epoch,
        recovered,
    };
    envelope::envelope("system_info", now.unix_ms, None, &data, id)
}
