//! PROTOCOL section 5, granted rooms and hooks, against the real server
//! with a real HTTP server (`fake_http`) playing the application's
//! backend: grants in tokens (exact, by prefix), the join hook (allow,
//! deny, timeout, unreachable, bad answers, `cache_ms`, `calls_max`) with a
//! bystander unaffected while a hook is slow, the connect hook with a
//! cookie (authenticated, anonymous, 401/403, 503 `HOOK_UNAVAILABLE`), and
//! a refresh that revokes a grant.

use std::net::SocketAddr;
use std::time::Duration;

use roomcast_core::access::AccessRule;
use roomcast_core::{AccessRules, RoomAccess};
use roomcast_net::config::ServerConfig;
use roomcast_tests::fake_http::{FakeHttp, Recorded, Reply};
use roomcast_tests::tokens::{hs256_claims, now_s, token};
use roomcast_tests::{
    assert_error, test_config, upgrade_request, Auth, Client, ConnectOptions, TestServer, SECRET,
    TIMEOUT,
};
use serde_json::{json, Value};

/// `team:` rooms are `granted`; everything else public.
fn config() -> ServerConfig {
    let mut config = test_config();
    config.access = AccessRules {
        rules: vec![AccessRule {
            prefix: "team:".into(),
            access: RoomAccess::Granted,
        }],
        default: RoomAccess::Public,
    };
    config
}

fn with_join_hook(fake: &FakeHttp) -> ServerConfig {
    let mut config = config();
    config.hooks.join_url = Some(fake.url("/join"));
    config.hooks.timeout_ms = 500;
    config
}

/// A token of `sub` granting `rooms`.
fn granting(sub: &str, rooms: Value) -> String {
    let now = now_s() as i64;
    hs256_claims(
        &json!({"sub": sub, "exp": now + 3600, "rooms": rooms}),
        SECRET,
    )
}

/// Connects with extra upgrade headers (a cookie, a token header).
async fn connect_with(addr: SocketAddr, headers: &[(&str, &str)]) -> Client {
    let headers = headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let options = ConnectOptions {
        headers,
        ..ConnectOptions::from(Auth::None)
    };
    Client::connect(addr, options).await
}

async fn join_reply(client: &mut Client, room: &str) -> Value {
    client
        .request(json!({"action": "join", "data": {"room": room}}))
        .await
}

#[tokio::test]
async fn grants_in_the_token_admit_exact_rooms_and_prefixes() {
    let server = TestServer::start(config()).await;
    let token = granting("alice", json!(["team:42", "team:ops-*"]));
    let mut alice = Client::connect(server.addr, Auth::Query(token)).await;
    alice.join("team:42").await;
    alice.join("team:ops-1").await;
    alice.join("lobby").await;
    for room in ["team:4", "team:420", "team:ops"] {
        assert_error(&join_reply(&mut alice, room).await, "FORBIDDEN");
    }
    // A token without grants, and an anonymous connection: no team room.
    let mut bob = Client::connect(server.addr, Auth::Query(token_of("bob"))).await;
    assert_error(&join_reply(&mut bob, "team:42").await, "FORBIDDEN");
    let mut anonymous = server.client().await;
    assert_error(&join_reply(&mut anonymous, "team:42").await, "FORBIDDEN");
    // A malformed claim makes the token invalid (anonymous by default
    // policy), never a partial grant.
    for bad in [json!("team:42"), json!(["team:42", 7]), json!(["team 42"])] {
        let c = Client::connect(server.addr, Auth::Query(granting("eve", bad.clone()))).await;
        assert_eq!(c.connected["data"]["authenticated"], false, "{bad}");
    }
}

fn token_of(sub: &str) -> String {
    token(sub, "")
}

