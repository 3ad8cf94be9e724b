//! Tier 2 (placeholder while it is written).
use crate::report::{Failure, Summary};

/// Runs one net-tier simulation.
pub fn run(seed: u64, _clients: usize, _seconds: u64) -> Result<Summary, Failure> {
    Err(Failure {
        tier: "net",
        seed,
        invariant: "not built".into(),
        detail: String::new(),
        recent: vec![],
        reproduce: String::new(),
    })
}
