//! Where the Redis engine's connections go: one Redis, or a Redis Cluster.
//!
//! - **Commands** ([`Commands`]): one multiplexed, self-reconnecting
//!   connection to a single Redis ([`ConnectionManager`]), or a cluster
//!   connection ([`ClusterConnection`]) that routes each call to the shard
//!   owning its keys. Every script names only the keys of one room, all
//!   carrying the room as a hash tag (`{room}`), so each call lands on one
//!   shard; `SCRIPT LOAD` goes to every primary.
//! - **Pub/sub**: classic `SUBSCRIBE`/`PUBLISH` reach every node of a
//!   cluster, so the node's one pub/sub connection goes to any one node:
//!   the first seed, then the next one after each failure
//!   ([`Target::pubsub_client`]).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::tls::{self, TlsFiles};

/// The Redis (or Redis Cluster) a node's engine talks to.
pub(crate) enum Target {
    /// One Redis.
    Single(redis::Client),
    /// A Redis Cluster, reached through its seed nodes.
    Cluster {
        /// Routes commands by slot; learns the topology from any seed.
        cluster: ClusterClient,
        /// The seeds, each a candidate for the pub/sub connection.
        seeds: Vec<redis::Client>,
    },
}

impl Target {
    /// Parses `url`: one URL, or with `cluster` a comma-separated list of
    /// seed URLs; `rediss://` ones with the TLS files. Errors never carry
    /// the password.
    pub(crate) fn open(
        url: &str,
        cluster: bool,
        tls_files: &TlsFiles,
        timeout: Duration,
    ) -> Result<Target, String> {
        if !cluster {
            return tls::client(url, tls_files).map(Target::Single);
        }
        let urls: Vec<&str> = url.split(',').map(str::trim).collect();
        let seeds = urls
            .iter()
            .map(|url| tls::client(url, tls_files))
            .collect::<Result<Vec<_>, _>>()?;
        let mut builder = ClusterClient::builder(urls.clone())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(1);
        if let Some(certificates) = tls::certificates(urls[0], tls_files)? {
            builder = builder.certs(certificates);
        }
        let cluster = builder
            .build()
            .map_err(|e| format!("invalid redis cluster urls: {}", e.kind_text()))?;
        Ok(Target::Cluster { cluster, seeds })
    }

    /// Opens the command connection; once open it reconnects by itself.
    pub(crate) async fn connect(&self, timeout: Duration) -> RedisResult<Commands> {
        match self {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(2));
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(Commands::Single)
            }
            Target::Cluster { cluster, .. } => cluster
                .get_async_connection()
                .await
                .map(|connection| Commands::Cluster(Box::new(connection))),
        }
    }

    /// Where the pub/sub connection of the `attempt`-th session goes.
    pub(crate) fn pubsub_client(&self, attempt: u64) -> &redis::Client {
        match self {
            Target::Single(client) => client,
            Target::Cluster { seeds, .. } => &seeds[(attempt % seeds.len() as u64) as usize],
        }
    }
}

/// The command connection: scripts, pings and heartbeats go through it.
#[derive(Clone)]
pub(crate) enum Commands {
    /// To one Redis.
    Single(ConnectionManager),
    /// To a Redis Cluster (boxed: it is much larger than the manager).
    Cluster(Box<ClusterConnection>),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Single(connection) => connection.req_packed_command(cmd),
            Commands::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(connection) => connection.get_db(),
            Commands::Cluster(connection) => connection.get_db(),
        }
    }
}

/// A short description of a redis error, without its details (which may
/// name the server).
pub(crate) trait KindText {
    fn kind_text(&self) -> String;
}

impl KindText for redis::RedisError {
    fn kind_text(&self) -> String {
        if self.is_timeout() {
            "timed out".into()
        } else if self.is_connection_refusal() {
            "connection refused".into()
        } else if self.is_io_error() || self.is_connection_dropped() {
            // The operating system's or the TLS library's words (such as
            // "invalid peer certificate: UnknownIssuer"): they name no
            // credentials, and a TLS misconfiguration is unfixable without them.
            format!("connection failed: {self}")
        } else {
            format!("{:?}", self.kind())
        }
    }
}
