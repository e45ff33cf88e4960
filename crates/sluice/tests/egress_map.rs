//! The egress map (`/ui`, `/api/map`, `/api/decisions`, `/api/config`, `sluice map`) end to
//! end: the guide's production setup (the gateway with its SVID, sidecars with theirs, mesh
//! mTLS between them) plus Step 5's TLS origination and the guide's local rate limit; allowed,
//! denied and rate-limited traffic with curl and an HTTP client; then the page in headless
//! Chromium (Debian's `chromium`, driven by playwright-core through `tests/ui/map.mjs`) at a
//! desktop and a phone width. A second gateway with 1,000 edges gives the page's load time and
//! the `sluice map` merge. Every address is loopback; every process is stopped by its PID.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{
    ExternalHttps, Mesh, bin, gateway, gateway_service, guide, http_gateway, http_route, https_via,
    sidecar,
};

use serde_json::Value;
use sluice_test_support::client::http_get;
use sluice_test_support::{HttpUpstream, SluiceProcess, free_loopback_addr};

const PAYMENT_SERVICE: &str = "spiffe://cluster.local/ns/production/sa/payment-service";
const REPORTING: &str = "spiffe://cluster.local/ns/production/sa/reporting";

/// Besides the guide's `payment-api-authz` (ALLOW payment-service): a DENY naming reporting,
/// so its denial names a policy and rule; and an ALLOW for Step 5's host, which the production
/// setup's ALLOW policy would otherwise deny.
const POLICIES: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-reporting, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/production/sa/reporting]}}]
    to: [{operation: {hosts: [api.payment-provider.com]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-external-service, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: ALLOW
  rules:
  - to: [{operation: {hosts: [api.external-service.com], ports: ["80"]}}]
"#;

/// Cargo's target directory (the tests' `target/tmp` is inside it).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .to_path_buf()
}

/// playwright-core under `target/ui-node` (what scripts/test installs), installed with npm
/// when missing. No npm or no chromium fails the test: the page would go untested.
fn ui_node_modules() -> PathBuf {
    let prefix = target_dir().join("ui-node");
    let modules = prefix.join("node_modules");
    if !modules.join("playwright-core").is_dir() {
        let status = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg("playwright-core")
            .status()
            .expect("npm is needed for the browser test (scripts/test installs nodejs and npm)");
        assert!(status.success(), "npm install playwright-core failed");
    }
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is needed for the browser test (scripts/test installs it)"
    );
    modules
}

/// Runs the page driver (`tests/ui/map.mjs MODE URL DIR`) and returns what it printed. The
/// driver is stopped by its PID if it outlives its deadline.
async fn drive(mode: &str, url: &str) -> Value {
    let modules = ui_node_modules();
    let artifacts = target_dir().join("ui-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/map.mjs");
    // Its output is read while it runs (a pipe left unread fills at 64 KiB and stalls the
    // driver); killed on drop, so a driver past its deadline is stopped.
    let child = tokio::process::Command::new("node")
        .arg(script)
        .args([mode, url])
        .arg(&artifacts)
        .env("UI_NODE_MODULES", &modules)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node is needed for the browser test (scripts/test installs nodejs)");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the page driver ran over 60 s")
        .expect("driver output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "driver failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// GET on an admin API, parsed as JSON.
async fn api(process: &SluiceProcess, path: &str) -> Value {
    let admin = process.admin();
    let path = path.to_owned();
    let (status, body) = tokio::task::spawn_blocking(move || {
        sluice_test_support::process::blocking_get(admin, &path)
    })
    .await
    .expect("join")
    .expect("admin API");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn has_edge(map: &Value, source: &str, destination: &str, outcome: &str) -> Option<u64> {
    map["edges"]
        .as_array()?
        .iter()
        .find(|e| {
            e["source"] == source && e["destination"] == destination && e["outcome"] == outcome
        })
        .and_then(|e| e["total"].as_u64())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_egress_map_shows_who_reached_what_and_what_was_refused() {
    let mesh = Mesh::new();
    let ext = ExternalHttps::start(
        "egress-map-ca",
        "egress-map",
        [
            ("api.payment-provider.com", "payment-provider"),
            ("api.external-service.com", "external-stand-in"),
        ],
    )
    .await;
    let (dir, web_ca_file, dns) = (&ext.dir, &ext.ca_file, &ext.dns);

    let gw_ip = free_loopback_addr();
    let mesh_config = vec![
        guide("production-egress-setup.yaml"),
        gateway_service(dir, gw_ip, &[(443, "tls", "TLS")]),
    ];
    std::fs::write(dir.join("policies.yaml"), POLICIES).expect("write");
    let mut config = mesh_config.clone();
    config.extend(
        [
            "gateway-tls-origination.yaml",
            "virtualservice-tls-origination.yaml",
            "destinationrule-tls-origination.yaml",
            "serviceentry-tls-origination.yaml",
            "envoyfilter-egress-ratelimit.yaml",
        ]
        .map(guide),
    );
    config.push(dir.join("policies.yaml").display().to_string());
    let gw = ext.mesh_gateway(&mesh, gw_ip, &config, true).await;
    let allowed_id = mesh.svid("production", "payment-service");
    let denied_id = mesh.svid("production", "reporting");
    let (_s1, p1) = sidecar(
        &mesh_config,
        "production",
        "payment-service",
        dns.addr(),
        Some(&allowed_id),
    )
    .await;
    let (_s2, p2) = sidecar(
        &mesh_config,
        "production",
        "reporting",
        dns.addr(),
        Some(&denied_id),
    )
    .await;

    // Allowed and denied, through the sidecars (TLS passed through inside mesh mTLS).
    let url = "https://api.payment-provider.com/v1/pay";
    https_via(p1, web_ca_file, url)
        .await
        .expect("payment-service is allowed");
    assert!(
        https_via(p2, web_ca_file, url).await.is_err(),
        "reporting is denied"
    );
    // Rate limited: the guide's bucket holds 100.
    let http = SocketAddr::new(gw_ip, 80);
    let replies = futures_util::future::join_all(
        (0..130).map(|_| http_get(http, "api.external-service.com", "/data")),
    )
    .await;
    let count = |status: u16| {
        replies
            .iter()
            .filter(|r| matches!(r, Ok((s, _, _)) if *s == status))
            .count()
    };
    let (passed, limited) = (count(200), count(429));
    assert!(limited > 0, "the burst is rate limited");
    assert_eq!(passed + limited, 130, "only 200 and 429");

    // The JSON API (the records are finished as the connections close: ask until they are in).
    let deadline = Instant::now() + Duration::from_secs(10);
    let map = loop {
        let map = api(&gw, "/api/map").await;
        let complete = has_edge(&map, PAYMENT_SERVICE, "api.payment-provider.com", "allowed")
            .is_some()
            && has_edge(&map, REPORTING, "api.payment-provider.com", "denied").is_some();
        if complete || Instant::now() > deadline {
            break map;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(map["gateway"]["role"], "gateway");
    assert_eq!(map["gateway"]["workload"], "istio-egressgateway");
    assert!(
        map["gateway"]["identity"]
            .as_str()
            .is_some_and(|i| i.ends_with("/sa/istio-egressgateway-service-account")),
        "{}",
        map["gateway"]
    );
    assert!(
        has_edge(&map, PAYMENT_SERVICE, "api.payment-provider.com", "allowed").is_some(),
        "{map}"
    );
    assert!(
        has_edge(&map, REPORTING, "api.payment-provider.com", "denied").is_some(),
        "{map}"
    );
    // Every request is counted: none is lost between concurrent records.
    let ok = has_edge(&map, "unidentified", "api.external-service.com", "allowed");
    assert_eq!(ok, Some(passed as u64), "{map}");
    assert_eq!(map["missed"], 0, "{map}");
    let rl = has_edge(
        &map,
        "unidentified",
        "api.external-service.com",
        "rate_limited",
    );
    assert_eq!(rl, Some(limited as u64), "{map}");
    let decisions = api(&gw, "/api/decisions").await;
    let denied = decisions["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .find(|d| d["outcome"] == "denied")
        .expect("the denied connection is in the table")
        .clone();
    assert_eq!(denied["source"], REPORTING);
    assert_eq!(denied["policy"]["namespace"], "istio-system");
    assert_eq!(denied["policy"]["name"], "deny-reporting");
    assert_eq!(denied["policy"]["rule"], 0);
    // An allowed call names the ALLOW rule that let it through (the guide's policy).
    let allowed = decisions["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .find(|d| d["outcome"] == "allowed" && d["source"] == PAYMENT_SERVICE)
        .expect("the allowed connection is in the table")
        .clone();
    assert_eq!(allowed["policy"]["namespace"], "istio-system", "{allowed}");
    assert_eq!(allowed["policy"]["name"], "payment-api-authz", "{allowed}");
    assert_eq!(allowed["policy"]["rule"], 0, "{allowed}");
    let next = decisions["next"].as_u64().expect("next");
    let later = api(&gw, &format!("/api/decisions?since={next}")).await;
    assert_eq!(later["decisions"].as_array().map(Vec::len), Some(0));
    let cfg = api(&gw, "/api/config").await;
    let host = cfg["config"]["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .find(|h| h["host"] == "api.payment-provider.com")
        .expect("the registered host")
        .clone();
    assert!(
        host["at"]
            .as_str()
            .is_some_and(|a| a.contains("production-egress-setup.yaml:"))
    );

    // The page, in Chromium.
    let url = format!("http://{}/ui", gw.admin());
    let seen = drive("check", &url).await;
    assert_eq!(seen["errors"], Value::Array(vec![]), "{seen}");
    let wide = &seen["wide"];
    assert!(
        wide["who"]
            .as_str()
            .is_some_and(|w| w.contains("istio-egressgateway")),
        "{wide}"
    );
    assert!(
        wide["scope"]
            .as_str()
            .is_some_and(|s| s.contains("own traffic only"))
    );
    let edges = wide["edges"].as_array().expect("edges");
    let drawn = |src: &str, dst: &str, outcome: &str| {
        edges
            .iter()
            .find(|e| e["source"] == src && e["destination"] == dst && e["outcome"] == outcome)
            .cloned()
    };
    let expected = [
        (PAYMENT_SERVICE, "api.payment-provider.com", "allowed"),
        (REPORTING, "api.payment-provider.com", "denied"),
        ("unidentified", "api.external-service.com", "allowed"),
        ("unidentified", "api.external-service.com", "rate_limited"),
    ];
    let mut colors = Vec::new();
    for (src, dst, outcome) in expected {
        let e = drawn(src, dst, outcome)
            .unwrap_or_else(|| panic!("no {outcome} edge {src} → {dst}: {edges:?}"));
        assert!(
            e["rate"].as_str().is_some_and(|r| r.ends_with("/min")),
            "{e}"
        );
        colors.push(e["color"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(edges.len(), expected.len(), "{edges:?}");
    colors.dedup();
    assert_eq!(
        colors.len(),
        4,
        "each outcome has its own colour: {colors:?}"
    );
    assert!(!wide["edgeLabels"].as_array().expect("labels").is_empty());
    let denied_row = wide["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["outcome"] == "denied")
        .expect("the denied call is in the table")
        .clone();
    assert_eq!(denied_row["source"], REPORTING);
    let decided = denied_row["cells"][5].as_str().unwrap_or_default();
    assert!(
        decided.contains("istio-system/deny-reporting rule 0")
            && decided.contains("policies.yaml:"),
        "{denied_row}"
    );
    let allowed_row = wide["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["outcome"] == "allowed" && r["source"] == PAYMENT_SERVICE)
        .expect("the allowed call is in the table")
        .clone();
    let decided = allowed_row["cells"][5].as_str().unwrap_or_default();
    assert!(
        decided.contains("ALLOW istio-system/payment-api-authz rule 0")
            && decided.contains("production-egress-setup.yaml:"),
        "the ALLOW rule that let it through: {allowed_row}"
    );
    let limited_row = wide["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["outcome"] == "rate_limited")
        .expect("a rate-limited call is in the table")
        .clone();
    assert!(
        limited_row["cells"][5]
            .as_str()
            .is_some_and(|c| c.contains("local_rate_limited")),
        "the rate limit decided it, not the ALLOW rule before it: {limited_row}"
    );
    let filtered = seen["filtered"].as_array().expect("filtered");
    assert!(
        !filtered.is_empty() && filtered.iter().all(|o| o == "denied"),
        "{filtered:?}"
    );
    assert!(
        wide["hosts"].as_array().expect("hosts").iter().any(|h| h
            .as_str()
            .is_some_and(|h| h.contains("api.payment-provider.com")
                && h.contains("payment-api-authz")
                && h.contains("production-egress-setup.yaml:"))),
        "{}",
        wide["hosts"]
    );
    for (name, view) in [("1280x800", wide), ("420x800", &seen["narrow"])] {
        assert!(
            view["overflow"]["document"].as_i64() <= Some(0),
            "{name}: {}",
            view["overflow"]
        );
        assert!(
            view["overflow"]["main"].as_i64() <= Some(0),
            "{name}: {}",
            view["overflow"]
        );
        for (what, shown) in view["visible"].as_object().expect("visible") {
            assert_eq!(shown, &Value::Bool(true), "{name}: {what} is not visible");
        }
        assert_eq!(view["edges"].as_array().map(Vec::len), Some(4), "{name}");
    }
    assert!(target_dir().join("ui-artifacts/egress-map.png").is_file());

    // A second gateway with 1,000 edges: the page's load time, and `sluice map` merging both.
    let web = HttpUpstream::start(SocketAddr::new(free_loopback_addr(), 80), "web")
        .await
        .expect("web");
    std::fs::write(
        dir.join("second.yaml"),
        format!(
            "{}---\n{}",
            http_gateway("[\"*\"]"),
            http_route("web", "web.example.com", web.addr().ip())
        ),
    )
    .expect("write");
    let (gw2, ip2) = gateway(
        &[dir.join("second.yaml").display().to_string()],
        dns.addr(),
        &[],
    )
    .await;
    let addr2 = SocketAddr::new(ip2, 80);
    for batch in 0..10 {
        let replies = futures_util::future::join_all((0..100).map(|i| {
            let host = format!("h{}.example.com", batch * 100 + i);
            async move { http_get(addr2, &host, "/").await }
        }))
        .await;
        assert!(replies.iter().all(|r| matches!(r, Ok((404, _, _)))));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let map = api(&gw2, "/api/map").await;
        let n = map["edges"].as_array().map_or(0, Vec::len);
        if n >= 1000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} edges, {} decisions, {} missed",
            map["decisions_total"],
            map["missed"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bench = drive("bench", &format!("http://{}/ui", gw2.admin())).await;
    let runs = bench["runs"].as_array().expect("runs");
    for r in runs {
        assert!(r["edges"].as_u64() >= Some(1000), "{r}");
        // A sanity bound only; the measured number goes to BENCHMARKS.md.
        assert!(r["rendered_ms"].as_u64() < Some(10_000), "{r}");
    }
    println!("egress map with 1,000 edges, navigation start to rendered map: {runs:?}");

    let out = Command::new(bin())
        .args(["map", "-o", "json", "--admin"])
        .arg(gw.admin().to_string())
        .args(["--admin"])
        .arg(gw2.admin().to_string())
        .output()
        .expect("sluice map");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(merged["gateways"].as_array().map(Vec::len), Some(2));
    let merged_edges = merged["edges"].as_array().expect("edges");
    assert!(merged_edges.len() >= 1004, "{}", merged_edges.len());
    let seen_by = |dst: &str, outcome: &str| {
        merged_edges
            .iter()
            .find(|e| e["destination"] == dst && e["outcome"] == outcome)
            .map(|e| e["gateways"].clone())
    };
    assert_eq!(
        seen_by("api.payment-provider.com", "denied"),
        Some(serde_json::json!([format!(
            "istio-egressgateway@{}",
            gw.admin()
        )]))
    );
    assert_eq!(
        seen_by("h7.example.com", "refused"),
        Some(serde_json::json!([format!(
            "istio-egressgateway@{}",
            gw2.admin()
        )]))
    );
    let text = Command::new(bin())
        .args(["map", "--admin"])
        .arg(gw.admin().to_string())
        .args(["--admin"])
        .arg(gw2.admin().to_string())
        .output()
        .expect("sluice map");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("SEEN BY"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(REPORTING) && l.contains("denied")),
        "{text}"
    );
}
