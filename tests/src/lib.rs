//! # roomcast-tests: the end-to-end harness
//!
//! Real clients against the real server on an ephemeral loopback port:
//!
//! * [`TestServer`] runs [`roomcast_net::serve`] on `127.0.0.1:0` inside the
//!   test's own tokio runtime, with a [`Metrics`] registry the test can read,
//!   and stops it through a oneshot (the in-process equivalent of SIGTERM).
//! * [`Client`] is a tokio-tungstenite WebSocket client that knows the
//!   protocol's shapes: it reads the `connected` message on connect, sends
//!   JSON, receives JSON with a timeout and expects close codes.
//! * [`http`] / [`HttpConn`] are a small HTTP/1.1 client (hyper's client
//!   connection API) that returns status, headers and body.
//! * [`tokens`] builds JWTs: valid, expired, wrong secret, `alg: none`,
//!   string `exp`, future `nbf`, RS256.
//! * [`binary`] finds (or builds) the real `roomcast` executable for the
//!   signal tests.
//!
//! Timeouts are generous ([`TIMEOUT`]) because the suite runs in debug
//! builds on a small shared machine; no test asserts on timing.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper_util::rt::TokioIo;
use roomcast_net::{Clock, IdSource, Metrics, ServeOptions, ServerConfig};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

pub mod cluster;
pub mod engine_harness;
pub mod oracle_client;
pub mod redis_proxy;
pub mod redis_sentinel;
pub mod redis_server;
pub mod tls_certs;

pub use roomcast_net;
pub use serde_json;
pub use tokio_tungstenite;

/// How long any single expected event may take before a test fails.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The HS256 secret every test server is configured with.
pub const SECRET: &str = "roomcast-test-secret-0123456789abcdef";

/// A configuration for tests: the defaults plus the HS256 [`SECRET`], and
/// quiet limits that no ordinary test runs into.
pub fn test_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.auth.jwt_secret = Some(SECRET.to_owned());
    config
}

// ----- the in-process server -------------------------------------------------

/// A roomcast server running inside the test's runtime.
pub struct TestServer {
    /// Where it listens (127.0.0.1, ephemeral port).
    pub addr: SocketAddr,
    /// The server's own metrics registry.
    pub metrics: Metrics,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), String>>>,
}

impl TestServer {
    /// Binds `127.0.0.1:0` and serves `config` on it until [`TestServer::shutdown`]
    /// (or drop).
    pub async fn start(config: ServerConfig) -> TestServer {
        TestServer::start_with_clock(config, Clock::system()).await
    }

