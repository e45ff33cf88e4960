//! The guide's configurations compiled to snapshots and pinned as golden JSON under
//! `tests/golden/lower/` (`<case>.json`, the snapshot the data plane runs on, and
//! `<case>.diagnostics.txt`, what the compiler reported). Regenerate with `UPDATE_GOLDEN=1`
//! and review the diff: these files are the contract between compiler and data plane.
//!
//! Fixtures written here use loopback addresses (127.0.0.0/8) only.

use std::path::{Path, PathBuf};

use sluice_compile::lower::{CompileOptions, compile};
use sluice_model::{Diagnostic, Resources, load_paths, load_str};
use sluice_snapshot::cluster::{Trust, UpstreamTlsMode};
use sluice_snapshot::listener::{ServerTlsMode, Transport};
use sluice_snapshot::route::{RouteAction, TcpRoute};
use sluice_snapshot::{App, Discovery, HostMatch, OutboundPolicy, Snapshot};

const GUIDE: &str = "../../testdata/guide";

fn guide_path(file: &str) -> PathBuf {
    Path::new(GUIDE).join(file)
}

fn merge(into: &mut Resources, from: Resources) {
    into.service_entries.extend(from.service_entries);
    into.gateways.extend(from.gateways);
    into.virtual_services.extend(from.virtual_services);
    into.destination_rules.extend(from.destination_rules);
    into.sidecars.extend(from.sidecars);
    into.workload_entries.extend(from.workload_entries);
    into.envoy_filters.extend(from.envoy_filters);
    into.authorization_policies
        .extend(from.authorization_policies);
    into.peer_authentications.extend(from.peer_authentications);
    into.telemetries.extend(from.telemetries);
    into.istio_operators.extend(from.istio_operators);
    into.mesh_configs.extend(from.mesh_configs);
    into.others.extend(from.others);
}

/// Guide files, plus YAML written by the test (`(name, text)`).
fn load(files: &[&str], extra: &[(&str, &str)]) -> Resources {
    let paths: Vec<PathBuf> = files.iter().map(|f| guide_path(f)).collect();
    let loaded = load_paths(&paths);
    assert!(
        !loaded.has_errors(),
        "guide files load: {:#?}",
        loaded.diagnostics
    );
    let mut res = loaded.resources;
    for (name, text) in extra {
        let l = load_str(name, text);
        assert!(!l.has_errors(), "{name} loads: {:#?}", l.diagnostics);
        merge(&mut res, l.resources);
    }
    res
}

