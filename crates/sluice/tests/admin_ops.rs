//! The operator's admin surface of a running `sluice gateway`: `/logging` (POST only, loopback
//! only, and only with `--admin-writable`) and `sluice proxy-config log`; Envoy's plain
//! `/stats`; the access log reopened when logrotate moves it; a listener that cannot be bound,
//! marked where an operator looks and counted in `sluice_listeners_unbound`. Loopback only.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use sluice_test_support::client::{http_get, raw_tcp};
use sluice_test_support::process::blocking_get;
use sluice_test_support::{DnsServer, HttpUpstream, SluiceProcess, TempDir, free_loopback_addr};

const DEADLINE: Duration = Duration::from_secs(10);

/// `method path` on the admin API → (status, body).
async fn admin(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let reply = raw_tcp(
        addr,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
        Duration::from_secs(5),
    )
    .await
    .expect("admin request");
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {reply:?}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

fn proxy_config(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin())
        .arg("proxy-config")
        .args(args)
        .output()
        .expect("proxy-config")
}

/// An HTTP route for `api.partner.test` to a fresh upstream, plus `extra` YAML.
struct Setup {
    gw: SluiceProcess,
    addr: SocketAddr,
    _upstream: HttpUpstream,
    _dns: DnsServer,
    dir: TempDir,
}

async fn setup(name: &str, extra: &str, env: &[(&str, &str)]) -> Setup {
    let PartnerHttp { upstream, dns, dir } = PartnerHttp::start(name).await;
    let file = dir.join("config.yaml");
    let extra = extra.replace("{dir}", &dir.path().display().to_string());
    std::fs::write(
        &file,
        format!(
            "{}{}{extra}",
            http_gateway("[api.partner.test]"),
            http_route("partner", "api.partner.test", upstream.addr().ip())
        ),
    )
    .expect("write config");
    let (gw, bind) = gateway(&[file.display().to_string()], dns.addr(), env).await;
    Setup {
        gw,
        addr: SocketAddr::new(bind, 80),
        _upstream: upstream,
        _dns: dns,
        dir,
    }
}

async fn get_ok(addr: SocketAddr) {
    let reply = http_get(addr, "api.partner.test", "/")
        .await
        .expect("request");
    assert_eq!(reply.0, 200);
}

