//! The engine calls part of [`Core`]: the requests for the engine in the
//! order decided, the calls awaiting their answer (each with what it was
//! for), the publishes awaiting their appends, and the answers to the
//! caller's broadcasts. What an answer means is the handlers' (`stream`,
//! `publishing`, `presence_diffs`, `client_messages`); this part keeps the calls,
//! their ids and the publishes' counts in step.

use std::collections::{BTreeMap, VecDeque};

use crate::config::{BroadcastAnswer, Ticket};
use crate::engine::{CallId, EngineError, EngineRequest, Epoch};
#[cfg(any(test, feature = "testing"))]
use crate::invariants::Broken;
use crate::machine::Core;
use crate::names::{ConnectionId, RoomName};
use crate::parse::RequestId;

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
pub(crate) type AppendOutcome = Result<(Epoch, u64, u64), EngineError>;

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

/// The engine conversation of one core.
#[derive(Debug, Default)]
pub(crate) struct EngineCalls {
    /// Requests for the engine, in the order decided.
    requests: VecDeque<EngineRequest>,
    /// Engine calls awaiting their answer.
    calls: BTreeMap<CallId, Call>,
    next_call: u64,
    /// Publishes awaiting their appends, by number.
    publishes: BTreeMap<u64, PendingPublish>,
    next_publish: u64,
    /// Answers to the caller's pending broadcasts.
    answers: VecDeque<(Ticket, BroadcastAnswer)>,
}

impl EngineCalls {
    /// Queues a request that expects no answer (or whose call was made
    /// with [`call`](Self::call)).
    pub(crate) fn push(&mut self, request: EngineRequest) {
        self.requests.push_back(request);
    }

    pub(crate) fn poll_request(&mut self) -> Option<EngineRequest> {
        self.requests.pop_front()
    }

    /// A fresh correlation id for an engine call.
    pub(crate) fn call(&mut self, call: Call) -> CallId {
        self.next_call += 1;
        let id = CallId(self.next_call);
        self.calls.insert(id, call);
        id
    }

    pub(crate) fn get(&self, call: CallId) -> Option<&Call> {
        self.calls.get(&call)
    }

    /// The call `call` was for, now answered.
    pub(crate) fn take(&mut self, call: CallId) -> Option<Call> {
        self.calls.remove(&call)
    }

    /// Calls awaiting their answer.
    pub(crate) fn in_flight(&self) -> usize {
        self.calls.len()
    }

    /// Every call in flight, in id order.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn calls(&self) -> impl Iterator<Item = &Call> {
        self.calls.values()
    }

    /// The ticket the next publish will have.
    pub(crate) fn next_ticket(&self) -> Ticket {
        Ticket(self.next_publish + 1)
    }

    /// A fresh publish number.
    pub(crate) fn new_publish(&mut self) -> u64 {
        self.next_publish += 1;
        self.next_publish
    }

    pub(crate) fn insert_publish(&mut self, number: u64, pending: PendingPublish) {
        self.publishes.insert(number, pending);
    }

    pub(crate) fn publish_mut(&mut self, number: u64) -> Option<&mut PendingPublish> {
        self.publishes.get_mut(&number)
    }

    pub(crate) fn remove_publish(&mut self, number: u64) -> Option<PendingPublish> {
        self.publishes.remove(&number)
    }

    /// Answers the broadcast `ticket` names.
    pub(crate) fn answer(&mut self, ticket: Ticket, answer: BroadcastAnswer) {
        self.answers.push_back((ticket, answer));
    }

    pub(crate) fn poll_answer(&mut self) -> Option<(Ticket, BroadcastAnswer)> {
        self.answers.pop_front()
    }

    /// The answer to `ticket`, taken out of order (a driver that answers
    /// the engine inline, [`crate::Standalone`]).
    pub(crate) fn take_answer(&mut self, ticket: Ticket) -> Option<BroadcastAnswer> {
        let at = self.answers.iter().position(|(t, _)| *t == ticket)?;
        self.answers.remove(at).map(|(_, answer)| answer)
    }

    /// The part's invariants: the calls in flight within `calls_max`, and
    /// one append in flight per room a publish still awaits.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn check(&self, calls_max: usize) -> Result<(), Broken> {
        if self.calls.len() > calls_max {
            return Err(format!(
                "{} engine calls in flight, over the bound",
                self.calls.len()
            )
            .into());
        }
        let appends = self
            .calls
            .values()
            .filter(|c| matches!(c, Call::Append { .. }))
            .count();
        let awaited: usize = self.publishes.values().map(|p| p.outstanding).sum();
        if appends != awaited {
            return Err(
                format!("{appends} appends in flight, {awaited} awaited by publishes").into(),
            );
        }
        Ok(())
    }
}

impl Core {
    /// The answer to `ticket`, taken out of order (see
    /// [`EngineCalls::take_answer`]).
    pub(crate) fn take_answer(&mut self, ticket: Ticket) -> Option<BroadcastAnswer> {
        self.engine.take_answer(ticket)
    }
}
