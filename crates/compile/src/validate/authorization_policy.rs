//! AuthorizationPolicy validation: Istio's `ValidateAuthorizationPolicy`
//! (`pkg/config/validation/validation.go`) and the attribute rules of
//! `pkg/config/security/security.go`, with their error texts. sluice adds `not_supported`
//! findings for what it reads but does not enforce (CUSTOM and AUDIT actions, JWT attributes,
//! `targetRef` attachment).
//!
//! The selector / `targetRef` / annotation rules shared by the policy kinds (Telemetry,
//! PeerAuthentication, EnvoyFilter) live here too, as `pub(crate)` helpers.

use std::net::IpAddr;
use std::sync::LazyLock;

use regex::Regex;
use sluice_model::security::AuthorizationPolicy;
use sluice_model::security::authorization_policy::{
    Action, Condition, Operation, PolicyTargetReference, Source,
};
use sluice_model::values::WorkloadSelector;

use super::Report;

/// Istio's `istio.io/dry-run` annotation: only AuthorizationPolicy (ALLOW/DENY) accepts it.
pub(crate) const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";
/// Istio's `istio.io/alwaysReject` annotation: the webhook rejects any resource carrying it.
const ALWAYS_REJECT_ANNOTATION: &str = "istio.io/alwaysReject";

pub(crate) fn validate(r: &mut Report<'_, AuthorizationPolicy>) {
    // `Report::resource` borrows the report; a copy of the (small) resource lets findings be
    // pushed while walking it.
    let res = r.resource();
    let spec = &res.spec;
    let (name, namespace) = (res.name().to_owned(), res.namespace().to_owned());
    let dry_run = res.meta.annotations.get(DRY_RUN_ANNOTATION).cloned();
    let always_reject = res.meta.annotations.contains_key(ALWAYS_REJECT_ANNOTATION);

    if let Some(value) = dry_run {
        check_dry_run(r, spec.action, &value, &namespace, &name);
    }
    if always_reject {
        reject_always(r);
    }

    check_selector_and_targets(
        r,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );

    check_action(r, spec);

    for (i, rule) in spec.rules.iter().enumerate() {
        let base = format!("spec.rules[{i}]");
        let mut tcp_in_from = false;
        let mut tcp_in_to = false;
        let mut from_exists = false;
        let mut to_exists = false;

        for (j, from) in rule.from.iter().enumerate() {
            let path = format!("{base}.from[{j}]");
            match &from.source {
                None => r.error(
                    &path,
                    format!("`from.source` must not be nil, found at rule {i}"),
                ),
                Some(src) => {
                    from_exists = true;
                    tcp_in_from |= check_source(r, src, i, &format!("{path}.source"));
                }
            }
        }

        for (j, to) in rule.to.iter().enumerate() {
            let path = format!("{base}.to[{j}]");
            match &to.operation {
                None => r.error(
                    &path,
                    format!("`to.operation` must not be nil, found at rule {i}"),
                ),
                Some(op) => {
                    to_exists = true;
                    tcp_in_to |= check_operation(r, op, i, &format!("{path}.operation"));
                }
            }
        }

        for (j, cond) in rule.when.iter().enumerate() {
            check_condition(r, cond, &format!("{base}.when[{j}]"));
        }

        let http_only = (from_exists && !to_exists && !tcp_in_from) || (to_exists && !tcp_in_to);
        if http_only && spec.action == Action::Deny {
            r.warning(
                &base,
                "configured AuthorizationPolicy will deny all traffic to TCP ports under its scope \
                 due to the use of only HTTP attributes in a DENY rule; it is recommended to \
                 explicitly specify the port",
            );
        }
    }
}

/// The `istio.io/dry-run` annotation: a boolean, and only on ALLOW/DENY policies.
fn check_dry_run(
    r: &mut Report<'_, AuthorizationPolicy>,
    action: Action,
    value: &str,
    namespace: &str,
    name: &str,
) {
    let path = "metadata.annotations";
    match action {
        Action::Allow | Action::Deny => {
            if parse_go_bool(value).is_none() {
                r.error(
                    path,
                    format!(
                        "{namespace}/{name} has annotation {DRY_RUN_ANNOTATION} with invalid value \
                         ({value}): strconv.ParseBool: parsing {value:?}: invalid syntax"
                    ),
                );
            }
        }
        Action::Audit | Action::Custom => r.error(
            path,
            format!(
                "the annotation {DRY_RUN_ANNOTATION} currently only supports action ALLOW/DENY, \
                 found action {} in {namespace}/{name}",
                action_name(action)
            ),
        ),
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Audit => "AUDIT",
        Action::Custom => "CUSTOM",
    }
}

