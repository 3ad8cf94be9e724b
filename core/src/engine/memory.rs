//! [`MemoryEngine`]: the engine of a single process, as a pure state machine.
//!
//! It keeps each room's `RoomLog` (`memory/room_log.rs`) (epoch, top `seq`, bounded history) and
//! which nodes follow the room, answers every request at once and never
//! loses a live message. A room lives while a node follows it or while its
//! history lasts; then it is dropped, and the next use creates it again
//! under a new epoch. Driven by the caller in the same loop as the core
//! ([`Standalone`](crate::Standalone) does it for one node).
//!
//! It keeps the contract's rollback check too, though in one process its
//! store never goes back: the simulator's broker and the fault layer make
//! it go back ([`MemoryEngine::roll_back`], [`MemoryEngine::restart`]) to
//! play a Redis restarted from an older snapshot.
//!
//! ## Budgets
//!
//! Besides each room's count and age bounds, two engine-wide bounds
//! ([`HistoryBounds`]) keep its memory finite whatever clients do:
//! - **history bytes** (`bytes_max`): when the kept frames of all rooms
//!   together pass it, the oldest entries (by publish time, across rooms)
//!   leave the history. A room's history stays consecutive up to its top,
//!   so a read after an older position is just not covered
//!   (`recovered: false`); a room left with no history and no follower is
//!   dropped.
//! - **rooms** (`rooms_max`): a request that would create a room beyond it
//!   first drops the room kept only for its history that would expire
//!   soonest (its next use starts a new epoch). When every kept room is
//!   followed, the append or read fails (`Unavailable`, naming `rooms_max`)
//!   and an interest-on is refused: that node's reads of the room fail until
//!   it turns the interest off.
//!
//! ## Presence changes
//!
//! Asked to ([`MemoryEngine::with_presence_changes`]: a node of several
//! shards, whose diffs must count every shard's members), it tells every
//! node that follows a room with presence diffs each change of the room's
//! entries as one [`EngineEvent::PresenceChanged`] with the room's count
//! after it: an add, a remove, a node's clear, a node's expiry. In the order
//! applied, once each (it never loses one, so it never merges either).
//! Without it, it sends none and each core builds diffs from its own joins
//! and leaves (one process, one core).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::presence_book::PresenceBook;
use super::{
    EngineError, EngineEvent, EngineRequest, Epoch, Numbered, Position, PresenceEntry, ReadResult,
};
use crate::config::RoomOptions;
use crate::names::RoomName;

mod invariants;
mod room_log;

pub use room_log::HistoryBounds;
use room_log::RoomLog;

/// Identifies one node (one core) among those sharing an engine.
pub type NodeId = u32;

/// One room as the engine keeps it.
#[derive(Debug)]
struct EngineRoom {
    log: RoomLog,
    epoch: Epoch,
    /// Nodes following the live stream.
    followers: BTreeSet<NodeId>,
    /// Key in `MemoryEngine::expiries` while nobody follows the room.
    expiry_at_us: Option<u64>,
    /// Key in `MemoryEngine::oldest` while the room holds history: when
    /// its oldest kept entry was published.
    oldest_us: Option<u64>,
    /// The log's bytes as counted in `MemoryEngine::history_bytes`.
    counted_bytes: usize,
    /// The engine's lifetime when the room was created or last vouched
    /// for (the rollback check).
    life: u64,
}

