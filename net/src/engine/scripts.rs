//! The Redis engine's data layout: key and channel names, the Lua scripts
//! (each run by SHA, loaded on first use), and the live message format.
//!
//! Every key and channel of a room carries the room in a hash tag
//! (`{room}`), so one room's keys live on one Redis Cluster slot and each
//! script touches one slot. Times come from the Redis server (`TIME`), so
//! every node ages history by the same clock.

use redis::Script;
use roomcast_core::engine::PresenceEntry;
use roomcast_core::{ConnectionId, RoomName, SendTarget};

/// The names of one room's keys and channel under a prefix.
pub(crate) struct RoomKeys {
    /// Hash: `e` the epoch, `s` the top seq.
    pub(crate) meta: String,
    /// Stream: one entry per kept message, id `<seq>-0`, fields `f` (the
    /// frame) and `t` (publish time, ms).
    pub(crate) log: String,
    /// Hash: connection id → presence value (see [`presence_value`]).
    pub(crate) presence: String,
    /// Sorted set: connection id → when its entry expires (ms).
    pub(crate) presence_expiry: String,
    /// The room's pub/sub channel.
    pub(crate) channel: String,
}

impl RoomKeys {
    pub(crate) fn new(prefix: &str, room: &RoomName) -> RoomKeys {
        let base = format!("{prefix}:{{{}}}", room.as_str());
        RoomKeys {
            meta: format!("{base}:meta"),
            log: format!("{base}:log"),
            presence: format!("{base}:presence"),
            presence_expiry: format!("{base}:presence_expiry"),
            channel: format!("{base}:live"),
        }
    }
}

/// The channel of direct messages (`POST /api/send`), which every node
/// follows.
pub(crate) fn direct_channel(prefix: &str) -> String {
    format!("{prefix}:direct")
}

/// This node's probe channel: what it publishes there must come back on
/// its pub/sub connection (not a room channel: no `{room}` in it).
pub(crate) fn probe_channel(prefix: &str, node: &str) -> String {
    format!("{prefix}:probe:{node}")
}

/// A direct message as published: `origin node \n c|u \n target \n frame`.
pub(crate) fn direct_payload(origin: &str, target: &SendTarget, frame: &str) -> String {
    let (kind, target) = match target {
        SendTarget::Connection(conn) => ("c", conn.to_string()),
        SendTarget::User(user) => ("u", user.clone()),
    };
    format!("{origin}\n{kind}\n{target}\n{frame}")
}

/// The origin node, target and frame of a direct message's payload.
pub(crate) fn parse_direct(payload: &str) -> Option<(&str, SendTarget, &str)> {
    let mut parts = payload.splitn(4, '\n');
    let origin = parts.next()?;
    let kind = parts.next()?;
    let target = parts.next()?;
    let frame = parts.next()?;
    let target = match kind {
        "c" => SendTarget::Connection(ConnectionId::parse(target)?),
        "u" => SendTarget::User(target.to_owned()),
        _ => return None,
    };
    Some((origin, target, frame))
}

/// The room of a channel named by [`RoomKeys::new`] under `prefix`.
pub(crate) fn room_of_channel(prefix: &str, channel: &str) -> Option<RoomName> {
    let rest = channel.strip_prefix(prefix)?.strip_prefix(":{")?;
    let name = rest.strip_suffix("}:live")?;
    RoomName::new(name)
}

/// Shared by the scripts: `now` in ms from the Redis server's clock.
const NOW: &str = "local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
";

