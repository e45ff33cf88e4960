use serde_json::{Value, json};
use sluice_model::Diagnostic;
use sluice_snapshot::Cluster;

use super::*;
use crate::lower::testing::{has, load};
use crate::lower::{CompileOptions, compile};

/// A ServiceEntry `ext` in `default` with `spec`, a route to `host:port` (subset) from a TCP
/// server (gateway) or a mesh rule on port 9000 (sidecar in namespace `app`), and `extra`
/// YAML. Returns the cluster and the diagnostics.
fn cluster_for(
    role: Role,
    spec: Value,
    extra: &str,
    host: &str,
    port: u16,
    subset: &str,
) -> (Cluster, Vec<Diagnostic>) {
    let se = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "ext", "namespace": "default"}, "spec": spec,
    });
    let gateway = match role {
        Role::Gateway => "default/g",
        Role::Sidecar => "mesh",
    };
    let mut dest = json!({"host": host, "port": {"number": port}});
    if !subset.is_empty() {
        dest["subset"] = json!(subset);
    }
    let vs = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "v", "namespace": "default"},
        "spec": {"hosts": ["*"], "gateways": [gateway], "tcp": [{"match": [{"port": 9000}], "route": [{"destination": dest}]}]},
    });
    let gw = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
        "metadata": {"name": "g", "namespace": "default"},
        "spec": {"selector": {"istio": "egressgateway"}, "servers": [{"port": {"number": 9000, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]}]},
    });
    let yaml = format!("{se}\n---\n{vs}\n---\n{gw}\n{extra}");
    let opts = match role {
        Role::Gateway => CompileOptions::gateway(),
        Role::Sidecar => CompileOptions::sidecar("app"),
    };
    let (s, d) = compile(&load(&yaml), &opts);
    let name = sluice_snapshot::cluster_name(port, subset, host);
    let c = s
        .cluster(&name)
        .unwrap_or_else(|| panic!("cluster {name} in {:#?}", s.clusters))
        .clone();
    (c, d)
}

fn dns_entry(host: &str) -> Value {
    json!({"hosts": [host], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}], "resolution": "DNS"})
}

fn dr(name: &str, ns: &str, host: &str, spec: Value) -> String {
    let mut spec = spec;
    spec["host"] = json!(host);
    format!(
        "---\n{}\n",
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": name, "namespace": ns}, "spec": spec})
    )
}

