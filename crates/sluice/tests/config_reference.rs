//! Keeps docs/configuration.md true. Each table row there names a field path of a kind and a
//! status:
//! - `supported` / `partial`: the field is set in testdata/reference/supported.yaml, which
//!   loads, validates, analyzes and compiles (egress gateway and a sidecar) with no error, no
//!   unknown field and no "not supported" finding (SLC0006);
//! - `not yet` / `ignored`: the field is set in testdata/reference/not-yet.yaml, and loading,
//!   validating, analyzing or compiling it reports the row's finding code at that field.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sluice_compile::lower::{CompileOptions, compile};
use sluice_model::{Diagnostic, Level};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// One row of the reference.
#[derive(Debug)]
struct Row {
    kind: String,
    path: String,
    status: String,
    code: String,
    line: usize,
}

/// The rows of every table in docs/configuration.md under a `## Kind …` heading whose first
/// column is a field path in backticks.
fn rows() -> Vec<Row> {
    let text = std::fs::read_to_string(repo("docs/configuration.md")).expect("the reference");
    let mut kind = String::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(h) = line.strip_prefix("## ") {
            kind = h.split_whitespace().next().unwrap_or_default().to_owned();
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| `path` | status | code | what |" → ["", "`path`", status, code, what, ""]
        if cells.len() < 5 || !cells[1].starts_with('`') {
            continue;
        }
        out.push(Row {
            kind: kind.clone(),
            path: cells[1].trim_matches('`').to_owned(),
            status: cells[2].to_owned(),
            code: cells[3].trim_matches('`').to_owned(),
            line: i + 1,
        });
    }
    assert!(
        out.len() > 50,
        "the reference has its tables: {}",
        out.len()
    );
    out
}

/// Splits `spec.http[].route[].destination` into keys; `[]` (any element) is its own segment.
fn segments(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, arrays) = match part.find("[]") {
            Some(at) => (&part[..at], part[at..].matches("[]").count()),
            None => (part, 0),
        };
        if !key.is_empty() {
            out.push(key.to_owned());
        }
        out.extend(std::iter::repeat_n("[]".to_owned(), arrays));
    }
    out
}

/// Whether `path` is set somewhere in `v` (`[]`: in any element).
fn has_path(v: &Value, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return true;
    };
    match (first.as_str(), v) {
        ("[]", Value::Array(items)) => items.iter().any(|i| has_path(i, rest)),
        (key, Value::Object(map)) => map.get(key).is_some_and(|c| has_path(c, rest)),
        _ => false,
    }
}

/// The documents of `file`, with the rate-limit service's config (a ConfigMap's `config.yaml`)
/// as a document of kind `RateLimitConfig`.
fn documents(file: &str) -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(repo(file)).expect("fixture");
    let mut out = Vec::new();
    for doc in sluice_model::parse_yaml(&text).expect("fixture parses") {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        if kind == "ConfigMap"
            && let Some(config) = doc["data"]["config.yaml"].as_str()
        {
            for inner in sluice_model::parse_yaml(config).expect("config.yaml parses") {
                out.push(("RateLimitConfig".to_owned(), inner));
            }
        }
        out.push((kind, doc));
    }
    out
}

/// Every finding about `file`: loading, validation and analysis (`sluice analyze`), and the
/// compiler's for the egress gateway and for a sidecar in `default`.
fn findings(file: &str) -> Vec<Diagnostic> {
    let loaded = sluice_model::load_paths(&[repo(file)]);
    let mut diags = loaded.diagnostics.clone();
    diags.extend(sluice_compile::check(&loaded.resources));
    for options in [
        CompileOptions::gateway(),
        CompileOptions::sidecar("default"),
    ] {
        diags.extend(compile(&loaded.resources, &options).1);
    }
    diags
}

/// `spec.http[2].route[0]` → `spec.http[].route[]`.
fn generic(path: &str) -> String {
    let mut out = String::new();
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[]");
            }
            ']' => in_index = false,
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

