//! What the simulator's core tier and the `core_events` fuzz target both
//! tell the delivery oracle about publishes: one bookkeeping, not two.

use roomcast_core::oracle::Oracle;
use roomcast_core::{BroadcastAnswer, PublishError};

/// Tells the oracle what the publisher was told: every room a publish was
/// appended to (and delivered in), with its `epoch` and `seq`.
pub fn record_receipt(oracle: &mut Oracle, answer: BroadcastAnswer) {
    let rooms = match answer {
        Ok(receipt) => receipt.rooms,
        // Rooms appended before the engine failed the rest were delivered.
        Err(PublishError::EngineUnavailable { appended, .. }) => appended,
        Err(_) => return,
    };
    for r in rooms {
        oracle.published(r.room.as_str(), &r.epoch, r.seq);
    }
}
