//! PROTOCOL sections 5-6: the server-side publish API, POST /api/broadcast
//! and POST /api/send.

use roomcast_tests::tokens::{hs256_claims, now_s, publisher, token, token_ttl};
use roomcast_tests::{api_post, http, test_config, Auth, Client, TestServer};
use serde_json::json;

const PATHS: [&str; 2] = ["/api/broadcast", "/api/send"];

fn valid_body(path: &str) -> serde_json::Value {
    if path == "/api/broadcast" {
        json!({"room": "r", "type": "queue_status", "data": {}})
    } else {
        json!({"user_id": "alice", "type": "system_info", "data": {"message": "hi"}})
    }
}

#[tokio::test]
async fn callers_need_a_valid_token_with_a_publish_grant() {
    let server = TestServer::start_default().await;
    let now = now_s() as i64;
    for path in PATHS {
        let body = valid_body(path).to_string();
        // no token
        api_post(server.addr, path, None, body.clone())
            .await
            .assert_error(401, "UNAUTHORIZED");
        // a malformed Authorization header is no token
        let response = http(
            server.addr,
            "POST",
            path,
            &[("authorization", "Basic YWxpY2U6cGFzcw==")],
            body.clone(),
        )
        .await;
        assert_eq!(response.status, 401, "{path}: {response:?}");
        // invalid tokens
        for bad in [
            "garbage".to_owned(),
            hs256_claims(
                &json!({"sub": "svc", "exp": now + 60, "scope": "publish"}),
                "wrong",
            ),
        ] {
            let response = api_post(server.addr, path, Some(&bad), body.clone()).await;
            assert_eq!(response.status, 401, "{path}: {response:?}");
            assert!(response.json()["error"]["code"].is_string());
        }
        // expired
        let response = api_post(
            server.addr,
            path,
            Some(&token_ttl("svc", "publish", -5)),
            body.clone(),
        )
        .await;
        assert_eq!(response.status, 401, "{path}: {response:?}");
        // valid token, no publish scope
        for scope in ["", "read", "publisher", "publish-all"] {
            api_post(server.addr, path, Some(&token("svc", scope)), body.clone())
                .await
                .assert_error(403, "FORBIDDEN");
        }
        // publish:<room> for another room
        api_post(
            server.addr,
            path,
            Some(&token("svc", "publish:other")),
            body.clone(),
        )
        .await
        .assert_error(403, "FORBIDDEN");
    }
    // publish:<room> for the room itself is enough for a broadcast
    let response = server
        .broadcast(
            &token("svc", "read publish:r"),
            valid_body("/api/broadcast"),
        )
        .await;
    assert_eq!(response.status, 200, "{response:?}");
    // ... but not for one of several rooms
    server
        .broadcast(
            &token("svc", "publish:r"),
            json!({"rooms": ["r", "s"], "type": "queue_status"}),
        )
        .await
        .assert_error(403, "FORBIDDEN");
}

