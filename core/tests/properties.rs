//! Properties of `roomcast_core::parse::parse_request`: total (no input
//! panics, every input gets exactly one answer), and well-formed requests
//! round-trip through `Request::to_json`.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use roomcast_core::parse::{parse_request, Action, Rejection, Request, RequestId, Since};
use roomcast_core::{ErrorCode, RoomName};
use serde_json::{Map, Number, Value};

/// The codes parsing alone may answer with.
const PARSE_CODES: [ErrorCode; 3] = [
    ErrorCode::InvalidMessage,
    ErrorCode::InvalidSubscription,
    ErrorCode::UnknownAction,
];

/// Parses `text` and checks the answer is coherent: one `Ok` whose wire form
/// parses back to the same request, or one `Err` with a parse-level code and
/// a message. Parsing is a function: the same text gives the same answer.
fn check_total(text: &str) -> Result<(), TestCaseError> {
    let answer = parse_request(text);
    prop_assert_eq!(&answer, &parse_request(text), "not deterministic");
    match answer {
        Ok(request) => {
            let wire = request.to_json();
            let again = parse_request(&wire);
            // Numbers may move by an ULP (see `float_ids_are_echoed_exactly`).
            prop_assert!(
                again
                    .as_ref()
                    .is_ok_and(|again| same_request(again, &request)),
                "normal form does not round-trip: {:?} -> {} -> {:?}",
                request,
                wire,
                again
            );
        }
        Err(Rejection { code, message, .. }) => {
            prop_assert!(PARSE_CODES.contains(&code), "unexpected code {:?}", code);
            prop_assert!(!message.is_empty());
            // Human text is bounded even for huge inputs (action names are cut).
            prop_assert!(message.len() <= 200, "message too long: {}", message.len());
        }
    }
    Ok(())
}

/// Equal, except that floats may differ by a few ULP.
fn same_request(a: &Request, b: &Request) -> bool {
    let ids = match (&a.id, &b.id) {
        (Some(x), Some(y)) => same_value(&x.to_value(), &y.to_value()),
        (None, None) => true,
        _ => false,
    };
    let actions = match (&a.action, &b.action) {
        (
            Action::Publish { room, kind, data },
            Action::Publish {
                room: room2,
                kind: kind2,
                data: data2,
            },
        ) => {
            room == room2
                && kind == kind2
                && same_value(&Value::Object(data.clone()), &Value::Object(data2.clone()))
        }
        (x, y) => x == y,
    };
    ids && actions
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y
                || match (x.as_f64(), y.as_f64()) {
                    (Some(x), Some(y)) => {
                        x.is_sign_negative() == y.is_sign_negative()
                            && x.to_bits().abs_diff(y.to_bits()) <= 2
                    }
                    _ => false,
                }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && same_value(vx, vy))
        }
        (x, y) => x == y,
    }
}

/// Fragments that make random text look like requests often enough to reach
/// the deeper branches of the parser.
fn json_ish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(",".to_owned()),
        Just(":".to_owned()),
        Just(" ".to_owned()),
        Just("\"action\"".to_owned()),
        Just("\"data\"".to_owned()),
        Just("\"room\"".to_owned()),
        Just("\"id\"".to_owned()),
        Just("\"since\"".to_owned()),
        Just("\"epoch\"".to_owned()),
        Just("\"seq\"".to_owned()),
        Just("\"type\"".to_owned()),
        Just("\"token\"".to_owned()),
        Just("\"after\"".to_owned()),
        Just("\"join\"".to_owned()),
        Just("\"leave\"".to_owned()),
        Just("\"ping\"".to_owned()),
        Just("\"presence\"".to_owned()),
        Just("\"publish\"".to_owned()),
        Just("\"refresh\"".to_owned()),
        Just("\"downloads\"".to_owned()),
        Just("\"a b\"".to_owned()),
        Just("\"\"".to_owned()),
        Just("\"\\u00e9\\ud800\"".to_owned()),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("-1".to_owned()),
        Just("1e400".to_owned()),
        Just("0.5".to_owned()),
        Just("18446744073709551616".to_owned()),
        "\"[a-z:._ -]{0,10}\"",
        "[ -~]{0,3}",
    ];
    vec(token, 0..40).prop_map(|tokens| tokens.concat())
}

