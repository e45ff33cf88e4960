//! The sidecar role end to end, on loopback with real sockets and real TLS: an explicit proxy
//! (CONNECT, absolute-form HTTP, `Host`) that applies the guide's mesh rules, reaches the
//! egress gateway over mesh mTLS with its SVID, and enforces REGISTRY_ONLY / ALLOW_ANY.
//!
//! Snapshots are compiled from the guide's own YAML (`testdata/guide/`) plus the
//! MESH_INTERNAL ServiceEntry that resolves the gateway's service host to a loopback address.
//! Where the gateway would be, most tests run a stand-in that terminates mesh mTLS with
//! `sluice_identity::server_config` and records what the sidecar presented; the last test runs
//! a real gateway `Proxy`.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use sluice_compile::lower::{CompileOptions, compile};
use sluice_identity::{Ca, Identity, IdentityFiles, IdentitySource, Validity};
use sluice_model::{Level, load_paths};
use sluice_proxy::ProxyConfig;
use sluice_snapshot::{OutboundPolicy, Snapshot};
use sluice_test_support::{
    DnsServer, HttpUpstream, HttpsUpstream, TempDir, TestCa, UpstreamOptions, client,
    free_loopback_addr,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const GUIDE: [&str; 5] = [
    "virtualservice-github.yaml",
    "destinationrule-github.yaml",
    "serviceentry-github.yaml",
    "egress-gateway.yaml",
    "mesh-config.yaml",
];
const GATEWAY_HOST: &str = "istio-egressgateway.istio-system.svc.cluster.local";
const GATEWAY_SA: &str = "istio-egressgateway-service-account";
const PROXY_PORT: u16 = 15001;
const STEP: Duration = Duration::from_secs(20);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Plain HTTP for `httpbin.example`, sent by the mesh rules to the gateway's port 443, whose
/// cluster the guide's DestinationRule makes ISTIO_MUTUAL: HTTP/1.1 inside mesh mTLS.
const HTTPBIN: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin
  namespace: default
spec:
  hosts: [httpbin.example]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
    - {number: 80, name: http, protocol: HTTP}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin-via-egress
  namespace: default
spec:
  hosts: [httpbin.example]
  gateways: [mesh]
  http:
    - route:
        - destination:
            host: istio-egressgateway.istio-system.svc.cluster.local
            port: {number: 443}
"#;

fn gateway_service(ip: IpAddr) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: istio-egressgateway
  namespace: istio-system
spec:
  hosts: [{GATEWAY_HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
    - {{number: 80, name: http, protocol: HTTP}}
    - {{number: 443, name: tls, protocol: TLS}}
  endpoints:
    - address: {ip}
      serviceAccount: {GATEWAY_SA}
"#
    )
}

fn guide(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/guide")
        .join(file)
}

/// Compiles the guide's files plus `extra` YAML documents for `options`.
fn compile_snapshot(options: &CompileOptions, extra: &[String]) -> Snapshot {
    let dir = TempDir::new("sidecar-yaml");
    let mut paths: Vec<PathBuf> = GUIDE.iter().map(|f| guide(f)).collect();
    for (i, text) in extra.iter().enumerate() {
        let p = dir.join(format!("extra-{i}.yaml"));
        std::fs::write(&p, text).expect("write yaml");
        paths.push(p);
    }
    let loaded = load_paths(&paths);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    let (snapshot, diags) = compile(&loaded.resources, options);
    let errors: Vec<_> = diags.iter().filter(|d| d.level == Level::Error).collect();
    assert!(errors.is_empty(), "compile errors: {errors:#?}");
    snapshot
}

fn sidecar_snapshot(gateway_ip: IpAddr) -> Snapshot {
    compile_snapshot(
        &CompileOptions::sidecar("default"),
        &[gateway_service(gateway_ip), HTTPBIN.to_owned()],
    )
}

fn json(s: &Snapshot) -> Value {
    serde_json::to_value(s).expect("snapshot to json")
}

struct Mesh {
    ca: Ca,
}

impl Mesh {
    fn new() -> Mesh {
        Mesh {
            ca: Ca::generate("cluster.local").expect("mesh CA"),
        }
    }

    fn identity(&self, ns: &str, sa: &str) -> IdentitySource {
        let svid = self
            .ca
            .issue(ns, sa, Validity::from_now(Duration::from_secs(3600)))
            .expect("svid");
        let files = IdentityFiles::from_pem(
            svid.cert_pem.as_bytes(),
            svid.key_pem.as_bytes(),
            svid.ca_pem.as_bytes(),
        )
        .expect("identity files");
        watch::channel(Arc::new(files)).1
    }

    fn sleep(&self) -> IdentitySource {
        self.identity("default", "sleep")
    }

    fn gateway(&self) -> IdentitySource {
        self.identity("istio-system", GATEWAY_SA)
    }
}

/// Starts a sidecar proxy with `snapshot`; its explicit proxy listens on `<ip>:15001`.
async fn start_sidecar(
    snapshot: &Snapshot,
    identity: Option<IdentitySource>,
    dns: SocketAddr,
) -> common::Running {
    common::start_with(json(snapshot), move |c: &mut ProxyConfig| {
        c.listen = Some(SocketAddr::new(c.bind, PROXY_PORT));
        c.identity = identity;
        c.dns_server = Some(dns);
    })
    .await
}

/// What the mesh stand-in saw of one mesh-mTLS connection.
#[derive(Debug, Clone)]
struct Seen {
    sni: Option<String>,
    alpn: Option<String>,
    peer: Option<Identity>,
    /// The inner stream started with a TLS record.
    inner_tls: bool,
}

/// A stand-in for the gateway end of the mesh hop: terminates mesh mTLS (requiring a client
/// SVID from the mesh CA), records what it saw, then pipes the inner bytes to `tls_target`
/// (when they start a TLS handshake) or `http_target`.
struct MeshStandIn {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MeshStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MeshStandIn {
    async fn start(
        addr: SocketAddr,
        identity: IdentitySource,
        tls_target: SocketAddr,
        http_target: SocketAddr,
    ) -> MeshStandIn {
        let config = sluice_identity::server_config(identity).expect("mesh server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(addr).await.expect("bind stand-in");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let Ok(Ok(mut tls)) = tokio::time::timeout(STEP, acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let mut first = vec![0u8; 16 * 1024];
                    let Ok(Ok(n)) = tokio::time::timeout(STEP, tls.read(&mut first)).await else {
                        return;
                    };
                    // A connection closed before its first byte carried nothing to the gateway
                    // (the sidecar connects before it answers a CONNECT).
                    if n == 0 {
                        return;
                    }
                    first.truncate(n);
                    let inner_tls = first.first() == Some(&0x16);
                    {
                        let (_, conn) = tls.get_ref();
                        log.lock().expect("log").push(Seen {
                            sni: conn.server_name().map(str::to_owned),
                            alpn: conn
                                .alpn_protocol()
                                .map(|p| String::from_utf8_lossy(p).into_owned()),
                            peer: sluice_identity::peer_identity(conn),
                            inner_tls,
                        });
                    }
                    let target = if inner_tls { tls_target } else { http_target };
                    let Ok(mut up) = TcpStream::connect(target).await else {
                        return;
                    };
                    if up.write_all(&first).await.is_err() {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        MeshStandIn { seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

/// Opens `CONNECT target` through the proxy at `proxy`; returns the socket and the response
/// head.
async fn open_tunnel(proxy: SocketAddr, target: &str) -> (TcpStream, String) {
    let mut tcp = tokio::time::timeout(STEP, TcpStream::connect(proxy))
        .await
        .expect("connect in time")
        .expect("connect to the proxy");
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("write CONNECT");
    let head = common::read_head(&mut tcp).await;
    (tcp, head)
}

/// `GET path` over TLS (SNI `host`, verified against `roots`) inside `tcp`.
async fn https_over(
    tcp: TcpStream,
    host: &str,
    path: &str,
    roots: rustls::RootCertStore,
) -> Result<(u16, String), BoxError> {
    let mut cfg = sluice_test_support::ca::client_config(roots, None);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(host.to_owned())?;
    let tls =
        tokio::time::timeout(STEP, TlsConnector::from(Arc::new(cfg)).connect(name, tcp)).await??;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let conn = tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(STEP, sender.send_request(req)).await??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    conn.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An absolute-form `GET url` through the proxy.
async fn proxied_get(proxy: SocketAddr, url: &str) -> client::Reply {
    let uri: http::Uri = url.parse().expect("url");
    let host = uri.authority().expect("authority").as_str().to_owned();
    let req = Request::get(url)
        .header("host", host)
        .body(String::new())
        .expect("request");
    client::http_request(proxy, req).await.expect("proxied GET")
}

fn sleep_identity() -> Identity {
    Identity::spiffe("cluster.local", "default", "sleep").expect("id")
}

#[tokio::test]
async fn connect_tls_and_http_ride_mesh_mtls_to_the_gateway() {
    let mesh = Mesh::new();
    let test_ca = TestCa::new("upstream-ca");
    let github = HttpsUpstream::start(
        SocketAddr::new(free_loopback_addr(), 0),
        &test_ca.server_cert(&["api.github.com"]),
        "github",
        UpstreamOptions::default(),
    )
    .await
    .expect("github stand-in");
    let httpbin = HttpUpstream::start(SocketAddr::new(free_loopback_addr(), 0), "httpbin")
        .await
        .expect("httpbin stand-in");
    let gateway_ip = free_loopback_addr();
    let standin = MeshStandIn::start(
        SocketAddr::new(gateway_ip, 443),
        mesh.gateway(),
        github.addr(),
        httpbin.addr(),
    )
    .await;
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let sidecar = start_sidecar(
        &sidecar_snapshot(gateway_ip),
        Some(mesh.sleep()),
        dns.addr(),
    )
    .await;
    let proxy = sidecar.addr(PROXY_PORT);

    // HTTPS_PROXY=http://<sidecar>:15001 curl https://api.github.com/: CONNECT, then the app's
    // own TLS, verified end to end against the upstream's CA.
    let (tcp, head) = open_tunnel(proxy, "api.github.com:443").await;
    assert!(
        head.starts_with("HTTP/1.1 200 Connection Established\r\n"),
        "{head}"
    );
    let (status, body) = https_over(tcp, "api.github.com", "/repos", test_ca.ca_root_store())
        .await
        .expect("https through the tunnel");
    assert_eq!(status, 200, "{body}");
    let echo = common::echo(&body);
    assert_eq!(echo["upstream"], "github");
    assert_eq!(echo["sni"], "api.github.com");
    assert_eq!(echo["path"], "/repos");
    let seen = standin.seen();
    let hop = seen
        .iter()
        .find(|s| s.inner_tls)
        .expect("a mesh hop with TLS inside");
    assert_eq!(hop.sni.as_deref(), Some("api.github.com"), "{hop:?}");
    assert_eq!(hop.alpn.as_deref(), Some("istio"), "{hop:?}");
    assert_eq!(hop.peer.as_ref(), Some(&sleep_identity()), "{hop:?}");
    let line = sidecar
        .log_line(&[
            "outbound|443||istio-egressgateway.istio-system.svc.cluster.local",
            "api.github.com",
        ])
        .await;
    assert!(line.contains(&format!("{gateway_ip}:443")), "{line}");
    // The tunnel rode the mesh hop connected before its 200, not a second one.
    assert!(
        !sidecar.log_text().contains("connect_dial_unused"),
        "{}",
        sidecar.log_text()
    );

    // The same with the real curl, as an app would run it.
    let ca_pem = TempDir::new("curl-ca");
    let ca_path = test_ca.write_ca_pem(ca_pem.path());
    let out = client::curl(&[
        "-sS",
        "--noproxy",
        "",
        "-x",
        &format!("http://{proxy}"),
        "--cacert",
        &ca_path.to_string_lossy(),
        "https://api.github.com/from-curl",
    ])
    .await
    .expect("curl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(common::echo(&stdout)["path"], "/from-curl");

    // Absolute-form HTTP for a host the mesh rules send to the gateway: HTTP/1.1 inside the
    // mesh mTLS, Host preserved, SNI naming the host.
    let (status, _, body) = proxied_get(proxy, "http://httpbin.example/get?x=1").await;
    assert_eq!(status, 200, "{body}");
    let echo = common::echo(&body);
    assert_eq!(echo["upstream"], "httpbin");
    assert_eq!(echo["host"], "httpbin.example");
    assert_eq!(echo["path"], "/get?x=1");
    assert_eq!(echo["version"], "HTTP/1.1");
    let hop = standin
        .seen()
        .into_iter()
        .find(|s| !s.inner_tls)
        .expect("a mesh hop with HTTP inside");
    assert_eq!(hop.sni.as_deref(), Some("httpbin.example"), "{hop:?}");
    assert_eq!(hop.peer.as_ref(), Some(&sleep_identity()), "{hop:?}");

    // Origin-form with Host works too (the sidecar as a plain HTTP listener).
    let (status, _, body) = client::http_get(proxy, "httpbin.example", "/plain")
        .await
        .expect("origin-form GET");
    assert_eq!(status, 200, "{body}");
    assert_eq!(common::echo(&body)["path"], "/plain");
}

#[tokio::test]
async fn one_keep_alive_connection_routes_each_request_by_its_own_host() {
    let mesh = Mesh::new();
    let httpbin = HttpUpstream::start(SocketAddr::new(free_loopback_addr(), 0), "httpbin")
        .await
        .expect("httpbin stand-in");
    let gateway_ip = free_loopback_addr();
    let _standin = MeshStandIn::start(
        SocketAddr::new(gateway_ip, 443),
        mesh.gateway(),
        httpbin.addr(),
        httpbin.addr(),
    )
    .await;
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let snapshot = sidecar_snapshot(gateway_ip);
    let sidecar = start_sidecar(&snapshot, Some(mesh.sleep()), dns.addr()).await;
    // Istio's route decorator for httpbin.example (`host:port/*`), which Envoy's egress
    // connection manager propagates upstream.
    let operation = snapshot
        .listeners
        .iter()
        .flat_map(|l| &l.chains)
        .filter_map(|c| match &c.app {
            sluice_snapshot::listener::App::Http { virtual_hosts, .. } => Some(virtual_hosts),
            _ => None,
        })
        .flatten()
        .find(|vh| vh.name.starts_with("httpbin.example"))
        .and_then(|vh| vh.routes.first())
        .and_then(|r| r.operation.clone())
        .expect("a decorator for httpbin.example");

    let tcp = TcpStream::connect(sidecar.addr(PROXY_PORT))
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let mut statuses = Vec::new();
    let mut first_body = None;
    for url in [
        "http://httpbin.example/one",
        "http://unknown.example/",
        "http://httpbin.example:8080/other-port",
        "http://httpbin.example/two",
    ] {
        let host = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("");
        let req = Request::get(url)
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .expect("req");
        let resp = tokio::time::timeout(STEP, sender.send_request(req))
            .await
            .expect("in time")
            .expect("response");
        statuses.push(resp.status().as_u16());
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        first_body.get_or_insert_with(|| String::from_utf8_lossy(&body).into_owned());
    }
    conn.abort();
    // httpbin.example:8080 is on no virtual listener: refused like any unregistered port.
    assert_eq!(statuses, vec![200, 502, 502, 200]);
    let echo = common::echo(&first_body.unwrap_or_default());
    assert_eq!(
        echo["headers"]["x-envoy-decorator-operation"], operation,
        "{echo}"
    );
    assert_eq!(httpbin.requests(), 2);
}

#[tokio::test]
async fn registry_only_refuses_what_nothing_registers() {
    let mesh = Mesh::new();
    let gateway_ip = free_loopback_addr();
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let snapshot = sidecar_snapshot(gateway_ip);
    assert_eq!(snapshot.outbound_policy, OutboundPolicy::RegistryOnly);
    let sidecar = start_sidecar(&snapshot, Some(mesh.sleep()), dns.addr()).await;
    let proxy = sidecar.addr(PROXY_PORT);

    // HTTP to an unregistered host: Istio's block_all route.
    let (status, _, _) = proxied_get(proxy, "http://unknown.example/x").await;
    assert_eq!(status, 502);
    let line = sidecar
        .log_line(&["unknown.example", "502", "direct_response"])
        .await;
    assert!(line.contains("BlackHoleCluster"), "{line}");
    assert!(line.contains("block_all"), "{line}");

    // api.github.com is registered for TLS on 443 only: plain HTTP to it is refused too.
    let (status, _, _) = proxied_get(proxy, "http://api.github.com/").await;
    assert_eq!(status, 502);

    // A tunnel to a host no chain of the port takes (the tunnel may only carry that host's
    // SNI): refused before the 200, as Squid and Smokescreen refuse, and logged.
    let (_tcp, head) = open_tunnel(proxy, "unknown.example:443").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let line = sidecar.log_line(&["UH", "unknown.example"]).await;
    assert!(line.contains(" UH "), "{line}");

    // A port no listener has: refused the same way.
    let (_tcp, head) = open_tunnel(proxy, "unknown.example:9999").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    sidecar.wait_lines(&[" UH ", "unknown.example"], 2).await;

    // A registered host is answered only once its upstream is connected: here the mesh hop
    // to the gateway, where nothing listens, so 502 (UF) and never a 200.
    let (_tcp, head) = open_tunnel(proxy, "api.github.com:443").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let line = sidecar.log_line(&["api.github.com", " UF "]).await;
    assert!(line.contains(&format!("{gateway_ip}:443")), "{line}");

    // Malformed heads: 400, connection closed.
    let reply = client::raw_tcp(proxy, b"NOT HTTP AT ALL\r\n\r\n", Duration::from_secs(5))
        .await
        .expect("raw");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let reply = client::raw_tcp(
        proxy,
        b"GET /no-host HTTP/1.1\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .expect("raw");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let reply = client::raw_tcp(
        proxy,
        b"CONNECT no-port.example HTTP/1.1\r\nHost: no-port.example\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .expect("raw");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
}

#[tokio::test]
async fn allow_any_passes_unregistered_hosts_through() {
    let mesh = Mesh::new();
    let test_ca = TestCa::new("outside-ca");
    let outside_ip = free_loopback_addr();
    let http_outside = HttpUpstream::start(SocketAddr::new(outside_ip, 80), "outside-http")
        .await
        .expect("http stand-in");
    let https_outside = HttpsUpstream::start(
        SocketAddr::new(outside_ip, 443),
        &test_ca.server_cert(&["outside.example"]),
        "outside-https",
        UpstreamOptions::default(),
    )
    .await
    .expect("https stand-in");
    let dns = DnsServer::start([
        ("outside.example", vec![outside_ip]),
        // Unspecified: the IP guard refuses it (and a dial would stay on this machine).
        ("zero.example", vec!["0.0.0.0".parse().expect("ip")]),
    ])
    .await
    .expect("dns");
    // The guide's mesh config says REGISTRY_ONLY; a Sidecar resource overrides it, and the
    // compiler turns the policy into routes (allow_any → PassthroughCluster).
    let allow_any = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  outboundTrafficPolicy: {mode: ALLOW_ANY}
"#;
    let snapshot = compile_snapshot(
        &CompileOptions::sidecar("default"),
        &[
            gateway_service(free_loopback_addr()),
            HTTPBIN.to_owned(),
            allow_any.to_owned(),
        ],
    );
    assert_eq!(snapshot.outbound_policy, OutboundPolicy::AllowAny);
    let sidecar = start_sidecar(&snapshot, Some(mesh.sleep()), dns.addr()).await;
    let proxy = sidecar.addr(PROXY_PORT);

    let (status, _, body) = proxied_get(proxy, "http://outside.example/anything").await;
    assert_eq!(status, 200, "{body}");
    let echo = common::echo(&body);
    assert_eq!(echo["upstream"], "outside-http");
    assert_eq!(echo["host"], "outside.example");
    assert_eq!(echo["path"], "/anything");
    let line = sidecar
        .log_line(&["PassthroughCluster", "outside.example", "allow_any"])
        .await;
    assert!(line.contains(&format!("{outside_ip}:80")), "{line}");

    let (tcp, head) = open_tunnel(proxy, "outside.example:443").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (status, body) = https_over(tcp, "outside.example", "/tls", test_ca.ca_root_store())
        .await
        .expect("https passthrough");
    assert_eq!(status, 200, "{body}");
    let echo = common::echo(&body);
    assert_eq!(echo["upstream"], "outside-https");
    assert_eq!(echo["sni"], "outside.example");
    sidecar
        .log_line(&["PassthroughCluster", &format!("{outside_ip}:443")])
        .await;
    assert_eq!(https_outside.requests(), 1);
    // The tunnel used the connection made before its 200, not a second one.
    assert!(
        !sidecar.log_text().contains("connect_dial_unused"),
        "{}",
        sidecar.log_text()
    );
    assert_eq!(http_outside.requests(), 1);

    // A CONNECT is answered only once its destination passes: a host that resolves to an
    // address the IP guard refuses is 403, one that does not resolve 502 (DF), before any 200.
    let (_tcp, head) = open_tunnel(proxy, "zero.example:443").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    sidecar
        .log_line(&["zero.example", "destination_ip_denied{unspecified}"])
        .await;
    let (_tcp, head) = open_tunnel(proxy, "nowhere.example:443").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    sidecar
        .log_line(&["nowhere.example", " DF ", "dns_resolution_failure"])
        .await;

    // httpbin.example is registered on port 80 only: ALLOW_ANY does not open its other ports.
    let (_tcp, head) = open_tunnel(proxy, "httpbin.example:8443").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    sidecar
        .log_line(&["port_not_declared", "httpbin.example"])
        .await;
    let (status, _, body) = proxied_get(proxy, "http://httpbin.example:8080/").await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn istio_mutual_without_an_identity_fails_uf() {
    let httpbin = HttpUpstream::start(SocketAddr::new(free_loopback_addr(), 0), "httpbin")
        .await
        .expect("httpbin");
    let mesh = Mesh::new();
    let gateway_ip = free_loopback_addr();
    let standin = MeshStandIn::start(
        SocketAddr::new(gateway_ip, 443),
        mesh.gateway(),
        httpbin.addr(),
        httpbin.addr(),
    )
    .await;
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let sidecar = start_sidecar(&sidecar_snapshot(gateway_ip), None, dns.addr()).await;
    let proxy = sidecar.addr(PROXY_PORT);

    let (status, _, body) = proxied_get(proxy, "http://httpbin.example/").await;
    assert_eq!(status, 503, "{body}");
    let line = sidecar.log_line(&["httpbin.example", "503"]).await;
    assert!(line.contains(" UF"), "{line}");
    assert!(line.contains("workload identity"), "{line}");

    // A tunnel to a mesh-routed host is refused the same way before its 200, never sent
    // without mTLS.
    let (tcp, head) = open_tunnel(proxy, "api.github.com:443").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let r = https_over(tcp, "api.github.com", "/", TestCa::new("x").ca_root_store()).await;
    assert!(r.is_err(), "{r:?}");
    sidecar.log_line(&["api.github.com", "UF"]).await;
    assert!(standin.seen().is_empty(), "nothing reached the gateway");
    assert_eq!(httpbin.requests(), 0);
}

/// The whole picture: app → sidecar (CONNECT) → mesh mTLS → gateway (PASSTHROUGH server) →
/// api.github.com stand-in. Needs the gateway end of the mesh hop.
#[tokio::test]
async fn sidecar_to_gateway_to_upstream() {
    let mesh = Mesh::new();
    let test_ca = TestCa::new("upstream-ca");
    let upstream_ip = free_loopback_addr();
    let github = HttpsUpstream::start(
        SocketAddr::new(upstream_ip, 443),
        &test_ca.server_cert(&["api.github.com"]),
        "github",
        UpstreamOptions::default(),
    )
    .await
    .expect("github stand-in");
    let dns = DnsServer::start([("api.github.com", vec![upstream_ip])])
        .await
        .expect("dns");

    let gateway_snapshot = compile_snapshot(&CompileOptions::gateway(), &[]);
    let gateway_identity = mesh.gateway();
    let dns_addr = dns.addr();
    let gateway = common::start_with(json(&gateway_snapshot), move |c: &mut ProxyConfig| {
        c.identity = Some(gateway_identity);
        c.dns_server = Some(dns_addr);
    })
    .await;
    let sidecar = start_sidecar(
        &sidecar_snapshot(gateway.ip),
        Some(mesh.sleep()),
        dns.addr(),
    )
    .await;

    let (tcp, head) = open_tunnel(sidecar.addr(PROXY_PORT), "api.github.com:443").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (status, body) = https_over(tcp, "api.github.com", "/e2e", test_ca.ca_root_store())
        .await
        .expect("https through sidecar and gateway");
    assert_eq!(status, 200, "{body}");
    let echo = common::echo(&body);
    assert_eq!(echo["upstream"], "github");
    assert_eq!(echo["sni"], "api.github.com");
    assert_eq!(echo["path"], "/e2e");
    assert_eq!(github.requests(), 1);
    sidecar
        .log_line(&["outbound|443||istio-egressgateway.istio-system.svc.cluster.local"])
        .await;
    gateway
        .log_line(&["outbound|443||api.github.com", "api.github.com"])
        .await;
}

/// An HTTP/1.1 server on `addr` that answers one request per connection with keep-alive
/// (no `Connection: close`), then closes the connection when the next request arrives on
/// it, unanswered: every pooled connection turns stale. Counts connections.
async fn one_request_per_connection(
    addr: SocketAddr,
) -> (
    Arc<std::sync::atomic::AtomicU64>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind(addr).await.expect("bind stale server");
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = count.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if common::read_request_head(&mut tcp).await.is_none() {
                    return;
                }
                let mut buf = [0u8; 4096];
                let body = "fresh";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if tcp.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
                // The next request on this connection finds it closed, unanswered.
                let _ = tcp.read(&mut buf).await;
            });
        }
    });
    (count, task)
}

fn allow_any_snapshot(extra: &[String]) -> Snapshot {
    let allow_any = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  outboundTrafficPolicy: {mode: ALLOW_ANY}
"#;
    let mut docs = vec![
        gateway_service(free_loopback_addr()),
        HTTPBIN.to_owned(),
        allow_any.to_owned(),
    ];
    docs.extend_from_slice(extra);
    compile_snapshot(&CompileOptions::sidecar("default"), &docs)
}

/// The sidecar has no forwarding code of its own: a request to an unregistered host
/// (PassthroughCluster) and one to a registered host both go through the gateway's forward
/// path, which sends a request that found its pooled connection closed again on a new one
/// (Envoy retries a reset on a reused connection) instead of failing it.
#[tokio::test]
async fn stale_pooled_connections_are_retried_on_every_sidecar_route() {
    let ip = free_loopback_addr();
    let (connections, server) = one_request_per_connection(SocketAddr::new(ip, 80)).await;
    let dns = DnsServer::start([("stale.example", vec![ip])])
        .await
        .expect("dns");
    let registered = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: stale, namespace: default}}
spec:
  hosts: [stale.example]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {ip}}}]
"#
    );
    let snapshot = allow_any_snapshot(&[registered]);
    let sidecar = start_sidecar(&snapshot, None, dns.addr()).await;
    let proxy = sidecar.addr(PROXY_PORT);

    // Passthrough by IP literal, then the registered route: three requests each, each
    // after the first finding its pooled connection stale.
    for (url, cluster) in [
        (format!("http://{ip}/p"), "PassthroughCluster"),
        (
            "http://stale.example/r".to_owned(),
            "outbound|80||stale.example",
        ),
    ] {
        for _ in 0..3 {
            let (status, _, body) = proxied_get(proxy, &url).await;
            assert_eq!((status, body.as_str()), (200, "fresh"), "{url}");
        }
        sidecar.wait_lines(&[" 200 ", cluster], 3).await;
    }
    // One connection per request: every reuse found a closed connection and was sent again.
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 6);
    server.abort();
}

