//! Settings of the proxy process that do not come from Istio configuration.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_identity::IdentityFiles;
use tokio::sync::watch;

use crate::upstream::guard::Range;

/// A stream lives at most a day by default: long enough for any honest transfer, short enough
/// that a tunnel is decided again at least daily.
pub const DEFAULT_TUNNEL_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A client that has sent nothing for this long is not going to.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's own default for a request head.
/// Envoy's HTTP connection manager `idle_timeout` default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The destination IP guard's exceptions (`--allow-range`) and extra refusals
    /// (`--deny-range`); see [`crate::upstream::guard`].
    pub allow_ranges: Vec<Range>,
    pub deny_ranges: Vec<Range>,
    /// Other sockets of this process (the admin API): never dialed, like the listeners.
    pub also_listening: Vec<SocketAddr>,
    /// TCP and TLS streams are closed this long after they opened, busy or not (Envoy's
    /// `max_downstream_connection_duration`); `None`: no limit.
    pub tunnel_max_lifetime: Option<Duration>,
    /// Connections each listener holds open; more are closed at accept.
    pub max_connections: usize,
    /// An HTTP client must send its first byte within this time, else the connection is
    /// closed (a TLS client its ClientHello: `tls_inspect_timeout`).
    pub first_byte_timeout: Duration,
    /// An HTTP/1 request head must arrive whole within this time of its first byte (at the
    /// sidecar's explicit proxy, of the connection's waiting for it: keep-alive included).
    pub request_head_timeout: Duration,
    /// An HTTP client connection with no request for this long is closed gracefully (HTTP/2
    /// GOAWAY; streams in flight finish): Envoy's `idle_timeout`, 1h by default.
    pub idle_timeout: Duration,
    /// This proxy's workload name (`source_workload` in Istio's metrics); `None`: `unknown`.
    pub workload_name: Option<String>,
    /// The shared counter store of global rate limits (`redis://HOST:PORT[/DB]`).
    pub rate_limit_redis: Option<String>,
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
            .field("allow_ranges", &self.allow_ranges)
            .field("deny_ranges", &self.deny_ranges)
            .field("also_listening", &self.also_listening)
            .field("tunnel_max_lifetime", &self.tunnel_max_lifetime)
            .field("max_connections", &self.max_connections)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("request_head_timeout", &self.request_head_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("workload_name", &self.workload_name)
            .field(
                "rate_limit_redis",
                // The URL may carry a password.
                &self.rate_limit_redis.as_ref().map(|_| "<set>"),
            )
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
            allow_ranges: Vec::new(),
            deny_ranges: Vec::new(),
            also_listening: Vec::new(),
            tunnel_max_lifetime: Some(DEFAULT_TUNNEL_MAX_LIFETIME),
            max_connections: crate::accept::DEFAULT_MAX_CONNECTIONS,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
            request_head_timeout: DEFAULT_REQUEST_HEAD_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            rate_limit_redis: None,
            workload_name: None,
        }
    }
}
