//! The delivery oracle: checks, from the clients' side, that roomcast keeps
//! its promises. One checker shared by the simulator's two tiers and the
//! fuzzers (the structural checker is [`Core::check_invariants`](crate::Core::check_invariants)).
//!
//! Promises checked:
//! - a member receives its rooms' broadcasts exactly once, in `seq` order,
//!   with no gap between its confirmed join and its leave or disconnect;
//! - no broadcast arrives for a room the client is not in;
//! - every request gets exactly one reply carrying its `id`;
//! - once the workload is quiet, every open member has caught up with the
//!   last broadcast of each of its rooms (and, where the caller knows a
//!   room's final position, [`Oracle::settled`], is in that room's final
//!   epoch), and the server counts exactly the open clients; optionally
//!   ([`Oracle::expect_newest_epochs`]), no member is left in an epoch
//!   older than the newest one its room was published in.
//!
//! A server close with an explaining code (4008, 1008, 1009, 4001, 4002,
//! 1001) ends the client's obligations: whatever it missed after that is
//! explained, and so does a `ROOM_GAP` warning for one room (the client
//! continues from the position it names, never backwards). A silent gap or
//! a duplicate is always a violation.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

/// Identifies one client connection in the oracle (the caller's numbering).
pub type ClientKey = u64;

/// Close codes that explain why a client stopped receiving.
pub const EXPLAINING_CLOSE_CODES: [u16; 6] = [1001, 1008, 1009, 4001, 4002, 4008];

/// A broken promise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The client that observed it.
    pub client: ClientKey,
    /// Which promise (a short stable name).
    pub invariant: &'static str,
    /// What exactly was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client {}: {}: {}",
            self.client, self.invariant, self.detail
        )
    }
}

/// What a client asked for (the oracle needs to know joins and leaves).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// `join` of this room.
    Join(String),
    /// `join` of this room with `since: {epoch, seq}` (recovery).
    Recover(String, String, u64),
    /// `leave` of this room.
    Leave(String),
    /// Anything else (ping, presence, garbage with an id...).
    Other,
}

/// The fields of a server message the oracle reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Observed {
    /// Message type.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Broadcast room.
    #[serde(default)]
    pub room: Option<String>,
    /// Broadcast sequence number.
    #[serde(default)]
    pub seq: Option<u64>,
    /// Echoed request id.
    #[serde(default)]
    pub id: Option<Value>,
    /// Set on a progress event that replaced earlier ones (conflation).
    #[serde(default)]
    pub conflated: Option<bool>,
    /// Reply details.
    #[serde(default)]
    pub data: ObservedData,
}

/// The `data` fields of replies the oracle reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ObservedData {
    /// Join/leave reply room.
    #[serde(default)]
    pub room: Option<Value>,
    /// Join reply seq.
    #[serde(default)]
    pub seq: Option<Value>,
    /// Join reply epoch.
    #[serde(default)]
    pub epoch: Option<Value>,
    /// Error code.
    #[serde(default)]
    pub code: Option<Value>,
    /// Join-with-since outcome.
    #[serde(default)]
    pub recovered: Option<Value>,
}

impl Observed {
    /// Parses a server frame; `None` when it is not a JSON object.
    pub fn parse(text: &str) -> Option<Observed> {
        serde_json::from_str(text).ok()
    }
}

#[derive(Clone, Debug)]
struct Membership {
    epoch: String,
    /// `seq` of the join reply: the client owes nothing before it.
    joined_at: u64,
    /// The next `seq` the client must receive.
    next_seq: u64,
}

#[derive(Clone, Debug, Default)]
struct ClientView {
    rooms: BTreeMap<String, Membership>,
    /// Request id (JSON text) → what it asked.
    pending: BTreeMap<String, Sent>,
    /// Set once the connection ended: the server's close code, or `None` for a transport loss.
    ended: Option<Option<u16>>,
}