/// A request object with the right keys but values of any JSON type.
fn request_shaped() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        short_float().prop_map(Value::Number),
        "[a-z:. ]{0,6}".prop_map(Value::String),
        prop_oneof![
            Just("join"),
            Just("leave"),
            Just("ping"),
            Just("presence"),
            Just("publish"),
            Just("refresh")
        ]
        .prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(
                prop_oneof![
                    Just("room".to_owned()),
                    Just("since".to_owned()),
                    Just("epoch".to_owned()),
                    Just("seq".to_owned()),
                    Just("type".to_owned()),
                    Just("data".to_owned()),
                    Just("token".to_owned()),
                    Just("after".to_owned()),
                    "[a-z]{1,3}",
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    btree_map(
        prop_oneof![
            Just("action".to_owned()),
            Just("data".to_owned()),
            Just("id".to_owned()),
            Just("room".to_owned()),
            "[a-z]{1,3}",
        ],
        value,
        0..5,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()).to_string())
}

/// Floats of at most 10 significant digits and small exponents: the range
/// serde_json (without `float_roundtrip`) parses exactly. Other `f64`s do not
/// survive a parse/serialize cycle (`float_ids_are_echoed_exactly` pins
/// the exact echo: serde_json's `float_roundtrip` is on).
fn short_float() -> impl Strategy<Value = Number> {
    (any::<i32>(), -300i32..=300).prop_map(|(mantissa, exp)| {
        let x: f64 = format!("{mantissa}e{exp}").parse().expect("a float");
        Number::from_f64(if x.is_finite() { x } else { 1.5 }).expect("finite")
    })
}

fn room_name() -> impl Strategy<Value = RoomName> {
    "[A-Za-z0-9_.:-]{1,128}".prop_map(|name| RoomName::new(&name).expect("valid by construction"))
}

