//! A hub: the task that owns one shard's core and its engine side
//! (`crate::shard_core`: the in-memory engine answered in the same loop,
//! or an engine task whose answers and live messages the hub awaits
//! beside its inbox), and writes its connections' sockets. A node runs
//! one hub per shard (`crate::shards`). Everything reaches a hub
//! through one bounded channel of [`HubInput`]s; it turns them into core
//! inputs stamped with the clock, queues the core's frames on the
//! connections' [`ConnWriter`]s, answers callers on their reply channels,
//! and then writes every connection that has something queued (see
//! [`crate::writer`] for why the hub writes).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use roomcast_core::parse::RequestId;
use roomcast_core::validate::DirectMessage;
use roomcast_core::{
    BroadcastAnswer, CloseCode, ConnectionId, Identity, Input, Output, Publish, PublishError,
    PublishReceipt, Ticket,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::budget::InboundBytes;
use crate::clock::Clock;
use crate::hooks::Hooks;
use crate::metrics::Metrics;
use crate::server::Cancel;
use crate::shard_core::ShardCore;
use crate::verify::{Checked, Checker, TokenPool};
use crate::writer::{ConnWriter, Writable};

/// Capacity of the hub's input channel. Senders wait when it is full, which
/// slows readers and API callers rather than growing memory.
pub const HUB_CHANNEL_CAPACITY: usize = 4096;

/// Inputs taken from the channel at once.
const BATCH_MAX: usize = 256;

/// Sockets written before the hub lets other tasks run (and takes new
/// inputs, whose frames then share the writes still to come).
const WRITE_SLICE: usize = 128;

/// What the hub answers `/ws/status` with.
#[derive(Clone, Debug)]
pub struct StatusSnapshot {
    /// Open connections.
    pub connections: usize,
    /// Rooms kept: with members on this node, or holding history in the engine.
    pub rooms: usize,
    /// Rooms with members (or joins in progress) on this node.
    pub local_rooms: usize,
}

/// A message to the hub.
pub enum HubInput {
    /// A connection finished its upgrade.
    Open {
        /// Its id.
        conn: ConnectionId,
        /// Who it is.
        identity: Identity,
        /// Its socket's write half.
        writer: ConnWriter,
        /// Its upgrade request's headers to send on to the join hook
        /// (`None` when there are none; boxed, as few connections have them).
        forwarded: Option<Box<hyper::HeaderMap>>,
    },
    /// Control frames tungstenite wrote while reading (pongs, a close echo).
    Control {
        /// The connection.
        conn: ConnectionId,
        /// Whole WebSocket frames.
        frame: Bytes,
    },
    /// A text message.
    Text {
        /// Sender.
        conn: ConnectionId,
        /// The message.
        text: hyper_tungstenite::tungstenite::Utf8Bytes,
        /// Its share of the inbound byte budget, given back once handled.
        inbound: InboundBytes,
    },
    /// A text message refused because the inbound byte budget was full:
    /// answer `SERVER_BUSY` (in the connection's order).
    Busy {
        /// Sender.
        conn: ConnectionId,
        /// The request's id, if it could be read.
        id: Option<RequestId>,
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
        /// The body's share of the inbound byte budget.
        inbound: InboundBytes,
    },
    /// `POST /api/send`.
    Send {
        /// The validated message.
        message: DirectMessage,
        /// Where the delivered count goes.
        reply: oneshot::Sender<Result<u64, PublishError>>,
        /// The body's share of the inbound byte budget (held by one shard's
        /// copy when the message goes to every shard).
        inbound: Option<InboundBytes>,
    },
    /// `/ws/status`.
    Status {
        /// Where the snapshot goes.
        reply: oneshot::Sender<StatusSnapshot>,
    },
}

/// Runs the hub until every sender is gone. Once `stop` is cancelled, every
/// connection is closed with 1001. The signal is not an input of the
/// channel on purpose: under load the channel holds thousands of inputs
/// (and senders wait while it is full), and the drain must start at once,
/// not behind them.
pub(crate) async fn run(
    shard_core: ShardCore,
    mut inbox: mpsc::Receiver<HubInput>,
    setup: HubSetup,
) {
    let HubSetup {
        clock,
        metrics,
        tokens,
        hooks,
        stop,
        shard,
        shards,
    } = setup;
    let write_gather_bytes = shard_core.core.config().limits.write_buffer_bytes;
    let (checked_tx, mut checked) = mpsc::unbounded_channel();
    let mut hub = Hub {
        shard: shard_core,
        pending: HashMap::new(),
        clock,
        gauges: Gauges::new(&metrics, shard, shards),
        metrics,
        checks: Checker::new(tokens, hooks, checked_tx),
        writers: HashMap::new(),
        dirty: VecDeque::new(),
        writable: Arc::new(Writable::new(write_gather_bytes)),
    };
    let writable = hub.writable.clone();
    let mut batch = Vec::with_capacity(BATCH_MAX);
    let mut ready = Vec::new();
    let mut stopping = false;
    loop {
        let deadline = hub.shard.poll_timeout().map(|us| hub.clock.instant_of(us));
        let writing = !hub.dirty.is_empty();
        tokio::select! {
            biased;
            // First of all: a shutdown never waits behind queued inputs.
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                info!(
                    connections = hub.shard.core.connection_count(),
                    "closing every connection with 1001"
                );
                hub.shard.handle(hub.clock.now(), Input::Shutdown);
                hub.route(None);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                hub.shard.handle(hub.clock.now(), Input::Timeout);
                hub.route(None);
            }
            // Before the inbox, which under load is never empty.
            event = hub.shard.next_engine_event() => {
                hub.shard.handle(hub.clock.now(), Input::Engine(event));
                hub.route(None);
                for _ in 0..BATCH_MAX {
                    let Some(event) = hub.shard.try_engine_event() else {
                        break;
                    };
                    hub.shard.handle(hub.clock.now(), Input::Engine(event));
                    hub.route(None);
                }
            }
            Some(answer) = checked.recv() => {
                hub.check_done(answer);
                while let Ok(answer) = checked.try_recv() {
                    hub.check_done(answer);
                }
            }
            received = inbox.recv_many(&mut batch, BATCH_MAX) => {
                if received == 0 {
                    break;
                }
                for input in batch.drain(..) {
                    let published_at = hub.handle(input);
                    hub.route(published_at);
                }
            }
            // Its list is handled below, with what arrived meanwhile.
            _ = writable.wait(&mut ready) => {}
            // Sockets are waiting to be written: go on with them.
            _ = std::future::ready(()), if writing => {}
        }
        // Sockets that became writable again, taken on every round: under
        // load the channel never empties and the branch above never runs.
        writable.take(&mut ready);
        for conn in ready.drain(..) {
            if let Some(writer) = hub.writers.get_mut(&conn) {
                writer.writable();
                Hub::list(&mut hub.dirty, conn, writer);
            }
        }
        hub.write_some(WRITE_SLICE);
        hub.gauges
            .report(hub.shard.core.connection_count(), hub.shard.room_count());
        if !hub.dirty.is_empty() {
            // Let the rest of the server run between slices of a big
            // fan-out. New broadcasts that arrive meanwhile join the queues
            // of the sockets not yet written, which then take several
            // frames in one write: that is how the cost per delivery falls
            // as load rises.
            tokio::task::yield_now().await;
        }
    }
    hub.gauges.report(0, 0);
    drop(checked);
    debug!(shard, "hub stopped");
}

