//! The WebSocket clients: each one connects (to a node of the cluster),
//! joins and leaves rooms, pings, misbehaves, stalls, crashes, and comes
//! back after every lost connection to recover its rooms with `since`.
//! Every frame sent and received goes through the oracle.

use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roomcast_core::oracle::{ClientKey, Observed, Sent};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::world::{Phase, Shared};
use super::{CONNECT_SPREAD_MS, PORT};
use crate::rng::SimRng;

pub(crate) struct ClientSpec {
    pub(crate) rng: SimRng,
    pub(crate) token: Option<String>,
    pub(crate) rooms: u64,
    /// The client host it runs on.
    pub(crate) host: usize,
    /// The server nodes' host names.
    pub(crate) nodes: Rc<[String]>,
    /// Picks the node of each connection (cluster runs only, so a
    /// one-node run draws exactly what it always drew).
    pub(crate) route: Option<SimRng>,
    /// Where the last connection left off: (room, epoch, seq) to recover on reconnect.
    pub(crate) resume: Vec<(String, String, u64)>,
}

/// How one connection ended.
enum Ended {
    /// The client should reconnect (crash, abandon, server close).
    Reconnect,
    /// The run is over for this client.
    Done,
}

pub(crate) async fn client_task(world: Shared, mut spec: ClientSpec) {
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
    // Any node: a client that lost its node comes back through another.
    let node = match &mut spec.route {
        Some(route) => route.below(spec.nodes.len() as u64) as usize,
        None => 0,
    };
    let host = spec.host;
    let generations = move |world: &Shared| {
        let w = world.borrow();
        (w.partition_generation[host], w.node_generation[node])
    };
    let generation = generations(world);
    let server = spec.nodes[node].clone();
    let connect = async {
        let stream = turmoil::net::TcpStream::connect((server.as_str(), PORT))
            .await
            .ok()?;
        let url = match &spec.token {
            Some(token) => format!("ws://{server}:{PORT}/ws/connect?token={token}"),
            None => format!("ws://{server}:{PORT}/ws/connect"),
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
        let arg = if spec.route.is_some() {
            (spec.host * 1000 + node) as u64
        } else {
            spec.host as u64
        };
        w.recent.push(at, key, "connected", arg);
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
        let phase = world.borrow().phase;
        if generations(world) != generation {
            // The network was cut, or the node's power: a real client's
            // keepalive gives up on the socket.
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
                if generations(world) != generation {
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
    // Cluster runs ask for presence (every node's members, listed by the
    // shared engine) in part of what one-node runs spend on pings, so a
    // one-node run's workload stays what it was.
    let presence = spec.route.is_some() && (500..=599).contains(&choice);
    let text = match choice {
        _ if presence => request(Sent::Other, &|id| {
            json!({"action": "presence", "data": {"room": room}, "id": id}).to_string()
        }),
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
