//! `loadgen`: real-socket load against a roomcast (or protocol-compatible)
//! server on loopback, measuring what docs/benchmarks.md reports.
//!
//! ```text
//! loadgen fanout   --addr 127.0.0.1:8080 --pid PID --members 10000 --broadcasts 200 --rate 50 --payload 100
//! loadgen pingpong --addr 127.0.0.1:8080 --pid PID --conns 100 --seconds 5
//! loadgen idle     --addr 127.0.0.1:8080 --pid PID --steps 1000,5000,15000
//! loadgen joinstorm --addr 127.0.0.1:8080 --pid PID --members 15000 --room pd-room
//! loadgen connects --addr 127.0.0.1:8080 --pid PID --conns 5000
//! ```
//!
//! `fanout --window W` keeps at most W broadcasts on their way (the next
//! publish waits until every member has the one W back): a closed loop
//! whose deliveries/s is the server's capacity, not the offered rate
//! (`scripts/bench-shards`). `--thread-prefix rc-shard` reads the
//! CPU time of the server's threads so named at every broadcast and
//! reports each one's share of the server's CPU per broadcast
//! (`procfs.rs`). `--threads N` gives loadgen itself N runtime threads
//! (a bigger machine's server outruns one).
//!
//! `fanout --publishers N` publishes over N connections per node without
//! waiting for receipts (an open loop; `publishers.rs` says why), and the
//! fan-out reports `frames_per_write` from roomcast's `/metrics`.
//!
//! `connects`: `--conns` WebSockets opened as fast as they go; connects
//! per second and the server's CPU per connect.
//!
//! `joinstorm`: `--members` connections that never read join `--room` (a
//! presence-diff room) at once; reports the server's CPU and the bytes and
//! frames it wrote (`/metrics`) until it is quiet again (less than 2% of a
//! core for 2 s), its peak RSS, and the slowest `/ws/status` meanwhile.
//!
//! `--require-all` makes a fan-out that misses any delivery exit with 1
//! (the CI smoke run uses it).
//!
//! Several nodes of one deployment (the Redis engine): `--addr` and `--pid`
//! take comma-separated lists. Members are spread round-robin over the
//! nodes, publishes go round-robin to them too, and the CPU reported is the
//! sum over every `--pid`; `--engine-pid` adds the engine's process (e.g.
//! `redis-server`), reported apart, and `--redis-addr` counts the Redis
//! commands run during the publishes (`INFO commandstats` before and after).
//!
//! Connections spread their source addresses over 127.0.0.2-127.0.0.254 so
//! more than one address's ephemeral ports are available. `--pid` is the
//! server's process id: its CPU time (all threads, from /proc) and RSS are
//! read before and after each measured phase. Each run prints a human
//! summary and one JSON line (prefixed `JSON `). Publishing needs a token
//! with the `publish` scope when the server checks one (`--token`).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

mod args;
mod error;
mod procfs;
mod publishers;

use args::{parse_args, Args};
use error::{io, LoadError};
use procfs::{peak_rss, server_usage, servers_usage, ThreadShares};
use publishers::Publishers;

type Ws = WebSocketStream<TcpStream>;

/// Opens one WebSocket from source address 127.0.0.(2 + n % 253).
async fn connect(addr: SocketAddr, n: usize) -> Result<Ws, LoadError> {
    let source = SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(127, 0, 0, 2 + (n % 253) as u8),
        0,
    ));
    let socket = TcpSocket::new_v4().map_err(io("socket"))?;
    socket.bind(source).map_err(|e| LoadError::Bind {
        source_addr: source,
        source: e,
    })?;
    let stream = socket.connect(addr).await.map_err(io("connect"))?;
    let _ = stream.set_nodelay(true);
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 16 * 1024;
    let url = format!("ws://{addr}/ws/connect");
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    // The `connected` message.
    match ws.next().await {
        Some(Ok(Message::Text(_))) => Ok(ws),
        other => Err(LoadError::NoConnected(format!("{other:?}"))),
    }
}

