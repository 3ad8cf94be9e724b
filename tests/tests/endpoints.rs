//! PROTOCOL section 1: the HTTP endpoints next to the WebSocket.

use roomcast_tests::{http, metric_value, TestServer};

#[tokio::test]
async fn ws_status_has_the_seed_shape() {
    let server = TestServer::start_default().await;
    let response = http(server.addr, "GET", "/ws/status", &[], "").await;
    assert_eq!(response.status, 200);
    assert!(response
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json")));
    let status = response.json();
    assert_eq!(status["status"], "operational", "{status}");
    assert_eq!(status["active_connections"], 0, "{status}");
    let types: Vec<&str> = status["supported_message_types"]
        .as_array()
        .expect("supported_message_types is a list")
        .iter()
        .map(|t| t.as_str().expect("type names are strings"))
        .collect();
    for required in [
        "connected",
        "pong",
        "error",
        "system_info",
        "system_warning",
        "system_error",
        "download_progress",
        "download_complete",
        "download_failed",
        "download_added",
        "download_removed",
        "queue_status",
        "queue_started",
        "queue_stopped",
        "queue_paused",
        "queue_resumed",
        "scan_started",
        "scan_progress",
        "scan_complete",
        "scan_failed",
        "presence",
    ] {
        assert!(
            types.contains(&required),
            "{required} missing from {types:?}"
        );
    }

    // active_connections follows real clients.
    let a = server.client().await;
    let b = server.client().await;
    server.assert_connections(2).await;
    a.close().await;
    server.assert_connections(1).await;
    b.close().await;
    server.assert_connections(0).await;
}

#[tokio::test]
async fn custom_types_are_announced() {
    let mut config = roomcast_tests::test_config();
    config.custom_types = vec!["build_finished".to_owned()];
    let server = TestServer::start(config).await;
    let status = server.status().await;
    assert!(
        status["supported_message_types"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "build_finished"),
        "{status}"
    );
}

#[tokio::test]
async fn plain_get_on_ws_connect_is_426_with_a_json_explanation() {
    let server = TestServer::start_default().await;
    let response = http(server.addr, "GET", "/ws/connect", &[], "").await;
    response.assert_error(426, "UPGRADE_REQUIRED");
    assert_eq!(
        response.header("upgrade").map(str::to_ascii_lowercase),
        Some("websocket".to_owned())
    );
    // The server is unharmed.
    let client = server.client().await;
    client.close().await;
    server.assert_connections(0).await;
}

#[tokio::test]
async fn unknown_paths_are_404_json() {
    let server = TestServer::start_default().await;
    for path in [
        "/nope",
        "/ws",
        "/ws/connect/extra",
        "/api/broadcast/x",
        "/index.html",
        "/client",
        "/client/other.js",
    ] {
        let response = http(server.addr, "GET", path, &[], "").await;
        response.assert_error(404, "NOT_FOUND");
    }
}

#[tokio::test]
async fn wrong_methods_are_405_json() {
    let server = TestServer::start_default().await;
    for (method, path) in [
        ("POST", "/ws/status"),
        ("POST", "/ws/connect"),
        ("GET", "/api/broadcast"),
        ("PUT", "/api/send"),
        ("DELETE", "/metrics"),
        ("POST", "/healthz"),
        ("POST", "/"),
        ("PUT", "/client/roomcast.js"),
    ] {
        let response = http(server.addr, method, path, &[], "").await;
        response.assert_error(405, "METHOD_NOT_ALLOWED");
    }
}

/// The console page and the browser client: embedded, typed, revalidated
/// with their ETag.
#[tokio::test]
async fn console_and_client_are_served_with_an_etag() {
    let server = TestServer::start_default().await;
    for (path, content_type, marker) in [
        (
            "/",
            "text/html; charset=utf-8",
            "<title>roomcast console</title>",
        ),
        (
            "/client/roomcast.js",
            "text/javascript; charset=utf-8",
            "export class RoomcastClient",
        ),
    ] {
        let response = http(server.addr, "GET", path, &[], "").await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.header("content-type"), Some(content_type));
        assert_eq!(response.header("cache-control"), Some("no-cache"));
        assert!(response.text().contains(marker), "{path}");
        let etag = response.header("etag").expect("an ETag").to_owned();
        let again = http(server.addr, "GET", path, &[("if-none-match", &etag)], "").await;
        assert_eq!(again.status, 304, "{path}");
        assert_eq!(again.header("etag"), Some(etag.as_str()));
        assert!(again.body.is_empty());
        let stale = http(server.addr, "GET", path, &[("if-none-match", "\"0\"")], "").await;
        assert_eq!(stale.status, 200, "{path}");
    }
}

/// RFC 9110 section 15.5.6: "The origin server MUST generate an Allow header
/// field in a 405 (Method Not Allowed) response".
#[tokio::test]
async fn method_not_allowed_names_the_allowed_methods() {
    let server = TestServer::start_default().await;
    for (method, path, allowed) in [
        ("POST", "/ws/status", "GET"),
        ("GET", "/api/broadcast", "POST"),
    ] {
        let response = http(server.addr, method, path, &[], "").await;
        assert_eq!(response.status, 405);
        let allow = response.header("allow");
        assert!(
            allow.is_some_and(|a| a.split(',').any(|m| m.trim() == allowed)),
            "{method} {path}: 405 without an Allow header naming {allowed}: {response:?}"
        );
    }
}

#[tokio::test]
async fn healthz_answers() {
    let server = TestServer::start_default().await;
    let response = http(server.addr, "GET", "/healthz", &[], "").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["status"], "ok");
}

#[tokio::test]
async fn metrics_is_openmetrics_text_with_the_connection_gauge() {
    let server = TestServer::start_default().await;
    let client = server.client().await;
    let response = http(server.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(response.status, 200);
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/openmetrics-text")
            || content_type.starts_with("text/plain"),
        "{content_type}"
    );
    let text = response.text();
    assert!(text.contains("# TYPE roomcast_connections gauge"), "{text}");
    assert!(text.contains("# HELP roomcast_connections"), "{text}");
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF: {text}"
    );
    assert_eq!(
        metric_value(&text, "roomcast_connections"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "roomcast_connections_opened_total"),
        Some(1.0),
        "{text}"
    );
    client.close().await;
    server.assert_connections(0).await;
    assert_eq!(
        server
            .metric("roomcast_disconnects_total{reason=\"client\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_broken_upgrade_request_is_400_json() {
    let server = TestServer::start_default().await;
    // Upgrade headers without a Sec-WebSocket-Key.
    let response = http(
        server.addr,
        "GET",
        "/ws/connect",
        &[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
        ],
        "",
    )
    .await;
    assert!(
        response.status == 400 || response.status == 426,
        "{response:?}"
    );
    assert!(response.json()["error"]["code"].is_string());
    server.assert_connections(0).await;
}

/// A TCP connection that never sends a request (or only part of one) is
/// closed after `handshake_timeout_ms`.
#[tokio::test]
async fn silent_and_partial_requests_are_cut_off_by_the_handshake_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = roomcast_tests::test_config();
    config.limits.handshake_timeout_ms = 300;
    let server = TestServer::start(config).await;
    for partial in ["", "GET /ws/connect HTTP/1.1\r\nHost: x\r\n"] {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(partial.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let read =
            tokio::time::timeout(roomcast_tests::TIMEOUT, stream.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "connection with {partial:?} still open after the handshake timeout"
        );
    }
    // The server still serves.
    let c = server.client().await;
    c.close().await;
}
