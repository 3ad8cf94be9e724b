//! The protocol's error codes (in `error` messages) and close codes.

/// The `data.code` of an `error` message. The connection stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorCode {
    /// Not JSON, not an object, no string `action`, binary frame, wrong field types.
    InvalidMessage,
    /// join/leave with a missing, empty or malformed room name.
    InvalidSubscription,
    /// An action the server does not know.
    UnknownAction,
    /// An internal fault while handling one message.
    ServerError,
    /// The connection may not join, publish to or see that room.
    Forbidden,
    /// The client sends faster than its allowance.
    RateLimited,
    /// Over the per-connection room limit.
    TooManyRooms,
    /// A `refresh` whose token is invalid, expired or for another `sub`.
    InvalidToken,
    /// A publish with an unknown message type (client `publish` action).
    UnknownType,
    /// A series event (`download_*`, `scan_*`) without a valid URL-safe `data.key`.
    InvalidKey,
    /// The engine (which numbers and keeps messages) failed or is
    /// overloaded: a `publish` was not appended, or a `join` could not
    /// learn the room's position. Retry later.
    EngineUnavailable,
    /// The server had no room for the message (its inbound byte budget
    /// was full); it was not executed. Retry later.
    ServerBusy,
    /// The application's join hook (`[hooks] join_url`) did not answer
    /// in time, could not be reached, or answered something other than an
    /// allow or a deny: the join was not made. Retry later.
    HookUnavailable,
}

impl ErrorCode {
    /// Every code, for documentation tests and fuzz dictionaries.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::InvalidMessage,
        ErrorCode::InvalidSubscription,
        ErrorCode::UnknownAction,
        ErrorCode::ServerError,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::TooManyRooms,
        ErrorCode::InvalidToken,
        ErrorCode::UnknownType,
        ErrorCode::InvalidKey,
        ErrorCode::EngineUnavailable,
        ErrorCode::ServerBusy,
        ErrorCode::HookUnavailable,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidMessage => "INVALID_MESSAGE",
            ErrorCode::InvalidSubscription => "INVALID_SUBSCRIPTION",
            ErrorCode::UnknownAction => "UNKNOWN_ACTION",
            ErrorCode::ServerError => "SERVER_ERROR",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::TooManyRooms => "TOO_MANY_ROOMS",
            ErrorCode::InvalidToken => "INVALID_TOKEN",
            ErrorCode::UnknownType => "UNKNOWN_TYPE",
            ErrorCode::InvalidKey => "INVALID_KEY",
            ErrorCode::EngineUnavailable => "ENGINE_UNAVAILABLE",
            ErrorCode::ServerBusy => "SERVER_BUSY",
            ErrorCode::HookUnavailable => "HOOK_UNAVAILABLE",
        }
    }
}

/// The `data.code` of a `system_warning`: a notice, the connection stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WarningCode {
    /// The token expires in `expires_in_ms`: send a `refresh`.
    TokenExpiring,
    /// Messages of `room` were lost; the room continues after `epoch`/`seq`.
    RoomGap,
    /// A `refresh` took away the grant of a joined `granted` room: the
    /// connection is no longer a member of `room`.
    AccessRevoked,
}

impl WarningCode {
    /// Every code, for documentation tests.
    pub const ALL: [WarningCode; 3] = [
        WarningCode::TokenExpiring,
        WarningCode::RoomGap,
        WarningCode::AccessRevoked,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            WarningCode::TokenExpiring => "TOKEN_EXPIRING",
            WarningCode::RoomGap => "ROOM_GAP",
            WarningCode::AccessRevoked => "ACCESS_REVOKED",
        }
    }
}

/// Why the server closes a connection: the WebSocket close code and its reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CloseCode {
    /// 1000: normal close.
    Normal,
    /// 1001: the server is shutting down.
    GoingAway,
    /// 1002: the client broke the WebSocket framing rules (unmasked frame,
    /// reserved bits, unknown opcode, fragmented control frame, ...).
    ProtocolError,
    /// 1007: a text message that is not valid UTF-8.
    InvalidPayload,
    /// 1008: the client kept violating its rate limit after being warned.
    PolicyViolation,
    /// 1009: a message over the configured maximum size.
    MessageTooBig,
    /// 1011: unexpected server fault on this connection.
    InternalError,
    /// 4001: the token expired and was not refreshed.
    TokenExpired,
    /// 4002: nothing (not even a pong) arrived within the idle timeout.
    IdleTimeout,
    /// 4008: slow consumer, the bounded outbound queue overflowed.
    SlowConsumer,
}

impl CloseCode {
    /// Every close code, for documentation tests.
    pub const ALL: [CloseCode; 10] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::InvalidPayload,
        CloseCode::PolicyViolation,
        CloseCode::MessageTooBig,
        CloseCode::InternalError,
        CloseCode::TokenExpired,
        CloseCode::IdleTimeout,
        CloseCode::SlowConsumer,
    ];

    /// The numeric WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidPayload => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::TokenExpired => 4001,
            CloseCode::IdleTimeout => 4002,
            CloseCode::SlowConsumer => 4008,
        }
    }

    /// The close reason sent with the code (short: a close reason is at most 123 bytes).
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal close",
            CloseCode::GoingAway => "server shutting down",
            CloseCode::ProtocolError => "WebSocket protocol violation",
            CloseCode::InvalidPayload => "invalid UTF-8 in a text message",
            CloseCode::PolicyViolation => "rate limit violated repeatedly",
            CloseCode::MessageTooBig => "message too big",
            CloseCode::InternalError => "internal server error",
            CloseCode::TokenExpired => "token expired",
            CloseCode::IdleTimeout => "idle timeout",
            CloseCode::SlowConsumer => "slow consumer: outbound queue overflowed",
        }
    }

    /// Whether the close answers a violation by the client (1002, 1007,
    /// 1008, 1009): the client may still be sending, so the shell lingers
    /// (stops sending, reads and discards for a while) before closing the
    /// socket, rather than make the client's kernel answer with a reset.
    pub fn lingers(self) -> bool {
        matches!(
            self,
            CloseCode::ProtocolError
                | CloseCode::InvalidPayload
                | CloseCode::PolicyViolation
                | CloseCode::MessageTooBig
        )
    }

    /// A short label for metrics (`disconnects_total{reason=...}`).
    pub fn metric_label(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "shutdown",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::InvalidPayload => "invalid_payload",
            CloseCode::PolicyViolation => "rate_limit",
            CloseCode::MessageTooBig => "oversize",
            CloseCode::InternalError => "server_error",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::IdleTimeout => "idle",
            CloseCode::SlowConsumer => "slow_consumer",
        }
    }
}
