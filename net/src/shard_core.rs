//! What a hub drives: [`ShardCore`], a shard's [`Core`] and the way to its
//! engine, in one type. The hub reads the core directly (outputs, answers,
//! counts) and goes through [`ShardCore::handle`] for every input, which
//! lets the engine hear what it must:
//!
//! - **inline** (one shard with the in-memory engine): the engine answers
//!   in the same loop (`roomcast_core::standalone::settle`, the loop the
//!   simulator's core tier runs too); it never has an event to wait for;
//! - **linked** (Redis, the shard router of a node of several shards, or an
//!   engine task given to [`serve_with_engine`](crate::serve_with_engine)):
//!   the core's requests go out over a channel after every input, and the
//!   engine's events come back through [`ShardCore::next_engine_event`],
//!   which the hub awaits beside its inbox.

use std::collections::VecDeque;

use roomcast_core::engine::memory::MemoryEngine;
use roomcast_core::engine::{EngineError, EngineEvent, EngineRequest};
use roomcast_core::standalone::{memory_engine, settle};
use roomcast_core::validate::{DirectMessage, Publish, PublishError};
use roomcast_core::{Core, CoreConfig, Input, Now, Ticket};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::engine::EngineLink;

/// A shard's core and its engine. See the module docs.
pub(crate) struct ShardCore {
    /// The state machine: the hub reads its outputs, answers and counts.
    pub(crate) core: Core,
    engine: EngineSide,
}

/// Where the core's engine requests go.
// One value per shard, made once and never moved in bulk: the size
// difference costs nothing, a box would cost a pointer chase per request.
#[allow(clippy::large_enum_variant)]
enum EngineSide {
    Inline(MemoryEngine),
    Linked(Link),
}

/// An engine task's end of the channels.
struct Link {
    requests: mpsc::Sender<EngineRequest>,
    events: mpsc::Receiver<EngineEvent>,
    /// Requests the full channel did not take yet, sent in order first.
    outbox: VecDeque<EngineRequest>,
    /// Answers made here for calls the engine can no longer take (its
    /// task is gone), handed to the core before returning.
    refused: VecDeque<EngineEvent>,
}

impl ShardCore {
    /// A core with the in-memory engine answered inline.
    pub(crate) fn inline(config: CoreConfig) -> ShardCore {
        let engine = memory_engine(&config);
        ShardCore {
            core: Core::new(config),
            engine: EngineSide::Inline(engine),
        }
    }

    /// A core driving the engine at the other end of `link`.
    pub(crate) fn linked(config: CoreConfig, link: EngineLink) -> ShardCore {
        ShardCore {
            core: Core::new(config),
            engine: EngineSide::Linked(Link {
                requests: link.requests,
                events: link.events,
                outbox: VecDeque::new(),
                refused: VecDeque::new(),
            }),
        }
    }

    /// Applies one input at `now` and lets the engine hear what it must.
    pub(crate) fn handle(&mut self, now: Now, input: Input<'_>) {
        let timeout = matches!(input, Input::Timeout);
        self.core.handle(now, input);
        self.engine_step(now, timeout);
    }

    /// `POST /api/broadcast` ([`Core::broadcast`]): its answer comes from
    /// `core.poll_answer()` with the ticket (at once with the inline engine).
    pub(crate) fn broadcast(&mut self, now: Now, publish: Publish) -> Result<Ticket, PublishError> {
        let ticket = self.core.broadcast(now, publish);
        self.engine_step(now, false);
        ticket
    }

    /// `POST /api/send` ([`Core::send_direct`]): this shard's deliveries.
    pub(crate) fn send_direct(
        &mut self,
        now: Now,
        message: DirectMessage,
    ) -> Result<u64, PublishError> {
        let delivered = self.core.send_direct(now, message);
        self.engine_step(now, false);
        delivered
    }

    /// After an input: the inline engine answers until quiet, or the
    /// linked engine hears the core's requests.
    fn engine_step(&mut self, now: Now, timeout: bool) {
        match &mut self.engine {
            EngineSide::Inline(engine) => settle(&mut self.core, engine, now, timeout),
            EngineSide::Linked(link) => link.pump(&mut self.core, now),
        }
    }

    /// When `handle(now, Input::Timeout)` is next needed (monotonic µs).
    pub(crate) fn poll_timeout(&self) -> Option<u64> {
        let core = self.core.poll_timeout();
        match &self.engine {
            EngineSide::Inline(engine) => core.into_iter().chain(engine.poll_timeout()).min(),
            EngineSide::Linked(_) => core,
        }
    }

    /// Rooms kept: with members here, or (inline engine) holding history.
    pub(crate) fn room_count(&self) -> usize {
        match &self.engine {
            EngineSide::Inline(engine) => engine.room_count(),
            EngineSide::Linked(_) => self.core.room_count(),
        }
    }

    /// The engine's next event; never resolves for an inline engine.
    pub(crate) async fn next_engine_event(&mut self) -> EngineEvent {
        match &mut self.engine {
            EngineSide::Inline(_) => std::future::pending().await,
            EngineSide::Linked(link) => link.next_event().await,
        }
    }

    /// An engine event already waiting, if any.
    pub(crate) fn try_engine_event(&mut self) -> Option<EngineEvent> {
        match &mut self.engine {
            EngineSide::Inline(_) => None,
            EngineSide::Linked(link) => link
                .refused
                .pop_front()
                .or_else(|| link.events.try_recv().ok()),
        }
    }
}

impl Link {
    /// Sends the core's requests, and hands it any refusals, until quiet.
    fn pump(&mut self, core: &mut Core, now: Now) {
        loop {
            while let Some(request) = core.poll_engine() {
                if !self.outbox.is_empty() {
                    self.outbox.push_back(request);
                    continue;
                }
                match self.requests.try_send(request) {
                    Ok(()) => {}
                    Err(TrySendError::Full(request)) => self.outbox.push_back(request),
                    Err(TrySendError::Closed(request)) => refuse(&mut self.refused, request),
                }
            }
            let Some(event) = self.refused.pop_front() else {
                return;
            };
            core.handle(now, Input::Engine(event));
        }
    }

    /// The next event: from the engine, or a refusal made here once the
    /// requests waiting in the outbox find the engine gone.
    async fn next_event(&mut self) -> EngineEvent {
        loop {
            tokio::select! {
                biased;
                event = self.events.recv() => match event {
                    Some(event) => return event,
                    // The engine task is gone: nothing will come.
                    None => std::future::pending::<()>().await,
                },
                permit = self.requests.reserve(), if !self.outbox.is_empty() => {
                    match permit {
                        Ok(permit) => {
                            if let Some(request) = self.outbox.pop_front() {
                                permit.send(request);
                            }
                            while let Some(request) = self.outbox.pop_front() {
                                match self.requests.try_send(request) {
                                    Ok(()) => {}
                                    Err(TrySendError::Full(request)) => {
                                        self.outbox.push_front(request);
                                        break;
                                    }
                                    Err(TrySendError::Closed(request)) => refuse(&mut self.refused, request),
                                }
                            }
                        }
                        Err(_) => {
                            for request in std::mem::take(&mut self.outbox) {
                                refuse(&mut self.refused, request);
                            }
                        }
                    }
                    if let Some(event) = self.refused.pop_front() {
                        return event;
                    }
                }
            }
        }
    }
}

/// The answer to a call the engine cannot take (its task stopped).
fn refuse(refused: &mut VecDeque<EngineEvent>, request: EngineRequest) {
    let error = EngineError::Unavailable("the engine task stopped".into());
    refused.extend(request.failed(error));
}
