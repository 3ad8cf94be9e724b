//! Client messages: the rate limiter's verdict, parsing, and the handlers
//! of every action but `join` (in [`rooms`](crate::rooms)) and `publish`
//! (in [`publishing`](crate::publishing)). Whether a message runs now or waits
//! behind an earlier request is `reply_order`'s.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::calls::Call;
use crate::checks::{Check, PendingCheck};
use crate::codes::{CloseCode, ErrorCode};
use crate::engine::{CallId, EngineError, EngineRequest, PresenceEntry};
use crate::envelope;
use crate::machine::Core;
use crate::names::{ConnectionId, RoomName};
use crate::output::TextFrame;
use crate::parse::{parse_request, Action, Rejection, RequestId};
use crate::rate::Verdict;
use crate::time::Now;

impl Core {
    /// Parses and handles one client message, given the rate limiter's
    /// verdict on it.
    pub(crate) fn run_message(
        &mut self,
        now: Now,
        conn: ConnectionId,
        text: Option<&str>,
        verdict: Verdict,
    ) {
        let Some(slot) = self.conns.slot(conn) else {
            return;
        };
        let parsed = match text {
            Some(text) => parse_request(text),
            None => Err(Rejection {
                id: None,
                code: ErrorCode::InvalidMessage,
                message: "binary frames are not supported; send JSON text".to_owned(),
            }),
        };
        match verdict {
            Verdict::Allow => {}
            Verdict::Warn => {
                let id = match &parsed {
                    Ok(request) => request.id.as_ref(),
                    Err(rejection) => rejection.id.as_ref(),
                };
                let frame = envelope::error(
                    now.unix_ms,
                    ErrorCode::RateLimited,
                    "rate limit exceeded; slow down",
                    id,
                );
                return self.send(slot, frame);
            }
            Verdict::Close => return self.close(conn, Some(CloseCode::PolicyViolation)),
        }
        let request = match parsed {
            Ok(request) => request,
            Err(rejection) => {
                let frame = envelope::error(
                    now.unix_ms,
                    rejection.code,
                    &rejection.message,
                    rejection.id.as_ref(),
                );
                return self.send(slot, frame);
            }
        };
        let id = request.id.as_ref();
        let reply = match request.action {
            Action::Ping => envelope::pong(now.unix_ms, id),
            Action::Join { room, since } => return self.join(now, slot, room, since, request.id),
            Action::Leave { room } => self.leave(now, slot, room, id),
            Action::Presence { room, after } => {
                return self.presence(now, slot, room, after, request.id)
            }
            Action::Publish { room, kind, data } => {
                return self.client_publish(now, slot, room, kind, data, request.id)
            }
            Action::Refresh { token } => {
                if self
                    .conns
                    .at(slot)
                    .and_then(|c| c.identity.user())
                    .is_none()
                {
                    let message =
                        "an anonymous connection has no token to refresh; reconnect with a token";
                    envelope::error(now.unix_ms, ErrorCode::InvalidToken, message, id)
                } else {
                    // Verification is the shell's (it holds the keys); the
                    // answer comes back as `Input::CheckDone`.
                    let pending = PendingCheck::Token { id: request.id };
                    return self.start_check(conn, Check::Token { token }, pending);
                }
            }
        };
        self.send(slot, reply);
    }

    fn leave(&mut self, now: Now, slot: u32, room: RoomName, id: Option<&RequestId>) -> TextFrame {
        match self.conns.at_mut(slot) {
            Some(connection) => {
                if connection.rooms.remove(&room) {
                    connection.conflated.drop_room(&room);
                    let conn = connection.id;
                    let user = connection.identity.user().map(|u| u.id.clone());
                    self.remove_member(&room, conn, user.as_deref());
                }
            }
            // The reply then finds no connection either (`send`).
            None => self.impossible("a leave handled for an empty slot"),
        }
        #[derive(Serialize)]
        struct Left<'a> {
            message: String,
            room: &'a str,
        }
        let data = Left {
            message: format!("Left room: {room}"),
            room: room.as_str(),
        };
        envelope::envelope("system_info", now.unix_ms, None, &data, id)
    }

    /// A `presence` request: members only; the list comes from the engine
    /// (every node's members), so the reply waits for it.
    fn presence(
        &mut self,
        now: Now,
        slot: u32,
        room: RoomName,
        after: Option<String>,
        id: Option<RequestId>,
    ) {
        let Some(connection) = self.conns.at(slot) else {
            self.impossible("a presence request handled for an empty slot");
            return;
        };
        let conn = connection.id;
        if !connection.rooms.contains(&room) {
            let message = format!("not a member of room: {room}");
            let frame = envelope::error(now.unix_ms, ErrorCode::Forbidden, &message, id.as_ref());
            return self.send(slot, frame);
        }
        if !self.engine_has_room(1) {
            let message = "the engine is overloaded; try again";
            let frame = envelope::error(
                now.unix_ms,
                ErrorCode::EngineUnavailable,
                message,
                id.as_ref(),
            );
            return self.send(slot, frame);
        }
        let call = self.engine.call(Call::Presence {
            conn,
            room: room.clone(),
            after,
            id,
        });
        self.engine.push(EngineRequest::PresenceList { call, room });
        self.start_waiting(conn);
    }

    /// The engine's presence list: the reply to the request that asked.
    pub(crate) fn on_presence(
        &mut self,
        now: Now,
        call: CallId,
        result: Result<Vec<PresenceEntry>, EngineError>,
    ) {
        let Some(Call::Presence {
            conn,
            room,
            after,
            id,
        }) = self.engine.take(call)
        else {
            self.impossible("a presence answer for no presence request");
            return;
        };
        let Some(slot) = self.conns.slot(conn) else {
            return; // closed while waiting
        };
        self.finish_waiting(conn);
        let frame = match result {
            Ok(entries) => {
                let limits = &self.config.limits;
                presence_reply(now, &room, &entries, after.as_deref(), limits, id.as_ref())
            }
            Err(error) => {
                let message = format!("presence failed: {}; try again", error.message());
                envelope::error(
                    now.unix_ms,
                    ErrorCode::EngineUnavailable,
                    &message,
                    id.as_ref(),
                )
            }
        };
        self.send(slot, frame);
    }
}

/// The `presence` reply: the room's connection count, its distinct users
/// (sorted), a page of them after `after`, and where the next page starts.
fn presence_reply(
    now: Now,
    room: &RoomName,
    entries: &[PresenceEntry],
    after: Option<&str>,
    limits: &crate::limits::Limits,
    id: Option<&RequestId>,
) -> TextFrame {
    let users: BTreeSet<&str> = entries.iter().filter_map(|e| e.user.as_deref()).collect();
    let page_max = limits.presence_page_max;
    let page: Vec<&str> = users
        .iter()
        .copied()
        .filter(|u| after.is_none_or(|a| *u > a))
        .take(page_max + 1)
        .collect();
    let more = page.len() > page_max;
    let page = &page[..page.len().min(page_max)];
    #[derive(Serialize)]
    struct Presence<'a> {
        room: &'a str,
        connections: usize,
        user_count: usize,
        users: &'a [&'a str],
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<&'a str>,
    }
    let data = Presence {
        room: room.as_str(),
        connections: entries.len(),
        user_count: users.len(),
        users: page,
        next: if more { page.last().copied() } else { None },
    };
    envelope::envelope("presence", now.unix_ms, None, &data, id)
}
