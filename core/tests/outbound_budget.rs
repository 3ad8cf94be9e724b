//! The node-wide outbound budget (`limits.outbound_bytes_max`): past it,
//! the connections that do not keep up are closed with 4008, the largest
//! backlog first (ties: the lowest id), until the node is back under 15/16
//! of the budget. A member that keeps up is never closed for it, and the
//! per-connection bound (`outbound_queue_bytes_max`) still holds.

use roomcast_core::{
    CloseCode, ConnectionId, CoreConfig, Identity, Input, Limits, Now, Output, Publish, RoomName,
    Standalone,
};
use serde_json::json;

/// Frames of about 1 KB; a member's own bound takes 20 of them, the node's
/// budget 50.
const PER_CONNECTION: usize = 20_000;
const BUDGET: usize = 50_000;

/// Bytes sent to a connection.
type Sent = (ConnectionId, usize);
/// A connection closed, with its code.
type Closed = (ConnectionId, CloseCode);

struct Node {
    core: Standalone,
    now_us: u64,
}

impl Node {
    fn new() -> Node {
        let limits = Limits {
            outbound_queue_bytes_max: PER_CONNECTION,
            outbound_bytes_max: BUDGET,
            ..Limits::default()
        };
        let config = CoreConfig {
            limits,
            ..CoreConfig::default()
        };
        Node {
            core: Standalone::new(config),
            now_us: 0,
        }
    }

    fn now(&self) -> Now {
        Now::from_start(1_760_000_000_000, self.now_us)
    }

    fn member(&mut self, n: u128) -> ConnectionId {
        let conn = ConnectionId::from_u128(n);
        let identity = Identity::Anonymous;
        self.core.handle(self.now(), Input::Open { conn, identity });
        let join = r#"{"action":"join","room":"feed"}"#;
        self.core
            .handle(self.now(), Input::Text { conn, text: join });
        conn
    }

    fn publish(&mut self) {
        self.now_us += 1_000;
        let publish = Publish {
            rooms: vec![RoomName::new("feed").unwrap()],
            kind: "queue_status".into(),
            data: json!({"pad": "x".repeat(950)}).as_object().unwrap().clone(),
        };
        self.core.broadcast(self.now(), publish);
    }

    /// The outputs since the last call: bytes sent per connection, and
    /// the connections closed with their code.
    fn outputs(&mut self) -> (Vec<Sent>, Vec<Closed>) {
        let (mut sent, mut closed) = (Vec::new(), Vec::new());
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Send { conn, frame } => sent.push((conn, frame.len())),
                Output::Close { conn, code } => closed.push((conn, code)),
                Output::Ping { .. } | Output::Check { .. } => {}
            }
        }
        self.core.check_invariants().unwrap();
        (sent, closed)
    }

    fn written(&mut self, conn: ConnectionId, bytes: usize) {
        self.core.handle(self.now(), Input::Written { conn, bytes });
    }
}

#[test]
fn past_the_budget_the_largest_backlogs_that_do_not_keep_up_are_closed_first() {
    let mut node = Node::new();
    // 1 keeps up (everything written at once); 2..=5 never read (their
    // sockets pushed back); 6 is slow but not pushed back yet.
    let members: Vec<ConnectionId> = (1..=6).map(|n| node.member(n)).collect();
    let (sent, _) = node.outputs();
    for (conn, bytes) in sent {
        node.written(conn, bytes);
    }
    for &conn in &members[1..5] {
        node.core.handle(node.now(), Input::Blocked { conn });
    }
    let mut closes = Vec::new();
    for round in 0..15 {
        node.publish();
        let (sent, closed) = node.outputs();
        for (conn, bytes) in sent {
            // 1 writes everything; 2 writes half of each frame (the
            // smallest backlog of those behind, and the lowest id).
            if conn == members[0] {
                node.written(conn, bytes);
            } else if conn == members[1] {
                node.written(conn, bytes / 2);
            }
        }
        closes.extend(closed.into_iter().map(|(conn, code)| (round, conn, code)));
    }
    // Each frame is ~1 KB: after ~10 rounds the five members that do not
    // write hold ~50 KB together. The largest backlogs go first, ties by
    // id: 3, then 4 (equal to 5; 2 holds half, though its id is lowest).
    let order: Vec<ConnectionId> = closes.iter().map(|(_, conn, _)| *conn).collect();
    assert!(!order.is_empty(), "the budget was reached and enforced");
    assert!(
        closes
            .iter()
            .all(|(_, _, code)| *code == CloseCode::SlowConsumer),
        "closed as slow consumers: {closes:?}"
    );
    assert_eq!(order[..2], [members[2], members[3]], "{closes:?}");
    assert!(
        !order.contains(&members[0]),
        "a member that keeps up is never closed"
    );
    assert!(
        !order.contains(&members[5]),
        "a member whose socket never pushed back is not closed for the budget: {closes:?}"
    );
}

#[test]
fn members_that_keep_up_are_never_closed_for_the_budget() {
    let mut node = Node::new();
    // Eight members that never report a write, but whose sockets never
    // pushed back either (bytes merely waiting for the shell's next
    // write): the node goes past its budget without closing anyone; their
    // own bound still closes them when it is reached.
    let members: Vec<ConnectionId> = (1..=8).map(|n| node.member(n)).collect();
    node.outputs();
    let mut closed = Vec::new();
    for _ in 0..8 {
        node.publish();
        closed.extend(node.outputs().1);
    }
    assert!(closed.is_empty(), "{closed:?}");
    for _ in 0..20 {
        node.publish();
        closed.extend(node.outputs().1);
    }
    let mut by_own_bound: Vec<ConnectionId> = closed.iter().map(|(conn, _)| *conn).collect();
    by_own_bound.sort();
    assert_eq!(by_own_bound, members, "each at its own bound, with 4008");
    assert!(closed
        .iter()
        .all(|(_, code)| *code == CloseCode::SlowConsumer));
}
