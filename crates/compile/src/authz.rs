//! AuthorizationPolicy → [`Policies`]: which policies apply to one workload, and their rules in
//! compiled form. Evaluation lives with the compiled form (`sluice_snapshot::authz`).
//!
//! Selection follows Istio (`pilot/pkg/model/authorization.go`): a policy applies to a
//! workload when it lives in the workload's namespace or in the root namespace, and its
//! `selector` (if any) matches the workload's labels. Policies attached by `targetRef(s)`
//! apply to no sluice workload and are reported.
//!
//! Where sluice cannot enforce a policy as written, it fails closed and says so:
//! - **CUSTOM**: sluice has no external authorizer. Istio, when it cannot use a CUSTOM
//!   provider, turns each rule into a DENY of what it matches
//!   (`…-deny-due-to-bad-CUSTOM-action`, `builder-rbac/http/custom-bad-*`); sluice does the same.
//! - **A rule that cannot be compiled** (a bad IP, port or path template, an unknown `when`
//!   key): Istio's builder skips that rule, which for a DENY policy denies less. sluice instead
//!   fails the whole policy closed (linkerd's `ServerPolicy::invalid()`): an ALLOW policy then
//!   allows nothing (it still counts as an ALLOW policy, so it behaves like `spec: {}`), a DENY
//!   (or CUSTOM, or AUDIT) policy matches every request of the workloads it selects.
//! - **Attributes sluice never knows** (request principals and other JWT attributes, Envoy
//!   metadata): compiled as unknowable, which an ALLOW rule never matches and a DENY rule leaves
//!   out — Istio's own treatment of HTTP-only attributes on TCP traffic.
//!
//! `istio.io/dry-run: "true"` on an ALLOW or DENY policy makes it a dry-run policy: evaluated
//! and reported (Envoy's shadow rules), never enforced. Any other value, or an unparsable one,
//! leaves the policy enforced, as in Istio.

mod rule;

use std::collections::BTreeMap;

use sluice_model::security::AuthorizationPolicy;
use sluice_model::security::authorization_policy::Action;
use sluice_model::{Diagnostic, Level, Resource, Resources};
use sluice_snapshot::authz::{Invalid, Policies, Policy};

/// Codes of the findings made while compiling policies.
pub mod codes {
    /// CUSTOM action, `targetRef`, JWT attributes: read, reported, not enforced as written.
    pub use sluice_model::diag::codes::NOT_SUPPORTED;
    /// A policy that cannot be compiled as written fails closed; the message says how.
    pub const FAIL_CLOSED: &str = "SLC0301";
}

/// Istio's default root namespace: its policies apply to every workload of the mesh.
pub const ROOT_NAMESPACE: &str = "istio-system";
/// The annotation that makes an ALLOW or DENY policy a dry run.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// The policies that apply to the workload in `workload_namespace` with `workload_labels`,
/// compiled, each list sorted by name (Envoy's order); and what could not be compiled as
/// written.
pub fn compile_policies(
    resources: &Resources,
    workload_namespace: &str,
    workload_labels: &BTreeMap<String, String>,
    root_namespace: &str,
) -> (Policies, Vec<Diagnostic>) {
    let mut policies = Policies::default();
    let mut diags = Vec::new();
    for ap in &resources.authorization_policies {
        let ns = ap.namespace();
        if ns != workload_namespace && ns != root_namespace {
            continue;
        }
        if ap.spec.all_target_refs().next().is_some() {
            let path = if ap.spec.target_ref.is_some() {
                "spec.targetRef"
            } else {
                "spec.targetRefs"
            };
            diags.push(finding(
                ap,
                codes::NOT_SUPPORTED,
                path,
                "sluice attaches policies to workloads by `selector` only; a policy attached by \
                 targetRef/targetRefs applies to no sluice workload and is not enforced"
                    .into(),
            ));
            continue;
        }
        let selected = ap
            .spec
            .selector
            .as_ref()
            .is_none_or(|s| s.matches(workload_labels));
        if !selected {
            continue;
        }
        let (list, policy) = compile_policy(ap, &mut diags);
        match list {
            List::Custom => policies.custom.push(policy),
            List::Audit => policies.audit.push(policy),
            List::Deny => policies.deny.push(policy),
            List::Allow => policies.allow.push(policy),
            List::DryRunDeny => policies.dry_run_deny.push(policy),
            List::DryRunAllow => policies.dry_run_allow.push(policy),
        }
    }
    // CUSTOM rule names start with the provider; sort by the name Envoy sees.
    policies.custom.sort_by_key(|p| p.rule_name(0));
    for list in [
        &mut policies.audit,
        &mut policies.deny,
        &mut policies.allow,
        &mut policies.dry_run_deny,
        &mut policies.dry_run_allow,
    ] {
        list.sort_by(|a, b| a.name.cmp(&b.name));
    }
    (policies, diags)
}

