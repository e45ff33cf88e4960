//! EnvoyFilter → Envoy's HTTP local rate limit, per HTTP route configuration.
//!
//! Which EnvoyFilters apply follows Istio (`pilot/pkg/model/push_context.go` `EnvoyFilters`,
//! `getMatchedEnvoyFilters`): those of the root namespace and of the proxy's namespace whose
//! `workloadSelector.labels` the proxy's labels carry (no selector: every proxy of that
//! namespace; of the root namespace: every proxy), ordered by `priority`, then creation time,
//! then `name.namespace`. Patches apply in that order, and in `configPatches` order within one
//! EnvoyFilter.
//!
//! What a patch matches follows Istio's `pilot/pkg/networking/core/envoyfilter/`:
//! - `match.context`: `GATEWAY` at the gateway, `SIDECAR_OUTBOUND` in the sidecar, `ANY` at
//!   both. `SIDECAR_INBOUND` patches configure a workload's inbound listener, which sluice does
//!   not run: reported, never applied.
//! - `HTTP_FILTER` (`listener_patch.go`): `listener.portNumber` and `listener.name` restrict
//!   the listeners; the filter joins the HTTP filter chain of every HTTP route configuration
//!   there, before the router (`INSERT_FIRST` puts it at the head).
//! - `VIRTUAL_HOST` / `HTTP_ROUTE` `MERGE` (`route_patch.go`): `routeConfiguration.portNumber`,
//!   `name`, `vhost.name`, `vhost.domainName`, `vhost.route.name` and `vhost.route.action`
//!   select where `typed_per_filter_config` is set; a later patch replaces an earlier one's
//!   settings for the same filter.
//!
//! The global rate limit filter (`envoy.filters.http.ratelimit`) joins the chain the same way;
//! `rate_limits` merged on virtual hosts and routes become the descriptor actions it evaluates,
//! and the rate-limit service configurations (ConfigMap `config.yaml` or bare files) become the
//! descriptor trees by domain.
//!
//! Patches sluice cannot apply are reported by validation (`validate/envoy_filter.rs`); they are
//! skipped here without a second message.

use std::collections::BTreeMap;

use sluice_model::networking::EnvoyFilter;
use sluice_model::networking::envoy_filter::{
    ApplyTo, EnvoyConfigObjectMatch, GlobalRateLimitFilter, HeaderAppendAction, HeaderMatch,
    HeaderMatcher, HeaderValueOption, LocalRateLimit, LocalRateLimitPatch, PatchContext,
    PatchOperation, RateLimit, RateLimitAction, RouteAction as PatchRouteAction,
};
use sluice_model::rate_limit_service::{Descriptor, RateLimitConfig, Unit};
use sluice_model::{Level, Resource};
use sluice_snapshot::listener::{App, Listener};
use sluice_snapshot::matching::{Regex, StringMatcher};
use sluice_snapshot::ratelimit::{
    AppendAction, DescriptorAction, DescriptorNode, GlobalFilter, HeaderCondition, HeaderToAdd,
    HttpRateLimits, Limit, LocalRateLimit as SnapLimit, RateLimitFilter, RateLimitPolicy,
    TokenBucket,
};
use sluice_snapshot::route::{Route, RouteAction, VirtualHost};

use super::registry::istio_order;
use super::{Ctx, NOT_SUPPORTED, Role};

/// Rate limits by domain: the rate-limit service's descriptor trees.
pub type Domains = BTreeMap<String, Vec<DescriptorNode>>;

