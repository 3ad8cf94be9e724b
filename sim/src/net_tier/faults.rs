//! Faults the controller injects between simulation steps.
//!
//! - **Network faults** between a client host and the server nodes (every
//!   run): partitions (the host's clients abandon their sockets and come
//!   back), holds, latency changes. In a cluster run they cut, hold or slow
//!   the client host's links to every node at once.
//! - **Broker faults** (cluster runs): lost live messages at the broker, a
//!   node partitioned from the broker, a node's link to the broker held
//!   (everything delayed, then delivered in order: calls time out and
//!   their answers come late), the broker restarted with every room
//!   lost (crash, then restart after a downtime: new epochs), and a node
//!   restarted (its power cut, then a new process: its clients lose their
//!   connections and come back through any node with `since`), and the
//!   broker **rolled back**: a point is marked, and some time later the
//!   broker goes back to it keeping every epoch (a Redis restarted from an
//!   older RDB snapshot, or a lagging replica promoted), which the
//!   engine's rollback check must turn into new epochs (without it, the
//!   oracle sees seqs given to two messages). Each seed draws its mix
//!   from its own generator, so the workload of a seed is the same with
//!   broker faults on or off; a third of the seeds draw none.
//!
//! A node bounce is a **power cut**: the node is partitioned from every
//! peer, then crashed, so its dying sockets send nothing. Crashing drops
//! the node's tokio runtime, which drops its `tokio::spawn` tasks in an
//! order set by tokio's process-global task ids; every FIN or RST they sent
//! would draw from turmoil's generator in that order, and a seed would not
//! replay the same trace in another process (or after other seeds in a
//! sweep). Its peers learn of the death as they would of a machine gone:
//! the broker through its idle timeout, the clients connected to it by
//! abandoning their connections (as a keepalive would), the publisher
//! through its call timeout. (A broker restart needs none of this: the
//! broker's tasks are `spawn_local`, dropped in a fixed order.)

use std::fmt::Write as _;
use std::time::Duration;

use super::world::Shared;
use super::{BROKER, CLIENT_HOSTS, CONNECT_SPREAD_MS, PUBLISHER};
use crate::broker::host::{BrokerHandle, BrokerShared};
use crate::rng::SimRng;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Fault {
    /// Cut a client host off the server nodes.
    Partition(usize),
    /// Delay everything between a client host and the server nodes.
    Hold(usize),
    /// Raise a link's latency.
    Latency(usize, u64),
}

impl Fault {
    pub(crate) fn draw(rng: &mut SimRng) -> Fault {
        let host = rng.below(CLIENT_HOSTS as u64) as usize;
        match rng.below(3) {
            0 => Fault::Partition(host),
            1 => Fault::Hold(host),
            _ => Fault::Latency(host, rng.range(20, 300)),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Fault::Partition(_) => "fault-partition",
            Fault::Hold(_) => "fault-hold",
            Fault::Latency(..) => "fault-latency",
        }
    }

    pub(crate) fn host(&self) -> usize {
        match *self {
            Fault::Partition(h) | Fault::Hold(h) | Fault::Latency(h, _) => h,
        }
    }
}

/// Starts (`start`) or heals a network fault between a client host and
/// every node.
pub(crate) fn apply(
    sim: &turmoil::Sim<'_>,
    world: &Shared,
    nodes: &[String],
    fault: Fault,
    start: bool,
) {
    let host = format!("client-{}", fault.host());
    let host = host.as_str();
    if let (Fault::Partition(index), true) = (fault, start) {
        world.borrow_mut().partition_generation[index] += 1;
    }
    for node in nodes {
        let node = node.as_str();
        match (fault, start) {
            (Fault::Partition(_), true) => sim.partition(host, node),
            (Fault::Partition(_), false) => sim.repair(host, node),
            (Fault::Hold(_), true) => sim.hold(host, node),
            (Fault::Hold(_), false) => sim.release(host, node),
            (Fault::Latency(_, ms), true) => {
                sim.set_link_latency(host, node, Duration::from_millis(ms))
            }
            (Fault::Latency(..), false) => {
                sim.set_link_latency(host, node, Duration::from_millis(1))
            }
        }
    }
}

