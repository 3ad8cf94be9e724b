//! The reference model: plain `BTreeMap`s that say what the core must
//! output for each operation.

use super::*;

#[derive(Clone, PartialEq)]
pub(crate) enum Ev {
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
pub(crate) enum Resp {
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

pub(crate) struct MConn {
    user: Option<(u8, Scope)>,
    rooms: BTreeSet<u8>,
    bucket: Bucket,
}

pub(crate) struct MRoom {
    members: BTreeSet<u8>,
    seq: u64,
    /// Learned from the first join reply of this room's lifetime.
    epoch: Option<String>,
}

pub(crate) struct Model {
    pub(crate) rate: RateLimits,
    pub(crate) now_us: u64,
    pub(crate) conns: BTreeMap<u8, MConn>,
    pub(crate) rooms: BTreeMap<u8, MRoom>,
    pub(crate) seen_epochs: BTreeSet<String>,
    /// Join replies that named a room lifetime's epoch for the first time.
    pub(crate) epochs_learned: u64,
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
    pub(crate) fn new(tight: bool) -> Model {
        Model {
            rate: rate_limits(tight),
            now_us: 0,
            conns: BTreeMap::new(),
            rooms: BTreeMap::new(),
            seen_epochs: BTreeSet::new(),
            epochs_learned: 0,
        }
    }

    pub(crate) fn now(&self) -> Now {
        Now::from_start(START_MS, self.now_us)
    }

    fn envelope(&self, kind: &str, data: Value, id: Option<&Id>) -> Value {
        let mut v = json!({"type": kind, "timestamp": timestamp(self.now_us), "data": data});
        if let Some(id) = id {
            v["id"] = id_value(id);
        }
        v
    }

    pub(crate) fn error(&self, code: &str, message: Option<&str>, id: Option<&Id>) -> Value {
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

    pub(crate) fn close(&mut self, conn: u8) {
        if let Some(c) = self.conns.remove(&conn) {
            for room in c.rooms {
                self.remove_member(conn, room);
            }
        }
    }

    /// Numbers and fans out one broadcast; returns (delivered, seqs).
    pub(crate) fn broadcast(
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

    pub(crate) fn step(&mut self, op: &Op) -> (Vec<Ev>, Resp) {
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

    pub(crate) fn join(&mut self, c: u8, r: u8, id: Option<&Id>) -> Value {
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
    pub(crate) fn check_receipt_epoch(
        &mut self,
        room: &str,
        epoch: String,
    ) -> Result<(), Mismatch> {
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
    pub(crate) fn normalize(&mut self, ev: &mut Ev) -> Result<(), Mismatch> {
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
