//! What the end-to-end tests of the `sluice` binary share: the guide's files, the binary, and
//! starting a gateway process on its own loopback address.

#![allow(dead_code)]

pub mod squid;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_identity::{Ca, Validity};
use sluice_test_support::client::curl;
use sluice_test_support::{
    DnsServer, HttpUpstream, HttpsUpstream, SluiceProcess, TempDir, TestCa, UpstreamOptions,
    free_loopback_addr,
};

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
    let mut cmd = std::process::Command::new(bin());
    cmd.args(gateway_args(bind, config, dns, identity));
    for (k, v) in env {
        cmd.env(k, v);
    }
    start(cmd, SocketAddr::new(bind, 15000)).await
}

/// The arguments [`gateway_at`] gives `sluice` (`gateway` first), for a test that starts the
/// binary through a wrapper (a mount namespace of its own).
pub fn gateway_args(
    bind: IpAddr,
    config: &[String],
    dns: SocketAddr,
    identity: Option<&str>,
) -> Vec<String> {
    let admin = SocketAddr::new(bind, 15000);
    let mut cmd: Vec<String> = vec!["gateway".into()];
    for c in config {
        cmd.extend(["-c".into(), c.clone()]);
    }
    cmd.extend([
        "--bind".into(),
        bind.to_string(),
        "--admin".into(),
        admin.to_string(),
    ]);
    cmd.extend(["--dns-server".into(), dns.to_string()]);
    // The tests' "external" services live on loopback, which the IP guard denies by default.
    cmd.extend(["--allow-range".into(), "127.0.0.0/8".into()]);
    if let Some(id) = identity {
        cmd.extend(["--identity-dir".into(), id.into()]);
    }
    cmd
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

/// A mesh CA and a directory of SVIDs, one per workload.
pub struct Mesh {
    dir: TempDir,
    ca: Ca,
}

impl Mesh {
    pub fn new() -> Mesh {
        let dir = TempDir::new("mesh");
        let ca = Ca::init(&dir.join("ca"), "cluster.local", false).expect("mesh CA");
        Mesh { dir, ca }
    }

    /// Writes the SVID of ns/sa and returns its directory.
    pub fn svid(&self, ns: &str, sa: &str) -> String {
        let out = self.dir.join(format!("{ns}-{sa}"));
        self.ca
            .issue(ns, sa, Validity::from_now(Duration::from_secs(3600)))
            .expect("issue")
            .write(&out)
            .expect("write svid");
        out.display().to_string()
    }
}

/// Starts a sidecar for ns/sa; returns it with its explicit-proxy address.
pub async fn sidecar(
    config: &[String],
    ns: &str,
    sa: &str,
    dns: SocketAddr,
    identity: Option<&str>,
) -> (SluiceProcess, SocketAddr) {
    let ip = free_loopback_addr();
    let listen = SocketAddr::new(ip, 15001);
    let admin = SocketAddr::new(ip, 15000);
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("sidecar");
    for c in config {
        cmd.args(["-c", c]);
    }
    cmd.args(["--namespace", ns, "--service-account", sa]);
    cmd.args([
        "--listen",
        &listen.to_string(),
        "--admin",
        &admin.to_string(),
    ]);
    cmd.args(["--dns-server", &dns.to_string()]);
    cmd.args(["--allow-range", "127.0.0.0/8"]);
    if let Some(id) = identity {
        cmd.args(["--identity-dir", id]);
    }
    (start(cmd, admin).await, listen)
}

/// `curl -x sidecar https://host/` with the test CA; Some(body) when it answered 2xx.
pub async fn https_via(proxy: SocketAddr, ca: &Path, url: &str) -> Result<String, String> {
    let out = curl(&[
        "-sS",
        "--max-time",
        "10",
        "-x",
        &format!("http://{proxy}"),
        "--cacert",
        &ca.display().to_string(),
        "--fail",
        url,
    ])
    .await
    .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "curl exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The egress gateway's service, outside Kubernetes: a MESH_INTERNAL ServiceEntry with STATIC
/// endpoints (DESIGN.md), and mesh mTLS toward it from every namespace.
pub fn gateway_service(dir: &TempDir, gateway_ip: IpAddr, ports: &[(u16, &str, &str)]) -> String {
    let ports: String = ports
        .iter()
        .map(|(n, name, proto)| format!("  - {{number: {n}, name: {name}, protocol: {proto}}}\n"))
        .collect();
    let path = dir.join("gateway-service.yaml");
    std::fs::write(
        &path,
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
{ports}  endpoints:
  - address: {gateway_ip}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egressgateway-mtls, namespace: istio-system}}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
"#
        ),
    )
    .expect("write");
    path.display().to_string()
}

