//! [`Core::check_invariants`]: the structural truths of the state machine,
//! checked after every step by the property tests, the simulator and the
//! fuzzers. Delivery properties (gapless `seq`, no message to non-members)
//! are checked on the outputs by the reference model and the sim's oracle.

use std::fmt;

use crate::calls::Call;
use crate::engine::EngineBroken;
use crate::machine::Core;

/// Why [`Core::check_invariants`] (or [`Standalone::check_invariants`](crate::Standalone::check_invariants))
/// failed: the first state found broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Broken {
    /// An impossible state was met while handling an input (reported by
    /// the core as it happened, `machine::impossible`).
    Impossible(&'static str),
    /// A structural invariant of the core does not hold.
    Invariant(String),
    /// The engine's own check failed.
    Engine(EngineBroken),
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Broken::Impossible(what) => write!(f, "an impossible state was met: {what}"),
            Broken::Invariant(what) => f.write_str(what),
            Broken::Engine(broken) => broken.fmt(f),
        }
    }
}

impl std::error::Error for Broken {}

impl From<String> for Broken {
    fn from(what: String) -> Broken {
        Broken::Invariant(what)
    }
}

impl From<&str> for Broken {
    fn from(what: &str) -> Broken {
        Broken::Invariant(what.to_owned())
    }
}

impl Core {
    /// Whether some room's presence throttle window is still open (its
    /// changes, if any, not yet told): a simulation settles until none is.
    pub fn presence_windows_open(&self) -> bool {
        self.presence.windows_open()
    }

    /// Checks every structural invariant; `Err` names the first one broken.
    pub fn check_invariants(&self) -> Result<(), Broken> {
        if let Some(what) = self.broken {
            return Err(Broken::Impossible(what));
        }
        let limits = &self.config.limits;
        self.conns.check()?;
        let mut queued = 0usize;
        for connection in self.conns.iter() {
            queued += connection.queued_bytes;
            let id = connection.id;
            let slot = self.conns.slot(id);
            if connection.rooms.len() > limits.rooms_per_connection_max {
                return Err(format!(
                    "{id:?} is in {} rooms, over the limit",
                    connection.rooms.len()
                )
                .into());
            }
            if connection.queued_bytes > limits.outbound_queue_bytes_max {
                return Err(format!(
                    "{id:?} has {} bytes queued, over the bound",
                    connection.queued_bytes
                )
                .into());
            }
            for room in &connection.rooms {
                let member = self.rooms.get(room).and_then(|r| r.members.get(&id));
                if member.copied() != slot {
                    return Err(format!(
                        "{id:?} believes it is in {room:?} but the room disagrees"
                    )
                    .into());
                }
            }
            if let Some(room) = connection
                .conflated
                .rooms()
                .find(|room| !connection.rooms.contains(*room))
            {
                return Err(format!("{id:?} holds frames for {room:?}, which it is not in").into());
            }
            if connection.waiting.as_ref().is_some_and(|w| {
                w.runs() > limits.engine_deferred_messages_max
                    || w.refusals() > limits.engine_deferred_messages_max
            }) {
                return Err(format!("{id:?} defers more messages than allowed").into());
            }
            if connection.conflated.is_empty() != connection.conflated.flush_at_us().is_none() {
                return Err(format!(
                    "{id:?}: a flush time must be set exactly while frames are held"
                )
                .into());
            }
            if connection
                .conflated
                .flush_at_us()
                .is_some_and(|at| at < connection.timer_at_us)
            {
                return Err(format!("{id:?}: its timer is later than its conflation flush").into());
            }
        }
        if queued != self.outputs.queued_total {
            return Err(format!(
                "connections hold {queued} bytes queued but the node counts {}",
                self.outputs.queued_total
            )
            .into());
        }
        self.presence.check()?;
        self.rooms.check()?;
        for (name, room) in self.rooms.iter() {
            let idle = room.members.is_empty()
                && room.joins.is_empty()
                && room.next_joins.is_empty()
                && room.reading.is_none();
            if idle {
                return Err(format!("{name:?} has no local business but is kept").into());
            }
            if room.reading.is_none() && room.cursor.is_none() {
                return Err(format!("{name:?} has neither a cursor nor a read in flight").into());
            }
            if !room.members.is_empty() && room.cursor.is_none() {
                return Err(format!("{name:?} has members but no cursor").into());
            }
            if room.reading.is_none() && !room.buffered_live.is_empty() {
                return Err(format!("{name:?} holds live messages with no read in flight").into());
            }
            if room.reading.is_none() != room.check_at_us.is_some() {
                return Err(format!(
                    "{name:?}: a stream check must be due exactly while no read is in flight"
                )
                .into());
            }
            if let Some((call, _)) = &room.reading {
                if !matches!(self.engine.get(*call), Some(Call::Read { room }) if room == name) {
                    return Err(
                        format!("{name:?}: its read {call:?} is not a call in flight").into(),
                    );
                }
            }
            let resync_in_flight = || {
                self.engine
                    .calls()
                    .any(|c| matches!(c, Call::PresenceResync { room } if room == name))
            };
            if room.presence_resyncing && !resync_in_flight() {
                return Err(
                    format!("{name:?}: waits for a presence list that is not in flight").into(),
                );
            }
            if let Some(id) = room
                .unechoed
                .iter()
                .find(|id| !room.members.contains_key(id))
            {
                return Err(format!("{name:?} awaits the echo of non-member {id:?}").into());
            }
            for (id, &slot) in &room.members {
                let connection = self.conns.at(slot);
                if !connection.is_some_and(|c| c.id == *id && c.rooms.contains(name)) {
                    return Err(format!("{name:?} lists {id:?}, which is not a live member").into());
                }
            }
        }
        self.engine.check(limits.engine_calls_max)?;
        if self.shutting_down && !self.conns.is_empty() {
            return Err("connections are open after shutdown".into());
        }
        Ok(())
    }
}
