//! Host patterns from other proxies' dialects (sluice's SLC0109–SLC0111): each finding at its
//! file, line and field, through the real loader, validation and analysis (`check`), and the
//! patterns that must stay quiet.

use sluice_compile::check;
use sluice_model::{Diagnostic, Level, load_str};

const FILE: &str = "hosts.yaml";
const LEADING_DOT: &str = "SLC0109";
const MISSES_APEX: &str = "SLC0110";
const MATCH_ALL: &str = "SLC0111";
const OURS: [&str; 3] = [LEADING_DOT, MISSES_APEX, MATCH_ALL];

/// Everything `sluice analyze` says about `yaml`, which must load cleanly.
fn diagnostics(yaml: &str) -> Vec<Diagnostic> {
    let loaded = load_str(FILE, yaml);
    assert!(
        loaded.diagnostics.is_empty(),
        "fixture does not load cleanly: {:#?}",
        loaded.diagnostics
    );
    check(&loaded.resources)
}

fn with_code<'d>(diags: &'d [Diagnostic], code: &str) -> Vec<&'d Diagnostic> {
    diags.iter().filter(|d| d.code == code).collect()
}

/// The 1-based line of the one line of `yaml` that contains `needle`.
fn line_of(yaml: &str, needle: &str) -> u32 {
    let lines: Vec<usize> = yaml
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(lines.len(), 1, "{needle:?} must be on exactly one line");
    u32::try_from(lines[0]).expect("small file")
}

/// Asserts that `d` is a Warning with `code` about `origin`, at `path` on `line`.
fn assert_at(d: &Diagnostic, code: &str, origin: &str, line: u32, path: &str) {
    assert_eq!(d.code, code, "{d}");
    assert_eq!(d.level, Level::Warning, "{d}");
    assert_eq!(d.origin.as_deref(), Some(origin), "{d}");
    assert_eq!(d.path.as_deref(), Some(path), "{d}");
    let loc = d.location.as_ref().expect("located");
    assert_eq!((&*loc.file, loc.line), (FILE, line), "{d}");
}

fn none_of_ours(diags: &[Diagnostic]) {
    let ours: Vec<String> = diags
        .iter()
        .filter(|d| OURS.contains(&d.code))
        .map(ToString::to_string)
        .collect();
    assert!(ours.is_empty(), "unexpected: {ours:#?}");
}

const REGISTRY_ONLY: &str = "\
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {name: mesh, namespace: istio-system}
spec:
  meshConfig:
    outboundTrafficPolicy: {mode: REGISTRY_ONLY}
---
";

const ALLOW_ANY: &str = "\
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {name: mesh, namespace: istio-system}
spec:
  meshConfig:
    outboundTrafficPolicy: {mode: ALLOW_ANY}
---
";

// --- SLC0109: Squid's leading dot ------------------------------------------------------------

const POLICY_WITH_DOTS: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: block, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: DENY
  rules:
  - to:
    - operation:
        hosts:
        - api.example.com
        - .example.com
        - '*.example.net'
        - example.net
  - to:
    - operation:
        notHosts:
        - .example.org:443
";

#[test]
fn a_leading_dot_in_policy_hosts_is_reported_at_the_value() {
    let diags = diagnostics(POLICY_WITH_DOTS);
    let found = with_code(&diags, LEADING_DOT);
    assert_eq!(found.len(), 2, "{found:#?}");
    let origin = "AuthorizationPolicy istio-system/block";
    assert_at(
        found[0],
        LEADING_DOT,
        origin,
        line_of(POLICY_WITH_DOTS, "- .example.com"),
        "spec.rules[0].to[0].operation.hosts[1]",
    );
    assert!(
        found[0]
            .message
            .contains("write \"*.example.com\" (and \"example.com\" for the apex)"),
        "{}",
        found[0]
    );
    assert!(
        found[0]
            .message
            .contains("this DENY rule denies none of the hosts meant"),
        "{}",
        found[0]
    );
    assert_at(
        found[1],
        LEADING_DOT,
        origin,
        line_of(POLICY_WITH_DOTS, "- .example.org:443"),
        "spec.rules[1].to[0].operation.notHosts[0]",
    );
    // The port is not part of the suggested name.
    assert!(
        found[1].message.contains("write \"*.example.org\""),
        "{}",
        found[1]
    );
}

