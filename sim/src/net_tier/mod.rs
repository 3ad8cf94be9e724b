//! Tier 2: the production server, `roomcast_net::serve`, unchanged inside
//! turmoil. Client hosts multiplex many real WebSocket clients each; a
//! publisher host uses the HTTP API; a controller injects network faults
//! between steps. Everything observed goes through the shared [`Oracle`].
//!
//! Phases (simulated time): clients connect (0-3 s), the workload runs with
//! faults for `seconds`, then every fault heals and clients go quiet long
//! enough for dead connections to time out; the oracle then checks
//! completeness against `/ws/status`; finally every client closes and the
//! server must hold no connection and no room.
//!
//! Fault model: partitions between a client host and the server (turmoil
//! drops every segment, like a cable pull: the clients of that host abandon
//! their connections, as a TCP keepalive would, and reconnect after the
//! repair, while the server must notice through its heartbeat or its
//! slow-consumer bound), holds (segments delayed, then released in order),
//! latency changes, client crashes (socket dropped without a close
//! handshake), clients that stop reading, oversize messages and bursts of
//! malformed frames.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant as WallInstant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use roomcast_core::oracle::{ClientKey, Observed, Oracle, Sent, Violation};
use roomcast_core::Limits;
use roomcast_net::auth::{Claims, TokenVerifier};
use roomcast_net::{Clock, IdSource, Listener, Metrics, ServeOptions, ServerConfig};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::report::{Failure, Recent, Summary};
use crate::rng::{SimRng, TraceHash};

const SERVER: &str = "server";
const PORT: u16 = 8080;
const SECRET: &str = "sim-secret";
const START_UNIX_MS: i64 = 1_760_000_000_000;
/// Client hosts: many clients share a host (links grow as hosts²).
const CLIENT_HOSTS: usize = 8;
const CONNECT_SPREAD_MS: u64 = 3_000;

/// The simulation's phases, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Clients connect, workload runs, faults are injected.
    Working,
    /// Faults healed; clients stop acting, resume reading, stay connected.
    Quiet,
    /// Clients close normally.
    Closing,
}

/// Everything the hosts and the controller share (one thread: `Rc<RefCell>`).
struct World {
    oracle: Oracle,
    phase: Phase,
    trace: TraceHash,
    recent: Recent,
    failure: Option<(String, String)>,
    next_key: ClientKey,
    deliveries: u64,
    closes: BTreeMap<u16, u64>,
    /// Joins with `since` answered (recovered, refused).
    recoveries: (u64, u64),
    /// Per client host: bumped at each partition; clients abandon
    /// connections opened under an older generation.
    partition_generation: Vec<u64>,
    /// Clients still running their task.
    clients_running: usize,
    /// Set by the publisher when its final checks are done.
    finished: bool,
    now_ms: u64,
}

type Shared = Rc<RefCell<World>>;

impl World {
    fn fail(&mut self, invariant: &str, detail: String) {
        if self.failure.is_none() {
            self.failure = Some((invariant.to_owned(), detail));
        }
    }

    fn check(&mut self, result: Result<(), Violation>) {
        if let Err(v) = result {
            let detail = v.to_string();
            self.fail(v.invariant, detail);
        }
    }
}

/// The server's listener over turmoil's TCP.
struct TurmoilListener(turmoil::net::TcpListener);

impl Listener for TurmoilListener {
    type Io = turmoil::net::TcpStream;

