//! `VirtualService` (networking.istio.io): ordered routing rules for HTTP, TLS (by SNI) and TCP
//! traffic to a set of hosts, applied by the sidecars (`mesh`) and/or named gateways.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::values::Duration;
pub use crate::values::{PortSelector, StringMatch};

/// Istio's `VirtualService` spec.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualService {
    /// Destination hosts the rules apply to (empty for a delegate VirtualService).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,

    /// Gateways (`[namespace/]name`) and/or `mesh` that apply these rules; empty means `mesh`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HTTPRoute>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TLSRoute>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TCPRoute>,

    /// Namespaces that can see this VirtualService: `.`, `*` or names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

/// A service (and optionally subset and port) that traffic is sent to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Registry host name (short names are relative to the rule's namespace).
    pub host: String,

    /// Subset defined in the host's DestinationRule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

/// An HTTP routing rule: matches, then one action (route, redirect, direct response or delegate)
/// plus request handling options.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPRoute {
    /// Name for logs and debugging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// Any one block matching selects the rule (OR); fields inside a block are ANDed. Empty
    /// matches everything.
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub match_: Vec<HTTPMatchRequest>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<HTTPRouteDestination>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<HTTPRedirect>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<HTTPDirectResponse>,

    /// Hand routing over to another VirtualService's `http` rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<Delegate>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HTTPRewrite>,

    /// Whole-request timeout; unset means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HTTPRetry>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<HTTPFaultInjection>,

    /// Single mirror destination (see also `mirrors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Destination>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<HTTPMirrorPolicy>,

    /// Deprecated integer form of `mirrorPercentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percent: Option<u32>,

    /// Share of traffic sent to `mirror`; all of it when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<Percent>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

/// Reference to a delegate VirtualService.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delegate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// Defaults to the referring VirtualService's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Header manipulation for requests and responses.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Applied before forwarding the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,

    /// Applied before returning the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

/// `Headers.HeaderOperations`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    /// Overwrite these headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,

    /// Append these values (comma-joined with existing ones).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,

    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A routing rule for TLS that is not terminated, matched mostly by SNI.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TLSRoute {
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub match_: Vec<TLSMatchAttributes>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

/// A routing rule for opaque TCP.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TCPRoute {
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub match_: Vec<L4MatchAttributes>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

/// Conditions on an HTTP request, all of which must hold.
///
/// In `headers`, `queryParams` and `withoutHeaders` a value of `{}` (or null) is `None`: the
/// header or parameter only has to be present.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPMatchRequest {
    /// Name for logs (joined to the route's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,

    /// Lower-case header names to matches.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "presence_map"
    )]
    pub headers: BTreeMap<String, Option<StringMatch>>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,

    /// Labels the calling workload must carry (sidecars only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,

    /// Overrides the VirtualService's `gateways` for this match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,

    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "presence_map"
    )]
    pub query_params: BTreeMap<String, Option<StringMatch>>,

    /// Case-insensitive `exact`/`prefix` URI matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_uri_case: Option<bool>,

    /// Headers that must NOT match for the request to match.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "presence_map"
    )]
    pub without_headers: BTreeMap<String, Option<StringMatch>>,

    /// Namespace the calling workload must be in (sidecars only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,

    /// Proxy statistics prefix for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat_prefix: Option<String>,
}

/// A weighted HTTP destination.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPRouteDestination {
    pub destination: Destination,

    /// Relative weight among the rule's destinations; a lone destination gets everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

/// A weighted L4 (TLS/TCP) destination.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    pub destination: Destination,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

/// Conditions on a TCP connection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    /// Destination IPs or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,

    /// Hidden in Istio's docs; source IP or CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_subnet: Option<String>,

    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

/// Conditions on a TLS connection (before termination).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TLSMatchAttributes {
    /// SNI values (leading `*.` wildcard allowed); must fall within the VirtualService's hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,

    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

/// Answer with a redirect instead of forwarding. `port` and `derivePort` are a oneof.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPRedirect {
    /// Replaces the whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derive_port: Option<RedirectPortSelection>,

    /// e.g. `https`; the request's scheme when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,

    /// Status code; 301 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_code: Option<u32>,
}

