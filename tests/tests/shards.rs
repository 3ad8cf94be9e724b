//! One node of two shards (`roomcast serve --shards 2`, the real binary):
//! everything a client or an operator sees is node-wide, exactly as with
//! one hub (issue 18).
//!
//! Which shard holds a connection: each test opens its connections one at
//! a time and reads `roomcast_shard_connections{shard="<i>"}` from
//! `/metrics` before and after (the gauge that went up holds it), over one
//! kept-alive HTTP connection so the probe's own connection sits on one
//! shard for the whole test. This checks the per-shard gauge too, and does
//! not depend on the placement rule (fewest connections, ties round-robin,
//! would make consecutive connections alternate); the placement test
//! checks the spread itself.

use std::net::SocketAddr;
use std::time::Duration;

use roomcast_tests::binary::Process;
use roomcast_tests::tokens::{publisher, token};
use roomcast_tests::{metric_value, Auth, Client, Ending, HttpConn, SECRET, TIMEOUT};
use serde_json::{json, Value};

const SHARDS: usize = 2;

/// `roomcast serve --shards 2` with the test secret and `env`.
async fn start(env: &[(&str, &str)]) -> Process {
    let mut vars = vec![
        ("ROOMCAST_JWT_SECRET", SECRET.to_owned()),
        ("ROOMCAST_SHUTDOWN_DRAIN_MS", "5000".to_owned()),
    ];
    vars.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
    Process::start(&["--shards", &SHARDS.to_string()], &vars).await
}

/// Reads the per-shard connection gauges through one kept-alive connection.
struct Probe {
    http: HttpConn,
}

impl Probe {
    async fn new(addr: SocketAddr) -> Probe {
        Probe {
            http: HttpConn::connect(addr).await,
        }
    }

    async fn metrics(&mut self) -> String {
        let response = self.http.request("GET", "/metrics", &[], "").await;
        assert_eq!(response.status, 200, "/metrics: {response:?}");
        response.text()
    }

    /// `roomcast_shard_connections{shard="<i>"}` for every shard.
    async fn shards(&mut self) -> [u64; SHARDS] {
        let text = self.metrics().await;
        let mut out = [0; SHARDS];
        for (i, value) in out.iter_mut().enumerate() {
            let sample = format!("roomcast_shard_connections{{shard=\"{i}\"}}");
            *value = metric_value(&text, &sample)
                .unwrap_or_else(|| panic!("/metrics has no {sample}:\n{text}"))
                as u64;
        }
        out
    }

