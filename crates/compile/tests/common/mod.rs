//! Shared by the webhook-case harnesses: read Istio's case tables, judge each case with
//! sluice's loader + validation, and compare with Istio's verdict.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use sluice_compile::validate::validate;
use sluice_model::{Diagnostic, Level, load_str, load_value, parse_yaml};

pub fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(rel)
}

pub fn read(rel: &str) -> String {
    let path = testdata(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What sluice says about one resource: load diagnostics plus validation.
#[derive(Debug, Default)]
pub struct Verdict {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

pub fn judge_value(file: &str, resource: Value) -> Verdict {
    let loaded = load_value(file, resource);
    let mut diags = loaded.diagnostics;
    diags.extend(validate(&loaded.resources));
    collect(diags)
}

pub fn judge_yaml(file: &str, text: &str) -> Verdict {
    let loaded = load_str(file, text);
    let mut diags = loaded.diagnostics;
    diags.extend(validate(&loaded.resources));
    collect(diags)
}

pub fn collect(diags: Vec<Diagnostic>) -> Verdict {
    let mut v = Verdict::default();
    for d in diags {
        match d.level {
            Level::Error => v.errors.push(d.message),
            Level::Warning => v.warnings.push(d.message),
            Level::Info => {}
        }
    }
    v
}

/// How a case can disagree with Istio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// Istio rejects it; sluice accepted it.
    Accepted,
    /// Istio accepts it; sluice rejected it.
    Rejected,
    /// Both reject, but no sluice error contains the text Istio's test asserts.
    WrongError,
    /// Istio warns; sluice did not.
    NoWarning,
}

pub struct Case {
    pub file: &'static str,
    pub id: String,
    pub name: String,
    pub valid: bool,
    pub warning: bool,
    pub error_contains: Option<String>,
    pub resource: Value,
}
/// Reads the case tables `files` (under webhook-cases/), applying `fixup` to each resource.
pub fn load_cases(files: &[&'static str], fixup: fn(&mut Value)) -> Vec<Case> {
    let mut cases = Vec::new();
    for &file in files {
        let text = read(&format!("acceptance/validation/webhook-cases/{file}.yaml"));
        let docs = parse_yaml(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let list = docs
            .first()
            .and_then(|d| d.get("cases"))
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("{file}: no `cases` list"));
        for c in list {
            let mut resource = c.get("resource").cloned().unwrap_or(Value::Null);
            fixup(&mut resource);
            let id = resource
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            cases.push(Case {
                file,
                id,
                name: c
                    .get("case")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                valid: c.get("valid").and_then(Value::as_bool).unwrap_or(false),
                warning: c.get("warning").and_then(Value::as_bool).unwrap_or(false),
                error_contains: c
                    .get("error_contains")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                resource,
            });
        }
    }
    cases
}

pub fn check_case(case: &Case, v: &Verdict) -> Option<Miss> {
    if case.valid {
        if !v.errors.is_empty() {
            return Some(Miss::Rejected);
        }
    } else {
        if v.errors.is_empty() {
            return Some(Miss::Accepted);
        }
        if let Some(want) = &case.error_contains
            && !v.errors.iter().any(|e| e.contains(want.as_str()))
        {
            return Some(Miss::WrongError);
        }
    }
    if case.warning && v.warnings.is_empty() {
        return Some(Miss::NoWarning);
    }
    None
}
/// Judges every case; each must get Istio's verdict or be listed in `known` and still fail
/// in exactly the listed way (so the list cannot rot).
pub fn run_cases(title: &str, cases: &[Case], known_list: &[(&str, &str, Miss, &str)]) {
    let known: BTreeMap<(&str, &str), (Miss, &str)> = known_list
        .iter()
        .map(|(f, id, miss, why)| ((*f, *id), (*miss, *why)))
        .collect();

    let mut per_file: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut known_seen = 0;
    for case in cases {
        let v = judge_value(&format!("{}.yaml", case.file), case.resource.clone());
        let miss = check_case(case, &v);
        let tally = per_file.entry(case.file).or_default();
        tally.1 += 1;
        match (miss, known.get(&(case.file, case.id.as_str()))) {
            (None, None) => tally.0 += 1,
            (Some(got), Some((want, _))) if got == *want => known_seen += 1,
            (got, expected) => failures.push(format!(
                "{:<32} {:<60} got {:?}, listed as {:?}\n      errors: {:?}\n      warnings: {:?}",
                case.file,
                format!("{} ({})", case.name, case.id),
                got,
                expected.map(|e| e.0),
                v.errors,
                v.warnings
            )),
        }
    }

    println!("webhook cases ({title}):");
    for (file, (pass, total)) in &per_file {
        println!("  {file:<34} {pass:>3}/{total}");
    }
    let total: usize = per_file.values().map(|t| t.1).sum();
    let passed: usize = per_file.values().map(|t| t.0).sum();
    println!(
        "  {:<34} {passed:>3}/{total} ({known_seen} known differences)",
        "all"
    );
    for (file, id, miss, why) in known_list.iter() {
        println!("  known: {file} {id}: {miss:?}: {why}");
    }
    if !failures.is_empty() {
        println!("\nFAILING CASES:");
        for f in &failures {
            println!("  {f}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases disagree with Istio",
        failures.len()
    );
    assert_eq!(
        known_seen,
        known_list.len(),
        "a known difference was not found"
    );
}

/// One curated entry of `cases.md`: an invalid configuration and the texts Istio's error has.
pub struct CasesMdEntry {
    pub id: String,
    pub case_name: String,
    /// The webhook case table it was drawn from (`serviceentry-serviceentries`).
    pub file: String,
    pub yaml: String,
    /// The substrings Istio's error contains.
    pub quoted: Vec<String>,
}

/// The entries of `cases.md` about `kinds`, in order.
pub fn cases_md_entries(kinds: &[&str]) -> Vec<CasesMdEntry> {
    let text = read("acceptance/validation/cases.md");
    let mut out = Vec::new();
    for entry in text.split("\n### ").skip(1) {
        let title = entry.lines().next().unwrap_or_default();
        let Some((id, rest)) = title.split_once(". ") else {
            continue;
        };
        let Some((kind, case_name)) = rest.split_once(": ") else {
            continue;
        };
        if !kinds.contains(&kind) {
            continue;
        }
        let from = entry
            .lines()
            .find(|l| l.starts_with("- from:"))
            .unwrap_or_default();
        let file = from
            .split('`')
            .nth(1)
            .and_then(|f| f.strip_prefix("webhook-cases/"))
            .and_then(|f| f.strip_suffix(".yaml"))
            .unwrap_or_default();
        let yaml = entry
            .split("```yaml\n")
            .nth(1)
            .and_then(|y| y.split("```").next())
            .unwrap_or_default();
        let quoted = entry
            .lines()
            .find_map(|l| l.strip_prefix("- Istio error contains: "))
            .unwrap_or_default()
            .split("; ")
            .map(|q| q.trim().trim_matches('`').trim().to_owned())
            .filter(|q| !q.is_empty())
            .collect();
        out.push(CasesMdEntry {
            id: id.to_owned(),
            case_name: case_name.to_owned(),
            file: file.to_owned(),
            yaml: yaml.to_owned(),
            quoted,
        });
    }
    out
}
