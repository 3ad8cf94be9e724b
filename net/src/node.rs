//! Starting a node's hubs and its engine, for one shard or several.
//!
//! - **One shard** (`--shards 1`): the hub runs on the listener's runtime
//!   and drives either the core with the in-memory engine inline
//!   (inline) or the core and an engine task (linked: Redis, or a
//!   link the caller gave); see `crate::shard_core`. Nothing of the shard machinery is on its path.
//! - **Several shards**: every hub drives a linked core whose engine
//!   link leads to the [shard router](crate::shards::router), in front of
//!   the node's one engine (the in-memory engine as a task, Redis, or the
//!   caller's link). Presence diffs then come from the engine's changes
//!   (node-wide or cluster-wide counts), as between Redis nodes.

use std::sync::Arc;
use std::time::Duration;

use roomcast_core::{standalone, CoreConfig};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::info;

use crate::clock::Clock;
use crate::config::{redact_url, ServerConfig};
use crate::engine::redis::{RedisSettings, SetupError};
use crate::engine::tls::TlsFiles;
use crate::engine::{EngineLink, Readiness};
use crate::error::ServeError;
use crate::hooks::Hooks;
use crate::hub::{self, HubInput, HubSetup, HUB_CHANNEL_CAPACITY};
use crate::metrics::Metrics;
use crate::server::Cancel;
use crate::shard_core::ShardCore;
use crate::shards::memory_engine::{self, RoomCount};
use crate::shards::router::{self, FollowedRooms, SHARD_CHANNEL_CAPACITY};
use crate::shards::{Runtimes, ShardRuntime};
use crate::verify::TokenPool;

/// What the node shares with the hubs it starts.
pub(crate) struct NodeParts<'a> {
    pub(crate) config: &'a ServerConfig,
    pub(crate) core: CoreConfig,
    /// An engine given by the caller (the simulator's broker).
    pub(crate) link: Option<EngineLink>,
    pub(crate) shards: usize,
    pub(crate) runtime: ShardRuntime,
    pub(crate) clock: &'a Clock,
    pub(crate) metrics: &'a Metrics,
    pub(crate) tokens: &'a Arc<TokenPool>,
    pub(crate) hooks: &'a Arc<Hooks>,
    pub(crate) stop: &'a Arc<Cancel>,
}

/// A running node's hubs and engine.
pub(crate) struct Node {
    /// Each shard's hub inbox, in shard order.
    pub(crate) hubs: Vec<mpsc::Sender<HubInput>>,
    /// The hub tasks, ended once their inboxes close.
    pub(crate) hub_tasks: Vec<JoinHandle<()>>,
    /// The runtimes the shards run on.
    pub(crate) runtimes: Runtimes,
    /// The router and the in-memory engine's task (several shards only):
    /// they end after the hubs.
    pub(crate) engine_tasks: Vec<JoinHandle<()>>,
    pub(crate) ready: Readiness,
    /// The Redis engine's presence lane (see `EngineLink`).
    pub(crate) presence_written: Option<JoinHandle<()>>,
    pub(crate) rooms: NodeRooms,
}

/// Where `/ws/status` finds the node's room counts.
#[derive(Clone)]
pub(crate) enum NodeRooms {
    /// From the one hub's core.
    OneShard,
    /// Counted once for the node: the rooms the shards follow, and the
    /// in-memory engine's rooms (`None` with a shared engine).
    Shards {
        followed: FollowedRooms,
        engine: Option<RoomCount>,
    },
}

