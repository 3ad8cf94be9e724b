//! Presence diffs across several roomcast nodes on one Redis the test
//! starts itself: every member hears every node's joins and leaves with the
//! cluster's count, a killed node's members leave within the bound, and a
//! node that stops is one diff per room elsewhere (docs/protocol.md §7-8).

use std::time::Duration;

use roomcast_tests::redis_server::RedisServer;
use roomcast_tests::serde_json::{json, Value};
use roomcast_tests::tokens::token;
use roomcast_tests::{http, test_config, TestServer};

/// A node on `redis` whose rooms `team:*` push presence diffs, with
/// presence entries living `ttl_ms` without a refresh.
async fn diff_node(redis: &RedisServer, prefix: &str, ttl_ms: u64) -> TestServer {
    let mut config = test_config();
    config.engine.redis_url = Some(redis.url());
    config.engine.redis_prefix = prefix.to_owned();
    config.rooms.presence_diff_prefixes = vec!["team:".into()];
    // One diff per change as Redis reports it: these tests follow each
    // change across nodes (windows over engine changes:
    // core/tests/presence_windows.rs).
    config.rooms.presence_diff_interval_ms = 0;
    config.limits.presence_ttl_ms = ttl_ms;
    let server = TestServer::start(config).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while http(server.addr, "GET", "/readyz", &[], "").await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

/// The next `presence_diff` `client` receives (other messages skipped).
async fn next_diff(client: &mut roomcast_tests::Client) -> Value {
    loop {
        let message = client.recv_json().await;
        if message["type"] == "presence_diff" {
            return message["data"].clone();
        }
    }
}

/// The next `presence_diff` `client` receives, skipping a late one that
/// only tells `earlier` joined. A member who joined on one node right after
/// `earlier` joined on another may hear of that join after its own (its
/// node learns of it through Redis), which is correct; the tests that
/// follow later changes skip it.
async fn next_diff_after_join_of(client: &mut roomcast_tests::Client, earlier: &str) -> Value {
    loop {
        let diff = next_diff(client).await;
        let late = who(&diff, "joined") == earlier
            && diff.get("left").is_none()
            && diff.get("truncated").is_none();
        if !late {
            return diff;
        }
    }
}

/// The user id of a one-change diff's `joined` or `left` object.
fn who(diff: &Value, key: &str) -> Value {
    diff[key]["user_id"].clone()
}

/// A member on B hears every join and leave on A and C (and none about
/// itself), each with the cluster-wide count.
#[tokio::test]
async fn presence_diffs_reach_members_on_every_node_with_the_cluster_count() {
    let redis = RedisServer::start();
    let a = diff_node(&redis, "diffs", 30_000).await;
    let b = diff_node(&redis, "diffs", 30_000).await;
    let c = diff_node(&redis, "diffs", 30_000).await;
    let mut bob = b.client_with_token(&token("bob", "")).await;
    bob.join("team:x").await;
    let mut ann = a.client_with_token(&token("ann", "")).await;
    ann.join("team:x").await;
    // The first diff bob gets is ann's join: not the echo of his own.
    let diff = next_diff(&mut bob).await;
    assert_eq!(who(&diff, "joined"), "ann", "{diff}");
    assert_eq!(diff["connections"], 2, "{diff}");
    assert_eq!(diff["room"], "team:x", "{diff}");
    let mut cat = c.client_with_token(&token("cat", "")).await;
    cat.join("team:x").await;
    for client in [&mut bob, &mut ann] {
        let diff = next_diff_after_join_of(client, "bob").await;
        assert_eq!(who(&diff, "joined"), "cat", "{diff}");
        assert_eq!(diff["connections"], 3, "{diff}");
    }
    // A leave on C and a disconnect on A.
    let left = cat
        .request(json!({"action": "leave", "data": {"room": "team:x"}}))
        .await;
    assert_eq!(left["type"], "system_info", "{left}");
    let diff = next_diff(&mut bob).await;
    assert_eq!(who(&diff, "left"), "cat", "{diff}");
    assert_eq!(diff["connections"], 2, "{diff}");
    let diff = next_diff(&mut ann).await;
    assert_eq!(who(&diff, "left"), "cat", "{diff}");
    ann.close().await;
    let diff = next_diff(&mut bob).await;
    assert_eq!(who(&diff, "left"), "ann", "{diff}");
    assert_eq!(diff["connections"], 1, "{diff}");
    // Nothing else: cat (no longer a member) and bob have no diff pending.
    bob.assert_nothing_pending().await;
    let pending = cat.fence().await;
    assert!(
        pending.iter().all(|m| m["type"] != "presence_diff"),
        "{pending:?}"
    );
    // Rooms without the prefix have no diffs, on any node.
    let mut dan = a.client_with_token(&token("dan", "")).await;
    dan.join("plain").await;
    let mut eve = b.client_with_token(&token("eve", "")).await;
    eve.join("plain").await;
    dan.assert_nothing_pending().await;
    for client in [bob, cat, dan, eve] {
        client.close().await;
    }
    for server in [a, b, c] {
        server.shutdown().await.unwrap();
    }
}

/// A node that shuts down with many members in a room: each member
/// elsewhere hears it as one diff (truncated beyond `presence_page_max`),
/// not one diff per member.
#[tokio::test]
async fn a_node_shutting_down_with_many_members_is_one_diff_elsewhere() {
    const MEMBERS: usize = 120;
    let redis = RedisServer::start();
    let a = diff_node(&redis, "bye", 30_000).await;
    let b = diff_node(&redis, "bye", 30_000).await;
    let mut watcher = b.client_with_token(&token("watcher", "")).await;
    watcher.join("team:big").await;
    let mut members = Vec::new();
    for n in 0..MEMBERS {
        let mut client = a.client_with_token(&token(&format!("m{n:03}"), "")).await;
        client.join("team:big").await;
        members.push(client);
    }
    // The watcher hears the joins (however merged) up to the full count.
    let mut joined = 0;
    loop {
        let diff = next_diff(&mut watcher).await;
        joined += match &diff["joined"] {
            Value::Array(list) => list.len(),
            Value::Object(_) => 1,
            _ => diff["joined_count"].as_u64().unwrap() as usize,
        };
        if diff["connections"] == MEMBERS + 1 {
            break;
        }
    }
    assert_eq!(joined, MEMBERS);
    a.shutdown().await.unwrap();
    // Then every member on A is gone in one change.
    let diff = next_diff(&mut watcher).await;
    assert_eq!(diff["connections"], 1, "{diff}");
    assert_eq!(diff["truncated"], true, "{diff}");
    assert_eq!(diff["left_count"], MEMBERS, "{diff}");
    assert_eq!(diff["joined_count"], 0, "{diff}");
    watcher.assert_nothing_pending().await;
    let presence = watcher
        .request(json!({"action": "presence", "data": {"room": "team:big"}}))
        .await;
    assert_eq!(presence["data"]["users"], json!(["watcher"]), "{presence}");
    drop(members);
    watcher.close().await;
    b.shutdown().await.unwrap();
}

/// The real binary with `--redis`, killed with SIGKILL: the members of the
/// other nodes get one `left` diff for its members once their entries
/// expire, within the documented bound (`presence_ttl_ms` and a third).
#[tokio::test]
async fn a_killed_node_s_members_leave_in_diffs_within_the_bound() {
    use roomcast_tests::binary;
    const TTL_MS: u64 = 1_500;
    let redis = RedisServer::start();
    let ttl = TTL_MS.to_string();
    let mut node = binary::Process::spawn(
        &["--redis", &redis.url()],
        &[
            ("ROOMCAST_JWT_SECRET", roomcast_tests::SECRET),
            ("ROOMCAST_ENGINE__REDIS_PREFIX", "killdiff"),
            ("ROOMCAST_LIMITS__PRESENCE_TTL_MS", &ttl),
            ("ROOMCAST_ROOMS__PRESENCE_DIFF_PREFIXES", "[team:]"),
        ],
    );
    let addr = node.addr;
    roomcast_tests::cluster::wait_ready(addr).await;
    let b = diff_node(&redis, "killdiff", TTL_MS).await;
    let c = diff_node(&redis, "killdiff", TTL_MS).await;
    let mut on_b = b.client_with_token(&token("bob", "")).await;
    on_b.join("team:k").await;
    let mut on_c = c.client_with_token(&token("cat", "")).await;
    on_c.join("team:k").await;
    assert_eq!(who(&next_diff(&mut on_b).await, "joined"), "cat");
    let mut doomed = Vec::new();
    for user in ["ann", "amy"] {
        let mut client =
            roomcast_tests::Client::connect(addr, roomcast_tests::Auth::Query(token(user, "")))
                .await;
        client.join("team:k").await;
        doomed.push(client);
    }
    for client in [&mut on_b, &mut on_c] {
        let mut joined = Vec::new();
        while joined.len() < 2 {
            let diff = next_diff(client).await;
            // Under load C may still hear of bob's join, written to Redis
            // just after C subscribed: only the dead node's members count.
            joined.extend(
                users_in(&diff, "joined")
                    .into_iter()
                    .filter(|user| user == "ann" || user == "amy"),
            );
        }
        // One diff may carry both, listed in connection-id order.
        joined.sort();
        assert_eq!(joined, ["amy", "ann"]);
    }
    node.kill().await;
    let killed_at = std::time::Instant::now();
    // On each surviving node: both of the dead node's members left (in one
    // diff, or two when their entries expired at different times).
    for client in [&mut on_b, &mut on_c] {
        let mut left = Vec::new();
        let mut diffs = 0;
        while left.len() < 2 {
            let diff = next_diff(client).await;
            diffs += 1;
            assert!(users_in(&diff, "joined").is_empty(), "{diff}");
            left.extend(users_in(&diff, "left"));
            if left.len() == 2 {
                assert_eq!(diff["connections"], 2, "{diff}");
            }
        }
        left.sort();
        assert_eq!(left, ["amy", "ann"]);
        assert!(diffs <= 2);
    }
    // The bound, with room for a loaded machine: entries expire at most
    // TTL after the last refresh, and a survivor sweeps every TTL / 3.
    let bound = Duration::from_millis(TTL_MS + TTL_MS / 3);
    assert!(
        killed_at.elapsed() < bound + Duration::from_secs(3),
        "left diffs after {:?}",
        killed_at.elapsed()
    );
    drop(doomed);
    on_b.assert_nothing_pending().await;
    on_c.assert_nothing_pending().await;
    on_b.close().await;
    on_c.close().await;
    b.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
}

/// Every node's pub/sub connection is killed (presence changes may be lost
/// meanwhile): the members of rooms with diffs are told to ask again, with
/// the room's count, and diffs go on afterwards.
#[tokio::test]
async fn a_broken_presence_stream_tells_members_to_ask_again() {
    let redis = RedisServer::start();
    let a = diff_node(&redis, "resync", 30_000).await;
    let b = diff_node(&redis, "resync", 30_000).await;
    let mut bob = b.client_with_token(&token("bob", "")).await;
    bob.join("team:r").await;
    let mut ann = a.client_with_token(&token("ann", "")).await;
    ann.join("team:r").await;
    assert_eq!(who(&next_diff(&mut bob).await, "joined"), "ann");
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let diff = next_diff(&mut bob).await;
    assert_eq!(diff["truncated"], true, "{diff}");
    assert_eq!(diff["connections"], 2, "{diff}");
    assert!(diff.get("joined").is_none() && diff.get("left_count").is_none());
    let diff = next_diff_after_join_of(&mut ann, "bob").await;
    assert_eq!(diff["truncated"], true, "{diff}");
    // Live again: a later leave is told as usual.
    ann.close().await;
    let diff = next_diff(&mut bob).await;
    assert_eq!(who(&diff, "left"), "ann", "{diff}");
    assert_eq!(diff["connections"], 1, "{diff}");
    bob.close().await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// The user ids a diff lists under `key` (`joined` or `left`), whether as
/// one object or a list.
fn users_in(diff: &Value, key: &str) -> Vec<String> {
    let user = |entry: &Value| entry["user_id"].as_str().unwrap_or("-").to_owned();
    match &diff[key] {
        Value::Object(_) => vec![user(&diff[key])],
        Value::Array(list) => list.iter().map(user).collect(),
        _ => Vec::new(),
    }
}