/// Read-only by default: `GET /logging` shows the levels; `POST` is refused with the flag
/// that allows it named; a `GET` that would change something, and every other method, is 405.
/// With `--admin-writable` (here its environment form), `POST ?level=` and `?paths=` change
/// the running filter — a debug line appears at once — and `proxy-config log` reads and sets it.
#[tokio::test(flavor = "multi_thread")]
async fn logging_changes_the_level_only_by_post_and_only_when_writable() {
    let ro = setup("logging-ro", "", &[]).await;
    let a = ro.gw.admin();
    let (status, body) = admin(a, "GET", "/logging").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("active loggers:\n  default: info\n"),
        "{body}"
    );
    let (status, body) = admin(a, "POST", "/logging?level=debug").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--admin-writable"), "{body}");
    assert_eq!(admin(a, "GET", "/logging?level=debug").await.0, 405);
    for method in ["PUT", "DELETE", "PATCH"] {
        assert_eq!(
            admin(a, method, "/logging?level=debug").await.0,
            405,
            "{method}"
        );
    }
    assert_eq!(admin(a, "POST", "/stats").await.0, 405);
    let out = proxy_config(&["log", "--level", "debug", "--admin", &a.to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("403") && err.contains("--admin-writable"),
        "{err}"
    );
    // Nothing changed.
    assert!(
        admin(a, "GET", "/logging")
            .await
            .1
            .contains("default: info")
    );
    drop(ro);

    let rw = setup("logging-rw", "", &[("SLUICE_ADMIN_WRITABLE", "true")]).await;
    let a = rw.gw.admin();
    assert!(!rw.gw.stderr().contains("admin request"));
    let (status, body) = admin(a, "POST", "/logging?level=debug").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("default: debug"), "{body}");
    assert_eq!(admin(a, "GET", "/healthz").await.0, 200);
    rw.gw
        .wait_for_stderr("path=\"/healthz\"", DEADLINE)
        .expect("a debug line once the level is debug");
    for bad in ["level=loud", "paths=upstream", "a%20b=debug", "level"] {
        let (status, body) = admin(a, "POST", &format!("/logging?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) = admin(
        a,
        "POST",
        "/logging?level=warning&paths=upstream:trace,sluice_proxy%3A%3Atcp:critical",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for want in [
        "default: warning",
        "sluice_proxy::upstream: trace",
        "sluice_proxy::tcp: error",
    ] {
        assert!(body.contains(want), "{want}: {body}");
    }

    let out = proxy_config(&["log", "--admin", &a.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("default: warning"), "{text}");
    let out = proxy_config(&[
        "log",
        "--level",
        "info,http:debug",
        "--admin",
        &a.to_string(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("default: info"), "{text}");
    assert!(text.contains("sluice_proxy::http: debug"), "{text}");
    assert!(
        !text.contains("upstream"),
        "level= resets every logger: {text}"
    );
    let out = proxy_config(&["log", "-o", "json", "--admin", &a.to_string()]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["default"], "info");
}

/// Whatever the bind address, only a loopback peer may change the level: the admin API on
/// 0.0.0.0, `--admin-writable`, in a network namespace of its own (`unshare -n`) where `lo`
/// also carries 10.99.0.1 — a POST from 127.0.0.1 is accepted, one from 10.99.0.1 is 403,
/// and a GET from there is still answered.
#[test]
fn only_loopback_peers_may_post_logging() {
    let config = [guide("egress-gateway.yaml"), guide("mesh-config.yaml")];
    let script = r#"
set -u
ip link set lo up
ip addr add 10.99.0.1/32 dev lo
"$0" gateway -c "$1" -c "$2" --bind 127.0.0.1 --admin 0.0.0.0:15000 --admin-writable >/dev/null 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  if curl -s -o /dev/null --max-time 1 http://127.0.0.1:15000/ready; then break; fi
  sleep 0.1
done
echo "loopback post: $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -X POST 'http://127.0.0.1:15000/logging?level=debug')"
echo "other post: $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --interface 10.99.0.1 -X POST 'http://10.99.0.1:15000/logging?level=info')"
echo "other get: $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --interface 10.99.0.1 'http://10.99.0.1:15000/logging')"
echo "level: $(curl -s --max-time 2 http://127.0.0.1:15000/logging | grep default)"
kill "$pid"
wait "$pid" 2>/dev/null
exit 0
"#;
    let out = std::process::Command::new("unshare")
        .args(["-n", "sh", "-c", script])
        .arg(bin())
        .args(&config)
        .output()
        .expect("unshare -n (root, util-linux, iproute2 and curl are needed)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("loopback post: 200"), "{text}");
    assert!(text.contains("other post: 403"), "{text}");
    assert!(text.contains("other get: 200"), "{text}");
    assert!(text.contains("level:   default: debug"), "{text}");
}

/// `/stats` is Envoy's plain form of the registry `/stats/prometheus` encodes: the same
/// counts, histograms as quantiles with their count and sum, `?filter=` a regex on names.
#[tokio::test(flavor = "multi_thread")]
async fn stats_in_envoy_form_agree_with_prometheus() {
    let s = setup("stats", "", &[]).await;
    for _ in 0..3 {
        get_ok(s.addr).await;
    }
    let a = s.gw.admin();
    // The request metrics are recorded when the exchange ends; wait until all three are in.
    let deadline = Instant::now() + DEADLINE;
    let prom = loop {
        let (_, prom) = admin(a, "GET", "/stats/prometheus").await;
        if metric(&prom, "istio_requests_total") >= 3.0 || Instant::now() > deadline {
            break prom;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, plain) = admin(a, "GET", "/stats").await;
    assert_eq!(status, 200, "{plain}");
    assert!(plain.contains("sluice_config_generation: 1\n"), "{plain}");
    let sum = |prefix: &str| -> f64 {
        plain
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(": ").next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        sum("istio_requests_total{"),
        metric(&prom, "istio_requests_total")
    );
    assert_eq!(sum("istio_requests_total{"), 3.0, "{plain}");
    assert_eq!(
        sum("istio_request_duration_milliseconds_count{"),
        3.0,
        "{plain}"
    );
    let histogram = plain
        .lines()
        .find(|l| l.starts_with("istio_request_duration_milliseconds{"))
        .unwrap_or_else(|| panic!("no duration histogram: {plain}"));
    assert!(
        histogram.contains(": P0(nan,") && histogram.contains(" P99.9(nan,"),
        "{histogram}"
    );
    assert!(
        !plain.contains("# ") && !plain.contains("_bucket"),
        "{plain}"
    );

    let (status, filtered) = admin(a, "GET", "/stats?filter=%5Esluice_config_gen").await;
    assert_eq!(status, 200);
    assert_eq!(filtered, "sluice_config_generation: 1\n");
    assert_eq!(admin(a, "GET", "/stats?filter=(").await.0, 400);
    let (status, same) = admin(a, "GET", "/stats?format=prometheus").await;
    assert_eq!(status, 200);
    assert!(same.contains("# TYPE istio_requests counter"), "{same}");
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Polls until `f` holds; fails with `what` at the deadline.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// logrotate's move-and-create: the writer notices the new inode (checked every second) and
/// reopens its path, so lines go to the new file; the lines written before it noticed are in
/// the moved one — none is lost. With SIGUSR1 (`postrotate`) the reopen is at once: every line
/// after it is in the new file. copytruncate needs neither: lines are appended at the new end.
#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_is_reopened_after_rotation() {
    let mesh = r#"---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {name: mesh, namespace: istio-system}
spec:
  meshConfig:
    accessLogFile: "{dir}/access.log"
    accessLogFormat: "%RESPONSE_CODE% %REQ(:PATH)%\n"
"#;
    let s = setup("log-rotate", mesh, &[]).await;
    let log = s.dir.join("access.log");
    for _ in 0..5 {
        get_ok(s.addr).await;
    }
    until("5 lines written", || lines(&log) == 5).await;

    // Move and create (no signal): requests until a line lands in a new file at the path.
    let first = s.dir.join("access.log.1");
    std::fs::rename(&log, &first).expect("rotate");
    let mut sent = 5;
    let deadline = Instant::now() + DEADLINE;
    while lines(&log) == 0 {
        assert!(
            Instant::now() < deadline,
            "no new access.log: {}",
            s.gw.stderr()
        );
        get_ok(s.addr).await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until("every line in one file or the other", || {
        lines(&first) + lines(&log) == sent
    })
    .await;
    for _ in 0..3 {
        get_ok(s.addr).await;
    }
    sent += 3;
    until("the next lines in the new file", || {
        lines(&first) + lines(&log) == sent
    })
    .await;
    let before = lines(&first);

    // Move, then SIGUSR1: the path is reopened at once; every later line is in the new file.
    let second = s.dir.join("access.log.2");
    std::fs::rename(&log, &second).expect("rotate");
    let moved = lines(&second);
    s.gw.signal("USR1").expect("SIGUSR1");
    until("access.log recreated on SIGUSR1", || log.exists()).await;
    for _ in 0..4 {
        get_ok(s.addr).await;
    }
    until("4 lines in the reopened file", || lines(&log) == 4).await;
    assert_eq!(lines(&second), moved, "a line went to the moved file");
    assert_eq!(lines(&first), before);

    // copytruncate: copy, truncate in place; lines continue at the start, no hole of NULs.
    std::fs::copy(&log, s.dir.join("access.log.3")).expect("copy");
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .expect("truncate");
    get_ok(s.addr).await;
    until("1 line after truncation", || lines(&log) == 1).await;
    let bytes = std::fs::read(&log).expect("read");
    assert!(!bytes.contains(&0), "{bytes:?}");
    assert!(
        s.gw.stderr().contains("access log reopened"),
        "{}",
        s.gw.stderr()
    );
    // SIGUSR1 did not end the process.
    assert_eq!(s.gw.admin_get("/ready").map(|r| r.0).ok(), Some(200));
}

/// A port held by another socket: the gateway keeps running, `/listeners` (text and JSON),
/// `proxy-config listeners` (STATE `RETRYING (<error>)`) and `sluice_listeners_unbound` say
/// so; once the port is free it is bound, `BOUND` on the `--bind` address, and the gauge is 0.
#[tokio::test(flavor = "multi_thread")]
async fn an_unbound_listener_is_marked_and_counted_until_it_binds() {
    let PartnerHttp { upstream, dns, dir } = PartnerHttp::start("unbound").await;
    let file = dir.join("config.yaml");
    std::fs::write(
        &file,
        format!(
            "{}{}",
            http_gateway("[api.partner.test]"),
            http_route("partner", "api.partner.test", upstream.addr().ip())
        ),
    )
    .expect("write");
    let bind = free_loopback_addr();
    let squatter = std::net::TcpListener::bind(SocketAddr::new(bind, 80)).expect("hold port 80");
    let admin_addr = SocketAddr::new(bind, 15000);
    let child = std::process::Command::new(bin())
        .args(["gateway", "-c", &file.display().to_string()])
        .args([
            "--bind",
            &bind.to_string(),
            "--admin",
            &admin_addr.to_string(),
        ])
        .args(["--dns-server", &dns.addr().to_string()])
        .args(["--allow-range", "127.0.0.0/8"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    // Reaped however the test ends.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(child);
    let deadline = Instant::now() + DEADLINE;
    while blocking_get(admin_addr, "/ready").is_err() {
        assert!(
            child.0.try_wait().expect("wait").is_none(),
            "the gateway exited"
        );
        assert!(Instant::now() < deadline, "admin never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let get = |path: &str| blocking_get(admin_addr, path).expect(path).1;
    let gauge = |stats: &str| metric(stats, "sluice_listeners_unbound");
    assert_eq!(gauge(&get("/stats/prometheus")), 1.0);
    assert!(get("/stats").contains("sluice_listeners_unbound: 1\n"));
    let json: serde_json::Value =
        serde_json::from_str(&get("/listeners?format=json")).expect("json");
    let l80 = json
        .as_array()
        .and_then(|a| a.iter().find(|l| l["name"] == "80"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(l80["bound"], false, "{json}");
    assert!(
        l80["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{json}"
    );

    let row = |out: &std::process::Output| -> String {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("80"))
            .unwrap_or_default()
            .to_owned()
    };
    let out = proxy_config(&["listeners", "--admin", &admin_addr.to_string()]);
    assert!(out.status.success());
    let r = row(&out);
    assert!(r.starts_with(&bind.to_string()), "{r}");
    assert!(r.contains("RETRYING (") && r.contains("in use"), "{r}");
    let out = proxy_config(&[
        "listeners",
        "-o",
        "json",
        "--admin",
        &admin_addr.to_string(),
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json[0]["state"], "RETRYING", "{json}");

    drop(squatter);
    let deadline = Instant::now() + DEADLINE;
    while blocking_get(admin_addr, "/ready").map(|r| r.0).ok() != Some(200) {
        assert!(Instant::now() < deadline, "port 80 was not bound once free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gauge(&get("/stats/prometheus")), 0.0);
    let out = proxy_config(&["listeners", "--admin", &admin_addr.to_string()]);
    let r = row(&out);
    assert!(
        r.starts_with(&bind.to_string()) && r.ends_with("BOUND"),
        "{r}"
    );
    get_ok(SocketAddr::new(bind, 80)).await;
    drop(child);
}
