//! [`Core`]: the roomcast state machine, its state and its input dispatch.
//! The handlers live next to it, one job per file, each an `impl Core`
//! block: [`connections`](crate::connections) (open, close, sending),
//! [`requests`](crate::requests) (client messages), [`rooms`](crate::rooms)
//! (joins and memberships), [`stream`](crate::stream) (the engine
//! conversation), [`fanout`](crate::fanout) (publishing and delivery) and
//! [`timers`](crate::timers).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::access::Identity;
use crate::config::{CoreConfig, Response, Ticket};
use crate::conflation::HeldFrames;
use crate::engine::{CallId, EngineEvent, EngineRequest, Epoch, Numbered, Position};
use crate::input::Input;
use crate::names::{ConnectionId, ConnectionMap, RoomName};
use crate::outbound::Outbox;
use crate::output::Output;
use crate::presence_diffs::PresenceWindow;
use crate::rate::RateLimiter;
use crate::request::{RequestId, Since};
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
    /// The key of this connection's entry in `Core::timers`.
    pub(crate) timer_at_us: u64,
    /// Progress events held back while this member is behind (conflation).
    pub(crate) held: HeldFrames,
    /// Set while one of its requests waits for the engine: later messages
    /// wait here, so replies keep the order of requests. Boxed on purpose:
    /// every connection carries this field and almost all are idle, so it
    /// costs 8 bytes instead of a 32-byte empty queue.
    #[allow(clippy::box_collection)]
    pub(crate) waiting: Option<Box<VecDeque<Deferred>>>,
}

/// A client message that arrived while an earlier one waited for the
/// engine: its text (`None` for a binary frame) and the rate limiter's
/// verdict at arrival (the allowance is about when messages arrive, not
/// when they run).
#[derive(Debug)]
pub(crate) struct Deferred {
    pub(crate) text: Option<String>,
    pub(crate) verdict: crate::rate::Verdict,
    /// Refused by the shell (`Input::Busy`, with the message's id): answered
    /// `SERVER_BUSY` in its turn instead of run.
    pub(crate) busy: Option<Option<RequestId>>,
}

/// One room this node has local business in: members, joins waiting for
/// a read, or a read in flight.
#[derive(Debug, Default)]
pub(crate) struct Room {
    /// Members, in id order, with their slot in `Core::conns` so fan-out
    /// touches no map but the slab.
    pub(crate) members: BTreeMap<ConnectionId, u32>,
    /// What the members have been given: `(epoch, last seq)`. `None` until
    /// the room's first read answers.
    pub(crate) cursor: Option<Position>,
    /// The room-level read in flight, and the position it reads after.
    pub(crate) reading: Option<(CallId, Option<Position>)>,
    /// Live messages that arrived while the read was in flight (bounded).
    pub(crate) held_live: Vec<Numbered>,
    /// Set when a live message had to be dropped or could not be placed
    /// during the read: read again once it answers.
    pub(crate) read_again: bool,
    /// Joins the read in flight answers (they keep the room alive while
    /// they are answered one by one).
    pub(crate) joins: VecDeque<PendingJoin>,
    /// Joins that need the next read (they reach further back).
    pub(crate) next_joins: VecDeque<PendingJoin>,
    /// Key in `Core::room_timers`: the next stream check (or read retry).
    pub(crate) check_at_us: Option<u64>,
    /// Diffs from the engine: the members may have missed presence changes
    /// (a stream reset) and are told to ask again once the room is listed.
    pub(crate) presence_stale: bool,
    /// That list is in flight.
    pub(crate) presence_resyncing: bool,
    /// Diffs from the engine: members whose own add the engine has not
    /// echoed yet. They are told no change until it is: a change applied
    /// before their add is no news to them (a `presence` list they make
    /// already shows it), and a member told one would keep its count
    /// without itself (nobody hears a change about itself).
    pub(crate) unechoed: BTreeSet<ConnectionId>,
}