fn check_golden(file: &str, actual: &str) {
    let path = Path::new("tests/golden/lower").join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir golden");
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from the compiler's output; review and regenerate with UPDATE_GOLDEN=1\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

fn golden(case: &str, snapshot: &Snapshot, diags: &[Diagnostic]) {
    let json = serde_json::to_string_pretty(snapshot).expect("snapshot serializes") + "\n";
    check_golden(&format!("{case}.json"), &json);
    let text: String = diags.iter().map(|d| format!("{d}\n")).collect();
    check_golden(&format!("{case}.diagnostics.txt"), &text);
    // The JSON is the contract: it must read back as the same snapshot.
    let back: Snapshot = serde_json::from_str(&json).expect("snapshot deserializes");
    assert_eq!(&back, snapshot, "{case}: JSON round trip");
}

fn gateway(res: &Resources) -> (Snapshot, Vec<Diagnostic>) {
    compile(res, &CompileOptions::gateway())
}

fn tcp_routes(s: &Snapshot, port: u16, chain: usize) -> &[TcpRoute] {
    match &s.listener(port).expect("listener").chains[chain].app {
        App::Tcp { routes } => routes,
        App::Http { .. } => panic!("chain {chain} of port {port} is HTTP"),
    }
}

const STEP4: [&str; 4] = [
    "egress-gateway.yaml",
    "virtualservice-github.yaml",
    "destinationrule-github.yaml",
    "serviceentry-github.yaml",
];

#[test]
fn step4_tls_passthrough_to_github() {
    let (s, diags) = gateway(&load(&STEP4, &[]));
    golden("step4_github_passthrough", &s, &diags);

    assert_eq!(s.listeners.len(), 1);
    let l = s.listener(443).expect("listener 443");
    assert_eq!(l.name, "0.0.0.0_443");
    let names: Vec<(&str, Vec<HostMatch>)> = l
        .chains
        .iter()
        .map(|c| (c.name.as_str(), c.match_.server_names.clone()))
        .collect();
    assert_eq!(
        names,
        vec![
            (
                "default/egress-gateway/tls-github",
                vec![HostMatch::parse("api.github.com")]
            ),
            (
                "default/egress-gateway/tls-stripe",
                vec![HostMatch::parse("api.stripe.com")]
            ),
        ]
    );
    assert!(
        l.chains
            .iter()
            .all(|c| c.match_.transport == Transport::Tls && c.tls.is_none())
    );
    let routes = tcp_routes(&s, 443, 0);
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].sni, vec![HostMatch::parse("api.github.com")]);
    assert_eq!(
        routes[0].clusters[0].cluster,
        "outbound|443||api.github.com"
    );
    // Stripe has a server but no VirtualService: its chain routes nothing (and says so).
    assert!(tcp_routes(&s, 443, 1).is_empty());
    assert!(
        diags
            .iter()
            .any(|d| d.code == "SLC0206" && d.message.contains("tls rules"))
    );
    let c = s
        .cluster("outbound|443||api.github.com")
        .expect("github cluster");
    assert_eq!(
        c.discovery,
        Discovery::Dns {
            host: "api.github.com".into(),
            round_robin: false
        }
    );
    // Istio applies the guide's SIMPLE DestinationRule to the cluster (TLS inside TLS, which
    // `analyze` reports); the compiler does what Istio does.
    let tls = c.tls.as_ref().expect("DestinationRule tls");
    assert_eq!(tls.mode, UpstreamTlsMode::Simple);
    assert_eq!(tls.sni.as_deref(), Some("api.github.com"));
    // Mesh rules (to the egress gateway service) are not the gateway's.
    assert_eq!(s.clusters.len(), 1);
}

const STEP5: [&str; 4] = [
    "gateway-tls-origination.yaml",
    "virtualservice-tls-origination.yaml",
    "destinationrule-tls-origination.yaml",
    "serviceentry-tls-origination.yaml",
];

#[test]
fn step5_tls_origination() {
    let (s, diags) = gateway(&load(&STEP5, &[]));
    golden("step5_tls_origination", &s, &diags);

    let l = s.listener(80).expect("listener 80");
    assert_eq!(l.chains.len(), 1);
    let chain = &l.chains[0];
    assert_eq!(chain.match_.transport, Transport::Plain);
    let App::Http {
        route_config,
        virtual_hosts,
        ..
    } = &chain.app
    else {
        panic!("port 80 is HTTP");
    };
    assert_eq!(route_config, "http.80");
    assert_eq!(virtual_hosts.len(), 1);
    let vh = &virtual_hosts[0];
    assert_eq!(vh.name, "api.external-service.com:80");
    assert_eq!(
        vh.domains,
        vec![HostMatch::parse("api.external-service.com")]
    );
    assert_eq!(vh.routes.len(), 1);
    let RouteAction::Forward(f) = &vh.routes[0].action else {
        panic!("forward");
    };
    assert_eq!(
        f.clusters[0].cluster,
        "outbound|443||api.external-service.com"
    );
    assert_eq!(f.clusters[0].weight, 100);
    assert_eq!(f.timeout, None, "no timeout unless set");
    assert_eq!(
        f.retry.as_ref().map(|r| r.attempts),
        Some(2),
        "Istio's default retries"
    );
    assert_eq!(
        vh.routes[0].operation.as_deref(),
        Some("api.external-service.com:443/*")
    );
    let c = s
        .cluster("outbound|443||api.external-service.com")
        .expect("cluster");
    let tls = c.tls.as_ref().expect("TLS origination");
    assert_eq!(tls.mode, UpstreamTlsMode::Simple);
    assert_eq!(tls.sni.as_deref(), Some("api.external-service.com"));
    assert_eq!(tls.trust, Trust::Platform);
    // portLevelSettings replace the rule-level policy: ROUND_ROBIN does not apply to 443.
    assert_eq!(c.lb, sluice_snapshot::LbPolicy::LeastRequest);
}

