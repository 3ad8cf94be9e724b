//! One WebSocket connection after its upgrade: the task that reads client
//! frames into the hub. Writing is the hub's job (see [`crate::writer`]).
//!
//! tungstenite parses the client's frames (masking, fragments, UTF-8, size
//! limits) and answers pings and closes by itself; what it writes lands in a
//! [`ControlSink`] and is handed to the hub, so that every byte to the
//! client goes out in one order through one writer.
//!
//! When the hub closes a connection it queues the close frame and signals
//! here; the session then gives the client `close_flush_timeout` to reply
//! before dropping the socket, or, after a close for a violation (1002,
//! 1007, 1008, 1009), lingers: reads and discards what the client still
//! sends while the hub has shut the sending side down.
//!
//! The session also counts the client's ping and pong frames against an
//! allowance (they never reach the core's rate limiter), and takes each
//! text message's share of the inbound byte budget before handing it over.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use hyper_tungstenite::tungstenite::{Error as WsError, Message};
use hyper_tungstenite::WebSocketStream;
use hyper_util::rt::TokioIo;
use roomcast_core::rate::{RateLimiter, Verdict};
use roomcast_core::{CloseCode, ConnectionId, Limits};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tracing::{debug, info};

use crate::budget::InboundBudget;
use crate::clock::Clock;
use crate::hub::HubInput;
use crate::writer::SessionSignal;

/// What tungstenite reads from and writes to: the socket's read half, and
/// a sink for the control frames it writes by itself.
pub struct ReadSide {
    read: ReadHalf<TokioIo<Upgraded>>,
    control: ControlSink,
}

/// The reading side of an upgraded socket.
pub type Socket = WebSocketStream<ReadSide>;

impl ReadSide {
    /// Wraps a read half.
    pub fn new(read: ReadHalf<TokioIo<Upgraded>>) -> ReadSide {
        ReadSide {
            read,
            control: ControlSink::default(),
        }
    }
}

/// Collects the bytes tungstenite writes (pongs, the echo of a close);
/// the session forwards them to the hub. Drained after every message (and
/// cleared while waiting for a close reply), so it holds at most one
/// message's answer.
#[derive(Default)]
pub struct ControlSink {
    bytes: BytesMut,
}

