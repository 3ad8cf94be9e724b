//! PROTOCOL section 5 with an identity provider: token keys from a JWKS URL
//! served by a fake identity provider on loopback ([`FakeHttp`]), key
//! rotation, refetch for an unknown `kid`, the provider down after and
//! before the first load, `aud`/`iss`, and algorithm confusion.

use std::sync::OnceLock;
use std::time::Duration;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use roomcast_net::config::InvalidTokenPolicy;
use roomcast_net::ServerConfig;
use roomcast_tests::fake_http::{FakeHttp, Reply};
use roomcast_tests::tokens::{alg_none, b64url, hs256_claims, now_s, rs256, rsa_keypair};
use roomcast_tests::{
    http, test_config, upgrade_request, Auth, Client, TestServer, SECRET, TIMEOUT,
};
use serde_json::{json, Value};

const JWKS: &str = "/.well-known/jwks.json";

/// Signs claims for one key source.
type Signer = Box<dyn Fn(&Value) -> String>;

/// Private keys made once per test process with the `openssl` command line.
struct Keys {
    rsa: EncodingKey,
    rsa_public_pem: Vec<u8>,
    ec: EncodingKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (_dir, private, public) = rsa_keypair();
        let rsa = EncodingKey::from_rsa_pem(&std::fs::read(private).unwrap()).unwrap();
        let rsa_public_pem = std::fs::read(public).unwrap();
        let ec_pem = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .output()
            .expect("the openssl command line")
            .stdout;
        let ec = EncodingKey::from_ec_pem(&ec_pem).expect("an EC key");
        Keys {
            rsa,
            rsa_public_pem,
            ec,
        }
    })
}

/// The public JWK of `key` (RS256 or ES256) under `kid`.
fn jwk(kid: &str, key: &EncodingKey, alg: Algorithm) -> Value {
    let mut jwk = serde_json::to_value(Jwk::from_encoding_key(key, alg).unwrap()).unwrap();
    jwk["kid"] = json!(kid);
    jwk["use"] = json!("sig");
    jwk
}

fn rsa_jwk(kid: &str) -> Value {
    jwk(kid, &keys().rsa, Algorithm::RS256)
}

fn ec_jwk(kid: &str) -> Value {
    jwk(kid, &keys().ec, Algorithm::ES256)
}

fn key_set(keys: &[Value]) -> Reply {
    Reply::json(&json!({ "keys": keys }))
}

/// A token for `sub` with the publish scope, signed by `key` under `kid`.
fn signed(alg: Algorithm, kid: &str, key: &EncodingKey, extra: &Value) -> String {
    let mut claims = json!({"sub": "alice", "exp": now_s() + 3600, "scope": "publish"});
    for (name, value) in extra.as_object().unwrap() {
        claims[name] = value.clone();
    }
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    encode(&header, &claims, key).unwrap()
}

fn rs(kid: &str) -> String {
    signed(Algorithm::RS256, kid, &keys().rsa, &json!({}))
}

fn es(kid: &str) -> String {
    signed(Algorithm::ES256, kid, &keys().ec, &json!({}))
}

/// A server whose only key source is `idp`'s JWKS; invalid tokens are
/// refused with 401 (so a refusal is visible at the upgrade).
fn config(idp: &FakeHttp, refresh_ms: u64, refetch_min_ms: u64) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.auth.jwks_url = Some(idp.url(JWKS));
    config.auth.jwks_refresh_ms = refresh_ms;
    config.auth.jwks_refetch_min_ms = refetch_min_ms;
    config.auth.invalid_token = InvalidTokenPolicy::Reject;
    config
}

async fn ready_status(server: &TestServer) -> (u16, Value) {
    let response = http(server.addr, "GET", "/readyz", &[], "").await;
    (response.status, response.json())
}

/// Waits until `/readyz` answers `status`.
async fn wait_readyz(server: &TestServer, status: u16) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while ready_status(server).await.0 != status {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the metric `sample` reaches at least `at_least`.
async fn wait_metric(server: &TestServer, sample: &str, at_least: f64) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while server.metric(sample).await.unwrap_or(0.0) < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sample} never reached {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status of a WebSocket upgrade carrying `token`.
async fn upgrade_status(server: &TestServer, token: &str) -> u16 {
    let bearer = format!("Bearer {token}");
    upgrade_request(server.addr, "/ws/connect", &[("authorization", &bearer)])
        .await
        .status
}

/// The status of a publish with `token`.
async fn publish_status(server: &TestServer, token: &str) -> u16 {
    server
        .broadcast(token, json!({"room": "news", "type": "queue_status"}))
        .await
        .status
}

fn ok_fetches() -> &'static str {
    "roomcast_jwks_fetches_total{outcome=\"ok\"}"
}

