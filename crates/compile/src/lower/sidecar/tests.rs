use sluice_snapshot::route::RouteAction;
use sluice_snapshot::{Cluster, Snapshot};

use super::*;
use crate::lower::testing::{has, sidecar};

const ENTRIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [api.example.com]
  ports:
    - {number: 80, name: http, protocol: HTTP}
    - {number: 443, name: https, protocol: HTTPS}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example.com]
  addresses: [127.0.20.0/24]
  ports:
    - {number: 5432, name: tcp-postgres}
    - {number: 7000, name: custom}
  resolution: DNS
"#;

fn chain_kinds(s: &Snapshot) -> Vec<(u16, Vec<(String, Transport)>)> {
    s.listeners
        .iter()
        .map(|l| {
            (
                l.port,
                l.chains
                    .iter()
                    .map(|c| (c.name.clone(), c.match_.transport))
                    .collect(),
            )
        })
        .collect()
}

fn vhosts(s: &Snapshot, port: u16) -> Vec<VirtualHost> {
    s.listener(port)
        .and_then(|l| {
            l.chains.iter().find_map(|c| match &c.app {
                App::Http { virtual_hosts, .. } => Some(virtual_hosts.clone()),
                App::Tcp { .. } => None,
            })
        })
        .unwrap_or_default()
}

fn forward_cluster(vh: &VirtualHost) -> String {
    match &vh.routes[0].action {
        RouteAction::Forward(f) => f.clusters[0].cluster.clone(),
        other => panic!("forward, not {other:?}"),
    }
}

#[test]
fn every_registered_port_is_a_virtual_listener() {
    let (s, d) = sidecar(ENTRIES, "default");
    assert_eq!(
        chain_kinds(&s),
        vec![
            (80, vec![("80".to_owned(), Transport::Plain)]),
            (443, vec![("api.example.com".to_owned(), Transport::Tls)]),
            (5432, vec![("5432".to_owned(), Transport::Plain)]),
            (7000, vec![("7000".to_owned(), Transport::Plain)]),
        ]
    );
    let vh = vhosts(&s, 80);
    // The registered host, then Istio's catch-all of the outbound policy (ALLOW_ANY here).
    assert_eq!(vh.len(), 2);
    assert_eq!(vh[1].name, "allow_any");
    assert_eq!(vh[0].name, "api.example.com:80");
    assert_eq!(vh[0].routes[0].name, "default");
    assert_eq!(
        vh[0].routes[0].operation.as_deref(),
        Some("api.example.com:80/*")
    );
    assert_eq!(forward_cluster(&vh[0]), "outbound|80||api.example.com");
    let App::Tcp { routes } = &s.listener(5432).expect("5432").chains[0].app else {
        panic!("tcp");
    };
    assert_eq!(
        routes[0].destination_subnets,
        vec!["127.0.20.0/24".parse::<ipnet::IpNet>().expect("net")]
    );
    assert_eq!(
        routes[0].clusters[0].cluster,
        "outbound|5432||db.example.com"
    );
    assert!(has(&d, "SLC0006", "does not sniff"), "{d:#?}");
    let names: Vec<&String> = s.clusters.keys().collect();
    assert_eq!(
        names,
        vec![
            "PassthroughCluster",
            "outbound|443||api.example.com",
            "outbound|5432||db.example.com",
            "outbound|7000||db.example.com",
            "outbound|80||api.example.com"
        ]
    );
}

#[test]
fn mesh_rules_replace_the_default_route_of_their_host() {
    let rules = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a-mesh, namespace: default}