    async fn accept(&mut self) -> std::io::Result<(Self::Io, SocketAddr)> {
        self.0.accept().await
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// The limits a seed runs with (small timeouts so dead peers are noticed quickly).
fn draw_limits(rng: &mut SimRng) -> Limits {
    let ping_interval_ms = rng.range(500, 1_500);
    Limits {
        message_bytes_max: 4_096,
        outbound_queue_bytes_max: [8_192, 65_536, 1 << 20][rng.below(3) as usize],
        rooms_per_connection_max: rng.range(2, 6) as usize,
        messages_per_second: rng.range(20, 100) as u32,
        message_burst: rng.range(10, 40) as u32,
        rate_violations_max: rng.range(2, 10) as u32,
        ping_interval_ms,
        idle_timeout_ms: ping_interval_ms * 3,
        handshake_timeout_ms: 5_000,
        connections_max: 100_000,
        connections_per_ip_max: 100_000,
        history_messages_max: [0, 5, 100][rng.below(3) as usize],
        history_age_ms: rng.range(1_000, 4_000),
        ..Limits::default()
    }
}

/// Set by the panic hook: a panic anywhere (a server task included) fails the run.
static PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, std::sync::atomic::Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// Runs one net-tier simulation with `clients` clients and `seconds` of workload.
pub fn run(seed: u64, clients: usize, seconds: u64) -> Result<Summary, Failure> {
    install_panic_hook();
    PANICKED.store(false, std::sync::atomic::Ordering::SeqCst);
    let started = WallInstant::now();
    let mut rng = SimRng::new(seed ^ 0x7E7);
    let limits = draw_limits(&mut rng);
    let rooms = rng.range(2, 20);
    let quiet_ms = limits.idle_timeout_ms * 2 + 3_000;
    let work_ms = CONNECT_SPREAD_MS + seconds * 1000;
    let reproduce = format!("cargo run --release -p roomcast-sim -- --tier net --seed {seed} --clients {clients} --net-seconds {seconds}");

    let world: Shared = Rc::new(RefCell::new(World {
        oracle: Oracle::new(),
        phase: Phase::Working,
        trace: TraceHash::default(),
        recent: Recent::default(),
        failure: None,
        next_key: 1,
        deliveries: 0,
        closes: BTreeMap::new(),
        recoveries: (0, 0),
        partition_generation: vec![0; CLIENT_HOSTS],
        clients_running: clients,
        finished: false,
        now_ms: 0,
    }));

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_millis(work_ms + quiet_ms + 120_000))
        .tick_duration(Duration::from_millis(2))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(rng.range(2, 40)))
        .tcp_capacity(1024)
        .build();

    let room_options = roomcast_core::RoomOptions {
        conflate_prefixes: if rng.chance(500_000) {
            vec!["room-".into()]
        } else {
            Vec::new()
        },
        presence_diff_prefixes: if rng.chance(500_000) {
            vec!["room-1".into()]
        } else {
            Vec::new()
        },
        conflation_window_ms: rng.range(20, 300),
    };
    let mut config = ServerConfig {
        limits: limits.clone(),
        rooms: room_options,
        close_flush_timeout_ms: 1_000,
        shutdown_drain_ms: 1_000,
        ..ServerConfig::default()
    };
    config.auth.jwt_secret = Some(SECRET.to_owned());
    sim.host(SERVER, move || {
        let config = config.clone();
        async move {
            let listener =
                turmoil::net::TcpListener::bind((IpAddr::from(Ipv4Addr::UNSPECIFIED), PORT))
                    .await?;
            let options = ServeOptions {
                clock: Clock::starting_at(START_UNIX_MS),
                ids: IdSource::Seeded(seed),
                metrics: Metrics::new(),
            };
            roomcast_net::serve(
                TurmoilListener(listener),
                config,
                options,
                std::future::pending(),
            )
            .await?;
            Ok(())
        }
    });

    let signer = TokenVerifier::from_config(&roomcast_net::config::AuthConfig {
        jwt_secret: Some(SECRET.to_owned()),
        ..Default::default()
    })
    .map_err(|e| failure(seed, "setup", e, &world, &reproduce))?;
    let token = |sub: &str, scope: Option<&str>| {
        signer
            .sign(&Claims {
                sub: sub.to_owned(),
                exp: (START_UNIX_MS / 1000 + 86_400) as f64,
                nbf: None,
                iat: None,
                scope: scope.map(str::to_owned),
            })
            .unwrap_or_default()
    };

    for host in 0..CLIENT_HOSTS {
        let share = clients / CLIENT_HOSTS + usize::from(host < clients % CLIENT_HOSTS);
        let mut specs = Vec::with_capacity(share);
        for _ in 0..share {
            let user = rng.below(10);
            let token = rng
                .chance(500_000)
                .then(|| token(&format!("user-{user}"), None));
            specs.push(ClientSpec {
                rng: rng.fork(),
                token,
                rooms,
                host,
                resume: Vec::new(),
            });
        }
        let world = world.clone();
        sim.client(format!("client-{host}"), async move {
            let local = tokio::task::LocalSet::new();
            for spec in specs {
                local.spawn_local(client_task(world.clone(), spec));
            }
            local.await;
            Ok(())
        });
    }

