//! Model-based test: random operation sequences run against the core and
//! against a small reference model built from plain `BTreeMap`s; after every
//! step both must agree on the exact list of outputs (decoded JSON, closes,
//! pings) and on the caller's answers (broadcast receipts, sends).
//!
//! Also: the same sequence on two fresh cores gives byte-identical outputs.
//!
//! Model simplifications (chosen by the config, so the model stays obviously
//! right): the outbound queue is unbounded in practice, ping/idle timeouts are
//! far beyond the time a case spans, tokens never expire. The rate limiter is
//! either generous (never triggers) or tight, and then modeled exactly as
//! `rate.rs` documents it. Error messages are only checked to be non-empty,
//! except `UNKNOWN_ACTION`'s, which the protocol fixes. Epochs are opaque: a
//! string that stays the same while a room lives and is new when it is
//! created again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::OnceLock;

use proptest::collection::vec;
use proptest::prelude::*;
use roomcast_core::access::AccessRule;
use roomcast_core::validate::DirectMessage;
use roomcast_core::{
    AccessRules, BroadcastOutcome, CloseCode, ConnectionId, CoreConfig, Identity, Input, Limits,
    Now, Output, Publish, RoomAccess, RoomName, SendTarget, Standalone, User,
};
use serde_json::{json, Map, Value};

/// 2025-10-17T10:30:00.000Z.
const START_MS: i64 = 1_760_697_000_000;
const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"]; // dave never connects
const ROOMS: [&str; 10] = [
    "downloads",
    "queue",
    "scans",
    "lobby",
    "a",
    "b.c",
    "x:y-1",
    "user:alice",
    "user:bob",
    "auth:ops",
];
const ROOMS_MAX: usize = 3;
const ID_STRS: [&str; 3] = ["r1", "ü \"q\"", ""];
/// One token / one violation in the rate limiter's fixed point.
const UNIT: u64 = 1_000_000;

// ----- operations ------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    Read,
    Publish,
    PublishDownloads,
}

#[derive(Clone, Copy, Debug)]
enum Who {
    Anon,
    User(u8, Scope),
}

#[derive(Clone, Copy)]
enum Form {
    Data,
    Top,
    /// Both, with a decoy at the top level: `data.room` must win.
    Both,
}

#[derive(Clone)]
enum Id {
    Num(i64),
    Str(u8),
}

#[derive(Clone, Copy, Debug)]
enum PubKind {
    QueueStatus,
    DownloadProgress,
    DownloadNoKey,
    MadeUp,
    Reserved,
}

#[derive(Clone, Copy, Debug)]
enum BKind {
    QueueStatus,
    DownloadProgress,
    ScanStarted,
    SystemWarning,
}

#[derive(Clone)]
enum Msg {
    Join(u8, Form),
    Leave(u8, Form),
    Ping(u8),
    Presence(u8),
    Publish(u8, PubKind),
    Bad(u8),
}

#[derive(Clone)]
enum Op {
    Open(u8, Who),
    Text(u8, Msg, Option<Id>),
    Binary(u8),
    Pong(u8),
    Written(u8, u16),
    Closed(u8),
    Abort(u8, CloseCode),
    Broadcast(Vec<u8>, BKind, u16),
    SendUser(u8, u16),
    SendConn(u8, u16),
    Advance(u32),
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Num(n) => write!(f, "id={n}"),
            Id::Str(i) => write!(f, "id={:?}", ID_STRS[*i as usize]),
        }
    }
}

impl fmt::Debug for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Form::Data => "data",
            Form::Top => "top",
            Form::Both => "both",
        })
    }
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::Join(r, form) => write!(f, "join {} ({form:?})", ROOMS[*r as usize]),
            Msg::Leave(r, form) => write!(f, "leave {} ({form:?})", ROOMS[*r as usize]),
            Msg::Ping(v) => write!(f, "ping/{v}"),
            Msg::Presence(r) => write!(f, "presence {}", ROOMS[*r as usize]),
            Msg::Publish(r, k) => write!(f, "publish {} {}", ROOMS[*r as usize], k.name()),
            Msg::Bad(i) => write!(f, "bad {:?}", bad_frames()[*i as usize].template),
        }
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Open(c, Who::Anon) => write!(f, "c{c} open anon"),
            Op::Open(c, Who::User(u, scope)) => {
                let scope = match scope {
                    Scope::Read => "",
                    Scope::Publish => "+publish",
                    Scope::PublishDownloads => "+publish:downloads",
                };
                write!(f, "c{c} open {}{scope}", USERS[*u as usize])
            }
            Op::Text(c, msg, None) => write!(f, "c{c} {msg:?}"),
            Op::Text(c, msg, Some(id)) => write!(f, "c{c} {msg:?} {id:?}"),
            Op::Binary(c) => write!(f, "c{c} binary"),
            Op::Pong(c) => write!(f, "c{c} pong"),
            Op::Written(c, n) => write!(f, "c{c} written {n}"),
            Op::Closed(c) => write!(f, "c{c} closed"),
            Op::Abort(c, code) => write!(f, "c{c} abort {}", code.code()),
            Op::Broadcast(rooms, kind, n) => {
                let names: Vec<&str> = rooms.iter().map(|r| ROOMS[*r as usize]).collect();
                write!(f, "bcast {names:?} {} n={n}", kind.name())
            }
            Op::SendUser(u, n) => write!(f, "send user {} n={n}", USERS[*u as usize]),
            Op::SendConn(c, n) => write!(f, "send c{c} n={n}"),
            Op::Advance(us) => write!(f, "+{us}us"),
        }
    }
}

impl PubKind {
    fn name(self) -> &'static str {
        match self {
            PubKind::QueueStatus => "queue_status",
            PubKind::DownloadProgress | PubKind::DownloadNoKey => "download_progress",
            PubKind::MadeUp => "made_up",
            PubKind::Reserved => "connected",
        }
    }

    fn data(self) -> Value {
        match self {
            PubKind::QueueStatus => json!({"queued": 1}),
            PubKind::DownloadProgress => json!({"key": "one-piece", "percent": 12.5}),
            PubKind::DownloadNoKey => json!({"percent": 1}),
            PubKind::MadeUp | PubKind::Reserved => json!({}),
        }
    }

    /// The error a granted publisher gets, if any.
    fn error(self) -> Option<&'static str> {
        match self {
            PubKind::QueueStatus | PubKind::DownloadProgress => None,
            PubKind::DownloadNoKey => Some("INVALID_KEY"),
            PubKind::MadeUp | PubKind::Reserved => Some("UNKNOWN_TYPE"),
        }
    }
}

