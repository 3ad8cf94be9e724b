//! The events a workload is made of: the simulator draws them from its
//! seeded generator, the fuzz target decodes them from bytes
//! ([`Arbitrary`]), and [`Driver::apply`] feeds both the same way.
//!
//! A client is named by its index among the open clients (taken modulo
//! their number; nothing happens while none is open), so that any decoded
//! index names one.

use arbitrary::Arbitrary;
use roomcast_core::oracle::{ClientKey, Sent};
use roomcast_core::parse::parse_request;
use roomcast_core::validate::DirectMessage;
use roomcast_core::{
    BroadcastOutcome, CloseCode, ConnectionId, Grants, Identity, Input, Publish, RoomName,
    SendTarget, User,
};
use serde_json::{json, Map};

use super::{Client, Driver, DriverError, Observer};

/// Messages no server should accept, with whether they carry an id.
const GARBAGE: [(&str, bool); 8] = [
    ("not json at all", false),
    ("[1,2,3]", false),
    ("{\"action\":5}", false),
    (
        "{\"action\":\"join\",\"data\":{\"room\":\"bad room\"},\"id\":ID}",
        true,
    ),
    ("{\"action\":\"fly\",\"id\":ID}", true),
    ("{\"action\":\"join\",\"data\":[],\"id\":ID}", true),
    ("{\"action\":\"leave\",\"id\":ID}", true),
    ("{\"id\":ID}", true),
];

/// A connection opening.
#[derive(Arbitrary, Clone, Debug)]
pub struct Opening {
    /// The high 64 bits of its connection id (the low ones: its client key).
    pub salt: u64,
    /// Its user (by number) and when its token expires (ms from now);
    /// `None`: anonymous.
    pub user: Option<(u64, Option<u16>)>,
}

/// One step of a core workload (see the module docs).
#[derive(Arbitrary, Clone, Debug)]
pub enum Event {
    /// A client connects.
    Open(Opening),
    /// A dropped client comes back and joins its rooms again from these
    /// (room, epoch, seq) positions. Only the simulator makes these: the
    /// positions are ones a client really heard.
    #[arbitrary(skip)]
    Return {
        opening: Opening,
        positions: Vec<(String, String, u64)>,
    },
    Join {
        client: u64,
        room: u64,
        top_level: bool,
    },
    Leave {
        client: u64,
        room: u64,
        top_level: bool,
    },
    Presence {
        client: u64,
        room: u64,
    },
    Ping {
        client: u64,
    },
    /// `pings` pings in a row.
    Burst {
        client: u64,
        pings: u8,
    },
    /// One of a fixed set of messages no server should accept.
    Garbage {
        client: u64,
        which: u8,
    },
    /// Any text the server rejects without an id (anything else would
    /// change membership or expect a reply behind the oracle's back).
    Raw {
        client: u64,
        text: String,
    },
    Binary {
        client: u64,
    },
    /// The client's connection ends without a close frame.
    Crash {
        client: u64,
    },
    /// The one abort a healthy shell sends (1011 would be a server fault).
    Abort {
        client: u64,
    },
    /// The client stops reading.
    Stall {
        client: u64,
    },
    /// A stalled client (by index among them) reads again.
    Unstall {
        stalled: u64,
    },
    /// The shell reports bytes written out of turn.
    Written {
        client: u64,
        bytes: u16,
    },
    /// The publisher broadcasts to up to three rooms, a progress event
    /// (conflated) of this download or a plain one.
    Broadcast {
        rooms: Vec<u64>,
        progress: Option<u64>,
    },
    /// `/api/send` to a user.
    Direct {
        user: u64,
    },
    /// The clock moves on; what is due fires once.
    Wait {
        us: u16,
    },
    /// The clock moves on deadline by deadline.
    Settle {
        ms: u16,
    },
    Shutdown,
}

