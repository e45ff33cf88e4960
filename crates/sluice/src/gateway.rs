//! `sluice gateway`: the exit point of the mesh.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use sluice_compile::lower::CompileOptions;
use sluice_proxy::ProxyConfig;
use sluice_snapshot::Role;

use crate::serve::{self, CommonArgs, Plan};

/// Flags of `sluice gateway` (each also `SLUICE_<FLAG>` in the environment).
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// This gateway's workload labels; Gateways whose selector matches them apply.
    #[arg(long, default_value = "istio=egressgateway", env = "SLUICE_LABELS", value_parser = parse_labels)]
    pub labels: BTreeMap<String, String>,
    /// The namespace this gateway runs in (for policy and DestinationRule lookup).
    #[arg(long, default_value = "istio-system", env = "SLUICE_NAMESPACE")]
    pub namespace: String,
    /// Address the Gateway servers' ports are bound on.
    #[arg(long, default_value = "0.0.0.0", env = "SLUICE_BIND")]
    pub bind: IpAddr,
    /// Directory of `credentialName` secrets: DIR/NAME/tls.crt, tls.key, ca.crt.
    #[arg(long, env = "SLUICE_CREDENTIALS_DIR")]
    pub credentials_dir: Option<PathBuf>,
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

pub fn parse_duration(s: &str) -> Result<Duration, String> {
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

/// Serves the gateway until `shutdown` resolves.
pub async fn start(
    args: GatewayArgs,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<u8> {
    let plan = Plan {
        options: CompileOptions {
            role: Role::Gateway,
            labels: args.labels.clone(),
            namespace: args.namespace.clone(),
            credentials_dir: args.credentials_dir.clone(),
            secrets_dir: None,
        },
        proxy: ProxyConfig {
            bind: args.bind,
            credentials_dir: args.credentials_dir.clone(),
            ..ProxyConfig::default()
        },
        common: args.common,
    };
    serve::run(plan, shutdown).await
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM, which starts the drain. A second one while the
/// drain runs exits at once (exit code 1: work in flight was cut).
pub async fn shutdown_signal() {
    one_signal().await;
    tracing::info!("shutting down");
    tokio::spawn(async {
        one_signal().await;
        eprintln!("sluice: second signal during the drain: exiting now");
        std::process::exit(1);
    });
}

async fn one_signal() {
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
