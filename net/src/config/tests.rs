//! The configuration's tests: defaults, the file, the environment, the checks.

use super::*;

/// Environment variables as `ServerConfig::load` takes them.
pub(crate) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_need_nothing() {
    let config = ServerConfig::load(None, Vec::new()).unwrap();
    assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.auth.jwt_secret, None);
}

#[test]
fn environment_overrides() {
    let config = ServerConfig::load(
        None,
        env(&[
            ("ROOMCAST_JWT_SECRET", "s3cret"),
            ("ROOMCAST_LISTEN", "0.0.0.0:9000"),
            ("ROOMCAST_LIMITS__ROOMS_PER_CONNECTION_MAX", "3"),
            (
                "ROOMCAST_ALLOWED_ORIGINS",
                "[https://a.example, https://b.example]",
            ),
            ("ROOMCAST_AUTH__INVALID_TOKEN", "reject"),
            ("OTHER", "ignored"),
        ]),
    )
    .unwrap();
    assert_eq!(config.auth.jwt_secret.as_deref(), Some("s3cret"));
    assert_eq!(config.listen.port(), 9000);
    assert_eq!(config.limits.rooms_per_connection_max, 3);
    assert_eq!(config.allowed_origins.len(), 2);
    assert_eq!(config.auth.invalid_token, InvalidTokenPolicy::Reject);
}

#[test]
fn identity_provider_settings_from_the_environment() {
    let config = ServerConfig::load(
        None,
        env(&[
            (
                "ROOMCAST_AUTH__JWKS_URL",
                "https://idp.example.com/jwks.json",
            ),
            ("ROOMCAST_AUTH__JWKS_REFRESH_MS", "60000"),
            ("ROOMCAST_AUTH__JWKS_REFETCH_MIN_MS", "0"),
            // Numbers stay text: an audience may be a numeric client id.
            ("ROOMCAST_AUTH__AUDIENCE", "1234567890"),
            ("ROOMCAST_AUTH__ISSUER", "https://idp.example.com/"),
        ]),
    )
    .unwrap();
    let auth = &config.auth;
    assert_eq!(
        auth.jwks_url.as_deref(),
        Some("https://idp.example.com/jwks.json")
    );
    assert_eq!(
        (auth.jwks_refresh_ms, auth.jwks_refetch_min_ms),
        (60_000, 0)
    );
    assert_eq!(auth.audience.as_deref(), Some("1234567890"));
    assert_eq!(auth.issuer.as_deref(), Some("https://idp.example.com/"));
    let defaults = AuthConfig::default();
    assert_eq!(
        (defaults.jwks_refresh_ms, defaults.jwks_refetch_min_ms),
        (300_000, 10_000)
    );
}

#[test]
fn secrets_that_look_like_numbers_stay_text() {
    let config = ServerConfig::load(
        None,
        env(&[
            ("ROOMCAST_JWT_SECRET", "123456"),
            ("ROOMCAST_SERVER_NAME", "42"),
        ]),
    )
    .unwrap();
    assert_eq!(config.auth.jwt_secret.as_deref(), Some("123456"));
    assert_eq!(config.server_name, "42");
}

/// What Kubernetes injects into every pod of a namespace with a
/// Service named `roomcast`.
const KUBERNETES: [(&str, &str); 7] = [
    ("ROOMCAST_PORT", "tcp://10.96.0.17:8080"),
    ("ROOMCAST_SERVICE_HOST", "10.96.0.17"),
    ("ROOMCAST_SERVICE_PORT", "8080"),
    ("ROOMCAST_PORT_8080_TCP", "tcp://10.96.0.17:8080"),
    ("ROOMCAST_PORT_8080_TCP_ADDR", "10.96.0.17"),
    ("ROOMCAST_PORT_8080_TCP_PORT", "8080"),
    ("ROOMCAST_PORT_8080_TCP_PROTO", "tcp"),
];

#[test]
fn kubernetes_service_variables_are_ignored_with_a_warning() {
    let mut vars = env(&KUBERNETES);
    vars.extend(env(&[("ROOMCAST_LIMITS__CONNECTIONS_MAX", "7")]));
    let (config, warnings) = ServerConfig::load_reporting(None, vars).unwrap();
    assert_eq!(config.limits.connections_max, 7);
    assert_eq!(config.listen, ServerConfig::default().listen);
    assert_eq!(warnings.len(), KUBERNETES.len(), "{warnings:?}");
    for (name, _) in KUBERNETES {
        assert!(
            warnings.iter().any(|w| w.contains(&format!("{name}:"))),
            "no warning names {name}: {warnings:?}"
        );
    }
}