/// A CONNECT tunnel through the sidecar is a TCP flow of the common path, so the cluster's
/// idle timeout (DestinationRule `connectionPool.tcp.idleTimeout`) closes it as it closes
/// one at the gateway; a tunnel that keeps moving bytes stays open.
#[tokio::test]
async fn sidecar_tunnels_close_at_the_idle_timeout() {
    let ip = free_loopback_addr();
    let echo = sluice_test_support::TcpUpstream::start(SocketAddr::new(ip, 7000), "echo")
        .await
        .expect("echo");
    let dns = DnsServer::start([("echo.example", vec![ip])])
        .await
        .expect("dns");
    let config = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo.example]
  addresses: [{ip}/32]
  ports: [{{number: 7000, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: {ip}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo, namespace: default}}
spec:
  host: echo.example
  trafficPolicy:
    connectionPool:
      tcp: {{idleTimeout: 1s}}
"#
    );
    let snapshot = allow_any_snapshot(&[config]);
    let sidecar = start_sidecar(&snapshot, None, dns.addr()).await;
    let proxy = sidecar.addr(PROXY_PORT);

    let (mut tcp, head) = open_tunnel(proxy, &format!("{ip}:7000")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(STEP, tcp.read(&mut buf))
        .await
        .expect("banner in time")
        .expect("banner");
    assert_eq!(&buf[..n], b"echo\n");
    // Bytes every 300 ms keep it open past the timeout...
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tcp.write_all(b"ping").await.expect("write");
        let n = tokio::time::timeout(STEP, tcp.read(&mut buf))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(&buf[..n], b"ping");
    }
    // ...then silence: the proxy closes it (read returns 0), well before the test's bound.
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("closed by the idle timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let line = sidecar
        .log_line(&["outbound|7000||echo.example", "idle_timeout"])
        .await;
    assert!(line.contains(&format!("{ip}:7000")), "{line}");
    assert_eq!(echo.connections(), 1);
    assert!(
        sidecar
            .metrics()
            .contains(r#"check="limit",reason="tunnel_idle_timeout"} 1"#),
        "{}",
        sidecar.metrics()
    );
}

/// A WebSocket upgrade through the explicit proxy (absolute-form, as an app with `HTTP_PROXY`
/// sends it) reaches the destination with its Upgrade header, and the connection becomes a
/// byte tunnel both ways after the 101 — the same forward path as at the gateway.
#[tokio::test]
async fn websocket_upgrades_pass_through_the_sidecar() {
    let ip = free_loopback_addr();
    let listener = TcpListener::bind(SocketAddr::new(ip, 80))
        .await
        .expect("bind");
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let head = common::read_request_head(&mut tcp)
            .await
            .expect("a request head")
            .to_ascii_lowercase();
        let mut buf = [0u8; 4096];
        assert!(head.contains("upgrade: websocket"), "{head}");
        tcp.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
            .await
            .expect("101");
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => tcp.write_all(&buf[..n]).await.expect("echo"),
            }
        }
    });
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let snapshot = allow_any_snapshot(&[]);
    let sidecar = start_sidecar(&snapshot, None, dns.addr()).await;
    let proxy = sidecar.addr(PROXY_PORT);

    let mut tcp = TcpStream::connect(proxy).await.expect("connect");
    tcp.write_all(
        format!(
            "GET http://{ip}/chat HTTP/1.1\r\nhost: {ip}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let head = common::read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp.write_all(b"hello tunnel").await.expect("write");
    let mut got = [0u8; 12];
    tokio::time::timeout(STEP, tcp.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("the echo, before the tunnel closes");
    assert_eq!(&got, b"hello tunnel");
    drop(tcp);
    let _ = tokio::time::timeout(STEP, server).await;
}

/// Domain fronting and malformed authorities at the sidecar (security issue): a tunnel to
/// one registered host whose ClientHello names another is closed; a plain request inside a
/// tunnel for another host is 421; malformed CONNECT authorities and two Host headers are
/// 400 — and none of them reaches the mesh hop.
#[tokio::test]
async fn fronting_and_malformed_authorities_are_refused() {
    let mesh = Mesh::new();
    let test_ca = TestCa::new("upstream-ca");
    let github = HttpsUpstream::start(
        SocketAddr::new(free_loopback_addr(), 0),
        &test_ca.server_cert(&["api.github.com", "httpbin.example"]),
        "github",
        UpstreamOptions::default(),
    )
    .await
    .expect("github stand-in");
    let httpbin = HttpUpstream::start(SocketAddr::new(free_loopback_addr(), 0), "httpbin")
        .await
        .expect("httpbin stand-in");
    let gateway_ip = free_loopback_addr();
    let standin = MeshStandIn::start(
        SocketAddr::new(gateway_ip, 443),
        mesh.gateway(),
        github.addr(),
        httpbin.addr(),
    )
    .await;
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let sidecar = start_sidecar(
        &sidecar_snapshot(gateway_ip),
        Some(mesh.sleep()),
        dns.addr(),
    )
    .await;
    let proxy = sidecar.addr(PROXY_PORT);

    // CONNECT to api.github.com, then a ClientHello for httpbin.example: closed.
    let (tcp, head) = open_tunnel(proxy, "api.github.com:443").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let fronted = https_over(tcp, "httpbin.example", "/", test_ca.ca_root_store()).await;
    assert!(fronted.is_err(), "{fronted:?}");
    let line = sidecar.log_line(&["misdirected_request"]).await;
    assert!(line.contains("httpbin.example"), "{line}");

    // The same name, spelled differently, is the same name.
    let (tcp, head) = open_tunnel(proxy, "API.GitHub.com.:443").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (status, body) = https_over(tcp, "api.github.com", "/ok", test_ca.ca_root_store())
        .await
        .expect("same host, other spelling");
    assert_eq!(status, 200, "{body}");

    // Plain HTTP inside a tunnel to httpbin.example, for another host: 421.
    let (mut tcp, head) = open_tunnel(proxy, "httpbin.example:80").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: api.github.com\r\n\r\n")
        .await
        .expect("write");
    let head = common::read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 421"), "{head}");

    let hops_before = standin.seen().len();
    for bad in [
        "a..example.com:443",
        ".example.com:443",
        "api.github.com",
        "api.github.com:0",
        "api.github.com:65536",
        "api.github.com:443x",
        "2130706433:443",
        "user@api.github.com:443",
    ] {
        let (_tcp, head) = open_tunnel(proxy, bad).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{bad}: {head}");
    }
    let mut tcp = TcpStream::connect(proxy).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: httpbin.example\r\nHost: api.github.com\r\n\r\n")
        .await
        .expect("write");
    let head = common::read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(
        standin.seen().len(),
        hops_before,
        "a refused flow reached the gateway"
    );
    assert_eq!(httpbin.requests(), 0);
    let metrics = sidecar.metrics();
    for needle in [
        r#"sluice_refused_total{check="fronting",reason="sni_differs_from_connect"} 1"#,
        r#"sluice_refused_total{check="fronting",reason="host_differs_from_connect"} 1"#,
    ] {
        assert!(metrics.contains(needle), "{needle} in\n{metrics}");
    }
}

/// A CONNECT is answered `200` only once the upstream is connected (security issue, as Squid
/// and Smokescreen answer): a registered TCP host whose port is closed gets `502` (UF) and
/// never a `200`; an unregistered host under REGISTRY_ONLY `403`; a reachable one `200`, then
/// bytes flow both ways.
#[tokio::test]
async fn connect_is_answered_only_once_the_upstream_is_connected() {
    let open_ip = free_loopback_addr();
    let echo = sluice_test_support::TcpUpstream::start(SocketAddr::new(open_ip, 7000), "echo")
        .await
        .expect("echo");
    // A port nothing listens on: bound once for a free number, then closed.
    let closed = {
        let l = TcpListener::bind(SocketAddr::new(free_loopback_addr(), 0))
            .await
            .expect("bind");
        l.local_addr().expect("addr")
    };
    let dns = DnsServer::start([
        ("open.example", vec![open_ip]),
        ("closed.example", vec![closed.ip()]),
    ])
    .await
    .expect("dns");
    let entry = |name: &str, addr: SocketAddr| {
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.example]
  addresses: [{ip}/32]
  ports: [{{number: {port}, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: {ip}}}]
"#,
            ip = addr.ip(),
            port = addr.port()
        )
    };
    let snapshot = compile_snapshot(
        &CompileOptions::sidecar("default"),
        &[
            gateway_service(free_loopback_addr()),
            entry("open", SocketAddr::new(open_ip, 7000)),
            entry("closed", closed),
        ],
    );
    assert_eq!(snapshot.outbound_policy, OutboundPolicy::RegistryOnly);
    let sidecar = start_sidecar(&snapshot, None, dns.addr()).await;
    let proxy = sidecar.addr(PROXY_PORT);

    // The upstream refuses the connection: 502, the connection closed, no 200 ever.
    let target = format!("closed.example:{}", closed.port());
    let reply = client::raw_tcp(
        proxy,
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
        STEP,
    )
    .await
    .expect("CONNECT");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 502 "), "{reply}");
    assert!(!reply.contains(" 200 "), "{reply}");
    assert!(reply.contains("refused"), "{reply}");
    let line = sidecar.log_line(&["closed.example", " UF "]).await;
    assert!(line.contains(&closed.to_string()), "{line}");

    // Nothing registers the host: 403 under REGISTRY_ONLY, nothing dialed.
    let (_tcp, head) = open_tunnel(proxy, "unregistered.example:7000").await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");

    // Reachable: 200, then the upstream's banner and an echo through the tunnel.
    let (mut tcp, head) = open_tunnel(proxy, "open.example:7000").await;
    assert!(
        head.starts_with("HTTP/1.1 200 Connection Established\r\n"),
        "{head}"
    );
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(STEP, tcp.read(&mut buf))
        .await
        .expect("banner in time")
        .expect("banner");
    assert_eq!(&buf[..n], b"echo\n");
    tcp.write_all(b"ping").await.expect("write");
    let n = tokio::time::timeout(STEP, tcp.read(&mut buf))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&buf[..n], b"ping");
    drop(tcp);
    sidecar
        .log_line(&["outbound|7000||open.example", &format!("{open_ip}:7000")])
        .await;
    assert_eq!(echo.connections(), 1);
}

