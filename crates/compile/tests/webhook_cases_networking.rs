//! Acceptance: Istio's own webhook-validation cases for the networking kinds
//! (`testdata/acceptance/validation/`), Istio's CRD fixtures, the curated `cases.md` entries,
//! and the guide's YAML. Every case must get Istio's verdict; the few that cannot are listed in
//! `KNOWN_DIFFERENCES` with the reason, and must keep failing in exactly that way.

mod common;

use common::*;
use serde_json::Value;
use sluice_compile::validate::validate;
use sluice_model::{Level, load_str, parse_yaml};

const WEBHOOK_FILES: [&str; 6] = [
    "serviceentry-serviceentries",
    "gateway-gateway",
    "gateway-server",
    "virtualservice-virtualservice",
    "destinationrule-destinationrule",
    "sidecar-sidecar",
];

/// Cases sluice cannot decide as Istio does, with the reason and the way they fail. Keyed by
/// file and `metadata.name` (case names repeat within a file).
const KNOWN_DIFFERENCES: &[(&str, &str, Miss, &str)] = &[
    (
        "gateway-gateway",
        "invalid-domain",
        Miss::WrongError,
        "the server's port has no name; sluice's model requires `port.name` at load, so the \
         resource is rejected for that (as Istio also does, \"port name must be set\") before the \
         host `foo.*.bar.com` is looked at",
    ),
    (
        "gateway-server",
        "empty",
        Miss::WrongError,
        "`servers: [{}]`: sluice's model requires `port` at load, so the rejection names the \
         missing port (Istio: \"port is required\") and not the missing hosts",
    ),
    (
        "serviceentry-serviceentries",
        "unix-socket",
        Miss::Rejected,
        "a `unix://` endpoint: Istio's sidecar can reach a local socket, sluice's data plane \
         dials network addresses only, so validation refuses it instead of every request \
         failing at run time",
    ),
];

#[test]
fn istio_webhook_cases_for_networking_kinds() {
    let cases = load_cases(&WEBHOOK_FILES, |_| {});
    assert!(cases.len() >= 200, "only {} cases read", cases.len());
    run_cases("networking", &cases, KNOWN_DIFFERENCES);
}

/// CRD fixture documents sluice cannot read as the API server does, with the reason; each must
/// still get the opposite verdict (so the entry goes once the cause is fixed).
const CRD_KNOWN_DIFFERENCES: &[(&str, usize, &str)] = &[
    (
        "serviceentry-valid.yaml",
        0,
        "`addresses: [1.2.3.4, 001:db8::]`: in a flow sequence a `:` before `]` ends an implicit \
         key, so YAML 1.2 (and PyYAML, and sluice's reader) read `001:db8::` as a one-entry \
         mapping; Go's yaml.v2 reads a string. The address itself is valid for sluice too",
    ),
    (
        "destinationrule-valid.yaml",
        3,
        "sluice's model of `connectionPool.http` lacks `http2KeepAlive` (interval/timeout), so the \
     load rejects it as an unknown field",
    ),
];

/// Istio's CRD fixtures: every `*-invalid.yaml` document must be rejected, every
/// `*-valid.yaml` one accepted (Istio's TestCRDs asserts the webhook agrees with the API server).
#[test]
fn istio_crd_fixtures_for_networking_kinds() {
    let mut failures = Vec::new();
    let mut count = 0;
    let mut known_seen = 0;
    for kind in ["serviceentry", "destinationrule"] {
        for valid in [true, false] {
            let file = format!("{kind}-{}.yaml", if valid { "valid" } else { "invalid" });
            let text = read(&format!("acceptance/validation/crd-testdata/{file}"));
            let docs = parse_yaml(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            for (i, mut doc) in docs.into_iter().enumerate() {
                let expected = doc
                    .as_object_mut()
                    .and_then(|m| m.remove("_err"))
                    .and_then(|e| e.as_str().map(str::to_owned));
                count += 1;
                let name = doc
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let v = judge_value(&file, doc);
                let known = CRD_KNOWN_DIFFERENCES
                    .iter()
                    .any(|(f, n, _)| *f == file && *n == i);
                if known {
                    known_seen += 1;
                    if valid == v.errors.is_empty() {
                        failures.push(format!(
                            "{file}[{i}] {name}: listed as a known difference but agrees now"
                        ));
                    }
                    continue;
                }
                if valid && !v.errors.is_empty() {
                    failures.push(format!("{file}[{i}] {name}: rejected: {:?}", v.errors));
                }
                if !valid && v.errors.is_empty() {
                    failures.push(format!(
                        "{file}[{i}] {name}: accepted (API server says {expected:?})"
                    ));
                }
            }
        }
    }
    println!(
        "CRD fixtures: {}/{count} agree ({known_seen} known differences)",
        count - failures.len() - known_seen
    );
    for (file, i, why) in CRD_KNOWN_DIFFERENCES {
        println!("  known: {file}[{i}]: {why}");
    }
    for f in &failures {
        println!("  {f}");
    }
    assert!(count >= 20, "only {count} fixture documents read");
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        known_seen,
        CRD_KNOWN_DIFFERENCES.len(),
        "a known difference was not found"
    );
}