    /// Like [`TestServer::start`], with the server reading time from `clock`.
    pub async fn start_with_clock(config: ServerConfig, clock: Clock) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let metrics = Metrics::new();
        let options = ServeOptions {
            clock,
            ids: IdSource::Random,
            metrics: metrics.clone(),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(roomcast_net::serve(listener, config, options, async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            metrics,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// A server with [`test_config`].
    pub async fn start_default() -> TestServer {
        TestServer::start(test_config()).await
    }

    /// `ws://addr/ws/connect`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws/connect", self.addr)
    }

    /// Asks the server to shut down (it then closes every client with 1001)
    /// without waiting for it.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Whether `serve` has returned.
    pub fn has_stopped(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Waits for `serve` to return (after [`TestServer::trigger_shutdown`]).
    pub async fn join(&mut self) -> Result<(), String> {
        let handle = self.handle.take().expect("server already joined");
        tokio::time::timeout(Duration::from_secs(60), handle)
            .await
            .expect("serve did not return within 60 s of the shutdown")
            .expect("serve task panicked")
    }

    /// Triggers the shutdown and waits for `serve` to return.
    pub async fn shutdown(mut self) -> Result<(), String> {
        self.trigger_shutdown();
        self.join().await
    }

    /// `GET /ws/status` as JSON.
    pub async fn status(&self) -> Value {
        let response = http(self.addr, "GET", "/ws/status", &[], "").await;
        assert_eq!(response.status, 200, "/ws/status: {response:?}");
        response.json()
    }

    /// `GET /metrics` as text.
    pub async fn metrics_text(&self) -> String {
        let response = http(self.addr, "GET", "/metrics", &[], "").await;
        assert_eq!(response.status, 200, "/metrics: {response:?}");
        response.text()
    }

    /// The value of one sample of `/metrics`, e.g. `roomcast_connections` or
    /// `roomcast_disconnects_total{reason="slow_consumer"}`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        metric_value(&self.metrics_text().await, sample)
    }

    /// Waits until `/ws/status` `active_connections` and `/metrics`
    /// `roomcast_connections` both equal `expected` (they converge shortly
    /// after clients close), and fails the test if they do not within
    /// [`TIMEOUT`].
    pub async fn assert_connections(&self, expected: u64) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let status = self.status().await["active_connections"].as_u64();
            let gauge = self.metric("roomcast_connections").await;
            if status == Some(expected) && gauge == Some(expected as f64) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "expected {expected} open connections; /ws/status says {status:?}, \
                     /metrics roomcast_connections says {gauge:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST /api/broadcast` with a bearer token.
    pub async fn broadcast(&self, token: &str, body: Value) -> HttpResponse {
        api_post(self.addr, "/api/broadcast", Some(token), body.to_string()).await
    }

    /// `POST /api/send` with a bearer token.
    pub async fn send(&self, token: &str, body: Value) -> HttpResponse {
        api_post(self.addr, "/api/send", Some(token), body.to_string()).await
    }

    /// A client connected without a token.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr, Auth::None).await
    }

    /// A client connected with `token` in the query string.
    pub async fn client_with_token(&self, token: &str) -> Client {
        Client::connect(self.addr, Auth::Query(token.to_owned())).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.trigger_shutdown();
    }
}

/// Finds `sample` (the text before the value, labels included) in an
/// OpenMetrics/Prometheus exposition and parses its value.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(sample)?;
        let value = rest.strip_prefix(' ')?.split_whitespace().next()?;
        value.parse().ok()
    })
}

// ----- WebSocket client -------------------------------------------------------

/// How a client presents its token.
#[derive(Clone, Debug)]
pub enum Auth {
    /// No token.
    None,
    /// `?token=<jwt>` (the seed's way).
    Query(String),
    /// `Authorization: Bearer <jwt>`.
    Header(String),
    /// `Sec-WebSocket-Protocol: roomcast, roomcast.bearer.<jwt>` (browsers).
    Subprotocol(String),
}

/// Extra handshake settings.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The token, if any.
    pub auth: Auth,
    /// An `Origin` header.
    pub origin: Option<String>,
    /// The client's own limits (e.g. a small read buffer for a slow client).
    pub config: Option<WebSocketConfig>,
}

impl From<Auth> for ConnectOptions {
    fn from(auth: Auth) -> ConnectOptions {
        ConnectOptions {
            auth,
            origin: None,
            config: None,
        }
    }
}

/// The upgraded client stream.
pub type Ws = WebSocketStream<TcpStream>;

/// A WebSocket client of roomcast that has received its `connected` message.
pub struct Client {
    /// The socket.
    pub ws: Ws,
    /// The `connected` message.
    pub connected: Value,
    /// `connected.data.connection_id`.
    pub connection_id: String,
    /// The handshake response's headers.
    pub response_headers: HeaderMap,
}

/// Why a client's stream stopped.
#[derive(Debug)]
pub enum Ending {
    /// A close frame with this code and reason.
    Close(u16, String),
    /// A close frame without a code.
    CloseWithoutCode,
    /// The stream ended (or failed) without a close frame.
    NoCloseFrame(String),
}

impl Client {
    /// Connects (panicking on failure) and reads the `connected` message.
    pub async fn connect(addr: SocketAddr, options: impl Into<ConnectOptions>) -> Client {
        Client::try_connect(addr, options)
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect to {addr} failed: {e}"))
    }

