//! The hub's side of every socket: frames are written straight into each
//! connection's socket by the hub, the task that owns the core.
//!
//! Why the hub writes, not the connection's own task: on loopback the cost
//! of a delivery is one `write` on the socket plus whatever it takes to get
//! there. Handing each frame to a per-connection task costs a wake-up and a
//! scheduling round per delivery, more than the rest of the shell together.
//! Here a broadcast's frame is serialized once by the core (shared
//! [`Bytes`]); the hub prefixes the 2–10 byte WebSocket header on the stack
//! and gathers every frame a connection has queued into one write: copied
//! into one stack buffer when small, vectored (header and shared payload
//! slices) when large.
//!
//! A socket that cannot take everything keeps the rest queued here. Its
//! write readiness is registered with a per-connection waker that lists the
//! connection in [`Writable`] and wakes the hub, which then retries just that
//! connection. The queue is bounded by the core's slow-consumer accounting
//! (text frames) and by [`CONTROL_QUEUE_MAX`] (pongs and close echoes).

use std::collections::VecDeque;
use std::io::{Cursor, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use hyper::upgrade::Upgraded;
use hyper_tungstenite::tungstenite::protocol::frame::coding::{
    CloseCode as WsCloseCode, Data, OpCode,
};
use hyper_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use hyper_tungstenite::tungstenite::protocol::CloseFrame;
use hyper_util::rt::TokioIo;
use roomcast_core::{CloseCode, ConnectionId, TextFrame};
use tokio::io::{AsyncWrite, WriteHalf};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// The write half of an upgraded connection.
pub type WriteIo = WriteHalf<TokioIo<Upgraded>>;

/// Most frames gathered into one write (two slices each).
const FRAMES_PER_WRITE: usize = 32;

/// Writes up to this size are copied into one buffer instead of vectored.
const COPY_MAX: usize = 2048;

/// Most bytes of control frames (pongs, close echoes) a connection may have
/// unwritten; beyond it the client is not reading and is closed with 4008.
pub const CONTROL_QUEUE_MAX: usize = 64 * 1024;

/// What the hub tells a connection's reading task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionSignal {
    /// The close frame with this code is queued: wait for the client's reply.
    Closing(CloseCode),
    /// The connection is over (a write failed, the client closed, the hub
    /// is gone): stop without a close handshake.
    Gone,
}

/// One queued frame.
#[derive(Debug)]
struct Chunk {
    /// Payload of a text frame, or a whole pre-built frame.
    bytes: Bytes,
    /// True for a text frame (header built at write time); false for a
    /// pre-built control frame.
    text: bool,
    /// True for a text frame the core queued (its bytes are reported back
    /// to the core as written); false for frames the shell made, which
    /// count against [`CONTROL_QUEUE_MAX`] instead.
    counted: bool,
    /// Bytes of header + payload already written. Frames stay far below
    /// 4 GiB: the core refuses any larger than `outbound_queue_bytes_max`,
    /// which configuration caps at 1 GiB.
    sent: u32,
}

impl Chunk {
    /// Length of [`Chunk::header`] (RFC 6455 section 5.2 length forms),
    /// without building it.
    fn header_len(&self) -> usize {
        match (self.text, self.bytes.len()) {
            (false, _) => 0,
            (true, 0..=125) => 2,
            (true, 126..=65_535) => 4,
            (true, _) => 10,
        }
    }

    /// The WebSocket header this chunk needs before its bytes.
    fn header(&self, into: &mut [u8; 10]) -> usize {
        if !self.text {
            return 0;
        }
        let header = FrameHeader {
            opcode: OpCode::Data(Data::Text),
            ..FrameHeader::default()
        };
        let mut cursor = Cursor::new(&mut into[..]);
        // Ten bytes always hold a server (unmasked) frame header.
        let _ = header.format(self.bytes.len() as u64, &mut cursor);
        cursor.position() as usize
    }
}

/// A connection's queued frames. The first one is held inline: most
/// connections have at most one frame waiting at a time, and an idle
/// connection should not keep a heap buffer for it.
#[derive(Debug, Default)]
struct Queue {
    first: Option<Chunk>,
    rest: VecDeque<Chunk>,
}

