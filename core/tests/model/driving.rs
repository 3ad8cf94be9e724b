//! Driving the core and the model side by side: the comparison after every
//! step, and the properties and scenarios that run it.

use super::*;

/// Whether `op` opens a connection that is already open (the strategy
/// draws such ops; the harness skips them, as a correct caller never sends them).
fn reopens(core: &Standalone, op: &Op) -> bool {
    matches!(op, Op::Open(c, _) if core.core().is_open(conn_id(*c)))
}

/// The core's input for `op` (the frame text is rendered into `text`).
fn input<'a>(op: &Op, text: &'a mut String) -> Input<'a> {
    match op {
        Op::Open(c, who) => Input::Open {
            conn: conn_id(*c),
            identity: identity(*who),
        },
        Op::Text(c, msg, id) => {
            *text = render(msg, id.as_ref());
            Input::Text {
                conn: conn_id(*c),
                text: text.as_str(),
            }
        }
        Op::Binary(c) => Input::Binary { conn: conn_id(*c) },
        Op::Pong(c) => Input::Pong { conn: conn_id(*c) },
        Op::Written(c, n) => Input::Written {
            conn: conn_id(*c),
            bytes: usize::from(*n),
        },
        Op::Closed(c) => Input::Closed { conn: conn_id(*c) },
        Op::Abort(c, code) => Input::Abort {
            conn: conn_id(*c),
            code: *code,
        },
        Op::Advance(_) => Input::Timeout,
        Op::Broadcast(..) | Op::SendUser(..) | Op::SendConn(..) => {
            unreachable!("publishes are not inputs: see `apply`")
        }
    }
}

/// What the core answered to one op: the broadcast's and the send's typed
/// answers, nothing for every other input.
#[derive(Debug, PartialEq)]
pub(crate) enum Answer {
    Done,
    Broadcast(BroadcastOutcome),
    Sent(Result<u64, roomcast_core::validate::PublishError>),
}

/// Applies `op` to the core at `now`.
fn apply(core: &mut Standalone, now: Now, op: &Op) -> Answer {
    match op {
        Op::Broadcast(rooms, kind, n) => Answer::Broadcast(
            core.broadcast(
                now,
                Publish {
                    rooms: rooms
                        .iter()
                        .map(|r| RoomName::new(ROOMS[*r as usize]).expect("valid"))
                        .collect(),
                    kind: kind.name().to_owned(),
                    data: obj(kind.data(*n)),
                },
            ),
        ),
        Op::SendUser(u, n) => Answer::Sent(core.send_direct(
            now,
            DirectMessage {
                target: SendTarget::User(USERS[*u as usize].to_owned()),
                kind: "system_info".to_owned(),
                data: obj(direct_data(*n)),
                to_other_nodes: true,
            },
        )),
        Op::SendConn(c, n) => Answer::Sent(core.send_direct(
            now,
            DirectMessage {
                target: SendTarget::Connection(conn_id(*c)),
                kind: "system_info".to_owned(),
                data: obj(direct_data(*n)),
                to_other_nodes: true,
            },
        )),
        _ => {
            let mut text = String::new();
            core.handle(now, input(op, &mut text));
            Answer::Done
        }
    }
}

fn conn_index(id: ConnectionId) -> u8 {
    let n = id.0.as_u128();
    assert!(
        (1..=256).contains(&n),
        "output for a connection never opened: {id:?}"
    );
    (n - 1) as u8
}

/// Where the core's output and the model's part ways: what differs.
#[derive(Debug)]
pub(crate) struct Mismatch(pub(crate) String);

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn decode(output: Output) -> Result<Ev, Mismatch> {
    Ok(match output {
        Output::Send { conn, frame } => Ev::Send(
            conn_index(conn),
            serde_json::from_str(frame.as_str())
                .map_err(|e| Mismatch(format!("frame is not JSON ({e}): {frame:?}")))?,
        ),
        Output::Ping { conn } => Ev::Ping(conn_index(conn)),
        Output::Close { conn, code } => Ev::Close(conn_index(conn), code),
        Output::Check { .. } => {
            return Err(Mismatch("a Check must be answered by the harness".into()))
        }
    })
}

