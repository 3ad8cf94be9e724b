//! Checks the core cannot make itself, answered by the shell off the hub:
//! one mechanism for every kind.
//!
//! A request that needs one (a `refresh`'s new token to verify, a join of
//! a `granted` room that the connection's grants do not cover and that
//! the application's join hook must decide) emits [`Output::Check`] and
//! makes the connection *wait*, exactly like a request waiting for the
//! engine: its later messages are deferred (bounded by
//! `engine_deferred_messages_max`), so the reply keeps its place in the
//! connection's order. The shell answers with [`Input::CheckDone`](crate::Input::CheckDone)
//! (`crate::Input::CheckDone`); the core then answers the request and runs
//! the deferred messages. A connection has at most one check in flight.
//!
//! This file also holds what follows from an answer: a refreshed token's
//! new expiry, scopes and grants, and the `granted` rooms the new grants
//! no longer cover (left, with an `ACCESS_REVOKED` warning).

use serde::Serialize;

use crate::access::{Identity, JoinAccess, RoomAccess, User};
use crate::codes::{ErrorCode, WarningCode};
use crate::connections::deadline_us;
use crate::envelope;
use crate::machine::Core;
use crate::names::{ConnectionId, RoomName};
use crate::output::Output;
use crate::parse::{RequestId, Since};
use crate::time::Now;

/// What the shell is asked to check (in [`Output::Check`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// Verify a `refresh`'s new token (the shell holds the keys).
    Token {
        /// The token, as the client sent it.
        token: String,
    },
    /// Ask the application's join hook whether the connection may join a
    /// `granted` room its grants do not cover.
    Join {
        /// The room.
        room: RoomName,
        /// The connection's user id (`None`: anonymous).
        user: Option<String>,
    },
}

/// The shell's answer to a [`Check`] (in `Input::CheckDone`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckAnswer {
    /// The verified token's user, or why it was refused (expired, bad
    /// signature...).
    Token(Result<User, TokenRefused>),
    /// The join hook's verdict.
    Join(HookVerdict),
}

/// Why the shell refused a `refresh` token: a sentence for the client
/// (`token refused: ...`), which never contains the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRefused(pub String);

impl std::fmt::Display for TokenRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TokenRefused {}

/// What the join hook decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookVerdict {
    /// `{"allow": true}`: join.
    Allow,
    /// `{"allow": false}`: `FORBIDDEN` (the reason is for the logs only).
    Deny,
    /// No usable answer (timeout, unreachable, other status, bad body, too
    /// many calls in flight): `HOOK_UNAVAILABLE`, not joined.
    Unavailable,
}

/// A check in flight: what to answer once it is done.
#[derive(Debug)]
pub(crate) enum PendingCheck {
    Token {
        id: Option<RequestId>,
    },
    Join {
        room: RoomName,
        since: Option<Since>,
        id: Option<RequestId>,
    },
}

impl Core {
    /// Emits a check for `conn` and makes the connection wait for it.
    pub(crate) fn start_check(&mut self, conn: ConnectionId, check: Check, pending: PendingCheck) {
        if self.checks.insert(conn, pending).is_some() {
            self.impossible("two checks in flight for one connection");
        }
        self.outputs.push_back(Output::Check { conn, check });
        self.start_waiting(conn);
    }

    /// Whether the connection in `slot` may join `room` now. `false`: the
    /// join was answered (`FORBIDDEN`) or waits for the join hook.
    pub(crate) fn join_admitted(
        &mut self,
        now: Now,
        slot: u32,
        room: &RoomName,
        since: &Option<Since>,
        id: &Option<RequestId>,
    ) -> bool {
        let Some(connection) = self.conns.at(slot) else {
            self.impossible("a join handled for an empty slot");
            return false;
        };
        // A member asking again is answered as a member (grants are
        // checked when joining, and again on every refresh).
        if connection.rooms.contains(room) {
            return true;
        }
        let full = connection.rooms.len() >= self.config.limits.rooms_per_connection_max;
        match self.config.access.join_access(&connection.identity, room) {
            JoinAccess::Allowed => true,
            // No hook call for a join that would be refused anyway: the
            // join answers `TOO_MANY_ROOMS`.
            JoinAccess::NotGranted if self.config.join_hook && full => true,
            JoinAccess::NotGranted if self.config.join_hook => {
                let conn = connection.id;
                let user = connection.identity.user().map(|u| u.id.clone());
                let check = Check::Join {
                    room: room.clone(),
                    user,
                };
                let pending = PendingCheck::Join {
                    room: room.clone(),
                    since: since.clone(),
                    id: id.clone(),
                };
                self.start_check(conn, check, pending);
                false
            }
            JoinAccess::NotGranted | JoinAccess::Denied => {
                self.forbid_join(now, slot, room, id.as_ref());
                false
            }
        }
    }

