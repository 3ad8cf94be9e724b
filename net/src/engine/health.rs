//! The Redis engine's command connection and its health: connecting (with
//! backoff), the check every second that makes readiness (`PING`, then
//! the node's heartbeat, a write, so a Redis that answers `READONLY` is
//! not ready), and opening the connection anew where that can help: after
//! `READONLY` (a demoted master behind one endpoint), and when Sentinel
//! names another master.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::connection::{master_changed, Commands, KindText, Target};
use super::redis::RedisSettings;
use super::scripts::{cluster_key, Scripts};
use super::{Backoff, ReadyFlags};

/// How long a node counts as alive after its last heartbeat, in ms.
const NODE_TTL_MS: u64 = 5_000;

/// How often the command connection is checked (readiness) and the node's
/// heartbeat written.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Connects the command connection (retrying with backoff until it
/// succeeds), then checks it every second for readiness (and writes this
/// node's heartbeat). Once connected, the connection ([`Commands`])
/// reconnects by itself after failures, to the same server; a new one is
/// opened when the server answers `READONLY` (a demoted master: a managed
/// endpoint or proxy may lead elsewhere now) and, with Sentinel, when the
/// master changes.
pub(crate) async fn connect(
    target: Arc<Target>,
    settings: RedisSettings,
    scripts: Arc<Scripts>,
    connection: watch::Sender<Option<Commands>>,
    flags: Arc<ReadyFlags>,
    shown_url: String,
) {
    let timeout = settings.timeout;
    let cluster_key = cluster_key(&settings.prefix);
    let mut master_changes = target.master_changes();
    let following = master_changes.is_some();
    let mut backoff = Backoff::new();
    // With Sentinel, the master the open connection goes to.
    let mut connected_to = target.master_addr();
    let mut manager = loop {
        match target.connect(timeout).await {
            Ok(manager) => break manager,
            Err(error) => {
                let delay = backoff.next_delay();
                warn!(redis = %shown_url, error = %error.kind_text(), retry_in_ms = delay.as_millis() as u64, "cannot connect to redis; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = master_changed(&mut master_changes) => {}
                    _ = connection.closed() => return,
                }
                connected_to = target.master_addr();
            }
        }
    };
    info!(redis = %shown_url, "redis connected");
    if connection.send(Some(manager.clone())).is_err() {
        return;
    }
    let mut read_only = false;
    loop {
        // A new connection where the open one cannot help: with Sentinel,
        // whenever it goes elsewhere than the master named now (tried
        // again every round until one opens); without, after `READONLY`
        // (behind a managed endpoint or proxy, a new one may reach the new
        // master).
        let reconnect = if following {
            target.master_addr().is_some() && target.master_addr() != connected_to
        } else {
            read_only
        };
        if reconnect {
            if following {
                // Calls wait (within their timeouts) for the new master's
                // connection rather than go to the old one.
                connection.send_replace(None);
            }
            let aiming = target.master_addr();
            match target.connect(timeout).await {
                Ok(fresh) => {
                    manager = fresh;
                    connected_to = aiming;
                    info!(redis = %shown_url, master = ?connected_to, "redis command connection opened anew");
                    if connection.send(Some(manager.clone())).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    warn!(redis = %shown_url, error = %error.kind_text(), "redis command connection not opened anew; again in a second");
                }
            }
        }
        let health = check(&mut manager, &scripts, &settings, &cluster_key, &flags).await;
        let up = health != Health::Down;
        read_only = health == Health::ReadOnly;
        if flags.commands.swap(up, Ordering::SeqCst) != up {
            if up {
                info!(redis = %shown_url, "redis answers again");
            } else {
                warn!(redis = %shown_url, "redis does not answer; publishes fail until it is back");
            }
        }
        if flags.read_only.swap(read_only, Ordering::SeqCst) != read_only {
            if read_only {
                warn!(redis = %shown_url, "redis answers READONLY (a replica, such as a demoted master): not ready, publishes fail until a master answers");
            } else {
                info!(redis = %shown_url, "redis accepts writes again");
            }
        }
        if health != Health::Writable {
            // With Sentinel: which is the master now?
            target.suspect();
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = master_changed(&mut master_changes) => {}
            _ = connection.closed() => return,
        }
    }
}

/// What the health check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    /// PING and the heartbeat's write worked (or the heartbeat failed
    /// otherwise: only READONLY says appends cannot succeed).
    Writable,
    /// PING works but writes answer `READONLY`.
    ReadOnly,
    /// No answer to PING.
    Down,
}

/// PING, then this node's heartbeat (a write: it fails with `READONLY`
/// on a replica), recording the deployment's figures it answers.
async fn check(
    manager: &mut Commands,
    scripts: &Scripts,
    settings: &RedisSettings,
    cluster_key: &str,
    flags: &ReadyFlags,
) -> Health {
    let timeout = settings.timeout;
    let ping = tokio::time::timeout(
        timeout,
        redis::cmd("PING").query_async::<String>(&mut *manager),
    )
    .await;
    if !matches!(ping, Ok(Ok(_))) {
        return Health::Down;
    }
    let mut heartbeat = scripts.heartbeat.key(cluster_key);
    let connections = settings.local_connections.get().max(0);
    heartbeat
        .arg(&settings.node)
        .arg(NODE_TTL_MS)
        .arg(connections);
    let heartbeat = heartbeat.invoke_async::<(usize, usize)>(&mut *manager);
    match tokio::time::timeout(timeout, heartbeat).await {
        Ok(Ok((nodes, connections))) => {
            flags.nodes.store(nodes, Ordering::SeqCst);
            flags.connections.store(connections, Ordering::SeqCst);
            Health::Writable
        }
        Ok(Err(error)) if error.code() == Some("READONLY") => Health::ReadOnly,
        _ => Health::Writable,
    }
}
