use sluice_snapshot::route::RouteAction;
use sluice_snapshot::{App, Snapshot};

use super::*;
use crate::lower::testing::{gateway, has};

fn gw(name: &str, ns: &str, selector: &str, servers: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  selector: {selector}\n  servers: {servers}\n"
    )
}

fn vs(name: &str, ns: &str, hosts: &str, gateways: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: {hosts}\n  gateways: {gateways}\n  {rules}\n"
    )
}

const SE: &str = "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: default}\nspec:\n  hosts: [a.example.com, b.example.com, \"*.wild.org\"]\n  ports: [{number: 443, name: tls, protocol: TLS}, {number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n";

const EGRESS: &str = "{istio: egressgateway}";

fn http_route_to(host: &str) -> String {
    format!("http: [{{route: [{{destination: {{host: {host}, port: {{number: 443}}}}}}]}}]")
}

fn vhost_names(s: &Snapshot, port: u16) -> Vec<String> {
    s.listener(port)
        .map(|l| {
            l.chains
                .iter()
                .flat_map(|c| match &c.app {
                    App::Http { virtual_hosts, .. } => {
                        virtual_hosts.iter().map(|v| v.name.clone()).collect()
                    }
                    App::Tcp { .. } => Vec::new(),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn gateways_apply_when_their_selector_matches() {
    let servers = "[{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]";
    let table = [
        ("{istio: egressgateway}", true),
        ("{}", true),
        ("{istio: ingressgateway}", false),
        ("{istio: egressgateway, app: other}", false),
    ];
    for (selector, want) in table {
        let (s, d) = gateway(&gw("g", "default", selector, servers));
        assert_eq!(s.listener(80).is_some(), want, "{selector}");
        assert_eq!(has(&d, "SLC0206", "no Gateway selects"), !want);
    }
}

#[test]
fn virtual_services_bind_by_gateway_name_forms() {
    let servers = "[{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]";
    // (VirtualService namespace, its gateways) → bound to default/g?
    let table = [
        ("default", "[g]", true),
        ("default", "[./g]", true),
        ("other", "[default/g]", true),
        ("other", "[g.default.svc.cluster.local]", true),
        ("other", "[g]", false),
        ("default", "[mesh]", false),
        ("default", "[]", false),
    ];
    for (ns, gateways, want) in table {
        let yaml = format!(
            "{SE}{}{}",
            gw("g", "default", EGRESS, servers),
            vs(
                "v",
                ns,
                "[a.example.com]",
                gateways,
                &http_route_to("a.example.com")
            )
        );
        let (s, _) = gateway(&yaml);
        assert_eq!(
            vhost_names(&s, 80).contains(&"a.example.com:80".to_owned()),
            want,
            "{ns} {gateways}"
        );
    }
}

#[test]
fn server_hosts_filter_virtual_service_hosts() {
    // (server hosts, VirtualService namespace, VirtualService hosts) → virtual hosts
    let table: [(&str, &str, &str, &[&str]); 8] = [
        ("['*']", "default", "[a.example.com]", &["a.example.com:80"]),
        (
            "['a.example.com']",
            "default",
            "[a.example.com, b.example.com]",
            &["a.example.com:80"],
        ),
        (
            "['*.example.com']",
            "default",
            "[a.example.com]",
            &["a.example.com:80"],
        ),
        // The server host is more specific than the VirtualService's: it names the host.
        (
            "['a.example.com']",
            "default",
            "['*.example.com']",
            &["a.example.com:80"],
        ),
        (
            "['other/a.example.com']",
            "default",
            "[a.example.com]",
            &["blackhole:80"],
        ),
        (
            "['default/a.example.com']",
            "default",
            "[a.example.com]",
            &["a.example.com:80"],
        ),
        (
            "['./a.example.com']",
            "default",
            "[a.example.com]",
            &["a.example.com:80"],
        ),
        (
            "['*/a.example.com']",
            "default",
            "[a.example.com]",
            &["a.example.com:80"],
        ),
    ];
    for (hosts, ns, vs_hosts, want) in table {
        let servers =
            format!("[{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: {hosts}}}]");
        let yaml = format!(
            "{SE}{}{}",
            gw("g", "default", EGRESS, &servers),
            vs(
                "v",
                ns,
                vs_hosts,
                "[default/g]",
                &http_route_to("a.example.com")
            )
        );
        let (s, _) = gateway(&yaml);
        assert_eq!(
            vhost_names(&s, 80),
            want.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
            "{hosts} {vs_hosts}"
        );
    }
}

#[test]
fn http_servers_on_one_port_merge_and_protocols_conflict() {
    let yaml = format!(
        "{SE}{}{}{}{}",
        gw(
            "g1",
            "default",
            EGRESS,
            "[{port: {number: 80, name: http, protocol: HTTP}, hosts: [a.example.com]}]"
        ),
        gw(
            "g2",
            "default",
            EGRESS,
            "[{port: {number: 80, name: http2, protocol: HTTP}, hosts: [b.example.com]}, {port: {number: 80, name: tcp, protocol: TCP}, hosts: ['*']}]"
        ),
        vs(
            "va",
            "default",
            "[a.example.com]",
            "[g1]",
            &http_route_to("a.example.com")
        ),
        vs(
            "vb",
            "default",
            "[b.example.com]",
            "[g2]",
            &http_route_to("b.example.com")
        ),
    );
    let (s, d) = gateway(&yaml);
    let l = s.listener(80).expect("80");
    assert_eq!(l.chains.len(), 1);
    assert_eq!(l.chains[0].name, "http.80");
    assert_eq!(
        vhost_names(&s, 80),
        vec!["a.example.com:80", "b.example.com:80"]
    );
    assert!(has(&d, "SLC0201", "already carries plain HTTP"), "{d:#?}");
}

#[test]
fn https_redirect_hosts_only_redirect() {
    let yaml = format!(
        "{SE}{}{}",
        gw(
            "g",
            "default",
            EGRESS,
            "[{port: {number: 80, name: http, protocol: HTTP}, hosts: [a.example.com, b.example.com], tls: {httpsRedirect: true}}]"
        ),
        vs(
            "v",
            "default",
            "[a.example.com]",
            "[g]",
            &http_route_to("a.example.com")
        ),
    );
    let (s, _) = gateway(&yaml);
    let App::Http { virtual_hosts, .. } = &s.listener(80).expect("80").chains[0].app else {
        panic!("http");
    };
    assert_eq!(virtual_hosts.len(), 2);
    for vh in virtual_hosts {
        assert_eq!(vh.routes.len(), 1, "{}", vh.name);
        let RouteAction::Redirect(r) = &vh.routes[0].action else {
            panic!("redirect");
        };
        assert_eq!((r.scheme.as_deref(), r.status), (Some("https"), 301));
    }
}

#[test]
fn passthrough_routes_by_sni_and_skips_duplicates() {
    let tls_rule = |gateway: &str, sni: &str, host: &str| {
        format!(
            "tls: [{{match: [{{gateways: [{gateway}], port: 443, sniHosts: [{sni}]}}], route: [{{destination: {{host: {host}, port: {{number: 443}}}}}}]}}]"
        )
    };
    let yaml = format!(
        "{SE}{}{}{}{}",
        gw(
            "g",
            "default",
            EGRESS,
            "[{port: {number: 443, name: tls, protocol: TLS}, hosts: ['*.example.com', \"*.wild.org\"], tls: {mode: PASSTHROUGH}}]"
        ),
        vs(
            "va",
            "default",
            "[a.example.com]",
            "[g]",
            &tls_rule("g", "a.example.com", "a.example.com")
        ),
        vs(
            "vb",
            "default",
            "[a.example.com]",
            "[g]",
            &tls_rule("g", "a.example.com", "b.example.com")
        ),
        vs(
            "vmesh",
            "default",
            "[b.example.com]",
            "[mesh, g]",
            &tls_rule("mesh", "b.example.com", "b.example.com")
        ),
    );
    let (s, d) = gateway(&yaml);
    let chain = &s.listener(443).expect("443").chains[0];
    assert_eq!(
        chain.match_.server_names,
        vec![
            HostMatch::parse("*.example.com"),
            HostMatch::parse("*.wild.org")
        ]
    );
    let App::Tcp { routes } = &chain.app else {
        panic!("tcp");
    };
    let got: Vec<(&str, &str)> = routes
        .iter()
        .map(|r| (r.name.as_str(), r.clusters[0].cluster.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![("default/va/tls[0]", "outbound|443||a.example.com")]
    );
    assert!(has(&d, "SLC0201", "already routed on port 443"), "{d:#?}");
}

#[test]
fn tcp_servers_take_the_first_matching_rule() {
    let yaml = format!(
        "{SE}{}{}",
        gw(
            "g",
            "default",
            EGRESS,
            "[{port: {number: 9000, name: tcp, protocol: TCP}, hosts: [a.example.com]}, {port: {number: 9000, name: tcp2, protocol: TCP}, hosts: [b.example.com]}]"
        ),
        vs(
            "v",
            "default",
            "[a.example.com]",
            "[g]",
            "tcp: [{match: [{port: 9001}], route: [{destination: {host: b.example.com, port: {number: 443}}}]}, {match: [{port: 9000}], route: [{destination: {host: a.example.com, port: {number: 443}}}]}, {route: [{destination: {host: b.example.com, port: {number: 443}}}]}]"
        ),
    );
    let (s, d) = gateway(&yaml);
    let l = s.listener(9000).expect("9000");
    assert_eq!(l.chains.len(), 1);
    let App::Tcp { routes } = &l.chains[0].app else {
        panic!("tcp");
    };
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].name, "default/v/tcp[1]");
    assert!(has(&d, "SLC0201", "already carries plain TCP"), "{d:#?}");
}

#[test]
fn servers_left_out_are_reported() {
    let table = [
        (
            "{port: {number: 443, name: auto, protocol: TLS}, hosts: ['*'], tls: {mode: AUTO_PASSTHROUGH}}",
            "SLC0006",
            "AUTO_PASSTHROUGH",
        ),
        (
            "{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*']}",
            "SLC0201",
            "needs tls settings",
        ),
        (
            "{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: SIMPLE}}",
            "SLC0201",
            "serverCertificate and privateKey",
        ),
        (
            "{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: MUTUAL, serverCertificate: /c, privateKey: /k}}",
            "SLC0201",
            "caCertificates",
        ),
        (
            "{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: SIMPLE, serverCertificate: /c, privateKey: /k, caCrl: /crl}}",
            "SLC0006",
            "revocation",
        ),
        (
            "{port: {number: 53, name: dns, protocol: UDP}, hosts: ['*']}",
            "SLC0006",
            "UDP",
        ),
    ];
    for (server, code, needle) in table {
        let (s, d) = gateway(&gw("g", "default", EGRESS, &format!("[{server}]")));
        assert!(s.listeners.is_empty(), "{server}");
        assert!(has(&d, code, needle), "{server}: {d:#?}");
    }
}

#[test]
fn terminating_servers_carry_their_certificates() {
    let table = [
        ("SIMPLE", ServerTlsMode::Simple, None),
        ("MUTUAL", ServerTlsMode::Mutual, Some("/certs/ca.pem")),
        (
            "OPTIONAL_MUTUAL",
            ServerTlsMode::Mutual,
            Some("/certs/ca.pem"),
        ),
    ];
    for (mode, want, ca) in table {
        let server = format!(
            "[{{port: {{number: 443, name: https, protocol: HTTPS}}, hosts: [a.example.com], tls: {{mode: {mode}, serverCertificate: /certs/cert.pem, privateKey: /certs/key.pem, caCertificates: /certs/ca.pem}}}}]"
        );
        let (s, _) = gateway(&gw("g", "default", EGRESS, &server));
        let tls = s.listener(443).expect("443").chains[0]
            .tls
            .clone()
            .expect("tls");
        assert_eq!(tls.mode, want, "{mode}");
        assert_eq!(tls.certificate_chain, PathBuf::from("/certs/cert.pem"));
        assert_eq!(
            tls.ca_certificates.as_deref(),
            ca.map(std::path::Path::new),
            "{mode}"
        );
        assert_eq!(tls.alpn, vec!["h2", "http/1.1"]);
    }
}

#[test]
fn tls_servers_sharing_a_host_on_a_port_conflict() {
    let yaml = gw(
        "g",
        "default",
        EGRESS,
        "[{port: {number: 443, name: a, protocol: TLS}, hosts: [a.example.com], tls: {mode: PASSTHROUGH}}, {port: {number: 443, name: b, protocol: TLS}, hosts: [a.example.com, b.example.com], tls: {mode: PASSTHROUGH}}]",
    );
    let (s, d) = gateway(&yaml);
    let names: Vec<Vec<HostMatch>> = s
        .listener(443)
        .expect("443")
        .chains
        .iter()
        .map(|c| c.match_.server_names.clone())
        .collect();
    assert_eq!(
        names,
        vec![
            vec![HostMatch::parse("a.example.com")],
            vec![HostMatch::parse("b.example.com")]
        ]
    );
    assert!(has(&d, "SLC0201", "already have a TLS server"), "{d:#?}");
}