    fn forbid_join(&mut self, now: Now, slot: u32, room: &RoomName, id: Option<&RequestId>) {
        let message = format!("not allowed to join room: {room}");
        let frame = envelope::error(now.unix_ms, ErrorCode::Forbidden, &message, id);
        self.send(slot, frame);
    }

    /// The shell's answer to a connection's check.
    pub(crate) fn check_done(&mut self, now: Now, conn: ConnectionId, answer: CheckAnswer) {
        let Some(slot) = self.conns.slot(conn) else {
            return; // closed while waiting (which forgot its check)
        };
        let Some(pending) = self.checks.remove(&conn) else {
            self.impossible("a check answer for no check");
            return;
        };
        // The wait is lifted for the answer (a join may wait again, for
        // the room's read); the messages deferred meanwhile run after it.
        let deferred = self.lift_wait(conn);
        match (pending, answer) {
            (PendingCheck::Token { id }, CheckAnswer::Token(result)) => {
                self.token_verified(now, slot, id, result)
            }
            (PendingCheck::Join { room, since, id }, CheckAnswer::Join(verdict)) => match verdict {
                HookVerdict::Allow => self.join_member(now, slot, room, since, id),
                HookVerdict::Deny => self.forbid_join(now, slot, &room, id.as_ref()),
                HookVerdict::Unavailable => {
                    let message = format!(
                        "the application could not decide on room {room} now; not joined, retry later"
                    );
                    let frame = envelope::error(
                        now.unix_ms,
                        ErrorCode::HookUnavailable,
                        &message,
                        id.as_ref(),
                    );
                    self.send(slot, frame);
                }
            },
            (pending, answer) => {
                self.impossible("a check answered with another kind of answer");
                let _ = (pending, answer);
            }
        }
        self.restore_wait(conn, deferred, true);
    }

    /// The verdict on a `refresh`: same user → new expiry, scopes and
    /// grants (and the `granted` rooms no longer covered are left);
    /// anything else → `INVALID_TOKEN` and the old token stays.
    fn token_verified(
        &mut self,
        now: Now,
        slot: u32,
        id: Option<RequestId>,
        result: Result<User, TokenRefused>,
    ) {
        let Some(connection) = self.conns.at_mut(slot) else {
            self.impossible("a refresh answered for an empty slot");
            return;
        };
        let current = connection.identity.user().map(|u| u.id.clone());
        let user = match result {
            Err(why) => {
                let message = format!("token refused: {why}");
                let frame =
                    envelope::error(now.unix_ms, ErrorCode::InvalidToken, &message, id.as_ref());
                return self.send(slot, frame);
            }
            Ok(user) if Some(&user.id) != current.as_ref() => {
                let message =
                    "the new token is for another user (sub); the old token stays in force";
                let frame =
                    envelope::error(now.unix_ms, ErrorCode::InvalidToken, message, id.as_ref());
                return self.send(slot, frame);
            }
            Ok(user) => user,
        };
        connection.token_deadline_us = user.expires_unix_ms.map(|exp| deadline_us(now, exp));
        connection.token_warned = false;
        let expires_at = user
            .expires_unix_ms
            .map(|ms| String::from_utf8_lossy(&crate::time::format_rfc3339_ms(ms)).into_owned());
        // Rooms the old grants covered and the new ones do not. Rooms the
        // join hook allowed were never the token's to take away.
        let access = &self.config.access;
        let revoked: Vec<RoomName> = match connection.identity.user() {
            Some(old) => connection
                .rooms
                .iter()
                .filter(|room| {
                    access.access_of(room) == RoomAccess::Granted
                        && old.grants.covers(room)
                        && !user.grants.covers(room)
                })
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        connection.identity = Identity::User(user);
        let data = serde_json::json!({"message": "Token refreshed", "expires_at": expires_at});
        self.schedule(slot);
        let frame = envelope::envelope("system_info", now.unix_ms, None, &data, id.as_ref());
        self.send(slot, frame);
        for room in revoked {
            self.revoke(now, slot, room);
        }
    }

    /// Takes the connection in `slot` out of `room` and tells it why.
    fn revoke(&mut self, now: Now, slot: u32, room: RoomName) {
        let Some(connection) = self.conns.at_mut(slot) else {
            return; // closed as a slow consumer by an earlier frame
        };
        if !connection.rooms.remove(&room) {
            return;
        }
        connection.conflated.drop_room(&room);
        let conn = connection.id;
        let user = connection.identity.user().map(|u| u.id.clone());
        self.remove_member(&room, conn, user.as_deref());
        #[derive(Serialize)]
        struct Revoked<'a> {
            code: &'static str,
            message: String,
            room: &'a str,
        }
        let data = Revoked {
            code: WarningCode::AccessRevoked.as_str(),
            message: format!("the new token does not grant room {room}: you left it"),
            room: room.as_str(),
        };
        let frame = envelope::envelope("system_warning", now.unix_ms, None, &data, None);
        self.send(slot, frame);
    }
}
