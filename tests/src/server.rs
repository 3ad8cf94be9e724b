//! [`TestServer`]: the real server inside the test's runtime.

use std::net::SocketAddr;
use std::time::Duration;

use roomcast_net::{Clock, IdSource, Metrics, ServeOptions, ServerConfig, ShardRuntime};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{api_post, http, test_config, Auth, Client, HttpResponse, TIMEOUT};

/// A roomcast server running inside the test's runtime.
pub struct TestServer {
    /// Where it listens (127.0.0.1, ephemeral port).
    pub addr: SocketAddr,
    /// The server's own metrics registry.
    pub metrics: Metrics,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), roomcast_net::ServeError>>>,
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
            cpus: 1,
            shard_runtime: ShardRuntime::Tasks,
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
    pub async fn join(&mut self) -> Result<(), roomcast_net::ServeError> {
        let handle = self.handle.take().expect("server already joined");
        tokio::time::timeout(Duration::from_secs(60), handle)
            .await
            .expect("serve did not return within 60 s of the shutdown")
            .expect("serve task panicked")
    }

    /// Triggers the shutdown and waits for `serve` to return.
    pub async fn shutdown(mut self) -> Result<(), roomcast_net::ServeError> {
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