#[tokio::test]
async fn invalid_bodies_are_400_with_a_code() {
    let server = TestServer::start_default().await;
    let token = publisher();
    let cases: Vec<(&str, String, &str)> = vec![
        ("/api/broadcast", "nope".into(), "INVALID_BODY"),
        ("/api/broadcast", "".into(), "INVALID_BODY"),
        ("/api/broadcast", "[]".into(), "INVALID_BODY"),
        ("/api/broadcast", r#"{"room":"r"}"#.into(), "INVALID_BODY"),
        ("/api/broadcast", r#"{"room":"r","type":5}"#.into(), "INVALID_BODY"),
        ("/api/broadcast", r#"{"room":"r","type":"queue_status","data":[1]}"#.into(), "INVALID_BODY"),
        ("/api/broadcast", r#"{"room":"r","type":"made_up"}"#.into(), "UNKNOWN_TYPE"),
        ("/api/broadcast", r#"{"room":"r","type":"connected"}"#.into(), "UNKNOWN_TYPE"),
        ("/api/broadcast", r#"{"room":"r","type":"pong"}"#.into(), "UNKNOWN_TYPE"),
        ("/api/broadcast", r#"{"type":"queue_status"}"#.into(), "INVALID_ROOM"),
        ("/api/broadcast", r#"{"room":"a b","type":"queue_status"}"#.into(), "INVALID_ROOM"),
        ("/api/broadcast", r#"{"room":"","type":"queue_status"}"#.into(), "INVALID_ROOM"),
        ("/api/broadcast", r#"{"room":5,"type":"queue_status"}"#.into(), "INVALID_ROOM"),
        ("/api/broadcast", r#"{"rooms":[],"type":"queue_status"}"#.into(), "INVALID_ROOM"),
        ("/api/broadcast", r#"{"rooms":["ok","bad room"],"type":"queue_status"}"#.into(), "INVALID_ROOM"),
        ("/api/broadcast", r#"{"room":"a","rooms":["b"],"type":"queue_status"}"#.into(), "INVALID_ROOM"),
        ("/api/broadcast", r#"{"room":"r","type":"download_progress","data":{}}"#.into(), "INVALID_KEY"),
        ("/api/broadcast", r#"{"room":"r","type":"download_progress"}"#.into(), "INVALID_KEY"),
        ("/api/broadcast", r#"{"room":"r","type":"download_complete","data":{"key":"Attack on Titan"}}"#.into(), "INVALID_KEY"),
        ("/api/broadcast", r#"{"room":"r","type":"download_failed","data":{"key":"a/b"}}"#.into(), "INVALID_KEY"),
        ("/api/broadcast", r#"{"room":"r","type":"download_added","data":{"key":""}}"#.into(), "INVALID_KEY"),
        ("/api/broadcast", r#"{"room":"r","type":"download_removed","data":{"key":7}}"#.into(), "INVALID_KEY"),
        ("/api/broadcast", r#"{"room":"r","type":"scan_progress","data":{"key":"ä"}}"#.into(), "INVALID_KEY"),
        ("/api/send", "nope".into(), "INVALID_BODY"),
        ("/api/send", r#"{"type":"system_info"}"#.into(), "INVALID_BODY"),
        ("/api/send", r#"{"user_id":"","type":"system_info"}"#.into(), "INVALID_BODY"),
        ("/api/send", r#"{"connection_id":"not-a-uuid","type":"system_info"}"#.into(), "INVALID_BODY"),
        ("/api/send", r#"{"user_id":"a","connection_id":"00000000-0000-0000-0000-000000000001","type":"system_info"}"#.into(), "INVALID_BODY"),
        ("/api/send", r#"{"user_id":"a","type":"made_up"}"#.into(), "UNKNOWN_TYPE"),
        ("/api/send", r#"{"user_id":"a","type":"download_progress","data":{"key":"no good"}}"#.into(), "INVALID_KEY"),
    ];
    for (path, body, code) in cases {
        let response = api_post(server.addr, path, Some(&token), body.clone()).await;
        assert_eq!(response.status, 400, "{path} {body}: {response:?}");
        response.assert_error(400, code);
    }
    // Valid series events pass.
    for body in [
        json!({"room": "r", "type": "download_progress", "data": {"key": "attack-on-titan", "folder": "Attack on Titan (2013)"}}),
        json!({"room": "r", "type": "download_removed", "data": {"key": "A.b_c~d-1"}}),
        json!({"room": "r", "type": "scan_started", "data": {}}),
    ] {
        let response = server.broadcast(&token, body.clone()).await;
        assert_eq!(response.status, 200, "{body}: {response:?}");
    }
}

#[tokio::test]
async fn too_many_rooms_in_one_broadcast_is_400() {
    let mut config = test_config();
    config.limits.broadcast_rooms_max = 3;
    let server = TestServer::start(config).await;
    server
        .broadcast(
            &publisher(),
            json!({"rooms": ["a", "b", "c", "d"], "type": "queue_status"}),
        )
        .await
        .assert_error(400, "INVALID_ROOM");
    let response = server
        .broadcast(
            &publisher(),
            json!({"rooms": ["a", "b", "c"], "type": "queue_status"}),
        )
        .await;
    assert_eq!(response.status, 200);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let mut config = test_config();
    config.limits.api_body_bytes_max = 1024;
    let server = TestServer::start(config).await;
    let big = json!({"room": "r", "type": "queue_status", "data": {"pad": "x".repeat(2000)}});
    for path in PATHS {
        let response = api_post(server.addr, path, Some(&publisher()), big.to_string()).await;
        response.assert_error(413, "PAYLOAD_TOO_LARGE");
    }
    // Just under the limit is fine.
    let prefix = r#"{"room":"r","type":"queue_status","data":{"pad":""#;
    let body = format!("{prefix}{}\"}}}}", "y".repeat(1024 - prefix.len() - 3));
    assert_eq!(body.len(), 1024);
    let response = api_post(server.addr, "/api/broadcast", Some(&publisher()), body).await;
    assert_eq!(response.status, 200, "{response:?}");
}

/// A chunked body (no Content-Length) over the limit is refused too.
#[tokio::test]
async fn chunked_bodies_over_the_limit_are_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = test_config();
    config.limits.api_body_bytes_max = 1024;
    let server = TestServer::start(config).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/broadcast HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        publisher()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let body =
        json!({"room": "r", "type": "queue_status", "data": {"pad": "x".repeat(3000)}}).to_string();
    for chunk in body.as_bytes().chunks(500) {
        let framed = [
            format!("{:x}\r\n", chunk.len()).into_bytes(),
            chunk.to_vec(),
            b"\r\n".to_vec(),
        ]
        .concat();
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(roomcast_tests::TIMEOUT, stream.read_to_end(&mut response))
        .await
        .expect("response");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("PAYLOAD_TOO_LARGE"), "{text}");
}

/// A client that sends its headers and then trickles (or stalls) its body
/// gets 408 with a JSON body once `api_body_timeout_ms` is over, and the
/// connection is closed; the server goes on serving.
#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = test_config();
    config.limits.api_body_timeout_ms = 300;
    let server = TestServer::start(config).await;
    for path in PATHS {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let body = valid_body(path).to_string();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            publisher(),
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // Half the body, a byte every 100 ms: never complete in time.
        let (mut read, mut write) = stream.into_split();
        let half = body.as_bytes()[..body.len() / 2].to_vec();
        let trickle = tokio::spawn(async move {
            for byte in half {
                if write.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            // Keep the connection open without sending the rest.
            tokio::time::sleep(roomcast_tests::TIMEOUT).await;
        });
        let mut response = Vec::new();
        tokio::time::timeout(roomcast_tests::TIMEOUT, read.read_to_end(&mut response))
            .await
            .expect("no answer while the body trickles: the body read has no time limit")
            .expect("read");
        trickle.abort();
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{text}"
        );
        let json_body = &text[text.find("\r\n\r\n").expect("head") + 4..];
        let error: serde_json::Value = serde_json::from_str(json_body).expect("JSON body");
        assert_eq!(error["error"]["code"], "REQUEST_TIMEOUT", "{error}");
    }
    // Nothing was published, and the server still answers.
    let response = api_post(
        server.addr,
        "/api/broadcast",
        Some(&publisher()),
        valid_body("/api/broadcast").to_string(),
    )
    .await;
    assert_eq!(response.json()["seq"], 1, "{response:?}");
}

#[tokio::test]
async fn broadcast_success_numbers_and_delivers() {
    let server = TestServer::start_default().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    let mut outsider = server.client().await;
    a.join("downloads").await;
    b.join("downloads").await;
    outsider.join("elsewhere").await;
    let token = publisher();
    for n in 1..=3u64 {
        let response = server
            .broadcast(
                &token,
                json!({"room": "downloads", "type": "download_progress",
                       "data": {"key": "attack-on-titan", "percent": n}}),
            )
            .await;
        assert_eq!(response.status, 200, "{response:?}");
        let body = response.json();
        assert_eq!(body["delivered"], 2, "{body}");
        assert_eq!(body["seq"], n, "{body}");
    }
    for c in [&mut a, &mut b] {
        let got = c.fence().await;
        let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [1, 2, 3], "{got:?}");
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m["type"], "download_progress");
            assert_eq!(m["room"], "downloads");
            assert_eq!(m["data"]["percent"], i as u64 + 1);
        }
    }
    outsider.assert_nothing_pending().await;

    // Publishing to a room nobody is in is not an error.
    let response = server
        .broadcast(&token, json!({"room": "empty", "type": "queue_status"}))
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["delivered"], 0);
    assert!(response.json()["seq"].as_u64().is_some_and(|s| s >= 1));

    for c in [a, b, outsider] {
        c.close().await;
    }
    server.assert_connections(0).await;
}

#[tokio::test]
async fn multi_room_broadcast() {
    let server = TestServer::start_default().await;
    let token = publisher();
    let mut both = server.client().await;
    let mut only_a = server.client().await;
    let mut only_b = server.client().await;
    let mut neither = server.client().await;
    both.join("a").await;
    both.join("b").await;
    only_a.join("a").await;
    only_b.join("b").await;
    neither.join("c").await;
    // Give room b a head start so the two rooms' seqs differ.
    let response = server
        .broadcast(&token, json!({"room": "b", "type": "queue_status"}))
        .await;
    assert_eq!(response.json()["seq"], 1);

    let response = server
        .broadcast(
            &token,
            json!({"rooms": ["a", "b", "a"], "type": "queue_started", "data": {"x": 1}}),
        )
        .await;
    assert_eq!(response.status, 200, "{response:?}");
    let body = response.json();
    assert_eq!(body["delivered"], 4, "{body}");
    assert_eq!(body["seqs"], json!({"a": 1, "b": 2}), "{body}");

    let got = both.fence().await;
    let stamps: Vec<(String, u64)> = got
        .iter()
        .map(|m| {
            (
                m["room"].as_str().unwrap().to_owned(),
                m["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stamps,
        [("b".into(), 1), ("a".into(), 1), ("b".into(), 2)],
        "one copy per room, duplicates in the list collapse: {got:?}"
    );
    let got = only_a.fence().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["type"], "queue_started");
    assert_eq!(got[0]["room"], "a");
    let got = only_b.fence().await;
    assert_eq!(got.len(), 2, "{got:?}");
    neither.assert_nothing_pending().await;
    for c in [both, only_a, only_b, neither] {
        c.close().await;
    }
}

#[tokio::test]
async fn send_to_a_user_a_connection_or_nobody() {
    let server = TestServer::start_default().await;
    let api = publisher();
    let mut alice1 = server.client_with_token(&token("alice", "")).await;
    let mut alice2 = Client::connect(server.addr, Auth::Header(token("alice", ""))).await;
    let mut bob = server.client_with_token(&token("bob", "")).await;
    let mut anonymous = server.client().await;

    // to a user: all of that user's connections
    let response = server
        .send(
            &api,
            json!({"user_id": "alice", "type": "system_info", "data": {"message": "hello alice"}}),
        )
        .await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json()["delivered"], 2);
    for c in [&mut alice1, &mut alice2] {
        let got = c.fence().await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["type"], "system_info");
        assert_eq!(got[0]["data"]["message"], "hello alice");
    }
    bob.assert_nothing_pending().await;

    // to one connection (anonymous ones included)
    for (target, label) in [(&mut alice2, "alice2"), (&mut anonymous, "anonymous")] {
        let id = target.connection_id.clone();
        let response = server
            .send(
                &api,
                json!({"connection_id": id, "type": "system_warning", "data": {"message": label}}),
            )
            .await;
        assert_eq!(response.json()["delivered"], 1, "{label}");
        let got = target.fence().await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["data"]["message"], label);
    }
    alice1.assert_nothing_pending().await;
    bob.assert_nothing_pending().await;

    // nobody
    let response = server
        .send(&api, json!({"user_id": "nobody", "type": "system_info"}))
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["delivered"], 0);
    let response = server
        .send(
            &api,
            json!({"connection_id": "00000000-0000-4000-8000-000000000000", "type": "system_info"}),
        )
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["delivered"], 0);

    // after a user's connection closes it no longer counts
    alice1.close().await;
    server.assert_connections(3).await;
    let response = server
        .send(&api, json!({"user_id": "alice", "type": "system_info"}))
        .await;
    assert_eq!(response.json()["delivered"], 1);
    // /api/send needs the unrestricted scope
    server
        .send(
            &token("svc", "publish:user:alice"),
            json!({"user_id": "alice", "type": "system_info"}),
        )
        .await
        .assert_error(403, "FORBIDDEN");
    for c in [alice2, bob, anonymous] {
        c.close().await;
    }
    server.assert_connections(0).await;
}

#[tokio::test]
async fn broadcast_metrics_count_publishes_and_deliveries() {
    let server = TestServer::start_default().await;
    let mut c = server.client().await;
    c.join("m").await;
    for _ in 0..3 {
        server
            .broadcast(&publisher(), json!({"room": "m", "type": "queue_status"}))
            .await;
    }
    assert_eq!(c.fence().await.len(), 3);
    assert_eq!(server.metric("roomcast_broadcasts_total").await, Some(3.0));
    assert_eq!(server.metric("roomcast_deliveries_total").await, Some(3.0));
    c.close().await;
}

/// PROTOCOL section 7: "Publishing to a room with no members is not an
/// error (it is numbered and kept; delivered is 0)" and "History and seq
/// outlive membership". The server drops a room's log as soon as it is
/// empty (core/src/engine/memory/room_log.rs, `retain_when_empty` is `false`), so every
/// publish to an empty room is seq 1 of a new epoch.
#[tokio::test]
async fn publishes_to_an_empty_room_are_numbered_and_kept() {
    let server = TestServer::start_default().await;
    for expected in 1..=3u64 {
        let response = server
            .broadcast(
                &publisher(),
                json!({"room": "nobody", "type": "queue_status"}),
            )
            .await;
        assert_eq!(response.json()["seq"], expected, "{response:?}");
    }
    let mut c = server.client().await;
    let reply = c.join("nobody").await;
    assert_eq!(reply["data"]["seq"], 3, "{reply}");
    c.close().await;
}

/// PROTOCOL section 7: a join with `since` gets `recovered` and the missed
/// broadcasts in order.
#[tokio::test]
async fn a_returning_client_recovers_missed_broadcasts() {
    let server = TestServer::start_default().await;
    let mut keeper = server.client().await;
    keeper.join("history").await;
    let mut c = server.client().await;
    let reply = c.join("history").await;
    let epoch = reply["data"]["epoch"].clone();
    server
        .broadcast(
            &publisher(),
            json!({"room": "history", "type": "queue_status", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(c.recv_json().await["seq"], 1);
    c.close().await;
    for n in 2..=3 {
        server
            .broadcast(
                &publisher(),
                json!({"room": "history", "type": "queue_status", "data": {"n": n}}),
            )
            .await;
    }
    let mut back = server.client().await;
    let reply = back
        .request(json!({"action": "join", "data": {"room": "history", "since": {"epoch": epoch, "seq": 1}}}))
        .await;
    assert_eq!(reply["data"]["recovered"], true, "{reply}");
    let missed: Vec<u64> = back
        .fence()
        .await
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(missed, [2, 3]);
    back.close().await;
    keeper.close().await;
}

/// One broadcast bigger than `outbound_queue_bytes_max` (but within
/// `api_body_bytes_max`) can never fit any member's queue. The server
/// accepts it and closes every member of the room with 4008 "slow
/// consumer", although none of them is slow. It should refuse the publish
/// instead (400/413), or deliver it.
#[tokio::test]
async fn one_large_broadcast_does_not_disconnect_fast_members_as_slow_consumers() {
    let mut config = test_config();
    config.limits.outbound_queue_bytes_max = 64 * 1024;
    config.limits.api_body_bytes_max = 1024 * 1024;
    let server = TestServer::start(config).await;
    let mut members = Vec::new();
    for _ in 0..3 {
        let mut c = server.client().await;
        c.join("big").await;
        members.push(c);
    }
    let response = server
        .broadcast(
            &publisher(),
            json!({"room": "big", "type": "queue_status", "data": {"pad": "x".repeat(100 * 1024)}}),
        )
        .await;
    if response.status == 200 {
        assert_eq!(
            response.json()["delivered"],
            3,
            "accepted, but delivered to nobody: {}",
            response.text()
        );
        for c in &mut members {
            let m = c.recv_json().await;
            assert_eq!(m["room"], "big");
        }
    } else {
        assert!(
            response.status == 400 || response.status == 413,
            "{response:?}"
        );
    }
    server.assert_connections(3).await;
    for c in members {
        c.close().await;
    }
}