/// The in-memory engine. See the module docs.
#[derive(Debug)]
pub struct MemoryEngine {
    bounds: HistoryBounds,
    epoch_prefix: String,
    epochs_created: u64,
    rooms: BTreeMap<RoomName, EngineRoom>,
    /// Rooms nobody follows, kept for their history: when to look again.
    expiries: BTreeSet<(u64, RoomName)>,
    /// Rooms holding history, by when their oldest kept entry was
    /// published: the byte budget evicts from the first.
    oldest: BTreeSet<(u64, RoomName)>,
    /// Bytes of kept frames, all rooms together.
    history_bytes: usize,
    /// Interest-ons refused at `rooms_max`: that node's reads of the room
    /// fail until it turns the interest off.
    refused: BTreeSet<(NodeId, RoomName)>,
    events: VecDeque<(NodeId, EngineEvent)>,
    /// Every room's members, by node, with per-node expiry.
    presence: PresenceBook,
    /// The store's lifetime: bumped by [`restart`](Self::restart) (a
    /// shared engine restarted or failed over, possibly with older data).
    life: u64,
    /// Whether the rollback check runs (off only to show that the tests
    /// catch its absence: `skip_rollback_check`).
    rollback_check: bool,
    /// Set by [`with_presence_changes`](Self::with_presence_changes): the
    /// rooms (those with presence diffs) whose changes are told.
    presence_changes: Option<RoomOptions>,
}

impl MemoryEngine {
    /// An empty engine. Epochs are `{epoch_prefix}-{n}`: the prefix must
    /// differ between process lifetimes. A node's presence entries expire
    /// `presence_ttl_us` after its last request.
    pub fn new(bounds: HistoryBounds, epoch_prefix: String, presence_ttl_us: u64) -> MemoryEngine {
        MemoryEngine {
            bounds,
            epoch_prefix,
            epochs_created: 0,
            rooms: BTreeMap::new(),
            expiries: BTreeSet::new(),
            oldest: BTreeSet::new(),
            history_bytes: 0,
            refused: BTreeSet::new(),
            events: VecDeque::new(),
            presence: PresenceBook::new(presence_ttl_us),
            life: 0,
            rollback_check: true,
            presence_changes: None,
        }
    }

    /// The same engine telling the followers of every room with presence
    /// diffs (`rooms.presence_diff_prefixes`) each change of its entries
    /// (module docs, "Presence changes").
    pub fn with_presence_changes(mut self, rooms: RoomOptions) -> MemoryEngine {
        self.presence_changes = Some(rooms);
        self
    }

    /// Presence entries kept, over all rooms.
    pub fn presence_count(&self) -> usize {
        self.presence.count()
    }

    /// Rooms kept (followed or holding history).
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Bytes of frames kept in history, all rooms together.
    pub fn history_bytes(&self) -> usize {
        self.history_bytes
    }

