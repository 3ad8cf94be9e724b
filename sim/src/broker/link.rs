//! A server node's end of the broker: the engine task behind an
//! [`EngineLink`], as the Redis engine is in production, speaking the
//! broker protocol over one turmoil TCP connection.
//!
//! - **Calls** (append, read, presence list) are sent in request order and
//!   answered from the broker; each has a timeout (then it is answered
//!   `Unavailable`, and a late answer is dropped: exactly one answer per
//!   call), at most `calls_max` are outstanding (beyond: `Unavailable` at
//!   once), and while the connection is down they fail at once.
//! - **Interest and presence** are kept here too, so that a new connection
//!   declares every followed room and every member entry again.
//! - **Liveness**: a ping every `ping_interval`; a connection silent for
//!   `dead_after` is dropped (a partition leaves TCP half-open, and
//!   turmoil never retransmits a dropped segment).
//! - **Reconnect** with capped, jittered exponential backoff (the jitter from
//!   the seeded generator, never the thread RNG); on every new connection
//!   after the first (or the first, if rooms are followed by then) the core
//!   hears `StreamReset`, after the interests went out, so its reads of every
//!   followed room come after them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use roomcast_core::engine::memory::NodeId;
use roomcast_core::engine::{CallId, EngineError, EngineEvent, EngineRequest, PresenceEntry};
use roomcast_core::{ConnectionId, RoomName};
use roomcast_net::engine::{EngineLink, Readiness};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::wire::{read_frame, write_frame, Frame};
use crate::rng::SimRng;

/// How a node's link behaves.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// The broker's host name.
    pub broker: String,
    /// Its port.
    pub port: u16,
    /// This node (one process lifetime of it) among the broker's.
    pub node: NodeId,
    /// Longest wait for one call's answer.
    pub call_timeout: Duration,
    /// Calls outstanding at most.
    pub calls_max: usize,
    /// How often the connection is probed.
    pub ping_interval: Duration,
    /// A connection that said nothing for this long is dead.
    pub dead_after: Duration,
    /// Longest wait for a connection to open.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles up to `backoff_cap`.
    pub backoff_first: Duration,
    /// Longest reconnect delay.
    pub backoff_cap: Duration,
    /// Draws the backoff jitter.
    pub rng: SimRng,
    /// Counts what happened (shared by every node and lifetime of a run).
    pub stats: Arc<LinkStats>,
}

/// What the links of a run went through (the summary shows it, so a sweep
/// can tell that the paths it claims to cover were taken).
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Connections opened to the broker.
    pub connections: AtomicU64,
    /// Connections found dead (silent, closed or stuck).
    pub lost: AtomicU64,
    /// Calls answered `Unavailable` after their timeout.
    pub timeouts: AtomicU64,
    /// Answers that came after their call timed out (dropped).
    pub late: AtomicU64,
    /// Calls failed at once: not connected, too many in flight, or
    /// outstanding when the connection was lost.
    pub refused: AtomicU64,
}