/// Opens `count` WebSockets, spread round-robin over `addrs`.
async fn connect_many(addrs: &[SocketAddr], count: usize) -> Result<(Vec<Ws>, f64), LoadError> {
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(count);
    // Bounded concurrency keeps the accept backlog sane.
    let mut pending = futures_util::stream::iter(0..count)
        .map(|n| connect(addrs[n % addrs.len()], n))
        .buffered(256);
    while let Some(ws) = pending.next().await {
        sockets.push(ws?);
    }
    Ok((sockets, count as f64 / started.elapsed().as_secs_f64()))
}

async fn join(ws: &mut Ws, room: &str) -> Result<(), LoadError> {
    ws.send(Message::text(
        json!({"action": "join", "data": {"room": room}}).to_string(),
    ))
    .await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.contains("Joined room") => return Ok(()),
            Some(Ok(_)) => continue,
            other => return Err(LoadError::JoinFailed(format!("{other:?}"))),
        }
    }
}

/// A keep-alive HTTP/1.1 connection for the publish API.
async fn api(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, LoadError> {
    let stream = TcpStream::connect(addr).await.map_err(io("connect"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Commands a Redis has run since its start.
struct RedisCommands {
    all: u64,
    evalsha: u64,
}

/// `INFO commandstats` of the Redis at `addr`, summed (`None` without one).
async fn redis_commands(addr: Option<SocketAddr>) -> Result<Option<RedisCommands>, LoadError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(addr) = addr else { return Ok(None) };
    let mut stream = TcpStream::connect(addr).await.map_err(io("redis"))?;
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        .await
        .map_err(io("redis"))?;
    // One bulk string: `$<length>\r\n<text>\r\n`.
    let mut reply = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let n = stream.read(&mut buffer).await.map_err(io("redis"))?;
        if n == 0 {
            return Err(LoadError::RedisClosed);
        }
        reply.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&reply);
        let Some((head, body)) = text.split_once("\r\n") else {
            continue;
        };
        let length: usize = head
            .trim_start_matches('$')
            .parse()
            .map_err(|_| LoadError::RedisAnswered(head.to_owned()))?;
        if body.len() < length {
            continue;
        }
        let mut commands = RedisCommands { all: 0, evalsha: 0 };
        for line in body[..length].lines() {
            // cmdstat_evalsha:calls=12,usec=...
            let Some((name, stats)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            commands.all += calls;
            if name == "evalsha" {
                commands.evalsha += calls;
            }
        }
        return Ok(Some(commands));
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn fanout(args: &Args) -> Result<Value, LoadError> {
    let (sockets, connects_per_sec) = connect_many(&args.addrs, args.members).await?;
    let clock = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let latencies: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::with_capacity(
        args.members * args.broadcasts,
    )));
    // done[k]: how many members have received broadcast k (each member
    // gets them in order, so its k-th message is broadcast k); the
    // publisher's window waits on it.
    let done: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.broadcasts).map(|_| AtomicU64::new(0)).collect());
    let complete = Arc::new(tokio::sync::Notify::new());
    let mut readers = Vec::new();
    for mut ws in sockets {
        join(&mut ws, &args.room).await?;
        let (received, latencies, expected) =
            (received.clone(), latencies.clone(), args.broadcasts);
        let (done, complete, members) = (done.clone(), complete.clone(), args.members as u64);
        readers.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(expected);
            while mine.len() < expected {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        // The publish time rides in data.t (µs since the loadgen's clock started).
                        if let Some(at) = text
                            .find("\"t\":")
                            .and_then(|i| text[i + 4..].split(|c: char| !c.is_ascii_digit()).next())
                            .and_then(|v| v.parse::<u64>().ok())
                        {
                            mine.push((clock.elapsed().as_micros() as u64).saturating_sub(at));
                            received.fetch_add(1, Ordering::Relaxed);
                            if done[mine.len() - 1].fetch_add(1, Ordering::AcqRel) + 1 == members {
                                complete.notify_waiters();
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(mine);
            ws
        }));
    }
    let mut publishers = Publishers::open(&args.addrs, args.publishers).await?;
    let pad = "x".repeat(args.payload.saturating_sub(40));
    let mut shares = args
        .thread_prefix
        .as_deref()
        .zip(args.pids.first())
        .map(|(prefix, &pid)| ThreadShares::new(pid, prefix));
    let (cpu_before, _) = servers_usage(&args.pids);
    let (engine_cpu_before, _) = server_usage(args.engine_pid);
    let commands_before = redis_commands(args.redis_addr).await?;
    let writes_before = frames_and_writes(&args.addrs).await;
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let mut ticker = tokio::time::interval(interval);
    for n in 0..args.broadcasts {
        ticker.tick().await;
        if args.window > 0 && n >= args.window {
            let waited = n - args.window;
            let members = args.members as u64;
            let all_got_it = async {
                loop {
                    let notified = complete.notified();
                    if done[waited].load(Ordering::Acquire) >= members {
                        return;
                    }
                    notified.await;
                }
            };
            if tokio::time::timeout(Duration::from_secs(30), all_got_it)
                .await
                .is_err()
            {
                return Err(LoadError::NotDelivered { broadcast: waited });
            }
        }
        if let Some(shares) = &mut shares {
            shares.sample();
        }
        let body = json!({"room": args.room, "type": "download_progress", "data": {"key": "bench", "t": clock.elapsed().as_micros() as u64, "pad": pad}});
        let request = hyper::Request::post("/api/broadcast")
            .header("host", "bench")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", args.token))
            .body(Full::new(Bytes::from(body.to_string())))?;
        publishers.publish(n, request).await?;
    }
    let mut receipts = publishers.finish().await?;
    let expected = (args.members * args.broadcasts) as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(shares) = &mut shares {
        shares.sample();
    }
    let (cpu_after, rss) = servers_usage(&args.pids);
    let (engine_cpu_after, _) = server_usage(args.engine_pid);
    let commands_after = redis_commands(args.redis_addr).await?;
    let writes_after = frames_and_writes(&args.addrs).await;
    let got = received.load(Ordering::Relaxed);
    for reader in readers {
        reader.abort();
    }
    if args.require_all && got != expected {
        return Err(LoadError::MissingDeliveries { got, expected });
    }
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    lat.sort_unstable();
    let cpu_us = (cpu_after - cpu_before) as f64 / 1000.0;
    let engine_cpu_us = (engine_cpu_after - engine_cpu_before) as f64 / 1000.0;
    receipts.sort_unstable();
    Ok(json!({
        "mode": "fanout", "nodes": args.addrs.len(), "members": args.members, "broadcasts": args.broadcasts, "rate": args.rate, "payload": args.payload,
        "receipt_us": {"p50": percentile(&receipts, 0.5), "p99": percentile(&receipts, 0.99)},
        "redis_commands_per_publish": commands_before.zip(commands_after).map(|(before, after)| {
            let per = |f: fn(&RedisCommands) -> u64| (f(&after) - f(&before)) as f64 / args.broadcasts.max(1) as f64;
            json!({"all": per(|c| c.all), "evalsha": per(|c| c.evalsha)})
        }),
        "engine_cpu_us_per_delivery": if got > 0 { engine_cpu_us / got as f64 } else { 0.0 },
        "connects_per_sec": connects_per_sec.round(),
        "deliveries_expected": expected, "deliveries_received": got,
        "deliveries_per_sec": (got as f64 / elapsed).round(),
        "latency_us": {"p50": percentile(&lat, 0.5), "p90": percentile(&lat, 0.9), "p99": percentile(&lat, 0.99), "max": lat.last().copied().unwrap_or(0)},
        "server_cpu_us_per_delivery": if got > 0 { cpu_us / got as f64 } else { 0.0 },
        // How many frames one socket write carried (null for a server
        // that does not export roomcast_socket_writes_total).
        "frames_per_write": frames_per_write(writes_before, writes_after),
        "server_rss_bytes": rss,
        "window": args.window,
        "shard_threads": shares.map(|s| s.report()),
    }))
}

