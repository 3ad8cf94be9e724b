//! Limits under abuse (issue 14): one client abusing an expensive path must
//! not stall everyone else. Timings are printed for docs/operations.md and
//! asserted only with generous liveness bounds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use roomcast_tests::tokens::{now_s, rs256, rsa_keypair};
use roomcast_tests::{test_config, Auth, Client, TestServer, TIMEOUT};
use serde_json::json;

/// A server that verifies RS256 tokens, with a rate limit that lets one
/// client pipeline hundreds of requests.
async fn rs256_server() -> (TestServer, Vec<u8>, tempfile_guard::Guard) {
    let (dir, private, public) = rsa_keypair();
    let private_pem = std::fs::read(&private).unwrap();
    let mut config = test_config();
    config.auth.algorithm = "RS256".to_owned();
    config.auth.jwt_secret = None;
    config.auth.public_key_file = Some(public);
    config.limits.messages_per_second = 10_000;
    config.limits.message_burst = 10_000;
    // The pipelined refreshes wait behind each other's verification in
    // the core, like messages behind an engine answer (bounded by this).
    config.limits.engine_deferred_messages_max = 2_000;
    let server = TestServer::start(config).await;
    (server, private_pem, tempfile_guard::Guard(dir))
}

mod tempfile_guard {
    /// Keeps the key directory alive for the test.
    pub struct Guard(#[allow(dead_code)] pub tempfile::TempDir);
}

/// RS256 verification of `refresh` tokens runs off the hub: while one
/// client has hundreds of refreshes being verified, another client's ping
/// is answered about as fast as without them (it used to wait behind every
/// verification queued before it), and the refreshing client still gets
/// its replies in its own order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_verification_does_not_stall_the_hub() {
    const REFRESHES: usize = 1000;
    let (server, private_pem, _keys) = rs256_server().await;
    let token = |sub: &str| {
        rs256(
            &json!({"sub": sub, "exp": now_s() as i64 + 3600}),
            &private_pem,
        )
    };
    let mut refresher = Client::connect(server.addr, Auth::Header(token("abuser"))).await;
    let mut bystander = server.client().await;

    // Baseline: one refresh round trip (mostly one verification).
    let fresh = token("abuser");
    let started = tokio::time::Instant::now();
    let reply = refresher
        .request(json!({"action": "refresh", "data": {"token": fresh}, "id": "first"}))
        .await;
    let one_refresh = started.elapsed();
    assert_eq!(reply["data"]["message"], "Token refreshed", "{reply}");
    let started = tokio::time::Instant::now();
    bystander.request(json!({"action": "ping"})).await;
    let idle_ping = started.elapsed();

