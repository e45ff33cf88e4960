//! Host names as Istio compares them: short names expand in the resource's namespace,
//! wildcards match by suffix, comparison ignores case.

/// The fully qualified form of a host written in namespace `ns`: `reviews` →
/// `reviews.ns.svc.cluster.local`; anything with a dot, or a wildcard, stays as written.
pub fn qualify(host: &str, ns: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host.contains('.') || host.contains('*') {
        host
    } else {
        format!("{host}.{ns}.svc.cluster.local")
    }
}

/// True when the (possibly wildcard) pattern `pattern` covers `host`: `*` covers everything,
/// `*.example.com` covers `a.example.com` and `a.b.example.com`, otherwise names are equal.
/// `host` may itself be a wildcard: `*.a.example.com` is covered by `*.example.com`.
pub fn covers(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    if pattern == "*" || pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => false,
    }
}

/// True when two host patterns have a host in common.
pub fn overlap(a: &str, b: &str) -> bool {
    covers(a, b) || covers(b, a)
}

/// Splits a Gateway server host `ns/host` into its namespace part and host (`*/` and `./`
/// kept as written; no prefix means any namespace).
pub fn split_namespace(host: &str) -> (Option<&str>, &str) {
    match host.split_once('/') {
        Some((ns, h)) => (Some(ns), h),
        None => (None, host),
    }
}

/// True for names only Kubernetes (or a MESH_INTERNAL ServiceEntry) can resolve.
pub fn is_cluster_local(host: &str) -> bool {
    host.ends_with(".svc.cluster.local") || host.ends_with(".svc")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_by_suffix_and_case_is_ignored() {
        let table = [
            ("*", "anything.example.com", true),
            ("*.example.com", "api.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "*.api.example.com", true),
            ("api.example.com", "API.Example.com", true),
            ("api.example.com", "api.example.org", false),
            ("api.example.com", "*.example.com", false),
        ];
        for (pattern, host, want) in table {
            assert_eq!(covers(pattern, host), want, "{pattern} covers {host}");
        }
        assert!(overlap("api.example.com", "*.example.com"));
    }

    #[test]
    fn short_names_are_qualified_in_their_namespace() {
        assert_eq!(
            qualify("reviews", "bookinfo"),
            "reviews.bookinfo.svc.cluster.local"
        );
        assert_eq!(qualify("api.github.com", "x"), "api.github.com");
        assert_eq!(qualify("*", "x"), "*");
    }
}
