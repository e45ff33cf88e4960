//! VirtualService validation (Istio's `ValidateVirtualService`, `validateHTTPRoute`,
//! `validateTLSRoute`, `validateTCPRoute`, and the unreachable-rule analysis the webhook
//! reports as warnings).

use std::collections::BTreeMap;

use sluice_model::Level;
use sluice_model::networking::VirtualService;
use sluice_model::networking::virtual_service::{
    CorsPolicy, Destination, HTTPDirectResponse, HTTPFaultInjection, HTTPMatchRequest,
    HTTPRedirect, HTTPRetry, HTTPRewrite, HTTPRoute, HTTPRouteDestination, Headers,
    L4MatchAttributes, RouteDestination, StringMatch, TCPRoute, TLSMatchAttributes, TLSRoute,
};

use super::Report;
use super::destination_rule::check_subset_name;
use super::rules::{self, ExportToOwner};
use crate::analyze::istio_codes;

/// Annotation Istio puts on VirtualServices it derives from Gateway API routes.
const ROUTE_SEMANTICS_ANNOTATION: &str = "internal.istio.io/route-semantics";
/// The reserved gateway name meaning "all sidecars".
const MESH_GATEWAY: &str = "mesh";

const SUPPORTED_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
];

/// `x-envoy-retry-on` and `x-envoy-retry-grpc-on` policies Envoy knows.
const RETRY_ON_POLICIES: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// gRPC status names accepted in `fault.abort.grpcStatus`.
const GRPC_STATUSES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

const KB: usize = 1024;
const MB: usize = 1024 * KB;

/// Whether Go's `http.StatusText` knows the code (Istio accepts any such code in `retryOn`).
fn is_known_http_status(code: i64) -> bool {
    matches!(code,
        100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429
        | 431 | 451 | 500..=508 | 510 | 511)
}

/// Istio's `jwt.ToRoutingClaim(..).Match`: `@request.auth.claims.a.b` or
/// `@request.auth.claims[a][b]`.
fn is_jwt_claim_route(key: &str) -> bool {
    const PREFIX: &str = "@request.auth.claims";
    let (Some(head), Some(rest)) = (key.get(..PREFIX.len()), key.get(PREFIX.len()..)) else {
        return false;
    };
    if !head.eq_ignore_ascii_case(PREFIX) {
        return false;
    }
    (rest.starts_with('.') && rest.len() > 1)
        || (rest.starts_with('[') && rest.ends_with(']') && rest.len() > 2)
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RouteType {
    Independent,
    Root,
    Delegate,
}

pub(crate) fn validate(r: &mut Report<'_, VirtualService>) {
    let vs = &r.resource().spec;
    let namespace = r.resource().namespace().to_owned();
    let gateway_semantics = r
        .resource()
        .meta
        .annotations
        .get(ROUTE_SEMANTICS_ANNOTATION)
        .is_some_and(|v| v == "gateway");

    let delegate = vs.hosts.is_empty();
    if delegate {
        if !vs.gateways.is_empty() {
            r.error(
                "spec.gateways",
                "delegate virtual service must have no gateways specified",
            );
        }
        if !vs.tls.is_empty() {
            r.error(
                "spec.tls",
                "delegate virtual service must have no tls route specified",
            );
        }
        if !vs.tcp.is_empty() {
            r.error(
                "spec.tcp",
                "delegate virtual service must have no tcp route specified",
            );
        }
    }

    let bound_to_mesh_gateway = vs.gateways.iter().any(|g| g == MESH_GATEWAY);
    let applies_to_gateway = !vs.gateways.is_empty() && !bound_to_mesh_gateway;
    let applies_to_mesh = !applies_to_gateway;
    for (i, gw) in vs.gateways.iter().enumerate() {
        check_gateway_name(r, &format!("spec.gateways[{i}]"), gw, gateway_semantics);
    }

    if !applies_to_gateway {
        for (i, http) in vs.http.iter().enumerate() {
            for (j, m) in http.match_.iter().enumerate() {
                for key in m.headers.keys().chain(m.without_headers.keys()) {
                    if is_jwt_claim_route(key) {
                        r.error(
                            &format!("spec.http[{i}].match[{j}]"),
                            format!(
                                "JWT claim based routing (key: {key}) is only supported for gateway, \
                                 found no gateways: [{}]",
                                vs.gateways.join(" ")
                            ),
                        );
                    }
                }
            }
        }
    }

    let sni = vs
        .tls
        .iter()
        .any(|t| t.match_.iter().any(|m| !m.sni_hosts.is_empty()));
    let mut all_hosts_valid = true;
    for (i, host) in vs.hosts.iter().enumerate() {
        let checked = if applies_to_gateway {
            rules::check_wildcard_domain_for_gateway(sni, host)
        } else {
            rules::check_wildcard_domain(host)
        };
        let path = format!("spec.hosts[{i}]");
        match checked {
            Err(e) if !rules::is_valid_ip(host) => {
                r.error(&path, e);
                all_hosts_valid = false;
            }
            Ok(()) if applies_to_mesh && host == "*" => {
                r.error(
                    &path,
                    "wildcard host * is not allowed for virtual services bound to the mesh gateway",
                );
                all_hosts_valid = false;
            }
            _ => {}
        }
    }
    if all_hosts_valid {
        for (i, a) in vs.hosts.iter().enumerate() {
            for b in &vs.hosts[i + 1..] {
                if rules::hosts_overlap(a, b) {
                    r.error(
                        &format!("spec.hosts[{i}]"),
                        format!("duplicate hosts in virtual service: {a} & {b}"),
                    );
                }
            }
        }
    }

    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        r.error(
            "spec",
            "http, tcp or tls must be provided in virtual service",
        );
    }
    for (i, http) in vs.http.iter().enumerate() {
        check_http_route(
            r,
            &format!("spec.http[{i}]"),
            http,
            delegate,
            gateway_semantics,
        );
    }
    for (i, tls) in vs.tls.iter().enumerate() {
        check_tls_route(r, &format!("spec.tls[{i}]"), tls, vs, gateway_semantics);
    }
    for (i, tcp) in vs.tcp.iter().enumerate() {
        check_tcp_route(r, &format!("spec.tcp[{i}]"), tcp, gateway_semantics);
    }

    for e in rules::export_to_errors(&namespace, &vs.export_to, ExportToOwner::Other) {
        r.error("spec.exportTo", e);
    }

    analyze_unreachable_http_rules(r, &vs.http);
    analyze_unreachable_l4_rules(r, "tcp", vs.tcp.iter().map(|t| t.match_.as_slice()));
    analyze_unreachable_l4_rules(r, "tls", vs.tls.iter().map(|t| t.match_.as_slice()));
}

