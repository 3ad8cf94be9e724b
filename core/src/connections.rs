//! Connections: the part of [`Core`] that owns them (`Connections`),
//! and opening, closing (the close queue), queueing frames with the
//! slow-consumer bound. A connection's reply order is `reply_order`'s.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::access::Identity;
use crate::codes::CloseCode;
use crate::conflation::ConflatedFrames;
use crate::engine::EngineRequest;
use crate::envelope;
#[cfg(any(test, feature = "testing"))]
use crate::invariants::Broken;
use crate::limits::Limits;
use crate::machine::Core;
use crate::names::{ConnectionId, ConnectionMap, RoomName};
use crate::outbound::Outbox;
use crate::output::{Output, TextFrame};
use crate::rate::RateLimiter;
use crate::reply_order::ReplyQueue;
use crate::time::Now;

/// One open connection.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) id: ConnectionId,
    pub(crate) identity: Identity,
    pub(crate) rooms: BTreeSet<RoomName>,
    /// Bytes of `Send` frames emitted but not yet reported written.
    pub(crate) queued_bytes: usize,
    /// The shell reported its socket full (`Input::Blocked`) and not all
    /// of its backlog has been written since: behind, for conflation.
    pub(crate) pushed_back: bool,
    pub(crate) limiter: RateLimiter,
    /// Last time anything (frame or pong) arrived.
    pub(crate) last_heard_us: u64,
    /// Last time we pinged (0 = never).
    pub(crate) last_ping_us: u64,
    /// When the token expires, on the monotonic clock.
    pub(crate) token_deadline_us: Option<u64>,
    /// Whether the client was already warned that this token is about to expire.
    pub(crate) token_warned: bool,
    /// The key of this connection's entry in `Connections::timers`.
    pub(crate) timer_at_us: u64,
    /// Progress events held back while this member is behind (conflation).
    pub(crate) conflated: ConflatedFrames,
    /// Set while one of its requests waits (for the engine or a check):
    /// later messages queue here, so replies keep the order of requests
    /// (`reply_order`). Boxed on purpose: every connection carries this
    /// field and almost all are idle, so it costs 8 bytes instead of an
    /// empty queue's 40.
    pub(crate) waiting: Option<Box<ReplyQueue>>,
}

/// The connections part of [`Core`]: the slab of open connections, its
/// indexes (id → slot, user → connections), one timer per connection, the
/// connections whose engine wait ended, and the close queue. It keeps the
/// slab and its indexes in step; what a close means for rooms and presence
/// is [`Core::close`]'s.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    /// The slab: fan-out reaches a member's state by index.
    slab: Vec<Option<Connection>>,
    free_slots: Vec<u32>,
    /// Id → slab slot. Only ever looked up, never iterated, so its order
    /// cannot leak into outputs.
    slot_of: ConnectionMap<u32>,
    /// User id → its open connections (for `/api/send` to a user and presence).
    users: BTreeMap<String, BTreeSet<ConnectionId>>,
    /// One entry per connection: when to look at it next (heartbeat,
    /// token, conflation flush).
    timers: BTreeSet<(u64, ConnectionId)>,
    /// Connections whose engine wait ended: their deferred messages run
    /// once the current input is done (reply order, [`Core::resume`]).
    resumable: Vec<ConnectionId>,
    /// The close queue: every close the core decides is pushed here and
    /// run by [`Core::run_closes`], the one place that forgets a
    /// connection. A stack: closes decided while a room's members are
    /// iterated wait here until the iteration is over.
    closing: Vec<(ConnectionId, Option<CloseCode>)>,
}

impl Connections {
    /// Open connections.
    pub(crate) fn len(&self) -> usize {
        self.slot_of.len()
    }

    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn is_empty(&self) -> bool {
        self.slot_of.is_empty()
    }

    pub(crate) fn is_open(&self, conn: ConnectionId) -> bool {
        self.slot_of.contains_key(&conn)
    }

    /// The slot of an open connection.
    #[inline]
    pub(crate) fn slot(&self, conn: ConnectionId) -> Option<u32> {
        self.slot_of.get(&conn).copied()
    }

    /// The connection in `slot` (`None` when the slot is free).
    // `inline`: on the fan-out path for every recipient.
    #[inline]
    pub(crate) fn at(&self, slot: u32) -> Option<&Connection> {
        self.slab.get(slot as usize)?.as_ref()
    }

    #[inline]
    pub(crate) fn at_mut(&mut self, slot: u32) -> Option<&mut Connection> {
        self.slab.get_mut(slot as usize)?.as_mut()
    }