#[test]
fn resolution_decides_discovery() {
    let ep = |addr: &str, port: u16, weight: u32| Endpoint {
        address: addr.into(),
        port,
        labels: BTreeMap::new(),
        weight,
    };
    let table = [
        (
            Role::Gateway,
            dns_entry("a.example.com"),
            "a.example.com",
            Discovery::Dns {
                host: "a.example.com".into(),
                round_robin: false,
            },
        ),
        (
            Role::Gateway,
            json!({"hosts": ["a.example.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}], "resolution": "DNS_ROUND_ROBIN"}),
            "a.example.com",
            Discovery::Dns {
                host: "a.example.com".into(),
                round_robin: true,
            },
        ),
        (
            Role::Gateway,
            json!({"hosts": ["a.example.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS", "targetPort": 8443}], "resolution": "STATIC",
                   "endpoints": [{"address": "127.0.0.2"}, {"address": "127.0.0.3", "ports": {"tls": 9443}, "weight": 3}]}),
            "a.example.com",
            Discovery::Static {
                endpoints: vec![ep("127.0.0.2", 8443, 1), ep("127.0.0.3", 9443, 3)],
            },
        ),
        (
            Role::Gateway,
            json!({"hosts": ["a.example.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}], "resolution": "DNS",
                   "endpoints": [{"address": "backend.example.net"}]}),
            "a.example.com",
            Discovery::Static {
                endpoints: vec![ep("backend.example.net", 443, 1)],
            },
        ),
        (
            Role::Gateway,
            json!({"hosts": ["a.example.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}]}),
            "a.example.com",
            Discovery::OriginalDestination,
        ),
        (
            Role::Gateway,
            json!({"hosts": ["*.wild.org"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}], "resolution": "NONE"}),
            "*.wild.org",
            Discovery::DynamicDns,
        ),
        (
            Role::Sidecar,
            json!({"hosts": ["*.wild.org"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}], "resolution": "NONE"}),
            "*.wild.org",
            Discovery::OriginalDestination,
        ),
        (
            Role::Gateway,
            json!({"hosts": ["*.wild.org"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}], "resolution": "DYNAMIC_DNS"}),
            "*.wild.org",
            Discovery::DynamicDns,
        ),
    ];
    for (role, spec, host, want) in table {
        let (c, d) = cluster_for(role, spec.clone(), "", host, 443, "");
        assert_eq!(c.discovery, want, "{role:?} {spec}: {d:#?}");
        if want == Discovery::OriginalDestination {
            assert_eq!(c.lb, LbPolicy::Passthrough);
        }
    }
}

#[test]
fn destinations_that_cannot_exist_black_hole() {
    let table = [
        ("unknown.example.com", 443, "", "SLC0202", "no ServiceEntry"),
        ("a.example.com", 8443, "", "SLC0202", "not 8443"),
        ("a.example.com", 443, "v9", "SLC0202", "subset \"v9\""),
        (
            "istio-egressgateway.istio-system.svc.cluster.local",
            443,
            "",
            "SLC0203",
            "MESH_INTERNAL",
        ),
    ];
    for (host, port, subset, code, needle) in table {
        let (c, d) = cluster_for(
            Role::Gateway,
            dns_entry("a.example.com"),
            "",
            host,
            port,
            subset,
        );
        assert_eq!(c.discovery, Discovery::BlackHole, "{host}");
        assert!(has(&d, code, needle), "{host}: {d:#?}");
    }
    let wildcard_dns = json!({"hosts": ["*.wild.org"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}], "resolution": "DNS"});
    let (c, d) = cluster_for(Role::Gateway, wildcard_dns, "", "*.wild.org", 443, "");
    assert_eq!(c.discovery, Discovery::BlackHole);
    assert!(has(&d, "SLC0202", "DYNAMIC_DNS"));
}

fn sni_of(c: &Cluster) -> Option<String> {
    c.tls.as_ref().and_then(|t| t.sni.clone())
}

#[test]
fn destination_rule_lookup_follows_istio_namespace_order() {
    let tls = |sni: &str| json!({"trafficPolicy": {"tls": {"mode": "SIMPLE", "sni": sni}}});
    let with_export = |sni: &str, export: &str| {
        let mut v = tls(sni);
        v["exportTo"] = json!([export]);
        v
    };
    let host = "a.example.com";
    // (role, rules, expected sni). Gateway proxy: istio-system (the root); sidecar: `app`.
    let table: Vec<(Role, String, Option<&str>)> = vec![
        (
            Role::Gateway,
            format!(
                "{}{}",
                dr("root", "istio-system", host, tls("root")),
                dr("svc", "default", host, tls("svc"))
            ),
            Some("svc"),
        ),
        (
            Role::Gateway,
            format!(
                "{}{}",
                dr("root", "istio-system", host, with_export("local", ".")),
                dr("svc", "default", host, tls("svc"))
            ),
            Some("local"),
        ),
        (
            Role::Gateway,
            dr("root", "istio-system", host, tls("root")),
            Some("root"),
        ),
        (
            Role::Sidecar,
            format!(
                "{}{}",
                dr("mine", "app", host, with_export("proxy", ".")),
                dr("svc", "default", host, tls("svc"))
            ),
            Some("proxy"),
        ),
        (
            Role::Sidecar,
            format!(
                "{}{}",
                dr("svc", "default", host, with_export("svc", ".")),
                dr("root", "istio-system", host, tls("root"))
            ),
            Some("root"),
        ),
        (
            Role::Sidecar,
            dr("other", "elsewhere", host, tls("other")),
            None,
        ),
        (
            Role::Gateway,
            format!(
                "{}{}",
                dr("wild", "default", "*.example.com", tls("wild")),
                dr("exact", "default", host, tls("exact"))
            ),
            Some("exact"),
        ),
        (
            Role::Gateway,
            format!(
                "{}{}",
                dr("wide", "default", "*.com", tls("wide")),
                dr("narrow", "default", "*.example.com", tls("narrow"))
            ),
            Some("narrow"),
        ),
    ];
    for (role, rules, want) in table {
        let (c, d) = cluster_for(role, dns_entry(host), &rules, host, 443, "");
        assert_eq!(sni_of(&c).as_deref(), want, "{role:?} {rules}: {d:#?}");
    }
}

#[test]
fn rules_of_one_namespace_merge_subsets_and_keep_the_first_policy() {
    let host = "a.example.com";
    let rules = format!(
        "{}{}",
        dr(
            "b-second",
            "default",
            host,
            json!({"trafficPolicy": {"tls": {"mode": "SIMPLE", "sni": "second"}}, "subsets": [{"name": "v2", "labels": {"v": "2"}}]})
        ),
        dr(
            "a-first",
            "default",
            host,
            json!({"trafficPolicy": {"tls": {"mode": "SIMPLE", "sni": "first"}}, "subsets": [{"name": "v1", "labels": {"v": "1"}}]})
        ),
    );
    let entry = json!({"hosts": [host], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}], "resolution": "STATIC",
                       "endpoints": [{"address": "127.0.0.1", "labels": {"v": "1"}}, {"address": "127.0.0.2", "labels": {"v": "2"}}]});
    let (c, d) = cluster_for(Role::Gateway, entry, &rules, host, 443, "v2");
    assert_eq!(sni_of(&c).as_deref(), Some("first"));
    let Discovery::Static { endpoints } = &c.discovery else {
        panic!("static");
    };
    assert_eq!(
        endpoints
            .iter()
            .map(|e| e.address.as_str())
            .collect::<Vec<_>>(),
        vec!["127.0.0.2"]
    );
    assert!(has(&d, "SLC0205", "Istio merges only subsets"), "{d:#?}");
}

