//! Tier 2: the production server, `roomcast_net::serve`, unchanged inside
//! turmoil. Client hosts multiplex many real WebSocket clients each; a
//! publisher host uses the HTTP API; a controller injects faults between
//! steps. Everything observed goes through the shared [`Oracle`].
//!
//! Two shapes of run:
//! - **one node** (`nodes == 1`, the default): one server host with the
//!   in-memory engine inline, as `roomcast serve` runs by default;
//! - **a cluster** (`nodes > 1`): several server nodes whose engine is the
//!   broker host ([`crate::broker`]): one deterministic engine state shared
//!   over the network, like Redis in production. Clients connect to any
//!   node (and come back through any node), the publisher publishes
//!   through any node, and the oracle checks every member of every node.
//!
//! Either shape runs each node with `shards` shards (`--shards`, default
//! 1): the node's hubs are tasks of the host's runtime
//! ([`roomcast_net::ShardRuntime::Tasks`]) behind the node's shard router,
//! placed and routed by the production code, so a node of K shards must
//! look to the clients and the oracle exactly like a node of one.
//!
//! Phases (simulated time): clients connect (0-3 s), the workload runs with
//! faults for `seconds`, then every fault heals and clients go quiet long
//! enough for dead connections to time out; the oracle then checks
//! completeness against `/ws/status` (of every node); finally every client
//! closes and every node must hold no connection and no room.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | [`run`]: set-up, the controller loop, the summary |
//! | `cluster` | the server side: one standalone server, or nodes and the broker host; the seed's limits |
//! | `clients` | the WebSocket clients' workload |
//! | `publisher` | the publisher's workload and the end-of-run checks |
//! | `faults` | network faults (client hosts) and broker faults (cluster) |
//! | `world` | the state the hosts and the controller share |
//!
//! [`Oracle`]: roomcast_core::oracle::Oracle

mod clients;
mod cluster;
mod faults;
mod publisher;
mod world;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use roomcast_net::auth::{Claims, TokenVerifier};
use roomcast_net::ServerConfig;

use self::clients::{client_task, ClientSpec};
use self::cluster::ClusterTiming;
use self::faults::{BrokerFaults, Fault};
use self::publisher::{publisher_task, ClusterPublishing, PublisherSpec};
use self::world::{install_panic_hook, Phase, Shared, World, PANICKED};
use crate::broker::host::{BrokerHandle, BrokerShared};
use crate::broker::link::LinkStats;
use crate::report::{Failure, Summary};
use crate::rng::SimRng;

/// The one server host of a one-node run.
const SERVER: &str = "server";
/// The broker host of a cluster run.
pub(crate) const BROKER: &str = "broker";
/// The publisher's host.
pub(crate) const PUBLISHER: &str = "publisher";
pub(crate) const PORT: u16 = 8080;
const SECRET: &str = "sim-secret";
pub(crate) const START_UNIX_MS: i64 = 1_760_000_000_000;
/// Client hosts: many clients share a host (links grow as hosts²).
pub(crate) const CLIENT_HOSTS: usize = 8;
pub(crate) const CONNECT_SPREAD_MS: u64 = 3_000;

/// One net-tier run.
#[derive(Clone, Debug)]
pub struct NetRun {
    /// The master seed.
    pub seed: u64,
    /// Clients (each reconnects after every lost connection).
    pub clients: usize,
    /// Simulated seconds of workload (after the 3 s of connecting).
    pub seconds: u64,
    /// Server nodes: 1 runs one server with its inline engine; more run
    /// that many nodes against the broker host.
    pub nodes: usize,
    /// Cluster runs: inject the seed's drawn broker faults (on) or run the
    /// broker and the nodes fault-free (off; same workload).
    pub broker_faults: bool,
    /// Shards per node (1: one hub, the single-shard path).
    pub shards: usize,
    /// A planted defect: the broker's engine skips its rollback check
    /// (the tests show that the oracle catches it; no command-line flag).
    pub skip_rollback_check: bool,
}

