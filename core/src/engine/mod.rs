//! The engine seam: where a room's order, history and lifetime live.
//!
//! The [`Core`](crate::Core) owns local connections and memberships, access
//! rules, limits, conflation, heartbeats and the delivery guarantee. An
//! *engine* owns, per room, the `epoch`, the last `seq`, the bounded
//! history and the room's lifetime, and per node which rooms it follows.
//! The core never calls the engine: it *asks* with an [`EngineRequest`]
//! (drained with `Core::poll_engine`) and *hears* with an [`EngineEvent`]
//! (fed back as `Input::Engine`). It never waits; answers may come back
//! late, out of order across rooms, or as failures.
//!
//! ## The contract
//!
//! - **append**(room, message, known) → `(epoch, seq, frame)` or a
//!   failure. The engine numbers the message (gapless per epoch, starting
//!   at 1) and builds its frame bytes once: `head + seq + tail`
//!   ([`Unnumbered`]). A room that does not exist yet is created with a
//!   fresh epoch.
//! - **read**(room, after, limit) → the room's `epoch` and top `seq`, and
//!   the retained frames after `after` (oldest first, at most `limit`;
//!   none when `after` is `None` or of another epoch). Whether the gap is
//!   covered is [`ReadResult::covers`]. A read of a room that does not
//!   exist creates it (so a member's first position has a stable epoch).
//! - **no seq reused** (the rollback check, before every append and
//!   read): `known` is the position this node has streamed for the room
//!   (its cursor, `None` when it follows none). A shared engine's store
//!   can roll back inside an epoch (Redis restarted from an older
//!   snapshot, an asynchronous replica promoted behind): numbering on
//!   from the older top would reuse seqs that members already got for
//!   other messages. So the engine first moves the room to a **new
//!   epoch** (top 0, no history) when (a) `known` is in the room's epoch
//!   and ahead of its top, or (b) the room was last written in an earlier
//!   *lifetime* of the store (a restart or failover since, after which
//!   data may be older) and `known` does not vouch for it (same epoch,
//!   same top); a vouched room counts as written in this lifetime. The
//!   move is a compare-and-set on the old epoch: nodes that notice
//!   together converge on one new epoch, and the read or append that
//!   caused it answers in it (a publish answered after a loss carries the
//!   new epoch; members are told `ROOM_GAP` at its start). An engine
//!   whose store cannot roll back (the in-memory engine of one process)
//!   never moves a room for (b). A room that no node can vouch for after
//!   a restart starts a new epoch even when nothing was lost: a gap
//!   announced too often, never a message missed silently.
//! - **interest**(room, on/off): this node follows the room's live stream
//!   (sent when its first local member arrives and when its last leaves).
//!   Interest is a hint with no answer; a read issued after interest-on
//!   reflects every append whose live message the node will not receive.
//! - **presence**: add / remove one member's entry of a room (no answer),
//!   clear every entry of this node (no answer; sent once, at shutdown,
//!   instead of one remove per membership), list a room's entries
//!   (answered), and refresh: every entry belongs to the node that added
//!   it, and a node that stops refreshing for the presence time-to-live
//!   (`presence_ttl_ms`) loses its entries (a crashed node's members
//!   disappear within that bound).
//! - **presence changes** (a shared engine): for every room the node
//!   follows, each change of the room's entries (adds, removes, clears and
//!   expiries, by any node, this one included) as
//!   [`EngineEvent::PresenceChanged`] with the room's count after it,
//!   **at most once**. An engine may merge consecutive changes of a room
//!   into one (netting a connection that joined and left); a change that
//!   removes many entries at once (a clear, an expiry sweep) is one event.
//!   An engine may send them only for rooms with presence diffs (the
//!   Redis engine does: nobody listens to the others'). The in-memory
//!   engine sends them only when asked
//!   ([`memory::MemoryEngine::with_presence_changes`], for the shards of
//!   one node); otherwise the core builds diffs from its own joins and
//!   leaves (`CoreConfig::presence_diffs_from_engine` off).
//! - An engine that bounds its rooms (the in-memory engine's `rooms_max`)
//!   answers an append or read that would create one too many with a
//!   failure, and fails the node's reads of a room whose interest-on it
//!   refused until the node turns that interest off.
//! - **the live stream**: for every room the node follows, every appended
//!   message as `(room, epoch, seq, frame)`, in `seq` order per room,
//!   **at most once**: a shared engine's pub/sub can lose messages, so the
//!   core tracks `(epoch, last seq)` per room and refills any jump with one
//!   room-level read.
//!
//! ## Order of arrival
//!
//! - Live messages of one room arrive in `seq` order; nothing else is
//!   ordered: answers to different calls may arrive in any order, and an
//!   append's answer may come before or after its own live message.
//! - Presence changes of one room arrive in the order the engine applied
//!   them. They are not ordered with the node's own requests: the change
//!   an add causes arrives some time after the add was sent (possibly
//!   after the member left again), and a list may or may not reflect a
//!   change that has not arrived yet. A lost change is only noticed as
//!   a [`EngineEvent::StreamReset`] (the stream that carries them broke).
//! - Every request carrying a [`CallId`] gets exactly one answer with that
//!   id (the shell turns a timeout into a failure answer).
//!
//! ## Implementations
//!
//! - [`memory::MemoryEngine`]: a pure, deterministic state machine for one
//!   process, answered inline (the default server).
//! - `faults::FaultyEngine` (feature `testing`): the memory engine behind a
//!   seeded fault layer (delays, lost live messages, failures, data loss),
//!   used by the simulator, the property tests and the fuzzers.

