//! Authorization: Istio's AuthorizationPolicy in compiled form, and the pure function that
//! decides a request.
//!
//! [`Policies`] holds every policy that applies to one workload, already split by action;
//! [`Policies::evaluate`] decides a [`Request`] the way Istio's proxy does (Envoy's RBAC filters
//! as `pilot/pkg/security/authz/builder` configures them):
//!
//! 1. CUSTOM: sluice has no external authorizer, so each CUSTOM rule denies what it matches,
//!    as Istio does when it cannot use a CUSTOM policy's provider.
//! 2. AUDIT: a match only marks the decision ([`Decision::audit`]).
//! 3. DENY: any matching rule denies.
//! 4. ALLOW: when at least one ALLOW policy applies, a request no ALLOW rule matches is denied
//!    (`rbac_access_denied_matched_policy[none]`). An ALLOW policy without rules (`spec: {}`)
//!    therefore denies everything it selects.
//!
//! Dry-run policies (`istio.io/dry-run: "true"`) are evaluated as Envoy's shadow rules: their
//! outcome is reported in [`Decision::dry_run_deny`] / [`Decision::dry_run_allow`] and never
//! enforced.
//!
//! **Attributes a request does not carry.** Istio's builder leaves HTTP-only attributes
//! (methods, paths, headers, request principals) out of the TCP filter: an ALLOW rule that
//! names one never matches there, while a DENY (or AUDIT, or CUSTOM) rule simply drops it and
//! so matches more. sluice applies the same rule at evaluation time, per request, and also to
//! the attributes it never knows (JWT claims, request principals, Envoy metadata), so an
//! attribute sluice cannot judge never widens an ALLOW and never narrows a DENY.
//!
//! **One deliberate difference**: Istio treats `to.operation.hosts` as HTTP-only. sluice
//! matches `hosts` against [`Request::host`] whenever it is known — the HTTP authority, the
//! SNI of passed-through TLS, or the host the sidecar named when it opened the mesh hop — and
//! treats it as HTTP-only only when it is not.
//!
//! **Names** follow Istio: a policy is `ns[<namespace>]-policy[<name>]`, its rules
//! `...-rule[<index>]`, and a denial's response-code details are
//! `rbac_access_denied_matched_policy[<rule name>]`. Where several rules match, Envoy reports
//! the first by name in byte order (its policies live in a sorted map), and so does sluice.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::matching::Regex;

/// The status of a denied HTTP request.
pub const DENIED_STATUS: u16 = 403;
/// The body of a denied HTTP request, as Envoy's RBAC filter writes it.
pub const DENIED_BODY: &str = "RBAC: access denied";

// ---------------------------------------------------------------------------------------------
// What authorization sees of a request

/// The peer of a connection, known only from a verified certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The SPIFFE ID without `spiffe://`: `cluster.local/ns/default/sa/frontend`. Istio writes
    /// principals this way and matches them against `spiffe://` + the value it is given.
    pub principal: String,
    /// Parts of the ID; empty when the ID does not carry them.
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl Peer {
    /// From the URI SAN of a verified certificate, with or without `spiffe://`
    /// (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`).
    pub fn from_spiffe(id: &str) -> Peer {
        let principal = id.strip_prefix("spiffe://").unwrap_or(id);
        let (trust_domain, path) = principal.split_once('/').unwrap_or((principal, ""));
        let mut namespace = "";
        let mut service_account = "";
        let segments: Vec<&str> = path.split('/').collect();
        for pair in segments.chunks(2) {
            match pair {
                ["ns", v] => namespace = v,
                ["sa", v] => service_account = v,
                _ => {}
            }
        }
        Peer {
            principal: principal.to_owned(),
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }
}

/// What HTTP adds to a request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HttpAttrs {
    pub method: String,
    /// The path without its query string (a `?…` left in is ignored all the same).
    pub path: String,
    /// Lower-case names; several values of one header joined with `,`, as Envoy's header
    /// matchers see them.
    pub headers: BTreeMap<String, String>,
}

/// The attributes of one request (HTTP) or connection (TLS, TCP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// `Some` only when the peer presented a certificate that was verified (the mesh hop).
    pub peer: Option<Peer>,
    /// The address of the connection's peer (`source.ip`, `ipBlocks`).
    pub source_ip: IpAddr,
    /// The original client (`remote.ip`, `remoteIpBlocks`): from `X-Forwarded-For` only where
    /// the proxy is configured to trust it, otherwise `source_ip`.
    pub remote_ip: IpAddr,
    /// The local address the connection arrived on (`destination.ip`).
    pub destination_ip: Option<IpAddr>,
    /// The port the connection arrived on (`ports`, `destination.port`).
    pub destination_port: u16,
    /// The SNI of the TLS ClientHello (`connection.sni`).
    pub sni: Option<String>,
    /// The destination host: the HTTP authority as sent (port included if sent), or for TLS and
    /// TCP the host sluice knows (inner SNI, or the host the sidecar named on the mesh hop).
    pub host: Option<String>,
    /// `Some` for HTTP requests.
    pub http: Option<HttpAttrs>,
}

