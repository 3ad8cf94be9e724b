//! Rooms on this node: joining (at once, or after the room's read),
//! leaving, and the room's local lifetime (presence diffs:
//! [`presence_diffs`](crate::presence_diffs)).
//!
//! A room exists here while it has members, joins waiting for its read, or
//! a read in flight; the engine is told `interest on` when it appears and
//! `interest off` when it goes. History outlives local members in the
//! engine, not here.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Serialize;

use crate::codes::ErrorCode;
use crate::engine::{CallId, EngineRequest, Numbered, Position, PresenceEntry, ReadResult};
use crate::envelope;
#[cfg(any(test, feature = "testing"))]
use crate::invariants::Broken;
use crate::machine::{impossible, Core};
use crate::names::{ConnectionId, RoomName};
use crate::parse::{RequestId, Since};
use crate::presence_diffs::Change;
use crate::time::Now;

/// One room this node has local business in: members, joins waiting for
/// a read, or a read in flight.
#[derive(Debug, Default)]
pub(crate) struct Room {
    /// Members, in id order, with their slot in `Connections` so fan-out
    /// touches no map but the slab.
    pub(crate) members: BTreeMap<ConnectionId, u32>,
    /// What the members have been given: `(epoch, last seq)`. `None` until
    /// the room's first read answers.
    pub(crate) cursor: Option<Position>,
    /// The room-level read in flight, and the position it reads after.
    pub(crate) reading: Option<(CallId, Option<Position>)>,
    /// Live messages that arrived while the read was in flight (bounded).
    pub(crate) buffered_live: Vec<Numbered>,
    /// Set when a live message had to be dropped or could not be placed
    /// during the read: read again once it answers.
    pub(crate) read_again: bool,
    /// Joins the read in flight answers (they keep the room alive while
    /// they are answered one by one).
    pub(crate) joins: VecDeque<PendingJoin>,
    /// Joins that need the next read (they reach further back).
    pub(crate) next_joins: VecDeque<PendingJoin>,
    /// Key in `Rooms::checks`: the next stream check (or read retry).
    pub(crate) check_at_us: Option<u64>,
    /// Diffs from the engine: the members may have missed presence changes
    /// (a stream reset) and are told to ask again once the room is listed.
    pub(crate) presence_stale: bool,
    /// That list is in flight.
    pub(crate) presence_resyncing: bool,
    /// A presence change of the room was told while that list was in
    /// flight: the list's count may be older than the change's (answers
    /// are not ordered with changes), so it is listed again.
    pub(crate) presence_overtaken: bool,
    /// Diffs from the engine: members whose own add the engine has not
    /// echoed yet. They are told no change until it is: a change applied
    /// before their add is no news to them (a `presence` list they make
    /// already shows it), and a member told one would keep its count
    /// without itself (nobody hears a change about itself).
    pub(crate) unechoed: BTreeSet<ConnectionId>,
}

/// A join waiting for its room's read.
#[derive(Debug)]
pub(crate) struct PendingJoin {
    pub(crate) conn: ConnectionId,
    pub(crate) since: Option<Since>,
    pub(crate) id: Option<RequestId>,
}

/// The rooms part of [`Core`]: the rooms this node has local business in
/// and one stream-check timer per room that has one. It keeps each room's
/// `check_at_us` and the timer set in step; when a room exists is
/// [`Core::ensure_room`] and [`Core::forget_if_idle`]'s.
#[derive(Debug, Default)]
pub(crate) struct Rooms {
    rooms: BTreeMap<RoomName, Room>,
    /// Rooms with a stream check due: when (one entry per room whose
    /// `check_at_us` is set).
    checks: BTreeSet<(u64, RoomName)>,
}

impl Rooms {
    pub(crate) fn len(&self) -> usize {
        self.rooms.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    pub(crate) fn get(&self, room: &RoomName) -> Option<&Room> {
        self.rooms.get(room)
    }

    pub(crate) fn get_mut(&mut self, room: &RoomName) -> Option<&mut Room> {
        self.rooms.get_mut(room)
    }

    /// Every room, in name order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&RoomName, &Room)> {
        self.rooms.iter()
    }

    /// Whether any room has a member here.
    pub(crate) fn any_members(&self) -> bool {
        self.rooms.values().any(|r| !r.members.is_empty())
    }

    /// The room, and whether it was created now.
    pub(crate) fn entry(&mut self, room: &RoomName) -> (&mut Room, bool) {
        let created = !self.rooms.contains_key(room);
        if created {
            self.rooms.insert(room.clone(), Room::default());
        }
        match self.rooms.get_mut(room) {
            Some(state) => (state, created),
            None => unreachable!("inserted above"),
        }
    }

    /// Forgets a room and its stream check.
    pub(crate) fn remove(&mut self, room: &RoomName) {
        let Some(state) = self.rooms.remove(room) else {
            return;
        };
        if let Some(at) = state.check_at_us {
            self.checks.remove(&(at, room.clone()));
        }
    }

