//! HTTP virtual hosts and routes, TCP/TLS routes. VirtualService rules are first-match in
//! declared order, and so are these.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::matching::{HostMatch, Regex, StringMatcher, best_host_match};

/// A set of domains and the routes for them (one per VirtualService host at a Gateway port).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtualHost {
    /// `api.github.com:443`, as Istio names it.
    pub name: String,
    pub domains: Vec<HostMatch>,
    pub routes: Vec<Route>,
}

/// Chooses the virtual host for an authority (its port stripped), most specific domain first.
pub fn select_virtual_host<'a>(vhosts: &'a [VirtualHost], host: &str) -> Option<&'a VirtualHost> {
    best_host_match(
        host,
        vhosts
            .iter()
            .flat_map(|v| v.domains.iter().map(move |d| (d, v))),
    )
}

/// An index of a list of virtual hosts by domain, so that choosing one costs the same for
/// ten hosts or ten thousand: exact domains in a hash map, `*.suffix` domains by each suffix
/// of the host, `*` last. It chooses what [`select_virtual_host`] chooses (on equally specific
/// domains, the last virtual host).
#[derive(Debug, Default)]
pub struct VirtualHostIndex {
    // foldhash (randomly seeded), not SipHash: looked up per request, and the keys come from
    // config, so a client cannot grow colliding chains by choosing hosts.
    exact: HashMap<String, usize, foldhash::fast::RandomState>,
    /// `.example.com` of `*.example.com`.
    dot_suffix: HashMap<String, usize, foldhash::fast::RandomState>,
    /// Suffixes that do not start at a label (`*example.com`): rare, tried one by one.
    other_suffix: Vec<(String, usize)>,
    any: Option<usize>,
}

impl VirtualHostIndex {
    pub fn new(vhosts: &[VirtualHost]) -> VirtualHostIndex {
        let mut index = VirtualHostIndex::default();
        for (i, vh) in vhosts.iter().enumerate() {
            for d in &vh.domains {
                match d {
                    HostMatch::Exact(e) => {
                        index.exact.insert(e.to_ascii_lowercase(), i);
                    }
                    HostMatch::Suffix(s) if s.starts_with('.') => {
                        index.dot_suffix.insert(s.to_ascii_lowercase(), i);
                    }
                    HostMatch::Suffix(s) => {
                        index.other_suffix.retain(|(o, _)| o != s);
                        index.other_suffix.push((s.to_ascii_lowercase(), i));
                    }
                    HostMatch::Any => index.any = Some(i),
                }
            }
        }
        index
    }

    /// The index of the virtual host for `host` (no port).
    pub fn select(&self, host: &str) -> Option<usize> {
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        if let Some(i) = self.exact.get(host) {
            return Some(*i);
        }
        // The longest matching suffix wins: try the host's suffixes from the longest, at
        // each dot after the first character (a wildcard needs a non-empty label before it).
        let mut best: Option<(usize, usize)> = None;
        for (at, _) in host.char_indices().filter(|(at, c)| *c == '.' && *at > 0) {
            if let Some(i) = self.dot_suffix.get(&host[at..]) {
                best = Some((host.len() - at, *i));
                break;
            }
        }
        for (s, i) in &self.other_suffix {
            let m = HostMatch::Suffix(s.clone());
            if m.matches(host)
                && best.is_none_or(|(len, bi)| s.len() > len || (s.len() == len && *i > bi))
            {
                best = Some((s.len(), *i));
            }
        }
        best.map(|(_, i)| i).or(self.any)
    }
}

/// A lazily built [`VirtualHostIndex`]: not part of the snapshot's value (not serialized,
/// not compared), built on first use by a proxy.
#[derive(Default)]
pub struct IndexCell(OnceLock<VirtualHostIndex>);

impl IndexCell {
    pub fn get(&self, vhosts: &[VirtualHost]) -> &VirtualHostIndex {
        self.0.get_or_init(|| VirtualHostIndex::new(vhosts))
    }
}

impl Clone for IndexCell {
    fn clone(&self) -> Self {
        IndexCell::default()
    }
}

impl PartialEq for IndexCell {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for IndexCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndexCell")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// The VirtualService route's name, or `<ns>/<vs>/<index>`.
    pub name: String,
    #[serde(rename = "match")]
    pub match_: RouteMatch,
    pub action: RouteAction,
    /// Operations on the request before it is forwarded, and on the response after.
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub request_headers: HeaderOps,
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub response_headers: HeaderOps,
    /// Istio's `x-envoy-decorator-operation`: `host:port/*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// For a route that answers by itself, the cluster its requests are logged and counted
    /// against (Istio's `block_all` route answers 502 and names `BlackHoleCluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_cluster: Option<String>,
}

