//! # roomcast-tests: the end-to-end harness
//!
//! Real clients against the real server on an ephemeral loopback port,
//! one helper a file:
//!
//! | file | what |
//! |---|---|
//! | `server.rs` | [`TestServer`]: [`roomcast_net::serve`] on `127.0.0.1:0` inside the test's runtime, with a metrics registry the test reads; stopped through a oneshot (the in-process SIGTERM) |
//! | `ws_client.rs` | [`Client`]: a tokio-tungstenite WebSocket client that knows the protocol's shapes (reads `connected`, sends and receives JSON with a timeout, expects close codes) |
//! | `http_client.rs` | [`http`] / [`HttpConn`]: a small HTTP/1.1 client returning status, headers and body |
//! | [`tokens`] | JWTs: valid, expired, wrong secret, `alg: none`, string `exp`, future `nbf`, RS256 |
//! | [`binary`] | the real `roomcast` executable, built if stale, and [`binary::Process`], the one launcher running it (its log in a file, printed when a test fails) |
//! | [`cluster`] | nodes sharing one Redis: [`cluster::Cluster`], a fixture of N nodes in this process (start, ready, shut down), or one node |
//! | [`redis_server`], [`tls_certs`] | `redis-server` processes (single, persistent, TLS, Cluster) and their certificates |
//! | [`engine_harness`], [`oracle_client`] | the engine contract suite's harness; clients checked by the shared oracle |
//! | [`fake_http`] | a fake HTTP service (replies set per path, requests recorded, can go down and come back) playing the identity provider's JWKS and the application's hooks |
//!
//! Timeouts are generous ([`TIMEOUT`]) because the suite runs in debug
//! builds on a small shared machine; no test asserts on timing.

use std::time::Duration;

use roomcast_net::ServerConfig;

pub mod binary;
pub mod cluster;
pub mod engine_harness;
pub mod fake_http;
mod http_client;
pub mod oracle_client;
pub mod redis_proxy;
pub mod redis_sentinel;
pub mod redis_server;
mod server;
pub mod tls_certs;
pub mod tokens;
mod ws_client;

pub use http_client::{api_post, http, upgrade_request, HttpConn, HttpResponse};
pub use server::{metric_value, TestServer};
pub use ws_client::{
    assert_error, is_timestamp, is_uuid, Auth, Client, CloseError, ConnectOptions, Ending,
};

pub use roomcast_net;
pub use serde_json;
pub use tokio_tungstenite;

/// How long any single expected event may take before a test fails.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The HS256 secret every test server is configured with.
pub const SECRET: &str = "roomcast-test-secret-0123456789abcdef";

/// A configuration for tests: the defaults plus the HS256 [`SECRET`], and
/// quiet limits that no ordinary test runs into.
pub fn test_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.auth.jwt_secret = Some(SECRET.to_owned());
    config
}
