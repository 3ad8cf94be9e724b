//! The broker host: one [`MemoryEngine`] shared by every server node, served
//! over TCP. It plays the part Redis plays in production: numbering,
//! history and presence in one place; live messages to every node that
//! follows the room (at most once, like pub/sub); direct messages to every
//! other node.
//!
//! One connection ("session") per node. The first frame names the node; a
//! node's new session supersedes its old one (the old one's interests are
//! turned off first, as Redis forgets a dead connection's subscriptions,
//! and the node declares them again on the new one). Everything runs on
//! the host's one thread: each request is handled to the end, and the
//! engine's answers are routed at once, so a session's answers leave in
//! its request order and a read after an interest-on sees every append
//! whose live message the node will not get.
//!
//! Faults the broker injects itself, from [`BrokerShared`]: live and
//! direct messages lost (at most once) at the seed's rate. A session whose
//! outbound queue passes its bound is dropped (Redis's output buffer
//! limit for a subscriber that does not read). Restarts (data loss) and
//! partitions are the controller's (turmoil crash/bounce and partition).
//! A **roll back** is the controller's too, carried out here: it marks a
//! point ([`BrokerShared::snapshot_due`]), and later has the broker go
//! back to it ([`BrokerShared::roll_back_due`]) as a Redis restarted from
//! that point's snapshot would: each room's stream back to its top of
//! then, *in the same epoch*, a new store lifetime, and every session
//! dropped (a restarted server's connections break).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::Duration;

use roomcast_core::engine::memory::HistoryBounds;
use roomcast_core::engine::memory::{MemoryEngine, NodeId};
use roomcast_core::engine::{EngineBroken, EngineEvent, EngineRequest, Epoch};
use roomcast_core::RoomName;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::wire::{read_frame, write_frame, Frame};
use crate::rng::SimRng;

/// How the broker runs (one lifetime of it).
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// The port it listens on.
    pub port: u16,
    /// The engine's history bounds (from the nodes' limits).
    pub bounds: HistoryBounds,
    /// A node's presence entries live this long without a word from it.
    pub presence_ttl_us: u64,
    /// The prefix of the epochs this lifetime creates (must differ between
    /// lifetimes: a restarted broker lost everything).
    pub epoch_prefix: String,
    /// A session silent this long is dropped (nodes ping more often).
    pub idle_timeout: Duration,
    /// Frames queued for one session at most; beyond, the session is dropped.
    pub outbound_frames_max: usize,
    /// Rooms whose presence changes the broker tells the nodes that follow
    /// them (`EngineEvent::PresenceChanged`), as Redis does for the rooms
    /// with presence diffs.
    pub presence_changes: roomcast_core::RoomOptions,
}

/// What outlives a broker lifetime and is shared with the controller: the
/// fault switch, the loss generator, counters and problems found.
#[derive(Debug)]
pub struct BrokerShared {
    /// Live and direct messages lost, per million (0: none).
    pub loss_per_million: u64,
    /// Draws the losses (seeded; the broker is one thread, so the draws
    /// come in a deterministic order).
    pub rng: SimRng,
    /// Live messages sent to nodes.
    pub live_sent: u64,
    /// Live and direct messages lost on purpose.
    pub lost: u64,
    /// Direct messages sent to nodes.
    pub directs: u64,
    /// Sessions opened (over every lifetime).
    pub sessions: u64,
    /// Sessions dropped because they did not read.
    pub slow_dropped: u64,
    /// Lifetimes started.
    pub lifetimes: u64,
    /// The first engine invariant found broken.
    pub violation: Option<EngineBroken>,
    /// The controller asks for a point to roll back to (taken at the next tick).
    pub snapshot_due: bool,
    /// The controller asks for the roll back to the point (at the next tick).
    pub roll_back_due: bool,
    /// The point: each room's epoch and top when it was taken.
    point: Option<Vec<(RoomName, Epoch, u64)>>,
    /// Roll backs carried out.
    pub rolled_back: u64,
    /// A planted defect: the engine's rollback check is off (to show that
    /// the oracle catches the seqs it would let be reused).
    pub skip_rollback_check: bool,
}

