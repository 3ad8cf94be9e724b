//! [`PresenceBook`]: the in-memory engine's presence: every room's member
//! entries, the node each belongs to, and when each node's entries expire
//! if it stops refreshing them. Every change reports what it changed, so
//! the engine can tell the nodes that follow a room (`PresenceChanged`).

use std::collections::{BTreeMap, BTreeSet};

use super::memory::NodeId;
use super::{EngineBroken, PresenceEntry};
use crate::names::{ConnectionId, RoomName};

/// Presence entries by room, with per-node expiry. See the module docs.
#[derive(Debug)]
pub(crate) struct PresenceBook {
    /// Per room, its members' entries and the node each belongs to.
    rooms: BTreeMap<RoomName, BTreeMap<ConnectionId, (NodeId, Option<String>)>>,
    /// How long a node's entries live without a refresh, in µs.
    ttl_us: u64,
    /// Per node with entries: when they expire (and the same, as timers),
    /// and how many it has.
    expiry: BTreeMap<NodeId, u64>,
    timers: BTreeSet<(u64, NodeId)>,
    counts: BTreeMap<NodeId, usize>,
}

impl PresenceBook {
    /// An empty book whose entries live `ttl_us` past their node's last word.
    pub(crate) fn new(ttl_us: u64) -> PresenceBook {
        PresenceBook {
            rooms: BTreeMap::new(),
            ttl_us: ttl_us.max(1),
            expiry: BTreeMap::new(),
            timers: BTreeSet::new(),
            counts: BTreeMap::new(),
        }
    }

    /// Entries kept, over all rooms.
    pub(crate) fn count(&self) -> usize {
        self.rooms.values().map(BTreeMap::len).sum()
    }

    /// `node` was heard from: its entries, if it has any, stay.
    pub(crate) fn heard(&mut self, node: NodeId, now_us: u64) {
        if self.expiry.contains_key(&node) {
            self.refresh(node, now_us);
        }
    }

    /// Keeps `node`'s entries alive for another time-to-live.
    pub(crate) fn refresh(&mut self, node: NodeId, now_us: u64) {
        let at = now_us.saturating_add(self.ttl_us);
        if let Some(old) = self.expiry.insert(node, at) {
            self.timers.remove(&(old, node));
        }
        self.timers.insert((at, node));
    }

    /// A member of `node` joined `room`. Returns the entry when it is new
    /// to the room (the same entry added again changes nothing).
    pub(crate) fn add(
        &mut self,
        node: NodeId,
        now_us: u64,
        room: RoomName,
        entry: PresenceEntry,
    ) -> Option<PresenceEntry> {
        self.refresh(node, now_us);
        let entries = self.rooms.entry(room).or_default();
        let value = (node, entry.user.clone());
        let old = entries.insert(entry.conn, value);
        let new = old.as_ref().is_none_or(|(_, user)| *user != entry.user);
        if let Some((owner, _)) = old {
            self.entry_gone(owner);
        }
        *self.counts.entry(node).or_default() += 1;
        new.then_some(entry)
    }

    /// A member left `room`. Returns its entry when it had one.
    pub(crate) fn remove(&mut self, room: &RoomName, conn: ConnectionId) -> Option<PresenceEntry> {
        let entries = self.rooms.get_mut(room)?;
        let removed = entries.remove(&conn);
        if entries.is_empty() {
            self.rooms.remove(room);
        }
        let (owner, user) = removed?;
        self.entry_gone(owner);
        Some(PresenceEntry { conn, user })
    }

    /// Drops every entry of `node` (it shut down). Returns, per room in
    /// name order, the entries removed.
    pub(crate) fn clear(&mut self, node: NodeId) -> Vec<(RoomName, Vec<PresenceEntry>)> {
        if self.counts.remove(&node).is_none() {
            return Vec::new();
        }
        if let Some(at) = self.expiry.remove(&node) {
            self.timers.remove(&(at, node));
        }
        self.drop_node(node)
    }

    /// Removes every entry of `node`, per room in name order.
    fn drop_node(&mut self, node: NodeId) -> Vec<(RoomName, Vec<PresenceEntry>)> {
        let mut removed = Vec::new();
        for (room, entries) in self.rooms.iter_mut() {
            let mut left = Vec::new();
            entries.retain(|conn, (owner, user)| {
                let keep = *owner != node;
                if !keep {
                    left.push(PresenceEntry {
                        conn: *conn,
                        user: user.clone(),
                    });
                }
                keep
            });
            if !left.is_empty() {
                removed.push((room.clone(), left));
            }
        }
        self.rooms.retain(|_, entries| !entries.is_empty());
        removed
    }

    /// Entries of `room`.
    pub(crate) fn room_len(&self, room: &RoomName) -> usize {
        self.rooms.get(room).map_or(0, BTreeMap::len)
    }

    /// Every entry of `room`, in connection order.
    pub(crate) fn list(&self, room: &RoomName) -> Vec<PresenceEntry> {
        let Some(entries) = self.rooms.get(room) else {
            return Vec::new();
        };
        entries
            .iter()
            .map(|(conn, (_, user))| PresenceEntry {
                conn: *conn,
                user: user.clone(),
            })
            .collect()
    }

    /// When the next node's entries expire.
    pub(crate) fn next_expiry(&self) -> Option<u64> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Drops the entries of every node silent until `now_us`. Returns, per
    /// node in expiry order and per room in name order, the entries removed.
    pub(crate) fn expire_due(&mut self, now_us: u64) -> Vec<(RoomName, Vec<PresenceEntry>)> {
        let mut removed = Vec::new();
        while let Some(&(at, node)) = self.timers.first() {
            if at > now_us {
                break;
            }
            self.timers.remove(&(at, node));
            self.expiry.remove(&node);
            self.counts.remove(&node);
            removed.extend(self.drop_node(node));
        }
        removed
    }

    /// Counts one entry less for `node`; a node with none left has no
    /// expiry to watch.
    fn entry_gone(&mut self, node: NodeId) {
        let Some(count) = self.counts.get_mut(&node) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.counts.remove(&node);
            if let Some(at) = self.expiry.remove(&node) {
                self.timers.remove(&(at, node));
            }
        }
    }

    /// The book's own invariants.
    pub(crate) fn check(&self) -> Result<(), EngineBroken> {
        for (room, entries) in &self.rooms {
            if entries.is_empty() {
                return Err(EngineBroken(format!(
                    "engine presence of {room:?} kept empty"
                )));
            }
            if let Some((_, (node, _))) = entries
                .iter()
                .find(|(_, (node, _))| !self.expiry.contains_key(node))
            {
                return Err(EngineBroken(format!(
                    "engine presence of {room:?} has an entry of expired node {node}"
                )));
            }
        }
        if self.timers.len() != self.expiry.len() {
            return Err(EngineBroken("one presence timer per node".into()));
        }
        let mut counted: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (node, _) in self.rooms.values().flat_map(BTreeMap::values) {
            *counted.entry(*node).or_default() += 1;
        }
        if counted != self.counts {
            return Err(EngineBroken(
                "engine presence counts per node are off".into(),
            ));
        }
        if self.counts.keys().ne(self.expiry.keys()) {
            return Err(EngineBroken(
                "a node with presence entries must have an expiry, and only then".into(),
            ));
        }
        Ok(())
    }
}