impl Request {
    /// A connection from `source_ip` to `destination_port`, nothing else known yet.
    pub fn new(source_ip: IpAddr, destination_port: u16) -> Request {
        Request {
            peer: None,
            source_ip,
            remote_ip: source_ip,
            destination_ip: None,
            destination_port,
            sni: None,
            host: None,
            http: None,
        }
    }

    pub fn with_peer(mut self, peer: Peer) -> Request {
        self.peer = Some(peer);
        self
    }

    pub fn with_remote_ip(mut self, ip: IpAddr) -> Request {
        self.remote_ip = ip;
        self
    }

    pub fn with_destination_ip(mut self, ip: IpAddr) -> Request {
        self.destination_ip = Some(ip);
        self
    }

    pub fn with_sni(mut self, sni: &str) -> Request {
        self.sni = Some(sni.to_owned());
        self
    }

    pub fn with_host(mut self, host: &str) -> Request {
        self.host = Some(host.to_owned());
        self
    }

    /// Makes this an HTTP request.
    pub fn with_http(mut self, method: &str, path: &str) -> Request {
        self.http = Some(HttpAttrs {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: BTreeMap::new(),
        });
        self
    }

    /// Adds a header to an HTTP request (no effect on TCP); repeated names are joined with `,`.
    pub fn with_header(mut self, name: &str, value: &str) -> Request {
        if let Some(http) = &mut self.http {
            http.headers
                .entry(name.to_ascii_lowercase())
                .and_modify(|v| {
                    v.push(',');
                    v.push_str(value);
                })
                .or_insert_with(|| value.to_owned());
        }
        self
    }

    fn header(&self, name: &str) -> Option<&str> {
        let http = self.http.as_ref()?;
        // Istio's `request.headers[:method]` and friends read the pseudo-headers.
        match name {
            ":method" => Some(http.method.as_str()),
            ":path" => Some(http.path.as_str()),
            ":authority" | "host" => self.host.as_deref(),
            _ => http.headers.get(name).map(String::as_str),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Compiled policies

/// Every policy that applies to one workload, by action. Each list is sorted by name.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Policies {
    /// CUSTOM policies: each rule denies what it matches (see the module docs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom: Vec<Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Policy>,
    /// DENY policies annotated `istio.io/dry-run: "true"`: evaluated, never enforced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dry_run_deny: Vec<Policy>,
    /// ALLOW policies annotated `istio.io/dry-run: "true"`: evaluated, never enforced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dry_run_allow: Vec<Policy>,
}

/// One AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// `ns[<namespace>]-policy[<name>]`. Shared with every decision it makes.
    pub name: Arc<str>,
    /// In the policy's order; a request matches the policy when it matches one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Set when a rule could not be compiled. The policy then fails closed: in the ALLOW lists
    /// it matches nothing, in every other list it matches every request (reported as that rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<Invalid>,
    /// For CUSTOM policies: the provider named, which Istio puts in the rule names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_provider: Option<String>,
}

/// Why a policy fails closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalid {
    /// Index of the first rule that could not be compiled.
    pub rule: usize,
    pub reason: String,
}

impl Policy {
    /// A policy named as Istio names it.
    pub fn new(namespace: &str, name: &str, rules: Vec<Rule>) -> Policy {
        Policy {
            name: format!("ns[{namespace}]-policy[{name}]").into(),
            rules,
            invalid: None,
            custom_provider: None,
        }
    }

    /// The name Envoy's RBAC filter gives rule `index`, as it appears in response-code details
    /// and stats. CUSTOM rules carry Istio's marker for a provider it could not use.
    pub fn rule_name(&self, index: usize) -> String {
        match &self.custom_provider {
            Some(provider) => format!(
                "istio-ext-authz-{provider}-{}-rule[{index}]-deny-due-to-bad-CUSTOM-action",
                self.name
            ),
            None => format!("{}-rule[{index}]", self.name),
        }
    }

    /// The rule of this policy that matches, if any: the first by name, as Envoy reports it.
    fn matching_rule(&self, req: &Request, mode: Mode) -> Option<usize> {
        if let Some(invalid) = &self.invalid {
            return (mode == Mode::Deny).then_some(invalid.rule);
        }
        let matches = |i: &usize| self.rules.get(*i).is_some_and(|r| r.matches(req, mode));
        if self.rules.len() <= 10 {
            // `rule[0]`…`rule[9]`: index order is name order.
            (0..self.rules.len()).find(matches)
        } else {
            // `rule[10]` sorts before `rule[2]` in Envoy's map.
            (0..self.rules.len())
                .filter(matches)
                .min_by_key(|i| i.to_string())
        }
    }
}

