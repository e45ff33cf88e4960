//! Settings of the proxy process that do not come from Istio configuration.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_identity::IdentityFiles;
use tokio::sync::watch;

#[derive(Clone)]
pub struct ProxyConfig {
    /// Gateway listeners bind the Gateway servers' ports on this address.
    pub bind: IpAddr,
    /// DNS server for upstream resolution; `None` reads the system's resolv.conf.
    pub dns_server: Option<SocketAddr>,
    /// How long the ClientHello may take to arrive before the connection is closed.
    pub tls_inspect_timeout: Duration,
    /// How long open connections get to finish on shutdown.
    pub drain_timeout: Duration,
    /// Directory of `credentialName` secrets (`<dir>/<name>/tls.crt`, `tls.key`, `ca.crt`).
    pub credentials_dir: Option<PathBuf>,
    /// This proxy's workload identity (SVID and mesh trust bundle, re-read when the files
    /// change). Without it, mesh mTLS is refused in both directions: no identity is ever
    /// assumed.
    pub identity: Option<watch::Receiver<Arc<IdentityFiles>>>,
    /// Sidecar role: the explicit-proxy address apps use (`HTTP_PROXY`/`HTTPS_PROXY`).
    pub listen: Option<SocketAddr>,
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("bind", &self.bind)
            .field("dns_server", &self.dns_server)
            .field("tls_inspect_timeout", &self.tls_inspect_timeout)
            .field("drain_timeout", &self.drain_timeout)
            .field("credentials_dir", &self.credentials_dir)
            .field(
                "identity",
                &self
                    .identity
                    .as_ref()
                    .map(|i| i.borrow().identity().to_string()),
            )
            .field("listen", &self.listen)
            .finish()
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dns_server: None,
            tls_inspect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            credentials_dir: None,
            identity: None,
            listen: None,
        }
    }
}
