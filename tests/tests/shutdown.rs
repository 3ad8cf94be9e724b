//! Graceful shutdown of the real `roomcast` binary on SIGTERM: every client
//! gets close 1001, the process exits 0 within the drain time.

use std::time::Duration;

use roomcast_tests::binary::Process;
use roomcast_tests::tokens::{publisher, token};
use roomcast_tests::{Client, SECRET};
use serde_json::json;

const DRAIN_MS: u64 = 5_000;

/// The binary, started with the test secret and the drain time, plus `env`.
async fn start(env: &[(&str, &str)]) -> Process {
    let mut all = vec![
        ("ROOMCAST_JWT_SECRET", SECRET.to_owned()),
        ("ROOMCAST_SHUTDOWN_DRAIN_MS", DRAIN_MS.to_string()),
    ];
    all.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
    Process::start(&[], &all).await
}

async fn run(signal: &str) {
    let mut server = start(&[]).await;
    let addr = server.addr;
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut c = if i % 2 == 0 {
            Client::connect(addr, roomcast_tests::Auth::None).await
        } else {
            Client::connect(
                addr,
                roomcast_tests::Auth::Query(token(&format!("u{i}"), "")),
            )
            .await
        };
        c.join("news").await;
        clients.push(c);
    }
    // The process serves for real before the signal.
    let response = roomcast_tests::api_post(
        addr,
        "/api/broadcast",
        Some(&publisher()),
        json!({"room": "news", "type": "system_info", "data": {"message": "bye soon"}}).to_string(),
    )
    .await;
    assert_eq!(response.json()["delivered"], 4, "{response:?}");
    for c in &mut clients {
        assert_eq!(c.recv_json().await["seq"], 1);
    }

    server.signal(signal);
    let closes = clients.iter_mut().map(|c| c.expect_close(1001));
    for before in futures_util::future::join_all(closes).await {
        assert!(before.is_empty(), "{before:?}");
    }
    let status = server.wait(Duration::from_millis(DRAIN_MS + 10_000)).await;
    assert!(status.success(), "exit status after {signal}: {status}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_0() {
    run("TERM").await;
}

#[tokio::test]
async fn sigint_closes_clients_with_1001_and_exits_0() {
    run("INT").await;
}

/// A client that does not read cannot hold the process hostage: the process
/// still exits 0 once the drain time is over.
#[tokio::test]
async fn a_stalled_client_does_not_block_exit_beyond_the_drain() {
    let mut server = start(&[]).await;
    let addr = server.addr;
    let _stalled = Client::connect(addr, roomcast_tests::Auth::None).await;
    let mut reader = Client::connect(addr, roomcast_tests::Auth::None).await;
    server.signal("TERM");
    reader.expect_close(1001).await;
    let status = server.wait(Duration::from_millis(DRAIN_MS + 10_000)).await;
    assert!(status.success(), "{status}");
}

/// `roomcast serve` reads its log filter from `ROOMCAST_LOG`
/// (net/src/main.rs, `init_logging`), but the configuration loader treats
/// every `ROOMCAST_*` variable as a config key, so setting the log filter
/// makes the server refuse to start: "invalid configuration: unknown field
/// `log`".
#[tokio::test]
async fn the_roomcast_log_filter_variable_does_not_break_startup() {
    // A refused start fails `Process::start`, which prints the log.
    let server = start(&[("ROOMCAST_LOG", "warn")]).await;
    let (status, _) = server.stop().await;
    assert!(status.success(), "{status}");
}

/// Kubernetes injects these into every pod of a namespace that has a
/// Service named `roomcast`, including roomcast's own pods. They name no
/// setting: the server starts, and logs a warning naming each of them.
#[tokio::test]
async fn kubernetes_service_variables_do_not_stop_startup() {
    const KUBERNETES: [(&str, &str); 7] = [
        ("ROOMCAST_PORT", "tcp://10.96.0.17:8080"),
        ("ROOMCAST_SERVICE_HOST", "10.96.0.17"),
        ("ROOMCAST_SERVICE_PORT", "8080"),
        ("ROOMCAST_PORT_8080_TCP", "tcp://10.96.0.17:8080"),
        ("ROOMCAST_PORT_8080_TCP_ADDR", "10.96.0.17"),
        ("ROOMCAST_PORT_8080_TCP_PORT", "8080"),
        ("ROOMCAST_PORT_8080_TCP_PROTO", "tcp"),
    ];
    let mut server = start(&KUBERNETES).await;
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    let log = server.log();
    for (name, _) in KUBERNETES {
        assert!(
            log.contains(&format!("ignoring environment variable {name}:")),
            "no warning names {name}: {log}"
        );
    }
}

/// Graceful shutdown drains HTTP requests in progress: a publish whose
/// body is still arriving when the shutdown begins is completed and
/// answered (the server used to stop the hub and return at once, so the
/// call failed), and `serve` returns only after that.
#[tokio::test]
async fn shutdown_completes_a_publish_in_progress() {
    use roomcast_tests::{test_config, TestServer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = test_config();
    config.shutdown_drain_ms = 10_000;
    let mut server = TestServer::start(config).await;
    let addr = server.addr;
    let mut member = Client::connect(addr, roomcast_tests::Auth::None).await;
    member.join("news").await;

    let body = json!({"room": "news", "type": "system_info", "data": {"message": "last words"}})
        .to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/broadcast HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        publisher(),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (first, rest) = body.as_bytes().split_at(10);
    stream.write_all(first).await.unwrap();
    // The handler is now reading the body.
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.trigger_shutdown();
    member.expect_close(1001).await;
    drop(member);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !server.has_stopped(),
        "serve returned while a publish was still being answered"
    );

    stream.write_all(rest).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response))
        .await
        .expect("no response")
        .expect("read");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"seq\":1"), "{text}");
    server
        .join()
        .await
        .expect("serve returns Ok after the drain");
}
