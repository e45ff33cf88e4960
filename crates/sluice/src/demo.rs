//! `sluice demo`: the whole picture on loopback in one command. An "external" HTTPS service
//! with its own CA, a DNS server that maps its name to a loopback address, a gateway with
//! Istio configuration, and a client that sends allowed and refused calls — then it stays up
//! (Ctrl-C ends it) so you can look around.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use sluice_test_support::client::{http_get, https_get};
use sluice_test_support::{DnsServer, HttpsUpstream, TempDir, TestCa, UpstreamOptions};

use crate::cli::exit;
use crate::gateway::{self, GatewayArgs};
use crate::serve::CommonArgs;

/// Prints a line; a closed stdout (`sluice demo | head`) is not worth a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The external service's name in the demo (`.example` is reserved for documentation).
const EXTERNAL: &str = "api.partner.example";

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Admin API of the demo gateway.
    #[arg(long, default_value = "127.0.0.1:15000", env = "SLUICE_ADMIN")]
    pub admin: SocketAddr,
    /// Run the calls, print the results and exit (non-zero if any result was unexpected).
    #[arg(long, env = "SLUICE_DEMO_ONCE")]
    pub once: bool,
}

pub fn run(args: DemoArgs) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(demo(args))
}

fn free_port(ip: IpAddr) -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

fn config(upstream_port: u16, tls_port: u16, http_port: u16, ca: &std::path::Path) -> String {
    format!(
        r#"# Written by `sluice demo`: Istio configuration, unchanged in form from what a mesh uses.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: partner-api, namespace: demo}}
spec:
  hosts: [{EXTERNAL}]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {{number: {upstream_port}, name: tls, protocol: TLS}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress, namespace: demo}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {tls_port}, name: tls-partner, protocol: TLS}}
    hosts: [{EXTERNAL}]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: {http_port}, name: http-partner, protocol: HTTP}}
    hosts: [{EXTERNAL}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: partner-api, namespace: demo}}
spec:
  hosts: [{EXTERNAL}]
  gateways: [egress]
  tls:
  - match: [{{port: {tls_port}, sniHosts: [{EXTERNAL}]}}]
    route: [{{destination: {{host: {EXTERNAL}, port: {{number: {upstream_port}}}}}}}]
  http:
  - match: [{{port: {http_port}}}]
    route: [{{destination: {{host: {EXTERNAL}, port: {{number: {upstream_port}}}}}}}]
---
# Plain HTTP into the gateway leaves it as HTTPS (TLS origination), verified against the
# partner's CA.
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: partner-api, namespace: demo}}
spec:
  host: {EXTERNAL}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: {upstream_port}}}
      tls: {{mode: SIMPLE, sni: {EXTERNAL}, caCertificates: {ca}}}
---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {{name: demo-mesh, namespace: istio-system}}
spec:
  meshConfig:
    accessLogFile: /dev/stdout
    outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}
"#,
        ca = ca.display()
    )
}

struct Outcome {
    ok: bool,
    line: String,
}

