//! PROTOCOL section 5: tokens on /ws/connect. By default an invalid token
//! connects as anonymous; with `auth.invalid_token = "reject"` it is a 401
//! before the upgrade. Tokens come in the query, the Authorization header
//! or the `roomcast.bearer.<jwt>` subprotocol.

use roomcast_net::config::InvalidTokenPolicy;
use roomcast_tests::tokens::{alg_none, hs256_claims, now_s, rs256, rsa_keypair, token, token_ttl};
use roomcast_tests::{test_config, upgrade_request, Auth, Client, TestServer, SECRET};
use serde_json::{json, Value};

/// Every kind of bad token, by name.
fn bad_tokens() -> Vec<(&'static str, String)> {
    let now = now_s() as i64;
    vec![
        ("expired", token_ttl("alice", "", -10)),
        (
            "wrong secret",
            hs256_claims(
                &json!({"sub": "alice", "exp": now + 3600}),
                "another-secret",
            ),
        ),
        (
            "alg none",
            alg_none(&json!({"sub": "alice", "exp": now + 3600})),
        ),
        (
            "string exp",
            hs256_claims(
                &json!({"sub": "alice", "exp": (now + 3600).to_string()}),
                SECRET,
            ),
        ),
        (
            "future nbf",
            hs256_claims(
                &json!({"sub": "alice", "exp": now + 3600, "nbf": now + 600}),
                SECRET,
            ),
        ),
        ("no exp", hs256_claims(&json!({"sub": "alice"}), SECRET)),
        ("no sub", hs256_claims(&json!({"exp": now + 3600}), SECRET)),
        ("garbage", "not.a.jwt".to_owned()),
        ("truncated", {
            let t = token("alice", "");
            t[..t.len() - 5].to_owned()
        }),
    ]
}

fn auths(token: &str) -> [Auth; 3] {
    [
        Auth::Query(token.to_owned()),
        Auth::Header(token.to_owned()),
        Auth::Subprotocol(token.to_owned()),
    ]
}

#[tokio::test]
async fn a_valid_token_authenticates_in_every_position() {
    let server = TestServer::start_default().await;
    for auth in auths(&token("alice", "")) {
        let mut c = Client::connect(server.addr, auth.clone()).await;
        assert_eq!(c.connected["data"]["authenticated"], true, "{auth:?}");
        assert_eq!(c.connected["data"]["user_id"], "alice", "{auth:?}");
        c.join("user:alice").await;
        c.close().await;
    }
    server.assert_connections(0).await;
}

#[tokio::test]
async fn the_bearer_subprotocol_selects_roomcast() {
    let server = TestServer::start_default().await;
    let c = Client::connect(server.addr, Auth::Subprotocol(token("alice", ""))).await;
    assert_eq!(
        c.response_headers
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("roomcast"),
        "the server must select `roomcast`, never echo the token"
    );
    c.close().await;
    // Without a subprotocol offer, none is selected.
    let c = Client::connect(server.addr, Auth::Query(token("alice", ""))).await;
    assert!(c.response_headers.get("sec-websocket-protocol").is_none());
    c.close().await;
}

#[tokio::test]
async fn invalid_tokens_connect_as_anonymous_by_default() {
    let server = TestServer::start_default().await;
    for (name, bad) in bad_tokens() {
        for auth in auths(&bad) {
            let mut c = Client::connect(server.addr, auth.clone()).await;
            assert_eq!(
                c.connected["data"]["authenticated"], false,
                "{name} via {auth:?}: {}",
                c.connected
            );
            assert!(c.connected["data"].get("user_id").is_none(), "{name}");
            // ... and really anonymous: alice's private room is closed to it.
            let reply = c
                .request(json!({"action": "join", "data": {"room": "user:alice"}}))
                .await;
            assert_eq!(reply["data"]["code"], "FORBIDDEN", "{name} via {auth:?}");
            c.close().await;
        }
    }
    server.assert_connections(0).await;
}