impl BrokerShared {
    /// No faults yet; losses drawn from `rng`.
    pub fn new(rng: SimRng) -> BrokerShared {
        BrokerShared {
            loss_per_million: 0,
            rng,
            live_sent: 0,
            lost: 0,
            directs: 0,
            sessions: 0,
            slow_dropped: 0,
            lifetimes: 0,
            violation: None,
            snapshot_due: false,
            roll_back_due: false,
            point: None,
            rolled_back: 0,
            skip_rollback_check: false,
        }
    }
}

/// The broker's handle, shared by its tasks and the controller.
pub type BrokerHandle = Rc<RefCell<BrokerShared>>;

/// Engine invariants are checked every this many requests.
const CHECK_EVERY: u64 = 512;

/// The engine's timers are looked at this often, at most.
const TICK: Duration = Duration::from_millis(50);

/// Serves one broker lifetime on `config.port` (the host's software).
pub async fn run(config: BrokerConfig, shared: BrokerHandle) -> turmoil::Result {
    shared.borrow_mut().lifetimes += 1;
    let listener =
        turmoil::net::TcpListener::bind((IpAddr::from(Ipv4Addr::UNSPECIFIED), config.port)).await?;
    let mut engine = MemoryEngine::new(
        config.bounds,
        config.epoch_prefix.clone(),
        config.presence_ttl_us,
    )
    .with_presence_changes(config.presence_changes.clone());
    if shared.borrow().skip_rollback_check {
        engine.skip_rollback_check();
    }
    let broker = Rc::new(RefCell::new(Broker {
        engine,
        origin: Instant::now(),
        sessions: BTreeMap::new(),
        next_session: 0,
        shared,
        requests: 0,
    }));
    let timers = broker.clone();
    tokio::task::spawn_local(async move {
        loop {
            tokio::time::sleep(TICK).await;
            timers.borrow_mut().tick();
        }
    });
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::task::spawn_local(session(broker.clone(), stream, config.clone()));
    }
}

struct Broker {
    engine: MemoryEngine,
    origin: Instant,
    /// The current session of each connected node.
    sessions: BTreeMap<NodeId, Session>,
    next_session: u64,
    shared: BrokerHandle,
    requests: u64,
}

struct Session {
    id: u64,
    out: mpsc::Sender<Frame>,
    /// Rooms this session turned interest on for (off when it ends).
    interests: BTreeSet<RoomName>,
}