/// A CONNECT to a plain-HTTP port is routed per request inside the tunnel, each request for
/// the tunnel's host; under REGISTRY_ONLY a host only the catch-all would take is refused at
/// the CONNECT (`403`, as Squid and Smokescreen refuse), not answered `200` with every request
/// inside then `502`. A registered host whose routes all go to one cluster is connected
/// before the `200` (a host whose endpoint refuses gets `502 UF` instead), and the tunnel's
/// first request rides that connection.
#[tokio::test]
async fn connect_to_a_plain_http_port_is_refused_when_no_request_could_be_served() {
    let up = sluice_test_support::HttpUpstream::start(
        SocketAddr::new(free_loopback_addr(), 80),
        "plain",
    )
    .await
    .expect("upstream");
    let dns = DnsServer::start([("plain.example", vec![up.addr().ip()])])
        .await
        .expect("dns");
    let entry = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: plain, namespace: default}}
spec:
  hosts: [plain.example]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {ip}}}]
"#,
        ip = up.addr().ip()
    );
    // Port 80 of an address nothing listens on.
    let down = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: down, namespace: default}}
spec:
  hosts: [down.example]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {ip}}}]
"#,
        ip = free_loopback_addr()
    );
    let snapshot = compile_snapshot(
        &CompileOptions::sidecar("default"),
        &[gateway_service(free_loopback_addr()), entry, down],
    );
    assert_eq!(snapshot.outbound_policy, OutboundPolicy::RegistryOnly);
    let sidecar = start_sidecar(&snapshot, None, dns.addr()).await;
    let proxy = sidecar.addr(PROXY_PORT);

    let (_tcp, head) = open_tunnel(proxy, "down.example:80").await;
    assert!(head.starts_with("HTTP/1.1 502 "), "{head}");
    sidecar
        .log_line(&["down.example", " UF ", "outbound|80||down.example"])
        .await;

    let (_tcp, head) = open_tunnel(proxy, "unregistered.example:80").await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    sidecar
        .log_line(&["unregistered.example", "BlackHoleCluster"])
        .await;

    let (mut tcp, head) = open_tunnel(proxy, "plain.example:80").await;
    assert!(
        head.starts_with("HTTP/1.1 200 Connection Established\r\n"),
        "{head}"
    );
    // Connected at the CONNECT, before any request: the upstream accepts it (its accept
    // loop may count it a moment after the sidecar's connect returned).
    let deadline = std::time::Instant::now() + STEP;
    while up.connections() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((up.connections(), up.requests()), (1, 0));
    tcp.write_all(b"GET /inside HTTP/1.1\r\nhost: plain.example\r\n\r\n")
        .await
        .expect("write");
    let head = common::read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(up.requests(), 1);
    assert_eq!(
        up.connections(),
        1,
        "the request rode the connection made for it"
    );
}

