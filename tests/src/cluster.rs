//! roomcast nodes sharing one Redis: a [`Cluster`] of N nodes in this
//! process, one node ([`redis_node`]), or the real binary
//! ([`crate::binary::Process`], for `kill -9` and log checks).

use std::net::SocketAddr;
use std::ops::Index;
use std::time::Duration;

use roomcast_net::ServerConfig;

use crate::redis_server::RedisServer;
use crate::{http, test_config, TestServer, TIMEOUT};

/// Waits until `GET /readyz` on `addr` answers 200 (panics after [`TIMEOUT`]).
pub async fn wait_ready(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let up = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
            .await
            .is_ok_and(|connected| connected.is_ok());
        if up && http(addr, "GET", "/readyz", &[], "").await.status == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} never got ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The test configuration with the Redis engine at `url`, keys under `prefix`.
pub fn redis_config(url: &str, prefix: &str) -> ServerConfig {
    let mut config = test_config();
    config.engine.redis_url = Some(url.to_owned());
    config.engine.redis_prefix = prefix.to_owned();
    config
}

/// A node in this process on `config`, once ready (Redis answers on both
/// of its connections).
pub async fn redis_node(config: ServerConfig) -> TestServer {
    let server = TestServer::start(config).await;
    wait_ready(server.addr).await;
    server
}

/// N nodes in this process on one Redis, their keys under one prefix:
/// started one after the other, each ready before the next starts, and
/// shut down together.
pub struct Cluster {
    nodes: Vec<TestServer>,
}

impl Cluster {
    /// `n` nodes on `redis`, keys under `prefix`, each ready.
    pub async fn start(redis: &RedisServer, prefix: &str, n: usize) -> Cluster {
        Cluster::start_with(n, || redis_config(&redis.url(), prefix)).await
    }

    /// `n` nodes, each on a configuration `config` makes, each ready.
    pub async fn start_with(n: usize, config: impl Fn() -> ServerConfig) -> Cluster {
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            nodes.push(redis_node(config()).await);
        }
        Cluster { nodes }
    }

    /// Where each node listens, in start order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|node| node.addr).collect()
    }

    /// Shuts every node down (as SIGTERM does); each must stop cleanly.
    pub async fn shutdown(self) {
        for (i, node) in self.nodes.into_iter().enumerate() {
            if let Err(error) = node.shutdown().await {
                panic!("node {i} did not shut down cleanly: {error}");
            }
        }
    }
}

impl Index<usize> for Cluster {
    type Output = TestServer;

    fn index(&self, i: usize) -> &TestServer {
        &self.nodes[i]
    }
}
