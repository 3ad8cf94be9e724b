//! `presence_diff` pushes (docs/protocol.md, section 8): one diff per room
//! per input, listing who joined and who left, with the room's count.
//!
//! Two sources, chosen by `CoreConfig::presence_diffs_from_engine`:
//!
//! - **this node's joins and leaves** (off, the default: one process, the
//!   in-memory engine). Each change is recorded as it happens
//!   ([`notify_presence`](Core::notify_presence)) and `connections` is the
//!   room's local member count.
//! - **the engine's presence changes** (on: a shared engine, several
//!   nodes). Every node's joins, leaves, clears and expiries come back as
//!   [`EngineEvent::PresenceChanged`](crate::engine::EngineEvent::PresenceChanged),
//!   this node's own included, and `connections` is the engine's
//!   cluster-wide count. The stream that carries them is at most once: after
//!   a [`StreamReset`](crate::engine::EngineEvent::StreamReset) every member
//!   of a room with diffs gets one "ask again" diff (`truncated` without
//!   counts) once the engine has listed the room.
//!
//! Either way the diff of an input is built once the input is done
//! ([`flush_presence`](Core::flush_presence)), goes to every member but
//! those it lists, and nothing is sent while the node shuts down.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Map, Value};

use crate::engine::{EngineError, EngineRequest, PresenceEntry};
use crate::envelope;
use crate::machine::{Call, Core, PendingDiff};
use crate::names::{ConnectionId, RoomName};
use crate::output::{Output, TextFrame};
use crate::time::Now;

/// A membership change, for presence diffs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Change {
    Joined,
    Left,
}

impl Core {
    /// Records that `conn` joined or left a room with presence diffs; the
    /// other members are told once the input is done
    /// ([`flush_presence`](Self::flush_presence)). Nothing is recorded
    /// while shutting down (everyone is leaving), nor when the diffs come
    /// from the engine (the engine's echo of this change is told instead).
    pub(crate) fn notify_presence(
        &mut self,
        room: &RoomName,
        conn: ConnectionId,
        user: Option<&str>,
        change: Change,
    ) {
        if self.shutting_down
            || self.config.presence_diffs_from_engine
            || !self.config.rooms.presence_diffs(room)
        {
            return;
        }
        self.record_change(room, conn, user.map(str::to_owned), change);
    }

    /// Adds one change to the room's diff of this input, netting a
    /// connection that joins and leaves within it (or leaves and joins
    /// again): that changed nothing the others need to hear.
    fn record_change(
        &mut self,
        room: &RoomName,
        conn: ConnectionId,
        user: Option<String>,
        change: Change,
    ) -> &mut PendingDiff {
        let at = self.outputs.len();
        let diff = self
            .presence
            .entry(room.clone())
            .or_insert_with(|| PendingDiff {
                at,
                joined: BTreeMap::new(),
                left: BTreeMap::new(),
                connections: None,
            });
        let (this, opposite) = match change {
            Change::Joined => (&mut diff.joined, &mut diff.left),
            Change::Left => (&mut diff.left, &mut diff.joined),
        };
        if opposite.remove(&conn).is_none() {
            this.insert(conn, user);
        }
        diff
    }

    /// The engine's change of a room's presence (diffs from the engine
    /// only): told to this node's members once the input is done.
    pub(crate) fn on_presence_changed(
        &mut self,
        room: RoomName,
        joined: Vec<PresenceEntry>,
        left: Vec<PresenceEntry>,
        connections: usize,
    ) {
        if self.shutting_down
            || !self.config.presence_diffs_from_engine
            || !self.config.rooms.presence_diffs(&room)
            || self.member_count(&room) == 0
        {
            return;
        }
        for entry in left {
            self.record_change(&room, entry.conn, entry.user, Change::Left);
        }
        for entry in joined {
            self.record_change(&room, entry.conn, entry.user, Change::Joined);
        }
        if let Some(diff) = self.presence.get_mut(&room) {
            diff.connections = Some(connections);
        }
    }

    /// Tells each room's members what changed during the input: one
    /// `presence_diff` per room, placed where the room's first change
    /// happened (docs/protocol.md, section 8). The connections a diff lists
    /// are not told (no diff about oneself; a member that joined during the
    /// input sees the room as it is now with `presence`). A member whose
    /// queue cannot take the diff is closed with 4008 once this is done.
    pub(crate) fn flush_presence(&mut self) {
        let mut diffs: Vec<(RoomName, PendingDiff)> =
            std::mem::take(&mut self.presence).into_iter().collect();
        // Stable: rooms changed at the same place keep their name order.
        diffs.sort_by_key(|(_, diff)| diff.at);
        let mut inserts: Vec<(usize, VecDeque<Output>)> = Vec::new();
        for (room, diff) in diffs {
            if diff.joined.is_empty() && diff.left.is_empty() {
                continue;
            }
            let Some(state) = self.rooms.get(&room) else {
                continue; // nobody left to tell
            };
            let connections = diff.connections.unwrap_or(state.members.len());
            let list_max = self.config.limits.presence_page_max;
            let Some(frame) = presence_diff(self.now, &room, &diff, connections, list_max, None)
            else {
                continue;
            };
            let mut sends = VecDeque::new();
            for (&member, &slot) in &state.members {
                let listed = diff.joined.contains_key(&member) || diff.left.contains_key(&member);
                let own;
                let frame = match (listed, self.config.presence_diffs_from_engine) {
                    (false, _) => &frame,
                    // This node's own changes: the members that joined
                    // during the input see the room with `presence`.
                    (true, false) => continue,
                    // From the engine, a change can list a member with
                    // others (merged or batched changes, or its entry
                    // expired while it is still here): it hears the rest,
                    // never about itself. Its own join's echo comes after
                    // its join reply, so the rest may be news to it.
                    (true, true) => {
                        let except = Some(member);
                        match presence_diff(self.now, &room, &diff, connections, list_max, except) {
                            Some(frame) => {
                                own = frame;
                                &own
                            }
                            None => continue,
                        }
                    }
                };
                let Some(connection) = self.conns[slot as usize].as_mut() else {
                    continue;
                };
                if !Self::try_send(&mut sends, &self.config.limits, connection, frame) {
                    self.doomed.push(member);
                }
            }
            if !sends.is_empty() {
                inserts.push((diff.at, sends));
            }
        }
        let Some(&(first, _)) = inserts.first() else {
            return;
        };
        // Splice the diffs in at their places (outputs only grew since).
        let first = first.min(self.outputs.len());
        let mut tail = self.outputs.split_off(first).into_iter();
        let mut position = first;
        for (at, sends) in inserts {
            while position < at {
                match tail.next() {
                    Some(output) => self.outputs.push_back(output),
                    None => break,
                }
                position += 1;
            }
            self.outputs.extend(sends);
        }
        self.outputs.extend(tail);
    }

