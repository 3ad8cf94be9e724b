//! The `roomcast` command: `roomcast serve` runs the server, `roomcast token`
//! prints a development token. See `roomcast --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use roomcast_net::auth::{Claims, TokenVerifier};
use roomcast_net::config::LogFormat;
use roomcast_net::devmode::{self, KeyMode};
use roomcast_net::{serve, ServeOptions, ServerConfig};

/// roomcast: a real-time WebSocket rooms server.
///
/// Configuration comes from defaults, then --config FILE (TOML), then
/// ROOMCAST_* environment variables, then flags. See
/// config/roomcast.example.toml for every key.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (in-memory engine by default; no external service
    /// needed. With --redis, several nodes share one Redis).
    Serve {
        /// Address to listen on [default: 127.0.0.1:8080; env: ROOMCAST_LISTEN].
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// TOML configuration file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Log format [default: text; env: ROOMCAST_LOG_FORMAT].
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
        /// Shards: hubs, each with its own core and connections on a
        /// thread of its own [default: one per CPU this process may run
        /// on; env: ROOMCAST_SHARDS].
        #[arg(long, value_name = "N")]
        shards: Option<usize>,
        /// Threads of the runtime that accepts connections (0 = automatic:
        /// one per CPU with --shards 1, where the sessions run there too;
        /// 2 with more shards, which run their connections on their own
        /// threads).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// Share rooms with other nodes through this Redis:
        /// redis://[user:password@]host:port/db, or rediss://... for TLS;
        /// with --redis-cluster or --redis-sentinel, a comma-separated list
        /// [env: ROOMCAST_ENGINE__REDIS_URL].
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
        /// --redis lists the seed nodes of a Redis Cluster, comma-separated
        /// [env: ROOMCAST_ENGINE__REDIS_CLUSTER=true].
        #[arg(long, conflicts_with = "redis_sentinel")]
        redis_cluster: bool,
        /// --redis lists Redis Sentinels (redis://host:26379,...); the node
        /// uses the master they name MASTER and follows its failovers. The
        /// password in --redis is the master's (Sentinels' own:
        /// [engine] redis_sentinel_password)
        /// [env: ROOMCAST_ENGINE__REDIS_SENTINEL_MASTER].
        #[arg(long, value_name = "MASTER")]
        redis_sentinel: Option<String>,
    },
    /// Print a JWT signed with the configured HS256 secret (development and tests).
    Token {
        /// The user id (`sub` claim).
        #[arg(long)]
        sub: String,
        /// Space-separated scopes; "publish" allows publishing to every room,
        /// "publish:<room>" to one room.
        #[arg(long, default_value = "")]
        scope: String,
        /// Room grants (`rooms` claim) for `granted` rooms, comma-separated:
        /// exact names or prefixes ending in `*`, e.g. "team:42,series:*".
        #[arg(long, default_value = "")]
        rooms: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// TOML configuration file (for auth.jwt_secret).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            listen,
            config,
            log_format,
            shards,
            workers,
            redis,
            redis_cluster,
            redis_sentinel,
        } => run_server(
            listen,
            config,
            log_format,
            shards,
            workers,
            RedisFlags {
                url: redis,
                cluster: redis_cluster,
                sentinel: redis_sentinel,
            },
        ),
        Command::Token {
            sub,
            scope,
            rooms,
            ttl,
            config,
        } => print_token(sub, scope, &rooms, ttl, config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("roomcast: {message}");
            ExitCode::FAILURE
        }
    }
}

fn load(config: Option<PathBuf>) -> Result<ServerConfig, Box<dyn std::error::Error>> {
    Ok(ServerConfig::load(config.as_deref(), std::env::vars())?)
}

/// The `--redis*` flags of `serve`.
struct RedisFlags {
    url: Option<String>,
    cluster: bool,
    sentinel: Option<String>,
}

fn run_server(
    listen: Option<std::net::SocketAddr>,
    config: Option<PathBuf>,
    log_format: Option<LogFormat>,
    shards: Option<usize>,
    workers: usize,
    redis: RedisFlags,
) -> Result<(), Box<dyn std::error::Error>> {
    // Each `--redis*` flag overrides the environment, as if it were the
    // variable, so the `[engine]` settings are validated together (TLS
    // files need a rediss:// URL, Sentinel excludes a cluster).
    let overrides: Vec<(String, String)> = [
        ("ROOMCAST_ENGINE__REDIS_URL", redis.url),
        (
            "ROOMCAST_ENGINE__REDIS_CLUSTER",
            redis.cluster.then(|| "true".to_owned()),
        ),
        ("ROOMCAST_ENGINE__REDIS_SENTINEL_MASTER", redis.sentinel),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.map(|value| (key.to_owned(), value)))
    .collect();
    let overridden: Vec<String> = overrides.iter().map(|(key, _)| key.clone()).collect();
    let env = std::env::vars()
        .filter(|(key, _)| !overridden.contains(key))
        .chain(overrides);
    let (mut config, warnings) = ServerConfig::load_reporting(config.as_deref(), env)?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if let Some(format) = log_format {
        config.log_format = format;
    }
    if let Some(shards) = shards {
        config.shards = shards;
        config.validate()?;
    }
    init_logging(config.log_format);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let options = ServeOptions::production();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    match (workers, config.shard_count(options.cpus)) {
        (0, 1) => {}
        // The acceptor, the engine task and the shard router.
        (0, _) => {
            runtime.worker_threads(2);
        }
        (workers, _) => {
            runtime.worker_threads(workers);
        }
    }
    let runtime = runtime.enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        match devmode::key_mode(&config) {
            KeyMode::Configured => {}
            KeyMode::DevSecret => {
                config.auth.jwt_secret = Some(devmode::ephemeral_secret());
                let token = devmode::console_token(&config, unix_now_s()?)?;
                tracing::info!(
                    "no JWT key configured and listening on loopback: using an ephemeral \
                     development secret for this process; console link on standard output"
                );
                // Standard output, not the log: the link carries a token.
                println!(
                    "roomcast console (token: publish, valid {} min): {}",
                    devmode::DEV_TOKEN_TTL_S / 60,
                    devmode::console_link(bound, &token)
                );
            }
            KeyMode::AnonymousOnly => tracing::warn!(
                listen = %bound,
                "no JWT key configured on a non-loopback address: no development secret is \
                 generated; set ROOMCAST_JWT_SECRET (or auth.public_key_file) to accept tokens"
            ),
        }
        serve(listener, config, options, shutdown_signal()).await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    tokio::select! {
        _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        _ = async { match int.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ROOMCAST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn unix_now_s() -> Result<u64, Box<dyn std::error::Error>> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs())
}

fn print_token(
    sub: String,
    scope: String,
    rooms: &str,
    ttl: u64,
    config: Option<PathBuf>,
) -> Result<(), Box<dyn std::error::Error>> {
    let rooms: Vec<&str> = rooms
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .collect();
    // The server would refuse the whole token: say which entry is wrong now.
    roomcast_core::Grants::parse(rooms.iter().copied()).map_err(|e| format!("--rooms: {e}"))?;
    let config = load(config)?;
    let verifier = TokenVerifier::from_config(&config.auth)?;
    let now = unix_now_s()?;
    let claims = Claims {
        sub,
        exp: (now + ttl) as f64,
        nbf: None,
        iat: Some(now as f64),
        scope: (!scope.trim().is_empty()).then(|| scope.trim().to_owned()),
        rooms: (!rooms.is_empty()).then(|| serde_json::json!(rooms)),
    };
    println!("{}", verifier.sign(&claims)?);
    Ok(())
}