    // The flood: pipelined refreshes, then a ping that must come last.
    for i in 0..REFRESHES {
        use futures_util::SinkExt;
        let text = json!({"action": "refresh", "data": {"token": fresh}, "id": i}).to_string();
        refresher
            .ws
            .feed(roomcast_tests::tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .expect("feed");
    }
    refresher
        .send_json(json!({"action": "ping", "id": "after"}))
        .await;
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    let reader = tokio::spawn(async move {
        for i in 0..REFRESHES {
            let reply = refresher.recv_json().await;
            assert_eq!(
                reply["id"], i,
                "replies keep the connection's order: {reply}"
            );
            assert_eq!(reply["data"]["message"], "Token refreshed", "{reply}");
            counter.fetch_add(1, Ordering::SeqCst);
        }
        let last = refresher.recv_json().await;
        assert_eq!(last["type"], "pong", "{last}");
        assert_eq!(last["id"], "after", "{last}");
        refresher
    });
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while answered.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refresh answered"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut worst = Duration::ZERO;
    let mut during = 0;
    while answered.load(Ordering::SeqCst) < REFRESHES / 2 && during < 20 {
        let started = tokio::time::Instant::now();
        let pong = bystander.request(json!({"action": "ping"})).await;
        assert_eq!(pong["type"], "pong");
        worst = worst.max(started.elapsed());
        during += 1;
    }
    let refresher = reader.await.expect("refresher");
    eprintln!(
        "refresh flood: one RS256 refresh {one_refresh:?}, idle ping {idle_ping:?}; \
         {REFRESHES} pipelined refreshes: bystander's worst ping {worst:?} over {during} pings"
    );
    assert!(
        during > 0,
        "the flood was over before the bystander could ping"
    );
    // A liveness bound, not a speed claim (docs/benchmarks.md has the
    // numbers): inline verification made the bystander wait behind every
    // verification queued ahead of it; off the hub it waits for none.
    let bound = Duration::from_secs(2);
    assert!(
        worst < bound,
        "a bystander's ping took {worst:?} during the refresh flood (bound {bound:?})"
    );
    refresher.close().await;
    bystander.close().await;
}

/// The inbound byte budget: client messages received and not yet handled
/// by the hub are bounded in bytes (`inbound_bytes_max`), not only in
/// count. A message that does not fit is not queued: it is answered, in
/// its place, with `SERVER_BUSY` (and not executed); the others are
/// executed as usual. Once the hub has caught up, messages fit again.
#[tokio::test]
async fn inbound_bytes_are_bounded_and_overflow_is_answered_server_busy() {
    use futures_util::SinkExt;
    use roomcast_tests::tokio_tungstenite::tungstenite::Message;
    const MESSAGES: usize = 200;
    let mut config = test_config();
    config.limits.message_bytes_max = 1024;
    config.limits.api_body_bytes_max = 1024;
    // Room for two such messages in flight.
    config.limits.inbound_bytes_max = 2048;
    config.limits.messages_per_second = 10_000;
    config.limits.message_burst = 10_000;
    let server = TestServer::start(config).await;
    let mut bystander = server.client().await;
    let mut c = server.client().await;
    for i in 0..MESSAGES {
        let pad = "p".repeat(950);
        let text = json!({"action": "ping", "id": i, "pad": pad}).to_string();
        assert!(text.len() < 1024 && text.len() > 900, "{}", text.len());
        c.ws.feed(Message::text(text)).await.expect("feed");
    }
    c.ws.flush().await.expect("flush");
    let busy = c.pongs_or_server_busy(MESSAGES).await;
    eprintln!("inbound budget of 2 KiB: {busy} of {MESSAGES} 1 KiB messages refused");
    assert!(busy > 0, "the budget was never full");
    assert!(busy < MESSAGES, "nothing got through");
    assert_eq!(
        server.metric("roomcast_server_busy_total").await,
        Some(busy as f64)
    );
    // Caught up: everything fits again.
    assert_eq!(
        c.request(json!({"action": "ping", "id": "x"})).await["type"],
        "pong"
    );
    assert_eq!(
        bystander.request(json!({"action": "ping"})).await["type"],
        "pong"
    );
    c.close().await;
    bystander.close().await;
}

// ----- the harness: the real binary under abuse ------------------------------------

mod harness {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use roomcast_tests::tokens::{now_s, rs256};
    use roomcast_tests::{binary, Auth, Client, TIMEOUT};
    use serde_json::json;

    /// The `roomcast` process, configured for RS256 (the shared
    /// [`binary::Process`] with a key pair of its own).
    pub struct Server {
        process: binary::Process,
        pub addr: SocketAddr,
        pub private_pem: Vec<u8>,
        _keys: tempfile::TempDir,
    }

    impl Server {
        pub async fn start(extra_env: &[(&str, &str)]) -> Server {
            let (keys, private, public) = roomcast_tests::tokens::rsa_keypair();
            let mut env = vec![
                ("ROOMCAST_AUTH__ALGORITHM", "RS256".to_owned()),
                (
                    "ROOMCAST_AUTH__PUBLIC_KEY_FILE",
                    public.to_string_lossy().into_owned(),
                ),
                ("ROOMCAST_SHUTDOWN_DRAIN_MS", "5000".to_owned()),
            ];
            env.extend(extra_env.iter().map(|(k, v)| (*k, (*v).to_owned())));
            let process = binary::Process::start(&[], &env).await;
            Server {
                addr: process.addr,
                process,
                private_pem: std::fs::read(private).unwrap(),
                _keys: keys,
            }
        }

        pub fn token(&self, sub: &str, scope: &str) -> String {
            let mut claims = json!({"sub": sub, "exp": now_s() as i64 + 3600});
            if !scope.is_empty() {
                claims["scope"] = json!(scope);
            }
            rs256(&claims, &self.private_pem)
        }

        /// Peak resident memory of the server process so far, in KiB.
        pub fn peak_rss_kib(&self) -> u64 {
            self.process.rss_kib().1
        }

        /// SIGTERM; the exit status and how long the exit took.
        pub async fn stop(self) -> (std::process::ExitStatus, Duration) {
            self.process.stop().await
        }
    }