    let publisher = PublisherSpec {
        rng: rng.fork(),
        token: token("publisher", Some("publish")),
        rooms,
        work_ms,
        quiet_ms,
    };
    let publisher_world = world.clone();
    sim.client("publisher", async move {
        publisher_task(publisher_world, publisher).await;
        Ok(())
    });

    // The controller: step the world, inject faults while working, heal after.
    let mut faults = rng.fork();
    let fault_rate_per_million = faults.range(0, 400);
    let mut active: Vec<(u64, Fault)> = Vec::new();
    let mut steps: u64 = 0;
    loop {
        let elapsed_ms = sim.elapsed().as_millis() as u64;
        {
            let mut w = world.borrow_mut();
            w.now_ms = elapsed_ms;
            if w.phase == Phase::Working && elapsed_ms >= work_ms {
                w.phase = Phase::Quiet;
            }
            if w.phase == Phase::Quiet && elapsed_ms >= work_ms + quiet_ms + 2_000 {
                // The publisher has run its quiet-state checks by now.
                w.phase = Phase::Closing;
            }
        }
        let phase = world.borrow().phase;
        if phase == Phase::Working
            && elapsed_ms > CONNECT_SPREAD_MS
            && faults.chance(fault_rate_per_million)
        {
            let fault = Fault::draw(&mut faults);
            let until = elapsed_ms + faults.range(200, 3_000);
            apply(&sim, &world, fault, true);
            world
                .borrow_mut()
                .recent
                .push(elapsed_ms * 1000, 0, fault.name(), fault.host() as u64);
            active.push((until, fault));
        }
        // Heal faults whose time is up, and all of them once the workload ends.
        let mut index = 0;
        while index < active.len() {
            if phase != Phase::Working || active[index].0 <= elapsed_ms {
                let (_, fault) = active.swap_remove(index);
                apply(&sim, &world, fault, false);
            } else {
                index += 1;
            }
        }
        let done = match sim.step() {
            Ok(done) => done,
            Err(error) => {
                return Err(failure(
                    seed,
                    "server never panics or fails",
                    error.to_string(),
                    &world,
                    &reproduce,
                ));
            }
        };
        steps += 1;
        if PANICKED.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(failure(
                seed,
                "server never panics",
                "a task panicked (see the message above)".into(),
                &world,
                &reproduce,
            ));
        }
        if let Some((invariant, detail)) = world.borrow().failure.clone() {
            return Err(failure(seed, &invariant, detail, &world, &reproduce));
        }
        if done {
            break;
        }
    }
    let w = world.borrow();
    if !w.finished {
        drop(w);
        return Err(failure(
            seed,
            "liveness",
            "the publisher never finished its final checks".into(),
            &world,
            &reproduce,
        ));
    }
    Ok(Summary {
        tier: "net",
        seed,
        clients: w.next_key - 1,
        events: steps,
        deliveries: w.deliveries,
        closes: w.closes.clone(),
        recoveries: w.recoveries,
        engine_faults: None,
        trace_hash: w.trace.hex(),
        wall: started.elapsed(),
    })
}