/// One rule: any of `from`, any of `to`, and all of `when`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Rule {
    /// Sources, one of which must match; each is a set of conditions that must all hold.
    /// Empty: any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Vec<Condition>>,
    /// Operations, one of which must match; empty: any operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Vec<Condition>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// How a rule treats attributes the request does not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// ALLOW: a rule that needs an attribute the request lacks never matches.
    Allow,
    /// DENY, AUDIT, CUSTOM: conditions on attributes the request lacks are left out.
    Deny,
}

impl Rule {
    fn conditions(&self) -> impl Iterator<Item = &Condition> {
        self.from
            .iter()
            .chain(self.to.iter())
            .flatten()
            .chain(self.when.iter())
    }

    fn matches(&self, req: &Request, mode: Mode) -> bool {
        // Istio drops the whole ALLOW rule when any part of it cannot be expressed for this
        // traffic, even a part in an alternative that would not have been taken.
        if mode == Mode::Allow && self.conditions().any(|c| !c.available(req)) {
            return false;
        }
        let holds = |c: &Condition| !c.available(req) || c.matches(req);
        let all = |cs: &Vec<Condition>| cs.iter().all(holds);
        (self.from.is_empty() || self.from.iter().any(all))
            && (self.to.is_empty() || self.to.iter().any(all))
            && all(&self.when)
    }
}

/// A condition on one attribute: one of `values` matches (or there are none), and none of
/// `not_values` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Values<T> {
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<T>,
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<T>,
}

impl<T> Values<T> {
    pub fn new(values: Vec<T>, not_values: Vec<T>) -> Values<T> {
        Values { values, not_values }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.not_values.is_empty()
    }

    /// Envoy's `or_ids` of the values and `not_id` of the negated ones: an attribute that is
    /// absent matches no value, so it fails `values` and passes `not_values`.
    fn test(&self, matches: impl Fn(&T) -> bool) -> bool {
        (self.values.is_empty() || self.values.iter().any(&matches))
            && !self.not_values.iter().any(&matches)
    }
}

/// One condition of a rule, on one attribute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// `principals`, `source.principal`: the peer's SPIFFE ID without `spiffe://`.
    Principal(Values<StrMatch>),
    /// `namespaces`, `source.namespace`: the namespace of the peer's ID.
    Namespace(Values<Glob>),
    /// `serviceAccounts`, `source.serviceAccount`.
    ServiceAccount(Values<ServiceAccount>),
    /// `source.trustDomain`.
    TrustDomain(Values<StrMatch>),
    /// `ipBlocks`, `source.ip`: the connection's peer address.
    SourceIp(Values<IpNet>),
    /// `remoteIpBlocks`, `remote.ip`: the original client address.
    RemoteIp(Values<IpNet>),
    /// `destination.ip`.
    DestinationIp(Values<IpNet>),
    /// `ports`, `destination.port`.
    DestinationPort(Values<u16>),
    /// `connection.sni`.
    Sni(Values<StrMatch>),
    /// `hosts`: case-insensitive; see the module docs for when it applies to TLS and TCP.
    Host(Values<StrMatch>),
    /// `methods` (HTTP only).
    Method(Values<StrMatch>),
    /// `paths` (HTTP only), matched against the path without its query.
    Path(Values<PathMatch>),
    /// `request.headers[<name>]` (HTTP only); `name` is lower-case.
    Header {
        name: String,
        values: Values<StrMatch>,
    },
    /// An attribute sluice never knows (request principals, JWT claims, Envoy metadata): it
    /// is treated like an HTTP-only attribute on TCP.
    Unsupported { key: String },
}

impl Condition {
    /// Whether the request carries the attribute at all (as opposed to carrying a value that
    /// does not match).
    fn available(&self, req: &Request) -> bool {
        match self {
            Condition::Host(_) => req.http.is_some() || req.host.is_some(),
            Condition::Method(_) | Condition::Path(_) | Condition::Header { .. } => {
                req.http.is_some()
            }
            Condition::Unsupported { .. } => false,
            _ => true,
        }
    }

