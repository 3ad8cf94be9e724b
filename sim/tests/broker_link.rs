//! A node's broker link against the real broker host, inside turmoil:
//! a call whose answer is held past its timeout is answered exactly once
//! (`Unavailable`) and its late answer is dropped; after a partition the
//! link reconnects, tells the core `StreamReset`, and follows its rooms
//! again (the next append reaches it live).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use roomcast_core::engine::memory::HistoryBounds;
use roomcast_core::engine::{CallId, EngineEvent, EngineRequest, Unnumbered};
use roomcast_core::RoomName;
use roomcast_sim::broker::host::{self, BrokerConfig, BrokerShared};
use roomcast_sim::broker::link::{self, LinkConfig, LinkStats};
use roomcast_sim::rng::SimRng;
use tokio::sync::mpsc;

const BROKER: &str = "broker";
const NODE: &str = "node";

fn room() -> RoomName {
    RoomName::new("r").expect("a valid name")
}

fn read(call: u64) -> EngineRequest {
    EngineRequest::Read {
        call: CallId(call),
        room: room(),
        after: None,
        limit: 10,
        known: None,
    }
}

/// The next event within `wait`, if any.
async fn next(events: &mut mpsc::Receiver<EngineEvent>, wait: Duration) -> Option<EngineEvent> {
    tokio::time::timeout(wait, events.recv())
        .await
        .ok()
        .flatten()
}

#[test]
fn timeouts_answer_once_and_a_reconnect_resets_the_stream() -> turmoil::Result {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(60))
        .build();
    let config = BrokerConfig {
        port: 7000,
        bounds: HistoryBounds {
            messages_max: 100,
            age_max_us: 60_000_000,
            bytes_max: usize::MAX,
            rooms_max: usize::MAX,
        },
        presence_ttl_us: 10_000_000,
        epoch_prefix: "b1".into(),
        idle_timeout: Duration::from_secs(10),
        outbound_frames_max: 1_000,
        presence_changes: Default::default(),
    };
    let shared = Rc::new(RefCell::new(BrokerShared::new(SimRng::new(1))));
    sim.host(BROKER, move || host::run(config.clone(), shared.clone()));
    let stats = Arc::new(LinkStats::default());
    let seen = stats.clone();
    sim.client(NODE, async move {
        let engine = link::spawn(LinkConfig {
            broker: BROKER.into(),
            port: 7000,
            node: 1,
            call_timeout: Duration::from_millis(500),
            calls_max: 16,
            ping_interval: Duration::from_millis(250),
            // Longer than the hold below: the connection survives it.
            dead_after: Duration::from_secs(3),
            connect_timeout: Duration::from_millis(500),
            backoff_first: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(400),
            rng: SimRng::new(2),
            stats: seen,
        });
        let (requests, mut events) = (engine.requests, engine.events);
        // Connected once a read succeeds (until then calls fail at once).
        let mut call = 0;
        loop {
            call += 1;
            requests.send(read(call)).await?;
            match next(&mut events, Duration::from_secs(1)).await {
                Some(EngineEvent::Read { result: Ok(_), .. }) => break,
                Some(EngineEvent::Read { result: Err(_), .. }) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let interest = EngineRequest::Interest {
            room: room(),
            on: true,
        };
        requests.send(interest).await?;

        // Held past its timeout: one failure answer, the late one dropped.
        turmoil::hold(NODE, BROKER);
        requests.send(read(100)).await?;
        match next(&mut events, Duration::from_secs(2)).await {
            Some(EngineEvent::Read {
                call: CallId(100),
                result: Err(error),
            }) => assert!(error.message().contains("in time"), "{error:?}"),
            other => panic!("expected the timeout answer, got {other:?}"),
        }
        turmoil::release(NODE, BROKER);
        let after = next(&mut events, Duration::from_secs(1)).await;
        assert!(after.is_none(), "a second answer: {after:?}");

        // Cut off: the link gives up on the connection, fails calls at
        // once meanwhile, and comes back with a stream reset.
        turmoil::partition(NODE, BROKER);
        tokio::time::sleep(Duration::from_secs(4)).await;
        requests.send(read(200)).await?;
        match next(&mut events, Duration::from_millis(100)).await {
            Some(EngineEvent::Read {
                call: CallId(200),
                result: Err(_),
            }) => {}
            other => panic!("expected an immediate failure, got {other:?}"),
        }
        turmoil::repair(NODE, BROKER);
        match next(&mut events, Duration::from_secs(5)).await {
            Some(EngineEvent::StreamReset) => {}
            other => panic!("expected StreamReset, got {other:?}"),
        }
        // Still following the room: an append comes back live too.
        let append = EngineRequest::Append {
            call: CallId(300),
            room: room(),
            message: Unnumbered {
                head: "{\"seq\":".into(),
                tail: "}".into(),
                series: None,
            },
            known: None,
        };
        requests.send(append).await?;
        let (mut live, mut answered) = (false, false);
        while !(live && answered) {
            match next(&mut events, Duration::from_secs(2)).await {
                Some(EngineEvent::Live(numbered)) => live = numbered.seq == 1,
                Some(EngineEvent::Appended {
                    call: CallId(300),
                    result: Ok(_),
                    peer_members: 0,
                }) => answered = true,
                other => panic!("expected the append live and answered, got {other:?}"),
            }
        }
        Ok(())
    });
    sim.run()?;
    assert_eq!(stats.late.load(Ordering::SeqCst), 1, "{}", stats.summary());
    assert_eq!(
        stats.timeouts.load(Ordering::SeqCst),
        1,
        "{}",
        stats.summary()
    );
    assert!(
        stats.connections.load(Ordering::SeqCst) >= 2,
        "{}",
        stats.summary()
    );
    Ok(())
}
