//! # roomcast-testkit: test support shared across crates
//!
//! Not part of the product: nothing in `net/` depends on it.
//!
//! | module | job |
//! |---|---|
//! | [`fuzz`] | the bodies of the fuzz targets ([`fuzz::TARGETS`]), called by cargo-fuzz (`fuzz/`) and replayed over the checked-in corpus by `cargo test` (`sim/tests/fuzz_corpus.rs`) |
//! | `core_events` | the `core_events` target: a structured core workload behind a faulty engine, checked by the delivery oracle |
//! | [`record_receipt`] | what the simulator's core tier and `core_events` tell the oracle about publish receipts |

mod core_events;
pub mod fuzz;
mod receipts;

pub use receipts::record_receipt;