impl Driver {
    /// Feeds one event.
    pub fn apply(&mut self, event: Event, watch: &mut impl Observer) -> Result<(), DriverError> {
        match event {
            Event::Open(opening) => self.open_client(opening, watch).map(drop),
            Event::Return { opening, positions } => {
                let Some(key) = self.open_client(opening, watch)? else {
                    return Ok(());
                };
                for (room, epoch, seq) in positions {
                    if !self.clients.contains_key(&key) {
                        break;
                    }
                    let id = self.next_request(key);
                    let text = json!({"action": "join", "data": {"room": room, "since": {"epoch": epoch, "seq": seq}}, "id": id})
                        .to_string();
                    self.request(
                        key,
                        "recover",
                        id,
                        Sent::Recover(room, epoch, seq),
                        &text,
                        watch,
                    )?;
                }
                Ok(())
            }
            Event::Broadcast { rooms, progress } => self.broadcast(&rooms, progress, watch),
            Event::Direct { user } => {
                let message = DirectMessage {
                    target: SendTarget::User(self.user(user)),
                    kind: "system_info".into(),
                    data: Map::new(),
                    to_other_nodes: true,
                };
                self.call(
                    0,
                    "direct",
                    |core, now| core.send_direct(now, message),
                    watch,
                )
                .map(drop)
            }
            Event::Wait { us } => self.wait(u64::from(us), watch),
            Event::Settle { ms } => self.settle_for(u64::from(ms), watch),
            Event::Shutdown => self.input(0, "shutdown", Input::Shutdown, watch).map(drop),
            Event::Unstall { stalled } => {
                let stalled_clients = self.stalled_clients();
                match stalled_clients.len() as u64 {
                    0 => Ok(()),
                    n => self.unstall(stalled_clients[(stalled % n) as usize], watch),
                }
            }
            event => self.client_event(event, watch),
        }
    }

    /// An event of one open client.
    fn client_event(&mut self, event: Event, watch: &mut impl Observer) -> Result<(), DriverError> {
        let pick = match &event {
            Event::Join { client, .. }
            | Event::Leave { client, .. }
            | Event::Presence { client, .. }
            | Event::Ping { client }
            | Event::Burst { client, .. }
            | Event::Garbage { client, .. }
            | Event::Raw { client, .. }
            | Event::Binary { client }
            | Event::Crash { client }
            | Event::Abort { client }
            | Event::Stall { client }
            | Event::Written { client, .. } => *client,
            _ => unreachable!("Driver::apply handles the other events"),
        };
        if self.open.is_empty() {
            return Ok(());
        }
        let key = self.open[(pick % self.open.len() as u64) as usize];
        let conn = self.clients[&key].conn;
        match event {
            Event::Join {
                room, top_level, ..
            } => {
                let room = self.room(room);
                self.membership(
                    key,
                    "join",
                    Sent::Join(room.clone()),
                    &room,
                    top_level,
                    watch,
                )
            }
            Event::Leave {
                room, top_level, ..
            } => {
                let room = self.room(room);
                self.membership(
                    key,
                    "leave",
                    Sent::Leave(room.clone()),
                    &room,
                    top_level,
                    watch,
                )
            }
            Event::Presence { room, .. } => {
                let room = self.room(room);
                self.membership(key, "presence", Sent::Other, &room, false, watch)
            }
            Event::Ping { .. } => self.ping(key, "ping", watch),
            Event::Burst { pings, .. } => {
                for _ in 0..pings {
                    if !self.clients.contains_key(&key) {
                        break;
                    }
                    self.ping(key, "burst-ping", watch)?;
                }
                Ok(())
            }
            Event::Garbage { which, .. } => {
                let (template, has_id) = GARBAGE[usize::from(which) % GARBAGE.len()];
                if has_id {
                    let id = self.next_request(key);
                    let text = template.replace("ID", &id.to_string());
                    self.request(key, "garbage", id, Sent::Other, &text, watch)
                } else {
                    let input = Input::Text {
                        conn,
                        text: template,
                    };
                    self.input(key, "garbage", input, watch).map(drop)
                }
            }
            Event::Raw { text, .. } => match parse_request(&text) {
                Err(rejection) if rejection.id.is_none() => {
                    let input = Input::Text { conn, text: &text };
                    self.input(key, "raw", input, watch).map(drop)
                }
                _ => Ok(()),
            },
            Event::Binary { .. } => self
                .input(key, "binary", Input::Binary { conn }, watch)
                .map(drop),
            Event::Crash { .. } => self.crash(key, watch),
            Event::Abort { .. } => {
                let code = CloseCode::MessageTooBig;
                self.input(key, "abort", Input::Abort { conn, code }, watch)
                    .map(drop)
            }
            Event::Stall { .. } => {
                if let Some(client) = self.clients.get_mut(&key) {
                    client.stalled = true;
                }
                watch.note(self.now_us, key, "stall", 0);
                Ok(())
            }
            Event::Written { bytes, .. } => {
                let bytes = usize::from(bytes);
                self.input(key, "written", Input::Written { conn, bytes }, watch)
                    .map(drop)
            }
            _ => unreachable!("picked above"),
        }
    }