/// Curated entries of `cases.md` (V01…) whose error text sluice words differently from Istio,
/// with the reason. Each must still be rejected.
const CASES_MD_TEXT_DIFFERENCES: &[(&str, &str)] = &[
    (
        "V17",
        "`route: [{}]`: sluice's model requires `destination` at load; the load error says \
         \"missing field `destination`\" instead of \"destination is required\"",
    ),
    (
        "V18",
        "`destination: {}`: sluice's model requires `destination.host` at load; the load error \
         says \"missing field `host`\" instead of \"empty domain name not allowed\"",
    ),
    (
        "V36",
        "the server's port has no name; sluice's model requires `port.name` at load, so the host \
         `foo.*.bar.com` is never looked at",
    ),
];

/// `cases.md` draws its networking entries from the webhook cases: each must name a case that
/// exists there as invalid, be rejected by sluice, and every error text it quotes must appear in
/// one of sluice's messages.
#[test]
fn curated_networking_cases_are_covered_with_istio_texts() {
    let cases = load_cases(&WEBHOOK_FILES, |_| {});
    let kinds = [
        "ServiceEntry",
        "VirtualService",
        "DestinationRule",
        "Gateway",
        "Sidecar",
    ];
    let mut failures = Vec::new();
    let entries = cases_md_entries(&kinds);
    let covered = entries.len();
    for e in &entries {
        let (id, case_name, file) = (&e.id, &e.case_name, &e.file);
        // The webhook case it was drawn from.
        let source = cases
            .iter()
            .find(|c| c.file == file && &c.name == case_name && !c.valid);
        if source.is_none() {
            failures.push(format!("{id}: no invalid case {case_name:?} in {file:?}"));
        }
        let v = judge_yaml(&format!("cases.md#{id}"), &e.yaml);
        if v.errors.is_empty() {
            failures.push(format!("{id} {case_name}: accepted"));
            continue;
        }
        let missing: Vec<&str> = e
            .quoted
            .iter()
            .map(String::as_str)
            .filter(|want| !v.errors.iter().any(|err| err.contains(want)))
            .collect();
        let known = CASES_MD_TEXT_DIFFERENCES.iter().any(|(k, _)| k == id);
        match (known, missing.is_empty()) {
            (false, false) => failures.push(format!(
                "{id} {case_name}: no error contains {missing:?}: {:?}",
                v.errors
            )),
            (true, true) => failures.push(format!(
                "{id} {case_name}: listed as a text difference but all texts are found now"
            )),
            _ => {}
        }
    }
    println!("cases.md networking entries: {covered}");
    for f in &failures {
        println!("  {f}");
    }
    assert_eq!(
        covered, 47,
        "ServiceEntry 15, VirtualService 12, DestinationRule 5, Gateway 9, Sidecar 6"
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The guide's YAML must pass validation; its warnings are printed for review.
#[test]
fn guide_networking_files_validate_cleanly() {
    let dir = testdata("guide");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    let networking = [
        "ServiceEntry",
        "Gateway",
        "VirtualService",
        "DestinationRule",
        "Sidecar",
        "WorkloadEntry",
    ];
    let mut checked = 0;
    let mut errors = Vec::new();
    for path in entries {
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let loaded = load_str(&name, &text);
        let r = &loaded.resources;
        let has_networking = !(r.service_entries.is_empty()
            && r.gateways.is_empty()
            && r.virtual_services.is_empty()
            && r.destination_rules.is_empty()
            && r.sidecars.is_empty()
            && r.workload_entries.is_empty());
        if !has_networking {
            continue;
        }
        checked += 1;
        let mut diags = loaded.diagnostics.clone();
        diags.extend(validate(r));
        for d in diags {
            let networking_origin = d
                .origin
                .as_deref()
                .is_some_and(|o| networking.iter().any(|k| o.starts_with(&format!("{k} "))));
            let line = format!(
                "{name}:{} [{}] {} {}",
                d.location.as_ref().map_or(0, |l| l.line),
                d.code,
                d.origin.as_deref().unwrap_or("-"),
                d.message
            );
            match d.level {
                Level::Error if networking_origin || d.origin.is_none() => errors.push(line),
                Level::Warning if networking_origin => println!("warning: {line}"),
                _ => {}
            }
        }
    }
    println!("guide files with networking kinds: {checked}");
    assert!(
        checked >= 10,
        "only {checked} guide files hold networking kinds"
    );
    assert!(errors.is_empty(), "{errors:#?}");
}
