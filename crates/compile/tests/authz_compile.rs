//! Compiling AuthorizationPolicies: what is reported, dry-run and AUDIT, fail-closed forms,
//! order and serialization. The evaluation table is in `authz_table.rs`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use sluice_compile::authz::{ROOT_NAMESPACE, codes, compile_policies};
use sluice_model::Diagnostic;
use sluice_snapshot::authz::{Peer, Policies, Request, Shadow};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn testdata(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn compile_for(yaml: &str, ns: &str, workload: &[(&str, &str)]) -> (Policies, Vec<Diagnostic>) {
    let loaded = sluice_model::load_str("policies.yaml", yaml);
    compile_policies(&loaded.resources, ns, &labels(workload), ROOT_NAMESPACE)
}

fn httpbin(yaml: &str) -> (Policies, Vec<Diagnostic>) {
    compile_for(yaml, "foo", &[("app", "httpbin"), ("version", "v1")])
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn get(path: &str) -> Request {
    Request::new(ip("10.0.0.1"), 80)
        .with_http("GET", path)
        .with_host("httpbin")
}

#[test]
fn request_principals_are_reported_where_they_are_written() {
    // A1's policy: rules 2 and 3 name requestPrincipals, which sluice cannot judge.
    let (policies, diags) = compile_for(
        &testdata("acceptance/authz/egress-gateway/rendered-ns1.yaml"),
        ROOT_NAMESPACE,
        &[("app", "istio-egressgateway")],
    );
    assert_eq!(policies.allow.len(), 1);
    let jwt: Vec<&Diagnostic> = diags
        .iter()
        .filter(|d| d.code == codes::NOT_SUPPORTED)
        .collect();
    let paths: Vec<&str> = jwt.iter().filter_map(|d| d.path.as_deref()).collect();
    assert_eq!(
        paths,
        [
            "spec.rules[2].from[0].source.requestPrincipals",
            "spec.rules[3].from[0].source.requestPrincipals"
        ]
    );
    let d = jwt[0];
    assert_eq!(
        d.origin.as_deref(),
        Some("AuthorizationPolicy istio-system/egressgateway")
    );
    assert!(d.message.contains("never matches"), "{}", d.message);
    // Placed at the field, in the file the policy came from.
    let at = d.location.as_ref().expect("location");
    assert_eq!((&*at.file, at.line), ("policies.yaml", 43));
}

#[test]
fn custom_is_reported_and_fails_closed() {
    let (policies, diags) = httpbin(&testdata(
        "acceptance/authz/builder-rbac/http/custom-bad-multiple-providers-in.yaml",
    ));
    assert_eq!(policies.custom.len(), 2);
    assert!(policies.allow.is_empty() && policies.deny.is_empty());
    let reported: Vec<_> = diags
        .iter()
        .filter(|d| d.code == codes::NOT_SUPPORTED && d.path.as_deref() == Some("spec.action"))
        .collect();
    assert_eq!(reported.len(), 2, "{diags:#?}");
    assert!(reported[0].message.contains("\"default\""));
    let d = policies.evaluate(&get("/httpbin1"));
    assert!(!d.allowed);
    assert_eq!(d.http_status(), Some(403));
}

#[test]
fn target_refs_are_reported_and_apply_to_nothing() {
    let (policies, diags) = compile_for(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-ref, namespace: istio-system}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: egress}]
  action: DENY
  rules: [{}]
",
        ROOT_NAMESPACE,
        &[("istio", "egressgateway")],
    );
    assert!(policies.is_empty());
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].code, codes::NOT_SUPPORTED);
    assert_eq!(diags[0].path.as_deref(), Some("spec.targetRefs"));
}

