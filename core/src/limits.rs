//! The one table of limits. Every bound roomcast enforces lives here, with its
//! default; the server's config file and environment map onto these fields.
//!
//! Some limits are enforced by the shell because they apply before a
//! connection exists or below the message layer (marked *shell*); the rest are
//! decisions of the core.

/// Every bound, with production defaults (see `Limits::default`). Field
/// names are the keys of the `[limits]` table of the server's config file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// *shell*: largest client message in bytes, also across fragments (→ close 1009).
    pub message_bytes_max: usize,
    /// *shell*: tungstenite read buffer per connection in bytes.
    pub read_buffer_bytes: usize,
    /// *shell*: most bytes of a connection's queued frames gathered into one
    /// socket write.
    pub write_buffer_bytes: usize,
    /// Outbound backlog per connection in bytes before close 4008 (slow consumer).
    pub outbound_queue_bytes_max: usize,
    /// Outbound backlog of all connections together, in bytes. Past it,
    /// the connections that do not keep up (their socket pushed back) are
    /// closed with 4008, the largest backlog first, until the total is
    /// under 15/16 of it; members that keep up are never closed for it. A
    /// frame shared by many members counts once per member.
    pub outbound_bytes_max: usize,
    /// Unwritten bytes beyond which a member counts as *behind* for
    /// conflation even if its socket never pushed back (`Input::Blocked`
    /// does that at once). 0: any unwritten byte.
    pub conflation_behind_bytes: usize,
    /// Rooms one connection may be in at once (→ `TOO_MANY_ROOMS`).
    pub rooms_per_connection_max: usize,
    /// Sustained client messages per second (token-bucket refill rate).
    pub messages_per_second: u32,
    /// Client messages allowed in one burst (token-bucket capacity).
    pub message_burst: u32,
    /// Rate-limit violations tolerated before close 1008; one is forgiven per second.
    pub rate_violations_max: u32,
    /// *shell*: open connections in total (→ 503 before the upgrade).
    pub connections_max: usize,
    /// *shell*: open connections per client IP (→ 503 before the upgrade).
    pub connections_per_ip_max: usize,
    /// *shell*: time to receive the request head and finish the upgrade, in ms.
    pub handshake_timeout_ms: u64,
    /// Silence after which the server pings a connection, in ms.
    pub ping_interval_ms: u64,
    /// Silence (no frame, no pong) after which a connection is closed with 4002, in ms.
    pub idle_timeout_ms: u64,
    /// *shell*: largest HTTP API request body in bytes (→ 413).
    pub api_body_bytes_max: usize,
    /// Rooms one broadcast may target.
    pub broadcast_rooms_max: usize,
    /// User ids one `presence` reply lists at most (the rest are paginated),
    /// and changes one `presence_diff` lists at most (beyond: counts and
    /// `truncated`).
    pub presence_page_max: usize,
    /// Broadcasts each room keeps for recovery (`join` with `since`); 0 turns history off.
    pub history_messages_max: usize,
    /// Age after which a broadcast leaves the history, in ms. A room without
    /// members is kept until its newest broadcast reaches this age.
    pub history_age_ms: u64,
    /// Bytes of broadcast frames kept in history across all rooms (the
    /// in-memory engine). Beyond it the oldest entries of any room leave
    /// the history first: a `join` with an older `since` gets
    /// `recovered: false`, never a gap.
    pub history_bytes_max: usize,
    /// Rooms the in-memory engine keeps (followed by a node, or holding
    /// history). A new room beyond it first pushes out the room kept only
    /// for history that would expire soonest; when every room is followed,
    /// the join or publish that would create it gets `ENGINE_UNAVAILABLE`
    /// (HTTP 503).
    pub rooms_max: usize,
    /// Engine requests (appends and reads) in flight at once; beyond it a
    /// publish is refused with `ENGINE_UNAVAILABLE` / HTTP 503.
    pub engine_calls_max: usize,
    /// Messages of one connection that wait behind its request still
    /// waiting for the engine, or for a check the shell makes off the hub
    /// (`crate::checks`: a refresh token, the join hook), so replies keep
    /// request order; beyond it they are refused with `RATE_LIMITED`.
    pub engine_deferred_messages_max: usize,
    /// How often a room with members reads its stream from the engine, in
    /// ms, so a lost last live message is noticed (the live stream is at
    /// most once).
    pub stream_check_interval_ms: u64,
    /// Live messages buffered per room while its read is in flight; beyond it
    /// they are dropped and read again right after.
    pub stream_buffer_max: usize,
    /// Delay before a failed room read is retried, in ms.
    pub engine_retry_ms: u64,
    /// How long the engine keeps a node's presence entries without hearing
    /// from it, in ms (a crashed node's members disappear within this); a
    /// node refreshes them every third of it.
    pub presence_ttl_ms: u64,
    /// How long before its token expires a connection is warned (`system_warning`), in ms.
    pub token_warning_ms: u64,
    /// *shell*: after a close frame for a violation (1002, 1007, 1008, 1009)
    /// the server shuts down its sending side and reads and discards what
    /// the client still sends, so the client's kernel does not answer the
    /// unread data with a reset; this long at most, in ms.
    pub linger_ms: u64,
    /// *shell*: most bytes read and discarded while lingering.
    pub linger_bytes_max: usize,
    /// *shell*: time to receive a whole publish API request body, in ms (→ 408).
    pub api_body_timeout_ms: u64,
    /// *shell*: bytes of client messages and API publish bodies received
    /// and not yet handled by the hub, across all connections (→ error
    /// `SERVER_BUSY` / 503 when full).
    pub inbound_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            message_bytes_max: 64 * 1024,
            read_buffer_bytes: 512,
            write_buffer_bytes: 16 * 1024,
            outbound_queue_bytes_max: 1024 * 1024,
            outbound_bytes_max: 512 * 1024 * 1024,
            conflation_behind_bytes: 64 * 1024,
            rooms_per_connection_max: 64,
            messages_per_second: 50,
            message_burst: 100,
            rate_violations_max: 20,
            connections_max: 18_000,
            connections_per_ip_max: 18_000,
            handshake_timeout_ms: 10_000,
            ping_interval_ms: 25_000,
            idle_timeout_ms: 60_000,
            api_body_bytes_max: 1024 * 1024,
            broadcast_rooms_max: 100,
            presence_page_max: 100,
            history_messages_max: 100,
            history_age_ms: 300_000,
            history_bytes_max: 64 * 1024 * 1024,
            rooms_max: 100_000,
            token_warning_ms: 60_000,
            engine_calls_max: 4096,
            engine_deferred_messages_max: 32,
            stream_check_interval_ms: 30_000,
            stream_buffer_max: 1024,
            engine_retry_ms: 1_000,
            presence_ttl_ms: 60_000,
            linger_ms: 2_000,
            linger_bytes_max: 8 * 1024 * 1024,
            api_body_timeout_ms: 10_000,
            inbound_bytes_max: 16 * 1024 * 1024,
        }
    }
}
