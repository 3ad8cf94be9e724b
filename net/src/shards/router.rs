//! The shard router: one in-process task between a node's shards and its
//! one engine link (the in-memory engine's task, Redis, or the simulator's
//! broker), so that to the engine the shards are **one node**, and to each
//! shard the engine is its own, as the seam promises (`docs/engine.md`).
//!
//! - **Calls.** Each shard's core numbers its calls from 1; the router
//!   gives every forwarded call a node-wide id and sends the answer back
//!   to the shard that asked, under the shard's own id.
//! - **Interest** is counted per room: the engine hears "on" when the
//!   first shard follows a room and "off" when the last stops. Live
//!   messages and presence changes go to the shards that follow the room.
//!   A shard's read sent after its interest-on reaches the engine after
//!   it, and live messages reach the router in the engine's order, so the
//!   seam's rule holds per shard: a read reflects every append whose live
//!   message the shard will not receive.
//! - **Members** are counted per room and shard from the presence adds
//!   and removes passing through, so an append's answer can carry the
//!   members the room has on the *other* shards (`peer_members`): the
//!   publisher's `delivered` counts the whole node.
//! - **Presence** entries are the engine's, all under the node: lists and
//!   counts are node-wide. A shard's `PresenceClear` (sent once, when it
//!   shuts down) is forwarded once every shard has sent its own: the
//!   shards drain together, and clearing the node's entries earlier would
//!   remove the members of shards still closing.
//! - **Direct** messages (`/api/send`) from a shard go on to the engine
//!   (other nodes); the HTTP handler has already handed the message to
//!   every local shard itself (so it can count them). Direct messages and
//!   stream resets from the engine go to every shard.
//!
//! - **The asking shard hears its answer first** when the engine is the
//!   in-memory engine's task (this node is its only node): each live
//!   message of a room is then the echo of the oldest append to that room
//!   still unanswered, so the router holds the asking shard's copy and
//!   sends it just after the append's answer. The shard then fans the
//!   message out on the answer, where it knows which broadcast it was
//!   (its hub times `publish_to_write_seconds` from it), and ignores the
//!   copy. The engine sends the two back to back, so nothing waits
//!   behind the held copy. With Redis or the broker, live messages also
//!   come from other nodes, and the engine's order is kept.
//!
//! Nothing is dropped: events are sent to a shard with backpressure (the
//! router waits for a slow shard rather than losing an answer or a live
//! message), and a call the engine can no longer take (its task is gone)
//! is answered here with a failure. No cycle can form: a shard never waits on the router (its
//! driver queues requests the full channel does not take).

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use roomcast_core::engine::{CallId, EngineError, EngineEvent, EngineRequest};
use roomcast_core::RoomName;
use tokio::sync::mpsc;

use crate::engine::EngineLink;

/// Capacity of each shard's request and event channels.
pub(crate) const SHARD_CHANNEL_CAPACITY: usize = 4096;

/// Rooms followed by at least one shard, for `/ws/status`.
pub(crate) type FollowedRooms = Arc<AtomicUsize>;

/// Starts the router over `engine` for `shards` shards; returns each
/// shard's link (in shard order), the followed-room count and the task.
/// The task ends once every shard has dropped its requests sender, after
/// which the engine sees its own requests channel close.
///
/// `only_node`: the engine serves this node alone (the in-memory engine's
/// task), so its live messages echo this node's appends in order (see the
/// module docs).
pub(crate) fn spawn(
    engine: EngineLink,
    shards: usize,
    only_node: bool,
) -> (Vec<EngineLink>, FollowedRooms, tokio::task::JoinHandle<()>) {
    debug_assert!(
        shards > 1,
        "a node of one shard talks to its engine directly"
    );
    let mut links = Vec::with_capacity(shards);
    let mut inboxes = Vec::with_capacity(shards);
    let mut outboxes = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (requests, inbox) = mpsc::channel(SHARD_CHANNEL_CAPACITY);
        let (outbox, events) = mpsc::channel(SHARD_CHANNEL_CAPACITY);
        links.push(EngineLink {
            requests,
            events,
            ready: engine.ready.clone(),
            presence_written: None,
        });
        inboxes.push(Some(inbox));
        outboxes.push(outbox);
    }
    let followed = FollowedRooms::default();
    let router = Router {
        engine: engine.requests,
        shards: outboxes,
        calls: HashMap::new(),
        next_call: 0,
        rooms: HashMap::new(),
        clears: 0,
        followed: followed.clone(),
        appends: only_node.then(HashMap::new),
        held: HashMap::new(),
    };
    let task = tokio::spawn(router.run(inboxes, engine.events));
    (links, followed, task)
}