/// What a hub runs with besides its core and inbox.
pub struct HubSetup {
    /// The node's clock.
    pub clock: Clock,
    /// The node's metrics.
    pub metrics: Metrics,
    /// The node's token threads (refresh).
    pub tokens: Arc<TokenPool>,
    /// The application's hooks (join).
    pub hooks: Arc<Hooks>,
    /// Cancelled when the node shuts down (every hub's drain starts).
    pub stop: Arc<Cancel>,
    /// This hub's shard number.
    pub shard: usize,
    /// The node's shard count.
    pub shards: usize,
}

/// The hub's share of the node-wide gauges: it adds what changed since
/// its last report, so several hubs sum into one gauge instead of the
/// last writer winning.
struct Gauges {
    connections: prometheus_client::metrics::gauge::Gauge,
    shard_connections: prometheus_client::metrics::gauge::Gauge,
    /// With one shard the core's room count is the node's; with several,
    /// rooms are counted once for the node (`crate::shards`), not here.
    rooms: Option<prometheus_client::metrics::gauge::Gauge>,
    reported: (usize, usize),
}

impl Gauges {
    fn new(metrics: &Metrics, shard: usize, shards: usize) -> Gauges {
        Gauges {
            connections: metrics.connections.clone(),
            shard_connections: metrics.shard_connections(shard),
            rooms: (shards == 1).then(|| metrics.rooms.clone()),
            reported: (0, 0),
        }
    }

