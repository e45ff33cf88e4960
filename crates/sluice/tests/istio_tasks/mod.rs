//! What the `istio_task_*` tests share: the task folders of
//! `testdata/acceptance/istio-tasks/` (Istio's YAML, unchanged), a config directory the steps
//! are applied into one after another (hot reload, waited for by the config generation), curl
//! as the client, and an httpbin-like stand-in for the public hosts the tasks call.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_test_support::client::curl;
use sluice_test_support::{SluiceProcess, TempDir, free_loopback_addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{ExternalHttps, Mesh, bin, gateway_at, metric, start};

/// A file of an Istio task folder, unchanged.
pub fn task_file(task: &str, file: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/acceptance/istio-tasks")
        .join(task);
    let exact = dir.join(file);
    if exact.exists() {
        return exact;
    }
    // A step's number prefix ("02") is enough.
    let found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("task folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{file}-")))
        })
        .collect();
    assert_eq!(found.len(), 1, "{task}/{file}: {found:?}");
    found[0].clone()
}

/// The directory every proxy of a test reads its config from; a step is applied by adding the
/// task's file (`kubectl apply -f`) or removing it (`kubectl delete -f`) and then publishing
/// the whole new state at once: a fresh directory swapped in by renaming a symlink, so a
/// proxy never loads half a step.
pub struct ConfigDir {
    pub dir: TempDir,
    files: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    published: std::sync::atomic::AtomicU32,
}

impl ConfigDir {
    pub fn new(name: &str) -> ConfigDir {
        ConfigDir {
            dir: TempDir::new(name),
            files: Default::default(),
            published: Default::default(),
        }
    }

    /// The config path to give the proxies (`-c`); publishes what was applied so far.
    pub fn path(&self) -> String {
        self.publish();
        self.dir.join("config").display().to_string()
    }

    /// `kubectl apply -f <task>/<file>`: the file, unchanged.
    pub fn apply(&self, task: &str, file: &str) {
        let src = task_file(task, file);
        let name = src
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&src).expect("read");
        self.files.lock().expect("lock").insert(name, text);
    }

    /// A file the test writes itself (what the cluster provides outside the task's YAML).
    pub fn write(&self, name: &str, text: &str) {
        self.files
            .lock()
            .expect("lock")
            .insert(name.to_string(), text.to_string());
    }

    /// `kubectl delete -f <task>/<file>`.
    pub fn delete(&self, task: &str, file: &str) {
        let src = task_file(task, file);
        let name = src
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(
            self.files.lock().expect("lock").remove(&name).is_some(),
            "{name} was not applied"
        );
    }

    /// `kubectl delete` of what the test wrote with [`ConfigDir::write`].
    pub fn delete_file(&self, name: &str) {
        assert!(
            self.files.lock().expect("lock").remove(name).is_some(),
            "{name} was not written"
        );
    }

    /// Makes the current set of files what the proxies read, in one rename.
    pub fn publish(&self) {
        let n = self
            .published
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let gen_dir = self.dir.join(format!("gen-{n}"));
        std::fs::create_dir(&gen_dir).expect("mkdir");
        for (name, text) in self.files.lock().expect("lock").iter() {
            std::fs::write(gen_dir.join(name), text).expect("write");
        }
        let link = self.dir.join(format!("link-{n}"));
        std::os::unix::fs::symlink(&gen_dir, &link).expect("symlink");
        std::fs::rename(&link, self.dir.join("config")).expect("swap");
    }

    /// One step of the task: `change` the files, publish, and wait until every proxy in
    /// `procs` has loaded the new generation.
    pub async fn step(&self, procs: &[&SluiceProcess], change: impl FnOnce()) {
        let before: Vec<f64> = procs.iter().map(|p| generation(p)).collect();
        change();
        self.publish();
        wait_reload(procs, &before).await;
    }
}

/// The proxy's current config generation.
pub fn generation(p: &SluiceProcess) -> f64 {
    let (_, stats) = p.admin_get("/stats/prometheus").expect("stats");
    metric(&stats, "sluice_config_generation")
}

