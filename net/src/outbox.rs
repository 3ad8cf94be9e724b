//! The hand-off from the hub (the task that owns the core) to one
//! connection's session task.
//!
//! The hub never waits on a connection: it pushes frames here and moves on.
//! The queue is bounded in bytes by the core itself (slow-consumer
//! accounting closes the connection with 4008 before its backlog exceeds
//! `outbound_queue_bytes_max`), so it needs no capacity of its own.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use roomcast_core::{CloseCode, ConnectionId, TextFrame};
use tokio::sync::Notify;
use tokio::time::Instant;

/// One thing to write to the socket.
#[derive(Debug)]
pub enum Outgoing {
    /// A text frame; broadcasts carry the time their publish arrived, for
    /// the publish-to-write latency histogram.
    Text(TextFrame, Option<Instant>),
    /// A WebSocket ping.
    Ping,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Outgoing>,
    close: Option<CloseCode>,
}

/// One connection's outbound queue and close signal.
#[derive(Debug, Default)]
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the session when frames (or a close) arrive.
    pub ready: Notify,
    /// Wakes a session stuck writing to a stalled socket when it must close.
    pub closing: Notify,
    /// Bytes written to the socket and not yet reported to the core.
    written: AtomicUsize,
}

/// Where sessions post "bytes written" for the hub to collect.
///
/// Reporting every flush through the hub's channel would cost a message
/// and a wake-up per delivery; instead a session adds to its outbox's
/// counter and, when the counter was zero, lists its connection here. The
/// hub collects the list before it next feeds the core, which is the only
/// time the counts matter (the core checks backlogs when it sends).
#[derive(Debug, Default)]
pub struct WrittenBoard {
    dirty: Mutex<Vec<ConnectionId>>,
}

impl WrittenBoard {
    /// Takes the connections with unreported writes.
    pub fn drain(&self, into: &mut Vec<ConnectionId>) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *dirty, into);
    }
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every critical section is a single push or swap), so recover.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues one frame (hub side).
    pub fn push(&self, item: Outgoing) {
        let wake = {
            let mut state = self.lock();
            state.frames.push_back(item);
            state.frames.len() == 1
        };
        // Only the first frame of a batch needs a wake-up: the session drains everything.
        if wake {
            self.ready.notify_one();
        }
    }

    /// Asks the session to close with `code` after what is queued (hub side).
    pub fn close(&self, code: CloseCode) {
        self.lock().close.get_or_insert(code);
        self.ready.notify_one();
        self.closing.notify_one();
    }

    /// Reports `bytes` written to the socket (session side).
    pub fn report_written(&self, conn: ConnectionId, bytes: usize, board: &WrittenBoard) {
        if bytes > 0 && self.written.fetch_add(bytes, Ordering::AcqRel) == 0 {
            board
                .dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }

    /// Takes the unreported written bytes (hub side).
    pub fn take_written(&self) -> usize {
        self.written.swap(0, Ordering::AcqRel)
    }

    /// Takes everything queued, and the close code if one was asked for (session side).
    pub fn take(&self, into: &mut VecDeque<Outgoing>) -> Option<CloseCode> {
        let mut state = self.lock();
        std::mem::swap(&mut state.frames, into);
        state.close
    }
}