/// Istio's `validateGatewayNames` for one name, with the legacy-format warning.
fn check_gateway_name<T>(r: &mut Report<'_, T>, path: &str, name: &str, gateway_semantics: bool) {
    if let Some(w) = rules::legacy_gateway_name_warning(name) {
        r.warning(path, w);
    }
    for e in rules::gateway_name_errors(name) {
        if gateway_semantics && e.starts_with("invalid value for gateway name") {
            continue;
        }
        r.error(path, e);
    }
}

/// Istio's `validateDestination`.
pub(crate) fn check_destination<T>(r: &mut Report<'_, T>, path: &str, d: &Destination) {
    if d.host == "*" {
        r.error(
            &format!("{path}.host"),
            format!("invalid destination host {}", d.host),
        );
    } else if let Err(e) = rules::check_wildcard_domain(&d.host) {
        r.error(&format!("{path}.host"), e);
    }
    if let Some(subset) = d.subset.as_deref().filter(|s| !s.is_empty())
        && let Err(e) = check_subset_name(subset)
    {
        r.error(&format!("{path}.subset"), e);
    }
    if let Some(port) = &d.port
        && let Err(e) = rules::check_port(i64::from(port.number))
    {
        r.error(&format!("{path}.port.number"), e);
    }
}

fn check_http_route(
    r: &mut Report<'_, VirtualService>,
    path: &str,
    http: &HTTPRoute,
    delegate: bool,
    gateway_semantics: bool,
) {
    let field = |f: &str| format!("{path}.{f}");
    let route_type = if delegate {
        RouteType::Delegate
    } else if http.delegate.is_some() {
        RouteType::Root
    } else {
        RouteType::Independent
    };
    check_route_conflicts(r, path, http, route_type);
    check_match_requests(r, path, http, route_type);

    if let Some(h) = &http.headers {
        check_header_operations(r, &field("headers"), h);
    }
    if let Some(cors) = &http.cors_policy {
        check_cors(r, &field("corsPolicy"), cors);
    }
    if let Some(fault) = &http.fault {
        check_fault(r, &field("fault"), fault);
    }
    if let Some(percent) = http.mirror_percent {
        if percent > 100 {
            r.error(
                &field("mirrorPercent"),
                format!("mirror_percent must have a max value of 100 (it has {percent})"),
            );
        }
        r.warning(
            &field("mirrorPercent"),
            "using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead",
        );
    }
    if let Some(p) = &http.mirror_percentage {
        if p.value > 100.0 {
            r.error(
                &field("mirrorPercentage"),
                format!(
                    "mirror_percentage must have a max value of 100 (it has {:.6})",
                    p.value
                ),
            );
        }
        if p.value < 0.0 {
            r.error(
                &field("mirrorPercentage"),
                format!(
                    "mirror_percentage must have a min value of 0 (it has {:.6})",
                    p.value
                ),
            );
        }
    }
    if let Some(m) = &http.mirror {
        check_destination(r, &field("mirror"), m);
    }
    for (i, m) in http.mirrors.iter().enumerate() {
        let mpath = format!("{path}.mirrors[{i}]");
        check_destination(r, &format!("{mpath}.destination"), &m.destination);
        if let Some(p) = &m.percentage {
            if p.value > 100.0 {
                r.error(
                    &format!("{mpath}.percentage"),
                    format!(
                        "mirror percentage must have a max value of 100 (it has {:.6})",
                        p.value
                    ),
                );
            }
            if p.value < 0.0 {
                r.error(
                    &format!("{mpath}.percentage"),
                    format!(
                        "mirror percentage must have a min value of 0 (it has {:.6})",
                        p.value
                    ),
                );
            }
        }
    }
    if let Some(redirect) = &http.redirect
        && let Err(e) = check_redirect(redirect)
    {
        r.error(&field("redirect"), e);
    }
    if let Some(retries) = &http.retries {
        check_retries(r, &field("retries"), retries);
    }
    if let Some(rewrite) = &http.rewrite
        && let Err(e) = check_rewrite(rewrite)
    {
        r.error(&field("rewrite"), e);
    }
    if let Err(e) = check_authority_rewrite(http.rewrite.as_ref(), http.headers.as_ref()) {
        r.error(&field("headers"), e);
    }
    check_http_route_destinations(r, path, &http.route, gateway_semantics);
    if let Some(t) = http.timeout
        && let Err(e) = rules::check_duration(t)
    {
        r.error(&field("timeout"), e);
    }
    if let Some(d) = &http.direct_response {
        check_direct_response(r, &field("directResponse"), d);
    }
}

