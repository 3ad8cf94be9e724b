//! The shard router against a scripted engine: what the engine hears, and
//! what each shard gets back.

use super::*;
use roomcast_core::engine::{Numbered, PresenceEntry, Unnumbered};
use roomcast_core::ConnectionId;

use crate::engine::Readiness;

fn room(name: &str) -> RoomName {
    RoomName::new(name).expect("a valid room name")
}

fn conn(n: u128) -> ConnectionId {
    ConnectionId(uuid::Uuid::from_u128(n))
}

fn add(name: &str, n: u128) -> EngineRequest {
    EngineRequest::PresenceAdd {
        room: room(name),
        entry: PresenceEntry {
            conn: conn(n),
            user: None,
        },
    }
}

fn interest(name: &str, on: bool) -> EngineRequest {
    EngineRequest::Interest {
        room: room(name),
        on,
    }
}

fn append(call: u64, name: &str) -> EngineRequest {
    EngineRequest::Append {
        call: CallId(call),
        room: room(name),
        message: Unnumbered {
            head: "{\"seq\":".into(),
            tail: "}".into(),
            series: None,
        },
        known: None,
    }
}

/// The engine's side of the router, and the shards' links.
struct Rig {
    engine_requests: mpsc::Receiver<EngineRequest>,
    engine_events: mpsc::Sender<EngineEvent>,
    shards: Vec<EngineLink>,
}

fn rig(shards: usize) -> Rig {
    rig_with(shards, false)
}

/// `only_node`: the engine serves this node alone (the in-memory engine).
fn rig_with(shards: usize, only_node: bool) -> Rig {
    let (requests, engine_requests) = mpsc::channel(64);
    let (engine_events, events) = mpsc::channel(64);
    let link = EngineLink {
        requests,
        events,
        ready: Readiness::always(),
        presence_written: None,
    };
    let (links, _followed, _task) = spawn(link, shards, only_node);
    Rig {
        engine_requests,
        engine_events,
        shards: links,
    }
}

impl Rig {
    async fn shard_asks(&self, shard: usize, request: EngineRequest) {
        self.shards[shard].requests.send(request).await.unwrap();
    }

    async fn engine_hears(&mut self) -> EngineRequest {
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.engine_requests.recv(),
        )
        .await
        .expect("the engine hears something")
        .expect("the router is running")
    }

    async fn shard_gets(&mut self, shard: usize) -> EngineEvent {
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.shards[shard].events.recv(),
        )
        .await
        .expect("the shard gets something")
        .expect("the router is running")
    }

    fn shard_has_nothing(&mut self, shard: usize) -> bool {
        self.shards[shard].events.try_recv().is_err()
    }
}

#[tokio::test]
async fn the_engine_hears_the_nodes_interest_once_and_live_messages_reach_every_follower() {
    let mut rig = rig(3);
    // Each step waits for what the engine hears (shards are not ordered
    // among themselves); a refresh from the same shard shows that what
    // came before it was held back.
    rig.shard_asks(0, interest("r", true)).await;
    assert_eq!(rig.engine_hears().await, interest("r", true));
    rig.shard_asks(2, interest("r", true)).await;
    rig.shard_asks(2, EngineRequest::PresenceRefresh).await;
    assert_eq!(rig.engine_hears().await, EngineRequest::PresenceRefresh);
    rig.shard_asks(0, interest("r", false)).await;
    rig.shard_asks(0, EngineRequest::PresenceRefresh).await;
    assert_eq!(rig.engine_hears().await, EngineRequest::PresenceRefresh);
    rig.shard_asks(2, interest("r", false)).await;
    assert_eq!(rig.engine_hears().await, interest("r", false));

    rig.shard_asks(1, interest("r", true)).await;
    assert_eq!(rig.engine_hears().await, interest("r", true));
    rig.shard_asks(2, interest("r", true)).await;
    rig.shard_asks(2, EngineRequest::PresenceRefresh).await;
    assert_eq!(rig.engine_hears().await, EngineRequest::PresenceRefresh);
    let live = EngineEvent::Live(Numbered {
        room: room("r"),
        epoch: "e-1".into(),
        seq: 1,
        frame: String::from("{\"seq\":1}").into(),
        series: None,
    });
    rig.engine_events.send(live.clone()).await.unwrap();
    assert_eq!(rig.shard_gets(1).await, live);
    assert_eq!(rig.shard_gets(2).await, live);
    assert!(rig.shard_has_nothing(0), "shard 0 does not follow the room");
}

