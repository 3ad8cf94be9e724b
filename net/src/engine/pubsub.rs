//! The Redis engine's live stream: one dedicated pub/sub connection per
//! node, subscribed to the channel of every room the node follows.
//!
//! Interest on/off arrives as [`Subscription`] commands; those waiting are
//! taken together and sent as one `SUBSCRIBE` and one `UNSUBSCRIBE`. A
//! subscribe is acknowledged once Redis confirmed it, so the engine can
//! hold a room's read until then (a read issued after interest-on must
//! reflect every append whose live message the node will not receive).
//!
//! When the connection is lost (Redis restarted, the connection killed,
//! a network fault), live messages are lost with it: the task reconnects
//! with capped, jittered backoff, subscribes every followed room again, and
//! then sends the core [`EngineEvent::StreamReset`] so it reads every room
//! it follows and refills (or announces) what was missed.
//!
//! A connection can also go quiet without failing: it still answers PING
//! but no longer receives what is published (a half-open TCP connection, a
//! proxy or a failover that lost the subscriptions). So the stream is
//! probed end to end ([`Probe`]): every `interval`, a message is published
//! to this node's probe channel through the command connection, and it
//! must come back on the pub/sub connection within `timeout`, or the
//! connection counts as lost like any other. With Sentinel, the
//! connection also moves when the master changes.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use roomcast_core::engine::{EngineEvent, Numbered, PresenceEntry};
use roomcast_core::RoomName;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::connection::{master_changed, Commands, Target};
use super::redis::run_call;
use super::scripts::{
    direct_channel, is_presence, parse_direct, parse_live, parse_presence, probe_channel,
    room_of_channel, RoomKeys,
};
use super::Backoff;

/// The end-to-end check of the pub/sub connection.
pub(crate) struct Probe {
    /// The command connection, which publishes the probes.
    pub(crate) connection: watch::Receiver<Option<Commands>>,
    /// How often a probe is published.
    pub(crate) interval: Duration,
    /// How long it may take to come back.
    pub(crate) timeout: Duration,
}

/// A change of the rooms the node follows.
pub(crate) enum Subscription {
    /// Follow the room; `ack` is answered once Redis confirmed it.
    On(RoomName, oneshot::Sender<()>),
    /// Stop following the room.
    Off(RoomName),
}

/// What the subscriber needs.
pub(crate) struct Subscriber {
    /// Where the pub/sub connection goes (any node of a cluster).
    pub(crate) target: Arc<Target>,
    pub(crate) prefix: String,
    /// This node's id (its own direct messages come back: skipped).
    pub(crate) node: String,
    pub(crate) timeout: Duration,
    pub(crate) commands: mpsc::UnboundedReceiver<Subscription>,
    pub(crate) events: mpsc::Sender<EngineEvent>,
    /// Whether the pub/sub connection is up (readiness).
    pub(crate) connected: Arc<AtomicBool>,
    /// Redacted URL, for logs.
    pub(crate) shown_url: String,
    pub(crate) probe: Probe,
}

/// Why a connected session ended.
/// Why a call on the pub/sub connection failed.
#[derive(Debug)]
enum SubscriberCallError {
    Redis(redis::RedisError),
    TimedOut,
}

impl std::fmt::Display for SubscriberCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubscriberCallError::Redis(error) => write!(f, "{error}"),
            SubscriberCallError::TimedOut => f.write_str("timed out"),
        }
    }
}

enum Ended {
    /// The engine is gone: stop.
    Stop,
    /// The connection failed: reconnect.
    Lost(String),
    /// The master changed (Sentinel): move there.
    Moved,
}

