//! The application's hooks (`[hooks]`): roomcast asks the application's
//! backend who a connection without a token is (`connect_url`, before the
//! upgrade) and whether a connection may join a `granted` room its grants
//! do not cover (`join_url`).
//!
//! - Requests are JSON POSTs over [`HttpClient`], on tokio tasks, never on
//!   a hub; each waits at most `timeout_ms`.
//! - At most `calls_max` requests are in flight (both hooks together);
//!   beyond that a call fails at once: the server stays responsive when
//!   the backend is slow, and fails closed.
//! - The headers named by `forward_headers` (default `cookie`) of the
//!   client's upgrade request go with every request, unchanged, so the
//!   backend can recognise its own session. Nothing else of the client's
//!   request is sent, and no header is ever logged.
//! - A join allow with `cache_ms` is remembered for that user and room
//!   (never for anonymous connections), at most [`CACHE_MAX`] entries.
//! - Every call counts in `/metrics`: calls, failures by kind, latency.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderName};
use hyper::StatusCode;
use roomcast_core::{ConnectionId, Grants, HookVerdict, Identity, RoomName, User};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{redact_url, HooksConfig};
use crate::http_client::{HttpClient, HttpError};
use crate::metrics::{HookFailure, HookLabel, Metrics};

/// Join allows remembered at most (`cache_ms`); when full, new allows are
/// not cached (expired entries are swept first).
pub const CACHE_MAX: usize = 65_536;

/// The longest `cache_ms` honoured (one hour): a revoked permission is
/// seen again within this time whatever the backend asked for.
pub const CACHE_MS_MAX: u64 = 3_600_000;

/// Why a connect hook refused the upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// The backend answered 401: not logged in.
    Unauthorized,
    /// The backend answered 403: not allowed.
    Forbidden,
    /// No usable answer: 503 `HOOK_UNAVAILABLE`.
    Unavailable,
}

impl ConnectRefusal {
    /// The upgrade's HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            ConnectRefusal::Unauthorized => StatusCode::UNAUTHORIZED,
            ConnectRefusal::Forbidden => StatusCode::FORBIDDEN,
            ConnectRefusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The hooks, shared by the HTTP handlers and the off-hub checks.
pub struct Hooks {
    client: HttpClient,
    join_url: Option<String>,
    connect_url: Option<String>,
    timeout: Duration,
    forward: Vec<HeaderName>,
    calls: Arc<Semaphore>,
    cache: Mutex<HashMap<(String, RoomName), Instant>>,
    metrics: Metrics,
}

#[derive(Serialize)]
struct JoinRequest<'a> {
    connection_id: String,
    user: Option<&'a str>,
    room: &'a str,
}

/// The join hook's answer: `allow` is required.
#[derive(Deserialize)]
struct JoinAnswer {
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    cache_ms: Option<u64>,
}

#[derive(Serialize)]
struct ConnectRequest {
    connection_id: String,
}

/// The connect hook's answer: every field optional (`{}` is anonymous).
#[derive(Deserialize)]
struct ConnectAnswer {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    rooms: Option<serde_json::Value>,
    #[serde(default)]
    expires_at: Option<f64>,
}

/// A call that got no usable answer, for logs and metrics.
enum Failure {
    /// Over `calls_max`.
    Busy,
    Http(HttpError),
    /// A 200 whose JSON is not an answer of this hook.
    Answer(String),
}

impl Failure {
    fn kind(&self) -> &'static str {
        match self {
            Failure::Busy => "busy",
            Failure::Http(error) => error.kind(),
            Failure::Answer(_) => "bad_body",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Busy => f.write_str("hooks.calls_max requests already in flight"),
            Failure::Http(error) => error.fmt(f),
            Failure::Answer(why) => write!(f, "bad answer: {why}"),
        }
    }
}

impl Hooks {
    /// The hooks of `config` (checked by `ServerConfig::validate`).
    pub fn new(config: &HooksConfig, metrics: &Metrics) -> Hooks {
        Hooks {
            client: HttpClient::new(),
            join_url: config.join_url.clone(),
            connect_url: config.connect_url.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            forward: config
                .forward_headers
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .collect(),
            calls: Arc::new(Semaphore::new(config.calls_max)),
            cache: Mutex::new(HashMap::new()),
            metrics: metrics.clone(),
        }
    }

    /// Whether joins are asked of a join hook.
    pub fn has_join(&self) -> bool {
        self.join_url.is_some()
    }

    /// Whether token-less connections are asked of a connect hook.
    pub fn has_connect(&self) -> bool {
        self.connect_url.is_some()
    }

    /// The headers of `request` to forward (empty without hooks).
    pub fn forwarded(&self, request: &HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::new();
        if self.join_url.is_none() && self.connect_url.is_none() {
            return out;
        }
        for name in &self.forward {
            for value in request.get_all(name) {
                out.append(name.clone(), value.clone());
            }
        }
        out
    }