    /// Waits until the gauges sum to `total`; returns them.
    async fn settled(&mut self, total: u64) -> [u64; SHARDS] {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let now = self.shards().await;
            if now.iter().sum::<u64>() == total {
                return now;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "shard gauges {now:?} never summed to {total}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens one WebSocket and tells which shard took it.
    async fn connect(&mut self, addr: SocketAddr, auth: Auth) -> (Client, usize) {
        let before = self.shards().await;
        let client = Client::connect(addr, auth).await;
        let after = self.settled(before.iter().sum::<u64>() + 1).await;
        let shard = (0..SHARDS)
            .find(|&i| after[i] == before[i] + 1)
            .unwrap_or_else(|| panic!("gauges went from {before:?} to {after:?}"));
        (client, shard)
    }

    /// Opens WebSockets (with `auth`) until one lands on `shard`; the ones
    /// that landed elsewhere come back too, to be kept open or closed.
    async fn connect_on(
        &mut self,
        addr: SocketAddr,
        auth: Auth,
        shard: usize,
    ) -> (Client, Vec<Client>) {
        let mut elsewhere = Vec::new();
        for _ in 0..8 {
            let (client, on) = self.connect(addr, auth.clone()).await;
            if on == shard {
                return (client, elsewhere);
            }
            elsewhere.push(client);
        }
        panic!("eight connections in a row and none on shard {shard}");
    }
}

/// SIGTERM; the node exits 0.
async fn stop(server: Process) {
    let (status, _) = server.stop().await;
    assert!(status.success(), "exit status {status}");
}

fn seqs(messages: &[Value], kind: &str) -> Vec<u64> {
    messages
        .iter()
        .filter(|m| m["type"] == kind)
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

async fn broadcast(http: &mut HttpConn, room: &str, n: u64) -> Value {
    let body = json!({"room": room, "type": "queue_status", "data": {"n": n}});
    let response = http
        .post_json("/api/broadcast", Some(&publisher()), &body)
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_both_shards_get_every_broadcast_once_in_order() {
    let server = start(&[]).await;
    let mut probe = Probe::new(server.addr).await;
    let mut members = Vec::new();
    let mut on = [0; SHARDS];
    for _ in 0..6 {
        let (mut client, shard) = probe.connect(server.addr, Auth::None).await;
        client.join("room").await;
        on[shard] += 1;
        members.push(client);
    }
    assert!(on.iter().all(|&n| n > 0), "members on every shard: {on:?}");
    // A publishing member, too: its own broadcasts reach it like the others'.
    let (mut author, _) = probe
        .connect(server.addr, Auth::Query(token("author", "publish")))
        .await;
    author.join("room").await;
    let everyone = members.len() as u64 + 1;

    let mut api = HttpConn::connect(server.addr).await;
    for n in 1..=20 {
        let receipt = broadcast(&mut api, "room", n).await;
        assert_eq!(receipt["seq"], n, "{receipt}");
        assert_eq!(
            receipt["delivered"], everyone,
            "every member of the node: {receipt}"
        );
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        got.push(author.recv_json().await);
    }
    assert_eq!(seqs(&got, "queue_status"), (1..=20).collect::<Vec<u64>>());
    // Client publishes (odd) between HTTP ones (even): one order for the room.
    for n in 21..=30 {
        if n % 2 == 0 {
            broadcast(&mut api, "room", n).await;
            assert_eq!(author.recv_json().await["seq"], n);
            continue;
        }
        author
            .send_json(json!({"action": "publish", "id": format!("p{n}"), "data": {
                "room": "room", "type": "queue_status", "data": {"n": n}}}))
            .await;
        // The author is a member: its copy of the broadcast comes first.
        let copy = author.recv_json().await;
        assert_eq!(copy["seq"], n, "{copy}");
        let reply = author.recv_json().await;
        assert_eq!(reply["type"], "system_info", "{reply}");
        assert_eq!(reply["id"], format!("p{n}"));
        assert_eq!(reply["data"]["seq"], n, "{reply}");
        assert_eq!(reply["data"]["delivered"], everyone, "{reply}");
    }
    author.assert_nothing_pending().await;
    let expected: Vec<u64> = (1..=30).collect();
    for member in &mut members {
        let mut got = Vec::new();
        while got.len() < expected.len() {
            got.push(member.recv_json().await);
        }
        assert_eq!(seqs(&got, "queue_status"), expected, "{got:?}");
        let n: Vec<u64> = got
            .iter()
            .map(|m| m["data"]["n"].as_u64().unwrap())
            .collect();
        assert_eq!(n, expected, "each seq carries its own publish");
        member.assert_nothing_pending().await;
    }
    stop(server).await;
}

/// The ids a presence diff lists under `joined` or `left` (one object, or
/// a list when the diff carries several changes).
fn listed(diff: &Value, field: &str) -> Vec<String> {
    let ids = |v: &Value| v["connection_id"].as_str().map(str::to_owned);
    match &diff["data"][field] {
        Value::Array(items) => items.iter().filter_map(ids).collect(),
        Value::Object(_) => ids(&diff["data"][field]).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Reads presence diffs of `room` until one lists `id` under `field`;
/// returns it (other messages are skipped).
async fn diff_listing(client: &mut Client, room: &str, field: &str, id: &str) -> Value {
    loop {
        let message = client.recv_json().await;
        if message["type"] == "presence_diff"
            && message["data"]["room"] == room
            && listed(&message, field).iter().any(|i| i == id)
        {
            return message;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_presence_diffs_count_the_whole_node() {
    let server = start(&[("ROOMCAST_ROOMS__PRESENCE_DIFF_PREFIXES", "[team:]")]).await;
    let mut probe = Probe::new(server.addr).await;
    let (mut ann, ann_shard) = probe
        .connect(server.addr, Auth::Query(token("ann", "")))
        .await;
    let other = 1 - ann_shard;
    let (mut bob, spare) = probe
        .connect_on(server.addr, Auth::Query(token("bob", "")), other)
        .await;
    ann.join("team:x").await;
    bob.join("team:x").await;
    let joined = diff_listing(&mut ann, "team:x", "joined", &bob.connection_id).await;
    assert_eq!(joined["data"]["connections"], 2, "{joined}");

    // A third member on ann's shard: bob (the other shard) hears of it.
    let (mut cat, more) = probe
        .connect_on(server.addr, Auth::Query(token("cat", "")), ann_shard)
        .await;
    cat.join("team:x").await;
    let seen_by_bob = diff_listing(&mut bob, "team:x", "joined", &cat.connection_id).await;
    assert_eq!(seen_by_bob["data"]["connections"], 3, "{seen_by_bob}");
    diff_listing(&mut ann, "team:x", "joined", &cat.connection_id).await;

    // The list and the counts, asked on either shard.
    for client in [&mut ann, &mut bob] {
        let presence = client
            .request(json!({"action": "presence", "data": {"room": "team:x"}}))
            .await;
        assert_eq!(presence["type"], "presence", "{presence}");
        assert_eq!(presence["data"]["connections"], 3, "{presence}");
        assert_eq!(presence["data"]["user_count"], 3, "{presence}");
        assert_eq!(presence["data"]["users"], json!(["ann", "bob", "cat"]));
    }
    // A room without diffs lists the node's members too.
    ann.join("plain").await;
    bob.join("plain").await;
    let presence = bob
        .request(json!({"action": "presence", "data": {"room": "plain"}}))
        .await;
    assert_eq!(
        presence["data"]["users"],
        json!(["ann", "bob"]),
        "{presence}"
    );

    // bob leaves (from the other shard): ann and cat hear it, with the count.
    let bob_id = bob.connection_id.clone();
    bob.close().await;
    for client in [&mut ann, &mut cat] {
        let left = diff_listing(client, "team:x", "left", &bob_id).await;
        assert_eq!(left["data"]["connections"], 2, "{left}");
    }
    let presence = cat
        .request(json!({"action": "presence", "data": {"room": "team:x"}}))
        .await;
    assert_eq!(
        presence["data"]["users"],
        json!(["ann", "cat"]),
        "{presence}"
    );
    for client in spare.into_iter().chain(more) {
        client.close().await;
    }
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_send_reaches_a_users_connections_on_every_shard() {
    let server = start(&[]).await;
    let mut probe = Probe::new(server.addr).await;
    let mut dora = Vec::new();
    let mut on = [0; SHARDS];
    for _ in 0..4 {
        let (client, shard) = probe
            .connect(server.addr, Auth::Query(token("dora", "")))
            .await;
        on[shard] += 1;
        dora.push((client, shard));
    }
    assert!(on.iter().all(|&n| n > 0), "dora on every shard: {on:?}");
    let (mut eve, _) = probe
        .connect(server.addr, Auth::Query(token("eve", "")))
        .await;

    let mut api = HttpConn::connect(server.addr).await;
    let body = json!({"user_id": "dora", "type": "system_info", "data": {"message": "ready"}});
    let response = api.post_json("/api/send", Some(&publisher()), &body).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["delivered"], 4, "all of dora's connections");
    for (client, _) in &mut dora {
        let got = client.recv_json().await;
        assert_eq!(got["type"], "system_info", "{got}");
        assert_eq!(got["data"]["message"], "ready");
        client.assert_nothing_pending().await;
    }
    eve.assert_nothing_pending().await;

    // By connection id: whichever shard holds it, once.
    for target in 0..SHARDS {
        let (client, _) = dora
            .iter_mut()
            .find(|(_, shard)| *shard == target)
            .expect("one on each shard");
        let body = json!({"connection_id": client.connection_id, "type": "system_info",
                          "data": {"message": format!("to {target}")}});
        let response = api.post_json("/api/send", Some(&publisher()), &body).await;
        assert_eq!(response.json()["delivered"], 1, "{}", response.text());
        let got = client.recv_json().await;
        assert_eq!(got["data"]["message"], format!("to {target}"), "{got}");
    }
    for (client, _) in &mut dora {
        client.assert_nothing_pending().await;
    }
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_recovers_with_since_on_the_other_shard() {
    let server = start(&[]).await;
    let mut probe = Probe::new(server.addr).await;
    let mut api = HttpConn::connect(server.addr).await;
    let (mut first, first_shard) = probe.connect(server.addr, Auth::None).await;
    let joined = first.join("history").await;
    let epoch = joined["data"]["epoch"].as_str().expect("epoch").to_owned();
    for n in 1..=5 {
        broadcast(&mut api, "history", n).await;
    }
    let mut got = Vec::new();
    while got.len() < 5 {
        got.push(first.recv_json().await);
    }
    assert_eq!(seqs(&got, "queue_status"), [1, 2, 3, 4, 5]);
    first.close().await;
    for n in 6..=8 {
        broadcast(&mut api, "history", n).await;
    }
    let (mut back, spare) = probe
        .connect_on(server.addr, Auth::None, 1 - first_shard)
        .await;
    let reply = back
        .request(json!({"action": "join", "data": {"room": "history",
                        "since": {"epoch": epoch, "seq": 5}}}))
        .await;
    assert_eq!(reply["data"]["recovered"], true, "{reply}");
    assert_eq!(reply["data"]["epoch"], epoch.as_str(), "{reply}");
    // Then live, in the same order.
    let receipt = broadcast(&mut api, "history", 9).await;
    assert_eq!(receipt["delivered"], 1, "{receipt}");
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(back.recv_json().await);
    }
    assert_eq!(seqs(&got, "queue_status"), [6, 7, 8, 9], "{got:?}");
    back.assert_nothing_pending().await;
    for client in spare {
        client.close().await;
    }
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_connection_on_every_shard_with_1001() {
    let server = start(&[]).await;
    let mut probe = Probe::new(server.addr).await;
    let mut clients = Vec::new();
    let mut on = [0; SHARDS];
    for n in 0..10 {
        let (mut client, shard) = probe.connect(server.addr, Auth::None).await;
        if n % 2 == 0 {
            client.join("room").await;
        }
        on[shard] += 1;
        clients.push(client);
    }
    assert!(
        on.iter().all(|&n| n > 0),
        "connections on every shard: {on:?}"
    );
    drop(probe);
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.read_to_end().await }))
        .collect();
    let (status, _) = server.stop().await;
    for reader in readers {
        let (_, ending) = reader.await.expect("reader");
        assert!(
            matches!(ending, Ending::Close(1001, _)),
            "every connection is closed with 1001: {ending:?}"
        );
    }
    assert!(status.success(), "exit status {status}");
}

/// Issue 18: "with 1,000 connections opened on 2 shards, each shard holds
/// 40–60% of them, also when connections come from one client address".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_from_one_address_spread_over_both_shards() {
    const CONNECTIONS: u64 = 1_000;
    let server = start(&[]).await;
    let mut probe = Probe::new(server.addr).await;
    let mut clients = Vec::with_capacity(CONNECTIONS as usize);
    // From 127.0.0.1, a few handshakes in flight at a time.
    for _ in 0..CONNECTIONS / 10 {
        let batch = (0..10).map(|_| Client::connect(server.addr, Auth::None));
        clients.extend(futures_util::future::join_all(batch).await);
    }
    let on = probe.settled(CONNECTIONS).await;
    for (shard, &n) in on.iter().enumerate() {
        assert!(
            (400..=600).contains(&n),
            "shard {shard} holds {n} of {CONNECTIONS}: {on:?}"
        );
    }
    let text = probe.metrics().await;
    assert_eq!(
        metric_value(&text, "roomcast_connections"),
        Some(CONNECTIONS as f64),
        "the node's total"
    );
    let status = probe
        .http
        .request("GET", "/ws/status", &[], "")
        .await
        .json();
    assert_eq!(status["active_connections"], CONNECTIONS, "{status}");
    drop(clients);
    probe.settled(0).await;
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_report_node_totals() {
    let server = start(&[]).await;
    let mut probe = Probe::new(server.addr).await;
    let (mut a, a_shard) = probe.connect(server.addr, Auth::None).await;
    let (mut b, spare) = probe.connect_on(server.addr, Auth::None, 1 - a_shard).await;
    // "both" has members on both shards, "one" on b's shard only.
    a.join("both").await;
    b.join("both").await;
    b.join("one").await;
    let open = 2 + spare.len() as u64;
    let status = probe
        .http
        .request("GET", "/ws/status", &[], "")
        .await
        .json();
    assert_eq!(status["status"], "operational", "{status}");
    assert_eq!(status["active_connections"], open, "{status}");
    // A room followed by two shards is one room of the node.
    assert_eq!(status["rooms"], 2, "{status}");
    assert_eq!(status["local_rooms"], 2, "{status}");
    let text = probe.metrics().await;
    assert_eq!(
        metric_value(&text, "roomcast_connections"),
        Some(open as f64)
    );
    let gauges = probe.shards().await;
    assert_eq!(gauges.iter().sum::<u64>(), open, "{gauges:?}");
    a.close().await;
    let status = probe.settled(open - 1).await;
    assert_eq!(status[a_shard] + status[1 - a_shard], open - 1);
    b.close().await;
    for client in spare {
        client.close().await;
    }
    probe.settled(0).await;
    let status = probe
        .http
        .request("GET", "/ws/status", &[], "")
        .await
        .json();
    assert_eq!(status["active_connections"], 0, "{status}");
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_writes_and_publish_to_write_are_observed_with_two_shards() {
    let server = start(&[]).await;
    let mut probe = Probe::new(server.addr).await;
    let (mut a, a_shard) = probe.connect(server.addr, Auth::None).await;
    let (mut b, spare) = probe.connect_on(server.addr, Auth::None, 1 - a_shard).await;
    a.join("counted").await;
    b.join("counted").await;
    // Published over the probe's connection: its shard (which holds one
    // of the members) hears each append's answer before the live message,
    // and times its member's write from the request's arrival.
    let before = probe.metrics().await;
    let writes_before =
        metric_value(&before, "roomcast_socket_writes_total").expect("socket_writes");
    for n in 1..=3 {
        broadcast(&mut probe.http, "counted", n).await;
    }
    for member in [&mut a, &mut b] {
        let got: Vec<Value> = vec![
            member.recv_json().await,
            member.recv_json().await,
            member.recv_json().await,
        ];
        assert_eq!(seqs(&got, "queue_status"), [1, 2, 3], "{got:?}");
    }
    // Counted right after the write each member just read: wait for both.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let text = probe.metrics().await;
        let writes = metric_value(&text, "roomcast_socket_writes_total").expect("socket_writes");
        let frames = metric_value(&text, "roomcast_messages_out_total").expect("messages_out");
        assert!(
            writes <= frames,
            "a write without a frame: {writes} writes, {frames} frames"
        );
        let timed = metric_value(&text, "roomcast_publish_to_write_seconds_count").unwrap_or(0.0);
        if writes - writes_before >= 2.0 && timed >= 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the members on two shards got their frames, but {} socket writes were counted \
             and {timed} publish-to-write observations made",
            writes - writes_before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for client in spare {
        client.close().await;
    }
    stop(server).await;
}