/// Shared by append and read: the room's epoch, created with the caller's
/// fresh epoch (and an empty history) when the room does not exist, and
/// the rollback check (`docs/engine.md`, "Lost writes"): `ARGV[k]` and
/// `ARGV[k+1]` are the epoch and seq the calling node has streamed of the
/// room ('' and 0 when none). The meta's `l` is the Redis server's
/// `run_id` when the room was created or last vouched for: a restart or a
/// failover changes it, and then only a caller at exactly the room's top
/// keeps the epoch. A caller ahead of the top in the same epoch means
/// acknowledged messages were lost. Either way the room moves to the
/// caller's fresh epoch, a compare-and-set on the old one, atomic with the
/// append or read that follows. Where `INFO` is refused (a provider that
/// disables it), `l` stays empty and only the check against the caller's
/// position applies.
fn epoch_block(k: usize) -> String {
    format!(
        "local info = redis.pcall('INFO', 'server')
local life = type(info) == 'string' and string.match(info, 'run_id:(%x+)') or ''
local meta = redis.call('HMGET', KEYS[1], 'e', 's', 'l')
local epoch = meta[1]
if epoch then
  local stored_top = tonumber(meta[2] or '0')
  local known = ARGV[{k}] == epoch
  local known_seq = tonumber(ARGV[{k1}])
  local ahead = known and known_seq > stored_top
  local vouched = known and known_seq == stored_top
  if ahead or (meta[3] ~= life and not vouched) then
    epoch = nil
  elseif meta[3] ~= life then
    redis.call('HSET', KEYS[1], 'l', life)
  end
end
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0, 'l', life)
end
",
        k1 = k + 1
    )
}

/// Append. KEYS: meta, log. ARGV: fresh epoch, head, tail, series ('' when
/// none), has series ('1'/'0'), messages max, age max (ms), meta
/// time-to-live (ms), channel, known epoch, known seq. Returns `{epoch, seq}`.
///
/// Numbers the message (`HINCRBY`), keeps its frame (`XADD` with `MAXLEN`,
/// then drops entries older than the age bound from the front), refreshes
/// the keys' lifetimes and publishes `epoch \n seq \n series-length \n
/// series frame` on the room's channel, all in one atomic step, so the
/// channel's order is the seq order.
const APPEND: &str = "
local seq = redis.call('HINCRBY', KEYS[1], 's', 1)
local seqs = string.format('%d', seq)
local frame = ARGV[2] .. seqs .. ARGV[3]
local maxlen = tonumber(ARGV[6])
local age = tonumber(ARGV[7])
local meta_ttl = tonumber(ARGV[8])
if maxlen > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', maxlen, seqs .. '-0', 'f', frame, 't', now)
  -- Usually the oldest entry is young enough: one entry looked at.
  local cutoff = now - age
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
  if #first > 0 and tonumber(first[1][2][4]) <= cutoff then
    local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 64)
    local keep = nil
    for _, entry in ipairs(oldest) do
      if tonumber(entry[2][4]) > cutoff then
        keep = entry[1]
        break
      end
    end
    if keep then
      redis.call('XTRIM', KEYS[2], 'MINID', keep)
    else
      redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d-0', seq + 1))
    end
  end
  redis.call('PEXPIRE', KEYS[2], math.max(age, 1))
