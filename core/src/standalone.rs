//! [`Standalone`]: a [`Core`] and its engine in one pure state machine,
//! the engine answered inline in the same loop. This is the heart of the
//! default single-node server (with [`MemoryEngine`]) and, with a fault
//! layer in place of the engine, of the simulator, property tests and
//! fuzzers.
//!
//! After each input the core's engine requests go to the engine, and the
//! engine's answers and live messages go back to the core, until both are
//! quiet. A broadcast whose answer is already there is answered at once
//! ([`BroadcastOutcome::Answered`]); one whose answer is delayed (only with
//! a fault layer) is [`BroadcastOutcome::Pending`] and its answer comes
//! later from [`Standalone::poll_answer`].

use crate::config::{BroadcastAnswer, CoreConfig, Ticket};
use crate::engine::memory::HistoryBounds;
use crate::engine::memory::{MemoryEngine, NodeId};
use crate::engine::{EngineBroken, EngineEvent, EngineRequest};
use crate::input::Input;
use crate::machine::Core;
use crate::names::RoomName;
use crate::output::Output;
use crate::time::Now;

/// What a broadcast gets from [`Standalone::broadcast`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BroadcastOutcome {
    /// Answered at once: the engine numbered it inline, or it was refused.
    Answered(BroadcastAnswer),
    /// The engine's answer is delayed (only with a fault layer): it comes
    /// later from [`Standalone::poll_answer`] with this ticket.
    Pending(Ticket),
}

/// An engine driven inline, in the caller's loop: requests in, answers and
/// live messages out once due.
pub trait InlineEngine {
    /// Takes one request of `node` at `now_us`.
    fn request(&mut self, node: NodeId, now_us: u64, request: EngineRequest);
    /// The next event due at `now_us`, with the node it is for.
    fn next_event(&mut self, now_us: u64) -> Option<(NodeId, EngineEvent)>;
    /// When the engine next needs [`on_timeout`](Self::on_timeout).
    fn timeout(&self) -> Option<u64>;
    /// Time has passed.
    fn on_timeout(&mut self, now_us: u64);
    /// Rooms the engine keeps (followed, or holding history).
    fn room_count(&self) -> usize;
    /// The engine's own invariants (tests, simulator, fuzzers).
    fn check(&self) -> Result<(), EngineBroken>;
}

impl InlineEngine for MemoryEngine {
    fn request(&mut self, node: NodeId, now_us: u64, request: EngineRequest) {
        self.handle(node, now_us, request);
    }
    fn next_event(&mut self, _now_us: u64) -> Option<(NodeId, EngineEvent)> {
        self.poll_event()
    }
    fn timeout(&self) -> Option<u64> {
        self.poll_timeout()
    }
    fn on_timeout(&mut self, now_us: u64) {
        MemoryEngine::on_timeout(self, now_us);
    }
    fn room_count(&self) -> usize {
        MemoryEngine::room_count(self)
    }
    fn check(&self) -> Result<(), EngineBroken> {
        MemoryEngine::invariants(self)
    }
}

/// The in-memory engine's bounds from a configuration's limits table.
pub fn history_bounds(config: &CoreConfig) -> HistoryBounds {
    HistoryBounds {
        messages_max: config.limits.history_messages_max,
        age_max_us: config.limits.history_age_ms.saturating_mul(1000),
        bytes_max: config.limits.history_bytes_max,
        rooms_max: config.limits.rooms_max,
    }
}

/// The in-memory engine a configuration asks for (history bounds, epoch
/// prefix, presence time-to-live), telling presence changes when the core
/// builds its diffs from them (`presence_diffs_from_engine`).
pub fn memory_engine(config: &CoreConfig) -> MemoryEngine {
    let engine = MemoryEngine::new(
        history_bounds(config),
        config.epoch_prefix.clone(),
        config.limits.presence_ttl_ms.saturating_mul(1000),
    );
    if config.presence_diffs_from_engine {
        engine.with_presence_changes(config.rooms.clone())
    } else {
        engine
    }
}

/// A core and its inline engine. See the module docs.
#[derive(Debug)]
pub struct Standalone<E = MemoryEngine> {
    core: Core,
    engine: E,
}

/// The one node of a standalone engine.
const NODE: NodeId = 0;

