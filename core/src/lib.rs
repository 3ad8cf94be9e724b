//! # roomcast-core: the deterministic heart of roomcast
//!
//! This crate is a *sans-IO* state machine for the roomcast protocol
//! (`docs/protocol.md`). It never touches a socket, never reads a clock and
//! never draws a random number: the caller (the `roomcast` server in `net/`,
//! the simulator in `sim/`, the fuzzers in `fuzz/`) feeds it [`Input`]s stamped
//! with a [`Now`], and drains what it decided through [`Core::poll_output`],
//! [`Core::poll_engine`] and [`Core::poll_timeout`]. Same inputs, same
//! outputs, byte for byte.
//!
//! ## The contract of [`Core`]
//!
//! 1. Create it once with a [`CoreConfig`] (limits, access rules, epoch prefix).
//! 2. For every event, call [`Core::handle`]`(now, input)`. `now` must never go
//!    backwards (a smaller `monotonic_us` is treated as equal to the last one).
//!    It returns nothing: everything for clients is an output. The caller's
//!    own requests have their own calls, each with its typed answer:
//!    [`Core::broadcast`] (the refusal, or the ticket of a broadcast waiting
//!    for the engine) and [`Core::send_direct`] (connections reached).
//! 3. After each `handle` (or batch of them), drain [`Core::poll_output`] until
//!    `None`, in order: `Send`s, `Ping`s and `Close`s must reach each
//!    connection in the order they were polled.
//! 4. Drain [`Core::poll_engine`] and hand each request to the engine; feed
//!    its answers and live messages back as [`Input::Engine`]. Answers to
//!    pending broadcasts come from [`Core::poll_answer`].
//! 5. Ask [`Core::poll_timeout`] for the next deadline and call
//!    `handle(now, Input::Timeout)` once it has passed.
//!
//! [`Standalone`] does step 4 for an engine answered inline (the in-memory
//! engine of a single node), so the default server, the tests and the
//! simulator drive one object.
//!
//! ## The engine seam
//!
//! The core never numbers a message or keeps history: a room's `epoch`,
//! `seq`, history and lifetime belong to an engine it talks to by messages.
//! The contract, and the order in which answers and live messages may
//! arrive, is written down in [`engine`] (and `docs/engine.md`). What the
//! core keeps whatever the engine does:
//! - **join barrier**: a member's first live message is the one after the
//!   `seq` its join reply reports (a join that needs the room's position
//!   waits for the room's read; live messages arriving meanwhile are buffered);
//! - **recovery**: a join with `since` is answered from one room-level
//!   read merged with the live messages that arrived meanwhile: all missed
//!   frames with `recovered: true`, or none with `recovered: false`;
//! - **live gaps**: a jump in a room's `seq` (or a new epoch) starts one
//!   room-level read; what it cannot fill is announced to every member
//!   with a `ROOM_GAP` `system_warning` (never a silent gap);
//! - **receipts**: a publish is answered after the engine appended it; a
//!   failed append is an `ENGINE_UNAVAILABLE` error (HTTP 503), and the
//!   engine calls in flight are bounded (`engine_calls_max`);
//! - **reply order**: while one of a connection's requests waits for the
//!   engine (or for a check the shell makes off the hub, [`checks`]), its
//!   later messages wait behind it;
//! - **presence** lists come from the engine (every node's members, a
//!   silent node's entries expiring); diffs stay per node.
//!
//! ## What lives where
//!
//! | module | job |
//! |---|---|
//! | `machine` | [`Core`]: its parts and input dispatch |
//! | `connections` | the connections part (slab, ids, timers, the close queue); opening, closing (one way: the close queue), queueing frames with the slow-consumer bound |
//! | `reply_order` | a connection's reply order: the messages (and refusals: `SERVER_BUSY`, `RATE_LIMITED`) queued behind a request that waits for the engine or a check, and their resumption |
//! | `calls` | the engine calls part: requests, calls in flight, publishes awaiting appends, answers to the caller |
//! | `presence` | the presence part: the input's changes, throttle windows, the node's refresh |
//! | `outbound` | the outbound queue and the node-wide byte budget (`outbound_bytes_max`) |
//! | `client_messages` | handling client messages: rate limit verdict, parse, the simple actions |
//! | `rooms` | the rooms part (rooms, stream-check timers); joins, leaves, a room's local lifetime |
//! | `presence_diffs` | who is told which `presence_diff`, and presence lists |
//! | `stream` | the engine conversation per room: reads, live messages, gaps, checks |
//! | `publishing` | publishing (API and client): the engine appends and their answers, receipts; direct messages (`/api/send`) |
//! | `delivery` | a numbered message to a room's members (shared bytes, conflation, the slow-consumer close) and a direct message to its connections |
//! | `timers` | heartbeats, token expiry, conflation flushes, stream checks, the end of presence-diff windows |
//! | `config` | [`CoreConfig`], [`RoomOptions`], [`BroadcastAnswer`], [`Ticket`] |
//! | [`engine`] | the engine contract; [`engine::memory`] the in-memory engine (`engine/memory/room_log.rs`: a room's numbers and bounded history in it) |
//! | [`standalone`] | [`Standalone`]: a core and its inline engine, driven together |
//! | `input` / `output` | the vocabulary between caller and core ([`Input`], [`Output`]) |
//! | [`parse`] | parsing one client text frame into a [`parse::Request`] or a protocol error |
//! | [`envelope`] | serializing server→client messages (the JSON envelope) |
//! | [`validate`] | validating publishes and direct messages before anything is sent (HTTP API bodies, message types, series `key` rule) |
//! | [`access`] | who may join or publish to which room ([`AccessRules`], [`Identity`], [`Grants`]) |
//! | [`checks`] | checks the shell makes off the hub (a refresh's token, the join hook), and their answers |
//! | `limits` | the one table of limits, with defaults ([`Limits`]) |
//! | [`rate`] | the token bucket and violation counter behind `RATE_LIMITED` / 1008 |
//! | `conflation` | holding back superseded progress events for members that are behind |
//! | `codes` | error codes and close codes of the protocol |
//! | `names` | validated room names and connection ids |
//! | `time` | [`Now`] and the RFC 3339 timestamp formatter |
//! | `invariants` | `Core::check_invariants` and its typed failure, `Broken` (feature `testing`) |
//! | `oracle` | the client-side delivery oracle of the simulator, property tests and fuzzers (feature `testing`): its promises and bookkeeping in `oracle/mod.rs`, what one received message tells it in `oracle/received.rs`, the presence-count check in `oracle/presence.rs` |
//! | `engine::faults` | the in-memory engine behind a seeded fault layer (feature `testing`) |
//!
//! Test support that production does not use is behind the `testing`
//! feature.
//!
//! ## Slow consumers
//!
//! The core *tracks* each connection's outbound backlog: every `Send` output
//! adds its frame length, and the caller reports completed writes with
//! [`Input::Written`]. When a `Send` would push the backlog past
//! [`Limits::outbound_queue_bytes_max`], the core closes the connection with
//! 4008 instead of sending, so a member either receives every broadcast of its
//! rooms in `seq` order or is told why it stopped.
//!
//! The caller also reports a socket that pushed back (a write that returned
//! `WouldBlock` or was partial) with [`Input::Blocked`]: such a member, or one
//! whose backlog passed [`Limits::conflation_behind_bytes`], is *behind*, and
//! only a member that is behind has progress events conflated
//! (`conflation`).
//!
//! The backlogs of all connections together are bounded too
//! ([`Limits::outbound_bytes_max`]): past it, the members that do not keep
//! up are closed with 4008, the largest backlog first (`outbound`).

