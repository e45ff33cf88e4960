//! TLS passthrough by SNI, wildcard hosts with dynamic DNS, plain TCP with static endpoints.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::json;
use sluice_test_support::client::https_get;
use sluice_test_support::{
    DnsServer, HttpsUpstream, TcpUpstream, TestCa, UpstreamOptions, free_loopback_addr,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const GITHUB: &str = "outbound|443||api.github.com";
const GITLAB: &str = "outbound|443||gitlab.com";

#[tokio::test]
async fn tls_passthrough_by_sni_and_unknown_sni_is_closed_and_logged() {
    let ca = TestCa::new("passthrough-ca");
    let (gh_ip, gl_ip) = (free_loopback_addr(), free_loopback_addr());
    let github = HttpsUpstream::start(
        SocketAddr::new(gh_ip, 443),
        &ca.server_cert(&["api.github.com"]),
        "github",
        UpstreamOptions::default(),
    )
    .await
    .expect("github");
    let gitlab = HttpsUpstream::start(
        SocketAddr::new(gl_ip, 443),
        &ca.server_cert(&["gitlab.com"]),
        "gitlab",
        UpstreamOptions::default(),
    )
    .await
    .expect("gitlab");
    let dns = DnsServer::start([("api.github.com", vec![gh_ip]), ("gitlab.com", vec![gl_ip])])
        .await
        .expect("dns");
    let dir = sluice_test_support::TempDir::new("passthrough");
    let ca_file = ca.write_ca_pem(dir.path());

    // The guide's SIMPLE DestinationRule on a passthrough host: sluice must not wrap again.
    let snap = snapshot(
        vec![listener(
            443,
            vec![
                passthrough_chain("tls-github", &["api.github.com"], GITHUB),
                passthrough_chain("tls-gitlab", &["gitlab.com"], GITLAB),
            ],
        )],
        vec![
            cluster(
                GITHUB,
                "api.github.com",
                443,
                dns_discovery("api.github.com"),
                json!({"tls": {"mode": "SIMPLE", "trust": {"file": ca_file}}}),
            ),
            cluster(
                GITLAB,
                "gitlab.com",
                443,
                dns_discovery("gitlab.com"),
                json!({}),
            ),
        ],
    );
    let proxy = start(snap, Some(dns.addr())).await;
    let roots = ca.ca_root_store();

    let (status, _, body) = https_get(
        proxy.addr(443),
        "api.github.com",
        "api.github.com",
        "/repos",
        &roots,
        None,
    )
    .await
    .expect("github through the proxy");
    assert_eq!(status, 200);
    let seen = echo(&body);
    assert_eq!(seen["upstream"], "github");
    assert_eq!(seen["sni"], "api.github.com");
    assert_eq!(seen["path"], "/repos");

    let (status, _, body) = https_get(
        proxy.addr(443),
        "gitlab.com",
        "gitlab.com",
        "/",
        &roots,
        None,
    )
    .await
    .expect("gitlab through the proxy");
    assert_eq!(status, 200);
    assert_eq!(echo(&body)["upstream"], "gitlab");

    let refused = https_get(
        proxy.addr(443),
        "evil.example.com",
        "evil.example.com",
        "/",
        &roots,
        None,
    )
    .await;
    assert!(refused.is_err(), "unknown SNI must be closed: {refused:?}");
    assert_eq!(github.requests() + gitlab.requests(), 2);

    let line = proxy.log_line(&[GITHUB, "api.github.com"]).await;
    assert!(line.contains(&format!("\"{gh_ip}:443\"")), "{line}");
    // Istio's format: "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS%
    // %DOWNSTREAM_LOCAL_ADDRESS%. The downstream local address of a listener on a specific
    // address is that address (not asked of the kernel); the upstream's is the socket's own.
    let after_host = line
        .split(&format!("\"{gh_ip}:443\" "))
        .nth(1)
        .expect("upstream host");
    let fields: Vec<&str> = after_host.split(' ').take(3).collect();
    assert_eq!(fields[0], GITHUB, "{line}");
    let upstream_local: SocketAddr = fields[1].parse().expect("upstream local address");
    assert!(
        upstream_local.ip().is_loopback() && upstream_local.port() != 0,
        "{line}"
    );
    assert_eq!(fields[2], proxy.addr(443).to_string(), "{line}");
    assert!(line.contains(" - - "), "no flags, no http method: {line}");
    let refused = proxy
        .log_line(&["evil.example.com", "filter_chain_not_found"])
        .await;
    assert!(refused.contains(" NR "), "{refused}");

    let metrics = proxy.metrics();
    assert!(
        metrics.contains("istio_tcp_connections_opened_total{")
            && metrics.contains("destination_service=\"api.github.com\""),
        "{metrics}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn wildcard_sni_with_dynamic_dns_reaches_each_host() {
    let ca = TestCa::new("wiki-ca");
    let (en_ip, de_ip) = (free_loopback_addr(), free_loopback_addr());
    let cert = ca.server_cert(&["*.wikipedia.org"]);
    let en = HttpsUpstream::start(
        SocketAddr::new(en_ip, 443),
        &cert,
        "en",
        UpstreamOptions::default(),
    )
    .await
    .expect("en");
    let de = HttpsUpstream::start(
        SocketAddr::new(de_ip, 443),
        &cert,
        "de",
        UpstreamOptions::default(),
    )
    .await
    .expect("de");
    let dns = DnsServer::start([
        ("en.wikipedia.org", vec![en_ip]),
        ("de.wikipedia.org", vec![de_ip]),
    ])
    .await
    .expect("dns");
    let wiki = "outbound|443||*.wikipedia.org";
    let snap = snapshot(
        vec![listener(
            443,
            vec![passthrough_chain("tls-wiki", &["*.wikipedia.org"], wiki)],
        )],
        vec![cluster(
            wiki,
            "*.wikipedia.org",
            443,
            json!("dynamic_dns"),
            json!({}),
        )],
    );
    let proxy = start(snap, Some(dns.addr())).await;
    let roots = ca.ca_root_store();
    for (host, want) in [("en.wikipedia.org", "en"), ("de.wikipedia.org", "de")] {
        let (status, _, body) = https_get(proxy.addr(443), host, host, "/wiki", &roots, None)
            .await
            .unwrap_or_else(|e| panic!("{host}: {e:#}"));
        assert_eq!(status, 200);
        let seen = echo(&body);
        assert_eq!(seen["upstream"], want);
        assert_eq!(seen["sni"], host);
    }
    assert_eq!((en.requests(), de.requests()), (1, 1));
    // A name the DNS does not know: closed, flagged DF.
    let r = https_get(
        proxy.addr(443),
        "xx.wikipedia.org",
        "xx.wikipedia.org",
        "/",
        &roots,
        None,
    )
    .await;
    assert!(r.is_err());
    proxy.log_line(&["xx.wikipedia.org", " DF "]).await;
    proxy.stop().await;
}

async fn banner(addr: SocketAddr) -> String {
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .expect("banner in time")
        .expect("banner");
    // And the echo works both ways.
    let mut stream = reader.into_inner();
    stream.write_all(b"ping\n").await.expect("write");
    let mut reader = BufReader::new(stream);
    let mut echoed = String::new();
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(echoed, "ping\n");
    line.trim().to_owned()
}

#[tokio::test]
async fn tcp_static_endpoints_spread_and_subsets_pin() {
    let a = TcpUpstream::start("127.0.0.1:0".parse().expect("addr"), "a")
        .await
        .expect("a");
    let b = TcpUpstream::start("127.0.0.1:0".parse().expect("addr"), "b")
        .await
        .expect("b");
    let all = "outbound|5432||db.internal";
    let subset = "outbound|5432|primary|db.internal";
    let snap = snapshot(
        vec![
            listener(5432, vec![tcp_chain("tcp-db", all)]),
            listener(5433, vec![tcp_chain("tcp-primary", subset)]),
        ],
        vec![
            cluster(
                all,
                "db.internal",
                5432,
                static_endpoints(&[a.addr(), b.addr()]),
                json!({}),
            ),
            cluster(
                subset,
                "db.internal",
                5432,
                static_endpoints(&[a.addr()]),
                json!({}),
            ),
        ],
    );
    let proxy = start(snap, None).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(banner(proxy.addr(5432)).await);
    }
    assert!(
        seen.iter().any(|s| s == "a") && seen.iter().any(|s| s == "b"),
        "{seen:?}"
    );
    for _ in 0..4 {
        assert_eq!(banner(proxy.addr(5433)).await, "a");
    }
    let line = proxy.log_line(&[subset]).await;
    assert!(line.contains(&format!("\"{}\"", a.addr())), "{line}");
    proxy.stop().await;
}
