//! The Redis engine: the task that answers the core's engine requests from
//! a Redis shared by every node (see `docs/engine.md`, "The Redis engine").
//!
//! - **Append** and **Read** each run one Lua script (by SHA) on a
//!   multiplexed command connection ([`Commands`]: one Redis or a Redis
//!   Cluster), concurrently, at most `calls_max`
//!   at once (beyond that: an `Unavailable` answer at once), each within
//!   the call timeout (then: an `Unavailable` answer).
//! - **Interest** goes to the node's pub/sub connection
//!   ([`pubsub`](super::pubsub)); a read of a room waits (within its
//!   timeout) until the room's subscribe was confirmed.
//! - **Presence** requests run in order on their own lane
//!   ([`presence`](super::presence)).
//!
//! Redis unreachable at startup is not an error: the engine keeps trying
//! with capped, jittered backoff, every call fails fast meanwhile, and
//! `/readyz` says not ready (the command connection and its health check:
//! [`health`](super::health)).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{FutureExt, Shared};
use redis::RedisResult;
use roomcast_core::engine::{
    EngineError, EngineEvent, EngineRequest, Epoch, Numbered, Position, ReadResult, Unnumbered,
};
use roomcast_core::RoomName;
use std::collections::HashMap;
use std::future::Future;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::debug;

use super::connection::{Commands, KindText, Target, TargetError, Topology};
use super::health;
use super::presence::PresenceLane;
use super::pubsub::{Probe, Subscriber, Subscription};
use super::scripts::{direct_channel, direct_payload, RoomKeys, Scripts};
use super::tls::TlsFiles;
use super::{EngineLink, Readiness, ReadyFlags};
use crate::config::redact_url;

/// What the Redis engine is configured with.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://...` or `rediss://...` (may hold a password: never log it,
    /// see [`redact_url`]).
    pub url: String,
    /// For `rediss://`: the CA and client certificate files, if any.
    pub tls: TlsFiles,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// This process's unique id: the prefix of the epochs it creates.
    pub node: String,
    /// Longest wait for one call.
    pub timeout: Duration,
    /// Messages kept per room (`MAXLEN`; 0 = no history).
    pub history_messages_max: usize,
    /// Age after which a message leaves the history, in ms.
    pub history_age_ms: u64,
    /// How long a node's presence entries live without a refresh, in ms.
    pub presence_ttl_ms: u64,
    /// Rooms whose presence changes are published (`[rooms]
    /// presence_diff_prefixes`; `[""]`: every room): nobody listens to the
    /// others'. Every node of a deployment must have the same.
    pub presence_diff_prefixes: Vec<String>,
    /// How often the core reads each followed room (keeps its epoch alive).
    pub stream_check_interval_ms: u64,
    /// Appends, reads and lists in flight at most.
    pub calls_max: usize,
    /// `url` lists the seed nodes of a Redis Cluster (comma-separated).
    pub cluster: bool,
    /// `url` lists Redis Sentinels (comma-separated), and this is the name
    /// of the master they monitor (the password in `url` is the master's).
    pub sentinel_master: Option<String>,
    /// The Sentinels' own password, if they require one.
    pub sentinel_password: Option<String>,
    /// How often the pub/sub connection is probed end to end.
    pub probe_interval: Duration,
    /// How long a probe may take to come back before the pub/sub
    /// connection counts as lost.
    pub probe_timeout: Duration,
    /// This node's open connections (the hub keeps the gauge), reported in
    /// the heartbeat so every node can show the cluster's total.
    pub local_connections: prometheus_client::metrics::gauge::Gauge,
}

impl RedisSettings {
    /// How long a room's epoch and top outlive its last append or read:
    /// its history's age, and at least three stream checks, so a room some
    /// node follows keeps its epoch however quiet it is.
    fn meta_ttl_ms(&self) -> u64 {
        self.history_age_ms
            .max(self.stream_check_interval_ms.saturating_mul(3))
            .max(1_000)
    }
}

/// Events the engine's tasks send the hub, at most this many waiting.
const EVENTS_CAPACITY: usize = 8192;

/// Presence requests waiting for their lane, at most.
const PRESENCE_CAPACITY: usize = 4096;

/// Why the Redis engine could not start: its URL or a TLS file (the URL
/// shown without its password).
#[derive(Debug)]
pub struct SetupError {
    error: TargetError,
    url: String,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error, self.url)
    }
}

