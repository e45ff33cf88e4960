//! HTTP routes from VirtualService `http` rules, following Istio's
//! `pilot/pkg/networking/core/route/route.go` (`BuildHTTPRoutesForVirtualService`,
//! `translateRoute`, `TranslateRouteMatch`, `applyHTTPRouteDestination`, `ApplyRedirect`,
//! `TranslateFault`, `SortVHostRoutes`) and `route/retry/retry.go` (`ConvertPolicy`).
//!
//! Istio emits one Envoy route per match entry; routes from the same rule that stay adjacent
//! after sorting are folded into one [`Route`] whose `any_of` lists the entries: the same
//! first-match behaviour, one route per rule as `proxy-config routes` reads best.

use std::collections::BTreeMap;

use sluice_model::networking::VirtualService;
use sluice_model::networking::virtual_service::{
    HTTPMatchRequest, HTTPRetry, HTTPRoute, HeaderOperations, RedirectPortSelection, StringMatch,
};
use sluice_model::{Level, Resource};
use sluice_snapshot::route::{
    Fault, FaultAbort, FaultDelay, Forward, HeaderOps, Mirror, Redirect, RequestMatch, RetryPolicy,
    Rewrite, WeightedCluster,
};
use sluice_snapshot::{Regex, Route, RouteAction, RouteMatch, StringMatcher};

use super::codes::{DROPPED, UNREACHABLE};
use super::destination::{self, Resolved};
use super::{Ctx, hosts};

/// The proxy the routes are built for.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'s> {
    /// `ns/name` of the Gateway, or `mesh`.
    pub gateway: &'s str,
    /// The port the traffic arrives on (gateway server port, or sidecar destination port).
    pub listen_port: u16,
    /// The server terminates TLS (redirects default to `https`).
    pub is_tls: bool,
}

/// One Envoy-style route (one match entry) and the rule it came from.
#[derive(Debug, Clone)]
pub struct Built {
    /// `namespace/name` of the VirtualService and the rule's index.
    pub rule: (String, usize),
    pub route: Route,
    pub catch_all: bool,
}

/// Istio's `BuildHTTPRoutesForVirtualService`: the routes of `vs` for `scope`, in declared
/// order, stopping after the first catch-all.
pub fn build_routes(
    cx: &mut Ctx<'_>,
    vs: &Resource<VirtualService>,
    scope: Scope<'_>,
) -> Vec<Built> {
    let vs_key = format!("{}/{}", vs.namespace(), vs.name());
    let mut out = Vec::new();
    for (ri, rule) in vs.spec.http.iter().enumerate() {
        let path = format!("spec.http[{ri}]");
        if rule.delegate.is_some() {
            cx.unsupported(
                vs,
                &format!("{path}.delegate"),
                "delegating to another VirtualService",
            );
            continue;
        }
        // Entries that apply to this proxy (Istio's `translateRoute` returns nil for the rest).
        let mut entries: Vec<Option<(usize, &HTTPMatchRequest)>> = Vec::new();
        if rule.match_.is_empty() {
            entries.push(None);
        } else {
            for (mi, m) in rule.match_.iter().enumerate() {
                if m.port.is_some_and(|p| p != u32::from(scope.listen_port)) {
                    continue;
                }
                if !source_match(cx, vs, m, scope.gateway) {
                    continue;
                }
                entries.push(Some((mi, m)));
            }
        }
        if entries.is_empty() {
            continue;
        }
        let Some(action) = translate_action(cx, vs, &path, rule, scope) else {
            // Without an action the rule cannot be honoured; Istio's catch-all stop still holds.
            if rule.match_.is_empty() {
                report_unreachable(cx, vs, ri, scope);
                break;
            }
            continue;
        };
        let name = rule
            .name
            .clone()
            .unwrap_or_else(|| format!("{vs_key}/{ri}"));
        let mut catch_all = false;
        for entry in entries {
            let request = match entry {
                None => None,
                Some((mi, m)) => match translate_match(cx, vs, &format!("{path}.match[{mi}]"), m) {
                    Some(rm) => Some(rm),
                    None => continue,
                },
            };
            let is_catch_all = request.as_ref().is_none_or(is_catch_all_match);
            let operation = operation(&action, vs.name(), scope.listen_port, request.as_ref());
            out.push(Built {
                rule: (vs_key.clone(), ri),
                route: Route {
                    name: name.clone(),
                    match_: RouteMatch {
                        any_of: request.into_iter().collect(),
                    },
                    action: action.action.clone(),
                    request_headers: action.request_headers.clone(),
                    response_headers: action.response_headers.clone(),
                    operation: Some(operation),
                    direct_cluster: None,
                },
                catch_all: is_catch_all,
            });
            if is_catch_all {
                catch_all = true;
                break;
            }
        }
        if catch_all {
            report_unreachable(cx, vs, ri, scope);
            break;
        }
    }
    out
}

