//! The admin API of a running `sluice gateway` (security issue): loopback by default,
//! read-only, and bounded like every other listener — a connection that sends nothing is
//! closed at `--first-byte-timeout`, while a well-behaved client is answered.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use sluice_test_support::DnsServer;
use sluice_test_support::client::raw_tcp;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn the_admin_api_is_read_only_and_cuts_off_silent_clients() {
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let config = [guide("egress-gateway.yaml"), guide("mesh-config.yaml")];
    let (gw, bind) = gateway(&config, dns.addr(), &[("SLUICE_FIRST_BYTE_TIMEOUT", "1s")]).await;
    let admin = SocketAddr::new(bind, 15000);

    let mut silent = TcpStream::connect(admin).await.expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a silent admin client stayed connected: {read:?}"
    );

    assert_eq!(gw.admin_get("/ready").map(|r| r.0).ok(), Some(200));
    for method in ["POST", "PUT", "DELETE"] {
        let reply = raw_tcp(
            admin,
            format!("{method} /config_dump HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
            Duration::from_secs(2),
        )
        .await
        .expect("request");
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 405"), "{method}: {reply}");
    }
}

/// The default admin address is loopback: nothing off the machine reaches it unless the
/// operator says `--admin`.
#[test]
fn the_default_admin_address_is_loopback() {
    let out = std::process::Command::new(bin())
        .args(["gateway", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("[default: 127.0.0.1:15000]"), "{help}");
}