impl Subscriber {
    /// Runs until the engine drops its command sender.
    pub(crate) async fn run(mut self) {
        let mut followed: BTreeSet<RoomName> = BTreeSet::new();
        let mut acks: HashMap<RoomName, Vec<oneshot::Sender<()>>> = HashMap::new();
        let mut backoff = Backoff::new();
        let mut sessions = 0u64;
        // Connection attempts so far: a cluster's next seed after a failure.
        let mut attempts = 0u64;
        let mut master_changes = self.target.master_changes();
        loop {
            let connected = match self.target.pubsub_client(attempts) {
                Some(client) => tokio::time::timeout(self.timeout, client.get_async_pubsub())
                    .await
                    .map_err(|_| "timed out".to_owned())
                    .and_then(|connected| connected.map_err(|e| e.to_string())),
                None => Err("the sentinels named no usable master yet".to_owned()),
            };
            let pubsub = match connected {
                Ok(pubsub) => pubsub,
                Err(why) => {
                    attempts += 1;
                    let delay = backoff.next_delay();
                    warn!(redis = %self.shown_url, error = %why, retry_in_ms = delay.as_millis() as u64, "redis pub/sub connection failed");
                    // Keep taking commands while disconnected.
                    let sleep = tokio::time::sleep(delay);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break,
                            _ = master_changed(&mut master_changes) => break,
                            command = self.commands.recv() => match command {
                                Some(command) => apply(command, &mut followed, &mut acks),
                                None => return,
                            },
                        }
                    }
                    continue;
                }
            };
            let (sink, stream) = pubsub.split();
            let ended = self
                .session(
                    (sink, stream),
                    &mut followed,
                    &mut acks,
                    sessions > 0,
                    &mut master_changes,
                )
                .await;
            self.connected.store(false, Ordering::SeqCst);
            sessions += 1;
            attempts += 1;
            match ended {
                Ended::Stop => return,
                Ended::Lost(why) => {
                    warn!(redis = %self.shown_url, error = %why, "redis pub/sub connection lost; live messages may be missed until it is back")
                }
                Ended::Moved => {
                    info!(redis = %self.shown_url, "redis master changed; the pub/sub connection moves there");
                    continue;
                }
            }
            backoff = Backoff::new();
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// One connected session: subscribe what is followed, then serve
    /// commands and messages until the connection fails.
    async fn session(
        &mut self,
        (mut sink, mut stream): (redis::aio::PubSubSink, redis::aio::PubSubStream),
        followed: &mut BTreeSet<RoomName>,
        acks: &mut HashMap<RoomName, Vec<oneshot::Sender<()>>>,
        reconnected: bool,
        master_changes: &mut Option<watch::Receiver<Option<super::sentinel::Master>>>,
    ) -> Ended {
        let mut channels: Vec<String> = followed
            .iter()
            .map(|room| RoomKeys::new(&self.prefix, room).channel)
            .collect();
        // Every node follows the direct messages, and its own probes.
        channels.push(direct_channel(&self.prefix));
        let probe_channel = probe_channel(&self.prefix, &self.node);
        channels.push(probe_channel.clone());
        if let Err(why) = self.call(sink.subscribe(&channels)).await {
            return Ended::Lost(why.to_string());
        }
        self.connected.store(true, Ordering::SeqCst);
        info!(redis = %self.shown_url, rooms = channels.len() - 2, "redis pub/sub connected");
        for (_, waiting) in acks.drain() {
            for ack in waiting {
                let _ = ack.send(());
            }
        }
        if reconnected && self.events.send(EngineEvent::StreamReset).await.is_err() {
            return Ended::Stop;
        }
        let mut probe = tokio::time::interval(self.probe.interval);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        probe.tick().await;
        // Probes are numbered within the session; a published one is
        // reported on `published` (the PUBLISH runs on its own task, so a
        // slow command connection does not hold live messages up).
        let (published_tx, mut published) = mpsc::unbounded_channel::<u64>();
        let mut probes_sent = 0u64;
        let mut probe_received = 0u64;
        // The oldest published probe not back yet, and when it is due.
        let mut awaited: Option<(u64, tokio::time::Instant)> = None;
        loop {
            let due = awaited.map(|(_, due)| due);
            tokio::select! {
                biased;
                _ = master_changed(master_changes) => return Ended::Moved,
                _ = async { tokio::time::sleep_until(due.expect("guarded")).await }, if due.is_some() => {
                    let (missing, _) = awaited.expect("guarded");
                    return Ended::Lost(format!(
                        "probe {missing} published but not received within {} ms: the connection stopped delivering",
                        self.probe.timeout.as_millis()
                    ));
                }
                Some(n) = published.recv() => {
                    if n > probe_received && awaited.is_none() {
                        awaited = Some((n, tokio::time::Instant::now() + self.probe.timeout));
                    }
                }
                _ = probe.tick() => {
                    // A PING on the connection must come back in time...
                    let ping = sink.ping::<redis::Value>();
                    if let Err(why) = self.call(async { ping.await.map(|_| ()) }).await {
                        return Ended::Lost(format!("ping failed: {why}"));
                    }
                    // ...and a message published to its probe channel
                    // must arrive (checked once PUBLISH succeeded: with the
                    // command connection down, readiness says so already).
                    probes_sent += 1;
                    let n = probes_sent;
                    let connection = self.probe.connection.clone();
                    let channel = probe_channel.clone();
                    let timeout = self.timeout;
                    let published_tx = published_tx.clone();
                    tokio::spawn(async move {
                        let sent = run_call(&connection, timeout, |mut conn| async move {
                            redis::cmd("PUBLISH")
                                .arg(&channel)
                                .arg(n)
                                .query_async::<i64>(&mut conn)
                                .await
                        })
                        .await;
                        if sent.is_ok() {
                            let _ = published_tx.send(n);
                        }
                    });
                }
                command = self.commands.recv() => {
                    let Some(command) = command else { return Ended::Stop };
                    // Every command waiting now, as one SUBSCRIBE and one UNSUBSCRIBE.
                    let before = followed.clone();
                    apply(command, followed, acks);
                    while let Ok(command) = self.commands.try_recv() {
                        apply(command, followed, acks);
                    }
                    let on: Vec<String> = followed
                        .difference(&before)
                        .map(|room| RoomKeys::new(&self.prefix, room).channel)
                        .collect();
                    let off: Vec<String> = before
                        .difference(followed)
                        .map(|room| RoomKeys::new(&self.prefix, room).channel)
                        .collect();
                    if !off.is_empty() {
                        if let Err(why) = self.call(sink.unsubscribe(&off)).await {
                            return Ended::Lost(why.to_string());
                        }
                    }
                    if !on.is_empty() {
                        if let Err(why) = self.call(sink.subscribe(&on)).await {
                            return Ended::Lost(why.to_string());
                        }
                    }
                    debug!(on = on.len(), off = off.len(), "redis pub/sub subscriptions changed");
                    // Everything followed is now subscribed (a room both
                    // turned on earlier and still on was acknowledged then).
                    for (_, waiting) in acks.drain() {
                        for ack in waiting {
                            let _ = ack.send(());
                        }
                    }
                }
                message = stream.next() => {
                    let Some(message) = message else {
                        return Ended::Lost("the connection closed".to_owned());
                    };
                    // With the messages already waiting behind it: consecutive
                    // presence changes of one room go to the core as one.
                    let mut events = Vec::new();
                    let mut closed = false;
                    let mut take = |message: &redis::Msg, events: &mut Vec<EngineEvent>| {
                        if message.get_channel_name() == probe_channel {
                            let n: u64 = message.get_payload().unwrap_or(0);
                            probe_received = probe_received.max(n);
                        } else {
                            push_merged(events, self.event(message));
                        }
                    };
                    take(&message, &mut events);
                    while events.len() < MERGE_MAX {
                        match stream.next().now_or_never() {
                            Some(Some(message)) => take(&message, &mut events),
                            Some(None) => {
                                closed = true;
                                break;
                            }
                            None => break,
                        }
                    }
                    if awaited.is_some_and(|(awaited, _)| awaited <= probe_received) {
                        awaited = None;
                    }
                    for event in events {
                        if self.events.send(event).await.is_err() {
                            return Ended::Stop;
                        }
                    }
                    if closed {
                        return Ended::Lost("the connection closed".to_owned());
                    }
                }
            }
        }
    }

