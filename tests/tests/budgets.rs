//! The engine's room budget through the real server: at `rooms_max`, with
//! every room in use, a join of one more room gets an `ENGINE_UNAVAILABLE`
//! error frame and a broadcast to it HTTP 503 with a JSON body; rooms that
//! exist keep working.

use roomcast_tests::tokens::publisher;
use roomcast_tests::{assert_error, test_config, TestServer};
use serde_json::json;

#[tokio::test]
async fn a_new_room_beyond_rooms_max_is_refused_with_clear_answers() {
    let mut config = test_config();
    config.limits.rooms_max = 2;
    let server = TestServer::start(config).await;
    let mut first = server.client().await;
    first.join("a").await;
    first.join("b").await;

    let refused = first
        .request(json!({"action": "join", "data": {"room": "c"}}))
        .await;
    let message = assert_error(&refused, "ENGINE_UNAVAILABLE");
    assert!(message.contains("rooms_max"), "{message}");
    let response = server
        .broadcast(
            &publisher(),
            json!({"room": "c", "type": "queue_status", "data": {}}),
        )
        .await;
    response.assert_error(503, "ENGINE_UNAVAILABLE");
    assert!(response.text().contains("rooms_max"), "{response:?}");

    let response = server
        .broadcast(
            &publisher(),
            json!({"room": "a", "type": "queue_status", "data": {}}),
        )
        .await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(first.recv_json().await["room"], "a");

    // A room is free again (b had no history): c can be created.
    first
        .request(json!({"action": "leave", "data": {"room": "b"}}))
        .await;
    first.join("c").await;
}