    /// A well-behaved client's ping round trips while `running` is set
    /// (about 30 a second: within the default rate limit of 50). Every
    /// ping must be answered with its pong.
    pub async fn bystander_rtts(
        mut client: Client,
        running: Arc<AtomicBool>,
    ) -> (Client, Vec<Duration>) {
        let mut rtts = Vec::new();
        while running.load(Ordering::SeqCst) || rtts.len() < 5 {
            let started = tokio::time::Instant::now();
            let pong = client.request(json!({"action": "ping"})).await;
            assert_eq!(pong["type"], "pong", "{pong}");
            rtts.push(started.elapsed());
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        (client, rtts)
    }

    /// Publishes numbered broadcasts to `room` while `running` is set, one
    /// request per connection; returns how many, and the slowest answer.
    pub async fn publisher(
        addr: SocketAddr,
        token: String,
        room: &'static str,
        running: Arc<AtomicBool>,
    ) -> (u64, Duration) {
        let mut published = 0;
        let mut slowest = Duration::ZERO;
        while running.load(Ordering::SeqCst) || published < 5 {
            let started = tokio::time::Instant::now();
            let response = roomcast_tests::api_post(
                addr,
                "/api/broadcast",
                Some(&token),
                json!({"room": room, "type": "queue_status", "data": {"n": published + 1}})
                    .to_string(),
            )
            .await;
            assert_eq!(response.status, 200, "{response:?}");
            slowest = slowest.max(started.elapsed());
            published += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (published, slowest)
    }

    /// Reads `count` broadcasts and checks they are seq 1..=count in order.
    pub async fn receives_everything(client: &mut Client, count: u64) {
        for seq in 1..=count {
            let message = client.recv_json().await;
            assert_eq!(
                message["seq"], seq,
                "a well-behaved member lost or reordered: {message}"
            );
        }
    }

    /// p50, p99 and max.
    pub fn summary(rtts: &mut [Duration]) -> (Duration, Duration, Duration) {
        rtts.sort();
        let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q).round() as usize];
        (at(0.5), at(0.99), *rtts.last().unwrap())
    }

    pub async fn connect_all(addr: SocketAddr, auths: Vec<Auth>) -> Vec<Client> {
        let mut clients = Vec::with_capacity(auths.len());
        for auth in auths {
            clients.push(
                tokio::time::timeout(TIMEOUT, Client::connect(addr, auth))
                    .await
                    .expect("connect"),
            );
        }
        clients
    }
}

/// Limits under abuse, against the real binary with an RS256 key and the
/// default limits: a few hundred connections flood `refresh` (RS256
/// verification), then a few hundred flood WebSocket pings, then a hundred
/// send 60 KiB messages as fast as they can, while a bystander pings and a
/// member receives a stream of broadcasts. The bystander's round trip
/// stays bounded, the member loses nothing, the flooders are limited
/// (pings: closed with 1008; big messages: the inbound byte budget), the
/// server's peak RSS stays under a documented ceiling, and it exits 0
/// within its drain time. The numbers go to docs/operations.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_under_abuse() {
    use futures_util::{SinkExt, StreamExt};
    use harness::*;
    use roomcast_tests::tokio_tungstenite::tungstenite::Message;
    use std::sync::atomic::AtomicBool;

    const ABUSERS: usize = 300;
    const REFRESHES_EACH: usize = 10;
    const PACED_EACH: usize = 120;
    const BIG_SENDERS: usize = 50;
    const BIG_EACH: usize = 40;
    /// The documented ceiling (docs/operations.md section 9) on the
    /// server's peak RSS through all of this, with the default limits.
    const RSS_CEILING_KIB: u64 = 128 * 1024;
    const PINGS_EACH: usize = 500;

    let server = Server::start(&[]).await;
    let addr = server.addr;
    let publish_token = server.token("backend", "publish");
    let mut report = Vec::new();

    // Idle baseline.
    let bystander = Client::connect(addr, Auth::None).await;
    let running = Arc::new(AtomicBool::new(false));
    let (bystander, mut idle) = bystander_rtts(bystander, running.clone()).await;
    let (p50, p99, max) = summary(&mut idle);
    report.push(format!(
        "idle | bystander p50 {p50:?} p99 {p99:?} max {max:?} | peak RSS {} KiB",
        server.peak_rss_kib()
    ));