fn request_id() -> impl Strategy<Value = RequestId> {
    prop_oneof![
        any::<i64>().prop_map(|n| RequestId::Number(n.into())),
        any::<u64>().prop_map(|n| RequestId::Number(n.into())),
        short_float().prop_map(RequestId::Number),
        any::<String>()
            .prop_filter("at most 128 bytes", |s| s.len() <= 128)
            .prop_map(RequestId::Text),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    btree_map(any::<String>(), json_value(), 0..4).prop_map(|m| m.into_iter().collect())
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (
            room_name(),
            proptest::option::of((any::<String>(), any::<u64>()))
        )
            .prop_map(|(room, since)| Action::Join {
                room,
                since: since.map(|(epoch, seq)| Since { epoch, seq }),
            }),
        room_name().prop_map(|room| Action::Leave { room }),
        Just(Action::Ping),
        (room_name(), proptest::option::of(any::<String>()))
            .prop_map(|(room, after)| Action::Presence { room, after }),
        (room_name(), any::<String>(), json_object())
            .prop_map(|(room, kind, data)| Action::Publish { room, kind, data }),
        any::<String>()
            .prop_filter("non-empty", |t| !t.is_empty())
            .prop_map(|token| Action::Refresh { token }),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (proptest::option::of(request_id()), action()).prop_map(|(id, action)| Request { id, action })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn any_string_gets_exactly_one_answer(text in any::<String>()) {
        check_total(&text)?;
    }

    #[test]
    fn any_bytes_get_exactly_one_answer(bytes in vec(any::<u8>(), 0..256)) {
        check_total(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn json_ish_text_gets_exactly_one_answer(text in json_ish()) {
        check_total(&text)?;
    }

    #[test]
    fn request_shaped_objects_get_exactly_one_answer(text in request_shaped()) {
        check_total(&text)?;
    }

    #[test]
    fn well_formed_requests_round_trip(request in request()) {
        let wire = request.to_json();
        prop_assert_eq!(parse_request(&wire), Ok(request), "{}", wire);
    }

    #[test]
    fn mutated_requests_get_exactly_one_answer(
        request in request(),
        edits in vec((any::<prop::sample::Index>(), any::<char>(), any::<bool>()), 1..4),
    ) {
        let mut text: Vec<char> = request.to_json().chars().collect();
        for (at, c, insert) in edits {
            let i = at.index(text.len() + 1);
            if insert || i == text.len() {
                text.insert(i, c);
            } else {
                text[i] = c;
            }
        }
        check_total(&text.into_iter().collect::<String>())?;
    }
}

#[test]
fn deeply_nested_input_is_refused_without_overflowing_the_stack() {
    for depth in [127, 128, 129, 10_000, 1_000_000] {
        for text in [
            format!(r#"{{"action":"ping","data":{}"#, "[".repeat(depth)),
            format!(
                r#"{{"action":"ping","data":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            ),
            format!(
                r#"{{"action":"ping","x":{}1{}}}"#,
                "{\"a\":".repeat(depth),
                "}".repeat(depth)
            ),
            format!(r#"{{"action":"ping","id":{}"#, "[".repeat(depth)),
            "[".repeat(depth),
            "{\"a\":".repeat(depth),
        ] {
            check_total(&text).unwrap_or_else(|e| panic!("depth {depth}: {e}"));
        }
    }
}

#[test]
fn numeric_ids_round_trip() {
    for id in [
        "0",
        "-0",
        "7",
        "-3",
        "1.5",
        "1e3",
        "-2.5e-3",
        "18446744073709551615",
        "-9223372036854775808",
    ] {
        let text = format!(r#"{{"action":"ping","id":{id}}}"#);
        let request = parse_request(&text).unwrap_or_else(|r| panic!("{text}: {r:?}"));
        assert_eq!(parse_request(&request.to_json()), Ok(request), "{text}");
    }
}

/// Known bug, not fixed here: `serde_json` is built without its
/// `float_roundtrip` feature, so a number is sometimes parsed to a
/// neighbouring `f64` (one ULP off) when it has many digits or a large
/// exponent (`1e-30` comes back as `9.999999999999999e-31`), and the reply
/// echoes a different id than the client sent. The same applies to numbers
/// inside client `publish` data and API bodies, which members receive
/// re-serialized.
#[test]
fn float_ids_are_echoed_exactly() {
    use roomcast_core::{ConnectionId, CoreConfig, Identity, Input, Now, Output, Standalone};
    let conn = ConnectionId::from_u128(1);
    let mut core = Standalone::new(CoreConfig::default());
    core.handle(
        Now::default(),
        Input::Open {
            conn,
            identity: Identity::Anonymous,
        },
    );
    while core.poll_output().is_some() {}
    let mut wrong = Vec::new();
    for id in [
        "2.0362245888917556e242",
        "93.98142192064873",
        "-9.9874e-22",
        "0.30000000000000004",
        "1e-30",
        "123456789012345678901234567890",
    ] {
        let sent: f64 = id.parse().expect("std parses floats exactly");
        let text = format!(r#"{{"action":"ping","id":{id}}}"#);
        core.handle(Now::default(), Input::Text { conn, text: &text });
        let Some(Output::Send { frame, .. }) = core.poll_output() else {
            panic!("no reply")
        };
        // Read the echoed id with std's exact parser, not serde_json's.
        let reply = frame.as_str();
        let echoed = &reply[reply.find(r#""id":"#).expect("an id") + 5..reply.len() - 1];
        if echoed.parse::<f64>().expect("a number") != sent {
            wrong.push(format!("sent {id}, echoed {echoed}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
