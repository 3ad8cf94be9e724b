//! What loadgen reads about the server from `/proc`: its CPU time and RSS
//! (whole process), and the CPU time of its shard threads sampled once per
//! broadcast ([`ThreadShares`]).

use serde_json::{json, Value};

/// The servers' CPU time in ns (all threads) and RSS in bytes, summed.
pub fn servers_usage(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .map(|&pid| server_usage(Some(pid)))
        .fold((0, 0), |(cpu, rss), (c, r)| (cpu + c, rss + r))
}

/// The server's CPU time in ns (all threads) and RSS in bytes, from /proc.
pub fn server_usage(pid: Option<u32>) -> (u64, u64) {
    let Some(pid) = pid else { return (0, 0) };
    let cpu_ns = threads(pid).iter().map(|t| t.cpu_ns).sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    (cpu_ns, rss_kib * 1024)
}

/// The server's peak RSS (VmHWM) in bytes.
pub fn peak_rss(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// One thread of a process: its id, name and CPU time so far.
struct Thread {
    tid: u32,
    name: String,
    cpu_ns: u64,
}

/// Every thread of `pid`. The name is `comm` from `task/<tid>/stat` (the
/// kernel keeps at most 15 bytes of it); the CPU time is the first field
/// of `task/<tid>/schedstat` (nanoseconds), because `stat`'s utime and
/// stime count clock ticks (10 ms), coarser than one broadcast period;
/// `stat`'s ticks are the fallback where schedstat is missing.
fn threads(pid: u32) -> Vec<Thread> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // `tid (comm) state ...`: comm may hold spaces or parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok();
        let cpu_ns = match schedstat
            .as_deref()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        {
            Some(ns) => ns,
            None => {
                // Fields after the comm: state is 0, utime 11, stime 12.
                let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
                let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
                // SAFETY: sysconf only reads a configuration value.
                let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
                (tick(11).unwrap_or(0) + tick(12).unwrap_or(0)) * 1_000_000_000 / hz
            }
        };
        out.push(Thread { tid, name, cpu_ns });
    }
    out.sort_by_key(|t| t.tid);
    out
}

/// Each shard thread's share of the server's CPU, per broadcast.
///
/// A whole-run split proves nothing about balance (a thread may idle for
/// half the run and do everything in the other half), so the sampler reads
/// every thread's CPU time at each broadcast and computes, for each
/// interval between two broadcasts, each shard thread's share of what the
/// whole process spent in it. Shard threads are those whose name starts
/// with the prefix (`rc-shard-<i>`), told apart by thread id, in
/// creation order.
pub struct ThreadShares {
    pid: u32,
    prefix: String,
    last: Option<(u64, Vec<(u32, u64)>)>,
    /// Per interval: the process's CPU, and each shard thread's (by tid).
    intervals: Vec<(u64, Vec<(u32, u64)>)>,
    names: Vec<(u32, String)>,
    first_total: u64,
    first_threads: Vec<(u32, u64)>,
}

/// Intervals in which the whole server spent less CPU than this are
/// skipped: a share of nothing is noise.
const MIN_INTERVAL_CPU_NS: u64 = 1_000_000;

impl ThreadShares {
    pub fn new(pid: u32, prefix: &str) -> ThreadShares {
        ThreadShares {
            pid,
            prefix: prefix.to_owned(),
            last: None,
            intervals: Vec::new(),
            names: Vec::new(),
            first_total: 0,
            first_threads: Vec::new(),
        }
    }

    /// Reads the threads now (call it at each broadcast, and once at the end).
    pub fn sample(&mut self) {
        let all = threads(self.pid);
        let total: u64 = all.iter().map(|t| t.cpu_ns).sum();
        let shards: Vec<(u32, u64)> = all
            .iter()
            .filter(|t| t.name.starts_with(&self.prefix))
            .map(|t| (t.tid, t.cpu_ns))
            .collect();
        for t in all.iter().filter(|t| t.name.starts_with(&self.prefix)) {
            if !self.names.iter().any(|(tid, _)| *tid == t.tid) {
                self.names.push((t.tid, t.name.clone()));
            }
        }
        match &self.last {
            None => {
                self.first_total = total;
                self.first_threads = shards.clone();
            }
            Some((last_total, last_shards)) => {
                let delta = |tid: u32, now: u64| {
                    now - last_shards
                        .iter()
                        .find(|(t, _)| *t == tid)
                        .map_or(0, |(_, v)| *v)
                };
                let per: Vec<(u32, u64)> = shards.iter().map(|&(t, v)| (t, delta(t, v))).collect();
                self.intervals.push((total - last_total, per));
            }
        }
        self.last = Some((total, shards));
    }

    /// The report: per shard thread, its share of the whole run and the
    /// distribution of its per-broadcast shares; and how many intervals had
    /// every shard thread within ±20% of an equal share (40–60% for 2).
    pub fn report(&self) -> Value {
        let Some((last_total, last_threads)) = &self.last else {
            return json!(null);
        };
        let counted: Vec<&(u64, Vec<(u32, u64)>)> = self
            .intervals
            .iter()
            .filter(|(total, _)| *total >= MIN_INTERVAL_CPU_NS)
            .collect();
        let n = self.names.len().max(1) as f64;
        let (low, high) = (0.8 / n, 1.2 / n);
        let in_band = counted
            .iter()
            .filter(|(total, per)| {
                !self.names.is_empty()
                    && per.len() == self.names.len()
                    && per.iter().all(|(_, v)| {
                        let share = *v as f64 / *total as f64;
                        share >= low && share <= high
                    })
            })
            .count();
        let whole = last_total.saturating_sub(self.first_total).max(1) as f64;
        let threads: Vec<Value> = self
            .names
            .iter()
            .map(|(tid, name)| {
                let mut shares: Vec<f64> = counted
                    .iter()
                    .map(|(total, per)| {
                        let mine = per.iter().find(|(t, _)| t == tid).map_or(0, |(_, v)| *v);
                        mine as f64 / *total as f64
                    })
                    .collect();
                shares.sort_by(f64::total_cmp);
                let pick = |p: f64| {
                    shares
                        .get(((shares.len().max(1) - 1) as f64 * p).round() as usize)
                        .copied()
                        .unwrap_or(0.0)
                };
                let cpu = |list: &[(u32, u64)]| {
                    list.iter().find(|(t, _)| t == tid).map_or(0, |(_, v)| *v)
                };
                let run = cpu(last_threads).saturating_sub(cpu(&self.first_threads));
                json!({
                    "tid": tid, "name": name,
                    "share_whole_run": run as f64 / whole,
                    "share_per_broadcast": {"min": pick(0.0), "p10": pick(0.1), "p50": pick(0.5), "p90": pick(0.9), "max": pick(1.0)},
                })
            })
            .collect();
        json!({
            "prefix": self.prefix,
            "threads": threads,
            "intervals": counted.len(),
            "band": [low, high],
            "intervals_all_in_band": in_band,
        })
    }
}
