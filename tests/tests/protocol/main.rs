//! PROTOCOL sections 2-4: the connected message, client actions, replies,
//! id echo and every error code a client can provoke.
//!
//! One test binary, one file per topic (`joins`, `errors`, `access`,
//! `limits`, `messages`).

use std::time::Duration;

use futures_util::SinkExt;

use roomcast_tests::tokens::{publisher, token};
use roomcast_tests::tokio_tungstenite::tungstenite::protocol::frame::coding::{
    Data as OpData, OpCode,
};
use roomcast_tests::tokio_tungstenite::tungstenite::protocol::frame::Frame;
use roomcast_tests::tokio_tungstenite::tungstenite::Message;
use roomcast_tests::{assert_error, is_timestamp, is_uuid, test_config, Auth, Client, TestServer};
use serde_json::{json, Value};

mod access;
mod errors;
mod joins;
mod limits;
mod messages;
