//! Admission control before the upgrade: connection limits (503) and
//! allowed origins (403).

use std::time::Duration;

use roomcast_tests::{test_config, upgrade_request, Client, ConnectOptions, TestServer, TIMEOUT};

async fn connect_when_admitted(server: &TestServer) -> Client {
    // A slot is released when the session task ends, shortly after the close.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match Client::try_connect(server.addr, roomcast_tests::Auth::None).await {
            Ok(c) => return c,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("not admitted again after a close: {e}"),
        }
    }
}

#[tokio::test]
async fn over_connections_max_is_503_before_the_upgrade() {
    let mut config = test_config();
    config.limits.connections_max = 2;
    let server = TestServer::start(config).await;
    let a = server.client().await;
    let b = server.client().await;
    let response = upgrade_request(server.addr, "/ws/connect", &[]).await;
    response.assert_error(503, "TOO_MANY_CONNECTIONS");
    match Client::try_connect(server.addr, roomcast_tests::Auth::None).await {
        Err(roomcast_tests::tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 503)
        }
        Err(other) => panic!("expected 503, got {other}"),
        Ok(_) => panic!("a third connection was admitted"),
    }
    server.assert_connections(2).await;
    // Other endpoints still answer at capacity.
    assert_eq!(server.status().await["active_connections"], 2);
    assert!(
        server
            .metric("roomcast_connections_rejected_total{reason=\"capacity\"}")
            .await
            .unwrap_or(0.0)
            >= 2.0
    );
    // A slot freed is a slot available.
    a.close().await;
    let c = connect_when_admitted(&server).await;
    server.assert_connections(2).await;
    b.close().await;
    c.close().await;
    server.assert_connections(0).await;
}

#[tokio::test]
async fn over_connections_per_ip_max_is_503_before_the_upgrade() {
    let mut config = test_config();
    config.limits.connections_per_ip_max = 3;
    let server = TestServer::start(config).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(server.client().await);
    }
    let response = upgrade_request(server.addr, "/ws/connect", &[]).await;
    response.assert_error(503, "TOO_MANY_CONNECTIONS");
    assert!(
        server
            .metric("roomcast_connections_rejected_total{reason=\"per_ip\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    clients.pop().unwrap().close().await;
    clients.push(connect_when_admitted(&server).await);
    server.assert_connections(3).await;
    for c in clients {
        c.close().await;
    }
    server.assert_connections(0).await;
}

/// Refused upgrades never count as connections, and a burst of them does not
/// leak slots.
#[tokio::test]
async fn refusals_do_not_leak_slots() {
    let mut config = test_config();
    config.limits.connections_max = 1;
    let server = TestServer::start(config).await;
    let a = server.client().await;
    for _ in 0..20 {
        let response = upgrade_request(server.addr, "/ws/connect", &[]).await;
        assert_eq!(response.status, 503);
    }
    a.close().await;
    let b = connect_when_admitted(&server).await;
    b.close().await;
    server.assert_connections(0).await;
}

#[tokio::test]
async fn a_foreign_origin_is_403() {
    let mut config = test_config();
    config.allowed_origins = vec![
        "https://app.example.com".to_owned(),
        "http://localhost:3000".to_owned(),
    ];
    let server = TestServer::start(config).await;
    for origin in [
        "https://evil.example.com",
        "https://app.example.com.evil.com",
        "http://app.example.com",
        "https://APP.example.com:443",
        "null",
    ] {
        let response = upgrade_request(server.addr, "/ws/connect", &[("origin", origin)]).await;
        response.assert_error(403, "ORIGIN_NOT_ALLOWED");
        let refused = Client::try_connect(
            server.addr,
            ConnectOptions {
                auth: roomcast_tests::Auth::None,
                origin: Some(origin.to_owned()),
                config: None,
                headers: Vec::new(),
            },
        )
        .await;
        assert!(
            matches!(
                refused,
                Err(roomcast_tests::tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 403
            ),
            "{origin}"
        );
    }
    for origin in ["https://app.example.com", "http://localhost:3000"] {
        let c = Client::try_connect(
            server.addr,
            ConnectOptions {
                auth: roomcast_tests::Auth::None,
                origin: Some(origin.to_owned()),
                config: None,
                headers: Vec::new(),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{origin} is allowed: {e}"));
        c.close().await;
    }
    server.assert_connections(0).await;
}

/// Admission comes before the token: over the limit, a token is not even
/// verified (an RS256 one costs real CPU), so a flood of connections with
/// expensive or bad tokens over the cap costs nothing. With the reject
/// policy, a bad token over the limit therefore gets 503, not 401.
#[tokio::test]
async fn admission_is_checked_before_the_token() {
    let mut config = test_config();
    config.limits.connections_max = 1;
    config.auth.invalid_token = roomcast_net::config::InvalidTokenPolicy::Reject;
    let server = TestServer::start(config).await;
    let only = server.client().await;
    let bad = roomcast_tests::tokens::hs256_claims(
        &serde_json::json!({"sub": "x", "exp": roomcast_tests::tokens::now_s() + 60}),
        "not-the-secret",
    );
    let auth = format!("Bearer {bad}");
    let response = upgrade_request(server.addr, "/ws/connect", &[("authorization", &auth)]).await;
    response.assert_error(503, "TOO_MANY_CONNECTIONS");
    assert_eq!(
        server
            .metric("roomcast_connections_rejected_total{reason=\"invalid_token\"}")
            .await,
        None,
        "the token was verified although the server was full"
    );
    only.close().await;
    // Below the limit, the token is checked as before.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let response =
            upgrade_request(server.addr, "/ws/connect", &[("authorization", &auth)]).await;
        if response.status == 401 {
            response.assert_error(401, "INVALID_TOKEN");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{response:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
