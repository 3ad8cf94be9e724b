//! The broker: the net tier's shared engine, a deterministic stand-in for
//! Redis that several server nodes reach over turmoil's network.
//!
//! There is one engine model, not a third one: the broker host holds the
//! pure [`MemoryEngine`](roomcast_core::engine::memory::MemoryEngine),
//! which already keys followers and presence by node; what the broker adds
//! is what a shared engine adds in production, the network between the
//! nodes and the engine state, and its failures.
//!
//! | file | job |
//! |---|---|
//! | [`wire`] | the framed protocol (length-prefixed JSON of the engine requests and events) |
//! | [`host`] | the broker host: sessions, routing of answers and live messages, loss |
//! | [`link`] | a node's engine task: an `EngineLink` over TCP with timeouts, bounds, pings, reconnect and `StreamReset` |

pub mod host;
pub mod link;
pub mod wire;
