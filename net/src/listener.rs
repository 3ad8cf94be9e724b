//! The listener abstraction that lets the simulator run the production
//! server over turmoil's sockets: anything that accepts byte streams.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

/// A source of accepted connections.
pub trait Listener: Send + 'static {
    /// The accepted byte stream.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Waits for the next connection and its peer address.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, SocketAddr)>> + Send;

    /// The bound address.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// An accepted stream, unhooked from the runtime that accepted it so
    /// it can move to a shard's thread.
    type Detached: Send + 'static;

    /// Unhooks `io` from the accepting runtime.
    fn detach(io: Self::Io) -> io::Result<Self::Detached>;

    /// Hooks a detached stream to the runtime of the calling task.
    fn attach(detached: Self::Detached) -> io::Result<Self::Io>;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Io, SocketAddr)> {
        let (stream, peer) = tokio::net::TcpListener::accept(self).await?;
        // Frames are batched by the writer; Nagle would only add latency.
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpListener::local_addr(self)
    }

    type Detached = std::net::TcpStream;

    fn detach(io: Self::Io) -> io::Result<Self::Detached> {
        // Stays non-blocking.
        io.into_std()
    }

    fn attach(detached: Self::Detached) -> io::Result<Self::Io> {
        tokio::net::TcpStream::from_std(detached)
    }
}
