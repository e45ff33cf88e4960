//! The gateway end of the mesh hop: sidecars (played here by rustls clients with SVIDs from a
//! mesh CA, offering ALPN `istio`) reach the gateway over mesh mTLS; the gateway terminates it
//! on any server, learns the peer's principal from the verified certificate, serves the inner
//! stream by the server's protocol, and enforces AuthorizationPolicies compiled from YAML.
//! Real sockets on loopback, real TLS, a real DNS server; every wait is bounded.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use sluice_identity::mtls::MeshServerVerifier;
use sluice_identity::{Ca, ExpectedPeer, Identity, IdentityFiles, IdentityWatcher, Svid, Validity};
use sluice_test_support::client::http_request;
use sluice_test_support::{
    DnsServer, HttpUpstream, HttpsUpstream, TcpUpstream, TempDir, TestCa, UpstreamOptions,
    free_loopback_addr,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

type TestResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const STEP: Duration = Duration::from_secs(10);
const GITHUB: &str = "outbound|443||api.github.com";
const BACKEND: &str = "outbound|80||backend.example.com";
const GATEWAY_NS: &str = "istio-system";
const GATEWAY_SA: &str = "istio-egressgateway-service-account";

fn guide(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/guide")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// AuthorizationPolicies compiled for the gateway (`istio=egressgateway` in istio-system), as
/// the snapshot's `authz` JSON.
fn policies(yaml: &str) -> Value {
    let loaded = sluice_model::load_str("policies.yaml", yaml);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let labels = BTreeMap::from([("istio".to_owned(), "egressgateway".to_owned())]);
    let (policies, _) = sluice_compile::authz::compile_policies(
        &loaded.resources,
        GATEWAY_NS,
        &labels,
        sluice_compile::authz::ROOT_NAMESPACE,
    );
    assert!(!policies.is_empty());
    serde_json::to_value(&policies).expect("policies json")
}

/// A mesh CA, the gateway's identity (watched from disk) and the sidecars' SVIDs.
struct Mesh {
    dir: TempDir,
    ca: Ca,
}

impl Mesh {
    fn new() -> Mesh {
        Mesh {
            dir: TempDir::new("mesh-gateway"),
            ca: Ca::generate("cluster.local").expect("mesh CA"),
        }
    }

    fn svid(&self, ns: &str, sa: &str) -> Svid {
        self.ca
            .issue(ns, sa, Validity::from_now(Duration::from_secs(3600)))
            .expect("issue")
    }

    /// A sidecar's identity, as its watcher would hold it.
    fn files(&self, ns: &str, sa: &str) -> Arc<IdentityFiles> {
        let svid = self.svid(ns, sa);
        Arc::new(
            IdentityFiles::from_pem(
                svid.cert_pem.as_bytes(),
                svid.key_pem.as_bytes(),
                svid.ca_pem.as_bytes(),
            )
            .expect("identity files"),
        )
    }

    /// The gateway's identity dir, watched as `--identity-dir` is.
    fn gateway_identity(&self) -> watch::Receiver<Arc<IdentityFiles>> {
        let out = self.dir.join("gateway");
        self.svid(GATEWAY_NS, GATEWAY_SA)
            .write(&out)
            .expect("write svid");
        IdentityWatcher::start(out, Duration::from_millis(200)).expect("identity watcher")
    }
}

fn gateway_id() -> Identity {
    Identity::spiffe("cluster.local", GATEWAY_NS, GATEWAY_SA).expect("id")
}

/// The sidecar's end of the mesh hop: its SVID, the gateway's identity checked, ALPN `istio`.
async fn mesh_connect(
    addr: SocketAddr,
    me: Arc<IdentityFiles>,
    sni: &str,
) -> TestResult<TlsStream<TcpStream>> {
    let (_tx, rx) = watch::channel(me);
    let config = sluice_identity::client_config(rx, ExpectedPeer::Identity(gateway_id()))?;
    connect_with(addr, config, sni).await
}

/// A mesh client that presents `client` (any certificate, or none), offering ALPN `istio` and
/// checking the gateway against `trust`'s bundle.
fn raw_mesh_config(
    trust: Arc<IdentityFiles>,
    client: Option<(&str, &str)>,
) -> TestResult<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (_tx, rx) = watch::channel(trust);
    let verifier = MeshServerVerifier::new(
        rx,
        ExpectedPeer::TrustDomain("cluster.local".into()),
        provider.clone(),
    );
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match client {
        Some((cert, key)) => {
            let chain =
                CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<_, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes())?)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"istio".to_vec()];
    Ok(config)
}