#[test]
fn wildcard_and_exact_policy_hosts_are_not_leading_dots() {
    let yaml = POLICY_WITH_DOTS
        .replace("- .example.com", "- '*.example.org'")
        .replace("- .example.org:443", "- example.org:443");
    none_of_ours(&diagnostics(&yaml));
}

/// Istio's webhook rejects `.example.com` and `**.example.com` in every Istio host field:
/// validation says so (IST0106 Error) and analysis adds nothing at the same field.
#[test]
fn leading_dots_and_double_stars_in_istio_host_fields_are_left_to_validation() {
    let yaml = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: se, namespace: default}
spec:
  hosts:
  - .example.com
  - '**.example.org'
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: default}
spec:
  hosts:
  - .example.com
  - '**.example.org'
  http: [{route: [{destination: {host: api.example.com}}]}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    tls: {mode: PASSTHROUGH}
    hosts:
    - .example.com
    - 'ns/**.example.org'
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr, namespace: default}
spec:
  host: .example.com
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress:
  - hosts:
    - ./.example.com
    - '*/**.example.org'
";
    let diags = diagnostics(yaml);
    let rejected = |origin: &str, path: &str| {
        assert!(
            diags.iter().any(|d| d.code == "IST0106"
                && d.level == Level::Error
                && d.origin.as_deref() == Some(origin)
                && d.path.as_deref() == Some(path)),
            "no IST0106 error for {origin} at {path}: {diags:#?}"
        );
    };
    for origin in ["ServiceEntry default/se", "VirtualService default/vs"] {
        rejected(origin, "spec.hosts[0]");
        rejected(origin, "spec.hosts[1]");
    }
    rejected("Gateway default/gw", "spec.servers[0].hosts[0]");
    rejected("Gateway default/gw", "spec.servers[0].hosts[1]");
    rejected("DestinationRule default/dr", "spec.host");
    rejected("Sidecar default/default", "spec.egress[0].hosts[0]");
    rejected("Sidecar default/default", "spec.egress[0].hosts[1]");
    none_of_ours(&diags);
}

/// In a policy `**` is a `*` in the middle: validation warns that it is matched literally.
#[test]
fn a_double_star_in_policy_hosts_is_left_to_validation() {
    let yaml = POLICY_WITH_DOTS.replace("- .example.com", "- '**.example.com'");
    let diags = diagnostics(&yaml);
    let path = "spec.rules[0].to[0].operation.hosts[1]";
    assert!(
        diags.iter().any(|d| d.code == "IST0106"
            && d.level == Level::Warning
            && d.path.as_deref() == Some(path)
            && d.message.contains("matched literally")),
        "{diags:#?}"
    );
    assert!(
        !diags
            .iter()
            .any(|d| OURS.contains(&d.code) && d.path.as_deref() == Some(path)),
        "{diags:#?}"
    );
}

// --- SLC0110: a wildcard meant to include the apex -------------------------------------------

const WILDCARD_ENTRY: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: default}
spec:
  hosts:
  - '*.example.com'
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: NONE
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: apex, namespace: default}
spec:
  host: example.com
";

#[test]
fn a_wildcard_entry_without_the_apex_another_resource_names_is_reported() {
    let diags = diagnostics(WILDCARD_ENTRY);
    let found = with_code(&diags, MISSES_APEX);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_at(
        found[0],
        MISSES_APEX,
        "ServiceEntry default/wild",
        line_of(WILDCARD_ENTRY, "'*.example.com'"),
        "spec.hosts[0]",
    );
    let msg = &found[0].message;
    assert!(
        msg.contains("DestinationRule default/apex names example.com at spec.host"),
        "{msg}"
    );
    assert!(msg.contains("add \"example.com\" to hosts"), "{msg}");
}

#[test]
fn a_wildcard_entry_is_quiet_when_the_apex_is_registered_or_named_by_nobody() {
    // Registered by the same entry, or by another one.
    let same = WILDCARD_ENTRY.replace(
        "  - '*.example.com'",
        "  - '*.example.com'\n  - example.com",
    );
    none_of_ours(&diagnostics(&same));
    let other = format!(
        "{WILDCARD_ENTRY}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: apex, namespace: other}}
spec:
  hosts: [EXAMPLE.com]
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: DNS
"
    );
    none_of_ours(&diagnostics(&other));
    // Nobody names the apex.
    let unnamed = WILDCARD_ENTRY.replace("host: example.com", "host: api.example.com");
    none_of_ours(&diagnostics(&unnamed));
}