    fn report(&mut self, connections: usize, rooms: usize) {
        let (last_connections, last_rooms) = self.reported;
        if connections != last_connections {
            self.connections
                .inc_by(connections as i64 - last_connections as i64);
            self.shard_connections.set(connections as i64);
        }
        if let Some(gauge) = &self.rooms {
            if rooms != last_rooms {
                gauge.set(rooms as i64);
            }
        }
        self.reported = (connections, rooms);
    }
}

/// The hub's state: the core and the write half of every connection.
struct Hub {
    shard: ShardCore,
    /// Broadcasts waiting for the engine, with their caller's reply
    /// channel and room count (for metrics).
    pending: HashMap<Ticket, PendingBroadcast>,
    clock: Clock,
    metrics: Metrics,
    gauges: Gauges,
    /// Makes the core's checks (refresh tokens, join hook) off the hub;
    /// meanwhile the core holds the connection's later messages.
    checks: Checker,
    /// Lookup only; never iterated (flush order comes from `dirty`).
    /// Boxed so the table's empty buckets (up to half of them) cost a
    /// pointer each rather than a whole writer. Deliberately the standard
    /// hasher: with the core's faster `ConnectionMap` hasher here, 5 of 10
    /// fan-out benchmark runs fell to 2.8 µs per delivery instead of 2.0
    /// (alternating runs; the cause is not understood).
    writers: HashMap<ConnectionId, Box<ConnWriter>>,
    /// Connections with frames queued and not yet written, in queue order.
    dirty: VecDeque<ConnectionId>,
    writable: Arc<Writable>,
}

