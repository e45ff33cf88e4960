//! What the gateway and the sidecar share: compile the configuration, start the proxy, the
//! admin API and the config watcher, serve until shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use sluice_compile::lower::CompileOptions;
use sluice_identity::{IdentityFiles, IdentityWatcher};
use sluice_proxy::upstream::guard::Range;
use sluice_proxy::{Proxy, ProxyConfig};
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::cli::exit;
use crate::reload;

/// How often identity files are checked for rotation.
const IDENTITY_POLL: Duration = Duration::from_secs(1);

/// Flags the gateway and the sidecar share (each also `SLUICE_<FLAG>` in the environment).
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// Config files or directories (repeatable).
    #[arg(
        short = 'c',
        long = "config",
        required = true,
        env = "SLUICE_CONFIG",
        value_delimiter = ','
    )]
    pub config: Vec<PathBuf>,
    /// Admin API address (/ready, /healthz, /stats, /stats/prometheus, /config_dump,
    /// /clusters, /listeners, /logging).
    #[arg(long, default_value = "127.0.0.1:15000", env = "SLUICE_ADMIN")]
    pub admin: SocketAddr,
    /// Let the admin API change state: `POST /logging?level=debug` (from loopback peers only).
    /// Without it the admin API is read-only.
    #[arg(long, env = "SLUICE_ADMIN_WRITABLE")]
    pub admin_writable: bool,
    /// DNS server for upstream names (default: the system's resolv.conf).
    #[arg(long, env = "SLUICE_DNS_SERVER")]
    pub dns_server: Option<SocketAddr>,
    /// The workload identity: tls.crt, tls.key, ca.crt (re-read when they change). Mesh mTLS,
    /// in either direction, needs it; without it, mesh traffic is refused.
    #[arg(long, env = "SLUICE_IDENTITY_DIR")]
    pub identity_dir: Option<PathBuf>,
    /// How often the config files are checked for changes.
    #[arg(long, default_value = "1s", env = "SLUICE_RELOAD_INTERVAL", value_parser = parse_reload_interval)]
    pub reload_interval: Duration,
    /// Let upstream connections reach CIDR[:PORT] (repeatable), though the destination IP
    /// guard denies its class by default (private, loopback, link-local, …). The most specific
    /// range wins; a deny wins a tie. Example: 10.20.0.0/16, [fd00::/8]:443.
    #[arg(
        long = "allow-range",
        env = "SLUICE_ALLOW_RANGE",
        value_delimiter = ','
    )]
    pub allow_ranges: Vec<Range>,
    /// Never let upstream connections reach CIDR[:PORT] (repeatable), even a public range.
    #[arg(long = "deny-range", env = "SLUICE_DENY_RANGE", value_delimiter = ',')]
    pub deny_ranges: Vec<Range>,
    /// Connections each listener holds open; more are closed as they are accepted.
    #[arg(long, default_value_t = sluice_proxy::accept::DEFAULT_MAX_CONNECTIONS, env = "SLUICE_MAX_CONNECTIONS")]
    pub max_connections: usize,
    /// Connections the admin API holds open; more are closed as they are accepted.
    #[arg(long, default_value_t = crate::admin::MAX_CONNECTIONS, env = "SLUICE_ADMIN_MAX_CONNECTIONS")]
    pub admin_max_connections: usize,
    /// A TLS client must send its whole ClientHello within this time (the SNI decides the
    /// route); slower ones are closed.
    #[arg(long, default_value = "5s", env = "SLUICE_TLS_INSPECT_TIMEOUT", value_parser = crate::gateway::parse_duration)]
    pub tls_inspect_timeout: Duration,
    /// An HTTP client (the admin API's included) that sends nothing for this long after
    /// connecting is closed.
    #[arg(long, default_value = "10s", env = "SLUICE_FIRST_BYTE_TIMEOUT", value_parser = crate::gateway::parse_duration)]
    pub first_byte_timeout: Duration,
    /// An HTTP/1 request head must arrive whole within this time of its first byte (the
    /// sidecar's explicit proxy: of the connection's waiting for it, keep-alive included).
    #[arg(long, default_value = "30s", env = "SLUICE_REQUEST_HEAD_TIMEOUT", value_parser = crate::gateway::parse_duration)]
    pub request_head_timeout: Duration,
    /// An HTTP client connection without a new request for this long is closed gracefully
    /// (HTTP/2 GOAWAY; requests in flight finish). Envoy's idle_timeout.
    #[arg(long, default_value = "1h", env = "SLUICE_IDLE_TIMEOUT", value_parser = crate::gateway::parse_duration)]
    pub idle_timeout: Duration,
    /// TCP and TLS streams are closed this long after they opened, busy or not; 0 for never.
    #[arg(long, default_value = "24h", env = "SLUICE_TUNNEL_MAX_LIFETIME", value_parser = crate::gateway::parse_duration)]
    pub tunnel_max_lifetime: Duration,
    /// The shared counter store of global rate limits (redis://HOST:PORT[/DB]): every replica
    /// pointing at one Redis holds one combined limit. Needed when an EnvoyFilter inserts
    /// envoy.filters.http.ratelimit.
    #[arg(long, env = "SLUICE_RATE_LIMIT_REDIS", value_parser = parse_redis_url)]
    pub rate_limit_redis: Option<String>,
    /// On SIGTERM, how long requests in flight and open tunnels may take to finish (Istio's
    /// terminationDrainDuration); a second signal exits at once.
    #[arg(long, default_value = "5s", env = "SLUICE_DRAIN_TIMEOUT", value_parser = crate::gateway::parse_duration)]
    pub drain_timeout: Duration,
    /// This proxy's workload name, `source_workload` in its metrics (Istio's Deployment name).
    /// Default: the `app` label, else `istio-<istio label>` (`istio-egressgateway`).
    #[arg(long, env = "SLUICE_WORKLOAD_NAME")]
    pub workload_name: Option<String>,
}