/// Starts the engine and the hubs.
pub(crate) fn start(parts: NodeParts<'_>) -> Result<Node, ServeError> {
    let NodeParts {
        config,
        mut core,
        link,
        shards,
        runtime,
        clock,
        metrics,
        tokens,
        hooks,
        stop,
    } = parts;
    let link = match (link, &config.engine.redis_url) {
        (Some(link), _) => {
            info!("engine: given by the caller");
            Some(link)
        }
        (None, Some(url)) => {
            let link = redis_engine(config, url, &core.epoch_prefix, metrics)
                .map_err(ServeError::Engine)?;
            info!(redis = %redact_url(url), prefix = %config.engine.redis_prefix, sentinel_master = ?config.engine.redis_sentinel_master, "engine: redis");
            Some(link)
        }
        (None, None) => None,
    };
    let setup = |shard| HubSetup {
        clock: clock.clone(),
        metrics: metrics.clone(),
        tokens: tokens.clone(),
        hooks: hooks.clone(),
        stop: stop.clone(),
        shard,
        shards,
    };
    if shards == 1 {
        let runtimes = Runtimes::start(1, ShardRuntime::Tasks)?;
        let (hub, inbox) = mpsc::channel(HUB_CHANNEL_CAPACITY);
        let (task, ready, presence_written) = match link {
            Some(mut link) => {
                let ready = link.ready.clone();
                let presence_written = link.presence_written.take();
                let task = spawn_hub(&runtimes, 0, ShardCore::linked(core, link), inbox, setup(0));
                (task, ready, presence_written)
            }
            None => {
                let task = spawn_hub(&runtimes, 0, ShardCore::inline(core), inbox, setup(0));
                (task, Readiness::always(), None)
            }
        };
        return Ok(Node {
            hubs: vec![hub],
            hub_tasks: vec![task],
            runtimes,
            engine_tasks: Vec::new(),
            ready,
            presence_written,
            rooms: NodeRooms::OneShard,
        });
    }

    // Several shards: diffs from the engine, which sees the whole node.
    core.presence_diffs_from_engine = true;
    // Each shard's core bounds its own unwritten bytes: the node's budget
    // is split evenly (never below one connection's queue bound).
    core.limits.outbound_bytes_max =
        (core.limits.outbound_bytes_max / shards).max(core.limits.outbound_queue_bytes_max);
    let mut engine_tasks = Vec::new();
    let (mut link, engine_rooms) = match link {
        Some(link) => (link, None),
        None => {
            let engine = standalone::memory_engine(&core);
            let (link, rooms, task) =
                memory_engine::spawn(engine, clock.clone(), SHARD_CHANNEL_CAPACITY);
            engine_tasks.push(task);
            info!(shards, "engine: in memory, shared by the shards");
            (link, Some(rooms))
        }
    };
    let ready = link.ready.clone();
    let presence_written = link.presence_written.take();
    let only_node = engine_rooms.is_some();
    let (links, followed, router_task) = router::spawn(link, shards, only_node);
    engine_tasks.push(router_task);
    let runtimes = Runtimes::start(shards, runtime)?;
    let mut hubs = Vec::with_capacity(shards);
    let mut hub_tasks = Vec::with_capacity(shards);
    for (shard, link) in links.into_iter().enumerate() {
        let (hub, inbox) = mpsc::channel(HUB_CHANNEL_CAPACITY);
        let shard_core = ShardCore::linked(core.clone(), link);
        hub_tasks.push(spawn_hub(&runtimes, shard, shard_core, inbox, setup(shard)));
        hubs.push(hub);
    }
    info!(shards, "shards started");
    Ok(Node {
        hubs,
        hub_tasks,
        runtimes,
        engine_tasks,
        ready,
        presence_written,
        rooms: NodeRooms::Shards {
            followed,
            engine: engine_rooms,
        },
    })
}

/// Starts a hub on its shard's runtime.
fn spawn_hub(
    runtimes: &Runtimes,
    shard: usize,
    core: ShardCore,
    inbox: mpsc::Receiver<HubInput>,
    setup: HubSetup,
) -> JoinHandle<()> {
    // Unconstrained: tokio's cooperative budget (128 socket operations per
    // poll) would make the hub give up mid-fan-out and retry every other
    // socket through its readiness path. The hub yields by itself between
    // slices of writes and whenever its channel is empty.
    runtimes
        .handle(shard)
        .spawn(tokio::task::unconstrained(hub::run(core, inbox, setup)))
}

/// Starts the Redis engine task the configuration names.
fn redis_engine(
    config: &ServerConfig,
    url: &str,
    node: &str,
    metrics: &Metrics,
) -> Result<EngineLink, SetupError> {
    let limits = &config.limits;
    let engine = &config.engine;
    let tls = TlsFiles {
        ca: engine.redis_tls_ca.clone(),
        client: engine
            .redis_tls_cert
            .clone()
            .zip(engine.redis_tls_key.clone()),
    };
    debug_assert!(
        engine.redis_tls_cert.is_some() == engine.redis_tls_key.is_some(),
        "validate() lets only both or neither through"
    );
    crate::engine::redis::spawn(RedisSettings {
        url: url.to_owned(),
        tls,
        prefix: engine.redis_prefix.clone(),
        node: node.to_owned(),
        timeout: Duration::from_millis(engine.redis_timeout_ms),
        history_messages_max: limits.history_messages_max,
        history_age_ms: limits.history_age_ms,
        presence_ttl_ms: limits.presence_ttl_ms,
        presence_diff_prefixes: config.rooms.presence_diff_prefixes.clone(),
        stream_check_interval_ms: limits.stream_check_interval_ms,
        calls_max: limits.engine_calls_max,
        local_connections: metrics.connections.clone(),
        cluster: engine.redis_cluster,
        sentinel_master: engine.redis_sentinel_master.clone(),
        sentinel_password: engine.redis_sentinel_password.clone(),
        probe_interval: Duration::from_millis(engine.redis_probe_interval_ms),
        probe_timeout: Duration::from_millis(engine.redis_probe_timeout_ms),
    })
}
