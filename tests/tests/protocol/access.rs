//! Forbidden rooms, presence and publishes; client publishes with a grant;
//! presence lists and their pages.

use super::*;

#[tokio::test]
async fn forbidden_rooms_presence_and_publish() {
    let server = TestServer::start_default().await;
    let mut anonymous = server.client().await;
    let mut alice = server.client_with_token(&token("alice", "")).await;
    let mut bob = server.client_with_token(&token("bob", "")).await;

    // private user rooms
    assert_error(
        &anonymous
            .request(json!({"action": "join", "data": {"room": "user:alice"}}))
            .await,
        "FORBIDDEN",
    );
    assert_error(
        &bob.request(json!({"action": "join", "data": {"room": "user:alice"}}))
            .await,
        "FORBIDDEN",
    );
    assert_error(
        &alice
            .request(json!({"action": "join", "data": {"room": "user:alice2"}}))
            .await,
        "FORBIDDEN",
    );
    alice.join("user:alice").await;

    // presence of a room one is not in (existing or not)
    assert_error(
        &bob.request(json!({"action": "presence", "data": {"room": "user:alice"}}))
            .await,
        "FORBIDDEN",
    );
    assert_error(
        &bob.request(json!({"action": "presence", "data": {"room": "nobody-here"}}))
            .await,
        "FORBIDDEN",
    );

    // client publish without a publish grant
    let publish = json!({"action": "publish", "data": {"room": "news", "type": "system_info", "data": {"message": "hi"}}});
    assert_error(&anonymous.request(publish.clone()).await, "FORBIDDEN");
    assert_error(&bob.request(publish.clone()).await, "FORBIDDEN");
    let mut scoped = server
        .client_with_token(&token("carol", "publish:other"))
        .await;
    assert_error(&scoped.request(publish).await, "FORBIDDEN");

    // a broadcast to user:alice reaches only alice
    let response = server
        .broadcast(
            &publisher(),
            json!({"room": "user:alice", "type": "system_info", "data": {"message": "for alice"}}),
        )
        .await;
    assert_eq!(response.json()["delivered"], 1);
    assert_eq!(alice.recv_json().await["data"]["message"], "for alice");
    bob.assert_nothing_pending().await;
    anonymous.assert_nothing_pending().await;

    for c in [anonymous, alice, bob, scoped] {
        c.close().await;
    }
    server.assert_connections(0).await;
}

#[tokio::test]
async fn client_publish_with_a_publish_scope() {
    let server = TestServer::start_default().await;
    let mut member = server.client().await;
    member.join("news").await;
    let mut author = server
        .client_with_token(&token("editor", "publish:news"))
        .await;

    let reply = author
        .request(json!({"action": "publish", "id": "p1", "data": {
            "room": "news", "type": "system_info", "data": {"message": "extra!"}}}))
        .await;
    assert_eq!(reply["type"], "system_info", "{reply}");
    assert_eq!(reply["id"], "p1");
    assert_eq!(reply["data"]["room"], "news");
    assert_eq!(reply["data"]["seq"], 1);
    assert_eq!(reply["data"]["delivered"], 1, "{reply}");

    let got = member.recv_json().await;
    assert_eq!(got["type"], "system_info", "{got}");
    assert_eq!(got["room"], "news");
    assert_eq!(got["seq"], 1);
    assert_eq!(got["data"], json!({"message": "extra!"}));
    assert!(is_timestamp(got["timestamp"].as_str().unwrap_or("")));

    // a publisher need not be a member; the unrestricted scope publishes anywhere
    let mut boss = server.client_with_token(&token("boss", "publish")).await;
    let reply = boss
        .request(json!({"action": "publish", "data": {
            "room": "news", "type": "download_progress",
            "data": {"key": "attack-on-titan", "percent": 45.2}}}))
        .await;
    assert_eq!(reply["data"]["seq"], 2, "{reply}");
    let got = member.recv_json().await;
    assert_eq!(got["type"], "download_progress");
    assert_eq!(got["seq"], 2);
    assert_eq!(got["data"]["key"], "attack-on-titan");

    // validation errors of a client publish
    let e = boss
        .request(json!({"action": "publish", "data": {"room": "news", "type": "made_up"}}))
        .await;
    assert_error(&e, "UNKNOWN_TYPE");
    let e = boss
        .request(json!({"action": "publish", "data": {"room": "news", "type": "connected"}}))
        .await;
    assert_error(&e, "UNKNOWN_TYPE");
    let e = boss
        .request(json!({"action": "publish", "data": {
            "room": "news", "type": "download_complete", "data": {"key": "a b"}}}))
        .await;
    assert_error(&e, "INVALID_KEY");
    let e = boss
        .request(json!({"action": "publish", "data": {"room": "news"}}))
        .await;
    assert_error(&e, "INVALID_MESSAGE");
    member.assert_nothing_pending().await;

    for c in [member, author, boss] {
        c.close().await;
    }
    server.assert_connections(0).await;
}

#[tokio::test]
async fn presence_lists_members() {
    let server = TestServer::start_default().await;
    let mut alice = server.client_with_token(&token("alice", "")).await;
    let mut alice2 = server.client_with_token(&token("alice", "")).await;
    let mut bob = server.client_with_token(&token("bob", "")).await;
    let mut anonymous = server.client().await;
    for c in [&mut alice, &mut alice2, &mut bob, &mut anonymous] {
        c.join("lobby").await;
    }
    let reply = anonymous
        .request(json!({"action": "presence", "data": {"room": "lobby"}, "id": "p"}))
        .await;
    assert_eq!(reply["type"], "presence", "{reply}");
    assert_eq!(reply["id"], "p");
    assert_eq!(reply["data"]["room"], "lobby");
    assert_eq!(reply["data"]["connections"], 4, "{reply}");
    assert_eq!(reply["data"]["user_count"], 2, "{reply}");
    assert_eq!(reply["data"]["users"], json!(["alice", "bob"]), "{reply}");

    bob.request(json!({"action": "leave", "data": {"room": "lobby"}}))
        .await;
    alice2.close().await;
    let reply = alice
        .request(json!({"action": "presence", "data": {"room": "lobby"}}))
        .await;
    assert_eq!(reply["data"]["connections"], 2, "{reply}");
    assert_eq!(reply["data"]["users"], json!(["alice"]), "{reply}");

    for c in [alice, bob, anonymous] {
        c.close().await;
    }
    server.assert_connections(0).await;
}

#[tokio::test]
async fn presence_is_paginated() {
    let mut config = test_config();
    config.limits.presence_page_max = 2;
    let server = TestServer::start(config).await;
    let mut clients = Vec::new();
    for user in ["u1", "u2", "u3", "u4", "u5"] {
        let mut c = server.client_with_token(&token(user, "")).await;
        c.join("big").await;
        clients.push(c);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..5 {
        let mut data = json!({"room": "big"});
        if let Some(a) = &after {
            data["after"] = json!(a);
        }
        let reply = clients[0]
            .request(json!({"action": "presence", "data": data}))
            .await;
        assert_eq!(reply["data"]["user_count"], 5, "{reply}");
        let page = reply["data"]["users"].as_array().unwrap().clone();
        assert!(page.len() <= 2, "{reply}");
        seen.extend(page.into_iter().map(|u| u.as_str().unwrap().to_owned()));
        match reply["data"]["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["u1", "u2", "u3", "u4", "u5"]);
    for c in clients {
        c.close().await;
    }
}
