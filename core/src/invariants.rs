//! [`Core::check_invariants`]: the structural truths of the state machine,
//! checked after every step by the property tests, the simulator and the
//! fuzzers. Delivery properties (gapless `seq`, no message to non-members)
//! are checked on the outputs by the reference model and the sim's oracle.

use crate::machine::Core;

impl Core {
    /// Checks every structural invariant; `Err` names the first one broken.
    pub fn check_invariants(&self) -> Result<(), String> {
        let limits = &self.config.limits;
        let mut live = 0usize;
        for (slot, connection) in self.conns.iter().enumerate() {
            let Some(connection) = connection else {
                continue;
            };
            live += 1;
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
        let bounds = self.history_bounds();
        for (name, room) in &self.rooms {
            room.log
                .check(bounds)
                .map_err(|e| format!("{name:?}: {e}"))?;
            if room.members.is_empty() && !room.log.retain_when_empty() {
                return Err(format!(
                    "{name:?} has no members and no history but is kept"
                ));
            }
            let timer = room.expiry_at_us.map(|at| (at, name.clone()));
            let scheduled = timer.as_ref().is_some_and(|t| self.room_timers.contains(t));
            if room.members.is_empty() != scheduled {
                return Err(format!(
                    "{name:?}: an expiry timer must run exactly while it has no members"
                ));
            }
            for (id, &slot) in &room.members {
                let connection = self.conns.get(slot as usize).and_then(|c| c.as_ref());
                if !connection.is_some_and(|c| c.id == *id && c.rooms.contains(name)) {
                    return Err(format!("{name:?} lists {id:?}, which is not a live member"));
                }
            }
        }
        if self.room_timers.len() != self.rooms.values().filter(|r| r.members.is_empty()).count() {
            return Err(format!(
                "{} room timers for the memberless rooms",
                self.room_timers.len()
            ));
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
