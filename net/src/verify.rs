//! Token verification off the hub: a small pool of threads that answers the
//! core's `Output::VerifyToken` (a client's `refresh`).
//!
//! RS256/ES256 verification costs tens to hundreds of microseconds; on the
//! hub, the one task that serves every connection, a few hundred clients
//! refreshing at their rate limit would stall everyone. The hub hands the
//! token to the pool, holds back the connection's later inputs until the
//! answer is in (so the reply keeps its place in the connection's order),
//! and feeds the answer back as `Input::TokenVerified`.
//!
//! Bounded: the hub has at most one verification in flight per connection
//! (the connection's next inputs wait for it), so the job queue and the
//! result channel hold at most one entry per open connection. Threads
//! start at the first job (a server that never sees a `refresh`, like the
//! simulator's, starts none) and end when the pool is dropped.

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use roomcast_core::request::RequestId;
use roomcast_core::{ConnectionId, User};
use tokio::sync::mpsc;

use crate::auth::TokenVerifier;

/// One token to verify.
pub struct Job {
    /// The connection that asked.
    pub conn: ConnectionId,
    /// The refresh request's id.
    pub id: Option<RequestId>,
    /// The token as the client sent it.
    pub token: String,
    /// Wall-clock time of the request, Unix ms (read by the hub, so the
    /// simulator's clock governs expiry here too).
    pub now_unix_ms: i64,
}

/// The answer to one [`Job`].
pub struct Verified {
    /// The connection that asked.
    pub conn: ConnectionId,
    /// The refresh request's id.
    pub id: Option<RequestId>,
    /// The verified user, or why the token was refused.
    pub result: Result<User, String>,
}

/// The verification threads.
pub struct VerifyPool {
    verifier: Arc<TokenVerifier>,
    results: mpsc::UnboundedSender<Verified>,
    threads: usize,
    jobs: Option<std_mpsc::Sender<Job>>,
    handles: Vec<JoinHandle<()>>,
}

impl VerifyPool {
    /// A pool of `threads` (at least one) that sends its answers to `results`.
    pub fn new(
        verifier: Arc<TokenVerifier>,
        threads: usize,
        results: mpsc::UnboundedSender<Verified>,
    ) -> VerifyPool {
        VerifyPool {
            verifier,
            results,
            threads: threads.max(1),
            jobs: None,
            handles: Vec::new(),
        }
    }

    /// The default size: one thread per CPU, at most four.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    }

    /// Queues a job (starting the threads at the first one).
    pub fn submit(&mut self, job: Job) {
        if self.jobs.is_none() {
            self.start();
        }
        if let Some(jobs) = &self.jobs {
            if let Err(std_mpsc::SendError(job)) = jobs.send(job) {
                // No thread could be started: answer inline rather than never.
                run(&self.verifier, job, self.results.clone());
            }
        }
    }

    fn start(&mut self) {
        let (jobs, queue) = std_mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..self.threads {
            let queue = queue.clone();
            let verifier = self.verifier.clone();
            let results = self.results.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("roomcast-verify-{i}"))
                .spawn(move || loop {
                    let job = match queue.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    if results.is_closed() {
                        return;
                    }
                    run(&verifier, job, results.clone());
                });
            if let Ok(handle) = spawned {
                self.handles.push(handle);
            }
        }
        self.jobs = Some(jobs);
    }

    /// Stops taking jobs and returns the threads to join (they end once
    /// the job they are on, if any, is done).
    pub fn close(&mut self) -> Vec<JoinHandle<()>> {
        self.jobs = None;
        std::mem::take(&mut self.handles)
    }
}

/// Verifies `job` and sends the answer to `results`: at once, or, for a
/// token whose `kid` the identity provider's key set lacks, from a tokio
/// task once the set was fetched again (the thread does not wait for it).
fn run(verifier: &Arc<TokenVerifier>, job: Job, results: mpsc::UnboundedSender<Verified>) {
    let Job {
        conn,
        id,
        token,
        now_unix_ms,
    } = job;
    verifier.verify_then(token, now_unix_ms, move |result| {
        let _ = results.send(Verified {
            conn,
            id,
            result: result.map_err(|e| e.to_string()),
        });
    });
}