#[test]
fn port_and_subset_policies_override_as_merge_traffic_policy_does() {
    let host = "a.example.com";
    let spec = json!({
        "trafficPolicy": {
            "loadBalancer": {"simple": "ROUND_ROBIN"},
            "connectionPool": {"tcp": {"maxConnections": 10}},
            "portLevelSettings": [{"port": {"number": 443}, "tls": {"mode": "SIMPLE", "sni": "port"}}],
        },
        "subsets": [
            {"name": "plain", "labels": {}},
            {"name": "random", "labels": {}, "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}},
            {"name": "sub-port", "labels": {}, "trafficPolicy": {
                "loadBalancer": {"simple": "RANDOM"},
                "portLevelSettings": [{"port": {"number": 443}, "connectionPool": {"tcp": {"maxConnections": 3}}}]}},
        ],
    });
    let rules = dr("r", "default", host, spec);
    // (subset, lb, max connections, sni)
    let table = [
        ("", LbPolicy::LeastRequest, None, Some("port")),
        ("plain", LbPolicy::LeastRequest, None, Some("port")),
        ("random", LbPolicy::Random, None, Some("port")),
        ("sub-port", LbPolicy::LeastRequest, Some(3), None),
    ];
    for (subset, lb, max, sni) in table {
        let (c, d) = cluster_for(Role::Gateway, dns_entry(host), &rules, host, 443, subset);
        assert_eq!(c.lb, lb, "{subset}: {d:#?}");
        assert_eq!(c.limits.max_connections, max, "{subset}");
        assert_eq!(sni_of(&c).as_deref(), sni, "{subset}");
    }
}

#[test]
fn upstream_tls_settings() {
    let host = "a.example.com";
    let tls = |t: Value| dr("r", "default", host, json!({"trafficPolicy": {"tls": t}}));
    let simple = |trust: Trust, sans: Vec<&str>| UpstreamTls {
        mode: UpstreamTlsMode::Simple,
        sni: None,
        trust,
        client_certificate: None,
        private_key: None,
        subject_alt_names: sans.into_iter().map(str::to_owned).collect(),
        alpn: Vec::new(),
    };
    let mut entry = dns_entry(host);
    entry["subjectAltNames"] = json!(["se-san"]);
    let table: Vec<(Value, Option<UpstreamTls>)> = vec![
        (json!({"mode": "DISABLE"}), None),
        (
            json!({"mode": "SIMPLE"}),
            Some(simple(Trust::Platform, vec!["se-san"])),
        ),
        (
            json!({"mode": "SIMPLE", "caCertificates": "/ca.pem", "subjectAltNames": ["dr-san"]}),
            Some(simple(Trust::File("/ca.pem".into()), vec!["dr-san"])),
        ),
        (
            json!({"mode": "SIMPLE", "insecureSkipVerify": true}),
            Some(simple(Trust::SkipVerify, vec!["se-san"])),
        ),
        (
            json!({"mode": "MUTUAL", "clientCertificate": "/c.pem", "privateKey": "/k.pem", "caCertificates": "/ca.pem", "sni": "s"}),
            Some(UpstreamTls {
                mode: UpstreamTlsMode::Mutual,
                sni: Some("s".into()),
                client_certificate: Some("/c.pem".into()),
                private_key: Some("/k.pem".into()),
                ..simple(Trust::File("/ca.pem".into()), vec!["se-san"])
            }),
        ),
        (
            json!({"mode": "ISTIO_MUTUAL", "sni": "outbound_.443_._.a.example.com"}),
            Some(UpstreamTls {
                mode: UpstreamTlsMode::IstioMutual,
                sni: Some("outbound_.443_._.a.example.com".into()),
                ..simple(Trust::Mesh, vec!["se-san"])
            }),
        ),
    ];
    for (t, want) in table {
        let (c, d) = cluster_for(Role::Gateway, entry.clone(), &tls(t.clone()), host, 443, "");
        assert_eq!(c.tls, want, "{t}: {d:#?}");
    }
    // TLS that cannot be set up refuses traffic instead of sending it in the clear.
    for (t, needle) in [
        (
            json!({"mode": "MUTUAL", "caCertificates": "/ca.pem"}),
            "clientCertificate and privateKey",
        ),
        (
            json!({"mode": "SIMPLE", "credentialName": "partner"}),
            "credentials directory",
        ),
    ] {
        let (c, d) = cluster_for(Role::Gateway, entry.clone(), &tls(t.clone()), host, 443, "");
        assert_eq!(c.discovery, Discovery::BlackHole, "{t}");
        assert!(has(&d, "SLC0201", needle), "{t}: {d:#?}");
    }
}

#[test]
fn credential_names_read_the_credentials_directory() {
    let yaml = format!(
        "{}\n{}{}",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: default}\nspec: {hosts: [a.example.com], ports: [{number: 443, name: https, protocol: HTTPS}, {number: 80, name: http, protocol: HTTP}], resolution: DNS}",
        dr(
            "r",
            "default",
            "a.example.com",
            json!({"trafficPolicy": {"portLevelSettings": [{"port": {"number": 443}, "tls": {"mode": "MUTUAL", "credentialName": "partner"}}]}})
        ),
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v, namespace: default}\nspec: {hosts: [a.example.com], http: [{route: [{destination: {host: a.example.com, port: {number: 443}}}]}]}\n",
    );
    let mut opts = CompileOptions::sidecar("default");
    opts.credentials_dir = Some("/creds".into());
    let (s, _) = compile(&load(&yaml), &opts);
    let tls = s
        .cluster("outbound|443||a.example.com")
        .and_then(|c| c.tls.clone())
        .expect("tls");
    assert_eq!(
        tls.client_certificate,
        Some("/creds/partner/tls.crt".into())
    );
    assert_eq!(tls.private_key, Some("/creds/partner/tls.key".into()));
    assert_eq!(tls.trust, Trust::File("/creds/partner/ca.crt".into()));
}