/// Annotation rules Istio's webhook applies to every kind but AuthorizationPolicy.
pub(crate) fn check_annotations<T>(r: &mut Report<'_, T>) {
    let res = r.resource();
    let annotations = &res.meta.annotations;
    let dry_run = annotations.contains_key(DRY_RUN_ANNOTATION);
    let always_reject = annotations.contains_key(ALWAYS_REJECT_ANNOTATION);
    let (ns, name) = (res.namespace().to_owned(), res.name().to_owned());
    // (the borrow of `r` ends here)
    if dry_run {
        r.error(
            "metadata.annotations",
            format!(
                "{ns}/{name} has unsupported annotation {DRY_RUN_ANNOTATION}, please remove the \
                 annotation"
            ),
        );
    }
    if always_reject {
        reject_always(r);
    }
}

fn reject_always<T>(r: &mut Report<'_, T>) {
    r.error(
        "metadata.annotations",
        format!("{ALWAYS_REJECT_ANNOTATION:?} annotation found, rejecting"),
    );
}

/// `selector`, `targetRef` and `targetRefs`: at most one of them, each well formed. Shared by
/// AuthorizationPolicy and Telemetry (Istio's `validateOneOfSelectorType`,
/// `validateWorkloadSelector`, `validatePolicyTargetReference`).
pub(crate) fn check_selector_and_targets<T>(
    r: &mut Report<'_, T>,
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
) {
    let set = usize::from(selector.is_some())
        + usize::from(target_ref.is_some())
        + usize::from(!target_refs.is_empty());
    if set > 1 {
        let path = if target_ref.is_some() {
            "spec.targetRef"
        } else {
            "spec.targetRefs"
        };
        r.error(
            path,
            "only one of targetRefs or workloadSelector can be set",
        );
    }
    check_workload_selector(r, selector, "spec.selector");
    check_target_refs(r, target_ref, target_refs);
}

/// Each `targetRef`/`targetRefs` entry is well formed; sluice says it does not attach by them.
pub(crate) fn check_target_refs<T>(
    r: &mut Report<'_, T>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
) {
    if let Some(t) = target_ref {
        check_target_ref(r, t, "spec.targetRef");
    }
    for (i, t) in target_refs.iter().enumerate() {
        check_target_ref(r, t, &format!("spec.targetRefs[{i}]"));
    }
    if target_ref.is_some() || !target_refs.is_empty() {
        let path = if target_ref.is_some() {
            "spec.targetRef"
        } else {
            "spec.targetRefs"
        };
        r.not_supported(
            path,
            "sluice attaches policies to its workloads by label (`selector`) only; attachment \
             by targetRef/targetRefs (to a Kubernetes Gateway, Service or ServiceEntry) is not \
             acted on, so this resource applies to no sluice workload",
        );
    }
}

/// Istio's `validateWorkloadSelector`: no empty keys, no wildcards; no labels is a warning.
pub(crate) fn check_workload_selector<T>(
    r: &mut Report<'_, T>,
    selector: Option<&WorkloadSelector>,
    path: &str,
) {
    let Some(selector) = selector else { return };
    for (k, v) in &selector.match_labels {
        let at = format!("{path}.matchLabels.{k}");
        if k.is_empty() {
            r.error(
                &at,
                format!(
                    "empty key is not supported in selector: {:?}",
                    format!("{k}={v}")
                ),
            );
        }
        if k.contains('*') || v.contains('*') {
            r.error(
                &at,
                format!(
                    "wildcard is not supported in selector: {:?}",
                    format!("{k}={v}")
                ),
            );
        }
    }
    if selector.match_labels.is_empty() {
        r.warning(path, "workload selector specified without labels");
    }
}

/// The kinds a `targetRef` may name: (canonical group, kind, as Istio prints it).
const ALLOWED_TARGET_REFS: [(&str, &str); 4] = [
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
];