/// The oracle. Feed it what clients send and receive; it reports the first
/// violation of each call.
#[derive(Clone, Debug, Default)]
pub struct Oracle {
    clients: BTreeMap<ClientKey, ClientView>,
    /// (room, epoch) → last `seq` the publisher was told.
    published: BTreeMap<(String, String), u64>,
    /// room → (epoch, seq) of its last broadcast once the workload is
    /// quiet, when the caller knows it (see [`Oracle::settled`]).
    settled: BTreeMap<String, (String, u64)>,
    /// When set, a recovery whose gap is at most this many broadcasts in the
    /// same epoch must succeed (use only when history never ages out during the run).
    history_window: Option<u64>,
    /// Room → its epochs in the order the publisher first saw them.
    epochs: BTreeMap<String, Vec<String>>,
    /// Whether the quiet state requires members in their room's newest epoch.
    newest_epochs: bool,
}

impl Oracle {
    /// An oracle with no clients.
    pub fn new() -> Oracle {
        Oracle::default()
    }

    /// Requires recoveries of gaps up to `messages` broadcasts to succeed.
    pub fn expect_recovery_within(&mut self, messages: u64) {
        self.history_window = Some(messages);
    }

    /// Requires, in the quiet state, that no member is left in an epoch
    /// older than the newest one its room was published in (it must have
    /// been told `ROOM_GAP` and moved on). Use only when receipts are fed
    /// in publish order (one publisher that waits for each receipt).
    pub fn expect_newest_epochs(&mut self) {
        self.newest_epochs = true;
    }

    /// Where the client is in each of its rooms: (room, epoch, last seq received).
    pub fn positions(&self, client: ClientKey) -> Vec<(String, String, u64)> {
        self.clients
            .get(&client)
            .map(|view| {
                view.rooms
                    .iter()
                    .map(|(room, m)| (room.clone(), m.epoch.clone(), m.next_seq - 1))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn view(&mut self, client: ClientKey) -> &mut ClientView {
        self.clients.entry(client).or_default()
    }

    /// A client connection opened.
    pub fn opened(&mut self, client: ClientKey) {
        self.clients.insert(client, ClientView::default());
    }

    /// The client sent a request with `id` (JSON text of the id).
    pub fn sent(&mut self, client: ClientKey, id: String, what: Sent) -> Result<(), Violation> {
        let view = self.view(client);
        if view.pending.insert(id.clone(), what).is_some() {
            return Err(violation(
                client,
                "unique request ids",
                format!("id {id} reused while pending (workload bug)"),
            ));
        }
        Ok(())
    }

    /// The publisher was told `seq` in `epoch` for `room`.
    pub fn published(&mut self, room: &str, epoch: &str, seq: u64) {
        let last = self
            .published
            .entry((room.to_owned(), epoch.to_owned()))
            .or_insert(0);
        *last = (*last).max(seq);
        let epochs = self.epochs.entry(room.to_owned()).or_default();
        if !epochs.iter().any(|e| e == epoch) {
            epochs.push(epoch.to_owned());
        }
    }

    /// The room's last broadcast before the quiet check is `seq` in
    /// `epoch`: every open member must then be in that epoch, at that seq.
    ///
    /// For callers that publish a last broadcast to each room after the
    /// faults (real clients against real servers): unlike
    /// [`Oracle::published`] alone, it also catches a member left behind
    /// in an older epoch (a restart it was never told about), and a
    /// member ahead of the publisher (a publish that reported failure but
    /// was applied) cannot make the check fail, as the last broadcast's
    /// receipt names the true top.
    pub fn settled(&mut self, room: &str, epoch: &str, seq: u64) {
        self.published(room, epoch, seq);
        self.settled
            .insert(room.to_owned(), (epoch.to_owned(), seq));
    }

    /// Whether the client has caught up with every room it is in (what
    /// [`Oracle::check_quiescent`] requires of it), so a real client knows
    /// when it may stop reading. `false` for an unknown or ended client.
    pub fn caught_up(&self, client: ClientKey) -> bool {
        self.clients.get(&client).is_some_and(|view| {
            view.ended.is_none()
                && view
                    .rooms
                    .iter()
                    .all(|(room, member)| self.behind(room, member).is_none())
        })
    }

    /// How a member is behind its room's last broadcast, if it is.
    fn behind(&self, room: &str, member: &Membership) -> Option<String> {
        if let Some((epoch, seq)) = self.settled.get(room) {
            if *epoch != member.epoch {
                return Some(format!(
                    "room {room}: still in epoch {} at seq {}, the room's last broadcast is {epoch}/{seq}",
                    member.epoch,
                    member.next_seq - 1
                ));
            }
        }
        let last = self
            .published
            .get(&(room.to_owned(), member.epoch.clone()))
            .copied()
            .unwrap_or(0);
        let expected = last.max(member.joined_at);
        (member.next_seq != expected + 1).then(|| {
            format!(
                "room {room}: last received seq {}, last published {expected}",
                member.next_seq - 1
            )
        })
    }

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
            return Ok(());
        }
        if message.kind == "system_warning" && message.data.code == Some(Value::from("ROOM_GAP")) {
            return room_gap(client, view, message);
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
            }
            _ => {}
        }
        Ok(())
    }