#[test]
fn limits_outlier_and_timeouts() {
    let host = "a.example.com";
    let pool = json!({"trafficPolicy": {
        "connectionPool": {
            "tcp": {"maxConnections": 0, "idleTimeout": "30s"},
            "http": {"http1MaxPendingRequests": 5, "http2MaxRequests": 6, "maxRequestsPerConnection": 1, "maxRetries": 2}
        },
        "outlierDetection": {"consecutiveGatewayErrors": 3}
    }});
    let (c, _) = cluster_for(
        Role::Gateway,
        dns_entry(host),
        &dr("r", "default", host, pool),
        host,
        443,
        "",
    );
    assert_eq!(
        c.limits,
        Limits {
            max_connections: None,
            max_pending_requests: Some(5),
            max_requests: Some(6),
            max_requests_per_connection: Some(1),
            max_retries: Some(2),
            idle_timeout: Some(Duration::from_secs(30)),
            max_connection_duration: None,
            tcp_keepalive: None,
        }
    );
    assert_eq!(
        c.outlier,
        Some(Outlier {
            consecutive_5xx: 5,
            consecutive_gateway_errors: Some(3),
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: None,
            local_origin_failures: None,
        })
    );
    let mesh = "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: m, namespace: istio-system}\nspec: {meshConfig: {connectTimeout: 2s}}\n";
    let (c, _) = cluster_for(Role::Gateway, dns_entry(host), mesh, host, 443, "");
    assert_eq!(c.connect_timeout, Duration::from_secs(2));
}

