//! Route matching as data plus pure functions: the first route of the virtual host whose match
//! accepts the request, in declared order (VirtualService semantics).

use http::HeaderMap;
use sluice_snapshot::route::{RequestMatch, Route};

/// What a route match looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The path without its query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a str,
    /// As sent (`host:port` included).
    pub authority: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
    pub port: u16,
}

/// The first route that matches, and which of its alternatives did (`None`: the route
/// matches every request).
pub fn find<'a>(
    routes: &'a [Route],
    req: &RequestView<'_>,
) -> Option<(&'a Route, Option<&'a RequestMatch>)> {
    routes.iter().find_map(|r| {
        if r.match_.any_of.is_empty() {
            return Some((r, None));
        }
        r.match_
            .any_of
            .iter()
            .find(|m| matches(m, req))
            .map(|m| (r, Some(m)))
    })
}

/// Every field of the match must hold.
pub fn matches(m: &RequestMatch, req: &RequestView<'_>) -> bool {
    if let Some(p) = &m.path
        && !p.matches(req.path, m.ignore_uri_case)
    {
        return false;
    }
    if let Some(method) = &m.method
        && !method.matches(req.method, false)
    {
        return false;
    }
    if let Some(a) = &m.authority
        && !a.matches(req.authority, false)
    {
        return false;
    }
    if let Some(s) = &m.scheme
        && !s.matches(req.scheme, false)
    {
        return false;
    }
    if m.port.is_some_and(|p| p != req.port) {
        return false;
    }
    for (name, matcher) in &m.headers {
        match header_value(req.headers, name) {
            Some(v) if matcher.matches(&v, false) => {}
            _ => return false,
        }
    }
    for (name, matcher) in &m.without_headers {
        if let Some(v) = header_value(req.headers, name)
            && matcher.matches(&v, false)
        {
            return false;
        }
    }
    for (name, matcher) in &m.query_params {
        match query_param(req.query, name) {
            Some(v) if matcher.matches(v, false) => {}
            _ => return false,
        }
    }
    true
}

/// A header's value; several values are joined with `,` as Envoy does.
fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let joined: Vec<&str> = values.map(|v| v.to_str().unwrap_or("")).collect();
    Some(joined.join(","))
}

/// The first value of query parameter `name` (raw, not percent-decoded).
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The host of an authority, without its port (`[::1]:80` → `[::1]`).
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        Some((host, "")) => host,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use sluice_snapshot::StringMatcher;
    use sluice_snapshot::matching::Regex;
    use sluice_snapshot::route::{RouteAction, RouteMatch};

    use super::*;

    fn route(name: &str, any_of: Vec<RequestMatch>) -> Route {
        Route {
            name: name.into(),
            match_: RouteMatch { any_of },
            action: RouteAction::DirectResponse {
                status: 200,
                body: None,
            },
            request_headers: Default::default(),
            response_headers: Default::default(),
            operation: None,
            direct_cluster: None,
        }
    }

    fn view<'a>(path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        RequestView {
            path,
            query,
            method: "GET",
            authority: "api.example.com:8080",
            scheme: "http",
            headers,
            port: 8080,
        }
    }

    #[test]
    fn first_match_in_order_with_all_fields() {
        let mut with_header = BTreeMap::new();
        with_header.insert("x-user".to_owned(), StringMatcher::Exact("jason".into()));
        let routes = vec![
            route(
                "exact",
                vec![RequestMatch {
                    path: Some(StringMatcher::Exact("/exact".into())),
                    ..Default::default()
                }],
            ),
            route(
                "header-and-prefix",
                vec![RequestMatch {
                    path: Some(StringMatcher::Prefix("/api".into())),
                    headers: with_header,
                    ..Default::default()
                }],
            ),
            route(
                "regex-or-query",
                vec![
                    RequestMatch {
                        path: Some(StringMatcher::Regex(Regex::new("/v[0-9]+/.*").expect("re"))),
                        ..Default::default()
                    },
                    RequestMatch {
                        query_params: [("debug".to_owned(), StringMatcher::Exact("1".into()))]
                            .into_iter()
                            .collect(),
                        ..Default::default()
                    },
                ],
            ),
            route(
                "icase",
                vec![RequestMatch {
                    path: Some(StringMatcher::Prefix("/CASE".into())),
                    ignore_uri_case: true,
                    port: Some(8080),
                    ..Default::default()
                }],
            ),
            route("catch-all", vec![]),
        ];
        let mut jason = HeaderMap::new();
        jason.insert("x-user", "jason".parse().expect("value"));
        let none = HeaderMap::new();
        let table = [
            ("/exact", &none, "exact"),
            ("/exact/more", &none, "catch-all"),
            ("/api/x", &jason, "header-and-prefix"),
            ("/api/x", &none, "catch-all"),
            ("/v2/users", &none, "regex-or-query"),
            ("/other?a=b&debug=1", &none, "regex-or-query"),
            ("/other?debug=2", &none, "catch-all"),
            ("/case/x", &none, "icase"),
        ];
        for (path, headers, want) in table {
            let got = find(&routes, &view(path, headers)).map(|(r, _)| r.name.as_str());
            assert_eq!(got, Some(want), "{path}");
        }
    }

    #[test]
    fn without_headers_excludes() {
        let r = vec![route(
            "no-debug",
            vec![RequestMatch {
                without_headers: [("x-debug".to_owned(), StringMatcher::Present)]
                    .into_iter()
                    .collect(),
                ..Default::default()
            }],
        )];
        let mut debug = HeaderMap::new();
        debug.insert("x-debug", "1".parse().expect("value"));
        assert!(find(&r, &view("/", &debug)).is_none());
        assert!(find(&r, &view("/", &HeaderMap::new())).is_some());
    }

    #[test]
    fn strips_ports() {
        for (a, want) in [
            ("api.github.com:443", "api.github.com"),
            ("api.github.com", "api.github.com"),
            ("[::1]:80", "[::1]"),
            ("[::1]", "[::1]"),
            ("host:", "host"),
            ("host:abc", "host:abc"),
        ] {
            assert_eq!(strip_port(a), want);
        }
    }
}
