//! Name resolution for clusters: hickory's resolver, with `--dns-server` as the only
//! nameserver when given (UDP and TCP), else the system configuration. Answers are cached
//! until their TTL runs out, on tokio's clock.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::time::Instant;

const MAX_CACHED: usize = 10_000;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The resolver could not be built from the system configuration.
    #[error("dns resolver: {0}")]
    Build(String),
    #[error("resolving {host}: {reason}")]
    Lookup { host: String, reason: String },
    #[error("{0}: not a valid host name")]
    BadName(String),
}

type Answer = (Arc<[IpAddr]>, Instant);

/// `host` without the brackets an IPv6 literal is written in (`[::1]` → `::1`).
pub fn unbracket(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The address a host written as an IP literal names (`10.0.0.1`, `[::1]`), else `None`.
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    unbracket(host).parse().ok()
}

pub struct Resolver {
    inner: TokioResolver,
    cache: Mutex<HashMap<String, Answer>>,
}

impl Resolver {
    pub fn new(dns_server: Option<SocketAddr>) -> Result<Resolver, Error> {
        let builder = match dns_server {
            Some(server) => {
                let mut ns = NameServerConfig::udp_and_tcp(server.ip());
                for c in &mut ns.connections {
                    c.port = server.port();
                }
                let config = ResolverConfig::from_parts(None, Vec::new(), vec![ns]);
                let mut b =
                    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
                let opts: &mut ResolverOpts = b.options_mut();
                opts.ndots = 0;
                opts.timeout = Duration::from_secs(2);
                opts.attempts = 2;
                b
            }
            None => match TokioResolver::builder_tokio() {
                Ok(b) => b,
                Err(e) => {
                    // Without a system configuration only IP literals resolve; the proxy
                    // still starts (static endpoints need no DNS).
                    tracing::warn!(error = %e, "no system DNS configuration");
                    TokioResolver::builder_with_config(
                        ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
                        TokioRuntimeProvider::default(),
                    )
                }
            },
        };
        let inner = builder.build().map_err(|e| Error::Build(e.to_string()))?;
        Ok(Resolver {
            inner,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The addresses of `host` (an IP literal resolves to itself).
    pub async fn resolve(&self, host: &str) -> Result<Arc<[IpAddr]>, Error> {
        if let Some(ip) = ip_literal(host) {
            return Ok(Arc::from([ip]));
        }
        if host.is_empty() || host.len() > 253 || host.contains(['/', ' ', '@', ':']) {
            return Err(Error::BadName(host.to_owned()));
        }
        let key = host.to_ascii_lowercase();
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((ips, until)) = cache.get(&key)
                && *until > now
            {
                return Ok(ips.clone());
            }
        }
        let lookup = self
            .inner
            .lookup_ip(key.as_str())
            .await
            .map_err(|e| Error::Lookup {
                host: host.to_owned(),
                reason: e.to_string(),
            })?;
        let ips: Arc<[IpAddr]> = lookup.iter().collect();
        if ips.is_empty() {
            return Err(Error::Lookup {
                host: host.to_owned(),
                reason: "no addresses".into(),
            });
        }
        // hickory's deadline is on std's clock: carry the time left over to tokio's, so that
        // TTLs follow tokio's clock (paused time in tests) like every other timer here.
        let until = Instant::now()
            + lookup
                .valid_until()
                .saturating_duration_since(std::time::Instant::now());
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (_, u)| *u > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (ips.clone(), until));
        Ok(ips)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_with_and_without_brackets() {
        assert_eq!(
            ip_literal("[::1]"),
            Some(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]))
        );
        assert_eq!(ip_literal("127.0.0.1"), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(ip_literal("example.com"), None);
        assert_eq!(unbracket("[::1]"), "::1");
    }
}
