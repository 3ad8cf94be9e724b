//! Serving: the accept loop, admission control, and graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_tungstenite::tungstenite::protocol::WebSocketConfig;
use hyper_util::rt::{TokioIo, TokioTimer};
use roomcast_core::{CoreConfig, MessageTypes};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::auth::TokenVerifier;
use crate::budget::InboundBudget;
use crate::clock::{Clock, IdSource};
use crate::config::ServerConfig;
use crate::engine::{EngineLink, Readiness};
use crate::error::{ConfigError, ServeError};
use crate::hooks::Hooks;
use crate::hub::HubInput;
use crate::listener::Listener;
use crate::metrics::Metrics;
use crate::node::{Node, NodeParts, NodeRooms};
use crate::shards::{Placement, Seat, ShardRuntime};
use crate::verify::TokenPool;

/// What varies between production and simulation: the clock and the ids.
pub struct ServeOptions {
    /// The server's clock.
    pub clock: Clock,
    /// Connection ids and the epoch prefix.
    pub ids: IdSource,
    /// Metrics registry (pass one in to read it from outside, as tests do).
    pub metrics: Metrics,
    /// The CPUs this process may run on: the shard count when the
    /// configuration's `shards` is 0.
    pub cpus: usize,
    /// Where shards run: threads (production) or tasks (the simulator).
    pub shard_runtime: ShardRuntime,
}

