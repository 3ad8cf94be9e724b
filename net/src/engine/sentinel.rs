//! Redis Sentinel: which Redis is the master now.
//!
//! `redis_url` lists Sentinels; [`Sentinels::run`] asks them, in turn,
//! `SENTINEL get-master-addr-by-name <name>`, checks with `ROLE` that the
//! Redis they name really is a master (during a failover a Sentinel may
//! still name the old one, or the new one may not have switched yet), and
//! publishes its client on a watch channel: the command connection and the
//! pub/sub connection both move there when it changes.
//!
//! It asks again when a Sentinel announces a failover (`+switch-master`,
//! followed on one Sentinel's pub/sub connection), when the engine says
//! the master stopped answering or answers `READONLY` ([`Sentinels::recheck`]),
//! every [`RECHECK_INTERVAL`] in case both were missed, and with backoff
//! while no Sentinel names a master that says it is one.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use super::connection::KindText;
use super::Backoff;

/// How often the master is asked for even without a reason.
const RECHECK_INTERVAL: Duration = Duration::from_secs(15);

/// Why the Sentinels' URLs are unusable (shown without passwords).
#[derive(Debug)]
pub enum SentinelUrlError {
    /// The redis crate refused one.
    Invalid {
        url: String,
        source: redis::RedisError,
    },
    /// Not a `redis://host:port` one.
    NotTcp { url: String },
    /// None at all.
    None,
}

impl fmt::Display for SentinelUrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SentinelUrlError::Invalid { url, source } => {
                write!(f, "invalid redis sentinel url {url}: {source}")
            }
            SentinelUrlError::NotTcp { url } => write!(
                f,
                "redis sentinel url {url}: only redis://host:port is supported"
            ),
            SentinelUrlError::None => f.write_str("no sentinel url"),
        }
    }
}

impl std::error::Error for SentinelUrlError {}

/// Why one command to a Sentinel or a master failed.
#[derive(Debug)]
enum QueryError {
    /// Redis answered with an error, or the connection failed (its kind).
    Failed(String),
    TimedOut,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Failed(kind) => f.write_str(kind),
            QueryError::TimedOut => f.write_str("timed out"),
        }
    }
}

/// The Sentinels of one master name.
pub(crate) struct Sentinels {
    /// One client per Sentinel (with the Sentinels' password, if any).
    sentinels: Vec<redis::Client>,
    /// The master's name at the Sentinels.
    name: String,
    /// The master's credentials and database (from `redis_url`).
    master_settings: RedisConnectionInfo,
    timeout: Duration,
    /// The master as last confirmed: its `host:port` and client.
    master: watch::Sender<Option<Master>>,
    /// Set when the engine asks for a check.
    recheck: Notify,
}

/// A confirmed master.
#[derive(Clone)]
pub(crate) struct Master {
    /// `host:port`, as the Sentinels name it (for logs).
    pub(crate) addr: String,
    pub(crate) client: redis::Client,
}

/// Why a master could not be found.
#[derive(Debug)]
enum Unresolved {
    /// No Sentinel answered.
    NoSentinel(String),
    /// The Sentinels do not know the name.
    UnknownName,
    /// The Redis they name is unreachable or not a master (yet).
    NotMaster { addr: String, why: String },
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unresolved::NoSentinel(why) => write!(f, "no sentinel answered ({why})"),
            Unresolved::UnknownName => write!(f, "the sentinels monitor no master of that name"),
            Unresolved::NotMaster { addr, why } => {
                write!(f, "the master they name, {addr}, {why}")
            }
        }
    }
}

impl Sentinels {
    /// Parses the Sentinels' URLs (comma-separated, `redis://` only: the
    /// configuration refuses TLS with Sentinel). The password in the URLs
    /// is the master's; `sentinel_password` the Sentinels' own. Errors
    /// never carry a password.
    pub(crate) fn new(
        urls: &str,
        name: &str,
        sentinel_password: Option<&str>,
        timeout: Duration,
    ) -> Result<Sentinels, SentinelUrlError> {
        let mut sentinels = Vec::new();
        let mut master_settings = None;
        for url in urls.split(',').map(str::trim) {
            let shown = crate::config::redact_url(url);
            let info = url
                .into_connection_info()
                .map_err(|source| SentinelUrlError::Invalid {
                    url: shown.clone(),
                    source,
                })?;
            if !matches!(info.addr(), ConnectionAddr::Tcp(..)) {
                return Err(SentinelUrlError::NotTcp { url: shown });
            }
            // The first URL's credentials and database are the master's.
            master_settings.get_or_insert_with(|| info.redis_settings().clone());
            let mut own = RedisConnectionInfo::default();
            if let Some(password) = sentinel_password {
                own = own.set_password(password);
            }
            let client = redis::Client::open(info.set_redis_settings(own))
                .map_err(|source| SentinelUrlError::Invalid { url: shown, source })?;
            sentinels.push(client);
        }
        let master_settings = master_settings.ok_or(SentinelUrlError::None)?;
        Ok(Sentinels {
            sentinels,
            name: name.to_owned(),
            master_settings,
            timeout,
            master: watch::channel(None).0,
            recheck: Notify::new(),
        })
    }

    /// The master as last confirmed, and its changes.
    pub(crate) fn master(&self) -> watch::Receiver<Option<Master>> {
        self.master.subscribe()
    }