#[test]
fn load_balancers_map_and_report_what_they_cannot() {
    let host = "a.example.com";
    let table = [
        (json!({"simple": "ROUND_ROBIN"}), LbPolicy::RoundRobin, None),
        (json!({"simple": "RANDOM"}), LbPolicy::Random, None),
        (
            json!({"simple": "LEAST_CONN"}),
            LbPolicy::LeastRequest,
            None,
        ),
        (
            json!({"simple": "UNSPECIFIED"}),
            LbPolicy::LeastRequest,
            None,
        ),
        (
            json!({"simple": "PASSTHROUGH"}),
            LbPolicy::Passthrough,
            None,
        ),
        (
            json!({"consistentHash": {"httpHeaderName": "X-User"}}),
            LbPolicy::ConsistentHash {
                key: Some(HashKey::Header {
                    name: "x-user".into(),
                }),
                algorithm: HashAlgorithm::RingHash {
                    min_ring_size: 1024,
                },
            },
            None,
        ),
        (
            json!({"simple": "RANDOM", "localityLbSetting": {"enabled": true}}),
            LbPolicy::Random,
            Some("locality"),
        ),
    ];
    for (lb, want, diag) in table {
        let rules = dr(
            "r",
            "default",
            host,
            json!({"trafficPolicy": {"loadBalancer": lb}}),
        );
        let (c, d) = cluster_for(Role::Gateway, dns_entry(host), &rules, host, 443, "");
        assert_eq!(c.lb, want, "{lb}");
        if want == LbPolicy::Passthrough {
            assert_eq!(
                c.discovery,
                Discovery::OriginalDestination,
                "PASSTHROUGH makes ORIGINAL_DST"
            );
        }
        if let Some(needle) = diag {
            assert!(has(&d, "SLC0006", needle), "{lb}: {d:#?}");
        } else {
            assert!(!d.iter().any(|x| x.code == "SLC0006"), "{lb}: {d:#?}");
        }
    }
}