/// The join hook's answers, by room.
fn backend(request: &Recorded) -> Reply {
    let body = request.json();
    match body["room"].as_str().unwrap_or_default() {
        "team:ok" => Reply::json(&json!({"allow": true})),
        "team:cached" => Reply::json(&json!({"allow": true, "cache_ms": 60_000})),
        "team:no" => Reply::json(&json!({"allow": false, "reason": "not in this team"})),
        "team:500" => Reply::status(500, r#"{"error":"boom"}"#),
        "team:junk" => Reply::status(200, "<html>not json</html>"),
        "team:maybe" => Reply::json(&json!({"allow": "yes"})),
        "team:slow" => Reply::json(&json!({"allow": true})).delayed(Duration::from_secs(3)),
        _ => Reply::status(404, "{}"),
    }
}

#[tokio::test]
async fn the_join_hook_allows_denies_and_fails_closed() {
    let fake = FakeHttp::start().await;
    fake.route("/join", backend);
    let server = TestServer::start(with_join_hook(&fake)).await;
    let token = granting("alice", json!(["team:mine"]));
    let mut alice = connect_with(
        server.addr,
        &[
            ("authorization", &format!("Bearer {token}")),
            ("cookie", "session=s3cret; theme=dark"),
            ("x-other", "not forwarded"),
        ],
    )
    .await;
    // Covered by the grants: no call.
    alice.join("team:mine").await;
    assert_eq!(fake.count("/join"), 0);

    alice.join("team:ok").await;
    let call = &fake.requests("/join")[0];
    assert_eq!(call.method, "POST");
    assert_eq!(
        call.json(),
        json!({"connection_id": alice.connection_id, "user": "alice", "room": "team:ok"})
    );
    assert_eq!(call.header("cookie"), Some("session=s3cret; theme=dark"));
    assert_eq!(
        call.header("authorization"),
        None,
        "tokens are not forwarded"
    );
    assert_eq!(call.header("x-other"), None);

    assert_error(&join_reply(&mut alice, "team:no").await, "FORBIDDEN");
    for room in ["team:500", "team:junk", "team:maybe", "team:unknown"] {
        let reply = join_reply(&mut alice, room).await;
        assert_error(&reply, "HOOK_UNAVAILABLE");
    }
    // Still open, still working.
    alice.join("lobby").await;
    let metrics = server.metrics_text().await;
    let sample = |s: &str| roomcast_tests::metric_value(&metrics, s).unwrap_or(0.0);
    assert_eq!(sample(r#"roomcast_hook_calls_total{hook="join"}"#), 6.0);
    assert_eq!(
        sample(r#"roomcast_hook_failures_total{hook="join",kind="status"}"#),
        2.0
    );
    assert_eq!(
        sample(r#"roomcast_hook_failures_total{hook="join",kind="bad_body"}"#),
        2.0
    );
    assert!(
        metrics.contains("roomcast_hook_seconds_bucket"),
        "{metrics}"
    );
    assert!(!metrics.contains("s3cret"));
}

#[tokio::test]
async fn a_slow_hook_times_out_in_order_and_delays_nobody_else() {
    let fake = FakeHttp::start().await;
    fake.route("/join", backend);
    let mut config = with_join_hook(&fake);
    config.hooks.timeout_ms = 2_500;
    let server = TestServer::start(config).await;
    let mut alice = Client::connect(server.addr, Auth::Query(token_of("alice"))).await;
    let mut bystander = server.client().await;
    bystander.join("lobby").await;
    // The join waits for the hook; the ping sent after it waits too.
    alice
        .send_json(json!({"action": "join", "data": {"room": "team:slow"}, "id": "j"}))
        .await;
    alice.send_json(json!({"action": "ping", "id": "p"})).await;
    assert_eq!(fake.wait_for("/join", 1, TIMEOUT).await, 1);
    // Meanwhile a bystander's round trip is unaffected: well within the
    // hook's 2.5 s timeout (a generous bound).
    let started = std::time::Instant::now();
    let pong = bystander
        .request(json!({"action": "ping", "id": "b"}))
        .await;
    assert_eq!(pong["type"], "pong");
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "bystander waited {:?}",
        started.elapsed()
    );
    let reply = alice.recv_json().await;
    assert_error(&reply, "HOOK_UNAVAILABLE");
    assert_eq!(reply["id"], "j");
    let pong = alice.recv_json().await;
    assert_eq!(
        (pong["type"].clone(), pong["id"].clone()),
        (json!("pong"), json!("p"))
    );
    assert_eq!(
        server
            .metric(r#"roomcast_hook_failures_total{hook="join",kind="timeout"}"#)
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn an_unreachable_hook_is_hook_unavailable() {
    let mut fake = FakeHttp::start().await;
    let server = TestServer::start(with_join_hook(&fake)).await;
    fake.stop();
    let mut alice = Client::connect(server.addr, Auth::Query(token_of("alice"))).await;
    assert_error(&join_reply(&mut alice, "team:ok").await, "HOOK_UNAVAILABLE");
    // The backend comes back: the same join now works.
    fake.restart().await;
    fake.route("/join", backend);
    alice.join("team:ok").await;
    assert_eq!(
        server
            .metric(r#"roomcast_hook_failures_total{hook="join",kind="connect"}"#)
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn an_allow_with_cache_ms_is_remembered_per_user_not_for_anonymous() {
    let fake = FakeHttp::start().await;
    fake.route("/join", backend);
    let server = TestServer::start(with_join_hook(&fake)).await;
    let mut alice = Client::connect(server.addr, Auth::Query(token_of("alice"))).await;
    let leave = json!({"action": "leave", "data": {"room": "team:cached"}});
    alice.join("team:cached").await;
    alice.request(leave.clone()).await;
    alice.join("team:cached").await;
    // Another connection of the same user: cached too.
    let mut again = Client::connect(server.addr, Auth::Query(token_of("alice"))).await;
    again.join("team:cached").await;
    assert_eq!(fake.count("/join"), 1);
    // Another user, and anonymous connections, are asked every time.
    let mut bob = Client::connect(server.addr, Auth::Query(token_of("bob"))).await;
    bob.join("team:cached").await;
    let mut anonymous = server.client().await;
    anonymous.join("team:cached").await;
    anonymous.request(leave).await;
    anonymous.join("team:cached").await;
    assert_eq!(fake.count("/join"), 4);
    let anonymous_call = &fake.requests("/join")[2];
    assert_eq!(anonymous_call.json()["user"], Value::Null);
    assert_eq!(
        server.metric("roomcast_hook_cache_hits_total").await,
        Some(2.0)
    );
}

#[tokio::test]
async fn over_calls_max_a_join_is_refused_at_once() {
    let fake = FakeHttp::start().await;
    fake.route("/join", |_| {
        Reply::json(&json!({"allow": true})).delayed(Duration::from_millis(1500))
    });
    let mut config = with_join_hook(&fake);
    config.hooks.calls_max = 1;
    config.hooks.timeout_ms = 5_000;
    let server = TestServer::start(config).await;
    let mut first = Client::connect(server.addr, Auth::Query(token_of("a"))).await;
    let mut second = Client::connect(server.addr, Auth::Query(token_of("b"))).await;
    first
        .send_json(json!({"action": "join", "data": {"room": "team:x"}}))
        .await;
    assert_eq!(fake.wait_for("/join", 1, TIMEOUT).await, 1);
    // The one call slot is taken: refused without a call.
    assert_error(&join_reply(&mut second, "team:x").await, "HOOK_UNAVAILABLE");
    assert_eq!(fake.count("/join"), 1);
    let reply = first.recv_json().await;
    assert_eq!(reply["type"], "system_info", "{reply}");
    // The slot is free again.
    second.join("team:x").await;
    assert_eq!(
        server
            .metric(r#"roomcast_hook_failures_total{hook="join",kind="busy"}"#)
            .await,
        Some(1.0)
    );
}

/// The connect hook's answers, by session cookie.
fn sessions(request: &Recorded) -> Reply {
    match request.header("cookie").unwrap_or_default() {
        "session=alice" => {
            Reply::json(&json!({"user": "alice", "rooms": ["team:1"], "expires_at": null}))
        }
        "session=null" => Reply::json(&json!({"user": null})),
        "session=empty" => Reply::json(&json!({})),
        "session=expiring" => Reply::json(&json!({"user": "carol", "expires_at": now_s() + 2})),
        "session=401" => Reply::status(401, "{}"),
        "session=403" => Reply::status(403, "{}"),
        "session=bad-rooms" => Reply::json(&json!({"user": "x", "rooms": "team:1"})),
        _ => Reply::status(500, "{}"),
    }
}

#[tokio::test]
async fn the_connect_hook_authenticates_a_cookie() {
    let fake = FakeHttp::start().await;
    fake.route("/connect", sessions);
    let mut config = config();
    config.hooks.connect_url = Some(fake.url("/connect"));
    let server = TestServer::start(config).await;

    let mut alice = connect_with(server.addr, &[("cookie", "session=alice")]).await;
    assert_eq!(alice.connected["data"]["authenticated"], true);
    assert_eq!(alice.connected["data"]["user_id"], "alice");
    let call = &fake.requests("/connect")[0];
    assert_eq!(call.json(), json!({"connection_id": alice.connection_id}));
    assert_eq!(call.header("cookie"), Some("session=alice"));
    // Its grants come from the hook.
    alice.join("team:1").await;
    assert_error(&join_reply(&mut alice, "team:2").await, "FORBIDDEN");

    for cookie in ["session=null", "session=empty"] {
        let c = connect_with(server.addr, &[("cookie", cookie)]).await;
        assert_eq!(c.connected["data"]["authenticated"], false, "{cookie}");
    }
    // A token wins: the hook is not asked.
    let before = fake.count("/connect");
    let c = Client::connect(server.addr, Auth::Query(token_of("dave"))).await;
    assert_eq!(c.connected["data"]["user_id"], "dave");
    assert_eq!(fake.count("/connect"), before);

    for (cookie, status, code) in [
        ("session=401", 401, "UNAUTHORIZED"),
        ("session=403", 403, "FORBIDDEN"),
        ("session=500", 503, "HOOK_UNAVAILABLE"),
        ("session=bad-rooms", 503, "HOOK_UNAVAILABLE"),
    ] {
        let response = upgrade_request(server.addr, "/ws/connect", &[("cookie", cookie)]).await;
        response.assert_error(status, code);
    }

    // expires_at: closed with 4001 like an expired token.
    let mut carol = connect_with(server.addr, &[("cookie", "session=expiring")]).await;
    assert_eq!(carol.connected["data"]["user_id"], "carol");
    carol.expect_close(4001).await;
}

#[tokio::test]
async fn an_unreachable_connect_hook_refuses_with_503() {
    let mut fake = FakeHttp::start().await;
    let mut config = config();
    config.hooks.connect_url = Some(fake.url("/connect"));
    config.hooks.timeout_ms = 300;
    fake.route("/connect", |_| {
        Reply::json(&json!({})).delayed(Duration::from_secs(2))
    });
    let server = TestServer::start(config).await;
    // Too slow...
    let response = upgrade_request(server.addr, "/ws/connect", &[]).await;
    response.assert_error(503, "HOOK_UNAVAILABLE");
    // ...and down.
    fake.stop();
    let response = upgrade_request(server.addr, "/ws/connect", &[]).await;
    response.assert_error(503, "HOOK_UNAVAILABLE");
    let metrics = server.metrics_text().await;
    let sample = |s: &str| roomcast_tests::metric_value(&metrics, s);
    assert_eq!(
        sample(r#"roomcast_hook_failures_total{hook="connect",kind="timeout"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(r#"roomcast_connections_rejected_total{reason="hook_unavailable"}"#),
        Some(2.0)
    );
}

#[tokio::test]
async fn a_refresh_that_drops_a_grant_leaves_the_room() {
    let server = TestServer::start(config()).await;
    let first = granting("alice", json!(["team:1", "team:2"]));
    let mut alice = Client::connect(server.addr, Auth::Query(first)).await;
    alice.join("team:1").await;
    alice.join("team:2").await;
    let fresh = granting("alice", json!(["team:1"]));
    let reply = alice
        .request(json!({"action": "refresh", "data": {"token": fresh}, "id": "r"}))
        .await;
    assert_eq!(reply["type"], "system_info", "{reply}");
    assert_eq!(reply["id"], "r");
    let warning = alice.recv_json().await;
    assert_eq!(warning["type"], "system_warning", "{warning}");
    assert_eq!(warning["data"]["code"], "ACCESS_REVOKED");
    assert_eq!(warning["data"]["room"], "team:2");
    // Broadcasts to team:2 no longer reach it; team:1 still does.
    let publisher = token("api", "publish");
    for room in ["team:2", "team:1"] {
        let response = server
            .broadcast(
                &publisher,
                json!({"room": room, "type": "queue_status", "data": {}}),
            )
            .await;
        assert_eq!(response.status, 200, "{response:?}");
    }
    let next = alice.recv_json().await;
    assert_eq!(next["room"], "team:1", "{next}");
    assert_error(&join_reply(&mut alice, "team:2").await, "FORBIDDEN");
}

#[tokio::test]
async fn roomcast_token_mints_grants_the_server_honours() {
    let output = std::process::Command::new(roomcast_tests::binary::path())
        .args(["token", "--sub", "alice", "--rooms", "team:42, team:ops-*"])
        .env("ROOMCAST_JWT_SECRET", SECRET)
        .output()
        .expect("run roomcast token");
    assert!(output.status.success(), "{output:?}");
    let minted = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let server = TestServer::start(config()).await;
    let mut alice = Client::connect(server.addr, Auth::Query(minted)).await;
    alice.join("team:42").await;
    alice.join("team:ops-1").await;
    assert_error(&join_reply(&mut alice, "team:43").await, "FORBIDDEN");
    // A bad entry is refused before a token is printed.
    let bad = std::process::Command::new(roomcast_tests::binary::path())
        .args(["token", "--sub", "alice", "--rooms", "team 42"])
        .env("ROOMCAST_JWT_SECRET", SECRET)
        .output()
        .expect("run roomcast token");
    assert!(!bad.status.success());
    assert!(bad.stdout.is_empty());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--rooms"));
}