/// Reports the first later rule that would have applied to this proxy, if any.
fn report_unreachable(
    cx: &mut Ctx<'_>,
    vs: &Resource<VirtualService>,
    ri: usize,
    scope: Scope<'_>,
) {
    let later = vs.spec.http.iter().enumerate().skip(ri + 1).find(|(_, r)| {
        r.match_.is_empty()
            || r.match_.iter().any(|m| {
                m.port.is_none_or(|p| p == u32::from(scope.listen_port))
                    && source_match(cx, vs, m, scope.gateway)
            })
    });
    if let Some((li, _)) = later {
        cx.report(
            vs,
            UNREACHABLE,
            Level::Info,
            &format!("spec.http[{li}]"),
            format!(
                "never reached: spec.http[{ri}] matches every request here, so this rule and \
                 those after it are left out (as Istio does)"
            ),
        );
    }
}

/// Istio's `SortVHostRoutes` (catch-all routes last, order kept otherwise), then adjacent
/// routes of the same rule folded into one.
pub fn finish(routes: Vec<Built>) -> Vec<Route> {
    let (specific, catch_all): (Vec<Built>, Vec<Built>) =
        routes.into_iter().partition(|b| !b.catch_all);
    let mut out: Vec<(Built, bool)> = Vec::new();
    for b in specific.into_iter().chain(catch_all) {
        if let Some((last, _)) = out.last_mut()
            && last.rule == b.rule
            && !last.route.match_.any_of.is_empty()
            && !b.route.match_.any_of.is_empty()
        {
            last.route.match_.any_of.extend(b.route.match_.any_of);
            continue;
        }
        out.push((b, false));
    }
    out.into_iter().map(|(b, _)| b.route).collect()
}

/// Istio's `sourceMatchHTTP`: a match entry naming gateways applies to those; one that names
/// none applies when its `sourceLabels` and `sourceNamespace` fit the proxy.
fn source_match(
    cx: &Ctx<'_>,
    vs: &Resource<VirtualService>,
    m: &HTTPMatchRequest,
    gateway: &str,
) -> bool {
    l4_source_match(
        cx,
        vs,
        &m.gateways,
        &m.source_labels,
        m.source_namespace.as_deref(),
        gateway,
    )
}

/// The same rule for TLS and TCP match attributes.
pub fn l4_source_match(
    cx: &Ctx<'_>,
    vs: &Resource<VirtualService>,
    gateways: &[String],
    source_labels: &BTreeMap<String, String>,
    source_namespace: Option<&str>,
    gateway: &str,
) -> bool {
    if !gateways.is_empty() {
        return gateways
            .iter()
            .any(|g| hosts::resolve_gateway_name(g, vs.namespace()) == gateway);
    }
    source_labels
        .iter()
        .all(|(k, v)| cx.opts.labels.get(k) == Some(v))
        && source_namespace.is_none_or(|ns| ns == cx.opts.namespace)
}

/// Istio's `IsCatchAllRoute`: path `/` (prefix) or `.*` (regex), and nothing else to match.
fn is_catch_all_match(m: &RequestMatch) -> bool {
    let path_all = match &m.path {
        None => true,
        Some(StringMatcher::Prefix(p)) => p == "/",
        Some(StringMatcher::Regex(r)) => r.as_str() == ".*",
        Some(_) => false,
    };
    path_all
        && m.method.is_none()
        && m.authority.is_none()
        && m.scheme.is_none()
        && m.headers.is_empty()
        && m.without_headers.is_empty()
        && m.query_params.is_empty()
}

