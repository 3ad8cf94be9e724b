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

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use roomcast_core::engine::faults::{EngineFaults, FaultyEngine};
use roomcast_core::oracle::{ClientKey, Observed, Oracle, Sent, Violation};
use roomcast_core::standalone::memory_engine;
use roomcast_core::validate::DirectMessage;
use roomcast_core::{
    ConnectionId, CoreConfig, Identity, Input, Now, Output, Publish, Response, RoomName,
    SendTarget, Standalone, TextFrame, User,
};
use serde_json::{json, Map};

use crate::report::{Failure, Recent, Summary};
use crate::rng::{SimRng, TraceHash};
use crate::swarm::{Action, Mix, ACTIONS};

mod workload;

/// Wall-clock origin of simulated envelopes (fixed: runs must repeat).
const START_UNIX_MS: i64 = 1_760_000_000_000;
/// Structural invariants are checked every this many events (and at the end).
const INVARIANT_EVERY: u64 = 4096;

/// The most presence windows the quiet phase waits through after its first
/// settle (closes from expiring tokens can keep opening new ones).
const QUIET_WINDOWS_MAX: usize = 1000;

/// Messages no server should accept, with whether they carry an id.
const GARBAGE: [(&str, bool); 8] = [
    ("not json at all", false),
    ("[1,2,3]", false),
    ("{\"action\":5}", false),
    (
        "{\"action\":\"join\",\"data\":{\"room\":\"bad room\"},\"id\":ID}",
        true,
    ),
    ("{\"action\":\"fly\",\"id\":ID}", true),
    ("{\"action\":\"join\",\"data\":[],\"id\":ID}", true),
    ("{\"action\":\"leave\",\"id\":ID}", true),
    ("{\"id\":ID}", true),
];

struct SimClient {
    conn: ConnectionId,
    next_request: u64,
    /// Frames the server wrote that the stalled client has not read.
    unread: Vec<TextFrame>,
    stalled: bool,
}

struct CoreSim {
    mix: Mix,
    rng: SimRng,
    core: Standalone<FaultyEngine>,
    faults: EngineFaults,
    oracle: Oracle,
    clients: BTreeMap<ClientKey, SimClient>,
    /// Open client keys, for uniform picks.
    open: Vec<ClientKey>,
    by_conn: HashMap<ConnectionId, ClientKey>,
    next_client: ClientKey,
    now_us: u64,
    events: u64,
    deliveries: u64,
    closes: BTreeMap<u16, u64>,
    trace: TraceHash,
    recent: Recent,
    /// Clients that dropped and will come back, recovering from these (room, epoch, seq) positions.
    returning: Vec<Vec<(String, String, u64)>>,
    /// Set while settling at the end: nobody comes back any more.
    quiescing: bool,
    recoveries: (u64, u64),
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
    let mut sim = CoreSim {
        rng,
        core: Standalone::with_engine(config, engine),
        faults,
        oracle: Oracle::new(),
        clients: BTreeMap::new(),
        open: Vec::new(),
        by_conn: HashMap::new(),
        next_client: 1,
        now_us: 0,
        events: 0,
        deliveries: 0,
        closes: BTreeMap::new(),
        trace: TraceHash::default(),
        recent: Recent::default(),
        returning: Vec::new(),
        quiescing: false,
        recoveries: (0, 0),
        mix,
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
        sim.oracle
            .expect_recovery_within(sim.mix.limits.history_messages_max as u64);
    }
    // One node, every connection a client of the oracle: each member's
    // last presence diff must count its room once the last window ended.
    if !sim.mix.room_options.presence_diff_prefixes.is_empty() {
        sim.oracle.expect_presence_counts();
    }
    let switch = if engine_faults { "on" } else { "off" };
    let reproduce = format!("cargo run --release -p roomcast-sim -- --tier core --seed {seed} --clients {clients} --events {events} --engine-faults {switch}");
    sim.run(events).map_err(|(invariant, detail)| Failure {
        tier: "core",
        seed,
        invariant,
        detail,
        recent: sim.recent.lines(),
        reproduce,
    })?;
    Ok(Summary {
        tier: "core",
        seed,
        clients: sim.next_client - 1,
        events: sim.events,
        deliveries: sim.deliveries,
        closes: sim.closes,
        recoveries: sim.recoveries,
        engine_faults: Some(fault_summary(
            &sim.faults,
            sim.core.engine(),
            presence_diffs_from_engine,
        )),
        nodes: None,
        shards: None,
        broker_faults: None,
        trace_hash: sim.trace.hex(),
        wall: started.elapsed(),
    })
}

