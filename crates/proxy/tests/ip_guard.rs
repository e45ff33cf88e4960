//! The destination IP guard end to end, on real sockets: names resolved by a real DNS server,
//! every refusal made without a dial (the refused upstream counts its connections).
//!
//! Only loopback is dialed here: 127.0.10.0/24 is the allowed test range, the rest of
//! 127.0.0.0/8 stands for the denied classes. The other classes (private, link-local,
//! metadata, CGNAT, ULA, …) are refused by `denied_classes_inside_a_network_namespace`, which
//! runs in a network namespace with only `lo`, so a guard bug cannot send a packet anywhere.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use serde_json::json;
use sluice_test_support::client::{http_get, raw_tcp};
use sluice_test_support::{DnsServer, HttpUpstream};

const PORT: u16 = 8080;

/// An address in the allowed test range.
fn allowed_ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 10, n))
}

fn narrow(c: &mut sluice_proxy::ProxyConfig, dns: SocketAddr) {
    c.dns_server = Some(dns);
    c.allow_ranges = vec!["127.0.10.0/24".parse().expect("range")];
}

/// Upstream connections opened, over every cluster.
fn dialed(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("envoy_cluster_upstream_cx_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn host_to(host: &str, cluster: &str) -> serde_json::Value {
    vhost(&[host], vec![forward_route(host, cluster)])
}

#[tokio::test]
async fn names_resolving_to_denied_addresses_are_refused_without_a_dial() {
    let good = HttpUpstream::start(SocketAddr::new(allowed_ip(21), 0), "good")
        .await
        .expect("good");
    // On 127.0.0.1: loopback, outside the allowed range.
    let bad = HttpUpstream::start(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0), "bad")
        .await
        .expect("bad");
    let dns = DnsServer::start([
        ("allowed.test", vec![good.addr().ip()]),
        ("denied.test", vec![bad.addr().ip()]),
        // The denied address first: the first permitted one is used.
        ("mixed.test", vec![bad.addr().ip(), good.addr().ip()]),
        ("named.test", vec![bad.addr().ip()]),
    ])
    .await
    .expect("dns");
    dns.set_rebinding("rebind.test", vec![good.addr().ip()], vec![bad.addr().ip()]);
    let clusters = vec![
        cluster(
            "good",
            "allowed.test",
            good.addr().port(),
            dns_discovery("allowed.test"),
            json!({}),
        ),
        cluster(
            "bad",
            "denied.test",
            bad.addr().port(),
            dns_discovery("denied.test"),
            json!({}),
        ),
        cluster(
            "mixed",
            "mixed.test",
            good.addr().port(),
            dns_discovery("mixed.test"),
            json!({}),
        ),
        cluster(
            "rebind",
            "rebind.test",
            good.addr().port(),
            dns_discovery("rebind.test"),
            json!({}),
        ),
        // The ServiceEntry names 127.0.0.1 in `addresses`: an explicit exception.
        cluster(
            "named",
            "named.test",
            bad.addr().port(),
            dns_discovery("named.test"),
            json!({"addresses": ["127.0.0.1/32"]}),
        ),
    ];
    let vhosts = vec![
        host_to("allowed.test", "good"),
        host_to("denied.test", "bad"),
        host_to("mixed.test", "mixed"),
        host_to("rebind.test", "rebind"),
        host_to("named.test", "named"),
    ];
    let proxy = start_with(
        snapshot(
            vec![listener(PORT, vec![http_chain(PORT, vhosts)])],
            clusters,
        ),
        |c| narrow(c, dns.addr()),
    )
    .await;
    let gw = proxy.addr(PORT);

    let (status, _, body) = http_get(gw, "allowed.test", "/").await.expect("allowed");
    assert_eq!(
        (status, echo(&body)["upstream"].as_str()),
        (200, Some("good"))
    );

    let (status, _, body) = http_get(gw, "denied.test", "/").await.expect("denied");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("loopback"), "{body}");
    let line = proxy.log_line(&["denied.test"]).await;
    assert!(line.contains("destination_ip_denied{loopback}"), "{line}");

    let (status, _, body) = http_get(gw, "mixed.test", "/").await.expect("mixed");
    assert_eq!(
        (status, echo(&body)["upstream"].as_str()),
        (200, Some("good"))
    );

    // A rebinding server answers the allowed address, then the denied one, in turn: each
    // request resolves once and dials what it checked, so the denied upstream is never
    // reached, whichever answer a request got.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (status, _, _) = http_get(gw, "rebind.test", "/").await.expect("rebind");
        statuses.push(status);
    }
    assert!(
        dns.queries("rebind.test") >= 2,
        "the server was asked once only"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 403),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&403),
        "never got the rebound answer: {statuses:?}"
    );

    assert_eq!(bad.connections(), 0, "a denied address was dialed");

    let (status, _, body) = http_get(gw, "named.test", "/").await.expect("named");
    assert_eq!(
        (status, echo(&body)["upstream"].as_str()),
        (200, Some("bad"))
    );
    assert_eq!(bad.connections(), 1);

    let metrics = proxy.metrics();
    assert!(
        metrics.contains(r#"sluice_refused_total{check="destination_ip",reason="loopback"}"#),
        "{metrics}"
    );
}