async fn pingpong(args: &Args) -> Result<Value, LoadError> {
    let (sockets, _) = connect_many(&args.addrs, args.conns).await?;
    let replies = Arc::new(AtomicU64::new(0));
    // Replies that were not pongs (e.g. RATE_LIMITED: raise the server's rate limit for benchmarks).
    let refused = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(args.seconds);
    let (cpu_before, _) = servers_usage(&args.pids);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut ws in sockets {
        let (replies, refused) = (replies.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                if ws
                    .send(Message::text(r#"{"action":"ping"}"#))
                    .await
                    .is_err()
                {
                    return;
                }
                // Every ping gets exactly one text reply: a pong, or an error.
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(text))) => {
                            if !text.contains("\"pong\"") {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                            break;
                        }
                        Some(Ok(_)) => continue,
                        _ => return,
                    }
                }
                replies.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_after, _) = servers_usage(&args.pids);
    let n = replies.load(Ordering::Relaxed);
    Ok(json!({
        "mode": "pingpong", "conns": args.conns, "seconds": args.seconds,
        "replies": n, "replies_per_sec": (n as f64 / elapsed).round(),
        "refused": refused.load(Ordering::Relaxed),
        "server_cpu_us_per_reply": if n > 0 { (cpu_after - cpu_before) as f64 / 1000.0 / n as f64 } else { 0.0 },
    }))
}

