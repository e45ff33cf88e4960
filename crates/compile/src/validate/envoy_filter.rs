//! EnvoyFilter validation: Istio's `ValidateEnvoyFilter`
//! (`pkg/config/validation/envoyfilter/envoyfilter.go`) with its error texts, the CRD's match
//! rules, the per-patch checks of Istio's EnvoyFilter analyzer (IST0152–IST0154), and
//! sluice's own reading: every patch that is not the local rate limit the model recognises is
//! reported with `not_supported`, and the rate limit values are checked as Envoy would.

use sluice_model::Level;
use sluice_model::networking::EnvoyFilter;
use sluice_model::networking::envoy_filter::{
    ApplyTo, EnvoyConfigObjectMatch, EnvoyConfigObjectPatch, LocalRateLimit, LocalRateLimitPatch,
    PatchContext, PatchOperation, TokenBucket, UnsupportedReason,
};

use super::Report;
use super::authorization_policy::{check_annotations, check_target_refs};

const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";

/// Istio's analyzer messages (`pkg/config/analysis/msg/messages.gen.go`).
const REPLACE_INCORRECTLY: (&str, &str) = (
    "IST0152",
    "The REPLACE operation is only valid for HTTP_FILTER and NETWORK_FILTER.",
);
const ADD_INCORRECTLY: (&str, &str) = (
    "IST0153",
    "The ADD operation will be ignored when applyTo is set to ROUTE_CONFIGURATION, or HTTP_ROUTE.",
);
const REMOVE_INCORRECTLY: (&str, &str) = (
    "IST0154",
    "The REMOVE operation will be ignored when applyTo is set to ROUTE_CONFIGURATION, or \
     HTTP_ROUTE.",
);

/// Envoy's deprecated filter names (Istio's `xds.ReverseDeprecatedFilterNames`).
const DEPRECATED_FILTER_NAMES: [(&str, &str); 20] = [
    (
        "envoy.client_ssl_auth",
        "envoy.filters.network.client_ssl_auth",
    ),
    ("envoy.echo", "envoy.filters.network.echo"),
    ("envoy.http_connection_manager", HTTP_CONNECTION_MANAGER),
    ("envoy.mongo_proxy", "envoy.filters.network.mongo_proxy"),
    ("envoy.ratelimit", "envoy.filters.network.ratelimit"),
    ("envoy.redis_proxy", "envoy.filters.network.redis_proxy"),
    ("envoy.tcp_proxy", "envoy.filters.network.tcp_proxy"),
    ("envoy.buffer", "envoy.filters.http.buffer"),
    ("envoy.cors", "envoy.filters.http.cors"),
    ("envoy.fault", "envoy.filters.http.fault"),
    ("envoy.gzip", "envoy.filters.http.gzip"),
    ("envoy.health_check", "envoy.filters.http.health_check"),
    ("envoy.ip_tagging", "envoy.filters.http.ip_tagging"),
    ("envoy.lua", "envoy.filters.http.lua"),
    ("envoy.rate_limit", "envoy.filters.http.ratelimit"),
    ("envoy.router", "envoy.filters.http.router"),
    ("envoy.grpc_web", "envoy.filters.http.grpc_web"),
    (
        "envoy.listener.tls_inspector",
        "envoy.filters.listener.tls_inspector",
    ),
    (
        "envoy.listener.original_dst",
        "envoy.filters.listener.original_dst",
    ),
    (
        "envoy.listener.http_inspector",
        "envoy.filters.listener.http_inspector",
    ),
];