pub mod memory;
mod presence_book;

#[cfg(any(test, feature = "testing"))]
pub mod faults;

use std::sync::Arc;

use crate::input::SendTarget;
use crate::names::{ConnectionId, RoomName};
use crate::output::TextFrame;

/// Correlates a request with its answer (chosen by the core, unique per core).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub u64);

/// A room's lifetime: a client holding `(epoch, seq)` can tell "nothing
/// missed" from "history gone" after a restart or data loss.
pub type Epoch = Arc<str>;

/// A place in a room's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The room's lifetime.
    pub epoch: Epoch,
    /// The last `seq` seen (0 before the first message).
    pub seq: u64,
}

/// A broadcast envelope without its `seq`: the frame is `head`, the decimal
/// `seq`, then `tail`. Whoever learns the `seq` (the engine) builds the
/// frame once, so every member and every replay shares the same bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unnumbered {
    /// Everything up to and including `"seq":`.
    pub head: String,
    /// Everything after the number.
    pub tail: String,
    /// The conflation series of a progress event (travels with live messages).
    pub series: Option<String>,
}

impl Unnumbered {
    /// The frame numbered `seq`.
    pub fn number(&self, seq: u64) -> TextFrame {
        let mut itoa = itoa::Buffer::new();
        let digits = itoa.format(seq);
        let mut text = String::with_capacity(self.head.len() + digits.len() + self.tail.len());
        text.push_str(&self.head);
        text.push_str(digits);
        text.push_str(&self.tail);
        TextFrame::from(text)
    }
}

/// What the core asks of its engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineRequest {
    /// Number, keep and publish one message.
    Append {
        /// Echoed in the answer.
        call: CallId,
        /// The room.
        room: RoomName,
        /// The message to number.
        message: Unnumbered,
        /// The position this node has streamed for the room (its cursor):
        /// the rollback check (module docs).
        known: Option<Position>,
    },
    /// The room's top and the retained frames after `after`.
    Read {
        /// Echoed in the answer.
        call: CallId,
        /// The room.
        room: RoomName,
        /// Frames after this position (`None`: only the top). When it
        /// names another epoch than the room's current one, the frames are
        /// those from the start of the current epoch, so a node whose
        /// cursor predates an epoch change (data loss in a shared engine)
        /// can refill its members with the new epoch's messages.
        after: Option<Position>,
        /// Frames returned at most.
        limit: usize,
        /// The position this node has streamed for the room (its cursor):
        /// the rollback check (module docs). Never a client's `since`: a
        /// client must not be able to move a room to a new epoch.
        known: Option<Position>,
    },
    /// Follow (or stop following) the room's live stream. No answer.
    Interest {
        /// The room.
        room: RoomName,
        /// On for the first local member, off after the last.
        on: bool,
    },
    /// A member of this node joined the room. No answer.
    PresenceAdd {
        /// The room.
        room: RoomName,
        /// The member.
        entry: PresenceEntry,
    },
    /// A member of this node left the room. No answer.
    PresenceRemove {
        /// The room.
        room: RoomName,
        /// The member's connection.
        conn: ConnectionId,
    },
    /// Every member of the room, on every node.
    PresenceList {
        /// Echoed in the answer.
        call: CallId,
        /// The room.
        room: RoomName,
    },
    /// This node is alive: its presence entries stay for another
    /// `presence_ttl_ms`. No answer.
    PresenceRefresh,
    /// Every member of this node left every room (it is shutting down):
    /// remove all its entries, each room's in one step. No answer.
    PresenceClear,
    /// A direct message (`POST /api/send`) this node delivered to its own
    /// targets: a shared engine passes it on to every other node (as
    /// [`EngineEvent::Direct`]), whose targets get it too. No answer; the
    /// in-memory engine (one process) ignores it.
    Direct {
        /// One connection or every connection of one user.
        target: SendTarget,
        /// The frame, as built by the node that received the request.
        frame: TextFrame,
    },
}

impl EngineRequest {
    /// The answer this request is owed when it fails with `error` (the
    /// engine refused it, is gone, or timed out): the same call with an
    /// `Err` result. `None` for requests that get no answer.
    pub fn failed(&self, error: EngineError) -> Option<EngineEvent> {
        let event = match *self {
            EngineRequest::Append { call, .. } => EngineEvent::Appended {
                call,
                result: Err(error),
                peer_members: 0,
            },
            EngineRequest::Read { call, .. } => EngineEvent::Read {
                call,
                result: Err(error),
            },
            EngineRequest::PresenceList { call, .. } => EngineEvent::Presence {
                call,
                result: Err(error),
            },
            _ => return None,
        };
        Some(event)
    }
}