/// The presence changes of one room during the current input, told to its
/// members as one `presence_diff` once the input is done
/// ([`Core::flush_presence`](crate::rooms)).
#[derive(Debug)]
pub(crate) struct PendingDiff {
    /// Where in `Core::outputs` the room's first change of this input
    /// happened: the diff is placed there, so a lone change goes out exactly
    /// where it always did.
    pub(crate) at: usize,
    /// Connections that joined (with their user id), net of those that
    /// also left during the input.
    pub(crate) joined: BTreeMap<ConnectionId, Option<String>>,
    /// Connections that left, net of those that also joined again.
    pub(crate) left: BTreeMap<ConnectionId, Option<String>>,
    /// The room's count after the changes, when the engine told it
    /// (cluster-wide); `None`: this node's member count.
    pub(crate) connections: Option<usize>,
}

/// A join waiting for its room's read.
#[derive(Debug)]
pub(crate) struct PendingJoin {
    pub(crate) conn: ConnectionId,
    pub(crate) since: Option<Since>,
    pub(crate) id: Option<RequestId>,
}

/// Who waits for a publish's receipt.
#[derive(Debug)]
pub(crate) enum Publisher {
    /// The caller (`POST /api/broadcast`), through `poll_answer`.
    Api(Ticket),
    /// A client's `publish` action, answered with a frame.
    Client {
        conn: ConnectionId,
        id: Option<RequestId>,
    },
}

/// A publish whose appends are in flight.
#[derive(Debug)]
pub(crate) struct PendingPublish {
    pub(crate) publisher: Publisher,
    /// Per target room in request order: its outcome, once answered.
    pub(crate) rooms: Vec<(RoomName, Option<AppendOutcome>)>,
    pub(crate) outstanding: usize,
}

/// One room of a publish, answered: where the engine numbered it and how
/// many local members it went to, or why the engine did not append it.
pub(crate) type AppendOutcome = Result<(Epoch, u64, u64), String>;

/// What an engine call was for.
#[derive(Debug)]
pub(crate) enum Call {
    /// Room `index` of publish `publish`.
    Append { publish: u64, index: usize },
    /// The room-level read of `room`.
    Read { room: RoomName },
    /// A client's `presence` request.
    Presence {
        conn: ConnectionId,
        room: RoomName,
        after: Option<String>,
        id: Option<RequestId>,
    },
    /// The list of a room whose members may have missed presence changes.
    PresenceResync { room: RoomName },
}

