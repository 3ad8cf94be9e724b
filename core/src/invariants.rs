//! [`Core::check_invariants`]: the structural truths of the state machine,
//! checked after every step by the property tests, the simulator and the
//! fuzzers. Delivery properties (gapless `seq`, no message to non-members)
//! are checked on the outputs by the reference model and the sim's oracle.

use crate::machine::{Call, Core};

impl Core {
    /// Whether some room's presence throttle window is still open (its
    /// changes, if any, not yet told): a simulation settles until none is.
    pub fn presence_windows_open(&self) -> bool {
        !self.presence_windows.is_empty()
    }

    /// Checks every structural invariant; `Err` names the first one broken.
    pub fn check_invariants(&self) -> Result<(), String> {
        if let Some(what) = self.broken {
            return Err(format!("an impossible state was met: {what}"));
        }
        let limits = &self.config.limits;
        let mut live = 0usize;
        let mut queued = 0usize;
        for (slot, connection) in self.conns.iter().enumerate() {
            let Some(connection) = connection else {
                continue;
            };
            live += 1;
            queued += connection.queued_bytes;
            let id = connection.id;
            if self.slot_of.get(&id) != Some(&(slot as u32)) {
                return Err(format!("{id:?} in slot {slot} is not indexed there"));
            }
            if connection.rooms.len() > limits.rooms_per_connection_max {
                return Err(format!(
                    "{id:?} is in {} rooms, over the limit",
                    connection.rooms.len()
                ));
            }
            if connection.queued_bytes > limits.outbound_queue_bytes_max {
                return Err(format!(
                    "{id:?} has {} bytes queued, over the bound",
                    connection.queued_bytes
                ));
            }
            for room in &connection.rooms {
                let member = self.rooms.get(room).and_then(|r| r.members.get(&id));
                if member != Some(&(slot as u32)) {
                    return Err(format!(
                        "{id:?} believes it is in {room:?} but the room disagrees"
                    ));
                }
            }
            if let Some(room) = connection
                .held
                .rooms()
                .find(|room| !connection.rooms.contains(*room))
            {
                return Err(format!(
                    "{id:?} holds frames for {room:?}, which it is not in"
                ));
            }
            if connection
                .waiting
                .as_ref()
                .is_some_and(|w| w.len() > limits.engine_deferred_messages_max)
            {
                return Err(format!("{id:?} defers more messages than allowed"));
            }
            if connection.held.is_empty() != connection.held.flush_at_us().is_none() {
                return Err(format!(
                    "{id:?}: a flush time must be set exactly while frames are held"
                ));
            }
            if connection
                .held
                .flush_at_us()
                .is_some_and(|at| at < connection.timer_at_us)
            {
                return Err(format!(
                    "{id:?}: its timer is later than its conflation flush"
                ));
            }
            if !self.timers.contains(&(connection.timer_at_us, id)) {
                return Err(format!("{id:?} has no timer"));
            }
            if let Some(user) = connection.identity.user() {
                if !self
                    .users
                    .get(&user.id)
                    .is_some_and(|set| set.contains(&id))
                {
                    return Err(format!("{id:?} is missing from user {:?}", user.id));
                }
            }
        }
        if queued != self.outputs.queued_total {
            return Err(format!(
                "connections hold {queued} bytes queued but the node counts {}",
                self.outputs.queued_total
            ));
        }
        for (at, room) in &self.presence_timers {
            if self.presence_windows.get(room).map(|w| w.until_us) != Some(*at) {
                return Err(format!("{room:?}: a presence timer without its window"));
            }
        }
        if self.presence_windows.len() != self.presence_timers.len() {
            return Err("a presence window without its timer".into());
        }
        if live != self.slot_of.len() {
            return Err(format!(
                "{live} live connections but {} indexed",
                self.slot_of.len()
            ));
        }
        if live + self.free_slots.len() != self.conns.len() {
            return Err("slab slots leaked".into());
        }
        if self.timers.len() != live {
            return Err(format!(
                "{} timers for {live} connections",
                self.timers.len()
            ));
        }
        for (name, room) in &self.rooms {
            let idle = room.members.is_empty()
                && room.joins.is_empty()
                && room.next_joins.is_empty()
                && room.reading.is_none();
            if idle {
                return Err(format!("{name:?} has no local business but is kept"));
            }
            if room.reading.is_none() && room.cursor.is_none() {
                return Err(format!(
                    "{name:?} has neither a cursor nor a read in flight"
                ));
            }
            if !room.members.is_empty() && room.cursor.is_none() {
                return Err(format!("{name:?} has members but no cursor"));
            }
            if room.reading.is_none() && !room.held_live.is_empty() {
                return Err(format!(
                    "{name:?} holds live messages with no read in flight"
                ));
            }
            let timer = room.check_at_us.map(|at| (at, name.clone()));
            let scheduled = timer.as_ref().is_some_and(|t| self.room_timers.contains(t));
            if room.check_at_us.is_some() != scheduled {
                return Err(format!("{name:?}: its stream check is not scheduled"));
            }
            if room.reading.is_none() != room.check_at_us.is_some() {
                return Err(format!(
                    "{name:?}: a stream check must be due exactly while no read is in flight"
                ));
            }
            if let Some((call, _)) = &room.reading {
                if !matches!(self.calls.get(call), Some(Call::Read { room }) if room == name) {
                    return Err(format!(
                        "{name:?}: its read {call:?} is not a call in flight"
                    ));
                }
            }
            let resync_in_flight = || {
                self.calls
                    .values()
                    .any(|c| matches!(c, Call::PresenceResync { room } if room == name))
            };
            if room.presence_resyncing && !resync_in_flight() {
                return Err(format!(
                    "{name:?}: waits for a presence list that is not in flight"
                ));
            }
            if let Some(id) = room
                .unechoed
                .iter()
                .find(|id| !room.members.contains_key(id))
            {
                return Err(format!("{name:?} awaits the echo of non-member {id:?}"));
            }
            for (id, &slot) in &room.members {
                let connection = self.conns.get(slot as usize).and_then(|c| c.as_ref());
                if !connection.is_some_and(|c| c.id == *id && c.rooms.contains(name)) {
                    return Err(format!("{name:?} lists {id:?}, which is not a live member"));
                }
            }
        }
        if self.room_timers.len()
            != self
                .rooms
                .values()
                .filter(|r| r.check_at_us.is_some())
                .count()
        {
            return Err(format!(
                "{} room timers for the rooms with a stream check",
                self.room_timers.len()
            ));
        }
        if self.calls.len() > limits.engine_calls_max {
            return Err(format!(
                "{} engine calls in flight, over the bound",
                self.calls.len()
            ));
        }
        let appends = self
            .calls
            .values()
            .filter(|c| matches!(c, Call::Append { .. }))
            .count();
        let awaited: usize = self.publishes.values().map(|p| p.outstanding).sum();
        if appends != awaited {
            return Err(format!(
                "{appends} appends in flight, {awaited} awaited by publishes"
            ));
        }
        if let Some(room) = self.presence.keys().next() {
            return Err(format!(
                "presence changes of {room:?} were not told when the input ended"
            ));
        }
        if self.shutting_down && !self.slot_of.is_empty() {
            return Err("connections are open after shutdown".into());
        }
        for (user, conns) in &self.users {
            if conns.is_empty() {
                return Err(format!("user {user:?} kept with no connections"));
            }
            for id in conns {
                let identity = self
                    .slot_of
                    .get(id)
                    .and_then(|&s| self.conns[s as usize].as_ref())
                    .map(|c| &c.identity);
                let owner = identity.and_then(|i| i.user()).map(|u| &u.id);
                if owner != Some(user) {
                    return Err(format!("user {user:?} lists {id:?}, which is not theirs"));
                }
            }
        }
        Ok(())
    }
}
