//! Reply order: the part of a connection that keeps its replies in the
//! order of its messages.
//!
//! While one of a connection's requests waits (for the engine: a join
//! that needs a read, a publish, a presence list; or for a check the
//! shell makes off the hub: a refresh's token, the join hook), its later
//! messages wait here, in a [`ReplyQueue`], and run in order once the
//! wait ends ([`Core::resume`]). A message that is refused instead of run
//! (`Input::Busy`: `SERVER_BUSY`; one past `engine_deferred_messages_max`:
//! `RATE_LIMITED`) is answered *in its place* too: its answer waits in the
//! same queue behind the replies before it.
//!
//! Everything that starts, ends or lifts a wait is here; the handlers
//! (`client_messages`, `rooms`, `publishing`, `checks`) only say when a
//! request starts or stops waiting.

use std::collections::VecDeque;

use crate::codes::{CloseCode, ErrorCode};
use crate::envelope;
use crate::machine::Core;
use crate::names::ConnectionId;
use crate::parse::{parse_request, RequestId};
use crate::rate::Verdict;
use crate::time::Now;

/// A connection's messages waiting behind its request that waits, in
/// arrival order.
#[derive(Debug, Default)]
pub(crate) struct ReplyQueue {
    queue: VecDeque<Waiting>,
    /// How many entries of `queue` are [`Waiting::Run`] (the bound
    /// `engine_deferred_messages_max` counts these).
    runs: usize,
}

/// One message waiting for its turn.
#[derive(Debug)]
enum Waiting {
    /// Run it in its turn: its text (`None` for a binary frame) and the
    /// rate limiter's verdict at arrival (the allowance is about when
    /// messages arrive, not when they run).
    Run {
        text: Option<String>,
        verdict: Verdict,
    },
    /// Not run: answered with `code` (`SERVER_BUSY`, `RATE_LIMITED`) in
    /// its turn, echoing its id.
    Refused {
        code: ErrorCode,
        id: Option<RequestId>,
    },
}

impl ReplyQueue {
    /// Messages waiting that will run.
    pub(crate) fn runs(&self) -> usize {
        self.runs
    }

    /// Messages waiting only for their refusal.
    pub(crate) fn refusals(&self) -> usize {
        self.queue.len() - self.runs
    }

    fn push(&mut self, waiting: Waiting) {
        if matches!(waiting, Waiting::Run { .. }) {
            self.runs += 1;
        }
        self.queue.push_back(waiting);
    }

    fn pop(&mut self) -> Option<Waiting> {
        let next = self.queue.pop_front()?;
        if matches!(next, Waiting::Run { .. }) {
            self.runs -= 1;
        }
        Some(next)
    }

    /// Puts `rest` (the queue of an earlier wait) behind this one.
    fn append(&mut self, rest: ReplyQueue) {
        self.runs += rest.runs;
        self.queue.extend(rest.queue);
    }
}

/// The queue taken off a connection while something runs in its turn
/// ([`Core::lift_wait`]); boxed as it is stored.
#[allow(clippy::box_collection)]
pub(crate) type Lifted = Option<Box<ReplyQueue>>;

impl Core {
    /// A message from the client: run now, or queued behind a request
    /// that waits.
    pub(crate) fn client_message(&mut self, now: Now, conn: ConnectionId, text: Option<&str>) {
        let Some(connection) = self.conns.get_mut(conn) else {
            return;
        };
        connection.last_heard_us = now.monotonic_us;
        let verdict = connection
            .limiter
            .check(&self.config.limits, now.monotonic_us);
        if connection.waiting.is_none() {
            return self.run_message(now, conn, text, verdict);
        }
        if verdict == Verdict::Close {
            // Closing needs no reply order.
            return self.close(conn, Some(CloseCode::PolicyViolation));
        }
        let waiting = Waiting::Run {
            text: text.map(str::to_owned),
            verdict,
        };
        self.enqueue(conn, waiting, || {
            text.and_then(|t| match parse_request(t) {
                Ok(request) => request.id,
                Err(rejection) => rejection.id,
            })
        });
    }

    /// A message the shell refused (`Input::Busy`): answered `SERVER_BUSY`
    /// now, or in its turn behind a request that waits.
    pub(crate) fn busy_message(&mut self, now: Now, conn: ConnectionId, id: Option<RequestId>) {
        let Some(connection) = self.conns.get_mut(conn) else {
            return;
        };
        connection.last_heard_us = now.monotonic_us;
        if connection.waiting.is_none() {
            return self.answer_refused(now, conn, ErrorCode::ServerBusy, id.as_ref());
        }
        let refused = Waiting::Refused {
            code: ErrorCode::ServerBusy,
            id,
        };
        self.enqueue(conn, refused, || None);
    }