fn check_route_conflicts(
    r: &mut Report<'_, VirtualService>,
    path: &str,
    http: &HTTPRoute,
    route_type: RouteType,
) {
    let name = http.name.as_deref().unwrap_or_default();
    if route_type == RouteType::Root {
        if http.redirect.is_some() {
            r.error(
                path,
                format!("root HTTP route {name} must not specify redirect"),
            );
        }
        if !http.route.is_empty() {
            r.error(
                path,
                format!("root HTTP route {name} must not specify route"),
            );
        }
        if http.direct_response.is_some() {
            r.error(
                path,
                format!("root HTTP route {name} must not specify direct_response"),
            );
        }
        return;
    }
    if route_type == RouteType::Delegate && http.delegate.is_some() {
        r.error(path, "delegate HTTP route cannot contain delegate");
    }
    if http.redirect.is_some() {
        if !http.route.is_empty() {
            r.error(path, "HTTP route cannot contain both route and redirect");
        }
        if http.fault.is_some() {
            r.error(path, "HTTP route cannot contain both fault and redirect");
        }
        if http.rewrite.is_some() {
            r.error(
                path,
                "HTTP route rule cannot contain both rewrite and redirect",
            );
        }
        if http.direct_response.is_some() {
            r.error(
                path,
                "HTTP route cannot contain both redirect and direct_response",
            );
        }
    } else if http.direct_response.is_some() {
        if !http.route.is_empty() {
            r.error(
                path,
                "HTTP route cannot contain both route and direct_response",
            );
        }
        if http.fault.is_some() {
            r.error(
                path,
                "HTTP route cannot contain both fault and direct_response",
            );
        }
        if http.rewrite.is_some() {
            r.error(
                path,
                "HTTP route rule cannot contain both rewrite and direct_response",
            );
        }
    } else if http.route.is_empty() {
        r.error(path, "HTTP route or redirect is required");
    }
}

fn check_string_match_regex<T>(
    r: &mut Report<'_, T>,
    path: &str,
    m: Option<&StringMatch>,
    field: &str,
) {
    if let Some(StringMatch::Regex(re)) = m {
        let result = if re.is_empty() {
            Err(format!("{field:?}: regex string match should not be empty"))
        } else {
            rules::check_regex(re, field)
        };
        if let Err(e) = result {
            r.error(path, e);
        }
    }
}

fn check_header_name_or_claim(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if is_jwt_claim_route(name) {
        return Ok(());
    }
    rules::check_http_header_name(name)
}

fn check_match_requests(
    r: &mut Report<'_, VirtualService>,
    path: &str,
    http: &HTTPRoute,
    route_type: RouteType,
) {
    for (j, m) in http.match_.iter().enumerate() {
        let mpath = format!("{path}.match[{j}]");
        let at = |f: &str| format!("{mpath}.{f}");
        if route_type == RouteType::Independent {
            for (name, header) in &m.headers {
                let hpath = format!("{mpath}.headers.{name}");
                if let Err(e) = check_header_name_or_claim(name) {
                    r.error(&hpath, e);
                }
                check_string_match_regex(r, &hpath, header.as_ref(), "headers");
            }
            for (name, header) in &m.without_headers {
                let hpath = format!("{mpath}.withoutHeaders.{name}");
                if let Err(e) = check_header_name_or_claim(name) {
                    r.error(&hpath, e);
                }
                check_string_match_regex(r, &hpath, header.as_ref(), "withoutHeaders");
            }
            check_string_match_regex(r, &at("uri"), m.uri.as_ref(), "uri");
            check_string_match_regex(r, &at("scheme"), m.scheme.as_ref(), "scheme");
            check_string_match_regex(r, &at("method"), m.method.as_ref(), "method");
            check_string_match_regex(r, &at("authority"), m.authority.as_ref(), "authority");
            for (name, qp) in &m.query_params {
                check_string_match_regex(
                    r,
                    &format!("{mpath}.queryParams.{name}"),
                    qp.as_ref(),
                    "queryParams",
                );
            }
        } else {
            let regex = |s: &Option<StringMatch>| matches!(s, Some(StringMatch::Regex(_)));
            // Istio calls the URI one "url" in this message.
            for (f, label, sm) in [
                ("uri", "url", &m.uri),
                ("scheme", "scheme", &m.scheme),
                ("method", "method", &m.method),
                ("authority", "authority", &m.authority),
            ] {
                if regex(sm) {
                    r.error(
                        &at(f),
                        format!("{label} match does not support regex match for delegating"),
                    );
                }
            }
            for (name, header) in &m.headers {
                if regex(header) {
                    r.error(
                        &format!("{mpath}.headers.{name}"),
                        format!("header match {name} does not support regex match for delegating"),
                    );
                }
                if let Err(e) = rules::check_http_header_name(name) {
                    r.error(&format!("{mpath}.headers.{name}"), e);
                }
            }
            for (name, qp) in &m.query_params {
                if regex(qp) {
                    r.error(
                        &format!("{mpath}.queryParams.{name}"),
                        format!(
                            "query param match {name} does not support regex match for delegating"
                        ),
                    );
                }
            }
            for (name, header) in &m.without_headers {
                if regex(header) {
                    r.error(
                        &format!("{mpath}.withoutHeaders.{name}"),
                        format!("withoutHeaders match {name} does not support regex match for delegating"),
                    );
                }
                if let Err(e) = rules::check_http_header_name(name) {
                    r.error(&format!("{mpath}.withoutHeaders.{name}"), e);
                }
            }
        }

        if let Some(port) = m.port.filter(|p| *p != 0)
            && let Err(e) = rules::check_port(i64::from(port))
        {
            r.error(&at("port"), e);
        }
        for e in rules::label_errors(&m.source_labels) {
            r.error(&at("sourceLabels"), e);
        }
        for (k, gw) in m.gateways.iter().enumerate() {
            check_gateway_name(r, &format!("{mpath}.gateways[{k}]"), gw, false);
        }
        if let Some(ns) = m.source_namespace.as_deref().filter(|n| !n.is_empty())
            && !rules::is_dns1123_label(ns)
        {
            r.error(
                &at("sourceNamespace"),
                format!("sourceNamespace match {ns} is invalid"),
            );
        }
    }
}

