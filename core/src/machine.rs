//! [`Core`]: the roomcast state machine. See the crate docs for the contract.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::access::{AccessRules, Identity, User};
use crate::codes::{CloseCode, ErrorCode};
use crate::conflation::{series_of, HeldFrames};
use crate::envelope::{self, RoomStamp};
use crate::input::{Input, SendTarget};
use crate::limits::Limits;
use crate::names::{ConnectionId, ConnectionMap, RoomName};
use crate::output::{Output, TextFrame};
use crate::publish::{
    validate_message, DirectMessage, MessageTypes, Publish, PublishError, PublishReceipt, RoomSeq,
};
use crate::rate::{RateLimiter, Verdict};
use crate::request::{parse_request, Action, Rejection, RequestId, Since};
use crate::room_log::{HistoryBounds, Replay, RoomLog};
use crate::time::Now;

/// Everything the core is configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreConfig {
    /// The one limits table.
    pub limits: Limits,
    /// Who may join which room.
    pub access: AccessRules,
    /// Supported message types.
    pub types: MessageTypes,
    /// Prefix of every epoch this node creates. Must differ between server
    /// lifetimes (the shell draws it at random; the simulator from its seed).
    pub epoch_prefix: String,
    /// Shown in the `connected` message: "Connected to {server_name} WebSocket".
    pub server_name: String,
    /// Per-room behaviours chosen by name prefix (presence diffs, conflation).
    pub rooms: RoomOptions,
}

/// Room behaviours chosen by room-name prefix (the `[rooms]` config table).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomOptions {
    /// Rooms whose members are told when others join or leave (`presence_diff`).
    pub presence_diff_prefixes: Vec<String>,
    /// Rooms that conflate `download_progress` for members that are behind.
    pub conflate_prefixes: Vec<String>,
    /// How long held progress events wait at most, in ms.
    pub conflation_window_ms: u64,
}

impl Default for RoomOptions {
    fn default() -> RoomOptions {
        RoomOptions {
            presence_diff_prefixes: Vec::new(),
            conflate_prefixes: Vec::new(),
            conflation_window_ms: 100,
        }
    }
}

impl RoomOptions {
    /// Whether `room` conflates progress events.
    pub fn conflates(&self, room: &RoomName) -> bool {
        self.conflate_prefixes
            .iter()
            .any(|p| room.as_str().starts_with(p.as_str()))
    }

    /// Whether `room` pushes presence diffs.
    pub fn presence_diffs(&self, room: &RoomName) -> bool {
        self.presence_diff_prefixes
            .iter()
            .any(|p| room.as_str().starts_with(p.as_str()))
    }
}

impl Default for CoreConfig {
    fn default() -> CoreConfig {
        CoreConfig {
            limits: Limits::default(),
            access: AccessRules::default(),
            types: MessageTypes::default(),
            epoch_prefix: "e".to_owned(),
            server_name: "roomcast".to_owned(),
            rooms: RoomOptions::default(),
        }
    }
}

/// The answer to the caller's own inputs (clients get outputs instead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Nothing to report.
    Done,
    /// A broadcast was numbered and fanned out.
    Published(PublishReceipt),
    /// A direct message reached this many connections.
    Sent {
        /// Frames handed to connections.
        delivered: u64,
    },
    /// The publish or send was refused (nothing was numbered or sent).
    Rejected(PublishError),
}

/// Room for the envelope around a payload (type, timestamp, room, seq, id):
/// a payload bigger than the outbound bound minus this could never be
/// delivered, so it is refused up front.
const ENVELOPE_OVERHEAD_MAX: usize = 512;

/// One open connection.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) id: ConnectionId,
    pub(crate) identity: Identity,
    pub(crate) rooms: BTreeSet<RoomName>,
    /// Bytes of `Send` frames emitted but not yet reported written.
    pub(crate) queued_bytes: usize,
    limiter: RateLimiter,
    /// Last time anything (frame or pong) arrived.
    last_heard_us: u64,
    /// Last time we pinged (0 = never).
    last_ping_us: u64,
    /// When the token expires, on the monotonic clock.
    token_deadline_us: Option<u64>,
    /// Whether the client was already warned that this token is about to expire.
    token_warned: bool,
    /// The key of this connection's entry in `Core::timers`.
    pub(crate) timer_at_us: u64,
    /// Progress events held back while this member is behind (conflation).
    pub(crate) held: HeldFrames,
}

