//! What the caller tells the core.

use crate::access::Identity;
use crate::codes::CloseCode;
use crate::names::ConnectionId;

/// Who a direct message (`POST /api/send`) is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendTarget {
    /// Every open connection of this user id.
    User(String),
    /// One connection.
    Connection(ConnectionId),
}

/// One event, handed to `Core::handle` with the time it happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Input<'a> {
    /// A WebSocket connection finished its upgrade. The id is chosen by the
    /// caller and must be new; the identity comes from its verified token.
    Open {
        /// The new connection's id.
        conn: ConnectionId,
        /// Anonymous or the token's user.
        identity: Identity,
    },
    /// A complete text message from the client.
    Text {
        /// Sender.
        conn: ConnectionId,
        /// The message.
        text: &'a str,
    },
    /// A complete binary message from the client (always refused).
    Binary {
        /// Sender.
        conn: ConnectionId,
    },
    /// A text message the shell refused without handing it over (the
    /// node's inbound byte budget was full): the core answers it with a
    /// `SERVER_BUSY` error in its place among the connection's replies,
    /// behind any that wait for the engine (docs/protocol.md). It is not
    /// executed and does not count against the rate limit.
    Busy {
        /// Sender.
        conn: ConnectionId,
        /// The message's id, if the shell could read it.
        id: Option<crate::parse::RequestId>,
    },
    /// A pong (or any other sign of life below the message layer).
    Pong {
        /// Sender.
        conn: ConnectionId,
    },
    /// The caller finished writing `bytes` of this connection's frames to its
    /// socket (slow-consumer accounting; see the crate docs).
    Written {
        /// The connection.
        conn: ConnectionId,
        /// Bytes of `Send` frames written since the last report.
        bytes: usize,
    },
    /// The connection's socket pushed back: a write returned `WouldBlock`
    /// or took only part of what was offered. For conflation the member
    /// counts as *behind* from now until a [`Input::Written`] report
    /// brings its backlog to zero (see `conflation`).
    Blocked {
        /// The connection.
        conn: ConnectionId,
    },
    /// The caller wants a connection closed for a reason only it can see
    /// (an oversize message → 1009, an internal fault → 1011). The core
    /// emits the `Close` and forgets the connection.
    Abort {
        /// The connection.
        conn: ConnectionId,
        /// Why.
        code: CloseCode,
    },
    /// The socket is gone (client closed, network error). No output follows.
    Closed {
        /// The connection.
        conn: ConnectionId,
    },
    /// Time has passed: fire every deadline up to `now`.
    Timeout,
    /// The answer to the connection's `Output::Check` (see [`crate::checks`]).
    CheckDone {
        /// The connection that asked.
        conn: ConnectionId,
        /// The answer, of the kind the check asked for.
        answer: crate::checks::CheckAnswer,
    },
    /// An engine's answer or live message (see [`crate::engine`]).
    Engine(crate::engine::EngineEvent),
    /// The server is shutting down: close every connection with 1001.
    Shutdown,
}