    /// Connects and reads the `connected` message; the handshake error otherwise.
    pub async fn try_connect(
        addr: SocketAddr,
        options: impl Into<ConnectOptions>,
    ) -> Result<Client, WsError> {
        let options = options.into();
        let mut url = format!("ws://{addr}/ws/connect");
        if let Auth::Query(token) = &options.auth {
            url.push_str("?token=");
            url.push_str(token);
        }
        let mut request = url.into_client_request()?;
        let headers = request.headers_mut();
        match &options.auth {
            Auth::Header(token) => {
                headers.insert(
                    "authorization",
                    HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
                );
            }
            Auth::Subprotocol(token) => {
                headers.insert(
                    "sec-websocket-protocol",
                    HeaderValue::from_str(&format!("roomcast, roomcast.bearer.{token}"))
                        .expect("header"),
                );
            }
            Auth::None | Auth::Query(_) => {}
        }
        if let Some(origin) = &options.origin {
            headers.insert("origin", HeaderValue::from_str(origin).expect("header"));
        }
        let stream = TcpStream::connect(addr).await.map_err(WsError::Io)?;
        let _ = stream.set_nodelay(true);
        let (ws, response) = tokio::time::timeout(
            TIMEOUT,
            tokio_tungstenite::client_async_with_config(request, stream, options.config),
        )
        .await
        .map_err(|_| WsError::Io(std::io::Error::other("handshake timed out")))??;
        let mut client = Client {
            ws,
            connected: Value::Null,
            connection_id: String::new(),
            response_headers: response.headers().clone(),
        };
        let connected = client.recv_json().await;
        assert_eq!(connected["type"], "connected", "first message: {connected}");
        client.connection_id = connected["data"]["connection_id"]
            .as_str()
            .expect("connection_id")
            .to_owned();
        client.connected = connected;
        Ok(client)
    }