/// Istio's `ValidateHTTPHeaderValue`: no control characters, and Envoy's `%VAR%` syntax.
fn check_header_value(value: &str) -> Result<(), String> {
    if value
        .chars()
        .any(|c| matches!(c, '\u{0}'..='\u{8}' | '\u{a}'..='\u{1f}' | '\u{7f}'))
    {
        return Err(format!("header value configuration {value} is invalid"));
    }
    envoy_header_format(value).map_err(|e| format!("header value configuration: {e}"))
}

/// Envoy's header formatter grammar (Istio's `validateHeaderValue`, a port of Envoy's
/// `HeaderParser`): literal text, `%%`, `%VAR%` and `%VAR(args)%`.
fn envoy_header_format(value: &str) -> Result<(), String> {
    #[derive(PartialEq)]
    enum S {
        Literal,
        VariableName,
        ExpectArray,
        ExpectString,
        String,
        ExpectArrayDelimiterOrEnd,
        ExpectArgsEnd,
        ExpectVariableEnd,
    }
    let b = value.as_bytes();
    let mut state = S::Literal;
    let mut pos = 0;
    while pos < b.len() {
        let ch = b[pos];
        let has_next = pos + 1 < b.len();
        match state {
            S::Literal => {
                if ch == b'%' {
                    if !has_next {
                        return Err("invalid header configuration. Un-escaped %".into());
                    }
                    if b[pos + 1] == b'%' {
                        pos += 1;
                    } else {
                        state = S::VariableName;
                    }
                }
            }
            S::VariableName => {
                if ch == b'%' {
                    state = S::Literal;
                } else if ch == b'(' {
                    state = S::ExpectArray;
                }
            }
            S::ExpectArray => {
                if ch == b'[' {
                    state = S::ExpectString;
                } else if ch != b' ' {
                    state = S::String;
                }
            }
            S::ExpectArrayDelimiterOrEnd => {
                if ch == b',' {
                    state = S::ExpectString;
                } else if ch == b']' {
                    state = S::ExpectArgsEnd;
                } else if ch != b' ' {
                    return Err(
                        "invalid header configuration. Expecting ',', ']', or whitespace".into(),
                    );
                }
            }
            S::ExpectString => {
                if ch == b'"' {
                    state = S::String;
                } else if ch != b' ' {
                    return Err("invalid header configuration. Expecting '\"'".into());
                }
            }
            S::String => {
                if ch == b'\\' {
                    if !has_next {
                        return Err(
                            "invalid header configuration. Un-terminated backslash in JSON string"
                                .into(),
                        );
                    }
                    pos += 1;
                } else if ch == b')' {
                    state = S::ExpectVariableEnd;
                } else if ch == b'"' {
                    state = S::ExpectArrayDelimiterOrEnd;
                }
            }
            S::ExpectArgsEnd => {
                if ch == b')' {
                    state = S::ExpectVariableEnd;
                } else if ch != b' ' {
                    return Err("invalid header configuration. Expecting ')' or whitespace".into());
                }
            }
            S::ExpectVariableEnd => {
                if ch == b'%' {
                    state = S::Literal;
                } else if ch != b' ' {
                    return Err(
                        "invalid header configuration. Expecting '%' or whitespace after".into(),
                    );
                }
            }
        }
        pos += 1;
    }
    if state != S::Literal {
        return Err(format!(
            "invalid header configuration. Un-terminated variable expression '{value}'"
        ));
    }
    Ok(())
}

/// Names a request may add or set: anything but pseudo-headers, except `:authority`/`host`.
fn check_request_set_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if is_internal_header(name) && !is_authority_header(name) {
        return Err(format!(
            "invalid header {name:?}: header cannot have \":\" prefix"
        ));
    }
    Ok(())
}

/// Names a request may remove, or a response may add, set or remove.
fn check_header_operation_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if name.eq_ignore_ascii_case("host") {
        return Err(format!("invalid header {name:?}: cannot set Host header"));
    }
    if is_internal_header(name) {
        return Err(format!(
            "invalid header {name:?}: header cannot have \":\" prefix"
        ));
    }
    Ok(())
}

fn check_header_operations<T>(r: &mut Report<'_, T>, path: &str, headers: &Headers) {
    if let Some(req) = &headers.request {
        for (op, map) in [("set", &req.set), ("add", &req.add)] {
            for (name, value) in map {
                let p = format!("{path}.request.{op}.{name}");
                if let Err(e) = check_request_set_name(name) {
                    r.error(&p, e);
                }
                if let Err(e) = check_header_value(value) {
                    r.error(&p, e);
                }
            }
        }
        for (i, name) in req.remove.iter().enumerate() {
            if let Err(e) = check_header_operation_name(name) {
                r.error(&format!("{path}.request.remove[{i}]"), e);
            }
        }
    }
    if let Some(resp) = &headers.response {
        for (op, map) in [("set", &resp.set), ("add", &resp.add)] {
            for (name, value) in map {
                let p = format!("{path}.response.{op}.{name}");
                if let Err(e) = check_header_operation_name(name) {
                    r.error(&p, e);
                }
                if let Err(e) = check_header_value(value) {
                    r.error(&p, e);
                }
            }
        }
        for (i, name) in resp.remove.iter().enumerate() {
            if let Err(e) = check_header_operation_name(name) {
                r.error(&format!("{path}.response.remove[{i}]"), e);
            }
        }
    }
}