type SimError = (String, String);

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

fn oracle_error(v: Violation) -> SimError {
    (v.invariant.to_owned(), v.to_string())
}

impl CoreSim {
    fn now(&self) -> Now {
        Now::from_start(START_UNIX_MS, self.now_us)
    }

    fn run(&mut self, events: u64) -> Result<(), SimError> {
        while self.events < events {
            self.now_us += self.rng.below(self.mix.event_gap_us_max) + 1;
            if self.core.poll_timeout().is_some_and(|at| at <= self.now_us) {
                self.input(0, "timeout", Input::Timeout)?;
            }
            let action = ACTIONS[self.rng.weighted(&self.mix.weights)];
            self.act(action)?;
            self.serve_returning()?;
            if self.events % INVARIANT_EVERY < 2 {
                self.check_core()?;
            }
        }
        self.quiesce()
    }

    /// Heal and settle: every client reads what it was sent, then the oracle
    /// checks completeness; then everyone leaves and nothing may remain.
    fn quiesce(&mut self) -> Result<(), SimError> {
        self.quiescing = true;
        self.returning.clear();
        let stalled = self.stalled_clients();
        for key in stalled {
            self.unstall(key)?;
        }
        // The engine heals: what it delayed arrives, and each room's next
        // stream check finds and refills what it lost.
        self.core.engine_mut().heal();
        let limits = &self.core.config().limits;
        let settle_ms = self.faults.max_delay_us / 1000
            + limits.stream_check_interval_ms.max(limits.engine_retry_ms)
            + 1;
        self.settle_for(settle_ms)?;
        // Progress events held for conflation go out when their window closes.
        self.advance_past(self.mix.room_options.conflation_window_ms)?;
        // So do presence diffs: the last window's diff, and the diffs of
        // the closes it may cause (a member that overflows), each of
        // which may wait for one more window.
        if !self.mix.room_options.presence_diff_prefixes.is_empty() {
            let window_ms = self.mix.room_options.presence_diff_interval_ms;
            self.settle_for(3 * (window_ms + 1))?;
            // Closes that timers still make meanwhile (tokens expiring:
            // nobody refreshes now) open windows of their own: settle until
            // every window has told its changes and closed. Bounded: each
            // connection's token expires once.
            for _ in 0..QUIET_WINDOWS_MAX {
                if !self.core.core().presence_windows_open() {
                    break;
                }
                self.settle_for(window_ms + 1)?;
            }
        }
        self.check_core()?;
        self.oracle
            .check_quiescent(self.core.connection_count())
            .map_err(oracle_error)?;
        let keys: Vec<ClientKey> = self.clients.keys().copied().collect();
        for key in keys {
            self.crash(key)?;
        }
        // Rooms outlive their members while they hold history: let it age out.
        self.advance_past(self.mix.limits.history_age_ms)?;
        self.check_core()?;
        if self.core.connection_count() != 0 || self.core.room_count() != 0 {
            return Err((
                "nothing left after everyone leaves".into(),
                format!(
                    "{} connections and {} rooms remain",
                    self.core.connection_count(),
                    self.core.room_count()
                ),
            ));
        }
        Ok(())
    }

    /// Clients that stopped reading, in key order.
    fn stalled_clients(&self) -> Vec<ClientKey> {
        self.clients
            .iter()
            .filter(|(_, c)| c.stalled)
            .map(|(k, _)| *k)
            .collect()
    }

    fn check_core(&self) -> Result<(), SimError> {
        self.core
            .check_invariants()
            .map_err(|e| ("core invariants".to_owned(), e.to_string()))
    }

    /// Lets `ms` of virtual time pass deadline by deadline (clients answer
    /// pings meanwhile, so nobody idles out).
    fn settle_for(&mut self, ms: u64) -> Result<(), SimError> {
        let end = self.now_us + ms * 1000;
        while let Some(at) = self.core.poll_timeout().filter(|&at| at <= end) {
            self.now_us = self.now_us.max(at);
            self.input(0, "timeout", Input::Timeout)?;
        }
        self.now_us = end;
        Ok(())
    }

    /// Jumps the clock just past `ms` from now and fires what is due.
    fn advance_past(&mut self, ms: u64) -> Result<(), SimError> {
        self.now_us += ms * 1000 + 1;
        self.input(0, "timeout", Input::Timeout).map(drop)
    }