    /// Handles one request of `node` at `now_us` (monotonic µs); answers
    /// and live messages are drained with [`poll_event`](Self::poll_event).
    pub fn handle(&mut self, node: NodeId, now_us: u64, request: EngineRequest) {
        // Any request shows the node is alive: its entries stay.
        self.presence.heard(node, now_us);
        match request {
            EngineRequest::Append {
                call,
                room,
                message,
                known,
            } => {
                let bounds = self.bounds;
                self.check_rollback(&room, known.as_ref());
                if !self.make_room_for(&room) {
                    let result = Err(self.rooms_full(&room));
                    self.events.push_back((
                        node,
                        EngineEvent::Appended {
                            call,
                            result,
                            peer_members: 0,
                        },
                    ));
                    return;
                }
                self.room(&room);
                let Some(state) = self.rooms.get_mut(&room) else {
                    unreachable!("created above")
                };
                let seq = state.log.next_seq();
                let frame = message.number(seq);
                state.log.append(bounds, now_us, frame.clone());
                let numbered = Numbered {
                    room: room.clone(),
                    epoch: state.epoch.clone(),
                    seq,
                    frame,
                    series: message.series,
                };
                // Live first, then the answer: the appending node sees the
                // same order a remote node would see at best.
                for &follower in &state.followers {
                    let live = EngineEvent::Live(numbered.clone());
                    self.events.push_back((follower, live));
                }
                self.events.push_back((
                    node,
                    EngineEvent::Appended {
                        call,
                        result: Ok(numbered),
                        peer_members: 0,
                    },
                ));
                self.sync(&room);
                self.enforce_bytes();
                self.settle(&room);
            }
            EngineRequest::Read {
                call,
                room,
                after,
                limit,
                known,
            } => {
                let bounds = self.bounds;
                self.check_rollback(&room, known.as_ref());
                let refused = self.refused.contains(&(node, room.clone()));
                if refused || !self.make_room_for(&room) {
                    let result = Err(self.rooms_full(&room));
                    self.events
                        .push_back((node, EngineEvent::Read { call, result }));
                    return;
                }
                let state = self.room(&room);
                state.log.expire(bounds, now_us);
                let result = read(state, after.as_ref(), limit);
                self.events.push_back((
                    node,
                    EngineEvent::Read {
                        call,
                        result: Ok(result),
                    },
                ));
                self.sync(&room);
                self.settle(&room);
            }
            EngineRequest::PresenceAdd { room, entry } => {
                if let Some(entry) = self.presence.add(node, now_us, room.clone(), entry) {
                    self.presence_changed(&room, vec![entry], Vec::new());
                }
            }
            EngineRequest::PresenceRemove { room, conn } => {
                if let Some(entry) = self.presence.remove(&room, conn) {
                    self.presence_changed(&room, Vec::new(), vec![entry]);
                }
            }
            EngineRequest::PresenceList { call, room } => {
                let result = Ok(self.presence.list(&room));
                let answer = EngineEvent::Presence { call, result };
                self.events.push_back((node, answer));
            }
            EngineRequest::PresenceRefresh => self.presence.refresh(node, now_us),
            EngineRequest::PresenceClear => {
                for (room, left) in self.presence.clear(node) {
                    self.presence_changed(&room, Vec::new(), left);
                }
            }
            // One process: its node already delivered it.
            EngineRequest::Direct { .. } => {}
            EngineRequest::Interest { room, on } => {
                let key = (node, room.clone());
                if on {
                    if self.make_room_for(&room) {
                        self.refused.remove(&key);
                        self.room(&room).followers.insert(node);
                    } else {
                        self.refused.insert(key);
                    }
                } else {
                    self.refused.remove(&key);
                    if let Some(state) = self.rooms.get_mut(&room) {
                        state.followers.remove(&node);
                        self.settle(&room);
                    }
                }
            }
        }
    }

    /// The next answer or live message, with the node it is for.
    pub fn poll_event(&mut self) -> Option<(NodeId, EngineEvent)> {
        self.events.pop_front()
    }

    /// When [`on_timeout`](Self::on_timeout) is next needed (monotonic µs).
    pub fn poll_timeout(&self) -> Option<u64> {
        let rooms = self.expiries.first().map(|(at, _)| *at);
        rooms.into_iter().chain(self.presence.next_expiry()).min()
    }

    /// Expires history, drops rooms, and drops the presence entries of
    /// nodes that stopped refreshing, whose time has come.
    pub fn on_timeout(&mut self, now_us: u64) {
        for (room, left) in self.presence.expire_due(now_us) {
            self.presence_changed(&room, Vec::new(), left);
        }
        while let Some((at, room)) = self.expiries.first().cloned() {
            if at > now_us {
                break;
            }
            self.expiries.remove(&(at, room.clone()));
            if let Some(state) = self.rooms.get_mut(&room) {
                state.expiry_at_us = None;
                state.log.expire(self.bounds, now_us);
            }
            self.sync(&room);
            self.settle(&room);
        }
    }

    /// Tells the room's followers one change of its presence entries, with
    /// the count after it, when presence changes are asked for the room.
    fn presence_changed(
        &mut self,
        room: &RoomName,
        joined: Vec<PresenceEntry>,
        left: Vec<PresenceEntry>,
    ) {
        let asked = self.presence_changes.as_ref();
        if !asked.is_some_and(|rooms| rooms.presence_diffs(room)) {
            return;
        }
        let Some(state) = self.rooms.get(room) else {
            return; // nobody follows it
        };
        let connections = self.presence.room_len(room);
        for &follower in &state.followers {
            let change = EngineEvent::PresenceChanged {
                room: room.clone(),
                joined: joined.clone(),
                left: left.clone(),
                connections,
            };
            self.events.push_back((follower, change));
        }
    }