impl AsyncRead for ReadSide {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.control.bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Takes what tungstenite wrote, if anything.
fn take_control(socket: &mut Socket) -> Option<Bytes> {
    let sink = &mut socket.get_mut().control.bytes;
    (!sink.is_empty()).then(|| sink.split().freeze())
}

/// One open connection's reading side.
pub struct Session {
    /// The socket's reading side.
    pub socket: Socket,
    /// Its id.
    pub conn: ConnectionId,
    /// How the hub says it is closing the connection.
    pub signalled: oneshot::Receiver<SessionSignal>,
    /// The hub's channel.
    pub hub: mpsc::Sender<HubInput>,
    /// What every session shares: timeouts and bounds.
    pub settings: Arc<SessionSettings>,
    /// Who it is, for the logs.
    pub user_id: Option<String>,
    /// What the connection holds until it ends.
    pub _held: Held,
    /// The token bucket of the client's ping and pong frames, made at the
    /// first one (most connections never send any).
    pub control_frames: Option<Box<RateLimiter>>,
}

/// Settings shared by every session.
#[derive(Debug)]
pub struct SessionSettings {
    /// How long a closing client has to answer the close frame.
    pub close_flush_timeout: Duration,
    /// Longest linger after a close for a violation.
    pub linger: Duration,
    /// Most bytes read and discarded while lingering.
    pub linger_bytes_max: usize,
    /// The limits (the rate of the client's ping and pong frames).
    pub limits: Limits,
    /// The server's clock.
    pub clock: Clock,
    /// Bytes of client messages in flight to the hub.
    pub inbound: Arc<InboundBudget>,
    /// Set when the shutdown's drain time is over: stop waiting for close
    /// replies and lingering.
    pub stop: Arc<crate::server::Cancel>,
}

/// What a connection holds until it ends: its admission slot and its
/// place in the count that shutdown waits on.
pub struct Held {
    pub(crate) _permit: crate::server::Permit,
    pub(crate) _guard: crate::server::SessionGuard,
    /// The socket's place on its shard (placement counts it while open).
    pub(crate) seat: std::sync::Arc<crate::shards::Seat>,
}

impl Session {
    /// Runs the connection until it closes. The hub already knows it
    /// (`Open`) and holds its write half.
    ///
    /// This future lives as long as the connection, so it is kept small:
    /// inputs go to the hub with `try_send`, and only the rare waits (a
    /// full channel, the close handshake) are boxed.
    #[allow(clippy::manual_async_fn)] // see the comment inside
    pub fn run(mut self) -> impl Future<Output = ()> + Send {
        // Not an `async fn`: that would copy `self` into a local of its
        // future next to the moved-in argument, doubling its size.
        async move {
            let conn = self.conn;
            // Cleared after an oversize message: the hub is closing us with
            // 1009 and the rest of that message must not be read as new frames.
            let mut reading = true;
            let outcome = loop {
                // Decided and handed to the hub without awaiting (`try_send`),
                // so neither the message nor the input takes room in this
                // future, which lives as long as the connection.
                let step = tokio::select! {
                    biased;
                    // An error means the hub is gone (the server is stopping).
                    received = &mut self.signalled => Step::Stop(received.unwrap_or(SessionSignal::Gone)),
                    message = self.socket.next(), if reading => step(&self.hub, &self.settings, conn, message, &mut reading),
                };
                match step {
                    Step::Continue => {}
                    Step::Wait(wait) => {
                        if !wait.await {
                            break SessionSignal::Gone;
                        }
                    }
                    Step::Answered => match self.control_frame_verdict() {
                        Verdict::Allow => {
                            // tungstenite queued the pong for a ping; hand it over.
                            if !self.forward_control().await
                                || !hand_over(&self.hub, HubInput::Alive { conn })
                                    .finish()
                                    .await
                            {
                                break SessionSignal::Gone;
                            }
                        }
                        Verdict::Warn => {
                            // Over the allowance: no pong, and the hub is
                            // not bothered.
                            self.socket.get_mut().control.bytes.clear();
                        }
                        Verdict::Close => {
                            self.socket.get_mut().control.bytes.clear();
                            reading = false;
                            let abort = HubInput::Abort {
                                conn,
                                code: CloseCode::PolicyViolation,
                            };
                            if !hand_over(&self.hub, abort).finish().await {
                                break SessionSignal::Gone;
                            }
                        }
                    },
                    Step::ClientClosed => {
                        // tungstenite queued the echo of the client's close
                        // frame: deliver it so the handshake completes.
                        self.forward_control().await;
                        break SessionSignal::Gone;
                    }
                    Step::Stop(signal) => break signal,
                }
            };
            match outcome {
                SessionSignal::Closing(code) if code.lingers() => {
                    debug!(conn = %conn, code = code.code(), "lingering after a close for a violation");
                    Box::pin(self.linger()).await;
                }
                SessionSignal::Closing(code) => {
                    debug!(conn = %conn, code = code.code(), "waiting for the client's close reply");
                    Box::pin(self.await_close_reply()).await;
                }
                SessionSignal::Gone => {}
            }
            hand_over(&self.hub, HubInput::Closed { conn })
                .finish()
                .await;
            info!(conn = %conn, user = self.user_id.as_deref().unwrap_or("-"), "client disconnected");
        }
    }

    /// Hands what tungstenite wrote (a pong, a close echo) to the hub.
    async fn forward_control(&mut self) -> bool {
        let _ = self.socket.flush().await;
        match take_control(&mut self.socket) {
            Some(frame) => {
                hand_over(
                    &self.hub,
                    HubInput::Control {
                        conn: self.conn,
                        frame,
                    },
                )
                .finish()
                .await
            }
            None => true,
        }
    }

