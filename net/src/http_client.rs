//! The server's outbound HTTP client: what roomcast asks of other services
//! (the identity provider's JWKS, the application's hooks).
//!
//! - `http://` and `https://` (HTTP/1.1). TLS is rustls with the ring
//!   provider, the same as for `rediss://`; servers are checked against the
//!   **system trust store** (`rustls-native-certs`: the platform's CA bundle,
//!   or the PEM file / directories named by `SSL_CERT_FILE` /
//!   `SSL_CERT_DIR` when set). The store is read once, at the first
//!   `https://` request.
//! - Every request has its own timeout, covering connect, TLS, sending and
//!   reading the whole body. Bodies are bounded by [`BODY_MAX_BYTES`]: a
//!   larger one is refused (by its `Content-Length` before reading, or as
//!   soon as the bytes read pass the limit).
//! - Redirects are not followed (a 3xx is a [`HttpError::Status`]).
//! - Connections are pooled per host and reused (idle ones closed after
//!   [`POOL_IDLE`]), so a hook called for every join costs no handshake
//!   each time. [`HttpClient`] is an `Arc` inside: clone it freely.
//! - Runs on tokio tasks only: callers spawn or await it off the hubs.
//! - Nothing here logs. Errors never carry request headers (cookies,
//!   tokens) nor the URL (which may hold credentials): callers log the
//!   URL redacted, as `config::redact_url` does.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The largest response body read (1 MiB): a JWKS or a hook's answer is a
/// few KiB; anything far larger is a misconfigured URL, not data.
pub const BODY_MAX_BYTES: usize = 1 << 20;

/// How long an idle pooled connection is kept.
pub const POOL_IDLE: Duration = Duration::from_secs(60);

/// Idle connections kept per host.
const POOL_IDLE_PER_HOST: usize = 64;

/// Why a request got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL is not an absolute `http://` or `https://` URL with a host.
    InvalidUrl,
    /// No complete answer within the request's timeout.
    Timeout,
    /// No connection: refused, unreachable, DNS, or the TLS handshake
    /// (including an untrusted certificate) failed.
    Connect(String),
    /// The connection broke, or the server spoke no valid HTTP, after
    /// connecting.
    Transport(String),
    /// The server answered with a status outside 2xx.
    Status(u16),
    /// The body is larger than the limit (bytes).
    BodyTooLarge(usize),
    /// The body is not what the caller expected (e.g. not the JSON asked for).
    BadBody(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::InvalidUrl => write!(f, "not an http:// or https:// url"),
            HttpError::Timeout => write!(f, "timed out"),
            HttpError::Connect(why) => write!(f, "cannot connect: {why}"),
            HttpError::Transport(why) => write!(f, "connection failed: {why}"),
            HttpError::Status(code) => write!(f, "answered with status {code}"),
            HttpError::BodyTooLarge(limit) => write!(f, "body larger than {limit} bytes"),
            HttpError::BadBody(why) => write!(f, "bad body: {why}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl HttpError {
    /// A short, fixed label for metrics (`timeout`, `connect`, `transport`,
    /// `status`, `body_too_large`, `bad_body`, `invalid_url`).
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::InvalidUrl => "invalid_url",
            HttpError::Timeout => "timeout",
            HttpError::Connect(_) => "connect",
            HttpError::Transport(_) => "transport",
            HttpError::Status(_) => "status",
            HttpError::BodyTooLarge(_) => "body_too_large",
            HttpError::BadBody(_) => "bad_body",
        }
    }
}

/// A 2xx answer, its body read in full.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status (2xx).
    pub status: StatusCode,
    /// The body.
    pub body: Bytes,
}

impl Response {
    /// The body as JSON of type `T` ([`HttpError::BadBody`] otherwise).
    #[cfg(test)]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError::BadBody(e.to_string()))
    }
}

/// The client. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<Connector, Full<Bytes>>,
    body_max: usize,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("body_max", &self.body_max)
            .finish_non_exhaustive()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

impl HttpClient {
    /// A client with the default body limit ([`BODY_MAX_BYTES`]). Must be
    /// called inside a tokio runtime only when a request is made.
    pub fn new() -> HttpClient {
        HttpClient::with_body_max(BODY_MAX_BYTES)
    }