    /// Sends one JSON text frame.
    pub async fn send_json(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    /// Sends one text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        tokio::time::timeout(TIMEOUT, self.ws.send(Message::text(text)))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// Sends one raw message (binary, fragments, ...).
    pub async fn send_message(&mut self, message: Message) {
        tokio::time::timeout(TIMEOUT, self.ws.send(message))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// The next JSON text message, skipping pings/pongs; `None` when nothing
    /// arrives within `wait`. Panics on a close or a non-JSON message.
    pub async fn recv_json_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(next) => next,
            };
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!("server sent invalid JSON ({e}): {}", text.as_str())
                    }))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(b))) => panic!("unexpected binary message: {b:?}"),
                Some(Ok(Message::Close(frame))) => panic!("unexpected close: {frame:?}"),
                Some(Err(e)) => panic!("WebSocket error while expecting a message: {e}"),
                None => panic!("stream ended while expecting a message"),
            }
        }
    }

    /// The next JSON text message (within [`TIMEOUT`]).
    pub async fn recv_json(&mut self) -> Value {
        self.recv_json_within(TIMEOUT)
            .await
            .expect("no message within the timeout")
    }

    /// Sends `request` and returns the next message.
    pub async fn request(&mut self, request: Value) -> Value {
        self.send_json(request).await;
        self.recv_json().await
    }

    /// Joins `room` and checks the reply.
    pub async fn join(&mut self, room: &str) -> Value {
        let reply = self
            .request(json!({"action": "join", "data": {"room": room}}))
            .await;
        assert_eq!(reply["type"], "system_info", "join {room}: {reply}");
        assert_eq!(
            reply["data"]["message"],
            format!("Joined room: {room}"),
            "{reply}"
        );
        reply
    }

    /// Sends a ping with a unique id and returns every message that arrived
    /// before its pong: once the pong is here, everything the server queued
    /// for this connection before the ping has been received.
    pub async fn fence(&mut self) -> Vec<Value> {
        let id = format!(
            "fence-{}",
            FENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        self.send_json(json!({"action": "ping", "id": id})).await;
        let mut before = Vec::new();
        loop {
            let message = self.recv_json().await;
            if message["type"] == "pong" && message["id"] == id.as_str() {
                return before;
            }
            before.push(message);
        }
    }

    /// Asserts that nothing but the fence's pong arrives.
    pub async fn assert_nothing_pending(&mut self) {
        let extra = self.fence().await;
        assert!(extra.is_empty(), "unexpected messages: {extra:?}");
    }

    /// Reads until the stream stops and returns the text messages received
    /// before that and how it stopped. Pings are skipped (and, by reading,
    /// answered).
    pub async fn read_to_end(&mut self) -> (Vec<Value>, Ending) {
        let mut messages = Vec::new();
        loop {
            let next = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no close within the timeout; received before: {} messages",
                        messages.len()
                    )
                });
            match next {
                Some(Ok(Message::Text(text))) => {
                    messages.push(serde_json::from_str(&text).expect("JSON"))
                }
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (
                        messages,
                        Ending::Close(u16::from(frame.code), frame.reason.to_string()),
                    )
                }
                Some(Ok(Message::Close(None))) => return (messages, Ending::CloseWithoutCode),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return (messages, Ending::NoCloseFrame(e.to_string())),
                None => return (messages, Ending::NoCloseFrame("stream ended".into())),
            }
        }
    }

    /// Reads until the server's close frame and asserts its code; returns the
    /// text messages that came before it.
    pub async fn expect_close(&mut self, code: u16) -> Vec<Value> {
        let (messages, ending) = self.read_to_end().await;
        match ending {
            Ending::Close(got, reason) => assert_eq!(
                got, code,
                "close code (reason {reason:?}); messages before: {messages:?}"
            ),
            other => panic!("expected close {code}, got {other:?}; messages before: {messages:?}"),
        }
        messages
    }

    /// Closes with 1000 and waits for the end of the stream. Whether the
    /// server answered with its own close frame is checked by the protocol
    /// tests (`close_normally`), not here, so one defect there does not
    /// fail every test that merely hangs up.
    pub async fn close(mut self) {
        let _ = self.close_normally().await;
    }

    /// Closes with 1000; returns the code the server answered with, or how
    /// the stream ended instead.
    pub async fn close_normally(&mut self) -> Result<u16, String> {
        let frame = CloseFrame {
            code: WsCloseCode::Normal,
            reason: "bye".into(),
        };
        tokio::time::timeout(TIMEOUT, self.ws.close(Some(frame)))
            .await
            .map_err(|_| "close send timed out".to_owned())?
            .map_err(|e| format!("close send failed: {e}"))?;
        let mut answer = None;
        loop {
            match tokio::time::timeout(TIMEOUT, self.ws.next()).await {
                Err(_) => return Err("no answer to the close within the timeout".into()),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    answer = Some(frame.map_or(1005, |f| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => {
                    return answer.ok_or_else(|| format!("no close frame in answer: {e}"))
                }
                Ok(None) => {
                    return answer.ok_or_else(|| "stream ended without a close frame".into())
                }
            }
        }
    }
}

static FENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Asserts that `message` is an `error` with `code` (and returns its message text).
#[track_caller]
pub fn assert_error(message: &Value, code: &str) -> String {
    assert_eq!(message["type"], "error", "expected error {code}: {message}");
    assert_eq!(message["data"]["code"], code, "{message}");
    let text = message["data"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error without a message: {message}"));
    assert!(!text.is_empty(), "{message}");
    text.to_owned()
}

/// Whether `text` has the shape of a hyphenated UUID.
pub fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
}

/// Whether `text` is `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC, milliseconds).
pub fn is_timestamp(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
        && (1..=12).contains(&text[5..7].parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&text[8..10].parse::<u32>().unwrap_or(0))
        && text[11..13].parse::<u32>().unwrap_or(99) < 24
        && text[14..16].parse::<u32>().unwrap_or(99) < 60
        && text[17..19].parse::<u32>().unwrap_or(99) < 61
}

// ----- HTTP client --------------------------------------------------------------

/// An HTTP response with its whole body.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as JSON (panics when it is not).
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body of the {} response is not JSON ({e}): {:?}",
                self.status, self.body
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts `{"error":{"code": code, "message": ...}}` with `status`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{self:?}"
        );
    }
}