fn check_cors(r: &mut Report<'_, VirtualService>, path: &str, cors: &CorsPolicy) {
    for (i, origin) in cors.allow_origins.iter().enumerate() {
        let p = format!("{path}.allowOrigins[{i}]");
        let value = match origin {
            StringMatch::Exact(s) | StringMatch::Prefix(s) | StringMatch::Regex(s) => s,
        };
        if value.is_empty() {
            r.error(&p, "'' is not a valid match type for CORS allow origins");
            continue;
        }
        check_string_match_regex(r, &p, Some(origin), "corsPolicy.allowOrigins");
    }
    for (i, method) in cors.allow_methods.iter().enumerate() {
        if !SUPPORTED_METHODS.contains(&method.as_str()) {
            r.error(
                &format!("{path}.allowMethods[{i}]"),
                format!("{method:?} is not a supported HTTP method"),
            );
        }
    }
    for (field, names) in [
        ("allowHeaders", &cors.allow_headers),
        ("exposeHeaders", &cors.expose_headers),
    ] {
        for (i, name) in names.iter().enumerate() {
            if name != "*"
                && let Err(e) = rules::check_http_header_name(name)
            {
                r.error(&format!("{path}.{field}[{i}]"), e);
            }
        }
    }
    if let Some(age) = cors.max_age {
        if let Err(e) = rules::check_duration(age) {
            r.error(&format!("{path}.maxAge"), e);
        }
        if age.as_std().subsec_nanos() > 0 {
            r.error(
                &format!("{path}.maxAge"),
                "max_age duration is accurate only to seconds precision",
            );
        }
    }
}

fn check_fault(r: &mut Report<'_, VirtualService>, path: &str, fault: &HTTPFaultInjection) {
    if fault.abort.is_none() && fault.delay.is_none() {
        r.error(
            path,
            "HTTP fault injection must have an abort and/or a delay",
        );
    }
    if let Some(abort) = &fault.abort {
        let p = format!("{path}.abort");
        if let Some(pct) = &abort.percentage
            && let Err(e) = rules::check_fractional_percent(pct.value)
        {
            r.error(&format!("{p}.percentage"), e);
        }
        if let Some(status) = &abort.grpc_status {
            if !GRPC_STATUSES.contains(&status.as_str()) {
                r.error(
                    &format!("{p}.grpcStatus"),
                    format!(
                        "gRPC status {status:?} is not supported. See \
                         https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of \
                         supported codes, for example 'NOT_FOUND'"
                    ),
                );
            }
        } else if abort.http2_error.is_some() {
            r.error(
                &format!("{p}.http2Error"),
                "HTTP/2 abort fault injection not supported yet",
            );
        } else if let Some(status) = abort.http_status {
            if let Err(e) = check_http_status(i64::from(status)) {
                r.error(&format!("{p}.httpStatus"), e);
            }
        } else {
            r.warning(&p, "abort configured, but error type not set");
        }
    }
    if let Some(delay) = &fault.delay {
        let p = format!("{path}.delay");
        if let Some(pct) = &delay.percentage
            && let Err(e) = rules::check_fractional_percent(pct.value)
        {
            r.error(&format!("{p}.percentage"), e);
        }
        if let Some(d) = delay.fixed_delay {
            if let Err(e) = rules::check_duration(d) {
                r.error(&format!("{p}.fixedDelay"), e);
            }
        } else if let Some(d) = delay.exponential_delay {
            if let Err(e) = rules::check_duration(d) {
                r.error(&format!("{p}.exponentialDelay"), e);
            }
            r.error(
                &format!("{p}.exponentialDelay"),
                "exponentialDelay not supported yet",
            );
        }
    }
}

fn check_http_status(status: i64) -> Result<(), String> {
    if !(200..=600).contains(&status) {
        return Err(format!("HTTP status {status} is not in range 200-599"));
    }
    Ok(())
}

fn check_redirect(redirect: &HTTPRedirect) -> Result<(), String> {
    let set = |f: &Option<String>| f.as_deref().is_some_and(|s| !s.is_empty());
    if !set(&redirect.uri)
        && !set(&redirect.authority)
        && redirect.port.is_none()
        && redirect.derive_port.is_none()
        && !set(&redirect.scheme)
    {
        return Err("redirect must specify URI, authority, scheme, or port".into());
    }
    if let Some(code) = redirect.redirect_code.filter(|c| *c != 0)
        && !(300..=399).contains(&code)
    {
        return Err(format!("{code} is not a valid redirect code, must be 3xx"));
    }
    if let Some(scheme) = redirect.scheme.as_deref().filter(|s| !s.is_empty())
        && scheme != "http"
        && scheme != "https"
    {
        return Err("invalid redirect scheme, must be \"http\" or \"https\"".into());
    }
    if let Some(port) = redirect.port.filter(|p| *p > 0) {
        rules::check_port(i64::from(port))?;
    }
    Ok(())
}

fn check_retries(r: &mut Report<'_, VirtualService>, path: &str, retries: &HTTPRetry) {
    let attempts = retries.attempts.unwrap_or(0);
    if attempts < 0 {
        r.error(&format!("{path}.attempts"), "attempts cannot be negative");
    }
    let retry_on = retries.retry_on.as_deref().unwrap_or_default();
    if attempts == 0
        && (retries.per_try_timeout.is_some()
            || !retry_on.is_empty()
            || retries.retry_remote_localities.is_some())
    {
        r.error(
            path,
            "http retry policy configured when attempts are set to 0 (disabled)",
        );
    }
    if let Some(t) = retries.per_try_timeout
        && let Err(e) = rules::check_duration(t)
    {
        r.error(&format!("{path}.perTryTimeout"), e);
    }
    if !retry_on.is_empty() {
        for policy in retry_on.split(',') {
            let status = policy.parse::<i64>().ok().is_some_and(is_known_http_status);
            if !status && !RETRY_ON_POLICIES.contains(&policy) {
                r.error(
                    &format!("{path}.retryOn"),
                    format!("{policy:?} is not a valid retryOn policy"),
                );
            }
        }
    }
}