/// Step 5 with the guide's local rate limit (`envoyfilter-egress-ratelimit.yaml`, unchanged):
/// the filter selects the gateway (`istio: egressgateway`, GATEWAY context) and joins the HTTP
/// filter chain of every HTTP route configuration; nothing else changes.
#[test]
fn step5_with_the_guide_rate_limit() {
    let mut files = STEP5.to_vec();
    files.push("envoyfilter-egress-ratelimit.yaml");
    let (s, diags) = gateway(&load(&files, &[]));
    golden("step5_rate_limit", &s, &diags);
    let (without, _) = gateway(&load(&STEP5, &[]));
    assert_eq!(s.listeners, without.listeners, "routing is unchanged");
    assert_eq!(s.rate_limits.keys().collect::<Vec<_>>(), ["http.80"]);
    let limits = &s.rate_limits["http.80"];
    assert_eq!(limits.filters.len(), 1);
    let f = &limits.filters[0];
    assert_eq!(f.name, "envoy.filters.http.local_ratelimit");
    assert_eq!(
        f.origin,
        "EnvoyFilter istio-system/egress-ratelimit configPatches[0]"
    );
    let c = &f.config;
    assert_eq!(c.stat_prefix, "http_local_rate_limiter");
    let tb = c.token_bucket.expect("bucket");
    assert_eq!((tb.max_tokens, tb.tokens_per_fill), (100, 10));
    assert_eq!(tb.fill_interval, std::time::Duration::from_secs(1));
    assert_eq!(
        (c.enabled_percent, c.enforced_percent, c.status),
        (100.0, 100.0, 429)
    );
    assert_eq!(c.response_headers_to_add[0].name, "x-rate-limited");
    assert_eq!(c.response_headers_to_add[0].value, "true");

    // The sidecar is not selected (labels, and the GATEWAY context).
    let (sc, _) = compile(&load(&files, &[]), &CompileOptions::sidecar("default"));
    assert!(sc.rate_limits.is_empty());
}

/// serviceentry-database.yaml with loopback endpoints (the guide's 192.168.1.x replaced).
fn database_entry() -> String {
    std::fs::read_to_string(guide_path("serviceentry-database.yaml"))
        .expect("guide database entry")
        .replace("192.168.1.100", "127.0.10.1")
        .replace("192.168.1.101", "127.0.10.2")
}

const DATABASE_ROUTING: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata:
  name: egress-database
  namespace: default
spec:
  selector:
    istio: egressgateway
  servers:
    - port: {number: 5432, name: tcp-postgres, protocol: TCP}
      hosts: [external-db.example.com]
    - port: {number: 5433, name: tcp-postgres-ro, protocol: TCP}
      hosts: [external-db.example.com]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: external-db
  namespace: default
spec:
  hosts: [external-db.example.com]
  gateways: [egress-database]
  tcp:
    - match: [{port: 5432}]
      route:
        - destination: {host: external-db.example.com, subset: primary, port: {number: 5432}}
    - match: [{port: 5433}]
      route:
        - destination: {host: external-db.example.com, subset: replica, port: {number: 5432}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: external-db
  namespace: default
spec:
  host: external-db.example.com
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 20, connectTimeout: 3s}
  subsets:
    - name: primary
      labels: {role: primary}
    - name: replica
      labels: {role: replica}
      trafficPolicy:
        connectionPool:
          tcp: {maxConnections: 50}
"#;