enum List {
    Custom,
    Audit,
    Deny,
    Allow,
    DryRunDeny,
    DryRunAllow,
}

fn compile_policy(
    ap: &Resource<AuthorizationPolicy>,
    diags: &mut Vec<Diagnostic>,
) -> (List, Policy) {
    let spec = &ap.spec;
    let dry_run = ap
        .meta
        .annotations
        .get(DRY_RUN_ANNOTATION)
        .and_then(|v| parse_go_bool(v))
        == Some(true);
    let list = match (spec.action, dry_run) {
        (Action::Custom, _) => List::Custom,
        (Action::Audit, _) => List::Audit,
        (Action::Deny, false) => List::Deny,
        (Action::Deny, true) => List::DryRunDeny,
        (Action::Allow, false) => List::Allow,
        (Action::Allow, true) => List::DryRunAllow,
    };
    let mut policy = Policy::new(ap.namespace(), ap.name(), Vec::new());
    if spec.action == Action::Custom {
        let provider = spec
            .provider
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        diags.push(finding(
            ap,
            codes::NOT_SUPPORTED,
            "spec.action",
            format!(
                "sluice has no external authorizer for the CUSTOM action (provider \
                 {provider:?}): as Istio does when it cannot use a CUSTOM provider, each rule \
                 of this policy denies the requests it matches"
            ),
        ));
        policy.custom_provider = Some(provider);
    }
    let allow = spec.action == Action::Allow;
    for (i, r) in spec.rules.iter().enumerate() {
        match rule::compile(r, i, ap.namespace()) {
            Ok(compiled) => {
                for (path, key) in &compiled.unsupported {
                    diags.push(finding(
                        ap,
                        codes::NOT_SUPPORTED,
                        path,
                        unknowable_message(key, i, spec.action),
                    ));
                }
                policy.rules.push(compiled.rule);
            }
            Err(e) => {
                let effect = if allow {
                    "the policy allows nothing (like `spec: {}`)"
                } else {
                    "the policy matches every request of the workloads it selects"
                };
                diags.push(finding(
                    ap,
                    codes::FAIL_CLOSED,
                    &e.path,
                    format!(
                        "rule {i} cannot be compiled ({}); sluice fails closed: {effect}",
                        e.message
                    ),
                ));
                policy.rules.clear();
                policy.invalid = Some(Invalid {
                    rule: i,
                    reason: e.message,
                });
                break;
            }
        }
    }
    (list, policy)
}

fn unknowable_message(key: &str, rule: usize, action: Action) -> String {
    let why = if key.contains("Principals") || key.starts_with("request.auth.") {
        "sluice does not authenticate JWTs (RequestAuthentication is not read)"
    } else {
        "sluice does not have this attribute"
    };
    let effect = match action {
        Action::Allow => format!("rule {rule} never matches, so it allows nothing"),
        Action::Deny | Action::Custom => format!(
            "the condition is left out, so rule {rule} denies every request its other \
             conditions match"
        ),
        Action::Audit => format!(
            "the condition is left out, so rule {rule} audits every request its other \
             conditions match"
        ),
    };
    format!(
        "{why}, so it cannot judge {key}; as Istio treats HTTP-only attributes on TCP, {effect}"
    )
}

/// Go's `strconv.ParseBool`, which Istio uses for the dry-run annotation.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn finding(
    ap: &Resource<AuthorizationPolicy>,
    code: &'static str,
    path: &str,
    message: String,
) -> Diagnostic {
    Diagnostic::new(code, Level::Warning, message)
        .origin(ap.origin())
        .at(ap.source.location_of(path))
        .path(path)
}