impl BKind {
    fn name(self) -> &'static str {
        match self {
            BKind::QueueStatus => "queue_status",
            BKind::DownloadProgress => "download_progress",
            BKind::ScanStarted => "scan_started",
            BKind::SystemWarning => "system_warning",
        }
    }

    fn data(self, n: u16) -> Value {
        match self {
            BKind::QueueStatus => json!({"queued": n, "running": n.is_multiple_of(2)}),
            BKind::DownloadProgress => json!({
                "download_id": format!("d{n}"),
                "key": "attack-on-titan",
                "folder": "Attack on Titan (2013)",
                "percent": f64::from(n) / 4.0,
            }),
            BKind::ScanStarted => json!({"key": "one-piece"}),
            BKind::SystemWarning => json!({"message": format!("warning {n}")}),
        }
    }
}

/// A malformed (or refused) client frame and the error it must get.
struct Bad {
    /// `$ID` is replaced by `,"id":<id>` (or nothing).
    template: String,
    code: &'static str,
    /// Whether the id can be read back from the frame (and so is echoed).
    echoes_id: bool,
    /// The exact `data.message`, where the protocol fixes it.
    message: Option<&'static str>,
}

fn bad_frames() -> &'static [Bad] {
    static BAD: OnceLock<Vec<Bad>> = OnceLock::new();
    BAD.get_or_init(|| {
        let bad = |template: &str, code, echoes_id| Bad {
            template: template.to_owned(),
            code,
            echoes_id,
            message: None,
        };
        let im = "INVALID_MESSAGE";
        let is = "INVALID_SUBSCRIPTION";
        vec![
            bad("not json", im, false),
            bad("", im, false),
            bad("[1,2,3]", im, false),
            bad(r#"["action","ping"]"#, im, false),
            bad(r#""ping""#, im, false),
            bad(r#"{"action":"ping""#, im, false),
            bad(r#"{"action":"ping","id":{}}"#, im, false),
            bad(r#"{"action":"ping","action":"ping"$ID}"#, im, false),
            bad(r#"{"action":5$ID}"#, im, true),
            bad(r#"{"room":"a"$ID}"#, im, true),
            bad(r#"{"action":"ping","data":[]$ID}"#, im, true),
            bad(r#"{"action":"join","data":"downloads"$ID}"#, im, true),
            bad(
                r#"{"action":"join","data":{"room":"a","since":{"epoch":5}}$ID}"#,
                im,
                true,
            ),
            bad(r#"{"action":"publish","data":{"room":"a"}$ID}"#, im, true),
            bad(r#"{"action":"join","data":{"room":""}$ID}"#, is, true),
            bad(r#"{"action":"join","room":"bad room"$ID}"#, is, true),
            bad(r#"{"action":"leave","data":{"room":5}$ID}"#, is, true),
            bad(r#"{"action":"join"$ID}"#, is, true),
            bad(
                &format!(
                    r#"{{"action":"join","data":{{"room":"{}"}}$ID}}"#,
                    "x".repeat(129)
                ),
                is,
                true,
            ),
            bad(
                r#"{"action":"presence","data":{"room":"no/pe"}$ID}"#,
                is,
                true,
            ),
            bad(
                r#"{"action":"refresh","data":{"token":"t"}$ID}"#,
                "INVALID_TOKEN",
                true,
            ),
            Bad {
                message: Some("Unknown action: fly"),
                ..bad(r#"{"action":"fly"$ID}"#, "UNKNOWN_ACTION", true)
            },
            Bad {
                message: Some("Unknown action: JOIN"),
                ..bad(
                    r#"{"action":"JOIN","data":{"room":"a"}$ID}"#,
                    "UNKNOWN_ACTION",
                    true,
                )
            },
        ]
    })
}

fn id_value(id: &Id) -> Value {
    match id {
        Id::Num(n) => json!(n),
        Id::Str(i) => json!(ID_STRS[*i as usize]),
    }
}

/// `,"id":<id>` or nothing.
fn id_field(id: Option<&Id>) -> String {
    id.map(|id| format!(r#","id":{}"#, id_value(id)))
        .unwrap_or_default()
}

/// The frame text of one client message.
fn render(msg: &Msg, id: Option<&Id>) -> String {
    let idf = id_field(id);
    let room_form = |action: &str, r: u8, form: Form| {
        let name = ROOMS[r as usize];
        match form {
            Form::Data => format!(r#"{{"action":"{action}","data":{{"room":"{name}"}}{idf}}}"#),
            Form::Top => format!(r#"{{"action":"{action}","room":"{name}"{idf}}}"#),
            Form::Both => {
                format!(r#"{{"action":"{action}","room":"decoy","data":{{"room":"{name}"}}{idf}}}"#)
            }
        }
    };
    match msg {
        Msg::Join(r, form) => room_form("join", *r, *form),
        Msg::Leave(r, form) => room_form("leave", *r, *form),
        Msg::Ping(0) => format!(r#"{{"action":"ping"{idf}}}"#),
        Msg::Ping(1) => format!(r#"{{"action":"ping","data":null{idf}}}"#),
        Msg::Ping(_) => {
            format!(r#" {{"extra":[1,{{"a":null}}],"action":"ping","data":{{}}{idf}}} "#)
        }
        Msg::Presence(r) => format!(
            r#"{{"action":"presence","data":{{"room":"{}"}}{idf}}}"#,
            ROOMS[*r as usize]
        ),
        Msg::Publish(r, kind) => format!(
            r#"{{"action":"publish","data":{{"room":"{}","type":"{}","data":{}}}{idf}}}"#,
            ROOMS[*r as usize],
            kind.name(),
            kind.data()
        ),
        Msg::Bad(i) => bad_frames()[*i as usize].template.replace("$ID", &idf),
    }
}

// ----- strategies --------------------------------------------------------------------

fn who_strategy() -> impl Strategy<Value = Who> {
    let scope = prop_oneof![
        Just(Scope::Read),
        Just(Scope::Publish),
        Just(Scope::PublishDownloads)
    ];
    prop_oneof![
        1 => Just(Who::Anon),
        2 => (0..3u8, scope).prop_map(|(u, s)| Who::User(u, s)),
    ]
}

fn id_strategy() -> impl Strategy<Value = Option<Id>> {
    prop_oneof![
        2 => Just(None),
        1 => (-3i64..1000).prop_map(|n| Some(Id::Num(n))),
        1 => (0..ID_STRS.len() as u8).prop_map(|i| Some(Id::Str(i))),
    ]
}

/// A room index, biased towards the four public rooms so rooms get members.
fn room_strategy() -> impl Strategy<Value = u8> + Clone {
    prop_oneof![3 => 0..4u8, 2 => 0..ROOMS.len() as u8]
}

fn msg_strategy() -> impl Strategy<Value = Msg> {
    let room = room_strategy;
    let form = || prop_oneof![Just(Form::Data), Just(Form::Top), Just(Form::Both)];
    let pub_kind = prop_oneof![
        3 => Just(PubKind::QueueStatus),
        3 => Just(PubKind::DownloadProgress),
        1 => Just(PubKind::DownloadNoKey),
        1 => Just(PubKind::MadeUp),
        1 => Just(PubKind::Reserved),
    ];
    prop_oneof![
        16 => (room(), form()).prop_map(|(r, f)| Msg::Join(r, f)),
        4 => (room(), form()).prop_map(|(r, f)| Msg::Leave(r, f)),
        3 => (0..3u8).prop_map(Msg::Ping),
        5 => room().prop_map(Msg::Presence),
        4 => (room(), pub_kind).prop_map(|(r, k)| Msg::Publish(r, k)),
        7 => (0..bad_frames().len() as u8).prop_map(Msg::Bad),
    ]
}

fn op_strategy(conns: u8) -> impl Strategy<Value = Op> {
    // Mostly a few busy connections, sometimes any of up to 50.
    let conn = move || prop_oneof![2 => 0..conns.min(8), 1 => 0..conns];
    let bkind = prop_oneof![
        Just(BKind::QueueStatus),
        Just(BKind::DownloadProgress),
        Just(BKind::ScanStarted),
        Just(BKind::SystemWarning),
    ];
    let abort = prop_oneof![
        Just(CloseCode::Normal),
        Just(CloseCode::MessageTooBig),
        Just(CloseCode::InternalError),
    ];
    let rooms = vec(room_strategy(), 1..=3).prop_map(|mut rooms| {
        let mut seen = BTreeSet::new();
        rooms.retain(|r| seen.insert(*r));
        rooms
    });
    prop_oneof![
        10 => (conn(), who_strategy()).prop_map(|(c, w)| Op::Open(c, w)),
        45 => (conn(), msg_strategy(), id_strategy()).prop_map(|(c, m, id)| Op::Text(c, m, id)),
        2 => conn().prop_map(Op::Binary),
        2 => conn().prop_map(Op::Pong),
        2 => (conn(), any::<u16>()).prop_map(|(c, n)| Op::Written(c, n)),
        3 => conn().prop_map(Op::Closed),
        1 => (conn(), abort).prop_map(|(c, code)| Op::Abort(c, code)),
        12 => (rooms, bkind, any::<u16>()).prop_map(|(r, k, n)| Op::Broadcast(r, k, n)),
        3 => (0..USERS.len() as u8, any::<u16>()).prop_map(|(u, n)| Op::SendUser(u, n)),
        2 => (conn(), any::<u16>()).prop_map(|(c, n)| Op::SendConn(c, n)),
        8 => prop_oneof![0..=1_000u32, 0..=300_000u32].prop_map(Op::Advance),
    ]
}

#[derive(Clone)]
struct Case {
    /// Tight rate limits (modeled exactly) instead of generous ones.
    tight: bool,
    conns: u8,
    ops: Vec<Op>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Case {{ tight: {}, conns: {}, ops: [",
            self.tight, self.conns
        )?;
        for (i, op) in self.ops.iter().enumerate() {
            writeln!(f, "  {i:3}: {op:?}")?;
        }
        write!(f, "] }}")
    }
}

fn case_strategy(max_ops: usize) -> impl Strategy<Value = Case> {
    let conns = prop_oneof![1..=4u8, 1..=50u8];
    (conns, proptest::bool::weighted(0.35)).prop_flat_map(move |(conns, tight)| {
        vec(op_strategy(conns), 0..=max_ops).prop_map(move |ops| Case { tight, conns, ops })
    })
}

// ----- configuration ---------------------------------------------------------------

struct RateLimits {
    per_second: u32,
    burst: u32,
    violations_max: u32,
}

fn rate_limits(tight: bool) -> RateLimits {
    if tight {
        RateLimits {
            per_second: 4,
            burst: 3,
            violations_max: 2,
        }
    } else {
        RateLimits {
            per_second: 1_000_000,
            burst: 1_000_000,
            violations_max: 1_000,
        }
    }
}

fn config(tight: bool) -> CoreConfig {
    let rate = rate_limits(tight);
    CoreConfig {
        limits: Limits {
            outbound_queue_bytes_max: 1 << 40,
            rooms_per_connection_max: ROOMS_MAX,
            messages_per_second: rate.per_second,
            message_burst: rate.burst,
            rate_violations_max: rate.violations_max,
            ping_interval_ms: 3_600_000,
            idle_timeout_ms: 7_200_000,
            // The model covers live delivery: rooms drop when their last
            // member leaves. History and recovery are covered by the unit
            // tests in protocol.rs and by the simulator's oracle.
            history_messages_max: 0,
            ..Limits::default()
        },
        access: AccessRules {
            rules: vec![
                AccessRule {
                    prefix: "user:".into(),
                    access: RoomAccess::PrivateUser,
                },
                AccessRule {
                    prefix: "auth:".into(),
                    access: RoomAccess::Authenticated,
                },
            ],
            default: RoomAccess::Public,
        },
        ..CoreConfig::default()
    }
}

fn conn_id(c: u8) -> ConnectionId {
    ConnectionId::from_u128(u128::from(c) + 1)
}

fn identity(who: Who) -> Identity {
    match who {
        Who::Anon => Identity::Anonymous,
        Who::User(u, scope) => Identity::User(User {
            id: USERS[u as usize].to_owned(),
            scopes: match scope {
                Scope::Read => vec!["read".to_owned()],
                Scope::Publish => vec!["read".to_owned(), "publish".to_owned()],
                Scope::PublishDownloads => vec!["publish:downloads".to_owned()],
            },
            expires_unix_ms: None,
            grants: roomcast_core::Grants::none(),
        }),
    }
}

fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("payloads are objects"),
    }
}

fn direct_data(n: u16) -> Value {
    json!({"message": "direct", "n": n})
}

// ----- the reference model ------------------------------------------------------------

#[derive(Clone, PartialEq)]
enum Ev {
    Send(u8, Value),
    Ping(u8),
    Close(u8, CloseCode),
}

impl fmt::Debug for Ev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ev::Send(c, v) => write!(f, "c{c} <- {v}"),
            Ev::Ping(c) => write!(f, "c{c} <- ping"),
            Ev::Close(c, code) => write!(f, "c{c} <- close {}", code.code()),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Resp {
    Done,
    Published {
        delivered: u64,
        seqs: Vec<(String, u64)>,
    },
    Sent {
        delivered: u64,
    },
    /// The model's payloads are small: a rejection is never predicted, so
    /// any `Rejected` from the core is a mismatch.
    Rejected(String),
}

struct Bucket {
    tokens: u64,
    violations: u64,
    last_us: u64,
}

enum Verdict {
    Allow,
    Warn,
    Close,
}

struct MConn {
    user: Option<(u8, Scope)>,
    rooms: BTreeSet<u8>,
    bucket: Bucket,
}

struct MRoom {
    members: BTreeSet<u8>,
    seq: u64,
    /// Learned from the first join reply of this room's lifetime.
    epoch: Option<String>,
}

struct Model {
    rate: RateLimits,
    now_us: u64,
    conns: BTreeMap<u8, MConn>,
    rooms: BTreeMap<u8, MRoom>,
    seen_epochs: BTreeSet<String>,
    /// Join replies that named a room lifetime's epoch for the first time.
    epochs_learned: u64,
}

/// The envelope timestamp, computed independently of the core: the cases
/// span minutes, so only the time of day moves.
fn timestamp(now_us: u64) -> String {
    let ms = (10 * 3600 + 30 * 60) * 1000 + now_us / 1000;
    let hours = ms / 3_600_000;
    assert!(hours < 24, "a case ran past midnight");
    format!(
        "2025-10-17T{hours:02}:{:02}:{:02}.{:03}Z",
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

impl Model {
    fn new(tight: bool) -> Model {
        Model {
            rate: rate_limits(tight),
            now_us: 0,
            conns: BTreeMap::new(),
            rooms: BTreeMap::new(),
            seen_epochs: BTreeSet::new(),
            epochs_learned: 0,
        }
    }

    fn now(&self) -> Now {
        Now::from_start(START_MS, self.now_us)
    }

    fn envelope(&self, kind: &str, data: Value, id: Option<&Id>) -> Value {
        let mut v = json!({"type": kind, "timestamp": timestamp(self.now_us), "data": data});
        if let Some(id) = id {
            v["id"] = id_value(id);
        }
        v
    }

    fn error(&self, code: &str, message: Option<&str>, id: Option<&Id>) -> Value {
        let message = message.unwrap_or("<any>");
        self.envelope("error", json!({"code": code, "message": message}), id)
    }

    fn can_join(&self, conn: u8, room: u8) -> bool {
        let name = ROOMS[room as usize];
        let user = self.conns[&conn].user.map(|(u, _)| USERS[u as usize]);
        if let Some(owner) = name.strip_prefix("user:") {
            user == Some(owner)
        } else if name.starts_with("auth:") {
            user.is_some()
        } else {
            true
        }
    }

    fn can_publish(&self, conn: u8, room: u8) -> bool {
        match self.conns[&conn].user {
            Some((_, Scope::Publish)) => true,
            Some((_, Scope::PublishDownloads)) => ROOMS[room as usize] == "downloads",
            _ => false,
        }
    }

    fn rate_check(&mut self, conn: u8) -> Verdict {
        let now = self.now_us;
        let rate = &self.rate;
        let bucket = &mut self.conns.get_mut(&conn).expect("open").bucket;
        let elapsed = now - bucket.last_us;
        bucket.last_us = now;
        let capacity = u64::from(rate.burst) * UNIT;
        bucket.tokens = (bucket.tokens + elapsed * u64::from(rate.per_second)).min(capacity);
        bucket.violations = bucket.violations.saturating_sub(elapsed);
        if bucket.tokens >= UNIT {
            bucket.tokens -= UNIT;
            return Verdict::Allow;
        }
        bucket.violations += UNIT;
        if bucket.violations > u64::from(rate.violations_max) * UNIT {
            Verdict::Close
        } else {
            Verdict::Warn
        }
    }

    fn remove_member(&mut self, conn: u8, room: u8) {
        if let Some(state) = self.rooms.get_mut(&room) {
            state.members.remove(&conn);
            if state.members.is_empty() {
                self.rooms.remove(&room);
            }
        }
    }

    fn close(&mut self, conn: u8) {
        if let Some(c) = self.conns.remove(&conn) {
            for room in c.rooms {
                self.remove_member(conn, room);
            }
        }
    }

    /// Numbers and fans out one broadcast; returns (delivered, seqs).
    fn broadcast(
        &mut self,
        rooms: &[u8],
        kind: &str,
        data: &Value,
        out: &mut Vec<Ev>,
    ) -> (u64, Vec<(String, u64)>) {
        let ts = timestamp(self.now_us);
        let mut delivered = 0;
        let mut seqs = Vec::new();
        for &room in rooms {
            let name = ROOMS[room as usize];
            let seq = match self.rooms.get_mut(&room) {
                Some(state) => {
                    state.seq += 1;
                    for &m in &state.members {
                        out.push(Ev::Send(
                            m,
                            json!({"type": kind, "timestamp": ts, "room": name,
                                   "seq": state.seq, "data": data}),
                        ));
                        delivered += 1;
                    }
                    state.seq
                }
                // No members and no history: numbered, then forgotten.
                None => 1,
            };
            seqs.push((name.to_owned(), seq));
        }
        (delivered, seqs)
    }

    fn step(&mut self, op: &Op) -> (Vec<Ev>, Resp) {
        let mut out = Vec::new();
        let mut resp = Resp::Done;
        match op {
            Op::Open(c, who) => {
                if !self.conns.contains_key(c) {
                    let user = match *who {
                        Who::Anon => None,
                        Who::User(u, scope) => Some((u, scope)),
                    };
                    self.conns.insert(
                        *c,
                        MConn {
                            user,
                            rooms: BTreeSet::new(),
                            bucket: Bucket {
                                tokens: u64::from(self.rate.burst) * UNIT,
                                violations: 0,
                                last_us: self.now_us,
                            },
                        },
                    );
                    let mut data = json!({
                        "connection_id": format!("00000000-0000-0000-0000-{:012x}", u128::from(*c) + 1),
                        "message": "Connected to roomcast WebSocket",
                        "authenticated": user.is_some(),
                    });
                    if let Some((u, _)) = user {
                        data["user_id"] = json!(USERS[u as usize]);
                    }
                    out.push(Ev::Send(*c, self.envelope("connected", data, None)));
                }
            }
            Op::Text(c, msg, id) => self.client_message(*c, Some((msg, id.as_ref())), &mut out),
            Op::Binary(c) => self.client_message(*c, None, &mut out),
            Op::Pong(_) | Op::Written(..) | Op::Advance(_) => {}
            Op::Closed(c) => self.close(*c),
            Op::Abort(c, code) => {
                if self.conns.contains_key(c) {
                    self.close(*c);
                    out.push(Ev::Close(*c, *code));
                }
            }
            Op::Broadcast(rooms, kind, n) => {
                let (delivered, seqs) =
                    self.broadcast(rooms, kind.name(), &kind.data(*n), &mut out);
                resp = Resp::Published { delivered, seqs };
            }
            Op::SendUser(u, n) => {
                let targets: Vec<u8> = self
                    .conns
                    .iter()
                    .filter(|(_, conn)| conn.user.is_some_and(|(cu, _)| cu == *u))
                    .map(|(c, _)| *c)
                    .collect();
                for &t in &targets {
                    out.push(Ev::Send(
                        t,
                        self.envelope("system_info", direct_data(*n), None),
                    ));
                }
                resp = Resp::Sent {
                    delivered: targets.len() as u64,
                };
            }
            Op::SendConn(c, n) => {
                let open = self.conns.contains_key(c);
                if open {
                    out.push(Ev::Send(
                        *c,
                        self.envelope("system_info", direct_data(*n), None),
                    ));
                }
                resp = Resp::Sent {
                    delivered: u64::from(open),
                };
            }
        }
        (out, resp)
    }

    /// A text frame (`Some`) or a binary frame (`None`) from `c`.
    fn client_message(&mut self, c: u8, text: Option<(&Msg, Option<&Id>)>, out: &mut Vec<Ev>) {
        if !self.conns.contains_key(&c) {
            return;
        }
        // The id the parser can read back (echoed even on RATE_LIMITED).
        let echo = match text {
            None => None,
            Some((Msg::Bad(i), id)) => id.filter(|_| bad_frames()[*i as usize].echoes_id),
            Some((_, id)) => id,
        };
        match self.rate_check(c) {
            Verdict::Allow => {}
            Verdict::Warn => {
                out.push(Ev::Send(c, self.error("RATE_LIMITED", None, echo)));
                return;
            }
            Verdict::Close => {
                self.close(c);
                out.push(Ev::Close(c, CloseCode::PolicyViolation));
                return;
            }
        }
        let Some((msg, id)) = text else {
            out.push(Ev::Send(c, self.error("INVALID_MESSAGE", None, None)));
            return;
        };
        let reply = match msg {
            Msg::Bad(i) => {
                let bad = &bad_frames()[*i as usize];
                self.error(bad.code, bad.message, echo)
            }
            Msg::Ping(_) => self.envelope("pong", json!({}), id),
            Msg::Join(r, _) => self.join(c, *r, id),
            Msg::Leave(r, _) => {
                if self.conns.get_mut(&c).expect("open").rooms.remove(r) {
                    self.remove_member(c, *r);
                }
                let name = ROOMS[*r as usize];
                self.envelope(
                    "system_info",
                    json!({"message": format!("Left room: {name}"), "room": name}),
                    id,
                )
            }
            Msg::Presence(r) => match self.rooms.get(r) {
                Some(state) if state.members.contains(&c) => {
                    let users: BTreeSet<&str> = state
                        .members
                        .iter()
                        .filter_map(|m| self.conns[m].user)
                        .map(|(u, _)| USERS[u as usize])
                        .collect();
                    self.envelope(
                        "presence",
                        json!({"room": ROOMS[*r as usize], "connections": state.members.len(),
                               "user_count": users.len(), "users": users}),
                        id,
                    )
                }
                _ => self.error("FORBIDDEN", None, id),
            },
            Msg::Publish(r, kind) => {
                if !self.can_publish(c, *r) {
                    self.error("FORBIDDEN", None, id)
                } else if let Some(code) = kind.error() {
                    self.error(code, None, id)
                } else {
                    let (delivered, seqs) = self.broadcast(&[*r], kind.name(), &kind.data(), out);
                    let name = ROOMS[*r as usize];
                    self.envelope(
                        "system_info",
                        json!({"message": format!("Published to room: {name}"), "room": name,
                               "seq": seqs[0].1, "delivered": delivered}),
                        id,
                    )
                }
            }
        };
        out.push(Ev::Send(c, reply));
    }

    fn join(&mut self, c: u8, r: u8, id: Option<&Id>) -> Value {
        let name = ROOMS[r as usize];
        if !self.can_join(c, r) {
            return self.error("FORBIDDEN", None, id);
        }
        let conn = self.conns.get_mut(&c).expect("open");
        if !conn.rooms.contains(&r) {
            if conn.rooms.len() >= ROOMS_MAX {
                return self.error("TOO_MANY_ROOMS", None, id);
            }
            conn.rooms.insert(r);
            self.rooms
                .entry(r)
                .or_insert_with(|| MRoom {
                    members: BTreeSet::new(),
                    seq: 0,
                    epoch: None,
                })
                .members
                .insert(c);
        }
        let seq = self.rooms[&r].seq;
        self.envelope(
            "system_info",
            json!({"message": format!("Joined room: {name}"), "room": name, "seq": seq,
                   "epoch": "<epoch>"}),
            id,
        )
    }

    /// A broadcast receipt's epoch: a live room's known epoch, or (for a
    /// room without members, created for this one broadcast) a fresh one.
    fn check_receipt_epoch(&mut self, room: &str, epoch: String) -> Result<(), Mismatch> {
        let index = ROOMS
            .iter()
            .position(|r| *r == room)
            .ok_or_else(|| Mismatch(format!("receipt for an unknown room {room}")))?;
        match self.rooms.get(&(index as u8)).map(|r| &r.epoch) {
            Some(Some(known)) if *known == epoch => Ok(()),
            Some(Some(known)) => Err(Mismatch(format!(
                "receipt epoch {epoch} of {room} differs from its join replies' {known}"
            ))),
            Some(None) => Err(Mismatch(format!(
                "{room} lives but no join reply named its epoch"
            ))),
            None if self.seen_epochs.insert(epoch.clone()) => Ok(()),
            None => Err(Mismatch(format!(
                "{room} was recreated with an old epoch {epoch}"
            ))),
        }
    }

    /// Makes the core's output comparable with the model's: checks and
    /// blanks what the model leaves open (error texts, epochs).
    fn normalize(&mut self, ev: &mut Ev) -> Result<(), Mismatch> {
        let Ev::Send(_, v) = ev else {
            return Ok(());
        };
        if v["type"] == "error" && v["data"]["code"] != "UNKNOWN_ACTION" {
            match v["data"]["message"].as_str() {
                Some(m) if !m.is_empty() => v["data"]["message"] = json!("<any>"),
                _ => return Err(Mismatch(format!("error without a message: {v}"))),
            }
        }
        if v["type"] == "system_info" && v["data"].get("epoch").is_some() {
            let Some(epoch) = v["data"]["epoch"].as_str().map(str::to_owned) else {
                return Err(Mismatch(format!("epoch is not a string: {v}")));
            };
            let name = v["data"]["room"].as_str().unwrap_or_default();
            let index = ROOMS
                .iter()
                .position(|r| *r == name)
                .ok_or_else(|| Mismatch(format!("join reply for an unknown room: {v}")))?;
            let state = self.rooms.get_mut(&(index as u8)).ok_or_else(|| {
                Mismatch(format!(
                    "join reply for a room the model does not hold: {v}"
                ))
            })?;
            match &state.epoch {
                Some(known) if *known != epoch => {
                    return Err(Mismatch(format!(
                        "epoch of {name} changed while it lived: {known} -> {epoch}"
                    )))
                }
                Some(_) => {}
                None => {
                    self.epochs_learned += 1;
                    if !self.seen_epochs.insert(epoch.clone()) {
                        return Err(Mismatch(format!(
                            "{name} was recreated with an old epoch {epoch}"
                        )));
                    }
                    state.epoch = Some(epoch);
                }
            }
            v["data"]["epoch"] = json!("<epoch>");
        }
        Ok(())
    }
}

// ----- driving the core ------------------------------------------------------------------

/// Whether `op` opens a connection that is already open (the strategy
/// draws such ops; the harness skips them, as a correct caller never sends them).
fn reopens(core: &Standalone, op: &Op) -> bool {
    matches!(op, Op::Open(c, _) if core.core().is_open(conn_id(*c)))
}

/// The core's input for `op` (the frame text is rendered into `text`).
fn input<'a>(op: &Op, text: &'a mut String) -> Input<'a> {
    match op {
        Op::Open(c, who) => Input::Open {
            conn: conn_id(*c),
            identity: identity(*who),
        },
        Op::Text(c, msg, id) => {
            *text = render(msg, id.as_ref());
            Input::Text {
                conn: conn_id(*c),
                text: text.as_str(),
            }
        }
        Op::Binary(c) => Input::Binary { conn: conn_id(*c) },
        Op::Pong(c) => Input::Pong { conn: conn_id(*c) },
        Op::Written(c, n) => Input::Written {
            conn: conn_id(*c),
            bytes: usize::from(*n),
        },
        Op::Closed(c) => Input::Closed { conn: conn_id(*c) },
        Op::Abort(c, code) => Input::Abort {
            conn: conn_id(*c),
            code: *code,
        },
        Op::Advance(_) => Input::Timeout,
        Op::Broadcast(..) | Op::SendUser(..) | Op::SendConn(..) => {
            unreachable!("publishes are not inputs: see `apply`")
        }
    }
}

/// What the core answered to one op: the broadcast's and the send's typed
/// answers, nothing for every other input.
#[derive(Debug, PartialEq)]
enum Answer {
    Done,
    Broadcast(BroadcastOutcome),
    Sent(Result<u64, roomcast_core::validate::PublishError>),
}

/// Applies `op` to the core at `now`.
fn apply(core: &mut Standalone, now: Now, op: &Op) -> Answer {
    match op {
        Op::Broadcast(rooms, kind, n) => Answer::Broadcast(
            core.broadcast(
                now,
                Publish {
                    rooms: rooms
                        .iter()
                        .map(|r| RoomName::new(ROOMS[*r as usize]).expect("valid"))
                        .collect(),
                    kind: kind.name().to_owned(),
                    data: obj(kind.data(*n)),
                },
            ),
        ),
        Op::SendUser(u, n) => Answer::Sent(core.send_direct(
            now,
            DirectMessage {
                target: SendTarget::User(USERS[*u as usize].to_owned()),
                kind: "system_info".to_owned(),
                data: obj(direct_data(*n)),
                to_other_nodes: true,
            },
        )),
        Op::SendConn(c, n) => Answer::Sent(core.send_direct(
            now,
            DirectMessage {
                target: SendTarget::Connection(conn_id(*c)),
                kind: "system_info".to_owned(),
                data: obj(direct_data(*n)),
                to_other_nodes: true,
            },
        )),
        _ => {
            let mut text = String::new();
            core.handle(now, input(op, &mut text));
            Answer::Done
        }
    }
}

fn conn_index(id: ConnectionId) -> u8 {
    let n = id.0.as_u128();
    assert!(
        (1..=256).contains(&n),
        "output for a connection never opened: {id:?}"
    );
    (n - 1) as u8
}

/// Where the core's output and the model's part ways: what differs.
#[derive(Debug)]
struct Mismatch(String);

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn decode(output: Output) -> Result<Ev, Mismatch> {
    Ok(match output {
        Output::Send { conn, frame } => Ev::Send(
            conn_index(conn),
            serde_json::from_str(frame.as_str())
                .map_err(|e| Mismatch(format!("frame is not JSON ({e}): {frame:?}")))?,
        ),
        Output::Ping { conn } => Ev::Ping(conn_index(conn)),
        Output::Close { conn, code } => Ev::Close(conn_index(conn), code),
        Output::Check { .. } => {
            return Err(Mismatch("a Check must be answered by the harness".into()))
        }
    })
}

/// The response in the model's terms, and the (room, epoch) pairs of a receipt.
fn resp(answer: Answer) -> (Resp, Vec<(String, String)>) {
    match answer {
        Answer::Done => (Resp::Done, Vec::new()),
        Answer::Broadcast(BroadcastOutcome::Answered(Ok(receipt))) => (
            Resp::Published {
                delivered: receipt.delivered,
                seqs: receipt
                    .rooms
                    .iter()
                    .map(|r| (r.room.as_str().to_owned(), r.seq))
                    .collect(),
            },
            receipt
                .rooms
                .into_iter()
                .map(|r| (r.room.as_str().to_owned(), r.epoch))
                .collect(),
        ),
        Answer::Sent(Ok(delivered)) => (Resp::Sent { delivered }, Vec::new()),
        Answer::Broadcast(BroadcastOutcome::Answered(Err(error))) | Answer::Sent(Err(error)) => {
            (Resp::Rejected(error.code().to_owned()), Vec::new())
        }
        // The in-memory engine answers inline: a broadcast is never pending.
        Answer::Broadcast(BroadcastOutcome::Pending(ticket)) => {
            (Resp::Rejected(format!("pending {ticket:?}")), Vec::new())
        }
    }
}

fn check_invariants(core: &Standalone, step: &str) -> Result<(), TestCaseError> {
    core.check_invariants()
        .map_err(|e| TestCaseError::fail(format!("after {step}: invariant broken: {e}")))
}

/// How often each kind of event was checked, across all cases: proves the
/// generator reaches what the model is meant to check.
#[derive(Default)]
struct Coverage(std::sync::Mutex<BTreeMap<String, u64>>);

impl Coverage {
    fn count(&self, events: &[Ev]) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut bump = |label: String| *counts.entry(label).or_default() += 1;
        let mut recipients = 0;
        for ev in events {
            match ev {
                Ev::Send(_, v) if v["type"] == "error" => bump(format!(
                    "error {}",
                    v["data"]["code"].as_str().unwrap_or("?")
                )),
                Ev::Send(_, v) if v.get("seq").is_some() => {
                    recipients += 1;
                    bump("broadcast delivery".into());
                }
                Ev::Send(_, v) if v["data"]["message"] == "direct" => bump("direct".into()),
                Ev::Send(_, v) if v["data"].get("epoch").is_some() => {
                    bump("join reply".into());
                    if v["data"]["seq"].as_u64() > Some(0) {
                        bump("join reply with seq > 0".into());
                    }
                }
                Ev::Send(_, v) if v["data"].get("delivered").is_some() => {
                    bump("publish reply".into())
                }
                Ev::Send(_, v) => bump(v["type"].as_str().unwrap_or("?").to_owned()),
                Ev::Ping(_) => bump("ping".into()),
                Ev::Close(_, code) => bump(format!("close {}", code.code())),
            }
        }
        if recipients >= 3 {
            bump("fan-out to 3+".into());
        }
    }

    fn bump(&self, label: &str) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(label.to_owned()).or_default() += 1;
    }
}

fn run_against_model(case: &Case, coverage: &Coverage) -> Result<(), TestCaseError> {
    let mut core = Standalone::new(config(case.tight));
    let mut model = Model::new(case.tight);
    check_invariants(&core, "new")?;
    for (i, op) in case.ops.iter().enumerate() {
        if let Op::Advance(us) = op {
            model.now_us += u64::from(*us);
        }
        if reopens(&core, op) {
            continue; // a caller bug the core asserts against: ids are new
        }
        let (expected, expected_resp) = model.step(op);
        let response = apply(&mut core, model.now(), op);
        let step = format!("step {i} ({op:?})");
        check_invariants(&core, &step)?;
        let mut actual = Vec::new();
        while let Some(output) = core.poll_output() {
            if let Output::Check { conn, .. } = output {
                // The shell's part of `refresh`: this harness refuses every token.
                let why = "the model harness refuses every token";
                let result = Err(roomcast_core::TokenRefused(why.to_owned()));
                let answer = roomcast_core::CheckAnswer::Token(result);
                core.handle(model.now(), Input::CheckDone { conn, answer });
                continue;
            }
            let mut ev = decode(output).map_err(|e| TestCaseError::fail(e.0))?;
            model
                .normalize(&mut ev)
                .map_err(|e| TestCaseError::fail(format!("{step}: {e}")))?;
            actual.push(ev);
        }
        check_invariants(&core, &step)?;
        prop_assert_eq!(&actual, &expected, "outputs of {}", step);
        coverage.count(&expected);
        let (response, epochs) = resp(response);
        prop_assert_eq!(response, expected_resp, "response to {}", step);
        for (room, epoch) in epochs {
            model
                .check_receipt_epoch(&room, epoch)
                .map_err(|e| TestCaseError::fail(format!("{step}: {e}")))?;
        }
        prop_assert_eq!(
            core.connection_count(),
            model.conns.len(),
            "connection_count after {}",
            step
        );
        prop_assert_eq!(
            core.room_count(),
            model.rooms.len(),
            "room_count after {}",
            step
        );
        if let Some(at) = core.poll_timeout() {
            // The model's timeouts never fire within a case.
            prop_assert!(
                at > model.now_us,
                "deadline {} already due after {}",
                at,
                step
            );
        }
    }
    for _ in 0..model.epochs_learned {
        coverage.bump("room lifetime (epoch) checked");
    }
    if case.tight {
        coverage.bump("tight case");
    }
    // Close everything: 1001 for each open connection, in id order.
    core.handle(model.now(), Input::Shutdown);
    let mut closes = Vec::new();
    while let Some(output) = core.poll_output() {
        closes.push(decode(output).map_err(|e| TestCaseError::fail(e.0))?);
    }
    let expected: Vec<Ev> = model
        .conns
        .keys()
        .map(|c| Ev::Close(*c, CloseCode::GoingAway))
        .collect();
    prop_assert_eq!(closes, expected, "shutdown");
    check_invariants(&core, "shutdown")?;
    prop_assert_eq!(core.connection_count(), 0);
    prop_assert_eq!(core.room_count(), 0);
    prop_assert_eq!(core.poll_timeout(), None);
    Ok(())
}

/// Every output and response of one run, raw (frames as bytes).
fn raw_run(case: &Case) -> Vec<(Vec<Output>, Answer)> {
    let mut core = Standalone::new(config(case.tight));
    let mut now_us = 0;
    let mut log = Vec::new();
    for op in &case.ops {
        if let Op::Advance(us) = op {
            now_us += u64::from(*us);
        }
        if reopens(&core, op) {
            continue;
        }
        let response = apply(&mut core, Now::from_start(START_MS, now_us), op);
        let outputs = std::iter::from_fn(|| core.poll_output()).collect();
        log.push((outputs, response));
    }
    core.handle(Now::from_start(START_MS, now_us), Input::Shutdown);
    log.push((
        std::iter::from_fn(|| core.poll_output()).collect(),
        Answer::Done,
    ));
    log
}

#[test]
fn core_matches_the_reference_model() {
    let coverage = Coverage::default();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 1000,
        max_shrink_iters: 4096,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&case_strategy(200), |case| {
        run_against_model(&case, &coverage)
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    // The generator must actually reach what the model checks.
    let counts = coverage.0.into_inner().unwrap_or_else(|e| e.into_inner());
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!("coverage over 1000 cases:\n  {}", summary.join("\n  "));
    for (label, at_least) in [
        ("connected", 3_000),
        ("join reply", 3_500),
        ("join reply with seq > 0", 800),
        ("broadcast delivery", 3_500),
        ("fan-out to 3+", 250),
        ("publish reply", 200),
        ("presence", 200),
        ("pong", 800),
        ("system_info", 1_000), // leave replies
        ("direct", 1_200),
        ("room lifetime (epoch) checked", 2_000),
        ("tight case", 250),
        ("error RATE_LIMITED", 800),
        ("close 1008", 300),
        ("close 1009", 80),
        ("error FORBIDDEN", 2_000),
        ("error TOO_MANY_ROOMS", 300),
        ("error INVALID_MESSAGE", 1_500),
        ("error INVALID_SUBSCRIPTION", 500),
        ("error UNKNOWN_ACTION", 150),
        ("error UNKNOWN_TYPE", 60),
        ("error INVALID_KEY", 30),
        ("error INVALID_TOKEN", 80),
    ] {
        let seen = counts.get(label).copied().unwrap_or(0);
        assert!(
            seen >= at_least,
            "the generator reached {label:?} only {seen} times (want {at_least}):\n  {}",
            summary.join("\n  ")
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    })]

    #[test]
    fn same_inputs_give_byte_identical_outputs(case in case_strategy(200)) {
        let first = raw_run(&case);
        let second = raw_run(&case);
        prop_assert_eq!(first.len(), second.len());
        for (i, (a, b)) in first.iter().zip(&second).enumerate() {
            let a_bytes: Vec<_> = a.0.iter().map(raw).collect();
            let b_bytes: Vec<_> = b.0.iter().map(raw).collect();
            prop_assert_eq!(a_bytes, b_bytes, "outputs of step {}", i);
            prop_assert_eq!(&a.1, &b.1, "response of step {}", i);
        }
    }
}

/// An output with its frame as raw bytes.
fn raw(output: &Output) -> (ConnectionId, u8, Vec<u8>) {
    match output {
        Output::Send { conn, frame } => (*conn, 0, frame.bytes().to_vec()),
        Output::Ping { conn } => (*conn, 1, Vec::new()),
        Output::Close { conn, code } => (*conn, 2, code.code().to_be_bytes().to_vec()),
        Output::Check { conn, check } => (*conn, 3, format!("{check:?}").into_bytes()),
    }
}

/// A fixed scenario through the model, so a broken model fails loudly even
/// if generation happened to miss something.
#[test]
fn model_smoke_scenario() {
    let ops = vec![
        Op::Open(0, Who::User(0, Scope::Publish)),
        Op::Open(1, Who::Anon),
        Op::Open(2, Who::User(1, Scope::Read)),
        Op::Text(0, Msg::Join(0, Form::Data), Some(Id::Num(1))),
        Op::Text(1, Msg::Join(0, Form::Top), None),
        Op::Text(2, Msg::Join(0, Form::Both), Some(Id::Str(1))),
        Op::Text(1, Msg::Join(7, Form::Data), None), // user:alice: forbidden
        Op::Text(0, Msg::Join(7, Form::Data), None),
        Op::Text(0, Msg::Join(9, Form::Data), None), // auth:ops
        Op::Text(0, Msg::Join(1, Form::Data), Some(Id::Num(2))), // 4th room: too many
        Op::Broadcast(vec![0, 7, 3], BKind::DownloadProgress, 7),
        Op::Text(0, Msg::Publish(0, PubKind::QueueStatus), None),
        Op::Text(2, Msg::Publish(0, PubKind::QueueStatus), None),
        Op::Text(1, Msg::Presence(0), Some(Id::Num(3))),
        Op::Text(1, Msg::Leave(0, Form::Data), None),
        Op::Text(1, Msg::Presence(0), None),
        Op::Text(1, Msg::Bad(0), Some(Id::Num(4))),
        Op::Text(1, Msg::Bad(21), Some(Id::Num(5))),
        Op::Binary(1),
        Op::SendUser(0, 9),
        Op::SendConn(1, 9),
        Op::Advance(250_000),
        Op::Abort(2, CloseCode::MessageTooBig),
        Op::Closed(0),
        Op::Text(1, Msg::Join(0, Form::Data), None), // recreated: new epoch
        Op::Text(1, Msg::Ping(2), Some(Id::Str(0))),
    ];
    for tight in [false, true] {
        let case = Case {
            tight,
            conns: 3,
            ops: ops.clone(),
        };
        if let Err(e) = run_against_model(&case, &Coverage::default()) {
            panic!("{e}\n{case:?}");
        }
    }
}
