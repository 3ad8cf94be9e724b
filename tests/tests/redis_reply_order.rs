//! Reply order with an engine that answers later (Redis): a message the
//! node refuses because its inbound byte budget is full is answered
//! `SERVER_BUSY` in its place among the replies (docs/protocol.md), never
//! ahead of the reply to an earlier request still waiting for Redis.

use futures_util::SinkExt;
use roomcast_tests::cluster::{redis_config, redis_node};
use roomcast_tests::redis_server::RedisServer;
use roomcast_tests::tokio_tungstenite::tungstenite::Message;
use serde_json::json;

#[tokio::test]
async fn server_busy_waits_behind_a_join_that_waits_for_redis() {
    const PINGS: usize = 100;
    let redis = RedisServer::start();
    let mut config = redis_config(&redis.url(), "busy");
    config.limits.message_bytes_max = 1024;
    config.limits.api_body_bytes_max = 1024;
    // Room for two such messages in flight: a flood overflows it.
    config.limits.inbound_bytes_max = 2048;
    config.limits.messages_per_second = 10_000;
    config.limits.message_burst = 10_000;
    // Every message that gets through waits behind the join (none is
    // refused for the deferred queue's bound instead).
    config.limits.engine_deferred_messages_max = 1_000;
    let node = redis_node(config).await;
    let mut c = node.client().await;
    // Redis stalls: the join (the room's first, so it needs a read) waits.
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "800", "ALL"]).trim(), "OK");
    let join = json!({"action": "join", "id": "join", "data": {"room": "slow"}});
    c.ws.feed(Message::text(join.to_string()))
        .await
        .expect("feed");
    for i in 0..PINGS {
        let pad = "p".repeat(950);
        let text = json!({"action": "ping", "id": i, "pad": pad}).to_string();
        c.ws.feed(Message::text(text)).await.expect("feed");
    }
    c.ws.flush().await.expect("flush");
    let first = c.recv_json().await;
    assert_eq!(first["id"], "join", "the join's reply comes first: {first}");
    let busy = c.pongs_or_server_busy(PINGS).await;
    eprintln!("{busy} of {PINGS} pings refused SERVER_BUSY behind the join");
    assert!(busy > 0, "the budget was never full: nothing was shown");
    c.close().await;
}
