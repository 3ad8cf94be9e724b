//! Presence in Redis: per room a hash of entries (connection id → user)
//! and a sorted set of their expiry times. Each node writes only its own
//! members' entries and rewrites all of them on every `PresenceRefresh`
//! (every third of `presence_ttl_ms` while it has members), so the entries
//! of a node that stopped (crashed, `kill -9`, cut off) expire within
//! `presence_ttl_ms`.
//!
//! Every write is one script run per room (`PRESENCE_CHANGE` in
//! [`scripts`](super::scripts)) that also sweeps the room's expired entries
//! and publishes the net change on the room's channel, where every node
//! following the room hears it as `EngineEvent::PresenceChanged`. A refresh
//! is therefore also each node's periodic sweep of the rooms it follows: a
//! dead node's entries are reported as left within a third of the
//! time-to-live after they expire. A list sweeps (and publishes) too.
//!
//! Presence requests are taken in batches (everything waiting) and run in
//! request order per room: the adds and removes of one room up to its next
//! list become one script run, so a burst of joins or leaves (many
//! heartbeat timeouts at once) is one change for the other nodes, and a
//! `PresenceClear` (shutdown) is one change per room.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use roomcast_core::engine::{EngineError, EngineEvent, EngineRequest, PresenceEntry};
use roomcast_core::{ConnectionId, RoomName};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::connection::Commands;
use super::redis::{run_call, CallError};
use super::scripts::{presence_user, presence_value, RoomKeys, Scripts};

/// Presence requests taken in one batch, at most.
const BATCH_MAX: usize = 1024;

/// Entry operations in one script run, at most (a bigger change is cut
/// into several runs, which the other nodes may hear as several changes).
const OPS_PER_SCRIPT_MAX: usize = 1000;

/// One write to a room's entries.
#[derive(Debug)]
enum Op {
    /// Add or refresh the entry (connection, stored value).
    Put(ConnectionId, String),
    /// Remove the entry.
    Remove(ConnectionId),
}

/// The presence lane of one node.
pub(crate) struct PresenceLane {
    pub(crate) connection: watch::Receiver<Option<Commands>>,
    pub(crate) scripts: Arc<Scripts>,
    pub(crate) prefix: String,
    pub(crate) timeout: Duration,
    pub(crate) ttl_ms: u64,
    /// Rooms whose changes are published (see `RedisSettings`).
    pub(crate) diff_prefixes: Vec<String>,
    pub(crate) requests: mpsc::Receiver<EngineRequest>,
    pub(crate) events: mpsc::Sender<EngineEvent>,
    /// This node's members, per room: what a refresh writes again.
    pub(crate) entries: HashMap<RoomName, BTreeMap<ConnectionId, Option<String>>>,
}

impl PresenceLane {
    /// Runs until the engine stops.
    pub(crate) async fn run(mut self) {
        let mut batch = Vec::with_capacity(BATCH_MAX);
        while self.requests.recv_many(&mut batch, BATCH_MAX).await > 0 {
            if !self.run_batch(std::mem::take(&mut batch)).await {
                return;
            }
        }
    }

