//! Shards: one node on every core (`--shards N`, `docs/operations.md`).
//!
//! A shard is a hub (`crate::hub`) with its own core, and the sockets
//! placed on it: their HTTP connections, WebSocket reading tasks and
//! writes all run on the shard's runtime. In production each shard has a
//! thread of its own (`rc-shard-<i>`: Linux keeps 15 bytes of a thread name) with a current-thread tokio
//! runtime; under the simulator the shards are tasks of the host's
//! runtime ([`ShardRuntime::Tasks`]), the code otherwise the same.
//!
//! | file | job |
//! |---|---|
//! | this one | the shards' runtimes, their handles, and placement |
//! | [`router`] | the one task between the shards and the node's engine |
//! | [`memory_engine`] | the in-memory engine as a task, behind the router |
//!
//! **Placement** happens when a socket is accepted, before its HTTP
//! request is read: one acceptor (the listener task) hands the raw socket
//! to the shard with the fewest open sockets (ties: round-robin from the
//! last shard chosen). One acceptor rather than one `SO_REUSEPORT`
//! listener per shard because the kernel spreads `SO_REUSEPORT` by a hash
//! of the peer's address and port: connections from one client (one
//! load balancer) can pile onto one shard, and a shard that is busy keeps
//! getting its share. Counting open sockets keeps the shards within a
//! socket of each other. A connection never moves between shards.

pub(crate) mod memory_engine;
pub(crate) mod router;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Where shards run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardRuntime {
    /// Each shard on a thread of its own (production).
    Threads,
    /// Every shard a task of the caller's runtime (the simulator: turmoil
    /// runs a host on one runtime, and its sockets cannot leave it).
    Tasks,
}

/// The runtimes the shards run on, kept until the node has stopped.
pub(crate) struct Runtimes {
    handles: Vec<Handle>,
    /// Threads and their "stop now" senders (empty for [`ShardRuntime::Tasks`]).
    threads: Vec<(std::thread::JoinHandle<()>, oneshot::Sender<()>)>,
}

impl Runtimes {
    /// Starts `count` shard runtimes.
    pub(crate) fn start(count: usize, kind: ShardRuntime) -> std::io::Result<Runtimes> {
        let mut runtimes = Runtimes {
            handles: Vec::with_capacity(count),
            threads: Vec::new(),
        };
        for index in 0..count {
            match kind {
                ShardRuntime::Tasks => runtimes.handles.push(Handle::current()),
                ShardRuntime::Threads => {
                    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
                    let (stop, stopped) = oneshot::channel::<()>();
                    let thread = std::thread::Builder::new()
                        .name(format!("rc-shard-{index}"))
                        .spawn(move || {
                            let runtime = match tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()
                            {
                                Ok(runtime) => runtime,
                                Err(error) => {
                                    let _ = handle_tx.send(Err(error));
                                    return;
                                }
                            };
                            let _ = handle_tx.send(Ok(runtime.handle().clone()));
                            // Runs the shard's tasks until told to stop.
                            let _ = runtime.block_on(stopped);
                        })?;
                    let handle = handle_rx.recv().map_err(|_| {
                        std::io::Error::other("a shard thread ended before its runtime started")
                    })??;
                    runtimes.handles.push(handle);
                    runtimes.threads.push((thread, stop));
                }
            }
        }
        Ok(runtimes)
    }

    /// Shard `index`'s runtime.
    pub(crate) fn handle(&self, index: usize) -> &Handle {
        &self.handles[index]
    }

    /// Stops the shard threads (their remaining tasks are dropped) and
    /// waits for them, off the async runtime.
    pub(crate) async fn stop(self) {
        let threads: Vec<_> = self
            .threads
            .into_iter()
            .map(|(thread, stop)| {
                let _ = stop.send(());
                thread
            })
            .collect();
        if threads.is_empty() {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// Chooses a shard for each accepted socket (module docs).
pub(crate) struct Placement {
    /// Open sockets per shard.
    open: Vec<Arc<AtomicUsize>>,
    /// The last shard chosen, where the round-robin of ties starts.
    last: Mutex<usize>,
}

impl Placement {
    pub(crate) fn new(shards: usize) -> Placement {
        Placement {
            open: (0..shards).map(|_| Arc::default()).collect(),
            // So that the first socket goes to shard 0.
            last: Mutex::new(shards - 1),
        }
    }

    /// The shard for a new socket, counted until the seat drops.
    pub(crate) fn place(&self) -> Seat {
        let count = self.open.len();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let mut best = (*last + 1) % count;
        let mut fewest = self.open[best].load(Ordering::SeqCst);
        for offset in 2..=count {
            let shard = (*last + offset) % count;
            let open = self.open[shard].load(Ordering::SeqCst);
            if open < fewest {
                best = shard;
                fewest = open;
            }
        }
        *last = best;
        self.open[best].fetch_add(1, Ordering::SeqCst);
        Seat {
            shard: best,
            open: self.open[best].clone(),
        }
    }
}

/// A socket's place on a shard, given up when the socket is done.
pub(crate) struct Seat {
    pub(crate) shard: usize,
    open: Arc<AtomicUsize>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_go_to_the_shard_with_the_fewest_round_robin_on_ties() {
        let placement = Placement::new(3);
        let seats: Vec<Seat> = (0..6).map(|_| placement.place()).collect();
        let shards: Vec<usize> = seats.iter().map(|s| s.shard).collect();
        assert_eq!(shards, vec![0, 1, 2, 0, 1, 2]);
        // Shard 1 empties: it gets the next two.
        let mut seats = seats;
        seats.remove(4);
        seats.remove(1);
        assert_eq!(placement.place().shard, 1);
        let second = placement.place();
        assert_eq!(second.shard, 1, "still the fewest (1 against 2 and 2)");
    }

    #[test]
    fn a_thousand_sockets_spread_evenly_while_some_close() {
        let placement = Placement::new(2);
        let mut kept = Vec::new();
        for i in 0..1000 {
            let seat = placement.place();
            // Every third socket closes at once (an API call).
            if i % 3 != 0 {
                kept.push(seat);
            }
        }
        let on_zero = kept.iter().filter(|s| s.shard == 0).count();
        let share = on_zero as f64 / kept.len() as f64;
        assert!((0.4..=0.6).contains(&share), "shard 0 holds {share:.2}");
    }
}