    /// Asks the Sentinels again soon (the master stopped answering, or
    /// answered `READONLY`).
    pub(crate) fn recheck(&self) {
        self.recheck.notify_one();
    }

    /// Finds the master and follows it until every receiver of
    /// [`Sentinels::master`] is gone... or forever: the engine holds one.
    pub(crate) async fn run(self: Arc<Self>) {
        tokio::spawn(self.clone().follow_switches());
        let mut backoff = Backoff::new();
        loop {
            let wait = match self.resolve().await {
                Ok(master) => {
                    backoff = Backoff::new();
                    let changed = self
                        .master
                        .borrow()
                        .as_ref()
                        .is_none_or(|known| known.addr != master.addr);
                    if changed {
                        info!(master = %self.name, addr = %master.addr, "redis sentinel: using this master");
                        self.master.send_replace(Some(master));
                    }
                    RECHECK_INTERVAL
                }
                Err(why) => {
                    let delay = backoff.next_delay();
                    warn!(master = %self.name, error = %why, retry_in_ms = delay.as_millis() as u64, "redis sentinel: no usable master");
                    delay
                }
            };
            if self.master.is_closed() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.recheck.notified() => {}
            }
        }
    }

    /// Asks each Sentinel in turn for the master, and the master whether it is one.
    async fn resolve(&self) -> Result<Master, Unresolved> {
        let mut failure = Unresolved::NoSentinel("none configured".into());
        for sentinel in &self.sentinels {
            let asked = self
                .query::<Option<(String, u16)>>(
                    sentinel,
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(&self.name),
                )
                .await;
            let (host, port) = match asked {
                Ok(Some(addr)) => addr,
                Ok(None) => {
                    failure = Unresolved::UnknownName;
                    continue;
                }
                Err(why) => {
                    failure = Unresolved::NoSentinel(why.to_string());
                    continue;
                }
            };
            let addr = format!("{host}:{port}");
            let info: ConnectionInfo = ConnectionAddr::Tcp(host, port)
                .into_connection_info()
                .expect("a TCP address is a valid connection info")
                .set_redis_settings(self.master_settings.clone());
            let client = redis::Client::open(info).map_err(|e| Unresolved::NotMaster {
                addr: addr.clone(),
                why: e.to_string(),
            })?;
            let role = self
                .query::<Vec<redis::Value>>(&client, &mut redis::cmd("ROLE"))
                .await;
            return match role.as_deref() {
                Ok([redis::Value::BulkString(role), ..]) if role == b"master" => {
                    Ok(Master { addr, client })
                }
                Ok(_) => Err(Unresolved::NotMaster {
                    addr,
                    why: "is not a master (yet)".into(),
                }),
                Err(why) => Err(Unresolved::NotMaster {
                    addr,
                    why: format!("does not answer ({why})"),
                }),
            };
        }
        Err(failure)
    }

    /// One command on a fresh connection, within the timeout.
    async fn query<T: redis::FromRedisValue>(
        &self,
        client: &redis::Client,
        command: &mut redis::Cmd,
    ) -> Result<T, QueryError> {
        let call = async {
            let mut connection = client.get_multiplexed_async_connection().await?;
            command.query_async::<T>(&mut connection).await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(QueryError::Failed(error.kind_text())),
            Err(_) => Err(QueryError::TimedOut),
        }
    }

    /// Follows `+switch-master` on one Sentinel (the next after each
    /// failure) and asks again on each announcement of this master.
    async fn follow_switches(self: Arc<Self>) {
        let mut backoff = Backoff::new();
        let mut attempt = 0usize;
        loop {
            if self.master.is_closed() {
                return;
            }
            let sentinel = &self.sentinels[attempt % self.sentinels.len()];
            attempt += 1;
            let subscribed = tokio::time::timeout(self.timeout, async {
                let mut pubsub = sentinel.get_async_pubsub().await?;
                pubsub.subscribe("+switch-master").await?;
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            let mut pubsub = match subscribed {
                Ok(Ok(pubsub)) => pubsub,
                failed => {
                    let why = match failed {
                        Ok(Err(error)) => error.kind_text(),
                        _ => "timed out".into(),
                    };
                    debug!(error = %why, "redis sentinel: cannot follow +switch-master; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            backoff = Backoff::new();
            let mut messages = pubsub.on_message();
            // `<name> <old host> <old port> <new host> <new port>`
            while let Some(message) = messages.next().await {
                let payload: String = message.get_payload().unwrap_or_default();
                if payload.split(' ').next() == Some(self.name.as_str()) {
                    info!(master = %self.name, switch = %payload, "redis sentinel: failover announced");
                    self.recheck();
                }
            }
            debug!("redis sentinel: the +switch-master subscription ended; again");
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_urls_password_is_the_masters_and_the_sentinels_have_their_own() {
        let sentinels = Sentinels::new(
            "redis://:master-pass@127.0.0.1:26379/2, redis://127.0.0.1:26380",
            "mymaster",
            Some("sentinel-pass"),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(sentinels.sentinels.len(), 2);
        assert_eq!(sentinels.master_settings.password(), Some("master-pass"));
        assert_eq!(sentinels.master_settings.db(), 2);
        for sentinel in &sentinels.sentinels {
            let settings = sentinel.get_connection_info().redis_settings();
            assert_eq!(settings.password(), Some("sentinel-pass"));
            assert_eq!(settings.db(), 0);
        }
        let error = Sentinels::new("redis://:hunter2@", "m", None, Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }
}