#[test]
fn database_tcp_with_subsets() {
    let entry = database_entry();
    let res = load(
        &[],
        &[
            ("serviceentry-database.yaml (loopback)", &entry),
            ("database-routing.yaml", DATABASE_ROUTING),
        ],
    );
    let (s, diags) = gateway(&res);
    golden("database_tcp_subsets", &s, &diags);

    for (port, subset) in [(5432, "primary"), (5433, "replica")] {
        let l = s.listener(port).expect("listener");
        assert_eq!(l.chains[0].match_.transport, Transport::Plain);
        let routes = tcp_routes(&s, port, 0);
        assert_eq!(routes.len(), 1);
        assert_eq!(
            routes[0].clusters[0].cluster,
            format!("outbound|5432|{subset}|external-db.example.com")
        );
    }
    let primary = s
        .cluster("outbound|5432|primary|external-db.example.com")
        .expect("primary");
    let Discovery::Static { endpoints } = &primary.discovery else {
        panic!("STATIC");
    };
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].address, "127.0.10.1");
    assert_eq!(endpoints[0].port, 5432);
    assert_eq!(endpoints[0].weight, 1);
    assert_eq!(primary.limits.max_connections, Some(20));
    assert_eq!(primary.connect_timeout, std::time::Duration::from_secs(3));
    let replica = s
        .cluster("outbound|5432|replica|external-db.example.com")
        .expect("replica");
    let Discovery::Static { endpoints } = &replica.discovery else {
        panic!("STATIC");
    };
    assert_eq!(endpoints[0].address, "127.0.10.2");
    // The subset's connection pool replaces the rule's (connect timeout back to the default).
    assert_eq!(replica.limits.max_connections, Some(50));
    assert_eq!(replica.connect_timeout, std::time::Duration::from_secs(10));
    assert!(diags.is_empty(), "{diags:#?}");
}

#[test]
fn production_setup_with_mesh_config() {
    let res = load(&["production-egress-setup.yaml", "mesh-config.yaml"], &[]);
    let (s, diags) = gateway(&res);
    golden("production_egress", &s, &diags);

    let routes = tcp_routes(&s, 443, 0);
    assert_eq!(
        s.listener(443).expect("443").chains[0].name,
        "production/payment-egress-gateway/tls-payment"
    );
    assert_eq!(
        routes[0].clusters[0].cluster,
        "outbound|443||api.payment-provider.com"
    );
    let c = s
        .cluster("outbound|443||api.payment-provider.com")
        .expect("cluster");
    assert_eq!(c.limits.max_connections, Some(50));
    assert_eq!(c.limits.max_pending_requests, Some(50));
    assert_eq!(c.limits.max_requests, Some(100));
    assert_eq!(c.limits.max_requests_per_connection, Some(10));
    assert_eq!(c.connect_timeout, std::time::Duration::from_secs(5));
    let o = c.outlier.as_ref().expect("outlier detection");
    assert_eq!(o.consecutive_5xx, 5);
    assert_eq!(o.interval, std::time::Duration::from_secs(30));
    assert_eq!(o.base_ejection_time, std::time::Duration::from_secs(60));
    assert_eq!(o.max_ejection_percent, 100);
    assert_eq!(s.outbound_policy, OutboundPolicy::RegistryOnly);
    assert_eq!(s.access_log.path.as_deref(), Some("/dev/stdout"));
    assert!(
        s.access_log
            .format
            .as_deref()
            .is_some_and(|f| f.contains("%RESPONSE_CODE%"))
    );
    // AuthorizationPolicy is compiled apart (`sluice_compile::authz`), not by `lower`.
    assert!(diags.is_empty(), "{diags:#?}");
}

const WIKIPEDIA: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: wikipedia
  namespace: default
spec:
  hosts: ["*.wikipedia.org"]
  ports:
    - {number: 443, name: tls, protocol: TLS}
  location: MESH_EXTERNAL
  resolution: DYNAMIC_DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: egress-wikipedia
  namespace: default
spec:
  selector:
    istio: egressgateway
  servers:
    - port: {number: 443, name: tls-wikipedia, protocol: TLS}
      hosts: ["*.wikipedia.org"]
      tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: wikipedia
  namespace: default
