//! Tier 1: the pure core driven by a seeded workload on a virtual clock that
//! jumps from event to event. Thousands of virtual clients join, leave,
//! ping, send garbage, crash, stall (stop reading) and resume, while the
//! publisher broadcasts; every output goes through the [`Oracle`], and the
//! core's and engine's invariants are checked periodically and at the end.
//!
//! The core talks to the in-memory engine through a fault layer
//! ([`FaultyEngine`]): each seed draws its engine-fault mix (delays, lost
//! live messages, failed requests, data loss; a third of the seeds run
//! fault-free) from its own generator, so the workload of a seed does not
//! depend on its faults. The engine heals before the final settle.
//!
//! A third of the seeds (drawn from the same generator, after the faults)
//! run with `presence_diffs_from_engine`: the in-memory engine tells every
//! presence change (`MemoryEngine::with_presence_changes`) and the core
//! builds its diffs from those, as the shards of one node do; the oracle
//! checks them the same way (counts included).

use std::time::Instant;

use roomcast_core::engine::faults::{EngineFaults, FaultyEngine};
use roomcast_core::oracle::{ClientKey, Observed};
use roomcast_core::standalone::memory_engine;
use roomcast_core::{CoreConfig, Standalone};
use roomcast_testkit::driver::{Driver, DriverError, Names, Observer, Read};

use crate::report::{Failure, Recent, Summary};
use crate::rng::{SimRng, TraceHash};
use crate::swarm::Mix;

mod workload;

/// Wall-clock origin of simulated envelopes (fixed: runs must repeat).
const START_UNIX_MS: i64 = 1_760_000_000_000;
/// Structural invariants are checked every this many events (and at the end).
const INVARIANT_EVERY: u64 = 4096;

/// The most presence windows the quiet phase waits through after its first
/// settle (closes from expiring tokens can keep opening new ones).
const QUIET_WINDOWS_MAX: usize = 1000;

/// The simulator's side of a run: its generator (the workload's and the
/// returning clients' draws) and what it records.
struct Watch {
    rng: SimRng,
    trace: TraceHash,
    recent: Recent,
    deliveries: u64,
    recoveries: (u64, u64),
    /// Clients that dropped and will come back, recovering from these (room, epoch, seq) positions.
    returning: Vec<Vec<(String, String, u64)>>,
    /// Set while settling at the end: nobody comes back any more.
    quiescing: bool,
}

struct CoreSim {
    mix: Mix,
    faults: EngineFaults,
    driver: Driver,
    watch: Watch,
}

/// Runs one core-tier simulation of `events` inputs.
///
/// With `engine_faults` off, the engine runs fault-free whatever the seed
/// draws (the workload is the same either way).
pub fn run(
    seed: u64,
    clients: usize,
    events: u64,
    engine_faults: bool,
) -> Result<Summary, Failure> {
    let started = Instant::now();
    let mut rng = SimRng::new(seed ^ 0xC0DE);
    let mix = Mix::draw(&mut rng, clients);
    // The engine's timings come from the faults' own generator, so that a
    // seed's workload is the same with and without engine faults.
    let mut fault_rng = SimRng::new(seed ^ 0x0E46_17E5);
    let mut faults = draw_engine_faults(&mut fault_rng);
    if !engine_faults {
        faults = EngineFaults::default();
    }
    let mut limits = mix.limits.clone();
    limits.stream_check_interval_ms = fault_rng.range(200, 5_000);
    limits.engine_retry_ms = fault_rng.range(50, 1_000);
    let presence_diffs_from_engine = fault_rng.below(3) == 0;
    let config = CoreConfig {
        limits,
        epoch_prefix: format!("s{seed}"),
        rooms: mix.room_options.clone(),
        presence_diffs_from_engine,
        ..CoreConfig::default()
    };
    let engine = memory_engine(&config);
    let engine = FaultyEngine::new(engine, faults.clone(), seed);
    let names = Names {
        room_prefix: "room-",
        rooms: mix.rooms as u64,
        user_prefix: "user-",
        users: mix.users as u64,
    };
    let driver = Driver::new(
        Standalone::with_engine(config, engine),
        names,
        START_UNIX_MS,
    );
    let mut sim = CoreSim {
        mix,
        faults,
        driver,
        watch: Watch {
            rng,
            trace: TraceHash::default(),
            recent: Recent::default(),
            deliveries: 0,
            recoveries: (0, 0),
            returning: Vec::new(),
            quiescing: false,
        },
    };
    // History never ages out during a run (a day of virtual time), so every
    // gap within the count bound must be recovered, unless the engine may
    // fail a read or lose its data, or its budgets may evict history or
    // push rooms out (the default budgets never bind here: at most 30
    // rooms of small frames).
    let defaults = roomcast_core::Limits::default();
    let budgets_bind = sim.mix.limits.history_bytes_max < defaults.history_bytes_max
        || sim.mix.limits.rooms_max < defaults.rooms_max;
    if sim.faults.fail_per_mille == 0 && sim.faults.reset_per_mille == 0 && !budgets_bind {
        sim.driver
            .oracle_mut()
            .expect_recovery_within(sim.mix.limits.history_messages_max as u64);
    }
    // One node, every connection a client of the oracle: each member's
    // last presence diff must count its room once the last window ended.
    if !sim.mix.room_options.presence_diff_prefixes.is_empty() {
        sim.driver.oracle_mut().expect_presence_counts();
    }
    let switch = if engine_faults { "on" } else { "off" };
    let reproduce = format!("cargo run --release -p roomcast-sim -- --tier core --seed {seed} --clients {clients} --events {events} --engine-faults {switch}");
    sim.run(events).map_err(|broken| Failure {
        tier: "core",
        seed,
        invariant: broken.invariant().to_owned(),
        detail: broken.to_string(),
        recent: sim.watch.recent.lines(),
        reproduce,
    })?;
    Ok(Summary {
        tier: "core",
        seed,
        clients: sim.driver.clients_opened(),
        events: sim.driver.events(),
        deliveries: sim.watch.deliveries,
        closes: sim.driver.closes().clone(),
        recoveries: sim.watch.recoveries,
        engine_faults: Some(fault_summary(
            &sim.faults,
            sim.driver.core().engine(),
            presence_diffs_from_engine,
        )),
        nodes: None,
        shards: None,
        broker_faults: None,
        trace_hash: sim.watch.trace.hex(),
        wall: started.elapsed(),
    })
}

