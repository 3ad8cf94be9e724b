//! What the hosts and the controller share: the oracle, the phase, the
//! trace, counters and the first failure (one thread: `Rc<RefCell>`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use roomcast_core::oracle::{ClientKey, Oracle, Violation};

use crate::report::Recent;
use crate::rng::TraceHash;

/// The simulation's phases, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Clients connect, workload runs, faults are injected.
    Working,
    /// Faults healed; clients stop acting, resume reading, stay connected.
    Quiet,
    /// Clients close normally.
    Closing,
}

/// Everything the hosts and the controller share.
pub(crate) struct World {
    pub(crate) oracle: Oracle,
    pub(crate) phase: Phase,
    pub(crate) trace: TraceHash,
    pub(crate) recent: Recent,
    pub(crate) failure: Option<(String, String)>,
    pub(crate) next_key: ClientKey,
    pub(crate) deliveries: u64,
    pub(crate) closes: BTreeMap<u16, u64>,
    /// Joins with `since` answered (recovered, refused).
    pub(crate) recoveries: (u64, u64),
    /// Per client host: bumped at each partition; clients abandon
    /// connections opened under an older generation.
    pub(crate) partition_generation: Vec<u64>,
    /// Per server node: bumped when its power is cut; clients abandon
    /// connections to it opened under an older generation.
    pub(crate) node_generation: Vec<u64>,
    /// Clients still running their task.
    pub(crate) clients_running: usize,
    /// Set by the publisher once its quiet-state checks are done.
    pub(crate) quiet_checked: bool,
    /// Set by the publisher when its final checks are done.
    pub(crate) finished: bool,
    /// Broadcasts refused (503) or cut off while the engine failed
    /// (cluster runs with broker faults only).
    pub(crate) publishes_failed: u64,
    /// Rooms the publisher broadcast to once more after the heal (cluster runs).
    pub(crate) final_broadcasts: u64,
    pub(crate) now_ms: u64,
}

pub(crate) type Shared = Rc<RefCell<World>>;

impl World {
    pub(crate) fn new(client_hosts: usize, nodes: usize, clients: usize) -> World {
        World {
            oracle: Oracle::new(),
            phase: Phase::Working,
            trace: TraceHash::default(),
            recent: Recent::default(),
            failure: None,
            next_key: 1,
            deliveries: 0,
            closes: BTreeMap::new(),
            recoveries: (0, 0),
            partition_generation: vec![0; client_hosts],
            node_generation: vec![0; nodes],
            clients_running: clients,
            quiet_checked: false,
            finished: false,
            publishes_failed: 0,
            final_broadcasts: 0,
            now_ms: 0,
        }
    }

    pub(crate) fn fail(&mut self, invariant: &str, detail: String) {
        if self.failure.is_none() {
            self.failure = Some((invariant.to_owned(), detail));
        }
    }

    pub(crate) fn check(&mut self, result: Result<(), Violation>) {
        if let Err(v) = result {
            let detail = v.to_string();
            self.fail(v.invariant, detail);
        }
    }
}

/// Set by the panic hook: a panic anywhere (a server task included) fails the run.
pub(crate) static PANICKED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, std::sync::atomic::Ordering::SeqCst);
            previous(info);
        }));
    });
}
