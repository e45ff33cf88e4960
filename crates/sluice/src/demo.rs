//! `sluice demo`: the whole picture on loopback in one command. A mesh CA issues SVIDs to two
//! workloads in namespace `production` (payment-service and reporting) and to the egress
//! gateway; each workload has a sidecar; the gateway runs the guide's production setup, TLS
//! origination, AuthorizationPolicy and rate limit; two "external" HTTPS partners have their
//! own CA; a DNS server maps their names to loopback. The proxies are this same binary, run as
//! child processes, so their access logs and metrics are the real ones. Then the demo makes
//! the calls a newcomer wants to see, proves each from the access log and `/stats/prometheus`,
//! and stays up (Ctrl-C ends it) so you can look around.

mod config;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use http::Request;
use sluice_identity::{Ca, Validity};
use sluice_test_support::client::{http_request, https_get_via_proxy};
use sluice_test_support::process::blocking_get;
use sluice_test_support::{
    DnsServer, HttpsUpstream, SluiceProcess, TempDir, TestCa, UpstreamOptions, free_loopback_addr,
};

use crate::cli::exit;
use config::Ports;

/// Prints a line; a closed stdout (`sluice demo | head`) is not worth a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The production setup's partner (TLS passes through the gateway).
const PAYMENTS: &str = "api.payment-provider.com";
/// Step 5's partner (the gateway originates TLS).
const EXTERNAL: &str = "api.external-service.com";
/// A host no ServiceEntry registers.
const UNREGISTERED: &str = "exfiltrate.example.net";
/// Requests in the burst (the guide's bucket holds 100).
const BURST: usize = 130;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Admin API of the demo gateway (the sidecars' admin APIs are printed at start).
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

/// One workload: its sidecar process and the explicit-proxy address its app uses.
struct Workload {
    name: &'static str,
    sidecar: SluiceProcess,
    proxy: SocketAddr,
}

/// What one call showed: the verdict line and the evidence lines under it.
struct Outcome {
    ok: bool,
    verdict: String,
    proof: Vec<String>,
}

impl Outcome {
    fn new(ok: bool, verdict: String) -> Outcome {
        Outcome {
            ok,
            verdict,
            proof: Vec::new(),
        }
    }

    /// Adds the access-log entry that proves the outcome; none found is a failure.
    fn log(&mut self, entry: Option<String>) {
        match entry {
            Some(e) => self.proof.push(e),
            None => {
                self.ok = false;
                self.proof.push("access log: no matching entry".into());
            }
        }
    }

    fn print(&self) {
        let mark = if self.ok { '✔' } else { '✘' };
        say!("  {mark} {}", self.verdict);
        for p in &self.proof {
            say!("      {p}");
        }
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<u8> {
    let dir = TempDir::new("sluice-demo");
    let bin = std::env::current_exe().context("finding the sluice binary")?;

    // The outside world: two partners with their own CA, and DNS.
    let partner_ca = TestCa::new("partner-ca");
    let partner_ca_file = partner_ca.write_ca_pem(dir.path());
    let gw_ip = free_loopback_addr();
    let ports = Ports::for_ip(gw_ip);
    let payments = HttpsUpstream::start(
        SocketAddr::new(free_loopback_addr(), ports.tls),
        &partner_ca.server_cert(&[PAYMENTS]),
        "payment-provider",
        UpstreamOptions::default(),
    )
    .await
    .context("starting the payment partner")?;
    let external = HttpsUpstream::start(
        SocketAddr::new(free_loopback_addr(), ports.tls),
        &partner_ca.server_cert(&[EXTERNAL]),
        "external-service",
        UpstreamOptions::default(),
    )
    .await
    .context("starting the external partner")?;
    let dns = DnsServer::start([
        (PAYMENTS, vec![payments.addr().ip()]),
        (EXTERNAL, vec![external.addr().ip()]),
    ])
    .await
    .context("starting the DNS server")?;

    // The mesh: a CA, SVIDs, the configuration.
    let ca = Ca::init(&dir.join("mesh-ca"), "cluster.local", false).context("the mesh CA")?;
    let svid = |ns: &str, sa: &str| -> anyhow::Result<PathBuf> {
        let out = dir.join(format!("svid-{ns}-{sa}"));
        ca.issue(ns, sa, Validity::from_now(Duration::from_secs(24 * 3600)))?
            .write(&out)?;
        Ok(out)
    };
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir)?;
    let files = config::write(&config_dir, gw_ip, ports)?;

    let common = |cmd: &mut std::process::Command, admin: SocketAddr, id: &Path| {
        for f in &files {
            cmd.arg("-c").arg(f);
        }
        cmd.args(["--admin", &admin.to_string()]);
        cmd.args(["--dns-server", &dns.addr().to_string()]);
        // The partners live on loopback, which the destination IP guard denies by default.
        cmd.args(["--allow-range", "127.0.0.0/8"]);
        cmd.arg("--identity-dir").arg(id);
        cmd.env("SLUICE_LOG", "warn");
    };
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["gateway", "--bind", &gw_ip.to_string()]);
    common(
        &mut cmd,
        args.admin,
        &svid("istio-system", "istio-egressgateway-service-account")?,
    );
    // Step 5's DestinationRule names no CA: the gateway verifies partners against the
    // platform's roots, which SSL_CERT_FILE points at (here: the partners' CA).
    cmd.env("SSL_CERT_FILE", &partner_ca_file);
    let gateway = spawn(cmd, args.admin)
        .await
        .context("starting the gateway")?;

    let mut workloads = Vec::new();
    for name in ["payment-service", "reporting"] {
        let ip = free_loopback_addr();
        let (proxy, admin) = (SocketAddr::new(ip, 15001), SocketAddr::new(ip, 15000));
        let mut cmd = std::process::Command::new(&bin);
        cmd.args([
            "sidecar",
            "--namespace",
            "production",
            "--service-account",
            name,
        ]);
        cmd.args(["--listen", &proxy.to_string()]);
        common(&mut cmd, admin, &svid("production", name)?);
        let sidecar = spawn(cmd, admin)
            .await
            .with_context(|| format!("starting the sidecar of {name}"))?;
        workloads.push(Workload {
            name,
            sidecar,
            proxy,
        });
    }

    say!("sluice demo: a small mesh on loopback, configured with the guide's Istio YAML\n");
    say!(
        "  partners        https://{PAYMENTS} → {}, https://{EXTERNAL} → {} (their own CA)",
        payments.addr(),
        external.addr()
    );
    say!(
        "  DNS server      {} (maps the partners' names to those loopback addresses)",
        dns.addr()
    );
    say!("  mesh CA         trust domain cluster.local; an SVID for each workload and the gateway");
    say!(
        "  egress gateway  {gw_ip} (:{} TLS, :{} HTTP), admin http://{}",
        ports.tls,
        ports.http,
        args.admin
    );
    for w in &workloads {
        say!(
            "  sidecar         production/{:<16} proxy http://{}, admin http://{}",
            w.name,
            w.proxy,
            w.sidecar.admin()
        );
    }
    say!("  configuration   {}", config_dir.display());
    if ports.remapped() {
        say!(
            "                  (ports 443 and 80 need privileges here: the demo uses {} and {})",
            ports.tls,
            ports.http
        );
    }
    say!();

    let roots = partner_ca.ca_root_store();
    let (pay, rep) = (&workloads[0], &workloads[1]);
    let mut outcomes = Vec::new();

    // 1. Passthrough inside mesh mTLS.
    let authority = format!("{PAYMENTS}:{}", ports.tls);
    let r = https_get_via_proxy(pay.proxy, &authority, "/v1/pay", &roots).await;
    let mut o = match &r {
        Ok((200, _, body)) if body.contains("payment-provider") => Outcome::new(
            true,
            format!(
                "allowed      payment-service → https://{PAYMENTS}/v1/pay: 200 from the partner; \
                 the app's own TLS crossed sidecar → mTLS → gateway untouched"
            ),
        ),
        other => Outcome::new(
            false,
            format!(
                "expected 200 from https://{PAYMENTS} for payment-service, got {}",
                brief(other)
            ),
        ),
    };
    let upstream = format!("\"{}\"", payments.addr());
    o.log(log_proof("gateway", &gateway, &[upstream.as_str()]).await);
    outcomes.push(o);

    // 2. TLS origination at the gateway.
    let url = format!("http://{EXTERNAL}:{}/data", ports.http);
    let r = get_via(pay.proxy, &url).await;
    let mut o = match &r {
        Ok((200, _, body)) if body.contains(&format!("\"sni\":\"{EXTERNAL}\"")) => Outcome::new(
            true,
            format!(
                "originated   payment-service → http://{EXTERNAL}/data: 200; the app spoke plain \
                 HTTP, the gateway opened TLS to the partner and verified its certificate"
            ),
        ),
        other => Outcome::new(
            false,
            format!(
                "expected 200 with TLS origination for payment-service, got {}",
                brief(other)
            ),
        ),
    };
    o.log(log_proof("gateway", &gateway, &["GET /data", " 200 ", EXTERNAL]).await);
    outcomes.push(o);

    // 3. The wrong service account.
    let r = get_via(rep.proxy, &url).await;
    let mut o = match &r {
        Ok((403, _, body)) if body.contains("RBAC: access denied") => Outcome::new(
            true,
            format!(
                "denied       reporting → http://{EXTERNAL}/data: 403 \"RBAC: access denied\"; \
                 no AuthorizationPolicy allows service account reporting"
            ),
        ),
        other => Outcome::new(
            false,
            format!(
                "expected 403 RBAC: access denied for reporting, got {}",
                brief(other)
            ),
        ),
    };
    o.log(log_proof("gateway", &gateway, &["GET /data", " 403 "]).await);
    outcomes.push(o);

    // 4. REGISTRY_ONLY.
    let r = get_via(pay.proxy, &format!("http://{UNREGISTERED}/upload")).await;
    let mut o = match &r {
        Ok((502, _, _)) => Outcome::new(
            true,
            format!(
                "blocked      payment-service → http://{UNREGISTERED}/upload: 502 at its sidecar; \
                 no ServiceEntry registers that host and the mesh is REGISTRY_ONLY"
            ),
        ),
        other => Outcome::new(
            false,
            format!(
                "expected 502 (REGISTRY_ONLY) for {UNREGISTERED}, got {}",
                brief(other)
            ),
        ),
    };
    o.log(log_proof("payment-service's sidecar", &pay.sidecar, &[UNREGISTERED]).await);
    outcomes.push(o);

    // 5. A burst beyond the rate limit.
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        let (proxy, url) = (pay.proxy, url.clone());
        burst.spawn(async move { get_via(proxy, &url).await });
    }
    let replies: Vec<_> = burst.join_all().await;
    let count = |code: u16| {
        replies
            .iter()
            .filter(|r| matches!(r, Ok((s, _, _)) if *s == code))
            .count()
    };
    let (passed, limited) = (count(200), count(429));
    let mut o = Outcome::new(
        limited > 0 && passed > 0 && passed + limited == BURST,
        format!(
            "rate limited {BURST} requests at once → {passed} × 200, {limited} × 429 \
             \"local_rate_limited\"; the guide's bucket holds 100 and refills 10 a second"
        ),
    );
    o.log(log_proof("gateway", &gateway, &[" 429 RL "]).await);
    outcomes.push(o);

    // The metrics behind them, under each outcome.
    let gw_stats = stats(args.admin).await;
    let sc_stats = stats(pay.sidecar.admin()).await;
    let principal =
        |sa: &str| format!("source_principal=\"spiffe://cluster.local/ns/production/sa/{sa}\"");
    let metrics: [(&str, &str, &str, Vec<String>); 5] = [
        (
            "gateway",
            &gw_stats,
            "istio_tcp_connections_opened_total",
            vec![
                principal("payment-service"),
                format!("destination_service=\"{PAYMENTS}\""),
                "connection_security_policy=\"mutual_tls\"".into(),
            ],
        ),
        (
            "gateway",
            &gw_stats,
            "istio_requests_total",
            vec![
                principal("payment-service"),
                format!("destination_service=\"{EXTERNAL}\""),
                "response_code=\"200\"".into(),
            ],
        ),
        (
            "gateway",
            &gw_stats,
            "istio_requests_total",
            vec![principal("reporting"), "response_code=\"403\"".into()],
        ),
        (
            "payment-service's sidecar",
            &sc_stats,
            "istio_requests_total",
            vec![
                "destination_service=\"BlackHoleCluster\"".into(),
                "response_code=\"502\"".into(),
            ],
        ),
        (
            "gateway",
            &gw_stats,
            "envoy_http_local_rate_limit_enforced_total",
            vec![],
        ),
    ];
    for (o, (who, text, family, labels)) in outcomes.iter_mut().zip(&metrics) {
        let value = sum(text, family, labels) as u64;
        o.ok &= value > 0;
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", labels.join(","))
        };
        o.proof
            .push(format!("metric ({who}): {family}{labels} {value}"));
    }
    say!("What happened, each with the access-log entry and the metric that prove it:\n");
    for o in &outcomes {
        o.print();
        say!();
    }
    let all_ok = outcomes.iter().all(|o| o.ok);
    say!(
        "\nWhere to look next:\n  \
         sluice proxy-config listeners --admin {admin}    the gateway's listeners (also routes, clusters, endpoints, all)\n  \
         sluice proxy-config clusters --admin {sc}    a sidecar's view\n  \
         curl -s http://{admin}/stats/prometheus | grep -E 'istio_|local_rate_limit'\n  \
         http://{admin}/ui    the egress map: who reached which host, and what was refused\n  \
         {cfg}    the Istio YAML these proxies run",
        admin = args.admin,
        sc = pay.sidecar.admin(),
        cfg = config_dir.display(),
    );
    if all_ok {
        say!("\nAll outcomes as expected.");
    } else {
        say!("\nSome outcomes were not as expected (✘ above).");
    }
    if !args.once {
        say!("Press Ctrl-C to stop.");
        crate::gateway::shutdown_signal().await;
    }
    // Dropping the processes stops them (by their PID).
    drop(workloads);
    drop(gateway);
    Ok(if all_ok { exit::OK } else { exit::FAILURE })
}

