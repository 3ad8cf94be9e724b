//! Presence in Redis: per room a hash of entries (connection id → user)
//! and a sorted set of their expiry times. Each node writes only its own
//! members' entries and rewrites all of them on every `PresenceRefresh`
//! (every third of `presence_ttl_ms` while it has members), so the entries
//! of a node that stopped (crashed, `kill -9`, cut off) expire within
//! `presence_ttl_ms`; a list drops expired entries before answering.
//!
//! Presence requests run one at a time, in request order, so a join's add
//! lands before a later list or remove of the same node.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use roomcast_core::engine::{EngineError, EngineEvent, EngineRequest, PresenceEntry};
use roomcast_core::{ConnectionId, RoomName};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::connection::Commands;
use super::redis::run_call;
use super::scripts::{presence_user, presence_value, RoomKeys, Scripts};

/// Some members of a room: connection and user.
type Entries = Vec<(ConnectionId, Option<String>)>;

/// The presence lane of one node.
pub(crate) struct PresenceLane {
    pub(crate) connection: watch::Receiver<Option<Commands>>,
    pub(crate) scripts: Arc<Scripts>,
    pub(crate) prefix: String,
    pub(crate) timeout: Duration,
    pub(crate) ttl_ms: u64,
    pub(crate) requests: mpsc::Receiver<EngineRequest>,
    pub(crate) events: mpsc::Sender<EngineEvent>,
    /// This node's members, per room: what a refresh writes again.
    pub(crate) entries: HashMap<RoomName, BTreeMap<ConnectionId, Option<String>>>,
}

impl PresenceLane {
    /// Runs until the engine stops.
    pub(crate) async fn run(mut self) {
        while let Some(request) = self.requests.recv().await {
            match request {
                EngineRequest::PresenceAdd { room, entry } => {
                    self.entries
                        .entry(room.clone())
                        .or_default()
                        .insert(entry.conn, entry.user.clone());
                    let put = vec![(entry.conn, entry.user)];
                    if let Err(error) = self.put(&room, put).await {
                        // The next refresh writes it again.
                        debug!(%error, "presence add failed");
                    }
                }
                EngineRequest::PresenceRemove { room, conn } => {
                    if let Some(entries) = self.entries.get_mut(&room) {
                        entries.remove(&conn);
                        if entries.is_empty() {
                            self.entries.remove(&room);
                        }
                    }
                    if let Err(error) = self.remove(&room, conn).await {
                        // Not refreshed any more: gone within the time-to-live.
                        debug!(%error, "presence remove failed");
                    }
                }
                EngineRequest::PresenceList { call, room } => {
                    let result = self.list(&room).await.map_err(EngineError::Unavailable);
                    let answer = EngineEvent::Presence { call, result };
                    if self.events.send(answer).await.is_err() {
                        return;
                    }
                }
                EngineRequest::PresenceRefresh => {
                    let rooms: Vec<(RoomName, Entries)> = self
                        .entries
                        .iter()
                        .map(|(room, entries)| {
                            let entries = entries.iter().map(|(c, u)| (*c, u.clone())).collect();
                            (room.clone(), entries)
                        })
                        .collect();
                    let this = &self;
                    let results = join_all(
                        rooms
                            .into_iter()
                            .map(|(room, put)| async move { this.put(&room, put).await }),
                    )
                    .await;
                    if let Some(Err(error)) = results.into_iter().find(Result::is_err) {
                        debug!(%error, "presence refresh failed");
                    }
                }
                other => debug_assert!(false, "not a presence request: {other:?}"),
            }
        }
    }

    /// Writes entries of a room (they live another time-to-live).
    async fn put(&self, room: &RoomName, entries: Entries) -> Result<(), String> {
        if entries.is_empty() {
            return Ok(());
        }
        let keys = RoomKeys::new(&self.prefix, room);
        let scripts = self.scripts.clone();
        let ttl_ms = self.ttl_ms;
        run_call(&self.connection, self.timeout, move |mut conn| async move {
            let mut invocation = scripts.presence_put.prepare_invoke();
            invocation
                .key(&keys.presence)
                .key(&keys.presence_expiry)
                .arg(ttl_ms);
            for (conn_id, user) in &entries {
                invocation
                    .arg(conn_id.to_string())
                    .arg(presence_value(user.as_deref()));
            }
            invocation.invoke_async::<i64>(&mut conn).await.map(|_| ())
        })
        .await
    }

    async fn remove(&self, room: &RoomName, conn_id: ConnectionId) -> Result<(), String> {
        let keys = RoomKeys::new(&self.prefix, room);
        let scripts = self.scripts.clone();
        run_call(&self.connection, self.timeout, move |mut conn| async move {
            scripts
                .presence_remove
                .key(&keys.presence)
                .key(&keys.presence_expiry)
                .arg(conn_id.to_string())
                .invoke_async::<i64>(&mut conn)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Every live entry of the room, on every node, in connection order.
    async fn list(&self, room: &RoomName) -> Result<Vec<PresenceEntry>, String> {
        let keys = RoomKeys::new(&self.prefix, room);
        let scripts = self.scripts.clone();
        let flat: Vec<String> =
            run_call(&self.connection, self.timeout, move |mut conn| async move {
                scripts
                    .presence_list
                    .key(&keys.presence)
                    .key(&keys.presence_expiry)
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
