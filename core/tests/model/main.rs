//! Model-based test: random operation sequences run against the core and
//! against a small reference model built from plain `BTreeMap`s; after every
//! step both must agree on the exact list of outputs (decoded JSON, closes,
//! pings) and on the caller's answers (broadcast receipts, sends).
//!
//! Also: the same sequence on two fresh cores gives byte-identical outputs.
//!
//! Model simplifications (chosen by the config, so the model stays obviously
//! right): the outbound queue is unbounded in practice, ping/idle timeouts are
//! far beyond the time a case spans, tokens never expire. The rate limiter is
//! either generous (never triggers) or tight, and then modeled exactly as
//! `rate.rs` documents it. Error messages are only checked to be non-empty,
//! except `UNKNOWN_ACTION`'s, which the protocol fixes. Epochs are opaque: a
//! string that stays the same while a room lives and is new when it is
//! created again.
//!
//! One test binary in four files: `ops` (the operations and their client
//! input), `strategies` (drawing cases, the configurations), `reference` (the
//! model), `driving` (running both and comparing; the tests).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::OnceLock;

use proptest::collection::vec;
use proptest::prelude::*;
use roomcast_core::access::AccessRule;
use roomcast_core::validate::DirectMessage;
use roomcast_core::{
    AccessRules, BroadcastOutcome, CloseCode, ConnectionId, CoreConfig, Identity, Input, Limits,
    Now, Output, Publish, RoomAccess, RoomName, SendTarget, Standalone, User,
};
use serde_json::{json, Map, Value};

mod driving;
mod ops;
mod reference;
mod strategies;

use driving::*;
use ops::*;
use reference::*;
use strategies::*;

/// 2025-10-17T10:30:00.000Z.
const START_MS: i64 = 1_760_697_000_000;
const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"]; // dave never connects
const ROOMS: [&str; 10] = [
    "downloads",
    "queue",
    "scans",
    "lobby",
    "a",
    "b.c",
    "x:y-1",
    "user:alice",
    "user:bob",
    "auth:ops",
];
const ROOMS_MAX: usize = 3;
const ID_STRS: [&str; 3] = ["r1", "ü \"q\"", ""];
/// One token / one violation in the rate limiter's fixed point.
const UNIT: u64 = 1_000_000;
