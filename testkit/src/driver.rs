//! The one driver of a core workload, shared by the simulator's core tier
//! (`sim/src/core_tier.rs`, events drawn from a seeded generator) and the
//! `core_events` fuzz target (events decoded from the fuzzer's bytes).
//!
//! It owns a [`Standalone`] core behind a [`FaultyEngine`], the delivery
//! [`Oracle`] and the table of clients; it feeds one [`Event`] at a time,
//! routes every output to its client and the oracle (a client that stalled
//! keeps what it was sent unread, and the shell reports push-back), answers
//! pings, reports writes, and settles at the end ([`Driver::quiesce`]).
//! What a caller wants to see on the way (trace hashes, a log of recent
//! events, counters, clients that come back) it sees through an
//! [`Observer`]: the driver itself draws no random numbers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use roomcast_core::engine::faults::FaultyEngine;
use roomcast_core::invariants::Broken;
use roomcast_core::oracle::{ClientKey, Observed, Oracle, Violation};
use roomcast_core::{ConnectionId, Input, Now, Output, Standalone, TextFrame};

use crate::record_receipt;

mod event;

pub use event::{Event, Opening};

/// How the generated names look: rooms `<room_prefix><n % rooms>`, users
/// `<user_prefix><n % users>`.
#[derive(Clone, Debug)]
pub struct Names {
    pub room_prefix: &'static str,
    pub rooms: u64,
    pub user_prefix: &'static str,
    pub users: u64,
}

/// How a client came to read a frame (observers count them differently).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// As it was written.
    Promptly,
    /// When the stalled client resumed reading.
    Resumed,
    /// Before the server's close frame.
    BeforeClose,
}

/// What a caller sees of a run; every method defaults to nothing.
pub trait Observer {
    /// An input is about to be fed (`client` 0: not a client's).
    fn input(&mut self, _now_us: u64, _client: ClientKey, _what: &'static str) {}
    /// Something that is no input but worth remembering (a stall, a resume).
    fn note(&mut self, _now_us: u64, _client: ClientKey, _what: &'static str, _n: u64) {}
    /// An output for `client` came out of the core.
    fn output(&mut self, _client: ClientKey) {}
    /// The output was a frame with these bytes.
    fn frame(&mut self, _client: ClientKey, _bytes: &[u8]) {}
    /// The output was a ping.
    fn ping(&mut self, _client: ClientKey) {}
    /// The output closed `client` with `code`.
    fn closed(&mut self, _now_us: u64, _client: ClientKey, _code: u16) {}
    /// The client read a frame (the oracle checks it next).
    fn read(&mut self, _now_us: u64, _client: ClientKey, _frame: &Observed, _how: Read) {}
    /// The client is gone; these were its (room, epoch, seq) positions.
    fn dropped(&mut self, _client: ClientKey, _positions: Vec<(String, String, u64)>) {}
}

/// Observes nothing (the fuzz target).
impl Observer for () {}

/// A broken promise found while driving.
#[derive(Debug)]
pub enum DriverError {
    /// The delivery oracle saw a broken promise.
    Oracle(Violation),
    /// The core's or engine's structural invariants do not hold.
    Invariants(Broken),
    /// An output for a connection that is not open.
    OutputForClosed(String),
    /// An output nothing asked for (a check without a refresh or hook).
    Unsolicited(String),
    /// A frame the server wrote is not a JSON object.
    NotJson(String),
    /// Connections or rooms remain after everyone left.
    Leftovers { connections: usize, rooms: usize },
}

impl DriverError {
    /// The promise's short stable name.
    pub fn invariant(&self) -> &'static str {
        match self {
            DriverError::Oracle(v) => v.invariant,
            DriverError::Invariants(_) => "core invariants",
            DriverError::OutputForClosed(_) => "outputs only for open connections",
            DriverError::Unsolicited(_) => "no unsolicited outputs",
            DriverError::NotJson(_) => "server frames are JSON objects",
            DriverError::Leftovers { .. } => "nothing left after everyone leaves",
        }
    }
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::Oracle(v) => write!(f, "{v}"),
            DriverError::Invariants(broken) => write!(f, "{broken}"),
            DriverError::OutputForClosed(what)
            | DriverError::Unsolicited(what)
            | DriverError::NotJson(what) => f.write_str(what),
            DriverError::Leftovers { connections, rooms } => {
                write!(f, "{connections} connections and {rooms} rooms remain")
            }
        }
    }
}

