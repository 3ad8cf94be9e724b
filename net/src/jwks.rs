//! Token keys published by an identity provider at a JWKS URL
//! (`[auth] jwks_url`): fetched, refreshed, and fetched again on demand.
//!
//! - **Which keys**: RSA keys (RS256) and EC P-256 keys (ES256). A key's
//!   `alg`, when present, must be one of those two and match its type; a
//!   key without `alg` takes its type's. Keys whose `use` is not `sig`,
//!   other types (`oct`, `OKP`), curves and algorithms are ignored. A
//!   token's `kid` selects the key and the token's `alg` must be the key's
//!   (see `auth.rs`). A document with no usable key counts as a failed
//!   fetch: an identity provider that briefly publishes an empty set does
//!   not lock everyone out.
//! - **When**: at startup, then every `jwks_refresh_ms`; until the first
//!   set is loaded, retried after 1 s, 2 s, 4 s ... up to 30 s. A token
//!   naming a `kid` the set lacks triggers a fetch at once, at most one per
//!   `jwks_refetch_min_ms` (periodic refreshes do not count), so a flood of
//!   made-up `kid`s costs the identity provider one request per period.
//! - **Failures** keep the last good set (logged, counted in
//!   `roomcast_jwks_fetches_total{outcome}`). While no set was ever
//!   loaded, tokens are invalid and `/readyz` answers 503.
//! - **Where**: fetches run on tokio tasks, never on a hub. Fetches are
//!   serialised: tokens waiting for the same refetch share it, and tokens
//!   whose keys are known never wait for any fetch.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use hyper::HeaderMap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::redact_url;
use crate::http_client::HttpClient;
use crate::metrics::Metrics;

/// The longest a fetch of the key set may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The first retry delay while no key set was loaded.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest retry delay while no key set was loaded.
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// One usable verification key.
pub(crate) struct Key {
    pub(crate) decoding: DecodingKey,
    /// The one algorithm tokens signed with this key may name.
    pub(crate) algorithm: Algorithm,
}

/// The keys of one fetched document, by `kid`.
pub(crate) struct KeySet {
    by_kid: BTreeMap<String, Key>,
    /// Keys published without a `kid`.
    without_kid: Vec<Key>,
}

/// What a token's `kid` finds in a [`KeySet`].
pub(crate) enum Lookup<'a> {
    Found(&'a Key),
    /// The token names a `kid` the set lacks (a refetch may find it).
    UnknownKid,
    /// The token names no `kid` and the set holds more than one key.
    NoKid,
}

/// Why a document was not taken as the new key set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SetError {
    /// Not JSON with a `keys` array.
    Malformed(String),
    /// No RS256 or ES256 signing key in it.
    NoUsableKey,
}

impl KeySet {
    /// Parses a JWKS document, keeping the usable keys.
    pub(crate) fn parse(body: &[u8]) -> Result<KeySet, SetError> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document =
            serde_json::from_slice(body).map_err(|e| SetError::Malformed(e.to_string()))?;
        let mut set = KeySet {
            by_kid: BTreeMap::new(),
            without_kid: Vec::new(),
        };
        for value in document.keys {
            // One key we cannot use does not spoil the others.
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            let Some(key) = usable(&jwk) else { continue };
            match &jwk.common.key_id {
                Some(kid) => {
                    // The first of two keys with one kid is kept.
                    set.by_kid.entry(kid.clone()).or_insert(key);
                }
                None => set.without_kid.push(key),
            }
        }
        if set.len() == 0 {
            return Err(SetError::NoUsableKey);
        }
        Ok(set)
    }

    /// Usable keys in the set.
    pub(crate) fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    /// The key for a token's `kid`. A token without `kid` is verified
    /// only when the set holds exactly one key (no guessing among several).
    pub(crate) fn lookup(&self, kid: Option<&str>) -> Lookup<'_> {
        match kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .map_or(Lookup::UnknownKid, Lookup::Found),
            None if self.len() == 1 => self
                .by_kid
                .values()
                .chain(&self.without_kid)
                .next()
                .map_or(Lookup::NoKid, Lookup::Found),
            None => Lookup::NoKid,
        }
    }
}

/// The key and its algorithm, when `jwk` is one roomcast verifies with.
fn usable(jwk: &Jwk) -> Option<Key> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    let declared = jwk.common.key_algorithm;
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) if matches!(declared, None | Some(KeyAlgorithm::RS256)) => {
            Algorithm::RS256
        }
        AlgorithmParameters::EllipticCurve(ec)
            if ec.curve == EllipticCurve::P256
                && matches!(declared, None | Some(KeyAlgorithm::ES256)) =>
        {
            Algorithm::ES256
        }
        _ => return None,
    };
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        decoding,
        algorithm,
    })
}