/// `HTTPRedirect.RedirectPortSelection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    /// 80 for http, 443 for https.
    #[default]
    FromProtocolDefault,
    /// The port the request came in on.
    FromRequestPort,
}

/// Answer with a fixed response.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPDirectResponse {
    pub status: u32,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<HTTPBody>,
}

/// Body of a direct response: `string` and `bytes` are a oneof.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,

    /// Base64 as written in the YAML (decoded by validation/compilation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
}

/// Rewrites applied before forwarding.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPRewrite {
    /// Replaces the matched prefix (or the whole path for other matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// Regex path rewrite (RE2 syntax; `\1`-style group references in `rewrite`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub match_: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
}

/// Retry policy of an HTTP route.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPRetry {
    /// Number of retries (0 disables retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,

    /// Comma-separated Envoy retry conditions and/or status codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_remote_localities: Option<bool>,

    /// Avoid hosts already tried (default true in Istio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_ignore_previous_hosts: Option<bool>,

    /// Base interval between retries (25ms when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Duration>,
}

/// Cross-origin resource sharing policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Deprecated exact-origin list; use `allowOrigins`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origin: Vec<String>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// `CorsPolicy.UnmatchedPreflights`: what to do with preflights from origins not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// Same as FORWARD.
    #[default]
    Unspecified,
    Forward,
    Ignore,
}

/// Faults injected on the client side.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPFaultInjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
}

/// `HTTPFaultInjection.Delay`. `fixedDelay` and `exponentialDelay` are a oneof.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delay {
    /// Deprecated integer form of `percentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<Duration>,

    /// Hidden in Istio's docs and not implemented there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential_delay: Option<Duration>,

    /// Share of requests delayed; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// `HTTPFaultInjection.Abort`. `httpStatus`, `grpcStatus` and `http2Error` are a oneof.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Abort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,

    /// gRPC status name such as `UNAVAILABLE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,

    /// Hidden in Istio's docs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_error: Option<String>,

    /// Share of requests aborted; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// One mirror destination with its share of traffic.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPMirrorPolicy {
    pub destination: Destination,

    /// All traffic when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// A percentage in [0.0, 100.0] (range checked by validation).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