/// The response in the model's terms, and the (room, epoch) pairs of a receipt.
pub(crate) fn resp(answer: Answer) -> (Resp, Vec<(String, String)>) {
    match answer {
        Answer::Done => (Resp::Done, Vec::new()),
        Answer::Broadcast(BroadcastOutcome::Answered(Ok(receipt))) => (
            Resp::Published {
                delivered: receipt.delivered,
                seqs: receipt
                    .rooms
                    .iter()
                    .map(|r| (r.room.as_str().to_owned(), r.seq))
                    .collect(),
            },
            receipt
                .rooms
                .into_iter()
                .map(|r| (r.room.as_str().to_owned(), r.epoch))
                .collect(),
        ),
        Answer::Sent(Ok(delivered)) => (Resp::Sent { delivered }, Vec::new()),
        Answer::Broadcast(BroadcastOutcome::Answered(Err(error))) | Answer::Sent(Err(error)) => {
            (Resp::Rejected(error.code().to_owned()), Vec::new())
        }
        // The in-memory engine answers inline: a broadcast is never pending.
        Answer::Broadcast(BroadcastOutcome::Pending(ticket)) => {
            (Resp::Rejected(format!("pending {ticket:?}")), Vec::new())
        }
    }
}

fn check_invariants(core: &Standalone, step: &str) -> Result<(), TestCaseError> {
    core.check_invariants()
        .map_err(|e| TestCaseError::fail(format!("after {step}: invariant broken: {e}")))
}

/// How often each kind of event was checked, across all cases: proves the
/// generator reaches what the model is meant to check.
#[derive(Default)]
struct Coverage(std::sync::Mutex<BTreeMap<String, u64>>);

impl Coverage {
    fn count(&self, events: &[Ev]) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut bump = |label: String| *counts.entry(label).or_default() += 1;
        let mut recipients = 0;
        for ev in events {
            match ev {
                Ev::Send(_, v) if v["type"] == "error" => bump(format!(
                    "error {}",
                    v["data"]["code"].as_str().unwrap_or("?")
                )),
                Ev::Send(_, v) if v.get("seq").is_some() => {
                    recipients += 1;
                    bump("broadcast delivery".into());
                }
                Ev::Send(_, v) if v["data"]["message"] == "direct" => bump("direct".into()),
                Ev::Send(_, v) if v["data"].get("epoch").is_some() => {
                    bump("join reply".into());
                    if v["data"]["seq"].as_u64() > Some(0) {
                        bump("join reply with seq > 0".into());
                    }
                }
                Ev::Send(_, v) if v["data"].get("delivered").is_some() => {
                    bump("publish reply".into())
                }
                Ev::Send(_, v) => bump(v["type"].as_str().unwrap_or("?").to_owned()),
                Ev::Ping(_) => bump("ping".into()),
                Ev::Close(_, code) => bump(format!("close {}", code.code())),
            }
        }
        if recipients >= 3 {
            bump("fan-out to 3+".into());
        }
    }

    fn bump(&self, label: &str) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(label.to_owned()).or_default() += 1;
    }
}

