//! Where the Redis engine's connections go: one Redis, a Redis Cluster, or
//! the master that Redis Sentinels name.
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
//! - **Sentinel**: both connections go to the master the Sentinels name
//!   ([`Sentinels`]), and move when it changes ([`Target::master_changes`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::watch;

use super::sentinel::{Master, SentinelUrlError, Sentinels};
use super::tls::{self, TlsError, TlsFiles};

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
    /// The master that Sentinels name (its task: [`Sentinels::run`]).
    Sentinel(Arc<Sentinels>),
}

/// How the engine reaches Redis, as configured.
pub(crate) struct Topology<'a> {
    /// One URL, or a comma-separated list of them.
    pub(crate) url: &'a str,
    /// `url` lists a Redis Cluster's seeds.
    pub(crate) cluster: bool,
    /// `url` lists Sentinels: the master's name, and their own password.
    pub(crate) sentinel: Option<(&'a str, Option<&'a str>)>,
    pub(crate) tls_files: &'a TlsFiles,
    pub(crate) timeout: Duration,
}

/// Why the engine's URL names no usable Redis (never with a password).
#[derive(Debug)]
pub enum TargetError {
    /// A URL or TLS file of one Redis or a cluster's seed.
    Tls(TlsError),
    /// The Sentinels' URLs.
    Sentinel(SentinelUrlError),
    /// The redis crate refused the cluster's seed URLs (its error's kind).
    ClusterUrls(String),
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::Tls(error) => write!(f, "{error}"),
            TargetError::Sentinel(error) => write!(f, "{error}"),
            TargetError::ClusterUrls(kind) => write!(f, "invalid redis cluster urls: {kind}"),
        }
    }
}

impl std::error::Error for TargetError {}

impl From<TlsError> for TargetError {
    fn from(error: TlsError) -> TargetError {
        TargetError::Tls(error)
    }
}

impl Target {
    /// Parses the URL: one URL, or with `cluster` a comma-separated list
    /// of seed URLs, or with `sentinel` of Sentinels; `rediss://` ones with
    /// the TLS files. Errors never carry the password. A Sentinel target's
    /// task must be started ([`Target::spawn`]).
    pub(crate) fn open(topology: Topology<'_>) -> Result<Target, TargetError> {
        let Topology {
            url,
            cluster,
            sentinel,
            tls_files,
            timeout,
        } = topology;
        if let Some((name, password)) = sentinel {
            return Sentinels::new(url, name, password, timeout)
                .map(|sentinels| Target::Sentinel(Arc::new(sentinels)))
                .map_err(TargetError::Sentinel);
        }
        if !cluster {
            return Ok(Target::Single(tls::client(url, tls_files)?));
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
            .map_err(|e| TargetError::ClusterUrls(e.kind_text()))?;
        Ok(Target::Cluster { cluster, seeds })
    }

    /// Starts what the target needs in the background (Sentinel: finding
    /// and following the master).
    pub(crate) fn spawn(&self) {
        if let Target::Sentinel(sentinels) = self {
            tokio::spawn(sentinels.clone().run());
        }
    }

    /// Opens the command connection; once open it reconnects by itself (to
    /// the same server: after [`Target::master_changes`], open a new one).
    pub(crate) async fn connect(&self, timeout: Duration) -> RedisResult<Commands> {
        let client = match self {
            Target::Single(client) => client.clone(),
            Target::Sentinel(sentinels) => {
                let master = sentinels.master().borrow().clone();
                let Some(master) = master else {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the sentinels named no usable master yet",
                    )
                    .into());
                };
                master.client
            }
            Target::Cluster { cluster, .. } => {
                return cluster
                    .get_async_connection()
                    .await
                    .map(|connection| Commands::Cluster(Box::new(connection)))
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        ConnectionManager::new_with_config(client, config)
            .await
            .map(Commands::Single)
    }

    /// Where the pub/sub connection of the `attempt`-th session goes
    /// (`None`: no master known yet).
    pub(crate) fn pubsub_client(&self, attempt: u64) -> Option<redis::Client> {
        match self {
            Target::Single(client) => Some(client.clone()),
            Target::Cluster { seeds, .. } => {
                Some(seeds[(attempt % seeds.len() as u64) as usize].clone())
            }
            Target::Sentinel(sentinels) => sentinels
                .master()
                .borrow()
                .as_ref()
                .map(|master| master.client.clone()),
        }
    }

    /// The master named now (Sentinel; `None` otherwise, or while none is).
    pub(crate) fn master_addr(&self) -> Option<String> {
        match self {
            Target::Sentinel(sentinels) => sentinels
                .master()
                .borrow()
                .as_ref()
                .map(|master| master.addr.clone()),
            _ => None,
        }
    }

    /// The master's changes, where it can change (Sentinel).
    pub(crate) fn master_changes(&self) -> Option<watch::Receiver<Option<Master>>> {
        match self {
            Target::Sentinel(sentinels) => Some(sentinels.master()),
            _ => None,
        }
    }

    /// The server stopped answering, or answered `READONLY`: with
    /// Sentinel, ask which is the master now.
    pub(crate) fn suspect(&self) {
        if let Target::Sentinel(sentinels) = self {
            sentinels.recheck();
        }
    }
}

/// Waits until `changes` (if any) names another master.
pub(crate) async fn master_changed(changes: &mut Option<watch::Receiver<Option<Master>>>) {
    match changes {
        Some(changes) => {
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
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