async fn idle(args: &Args) -> Result<Value, LoadError> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, baseline) = servers_usage(&args.pids);
    let mut held: Vec<Ws> = Vec::new();
    let mut points = Vec::new();
    for &target in &args.steps {
        let more = target.saturating_sub(held.len());
        let (sockets, _) = connect_many(&args.addrs, more).await?;
        held.extend(sockets);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, rss) = servers_usage(&args.pids);
        let per_conn = rss.saturating_sub(baseline) as f64 / held.len() as f64;
        points.push(json!({"connections": held.len(), "server_rss_bytes": rss, "bytes_per_connection": per_conn.round()}));
    }
    Ok(json!({"mode": "idle", "baseline_rss_bytes": baseline, "points": points}))
}

/// One `GET path` on a fresh connection: the body, and how long it took.
async fn get(addr: SocketAddr, path: &str) -> Result<(String, Duration), LoadError> {
    let started = Instant::now();
    let mut sender = api(addr).await?;
    let request = hyper::Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok((
        String::from_utf8_lossy(&body).into_owned(),
        started.elapsed(),
    ))
}

/// Frames written and socket writes so far, summed over the nodes
/// (roomcast's `/metrics`; zeros for a server without them, e.g. the
/// Node.js peer, which is measured all the same).
async fn frames_and_writes(addrs: &[SocketAddr]) -> (f64, f64) {
    let (mut frames, mut writes) = (0.0, 0.0);
    for &addr in addrs {
        frames += metric(addr, "roomcast_messages_out_total")
            .await
            .unwrap_or(0.0);
        writes += metric(addr, "roomcast_socket_writes_total")
            .await
            .unwrap_or(0.0);
    }
    (frames, writes)
}

/// Frames per socket write between two readings of [`frames_and_writes`].
fn frames_per_write(before: (f64, f64), after: (f64, f64)) -> Option<f64> {
    let writes = after.1 - before.1;
    (writes > 0.0).then(|| (after.0 - before.0) / writes)
}

/// A counter of the server's `/metrics` (0 when absent).
async fn metric(addr: SocketAddr, name: &str) -> Result<f64, LoadError> {
    let (text, _) = get(addr, "/metrics").await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0))
}

