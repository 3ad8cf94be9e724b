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

/// The most of a server's log printed when a test fails (its tail).
const LOG_TAIL_BYTES: usize = 16 * 1024;

/// A running `roomcast serve` process on a free loopback port: the one
/// launcher of the binary in tests. It starts with none of the test's own
/// `ROOMCAST_*` variables and no standard input or output; its standard
/// error (the log) goes to a file of its own, which [`Process::log`]
/// reads and which is printed (its tail) when the process is dropped
/// while the test panics, so a failing test shows what the server said.
/// Killed (SIGKILL) when dropped.
pub struct Process {
    child: tokio::process::Child,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Spawns `roomcast serve --listen <addr> <args>` with the `env`
    /// variables (its log at the server's default level unless `env` sets
    /// `ROOMCAST_LOG`); returns at once (see [`crate::cluster::wait_ready`]).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Process {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("an address");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = dir.path().join("roomcast.log");
        let log_file = std::fs::File::create(&log).expect("the log file");
        let mut command = tokio::process::Command::new(path());
        for (key, _) in std::env::vars() {
            if key.starts_with("ROOMCAST_") {
                command.env_remove(key);
            }
        }
        command
            .args(["serve", "--listen", &addr.to_string()])
            .args(args)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true);
        let child = command.spawn().expect("spawn roomcast");
        Process {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    /// Spawns it with `args` and `env` (logging warnings and errors unless
    /// `env` sets `ROOMCAST_LOG`); returns once `/healthz` answers.
    pub async fn start(args: &[&str], env: &[(&str, String)]) -> Process {
        let mut with_level = vec![("ROOMCAST_LOG", "warn")];
        with_level.extend(env.iter().map(|(k, v)| (*k, v.as_str())));
        let mut process = Process::spawn(args, &with_level);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let addr = process.addr;
            let up = tokio::net::TcpStream::connect(addr).await.is_ok()
                && super::http(addr, "GET", "/healthz", &[], "").await.status == 200;
            if up {
                break;
            }
            if let Ok(Some(exit)) = process.child.try_wait() {
                panic!("roomcast exited before it came up ({exit})");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "roomcast did not come up"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        process
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills it with SIGKILL (`kill -9`) and waits for it to be gone.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("kill roomcast");
        self.child.wait().await.expect("wait for roomcast");
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
        let started = tokio::time::Instant::now();
        self.signal("TERM");
        let exit = self.wait(std::time::Duration::from_secs(30)).await;
        (exit, started.elapsed())
    }

    /// Sends it `signal` (a name `kill` knows: `TERM`, `INT`, …).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("pid");
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Waits for it to exit, at most `within` (then the test fails).
    pub async fn wait(&mut self, within: std::time::Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("roomcast did not exit within {within:?}"))
            .expect("wait")
    }
}

impl Process {
    /// What a failing test prints: the tail of the log (at most
    /// `LOG_TAIL_BYTES`), framed with the server's address.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read(&self.log).unwrap_or_default();
        let tail = &log[log.len().saturating_sub(LOG_TAIL_BYTES)..];
        format!(
            "--- roomcast on {} logged ({} of {} bytes, the last) ---\n{}--- end of its log ---",
            self.addr,
            tail.len(),
            log.len(),
            String::from_utf8_lossy(tail)
        )
    }
}

impl Drop for Process {
    /// A failing test shows what the server said.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_log_is_kept_and_its_tail_is_what_a_failing_test_prints() {
        let env = [("ROOMCAST_LOG", "info".to_owned())];
        let mut process = Process::start(&[], &env).await;
        let header = format!("--- roomcast on {} logged", process.addr);
        let tail = process.log_tail();
        assert!(tail.starts_with(&header), "{tail}");
        assert!(tail.contains("roomcast listening"), "{tail}");
        assert!(tail.ends_with("--- end of its log ---"), "{tail}");
        // A long log is cut to its last bytes.
        let filler = "x".repeat(LOG_TAIL_BYTES);
        std::fs::write(&process.log, format!("first line\n{filler}last line\n")).unwrap();
        let tail = process.log_tail();
        assert!(!tail.contains("first line"), "the head is cut");
        assert!(tail.contains("last line"), "the tail is kept");
        process.kill().await;
    }
}
