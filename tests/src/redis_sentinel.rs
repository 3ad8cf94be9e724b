//! A Redis Sentinel of the test's own (`redis-server sentinel.conf
//! --sentinel`), on a free loopback port, watching one master with quorum
//! 1 and `down-after-milliseconds 1000` (a failover within a few seconds);
//! its configuration file (which Sentinel rewrites) in a temporary
//! directory. Killed when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The master name every test Sentinel monitors.
pub const MASTER: &str = "mymaster";

/// A running Sentinel, killed on drop.
pub struct Sentinel {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    /// Starts a Sentinel monitoring the master at `master` as [`MASTER`]
    /// and waits until it knows `replicas` replicas of it (a failover needs
    /// one it has seen).
    pub fn start(master: SocketAddr, replicas: usize) -> Sentinel {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\n\
                 dir {dir}\n\
                 sentinel monitor {MASTER} {ip} {master_port} 1\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 10000\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                dir = dir.path().display(),
                ip = master.ip(),
                master_port = master.port(),
            ),
        )
        .expect("write sentinel.conf");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new("redis-server")
            .arg(&conf)
            .args(["--sentinel", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run redis-server --sentinel (scripts/test installs redis-server)");
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "sentinel did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let sentinel = Sentinel {
            addr,
            child,
            _dir: dir,
        };
        loop {
            let known = sentinel.cli(&["SENTINEL", "REPLICAS", MASTER]);
            if known.lines().filter(|line| *line == "name").count() >= replicas {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "sentinel never saw {replicas} replicas: {known}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        sentinel
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// The master it names now (`SENTINEL get-master-addr-by-name`).
    pub fn master(&self) -> SocketAddr {
        let answer = self.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER]);
        let mut lines = answer.lines();
        let (ip, port) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
        format!("{ip}:{port}")
            .parse()
            .unwrap_or_else(|_| panic!("no master named: {answer}"))
    }

    /// Runs `redis-cli` against it, returning its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.addr.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