    /// Feeds one input, then routes every output to its client.
    fn input(
        &mut self,
        client: ClientKey,
        what: &'static str,
        input: Input<'_>,
    ) -> Result<Response, SimError> {
        self.events += 1;
        self.recent.push(self.now_us, client, what, 0);
        self.trace.bytes(what.as_bytes());
        self.trace.number(client);
        let response = self.core.handle(self.now(), input);
        self.route()?;
        Ok(response)
    }

    fn route(&mut self) -> Result<(), SimError> {
        // Receipts of broadcasts the engine answered late.
        while let Some((_, response)) = self.core.poll_answer() {
            self.record_receipt(response);
        }
        // Broadcast frames are shared: parse each distinct frame once. The
        // map holds the frame so its address cannot be reused meanwhile.
        let mut parsed: HashMap<*const u8, (TextFrame, Observed)> = HashMap::new();
        let mut acks: Vec<(ConnectionId, usize)> = Vec::new();
        let mut pongs: Vec<ConnectionId> = Vec::new();
        // Stalled clients' sockets are full: the shell reports push-back.
        let mut blocked: std::collections::BTreeSet<ConnectionId> = Default::default();
        while let Some(output) = self.core.poll_output() {
            let Some(&key) = self.by_conn.get(&output.conn()) else {
                return Err((
                    "outputs only for open connections".into(),
                    format!("{output:?}"),
                ));
            };
            self.trace.number(key);
            match output {
                Output::Send { conn, frame } => {
                    self.trace.bytes(frame.bytes());
                    let client = self
                        .clients
                        .get_mut(&key)
                        .ok_or_else(|| ("client table".to_owned(), String::new()))?;
                    if client.stalled {
                        client.unread.push(frame);
                        blocked.insert(conn);
                        continue;
                    }
                    let length = frame.len();
                    let (_, observed) = parsed.entry(frame.bytes().as_ptr()).or_insert_with(|| {
                        (
                            frame.clone(),
                            Observed::parse(frame.as_str()).unwrap_or_default(),
                        )
                    });
                    match observed
                        .data
                        .recovered
                        .as_ref()
                        .and_then(serde_json::Value::as_bool)
                    {
                        Some(true) => self.recoveries.0 += 1,
                        Some(false) => self.recoveries.1 += 1,
                        None => {}
                    }
                    if observed.seq.is_some() {
                        self.deliveries += 1;
                        self.recent
                            .push(self.now_us, key, "recv-seq", observed.seq.unwrap_or(0));
                    }
                    self.oracle.received(key, observed).map_err(oracle_error)?;
                    acks.push((conn, length));
                }
                Output::Check { .. } => {
                    // The workload sends no `refresh` and has no join hook;
                    // a check is a core bug.
                    return Err(("no unsolicited outputs".into(), format!("{output:?}")));
                }
                Output::Ping { conn } => {
                    self.trace.bytes(b"ping");
                    if !self.clients.get(&key).is_some_and(|c| c.stalled) {
                        pongs.push(conn);
                    }
                }
                Output::Close { conn: _, code } => {
                    let code = code.code();
                    self.trace.number(u64::from(code));
                    self.recent
                        .push(self.now_us, key, "server-close", u64::from(code));
                    *self.closes.entry(code).or_default() += 1;
                    // The client reads what was written before the close frame.
                    let unread = self
                        .clients
                        .get_mut(&key)
                        .map(|c| std::mem::take(&mut c.unread))
                        .unwrap_or_default();
                    for frame in unread {
                        let observed = Observed::parse(frame.as_str()).unwrap_or_default();
                        self.oracle.received(key, &observed).map_err(oracle_error)?;
                    }
                    self.remember_positions(key);
                    self.oracle.ended(key, Some(code)).map_err(oracle_error)?;
                    self.forget(key);
                }
            }
        }
        // The client read those frames: report them written (slow-consumer accounting).
        let now = self.now();
        for (conn, bytes) in acks {
            self.events += 1;
            self.core.handle(now, Input::Written { conn, bytes });
        }
        for conn in blocked {
            self.events += 1;
            self.core.handle(now, Input::Blocked { conn });
        }
        for conn in pongs {
            self.events += 1;
            self.core.handle(now, Input::Pong { conn });
        }
        // Receipts the engine answered while the writes were reported.
        while let Some((_, response)) = self.core.poll_answer() {
            self.record_receipt(response);
        }
        Ok(())
    }

    fn forget(&mut self, key: ClientKey) {
        if let Some(client) = self.clients.remove(&key) {
            self.by_conn.remove(&client.conn);
            if let Some(index) = self.open.iter().position(|k| *k == key) {
                self.open.swap_remove(index);
            }
        }
    }

