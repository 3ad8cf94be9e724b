//! The fan-out's publishers: keep-alive HTTP/1.1 connections to the
//! publish API, `--publishers` per node.
//!
//! With one per node, [`Publishers::publish`] waits for the receipt, so
//! the publish rate falls when the server answers late: with several
//! shards the receipt crosses threads (shard, router, engine task, router,
//! shard), and the fan-out then measures the answer's latency more than
//! the delivery's cost. With more than one, each connection is a task fed
//! by a queue and `publish` returns at once: the ticker keeps `--rate`
//! whatever the receipt's latency, and every server run sees the same
//! offered load.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::LoadError;

type Request = hyper::Request<Full<Bytes>>;

/// What each publish connection reports when the run ends: the
/// microseconds from sending each publish to its receipt.
type Receipts = Result<Vec<u64>, LoadError>;

pub(crate) enum Publishers {
    /// One connection per node, each publish awaited in turn.
    Waiting {
        connections: Vec<SendRequest<Full<Bytes>>>,
        receipts: Vec<u64>,
    },
    /// Connection tasks fed by queues; publish n goes to queue n % len.
    Open {
        queues: Vec<mpsc::UnboundedSender<Request>>,
        tasks: Vec<JoinHandle<Receipts>>,
    },
}

impl Publishers {
    /// Opens `per_node` connections to every node in `addrs`.
    pub(crate) async fn open(
        addrs: &[SocketAddr],
        per_node: usize,
    ) -> Result<Publishers, LoadError> {
        let mut connections = Vec::with_capacity(addrs.len() * per_node);
        // Node-major order, so consecutive publishes go to different nodes
        // as they did with one connection per node.
        for _ in 0..per_node {
            for &addr in addrs {
                connections.push(crate::api(addr).await?);
            }
        }
        if per_node == 1 {
            return Ok(Publishers::Waiting {
                connections,
                receipts: Vec::new(),
            });
        }
        let mut queues = Vec::with_capacity(connections.len());
        let mut tasks = Vec::with_capacity(connections.len());
        for mut connection in connections {
            let (queue, mut requests) = mpsc::unbounded_channel::<Request>();
            queues.push(queue);
            tasks.push(tokio::spawn(async move {
                let mut receipts = Vec::new();
                while let Some(request) = requests.recv().await {
                    receipts.push(send(&mut connection, request).await?);
                }
                Ok(receipts)
            }));
        }
        Ok(Publishers::Open { queues, tasks })
    }

    /// Sends publish number `n` (waits for its receipt with one connection
    /// per node).
    pub(crate) async fn publish(&mut self, n: usize, request: Request) -> Result<(), LoadError> {
        match self {
            Publishers::Waiting {
                connections,
                receipts,
            } => {
                let count = connections.len();
                receipts.push(send(&mut connections[n % count], request).await?);
                Ok(())
            }
            Publishers::Open { queues, .. } => {
                let count = queues.len();
                queues[n % count]
                    .send(request)
                    .map_err(|_| LoadError::PublisherGone)
            }
        }
    }

    /// Waits for every publish's receipt; returns their latencies (µs).
    pub(crate) async fn finish(self) -> Result<Vec<u64>, LoadError> {
        match self {
            Publishers::Waiting { receipts, .. } => Ok(receipts),
            Publishers::Open { queues, tasks } => {
                drop(queues);
                let mut all = Vec::new();
                for task in tasks {
                    all.extend(task.await.map_err(LoadError::PublisherTask)??);
                }
                Ok(all)
            }
        }
    }
}

/// Sends one publish and reads its answer; the time to its receipt (µs).
async fn send(
    connection: &mut SendRequest<Full<Bytes>>,
    request: Request,
) -> Result<u64, LoadError> {
    let sent = Instant::now();
    connection.ready().await?;
    let response = connection.send_request(request).await?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    if !status.is_success() {
        return Err(LoadError::PublishRefused(status));
    }
    Ok(sent.elapsed().as_micros() as u64)
}