/// One room with at least one member (or a log worth keeping).
#[derive(Debug)]
pub(crate) struct Room {
    /// Members, in id order, with their slot in `Core::conns` so fan-out
    /// touches no map but the slab.
    pub(crate) members: BTreeMap<ConnectionId, u32>,
    pub(crate) log: RoomLog,
    /// Key in `Core::room_timers` while the room is kept without members.
    pub(crate) expiry_at_us: Option<u64>,
}

/// The state machine. Feed it with [`Core::handle`]; drain it with
/// [`Core::poll_output`] and [`Core::poll_timeout`].
#[derive(Debug)]
pub struct Core {
    pub(crate) config: CoreConfig,
    /// Connection slab: fan-out reaches a member's state by index.
    pub(crate) conns: Vec<Option<Connection>>,
    pub(crate) free_slots: Vec<u32>,
    /// Id → slab slot. Only ever looked up, never iterated, so its order
    /// cannot leak into outputs.
    pub(crate) slot_of: ConnectionMap<u32>,
    pub(crate) rooms: BTreeMap<RoomName, Room>,
    /// User id → its open connections (for `/api/send` to a user and presence).
    pub(crate) users: BTreeMap<String, BTreeSet<ConnectionId>>,
    /// One entry per connection: when to look at it next (heartbeat, token).
    pub(crate) timers: BTreeSet<(u64, ConnectionId)>,
    /// Rooms kept without members (for their history): when to look again.
    pub(crate) room_timers: BTreeSet<(u64, RoomName)>,
    outputs: VecDeque<Output>,
    epochs_created: u64,
    /// Set by `Input::Shutdown`: connections opened afterwards are closed with 1001 at once.
    shutting_down: bool,
    /// Connections to close as slow consumers once the current input is done.
    doomed: Vec<ConnectionId>,
    /// Latest `now` seen: time never goes backwards inside the core.
    now: Now,
}