    /// A permit for one call, or `None` when `calls_max` are in flight.
    pub fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.calls.clone().try_acquire_owned().ok()
    }

    /// A join over `calls_max`: counted, and `HOOK_UNAVAILABLE` at once.
    pub fn busy(&self) -> HookVerdict {
        if let Some(url) = &self.join_url {
            self.failed("join", url, &Failure::Busy);
        }
        HookVerdict::Unavailable
    }

    /// Whether a cached allow covers `user` joining `room` now.
    pub fn cached(&self, user: Option<&str>, room: &RoomName) -> bool {
        let Some(user) = user else {
            return false;
        };
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let hit = cache
            .get(&(user.to_owned(), room.clone()))
            .is_some_and(|until| Instant::now() < *until);
        drop(cache);
        if hit {
            self.metrics.hook_cache_hits.inc();
        }
        hit
    }

    fn remember(&self, user: &str, room: &RoomName, cache_ms: u64) {
        let until = Instant::now() + Duration::from_millis(cache_ms.min(CACHE_MS_MAX));
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            let now = Instant::now();
            cache.retain(|_, until| *until > now);
        }
        if cache.len() < CACHE_MAX {
            cache.insert((user.to_owned(), room.clone()), until);
        }
    }

    /// Asks the join hook about `conn` (of `user`) joining `room`, with
    /// the permit of [`Hooks::permit`] (held until the answer is in).
    pub async fn join(
        &self,
        _permit: OwnedSemaphorePermit,
        conn: ConnectionId,
        user: Option<&str>,
        room: &RoomName,
        forwarded: &HeaderMap,
    ) -> HookVerdict {
        let Some(url) = &self.join_url else {
            debug_assert!(false, "a join check without a join hook");
            return HookVerdict::Unavailable;
        };
        let body = JoinRequest {
            connection_id: conn.to_string(),
            user,
            room: room.as_str(),
        };
        let answer = self
            .call("join", url, &body, forwarded)
            .await
            .and_then(|response| match response {
                Ok(body) => serde_json::from_slice::<JoinAnswer>(&body)
                    .map_err(|e| Failure::Answer(e.to_string())),
                Err(status) => Err(Failure::Http(HttpError::Status(status))),
            });
        match answer {
            Ok(JoinAnswer {
                allow: true,
                cache_ms,
                ..
            }) => {
                if let (Some(user), Some(ms)) = (user, cache_ms.filter(|ms| *ms > 0)) {
                    self.remember(user, room, ms);
                }
                HookVerdict::Allow
            }
            Ok(JoinAnswer {
                allow: false,
                reason,
                ..
            }) => {
                info!(conn = %conn, room = %room, reason = reason.as_deref().unwrap_or("-"), "join hook denied the join");
                HookVerdict::Deny
            }
            Err(failure) => {
                self.failed("join", url, &failure);
                HookVerdict::Unavailable
            }
        }
    }

    /// Asks the connect hook who `conn` (a `/ws/connect` without a token)
    /// is. Fails at once when `calls_max` calls are in flight.
    pub async fn connect(
        &self,
        conn: ConnectionId,
        forwarded: &HeaderMap,
    ) -> Result<Identity, ConnectRefusal> {
        let Some(url) = &self.connect_url else {
            return Ok(Identity::Anonymous);
        };
        let Some(_permit) = self.permit() else {
            self.failed("connect", url, &Failure::Busy);
            return Err(ConnectRefusal::Unavailable);
        };
        let body = ConnectRequest {
            connection_id: conn.to_string(),
        };
        let answer = match self.call("connect", url, &body, forwarded).await {
            Ok(Ok(body)) => serde_json::from_slice::<ConnectAnswer>(&body)
                .map_err(|e| Failure::Answer(e.to_string()))
                .and_then(identity_of),
            Ok(Err(401)) => return Err(ConnectRefusal::Unauthorized),
            Ok(Err(403)) => return Err(ConnectRefusal::Forbidden),
            Ok(Err(status)) => Err(Failure::Http(HttpError::Status(status))),
            Err(failure) => Err(failure),
        };
        answer.map_err(|failure| {
            self.failed("connect", url, &failure);
            ConnectRefusal::Unavailable
        })
    }

    /// One POST: the body of a 200, or another status, or a failure.
    async fn call<T: Serialize>(
        &self,
        hook: &'static str,
        url: &str,
        body: &T,
        forwarded: &HeaderMap,
    ) -> Result<Result<bytes::Bytes, u16>, Failure> {
        let label = HookLabel { hook };
        self.metrics.hook_calls.get_or_create(&label).inc();
        let started = Instant::now();
        let result = self
            .client
            .post_json(url, body, forwarded, self.timeout)
            .await;
        self.metrics
            .hook_seconds
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(response) if response.status == StatusCode::OK => Ok(Ok(response.body)),
            Ok(response) => Ok(Err(response.status.as_u16())),
            Err(HttpError::Status(status)) => Ok(Err(status)),
            Err(error) => Err(Failure::Http(error)),
        }
    }

    fn failed(&self, hook: &'static str, url: &str, failure: &Failure) {
        let kind = failure.kind();
        self.metrics
            .hook_failures
            .get_or_create(&HookFailure { hook, kind })
            .inc();
        warn!(hook, url = %redact_url(url), kind, error = %failure, "hook unavailable: answered HOOK_UNAVAILABLE");
    }
}

/// The identity a connect hook's 200 names. An `expires_at` already
/// past is kept: the core then closes the connection with 4001 at once,
/// like an expired token.
fn identity_of(answer: ConnectAnswer) -> Result<Identity, Failure> {
    let Some(id) = answer.user else {
        return Ok(Identity::Anonymous);
    };
    if id.is_empty() {
        return Err(Failure::Answer("user is an empty string".into()));
    }
    let grants = match &answer.rooms {
        None | Some(serde_json::Value::Null) => Grants::none(),
        Some(rooms) => Grants::from_json(rooms).map_err(|e| Failure::Answer(e.to_string()))?,
    };
    let expires_unix_ms = match answer.expires_at {
        None => None,
        Some(at) if at.is_finite() => Some((at * 1000.0) as i64),
        Some(_) => return Err(Failure::Answer("expires_at is not a number".into())),
    };
    Ok(Identity::User(User {
        id,
        scopes: Vec::new(),
        expires_unix_ms,
        grants,
    }))
}
