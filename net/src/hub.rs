//! The hub: the one task that owns the [`Core`]. Everything reaches it
//! through one bounded channel of [`HubInput`]s; it turns them into core
//! inputs stamped with the clock, then routes the core's outputs to the
//! connections' [`Outbox`]es and the callers' reply channels.

use std::collections::HashMap;
use std::sync::Arc;

use roomcast_core::publish::DirectMessage;
use roomcast_core::{
    CloseCode, ConnectionId, Core, Identity, Input, Output, Publish, PublishError, PublishReceipt,
    Response,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::auth::TokenVerifier;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, Outgoing, WrittenBoard};

/// Capacity of the hub's input channel. Senders wait when it is full, which
/// slows readers and API callers rather than growing memory.
pub const HUB_CHANNEL_CAPACITY: usize = 4096;

/// Inputs processed per wake-up before outputs are routed (keeps latency
/// bounded while amortising the routing work).
const BATCH_MAX: usize = 256;

/// What the hub answers `/ws/status` with.
#[derive(Clone, Debug)]
pub struct StatusSnapshot {
    /// Open connections.
    pub connections: usize,
    /// Rooms held.
    pub rooms: usize,
}

/// A message to the hub.
pub enum HubInput {
    /// A connection finished its upgrade.
    Open {
        /// Its id.
        conn: ConnectionId,
        /// Who it is.
        identity: Identity,
        /// Where its frames go.
        outbox: Arc<Outbox>,
    },
    /// A text message.
    Text {
        /// Sender.
        conn: ConnectionId,
        /// The message.
        text: hyper_tungstenite::tungstenite::Utf8Bytes,
    },
    /// A binary message.
    Binary {
        /// Sender.
        conn: ConnectionId,
    },
    /// A pong or ping: the connection is alive.
    Alive {
        /// The connection.
        conn: ConnectionId,
    },
    /// Close the connection for a reason the session saw (oversize, fault).
    Abort {
        /// The connection.
        conn: ConnectionId,
        /// Why.
        code: CloseCode,
    },
    /// The socket is gone.
    Closed {
        /// The connection.
        conn: ConnectionId,
    },
    /// `POST /api/broadcast`.
    Broadcast {
        /// The validated publish.
        publish: Publish,
        /// When the request arrived (latency histogram).
        received: Instant,
        /// Where the receipt goes.
        reply: oneshot::Sender<Result<PublishReceipt, PublishError>>,
    },
    /// `POST /api/send`.
    Send {
        /// The validated message.
        message: DirectMessage,
        /// Where the delivered count goes.
        reply: oneshot::Sender<Result<u64, PublishError>>,
    },
    /// `/ws/status`.
    Status {
        /// Where the snapshot goes.
        reply: oneshot::Sender<StatusSnapshot>,
    },
    /// Close every connection with 1001.
    Shutdown,
}

/// Runs the hub until every sender is gone.
pub async fn run(
    mut core: Core,
    clock: Clock,
    mut inbox: mpsc::Receiver<HubInput>,
    metrics: Metrics,
    verifier: Arc<TokenVerifier>,
    board: Arc<WrittenBoard>,
) {
    let shell = Shell {
        clock,
        metrics: metrics.clone(),
        verifier,
    };
    let mut outboxes: HashMap<ConnectionId, Arc<Outbox>> = HashMap::new();
    let mut batch = Vec::with_capacity(BATCH_MAX);
    let mut dirty = Vec::new();
    loop {
        let deadline = core.poll_timeout().map(|us| clock.instant_of(us));
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                collect_written(&mut core, &clock, &outboxes, &board, &mut dirty);
                core.handle(clock.now(), Input::Timeout);
            }
            received = inbox.recv_many(&mut batch, BATCH_MAX) => {
                if received == 0 {
                    break;
                }
                collect_written(&mut core, &clock, &outboxes, &board, &mut dirty);
                for input in batch.drain(..) {
                    let published_at = handle(&mut core, &clock, input, &mut outboxes, &metrics);
                    route(&mut core, &mut outboxes, &shell, published_at);
                }
            }
        }
        route(&mut core, &mut outboxes, &shell, None);
        metrics.connections.set(core.connection_count() as i64);
        metrics.rooms.set(core.room_count() as i64);
    }
    debug!("hub stopped");
}