async fn connect_with(
    addr: SocketAddr,
    config: rustls::ClientConfig,
    sni: &str,
) -> TestResult<TlsStream<TcpStream>> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(sni.to_owned())?;
        Ok(TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?)
    };
    tokio::time::timeout(STEP, fut).await?
}

/// One HTTP/1.1 request over `io`.
async fn http1<I>(io: I, req: Request<String>) -> TestResult<(u16, HeaderMap, String)>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let fut = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        let conn = tokio::spawn(conn);
        let resp = sender
            .send_request(req.map(|b| Full::new(Bytes::from(b))))
            .await;
        let result: TestResult<_> = async {
            let (parts, body) = resp?.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok((
                parts.status.as_u16(),
                parts.headers,
                String::from_utf8_lossy(&body).into_owned(),
            ))
        }
        .await;
        conn.abort();
        result
    };
    tokio::time::timeout(STEP, fut).await?
}

fn get(host: &str, path: &str) -> Request<String> {
    Request::get(path)
        .header("host", host)
        .body(String::new())
        .expect("request")
}

/// The app's own TLS inside the mesh hop: a handshake with `sni`, then `GET path`.
async fn inner_https_get(
    mesh: TlsStream<TcpStream>,
    sni: &str,
    roots: &RootCertStore,
    path: &str,
) -> TestResult<(u16, HeaderMap, String)> {
    let mut config = sluice_test_support::ca::client_config(roots.clone(), None);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(sni.to_owned())?;
    let inner = tokio::time::timeout(
        STEP,
        TlsConnector::from(Arc::new(config)).connect(name, mesh),
    )
    .await??;
    http1(inner, get(sni, path)).await
}

/// A ready gateway with `snapshot`, the mesh identity (if any), DNS.
async fn gateway(
    snapshot: Value,
    identity: Option<watch::Receiver<Arc<IdentityFiles>>>,
    dns: Option<SocketAddr>,
) -> Running {
    start_with(snapshot, move |c| {
        c.identity = identity;
        c.dns_server = dns;
    })
    .await
}

/// api.github.com behind a passthrough server on 443, plus what the tests around it need.
struct Github {
    upstream: HttpsUpstream,
    _dns: DnsServer,
    dns_addr: SocketAddr,
    roots: RootCertStore,
}

async fn github() -> Github {
    let ca = TestCa::new("external-ca");
    let ip = free_loopback_addr();
    let upstream = HttpsUpstream::start(
        SocketAddr::new(ip, 443),
        &ca.server_cert(&["api.github.com"]),
        "github",
        UpstreamOptions::default(),
    )
    .await
    .expect("github");
    let dns = DnsServer::start([("api.github.com", vec![ip])])
        .await
        .expect("dns");
    Github {
        upstream,
        dns_addr: dns.addr(),
        _dns: dns,
        roots: ca.ca_root_store(),
    }
}

fn github_cluster() -> Value {
    cluster(
        GITHUB,
        "api.github.com",
        443,
        dns_discovery("api.github.com"),
        json!({}),
    )
}

/// The guide's `production-egress-setup.yaml` shape: a PASSTHROUGH server for api.github.com,
/// with the guide's `authz-egress-policy.yaml`.
fn passthrough_snapshot() -> Value {
    let mut snap = snapshot(
        vec![listener(
            443,
            vec![passthrough_chain("tls-github", &["api.github.com"], GITHUB)],
        )],
        vec![github_cluster()],
    );
    snap["authz"] = policies(&guide("authz-egress-policy.yaml"));
    snap
}