/// Everything must match (Istio's HTTPMatchRequest); an empty list of alternatives in
/// [`RouteMatch::any_of`] matches every request.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RouteMatch {
    /// Alternatives: the route applies when any of them matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any_of: Vec<RequestMatch>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RequestMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatcher>,
    /// Lower-cased header names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatcher>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, StringMatcher>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatcher>,
    /// The port the request arrived on (sidecar: its destination port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default)]
    pub ignore_uri_case: bool,
}

// Routes are built once per snapshot and read in place; boxing the common variant would add
// a pointer chase on every request for no saving that matters.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAction {
    Forward(Forward),
    Redirect(Redirect),
    DirectResponse { status: u16, body: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forward {
    /// Weights sum to 100 (a single destination has weight 100).
    pub clusters: Vec<WeightedCluster>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// `None`: no timeout (Istio's default for HTTP routes).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub request_headers: HeaderOps,
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub response_headers: HeaderOps,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mirror {
    pub cluster: String,
    /// Percentage of requests mirrored, 0–100.
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Rewrite {
    /// Replaces the matched path prefix (or the whole path for exact/regex matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_regex: Option<(Regex, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Derive the port from the scheme (`FROM_PROTOCOL_DEFAULT`).
    #[serde(default)]
    pub port_from_scheme: bool,
    /// 301 unless set.
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub attempts: u32,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub per_try_timeout: Option<Duration>,
    /// Envoy's retry conditions (`5xx`, `connect-failure`, `reset`, `retriable-4xx`…) and
    /// status codes.
    pub retry_on: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultDelay {
    #[serde(with = "duration")]
    pub delay: Duration,
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultAbort {
    pub status: u16,
    pub percent: f64,
}

/// Header operations: set (replace), add (append), remove. Names lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HeaderOps {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A route for TLS (by SNI) or TCP traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpRoute {
    pub name: String,
    /// SNI patterns (TLS routes); empty matches any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<HostMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<ipnet::IpNet>,
    pub clusters: Vec<WeightedCluster>,
}

impl TcpRoute {
    pub fn matches(&self, sni: Option<&str>, destination: Option<std::net::IpAddr>) -> bool {
        let sni_ok =
            self.sni.is_empty() || sni.is_some_and(|s| self.sni.iter().any(|m| m.matches(s)));
        let dest_ok = self.destination_subnets.is_empty()
            || destination.is_some_and(|d| self.destination_subnets.iter().any(|n| n.contains(&d)));
        sni_ok && dest_ok
    }
}

pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}s", d.as_secs_f64()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        let secs: f64 = s
            .strip_suffix('s')
            .and_then(|n| n.parse().ok())
            .filter(|n: &f64| n.is_finite() && *n >= 0.0)
            .ok_or_else(|| serde::de::Error::custom(format!("bad duration {s:?}")))?;
        Ok(Duration::from_secs_f64(secs))
    }
}

pub(crate) mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "super::duration")] Duration);
        Option::<W>::deserialize(d).map(|o| o.map(|W(d)| d))
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;

    fn vh(name: &str, domains: &[&str]) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| HostMatch::parse(d)).collect(),
            routes: Vec::new(),
        }
    }

    /// The index chooses exactly what the linear rule chooses, ties included.
    #[test]
    fn the_index_agrees_with_the_linear_choice() {
        let vhosts = vec![
            vh("a", &["api.example.com", "*.example.com"]),
            vh("b", &["*.api.example.com"]),
            vh("c", &["*"]),
            vh("d", &["API.example.com"]),
            vh("e", &["*ample.org", "*.org"]),
            vh("f", &["*.example.com"]),
            vh("g", &["*"]),
        ];
        let index = VirtualHostIndex::new(&vhosts);
        for host in [
            "api.example.com",
            "Api.Example.com",
            "x.api.example.com",
            "www.example.com",
            "example.com",
            ".example.com",
            "sample.org",
            "www.ample.org",
            "ample.org",
            "x.org",
            "unknown.net",
            "",
            "é.example.com",
        ] {
            let linear = select_virtual_host(&vhosts, host).map(|v| v.name.as_str());
            let indexed = index.select(host).map(|i| vhosts[i].name.as_str());
            assert_eq!(indexed, linear, "{host}");
        }
        assert_eq!(VirtualHostIndex::new(&[]).select("a.com"), None);
    }
}