    /// The room, its stream check taken down unless a read is in flight
    /// (then it has none). One lookup: on the path of every join of a
    /// room nobody else is in.
    pub(crate) fn get_unchecked_mut(&mut self, room: &RoomName) -> Option<&mut Room> {
        let state = self.rooms.get_mut(room)?;
        if state.reading.is_none() {
            if let Some(at) = state.check_at_us.take() {
                self.checks.remove(&(at, room.clone()));
            }
        }
        Some(state)
    }

    /// (Re)sets the room's stream check to `at`.
    pub(crate) fn set_check(&mut self, room: &RoomName, at: u64) {
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        if let Some(old) = state.check_at_us.replace(at) {
            self.checks.remove(&(old, room.clone()));
        }
        self.checks.insert((at, room.clone()));
    }

    /// The earliest stream check.
    pub(crate) fn next_check(&self) -> Option<u64> {
        self.checks.first().map(|(at, _)| *at)
    }

    /// Takes the earliest stream check due by `now_us` off the timers (the
    /// room's `check_at_us` is cleared by [`Core::check_stream`]).
    pub(crate) fn pop_due_check(&mut self, now_us: u64) -> Option<RoomName> {
        let (at, room) = self.checks.first()?.clone();
        if at > now_us {
            return None;
        }
        self.checks.remove(&(at, room.clone()));
        Some(room)
    }

    /// The part's invariants: a timer exactly for each room with a check.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn check(&self) -> Result<(), Broken> {
        for (name, room) in &self.rooms {
            let timer = room.check_at_us.map(|at| (at, name.clone()));
            let scheduled = timer.as_ref().is_some_and(|t| self.checks.contains(t));
            if room.check_at_us.is_some() != scheduled {
                return Err(format!("{name:?}: its stream check is not scheduled").into());
            }
        }
        let with_check = self
            .rooms
            .values()
            .filter(|r| r.check_at_us.is_some())
            .count();
        if self.checks.len() != with_check {
            return Err(format!(
                "{} room timers for the rooms with a stream check",
                self.checks.len()
            )
            .into());
        }
        Ok(())
    }
}

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
        let Some(connection) = self.conns.at_mut(slot) else {
            self.impossible("a join handled for an empty slot");
            return;
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
        let Some(slot) = self.conns.slot(join.conn) else {
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
        // Joins are answered from their room's read: it exists.
        let Some(state) = self.rooms.get_mut(room) else {
            impossible(&mut self.broken, "a join answered for a room that is gone");
            return;
        };
        let Some(connection) = self.conns.at_mut(slot) else {
            impossible(&mut self.broken, "a join answered for an empty slot");
            return;
        };
        connection.rooms.insert(room.clone());
        let user = connection.identity.user().map(|u| u.id.clone());
        state.members.insert(join.conn, slot);
        let entry = PresenceEntry {
            conn: join.conn,
            user: user.clone(),
        };
        self.engine.push(EngineRequest::PresenceAdd {
            room: room.clone(),
            entry,
        });
        self.keep_presence_alive();
        self.notify_presence(room, join.conn, user.as_deref(), Change::Joined);
        let reply = joined_reply(now, room, &cursor, recovered, join.id.as_ref());
        self.send(slot, reply);
        if let (Some(true), Some(since), Some(read)) = (recovered, &join.since, read) {
            for (_, frame) in read.frames_after(since.seq) {
                if !self.conns.is_open(join.conn) {
                    break; // closed as a slow consumer mid-replay
                }
                self.send(slot, frame.clone());
            }
        }
    }

    /// Answers a join that cannot be served (the room's first read failed).
    pub(crate) fn refuse_join(&mut self, now: Now, join: PendingJoin, why: &str) {
        let Some(slot) = self.conns.slot(join.conn) else {
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
            self.engine.push(EngineRequest::PresenceRemove {
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
        if self.presence.refresh_at().is_none() {
            let every_ms = (self.config.limits.presence_ttl_ms / 3).max(1);
            let at = self.now.monotonic_us.saturating_add(every_ms * 1000);
            self.presence.set_refresh_at(Some(at));
        }
    }

    /// The room, created (and the engine told `interest on`) when absent.
    pub(crate) fn ensure_room(&mut self, room: &RoomName) -> &mut Room {
        let (state, created) = self.rooms.entry(room);
        if created {
            self.engine.push(EngineRequest::Interest {
                room: room.clone(),
                on: true,
            });
        }
        state
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
        self.rooms.remove(room);
        self.engine.push(EngineRequest::Interest {
            room: room.clone(),
            on: false,
        });
        if self.rooms.is_empty() {
            // No member left anywhere: nothing to keep alive.
            self.presence.set_refresh_at(None);
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
