//! Off-hub checks: the one place that answers the core's `Output::Check`
//! (see `roomcast_core::checks`), whatever it asks, and feeds every answer
//! back to the hub through one channel as `Input::CheckDone`.
//!
//! - **Token** (a client's `refresh`): verified on a small pool of
//!   threads ([`TokenPool`], one per node, shared by every shard's hub). RS256/ES256 verification costs tens to hundreds of
//!   microseconds; on the hub, the one task that serves every connection,
//!   a few hundred clients refreshing at their rate limit would stall
//!   everyone. A token naming a `kid` the identity provider's key set
//!   lacks is answered from a tokio task once the set was fetched again
//!   (`TokenVerifier::verify_then`), so no thread waits for a fetch.
//! - **Join** (a `granted` room the grants do not cover): the join hook
//!   ([`crate::hooks`]) is called on a tokio task, at most `calls_max` at
//!   once (beyond, `HOOK_UNAVAILABLE` at once); a cached allow answers
//!   without a call. The connection's forwarded headers (its cookie) are
//!   kept here from its upgrade until it closes, only while a join hook
//!   is configured.
//!
//! Meanwhile the core holds the connection's later messages back, so the
//! answer keeps its place in the connection's order; other connections
//! never wait. Bounded: a connection has at most one check in flight, so
//! the job queue and the result channel hold at most one entry per open
//! connection. Threads start at the first token (a server that never sees
//! a `refresh`, like the simulator's, starts none) and end when the pool
//! is closed.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use hyper::HeaderMap;
use roomcast_core::{Check, CheckAnswer, ConnectionId, HookVerdict, TokenRefused};
use tokio::sync::mpsc;

use crate::auth::TokenVerifier;
use crate::hooks::Hooks;

/// One token to verify.
struct Job {
    conn: ConnectionId,
    token: String,
    /// Wall-clock time of the request, Unix ms (read by the hub, so the
    /// simulator's clock governs expiry here too).
    now_unix_ms: i64,
    /// Where the answer goes (the asking hub's channel).
    results: mpsc::UnboundedSender<Checked>,
}

/// The node's token threads, started at the first token and shared by
/// every shard's hub.
pub struct TokenPool {
    verifier: Arc<TokenVerifier>,
    threads: usize,
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    jobs: Option<std_mpsc::Sender<Job>>,
    handles: Vec<JoinHandle<()>>,
    closed: bool,
}

impl TokenPool {
    /// A pool of `threads` (at least one) threads, none started yet.
    pub fn new(verifier: Arc<TokenVerifier>, threads: usize) -> Arc<TokenPool> {
        Arc::new(TokenPool {
            verifier,
            threads: threads.max(1),
            state: Mutex::new(PoolState::default()),
        })
    }

    /// The default number of token threads: one per CPU, at most four.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    }

    fn verify(&self, job: Job) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.jobs.is_none() && !state.closed {
            self.start(&mut state);
        }
        let job = match &state.jobs {
            Some(jobs) => match jobs.send(job) {
                Ok(()) => return,
                Err(std_mpsc::SendError(job)) => job,
            },
            None => job,
        };
        drop(state);
        // No thread could be started (or the pool is closing): answer
        // inline rather than never.
        run(&self.verifier, job);
    }

    fn start(&self, state: &mut PoolState) {
        let (jobs, queue) = std_mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..self.threads {
            let queue = queue.clone();
            let verifier = self.verifier.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("roomcast-verify-{i}"))
                .spawn(move || loop {
                    let job = match queue.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    if job.results.is_closed() {
                        continue;
                    }
                    run(&verifier, job);
                });
            if let Ok(handle) = spawned {
                state.handles.push(handle);
            }
        }
        state.jobs = Some(jobs);
    }

    /// Stops taking tokens and returns the threads to join (they end once
    /// the job they are on, if any, is done).
    pub fn close(&self) -> Vec<JoinHandle<()>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.closed = true;
        state.jobs = None;
        std::mem::take(&mut state.handles)
    }
}

/// The answer to one check, for the hub to hand to the core.
pub struct Checked {
    /// The connection that asked.
    pub conn: ConnectionId,
    /// The answer.
    pub answer: CheckAnswer,
}

/// Makes the core's checks off the hub.
pub struct Checker {
    tokens: Arc<TokenPool>,
    hooks: Arc<Hooks>,
    results: mpsc::UnboundedSender<Checked>,
    /// Forwarded upgrade headers per connection (join hook only). Lookup
    /// only; never iterated.
    forwarded: HashMap<ConnectionId, Box<HeaderMap>>,
}

impl Checker {
    /// A checker verifying tokens on `tokens` that sends its answers to
    /// `results`.
    pub fn new(
        tokens: Arc<TokenPool>,
        hooks: Arc<Hooks>,
        results: mpsc::UnboundedSender<Checked>,
    ) -> Checker {
        Checker {
            tokens,
            hooks,
            results,
            forwarded: HashMap::new(),
        }
    }

    /// A connection opened with these forwarded headers.
    pub fn opened(&mut self, conn: ConnectionId, forwarded: Option<Box<HeaderMap>>) {
        if let Some(forwarded) = forwarded.filter(|_| self.hooks.has_join()) {
            self.forwarded.insert(conn, forwarded);
        }
    }

    /// A connection is gone.
    pub fn closed(&mut self, conn: ConnectionId) {
        self.forwarded.remove(&conn);
    }

    /// Starts one check; its answer comes through `results`.
    pub fn submit(&mut self, conn: ConnectionId, check: Check, now_unix_ms: i64) {
        match check {
            Check::Token { token } => self.tokens.verify(Job {
                conn,
                token,
                now_unix_ms,
                results: self.results.clone(),
            }),
            Check::Join { room, user } => {
                let answer = move |verdict| Checked {
                    conn,
                    answer: CheckAnswer::Join(verdict),
                };
                if self.hooks.cached(user.as_deref(), &room) {
                    let _ = self.results.send(answer(HookVerdict::Allow));
                    return;
                }
                let Some(permit) = self.hooks.permit() else {
                    let _ = self.results.send(answer(self.hooks.busy()));
                    return;
                };
                let hooks = self.hooks.clone();
                let results = self.results.clone();
                let forwarded = self
                    .forwarded
                    .get(&conn)
                    .map(|headers| HeaderMap::clone(headers))
                    .unwrap_or_default();
                tokio::spawn(async move {
                    let verdict = hooks
                        .join(permit, conn, user.as_deref(), &room, &forwarded)
                        .await;
                    let _ = results.send(answer(verdict));
                });
            }
        }
    }
}

/// Verifies `job` and sends the answer to `results`: at once, or, for a
/// token whose `kid` the identity provider's key set lacks, from a tokio
/// task once the set was fetched again (the thread does not wait for it).
fn run(verifier: &Arc<TokenVerifier>, job: Job) {
    let Job {
        conn,
        token,
        now_unix_ms,
        results,
    } = job;
    verifier.verify_then(token, now_unix_ms, move |result| {
        let _ = results.send(Checked {
            conn,
            answer: CheckAnswer::Token(result.map_err(|e| TokenRefused(e.to_string()))),
        });
    });
}
