//! The publisher: broadcasts through the HTTP API of any node while the
//! workload runs, then runs the end-of-run checks: once quiet, every open
//! member has caught up with the last broadcast of each of its rooms and
//! the nodes together count exactly the open clients; once every client
//! closed, every node holds no connection and no room.
//!
//! In a cluster run the engine may fail under a broadcast (broker down,
//! node cut off from it, node restarted): with broker faults on, a 503
//! `ENGINE_UNAVAILABLE` or a cut-off call is expected, and its outcome is
//! unknown (an append whose answer was lost may have happened). So once
//! the faults heal, the publisher lets the nodes reconnect and then
//! broadcasts once more to every room whose last broadcast has an unknown
//! outcome, retrying until it is accepted: the quiet-state check then
//! compares every member against receipts it holds. When the seed loses
//! live messages, the final round goes to every room: the stream is at
//! most once, and a lost last message is found only by the next message
//! (or a periodic stream check, which half the seeds never run).
//!
//! Only those rooms: a room whose last broadcast is known gets nothing
//! more, so its members must have caught up through the live stream, the
//! reads its jumps start and the reads after each `StreamReset` alone.
//! (A final broadcast to every room would mask a node that misses a
//! stream reset: the next live message shows the jump just as well.)

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::world::{Phase, Shared};
use super::{CONNECT_SPREAD_MS, PORT};
use crate::rng::SimRng;

pub(crate) struct PublisherSpec {
    pub(crate) rng: SimRng,
    pub(crate) token: String,
    pub(crate) rooms: u64,
    pub(crate) work_ms: u64,
    pub(crate) quiet_ms: u64,
    /// The server nodes' host names.
    pub(crate) nodes: Rc<[String]>,
    /// Cluster runs: which node each call goes to, and the end-of-run settle.
    pub(crate) cluster: Option<ClusterPublishing>,
}

/// How the publisher works against several nodes.
pub(crate) struct ClusterPublishing {
    /// Picks the node of each broadcast.
    pub(crate) route: SimRng,
    /// Broadcasts may fail (503, cut off) while the engine fails.
    pub(crate) tolerate_failures: bool,
    /// The final round goes to every room (the seed loses live messages),
    /// not only to those whose last broadcast has an unknown outcome.
    pub(crate) final_round_all: bool,
    /// After the heal, how long the nodes get to reconnect to the broker.
    pub(crate) settle_ms: u64,
    /// How long the final round may take, at most.
    pub(crate) final_round_ms: u64,
}

