//! The deployment files stay true: the gateway's ConfigMap holds the guide's files unchanged
//! and passes `sluice analyze`; the Deployment's own arguments start a gateway that becomes
//! ready (paths and addresses moved to a temp dir and loopback); the Dockerfile builds what
//! CI builds. (Schema validation of the manifests runs in scripts/test with
//! kubernetes-validate --strict.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;

use common::{bin, start};
use sluice_test_support::{DnsServer, TempDir, free_loopback_addr};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo(file)).expect("read manifest");
    sluice_model::parse_yaml(&text).expect("valid YAML")
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name}"))
}

/// The ConfigMap's files, written out as the kubelet mounts them.
fn config_dir() -> TempDir {
    let docs = docs("deploy/kubernetes/config.yaml");
    let cm = find(&docs, "ConfigMap", "sluice-egress-config");
    let dir = TempDir::new("deploy-config");
    for (key, text) in cm["data"].as_object().expect("data") {
        let text = text.as_str().expect("string");
        let guide = std::fs::read_to_string(repo("testdata/guide").join(key)).expect("guide file");
        assert_eq!(text, guide, "{key} differs from testdata/guide/{key}");
        std::fs::write(dir.join(key), text).expect("write");
    }
    dir
}

#[test]
fn the_configmap_is_the_guides_files_and_analyzes_clean() {
    let dir = config_dir();
    let out = Command::new(bin())
        .arg("analyze")
        .arg(dir.path())
        .output()
        .expect("analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("Error ["), "{text}");
}

/// The Deployment's container arguments, unchanged but for where files and sockets live here.
#[tokio::test(flavor = "multi_thread")]
async fn the_deployments_arguments_start_a_ready_gateway() {
    let docs = docs("deploy/kubernetes/gateway.yaml");
    let dep = find(&docs, "Deployment", "sluice-egressgateway");
    let container = &dep["spec"]["template"]["spec"]["containers"][0];
    let config = config_dir();
    let ca = TempDir::new("deploy-ca");
    let identity = TempDir::new("deploy-identity");
    let run = |args: &[&str]| {
        let out = Command::new(bin()).args(args).output().expect("sluice ca");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ca_dir = ca.path().to_str().expect("utf-8");
    run(&["ca", "init", "--dir", ca_dir]);
    run(&[
        "ca",
        "issue",
        "--dir",
        ca_dir,
        "--namespace",
        "istio-system",
        "--service-account",
        "istio-egressgateway-service-account",
        "--out",
        identity.path().to_str().expect("utf-8"),
    ]);

    let bind = free_loopback_addr();
    let admin = SocketAddr::new(bind, 15000);
    let mut args: Vec<String> = Vec::new();
    for a in container["args"].as_array().expect("args") {
        let a = a.as_str().expect("string");
        args.push(match a.split_once('=') {
            Some(("--config", _)) => format!("--config={}", config.path().display()),
            Some(("--identity-dir", _)) => format!("--identity-dir={}", identity.path().display()),
            Some(("--admin", _)) => format!("--admin={admin}"),
            _ => a.to_owned(),
        });
    }
    let dns = DnsServer::start(Vec::<(&str, Vec<std::net::IpAddr>)>::new())
        .await
        .expect("dns");
    let mut cmd = Command::new(bin());
    cmd.args(&args)
        .args(["--bind", &bind.to_string()])
        .args(["--dns-server", &dns.addr().to_string()]);
    for e in container["env"].as_array().expect("env") {
        cmd.env(
            e["name"].as_str().expect("name"),
            e["value"].as_str().expect("value"),
        );
    }
    let gw = start(cmd, admin).await;
    assert_eq!(gw.admin_get("/ready").expect("ready").0, 200);
    // The readiness and liveness probes' paths answer.
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = container[probe]["httpGet"]["path"].as_str().expect("path");
        assert_eq!(gw.admin_get(path).expect("probe").0, 200, "{probe} {path}");
    }
}

/// The image builds the binary CI builds: the same cargo command in both.
#[test]
fn the_dockerfile_builds_what_ci_builds() {
    const BUILD: &str = "cargo build --release --locked -p sluice";
    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).expect("Dockerfile");
    let ci = std::fs::read_to_string(repo("scripts/test")).expect("scripts/test");
    assert!(dockerfile.contains(BUILD), "Dockerfile");
    assert!(ci.contains(BUILD), "scripts/test");
    assert!(
        dockerfile.contains("USER 65532"),
        "the image runs as non-root"
    );
}
