//! Prometheus metrics (`GET /metrics`, OpenMetrics text format).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label of a per-reason counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// e.g. `slow_consumer`, `rate_limit`, `idle`, `token_expired`, `oversize`.
    pub reason: &'static str,
}

/// Label of the hook metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabel {
    /// `join` or `connect`.
    pub hook: &'static str,
}

/// Label of the hook failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookFailure {
    /// `join` or `connect`.
    pub hook: &'static str,
    /// `timeout`, `connect`, `transport`, `status`, `body_too_large`,
    /// `bad_body`, `invalid_url`, or `busy` (over `calls_max`).
    pub kind: &'static str,
}

/// Label of the per-shard gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    /// The shard's number, from 0.
    pub shard: String,
}

/// Label of a per-outcome counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok`, or what went wrong (e.g. `timeout`, `connect`, `status`).
    pub outcome: &'static str,
}

/// Every metric the server exports. Cheap to clone (shared counters).
#[derive(Clone)]
pub struct Metrics {
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Rooms kept by the node (see `/ws/status`'s `rooms`).
    pub rooms: Gauge,
    /// Open WebSocket connections per shard (operators watch the balance).
    pub shard_connections_by_shard: Family<ShardLabel, Gauge>,
    /// Connections accepted since start.
    pub connections_opened: Counter,
    /// Upgrades refused before the connection existed, by reason.
    pub connections_rejected: Family<Reason, Counter>,
    /// Connections ended, by reason (`client` when the client left).
    pub disconnects: Family<Reason, Counter>,
    /// Client messages received.
    pub messages_in: Counter,
    /// Bytes of client messages received.
    pub bytes_in: Counter,
    /// Frames written to clients.
    pub messages_out: Counter,
    /// Bytes of frames written to clients.
    pub bytes_out: Counter,
    /// Socket writes that carried frames (`messages_out / socket_writes`
    /// is how many frames one write carries: the batching under load).
    pub socket_writes: Counter,
    /// Broadcasts accepted (per room).
    pub broadcasts: Counter,
    /// Broadcast frames handed to members.
    pub deliveries: Counter,
    /// Seconds from a publish reaching the server to its frame being written.
    pub publish_to_write_seconds: Histogram,
    /// Client messages and publishes refused because `inbound_bytes_max` was full.
    pub server_busy: Counter,
    /// Hook requests made (answered or not), by hook.
    pub hook_calls: Family<HookLabel, Counter>,
    /// Hook calls without a usable answer (`HOOK_UNAVAILABLE`), by hook and kind.
    pub hook_failures: Family<HookFailure, Counter>,
    /// Seconds from a hook request to its answer (or failure), by hook.
    pub hook_seconds: Family<HookLabel, Histogram, fn() -> Histogram>,
    /// Joins allowed from the join hook's cache (`cache_ms`), no call made.
    pub hook_cache_hits: Counter,
    /// Fetches of the identity provider's key set (`jwks_url`), by outcome.
    pub jwks_fetches: Family<Outcome, Counter>,
    /// Usable keys in the current key set (0: none loaded).
    pub jwks_keys: Gauge,
    registry: std::sync::Arc<Registry>,
}

impl Metrics {
    /// Shard `shard`'s open connections gauge.
    pub fn shard_connections(&self, shard: usize) -> Gauge {
        self.shard_connections_by_shard
            .get_or_create(&ShardLabel {
                shard: shard.to_string(),
            })
            .clone()
    }

    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("roomcast");
        let connections = Gauge::default();
        let rooms = Gauge::default();
        let connections_opened = Counter::default();
        let connections_rejected = Family::<Reason, Counter>::default();
        let disconnects = Family::<Reason, Counter>::default();
        let messages_in = Counter::default();
        let bytes_in = Counter::default();
        let messages_out = Counter::default();
        let bytes_out = Counter::default();
        let socket_writes = Counter::default();
        let broadcasts = Counter::default();
        let deliveries = Counter::default();
        let server_busy = Counter::default();
        let hook_calls = Family::<HookLabel, Counter>::default();
        let hook_failures = Family::<HookFailure, Counter>::default();
        // 1 ms .. ~65 s
        let hook_seconds = Family::<HookLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.001, 2.0, 17))) as fn() -> Histogram,
        );
        let hook_cache_hits = Counter::default();
        registry.register(
            "hook_calls",
            "Requests to the application's hooks, by hook (join, connect)",
            hook_calls.clone(),
        );
        registry.register(
            "hook_failures",
            "Hook requests without a usable answer (answered HOOK_UNAVAILABLE), by hook and kind",
            hook_failures.clone(),
        );
        registry.register(
            "hook_seconds",
            "Time from a hook request to its answer or failure, by hook",
            hook_seconds.clone(),
        );
        registry.register(
            "hook_cache_hits",
            "Joins allowed from the join hook's cache (cache_ms) without a request",
            hook_cache_hits.clone(),
        );
        let jwks_fetches = Family::<Outcome, Counter>::default();
        let jwks_keys = Gauge::default();
        // 50 µs .. ~3.3 s
        let publish_to_write_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 17));
        registry.register(
            "connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        let shard_connections_by_shard = Family::<ShardLabel, Gauge>::default();
        registry.register(
            "shard_connections",
            "Open WebSocket connections per shard",
            shard_connections_by_shard.clone(),
        );
        registry.register(
            "rooms",
            "Rooms kept: with members on this node or history in the engine",
            rooms.clone(),
        );
        registry.register(
            "connections_opened",
            "WebSocket connections accepted",
            connections_opened.clone(),
        );
        registry.register(
            "connections_rejected",
            "Upgrades refused, by reason",
            connections_rejected.clone(),
        );
        registry.register(
            "disconnects",
            "Connections ended, by reason",
            disconnects.clone(),
        );
        registry.register(
            "messages_in",
            "Client messages received",
            messages_in.clone(),
        );
        registry.register(
            "bytes_in",
            "Bytes of client messages received",
            bytes_in.clone(),
        );
        registry.register(
            "messages_out",
            "Frames written to clients",
            messages_out.clone(),
        );
        registry.register(
            "bytes_out",
            "Bytes of frames written to clients",
            bytes_out.clone(),
        );
        registry.register(
            "socket_writes",
            "Socket writes that carried frames (messages_out / socket_writes: frames per write)",
            socket_writes.clone(),
        );
        registry.register(
            "broadcasts",
            "Room broadcasts published",
            broadcasts.clone(),
        );
        registry.register(
            "deliveries",
            "Broadcast frames handed to room members",
            deliveries.clone(),
        );
        registry.register(
            "server_busy",
            "Client messages and publishes refused (SERVER_BUSY) because inbound_bytes_max was full",
            server_busy.clone(),
        );
        registry.register(
            "publish_to_write_seconds",
            "Time from a publish reaching the server to its frame being written to a client",
            publish_to_write_seconds.clone(),
        );
        registry.register(
            "jwks_fetches",
            "Fetches of the identity provider's token keys (auth.jwks_url), by outcome",
            jwks_fetches.clone(),
        );
        registry.register(
            "jwks_keys",
            "Usable token keys in the identity provider's current key set",
            jwks_keys.clone(),
        );
        Metrics {
            connections,
            rooms,
            shard_connections_by_shard,
            connections_opened,
            connections_rejected,
            disconnects,
            messages_in,
            bytes_in,
            messages_out,
            bytes_out,
            socket_writes,
            broadcasts,
            deliveries,
            server_busy,
            hook_calls,
            hook_failures,
            hook_seconds,
            hook_cache_hits,
            jwks_fetches,
            jwks_keys,
            publish_to_write_seconds,
            registry: std::sync::Arc::new(registry),
        }
    }

    /// Counts one disconnect.
    pub fn disconnect(&self, reason: &'static str) {
        self.disconnects.get_or_create(&Reason { reason }).inc();
    }

    /// Counts one refused upgrade.
    pub fn reject(&self, reason: &'static str) {
        self.connections_rejected
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// Counts one fetch of the identity provider's key set.
    pub fn jwks_fetch(&self, outcome: &'static str) {
        self.jwks_fetches.get_or_create(&Outcome { outcome }).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}