#[tokio::test]
async fn an_append_is_answered_to_its_shard_with_the_other_shards_members() {
    let mut rig = rig(2);
    rig.shard_asks(0, add("r", 1)).await;
    rig.shard_asks(1, add("r", 2)).await;
    rig.shard_asks(1, add("r", 3)).await;
    // Both shards number their calls from 1: the engine sees two ids.
    rig.shard_asks(0, append(1, "r")).await;
    rig.shard_asks(1, append(1, "r")).await;
    let mut calls = Vec::new();
    while calls.len() < 2 {
        if let EngineRequest::Append { call, .. } = rig.engine_hears().await {
            calls.push(call);
        }
    }
    assert_ne!(calls[0], calls[1], "node-wide call ids");
    for (call, seq) in calls.iter().zip(1..) {
        let numbered = Numbered {
            room: room("r"),
            epoch: "e-1".into(),
            seq,
            frame: format!("{{\"seq\":{seq}}}").into(),
            series: None,
        };
        rig.engine_events
            .send(EngineEvent::Appended {
                call: *call,
                result: Ok(numbered),
                peer_members: 0,
            })
            .await
            .unwrap();
    }
    match rig.shard_gets(0).await {
        EngineEvent::Appended {
            call, peer_members, ..
        } => {
            assert_eq!(call, CallId(1), "the shard's own id");
            assert_eq!(peer_members, 2, "shard 1's two members");
        }
        other => panic!("not an append's answer: {other:?}"),
    }
    match rig.shard_gets(1).await {
        EngineEvent::Appended {
            call, peer_members, ..
        } => {
            assert_eq!(call, CallId(1));
            assert_eq!(peer_members, 1, "shard 0's one member");
        }
        other => panic!("not an append's answer: {other:?}"),
    }
}

#[tokio::test]
async fn the_nodes_presence_is_cleared_once_every_shard_has_cleared() {
    let mut rig = rig(2);
    rig.shard_asks(0, add("r", 1)).await;
    rig.shard_asks(1, add("r", 2)).await;
    assert!(matches!(
        rig.engine_hears().await,
        EngineRequest::PresenceAdd { .. }
    ));
    assert!(matches!(
        rig.engine_hears().await,
        EngineRequest::PresenceAdd { .. }
    ));
    rig.shard_asks(0, EngineRequest::PresenceClear).await;
    rig.shard_asks(0, EngineRequest::PresenceRefresh).await;
    assert_eq!(
        rig.engine_hears().await,
        EngineRequest::PresenceRefresh,
        "one shard's clear is held back: shard 1's member is still there"
    );
    rig.shard_asks(1, EngineRequest::PresenceClear).await;
    assert_eq!(rig.engine_hears().await, EngineRequest::PresenceClear);
}

#[tokio::test]
async fn a_call_the_gone_engine_cannot_take_is_answered_with_a_failure() {
    let mut rig = rig(2);
    rig.engine_requests.close();
    rig.shard_asks(1, append(7, "r")).await;
    match rig.shard_gets(1).await {
        EngineEvent::Appended { call, result, .. } => {
            assert_eq!(call, CallId(7));
            assert!(result.is_err());
        }
        other => panic!("not an append's answer: {other:?}"),
    }
}

/// With an engine of this node alone, the shard that appended hears the
/// answer before the live message that echoes its append (its hub times
/// the broadcast from the answer); the other followers get the live
/// message as it comes; with any other engine the engine's order is kept.
#[tokio::test]
async fn the_asking_shard_hears_its_answer_before_the_echo_of_its_append() {
    for only_node in [true, false] {
        let mut rig = rig_with(2, only_node);
        for shard in 0..2 {
            rig.shard_asks(shard, interest("r", true)).await;
            rig.shard_asks(shard, EngineRequest::PresenceRefresh).await;
        }
        assert_eq!(rig.engine_hears().await, interest("r", true));
        for _ in 0..2 {
            assert_eq!(rig.engine_hears().await, EngineRequest::PresenceRefresh);
        }
        rig.shard_asks(1, append(1, "r")).await;
        let EngineRequest::Append { call, .. } = rig.engine_hears().await else {
            panic!("not the append")
        };
        let numbered = Numbered {
            room: room("r"),
            epoch: "e-1".into(),
            seq: 1,
            frame: String::from("{\"seq\":1}").into(),
            series: None,
        };
        let live = EngineEvent::Live(numbered.clone());
        rig.engine_events.send(live.clone()).await.unwrap();
        let answer = EngineEvent::Appended {
            call,
            result: Ok(numbered),
            peer_members: 0,
        };
        rig.engine_events.send(answer).await.unwrap();
        assert_eq!(rig.shard_gets(0).await, live, "the other follower");
        let first = rig.shard_gets(1).await;
        let second = rig.shard_gets(1).await;
        let answered = |event: &EngineEvent| matches!(event, EngineEvent::Appended { call, .. } if call.0 == 1);
        if only_node {
            assert!(answered(&first), "the answer first: {first:?}");
            assert_eq!(second, live);
        } else {
            assert_eq!(first, live);
            assert!(answered(&second), "then the answer: {second:?}");
        }
        assert!(rig.shard_has_nothing(0) && rig.shard_has_nothing(1));
    }
}