/// Istio's `validatePolicyTargetReference`.
fn check_target_ref<T>(r: &mut Report<'_, T>, t: &PolicyTargetReference, path: &str) {
    if t.name.is_empty() {
        r.error(path, "targetRef name must be set");
    }
    if !t.namespace.is_empty() {
        r.error(
            &format!("{path}.namespace"),
            "targetRef namespace must not be set; cross namespace referencing is not supported",
        );
    }
    let group = if t.group.is_empty() {
        "core"
    } else {
        t.group.as_str()
    };
    if !ALLOWED_TARGET_REFS
        .iter()
        .any(|(g, k)| *g == group && *k == t.kind)
    {
        r.error(
            path,
            format!(
                "targetRef must be to one of [core/v1/Service networking.istio.io/v1/ServiceEntry \
                 gateway.networking.k8s.io/v1/Gateway gateway.networking.k8s.io/v1/GatewayClass] \
                 but was {}/{}",
                t.group, t.kind
            ),
        );
    }
}

/// The action and the provider: Istio's CUSTOM / provider / DENY rules, and what sluice does
/// not enforce.
fn check_action(r: &mut Report<'_, AuthorizationPolicy>, spec: &AuthorizationPolicy) {
    let provider_name = spec.provider.as_ref().map(|p| p.name.as_str());
    match spec.action {
        Action::Custom => {
            if spec.rules.is_empty() {
                r.error(
                    "spec.action",
                    "CUSTOM action without `rules` is meaningless as it will never be triggered, \
                     add an empty rule `{}` if you want it be triggered for every request",
                );
            } else if provider_name.is_none_or(str::is_empty) {
                r.error("spec.provider", "`provider.name` must not be empty");
            }
            for (i, rule) in spec.rules.iter().enumerate() {
                check_custom_rule(r, rule, i);
            }
            let provider = provider_name.unwrap_or_default();
            r.not_supported(
                "spec.action",
                format!(
                    "sluice does not implement the CUSTOM action (delegating the decision to the \
                     extension provider {provider:?}); failing closed, it denies every request \
                     its rules match, as Istio does for a CUSTOM provider it cannot use"
                ),
            );
        }
        Action::Audit => r.not_supported(
            "spec.action",
            "AUDIT only marks the requests it matches and never changes a decision; sluice \
             has no audit-log provider to send them to",
        ),
        Action::Allow | Action::Deny => {
            if spec.provider.is_some() {
                r.error(
                    "spec.provider",
                    format!(
                        "`provider` must not be with non CUSTOM action, found {}",
                        action_name(spec.action)
                    ),
                );
            }
            if spec.action == Action::Deny && spec.rules.is_empty() {
                r.error(
                    "spec.action",
                    "DENY action without `rules` is meaningless as it will never be triggered, \
                     add an empty rule `{}` if you want it be triggered for every request",
                );
            }
        }
    }
}

/// Istio supports only some source fields and `when` keys with the CUSTOM action.
fn check_custom_rule(
    r: &mut Report<'_, AuthorizationPolicy>,
    rule: &sluice_model::security::authorization_policy::Rule,
    i: usize,
) {
    let not_with_custom =
        |name: &str| format!("{name} is currently not supported with CUSTOM action");
    for (j, from) in rule.from.iter().enumerate() {
        let Some(src) = &from.source else { continue };
        let path = format!("spec.rules[{i}].from[{j}].source");
        let fields: [(&[String], &str); 8] = [
            (&src.namespaces, "From.Namespaces"),
            (&src.not_namespaces, "From.NotNamespaces"),
            (&src.service_accounts, "From.ServiceAccounts"),
            (&src.not_service_accounts, "From.NotServiceAccounts"),
            (&src.principals, "From.Principals"),
            (&src.not_principals, "From.NotPrincipals"),
            (&src.request_principals, "From.RequestPrincipals"),
            (&src.not_request_principals, "From.NotRequestPrincipals"),
        ];
        for (values, name) in fields {
            if !values.is_empty() {
                r.error(&path, not_with_custom(name));
            }
        }
    }
    for (j, cond) in rule.when.iter().enumerate() {
        let key = cond.key.as_str();
        if matches!(
            key,
            "source.namespace" | "source.serviceAccount" | "source.principal"
        ) || key.starts_with("request.auth.")
        {
            r.error(
                &format!("spec.rules[{i}].when[{j}].key"),
                not_with_custom(key),
            );
        }
    }
}