fn kind_of(d: &Diagnostic) -> &str {
    d.origin
        .as_deref()
        .and_then(|o| o.split_whitespace().next())
        .unwrap_or_default()
}

fn show(diags: &[&Diagnostic]) -> String {
    diags
        .iter()
        .map(|d| {
            format!(
                "{} {:?} {} {:?}: {}",
                d.code,
                d.level,
                d.origin.as_deref().unwrap_or("-"),
                d.path,
                d.message
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const STATUSES: [&str; 4] = ["supported", "partial", "not yet", "ignored"];

#[test]
fn every_row_has_a_known_status_and_a_code_when_not_supported() {
    for r in rows() {
        assert!(
            STATUSES.contains(&r.status.as_str()),
            "docs/configuration.md:{}: status {:?} is not one of {STATUSES:?}",
            r.line,
            r.status
        );
        let needs_code = r.status == "not yet" || r.status == "ignored";
        assert_eq!(
            needs_code,
            !r.code.is_empty() && r.code != "—",
            "docs/configuration.md:{}: a finding code exactly when the field is not acted on",
            r.line
        );
    }
}

#[test]
fn supported_fields_are_parsed_and_acted_on_without_a_finding() {
    let docs = documents("testdata/reference/supported.yaml");
    let mut missing = Vec::new();
    for r in rows()
        .into_iter()
        .filter(|r| r.status == "supported" || r.status == "partial")
    {
        let path = segments(&r.path);
        if !docs
            .iter()
            .any(|(kind, doc)| *kind == r.kind && has_path(doc, &path))
        {
            missing.push(format!(
                "docs/configuration.md:{} {} {}",
                r.line, r.kind, r.path
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "set these in testdata/reference/supported.yaml:\n{}",
        missing.join("\n")
    );

    let diags = findings("testdata/reference/supported.yaml");
    let bad: Vec<&Diagnostic> = diags
        .iter()
        .filter(|d| {
            d.level == Level::Error
                || d.code == "SLC0006"
                || d.message.contains("unknown field")
                || d.message.contains("not supported")
        })
        .collect();
    assert!(bad.is_empty(), "{}", show(&bad));
}

#[test]
fn not_yet_fields_are_reported_where_the_reference_says() {
    let docs = documents("testdata/reference/not-yet.yaml");
    let diags = findings("testdata/reference/not-yet.yaml");
    let mut wrong = Vec::new();
    for r in rows()
        .into_iter()
        .filter(|r| r.status == "not yet" || r.status == "ignored")
    {
        let path = segments(&r.path);
        // A row about the whole resource (`spec`) needs only a document of its kind.
        if !docs
            .iter()
            .any(|(kind, doc)| *kind == r.kind && has_path(doc, &path))
        {
            wrong.push(format!(
                "docs/configuration.md:{}: {} {} is not set in testdata/reference/not-yet.yaml",
                r.line, r.kind, r.path
            ));
            continue;
        }
        let found = diags.iter().any(|d| {
            d.code == r.code
                && kind_of(d) == r.kind
                && d.path.as_deref().is_some_and(|p| {
                    let p = generic(p);
                    // at the field, inside it, or at the list element that holds it
                    p == r.path
                        || p.starts_with(&format!("{}.", r.path))
                        || p.starts_with(&format!("{}[", r.path))
                        || (p.ends_with("[]") && r.path.starts_with(&format!("{p}.")))
                })
        });
        if !found {
            wrong.push(format!(
                "docs/configuration.md:{}: no {} finding at {} {}",
                r.line, r.code, r.kind, r.path
            ));
        }
    }
    let all: Vec<&Diagnostic> = diags.iter().collect();
    assert!(
        wrong.is_empty(),
        "{}\n--- findings ---\n{}",
        wrong.join("\n"),
        show(&all)
    );
}