/// Request smuggling shapes at the explicit proxy (security issue), as Envoy's codec refuses
/// them: Content-Length with Transfer-Encoding (either order, also on a CONNECT), two
/// different lengths, a folded header line and two different Host headers are each answered
/// 400 and the connection closed; none reaches the upstream, which serves a plain request.
#[tokio::test]
async fn smuggling_shapes_are_refused_at_the_sidecar() {
    let ip = free_loopback_addr();
    let up = HttpUpstream::start(SocketAddr::new(ip, 80), "up")
        .await
        .expect("upstream");
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let sidecar = start_sidecar(&allow_any_snapshot(&[]), None, dns.addr()).await;
    let proxy = sidecar.addr(PROXY_PORT);

    let shapes = [
        format!(
            "POST http://{ip}/a HTTP/1.1\r\nHost: {ip}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET http://{ip}/smuggled HTTP/1.1\r\nHost: {ip}\r\n\r\n"
        ),
        format!(
            "POST /b HTTP/1.1\r\nHost: {ip}\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "CONNECT {ip}:80 HTTP/1.1\r\nHost: {ip}:80\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /c HTTP/1.1\r\nHost: {ip}\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"
        ),
        format!("GET /d HTTP/1.1\r\nHost: {ip}\r\nX-A: 1\r\n 2\r\n\r\n"),
        format!("GET /e HTTP/1.1\r\nHost: {ip}\r\nHost: other.example\r\n\r\n"),
    ];
    for head in &shapes {
        let reply = client::raw_tcp(proxy, head.as_bytes(), STEP)
            .await
            .expect("request");
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 400 "), "{head:?}: {reply}");
        assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{head:?}: {reply}");
    }
    sidecar
        .wait_lines(
            &[" 400 DPE http1.content_length_and_chunked_not_allowed "],
            3,
        )
        .await;
    assert_eq!(up.requests(), 0, "a smuggling shape reached the upstream");
    let reply = client::raw_tcp(
        proxy,
        format!("GET http://{ip}/ok HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
        STEP,
    )
    .await
    .expect("request");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    assert_eq!(up.requests(), 1);

    // A later request of a kept-alive connection: the ones before it are served, it is
    // refused, and the one behind it is never read.
    let pipelined = format!(
        "GET http://{ip}/k1 HTTP/1.1\r\nHost: {ip}\r\n\r\n\
         POST http://{ip}/k2 HTTP/1.1\r\nHost: {ip}\r\nContent-Length: 5\r\n\r\nhello\
         POST http://{ip}/k3 HTTP/1.1\r\nHost: {ip}\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n\
         GET http://{ip}/k4-smuggled HTTP/1.1\r\nHost: {ip}\r\n\r\n"
    );
    let reply = client::raw_tcp(proxy, pipelined.as_bytes(), STEP)
        .await
        .expect("request");
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(client::statuses(&reply), ["200", "200", "400"], "{reply}");
    sidecar
        .wait_lines(
            &[" 400 DPE http1.content_length_and_chunked_not_allowed "],
            4,
        )
        .await;
    assert_eq!(
        up.requests(),
        3,
        "/k3 or the request behind it was forwarded"
    );
}

/// The explicit proxy's head timeout (security issue): a client that sends nothing, or half a
/// head, is closed at `--request-head-timeout` (shorter than the proxy's own 10 s) and
/// counted, while a well-behaved client is served.
#[tokio::test]
async fn slow_request_heads_at_the_sidecar_are_cut_off_and_counted() {
    let ip = free_loopback_addr();
    let up = HttpUpstream::start(SocketAddr::new(ip, 80), "up")
        .await
        .expect("upstream");
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let sidecar = common::start_with(
        json(&allow_any_snapshot(&[])),
        move |c: &mut ProxyConfig| {
            c.listen = Some(SocketAddr::new(c.bind, PROXY_PORT));
            c.dns_server = Some(dns.addr());
            c.request_head_timeout = Duration::from_millis(400);
        },
    )
    .await;
    let proxy = sidecar.addr(PROXY_PORT);

    let silent = TcpStream::connect(proxy).await.expect("connect");
    let mut half = TcpStream::connect(proxy).await.expect("connect");
    half.write_all(format!("GET http://{ip}/ HTTP/1.1\r\nHost: {ip}\r\n").as_bytes())
        .await
        .expect("write");
    let (status, _, body) = proxied_get(proxy, &format!("http://{ip}/ok")).await;
    assert_eq!(status, 200, "{body}");
    for mut tcp in [silent, half] {
        let mut buf = [0u8; 256];
        let closed = loop {
            match tokio::time::timeout(STEP, tcp.read(&mut buf)).await {
                Err(_) => break false,
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) => continue,
            }
        };
        assert!(closed, "a slow client stayed connected");
    }
    let metrics = sidecar.metrics();
    assert!(
        metrics.contains(r#"sluice_refused_total{check="limit",reason="request_head_timeout"} 2"#),
        "{metrics}"
    );
    assert_eq!(up.requests(), 1);
}

/// A port that takes TLS for some hosts and plain bytes for others: a CONNECT by name to a
/// host whose only chain there is a plain (TCP) one, or by address to a host registered by
/// address, is connected to that chain's upstream before it is answered, like any other
/// CONNECT (`502` when the endpoint refuses, `200` and the banner when it accepts) — not
/// answered `200` and left to the bytes inside.
#[tokio::test]
async fn connect_to_a_port_taking_tls_and_plain_is_connected_first() {
    let up_ip = free_loopback_addr();
    let banner = sluice_test_support::TcpUpstream::start(SocketAddr::new(up_ip, 443), "tcp443")
        .await
        .expect("upstream");
    let down_ip = free_loopback_addr();
    let dns = DnsServer::start([("up.example", vec![up_ip]), ("down.example", vec![down_ip])])
        .await
        .expect("dns");
    let tcp_entry = |name: &str, ip: IpAddr| {
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.example]
  addresses: [{ip}/32]
  ports: [{{number: 443, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: {ip}}}]
"#
        )
    };
    let tls_entry = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tls, namespace: default}
