//! `roomcast-sim`: run one seed or sweep many. Exit status 1 on any violation.

use std::process::ExitCode;

use roomcast_sim::{core_tier, net_tier};

const USAGE: &str = "usage: roomcast-sim [--seed N | --seeds A..B] [--tier core|net|both] [--clients N] [--events N] [--net-seconds S] [--engine-faults on|off] [--nodes N] [--broker-faults on|off] [--shards K]

  --seed N         run one seed (default 42)
  --seeds A..B     sweep seeds A to B-1
  --tier T         core (pure core), net (real server in turmoil) or both (default)
  --clients N      clients per run (0 = drawn from the seed; default: core 0, net 2000)
  --events N       core-tier inputs per run (default 200000)
  --net-seconds S  simulated seconds of net-tier workload (default 20)
  --engine-faults  core tier: inject the seed's drawn engine faults (on, default)
                   or run the engine fault-free (off; same workload)
  --nodes N        net tier: server nodes (default 1: one server, in-memory
                   engine inline; 2 or more: nodes sharing the broker host)
  --broker-faults  net tier with --nodes 2+: inject the seed's drawn broker
                   faults (on, default: lost live messages, node-broker
                   partitions, broker restarts with data loss, node bounces)
                   or run the cluster fault-free (off; same workload)
  --shards K       net tier: shards per server node (default 1; the shards
                   are tasks of the node's host, routed by the production
                   shard router; the workload is the same at any K)";

struct Args {
    seeds: std::ops::Range<u64>,
    tier: String,
    clients: Option<usize>,
    events: u64,
    net_seconds: u64,
    engine_faults: bool,
    nodes: usize,
    broker_faults: bool,
    shards: usize,
}

/// Why the command line was not understood (printed, exit status 2).
#[derive(Debug)]
enum ArgsError {
    /// `-h` / `--help`: the usage alone.
    Help,
    /// A flag without its value.
    Missing(String),
    NotANumber(String),
    /// `--seeds` without `..`.
    SeedRange,
    Unknown(String),
    Tier,
    NotOnOff {
        flag: String,
        value: String,
    },
}

impl std::fmt::Display for ArgsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgsError::Help => f.write_str(USAGE),
            ArgsError::Missing(flag) => write!(f, "{flag} needs a value"),
            ArgsError::NotANumber(v) => write!(f, "not a number: {v}"),
            ArgsError::SeedRange => f.write_str("--seeds takes A..B"),
            ArgsError::Unknown(other) => write!(f, "unknown argument {other}\n{USAGE}"),
            ArgsError::Tier => write!(f, "--tier must be core, net or both\n{USAGE}"),
            ArgsError::NotOnOff { flag, value } => {
                write!(f, "{flag} takes on or off, not {value}")
            }
        }
    }
}

fn parse_args() -> Result<Args, ArgsError> {
    let mut args = Args {
        seeds: 42..43,
        tier: "both".into(),
        clients: None,
        events: 200_000,
        net_seconds: 20,
        engine_faults: true,
        nodes: 1,
        broker_faults: true,
        shards: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| ArgsError::Missing(flag.clone()));
        let number = |v: String| v.parse::<u64>().map_err(|_| ArgsError::NotANumber(v));
        match flag.as_str() {
            "--seed" => {
                let seed = number(value()?)?;
                args.seeds = seed..seed + 1;
            }
            "--seeds" => {
                let v = value()?;
                let (a, b) = v.split_once("..").ok_or(ArgsError::SeedRange)?;
                args.seeds = number(a.to_owned())?..number(b.to_owned())?;
            }
            "--tier" => args.tier = value()?,
            "--clients" => args.clients = Some(number(value()?)? as usize),
            "--events" => args.events = number(value()?)?,
            "--net-seconds" => args.net_seconds = number(value()?)?,
            "--engine-faults" => args.engine_faults = on_off(&flag, value()?)?,
            "--nodes" => args.nodes = number(value()?)?.max(1) as usize,
            "--broker-faults" => args.broker_faults = on_off(&flag, value()?)?,
            "--shards" => args.shards = number(value()?)?.max(1) as usize,
            "-h" | "--help" => return Err(ArgsError::Help),
            other => return Err(ArgsError::Unknown(other.to_owned())),
        }
    }
    if !matches!(args.tier.as_str(), "core" | "net" | "both") {
        return Err(ArgsError::Tier);
    }
    Ok(args)
}

fn on_off(flag: &str, value: String) -> Result<bool, ArgsError> {
    match value.as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(ArgsError::NotOnOff {
            flag: flag.to_owned(),
            value,
        }),
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let mut failed = false;
    for seed in args.seeds.clone() {
        if args.tier != "net" {
            match core_tier::run(
                seed,
                args.clients.unwrap_or(0),
                args.events,
                args.engine_faults,
            ) {
                Ok(summary) => println!("{summary}"),
                Err(failure) => {
                    eprintln!("{failure}");
                    failed = true;
                }
            }
        }
        if args.tier != "core" {
            let run = net_tier::NetRun::new(seed, args.clients.unwrap_or(2000), args.net_seconds)
                .nodes(args.nodes)
                .broker_faults(args.broker_faults)
                .shards(args.shards);
            match net_tier::run_with(&run) {
                Ok(summary) => println!("{summary}"),
                Err(failure) => {
                    eprintln!("{failure}");
                    failed = true;
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
