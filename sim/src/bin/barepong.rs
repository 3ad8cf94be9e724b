//! `barepong`: the least a WebSocket ping/pong can cost on this box, for
//! comparison with roomcast's `loadgen pingpong` figure.
//!
//! A bare tokio-tungstenite server, with no HTTP routing, core, JSON
//! parsing, auth or limits. It greets every client with a `connected` text
//! frame and answers any text containing `ping` with a fixed `pong`. It
//! uses one runtime worker and a 512-byte read buffer, like
//! `roomcast serve --workers 1`. It speaks only enough of the protocol for
//! `loadgen pingpong`; the command is in docs/benchmarks.md.
//!
//! ```text
//! barepong --listen 127.0.0.1:18085
//! ```

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

const PONG: &str = r#"{"type":"pong","timestamp":"2026-01-01T00:00:00.000Z","data":{}}"#;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = match (args.next().as_deref(), args.next()) {
        (Some("--listen"), Some(address)) => address,
        (None, _) => "127.0.0.1:18085".to_owned(),
        _ => {
            eprintln!("usage: barepong [--listen ADDRESS]");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut config = WebSocketConfig::default();
                config.read_buffer_size = 512;
                config.write_buffer_size = 0;
                let Ok(mut ws) =
                    tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
                else {
                    return;
                };
                let connected = Message::text(r#"{"type":"connected","data":{}}"#);
                if ws.send(connected).await.is_err() {
                    return;
                }
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Text(text) = message {
                        if text.contains("ping") && ws.send(Message::text(PONG)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    })
}
