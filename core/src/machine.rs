//! [`Core`]: the roomcast state machine and its input dispatch.
//!
//! Its state is in parts that own their data and keep their invariants
//! (each checks its own, `check_invariants`):
//! `Connections` (slab, ids, timers,
//! the close queue; each connection's reply queue), `Rooms`
//! (rooms and their stream checks),
//! `EngineCalls` (requests, calls in flight,
//! publishes, answers to the caller) and
//! `Presence` (changes, throttle windows,
//! refresh). The handlers are `impl Core` blocks, one job per file:
//! [`connections`](crate::connections) (open, close, sending),
//! [`reply_order`](crate::reply_order) (messages waiting behind a request),
//! [`client_messages`](crate::client_messages) (client messages), [`rooms`](crate::rooms)
//! (joins and memberships), [`stream`](crate::stream) (the engine
//! conversation per room), [`publishing`](crate::publishing) (appends and
//! receipts), [`delivery`](crate::delivery) (frames to members),
//! [`presence_diffs`](crate::presence_diffs), [`checks`](crate::checks)
//! and [`timers`](crate::timers). This file only dispatches.

use std::collections::BTreeMap;

use crate::calls::EngineCalls;
use crate::config::{BroadcastAnswer, CoreConfig, Ticket};
use crate::connections::Connections;
use crate::engine::{EngineEvent, EngineRequest};
use crate::input::Input;
use crate::names::{ConnectionId, RoomName};
use crate::outbound::Outbox;
use crate::output::Output;
use crate::presence::Presence;
use crate::rooms::Rooms;
use crate::time::Now;

/// The state machine. Feed it with [`Core::handle`]; drain it with
/// [`Core::poll_output`], [`Core::poll_engine`], [`Core::poll_answer`]
/// and [`Core::poll_timeout`].
#[derive(Debug)]
pub struct Core {
    pub(crate) config: CoreConfig,
    /// Open connections, their timers and the close queue.
    pub(crate) conns: Connections,
    /// Rooms this node has local business in, and their stream checks.
    pub(crate) rooms: Rooms,
    /// Outputs in order, and the bytes queued to all connections.
    pub(crate) outputs: Outbox,
    /// The engine conversation: requests, calls in flight, publishes
    /// awaiting their appends, and the answers to the caller's broadcasts.
    pub(crate) engine: EngineCalls,
    /// Set by `Input::Shutdown`: connections opened afterwards are closed with 1001 at once.
    pub(crate) shutting_down: bool,
    /// Presence: the changes of the current input, the rooms' throttle
    /// windows and the node's refresh with the engine.
    pub(crate) presence: Presence,
    /// Checks in flight ([`crate::checks`]), one per waiting connection.
    /// Looked up only, never iterated.
    pub(crate) checks: BTreeMap<ConnectionId, crate::checks::PendingCheck>,
    /// Latest `now` seen: time never goes backwards inside the core.
    pub(crate) now: Now,
    /// The first impossible state met (see [`Core::impossible`]).
    pub(crate) broken: Option<&'static str>,
}

/// The one way the core reports a state that cannot happen: a
/// `debug_assert!` (tests and fuzzers stop there), and, for the simulator,
/// which runs release builds, remembered in `broken` so that
/// `check_invariants` fails. The core then carries on as safely as it can:
/// never a panic in release. (For code that holds part of the core
/// borrowed; otherwise [`Core::impossible`].) Pure helpers with no core at
/// hand (`try_send`, `Outbox::forget`) check their callers' promises with
/// a plain `debug_assert!` and stay safe when broken.
#[track_caller]
pub(crate) fn impossible(broken: &mut Option<&'static str>, what: &'static str) {
    debug_assert!(false, "impossible state: {what}");
    broken.get_or_insert(what);
}