#[tokio::test]
async fn a_new_kid_works_without_a_restart_and_an_unknown_one_costs_one_refetch() {
    let idp = FakeHttp::start().await;
    idp.reply(JWKS, key_set(&[rsa_jwk("r1")]));
    let server = TestServer::start(config(&idp, 300_000, 60_000)).await;
    wait_readyz(&server, 200).await;
    assert_eq!(idp.count(JWKS), 1, "fetched once at startup");
    let client = Client::connect(server.addr, Auth::Header(rs("r1"))).await;
    assert_eq!(client.connected["data"]["user_id"], "alice");

    // The provider rotates: a second key (EC) appears. A refresh naming it
    // makes the server fetch again, and succeeds.
    idp.reply(JWKS, key_set(&[rsa_jwk("r1"), ec_jwk("e2")]));
    let mut client = client;
    let reply = client
        .request(json!({"action": "refresh", "data": {"token": es("e2")}, "id": "r"}))
        .await;
    assert_eq!(reply["data"]["message"], "Token refreshed", "{reply}");
    assert_eq!(idp.count(JWKS), 2);
    // Now known: new connections and the publish API use it without a fetch.
    let second = Client::connect(server.addr, Auth::Query(es("e2"))).await;
    assert_eq!(second.connected["data"]["authenticated"], true);
    assert_eq!(publish_status(&server, &es("e2")).await, 200);
    assert_eq!(idp.count(JWKS), 2);

    // A kid nobody published: within jwks_refetch_min_ms of the last
    // refetch, refused without asking the provider again.
    assert_eq!(upgrade_status(&server, &rs("nobody")).await, 401);
    assert_eq!(publish_status(&server, &rs("nobody")).await, 401);
    assert_eq!(idp.count(JWKS), 2);
    assert_eq!(server.metric(ok_fetches()).await, Some(2.0));
    assert_eq!(server.metric("roomcast_jwks_keys").await, Some(2.0));
    // The connection that refreshed is still fine.
    client.request(json!({"action": "ping"})).await;
}

#[tokio::test]
async fn an_unknown_kid_is_refused_after_exactly_one_refetch() {
    let idp = FakeHttp::start().await;
    idp.reply(JWKS, key_set(&[rsa_jwk("r1")]));
    let server = TestServer::start(config(&idp, 300_000, 60_000)).await;
    wait_readyz(&server, 200).await;
    let response = server
        .broadcast(&rs("r9"), json!({"room": "news", "type": "queue_status"}))
        .await;
    assert_eq!(response.status, 401, "{response:?}");
    assert_eq!(response.json()["error"]["code"], "INVALID_TOKEN");
    assert!(
        String::from_utf8_lossy(&response.body).contains("kid"),
        "{response:?}"
    );
    assert_eq!(idp.count(JWKS), 2, "startup and one refetch");
    for _ in 0..5 {
        assert_eq!(upgrade_status(&server, &rs("r9")).await, 401);
    }
    assert_eq!(idp.count(JWKS), 2, "rate-limited: no further fetch");
    // A refresh with it is answered with an error, the connection stays.
    let mut client = Client::connect(server.addr, Auth::Header(rs("r1"))).await;
    let reply = client
        .request(json!({"action": "refresh", "data": {"token": rs("r9")}, "id": "x"}))
        .await;
    assert_eq!(reply["type"], "error", "{reply}");
    client.request(json!({"action": "ping"})).await;
    assert_eq!(idp.count(JWKS), 2);
}