    /// A client that refuses bodies over `body_max` bytes.
    pub fn with_body_max(body_max: usize) -> HttpClient {
        let mut http = HttpConnector::new();
        // The scheme is checked per request; the connector sees both.
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = Connector {
            http,
            tls: Arc::new(OnceLock::new()),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
            .build(connector);
        HttpClient { client, body_max }
    }

    /// `GET url` with `headers` added, answered within `timeout`.
    pub async fn get(
        &self,
        url: &str,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        self.send(Method::GET, url, headers, None, timeout).await
    }

    /// `POST url` with `body` as JSON and `headers` added, answered within
    /// `timeout`.
    pub async fn post_json<T: Serialize + ?Sized>(
        &self,
        url: &str,
        body: &T,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let body = serde_json::to_vec(body).map_err(|e| HttpError::BadBody(e.to_string()))?;
        self.send(Method::POST, url, headers, Some(Bytes::from(body)), timeout)
            .await
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &HeaderMap,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let uri = parse_url(url)?;
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(body.clone().unwrap_or_default()))
            .map_err(|_| HttpError::InvalidUrl)?;
        let request_headers = request.headers_mut();
        request_headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("roomcast/", env!("CARGO_PKG_VERSION"))),
        );
        request_headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if body.is_some() {
            request_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (name, value) in headers {
            request_headers.append(name.clone(), value.clone());
        }
        match tokio::time::timeout(timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout),
        }
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<Response, HttpError> {
        let response = self.client.request(request).await.map_err(|e| {
            let why = root_cause(&e);
            if e.is_connect() {
                HttpError::Connect(why)
            } else {
                HttpError::Transport(why)
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            // The body is dropped unread: with it, the connection (hyper
            // does not reuse a connection whose body was not drained).
            return Err(HttpError::Status(status.as_u16()));
        }
        let announced = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > self.body_max as u64) {
            return Err(HttpError::BodyTooLarge(self.body_max));
        }
        let mut incoming = response.into_body();
        let mut body = BytesMut::new();
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| HttpError::Transport(root_cause(&e)))?;
            if let Ok(data) = frame.into_data() {
                if body.len() + data.len() > self.body_max {
                    return Err(HttpError::BodyTooLarge(self.body_max));
                }
                body.extend_from_slice(&data);
            }
        }
        Ok(Response {
            status,
            body: body.freeze(),
        })
    }
}

/// `url` as an absolute http(s) URI with a host.
fn parse_url(url: &str) -> Result<Uri, HttpError> {
    let uri: Uri = url.parse().map_err(|_| HttpError::InvalidUrl)?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http") | Some("https"));
    if !scheme_ok || uri.host().is_none_or(str::is_empty) {
        return Err(HttpError::InvalidUrl);
    }
    Ok(uri)
}

/// The innermost error's message: "Connection refused (os error 111)"
/// rather than hyper's "client error (Connect)".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = error;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string()
}

/// The TLS settings, built at the first `https://` request.
fn tls_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "reading the system trust store for outbound https");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            ignored,
            "no trusted certificate authority found for outbound https (set SSL_CERT_FILE?): every https:// request will fail"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
        // ring supports the safe defaults; this cannot fail.
        Err(error) => {
            debug_assert!(false, "ring lacks the default TLS versions: {error}");
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Connects plain TCP, adding TLS for `https://`.
#[derive(Clone)]
struct Connector {
    http: HttpConnector,
    tls: Arc<OnceLock<Arc<rustls::ClientConfig>>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = (uri.scheme_str() == Some("https")).then(|| {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            (host, self.tls.clone())
        });
        let connecting = self.http.call(uri);
        Box::pin(async move {
            let tcp = connecting.await?;
            let Some((host, config)) = tls else {
                return Ok(Stream::Plain(tcp));
            };
            let name = ServerName::try_from(host)?;
            let config = config.get_or_init(tls_config).clone();
            let stream = TlsConnector::from(config)
                .connect(name, tcp.into_inner())
                .await?;
            Ok(Stream::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

/// One connection, plain or TLS.
enum Stream {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(tcp) => tcp.connected(),
            Stream::Tls(tls) => tls.inner().get_ref().0.connected(),
        }
    }
}

impl Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
#[path = "http_client_tests.rs"]
mod tests;
