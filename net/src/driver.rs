//! What the hub drives: a core with its engine, behind one small interface
//! ([`Driver`]), so the hub's loop is the same for both engines.
//!
//! - [`Standalone`] (the default): the core and the in-memory engine,
//!   answered inline; it never has an engine event to wait for.
//! - [`Remote`]: the bare core and an engine task (Redis, or one given to
//!   [`serve_with_engine`](crate::serve_with_engine)) reached over
//!   channels ([`EngineLink`]): the core's requests go out after every
//!   input, and the engine's events come back through
//!   [`Driver::next_engine_event`], which the hub awaits beside its inbox.
//!
//! The hub is generic over the driver, so the default path pays nothing
//! for the other.

use std::collections::VecDeque;
use std::future::Future;

use roomcast_core::engine::{EngineError, EngineEvent, EngineRequest};
use roomcast_core::{Core, CoreConfig, Input, Now, Output, Response, Standalone, Ticket};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::engine::EngineLink;

/// A core and its engine, as the hub drives them.
pub trait Driver: Send + 'static {
    /// Applies one input at `now` (and lets the engine hear what it must).
    fn handle(&mut self, now: Now, input: Input<'_>) -> Response;
    /// The next output for a connection.
    fn poll_output(&mut self) -> Option<Output>;
    /// The next answer to a broadcast that returned [`Response::Pending`].
    fn poll_answer(&mut self) -> Option<(Ticket, Response)>;
    /// When `handle(now, Input::Timeout)` is next needed (monotonic µs).
    fn poll_timeout(&self) -> Option<u64>;
    /// The configuration.
    fn config(&self) -> &CoreConfig;
    /// Open connections.
    fn connection_count(&self) -> usize;
    /// Rooms kept (in the engine, as far as this node knows).
    fn room_count(&self) -> usize;
    /// Rooms with local business.
    fn local_room_count(&self) -> usize;
    /// The engine's next event; never resolves for an inline engine.
    fn next_engine_event(&mut self) -> impl Future<Output = EngineEvent> + Send + '_;
    /// An engine event already waiting, if any.
    fn try_engine_event(&mut self) -> Option<EngineEvent>;
}

impl Driver for Standalone {
    fn handle(&mut self, now: Now, input: Input<'_>) -> Response {
        Standalone::handle(self, now, input)
    }
    fn poll_output(&mut self) -> Option<Output> {
        Standalone::poll_output(self)
    }
    fn poll_answer(&mut self) -> Option<(Ticket, Response)> {
        Standalone::poll_answer(self)
    }
    fn poll_timeout(&self) -> Option<u64> {
        Standalone::poll_timeout(self)
    }
    fn config(&self) -> &CoreConfig {
        Standalone::config(self)
    }
    fn connection_count(&self) -> usize {
        Standalone::connection_count(self)
    }
    fn room_count(&self) -> usize {
        Standalone::room_count(self)
    }
    fn local_room_count(&self) -> usize {
        Standalone::local_room_count(self)
    }
    fn next_engine_event(&mut self) -> impl Future<Output = EngineEvent> + Send + '_ {
        std::future::pending()
    }
    fn try_engine_event(&mut self) -> Option<EngineEvent> {
        None
    }
}

/// The bare core and an engine task. See the module docs.
pub struct Remote {
    core: Core,
    requests: mpsc::Sender<EngineRequest>,
    events: mpsc::Receiver<EngineEvent>,
    /// Requests the full channel did not take yet, sent in order first.
    outbox: VecDeque<EngineRequest>,
    /// Answers made here for calls the engine can no longer take (its
    /// task is gone), handed to the core before returning.
    refused: VecDeque<EngineEvent>,
}

impl Remote {
    /// A core driving the engine at the other end of `link`.
    pub fn new(config: CoreConfig, link: EngineLink) -> Remote {
        Remote {
            core: Core::new(config),
            requests: link.requests,
            events: link.events,
            outbox: VecDeque::new(),
            refused: VecDeque::new(),
        }
    }

    /// Sends the core's requests, and hands it any refusals, until quiet.
    fn pump(&mut self, now: Now) {
        loop {
            while let Some(request) = self.core.poll_engine() {
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
            self.core.handle(now, Input::Engine(event));
        }
    }
}

/// The answer to a call the engine cannot take.
fn refuse(refused: &mut VecDeque<EngineEvent>, request: EngineRequest) {
    let error = || EngineError::Unavailable("the engine task stopped".into());
    let event = match request {
        EngineRequest::Append { call, .. } => EngineEvent::Appended {
            call,
            result: Err(error()),
            peer_members: 0,
        },
        EngineRequest::Read { call, .. } => EngineEvent::Read {
            call,
            result: Err(error()),
        },
        EngineRequest::PresenceList { call, .. } => EngineEvent::Presence {
            call,
            result: Err(error()),
        },
        _ => return,
    };
    refused.push_back(event);
}

impl Driver for Remote {
    fn handle(&mut self, now: Now, input: Input<'_>) -> Response {
        let response = self.core.handle(now, input);
        self.pump(now);
        response
    }
    fn poll_output(&mut self) -> Option<Output> {
        self.core.poll_output()
    }
    fn poll_answer(&mut self) -> Option<(Ticket, Response)> {
        self.core.poll_answer()
    }
    fn poll_timeout(&self) -> Option<u64> {
        self.core.poll_timeout()
    }
    fn config(&self) -> &CoreConfig {
        self.core.config()
    }
    fn connection_count(&self) -> usize {
        self.core.connection_count()
    }
    fn room_count(&self) -> usize {
        self.core.room_count()
    }
    fn local_room_count(&self) -> usize {
        self.core.room_count()
    }
    async fn next_engine_event(&mut self) -> EngineEvent {
        {
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
    fn try_engine_event(&mut self) -> Option<EngineEvent> {
        self.refused
            .pop_front()
            .or_else(|| self.events.try_recv().ok())
    }
}
