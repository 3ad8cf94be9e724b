//! The writer's tests: queueing, gathering, backpressure, closing.

use super::*;

/// A socket that takes at most `step` bytes per write and, every other
/// call, is full (Pending, waking its waker at once: "writable again").
struct Trickle {
    written: Vec<u8>,
    step: usize,
    calls: usize,
    shut: bool,
}

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.calls += 1;
        if self.calls.is_multiple_of(2) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = buf.len().min(self.step);
        self.written.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.shut = true;
        Poll::Ready(Ok(()))
    }
}

fn text(payload: &str) -> TextFrame {
    TextFrame::from(payload.to_owned())
}

#[test]
fn partial_writes_and_full_sockets_keep_frames_whole_and_in_order() {
    let conn = ConnectionId::from_u128(7);
    let writable = Arc::new(Writable::new(1024));
    let (signal, _signalled) = oneshot::channel();
    let socket = Trickle {
        written: Vec::new(),
        step: 5,
        calls: 0,
        shut: false,
    };
    let mut writer = ConnWriter::new(socket, signal);
    let big = "y".repeat(3000);
    for payload in ["first", big.as_str(), "third"] {
        writer.push_text(text(payload));
    }
    writer.push_ping();
    writer.close(CloseCode::GoingAway);
    let mut total = Flushed::default();
    for _ in 0..10_000 {
        let flushed = writer.flush(conn, &writable);
        total.text_bytes += flushed.text_bytes;
        total.frames += flushed.frames;
        total.writes += flushed.writes;
        if !writer.wants_flush() && writer.queue.is_empty() {
            break;
        }
        assert!(flushed.blocked, "a socket that pushed back is reported");
        // A blocked writer is retried only once its waker listed it.
        assert!(!writer.wants_flush());
        let listed = std::mem::take(&mut *writable.ready.lock().unwrap());
        assert_eq!(listed, [conn], "the waker lists the connection");
        writer.writable();
    }
    assert!(writer.queue.is_empty(), "everything was written");
    assert_eq!(total.frames, 3);
    assert_eq!(total.text_bytes, 5 + 3000 + 5);
    // Every other call of the socket took bytes (the odd ones): each is
    // one write (`roomcast_socket_writes_total`).
    assert_eq!(total.writes, writer.io.calls.div_ceil(2) as u64);
    let mut expected = vec![0x81, 5];
    expected.extend_from_slice(b"first");
    expected.extend_from_slice(&[0x81, 126, 0x0b, 0xb8]);
    expected.extend_from_slice(big.as_bytes());
    expected.extend_from_slice(&[0x81, 5]);
    expected.extend_from_slice(b"third");
    expected.extend_from_slice(&[0x89, 0x00]);
    let reason = CloseCode::GoingAway.reason();
    expected.extend_from_slice(&[0x88, 2 + reason.len() as u8]);
    expected.extend_from_slice(&1001u16.to_be_bytes());
    expected.extend_from_slice(reason.as_bytes());
    assert_eq!(writer.io.written, expected);
}

#[test]
fn a_close_for_a_violation_shuts_the_sending_side_down_after_its_frame() {
    let conn = ConnectionId::from_u128(9);
    let writable = Arc::new(Writable::new(1024));
    for (code, shuts) in [
        (CloseCode::MessageTooBig, true),
        (CloseCode::InvalidPayload, true),
        (CloseCode::ProtocolError, true),
        (CloseCode::PolicyViolation, true),
        (CloseCode::GoingAway, false),
        (CloseCode::SlowConsumer, false),
    ] {
        let (signal, _signalled) = oneshot::channel();
        let socket = Trickle {
            written: Vec::new(),
            step: 3,
            calls: 0,
            shut: false,
        };
        let mut writer = ConnWriter::new(socket, signal);
        writer.push_text(text("an explanation"));
        writer.close(code);
        for _ in 0..1000 {
            writer.flush(conn, &writable);
            assert!(
                !writer.io.shut || writer.queue.is_empty(),
                "FIN only after the close frame"
            );
            if !writer.wants_flush() && writer.queue.is_empty() {
                break;
            }
            writer.writable();
        }
        assert!(writer.queue.is_empty());
        assert_eq!(writer.io.shut, shuts, "{code:?}");
        assert_eq!(writer.is_shut_down(), shuts, "{code:?}");
        assert!(!writer.wants_flush());
        let close_at = writer.io.written.len() - 2 - code.reason().len() - 2;
        assert_eq!(writer.io.written[close_at], 0x88, "{code:?}");
    }
}