#[tokio::test]
async fn frontend_reaches_api_github_through_the_mesh_hop_and_backend_is_refused() {
    let mesh = Mesh::new();
    let gh = github().await;
    let proxy = gateway(
        passthrough_snapshot(),
        Some(mesh.gateway_identity()),
        Some(gh.dns_addr),
    )
    .await;

    // frontend: the inner ClientHello's SNI chooses the passthrough chain; the policy allows
    // principal frontend + host api.github.com + port 443.
    let hop = mesh_connect(
        proxy.addr(443),
        mesh.files("default", "frontend"),
        "api.github.com",
    )
    .await
    .expect("mesh hop");
    let (status, _, body) = inner_https_get(hop, "api.github.com", &gh.roots, "/repos")
        .await
        .expect("frontend through the gateway");
    assert_eq!(status, 200, "{body}");
    let echo = echo(&body);
    assert_eq!(echo["upstream"], "github");
    // Passed through untouched: the upstream saw the app's own SNI.
    assert_eq!(echo["sni"], "api.github.com");
    let line = proxy
        .log_line(&[GITHUB, "api.github.com", "tls-github"])
        .await;
    assert!(!line.contains("rbac_access_denied"), "{line}");

    // backend: allowed only to api.stripe.com. Closed before any upstream is dialed.
    let before = gh.upstream.connections();
    let hop = mesh_connect(
        proxy.addr(443),
        mesh.files("default", "backend"),
        "api.github.com",
    )
    .await
    .expect("mesh hop");
    let refused = inner_https_get(hop, "api.github.com", &gh.roots, "/repos").await;
    assert!(refused.is_err(), "{refused:?}");
    let line = proxy
        .log_line(&["rbac_access_denied_matched_policy[none]", "api.github.com"])
        .await;
    assert!(line.contains(" 0 - - rbac_access_denied"), "{line}");
    assert_eq!(gh.upstream.connections(), before, "no upstream contact");

    // A plain TLS client (no mesh layer) has no principal: refused all the same.
    let plain = sluice_test_support::client::https_get(
        proxy.addr(443),
        "api.github.com",
        "api.github.com",
        "/repos",
        &gh.roots,
        None,
    )
    .await;
    assert!(plain.is_err(), "{plain:?}");
    assert_eq!(gh.upstream.connections(), before, "no upstream contact");

    let metrics = proxy.metrics();
    let opened = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/frontend\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")
        })
        .unwrap_or_else(|| panic!("no frontend TCP metric in\n{metrics}"));
    assert!(opened.ends_with(" 1"), "{opened}");
    for needle in [
        "source_principal=\"spiffe://cluster.local/ns/default/sa/backend\"",
        "sluice_authz_decisions_total{protocol=\"tcp\",decision=\"denied\",policy=\"none\"",
        "policy=\"ns[istio-system]-policy[egress-gateway-authz]-rule[0]\"",
        "connection_security_policy=\"none\"",
    ] {
        assert!(metrics.contains(needle), "{needle} missing in\n{metrics}");
    }
}