    fn room(&self, n: u64) -> String {
        format!("{}{}", self.names.room_prefix, n % self.names.rooms)
    }

    fn user(&self, n: u64) -> String {
        format!("{}{}", self.names.user_prefix, n % self.names.users)
    }

    fn next_request(&mut self, key: ClientKey) -> u64 {
        let client = self.clients.get_mut(&key).expect("picked clients are open");
        client.next_request += 1;
        client.next_request
    }

    /// Tells the oracle about the request, then sends it.
    fn request(
        &mut self,
        key: ClientKey,
        what: &'static str,
        id: u64,
        sent: Sent,
        text: &str,
        watch: &mut impl Observer,
    ) -> Result<(), DriverError> {
        self.oracle.sent(key, id.to_string(), sent)?;
        let conn = self.clients[&key].conn;
        self.input(key, what, Input::Text { conn, text }, watch)
            .map(drop)
    }

    /// A join, leave or presence request, its room in `data` or (the old
    /// form) at the top level.
    fn membership(
        &mut self,
        key: ClientKey,
        verb: &'static str,
        sent: Sent,
        room: &str,
        top_level: bool,
        watch: &mut impl Observer,
    ) -> Result<(), DriverError> {
        let id = self.next_request(key);
        let text = if top_level {
            json!({"action": verb, "room": room, "id": id}).to_string()
        } else {
            json!({"action": verb, "data": {"room": room}, "id": id}).to_string()
        };
        self.request(key, verb, id, sent, &text, watch)
    }

    fn ping(
        &mut self,
        key: ClientKey,
        what: &'static str,
        watch: &mut impl Observer,
    ) -> Result<(), DriverError> {
        let id = self.next_request(key);
        let text = format!("{{\"action\":\"ping\",\"id\":{id}}}");
        self.request(key, what, id, Sent::Other, &text, watch)
    }

    /// Opens a client; its key while it is still open.
    fn open_client(
        &mut self,
        opening: Opening,
        watch: &mut impl Observer,
    ) -> Result<Option<ClientKey>, DriverError> {
        let key = self.next_client;
        self.next_client += 1;
        let conn = ConnectionId::from_u128((u128::from(opening.salt) << 64) | u128::from(key));
        let identity = match opening.user {
            None => Identity::Anonymous,
            Some((user, expires_in_ms)) => Identity::User(User {
                id: self.user(user),
                scopes: Vec::new(),
                expires_unix_ms: expires_in_ms.map(|ms| self.now().unix_ms + i64::from(ms)),
                grants: Grants::none(),
            }),
        };
        self.clients.insert(
            key,
            Client {
                conn,
                next_request: 0,
                unread: Vec::new(),
                stalled: false,
            },
        );
        self.open.push(key);
        self.by_conn.insert(conn, key);
        self.oracle.opened(key);
        self.input(key, "open", Input::Open { conn, identity }, watch)?;
        Ok(self.clients.contains_key(&key).then_some(key))
    }

    fn broadcast(
        &mut self,
        picks: &[u64],
        progress: Option<u64>,
        watch: &mut impl Observer,
    ) -> Result<(), DriverError> {
        let mut rooms: Vec<RoomName> = Vec::new();
        for &n in picks.iter().take(3) {
            let room = RoomName::new(&self.room(n)).expect("generated room names are valid");
            if !rooms.contains(&room) {
                rooms.push(room);
            }
        }
        if rooms.is_empty() {
            return Ok(());
        }
        let (kind, data) = match progress {
            // A few series, so conflation has something to replace.
            Some(download) => (
                "download_progress",
                json!({"key": "attack-on-titan", "download_id": download, "percent": self.events % 100}),
            ),
            None => ("queue_status", json!({"pending": self.events})),
        };
        let serde_json::Value::Object(data) = data else {
            unreachable!("json! object")
        };
        let publish = Publish {
            rooms,
            kind: kind.into(),
            data,
        };
        let outcome = self.call(
            0,
            "broadcast",
            |core, now| core.broadcast(now, publish),
            watch,
        )?;
        // A delayed answer is recorded when it comes (`route`).
        if let BroadcastOutcome::Answered(answer) = outcome {
            crate::record_receipt(&mut self.oracle, answer);
        }
        Ok(())
    }
}