impl std::error::Error for DriverError {}

impl From<Violation> for DriverError {
    fn from(v: Violation) -> DriverError {
        DriverError::Oracle(v)
    }
}

/// One open client.
struct Client {
    conn: ConnectionId,
    next_request: u64,
    /// Frames the server wrote that the stalled client has not read.
    unread: Vec<TextFrame>,
    stalled: bool,
}

/// A core, its engine, the oracle and the clients (see the module docs).
pub struct Driver {
    core: Standalone<FaultyEngine>,
    oracle: Oracle,
    names: Names,
    start_unix_ms: i64,
    clients: BTreeMap<ClientKey, Client>,
    /// Open client keys, for picks by index.
    open: Vec<ClientKey>,
    by_conn: HashMap<ConnectionId, ClientKey>,
    next_client: ClientKey,
    now_us: u64,
    events: u64,
    closes: BTreeMap<u16, u64>,
}

impl Driver {
    /// A driver of `core` on a virtual clock that starts at `start_unix_ms`.
    pub fn new(core: Standalone<FaultyEngine>, names: Names, start_unix_ms: i64) -> Driver {
        Driver {
            core,
            oracle: Oracle::new(),
            names,
            start_unix_ms,
            clients: BTreeMap::new(),
            open: Vec::new(),
            by_conn: HashMap::new(),
            next_client: 1,
            now_us: 0,
            events: 0,
            closes: BTreeMap::new(),
        }
    }

    pub fn core(&self) -> &Standalone<FaultyEngine> {
        &self.core
    }

    pub fn oracle_mut(&mut self) -> &mut Oracle {
        &mut self.oracle
    }

    /// Inputs fed so far (writes, push-back and pongs reported included).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Clients opened so far.
    pub fn clients_opened(&self) -> u64 {
        self.next_client - 1
    }

