//! The data plane's error: every way a connection or request can end early, and the one place
//! that maps each to its Envoy outcome (response flag, HTTP status, details, retryability).
//! Module errors (`sni::Error`, `tls::Error`, `dns::Error`, …) convert into it.

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;

use crate::upstream::dns;
use crate::upstream::guard;
use crate::{sni, tls};

/// The reason of an [`Error::Connect`] whose cluster's connect timeout expired (Envoy's
/// wording).
pub const CONNECT_TIMEOUT: &str = "delayed connect error: timeout";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener's port could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The DNS resolver could not be built from the system configuration.
    #[error("dns resolver: {0}")]
    Resolver(String),
    /// A configuration the data plane does not run yet.
    #[error("not supported: {0}")]
    NotSupported(Cow<'static, str>),
    /// The ClientHello could not be read.
    #[error("tls inspection: {0}")]
    Inspect(#[from] sni::Error),
    /// No filter chain takes this connection (Envoy's `filter_chain_not_found`).
    #[error("no filter chain matches")]
    NoFilterChain,
    /// The downstream TLS handshake failed.
    #[error("downstream tls: {0}")]
    DownstreamTls(String),
    /// Mesh mTLS arrived (a sidecar's `ISTIO_MUTUAL`) but this proxy has no workload identity
    /// to terminate it with: refused, never passed on unverified.
    #[error("mesh mTLS arrived but this gateway has no identity (--identity-dir)")]
    NoIdentity,
    /// The mesh mTLS handshake failed: a client certificate from another CA, an expired one,
    /// none at all, or a nested mesh layer.
    #[error("mesh mTLS handshake: {0}")]
    MeshTls(String),
    /// An AuthorizationPolicy denied the request or connection; the text is Envoy's
    /// `rbac_access_denied_matched_policy[…]`.
    #[error("denied by authorization policy: {0}")]
    Denied(String),
    /// No virtual host, route or TCP route takes this request (`NR`).
    #[error("no route")]
    NoRoute,
    /// The route names a cluster the snapshot does not have (`NC`).
    #[error("unknown cluster {0}")]
    UnknownCluster(String),
    /// The cluster has no endpoint to send to (`UH`).
    #[error("no healthy upstream: {0}")]
    NoHealthyUpstream(Cow<'static, str>),
    /// The request is refused by design (REGISTRY_ONLY's BlackHoleCluster).
    #[error("black hole")]
    BlackHole,
    /// Every address the destination resolved to is one the IP guard refuses
    /// ([`crate::upstream::guard`]): nothing was dialed.
    #[error(transparent)]
    DestinationDenied(Box<guard::Denied>),
    /// Domain fronting: a request or ClientHello for another host than the tunnel or TLS
    /// session it arrived in was opened to (HTTP `421 Misdirected Request`; a stream is
    /// closed).
    #[error("domain fronting: {0}")]
    Fronting(String),
    /// A new configuration no longer allows this open stream: its route is gone (a denial by
    /// the new AuthorizationPolicies is [`Error::Denied`]).
    #[error("closed: the new configuration no longer routes this stream ({0})")]
    Revoked(&'static str),
    /// The host is registered, but none of its ServiceEntries declares this port (`403`).
    #[error("{0}: the ServiceEntries registering this host do not declare the port")]
    PortNotDeclared(String),
    /// Dynamic DNS resolution of the requested host failed (`DF`).
    #[error("dns resolution failed: {0}")]
    DnsFailed(#[from] dns::Error),
    /// TCP connect failed or timed out (`UF`).
    #[error("upstream connect {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// Upstream TLS settings could not be loaded, or the handshake failed (`UF`).
    #[error("upstream tls: {0}")]
    UpstreamTls(String),
    /// A local TLS file could not be loaded.
    #[error(transparent)]
    TlsConfig(#[from] tls::Error),
    /// A circuit-breaker limit was hit (`UO`).
    #[error("upstream overflow: {0}")]
    Overflow(&'static str),
    /// The route timeout expired before the response started (`UT`).
    #[error("upstream request timeout")]
    Timeout,
    /// The upstream connection ended before the response started (`UC`).
    #[error("upstream reset: {0}")]
    UpstreamReset(String),
    /// The upstream answered something HTTP does not allow: both `Content-Length` and
    /// `Transfer-Encoding`, a status outside 100–599 (`UPE`, 502, as Envoy refuses them).
    #[error("upstream protocol error: {0}")]
    UpstreamProtocol(String),
    /// The downstream sent something unusable, or too slowly (`DPE`).
    #[error("downstream: {0}")]
    Downstream(String),
    /// An HTTP/1 request framed in a way Envoy's codec refuses (`400`, `DPE`); the text is
    /// Envoy's details (`http1.content_length_and_chunked_not_allowed`).
    #[error("downstream request framing: {0}")]
    Http1Framing(&'static str),
    /// An HTTP/2 request whose header list (RFC 9113 §6.5.2: each field's name and value
    /// octets plus 32, pseudo-headers included) is over the listener's bound (`431`, `DPE`).
    #[error("request header list of {0} bytes is over the limit")]
    HeaderListTooLarge(usize),
    /// The request path cannot be normalised (an escaped NUL): Envoy's 400 with an empty body,
    /// no response flag and details `path_normalization_failed`.
    #[error("request path cannot be normalised")]
    PathNormalization,
    /// A local or global rate limit refused the request (`RL`).
    #[error("rate limited")]
    RateLimited(Box<crate::ratelimit::Limited>),
    /// The global rate limit's store failed and its filter denies (`RLSE`).
    #[error("rate limit service error")]
    RateLimitService(u16),
    /// The global rate limit's store cannot be set up (a bad `--rate-limit-redis`).
    #[error("rate limit store: {0}")]
    RateLimitStore(String),
    /// Fault injection aborted the request (`FI`).
    #[error("fault abort {0}")]
    FaultAbort(u16),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Error {
    /// Envoy's `%RESPONSE_FLAGS%` for this outcome; `-` when it has none.
    pub fn response_flag(&self) -> &'static str {
        match self {
            Error::NoFilterChain | Error::NoRoute | Error::PortNotDeclared(_) => "NR",
            Error::UnknownCluster(_) => "NC",
            Error::NoHealthyUpstream(_) | Error::BlackHole => "UH",
            Error::DnsFailed(_) => "DF",
            Error::Connect { .. } | Error::UpstreamTls(_) | Error::TlsConfig(_) => "UF",
            Error::NotSupported(_) => "UF",
            Error::Overflow(_) => "UO",
            Error::Timeout => "UT",
            Error::UpstreamReset(_) => "UC",
            Error::FaultAbort(_) => "FI",
            Error::RateLimited(_) => "RL",
            Error::RateLimitService(_) => "RLSE",
            Error::RateLimitStore(_) => "-",
            Error::Downstream(_) | Error::Http1Framing(_) | Error::HeaderListTooLarge(_) => "DPE",
            Error::PathNormalization => "-",
            Error::UpstreamProtocol(_) => "UPE",
            // Envoy's RBAC filters set no response flag: a denial shows as `403 -` (HTTP) or
            // a closed connection, named by its details.
            Error::Denied(_) => "-",
            // No Envoy flag says "refused by address"; like an RBAC denial, a policy refusal
            // shows as `403 -`, named by its details.
            Error::DestinationDenied(_) | Error::Fronting(_) | Error::Revoked(_) => "-",
            Error::DownstreamTls(_) | Error::Inspect(_) => "-",
            Error::NoIdentity | Error::MeshTls(_) => "-",
            Error::Bind { .. } | Error::Resolver(_) | Error::Io(_) => "-",
        }
    }

    /// The status an HTTP client sees.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::NoRoute | Error::NoFilterChain => 404,
            Error::BlackHole => 502,
            Error::Timeout => 504,
            Error::FaultAbort(status) => *status,
            Error::RateLimited(l) => l.status,
            Error::RateLimitService(status) => *status,
            Error::Downstream(_) | Error::Http1Framing(_) | Error::PathNormalization => 400,
            Error::Fronting(_) => 421,
            Error::HeaderListTooLarge(_) => 431,
            Error::PortNotDeclared(_) => 403,
            Error::UpstreamProtocol(_) => 502,
            Error::Denied(_) | Error::DestinationDenied(_) => sluice_snapshot::authz::DENIED_STATUS,
            _ => 503,
        }
    }

    /// True when another attempt (to another endpoint, or a new connection) may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::UpstreamTls(_)
                | Error::UpstreamReset(_)
                | Error::Timeout
                | Error::NoHealthyUpstream(_)
                | Error::DnsFailed(_)
        )
    }

    /// True for a connect attempt the cluster's connect timeout ended (no answer at all, as
    /// opposed to a refusal).
    pub fn is_connect_timeout(&self) -> bool {
        matches!(self, Error::Connect { reason, .. } if reason == CONNECT_TIMEOUT)
    }

    /// True for failures to establish the upstream connection (Envoy's `connect-failure`).
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, Error::Connect { .. } | Error::UpstreamTls(_))
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%` (HTTP) or `%CONNECTION_TERMINATION_DETAILS%` (TCP).
    pub fn details(&self) -> &'static str {
        match self {
            Error::NoFilterChain => "filter_chain_not_found",
            Error::NoRoute => "route_not_found",
            Error::UnknownCluster(_) => "cluster_not_found",
            Error::NoHealthyUpstream(_) | Error::BlackHole => "no_healthy_upstream",
            Error::DnsFailed(_) => "dns_resolution_failure",
            Error::Connect { .. } | Error::UpstreamTls(_) | Error::TlsConfig(_) => {
                "upstream_reset_before_response_started{connection_failure}"
            }
            Error::NotSupported(_) => "not_supported",
            Error::Overflow(_) => "upstream_overflow",
            Error::Timeout => "response_timeout",
            Error::UpstreamReset(_) => {
                "upstream_reset_before_response_started{connection_termination}"
            }
            Error::FaultAbort(_) => "fault_filter_abort",
            Error::RateLimited(l) => l.details,
            Error::RateLimitService(_) => crate::ratelimit::global::SERVICE_ERROR,
            Error::RateLimitStore(_) => "io_error",
            Error::Downstream(_) => "downstream_protocol_error",
            Error::Http1Framing(details) => details,
            Error::PathNormalization => "path_normalization_failed",
            Error::HeaderListTooLarge(_) => "http2.header_list_too_large",
            Error::UpstreamProtocol(_) => "upstream_reset_before_response_started{protocol_error}",
            Error::DownstreamTls(_) => "tls_handshake_failed",
            Error::NoIdentity => "mesh_mtls_without_identity",
            Error::MeshTls(_) => "mesh_mtls_handshake_failed",
            Error::Denied(_) => "rbac_access_denied",
            Error::DestinationDenied(_) => "destination_ip_denied",
            Error::Fronting(_) => "misdirected_request",
            Error::Revoked(_) => "route_revoked",
            Error::PortNotDeclared(_) => "port_not_declared",
            Error::Inspect(sni::Error::Timeout) => "tls_inspector_timeout",
            Error::Inspect(_) => "tls_inspector_error",
            Error::Bind { .. } | Error::Resolver(_) | Error::Io(_) => "io_error",
        }
    }

    /// [`Error::details`], with the policy a denial names
    /// (`rbac_access_denied_matched_policy[ns[NS]-policy[NAME]-rule[I]]`).
    pub fn full_details(&self) -> Cow<'static, str> {
        match self {
            Error::Denied(details) => Cow::Owned(details.clone()),
            Error::DestinationDenied(d) => {
                Cow::Owned(format!("destination_ip_denied{{{}}}", d.reason_name()))
            }
            other => Cow::Borrowed(other.details()),
        }
    }

    /// Envoy's `%DOWNSTREAM_TRANSPORT_FAILURE_REASON%`: why the client's TLS failed.
    pub fn downstream_failure_reason(&self) -> Option<String> {
        match self {
            Error::DownstreamTls(reason) | Error::MeshTls(reason) => Some(reason.clone()),
            Error::NoIdentity => Some(self.to_string()),
            _ => None,
        }
    }

    /// Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    pub fn transport_failure_reason(&self) -> Option<String> {
        match self {
            Error::Connect { reason, .. } => Some(reason.clone()),
            Error::UpstreamTls(reason) => Some(format!("TLS_error: {reason}")),
            Error::TlsConfig(e) => Some(e.to_string()),
            Error::NotSupported(what) => Some(format!("not supported: {what}")),
            _ => None,
        }
    }

    /// The body of the local reply, as Envoy words them.
    pub fn body(&self) -> String {
        match self {
            Error::NoRoute | Error::NoFilterChain | Error::PathNormalization => String::new(),
            Error::BlackHole => String::new(),
            Error::Timeout => "upstream request timeout".into(),
            Error::Overflow(_) => "upstream connect error or disconnect/reset before headers. reset reason: overflow".into(),
            Error::NoHealthyUpstream(_) => "no healthy upstream".into(),
            Error::Http1Framing(_) => "Bad Request".into(),
            Error::HeaderListTooLarge(_) => "Request Header Fields Too Large".into(),
            Error::FaultAbort(_) => "fault filter abort".into(),
            // Envoy's local rate limit answers with its details; the global one with nothing.
            Error::RateLimited(l) if l.details == crate::ratelimit::LOCAL_RATE_LIMITED => {
                l.details.into()
            }
            Error::RateLimited(_) | Error::RateLimitService(_) => String::new(),
            Error::Denied(_) => sluice_snapshot::authz::DENIED_BODY.into(),
            Error::DestinationDenied(d) => d.to_string(),
            Error::Fronting(why) => format!("misdirected request: {why}"),
            Error::Connect { reason, .. } => format!(
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: {reason}"
            ),
            Error::UpstreamTls(reason) => format!(
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: TLS_error: {reason}"
            ),
            Error::UpstreamReset(_) => "upstream connect error or disconnect/reset before headers. reset reason: connection termination".into(),
            Error::UpstreamProtocol(_) => "upstream connect error or disconnect/reset before headers. reset reason: protocol error".into(),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_envoy() {
        let table: [(Error, &str, u16, bool); 10] = [
            (
                Error::RateLimited(Box::new(crate::ratelimit::Limited {
                    status: 429,
                    headers: vec![],
                    details: crate::ratelimit::LOCAL_RATE_LIMITED,
                })),
                "RL",
                429,
                false,
            ),
            (Error::NoRoute, "NR", 404, false),
            (Error::NoHealthyUpstream("x".into()), "UH", 503, true),
            (Error::BlackHole, "UH", 502, false),
            (
                Error::Connect {
                    addr: SocketAddr::from(([127, 0, 0, 1], 1)),
                    reason: "refused".into(),
                },
                "UF",
                503,
                true,
            ),
            (Error::UpstreamTls("bad cert".into()), "UF", 503, true),
            (Error::Overflow("max_connections"), "UO", 503, false),
            (Error::Timeout, "UT", 504, true),
            (Error::FaultAbort(418), "FI", 418, false),
            (
                Error::Denied("rbac_access_denied_matched_policy[none]".into()),
                "-",
                403,
                false,
            ),
        ];
        for (e, flag, status, retry) in table {
            assert_eq!(e.response_flag(), flag, "{e}");
            assert_eq!(e.http_status(), status, "{e}");
            assert_eq!(e.retryable(), retry, "{e}");
        }
        let denied = Error::Denied("rbac_access_denied_matched_policy[none]".into());
        assert_eq!(denied.body(), "RBAC: access denied");
        assert_eq!(
            denied.full_details(),
            "rbac_access_denied_matched_policy[none]"
        );
        assert_eq!(Error::NoRoute.full_details(), "route_not_found");
    }
}