pub mod access;
mod calls;
pub mod checks;
mod client_messages;
mod codes;
mod config;
mod conflation;
mod connections;
mod delivery;
pub mod engine;
pub mod envelope;
mod input;
#[cfg(any(test, feature = "testing"))]
pub mod invariants;
mod limits;
mod machine;
mod names;
#[cfg(any(test, feature = "testing"))]
pub mod oracle;
mod outbound;
mod output;
pub mod parse;
mod presence;
mod presence_diffs;
mod publishing;
pub mod rate;
mod reply_order;
mod rooms;
pub mod standalone;
mod stream;
mod time;
mod timers;
pub mod validate;

pub use access::{AccessRules, Grants, Identity, RoomAccess, User};
pub use checks::{Check, CheckAnswer, HookVerdict, TokenRefused};
pub use codes::{CloseCode, ErrorCode, WarningCode};
pub use config::{BroadcastAnswer, CoreConfig, RoomOptions, Ticket};
pub use input::{Input, SendTarget};
pub use limits::Limits;
pub use machine::Core;
pub use names::{ConnectionId, ConnectionMap, RoomName};
pub use output::{Output, TextFrame};
pub use standalone::{BroadcastOutcome, Standalone};
pub use time::Now;
pub use validate::{MessageTypes, Publish, PublishError, PublishReceipt};