pub(crate) fn validate(r: &mut Report<'_, EnvoyFilter>) {
    let spec = &r.resource().spec;
    check_annotations(r);

    if let Some(sel) = &spec.workload_selector {
        for (k, v) in &sel.labels {
            let at = format!("spec.workloadSelector.labels.{k}");
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
        if sel.labels.is_empty() {
            r.warning(
                "spec.workloadSelector",
                "Envoy filter: workload selector specified without labels, will be applied to all \
                 services in namespace",
            );
        }
        if !spec.target_refs.is_empty() {
            r.error(
                "spec.targetRefs",
                "only one of targetRefs or workloadSelector can be set",
            );
        }
    }
    check_target_refs(r, None, &spec.target_refs);

    let mut well_formed = vec![false; spec.config_patches.len()];
    for (i, cp) in spec.config_patches.iter().enumerate() {
        let path = format!("spec.configPatches[{i}]");
        if let Some(ok) = well_formed.get_mut(i) {
            *ok = check_patch(r, cp, &path);
        }
        if let Some(m) = &cp.match_ {
            check_match_shape(r, m, &format!("{path}.match"));
        }
        check_analyzer_rules(r, cp, &path);
    }

    // sluice's reading: the local rate limit, or why a patch is ignored.
    let mut rate_limit_filters = Vec::new();
    let mut per_route_filters = Vec::new();
    for result in spec.local_rate_limit() {
        match result {
            Ok(LocalRateLimitPatch::Filter(f)) => {
                let path = format!("spec.configPatches[{}].patch.value.typed_config", f.index);
                check_rate_limit(r, &f.config, &path, true);
                rate_limit_filters.push((f.index, f.name.clone(), f.config.token_bucket.is_some()));
            }
            // Its fields are checked by the model; the shared store is a serve-time matter.
            Ok(LocalRateLimitPatch::Global(_)) => {}
            Ok(LocalRateLimitPatch::Route(rt)) => {
                for (name, config) in &rt.per_filter_config {
                    let path = format!(
                        "spec.configPatches[{}].patch.value.typed_per_filter_config",
                        rt.index
                    );
                    check_rate_limit(r, config, &path, false);
                    per_route_filters.push(name.clone());
                }
            }
            Err(unsupported) => {
                let i = unsupported.index;
                if !well_formed.get(i).copied().unwrap_or(false) {
                    continue; // already rejected by Istio's rules above
                }
                let path = format!("spec.configPatches[{i}]");
                let what = format!("{} {}", unsupported.apply_to, unsupported.operation);
                match &unsupported.reason {
                    UnsupportedReason::InvalidConfig(msg) => r.error(
                        &format!("{path}.patch.value"),
                        format!(
                            "invalid rate limit configuration in this {what} patch: {msg} \
                             (Envoy rejects it as well)"
                        ),
                    ),
                    UnsupportedReason::ApplyTo(_) => r.not_supported(
                        &path,
                        format!(
                            "sluice applies only the local_ratelimit and ratelimit HTTP filters; \
                             this patch ({what}) is ignored"
                        ),
                    ),
                    reason => r.not_supported(
                        &path,
                        format!(
                            "sluice applies only the local_ratelimit and ratelimit HTTP filters; \
                             this patch ({what}) is ignored: {reason}"
                        ),
                    ),
                }
            }
        }
    }
    for (index, name, has_bucket) in rate_limit_filters {
        if !has_bucket && !per_route_filters.contains(&name) {
            r.warning(
                &format!("spec.configPatches[{index}].patch.value"),
                format!(
                    "the local rate limit filter {name:?} has no token_bucket and no per-route \
                     configuration in this EnvoyFilter sets one: it limits nothing by itself"
                ),
            );
        }
    }
}

/// Istio's `validateEnvoyFilter`, for one patch. Returns false when Istio stops looking at the
/// patch (a rejection that makes the rest meaningless).
fn check_patch(r: &mut Report<'_, EnvoyFilter>, cp: &EnvoyConfigObjectPatch, path: &str) -> bool {
    if cp.apply_to == ApplyTo::Invalid {
        r.error(&format!("{path}.applyTo"), "Envoy filter: missing applyTo");
        return false;
    }
    let Some(patch) = &cp.patch else {
        r.error(path, "Envoy filter: missing patch");
        return false;
    };
    if patch.operation == PatchOperation::Invalid {
        r.error(
            &format!("{path}.patch.operation"),
            "Envoy filter: missing patch operation",
        );
        return false;
    }
    if patch.operation != PatchOperation::Remove && patch.value.is_none() {
        r.error(
            &format!("{path}.patch"),
            "Envoy filter: missing patch value for non-remove operation",
        );
        return false;
    }
    if patch.operation == PatchOperation::Remove && patch.value.is_some() {
        r.warning(
            &format!("{path}.patch.value"),
            "Envoy filter: a REMOVE patch takes no value; this value is ignored",
        );
    }
    let proxy_version = cp
        .match_
        .as_ref()
        .and_then(|m| m.proxy.as_ref())
        .and_then(|p| p.proxy_version.as_deref())
        .filter(|v| !v.is_empty());
    if let Some(re) = proxy_version
        && let Err(e) = regex::Regex::new(re)
    {
        r.error(
            &format!("{path}.match.proxy.proxyVersion"),
            format!("Envoy filter: invalid regex for proxy version, [{e}]"),
        );
        return false;
    }

    let Some(m) = &cp.match_ else { return true };
    let has_object_match =
        m.listener.is_some() || m.route_configuration.is_some() || m.cluster.is_some();
    match cp.apply_to {
        ApplyTo::Listener | ApplyTo::FilterChain | ApplyTo::NetworkFilter | ApplyTo::HttpFilter
            if has_object_match =>
        {
            let Some(listener) = &m.listener else {
                r.error(
                    &format!("{path}.match"),
                    "Envoy filter: applyTo for listener class objects cannot have non listener \
                     match",
                );
                return false;
            };
            let Some(filter) = listener
                .filter_chain
                .as_ref()
                .and_then(|fc| fc.filter.as_ref())
            else {
                return true;
            };
            let fpath = format!("{path}.match.listener.filterChain.filter");
            if matches!(cp.apply_to, ApplyTo::Listener | ApplyTo::FilterChain) {
                r.warning(
                    &fpath,
                    format!(
                        "Envoy filter: filter match has no effect when used with {}",
                        cp.apply_to
                    ),
                );
            }
            let name = filter.name.as_deref().unwrap_or_default();
            if name.is_empty() {
                r.error(&fpath, "Envoy filter: filter match has no name to match on");
                return false;
            }
            if let Some(sub) = &filter.sub_filter {
                if cp.apply_to != ApplyTo::HttpFilter {
                    r.error(
                        &format!("{fpath}.subFilter"),
                        "Envoy filter: subfilter match can be used with applyTo HTTP_FILTER only",
                    );
                    return false;
                }
                if name != HTTP_CONNECTION_MANAGER && name != "envoy.http_connection_manager" {
                    r.error(
                        &format!("{fpath}.subFilter"),
                        format!(
                            "Envoy filter: subfilter match requires filter match with \
                             {HTTP_CONNECTION_MANAGER}"
                        ),
                    );
                    return false;
                }
                if sub.name.as_deref().unwrap_or_default().is_empty() {
                    r.error(
                        &format!("{fpath}.subFilter"),
                        "Envoy filter: subfilter match has no name to match on",
                    );
                    return false;
                }
            }
            check_filter_name(r, name, &format!("{fpath}.name"));
            if let Some(sub) = filter.sub_filter.as_ref().and_then(|s| s.name.as_deref()) {
                check_filter_name(r, sub, &format!("{fpath}.subFilter.name"));
            }
        }
        ApplyTo::RouteConfiguration | ApplyTo::VirtualHost | ApplyTo::HttpRoute
            if has_object_match && m.route_configuration.is_none() =>
        {
            r.error(
                &format!("{path}.match"),
                "Envoy filter: applyTo for http route class objects cannot have non route \
                 configuration match",
            );
        }
        ApplyTo::Cluster if has_object_match && m.cluster.is_none() => {
            r.error(
                &format!("{path}.match"),
                "Envoy filter: applyTo for cluster class objects cannot have non cluster match",
            );
        }
        _ => {}
    }
    true
}

fn check_filter_name(r: &mut Report<'_, EnvoyFilter>, name: &str, path: &str) {
    if let Some((_, new)) = DEPRECATED_FILTER_NAMES.iter().find(|(old, _)| *old == name) {
        r.warning(
            path,
            format!("using deprecated filter name {name:?}; use {new:?} instead"),
        );
    }
}

/// The CRD's rules on a match: one object type at most, `waypoint` only with the WAYPOINT
/// context (and only it there), port numbers in range.
fn check_match_shape(r: &mut Report<'_, EnvoyFilter>, m: &EnvoyConfigObjectMatch, path: &str) {
    let objects = [
        m.listener.is_some(),
        m.route_configuration.is_some(),
        m.cluster.is_some(),
        m.waypoint.is_some(),
    ];
    if objects.iter().filter(|set| **set).count() > 1 {
        r.error(
            path,
            "only one of listener, routeConfiguration, cluster or waypoint may be set",
        );
    }
    let waypoint_context = m.context == PatchContext::Waypoint;
    if (m.waypoint.is_some() && !waypoint_context)
        || (waypoint_context
            && (m.listener.is_some() || m.route_configuration.is_some() || m.cluster.is_some()))
    {
        r.error(path, "only support waypointMatch when context is WAYPOINT");
    }
    let ports = [
        (
            "listener.portNumber",
            m.listener.as_ref().and_then(|l| l.port_number),
        ),
        (
            "listener.filterChain.destinationPort",
            m.listener
                .as_ref()
                .and_then(|l| l.filter_chain.as_ref())
                .and_then(|fc| fc.destination_port),
        ),
        (
            "routeConfiguration.portNumber",
            m.route_configuration.as_ref().and_then(|rc| rc.port_number),
        ),
        (
            "cluster.portNumber",
            m.cluster.as_ref().and_then(|c| c.port_number),
        ),
        (
            "waypoint.portNumber",
            m.waypoint.as_ref().and_then(|w| w.port_number),
        ),
    ];
    for (field, port) in ports {
        if port.is_some_and(|p| p > 65535) {
            r.error(&format!("{path}.{field}"), "port must be between 1-65535");
        }
    }
}

/// True when the patch's operation is relative to what another patch or Istio put there, so
/// that the order EnvoyFilters are applied in decides its effect (Istio's IST0151/IST0155,
/// which analysis reports: IST0155 depends on the other EnvoyFilters).
pub(crate) fn is_relative(cp: &EnvoyConfigObjectPatch) -> bool {
    let Some(patch) = &cp.patch else { return false };
    match patch.operation {
        PatchOperation::Remove => !route_class(cp.apply_to),
        PatchOperation::Replace => replace_applies(cp.apply_to),
        PatchOperation::InsertBefore | PatchOperation::InsertAfter => true,
        _ => false,
    }
}

fn route_class(apply_to: ApplyTo) -> bool {
    matches!(apply_to, ApplyTo::RouteConfiguration | ApplyTo::HttpRoute)
}

/// Where REPLACE means something: named filters, and virtual hosts (Istio's analyzer grid
/// expects no IST0152 for a REPLACE on VIRTUAL_HOST, only the relative-operation warning).
fn replace_applies(apply_to: ApplyTo) -> bool {
    matches!(
        apply_to,
        ApplyTo::HttpFilter | ApplyTo::NetworkFilter | ApplyTo::VirtualHost
    )
}

/// What Istio's EnvoyFilter analyzer says of one patch on its own, with its codes and levels.
fn check_analyzer_rules(r: &mut Report<'_, EnvoyFilter>, cp: &EnvoyConfigObjectPatch, path: &str) {
    let Some(patch) = &cp.patch else { return };
    let route_class = route_class(cp.apply_to);
    match patch.operation {
        PatchOperation::Add if route_class => {
            r.with_code(
                ADD_INCORRECTLY.0,
                Level::Error,
                path,
                ADD_INCORRECTLY.1.to_owned(),
            );
        }
        PatchOperation::Remove if route_class => {
            r.with_code(
                REMOVE_INCORRECTLY.0,
                Level::Error,
                path,
                REMOVE_INCORRECTLY.1.to_owned(),
            );
        }
        PatchOperation::Replace if !replace_applies(cp.apply_to) => {
            r.with_code(
                REPLACE_INCORRECTLY.0,
                Level::Error,
                path,
                REPLACE_INCORRECTLY.1.to_owned(),
            );
        }
        _ => {}
    }
    let inserts = matches!(
        patch.operation,
        PatchOperation::InsertBefore | PatchOperation::InsertAfter | PatchOperation::InsertFirst
    );
    if inserts
        && !matches!(
            cp.apply_to,
            ApplyTo::HttpFilter | ApplyTo::NetworkFilter | ApplyTo::ListenerFilter
        )
    {
        r.warning(
            &format!("{path}.patch.operation"),
            format!(
                "{} is only valid for HTTP_FILTER, NETWORK_FILTER and LISTENER_FILTER; on {} \
                 Istio ignores it",
                patch.operation, cp.apply_to
            ),
        );
    }
}

/// Envoy's constraints on a local rate limit that the model does not enforce, and settings
/// that make the limit do nothing.
fn check_rate_limit(
    r: &mut Report<'_, EnvoyFilter>,
    config: &LocalRateLimit,
    path: &str,
    filter_level: bool,
) {
    let bucket_error = |tb: &TokenBucket| (tb.max_tokens == 0).then_some("max_tokens");
    if let Some(field) = config.token_bucket.as_ref().and_then(bucket_error) {
        r.error(
            path,
            format!("token_bucket.{field}: must be greater than 0 (Envoy rejects an empty bucket)"),
        );
    }
    for (i, d) in config.descriptors.iter().enumerate() {
        if let Some(field) = d.token_bucket.as_ref().and_then(bucket_error) {
            r.error(
                path,
                format!(
                    "descriptors[{i}].token_bucket.{field}: must be greater than 0 (Envoy rejects \
                     an empty bucket)"
                ),
            );
        }
    }
    // Envoy's defaults for both are 0%: the limit is then never checked / never enforced.
    // Filter-level settings without a bucket are only a default for per-route configuration.
    if !filter_level || config.token_bucket.is_some() {
        let fractions = [
            (
                "filter_enabled",
                config.filter_enabled.is_none(),
                config.enabled_fraction(),
            ),
            (
                "filter_enforced",
                config.filter_enforced.is_none(),
                config.enforced_fraction(),
            ),
        ];
        for (field, unset, fraction) in fractions {
            if fraction == 0.0 {
                let why = if unset {
                    "is not set, and Envoy's default is 0%"
                } else {
                    "is 0%"
                };
                r.warning(
                    path,
                    format!(
                        "{field} {why}: the local rate limit is never {}",
                        if field == "filter_enabled" {
                            "checked"
                        } else {
                            "enforced"
                        }
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use sluice_model::{Diagnostic, Level};

    fn diags(spec: Value) -> Vec<Diagnostic> {
        let loaded = sluice_model::load_value(
            "ef.yaml",
            json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
                   "metadata": {"name": "ef", "namespace": "ns"}, "spec": spec}),
        );
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        // Analysis too: the relative-operation warnings (IST0151) are its.
        crate::check(&loaded.resources)
    }

    fn has(d: &[Diagnostic], level: Level, text: &str) -> bool {
        d.iter()
            .any(|d| d.level == level && d.message.contains(text))
    }

    fn rate_limit(value: Value) -> Value {
        json!({
            "applyTo": "HTTP_FILTER",
            "match": {"context": "GATEWAY", "listener": {"filterChain": {"filter": {
                "name": "envoy.filters.network.http_connection_manager"}}}},
            "patch": {"operation": "INSERT_FIRST", "value": {
                "name": "envoy.filters.http.local_ratelimit",
                "typed_config": {
                    "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                    "type_url": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                    "value": value
                }}}
        })
    }

    const ENABLED: &str =
        r#"{"runtime_key": "k", "default_value": {"numerator": 100, "denominator": "HUNDRED"}}"#;

    fn full(bucket: Value) -> Value {
        let enabled: Value = serde_json::from_str(ENABLED).unwrap_or(Value::Null);
        json!({"stat_prefix": "rl", "token_bucket": bucket,
               "filter_enabled": enabled, "filter_enforced": enabled})
    }

    #[test]
    fn istio_patch_rules() {
        let cases: &[(Value, Level, &str)] = &[
            (
                json!({"configPatches": [{"patch": {"operation": "ADD", "value": {}}}]}),
                Level::Error,
                "missing applyTo",
            ),
            (
                json!({"configPatches": [{"applyTo": "CLUSTER"}]}),
                Level::Error,
                "missing patch",
            ),
            (
                json!({"configPatches": [{"applyTo": "CLUSTER", "patch": {"value": {}}}]}),
                Level::Error,
                "missing patch operation",
            ),
            (
                json!({"configPatches": [{"applyTo": "CLUSTER", "patch": {"operation": "MERGE"}}]}),
                Level::Error,
                "missing patch value for non-remove operation",
            ),
            (
                json!({"configPatches": [{"applyTo": "CLUSTER", "match": {"proxy": {"proxyVersion": "1.(2"}},
                       "patch": {"operation": "REMOVE"}}]}),
                Level::Error,
                "invalid regex for proxy version",
            ),
            (
                json!({"configPatches": [{"applyTo": "HTTP_FILTER", "match": {"cluster": {"service": "a"}},
                       "patch": {"operation": "REMOVE"}}]}),
                Level::Error,
                "applyTo for listener class objects cannot have non listener match",
            ),
            (
                json!({"configPatches": [{"applyTo": "HTTP_ROUTE", "match": {"cluster": {"service": "a"}},
                       "patch": {"operation": "MERGE", "value": {}}}]}),
                Level::Error,
                "applyTo for http route class objects cannot have non route configuration match",
            ),
            (
                json!({"configPatches": [{"applyTo": "CLUSTER", "match": {"listener": {}},
                       "patch": {"operation": "MERGE", "value": {}}}]}),
                Level::Error,
                "applyTo for cluster class objects cannot have non cluster match",
            ),
            (
                json!({"configPatches": [{"applyTo": "HTTP_FILTER",
                       "match": {"listener": {"filterChain": {"filter": {"subFilter": {"name": "x"}}}}},
                       "patch": {"operation": "REMOVE"}}]}),
                Level::Error,
                "filter match has no name to match on",
            ),
            (
                json!({"configPatches": [{"applyTo": "NETWORK_FILTER",
                       "match": {"listener": {"filterChain": {"filter": {"name": "envoy.filters.network.http_connection_manager", "subFilter": {"name": "x"}}}}},
                       "patch": {"operation": "REMOVE"}}]}),
                Level::Error,
                "subfilter match can be used with applyTo HTTP_FILTER only",
            ),
            (
                json!({"configPatches": [{"applyTo": "HTTP_FILTER",
                       "match": {"listener": {"filterChain": {"filter": {"name": "envoy.filters.network.tcp_proxy", "subFilter": {"name": "x"}}}}},
                       "patch": {"operation": "REMOVE"}}]}),
                Level::Error,
                "subfilter match requires filter match with envoy.filters.network.http_connection_manager",
            ),
            (
                json!({"configPatches": [{"applyTo": "HTTP_FILTER",
                       "match": {"listener": {"filterChain": {"filter": {"name": "envoy.filters.network.http_connection_manager", "subFilter": {}}}}},
                       "patch": {"operation": "REMOVE"}}]}),
                Level::Error,
                "subfilter match has no name to match on",
            ),
            (
                json!({"configPatches": [{"applyTo": "LISTENER",
                       "match": {"listener": {"filterChain": {"filter": {"name": "envoy.filters.network.tcp_proxy"}}}},
                       "patch": {"operation": "MERGE", "value": {}}}]}),
                Level::Warning,
                "filter match has no effect when used with LISTENER",
            ),
            (
                json!({"configPatches": [{"applyTo": "HTTP_FILTER",
                       "match": {"listener": {"filterChain": {"filter": {"name": "envoy.http_connection_manager", "subFilter": {"name": "envoy.router"}}}}},
                       "patch": {"operation": "REMOVE"}}]}),
                Level::Warning,
                "using deprecated filter name \"envoy.router\"; use \"envoy.filters.http.router\" instead",
            ),
            (
                json!({"workloadSelector": {}, "configPatches": []}),
                Level::Warning,
                "will be applied to all services in namespace",
            ),
            (
                json!({"workloadSelector": {"labels": {"app": "*"}}}),
                Level::Error,
                "wildcard is not supported in selector",
            ),
            (
                json!({"configPatches": [{"applyTo": "CLUSTER", "match": {"context": "SIDECAR_INBOUND", "waypoint": {}},
                       "patch": {"operation": "REMOVE"}}]}),
                Level::Error,
                "only support waypointMatch when context is WAYPOINT",
            ),
        ];
        for (spec, level, text) in cases {
            let d = diags(spec.clone());
            assert!(
                has(&d, *level, text),
                "{spec}: want {level} {text:?}, got {d:?}"
            );
        }
    }

    #[test]
    fn analyzer_rules() {
        let patch = |apply_to: &str, op: &str| json!({"configPatches": [{"applyTo": apply_to, "patch": {"operation": op, "value": {"name": "x"}}}]});
        let cases = [
            (patch("HTTP_ROUTE", "ADD"), "IST0153"),
            (patch("ROUTE_CONFIGURATION", "REMOVE"), "IST0154"),
            (patch("CLUSTER", "REPLACE"), "IST0152"),
            (patch("HTTP_FILTER", "INSERT_BEFORE"), "IST0151"),
            (patch("NETWORK_FILTER", "REPLACE"), "IST0151"),
            (patch("VIRTUAL_HOST", "REPLACE"), "IST0151"),
        ];
        for (spec, code) in cases {
            let d = diags(spec.clone());
            assert!(
                d.iter().any(|d| d.code == code),
                "{spec}: want {code}, got {d:?}"
            );
        }
        let mut with_priority = patch("HTTP_FILTER", "INSERT_AFTER");
        with_priority["priority"] = json!(10);
        assert!(!diags(with_priority).iter().any(|d| d.code == "IST0151"));
        assert!(
            !diags(patch("VIRTUAL_HOST", "REPLACE"))
                .iter()
                .any(|d| d.code == "IST0152")
        );
        let d = diags(patch("CLUSTER", "INSERT_FIRST"));
        assert!(
            has(
                &d,
                Level::Warning,
                "INSERT_FIRST is only valid for HTTP_FILTER"
            ),
            "{d:?}"
        );
    }

    #[test]
    fn sluice_reports_ignored_patches_by_index() {
        let d = diags(json!({"configPatches": [
            rate_limit(full(json!({"max_tokens": 10, "tokens_per_fill": 10, "fill_interval": "1s"}))),
            {"applyTo": "CLUSTER", "patch": {"operation": "ADD", "value": {"name": "c"}}}
        ]}));
        assert!(!d.iter().any(|d| d.is_error()), "{d:?}");
        let ignored: Vec<_> = d.iter().filter(|d| d.code == "SLC0006").collect();
        assert_eq!(ignored.len(), 1, "{d:?}");
        assert_eq!(ignored[0].path.as_deref(), Some("spec.configPatches[1]"));
        assert!(
            ignored[0]
                .message
                .contains("sluice applies only the local_ratelimit and ratelimit HTTP filters")
        );
    }

    #[test]
    fn rate_limit_values() {
        let d = diags(
            json!({"configPatches": [rate_limit(full(json!({"max_tokens": 0, "fill_interval": "1s"})))]}),
        );
        assert!(
            has(&d, Level::Error, "max_tokens: must be greater than 0"),
            "{d:?}"
        );
        let d = diags(
            json!({"configPatches": [rate_limit(full(json!({"max_tokens": 5, "fill_interval": "0s"})))]}),
        );
        assert!(
            has(&d, Level::Error, "invalid rate limit configuration"),
            "{d:?}"
        );
        let d = diags(
            json!({"configPatches": [rate_limit(json!({"stat_prefix": "rl",
            "token_bucket": {"max_tokens": 5, "fill_interval": "1s"}}))]}),
        );
        assert!(
            has(&d, Level::Warning, "filter_enabled is not set"),
            "{d:?}"
        );
        assert!(
            has(&d, Level::Warning, "filter_enforced is not set"),
            "{d:?}"
        );
        let d = diags(json!({"configPatches": [rate_limit(json!({"stat_prefix": "rl"}))]}));
        assert!(has(&d, Level::Warning, "limits nothing by itself"), "{d:?}");
    }
}