/// A call forwarded to the engine: who asked, and for an append its room
/// (the answer's `peer_members` is counted for it).
struct Caller {
    shard: usize,
    call: CallId,
    append_room: Option<RoomName>,
}

/// What the router knows of one room.
#[derive(Default)]
struct RoomShards {
    /// Shards following the room, ascending (live messages go in this order).
    followers: Vec<usize>,
    /// Members per shard (indexed by shard; empty until the first member).
    members: Vec<u32>,
}

impl RoomShards {
    fn is_empty(&self) -> bool {
        self.followers.is_empty() && self.members.iter().all(|&n| n == 0)
    }
}

struct Router {
    engine: mpsc::Sender<EngineRequest>,
    shards: Vec<mpsc::Sender<EngineEvent>>,
    /// Calls in flight by node-wide id. Lookup only; never iterated.
    calls: HashMap<u64, Caller>,
    next_call: u64,
    /// Rooms with followers or members. Lookup only, except a shard's
    /// clear, which touches every entry without ordering anything by it.
    rooms: HashMap<RoomName, RoomShards>,
    /// Shards that sent their `PresenceClear`.
    clears: usize,
    followed: FollowedRooms,
    /// With an engine of this node alone: per room, the node-wide ids of
    /// its appends not yet answered, in the order they went to the engine.
    /// Lookup only; never iterated.
    appends: Option<HashMap<RoomName, VecDeque<u64>>>,
    /// The asking shard's copy of a live message, by the append it echoes,
    /// until that append's answer has gone to the shard. Lookup only.
    held: HashMap<u64, EngineEvent>,
}

impl Router {
    async fn run(
        mut self,
        mut inboxes: Vec<Option<mpsc::Receiver<EngineRequest>>>,
        mut events: mpsc::Receiver<EngineEvent>,
    ) {
        let mut open = inboxes.len();
        let mut engine_open = true;
        // Where the next poll of the shards starts, so no shard can starve
        // the others (rotated, hence deterministic).
        let mut start = 0;
        while open > 0 {
            tokio::select! {
                biased;
                event = events.recv(), if engine_open => match event {
                    Some(event) => self.route(event).await,
                    None => engine_open = false,
                },
                request = poll_fn(|cx| {
                    let count = inboxes.len();
                    for offset in 0..count {
                        let shard = (start + offset) % count;
                        let Some(inbox) = inboxes[shard].as_mut() else { continue };
                        match inbox.poll_recv(cx) {
                            Poll::Ready(Some(request)) => return Poll::Ready((shard, Some(request))),
                            Poll::Ready(None) => return Poll::Ready((shard, None)),
                            Poll::Pending => {}
                        }
                    }
                    Poll::Pending
                }) => {
                    let (shard, request) = request;
                    start = (shard + 1) % inboxes.len();
                    match request {
                        Some(request) => self.forward(shard, request).await,
                        None => {
                            inboxes[shard] = None;
                            open -= 1;
                        }
                    }
                }
            }
        }
        // Every shard is gone: dropping `self.engine` tells the engine.
    }