fn check_rewrite(rewrite: &HTTPRewrite) -> Result<(), String> {
    let uri = rewrite.uri.as_deref().is_some_and(|u| !u.is_empty());
    let authority = rewrite.authority.as_deref().is_some_and(|a| !a.is_empty());
    if uri && rewrite.uri_regex_rewrite.is_some() {
        return Err("rewrite may only contain one of URI or UriRegexRewrite".into());
    }
    if !uri && rewrite.uri_regex_rewrite.is_none() && !authority {
        return Err(
            "rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of \
             URI or UriRegexRewrite may be specified"
                .into(),
        );
    }
    if let Some(rr) = &rewrite.uri_regex_rewrite {
        let m = rr.match_.as_deref().unwrap_or_default();
        let w = rr.rewrite.as_deref().unwrap_or_default();
        let result = if m.is_empty() || w.is_empty() {
            Err("UriRegexRewrite requires both Rewrite and Match fields to be specified".to_owned())
        } else {
            rules::check_regex(m, "HTTPRewrite.UriRegexRewrite.Match")
        };
        result.map_err(|e| format!("UriRegexRewrite has errors: {e}"))?;
    }
    Ok(())
}

/// The authority may be rewritten in one place only: `rewrite.authority` or one request
/// header operation on `:authority`/`host`.
fn check_authority_rewrite(
    rewrite: Option<&HTTPRewrite>,
    headers: Option<&Headers>,
) -> Result<(), String> {
    let mut current = rewrite
        .and_then(|r| r.authority.clone())
        .unwrap_or_default();
    let Some(req) = headers.and_then(|h| h.request.as_ref()) else {
        return Ok(());
    };
    for (name, value) in req.set.iter().chain(req.add.iter()) {
        if !is_authority_header(name) {
            continue;
        }
        if !current.is_empty() {
            return Err(format!(
                "authority header cannot be set multiple times: have {current:?}, attempting to set {value:?}"
            ));
        }
        current.clone_from(value);
    }
    Ok(())
}

fn check_direct_response(r: &mut Report<'_, VirtualService>, path: &str, d: &HTTPDirectResponse) {
    if let Some(body) = &d.body {
        let size = match (&body.string, &body.bytes) {
            (Some(s), _) => s.len(),
            // `bytes` is base64 in YAML: four characters carry three bytes.
            (None, Some(b)) => b.len() / 4 * 3,
            (None, None) => 0,
        };
        if size > MB {
            r.error(
                &format!("{path}.body"),
                "large direct_responses may impact control plane performance, must be less than 1MB",
            );
        } else if size > 100 * KB {
            r.warning(
                &format!("{path}.body"),
                "large direct_responses may impact control plane performance",
            );
        }
    }
    if let Err(e) = check_http_status(i64::from(d.status)) {
        r.error(&format!("{path}.status"), e);
    }
}

fn check_http_route_destinations(
    r: &mut Report<'_, VirtualService>,
    path: &str,
    routes: &[HTTPRouteDestination],
    gateway_semantics: bool,
) {
    let mut total: i64 = 0;
    for (i, rd) in routes.iter().enumerate() {
        let p = format!("{path}.route[{i}]");
        if let Some(h) = &rd.headers {
            check_header_operations(r, &format!("{p}.headers"), h);
        }
        if !gateway_semantics {
            check_destination(r, &format!("{p}.destination"), &rd.destination);
        }
        let weight = rd.weight.unwrap_or(0);
        if weight < 0 {
            r.error(&format!("{p}.weight"), format!("weight {weight} < 0"));
        }
        total += i64::from(weight);
    }
    if routes.len() > 1 && total == 0 {
        r.error(&format!("{path}.route"), "total destination weight = 0");
    }
}

fn check_route_destinations(
    r: &mut Report<'_, VirtualService>,
    path: &str,
    routes: &[RouteDestination],
    gateway_semantics: bool,
) {
    let mut total: i64 = 0;
    for (i, rd) in routes.iter().enumerate() {
        let p = format!("{path}.route[{i}]");
        if !gateway_semantics {
            check_destination(r, &format!("{p}.destination"), &rd.destination);
        }
        let weight = rd.weight.unwrap_or(0);
        if weight < 0 {
            r.error(&format!("{p}.weight"), format!("weight {weight} < 0"));
        }
        total += i64::from(weight);
    }
    if routes.len() > 1 && total == 0 {
        r.error(&format!("{path}.route"), "total destination weight = 0");
    }
}

fn check_l4_match_common(
    r: &mut Report<'_, VirtualService>,
    path: &str,
    subnets: &[String],
    port: Option<u32>,
    source_labels: &BTreeMap<String, String>,
    gateways: &[String],
) {
    for (i, subnet) in subnets.iter().enumerate() {
        if let Err(e) = rules::check_ip_subnet(subnet) {
            r.error(&format!("{path}.destinationSubnets[{i}]"), e);
        }
    }
    if let Some(port) = port.filter(|p| *p != 0)
        && let Err(e) = rules::check_port(i64::from(port))
    {
        r.error(&format!("{path}.port"), e);
    }
    for e in rules::label_errors(source_labels) {
        r.error(&format!("{path}.sourceLabels"), e);
    }
    for (k, gw) in gateways.iter().enumerate() {
        check_gateway_name(r, &format!("{path}.gateways[{k}]"), gw, false);
    }
}

fn check_tls_route(
    r: &mut Report<'_, VirtualService>,
    path: &str,
    tls: &TLSRoute,
    vs: &VirtualService,
    gateway_semantics: bool,
) {
    if tls.match_.is_empty() {
        r.error(path, "TLS route must have at least one match condition");
    }
    for (j, m) in tls.match_.iter().enumerate() {
        check_tls_match(r, &format!("{path}.match[{j}]"), m, vs);
    }
    if tls.route.is_empty() {
        r.error(path, "TLS route is required");
    }
    check_route_destinations(r, path, &tls.route, gateway_semantics);
}

