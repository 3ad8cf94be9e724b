//! The presence-count check ([`Oracle::expect_presence_counts`]): in the
//! quiet state every open member of a room with diffs knows the room's
//! true count.
//!
//! What a member knows: the count of the last `presence_diff` it heard.
//! Before its first it knows nothing, but it is told every change after
//! its join, so a member that heard none must find the room as it was
//! when it joined (changes that cancel out within one diff window are
//! told to nobody). That count is known within bounds only: the server may
//! already count joiners whose replies have not come (their join waits
//! for a history read), so it lies between the members whose joins were
//! answered and those plus the joins still waiting.

use super::{violation, ClientKey, Oracle, Sent, Violation};

impl Oracle {
    /// `client` became a member of `room`: the bounds of the room's
    /// count now (itself included).
    pub(super) fn count_at_join(&mut self, client: ClientKey, room: String) {
        if !self.presence_counts {
            return;
        }
        let open = || self.clients.values().filter(|v| v.ended.is_none());
        let members = open().filter(|v| v.rooms.contains_key(&room)).count() as u64;
        let joining = open()
            .filter(|v| !v.rooms.contains_key(&room))
            .filter(|v| {
                v.pending.values().any(|sent| match sent {
                    Sent::Join(r) | Sent::Recover(r, _, _) => *r == room,
                    _ => false,
                })
            })
            .count() as u64;
        let bounds = (members, members + joining);
        self.view(client).joined_counts.insert(room, bounds);
    }

    /// Every open member of a room with diffs knows its true count (see
    /// the module docs).
    pub(super) fn check_presence_counts(&self) -> Result<(), Violation> {
        let open = || self.clients.iter().filter(|(_, v)| v.ended.is_none());
        let mut members: std::collections::BTreeMap<&str, u64> = Default::default();
        for (_, view) in open() {
            for room in view.rooms.keys() {
                *members.entry(room.as_str()).or_default() += 1;
            }
        }
        for (&client, view) in open() {
            for room in view.rooms.keys() {
                if !self.diff_rooms.contains(room) {
                    continue;
                }
                let actual = members.get(room.as_str()).copied().unwrap_or(0);
                let detail = match (view.presence_counts.get(room), view.joined_counts.get(room)) {
                    (Some(&heard), _) if heard != actual => format!(
                        "room {room}: last presence_diff counted {heard}, the room has {actual}"
                    ),
                    (None, Some(&(low, high))) if !(low..=high).contains(&actual) => format!(
                        "room {room}: no presence_diff heard since the join, when the room had {low}..={high} members; it has {actual}"
                    ),
                    _ => continue,
                };
                return Err(violation(client, "presence counts converge", detail));
            }
        }
        Ok(())
    }
}