impl Queue {
    fn push(&mut self, chunk: Chunk) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(chunk);
        } else {
            self.rest.push_back(chunk);
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest.is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn iter(&self) -> impl Iterator<Item = &Chunk> {
        self.first.iter().chain(self.rest.iter())
    }

    fn front_mut(&mut self) -> Option<&mut Chunk> {
        match self.first {
            Some(ref mut chunk) => Some(chunk),
            None => self.rest.front_mut(),
        }
    }

    fn pop_front(&mut self) {
        if self.first.take().is_none() {
            self.rest.pop_front();
        }
    }

    /// A burst grew the buffer; once it drains, an idle connection should
    /// not keep it.
    fn release_if_drained(&mut self) {
        if self.rest.is_empty() && self.rest.capacity() > 64 {
            self.rest = VecDeque::new();
        }
    }
}

/// What a flush achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Payload bytes of text frames that left completely (for the core).
    pub text_bytes: usize,
    /// Text frames that left completely.
    pub frames: u64,
    /// Write calls that took bytes (one per vectored write: several frames
    /// each when the queue held several).
    pub writes: u64,
    /// The socket failed; the connection is finished.
    pub failed: bool,
    /// The socket did not take everything (it pushed back): the rest waits
    /// for its write readiness.
    pub blocked: bool,
}

/// The hub's handle on one connection's socket.
///
/// Generic over the write half only so tests can drive it with a socket
/// that takes a few bytes at a time; the server always uses [`WriteIo`].
pub struct ConnWriter<W = WriteIo> {
    io: W,
    queue: Queue,
    control_bytes: usize,
    /// Set while a write is pending on socket readiness.
    blocked: bool,
    /// When the oldest broadcast queued since the last write was published
    /// (publish-to-write histogram).
    oldest_publish: Option<Instant>,
    /// Listed in the hub's queue of writers to flush (lists it once).
    listed: bool,
    /// Registers this connection's write readiness with the hub.
    waker: Option<Waker>,
    signal: Option<oneshot::Sender<SessionSignal>>,
    /// Where the sending side is in its life.
    stage: Stage,
    /// Set when the hub closed the connection (its metric is counted then),
    /// whatever the stage was.
    closed_by_server: bool,
}

/// Where a connection's sending side is in its life. It only moves
/// forward: `Open` → `Closing` → `ShutDown`, and to `Failed` from any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Frames are queued and written.
    Open,
    /// A close frame (ours or the echo of the client's) is queued: nothing
    /// is queued after it. `linger` is set by a close for a violation
    /// ([`CloseCode::lingers`]): once the close frame is written, the
    /// sending side is shut down (FIN) while the reading task reads and
    /// discards what the client still sends.
    Closing {
        /// Shut the sending side down once the queue is written.
        linger: bool,
    },
    /// The lingering close's frame is out and the sending side shut down.
    ShutDown,
    /// A write failed: the queue is dropped, nothing more is written.
    Failed,
}

impl<W: AsyncWrite + Unpin> ConnWriter<W> {
    /// Wraps a connection's write half; `signal` reaches its reading task.
    pub fn new(io: W, signal: oneshot::Sender<SessionSignal>) -> ConnWriter<W> {
        ConnWriter {
            io,
            queue: Queue::default(),
            control_bytes: 0,
            blocked: false,
            oldest_publish: None,
            listed: false,
            waker: None,
            signal: Some(signal),
            stage: Stage::Open,
            closed_by_server: false,
        }
    }

    /// Queues a text frame.
    pub fn push_text(&mut self, frame: TextFrame) {
        if self.stage != Stage::Open {
            return;
        }
        self.queue.push(Chunk {
            bytes: frame.into_bytes(),
            text: true,
            counted: true,
            sent: 0,
        });
    }

    /// Queues a WebSocket ping.
    pub fn push_ping(&mut self) {
        self.push_control(Bytes::from_static(&[0x89, 0x00]));
    }

    /// Queues control frames the reading side produced (pongs, the echo of
    /// the client's close). Returns false when too many are unwritten.
    pub fn push_control(&mut self, frame: Bytes) -> bool {
        if self.stage != Stage::Open {
            return true;
        }
        // The echo of the client's close ends the stream like our own close
        // frame: nothing may follow it (RFC 6455 section 5.5.1).
        let is_close = frame.first().is_some_and(|b| b & 0x0f == 0x8);
        self.control_bytes += frame.len();
        self.queue.push(Chunk {
            bytes: frame,
            text: false,
            counted: false,
            sent: 0,
        });
        if is_close {
            self.stage = Stage::Closing { linger: false };
            // The reading task already knows: it is the one that saw the close.
            self.signal = None;
        }
        self.control_bytes <= CONTROL_QUEUE_MAX
    }