#[test]
fn rules_that_cannot_be_compiled_fail_closed_and_say_where() {
    let (policies, diags) = compile_for(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-bad, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {ports: [\"443\"]}}]
  - to: [{operation: {ports: [\"https\"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-bad, namespace: istio-system}
spec:
  action: DENY
  rules:
  - when: [{key: request.headers, values: [\"x\"]}]
",
        ROOT_NAMESPACE,
        &[("istio", "egressgateway")],
    );
    let fail: Vec<&Diagnostic> = diags
        .iter()
        .filter(|d| d.code == codes::FAIL_CLOSED)
        .collect();
    assert_eq!(fail.len(), 2, "{diags:#?}");
    assert_eq!(
        fail[0].path.as_deref(),
        Some("spec.rules[1].to[0].operation.ports[0]")
    );
    assert!(
        fail[0].message.contains("allows nothing"),
        "{}",
        fail[0].message
    );
    assert_eq!(fail[1].path.as_deref(), Some("spec.rules[0].when[0].key"));
    assert!(
        fail[1].message.contains("every request"),
        "{}",
        fail[1].message
    );

    let allow = &policies.allow[0];
    assert!(
        allow.rules.is_empty(),
        "no rule of an invalid ALLOW policy survives"
    );
    assert_eq!(allow.invalid.as_ref().map(|i| i.rule), Some(1));
    // Port 443 was allowed by rule 0, which must not survive its policy's invalid rule 1.
    let d = policies.evaluate(&Request::new(ip("10.0.0.1"), 443));
    assert!(!d.allowed);
    assert_eq!(
        d.details,
        "rbac_access_denied_matched_policy[ns[istio-system]-policy[deny-bad]-rule[0]]"
    );
}

#[test]
fn audit_only_marks() {
    let (policies, _) = httpbin(&testdata(
        "acceptance/authz/builder-rbac/http/audit-full-rule-in.yaml",
    ));
    assert_eq!(policies.audit.len(), 1);
    // `rules: [{}]` audits everything and denies nothing.
    let d = policies.evaluate(&Request::new(ip("10.0.0.1"), 1));
    assert!(d.allowed && d.audit);
    assert!(d.details.is_empty());
    // Only what an AUDIT rule matches is marked.
    let (policies, _) = compile_for(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: istio-system}
spec:
  action: AUDIT
  rules: [{to: [{operation: {paths: [\"/audit*\"]}}]}]
",
        ROOT_NAMESPACE,
        &[],
    );
    let marked = policies.evaluate(&get("/audit/x"));
    assert!(marked.allowed && marked.audit);
    let unmarked = policies.evaluate(&get("/other"));
    assert!(unmarked.allowed && !unmarked.audit);
}

#[test]
fn dry_run_policies_are_evaluated_not_enforced() {
    // builder-rbac/http/dry-run-allow-and-deny: both policies become shadow rules only.
    let (policies, _) = httpbin(&testdata(
        "acceptance/authz/builder-rbac/http/dry-run-allow-and-deny-in.yaml",
    ));
    assert!(policies.allow.is_empty() && policies.deny.is_empty());
    let d = policies.evaluate(&get("/deny"));
    assert!(d.allowed, "a dry-run DENY never denies");
    assert_eq!(
        d.dry_run_deny,
        Some(Shadow {
            allowed: false,
            effective_policy: Some("ns[foo]-policy[httpbin-2]-rule[0]".into())
        })
    );
    assert_eq!(
        d.dry_run_allow,
        Some(Shadow {
            allowed: false,
            effective_policy: None
        })
    );

    // builder-rbac/tcp/dry-run-mix: httpbin-1 (dry-run) allows port 80 in the shadow,
    // httpbin-2 (`"false"`) is enforced and allows port 9000 only.
    let (policies, _) = httpbin(&testdata(
        "acceptance/authz/builder-rbac/tcp/dry-run-mix-in.yaml",
    ));
    assert_eq!(policies.allow.len(), 1);
    assert_eq!(policies.dry_run_allow.len(), 1);
    let d = policies.evaluate(&Request::new(ip("10.0.0.1"), 80));
    assert!(!d.allowed);
    assert_eq!(d.details, "rbac_access_denied_matched_policy[none]");
    assert_eq!(
        d.dry_run_allow,
        Some(Shadow {
            allowed: true,
            effective_policy: Some("ns[foo]-policy[httpbin-1]-rule[0]".into())
        })
    );
}

#[test]
fn unparsable_dry_run_leaves_the_policy_enforced() {
    // Istio reads the annotation with strconv.ParseBool; an error means "not a dry run".
    let (policies, _) = compile_for(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-all
  namespace: istio-system
  annotations: {istio.io/dry-run: \"yes\"}
spec:
  action: DENY
  rules: [{}]
",
        ROOT_NAMESPACE,
        &[],
    );
    assert_eq!(policies.deny.len(), 1);
    assert!(policies.dry_run_deny.is_empty());
}

#[test]
fn order_is_by_name_whatever_the_file_order() {
    let doc = |name: &str| {
        format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  action: DENY
  rules: [{{}}]
"
        )
    };
    let (a, _) = compile_for(&[doc("zeta"), doc("alpha")].join("---\n"), "default", &[]);
    let (b, _) = compile_for(&[doc("alpha"), doc("zeta")].join("---\n"), "default", &[]);
    assert_eq!(a, b);
    assert_eq!(&*a.deny[0].name, "ns[default]-policy[alpha]");
    let d = a.evaluate(&Request::new(ip("10.0.0.1"), 1));
    assert_eq!(d.matched, Some(("ns[default]-policy[alpha]".into(), 0)));
}

#[test]
fn config_dump_round_trips() {
    let (policies, _) = compile_for(
        &testdata("guide/authz-egress-policy.yaml"),
        ROOT_NAMESPACE,
        &[("istio", "egressgateway")],
    );
    let json = serde_json::to_value(&policies).expect("serializes");
    assert_eq!(
        json["allow"][0]["rules"][0],
        serde_json::json!({
            "from": [[{"principal": {"values": ["cluster.local/ns/default/sa/frontend"]}}]],
            "to": [[
                {"host": {"values": ["api.github.com"]}},
                {"destination_port": {"values": [443]}}
            ]]
        })
    );
    let back: Policies = serde_json::from_value(json).expect("deserializes");
    assert_eq!(back, policies);
    let frontend = Request::new(ip("127.0.0.1"), 443)
        .with_sni("api.github.com")
        .with_host("api.github.com")
        .with_peer(Peer::from_spiffe(
            "spiffe://cluster.local/ns/default/sa/frontend",
        ));
    assert!(back.evaluate(&frontend).allowed);
}