impl Core {
    /// A core with no connections and no rooms.
    pub fn new(config: CoreConfig) -> Core {
        Core {
            config,
            conns: Vec::new(),
            free_slots: Vec::new(),
            slot_of: ConnectionMap::default(),
            rooms: BTreeMap::new(),
            users: BTreeMap::new(),
            timers: BTreeSet::new(),
            room_timers: BTreeSet::new(),
            outputs: VecDeque::new(),
            epochs_created: 0,
            shutting_down: false,
            doomed: Vec::new(),
            now: Now::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.slot_of.len()
    }

    /// Rooms currently held.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Members of `room` (0 when it does not exist).
    pub fn member_count(&self, room: &RoomName) -> usize {
        self.rooms.get(room).map_or(0, |r| r.members.len())
    }

    /// The next output, in the order decided.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When `handle(now, Input::Timeout)` is next needed (monotonic µs).
    pub fn poll_timeout(&self) -> Option<u64> {
        let connections = self.timers.first().map(|(at, _)| *at);
        let rooms = self.room_timers.first().map(|(at, _)| *at);
        connections.into_iter().chain(rooms).min()
    }

    /// The history bounds from the limits table.
    pub(crate) fn history_bounds(&self) -> HistoryBounds {
        HistoryBounds {
            messages_max: self.config.limits.history_messages_max,
            age_max_us: self.config.limits.history_age_ms.saturating_mul(1000),
        }
    }

    /// Applies one input at `now`.
    pub fn handle(&mut self, now: Now, input: Input<'_>) -> Response {
        let response = self.apply(now, input);
        // Members that overflowed while a notification was fanned out are
        // closed here, iteratively (closing one notifies the others).
        while let Some(conn) = self.doomed.pop() {
            self.close(conn, Some(CloseCode::SlowConsumer));
        }
        response
    }

    fn apply(&mut self, now: Now, input: Input<'_>) -> Response {
        // Time only moves forward, whatever the caller passes.
        if now.monotonic_us >= self.now.monotonic_us {
            self.now = now;
        }
        let now = self.now;
        match input {
            Input::Open { conn, identity } => self.open(now, conn, identity),
            Input::Text { conn, text } => self.client_message(now, conn, Some(text)),
            Input::Binary { conn } => self.client_message(now, conn, None),
            Input::Pong { conn } => {
                if let Some(c) = self.conn_mut(conn) {
                    c.last_heard_us = now.monotonic_us;
                }
            }
            Input::Written { conn, bytes } => {
                if let Some(c) = self.conn_mut(conn) {
                    c.queued_bytes = c.queued_bytes.saturating_sub(bytes);
                }
            }
            Input::Abort { conn, code } => self.close(conn, Some(code)),
            Input::Closed { conn } => self.close(conn, None),
            Input::Broadcast(publish) => {
                return match self.broadcast(now, publish) {
                    Ok(receipt) => Response::Published(receipt),
                    Err(error) => Response::Rejected(error),
                }
            }
            Input::Send(message) => {
                return match self.direct(now, message) {
                    Ok(delivered) => Response::Sent { delivered },
                    Err(error) => Response::Rejected(error),
                }
            }
            Input::Timeout => self.fire_timers(now),
            Input::TokenVerified { conn, id, result } => self.token_verified(now, conn, id, result),
            Input::Shutdown => {
                self.shutting_down = true;
                let mut all: Vec<ConnectionId> =
                    self.conns.iter().flatten().map(|c| c.id).collect();
                // Slab order depends on slot reuse; close in id order.
                all.sort();
                for conn in all {
                    self.close(conn, Some(CloseCode::GoingAway));
                }
            }
        }
        Response::Done
    }

    // ----- connections -------------------------------------------------

    fn conn_mut(&mut self, conn: ConnectionId) -> Option<&mut Connection> {
        let slot = *self.slot_of.get(&conn)?;
        self.conns[slot as usize].as_mut()
    }

    fn conn(&self, conn: ConnectionId) -> Option<&Connection> {
        let slot = *self.slot_of.get(&conn)?;
        self.conns[slot as usize].as_ref()
    }

    fn open(&mut self, now: Now, conn: ConnectionId, identity: Identity) {
        if self.slot_of.contains_key(&conn) {
            // A caller bug (ids must be new); refuse rather than corrupt state.
            return;
        }
        let expires_unix_ms = identity.user().and_then(|u| u.expires_unix_ms);
        let token_deadline_us = expires_unix_ms.map(|exp| {
            let remaining_ms = exp.saturating_sub(now.unix_ms).max(0) as u64;
            now.monotonic_us
                .saturating_add(remaining_ms.saturating_mul(1000))
        });
        let connection = Connection {
            id: conn,
            identity,
            rooms: BTreeSet::new(),
            queued_bytes: 0,
            limiter: RateLimiter::new(&self.config.limits, now.monotonic_us),
            last_heard_us: now.monotonic_us,
            last_ping_us: 0,
            token_deadline_us,
            token_warned: false,
            timer_at_us: 0,
            held: HeldFrames::default(),
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
    fn close(&mut self, conn: ConnectionId, code: Option<CloseCode>) {
        let Some(slot) = self.slot_of.remove(&conn) else {
            return;
        };
        let Some(connection) = self.conns[slot as usize].take() else {
            return;
        };
        self.free_slots.push(slot);
        self.timers.remove(&(connection.timer_at_us, conn));
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

    fn remove_member(&mut self, room: &RoomName, conn: ConnectionId, user: Option<&str>) {
        if let Some(state) = self.rooms.get_mut(room) {
            state.members.remove(&conn);
        }
        self.notify_presence(room, conn, user, "left");
        self.settle_if_empty(room);
    }

    /// Tells the other members of a room with presence diffs that `conn`
    /// joined or left. Unnumbered (not part of the room's `seq`).
    fn notify_presence(
        &mut self,
        room: &RoomName,
        conn: ConnectionId,
        user: Option<&str>,
        change: &str,
    ) {
        if !self.config.rooms.presence_diffs(room) {
            return;
        }
        let Some(state) = self.rooms.get(room) else {
            return;
        };
        let who = serde_json::json!({"connection_id": conn.to_string(), "user_id": user});
        let data = serde_json::json!({"room": room.as_str(), change: who, "connections": state.members.len()});
        let frame = envelope::envelope("presence_diff", self.now.unix_ms, None, &data, None);
        for (&member, &slot) in &state.members {
            if member == conn {
                continue;
            }
            let Some(connection) = self.conns[slot as usize].as_mut() else {
                continue;
            };
            if !Self::try_send(&mut self.outputs, &self.config.limits, connection, &frame) {
                self.doomed.push(member);
            }
        }
    }

    /// A room that has no members is dropped, or kept until its history
    /// ages out (with a timer to look again then).
    fn settle_if_empty(&mut self, room: &RoomName) {
        let bounds = self.history_bounds();
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        if !state.members.is_empty() {
            return;
        }
        if let Some(at) = state.expiry_at_us.take() {
            self.room_timers.remove(&(at, room.clone()));
        }
        match state.log.history_expires_at_us(bounds) {
            Some(at) if state.log.retain_when_empty() => {
                state.expiry_at_us = Some(at);
                self.room_timers.insert((at, room.clone()));
            }
            _ => {
                self.rooms.remove(room);
            }
        }
    }

    /// The room, created with a fresh epoch when it does not exist; a kept
    /// room stops its expiry timer (it is about to have a member or a broadcast).
    fn room_mut(&mut self, room: &RoomName) -> &mut Room {
        if !self.rooms.contains_key(room) {
            let log = RoomLog::new(self.next_epoch());
            self.rooms.insert(
                room.clone(),
                Room {
                    members: BTreeMap::new(),
                    log,
                    expiry_at_us: None,
                },
            );
        }
        let state = self.rooms.get_mut(room).expect("inserted above");
        if let Some(at) = state.expiry_at_us.take() {
            self.room_timers.remove(&(at, room.clone()));
        }
        state
    }

    /// Queues `frame` for the connection in `slot`, or reports that its
    /// backlog would overflow (the caller must then close it with 4008).
    #[must_use]
    fn try_send(
        outputs: &mut VecDeque<Output>,
        limits: &Limits,
        connection: &mut Connection,
        frame: &TextFrame,
    ) -> bool {
        let queued = connection.queued_bytes + frame.len();
        if queued > limits.outbound_queue_bytes_max {
            return false;
        }
        connection.queued_bytes = queued;
        outputs.push_back(Output::Send {
            conn: connection.id,
            frame: frame.clone(),
        });
        true
    }

    /// Sends the member's held progress events for `room` (all rooms when
    /// `None`) in `seq` order; `false` at the first one that overflows, after
    /// which nothing more may be sent (the caller closes with 4008).
    fn send_held(
        outputs: &mut VecDeque<Output>,
        limits: &Limits,
        connection: &mut Connection,
        room: Option<&RoomName>,
    ) -> bool {
        if connection.held.is_empty() {
            return true;
        }
        let held = connection.held.take(room);
        held.iter()
            .all(|frame| Self::try_send(outputs, limits, connection, frame))
    }

    /// Sends one reply, closing the connection as a slow consumer if it cannot take it.
    fn send(&mut self, slot: u32, frame: TextFrame) {
        let Some(connection) = self.conns[slot as usize].as_mut() else {
            return;
        };
        if !Self::try_send(&mut self.outputs, &self.config.limits, connection, &frame) {
            let id = connection.id;
            self.close(id, Some(CloseCode::SlowConsumer));
        }
    }

    // ----- client messages ---------------------------------------------

    fn client_message(&mut self, now: Now, conn: ConnectionId, text: Option<&str>) {
        let Some(&slot) = self.slot_of.get(&conn) else {
            return;
        };
        let Some(connection) = self.conns[slot as usize].as_mut() else {
            return;
        };
        connection.last_heard_us = now.monotonic_us;
        let verdict = connection
            .limiter
            .check(&self.config.limits, now.monotonic_us);

        let parsed = match text {
            Some(text) => parse_request(text),
            None => Err(Rejection {
                id: None,
                code: ErrorCode::InvalidMessage,
                message: "binary frames are not supported; send JSON text".to_owned(),
            }),
        };
        match verdict {
            Verdict::Allow => {}
            Verdict::Warn => {
                let id = match &parsed {
                    Ok(request) => request.id.as_ref(),
                    Err(rejection) => rejection.id.as_ref(),
                };
                let frame = envelope::error(
                    now.unix_ms,
                    ErrorCode::RateLimited,
                    "rate limit exceeded; slow down",
                    id,
                );
                return self.send(slot, frame);
            }
            Verdict::Close => return self.close(conn, Some(CloseCode::PolicyViolation)),
        }
        let request = match parsed {
            Ok(request) => request,
            Err(rejection) => {
                let frame = envelope::error(
                    now.unix_ms,
                    rejection.code,
                    &rejection.message,
                    rejection.id.as_ref(),
                );
                return self.send(slot, frame);
            }
        };
        let id = request.id.as_ref();
        let reply = match request.action {
            Action::Ping => envelope::pong(now.unix_ms, id),
            Action::Join { room, since } => {
                let (reply, replay) = self.join(now, slot, room, since, id);
                self.send(slot, reply);
                for frame in replay {
                    self.send(slot, frame);
                }
                return;
            }
            Action::Leave { room } => self.leave(now, slot, room, id),
            Action::Presence { room, after } => {
                self.presence(now, slot, &room, after.as_deref(), id)
            }
            Action::Publish { room, kind, data } => {
                self.client_publish(now, slot, room, kind, data, id)
            }
            Action::Refresh { token } => {
                if connection_user(&self.conns, slot).is_none() {
                    let message =
                        "an anonymous connection has no token to refresh; reconnect with a token";
                    envelope::error(now.unix_ms, ErrorCode::InvalidToken, message, id)
                } else {
                    // Verification is the shell's (it holds the keys); the
                    // answer comes back as `Input::TokenVerified`.
                    self.outputs.push_back(Output::VerifyToken {
                        conn,
                        token,
                        id: request.id.clone(),
                    });
                    return;
                }
            }
        };
        self.send(slot, reply);
    }

    /// Joins `room`; with `since`, also the missed broadcasts to replay
    /// after the reply (all of them, or none when history cannot cover the gap).
    fn join(
        &mut self,
        now: Now,
        slot: u32,
        room: RoomName,
        since: Option<Since>,
        id: Option<&RequestId>,
    ) -> (TextFrame, Vec<TextFrame>) {
        let Some(connection) = self.conns[slot as usize].as_mut() else {
            unreachable_slot()
        };
        if !self.config.access.can_join(&connection.identity, &room) {
            let message = format!("not allowed to join room: {room}");
            return (
                envelope::error(now.unix_ms, ErrorCode::Forbidden, &message, id),
                Vec::new(),
            );
        }
        let already_member = connection.rooms.contains(&room);
        if !already_member && connection.rooms.len() >= self.config.limits.rooms_per_connection_max
        {
            let message = format!(
                "at most {} rooms per connection",
                self.config.limits.rooms_per_connection_max
            );
            return (
                envelope::error(now.unix_ms, ErrorCode::TooManyRooms, &message, id),
                Vec::new(),
            );
        }
        connection.rooms.insert(room.clone());
        let conn = connection.id;
        let user = connection.identity.user().map(|u| u.id.clone());
        let bounds = self.history_bounds();
        let state = self.room_mut(&room);
        let joined = state.members.insert(conn, slot).is_none();
        if joined {
            self.notify_presence(&room, conn, user.as_deref(), "joined");
        }
        let Some(state) = self.rooms.get_mut(&room) else {
            unreachable_slot()
        };
        state.log.expire(bounds, now.monotonic_us);
        let log = &state.log;
        // A member already has everything since its join: nothing to replay.
        let (recovered, replay) = match &since {
            None => (None, Vec::new()),
            Some(since) => match log.replay_after(&since.epoch, since.seq) {
                Replay::Complete(frames) if !already_member => {
                    (Some(true), frames.into_iter().cloned().collect())
                }
                Replay::Complete(frames) => (Some(frames.is_empty()), Vec::new()),
                Replay::Unavailable => (Some(false), Vec::new()),
            },
        };
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
            seq: log.last_seq(),
            epoch: log.epoch(),
            recovered,
        };
        (
            envelope::envelope("system_info", now.unix_ms, None, &data, id),
            replay,
        )
    }

    fn leave(&mut self, now: Now, slot: u32, room: RoomName, id: Option<&RequestId>) -> TextFrame {
        let Some(connection) = self.conns[slot as usize].as_mut() else {
            unreachable_slot()
        };
        if connection.rooms.remove(&room) {
            connection.held.drop_room(&room);
            let conn = connection.id;
            let user = connection.identity.user().map(|u| u.id.clone());
            self.remove_member(&room, conn, user.as_deref());
        }
        #[derive(Serialize)]
        struct Left<'a> {
            message: String,
            room: &'a str,
        }
        let data = Left {
            message: format!("Left room: {room}"),
            room: room.as_str(),
        };
        envelope::envelope("system_info", now.unix_ms, None, &data, id)
    }

    fn presence(
        &self,
        now: Now,
        slot: u32,
        room: &RoomName,
        after: Option<&str>,
        id: Option<&RequestId>,
    ) -> TextFrame {
        let member = self.conns[slot as usize]
            .as_ref()
            .is_some_and(|c| c.rooms.contains(room));
        let Some(state) = self.rooms.get(room).filter(|_| member) else {
            return envelope::error(
                now.unix_ms,
                ErrorCode::Forbidden,
                &format!("not a member of room: {room}"),
                id,
            );
        };
        let users: BTreeSet<&str> = state
            .members
            .values()
            .filter_map(|&s| self.conns[s as usize].as_ref())
            .filter_map(|c| c.identity.user())
            .map(|u| u.id.as_str())
            .collect();
        let page_max = self.config.limits.presence_page_max;
        let page: Vec<&str> = users
            .iter()
            .copied()
            .filter(|u| after.is_none_or(|a| *u > a))
            .take(page_max + 1)
            .collect();
        let more = page.len() > page_max;
        let page = &page[..page.len().min(page_max)];
        #[derive(Serialize)]
        struct Presence<'a> {
            room: &'a str,
            connections: usize,
            user_count: usize,
            users: &'a [&'a str],
            #[serde(skip_serializing_if = "Option::is_none")]
            next: Option<&'a str>,
        }
        let data = Presence {
            room: room.as_str(),
            connections: state.members.len(),
            user_count: users.len(),
            users: page,
            next: if more { page.last().copied() } else { None },
        };
        envelope::envelope("presence", now.unix_ms, None, &data, id)
    }