/// Waits (bounded) until every proxy has loaded a generation after `before` (theirs, in order).
pub async fn wait_reload(procs: &[&SluiceProcess], before: &[f64]) {
    // Generous: on a loaded 2-core machine (CI runs test binaries side by side) a debug
    // build's reload of a task's whole config can take seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (p, b) in procs.iter().zip(before) {
        while generation(p) <= *b {
            assert!(
                Instant::now() < deadline,
                "no reload within 30s:\n{}",
                p.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits (bounded) until `p`'s stdout (its access log) has a line containing every needle.
pub async fn wait_log_line(p: &SluiceProcess, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = p.stdout();
        if let Some(l) = out.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needles:?} in:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `sluice sidecar` for default/curl (the tasks' `curl` sample) reading `config`, with a fast
/// reload interval; returns it with its explicit-proxy address.
pub async fn curl_sidecar(
    config: &[String],
    dns: SocketAddr,
    identity: Option<&str>,
) -> (SluiceProcess, SocketAddr) {
    curl_sidecar_env(config, dns, identity, &[]).await
}

/// [`curl_sidecar`] with extra environment (`SSL_CERT_FILE`: the platform trust store).
pub async fn curl_sidecar_env(
    config: &[String],
    dns: SocketAddr,
    identity: Option<&str>,
    env: &[(&str, &str)],
) -> (SluiceProcess, SocketAddr) {
    let ip = free_loopback_addr();
    let listen = SocketAddr::new(ip, 15001);
    let admin = SocketAddr::new(ip, 15000);
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("sidecar");
    for c in config {
        cmd.args(["-c", c]);
    }
    cmd.args(["--namespace", "default", "--service-account", "curl"]);
    cmd.args(["--labels", "app=curl"]);
    cmd.args(["--listen", &listen.to_string()]);
    cmd.args(["--admin", &admin.to_string()]);
    cmd.args(["--dns-server", &dns.to_string()]);
    cmd.args(["--allow-range", "127.0.0.0/8", "--reload-interval", "100ms"]);
    if let Some(id) = identity {
        cmd.args(["--identity-dir", id]);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    (start(cmd, admin).await, listen)
}

/// What curl printed and how it exited.
pub struct Curl {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs curl with `args` (silent, 10 s cap) and returns its exit code and output.
pub async fn run_curl(args: &[&str]) -> Curl {
    let mut all = vec!["-sS", "--max-time", "10"];
    all.extend_from_slice(args);
    let out = curl(&all).await.expect("curl runs");
    Curl {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The status lines of `curl -D -` output, e.g. `["HTTP/1.1 301 Moved Permanently", "HTTP/2 200"]`,
/// without the explicit proxy's answer to CONNECT (what a pod whose traffic is captured never
/// sees).
pub fn status_lines(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with("HTTP/") && !l.contains("Connection Established"))
        .map(|l| l.trim_end().to_string())
        .collect()
}

/// What the stand-in answers on plain HTTP.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Plain {
    /// httpbin.org: `/headers` echoes the request headers as httpbin does (`{"headers": {...}}`
    /// with canonical names), `/delay/N` answers after N seconds, `/status/N` with N, anything
    /// else 200 with the same JSON.
    Httpbin,
    /// edition.cnn.com on port 80: `301` to the same URL over https.
    RedirectToHttps,
}

/// A plain-HTTP/1.1 stand-in for a public host, on `addr`. Stops on drop.
pub struct PlainServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    pub requests: Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for PlainServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn canonical(name: &str) -> String {
    name.split('-')
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

impl PlainServer {
    /// On port 80 of a fresh loopback address.
    pub async fn start(kind: Plain) -> PlainServer {
        PlainServer::start_at(SocketAddr::new(free_loopback_addr(), 80), kind).await
    }

    pub async fn start_at(addr: SocketAddr, kind: Plain) -> PlainServer {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let mut lines = text.split("\r\n");
                    let first = lines.next().unwrap_or_default().to_string();
                    let path = first.split(' ').nth(1).unwrap_or("/").to_string();
                    let mut headers = serde_json::Map::new();
                    let mut host = String::new();
                    for l in lines.take_while(|l| !l.is_empty()) {
                        if let Some((k, v)) = l.split_once(':') {
                            if k.eq_ignore_ascii_case("host") {
                                host = v.trim().to_string();
                            }
                            headers.insert(canonical(k.trim()), v.trim().into());
                        }
                    }
                    let (status, extra, body) = match kind {
                        Plain::RedirectToHttps => (
                            "301 Moved Permanently".to_string(),
                            format!("location: https://{host}{path}\r\n"),
                            String::new(),
                        ),
                        Plain::Httpbin => {
                            let mut status = "200 OK".to_string();
                            if let Some(n) = path.strip_prefix("/delay/") {
                                let secs: u64 = n.parse().unwrap_or(0).min(10);
                                tokio::time::sleep(Duration::from_secs(secs)).await;
                            } else if let Some(n) = path.strip_prefix("/status/") {
                                status = format!("{n} X");
                            }
                            let body = serde_json::to_string_pretty(
                                &serde_json::json!({"headers": headers}),
                            )
                            .expect("json");
                            (
                                status,
                                "content-type: application/json\r\n".to_string(),
                                body,
                            )
                        }
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        PlainServer {
            addr,
            task,
            requests,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
}

/// The egress gateway's Service outside Kubernetes ([`crate::common::gateway_service`]),
/// among the files of `cfg`.
pub fn gateway_svc(cfg: &ConfigDir, gateway_ip: IpAddr, ports: &[(u16, &str, &str)]) {
    let tmp = TempDir::new("gateway-service");
    let path = crate::common::gateway_service(&tmp, gateway_ip, ports);
    cfg.write(
        "gateway-service.yaml",
        &std::fs::read_to_string(path).expect("read"),
    );
}

/// edition.cnn.com on a fresh loopback address: port 80 redirects to https, port 443 answers
/// with the certificate of a test CA `public-ca` (written into a directory `dir`, its path in
/// `ca_file`), and DNS resolves the name to it.
pub struct Cnn {
    pub http: PlainServer,
    pub https: ExternalHttps<1>,
    pub ca_file: String,
}

impl Cnn {
    pub async fn start(dir: &str) -> Cnn {
        let ip = free_loopback_addr();
        let http = PlainServer::start_at(SocketAddr::new(ip, 80), Plain::RedirectToHttps).await;
        let https =
            ExternalHttps::start_with("public-ca", dir, [("edition.cnn.com", "cnn", ip)], &[])
                .await;
        let ca_file = https.ca_file.display().to_string();
        Cnn {
            http,
            https,
            ca_file,
        }
    }

    /// The port-443 stand-in.
    pub fn upstream(&self) -> &sluice_test_support::HttpsUpstream {
        &self.https.upstreams[0]
    }

    pub fn dns(&self) -> SocketAddr {
        self.https.dns.addr()
    }
}

/// The egress gateway (its Service on ports 80 and 443, `gw_env` besides a 100 ms reload
/// interval) and the curl pod's sidecar, both reading `cfg` with SVIDs of a fresh mesh CA.
pub struct GatewayAndSidecar {
    pub mesh: Mesh,
    pub gw: SluiceProcess,
    pub sc: SluiceProcess,
    /// The sidecar's explicit-proxy URL (`http://…`).
    pub proxy: String,
}

impl GatewayAndSidecar {
    pub async fn start(
        cfg: &ConfigDir,
        dns: SocketAddr,
        gw_env: &[(&str, &str)],
    ) -> GatewayAndSidecar {
        let mesh = Mesh::new();
        let gw_ip = free_loopback_addr();
        gateway_svc(cfg, gw_ip, &[(80, "http", "HTTP"), (443, "https", "HTTPS")]);
        let gw_id = mesh.svid("istio-system", "istio-egressgateway-service-account");
        let mut env = vec![("SLUICE_RELOAD_INTERVAL", "100ms")];
        env.extend_from_slice(gw_env);
        let gw = gateway_at(gw_ip, &[cfg.path()], dns, Some(&gw_id), &env).await;
        let sc_id = mesh.svid("default", "curl");
        let (sc, proxy) = curl_sidecar(&[cfg.path()], dns, Some(&sc_id)).await;
        GatewayAndSidecar {
            mesh,
            gw,
            sc,
            proxy: format!("http://{proxy}"),
        }
    }
}

/// `curl [-L] -o /dev/null -D - -x PROXY --cacert CA_FILE URL` (the doc's `curl -I`, or
/// `curl -sSL -o /dev/null -D -` with `follow`): the heads of the responses only.
pub async fn curl_heads(proxy: &str, ca_file: &str, follow: bool, url: &str) -> Curl {
    let mut args = if follow { vec!["-L"] } else { vec![] };
    args.extend([
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-x",
        proxy,
        "--cacert",
        ca_file,
        url,
    ]);
    run_curl(&args).await
}

impl ConfigDir {
    /// `kubectl apply -n <namespace> -f <task>/<file>`: the file, each resource given the
    /// namespace kubectl gives it (the file names none).
    pub fn apply_in(&self, task: &str, file: &str, namespace: &str) {
        let src = task_file(task, file);
        let name = src
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&src).expect("read");
        assert!(!text.contains("namespace:"), "{name} names a namespace");
        let text = text.replace(
            "\nmetadata:\n",
            &format!("\nmetadata:\n  namespace: {namespace}\n"),
        );
        self.files.lock().expect("lock").insert(name, text);
    }
}

/// The tasks' `my-nginx` in namespace mesh-external: an HTTPS server on a fresh loopback
/// address, port 443, with a certificate for my-nginx.mesh-external.svc.cluster.local from the
/// task's `example.com` CA, that refuses clients without a certificate of that CA and answers
/// nginx's welcome page; and a DNS server naming it.
pub struct MyNginx {
    pub ca: sluice_test_support::TestCa,
    pub https: sluice_test_support::HttpsUpstream,
    pub dns: sluice_test_support::DnsServer,
}

pub const MY_NGINX: &str = "my-nginx.mesh-external.svc.cluster.local";

impl MyNginx {
    pub async fn start() -> MyNginx {
        let ca = sluice_test_support::TestCa::new("example.com");
        let ip = free_loopback_addr();
        let https = sluice_test_support::HttpsUpstream::start(
            SocketAddr::new(ip, 443),
            &ca.server_cert(&[MY_NGINX]),
            "my-nginx",
            sluice_test_support::UpstreamOptions::default()
                .require_client_cert(&ca)
                .respond(
                    "/",
                    200,
                    "<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>\n</head>\n</html>\n",
                ),
        )
        .await
        .expect("my-nginx");
        let dns = sluice_test_support::DnsServer::start([(MY_NGINX, vec![ip])])
            .await
            .expect("dns");
        MyNginx { ca, https, dns }
    }

    /// `curl -sS http://my-nginx.mesh-external.svc.cluster.local` through `proxy` answers
    /// Welcome to nginx (one more request, over mutual TLS); `logged_by` logs it with
    /// `cluster`. Returns the log line.
    pub async fn expect_welcome(
        &self,
        proxy: &str,
        logged_by: &SluiceProcess,
        cluster: &str,
    ) -> String {
        let before = self.https.requests();
        let out = run_curl(&["-sS", "-x", proxy, &format!("http://{MY_NGINX}")]).await;
        assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
        assert!(
            out.stdout.starts_with("<!DOCTYPE html>")
                && out.stdout.contains("<title>Welcome to nginx!</title>"),
            "{}",
            out.stdout
        );
        assert_eq!(
            self.https.requests(),
            before + 1,
            "one request, over mutual TLS"
        );
        let line = wait_log_line(logged_by, &["\"GET / HTTP/1.1\" 200", cluster]).await;
        assert!(line.contains(&format!("\"{MY_NGINX}\"")), "{line}");
        line
    }

    /// `istioctl proxy-config secret … | grep client-credential`, as `sluice proxy-config
    /// secret` against `proxy`'s admin API: the client certificate and its CA, both
    /// `Cert Chain  ACTIVE  true` (Istio's doc test asserts these columns; the spacing is the
    /// table's own).
    pub fn expect_secrets(&self, proxy: &SluiceProcess) {
        let out = std::process::Command::new(bin())
            .args([
                "proxy-config",
                "secret",
                "--admin",
                &proxy.admin().to_string(),
            ])
            .output()
            .expect("sluice proxy-config secret");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<Vec<&str>> = text
            .lines()
            .filter(|l| l.contains("client-credential"))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows.len(), 2, "{text}");
        for (row, name) in rows.iter().zip([
            "kubernetes://client-credential",
            "kubernetes://client-credential-cacert",
        ]) {
            assert_eq!(
                row[..5],
                [name, "Cert", "Chain", "ACTIVE", "true"],
                "{text}"
            );
            assert!(
                row[5].bytes().all(|b| b.is_ascii_digit()),
                "a decimal serial: {text}"
            );
        }
    }

    /// The same request once the credential is gone: `502`, logged `UH` by `logged_by`, and
    /// nothing reaches nginx.
    pub async fn expect_refused(&self, proxy: &str, logged_by: &SluiceProcess) {
        let before = self.https.requests();
        let url = format!("http://{MY_NGINX}");
        let out = run_curl(&[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-x",
            proxy,
            &url,
        ])
        .await;
        assert_eq!(out.stdout, "502", "{}\n{}", out.stderr, logged_by.stderr());
        wait_log_line(
            logged_by,
            &["\"GET / HTTP/1.1\" 502 UH no_healthy_upstream"],
        )
        .await;
        assert_eq!(self.https.requests(), before);
    }

    /// What `kubectl create secret [-n NS] generic client-credential
    /// --from-file=tls.key=client.example.com.key --from-file=tls.crt=client.example.com.crt
    /// --from-file=ca.crt=example.com.crt` creates (as `kubectl get secret -o yaml` shows it).
    pub fn client_credential(&self, namespace: &str) -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let client = self.ca.client_cert("client.example.com", None);
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: client-credential\n  namespace: {namespace}\ntype: Opaque\ndata:\n  ca.crt: {}\n  tls.crt: {}\n  tls.key: {}\n",
            b64(&self.ca.cert_pem()),
            b64(&client.cert_pem),
            b64(&client.key_pem),
        )
    }
}