    /// Loses every room's data, as a shared engine restarted empty would:
    /// every room starts a new epoch with no history. Which nodes follow a
    /// room survives (a real node resubscribes when its pub/sub connection
    /// comes back); rooms nobody follows are gone. A fault for tests and
    /// the simulator (`testing`).
    #[cfg(any(test, feature = "testing"))]
    pub fn lose_everything(&mut self) {
        self.expiries.clear();
        self.oldest.clear();
        self.history_bytes = 0;
        let followed: Vec<(RoomName, BTreeSet<NodeId>)> = std::mem::take(&mut self.rooms)
            .into_iter()
            .filter(|(_, room)| !room.followers.is_empty())
            .map(|(name, room)| (name, room.followers))
            .collect();
        for (name, followers) in followed {
            self.room(&name).followers = followers;
        }
    }

    /// The rollback check (see the [engine contract](super)): a kept room
    /// behind `known` in its epoch, or written in an earlier lifetime and
    /// not vouched for by `known`, moves to a new epoch with no history
    /// (its followers stay).
    fn check_rollback(&mut self, room: &RoomName, known: Option<&Position>) {
        let life = self.life;
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        let top = state.log.last_seq();
        let same_epoch = known.filter(|k| k.epoch == state.epoch);
        let ahead = same_epoch.is_some_and(|k| k.seq > top);
        let vouched = same_epoch.is_some_and(|k| k.seq == top);
        if !self.rollback_check || (!ahead && (state.life == life || vouched)) {
            state.life = life;
            return;
        }
        self.epochs_created += 1;
        state.epoch = format!("{}-{}", self.epoch_prefix, self.epochs_created).into();
        state.log = RoomLog::new();
        state.life = life;
        self.sync(room);
    }

    /// A shared engine restarted or failed over (its store may hold older
    /// data): every kept room must be vouched for again (the rollback
    /// check).
    pub fn restart(&mut self) {
        self.life += 1;
    }

    /// Each kept room's epoch and top: a point to [`roll_back`](Self::roll_back) to.
    pub fn tops(&self) -> Vec<(RoomName, Epoch, u64)> {
        let rooms = self.rooms.iter();
        rooms
            .map(|(name, room)| (name.clone(), room.epoch.clone(), room.log.last_seq()))
            .collect()
    }

    /// Restores the streams of an earlier point ([`tops`](Self::tops)), as
    /// a store restarted from an older snapshot would, **keeping each
    /// epoch**: a room still in the epoch it had then loses the messages
    /// after its top of then; a room not kept then, or in another epoch
    /// now, loses everything and starts a new epoch when used. Then
    /// [`restart`](Self::restart)s. Which nodes follow a room survives.
    pub fn roll_back(&mut self, point: &[(RoomName, Epoch, u64)]) {
        let names: Vec<RoomName> = self.rooms.keys().cloned().collect();
        for name in names {
            let then = point.iter().find(|(room, _, _)| *room == name);
            let Some(state) = self.rooms.get_mut(&name) else {
                continue;
            };
            match then {
                Some((_, epoch, top)) if *epoch == state.epoch => state.log.truncate(*top),
                _ => {
                    self.epochs_created += 1;
                    state.epoch = format!("{}-{}", self.epoch_prefix, self.epochs_created).into();
                    state.log = RoomLog::new();
                }
            }
            self.sync(&name);
            self.settle(&name);
        }
        self.restart();
    }

    /// Turns the rollback check off: a planted defect, to show that the
    /// simulator's oracle catches the seqs reused without it.
    #[cfg(any(test, feature = "testing"))]
    pub fn skip_rollback_check(&mut self) {
        self.rollback_check = false;
    }

    /// The room, created under a fresh epoch when absent; a kept room stops
    /// its expiry timer (it is being used).
    fn room(&mut self, room: &RoomName) -> &mut EngineRoom {
        if !self.rooms.contains_key(room) {
            self.epochs_created += 1;
            let epoch: Epoch = format!("{}-{}", self.epoch_prefix, self.epochs_created).into();
            self.rooms.insert(
                room.clone(),
                EngineRoom {
                    log: RoomLog::new(),
                    epoch,
                    followers: BTreeSet::new(),
                    expiry_at_us: None,
                    oldest_us: None,
                    counted_bytes: 0,
                    life: self.life,
                },
            );
        }
        let state = self.rooms.get_mut(room).expect("inserted above");
        if let Some(at) = state.expiry_at_us.take() {
            self.expiries.remove(&(at, room.clone()));
        }
        state
    }