fn check_tls_match(
    r: &mut Report<'_, VirtualService>,
    path: &str,
    m: &TLSMatchAttributes,
    vs: &VirtualService,
) {
    if m.sni_hosts.is_empty() {
        r.error(
            &format!("{path}.sniHosts"),
            "TLS match must have at least one SNI host",
        );
    }
    // Istio treats a VirtualService as a gateway one unless it names `mesh` (even with no
    // gateways at all) when it checks SNI hosts.
    let gateway_bound = !vs.gateways.iter().any(|g| g == MESH_GATEWAY);
    for (i, sni) in m.sni_hosts.iter().enumerate() {
        let p = format!("{path}.sniHosts[{i}]");
        let checked = if gateway_bound {
            rules::check_wildcard_domain_for_gateway(true, sni)
        } else {
            rules::check_wildcard_domain(sni)
        };
        if let Err(e) = checked {
            if rules::is_valid_ip(sni) {
                r.warning(
                    &p,
                    format!(
                        "using an IP address ({sni:?}) goes against SNI spec and most clients do not \
                         support this"
                    ),
                );
            } else {
                r.error(&p, e);
            }
            continue;
        }
        if !vs.hosts.iter().any(|h| rules::host_subset_of(sni, h)) {
            r.error(
                &p,
                format!(
                    "SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{}]",
                    vs.hosts.join(", ")
                ),
            );
        }
    }
    check_l4_match_common(
        r,
        path,
        &m.destination_subnets,
        m.port,
        &m.source_labels,
        &m.gateways,
    );
}

fn check_tcp_route(
    r: &mut Report<'_, VirtualService>,
    path: &str,
    tcp: &TCPRoute,
    gateway_semantics: bool,
) {
    for (j, m) in tcp.match_.iter().enumerate() {
        check_tcp_match(r, &format!("{path}.match[{j}]"), m);
    }
    if tcp.route.is_empty() {
        r.error(path, "TCP route is required");
    }
    check_route_destinations(r, path, &tcp.route, gateway_semantics);
}

fn check_tcp_match(r: &mut Report<'_, VirtualService>, path: &str, m: &L4MatchAttributes) {
    check_l4_match_common(
        r,
        path,
        &m.destination_subnets,
        m.port,
        &m.source_labels,
        &m.gateways,
    );
}

// ---------------------------------------------------------------------------------------------
// Unreachable rules (warnings, as Istio's webhook gives them)
// ---------------------------------------------------------------------------------------------

fn route_name(http: &HTTPRoute, n: usize) -> String {
    match http.name.as_deref().filter(|s| !s.is_empty()) {
        Some(name) => format!("{name:?}"),
        None => format!("#{n}"),
    }
}

fn request_name(m: &HTTPMatchRequest, n: usize) -> String {
    match m.name.as_deref().filter(|s| !s.is_empty()) {
        Some(name) => format!("{name:?}"),
        None => format!("#{n}"),
    }
}

/// A comparable form of a match, without its name.
fn match_key<M: serde::Serialize>(m: &M) -> String {
    serde_json::to_string(m).unwrap_or_default()
}

fn exact_or_prefix(m: Option<&StringMatch>) -> String {
    match m {
        Some(StringMatch::Exact(s)) if !s.is_empty() => format!("exact:{s}"),
        Some(StringMatch::Prefix(s)) if !s.is_empty() => format!("prefix:{s}"),
        _ => String::new(),
    }
}

/// The parts of a prefix match that decide whether an earlier one covers it.
struct PrefixMatch {
    route: String,
    request: String,
    prefix: String,
    port: u32,
    method: String,
    authority: String,
    headers: BTreeMap<String, String>,
    query_params: BTreeMap<String, String>,
    without_headers: BTreeMap<String, String>,
}

fn prefix_match(route: String, m: &HTTPMatchRequest, n: usize) -> Option<PrefixMatch> {
    let Some(StringMatch::Prefix(prefix)) = &m.uri else {
        return None;
    };
    if prefix.is_empty() {
        return None;
    }
    let map = |h: &BTreeMap<String, Option<StringMatch>>| {
        h.iter()
            .map(|(k, v)| (k.clone(), exact_or_prefix(v.as_ref())))
            .collect::<BTreeMap<_, _>>()
    };
    let mut method = exact_or_prefix(m.method.as_ref());
    if method.is_empty() {
        method = "exact:GET".into();
    }
    Some(PrefixMatch {
        route,
        request: request_name(m, n),
        prefix: prefix.clone(),
        port: m.port.unwrap_or(0),
        method,
        authority: exact_or_prefix(m.authority.as_ref()),
        headers: map(&m.headers),
        query_params: map(&m.query_params),
        without_headers: map(&m.without_headers),
    })
}

/// Istio's `coveredValidation`: does earlier match `a` take every request later match `b`
/// would?
fn covers(a: &PrefixMatch, b: &PrefixMatch) -> bool {
    let value_covers = |av: &String, bv: &String| av == bv || av.starts_with(bv.as_str());
    let maps_cover = |am: &BTreeMap<String, String>, bm: &BTreeMap<String, String>| {
        am.len() == bm.len()
            && am
                .iter()
                .all(|(k, av)| bm.get(k).is_some_and(|bv| value_covers(av, bv)))
    };
    b.prefix.starts_with(&a.prefix)
        && a.port == b.port
        && value_covers(&a.method, &b.method)
        && value_covers(&a.authority, &b.authority)
        && maps_cover(&a.headers, &b.headers)
        && maps_cover(&a.query_params, &b.query_params)
        && maps_cover(&a.without_headers, &b.without_headers)
}

// Istio's webhook says these as warnings, but `istioctl analyze` reports them with codes of
// their own (IST0130, IST0131), which is what tools keyed on the analyzer's codes look for.
fn warn_unused(r: &mut Report<'_, VirtualService>, path: &str, rule: &str, reason: &str) {
    r.with_code(
        istio_codes::VS_UNREACHABLE_RULE,
        Level::Warning,
        path,
        format!("VirtualService rule {rule} not used ({reason})."),
    );
}