    /// The client's connection ended: `Some(code)` for a server close frame,
    /// `None` for a transport loss or the client's own close.
    pub fn ended(&mut self, client: ClientKey, code: Option<u16>) -> Result<(), Violation> {
        let view = self.view(client);
        view.ended = Some(code);
        view.rooms.clear();
        view.pending.clear();
        match code {
            Some(code) if !EXPLAINING_CLOSE_CODES.contains(&code) && code != 1000 => {
                Err(violation(
                    client,
                    "explained closes",
                    format!("closed with unexpected code {code}"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Clients whose connection is still open.
    pub fn open_clients(&self) -> usize {
        self.clients.values().filter(|v| v.ended.is_none()).count()
    }

    /// Checks the quiet state: every open client got every reply and has
    /// caught up with every room it is in, and the server counts
    /// `server_connections` = the open clients.
    pub fn check_quiescent(&self, server_connections: usize) -> Result<(), Violation> {
        for (&client, view) in &self.clients {
            if view.ended.is_some() {
                continue;
            }
            if let Some((id, asked)) = view.pending.iter().next() {
                return Err(violation(
                    client,
                    "one reply per request",
                    format!("request {id} ({asked:?}) never answered"),
                ));
            }
            for (room, member) in &view.rooms {
                if self.newest_epochs {
                    let epochs = self.epochs.get(room).map(Vec::as_slice).unwrap_or_default();
                    let at = epochs.iter().position(|e| *e == member.epoch);
                    if let (Some(at), Some(newest)) = (at, epochs.last()) {
                        if at + 1 < epochs.len() {
                            return Err(violation(
                                client,
                                "members follow their room to its newest epoch",
                                format!(
                                    "room {room}: member still in epoch {} at seq {}, the room was published in epoch {newest} since",
                                    member.epoch,
                                    member.next_seq - 1
                                ),
                            ));
                        }
                    }
                }
                if let Some(detail) = self.behind(room, member) {
                    return Err(violation(client, "gapless in-order delivery", detail));
                }
            }
        }
        let open = self.open_clients();
        if open != server_connections {
            return Err(violation(
                0,
                "no leaked connections",
                format!("server counts {server_connections} connections, {open} clients are open"),
            ));
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

fn violation(client: ClientKey, invariant: &'static str, detail: String) -> Violation {
    Violation {
        client,
        invariant,
        detail,
    }
}

#[cfg(test)]
mod tests {
    //! The oracle's self-test: every check fails on a trace with its planted defect.
    use super::*;

    fn msg(text: &str) -> Observed {
        Observed::parse(text).unwrap()
    }

    fn broadcast(room: &str, seq: u64) -> Observed {
        msg(&format!(
            r#"{{"type":"queue_status","room":"{room}","seq":{seq},"data":{{}}}}"#
        ))
    }

    /// Client 1 joined room r at seq 0 of epoch e.
    fn joined() -> Oracle {
        let mut oracle = Oracle::new();
        oracle.opened(1);
        oracle.sent(1, "1".into(), Sent::Join("r".into())).unwrap();
        oracle
            .received(
                1,
                &msg(r#"{"type":"system_info","id":1,"data":{"room":"r","seq":0,"epoch":"e"}}"#),
            )
            .unwrap();
        oracle
    }

    fn gap(room: &str, epoch: &str, seq: u64) -> Observed {
        msg(&format!(
            r#"{{"type":"system_warning","data":{{"code":"ROOM_GAP","room":"{room}","epoch":"{epoch}","seq":{seq}}}}}"#
        ))
    }

    #[test]
    fn a_gap_warning_explains_what_it_names_and_no_more() {
        let mut oracle = joined();
        oracle.received(1, &broadcast("r", 1)).unwrap();
        // Told: 2..=4 are gone; 5 follows.
        oracle.received(1, &gap("r", "e", 4)).unwrap();
        oracle.received(1, &broadcast("r", 5)).unwrap();
        // A new epoch restarts the numbering.
        oracle.received(1, &gap("r", "e2", 0)).unwrap();
        oracle.received(1, &broadcast("r", 1)).unwrap();
        oracle.published("r", "e2", 1);
        oracle.check_quiescent(1).unwrap();
        // A warning never explains going backwards, nor a silent gap after it.
        let mut oracle = joined();
        oracle.received(1, &broadcast("r", 1)).unwrap();
        oracle.received(1, &broadcast("r", 2)).unwrap();
        let back = oracle.received(1, &gap("r", "e", 0)).unwrap_err();
        assert_eq!(back.invariant, "gapless in-order delivery");
        let mut oracle = joined();
        oracle.received(1, &gap("r", "e", 3)).unwrap();
        let silent = oracle.received(1, &broadcast("r", 5)).unwrap_err();
        assert_eq!(silent.invariant, "gapless in-order delivery");
        let stray = oracle.received(1, &gap("other", "e", 3)).unwrap_err();
        assert_eq!(stray.invariant, "no message to non-members");
    }

    #[test]
    fn a_clean_trace_passes() {
        let mut oracle = joined();
        for seq in 1..=3 {
            oracle.published("r", "e", seq);
            oracle.received(1, &broadcast("r", seq)).unwrap();
        }
        oracle.check_quiescent(1).unwrap();
        oracle.ended(1, Some(4008)).unwrap();
        oracle.check_quiescent(0).unwrap();
    }

    #[test]
    fn a_settled_room_needs_every_member_in_its_final_epoch() {
        // A restart the member was never told about: nothing of the new
        // epoch arrived, which `published` alone cannot see.
        let mut oracle = joined();
        oracle.received(1, &broadcast("r", 1)).unwrap();
        oracle.published("r", "e", 1);
        oracle.published("r", "e2", 2);
        oracle.check_quiescent(1).unwrap();
        oracle.settled("r", "e2", 2);
        assert!(!oracle.caught_up(1));
        let stale = oracle.check_quiescent(1).unwrap_err();
        assert!(stale.detail.contains("still in epoch e"), "{stale}");
        // Told, and caught up with the final broadcast.
        oracle.received(1, &gap("r", "e2", 1)).unwrap();
        assert!(!oracle.caught_up(1));
        oracle.received(1, &broadcast("r", 2)).unwrap();
        assert!(oracle.caught_up(1));
        oracle.check_quiescent(1).unwrap();
        // The tail is still checked within the final epoch.
        let mut oracle = joined();
        oracle.settled("r", "e", 2);
        oracle.received(1, &broadcast("r", 1)).unwrap();
        assert!(!oracle.caught_up(1));
        assert!(oracle.check_quiescent(1).is_err());
    }

    #[test]
    fn planted_member_left_in_an_old_epoch() {
        let mut oracle = joined();
        oracle.expect_newest_epochs();
        oracle.published("r", "e", 1);
        oracle.received(1, &broadcast("r", 1)).unwrap();
        oracle.check_quiescent(1).unwrap();
        // The room lost its data: e2 was published in, the member never heard.
        oracle.published("r", "e2", 1);
        assert_eq!(
            oracle.check_quiescent(1).unwrap_err().invariant,
            "members follow their room to its newest epoch"
        );
        // Told, it moves on and catches up.
        oracle.received(1, &gap("r", "e2", 0)).unwrap();
        oracle.received(1, &broadcast("r", 1)).unwrap();
        oracle.check_quiescent(1).unwrap();
        // A member in an epoch nobody published in yet (its node read the
        // new epoch first) is not behind.
        oracle.received(1, &gap("r", "e3", 0)).unwrap();
        oracle.check_quiescent(1).unwrap();
    }

    #[test]
    fn planted_missing_message_in_the_middle() {
        let mut oracle = joined();
        oracle.received(1, &broadcast("r", 1)).unwrap();
        let v = oracle.received(1, &broadcast("r", 3)).unwrap_err();
        assert_eq!(v.invariant, "gapless in-order delivery");
    }

    #[test]
    fn planted_missing_message_at_the_tail() {
        let mut oracle = joined();
        oracle.published("r", "e", 1);
        oracle.published("r", "e", 2);
        oracle.received(1, &broadcast("r", 1)).unwrap();
        assert_eq!(
            oracle.check_quiescent(1).unwrap_err().invariant,
            "gapless in-order delivery"
        );
    }

    #[test]
    fn planted_duplicate() {
        let mut oracle = joined();
        oracle.received(1, &broadcast("r", 1)).unwrap();
        let v = oracle.received(1, &broadcast("r", 1)).unwrap_err();
        assert!(v.detail.contains("duplicate"), "{v}");
    }

    #[test]
    fn planted_reordering() {
        let mut oracle = joined();
        oracle.received(1, &broadcast("r", 2)).unwrap_err();
        let mut oracle = joined();
        oracle.received(1, &broadcast("r", 1)).unwrap();
        oracle.received(1, &broadcast("r", 2)).unwrap();
        assert!(oracle.received(1, &broadcast("r", 1)).is_err());
    }

    #[test]
    fn planted_message_to_non_member() {
        let mut oracle = joined();
        let v = oracle.received(1, &broadcast("other", 1)).unwrap_err();
        assert_eq!(v.invariant, "no message to non-members");
        // After a confirmed leave, the room's messages are violations too.
        let mut oracle = joined();
        oracle.sent(1, "2".into(), Sent::Leave("r".into())).unwrap();
        oracle
            .received(
                1,
                &msg(r#"{"type":"system_info","id":2,"data":{"room":"r"}}"#),
            )
            .unwrap();
        assert!(oracle.received(1, &broadcast("r", 1)).is_err());
    }

    #[test]
    fn planted_leaked_connection() {
        let mut oracle = joined();
        oracle.ended(1, None).unwrap();
        let v = oracle.check_quiescent(1).unwrap_err();
        assert_eq!(v.invariant, "no leaked connections");
    }

    #[test]
    fn planted_missing_and_unknown_replies() {
        let mut oracle = joined();
        oracle.sent(1, "\"p\"".into(), Sent::Other).unwrap();
        assert_eq!(
            oracle.check_quiescent(1).unwrap_err().invariant,
            "one reply per request"
        );
        let v = oracle
            .received(1, &msg(r#"{"type":"pong","id":"q","data":{}}"#))
            .unwrap_err();
        assert_eq!(v.invariant, "one reply per request");
    }

    /// Client 2 comes back after seq 1 of epoch e, asking to recover.
    fn recovering(window: Option<u64>) -> Oracle {
        let mut oracle = Oracle::new();
        if let Some(w) = window {
            oracle.expect_recovery_within(w);
        }
        oracle.opened(2);
        oracle
            .sent(2, "1".into(), Sent::Recover("r".into(), "e".into(), 1))
            .unwrap();
        oracle
    }

    #[test]
    fn a_complete_recovery_passes_and_a_replay_gap_fails() {
        let reply = msg(
            r#"{"type":"system_info","id":1,"data":{"room":"r","seq":3,"epoch":"e","recovered":true}}"#,
        );
        let mut oracle = recovering(Some(10));
        oracle.received(2, &reply).unwrap();
        oracle.received(2, &broadcast("r", 2)).unwrap();
        oracle.received(2, &broadcast("r", 3)).unwrap();
        oracle.published("r", "e", 3);
        oracle.check_quiescent(1).unwrap();
        // Planted: the replay skips seq 2.
        let mut oracle = recovering(Some(10));
        oracle.received(2, &reply).unwrap();
        assert_eq!(
            oracle
                .received(2, &broadcast("r", 3))
                .unwrap_err()
                .invariant,
            "gapless in-order delivery"
        );
        // Planted: the replay stops short (seq 3 never comes).
        let mut oracle = recovering(Some(10));
        oracle.received(2, &reply).unwrap();
        oracle.received(2, &broadcast("r", 2)).unwrap();
        oracle.published("r", "e", 3);
        assert!(oracle.check_quiescent(1).is_err());
    }

    #[test]
    fn planted_refused_recovery_inside_the_window() {
        let refused = msg(
            r#"{"type":"system_info","id":1,"data":{"room":"r","seq":3,"epoch":"e","recovered":false}}"#,
        );
        let v = recovering(Some(10)).received(2, &refused).unwrap_err();
        assert_eq!(v.invariant, "recovery within the history window");
        // Outside the window (or without one) a refusal is fine, and delivery goes on from seq 4.
        let mut oracle = recovering(Some(1));
        oracle.received(2, &refused).unwrap();
        oracle.received(2, &broadcast("r", 4)).unwrap();
        // Planted: claiming recovery across epochs.
        let lie = msg(
            r#"{"type":"system_info","id":1,"data":{"room":"r","seq":3,"epoch":"e2","recovered":true}}"#,
        );
        assert_eq!(
            recovering(None).received(2, &lie).unwrap_err().invariant,
            "recovery is honest"
        );
    }

    #[test]
    fn conflated_events_may_jump_forward_only() {
        let mut oracle = joined();
        oracle.received(1, &broadcast("r", 1)).unwrap();
        let jump =
            msg(r#"{"type":"download_progress","room":"r","seq":4,"conflated":true,"data":{}}"#);
        oracle.received(1, &jump).unwrap();
        oracle.received(1, &broadcast("r", 5)).unwrap();
        // Planted: an unflagged jump, and a flagged step backwards.
        assert!(oracle.received(1, &broadcast("r", 7)).is_err());
        let mut oracle = joined();
        oracle.received(1, &broadcast("r", 1)).unwrap();
        let back =
            msg(r#"{"type":"download_progress","room":"r","seq":1,"conflated":true,"data":{}}"#);
        assert!(oracle.received(1, &back).is_err());
    }

    #[test]
    fn planted_unexplained_close_and_late_message() {
        let mut oracle = joined();
        assert_eq!(
            oracle.ended(1, Some(1011)).unwrap_err().invariant,
            "explained closes"
        );
        assert_eq!(
            oracle
                .received(1, &broadcast("r", 1))
                .unwrap_err()
                .invariant,
            "nothing after close"
        );
    }
}