/// Feeds the core every write the sessions reported since the last call,
/// so its backlog accounting is current before it decides anything.
fn collect_written(
    core: &mut Core,
    clock: &Clock,
    outboxes: &HashMap<ConnectionId, Arc<Outbox>>,
    board: &WrittenBoard,
    dirty: &mut Vec<ConnectionId>,
) {
    board.drain(dirty);
    if dirty.is_empty() {
        return;
    }
    let now = clock.now();
    for conn in dirty.drain(..) {
        if let Some(outbox) = outboxes.get(&conn) {
            let bytes = outbox.take_written();
            if bytes > 0 {
                core.handle(now, Input::Written { conn, bytes });
            }
        }
    }
}

/// Applies one hub input to the core. Returns the publish time when the
/// input was a broadcast, so its deliveries can be stamped.
fn handle(
    core: &mut Core,
    clock: &Clock,
    input: HubInput,
    outboxes: &mut HashMap<ConnectionId, Arc<Outbox>>,
    metrics: &Metrics,
) -> Option<Instant> {
    let now = clock.now();
    match input {
        HubInput::Open {
            conn,
            identity,
            outbox,
        } => {
            outboxes.insert(conn, outbox);
            metrics.connections_opened.inc();
            core.handle(now, Input::Open { conn, identity });
        }
        HubInput::Text { conn, text } => {
            metrics.messages_in.inc();
            metrics.bytes_in.inc_by(text.len() as u64);
            core.handle(
                now,
                Input::Text {
                    conn,
                    text: text.as_str(),
                },
            );
        }
        HubInput::Binary { conn } => {
            metrics.messages_in.inc();
            core.handle(now, Input::Binary { conn });
        }
        HubInput::Alive { conn } => {
            core.handle(now, Input::Pong { conn });
        }
        HubInput::Abort { conn, code } => {
            core.handle(now, Input::Abort { conn, code });
        }
        HubInput::Closed { conn } => {
            if outboxes.remove(&conn).is_some() {
                metrics.disconnect("client");
            }
            core.handle(now, Input::Closed { conn });
        }
        HubInput::Broadcast {
            publish,
            received,
            reply,
        } => {
            let rooms = publish.rooms.len() as u64;
            let answer = match core.handle(now, Input::Broadcast(publish)) {
                Response::Published(receipt) => {
                    metrics.broadcasts.inc_by(rooms);
                    metrics.deliveries.inc_by(receipt.delivered);
                    Ok(receipt)
                }
                Response::Rejected(error) => Err(error),
                other => Err(PublishError::InvalidBody(format!(
                    "unexpected core answer {other:?}"
                ))),
            };
            let _ = reply.send(answer);
            return Some(received);
        }
        HubInput::Send { message, reply } => {
            let answer = match core.handle(now, Input::Send(message)) {
                Response::Sent { delivered } => Ok(delivered),
                Response::Rejected(error) => Err(error),
                other => Err(PublishError::InvalidBody(format!(
                    "unexpected core answer {other:?}"
                ))),
            };
            let _ = reply.send(answer);
        }
        HubInput::Status { reply } => {
            let _ = reply.send(StatusSnapshot {
                connections: core.connection_count(),
                rooms: core.room_count(),
            });
        }
        HubInput::Shutdown => {
            info!(
                connections = core.connection_count(),
                "closing every connection with 1001"
            );
            core.handle(now, Input::Shutdown);
        }
    }
    None
}

/// What routing needs from the shell besides the outboxes.
struct Shell {
    clock: Clock,
    metrics: Metrics,
    verifier: Arc<TokenVerifier>,
}

/// Hands every pending core output to its connection's outbox.
fn route(
    core: &mut Core,
    outboxes: &mut HashMap<ConnectionId, Arc<Outbox>>,
    shell: &Shell,
    published_at: Option<Instant>,
) {
    let metrics = &shell.metrics;
    while let Some(output) = core.poll_output() {
        match output {
            Output::Send { conn, frame } => {
                if let Some(outbox) = outboxes.get(&conn) {
                    outbox.push(Outgoing::Text(frame, published_at));
                }
            }
            Output::Ping { conn } => {
                if let Some(outbox) = outboxes.get(&conn) {
                    outbox.push(Outgoing::Ping);
                }
            }
            Output::VerifyToken { conn, token, id } => {
                // Checked here, in order, so the reply keeps its place among the connection's messages.
                let result = shell
                    .verifier
                    .verify(&token, shell.clock.unix_ms())
                    .map_err(|e| e.to_string());
                core.handle(shell.clock.now(), Input::TokenVerified { conn, id, result });
            }
            Output::Close { conn, code } => {
                if let Some(outbox) = outboxes.remove(&conn) {
                    debug!(conn = %conn, code = code.code(), reason = code.reason(), "closing connection");
                    metrics.disconnect(code.metric_label());
                    outbox.close(code);
                }
            }
        }
    }
}
