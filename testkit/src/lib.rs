//! # roomcast-testkit: test support shared across crates
//!
//! Not part of the product: nothing in `net/` depends on it.
//!
//! | module | job |
//! |---|---|
//! | [`fuzz`] | the bodies of the fuzz targets ([`fuzz::TARGETS`]), called by cargo-fuzz (`fuzz/`) and replayed over the checked-in corpus by `cargo test` (`sim/tests/fuzz_corpus.rs`) |
//! | [`driver`] | the one driver of a core workload: feeds [`driver::Event`]s to a core behind a faulty engine, routes its outputs to clients and the delivery oracle, settles; the simulator's core tier draws the events from its generator, `core_events` decodes them from bytes |
//! | `core_events` | the `core_events` target: decoded events through the driver |
//! | [`record_receipt`] | what the driver tells the oracle about publish receipts |

mod core_events;
pub mod driver;
pub mod fuzz;
mod receipts;

pub use receipts::record_receipt;