    /// Server closes by code.
    pub fn closes(&self) -> &BTreeMap<u16, u64> {
        &self.closes
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    fn now(&self) -> Now {
        Now::from_start(self.start_unix_ms, self.now_us)
    }

    /// Clients that stopped reading, in key order.
    pub fn stalled_clients(&self) -> Vec<ClientKey> {
        self.clients
            .iter()
            .filter(|(_, c)| c.stalled)
            .map(|(k, _)| *k)
            .collect()
    }

    /// The core's and engine's structural invariants.
    pub fn check_invariants(&self) -> Result<(), DriverError> {
        self.core
            .check_invariants()
            .map_err(DriverError::Invariants)
    }

    /// Moves the clock `us` on and fires the deadlines that are due.
    pub fn wait(&mut self, us: u64, watch: &mut impl Observer) -> Result<(), DriverError> {
        self.now_us += us;
        if self.core.poll_timeout().is_some_and(|at| at <= self.now_us) {
            self.input(0, "timeout", Input::Timeout, watch)?;
        }
        Ok(())
    }

    /// Lets `ms` of virtual time pass deadline by deadline (clients answer
    /// pings meanwhile, so nobody idles out).
    pub fn settle_for(&mut self, ms: u64, watch: &mut impl Observer) -> Result<(), DriverError> {
        let end = self.now_us + ms * 1000;
        while let Some(at) = self.core.poll_timeout().filter(|&at| at <= end) {
            self.now_us = self.now_us.max(at);
            self.input(0, "timeout", Input::Timeout, watch)?;
        }
        self.now_us = end;
        Ok(())
    }

    /// Jumps the clock just past `ms` from now and fires what is due.
    fn advance_past(&mut self, ms: u64, watch: &mut impl Observer) -> Result<(), DriverError> {
        self.now_us += ms * 1000 + 1;
        self.input(0, "timeout", Input::Timeout, watch).map(drop)
    }

    /// Heal and settle: every client reads what it was sent, then the
    /// oracle checks completeness; then everyone leaves and nothing may
    /// remain. `max_delay_us`: the longest the engine delayed an answer.
    pub fn quiesce(
        &mut self,
        max_delay_us: u64,
        quiet_windows_max: usize,
        watch: &mut impl Observer,
    ) -> Result<(), DriverError> {
        for key in self.stalled_clients() {
            self.unstall(key, watch)?;
        }
        // The engine heals: what it delayed arrives, and each room's next
        // stream check finds and refills what it lost.
        self.core.engine_mut().heal();
        let limits = &self.core.config().limits;
        let settle_ms =
            max_delay_us / 1000 + limits.stream_check_interval_ms.max(limits.engine_retry_ms) + 1;
        self.settle_for(settle_ms, watch)?;
        let rooms = self.core.config().rooms.clone();
        // Progress events held for conflation go out when their window closes.
        self.advance_past(rooms.conflation_window_ms, watch)?;
        // So do presence diffs: the last window's diff, and the diffs of
        // the closes it may cause (a member that overflows), each of
        // which may wait for one more window.
        if !rooms.presence_diff_prefixes.is_empty() {
            let window_ms = rooms.presence_diff_interval_ms;
            self.settle_for(3 * (window_ms + 1), watch)?;
            // Closes that timers still make meanwhile (tokens expiring:
            // nobody refreshes now) open windows of their own: settle until
            // every window has told its changes and closed. Bounded: each
            // connection's token expires once.
            for _ in 0..quiet_windows_max {
                if !self.core.core().presence_windows_open() {
                    break;
                }
                self.settle_for(window_ms + 1, watch)?;
            }
        }
        self.check_invariants()?;
        self.oracle.check_quiescent(self.core.connection_count())?;
        let keys: Vec<ClientKey> = self.clients.keys().copied().collect();
        for key in keys {
            self.crash(key, watch)?;
        }
        // Rooms outlive their members while they hold history: let it age out.
        self.advance_past(self.core.config().limits.history_age_ms, watch)?;
        self.check_invariants()?;
        if self.core.connection_count() != 0 || self.core.room_count() != 0 {
            return Err(DriverError::Leftovers {
                connections: self.core.connection_count(),
                rooms: self.core.room_count(),
            });
        }
        Ok(())
    }

    /// Feeds one input, then routes every output to its client.
    fn input(
        &mut self,
        client: ClientKey,
        what: &'static str,
        input: Input<'_>,
        watch: &mut impl Observer,
    ) -> Result<(), DriverError> {
        self.call(client, what, |core, now| core.handle(now, input), watch)
    }

    /// One input, made by `apply` (a broadcast or a send answers; other
    /// inputs do not), then its outputs routed.
    fn call<T>(
        &mut self,
        client: ClientKey,
        what: &'static str,
        apply: impl FnOnce(&mut Standalone<FaultyEngine>, Now) -> T,
        watch: &mut impl Observer,
    ) -> Result<T, DriverError> {
        self.events += 1;
        watch.input(self.now_us, client, what);
        let now = self.now();
        let answer = apply(&mut self.core, now);
        self.route(watch)?;
        Ok(answer)
    }

    fn route(&mut self, watch: &mut impl Observer) -> Result<(), DriverError> {
        // Receipts of broadcasts the engine answered late.
        while let Some((_, answer)) = self.core.poll_answer() {
            record_receipt(&mut self.oracle, answer);
        }
        // Broadcast frames are shared: parse each distinct frame once. The
        // map holds the frame so its address cannot be reused meanwhile.
        let mut parsed: HashMap<*const u8, (TextFrame, Observed)> = HashMap::new();
        let mut acks: Vec<(ConnectionId, usize)> = Vec::new();
        let mut pongs: Vec<ConnectionId> = Vec::new();
        // Stalled clients' sockets are full: the shell reports push-back.
        let mut blocked: BTreeSet<ConnectionId> = BTreeSet::new();
        while let Some(output) = self.core.poll_output() {
            let Some(&key) = self.by_conn.get(&output.conn()) else {
                return Err(DriverError::OutputForClosed(format!("{output:?}")));
            };
            watch.output(key);
            let client = self
                .clients
                .get_mut(&key)
                .expect("by_conn and clients hold the same keys");
            match output {
                Output::Send { conn, frame } => {
                    watch.frame(key, frame.bytes());
                    if client.stalled {
                        client.unread.push(frame);
                        blocked.insert(conn);
                        continue;
                    }
                    let length = frame.len();
                    let (_, observed) = match parsed.entry(frame.bytes().as_ptr()) {
                        std::collections::hash_map::Entry::Occupied(seen) => seen.into_mut(),
                        std::collections::hash_map::Entry::Vacant(slot) => {
                            let observed = parse(&frame)?;
                            slot.insert((frame, observed))
                        }
                    };
                    watch.read(self.now_us, key, observed, Read::Promptly);
                    self.oracle.received(key, observed)?;
                    acks.push((conn, length));
                }
                Output::Check { .. } => {
                    // No workload sends `refresh` or configures a join
                    // hook: a check is a core bug.
                    return Err(DriverError::Unsolicited(format!("{output:?}")));
                }
                Output::Ping { conn } => {
                    watch.ping(key);
                    if !client.stalled {
                        pongs.push(conn);
                    }
                }
                Output::Close { conn: _, code } => {
                    let code = code.code();
                    watch.closed(self.now_us, key, code);
                    *self.closes.entry(code).or_default() += 1;
                    // The client reads what was written before the close frame.
                    for frame in std::mem::take(&mut client.unread) {
                        let observed = parse(&frame)?;
                        watch.read(self.now_us, key, &observed, Read::BeforeClose);
                        self.oracle.received(key, &observed)?;
                    }
                    watch.dropped(key, self.oracle.positions(key));
                    self.oracle.ended(key, Some(code))?;
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
        while let Some((_, answer)) = self.core.poll_answer() {
            record_receipt(&mut self.oracle, answer);
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

    /// The client crashes: its connection ends without a close frame.
    fn crash(&mut self, key: ClientKey, watch: &mut impl Observer) -> Result<(), DriverError> {
        let Some(conn) = self.clients.get(&key).map(|c| c.conn) else {
            return Ok(());
        };
        watch.dropped(key, self.oracle.positions(key));
        self.oracle.ended(key, None)?;
        self.forget(key);
        self.input(key, "crash", Input::Closed { conn }, watch)
            .map(drop)
    }

    /// The stalled client reads what it was sent, and the shell reports it written.
    fn unstall(&mut self, key: ClientKey, watch: &mut impl Observer) -> Result<(), DriverError> {
        let Some(client) = self.clients.get_mut(&key) else {
            return Ok(());
        };
        client.stalled = false;
        let conn = client.conn;
        let unread = std::mem::take(&mut client.unread);
        watch.note(self.now_us, key, "unstall", unread.len() as u64);
        let mut bytes = 0;
        for frame in &unread {
            let observed = parse(frame)?;
            watch.read(self.now_us, key, &observed, Read::Resumed);
            self.oracle.received(key, &observed)?;
            bytes += frame.len();
        }
        self.input(key, "written", Input::Written { conn, bytes }, watch)
            .map(drop)
    }
}

fn parse(frame: &TextFrame) -> Result<Observed, DriverError> {
    Observed::parse(frame.as_str()).ok_or_else(|| DriverError::NotJson(frame.as_str().to_owned()))
}