/// Istio's `TranslateRouteMatch`. `None` (with a diagnostic) when the entry cannot be matched
/// as written: the entry is dropped, never widened.
fn translate_match(
    cx: &mut Ctx<'_>,
    vs: &Resource<VirtualService>,
    path: &str,
    m: &HTTPMatchRequest,
) -> Option<RequestMatch> {
    let mut bad: Vec<(String, String)> = Vec::new();
    let mut one = |field: &str, sm: Option<&StringMatch>, header: bool| -> Option<StringMatcher> {
        match string_matcher(sm, header) {
            Ok(m) => Some(m),
            Err(e) => {
                bad.push((format!("{path}.{field}"), e));
                None
            }
        }
    };
    let mut out = RequestMatch {
        path: m.uri.as_ref().and_then(|u| one("uri", Some(u), false)),
        method: m.method.as_ref().and_then(|u| one("method", Some(u), true)),
        authority: m
            .authority
            .as_ref()
            .and_then(|u| one("authority", Some(u), true)),
        scheme: m.scheme.as_ref().and_then(|u| one("scheme", Some(u), true)),
        port: m.port.and_then(|p| u16::try_from(p).ok()),
        ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
        ..RequestMatch::default()
    };
    for (name, sm) in &m.headers {
        if let Some(x) = one(&format!("headers.{name}"), sm.as_ref(), true) {
            out.headers.insert(name.to_ascii_lowercase(), x);
        }
    }
    for (name, sm) in &m.without_headers {
        if let Some(x) = one(&format!("withoutHeaders.{name}"), sm.as_ref(), true) {
            out.without_headers.insert(name.to_ascii_lowercase(), x);
        }
    }
    for (name, sm) in &m.query_params {
        if let Some(x) = one(&format!("queryParams.{name}"), sm.as_ref(), true) {
            out.query_params.insert(name.clone(), x);
        }
    }
    let claims: Vec<&String> = m
        .headers
        .keys()
        .chain(m.without_headers.keys())
        .filter(|k| k.starts_with("@request.auth.claims"))
        .collect();
    for k in claims {
        bad.push((
            format!("{path}.headers.{k}"),
            "matching JWT claims (RequestAuthentication) is not supported".to_owned(),
        ));
    }
    if m.stat_prefix.is_some() {
        cx.unsupported(vs, &format!("{path}.statPrefix"), "a per-route stat prefix");
    }
    if bad.is_empty() {
        return Some(out);
    }
    for (field, why) in bad {
        cx.report(
            vs,
            DROPPED,
            Level::Error,
            &field,
            format!("{why}: this match entry is left out (it never matches)"),
        );
    }
    None
}

/// Istio's StringMatch → Envoy's matcher. For headers and query parameters an empty match and
/// the regex `*` mean "present" (`canBeConvertedToPresentMatch`).
fn string_matcher(sm: Option<&StringMatch>, header: bool) -> Result<StringMatcher, String> {
    match sm {
        None => Ok(StringMatcher::Present),
        Some(StringMatch::Exact(s)) => Ok(StringMatcher::Exact(s.clone())),
        Some(StringMatch::Prefix(s)) => Ok(StringMatcher::Prefix(s.clone())),
        Some(StringMatch::Regex(r)) if header && r == "*" => Ok(StringMatcher::Present),
        Some(StringMatch::Regex(r)) => Regex::new(r)
            .map(StringMatcher::Regex)
            .map_err(|e| format!("invalid regex {r:?}: {e}")),
    }
}

/// A rule's action with everything that does not depend on the match entry.
#[derive(Debug, Clone)]
struct Action {
    action: RouteAction,
    request_headers: HeaderOps,
    response_headers: HeaderOps,
    /// The only destination, for the operation name.
    single: Option<(String, u16)>,
}