impl std::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Why one Redis call failed, as clients are told (never the server's
/// address or credentials; the cause is logged where it happens).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallError {
    NotConnected,
    Failed,
    TimedOut,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CallError::NotConnected => "the engine (redis) is not connected",
            CallError::Failed => "the engine (redis) failed the call",
            CallError::TimedOut => "the engine (redis) did not answer in time",
        })
    }
}

impl std::error::Error for CallError {}

/// A failed call is an unavailable engine to the core.
impl From<CallError> for EngineError {
    fn from(error: CallError) -> EngineError {
        EngineError::Unavailable(error.to_string())
    }
}

/// Starts the engine's tasks. Fails only on a malformed URL or TLS file;
/// an unreachable Redis (or a failing TLS handshake) is retried in the
/// background.
pub fn spawn(settings: RedisSettings) -> Result<EngineLink, SetupError> {
    let shown_url = redact_url(&settings.url);
    let target = Arc::new(
        Target::open(Topology {
            url: &settings.url,
            cluster: settings.cluster,
            sentinel: settings
                .sentinel_master
                .as_deref()
                .map(|name| (name, settings.sentinel_password.as_deref())),
            tls_files: &settings.tls,
            timeout: settings.timeout,
        })
        .map_err(|error| SetupError {
            error,
            url: shown_url.clone(),
        })?,
    );
    target.spawn();
    let (requests_tx, requests) = mpsc::channel(settings.calls_max.max(1) + PRESENCE_CAPACITY);
    let (events, events_rx) = mpsc::channel(EVENTS_CAPACITY);
    let flags = Arc::new(ReadyFlags::default());
    let (connection_tx, connection) = watch::channel(None);
    let scripts = Arc::new(Scripts::new());
    tokio::spawn(health::connect(
        target.clone(),
        settings.clone(),
        scripts.clone(),
        connection_tx,
        flags.clone(),
        shown_url.clone(),
    ));
    let (subscriptions, commands) = mpsc::unbounded_channel();
    tokio::spawn(
        Subscriber {
            target,
            prefix: settings.prefix.clone(),
            node: settings.node.clone(),
            timeout: settings.timeout,
            commands,
            events: events.clone(),
            connected: flags.pubsub.clone(),
            shown_url,
            probe: Probe {
                connection: connection.clone(),
                interval: settings.probe_interval,
                timeout: settings.probe_timeout,
            },
        }
        .run(),
    );
    let (presence, presence_rx) = mpsc::channel(PRESENCE_CAPACITY);
    let presence_written = tokio::spawn(
        PresenceLane {
            connection: connection.clone(),
            scripts: scripts.clone(),
            prefix: settings.prefix.clone(),
            timeout: settings.timeout,
            ttl_ms: settings.presence_ttl_ms.max(1),
            diff_prefixes: settings.presence_diff_prefixes.clone(),
            requests: presence_rx,
            events: events.clone(),
            entries: HashMap::new(),
        }
        .run(),
    );
    let calls = Arc::new(Semaphore::new(settings.calls_max.max(1)));
    let dispatcher = Dispatcher {
        settings: Arc::new(settings),
        connection,
        scripts,
        events,
        presence,
        subscriptions,
        subscribing: HashMap::new(),
        calls,
        epochs: Arc::new(AtomicU64::new(0)),
    };
    tokio::spawn(dispatcher.run(requests));
    Ok(EngineLink {
        requests: requests_tx,
        events: events_rx,
        ready: Readiness::flags(flags),
        presence_written: Some(presence_written),
    })
}

/// A room's subscribe, as reads wait for it: `true` once confirmed,
/// `false` if it was dropped (interest turned off first).
type Subscribed = Shared<
    futures_util::future::Map<
        oneshot::Receiver<()>,
        fn(Result<(), oneshot::error::RecvError>) -> bool,
    >,
>;

/// Takes the core's requests and starts each.
struct Dispatcher {
    settings: Arc<RedisSettings>,
    connection: watch::Receiver<Option<Commands>>,
    scripts: Arc<Scripts>,
    events: mpsc::Sender<EngineEvent>,
    presence: mpsc::Sender<EngineRequest>,
    subscriptions: mpsc::UnboundedSender<Subscription>,
    /// Rooms whose subscribe may not be confirmed yet.
    subscribing: HashMap<RoomName, Subscribed>,
    calls: Arc<Semaphore>,
    /// Epochs this node has proposed (each append and read proposes one,
    /// used only when it creates the room).
    epochs: Arc<AtomicU64>,
}