    /// Queues a message behind the connection's wait (which the caller
    /// checked). Past `engine_deferred_messages_max` messages to run, a
    /// further one is refused `RATE_LIMITED` (its id from `id_of`), in its
    /// place; past as many refusals as well, the client keeps sending
    /// although told to slow down, and is closed with 1008 (so the queue
    /// stays bounded whatever it sends).
    fn enqueue(
        &mut self,
        conn: ConnectionId,
        waiting: Waiting,
        id_of: impl FnOnce() -> Option<RequestId>,
    ) {
        let max = self.config.limits.engine_deferred_messages_max;
        let Some(queue) = self.conns.get_mut(conn).and_then(|c| c.waiting.as_mut()) else {
            self.impossible("a message queued behind no wait");
            return;
        };
        let waiting = match waiting {
            Waiting::Run { .. } if queue.runs() >= max => Waiting::Refused {
                code: ErrorCode::RateLimited,
                id: id_of(),
            },
            other => other,
        };
        if matches!(waiting, Waiting::Refused { .. }) && queue.refusals() >= max {
            return self.close(conn, Some(CloseCode::PolicyViolation));
        }
        queue.push(waiting);
    }

    /// The answer to a message refused instead of run.
    fn answer_refused(
        &mut self,
        now: Now,
        conn: ConnectionId,
        code: ErrorCode,
        id: Option<&RequestId>,
    ) {
        let Some(slot) = self.conns.slot(conn) else {
            return;
        };
        let message = match code {
            ErrorCode::ServerBusy => "the server is busy: message not executed; retry later",
            _ => "too many messages waiting behind an unanswered request; slow down",
        };
        let frame = envelope::error(now.unix_ms, code, message, id);
        self.send(slot, frame);
    }

    /// Makes the connection wait (for the engine or a check): its next
    /// messages queue until [`finish_waiting`](Self::finish_waiting).
    pub(crate) fn start_waiting(&mut self, conn: ConnectionId) {
        let Some(connection) = self.conns.get_mut(conn) else {
            return;
        };
        if connection.waiting.is_some() {
            // One wait at a time: the queued messages stay.
            self.impossible("two waits for one connection");
            return;
        }
        connection.waiting = Some(Box::default());
    }

    /// Ends the connection's wait; its queued messages run once the
    /// current input is done ([`Core::handle`] calls [`resume`](Self::resume)).
    pub(crate) fn finish_waiting(&mut self, conn: ConnectionId) {
        if self.conns.get(conn).is_some_and(|c| c.waiting.is_some()) {
            self.conns.push_resumable(conn);
        }
    }

    /// Lifts the connection's wait so that one thing (an answer, a queued
    /// message) runs in its turn; [`restore_wait`](Self::restore_wait)
    /// puts the rest back behind whatever that started waiting for.
    pub(crate) fn lift_wait(&mut self, conn: ConnectionId) -> Lifted {
        self.conns.get_mut(conn).and_then(|c| c.waiting.take())
    }

    /// Puts back what [`lift_wait`](Self::lift_wait) took: behind a new
    /// wait if what ran waits again, else as the queue to resume (with
    /// `resume_later`, scheduled for [`resume`](Self::resume)). `false`
    /// when the connection waits again or is gone.
    pub(crate) fn restore_wait(
        &mut self,
        conn: ConnectionId,
        rest: Lifted,
        resume_later: bool,
    ) -> bool {
        let Some(connection) = self.conns.get_mut(conn) else {
            return false; // closed meanwhile (a slow consumer, 1008)
        };
        match (connection.waiting.as_mut(), rest) {
            // Waiting again: the rest stays queued behind it.
            (Some(again), Some(rest)) => {
                again.append(*rest);
                false
            }
            (Some(_), None) => false,
            (None, rest) => {
                connection.waiting = rest;
                if resume_later {
                    self.finish_waiting(conn);
                }
                true
            }
        }
    }

    /// Runs queued messages in order until one waits again.
    pub(crate) fn resume(&mut self, conn: ConnectionId) {
        loop {
            let now = self.now;
            let Some(connection) = self.conns.get_mut(conn) else {
                return;
            };
            let Some(queue) = connection.waiting.as_mut() else {
                return;
            };
            let Some(next) = queue.pop() else {
                connection.waiting = None;
                return;
            };
            let rest = self.lift_wait(conn);
            match next {
                Waiting::Refused { code, id } => self.answer_refused(now, conn, code, id.as_ref()),
                Waiting::Run { text, verdict } => {
                    self.run_message(now, conn, text.as_deref(), verdict)
                }
            }
            if !self.restore_wait(conn, rest, false) {
                return;
            }
        }
    }
}