fn warn_ineffective(
    r: &mut Report<'_, VirtualService>,
    path: &str,
    rule: &str,
    m: &str,
    dup: &str,
) {
    // Istio's analyzer says this as Info, its webhook as a warning; one finding serves both
    // here, so it keeps the webhook's level, which is what `kubectl apply` would show.
    r.with_code(
        istio_codes::VS_INEFFECTIVE_MATCH,
        Level::Warning,
        path,
        format!(
            "VirtualService rule {rule} match {m} is not used (duplicate/overlapping match in rule {dup})."
        ),
    );
}

fn analyze_unreachable_http_rules(r: &mut Report<'_, VirtualService>, routes: &[HTTPRoute]) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut empty_match_seen = false;
    let mut prefixes = Vec::new();
    for (n, route) in routes.iter().enumerate() {
        let path = format!("spec.http[{n}]");
        let name = route_name(route, n);
        if route.match_.is_empty() {
            if empty_match_seen {
                warn_unused(r, &path, &name, "only the last rule can have no matches");
            }
            empty_match_seen = true;
            continue;
        }
        let mut duplicates = 0;
        for (j, m) in route.match_.iter().enumerate() {
            let mut unnamed = m.clone();
            unnamed.name = None;
            let key = match_key(&unnamed);
            if let Some(&dup) = seen.get(&key) {
                let dup_name = route_name(&routes[dup], dup);
                warn_ineffective(
                    r,
                    &format!("{path}.match[{j}]"),
                    &name,
                    &request_name(m, j),
                    &dup_name,
                );
                duplicates += 1;
                continue;
            }
            seen.insert(key, n);
            if let Some(p) = prefix_match(name.clone(), m, j) {
                prefixes.push((n, j, p));
            }
        }
        if duplicates == route.match_.len() {
            warn_unused(r, &path, &name, "all matches used by prior rules");
        }
    }
    for (i, (_, _, a)) in prefixes.iter().enumerate() {
        for (n, j, b) in &prefixes[i + 1..] {
            if a.prefix == b.prefix || !covers(a, b) {
                continue;
            }
            warn_ineffective(
                r,
                &format!("spec.http[{n}].match[{j}]"),
                &b.route,
                &format!("{} of prefix {}", b.request, b.prefix),
                &format!("{} of prefix {} on {}", a.request, a.prefix, a.route),
            );
        }
    }
}

fn analyze_unreachable_l4_rules<'a, M: serde::Serialize + 'a>(
    r: &mut Report<'_, VirtualService>,
    kind: &str,
    routes: impl Iterator<Item = &'a [M]>,
) {
    let routes: Vec<&[M]> = routes.collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut empty_match_seen = false;
    for (n, matches) in routes.iter().enumerate() {
        let path = format!("spec.{kind}[{n}]");
        let name = format!("#{n}");
        if matches.is_empty() {
            if empty_match_seen {
                warn_unused(r, &path, &name, "only the last rule can have no matches");
            }
            empty_match_seen = true;
            continue;
        }
        let mut duplicates = 0;
        for (j, m) in matches.iter().enumerate() {
            let key = match_key(m);
            if let Some(&dup) = seen.get(&key) {
                warn_ineffective(
                    r,
                    &format!("{path}.match[{j}]"),
                    &name,
                    &format!("#{j}"),
                    &format!("#{dup}"),
                );
                duplicates += 1;
            } else {
                seen.insert(key, n);
            }
        }
        if duplicates == matches.len() {
            warn_unused(r, &path, &name, "all matches used by prior rules");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_value_format() {
        for ok in [
            "foo",
            "%HOSTNAME%",
            "100%%",
            "prefix %HOSTNAME% suffix",
            "%REQ(x-a)%",
            "%ENVIRONMENT([\"A\"])%",
            "",
        ] {
            assert!(check_header_value(ok).is_ok(), "{ok}");
        }
        for bad in ["abc%123", "%START_TIME%%", "a\u{1}b", "%VAR(\"a\" x)%"] {
            assert!(check_header_value(bad).is_err(), "{bad}");
        }
    }

    fn codes(yaml: &str) -> Vec<&'static str> {
        let loaded = sluice_model::load_str("vs.yaml", yaml);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        crate::validate::validate(&loaded.resources)
            .iter()
            .map(|d| d.code)
            .collect()
    }

    const ROUTES: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: default}
spec:
  hosts: [api.example.com]
  http:
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: api.example.com}}]
  - match: [{uri: {prefix: SECOND}}]
    route: [{destination: {host: api.example.com}}]
";

    #[test]
    fn a_rule_whose_matches_all_come_earlier_is_ist0130_and_ist0131() {
        let mut got = codes(&ROUTES.replace("SECOND", "/a"));
        got.sort_unstable();
        assert_eq!(got, ["IST0130", "IST0131"]);
        assert_eq!(codes(&ROUTES.replace("SECOND", "/a/b")), ["IST0131"]);
    }

    #[test]
    fn distinct_matches_are_neither() {
        assert!(codes(&ROUTES.replace("SECOND", "/b")).is_empty());
    }

    #[test]
    fn jwt_claim_keys() {
        assert!(is_jwt_claim_route("@request.auth.claims.foo"));
        assert!(is_jwt_claim_route("@request.auth.claims[foo][bar]"));
        assert!(!is_jwt_claim_route("@request.auth.claims"));
        assert!(!is_jwt_claim_route("x-user"));
        assert!(!is_jwt_claim_route("@request.auth.claimé.x"));
    }

    #[test]
    fn retry_status_codes() {
        assert!(is_known_http_status(503) && is_known_http_status(429));
        assert!(!is_known_http_status(599) && !is_known_http_status(0));
    }
}