#[tokio::test]
async fn http_inside_the_mesh_hop_is_authorized_by_principal_host_and_path() {
    let mesh = Mesh::new();
    let backend = HttpUpstream::start("127.0.0.1:0".parse().expect("addr"), "backend")
        .await
        .expect("backend");
    // Istio's own egress-gateway authz test (acceptance A1), without the JWT rules.
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: egress-http
  namespace: istio-system
spec:
  selector:
    matchLabels:
      istio: egressgateway
  action: ALLOW
  rules:
  - to:
    - operation:
        hosts: ["www.company.com"]
        paths: ["/allow"]
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/frontend"]
    to:
    - operation:
        hosts: ["frontend-only.com"]
"#;
    let mut snap = snapshot(
        vec![listener(
            80,
            vec![http_chain(
                80,
                vec![vhost(&["*"], vec![forward_route("all", BACKEND)])],
            )],
        )],
        vec![cluster(
            BACKEND,
            "backend.example.com",
            80,
            static_endpoints(&[backend.addr()]),
            json!({}),
        )],
    );
    snap["authz"] = policies(yaml);
    let proxy = gateway(snap, Some(mesh.gateway_identity()), None).await;
    let frontend = mesh.files("default", "frontend");
    let via_mesh = |me: Arc<IdentityFiles>, req: Request<String>| {
        let addr = proxy.addr(80);
        async move {
            let hop = mesh_connect(addr, me, "www.company.com").await?;
            http1(hop, req).await
        }
    };

    let (status, _, body) = via_mesh(frontend.clone(), get("www.company.com", "/allow"))
        .await
        .expect("allowed");
    assert_eq!(status, 200, "{body}");
    assert_eq!(echo(&body)["upstream"], "backend");

    let (status, _, body) = via_mesh(frontend.clone(), get("www.company.com", "/deny"))
        .await
        .expect("denied");
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));

    let (status, _, body) = via_mesh(frontend.clone(), get("frontend-only.com", "/"))
        .await
        .expect("frontend");
    assert_eq!(status, 200, "{body}");
    // The gateway never forwards a client-certificate header it did not verify.
    assert!(
        echo(&body)["headers"]
            .get("x-forwarded-client-cert")
            .is_none()
    );

    let before = backend.requests();
    let (status, _, body) = via_mesh(
        mesh.files("default", "backend"),
        get("frontend-only.com", "/"),
    )
    .await
    .expect("backend");
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    assert_eq!(
        backend.requests(),
        before,
        "a denied request reaches no upstream"
    );

    // Without the mesh layer there is no principal, whatever the headers claim.
    let forged = Request::get("/")
        .header("host", "frontend-only.com")
        .header(
            "x-forwarded-client-cert",
            "By=spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account;URI=spiffe://cluster.local/ns/default/sa/frontend",
        )
        .body(String::new())
        .expect("request");
    let (status, _, body) = http_request(proxy.addr(80), forged).await.expect("forged");
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    let forged = Request::get("/allow")
        .header("host", "www.company.com")
        .header(
            "x-forwarded-client-cert",
            "URI=spiffe://cluster.local/ns/default/sa/frontend",
        )
        .body(String::new())
        .expect("request");
    let (status, _, body) = http_request(proxy.addr(80), forged).await.expect("plain");
    assert_eq!(status, 200, "{body}");
    assert!(
        echo(&body)["headers"]
            .get("x-forwarded-client-cert")
            .is_none()
    );

    let line = proxy
        .log_line(&["\"GET /deny HTTP/1.1\" 403 - rbac_access_denied_matched_policy[none]"])
        .await;
    assert!(line.contains("www.company.com"), "{line}");
    let metrics = proxy.metrics();
    for needle in [
        "response_code=\"403\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/frontend\"",
        "connection_security_policy=\"mutual_tls\"",
        "sluice_authz_decisions_total{protocol=\"http\",decision=\"allowed\",policy=\"ns[istio-system]-policy[egress-http]-rule[1]\"",
        "sluice_authz_decisions_total{protocol=\"http\",decision=\"denied\",policy=\"none\"",
    ] {
        assert!(metrics.contains(needle), "{needle} missing in\n{metrics}");
    }
    let denied_by_principal = metrics.lines().any(|l| {
        l.starts_with("istio_requests_total{")
            && l.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/backend\"")
            && l.contains("response_code=\"403\"")
            && l.contains("response_flags=\"-\"")
    });
    assert!(denied_by_principal, "{metrics}");
}