fn run_against_model(case: &Case, coverage: &Coverage) -> Result<(), TestCaseError> {
    let mut core = Standalone::new(config(case.tight));
    let mut model = Model::new(case.tight);
    check_invariants(&core, "new")?;
    for (i, op) in case.ops.iter().enumerate() {
        if let Op::Advance(us) = op {
            model.now_us += u64::from(*us);
        }
        if reopens(&core, op) {
            continue; // a caller bug the core asserts against: ids are new
        }
        let (expected, expected_resp) = model.step(op);
        let response = apply(&mut core, model.now(), op);
        let step = format!("step {i} ({op:?})");
        check_invariants(&core, &step)?;
        let mut actual = Vec::new();
        while let Some(output) = core.poll_output() {
            if let Output::Check { conn, .. } = output {
                // The shell's part of `refresh`: this harness refuses every token.
                let why = "the model harness refuses every token";
                let result = Err(roomcast_core::TokenRefused(why.to_owned()));
                let answer = roomcast_core::CheckAnswer::Token(result);
                core.handle(model.now(), Input::CheckDone { conn, answer });
                continue;
            }
            let mut ev = decode(output).map_err(|e| TestCaseError::fail(e.0))?;
            model
                .normalize(&mut ev)
                .map_err(|e| TestCaseError::fail(format!("{step}: {e}")))?;
            actual.push(ev);
        }
        check_invariants(&core, &step)?;
        prop_assert_eq!(&actual, &expected, "outputs of {}", step);
        coverage.count(&expected);
        let (response, epochs) = resp(response);
        prop_assert_eq!(response, expected_resp, "response to {}", step);
        for (room, epoch) in epochs {
            model
                .check_receipt_epoch(&room, epoch)
                .map_err(|e| TestCaseError::fail(format!("{step}: {e}")))?;
        }
        prop_assert_eq!(
            core.connection_count(),
            model.conns.len(),
            "connection_count after {}",
            step
        );
        prop_assert_eq!(
            core.room_count(),
            model.rooms.len(),
            "room_count after {}",
            step
        );
        if let Some(at) = core.poll_timeout() {
            // The model's timeouts never fire within a case.
            prop_assert!(
                at > model.now_us,
                "deadline {} already due after {}",
                at,
                step
            );
        }
    }
    for _ in 0..model.epochs_learned {
        coverage.bump("room lifetime (epoch) checked");
    }
    if case.tight {
        coverage.bump("tight case");
    }
    // Close everything: 1001 for each open connection, in id order.
    core.handle(model.now(), Input::Shutdown);
    let mut closes = Vec::new();
    while let Some(output) = core.poll_output() {
        closes.push(decode(output).map_err(|e| TestCaseError::fail(e.0))?);
    }
    let expected: Vec<Ev> = model
        .conns
        .keys()
        .map(|c| Ev::Close(*c, CloseCode::GoingAway))
        .collect();
    prop_assert_eq!(closes, expected, "shutdown");
    check_invariants(&core, "shutdown")?;
    prop_assert_eq!(core.connection_count(), 0);
    prop_assert_eq!(core.room_count(), 0);
    prop_assert_eq!(core.poll_timeout(), None);
    Ok(())
}

/// Every output and response of one run, raw (frames as bytes).
fn raw_run(case: &Case) -> Vec<(Vec<Output>, Answer)> {
    let mut core = Standalone::new(config(case.tight));
    let mut now_us = 0;
    let mut log = Vec::new();
    for op in &case.ops {
        if let Op::Advance(us) = op {
            now_us += u64::from(*us);
        }
        if reopens(&core, op) {
            continue;
        }
        let response = apply(&mut core, Now::from_start(START_MS, now_us), op);
        let outputs = std::iter::from_fn(|| core.poll_output()).collect();
        log.push((outputs, response));
    }
    core.handle(Now::from_start(START_MS, now_us), Input::Shutdown);
    log.push((
        std::iter::from_fn(|| core.poll_output()).collect(),
        Answer::Done,
    ));
    log
}

