//! Host names, gateway names and visibility exactly as Istio compares them
//! (`pkg/config/host/name.go`, `pilot/pkg/model/virtualservice.go` `resolveGatewayName`,
//! `pkg/config/visibility`). Names are lower-cased once, on the way in: DNS ignores case and
//! Envoy's domain matching does too.

/// Istio's default `domainSuffix`.
pub const DOMAIN_SUFFIX: &str = "cluster.local";

/// The reserved gateway name of sidecars.
pub const MESH: &str = "mesh";

/// Istio's `ResolveShortnameToFQDN`: `reviews` written in namespace `ns` is
/// `reviews.ns.svc.cluster.local`; `*`, IP addresses and anything with a dot stay as written.
pub fn fqdn(host: &str, ns: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host == "*" || host.contains('.') || host.contains(':') {
        host
    } else {
        format!("{host}.{ns}.svc.{DOMAIN_SUFFIX}")
    }
}

pub fn is_wildcard(host: &str) -> bool {
    host.starts_with('*')
}

/// Istio's `Name.SubsetOf`: every host `a` matches is also matched by `b`.
pub fn subset_of(a: &str, b: &str) -> bool {
    match (is_wildcard(a), is_wildcard(b)) {
        (true, true) => a.len() >= b.len() && a[1..].ends_with(&b[1..]),
        (true, false) => false,
        (false, true) => a.ends_with(&b[1..]),
        (false, false) => a == b,
    }
}

/// Istio's `Name.Matches`: the two patterns have a host in common.
pub fn matches(a: &str, b: &str) -> bool {
    match (is_wildcard(a), is_wildcard(b)) {
        (true, true) => {
            if a.len() < b.len() {
                b[1..].ends_with(&a[1..])
            } else {
                a[1..].ends_with(&b[1..])
            }
        }
        (true, false) => b.ends_with(&a[1..]),
        (false, true) => a.ends_with(&b[1..]),
        (false, false) => a == b,
    }
}

/// Istio's `Names.Intersection`: for each pair that overlaps, the more specific of the two, in
/// the order of `a`, without repeats.
pub fn intersection(a: &[String], b: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for x in a {
        for y in b {
            let pick = if subset_of(x, y) {
                Some(x)
            } else if subset_of(y, x) {
                Some(y)
            } else {
                None
            };
            if let Some(p) = pick
                && !out.contains(p)
            {
                out.push(p.clone());
            }
        }
    }
    out
}

/// A Gateway server host split into its namespace part and DNS name: `ns/host`, `*/host`,
/// `./host` (the Gateway's namespace) or a bare `host` (any namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHost {
    /// `None`: any namespace.
    pub namespace: Option<String>,
    pub host: String,
}

impl ServerHost {
    pub fn parse(raw: &str, gateway_ns: &str) -> ServerHost {
        let raw = raw.to_ascii_lowercase();
        match raw.split_once('/') {
            Some(("*", h)) => ServerHost {
                namespace: None,
                host: h.to_owned(),
            },
            Some((".", h)) => ServerHost {
                namespace: Some(gateway_ns.to_owned()),
                host: h.to_owned(),
            },
            Some((ns, h)) => ServerHost {
                namespace: Some(ns.to_owned()),
                host: h.to_owned(),
            },
            None => ServerHost {
                namespace: None,
                host: raw,
            },
        }
    }

    /// True when a VirtualService in `ns` may bind to this host.
    pub fn admits(&self, ns: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == ns)
    }
}

/// Istio's `NamesForNamespace`: the server hosts a VirtualService in `ns` may use.
pub fn names_for_namespace(hosts: &[ServerHost], ns: &str) -> Vec<String> {
    hosts
        .iter()
        .filter(|h| h.admits(ns))
        .map(|h| h.host.clone())
        .collect()
}

/// Istio's `resolveGatewayName`: `name` → `vsns/name`, `./name` → `vsns/name`, legacy
/// `name.ns.svc.cluster.local` → `ns/name`, `ns/name` and `mesh` unchanged.
pub fn resolve_gateway_name(name: &str, vs_ns: &str) -> String {
    if name == MESH {
        return name.to_owned();
    }
    match name.split_once('/') {
        Some((".", rest)) => format!("{vs_ns}/{rest}"),
        Some(_) => name.to_owned(),
        None => match name.split_once('.') {
            None => format!("{vs_ns}/{name}"),
            Some((short, rest)) => {
                let ns = rest.split_once('.').map_or(rest, |(ns, _)| ns);
                format!("{ns}/{short}")
            }
        },
    }
}

