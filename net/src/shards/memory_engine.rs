//! The in-memory engine as a task of its own, for a node of several
//! shards: the shards reach it through the [router](super::router) exactly
//! as they reach Redis, over an [`EngineLink`]. (A node of one shard keeps
//! the engine inline in its hub: `roomcast_core::Standalone`.)
//!
//! The task serves one engine node (`NodeId` 0): the router in front of it
//! makes the shards look like one node, so presence lists and counts are
//! node-wide and every bound of the engine (`rooms_max`,
//! `history_bytes_max`) holds for the whole node.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use roomcast_core::engine::memory::{MemoryEngine, NodeId};
use roomcast_core::engine::{EngineEvent, EngineRequest};
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::engine::{EngineLink, Readiness};

/// The one node the router speaks for.
const NODE: NodeId = 0;

/// Requests taken from the channel before the engine's events are sent on.
const BATCH_MAX: usize = 256;

/// Room count of the engine, for `/ws/status` (written by the task).
pub(crate) type RoomCount = Arc<AtomicUsize>;

/// Starts the engine task; it ends when every sender of the returned
/// link's requests is gone. `capacity` bounds both channels.
pub(crate) fn spawn(
    engine: MemoryEngine,
    clock: Clock,
    capacity: usize,
) -> (EngineLink, RoomCount, tokio::task::JoinHandle<()>) {
    let (requests_tx, requests) = mpsc::channel(capacity);
    let (events, events_rx) = mpsc::channel(capacity);
    let rooms = RoomCount::default();
    let task = tokio::spawn(run(engine, clock, requests, events, rooms.clone()));
    let link = EngineLink {
        requests: requests_tx,
        events: events_rx,
        ready: Readiness::always(),
        presence_written: None,
    };
    (link, rooms, task)
}

async fn run(
    mut engine: MemoryEngine,
    clock: Clock,
    mut requests: mpsc::Receiver<EngineRequest>,
    events: mpsc::Sender<EngineEvent>,
    rooms: RoomCount,
) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    loop {
        let deadline = engine.poll_timeout().map(|us| clock.instant_of(us));
        tokio::select! {
            biased;
            received = requests.recv_many(&mut batch, BATCH_MAX) => {
                if received == 0 {
                    break;
                }
                for request in batch.drain(..) {
                    engine.handle(NODE, clock.monotonic_us(), request);
                }
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                engine.on_timeout(clock.monotonic_us());
            }
        }
        // Before the answers go out: a client that saw its join answered
        // finds its room counted.
        rooms.store(engine.room_count(), Ordering::Relaxed);
        while let Some((node, event)) = engine.poll_event() {
            debug_assert_eq!(node, NODE, "the engine answers only the node it serves");
            // Awaited, never dropped: answers must arrive, and the router
            // drains this channel without waiting on anything but shards.
            if events.send(event).await.is_err() {
                return;
            }
        }
    }
}