/// A kept-alive HTTP/1.1 connection (for many requests in a row).
pub struct HttpConn {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl HttpConn {
    /// Opens a connection to `addr`.
    pub async fn connect(addr: SocketAddr) -> HttpConn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        HttpConn { addr, sender }
    }

    /// Sends one request and reads the whole response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> HttpResponse {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body.into())).expect("request");
        let exchange = async {
            self.sender.ready().await.expect("connection ready");
            let response = self.sender.send_request(request).await.expect("response");
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            HttpResponse {
                status,
                headers,
                body,
            }
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no response within the timeout"))
    }

    /// `POST path` with a JSON body and an optional bearer token.
    pub async fn post_json(
        &mut self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> HttpResponse {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth.as_str()));
        }
        self.request("POST", path, &headers, body.to_string()).await
    }
}

/// One request on a fresh connection.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> HttpResponse {
    HttpConn::connect(addr)
        .await
        .request(method, path, headers, body)
        .await
}

/// `POST path` with a raw body and an optional bearer token.
pub async fn api_post(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: impl Into<Bytes>,
) -> HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    http(addr, "POST", path, &headers, body).await
}

/// A WebSocket upgrade request made with the plain HTTP client, so refusals
/// (401, 403, 503) can be read with their bodies. `extra` adds headers.
pub async fn upgrade_request(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> HttpResponse {
    let mut headers = vec![
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    headers.extend_from_slice(extra);
    http(addr, "GET", path, &headers, "").await
}

// ----- tokens -------------------------------------------------------------------

/// JWT helpers.
pub mod tokens {
    use super::*;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

    /// Seconds since the Unix epoch.
    pub fn now_s() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    /// An HS256 token with arbitrary claims, signed with `secret`.
    pub fn hs256_claims(claims: &Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    /// A valid token for `sub` with `scope` (space separated, may be empty),
    /// signed with [`SECRET`], valid for an hour.
    pub fn token(sub: &str, scope: &str) -> String {
        token_ttl(sub, scope, 3600)
    }

    /// A token for `sub` expiring `ttl_s` seconds from now.
    pub fn token_ttl(sub: &str, scope: &str, ttl_s: i64) -> String {
        let mut claims = json!({"sub": sub, "exp": now_s() as i64 + ttl_s, "iat": now_s()});
        if !scope.is_empty() {
            claims["scope"] = json!(scope);
        }
        hs256_claims(&claims, SECRET)
    }

    /// A token with the `publish` scope (every room).
    pub fn publisher() -> String {
        token("publisher", "publish")
    }

    /// base64url without padding.
    pub fn b64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            let chars = chunk.len() + 1;
            for i in 0..chars {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    /// An unsigned `alg: none` token: `header.payload.` with an empty signature.
    pub fn alg_none(claims: &Value) -> String {
        let header = json!({"alg": "none", "typ": "JWT"});
        format!(
            "{}.{}.",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        )
    }

    /// An RS256 token signed with a PEM private key.
    pub fn rs256(claims: &Value, private_pem: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::RS256),
            claims,
            &EncodingKey::from_rsa_pem(private_pem).expect("RSA private key"),
        )
        .expect("encode")
    }

    /// An RSA key pair made with the `openssl` command line in a temporary
    /// directory: (directory guard, private key PEM path, public key PEM path).
    pub fn rsa_keypair() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let private = dir.path().join("private.pem");
        let public = dir.path().join("public.pem");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .expect("the openssl command line is needed for the RS256 tests");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let private_s = private.to_str().expect("path");
        let public_s = public.to_str().expect("path");
        run(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            private_s,
        ]);
        run(&["pkey", "-in", private_s, "-pubout", "-out", public_s]);
        (dir, private, public)
    }
}