async fn demo(args: DemoArgs) -> anyhow::Result<u8> {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let dir = TempDir::new("sluice-demo");
    let ca = TestCa::new("partner-ca");
    let ca_file = ca.write_ca_pem(dir.path());
    let cert = ca.server_cert(&[EXTERNAL]);
    let upstream = HttpsUpstream::start(
        SocketAddr::new(lo, 0),
        &cert,
        "partner-api (external stand-in)",
        UpstreamOptions::default(),
    )
    .await?;
    let dns = DnsServer::start([(EXTERNAL, vec![lo])]).await?;
    let (tls_port, http_port) = (free_port(lo)?, free_port(lo)?);
    let config_file: PathBuf = dir.join("istio.yaml");
    std::fs::write(
        &config_file,
        config(upstream.addr().port(), tls_port, http_port, &ca_file),
    )?;

    say!("sluice demo — everything runs on loopback\n");
    say!(
        "  external service  https://{EXTERNAL}:{} (its own CA: {})",
        upstream.addr().port(),
        ca_file.display()
    );
    say!(
        "  DNS server        {} ({EXTERNAL} → 127.0.0.1)",
        dns.addr()
    );
    say!(
        "  gateway           127.0.0.1:{tls_port} (TLS passthrough), 127.0.0.1:{http_port} (HTTP → TLS origination)"
    );
    say!("  config            {}", config_file.display());
    say!(
        "  admin             http://{}/config_dump, /stats/prometheus\n",
        args.admin
    );

    let gateway_args = GatewayArgs {
        common: CommonArgs {
            config: vec![config_file.clone()],
            admin: args.admin,
            admin_writable: false,
            dns_server: Some(dns.addr()),
            identity_dir: None,
            reload_interval: Duration::from_secs(1),
            // The demo's "external" service lives on loopback, which the destination IP
            // guard denies by default.
            allow_ranges: vec!["127.0.0.0/8".parse()?],
            deny_ranges: Vec::new(),
            max_connections: sluice_proxy::accept::DEFAULT_MAX_CONNECTIONS,
            first_byte_timeout: sluice_proxy::config::DEFAULT_FIRST_BYTE_TIMEOUT,
            request_head_timeout: sluice_proxy::config::DEFAULT_REQUEST_HEAD_TIMEOUT,
            idle_timeout: sluice_proxy::config::DEFAULT_IDLE_TIMEOUT,
            tunnel_max_lifetime: sluice_proxy::config::DEFAULT_TUNNEL_MAX_LIFETIME,
            rate_limit_redis: None,
            workload_name: None,
            drain_timeout: std::time::Duration::from_secs(5),
        },
        labels: gateway::parse_labels("istio=egressgateway").map_err(anyhow::Error::msg)?,
        namespace: "istio-system".into(),
        bind: lo,
        credentials_dir: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gw = tokio::spawn(gateway::start(gateway_args, async move {
        let _ = stop_rx.await;
    }));
    wait_ready(args.admin).await?;

    let roots = ca.ca_root_store();
    let tls_addr = SocketAddr::new(lo, tls_port);
    let http_addr = SocketAddr::new(lo, http_port);
    let mut outcomes = Vec::new();

    let r = https_get(tls_addr, EXTERNAL, EXTERNAL, "/orders", &roots, None).await;
    outcomes.push(match r {
        Ok((200, _, body)) if body.contains("partner-api") => Outcome {
            ok: true,
            line: format!(
                "✔ allowed  https://{EXTERNAL}/orders via the gateway → 200 from the partner; TLS passed through, verified end to end by the client"
            ),
        },
        other => Outcome { ok: false, line: format!("✘ expected 200 through TLS passthrough, got {other:?}") },
    });

    let r = http_get(http_addr, EXTERNAL, "/orders").await;
    outcomes.push(match r {
        Ok((200, _, body)) if body.contains(&format!("\"sni\":\"{EXTERNAL}\"")) => Outcome {
            ok: true,
            line: format!(
                "✔ allowed  http://{EXTERNAL}/orders → 200; the gateway originated TLS (SNI {EXTERNAL}, partner CA verified)"
            ),
        },
        other => Outcome { ok: false, line: format!("✘ expected 200 with TLS origination, got {other:?}") },
    });

    let r = https_get(
        tls_addr,
        "exfiltrate.example",
        "exfiltrate.example",
        "/",
        &roots,
        None,
    )
    .await;
    outcomes.push(match r {
        Err(_) => Outcome {
            ok: true,
            line: "✔ refused  https://exfiltrate.example → connection closed at the gateway (no server for that SNI: filter_chain_not_found)".into(),
        },
        Ok(reply) => Outcome { ok: false, line: format!("✘ expected a closed connection, got {}", reply.0) },
    });

    let r = http_get(http_addr, "exfiltrate.example", "/").await;
    outcomes.push(match r {
        Ok((404, _, _)) => Outcome {
            ok: true,
            line: "✔ refused  http://exfiltrate.example → 404, response flag NR (no route)".into(),
        },
        other => Outcome {
            ok: false,
            line: format!("✘ expected 404 NR, got {other:?}"),
        },
    });

    say!();
    for o in &outcomes {
        say!("{}", o.line);
    }
    let all_ok = outcomes.iter().all(|o| o.ok);
    say!(
        "\nThe gateway's access log is above (stdout). Look around:\n  sluice proxy-config all --admin {}\n  curl -s http://{}/stats/prometheus | grep istio_\n",
        args.admin,
        args.admin
    );
    if !args.once {
        say!("Press Ctrl-C to stop.");
        gateway::shutdown_signal().await;
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(10), gw).await {
        Ok(Ok(Ok(_))) => {}
        Ok(Ok(Err(e))) => return Err(e.context("the gateway failed")),
        Ok(Err(e)) => return Err(anyhow::anyhow!("the gateway task failed: {e}")),
        Err(_) => anyhow::bail!("the gateway did not stop within 10 s"),
    }
    Ok(if all_ok { exit::OK } else { exit::FAILURE })
}

async fn wait_ready(admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ready = tokio::task::spawn_blocking(move || {
            sluice_test_support::process::blocking_get(admin, "/ready")
                .map(|(status, _)| status == 200)
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if ready {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the gateway did not become ready on {admin}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