impl Core {
    /// A core with no connections and no rooms.
    pub fn new(config: CoreConfig) -> Core {
        Core {
            config,
            conns: Connections::default(),
            rooms: Rooms::default(),
            engine: EngineCalls::default(),
            outputs: Outbox::default(),
            shutting_down: false,
            presence: Presence::default(),
            checks: BTreeMap::new(),
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
        self.conns.len()
    }

    /// Whether `conn` is open.
    pub fn is_open(&self, conn: ConnectionId) -> bool {
        self.conns.is_open(conn)
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
        self.engine.in_flight()
    }

    /// The next output for a connection, in the order decided.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next request for the engine, in the order decided.
    pub fn poll_engine(&mut self) -> Option<EngineRequest> {
        self.engine.poll_request()
    }

    /// The next answer to a broadcast (the ticket [`Core::broadcast`]
    /// returned), in the order the engine answered.
    pub fn poll_answer(&mut self) -> Option<(Ticket, BroadcastAnswer)> {
        self.engine.poll_answer()
    }

    /// When `handle(now, Input::Timeout)` is next needed (monotonic µs).
    pub fn poll_timeout(&self) -> Option<u64> {
        let connections = self.conns.next_timer();
        let rooms = self.rooms.next_check();
        let presence = self.presence.next_window_end();
        connections
            .into_iter()
            .chain(rooms)
            .chain(presence)
            .chain(self.presence.refresh_at())
            .min()
    }

    /// Applies one input at `now`. What it produces is polled: outputs
    /// for connections, requests for the engine, answers to broadcasts.
    pub fn handle(&mut self, now: Now, input: Input<'_>) {
        self.apply(now, input);
        self.settle();
    }

    /// `POST /api/broadcast` (validated by `validate::parse_broadcast_body`):
    /// one append per room. Refused at once, or answered later through
    /// [`Core::poll_answer`] with the returned ticket.
    pub fn broadcast(
        &mut self,
        now: Now,
        publish: crate::validate::Publish,
    ) -> Result<Ticket, crate::validate::PublishError> {
        self.api_call(now, |core, now| core.api_broadcast(now, publish))
    }

    /// `POST /api/send`: a direct message to a user's connections or to
    /// one connection (not [`Output::Send`], which writes a frame to a
    /// connection). Answers how many connections of this core got it.
    pub fn send_direct(
        &mut self,
        now: Now,
        message: crate::validate::DirectMessage,
    ) -> Result<u64, crate::validate::PublishError> {
        self.api_call(now, |core, now| core.direct(now, message))
    }

    /// One of the caller's own requests at `now`, then what every input
    /// leaves to do; its answer.
    fn api_call<T>(&mut self, now: Now, request: impl FnOnce(&mut Core, Now) -> T) -> T {
        let now = self.advance(now);
        let answer = request(self, now);
        self.settle();
        answer
    }

    /// Time only moves forward, whatever the caller passes: the core's
    /// `now` after this call.
    fn advance(&mut self, now: Now) -> Now {
        if now.monotonic_us >= self.now.monotonic_us {
            self.now = now;
        }
        self.now
    }

    /// What every input leaves to do before the next: queued closes,
    /// resumed connections, presence diffs, the outbound budget.
    fn settle(&mut self) {
        loop {
            // Members that overflowed while a presence diff was fanned out
            // are closed here (closing one is a presence change).
            if self.conns.closes_queued() > 0 {
                self.run_closes(0);
                continue;
            }
            // Connections whose engine wait ended run their deferred messages.
            if let Some(conn) = self.conns.pop_resumable() {
                self.resume(conn);
                continue;
            }
            // One presence diff per room for all the input's changes (it
            // may overflow members, whose closes are told in the next round).
            if self.presence.has_changes() {
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
    }

    fn apply(&mut self, now: Now, input: Input<'_>) {
        let now = self.advance(now);
        match input {
            Input::Open { conn, identity } => self.open(now, conn, identity),
            Input::Text { conn, text } => self.client_message(now, conn, Some(text)),
            Input::Binary { conn } => self.client_message(now, conn, None),
            Input::Busy { conn, id } => self.busy_message(now, conn, id),
            Input::Pong { conn } => self.heard(now, conn),
            Input::Written { conn, bytes } => self.written(conn, bytes),
            Input::Blocked { conn } => self.blocked(conn),
            Input::Abort { conn, code } => self.close(conn, Some(code)),
            Input::Closed { conn } => self.close(conn, None),
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
                EngineEvent::Presence { call, result } => self.on_presence_list(now, call, result),
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
            Input::Shutdown => self.shut_down(),
        }
    }

    /// Reports a state that cannot happen (see [`impossible`]).
    #[track_caller]
    pub(crate) fn impossible(&mut self, what: &'static str) {
        impossible(&mut self.broken, what);
    }

    /// Whether the bound on engine calls in flight leaves room for `calls` more.
    pub(crate) fn engine_has_room(&self, calls: usize) -> bool {
        self.engine.in_flight() + calls <= self.config.limits.engine_calls_max
    }
}