    fn client_publish(
        &mut self,
        now: Now,
        slot: u32,
        room: RoomName,
        kind: String,
        data: Map<String, Value>,
        id: Option<&RequestId>,
    ) -> TextFrame {
        let allowed = self.conns[slot as usize]
            .as_ref()
            .and_then(|c| c.identity.user())
            .is_some_and(|u| u.can_publish(&room));
        if !allowed {
            return envelope::error(
                now.unix_ms,
                ErrorCode::Forbidden,
                &format!("no publish grant for room: {room}"),
                id,
            );
        }
        if let Err(error) = validate_message(&self.config.types, &kind, &data) {
            let code = match error {
                PublishError::UnknownType(_) => ErrorCode::UnknownType,
                PublishError::InvalidKey(_) => ErrorCode::InvalidKey,
                PublishError::InvalidRoom(_) => ErrorCode::InvalidSubscription,
                PublishError::InvalidBody(_) | PublishError::TooLarge(_) => {
                    ErrorCode::InvalidMessage
                }
            };
            return envelope::error(now.unix_ms, code, error.message(), id);
        }
        let publish = Publish {
            rooms: vec![room.clone()],
            kind,
            data,
        };
        let receipt = match self.broadcast(now, publish) {
            Ok(receipt) => receipt,
            Err(error) => {
                return envelope::error(now.unix_ms, ErrorCode::InvalidMessage, error.message(), id)
            }
        };
        #[derive(Serialize)]
        struct Published<'a> {
            message: String,
            room: &'a str,
            seq: u64,
            delivered: u64,
        }
        let seq = receipt.rooms.first().map_or(0, |r| r.seq);
        let data = Published {
            message: format!("Published to room: {room}"),
            room: room.as_str(),
            seq,
            delivered: receipt.delivered,
        };
        envelope::envelope("system_info", now.unix_ms, None, &data, id)
    }

    /// The shell's verdict on a `refresh`: same user → new expiry and
    /// scopes; anything else → `INVALID_TOKEN` and the old token stays.
    fn token_verified(
        &mut self,
        now: Now,
        conn: ConnectionId,
        id: Option<RequestId>,
        result: Result<User, String>,
    ) {
        let Some(&slot) = self.slot_of.get(&conn) else {
            return;
        };
        let Some(connection) = self.conns[slot as usize].as_mut() else {
            return;
        };
        let current = connection.identity.user().map(|u| u.id.clone());
        let frame = match result {
            Err(why) => envelope::error(
                now.unix_ms,
                ErrorCode::InvalidToken,
                &format!("token refused: {why}"),
                id.as_ref(),
            ),
            Ok(user) if Some(&user.id) != current.as_ref() => {
                let message =
                    "the new token is for another user (sub); the old token stays in force";
                envelope::error(now.unix_ms, ErrorCode::InvalidToken, message, id.as_ref())
            }
            Ok(user) => {
                connection.token_deadline_us = user.expires_unix_ms.map(|exp| {
                    let remaining_ms = exp.saturating_sub(now.unix_ms).max(0) as u64;
                    now.monotonic_us
                        .saturating_add(remaining_ms.saturating_mul(1000))
                });
                connection.token_warned = false;
                let expires_at = user.expires_unix_ms.map(|ms| {
                    String::from_utf8_lossy(&crate::time::format_rfc3339_ms(ms)).into_owned()
                });
                connection.identity = Identity::User(user);
                let data =
                    serde_json::json!({"message": "Token refreshed", "expires_at": expires_at});
                self.schedule(slot);
                envelope::envelope("system_info", now.unix_ms, None, &data, id.as_ref())
            }
        };
        self.send(slot, frame);
    }

    // ----- server-side publishing --------------------------------------

    fn next_epoch(&mut self) -> String {
        self.epochs_created += 1;
        format!("{}-{}", self.config.epoch_prefix, self.epochs_created)
    }

    /// The payload serialized once, or `TooLarge` when no connection could
    /// ever take a frame carrying it.
    fn serialize_payload(&self, data: &Map<String, Value>) -> Result<Box<RawValue>, PublishError> {
        let raw = serde_json::value::to_raw_value(data)
            .map_err(|_| PublishError::InvalidBody("payload cannot be serialized".into()))?;
        let bound = self.config.limits.outbound_queue_bytes_max;
        if raw.get().len() + ENVELOPE_OVERHEAD_MAX > bound {
            return Err(PublishError::TooLarge(format!(
                "payload of {} bytes does not fit the outbound queue bound of {bound} bytes",
                raw.get().len()
            )));
        }
        Ok(raw)
    }

    /// Numbers and fans out one broadcast per room: the payload is
    /// serialized once, each room's envelope once, and every member shares
    /// that room's frame.
    fn broadcast(&mut self, now: Now, publish: Publish) -> Result<PublishReceipt, PublishError> {
        let payload = self.serialize_payload(&publish.data)?;
        let series = series_of(&publish.kind, &publish.data);
        let mut receipt = PublishReceipt {
            delivered: 0,
            rooms: Vec::with_capacity(publish.rooms.len()),
        };
        let mut overflowed = Vec::new();
        let bounds = self.history_bounds();
        for room in publish.rooms {
            self.room_mut(&room);
            // Split borrow: the room (here) and the connection slab (in the loop).
            let Some(state) = self.rooms.get_mut(&room) else {
                continue;
            };
            let seq = state.log.next_seq();
            let frame = envelope::envelope(
                &publish.kind,
                now.unix_ms,
                Some(RoomStamp {
                    room: room.as_str(),
                    seq,
                }),
                &payload,
                None,
            );
            state.log.append(bounds, now.monotonic_us, frame.clone());
            let conflating = series
                .as_ref()
                .filter(|_| self.config.rooms.conflates(&room));
            let flush_at_us =
                now.monotonic_us + self.config.rooms.conflation_window_ms.max(1) * 1000;
            let mut newly_holding: Vec<u32> = Vec::new();
            for &slot in state.members.values() {
                // Members always occupy their slot (checked by `check_invariants`).
                let Some(connection) = self.conns[slot as usize].as_mut() else {
                    continue;
                };
                if let Some(series) = conflating {
                    // Behind, or already holding this series: hold (newest wins).
                    if connection.queued_bytes > 0 || connection.held.holds(&room, series) {
                        if connection.held.is_empty() {
                            newly_holding.push(slot);
                        }
                        connection.held.hold(
                            &room,
                            series.clone(),
                            seq,
                            frame.clone(),
                            flush_at_us,
                        );
                        receipt.delivered += 1;
                        continue;
                    }
                }
                // Anything held for this room goes first: seq never goes backwards.
                let ok = Self::send_held(
                    &mut self.outputs,
                    &self.config.limits,
                    connection,
                    Some(&room),
                );
                if ok && Self::try_send(&mut self.outputs, &self.config.limits, connection, &frame)
                {
                    receipt.delivered += 1;
                } else {
                    overflowed.push(connection.id);
                }
            }
            let epoch = state.log.epoch().to_owned();
            // Members that started holding frames need their flush timer.
            for slot in newly_holding {
                self.schedule(slot);
            }
            self.settle_if_empty(&room);
            receipt.rooms.push(RoomSeq { room, epoch, seq });
            // Close overflowing members before the next room so they get
            // nothing after their gap.
            for conn in overflowed.drain(..) {
                self.close(conn, Some(CloseCode::SlowConsumer));
            }
        }
        Ok(receipt)
    }

    fn direct(&mut self, now: Now, message: DirectMessage) -> Result<u64, PublishError> {
        let payload = self.serialize_payload(&message.data)?;
        let targets: Vec<ConnectionId> = match &message.target {
            SendTarget::Connection(conn) => self.conn(*conn).map(|c| c.id).into_iter().collect(),
            SendTarget::User(user) => self
                .users
                .get(user)
                .map(|set| set.iter().copied().collect())
                .unwrap_or_default(),
        };
        if targets.is_empty() {
            return Ok(0);
        }
        let frame = envelope::envelope(&message.kind, now.unix_ms, None, &payload, None);
        let mut delivered = 0;
        for conn in targets {
            let Some(&slot) = self.slot_of.get(&conn) else {
                continue;
            };
            self.send(slot, frame.clone());
            delivered += u64::from(self.slot_of.contains_key(&conn));
        }
        Ok(delivered)
    }

    // ----- timers --------------------------------------------------------

    /// When the connection in `slot` next needs a look: a ping, an idle
    /// close, or its token expiry.
    fn next_check_us(&self, connection: &Connection) -> u64 {
        let (idle_us, ping_us) = self.heartbeat_us();
        let idle_at = connection.last_heard_us.saturating_add(idle_us);
        let ping_at = connection
            .last_heard_us
            .max(connection.last_ping_us)
            .saturating_add(ping_us);
        let mut at = idle_at.min(ping_at);
        if let Some(flush_at) = connection.held.flush_at_us() {
            at = at.min(flush_at);
        }
        if let Some(deadline) = connection.token_deadline_us {
            at = at.min(deadline);
            if !connection.token_warned {
                at = at.min(
                    deadline
                        .saturating_sub(self.config.limits.token_warning_ms.saturating_mul(1000)),
                );
            }
        }
        at
    }

    /// (idle timeout, ping interval) in µs: at least 1 ms each, so a
    /// misconfigured zero cannot make a timer fire forever at the same instant.
    fn heartbeat_us(&self) -> (u64, u64) {
        let limits = &self.config.limits;
        let micros = |ms: u64| ms.max(1).saturating_mul(1000);
        (
            micros(limits.idle_timeout_ms),
            micros(limits.ping_interval_ms),
        )
    }

    fn schedule(&mut self, slot: u32) {
        let Some(connection) = self.conns[slot as usize].as_ref() else {
            return;
        };
        let at = self.next_check_us(connection);
        let (old, id) = (connection.timer_at_us, connection.id);
        self.timers.remove(&(old, id));
        self.timers.insert((at, id));
        if let Some(connection) = self.conns[slot as usize].as_mut() {
            connection.timer_at_us = at;
        }
    }

    fn fire_timers(&mut self, now: Now) {
        let now_us = now.monotonic_us;
        while let Some((at, room)) = self.room_timers.first().cloned() {
            if at > now_us {
                break;
            }
            self.room_timers.remove(&(at, room.clone()));
            let bounds = self.history_bounds();
            if let Some(state) = self.rooms.get_mut(&room) {
                state.expiry_at_us = None;
                state.log.expire(bounds, now_us);
            }
            self.settle_if_empty(&room);
        }
        let (idle_us, ping_us) = self.heartbeat_us();
        while let Some(&(at, conn)) = self.timers.first() {
            if at > now_us {
                break;
            }
            self.timers.remove(&(at, conn));
            let Some(&slot) = self.slot_of.get(&conn) else {
                continue;
            };
            let Some(connection) = self.conns[slot as usize].as_mut() else {
                continue;
            };
            if connection.token_deadline_us.is_some_and(|d| d <= now_us) {
                self.close(conn, Some(CloseCode::TokenExpired));
                continue;
            }
            let flush_due = connection.held.flush_at_us().is_some_and(|at| at <= now_us);
            if flush_due
                && !Self::send_held(&mut self.outputs, &self.config.limits, connection, None)
            {
                self.close(conn, Some(CloseCode::SlowConsumer));
                continue;
            }
            let Some(connection) = self.conns[slot as usize].as_mut() else {
                continue;
            };
            let warn_at = connection.token_deadline_us.map(|d| {
                d.saturating_sub(self.config.limits.token_warning_ms.saturating_mul(1000))
            });
            if !connection.token_warned && warn_at.is_some_and(|w| w <= now_us) {
                connection.token_warned = true;
                let expires_in_ms = connection
                    .token_deadline_us
                    .unwrap_or(now_us)
                    .saturating_sub(now_us)
                    / 1000;
                let data = serde_json::json!({
                    "code": "TOKEN_EXPIRING",
                    "message": format!("your token expires in {} s: send a refresh with a new token", expires_in_ms / 1000),
                    "expires_in_ms": expires_in_ms,
                });
                let frame = envelope::envelope("system_warning", now.unix_ms, None, &data, None);
                self.send(slot, frame);
                if !self.slot_of.contains_key(&conn) {
                    continue;
                }
            }
            let Some(connection) = self.conns[slot as usize].as_mut() else {
                continue;
            };
            let silent_us = now_us.saturating_sub(connection.last_heard_us);
            if silent_us >= idle_us {
                self.close(conn, Some(CloseCode::IdleTimeout));
                continue;
            }
            let since_ping_us =
                now_us.saturating_sub(connection.last_heard_us.max(connection.last_ping_us));
            if since_ping_us >= ping_us {
                connection.last_ping_us = now_us;
                self.outputs.push_back(Output::Ping { conn });
            }
            self.schedule(slot);
        }
    }
}

/// The user behind the connection in `slot`, if authenticated.
fn connection_user(conns: &[Option<Connection>], slot: u32) -> Option<&User> {
    conns.get(slot as usize)?.as_ref()?.identity.user()
}

#[track_caller]
fn unreachable_slot() -> ! {
    // Only called with the slot of the connection whose message is being
    // handled, which is live for the whole call.
    unreachable!("handler called for an empty slot")
}
