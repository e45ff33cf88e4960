//! Acceptance: Istio's own webhook-validation cases for the policy kinds (AuthorizationPolicy,
//! Telemetry), Istio's CRD fixtures for AuthorizationPolicy, Telemetry and EnvoyFilter, the
//! curated `cases.md` entries of those kinds, Istio's analyzer fixtures (which must load), and
//! the guide's YAML. Every case must get Istio's verdict; the few that cannot are listed in
//! `KNOWN_DIFFERENCES` with the reason, and must keep failing in exactly that way.

mod common;

use common::*;
use serde_json::Value;
use sluice_compile::validate::validate;
use sluice_model::{load_str, parse_yaml};

const WEBHOOK_FILES: [&str; 2] = [
    "authorizationpolicy-authorizationpolicy",
    "telemetry-telemetry",
];

/// Cases sluice cannot decide as Istio does, with the reason and the way they fail. Keyed by
/// file and `metadata.name`.
const KNOWN_DIFFERENCES: &[(&str, &str, Miss, &str)] = &[
    (
        "authorizationpolicy-authorizationpolicy",
        "from-empty",
        Miss::Accepted,
        "`from: []` is rejected by Istio but an absent `from` is not; the model reads both as \
         an empty list (Rule.from is a Vec, not an Option<Vec>)",
    ),
    (
        "authorizationpolicy-authorizationpolicy",
        "to-empty",
        Miss::Accepted,
        "`to: []` is rejected by Istio but an absent `to` is not; the model reads both as an \
         empty list (Rule.to is a Vec, not an Option<Vec>)",
    ),
    (
        "telemetry-telemetry",
        "bad-targetref-empty-name",
        Miss::WrongError,
        "PolicyTargetReference.name is a required field of the model, so a targetRef without a \
         name is rejected when loading (\"missing field `name`\") instead of by Istio's \
         \"targetRef name must be set\"",
    ),
    (
        "telemetry-telemetry",
        "tracing-with-a-nil-custom-tag",
        Miss::WrongError,
        "`customTags: {clusterID: null}` is rejected when loading (a null is not a CustomTag), \
         with the schema error's words instead of Istio's \"tag 'clusterID' may not have a nil \
         value\"",
    ),
];

/// The case tables were converted from Go literals; a few enum values kept their Go constant
/// names (`TagOverride_UPSERT`), which no YAML file can carry. They are put back to the YAML
/// names Istio's CRD uses (`UPSERT`) before loading.
fn undo_go_constant_names(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("TagOverride_") {
                *s = name.to_owned();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(undo_go_constant_names),
        Value::Object(map) => map.values_mut().for_each(undo_go_constant_names),
        _ => {}
    }
}

#[test]
fn istio_webhook_cases_for_policy_kinds() {
    let cases = load_cases(&WEBHOOK_FILES, undo_go_constant_names);
    assert_eq!(
        cases.len(),
        83,
        "AuthorizationPolicy 67 + Telemetry 16 cases"
    );
    run_cases("policy kinds", &cases, KNOWN_DIFFERENCES);
}

/// CRD fixture documents sluice cannot decide as Istio does: (file, metadata.name, reason).
const CRD_KNOWN_DIFFERENCES: &[(&str, &str, &str)] = &[
    (
        "authz-valid.yaml",
        "full",
        "uses Source.trustDomains / notTrustDomains, which the model's AuthorizationPolicy does \
         not have yet (rejected as unknown fields when loading)",
    ),
    (
        "envoyfilter-valid.yaml",
        "merge-and-replace-list",
        "uses the MERGE_AND_REPLACE_LIST patch operation, which the model's PatchOperation does \
         not have yet (rejected as an unknown variant when loading)",
    ),
];

/// Istio's CRD fixtures: every `*-invalid.yaml` document must be rejected, every
/// `*-valid.yaml` one accepted (Istio's TestCRDs asserts the webhook agrees with the API server).
#[test]
fn istio_crd_fixtures_for_policy_kinds() {
    let mut failures = Vec::new();
    let mut count = 0;
    let mut known_seen = 0;
    for kind in ["authz", "telemetry", "envoyfilter"] {
        for valid in [true, false] {
            let file = format!("{kind}-{}.yaml", if valid { "valid" } else { "invalid" });
            let text = read(&format!("acceptance/validation/crd-testdata/{file}"));
            let docs = parse_yaml(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            for (i, mut doc) in docs.into_iter().enumerate() {
                if doc.is_null() {
                    continue;
                }
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
                let agrees = if valid {
                    v.errors.is_empty()
                } else {
                    !v.errors.is_empty()
                };
                let known = CRD_KNOWN_DIFFERENCES
                    .iter()
                    .any(|(f, n, _)| *f == file && *n == name);
                match (agrees, known) {
                    (true, false) => {}
                    (false, true) => known_seen += 1,
                    (true, true) => failures.push(format!(
                        "{file}[{i}] {name}: listed as a known difference but now agrees with \
                         Istio: remove it from CRD_KNOWN_DIFFERENCES"
                    )),
                    (false, false) if valid => {
                        failures.push(format!("{file}[{i}] {name}: rejected: {:?}", v.errors));
                    }
                    (false, false) => failures.push(format!(
                        "{file}[{i}] {name}: accepted (API server says {expected:?})"
                    )),
                }
            }
        }
    }
    println!(
        "CRD fixtures (policy kinds): {}/{count} agree, {known_seen} known differences",
        count - failures.len() - known_seen
    );
    for (file, name, why) in CRD_KNOWN_DIFFERENCES {
        println!("  known: {file} {name}: {why}");
    }
    for f in &failures {
        println!("  {f}");
    }
    assert!(count >= 15, "only {count} fixture documents read");
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        known_seen,
        CRD_KNOWN_DIFFERENCES.len(),
        "a known difference was not seen"
    );
}