/// Every host a node talks to.
fn peers() -> impl Iterator<Item = String> {
    let clients = (0..CLIENT_HOSTS).map(|host| format!("client-{host}"));
    [BROKER.to_owned(), PUBLISHER.to_owned()]
        .into_iter()
        .chain(clients)
}

/// One broker fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BrokerFault {
    /// Cut a node off the broker.
    Partition(usize),
    /// Delay everything between a node and the broker.
    Hold(usize),
    /// The broker is down, then starts again empty.
    Restart,
    /// A node is down, then starts again (a new process: new ids).
    Bounce(usize),
    /// A point is marked; when healed, the broker goes back to it.
    RollBack,
}

impl BrokerFault {
    fn name(&self) -> &'static str {
        match self {
            BrokerFault::Partition(_) => "broker-partition",
            BrokerFault::Hold(_) => "broker-hold",
            BrokerFault::Restart => "broker-restart",
            BrokerFault::Bounce(_) => "node-bounce",
            BrokerFault::RollBack => "broker-roll-back",
        }
    }

    /// What it breaks: a node (or its link to the broker), or the broker.
    /// A bounce cuts the node's links too, so it excludes link faults.
    fn target(&self) -> (u8, usize) {
        match *self {
            BrokerFault::Partition(n) | BrokerFault::Hold(n) | BrokerFault::Bounce(n) => (0, n),
            BrokerFault::Restart | BrokerFault::RollBack => (1, 0),
        }
    }

    fn node(&self) -> u64 {
        match *self {
            BrokerFault::Partition(n) | BrokerFault::Hold(n) | BrokerFault::Bounce(n) => n as u64,
            BrokerFault::Restart | BrokerFault::RollBack => 0,
        }
    }
}

/// A seed's broker faults: the loss rate, and the faults planned (start
/// and end in simulated ms), started and healed by [`BrokerFaults::step`].
pub(crate) struct BrokerFaults {
    /// Live and direct messages lost at the broker, per million.
    pub(crate) loss_per_million: u64,
    /// Planned, by start time, not started yet (the next one last).
    planned: Vec<(u64, u64, BrokerFault)>,
    /// Started and not healed: until when.
    active: Vec<(u64, BrokerFault)>,
    /// Started: partitions, holds, restarts, bounces, roll backs.
    pub(crate) injected: [u64; 5],
    enabled: bool,
}

impl BrokerFaults {
    /// Draws the mix of a seed (`enabled` off: none, with the same draws).
    /// Roll backs come from `roll_back_rng`, so adding them changed no
    /// other draw of a seed.
    pub(crate) fn draw(
        rng: &mut SimRng,
        roll_back_rng: &mut SimRng,
        enabled: bool,
        nodes: usize,
        work_ms: u64,
        seconds: u64,
    ) -> BrokerFaults {
        let fault_free = rng.below(3) == 0;
        let loss_per_million = if rng.chance(666_667) {
            rng.range(1_000, 50_000)
        } else {
            0
        };
        let count = |rng: &mut SimRng| {
            if rng.chance(600_000) {
                1 + rng.below(1 + seconds / 8)
            } else {
                0
            }
        };
        let counts = [count(rng), count(rng), count(rng), count(rng)];
        let mut planned = Vec::new();
        let latest = work_ms.saturating_sub(500).max(CONNECT_SPREAD_MS + 1);
        for (kind, &n) in counts.iter().enumerate() {
            for _ in 0..n {
                let start = rng.range(CONNECT_SPREAD_MS, latest);
                let node = rng.below(nodes as u64) as usize;
                let (fault, lasts) = match kind {
                    0 => (BrokerFault::Partition(node), rng.range(200, 3_000)),
                    // Shorter and longer than a link's patience.
                    1 => (BrokerFault::Hold(node), rng.range(100, 2_000)),
                    2 => (BrokerFault::Restart, rng.range(50, 1_500)),
                    _ => (BrokerFault::Bounce(node), rng.range(50, 2_000)),
                };
                planned.push((start, start + lasts, fault));
            }
        }
        // Half the seeds roll the broker back, once: the point is marked,
        // messages follow, then the broker goes back to the point.
        if roll_back_rng.chance(500_000) {
            let start = roll_back_rng.range(CONNECT_SPREAD_MS, latest);
            let lasts = roll_back_rng.range(300, 3_000);
            planned.push((start, start + lasts, BrokerFault::RollBack));
        }
        let enabled = enabled && !fault_free;
        if !enabled {
            planned.clear();
        }
        // Latest first: the next one is popped from the end.
        planned.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        BrokerFaults {
            loss_per_million: if enabled { loss_per_million } else { 0 },
            planned,
            active: Vec::new(),
            injected: [0; 5],
            enabled,
        }
    }

