//! The presence part of [`Core`]: the membership changes of the current
//! input per room, each room's throttle window (the changes told when it
//! ends) with its timer, and when to tell the engine this node is alive.
//! It keeps windows and their timers in step; what a diff says and who
//! hears it is [`presence_diffs`](crate::presence_diffs)'.

use std::collections::{BTreeMap, BTreeSet};

#[cfg(any(test, feature = "testing"))]
use crate::invariants::Broken;
#[cfg(doc)]
use crate::machine::Core;
use crate::names::{ConnectionId, RoomName};

/// The presence changes of one room during the current input, told to its
/// members as one `presence_diff` once the input is done
/// ([`Core::flush_presence`]).
#[derive(Debug)]
pub(crate) struct PendingDiff {
    /// Where in the core's outputs the room's first change of this input
    /// happened: the diff is placed there, so a lone change goes out exactly
    /// where it always did.
    pub(crate) at: usize,
    /// Connections that joined (with their user id), net of those that
    /// also left during the input.
    pub(crate) joined: BTreeMap<ConnectionId, Option<String>>,
    /// Connections that left, net of those that also joined again.
    pub(crate) left: BTreeMap<ConnectionId, Option<String>>,
    /// The room's count after the changes, when the engine told it
    /// (cluster-wide); `None`: this node's member count.
    pub(crate) connections: Option<usize>,
}

/// A room's presence throttle: a diff went out and the next may not
/// before `until_us`; the changes meanwhile wait here, merged.
#[derive(Debug)]
pub(crate) struct PresenceWindow {
    pub(crate) until_us: u64,
    pub(crate) pending: Option<PendingDiff>,
}

impl PendingDiff {
    /// Adds a later diff of the same room, netting a connection that joined
    /// in one and left in the other (or the reverse); the later count wins.
    pub(crate) fn merge(&mut self, later: PendingDiff) {
        for (conn, user) in later.left {
            if self.joined.remove(&conn).is_none() {
                self.left.insert(conn, user);
            }
        }
        for (conn, user) in later.joined {
            if self.left.remove(&conn).is_none() {
                self.joined.insert(conn, user);
            }
        }
        if later.connections.is_some() {
            self.connections = later.connections;
        }
    }
}

/// Presence state of one core.
#[derive(Debug, Default)]
pub(crate) struct Presence {
    /// Changes of the current input, per room, told once it is done (one
    /// diff per room per input, not one per change).
    changes: BTreeMap<RoomName, PendingDiff>,
    /// Rooms whose last diff went out less than `presence_diff_interval_ms`
    /// ago, with the changes told when their window ends.
    windows: BTreeMap<RoomName, PresenceWindow>,
    /// When each window ends (one entry per window).
    timers: BTreeSet<(u64, RoomName)>,
    /// When to tell the engine this node is alive (while it has members).
    refresh_at_us: Option<u64>,
}

impl Presence {
    /// The room's changes of this input, started with `new` when none.
    pub(crate) fn change(
        &mut self,
        room: &RoomName,
        new: impl FnOnce() -> PendingDiff,
    ) -> &mut PendingDiff {
        self.changes.entry(room.clone()).or_insert_with(new)
    }

    /// The room's changes of this input, if any.
    pub(crate) fn change_of(&mut self, room: &RoomName) -> Option<&mut PendingDiff> {
        self.changes.get_mut(room)
    }

    pub(crate) fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    /// This input's changes, in room name order; none are left.
    pub(crate) fn take_changes(&mut self) -> Vec<(RoomName, PendingDiff)> {
        std::mem::take(&mut self.changes).into_iter().collect()
    }

    /// Takes the room's window out (its timer stays until
    /// [`put_window`](Self::put_window) or
    /// [`drop_window_timer`](Self::drop_window_timer)).
    pub(crate) fn take_window(&mut self, room: &RoomName) -> Option<PresenceWindow> {
        self.windows.remove(room)
    }

    /// Puts a window taken out back.
    pub(crate) fn put_window(&mut self, room: RoomName, window: PresenceWindow) {
        self.windows.insert(room, window);
    }

    /// Drops the timer of a window taken out for good.
    pub(crate) fn drop_window_timer(&mut self, until_us: u64, room: &RoomName) {
        self.timers.remove(&(until_us, room.clone()));
    }

    /// Opens the room's window until `until_us`, with no changes yet.
    pub(crate) fn open_window(&mut self, room: RoomName, until_us: u64) {
        self.timers.insert((until_us, room.clone()));
        self.windows.insert(
            room,
            PresenceWindow {
                until_us,
                pending: None,
            },
        );
    }

    /// The first window that ended by `now_us`, taken out with its timer
    /// (`None` as the window: a timer without its window, impossible).
    pub(crate) fn pop_due_window(
        &mut self,
        now_us: u64,
    ) -> Option<(RoomName, Option<PresenceWindow>)> {
        let (at, room) = self.timers.first()?.clone();
        if at > now_us {
            return None;
        }
        self.timers.remove(&(at, room.clone()));
        let window = self.windows.remove(&room);
        Some((room, window))
    }

    /// Forgets every window (shutting down: no more diffs).
    pub(crate) fn close_windows(&mut self) {
        self.windows.clear();
        self.timers.clear();
    }

    /// Whether some room's window is open.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn windows_open(&self) -> bool {
        !self.windows.is_empty()
    }

    /// When the first window ends.
    pub(crate) fn next_window_end(&self) -> Option<u64> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// When the engine is next told this node is alive.
    pub(crate) fn refresh_at(&self) -> Option<u64> {
        self.refresh_at_us
    }

    pub(crate) fn set_refresh_at(&mut self, at: Option<u64>) {
        self.refresh_at_us = at;
    }

    /// The part's invariants: windows and timers in step, and no change
    /// left untold once an input is done.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn check(&self) -> Result<(), Broken> {
        for (at, room) in &self.timers {
            if self.windows.get(room).map(|w| w.until_us) != Some(*at) {
                return Err(format!("{room:?}: a presence timer without its window").into());
            }
        }
        if self.windows.len() != self.timers.len() {
            return Err("a presence window without its timer".into());
        }
        if let Some(room) = self.changes.keys().next() {
            return Err(
                format!("presence changes of {room:?} were not told when the input ended").into(),
            );
        }
        Ok(())
    }
}