impl ServeOptions {
    /// Production: system wall clock, random ids, shards on threads of
    /// their own, one per CPU by default (what `taskset`, cpusets and
    /// cgroup CPU quotas leave this process, as
    /// `std::thread::available_parallelism` reports it).
    pub fn production() -> ServeOptions {
        ServeOptions {
            clock: Clock::system(),
            ids: IdSource::Random,
            metrics: Metrics::new(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            shard_runtime: ShardRuntime::Threads,
        }
    }
}

/// Shared state of every request handler.
pub(crate) struct App {
    pub(crate) config: ServerConfig,
    pub(crate) verifier: Arc<TokenVerifier>,
    /// The application's hooks (the connect hook is called from here).
    pub(crate) hooks: Arc<Hooks>,
    pub(crate) types: MessageTypes,
    /// Each shard's hub, in shard order.
    pub(crate) hubs: Vec<mpsc::Sender<HubInput>>,
    /// Where the node's room counts come from (`/ws/status`, `/metrics`).
    pub(crate) rooms: NodeRooms,
    pub(crate) metrics: Metrics,
    pub(crate) gate: Arc<Gate>,
    pub(crate) ids: Mutex<IdSource>,
    pub(crate) clock: Clock,
    pub(crate) started: Instant,
    pub(crate) node_id: String,
    pub(crate) sessions: Arc<Sessions>,
    /// HTTP connection tasks (counted like sessions, for the drain).
    pub(crate) http_connections: Arc<Sessions>,
    /// Tells HTTP connections when to drain and when to stop.
    pub(crate) phase: tokio::sync::watch::Sender<Phase>,
    pub(crate) ws_config: WebSocketConfig,
    pub(crate) session_settings: Arc<crate::session::SessionSettings>,
    /// Bytes of client messages and publish bodies in flight to the hub.
    pub(crate) inbound: Arc<InboundBudget>,
    /// Set when shutdown begins: upgrades still arriving on kept-alive HTTP
    /// connections get 503 instead of a session nobody will close.
    pub(crate) shutting_down: std::sync::atomic::AtomicBool,
    /// Whether the engine answers (`GET /readyz`).
    pub(crate) ready: Readiness,
}

/// Serves on `listener` until `shutdown` resolves, then finishes the HTTP
/// requests in progress, closes every client with 1001, and returns once
/// they are gone (or `shutdown_drain_ms` passed) and every task it started
/// has ended.
///
/// The engine is the one the configuration names: the in-memory engine, or
/// Redis when `[engine] redis_url` is set.
pub async fn serve<L: Listener>(
    listener: L,
    config: ServerConfig,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_engine(listener, config, options, None, shutdown).await
}

/// Serves like [`serve`], with the engine task at the other end of `link`
/// (the hub drives the bare core, as with Redis): for an engine the
/// configuration cannot name, such as the simulator's broker. The
/// configuration must not also name one (`[engine] redis_url`).
pub async fn serve_with_engine<L: Listener>(
    listener: L,
    config: ServerConfig,
    options: ServeOptions,
    link: EngineLink,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    if config.engine.redis_url.is_some() {
        return Err(ServeError::TwoEngines);
    }
    serve_engine(listener, config, options, Some(link), shutdown).await
}

async fn serve_engine<L: Listener>(
    mut listener: L,
    config: ServerConfig,
    options: ServeOptions,
    link: Option<EngineLink>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    config.validate()?;
    let verifier = Arc::new(TokenVerifier::from_config(&config.auth)?);
    if !verifier.is_configured() {
        warn!(
            "no JWT key configured: every connection is anonymous and the publish API answers 401"
        );
    }
    let types = MessageTypes::with_custom(config.custom_types.iter().map(String::as_str))
        .map_err(|bad| ConfigError::new(format!("invalid custom type {:?}", bad.0)))?;
    let ServeOptions {
        clock,
        mut ids,
        metrics,
        cpus,
        shard_runtime,
    } = options;
    let node_id = ids.epoch_prefix();
    let core_config = CoreConfig {
        limits: config.limits.clone(),
        access: config.access.clone(),
        types: types.clone(),
        epoch_prefix: node_id.clone(),
        server_name: config.server_name.clone(),
        rooms: config.rooms.clone(),
        // A shared engine (Redis, or a link the caller gave, such as the
        // simulator's broker) tells every node's presence changes: diffs
        // are built from those (cluster-wide), not from this node's own.
        presence_diffs_from_engine: config.engine.redis_url.is_some() || link.is_some(),
        join_hook: config.hooks.join_url.is_some(),
    };
    let hooks = Arc::new(Hooks::new(&config.hooks, &metrics));
    let tokens = TokenPool::new(verifier.clone(), TokenPool::default_threads());
    // Tells the hubs to close every connection (beside their channels,
    // which may be full: see `hub::run`).
    let hub_stop = Arc::new(Cancel::default());
    let shards = config.shard_count(cpus);
    let node = crate::node::start(NodeParts {
        config: &config,
        core: core_config,
        link,
        shards,
        runtime: shard_runtime,
        clock: &clock,
        metrics: &metrics,
        tokens: &tokens,
        hooks: &hooks,
        stop: &hub_stop,
    })?;
    let Node {
        hubs,
        hub_tasks,
        runtimes,
        engine_tasks,
        ready,
        presence_written,
        rooms,
    } = node;
    let placement = Placement::new(shards);
    // Sockets move to a shard thread's own reactor; within one runtime
    // they stay where they are.
    let moves_sockets = shards > 1 && shard_runtime == ShardRuntime::Threads;

    let limits = &config.limits;
    let inbound = InboundBudget::new(limits.inbound_bytes_max);
    let mut ws_config = WebSocketConfig::default();
    ws_config.read_buffer_size = limits.read_buffer_bytes;
    // tungstenite writes only the control frames it answers by itself
    // (pongs, a close echo), into a sink the session drains after every
    // message; data frames are written by the hub (see writer.rs).
    ws_config.write_buffer_size = 0;
    ws_config.max_write_buffer_size = crate::writer::CONTROL_QUEUE_MAX;
    ws_config.max_message_size = Some(limits.message_bytes_max);
    ws_config.max_frame_size = Some(limits.message_bytes_max);
    ws_config.accept_unmasked_frames = false;

    let app = Arc::new(App {
        gate: Arc::new(Gate::new(
            limits.connections_max,
            limits.connections_per_ip_max,
        )),
        verifier,
        hooks,
        types,
        hubs,
        rooms,
        metrics,
        ids: Mutex::new(ids),
        clock: clock.clone(),
        started: Instant::now(),
        node_id,
        sessions: Arc::new(Sessions::default()),
        http_connections: Arc::new(Sessions::default()),
        phase: tokio::sync::watch::Sender::new(Phase::Serving),
        ws_config,
        session_settings: Arc::new(crate::session::SessionSettings {
            close_flush_timeout: Duration::from_millis(config.close_flush_timeout_ms),
            linger: Duration::from_millis(limits.linger_ms),
            linger_bytes_max: limits.linger_bytes_max,
            limits: limits.clone(),
            clock,
            inbound: inbound.clone(),
            stop: Arc::new(Cancel::default()),
        }),
        inbound,
        shutting_down: std::sync::atomic::AtomicBool::new(false),
        ready,
        config,
    });
    let local = listener.local_addr()?;
    // The identity provider's keys (with `[auth] jwks_url`), fetched by a
    // task of their own, never on the hub; aborted when serving ends.
    let keys_task = app.verifier.start(&app.metrics);
    info!(listen = %local, node = %app.node_id, "roomcast listening");

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((io, peer)) => {
                    let seat = Arc::new(placement.place());
                    let guard = app.http_connections.enter();
                    let app = app.clone();
                    let runtime = runtimes.handle(seat.shard);
                    if moves_sockets {
                        match L::detach(io) {
                            Ok(detached) => {
                                runtime.spawn(async move {
                                    // Registered with the shard's own reactor.
                                    match L::attach(detached) {
                                        Ok(io) => serve_connection(app, seat, io, peer).await,
                                        Err(error) => debug!(peer = %peer, %error, "socket lost moving to its shard"),
                                    }
                                    drop(guard);
                                });
                            }
                            Err(error) => debug!(peer = %peer, %error, "socket lost moving to its shard"),
                        }
                    } else {
                        runtime.spawn(async move {
                            serve_connection(app, seat, io, peer).await;
                            drop(guard);
                        });
                    }
                }
                Err(error) => {
                    // Usually fd exhaustion: back off briefly instead of spinning.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }

    // The order of a graceful shutdown (docs/operations.md section 4).
    info!("shutting down: no new connections; closing clients with 1001");
    // 1. No new TCP connections; upgrades and API calls that start from now
    //    on get 503.
    drop(listener);
    app.shutting_down.store(true, Ordering::SeqCst);
    // 2. HTTP connections finish the request they are serving (a publish
    //    being answered completes), then close; idle ones close now.
    app.phase.send_replace(Phase::Draining);
    // 3. Every WebSocket is closed with 1001 after what is queued for it:
    //    the hub hears it before any input still queued for it.
    hub_stop.cancel();
    // 4. Wait for both, up to the drain time.
    let drain = Duration::from_millis(app.config.shutdown_drain_ms);
    let drained = tokio::time::timeout(drain, async {
        app.sessions.all_gone().await;
        app.http_connections.all_gone().await;
    })
    .await;
    if drained.is_err() {
        warn!(
            remaining = app.sessions.count() + app.http_connections.count(),
            "drain time over; dropping remaining connections"
        );
        // 5. Stragglers stop now: HTTP connections are dropped, sessions
        //    stop waiting for close replies and lingering.
        app.phase.send_replace(Phase::Stopped);
        app.session_settings.stop.cancel();
        let _ = tokio::time::timeout(STRAGGLERS_MAX, async {
            app.sessions.all_gone().await;
            app.http_connections.all_gone().await;
        })
        .await;
    }
    // 6. With every task that held a sender gone, each hub sees its
    //    channel close and stops.
    let redis_timeout_ms = app.config.engine.redis_timeout_ms;
    drop(app);
    for mut hub_task in hub_tasks {
        if tokio::time::timeout(STRAGGLERS_MAX, &mut hub_task)
            .await
            .is_err()
        {
            warn!("a hub did not stop; aborting it");
            hub_task.abort();
            let _ = hub_task.await;
        }
    }
    // 7. With every hub gone, the shard router (several shards) ends, and
    //    with it the in-memory engine's task. Their work is in memory: a
    //    hub's last requests are forwarded at once.
    for mut task in engine_tasks {
        if tokio::time::timeout(STRAGGLERS_MAX, &mut task)
            .await
            .is_err()
        {
            warn!("the engine task did not stop; aborting it");
            task.abort();
        }
    }
    // The token threads end once their current job is done; the shard
    // threads, idle now, end.
    let threads = tokens.close();
    let _ = tokio::task::spawn_blocking(move || {
        for thread in threads {
            let _ = thread.join();
        }
    })
    .await;
    runtimes.stop().await;
    // 8. With the hubs gone, the engine's presence lane writes what the
    //    shutdown asked (this node's entries removed, one change per room,
    //    so other nodes' members hear one diff per room) and ends. Not
    //    waited for beyond one Redis call timeout: entries left behind
    //    expire within `presence_ttl_ms`, as a crashed node's do.
    if let Some(lane) = presence_written {
        let wait = Duration::from_millis(redis_timeout_ms);
        if tokio::time::timeout(wait, lane).await.is_err() {
            warn!("the engine's last presence writes did not finish in time; those entries expire within presence_ttl_ms");
        }
    }
    if let Some(task) = keys_task {
        task.abort();
    }
    info!("stopped");
    Ok(())
}

/// Serves one accepted socket's HTTP requests (and upgrades) on its shard
/// until it closes or the drain ends.
async fn serve_connection<Io>(app: Arc<App>, seat: Arc<Seat>, io: Io, peer: std::net::SocketAddr)
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handshake = Duration::from_millis(app.config.limits.handshake_timeout_ms);
    let mut phase = app.phase.subscribe();
    let service = {
        let app = app.clone();
        let seat = seat.clone();
        service_fn(move |request| crate::http::handle(app.clone(), seat.clone(), peer, request))
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    loop {
        // Biased: when both are ready the outcome does not depend on
        // tokio's unseeded branch choice (the simulator replays a seed
        // exactly).
        tokio::select! {
            biased;
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    debug!(peer = %peer, %error, "http connection ended with an error");
                }
                break;
            }
            changed = phase.changed() => match changed.map(|()| *phase.borrow()) {
                // Finish the request in progress (if any), then close.
                Ok(Phase::Draining) => connection.as_mut().graceful_shutdown(),
                Ok(Phase::Serving) => {}
                // The drain time is over.
                Ok(Phase::Stopped) | Err(_) => break,
            },
        }
    }
    // The seat is held by the upgraded WebSocket's session too (see
    // `http::ws_connect`), so the socket counts on its shard until closed.
    drop(seat);
}

