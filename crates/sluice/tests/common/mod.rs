//! What the end-to-end tests of the `sluice` binary share: the guide's files, the binary, and
//! starting a gateway process on its own loopback address.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use sluice_test_support::{SluiceProcess, free_loopback_addr};

/// A file of the guide, unchanged.
pub fn guide(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/guide")
        .join(file)
        .display()
        .to_string()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

/// Starts `cmd` and waits (bounded) until its admin API on `admin` is ready.
pub async fn start(cmd: std::process::Command, admin: SocketAddr) -> SluiceProcess {
    tokio::task::spawn_blocking(move || SluiceProcess::spawn_command(cmd, admin))
        .await
        .expect("join")
        .expect("sluice starts and becomes ready")
}

/// `sluice gateway` bound on `bind` (admin on port 15000 of it), with the config files, the
/// DNS server, an optional identity directory and extra environment.
pub async fn gateway_at(
    bind: IpAddr,
    config: &[String],
    dns: SocketAddr,
    identity: Option<&str>,
    env: &[(&str, &str)],
) -> SluiceProcess {
    let admin = SocketAddr::new(bind, 15000);
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("gateway");
    for c in config {
        cmd.args(["-c", c]);
    }
    cmd.args(["--bind", &bind.to_string(), "--admin", &admin.to_string()]);
    cmd.args(["--dns-server", &dns.to_string()]);
    // The tests' "external" services live on loopback, which the IP guard denies by default.
    cmd.args(["--allow-range", "127.0.0.0/8"]);
    if let Some(id) = identity {
        cmd.args(["--identity-dir", id]);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    start(cmd, admin).await
}

/// [`gateway_at`] on a fresh loopback address, returned with the process.
pub async fn gateway(
    config: &[String],
    dns: SocketAddr,
    env: &[(&str, &str)],
) -> (SluiceProcess, IpAddr) {
    let bind = free_loopback_addr();
    (gateway_at(bind, config, dns, None, env).await, bind)
}

/// Istio YAML routing plain HTTP for `host` (port 80) through the `egress` Gateway to
/// `upstream`: a STATIC ServiceEntry and a VirtualService, named `{name}`.
pub fn http_route(name: &str, host: &str, upstream: IpAddr) -> String {
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: istio-system}}
spec:
  hosts: ["{host}"]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: "{upstream}"}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: istio-system}}
spec:
  hosts: ["{host}"]
  gateways: [egress]
  http:
  - route: [{{destination: {{host: "{host}", port: {{number: 80}}}}}}]
"#
    )
}

/// The `egress` Gateway (`istio: egressgateway`) with an HTTP server on port 80 for `hosts`
/// (a YAML flow list).
pub fn http_gateway(hosts: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: {hosts}
"#
    )
}

/// The sum of the samples in Prometheus text `stats` whose line starts with `name` (a family
/// name, or a name with its labels).
pub fn metric(stats: &str, name: &str) -> f64 {
    stats
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