impl Hub {
    /// Applies one hub input to the core. Returns the publish time when the
    /// input was a broadcast, so its deliveries can be stamped.
    fn handle(&mut self, input: HubInput) -> Option<Instant> {
        let now = self.clock.now();
        let shard = &mut self.shard;
        let metrics = &self.metrics;
        match input {
            HubInput::Open {
                conn,
                identity,
                writer,
                forwarded,
            } => {
                self.writers.insert(conn, Box::new(writer));
                self.checks.opened(conn, forwarded);
                metrics.connections_opened.inc();
                shard.handle(now, Input::Open { conn, identity });
            }
            HubInput::Text {
                conn,
                text,
                inbound,
            } => {
                metrics.messages_in.inc();
                metrics.bytes_in.inc_by(text.len() as u64);
                shard.handle(
                    now,
                    Input::Text {
                        conn,
                        text: text.as_str(),
                    },
                );
                drop(inbound);
            }
            HubInput::Busy { conn, id } => {
                metrics.messages_in.inc();
                metrics.server_busy.inc();
                // The core answers it in its place among the replies
                // (behind any waiting for the engine).
                shard.handle(now, Input::Busy { conn, id });
            }
            HubInput::Binary { conn } => {
                metrics.messages_in.inc();
                shard.handle(now, Input::Binary { conn });
            }
            HubInput::Alive { conn } => {
                shard.handle(now, Input::Pong { conn });
            }
            HubInput::Control { conn, frame } => {
                if let Some(writer) = self.writers.get_mut(&conn) {
                    Self::list(&mut self.dirty, conn, writer);
                    if !writer.push_control(frame) {
                        // Pings keep coming but the client does not read.
                        shard.handle(
                            now,
                            Input::Abort {
                                conn,
                                code: CloseCode::SlowConsumer,
                            },
                        );
                    }
                }
            }
            HubInput::Abort { conn, code } => {
                shard.handle(now, Input::Abort { conn, code });
            }
            HubInput::Closed { conn } => {
                self.checks.closed(conn);
                if let Some(mut writer) = self.writers.remove(&conn) {
                    if !writer.closed_by_server() {
                        metrics.disconnect("client");
                    }
                    // Last chance for what is queued, such as the echo of
                    // the client's close frame.
                    if writer.wants_flush() {
                        writer.flush(conn, &self.writable);
                    }
                }
                shard.handle(now, Input::Closed { conn });
            }
            HubInput::Broadcast {
                publish,
                received,
                reply,
                inbound: _inbound,
            } => {
                let rooms = publish.rooms.len() as u64;
                match shard.broadcast(now, publish) {
                    Ok(ticket) => {
                        self.pending.insert(
                            ticket,
                            PendingBroadcast {
                                reply,
                                rooms,
                                received,
                            },
                        );
                    }
                    Err(refused) => answer_broadcast(metrics, reply, rooms, Err(refused)),
                }
                return Some(received);
            }
            HubInput::Send {
                message,
                reply,
                inbound: _inbound,
            } => {
                let _ = reply.send(shard.send_direct(now, message));
            }
            HubInput::Status { reply } => {
                let _ = reply.send(StatusSnapshot {
                    connections: shard.core.connection_count(),
                    rooms: shard.room_count(),
                    local_rooms: shard.core.room_count(),
                });
            }
        }
        None
    }

    /// A check is done: the core answers the request (and then runs the
    /// connection's messages that waited for it).
    fn check_done(&mut self, checked: Checked) {
        let Checked { conn, answer } = checked;
        self.shard
            .handle(self.clock.now(), Input::CheckDone { conn, answer });
        self.route(None);
    }

    /// Queues every pending core output on its connection's writer, and
    /// answers broadcasts the engine has now answered.
    ///
    /// `published_at`: when the broadcast whose frames these are reached
    /// the server (`publish_to_write_seconds`). With an engine that answers
    /// later, this shard fans a broadcast it published out on the engine's
    /// answer (the router sends the answer before the live message), so
    /// the answered broadcast's arrival stands for the frames queued with
    /// it. Frames from a live message alone (another shard's or node's
    /// broadcast) are not timed: their publish time is not known here.
    fn route(&mut self, mut published_at: Option<Instant>) {
        while let Some((ticket, answer)) = self.shard.core.poll_answer() {
            if let Some(pending) = self.pending.remove(&ticket) {
                if answer.is_ok() {
                    let received = pending.received;
                    published_at = Some(published_at.map_or(received, |at| at.min(received)));
                }
                answer_broadcast(&self.metrics, pending.reply, pending.rooms, answer);
            }
        }
        while let Some(output) = self.shard.core.poll_output() {
            match output {
                Output::Send { conn, frame } => {
                    // The core only addresses open connections, and a
                    // writer leaves only with `Closed`, after which the
                    // core says nothing more to it.
                    let Some(writer) = self.writers.get_mut(&conn) else {
                        debug_assert!(false, "a frame for {conn} without a writer");
                        continue;
                    };
                    writer.push_text(frame);
                    if let Some(at) = published_at {
                        writer.note_publish(at);
                    }
                    Self::list(&mut self.dirty, conn, writer);
                }
                Output::Ping { conn } => {
                    if let Some(writer) = self.writers.get_mut(&conn) {
                        writer.push_ping();
                        Self::list(&mut self.dirty, conn, writer);
                    }
                }
                Output::Check { conn, check } => {
                    // Made off the hub; the core holds the connection's
                    // later messages until the answer is in.
                    self.checks.submit(conn, check, self.clock.unix_ms());
                }
                Output::Close { conn, code } => {
                    if let Some(writer) = self.writers.get_mut(&conn) {
                        debug!(conn = %conn, code = code.code(), reason = code.reason(), "closing connection");
                        self.metrics.disconnect(code.metric_label());
                        writer.close(code);
                        Self::list(&mut self.dirty, conn, writer);
                    }
                }
            }
        }
    }