#[test]
fn nothing_is_queued_after_the_close_frame() {
    let (signal, mut signalled) = oneshot::channel();
    let socket = Trickle {
        written: Vec::new(),
        step: usize::MAX,
        calls: 0,
        shut: false,
    };
    let mut writer = ConnWriter::new(socket, signal);
    writer.push_text(text("before"));
    writer.close(CloseCode::SlowConsumer);
    writer.push_text(text("after"));
    writer.push_ping();
    assert_eq!(writer.queue.len(), 2);
    assert_eq!(
        signalled.try_recv(),
        Ok(SessionSignal::Closing(CloseCode::SlowConsumer))
    );
}

#[test]
fn nothing_is_queued_after_the_echo_of_a_client_close() {
    let (signal, _signalled) = oneshot::channel();
    let socket = Trickle {
        written: Vec::new(),
        step: usize::MAX,
        calls: 0,
        shut: false,
    };
    let mut writer = ConnWriter::new(socket, signal);
    writer.push_control(Bytes::from_static(&[0x8a, 0x00])); // a pong
    assert_eq!(writer.stage(), Stage::Open);
    writer.push_control(Bytes::from_static(&[0x88, 0x02, 0x03, 0xe8])); // close 1000
    assert_eq!(writer.stage(), Stage::Closing { linger: false });
    assert!(!writer.closed_by_server());
    writer.push_text(text("late broadcast"));
    writer.push_ping();
    writer.close(CloseCode::GoingAway);
    assert_eq!(writer.queue.len(), 2, "only the pong and the echo");
}

#[test]
fn the_queue_keeps_order_across_its_inline_slot() {
    let mut queue = Queue::default();
    for len in [1, 2, 3] {
        queue.push(text_chunk(len));
    }
    queue.pop_front();
    queue.push(text_chunk(4));
    let lens: Vec<usize> = queue.iter().map(|c| c.bytes.len()).collect();
    assert_eq!(lens, [2, 3, 4]);
    assert_eq!(queue.len(), 3);
    queue.front_mut().expect("a frame").sent = 1;
    assert_eq!(queue.iter().next().map(|c| c.sent), Some(1));
    for _ in 0..3 {
        queue.pop_front();
    }
    assert!(queue.is_empty());
}

fn text_chunk(len: usize) -> Chunk {
    Chunk {
        bytes: Bytes::from(vec![b'x'; len]),
        text: true,
        counted: true,
        sent: 0,
    }
}

#[test]
fn text_headers_follow_rfc_6455_length_forms() {
    let mut header = [0u8; 10];
    for len in [0, 125, 126, 65_535, 65_536, 70_000] {
        let chunk = text_chunk(len);
        assert_eq!(chunk.header_len(), chunk.header(&mut header), "{len}");
    }
    assert_eq!(text_chunk(125).header(&mut header), 2);
    assert_eq!(&header[..2], &[0x81, 125]);
    assert_eq!(text_chunk(126).header(&mut header), 4);
    assert_eq!(&header[..4], &[0x81, 126, 0, 126]);
    assert_eq!(text_chunk(70_000).header(&mut header), 10);
    assert_eq!(&header[..2], &[0x81, 127]);
    assert_eq!(&header[2..10], &70_000u64.to_be_bytes());
}
