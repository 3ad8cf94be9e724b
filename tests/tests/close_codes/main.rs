//! PROTOCOL section 4, close codes: who closes, with what, and what the
//! client sees before the close frame.
//!
//! One test binary, one file per topic (`closing`, `limits`, `liveness`,
//! `slow_consumers`, `framing`).

use std::time::Duration;

use futures_util::SinkExt;
use roomcast_tests::tokens::{publisher, token_ttl};
use roomcast_tests::tokio_tungstenite::tungstenite::protocol::frame::coding::{
    Data as OpData, OpCode,
};
use roomcast_tests::tokio_tungstenite::tungstenite::protocol::frame::Frame;
use roomcast_tests::tokio_tungstenite::tungstenite::Message;
use roomcast_tests::{assert_error, test_config, Ending, HttpConn, TestServer, TIMEOUT};
use serde_json::json;

mod closing;
mod framing;
mod limits;
mod liveness;
mod slow_consumers;

async fn disconnects(server: &TestServer, reason: &str) -> f64 {
    server
        .metric(&format!(
            "roomcast_disconnects_total{{reason=\"{reason}\"}}"
        ))
        .await
        .unwrap_or(0.0)
}