fn failure(seed: u64, invariant: &str, detail: String, world: &Shared, reproduce: &str) -> Failure {
    Failure {
        tier: "net",
        seed,
        invariant: invariant.to_owned(),
        detail,
        recent: world.borrow().recent.lines(),
        reproduce: reproduce.to_owned(),
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Cut a client host off the server.
    Partition(usize),
    /// Delay everything between a client host and the server.
    Hold(usize),
    /// Raise a link's latency.
    Latency(usize, u64),
}

impl Fault {
    fn draw(rng: &mut SimRng) -> Fault {
        let host = rng.below(CLIENT_HOSTS as u64) as usize;
        match rng.below(3) {
            0 => Fault::Partition(host),
            1 => Fault::Hold(host),
            _ => Fault::Latency(host, rng.range(20, 300)),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Fault::Partition(_) => "fault-partition",
            Fault::Hold(_) => "fault-hold",
            Fault::Latency(..) => "fault-latency",
        }
    }

    fn host(&self) -> usize {
        match *self {
            Fault::Partition(h) | Fault::Hold(h) | Fault::Latency(h, _) => h,
        }
    }
}

fn apply(sim: &turmoil::Sim<'_>, world: &Shared, fault: Fault, start: bool) {
    let host = format!("client-{}", fault.host());
    match (fault, start) {
        (Fault::Partition(index), true) => {
            sim.partition(host.as_str(), SERVER);
            world.borrow_mut().partition_generation[index] += 1;
        }
        (Fault::Partition(_), false) => sim.repair(host.as_str(), SERVER),
        (Fault::Hold(_), true) => sim.hold(host.as_str(), SERVER),
        (Fault::Hold(_), false) => sim.release(host.as_str(), SERVER),
        (Fault::Latency(_, ms), true) => {
            sim.set_link_latency(host.as_str(), SERVER, Duration::from_millis(ms))
        }
        (Fault::Latency(..), false) => {
            sim.set_link_latency(host.as_str(), SERVER, Duration::from_millis(1))
        }
    }
}

struct ClientSpec {
    rng: SimRng,
    token: Option<String>,
    rooms: u64,
    host: usize,
    /// Where the last connection left off: (room, epoch, seq) to recover on reconnect.
    resume: Vec<(String, String, u64)>,
}

/// How one connection ended.
enum Ended {
    /// The client should reconnect (crash, abandon, server close).
    Reconnect,
    /// The run is over for this client.
    Done,
}

async fn client_task(world: Shared, mut spec: ClientSpec) {
    tokio::time::sleep(Duration::from_millis(spec.rng.below(CONNECT_SPREAD_MS))).await;
    loop {
        if world.borrow().phase == Phase::Closing {
            break;
        }
        match connection(&world, &mut spec).await {
            Ended::Done => break,
            Ended::Reconnect => {
                tokio::time::sleep(Duration::from_millis(spec.rng.range(100, 1_000))).await
            }
        }
    }
    world.borrow_mut().clients_running -= 1;
}

/// One WebSocket connection of a client, from connect to its end.
async fn connection(world: &Shared, spec: &mut ClientSpec) -> Ended {
    let generation = world.borrow().partition_generation[spec.host];
    let connect = async {
        let stream = turmoil::net::TcpStream::connect((SERVER, PORT))
            .await
            .ok()?;
        let url = match &spec.token {
            Some(token) => format!("ws://{SERVER}:{PORT}/ws/connect?token={token}"),
            None => format!("ws://{SERVER}:{PORT}/ws/connect"),
        };
        let mut config = WebSocketConfig::default();
        config.read_buffer_size = 4096;
        tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .ok()
            .map(|(ws, _)| ws)
    };
    let Ok(Some(mut ws)) = tokio::time::timeout(Duration::from_secs(3), connect).await else {
        return Ended::Reconnect;
    };
    let key = {
        let mut w = world.borrow_mut();
        let key = w.next_key;
        w.next_key += 1;
        w.oracle.opened(key);
        let at = w.now_ms * 1000;
        w.recent.push(at, key, "connected", spec.host as u64);
        key
    };
    let mut next_request: u64 = 0;
    let mut stalled = false;
    // Reconnect with recovery: rejoin where the last connection left off.
    for (room, epoch, seq) in std::mem::take(&mut spec.resume) {
        next_request += 1;
        let id = next_request;
        {
            let mut w = world.borrow_mut();
            let result = w.oracle.sent(
                key,
                id.to_string(),
                Sent::Recover(room.clone(), epoch.clone(), seq),
            );
            w.check(result);
        }
        let text = json!({"action": "join", "data": {"room": room, "since": {"epoch": epoch, "seq": seq}}, "id": id});
        if ws.send(Message::text(text.to_string())).await.is_err() {
            break;
        }
    }
    // Ends this connection in the oracle; returns where the client was, to resume from.
    let end = |world: &Shared, code: Option<u16>, what: &'static str| {
        let mut w = world.borrow_mut();
        let positions = w.oracle.positions(key);
        let result = w.oracle.ended(key, code);
        w.check(result);
        if let Some(code) = code {
            *w.closes.entry(code).or_default() += 1;
        }
        w.trace.number(key);
        w.trace.bytes(what.as_bytes());
        let at = w.now_ms * 1000;
        w.recent.push(at, key, what, u64::from(code.unwrap_or(0)));
        positions
    };
    loop {
        let (phase, abandoned) = {
            let w = world.borrow();
            (w.phase, w.partition_generation[spec.host] != generation)
        };
        if abandoned {
            // The network was cut: a real client's keepalive gives up on the socket.
            spec.resume = end(world, None, "abandoned");
            return Ended::Reconnect;
        }
        if phase >= Phase::Quiet {
            stalled = false;
        }
        let gap = Duration::from_millis(spec.rng.range(50, 800));
        tokio::select! {
            biased;
            message = ws.next(), if !stalled => {
                if world.borrow().partition_generation[spec.host] != generation {
                    continue; // handled as abandoned at the top of the loop
                }
                match message {
                    Some(Ok(Message::Text(text))) => {
                        let observed = Observed::parse(text.as_str()).unwrap_or_default();
                        let mut w = world.borrow_mut();
                        w.trace.number(key);
                        w.trace.bytes(text.as_bytes());
                        if let Some(seq) = observed.seq {
                            w.deliveries += 1;
                            let at = w.now_ms * 1000;
                            w.recent.push(at, key, "recv-seq", seq);
                        }
                        match observed.data.recovered.as_ref().and_then(Value::as_bool) {
                            Some(true) => w.recoveries.0 += 1,
                            Some(false) => w.recoveries.1 += 1,
                            None => {}
                        }
                        let result = w.oracle.received(key, &observed);
                        w.check(result);
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.map(|f| u16::from(f.code));
                        spec.resume = end(world, code, "server-close");
                        // Finish the close handshake.
                        let _ = tokio::time::timeout(Duration::from_secs(1), async { while let Some(Ok(_)) = ws.next().await {} }).await;
                        return if world.borrow().phase == Phase::Closing { Ended::Done } else { Ended::Reconnect };
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        spec.resume = end(world, None, "lost");
                        return Ended::Reconnect;
                    }
                }
            }
            _ = tokio::time::sleep(gap) => {
                match phase {
                    Phase::Working => {
                        if let Some(ended) = act(world, spec, key, &mut ws, &mut next_request, &mut stalled).await {
                            return ended;
                        }
                    }
                    Phase::Quiet => {}
                    Phase::Closing => {
                        let _ = ws.close(None).await;
                        let _ = tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = ws.next().await {} }).await;
                        end(world, None, "client-close");
                        return Ended::Done;
                    }
                }
            }
        }
    }
}