/// What the values of a `source` field are.
#[derive(Clone, Copy)]
enum ValueKind {
    /// Principals and namespaces: exact, prefix, suffix or presence matches.
    Identity,
    /// `<namespace>/<name>` or `<name>`.
    ServiceAccount,
    /// IP addresses or CIDR ranges.
    Ip,
}

/// One `from.source`. Returns whether it uses a TCP-level attribute (anything but request
/// principals), for the DENY warning.
fn check_source(
    r: &mut Report<'_, AuthorizationPolicy>,
    src: &Source,
    rule: usize,
    path: &str,
) -> bool {
    let identity_fields = src.principals.len()
        + src.not_principals.len()
        + src.namespaces.len()
        + src.not_namespaces.len();
    if identity_fields > 0 && src.service_accounts.len() + src.not_service_accounts.len() > 0 {
        r.error(
            path,
            format!(
                "cannot set serviceAccounts with namespaces or principals, found at rule {rule}"
            ),
        );
    }

    use ValueKind::{Identity, Ip, ServiceAccount};
    let lists: [(&[String], &str, &str, ValueKind); 12] = [
        (&src.principals, "principals", "Principals", Identity),
        (
            &src.request_principals,
            "requestPrincipals",
            "RequestPrincipals",
            Identity,
        ),
        (&src.namespaces, "namespaces", "Namespaces", Identity),
        (
            &src.service_accounts,
            "serviceAccounts",
            "ServiceAccounts",
            ServiceAccount,
        ),
        (&src.ip_blocks, "ipBlocks", "IpBlocks", Ip),
        (
            &src.remote_ip_blocks,
            "remoteIpBlocks",
            "RemoteIpBlocks",
            Ip,
        ),
        (
            &src.not_principals,
            "notPrincipals",
            "NotPrincipals",
            Identity,
        ),
        (
            &src.not_request_principals,
            "notRequestPrincipals",
            "NotRequestPrincipals",
            Identity,
        ),
        (
            &src.not_namespaces,
            "notNamespaces",
            "NotNamespaces",
            Identity,
        ),
        (
            &src.not_service_accounts,
            "notServiceAccounts",
            "NotServiceAccounts",
            ServiceAccount,
        ),
        (&src.not_ip_blocks, "notIpBlocks", "NotIpBlocks", Ip),
        (
            &src.not_remote_ip_blocks,
            "notRemoteIpBlocks",
            "NotRemoteIpBlocks",
            Ip,
        ),
    ];
    if lists.iter().all(|(values, ..)| values.is_empty()) {
        r.error(
            path,
            format!("`from.source` must not be empty, found at rule {rule}"),
        );
    }
    for (values, field, go_name, kind) in lists {
        let field_path = format!("{path}.{field}");
        check_empty_values(r, values, go_name, &field_path);
        for (k, v) in values.iter().enumerate() {
            let at = format!("{field_path}[{k}]");
            let checked = match kind {
                Ip => check_ip_or_cidr(v),
                ServiceAccount => check_service_account(v),
                Identity => {
                    check_match_value(r, v, &at);
                    Ok(())
                }
            };
            if let Err(e) = checked {
                r.error(&at, e);
            }
        }
    }

    if !src.request_principals.is_empty() || !src.not_request_principals.is_empty() {
        let field = if src.request_principals.is_empty() {
            "notRequestPrincipals"
        } else {
            "requestPrincipals"
        };
        r.not_supported(
            &format!("{path}.{field}"),
            "sluice does not authenticate JWTs (RequestAuthentication is not read), so no request \
             carries a request principal: failing closed, an ALLOW rule naming request \
             principals never matches, and a DENY rule matches as if the condition held",
        );
    }

    [
        &src.principals,
        &src.not_principals,
        &src.ip_blocks,
        &src.not_ip_blocks,
        &src.namespaces,
        &src.not_namespaces,
        &src.remote_ip_blocks,
        &src.not_remote_ip_blocks,
        &src.service_accounts,
        &src.not_service_accounts,
    ]
    .iter()
    .any(|v| !v.is_empty())
}

