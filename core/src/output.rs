//! What the core asks its caller to do.

use bytes::Bytes;

use crate::codes::CloseCode;
use crate::names::ConnectionId;

/// One serialized server message: UTF-8 JSON, shared by reference count.
///
/// A broadcast is serialized once; every member's `Output::Send` holds a
/// clone of the same bytes. Only built from `String`, so it is always valid
/// UTF-8 (the shell relies on this to hand it to the WebSocket layer as text
/// without re-validating).
#[derive(Clone, PartialEq, Eq)]
pub struct TextFrame(Bytes);

impl TextFrame {
    /// The frame's text.
    pub fn as_str(&self) -> &str {
        // Built only from `String` (see `From<String>`), so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The shared bytes (guaranteed UTF-8).
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The shared bytes, taking them (no reference-count traffic).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the frame is empty (never, for frames the core builds).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for TextFrame {
    fn from(text: String) -> TextFrame {
        TextFrame(Bytes::from(text))
    }
}

impl std::fmt::Debug for TextFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// An instruction for the caller, drained with `Core::poll_output` in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Write this text frame to the connection.
    Send {
        /// Recipient.
        conn: ConnectionId,
        /// The message.
        frame: TextFrame,
    },
    /// Send a WebSocket ping (the connection has been silent for a while).
    Ping {
        /// Recipient.
        conn: ConnectionId,
    },
    /// Make this check off the hub (verify a `refresh`'s token, ask the
    /// join hook) and answer with `Input::CheckDone` for the same
    /// connection. Until then the connection's later messages wait
    /// ([`crate::checks`]).
    Check {
        /// The connection that asked.
        conn: ConnectionId,
        /// What to check.
        check: crate::checks::Check,
    },
    /// Send a close frame with this code and reason, then drop the socket.
    /// The core has already forgotten the connection.
    Close {
        /// Connection to close.
        conn: ConnectionId,
        /// Why.
        code: CloseCode,
    },
}

impl Output {
    /// The connection this output is for.
    pub fn conn(&self) -> ConnectionId {
        match self {
            Output::Send { conn, .. }
            | Output::Ping { conn }
            | Output::Check { conn, .. }
            | Output::Close { conn, .. } => *conn,
        }
    }
}