/// How long tasks told to stop (after the drain time) may take to end.
const STRAGGLERS_MAX: Duration = Duration::from_secs(2);

/// Where the server is in its life, as HTTP connections see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Serving requests.
    Serving,
    /// Shutting down: finish the request in progress, then close.
    Draining,
    /// The drain time is over: stop now.
    Stopped,
}

/// A one-way "stop now" signal, cheap to wait on.
#[derive(Debug, Default)]
pub struct Cancel {
    cancelled: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl Cancel {
    /// Signals every waiter, now and later.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Resolves once [`Cancel::cancel`] was called.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            if self.cancelled.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// Admission control: total and per-IP connection counts, taken before the
/// upgrade so an overloaded server answers 503 instead of accepting.
pub(crate) struct Gate {
    total_max: usize,
    per_ip_max: usize,
    /// Lookup only; never iterated.
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why admission was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Total,
    PerIp,
}

impl Gate {
    fn new(total_max: usize, per_ip_max: usize) -> Gate {
        Gate {
            total_max,
            per_ip_max,
            counts: Mutex::new((0, HashMap::new())),
        }
    }

    /// Takes a slot for `ip`, released when the permit drops.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.0 >= self.total_max {
            return Err(Refusal::Total);
        }
        let per_ip = counts.1.entry(ip).or_insert(0);
        if *per_ip >= self.per_ip_max {
            return Err(Refusal::PerIp);
        }
        *per_ip += 1;
        counts.0 += 1;
        Ok(Permit {
            gate: self.clone(),
            ip,
        })
    }
}

/// A held connection slot.
pub(crate) struct Permit {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.gate.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.0 -= 1;
        if let Some(n) = counts.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.1.remove(&self.ip);
            }
        }
    }
}

/// Counts live tasks of one kind (sessions, HTTP connections) so shutdown
/// can wait for them.
#[derive(Default)]
pub(crate) struct Sessions {
    live: AtomicUsize,
    gone: Notify,
}

/// Held by a connection for its lifetime.
pub(crate) struct SessionGuard(Arc<Sessions>);

impl Sessions {
    pub(crate) fn enter(self: &Arc<Self>) -> SessionGuard {
        self.live.fetch_add(1, Ordering::SeqCst);
        SessionGuard(self.clone())
    }

    fn count(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    async fn all_gone(&self) {
        loop {
            let notified = self.gone.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.gone.notify_waiters();
        }
    }
}