    fn matches(&self, req: &Request) -> bool {
        let peer = req.peer.as_ref();
        let non_empty = |s: &str| !s.is_empty();
        match self {
            Condition::Principal(v) => {
                let principal = peer.map(|p| p.principal.as_str()).filter(|s| non_empty(s));
                v.test(|m| principal.is_some_and(|p| m.matches(p, false)))
            }
            Condition::Namespace(v) => {
                let ns = peer.map(|p| p.namespace.as_str()).filter(|s| non_empty(s));
                v.test(|g| ns.is_some_and(|ns| g.matches(ns)))
            }
            Condition::ServiceAccount(v) => v.test(|sa| {
                peer.is_some_and(|p| p.namespace == sa.namespace && p.service_account == sa.name)
            }),
            Condition::TrustDomain(v) => {
                let td = peer
                    .map(|p| p.trust_domain.as_str())
                    .filter(|s| non_empty(s));
                v.test(|m| td.is_some_and(|td| m.matches(td, false)))
            }
            Condition::SourceIp(v) => v.test(|net| net_contains(net, req.source_ip)),
            Condition::RemoteIp(v) => v.test(|net| net_contains(net, req.remote_ip)),
            Condition::DestinationIp(v) => {
                v.test(|net| req.destination_ip.is_some_and(|ip| net_contains(net, ip)))
            }
            Condition::DestinationPort(v) => v.test(|p| *p == req.destination_port),
            Condition::Sni(v) => {
                let sni = req.sni.as_deref().filter(|s| non_empty(s));
                v.test(|m| sni.is_some_and(|s| m.matches(s, false)))
            }
            Condition::Host(v) => {
                let host = req.host.as_deref();
                v.test(|m| host.is_some_and(|h| m.matches(h, true)))
            }
            Condition::Method(v) => {
                let method = req.http.as_ref().map(|h| h.method.as_str());
                v.test(|m| method.is_some_and(|x| m.matches(x, false)))
            }
            Condition::Path(v) => {
                let path = req.http.as_ref().map(|h| strip_query(&h.path));
                v.test(|m| path.is_some_and(|p| m.matches(p)))
            }
            Condition::Header { name, values } => {
                let value = req.header(name);
                values.test(|m| value.is_some_and(|x| m.matches(x, false)))
            }
            Condition::Unsupported { .. } => false,
        }
    }
}

/// Envoy's CIDR match; an IPv4 address seen as IPv4-mapped IPv6 (dual-stack sockets) is
/// compared as IPv4.
fn net_contains(net: &IpNet, ip: IpAddr) -> bool {
    net.contains(&ip.to_canonical())
}

fn strip_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

// ---------------------------------------------------------------------------------------------
// Matchers

/// Istio's value syntax for principals, hosts, methods, SNI and headers: `*` (any present,
/// non-empty value), `prefix*`, `*suffix`, or an exact value. Serialized as Istio writes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StrMatch {
    Any,
    Prefix(String),
    Suffix(String),
    Exact(String),
}

impl StrMatch {
    pub fn parse(v: &str) -> StrMatch {
        if v == "*" {
            StrMatch::Any
        } else if let Some(suffix) = v.strip_prefix('*') {
            StrMatch::Suffix(suffix.to_owned())
        } else if let Some(prefix) = v.strip_suffix('*') {
            StrMatch::Prefix(prefix.to_owned())
        } else {
            StrMatch::Exact(v.to_owned())
        }
    }

    pub fn matches(&self, value: &str, ignore_case: bool) -> bool {
        let eq = |a: &str, b: &str| {
            if ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match self {
            StrMatch::Any => true,
            StrMatch::Exact(e) => eq(e, value),
            StrMatch::Prefix(p) => value.get(..p.len()).is_some_and(|head| eq(head, p)),
            StrMatch::Suffix(s) => value
                .len()
                .checked_sub(s.len())
                .and_then(|start| value.get(start..))
                .is_some_and(|tail| eq(tail, s)),
        }
    }
}

impl fmt::Display for StrMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StrMatch::Any => f.write_str("*"),
            StrMatch::Prefix(p) => write!(f, "{p}*"),
            StrMatch::Suffix(s) => write!(f, "*{s}"),
            StrMatch::Exact(e) => f.write_str(e),
        }
    }
}

impl Serialize for StrMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StrMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(StrMatch::parse(&String::deserialize(d)?))
    }
}

/// A namespace pattern: Istio turns every `*` into `.*` (`.*/ns/<pattern>/.*`), so `*`
/// matches any run of characters anywhere in the value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Glob(pub String);

impl Glob {
    pub fn matches(&self, value: &str) -> bool {
        glob_match(self.0.as_bytes(), value.as_bytes())
    }
}

/// Wildcard match with `*` only, by the usual greedy-with-backtrack walk (linear for one
/// `*`, never exponential).
fn glob_match(pattern: &[u8], value: &[u8]) -> bool {
    let (mut p, mut v) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while v < value.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, v));
                p += 1;
            }
            Some(c) if *c == value[v] => {
                p += 1;
                v += 1;
            }
            _ => match star {
                Some((sp, sv)) => {
                    p = sp + 1;
                    v = sv + 1;
                    star = Some((sp, sv + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|c| *c == b'*')
}

/// A service account, `<namespace>/<name>` (Istio fills in the policy's namespace when only
/// `<name>` is written).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl Serialize for ServiceAccount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}/{}", self.namespace, self.name))
    }
}

impl<'de> Deserialize<'de> for ServiceAccount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (namespace, name) = s.split_once('/').ok_or_else(|| {
            serde::de::Error::custom("service account must be <namespace>/<name>")
        })?;
        Ok(ServiceAccount {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// A `paths` value: Istio's `*`, `prefix*`, `*suffix`, exact, or a path template with `{*}`
/// (one segment) and `{**}` (any number of segments). Serialized as written.
#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    Str(StrMatch),
    Template { template: String, regex: Regex },
}

/// Envoy's `uri_template` character classes: one path segment, and any run of segments.
const SEGMENT: &str = r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]+";
const SEGMENTS: &str = r"[a-zA-Z0-9\-._~%!$&'()+,;:@=/]*";

