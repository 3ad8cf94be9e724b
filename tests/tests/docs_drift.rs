//! The docs stay true where they list what the code has: every flag of
//! `roomcast serve`, every limit, every HTTP route. Each check reads the
//! code's own list (the binary's `--help`, the limits table's field names
//! as serde reports them, the router's match arms) and the document's
//! table, and fails naming what one has and the other lacks.

use std::collections::BTreeSet;
use std::path::PathBuf;

use roomcast_tests::binary;

fn repo_file(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines of `text` from the heading line starting with `heading` up to
/// the next heading of the same or a higher level.
fn section<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut lines = text.lines().skip_while(|l| !l.starts_with(heading));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no heading {heading}"));
    let mut out = vec![first];
    for line in lines {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if hashes > 0 && hashes <= level && line[hashes..].starts_with(' ') {
            break;
        }
        out.push(line);
    }
    out
}

/// The first cell of each table row, without its backticks.
fn first_cells<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect()
}

fn report(what: &str, code: &BTreeSet<String>, docs: &BTreeSet<String>) {
    let missing: Vec<_> = code.difference(docs).collect();
    let stale: Vec<_> = docs.difference(code).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "{what}: in the code but not documented {missing:?}; documented but not in the code {stale:?}"
    );
}

#[test]
fn the_serve_flag_table_lists_every_flag() {
    let help = std::process::Command::new(binary::path())
        .args(["serve", "--help"])
        .output()
        .expect("roomcast serve --help");
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).expect("utf-8");
    let code: BTreeSet<String> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .filter_map(|l| l.split([' ', '<', ',']).next())
        .filter(|flag| *flag != "help")
        .map(|flag| format!("--{flag}"))
        .collect();
    assert!(code.contains("--listen"), "parsed no flags from {help}");
    let operations = repo_file("docs/operations.md");
    let table = section(&operations, "## 1. `roomcast serve`");
    let docs: BTreeSet<String> = first_cells(&table)
        .into_iter()
        .filter(|cell| cell.starts_with("--"))
        .filter_map(|cell| cell.split(' ').next())
        .map(str::to_owned)
        .collect();
    report("roomcast serve flags (docs/operations.md §1)", &code, &docs);
}

/// The fields of `[limits]`, as serde lists them when it refuses an
/// unknown one (the struct denies unknown fields).
fn limit_names() -> BTreeSet<String> {
    let error = serde_json::from_str::<roomcast_core::Limits>(r#"{"-drift-probe-": 0}"#)
        .expect_err("an unknown limit is refused");
    let text = error.to_string();
    let expected = text
        .split("expected one of ")
        .nth(1)
        .unwrap_or_else(|| panic!("serde's error names no fields: {text}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_limit_is_in_the_limits_table_and_counted() {
    let code = limit_names();
    assert!(code.contains("message_bytes_max"), "{code:?}");
    let protocol = repo_file("docs/protocol.md");
    let table = section(&protocol, "## 11. Limits");
    let docs: BTreeSet<String> = first_cells(&table).into_iter().map(str::to_owned).collect();
    report("limits (docs/protocol.md §11)", &code, &docs);
    let operations = repo_file("docs/operations.md");
    let counted = format!("| `[limits]` | {} bounds |", code.len());
    assert!(
        operations.contains(&counted),
        "docs/operations.md §3 should say `{counted}`"
    );
}

#[test]
fn the_endpoint_table_lists_every_route() {
    // The router's arms: `(&Method::GET, "/path") => ...`.
    let router = repo_file("net/src/http.rs");
    let code: BTreeSet<String> = router
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("(&Method::"))
        .filter_map(|l| {
            let (method, rest) = l.split_once(", \"")?;
            let (path, _) = rest.split_once('"')?;
            Some(format!("{method} {path}"))
        })
        .collect();
    assert!(code.contains("GET /ws/connect"), "{code:?}");
    let protocol = repo_file("docs/protocol.md");
    let table = section(&protocol, "## 1. Endpoints");
    let docs: BTreeSet<String> = first_cells(&table)
        .into_iter()
        .filter(|cell| cell.starts_with("GET ") || cell.starts_with("POST "))
        .map(str::to_owned)
        .collect();
    report("HTTP routes (docs/protocol.md §1)", &code, &docs);
}
