//! What one message a client received tells the oracle: replies (join,
//! leave, recovery, errors), broadcasts in their order, `ROOM_GAP`
//! warnings, and a publisher's receipts.

use serde_json::Value;

use super::{violation, ClientKey, ClientView, Membership, Observed, Oracle, Sent, Violation};

impl Oracle {
    /// The client received `message`.
    pub fn received(&mut self, client: ClientKey, message: &Observed) -> Result<(), Violation> {
        let view = self.view(client);
        if view.ended.is_some() {
            return Err(violation(
                client,
                "nothing after close",
                format!("{} arrived after the connection ended", message.kind),
            ));
        }
        if let (Some(room), Some(seq)) = (&message.room, message.seq) {
            let Some(member) = view.rooms.get_mut(room) else {
                return Err(violation(
                    client,
                    "no message to non-members",
                    format!("{} seq {seq} of room {room}", message.kind),
                ));
            };
            // A conflated progress event may jump forward, never back.
            let conflated_jump = message.conflated == Some(true) && seq > member.next_seq;
            if seq != member.next_seq && !conflated_jump {
                let what = if seq < member.next_seq {
                    "duplicate or reordered"
                } else {
                    "gap"
                };
                return Err(violation(
                    client,
                    "gapless in-order delivery",
                    format!(
                        "room {room}: expected seq {}, got {seq} ({what})",
                        member.next_seq
                    ),
                ));
            }
            member.next_seq = seq + 1;
            let epoch = member.epoch.clone();
            return match message.payload.clone() {
                Some(data) => self.one_message(client, room, &epoch, seq, data),
                None => Ok(()),
            };
        }
        if message.kind == "system_warning" && message.data.code == Some(Value::from("ROOM_GAP")) {
            return room_gap(client, view, message);
        }
        if message.kind == "presence_diff" {
            let room = message.data.room.as_ref().and_then(Value::as_str);
            let count = message.data.connections.as_ref().and_then(Value::as_u64);
            let Some(room) = room else {
                return Ok(());
            };
            // Only a member hears a room's diffs: never before its join
            // reply (its copy of a diff it joined in follows the reply),
            // never after its leave reply.
            if !view.rooms.contains_key(room) {
                return Err(violation(
                    client,
                    "no presence_diff before the join reply",
                    format!("a presence_diff of room {room}, which it has no join reply for"),
                ));
            }
            if let Some(count) = count {
                view.presence_counts.insert(room.to_owned(), count);
            }
            self.diff_rooms.insert(room.to_owned());
            return Ok(());
        }
        let Some(id) = &message.id else { return Ok(()) };
        let key = id.to_string();
        let Some(asked) = view.pending.remove(&key) else {
            return Err(violation(
                client,
                "one reply per request",
                format!(
                    "reply {} with id {key} matches no pending request",
                    message.kind
                ),
            ));
        };
        let history_window = self.history_window;
        let view = self.clients.entry(client).or_default();
        // A new membership (not a re-join), for its presence count.
        let mut joined_room = None;
        match asked {
            Sent::Recover(room, epoch, since) if message.kind == "system_info" => {
                let recovered = message.data.recovered.as_ref().and_then(Value::as_bool);
                let seq = message.data.seq.as_ref().and_then(Value::as_u64);
                let current = message.data.epoch.as_ref().and_then(Value::as_str);
                let (Some(recovered), Some(seq), Some(current)) = (recovered, seq, current) else {
                    return Err(violation(
                        client,
                        "join reply shape",
                        format!("recovery reply for {room} lacks recovered/seq/epoch"),
                    ));
                };
                if view.rooms.contains_key(&room) {
                    return Ok(()); // a re-join by a member: nothing replayed
                }
                let in_window = history_window
                    .is_some_and(|w| current == epoch && seq >= since && seq - since <= w);
                if !recovered && in_window {
                    return Err(violation(
                        client,
                        "recovery within the history window",
                        format!("room {room}: since {epoch}/{since} with the room at {current}/{seq} was refused"),
                    ));
                }
                if recovered && (current != epoch || since > seq) {
                    return Err(violation(
                        client,
                        "recovery is honest",
                        format!("room {room}: recovered from {epoch}/{since} at {current}/{seq}"),
                    ));
                }
                // Recovered: the replay (since+1 ..= seq) follows the reply, then live messages.
                let next_seq = if recovered { since + 1 } else { seq + 1 };
                joined_room = Some(room.clone());
                view.rooms.insert(
                    room,
                    Membership {
                        epoch: current.to_owned(),
                        joined_at: if recovered { since } else { seq },
                        next_seq,
                    },
                );
            }
            Sent::Join(room) if message.kind == "system_info" => {
                let seq = message.data.seq.as_ref().and_then(Value::as_u64);
                let epoch = message.data.epoch.as_ref().and_then(Value::as_str);
                let (Some(seq), Some(epoch)) = (seq, epoch) else {
                    return Err(violation(
                        client,
                        "join reply shape",
                        format!("join reply for {room} lacks seq/epoch"),
                    ));
                };
                if let Some(member) = view.rooms.get(&room) {
                    // An idempotent re-join: membership continues unchanged.
                    // The reply reports the room's newest seq, which the
                    // client may not have yet when progress events are held
                    // for it (conflation), but never an older one.
                    if member.epoch != epoch || seq + 1 < member.next_seq {
                        return Err(violation(
                            client,
                            "idempotent join",
                            format!(
                                "re-join of {room} reports {epoch}/{seq}, client is at {}/{}",
                                member.epoch,
                                member.next_seq - 1
                            ),
                        ));
                    }
                } else {
                    joined_room = Some(room.clone());
                    view.rooms.insert(
                        room,
                        Membership {
                            epoch: epoch.to_owned(),
                            joined_at: seq,
                            next_seq: seq + 1,
                        },
                    );
                }
            }
            Sent::Leave(room) if message.kind == "system_info" => {
                view.rooms.remove(&room);
                view.presence_counts.remove(&room);
                view.joined_counts.remove(&room);
            }
            _ => {}
        }
        if let Some(room) = joined_room {
            self.count_at_join(client, room);
        }
        Ok(())
    }
}

/// A `ROOM_GAP` warning: the member's messages up to the named position
/// are explained; it continues after it (never going back within an epoch).
fn room_gap(client: ClientKey, view: &mut ClientView, message: &Observed) -> Result<(), Violation> {
    let room = message.data.room.as_ref().and_then(Value::as_str);
    let epoch = message.data.epoch.as_ref().and_then(Value::as_str);
    let seq = message.data.seq.as_ref().and_then(Value::as_u64);
    let (Some(room), Some(epoch), Some(seq)) = (room, epoch, seq) else {
        return Err(violation(
            client,
            "gap warning shape",
            "ROOM_GAP lacks room/epoch/seq".to_owned(),
        ));
    };
    let Some(member) = view.rooms.get_mut(room) else {
        return Err(violation(
            client,
            "no message to non-members",
            format!("ROOM_GAP for room {room}"),
        ));
    };
    if member.epoch == epoch && seq + 1 < member.next_seq {
        return Err(violation(
            client,
            "gapless in-order delivery",
            format!(
                "room {room}: ROOM_GAP to seq {seq} after seq {} was received",
                member.next_seq - 1
            ),
        ));
    }
    member.epoch = epoch.to_owned();
    member.joined_at = seq;
    member.next_seq = seq + 1;
    Ok(())
}