/// The state machine. Feed it with [`Core::handle`]; drain it with
/// [`Core::poll_output`], [`Core::poll_engine`], [`Core::poll_answer`]
/// and [`Core::poll_timeout`].
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
    /// Rooms with members: when to check their stream with the engine.
    pub(crate) room_timers: BTreeSet<(u64, RoomName)>,
    /// When to tell the engine this node is alive (while it has members).
    pub(crate) presence_refresh_at_us: Option<u64>,
    /// Outputs in order, and the bytes queued to all connections.
    pub(crate) outputs: Outbox,
    /// Requests for the engine, in the order decided.
    pub(crate) engine_out: VecDeque<EngineRequest>,
    /// Engine calls awaiting their answer.
    pub(crate) calls: BTreeMap<CallId, Call>,
    pub(crate) next_call: u64,
    /// Publishes awaiting their appends, by number.
    pub(crate) publishes: BTreeMap<u64, PendingPublish>,
    pub(crate) next_publish: u64,
    /// Answers to the caller's pending broadcasts.
    pub(crate) answers: VecDeque<(Ticket, Response)>,
    /// Set by `Input::Shutdown`: connections opened afterwards are closed with 1001 at once.
    pub(crate) shutting_down: bool,
    /// Connections to close as slow consumers once the current input is done.
    pub(crate) doomed: Vec<ConnectionId>,
    /// Connections whose engine wait ended: their deferred messages run
    /// once the current input is done.
    pub(crate) resumable: Vec<ConnectionId>,
    /// Presence changes of the current input, per room, told once it is
    /// done (one diff per room per input, not one per change).
    pub(crate) presence: BTreeMap<RoomName, PendingDiff>,
    /// Checks in flight ([`crate::checks`]), one per waiting connection.
    /// Looked up only, never iterated.
    pub(crate) checks: BTreeMap<ConnectionId, crate::checks::PendingCheck>,
    /// Rooms whose last diff went out less than `presence_diff_interval_ms`
    /// ago, with the changes told when their window ends.
    pub(crate) presence_windows: BTreeMap<RoomName, PresenceWindow>,
    /// When each window ends (one entry per window).
    pub(crate) presence_timers: BTreeSet<(u64, RoomName)>,
    /// Latest `now` seen: time never goes backwards inside the core.
    pub(crate) now: Now,
    /// The first impossible state met (see [`Core::impossible`]).
    pub(crate) broken: Option<&'static str>,
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
            presence_refresh_at_us: None,
            outputs: Outbox::default(),
            engine_out: VecDeque::new(),
            calls: BTreeMap::new(),
            next_call: 0,
            publishes: BTreeMap::new(),
            next_publish: 0,
            answers: VecDeque::new(),
            shutting_down: false,
            doomed: Vec::new(),
            resumable: Vec::new(),
            presence: BTreeMap::new(),
            checks: BTreeMap::new(),
            presence_windows: BTreeMap::new(),
            presence_timers: BTreeSet::new(),
            now: Now::default(),
            broken: None,
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

    /// Whether `conn` is open.
    pub fn is_open(&self, conn: ConnectionId) -> bool {
        self.slot_of.contains_key(&conn)
    }

    /// Rooms this node has local business in (members, pending joins or
    /// reads). Rooms kept only for their history live in the engine.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Members of `room` on this node (0 when it has none).
    pub fn member_count(&self, room: &RoomName) -> usize {
        self.rooms.get(room).map_or(0, |r| r.members.len())
    }

    /// Engine calls awaiting their answer.
    pub fn engine_calls_pending(&self) -> usize {
        self.calls.len()
    }

    /// The next output for a connection, in the order decided.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next request for the engine, in the order decided.
    pub fn poll_engine(&mut self) -> Option<EngineRequest> {
        self.engine_out.pop_front()
    }

    /// The next answer to a broadcast that returned [`Response::Pending`].
    pub fn poll_answer(&mut self) -> Option<(Ticket, Response)> {
        self.answers.pop_front()
    }

    /// When `handle(now, Input::Timeout)` is next needed (monotonic µs).
    pub fn poll_timeout(&self) -> Option<u64> {
        let connections = self.timers.first().map(|(at, _)| *at);
        let rooms = self.room_timers.first().map(|(at, _)| *at);
        let presence = self.presence_timers.first().map(|(at, _)| *at);
        connections
            .into_iter()
            .chain(rooms)
            .chain(presence)
            .chain(self.presence_refresh_at_us)
            .min()
    }

    /// Applies one input at `now`.
    pub fn handle(&mut self, now: Now, input: Input<'_>) -> Response {
        let response = self.apply(now, input);
        loop {
            // Members that overflowed while a notification was fanned out are
            // closed here, iteratively (closing one is a presence change).
            if let Some(conn) = self.doomed.pop() {
                self.close(conn, Some(crate::codes::CloseCode::SlowConsumer));
                continue;
            }
            // Connections whose engine wait ended run their deferred messages.
            if let Some(conn) = self.resumable.pop() {
                self.resume(conn);
                continue;
            }
            // One presence diff per room for all the input's changes (it
            // may overflow members, whose closes are told in the next round).
            if !self.presence.is_empty() {
                self.flush_presence();
                continue;
            }
            // The node's outbound backlog past its budget: the members
            // that do not keep up are closed (their leaves are presence
            // changes, told in the next round).
            if self.outbound_over_budget() {
                self.enforce_outbound_budget();
                continue;
            }
            break;
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
            Input::Busy { conn, id } => self.busy_message(now, conn, id),
            Input::Pong { conn } => {
                if let Some(c) = self.conn_mut(conn) {
                    c.last_heard_us = now.monotonic_us;
                }
            }
            Input::Written { conn, bytes } => {
                if let Some(c) = self.conn_mut(conn) {
                    let written = bytes.min(c.queued_bytes);
                    c.queued_bytes -= written;
                    // Everything it was given is written: it caught up.
                    if c.queued_bytes == 0 {
                        c.pushed_back = false;
                    }
                    self.outputs.forget(written);
                }
            }
            Input::Blocked { conn } => {
                if let Some(c) = self.conn_mut(conn) {
                    c.pushed_back = true;
                }
            }
            Input::Abort { conn, code } => self.close(conn, Some(code)),
            Input::Closed { conn } => self.close(conn, None),
            Input::Broadcast(publish) => return self.api_broadcast(now, publish),
            Input::Send(message) => {
                return match self.direct(now, message) {
                    Ok(delivered) => Response::Sent { delivered },
                    Err(error) => Response::Rejected(error),
                }
            }
            Input::Timeout => self.fire_timers(now),
            Input::CheckDone { conn, answer } => self.check_done(now, conn, answer),
            Input::Engine(event) => match event {
                EngineEvent::Live(message) => self.on_stream(message),
                EngineEvent::Appended {
                    call,
                    result,
                    peer_members,
                } => self.on_appended(now, call, result, peer_members),
                EngineEvent::Read { call, result } => self.on_read(now, call, result),
                EngineEvent::Presence { call, result } => {
                    if let Some(Call::PresenceResync { room }) = self.calls.get(&call) {
                        let room = room.clone();
                        self.calls.remove(&call);
                        self.on_presence_resync(now, room, result);
                    } else {
                        self.on_presence(now, call, result);
                    }
                }
                EngineEvent::PresenceChanged {
                    room,
                    joined,
                    left,
                    connections,
                } => self.on_presence_changed(room, joined, left, connections),
                EngineEvent::StreamReset => {
                    self.on_stream_reset();
                    self.presence_stream_reset();
                }
                EngineEvent::Direct { target, frame } => {
                    self.deliver_direct(&target, &frame);
                }
            },
            Input::Shutdown => {
                // No presence diffs from here on: everyone is leaving.
                let first = !self.shutting_down;
                self.shutting_down = true;
                self.close_presence_windows();
                // One request removes every entry of this node, each room's
                // in one step, instead of one remove per membership (which
                // other nodes would hear as one diff each).
                if first && self.rooms.values().any(|r| !r.members.is_empty()) {
                    self.engine_out.push_back(EngineRequest::PresenceClear);
                }
                let mut all: Vec<ConnectionId> =
                    self.conns.iter().flatten().map(|c| c.id).collect();
                // Slab order depends on slot reuse; close in id order.
                all.sort();
                for conn in all {
                    self.close(conn, Some(crate::codes::CloseCode::GoingAway));
                }
            }
        }
        Response::Done
    }

    /// A fresh correlation id for an engine call.
    pub(crate) fn new_call(&mut self, call: Call) -> CallId {
        self.next_call += 1;
        let id = CallId(self.next_call);
        self.calls.insert(id, call);
        id
    }

    /// Reports a state that cannot happen: a `debug_assert!`, and (for the
    /// simulator, which runs release builds) remembered so that
    /// `check_invariants` fails. The core carries on as safely as it can.
    #[track_caller]
    pub(crate) fn impossible(&mut self, what: &'static str) {
        debug_assert!(false, "impossible state: {what}");
        self.broken.get_or_insert(what);
    }

    /// Whether the bound on engine calls in flight leaves room for one more.
    pub(crate) fn engine_has_room(&self, calls: usize) -> bool {
        self.calls.len() + calls <= self.config.limits.engine_calls_max
    }
}
