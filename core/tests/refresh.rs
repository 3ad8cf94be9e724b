//! In-band token refresh and the expiry warning: `refresh` hands the token
//! to the shell (`Output::Check`), whose verdict (`Input::CheckDone`)
//! either moves the expiry or leaves the old token in force.

use roomcast_core::{
    Check, CheckAnswer, CloseCode, ConnectionId, CoreConfig, Identity, Input, Limits, Now, Output,
    Standalone, TokenRefused, User,
};
use serde_json::Value;

const START_MS: i64 = 1_760_000_000_000;
const SECOND_US: u64 = 1_000_000;

fn user(id: &str, expires_in_s: i64) -> User {
    User {
        id: id.into(),
        scopes: Vec::new(),
        expires_unix_ms: Some(START_MS + expires_in_s * 1000),
        grants: roomcast_core::Grants::none(),
    }
}

struct Session {
    core: Standalone,
    now_us: u64,
    conn: ConnectionId,
}

impl Session {
    /// A connection of `alice` whose token expires in 100 s; warned 30 s ahead.
    fn new() -> Session {
        // Heartbeats far away: this test is about the token alone.
        let limits = Limits {
            token_warning_ms: 30_000,
            ping_interval_ms: 10_000_000,
            idle_timeout_ms: 20_000_000,
            ..Limits::default()
        };
        let mut core = Standalone::new(CoreConfig {
            limits,
            ..CoreConfig::default()
        });
        let conn = ConnectionId::from_u128(1);
        core.handle(
            Now::from_start(START_MS, 0),
            Input::Open {
                conn,
                identity: Identity::User(user("alice", 100)),
            },
        );
        let mut s = Session {
            core,
            now_us: 0,
            conn,
        };
        s.drain();
        s
    }

    fn now(&self) -> Now {
        Now::from_start(START_MS, self.now_us)
    }

    fn drain(&mut self) -> Vec<Output> {
        let mut outs = Vec::new();
        while let Some(o) = self.core.poll_output() {
            outs.push(o);
        }
        self.core.check_invariants().unwrap();
        outs
    }

    fn until(&mut self, us: u64) -> Vec<(u64, Output)> {
        let mut seen = Vec::new();
        while let Some(at) = self.core.poll_timeout().filter(|at| *at <= us) {
            self.now_us = self.now_us.max(at);
            self.core.handle(self.now(), Input::Timeout);
            seen.extend(self.drain().into_iter().map(|o| (self.now_us, o)));
        }
        self.now_us = us;
        seen
    }

    /// Sends a refresh; returns the token the core asked the shell to verify.
    fn refresh(&mut self) -> String {
        let conn = self.conn;
        self.core.handle(
            self.now(),
            Input::Text {
                conn,
                text: r#"{"action":"refresh","data":{"token":"new.jwt"},"id":"r1"}"#,
            },
        );
        match self.drain().as_slice() {
            [Output::Check {
                conn: c,
                check: Check::Token { token },
            }] if *c == conn => token.clone(),
            other => panic!("expected one token Check, got {other:?}"),
        }
    }

    fn verdict(&mut self, result: Result<User, TokenRefused>) -> Value {
        let conn = self.conn;
        let answer = CheckAnswer::Token(result);
        self.core
            .handle(self.now(), Input::CheckDone { conn, answer });
        match self.drain().as_slice() {
            [Output::Send { frame, .. }] => serde_json::from_str(frame.as_str()).unwrap(),
            other => panic!("expected one reply, got {other:?}"),
        }
    }
}

#[test]
fn a_warning_comes_ahead_of_expiry_then_close_4001() {
    let mut s = Session::new();
    let seen = s.until(100 * SECOND_US);
    let warning = seen.iter().find_map(|(at, o)| match o {
        Output::Send { frame, .. } => {
            Some((*at, serde_json::from_str::<Value>(frame.as_str()).unwrap()))
        }
        _ => None,
    });
    let (at, warning) = warning.expect("a warning before expiry");
    assert_eq!(at, 70 * SECOND_US, "30 s ahead of the 100 s expiry");
    assert_eq!(warning["type"], "system_warning");
    assert_eq!(warning["data"]["code"], "TOKEN_EXPIRING");
    assert_eq!(warning["data"]["expires_in_ms"], 30_000);
    assert!(seen.iter().any(|(at, o)| *at == 100 * SECOND_US
        && matches!(
            o,
            Output::Close {
                code: CloseCode::TokenExpired,
                ..
            }
        )));
}

#[test]
fn a_valid_refresh_moves_the_expiry() {
    let mut s = Session::new();
    s.until(80 * SECOND_US);
    let token = s.refresh();
    assert_eq!(token, "new.jwt");
    let reply = s.verdict(Ok(user("alice", 400)));
    assert_eq!(reply["type"], "system_info");
    assert_eq!(reply["id"], "r1");
    assert_eq!(reply["data"]["message"], "Token refreshed");
    // Not closed at 100 s any more; warned again at 370 s, closed at 400 s.
    let seen = s.until(399 * SECOND_US);
    assert!(
        !seen.iter().any(|(_, o)| matches!(o, Output::Close { .. })),
        "{seen:?}"
    );
    assert!(seen
        .iter()
        .any(|(at, o)| *at == 370 * SECOND_US && matches!(o, Output::Send { .. })));
    let seen = s.until(400 * SECOND_US);
    assert!(seen.iter().any(|(_, o)| matches!(
        o,
        Output::Close {
            code: CloseCode::TokenExpired,
            ..
        }
    )));
}

#[test]
fn an_invalid_or_foreign_token_leaves_the_old_one_in_force() {
    let mut s = Session::new();
    s.refresh();
    let reply = s.verdict(Err(TokenRefused("token expired".into())));
    assert_eq!(reply["data"]["code"], "INVALID_TOKEN");
    assert_eq!(reply["id"], "r1");
    s.refresh();
    let reply = s.verdict(Ok(user("mallory", 1000)));
    assert_eq!(reply["data"]["code"], "INVALID_TOKEN");
    // The original expiry still holds.
    let seen = s.until(100 * SECOND_US);
    assert!(seen.iter().any(|(at, o)| *at == 100 * SECOND_US
        && matches!(
            o,
            Output::Close {
                code: CloseCode::TokenExpired,
                ..
            }
        )));
}

#[test]
fn anonymous_connections_cannot_refresh() {
    let mut core = Standalone::new(CoreConfig::default());
    let conn = ConnectionId::from_u128(2);
    core.handle(
        Now::default(),
        Input::Open {
            conn,
            identity: Identity::Anonymous,
        },
    );
    while core.poll_output().is_some() {}
    core.handle(
        Now::default(),
        Input::Text {
            conn,
            text: r#"{"action":"refresh","data":{"token":"x"}}"#,
        },
    );
    let Some(Output::Send { frame, .. }) = core.poll_output() else {
        panic!("a reply")
    };
    let reply: Value = serde_json::from_str(frame.as_str()).unwrap();
    assert_eq!(reply["data"]["code"], "INVALID_TOKEN");
    assert!(core.poll_output().is_none());
}

#[test]
fn a_verdict_for_a_closed_connection_is_ignored() {
    let mut s = Session::new();
    s.refresh();
    let conn = s.conn;
    s.core.handle(s.now(), Input::Closed { conn });
    s.core.handle(
        s.now(),
        Input::CheckDone {
            conn,
            answer: CheckAnswer::Token(Ok(user("alice", 500))),
        },
    );
    assert!(s.drain().is_empty());
}