impl NetRun {
    /// A one-node run.
    pub fn new(seed: u64, clients: usize, seconds: u64) -> NetRun {
        NetRun {
            seed,
            clients,
            seconds,
            nodes: 1,
            broker_faults: true,
            shards: 1,
            skip_rollback_check: false,
        }
    }

    /// `shards` shards in every node (1: one hub).
    pub fn shards(mut self, shards: usize) -> NetRun {
        self.shards = shards.max(1);
        self
    }

    /// Plants a defect: the broker's engine skips its rollback check.
    pub fn skip_rollback_check(mut self) -> NetRun {
        self.skip_rollback_check = true;
        self
    }

    /// `nodes` server nodes against the broker (1: the one-node run).
    pub fn nodes(mut self, nodes: usize) -> NetRun {
        self.nodes = nodes.max(1);
        self
    }

    /// Whether a cluster run injects its broker faults.
    pub fn broker_faults(mut self, on: bool) -> NetRun {
        self.broker_faults = on;
        self
    }

    /// The command that replays this run.
    pub fn command(&self) -> String {
        let NetRun {
            seed,
            clients,
            seconds,
            nodes,
            broker_faults,
            shards,
            skip_rollback_check: _,
        } = self;
        let mut command = format!("cargo run --release -p roomcast-sim -- --tier net --seed {seed} --clients {clients} --net-seconds {seconds}");
        if *nodes > 1 {
            let faults = if *broker_faults { "on" } else { "off" };
            command.push_str(&format!(" --nodes {nodes} --broker-faults {faults}"));
        }
        if *shards > 1 {
            command.push_str(&format!(" --shards {shards}"));
        }
        command
    }
}

/// Runs one one-node net-tier simulation with `clients` clients and
/// `seconds` of workload.
pub fn run(seed: u64, clients: usize, seconds: u64) -> Result<Summary, Failure> {
    run_with(&NetRun::new(seed, clients, seconds))
}