    /// One shard's request, on to the engine (or held back, see the module docs).
    async fn forward(&mut self, shard: usize, request: EngineRequest) {
        let request = match request {
            EngineRequest::Append {
                call,
                room,
                message,
                known,
            } => {
                let call = self.call(shard, call, Some(room.clone()));
                if let Some(appends) = self.appends.as_mut() {
                    appends.entry(room.clone()).or_default().push_back(call.0);
                }
                EngineRequest::Append {
                    call,
                    room,
                    message,
                    known,
                }
            }
            EngineRequest::Read {
                call,
                room,
                after,
                limit,
                known,
            } => EngineRequest::Read {
                call: self.call(shard, call, None),
                room,
                after,
                limit,
                known,
            },
            EngineRequest::PresenceList { call, room } => EngineRequest::PresenceList {
                call: self.call(shard, call, None),
                room,
            },
            EngineRequest::Interest { room, on } => {
                let shards = self.shards.len();
                let state = self.rooms.entry(room.clone()).or_default();
                let before = state.followers.len();
                match (on, state.followers.binary_search(&shard)) {
                    (true, Err(at)) => state.followers.insert(at, shard),
                    (false, Ok(at)) => {
                        state.followers.remove(at);
                    }
                    // Said twice: the core sends on once and off once.
                    _ => debug_assert!(false, "shard {shard}: interest {on} twice for {room}"),
                }
                let after = state.followers.len();
                if state.is_empty() {
                    self.rooms.remove(&room);
                }
                debug_assert!(after <= shards);
                // The engine hears the node's interest change only.
                if (before == 0) == (after == 0) {
                    return;
                }
                if on {
                    self.followed.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.followed.fetch_sub(1, Ordering::Relaxed);
                }
                EngineRequest::Interest { room, on }
            }
            EngineRequest::PresenceAdd { room, entry } => {
                let shards = self.shards.len();
                let state = self.rooms.entry(room.clone()).or_default();
                state.members.resize(shards, 0);
                state.members[shard] += 1;
                EngineRequest::PresenceAdd { room, entry }
            }
            EngineRequest::PresenceRemove { room, conn } => {
                if let Some(state) = self.rooms.get_mut(&room) {
                    match state.members.get_mut(shard) {
                        Some(n) if *n > 0 => *n -= 1,
                        _ => {
                            debug_assert!(false, "shard {shard}: a remove without an add in {room}")
                        }
                    }
                    if state.is_empty() {
                        self.rooms.remove(&room);
                    }
                }
                EngineRequest::PresenceRemove { room, conn }
            }
            EngineRequest::PresenceClear => {
                for state in self.rooms.values_mut() {
                    if let Some(n) = state.members.get_mut(shard) {
                        *n = 0;
                    }
                }
                self.rooms.retain(|_, state| !state.is_empty());
                self.clears += 1;
                if self.clears < self.shards.len() {
                    return;
                }
                EngineRequest::PresenceClear
            }
            request @ (EngineRequest::PresenceRefresh | EngineRequest::Direct { .. }) => request,
        };
        if let Err(mpsc::error::SendError(request)) = self.engine.send(request).await {
            // The engine task is gone: every call still gets its one
            // answer, a failure.
            self.refuse(request).await;
        }
    }

    /// Answers a call the engine can no longer take with a failure, as
    /// if the engine had: [`Router::route`] takes it back to its shard.
    async fn refuse(&mut self, request: EngineRequest) {
        let error = EngineError::Unavailable("the engine task stopped".into());
        if let Some(event) = request.failed(error) {
            self.route(event).await;
        }
    }

    /// A node-wide id for `shard`'s call.
    fn call(&mut self, shard: usize, call: CallId, append_room: Option<RoomName>) -> CallId {
        self.next_call += 1;
        self.calls.insert(
            self.next_call,
            Caller {
                shard,
                call,
                append_room,
            },
        );
        CallId(self.next_call)
    }