/// The rate limits of `listeners`' HTTP route configurations, by route configuration name, and
/// the rate-limit service's configuration by domain.
pub fn build(
    cx: &mut Ctx<'_>,
    listeners: &[Listener],
) -> (BTreeMap<String, HttpRateLimits>, Domains) {
    let domains = domains(cx);
    let mut out: BTreeMap<String, HttpRateLimits> = BTreeMap::new();
    for r in selected(cx) {
        for patch in r.spec.local_rate_limit().into_iter().flatten() {
            let m = match &patch {
                LocalRateLimitPatch::Filter(f) => &f.match_,
                LocalRateLimitPatch::Global(g) => &g.match_,
                LocalRateLimitPatch::Route(rt) => &rt.match_,
            };
            if !context_applies(cx, r, m.context, patch.index()) {
                continue;
            }
            match patch {
                LocalRateLimitPatch::Filter(f) => {
                    let path = format!("spec.configPatches[{}].patch.value", f.index);
                    warn_unenforced(cx, r, &f.config, &path);
                    let filter = RateLimitFilter {
                        name: f.name.clone(),
                        origin: format!("{} configPatches[{}]", r.origin(), f.index),
                        disabled: f.disabled,
                        config: lower_config(&f.config),
                    };
                    for (port, listener) in listeners.iter().map(|l| (l.port, l)) {
                        if !listener_matches(&f.match_, port, &listener.name) {
                            continue;
                        }
                        for chain in &listener.chains {
                            let App::Http { route_config, .. } = &chain.app else {
                                continue;
                            };
                            let limits = out.entry(route_config.clone()).or_default();
                            let filters = &mut limits.filters;
                            if filters
                                .iter()
                                .any(|x| x.origin == filter.origin && x.name == filter.name)
                            {
                                continue; // one route configuration on several chains
                            }
                            if f.operation == PatchOperation::InsertFirst {
                                filters.insert(0, filter.clone());
                                if let Some(g) = &mut limits.global {
                                    g.position += 1;
                                }
                            } else {
                                filters.push(filter.clone());
                            }
                        }
                    }
                }
                LocalRateLimitPatch::Global(g) => {
                    add_global(cx, r, &g, listeners, &domains, &mut out);
                }
                LocalRateLimitPatch::Route(rt) => {
                    let policies = lower_policies(cx, r, rt.index, &rt.rate_limits);
                    if !policies.is_empty() {
                        merge_policies(&rt.match_, rt.apply_to, &policies, listeners, &mut out);
                    }
                    let path = format!(
                        "spec.configPatches[{}].patch.value.typed_per_filter_config",
                        rt.index
                    );
                    for config in rt.per_filter_config.values() {
                        warn_unenforced(cx, r, config, &path);
                    }
                    for listener in listeners {
                        for chain in &listener.chains {
                            let App::Http {
                                route_config,
                                virtual_hosts,
                                ..
                            } = &chain.app
                            else {
                                continue;
                            };
                            if !route_config_matches(&rt.match_, listener.port, route_config) {
                                continue;
                            }
                            for vh in virtual_hosts
                                .iter()
                                .filter(|v| vhost_matches(&rt.match_, v))
                            {
                                for (name, config) in &rt.per_filter_config {
                                    let limits = out.entry(route_config.clone()).or_default();
                                    let per = limits.per_route.entry(name.clone()).or_default();
                                    let lowered = lower_config(config);
                                    if rt.apply_to == ApplyTo::VirtualHost {
                                        per.virtual_hosts.insert(vh.name.clone(), lowered);
                                        continue;
                                    }
                                    for route in
                                        vh.routes.iter().filter(|x| route_matches(&rt.match_, x))
                                    {
                                        per.routes
                                            .entry(vh.name.clone())
                                            .or_default()
                                            .insert(route.name.clone(), lowered.clone());
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // Per-route settings without a filter of their name in the chain do nothing (Envoy looks
    // them up only from a filter).
    for limits in out.values_mut() {
        let names: Vec<String> = limits.filters.iter().map(|f| f.name.clone()).collect();
        limits.per_route.retain(|name, _| names.contains(name));
    }
    for limits in out.values_mut() {
        if limits.global.is_none() {
            // Without the filter, `rate_limits` produce descriptors nobody reads.
            limits.actions = Default::default();
        }
    }
    out.retain(|_, l| !l.filters.is_empty() || l.global.is_some());
    (out, domains)
}

/// Adds a global rate limit filter to the HTTP route configurations its patch matches.
fn add_global(
    cx: &mut Ctx<'_>,
    r: &Resource<EnvoyFilter>,
    g: &GlobalRateLimitFilter,
    listeners: &[Listener],
    domains: &Domains,
    out: &mut BTreeMap<String, HttpRateLimits>,
) {
    let path = format!("spec.configPatches[{}].patch.value", g.index);
    if !domains.contains_key(&g.config.domain) {
        cx.report(
            r,
            NOT_SUPPORTED,
            Level::Warning,
            &format!("{path}.typed_config.domain"),
            format!(
                "no rate-limit service configuration (a ConfigMap with config.yaml, or a file \
                 with `domain:` and `descriptors:`) has domain {:?}: this filter limits nothing",
                g.config.domain
            ),
        );
    }
    if g.disabled {
        cx.unsupported(
            r,
            &format!("{path}.disabled"),
            "a disabled global rate limit filter",
        );
        return;
    }
    let c = &g.config;
    let filter = GlobalFilter {
        name: g.name.clone(),
        origin: format!("{} configPatches[{}]", r.origin(), g.index),
        position: 0,
        domain: c.domain.clone(),
        stage: c.stage,
        timeout: c.timeout(),
        failure_mode_deny: c.failure_mode_deny,
        status: c
            .rate_limited_status
            .map(|s| s.code)
            .filter(|c| *c >= 400)
            .unwrap_or(429),
        error_status: c.status_on_error.map(|s| s.code).unwrap_or(500),
        x_envoy_ratelimited: !c.disable_x_envoy_ratelimited_header,
        x_ratelimit_headers: c.enable_x_ratelimit_headers
            == Some(
                sluice_model::networking::envoy_filter::XRateLimitHeadersRfcVersion::DraftVersion03,
            ),
    };
    for listener in listeners {
        if !listener_matches(&g.match_, listener.port, &listener.name) {
            continue;
        }
        for chain in &listener.chains {
            let App::Http { route_config, .. } = &chain.app else {
                continue;
            };
            let limits = out.entry(route_config.clone()).or_default();
            match &limits.global {
                Some(x) if x.origin == filter.origin => {} // one route configuration, two chains
                Some(x) => cx.unsupported(
                    r,
                    &path,
                    &format!(
                        "a second global rate limit filter on {route_config} (the first is \
                         {}): it",
                        x.origin
                    ),
                ),
                None => {
                    let position = if g.operation == PatchOperation::InsertFirst {
                        0
                    } else {
                        limits.filters.len()
                    };
                    limits.global = Some(GlobalFilter {
                        position,
                        ..filter.clone()
                    });
                }
            }
        }
    }
}

/// Adds `policies` to the virtual hosts / routes a `VIRTUAL_HOST` / `HTTP_ROUTE` MERGE
/// matches (a protobuf merge appends repeated fields).
fn merge_policies(
    m: &EnvoyConfigObjectMatch,
    apply_to: ApplyTo,
    policies: &[RateLimitPolicy],
    listeners: &[Listener],
    out: &mut BTreeMap<String, HttpRateLimits>,
) {
    for listener in listeners {
        for chain in &listener.chains {
            let App::Http {
                route_config,
                virtual_hosts,
                ..
            } = &chain.app
            else {
                continue;
            };
            if !route_config_matches(m, listener.port, route_config) {
                continue;
            }
            let actions = &mut out.entry(route_config.clone()).or_default().actions;
            for vh in virtual_hosts.iter().filter(|v| vhost_matches(m, v)) {
                if apply_to == ApplyTo::VirtualHost {
                    let list = actions.virtual_hosts.entry(vh.name.clone()).or_default();
                    if !list.ends_with(policies) {
                        list.extend(policies.iter().cloned());
                    }
                    continue;
                }
                for route in vh.routes.iter().filter(|x| route_matches(m, x)) {
                    let list = actions
                        .routes
                        .entry(vh.name.clone())
                        .or_default()
                        .entry(route.name.clone())
                        .or_default();
                    if !list.ends_with(policies) {
                        list.extend(policies.iter().cloned());
                    }
                }
            }
        }
    }
}

/// The model's `rate_limits` as the proxy evaluates them; actions sluice cannot evaluate are
/// reported and drop their policy (a descriptor missing an entry would match other limits).
fn lower_policies(
    cx: &mut Ctx<'_>,
    r: &Resource<EnvoyFilter>,
    index: usize,
    rate_limits: &[RateLimit],
) -> Vec<RateLimitPolicy> {
    let mut out = Vec::new();
    'policy: for (i, rl) in rate_limits.iter().enumerate() {
        let mut actions = Vec::with_capacity(rl.actions.len());
        for (j, a) in rl.actions.iter().enumerate() {
            let path =
                format!("spec.configPatches[{index}].patch.value.rate_limits[{i}].actions[{j}]");
            match lower_action(cx, a) {
                Ok(a) => actions.push(a),
                Err(why) => {
                    cx.report(
                        r,
                        NOT_SUPPORTED,
                        Level::Warning,
                        &path,
                        format!("{why}: this rate limit policy is left out"),
                    );
                    continue 'policy;
                }
            }
        }
        out.push(RateLimitPolicy {
            stage: rl.stage,
            actions,
        });
    }
    out
}

fn lower_action(cx: &Ctx<'_>, a: &RateLimitAction) -> Result<DescriptorAction, String> {
    Ok(match a {
        RateLimitAction::SourceCluster => DescriptorAction::SourceCluster {
            value: source_cluster(cx),
        },
        RateLimitAction::DestinationCluster => DescriptorAction::DestinationCluster,
        RateLimitAction::RequestHeaders {
            header_name,
            descriptor_key,
            skip_if_absent,
        } => DescriptorAction::RequestHeaders {
            header: header_name.to_ascii_lowercase(),
            key: descriptor_key.clone(),
            skip_if_absent: *skip_if_absent,
        },
        RateLimitAction::RemoteAddress => DescriptorAction::RemoteAddress,
        RateLimitAction::GenericKey {
            descriptor_value,
            descriptor_key,
        } => DescriptorAction::GenericKey {
            key: descriptor_key
                .clone()
                .unwrap_or_else(|| "generic_key".to_owned()),
            value: descriptor_value.clone(),
        },
        RateLimitAction::MaskedRemoteAddress {
            v4_prefix_mask_len,
            v6_prefix_mask_len,
        } => {
            let v4 = v4_prefix_mask_len.unwrap_or(32);
            let v6 = v6_prefix_mask_len.unwrap_or(128);
            if v4 > 32 || v6 > 128 {
                return Err(format!(
                    "masked_remote_address prefix lengths {v4}/{v6} are out of range (32/128)"
                ));
            }
            DescriptorAction::MaskedRemoteAddress {
                v4_prefix: v4 as u8,
                v6_prefix: v6 as u8,
            }
        }
        RateLimitAction::HeaderValueMatch {
            descriptor_key,
            descriptor_value,
            expect_match,
            headers,
        } => DescriptorAction::HeaderValueMatch {
            key: descriptor_key
                .clone()
                .unwrap_or_else(|| "header_match".to_owned()),
            value: descriptor_value.clone(),
            expect_match: *expect_match,
            headers: headers
                .iter()
                .map(header_condition)
                .collect::<Result<_, _>>()?,
        },
        RateLimitAction::Expression {
            descriptor_key,
            text,
            skip_if_error,
        } => match text.trim() {
            "source.principal" | "connection.uri_san_peer_certificate" => {
                DescriptorAction::SourcePrincipal {
                    key: descriptor_key.clone(),
                    skip_if_absent: *skip_if_error,
                }
            }
            other => {
                return Err(format!(
                    "the CEL expression {other:?} is not supported (sluice evaluates \
                     `source.principal` and `connection.uri_san_peer_certificate`)"
                ));
            }
        },
    })
}

/// Envoy's service cluster of this proxy (Istio: `<app label>.<namespace>`), the
/// `source_cluster` entry's value.
fn source_cluster(cx: &Ctx<'_>) -> String {
    let labels = &cx.opts.labels;
    let app = labels
        .get("app")
        .or_else(|| labels.get("istio"))
        .map_or("sluice", String::as_str);
    format!("{app}.{}", cx.opts.namespace)
}

fn header_condition(h: &HeaderMatcher) -> Result<HeaderCondition, String> {
    let flags = if h.ignore_case { "(?si)" } else { "(?s)" };
    let regex = |src: String| {
        Regex::new(&src)
            .map(StringMatcher::Regex)
            .map_err(|e| format!("header {:?}: invalid regex: {e}", h.name))
    };
    let mut present = false;
    let matcher = match &h.matcher {
        HeaderMatch::Exact(v) => StringMatcher::Exact(v.clone()),
        HeaderMatch::Prefix(v) => StringMatcher::Prefix(v.clone()),
        HeaderMatch::Suffix(v) => regex(format!("{flags}.*{}", regex::escape(v)))?,
        HeaderMatch::Contains(v) => regex(format!("{flags}.*{}.*", regex::escape(v)))?,
        HeaderMatch::Regex(v) => regex(v.clone())?,
        HeaderMatch::Present(p) => {
            present = *p;
            StringMatcher::Present
        }
    };
    Ok(HeaderCondition {
        name: h.name.clone(),
        matcher,
        present,
        ignore_case: h.ignore_case,
        invert: h.invert_match,
        missing_as_empty: h.treat_missing_header_as_empty,
    })
}

/// The rate-limit service configurations, by domain. A domain configured twice is an error
/// (the service refuses to load); the first is kept.
fn domains(cx: &mut Ctx<'_>) -> Domains {
    let mut out = Domains::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for r in &cx.resources.rate_limit_configs {
        let RateLimitConfig {
            domain,
            descriptors,
        } = &r.spec;
        if let Some(first) = seen.get(domain) {
            let message = format!(
                "domain {domain:?} is already configured by {first}; this configuration is \
                 ignored (the rate-limit service refuses duplicate domains)"
            );
            cx.report(r, crate::validate::INVALID, Level::Error, "domain", message);
            continue;
        }
        seen.insert(domain.clone(), r.origin());
        out.insert(domain.clone(), descriptors.iter().map(node).collect());
    }
    out
}

fn node(d: &Descriptor) -> DescriptorNode {
    DescriptorNode {
        key: d.key.clone(),
        value: d.value.clone().filter(|v| !v.is_empty()),
        limit: d.rate_limit.as_ref().map(|l| {
            let unit = l.unit.unwrap_or(Unit::Second);
            Limit {
                requests_per_unit: if l.unlimited {
                    None
                } else {
                    Some(l.requests_per_unit.unwrap_or(0))
                },
                unit_seconds: unit_seconds(unit),
                unit: unit.to_string(),
                shadow_mode: d.shadow_mode,
            }
        }),
        descriptors: d.descriptors.iter().map(node).collect(),
    }
}

/// The service's unit lengths (`UnitToDivider`): a month is 30 days, a year 365.
fn unit_seconds(unit: Unit) -> u64 {
    match unit {
        Unit::Second => 1,
        Unit::Minute => 60,
        Unit::Hour => 3600,
        Unit::Day => 86_400,
        Unit::Week => 7 * 86_400,
        Unit::Month => 30 * 86_400,
        Unit::Year => 365 * 86_400,
    }
}

/// The EnvoyFilters that select this proxy, in Istio's order.
fn selected<'a>(cx: &Ctx<'a>) -> Vec<&'a Resource<EnvoyFilter>> {
    let root = cx.reg.root_ns.as_str();
    let ns = cx.opts.namespace.as_str();
    let labels = &cx.opts.labels;
    let mut out: Vec<&Resource<EnvoyFilter>> = cx
        .resources
        .envoy_filters
        .iter()
        .filter(|r| r.namespace() == root || r.namespace() == ns)
        // targetRefs select Kubernetes Gateways and Services, which sluice does not have.
        .filter(|r| r.spec.target_refs.is_empty())
        .filter(|r| {
            r.spec
                .workload_selector
                .as_ref()
                .is_none_or(|s| s.matches(labels))
        })
        .collect();
    out.sort_by_key(|r| (r.spec.priority.unwrap_or(0), istio_order(r)));
    out
}

fn context_applies(
    cx: &mut Ctx<'_>,
    r: &Resource<EnvoyFilter>,
    context: PatchContext,
    index: usize,
) -> bool {
    match (context, cx.role()) {
        (PatchContext::Any, _)
        | (PatchContext::Gateway, Role::Gateway)
        | (PatchContext::SidecarOutbound, Role::Sidecar) => true,
        (PatchContext::SidecarInbound, _) => {
            cx.report(
                r,
                NOT_SUPPORTED,
                Level::Warning,
                &format!("spec.configPatches[{index}].match.context"),
                "SIDECAR_INBOUND patches configure a workload's inbound listener, which sluice \
                 does not run (it proxies outbound traffic): this rate limit is not applied; \
                 use GATEWAY (egress gateway) or SIDECAR_OUTBOUND",
            );
            false
        }
        _ => false,
    }
}

fn warn_unenforced(cx: &mut Ctx<'_>, r: &Resource<EnvoyFilter>, c: &LocalRateLimit, path: &str) {
    if !c.descriptors.is_empty() {
        cx.unsupported(
            r,
            path,
            "local rate limit descriptors (buckets per request descriptor)",
        );
    }
    if c.local_rate_limit_per_downstream_connection == Some(true) {
        cx.unsupported(r, path, "local_rate_limit_per_downstream_connection");
    }
}

fn listener_matches(m: &EnvoyConfigObjectMatch, port: u16, name: &str) -> bool {
    let Some(l) = &m.listener else {
        return true;
    };
    l.port_number.is_none_or(|p| p == u32::from(port)) && set(&l.name).is_none_or(|n| n == name)
}

fn route_config_matches(m: &EnvoyConfigObjectMatch, port: u16, route_config: &str) -> bool {
    let Some(rc) = &m.route_configuration else {
        return true;
    };
    rc.port_number.is_none_or(|p| p == u32::from(port))
        && set(&rc.name).is_none_or(|n| n == route_config)
}

fn vhost_matches(m: &EnvoyConfigObjectMatch, vh: &VirtualHost) -> bool {
    let Some(v) = m
        .route_configuration
        .as_ref()
        .and_then(|rc| rc.vhost.as_ref())
    else {
        return true;
    };
    set(&v.name).is_none_or(|n| n == vh.name)
        && set(&v.domain_name).is_none_or(|d| vh.domains.iter().any(|h| h.matches(d)))
}

fn route_matches(m: &EnvoyConfigObjectMatch, route: &Route) -> bool {
    let Some(rm) = m
        .route_configuration
        .as_ref()
        .and_then(|rc| rc.vhost.as_ref())
        .and_then(|v| v.route.as_ref())
    else {
        return true;
    };
    let action = matches!(
        (&rm.action, &route.action),
        (PatchRouteAction::Any, _)
            | (PatchRouteAction::Route, RouteAction::Forward(_))
            | (PatchRouteAction::Redirect, RouteAction::Redirect(_))
            | (
                PatchRouteAction::DirectResponse,
                RouteAction::DirectResponse { .. }
            )
    );
    action && set(&rm.name).is_none_or(|n| n == route.name)
}

/// A match field's value; empty is unset, as proto3 strings are in Istio (the task's
/// `vhost: {name: ""}` matches every virtual host).
fn set(field: &Option<String>) -> Option<&str> {
    field.as_deref().filter(|s| !s.is_empty())
}

/// The model's configuration, with Envoy's defaults made explicit.
fn lower_config(c: &LocalRateLimit) -> SnapLimit {
    SnapLimit {
        stat_prefix: c.stat_prefix.clone(),
        token_bucket: c.token_bucket.map(|tb| TokenBucket {
            max_tokens: tb.max_tokens,
            tokens_per_fill: tb.tokens_per_fill(),
            fill_interval: tb.fill_interval.as_std(),
        }),
        enabled_percent: c.enabled_fraction() * 100.0,
        enforced_percent: c.enforced_fraction() * 100.0,
        status: c.status_code(),
        response_headers_to_add: c.response_headers_to_add.iter().map(header).collect(),
        request_headers_to_add_when_not_enforced: c
            .request_headers_to_add_when_not_enforced
            .iter()
            .map(header)
            .collect(),
    }
}

fn header(h: &HeaderValueOption) -> HeaderToAdd {
    HeaderToAdd {
        name: h.header.key.to_ascii_lowercase(),
        value: h.header.value.clone(),
        action: match h.effective_action() {
            HeaderAppendAction::AppendIfExistsOrAdd => AppendAction::AppendIfExistsOrAdd,
            HeaderAppendAction::AddIfAbsent => AppendAction::AddIfAbsent,
            HeaderAppendAction::OverwriteIfExistsOrAdd => AppendAction::OverwriteIfExistsOrAdd,
            HeaderAppendAction::OverwriteIfExists => AppendAction::OverwriteIfExists,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::testing::{has, load};
    use super::super::{CompileOptions, compile};
    use super::*;

    const ACCEPTANCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/acceptance");

    fn acceptance(file: &str) -> String {
        std::fs::read_to_string(format!("{ACCEPTANCE}/{file}")).expect("acceptance file")
    }

    /// An HTTP server on port 80 of the gateway, routing `api.example.com` (route `api`) and
    /// `other.example.com`.
    const GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 8080, name: http2, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: istio-system}
spec:
  hosts: [api.example.com, other.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: istio-system}
spec:
  hosts: [api.example.com]
  gateways: [gw]
  http:
  - name: api
    route: [{destination: {host: api.example.com, port: {number: 80}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: other, namespace: istio-system}
spec:
  hosts: [other.example.com]
  gateways: [gw]
  http:
  - name: other
    route: [{destination: {host: other.example.com, port: {number: 80}}}]
"#;

    fn gateway_with(extra: &str) -> (sluice_snapshot::Snapshot, Vec<sluice_model::Diagnostic>) {
        compile(
            &load(&format!("{GATEWAY}\n---\n{extra}")),
            &CompileOptions::gateway(),
        )
    }

    /// The Istio task's filter (06) as written: SIDECAR_INBOUND on `app: productpage`.
    #[test]
    fn task_filter_sidecar_inbound_is_reported_not_applied() {
        let task = acceptance("istio-tasks/rate-limit/06-local_rate_limit_2.yaml");
        let mut opts = CompileOptions::sidecar("default");
        opts.labels = BTreeMap::from([("app".to_owned(), "productpage".to_owned())]);
        let (s, diags) = compile(&load(&task), &opts);
        assert!(s.rate_limits.is_empty());
        assert!(has(&diags, NOT_SUPPORTED, "SIDECAR_INBOUND"), "{diags:#?}");
        // A workload the selector does not name hears nothing about it.
        let (_, diags) = compile(&load(&task), &CompileOptions::sidecar("default"));
        assert!(!has(&diags, NOT_SUPPORTED, "SIDECAR_INBOUND"));
    }

    /// The task's filter at the gateway: 4 tokens per 60 s on every HTTP route configuration.
    #[test]
    fn task_filter_in_gateway_context() {
        let task = acceptance("istio-tasks/rate-limit/06-local_rate_limit_2.yaml")
            .replace("SIDECAR_INBOUND", "GATEWAY")
            .replace("app: productpage", "istio: egressgateway");
        let (s, diags) = gateway_with(&task);
        assert!(diags.is_empty(), "{diags:#?}");
        assert_eq!(
            s.rate_limits.keys().collect::<Vec<_>>(),
            ["http.80", "http.8080"]
        );
        let tb = s.rate_limits["http.80"].filters[0]
            .config
            .token_bucket
            .expect("bucket");
        assert_eq!((tb.max_tokens, tb.tokens_per_fill), (4, 4));
        assert_eq!(tb.fill_interval, std::time::Duration::from_secs(60));

        // listener.portNumber restricts it to one port.
        let one_port = task.replace(
            "        listener:\n",
            "        listener:\n          portNumber: 8080\n",
        );
        let (s, _) = gateway_with(&one_port);
        assert_eq!(s.rate_limits.keys().collect::<Vec<_>>(), ["http.8080"]);
    }

    /// The task's per-route form (07), at the gateway: the filter without a bucket, the bucket
    /// on the routes of one virtual host.
    #[test]
    fn task_per_route_form_in_gateway_context() {
        let task = acceptance("istio-tasks/rate-limit/07-local_rate_limit_3.yaml")
            .replace("SIDECAR_INBOUND", "GATEWAY")
            .replace("app: productpage", "istio: egressgateway")
            .replace("inbound|http|9080", "api.example.com:80");
        let (s, diags) = gateway_with(&task);
        assert!(diags.is_empty(), "{diags:#?}");
        let limits = &s.rate_limits["http.80"];
        assert!(limits.filters[0].config.token_bucket.is_none());
        let per = &limits.per_route["envoy.filters.http.local_ratelimit"];
        let c = per
            .lookup("api.example.com:80", Some("api"))
            .expect("route config");
        assert_eq!(c.token_bucket.map(|t| t.max_tokens), Some(4));
        assert!(per.lookup("other.example.com:80", Some("other")).is_none());
        // Port 8080's virtual host has another name: no per-route settings there.
        assert!(!s.rate_limits["http.8080"].per_route.contains_key("x"));
        assert!(
            s.rate_limits["http.8080"]
                .per_route
                .get("envoy.filters.http.local_ratelimit")
                .is_none_or(|p| p.lookup("api.example.com:80", Some("api")).is_none())
        );
    }

    /// Istio's integration test filter (`enable_envoy_local_ratelimit.yaml`): no context (ANY),
    /// selector `app: clt`, in the root namespace: the sidecar of any namespace with that label.
    #[test]
    fn integration_filter_applies_to_the_selected_sidecar() {
        let f =
            acceptance("outbound-traffic-policy/local-ratelimit/enable_envoy_local_ratelimit.yaml");
        let vs = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: srv, namespace: echo}
spec:
  hosts: [srv.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
"#;
        let res = load(&format!("{f}\n---\n{vs}"));
        let mut opts = CompileOptions::sidecar("echo");
        opts.labels = BTreeMap::from([("app".to_owned(), "clt".to_owned())]);
        let (s, _) = compile(&res, &opts);
        assert!(!s.rate_limits.is_empty(), "{:#?}", s.listeners);
        let tb = s.rate_limits.values().next().expect("one").filters[0]
            .config
            .token_bucket
            .expect("bucket");
        assert_eq!((tb.max_tokens, tb.fill_interval.as_secs()), (1, 600));
        let (other, _) = compile(&res, &CompileOptions::sidecar("echo"));
        assert!(other.rate_limits.is_empty(), "not selected without app=clt");
    }

    /// Istio's order: priority first, then creation time and name; INSERT_FIRST at the head.
    #[test]
    fn filters_follow_priority_and_insert_first() {
        let filter = |name: &str, priority: i32, op: &str, max: u32| {
            format!(
                r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: {name}, namespace: istio-system}}
spec:
  priority: {priority}
  configPatches:
  - applyTo: HTTP_FILTER
    match: {{context: GATEWAY}}
    patch:
      operation: {op}
      value:
        name: rl-{name}
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          stat_prefix: {name}
          token_bucket: {{max_tokens: {max}, fill_interval: 1s}}
"#
            )
        };
        let yaml = [
            filter("a", 10, "ADD", 1),
            filter("b", -5, "ADD", 2),
            filter("c", 0, "INSERT_FIRST", 3),
            filter("d", 0, "ADD", 4),
        ]
        .join("---\n");
        let (s, _) = gateway_with(&yaml);
        let names: Vec<&str> = s.rate_limits["http.80"]
            .filters
            .iter()
            .map(|f| f.config.stat_prefix.as_str())
            .collect();
        assert_eq!(names, ["c", "b", "d", "a"]);
    }

    /// Istio's global rate-limit task (`tasks/policy-enforcement/rate-limit`, files 01–05) as
    /// written, at a gateway labelled `istio: ingressgateway`: the ConfigMap's descriptor tree,
    /// the filter inserted before the router, the virtual-host `:path` action (matched with
    /// `vhost.name: ""`, proto3's unset) and the route `api`'s `header_value_match`.
    fn istio_global_task() -> (sluice_snapshot::Snapshot, Vec<sluice_model::Diagnostic>) {
        let files = [
            "istio-tasks/rate-limit/01-global_rate_limit_1.yaml",
            "istio-tasks/rate-limit/02-global_rate_limit_3.yaml",
            "istio-tasks/rate-limit/03-global_rate_limit_4.yaml",
            "istio-tasks/rate-limit/04-global_rate_limit_advanced_case_1.yaml",
            "istio-tasks/rate-limit/05-global_rate_limit_advanced_case_2.yaml",
        ];
        let mut yaml = String::from(
            r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: productpage, namespace: default}
spec:
  hosts: [productpage.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: DNS
"#,
        );
        for f in files {
            yaml.push_str("---\n");
            yaml.push_str(&acceptance(f));
        }
        let mut opts = CompileOptions::gateway();
        opts.labels = BTreeMap::from([("istio".to_owned(), "ingressgateway".to_owned())]);
        opts.namespace = "istio-system".into();
        compile(&load(&yaml), &opts)
    }

    #[test]
    fn istio_global_rate_limit_task_is_lowered() {
        let (s, diags) = istio_global_task();
        let limits = &s.rate_limits["http.8080"];
        let g = limits.global.as_ref().expect("the global filter");
        assert_eq!(g.domain, "ratelimit");
        assert!(g.failure_mode_deny);
        assert_eq!(g.timeout, std::time::Duration::from_secs(10));
        assert_eq!((g.status, g.error_status), (429, 500));
        assert!(g.x_envoy_ratelimited);
        // 03: every virtual host gets the `:path` action.
        let vh = limits.actions.virtual_hosts.keys().next().expect("a vhost");
        assert_eq!(vh, "*:8080");
        let vh_policies = &limits.actions.virtual_hosts[vh];
        assert_eq!(
            vh_policies[0].actions,
            [DescriptorAction::RequestHeaders {
                header: ":path".into(),
                key: "PATH".into(),
                skip_if_absent: false
            }]
        );
        // 05: the route `api` has its own policy, which overrides the virtual host's.
        let api = limits.actions.lookup(vh, Some("api"));
        assert!(
            matches!(&api[0].actions[0], DescriptorAction::HeaderValueMatch { key, value, .. }
                if key == "PATH" && value == "api"),
            "{api:?}"
        );
        // 01: the ConfigMap's tree.
        let tree = &s.rate_limit_domains["ratelimit"];
        let lookup = |v: &str| {
            sluice_snapshot::ratelimit::find_limit(tree, &[("PATH".to_owned(), v.to_owned())])
                .and_then(|l| l.requests_per_unit)
        };
        assert_eq!(lookup("/productpage"), Some(1));
        assert_eq!(lookup("api"), Some(2));
        assert_eq!(lookup("/anything"), Some(100));
        assert!(!diags.iter().any(|d| d.level == Level::Error), "{diags:#?}");
    }

    /// Envoy's filter outside a gateway context, two filters on one chain, actions sluice
    /// cannot evaluate and a domain nobody configures are each said.
    #[test]
    fn global_rate_limit_findings_are_reported() {
        let yaml = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: grl, namespace: istio-system}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match: {context: GATEWAY}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
          domain: nowhere
  - applyTo: VIRTUAL_HOST
    match: {context: GATEWAY}
    patch:
      operation: MERGE
      value:
        rate_limits:
        - actions:
          - extension:
              name: custom
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.rate_limit_descriptors.expr.v3.Descriptor
                descriptor_key: k
                text: request.size > 10
        - actions:
          - generic_key: {descriptor_value: all}
"#;
        let (s, diags) = gateway_with(yaml);
        let limits = &s.rate_limits["http.80"];
        assert_eq!(limits.global.as_ref().expect("filter").domain, "nowhere");
        // The expression policy is dropped; the generic key stays.
        let vh = limits.actions.virtual_hosts.values().next().expect("vhost");
        assert_eq!(vh.len(), 1);
        let said = |path: &str, needle: &str| {
            diags.iter().any(|d| {
                d.code == NOT_SUPPORTED
                    && d.path.as_deref().is_some_and(|p| p.ends_with(path))
                    && d.message.contains(needle)
            })
        };
        assert!(
            said("rate_limits[0].actions[0]", "not supported"),
            "{diags:#?}"
        );
        assert!(said("typed_config.domain", "limits nothing"), "{diags:#?}");
    }

    #[test]
    fn source_principal_expression_is_the_peer_identity() {
        let yaml = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: grl, namespace: istio-system}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match: {context: GATEWAY}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
          domain: egress
  - applyTo: VIRTUAL_HOST
    match: {context: GATEWAY}
    patch:
      operation: MERGE
      value:
        rate_limits:
        - actions:
          - extension:
              name: principal
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.rate_limit_descriptors.expr.v3.Descriptor
                descriptor_key: principal
                text: source.principal
---
domain: egress
descriptors:
- key: principal
  rate_limit: {unit: second, requests_per_unit: 100}
"#;
        let (s, _) = gateway_with(yaml);
        let limits = &s.rate_limits["http.80"];
        let vh = limits.actions.virtual_hosts.values().next().expect("vhost");
        assert_eq!(
            vh[0].actions,
            [DescriptorAction::SourcePrincipal {
                key: "principal".into(),
                skip_if_absent: false
            }]
        );
        assert!(s.rate_limit_domains.contains_key("egress"));
    }
}
