//! What only a shared Redis can do to a node's engine: lose its data, be
//! killed and restarted (with and without persistence), drop or stall the
//! pub/sub connection, be absent at startup; and the Redis engine's
//! presence changes. The contract every engine keeps is
//! `engine_conformance.rs`; both use `roomcast_tests::engine_harness`.

#![allow(clippy::wildcard_imports)]

use std::time::Duration;

use roomcast_core::engine::{CallId, EngineError, EngineEvent, EngineRequest, PresenceEntry};
use roomcast_core::{ConnectionId, RoomName};
use roomcast_net::engine::redis::spawn;
use roomcast_tests::engine_harness::*;
use roomcast_tests::redis_server::RedisServer;

#[tokio::test]
async fn redis_losing_its_data_starts_new_epochs() {
    let server = RedisServer::start();
    let mut h = Harness::redis(&server, 1).await;
    let before = h.append(0, "r", 1).await;
    h.append(0, "r", 2).await;
    assert_eq!(server.cli(&["FLUSHALL"]).trim(), "OK");
    let after = h.append(0, "r", 3).await;
    assert_eq!(after.seq, 1);
    assert_ne!(after.epoch, before.epoch);
    let from = at(&before.epoch, 2);
    let result = h.read(0, "r", from.clone(), 10).await;
    assert!(!result.covers(from.as_ref().unwrap()));
    // A reader of the lost epoch can still be given the new one whole.
    assert_eq!((&result.epoch, result.top), (&after.epoch, 1));
    let seqs: Vec<u64> = result.frames.iter().map(|(s, _)| *s).collect();
    assert_eq!((seqs, result.resume_after()), (vec![1], 0));
}

#[tokio::test]
async fn a_killed_pubsub_connection_is_resubscribed_and_reported() {
    let server = RedisServer::start();
    let mut h = Harness::redis(&server, 2).await;
    h.follow(1, "r").await;
    h.append(0, "r", 1).await;
    assert_eq!(h.live(1).await.seq, 1);
    let killed = server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed.trim(), "2", "one pub/sub connection per node");
    // The core is told to read every room it follows...
    match h.next_event(1, WAIT).await {
        Some(EngineEvent::StreamReset) => {}
        other => panic!("expected a stream reset, got {other:?}"),
    }
    // ...and the live stream goes on.
    h.append(0, "r", 2).await;
    assert_eq!(h.live(1).await.seq, 2);
}

#[tokio::test]
async fn redis_down_fails_calls_and_they_work_again_when_it_is_back() {
    let mut server = RedisServer::start();
    let port = server.addr.port();
    let mut h = Harness::redis(&server, 1).await;
    assert_eq!(h.append(0, "r", 1).await.seq, 1);
    server.kill();
    let started = std::time::Instant::now();
    let failed = h.try_append(0, "r", 2, None).await;
    assert!(
        matches!(failed, Err(EngineError::Unavailable(_))),
        "{failed:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the call timeout bounds it"
    );
    let _server = RedisServer::start_on(port);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match h.try_append(0, "r", 3, None).await {
            // Restarted empty: a new epoch.
            Ok(numbered) => {
                assert_eq!(numbered.seq, 1);
                break;
            }
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(error) => panic!("redis is back but calls still fail: {error:?}"),
        }
    }
}