impl Dispatcher {
    async fn run(mut self, mut requests: mpsc::Receiver<EngineRequest>) {
        while let Some(request) = requests.recv().await {
            match request {
                EngineRequest::Append {
                    call,
                    room,
                    message,
                    known,
                } => {
                    let epoch = self.fresh_epoch();
                    let call_future = append(
                        self.settings.clone(),
                        self.connection.clone(),
                        self.scripts.clone(),
                        epoch,
                        room,
                        message,
                        known,
                    );
                    self.start(
                        call_future.map(move |result| EngineEvent::Appended {
                            call,
                            result,
                            peer_members: 0,
                        }),
                        |error| EngineEvent::Appended {
                            call,
                            result: Err(error),
                            peer_members: 0,
                        },
                    )
                    .await;
                }
                EngineRequest::Read {
                    call,
                    room,
                    after,
                    limit,
                    known,
                } => {
                    let subscribed = match self.subscribing.get(&room) {
                        Some(waiting) if waiting.peek().is_some() => {
                            self.subscribing.remove(&room);
                            None
                        }
                        waiting => waiting.cloned(),
                    };
                    let epoch = self.fresh_epoch();
                    let call_future = read(
                        self.settings.clone(),
                        self.connection.clone(),
                        self.scripts.clone(),
                        subscribed,
                        epoch,
                        room,
                        after,
                        limit,
                        known,
                    );
                    self.start(
                        call_future.map(move |result| EngineEvent::Read { call, result }),
                        |error| EngineEvent::Read {
                            call,
                            result: Err(error),
                        },
                    )
                    .await;
                }
                EngineRequest::Interest { room, on } => {
                    if on {
                        let (ack, confirmed) = oneshot::channel();
                        let confirmed: Subscribed = confirmed
                            .map(was_confirmed as fn(Result<(), oneshot::error::RecvError>) -> bool)
                            .shared();
                        self.subscribing.insert(room.clone(), confirmed);
                        let _ = self.subscriptions.send(Subscription::On(room, ack));
                    } else {
                        self.subscribing.remove(&room);
                        let _ = self.subscriptions.send(Subscription::Off(room));
                    }
                }
                EngineRequest::Direct { target, frame } => {
                    // At most once, like the live stream; not answered.
                    let Ok(permit) = self.calls.clone().try_acquire_owned() else {
                        debug!(
                            "too many redis calls in flight: a direct message stays on this node"
                        );
                        continue;
                    };
                    let channel = direct_channel(&self.settings.prefix);
                    let payload = direct_payload(&self.settings.node, &target, frame.as_str());
                    let connection = self.connection.clone();
                    let timeout = self.settings.timeout;
                    tokio::spawn(async move {
                        let published = run_call(&connection, timeout, |mut conn| async move {
                            redis::cmd("PUBLISH")
                                .arg(&channel)
                                .arg(&payload)
                                .query_async::<i64>(&mut conn)
                                .await
                        })
                        .await;
                        drop(permit);
                        if let Err(error) = published {
                            debug!(%error, "a direct message stays on this node");
                        }
                    });
                }
                presence => {
                    if self.presence.send(presence).await.is_err() {
                        return;
                    }
                }
            }
        }
        debug!("redis engine stopped");
    }

    /// Runs a call on its own task when one of the `calls_max` slots is
    /// free; otherwise answers it with `Unavailable` at once.
    async fn start(
        &self,
        call: impl Future<Output = EngineEvent> + Send + 'static,
        refuse: impl FnOnce(EngineError) -> EngineEvent,
    ) {
        let Ok(permit) = self.calls.clone().try_acquire_owned() else {
            let error = EngineError::Unavailable("too many redis calls in flight".into());
            let _ = self.events.send(refuse(error)).await;
            return;
        };
        let events = self.events.clone();
        tokio::spawn(async move {
            let answer = call.await;
            drop(permit);
            let _ = events.send(answer).await;
        });
    }

    fn fresh_epoch(&self) -> String {
        let n = self.epochs.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}-{n}", self.settings.node)
    }
}

fn was_confirmed(ack: Result<(), oneshot::error::RecvError>) -> bool {
    ack.is_ok()
}

/// Runs one Redis call on the command connection within `timeout`.
/// Failures are logged here and come back as a [`CallError`].
pub(crate) async fn run_call<T, F, Fut>(
    connection: &watch::Receiver<Option<Commands>>,
    timeout: Duration,
    call: F,
) -> Result<T, CallError>
where
    F: FnOnce(Commands) -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    // At startup, a call waits (within its timeout) for the first connection.
    let mut connection = connection.clone();
    let manager =
        match tokio::time::timeout_at(deadline, connection.wait_for(Option::is_some)).await {
            Ok(Ok(manager)) => manager.clone(),
            _ => None,
        };
    let Some(manager) = manager else {
        return Err(CallError::NotConnected);
    };
    match tokio::time::timeout_at(deadline, call(manager)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => {
            debug!(error = %error.kind_text(), "redis call failed");
            Err(CallError::Failed)
        }
        Err(_) => Err(CallError::TimedOut),
    }
}

