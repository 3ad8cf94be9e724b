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
//! Either way the changes of an input are gathered once the input is done
//! ([`flush_presence`](Core::flush_presence)) and throttled per room: the
//! first change of a quiet room goes out at once, the changes within the
//! next `presence_diff_interval_ms` go out as one diff when that window
//! ends. A diff goes to every member; a member it lists hears the rest,
//! never about itself. Nothing is sent while the node shuts down.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::calls::Call;
use crate::codes::CloseCode;
use crate::engine::{CallId, EngineError, EngineRequest, PresenceEntry};
use crate::envelope;
use crate::machine::Core;
use crate::names::{ConnectionId, RoomName};
use crate::outbound::Outbox;
use crate::output::TextFrame;
use crate::presence::PendingDiff;
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
    /// from the engine (the engine's echo of this change is told instead;
    /// a joiner hears no change until that echo: `Room::unechoed`).
    pub(crate) fn notify_presence(
        &mut self,
        room: &RoomName,
        conn: ConnectionId,
        user: Option<&str>,
        change: Change,
    ) {
        let diffs = self.config.rooms.presence_diffs(room);
        if self.config.presence_diffs_from_engine {
            if let Some(state) = self.rooms.get_mut(room) {
                match change {
                    Change::Joined if diffs && !self.shutting_down => {
                        state.unechoed.insert(conn);
                    }
                    Change::Joined => {}
                    Change::Left => {
                        state.unechoed.remove(&conn);
                    }
                }
            }
            return;
        }
        if self.shutting_down || !diffs {
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
        let diff = self.presence.change(room, || PendingDiff {
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
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        if state.presence_resyncing {
            state.presence_overtaken = true;
        }
        for entry in &joined {
            // A member's own add, echoed: later changes are news to it.
            state.unechoed.remove(&entry.conn);
        }
        for entry in left {
            self.record_change(&room, entry.conn, entry.user, Change::Left);
        }
        for entry in joined {
            self.record_change(&room, entry.conn, entry.user, Change::Joined);
        }
        if let Some(diff) = self.presence.change_of(&room) {
            diff.connections = Some(connections);
        }
    }

    /// Tells each room's members what changed during the input, throttled
    /// per room (docs/protocol.md, section 8): the first change of a quiet
    /// room goes out at once, as one `presence_diff` placed where the
    /// room's first change of the input happened, and opens a window of
    /// `presence_diff_interval_ms`; changes during the window are merged
    /// and told as one diff when it ends
    /// ([`fire_presence_windows`](Self::fire_presence_windows)), which opens
    /// the next. A join storm so costs one diff per member per window, not
    /// one per join. A member whose queue cannot take the diff is closed
    /// with 4008 once this is done.
    ///
    /// A member that joined during this input (core-built diffs: its join
    /// reply was just sent, after the room's first change) gets its copy
    /// after everything of the input instead, so that it never hears of a
    /// room before its join reply (its copy carries others' changes only
    /// when its join ends an overdue window, or joins another change).
    pub(crate) fn flush_presence(&mut self) {
        let mut diffs = self.presence.take_changes();
        // Stable: rooms changed at the same place keep their name order.
        diffs.sort_by_key(|(_, diff)| diff.at);
        let now_us = self.now.monotonic_us;
        let mut inserts: Vec<(usize, Outbox)> = Vec::new();
        let mut after_replies = Outbox::default();
        for (room, diff) in diffs {
            // With diffs from the engine a joiner hears nothing until its
            // add is echoed, in a later input (`Room::unechoed`).
            let joiners: Vec<ConnectionId> = if self.config.presence_diffs_from_engine {
                Vec::new()
            } else {
                diff.joined.keys().copied().collect()
            };
            let diff = match self.presence.take_window(&room) {
                // Inside the room's window: told when it ends.
                Some(mut window) if window.until_us > now_us => {
                    match window.pending.as_mut() {
                        Some(pending) => pending.merge(diff),
                        None => window.pending = Some(diff),
                    }
                    self.presence.put_window(room, window);
                    continue;
                }
                // A window that ended before its timer was handled: its
                // changes go out now, with this input's.
                Some(window) => {
                    self.presence.drop_window_timer(window.until_us, &room);
                    match window.pending {
                        Some(mut pending) => {
                            pending.at = diff.at;
                            pending.merge(diff);
                            pending
                        }
                        None => diff,
                    }
                }
                None => diff,
            };
            if diff.joined.is_empty() && diff.left.is_empty() {
                continue;
            }
            // Only a diff someone was told opens a window (the echo of a
            // lone member's own join leaves the room quiet).
            if let Some((sends, joiners_sends)) = self.diff_sends(&room, &diff, &joiners) {
                inserts.push((diff.at, sends));
                after_replies.append(joiners_sends);
                self.open_presence_window(room);
            }
        }
        self.splice_diffs(inserts);
        self.outputs.append(after_replies);
    }

    /// Puts each room's diffs in at its place in the outputs (which only
    /// grew since), in order.
    fn splice_diffs(&mut self, inserts: Vec<(usize, Outbox)>) {
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
            self.outputs.append(sends);
        }
        self.outputs.extend(tail);
    }

    /// Starts a room's throttle window (none with an interval of 0: every
    /// input's changes then go out as they happen).
    fn open_presence_window(&mut self, room: RoomName) {
        let interval_us = self
            .config
            .rooms
            .presence_diff_interval_ms
            .saturating_mul(1000);
        if interval_us == 0 || self.shutting_down {
            return;
        }
        let until_us = self.now.monotonic_us.saturating_add(interval_us);
        self.presence.open_window(room, until_us);
    }

    /// The windows that ended by `now_us`: each one's merged changes go out
    /// as one diff (at the end of the outputs), which opens the next
    /// window; a window without changes leaves the room quiet.
    pub(crate) fn fire_presence_windows(&mut self, now_us: u64) {
        while let Some((room, window)) = self.presence.pop_due_window(now_us) {
            let Some(window) = window else {
                self.impossible("a presence timer without its window");
                continue;
            };
            let Some(diff) = window.pending else {
                continue;
            };
            if diff.joined.is_empty() && diff.left.is_empty() {
                continue; // the window's changes cancelled out
            }
            if let Some((sends, _)) = self.diff_sends(&room, &diff, &[]) {
                self.outputs.append(sends);
                self.open_presence_window(room);
            }
        }
    }

    /// Forgets every window (shutting down: no more diffs).
    pub(crate) fn close_presence_windows(&mut self) {
        self.presence.close_windows();
    }

    /// The `presence_diff` of `diff` for every member of `room`, in member
    /// order: those of the `joiners` (members that joined during this
    /// input) apart, in the second box; `None` when nobody is left to
    /// tell. A member the diff lists (it joined during the window, or an
    /// engine change lists it) hears the rest, never about itself. Members
    /// whose queue is full are left in the close queue, closed once the
    /// input is done.
    fn diff_sends(
        &mut self,
        room: &RoomName,
        diff: &PendingDiff,
        joiners: &[ConnectionId],
    ) -> Option<(Outbox, Outbox)> {
        let state = self.rooms.get(room)?;
        let connections = diff.connections.unwrap_or(state.members.len());
        let list_max = self.config.limits.presence_page_max;
        let frame = presence_diff(self.now, room, diff, connections, list_max, None)?;
        let mut sends = Outbox::default();
        let mut joiners_sends = Outbox::default();
        for (&member, &slot) in &state.members {
            if state.unechoed.contains(&member) {
                continue; // its own add not echoed yet (`Room::unechoed`)
            }
            let listed = diff.joined.contains_key(&member) || diff.left.contains_key(&member);
            let own;
            let frame = if listed {
                match presence_diff(self.now, room, diff, connections, list_max, Some(member)) {
                    Some(frame) => {
                        own = frame;
                        &own
                    }
                    None => continue,
                }
            } else {
                &frame
            };
            let Some(connection) = self.conns.at_mut(slot) else {
                continue;
            };
            let into = if joiners.contains(&member) {
                &mut joiners_sends
            } else {
                &mut sends
            };
            if !Self::try_send(into, &self.config.limits, connection, frame) {
                self.conns
                    .close_later(member, Some(CloseCode::SlowConsumer));
            }
        }
        (!sends.is_empty() || !joiners_sends.is_empty()).then_some((sends, joiners_sends))
    }

    /// After a stream reset (diffs from the engine): the members of every
    /// room with diffs may have missed changes. Each such room is listed,
    /// and its members are told to ask again once the list answers.
    pub(crate) fn presence_stream_reset(&mut self) {
        if !self.config.presence_diffs_from_engine || self.shutting_down {
            return;
        }
        // The echoes awaited may be lost: the room's list settles them
        // (`on_presence_resync`), not the reset. A member whose add the
        // list does not show yet keeps waiting for its echo, which comes
        // after the list: told the list's count, it would keep a count
        // without itself (its own echo tells it nothing).
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
        let call = self
            .engine
            .call(Call::PresenceResync { room: room.clone() });
        self.engine.push(EngineRequest::PresenceList {
            call,
            room: room.clone(),
        });
    }

    /// A presence list answered: a client's `presence` request, or the
    /// list that follows a stream reset.
    pub(crate) fn on_presence_list(
        &mut self,
        now: Now,
        call: CallId,
        result: Result<Vec<PresenceEntry>, EngineError>,
    ) {
        if let Some(Call::PresenceResync { room }) = self.engine.get(call) {
            let room = room.clone();
            self.engine.take(call);
            self.on_presence_resync(now, room, result);
        } else {
            self.on_presence(now, call, result);
        }
    }

    /// The list that follows a stream reset: every member of the room is
    /// told to ask again, with the room's count. A failed list leaves the
    /// room stale: its next stream check lists it again. A list that a
    /// presence change overtook is asked again at once.
    fn on_presence_resync(
        &mut self,
        now: Now,
        room: RoomName,
        result: Result<Vec<PresenceEntry>, EngineError>,
    ) {
        let Some(state) = self.rooms.get_mut(&room) else {
            return; // forgotten meanwhile: nobody to tell
        };
        state.presence_resyncing = false;
        let overtaken = std::mem::take(&mut state.presence_overtaken);
        let Ok(entries) = result else {
            return;
        };
        if overtaken {
            // Told last, its older count would be the one members keep.
            return self.resync_presence(&room);
        }
        state.presence_stale = false;
        if self.shutting_down {
            return;
        }
        // The members the list shows are echoed (their echo may have been
        // lost in the reset); the others still wait for theirs.
        if !state.unechoed.is_empty() {
            let listed: BTreeSet<ConnectionId> = entries.iter().map(|entry| entry.conn).collect();
            state.unechoed.retain(|conn| !listed.contains(conn));
        }
        let frame = ask_again(now, &room, entries.len());
        let Some(state) = self.rooms.get(&room) else {
            return;
        };
        for (&member, &slot) in &state.members {
            if state.unechoed.contains(&member) {
                continue; // told once its add is echoed
            }
            let Some(connection) = self.conns.at_mut(slot) else {
                continue;
            };
            if !Self::try_send(&mut self.outputs, &self.config.limits, connection, &frame) {
                self.conns
                    .close_later(member, Some(CloseCode::SlowConsumer));
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