/// One `to.operation`. Returns whether it names ports (a TCP-level attribute).
fn check_operation(
    r: &mut Report<'_, AuthorizationPolicy>,
    op: &Operation,
    rule: usize,
    path: &str,
) -> bool {
    let lists: [(&[String], &str, &str); 8] = [
        (&op.ports, "ports", "Ports"),
        (&op.methods, "methods", "Methods"),
        (&op.paths, "paths", "Paths"),
        (&op.hosts, "hosts", "Hosts"),
        (&op.not_ports, "notPorts", "NotPorts"),
        (&op.not_methods, "notMethods", "NotMethods"),
        (&op.not_paths, "notPaths", "NotPaths"),
        (&op.not_hosts, "notHosts", "NotHosts"),
    ];
    if lists.iter().all(|(values, _, _)| values.is_empty()) {
        r.error(
            path,
            format!("`to.operation` must not be empty, found at rule {rule}"),
        );
    }
    for (values, field, go_name) in lists {
        let field_path = format!("{path}.{field}");
        check_empty_values(r, values, go_name, &field_path);
        match field {
            "ports" | "notPorts" => {
                for (k, v) in values.iter().enumerate() {
                    let at = format!("{field_path}[{k}]");
                    match check_port(v) {
                        Err(e) => r.error(&at, e),
                        Ok(0) => r.warning(
                            &at,
                            "port 0 is never the destination port of a connection; this value \
                             never matches",
                        ),
                        Ok(_) => {}
                    }
                }
            }
            "paths" | "notPaths" => {
                if values.iter().any(|p| !path_template_ok(p)) {
                    r.error(
                        &field_path,
                        format!("invalid or unsupported path template, found in {go_name}"),
                    );
                }
                for (k, p) in values.iter().enumerate() {
                    if !p.is_empty() && !p.starts_with('/') && !p.starts_with('*') {
                        r.warning(
                            &format!("{field_path}[{k}]"),
                            format!(
                                "path {p:?} does not begin with '/': request paths always do, so \
                                 this value never matches"
                            ),
                        );
                    }
                    if !is_path_template(p) {
                        check_match_value(r, p, &format!("{field_path}[{k}]"));
                    }
                }
            }
            "methods" | "notMethods" => {
                for (k, m) in values.iter().enumerate() {
                    check_method(r, m, &format!("{field_path}[{k}]"));
                }
            }
            _ => {
                for (k, h) in values.iter().enumerate() {
                    check_host(r, h, &format!("{field_path}[{k}]"));
                }
            }
        }
    }
    !op.ports.is_empty() || !op.not_ports.is_empty()
}

/// One `when` condition: Istio's key and value rules.
fn check_condition(r: &mut Report<'_, AuthorizationPolicy>, cond: &Condition, path: &str) {
    let key = cond.key.as_str();
    if key.is_empty() {
        r.error(&format!("{path}.key"), "`key` must not be empty");
        return;
    }
    if cond.values.is_empty() && cond.not_values.is_empty() {
        r.error(
            path,
            format!("at least one of `values` or `notValues` must be set for key {key}"),
        );
        return;
    }
    if let Err(e) = validate_attribute(key, &cond.values) {
        r.error(
            &format!("{path}.values"),
            format!("invalid `value` for `key` {key}: {e}"),
        );
    }
    if let Err(e) = validate_attribute(key, &cond.not_values) {
        r.error(
            &format!("{path}.notValues"),
            format!("invalid `notValue` for `key` {key}: {e}"),
        );
    }
    if key.starts_with("request.auth.") {
        r.not_supported(
            &format!("{path}.key"),
            format!(
                "sluice does not authenticate JWTs (RequestAuthentication is not read), so the \
                 attribute {key} is never known: failing closed, an ALLOW rule with it never \
                 matches, and a DENY rule matches as if the condition held"
            ),
        );
    } else if key.starts_with("experimental.envoy.filters.") {
        r.not_supported(
            &format!("{path}.key"),
            format!(
                "sluice has no Envoy filter metadata, so the attribute {key} is never known: \
                 failing closed, an ALLOW rule with it never matches, and a DENY rule matches as \
                 if the condition held"
            ),
        );
    }
}

