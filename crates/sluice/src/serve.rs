//! What the gateway and the sidecar share: compile the configuration, start the proxy, the
//! admin API and the config watcher, serve until shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use sluice_compile::lower::CompileOptions;
use sluice_identity::{IdentityFiles, IdentityWatcher};
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
    /// Admin API address (/ready, /healthz, /stats/prometheus, /config_dump).
    #[arg(long, default_value = "127.0.0.1:15000", env = "SLUICE_ADMIN")]
    pub admin: SocketAddr,
    /// DNS server for upstream names (default: the system's resolv.conf).
    #[arg(long, env = "SLUICE_DNS_SERVER")]
    pub dns_server: Option<SocketAddr>,
    /// The workload identity: tls.crt, tls.key, ca.crt (re-read when they change). Mesh mTLS,
    /// in either direction, needs it; without it, mesh traffic is refused.
    #[arg(long, env = "SLUICE_IDENTITY_DIR")]
    pub identity_dir: Option<PathBuf>,
    /// How often the config files are checked for changes.
    #[arg(long, default_value = "1s", env = "SLUICE_RELOAD_INTERVAL", value_parser = crate::gateway::parse_duration)]
    pub reload_interval: Duration,
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
    if let Some(dir) = &plan.common.identity_dir {
        let rx = watch_identity(dir)?;
        tracing::info!(identity = %rx.borrow().identity(), "workload identity loaded");
        plan.proxy.identity = Some(rx);
    }
    let (paths, opts) = (plan.common.config.clone(), plan.options.clone());
    let built = tokio::task::spawn_blocking(move || reload::build(&paths, &opts))
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
    let (tx, rx) = watch::channel(Arc::new(built.snapshot));
    let mut registry = prometheus_client::registry::Registry::default();
    let proxy = Proxy::new(plan.proxy, rx.clone(), &mut registry).context("creating the proxy")?;
    let admin = admin::serve(
        plan.common.admin,
        AdminState {
            snapshots: rx,
            ready: proxy.ready(),
            registry: Arc::new(Mutex::new(registry)),
        },
    )
    .await
    .with_context(|| format!("binding the admin API on {}", plan.common.admin))?;
    let watcher = tokio::spawn(reload::watch_config(
        plan.common.config.clone(),
        plan.options,
        tx,
        plan.common.reload_interval,
    ));
    tracing::info!(admin = %plan.common.admin, "sluice started");
    let result = proxy.run(shutdown).await;
    watcher.abort();
    admin.abort();
    result.context("serving")?;
    Ok(exit::OK)
}
