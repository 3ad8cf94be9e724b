//! The engine contract (docs/engine.md), one suite run against both
//! engines: the in-memory engine (driven directly, with a fake clock) and
//! the Redis engine (its real tasks, against a `redis-server` each test
//! starts on a free loopback port, and against a three-node Redis Cluster
//! each test starts the same way). What only Redis can do to a node is
//! `redis_faults.rs`.

#![allow(clippy::wildcard_imports)]

use roomcast_core::engine::{EngineEvent, EngineRequest, Epoch, PresenceEntry};
use roomcast_core::{ConnectionId, RoomName};
use roomcast_tests::engine_harness::*;

// ----- the contract ----------------------------------------------------------

async fn appends_are_numbered_gapless_from_one(mut h: Harness) {
    let first = h.append(0, "r", 10).await;
    assert_eq!(first.seq, 1);
    assert_eq!(first.frame.as_str(), "{\"seq\":1,\"n\":10}");
    for n in 2..=4 {
        let next = h.append(n as usize % 2, "r", n).await;
        assert_eq!((next.seq, &next.epoch), (n, &first.epoch));
        assert_eq!(next.frame.as_str(), format!("{{\"seq\":{n},\"n\":{n}}}"));
    }
    // Another room has its own numbering.
    assert_eq!(h.append(0, "other", 1).await.seq, 1);
}

async fn followers_receive_every_append_in_order(mut h: Harness) {
    h.follow(1, "r").await;
    let mut answers = Vec::new();
    for n in 1..=5 {
        let series = (n == 3).then_some("progress:a");
        answers.push(h.try_append(0, "r", n, series).await.unwrap());
    }
    for answer in answers {
        let live = h.live(1).await;
        assert_eq!(live, answer, "live messages are the appends, in order");
    }
    h.quiet(1).await;
    // A node that does not follow the room hears nothing of it.
    h.quiet(0).await;
}

async fn reads_return_the_retained_frames_after_a_position(mut h: Harness) {
    let mut epoch = None;
    for n in 1..=5 {
        epoch = Some(h.append(0, "r", n).await.epoch);
    }
    let epoch = epoch.unwrap();
    let from = at(&epoch, 2);
    let result = h.read(1, "r", from.clone(), 100).await;
    assert_eq!((&result.epoch, result.top), (&epoch, 5));
    let seqs: Vec<u64> = result.frames.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    assert_eq!(result.frames[0].1.as_str(), "{\"seq\":3,\"n\":3}");
    assert!(result.covers(from.as_ref().unwrap()));
    // Seq 2 left the history (3 kept): not covered.
    let from = at(&epoch, 1);
    assert!(!h
        .read(1, "r", from.clone(), 100)
        .await
        .covers(from.as_ref().unwrap()));
    // No position: only the top.
    let top = h.read(1, "r", None, 100).await;
    assert_eq!((top.top, top.frames.len()), (5, 0));
    // Another epoch: not covered; the retained frames of this epoch from
    // its start (here 3..5: seqs 1 and 2 left the history).
    let stale = at(&Epoch::from("gone-1"), 3);
    let result = h.read(1, "r", stale.clone(), 100).await;
    assert!(!result.covers(stale.as_ref().unwrap()));
    let seqs: Vec<u64> = result.frames.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    assert_eq!(result.resume_after(), 2);
    // The limit.
    let result = h.read(1, "r", at(&epoch, 2), 2).await;
    let seqs: Vec<u64> = result.frames.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![3, 4]);
}

async fn a_read_creates_an_absent_room_with_a_stable_epoch(mut h: Harness) {
    // A followed room (a room nobody follows and without history may be
    // dropped at once by the in-memory engine; Redis keeps it a while).
    let first = h.follow(0, "fresh").await;
    assert_eq!(first.top, 0);
    let again = h.read(1, "fresh", None, 10).await;
    assert_eq!(again.epoch, first.epoch);
    let appended = h.append(1, "fresh", 1).await;
    assert_eq!((appended.epoch, appended.seq), (first.epoch, 1));
}

async fn history_ages_out_but_a_followed_room_keeps_its_epoch(mut h: Harness) {
    h.follow(1, "r").await;
    let first = h.append(0, "r", 1).await;
    h.append(0, "r", 2).await;
    h.advance(HISTORY_AGE_MS + 300).await;
    let result = h.read(0, "r", at(&first.epoch, 0), 10).await;
    assert_eq!((&result.epoch, result.top), (&first.epoch, 2));
    assert!(result.frames.is_empty(), "aged out: {:?}", result.frames);
    let third = h.append(0, "r", 3).await;
    assert_eq!((third.epoch, third.seq), (first.epoch, 3));
}

