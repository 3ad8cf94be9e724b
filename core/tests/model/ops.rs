//! The operations a case is made of, and how each is rendered as client
//! input (frames, API calls, closes, time).

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    Read,
    Publish,
    PublishDownloads,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Who {
    Anon,
    User(u8, Scope),
}

#[derive(Clone, Copy)]
pub(crate) enum Form {
    Data,
    Top,
    /// Both, with a decoy at the top level: `data.room` must win.
    Both,
}

#[derive(Clone)]
pub(crate) enum Id {
    Num(i64),
    Str(u8),
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum PubKind {
    QueueStatus,
    DownloadProgress,
    DownloadNoKey,
    MadeUp,
    Reserved,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum BKind {
    QueueStatus,
    DownloadProgress,
    ScanStarted,
    SystemWarning,
}

#[derive(Clone)]
pub(crate) enum Msg {
    Join(u8, Form),
    Leave(u8, Form),
    Ping(u8),
    Presence(u8),
    Publish(u8, PubKind),
    Bad(u8),
}

#[derive(Clone)]
pub(crate) enum Op {
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
    pub(crate) fn name(self) -> &'static str {
        match self {
            PubKind::QueueStatus => "queue_status",
            PubKind::DownloadProgress | PubKind::DownloadNoKey => "download_progress",
            PubKind::MadeUp => "made_up",
            PubKind::Reserved => "connected",
        }
    }

    pub(crate) fn data(self) -> Value {
        match self {
            PubKind::QueueStatus => json!({"queued": 1}),
            PubKind::DownloadProgress => json!({"key": "one-piece", "percent": 12.5}),
            PubKind::DownloadNoKey => json!({"percent": 1}),
            PubKind::MadeUp | PubKind::Reserved => json!({}),
        }
    }

    /// The error a granted publisher gets, if any.
    pub(crate) fn error(self) -> Option<&'static str> {
        match self {
            PubKind::QueueStatus | PubKind::DownloadProgress => None,
            PubKind::DownloadNoKey => Some("INVALID_KEY"),
            PubKind::MadeUp | PubKind::Reserved => Some("UNKNOWN_TYPE"),
        }
    }
}

impl BKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            BKind::QueueStatus => "queue_status",
            BKind::DownloadProgress => "download_progress",
            BKind::ScanStarted => "scan_started",
            BKind::SystemWarning => "system_warning",
        }
    }

    pub(crate) fn data(self, n: u16) -> Value {
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
pub(crate) struct Bad {
    /// `$ID` is replaced by `,"id":<id>` (or nothing).
    pub(crate) template: String,
    pub(crate) code: &'static str,
    /// Whether the id can be read back from the frame (and so is echoed).
    pub(crate) echoes_id: bool,
    /// The exact `data.message`, where the protocol fixes it.
    pub(crate) message: Option<&'static str>,
}

pub(crate) fn bad_frames() -> &'static [Bad] {
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

pub(crate) fn id_value(id: &Id) -> Value {
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
pub(crate) fn render(msg: &Msg, id: Option<&Id>) -> String {
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