/// A keep-alive HTTP/1.1 connection to one node's API, reopened when the
/// server closes it (it drops idle keep-alive connections).
struct Api {
    host: String,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Api {
    fn new(host: &str) -> Api {
        Api {
            host: host.to_owned(),
            sender: None,
        }
    }

    async fn reconnect(&mut self) -> Option<()> {
        self.sender = None;
        let stream = turmoil::net::TcpStream::connect((self.host.as_str(), PORT))
            .await
            .ok()?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::task::spawn_local(connection);
        self.sender = Some(sender);
        Some(())
    }

    async fn call(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        // Only requests that never reached the server are retried, so a
        // broadcast is never published twice.
        for _ in 0..3 {
            let usable = match self.sender.as_mut() {
                Some(sender) => sender.ready().await.is_ok(),
                None => false,
            };
            if usable {
                return self.call_once(method, path, token, body).await;
            }
            self.reconnect().await;
        }
        None
    }

    async fn call_once(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let sender = self.sender.as_mut()?;
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.host.as_str())
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.ok()?.to_bytes();
        Some((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

/// A cluster run's longest wait for one API call: a node whose power was
/// cut never answers (nor closes), and nothing slower is legitimate (an
/// engine call times out within 1.5 s).
const API_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One API connection per node, opened on first use.
struct Apis {
    nodes: Vec<Api>,
    /// Cluster runs: the longest wait for a call (then it counts as cut off).
    timeout: Option<Duration>,
}

impl Apis {
    fn new(nodes: &[String], timeout: Option<Duration>) -> Apis {
        Apis {
            nodes: nodes.iter().map(|host| Api::new(host)).collect(),
            timeout,
        }
    }

    async fn call(
        &mut self,
        node: usize,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let api = &mut self.nodes[node];
        let Some(limit) = self.timeout else {
            return api.call(method, path, token, body).await;
        };
        match tokio::time::timeout(limit, api.call(method, path, token, body)).await {
            Ok(answer) => answer,
            Err(_) => {
                api.sender = None; // a dead connection: open another next time
                None
            }
        }
    }

    /// `GET /ws/status` of a node. Reading is idempotent, so a call that
    /// failed (a kept-alive connection to a node restarted since is reset
    /// by the new process) is tried again on a new connection.
    async fn status(&mut self, node: usize, token: &str) -> Option<Value> {
        for _ in 0..3 {
            match self.call(node, "GET", "/ws/status", token, None).await {
                Some((200, status)) => return Some(status),
                _ => self.nodes[node].sender = None,
            }
        }
        None
    }
}

/// Tells the oracle what a broadcast's receipt says was published (and
/// with which `data`: a seq given to another message is a silent reuse).
fn record_receipt(world: &Shared, body: &Value, receipt: &Value) {
    let mut w = world.borrow_mut();
    let (seqs, epochs) = (&receipt["seqs"], &receipt["epochs"]);
    let rooms = body["rooms"].as_array().into_iter().flatten();
    for room in rooms.filter_map(Value::as_str) {
        if let (Some(seq), Some(epoch)) = (seqs[room].as_u64(), epochs[room].as_str()) {
            let result = w.oracle.published_message(room, epoch, seq, &body["data"]);
            w.check(result);
        }
    }
}

pub(crate) async fn publisher_task(world: Shared, mut spec: PublisherSpec) {
    tokio::time::sleep(Duration::from_millis(CONNECT_SPREAD_MS / 2)).await;
    let timeout = spec.cluster.as_ref().map(|_| API_CALL_TIMEOUT);
    let mut apis = Apis::new(&spec.nodes, timeout);
    if apis.nodes[0].reconnect().await.is_none() {
        world
            .borrow_mut()
            .fail("publisher connects", "could not reach the API".into());
        return;
    }
    // Rooms whose last broadcast has an unknown outcome (cluster runs).
    let mut uncertain = std::collections::BTreeSet::new();
    // Workload: broadcasts at a seed-chosen rate until the quiet phase.
    let gap_ms = spec.rng.range(5, 100);
    while world.borrow().phase == Phase::Working {
        tokio::time::sleep(Duration::from_millis(spec.rng.range(1, gap_ms * 2))).await;
        let count = spec.rng.range(1, 3);
        let rooms: Vec<String> = (0..count)
            .map(|_| format!("room-{}", spec.rng.below(spec.rooms)))
            .collect();
        let body = if spec.rng.chance(500_000) {
            json!({"rooms": rooms, "type": "download_progress", "data": {"key": "attack-on-titan", "download_id": spec.rng.below(3), "percent": spec.rng.below(100)}})
        } else {
            json!({"rooms": rooms, "type": "queue_status", "data": {"pending": spec.rng.below(1000)}})
        };
        let node = match &mut spec.cluster {
            Some(cluster) => cluster.route.below(spec.nodes.len() as u64) as usize,
            None => 0,
        };
        let answer = apis
            .call(
                node,
                "POST",
                "/api/broadcast",
                &spec.token,
                Some(body.clone()),
            )
            .await;
        match answer {
            Some((200, receipt)) => {
                record_receipt(&world, &body, &receipt);
                for room in &rooms {
                    uncertain.remove(room);
                }
            }
            Some((503, _)) | None if spec.cluster.as_ref().is_some_and(|c| c.tolerate_failures) => {
                // The engine failed under it: published or not, unknown.
                uncertain.extend(rooms);
                let mut w = world.borrow_mut();
                w.publishes_failed += 1;
                let at = w.now_ms * 1000;
                w.recent.push(at, 0, "publish-failed", node as u64);
            }
            other => {
                world.borrow_mut().fail(
                    "publish API answers",
                    format!("broadcast through node {node} got {other:?}"),
                );
                return;
            }
        }
        if let Some(cluster) = &mut spec.cluster {
            // Now and then a direct message to a user: its connections on
            // every node get it (through the broker, at most once).
            if cluster.route.chance(100_000) {
                let user = cluster.route.below(10);
                let node = cluster.route.below(spec.nodes.len() as u64) as usize;
                let body = json!({"user_id": format!("user-{user}"), "type": "system_info", "data": {"message": "direct"}});
                let answer = apis
                    .call(node, "POST", "/api/send", &spec.token, Some(body))
                    .await;
                let cut_off = answer.is_none() && cluster.tolerate_failures;
                if !cut_off && !matches!(answer, Some((200, _))) {
                    world.borrow_mut().fail(
                        "publish API answers",
                        format!("send through node {node} got {answer:?}"),
                    );
                    return;
                }
            }
        }
    }
    if let Some(cluster) = &spec.cluster {
        // Faults are healed: let the nodes find the broker again, then
        // publish once more to every room so the last broadcast of each is
        // known (see the module docs).
        tokio::time::sleep(Duration::from_millis(cluster.settle_ms)).await;
        let deadline = world.borrow().now_ms + cluster.final_round_ms;
        let finals: Vec<u64> = (0..spec.rooms)
            .filter(|room| cluster.final_round_all || uncertain.contains(&format!("room-{room}")))
            .collect();
        world.borrow_mut().final_broadcasts = finals.len() as u64;
        for room in finals {
            let rooms = vec![format!("room-{room}")];
            let body = json!({"rooms": rooms, "type": "queue_status", "data": {"pending": 0, "final": true}});
            let mut node = room as usize % spec.nodes.len();
            loop {
                let answer = apis
                    .call(
                        node,
                        "POST",
                        "/api/broadcast",
                        &spec.token,
                        Some(body.clone()),
                    )
                    .await;
                if let Some((200, receipt)) = answer {
                    record_receipt(&world, &body, &receipt);
                    break;
                }
                if world.borrow().now_ms > deadline {
                    world.borrow_mut().fail(
                        "the cluster recovers once faults heal",
                        format!("the final broadcast to room-{room} still fails {} ms after the heal (last answer through node {node}: {answer:?})", cluster.settle_ms + cluster.final_round_ms),
                    );
                    return;
                }
                node = (node + 1) % spec.nodes.len();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // Then the quiet time proper: dead connections time out, replies
        // and refills land.
        let settled = spec.quiet_ms - cluster.settle_ms - cluster.final_round_ms;
        tokio::time::sleep(Duration::from_millis(settled)).await;
    } else {
        // Quiet: wait for dead connections to time out and replies to land, then check.
        tokio::time::sleep(Duration::from_millis(spec.quiet_ms)).await;
    }
    let mut counted = 0;
    for node in 0..spec.nodes.len() {
        let Some(status) = apis.status(node, &spec.token).await else {
            world.borrow_mut().fail(
                "status answers",
                format!("GET /ws/status of node {node} failed"),
            );
            return;
        };
        counted += status["active_connections"]
            .as_u64()
            .unwrap_or(u64::MAX / 64) as usize;
    }
    {
        let mut w = world.borrow_mut();
        let result = w.oracle.check_quiescent(counted);
        w.check(result);
        w.quiet_checked = true;
    }
    // Closing: every client leaves; every node must end up empty.
    let deadline = spec.work_ms + spec.quiet_ms + 60_000;
    'closing: loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let running = world.borrow().clients_running;
        let mut empty = running == 0;
        let mut seen = Vec::new();
        for node in 0..spec.nodes.len() {
            let Some(status) = apis.status(node, &spec.token).await else {
                continue 'closing;
            };
            let (connections, rooms) = (
                status["active_connections"].as_u64(),
                status["rooms"].as_u64(),
            );
            empty &= connections == Some(0) && rooms == Some(0);
            seen.push((connections, rooms));
        }
        if empty {
            break;
        }
        if world.borrow().now_ms > deadline {
            let detail = if seen.len() == 1 {
                let (connections, rooms) = seen[0];
                format!("after every client left the server still has {connections:?} connections and {rooms:?} rooms ({running} clients running)")
            } else {
                format!("after every client left the nodes still have (connections, rooms) {seen:?} ({running} clients running)")
            };
            world.borrow_mut().fail("no leaked connections", detail);
            return;
        }
    }
    world.borrow_mut().finished = true;
}