impl Broker {
    fn now_us(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.origin)
            .as_micros() as u64
    }

    /// `node` connected: its older session, if any, is over.
    fn open(&mut self, node: NodeId, out: mpsc::Sender<Frame>) -> u64 {
        self.next_session += 1;
        let id = self.next_session;
        if let Some(old) = self.sessions.remove(&node) {
            self.forget(node, old);
        }
        let session = Session {
            id,
            out,
            interests: BTreeSet::new(),
        };
        self.sessions.insert(node, session);
        self.shared.borrow_mut().sessions += 1;
        id
    }

    fn is_current(&self, node: NodeId, id: u64) -> bool {
        self.sessions.get(&node).is_some_and(|s| s.id == id)
    }

    /// Session `id` of `node` ended (if still current).
    fn close(&mut self, node: NodeId, id: u64) {
        if self.is_current(node, id) {
            if let Some(session) = self.sessions.remove(&node) {
                self.forget(node, session);
            }
        }
    }

    /// A session's subscriptions end with it (its presence entries do not:
    /// they expire unless the node comes back in time).
    fn forget(&mut self, node: NodeId, session: Session) {
        let now = self.now_us();
        for room in session.interests {
            self.engine
                .handle(node, now, EngineRequest::Interest { room, on: false });
        }
        self.route();
    }

    fn request(&mut self, node: NodeId, id: u64, request: EngineRequest) {
        let Some(session) = self.sessions.get_mut(&node).filter(|s| s.id == id) else {
            return; // superseded: its node no longer waits for this
        };
        match &request {
            EngineRequest::Interest { room, on: true } => {
                session.interests.insert(room.clone());
            }
            EngineRequest::Interest { room, on: false } => {
                session.interests.remove(room);
            }
            EngineRequest::Direct { target, frame } => {
                let others: Vec<NodeId> = self
                    .sessions
                    .keys()
                    .copied()
                    .filter(|n| *n != node)
                    .collect();
                for other in others {
                    let event = EngineEvent::Direct {
                        target: target.clone(),
                        frame: frame.clone(),
                    };
                    self.deliver(other, event);
                }
                return;
            }
            _ => {}
        }
        let now = self.now_us();
        self.engine.handle(node, now, request);
        self.route();
        self.requests += 1;
        if self.requests.is_multiple_of(CHECK_EVERY) {
            self.check();
        }
    }

    fn pong(&mut self, node: NodeId, id: u64, n: u64) {
        if self.is_current(node, id) {
            self.send(node, Frame::Pong(n));
        }
    }

    /// Routes the engine's answers and live messages to their nodes.
    fn route(&mut self) {
        while let Some((node, event)) = self.engine.poll_event() {
            self.deliver(node, event);
        }
    }

    fn deliver(&mut self, node: NodeId, event: EngineEvent) {
        if matches!(event, EngineEvent::Live(_) | EngineEvent::Direct { .. }) {
            let mut shared = self.shared.borrow_mut();
            let rate = shared.loss_per_million;
            if rate > 0 && shared.rng.chance(rate) {
                shared.lost += 1;
                return;
            }
            if matches!(event, EngineEvent::Live(_)) {
                shared.live_sent += 1;
            } else {
                shared.directs += 1;
            }
        }
        // A node without a session misses it: its link answers the call
        // with a failure after its timeout, and reads again on reconnect.
        self.send(node, Frame::Event(event));
    }

    fn send(&mut self, node: NodeId, frame: Frame) {
        let Some(session) = self.sessions.get(&node) else {
            return;
        };
        if session.out.try_send(frame).is_err() {
            // Not reading (or gone): drop it, as Redis drops a subscriber
            // past its output buffer limit.
            let id = session.id;
            self.shared.borrow_mut().slow_dropped += 1;
            self.close(node, id);
        }
    }

    fn tick(&mut self) {
        let (snapshot, roll_back) = {
            let mut shared = self.shared.borrow_mut();
            let due = (shared.snapshot_due, shared.roll_back_due);
            shared.snapshot_due = false;
            shared.roll_back_due = false;
            due
        };
        if snapshot {
            self.shared.borrow_mut().point = Some(self.engine.tops());
        }
        if roll_back {
            self.roll_back();
        }
        let now = self.now_us();
        if self.engine.poll_timeout().is_some_and(|at| at <= now) {
            self.engine.on_timeout(now);
            self.route();
        }
    }

    /// Back to the point, as a Redis restarted from its snapshot: streams
    /// rolled back in their epochs, a new store lifetime (the engine), and
    /// every session dropped (its node reconnects and resubscribes).
    fn roll_back(&mut self) {
        let Some(point) = self.shared.borrow_mut().point.take() else {
            return;
        };
        let nodes: Vec<NodeId> = self.sessions.keys().copied().collect();
        for node in nodes {
            if let Some(session) = self.sessions.remove(&node) {
                self.forget(node, session);
            }
        }
        self.engine.roll_back(&point);
        self.route();
        self.shared.borrow_mut().rolled_back += 1;
    }

    fn check(&mut self) {
        if let Err(broken) = self.engine.invariants() {
            let mut shared = self.shared.borrow_mut();
            shared.violation.get_or_insert(broken);
        }
    }
}

/// One node's connection: hello, then requests and pings until it ends.
async fn session(
    broker: Rc<RefCell<Broker>>,
    stream: turmoil::net::TcpStream,
    config: BrokerConfig,
) {
    let (mut read, mut write) = stream.into_split();
    let node = match tokio::time::timeout(config.idle_timeout, read_frame(&mut read)).await {
        Ok(Ok(Some(Frame::Hello(node)))) => node,
        _ => return,
    };
    let (out, mut outbound) = mpsc::channel(config.outbound_frames_max.max(1));
    let id = broker.borrow_mut().open(node, out);
    let writer = tokio::task::spawn_local(async move {
        while let Some(frame) = outbound.recv().await {
            if write_frame(&mut write, &frame).await.is_err() {
                break;
            }
        }
    });
    loop {
        let frame = tokio::time::timeout(config.idle_timeout, read_frame(&mut read)).await;
        let mut b = broker.borrow_mut();
        match frame {
            Ok(Ok(Some(Frame::Request(request)))) => b.request(node, id, request),
            Ok(Ok(Some(Frame::Ping(n)))) => b.pong(node, id, n),
            // Silent too long, closed, broken or speaking nonsense.
            _ => break,
        }
        if !b.is_current(node, id) {
            break;
        }
    }
    broker.borrow_mut().close(node, id);
    writer.abort();
}