    /// Waits for the client's close reply so the close frame is not lost to
    /// a reset; whatever tungstenite wants to answer is dropped (our close
    /// frame already went out through the hub).
    async fn await_close_reply(&mut self) {
        let settings = self.settings.clone();
        let wait = timeout(settings.close_flush_timeout, async {
            while let Some(Ok(message)) = self.socket.next().await {
                // Pongs tungstenite answers meanwhile are not sent.
                self.socket.get_mut().control.bytes.clear();
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        });
        tokio::select! {
            biased; // deterministic when both are ready (simulator replay)
            _ = wait => {}
            _ = settings.stop.cancelled() => {}
        }
    }

    /// Counts one ping or pong frame from the client against its allowance.
    ///
    /// WebSocket control frames never reach the core, whose token bucket
    /// counts messages, so they get a bucket of their own here, with the
    /// same rate, burst and violation bound ([`RateLimiter`], the core's
    /// own): a client may send `messages_per_second` messages *and* as many
    /// pings. A ping over the allowance gets no pong; too many such pings
    /// close the connection with 1008, like too many messages.
    fn control_frame_verdict(&mut self) -> Verdict {
        let settings = &self.settings;
        let now_us = settings.clock.monotonic_us();
        self.control_frames
            .get_or_insert_with(|| Box::new(RateLimiter::new(&settings.limits, now_us)))
            .check(&settings.limits, now_us)
    }

    /// A lingering close: the hub writes our close frame and then shuts
    /// the sending side down (FIN); meanwhile whatever the client still
    /// sends (the rest of an oversize message, a flood) is read raw and
    /// thrown away, until the client closes its side, `linger` has passed
    /// or `linger_bytes_max` bytes were discarded. Closing a socket with
    /// unread data would make the kernel send a reset, which can destroy
    /// the close frame before the client reads it (it would see 1006).
    async fn linger(&mut self) {
        use tokio::io::AsyncReadExt;
        let settings = self.settings.clone();
        let read = &mut self.socket.get_mut().read;
        let mut buffer = vec![0u8; 16 * 1024];
        let mut discarded = 0usize;
        let wait = timeout(settings.linger, async {
            while discarded < settings.linger_bytes_max {
                match read.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => discarded += n,
                }
            }
        });
        tokio::select! {
            biased; // deterministic when both are ready (simulator replay)
            _ = wait => {}
            _ = settings.stop.cancelled() => {}
        }
        debug!(conn = %self.conn, discarded, "linger over");
    }
}

/// What is left to do after one read from the socket.
enum Step {
    /// Nothing: the input, if any, is with the hub.
    Continue,
    /// The hub's channel was full: wait until it takes the input.
    Wait(Pin<Box<dyn Future<Output = bool> + Send>>),
    /// tungstenite answered a ping (or saw a pong): forward its answer, then
    /// tell the hub the client is alive.
    Answered,
    /// The client sent a close frame.
    ClientClosed,
    /// Stop reading.
    Stop(SessionSignal),
}

/// Handles one read: inputs go to the hub at once when its channel has room.
fn step(
    hub: &mpsc::Sender<HubInput>,
    settings: &SessionSettings,
    conn: ConnectionId,
    message: Option<Result<Message, WsError>>,
    reading: &mut bool,
) -> Step {
    let input = match message {
        Some(Ok(Message::Text(text))) => match settings.inbound.try_take(text.len()) {
            Some(inbound) => HubInput::Text {
                conn,
                text,
                inbound,
            },
            // No room: refused, answered (in order) with SERVER_BUSY.
            None => HubInput::Busy {
                conn,
                id: match roomcast_core::parse::parse_request(&text) {
                    Ok(request) => request.id,
                    Err(rejection) => rejection.id,
                },
            },
        },
        Some(Ok(Message::Binary(_))) => HubInput::Binary { conn },
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Step::Answered,
        Some(Ok(Message::Frame(_))) => return Step::Continue,
        Some(Ok(Message::Close(_))) => return Step::ClientClosed,
        // The socket failed or the stream ended (without a close frame).
        Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) | None => {
            return Step::Stop(SessionSignal::Gone)
        }
        // The client broke the rules: the rest of what it sent cannot be
        // read as frames any more. The hub closes with the code; then the
        // session lingers.
        Some(Err(error)) => {
            let code = match error {
                WsError::Capacity(
                    CapacityError::MessageTooLong { .. } | CapacityError::TooManyHeaders,
                ) => CloseCode::MessageTooBig,
                WsError::Utf8(_) => CloseCode::InvalidPayload,
                WsError::Protocol(_) => CloseCode::ProtocolError,
                _ => return Step::Stop(SessionSignal::Gone),
            };
            *reading = false;
            HubInput::Abort { conn, code }
        }
    };
    match hand_over(hub, input) {
        Handover::Done(true) => Step::Continue,
        Handover::Done(false) => Step::Stop(SessionSignal::Gone),
        Handover::Wait(wait) => Step::Wait(wait),
    }
}

/// Handing an input to the hub: done at once when its channel has room
/// (the usual case), or a boxed wait when it is full, so the connection's
/// long-lived future never holds a `HubInput` across an await.
enum Handover {
    Done(bool),
    Wait(Pin<Box<dyn Future<Output = bool> + Send>>),
}

impl Handover {
    /// True once the hub has it; false when the hub is gone.
    async fn finish(self) -> bool {
        match self {
            Handover::Done(sent) => sent,
            Handover::Wait(wait) => wait.await,
        }
    }
}

fn hand_over(hub: &mpsc::Sender<HubInput>, input: HubInput) -> Handover {
    match hub.try_send(input) {
        Ok(()) => Handover::Done(true),
        Err(mpsc::error::TrySendError::Closed(_)) => Handover::Done(false),
        Err(mpsc::error::TrySendError::Full(input)) => {
            let hub = hub.clone();
            Handover::Wait(Box::pin(async move { hub.send(input).await.is_ok() }))
        }
    }
}