    /// One (un)subscribe, within the call timeout.
    async fn call(
        &self,
        request: impl std::future::Future<Output = redis::RedisResult<()>>,
    ) -> Result<(), SubscriberCallError> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(SubscriberCallError::Redis(error)),
            Err(_) => Err(SubscriberCallError::TimedOut),
        }
    }

    /// The live message (or another node's direct message) a pub/sub
    /// message carries.
    fn event(&self, message: &redis::Msg) -> Option<EngineEvent> {
        let payload: String = message.get_payload().ok()?;
        if message.get_channel_name() == direct_channel(&self.prefix) {
            let (origin, target, frame) = parse_direct(&payload)?;
            return (origin != self.node).then(|| EngineEvent::Direct {
                target,
                frame: frame.to_owned().into(),
            });
        }
        let room = room_of_channel(&self.prefix, message.get_channel_name())?;
        if is_presence(&payload) {
            let Some(change) = parse_presence(&payload) else {
                warn!(room = %room.as_str(), "malformed presence message on a room channel; ignored");
                return None;
            };
            return Some(EngineEvent::PresenceChanged {
                room,
                joined: change.joined,
                left: change.left,
                connections: change.connections,
            });
        }
        let Some(live) = parse_live(&payload) else {
            warn!(room = %room.as_str(), "malformed live message on a room channel; ignored");
            return None;
        };
        Some(EngineEvent::Live(Numbered {
            room,
            epoch: live.epoch.into(),
            seq: live.seq,
            frame: live.frame.to_owned().into(),
            series: live.series.map(str::to_owned),
        }))
    }
}