#[test]
fn consistent_hash_keys_and_algorithms_follow_istio() {
    let host = "a.example.com";
    let ring = |n| HashAlgorithm::RingHash { min_ring_size: n };
    let ch = |key: Option<HashKey>, algorithm| LbPolicy::ConsistentHash { key, algorithm };
    let header = || {
        Some(HashKey::Header {
            name: "x-user".into(),
        })
    };
    // (consistentHash, lowered, finding)
    let table = [
        (
            json!({"httpHeaderName": "x-user", "maglev": {"tableSize": 251}}),
            ch(header(), HashAlgorithm::Maglev { table_size: 251 }),
            None,
        ),
        (
            json!({"httpHeaderName": "x-user", "maglev": {}}),
            ch(header(), HashAlgorithm::Maglev { table_size: 65537 }),
            None,
        ),
        (
            json!({"httpHeaderName": "x-user", "ringHash": {"minimumRingSize": 4096}}),
            ch(header(), ring(4096)),
            None,
        ),
        (
            json!({"httpHeaderName": "x-user", "ringHash": {}}),
            ch(header(), ring(1024)),
            None,
        ),
        (
            json!({"httpHeaderName": "x-user", "minimumRingSize": 2048}),
            ch(header(), ring(2048)),
            None,
        ),
        (
            json!({"httpCookie": {"name": "sticky", "path": "/app", "ttl": "90s",
                   "attributes": [{"name": "SameSite", "value": "Strict"}, {"name": "Secure"}]}}),
            ch(
                Some(HashKey::Cookie {
                    name: "sticky".into(),
                    path: "/app".into(),
                    ttl: Some(Duration::from_secs(90)),
                    attributes: vec![
                        CookieAttribute {
                            name: "SameSite".into(),
                            value: "Strict".into(),
                        },
                        CookieAttribute {
                            name: "Secure".into(),
                            value: String::new(),
                        },
                    ],
                }),
                ring(1024),
            ),
            None,
        ),
        (
            json!({"httpCookie": {"name": "sticky"}}),
            ch(
                Some(HashKey::Cookie {
                    name: "sticky".into(),
                    path: String::new(),
                    ttl: None,
                    attributes: Vec::new(),
                }),
                ring(1024),
            ),
            None,
        ),
        (
            json!({"useSourceIp": true}),
            ch(Some(HashKey::SourceIp), ring(1024)),
            None,
        ),
        (
            json!({"httpQueryParameterName": "user"}),
            ch(
                Some(HashKey::QueryParameter {
                    name: "user".into(),
                }),
                ring(1024),
            ),
            None,
        ),
        (
            json!({"useSourceIp": false}),
            ch(None, ring(1024)),
            Some("random endpoint"),
        ),
        (
            json!({"httpHeaderName": "x-user", "useSourceIp": true}),
            ch(header(), ring(1024)),
            Some("httpHeaderName is used"),
        ),
    ];
    for (hash, want, finding) in table {
        let rules = dr(
            "r",
            "default",
            host,
            json!({"trafficPolicy": {"loadBalancer": {"consistentHash": hash}}}),
        );
        let (c, d) = cluster_for(Role::Gateway, dns_entry(host), &rules, host, 443, "");
        assert_eq!(c.lb, want, "{hash}: {d:#?}");
        assert!(
            !d.iter().any(|x| x.code == "SLC0006"),
            "{hash}: supported: {d:#?}"
        );
        match finding {
            Some(needle) => assert!(has(&d, "SLC0205", needle), "{hash}: {d:#?}"),
            None => assert!(!d.iter().any(|x| x.code == "SLC0205"), "{hash}: {d:#?}"),
        }
    }
}

