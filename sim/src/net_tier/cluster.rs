//! The server side of a run: one server host with the in-memory engine
//! inline (the default, as `roomcast serve` runs), or several server nodes
//! against the broker host (the shared engine, see [`crate::broker`]).
//! Every node runs the production server unchanged, `roomcast_net::serve`
//! or `serve_with_engine`, over turmoil's TCP.

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use roomcast_core::standalone::history_bounds;
use roomcast_core::{CoreConfig, Limits};
use roomcast_net::{Clock, IdSource, Listener, Metrics, ServeOptions, ServerConfig, ShardRuntime};

use super::{BROKER, PORT, START_UNIX_MS};
use crate::broker::host::{BrokerConfig, BrokerHandle};
use crate::broker::link::{LinkConfig, LinkStats};
use crate::rng::SimRng;

/// The broker's port.
const BROKER_PORT: u16 = 7000;

/// The server's listener over turmoil's TCP.
struct TurmoilListener(turmoil::net::TcpListener);

impl Listener for TurmoilListener {
    type Io = turmoil::net::TcpStream;

    async fn accept(&mut self) -> std::io::Result<(Self::Io, SocketAddr)> {
        self.0.accept().await
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    // Shards are tasks of the host's runtime here: sockets never move.
    type Detached = turmoil::net::TcpStream;

    fn detach(io: Self::Io) -> std::io::Result<Self::Detached> {
        Ok(io)
    }

    fn attach(detached: Self::Detached) -> std::io::Result<Self::Io> {
        Ok(detached)
    }
}

async fn bind() -> std::io::Result<TurmoilListener> {
    let listener =
        turmoil::net::TcpListener::bind((IpAddr::from(Ipv4Addr::UNSPECIFIED), PORT)).await?;
    Ok(TurmoilListener(listener))
}

/// The limits a seed runs with (small timeouts so dead peers are noticed quickly).
pub(crate) fn draw_limits(rng: &mut SimRng) -> Limits {
    let ping_interval_ms = rng.range(500, 1_500);
    Limits {
        message_bytes_max: 4_096,
        outbound_queue_bytes_max: [8_192, 65_536, 1 << 20][rng.below(3) as usize],
        rooms_per_connection_max: rng.range(2, 6) as usize,
        messages_per_second: rng.range(20, 100) as u32,
        message_burst: rng.range(10, 40) as u32,
        rate_violations_max: rng.range(2, 10) as u32,
        ping_interval_ms,
        idle_timeout_ms: ping_interval_ms * 3,
        handshake_timeout_ms: 5_000,
        connections_max: 100_000,
        connections_per_ip_max: 100_000,
        history_messages_max: [0, 5, 100][rng.below(3) as usize],
        history_age_ms: rng.range(1_000, 4_000),
        ..Limits::default()
    }
}

/// The one server host of a one-node run: in-memory engine, inline.
pub(crate) fn add_standalone(
    sim: &mut turmoil::Sim<'_>,
    host: &str,
    config: ServerConfig,
    seed: u64,
) {
    sim.host(host, move || {
        let config = config.clone();
        async move {
            let options = ServeOptions {
                clock: Clock::starting_at(START_UNIX_MS),
                ids: IdSource::Seeded(seed),
                metrics: Metrics::new(),
                cpus: 1,
                shard_runtime: ShardRuntime::Tasks,
            };
            roomcast_net::serve(bind().await?, config, options, std::future::pending()).await?;
            Ok(())
        }
    });
}

/// A stream-check interval longer than any run.
const STREAM_CHECK_NEVER_MS: u64 = 3_600_000;

/// How a cluster's engine behaves: the nodes' links and the broker.
#[derive(Clone, Debug)]
pub(crate) struct ClusterTiming {
    pub(crate) call_timeout_ms: u64,
    pub(crate) ping_interval_ms: u64,
    pub(crate) dead_after_ms: u64,
    pub(crate) connect_timeout_ms: u64,
    pub(crate) backoff_first_ms: u64,
    pub(crate) backoff_cap_ms: u64,
    pub(crate) broker_idle_ms: u64,
}

impl ClusterTiming {
    /// Draws a seed's engine timings, and the engine-related limits.
    ///
    /// Half the seeds check every room's stream often (0.5-5 s: lost
    /// messages are also found that way); the other half never within the
    /// run, so members catch up only through the live stream, the refills
    /// its jumps start, and the reads after a `StreamReset`. A node that
    /// stops following its rooms after a reconnect then fails the
    /// quiet-state check instead of being rescued by the periodic read.
    ///
    /// The engine's budgets are drawn tight on some seeds: history bytes
    /// (the broker evicts the oldest entries across rooms, so recoveries
    /// and refills find less) and, with `broker_faults` only, calls in
    /// flight (the core and the link refuse beyond it: 503s and refused
    /// joins, which only a run that tolerates engine failures accepts).
    pub(crate) fn draw(
        rng: &mut SimRng,
        limits: &mut Limits,
        broker_faults: bool,
    ) -> ClusterTiming {
        limits.stream_check_interval_ms = if rng.chance(500_000) {
            rng.range(500, 5_000)
        } else {
            STREAM_CHECK_NEVER_MS
        };
        limits.engine_retry_ms = rng.range(50, 1_000);
        limits.presence_ttl_ms = rng.range(2_000, 20_000);
        if rng.chance(250_000) {
            limits.history_bytes_max = rng.range(4_096, 65_536) as usize;
        }
        let calls_max = [4, 32, limits.engine_calls_max][rng.below(3) as usize];
        if broker_faults {
            limits.engine_calls_max = calls_max;
        }
        ClusterTiming {
            call_timeout_ms: rng.range(300, 1_500),
            ping_interval_ms: 250,
            dead_after_ms: 1_000,
            connect_timeout_ms: 500,
            backoff_first_ms: 100,
            backoff_cap_ms: 2_000,
            broker_idle_ms: 2_500,
        }
    }