#[test]
fn core_matches_the_reference_model() {
    let coverage = Coverage::default();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 1000,
        max_shrink_iters: 4096,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&case_strategy(200), |case| {
        run_against_model(&case, &coverage)
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    // The generator must actually reach what the model checks.
    let counts = coverage.0.into_inner().unwrap_or_else(|e| e.into_inner());
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!("coverage over 1000 cases:\n  {}", summary.join("\n  "));
    for (label, at_least) in [
        ("connected", 3_000),
        ("join reply", 3_500),
        ("join reply with seq > 0", 800),
        ("broadcast delivery", 3_500),
        ("fan-out to 3+", 250),
        ("publish reply", 200),
        ("presence", 200),
        ("pong", 800),
        ("system_info", 1_000), // leave replies
        ("direct", 1_200),
        ("room lifetime (epoch) checked", 2_000),
        ("tight case", 250),
        ("error RATE_LIMITED", 800),
        ("close 1008", 300),
        ("close 1009", 80),
        ("error FORBIDDEN", 2_000),
        ("error TOO_MANY_ROOMS", 300),
        ("error INVALID_MESSAGE", 1_500),
        ("error INVALID_SUBSCRIPTION", 500),
        ("error UNKNOWN_ACTION", 150),
        ("error UNKNOWN_TYPE", 60),
        ("error INVALID_KEY", 30),
        ("error INVALID_TOKEN", 80),
    ] {
        let seen = counts.get(label).copied().unwrap_or(0);
        assert!(
            seen >= at_least,
            "the generator reached {label:?} only {seen} times (want {at_least}):\n  {}",
            summary.join("\n  ")
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    })]

    #[test]
    fn same_inputs_give_byte_identical_outputs(case in case_strategy(200)) {
        let first = raw_run(&case);
        let second = raw_run(&case);
        prop_assert_eq!(first.len(), second.len());
        for (i, (a, b)) in first.iter().zip(&second).enumerate() {
            let a_bytes: Vec<_> = a.0.iter().map(raw).collect();
            let b_bytes: Vec<_> = b.0.iter().map(raw).collect();
            prop_assert_eq!(a_bytes, b_bytes, "outputs of step {}", i);
            prop_assert_eq!(&a.1, &b.1, "response of step {}", i);
        }
    }
}

/// An output with its frame as raw bytes.
fn raw(output: &Output) -> (ConnectionId, u8, Vec<u8>) {
    match output {
        Output::Send { conn, frame } => (*conn, 0, frame.bytes().to_vec()),
        Output::Ping { conn } => (*conn, 1, Vec::new()),
        Output::Close { conn, code } => (*conn, 2, code.code().to_be_bytes().to_vec()),
        Output::Check { conn, check } => (*conn, 3, format!("{check:?}").into_bytes()),
    }
}

/// A fixed scenario through the model, so a broken model fails loudly even
/// if generation happened to miss something.
#[test]
fn model_smoke_scenario() {
    let ops = vec![
        Op::Open(0, Who::User(0, Scope::Publish)),
        Op::Open(1, Who::Anon),
        Op::Open(2, Who::User(1, Scope::Read)),
        Op::Text(0, Msg::Join(0, Form::Data), Some(Id::Num(1))),
        Op::Text(1, Msg::Join(0, Form::Top), None),
        Op::Text(2, Msg::Join(0, Form::Both), Some(Id::Str(1))),
        Op::Text(1, Msg::Join(7, Form::Data), None), // user:alice: forbidden
        Op::Text(0, Msg::Join(7, Form::Data), None),
        Op::Text(0, Msg::Join(9, Form::Data), None), // auth:ops
        Op::Text(0, Msg::Join(1, Form::Data), Some(Id::Num(2))), // 4th room: too many
        Op::Broadcast(vec![0, 7, 3], BKind::DownloadProgress, 7),
        Op::Text(0, Msg::Publish(0, PubKind::QueueStatus), None),
        Op::Text(2, Msg::Publish(0, PubKind::QueueStatus), None),
        Op::Text(1, Msg::Presence(0), Some(Id::Num(3))),
        Op::Text(1, Msg::Leave(0, Form::Data), None),
        Op::Text(1, Msg::Presence(0), None),
        Op::Text(1, Msg::Bad(0), Some(Id::Num(4))),
        Op::Text(1, Msg::Bad(21), Some(Id::Num(5))),
        Op::Binary(1),
        Op::SendUser(0, 9),
        Op::SendConn(1, 9),
        Op::Advance(250_000),
        Op::Abort(2, CloseCode::MessageTooBig),
        Op::Closed(0),
        Op::Text(1, Msg::Join(0, Form::Data), None), // recreated: new epoch
        Op::Text(1, Msg::Ping(2), Some(Id::Str(0))),
    ];
    for tight in [false, true] {
        let case = Case {
            tight,
            conns: 3,
            ops: ops.clone(),
        };
        if let Err(e) = run_against_model(&case, &Coverage::default()) {
            panic!("{e}\n{case:?}");
        }
    }
}