#[test]
fn consistent_hash_per_port_and_subset_like_other_load_balancers() {
    let host = "a.example.com";
    let spec = json!({
        "trafficPolicy": {
            "loadBalancer": {"consistentHash": {"httpHeaderName": "x-top"}},
            "portLevelSettings": [{"port": {"number": 8443},
                "loadBalancer": {"consistentHash": {"useSourceIp": true, "maglev": {"tableSize": 65537}}}}],
        },
        "subsets": [
            {"name": "inherit", "labels": {}},
            {"name": "simple", "labels": {}, "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}},
            {"name": "own", "labels": {}, "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpQueryParameterName": "q"}}}},
        ],
    });
    let entry = json!({"hosts": [host], "resolution": "DNS", "ports": [
        {"number": 443, "name": "tls", "protocol": "TLS"},
        {"number": 8443, "name": "tls-alt", "protocol": "TLS"}]});
    let rules = dr("r", "default", host, spec);
    let ring = HashAlgorithm::RingHash {
        min_ring_size: 1024,
    };
    let top = LbPolicy::ConsistentHash {
        key: Some(HashKey::Header {
            name: "x-top".into(),
        }),
        algorithm: ring,
    };
    let table = [
        ("", 443, top.clone()),
        ("inherit", 443, top),
        ("simple", 443, LbPolicy::RoundRobin),
        (
            "own",
            443,
            LbPolicy::ConsistentHash {
                key: Some(HashKey::QueryParameter { name: "q".into() }),
                algorithm: ring,
            },
        ),
        (
            "",
            8443,
            LbPolicy::ConsistentHash {
                key: Some(HashKey::SourceIp),
                algorithm: HashAlgorithm::Maglev { table_size: 65537 },
            },
        ),
    ];
    for (subset, port, want) in table {
        let (c, d) = cluster_for(Role::Gateway, entry.clone(), &rules, host, port, subset);
        assert_eq!(c.lb, want, "{subset} {port}: {d:#?}");
    }
}

#[test]
fn http2_follows_should_h2_upgrade() {
    let host = "a.example.com";
    let entry = |proto: &str| json!({"hosts": [host], "ports": [{"number": 443, "name": "p", "protocol": proto}], "resolution": "DNS"});
    let upgrade = |policy: &str| {
        dr(
            "r",
            "default",
            host,
            json!({"trafficPolicy": {"connectionPool": {"http": {"h2UpgradePolicy": policy}}}}),
        )
    };
    let mesh_upgrade = "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: m, namespace: istio-system}\nspec: {meshConfig: {h2UpgradePolicy: UPGRADE}}\n";
    let table = [
        ("TLS", String::new(), false),
        ("HTTP", String::new(), false),
        ("HTTP2", String::new(), true),
        ("GRPC", String::new(), true),
        ("HTTP", upgrade("UPGRADE"), true),
        ("TLS", upgrade("UPGRADE"), true),
        ("HTTP", mesh_upgrade.to_owned(), true),
        ("TLS", mesh_upgrade.to_owned(), false),
        (
            "HTTP",
            format!("{mesh_upgrade}{}", upgrade("DO_NOT_UPGRADE")),
            false,
        ),
    ];
    for (proto, extra, want) in table {
        let (c, _) = cluster_for(Role::Gateway, entry(proto), &extra, host, 443, "");
        assert_eq!(c.http2, want, "{proto} {extra}");
    }
}

#[test]
fn auto_mtls_to_mesh_internal_endpoints_at_sidecars() {
    let host = "svc.example.internal";
    let entry = |label: bool| {
        let labels = if label {
            json!({"security.istio.io/tlsMode": "istio"})
        } else {
            json!({})
        };
        json!({"hosts": [host], "location": "MESH_INTERNAL", "resolution": "STATIC",
               "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
               "endpoints": [{"address": "127.0.0.5", "labels": labels, "serviceAccount": "svc"}]})
    };
    let (c, _) = cluster_for(Role::Sidecar, entry(true), "", host, 443, "");
    let tls = c.tls.expect("auto mTLS");
    assert_eq!(tls.mode, UpstreamTlsMode::IstioMutual);
    assert_eq!(
        tls.subject_alt_names,
        vec!["spiffe://cluster.local/ns/default/sa/svc"]
    );
    let (c, _) = cluster_for(Role::Sidecar, entry(false), "", host, 443, "");
    assert_eq!(c.tls, None);
    let (c, _) = cluster_for(Role::Gateway, entry(true), "", host, 443, "");
    assert_eq!(c.tls, None, "gateways do not originate auto mTLS");
}