/// The key set of one JWKS URL and the fetches that keep it current.
pub(crate) struct Jwks {
    url: String,
    refresh: Duration,
    refetch_min: Duration,
    client: HttpClient,
    current: RwLock<Option<Arc<KeySet>>>,
    /// Successful loads so far: a waiter that sees it move knows a newer
    /// set arrived while it waited.
    generation: AtomicU64,
    /// Held during a fetch (one at a time); the start of the last
    /// on-demand fetch.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    /// Set by [`Jwks::start`].
    metrics: OnceLock<Metrics>,
    runtime: OnceLock<tokio::runtime::Handle>,
}

impl Jwks {
    pub(crate) fn new(url: String, refresh: Duration, refetch_min: Duration) -> Jwks {
        Jwks {
            url,
            refresh,
            refetch_min,
            client: HttpClient::new(),
            current: RwLock::new(None),
            generation: AtomicU64::new(0),
            fetching: tokio::sync::Mutex::new(None),
            metrics: OnceLock::new(),
            runtime: OnceLock::new(),
        }
    }

    /// The current key set (`None`: none was ever loaded).
    pub(crate) fn current(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Successful loads so far.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The runtime on-demand refetches run on (set by [`Jwks::start`]).
    pub(crate) fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime.get()
    }

    /// Starts the fetching task (the first fetch at once) on the current
    /// runtime. The caller aborts the task when the server stops.
    pub(crate) fn start(self: &Arc<Self>, metrics: &Metrics) -> tokio::task::JoinHandle<()> {
        let _ = self.metrics.set(metrics.clone());
        let _ = self.runtime.set(tokio::runtime::Handle::current());
        info!(url = %redact_url(&self.url), "token keys: fetching the JWKS");
        tokio::spawn(self.clone().run())
    }

    async fn run(self: Arc<Self>) {
        let mut backoff = BACKOFF_FIRST;
        loop {
            {
                let _fetching = self.fetching.lock().await;
                self.fetch("refresh").await;
            }
            let wait = if self.current().is_some() {
                self.refresh
            } else {
                let wait = backoff;
                backoff = (backoff * 2).min(BACKOFF_CAP);
                wait
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Fetches again for a token whose `kid` was unknown when the set was
    /// at `seen` (its generation): unless a newer set arrived meanwhile,
    /// or an on-demand fetch started less than `jwks_refetch_min_ms` ago.
    pub(crate) async fn refetch(&self, seen: u64) {
        let mut last = self.fetching.lock().await;
        if self.generation() != seen {
            return;
        }
        if last.is_some_and(|at| at.elapsed() < self.refetch_min) {
            debug!("unknown kid: refetch skipped (jwks_refetch_min_ms)");
            return;
        }
        *last = Some(Instant::now());
        self.fetch("unknown_kid").await;
    }

    /// Makes `set` the current key set; returns its size.
    pub(crate) fn store(&self, set: KeySet) -> usize {
        let keys = set.len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(set));
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(metrics) = self.metrics.get() {
            metrics.jwks_keys.set(keys as i64);
        }
        keys
    }

    /// One fetch; the caller holds `fetching`. Returns whether a set was loaded.
    async fn fetch(&self, why: &'static str) -> bool {
        let outcome = match self
            .client
            .get(&self.url, &HeaderMap::new(), FETCH_TIMEOUT)
            .await
        {
            Ok(response) => KeySet::parse(&response.body).map_err(|e| match e {
                SetError::Malformed(why) => ("bad_body", format!("not a JWKS document: {why}")),
                SetError::NoUsableKey => (
                    "no_usable_key",
                    "no RS256 or ES256 signing key in the document".to_owned(),
                ),
            }),
            Err(error) => Err((error.kind(), error.to_string())),
        };
        let label = match outcome {
            Ok(set) => {
                let keys = self.store(set);
                debug!(keys, why, "token keys: JWKS loaded");
                "ok"
            }
            Err((label, error)) => {
                let kept = self.current().map_or(0, |set| set.len());
                warn!(url = %redact_url(&self.url), why, %error, kept_keys = kept, "token keys: JWKS fetch failed; keeping the last good key set");
                label
            }
        };
        if let Some(metrics) = self.metrics.get() {
            metrics.jwks_fetch(label);
        }
        label == "ok"
    }
}

#[cfg(test)]
#[path = "jwks_tests.rs"]
mod tests;
