//! A fake HTTP service for tests that play the other side of roomcast's
//! outbound calls: the identity provider's JWKS, the application's hooks.
//!
//! [`FakeHttp`] listens on `127.0.0.1:<ephemeral>` (HTTP/1.1, keep-alive),
//! answers each path with a [`Reply`] the test sets (and may change at any
//! time, or compute per request with [`FakeHttp::route`]), records every
//! request it receives ([`Recorded`]), and can go down and come back on the
//! same port ([`FakeHttp::stop`], [`FakeHttp::restart`]) to play an
//! unreachable service. Paths without a reply answer 404.
//! [`FakeHttp::start_tls`] serves `https://` with a certificate of the
//! test's own CA ([`crate::tls_certs`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path (without the query).
    pub path: String,
    /// The request headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Recorded {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the request body is JSON")
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the fake answers on a path.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body (sent with `Content-Type: application/json` unless
    /// `content_type` says otherwise).
    pub body: String,
    /// The content type.
    pub content_type: &'static str,
    /// How long to wait before answering.
    pub delay: Duration,
}

impl Reply {
    /// `200` with `body` as JSON.
    pub fn json(body: &Value) -> Reply {
        Reply::status(200, body.to_string())
    }

    /// `status` with a JSON `body` text (need not be valid JSON).
    pub fn status(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            body: body.into(),
            content_type: "application/json",
            delay: Duration::ZERO,
        }
    }

    /// The same reply, sent after `delay`.
    pub fn delayed(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

#[derive(Default)]
struct State {
    routes: HashMap<String, Handler>,
    recorded: Vec<Recorded>,
}

/// The fake service. Stops (and closes its connections) on drop.
pub struct FakeHttp {
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    state: Arc<Mutex<State>>,
    stop: Option<watch::Sender<bool>>,
}

impl FakeHttp {
    /// Starts on an ephemeral loopback port.
    pub async fn start() -> FakeHttp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut fake = FakeHttp {
            addr,
            tls: None,
            state: Arc::new(Mutex::new(State::default())),
            stop: None,
        };
        fake.serve(listener);
        fake
    }

    /// Starts on an ephemeral loopback port, serving `https://` with the
    /// certificate chain and key of these PEM files.
    pub async fn start_tls(cert: &Path, key: &Path) -> FakeHttp {
        let certs = CertificateDer::pem_file_iter(cert)
            .expect("the certificate file")
            .collect::<Result<Vec<_>, _>>()
            .expect("PEM certificates");
        let key = PrivateKeyDer::from_pem_file(key).expect("the private key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("a certificate and its key");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut fake = FakeHttp {
            addr,
            tls: Some(TlsAcceptor::from(Arc::new(config))),
            state: Arc::new(Mutex::new(State::default())),
            stop: None,
        };
        fake.serve(listener);
        fake
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port><path>` (`https://` with TLS).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// Answers `path` (any method) with `reply` from now on.
    pub fn reply(&self, path: &str, reply: Reply) {
        self.route(path, move |_| reply.clone());
    }

    /// Answers `path` (any method) with what `handler` makes of each request.
    pub fn route(&self, path: &str, handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        self.lock()
            .routes
            .insert(path.to_owned(), Arc::new(handler));
    }

    /// Every request received on `path` so far, oldest first.
    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        self.lock()
            .recorded
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// How many requests `path` received so far.
    pub fn count(&self, path: &str) -> usize {
        self.lock()
            .recorded
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// Waits (up to `wait`) until `path` has received at least `n` requests;
    /// returns how many it has.
    pub async fn wait_for(&self, path: &str, n: usize, wait: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let count = self.count(path);
            if count >= n || tokio::time::Instant::now() >= deadline {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Goes down: the port is closed (connections are refused) and open
    /// connections are dropped.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
    }

    /// Comes back on the same port, with the same replies.
    pub async fn restart(&mut self) {
        self.stop();
        // The old listener closes asynchronously: retry the bind briefly.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(error) if tries < 100 => {
                    tries += 1;
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("rebinding {}: {error}", self.addr),
            }
        };
        self.serve(listener);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop, stopped) = watch::channel(false);
        self.stop = Some(stop);
        let state = self.state.clone();
        let tls = self.tls.clone();
        let mut accept_stopped = stopped.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = accept_stopped.changed() => return,
                };
                let Ok((tcp, _)) = accepted else { continue };
                let state = state.clone();
                let stopped = stopped.clone();
                match tls.clone() {
                    None => {
                        tokio::spawn(serve_connection(tcp, state, stopped));
                    }
                    Some(tls) => {
                        tokio::spawn(async move {
                            // A failed handshake (an untrusting client) just ends.
                            if let Ok(stream) = tls.accept(tcp).await {
                                serve_connection(stream, state, stopped).await;
                            }
                        });
                    }
                }
            }
        });
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve_connection<I>(io: I, state: Arc<Mutex<State>>, mut stopped: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| answer(state.clone(), request));
    let connection = http1::Builder::new().serve_connection(TokioIo::new(io), service);
    tokio::select! {
        _ = connection => {}
        _ = stopped.changed() => {}
    }
}

async fn answer(
    state: Arc<Mutex<State>>,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body,
    };
    let handler = {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        state.recorded.push(recorded.clone());
        state.routes.get(&recorded.path).cloned()
    };
    let reply = match handler {
        Some(handler) => handler(&recorded),
        None => Reply::status(404, r#"{"error":"no such path"}"#),
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = hyper::Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = hyper::StatusCode::from_u16(reply.status).expect("a valid status");
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    Ok(response)
}
