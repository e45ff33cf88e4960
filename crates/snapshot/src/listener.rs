//! Listeners and their filter chains: what arrives on a port, and which chain handles it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::matching::{HostMatch, best_host_match};
use crate::route::{TcpRoute, VirtualHost};

/// One port. At the gateway it is bound on `--bind`; in the sidecar it is virtual, chosen by
/// the destination port of what the app sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listener {
    /// `0.0.0.0_443`, as Envoy names it.
    pub name: String,
    pub port: u16,
    /// In the order they were declared; [`Listener::select`] chooses among them.
    pub chains: Vec<FilterChain>,
}

/// What a connection looks like before any byte is consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// A TLS ClientHello.
    Tls,
    /// Anything else.
    Plain,
}

/// Which connections a chain takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainMatch {
    pub transport: Transport,
    /// SNI patterns (TLS chains); empty takes any SNI, and a ClientHello without one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<HostMatch>,
}

/// TLS termination at a server (Gateway `tls.mode` SIMPLE, MUTUAL, or ISTIO_MUTUAL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerTls {
    pub mode: ServerTlsMode,
    pub certificate_chain: PathBuf,
    pub private_key: PathBuf,
    /// Client certificates are verified against this bundle (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    Simple,
    Mutual,
    /// Mesh mTLS with the proxy's own workload certificate.
    IstioMutual,
}

/// What runs on a connection once its chain is chosen (after TLS termination, if any).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum App {
    /// HTTP/1.1 and h2c, routed by Host through virtual hosts.
    Http {
        /// `http.443`: the route configuration's name, as `proxy-config routes` shows it.
        route_config: String,
        virtual_hosts: Vec<VirtualHost>,
        /// Built on first use: the virtual host of a request in constant time.
        #[serde(skip)]
        index: crate::route::IndexCell,
    },
    /// Bytes forwarded to a cluster, chosen by the first matching route.
    Tcp { routes: Vec<TcpRoute> },
}

impl App {
    /// The virtual host of an HTTP chain for `host` (no port), most specific domain first,
    /// in constant time in the number of hosts.
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        match self {
            App::Http {
                virtual_hosts,
                index,
                ..
            } => index
                .get(virtual_hosts)
                .select(host)
                .and_then(|i| virtual_hosts.get(i)),
            App::Tcp { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterChain {
    /// The Gateway server it came from (`default/egress-gateway/tls-github`), or a description.
    pub name: String,
    #[serde(rename = "match")]
    pub match_: ChainMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTls>,
    pub app: App,
}

impl Listener {
    /// True when some chain wants TLS, so the ClientHello must be read before choosing.
    pub fn inspects_tls(&self) -> bool {
        self.chains
            .iter()
            .any(|c| c.match_.transport == Transport::Tls)
    }

    /// Envoy's filter-chain selection: among chains of the connection's transport, the one
    /// whose server name matches the SNI most specifically (exact, then longest wildcard),
    /// else one without server names. `None` is Envoy's `filter_chain_not_found`.
    pub fn select(&self, transport: Transport, sni: Option<&str>) -> Option<&FilterChain> {
        let candidates = self
            .chains
            .iter()
            .filter(|c| c.match_.transport == transport);
        if let Some(sni) = sni {
            let named = best_host_match(
                sni,
                candidates
                    .clone()
                    .flat_map(|c| c.match_.server_names.iter().map(move |m| (m, c))),
            );
            if named.is_some() {
                return named;
            }
        }
        self.chains
            .iter()
            .find(|c| c.match_.transport == transport && c.match_.server_names.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(name: &str, transport: Transport, names: &[&str]) -> FilterChain {
        FilterChain {
            name: name.into(),
            match_: ChainMatch {
                transport,
                server_names: names.iter().map(|n| HostMatch::parse(n)).collect(),
            },
            tls: None,
            app: App::Tcp { routes: vec![] },
        }
    }

    #[test]
    fn chains_are_chosen_by_sni_then_fallback() {
        let l = Listener {
            name: "0.0.0.0_443".into(),
            port: 443,
            chains: vec![
                chain("github", Transport::Tls, &["api.github.com"]),
                chain("wiki", Transport::Tls, &["*.wikipedia.org"]),
                chain("plain", Transport::Plain, &[]),
            ],
        };
        let pick = |t, sni| l.select(t, sni).map(|c| c.name.as_str());
        assert_eq!(pick(Transport::Tls, Some("api.github.com")), Some("github"));
        assert_eq!(pick(Transport::Tls, Some("en.wikipedia.org")), Some("wiki"));
        assert_eq!(pick(Transport::Tls, Some("evil.com")), None);
        assert_eq!(pick(Transport::Tls, None), None);
        assert_eq!(pick(Transport::Plain, None), Some("plain"));
        assert!(l.inspects_tls());
    }
}