    fn pick_client(&mut self) -> Option<ClientKey> {
        if self.open.is_empty() {
            return None;
        }
        Some(self.open[self.rng.below(self.open.len() as u64) as usize])
    }

    fn room(&mut self) -> String {
        format!("room-{}", self.rng.below(self.mix.rooms as u64))
    }

    fn next_request(&mut self, key: ClientKey) -> u64 {
        let client = self.clients.get_mut(&key).expect("picked clients are open");
        client.next_request += 1;
        client.next_request
    }

    fn request(
        &mut self,
        key: ClientKey,
        what: &'static str,
        id: u64,
        sent: Sent,
        text: &str,
    ) -> Result<(), SimError> {
        self.oracle
            .sent(key, id.to_string(), sent)
            .map_err(oracle_error)?;
        let conn = self.clients[&key].conn;
        self.input(key, what, Input::Text { conn, text }).map(drop)
    }

    /// Opens a client (up to the target, unless `returning`); its key.
    fn open_client(&mut self, returning: bool) -> Result<Option<ClientKey>, SimError> {
        if self.open.len() >= self.mix.clients && !returning {
            return Ok(None);
        }
        let key = self.next_client;
        self.next_client += 1;
        let conn =
            ConnectionId::from_u128((u128::from(self.rng.next_u64()) << 64) | u128::from(key));
        let identity = if self.rng.below(100) < self.mix.authenticated_percent {
            let expires = if self.rng.below(100) < self.mix.expiring_percent {
                Some(
                    START_UNIX_MS
                        + (self.now_us / 1000) as i64
                        + self.rng.range(100, 20_000) as i64,
                )
            } else {
                None
            };
            Identity::User(User {
                id: format!("user-{}", self.rng.below(self.mix.users as u64)),
                scopes: Vec::new(),
                expires_unix_ms: expires,
                grants: roomcast_core::Grants::none(),
            })
        } else {
            Identity::Anonymous
        };
        self.clients.insert(
            key,
            SimClient {
                conn,
                next_request: 0,
                unread: Vec::new(),
                stalled: false,
            },
        );
        self.open.push(key);
        self.by_conn.insert(conn, key);
        self.oracle.opened(key);
        self.input(key, "open", Input::Open { conn, identity })?;
        Ok(self.clients.contains_key(&key).then_some(key))
    }

    fn crash(&mut self, key: ClientKey) -> Result<(), SimError> {
        let Some(conn) = self.clients.get(&key).map(|c| c.conn) else {
            return Ok(());
        };
        self.remember_positions(key);
        self.oracle.ended(key, None).map_err(oracle_error)?;
        self.forget(key);
        self.input(key, "crash", Input::Closed { conn }).map(drop)
    }

    /// Most dropped clients come back and recover their rooms.
    fn remember_positions(&mut self, key: ClientKey) {
        let positions = self.oracle.positions(key);
        if !self.quiescing && !positions.is_empty() && self.rng.chance(700_000) {
            self.returning.push(positions);
        }
    }

    /// Reconnects the dropped clients, each joining its rooms with `since`.
    fn serve_returning(&mut self) -> Result<(), SimError> {
        while let Some(positions) = self.returning.pop() {
            let Some(key) = self.open_client(true)? else {
                continue;
            };
            for (room, epoch, seq) in positions {
                if !self.clients.contains_key(&key) {
                    break;
                }
                let id = self.next_request(key);
                let text = json!({"action": "join", "data": {"room": room, "since": {"epoch": epoch, "seq": seq}}, "id": id})
                    .to_string();
                self.request(key, "recover", id, Sent::Recover(room, epoch, seq), &text)?;
            }
        }
        Ok(())
    }

    fn unstall(&mut self, key: ClientKey) -> Result<(), SimError> {
        let Some(client) = self.clients.get_mut(&key) else {
            return Ok(());
        };
        client.stalled = false;
        let conn = client.conn;
        let unread = std::mem::take(&mut client.unread);
        self.recent
            .push(self.now_us, key, "unstall", unread.len() as u64);
        let mut bytes = 0;
        for frame in &unread {
            let observed = Observed::parse(frame.as_str()).unwrap_or_default();
            if observed.seq.is_some() {
                self.deliveries += 1;
            }
            self.oracle.received(key, &observed).map_err(oracle_error)?;
            bytes += frame.len();
        }
        self.input(key, "written", Input::Written { conn, bytes })
            .map(drop)
    }
}

fn verb_tag(verb: &str) -> &'static str {
    match verb {
        "join" => "join",
        "leave" => "leave",
        _ => "presence",
    }
}
