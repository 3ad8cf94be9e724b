//! Engines the hub drives without answering them inline: today the Redis
//! engine ([`redis`]), shared by every node of a deployment, or any engine
//! task a caller hands [`serve_with_engine`](crate::serve_with_engine) as
//! an [`EngineLink`] (the simulator's broker link is one).
//!
//! The hub talks to such an engine over two channels (an [`EngineLink`]):
//! the core's requests go to the engine's task, and its answers, live
//! messages and stream resets come back as `Input::Engine` events. The
//! in-memory engine of a single process is not here: it stays inline in
//! the hub (`roomcast_core::Standalone`).
//!
//! | file | job |
//! |---|---|
//! | [`redis`] | the engine task: connections, calls with timeouts, bounds, readiness |
//! | `health` | the command connection: connecting, the health check behind readiness, reconnecting on `READONLY` or a new master |
//! | `connection` | where the connections go: one Redis, a Redis Cluster, or Sentinel's master |
//! | `sentinel` | asking Redis Sentinels for the master and following its failovers |
//! | `scripts` | key and channel names, the Lua scripts, the live message format |
//! | `pubsub` | the node's one pub/sub connection: (un)subscribe, resubscribe, live messages and presence changes, the end-to-end probe |
//! | `presence` | presence writes (batched per room, in request order), lists, the node's refresh of its entries |
//! | [`tls`] | the Redis client, with TLS for `rediss://` (CA and client certificate files) |

mod connection;
mod health;
mod presence;
mod pubsub;
pub mod redis;
mod scripts;
mod sentinel;
pub mod tls;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use roomcast_core::engine::{EngineEvent, EngineRequest};
use tokio::sync::mpsc;

/// The hub's end of an engine task.
pub struct EngineLink {
    /// The core's requests, to the engine.
    pub requests: mpsc::Sender<EngineRequest>,
    /// Answers, live messages and stream resets, from the engine.
    pub events: mpsc::Receiver<EngineEvent>,
    /// Whether the engine currently answers.
    pub ready: Readiness,
    /// The engine's presence lane: it ends once the presence writes the
    /// core asked for are done, after `requests` is dropped (a shutting
    /// down node waits for it, so its `PresenceClear` lands).
    pub presence_written: Option<tokio::task::JoinHandle<()>>,
}

/// Whether the engine answers (`GET /readyz`). Always ready for the
/// in-memory engine.
#[derive(Clone, Debug)]
pub struct Readiness(Option<Arc<ReadyFlags>>);

/// What a Redis engine must have to be ready.
#[derive(Debug, Default)]
pub(crate) struct ReadyFlags {
    /// The command connection answered its last health check.
    pub(crate) commands: AtomicBool,
    /// ...but refused the heartbeat's write with `READONLY` (a replica,
    /// such as a demoted master): appends cannot succeed there.
    pub(crate) read_only: AtomicBool,
    /// The pub/sub connection is up and subscribed.
    pub(crate) pubsub: Arc<AtomicBool>,
    /// Nodes of the deployment seen alive (heartbeats), 0 before the first.
    pub(crate) nodes: AtomicUsize,
    /// Open connections of those nodes, as of their last heartbeats.
    pub(crate) connections: AtomicUsize,
}

/// The deployment as this node last saw it through the heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterFigures {
    /// Nodes seen alive, this one included (0: not known yet).
    pub nodes: usize,
    /// Their open WebSocket connections.
    pub connections: usize,
}

impl Readiness {
    /// Always ready (the in-memory engine).
    pub fn always() -> Readiness {
        Readiness(None)
    }

    pub(crate) fn flags(flags: Arc<ReadyFlags>) -> Readiness {
        Readiness(Some(flags))
    }

    /// The nodes sharing the engine seen alive lately and their
    /// connections (`None`: the in-memory engine, this node alone).
    pub fn cluster(&self) -> Option<ClusterFigures> {
        self.0.as_ref().map(|flags| ClusterFigures {
            nodes: flags.nodes.load(Ordering::SeqCst),
            connections: flags.connections.load(Ordering::SeqCst),
        })
    }

    /// Whether the engine answers now; `Err` says what is missing.
    pub fn check(&self) -> Result<(), &'static str> {
        let Some(flags) = &self.0 else {
            return Ok(());
        };
        if !flags.commands.load(Ordering::SeqCst) {
            return Err("the redis engine does not answer");
        }
        if flags.read_only.load(Ordering::SeqCst) {
            return Err("the redis engine is read-only (a replica): publishes cannot be stored");
        }
        if !flags.pubsub.load(Ordering::SeqCst) {
            return Err("the redis pub/sub connection is down");
        }
        Ok(())
    }
}

/// Capped exponential backoff with jitter, for reconnecting.
pub(crate) struct Backoff {
    attempt: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Backoff {
        Backoff { attempt: 0 }
    }

    /// The next wait: doubling from 100 ms up to 5 s, each drawn between
    /// half and all of it (so nodes do not reconnect in step).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let full = Backoff::FIRST
            .saturating_mul(1 << self.attempt.min(16))
            .min(Backoff::CAP);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = uuid::Uuid::new_v4().as_u128() as u64 % 1000;
        full / 2 + full / 2 * jitter as u32 / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jittered_and_capped() {
        // Attempt k waits between half and all of min(100 ms * 2^k, 5 s).
        let mut backoff = Backoff::new();
        for attempt in 0..12u32 {
            let full = (Duration::from_millis(100) * 2u32.pow(attempt)).min(Duration::from_secs(5));
            let delay = backoff.next_delay();
            assert!(
                delay >= full / 2 && delay <= full,
                "attempt {attempt}: {delay:?} outside {:?}..={full:?}",
                full / 2
            );
        }
        // At the cap, the draws are spread (nodes do not reconnect in step).
        let capped: std::collections::BTreeSet<Duration> =
            (0..50).map(|_| backoff.next_delay()).collect();
        assert!(capped.len() > 10, "jitter: {capped:?}");
        assert!(capped.iter().all(|d| *d >= Duration::from_millis(2_500)));
    }

    #[test]
    fn readiness_names_what_is_missing() {
        assert_eq!(Readiness::always().check(), Ok(()));
        let flags = Arc::new(ReadyFlags::default());
        let ready = Readiness::flags(flags.clone());
        assert!(ready.check().is_err());
        flags.commands.store(true, Ordering::SeqCst);
        flags.read_only.store(true, Ordering::SeqCst);
        assert!(ready.check().unwrap_err().contains("read-only"));
        flags.read_only.store(false, Ordering::SeqCst);
        assert_eq!(ready.check(), Err("the redis pub/sub connection is down"));
        flags.pubsub.store(true, Ordering::SeqCst);
        assert_eq!(ready.check(), Ok(()));
    }
}