    /// Writes up to `slice` connections with something queued, in the order
    /// they were queued, telling the core what left (slow-consumer
    /// accounting); what the core answers to that (held frames released,
    /// presence after a failed socket) is queued for the next slice.
    fn write_some(&mut self, slice: usize) {
        for _ in 0..slice {
            let Some(conn) = self.dirty.pop_front() else {
                break;
            };
            self.flush_one(conn);
        }
        self.route(None);
    }

    /// Puts `conn` on the queue of writers to flush, once.
    fn list(dirty: &mut VecDeque<ConnectionId>, conn: ConnectionId, writer: &mut ConnWriter) {
        if writer.list() {
            dirty.push_back(conn);
        }
    }

    fn flush_one(&mut self, conn: ConnectionId) {
        let Some(writer) = self.writers.get_mut(&conn) else {
            return;
        };
        writer.unlist();
        if !writer.wants_flush() {
            return;
        }
        // Recorded once per write, for the oldest broadcast in it.
        let oldest_publish = writer.take_oldest_publish();
        let flushed = writer.flush(conn, &self.writable);
        if flushed.text_bytes > 0 {
            self.metrics.messages_out.inc_by(flushed.frames);
            self.metrics.bytes_out.inc_by(flushed.text_bytes as u64);
            self.metrics.socket_writes.inc_by(flushed.writes);
            if let Some(at) = oldest_publish {
                self.metrics
                    .publish_to_write_seconds
                    .observe(at.elapsed().as_secs_f64());
            }
            self.shard.handle(
                self.clock.now(),
                Input::Written {
                    conn,
                    bytes: flushed.text_bytes,
                },
            );
        }
        if flushed.blocked {
            // The client is not keeping up: conflation may hold its
            // progress events until its socket drains.
            self.shard.handle(self.clock.now(), Input::Blocked { conn });
        }
        if flushed.failed {
            // The reading task was told and will report `Closed`; the core
            // forgets the connection now so it queues nothing more for it.
            if self
                .writers
                .remove(&conn)
                .is_some_and(|w| !w.closed_by_server())
            {
                self.metrics.disconnect("client");
            }
            self.shard.handle(self.clock.now(), Input::Closed { conn });
        }
    }
}

/// Where a broadcast's receipt goes.
type BroadcastReply = oneshot::Sender<Result<PublishReceipt, PublishError>>;

/// A broadcast waiting for the engine's answer.
struct PendingBroadcast {
    reply: BroadcastReply,
    /// Rooms it was published to (counted once it is answered).
    rooms: u64,
    /// When it reached the server (`publish_to_write_seconds`).
    received: Instant,
}

/// Answers a broadcast's caller (and counts it when it was published).
fn answer_broadcast(metrics: &Metrics, reply: BroadcastReply, rooms: u64, answer: BroadcastAnswer) {
    if let Ok(receipt) = &answer {
        metrics.broadcasts.inc_by(rooms);
        metrics.deliveries.inc_by(receipt.delivered);
    }
    let _ = reply.send(answer);
}