/// A seed's engine-fault mix: a third of the seeds run fault-free.
fn draw_engine_faults(rng: &mut SimRng) -> EngineFaults {
    if rng.below(3) == 0 {
        return EngineFaults::default();
    }
    EngineFaults {
        delay_per_mille: rng.below(400) as u32,
        max_delay_us: rng.range(1_000, 2_000_000),
        lose_live_per_mille: if rng.chance(600_000) {
            rng.below(100) as u32
        } else {
            0
        },
        fail_per_mille: if rng.chance(500_000) {
            rng.below(50) as u32
        } else {
            0
        },
        reset_per_mille: if rng.chance(250_000) {
            rng.below(3) as u32
        } else {
            0
        },
    }
}

/// `<total>` and the mix, for the summary line (and where presence diffs
/// came from).
fn fault_summary(faults: &EngineFaults, engine: &FaultyEngine, diffs_from_engine: bool) -> String {
    let counts = engine.counts();
    let diffs = if diffs_from_engine { "engine" } else { "core" };
    format!(
        "{}(delayed={},lost={},told={},failed={},resets={},roll_backs={};rates_per_mille={}/{}/{}/{};diffs={diffs})",
        counts.total(),
        counts.delayed,
        counts.lost,
        counts.resets_heard,
        counts.failed,
        counts.resets,
        counts.roll_backs,
        faults.delay_per_mille,
        faults.lose_live_per_mille,
        faults.fail_per_mille,
        faults.reset_per_mille,
    )
}

impl CoreSim {
    fn run(&mut self, events: u64) -> Result<(), DriverError> {
        while self.driver.events() < events {
            self.step()?;
            if self.driver.events() % INVARIANT_EVERY < 2 {
                self.driver.check_invariants()?;
            }
        }
        // Nobody comes back while the run settles.
        self.watch.quiescing = true;
        self.watch.returning.clear();
        self.driver
            .quiesce(self.faults.max_delay_us, QUIET_WINDOWS_MAX, &mut self.watch)
    }
}

impl Observer for Watch {
    fn input(&mut self, now_us: u64, client: ClientKey, what: &'static str) {
        self.recent.push(now_us, client, what, 0);
        self.trace.bytes(what.as_bytes());
        self.trace.number(client);
    }

    fn note(&mut self, now_us: u64, client: ClientKey, what: &'static str, n: u64) {
        self.recent.push(now_us, client, what, n);
    }

    fn output(&mut self, client: ClientKey) {
        self.trace.number(client);
    }

    fn frame(&mut self, _client: ClientKey, bytes: &[u8]) {
        self.trace.bytes(bytes);
    }

    fn ping(&mut self, _client: ClientKey) {
        self.trace.bytes(b"ping");
    }

    fn closed(&mut self, now_us: u64, client: ClientKey, code: u16) {
        self.trace.number(u64::from(code));
        self.recent
            .push(now_us, client, "server-close", u64::from(code));
    }

    fn read(&mut self, now_us: u64, client: ClientKey, frame: &Observed, how: Read) {
        // Deliveries count messages read as written or on resuming;
        // recoveries and the log only those read as written.
        if how == Read::BeforeClose {
            return;
        }
        if how == Read::Promptly {
            match frame
                .data
                .recovered
                .as_ref()
                .and_then(serde_json::Value::as_bool)
            {
                Some(true) => self.recoveries.0 += 1,
                Some(false) => self.recoveries.1 += 1,
                None => {}
            }
        }
        if let Some(seq) = frame.seq {
            self.deliveries += 1;
            if how == Read::Promptly {
                self.recent.push(now_us, client, "recv-seq", seq);
            }
        }
    }

    /// Most dropped clients come back and recover their rooms.
    fn dropped(&mut self, _client: ClientKey, positions: Vec<(String, String, u64)>) {
        if !self.quiescing && !positions.is_empty() && self.rng.chance(700_000) {
            self.returning.push(positions);
        }
    }
}