fn translate_action(
    cx: &mut Ctx<'_>,
    vs: &Resource<VirtualService>,
    path: &str,
    rule: &HTTPRoute,
    scope: Scope<'_>,
) -> Option<Action> {
    let (request_headers, header_authority) =
        header_ops(rule.headers.as_ref().and_then(|h| h.request.as_ref()));
    let (response_headers, _) = header_ops(rule.headers.as_ref().and_then(|h| h.response.as_ref()));
    if rule.cors_policy.is_some() {
        cx.unsupported(vs, &format!("{path}.corsPolicy"), "a CORS policy");
    }
    let mut single = None;
    let action = if let Some(r) = &rule.redirect {
        RouteAction::Redirect(redirect(cx, vs, path, r, scope)?)
    } else if let Some(d) = &rule.direct_response {
        let Ok(status) = u16::try_from(d.status) else {
            cx.report(
                vs,
                DROPPED,
                Level::Error,
                &format!("{path}.directResponse.status"),
                format!("status {} is not an HTTP status: rule dropped", d.status),
            );
            return None;
        };
        let body = match &d.body {
            None => None,
            Some(b) => match (&b.string, &b.bytes) {
                (Some(s), _) => Some(s.clone()),
                (None, Some(encoded)) => {
                    match decode_base64(encoded).and_then(|v| String::from_utf8(v).ok()) {
                        Some(s) => Some(s),
                        None => {
                            cx.report(
                                vs,
                                DROPPED,
                                Level::Error,
                                &format!("{path}.directResponse.body.bytes"),
                                "the body is not base64 of UTF-8 text, which is all the data \
                                 plane can send: rule dropped",
                            );
                            return None;
                        }
                    }
                }
                (None, None) => None,
            },
        };
        RouteAction::DirectResponse { status, body }
    } else if rule.route.is_empty() {
        cx.report(
            vs,
            DROPPED,
            Level::Error,
            path,
            "the rule has no route, redirect or directResponse: dropped",
        );
        return None;
    } else {
        let forward = forward(cx, vs, path, rule, scope, header_authority, &mut single)?;
        RouteAction::Forward(forward)
    };
    Some(Action {
        action,
        request_headers,
        response_headers,
        single,
    })
}

fn forward(
    cx: &mut Ctx<'_>,
    vs: &Resource<VirtualService>,
    path: &str,
    rule: &HTTPRoute,
    scope: Scope<'_>,
    header_authority: Option<String>,
    single: &mut Option<(String, u16)>,
) -> Option<Forward> {
    let given: Vec<Option<i32>> = rule.route.iter().map(|d| d.weight).collect();
    let mut clusters = Vec::new();
    let mut destination_authority = None;
    for (i, weight) in destination::weights(cx, vs, &format!("{path}.route"), &given) {
        let dst = &rule.route[i];
        let dpath = format!("{path}.route[{i}].destination");
        let Some(Resolved {
            cluster,
            host,
            port,
        }) = destination::resolve(cx, vs, &dpath, &dst.destination, scope.listen_port)
        else {
            continue;
        };
        let (request_headers, authority) =
            header_ops(dst.headers.as_ref().and_then(|h| h.request.as_ref()));
        let (response_headers, _) =
            header_ops(dst.headers.as_ref().and_then(|h| h.response.as_ref()));
        if let Some(a) = authority {
            if rule.route.len() == 1 {
                destination_authority = Some(a);
            } else {
                cx.unsupported(
                    vs,
                    &format!("{path}.route[{i}].headers.request"),
                    "rewriting the authority for one of several weighted destinations",
                );
            }
        }
        if rule.route.len() == 1 {
            *single = Some((host, port));
        }
        clusters.push(WeightedCluster {
            cluster,
            weight,
            request_headers,
            response_headers,
        });
    }
    if clusters.is_empty() {
        return None;
    }
    // Authority: the rule's rewrite, else the rule's request headers, else the only
    // destination's (Istio's precedence in `applyHTTPRouteDestination`/`processDestination`).
    let mut rewrite = Rewrite::default();
    if let Some(rw) = &rule.rewrite {
        if let Some(rr) = &rw.uri_regex_rewrite {
            let pattern = rr.match_.clone().unwrap_or_default();
            match Regex::new(&pattern) {
                Ok(re) => {
                    rewrite.uri_regex = Some((
                        re,
                        re2_substitution(rr.rewrite.as_deref().unwrap_or_default()),
                    ));
                }
                Err(e) => {
                    cx.report(
                        vs,
                        DROPPED,
                        Level::Error,
                        &format!("{path}.rewrite.uriRegexRewrite.match"),
                        format!("invalid regex {pattern:?}: {e}: rule dropped"),
                    );
                    return None;
                }
            }
        } else if let Some(uri) = rw.uri.as_ref().filter(|u| !u.is_empty()) {
            rewrite.uri = Some(uri.clone());
        }
        rewrite.authority = rw.authority.clone().filter(|a| !a.is_empty());
    }
    if rewrite.authority.is_none() {
        rewrite.authority = header_authority.or(destination_authority);
    }
    let rewrite = (rewrite != Rewrite::default()).then_some(rewrite);
    let mut mirrors = Vec::new();
    if let Some(m) = &rule.mirror {
        let percent = match (rule.mirror_percentage, rule.mirror_percent) {
            (Some(p), _) => p.value,
            (None, Some(p)) => f64::from(p),
            (None, None) => 100.0,
        };
        if percent > 0.0
            && let Some(r) =
                destination::resolve(cx, vs, &format!("{path}.mirror"), m, scope.listen_port)
        {
            mirrors.push(Mirror {
                cluster: r.cluster,
                percent,
            });
        }
    }
    for (i, m) in rule.mirrors.iter().enumerate() {
        let percent = m.percentage.map_or(100.0, |p| p.value);
        if percent > 0.0
            && let Some(r) = destination::resolve(
                cx,
                vs,
                &format!("{path}.mirrors[{i}].destination"),
                &m.destination,
                scope.listen_port,
            )
        {
            mirrors.push(Mirror {
                cluster: r.cluster,
                percent,
            });
        }
    }
    // No policy on the rule: the mesh's `defaultHttpRetryPolicy`, else Istio's default.
    let retry = match &rule.retries {
        Some(r) => retry_policy(cx, vs, &format!("{path}.retries"), Some(r)),
        None => convert_retry(cx.default_retry.as_ref()),
    };
    Some(Forward {
        clusters,
        rewrite,
        timeout: rule.timeout.map(|d| d.as_std()).filter(|d| !d.is_zero()),
        retry,
        fault: fault(cx, vs, path, rule),
        mirrors,
    })
}