async fn interest_off_stops_the_live_stream(mut h: Harness) {
    h.follow(1, "r").await;
    h.append(0, "r", 1).await;
    assert_eq!(h.live(1).await.seq, 1);
    let room = RoomName::new("r").unwrap();
    h.send(1, EngineRequest::Interest { room, on: false }).await;
    // Let the unsubscribe reach the engine (Redis) before the next append.
    h.advance(200).await;
    h.append(0, "r", 2).await;
    h.quiet(1).await;
}

async fn presence_lists_every_node_in_connection_order(mut h: Harness) {
    let room = || RoomName::new("r").unwrap();
    h.send(
        0,
        EngineRequest::PresenceAdd {
            room: room(),
            entry: entry(2, Some("alice")),
        },
    )
    .await;
    h.send(
        1,
        EngineRequest::PresenceAdd {
            room: room(),
            entry: entry(1, None),
        },
    )
    .await;
    let both = vec![entry(1, None), entry(2, Some("alice"))];
    assert_eq!(h.presence(1, "r").await, both);
    assert_eq!(h.presence(0, "r").await, both);
    assert_eq!(h.presence(0, "elsewhere").await, vec![]);
    h.send(
        1,
        EngineRequest::PresenceRemove {
            room: room(),
            conn: ConnectionId::from_u128(1),
        },
    )
    .await;
    assert_eq!(h.presence(1, "r").await, vec![entry(2, Some("alice"))]);
}

async fn a_silent_node_loses_its_presence_within_the_ttl(mut h: Harness) {
    for (node, n) in [(0, 1), (1, 2)] {
        let request = EngineRequest::PresenceAdd {
            room: RoomName::new("r").unwrap(),
            entry: entry(n, Some("u")),
        };
        h.send(node, request).await;
    }
    assert_eq!(h.presence(0, "r").await.len(), 2);
    // Node 0 keeps refreshing; node 1 falls silent.
    for _ in 0..5 {
        h.advance(PRESENCE_TTL_MS / 3).await;
        h.send(0, EngineRequest::PresenceRefresh).await;
    }
    assert_eq!(h.presence(0, "r").await, vec![entry(1, Some("u"))]);
}

/// The next `PresenceChanged` of `node` in room r: (joined, left, count).
async fn presence_change(h: &mut Harness, node: usize) -> (Vec<u128>, Vec<u128>, usize) {
    match h.next_event(node, WAIT).await {
        Some(EngineEvent::PresenceChanged {
            room,
            joined,
            left,
            connections,
        }) => {
            assert_eq!(room.as_str(), "r");
            let ids = |list: Vec<PresenceEntry>| list.iter().map(|e| e.conn.0.as_u128()).collect();
            (ids(joined), ids(left), connections)
        }
        other => panic!("expected a presence change on node {node}, got {other:?}"),
    }
}

async fn presence_changes_reach_every_follower_with_the_count_after_them(mut h: Harness) {
    h.follow(0, "r").await;
    h.follow(1, "r").await;
    let room = || RoomName::new("r").unwrap();
    // Each change is awaited before the next (Redis may merge changes that
    // wait together): both followers hear it, the node that made it too.
    let steps = [
        (
            1,
            EngineRequest::PresenceAdd {
                room: room(),
                entry: entry(1, Some("a")),
            },
        ),
        (
            0,
            EngineRequest::PresenceAdd {
                room: room(),
                entry: entry(2, None),
            },
        ),
        (
            1,
            EngineRequest::PresenceRemove {
                room: room(),
                conn: ConnectionId::from_u128(1),
            },
        ),
        (
            1,
            EngineRequest::PresenceAdd {
                room: room(),
                entry: entry(3, None),
            },
        ),
        (
            1,
            EngineRequest::PresenceAdd {
                room: room(),
                entry: entry(4, None),
            },
        ),
    ];
    let told = [
        (vec![1], vec![], 1),
        (vec![2], vec![], 2),
        (vec![], vec![1], 1),
        (vec![3], vec![], 2),
        (vec![4], vec![], 3),
    ];
    for ((node, request), change) in steps.into_iter().zip(told) {
        h.send(node, request).await;
        for follower in [0, 1] {
            assert_eq!(presence_change(&mut h, follower).await, change);
        }
    }
    // A clear is one change with all of the node's entries of the room.
    h.send(1, EngineRequest::PresenceClear).await;
    for follower in [0, 1] {
        assert_eq!(
            presence_change(&mut h, follower).await,
            (vec![], vec![3, 4], 1)
        );
    }
    for follower in [0, 1] {
        h.quiet(follower).await;
    }
}

