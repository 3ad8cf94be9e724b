//! The `roomcast` executable, for tests that need a real process (signals).

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

/// `roomcast serve --listen <a free loopback port> <args>`, with none of
/// the test's own `ROOMCAST_*` variables, no standard input or output,
/// killed (SIGKILL) when dropped: what every test that runs the binary
/// starts from. Returns the address it will listen on.
pub fn serve_command(args: &[&str]) -> (std::net::SocketAddr, tokio::process::Command) {
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
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    (addr, command)
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
        let (addr, mut command) = serve_command(args);
        command
            .env("ROOMCAST_LOG", "error")
            .stderr(std::process::Stdio::null());
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