    /// After a stream reset (diffs from the engine): the members of every
    /// room with diffs may have missed changes. Each such room is listed,
    /// and its members are told to ask again once the list answers.
    pub(crate) fn presence_stream_reset(&mut self) {
        if !self.config.presence_diffs_from_engine || self.shutting_down {
            return;
        }
        let rooms: Vec<RoomName> = self
            .rooms
            .iter()
            .filter(|(room, state)| {
                !state.members.is_empty() && self.config.rooms.presence_diffs(room)
            })
            .map(|(room, _)| room.clone())
            .collect();
        for room in rooms {
            if let Some(state) = self.rooms.get_mut(&room) {
                state.presence_stale = true;
            }
            self.resync_presence(&room);
        }
    }

    /// Lists a room whose members may have missed presence changes, unless
    /// a list is already in flight. When the engine has no room for the
    /// call, the room's next stream check tries again.
    pub(crate) fn resync_presence(&mut self, room: &RoomName) {
        let has_room = self.engine_has_room(1);
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        if !state.presence_stale || state.presence_resyncing || !has_room {
            return;
        }
        state.presence_resyncing = true;
        let call = self.new_call(Call::PresenceResync { room: room.clone() });
        self.engine_out.push_back(EngineRequest::PresenceList {
            call,
            room: room.clone(),
        });
    }

    /// The list that follows a stream reset: every member of the room is
    /// told to ask again, with the room's count. A failed list leaves the
    /// room stale: its next stream check lists it again.
    pub(crate) fn on_presence_resync(
        &mut self,
        now: Now,
        room: RoomName,
        result: Result<Vec<PresenceEntry>, EngineError>,
    ) {
        let Some(state) = self.rooms.get_mut(&room) else {
            return; // forgotten meanwhile: nobody to tell
        };
        state.presence_resyncing = false;
        let Ok(entries) = result else {
            return;
        };
        state.presence_stale = false;
        if self.shutting_down {
            return;
        }
        let frame = ask_again(now, &room, entries.len());
        let Some(state) = self.rooms.get(&room) else {
            return;
        };
        for (&member, &slot) in &state.members {
            let Some(connection) = self.conns[slot as usize].as_mut() else {
                continue;
            };
            if !Self::try_send(&mut self.outputs, &self.config.limits, connection, &frame) {
                self.doomed.push(member);
            }
        }
    }
}

/// The `presence_diff` frame for one room's changes of one input: a lone
/// change as an object under `joined` or `left` (the shape diffs always
/// had); several as two lists, in connection id order; more than
/// `list_max` as counts with `"truncated": true` (ask `presence`).
/// `except` (a member the change lists, with diffs from the engine) is
/// left out; `None` when nothing else is left to tell.
fn presence_diff(
    now: Now,
    room: &RoomName,
    diff: &PendingDiff,
    connections: usize,
    list_max: usize,
    except: Option<ConnectionId>,
) -> Option<TextFrame> {
    let who = |(conn, user): (&ConnectionId, &Option<String>)| serde_json::json!({"connection_id": conn.to_string(), "user_id": user});
    let kept = |set: &BTreeMap<ConnectionId, Option<String>>| {
        set.len() - except.is_some_and(|conn| set.contains_key(&conn)) as usize
    };
    let mut data = Map::new();
    data.insert("room".into(), room.as_str().into());
    data.insert("connections".into(), connections.into());
    let changes = kept(&diff.joined) + kept(&diff.left);
    if changes == 0 {
        return None;
    }
    for (key, set) in [("joined", &diff.joined), ("left", &diff.left)] {
        let mut listed = set.iter().filter(|(conn, _)| Some(**conn) != except);
        if changes == 1 {
            if let Some(change) = listed.next() {
                data.insert(key.into(), who(change));
            }
        } else if changes <= list_max {
            data.insert(key.into(), Value::Array(listed.map(who).collect()));
        } else {
            data.insert(format!("{key}_count"), kept(set).into());
        }
    }
    if changes > 1 && changes > list_max {
        data.insert("truncated".into(), true.into());
    }
    Some(envelope::envelope(
        "presence_diff",
        now.unix_ms,
        None,
        &data,
        None,
    ))
}

/// The diff that says "changes may have been missed; ask `presence`":
/// `truncated` with the room's count and no lists or counts of changes
/// (they are not known).
fn ask_again(now: Now, room: &RoomName, connections: usize) -> TextFrame {
    let mut data = Map::new();
    data.insert("room".into(), room.as_str().into());
    data.insert("connections".into(), connections.into());
    data.insert("truncated".into(), true.into());
    envelope::envelope("presence_diff", now.unix_ms, None, &data, None)
}
