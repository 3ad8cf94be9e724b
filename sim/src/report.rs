//! Run summaries, failures, and the ring of recent events printed with them.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

/// How many recent events a failure shows.
const RECENT_EVENTS: usize = 40;

/// One line of the recent-event ring (cheap to record, formatted on failure).
#[derive(Clone, Debug)]
pub struct Event {
    /// Virtual time in µs.
    pub at_us: u64,
    /// Client key (0 = server/publisher).
    pub client: u64,
    /// What happened.
    pub what: &'static str,
    /// A detail number (room index, seq, close code...).
    pub arg: u64,
}

/// The last few events of a run.
#[derive(Default, Debug)]
pub struct Recent(VecDeque<Event>);

impl Recent {
    /// Records an event, forgetting the oldest beyond the ring size.
    pub fn push(&mut self, at_us: u64, client: u64, what: &'static str, arg: u64) {
        if self.0.len() == RECENT_EVENTS {
            self.0.pop_front();
        }
        self.0.push_back(Event {
            at_us,
            client,
            what,
            arg,
        });
    }

    /// The events, oldest first, one per line.
    pub fn lines(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|e| format!("t={}us client={} {} {}", e.at_us, e.client, e.what, e.arg))
            .collect()
    }
}

/// The result of one passing run.
#[derive(Clone, Debug)]
pub struct Summary {
    /// `core` or `net`.
    pub tier: &'static str,
    /// The master seed.
    pub seed: u64,
    /// Client connections opened over the run.
    pub clients: u64,
    /// Inputs handled (core tier) or simulation steps (net tier).
    pub events: u64,
    /// Broadcast frames received by clients.
    pub deliveries: u64,
    /// Server closes seen by clients, by code.
    pub closes: BTreeMap<u16, u64>,
    /// Joins with `since` answered (recovered, refused).
    pub recoveries: (u64, u64),
    /// Engine faults injected (core tier: delays, lost live messages,
    /// failures, data losses); `None` when the engine ran fault-free by design.
    pub engine_faults: Option<String>,
    /// Server nodes (net tier).
    pub nodes: Option<usize>,
    /// Shards per node (net tier).
    pub shards: Option<usize>,
    /// Broker faults injected and the seed's rates (net tier with several
    /// nodes), or `off`.
    pub broker_faults: Option<String>,
    /// Hash of the ordered event trace.
    pub trace_hash: String,
    /// Wall-clock time of the run.
    pub wall: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let closes: Vec<String> = self
            .closes
            .iter()
            .map(|(code, n)| format!("{code}:{n}"))
            .collect();
        let per_sec = self.events as f64 / self.wall.as_secs_f64().max(1e-9);
        write!(
            f,
            "tier={} seed={} clients={} events={} deliveries={} closes={} recovered={} refused={}{}{}{}{} events_per_sec={:.0} wall_ms={} trace_hash={} ok",
            self.tier,
            self.seed,
            self.clients,
            self.events,
            self.deliveries,
            if closes.is_empty() { "-".to_owned() } else { closes.join(",") },
            self.recoveries.0,
            self.recoveries.1,
            self.engine_faults
                .as_ref()
                .map(|faults| format!(" engine_faults={faults}"))
                .unwrap_or_default(),
            self.nodes
                .map(|nodes| format!(" nodes={nodes}"))
                .unwrap_or_default(),
            self.shards
                .map(|shards| format!(" shards={shards}"))
                .unwrap_or_default(),
            self.broker_faults
                .as_ref()
                .map(|faults| format!(" broker_faults={faults}"))
                .unwrap_or_default(),
            per_sec,
            self.wall.as_millis(),
            self.trace_hash,
        )
    }
}

/// A failed run: what broke, what led to it, and how to see it again.
#[derive(Clone, Debug)]
pub struct Failure {
    /// `core` or `net`.
    pub tier: &'static str,
    /// The master seed.
    pub seed: u64,
    /// The violated invariant.
    pub invariant: String,
    /// What exactly was seen.
    pub detail: String,
    /// The events just before.
    pub recent: Vec<String>,
    /// The command that replays this run.
    pub reproduce: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "FAILED tier={} seed={} invariant=\"{}\"",
            self.tier, self.seed, self.invariant
        )?;
        writeln!(f, "  detail: {}", self.detail)?;
        writeln!(f, "  recent events (oldest first):")?;
        for line in &self.recent {
            writeln!(f, "    {line}")?;
        }
        write!(f, "  reproduce with: {}", self.reproduce)
    }
}
