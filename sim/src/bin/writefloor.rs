//! `writefloor`: what the kernel alone charges for a fan-out on this box.
//!
//! A bare loop writes one small frame to each of N loopback TCP sockets per
//! round, at a given rate, with no WebSocket, no core and no runtime on the
//! writing side; a reader on another CPU drains them the way `loadgen`
//! does (one tokio task per socket). It reports the writer thread's CPU
//! time per write and how long a round takes. No server can deliver one
//! frame per socket for less than this, so it bounds the fan-out latency
//! any server reaches here when every member gets its own write (see
//! docs/benchmarks.md).
//!
//! ```text
//! writefloor --sockets 9000 --rate 20 --rounds 40 --bytes 200
//! ```
//!
//! Both ends live in this process, so `--sockets` must stay under half the
//! file-descriptor limit. The writer is pinned to CPU 0, the reader to CPU 1.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

struct Args {
    sockets: usize,
    rate: f64,
    rounds: usize,
    bytes: usize,
}

/// A command line writefloor cannot run.
#[derive(Debug)]
enum ArgError {
    NeedsValue(String),
    NotANumber { flag: String, value: String },
    UnknownFlag(String),
    NotPositive,
}

impl std::fmt::Display for ArgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgError::NeedsValue(flag) => write!(f, "{flag} needs a value"),
            ArgError::NotANumber { flag, value } => write!(f, "{flag}: not a number: {value}"),
            ArgError::UnknownFlag(flag) => write!(f, "unknown flag {flag}"),
            ArgError::NotPositive => f.write_str("--sockets, --rounds and --rate must be > 0"),
        }
    }
}

impl std::error::Error for ArgError {}

fn parse_args() -> Result<Args, ArgError> {
    let mut args = Args {
        sockets: 9000,
        rate: 20.0,
        rounds: 40,
        bytes: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| ArgError::NeedsValue(flag.clone()))?;
        let number = || {
            value.parse::<f64>().map_err(|_| ArgError::NotANumber {
                flag: flag.clone(),
                value: value.clone(),
            })
        };
        match flag.as_str() {
            "--sockets" => args.sockets = number()? as usize,
            "--rate" => args.rate = number()?,
            "--rounds" => args.rounds = number()? as usize,
            "--bytes" => args.bytes = number()? as usize,
            other => return Err(ArgError::UnknownFlag(other.to_owned())),
        }
    }
    if args.sockets == 0 || args.rounds == 0 || args.rate <= 0.0 {
        return Err(ArgError::NotPositive);
    }
    Ok(args)
}

/// Pins the calling thread to one CPU (best effort: a box with one CPU
/// simply shares it).
fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Drains every socket until it has seen `expected` bytes.
fn reader(addr: SocketAddr, sockets: usize, expected: usize) -> std::io::Result<()> {
    pin_to(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut tasks = Vec::with_capacity(sockets);
        for _ in 0..sockets {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            tasks.push(tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let mut seen = 0;
                while seen < expected {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen += n,
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        Ok(())
    })
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("writefloor: {error}");
            std::process::exit(2);
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let (sockets, rounds, bytes) = (args.sockets, args.rounds, args.bytes);
    let reading = std::thread::spawn(move || reader(addr, sockets, rounds * bytes));
    pin_to(0);
    let mut streams: Vec<TcpStream> = (0..sockets)
        .map(|_| {
            let (stream, _) = listener.accept().expect("accept");
            stream.set_nodelay(true).expect("TCP_NODELAY");
            stream
        })
        .collect();
    let frame = vec![b'x'; bytes];
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let started_cpu = thread_cpu();
    let mut round_times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let round = Instant::now();
        for stream in &mut streams {
            stream.write_all(&frame).expect("write");
        }
        let took = round.elapsed();
        round_times.push(took);
        std::thread::sleep(period.saturating_sub(took));
    }
    let cpu = thread_cpu() - started_cpu;
    match reading.join() {
        Ok(Ok(())) => {}
        Ok(Err(error)) => eprintln!("writefloor: reader failed: {error}"),
        Err(_) => eprintln!("writefloor: reader panicked"),
    }
    round_times.sort();
    let cpu_us_per_write = cpu.as_secs_f64() * 1e6 / (sockets * rounds) as f64;
    let p50_ms = round_times[rounds / 2].as_secs_f64() * 1e3;
    let max_ms = round_times[rounds - 1].as_secs_f64() * 1e3;
    println!(
        "{sockets} sockets x {rounds} rounds at {}/s, {bytes}-byte frames: writer CPU {cpu_us_per_write:.2} us per write; one round (a frame to every socket) takes {p50_ms:.1} ms (p50), {max_ms:.1} ms (max)",
        args.rate
    );
    println!(
        "JSON {}",
        serde_json::json!({"mode": "writefloor", "sockets": sockets, "rounds": rounds, "rate": args.rate,
            "bytes": bytes, "cpu_us_per_write": cpu_us_per_write, "round_p50_ms": p50_ms, "round_max_ms": max_ms})
    );
}