impl LinkStats {
    /// `connections=… lost=… timeouts=… late=… refused=…` as one token.
    pub fn summary(&self) -> String {
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        format!(
            "connections={},lost={},timeouts={},late={},refused={}",
            get(&self.connections),
            get(&self.lost),
            get(&self.timeouts),
            get(&self.late),
            get(&self.refused)
        )
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Events waiting for the hub, at most (as the Redis engine).
const EVENTS_CAPACITY: usize = 8192;

/// Requests waiting for the link, at most.
const REQUESTS_CAPACITY: usize = 8192;

/// Frames waiting to be written, at most; beyond, the connection counts as
/// stuck and is replaced.
const OUTBOUND_CAPACITY: usize = 65_536;

/// Starts the link's task (within the node's runtime).
pub fn spawn(config: LinkConfig) -> EngineLink {
    let (requests_tx, requests) = mpsc::channel(REQUESTS_CAPACITY);
    let (events, events_rx) = mpsc::channel(EVENTS_CAPACITY);
    let link = Link {
        config,
        events,
        conn: None,
        connecting: None,
        retry_at: Some(Instant::now()),
        attempt: 0,
        connections: 0,
        calls: BTreeMap::new(),
        deadlines: BTreeSet::new(),
        followed: BTreeSet::new(),
        presence: BTreeMap::new(),
        pings: 0,
    };
    tokio::spawn(link.run(requests));
    EngineLink {
        requests: requests_tx,
        events: events_rx,
        ready: Readiness::always(),
        // Nothing to wait for at shutdown: the broker forgets a node's
        // presence by its own TTL.
        presence_written: None,
    }
}

/// What a call's failure answer looks like.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Append,
    Read,
    Presence,
}

/// An open connection to the broker.
struct Conn {
    out: mpsc::Sender<Frame>,
    frames: mpsc::Receiver<Frame>,
    last_heard: Instant,
    next_ping: Instant,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Conn {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Link {
    config: LinkConfig,
    events: mpsc::Sender<EngineEvent>,
    conn: Option<Conn>,
    connecting: Option<oneshot::Receiver<Option<turmoil::net::TcpStream>>>,
    retry_at: Option<Instant>,
    attempt: u32,
    connections: u64,
    /// Calls waiting for their answer: what they were, and until when.
    calls: BTreeMap<CallId, (Kind, Instant)>,
    deadlines: BTreeSet<(Instant, CallId)>,
    followed: BTreeSet<RoomName>,
    presence: BTreeMap<(RoomName, ConnectionId), PresenceEntry>,
    pings: u64,
}

/// What woke the link.
enum Wake {
    Frame(Option<Frame>),
    Request(Option<EngineRequest>),
    Connected(Option<turmoil::net::TcpStream>),
    Timer,
}

impl Link {
    async fn run(mut self, mut requests: mpsc::Receiver<EngineRequest>) {
        loop {
            let timer = self.next_timer();
            let wake = tokio::select! {
                biased;
                frame = recv_frame(&mut self.conn) => Wake::Frame(frame),
                request = requests.recv() => Wake::Request(request),
                stream = wait_connect(&mut self.connecting) => Wake::Connected(stream),
                _ = sleep_until(timer) => Wake::Timer,
            };
            match wake {
                Wake::Frame(Some(frame)) => self.heard(frame).await,
                Wake::Frame(None) => self.lost("the engine (broker) closed the connection").await,
                Wake::Request(Some(request)) => self.request(request).await,
                // The hub is gone.
                Wake::Request(None) => return,
                Wake::Connected(stream) => {
                    self.connecting = None;
                    match stream {
                        Some(stream) => self.established(stream).await,
                        None => self.schedule_retry(),
                    }
                }
                Wake::Timer => self.timers().await,
            }
        }
    }

    /// The earliest of: a call's deadline, the next ping or liveness
    /// check, the next connection attempt.
    fn next_timer(&self) -> Option<Instant> {
        let call = self.deadlines.first().map(|(at, _)| *at);
        let conn = self
            .conn
            .as_ref()
            .map(|c| c.next_ping.min(c.last_heard + self.config.dead_after));
        let retry = self.retry_at.filter(|_| self.connecting.is_none());
        [call, conn, retry].into_iter().flatten().min()
    }

    async fn timers(&mut self) {
        let now = Instant::now();
        while let Some(&(at, call)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.remove(&(at, call));
            if let Some((kind, _)) = self.calls.remove(&call) {
                count(&self.config.stats.timeouts);
                self.answer_failure(call, kind, "the engine (broker) did not answer in time")
                    .await;
            }
        }
        if let Some(conn) = &mut self.conn {
            if now >= conn.last_heard + self.config.dead_after {
                self.lost("the engine (broker) stopped answering").await;
            } else if now >= conn.next_ping {
                conn.next_ping = now + self.config.ping_interval;
                self.pings += 1;
                let ping = Frame::Ping(self.pings);
                self.send(ping).await;
            }
        }
        if self.conn.is_none() && self.connecting.is_none() {
            if let Some(at) = self.retry_at {
                if at <= now {
                    self.retry_at = None;
                    self.connect();
                }
            }
        }
    }

    fn connect(&mut self) {
        let (done, result) = oneshot::channel();
        let target = (self.config.broker.clone(), self.config.port);
        let timeout = self.config.connect_timeout;
        tokio::spawn(async move {
            let stream = tokio::time::timeout(
                timeout,
                turmoil::net::TcpStream::connect((target.0.as_str(), target.1)),
            )
            .await;
            let _ = done.send(stream.ok().and_then(Result::ok));
        });
        self.connecting = Some(result);
    }

    fn schedule_retry(&mut self) {
        let full = self
            .config
            .backoff_first
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.config.backoff_cap);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = self.config.rng.below(1000) as u32;
        let delay = full / 2 + full / 2 * jitter / 1000;
        self.retry_at = Some(Instant::now() + delay);
    }

    async fn established(&mut self, stream: turmoil::net::TcpStream) {
        let (mut read, mut write) = stream.into_split();
        let (frames_tx, frames) = mpsc::channel(1024);
        let reader = tokio::spawn(async move {
            while let Ok(Some(frame)) = read_frame(&mut read).await {
                if frames_tx.send(frame).await.is_err() {
                    break;
                }
            }
        });
        let (out, mut outbound) = mpsc::channel::<Frame>(OUTBOUND_CAPACITY);
        let writer = tokio::spawn(async move {
            while let Some(frame) = outbound.recv().await {
                if write_frame(&mut write, &frame).await.is_err() {
                    break;
                }
            }
        });
        let now = Instant::now();
        self.conn = Some(Conn {
            out,
            frames,
            last_heard: now,
            next_ping: now + self.config.ping_interval,
            tasks: [reader, writer],
        });
        self.attempt = 0;
        self.connections += 1;
        count(&self.config.stats.connections);
        // Say who we are, then follow every room again and put back every
        // member entry (they may have expired meanwhile).
        self.send(Frame::Hello(self.config.node)).await;
        let rooms: Vec<RoomName> = self.followed.iter().cloned().collect();
        for room in rooms {
            self.send(Frame::Request(EngineRequest::Interest { room, on: true }))
                .await;
        }
        let entries: Vec<(RoomName, PresenceEntry)> = self
            .presence
            .iter()
            .map(|((room, _), entry)| (room.clone(), entry.clone()))
            .collect();
        for (room, entry) in entries {
            self.send(Frame::Request(EngineRequest::PresenceAdd { room, entry }))
                .await;
        }
        if self.conn.is_some() && (self.connections > 1 || !self.followed.is_empty()) {
            // Live messages may have been lost meanwhile: every followed
            // room is read now (after the interests above).
            let _ = self.events.send(EngineEvent::StreamReset).await;
        }
    }

    /// The connection is gone: every outstanding call fails now, and a new
    /// connection is tried after a backoff.
    async fn lost(&mut self, why: &str) {
        if self.conn.take().is_none() {
            return;
        }
        count(&self.config.stats.lost);
        let calls = std::mem::take(&mut self.calls);
        self.deadlines.clear();
        for (call, (kind, _)) in calls {
            count(&self.config.stats.refused);
            self.answer_failure(call, kind, why).await;
        }
        self.schedule_retry();
    }

    /// Queues a frame on the connection; a connection that does not drain
    /// is replaced.
    async fn send(&mut self, frame: Frame) {
        let Some(conn) = &self.conn else {
            return;
        };
        if conn.out.try_send(frame).is_err() {
            self.lost("the engine (broker) connection is stuck").await;
        }
    }

    async fn heard(&mut self, frame: Frame) {
        if let Some(conn) = &mut self.conn {
            conn.last_heard = Instant::now();
        }
        let Frame::Event(event) = frame else {
            return; // a pong: alive is all it says
        };
        let answered = match &event {
            EngineEvent::Appended { call, .. }
            | EngineEvent::Read { call, .. }
            | EngineEvent::Presence { call, .. } => Some(*call),
            _ => None,
        };
        if let Some(call) = answered {
            match self.calls.remove(&call) {
                Some((_, deadline)) => {
                    self.deadlines.remove(&(deadline, call));
                }
                // Already answered (timed out): exactly one answer per call.
                None => {
                    count(&self.config.stats.late);
                    return;
                }
            }
        }
        let _ = self.events.send(event).await;
    }

    async fn request(&mut self, request: EngineRequest) {
        let call = match &request {
            EngineRequest::Append { call, .. } => Some((*call, Kind::Append)),
            EngineRequest::Read { call, .. } => Some((*call, Kind::Read)),
            EngineRequest::PresenceList { call, .. } => Some((*call, Kind::Presence)),
            EngineRequest::Interest { room, on } => {
                if *on {
                    self.followed.insert(room.clone());
                } else {
                    self.followed.remove(room);
                }
                None
            }
            EngineRequest::PresenceAdd { room, entry } => {
                self.presence
                    .insert((room.clone(), entry.conn), entry.clone());
                None
            }
            EngineRequest::PresenceRemove { room, conn } => {
                self.presence.remove(&(room.clone(), *conn));
                None
            }
            EngineRequest::PresenceClear => {
                // Nothing to declare again after a reconnect.
                self.presence.clear();
                None
            }
            EngineRequest::PresenceRefresh | EngineRequest::Direct { .. } => None,
        };
        if let Some((call, kind)) = call {
            if self.conn.is_none() {
                count(&self.config.stats.refused);
                self.answer_failure(call, kind, "the engine (broker) is not connected")
                    .await;
                return;
            }
            if self.calls.len() >= self.config.calls_max {
                count(&self.config.stats.refused);
                self.answer_failure(call, kind, "too many engine (broker) calls in flight")
                    .await;
                return;
            }
            let deadline = Instant::now() + self.config.call_timeout;
            self.calls.insert(call, (kind, deadline));
            self.deadlines.insert((deadline, call));
        }
        // Without a connection, interest and presence wait for the next one.
        self.send(Frame::Request(request)).await;
    }

    async fn answer_failure(&mut self, call: CallId, kind: Kind, why: &str) {
        let error = EngineError::Unavailable(why.to_owned());
        let event = match kind {
            Kind::Append => EngineEvent::Appended {
                call,
                result: Err(error),
                peer_members: 0,
            },
            Kind::Read => EngineEvent::Read {
                call,
                result: Err(error),
            },
            Kind::Presence => EngineEvent::Presence {
                call,
                result: Err(error),
            },
        };
        let _ = self.events.send(event).await;
    }
}

async fn recv_frame(conn: &mut Option<Conn>) -> Option<Frame> {
    match conn {
        Some(conn) => conn.frames.recv().await,
        None => std::future::pending().await,
    }
}

async fn wait_connect(
    connecting: &mut Option<oneshot::Receiver<Option<turmoil::net::TcpStream>>>,
) -> Option<turmoil::net::TcpStream> {
    match connecting {
        Some(result) => result.await.ok().flatten(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
