//! Settings of the proxy process that do not come from Istio configuration.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
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
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dns_server: None,
            tls_inspect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            credentials_dir: None,
        }
    }
}
