//! `sluice gateway`: the exit point of the mesh.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use sluice_compile::lower::CompileOptions;
use sluice_proxy::{Proxy, ProxyConfig};
use sluice_snapshot::Role;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::cli::exit;
use crate::reload;

/// Flags of `sluice gateway` (each also `SLUICE_<FLAG>` in the environment).
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Config files or directories (repeatable).
    #[arg(
        short = 'c',
        long = "config",
        required = true,
        env = "SLUICE_CONFIG",
        value_delimiter = ','
    )]
    pub config: Vec<PathBuf>,
    /// This gateway's workload labels; Gateways whose selector matches them apply.
    #[arg(long, default_value = "istio=egressgateway", env = "SLUICE_LABELS", value_parser = parse_labels)]
    pub labels: BTreeMap<String, String>,
    /// The namespace this gateway runs in (for policy and DestinationRule lookup).
    #[arg(long, default_value = "istio-system", env = "SLUICE_NAMESPACE")]
    pub namespace: String,
    /// Address the Gateway servers' ports are bound on.
    #[arg(long, default_value = "0.0.0.0", env = "SLUICE_BIND")]
    pub bind: IpAddr,
    /// Admin API address (/ready, /healthz, /stats/prometheus, /config_dump).
    #[arg(long, default_value = "127.0.0.1:15000", env = "SLUICE_ADMIN")]
    pub admin: SocketAddr,
    /// DNS server for upstream names (default: the system's resolv.conf).
    #[arg(long, env = "SLUICE_DNS_SERVER")]
    pub dns_server: Option<SocketAddr>,
    /// Directory of `credentialName` secrets: DIR/NAME/tls.crt, tls.key, ca.crt.
    #[arg(long, env = "SLUICE_CREDENTIALS_DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// How often the config files are checked for changes.
    #[arg(long, default_value = "1s", env = "SLUICE_RELOAD_INTERVAL", value_parser = parse_duration)]
    pub reload_interval: Duration,
}

/// `k=v,k2=v2`.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("label {pair:?} is not key=value"))?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    sluice_model::values::Duration::parse(s)
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

pub fn run(args: GatewayArgs) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(start(args, shutdown_signal()))
}

/// Loads and compiles the configuration, then serves until `shutdown` resolves. A first
/// configuration with errors is refused (exit 2): a gateway never starts on a config it
/// cannot enforce.
pub async fn start(
    args: GatewayArgs,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<u8> {
    let options = CompileOptions {
        role: Role::Gateway,
        labels: args.labels.clone(),
        namespace: args.namespace.clone(),
        credentials_dir: args.credentials_dir.clone(),
    };
    let (paths, opts) = (args.config.clone(), options.clone());
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
    let config = ProxyConfig {
        bind: args.bind,
        dns_server: args.dns_server,
        credentials_dir: args.credentials_dir.clone(),
        ..ProxyConfig::default()
    };
    let proxy = Proxy::new(config, rx.clone(), &mut registry).context("creating the proxy")?;
    let admin = admin::serve(
        args.admin,
        AdminState {
            snapshots: rx,
            ready: proxy.ready(),
            registry: Arc::new(Mutex::new(registry)),
        },
    )
    .await
    .with_context(|| format!("binding the admin API on {}", args.admin))?;
    let watcher = tokio::spawn(reload::watch_config(
        args.config.clone(),
        options,
        tx,
        args.reload_interval,
    ));
    tracing::info!(admin = %args.admin, bind = %args.bind, "sluice gateway started");
    let result = proxy.run(shutdown).await;
    watcher.abort();
    admin.abort();
    result.context("serving")?;
    Ok(exit::OK)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_as_key_value_pairs() {
        let l = parse_labels("istio=egressgateway, app=x").expect("valid");
        assert_eq!(l.get("app").map(String::as_str), Some("x"));
        assert!(parse_labels("novalue").is_err());
    }
}