    /// Queues the close frame with `code` after everything already queued
    /// (the errors that explain a close come just before it), and tells the
    /// reading task to wait for the client's reply. A client that does not
    /// read gets neither; its reading task gives up after
    /// `close_flush_timeout` and the socket is dropped.
    pub fn close(&mut self, code: CloseCode) {
        self.closed_by_server = true;
        if self.stage != Stage::Open {
            return;
        }
        self.stage = Stage::Closing {
            linger: code.lingers(),
        };
        let mut frame = Vec::with_capacity(4 + code.reason().len());
        let close = Frame::close(Some(CloseFrame {
            code: WsCloseCode::from(code.code()),
            reason: code.reason().into(),
        }));
        // Formatting into a Vec cannot fail.
        let _ = close.format(&mut frame);
        self.queue.push(Chunk {
            bytes: Bytes::from(frame),
            text: false,
            counted: false,
            sent: 0,
        });
        if let Some(signal) = self.signal.take() {
            let _ = signal.send(SessionSignal::Closing(code));
        }
    }

    /// Notes that a broadcast published at `at` was queued (the oldest
    /// since the last write is kept).
    pub fn note_publish(&mut self, at: Instant) {
        self.oldest_publish.get_or_insert(at);
    }

    /// The oldest broadcast queued since the last call, if any.
    pub fn take_oldest_publish(&mut self) -> Option<Instant> {
        self.oldest_publish.take()
    }

    /// Marks the writer as listed in the hub's flush queue; false when it
    /// already was (the hub lists each writer once).
    pub fn list(&mut self) -> bool {
        !std::mem::replace(&mut self.listed, true)
    }

    /// The hub took the writer off its flush queue.
    pub fn unlist(&mut self) {
        self.listed = false;
    }

    /// Whether the hub asked this connection to close.
    pub fn closed_by_server(&self) -> bool {
        self.closed_by_server
    }

    /// The socket signalled write readiness: the next flush tries again.
    pub fn writable(&mut self) {
        self.blocked = false;
    }

    /// Whether something is queued (or the sending side is due to be shut
    /// down) and no readiness wait is pending.
    pub fn wants_flush(&self) -> bool {
        (!self.queue.is_empty() || self.shutdown_due())
            && !self.blocked
            && self.stage != Stage::Failed
    }

    /// Whether the lingering close's frame is written and the sending side
    /// still needs its shutdown.
    fn shutdown_due(&self) -> bool {
        self.stage == Stage::Closing { linger: true } && self.queue.is_empty()
    }

    /// Whether the sending side was shut down after a lingering close.
    #[cfg(test)]
    pub fn is_shut_down(&self) -> bool {
        self.stage == Stage::ShutDown
    }

    /// Where the sending side is.
    #[cfg(test)]
    pub(crate) fn stage(&self) -> Stage {
        self.stage
    }