/// Runs one net-tier simulation.
pub fn run_with(run: &NetRun) -> Result<Summary, Failure> {
    let NetRun {
        seed,
        clients,
        seconds,
        nodes,
        broker_faults,
        shards,
        skip_rollback_check,
    } = run.clone();
    let clustered = nodes > 1;
    install_panic_hook();
    PANICKED.store(false, std::sync::atomic::Ordering::SeqCst);
    let started = WallInstant::now();
    let mut rng = SimRng::new(seed ^ 0x7E7);
    // A cluster's own draws come from generators of their own, so a seed's
    // workload is the same whatever the node count and the broker faults.
    let mut cluster_rng = SimRng::new(seed ^ 0xC1_B40C);
    let mut broker_fault_rng = SimRng::new(seed ^ 0xB40C_FA17);
    let mut roll_back_rng = SimRng::new(seed ^ 0x0201_1BAC);
    let mut limits = cluster::draw_limits(&mut rng);
    let timing =
        clustered.then(|| ClusterTiming::draw(&mut cluster_rng, &mut limits, broker_faults));
    let rooms = rng.range(2, 20);
    let mut quiet_ms = limits.idle_timeout_ms * 2 + 3_000;
    let work_ms = CONNECT_SPREAD_MS + seconds * 1000;
    let mut broker_plan = timing.as_ref().map(|_| {
        BrokerFaults::draw(
            &mut broker_fault_rng,
            &mut roll_back_rng,
            broker_faults,
            nodes,
            work_ms,
            seconds,
        )
    });
    let publishing = timing.as_ref().map(|timing| ClusterPublishing {
        route: cluster_rng.fork(),
        tolerate_failures: broker_faults,
        final_round_all: broker_plan
            .as_ref()
            .is_some_and(|plan| plan.loss_per_million > 0),
        settle_ms: timing.settle_ms(),
        final_round_ms: 10_000,
    });
    if let Some(publishing) = &publishing {
        quiet_ms += publishing.settle_ms + publishing.final_round_ms;
    }
    let node_names: Rc<[String]> = if clustered {
        (0..nodes).map(|n| format!("node-{n}")).collect()
    } else {
        Rc::from(vec![SERVER.to_owned()])
    };

    let world: Shared = Rc::new(RefCell::new(World::new(CLIENT_HOSTS, nodes, clients)));
    if clustered {
        // One sequential publisher: receipts arrive in publish order.
        world.borrow_mut().oracle.expect_newest_epochs();
    }

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_millis(work_ms + quiet_ms + 120_000))
        .tick_duration(Duration::from_millis(2))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(rng.range(2, 40)))
        .tcp_capacity(1024)
        .build();

    let room_options = roomcast_core::RoomOptions {
        conflate_prefixes: if rng.chance(500_000) {
            vec!["room-".into()]
        } else {
            Vec::new()
        },
        presence_diff_prefixes: if rng.chance(500_000) {
            vec!["room-1".into()]
        } else {
            Vec::new()
        },
        conflation_window_ms: rng.range(20, 300),
        // Not drawn (a new draw would shift every later choice of every
        // seed); short enough that windows end within a run.
        presence_diff_interval_ms: 200,
    };
    let mut config = ServerConfig {
        limits: limits.clone(),
        rooms: room_options.clone(),
        close_flush_timeout_ms: 1_000,
        shutdown_drain_ms: 1_000,
        // Not drawn from the seed, so a seed's workload is the same at
        // any shard count.
        shards,
        ..ServerConfig::default()
    };
    config.auth.jwt_secret = Some(SECRET.to_owned());

    let broker: Option<BrokerHandle> = broker_plan.as_ref().map(|faults| {
        let mut shared = BrokerShared::new(broker_fault_rng.fork());
        shared.loss_per_million = faults.loss_per_million;
        shared.skip_rollback_check = skip_rollback_check;
        Rc::new(RefCell::new(shared))
    });
    let link_stats = Arc::new(LinkStats::default());
    match (&timing, &broker) {
        (Some(timing), Some(broker)) => {
            cluster::add_broker(&mut sim, &limits, timing, &room_options, broker.clone());
            for (index, host) in node_names.iter().enumerate() {
                let config = config.clone();
                cluster::add_node(&mut sim, index, host, config, timing, seed, &link_stats);
            }
        }
        _ => cluster::add_standalone(&mut sim, SERVER, config, seed),
    }

    let signer = TokenVerifier::from_config(&roomcast_net::config::AuthConfig {
        jwt_secret: Some(SECRET.to_owned()),
        ..Default::default()
    })
    .map_err(|e| failure(run, "setup", e.to_string(), &world))?;
    let token = |sub: &str, scope: Option<&str>| {
        signer
            .sign(&Claims {
                sub: sub.to_owned(),
                exp: (START_UNIX_MS / 1000 + 86_400) as f64,
                nbf: None,
                iat: None,
                scope: scope.map(str::to_owned),
                rooms: None,
            })
            .unwrap_or_default()
    };

    for host in 0..CLIENT_HOSTS {
        let share = clients / CLIENT_HOSTS + usize::from(host < clients % CLIENT_HOSTS);
        let mut specs = Vec::with_capacity(share);
        for _ in 0..share {
            let user = rng.below(10);
            let token = rng
                .chance(500_000)
                .then(|| token(&format!("user-{user}"), None));
            specs.push(ClientSpec {
                rng: rng.fork(),
                token,
                rooms,
                host,
                nodes: node_names.clone(),
                route: clustered.then(|| cluster_rng.fork()),
                resume: Vec::new(),
            });
        }
        let world = world.clone();
        sim.client(format!("client-{host}"), async move {
            let local = tokio::task::LocalSet::new();
            for spec in specs {
                local.spawn_local(client_task(world.clone(), spec));
            }
            local.await;
            Ok(())
        });
    }

    let publisher = PublisherSpec {
        rng: rng.fork(),
        token: token("publisher", Some("publish")),
        rooms,
        work_ms,
        quiet_ms,
        nodes: node_names.clone(),
        cluster: publishing,
    };
    let publisher_world = world.clone();
    sim.client(PUBLISHER, async move {
        publisher_task(publisher_world, publisher).await;
        Ok(())
    });

    // The controller: step the world, inject faults while working, heal after.
    let mut faults = rng.fork();
    let fault_rate_per_million = faults.range(0, 400);
    let mut active: Vec<(u64, Fault)> = Vec::new();
    let mut steps: u64 = 0;
    loop {
        let elapsed_ms = sim.elapsed().as_millis() as u64;
        {
            let mut w = world.borrow_mut();
            w.now_ms = elapsed_ms;
            if w.phase == Phase::Working && elapsed_ms >= work_ms {
                w.phase = Phase::Quiet;
            }
            let quiet_over = if clustered {
                // The publisher's final round takes as long as it takes.
                w.quiet_checked || elapsed_ms >= work_ms + quiet_ms + 30_000
            } else {
                // The publisher has run its quiet-state checks by now.
                elapsed_ms >= work_ms + quiet_ms + 2_000
            };
            if w.phase == Phase::Quiet && quiet_over {
                w.phase = Phase::Closing;
            }
        }
        let phase = world.borrow().phase;
        if phase == Phase::Working
            && elapsed_ms > CONNECT_SPREAD_MS
            && faults.chance(fault_rate_per_million)
        {
            let fault = Fault::draw(&mut faults);
            let until = elapsed_ms + faults.range(200, 3_000);
            faults::apply(&sim, &world, &node_names, fault, true);
            world
                .borrow_mut()
                .recent
                .push(elapsed_ms * 1000, 0, fault.name(), fault.host() as u64);
            active.push((until, fault));
        }
        // Heal faults whose time is up, and all of them once the workload ends.
        let mut index = 0;
        while index < active.len() {
            if phase != Phase::Working || active[index].0 <= elapsed_ms {
                let (_, fault) = active.swap_remove(index);
                faults::apply(&sim, &world, &node_names, fault, false);
            } else {
                index += 1;
            }
        }
        if let (Some(planned), Some(broker)) = (&mut broker_plan, &broker) {
            let heal = phase != Phase::Working;
            planned.step(&mut sim, &world, broker, &node_names, elapsed_ms, heal);
            let mut shared = broker.borrow_mut();
            if heal {
                shared.loss_per_million = 0;
            }
            if let Some(broken) = shared.violation.clone() {
                world
                    .borrow_mut()
                    .fail("engine invariants (broker)", broken.to_string());
            }
        }
        let done = match sim.step() {
            Ok(done) => done,
            Err(error) => {
                return Err(failure(
                    run,
                    "server never panics or fails",
                    error.to_string(),
                    &world,
                ));
            }
        };
        steps += 1;
        if PANICKED.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(failure(
                run,
                "server never panics",
                "a task panicked (see the message above)".into(),
                &world,
            ));
        }
        if let Some((invariant, detail)) = world.borrow().failure.clone() {
            return Err(failure(run, &invariant, detail, &world));
        }
        if done {
            break;
        }
    }
    let w = world.borrow();
    if !w.finished {
        drop(w);
        return Err(failure(
            run,
            "liveness",
            "the publisher never finished its final checks".into(),
            &world,
        ));
    }
    let broker_summary = match (&broker_plan, &broker) {
        (Some(planned), Some(broker)) => Some(format!(
            "{} links={}",
            planned.summary(&broker.borrow(), w.publishes_failed, w.final_broadcasts),
            link_stats.summary()
        )),
        _ => None,
    };
    Ok(Summary {
        tier: "net",
        seed,
        clients: w.next_key - 1,
        events: steps,
        deliveries: w.deliveries,
        closes: w.closes.clone(),
        recoveries: w.recoveries,
        engine_faults: None,
        nodes: Some(nodes),
        shards: Some(shards),
        broker_faults: broker_summary,
        trace_hash: w.trace.hex(),
        wall: started.elapsed(),
    })
}

fn failure(run: &NetRun, invariant: &str, detail: String, world: &Shared) -> Failure {
    Failure {
        tier: "net",
        seed: run.seed,
        invariant: invariant.to_owned(),
        detail,
        recent: world.borrow().recent.lines(),
        reproduce: run.command(),
    }
}
