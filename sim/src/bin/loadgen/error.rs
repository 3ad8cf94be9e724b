//! Why a load run failed: loadgen's one error type (its command line has
//! its own, `args::ArgError`).

use std::fmt;
use std::net::SocketAddr;

use tokio_tungstenite::tungstenite;

#[derive(Debug)]
pub(crate) enum LoadError {
    /// A socket call failed; `what` it was doing.
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    /// Binding a client socket to its source address failed.
    Bind {
        source_addr: SocketAddr,
        source: std::io::Error,
    },
    WebSocket(tungstenite::Error),
    Http(hyper::Error),
    Request(hyper::http::Error),
    /// The server sent something else (or nothing) instead of `connected`.
    NoConnected(String),
    /// A join was answered with something else (or nothing).
    JoinFailed(String),
    /// Redis closed the connection before its whole `INFO` reply.
    RedisClosed,
    /// Redis's reply did not start with a bulk string length.
    RedisAnswered(String),
    /// A broadcast did not reach every member in time.
    NotDelivered {
        broadcast: usize,
    },
    /// The publish API refused a broadcast.
    PublishRefused(hyper::StatusCode),
    /// With `--require-all`: deliveries missing at the end.
    MissingDeliveries {
        got: u64,
        expected: u64,
    },
    /// The server never went quiet after a join storm.
    NeverQuiet,
    /// The first argument names no mode.
    UnknownMode(String),
    /// A publish connection's task ended before the run (it failed).
    PublisherGone,
    /// A publish connection's task panicked or was cancelled.
    PublisherTask(tokio::task::JoinError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Io { what, source } => write!(f, "{what}: {source}"),
            LoadError::Bind {
                source_addr,
                source,
            } => write!(f, "bind {source_addr}: {source}"),
            LoadError::WebSocket(error) => write!(f, "{error}"),
            LoadError::Http(error) => write!(f, "{error}"),
            LoadError::Request(error) => write!(f, "{error}"),
            LoadError::NoConnected(got) => write!(f, "no connected message: {got}"),
            LoadError::JoinFailed(got) => write!(f, "join failed: {got}"),
            LoadError::RedisClosed => f.write_str("redis closed during INFO"),
            LoadError::RedisAnswered(head) => write!(f, "redis answered {head}"),
            LoadError::NotDelivered { broadcast } => write!(
                f,
                "broadcast {broadcast} did not reach every member within 30 s"
            ),
            LoadError::PublishRefused(status) => write!(f, "publish answered {status}"),
            LoadError::MissingDeliveries { got, expected } => {
                write!(f, "received {got} of {expected} deliveries")
            }
            LoadError::NeverQuiet => f.write_str("the server did not go quiet within 600 s"),
            LoadError::UnknownMode(mode) => write!(f, "unknown mode {mode}"),
            LoadError::PublisherGone => f.write_str("a publish connection failed"),
            LoadError::PublisherTask(error) => write!(f, "a publish connection's task: {error}"),
        }
    }
}

impl std::error::Error for LoadError {}

impl From<tungstenite::Error> for LoadError {
    fn from(error: tungstenite::Error) -> LoadError {
        LoadError::WebSocket(error)
    }
}

impl From<hyper::Error> for LoadError {
    fn from(error: hyper::Error) -> LoadError {
        LoadError::Http(error)
    }
}

impl From<hyper::http::Error> for LoadError {
    fn from(error: hyper::http::Error) -> LoadError {
        LoadError::Request(error)
    }
}

/// An I/O error with what was being done.
pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> LoadError {
    move |source| LoadError::Io { what, source }
}
