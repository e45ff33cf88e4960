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
//! Patches sluice cannot apply are reported by validation (`validate/envoy_filter.rs`); they are
//! skipped here without a second message.

use std::collections::BTreeMap;

use sluice_model::networking::EnvoyFilter;
use sluice_model::networking::envoy_filter::{
    ApplyTo, EnvoyConfigObjectMatch, HeaderAppendAction, HeaderValueOption, LocalRateLimit,
    LocalRateLimitPatch, PatchContext, PatchOperation, RouteAction as PatchRouteAction,
};
use sluice_model::{Level, Resource};
use sluice_snapshot::listener::{App, Listener};
use sluice_snapshot::ratelimit::{
    AppendAction, HeaderToAdd, HttpRateLimits, LocalRateLimit as SnapLimit, RateLimitFilter,
    TokenBucket,
};
use sluice_snapshot::route::{Route, RouteAction, VirtualHost};

use super::registry::istio_order;
use super::{Ctx, NOT_SUPPORTED, Role};

/// The rate limits of `listeners`' HTTP route configurations, by route configuration name.
pub fn build(cx: &mut Ctx<'_>, listeners: &[Listener]) -> BTreeMap<String, HttpRateLimits> {
    let mut out: BTreeMap<String, HttpRateLimits> = BTreeMap::new();
    for r in selected(cx) {
        for patch in r.spec.local_rate_limit().into_iter().flatten() {
            let m = match &patch {
                LocalRateLimitPatch::Filter(f) => &f.match_,
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
                            let filters = &mut out.entry(route_config.clone()).or_default().filters;
                            if filters
                                .iter()
                                .any(|x| x.origin == filter.origin && x.name == filter.name)
                            {
                                continue; // one route configuration on several chains
                            }
                            if f.operation == PatchOperation::InsertFirst {
                                filters.insert(0, filter.clone());
                            } else {
                                filters.push(filter.clone());
                            }
                        }
                    }
                }
                LocalRateLimitPatch::Route(rt) => {
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
    out.retain(|_, l| !l.filters.is_empty());
    out
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
    l.port_number.is_none_or(|p| p == u32::from(port))
        && l.name.as_deref().is_none_or(|n| n == name)
}

fn route_config_matches(m: &EnvoyConfigObjectMatch, port: u16, route_config: &str) -> bool {
    let Some(rc) = &m.route_configuration else {
        return true;
    };
    rc.port_number.is_none_or(|p| p == u32::from(port))
        && rc.name.as_deref().is_none_or(|n| n == route_config)
}

fn vhost_matches(m: &EnvoyConfigObjectMatch, vh: &VirtualHost) -> bool {
    let Some(v) = m
        .route_configuration
        .as_ref()
        .and_then(|rc| rc.vhost.as_ref())
    else {
        return true;
    };
    v.name.as_deref().is_none_or(|n| n == vh.name)
        && v.domain_name
            .as_deref()
            .is_none_or(|d| vh.domains.iter().any(|h| h.matches(d)))
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
    action && rm.name.as_deref().is_none_or(|n| n == route.name)
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
}