end
redis.call('PEXPIRE', KEYS[1], meta_ttl)
local series_len = '-'
if ARGV[5] == '1' then
  series_len = tostring(#ARGV[4])
end
redis.call('PUBLISH', ARGV[9], epoch .. '\\n' .. seqs .. '\\n' .. series_len .. '\\n' .. ARGV[4] .. frame)
return {epoch, seqs}
";

/// Read. KEYS: meta, log. ARGV: fresh epoch, the reader's epoch ('' when
/// none), its seq, limit, age max (ms), meta time-to-live (ms), known
/// epoch, known seq. Returns
/// `{epoch, top, seq1, frame1, seq2, frame2, ...}`: the retained frames
/// younger than the age bound, after the reader's seq when its epoch is
/// the room's, from the epoch's start when it is another.
const READ: &str = "
local top = redis.call('HGET', KEYS[1], 's') or '0'
local meta_ttl = tonumber(ARGV[6])
if tonumber(redis.call('PTTL', KEYS[1])) < meta_ttl then
  redis.call('PEXPIRE', KEYS[1], meta_ttl)
end
local out = {epoch, top}
local limit = tonumber(ARGV[4])
if ARGV[2] ~= '' and limit > 0 then
  -- After another epoch's position: this epoch's messages from its start.
  local after = 0
  if ARGV[2] == epoch then after = tonumber(ARGV[3]) end
  local from = string.format('%d', after + 1)
  local entries = redis.call('XRANGE', KEYS[2], from, '+', 'COUNT', limit)
  local cutoff = now - tonumber(ARGV[5])
  for _, entry in ipairs(entries) do
    if tonumber(entry[2][4]) > cutoff then
      out[#out + 1] = string.match(entry[1], '^(%d+)')
      out[#out + 1] = entry[2][2]
    end
  end
end
return out
";

/// Presence change: adds, refreshes and removes of one room's entries in
/// one atomic step, published as one change. KEYS: presence, presence
/// expiry. ARGV: time-to-live (ms), the room's channel (`''`: the change
/// is not published, the room has no presence diffs), then triples: `+`
/// connection value (add or refresh: the entry lives another
/// time-to-live) or `-` connection `''` (remove).
///
/// Entries whose expiry passed (their node stopped refreshing) are swept
/// first, so every change also reports the room's dead entries; because
/// the script is atomic, each expired entry is reported by exactly one
/// script run. The net effect per connection (present before the script,
/// present after) is published as one presence message (see
/// [`parse_presence`]) when anything changed; a refresh of an entry that
/// is still there changes nothing. Returns the number of changes.
const PRESENCE_CHANGE: &str = "
local ttl = tonumber(ARGV[1])
local before = {}
local order = {}
local function touch(conn)
  if before[conn] == nil then
    before[conn] = redis.call('HGET', KEYS[1], conn)
    order[#order + 1] = conn
  end
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, conn in ipairs(expired) do
  touch(conn)
  redis.call('HDEL', KEYS[1], conn)
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
local puts = 0
for i = 3, #ARGV, 3 do
  local conn = ARGV[i + 1]
  touch(conn)
  if ARGV[i] == '+' then
    redis.call('HSET', KEYS[1], conn, ARGV[i + 2])
    redis.call('ZADD', KEYS[2], now + ttl, conn)
    puts = puts + 1
  else
    redis.call('HDEL', KEYS[1], conn)
    redis.call('ZREM', KEYS[2], conn)
  end
end
-- The keys outlive their entries: an expired entry stays until a write
-- or list sweeps (and tells) it, however quiet the room.
if puts > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  redis.call('PEXPIRE', KEYS[2], ttl * 2)
end
local out = {}
for _, conn in ipairs(order) do
  local was = before[conn]
  local now_value = redis.call('HGET', KEYS[1], conn)
  if was and not now_value then
    out[#out + 1] = '-' .. conn .. '\\n' .. #was .. '\\n' .. was .. '\\n'
  elseif now_value and not was then
    out[#out + 1] = '+' .. conn .. '\\n' .. #now_value .. '\\n' .. now_value .. '\\n'
  end
end
if #out > 0 and ARGV[2] ~= '' then
  local count = redis.call('HLEN', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'P\\n' .. count .. '\\n' .. table.concat(out))
end
return #out
";

/// Presence list. KEYS: presence, presence expiry. ARGV: the room's
/// channel (`''`: not published). Sweeps expired entries (their node stopped refreshing) and
/// publishes their removal as one presence message, then returns every
/// entry as `{conn1, value1, ...}`.
const PRESENCE_LIST: &str = "
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #expired > 0 then
  local out = {}
  for _, conn in ipairs(expired) do
    local was = redis.call('HGET', KEYS[1], conn)
    if was then
      redis.call('HDEL', KEYS[1], conn)
      out[#out + 1] = '-' .. conn .. '\\n' .. #was .. '\\n' .. was .. '\\n'
    end
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if #out > 0 and ARGV[1] ~= '' then
    local count = redis.call('HLEN', KEYS[1])
    redis.call('PUBLISH', ARGV[1], 'P\\n' .. count .. '\\n' .. table.concat(out))
  end
end
return redis.call('HGETALL', KEYS[1])
";

/// Node heartbeat. KEYS: the cluster hash. ARGV: node id, time-to-live
/// (ms), this node's open connections. Writes `expiry connections` for
/// this node, drops nodes whose heartbeat expired, returns `{nodes,
/// connections}` of the nodes alive. One hash, so the script stays a
/// single-key script (Redis Cluster), and the number of nodes is small.
const HEARTBEAT: &str = "
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d %d', now + ttl, tonumber(ARGV[3])))
local nodes, connections = 0, 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local expiry, count = string.match(entries[i + 1], '^(%d+) (%d+)$')
  if expiry == nil or tonumber(expiry) < now then
    redis.call('HDEL', KEYS[1], entries[i])
  else
    nodes = nodes + 1
    connections = connections + tonumber(count)
  end
end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return {nodes, connections}
";

/// The hash of live nodes: node id → `expiry-ms connections`.
pub(crate) fn cluster_key(prefix: &str) -> String {
    format!("{prefix}:cluster")
}

/// The engine's scripts, each loaded once per Redis and then run by SHA.
pub(crate) struct Scripts {
    pub(crate) append: Script,
    pub(crate) read: Script,
    pub(crate) presence_change: Script,
    pub(crate) presence_list: Script,
    pub(crate) heartbeat: Script,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            append: Script::new(&format!("{NOW}{}{APPEND}", epoch_block(10))),
            read: Script::new(&format!("{NOW}{}{READ}", epoch_block(7))),
            presence_change: Script::new(&format!("{NOW}{PRESENCE_CHANGE}")),
            presence_list: Script::new(&format!("{NOW}{PRESENCE_LIST}")),
            heartbeat: Script::new(&format!("{NOW}{HEARTBEAT}")),
        }
    }
}

/// How a presence entry's user is stored: `u<user>`, or `-` without one.
pub(crate) fn presence_value(user: Option<&str>) -> String {
    match user {
        Some(user) => format!("u{user}"),
        None => "-".to_owned(),
    }
}

/// The user of a stored presence value.
pub(crate) fn presence_user(value: &str) -> Option<String> {
    value.strip_prefix('u').map(str::to_owned)
}

/// One message as the append script publishes it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LiveMessage<'a> {
    pub(crate) epoch: &'a str,
    pub(crate) seq: u64,
    pub(crate) series: Option<&'a str>,
    pub(crate) frame: &'a str,
}

/// Parses `epoch \n seq \n series-length-or-dash \n series frame`.
pub(crate) fn parse_live(payload: &str) -> Option<LiveMessage<'_>> {
    let mut parts = payload.splitn(4, '\n');
    let epoch = parts.next()?;
    let seq = parts.next()?.parse().ok()?;
    let series_len = parts.next()?;
    let rest = parts.next()?;
    let (series, frame) = if series_len == "-" {
        (None, rest)
    } else {
        let len: usize = series_len.parse().ok()?;
        let series = rest.get(..len)?;
        (Some(series), rest.get(len..)?)
    };
    Some(LiveMessage {
        epoch,
        seq,
        series,
        frame,
    })
}

/// One presence message as the presence scripts publish it: the room's
/// count after the change and its entries added and removed (each sorted).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PresenceMessage {
    pub(crate) connections: usize,
    pub(crate) joined: Vec<PresenceEntry>,
    pub(crate) left: Vec<PresenceEntry>,
}

/// Parses `P \n count \n` followed by one record per changed entry:
/// `+` or `-`, the connection, `\n`, the stored value's length in bytes,
/// `\n`, the value, `\n`. A room channel's live messages start with
/// their epoch, `<node>-<n>`, which is never `P`.
pub(crate) fn parse_presence(payload: &str) -> Option<PresenceMessage> {
    let rest = payload.strip_prefix("P\n")?;
    let (count, mut rest) = rest.split_once('\n')?;
    let mut message = PresenceMessage {
        connections: count.parse().ok()?,
        joined: Vec::new(),
        left: Vec::new(),
    };
    while !rest.is_empty() {
        let sign = rest.as_bytes()[0];
        let (conn, after) = rest.get(1..)?.split_once('\n')?;
        let (len, after) = after.split_once('\n')?;
        let len: usize = len.parse().ok()?;
        let value = after.get(..len)?;
        rest = after.get(len..)?.strip_prefix('\n')?;
        let entry = PresenceEntry {
            conn: ConnectionId::parse(conn)?,
            user: presence_user(value),
        };
        match sign {
            b'+' => message.joined.push(entry),
            b'-' => message.left.push(entry),
            _ => return None,
        }
    }
    message.joined.sort();
    message.left.sort();
    Some(message)
}

/// Whether a room channel's payload is a presence message (not a live one).
pub(crate) fn is_presence(payload: &str) -> bool {
    payload.starts_with("P\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_name_their_room() {
        let room = RoomName::new("chat:lobby").unwrap();
        let keys = RoomKeys::new("rc", &room);
        assert_eq!(keys.channel, "rc:{chat:lobby}:live");
        assert_eq!(keys.meta, "rc:{chat:lobby}:meta");
        assert_eq!(room_of_channel("rc", &keys.channel), Some(room));
        assert_eq!(room_of_channel("other", &keys.channel), None);
    }

    #[test]
    fn presence_messages_parse() {
        let a = ConnectionId::from_u128(1);
        let b = ConnectionId::from_u128(2);
        let odd = "u al\nice";
        let payload = format!("P\n3\n-{b}\n1\n-\n+{a}\n{}\n{odd}\n", odd.len());
        assert!(is_presence(&payload));
        assert_eq!(
            parse_presence(&payload),
            Some(PresenceMessage {
                connections: 3,
                joined: vec![PresenceEntry {
                    conn: a,
                    user: Some(" al\nice".into())
                }],
                left: vec![PresenceEntry {
                    conn: b,
                    user: None
                }],
            })
        );
        assert!(!is_presence("e-1\n7\n-\n{}"));
        assert_eq!(parse_presence("P\nx\n"), None);
        assert_eq!(parse_presence(&format!("P\n1\n*{a}\n1\n-\n")), None);
        assert_eq!(parse_presence(&format!("P\n1\n+{a}\n9\n-\n")), None);
        assert_eq!(parse_presence("P\n0\n").map(|m| m.connections), Some(0));
    }

    #[test]
    fn live_messages_parse() {
        let parsed = parse_live("e-1\n7\n-\n{\"seq\":7}").unwrap();
        assert_eq!(
            parsed,
            LiveMessage {
                epoch: "e-1",
                seq: 7,
                series: None,
                frame: "{\"seq\":7}"
            }
        );
        let parsed = parse_live("e-1\n8\n3\na\nb{\"x\":\"\n\"}").unwrap();
        assert_eq!(parsed.series, Some("a\nb"));
        assert_eq!(parsed.frame, "{\"x\":\"\n\"}");
        assert_eq!(parse_live("e-1\nx\n-\n{}"), None);
        assert_eq!(parse_live("e-1\n1\n9\nab"), None);
        assert_eq!(
            presence_user(&presence_value(Some("ann"))).as_deref(),
            Some("ann")
        );
        assert_eq!(presence_user(&presence_value(None)), None);
        let conn = ConnectionId::from_u128(7);
        let payload = direct_payload("n1", &SendTarget::Connection(conn), "{\"a\":\"\n\"}");
        assert_eq!(
            parse_direct(&payload),
            Some(("n1", SendTarget::Connection(conn), "{\"a\":\"\n\"}"))
        );
        let payload = direct_payload("n1", &SendTarget::User("ann".into()), "{}");
        assert_eq!(
            parse_direct(&payload),
            Some(("n1", SendTarget::User("ann".into()), "{}"))
        );
    }
}
