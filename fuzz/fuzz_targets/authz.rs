//! Authorization: AuthorizationPolicy YAML compiled by `sluice_compile::authz::compile_policies`
//! (for a workload in namespace `ns`, labels `label:<k>=<v>`; by default the egress gateway:
//! `istio-system`, `istio=egressgateway`), then a
//! request decided by `sluice_snapshot::authz::Policies::evaluate` — built directly, and as the
//! proxy builds it from a hyper request (`sluice_proxy::authz::http_request`) or a connection
//! (`connection_request`). Also `StrMatch::parse` and `PathMatch::parse` on their own.
//!
//! Input: UTF-8; the policy YAML, a line `---request---`, then `key=value` lines: `source`,
//! `remote`, `dest` (IPs), `port`, `sni`, `host`, `method`, `path` (either makes it HTTP),
//! `peer` (a SPIFFE ID), `header:<name>`, `ns`, `label:<key>`, `str` and `pathmatch`
//! (`<pattern>|<value>`).
//!
//! Invariants: never panics; a decision is deterministic; a denial carries Envoy's
//! `rbac_access_denied_matched_policy[…]` details and an allow none; no policy allows all;
//! policies that went through JSON (the snapshot on the admin endpoint) decide the same;
//! `StrMatch` / `PathMatch` parse their own `Display` back to the same matcher.
#![no_main]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use sluice_compile::authz::{ROOT_NAMESPACE, compile_policies};
use sluice_proxy::ConnInfo;
use sluice_snapshot::authz::{Decision, PathMatch, Peer, Policies, Request, StrMatch};

fn check(policies: &Policies, req: &Request, via_json: Option<&Policies>) {
    let d: Decision = policies.evaluate(req);
    assert_eq!(policies.evaluate(req), d, "evaluation is not deterministic");
    if d.allowed {
        assert!(
            d.details.is_empty(),
            "an allowed request with details {d:?}"
        );
    } else {
        assert!(
            d.details.starts_with("rbac_access_denied_matched_policy["),
            "a denial with details {:?}",
            d.details
        );
    }
    if policies.is_empty() {
        assert!(d.allowed, "no policy, yet denied: {d:?}");
    }
    if let Some(back) = via_json {
        assert_eq!(
            back.evaluate(req),
            d,
            "policies decide differently after JSON"
        );
    }
}

fn ip(v: &str) -> Option<IpAddr> {
    v.parse().ok()
}

fn str_match(spec: &str) {
    let (pattern, value) = spec.split_once('|').unwrap_or((spec, ""));
    let m = StrMatch::parse(pattern);
    assert_eq!(StrMatch::parse(&m.to_string()), m, "StrMatch {pattern:?}");
    let _ = m.matches(value, false);
    let _ = m.matches(value, true);
    assert!(StrMatch::Exact(value.to_owned()).matches(value, false));
}

fn path_match(spec: &str) {
    let (pattern, value) = spec.split_once('|').unwrap_or((spec, ""));
    if let Ok(m) = PathMatch::parse(pattern) {
        let shown = m.to_string();
        let again = PathMatch::parse(&shown).expect("a PathMatch's Display parses");
        assert_eq!(again.to_string(), shown);
        assert_eq!(
            again.matches(value),
            m.matches(value),
            "{pattern:?} on {value:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (yaml, attrs) = text.split_once("---request---").unwrap_or((text, ""));

    let mut namespace = ROOT_NAMESPACE;
    let mut labels = BTreeMap::new();
    for line in attrs.lines() {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        if k == "ns" {
            namespace = v;
        } else if let Some(key) = k.strip_prefix("label:") {
            labels.insert(key.to_owned(), v.to_owned());
        }
    }
    if labels.is_empty() {
        labels.insert("istio".to_owned(), "egressgateway".to_owned());
    }
    let loaded = sluice_model::load_str("fuzz.yaml", yaml);
    let (policies, _diags) =
        compile_policies(&loaded.resources, namespace, &labels, ROOT_NAMESPACE);
    let json = serde_json::to_string(&policies).expect("policies serialize");
    let via_json: Option<Policies> = serde_json::from_str(&json).ok();
    assert!(
        via_json.is_some(),
        "policies JSON does not read back: {json}"
    );

    let source = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    let mut req = Request::new(source, 443);
    let mut info = ConnInfo::new(
        SocketAddr::from(([10, 0, 0, 1], 443)),
        SocketAddr::new(source, 40000),
        443,
    );
    let (mut method, mut path): (Option<&str>, Option<&str>) = (None, None);
    let mut headers: Vec<(&str, &str)> = Vec::new();
    for line in attrs.lines() {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        match k {
            "source" => {
                if let Some(a) = ip(v) {
                    req.source_ip = a;
                    info.peer = SocketAddr::new(a, 40000);
                }
            }
            "remote" => req.remote_ip = ip(v).unwrap_or(req.remote_ip),
            "dest" => {
                req.destination_ip = ip(v);
                if let Some(a) = ip(v) {
                    info.local = SocketAddr::new(a, 443);
                }
            }
            "port" => {
                let p = v.parse().unwrap_or(0);
                req.destination_port = p;
                info.listener_port = p;
            }
            "sni" => {
                req.sni = Some(v.to_owned());
                info.sni = Some(v.to_owned());
            }
            "host" => req.host = Some(v.to_owned()),
            "method" => method = Some(v),
            "path" => path = Some(v),
            "peer" => req.peer = Some(Peer::from_spiffe(v)),
            "str" => str_match(v),
            "pathmatch" => path_match(v),
            _ => {
                if let Some(name) = k.strip_prefix("header:") {
                    headers.push((name, v));
                }
            }
        }
    }

    check(&policies, &req, via_json.as_ref());
    check(
        &policies,
        &sluice_proxy::authz::connection_request(&info),
        None,
    );

    if method.is_some() || path.is_some() {
        let (m, p) = (method.unwrap_or("GET"), path.unwrap_or("/"));
        let mut http_req = req.clone().with_http(m, p);
        for (name, value) in &headers {
            http_req = http_req.with_header(name, value);
        }
        check(&policies, &http_req, via_json.as_ref());

        // As the proxy builds it, when the request is one hyper would hand over.
        let mut builder = http::Request::builder().method(m).uri(p);
        for (name, value) in &headers {
            builder = builder.header(*name, *value);
        }
        if let Ok(r) = builder.body(()) {
            let (parts, ()) = r.into_parts();
            let authority = req.host.clone().unwrap_or_default();
            let proxied = sluice_proxy::authz::http_request(&info, &parts, &authority);
            check(&policies, &proxied, None);
        }
    }
});