    /// One engine event, to the shard(s) it is for.
    async fn route(&mut self, event: EngineEvent) {
        match event {
            EngineEvent::Appended {
                call,
                result,
                peer_members,
            } => {
                let Some(caller) = self.calls.remove(&call.0) else {
                    debug_assert!(false, "an answer to an unknown call {call:?}");
                    return;
                };
                // Answered: no later live message echoes it (one that did
                // was held, and follows the answer below).
                if let (Some(appends), Some(room)) = (self.appends.as_mut(), &caller.append_room) {
                    if let Some(queue) = appends.get_mut(room) {
                        queue.retain(|&c| c != call.0);
                        if queue.is_empty() {
                            appends.remove(room);
                        }
                    }
                }
                let held = self.held.remove(&call.0);
                let others = caller
                    .append_room
                    .as_ref()
                    .and_then(|room| self.rooms.get(room))
                    .map_or(0, |state| {
                        state
                            .members
                            .iter()
                            .enumerate()
                            .filter(|(shard, _)| *shard != caller.shard)
                            .map(|(_, &n)| u64::from(n))
                            .sum::<u64>()
                    });
                let event = EngineEvent::Appended {
                    call: caller.call,
                    result,
                    peer_members: peer_members + others,
                };
                self.send(caller.shard, event).await;
                if let Some(live) = held {
                    self.send(caller.shard, live).await;
                }
            }
            EngineEvent::Read { call, result } => {
                if let Some(caller) = self.answered(call) {
                    let event = EngineEvent::Read {
                        call: caller.call,
                        result,
                    };
                    self.send(caller.shard, event).await;
                }
            }
            EngineEvent::Presence { call, result } => {
                if let Some(caller) = self.answered(call) {
                    let event = EngineEvent::Presence {
                        call: caller.call,
                        result,
                    };
                    self.send(caller.shard, event).await;
                }
            }
            EngineEvent::Live(message) => {
                let room = message.room.clone();
                // The append it echoes (an engine of this node alone).
                let echoed = self
                    .appends
                    .as_mut()
                    .and_then(|appends| appends.get(&room)?.front().copied());
                let asker = echoed.and_then(|call| Some((call, self.calls.get(&call)?.shard)));
                self.send_to_followers(&room, EngineEvent::Live(message), asker)
                    .await;
            }
            EngineEvent::PresenceChanged {
                room,
                joined,
                left,
                connections,
            } => {
                let event = EngineEvent::PresenceChanged {
                    room: room.clone(),
                    joined,
                    left,
                    connections,
                };
                self.send_to_followers(&room, event, None).await;
            }
            event @ (EngineEvent::Direct { .. } | EngineEvent::StreamReset) => {
                for shard in 0..self.shards.len() {
                    self.send(shard, event.clone()).await;
                }
            }
        }
    }

    fn answered(&mut self, call: CallId) -> Option<Caller> {
        let caller = self.calls.remove(&call.0);
        debug_assert!(caller.is_some(), "an answer to an unknown call {call:?}");
        caller
    }

    /// Sends `event` to the shards following `room`; the copy of `hold`'s
    /// shard is held until the answer of `hold`'s call (see the module docs).
    async fn send_to_followers(
        &mut self,
        room: &RoomName,
        event: EngineEvent,
        hold: Option<(u64, usize)>,
    ) {
        let followers = match self.rooms.get(room) {
            Some(state) if !state.followers.is_empty() => state.followers.clone(),
            // Nobody follows it any more (an interest-off crossed it).
            _ => return,
        };
        // The last follower takes the event itself: one clone fewer per
        // live message.
        let mut event = Some(event);
        let last = followers.len() - 1;
        for (i, shard) in followers.into_iter().enumerate() {
            let Some(copy) = (if i == last {
                event.take()
            } else {
                event.clone()
            }) else {
                break;
            };
            match hold {
                Some((call, asker)) if asker == shard => {
                    self.held.insert(call, copy);
                }
                _ => self.send(shard, copy).await,
            }
        }
    }

    async fn send(&mut self, shard: usize, event: EngineEvent) {
        // A shard that stopped takes nothing more; the others go on.
        let _ = self.shards[shard].send(event).await;
    }
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