/// Istio's `ApplyRedirect`.
fn redirect(
    cx: &mut Ctx<'_>,
    vs: &Resource<VirtualService>,
    path: &str,
    r: &sluice_model::networking::virtual_service::HTTPRedirect,
    scope: Scope<'_>,
) -> Option<Redirect> {
    let status = match r.redirect_code.unwrap_or(301) {
        0 => 301,
        c @ (301 | 302 | 303 | 307 | 308) => c as u16,
        other => {
            cx.report(
                vs,
                DROPPED,
                Level::Error,
                &format!("{path}.redirect.redirectCode"),
                format!(
                    "redirect code {other} is not supported (301, 302, 303, 307, 308): rule dropped"
                ),
            );
            return None;
        }
    };
    let mut port = None;
    let mut port_from_scheme = false;
    let port_given = r.port.is_some() || r.derive_port.is_some();
    if let Some(p) = r.port {
        match u16::try_from(p) {
            Ok(p) => port = Some(p),
            Err(_) => {
                cx.report(
                    vs,
                    DROPPED,
                    Level::Error,
                    &format!("{path}.redirect.port"),
                    format!("port {p} is not a TCP port: rule dropped"),
                );
                return None;
            }
        }
    } else {
        match r.derive_port {
            // Envoy cannot derive the port from the request; Istio builds routes per port and
            // uses the port they are built for.
            Some(RedirectPortSelection::FromRequestPort) => port = Some(scope.listen_port),
            Some(RedirectPortSelection::FromProtocolDefault) => port_from_scheme = true,
            None => {}
        }
    }
    if port_given {
        // "Do not put explicit :80 or :443 when its http/https".
        let scheme = r
            .scheme
            .clone()
            .unwrap_or_else(|| if scope.is_tls { "https" } else { "http" }.to_owned());
        if (port == Some(80) && scheme == "http") || (port == Some(443) && scheme == "https") {
            port = None;
        }
    }
    Some(Redirect {
        uri: r.uri.clone().filter(|u| !u.is_empty()),
        authority: r.authority.clone().filter(|a| !a.is_empty()),
        scheme: r.scheme.clone().filter(|s| !s.is_empty()),
        port,
        port_from_scheme,
        status,
    })
}