/// After an input at `now`: lets `core` and its inline `engine` talk until
/// both are quiet (the core's requests to the engine, the engine's answers
/// and live messages back as `Input::Engine`). `timeout`: the input was
/// `Input::Timeout`, so the engine's own timers run too, after the core's
/// (its presence refresh, due now, reaches the engine before the engine
/// expires anything at this instant). The one inline loop: [`Standalone`]
/// and the server's single-shard hub both run it.
pub fn settle<E: InlineEngine>(core: &mut Core, engine: &mut E, now: Now, timeout: bool) {
    pump(core, engine, now);
    if timeout {
        engine.on_timeout(now.monotonic_us);
        pump(core, engine, now);
    }
}

fn pump<E: InlineEngine>(core: &mut Core, engine: &mut E, now: Now) {
    loop {
        while let Some(request) = core.poll_engine() {
            engine.request(NODE, now.monotonic_us, request);
        }
        let Some((_, event)) = engine.next_event(now.monotonic_us) else {
            return;
        };
        core.handle(now, Input::Engine(event));
    }
}

impl Standalone<MemoryEngine> {
    /// A core with its in-memory engine.
    pub fn new(config: CoreConfig) -> Standalone<MemoryEngine> {
        let engine = memory_engine(&config);
        Standalone::with_engine(config, engine)
    }
}

impl<E: InlineEngine> Standalone<E> {
    /// A core with the given inline engine.
    pub fn with_engine(config: CoreConfig, engine: E) -> Standalone<E> {
        Standalone {
            core: Core::new(config),
            engine,
        }
    }

    /// Applies one input at `now`, then lets core and engine talk until quiet.
    pub fn handle(&mut self, now: Now, input: Input<'_>) {
        let timeout = matches!(input, Input::Timeout);
        self.core.handle(now, input);
        settle(&mut self.core, &mut self.engine, now, timeout);
    }

    /// `POST /api/broadcast` ([`Core::broadcast`]), then core and engine
    /// talk until quiet: answered at once unless the engine's answer is
    /// delayed.
    pub fn broadcast(&mut self, now: Now, publish: crate::validate::Publish) -> BroadcastOutcome {
        let ticket = self.core.broadcast(now, publish);
        settle(&mut self.core, &mut self.engine, now, false);
        match ticket {
            Err(refused) => BroadcastOutcome::Answered(Err(refused)),
            Ok(ticket) => match self.core.take_answer(ticket) {
                Some(answer) => BroadcastOutcome::Answered(answer),
                None => BroadcastOutcome::Pending(ticket),
            },
        }
    }

    /// `POST /api/send` ([`Core::send_direct`]), then core and engine talk
    /// until quiet.
    pub fn send_direct(
        &mut self,
        now: Now,
        message: crate::validate::DirectMessage,
    ) -> Result<u64, crate::validate::PublishError> {
        let delivered = self.core.send_direct(now, message);
        settle(&mut self.core, &mut self.engine, now, false);
        delivered
    }

    /// The next output for a connection, in the order decided.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.core.poll_output()
    }

    /// The next answer to a broadcast that was
    /// [`BroadcastOutcome::Pending`].
    pub fn poll_answer(&mut self) -> Option<(Ticket, BroadcastAnswer)> {
        self.core.poll_answer()
    }

    /// When `handle(now, Input::Timeout)` is next needed (monotonic µs).
    pub fn poll_timeout(&self) -> Option<u64> {
        let core = self.core.poll_timeout();
        let engine = self.engine.timeout();
        core.into_iter().chain(engine).min()
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        self.core.config()
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.core.connection_count()
    }

    /// Rooms with local business (members, pending joins, reads).
    pub fn local_room_count(&self) -> usize {
        self.core.room_count()
    }

    /// Rooms kept: with members here, or holding history in the engine.
    pub fn room_count(&self) -> usize {
        self.engine.room_count()
    }

    /// Members of `room`.
    pub fn member_count(&self, room: &RoomName) -> usize {
        self.core.member_count(room)
    }

    /// The core.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// The engine.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// The engine, for fault injection in tests.
    #[cfg(any(test, feature = "testing"))]
    pub fn engine_mut(&mut self) -> &mut E {
        &mut self.engine
    }

    /// The core's and the engine's invariants.
    #[cfg(any(test, feature = "testing"))]
    pub fn check_invariants(&self) -> Result<(), crate::invariants::Broken> {
        self.core.check_invariants()?;
        self.engine
            .check()
            .map_err(crate::invariants::Broken::Engine)
    }
}