/// Istio's workload name when none is given: the `app` label (Istio's charts set it to the
/// Deployment's name), else `istio-<istio label>`, as Istio names its gateways.
fn workload_name(labels: &std::collections::BTreeMap<String, String>) -> Option<String> {
    labels
        .get("app")
        .cloned()
        .or_else(|| labels.get("istio").map(|i| format!("istio-{i}")))
}

/// A positive duration: 0 would poll the files in a busy loop.
fn parse_reload_interval(s: &str) -> Result<Duration, String> {
    match crate::gateway::parse_duration(s)? {
        d if d.is_zero() => Err("must be above 0 (SIGHUP reloads at once)".into()),
        d => Ok(d),
    }
}

/// Accepts what the Redis client can connect to, so a typo fails at start with exit 2.
fn parse_redis_url(s: &str) -> Result<String, String> {
    sluice_proxy::ratelimit::global::Store::new(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// Installs the SIGUSR1 handler at the call, before the proxy is ready (SIGUSR1 would
/// otherwise end the process); the future reopens the access logs at their paths on each
/// one, as logrotate's `postrotate` asks.
fn reopen_logs_on_sigusr1(
    reopener: sluice_proxy::telemetry::writer::Reopener,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .map_err(|e| tracing::warn!(error = %e, "SIGUSR1 cannot reopen the access logs"))
        .ok();
    async move {
        #[cfg(unix)]
        if let Some(mut signal) = signal {
            while signal.recv().await.is_some() {
                tracing::info!("SIGUSR1: reopening the access logs");
                reopener.reopen();
            }
        }
        #[cfg(not(unix))]
        let _ = reopener;
    }
}

pub struct Plan {
    pub common: CommonArgs,
    pub options: CompileOptions,
    pub proxy: ProxyConfig,
}

/// Starts watching `dir` for the workload's SVID; the first complete, valid set must be there.
pub fn watch_identity(dir: &Path) -> anyhow::Result<watch::Receiver<Arc<IdentityFiles>>> {
    IdentityWatcher::start(dir.to_path_buf(), IDENTITY_POLL)
        .with_context(|| format!("reading the workload identity in {}", dir.display()))
}

/// Compiles, then serves until `shutdown` resolves. A first configuration with errors is
/// refused (exit 2): a proxy never starts on a config it cannot enforce.
pub async fn run(
    mut plan: Plan,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<u8> {
    plan.proxy.dns_server = plan.common.dns_server;
    plan.proxy.allow_ranges = plan.common.allow_ranges.clone();
    plan.proxy.deny_ranges = plan.common.deny_ranges.clone();
    plan.proxy.also_listening.push(plan.common.admin);
    plan.proxy.max_connections = plan.common.max_connections;
    plan.proxy.first_byte_timeout = plan.common.first_byte_timeout;
    plan.proxy.tls_inspect_timeout = plan.common.tls_inspect_timeout;
    plan.proxy.request_head_timeout = plan.common.request_head_timeout;
    plan.proxy.idle_timeout = plan.common.idle_timeout;
    plan.proxy.drain_timeout = plan.common.drain_timeout;
    plan.proxy.tunnel_max_lifetime = Some(plan.common.tunnel_max_lifetime).filter(|d| !d.is_zero());
    plan.proxy.rate_limit_redis = plan.common.rate_limit_redis.clone();
    plan.proxy.workload_name = plan
        .common
        .workload_name
        .clone()
        .or_else(|| workload_name(&plan.options.labels));
    let rate_limit_store = plan.proxy.rate_limit_redis.is_some();
    if let Some(dir) = &plan.common.identity_dir {
        let rx = watch_identity(dir)?;
        tracing::info!(identity = %rx.borrow().identity(), "workload identity loaded");
        plan.proxy.identity = Some(rx);
    }
    // Removed when serving ends: the credentials of the inputs live no longer than the proxy.
    let secrets_dir = tempfile::Builder::new()
        .prefix("sluice-secrets-")
        .tempdir()
        .context("creating the directory for credential Secrets")?;
    plan.options.secrets_dir = Some(secrets_dir.path().to_owned());
    // Credentials are read from the proxy's namespace's Secrets, else --credentials-dir.
    let certs_dirs: Vec<PathBuf> =
        std::iter::once(sluice_compile::lower::credential::namespace_dir(
            secrets_dir.path(),
            &plan.options.namespace,
        ))
        .chain(plan.options.credentials_dir.clone())
        .collect();
    let (paths, opts) = (plan.common.config.clone(), plan.options.clone());
    let built = tokio::task::spawn_blocking(move || reload::build(&paths, &opts, rate_limit_store))
        .await
        .context("compiling the configuration")?;
    let built = match built {
        Ok(b) => b,
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            eprintln!("sluice: the configuration has errors; not starting");
            return Ok(exit::BAD_CONFIG);
        }
    };
    reload::log_diagnostics(&built.diagnostics);
    built
        .secrets
        .write()
        .context("writing the credential Secrets of the configuration")?;
    let (tx, rx) = watch::channel(Arc::new(built.snapshot));
    let (views_tx, views) = watch::channel(Arc::new(built.view));
    let who = crate::egress_map::Who {
        role: if plan.options.role == sluice_snapshot::Role::Gateway {
            "gateway"
        } else {
            "sidecar"
        }
        .into(),
        workload: plan
            .proxy
            .workload_name
            .clone()
            .unwrap_or_else(|| "unknown".into()),
        admin: plan.common.admin.to_string(),
        identity: plan
            .proxy
            .identity
            .as_ref()
            .map(|id| id.borrow().identity().to_string()),
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let reload_metrics = reload::ReloadMetrics::register(&mut registry);
    let triggers = reload::Triggers::install();
    let proxy = Proxy::new(plan.proxy, rx.clone(), &mut registry).context("creating the proxy")?;
    let reopener = tokio::spawn(reopen_logs_on_sigusr1(proxy.log_reopener()));
    let admin = admin::serve(
        plan.common.admin,
        AdminState {
            inspector: Some(proxy.inspector()),
            telemetry: Some(proxy.telemetry()),
            snapshots: rx,
            ready: proxy.ready(),
            map: Some(crate::egress_map::MapState {
                who: Arc::new(who),
                decisions: proxy.decisions(),
                config: views,
            }),
            registry: Arc::new(Mutex::new(registry)),
            writable: plan.common.admin_writable,
            max_connections: plan.common.admin_max_connections,
            certs: crate::certs::Sources {
                credential_dirs: certs_dirs,
                identity_dir: plan.common.identity_dir.clone(),
            },
        },
        plan.common.first_byte_timeout,
    )
    .await
    .with_context(|| format!("binding the admin API on {}", plan.common.admin))?;
    let watcher = tokio::spawn(reload::watch_config(
        plan.common.config.clone(),
        plan.options,
        tx,
        plan.common.reload_interval,
        rate_limit_store,
        reload_metrics,
        triggers,
        views_tx,
        proxy.applied(),
    ));
    tracing::info!(admin = %plan.common.admin, "sluice started");
    let result = proxy.run(shutdown).await;
    watcher.abort();
    admin.abort();
    reopener.abort();
    result.context("serving")?;
    Ok(exit::OK)
}