    /// Starts the faults whose time has come and heals those whose time is
    /// up; with `heal_all`, heals everything and plans nothing more.
    pub(crate) fn step(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        world: &Shared,
        broker: &BrokerHandle,
        nodes: &[String],
        elapsed_ms: u64,
        heal_all: bool,
    ) {
        if heal_all {
            self.planned.clear();
        }
        while let Some(&(start, end, fault)) = self.planned.last() {
            if start > elapsed_ms {
                break;
            }
            self.planned.pop();
            // One fault per target at a time (a link is either cut or held:
            // turmoil keeps one state per link, so one's heal would end the
            // other early).
            if self
                .active
                .iter()
                .any(|(_, active)| active.target() == fault.target())
            {
                continue;
            }
            match fault {
                BrokerFault::Partition(node) => sim.partition(nodes[node].as_str(), BROKER),
                BrokerFault::Hold(node) => sim.hold(nodes[node].as_str(), BROKER),
                BrokerFault::Restart => sim.crash(BROKER),
                BrokerFault::RollBack => broker.borrow_mut().snapshot_due = true,
                BrokerFault::Bounce(node) => {
                    // A power cut (see the module docs).
                    let host = nodes[node].as_str();
                    for peer in peers() {
                        sim.partition(host, peer.as_str());
                    }
                    sim.crash(host);
                    world.borrow_mut().node_generation[node] += 1;
                }
            }
            let kind = match fault {
                BrokerFault::Partition(_) => 0,
                BrokerFault::Hold(_) => 1,
                BrokerFault::Restart => 2,
                BrokerFault::Bounce(_) => 3,
                BrokerFault::RollBack => 4,
            };
            self.injected[kind] += 1;
            world
                .borrow_mut()
                .recent
                .push(elapsed_ms * 1000, 0, fault.name(), fault.node());
            self.active.push((end, fault));
        }
        let mut index = 0;
        while index < self.active.len() {
            if heal_all || self.active[index].0 <= elapsed_ms {
                let (_, fault) = self.active.swap_remove(index);
                match fault {
                    BrokerFault::Partition(node) => sim.repair(nodes[node].as_str(), BROKER),
                    BrokerFault::Hold(node) => sim.release(nodes[node].as_str(), BROKER),
                    BrokerFault::Restart => sim.bounce(BROKER),
                    // Healed early (the end of the faults): no roll back.
                    BrokerFault::RollBack if heal_all => {}
                    BrokerFault::RollBack => broker.borrow_mut().roll_back_due = true,
                    BrokerFault::Bounce(node) => {
                        let host = nodes[node].as_str();
                        for peer in peers() {
                            sim.repair(host, peer.as_str());
                        }
                        sim.bounce(host);
                    }
                }
                world
                    .borrow_mut()
                    .recent
                    .push(elapsed_ms * 1000, 0, "healed", fault.node());
            } else {
                index += 1;
            }
        }
    }

    /// The summary's `broker_faults=` value: what was injected, then the
    /// seed's rates.
    pub(crate) fn summary(
        &self,
        broker: &BrokerShared,
        publishes_failed: u64,
        final_broadcasts: u64,
    ) -> String {
        if !self.enabled {
            return "off".into();
        }
        let [partitions, holds, restarts, bounces, roll_backs] = self.injected;
        let mut text = format!(
            "{}(partitions={partitions},holds={holds},restarts={restarts},bounces={bounces},roll_backs={roll_backs}/{},lost={}/{}",
            partitions + holds + restarts + bounces + broker.rolled_back + broker.lost,
            broker.rolled_back,
            broker.lost,
            broker.lost + broker.live_sent,
        );
        let _ = write!(text, ",directs={}", broker.directs);
        if broker.slow_dropped > 0 {
            let _ = write!(text, ",slow_sessions={}", broker.slow_dropped);
        }
        let _ = write!(
            text,
            ";loss_per_million={}) publishes_failed={publishes_failed} final_broadcasts={final_broadcasts}",
            self.loss_per_million
        );
        text
    }
}