/// A request addressed to the gateway itself (its own listener, by a name whose address the
/// operator allowed) is refused: one request logged, nothing dialed, no loop.
#[tokio::test]
async fn a_request_to_the_gateways_own_address_is_refused() {
    let dns = DnsServer::start([("self.test", vec![allowed_ip(30)])])
        .await
        .expect("dns");
    let clusters = vec![cluster(
        "self",
        "self.test",
        PORT,
        dns_discovery("self.test"),
        json!({}),
    )];
    let vhosts = vec![host_to("self.test", "self")];
    let proxy = start_with(
        snapshot(
            vec![listener(PORT, vec![http_chain(PORT, vhosts)])],
            clusters,
        ),
        |c| {
            narrow(c, dns.addr());
            c.bind = allowed_ip(30);
        },
    )
    .await;
    let (status, _, body) = http_get(SocketAddr::new(allowed_ip(30), PORT), "self.test", "/")
        .await
        .expect("self");
    assert_eq!(status, 403, "{body}");
    let line = proxy.log_line(&["self.test"]).await;
    assert!(
        line.contains("destination_ip_denied{own_address}"),
        "{line}"
    );
    assert_eq!(proxy.log_text().lines().count(), 1, "{}", proxy.log_text());
    assert_eq!(dialed(&proxy.metrics()), 0, "the gateway dialed itself");
}

/// A TCP stream to a denied address is closed without a dial, logged with the reason.
#[tokio::test]
async fn tcp_streams_to_denied_addresses_are_closed() {
    let bad = HttpUpstream::start(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0), "bad")
        .await
        .expect("bad");
    let dns = DnsServer::start([("db.test", vec![bad.addr().ip()])])
        .await
        .expect("dns");
    let clusters = vec![cluster(
        "db",
        "db.test",
        bad.addr().port(),
        dns_discovery("db.test"),
        json!({}),
    )];
    let proxy = start_with(
        snapshot(vec![listener(PORT, vec![tcp_chain("db", "db")])], clusters),
        |c| narrow(c, dns.addr()),
    )
    .await;
    let got = raw_tcp(
        proxy.addr(PORT),
        b"GET / HTTP/1.1\r\nhost: db.test\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .expect("tcp");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    let line = proxy.log_line(&["destination_ip_denied{loopback}"]).await;
    assert!(line.contains("db"), "{line}");
    assert_eq!(bad.connections(), 0);
}

/// Every class the guard denies, end to end, in a network namespace of its own with only
/// `lo`: names resolve to private, metadata, CGNAT, benchmarking, ULA, NAT64-embedded, …
/// addresses; each request is answered 403 with the class, and nothing is dialed. Were the
/// guard wrong, the dial could not leave the namespace (no route but loopback).
#[test]
fn denied_classes_inside_a_network_namespace() {
    if std::env::var_os("SLUICE_IN_NETNS").is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new("unshare")
        .args(["-n", "sh", "-c", r#"ip link set lo up && exec "$0" "$@""#])
        .arg(exe)
        .args([
            "denied_classes_in_netns",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("SLUICE_IN_NETNS", "1")
        .output()
        .expect("unshare -n (root, util-linux and iproute2 are needed)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("1 passed"),
        "the namespaced test did not run:\n{text}"
    );
}

#[tokio::test]
#[ignore = "run by denied_classes_inside_a_network_namespace, inside `unshare -n`"]
async fn denied_classes_in_netns() {
    assert!(
        std::env::var_os("SLUICE_IN_NETNS").is_some(),
        "only inside the namespace its parent test makes"
    );
    let routes = std::fs::read_to_string("/proc/net/route").expect("routes");
    assert_eq!(
        routes.lines().count(),
        1,
        "not an isolated namespace:\n{routes}"
    );
    let table: [(&str, &str); 16] = [
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link_local"),
        ("100.100.100.200", "shared_address_space"),
        ("198.18.0.1", "benchmarking"),
        ("192.0.0.170", "protocol_assignments"),
        ("192.0.2.1", "documentation"),
        ("0.1.2.3", "this_network"),
        ("240.0.0.1", "reserved"),
        ("fd00:ec2::254", "unique_local"),
        ("fe80::1", "link_local"),
        ("::ffff:169.254.169.254", "link_local"),
        ("64:ff9b::a9fe:a9fe", "link_local"),
        ("2002:a00:1::1", "private"),
        ("::1", "loopback"),
    ];
    let records: Vec<(String, Vec<IpAddr>)> = table
        .iter()
        .enumerate()
        .map(|(i, (ip, _))| (format!("h{i}.test"), vec![ip.parse().expect("ip")]))
        .collect();
    let dns = DnsServer::start(records).await.expect("dns");
    let mut clusters = Vec::new();
    let mut vhosts = Vec::new();
    for i in 0..table.len() {
        let host = format!("h{i}.test");
        clusters.push(cluster(
            &format!("c{i}"),
            &host,
            80,
            dns_discovery(&host),
            json!({}),
        ));
        vhosts.push(host_to(&host, &format!("c{i}")));
    }
    let proxy = start_with(
        snapshot(
            vec![listener(PORT, vec![http_chain(PORT, vhosts)])],
            clusters,
        ),
        |c| {
            c.dns_server = Some(dns.addr());
            c.allow_ranges.clear();
        },
    )
    .await;
    for (i, (ip, class)) in table.iter().enumerate() {
        let host = format!("h{i}.test");
        let (status, _, body) = http_get(proxy.addr(PORT), &host, "/")
            .await
            .expect("request");
        assert_eq!(status, 403, "{ip}: {body}");
        let line = proxy.log_line(&[&format!(" \"{host}\" ")]).await;
        assert!(
            line.contains(&format!("destination_ip_denied{{{class}}}")),
            "{ip}: {line}"
        );
    }
    let metrics = proxy.metrics();
    assert_eq!(dialed(&metrics), 0, "something was dialed:\n{metrics}");
}