/// Istio's `TranslateFault`: unset percentages inject nothing.
fn fault(
    cx: &mut Ctx<'_>,
    vs: &Resource<VirtualService>,
    path: &str,
    rule: &HTTPRoute,
) -> Option<Fault> {
    let f = rule.fault.as_ref()?;
    let delay = f.delay.as_ref().and_then(|d| {
        let percent = d
            .percentage
            .map_or_else(|| f64::from(d.percent.unwrap_or(0)), |p| p.value);
        match d.fixed_delay {
            Some(fixed) => Some(FaultDelay {
                delay: fixed.as_std(),
                percent,
            }),
            None => {
                cx.unsupported(
                    vs,
                    &format!("{path}.fault.delay.exponentialDelay"),
                    "an exponential delay (Istio does not implement it either)",
                );
                None
            }
        }
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let percent = a.percentage.map_or(0.0, |p| p.value);
        match a.http_status.and_then(|s| u16::try_from(s).ok()) {
            Some(status) => Some(FaultAbort { status, percent }),
            None => {
                let what = if a.grpc_status.is_some() {
                    "aborting with a gRPC status"
                } else {
                    "aborting with an HTTP/2 error"
                };
                cx.unsupported(vs, &format!("{path}.fault.abort"), what);
                None
            }
        }
    });
    (delay.is_some() || abort.is_some()).then_some(Fault { delay, abort })
}

/// Istio's `DefaultPolicy`: 2 retries on `connect-failure,refused-stream,unavailable,cancelled,
/// retriable-status-codes` with 503 as the retriable status.
pub fn default_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        per_try_timeout: None,
        retry_on: [
            "connect-failure",
            "refused-stream",
            "unavailable",
            "cancelled",
            "retriable-status-codes",
            "503",
        ]
        .map(str::to_owned)
        .to_vec(),
    }
}

/// Istio's `ConvertPolicy`: no policy → the default; `attempts` 0 (or unset) → no retries;
/// otherwise the default with the given attempts, conditions and per-try timeout. Integers in
/// `retryOn` are status codes (and imply `retriable-status-codes`).
pub fn convert_retry(given: Option<&HTTPRetry>) -> Option<RetryPolicy> {
    let mut out = default_retry();
    let Some(r) = given else {
        return Some(out);
    };
    let attempts = r.attempts.unwrap_or(0);
    if attempts <= 0 {
        return None;
    }
    out.attempts = u32::try_from(attempts).unwrap_or(0);
    if let Some(on) = r.retry_on.as_deref().filter(|s| !s.trim().is_empty()) {
        let mut conditions: Vec<String> = Vec::new();
        let mut codes: Vec<String> = Vec::new();
        for part in on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => codes.push(code.to_string()),
                _ => conditions.push(part.to_owned()),
            }
        }
        if !codes.is_empty() && !conditions.iter().any(|c| c == "retriable-status-codes") {
            conditions.push("retriable-status-codes".to_owned());
        }
        conditions.extend(codes);
        out.retry_on = conditions;
    }
    out.per_try_timeout = r
        .per_try_timeout
        .map(|d| d.as_std())
        .filter(|d| !d.is_zero());
    Some(out)
}

/// [`convert_retry`] for a rule, reporting the retry settings the data plane does not run.
fn retry_policy(
    cx: &mut Ctx<'_>,
    vs: &Resource<VirtualService>,
    path: &str,
    given: Option<&HTTPRetry>,
) -> Option<RetryPolicy> {
    if let Some(r) = given {
        if r.backoff.is_some() {
            cx.unsupported(vs, &format!("{path}.backoff"), "a retry backoff interval");
        }
        if r.retry_remote_localities == Some(true) {
            cx.unsupported(
                vs,
                &format!("{path}.retryRemoteLocalities"),
                "retrying in other localities",
            );
        }
        if r.retry_ignore_previous_hosts == Some(false) {
            cx.unsupported(
                vs,
                &format!("{path}.retryIgnorePreviousHosts"),
                "retrying on hosts already tried",
            );
        }
    }
    convert_retry(given)
}