/// Istio's `security.ValidateAttribute`: the keys a `when` condition may use and the values
/// each accepts.
pub(crate) fn validate_attribute(key: &str, values: &[String]) -> Result<(), String> {
    if values.iter().any(String::is_empty) {
        return Err(format!("empty value not allowed, found in {key}"));
    }
    let map_key = || {
        let open = key.find('[');
        match open {
            Some(open) if key.ends_with(']') && open > 0 && open + 2 < key.len() => Ok(()),
            _ => Err(format!("bad key ({key}): should have format a[b]")),
        }
    };
    match key {
        "source.ip" | "remote.ip" | "destination.ip" => {
            let errs: Vec<String> = values
                .iter()
                .filter_map(|v| check_ip_or_cidr(v).err())
                .collect();
            if errs.is_empty() {
                Ok(())
            } else {
                Err(errs.join("; "))
            }
        }
        "destination.port" => {
            let errs: Vec<String> = values.iter().filter_map(|v| check_port(v).err()).collect();
            if errs.is_empty() {
                Ok(())
            } else {
                Err(errs.join("; "))
            }
        }
        "source.namespace"
        | "source.principal"
        | "source.serviceAccount"
        | "source.trustDomain"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "connection.sni" => Ok(()),
        "destination.namespace" => Err(format!(
            "attribute {key} is replaced by the metadata.namespace"
        )),
        "destination.name" | "destination.user" => Err(format!(
            "deprecated attribute {key}: only supported in v1alpha1"
        )),
        _ if key.starts_with("request.headers")
            || key.starts_with("request.auth.claims")
            || key.starts_with("experimental.envoy.filters.") =>
        {
            map_key()
        }
        _ if key.starts_with("destination.labels") => Err(format!(
            "attribute {key} is replaced by the workload selector"
        )),
        _ => Err(format!("unknown attribute: {key}")),
    }
}

/// Istio's `security.CheckEmptyValues`.
fn check_empty_values<T>(r: &mut Report<'_, T>, values: &[String], go_name: &str, path: &str) {
    if let Some(k) = values.iter().position(String::is_empty) {
        r.error(
            &format!("{path}[{k}]"),
            format!("empty value not allowed, found in {go_name}"),
        );
    }
}

/// Istio's `security.ValidateIPs`, for one value: an IP address or a CIDR range.
pub(crate) fn check_ip_or_cidr(v: &str) -> Result<(), String> {
    if v.contains('/') {
        v.parse::<ipnet::IpNet>()
            .map(|_| ())
            .map_err(|e| format!("bad CIDR range ({v}): {e}"))
    } else {
        v.parse::<IpAddr>()
            .map(|_| ())
            .map_err(|_| format!("bad IP address ({v})"))
    }
}

/// Istio's `security.ValidatePorts`, for one value: a decimal number 0-65535 (Go's
/// `strconv.ParseUint` syntax).
pub(crate) fn check_port(v: &str) -> Result<u16, String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "bad port ({v}): strconv.ParseUint: parsing {v:?}: invalid syntax"
        ));
    }
    match v.parse::<u32>() {
        Err(_) => Err(format!(
            "bad port ({v}): strconv.ParseUint: parsing {v:?}: value out of range"
        )),
        Ok(n) => {
            u16::try_from(n).map_err(|_| format!("bad port ({v}): must be in the range 0..65535"))
        }
    }
}

/// A `serviceAccounts` value: `<namespace>/<name>` or `<name>` (the policy's namespace).
fn check_service_account(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(()); // reported as an empty value
    }
    let parts: Vec<&str> = v.split('/').collect();
    let ok = match parts.as_slice() {
        [name] => !name.is_empty(),
        [ns, name] => !ns.is_empty() && !name.is_empty(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid service account {v:?}: must be <namespace>/<name> or <name>"
        ))
    }
}

const MATCH_ONE_TEMPLATE: &str = "{*}";
const MATCH_ANY_TEMPLATE: &str = "{**}";

/// Matches the path-template forms Envoy's `uri_template` does not support: named variables
/// (`{x=*}`, `{x}`), empty braces, and bare `/*`, `/**`, `*/` segments.
static UNSUPPORTED_PATH_TEMPLATE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"/\{\w+=\*\*?\}|\{\w*\}|/\*\*?|\*\*?/").ok());

fn is_path_template(p: &str) -> bool {
    p.contains(MATCH_ONE_TEMPLATE) || p.contains(MATCH_ANY_TEMPLATE)
}

/// Istio's `security.CheckValidPathTemplate`, for one path.
fn path_template_ok(p: &str) -> bool {
    if !is_path_template(p) {
        return true;
    }
    UNSUPPORTED_PATH_TEMPLATE
        .as_ref()
        .is_none_or(|re| !re.is_match(p))
}