// ----- the real binary -----------------------------------------------------------

/// The `roomcast` executable, for tests that need a real process (signals).
pub mod binary {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    static BINARY: OnceLock<PathBuf> = OnceLock::new();

    /// The path of `target/<profile>/roomcast`, built (once per test
    /// process) with `cargo build -p roomcast-net --bin roomcast` so it is
    /// never stale: cargo makes that a no-op when it is up to date.
    pub fn path() -> PathBuf {
        BINARY
            .get_or_init(|| {
                // The test executable is target/<profile>/deps/<name>-<hash>.
                let exe = std::env::current_exe().expect("current exe");
                let profile_dir = exe
                    .parent()
                    .and_then(|deps| deps.parent())
                    .expect("target/<profile>")
                    .to_path_buf();
                let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
                let profile = profile_dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("debug")
                    .to_owned();
                let binary = profile_dir.join("roomcast");
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
                let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
                let mut command = std::process::Command::new(cargo);
                command
                    .args([
                        "build",
                        "--quiet",
                        "-p",
                        "roomcast-net",
                        "--bin",
                        "roomcast",
                    ])
                    .arg("--manifest-path")
                    .arg(&manifest)
                    .arg("--target-dir")
                    .arg(&target_dir);
                match profile.as_str() {
                    "debug" => {}
                    "release" => {
                        command.arg("--release");
                    }
                    other => {
                        command.args(["--profile", other]);
                    }
                }
                let status = command.status().expect("run cargo build");
                assert!(
                    status.success(),
                    "cargo build of the roomcast binary failed"
                );
                assert!(
                    binary.exists(),
                    "{} missing after the build",
                    binary.display()
                );
                binary
            })
            .clone()
    }

    /// A free loopback port (bound then released).
    pub fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }

    /// A running `roomcast serve` process on a free loopback port.
    pub struct Process {
        pub child: tokio::process::Child,
        pub addr: std::net::SocketAddr,
    }

    impl Process {
        /// Starts `roomcast serve` with `args` after `--listen` and only
        /// the given `ROOMCAST_*` variables (the test's own are removed);
        /// returns once `/healthz` answers.
        pub async fn start(args: &[&str], env: &[(&str, String)]) -> Process {
            let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port())
                .parse()
                .expect("an address");
            let mut command = tokio::process::Command::new(path());
            for (key, _) in std::env::vars() {
                if key.starts_with("ROOMCAST_") {
                    command.env_remove(key);
                }
            }
            command
                .args(["serve", "--listen", &addr.to_string()])
                .args(args)
                .env("ROOMCAST_LOG", "error")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            for (key, value) in env {
                command.env(key, value);
            }
            let child = command.spawn().expect("spawn roomcast");
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let up = tokio::net::TcpStream::connect(addr).await.is_ok()
                    && super::http(addr, "GET", "/healthz", &[], "").await.status == 200;
                if up {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "roomcast did not come up"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Process { child, addr }
        }

        /// (current, peak) resident memory of the process, in KiB.
        pub fn rss_kib(&self) -> (u64, u64) {
            let pid = self.child.id().expect("pid");
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            (field("VmRSS:"), field("VmHWM:"))
        }

        /// SIGTERM; the exit status and how long the exit took.
        pub async fn stop(mut self) -> (std::process::ExitStatus, std::time::Duration) {
            let pid = self.child.id().expect("pid");
            let started = tokio::time::Instant::now();
            let status = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
            let exit = tokio::time::timeout(std::time::Duration::from_secs(30), self.child.wait())
                .await
                .expect("roomcast did not exit")
                .expect("wait");
            (exit, started.elapsed())
        }
    }
}