#[test]
fn typos_still_stop_startup() {
    for (typo, hint) in [
        ("ROOMCAST_LISTN", "ROOMCAST_LISTEN"),
        ("ROOMCAST_SERVERNAME", "ROOMCAST_SERVER_NAME"),
        ("ROOMCAST_SHUTDOWN_DRAIN", "ROOMCAST_SHUTDOWN_DRAIN_MS"),
        (
            "ROOMCAST_LIMIT__CONNECTIONS_MAX",
            "ROOMCAST_LIMITS__CONNECTIONS_MAX",
        ),
        (
            "ROOMCAST_LIMITS_CONNECTIONS_MAX",
            "ROOMCAST_LIMITS__CONNECTIONS_MAX",
        ),
        (
            "ROOMCAST_LIMITS__CONECTIONS_MAX",
            "ROOMCAST_LIMITS__CONNECTIONS_MAX",
        ),
        ("ROOMCAST_AUTH__JWT_SECRT", "ROOMCAST_AUTH__JWT_SECRET"),
        ("ROOMCAST_JWT_SECRT", "ROOMCAST_JWT_SECRET"),
        ("ROOMCAST_LIMTS__NOPE", "ROOMCAST_LIMITS__"),
    ] {
        let error = ServerConfig::load(None, env(&[(typo, "1")])).expect_err(typo);
        assert!(
            error.contains(typo) && error.contains(hint),
            "{typo}: {error}"
        );
    }
    // Unknown keys inside known tables, even far from any key.
    for unknown in [
        "ROOMCAST_LIMITS__NOPE",
        "ROOMCAST_ROOMS__",
        "ROOMCAST_AUTH__A__B",
    ] {
        let error = ServerConfig::load(None, env(&[(unknown, "1")])).expect_err(unknown);
        assert!(error.contains(unknown), "{error}");
    }
}

#[test]
fn the_key_lists_match_the_configuration_structs() {
    // serde names every expected field when it meets an unknown one.
    fn fields_of<T: serde::de::DeserializeOwned>() -> Vec<String> {
        let probe: toml::Table = "zz_probe = 0".parse().unwrap();
        let error = toml::Value::Table(probe).try_into::<T>().err().unwrap();
        let message = error.message().to_owned();
        let expected = message.split("expected ").nth(1).unwrap_or_default();
        // "`a`, `b`" or "`a` or `b`": the quoted names.
        let mut fields: Vec<String> = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        fields.sort();
        fields
    }
    fn sorted(keys: &[&str]) -> Vec<String> {
        let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        keys.sort();
        keys
    }
    let mut top: Vec<&str> = TOP_LEVEL_KEYS.to_vec();
    top.extend(TABLES.iter().map(|(t, _)| *t));
    assert_eq!(fields_of::<ServerConfig>(), sorted(&top));
    assert_eq!(fields_of::<AuthConfig>(), sorted(TABLES[0].1));
    assert_eq!(fields_of::<Limits>(), sorted(TABLES[1].1));
    assert_eq!(fields_of::<AccessRules>(), sorted(TABLES[2].1));
    assert_eq!(fields_of::<RoomOptions>(), sorted(TABLES[3].1));
    assert_eq!(fields_of::<EngineConfig>(), sorted(TABLES[4].1));
    assert_eq!(fields_of::<HooksConfig>(), sorted(TABLES[5].1));
}

#[test]
fn unknown_keys_and_bad_values_are_errors() {
    assert!(ServerConfig::load(None, env(&[("ROOMCAST_LIMITS__NOPE", "1")])).is_err());
    assert!(ServerConfig::load(None, env(&[("ROOMCAST_LISTEN", "not an address")])).is_err());
    assert!(ServerConfig::load(None, env(&[("ROOMCAST_CUSTOM_TYPES", "[Bad-Type]")])).is_err());
}

#[test]
fn the_outbound_queue_is_capped_at_one_gibibyte() {
    let at_cap = env(&[
        ("ROOMCAST_LIMITS__OUTBOUND_QUEUE_BYTES_MAX", "1073741824"),
        ("ROOMCAST_LIMITS__OUTBOUND_BYTES_MAX", "1073741824"),
    ]);
    assert!(ServerConfig::load(None, at_cap).is_ok());
    // The node-wide budget holds at least one connection's backlog.
    let under = env(&[("ROOMCAST_LIMITS__OUTBOUND_QUEUE_BYTES_MAX", "1073741824")]);
    let error = ServerConfig::load(None, under).unwrap_err();
    assert!(error.contains("outbound_bytes_max"), "{error}");
    let over = env(&[("ROOMCAST_LIMITS__OUTBOUND_QUEUE_BYTES_MAX", "1073741825")]);
    let error = ServerConfig::load(None, over).unwrap_err();
    assert!(error.contains("at most 1 GiB"), "{error}");
}

#[test]
fn the_example_file_is_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/roomcast.example.toml");
    let from_file = ServerConfig::load(Some(&path), Vec::new()).unwrap();
    let defaults = ServerConfig::default();
    assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"));
}