    // Phase 1: refresh flood with RS256.
    let fresh = server.token("abuser", "");
    let auths = (0..ABUSERS)
        .map(|_| Auth::Header(server.token("abuser", "")))
        .collect();
    let abusers = connect_all(addr, auths).await;
    let mut member = Client::connect(addr, Auth::None).await;
    member.join("news").await;
    let running = Arc::new(AtomicBool::new(true));
    let watcher = tokio::spawn(bystander_rtts(bystander, running.clone()));
    let publishing = tokio::spawn(publisher(
        addr,
        publish_token.clone(),
        "news",
        running.clone(),
    ));
    let started = tokio::time::Instant::now();
    let mut floods = Vec::new();
    for mut abuser in abusers {
        let fresh = fresh.clone();
        floods.push(tokio::spawn(async move {
            for i in 0..REFRESHES_EACH {
                let text =
                    json!({"action": "refresh", "data": {"token": fresh}, "id": i}).to_string();
                abuser.ws.feed(Message::text(text)).await.expect("feed");
            }
            abuser.ws.flush().await.expect("flush");
            for i in 0..REFRESHES_EACH {
                let reply = abuser.recv_json().await;
                assert_eq!(reply["id"], i, "{reply}");
                assert_eq!(reply["data"]["message"], "Token refreshed", "{reply}");
            }
            abuser
        }));
    }
    let mut abusers = Vec::new();
    for flood in floods {
        abusers.push(flood.await.expect("refresher"));
    }
    let flood_time = started.elapsed();
    running.store(false, Ordering::SeqCst);
    let (bystander, mut rtts) = watcher.await.expect("bystander");
    let (published, slowest_publish) = publishing.await.expect("publisher");
    receives_everything(&mut member, published).await;
    let (p50, p99, max) = summary(&mut rtts);
    report.push(format!(
        "{ABUSERS} connections x {REFRESHES_EACH} pipelined RS256 refreshes ({} verifications in {flood_time:?}) | bystander p50 {p50:?} p99 {p99:?} max {max:?} over {} pings | peak RSS {} KiB | member got all {published} broadcasts (slowest publish {slowest_publish:?})",
        ABUSERS * REFRESHES_EACH,
        rtts.len(),
        server.peak_rss_kib()
    ));
    assert!(
        max < Duration::from_secs(2),
        "bystander round trip {max:?} during the refresh flood"
    );
    for abuser in abusers {
        abuser.close().await;
    }

