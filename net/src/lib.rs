//! # roomcast-net: the `roomcast` server
//!
//! A thin shell around [`roomcast_core`]: it owns sockets, timers, tokens and
//! HTTP; the core owns every protocol decision. Data flows one way:
//! socket → `session` → bounded channel → `hub` (the task that owns
//! one shard's core) → `writer` → socket. A hub writes every socket of
//! its shard's connections itself, so a delivery costs no task wake-up; a
//! node runs one hub per shard, each on a thread of its own (`shards`).
//!
//! | module | job |
//! |---|---|
//! | `server` | [`serve`] (and [`serve_with_engine`], for an engine task the configuration cannot name): accept loop, admission control (503), graceful shutdown |
//! | `publish_api` | `POST /api/broadcast` and `POST /api/send`: caller, body, the hubs' answers |
//! | `http` | routing: `/ws/connect`, `/ws/status`, `/api/broadcast`, `/api/send`, `/metrics`, `/healthz`, `/readyz`, `/`, `/client/roomcast.js` |
//! | `assets` | the console page and the browser client, embedded at build time |
//! | [`devmode`] | first run: an ephemeral secret and a console link on loopback without a key |
//! | `session` | one WebSocket connection's reading task: client frames into the hub |
//! | `hub` | the task that owns a shard's core and routes its outputs |
//! | `shard_core` | what a hub drives: the core with its inline engine, or linked to an engine task |
//! | `node` | starting the node's hubs and engine, for one shard or several |
//! | `shards` | shard threads, placement at accept, the shard router, the in-memory engine as a task |
//! | [`engine`] | the Redis engine: scripts, pub/sub, presence, readiness |
//! | `writer` | the hub's write half of each socket: shared frames, vectored writes, backpressure |
//! | [`auth`] | token extraction (query, header, subprotocol) and JWT verification |
//! | `jwks` | the identity provider's key set (`[auth] jwks_url`): fetch, refresh, refetch for an unknown `kid` |
//! | `http_client` | the outbound HTTP(S) client (JWKS, hooks): timeouts, bounded bodies, typed errors |
//! | `verify` | the off-hub checks the core asks for: `refresh` tokens (threads), the join hook (tasks) |
//! | `hooks` | the application's hooks (`[hooks]`): connect and join, calls bounded, cache, metrics |
//! | [`config`] | configuration: defaults, TOML file, `ROOMCAST_*` environment |
//! | `budget` | the inbound byte budget (`inbound_bytes_max`) |
//! | `clock` | the only time and id sources (replaced by the simulator) |
//! | `listener` | [`Listener`]: what `serve` accepts from (tokio or turmoil) |
//! | `metrics` | Prometheus metrics |
//!
//! Public are only the modules another crate names (`auth`, `config`,
//! `devmode`, `engine`: the binary, the simulator and the tests) and the
//! re-exports below; everything else is private to the server.
//!
//! The server is generic over its [`Listener`] and uses only `tokio::time`,
//! so the simulator runs exactly this code over turmoil's network.

mod assets;
pub mod auth;
mod budget;
mod clock;
pub mod config;
pub mod devmode;
pub mod engine;
mod error;
mod hooks;
mod http;
mod http_client;
mod hub;
mod jwks;
mod listener;
mod metrics;
mod node;
mod publish_api;
mod server;
mod session;
mod shard_core;
mod shards;
mod verify;
mod writer;

pub use clock::{Clock, IdSource};
pub use config::ServerConfig;
pub use error::{ConfigError, ServeError};
pub use listener::Listener;
pub use metrics::Metrics;
pub use server::{serve, serve_with_engine, ServeOptions};
pub use shards::ShardRuntime;