/// Authorization values match exactly, by prefix (`abc*`), by suffix (`*abc`) or by presence
/// (`*`). A `*` anywhere else is matched literally, which is rarely what was meant.
fn check_match_value<T>(r: &mut Report<'_, T>, v: &str, path: &str) {
    let inner = v
        .strip_prefix('*')
        .or_else(|| v.strip_suffix('*'))
        .unwrap_or(v);
    if inner.contains('*') {
        r.warning(
            path,
            format!(
                "{v:?} has a '*' that is neither leading nor trailing: only exact, prefix \
                 (\"abc*\"), suffix (\"*abc\") and presence (\"*\") matches exist, so it is \
                 matched literally"
            ),
        );
    }
}

/// HTTP methods are case-sensitive tokens; Istio compares them as written.
fn check_method<T>(r: &mut Report<'_, T>, m: &str, path: &str) {
    if m.is_empty() || m == "*" {
        return;
    }
    let known = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
    ];
    let upper = m.to_ascii_uppercase();
    if m != upper && known.contains(&upper.as_str()) {
        r.warning(
            path,
            format!(
                "method {m:?} never matches: HTTP methods are case-sensitive and clients send \
                 {upper:?}"
            ),
        );
    } else {
        check_match_value(r, m, path);
    }
}

/// Hosts are matched against the request's authority (without scheme or path).
fn check_host<T>(r: &mut Report<'_, T>, h: &str, path: &str) {
    if h.contains("://") || h.contains('/') {
        r.warning(
            path,
            format!(
                "host {h:?} contains a scheme or a path; hosts are matched against the request's \
                 :authority (e.g. \"api.example.com\"), so this value never matches"
            ),
        );
    } else {
        check_match_value(r, h, path);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_model::Level;

    use super::*;
    use crate::validate::validate as validate_all;

    fn diags(spec: serde_json::Value) -> Vec<sluice_model::Diagnostic> {
        diags_with(spec, json!({"name": "p", "namespace": "ns"}))
    }

    fn diags_with(
        spec: serde_json::Value,
        meta: serde_json::Value,
    ) -> Vec<sluice_model::Diagnostic> {
        let loaded = sluice_model::load_value(
            "test.yaml",
            json!({
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": meta,
                "spec": spec,
            }),
        );
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        validate_all(&loaded.resources)
    }

    fn has(d: &[sluice_model::Diagnostic], level: Level, text: &str) -> bool {
        d.iter()
            .any(|d| d.level == level && d.message.contains(text))
    }

    #[test]
    fn attribute_rules() {
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let cases: &[(&str, &[&str], Option<&str>)] = &[
            ("source.ip", &["1.2.3.4", "10.0.0.0/8", "::1"], None),
            ("source.ip", &["a.b.c.d"], Some("bad IP address (a.b.c.d)")),
            (
                "remote.ip",
                &["1.2.3.4/33"],
                Some("bad CIDR range (1.2.3.4/33)"),
            ),
            ("destination.port", &["80", "65535"], None),
            ("destination.port", &["65536"], Some("bad port (65536)")),
            ("destination.port", &["http"], Some("invalid syntax")),
            ("request.headers[x-a]", &["v"], None),
            ("request.headers[]", &["v"], Some("should have format a[b]")),
            ("request.headers", &["v"], Some("should have format a[b]")),
            ("request.auth.claims[iss]", &["v"], None),
            ("request.auth.claims[nested1][nested2]", &["v"], None),
            ("experimental.envoy.filters.a.b[c]", &["v"], None),
            ("connection.sni", &["*.example.com"], None),
            ("source.trustDomain", &["cluster.local"], None),
            (
                "destination.namespace",
                &["ns"],
                Some("replaced by the metadata.namespace"),
            ),
            (
                "destination.labels[app]",
                &["x"],
                Some("replaced by the workload selector"),
            ),
            (
                "destination.user",
                &["x"],
                Some("only supported in v1alpha1"),
            ),
            ("key1", &["v1"], Some("unknown attribute: key1")),
            (
                "source.namespace",
                &["a", ""],
                Some("empty value not allowed"),
            ),
        ];
        for (key, values, want) in cases {
            let got = validate_attribute(key, &s(values));
            match want {
                None => assert!(got.is_ok(), "{key} {values:?}: {got:?}"),
                Some(w) => {
                    let e = got.expect_err(key);
                    assert!(e.contains(w), "{key}: {e}");
                }
            }
        }
    }

    #[test]
    fn path_templates() {
        for ok in [
            "/a/b",
            "/path/template/{*}",
            "/{**}/path/template",
            "*/suffix",
            "/prefix/*",
        ] {
            assert!(path_template_ok(ok), "{ok}");
        }
        for bad in ["/{*}/foo/{bar}", "/{*}/{x=*}", "/{**}/*", "/{*}/{}"] {
            assert!(!path_template_ok(bad), "{bad}");
        }
    }

    #[test]
    fn service_accounts() {
        assert!(check_service_account("ns/sa").is_ok());
        assert!(check_service_account("sa").is_ok());
        assert!(check_service_account("a/b/c").is_err());
        assert!(check_service_account("/sa").is_err());
    }

    #[test]
    fn sluice_reports_what_it_does_not_enforce() {
        let d = diags(json!({
            "action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{}]
        }));
        assert!(!d.iter().any(|d| d.is_error()), "{d:?}");
        assert!(
            d.iter()
                .any(|d| d.code == "SLC0006" && d.message.contains("CUSTOM"))
        );

        let d = diags(json!({
            "rules": [{
                "from": [{"source": {"requestPrincipals": ["iss/sub"]}}],
                "when": [{"key": "request.auth.claims[grp]", "values": ["a"]}]
            }]
        }));
        assert!(!d.iter().any(|d| d.is_error()), "{d:?}");
        assert_eq!(d.iter().filter(|d| d.code == "SLC0006").count(), 2, "{d:?}");

        let d = diags(json!({"action": "AUDIT", "rules": [{}]}));
        assert!(has(&d, Level::Warning, "AUDIT"), "{d:?}");
    }

    #[test]
    fn value_warnings() {
        let d = diags(json!({"rules": [{"to": [{"operation": {
            "methods": ["get"], "paths": ["api/*"], "hosts": ["https://api.example.com"],
            "ports": ["0"]
        }}]}]}));
        assert!(!d.iter().any(|d| d.is_error()), "{d:?}");
        for text in [
            "case-sensitive",
            "does not begin with '/'",
            "scheme or a path",
            "port 0",
        ] {
            assert!(has(&d, Level::Warning, text), "{text}: {d:?}");
        }
        let d = diags(json!({"rules": [{"from": [{"source": {"principals": ["a*b"]}}]}]}));
        assert!(has(&d, Level::Warning, "matched literally"), "{d:?}");
    }

    #[test]
    fn custom_rules_and_annotations() {
        let d = diags(json!({
            "action": "CUSTOM", "provider": {"name": "ext"},
            "rules": [{"from": [{"source": {"serviceAccounts": ["sa"]}}],
                       "when": [{"key": "source.serviceAccount", "values": ["sa"]}]}]
        }));
        assert!(
            has(
                &d,
                Level::Error,
                "From.ServiceAccounts is currently not supported"
            ),
            "{d:?}"
        );
        assert!(
            has(
                &d,
                Level::Error,
                "source.serviceAccount is currently not supported"
            ),
            "{d:?}"
        );

        let d = diags_with(
            json!({"action": "DENY", "rules": [{}]}),
            json!({"name": "p", "annotations": {"istio.io/alwaysReject": "true"}}),
        );
        assert!(
            has(&d, Level::Error, "annotation found, rejecting"),
            "{d:?}"
        );

        let d = diags_with(
            json!({"action": "ALLOW"}),
            json!({"name": "p", "namespace": "ns", "annotations": {"istio.io/dry-run": "T"}}),
        );
        assert!(!d.iter().any(|d| d.is_error()), "{d:?}");
    }

    #[test]
    fn findings_point_at_their_field() {
        let text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\nspec:\n  rules:\n  - when:\n    - key: source.ip\n      values: [\"nope\"]\n";
        let loaded = sluice_model::load_str("p.yaml", text);
        let d = validate_all(&loaded.resources);
        let e = d.iter().find(|d| d.is_error()).expect("an error");
        assert_eq!(e.path.as_deref(), Some("spec.rules[0].when[0].values"));
        assert_eq!(e.location.as_ref().map(|l| l.line), Some(9), "{e}");
    }
}