/// A Secret of the proxy's namespace among the inputs is the credential (Istio reads
/// `credentialName` from the cluster's Secrets), before the credentials directory; without a
/// CA in it, the platform roots verify the server; a Secret of another namespace is not this
/// proxy's, and the cluster refuses traffic.
#[test]
fn credential_names_read_secrets_of_the_proxys_namespace() {
    let base = format!(
        "{}\n{}{}",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: default}\nspec: {hosts: [a.example.com], ports: [{number: 443, name: https, protocol: HTTPS}], resolution: DNS}",
        dr(
            "r",
            "default",
            "a.example.com",
            json!({"trafficPolicy": {"tls": {"mode": "MUTUAL", "credentialName": "partner"}}})
        ),
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v, namespace: default}\nspec: {hosts: [a.example.com], tls: [{match: [{port: 443, sniHosts: [a.example.com]}], route: [{destination: {host: a.example.com}}]}]}\n",
    );
    let secret = |ns: &str| {
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: partner, namespace: {ns}}}\ndata: {{tls.crt: Q0VSVA==, tls.key: S0VZ}}\n"
        )
    };
    let mut opts = CompileOptions::sidecar("default");
    opts.credentials_dir = Some("/creds".into());
    opts.secrets_dir = Some("/run/secrets".into());
    let (s, _) = compile(&load(&format!("{base}{}", secret("default"))), &opts);
    let tls = s
        .cluster("outbound|443||a.example.com")
        .and_then(|c| c.tls.clone())
        .expect("tls");
    assert_eq!(
        tls.client_certificate,
        Some("/run/secrets/default/partner/tls.crt".into())
    );
    assert_eq!(
        tls.private_key,
        Some("/run/secrets/default/partner/tls.key".into())
    );
    assert_eq!(tls.trust, Trust::Platform);

    opts.credentials_dir = None;
    let (s, d) = compile(&load(&format!("{base}{}", secret("other"))), &opts);
    let c = s.cluster("outbound|443||a.example.com").expect("cluster");
    assert_eq!(c.discovery, Discovery::BlackHole);
    assert!(
        has(&d, "SLC0201", "names no Secret of namespace default"),
        "{d:#?}"
    );
}

/// `trafficPolicy.tunnel` (Istio's TunnelSettings): CONNECT, the default protocol, lowers to
/// the cluster's tunnel (subset policies override it, as any traffic-policy field); POST,
/// which sluice does not speak, refuses traffic rather than reach the proxy untunnelled.
#[test]
fn tunnel_settings_lower_to_connect_through_the_endpoints() {
    let host = "proxy.corp.test";
    let tunnel = |protocol: &str| {
        dr(
            "t",
            "default",
            host,
            json!({"trafficPolicy": {"tunnel": {"protocol": protocol, "targetHost": "API.Partner.test", "targetPort": 443}},
                   "subsets": [{"name": "alt", "labels": {}, "trafficPolicy": {"tunnel": {"targetHost": "other.partner.test", "targetPort": 8443}}}]}),
        )
    };
    let (c, d) = cluster_for(
        Role::Gateway,
        dns_entry(host),
        &tunnel("CONNECT"),
        host,
        443,
        "",
    );
    assert_eq!(
        c.tunnel,
        Some(Tunnel {
            target_host: "api.partner.test".into(),
            target_port: 443
        }),
        "{d:#?}"
    );
    assert_ne!(c.discovery, Discovery::BlackHole);
    let (c, _) = cluster_for(
        Role::Gateway,
        dns_entry(host),
        &tunnel("CONNECT"),
        host,
        443,
        "alt",
    );
    assert_eq!(
        c.tunnel.map(|t| (t.target_host, t.target_port)),
        Some(("other.partner.test".into(), 8443))
    );

    let (c, d) = cluster_for(
        Role::Gateway,
        dns_entry(host),
        &tunnel("POST"),
        host,
        443,
        "",
    );
    assert_eq!(c.discovery, Discovery::BlackHole);
    assert!(has(&d, "SLC0201", "tunnelling over HTTP POST"), "{d:#?}");

    let (c, _) = cluster_for(Role::Gateway, dns_entry(host), "", host, 443, "");
    assert_eq!(c.tunnel, None);
}
