//! Reloads and drains of a running `sluice gateway`, as an operator drives them: SIGHUP
//! reloads at once (a bad config is rejected and counted, the last good one keeps serving),
//! `--reload-interval 0` is refused, and SIGTERM fails readiness first, lets the request in
//! flight finish, and exits 0. Loopback only; every process stopped by its PID.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

mod common;

use common::{PartnerHttp, bin, gateway, http_gateway, http_route, metric};
use sluice_test_support::client::http_get;
use sluice_test_support::{DnsServer, TempDir, free_loopback_addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(hosts: &[&str], upstream: IpAddr) -> String {
    let mut out = http_gateway(r#"["*"]"#);
    for (i, h) in hosts.iter().enumerate() {
        out.push_str(&http_route(&format!("r{i}"), h, upstream));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_at_once_and_bad_configs_are_rejected_and_counted() {
    let PartnerHttp { upstream, dns, dir } = PartnerHttp::start("sighup").await;
    let file = dir.join("config.yaml");
    let ip = upstream.addr().ip();
    std::fs::write(&file, config(&["a.partner.test"], ip)).expect("write");
    // Polling is an hour away: only the signal can reload within the test.
    let (gw, bind) = gateway(
        &[file.display().to_string()],
        dns.addr(),
        &[("SLUICE_RELOAD_INTERVAL", "1h")],
    )
    .await;
    let addr = SocketAddr::new(bind, 80);
    let status =
        |host: &'static str| async move { http_get(addr, host, "/").await.expect("request").0 };
    assert_eq!(status("a.partner.test").await, 200);
    assert_eq!(status("b.partner.test").await, 404);

    std::fs::write(&file, config(&["a.partner.test", "b.partner.test"], ip)).expect("write");
    gw.signal("HUP").expect("SIGHUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while status("b.partner.test").await != 200 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload within 5s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.wait_for_stderr("SIGHUP: reloading", Duration::from_secs(5))
        .or_else(|_| gw.wait_for_log("SIGHUP: reloading", Duration::from_secs(1)))
        .expect("the reload is logged");

    std::fs::write(&file, "kind: [unclosed").expect("write");
    gw.signal("HUP").expect("SIGHUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, stats) = gw.admin_get("/stats/prometheus").expect("stats");
        if metric(&stats, "sluice_config_reloads_total{result=\"rejected\"}") >= 1.0 {
            assert_eq!(
                metric(&stats, "sluice_config_reloads_total{result=\"applied\"}"),
                1.0
            );
            assert_eq!(metric(&stats, "sluice_config_generation"), 2.0);
            assert!(metric(&stats, "sluice_config_last_reload_seconds") > 1.6e9);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bad config was not counted:\n{stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last good configuration still serves.
    assert_eq!(status("b.partner.test").await, 200);
}

#[test]
fn a_zero_reload_interval_is_refused() {
    let out = std::process::Command::new(bin())
        .args(["gateway", "-c", "/nonexistent", "--reload-interval", "0s"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must be above 0"), "{err}");
}

/// SIGTERM during a request: `/ready` fails at once, the request in flight finishes, the
/// process exits 0 within the drain timeout.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_fails_readiness_and_drains_in_flight_requests() {
    // An upstream that answers after 1.5 s.
    let slow = tokio::net::TcpListener::bind(SocketAddr::new(free_loopback_addr(), 80))
        .await
        .expect("bind");
    let slow_addr = slow.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = slow.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")
                    .await;
            });
        }
    });
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let dir = TempDir::new("drain");
    let file = dir.join("config.yaml");
    std::fs::write(&file, config(&["slow.partner.test"], slow_addr.ip())).expect("write");
    let (mut gw, bind) = gateway(&[file.display().to_string()], dns.addr(), &[]).await;
    let addr = SocketAddr::new(bind, 80);
    let in_flight = tokio::spawn(async move { http_get(addr, "slow.partner.test", "/").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    gw.signal("TERM").expect("SIGTERM");
    // Readiness drops while the request is still in flight.
    let mut not_ready = false;
    while signalled.elapsed() < Duration::from_millis(1200) {
        match gw.admin_get("/ready") {
            Ok((200, _)) => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => {
                not_ready = true;
                break;
            }
        }
    }
    assert!(not_ready, "/ready still 200 after SIGTERM");
    // New connections are refused from then on (the listeners are closed), while the request
    // in flight goes on.
    let refused_by = Instant::now() + Duration::from_secs(1);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < refused_by,
            "new connections still accepted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = in_flight
        .await
        .expect("join")
        .expect("the in-flight request completes");
    assert_eq!((reply.0, reply.2.as_str()), (200, "slow"));
    let status = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(10)))
        .await
        .expect("join")
        .expect("wait")
        .expect("exited");
    assert!(status.success(), "{status:?}");
}

/// A listener port that cannot be bound (another process holds it) does not stop the gateway:
/// it is reported, `/ready` stays 503, and it is retried until it binds; then traffic flows.
#[tokio::test(flavor = "multi_thread")]
async fn a_port_in_use_is_retried_and_readiness_waits_for_it() {
    let PartnerHttp { upstream, dns, dir } = PartnerHttp::start("port-in-use").await;
    let file = dir.join("config.yaml");
    std::fs::write(&file, config(&["a.partner.test"], upstream.addr().ip())).expect("write");
    let bind = free_loopback_addr();
    let squatter = std::net::TcpListener::bind(SocketAddr::new(bind, 80)).expect("hold port 80");
    let admin = SocketAddr::new(bind, 15000);
    let mut child = std::process::Command::new(bin())
        .args(["gateway", "-c", &file.display().to_string()])
        .args(["--bind", &bind.to_string(), "--admin", &admin.to_string()])
        .args(["--dns-server", &dns.addr().to_string()])
        .args(["--allow-range", "127.0.0.0/8"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let ready = || sluice_test_support::process::blocking_get(admin, "/ready").map(|r| r.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready().is_err() {
        assert!(Instant::now() < deadline, "admin never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the gateway exited"
    );
    assert_eq!(ready().ok(), Some(503), "not ready while port 80 is taken");
    let listeners = || {
        sluice_test_support::process::blocking_get(admin, "/listeners")
            .expect("/listeners")
            .1
    };
    let text = listeners();
    assert!(
        text.contains(&format!("80::{bind}:80::not_bound::")),
        "{text}"
    );
    drop(squatter);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready().ok() != Some(200) {
        assert!(Instant::now() < deadline, "port 80 was not bound once free");
        std::thread::sleep(Duration::from_millis(50));
    }
    let reply = http_get(SocketAddr::new(bind, 80), "a.partner.test", "/")
        .await
        .expect("request");
    assert_eq!(reply.0, 200);
    // The address actually bound, not a wildcard.
    assert!(
        listeners().contains(&format!("80::{bind}:80\n")),
        "{}",
        listeners()
    );
    let _ = child.kill();
    let out = child.wait_with_output().expect("reap");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot bind listener; retrying"), "{err}");
}

/// An emptied config file (a failed write, a ConfigMap being replaced) would close every
/// listener: it is held back, traffic keeps flowing, and it applies only once the files have
/// stayed so for the hold time.
#[tokio::test(flavor = "multi_thread")]
async fn an_emptied_config_is_held_back_before_it_closes_every_listener() {
    let PartnerHttp { upstream, dns, dir } = PartnerHttp::start("emptied").await;
    let file = dir.join("config.yaml");
    std::fs::write(&file, config(&["a.partner.test"], upstream.addr().ip())).expect("write");
    let (gw, bind) = gateway(
        &[file.display().to_string()],
        dns.addr(),
        &[("SLUICE_RELOAD_INTERVAL", "200ms")],
    )
    .await;
    let addr = SocketAddr::new(bind, 80);
    std::fs::write(&file, "").expect("truncate");
    let emptied = Instant::now();
    // Well inside the 5 s hold: still served.
    while emptied.elapsed() < Duration::from_secs(3) {
        let reply = http_get(addr, "a.partner.test", "/")
            .await
            .expect("still served");
        assert_eq!(reply.0, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gw.wait_for_stderr("holding it back", Duration::from_secs(1))
        .or_else(|_| gw.wait_for_log("holding it back", Duration::from_secs(1)))
        .expect("the hold is logged");
    // Past the hold, the files still empty: applied, the listener closes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(addr, "a.partner.test", "/").await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the empty configuration never applied"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(emptied.elapsed() >= Duration::from_secs(5));
}

/// A second SIGTERM during the drain exits at once, without waiting for the request in flight.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_exits_at_once() {
    // An upstream that never answers: the drain would wait its full timeout.
    let silent = tokio::net::TcpListener::bind(SocketAddr::new(free_loopback_addr(), 80))
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let dir = TempDir::new("second-term");
    let file = dir.join("config.yaml");
    std::fs::write(&file, config(&["hang.partner.test"], silent_addr.ip())).expect("write");
    let (mut gw, bind) = gateway(
        &[file.display().to_string()],
        dns.addr(),
        &[("SLUICE_DRAIN_TIMEOUT", "30s")],
    )
    .await;
    let addr = SocketAddr::new(bind, 80);
    let _in_flight = tokio::spawn(async move { http_get(addr, "hang.partner.test", "/").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("TERM").expect("first SIGTERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = Instant::now();
    gw.signal("TERM").expect("second SIGTERM");
    let status = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(10)))
        .await
        .expect("join")
        .expect("wait")
        .expect("exited");
    assert!(
        second.elapsed() < Duration::from_secs(3),
        "took {:?}",
        second.elapsed()
    );
    assert_eq!(status.code(), Some(1));
}

/// A kept-alive HTTP/1.1 connection does not keep the snapshot it began with: once a reload
/// is counted, the next request on it meets the new routes — a route removed is `404`, not
/// still served to whoever held a connection open — and the connection stays open for the
/// routes that remain.
#[tokio::test(flavor = "multi_thread")]
async fn kept_alive_connections_meet_the_new_routes_at_their_next_request() {
    let PartnerHttp { upstream, dns, dir } = PartnerHttp::start("keepalive").await;
    let file = dir.join("config.yaml");
    let ip = upstream.addr().ip();
    std::fs::write(&file, config(&["a.partner.test"], ip)).expect("write");
    let (gw, bind) = gateway(
        &[file.display().to_string()],
        dns.addr(),
        &[("SLUICE_RELOAD_INTERVAL", "1h")],
    )
    .await;
    let mut kept = tokio::net::TcpStream::connect(SocketAddr::new(bind, 80))
        .await
        .expect("connect");
    let mut ask = async |host: &str| -> String {
        let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n");
        kept.write_all(request.as_bytes()).await.expect("write");
        let mut buf = vec![0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(5), kept.read(&mut buf))
            .await
            .expect("a response within 5s")
            .expect("read");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let head = ask("a.partner.test").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let generation = |gw: &sluice_test_support::SluiceProcess| {
        let (_, stats) = gw.admin_get("/stats/prometheus").expect("stats");
        metric(&stats, "sluice_config_generation")
    };
    let before = generation(&gw);
    std::fs::write(&file, config(&["b.partner.test"], ip)).expect("write");
    gw.signal("HUP").expect("SIGHUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while generation(&gw) <= before {
        assert!(Instant::now() < deadline, "SIGHUP did not reload within 5s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let head = ask("a.partner.test").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let head = ask("b.partner.test").await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "on the same connection: {head}"
    );
}