impl PathMatch {
    pub fn parse(v: &str) -> Result<PathMatch, String> {
        if !(v.contains("{*}") || v.contains("{**}")) {
            return Ok(PathMatch::Str(StrMatch::parse(v)));
        }
        let mut regex = String::new();
        let mut rest = v;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("{**}") {
                regex.push_str(SEGMENTS);
                rest = after;
            } else if let Some(after) = rest.strip_prefix("{*}") {
                regex.push_str(SEGMENT);
                rest = after;
            } else {
                let next = rest.find('{').filter(|i| *i > 0).unwrap_or(rest.len());
                let (literal, after) = rest.split_at(next);
                if literal.contains(['{', '}']) {
                    return Err(format!(
                        "unsupported path template {v:?}: only {{*}} and {{**}} are allowed"
                    ));
                }
                regex.push_str(&regex::escape(literal));
                rest = after;
            }
        }
        let regex = Regex::new(&regex).map_err(|e| format!("path template {v:?}: {e}"))?;
        Ok(PathMatch::Template {
            template: v.to_owned(),
            regex,
        })
    }

    /// Envoy's path matcher; `*` needs a non-empty path.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Str(StrMatch::Any) => !path.is_empty(),
            PathMatch::Str(m) => m.matches(path, false),
            PathMatch::Template { regex, .. } => regex.is_match(path),
        }
    }
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathMatch::Str(m) => m.fmt(f),
            PathMatch::Template { template, .. } => f.write_str(template),
        }
    }
}

impl Serialize for PathMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PathMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PathMatch::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Decisions

/// The outcome of authorization for one request or connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// The rule that decided, as (policy name, rule index): the CUSTOM or DENY rule that
    /// denied, or the ALLOW rule that allowed. `None` when no ALLOW policy applies (allowed) or
    /// none matched (denied).
    pub matched: Option<(Arc<str>, usize)>,
    /// An AUDIT rule matched: the request is marked for auditing.
    pub audit: bool,
    /// For a denial, Envoy's response-code (or connection-termination) details:
    /// `rbac_access_denied_matched_policy[<rule name>]` or `…[none]`. Empty when allowed.
    pub details: String,
    /// What the dry-run DENY policies alone decided, when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run_deny: Option<Shadow>,
    /// What the dry-run ALLOW policies alone decided, when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run_allow: Option<Shadow>,
}

/// The result of Envoy's shadow rules (Istio's dry-run): never enforced, only reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shadow {
    /// Envoy's `shadow_engine_result`.
    pub allowed: bool,
    /// Envoy's `shadow_effective_policy_id`: the name of the rule that matched.
    pub effective_policy: Option<String>,
}

impl Decision {
    /// The HTTP status a denied request gets; `None` when allowed.
    pub fn http_status(&self) -> Option<u16> {
        (!self.allowed).then_some(DENIED_STATUS)
    }
}

fn denied_details(rule_name: Option<&str>) -> String {
    format!(
        "rbac_access_denied_matched_policy[{}]",
        rule_name.unwrap_or("none")
    )
}

/// The first policy in the list (sorted by name) with a matching rule, and that rule.
fn first_match<'a>(
    policies: &'a [Policy],
    req: &Request,
    mode: Mode,
) -> Option<(&'a Policy, usize)> {
    policies
        .iter()
        .find_map(|p| p.matching_rule(req, mode).map(|i| (p, i)))
}

impl Policies {
    /// No policy applies: everything is allowed.
    pub fn is_empty(&self) -> bool {
        self.custom.is_empty()
            && self.audit.is_empty()
            && self.deny.is_empty()
            && self.allow.is_empty()
            && self.dry_run_deny.is_empty()
            && self.dry_run_allow.is_empty()
    }