/// Stand-ins for external HTTPS hosts: a test CA (its certificate written into a fresh
/// directory), one HTTPS upstream per host on port 443 with the CA's certificate for that host,
/// and a DNS server resolving each host to its stand-in. Bind the fields to named variables
/// (not `_` or `..`), so that nothing is dropped early.
pub struct ExternalHttps<const N: usize> {
    pub ca: TestCa,
    pub dir: TempDir,
    pub ca_file: PathBuf,
    pub upstreams: [HttpsUpstream; N],
    pub dns: DnsServer,
}

impl<const N: usize> ExternalHttps<N> {
    /// `hosts`: (host name, stand-in name), each on a fresh loopback address; the CA is named
    /// `ca_name`, the directory `dir`.
    pub async fn start(ca_name: &str, dir: &str, hosts: [(&str, &str); N]) -> Self {
        let hosts = hosts.map(|(host, name)| (host, name, free_loopback_addr()));
        Self::start_with(ca_name, dir, hosts, &[]).await
    }

    /// [`ExternalHttps::start`] with each stand-in on the given address, and `extra` DNS
    /// records (name, address) for servers the test starts itself.
    pub async fn start_with(
        ca_name: &str,
        dir: &str,
        hosts: [(&str, &str, IpAddr); N],
        extra: &[(&str, IpAddr)],
    ) -> Self {
        let ca = TestCa::new(ca_name);
        let dir = TempDir::new(dir);
        let ca_file = ca.write_ca_pem(dir.path());
        let mut upstreams = Vec::with_capacity(N);
        for (host, name, ip) in hosts {
            let upstream = HttpsUpstream::start(
                SocketAddr::new(ip, 443),
                &ca.server_cert(&[host]),
                name,
                UpstreamOptions::default(),
            )
            .await
            .expect(name);
            upstreams.push(upstream);
        }
        let records = hosts
            .iter()
            .map(|(host, _, ip)| (*host, vec![*ip]))
            .chain(extra.iter().map(|(host, ip)| (*host, vec![*ip])));
        let dns = DnsServer::start(records).await.expect("dns");
        let Ok(upstreams) = <[HttpsUpstream; N]>::try_from(upstreams) else {
            unreachable!("one upstream per host")
        };
        ExternalHttps {
            ca,
            dir,
            ca_file,
            upstreams,
            dns,
        }
    }
}

impl<const N: usize> ExternalHttps<N> {
    /// The mesh's egress gateway on `gw_ip` (its SVID from `mesh`) reading `config` and this
    /// DNS server; with `trust_ca`, trusting this CA through `SSL_CERT_FILE`.
    pub async fn mesh_gateway(
        &self,
        mesh: &Mesh,
        gw_ip: IpAddr,
        config: &[String],
        trust_ca: bool,
    ) -> SluiceProcess {
        let gw_id = mesh.svid("istio-system", "istio-egressgateway-service-account");
        let ca_env = self.ca_file.display().to_string();
        let env: &[(&str, &str)] = if trust_ca {
            &[("SSL_CERT_FILE", &ca_env)]
        } else {
            &[]
        };
        gateway_at(gw_ip, config, self.dns.addr(), Some(&gw_id), env).await
    }
}

/// A plain-HTTP upstream ("partner", port 80 of a fresh loopback address), a DNS server with no
/// records and a fresh directory named `dir`: what a gateway test with one routed host needs.
pub struct PartnerHttp {
    pub upstream: HttpUpstream,
    pub dns: DnsServer,
    pub dir: TempDir,
}

impl PartnerHttp {
    pub async fn start(dir: &str) -> PartnerHttp {
        let upstream = HttpUpstream::start(SocketAddr::new(free_loopback_addr(), 80), "partner")
            .await
            .expect("upstream");
        let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
            .await
            .expect("dns");
        PartnerHttp {
            upstream,
            dns,
            dir: TempDir::new(dir),
        }
    }
}