spec:
  hosts: [tls.example]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
"#;
    let snapshot = compile_snapshot(
        &CompileOptions::sidecar("default"),
        &[
            gateway_service(free_loopback_addr()),
            tcp_entry("up", up_ip),
            tcp_entry("down", down_ip),
            tls_entry.to_owned(),
        ],
    );
    let listener = snapshot
        .listeners
        .iter()
        .find(|l| l.port == 443)
        .expect("a 443 listener");
    assert!(
        listener.inspects_tls(),
        "the port must take both: {listener:?}"
    );
    let sidecar = start_sidecar(&snapshot, None, dns.addr()).await;
    let proxy = sidecar.addr(PROXY_PORT);

    for target in ["down.example:443".to_owned(), format!("{down_ip}:443")] {
        let (_tcp, head) = open_tunnel(proxy, &target).await;
        assert!(head.starts_with("HTTP/1.1 502 "), "{target}: {head}");
    }
    sidecar
        .wait_lines(&["outbound|443||down.example", " UF "], 2)
        .await;
    for target in ["up.example:443".to_owned(), format!("{up_ip}:443")] {
        let (mut tcp, head) = open_tunnel(proxy, &target).await;
        assert!(
            head.starts_with("HTTP/1.1 200 Connection Established\r\n"),
            "{target}: {head}"
        );
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(STEP, tcp.read(&mut buf))
            .await
            .expect("banner in time")
            .expect("banner");
        assert_eq!(&buf[..n], b"tcp443\n", "{target}");
    }
    assert_eq!(banner.connections(), 2);
}

