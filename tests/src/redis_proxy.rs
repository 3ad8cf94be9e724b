//! A TCP proxy in front of a Redis, on a free loopback port, that can make
//! pub/sub connections lose their subscriptions silently: what a failover
//! (or a middlebox) can do to a client that never sees its connection
//! drop. [`RedisProxy::lose_subscriptions`] moves every proxied pub/sub
//! connection (one that has sent a `SUBSCRIBE`) onto a fresh connection to
//! Redis that is subscribed to nothing of the client's: the client's
//! connection stays open and its `PING`s are answered, but nothing
//! published to its channels reaches it any more.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; stops accepting when dropped (its connections end
/// with the test's runtime).
pub struct RedisProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Bumped by each [`RedisProxy::lose_subscriptions`].
    losses: watch::Sender<u64>,
    /// Pub/sub connections moved so far.
    moved: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

/// The one channel a moved connection's new upstream is subscribed to (so
/// it stays in subscribed mode and answers `PING` as such).
const DECOY: &str = "roomcast-proxy-decoy";

impl RedisProxy {
    /// Starts a proxy to the Redis at `upstream`.
    pub async fn start(upstream: SocketAddr) -> RedisProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("an address");
        let (losses, _) = watch::channel(0u64);
        let moved = Arc::new(AtomicU64::new(0));
        let (losses_for_accept, moved_for_accept) = (losses.clone(), moved.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let losses = losses_for_accept.subscribe();
                let moved = moved_for_accept.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        pump(client, server, upstream, losses, moved).await;
                    }
                });
            }
        });
        RedisProxy {
            addr,
            losses,
            moved,
            accept,
        }
    }

    /// `redis://<proxy>/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Moves every pub/sub connection onto an upstream connection without
    /// its subscriptions; returns once at least `connections` were moved
    /// in all (by this call and earlier ones).
    pub async fn lose_subscriptions(&self, connections: u64) {
        self.losses.send_modify(|n| *n += 1);
        let deadline = tokio::time::Instant::now() + crate::TIMEOUT;
        while self.moved.load(Ordering::SeqCst) < connections {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no pub/sub connection to move"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

impl Drop for RedisProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies bytes both ways until either side closes; on a loss, a pub/sub
/// connection gets a new upstream (the old one, with the subscriptions,
/// is closed).
async fn pump(
    mut client: TcpStream,
    mut server: TcpStream,
    upstream: SocketAddr,
    mut losses: watch::Receiver<u64>,
    moved: Arc<AtomicU64>,
) {
    let mut pubsub = false;
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_server = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = client.read(&mut from_client) => {
                let Ok(n @ 1..) = read else { return };
                let bytes = &from_client[..n];
                pubsub |= bytes.windows(9).any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"));
                if server.write_all(bytes).await.is_err() {
                    return;
                }
            }
            read = server.read(&mut from_server) => {
                let Ok(n @ 1..) = read else { return };
                if client.write_all(&from_server[..n]).await.is_err() {
                    return;
                }
            }
            changed = losses.changed() => {
                if changed.is_err() {
                    return;
                }
                if pubsub {
                    let Some(decoy) = decoy(upstream).await else { return };
                    server = decoy;
                    moved.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

/// A new upstream connection subscribed to [`DECOY`] only, its
/// confirmation read (so the client never sees it).
async fn decoy(upstream: SocketAddr) -> Option<TcpStream> {
    let mut server = TcpStream::connect(upstream).await.ok()?;
    let command = format!("*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{DECOY}\r\n", DECOY.len());
    server.write_all(command.as_bytes()).await.ok()?;
    let reply = format!(
        "*3\r\n$9\r\nsubscribe\r\n${}\r\n{DECOY}\r\n:1\r\n",
        DECOY.len()
    );
    let mut confirmed = vec![0u8; reply.len()];
    server.read_exact(&mut confirmed).await.ok()?;
    (confirmed == reply.as_bytes()).then_some(server)
}
