//! What a [`Core`](crate::Core) is configured with, and what it answers
//! its caller's own inputs with.

use crate::access::AccessRules;
use crate::limits::Limits;
use crate::names::RoomName;
use crate::validate::{MessageTypes, PublishError, PublishReceipt};

/// Everything the core is configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreConfig {
    /// The one limits table.
    pub limits: Limits,
    /// Who may join which room.
    pub access: AccessRules,
    /// Supported message types.
    pub types: MessageTypes,
    /// Prefix of every epoch the in-memory engine creates. Must differ
    /// between server lifetimes (the shell draws it at random; the
    /// simulator from its seed).
    pub epoch_prefix: String,
    /// Shown in the `connected` message: "Connected to {server_name} WebSocket".
    pub server_name: String,
    /// Per-room behaviours chosen by name prefix (presence diffs, conflation).
    pub rooms: RoomOptions,
    /// Where `presence_diff` pushes come from. Off (the default, one
    /// process): from this node's own joins and leaves. On (set by the
    /// shell when the engine is shared by several nodes): from the engine's
    /// [`PresenceChanged`](crate::engine::EngineEvent::PresenceChanged)
    /// events, so members hear of every node's joins, leaves and expiries
    /// with the cluster-wide count. Not a `[rooms]` setting: it follows
    /// from the engine.
    pub presence_diffs_from_engine: bool,
    /// Whether the shell has a join hook (`[hooks] join_url`): a join of
    /// a `granted` room the grants do not cover is then asked of it
    /// ([`crate::checks`]) instead of refused.
    pub join_hook: bool,
}

/// Room behaviours chosen by room-name prefix (the `[rooms]` config table).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomOptions {
    /// Rooms whose members are told when others join or leave (`presence_diff`).
    pub presence_diff_prefixes: Vec<String>,
    /// The throttle of a room's presence diffs, in ms: the first change of
    /// a quiet room is told at once; later changes within this window are
    /// told together as one diff when it ends. 0: every input's changes
    /// are told at once (one diff per room per input).
    pub presence_diff_interval_ms: u64,
    /// Rooms that conflate `download_progress` for members that are behind.
    pub conflate_prefixes: Vec<String>,
    /// How long held progress events wait at most, in ms.
    pub conflation_window_ms: u64,
}

impl Default for RoomOptions {
    fn default() -> RoomOptions {
        RoomOptions {
            presence_diff_prefixes: Vec::new(),
            // Half a second: a lone change (a quiet room) is still told at
            // once, a busy room's members hear at most two diffs a second
            // (a 15,000-member join storm costs 2 × 15,000 frames a second,
            // not 15,000 per join), and a presence list that lags by half a
            // second still reads as live (Phoenix batches per 1.5 s).
            presence_diff_interval_ms: 500,
            conflate_prefixes: Vec::new(),
            conflation_window_ms: 100,
        }
    }
}

impl RoomOptions {
    /// Whether `room` conflates progress events.
    pub fn conflates(&self, room: &RoomName) -> bool {
        self.conflate_prefixes
            .iter()
            .any(|p| room.as_str().starts_with(p.as_str()))
    }

    /// Whether `room` pushes presence diffs.
    pub fn presence_diffs(&self, room: &RoomName) -> bool {
        self.presence_diff_prefixes
            .iter()
            .any(|p| room.as_str().starts_with(p.as_str()))
    }
}

impl Default for CoreConfig {
    fn default() -> CoreConfig {
        CoreConfig {
            limits: Limits::default(),
            access: AccessRules::default(),
            types: MessageTypes::default(),
            epoch_prefix: "e".to_owned(),
            server_name: "roomcast".to_owned(),
            rooms: RoomOptions::default(),
            presence_diffs_from_engine: false,
            join_hook: false,
        }
    }
}

/// The answer to a broadcast ([`Core::broadcast`](crate::Core::broadcast)):
/// the rooms' seqs once the engine numbered it, or why it was refused. For
/// a broadcast to several rooms that the engine failed part-way, the error
/// names the rooms that were appended (they are delivered) and those that
/// were not.
pub type BroadcastAnswer = Result<PublishReceipt, PublishError>;

/// Names one broadcast waiting for its answer (see
/// [`Core::poll_answer`](crate::Core::poll_answer)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);