spec:
  hosts: ["*.wikipedia.org"]
  gateways: [mesh, egress-wikipedia]
  tls:
    - match:
        - gateways: [egress-wikipedia]
          port: 443
          sniHosts: ["*.wikipedia.org"]
      route:
        - destination: {host: "*.wikipedia.org", port: {number: 443}}
"#;

#[test]
fn wildcard_dynamic_dns_passthrough() {
    let (s, diags) = gateway(&load(&[], &[("wikipedia.yaml", WIKIPEDIA)]));
    golden("wikipedia_dynamic_dns", &s, &diags);

    let chain = &s.listener(443).expect("443").chains[0];
    assert_eq!(
        chain.match_.server_names,
        vec![HostMatch::parse("*.wikipedia.org")]
    );
    let routes = tcp_routes(&s, 443, 0);
    assert_eq!(routes[0].sni, vec![HostMatch::parse("*.wikipedia.org")]);
    assert_eq!(
        routes[0].clusters[0].cluster,
        "outbound|443||*.wikipedia.org"
    );
    let c = s.cluster("outbound|443||*.wikipedia.org").expect("cluster");
    assert_eq!(c.discovery, Discovery::DynamicDns);
    assert!(diags.is_empty(), "{diags:#?}");
}

/// The egress gateway's service, registered as DESIGN.md says: MESH_INTERNAL, STATIC.
const GATEWAY_SERVICE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: istio-egressgateway
  namespace: istio-system
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
    - {number: 80, name: http, protocol: HTTP}
    - {number: 443, name: tls, protocol: TLS}
  endpoints:
    - address: 127.0.0.1
      serviceAccount: istio-egressgateway-service-account
"#;

const SIDECAR_FILES: [&str; 8] = [
    "virtualservice-github.yaml",
    "destinationrule-github.yaml",
    "serviceentry-github.yaml",
    "virtualservice-tls-origination.yaml",
    "destinationrule-tls-origination.yaml",
    "serviceentry-tls-origination.yaml",
    "egress-gateway.yaml",
    "gateway-tls-origination.yaml",
];

#[test]
fn sidecar_applies_the_mesh_rules() {
    let res = load(
        &SIDECAR_FILES,
        &[("egress-gateway-service.yaml", GATEWAY_SERVICE)],
    );
    let (s, diags) = compile(&res, &CompileOptions::sidecar("default"));
    golden("sidecar_mesh_rules", &s, &diags);

    // 443: the mesh rule sends api.github.com to the gateway service.
    let l443 = s.listener(443).expect("443");
    let github = l443
        .chains
        .iter()
        .find(|c| c.match_.server_names == vec![HostMatch::parse("api.github.com")])
        .expect("github chain");
    let App::Tcp { routes } = &github.app else {
        panic!("tcp");
    };
    assert_eq!(
        routes[0].clusters[0].cluster,
        "outbound|443||istio-egressgateway.istio-system.svc.cluster.local"
    );
    // 80: api.external-service.com goes to the gateway's port 80.
    let App::Http { virtual_hosts, .. } = &s.listener(80).expect("80").chains[0].app else {
        panic!("http");
    };
    let vh = virtual_hosts
        .iter()
        .find(|v| v.name == "api.external-service.com:80")
        .expect("vhost");
    let RouteAction::Forward(f) = &vh.routes[0].action else {
        panic!("forward");
    };
    assert_eq!(
        f.clusters[0].cluster,
        "outbound|80||istio-egressgateway.istio-system.svc.cluster.local"
    );
    // The hop to the gateway is mesh mTLS, verified against the gateway's identity.
    let gw443 = s
        .cluster("outbound|443||istio-egressgateway.istio-system.svc.cluster.local")
        .expect("gateway cluster");
    let tls = gw443.tls.as_ref().expect("ISTIO_MUTUAL");
    assert_eq!(tls.mode, UpstreamTlsMode::IstioMutual);
    assert_eq!(tls.trust, Trust::Mesh);
    assert!(tls.subject_alt_names.contains(
        &"spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account".to_owned()
    ));
    let Discovery::Static { endpoints } = &gw443.discovery else {
        panic!("STATIC");
    };
    assert_eq!(endpoints[0].address, "127.0.0.1");
    assert!(!diags.iter().any(|d| d.code == "SLC0203"), "{diags:#?}");
}