#[tokio::test]
async fn invalid_tokens_are_401_before_the_upgrade_when_configured() {
    let mut config = test_config();
    config.auth.invalid_token = InvalidTokenPolicy::Reject;
    let server = TestServer::start(config).await;
    for (name, bad) in bad_tokens() {
        // query
        let response = upgrade_request(server.addr, &format!("/ws/connect?token={bad}"), &[]).await;
        assert_eq!(response.status, 401, "{name} (query): {response:?}");
        let body: Value = response.json();
        assert!(body["error"]["code"].is_string(), "{name}: {body}");
        assert!(
            !response.text().contains(&bad),
            "the error must not echo the token"
        );
        // header
        let auth = format!("Bearer {bad}");
        let response =
            upgrade_request(server.addr, "/ws/connect", &[("authorization", &auth)]).await;
        assert_eq!(response.status, 401, "{name} (header): {response:?}");
        // subprotocol
        let offer = format!("roomcast, roomcast.bearer.{bad}");
        let response = upgrade_request(
            server.addr,
            "/ws/connect",
            &[("sec-websocket-protocol", &offer)],
        )
        .await;
        assert_eq!(response.status, 401, "{name} (subprotocol): {response:?}");
        // and a real WebSocket client is refused too
        let refused = Client::try_connect(server.addr, Auth::Query(bad.clone())).await;
        match refused {
            Err(roomcast_tests::tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401, "{name}")
            }
            Err(other) => panic!("{name}: expected an HTTP 401, got {other}"),
            Ok(_) => panic!("{name}: connected despite the reject policy"),
        }
    }
    // valid tokens and no token at all still connect
    let c = Client::connect(server.addr, Auth::Header(token("alice", ""))).await;
    assert_eq!(c.connected["data"]["authenticated"], true);
    c.close().await;
    let c = server.client().await;
    assert_eq!(c.connected["data"]["authenticated"], false);
    c.close().await;
    server.assert_connections(0).await;
    assert!(
        server
            .metric("roomcast_connections_rejected_total{reason=\"invalid_token\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test]
async fn rs256_configuration() {
    let (_dir, private, public) = rsa_keypair();
    let private_pem = std::fs::read(&private).unwrap();
    let public_pem = std::fs::read(&public).unwrap();
    let mut config = test_config();
    config.auth.algorithm = "RS256".to_owned();
    config.auth.jwt_secret = None;
    config.auth.public_key_file = Some(public.clone());
    let server = TestServer::start(config).await;
    let now = now_s() as i64;
    let claims = json!({"sub": "rsa-user", "exp": now + 3600});

    let good = rs256(&claims, &private_pem);
    for auth in auths(&good) {
        let c = Client::connect(server.addr, auth.clone()).await;
        assert_eq!(c.connected["data"]["authenticated"], true, "{auth:?}");
        assert_eq!(c.connected["data"]["user_id"], "rsa-user");
        c.close().await;
    }

    // Algorithm confusion: an HS256 token "signed" with the public key as the
    // HMAC secret must not pass, nor a plain HS256 one, nor alg none.
    let public_text = String::from_utf8(public_pem).unwrap();
    for (name, bad) in [
        (
            "HS256 with the public key",
            hs256_claims(&claims, &public_text),
        ),
        ("HS256 with the test secret", hs256_claims(&claims, SECRET)),
        ("alg none", alg_none(&claims)),
        (
            "RS256 expired",
            rs256(&json!({"sub": "rsa-user", "exp": now - 10}), &private_pem),
        ),
    ] {
        let c = Client::connect(server.addr, Auth::Query(bad)).await;
        assert_eq!(c.connected["data"]["authenticated"], false, "{name}");
        c.close().await;
    }

    // The publish API also verifies with RS256.
    let publisher = rs256(
        &json!({"sub": "svc", "exp": now + 3600, "scope": "publish"}),
        &private_pem,
    );
    let response = server
        .broadcast(&publisher, json!({"room": "r", "type": "queue_status"}))
        .await;
    assert_eq!(response.status, 200, "{response:?}");
    let response = server
        .broadcast(
            &hs256_claims(
                &json!({"sub": "svc", "exp": now + 3600, "scope": "publish"}),
                &public_text,
            ),
            json!({"room": "r", "type": "queue_status"}),
        )
        .await;
    assert_eq!(response.status, 401, "{response:?}");
    server.assert_connections(0).await;
}

/// `serve` itself never invents a key: the first-run development secret
/// (README, "First run") is made by the `roomcast serve` command only, on a
/// loopback address (`roomcast_net::devmode`; `tests/browser/console.test.mjs`
/// runs that binary). So a server configured without a key, as here on
/// loopback, keeps every connection anonymous and answers publish with 401.
#[tokio::test]
async fn without_a_configured_key_every_token_is_anonymous() {
    let mut config = test_config();
    config.auth.jwt_secret = None;
    let server = TestServer::start(config).await;
    let c = server.client_with_token(&token("alice", "publish")).await;
    assert_eq!(c.connected["data"]["authenticated"], false);
    c.close().await;
    let response = server
        .broadcast(
            &token("alice", "publish"),
            json!({"room": "r", "type": "queue_status"}),
        )
        .await;
    assert_eq!(response.status, 401);
}

#[tokio::test]
async fn leeway_tolerates_a_recently_expired_token() {
    let mut config = test_config();
    config.auth.leeway_s = 60;
    let server = TestServer::start(config).await;
    let c = server.client_with_token(&token_ttl("late", "", -10)).await;
    assert_eq!(c.connected["data"]["authenticated"], true);
    c.close().await;
    let c = server
        .client_with_token(&token_ttl("later", "", -120))
        .await;
    assert_eq!(c.connected["data"]["authenticated"], false);
    c.close().await;
}

#[tokio::test]
async fn offering_only_the_roomcast_subprotocol_is_fine() {
    use roomcast_tests::tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = TestServer::start_default().await;
    let mut request = server.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "roomcast".parse().unwrap());
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut ws, response) = roomcast_tests::tokio_tungstenite::client_async(request, stream)
        .await
        .expect("handshake");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("roomcast")
    );
    use futures_util::StreamExt;
    let first = ws.next().await.unwrap().unwrap();
    let connected: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(connected["data"]["authenticated"], false);
}