    // Phase 2: WebSocket pings, first at 40/s each (within the default
    // limit of 50/s: all answered), then as fast as possible (beyond the
    // burst of 100: no pong; after 20 violations, close 1008).
    let auths = (0..ABUSERS).map(|_| Auth::None).collect();
    let flooders = connect_all(addr, auths).await;
    let running = Arc::new(AtomicBool::new(true));
    let watcher = tokio::spawn(bystander_rtts(bystander, running.clone()));
    let publishing = tokio::spawn(publisher(
        addr,
        publish_token.clone(),
        "news-2",
        running.clone(),
    ));
    member.join("news-2").await;
    let started = tokio::time::Instant::now();
    let mut floods = Vec::new();
    for flooder in flooders {
        floods.push(tokio::spawn(async move {
            let (mut sink, mut stream) = flooder.ws.split();
            let sending = tokio::spawn(async move {
                // Within the limit first: 40 pings a second for 3 s.
                let mut tick = tokio::time::interval(Duration::from_millis(25));
                for i in 0..PACED_EACH {
                    tick.tick().await;
                    if sink
                        .send(Message::Ping(vec![i as u8].into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                // Then as fast as it can.
                for i in 0..PINGS_EACH {
                    if sink
                        .feed(Message::Ping(vec![i as u8].into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                let _ = sink.flush().await;
            });
            let mut pongs = 0;
            let code = loop {
                match tokio::time::timeout(TIMEOUT, stream.next())
                    .await
                    .expect("flooder")
                {
                    Some(Ok(Message::Pong(_))) => pongs += 1,
                    Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break None,
                }
            };
            let _ = sending.await;
            (code, pongs)
        }));
    }
    let mut closed_1008 = 0;
    let mut pongs_total = 0;
    for flood in floods {
        let (code, pongs) = flood.await.expect("flooder");
        closed_1008 += usize::from(code == Some(1008));
        pongs_total += pongs;
    }
    let flood_time = started.elapsed();
    running.store(false, Ordering::SeqCst);
    let (bystander, mut rtts) = watcher.await.expect("bystander");
    let (published, slowest_publish) = publishing.await.expect("publisher");
    receives_everything(&mut member, published).await;
    let (p50, p99, max) = summary(&mut rtts);
    report.push(format!(
        "{ABUSERS} connections x ({PACED_EACH} WebSocket pings at 40/s, then {PINGS_EACH} at once) ({flood_time:?}; {pongs_total} pongs, {closed_1008} closed with 1008) | bystander p50 {p50:?} p99 {p99:?} max {max:?} over {} pings | peak RSS {} KiB | member got all {published} broadcasts (slowest publish {slowest_publish:?})",
        rtts.len(),
        server.peak_rss_kib()
    ));
    assert_eq!(
        closed_1008, ABUSERS,
        "every ping flooder is cut off with 1008"
    );
    assert!(
        pongs_total <= ABUSERS * (PACED_EACH + 110),
        "{pongs_total} pongs: pings beyond the allowance were answered"
    );
    assert!(
        max < Duration::from_secs(2),
        "bystander round trip {max:?} during the ping flood"
    );

    // Phase 3: big messages as fast as they can be sent: the inbound byte
    // budget (16 MiB by default) bounds what waits for the hub, whatever
    // the count; what does not fit is answered SERVER_BUSY.
    let auths = (0..BIG_SENDERS).map(|_| Auth::None).collect();
    let senders = connect_all(addr, auths).await;
    let running = Arc::new(AtomicBool::new(true));
    let watcher = tokio::spawn(bystander_rtts(bystander, running.clone()));
    let publishing = tokio::spawn(publisher(
        addr,
        publish_token.clone(),
        "news-3",
        running.clone(),
    ));
    member.join("news-3").await;
    let started = tokio::time::Instant::now();
    let pad = "b".repeat(60 * 1024);
    let mut floods = Vec::new();
    for mut sender in senders {
        let pad = pad.clone();
        floods.push(tokio::spawn(async move {
            for i in 0..BIG_EACH {
                // Cheap to build (the test's own CPU is shared with the server).
                let text = format!(r#"{{"action":"ping","id":{i},"pad":"{pad}"}}"#);
                sender.ws.feed(Message::text(text)).await.expect("feed");
                tokio::task::yield_now().await;
            }
            sender.ws.flush().await.expect("flush");
            let (mut pongs, mut busy) = (0, 0);
            for i in 0..BIG_EACH {
                let reply = sender.recv_json().await;
                assert_eq!(reply["id"], i, "one answer per message, in order: {reply}");
                match (reply["type"].as_str(), reply["data"]["code"].as_str()) {
                    (Some("pong"), _) => pongs += 1,
                    (Some("error"), Some("SERVER_BUSY")) => busy += 1,
                    _ => panic!("{reply}"),
                }
            }
            sender.close().await;
            (pongs, busy)
        }));
    }
    let (mut pongs_total, mut busy_total) = (0, 0);
    for flood in floods {
        let (pongs, busy) = flood.await.expect("big sender");
        pongs_total += pongs;
        busy_total += busy;
    }
    let flood_time = started.elapsed();
    running.store(false, Ordering::SeqCst);
    let (bystander, mut rtts) = watcher.await.expect("bystander");
    let (published, slowest_publish) = publishing.await.expect("publisher");
    receives_everything(&mut member, published).await;
    let (p50, p99, max) = summary(&mut rtts);
    let rss = server.peak_rss_kib();
    report.push(format!(
        "{BIG_SENDERS} connections x {BIG_EACH} messages of 60 KiB ({} MiB in {flood_time:?}; {pongs_total} executed, {busy_total} SERVER_BUSY) | bystander p50 {p50:?} p99 {p99:?} max {max:?} over {} pings | peak RSS {rss} KiB | member got all {published} broadcasts (slowest publish {slowest_publish:?})",
        BIG_SENDERS * BIG_EACH * 60 / 1024,
        rtts.len(),
    ));
    assert!(
        rss < RSS_CEILING_KIB,
        "peak RSS {rss} KiB over the ceiling of {RSS_CEILING_KIB} KiB"
    );
    assert!(
        max < Duration::from_secs(2),
        "bystander round trip {max:?} during the big-message flood"
    );

    bystander.close().await;
    member.close().await;
    let rss = server.peak_rss_kib();
    let (status, exit_time) = server.stop().await;
    report.push(format!(
        "SIGTERM: exit {status} after {exit_time:?}; peak RSS {rss} KiB"
    ));
    for line in &report {
        eprintln!("abuse: {line}");
    }
    assert!(status.success(), "{status}");
    assert!(
        exit_time < Duration::from_secs(5 + 2 + 5),
        "exit took {exit_time:?}"
    );
}