/// Istio's `TranslateHeadersOperations` for one direction: names lower-cased, `set` replaces,
/// `add` appends; pseudo-headers and `host` are not headers to edit, and `:authority`/`host`
/// in `set` (else `add`) become an authority rewrite (returned).
fn header_ops(ops: Option<&HeaderOperations>) -> (HeaderOps, Option<String>) {
    let mut out = HeaderOps::default();
    let Some(ops) = ops else {
        return (out, None);
    };
    let is_authority =
        |k: &str| k.eq_ignore_ascii_case(":authority") || k.eq_ignore_ascii_case("host");
    let is_internal = |k: &str| k.starts_with(':') || k.eq_ignore_ascii_case("host");
    let mut set_authority = None;
    let mut add_authority = None;
    for (k, v) in &ops.set {
        if is_authority(k) {
            set_authority = Some(v.clone());
        }
        if !is_internal(k) {
            out.set.insert(k.to_ascii_lowercase(), v.clone());
        }
    }
    for (k, v) in &ops.add {
        if is_authority(k) {
            add_authority = Some(v.clone());
        }
        if !is_internal(k) {
            out.add.insert(k.to_ascii_lowercase(), v.clone());
        }
    }
    out.remove = ops
        .remove
        .iter()
        .filter(|k| !is_internal(k))
        .map(|k| k.to_ascii_lowercase())
        .collect();
    (out, set_authority.or(add_authority))
}

/// Istio's `GetRouteOperation`: `host:port<path>` for a single destination, else
/// `vsName:listenPort<path>`; the path part is the prefix + `*`, the exact path or the regex.
fn operation(action: &Action, vs_name: &str, listen_port: u16, m: Option<&RequestMatch>) -> String {
    let path = match m.and_then(|m| m.path.as_ref()) {
        Some(StringMatcher::Prefix(p)) => format!("{p}*"),
        Some(StringMatcher::Exact(p)) => p.clone(),
        Some(StringMatcher::Regex(r)) => r.as_str().to_owned(),
        Some(StringMatcher::Present) | None => "/*".to_owned(),
    };
    match (&action.single, &action.action) {
        (Some((host, port)), RouteAction::Forward(_)) => format!("{host}:{port}{path}"),
        _ => format!("{vs_name}:{listen_port}{path}"),
    }
}

/// RE2/Envoy substitution (`\1`) → the `regex` crate's (`${1}`), `$` escaped.
fn re2_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str(&format!("${{{d}}}"));
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

/// Standard base64 (padding optional), as protobuf's JSON mapping writes `bytes`.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let mut bits: u32 = 0;
    let mut n = 0u32;
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => continue,
            _ => return None,
        };
        bits = ((bits << 6) | u32::from(v)) & 0x00ff_ffff;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push(((bits >> n) & 0xff) as u8);
        }
    }
    Some(out)
}

/// The default route of a registered host without a VirtualService (Istio's
/// `BuildDefaultHTTPOutboundRoute`): everything to its cluster, the mesh's retry policy.
pub fn default_route(cx: &Ctx<'_>, cluster: String, host: &str, port: u16) -> Route {
    let retry = convert_retry(cx.default_retry.as_ref());
    Route {
        name: "default".to_owned(),
        match_: RouteMatch::default(),
        action: RouteAction::Forward(Forward {
            clusters: vec![WeightedCluster {
                cluster,
                weight: 100,
                request_headers: HeaderOps::default(),
                response_headers: HeaderOps::default(),
            }],
            rewrite: None,
            timeout: None,
            retry,
            fault: None,
            mirrors: Vec::new(),
        }),
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
        operation: Some(format!("{host}:{port}/*")),
        direct_cluster: None,
    }
}

/// The route of a virtual host that only redirects to HTTPS (Gateway `tls.httpsRedirect`,
/// Envoy's `require_tls: ALL`: 301, same host and path).
pub fn https_redirect_route() -> Route {
    Route {
        name: "https-redirect".to_owned(),
        match_: RouteMatch::default(),
        action: RouteAction::Redirect(Redirect {
            uri: None,
            authority: None,
            scheme: Some("https".to_owned()),
            port: None,
            port_from_scheme: false,
            status: 301,
        }),
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
        operation: None,
        direct_cluster: None,
    }
}

#[cfg(test)]
mod tests;
