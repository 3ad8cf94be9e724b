//! A `redis-server` of the test's own, on a free loopback port, with no
//! persistence and a fresh working directory of its own (a replica writes
//! the snapshot it receives there, and Redis loads any `dump.rdb` of its
//! directory at startup); stopped when dropped. No test uses a Redis the machine
//! happens to run. It can also listen with TLS only ([`RedisServer::start_tls`]).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls_certs::TestCerts;

/// A running `redis-server`, killed on drop.
pub struct RedisServer {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Option<Child>,
    /// `redis-cli` arguments to reach it over TLS (empty without TLS).
    cli_tls: Vec<String>,
    /// Its working directory (unless `--dir` names another).
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` (which `scripts/test` installs) on a free
    /// loopback port and waits until it accepts connections.
    pub fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        RedisServer::start_on(port)
    }

    /// Starts it on `port` (to restart one where it was).
    pub fn start_on(port: u16) -> RedisServer {
        RedisServer::start_with(port, &[])
    }

    /// Starts it on `port` with extra `redis-server` arguments.
    pub fn start_with(port: u16, extra: &[&str]) -> RedisServer {
        let port_arg = port.to_string();
        RedisServer::spawn(port, &[&["--port", &port_arg], extra].concat(), Vec::new())
    }

    /// Starts it with TLS only (no plain port) on a free loopback port,
    /// with `certs`' server certificate; clients must present a
    /// certificate signed by `certs`' CA when `auth_clients` is `"yes"`,
    /// may with `"optional"`, and need not with `"no"`. `extra`: more
    /// `redis-server` arguments.
    pub fn start_tls(certs: &TestCerts, auth_clients: &str, extra: &[&str]) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let path = |p: std::path::PathBuf| p.to_str().expect("a UTF-8 path").to_owned();
        let (cert, key, ca) = (
            path(certs.cert("server")),
            path(certs.key("server")),
            path(certs.cert("ca")),
        );
        let port_arg = port.to_string();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port_arg,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            auth_clients,
        ];
        let cli_tls = vec![
            "--tls".to_owned(),
            "--cacert".to_owned(),
            ca.clone(),
            "--cert".to_owned(),
            path(certs.cert("client")),
            "--key".to_owned(),
            path(certs.key("client")),
        ];
        RedisServer::spawn(port, &[&args[..], extra].concat(), cli_tls)
    }

    fn spawn(port: u16, args: &[&str], cli_tls: Vec<String>) -> RedisServer {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = tempfile::tempdir().expect("a temporary directory");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "cannot run redis-server: install it (scripts/test does: apt-get install redis-server)",
            );
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        RedisServer {
            addr,
            child: Some(child),
            cli_tls,
            _dir: dir,
        }
    }

    /// Starts it on `port` with an append-only file in `dir`, written and
    /// synced before each answer (`appendfsync always`): killed with
    /// SIGKILL and started again on the same `dir`, it has lost nothing.
    pub fn start_persistent(port: u16, dir: &std::path::Path) -> RedisServer {
        let dir = dir.to_string_lossy();
        let persistent = [
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            &dir,
        ];
        RedisServer::start_with(port, &persistent)
    }

    /// Starts it on `port` with RDB snapshots in `dir` and no append-only
    /// file: only what a `SAVE` wrote survives SIGKILL, so started again
    /// on the same `dir` it is back at the last `SAVE` (a rollback).
    pub fn start_snapshotting(port: u16, dir: &std::path::Path) -> RedisServer {
        let dir = dir.to_string_lossy();
        RedisServer::start_with(port, &["--dir", &dir])
    }

    /// Starts it on a free loopback port as a replica of `master`, and waits
    /// until it has synchronised (`master_link_status:up`).
    pub fn start_replica(master: &RedisServer) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let master_port = master.addr.port().to_string();
        let replica = RedisServer::start_with(port, &["--replicaof", "127.0.0.1", &master_port]);
        replica.wait_for_info("replication", "master_link_status:up");
        replica
    }

    /// Waits (at most 20 s) until `INFO section` contains `expected`.
    pub fn wait_for_info(&self, section: &str, expected: &str) {
        let started = Instant::now();
        loop {
            let info = self.cli(&["INFO", section]);
            if info.contains(expected) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{} never had {expected}: {info}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://127.0.0.1:port/0`, or `rediss://...` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.cli_tls.is_empty() {
            "redis"
        } else {
            "rediss"
        };
        format!("{scheme}://{}/0", self.addr)
    }

    /// Runs `redis-cli` against it (fault injection), returning its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.addr.port().to_string()])
            .args(&self.cli_tls)
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Kills it (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of the test's own: `masters` `redis-server`s in cluster
/// mode on free loopback ports, the slots spread over them (no replicas),
/// each node's cluster state in a temporary directory. Stopped when dropped.
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
    _state: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts the nodes, joins them with `redis-cli --cluster create` and
    /// waits until the cluster answers `cluster_state:ok` on every node.
    pub fn start(masters: usize) -> RedisCluster {
        let state = tempfile::tempdir().expect("a temporary directory");
        let dir = state.path().to_string_lossy().into_owned();
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| {
                let port = cluster_port();
                let config = format!("nodes-{port}.conf");
                RedisServer::start_with(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &config,
                        "--dir",
                        &dir,
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let started = Instant::now();
        while !nodes
            .iter()
            .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the redis cluster never became ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisCluster {
            nodes,
            _state: state,
        }
    }

    /// Every node as a seed: `redis://a/0,redis://b/0,...`.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A free loopback port whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("an address").port();
        if port > 55_535 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}