/// A CONNECT to an HTTP port whose host's routes go to several destinations connects each of
/// them before it is answered: `200` when one is reachable (a request to the other is refused
/// inside, on its own), `502 UF` when none is, `200` without a dial when the routes answer
/// locally (a direct response needs no upstream).
#[tokio::test]
async fn connect_to_an_http_port_connects_every_destination_of_the_host() {
    let up = sluice_test_support::HttpUpstream::start(
        SocketAddr::new(free_loopback_addr(), 80),
        "split",
    )
    .await
    .expect("upstream");
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let entry = |name: &str, ip: IpAddr| {
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.example]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {ip}}}]
"#
        )
    };
    // Port 80 of an address nothing listens on.
    let down_ip = free_loopback_addr();
    let routes = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: split, namespace: default}
spec:
  hosts: [split.example]
  http:
  - match: [{uri: {prefix: /down}}]
    route: [{destination: {host: down.example}}]
  - route: [{destination: {host: split.example}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: dead, namespace: default}
spec:
  hosts: [dead.example]
  http:
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: down.example}}]
  - route: [{destination: {host: dead.example}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: local, namespace: default}
spec:
  hosts: [local.example]
  http:
  - directResponse: {status: 418, body: {string: teapot}}
"#;
    let snapshot = compile_snapshot(
        &CompileOptions::sidecar("default"),
        &[
            gateway_service(free_loopback_addr()),
            entry("split", up.addr().ip()),
            entry("down", down_ip),
            entry("dead", down_ip),
            entry("local", down_ip),
            routes.to_owned(),
        ],
    );
    let sidecar = start_sidecar(&snapshot, None, dns.addr()).await;
    let proxy = sidecar.addr(PROXY_PORT);

    // Neither destination of dead.example is reachable.
    let (_tcp, head) = open_tunnel(proxy, "dead.example:80").await;
    assert!(head.starts_with("HTTP/1.1 502 "), "{head}");
    sidecar.log_line(&["dead.example", " UF "]).await;

    // Only a direct response: nothing to connect, answered inside.
    let (mut tcp, head) = open_tunnel(proxy, "local.example:80").await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: local.example\r\n\r\n")
        .await
        .expect("write");
    let head = common::read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 418 "), "{head}");

    // One of two reachable: 200, connected before any request; the reachable route is
    // served on that connection, the other refused on its own.
    let (mut tcp, head) = open_tunnel(proxy, "split.example:80").await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let deadline = std::time::Instant::now() + STEP;
    while up.connections() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((up.connections(), up.requests()), (1, 0));
    tcp.write_all(b"GET /ok HTTP/1.1\r\nhost: split.example\r\n\r\n")
        .await
        .expect("write");
    let head = common::read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    tcp.write_all(b"GET /down HTTP/1.1\r\nhost: split.example\r\n\r\n")
        .await
        .expect("write");
    // (What is read holds the first response's body, then this head.)
    let head = common::read_head(&mut tcp).await;
    assert!(head.contains("HTTP/1.1 503 "), "{head}");
    assert_eq!((up.connections(), up.requests()), (1, 1));
}
