//! [`FaultyEngine`]: the in-memory engine behind a seeded fault layer, for
//! the simulator, the property tests and the fuzzers (feature `testing`).
//!
//! Faults, each drawn per request or per event from a seeded generator
//! (no global randomness, so a seed replays a run):
//! - **delay**: an answer, live message or presence change arrives up to
//!   `max_delay_us` later; answers reorder freely, live messages of one
//!   room never overtake each other, nor do presence changes of one room
//!   (the contract's ordering promises);
//! - **lost live message**: a live message never arrives (at-most-once);
//!   a quarter of the time the node is told (`StreamReset`, as after a
//!   pub/sub reconnect);
//! - **failure**: an append or read is answered with a failure and not
//!   carried out;
//! - **data loss**: the engine loses every room's data (new epochs), as a
//!   shared engine restarted empty; or, half the time, it **rolls back**
//!   to the point marked at the previous data loss (or the start), keeping
//!   each epoch, as a Redis restarted from an older snapshot: the rollback
//!   check (docs/engine.md, "Lost writes") must turn it into new epochs.

use std::collections::BTreeMap;

use super::memory::{MemoryEngine, NodeId};
use super::{EngineBroken, EngineError, EngineEvent, EngineRequest, Epoch};
use crate::names::RoomName;
use crate::standalone::InlineEngine;

/// How often each fault strikes, in parts per thousand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineFaults {
    /// Events delayed.
    pub delay_per_mille: u32,
    /// Longest delay, in µs.
    pub max_delay_us: u64,
    /// Live messages lost.
    pub lose_live_per_mille: u32,
    /// Appends and reads failed.
    pub fail_per_mille: u32,
    /// Requests before which the engine loses all its data.
    pub reset_per_mille: u32,
}

impl EngineFaults {
    /// Whether any fault can strike.
    pub fn any(&self) -> bool {
        self.delay_per_mille + self.lose_live_per_mille + self.fail_per_mille + self.reset_per_mille
            > 0
    }
}

/// Faults injected so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Events delayed.
    pub delayed: u64,
    /// Live messages lost.
    pub lost: u64,
    /// Requests failed.
    pub failed: u64,
    /// Data losses (roll backs included).
    pub resets: u64,
    /// Data losses that were roll backs to an earlier point.
    pub roll_backs: u64,
    /// Lost live messages the node was told about (`StreamReset`).
    pub resets_heard: u64,
}

impl FaultCounts {
    /// All faults injected.
    pub fn total(&self) -> u64 {
        self.delayed + self.lost + self.failed + self.resets
    }
}

/// The memory engine behind a fault layer. See the module docs.
#[derive(Debug)]
pub struct FaultyEngine {
    inner: MemoryEngine,
    faults: EngineFaults,
    rng: u64,
    /// Events in flight: (due µs, order) → event.
    queue: BTreeMap<(u64, u64), (NodeId, EngineEvent)>,
    order: u64,
    /// Per node and room, the due time of its latest live message (`false`)
    /// and of its latest presence change (`true`) in flight: each kind
    /// keeps its order within a room.
    live_due: BTreeMap<(NodeId, RoomName, bool), u64>,
    counts: FaultCounts,
    /// The point a roll back goes back to (marked at the start and after
    /// each data loss).
    point: Vec<(RoomName, Epoch, u64)>,
}

impl FaultyEngine {
    /// `inner` behind `faults`, drawn from `seed`.
    pub fn new(inner: MemoryEngine, faults: EngineFaults, seed: u64) -> FaultyEngine {
        FaultyEngine {
            inner,
            faults,
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
            queue: BTreeMap::new(),
            order: 0,
            live_due: BTreeMap::new(),
            counts: FaultCounts::default(),
            point: Vec::new(),
        }
    }

    /// Faults injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.counts
    }

    /// Stops injecting faults (events already delayed still arrive late).
    pub fn heal(&mut self) {
        self.faults = EngineFaults::default();
    }

    /// Events still in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// splitmix64: small, seeded, good enough to draw faults.
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn strikes(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.next() % 1000 < u64::from(per_mille)
    }

    fn schedule(&mut self, now_us: u64, node: NodeId, event: EngineEvent) {
        let mut due = now_us;
        if self.strikes(self.faults.delay_per_mille) {
            due += 1 + self.next() % self.faults.max_delay_us.max(1);
            self.counts.delayed += 1;
        }
        let ordered = match &event {
            EngineEvent::Live(message) => Some((message.room.clone(), false)),
            EngineEvent::PresenceChanged { room, .. } => Some((room.clone(), true)),
            _ => None,
        };
        if let Some((room, presence)) = ordered {
            let key = (node, room, presence);
            let last = self.live_due.get(&key).copied().unwrap_or(0);
            due = due.max(last);
            self.live_due.insert(key, due);
        }
        // A reset comes on the stream that carries presence changes, after
        // every change sent on it before (as a pub/sub reader reports a
        // reconnect behind what it already read): none of the node's older
        // changes arrives after it.
        if matches!(event, EngineEvent::StreamReset) {
            let changes = self.live_due.iter();
            let latest = changes
                .filter(|((to, _, presence), _)| *to == node && *presence)
                .map(|(_, &at)| at)
                .max();
            due = due.max(latest.unwrap_or(0));
        }
        self.order += 1;
        self.queue.insert((due, self.order), (node, event));
    }
}

impl InlineEngine for FaultyEngine {
    fn request(&mut self, node: NodeId, now_us: u64, request: EngineRequest) {
        if self.strikes(self.faults.reset_per_mille) {
            if self.next().is_multiple_of(2) {
                self.inner.roll_back(&self.point);
                self.counts.roll_backs += 1;
            } else {
                self.inner.lose_everything();
            }
            self.counts.resets += 1;
            self.point = self.inner.tops();
        }
        let failure = || EngineError::Unavailable("injected engine failure".into());
        // Only calls can fail (one draw each); the answer is the one the
        // request is owed.
        let failed = request
            .failed(failure())
            .filter(|_| self.strikes(self.faults.fail_per_mille));
        match failed {
            Some(event) => {
                self.counts.failed += 1;
                self.schedule(now_us, node, event);
            }
            None => {
                self.inner.handle(node, now_us, request);
                while let Some((to, event)) = self.inner.poll_event() {
                    if matches!(event, EngineEvent::Live(_))
                        && self.strikes(self.faults.lose_live_per_mille)
                    {
                        self.counts.lost += 1;
                        // Sometimes the loss is noticed, as a shared
                        // engine's pub/sub reconnect is: the node hears
                        // that its stream was reset.
                        if self.next().is_multiple_of(4) {
                            self.counts.resets_heard += 1;
                            self.schedule(now_us, to, EngineEvent::StreamReset);
                        }
                        continue;
                    }
                    self.schedule(now_us, to, event);
                }
            }
        }
    }

    fn next_event(&mut self, now_us: u64) -> Option<(NodeId, EngineEvent)> {
        let (&(due, order), _) = self.queue.first_key_value()?;
        if due > now_us {
            return None;
        }
        self.queue.remove(&(due, order))
    }

    fn timeout(&self) -> Option<u64> {
        let queued = self.queue.first_key_value().map(|(&(due, _), _)| due);
        queued.into_iter().chain(self.inner.poll_timeout()).min()
    }

    fn on_timeout(&mut self, now_us: u64) {
        self.inner.on_timeout(now_us);
    }

    fn room_count(&self) -> usize {
        self.inner.room_count()
    }

    fn check(&self) -> Result<(), EngineBroken> {
        self.inner.invariants()
    }
}