// ----- the rollback check (no seq reused after a store lost writes) ---------

async fn a_node_ahead_of_the_stored_top_moves_the_room_to_a_new_epoch(mut h: Harness) {
    h.follow(1, "r").await;
    let first = h.append(0, "r", 1).await;
    h.append(0, "r", 2).await;
    // A node that streamed up to the top keeps the epoch.
    let at_top = h.append_knowing(0, "r", 3, None, at(&first.epoch, 2));
    let third = at_top.await.unwrap();
    assert_eq!((&third.epoch, third.seq), (&first.epoch, 3));
    // Node 1 streamed seq 5 of this epoch, but the room's top is 3: the
    // store lost acknowledged messages (as a rolled-back Redis would).
    // Its read moves the room to a new epoch, from the start.
    let ahead = at(&first.epoch, 5);
    let read = h.read_knowing(1, "r", ahead.clone(), 10, ahead.clone());
    let read = read.await.unwrap();
    assert_ne!(read.epoch, first.epoch);
    assert_eq!((read.top, read.frames.len()), (0, 0));
    assert!(!read.covers(ahead.as_ref().unwrap()));
    // Another node that noticed the same loss converges on that epoch: the
    // move is a compare-and-set on the old one.
    let also = h.read_knowing(0, "r", None, 10, at(&first.epoch, 4));
    assert_eq!(also.await.unwrap().epoch, read.epoch);
    // An append from a node ahead renews too, and answers in the new epoch.
    let next = h.append(0, "r", 9).await;
    assert_eq!((&next.epoch, next.seq), (&read.epoch, 1));
    let renewed = h.append_knowing(0, "r", 10, None, at(&read.epoch, 7));
    let renewed = renewed.await.unwrap();
    assert_ne!(renewed.epoch, read.epoch);
    assert_eq!(renewed.seq, 1);
    // The follower's live stream carries the epochs as they were appended.
    for (epoch, seq) in [(&first.epoch, 1), (&first.epoch, 2), (&first.epoch, 3)] {
        let live = h.live(1).await;
        assert_eq!((&live.epoch, live.seq), (epoch, seq));
    }
    let live = h.live(1).await;
    assert_eq!((&live.epoch, live.seq), (&read.epoch, 1));
    assert_eq!(h.live(1).await.epoch, renewed.epoch);
}

async fn a_node_behind_the_top_keeps_the_epoch(mut h: Harness) {
    let first = h.append(0, "r", 1).await;
    for n in 2..=4 {
        h.append(0, "r", n).await;
    }
    // Lagging (its live messages are late) is not a loss.
    let read = h.read_knowing(1, "r", at(&first.epoch, 1), 10, at(&first.epoch, 1));
    let read = read.await.unwrap();
    assert_eq!((&read.epoch, read.top), (&first.epoch, 4));
    let next = h.append_knowing(1, "r", 5, None, at(&first.epoch, 2));
    assert_eq!(next.await.unwrap().seq, 5);
    // Knowledge of another epoch (one the room left) is no evidence either.
    let old = at(&Epoch::from("gone-1"), 50);
    let read = h.read_knowing(1, "r", None, 10, old).await.unwrap();
    assert_eq!((&read.epoch, read.top), (&first.epoch, 5));
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Harness::memory(2)).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    let server = roomcast_tests::redis_server::RedisServer::start();
                    super::$name(super::Harness::redis(&server, 2).await).await;
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test]
                async fn $name() {
                    let cluster = roomcast_tests::redis_server::RedisCluster::start(3);
                    super::$name(super::Harness::redis_cluster(&cluster, 2).await).await;
                }
            )*
        }
    };
}

conformance!(
    appends_are_numbered_gapless_from_one,
    followers_receive_every_append_in_order,
    reads_return_the_retained_frames_after_a_position,
    a_read_creates_an_absent_room_with_a_stable_epoch,
    history_ages_out_but_a_followed_room_keeps_its_epoch,
    interest_off_stops_the_live_stream,
    presence_lists_every_node_in_connection_order,
    a_silent_node_loses_its_presence_within_the_ttl,
    presence_changes_reach_every_follower_with_the_count_after_them,
    a_node_ahead_of_the_stored_top_moves_the_room_to_a_new_epoch,
    a_node_behind_the_top_keeps_the_epoch,
);