#[tokio::test]
async fn a_persistent_redis_killed_and_restarted_keeps_epochs_history_and_the_stream() {
    // Every write is in the append-only file before Redis answers it.
    let data = tempfile::tempdir().unwrap();
    let port = RedisServer::start().addr.port(); // a free port, released
    let mut server = RedisServer::start_persistent(port, data.path());
    let mut h = Harness::redis(&server, 2).await;
    h.follow(1, "r").await;
    let first = h.append(0, "r", 1).await;
    h.append(0, "r", 2).await;
    assert_eq!(h.live(1).await.seq, 1);
    assert_eq!(h.live(1).await.seq, 2);
    server.kill(); // SIGKILL: no shutdown save
    let _server = RedisServer::start_persistent(port, data.path());
    // The follower's pub/sub connection comes back and says so...
    let deadline = std::time::Instant::now() + WAIT * 3;
    loop {
        match h.next_event(1, WAIT).await {
            Some(EngineEvent::StreamReset) => break,
            Some(_) => {}
            None => assert!(std::time::Instant::now() < deadline, "no stream reset"),
        }
    }
    // ...and the room goes on in the same epoch, its history intact: a
    // node that streamed up to the top vouches for it (the rollback check).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let third = loop {
        match h.append_knowing(0, "r", 3, None, at(&first.epoch, 2)).await {
            Ok(numbered) => break numbered,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(error) => panic!("redis is back but calls still fail: {error:?}"),
        }
    };
    assert_eq!((&third.epoch, third.seq), (&first.epoch, 3));
    // (The first call on a connection Redis dropped may fail: the core
    // retries reads after `engine_retry_ms`; so does this test.)
    let from = at(&first.epoch, 0);
    let read = loop {
        match h.try_read(1, "r", from.clone(), 10).await {
            Ok(read) => break read,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(error) => panic!("redis is back but reads still fail: {error:?}"),
        }
    };
    assert!(read.covers(from.as_ref().unwrap()), "{read:?}");
    assert_eq!(h.live(1).await.seq, 3);
}

/// Retries a call while Redis comes back (the first call on a dropped
/// connection may fail; the core retries too).
macro_rules! once_back {
    ($call:expr) => {{
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            match $call.await {
                Ok(answer) => break answer,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(error) => panic!("redis is back but calls still fail: {error:?}"),
            }
        }
    }};
}

#[tokio::test]
async fn a_redis_restarted_from_an_older_snapshot_reuses_no_seq() {
    let data = tempfile::tempdir().unwrap();
    let port = RedisServer::start().addr.port(); // a free port, released
    let mut server = RedisServer::start_snapshotting(port, data.path());
    let mut h = Harness::redis(&server, 2).await;
    let mut epochs = Vec::new();
    for room in ["a", "b", "c"] {
        h.follow(1, room).await;
        epochs.push(h.append(0, room, 1).await.epoch);
        h.append(0, room, 2).await;
    }
    assert_eq!(server.cli(&["SAVE"]).trim(), "OK");
    for room in ["a", "b", "c"] {
        h.append(0, room, 3).await;
        h.append(0, room, 4).await;
    }
    // Node 1 streamed every room up to seq 4.
    for _ in 0..12 {
        h.live(1).await;
    }
    server.kill();
    let _server = RedisServer::start_snapshotting(port, data.path());
    // Every room is back at seq 2 of its epoch. Node 1 reads room a with
    // its cursor: a new epoch, from its start.
    let ahead = at(&epochs[0], 4);
    let read = once_back!(h.read_knowing(1, "a", ahead.clone(), 10, ahead.clone()));
    assert_ne!(read.epoch, epochs[0]);
    assert_eq!(read.top, 0);
    // Node 0 publishes to room b knowing nothing of it (as a node without
    // members does): Redis restarted and nobody vouched for b's top, so
    // the publish starts a new epoch rather than reuse seq 3.
    let blind = once_back!(h.append_knowing(0, "b", 5, None, None));
    assert_ne!(blind.epoch, epochs[1]);
    assert_eq!(blind.seq, 1);
    // Room c: an append from a node at its old top (2) vouches for it...
    let vouched = once_back!(h.append_knowing(0, "c", 5, None, at(&epochs[2], 2)));
    assert_eq!((&vouched.epoch, vouched.seq), (&epochs[2], 3));
    // ...which a node that streamed seq 4 contradicts: a new epoch again.
    let read = once_back!(h.read_knowing(1, "c", None, 10, at(&epochs[2], 4)));
    assert_ne!(read.epoch, epochs[2]);
}

