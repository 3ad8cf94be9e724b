//! roomcast nodes sharing one Redis: in this process ([`redis_node`]) or
//! as the real binary ([`BinaryNode`], for `kill -9` and log checks).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use roomcast_net::ServerConfig;

use crate::{binary, http, test_config, TestServer, SECRET, TIMEOUT};

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

/// The real `roomcast serve` on a free loopback port, its log (text, at
/// the default level) in a file; killed (SIGKILL) on drop.
pub struct BinaryNode {
    /// Where it listens.
    pub addr: SocketAddr,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl BinaryNode {
    /// Starts it with `args` after `serve --listen ...` and the `env`
    /// variables (the test's own `ROOMCAST_*` are removed; the JWT key is
    /// [`SECRET`]). Returns at once: see [`wait_ready`].
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> BinaryNode {
        let (addr, mut command) = binary::serve_command(args);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = dir.path().join("roomcast.log");
        let log_file = std::fs::File::create(&log).expect("the log file");
        command
            .env("ROOMCAST_JWT_SECRET", SECRET)
            .envs(env.iter().copied())
            .stderr(log_file);
        let child = command.spawn().expect("spawn roomcast");
        BinaryNode {
            addr,
            child,
            _dir: dir,
            log,
        }
    }

    /// Kills it with SIGKILL (`kill -9`) and waits for it to be gone.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("kill roomcast");
        self.child.wait().await.expect("wait for roomcast");
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
