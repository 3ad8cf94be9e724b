//! The one harness of the core's integration tests that drive a [`Core`]
//! directly and answer its engine requests themselves: from an in-memory
//! engine (`settle`), or by hand (`requests`, `engine_events`, `feed`),
//! late, out of order, lost or failed. Used with `mod support;` by
//! `engine_seam/`, `engine_answers.rs` and `presence_engine.rs`; a test
//! file adds what only it needs as its own `impl Harness` block.

// Each test binary uses part of the harness.
#![allow(dead_code)]

use roomcast_core::engine::memory::{HistoryBounds, MemoryEngine};
use roomcast_core::engine::{EngineEvent, EngineRequest};
use roomcast_core::oracle::{Observed, Oracle, Sent};
use roomcast_core::{ConnectionId, Core, CoreConfig, Identity, Input, Now, Output, User};
use serde_json::{json, Value};

/// History bounds large enough that no test meets them by accident.
pub const BOUNDS: HistoryBounds = HistoryBounds {
    messages_max: 100,
    age_max_us: 3_600_000_000,
    bytes_max: usize::MAX,
    rooms_max: usize::MAX,
};

pub struct Harness {
    pub core: Core,
    pub engine: MemoryEngine,
    /// The monotonic clock of every input and engine request.
    pub now_us: u64,
    /// Checks every frame [`frames`](Self::frames) reads, when set
    /// ([`checked`](Self::checked)); requests made with
    /// [`request`](Self::request) are told to it.
    pub oracle: Option<Oracle>,
    next_id: u64,
    /// Presence lists kept back instead of answered
    /// ([`settle_with`](Self::settle_with)).
    pub kept: Vec<EngineRequest>,
}

impl Harness {
    /// A core with `config` and an in-memory engine (epoch prefix "e",
    /// presence entries living 60 s), at time 0.
    pub fn with_config(config: CoreConfig) -> Harness {
        Harness {
            core: Core::new(config),
            engine: MemoryEngine::new(BOUNDS, "e".into(), 60_000_000),
            now_us: 0,
            oracle: None,
            next_id: 0,
            kept: Vec::new(),
        }
    }

    /// The same, with every frame checked by the client-side oracle.
    pub fn checked(config: CoreConfig) -> Harness {
        Harness {
            oracle: Some(Oracle::new()),
            ..Harness::with_config(config)
        }
    }

    pub fn now(&self) -> Now {
        Now::from_start(1_760_000_000_000, self.now_us)
    }

    /// Opens connection `n` (user `u<n>`, may publish); its `connected`
    /// frame is read.
    pub fn open(&mut self, n: u128) -> ConnectionId {
        let conn = ConnectionId::from_u128(n);
        let identity = Identity::User(User {
            id: format!("u{n}"),
            scopes: vec!["publish".into()],
            expires_unix_ms: None,
            grants: roomcast_core::Grants::none(),
        });
        if let Some(oracle) = self.oracle.as_mut() {
            oracle.opened(n as u64);
        }
        self.core.handle(self.now(), Input::Open { conn, identity });
        self.frames(); // `connected`
        conn
    }

    /// A client message, not told to the oracle.
    pub fn text(&mut self, conn: ConnectionId, action: Value) {
        let text = action.to_string();
        self.core
            .handle(self.now(), Input::Text { conn, text: &text });
    }

    /// A client message with a fresh numeric id, told to the oracle as
    /// `sent`; returns the id.
    pub fn request(&mut self, conn: ConnectionId, action: Value, sent: Sent) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let mut text = action;
        text["id"] = json!(id);
        if let Some(oracle) = self.oracle.as_mut() {
            let key = conn.0.as_u128() as u64;
            oracle.sent(key, id.to_string(), sent).unwrap();
        }
        self.text(conn, text);
        id
    }

    /// The core's engine requests so far.
    pub fn requests(&mut self) -> Vec<EngineRequest> {
        std::iter::from_fn(|| self.core.poll_engine()).collect()
    }

    /// Hands requests to the in-memory engine and returns its events
    /// (without feeding them to the core).
    pub fn engine_events(&mut self, requests: Vec<EngineRequest>) -> Vec<EngineEvent> {
        for request in requests {
            self.engine.handle(0, self.now_us, request);
        }
        std::iter::from_fn(|| self.engine.poll_event())
            .map(|(_, event)| event)
            .collect()
    }

    /// One engine event to the core.
    pub fn feed(&mut self, event: EngineEvent) {
        self.core.handle(self.now(), Input::Engine(event))
    }

    /// Runs requests through the engine and its events back, until quiet.
    pub fn settle(&mut self) {
        self.settle_with(false)
    }

    /// [`settle`](Self::settle), keeping presence lists back (in `kept`,
    /// unanswered) when `keep_lists`.
    pub fn settle_with(&mut self, keep_lists: bool) {
        loop {
            let requests: Vec<EngineRequest> = self
                .requests()
                .into_iter()
                .filter(|request| {
                    let keep = keep_lists && matches!(request, EngineRequest::PresenceList { .. });
                    if keep {
                        self.kept.push(request.clone());
                    }
                    !keep
                })
                .collect();
            let events = self.engine_events(requests);
            if events.is_empty() {
                return;
            }
            for event in events {
                self.feed(event);
            }
        }
    }

    /// Every frame sent since the last call, in order, each reported
    /// written at once (and checked by the oracle, when set); any other
    /// output is a test failure. The core's invariants are checked.
    pub fn frames(&mut self) -> Vec<(ConnectionId, Value)> {
        self.drain(true)
    }

    /// [`frames`](Self::frames) for tests that close connections: other
    /// outputs (closes, pings) are skipped.
    pub fn sends(&mut self) -> Vec<(ConnectionId, Value)> {
        self.drain(false)
    }

    fn drain(&mut self, only_sends: bool) -> Vec<(ConnectionId, Value)> {
        let mut frames = Vec::new();
        while let Some(output) = self.core.poll_output() {
            let Output::Send { conn, frame } = output else {
                assert!(!only_sends, "unexpected output {output:?}");
                continue;
            };
            if let Some(oracle) = self.oracle.as_mut() {
                let key = conn.0.as_u128() as u64;
                let observed = Observed::parse(frame.as_str()).unwrap();
                if let Err(violation) = oracle.received(key, &observed) {
                    panic!("{violation}");
                }
            }
            self.core.handle(
                self.now(),
                Input::Written {
                    conn,
                    bytes: frame.len(),
                },
            );
            frames.push((conn, serde_json::from_str(frame.as_str()).unwrap()));
        }
        self.core.check_invariants().unwrap();
        frames
    }
}