type ClientSocket = tokio_tungstenite::WebSocketStream<turmoil::net::TcpStream>;

/// One random client action. `Some` when the connection ended.
async fn act(
    world: &Shared,
    spec: &mut ClientSpec,
    key: ClientKey,
    ws: &mut ClientSocket,
    next_request: &mut u64,
    stalled: &mut bool,
) -> Option<Ended> {
    let room = format!("room-{}", spec.rng.below(spec.rooms));
    let mut request = |what: Sent, text: &dyn Fn(u64) -> String| {
        *next_request += 1;
        let id = *next_request;
        let mut w = world.borrow_mut();
        let result = w.oracle.sent(key, id.to_string(), what);
        w.check(result);
        text(id)
    };
    let choice = spec.rng.below(1000);
    let text = match choice {
        0..=349 => request(Sent::Join(room.clone()), &|id| {
            json!({"action": "join", "data": {"room": room}, "id": id}).to_string()
        }),
        350..=499 => request(Sent::Leave(room.clone()), &|id| {
            json!({"action": "leave", "room": room, "id": id}).to_string()
        }),
        500..=899 => request(Sent::Other, &|id| {
            format!("{{\"action\":\"ping\",\"id\":{id}}}")
        }),
        900..=929 => request(Sent::Other, &|id| {
            format!("{{\"action\":\"nope\",\"id\":{id}}}")
        }),
        930..=949 => "{\"broken json".to_owned(),
        950..=959 => {
            // A burst of malformed frames.
            for _ in 0..spec.rng.range(5, 40) {
                if ws.feed(Message::text("[\"not an object\"]")).await.is_err() {
                    break;
                }
            }
            "null".to_owned()
        }
        960..=969 => {
            *stalled = true;
            world.borrow_mut().recent.push(0, key, "stall", 0);
            return None;
        }
        970..=979 => {
            *stalled = false;
            return None;
        }
        980..=989 => {
            // Crash: drop the socket without a close handshake.
            let mut w = world.borrow_mut();
            spec.resume = w.oracle.positions(key);
            let result = w.oracle.ended(key, None);
            w.check(result);
            let at = w.now_ms * 1000;
            w.recent.push(at, key, "crash", 0);
            return Some(Ended::Reconnect);
        }
        990..=994 => "x".repeat(5_000), // over message_bytes_max: 1009
        _ => {
            let _ = ws.send(Message::binary(vec![1, 2, 3])).await;
            return None;
        }
    };
    if ws.send(Message::text(text)).await.is_err() {
        // The server may already have closed us; the reader will see why.
    }
    None
}