const WILDCARD_ROUTE: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: both, namespace: default}
spec:
  hosts:
  - '*.example.com'
  - example.com
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DYNAMIC_DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: via-gateway, namespace: default}
spec:
  hosts:
  - \"*.example.com\"
  http:
  - route:
    - destination: {host: example.com}
";

#[test]
fn a_wildcard_route_without_the_registered_apex_is_reported() {
    let diags = diagnostics(WILDCARD_ROUTE);
    let found = with_code(&diags, MISSES_APEX);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_at(
        found[0],
        MISSES_APEX,
        "VirtualService default/via-gateway",
        // The VirtualService's host, not the ServiceEntry's, which lists the apex.
        line_of(WILDCARD_ROUTE, "- \"*.example.com\""),
        "spec.hosts[0]",
    );
    let msg = &found[0].message;
    assert!(
        msg.contains("ServiceEntry default/both names example.com at spec.hosts[1]"),
        "{msg}"
    );
    assert!(
        msg.contains("no VirtualService routes example.com"),
        "{msg}"
    );
    // Routed by another VirtualService: quiet.
    let routed = format!(
        "{WILDCARD_ROUTE}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: apex, namespace: default}}
spec:
  hosts: [example.com]
  http: [{{route: [{{destination: {{host: example.com}}}}]}}]
"
    );
    none_of_ours(&diagnostics(&routed));
}

// --- SLC0111: `*` on the egress gateway under REGISTRY_ONLY ----------------------------------

const MATCH_ALL_GATEWAY: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    tls: {mode: PASSTHROUGH}
    hosts:
    - api.example.com
    - '*'
  - port: {number: 80, name: http, protocol: HTTP}
    hosts:
    - 'default/*'
  - port: {number: 8443, name: tls-wild, protocol: TLS}
    tls: {mode: PASSTHROUGH}
    hosts:
    - '*/*.example.com'
";

#[test]
fn a_match_all_egress_gateway_host_is_reported_under_registry_only() {
    let yaml = format!("{REGISTRY_ONLY}{MATCH_ALL_GATEWAY}");
    let diags = diagnostics(&yaml);
    let found = with_code(&diags, MATCH_ALL);
    assert_eq!(found.len(), 2, "{found:#?}");
    let origin = "Gateway istio-system/egress";
    assert_at(
        found[0],
        MATCH_ALL,
        origin,
        line_of(&yaml, "- '*'"),
        "spec.servers[0].hosts[1]",
    );
    assert!(found[0].message.contains("(port 443)"), "{}", found[0]);
    assert!(found[0].message.contains("REGISTRY_ONLY"), "{}", found[0]);
    assert_at(
        found[1],
        MATCH_ALL,
        origin,
        line_of(&yaml, "'default/*'"),
        "spec.servers[1].hosts[0]",
    );
}

#[test]
fn a_match_all_gateway_host_is_quiet_under_allow_any() {
    none_of_ours(&diagnostics(MATCH_ALL_GATEWAY));
    none_of_ours(&diagnostics(&format!("{ALLOW_ANY}{MATCH_ALL_GATEWAY}")));
}

/// A Gateway for Istio's ingress gateway is not sluice's egress gateway: `*` is usual there.
#[test]
fn a_match_all_host_on_a_gateway_sluice_does_not_serve_is_quiet() {
    let ingress = MATCH_ALL_GATEWAY.replace("istio: egressgateway", "istio: ingressgateway");
    let diags = diagnostics(&format!("{REGISTRY_ONLY}{ingress}"));
    none_of_ours(&diags);
}

/// Sidecar egress hosts import registered services only: `*/*` (Istio's default), `./*` or
/// `ns/*` leave REGISTRY_ONLY in force.
#[test]
fn sidecar_egress_wildcards_are_quiet_under_registry_only() {
    let yaml = format!(
        "{REGISTRY_ONLY}\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: default}}
spec:
  egress:
  - hosts: ['*/*']
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: other}}
spec:
  egress:
  - hosts: ['./*', 'istio-system/*']
"
    );
    none_of_ours(&diagnostics(&yaml));
}