#[tokio::test]
async fn certificates_from_another_ca_expired_or_missing_get_no_principal() {
    let mesh = Mesh::new();
    let gh = github().await;
    let proxy = gateway(
        passthrough_snapshot(),
        Some(mesh.gateway_identity()),
        Some(gh.dns_addr),
    )
    .await;
    let trust = mesh.files("default", "frontend");

    let other = Ca::generate("cluster.local")
        .expect("other CA")
        .issue(
            "default",
            "frontend",
            Validity::from_now(Duration::from_secs(3600)),
        )
        .expect("issue");
    let now = SystemTime::now();
    let expired = mesh
        .ca
        .issue(
            "default",
            "frontend",
            Validity {
                not_before: now - Duration::from_secs(7200),
                not_after: now - Duration::from_secs(3600),
            },
        )
        .expect("issue expired");
    let cases: [(&str, Option<(&str, &str)>); 3] = [
        ("another CA", Some((&other.cert_pem, &other.key_pem))),
        ("expired", Some((&expired.cert_pem, &expired.key_pem))),
        ("no certificate", None),
    ];
    for (what, client) in cases {
        let config = raw_mesh_config(trust.clone(), client).expect("client config");
        // TLS 1.3: the client may finish its side before the gateway refuses the certificate;
        // then the first use of the stream fails.
        let outcome = match connect_with(proxy.addr(443), config, "api.github.com").await {
            Ok(hop) => inner_https_get(hop, "api.github.com", &gh.roots, "/").await,
            Err(e) => Err(e),
        };
        assert!(outcome.is_err(), "{what}: {outcome:?}");
    }
    assert_eq!(gh.upstream.connections(), 0, "no upstream contact");
    proxy.wait_lines(&["mesh_mtls_handshake_failed"], 3).await;
    let log = proxy.log_text();
    assert_eq!(
        log.matches("mesh_mtls_handshake_failed").count(),
        3,
        "{log}"
    );
    assert!(!log.contains("rbac_access_denied"), "{log}");

    // A valid SVID still gets through the same gateway.
    let hop = mesh_connect(proxy.addr(443), trust, "api.github.com")
        .await
        .expect("mesh hop");
    let (status, _, _) = inner_https_get(hop, "api.github.com", &gh.roots, "/")
        .await
        .expect("frontend");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_gateway_without_identity_closes_mesh_connections() {
    let mesh = Mesh::new();
    let gh = github().await;
    let mut snap = passthrough_snapshot();
    snap["authz"] = json!({});
    let proxy = gateway(snap, None, Some(gh.dns_addr)).await;

    let outcome = match mesh_connect(
        proxy.addr(443),
        mesh.files("default", "frontend"),
        "api.github.com",
    )
    .await
    {
        Ok(hop) => inner_https_get(hop, "api.github.com", &gh.roots, "/").await,
        Err(e) => Err(e),
    };
    assert!(outcome.is_err(), "{outcome:?}");
    proxy.log_line(&["mesh_mtls_without_identity"]).await;
    assert_eq!(gh.upstream.connections(), 0);

    // TLS without the mesh layer keeps today's behaviour: passed through by its SNI.
    let (status, _, _) = sluice_test_support::client::https_get(
        proxy.addr(443),
        "api.github.com",
        "api.github.com",
        "/",
        &gh.roots,
        None,
    )
    .await
    .expect("plain passthrough");
    assert_eq!(status, 200);
}

/// istio.io's own shape: a Gateway server with `tls.mode: ISTIO_MUTUAL` (the sidecar's
/// DestinationRule subset sends ISTIO_MUTUAL with `sni: <external host>`). HTTPS: HTTP inside;
/// TLS: the app's own TLS inside, routed by its SNI.
#[tokio::test]
async fn istio_mutual_servers_terminate_mesh_mtls_with_the_workload_identity() {
    let mesh = Mesh::new();
    let gh = github().await;
    let backend = HttpUpstream::start("127.0.0.1:0".parse().expect("addr"), "backend")
        .await
        .expect("backend");
    let istio_mutual = json!({"mode": "ISTIO_MUTUAL", "certificate_chain": "", "private_key": ""});
    let https_server = json!({
        "name": "istio-system/egress/https-80",
        "match": {"transport": "tls", "server_names": ["edition.cnn.com"]},
        "tls": istio_mutual,
        "app": {"http": {"route_config": "https.80", "virtual_hosts": [
            vhost(&["edition.cnn.com"], vec![forward_route("cnn", BACKEND)]),
        ]}},
    });
    let tls_server = json!({
        "name": "istio-egress/egressgateway/tls-8443",
        "match": {"transport": "tls"},
        "tls": istio_mutual,
        "app": {"tcp": {"routes": [{
            "name": "github",
            "sni": ["api.github.com"],
            "clusters": [{"cluster": GITHUB, "weight": 100}],
        }]}},
    });
    let mut snap = snapshot(
        vec![
            listener(80, vec![https_server]),
            listener(8443, vec![tls_server]),
        ],
        vec![
            cluster(
                BACKEND,
                "backend.example.com",
                80,
                static_endpoints(&[backend.addr()]),
                json!({}),
            ),
            github_cluster(),
        ],
    );
    snap["authz"] = policies(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: frontend-only
  namespace: istio-system
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        namespaces: ["default"]
        principals: ["cluster.local/ns/default/sa/frontend"]
"#,
    );
    let proxy = gateway(snap, Some(mesh.gateway_identity()), Some(gh.dns_addr)).await;

    let hop = mesh_connect(
        proxy.addr(80),
        mesh.files("default", "frontend"),
        "edition.cnn.com",
    )
    .await
    .expect("mesh hop");
    let (status, _, body) = http1(hop, get("edition.cnn.com", "/politics"))
        .await
        .expect("frontend");
    assert_eq!(status, 200, "{body}");
    let echo_doc = echo(&body);
    assert_eq!(echo_doc["path"], "/politics");
    assert_eq!(echo_doc["headers"]["x-forwarded-proto"], "https");

    let hop = mesh_connect(proxy.addr(80), mesh.files("data", "etl"), "edition.cnn.com")
        .await
        .expect("mesh hop");
    let (status, _, body) = http1(hop, get("edition.cnn.com", "/politics"))
        .await
        .expect("etl");
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));

    // A client without a mesh certificate cannot even finish the handshake.
    let config = raw_mesh_config(mesh.files("default", "frontend"), None).expect("config");
    let no_cert = match connect_with(proxy.addr(80), config, "edition.cnn.com").await {
        Ok(hop) => http1(hop, get("edition.cnn.com", "/politics")).await,
        Err(e) => Err(e),
    };
    assert!(no_cert.is_err(), "{no_cert:?}");

    // The TLS server: the app's TLS inside mesh mTLS, passed through by its own SNI.
    let hop = mesh_connect(
        proxy.addr(8443),
        mesh.files("default", "frontend"),
        "api.github.com",
    )
    .await
    .expect("mesh hop");
    let (status, _, body) = inner_https_get(hop, "api.github.com", &gh.roots, "/")
        .await
        .expect("frontend tls");
    assert_eq!(status, 200, "{body}");
    assert_eq!(echo(&body)["sni"], "api.github.com");
    let hop = mesh_connect(
        proxy.addr(8443),
        mesh.files("data", "etl"),
        "api.github.com",
    )
    .await
    .expect("mesh hop");
    let refused = inner_https_get(hop, "api.github.com", &gh.roots, "/").await;
    assert!(refused.is_err(), "{refused:?}");
    let line = proxy
        .log_line(&[
            "rbac_access_denied_matched_policy[none]",
            "istio-egress/egressgateway/tls-8443",
        ])
        .await;
    assert!(line.contains("api.github.com"), "{line}");
}

