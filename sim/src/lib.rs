//! # roomcast-sim: deterministic simulation of roomcast
//!
//! Two tiers, one master seed, one oracle ([`roomcast_core::oracle`]):
//!
//! | module | job |
//! |---|---|
//! | [`core_tier`] | tier 1: the pure core under a seeded workload on a jumping virtual clock |
//! | [`net_tier`] | tier 2: the production server (`roomcast_net::serve`) inside turmoil, with real WebSocket clients and network faults; with several nodes, against the broker host |
//! | [`broker`] | the net tier's shared engine: the in-memory engine on a broker host, its wire protocol, and a node's link to it (with broker faults) |
//! | [`swarm`] | per-seed workload mix (actions, limits, faults) |
//! | [`rng`] | the seeded generator and the trace hash |
//! | [`report`] | summaries, failures and the recent-event ring |
//!
//! `cargo run --release -p roomcast-sim -- --seed N` runs both tiers for one
//! seed and prints a summary line per tier with `seed=N` and `trace_hash=`;
//! see `sim/README.md`.

pub mod broker;
pub mod core_tier;
pub mod net_tier;
pub mod report;
pub mod rng;
pub mod swarm;