/// `cases.md` entries of the policy kinds: each names a webhook case that exists there as
/// invalid, is rejected by sluice, and every error text it quotes appears in one of sluice's
/// messages.
#[test]
fn curated_policy_cases_are_covered_with_istio_texts() {
    let cases = load_cases(&WEBHOOK_FILES, undo_go_constant_names);
    let kinds = ["AuthorizationPolicy", "Telemetry"];
    let mut failures = Vec::new();
    let entries = cases_md_entries(&kinds);
    let covered = entries.len();
    for e in &entries {
        let (id, case_name, file) = (&e.id, &e.case_name, &e.file);
        let source = cases
            .iter()
            .find(|c| c.file == file && &c.name == case_name && !c.valid);
        let Some(source) = source else {
            failures.push(format!("{id}: no invalid case {case_name:?} in {file:?}"));
            continue;
        };
        if KNOWN_DIFFERENCES
            .iter()
            .any(|(f, n, _, _)| *f == source.file && *n == source.id)
        {
            continue;
        }
        let yaml = e.yaml.replace(": TagOverride_", ": ");
        let v = judge_yaml(&format!("cases.md#{id}"), &yaml);
        if v.errors.is_empty() {
            failures.push(format!("{id} {case_name}: accepted"));
            continue;
        }
        for want in &e.quoted {
            if !v.errors.iter().any(|err| err.contains(want.as_str())) {
                failures.push(format!(
                    "{id} {case_name}: no error contains {want:?}: {:?}",
                    v.errors
                ));
            }
        }
    }
    println!("cases.md policy entries: {covered}");
    for f in &failures {
        println!("  {f}");
    }
    assert_eq!(covered, 12, "AuthorizationPolicy 10, Telemetry 2");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Analyzer fixtures that do not load cleanly, with the reason; each must still fail to.
const ANALYZER_KNOWN_DIFFERENCES: &[(&str, &str)] = &[(
    "envoy-filter-add-operation.yaml",
    "two of its EnvoyFilters carry a stray `match.app` field, which Kubernetes prunes and \
     istioctl ignores; the model rejects unknown fields (EnvoyConfigObjectMatch is \
     deny_unknown_fields)",
)];

/// Istio's analyzer fixtures for these kinds are valid Istio configuration: they must load
/// without a load error (what analysis then says of them is another test's business).
#[test]
fn analyzer_fixtures_of_policy_kinds_load() {
    let dir = testdata("acceptance/analyzer");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| {
            n.starts_with("envoy-filter-")
                || n.starts_with("telemetry-")
                || n == "absolute-envoy-filter-operation.yaml"
                || n == "relative-envoy-filter-operation.yaml"
                || n == "authorizationpolicies.yaml"
        })
        .collect();
    names.sort();
    let mut failures = Vec::new();
    for name in &names {
        let text = read(&format!("acceptance/analyzer/{name}"));
        let loaded = load_str(name, &text);
        let r = &loaded.resources;
        let policy_kinds = r.envoy_filters.len()
            + r.telemetries.len()
            + r.authorization_policies.len()
            + r.mesh_configs.len();
        let errors: Vec<String> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect();
        println!(
            "{name}: {policy_kinds} policy resources, {} load errors",
            errors.len()
        );
        let known = ANALYZER_KNOWN_DIFFERENCES.iter().any(|(f, _)| f == name);
        match (errors.is_empty() && policy_kinds > 0, known) {
            (true, false) | (false, true) => {}
            (true, true) => failures.push(format!(
                "{name}: loads cleanly now: remove it from ANALYZER_KNOWN_DIFFERENCES"
            )),
            (false, false) => {
                failures.push(format!("{name}: {policy_kinds} resources; {errors:#?}"));
            }
        }
        // Validation must not panic on them either.
        let _ = validate(r);
    }
    for (file, why) in ANALYZER_KNOWN_DIFFERENCES {
        println!("  known: {file}: {why}");
    }
    assert!(
        names.len() >= 13,
        "only {} analyzer fixtures found",
        names.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The guide files of these kinds validate with no error; every warning and info about them is
/// printed for review.
#[test]
fn guide_policy_files_validate_cleanly() {
    let files = [
        "authz-egress-policy.yaml",
        "production-egress-setup.yaml",
        "telemetry-egress.yaml",
        "envoyfilter-egress-ratelimit.yaml",
        "mesh-config.yaml",
        "istio-operator-egress.yaml",
        "egress-gateway-certs.yaml",
    ];
    let kinds = [
        "AuthorizationPolicy",
        "PeerAuthentication",
        "Telemetry",
        "EnvoyFilter",
        "IstioOperator",
        "MeshConfig",
    ];
    let mut errors = Vec::new();
    let mut findings = 0;
    for name in files {
        let text = read(&format!("guide/{name}"));
        let loaded = load_str(name, &text);
        assert!(
            !loaded.resources.is_empty(),
            "{name}: nothing loaded: {:?}",
            loaded.diagnostics
        );
        let mut diags = loaded.diagnostics.clone();
        diags.extend(validate(&loaded.resources));
        for d in diags {
            let ours = d
                .origin
                .as_deref()
                .is_none_or(|o| kinds.iter().any(|k| o.starts_with(&format!("{k} "))));
            if !ours {
                continue;
            }
            let line = format!("{name}: {d}");
            if d.is_error() {
                errors.push(line);
            } else {
                findings += 1;
                println!("{line}");
            }
        }
    }
    println!("{findings} warnings/infos on the guide's policy, telemetry, filter and mesh files");
    assert!(errors.is_empty(), "{errors:#?}");
}