async fn append(
    settings: Arc<RedisSettings>,
    connection: watch::Receiver<Option<Commands>>,
    scripts: Arc<Scripts>,
    fresh_epoch: String,
    room: RoomName,
    message: Unnumbered,
    known: Option<Position>,
) -> Result<Numbered, EngineError> {
    let keys = RoomKeys::new(&settings.prefix, &room);
    let (known_epoch, known_seq) = position_args(known.as_ref());
    let meta_ttl = settings.meta_ttl_ms();
    let (epoch, seq): (String, String) = run_call(&connection, settings.timeout, |mut conn| {
        let message = &message;
        let scripts = &scripts;
        let settings = &settings;
        let keys = &keys;
        async move {
            scripts
                .append
                .key(&keys.meta)
                .key(&keys.log)
                .arg(&fresh_epoch)
                .arg(&message.head)
                .arg(&message.tail)
                .arg(message.series.as_deref().unwrap_or(""))
                .arg(if message.series.is_some() { "1" } else { "0" })
                .arg(settings.history_messages_max)
                .arg(settings.history_age_ms)
                .arg(meta_ttl)
                .arg(&keys.channel)
                .arg(&known_epoch)
                .arg(known_seq)
                .invoke_async(&mut conn)
                .await
        }
    })
    .await?;
    let seq: u64 = seq
        .parse()
        .map_err(|_| EngineError::Unavailable("the engine (redis) answered nonsense".into()))?;
    Ok(Numbered {
        frame: message.number(seq),
        room,
        epoch: Epoch::from(epoch),
        seq,
        series: message.series,
    })
}

#[allow(clippy::too_many_arguments)]
async fn read(
    settings: Arc<RedisSettings>,
    connection: watch::Receiver<Option<Commands>>,
    scripts: Arc<Scripts>,
    subscribed: Option<Subscribed>,
    fresh_epoch: String,
    room: RoomName,
    after: Option<Position>,
    limit: usize,
    known: Option<Position>,
) -> Result<ReadResult, EngineError> {
    let deadline = tokio::time::Instant::now() + settings.timeout;
    if let Some(subscribed) = subscribed {
        // The read must reflect every append whose live message this node
        // will not receive: it runs once the room's subscribe is confirmed.
        if tokio::time::timeout_at(deadline, subscribed).await.is_err() {
            return Err(EngineError::Unavailable(
                "the engine's (redis) live stream is not connected".into(),
            ));
        }
    }
    let keys = RoomKeys::new(&settings.prefix, &room);
    let (after_epoch, after_seq) = position_args(after.as_ref());
    let (known_epoch, known_seq) = position_args(known.as_ref());
    let meta_ttl = settings.meta_ttl_ms();
    let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
    let flat: Vec<String> = run_call(&connection, timeout, |mut conn| {
        let scripts = &scripts;
        let settings = &settings;
        let keys = &keys;
        async move {
            scripts
                .read
                .key(&keys.meta)
                .key(&keys.log)
                .arg(&fresh_epoch)
                .arg(&after_epoch)
                .arg(after_seq)
                .arg(limit)
                .arg(settings.history_age_ms)
                .arg(meta_ttl)
                .arg(&known_epoch)
                .arg(known_seq)
                .invoke_async(&mut conn)
                .await
        }
    })
    .await?;
    parse_read(&flat)
        .ok_or_else(|| EngineError::Unavailable("the engine (redis) answered nonsense".into()))
}

/// A position as two script arguments (`''` and 0 for none).
fn position_args(position: Option<&Position>) -> (String, u64) {
    match position {
        Some(position) => (position.epoch.to_string(), position.seq),
        None => (String::new(), 0),
    }
}

/// `{epoch, top, seq1, frame1, ...}` as a [`ReadResult`].
fn parse_read(flat: &[String]) -> Option<ReadResult> {
    let [epoch, top, rest @ ..] = flat else {
        return None;
    };
    let mut frames = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks_exact(2) {
        frames.push((pair[0].parse().ok()?, pair[1].clone().into()));
    }
    Some(ReadResult {
        epoch: Epoch::from(epoch.as_str()),
        top: top.parse().ok()?,
        frames,
    })
}