    pub(crate) fn get(&self, conn: ConnectionId) -> Option<&Connection> {
        self.at(self.slot(conn)?)
    }

    pub(crate) fn get_mut(&mut self, conn: ConnectionId) -> Option<&mut Connection> {
        self.at_mut(self.slot(conn)?)
    }

    /// Every open connection, in slab order (which depends on slot reuse:
    /// sort before anything the order could leak into).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Connection> {
        self.slab.iter().flatten()
    }

    /// This node's connections of `user`, in id order.
    pub(crate) fn of_user(&self, user: &str) -> Vec<ConnectionId> {
        self.users
            .get(user)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Adds a connection whose id is not open; returns its slot. Its
    /// timer is set by the caller ([`Core::schedule`]).
    pub(crate) fn insert(&mut self, connection: Connection) -> u32 {
        let conn = connection.id;
        let user = connection.identity.user().map(|u| u.id.clone());
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.slab[slot as usize] = Some(connection);
                slot
            }
            None => {
                self.slab.push(Some(connection));
                (self.slab.len() - 1) as u32
            }
        };
        self.slot_of.insert(conn, slot);
        if let Some(user) = user {
            self.users.entry(user).or_default().insert(conn);
        }
        slot
    }

    /// Takes an open connection out of the slab, its indexes and its
    /// timer. `Err` when the index points at an empty slot (impossible).
    pub(crate) fn remove(&mut self, conn: ConnectionId) -> Result<Option<Connection>, ()> {
        let Some(slot) = self.slot_of.remove(&conn) else {
            return Ok(None);
        };
        let Some(connection) = self.slab[slot as usize].take() else {
            return Err(());
        };
        self.free_slots.push(slot);
        self.timers.remove(&(connection.timer_at_us, conn));
        if let Some(user) = connection.identity.user() {
            if let Some(set) = self.users.get_mut(&user.id) {
                set.remove(&conn);
                if set.is_empty() {
                    self.users.remove(&user.id);
                }
            }
        }
        Ok(Some(connection))
    }

    /// Moves the timer of the connection in `slot` to `at`.
    pub(crate) fn set_timer(&mut self, slot: u32, at: u64) {
        let Some(connection) = self.slab.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        self.timers.remove(&(connection.timer_at_us, connection.id));
        self.timers.insert((at, connection.id));
        connection.timer_at_us = at;
    }

    /// The earliest connection timer.
    pub(crate) fn next_timer(&self) -> Option<u64> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Takes the earliest timer due by `now_us` (its connection then has
    /// none until [`Core::schedule`] sets it again).
    pub(crate) fn pop_due_timer(&mut self, now_us: u64) -> Option<ConnectionId> {
        let &(at, conn) = self.timers.first()?;
        if at > now_us {
            return None;
        }
        self.timers.remove(&(at, conn));
        Some(conn)
    }

    /// `conn`'s engine wait ended: its deferred messages run once the
    /// current input is done.
    pub(crate) fn push_resumable(&mut self, conn: ConnectionId) {
        self.resumable.push(conn);
    }

    pub(crate) fn pop_resumable(&mut self) -> Option<ConnectionId> {
        self.resumable.pop()
    }

    /// Queues a close decided while iterating (a room's members): it runs
    /// at the next [`Core::run_closes`].
    pub(crate) fn close_later(&mut self, conn: ConnectionId, code: Option<CloseCode>) {
        self.closing.push((conn, code));
    }

    /// Closes queued and not yet run.
    pub(crate) fn closes_queued(&self) -> usize {
        self.closing.len()
    }

    fn pop_close(&mut self) -> Option<(ConnectionId, Option<CloseCode>)> {
        self.closing.pop()
    }

    /// The part's invariants: slab, indexes and timers in step.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn check(&self) -> Result<(), Broken> {
        let mut live = 0usize;
        for (slot, connection) in self.slab.iter().enumerate() {
            let Some(connection) = connection else {
                continue;
            };
            live += 1;
            let id = connection.id;
            if self.slot_of.get(&id) != Some(&(slot as u32)) {
                return Err(format!("{id:?} in slot {slot} is not indexed there").into());
            }
            if !self.timers.contains(&(connection.timer_at_us, id)) {
                return Err(format!("{id:?} has no timer").into());
            }
            if let Some(user) = connection.identity.user() {
                if !self
                    .users
                    .get(&user.id)
                    .is_some_and(|set| set.contains(&id))
                {
                    return Err(format!("{id:?} is missing from user {:?}", user.id).into());
                }
            }
        }
        if live != self.slot_of.len() {
            return Err(
                format!("{live} live connections but {} indexed", self.slot_of.len()).into(),
            );
        }
        if live + self.free_slots.len() != self.slab.len() {
            return Err("slab slots leaked".into());
        }
        if self.timers.len() != live {
            return Err(format!("{} timers for {live} connections", self.timers.len()).into());
        }
        for (user, conns) in &self.users {
            if conns.is_empty() {
                return Err(format!("user {user:?} kept with no connections").into());
            }
            for id in conns {
                let owner = self.get(*id).and_then(|c| c.identity.user()).map(|u| &u.id);
                if owner != Some(user) {
                    return Err(format!("user {user:?} lists {id:?}, which is not theirs").into());
                }
            }
        }
        Ok(())
    }
}