struct PublisherSpec {
    rng: SimRng,
    token: String,
    rooms: u64,
    work_ms: u64,
    quiet_ms: u64,
}

/// A keep-alive HTTP/1.1 connection to the server API, reopened when the
/// server closes it (it drops idle keep-alive connections).
struct Api {
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Api {
    async fn connect() -> Option<Api> {
        let mut api = Api { sender: None };
        api.reconnect().await?;
        Some(api)
    }

    async fn reconnect(&mut self) -> Option<()> {
        let stream = turmoil::net::TcpStream::connect((SERVER, PORT))
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
            .header("host", SERVER)
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

async fn publisher_task(world: Shared, mut spec: PublisherSpec) {
    tokio::time::sleep(Duration::from_millis(CONNECT_SPREAD_MS / 2)).await;
    let Some(mut api) = Api::connect().await else {
        world
            .borrow_mut()
            .fail("publisher connects", "could not reach the API".into());
        return;
    };
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
        match api
            .call("POST", "/api/broadcast", &spec.token, Some(body))
            .await
        {
            Some((200, receipt)) => {
                let mut w = world.borrow_mut();
                let (seqs, epochs) = (&receipt["seqs"], &receipt["epochs"]);
                for room in rooms {
                    if let (Some(seq), Some(epoch)) = (seqs[&room].as_u64(), epochs[&room].as_str())
                    {
                        w.oracle.published(&room, epoch, seq);
                    }
                }
            }
            other => {
                world
                    .borrow_mut()
                    .fail("publish API answers", format!("broadcast got {other:?}"));
                return;
            }
        }
    }
    // Quiet: wait for dead connections to time out and replies to land, then check.
    tokio::time::sleep(Duration::from_millis(spec.quiet_ms)).await;
    let Some((200, status)) = api.call("GET", "/ws/status", &spec.token, None).await else {
        world
            .borrow_mut()
            .fail("status answers", "GET /ws/status failed".into());
        return;
    };
    let counted = status["active_connections"].as_u64().unwrap_or(u64::MAX) as usize;
    {
        let mut w = world.borrow_mut();
        let result = w.oracle.check_quiescent(counted);
        w.check(result);
    }
    // Closing: every client leaves; the server must end up empty.
    let deadline = spec.work_ms + spec.quiet_ms + 60_000;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let running = world.borrow().clients_running;
        let Some((200, status)) = api.call("GET", "/ws/status", &spec.token, None).await else {
            continue;
        };
        let (connections, rooms) = (
            status["active_connections"].as_u64(),
            status["rooms"].as_u64(),
        );
        if running == 0 && connections == Some(0) && rooms == Some(0) {
            break;
        }
        if world.borrow().now_ms > deadline {
            world.borrow_mut().fail(
                "no leaked connections",
                format!("after every client left the server still has {connections:?} connections and {rooms:?} rooms ({running} clients running)"),
            );
            return;
        }
    }
    world.borrow_mut().finished = true;
}
