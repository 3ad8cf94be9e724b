//! Timers: heartbeats (ping, idle close), token expiry and its warning,
//! conflation flushes, each room's stream check, and the end of each
//! room's presence-diff window (`presence_diffs`).

use crate::codes::CloseCode;
use crate::envelope;
use crate::output::Output;
use crate::time::Now;
use crate::{connections::Connection, machine::Core};

impl Core {
    /// When the connection next needs a look: a ping, an idle close, a
    /// conflation flush, or its token expiry (and the warning before it).
    fn next_check_us(&self, connection: &Connection) -> u64 {
        let (idle_us, ping_us) = self.heartbeat_us();
        let idle_at = connection.last_heard_us.saturating_add(idle_us);
        let ping_at = connection
            .last_heard_us
            .max(connection.last_ping_us)
            .saturating_add(ping_us);
        let mut at = idle_at.min(ping_at);
        if let Some(flush_at) = connection.conflated.flush_at_us() {
            at = at.min(flush_at);
        }
        if let Some(deadline) = connection.token_deadline_us {
            at = at.min(deadline);
            if !connection.token_warned {
                at = at.min(
                    deadline
                        .saturating_sub(self.config.limits.token_warning_ms.saturating_mul(1000)),
                );
            }
        }
        at
    }

    /// (idle timeout, ping interval) in µs: at least 1 ms each, so a
    /// misconfigured zero cannot make a timer fire forever at the same instant.
    fn heartbeat_us(&self) -> (u64, u64) {
        let limits = &self.config.limits;
        let micros = |ms: u64| ms.max(1).saturating_mul(1000);
        (
            micros(limits.idle_timeout_ms),
            micros(limits.ping_interval_ms),
        )
    }

    /// (Re)computes the timer of the connection in `slot`.
    pub(crate) fn schedule(&mut self, slot: u32) {
        let Some(connection) = self.conns.at(slot) else {
            return;
        };
        let at = self.next_check_us(connection);
        self.conns.set_timer(slot, at);
    }

    pub(crate) fn fire_timers(&mut self, now: Now) {
        let now_us = now.monotonic_us;
        if self.presence.refresh_at().is_some_and(|at| at <= now_us) {
            self.engine
                .push(crate::engine::EngineRequest::PresenceRefresh);
            // Keep refreshing while any member is here.
            let members = self.rooms.any_members();
            let every_ms = (self.config.limits.presence_ttl_ms / 3).max(1);
            self.presence
                .set_refresh_at(members.then(|| now_us.saturating_add(every_ms * 1000)));
        }
        self.fire_presence_windows(now_us);
        while let Some(room) = self.rooms.pop_due_check(now_us) {
            self.check_stream(&room);
        }
        let (idle_us, ping_us) = self.heartbeat_us();
        while let Some(conn) = self.conns.pop_due_timer(now_us) {
            let Some(slot) = self.conns.slot(conn) else {
                continue;
            };
            let Some(connection) = self.conns.at_mut(slot) else {
                continue;
            };
            if connection.token_deadline_us.is_some_and(|d| d <= now_us) {
                self.close(conn, Some(CloseCode::TokenExpired));
                continue;
            }
            let flush_due = connection
                .conflated
                .flush_at_us()
                .is_some_and(|at| at <= now_us);
            if flush_due
                && !Self::send_conflated(&mut self.outputs, &self.config.limits, connection, None)
            {
                self.close(conn, Some(CloseCode::SlowConsumer));
                continue;
            }
            let Some(connection) = self.conns.at_mut(slot) else {
                continue;
            };
            let warn_at = connection.token_deadline_us.map(|d| {
                d.saturating_sub(self.config.limits.token_warning_ms.saturating_mul(1000))
            });
            if !connection.token_warned && warn_at.is_some_and(|w| w <= now_us) {
                connection.token_warned = true;
                let expires_in_ms = connection
                    .token_deadline_us
                    .unwrap_or(now_us)
                    .saturating_sub(now_us)
                    / 1000;
                let data = serde_json::json!({
                    "code": "TOKEN_EXPIRING",
                    "message": format!("your token expires in {} s: send a refresh with a new token", expires_in_ms / 1000),
                    "expires_in_ms": expires_in_ms,
                });
                let frame = envelope::envelope("system_warning", now.unix_ms, None, &data, None);
                self.send(slot, frame);
                if !self.conns.is_open(conn) {
                    continue;
                }
            }
            let Some(connection) = self.conns.at_mut(slot) else {
                continue;
            };
            let silent_us = now_us.saturating_sub(connection.last_heard_us);
            if silent_us >= idle_us {
                self.close(conn, Some(CloseCode::IdleTimeout));
                continue;
            }
            let since_ping_us =
                now_us.saturating_sub(connection.last_heard_us.max(connection.last_ping_us));
            if since_ping_us >= ping_us {
                connection.last_ping_us = now_us;
                self.outputs.push_back(Output::Ping { conn });
            }
            self.schedule(slot);
        }
    }
}