impl Core {
    pub(crate) fn open(&mut self, now: Now, conn: ConnectionId, identity: Identity) {
        if self.conns.is_open(conn) {
            // A caller bug (ids must be new); refuse rather than corrupt state.
            self.impossible("Open for a connection id already open");
            return;
        }
        let expires_unix_ms = identity.user().and_then(|u| u.expires_unix_ms);
        let token_deadline_us = expires_unix_ms.map(|exp| deadline_us(now, exp));
        let connection = Connection {
            id: conn,
            identity,
            rooms: BTreeSet::new(),
            queued_bytes: 0,
            pushed_back: false,
            limiter: RateLimiter::new(&self.config.limits, now.monotonic_us),
            last_heard_us: now.monotonic_us,
            last_ping_us: 0,
            token_deadline_us,
            token_warned: false,
            timer_at_us: 0,
            conflated: ConflatedFrames::default(),
            waiting: None,
        };
        let user = connection.identity.user().map(|u| u.id.clone());
        let slot = self.conns.insert(connection);
        self.schedule(slot);

        if self.shutting_down {
            self.close(conn, Some(CloseCode::GoingAway));
            return;
        }
        if token_deadline_us.is_some_and(|deadline| deadline <= now.monotonic_us) {
            self.close(conn, Some(CloseCode::TokenExpired));
            return;
        }
        #[derive(Serialize)]
        struct Connected<'a> {
            connection_id: String,
            message: String,
            authenticated: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            user_id: Option<&'a str>,
        }
        let data = Connected {
            connection_id: conn.to_string(),
            message: format!("Connected to {} WebSocket", self.config.server_name),
            authenticated: user.is_some(),
            user_id: user.as_deref(),
        };
        let frame = envelope::envelope("connected", now.unix_ms, None, &data, None);
        self.send(slot, frame);
    }

    /// Something (a pong) arrived from `conn`.
    pub(crate) fn heard(&mut self, now: Now, conn: ConnectionId) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.last_heard_us = now.monotonic_us;
        }
    }

    /// The shell wrote `bytes` of `conn`'s backlog.
    pub(crate) fn written(&mut self, conn: ConnectionId, bytes: usize) {
        if let Some(c) = self.conns.get_mut(conn) {
            let written = bytes.min(c.queued_bytes);
            c.queued_bytes -= written;
            // Everything it was given is written: it caught up.
            if c.queued_bytes == 0 {
                c.pushed_back = false;
            }
            self.outputs.forget(written);
        }
    }

    /// `conn`'s socket pushed back: it is behind (conflation).
    pub(crate) fn blocked(&mut self, conn: ConnectionId) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.pushed_back = true;
        }
    }

    /// `Input::Shutdown`: every connection is closed with 1001 (and any
    /// opened later at once).
    pub(crate) fn shut_down(&mut self) {
        // No presence diffs from here on: everyone is leaving.
        let first = !self.shutting_down;
        self.shutting_down = true;
        self.close_presence_windows();
        // One request removes every entry of this node, each room's
        // in one step, instead of one remove per membership (which
        // other nodes would hear as one diff each).
        if first && self.rooms.any_members() {
            self.engine.push(EngineRequest::PresenceClear);
        }
        let mut all: Vec<ConnectionId> = self.conns.iter().map(|c| c.id).collect();
        // Slab order depends on slot reuse; close in id order.
        all.sort();
        for conn in all {
            self.close(conn, Some(CloseCode::GoingAway));
        }
    }

    /// Closes `conn` now (a caller that is not iterating a room's members;
    /// one that is queues with [`Connections::close_later`] and calls
    /// [`run_closes`](Self::run_closes) once done, or uses
    /// [`close_each`](Self::close_each)). With `code`, the caller is told to
    /// close the socket; without, it is already gone.
    pub(crate) fn close(&mut self, conn: ConnectionId, code: Option<CloseCode>) {
        let mark = self.conns.closes_queued();
        self.conns.close_later(conn, code);
        self.run_closes(mark);
    }

    /// Closes `conns` with `code`, in this order (collected while a room's
    /// members were iterated).
    pub(crate) fn close_each(&mut self, conns: Vec<ConnectionId>, code: CloseCode) {
        let mark = self.conns.closes_queued();
        // The queue is a stack: pushed last, closed first.
        for conn in conns.into_iter().rev() {
            self.conns.close_later(conn, Some(code));
        }
        self.run_closes(mark);
    }

    /// Runs the close queue down to `mark` entries, latest first: the one
    /// place a connection is forgotten. Closes queued below `mark` (by
    /// presence diffs of this input) stay queued for `Core::handle`.
    pub(crate) fn run_closes(&mut self, mark: usize) {
        while self.conns.closes_queued() > mark {
            let Some((conn, code)) = self.conns.pop_close() else {
                return;
            };
            self.tear_down(conn, code);
        }
    }

    /// Forgets a connection; with `code`, tells the caller to close it.
    /// Joins it left waiting are skipped when their read answers.
    fn tear_down(&mut self, conn: ConnectionId, code: Option<CloseCode>) {
        let connection = match self.conns.remove(conn) {
            Ok(Some(connection)) => connection,
            Ok(None) => return,
            Err(()) => {
                self.impossible("indexed slot is empty");
                return;
            }
        };
        // Its backlog leaves the node's (written or not, it is not ours to write).
        self.outputs.forget(connection.queued_bytes);
        // Its check's answer, when it comes, finds no connection.
        self.checks.remove(&conn);
        let user = connection.identity.user().map(|u| u.id.as_str());
        for room in &connection.rooms {
            self.remove_member(room, conn, user);
        }
        if let Some(code) = code {
            self.outputs.push_back(Output::Close { conn, code });
        }
    }

    /// Queues `frame` for `connection`, or reports that its backlog would
    /// overflow (the caller must then close it with 4008).
    // `#[inline]`: on the fan-out path for every recipient, from another
    // module (codegen unit) than this one.
    #[must_use]
    #[inline]
    pub(crate) fn try_send(
        outputs: &mut Outbox,
        limits: &Limits,
        connection: &mut Connection,
        frame: &TextFrame,
    ) -> bool {
        debug_assert!(!frame.is_empty(), "the core never sends an empty frame");
        let queued = connection.queued_bytes + frame.len();
        if queued > limits.outbound_queue_bytes_max {
            return false;
        }
        connection.queued_bytes = queued;
        outputs.queued_total += frame.len();
        outputs.push_back(Output::Send {
            conn: connection.id,
            frame: frame.clone(),
        });
        true
    }

    /// Sends the member's held progress events for `room` (all rooms when
    /// `None`) in `seq` order; `false` at the first one that overflows, after
    /// which nothing more may be sent (the caller closes with 4008).
    /// `inline(always)`: called for every recipient of a broadcast, almost
    /// always with nothing held; as a call it cost 20 instructions per
    /// recipient (callgrind, `examples/hot_paths.rs broadcast`).
    #[inline(always)]
    pub(crate) fn send_conflated(
        outputs: &mut Outbox,
        limits: &Limits,
        connection: &mut Connection,
        room: Option<&crate::names::RoomName>,
    ) -> bool {
        if connection.conflated.is_empty() {
            return true;
        }
        let held = connection.conflated.take(room);
        held.iter()
            .all(|frame| Self::try_send(outputs, limits, connection, frame))
    }

    /// Sends one reply, closing the connection as a slow consumer if it cannot take it.
    pub(crate) fn send(&mut self, slot: u32, frame: TextFrame) {
        let Some(connection) = self.conns.at_mut(slot) else {
            self.impossible("send to an empty slot");
            return;
        };
        if !Self::try_send(&mut self.outputs, &self.config.limits, connection, &frame) {
            let id = connection.id;
            self.close(id, Some(CloseCode::SlowConsumer));
        }
    }
}

/// The monotonic deadline of a token expiring at `exp_unix_ms`.
pub(crate) fn deadline_us(now: Now, exp_unix_ms: i64) -> u64 {
    let remaining_ms = exp_unix_ms.saturating_sub(now.unix_ms).max(0) as u64;
    now.monotonic_us
        .saturating_add(remaining_ms.saturating_mul(1000))
}
