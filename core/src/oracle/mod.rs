//! The delivery oracle: checks, from the clients' side, that roomcast keeps
//! its promises. One checker shared by the simulator's two tiers and the
//! fuzzers (the structural checker is [`Core::check_invariants`](crate::Core::check_invariants)).
//!
//! Promises checked:
//! - a member receives its rooms' broadcasts exactly once, in `seq` order,
//!   with no gap between its confirmed join and its leave or disconnect;
//! - no broadcast arrives for a room the client is not in;
//! - one message per `(room, epoch, seq)`: every member that receives it,
//!   and the publisher whose receipt names it
//!   ([`Oracle::published_message`]), sees the same `data` (a store that
//!   rolled back and numbered new messages with seqs already given is a
//!   *silent reuse*, even when every member's seqs look gapless);
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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

mod observed;
mod presence;
mod received;
pub use observed::{Observed, ObservedData};

/// Identifies one client connection in the oracle (the caller's numbering).
pub type ClientKey = u64;

/// The key violations found in a publisher's receipt are reported under.
pub const PUBLISHER: ClientKey = u64::MAX;

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
    /// Room → the count of the last `presence_diff` heard while a member.
    presence_counts: BTreeMap<String, u64>,
    /// Room → the bounds of its member count at the join (with
    /// [`Oracle::expect_presence_counts`]; see `presence.rs`).
    joined_counts: BTreeMap<String, (u64, u64)>,
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
    /// (room, epoch, seq) → the message's `data` (canonical JSON text),
    /// as first seen by a member or a publisher.
    messages: BTreeMap<(String, String, u64), String>,
    /// Whether the quiet state requires presence counts that converged.
    presence_counts: bool,
    /// Rooms some member heard a counted `presence_diff` of: the rooms
    /// with diffs (the oracle is not told the prefixes).
    diff_rooms: BTreeSet<String>,
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

    /// Requires, in the quiet state, that every member that heard a
    /// `presence_diff` of a room last heard the room's true count: the open
    /// clients that are members (the last window's diff went out). Use
    /// only when every connection of the room is a client of this oracle
    /// and the count is this node's (not a cluster's, whose crashed nodes'
    /// entries linger until they expire).
    pub fn expect_presence_counts(&mut self) {
        self.presence_counts = true;
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

    /// The publisher was told `seq` in `epoch` for `room`, for a broadcast
    /// whose `data` is `data`: also checks that no member got another
    /// message under that number (a silent reuse).
    pub fn published_message(
        &mut self,
        room: &str,
        epoch: &str,
        seq: u64,
        data: &Value,
    ) -> Result<(), Violation> {
        self.published(room, epoch, seq);
        self.one_message(PUBLISHER, room, epoch, seq, data.to_string())
    }

    /// Records the `data` of `(room, epoch, seq)`, or checks it against
    /// the one recorded.
    fn one_message(
        &mut self,
        client: ClientKey,
        room: &str,
        epoch: &str,
        seq: u64,
        data: String,
    ) -> Result<(), Violation> {
        let key = (room.to_owned(), epoch.to_owned(), seq);
        match self.messages.get(&key) {
            Some(first) if *first != data => Err(violation(
                client,
                "one message per seq",
                format!(
                    "room {room}: {epoch}/{seq} is {data}, but was {first} before (a seq reused)"
                ),
            )),
            Some(_) => Ok(()),
            None => {
                self.messages.insert(key, data);
                Ok(())
            }
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

    /// The client's connection ended: `Some(code)` for a server close frame,
    /// `None` for a transport loss or the client's own close.
    pub fn ended(&mut self, client: ClientKey, code: Option<u16>) -> Result<(), Violation> {
        let view = self.view(client);
        view.ended = Some(code);
        view.rooms.clear();
        view.presence_counts.clear();
        view.joined_counts.clear();
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
        if self.presence_counts {
            self.check_presence_counts()?;
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

fn violation(client: ClientKey, invariant: &'static str, detail: String) -> Violation {
    Violation {
        client,
        invariant,
        detail,
    }
}

#[cfg(test)]
mod tests;
