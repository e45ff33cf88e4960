//! istio.io task "Egress TLS Origination" (`testdata/acceptance/istio-tasks/egress-tls-origination`):
//! the sidecar originates TLS for plain `http://edition.cnn.com`. Its YAML unchanged, applied in
//! the documented order with hot reload; edition.cnn.com is a loopback stand-in whose
//! certificate the sidecar trusts through `SSL_CERT_FILE` (the DestinationRule names no CA).

mod common;
mod istio_tasks;

use istio_tasks::{
    Cnn, ConfigDir, MyNginx, curl_heads, curl_sidecar_env, status_lines, wait_log_line,
};

const TASK: &str = "egress-tls-origination";

/// 01 (ServiceEntry only): `301` then `HTTP/2 200`; 02 (targetPort 443 + DestinationRule
/// SIMPLE on port 80): plain http gets a single `HTTP/1.1 200 OK`, https still `HTTP/2 200`.
#[tokio::test(flavor = "multi_thread")]
async fn tls_origination_at_the_sidecar() {
    let cnn = Cnn::start("egress-tls-origination").await;
    let ca_file = cnn.ca_file.clone();
    let cfg = ConfigDir::new("egress-tls-origination-config");
    cfg.apply("observability-logs-access-log", "01");
    let (sc, proxy) = curl_sidecar_env(
        &[cfg.path()],
        cnn.dns(),
        None,
        &[("SSL_CERT_FILE", &ca_file)],
    )
    .await;
    let proxy = format!("http://{proxy}");
    let follow = |url: &'static str| {
        let (proxy, ca_file) = (proxy.clone(), ca_file.clone());
        async move {
            let out = curl_heads(&proxy, &ca_file, true, url).await;
            assert_eq!(out.code, Some(0), "{url}: {}\n{}", out.stdout, out.stderr);
            (status_lines(&out.stdout), out.stdout)
        }
    };

    cfg.step(&[&sc], || cfg.apply(TASK, "01")).await;
    let (lines, head) = follow("http://edition.cnn.com/politics").await;
    assert_eq!(lines, ["HTTP/1.1 301 Moved Permanently", "HTTP/2 200"]);
    assert!(
        head.to_ascii_lowercase()
            .contains("location: https://edition.cnn.com/politics"),
        "{head}"
    );

    // 02 replaces 01's ServiceEntry `edition-cnn-com`, as `kubectl apply` does.
    cfg.step(&[&sc], || {
        cfg.delete(TASK, "01");
        cfg.apply(TASK, "02");
    })
    .await;
    let before = cnn.upstream().requests();
    let (lines, _) = follow("http://edition.cnn.com/politics").await;
    assert_eq!(lines, ["HTTP/1.1 200 OK"]);
    assert_eq!(
        cnn.upstream().requests(),
        before + 1,
        "over TLS to port 443"
    );
    wait_log_line(&sc, &["GET /politics", "outbound|80||edition.cnn.com"]).await;
    let (lines, _) = follow("https://edition.cnn.com/politics").await;
    assert_eq!(lines, ["HTTP/2 200"]);
}

/// "Mutual TLS origination for egress traffic at sidecar" (04, 05): nginx requiring client
/// certificates answers `Welcome to nginx!` to plain `curl http://my-nginx.mesh-external...`:
/// the ServiceEntry's port 80 (`targetPort: 443`) and the DestinationRule selecting the curl
/// workload (`workloadSelector: app=curl`) originate mutual TLS with `credentialName:
/// client-credential`, the Secret the task creates with kubectl in the curl pod's namespace.
/// The sidecar logs the request with `outbound|80||my-nginx.mesh-external.svc.cluster.local`.
/// Deleting the Secret (the task's cleanup) leaves the cluster refusing traffic.
#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_origination_at_the_sidecar_with_credential_name() {
    let nginx = MyNginx::start().await;
    let cfg = ConfigDir::new("sidecar-mtls-origination-config");
    cfg.apply("observability-logs-access-log", "01");
    let (sc, proxy) = curl_sidecar_env(&[cfg.path()], nginx.dns.addr(), None, &[]).await;
    let proxy = format!("http://{proxy}");
    cfg.step(&[&sc], || {
        cfg.apply(TASK, "04");
        cfg.write(
            "client-credential.yaml",
            &nginx.client_credential("default"),
        );
        cfg.apply(TASK, "05");
    })
    .await;
    nginx.expect_secrets(&sc);
    nginx
        .expect_welcome(
            &proxy,
            &sc,
            "outbound|80||my-nginx.mesh-external.svc.cluster.local",
        )
        .await;

    // `kubectl delete secret client-credential`: no client certificate, no connection.
    cfg.step(&[&sc], || cfg.delete_file("client-credential.yaml"))
        .await;
    nginx.expect_refused(&proxy, &sc).await;
}