    /// A room nobody follows is dropped, or kept until its history ages
    /// out (with a timer to look again then).
    fn settle(&mut self, room: &RoomName) {
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        if !state.followers.is_empty() {
            return;
        }
        if let Some(at) = state.expiry_at_us.take() {
            self.expiries.remove(&(at, room.clone()));
        }
        match state.log.history_expires_at_us(self.bounds) {
            Some(at) if state.log.retain_when_empty() => {
                state.expiry_at_us = Some(at);
                self.expiries.insert((at, room.clone()));
            }
            _ => self.drop_room(room),
        }
    }

    /// Forgets a room and everything indexed about it.
    fn drop_room(&mut self, name: &RoomName) {
        let Some(state) = self.rooms.remove(name) else {
            return;
        };
        self.history_bytes -= state.counted_bytes;
        if let Some(at) = state.oldest_us {
            self.oldest.remove(&(at, name.clone()));
        }
        if let Some(at) = state.expiry_at_us {
            self.expiries.remove(&(at, name.clone()));
        }
    }

    /// Brings the byte total and the oldest-entry index up to date with a
    /// room's log (after anything that changed it).
    fn sync(&mut self, name: &RoomName) {
        let Some(state) = self.rooms.get_mut(name) else {
            return;
        };
        let bytes = state.log.bytes();
        self.history_bytes = self.history_bytes - state.counted_bytes + bytes;
        state.counted_bytes = bytes;
        let oldest = state.log.oldest_published_us();
        if oldest != state.oldest_us {
            if let Some(at) = state.oldest_us {
                self.oldest.remove(&(at, name.clone()));
            }
            if let Some(at) = oldest {
                self.oldest.insert((at, name.clone()));
            }
            state.oldest_us = oldest;
        }
    }

    /// Evicts the oldest kept entries, across rooms, until the history
    /// fits `bytes_max`.
    fn enforce_bytes(&mut self) {
        while self.history_bytes > self.bounds.bytes_max {
            let Some((_, name)) = self.oldest.first().cloned() else {
                debug_assert!(false, "history bytes counted but no room indexed");
                return;
            };
            if let Some(state) = self.rooms.get_mut(&name) {
                state.log.evict_oldest();
            }
            self.sync(&name);
            self.settle(&name);
        }
    }

    /// Whether `room` exists or may be created under `rooms_max`, after
    /// dropping the room kept only for history that expires soonest if
    /// needed.
    fn make_room_for(&mut self, room: &RoomName) -> bool {
        if self.rooms.contains_key(room) || self.rooms.len() < self.bounds.rooms_max {
            return true;
        }
        match self.expiries.first().cloned() {
            Some((_, unfollowed)) => {
                self.drop_room(&unfollowed);
                self.rooms.len() < self.bounds.rooms_max
            }
            None => false,
        }
    }

    /// The failure answered when `room` cannot be created.
    fn rooms_full(&self, room: &RoomName) -> EngineError {
        EngineError::Unavailable(format!(
            "the server keeps at most {} rooms (rooms_max), all in use; room {room} cannot be created now",
            self.bounds.rooms_max
        ))
    }
}

/// The read answer from one room's log.
fn read(state: &EngineRoom, after: Option<&Position>, limit: usize) -> ReadResult {
    let frames = match after {
        Some(after) if after.epoch == state.epoch => state.log.frames_after(after.seq, limit),
        // Another epoch: this one's messages from its start (see the contract).
        Some(_) => state.log.frames_after(0, limit),
        None => Vec::new(),
    };
    ReadResult {
        epoch: state.epoch.clone(),
        top: state.log.last_seq(),
        frames,
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