/// Reads the TCP stand-in's banner, then checks that it echoes.
async fn banner_and_echo<I: AsyncRead + AsyncWrite + Unpin>(io: I) -> TestResult<String> {
    let fut = async {
        let mut reader = BufReader::new(io);
        let mut banner = String::new();
        reader.read_line(&mut banner).await?;
        if banner.is_empty() {
            return Err("closed before the banner".into());
        }
        reader.get_mut().write_all(b"ping\n").await?;
        let mut echoed = String::new();
        reader.read_line(&mut echoed).await?;
        if echoed != "ping\n" {
            return Err(format!("echo: {echoed:?}").into());
        }
        Ok(banner.trim_end().to_owned())
    };
    tokio::time::timeout(STEP, fut).await?
}

/// The guide's rule 3: namespace `data` may reach external-db.example.com:5432 over TCP. The
/// host is the one the sidecar named on the mesh hop (its SNI), sluice's documented
/// difference from Istio, where `hosts` never matches TCP.
#[tokio::test]
async fn tcp_inside_the_mesh_hop_is_authorized_by_the_host_the_sidecar_named() {
    const DB: &str = "outbound|5432||external-db.example.com";
    let mesh = Mesh::new();
    let db = TcpUpstream::start("127.0.0.1:0".parse().expect("addr"), "db")
        .await
        .expect("db");
    let mut snap = snapshot(
        vec![listener(5432, vec![tcp_chain("tcp-db", DB)])],
        vec![cluster(
            DB,
            "external-db.example.com",
            5432,
            static_endpoints(&[db.addr()]),
            json!({}),
        )],
    );
    snap["authz"] = policies(&guide("authz-egress-policy.yaml"));
    let proxy = gateway(snap, Some(mesh.gateway_identity()), None).await;

    let hop = mesh_connect(
        proxy.addr(5432),
        mesh.files("data", "etl"),
        "external-db.example.com",
    )
    .await
    .expect("mesh hop");
    assert_eq!(
        banner_and_echo(hop).await.expect("etl reaches the db"),
        "db"
    );

    let hop = mesh_connect(
        proxy.addr(5432),
        mesh.files("default", "frontend"),
        "external-db.example.com",
    )
    .await
    .expect("mesh hop");
    assert!(banner_and_echo(hop).await.is_err());
    let line = proxy
        .log_line(&[
            "rbac_access_denied_matched_policy[none]",
            "external-db.example.com",
        ])
        .await;
    assert!(line.contains("tcp-db"), "{line}");

    // A client without the mesh layer (a server-first protocol: it waits for the banner) has
    // neither a principal nor a host: refused after the short mesh-detection wait.
    let started = std::time::Instant::now();
    let tcp = TcpStream::connect(proxy.addr(5432)).await.expect("connect");
    assert!(banner_and_echo(tcp).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(db.connections(), 1, "only etl reached the db");
}

/// Writes a line on an open stream to the TCP stand-in and reads its echo.
async fn echo_line<I: AsyncRead + AsyncWrite + Unpin>(
    reader: &mut BufReader<I>,
    line: &str,
) -> TestResult<()> {
    let fut = async {
        reader
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await?;
        let mut echoed = String::new();
        reader.read_line(&mut echoed).await?;
        if echoed.trim_end() != line {
            return Err(format!("echo: {echoed:?}").into());
        }
        Ok(())
    };
    tokio::time::timeout(STEP, fut).await?
}

/// Open tunnels are decided again on every new snapshot (as ztunnel's policy watcher does): a
/// reload that still allows a stream leaves it open; one whose AuthorizationPolicy denies it,
/// or whose routes no longer lead to its cluster, closes it within a second, logged and
/// counted.
#[tokio::test]
async fn open_tunnels_are_closed_when_a_reload_revokes_them() {
    const DB: &str = "outbound|5432||external-db.example.com";
    let mesh = Mesh::new();
    let db = TcpUpstream::start("127.0.0.1:0".parse().expect("addr"), "db")
        .await
        .expect("db");
    let snap_with = |policy: &str, cluster_name: &str| {
        let mut snap = snapshot(
            vec![listener(5432, vec![tcp_chain("tcp-db", cluster_name)])],
            vec![cluster(
                cluster_name,
                "external-db.example.com",
                5432,
                static_endpoints(&[db.addr()]),
                json!({}),
            )],
        );
        snap["authz"] = policies(policy);
        snap
    };
    let allow_data = guide("authz-egress-policy.yaml");
    let proxy = gateway(
        snap_with(&allow_data, DB),
        Some(mesh.gateway_identity()),
        None,
    )
    .await;
    // A published snapshot reaches new connections a moment later (it is applied off the
    // async runtime): try until the stream is let through, bounded.
    let open = || async {
        for _ in 0..100 {
            let hop = mesh_connect(
                proxy.addr(5432),
                mesh.files("data", "etl"),
                "external-db.example.com",
            )
            .await
            .expect("mesh hop");
            let mut reader = BufReader::new(hop);
            let mut banner = String::new();
            if let Ok(Ok(_)) = tokio::time::timeout(STEP, reader.read_line(&mut banner)).await
                && banner == "db\n"
            {
                return reader;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("etl never reached the db");
    };
    let closed_within_a_second = |mut reader: BufReader<_>| async move {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut rest),
        )
        .await;
        assert!(read.is_ok(), "the revoked stream is still open");
    };

    // The same policies, published again: nothing changes for the open stream.
    let mut etl = open().await;
    echo_line(&mut etl, "before").await.expect("echo");
    proxy.publish(snap_with(&allow_data, DB));
    tokio::time::sleep(Duration::from_millis(200)).await;
    echo_line(&mut etl, "still allowed")
        .await
        .expect("echo after an allowing reload");

    // A policy that no longer lets namespace `data` in: closed.
    let only_frontend = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: frontend-only
  namespace: istio-system
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        namespaces: ["default"]
"#;
    proxy.publish(snap_with(only_frontend, DB));
    closed_within_a_second(etl).await;
    proxy
        .log_line(&["rbac_access_denied_matched_policy[none]", "tcp-db"])
        .await;

    // Allowed again, then the route moves to another cluster: closed as well.
    proxy.publish(snap_with(&allow_data, DB));
    let etl = open().await;
    proxy.publish(snap_with(
        &allow_data,
        "outbound|5432||other-db.example.com",
    ));
    closed_within_a_second(etl).await;
    proxy.log_line(&["route_revoked"]).await;
    let metrics = proxy.metrics();
    for needle in [
        r#"sluice_refused_total{check="revoked",reason="rbac_access_denied"} 1"#,
        r#"sluice_refused_total{check="revoked",reason="route_revoked"} 1"#,
    ] {
        assert!(metrics.contains(needle), "{needle} in\n{metrics}");
    }
}

/// "Each service account gets N to the partner API": the global rate limit's descriptor is
/// the principal of the mesh hop (CEL `source.principal`), taken from the verified client
/// certificate, so one sidecar's quota is its own and a header cannot borrow another's. The
/// counters live in a real redis-server. Also: `x-ratelimit-*` headers (DRAFT_VERSION_03).
#[tokio::test]
async fn global_rate_limit_counts_each_principal_separately() {
    let mesh = Mesh::new();
    let redis = sluice_test_support::RedisServer::start().expect("redis-server");
    let backend = HttpUpstream::start("127.0.0.1:0".parse().expect("addr"), "backend")
        .await
        .expect("backend");
    let mut snap = snapshot(
        vec![listener(
            80,
            vec![http_chain(
                80,
                vec![vhost(&["*"], vec![forward_route("all", BACKEND)])],
            )],
        )],
        vec![cluster(
            BACKEND,
            "backend.example.com",
            80,
            static_endpoints(&[backend.addr()]),
            json!({}),
        )],
    );
    snap["rate_limits"] = json!({"http.80": {
        "filters": [],
        "global": {
            "name": "envoy.filters.http.ratelimit",
            "origin": "EnvoyFilter istio-system/per-sa configPatches[0]",
            "position": 0, "domain": "egress", "stage": 0, "timeout": "1s",
            "failure_mode_deny": false, "status": 429, "error_status": 500,
            "x_envoy_ratelimited": true, "x_ratelimit_headers": true
        },
        "actions": {"virtual_hosts": {"*:80": [{"stage": 0, "actions": [
            {"source_principal": {"key": "principal", "skip_if_absent": false}}
        ]}]}}
    }});
    snap["rate_limit_domains"] = json!({"egress": [{
        "key": "principal",
        "limit": {"requests_per_unit": 2, "unit_seconds": 3600, "unit": "hour"}
    }]});
    let identity = Some(mesh.gateway_identity());
    let url = redis.url();
    let proxy = start_with(snap, move |c| {
        c.identity = identity;
        c.rate_limit_redis = Some(url);
    })
    .await;
    let addr = proxy.addr(80);
    let as_sa = |sa: &'static str| {
        let me = mesh.files("default", sa);
        async move {
            let hop = mesh_connect(addr, me, "www.partner.com").await?;
            let mut req = get("www.partner.com", "/");
            // A client-written header does not name the principal.
            req.headers_mut().insert(
                "x-forwarded-client-cert",
                "By=spiffe://x;URI=spiffe://cluster.local/ns/default/sa/b".parse()?,
            );
            http1(hop, req).await
        }
    };
    let mut a = Vec::new();
    for _ in 0..3 {
        a.push(as_sa("a").await.expect("request as a"));
    }
    let statuses: Vec<u16> = a.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [200, 200, 429], "sa a: 2 per hour");
    assert_eq!(a[0].1["x-ratelimit-limit"], "2, 2;w=3600");
    assert_eq!(a[0].1["x-ratelimit-remaining"], "1");
    assert_eq!(a[2].1["x-envoy-ratelimited"], "true");
    assert_eq!(a[2].1["x-ratelimit-remaining"], "0");
    // Another service account has its own quota.
    assert_eq!(as_sa("b").await.expect("request as b").0, 200);
    // Plaintext (no principal): the descriptor cannot be built, so no limit applies.
    let plain = http1(
        TcpStream::connect(addr).await.expect("tcp"),
        get("www.partner.com", "/"),
    )
    .await
    .expect("plaintext");
    assert_eq!(plain.0, 200);
    let labels = format!("cluster_name=\"{BACKEND}\"");
    assert_eq!(
        proxy.metric("envoy_cluster_ratelimit_over_limit_total", &labels),
        1
    );
    assert_eq!(proxy.metric("envoy_cluster_ratelimit_ok_total", &labels), 3);
    proxy.stop().await;
}