    /// Writes as much of the queue as the socket takes now. When it takes
    /// less, readiness is registered with `waker` (which lists `conn` in
    /// `writable` and wakes the hub).
    pub fn flush(&mut self, conn: ConnectionId, writable: &Arc<Writable>) -> Flushed {
        self.blocked = false;
        let mut done = Flushed::default();
        if self.stage == Stage::Failed {
            return done;
        }
        // The fast path needs no waker: a write that completes registers
        // nothing. Only when the socket is full is the real waker created
        // (once per connection) and the write polled again with it.
        let mut registered = false;
        while !self.queue.is_empty() || self.shutdown_due() {
            let waker = if registered {
                self.waker
                    .get_or_insert_with(|| writable.waker_for(conn))
                    .clone()
            } else {
                Waker::noop().clone()
            };
            let mut cx = Context::from_waker(&waker);
            if self.queue.is_empty() {
                // The close frame is out: send FIN, keep the socket open
                // for reading (the reading task lingers).
                match Pin::new(&mut self.io).poll_shutdown(&mut cx) {
                    Poll::Ready(_) => self.stage = Stage::ShutDown,
                    Poll::Pending if registered => {
                        self.blocked = true;
                        return done;
                    }
                    Poll::Pending => registered = true,
                }
                continue;
            }
            match self.write_some(&mut cx, writable.gather_max) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.fail();
                    done.failed = true;
                    return done;
                }
                Poll::Ready(Ok(written)) => {
                    done.writes += 1;
                    self.advance(written, &mut done);
                }
                Poll::Pending if registered => {
                    self.blocked = true;
                    done.blocked = true;
                    return done;
                }
                Poll::Pending => registered = true,
            }
        }
        done
    }

    /// One write of the queue's head.
    /// Gathers frames up to `gather_max` bytes (always at least one).
    fn write_some(
        &mut self,
        cx: &mut Context<'_>,
        gather_max: usize,
    ) -> Poll<std::io::Result<usize>> {
        let mut headers = [[0u8; 10]; FRAMES_PER_WRITE];
        let mut header_lens = [0usize; FRAMES_PER_WRITE];
        let mut count = 0;
        let mut gathered = 0;
        for chunk in self.queue.iter().take(FRAMES_PER_WRITE) {
            let header_len = chunk.header(&mut headers[count]);
            gathered += header_len + chunk.bytes.len() - chunk.sent as usize;
            if count > 0 && gathered > gather_max {
                break;
            }
            header_lens[count] = header_len;
            count += 1;
        }
        let mut slices: [IoSlice<'_>; 2 * FRAMES_PER_WRITE] =
            [IoSlice::new(&[]); 2 * FRAMES_PER_WRITE];
        let mut used = 0;
        for (i, chunk) in self.queue.iter().take(count).enumerate() {
            let header = &headers[i][..header_lens[i]];
            let mut skip = chunk.sent as usize;
            if skip < header.len() {
                slices[used] = IoSlice::new(&header[skip..]);
                used += 1;
                skip = 0;
            } else {
                skip -= header.len();
            }
            slices[used] = IoSlice::new(&chunk.bytes[skip..]);
            used += 1;
        }
        let slices = &slices[..used];
        let total: usize = slices.iter().map(|s| s.len()).sum();
        if total <= COPY_MAX {
            // Small writes (a reply, a broadcast or a few) go out as one
            // plain buffer: copying a few hundred bytes costs less than
            // the kernel's `writev` bookkeeping (about 10% per ping/pong,
            // measured with alternating runs; see docs/benchmarks.md).
            let mut buffer = [0u8; COPY_MAX];
            let mut at = 0;
            for slice in slices {
                buffer[at..at + slice.len()].copy_from_slice(slice);
                at += slice.len();
            }
            return Pin::new(&mut self.io).poll_write(cx, &buffer[..total]);
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, slices)
    }

    /// Drops what `written` bytes completed from the queue's head.
    fn advance(&mut self, mut written: usize, done: &mut Flushed) {
        while written > 0 {
            let Some(chunk) = self.queue.front_mut() else {
                return;
            };
            let total = chunk.header_len() + chunk.bytes.len();
            let left = total - chunk.sent as usize;
            if written < left {
                chunk.sent += written as u32;
                return;
            }
            written -= left;
            if chunk.counted {
                done.text_bytes += chunk.bytes.len();
                done.frames += 1;
            } else {
                self.control_bytes = self.control_bytes.saturating_sub(chunk.bytes.len());
            }
            self.queue.pop_front();
        }
        self.queue.release_if_drained();
    }

    fn fail(&mut self) {
        self.stage = Stage::Failed;
        self.queue = Queue::default();
        if let Some(signal) = self.signal.take() {
            let _ = signal.send(SessionSignal::Gone);
        }
    }
}

/// Connections whose sockets became writable, and the hub waiting for them.
pub struct Writable {
    ready: Mutex<Vec<ConnectionId>>,
    hub: AtomicWaker,
    /// Most bytes of queued frames gathered into one write
    /// (`limits.write_buffer_bytes`).
    gather_max: usize,
}

impl Writable {
    /// For writers that gather up to `gather_max` bytes per write.
    pub fn new(gather_max: usize) -> Writable {
        Writable {
            ready: Mutex::default(),
            hub: AtomicWaker::new(),
            gather_max,
        }
    }

    fn waker_for(self: &Arc<Self>, conn: ConnectionId) -> Waker {
        Waker::from(Arc::new(ConnWaker {
            conn,
            writable: self.clone(),
        }))
    }

    /// Moves the connections listed so far into `into`, without waiting.
    pub fn take(&self, into: &mut Vec<ConnectionId>) {
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        into.append(&mut ready);
    }

    /// Waits until some connection is listed, then moves the list into `into`.
    pub async fn wait(&self, into: &mut Vec<ConnectionId>) {
        std::future::poll_fn(|cx| {
            self.hub.register(cx.waker());
            let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
            if ready.is_empty() {
                return Poll::Pending;
            }
            into.append(&mut ready);
            Poll::Ready(())
        })
        .await
    }
}

/// Wakes the hub for one connection's socket.
struct ConnWaker {
    conn: ConnectionId,
    writable: Arc<Writable>,
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.writable
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.conn);
        self.writable.hub.wake();
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