#[tokio::test]
async fn not_ready_until_redis_answers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut link = spawn(redis_settings(&url, "lonely")).unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(link.ready.check().is_err());
    // Calls fail (they do not hang) meanwhile.
    let call = CallId(1);
    let read = EngineRequest::Read {
        call,
        room: RoomName::new("r").unwrap(),
        after: None,
        limit: 1,
        known: None,
    };
    link.requests.send(read).await.unwrap();
    match tokio::time::timeout(WAIT, link.events.recv()).await {
        Ok(Some(EngineEvent::Read { result: Err(_), .. })) => {}
        other => panic!("{other:?}"),
    }
    let _server = RedisServer::start_on(port);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while link.ready.check().is_err() {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_stalled_pubsub_connection_is_found_by_its_probe() {
    let server = RedisServer::start();
    let mut h = Harness::redis(&server, 1).await;
    h.follow(0, "r").await;
    // Redis stops answering (every client) for longer than a probe
    // interval (5 s) plus the call timeout (1 s); nothing is closed.
    assert_eq!(server.cli(&["CLIENT", "PAUSE", "8000", "ALL"]).trim(), "OK");
    match h.next_event(0, Duration::from_secs(20)).await {
        Some(EngineEvent::StreamReset) => {}
        other => panic!("expected a stream reset, got {other:?}"),
    }
    h.append(0, "r", 1).await;
    assert_eq!(h.live(0).await.seq, 1);
}

// ----- Redis presence changes: batching, merging, sweeps (the shared ------
// ----- contract is in engine_conformance.rs) --------------------------------

/// The next `PresenceChanged` of `node`: (joined, left, connections).
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

#[tokio::test]
async fn redis_presence_changes_reach_followers_net_and_once() {
    let server = RedisServer::start();
    // Long enough that no entry expires before the test lets it.
    const TTL_MS: u64 = 3_000;
    let mut h = Harness::redis_with_ttl(&server, 2, TTL_MS).await;
    h.follow(0, "r").await;
    let room = || RoomName::new("r").unwrap();
    // Node 1's add, add, remove: however they are batched and merged, the
    // changes node 0 hears add up to connection 2 present, count 1.
    for request in [
        EngineRequest::PresenceAdd {
            room: room(),
            entry: entry(1, Some("a")),
        },
        EngineRequest::PresenceAdd {
            room: room(),
            entry: entry(2, None),
        },
        EngineRequest::PresenceRemove {
            room: room(),
            conn: ConnectionId::from_u128(1),
        },
    ] {
        h.send(1, request).await;
    }
    let mut present = std::collections::BTreeSet::new();
    loop {
        let (joined, left, connections) = presence_change(&mut h, 0).await;
        for conn in left {
            assert!(present.remove(&conn), "{conn} left without joining");
        }
        present.extend(joined);
        assert_eq!(connections, present.len());
        if present == std::collections::BTreeSet::from([2]) {
            break;
        }
    }
    // Node 0 hears its own changes too.
    let add = EngineRequest::PresenceAdd {
        room: room(),
        entry: entry(3, Some("c")),
    };
    h.send(0, add).await;
    assert_eq!(presence_change(&mut h, 0).await, (vec![3], vec![], 2));
    let remove = EngineRequest::PresenceRemove {
        room: room(),
        conn: ConnectionId::from_u128(3),
    };
    h.send(0, remove).await;
    assert_eq!(presence_change(&mut h, 0).await, (vec![], vec![3], 1));
    // A refresh of entries still there changes nothing.
    h.send(1, EngineRequest::PresenceRefresh).await;
    h.quiet(0).await;
    // A clear is one change for all of the node's entries of the room.
    let add = EngineRequest::PresenceAdd {
        room: room(),
        entry: entry(4, Some("d")),
    };
    h.send(1, add).await;
    assert_eq!(presence_change(&mut h, 0).await, (vec![4], vec![], 2));
    h.send(1, EngineRequest::PresenceClear).await;
    assert_eq!(presence_change(&mut h, 0).await, (vec![], vec![2, 4], 0));
    h.quiet(0).await;
    // A silent node's entry expires; the next write or list of the room
    // sweeps it and tells it, once.
    let add = EngineRequest::PresenceAdd {
        room: room(),
        entry: entry(5, None),
    };
    h.send(1, add).await;
    assert_eq!(presence_change(&mut h, 0).await, (vec![5], vec![], 1));
    h.advance(TTL_MS + 200).await;
    assert_eq!(h.presence(0, "r").await, vec![]);
    assert_eq!(presence_change(&mut h, 0).await, (vec![], vec![5], 0));
    assert_eq!(h.presence(1, "r").await, vec![]);
    h.quiet(0).await;
}