#[test]
fn sidecar_without_gateway_service_says_what_to_add() {
    let res = load(&SIDECAR_FILES, &[]);
    let (s, diags) = compile(&res, &CompileOptions::sidecar("default"));
    let c = s
        .cluster("outbound|443||istio-egressgateway.istio-system.svc.cluster.local")
        .expect("cluster still named");
    assert_eq!(c.discovery, Discovery::BlackHole);
    let d = diags
        .iter()
        .find(|d| d.code == "SLC0203")
        .expect("diagnostic");
    assert!(
        d.message.contains("location: MESH_INTERNAL"),
        "{}",
        d.message
    );
    assert!(d.message.contains("resolution: STATIC"), "{}", d.message);
    assert!(
        d.message
            .contains("istio-egressgateway.istio-system.svc.cluster.local")
    );
}

#[test]
fn terminating_server_with_credentials() {
    const YAML: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress-https, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
    - port: {number: 8443, name: https, protocol: HTTPS}
      hosts: [api.example.com]
      tls: {mode: SIMPLE, credentialName: egress-cert}
    - port: {number: 15443, name: mtls, protocol: HTTPS}
      hosts: ["*"]
      tls: {mode: ISTIO_MUTUAL}
"#;
    let res = load(&[], &[("https.yaml", YAML)]);
    let mut opts = CompileOptions::gateway();
    let (s, diags) = compile(&res, &opts);
    assert!(
        s.listener(8443).is_none(),
        "no credentials dir: server left out"
    );
    assert!(
        diags
            .iter()
            .any(|d| d.code == "SLC0201" && d.message.contains("egress-cert"))
    );
    let mtls = &s.listener(15443).expect("ISTIO_MUTUAL server").chains[0];
    assert_eq!(
        mtls.tls.as_ref().map(|t| t.mode),
        Some(ServerTlsMode::IstioMutual)
    );
    assert!(mtls.match_.server_names.is_empty(), "host * takes any SNI");

    opts.credentials_dir = Some(PathBuf::from("/etc/sluice/credentials"));
    let (s, _) = compile(&res, &opts);
    let chain = &s.listener(8443).expect("8443").chains[0];
    let tls = chain.tls.as_ref().expect("terminates");
    assert_eq!(tls.mode, ServerTlsMode::Simple);
    assert_eq!(
        tls.certificate_chain,
        PathBuf::from("/etc/sluice/credentials/egress-cert/tls.crt")
    );
    assert_eq!(
        tls.private_key,
        PathBuf::from("/etc/sluice/credentials/egress-cert/tls.key")
    );
    assert_eq!(tls.ca_certificates, None);
    let App::Http { route_config, .. } = &chain.app else {
        panic!("HTTPS is HTTP inside");
    };
    assert_eq!(route_config, "https.8443.https.egress-https.istio-system");
}

/// Every guide file that loads (the invalid one excluded), in name order and reversed.
fn all_guide_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(GUIDE)
        .expect("guide dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "authz-deny-all-egress.yaml")
        .collect();
    files.sort();
    files
}

#[test]
fn compiling_is_deterministic_and_independent_of_file_order() {
    let files = all_guide_files();
    let forward: Vec<&str> = files.iter().map(String::as_str).collect();
    let mut backward = forward.clone();
    backward.reverse();
    for opts in [
        CompileOptions::gateway(),
        CompileOptions::sidecar("default"),
    ] {
        let res = load(&forward, &[]);
        let (a, da) = compile(&res, &opts);
        let (b, db) = compile(&res, &opts);
        let json = |s: &Snapshot| serde_json::to_string_pretty(s).expect("json");
        assert_eq!(json(&a), json(&b), "twice");
        assert_eq!(da, db);
        let (c, dc) = compile(&load(&backward, &[]), &opts);
        assert_eq!(json(&a), json(&c), "reversed input order");
        assert_eq!(da, dc);
    }
}
