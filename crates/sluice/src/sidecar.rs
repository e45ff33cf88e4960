//! `sluice sidecar`: beside one workload, an explicit proxy (`HTTP_PROXY`/`HTTPS_PROXY`) that
//! applies the mesh's rules and reaches the egress gateway over mesh mTLS.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Context;
use sluice_compile::lower::CompileOptions;
use sluice_proxy::ProxyConfig;
use sluice_snapshot::Role;

use crate::cli::exit;
use crate::gateway::{parse_labels, shutdown_signal};
use crate::serve::{self, CommonArgs, Plan};

/// Flags of `sluice sidecar` (each also `SLUICE_<FLAG>` in the environment).
#[derive(Debug, clap::Args)]
pub struct SidecarArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The workload's namespace.
    #[arg(long, env = "SLUICE_NAMESPACE")]
    pub namespace: String,
    /// The workload's service account; the SVID in --identity-dir must name it.
    #[arg(long, env = "SLUICE_SERVICE_ACCOUNT")]
    pub service_account: String,
    /// The workload's labels (for Sidecar workloadSelectors and route sourceLabels).
    #[arg(long, default_value = "", env = "SLUICE_LABELS", value_parser = parse_labels)]
    pub labels: BTreeMap<String, String>,
    /// The explicit proxy's address: point HTTP_PROXY / HTTPS_PROXY here.
    #[arg(long, default_value = "127.0.0.1:15001", env = "SLUICE_LISTEN")]
    pub listen: SocketAddr,
}

pub fn run(args: SidecarArgs) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(start(args, shutdown_signal()))
}

pub async fn start(
    args: SidecarArgs,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<u8> {
    if let Some(dir) = &args.common.identity_dir {
        // The SVID must be this workload's: a sidecar speaking with another workload's
        // identity would make every policy about it wrong.
        let rx = serve::watch_identity(dir)?;
        let id = rx.borrow().identity().clone();
        let sluice_identity::Identity::Spiffe {
            namespace,
            service_account,
            ..
        } = &id;
        if namespace != &args.namespace || service_account != &args.service_account {
            eprintln!(
                "sluice: the identity in {} is {id}, not namespace {:?} service account {:?}",
                dir.display(),
                args.namespace,
                args.service_account
            );
            return Ok(exit::BAD_CONFIG);
        }
    }
    let plan = Plan {
        options: CompileOptions {
            role: Role::Sidecar,
            labels: args.labels.clone(),
            namespace: args.namespace.clone(),
            credentials_dir: None,
            secrets_dir: None,
        },
        proxy: ProxyConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            listen: Some(args.listen),
            ..ProxyConfig::default()
        },
        common: args.common,
    };
    serve::run(plan, shutdown).await
}