#[tokio::test]
async fn authenticated_only_rooms() {
    use roomcast_core::access::{AccessRule, RoomAccess};
    let mut config = test_config();
    config.access.default = RoomAccess::Authenticated;
    config.access.rules.push(AccessRule {
        prefix: "public:".to_owned(),
        access: RoomAccess::Public,
    });
    let server = TestServer::start(config).await;
    let mut anonymous = server.client().await;
    let mut alice = server.client_with_token(&token("alice", "")).await;
    let reply = anonymous
        .request(json!({"action": "join", "data": {"room": "members"}}))
        .await;
    assert_eq!(reply["data"]["code"], "FORBIDDEN", "{reply}");
    anonymous.join("public:lobby").await;
    alice.join("members").await;
    alice.join("public:lobby").await;
    alice.join("user:alice").await;
    let reply = alice
        .request(json!({"action": "join", "data": {"room": "user:bob"}}))
        .await;
    assert_eq!(reply["data"]["code"], "FORBIDDEN", "{reply}");
    anonymous.close().await;
    alice.close().await;
}

/// `user:<sub>` rooms for the `sub` formats of common identity providers:
/// the sub is written with the room-name encoding (`|` → `%7C`, `@` →
/// `%40`, `+` → `%2B`); only its owner may join, and a publisher reaches it.
#[tokio::test]
async fn private_user_rooms_work_for_provider_subs() {
    let server = TestServer::start_default().await;
    let mut other = server.client_with_token(&token("alice", "")).await;
    for (sub, room) in [
        (
            "auth0|5f1c2d3e4f5a6b7c8d9e0f1a",
            "user:auth0%7C5f1c2d3e4f5a6b7c8d9e0f1a",
        ),
        ("google-oauth2|1234", "user:google-oauth2%7C1234"),
        ("alice@example.com", "user:alice%40example.com"),
        ("bo+b@example.com", "user:bo%2Bb%40example.com"),
    ] {
        let mut owner = Client::connect(server.addr, Auth::Header(token(sub, ""))).await;
        assert_eq!(owner.connected["data"]["user_id"], sub);
        owner.join(room).await;
        let reply = other
            .request(json!({"action": "join", "data": {"room": room}}))
            .await;
        assert_eq!(reply["data"]["code"], "FORBIDDEN", "{room}: {reply}");
        let response = server
            .broadcast(
                &token("backend", "publish"),
                json!({"room": room, "type": "system_info", "data": {"message": "hi"}}),
            )
            .await;
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.json()["delivered"], 1, "{room}");
        let got = owner.recv_json().await;
        assert_eq!(got["room"], room, "{got}");
        owner.close().await;
    }
    other.close().await;
}

/// The server reads the wall clock for wall time: after a step of the
/// wall clock (an NTP correction, a VM paused for hours), envelope
/// timestamps and token expiry follow it at once. (It used to keep
/// `start + monotonic elapsed`, so a token that had expired by the wall
/// clock still authenticated, and timestamps stayed behind.)
#[tokio::test]
async fn wall_clock_steps_are_seen_by_timestamps_and_token_checks() {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;
    let wall = Arc::new(AtomicI64::new(now_s() as i64 * 1000));
    let source = wall.clone();
    let clock = roomcast_net::Clock::with_wall_source(move || source.load(Ordering::SeqCst));
    let server = TestServer::start_with_clock(test_config(), clock).await;
    let token = token_ttl("alice", "publish", 3600);
    let mut c = server.client_with_token(&token).await;
    assert_eq!(c.connected["data"]["authenticated"], true);
    let year = |m: &Value| m["timestamp"].as_str().unwrap()[..4].to_owned();
    let now_year = year(&c.request(json!({"action": "ping"})).await);

    // The wall clock steps ten years ahead.
    wall.fetch_add(10 * 366 * 86_400_000, Ordering::SeqCst);
    let pong = c.request(json!({"action": "ping"})).await;
    assert_eq!(
        year(&pong).parse::<i32>().unwrap(),
        now_year.parse::<i32>().unwrap() + 10,
        "{pong}"
    );
    // The token has expired by the wall clock: refused everywhere.
    let later = server.client_with_token(&token).await;
    assert_eq!(later.connected["data"]["authenticated"], false);
    server
        .broadcast(&token, json!({"room": "r", "type": "queue_status"}))
        .await
        .assert_error(401, "TOKEN_EXPIRED");
    let refresh = c
        .request(json!({"action": "refresh", "data": {"token": token}}))
        .await;
    assert_eq!(refresh["data"]["code"], "INVALID_TOKEN", "{refresh}");
    later.close().await;
}