    /// After a heal, how long until every node is surely connected to the
    /// broker again: noticing a dead connection, the longest backoff, a
    /// connection attempt, and a call.
    pub(crate) fn settle_ms(&self) -> u64 {
        self.dead_after_ms
            + self.backoff_cap_ms
            + self.connect_timeout_ms
            + self.call_timeout_ms
            + 1_000
    }
}

/// The broker host: every lifetime starts empty, with new epochs.
pub(crate) fn add_broker(
    sim: &mut turmoil::Sim<'_>,
    limits: &Limits,
    timing: &ClusterTiming,
    rooms: &roomcast_core::RoomOptions,
    shared: BrokerHandle,
) {
    let core_config = CoreConfig {
        limits: limits.clone(),
        ..CoreConfig::default()
    };
    let config = BrokerConfig {
        port: BROKER_PORT,
        bounds: history_bounds(&core_config),
        presence_ttl_us: limits.presence_ttl_ms.saturating_mul(1000),
        epoch_prefix: String::new(),
        idle_timeout: Duration::from_millis(timing.broker_idle_ms),
        outbound_frames_max: 100_000,
        presence_changes: rooms.clone(),
    };
    let lifetimes = Rc::new(Cell::new(0u64));
    sim.host(BROKER, move || {
        lifetimes.set(lifetimes.get() + 1);
        let mut config = config.clone();
        config.epoch_prefix = format!("b{}", lifetimes.get());
        crate::broker::host::run(config, shared.clone())
    });
}

/// Server node `index` of a cluster: the production server with a broker
/// link as its engine. Every start (a bounce restarts it) is a new process:
/// new connection ids, a new node id at the broker, the wall clock where
/// the simulation is.
pub(crate) fn add_node(
    sim: &mut turmoil::Sim<'_>,
    index: usize,
    host: &str,
    config: ServerConfig,
    timing: &ClusterTiming,
    seed: u64,
    stats: &Arc<LinkStats>,
) {
    let link = LinkConfig {
        broker: BROKER.to_owned(),
        port: BROKER_PORT,
        node: 0,
        call_timeout: Duration::from_millis(timing.call_timeout_ms),
        calls_max: config.limits.engine_calls_max,
        ping_interval: Duration::from_millis(timing.ping_interval_ms),
        dead_after: Duration::from_millis(timing.dead_after_ms),
        connect_timeout: Duration::from_millis(timing.connect_timeout_ms),
        backoff_first: Duration::from_millis(timing.backoff_first_ms),
        backoff_cap: Duration::from_millis(timing.backoff_cap_ms),
        rng: SimRng::new(0),
        stats: stats.clone(),
    };
    let lifetimes = Rc::new(Cell::new(0u64));
    sim.host(host, move || {
        lifetimes.set(lifetimes.get() + 1);
        let lifetime = lifetimes.get();
        let mut process = SimRng::new(seed ^ 0x5E4F_E400 ^ ((index as u64) << 40) ^ lifetime);
        let mut link = link.clone();
        link.node = ((lifetime as u32) << 8) | index as u32;
        link.rng = process.fork();
        let ids = IdSource::Seeded(process.next_u64());
        let config = config.clone();
        async move {
            let elapsed = turmoil::sim_elapsed().unwrap_or_default();
            let options = ServeOptions {
                clock: Clock::starting_at(START_UNIX_MS + elapsed.as_millis() as i64),
                ids,
                metrics: Metrics::new(),
                cpus: 1,
                shard_runtime: ShardRuntime::Tasks,
            };
            let listener = bind().await?;
            let engine = crate::broker::link::spawn(link);
            roomcast_net::serve_with_engine(
                listener,
                config,
                options,
                engine,
                std::future::pending(),
            )
            .await?;
            Ok(())
        }
    });
}
