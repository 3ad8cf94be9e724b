//! Connections: opening, closing, and queueing frames with the
//! slow-consumer bound.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::access::Identity;
use crate::codes::CloseCode;
use crate::conflation::HeldFrames;
use crate::envelope;
use crate::limits::Limits;
use crate::machine::{Connection, Core};
use crate::names::ConnectionId;
use crate::outbound::Outbox;
use crate::output::{Output, TextFrame};
use crate::rate::RateLimiter;
use crate::time::Now;

impl Core {
    pub(crate) fn conn_mut(&mut self, conn: ConnectionId) -> Option<&mut Connection> {
        let slot = *self.slot_of.get(&conn)?;
        self.conns[slot as usize].as_mut()
    }

    pub(crate) fn conn(&self, conn: ConnectionId) -> Option<&Connection> {
        let slot = *self.slot_of.get(&conn)?;
        self.conns[slot as usize].as_ref()
    }

    pub(crate) fn open(&mut self, now: Now, conn: ConnectionId, identity: Identity) {
        if self.slot_of.contains_key(&conn) {
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
            held: HeldFrames::default(),
            waiting: None,
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.conns[slot as usize] = Some(connection);
                slot
            }
            None => {
                self.conns.push(Some(connection));
                (self.conns.len() - 1) as u32
            }
        };
        self.slot_of.insert(conn, slot);
        let user = self.conns[slot as usize]
            .as_ref()
            .and_then(|c| c.identity.user())
            .map(|u| u.id.clone());
        if let Some(user) = &user {
            self.users.entry(user.clone()).or_default().insert(conn);
        }
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

    /// Forgets a connection; with `code`, tells the caller to close it.
    /// Joins it left waiting are skipped when their read answers.
    pub(crate) fn close(&mut self, conn: ConnectionId, code: Option<CloseCode>) {
        let Some(slot) = self.slot_of.remove(&conn) else {
            return;
        };
        let Some(connection) = self.conns[slot as usize].take() else {
            self.impossible("indexed slot is empty");
            return;
        };
        self.free_slots.push(slot);
        // Its backlog leaves the node's (written or not, it is not ours to write).
        self.outputs.forget(connection.queued_bytes);
        self.timers.remove(&(connection.timer_at_us, conn));
        // Its check's answer, when it comes, finds no connection.
        self.checks.remove(&conn);
        let user = connection.identity.user().map(|u| u.id.as_str());
        for room in &connection.rooms {
            self.remove_member(room, conn, user);
        }
        if let Some(user) = connection.identity.user() {
            if let Some(set) = self.users.get_mut(&user.id) {
                set.remove(&conn);
                if set.is_empty() {
                    self.users.remove(&user.id);
                }
            }
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
    pub(crate) fn send_held(
        outputs: &mut Outbox,
        limits: &Limits,
        connection: &mut Connection,
        room: Option<&crate::names::RoomName>,
    ) -> bool {
        if connection.held.is_empty() {
            return true;
        }
        let held = connection.held.take(room);
        held.iter()
            .all(|frame| Self::try_send(outputs, limits, connection, frame))
    }

    /// Sends one reply, closing the connection as a slow consumer if it cannot take it.
    pub(crate) fn send(&mut self, slot: u32, frame: TextFrame) {
        let Some(connection) = self.conns[slot as usize].as_mut() else {
            self.impossible("send to an empty slot");
            return;
        };
        if !Self::try_send(&mut self.outputs, &self.config.limits, connection, &frame) {
            let id = connection.id;
            self.close(id, Some(CloseCode::SlowConsumer));
        }
    }

    /// Marks the connection as waiting for the engine: its next messages
    /// are deferred until [`finish_waiting`](Self::finish_waiting).
    pub(crate) fn start_waiting(&mut self, conn: ConnectionId) {
        if let Some(connection) = self.conn_mut(conn) {
            debug_assert!(connection.waiting.is_none(), "one engine wait at a time");
            connection.waiting = Some(Box::default());
        }
    }

    /// Ends the connection's engine wait; its deferred messages run once
    /// the current input is done.
    pub(crate) fn finish_waiting(&mut self, conn: ConnectionId) {
        if self.conn(conn).is_some_and(|c| c.waiting.is_some()) {
            self.resumable.push(conn);
        }
    }

    /// Runs deferred messages in order until one waits for the engine again.
    pub(crate) fn resume(&mut self, conn: ConnectionId) {
        loop {
            let now = self.now;
            let Some(connection) = self.conn_mut(conn) else {
                return;
            };
            let Some(waiting) = connection.waiting.as_mut() else {
                return;
            };
            let Some(next) = waiting.pop_front() else {
                connection.waiting = None;
                return;
            };
            // Run it as if it just arrived: the wait is lifted for this one
            // message and put back if it waits for the engine again.
            let rest = connection.waiting.take();
            match next.busy {
                Some(id) => self.answer_busy(now, conn, id.as_ref()),
                None => self.run_message(now, conn, next.text.as_deref(), next.verdict),
            }
            let Some(connection) = self.conn_mut(conn) else {
                return;
            };
            match (connection.waiting.as_mut(), rest) {
                // Waiting again: the rest stays deferred behind it.
                (Some(now_waiting), Some(rest)) => {
                    now_waiting.extend(*rest);
                    return;
                }
                (Some(_), None) => return,
                (None, rest) => connection.waiting = rest,
            }
        }
    }
}

/// The monotonic deadline of a token expiring at `exp_unix_ms`.
pub(crate) fn deadline_us(now: Now, exp_unix_ms: i64) -> u64 {
    let remaining_ms = exp_unix_ms.saturating_sub(now.unix_ms).max(0) as u64;
    now.monotonic_us
        .saturating_add(remaining_ms.saturating_mul(1000))
}