spec:
  hosts: [api.example.com]
  http:
    - match: [{uri: {prefix: /v1}}]
      route: [{destination: {host: api.example.com, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b-late, namespace: default}
spec:
  hosts: [api.example.com]
  gateways: [mesh]
  http:
    - route: [{destination: {host: api.example.com, port: {number: 80}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: c-gateway-only, namespace: default}
spec:
  hosts: [other.example.com]
  gateways: [istio-system/egress]
  http:
    - route: [{destination: {host: api.example.com}}]
"#;
    let (s, d) = sidecar(&format!("{ENTRIES}{rules}"), "default");
    let vh = vhosts(&s, 80);
    assert_eq!(vh.len(), 2, "{vh:#?}");
    assert_eq!(vh[1].name, "allow_any");
    assert_eq!(vh[0].routes.len(), 1);
    assert_eq!(vh[0].routes[0].name, "default/a-mesh/0");
    assert_eq!(forward_cluster(&vh[0]), "outbound|443||api.example.com");
    assert!(
        has(
            &d,
            "SLC0201",
            "already has mesh rules from VirtualService default/a-mesh"
        ),
        "{d:#?}"
    );
}

#[test]
fn rules_for_hosts_outside_the_registry_go_on_port_80() {
    let rules = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: unregistered, namespace: default}
spec:
  hosts: [www.example.org]
  http:
    - route: [{destination: {host: api.example.com, port: {number: 443}}}]
"#;
    let (s, _) = sidecar(&format!("{ENTRIES}{rules}"), "default");
    let names: Vec<String> = vhosts(&s, 80).into_iter().map(|v| v.name).collect();
    assert_eq!(
        names,
        vec!["api.example.com:80", "www.example.org:80", "allow_any"]
    );
}

/// Istio's sidecar compiles the outbound policy into routes and clusters: `allow_any` to
/// `PassthroughCluster` (the original destination), or `block_all` to `BlackHoleCluster`; the
/// catch-all virtual host ends every HTTP route configuration, and the same routes take
/// traffic to ports no listener declares.
#[test]
fn the_outbound_policy_is_compiled_into_fallback_routes() {
    use sluice_snapshot::{BLACK_HOLE_CLUSTER, Discovery, OutboundPolicy, PASSTHROUGH_CLUSTER};
    let registry_only = r#"
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#;
    for (yaml, policy, vhost, cluster, discovery) in [
        (
            String::new(),
            OutboundPolicy::AllowAny,
            "allow_any",
            PASSTHROUGH_CLUSTER,
            Discovery::OriginalDestination,
        ),
        (
            registry_only.to_owned(),
            OutboundPolicy::RegistryOnly,
            "block_all",
            BLACK_HOLE_CLUSTER,
            Discovery::BlackHole,
        ),
    ] {
        let (s, _) = sidecar(&format!("{ENTRIES}{yaml}"), "default");
        assert_eq!(s.outbound_policy, policy);
        let fallback = s.fallback.as_ref().expect("a sidecar has fallback routes");
        assert_eq!(fallback.http.name, vhost);
        let route = &fallback.http.routes[0];
        match &route.action {
            RouteAction::Forward(f) => assert_eq!(f.clusters[0].cluster, cluster),
            // block_all: Istio's direct response, counted against BlackHoleCluster.
            RouteAction::DirectResponse { status, .. } => {
                assert_eq!(
                    (*status, route.direct_cluster.as_deref()),
                    (502, Some(cluster))
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fallback.tcp.clusters[0].cluster, cluster);
        assert_eq!(s.clusters[cluster].discovery, discovery);
        assert_eq!(vhosts(&s, 80).last().map(|v| v.name.as_str()), Some(vhost));
    }
    let (gateway, _) = crate::lower::testing::gateway(ENTRIES);
    assert!(
        gateway.fallback.is_none(),
        "the gateway has no outbound policy"
    );
}

#[test]
fn tls_rules_make_sni_chains_and_keep_default_chains_for_the_rest() {
    let rules = r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: more, namespace: default}
spec:
  hosts: [b.example.com, "*.wild.org"]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: default}
spec:
  hosts: [b.example.com]
  tls:
    - match: [{port: 443, sniHosts: [b.example.com]}]
      route: [{destination: {host: api.example.com, port: {number: 443}}}]
    - match: [{port: 443, sniHosts: [b.example.com]}]
      route: [{destination: {host: b.example.com, port: {number: 443}}}]
"#;
    let (s, d) = sidecar(&format!("{ENTRIES}{rules}"), "default");
    let chains: Vec<(String, Vec<HostMatch>)> = s
        .listener(443)
        .expect("443")
        .chains
        .iter()
        .map(|c| (c.name.clone(), c.match_.server_names.clone()))
        .collect();
    assert_eq!(
        chains,
        vec![
            (
                "default/b/tls[0]/match[0]".to_owned(),
                vec![HostMatch::parse("b.example.com")]
            ),
            (
                "*.wild.org".to_owned(),
                vec![HostMatch::parse("*.wild.org")]
            ),
            (
                "api.example.com".to_owned(),
                vec![HostMatch::parse("api.example.com")]
            ),
        ]
    );
    assert!(has(&d, "SLC0201", "already routed on port 443"), "{d:#?}");
    let wild: &Cluster = s
        .cluster("outbound|443||*.wild.org")
        .expect("wildcard cluster");
    assert_eq!(
        wild.discovery,
        sluice_snapshot::Discovery::OriginalDestination
    );
}

#[test]
fn tcp_hosts_without_addresses_shadow_each_other() {
    let entries = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: default}
spec:
  hosts: [a.example.com]
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: default}
spec:
  hosts: [b.example.com]
  ports: [{number: 9000, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: c, namespace: default}
spec:
  hosts: [c.example.com]
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  resolution: DNS
"#;
    let (s, d) = sidecar(entries, "default");
    let App::Tcp { routes } = &s.listener(9000).expect("9000").chains[0].app else {
        panic!("the first host makes the port TCP");
    };
    assert_eq!(routes.len(), 2);
    assert!(
        has(&d, "SLC0201", "c.example.com is not reachable here"),
        "{d:#?}"
    );
    assert!(
        has(&d, "SLC0201", "b.example.com is not reachable on it"),
        "{d:#?}"
    );
}
