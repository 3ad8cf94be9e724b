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
//! before dropping the socket.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_tungstenite::tungstenite::error::CapacityError;
use hyper_tungstenite::tungstenite::{Error as WsError, Message};
use hyper_tungstenite::WebSocketStream;
use hyper_util::rt::TokioIo;
use roomcast_core::{CloseCode, ConnectionId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tracing::debug;

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
/// the session forwards them to the hub. Bounded by tungstenite's
/// `max_write_buffer_size` per write and drained after every message.
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

/// Runs one connection until it closes. The hub already knows it (`Open`)
/// and holds its write half; `signal` is how the hub says it is closing.
pub async fn run(
    mut socket: Socket,
    conn: ConnectionId,
    mut signal: oneshot::Receiver<SessionSignal>,
    hub: mpsc::Sender<HubInput>,
    close_flush_timeout: Duration,
) {
    // Cleared after an oversize message: the hub is closing us with 1009 and
    // the rest of that message must not be read as new frames.
    let mut reading = true;
    let outcome = loop {
        tokio::select! {
            biased;
            // An error means the hub is gone (the server is stopping).
            received = &mut signal => break received.unwrap_or(SessionSignal::Failed),
            message = socket.next(), if reading => {
                let input = match message {
                    Some(Ok(Message::Text(text))) => HubInput::Text { conn, text },
                    Some(Ok(Message::Binary(_))) => HubInput::Binary { conn },
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        // tungstenite queued the pong for a ping; hand it over.
                        let _ = socket.flush().await;
                        if let Some(frame) = take_control(&mut socket) {
                            if hub.send(HubInput::Control { conn, frame }).await.is_err() {
                                break SessionSignal::Failed;
                            }
                        }
                        HubInput::Alive { conn }
                    }
                    Some(Ok(Message::Frame(_))) => continue,
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. })))
                    | Some(Err(WsError::Capacity(CapacityError::TooManyHeaders))) => {
                        reading = false;
                        HubInput::Abort { conn, code: CloseCode::MessageTooBig }
                    }
                    Some(Ok(Message::Close(_))) => {
                        // tungstenite queued the echo of the client's close
                        // frame: deliver it so the handshake completes.
                        let _ = socket.flush().await;
                        if let Some(frame) = take_control(&mut socket) {
                            let _ = hub.send(HubInput::Control { conn, frame }).await;
                        }
                        break SessionSignal::Failed;
                    }
                    // The socket failed or the stream ended.
                    Some(Err(_)) | None => break SessionSignal::Failed,
                };
                if hub.send(input).await.is_err() {
                    break SessionSignal::Failed;
                }
            }
        }
    };
    if let SessionSignal::Closing(code) = outcome {
        debug!(conn = %conn, code = code.code(), "waiting for the client's close reply");
        // Wait for the client's close reply so the close frame is not lost
        // to a reset; whatever tungstenite wants to answer is dropped (our
        // close frame already went out through the hub).
        let _ = timeout(close_flush_timeout, async {
            while let Some(Ok(message)) = socket.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    let _ = hub.send(HubInput::Closed { conn }).await;
}
