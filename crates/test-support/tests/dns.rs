//! The DNS server against a hand-built client over real UDP and TCP sockets.

use std::net::IpAddr;

use sluice_test_support::DnsServer;
use sluice_test_support::dns::{NXDOMAIN, QueryType, query_tcp, query_udp};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[tokio::test]
async fn answers_a_aaaa_wildcard_nxdomain_and_changes() {
    let dns = DnsServer::start([
        ("api.github.com", vec![ip("127.0.10.1"), ip("::1")]),
        ("*.wikipedia.org", vec![ip("127.0.10.2")]),
        ("v6only.test", vec![ip("::1")]),
    ])
    .await
    .expect("start");
    assert!(dns.addr().ip().is_loopback());

    let a = query_udp(dns.addr(), "api.github.com", QueryType::A)
        .await
        .expect("A");
    assert_eq!((a.rcode, a.authoritative), (0, true));
    assert_eq!(a.ips, vec![ip("127.0.10.1")]);
    assert_eq!(a.ttls, vec![5]);

    let aaaa = query_udp(dns.addr(), "API.GitHub.com.", QueryType::Aaaa)
        .await
        .expect("AAAA");
    assert_eq!(aaaa.ips, vec![ip("::1")]);

    // known name, other family or type: NOERROR, no answer
    let none = query_udp(dns.addr(), "v6only.test", QueryType::A)
        .await
        .expect("nodata");
    assert_eq!((none.rcode, none.ips.len()), (0, 0));
    let txt = query_udp(dns.addr(), "api.github.com", QueryType::Other(16))
        .await
        .expect("txt");
    assert_eq!((txt.rcode, txt.ips.len()), (0, 0));

    let w = query_udp(dns.addr(), "en.wikipedia.org", QueryType::A)
        .await
        .expect("wildcard");
    assert_eq!(w.ips, vec![ip("127.0.10.2")]);
    let deep = query_tcp(dns.addr(), "a.b.wikipedia.org", QueryType::A)
        .await
        .expect("deep");
    assert_eq!(deep.ips, vec![ip("127.0.10.2")]);
    let apex = query_udp(dns.addr(), "wikipedia.org", QueryType::A)
        .await
        .expect("apex");
    assert_eq!(apex.rcode, NXDOMAIN, "a wildcard does not cover its parent");

    let nx = query_udp(dns.addr(), "unknown.example", QueryType::A)
        .await
        .expect("nx");
    assert_eq!((nx.rcode, nx.ips.len()), (NXDOMAIN, 0));

    dns.set("api.github.com", vec![ip("127.0.10.9")]);
    let changed = query_tcp(dns.addr(), "api.github.com", QueryType::A)
        .await
        .expect("tcp");
    assert_eq!(changed.ips, vec![ip("127.0.10.9")]);
    dns.set_with_ttl(
        "api.github.com",
        vec![ip("127.0.10.3"), ip("127.0.10.4")],
        1,
    );
    let ttl = query_udp(dns.addr(), "api.github.com", QueryType::A)
        .await
        .expect("ttl");
    assert_eq!(ttl.ips, vec![ip("127.0.10.3"), ip("127.0.10.4")]);
    assert_eq!(ttl.ttls, vec![1, 1]);
    dns.remove("api.github.com");
    let gone = query_udp(dns.addr(), "api.github.com", QueryType::A)
        .await
        .expect("gone");
    assert_eq!(gone.rcode, NXDOMAIN);

    assert_eq!(dns.queries("api.github.com"), 6);
    assert_eq!(dns.queries("en.wikipedia.org"), 1);
    assert_eq!(dns.queries("*.wikipedia.org"), 2);
    assert_eq!(dns.queries("nobody.asked"), 0);

    let addr = dns.addr();
    drop(dns);
    // Dropping aborts the server's tasks; its socket closes when the runtime next runs them.
    // Ask until it stops answering (bounded), then check that it did.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut answer = query_udp(addr, "api.github.com", QueryType::A).await;
    while answer.is_ok() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        answer = query_udp(addr, "api.github.com", QueryType::A).await;
    }
    assert!(answer.is_err(), "stopped on drop");
}

#[tokio::test]
async fn start_at_a_fixed_loopback_address() {
    let ip = sluice_test_support::free_loopback_addr();
    let dns = DnsServer::start_at(std::net::SocketAddr::new(ip, 53), [("x.test", vec![ip])])
        .await
        .expect("start on :53");
    let a = query_tcp(dns.addr(), "x.test", QueryType::A)
        .await
        .expect("A");
    assert_eq!(a.ips, vec![ip]);
}