/// One member as presence lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PresenceEntry {
    /// The member's connection.
    pub conn: ConnectionId,
    /// Its user id, when authenticated.
    pub user: Option<String>,
}

/// Why an engine request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineError {
    /// The engine could not be reached or did not answer in time.
    Unavailable(String),
}

impl EngineError {
    /// A sentence for error bodies and frames.
    pub fn message(&self) -> &str {
        match self {
            EngineError::Unavailable(why) => why,
        }
    }
}

/// An engine's own invariant that does not hold (its `check`, run by
/// tests, the simulator and the fuzzers): what was found broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineBroken(pub String);

impl std::fmt::Display for EngineBroken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EngineBroken {}

/// One numbered message of a room's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Numbered {
    /// The room.
    pub room: RoomName,
    /// The room's lifetime.
    pub epoch: Epoch,
    /// Its number.
    pub seq: u64,
    /// Its bytes.
    pub frame: TextFrame,
    /// Its conflation series, if a progress event.
    pub series: Option<String>,
}

/// The answer to a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResult {
    /// The room's current epoch.
    pub epoch: Epoch,
    /// The room's top `seq`.
    pub top: u64,
    /// Retained frames after the requested position, oldest first.
    pub frames: Vec<(u64, TextFrame)>,
}

impl ReadResult {
    /// Whether the frames carry everything after `from` up to the top:
    /// same epoch, not in the future, and contiguous from `from.seq + 1`.
    pub fn covers(&self, from: &Position) -> bool {
        if from.epoch != self.epoch || from.seq > self.top {
            return false;
        }
        let needed = self.frames.iter().filter(|(seq, _)| *seq > from.seq);
        let mut expected = from.seq + 1;
        for (seq, _) in needed {
            if *seq != expected {
                return false;
            }
            expected += 1;
        }
        expected == self.top + 1
    }

    /// Where the frames resume: the smallest `seq` such that the frames
    /// hold every message after it up to the top (the top itself when the
    /// last frame is not the top). A reader that cannot be refilled from
    /// its own position continues from here, losing only what history no
    /// longer holds.
    pub fn resume_after(&self) -> u64 {
        let mut resume = self.top;
        for (seq, _) in self.frames.iter().rev() {
            if *seq != resume || resume == 0 {
                break;
            }
            resume -= 1;
        }
        resume
    }

    /// The frames after `from.seq` (callers check [`covers`](Self::covers) first).
    pub fn frames_after(&self, seq: u64) -> impl Iterator<Item = &(u64, TextFrame)> {
        self.frames.iter().filter(move |(s, _)| *s > seq)
    }
}

/// What the engine tells the core (`Input::Engine`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineEvent {
    /// The answer to an append.
    Appended {
        /// The request's id.
        call: CallId,
        /// The numbered message, or why it was not appended.
        result: Result<Numbered, EngineError>,
        /// Members of the room on this node's other shards when the engine
        /// numbered it; 0 from an engine that serves one core. The core
        /// adds it to the publish's `delivered`, so a receipt counts the
        /// whole node's members (`docs/engine.md`, "Shards").
        peer_members: u64,
    },
    /// The answer to a read.
    Read {
        /// The request's id.
        call: CallId,
        /// The room's top and frames, or why the read failed.
        result: Result<ReadResult, EngineError>,
    },
    /// The answer to a presence list: every entry, in connection order.
    Presence {
        /// The request's id.
        call: CallId,
        /// The entries, or why the engine could not list them.
        result: Result<Vec<PresenceEntry>, EngineError>,
    },
    /// A message of a followed room (at most once, in `seq` order per room).
    Live(Numbered),
    /// A shared engine's presence of a followed room changed (by any node,
    /// this one included): at most once, in the engine's order per room.
    /// A connection is in at most one of the two lists.
    PresenceChanged {
        /// The room.
        room: RoomName,
        /// Entries added, in connection order.
        joined: Vec<PresenceEntry>,
        /// Entries removed (left, cleared or expired), in connection order.
        left: Vec<PresenceEntry>,
        /// The room's entries on every node after the change.
        connections: usize,
    },
    /// A direct message sent on another node, for targets that may be here.
    Direct {
        /// One connection or every connection of one user.
        target: SendTarget,
        /// Its bytes.
        frame: TextFrame,
    },
    /// The live stream may have lost messages of any followed room (a
    /// shared engine's pub/sub connection was re-established): the core
    /// reads every room it follows now, instead of waiting for each
    /// room's periodic stream check. Live messages sent after this event
    /// are again in order; a gap the reads find is refilled or announced.
    /// Presence changes may have been lost too: with diffs from the engine,
    /// the members of rooms with presence diffs are told to ask again.
    StreamReset,
}
