//! # roomcast-core: the deterministic heart of roomcast
//!
//! This crate is a *sans-IO* state machine for the roomcast protocol
//! (`docs/protocol.md`). It never touches a socket, never reads a clock and
//! never draws a random number: the caller (the `roomcast` server in `net/`,
//! the simulator in `sim/`, the fuzzers in `fuzz/`) feeds it [`Input`]s stamped
//! with a [`Now`], and drains what it decided through [`Core::poll_output`] and
//! [`Core::poll_timeout`]. Same inputs, same outputs, byte for byte.
//!
//! ## The contract of [`Core`]
//!
//! 1. Create it once with a [`CoreConfig`] (limits, access rules, epoch prefix).
//! 2. For every event, call [`Core::handle`]`(now, input)`. `now` must never go
//!    backwards (a smaller `monotonic_us` is treated as equal to the last one).
//!    The return value answers the caller's own requests (a broadcast's
//!    receipt, an API validation error); everything for clients is an output.
//! 3. After each `handle` (or batch of them), drain [`Core::poll_output`] until
//!    `None`, in order: `Send`s, `Ping`s and `Close`s must reach each
//!    connection in the order they were polled.
//! 4. Ask [`Core::poll_timeout`] for the next deadline and call
//!    `handle(now, Input::Timeout)` once it has passed.
//!
//! ## What lives where
//!
//! | module | job |
//! |---|---|
//! | [`machine`] | [`Core`]: the state machine itself, inputs in, outputs out |
//! | [`input`] / [`output`] | the vocabulary between caller and core |
//! | [`request`] | parsing one client text frame into a [`request::Request`] or a protocol error |
//! | [`envelope`] | serializing server→client messages (the JSON envelope) |
//! | [`publish`] | validating server-side publishes (HTTP API bodies, message types, series `key` rule) |
//! | [`access`] | who may join or publish to which room ([`AccessRules`], [`Identity`]) |
//! | [`limits`] | the one table of limits, with defaults ([`Limits`]) |
//! | [`rate`] | the token bucket and violation counter behind `RATE_LIMITED` / 1008 |
//! | [`room_log`] | a room's sequence numbers and epoch: the seam a shared (Redis) engine will replace |
//! | [`conflation`] | holding back superseded progress events for members that are behind |
//! | [`codes`] | error codes and close codes of the protocol |
//! | [`names`] | validated room names and connection ids |
//! | [`time`] | [`Now`] and the RFC 3339 timestamp formatter |
//! | [`invariants`] | [`Core::check_invariants`], used by tests, the simulator and the fuzzers |
//! | [`oracle`] | the client-side delivery oracle shared by the simulator and the fuzzers |
//!
//! ## Slow consumers
//!
//! The core *tracks* each connection's outbound backlog: every `Send` output
//! adds its frame length, and the caller reports completed writes with
//! [`Input::Written`]. When a `Send` would push the backlog past
//! [`Limits::outbound_queue_bytes_max`], the core closes the connection with
//! 4008 instead of sending, so a member either receives every broadcast of its
//! rooms in `seq` order or is told why it stopped.

pub mod access;
pub mod codes;
pub mod conflation;
pub mod envelope;
pub mod input;
pub mod invariants;
pub mod limits;
pub mod machine;
pub mod names;
pub mod oracle;
pub mod output;
pub mod publish;
pub mod rate;
pub mod request;
pub mod room_log;
pub mod time;

pub use access::{AccessRules, Identity, RoomAccess, User};
pub use codes::{CloseCode, ErrorCode};
pub use input::{Input, SendTarget};
pub use limits::Limits;
pub use machine::{Core, CoreConfig, Response, RoomOptions};
pub use names::{ConnectionId, ConnectionMap, RoomName};
pub use output::{Output, TextFrame};
pub use publish::{MessageTypes, Publish, PublishError, PublishReceipt};
pub use time::Now;
