//! One WebSocket connection after its upgrade: a single task that reads
//! client frames into the hub and writes the outbox's frames to the socket.
//!
//! Writes are batched: everything queued is fed to the socket, then flushed
//! once, then reported to the core as written (slow-consumer accounting).
//! When the core decides to close, the session writes the close frame and
//! gives the client `close_flush_timeout` to take it before dropping the
//! socket.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_tungstenite::tungstenite::error::CapacityError;
use hyper_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use hyper_tungstenite::tungstenite::protocol::CloseFrame;
use hyper_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use hyper_tungstenite::WebSocketStream;
use hyper_util::rt::TokioIo;
use roomcast_core::{CloseCode, ConnectionId, TextFrame};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tracing::debug;

use crate::hub::HubInput;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, Outgoing, WrittenBoard};

/// The upgraded socket.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Runs one connection until it closes. The hub already knows it (`Open`).
pub async fn run(
    mut socket: Socket,
    conn: ConnectionId,
    outbox: Arc<Outbox>,
    hub: mpsc::Sender<HubInput>,
    metrics: Metrics,
    close_flush_timeout: Duration,
    board: Arc<WrittenBoard>,
) {
    let mut pending = VecDeque::new();
    // Cleared after an oversize message: the hub is closing us with 1009 and
    // the rest of that message must not be read as new frames.
    let mut reading = true;
    let close_code = loop {
        tokio::select! {
            biased;
            _ = outbox.ready.notified() => {
                let close = outbox.take(&mut pending);
                let written = tokio::select! {
                    biased;
                    // A close decided while we are stuck on a stalled socket wins.
                    _ = outbox.closing.notified(), if close.is_none() => None,
                    result = write_batch(&mut socket, &mut pending, &metrics) => result.ok(),
                };
                pending.clear();
                match (written, close) {
                    (Some(bytes), None) => outbox.report_written(conn, bytes, &board),
                    (Some(_), Some(code)) => break Some(code),
                    (None, _) => break outbox.take(&mut pending).or(Some(CloseCode::InternalError)),
                }
            }
            message = socket.next(), if reading => {
                let input = match message {
                    Some(Ok(Message::Text(text))) => HubInput::Text { conn, text },
                    Some(Ok(Message::Binary(_))) => HubInput::Binary { conn },
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        // tungstenite queued the pong for a ping; send it now.
                        let _ = socket.flush().await;
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
                        let _ = timeout(close_flush_timeout, socket.flush()).await;
                        break None;
                    }
                    // The socket failed or the stream ended.
                    Some(Err(_)) | None => break None,
                };
                if hub.send(input).await.is_err() {
                    break Some(CloseCode::GoingAway);
                }
            }
        }
    };
    let _ = hub.send(HubInput::Closed { conn }).await;
    if let Some(code) = close_code {
        let frame = CloseFrame {
            code: WsCloseCode::from(code.code()),
            reason: Utf8Bytes::from_static(code.reason()),
        };
        debug!(conn = %conn, code = code.code(), "sending close frame");
        let _ = timeout(close_flush_timeout, async {
            let _ = socket.close(Some(frame)).await;
            // Wait for the client's close reply so the close frame is not lost to a reset.
            while let Some(Ok(_)) = socket.next().await {}
        })
        .await;
    }
}

/// Writes every queued item, then flushes once. Returns the bytes of text
/// frames written (for the core's slow-consumer accounting).
async fn write_batch(
    socket: &mut Socket,
    pending: &mut VecDeque<Outgoing>,
    metrics: &Metrics,
) -> Result<usize, WsError> {
    let mut bytes = 0;
    let mut frames = 0;
    let mut oldest_publish: Option<Instant> = None;
    for item in pending.drain(..) {
        match item {
            Outgoing::Text(frame, published_at) => {
                bytes += frame.len();
                frames += 1;
                if let Some(at) = published_at {
                    oldest_publish = Some(oldest_publish.map_or(at, |o| o.min(at)));
                }
                socket.feed(text_message(frame)).await?;
            }
            Outgoing::Ping => socket.feed(Message::Ping(Default::default())).await?,
        }
    }
    socket.flush().await?;
    metrics.messages_out.inc_by(frames);
    metrics.bytes_out.inc_by(bytes as u64);
    if let Some(at) = oldest_publish {
        metrics
            .publish_to_write_seconds
            .observe(at.elapsed().as_secs_f64());
    }
    Ok(bytes)
}

/// A core frame as a WebSocket text message, sharing its bytes.
fn text_message(frame: TextFrame) -> Message {
    // SAFETY: `TextFrame` is only ever built from a `String`, so its bytes
    // are valid UTF-8 (see roomcast_core::output::TextFrame).
    Message::Text(unsafe { Utf8Bytes::from_bytes_unchecked(frame.bytes().clone()) })
}