/// Starts a proxy process and waits (bounded) until its admin API says it is ready.
async fn spawn(mut cmd: std::process::Command, admin: SocketAddr) -> anyhow::Result<SluiceProcess> {
    cmd.stdin(std::process::Stdio::null());
    tokio::task::spawn_blocking(move || SluiceProcess::spawn_command(cmd, admin))
        .await
        .context("join")?
}

/// `GET url` through the explicit proxy at `proxy` (plain HTTP, as an app with HTTP_PROXY).
async fn get_via(
    proxy: SocketAddr,
    url: &str,
) -> anyhow::Result<sluice_test_support::client::Reply> {
    let uri: http::Uri = url.parse()?;
    // As curl sends it: the port only when it is not the scheme's default.
    let host = match (uri.host(), uri.port_u16()) {
        (Some(h), Some(80) | None) => h.to_string(),
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (None, _) => String::new(),
    };
    http_request(
        proxy,
        Request::get(url).header("host", host).body(String::new())?,
    )
    .await
}

/// A reply or an error, in a few words.
fn brief(r: &anyhow::Result<sluice_test_support::client::Reply>) -> String {
    match r {
        Ok((status, _, body)) => {
            let body: String = body.chars().take(80).collect();
            format!("{status} {body:?}")
        }
        Err(e) => format!("an error: {e:#}"),
    }
}

/// The latest access-log entry of `process` containing every needle, as one line. Entries are
/// written as the request or connection ends: wait for it (bounded).
async fn log_proof(who: &str, process: &SluiceProcess, needles: &[&str]) -> Option<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(entry) = last_entry(&process.stdout(), needles) {
            return Some(format!("access log ({who}): {entry}"));
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Access-log entries start with `[` (the guide's format spans several lines): the last one
/// holding every needle, its lines joined.
fn last_entry(log: &str, needles: &[&str]) -> Option<String> {
    let mut entries: Vec<String> = Vec::new();
    for line in log.lines() {
        match entries.last_mut() {
            Some(e) if !line.starts_with('[') => {
                e.push(' ');
                e.push_str(line.trim());
            }
            _ => entries.push(line.trim().to_string()),
        }
    }
    entries
        .into_iter()
        .rev()
        .find(|e| needles.iter().all(|n| e.contains(n)))
}

async fn stats(admin: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || blocking_get(admin, "/stats/prometheus"))
        .await
        .ok()
        .and_then(Result::ok)
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// The sum of the samples of `family` whose labels include every one of `labels`.
fn sum(stats: &str, family: &str, labels: &[String]) -> f64 {
    stats
        .lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
