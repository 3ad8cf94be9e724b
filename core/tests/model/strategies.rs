//! The proptest strategies that draw cases, and the core configurations
//! they run under (generous or tight rate limits).

use super::*;

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
pub(crate) struct Case {
    /// Tight rate limits (modeled exactly) instead of generous ones.
    pub(crate) tight: bool,
    pub(crate) conns: u8,
    pub(crate) ops: Vec<Op>,
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

pub(crate) fn case_strategy(max_ops: usize) -> impl Strategy<Value = Case> {
    let conns = prop_oneof![1..=4u8, 1..=50u8];
    (conns, proptest::bool::weighted(0.35)).prop_flat_map(move |(conns, tight)| {
        vec(op_strategy(conns), 0..=max_ops).prop_map(move |ops| Case { tight, conns, ops })
    })
}

// ----- configuration ---------------------------------------------------------------

pub(crate) struct RateLimits {
    pub(crate) per_second: u32,
    pub(crate) burst: u32,
    pub(crate) violations_max: u32,
}

pub(crate) fn rate_limits(tight: bool) -> RateLimits {
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

pub(crate) fn config(tight: bool) -> CoreConfig {
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
            // tests in `core/tests/protocol/` and by the simulator's oracle.
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

pub(crate) fn conn_id(c: u8) -> ConnectionId {
    ConnectionId::from_u128(u128::from(c) + 1)
}

pub(crate) fn identity(who: Who) -> Identity {
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

pub(crate) fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("payloads are objects"),
    }
}

pub(crate) fn direct_data(n: u16) -> Value {
    json!({"message": "direct", "n": n})
}