    /// Decides `req` in Istio's order: CUSTOM, AUDIT (marks only), DENY, ALLOW.
    pub fn evaluate(&self, req: &Request) -> Decision {
        let audit = first_match(&self.audit, req, Mode::Deny).is_some();
        let dry_run_deny = (!self.dry_run_deny.is_empty()).then(|| {
            let hit = first_match(&self.dry_run_deny, req, Mode::Deny);
            Shadow {
                allowed: hit.is_none(),
                effective_policy: hit.map(|(p, i)| p.rule_name(i)),
            }
        });
        let dry_run_allow = (!self.dry_run_allow.is_empty()).then(|| {
            let hit = first_match(&self.dry_run_allow, req, Mode::Allow);
            Shadow {
                allowed: hit.is_some(),
                effective_policy: hit.map(|(p, i)| p.rule_name(i)),
            }
        });
        let decision = |allowed: bool, hit: Option<(&Policy, usize)>| Decision {
            allowed,
            matched: hit.map(|(p, i)| (p.name.clone(), i)),
            audit,
            details: if allowed {
                String::new()
            } else {
                denied_details(hit.map(|(p, i)| p.rule_name(i)).as_deref())
            },
            dry_run_deny: dry_run_deny.clone(),
            dry_run_allow: dry_run_allow.clone(),
        };

        let denied = first_match(&self.custom, req, Mode::Deny)
            .or_else(|| first_match(&self.deny, req, Mode::Deny));
        if let Some(hit) = denied {
            return decision(false, Some(hit));
        }
        if self.allow.is_empty() {
            return decision(true, None);
        }
        match first_match(&self.allow, req, Mode::Allow) {
            Some(hit) => decision(true, Some(hit)),
            None => decision(false, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    fn values<T>(v: Vec<T>) -> Values<T> {
        Values::new(v, Vec::new())
    }

    fn req() -> Request {
        Request::new(ip("10.0.0.1"), 443)
    }

    #[test]
    fn principal_wildcards_follow_istio() {
        // Istio matches `spiffe://` + value: exact, `prefix*`, `*suffix` (regex
        // `spiffe://.*suffix`), and `*` (any authenticated peer).
        let p = "cluster.local/ns/default/sa/frontend";
        let table = [
            ("cluster.local/ns/default/sa/frontend", true),
            ("cluster.local/ns/default/sa/front", false),
            ("cluster.local/ns/default/*", true),
            ("cluster.local/ns/other/*", false),
            ("*/sa/frontend", true),
            ("*sa/backend", false),
            ("*", true),
            // Istio adds `spiffe://` itself: a value that repeats it never matches.
            ("spiffe://cluster.local/ns/default/sa/frontend", false),
        ];
        for (pattern, want) in table {
            assert_eq!(
                StrMatch::parse(pattern).matches(p, false),
                want,
                "{pattern}"
            );
        }
    }

    #[test]
    fn principals_and_namespaces_need_a_verified_peer() {
        let rule = |c: Condition| Rule {
            from: vec![vec![c]],
            ..Rule::default()
        };
        let any_principal = rule(Condition::Principal(values(vec![StrMatch::Any])));
        let any_ns = rule(Condition::Namespace(values(vec![Glob("*".into())])));
        let anonymous = req();
        assert!(!any_principal.matches(&anonymous, Mode::Allow));
        assert!(!any_ns.matches(&anonymous, Mode::Allow));
        let authenticated = req().with_peer(Peer::from_spiffe("spiffe://cluster.local/ns/a/sa/b"));
        assert!(any_principal.matches(&authenticated, Mode::Allow));
        assert!(any_ns.matches(&authenticated, Mode::Allow));
        // `notPrincipals: ["*"]` is Istio's way to say "no peer certificate".
        let not_any = rule(Condition::Principal(Values::new(
            vec![],
            vec![StrMatch::Any],
        )));
        assert!(not_any.matches(&anonymous, Mode::Allow));
        assert!(!not_any.matches(&authenticated, Mode::Allow));
    }

    #[test]
    fn spiffe_ids_are_split_into_their_parts() {
        let p = Peer::from_spiffe("spiffe://td.example/ns/payments/sa/payment-processor");
        assert_eq!(p.principal, "td.example/ns/payments/sa/payment-processor");
        assert_eq!(p.trust_domain, "td.example");
        assert_eq!(p.namespace, "payments");
        assert_eq!(p.service_account, "payment-processor");
        let odd = Peer::from_spiffe("spiffe://td/workload");
        assert_eq!(
            (odd.namespace.as_str(), odd.service_account.as_str()),
            ("", "")
        );
    }

    #[test]
    fn namespace_globs() {
        let table = [
            ("data", "data", true),
            ("data", "database", false),
            ("ns-prefix*", "ns-prefix-a", true),
            ("*ns-suffix", "a-ns-suffix", true),
            ("*ns-suffix", "a-ns-suffix-b", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*", "anything", true),
        ];
        for (pattern, ns, want) in table {
            assert_eq!(Glob(pattern.into()).matches(ns), want, "{pattern} ~ {ns}");
        }
    }

    #[test]
    fn cidr_blocks_and_single_addresses() {
        let r = |c: Condition, source: &str| {
            Rule {
                from: vec![vec![c]],
                ..Rule::default()
            }
            .matches(&Request::new(ip(source), 80), Mode::Allow)
        };
        let block = || Condition::SourceIp(values(vec![net("192.168.4.0/23")]));
        assert!(r(block(), "192.168.5.233"));
        assert!(!r(block(), "192.168.6.1"));
        // Host bits in a CIDR are masked, as Envoy does.
        let loose = || Condition::SourceIp(values(vec![net("10.1.2.3/8")]));
        assert!(r(loose(), "10.200.0.1"));
        // A dual-stack socket's IPv4-mapped address is still the IPv4 client.
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 168, 4, 7).to_ipv6_mapped());
        assert!(
            Rule {
                from: vec![vec![block()]],
                ..Rule::default()
            }
            .matches(&Request::new(mapped, 80), Mode::Allow)
        );
        let not = Condition::SourceIp(Values::new(vec![], vec![net("9.0.0.1/32")]));
        assert!(r(not.clone(), "9.0.0.2"));
        assert!(!r(not, "9.0.0.1"));
    }

    #[test]
    fn hosts_ignore_case_and_keep_ports() {
        let table = [
            ("api.github.com", "API.GitHub.com", true),
            ("a.com", "a.com:443", false),
            ("a.com:443", "a.com:443", true),
            ("a.com:443", "a.com", false),
            ("*.suffix.b.com", "Deny.Suffix.b.Com", true),
            ("*.suffix.b.com", "suffix.b.com", false),
            ("prefix.b.*", "PREFIX.B.COM", true),
            ("*", "x", true),
        ];
        for (pattern, host, want) in table {
            assert_eq!(
                StrMatch::parse(pattern).matches(host, true),
                want,
                "{pattern} ~ {host}"
            );
        }
    }

    #[test]
    fn paths_exact_prefix_suffix_any_and_templates() {
        let table = [
            ("/allow", "/allow", true),
            ("/allow", "/allow/", false),
            ("/allow*", "/allow/admin", true),
            ("*.txt", "/a/b.txt", true),
            ("*.txt", "/a/b.txt.bak", false),
            ("*", "/", true),
            ("*", "", false),
            ("/allow/admin/{**}", "/allow/admin/", true),
            ("/allow/admin/{**}", "/allow/admin", false),
            ("/allow/admin/{**}", "/allow/admin/foo/temp.txt", true),
            ("/foo/{*}/bar/{**}", "/foo/buzz/bar/bat.txt", true),
            ("/foo/{*}/bar/{**}", "/foo//bar/bat.txt", false),
            ("/foo/{*}/bar/{**}", "/foo/bar/bat.txt", false),
            ("/store/{**}/cart", "/store//cart", true),
            ("/store/{**}/cart", "/store/cart", false),
            ("/store/{**}/cart", "/store/foo/bar/cart", true),
        ];
        for (pattern, path, want) in table {
            let m = PathMatch::parse(pattern).expect("valid");
            assert_eq!(m.matches(path), want, "{pattern} ~ {path}");
        }
        assert!(PathMatch::parse("/a/{name}/b/{*}").is_err());
    }

    #[test]
    fn query_strings_do_not_take_part_in_paths() {
        let p = Policies {
            allow: vec![Policy::new(
                "ns",
                "p",
                vec![Rule {
                    to: vec![vec![Condition::Path(values(vec![
                        PathMatch::parse("/allow").expect("path"),
                    ]))]],
                    ..Rule::default()
                }],
            )],
            ..Policies::default()
        };
        assert!(
            p.evaluate(&req().with_http("GET", "/allow?param=value"))
                .allowed
        );
    }

    #[test]
    fn matchers_serialize_as_istio_writes_them() {
        let rule = Rule {
            from: vec![vec![
                Condition::Principal(values(vec![StrMatch::parse("cluster.local/ns/a/*")])),
                Condition::ServiceAccount(values(vec![ServiceAccount {
                    namespace: "a".into(),
                    name: "b".into(),
                }])),
            ]],
            to: vec![vec![
                Condition::Host(Values::new(
                    vec![StrMatch::parse("*.example.com")],
                    vec![StrMatch::parse("bad.example.com")],
                )),
                Condition::Path(values(vec![PathMatch::parse("/x/{**}").expect("path")])),
            ]],
            when: vec![Condition::SourceIp(values(vec![net("10.0.0.0/8")]))],
        };
        let json = serde_json::to_value(&rule).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "from": [[
                    {"principal": {"values": ["cluster.local/ns/a/*"]}},
                    {"service_account": {"values": ["a/b"]}}
                ]],
                "to": [[
                    {"host": {"values": ["*.example.com"], "not_values": ["bad.example.com"]}},
                    {"path": {"values": ["/x/{**}"]}}
                ]],
                "when": [{"source_ip": {"values": ["10.0.0.0/8"]}}]
            })
        );
        let back: Rule = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, rule);
    }

    #[test]
    fn http_only_conditions_on_tcp() {
        // builder-rbac/tcp: an ALLOW rule naming an HTTP-only attribute never matches TCP; a
        // DENY rule drops it and matches more.
        let rule = Rule {
            to: vec![
                vec![Condition::DestinationPort(values(vec![443]))],
                vec![Condition::Method(values(vec![StrMatch::parse("GET")]))],
            ],
            ..Rule::default()
        };
        let tcp = req();
        assert!(!rule.matches(&tcp, Mode::Allow));
        assert!(rule.matches(&tcp, Mode::Deny));
        let http = req().with_http("POST", "/");
        assert!(rule.matches(&http, Mode::Allow), "port alternative matches");
    }

    #[test]
    fn hosts_on_tcp_apply_when_the_host_is_known() {
        let rule = Rule {
            to: vec![vec![Condition::Host(values(vec![StrMatch::parse(
                "db.example.com",
            )]))]],
            ..Rule::default()
        };
        assert!(rule.matches(&req().with_host("DB.example.com"), Mode::Allow));
        assert!(!rule.matches(&req().with_host("other.example.com"), Mode::Allow));
        assert!(!rule.matches(&req().with_host("other.example.com"), Mode::Deny));
        // Unknown host on TCP: HTTP-only, as in Istio.
        assert!(!rule.matches(&req(), Mode::Allow));
        assert!(rule.matches(&req(), Mode::Deny));
        // HTTP without a host: the header is absent, so the value does not match.
        assert!(!rule.matches(&req().with_http("GET", "/"), Mode::Deny));
    }

    #[test]
    fn headers_match_by_lower_case_name_and_pseudo_headers() {
        let r = req()
            .with_http("GET", "/")
            .with_header("X-Foo", "foo")
            .with_header("x-foo", "bar");
        assert_eq!(r.header("x-foo"), Some("foo,bar"));
        assert_eq!(r.header(":method"), Some("GET"));
        let cond = |v: &str| Condition::Header {
            name: "x-foo".into(),
            values: values(vec![StrMatch::parse(v)]),
        };
        assert!(cond("foo*").matches(&r));
        assert!(!cond("foo").matches(&r));
        assert!(cond("*").matches(&r));
    }

    #[test]
    fn rule_names_and_details() {
        let deny = |name: &str| Policy::new("foo", name, vec![Rule::default()]);
        let p = Policies {
            deny: vec![deny("a"), deny("b")],
            ..Policies::default()
        };
        let d = p.evaluate(&req());
        assert!(!d.allowed);
        assert_eq!(d.matched, Some(("ns[foo]-policy[a]".into(), 0)));
        assert_eq!(
            d.details,
            "rbac_access_denied_matched_policy[ns[foo]-policy[a]-rule[0]]"
        );
        assert_eq!(d.http_status(), Some(403));

        // Envoy's map is ordered by name: rule[10] comes before rule[2].
        let mut many = Policy::new("foo", "many", Vec::new());
        for i in 0..11 {
            let port = if i == 2 || i == 10 { 443 } else { 1 };
            many.rules.push(Rule {
                to: vec![vec![Condition::DestinationPort(values(vec![port]))]],
                ..Rule::default()
            });
        }
        let p = Policies {
            deny: vec![many],
            ..Policies::default()
        };
        assert_eq!(
            p.evaluate(&req()).matched,
            Some(("ns[foo]-policy[many]".into(), 10))
        );

        let mut custom = Policy::new("foo", "ext", vec![Rule::default()]);
        custom.custom_provider = Some("my-authz".into());
        let p = Policies {
            custom: vec![custom],
            ..Policies::default()
        };
        assert_eq!(
            p.evaluate(&req()).details,
            "rbac_access_denied_matched_policy[istio-ext-authz-my-authz-ns[foo]-policy[ext]-rule[0]-deny-due-to-bad-CUSTOM-action]"
        );
    }

    #[test]
    fn invalid_policies_fail_closed() {
        let mut p = Policy::new("foo", "broken", vec![Rule::default()]);
        p.rules.clear();
        p.invalid = Some(Invalid {
            rule: 1,
            reason: "bad CIDR".into(),
        });
        let as_allow = Policies {
            allow: vec![p.clone()],
            ..Policies::default()
        };
        let d = as_allow.evaluate(&req());
        assert!(!d.allowed);
        assert_eq!(d.details, "rbac_access_denied_matched_policy[none]");
        let as_deny = Policies {
            deny: vec![p],
            ..Policies::default()
        };
        let d = as_deny.evaluate(&req());
        assert!(!d.allowed);
        assert_eq!(d.matched, Some(("ns[foo]-policy[broken]".into(), 1)));
    }

    #[test]
    fn dry_run_is_reported_not_enforced() {
        let p = Policies {
            dry_run_deny: vec![Policy::new("foo", "d", vec![Rule::default()])],
            dry_run_allow: vec![Policy::new("foo", "a", Vec::new())],
            ..Policies::default()
        };
        let d = p.evaluate(&req());
        assert!(d.allowed);
        assert_eq!(
            d.dry_run_deny,
            Some(Shadow {
                allowed: false,
                effective_policy: Some("ns[foo]-policy[d]-rule[0]".into())
            })
        );
        assert_eq!(
            d.dry_run_allow,
            Some(Shadow {
                allowed: false,
                effective_policy: None
            })
        );
    }
}
