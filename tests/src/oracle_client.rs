//! Real clients checked by the shared delivery oracle
//! (`roomcast_core::oracle`, the one the simulator uses): every request a
//! [`CheckedClient`] sends and every message it receives goes through one
//! [`Observer`], which panics at the first broken promise; after the
//! workload, [`Observer::settle`] publishes a last broadcast to each room,
//! lets every member catch up and runs the oracle's quiet-state check
//! against the nodes' connection counts.
//!
//! A client whose connection ends is done: one that reconnects is a new
//! [`CheckedClient`] (a new oracle key), and its join with `since` is a
//! recovery ([`CheckedClient::recover`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use roomcast_core::oracle::{ClientKey, Observed, Oracle, Sent, Violation};
use serde_json::{json, Value};

use crate::{http, Auth, Client, Ending, TIMEOUT};

/// The oracle shared by every client of a test, and the publisher's receipts.
#[derive(Clone, Default)]
pub struct Observer {
    oracle: Arc<Mutex<Oracle>>,
    next_key: Arc<AtomicU64>,
}

impl Observer {
    /// An oracle with no clients yet.
    pub fn new() -> Observer {
        Observer::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Oracle) -> T) -> T {
        f(&mut self.oracle.lock().expect("the oracle lock"))
    }

    /// Connects a client (with `token`, if any) to the node at `addr`.
    pub async fn connect(&self, addr: SocketAddr, token: Option<String>) -> CheckedClient {
        let auth = token.map_or(Auth::None, Auth::Query);
        let client = Client::connect(addr, auth).await;
        let key = self.next_key.fetch_add(1, Ordering::Relaxed) + 1;
        self.with(|oracle| oracle.opened(key));
        CheckedClient {
            client,
            key,
            observer: self.clone(),
            next_id: 0,
        }
    }

    /// Records a `POST /api/broadcast` receipt of `room` (its `epoch` and
    /// `seq`) as published.
    pub fn published(&self, room: &str, receipt: &Value) {
        let (epoch, seq) = receipt_position(receipt);
        self.with(|oracle| oracle.published(room, &epoch, seq));
    }

    /// Like [`Observer::published`] for the broadcast [`Observer::publish`]
    /// sends (`data` `{"n": n}`): also checks that no member got another
    /// message under that number (a seq reused).
    pub fn published_n(&self, room: &str, receipt: &Value, n: u64) {
        let (epoch, seq) = receipt_position(receipt);
        let data = json!({ "n": n });
        let result = self.with(|oracle| oracle.published_message(room, &epoch, seq, &data));
        if let Err(violation) = result {
            panic!("{violation}");
        }
    }

    /// Publishes a `queue_status` carrying `n` to `room` on `node`; the
    /// receipt (which must be a 200) is recorded.
    pub async fn publish(&self, node: SocketAddr, room: &str, n: u64) -> Value {
        let response = broadcast(node, room, n).await;
        assert_eq!(response.status, 200, "{}", response.text());
        let receipt = response.json();
        self.published_n(room, &receipt, n);
        receipt
    }

    /// Like [`Observer::publish`], retrying while the engine answers 503
    /// `ENGINE_UNAVAILABLE` (a refused publish may still have been
    /// applied: [`Observer::settle`]'s last broadcast covers that).
    pub async fn publish_retrying(&self, node: SocketAddr, room: &str, n: u64) -> Value {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let response = broadcast(node, room, n).await;
            if response.status == 200 {
                let receipt = response.json();
                self.published_n(room, &receipt, n);
                return receipt;
            }
            response.assert_error(503, "ENGINE_UNAVAILABLE");
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}",
                response.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The end of a workload: publishes one last broadcast to each of
    /// `rooms` through the node at `publish_on` (its receipt names each
    /// room's final position), lets every client in `clients` (every open
    /// one: the check covers them all) read until it has caught up, and
    /// runs the oracle's quiet-state check, with the connections counted
    /// by every node in `nodes` (all the nodes still running). Panics with
    /// the oracle's violation when a member is still behind.
    pub async fn settle(
        &self,
        publish_on: SocketAddr,
        rooms: &[&str],
        clients: &mut [&mut CheckedClient],
        nodes: &[SocketAddr],
    ) {
        for room in rooms {
            let receipt = self.publish_retrying(publish_on, room, u64::MAX).await;
            let (epoch, seq) = receipt_position(&receipt);
            self.with(|oracle| oracle.settled(room, &epoch, seq));
        }
        for client in clients.iter_mut() {
            client.catch_up().await;
        }
        // Closed clients leave their node's count shortly after.
        let open = self.with(|oracle| oracle.open_clients()) as u64;
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let counted = loop {
            let mut counted = 0;
            for node in nodes {
                let status = http(*node, "GET", "/ws/status", &[], "").await.json();
                counted += status["active_connections"].as_u64().expect("a count");
            }
            if counted == open || tokio::time::Instant::now() > deadline {
                break counted;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if let Err(violation) = self.with(|oracle| oracle.check_quiescent(counted as usize)) {
            panic!("the oracle, once quiet: {violation}");
        }
    }
}

/// The oracle's `(epoch, seq)` of a broadcast receipt.
fn receipt_position(receipt: &Value) -> (String, u64) {
    let epoch = receipt["epoch"].as_str().expect("a receipt epoch");
    let seq = receipt["seq"].as_u64().expect("a receipt seq");
    (epoch.to_owned(), seq)
}

async fn broadcast(node: SocketAddr, room: &str, n: u64) -> crate::HttpResponse {
    let body = json!({"room": room, "type": "queue_status", "data": {"n": n}});
    crate::api_post(
        node,
        "/api/broadcast",
        Some(&crate::tokens::publisher()),
        body.to_string(),
    )
    .await
}

/// A WebSocket client whose every request and message the oracle sees.
pub struct CheckedClient {
    /// The connection (send through the methods below, or the oracle
    /// will not know the request).
    pub client: Client,
    /// Its key in the oracle.
    pub key: ClientKey,
    observer: Observer,
    next_id: u64,
}

impl CheckedClient {
    fn check(&self, result: Result<(), Violation>, what: &Value) {
        if let Err(violation) = result {
            panic!("the oracle: {violation} (at {what})");
        }
    }

    /// Feeds one received message to the oracle.
    fn observe(&self, message: &Value) {
        let mut observed: Observed = serde_json::from_value(message.clone())
            .unwrap_or_else(|e| panic!("a server message the oracle cannot read ({e}): {message}"));
        // A broadcast's data: one message per seq (`Observed::parse` does the same).
        observed.payload = observed.seq.map(|_| message["data"].to_string());
        let result = self
            .observer
            .with(|oracle| oracle.received(self.key, &observed));
        self.check(result, message);
    }

    /// The next message (within [`TIMEOUT`]), seen by the oracle.
    pub async fn recv(&mut self) -> Value {
        let message = self.client.recv_json().await;
        self.observe(&message);
        message
    }

    /// Sends `request` with a fresh `id`, recorded as `what`, and reads
    /// (through the oracle) up to its reply, which it returns.
    pub async fn request(&mut self, mut request: Value, what: Sent) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        request["id"] = json!(id);
        let result = self
            .observer
            .with(|oracle| oracle.sent(self.key, id.to_string(), what));
        self.check(result, &request);
        self.client.send_json(request).await;
        loop {
            let message = self.recv().await;
            if message["id"] == id {
                return message;
            }
        }
    }

    /// Joins `room`; returns the reply.
    pub async fn join(&mut self, room: &str) -> Value {
        let request = json!({"action": "join", "data": {"room": room}});
        let reply = self.request(request, Sent::Join(room.to_owned())).await;
        assert_eq!(reply["type"], "system_info", "join {room}: {reply}");
        reply
    }

    /// Joins `room` asking to recover after `seq` of `epoch`; returns the reply.
    pub async fn recover(&mut self, room: &str, epoch: &str, seq: u64) -> Value {
        let since = json!({"epoch": epoch, "seq": seq});
        let request = json!({"action": "join", "data": {"room": room, "since": since}});
        let what = Sent::Recover(room.to_owned(), epoch.to_owned(), seq);
        let reply = self.request(request, what).await;
        assert_eq!(reply["type"], "system_info", "join {room}: {reply}");
        reply
    }

    /// `presence` of `room`; returns the reply.
    pub async fn presence(&mut self, room: &str) -> Value {
        let request = json!({"action": "presence", "data": {"room": room}});
        self.request(request, Sent::Other).await
    }

    /// Reads until `count` broadcasts of `room` arrived; returns them
    /// with any `ROOM_GAP` warning of the room among them.
    pub async fn broadcasts(&mut self, room: &str, count: usize) -> Vec<Value> {
        let mut got: Vec<Value> = Vec::new();
        while got.iter().filter(|m| m["seq"].is_u64()).count() < count {
            let message = self.recv().await;
            let gap = message["data"]["code"] == "ROOM_GAP" && message["data"]["room"] == room;
            if message["room"] == room || gap {
                got.push(message);
            }
        }
        got
    }

    /// Reads until the oracle says the client has caught up with every
    /// room it is in, then until a ping's pong (so every reply is in).
    /// Gives up after [`TIMEOUT`] without a message, leaving the oracle's
    /// quiet check to say what is missing.
    pub async fn catch_up(&mut self) {
        let key = self.key;
        while !self.observer.with(|oracle| oracle.caught_up(key)) {
            match self.client.recv_json_within(TIMEOUT).await {
                Some(message) => self.observe(&message),
                None => return,
            }
        }
        let pong = self.request(json!({"action": "ping"}), Sent::Other).await;
        assert_eq!(pong["type"], "pong", "{pong}");
    }

    /// Hangs up (1000) and tells the oracle.
    pub async fn close(mut self) {
        let _ = self.client.close_normally().await;
        let result = self.observer.with(|oracle| oracle.ended(self.key, None));
        self.check(result, &Value::Null);
    }

    /// Reads until the connection ends (its node went away), feeding
    /// what arrives before that to the oracle, and tells the oracle how
    /// it ended (a close code, or a transport loss).
    pub async fn read_until_lost(mut self) {
        let (messages, ending) = self.client.read_to_end().await;
        for message in &messages {
            self.observe(message);
        }
        let code = match ending {
            Ending::Close(code, _) => Some(code),
            Ending::CloseWithoutCode => Some(1005),
            Ending::NoCloseFrame(_) => None,
        };
        let result = self.observer.with(|oracle| oracle.ended(self.key, code));
        self.check(result, &json!({"ended": code}));
    }
}