/// Istio's `exportTo` visibility: is a resource of `owner_ns` seen from `client_ns`? An empty
/// list means the mesh default (`default`), and an empty default means every namespace.
pub fn visible(export_to: &[String], default: &[String], owner_ns: &str, client_ns: &str) -> bool {
    let list = if export_to.is_empty() {
        default
    } else {
        export_to
    };
    if list.is_empty() {
        return true;
    }
    list.iter().any(|e| match e.as_str() {
        "*" => true,
        "." => owner_ns == client_ns,
        "~" => false,
        ns => ns == client_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn short_names_expand_in_the_rule_namespace() {
        let table = [
            ("reviews", "prod", "reviews.prod.svc.cluster.local"),
            ("Reviews", "prod", "reviews.prod.svc.cluster.local"),
            ("api.github.com", "prod", "api.github.com"),
            ("*", "prod", "*"),
            ("*.wikipedia.org", "prod", "*.wikipedia.org"),
            ("10.0.0.1", "prod", "10.0.0.1"),
            ("::1", "prod", "::1"),
        ];
        for (host, ns, want) in table {
            assert_eq!(fqdn(host, ns), want, "{host}");
        }
    }

    #[test]
    fn subset_and_matches_follow_istio_host_name() {
        // (a, b, a SubsetOf b, a Matches b)
        let table = [
            ("a.com", "a.com", true, true),
            ("a.com", "*.com", true, true),
            ("*.com", "a.com", false, true),
            ("*.a.com", "*.com", true, true),
            ("*.com", "*.a.com", false, true),
            ("*", "a.com", false, true),
            ("a.com", "*", true, true),
            ("*.com", "*", true, true),
            ("a.com", "b.com", false, false),
            ("*.org", "a.com", false, false),
        ];
        for (a, b, sub, m) in table {
            assert_eq!(subset_of(a, b), sub, "{a} subset of {b}");
            assert_eq!(matches(a, b), m, "{a} matches {b}");
        }
    }

    #[test]
    fn intersection_keeps_the_more_specific_host() {
        // The examples of Istio's Names.Intersection.
        let table = [
            (
                v(&["foo.com", "bar.com"]),
                v(&["*.com"]),
                v(&["foo.com", "bar.com"]),
            ),
            (
                v(&["foo.com", "*.net"]),
                v(&["*.com", "bar.net"]),
                v(&["foo.com", "bar.net"]),
            ),
            (
                v(&["foo.com", "*.net"]),
                v(&["*.bar.net"]),
                v(&["*.bar.net"]),
            ),
            (v(&["foo.com"]), v(&["bar.com"]), v(&[])),
            (v(&[]), v(&["bar.com"]), v(&[])),
            (v(&["*"]), v(&["api.github.com"]), v(&["api.github.com"])),
        ];
        for (a, b, want) in table {
            assert_eq!(intersection(&a, &b), want, "{a:?} ∩ {b:?}");
        }
    }

    #[test]
    fn server_hosts_admit_by_namespace() {
        let table = [
            ("api.github.com", "default", "prod", true),
            ("*/api.github.com", "default", "prod", true),
            ("./api.github.com", "default", "default", true),
            ("./api.github.com", "default", "prod", false),
            ("prod/api.github.com", "default", "prod", true),
            ("prod/api.github.com", "default", "default", false),
        ];
        for (raw, gw_ns, vs_ns, want) in table {
            let h = ServerHost::parse(raw, gw_ns);
            assert_eq!(h.host, "api.github.com");
            assert_eq!(h.admits(vs_ns), want, "{raw} from {vs_ns}");
        }
    }

    #[test]
    fn gateway_names_resolve_as_istio_does() {
        let table = [
            ("mesh", "default", "mesh"),
            ("egress-gateway", "default", "default/egress-gateway"),
            ("./egress-gateway", "prod", "prod/egress-gateway"),
            ("istio-system/egress", "default", "istio-system/egress"),
            (
                "egress.istio-system.svc.cluster.local",
                "default",
                "istio-system/egress",
            ),
            ("egress.istio-system", "default", "istio-system/egress"),
        ];
        for (name, ns, want) in table {
            assert_eq!(resolve_gateway_name(name, ns), want, "{name}");
        }
    }

    /// (exportTo, mesh default, owner namespace, client namespace, visible)
    type ExportCase<'a> = (&'a [&'a str], &'a [&'a str], &'a str, &'a str, bool);

    #[test]
    fn export_to_visibility() {
        let table: [ExportCase<'_>; 8] = [
            (&[], &[], "a", "b", true),
            (&[], &["."], "a", "b", false),
            (&["."], &[], "a", "a", true),
            (&["."], &[], "a", "b", false),
            (&["*"], &["."], "a", "b", true),
            (&["~"], &[], "a", "a", false),
            (&[".", "istio-system"], &[], "prod", "istio-system", true),
            (&["other"], &[], "prod", "istio-system", false),
        ];
        for (export, default, owner, client, want) in table {
            assert_eq!(
                visible(&v(export), &v(default), owner, client),
                want,
                "{export:?} {owner} -> {client}"
            );
        }
    }
}