async fn joinstorm(args: &Args) -> Result<Value, LoadError> {
    let addr = args.addrs[0];
    let pid = args.pids.first().copied();
    let (mut sockets, connects_per_s) = connect_many(&args.addrs, args.members).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bytes_before = metric(addr, "roomcast_bytes_out_total").await?;
    let frames_before = metric(addr, "roomcast_messages_out_total").await?;
    let (cpu_before, _) = server_usage(pid);
    let started = Instant::now();
    let join = json!({"action": "join", "data": {"room": args.room}}).to_string();
    for ws in &mut sockets {
        ws.send(Message::text(join.clone())).await?;
    }
    let joins_sent_s = started.elapsed().as_secs_f64();
    // Quiet: under 2% of a core for two seconds in a row.
    let mut slowest_status = Duration::ZERO;
    let mut quiet_since: Option<Instant> = None;
    let (mut cpu_last, mut at_last) = (cpu_before, Instant::now());
    let quiet_at = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let status = tokio::time::timeout(Duration::from_secs(60), get(addr, "/ws/status")).await;
        let took = match status {
            Ok(Ok((_, took))) => took,
            _ => Duration::from_secs(60),
        };
        slowest_status = slowest_status.max(took);
        let (cpu, _) = server_usage(pid);
        let busy = (cpu - cpu_last) as f64 / at_last.elapsed().as_nanos() as f64;
        (cpu_last, at_last) = (cpu, Instant::now());
        if busy < 0.02 {
            let since = *quiet_since.get_or_insert(at_last);
            if since.elapsed() >= Duration::from_secs(2) {
                break since;
            }
        } else {
            quiet_since = None;
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(LoadError::NeverQuiet);
        }
    };
    let (cpu_after, _) = server_usage(pid);
    let bytes = metric(addr, "roomcast_bytes_out_total").await? - bytes_before;
    let frames = metric(addr, "roomcast_messages_out_total").await? - frames_before;
    let busy_s = quiet_at.duration_since(started).as_secs_f64();
    println!(
        "join storm: {} members into {}: server CPU {:.2} s, busy {busy_s:.1} s, {frames} frames and {:.1} MB written, peak RSS {} MiB, slowest /ws/status {slowest_status:?}",
        args.members,
        args.room,
        (cpu_after - cpu_before) as f64 / 1e9,
        bytes / 1e6,
        peak_rss(pid) >> 20
    );
    drop(sockets);
    Ok(json!({
        "mode": "joinstorm", "members": args.members, "room": args.room,
        "connects_per_s": connects_per_s.round(), "joins_sent_s": joins_sent_s,
        "server_cpu_s": (cpu_after - cpu_before) as f64 / 1e9,
        "busy_s": busy_s, "frames_written": frames, "bytes_written": bytes,
        "peak_rss_bytes": peak_rss(pid), "slowest_status_ms": slowest_status.as_millis() as u64,
    }))
}

/// `--conns` WebSockets opened (256 handshakes in flight) and held until
/// the last one is up: connects per second, and the server's CPU per
/// connect (upgrade, admission, registration, the `connected` message).
async fn connects(args: &Args) -> Result<Value, LoadError> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (cpu_before, _) = servers_usage(&args.pids);
    let (sockets, per_sec) = connect_many(&args.addrs, args.conns).await?;
    let (cpu_after, rss) = servers_usage(&args.pids);
    let opened = sockets.len();
    drop(sockets);
    Ok(json!({
        "mode": "connects", "conns": opened,
        "connects_per_sec": per_sec.round(),
        "server_cpu_us_per_connect": (cpu_after - cpu_before) as f64 / 1000.0 / opened.max(1) as f64,
        "server_rss_bytes": rss,
    }))
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = if args.threads > 1 {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .expect("a tokio runtime");
    let result = runtime.block_on(async {
        match args.mode.as_str() {
            "fanout" => fanout(&args).await,
            "pingpong" => pingpong(&args).await,
            "idle" => idle(&args).await,
            "joinstorm" => joinstorm(&args).await,
            "connects" => connects(&args).await,
            other => Err(LoadError::UnknownMode(other.to_owned())),
        }
    });
    match result {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            println!("JSON {report}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
