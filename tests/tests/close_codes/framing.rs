//! Raw frames: close codes for framing violations (1002, 1007), and
//! lingering after a 1009.

use super::*;

/// A WebSocket client written by hand, so it can break the rules.
mod raw {
    use std::net::SocketAddr;

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Upgrades a TCP connection by hand and reads the `connected` frame.
    pub async fn connect(addr: SocketAddr) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                b"GET /ws/connect HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
                  Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            )
            .await
            .expect("handshake");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            stream.read_exact(&mut byte).await.expect("response head");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let (opcode, payload) = read_frame(&mut stream).await.expect("connected frame");
        assert_eq!(opcode, 1);
        assert!(String::from_utf8_lossy(&payload).contains("\"connected\""));
        stream
    }

    /// One frame as a client sends it: `first` is the FIN/RSV/opcode byte;
    /// masked unless `masked` is false.
    pub fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mask_bit = if masked { 0x80 } else { 0 };
        let mut out = vec![first];
        match payload.len() {
            len @ 0..=125 => out.push(mask_bit | len as u8),
            len @ 126..=65_535 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x12, 0x34, 0x56, 0x78];
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    /// One server frame: (opcode, payload); `None` at the end of the stream.
    pub async fn read_frame(
        stream: &mut (impl AsyncRead + Unpin),
    ) -> Result<(u8, Vec<u8>), std::io::Error> {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await?;
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                stream.read_exact(&mut b).await?;
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                stream.read_exact(&mut b).await?;
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        stream.read_exact(&mut payload).await?;
        Ok((head[0] & 0x0f, payload))
    }

    /// How the server ended the connection.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Ending {
        /// The code of its close frame, if one came.
        pub close: Option<u16>,
        /// How the stream ended after it: "eof" (a clean FIN) or the error.
        pub then: String,
    }

    /// Reads frames until the stream ends.
    pub async fn read_to_end(stream: &mut (impl AsyncRead + Unpin)) -> Ending {
        let mut close = None;
        let then = loop {
            match read_frame(stream).await {
                Ok((8, payload)) if close.is_none() => {
                    close = Some(
                        payload
                            .get(..2)
                            .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]])),
                    );
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break "eof".to_owned(),
                Err(e) => break format!("{:?}: {e}", e.kind()),
            }
        };
        Ending { close, then }
    }
}

/// RFC 6455 sections 5.2, 5.5, 7.4 and 8.1: a text frame that is not UTF-8
/// gets close 1007; breaking the framing rules gets close 1002. Either way
/// the close frame arrives and the connection then ends cleanly (FIN).
#[tokio::test]
async fn framing_violations_get_1002_and_invalid_utf8_gets_1007() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_default().await;
    let cases: [(&str, Vec<u8>, u16); 7] = [
        (
            "invalid UTF-8",
            raw::frame(0x81, &[b'{', 0xff, 0xfe, b'}'], true),
            1007,
        ),
        (
            "unmasked client frame",
            raw::frame(0x81, br#"{"action":"ping"}"#, false),
            1002,
        ),
        (
            "reserved bit RSV1",
            raw::frame(0xC1, br#"{"action":"ping"}"#, true),
            1002,
        ),
        ("reserved data opcode 3", raw::frame(0x83, b"x", true), 1002),
        (
            "reserved control opcode 0xB",
            raw::frame(0x8B, b"", true),
            1002,
        ),
        ("fragmented ping", raw::frame(0x09, b"p", true), 1002),
        (
            "continuation without a start",
            raw::frame(0x80, b"x", true),
            1002,
        ),
    ];
    for (name, bytes, code) in cases {
        let mut stream = raw::connect(server.addr).await;
        stream.write_all(&bytes).await.expect("send");
        let ending = tokio::time::timeout(TIMEOUT, raw::read_to_end(&mut stream))
            .await
            .unwrap_or_else(|_| panic!("{name}: the connection stayed open"));
        assert_eq!(
            ending,
            raw::Ending {
                close: Some(code),
                then: "eof".to_owned()
            },
            "{name}"
        );
    }
    server.assert_connections(0).await;
    assert_eq!(disconnects(&server, "invalid_payload").await, 1.0);
    assert_eq!(disconnects(&server, "protocol_error").await, 6.0);
}

/// A client that sends 4 MiB against the 64 KiB limit is in the middle of
/// its send when the server closes with 1009. The server lingers: it stops
/// sending (FIN after the close frame) and reads and discards the rest, so
/// the client's send completes, and it reads the close frame and then a
/// clean end of stream instead of a reset.
#[tokio::test]
async fn an_oversize_sender_reads_its_1009_without_a_reset() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_default().await;
    assert_eq!(test_config().limits.message_bytes_max, 64 * 1024);
    for round in 0..3 {
        let stream = raw::connect(server.addr).await;
        let (mut read, mut write) = stream.into_split();
        let frame = raw::frame(0x81, &vec![b'a'; 4 << 20], true);
        let sender = tokio::spawn(async move {
            let sent = write.write_all(&frame).await;
            (sent, write)
        });
        let ending = tokio::time::timeout(TIMEOUT, raw::read_to_end(&mut read))
            .await
            .expect("the connection stayed open");
        let (sent, write) = tokio::time::timeout(TIMEOUT, sender)
            .await
            .expect("the send never completed")
            .expect("sender");
        assert!(
            sent.is_ok(),
            "round {round}: the client's own send failed: {sent:?}"
        );
        assert_eq!(
            ending,
            raw::Ending {
                close: Some(1009),
                then: "eof".to_owned()
            },
            "round {round}"
        );
        drop((read, write));
    }
    assert_eq!(disconnects(&server, "oversize").await, 3.0);
}
