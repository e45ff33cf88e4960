//! AuthorizationPolicy evaluation table: policy set + request attributes → allow / deny, with
//! the rule that decided. Each row names the Istio rule it checks: a row of
//! `testdata/acceptance/authz/expected.md` (tables A1–A9, from Istio's `authz_test.go`), a
//! `builder-rbac` fixture (Istio's `builder_test.go`), the guide's policies, or a sentence of
//! Istio's AuthorizationPolicy reference.
//!
//! Policies are read from the fixtures in place; Istio's integration templates are rendered
//! with fixed values (service `b` in namespace `default`, clients `a.ns1` = allowed and
//! `a.ns2` = denied, echo ports http 18080 / http2 18085 / grpc 17070 / tcp 19090).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use sluice_compile::authz::{ROOT_NAMESPACE, compile_policies};
use sluice_snapshot::authz::{Decision, Peer, Policies, Request};

// --- policy sets ------------------------------------------------------------------------------

enum Part {
    /// A file under `testdata/`, as it is.
    File(&'static str),
    /// An Istio integration template under `testdata/acceptance/authz/integration-templates/`,
    /// rendered with [`TEMPLATE_VALUES`] and then the set's own replacements.
    Template(&'static str, &'static [(&'static str, &'static str)]),
    Inline(&'static str),
}

struct Set {
    parts: &'static [Part],
    /// The workload the policies are compiled for.
    namespace: &'static str,
    labels: &'static [(&'static str, &'static str)],
}

const GATEWAY: &[(&str, &str)] = &[("istio", "egressgateway")];
const ECHO_B: &[(&str, &str)] = &[("app", "b")];
const HTTPBIN: &[(&str, &str)] = &[("app", "httpbin"), ("version", "v1")];

const ALLOWED_IP: &str = "10.1.0.5";
const DENIED_IP: &str = "10.2.0.5";
const B_IP: &str = "10.3.0.5";

/// What Istio's test framework fills into its templates, for this table.
const TEMPLATE_VALUES: &[(&str, &str)] = &[
    ("{{ .To.ServiceName }}", "b"),
    ("{{ .To.NamespaceName }}", "default"),
    ("{{ .To.ClusterLocalFQDN }}", "b.default.svc.cluster.local"),
    ("{{ .SystemNamespace.Name }}", "istio-system"),
    (
        "{{.GatewayIstioLabel | default \"istio-ingressgateway\"}}",
        "istio-ingressgateway",
    ),
    (
        "{{.GatewayIstioLabel | default \"ingressgateway\"}}",
        "ingressgateway",
    ),
    ("{{ (.To.PortForName \"http\").ServicePort }}", "80"),
    ("{{ (.To.PortForName `http`).WorkloadPort }}", "18080"),
    ("{{ ( .To.PortForName `http` ).WorkloadPort }}", "18080"),
    ("{{ (.To.PortForName `http2`).WorkloadPort }}", "18085"),
    ("{{ (.To.PortForName `grpc`).WorkloadPort }}", "17070"),
    ("{{ (.To.PortForName `tcp`).WorkloadPort }}", "19090"),
    ("{{ .Allowed.SpiffeIdentity }}", "cluster.local/ns/ns1/sa/a"),
    ("{{ .Denied.SpiffeIdentity }}", "cluster.local/ns/ns2/sa/a"),
    ("{{ .Allowed.NamespaceName }}", "ns1"),
    ("{{ .Denied.NamespaceName }}", "ns2"),
    (
        "{{ .Allowed.MustWorkloads.Addresses | toJson }}",
        "[\"10.1.0.5\"]",
    ),
    (
        "{{ .Denied.MustWorkloads.Addresses | toJson }}",
        "[\"10.2.0.5\"]",
    ),
    (
        "{{ .To.MustWorkloads.Addresses | toJson }}",
        "[\"10.3.0.5\"]",
    ),
];

const GUIDE: Set = Set {
    parts: &[Part::File("guide/authz-egress-policy.yaml")],
    namespace: ROOT_NAMESPACE,
    labels: GATEWAY,
};

// The guide's authz-deny-all-egress.yaml is invalid YAML as published (it must be reported,
// not read); this is the policy it means: a selector and no rules.
const GUIDE_DENY_ALL: Set = Set {
    parts: &[Part::Inline(
        "apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: egress-deny-all, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
",
    )],
    namespace: ROOT_NAMESPACE,
    labels: GATEWAY,
};

const PRODUCTION: Set = Set {
    parts: &[Part::File("guide/production-egress-setup.yaml")],
    namespace: ROOT_NAMESPACE,
    labels: GATEWAY,
};

const A1: Set = Set {
    parts: &[Part::File(
        "acceptance/authz/egress-gateway/rendered-ns1.yaml",
    )],
    namespace: ROOT_NAMESPACE,
    labels: &[("app", "istio-egressgateway")],
};

const A2: Set = Set {
    parts: &[Part::Template("ingress-gateway.yaml.tmpl", &[])],
    namespace: ROOT_NAMESPACE,
    labels: &[("app", "istio-ingressgateway")],
};

const A3: Set = Set {
    parts: &[Part::Template("not-host.yaml.tmpl", &[])],
    namespace: "default",
    labels: ECHO_B,
};

const A4_METHOD: Set = Set {
    parts: &[Part::Template("not-method.yaml.tmpl", &[])],
    namespace: "default",
    labels: ECHO_B,
};

const A4_PORT: Set = Set {
    parts: &[Part::Template("not-port.yaml.tmpl", &[])],
    namespace: "default",
    labels: ECHO_B,
};

const A5: Set = Set {
    parts: &[Part::Template("path-precedence.yaml.tmpl", &[])],
    namespace: "default",
    labels: ECHO_B,
};

const A6: Set = Set {
    parts: &[Part::Template("path-templating.yaml.tmpl", &[])],
    namespace: "default",
    labels: ECHO_B,
};

const A7: Set = Set {
    parts: &[Part::Template("allow-principal.yaml.tmpl", &[])],
    namespace: "default",
    labels: ECHO_B,
};

// Istio's test applies deny-global.yaml.tmpl in the root namespace.
const A8: Set = Set {
    parts: &[
        Part::Template(
            "deny-global.yaml.tmpl",
            &[(
                "name: policy-deny-system",
                "name: policy-deny-system\n  namespace: istio-system",
            )],
        ),
        Part::Template("deny-namespace.yaml.tmpl", &[]),
    ],
    namespace: "default",
    labels: ECHO_B,
};

const A9: Set = Set {
    parts: &[Part::Template("conditions.yaml.tmpl", &[])],
    namespace: "default",
    labels: ECHO_B,
};

/// A `builder-rbac` fixture: Istio's builder test applies it to `app: httpbin, version: v1` in
/// namespace `foo`.
const fn builder(parts: &'static [Part]) -> Set {
    Set {
        parts,
        namespace: "foo",
        labels: HTTPBIN,
    }
}

const TCP_DENY_BOTH: Set = builder(&[Part::File(
    "acceptance/authz/builder-rbac/tcp/deny-both-http-tcp-in.yaml",
)]);
const TCP_ALLOW_ONLY_HTTP: Set = builder(&[Part::File(
    "acceptance/authz/builder-rbac/tcp/allow-only-http-in.yaml",
)]);
const TCP_ALLOW_BOTH: Set = builder(&[Part::File(
    "acceptance/authz/builder-rbac/tcp/allow-both-http-tcp-in.yaml",
)]);
const TCP_CUSTOM_ONLY_HTTP: Set = builder(&[Part::File(
    "acceptance/authz/builder-rbac/tcp/custom-only-http-in.yaml",
)]);
const HTTP_DENY_AND_ALLOW: Set = builder(&[Part::File(
    "acceptance/authz/builder-rbac/http/deny-and-allow-in.yaml",
)]);
const HTTP_ALLOW_EMPTY_RULE: Set = builder(&[Part::File(
    "acceptance/authz/builder-rbac/http/allow-empty-rule-in.yaml",
)]);
const HTTP_ALLOW_NIL_RULE: Set = builder(&[Part::File(
    "acceptance/authz/builder-rbac/http/allow-nil-rule-in.yaml",
)]);
const HTTP_DENY_EMPTY_RULE: Set = builder(&[Part::File(
    "acceptance/authz/builder-rbac/http/deny-empty-rule-in.yaml",
)]);
const HTTP_CUSTOM_BAD: Set = builder(&[Part::File(
    "acceptance/authz/builder-rbac/http/custom-bad-multiple-providers-in.yaml",
)]);
const HTTP_MULTIPLE: Set = builder(&[Part::File(
    "acceptance/authz/builder-rbac/http/multiple-policies-in.yaml",
)]);

const SCOPE: Set = Set {
    parts: &[Part::Inline(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: [\"6379\"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-namespace, namespace: other}
spec:
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-workload, namespace: default}
spec:
  selector: {matchLabels: {app: not-b}}
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-rules, namespace: default}
spec:
  action: DENY
",
    )],
    namespace: "default",
    labels: ECHO_B,
};

const NO_CERT: Set = Set {
    parts: &[Part::Inline(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-mtls, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: default-ns, namespace: istio-system}
spec:
  rules:
  - from: [{source: {principals: [\"cluster.local/ns/default/*\"]}}]
  - from: [{source: {principals: [\"*/sa/ci\"], namespaces: [\"build-*\"]}}]
",
    )],
    namespace: ROOT_NAMESPACE,
    labels: GATEWAY,
};

const DENY_HOSTS: Set = Set {
    parts: &[Part::Inline(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-evil, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {hosts: [\"evil.example.com\"]}}]}]
",
    )],
    namespace: ROOT_NAMESPACE,
    labels: GATEWAY,
};

const FAIL_CLOSED: Set = Set {
    parts: &[Part::Inline(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-bad-cidr, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {ports: [\"443\"]}}]
  - from: [{source: {ipBlocks: [\"10.0.0.300/8\"]}}]
",
    )],
    namespace: ROOT_NAMESPACE,
    labels: GATEWAY,
};

const FAIL_CLOSED_DENY: Set = Set {
    parts: &[Part::Inline(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-unknown-key, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {hosts: [\"evil.example.com\"]}}]
  - when: [{key: source.color, values: [\"red\"]}]
",
    )],
    namespace: ROOT_NAMESPACE,
    labels: GATEWAY,
};

// --- requests ---------------------------------------------------------------------------------

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

/// Plain HTTP on port 80 from the allowed client's address, `Host` as given.
fn http(host: &str, method: &str, path: &str) -> Request {
    Request::new(ip(ALLOWED_IP), 80)
        .with_destination_ip(ip(B_IP))
        .with_http(method, path)
        .with_host(host)
}

/// TLS passed through on `port`; sluice knows the destination host from the SNI.
fn tls(sni: &str, port: u16) -> Request {
    Request::new(ip(ALLOWED_IP), port)
        .with_sni(sni)
        .with_host(sni)
}

/// TCP on `port`, destination host unknown.
fn tcp(port: u16) -> Request {
    Request::new(ip(ALLOWED_IP), port)
}

trait Ext {
    /// Arrived over the mesh hop with this workload's certificate.
    fn from(self, ns: &str, sa: &str) -> Request;
    fn port(self, port: u16) -> Request;
    /// The client address the gateway trusts from `X-Forwarded-For`.
    fn xff(self, client: &str) -> Request;
    fn source(self, ip: &str) -> Request;
    /// TCP through the mesh hop, where the sidecar named the destination host.
    fn named(self, host: &str) -> Request;
    fn header(self, name: &str, value: &str) -> Request;
}

impl Ext for Request {
    fn from(self, ns: &str, sa: &str) -> Request {
        self.with_peer(Peer::from_spiffe(&format!(
            "spiffe://cluster.local/ns/{ns}/sa/{sa}"
        )))
    }
    fn port(mut self, port: u16) -> Request {
        self.destination_port = port;
        self
    }
    fn xff(self, client: &str) -> Request {
        self.with_header("x-forwarded-for", client)
            .with_remote_ip(ip(client))
    }
    fn source(mut self, addr: &str) -> Request {
        self.source_ip = ip(addr);
        self.remote_ip = ip(addr);
        self
    }
    fn named(self, host: &str) -> Request {
        self.with_host(host)
    }
    fn header(self, name: &str, value: &str) -> Request {
        self.with_header(name, value)
    }
}

// --- the table --------------------------------------------------------------------------------

struct Case {
    /// The Istio rule the row checks.
    why: &'static str,
    set: &'static Set,
    req: Request,
    /// `ALLOW`, `ALLOW <rule>` (allowed by that ALLOW rule), `DENY <rule>` or `DENY none`.
    want: &'static str,
}

fn case(why: &'static str, set: &'static Set, req: Request, want: &'static str) -> Case {
    Case {
        why,
        set,
        req,
        want,
    }
}

fn cases() -> Vec<Case> {
    let jwt1 = "Bearer <TokenIssuer1: iss test-issuer-1@istio.io, sub sub-1>";
    let jwt2 = "Bearer <TokenIssuer2: iss test-issuer-2@istio.io, sub sub-2>";
    vec![
        // Guide, Step 7 (authz-egress-policy.yaml) on the egress gateway.
        case(
            "guide Step 7 rule 1: frontend → api.github.com:443; hosts matched against the inner SNI (sluice's documented difference)",
            &GUIDE,
            tls("api.github.com", 443).from("default", "frontend"),
            "ALLOW ns[istio-system]-policy[egress-gateway-authz]-rule[0]",
        ),
        case(
            "guide Step 7: principals never match without a verified peer certificate",
            &GUIDE,
            tls("api.github.com", 443),
            "DENY none",
        ),
        case(
            "guide Step 7: frontend is not allowed to api.stripe.com",
            &GUIDE,
            tls("api.stripe.com", 443).from("default", "frontend"),
            "DENY none",
        ),
        case(
            "guide Step 7 rule 2: backend → api.stripe.com:443",
            &GUIDE,
            tls("api.stripe.com", 443).from("default", "backend"),
            "ALLOW ns[istio-system]-policy[egress-gateway-authz]-rule[1]",
        ),
        case(
            "guide Step 7 rule 2: payments/payment-processor → api.stripe.com:443",
            &GUIDE,
            tls("api.stripe.com", 443).from("payments", "payment-processor"),
            "ALLOW ns[istio-system]-policy[egress-gateway-authz]-rule[1]",
        ),
        case(
            "guide Step 7: payments/processor is refused (exact principal match)",
            &GUIDE,
            tls("api.stripe.com", 443).from("payments", "processor"),
            "DENY none",
        ),
        case(
            "guide Step 7 rule 3: namespace data → external-db.example.com:5432 over TCP, host named by the sidecar",
            &GUIDE,
            tcp(5432)
                .named("external-db.example.com")
                .from("data", "etl"),
            "ALLOW ns[istio-system]-policy[egress-gateway-authz]-rule[2]",
        ),
        case(
            "guide Step 7 rule 3: namespace analytics, any service account",
            &GUIDE,
            tcp(5432)
                .named("external-db.example.com")
                .from("analytics", "report"),
            "ALLOW ns[istio-system]-policy[egress-gateway-authz]-rule[2]",
        ),
        case(
            "Istio: to.operation.hosts is HTTP-only, so an ALLOW rule with hosts never matches TCP whose host is unknown",
            &GUIDE,
            tcp(5432).from("data", "etl"),
            "DENY none",
        ),
        case(
            "guide Step 7 rule 3: the port must match too",
            &GUIDE,
            tcp(5433)
                .named("external-db.example.com")
                .from("data", "etl"),
            "DENY none",
        ),
        case(
            "namespaces never match traffic without a verified peer certificate",
            &GUIDE,
            tcp(5432).named("external-db.example.com"),
            "DENY none",
        ),
        case(
            "Istio: hosts match case-insensitively",
            &GUIDE,
            tls("API.GitHub.com", 443).from("default", "frontend"),
            "ALLOW ns[istio-system]-policy[egress-gateway-authz]-rule[0]",
        ),
        case(
            "Istio: hosts match the authority as sent: `api.github.com:443` is not `api.github.com`",
            &GUIDE,
            http("api.github.com:443", "GET", "/")
                .port(443)
                .from("default", "frontend"),
            "DENY none",
        ),
        case(
            "guide Step 7 rule 1: port 443 only",
            &GUIDE,
            http("api.github.com", "GET", "/").from("default", "frontend"),
            "DENY none",
        ),
        case(
            "Istio: an ALLOW policy with no rules (`spec: {}`) denies everything it selects",
            &GUIDE_DENY_ALL,
            tls("api.github.com", 443).from("default", "frontend"),
            "DENY none",
        ),
        // Guide, production-egress-setup.yaml.
        case(
            "guide production setup: production/payment-service → api.payment-provider.com:443",
            &PRODUCTION,
            tls("api.payment-provider.com", 443).from("production", "payment-service"),
            "ALLOW ns[istio-system]-policy[payment-api-authz]-rule[0]",
        ),
        case(
            "guide production setup: production/checkout-service → api.payment-provider.com:443",
            &PRODUCTION,
            tls("api.payment-provider.com", 443).from("production", "checkout-service"),
            "ALLOW ns[istio-system]-policy[payment-api-authz]-rule[0]",
        ),
        case(
            "guide production setup: another service account of production is refused",
            &PRODUCTION,
            tls("api.payment-provider.com", 443).from("production", "reporting"),
            "DENY none",
        ),
        case(
            "guide production setup: without the ISTIO_MUTUAL hop there is no principal",
            &PRODUCTION,
            tls("api.payment-provider.com", 443),
            "DENY none",
        ),
        // A1: TestAuthz_EgressGateway.
        case(
            "A1 row 1 (a.ns1): host www.company.com AND path /allow",
            &A1,
            http("www.company.com", "GET", "/allow").from("ns1", "a"),
            "ALLOW ns[istio-system]-policy[egressgateway]-rule[0]",
        ),
        case(
            "A1 row 1 (a.ns2): rule 1 names no source",
            &A1,
            http("www.company.com", "GET", "/allow").from("ns2", "a"),
            "ALLOW ns[istio-system]-policy[egressgateway]-rule[0]",
        ),
        case(
            "A1 row 2: /deny matches no rule → 403",
            &A1,
            http("www.company.com", "GET", "/deny").from("ns1", "a"),
            "DENY none",
        ),
        case(
            "A1 row 3 (a.ns1): a-ns1-only.com from principal cluster.local/ns/ns1/sa/a",
            &A1,
            http("a-ns1-only.com", "GET", "/")
                .port(443)
                .from("ns1", "a"),
            "ALLOW ns[istio-system]-policy[egressgateway]-rule[1]",
        ),
        case(
            "A1 row 3 (a.ns2): another principal → 403",
            &A1,
            http("a-ns1-only.com", "GET", "/")
                .port(443)
                .from("ns2", "a"),
            "DENY none",
        ),
        case(
            "A1 row 4: requestPrincipals need a JWT; sluice reads none (reported) and fails closed (Istio: 200)",
            &A1,
            http("jwt-only.com", "GET", "/")
                .port(443)
                .from("ns1", "a")
                .header("authorization", jwt1),
            "DENY none",
        ),
        case(
            "A1 row 5: a JWT of the wrong issuer is not authorized → 403",
            &A1,
            http("jwt-only.com", "GET", "/")
                .port(443)
                .from("ns1", "a")
                .header("authorization", jwt2),
            "DENY none",
        ),
        case(
            "A1 row 6 (a.ns1): JWT and principal; JWT unsupported → fails closed (Istio: 200)",
            &A1,
            http("jwt-and-a-ns1-only.com", "GET", "/")
                .port(443)
                .from("ns1", "a")
                .header("authorization", jwt1),
            "DENY none",
        ),
        case(
            "A1 row 6 (a.ns2): wrong principal → 403",
            &A1,
            http("jwt-and-a-ns1-only.com", "GET", "/")
                .port(443)
                .from("ns2", "a")
                .header("authorization", jwt1),
            "DENY none",
        ),
        // A2: TestAuthz_IngressGateway (a DENY policy on the gateway).
        case(
            "A2: host deny.b.com",
            &A2,
            http("deny.b.com", "GET", "/"),
            "DENY ns[istio-system]-policy[policy-b]-rule[0]",
        ),
        case(
            "A2: host match is case-insensitive (DENY.B.COM)",
            &A2,
            http("DENY.B.COM", "GET", "/"),
            "DENY ns[istio-system]-policy[policy-b]-rule[0]",
        ),
        case(
            "A2: host match is case-insensitive (Deny.b.Com)",
            &A2,
            http("Deny.b.Com", "GET", "/"),
            "DENY ns[istio-system]-policy[policy-b]-rule[0]",
        ),
        case(
            "A2: suffix host *.suffix.b.com",
            &A2,
            http("deny.suffix.b.com", "GET", "/"),
            "DENY ns[istio-system]-policy[policy-b]-rule[0]",
        ),
        case(
            "A2: suffix host, any case",
            &A2,
            http("Deny.Suffix.b.Com", "GET", "/"),
            "DENY ns[istio-system]-policy[policy-b]-rule[0]",
        ),
        case(
            "A2: prefix host prefix.b.*",
            &A2,
            http("PREFIX.B.COM", "GET", "/"),
            "DENY ns[istio-system]-policy[policy-b]-rule[0]",
        ),
        case(
            "A2: no rule matches www.b.com / → allowed (no ALLOW policy applies)",
            &A2,
            http("www.b.com", "GET", "/").xff("172.16.0.1"),
            "ALLOW",
        ),
        case(
            "A2: two operations in one `to` are OR-ed: path /private alone",
            &A2,
            http("www.b.com", "GET", "/private").xff("172.16.0.1"),
            "DENY ns[istio-system]-policy[policy-b]-rule[1]",
        ),
        case(
            "A2: www.b.com /public → 200",
            &A2,
            http("www.b.com", "GET", "/public").xff("172.16.0.1"),
            "ALLOW",
        ),
        case(
            "A2: host internal.b.com alone",
            &A2,
            http("internal.b.com", "GET", "/").xff("172.16.0.1"),
            "DENY ns[istio-system]-policy[policy-b]-rule[1]",
        ),
        case(
            "A2: remoteIpBlocks single address from X-Forwarded-For",
            &A2,
            http("remoteipblocks.b.com", "GET", "/").xff("172.17.72.46"),
            "DENY ns[istio-system]-policy[policy-b]-rule[2]",
        ),
        case(
            "A2: remoteIpBlocks CIDR 192.168.4.0/23 holds 192.168.5.233",
            &A2,
            http("remoteipblocks.b.com", "GET", "/").xff("192.168.5.233"),
            "DENY ns[istio-system]-policy[policy-b]-rule[2]",
        ),
        case(
            "A2: remoteIpBlocks, client outside → 200",
            &A2,
            http("remoteipblocks.b.com", "GET", "/").xff("10.4.5.6"),
            "ALLOW",
        ),
        case(
            "A2: remoteIpBlocks reads the trusted X-Forwarded-For client, not the connection's peer",
            &A2,
            http("remoteipblocks.b.com", "GET", "/")
                .source("172.17.72.46")
                .xff("10.4.5.6"),
            "ALLOW",
        ),
        case(
            "A2: notRemoteIpBlocks, client outside 172.23.240.0/22 → 403",
            &A2,
            http("notremoteipblocks.b.com", "GET", "/").xff("10.2.3.4"),
            "DENY ns[istio-system]-policy[policy-b]-rule[3]",
        ),
        case(
            "A2: notRemoteIpBlocks, client inside → 200",
            &A2,
            http("notremoteipblocks.b.com", "GET", "/").xff("172.23.242.188"),
            "ALLOW",
        ),
        case(
            "A2: when remote.ip in 10.124.99.0/24",
            &A2,
            http("remoteipattr.b.com", "GET", "/").xff("10.124.99.10"),
            "DENY ns[istio-system]-policy[policy-b]-rule[4]",
        ),
        case(
            "A2: when remote.ip, other client → 200",
            &A2,
            http("remoteipattr.b.com", "GET", "/").xff("10.4.5.6"),
            "ALLOW",
        ),
        // A3–A5.
        case(
            "A3: notHosts — allow.b.com → 200",
            &A3,
            http("allow.b.com", "GET", "/"),
            "ALLOW ns[default]-policy[allow-b]-rule[0]",
        ),
        case(
            "A3: notHosts — deny.b.com → 403",
            &A3,
            http("deny.b.com", "GET", "/"),
            "DENY none",
        ),
        case(
            "A4: notMethods PUT — GET → 200",
            &A4_METHOD,
            http("b", "GET", "/"),
            "ALLOW ns[default]-policy[b-allow]-rule[0]",
        ),
        case(
            "A4: notMethods PUT — PUT → 403",
            &A4_METHOD,
            http("b", "PUT", "/"),
            "DENY none",
        ),
        case(
            "A4: notPorts http2 — the HTTP port → allowed",
            &A4_PORT,
            http("b", "GET", "/").port(18080),
            "ALLOW ns[default]-policy[b-allow]-rule[0]",
        ),
        case(
            "A4: notPorts http2 — the HTTP2 port → 403",
            &A4_PORT,
            http("b", "GET", "/").port(18085),
            "DENY none",
        ),
        case(
            "A5: DENY takes precedence over ALLOW (/allow/admin)",
            &A5,
            http("b", "GET", "/allow/admin"),
            "DENY ns[default]-policy[policy-b-deny]-rule[0]",
        ),
        case(
            "A5: the query string takes no part in paths (/allow/admin?param=value)",
            &A5,
            http("b", "GET", "/allow/admin?param=value"),
            "DENY ns[default]-policy[policy-b-deny]-rule[0]",
        ),
        case(
            "A5: prefix path /allow* (/allow?param=value)",
            &A5,
            http("b", "GET", "/allow?param=value"),
            "ALLOW ns[default]-policy[policy-b-allow]-rule[0]",
        ),
        // A6: path templates.
        case(
            "A6: /allow/admin/{**} holds /allow/admin/",
            &A6,
            http("b", "GET", "/allow/admin/"),
            "ALLOW ns[default]-policy[b]-rule[0]",
        ),
        case(
            "A6: /allow/admin/{**} does not hold /allow/admin",
            &A6,
            http("b", "GET", "/allow/admin"),
            "DENY none",
        ),
        case(
            "A6: /allow/admin?param=value is /allow/admin → 403",
            &A6,
            http("b", "GET", "/allow/admin?param=value"),
            "DENY none",
        ),
        case(
            "A6: {**} spans segments (/allow/admin/foo/temp.txt)",
            &A6,
            http("b", "GET", "/allow/admin/foo/temp.txt"),
            "ALLOW ns[default]-policy[b]-rule[0]",
        ),
        case(
            "A6: {*} is exactly one non-empty segment (/foo//bar/bat.txt)",
            &A6,
            http("b", "GET", "/foo//bar/bat.txt"),
            "DENY none",
        ),
        case(
            "A6: /foo/{*}/bar/{**} holds /foo/buzz/bar/bat/fuzz.txt",
            &A6,
            http("b", "GET", "/foo/buzz/bar/bat/fuzz.txt"),
            "ALLOW ns[default]-policy[b]-rule[0]",
        ),
        case(
            "A6: /store/{**}/cart holds /store//cart",
            &A6,
            http("b", "GET", "/store//cart"),
            "ALLOW ns[default]-policy[b]-rule[0]",
        ),
        case(
            "A6: /store/{**}/cart does not hold /store/cart",
            &A6,
            http("b", "GET", "/store/cart"),
            "DENY none",
        ),
        // A7: ALLOW by principal.
        case(
            "A7: a.ns1 on the TCP port → allowed",
            &A7,
            tcp(19090).from("ns1", "a"),
            "ALLOW ns[default]-policy[b]-rule[2]",
        ),
        case(
            "A7: a.ns2 on the TCP port → denied",
            &A7,
            tcp(19090).from("ns2", "a"),
            "DENY none",
        ),
        case(
            "A7: a.ns1 gRPC POST /proto.EchoTestService/Echo",
            &A7,
            http("b", "POST", "/proto.EchoTestService/Echo")
                .port(17070)
                .from("ns1", "a"),
            "ALLOW ns[default]-policy[b]-rule[1]",
        ),
        case(
            "A7: a.ns1 HTTP GET /allow?param=value → 200",
            &A7,
            http("b", "GET", "/allow?param=value")
                .port(18080)
                .from("ns1", "a"),
            "ALLOW ns[default]-policy[b]-rule[0]",
        ),
        case(
            "A7: a.ns2 HTTP GET /allow → 403",
            &A7,
            http("b", "GET", "/allow").port(18085).from("ns2", "a"),
            "DENY none",
        ),
        case(
            "A7: any client, /deny → 403",
            &A7,
            http("b", "GET", "/deny").port(18080).from("ns1", "a"),
            "DENY none",
        ),
        // A8: DENY by namespace + root-namespace DENY.
        case(
            "A8: a.ns1 on the TCP port → allowed",
            &A8,
            tcp(19090).from("ns1", "a"),
            "ALLOW",
        ),
        case(
            "A8: a.ns2 on the TCP port → denied",
            &A8,
            tcp(19090).from("ns2", "a"),
            "DENY ns[default]-policy[b]-rule[2]",
        ),
        case(
            "A8: a.ns1 GET /deny → 200",
            &A8,
            http("b", "GET", "/deny").port(18080).from("ns1", "a"),
            "ALLOW",
        ),
        case(
            "A8: a.ns2 GET /deny?param=value → 403",
            &A8,
            http("b", "GET", "/deny?param=value")
                .port(18080)
                .from("ns2", "a"),
            "DENY ns[default]-policy[b]-rule[0]",
        ),
        case(
            "A8: notPaths /deny/allow → 200 for any client",
            &A8,
            http("b", "GET", "/deny/allow").port(18085).from("ns2", "a"),
            "ALLOW",
        ),
        case(
            "A8: the root-namespace DENY applies to every workload (/global-deny)",
            &A8,
            http("b", "GET", "/global-deny")
                .port(18080)
                .from("ns1", "a"),
            "DENY ns[istio-system]-policy[policy-deny-system]-rule[0]",
        ),
        case(
            "builder-rbac/tcp + deny-global's comment: a DENY drops HTTP-only paths on TCP and denies all TCP on its ports",
            &A8,
            tcp(18080).from("ns1", "a"),
            "DENY ns[istio-system]-policy[policy-deny-system]-rule[0]",
        ),
        // A9: when conditions.
        case(
            "A9: request.headers[x-foo] = foo → 200",
            &A9,
            http("b", "GET", "/request-headers").header("x-foo", "foo"),
            "ALLOW ns[default]-policy[b-request-headers]-rule[0]",
        ),
        case(
            "A9: request.headers[x-foo] = bar → 403",
            &A9,
            http("b", "GET", "/request-headers").header("x-foo", "bar"),
            "DENY none",
        ),
        case(
            "A9: request.headers[x-foo] absent → 403",
            &A9,
            http("b", "GET", "/request-headers"),
            "DENY none",
        ),
        case(
            "A9: request.headers notValues bar, header foo → 200",
            &A9,
            http("b", "GET", "/request-headers-notValues").header("x-foo", "foo"),
            "ALLOW ns[default]-policy[b-request-headers]-rule[1]",
        ),
        case(
            "A9: request.headers notValues bar, header bar → 403",
            &A9,
            http("b", "GET", "/request-headers-notValues").header("x-foo", "bar"),
            "DENY none",
        ),
        case(
            "A9: source.ip of the allowed client → 200",
            &A9,
            http("b", "GET", "/source-ip"),
            "ALLOW ns[default]-policy[b-source-ip]-rule[0]",
        ),
        case(
            "A9: source.ip notValues, from the denied client → 403",
            &A9,
            http("b", "GET", "/source-ip-notValues").source(DENIED_IP),
            "DENY none",
        ),
        case(
            "A9: source.namespace ns1 → 200",
            &A9,
            http("b", "GET", "/source-namespace").from("ns1", "a"),
            "ALLOW ns[default]-policy[b-source-namespace]-rule[0]",
        ),
        case(
            "A9: source.namespace notValues ns2, from ns2 → 403",
            &A9,
            http("b", "GET", "/source-namespace-notValues").from("ns2", "a"),
            "DENY none",
        ),
        case(
            "A9: source.principal of the allowed client → 200",
            &A9,
            http("b", "GET", "/source-principal").from("ns1", "a"),
            "ALLOW ns[default]-policy[b-source-principal]-rule[0]",
        ),
        case(
            "A9: source.principal notValues, from the denied principal → 403",
            &A9,
            http("b", "GET", "/source-principal-notValues").from("ns2", "a"),
            "DENY none",
        ),
        case(
            "A9: source.trustDomain cluster.local → 200",
            &A9,
            http("b", "GET", "/source-trust-domain").from("ns1", "a"),
            "ALLOW ns[default]-policy[b-source-trust-domain]-rule[0]",
        ),
        case(
            "A9: destination.ip of the workload → 200",
            &A9,
            http("b", "GET", "/destination-ip-good"),
            "ALLOW ns[default]-policy[b-destination-ip]-rule[0]",
        ),
        case(
            "A9: destination.ip notValues of the workload → 403",
            &A9,
            http("b", "GET", "/destination-ip-notValues"),
            "DENY none",
        ),
        case(
            "A9: destination.port of the http port → 200",
            &A9,
            http("b", "GET", "/destination-port-good").port(18080),
            "ALLOW ns[default]-policy[b-destination-port]-rule[0]",
        ),
        case(
            "A9: destination.port 1 → 403",
            &A9,
            http("b", "GET", "/destination-port-bad").port(18080),
            "DENY none",
        ),
        case(
            "A9: connection.sni *.b.default.svc.cluster.local → 200",
            &A9,
            http("b", "GET", "/connection-sni-good")
                .with_sni("outbound_.80_._.b.default.svc.cluster.local"),
            "ALLOW ns[default]-policy[b-connection-sni]-rule[0]",
        ),
        case(
            "A9: connection.sni never-matched → 403",
            &A9,
            http("b", "GET", "/connection-sni-bad")
                .with_sni("outbound_.80_._.b.default.svc.cluster.local"),
            "DENY none",
        ),
        case(
            "A9: /other — ALLOW policies exist and none matches → 403",
            &A9,
            http("b", "GET", "/other").from("ns1", "a"),
            "DENY none",
        ),
        // builder-rbac fixtures.
        case(
            "builder-rbac/tcp/deny-both-http-tcp: a DENY rule with only HTTP fields becomes deny-all on TCP",
            &TCP_DENY_BOTH,
            tcp(9999),
            "DENY ns[foo]-policy[httpbin-deny]-rule[0]",
        ),
        case(
            "builder-rbac/tcp/allow-only-http: HTTP-only fields in an ALLOW rule make it match nothing on TCP",
            &TCP_ALLOW_ONLY_HTTP,
            tcp(80).from("ns-1", "x"),
            "DENY none",
        ),
        case(
            "builder-rbac/tcp/allow-only-http, sluice's difference: hosts apply when the destination host is known",
            &TCP_ALLOW_ONLY_HTTP,
            tcp(80).named("example.com").from("ns-1", "x"),
            "ALLOW ns[foo]-policy[httpbin-deny]-rule[1]",
        ),
        case(
            "builder-rbac/tcp/allow-both-http-tcp: only the TCP-only rule[3] survives (ns-1, port 80)",
            &TCP_ALLOW_BOTH,
            tcp(80).from("ns-1", "x"),
            "ALLOW ns[foo]-policy[httpbin-deny]-rule[3]",
        ),
        case(
            "builder-rbac/tcp/allow-both-http-tcp: rule[1] (port 8080 + GET) is dropped on TCP",
            &TCP_ALLOW_BOTH,
            tcp(8080).from("ns-1", "x"),
            "DENY none",
        ),
        case(
            "builder-rbac/tcp/allow-both-http-tcp: the same rule[1] matches HTTP GET",
            &TCP_ALLOW_BOTH,
            http("httpbin", "GET", "/").port(8080).from("ns-1", "x"),
            "ALLOW ns[foo]-policy[httpbin-deny]-rule[1]",
        ),
        case(
            "builder-rbac/tcp/custom-only-http: CUSTOM is unsupported and denies like a DENY, so its HTTP-only rule widens on TCP",
            &TCP_CUSTOM_ONLY_HTTP,
            tcp(80),
            "DENY istio-ext-authz-default-ns[foo]-policy[httpbin-1]-rule[0]-deny-due-to-bad-CUSTOM-action",
        ),
        case(
            "builder-rbac/http/custom-bad-multiple-providers: a bad CUSTOM rule denies what it matches",
            &HTTP_CUSTOM_BAD,
            http("httpbin", "GET", "/httpbin2"),
            "DENY istio-ext-authz-another-ns[foo]-policy[httpbin-2]-rule[0]-deny-due-to-bad-CUSTOM-action",
        ),
        case(
            "builder-rbac/http/custom-bad-multiple-providers: and nothing else",
            &HTTP_CUSTOM_BAD,
            http("httpbin", "GET", "/other"),
            "ALLOW",
        ),
        case(
            "builder-rbac/http/deny-and-allow: DENY first",
            &HTTP_DENY_AND_ALLOW,
            http("httpbin", "GET", "/").with_peer(Peer::from_spiffe("spiffe://deny")),
            "DENY ns[foo]-policy[httpbin-deny]-rule[0]",
        ),
        case(
            "builder-rbac/http/deny-and-allow: then ALLOW",
            &HTTP_DENY_AND_ALLOW,
            http("httpbin", "GET", "/").with_peer(Peer::from_spiffe("spiffe://allow")),
            "ALLOW ns[foo]-policy[httpbin-allow]-rule[0]",
        ),
        case(
            "builder-rbac/http/deny-and-allow: neither → denied by the ALLOW policy",
            &HTTP_DENY_AND_ALLOW,
            http("httpbin", "GET", "/").with_peer(Peer::from_spiffe("spiffe://other")),
            "DENY none",
        ),
        case(
            "builder-rbac/http/allow-empty-rule: `rules: [{}]` allows everything",
            &HTTP_ALLOW_EMPTY_RULE,
            tcp(1234),
            "ALLOW ns[foo]-policy[allow-all]-rule[0]",
        ),
        case(
            "builder-rbac/http/allow-nil-rule: an ALLOW policy without rules matches nothing",
            &HTTP_ALLOW_NIL_RULE,
            http("httpbin", "GET", "/"),
            "DENY none",
        ),
        case(
            "builder-rbac/http/deny-empty-rule: `rules: [{}]` in a DENY denies everything",
            &HTTP_DENY_EMPTY_RULE,
            tcp(1234),
            "DENY ns[foo]-policy[deny-all]-rule[0]",
        ),
        case(
            "builder-rbac/http/multiple-policies: the first policy by name that matches decides",
            &HTTP_MULTIPLE,
            http("httpbin", "GET", "/v1").port(90),
            "ALLOW ns[foo]-policy[httpbin-1]-rule[0]",
        ),
        case(
            "builder-rbac/http/multiple-policies: ipBlocks 5.6.7.0/24",
            &HTTP_MULTIPLE,
            http("httpbin", "DELETE", "/x").port(81).source("5.6.7.8"),
            "ALLOW ns[foo]-policy[httpbin-8]-rule[0]",
        ),
        case(
            "builder-rbac/http/multiple-policies: request.headers[X-abc] (header names ignore case)",
            &HTTP_MULTIPLE,
            http("httpbin", "DELETE", "/x")
                .port(81)
                .header("X-ABC", "abc2"),
            "ALLOW ns[foo]-policy[httpbin-9]-rule[0]",
        ),
        case(
            "builder-rbac/http/multiple-policies: requestPrincipals (unsupported) never allow; nothing else matches",
            &HTTP_MULTIPLE,
            http("httpbin", "DELETE", "/x").port(81),
            "DENY none",
        ),
        // Scope, identities, fail-closed.
        case(
            "Istio: a policy in the root namespace applies to workloads of every namespace",
            &SCOPE,
            tcp(6379),
            "DENY ns[istio-system]-policy[mesh-wide]-rule[0]",
        ),
        case(
            "Istio: policies of other namespaces and other workloads do not apply; a DENY without rules does nothing",
            &SCOPE,
            tcp(5432),
            "ALLOW",
        ),
        case(
            "Istio: `notPrincipals: [\"*\"]` in a DENY refuses traffic without a peer certificate",
            &NO_CERT,
            tls("api.github.com", 443),
            "DENY ns[istio-system]-policy[require-mtls]-rule[0]",
        ),
        case(
            "Istio: principal prefix match `cluster.local/ns/default/*`",
            &NO_CERT,
            tls("api.github.com", 443).from("default", "anything"),
            "ALLOW ns[istio-system]-policy[default-ns]-rule[0]",
        ),
        case(
            "Istio: principal suffix `*/sa/ci` AND namespace prefix `build-*`",
            &NO_CERT,
            tls("api.github.com", 443).from("build-42", "ci"),
            "ALLOW ns[istio-system]-policy[default-ns]-rule[1]",
        ),
        case(
            "Istio: principal suffix matches, namespace does not",
            &NO_CERT,
            tls("api.github.com", 443).from("prod", "ci"),
            "DENY none",
        ),
        case(
            "sluice's difference: a DENY on hosts applies to TLS by its SNI …",
            &DENY_HOSTS,
            tls("EVIL.example.com", 443),
            "DENY ns[istio-system]-policy[deny-evil]-rule[0]",
        ),
        case(
            "sluice's difference: … so other TLS hosts pass (Istio would drop hosts and deny all TLS)",
            &DENY_HOSTS,
            tls("api.github.com", 443),
            "ALLOW",
        ),
        case(
            "Istio: with the host unknown, a DENY drops the HTTP-only hosts and denies all TCP",
            &DENY_HOSTS,
            tcp(5432),
            "DENY ns[istio-system]-policy[deny-evil]-rule[0]",
        ),
        case(
            "sluice fail-closed: an ALLOW policy with a rule that cannot be compiled (bad CIDR) allows nothing",
            &FAIL_CLOSED,
            tls("api.github.com", 443),
            "DENY none",
        ),
        case(
            "sluice fail-closed: a DENY policy with an unknown `when` key denies everything it selects",
            &FAIL_CLOSED_DENY,
            tls("api.github.com", 443),
            "DENY ns[istio-system]-policy[deny-unknown-key]-rule[1]",
        ),
    ]
}

// --- running it -------------------------------------------------------------------------------

fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(rel)
}

fn render(template: &str, extra: &[(&str, &str)]) -> String {
    let path = testdata("acceptance/authz/integration-templates").join(template);
    let mut text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (from, to) in TEMPLATE_VALUES.iter().chain(extra) {
        text = text.replace(from, to);
    }
    assert!(!text.contains("{{"), "{template}: unrendered value left");
    text
}

fn yaml(set: &Set) -> String {
    let docs: Vec<String> = set
        .parts
        .iter()
        .map(|p| match p {
            Part::File(rel) => {
                std::fs::read_to_string(testdata(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
            }
            Part::Template(name, extra) => render(name, extra),
            Part::Inline(text) => (*text).to_owned(),
        })
        .collect();
    docs.join("\n---\n")
}

fn compile(set: &Set) -> Policies {
    let loaded = sluice_model::load_str("policies.yaml", &yaml(set));
    assert!(
        !loaded.resources.authorization_policies.is_empty(),
        "no AuthorizationPolicy loaded: {:?}",
        loaded.diagnostics
    );
    let labels: BTreeMap<String, String> = set
        .labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    compile_policies(&loaded.resources, set.namespace, &labels, ROOT_NAMESPACE).0
}

fn outcome(d: &Decision) -> String {
    if d.allowed {
        assert!(d.details.is_empty(), "allowed with details {:?}", d.details);
        return match &d.matched {
            Some((policy, rule)) => format!("ALLOW {policy}-rule[{rule}]"),
            None => "ALLOW".to_owned(),
        };
    }
    let inner = d
        .details
        .strip_prefix("rbac_access_denied_matched_policy[")
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or_else(|| panic!("details {:?}", d.details));
    format!("DENY {inner}")
}

#[test]
fn authorization_table() {
    let cases = cases();
    assert!(cases.len() >= 50, "the table has {} rows", cases.len());
    let mut compiled: HashMap<*const Set, Policies> = HashMap::new();
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let policies = compiled
            .entry(std::ptr::from_ref(c.set))
            .or_insert_with(|| compile(c.set));
        let got = outcome(&policies.evaluate(&c.req));
        if got != c.want {
            failures.push(format!(
                "row {i}: {}\n    want {}\n    got  {got}",
                c.why, c.want
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
