//! loadgen's command line: the flags of every mode (see the crate docs).

use std::fmt;
use std::net::SocketAddr;

pub(crate) struct Args {
    pub(crate) mode: String,
    /// The nodes (the first one for ping/pong and idle).
    pub(crate) addrs: Vec<SocketAddr>,
    /// The nodes' processes (their CPU is summed).
    pub(crate) pids: Vec<u32>,
    /// The shared engine's process, measured apart.
    pub(crate) engine_pid: Option<u32>,
    /// A Redis to count commands on (`INFO commandstats`).
    pub(crate) redis_addr: Option<SocketAddr>,
    pub(crate) token: String,
    pub(crate) members: usize,
    pub(crate) broadcasts: usize,
    pub(crate) rate: f64,
    pub(crate) payload: usize,
    pub(crate) conns: usize,
    pub(crate) seconds: u64,
    pub(crate) steps: Vec<usize>,
    pub(crate) room: String,
    /// Fail (exit 1) when a fan-out misses any delivery (the CI smoke run).
    pub(crate) require_all: bool,
    /// Fan-out: at most this many broadcasts on their way at once (0: no
    /// bound, only `--rate`); a closed loop that measures capacity.
    pub(crate) window: usize,
    /// Threads of loadgen's own runtime (1: one thread, as the
    /// side-by-side benchmarks always ran).
    pub(crate) threads: usize,
    /// Fan-out: sample the CPU of the server threads whose name starts
    /// with this, per broadcast (the first `--pid`).
    pub(crate) thread_prefix: Option<String>,
    /// Fan-out: publish connections per node. 1: each publish waits for
    /// the previous one's receipt (the publish rate then depends on the
    /// server's answer time); more: the ticker never waits for a receipt
    /// (an open loop at `--rate`), publish n going over connection n % N.
    pub(crate) publishers: usize,
}

/// A command line loadgen cannot run.
#[derive(Debug)]
pub(crate) enum ArgError {
    /// No mode given.
    Usage,
    NeedsValue(String),
    NotANumber {
        flag: String,
        value: String,
    },
    /// An item of a comma-separated list (or an address) that does not parse.
    BadItem {
        flag: &'static str,
        item: String,
    },
    UnknownFlag(String),
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgError::Usage => {
                f.write_str("usage: loadgen fanout|pingpong|idle|joinstorm|connects [--flags]")
            }
            ArgError::NeedsValue(flag) => write!(f, "{flag} needs a value"),
            ArgError::NotANumber { flag, value } => write!(f, "{flag}: not a number: {value}"),
            ArgError::BadItem { flag, item } => write!(f, "{flag}: {item}"),
            ArgError::UnknownFlag(flag) => write!(f, "unknown flag {flag}"),
        }
    }
}

impl std::error::Error for ArgError {}

pub(crate) fn parse_args() -> Result<Args, ArgError> {
    let mut it = std::env::args().skip(1);
    let mode = it.next().ok_or(ArgError::Usage)?;
    let mut args = Args {
        mode,
        addrs: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
        pids: Vec::new(),
        engine_pid: None,
        redis_addr: None,
        token: String::new(),
        members: 1000,
        broadcasts: 200,
        rate: 50.0,
        payload: 100,
        conns: 100,
        seconds: 5,
        steps: vec![1000, 5000, 15000],
        room: "bench".into(),
        require_all: false,
        window: 0,
        threads: 1,
        thread_prefix: None,
        publishers: 1,
    };
    while let Some(flag) = it.next() {
        if flag == "--require-all" {
            args.require_all = true;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| ArgError::NeedsValue(flag.clone()))?;
        let number = || {
            value.parse::<u64>().map_err(|_| ArgError::NotANumber {
                flag: flag.clone(),
                value: value.clone(),
            })
        };
        let bad = |flag: &'static str, item: &str| ArgError::BadItem {
            flag,
            item: item.to_owned(),
        };
        match flag.as_str() {
            "--addr" => {
                args.addrs = value
                    .split(',')
                    .map(|a| a.trim().parse().map_err(|_| bad("--addr", a)))
                    .collect::<Result<_, _>>()?
            }
            "--pid" => {
                args.pids = value
                    .split(',')
                    .map(|p| p.trim().parse().map_err(|_| bad("--pid", p)))
                    .collect::<Result<_, _>>()?
            }
            "--engine-pid" => args.engine_pid = Some(number()? as u32),
            "--redis-addr" => {
                args.redis_addr = Some(value.parse().map_err(|_| bad("--redis-addr", &value))?)
            }
            "--token" => args.token = value.clone(),
            "--members" => args.members = number()? as usize,
            "--broadcasts" => args.broadcasts = number()? as usize,
            "--rate" => {
                args.rate = value.parse().map_err(|_| ArgError::NotANumber {
                    flag: flag.clone(),
                    value: value.clone(),
                })?
            }
            "--payload" => args.payload = number()? as usize,
            "--conns" => args.conns = number()? as usize,
            "--seconds" => args.seconds = number()?,
            "--steps" => {
                args.steps = value
                    .split(',')
                    .map(|s| s.trim().parse().map_err(|_| bad("--steps", s)))
                    .collect::<Result<_, _>>()?
            }
            "--room" => args.room = value.clone(),
            "--window" => args.window = number()? as usize,
            "--threads" => args.threads = (number()? as usize).max(1),
            "--thread-prefix" => args.thread_prefix = Some(value.clone()),
            "--publishers" => args.publishers = (number()? as usize).max(1),
            other => return Err(ArgError::UnknownFlag(other.to_owned())),
        }
    }
    Ok(args)
}