/// Events taken from the pub/sub stream in one go, at most (the rest wait
/// for the next round).
const MERGE_MAX: usize = 256;

/// Appends `event`, merged into the last one when both are presence
/// changes of the same room (nothing else is merged or reordered).
fn push_merged(events: &mut Vec<EngineEvent>, event: Option<EngineEvent>) {
    let Some(event) = event else {
        return;
    };
    if let (
        Some(EngineEvent::PresenceChanged {
            room,
            joined,
            left,
            connections,
        }),
        EngineEvent::PresenceChanged {
            room: later_room,
            joined: later_joined,
            left: later_left,
            connections: later_connections,
        },
    ) = (events.last_mut(), &event)
    {
        if *room == *later_room {
            merge_presence(joined, left, later_joined, later_left);
            *connections = *later_connections;
            return;
        }
    }
    events.push(event);
}

/// Folds a later change into an earlier one: a connection that joined and
/// then left (or left and joined again) is in neither list.
fn merge_presence(
    joined: &mut Vec<PresenceEntry>,
    left: &mut Vec<PresenceEntry>,
    later_joined: &[PresenceEntry],
    later_left: &[PresenceEntry],
) {
    for entry in later_left {
        match joined.iter().position(|e| e.conn == entry.conn) {
            Some(at) => {
                joined.remove(at);
            }
            None => left.push(entry.clone()),
        }
    }
    for entry in later_joined {
        match left.iter().position(|e| e.conn == entry.conn) {
            Some(at) => {
                left.remove(at);
            }
            None => joined.push(entry.clone()),
        }
    }
    joined.sort();
    left.sort();
}

/// Applies a command to the followed set (acknowledged once subscribed).
fn apply(
    command: Subscription,
    followed: &mut BTreeSet<RoomName>,
    acks: &mut HashMap<RoomName, Vec<oneshot::Sender<()>>>,
) {
    match command {
        Subscription::On(room, ack) => {
            followed.insert(room.clone());
            acks.entry(room).or_default().push(ack);
        }
        Subscription::Off(room) => {
            followed.remove(&room);
            // Waiters see the sender dropped: the room is not followed.
            acks.remove(&room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_core::ConnectionId;

    fn entry(n: u128) -> PresenceEntry {
        PresenceEntry {
            conn: ConnectionId::from_u128(n),
            user: Some(format!("u{n}")),
        }
    }

    fn change(room: &str, joined: &[u128], left: &[u128], connections: usize) -> EngineEvent {
        EngineEvent::PresenceChanged {
            room: RoomName::new(room).unwrap(),
            joined: joined.iter().map(|&n| entry(n)).collect(),
            left: left.iter().map(|&n| entry(n)).collect(),
            connections,
        }
    }

    #[test]
    fn consecutive_changes_of_a_room_merge_and_net_out() {
        let mut events = Vec::new();
        push_merged(&mut events, Some(change("a", &[1], &[], 1)));
        push_merged(&mut events, Some(change("a", &[3, 2], &[], 3)));
        push_merged(&mut events, Some(change("a", &[], &[1, 4], 1)));
        assert_eq!(events, vec![change("a", &[2, 3], &[4], 1)]);
        // Another room, or anything else, is not merged across.
        push_merged(&mut events, Some(change("b", &[5], &[], 1)));
        push_merged(&mut events, Some(EngineEvent::StreamReset));
        push_merged(&mut events, Some(change("b", &[], &[5], 0)));
        push_merged(&mut events, Some(change("b", &[5], &[], 1)));
        push_merged(&mut events, None);
        assert_eq!(
            events,
            vec![
                change("a", &[2, 3], &[4], 1),
                change("b", &[5], &[], 1),
                EngineEvent::StreamReset,
                change("b", &[], &[], 1),
            ]
        );
    }
}
