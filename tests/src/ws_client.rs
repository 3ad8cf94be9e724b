//! [`Client`]: a WebSocket client that knows the protocol's shapes.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::header::HeaderMap;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::TIMEOUT;

/// How a client's close went wrong (see [`Client::close_normally`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseError {
    /// The close frame could not be sent within [`TIMEOUT`].
    SendTimedOut,
    /// Sending the close frame failed (the WebSocket error).
    SendFailed(String),
    /// Nothing came back within [`TIMEOUT`].
    NoAnswer,
    /// The stream failed before a close frame came (the WebSocket error).
    NoCloseFrame(String),
    /// The stream ended before a close frame came.
    StreamEnded,
}

impl std::fmt::Display for CloseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseError::SendTimedOut => f.write_str("close send timed out"),
            CloseError::SendFailed(e) => write!(f, "close send failed: {e}"),
            CloseError::NoAnswer => f.write_str("no answer to the close within the timeout"),
            CloseError::NoCloseFrame(e) => write!(f, "no close frame in answer: {e}"),
            CloseError::StreamEnded => f.write_str("stream ended without a close frame"),
        }
    }
}

impl std::error::Error for CloseError {}

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
    /// More upgrade request headers, sent as given (a cookie, say).
    pub headers: Vec<(String, String)>,
}

impl From<Auth> for ConnectOptions {
    fn from(auth: Auth) -> ConnectOptions {
        ConnectOptions {
            auth,
            origin: None,
            config: None,
            headers: Vec::new(),
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
        for (name, value) in &options.headers {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
                HeaderValue::from_str(value).expect("a header value"),
            );
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

    /// Reads the answers to `count` pings sent with ids `0..count`, in
    /// order: each a `pong` or a `SERVER_BUSY` error. Returns how many were
    /// refused.
    pub async fn pongs_or_server_busy(&mut self, count: usize) -> usize {
        let mut busy = 0;
        for i in 0..count {
            let reply = self.recv_json().await;
            assert_eq!(reply["id"], i, "one answer per message, in order: {reply}");
            match reply["type"].as_str() {
                Some("pong") => {}
                Some("error") => {
                    assert_error(&reply, "SERVER_BUSY");
                    busy += 1;
                }
                _ => panic!("{reply}"),
            }
        }
        busy
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
    pub async fn close_normally(&mut self) -> Result<u16, CloseError> {
        let frame = CloseFrame {
            code: WsCloseCode::Normal,
            reason: "bye".into(),
        };
        tokio::time::timeout(TIMEOUT, self.ws.close(Some(frame)))
            .await
            .map_err(|_| CloseError::SendTimedOut)?
            .map_err(|e| CloseError::SendFailed(e.to_string()))?;
        let mut answer = None;
        loop {
            match tokio::time::timeout(TIMEOUT, self.ws.next()).await {
                Err(_) => return Err(CloseError::NoAnswer),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    answer = Some(frame.map_or(1005, |f| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => {
                    return answer.ok_or_else(|| CloseError::NoCloseFrame(e.to_string()))
                }
                Ok(None) => return answer.ok_or(CloseError::StreamEnded),
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