    /// Runs a batch of requests in order per room; `false` when the hub
    /// is gone.
    async fn run_batch(&mut self, requests: Vec<EngineRequest>) -> bool {
        // Per room, the writes not yet run (rooms are independent).
        let mut pending: BTreeMap<RoomName, Vec<Op>> = BTreeMap::new();
        for request in requests {
            match request {
                EngineRequest::PresenceAdd { room, entry } => {
                    let value = presence_value(entry.user.as_deref());
                    self.entries
                        .entry(room.clone())
                        .or_default()
                        .insert(entry.conn, entry.user);
                    pending
                        .entry(room)
                        .or_default()
                        .push(Op::Put(entry.conn, value));
                }
                EngineRequest::PresenceRemove { room, conn } => {
                    if let Some(entries) = self.entries.get_mut(&room) {
                        entries.remove(&conn);
                        if entries.is_empty() {
                            self.entries.remove(&room);
                        }
                    }
                    pending.entry(room).or_default().push(Op::Remove(conn));
                }
                EngineRequest::PresenceClear => {
                    for (room, entries) in self.entries.drain() {
                        let ops = pending.entry(room).or_default();
                        ops.extend(entries.into_keys().map(Op::Remove));
                    }
                }
                EngineRequest::PresenceRefresh => {
                    for (room, entries) in &self.entries {
                        let ops = pending.entry(room.clone()).or_default();
                        ops.extend(
                            entries.iter().map(|(conn, user)| {
                                Op::Put(*conn, presence_value(user.as_deref()))
                            }),
                        );
                    }
                }
                EngineRequest::PresenceList { call, room } => {
                    // The room's earlier writes land first.
                    if let Some(ops) = pending.remove(&room) {
                        self.change(&room, ops).await;
                    }
                    let result = self.list(&room).await.map_err(EngineError::from);
                    let answer = EngineEvent::Presence { call, result };
                    if self.events.send(answer).await.is_err() {
                        return false;
                    }
                }
                other => debug_assert!(false, "not a presence request: {other:?}"),
            }
        }
        let this = &*self;
        join_all(
            pending
                .into_iter()
                .map(|(room, ops)| async move { this.change(&room, ops).await }),
        )
        .await;
        true
    }

    /// Runs a room's writes (one script run per [`OPS_PER_SCRIPT_MAX`]).
    /// A failure is logged and otherwise left alone: a lost add is written
    /// again by the next refresh; a lost remove expires within the
    /// time-to-live and is then swept (and told) by another write.
    async fn change(&self, room: &RoomName, ops: Vec<Op>) {
        for chunk in ops.chunks(OPS_PER_SCRIPT_MAX) {
            if let Err(error) = self.run_change(room, chunk).await {
                debug!(%error, room = %room.as_str(), "presence write failed");
            }
        }
    }

    /// The channel a room's presence changes are published on, or `""`
    /// (not published) for rooms without presence diffs.
    fn change_channel(&self, room: &RoomName, keys: &RoomKeys) -> String {
        let published = self
            .diff_prefixes
            .iter()
            .any(|prefix| room.as_str().starts_with(prefix.as_str()));
        if published {
            keys.channel.clone()
        } else {
            String::new()
        }
    }

    async fn run_change(&self, room: &RoomName, ops: &[Op]) -> Result<(), CallError> {
        if ops.is_empty() {
            return Ok(());
        }
        let keys = RoomKeys::new(&self.prefix, room);
        let channel = self.change_channel(room, &keys);
        let scripts = self.scripts.clone();
        let ttl_ms = self.ttl_ms;
        run_call(&self.connection, self.timeout, move |mut conn| async move {
            let mut invocation = scripts.presence_change.prepare_invoke();
            invocation
                .key(&keys.presence)
                .key(&keys.presence_expiry)
                .arg(ttl_ms)
                .arg(&channel);
            for op in ops {
                match op {
                    Op::Put(conn_id, value) => {
                        invocation.arg("+").arg(conn_id.to_string()).arg(value)
                    }
                    Op::Remove(conn_id) => invocation.arg("-").arg(conn_id.to_string()).arg(""),
                };
            }
            invocation.invoke_async::<i64>(&mut conn).await.map(|_| ())
        })
        .await
    }

    /// Every live entry of the room, on every node, in connection order.
    async fn list(&self, room: &RoomName) -> Result<Vec<PresenceEntry>, CallError> {
        let keys = RoomKeys::new(&self.prefix, room);
        let channel = self.change_channel(room, &keys);
        let scripts = self.scripts.clone();
        let flat: Vec<String> =
            run_call(&self.connection, self.timeout, move |mut conn| async move {
                scripts
                    .presence_list
                    .key(&keys.presence)
                    .key(&keys.presence_expiry)
                    .arg(&channel)
                    .invoke_async::<Vec<String>>(&mut conn)
                    .await
            })
            .await?;
        let mut entries: Vec<PresenceEntry> = flat
            .chunks_exact(2)
            .filter_map(|pair| {
                Some(PresenceEntry {
                    conn: ConnectionId::parse(&pair[0])?,
                    user: presence_user(&pair[1]),
                })
            })
            .collect();
        entries.sort();
        Ok(entries)
    }
}