#[tokio::test]
async fn cached_keys_keep_working_while_the_provider_is_down() {
    let mut idp = FakeHttp::start().await;
    idp.reply(JWKS, key_set(&[rsa_jwk("r1")]));
    // Refreshed every 200 ms, so failures come quickly.
    let server = TestServer::start(config(&idp, 200, 0)).await;
    wait_readyz(&server, 200).await;

    // Unreachable.
    idp.stop();
    wait_metric(
        &server,
        "roomcast_jwks_fetches_total{outcome=\"connect\"}",
        1.0,
    )
    .await;
    assert_eq!(upgrade_status(&server, &rs("r1")).await, 101);
    // An unknown kid still costs a (failing) refetch, and is refused.
    assert_eq!(upgrade_status(&server, &rs("r2")).await, 401);
    // Back, but answering errors, then a document without usable keys.
    idp.restart().await;
    idp.reply(JWKS, Reply::status(503, "{}"));
    wait_metric(
        &server,
        "roomcast_jwks_fetches_total{outcome=\"status\"}",
        1.0,
    )
    .await;
    idp.reply(
        JWKS,
        key_set(&[json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"})]),
    );
    wait_metric(
        &server,
        "roomcast_jwks_fetches_total{outcome=\"no_usable_key\"}",
        1.0,
    )
    .await;
    idp.reply(JWKS, Reply::status(200, "<html>not json</html>"));
    wait_metric(
        &server,
        "roomcast_jwks_fetches_total{outcome=\"bad_body\"}",
        1.0,
    )
    .await;
    assert_eq!(publish_status(&server, &rs("r1")).await, 200);
    assert_eq!(
        ready_status(&server).await.0,
        200,
        "a loaded key set stays ready"
    );
    assert_eq!(server.metric("roomcast_jwks_keys").await, Some(1.0));

    // The periodic refresh also retires keys the provider dropped.
    idp.reply(JWKS, key_set(&[ec_jwk("e2")]));
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while upgrade_status(&server, &rs("r1")).await != 401 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "r1 was never retired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(upgrade_status(&server, &es("e2")).await, 101);
}

#[tokio::test]
async fn down_at_startup_not_ready_and_tokens_invalid_until_it_answers() {
    let idp = FakeHttp::start().await;
    idp.reply(JWKS, Reply::status(500, "{}"));
    let mut config = config(&idp, 300_000, 0);
    // Anonymous policy: the token is invalid, so the connection is anonymous.
    config.auth.invalid_token = InvalidTokenPolicy::Anonymous;
    let server = TestServer::start(config).await;
    let (status, body) = ready_status(&server).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("jwks_url"),
        "{body}"
    );
    let client = Client::connect(server.addr, Auth::Header(rs("r1"))).await;
    assert_eq!(client.connected["data"]["authenticated"], false);
    assert_eq!(publish_status(&server, &rs("r1")).await, 401);
    // Retried with backoff (1 s, then 2 s ...) until it answers.
    assert!(idp.wait_for(JWKS, 2, TIMEOUT).await >= 2);
    idp.reply(JWKS, key_set(&[rsa_jwk("r1")]));
    wait_readyz(&server, 200).await;
    let client = Client::connect(server.addr, Auth::Header(rs("r1"))).await;
    assert_eq!(client.connected["data"]["user_id"], "alice");
    assert!(
        server
            .metric("roomcast_jwks_fetches_total{outcome=\"status\"}")
            .await
            >= Some(2.0)
    );
}

#[tokio::test]
async fn audience_and_issuer_are_checked_with_every_key_source() {
    let idp = FakeHttp::start().await;
    idp.reply(JWKS, key_set(&[rsa_jwk("r1")]));
    let (_dir, private_pem, public_pem) = rsa_keypair();
    let private_pem = std::fs::read(private_pem).unwrap();
    let good = json!({"aud": ["roomcast", "other"], "iss": "https://idp.test/"});
    let claims_with = |change: &Value| {
        let mut claims = json!({"sub": "alice", "exp": now_s() + 3600, "scope": "publish"});
        for (k, v) in good
            .as_object()
            .unwrap()
            .iter()
            .chain(change.as_object().unwrap())
        {
            claims[k] = v.clone();
        }
        claims.as_object_mut().unwrap().retain(|_, v| !v.is_null());
        claims
    };
    // Each key source, with a way to sign claims for it.
    let sources: Vec<(&str, ServerConfig, Signer)> = vec![
        (
            "secret",
            test_config(),
            Box::new(|c: &Value| hs256_claims(c, SECRET)),
        ),
        (
            "pem",
            {
                let mut config = ServerConfig::default();
                config.auth.algorithm = "RS256".into();
                config.auth.public_key_file = Some(public_pem.clone());
                config
            },
            Box::new(move |c: &Value| rs256(c, &private_pem)),
        ),
        (
            "jwks",
            config(&idp, 300_000, 60_000),
            Box::new(|c: &Value| {
                let mut header = Header::new(Algorithm::RS256);
                header.kid = Some("r1".into());
                encode(&header, c, &keys().rsa).unwrap()
            }),
        ),
    ];
    for (name, mut config, sign) in sources {
        config.auth.audience = Some("roomcast".into());
        config.auth.issuer = Some("https://idp.test/".into());
        config.auth.invalid_token = InvalidTokenPolicy::Reject;
        let server = TestServer::start(config).await;
        wait_readyz(&server, 200).await;
        let token = sign(&claims_with(&json!({})));
        assert_eq!(upgrade_status(&server, &token).await, 101, "{name}");
        assert_eq!(publish_status(&server, &token).await, 200, "{name}");
        let mut client = Client::connect(server.addr, Auth::Header(token)).await;
        for bad in [
            json!({"aud": "someone-else"}),
            json!({"aud": null}),
            json!({"iss": "https://evil.test/"}),
            json!({"iss": null}),
        ] {
            let token = sign(&claims_with(&bad));
            assert_eq!(upgrade_status(&server, &token).await, 401, "{name} {bad}");
            assert_eq!(publish_status(&server, &token).await, 401, "{name} {bad}");
            let reply = client
                .request(json!({"action": "refresh", "data": {"token": token}, "id": "r"}))
                .await;
            assert_eq!(reply["type"], "error", "{name} {bad}: {reply}");
        }
        client.request(json!({"action": "ping"})).await;
    }
}

#[tokio::test]
async fn algorithm_confusion_and_unsigned_tokens_are_refused() {
    let idp = FakeHttp::start().await;
    idp.reply(JWKS, key_set(&[rsa_jwk("r1"), ec_jwk("e1")]));
    let server = TestServer::start(config(&idp, 300_000, 60_000)).await;
    wait_readyz(&server, 200).await;
    assert_eq!(upgrade_status(&server, &rs("r1")).await, 101);
    assert_eq!(upgrade_status(&server, &es("e1")).await, 101);
    let now = now_s();
    let claims = json!({"sub": "alice", "exp": now + 3600, "scope": "publish"});
    // HS256 "signed" with the RSA public key as the HMAC secret.
    let public_as_secret = EncodingKey::from_secret(&keys().rsa_public_pem);
    let confused = signed(Algorithm::HS256, "r1", &public_as_secret, &json!({}));
    // alg none, with and without the kid.
    let unsigned = format!(
        "{}.{}.",
        b64url(
            json!({"alg": "none", "typ": "JWT", "kid": "r1"})
                .to_string()
                .as_bytes()
        ),
        b64url(claims.to_string().as_bytes())
    );
    // A valid signature under the other key's kid (the alg is the signer's,
    // not the key's).
    let rsa_under_ec_kid = rs("e1");
    let ec_under_rsa_kid = es("r1");
    for (name, token) in [
        ("HS256 with the public key", confused),
        ("alg none with kid", unsigned),
        ("alg none", alg_none(&claims)),
        ("RS256 under an EC kid", rsa_under_ec_kid),
        ("ES256 under an RSA kid", ec_under_rsa_kid),
    ] {
        assert_eq!(upgrade_status(&server, &token).await, 401, "{name}");
        assert_eq!(publish_status(&server, &token).await, 401, "{name}");
    }
    // None of them was a reason to ask the provider again.
    assert_eq!(idp.count(JWKS), 1);
}

#[tokio::test]
async fn the_binary_fetches_over_https_and_checks_the_certificate() {
    use roomcast_tests::binary::Process;
    use roomcast_tests::cluster::wait_ready;
    use roomcast_tests::tls_certs::TestCerts;
    let certs = TestCerts::generate();
    let idp = FakeHttp::start_tls(&certs.cert("server"), &certs.key("server")).await;
    idp.reply(JWKS, key_set(&[rsa_jwk("r1")]));
    let url = idp.url(JWKS);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let env = |ca: &std::path::Path| {
        vec![
            // The only key source: no secret.
            ("ROOMCAST_JWT_SECRET", String::new()),
            ("ROOMCAST_AUTH__JWKS_URL", url.clone()),
            ("ROOMCAST_AUTH__INVALID_TOKEN", "reject".to_owned()),
            // The trust store: the test's CA (or one that signed nothing).
            ("SSL_CERT_FILE", ca.to_str().unwrap().to_owned()),
            ("SSL_CERT_DIR", String::new()),
        ]
    };
    let start = |env: Vec<(&'static str, String)>| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Process::spawn(&[], &env)
    };
    let trusting = start(env(&certs.cert("ca")));
    wait_ready(trusting.addr).await;
    let bearer = format!("Bearer {}", rs("r1"));
    let upgrade =
        upgrade_request(trusting.addr, "/ws/connect", &[("authorization", &bearer)]).await;
    assert_eq!(upgrade.status, 101, "{upgrade:?}");

    // A server whose trust store lacks the CA never loads the keys.
    let untrusting = start(env(&certs.cert("other-ca")));
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    // Listening (it never gets ready).
    while tokio::net::TcpStream::connect(untrusting.addr)
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        let metrics = http(untrusting.addr, "GET", "/metrics", &[], "").await;
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        if roomcast_tests::metric_value(&text, "roomcast_jwks_fetches_total{outcome=\"connect\"}")
            .is_some()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed fetch counted: {}",
            untrusting.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = http(untrusting.addr, "GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 503);
    let upgrade = upgrade_request(
        untrusting.addr,
        "/ws/connect",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(upgrade.status, 401);
    assert!(
        untrusting.log().contains("JWKS fetch failed"),
        "{}",
        untrusting.log()
    );
    // Tokens never reach the log.
    assert!(!untrusting.log().contains(&rs("r1")[..40]));
}

#[tokio::test]
async fn a_token_waiting_for_a_refetch_holds_up_nobody_else() {
    let idp = FakeHttp::start().await;
    idp.reply(JWKS, key_set(&[rsa_jwk("r1")]));
    let server = TestServer::start(config(&idp, 300_000, 0)).await;
    wait_readyz(&server, 200).await;
    let mut bystander = Client::connect(server.addr, Auth::Header(rs("r1"))).await;
    // The provider becomes slow: the refetches for an unknown kid wait.
    idp.reply(
        JWKS,
        key_set(&[rsa_jwk("r1"), ec_jwk("e2")]).delayed(Duration::from_secs(4)),
    );
    // More refreshes waiting for the refetch than the verification pool
    // has threads, and an upgrade waiting for it too.
    let mut waiting = Vec::new();
    for i in 0..6 {
        let mut client = Client::connect(server.addr, Auth::Header(rs("r1"))).await;
        waiting.push(tokio::spawn(async move {
            client
                .request(json!({"action": "refresh", "data": {"token": es("e2")}, "id": i}))
                .await
        }));
    }
    let addr = server.addr;
    let upgrade = tokio::spawn(async move {
        let bearer = format!("Bearer {}", es("e2"));
        upgrade_request(addr, "/ws/connect", &[("authorization", &bearer)])
            .await
            .status
    });
    assert!(
        idp.wait_for(JWKS, 2, TIMEOUT).await >= 2,
        "the refetch started"
    );
    // Meanwhile everyone whose key is known is served: a refresh (through
    // the same verification pool), a new connection, a publish, a ping.
    let reply = bystander
        .request(json!({"action": "refresh", "data": {"token": rs("r1")}, "id": "b"}))
        .await;
    assert_eq!(reply["data"]["message"], "Token refreshed", "{reply}");
    assert_eq!(upgrade_status(&server, &rs("r1")).await, 101);
    assert_eq!(publish_status(&server, &rs("r1")).await, 200);
    bystander.request(json!({"action": "ping"})).await;
    assert!(
        !upgrade.is_finished() && waiting.iter().all(|w| !w.is_finished()),
        "the bystander's requests were answered while the refetch was still under way"
    );
    // And the waiting ones succeed once it arrives (one fetch for all).
    for waiter in waiting {
        let reply = waiter.await.unwrap();
        assert_eq!(reply["data"]["message"], "Token refreshed", "{reply}");
    }
    assert_eq!(upgrade.await.unwrap(), 101);
    assert_eq!(idp.count(JWKS), 2);
}