/// (De)serializes `map<string, StringMatch>` where an empty object (or null) stands for
/// "present, any value".
mod presence_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::values::StringMatch;

    #[derive(Deserialize, Serialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Raw {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exact: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        regex: Option<String>,
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Option<StringMatch>>, D::Error> {
        let raw = BTreeMap::<String, Option<Raw>>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                let m = match v {
                    None => None,
                    Some(Raw {
                        exact: None,
                        prefix: None,
                        regex: None,
                    }) => None,
                    Some(Raw {
                        exact: Some(s),
                        prefix: None,
                        regex: None,
                    }) => Some(StringMatch::Exact(s)),
                    Some(Raw {
                        exact: None,
                        prefix: Some(s),
                        regex: None,
                    }) => Some(StringMatch::Prefix(s)),
                    Some(Raw {
                        exact: None,
                        prefix: None,
                        regex: Some(s),
                    }) => Some(StringMatch::Regex(s)),
                    Some(_) => {
                        return Err(serde::de::Error::custom(format!(
                            "match for {k:?}: only one of exact, prefix or regex may be set"
                        )));
                    }
                };
                Ok((k, m))
            })
            .collect()
    }

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<String, Option<StringMatch>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let raw: BTreeMap<&String, Raw> = map
            .iter()
            .map(|(k, v)| {
                let mut r = Raw {
                    exact: None,
                    prefix: None,
                    regex: None,
                };
                match v {
                    Some(StringMatch::Exact(x)) => r.exact = Some(x.clone()),
                    Some(StringMatch::Prefix(x)) => r.prefix = Some(x.clone()),
                    Some(StringMatch::Regex(x)) => r.regex = Some(x.clone()),
                    None => {}
                }
                (k, r)
            })
            .collect();
        raw.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn guide_virtualservice_github() {
        let vs: VirtualService = serde_json::from_value(json!({
            "hosts": ["api.github.com"],
            "gateways": ["mesh", "egress-gateway"],
            "tls": [
                {
                    "match": [{"gateways": ["mesh"], "port": 443, "sniHosts": ["api.github.com"]}],
                    "route": [{"destination": {
                        "host": "istio-egressgateway.istio-system.svc.cluster.local",
                        "port": {"number": 443}
                    }}]
                },
                {
                    "match": [{"gateways": ["egress-gateway"], "port": 443, "sniHosts": ["api.github.com"]}],
                    "route": [{"destination": {"host": "api.github.com", "port": {"number": 443}}}]
                }
            ]
        }))
        .expect("parses");
        assert_eq!(vs.gateways, vec!["mesh", "egress-gateway"]);
        assert_eq!(vs.tls.len(), 2);
        let first = &vs.tls[0];
        assert_eq!(first.match_[0].sni_hosts, vec!["api.github.com"]);
        assert_eq!(first.match_[0].port, Some(443));
        assert_eq!(first.match_[0].gateways, vec!["mesh"]);
        assert_eq!(
            first.route[0].destination.host,
            "istio-egressgateway.istio-system.svc.cluster.local"
        );
        assert_eq!(
            vs.tls[1].route[0].destination.port,
            Some(PortSelector { number: 443 })
        );
        assert!(vs.http.is_empty() && vs.tcp.is_empty());
    }

    #[test]
    fn guide_virtualservice_tls_origination() {
        let vs: VirtualService = serde_json::from_value(json!({
            "hosts": ["api.external-service.com"],
            "gateways": ["mesh", "egress-gateway-tls-origination"],
            "http": [
                {
                    "match": [{"gateways": ["mesh"], "port": 80}],
                    "route": [{
                        "destination": {"host": "istio-egressgateway.istio-system.svc.cluster.local", "port": {"number": 80}},
                        "weight": 100
                    }]
                },
                {
                    "match": [{"gateways": ["egress-gateway-tls-origination"], "port": 80}],
                    "route": [{
                        "destination": {"host": "api.external-service.com", "port": {"number": 443}},
                        "weight": 100
                    }]
                }
            ]
        }))
        .expect("parses");
        assert_eq!(vs.http.len(), 2);
        assert_eq!(vs.http[1].match_[0].port, Some(80));
        assert_eq!(vs.http[1].route[0].weight, Some(100));
        assert_eq!(
            vs.http[1].route[0].destination.port.map(|p| p.number),
            Some(443)
        );
    }

    #[test]
    fn rich_http_route() {
        let vs: VirtualService = serde_json::from_value(json!({
            "hosts": ["reviews.prod.svc.cluster.local"],
            "exportTo": ["."],
            "http": [
                {
                    "name": "reviews-v2",
                    "match": [
                        {
                            "name": "api",
                            "uri": {"prefix": "/api/"},
                            "scheme": {"exact": "https"},
                            "method": {"regex": "GET|HEAD"},
                            "authority": {"exact": "reviews"},
                            "headers": {"end-user": {"exact": "jason"}, "x-present": {}},
                            "queryParams": {"debug": {"exact": ""}},
                            "withoutHeaders": {"x-skip": {"prefix": "1"}},
                            "ignoreUriCase": true,
                            "sourceLabels": {"app": "productpage"},
                            "sourceNamespace": "prod",
                            "statPrefix": "reviews_api",
                            "port": 9080
                        },
                        {"uri": {"exact": "/health"}}
                    ],
                    "rewrite": {"uri": "/v2/", "authority": "reviews-v2", "uriRegexRewrite": {"match": "^/api/(.*)$", "rewrite": "/\\1"}},
                    "timeout": "10s",
                    "retries": {
                        "attempts": 3, "perTryTimeout": "2s", "retryOn": "gateway-error,connect-failure",
                        "retryRemoteLocalities": true, "retryIgnorePreviousHosts": false, "backoff": "100ms"
                    },
                    "fault": {
                        "delay": {"percentage": {"value": 0.1}, "fixedDelay": "5s"},
                        "abort": {"percentage": {"value": 50.0}, "httpStatus": 503}
                    },
                    "mirror": {"host": "reviews-shadow", "subset": "v1"},
                    "mirrorPercentage": {"value": 25.5},
                    "mirrorPercent": 10,
                    "mirrors": [{"destination": {"host": "audit"}, "percentage": {"value": 5}}],
                    "corsPolicy": {
                        "allowOrigins": [{"exact": "https://example.com"}, {"regex": ".*\\.example\\.org"}],
                        "allowOrigin": ["https://old.example.com"],
                        "allowMethods": ["GET", "POST"],
                        "allowHeaders": ["X-Foo"],
                        "exposeHeaders": ["X-Bar"],
                        "maxAge": "24h",
                        "allowCredentials": false,
                        "unmatchedPreflights": "IGNORE"
                    },
                    "headers": {
                        "request": {"set": {"x-env": "prod"}, "add": {"x-trace": "1"}, "remove": ["x-debug"]},
                        "response": {"remove": ["server"]}
                    },
                    "route": [
                        {"destination": {"host": "reviews", "subset": "v2"}, "weight": 25,
                         "headers": {"response": {"set": {"x-version": "v2"}}}},
                        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 75}
                    ]
                },
                {
                    "match": [{"uri": {"exact": "/old"}}],
                    "redirect": {"uri": "/new", "authority": "new.example.com", "derivePort": "FROM_REQUEST_PORT", "scheme": "https", "redirectCode": 308}
                },
                {
                    "match": [{"uri": {"prefix": "/teapot"}}],
                    "directResponse": {"status": 418, "body": {"string": "short and stout"}}
                },
                {
                    "match": [{"uri": {"prefix": "/delegated"}}],
                    "delegate": {"name": "other", "namespace": "ns2"}
                },
                {
                    "fault": {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 1}},
                              "delay": {"percent": 10, "exponentialDelay": "1s"}},
                    "route": [{"destination": {"host": "reviews"}}]
                }
            ],
            "tcp": [{
                "match": [{"port": 27017, "destinationSubnets": ["10.0.0.0/8"], "sourceSubnet": "1.2.3.4/32",
                           "sourceLabels": {"app": "x"}, "gateways": ["mesh"], "sourceNamespace": "db"}],
                "route": [{"destination": {"host": "mongo.backup", "port": {"number": 5555}}, "weight": 100}]
            }]
        }))
        .expect("parses");

        let r = &vs.http[0];
        let m = &r.match_[0];
        assert_eq!(m.uri, Some(StringMatch::Prefix("/api/".into())));
        assert_eq!(m.method, Some(StringMatch::Regex("GET|HEAD".into())));
        assert_eq!(
            m.headers.get("end-user"),
            Some(&Some(StringMatch::Exact("jason".into())))
        );
        assert_eq!(m.headers.get("x-present"), Some(&None));
        assert_eq!(
            m.query_params.get("debug"),
            Some(&Some(StringMatch::Exact(String::new())))
        );
        assert_eq!(
            m.without_headers.get("x-skip"),
            Some(&Some(StringMatch::Prefix("1".into())))
        );
        assert_eq!(m.ignore_uri_case, Some(true));
        assert_eq!(m.port, Some(9080));
        assert_eq!(r.timeout, Some(Duration::from_secs(10)));
        let retries = r.retries.as_ref().expect("retries");
        assert_eq!(retries.attempts, Some(3));
        assert_eq!(retries.per_try_timeout, Some(Duration::from_secs(2)));
        assert_eq!(retries.backoff, Some(Duration::from_millis(100)));
        let fault = r.fault.as_ref().expect("fault");
        let delay = fault.delay.as_ref().expect("delay");
        assert_eq!(delay.fixed_delay, Some(Duration::from_secs(5)));
        assert_eq!(delay.percentage, Some(Percent { value: 0.1 }));
        assert_eq!(fault.abort.as_ref().and_then(|a| a.http_status), Some(503));
        let rewrite = r.rewrite.as_ref().expect("rewrite");
        assert_eq!(rewrite.uri.as_deref(), Some("/v2/"));
        assert_eq!(
            rewrite
                .uri_regex_rewrite
                .as_ref()
                .and_then(|x| x.match_.as_deref()),
            Some("^/api/(.*)$")
        );
        assert_eq!(r.mirror_percentage, Some(Percent { value: 25.5 }));
        assert_eq!(r.mirror_percent, Some(10));
        assert_eq!(r.mirrors[0].percentage, Some(Percent { value: 5.0 }));
        let cors = r.cors_policy.as_ref().expect("cors");
        assert_eq!(cors.max_age, Some(Duration::from_secs(86_400)));
        assert_eq!(cors.unmatched_preflights, Some(UnmatchedPreflights::Ignore));
        assert_eq!(cors.allow_origins.len(), 2);
        let headers = r
            .headers
            .as_ref()
            .and_then(|h| h.request.as_ref())
            .expect("req headers");
        assert_eq!(headers.set.get("x-env").map(String::as_str), Some("prod"));
        assert_eq!(headers.remove, vec!["x-debug"]);
        assert_eq!(r.route[0].weight, Some(25));
        assert!(r.route[0].headers.is_some());

        let redirect = vs.http[1].redirect.as_ref().expect("redirect");
        assert_eq!(
            redirect.derive_port,
            Some(RedirectPortSelection::FromRequestPort)
        );
        assert_eq!(redirect.redirect_code, Some(308));
        let direct = vs.http[2].direct_response.as_ref().expect("direct");
        assert_eq!(direct.status, 418);
        assert_eq!(
            direct.body.as_ref().and_then(|b| b.string.as_deref()),
            Some("short and stout")
        );
        assert_eq!(
            vs.http[3].delegate,
            Some(Delegate {
                name: Some("other".into()),
                namespace: Some("ns2".into())
            })
        );
        let abort = vs.http[4]
            .fault
            .as_ref()
            .and_then(|f| f.abort.as_ref())
            .expect("abort");
        assert_eq!(abort.grpc_status.as_deref(), Some("UNAVAILABLE"));
        assert_eq!(vs.tcp[0].match_[0].destination_subnets, vec!["10.0.0.0/8"]);
        assert_eq!(
            vs.tcp[0].route[0].destination.port.map(|p| p.number),
            Some(5555)
        );
    }

    #[test]
    fn presence_matches_round_trip_as_empty_objects() {
        let m: HTTPMatchRequest = serde_json::from_value(json!({
            "headers": {"a": {}, "b": null, "c": {"regex": "x+"}}
        }))
        .expect("parses");
        assert_eq!(m.headers.get("a"), Some(&None));
        assert_eq!(m.headers.get("b"), Some(&None));
        let back = serde_json::to_value(&m).expect("ser");
        assert_eq!(
            back,
            json!({"headers": {"a": {}, "b": {}, "c": {"regex": "x+"}}})
        );
        let again: HTTPMatchRequest = serde_json::from_value(back).expect("re-parse");
        assert_eq!(again, m);
    }

    #[test]
    fn header_match_with_two_kinds_is_rejected() {
        let err = serde_json::from_value::<HTTPMatchRequest>(json!({
            "headers": {"a": {"exact": "x", "prefix": "y"}}
        }))
        .expect_err("two kinds");
        assert!(
            err.to_string()
                .contains("only one of exact, prefix or regex"),
            "{err}"
        );
        let err = serde_json::from_value::<HTTPMatchRequest>(json!({
            "headers": {"a": {"glob": "x"}}
        }))
        .expect_err("unknown kind");
        assert!(err.to_string().contains("unknown field `glob`"), "{err}");
    }

    #[test]
    fn destination_needs_a_host() {
        let err =
            serde_json::from_value::<RouteDestination>(json!({"destination": {"subset": "v1"}}))
                .expect_err("missing host");
        assert!(err.to_string().contains("missing field `host`"), "{err}");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err = serde_json::from_value::<VirtualService>(json!({
            "hosts": ["a"],
            "http": [{"route": [{"destination": {"host": "a"}}], "websocketUpgrade": true}]
        }))
        .expect_err("unknown field");
        assert!(
            err.to_string().contains("unknown field `websocketUpgrade`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_enum_value_is_rejected() {
        let err = serde_json::from_value::<VirtualService>(json!({
            "hosts": ["a"],
            "http": [{"redirect": {"uri": "/x", "derivePort": "FROM_NOWHERE"}}]
        }))
        .expect_err("unknown derivePort");
        assert!(err.to_string().contains("FROM_NOWHERE"), "{err}");
    }
}
