//! `rediss://`: nodes reach a TLS-only `redis-server` (a throwaway CA and
//! certificates made by the test) and work as one; a wrong CA keeps a node
//! alive but not ready, and its log says why.

use std::time::Duration;

use roomcast_tests::binary::Process;
use roomcast_tests::cluster::{redis_config, redis_node, wait_ready};
use roomcast_tests::oracle_client::Observer;
use roomcast_tests::redis_server::RedisServer;
use roomcast_tests::tls_certs::TestCerts;
use roomcast_tests::{http, SECRET, TIMEOUT};

fn path(file: std::path::PathBuf) -> String {
    file.to_str().expect("a UTF-8 path").to_owned()
}

/// The real binary with `--redis rediss://...` and the CA (and a client
/// certificate) from the environment, and a node in this process with the
/// CA alone: a publish on one reaches a member on the other.
#[tokio::test]
async fn rediss_with_a_private_ca_works_across_nodes() {
    let certs = TestCerts::generate();
    // Client certificates optional: one node presents one, one does not.
    let redis = RedisServer::start_tls(&certs, "optional", &["--requirepass", "tls-s3cret"]);
    let url = format!("rediss://:tls-s3cret@{}/0", redis.addr);
    let (ca, cert, key) = (
        path(certs.cert("ca")),
        path(certs.cert("client")),
        path(certs.key("client")),
    );
    let a = Process::spawn(
        &["--redis", &url],
        &[
            ("ROOMCAST_JWT_SECRET", SECRET),
            ("ROOMCAST_ENGINE__REDIS_PREFIX", "tls"),
            ("ROOMCAST_ENGINE__REDIS_TLS_CA", &ca),
            ("ROOMCAST_ENGINE__REDIS_TLS_CERT", &cert),
            ("ROOMCAST_ENGINE__REDIS_TLS_KEY", &key),
        ],
    );
    let mut config = redis_config(&url, "tls");
    config.engine.redis_tls_ca = Some(certs.cert("ca"));
    let b = redis_node(config).await;
    wait_ready(a.addr).await;

    let observer = Observer::new();
    let mut on_a = observer.connect(a.addr, None).await;
    let mut on_b = observer.connect(b.addr, None).await;
    on_a.join("room").await;
    on_b.join("room").await;
    for n in 1..=5 {
        observer.publish(a.addr, "room", n).await;
    }
    let got = on_b.broadcasts("room", 5).await;
    let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5], "{got:?}");
    observer.publish(b.addr, "room", 6).await;
    observer
        .settle(
            a.addr,
            &["room"],
            &mut [&mut on_a, &mut on_b],
            &[a.addr, b.addr],
        )
        .await;
    // The password stays out of the log, the TLS URL does not.
    let log = a.log();
    assert!(log.contains("rediss://:***@127.0.0.1"), "{log}");
    assert!(!log.contains("tls-s3cret"), "{log}");
    on_a.close().await;
    on_b.close().await;
    b.shutdown().await.unwrap();
}

/// A CA that did not sign the server's certificate: the node runs, answers
/// `/healthz`, stays not ready, and logs the certificate error; so does a
/// node without a client certificate when Redis requires one; a
/// `#insecure` URL (no certificate check) is ready, with a warning.
#[tokio::test]
async fn a_wrong_ca_keeps_the_node_not_ready_and_says_why() {
    let certs = TestCerts::generate();
    let redis = RedisServer::start_tls(&certs, "no", &[]);
    let url = redis.url();
    let wrong = Process::spawn(
        &["--redis", &url],
        &[
            ("ROOMCAST_JWT_SECRET", SECRET),
            (
                "ROOMCAST_ENGINE__REDIS_TLS_CA",
                &path(certs.cert("other-ca")),
            ),
        ],
    );
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !wrong.log().contains("invalid peer certificate") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate error logged: {}",
            wrong.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = wrong.log();
    assert!(log.contains("UnknownIssuer"), "{log}");
    assert_eq!(
        http(wrong.addr, "GET", "/healthz", &[], "").await.status,
        200
    );
    let ready = http(wrong.addr, "GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(!log.contains("panicked"), "{log}");

    // A Redis that requires client certificates, and a node without one.
    let strict = RedisServer::start_tls(&certs, "yes", &[]);
    let anonymous = Process::spawn(
        &["--redis", &strict.url()],
        &[
            ("ROOMCAST_JWT_SECRET", SECRET),
            ("ROOMCAST_ENGINE__REDIS_TLS_CA", &path(certs.cert("ca"))),
        ],
    );
    while !anonymous.log().contains("CertificateRequired") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no missing client certificate logged: {}",
            anonymous.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = http(anonymous.addr, "GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 503, "{}", ready.text());

    let insecure = Process::spawn(
        &["--redis", &format!("{url}#insecure")],
        &[("ROOMCAST_JWT_SECRET", SECRET)],
    );
    wait_ready(insecure.addr).await;
    let log = insecure.log();
    assert!(log.contains("without any certificate check"), "{log}");
    // Still not ready, still alive.
    let ready = http(wrong.addr, "GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 503, "{}", ready.text());
}
