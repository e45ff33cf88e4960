use serde_json::{Value, json};
use sluice_model::Diagnostic;
use sluice_snapshot::route::{Redirect, RetryPolicy};
use sluice_snapshot::{App, Snapshot};

use super::*;
use crate::lower::testing::{gateway, has};

const BASE: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress, namespace: default}
spec:
  selector: {istio: egressgateway}
  servers:
    - port: {number: 80, name: http, protocol: HTTP}
      hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com, mirror.example.com]
  ports:
    - {number: 443, name: https, protocol: HTTPS}
    - {number: 80, name: http, protocol: HTTP}
  resolution: DNS
"#;

/// A VirtualService `name` for api.example.com bound to the gateway, with these `http` rules.
fn vs(name: &str, http: Value) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [api.example.com]\n  gateways: [egress]\n  http: {http}\n"
    )
}

fn compile_rules(extra: &str) -> (Snapshot, Vec<Diagnostic>) {
    gateway(&format!("{BASE}{extra}"))
}

/// The routes of the api.example.com virtual host on port 80.
fn routes(s: &Snapshot) -> Vec<Route> {
    let App::Http { virtual_hosts, .. } = &s.listener(80).expect("listener 80").chains[0].app
    else {
        panic!("HTTP");
    };
    virtual_hosts
        .iter()
        .find(|v| v.name == "api.example.com:80")
        .map(|v| v.routes.clone())
        .unwrap_or_default()
}

fn one_rule(rule: Value) -> (Vec<Route>, Vec<Diagnostic>) {
    let (s, d) = compile_rules(&vs("api", json!([rule])));
    (routes(&s), d)
}

fn to_api() -> Value {
    json!([{"destination": {"host": "api.example.com", "port": {"number": 443}}}])
}

#[test]
fn match_entries_translate_as_envoy_matchers() {
    let table = [
        (
            json!({"uri": {"prefix": "/api"}}),
            json!({"path": {"prefix": "/api"}, "ignore_uri_case": false}),
        ),
        (
            json!({"uri": {"exact": "/x"}, "ignoreUriCase": true}),
            json!({"path": {"exact": "/x"}, "ignore_uri_case": true}),
        ),
        (
            json!({"uri": {"regex": "/v[0-9]+"}}),
            json!({"path": {"regex": "/v[0-9]+"}, "ignore_uri_case": false}),
        ),
        (
            json!({"method": {"exact": "GET"}, "authority": {"prefix": "api"}, "scheme": {"exact": "http"}}),
            json!({"method": {"exact": "GET"}, "authority": {"prefix": "api"}, "scheme": {"exact": "http"}, "ignore_uri_case": false}),
        ),
        (
            json!({"headers": {"X-User": {"exact": "a"}, "x-any": {}, "x-star": {"regex": "*"}}}),
            json!({"headers": {"x-user": {"exact": "a"}, "x-any": "present", "x-star": "present"}, "ignore_uri_case": false}),
        ),
        (
            json!({"withoutHeaders": {"x-debug": {}}, "queryParams": {"Debug": {"exact": "1"}}}),
            json!({"without_headers": {"x-debug": "present"}, "query_params": {"Debug": {"exact": "1"}}, "ignore_uri_case": false}),
        ),
        (
            json!({"port": 80}),
            json!({"port": 80, "ignore_uri_case": false}),
        ),
    ];
    for (m, want) in table {
        let (r, d) = one_rule(json!({"match": [m], "route": to_api()}));
        assert_eq!(r.len(), 1, "{m}: {d:#?}");
        assert_eq!(
            serde_json::to_value(&r[0].match_.any_of[0]).expect("json"),
            want,
            "{m}"
        );
    }
}

#[test]
fn match_entries_for_other_gateways_or_ports_are_left_out() {
    let (r, _) = one_rule(json!({
        "match": [
            {"gateways": ["mesh"], "uri": {"prefix": "/mesh"}},
            {"gateways": ["egress"], "uri": {"prefix": "/gw"}},
            {"port": 8080, "uri": {"prefix": "/other-port"}},
            {"uri": {"prefix": "/any"}},
            {"sourceLabels": {"app": "x"}, "uri": {"prefix": "/labels"}},
        ],
        "route": to_api(),
    }));
    assert_eq!(r.len(), 1, "one rule, one route");
    let paths: Vec<Value> = r[0]
        .match_
        .any_of
        .iter()
        .map(|m| serde_json::to_value(&m.path).expect("json"))
        .collect();
    assert_eq!(
        paths,
        vec![json!({"prefix": "/gw"}), json!({"prefix": "/any"})]
    );

    // A rule whose every entry is for another gateway is not attached at all.
    let (r, d) = one_rule(json!({"match": [{"gateways": ["mesh"]}], "route": to_api()}));
    assert!(r.is_empty());
    assert!(has(&d, "SLC0206", "no VirtualService"), "{d:#?}");
}

#[test]
fn catch_all_stops_a_virtual_service_and_sorts_last_across_them() {
    // Istio orders VirtualServices by name here (no creation timestamps): "a" before "b".
    let a = vs(
        "a",
        json!([
            {"route": to_api()},
            {"match": [{"uri": {"prefix": "/never"}}], "route": to_api()}
        ]),
    );
    let b = vs(
        "b",
        json!([{"name": "b-api", "match": [{"uri": {"prefix": "/b"}}], "route": to_api()}]),
    );
    let (s, d) = compile_rules(&format!("{a}{b}"));
    let names: Vec<String> = routes(&s).iter().map(|r| r.name.clone()).collect();
    assert_eq!(names, vec!["b-api".to_owned(), "default/a/0".to_owned()]);
    assert!(has(&d, "SLC0204", "never reached"), "{d:#?}");
}

#[test]
fn catch_all_alternatives_are_recognised() {
    let table = [
        (json!({"uri": {"prefix": "/"}}), true),
        (json!({"uri": {"regex": ".*"}}), true),
        (json!({}), true),
        (json!({"port": 80}), true),
        (json!({"uri": {"prefix": "/a"}}), false),
        (json!({"uri": {"prefix": "/"}, "headers": {"x": {}}}), false),
        (json!({"method": {"exact": "GET"}}), false),
    ];
    for (m, want) in table {
        let (r, d) = one_rule(json!({"match": [m.clone()], "route": to_api()}));
        assert_eq!(
            is_catch_all_match(&r[0].match_.any_of[0]),
            want,
            "{m}: {d:#?}"
        );
    }
}

#[test]
fn retries_follow_istio_convert_policy() {
    let default = Some(default_retry());
    let table: [(Option<Value>, Option<RetryPolicy>); 5] = [
        (None, default.clone()),
        (Some(json!({"attempts": 0})), None),
        (Some(json!({})), None),
        (
            Some(json!({"attempts": 3, "perTryTimeout": "2s"})),
            Some(RetryPolicy {
                attempts: 3,
                per_try_timeout: Some(std::time::Duration::from_secs(2)),
                ..default_retry()
            }),
        ),
        (
            Some(json!({"attempts": 5, "retryOn": "gateway-error, 503,connect-failure,429"})),
            Some(RetryPolicy {
                attempts: 5,
                per_try_timeout: None,
                retry_on: [
                    "gateway-error",
                    "connect-failure",
                    "retriable-status-codes",
                    "503",
                    "429",
                ]
                .map(str::to_owned)
                .to_vec(),
            }),
        ),
    ];
    for (given, want) in table {
        let mut rule = json!({"route": to_api()});
        if let Some(g) = &given {
            rule["retries"] = g.clone();
        }
        let (r, _) = one_rule(rule);
        let RouteAction::Forward(f) = &r[0].action else {
            panic!("forward");
        };
        assert_eq!(f.retry, want, "{given:?}");
    }
}

#[test]
fn mesh_default_retry_policy_applies_when_a_rule_sets_none() {
    let mesh = "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: mesh, namespace: istio-system}\nspec:\n  meshConfig:\n    defaultHttpRetryPolicy: {attempts: 7}\n";
    let (s, d) = compile_rules(&format!(
        "{}{mesh}",
        vs("api", json!([{"route": to_api()}]))
    ));
    let RouteAction::Forward(f) = &routes(&s)[0].action else {
        panic!("forward");
    };
    assert_eq!(f.retry.as_ref().map(|r| r.attempts), Some(7), "{d:#?}");
}

#[test]
fn redirects_follow_istio_apply_redirect() {
    let r = |uri: Option<&str>,
             scheme: Option<&str>,
             port: Option<u16>,
             from_scheme: bool,
             status: u16| Redirect {
        uri: uri.map(str::to_owned),
        authority: None,
        scheme: scheme.map(str::to_owned),
        port,
        port_from_scheme: from_scheme,
        status,
    };
    let table = [
        (
            json!({"uri": "/new"}),
            r(Some("/new"), None, None, false, 301),
        ),
        (
            json!({"uri": "/new", "redirectCode": 308}),
            r(Some("/new"), None, None, false, 308),
        ),
        (
            json!({"scheme": "https", "port": 443}),
            r(None, Some("https"), None, false, 301),
        ),
        (
            json!({"scheme": "https", "port": 8443}),
            r(None, Some("https"), Some(8443), false, 301),
        ),
        (
            json!({"derivePort": "FROM_REQUEST_PORT"}),
            r(None, None, None, false, 301),
        ),
        (
            json!({"derivePort": "FROM_REQUEST_PORT", "scheme": "https"}),
            r(None, Some("https"), Some(80), false, 301),
        ),
        (
            json!({"derivePort": "FROM_PROTOCOL_DEFAULT", "scheme": "https"}),
            r(None, Some("https"), None, true, 301),
        ),
    ];
    for (given, want) in table {
        let (routes, d) = one_rule(json!({"redirect": given}));
        assert_eq!(routes.len(), 1, "{given}: {d:#?}");
        assert_eq!(routes[0].action, RouteAction::Redirect(want), "{given}");
        assert_eq!(routes[0].operation.as_deref(), Some("api:80/*"));
    }
    let (routes, d) = one_rule(json!({"redirect": {"uri": "/x", "redirectCode": 305}}));
    assert!(routes.is_empty());
    assert!(has(&d, "SLC0201", "redirect code 305"));
}

#[test]
fn headers_rewrites_and_authority() {
    let (r, _) = one_rule(json!({
        "headers": {
            "request": {"set": {"X-Env": "prod", "Host": "internal.example.com"}, "add": {"x-trace": "1"}, "remove": ["X-Debug", "host"]},
            "response": {"remove": ["server"]}
        },
        "rewrite": {"uri": "/v2/"},
        "route": [{"destination": {"host": "api.example.com", "port": {"number": 443}},
                   "headers": {"response": {"set": {"x-version": "v2"}}}}],
    }));
    let route = &r[0];
    assert_eq!(
        route.request_headers.set.get("x-env").map(String::as_str),
        Some("prod")
    );
    assert!(
        !route.request_headers.set.contains_key("host"),
        "host is not a header to set"
    );
    assert_eq!(
        route.request_headers.add.get("x-trace").map(String::as_str),
        Some("1")
    );
    assert_eq!(route.request_headers.remove, vec!["x-debug".to_owned()]);
    assert_eq!(route.response_headers.remove, vec!["server".to_owned()]);
    let RouteAction::Forward(f) = &route.action else {
        panic!("forward");
    };
    let rw = f.rewrite.as_ref().expect("rewrite");
    assert_eq!(rw.uri.as_deref(), Some("/v2/"));
    assert_eq!(
        rw.authority.as_deref(),
        Some("internal.example.com"),
        "set Host → authority rewrite"
    );
    assert_eq!(
        f.clusters[0]
            .response_headers
            .set
            .get("x-version")
            .map(String::as_str),
        Some("v2")
    );
    // rewrite.authority wins over a Host header.
    let (r, _) = one_rule(json!({
        "headers": {"request": {"set": {"host": "from-header"}}},
        "rewrite": {"authority": "from-rewrite", "uriRegexRewrite": {"match": "^/api/(.*)$", "rewrite": "/\\1"}},
        "route": to_api(),
    }));
    let RouteAction::Forward(f) = &r[0].action else {
        panic!("forward");
    };
    let rw = f.rewrite.as_ref().expect("rewrite");
    assert_eq!(rw.authority.as_deref(), Some("from-rewrite"));
    let (re, with) = rw.uri_regex.as_ref().expect("regex rewrite");
    assert_eq!(re.as_str(), "^/api/(.*)$");
    assert_eq!(with, "/${1}");
}

#[test]
fn weights_timeouts_faults_and_mirrors() {
    let dest = |subset: &str, w: i32| json!({"destination": {"host": "api.example.com", "subset": subset, "port": {"number": 443}}, "weight": w});
    let (r, d) = one_rule(json!({
        "route": [dest("a", 1), dest("b", 1), dest("c", 1), dest("zero", 0)],
        "timeout": "5s",
        "fault": {"delay": {"fixedDelay": "1s"}, "abort": {"httpStatus": 503, "percentage": {"value": 12.5}}},
        "mirror": {"host": "mirror.example.com", "port": {"number": 80}},
        "mirrorPercentage": {"value": 0},
        "mirrors": [{"destination": {"host": "mirror.example.com", "port": {"number": 80}}}],
    }));
    let RouteAction::Forward(f) = &r[0].action else {
        panic!("forward");
    };
    let got: Vec<(&str, u32)> = f
        .clusters
        .iter()
        .map(|c| (c.cluster.as_str(), c.weight))
        .collect();
    assert_eq!(
        got,
        vec![
            ("outbound|443|a|api.example.com", 34),
            ("outbound|443|b|api.example.com", 33),
            ("outbound|443|c|api.example.com", 33)
        ]
    );
    assert!(has(&d, "SLC0205", "scaled to 34/33/33"));
    assert_eq!(f.timeout, Some(std::time::Duration::from_secs(5)));
    let fault = f.fault.as_ref().expect("fault");
    assert_eq!(
        fault.delay.as_ref().map(|x| x.percent),
        Some(0.0),
        "no percentage: never delayed"
    );
    assert_eq!(
        fault.abort.as_ref().map(|x| (x.status, x.percent)),
        Some((503, 12.5))
    );
    // mirrorPercentage 0 disables `mirror`; `mirrors` default to 100%.
    assert_eq!(f.mirrors.len(), 1);
    assert_eq!(f.mirrors[0].cluster, "outbound|80||mirror.example.com");
    assert_eq!(f.mirrors[0].percent, 100.0);
    assert_eq!(
        r[0].operation.as_deref(),
        Some("api:80/*"),
        "several destinations: the VirtualService"
    );
}

#[test]
fn destination_ports_follow_get_destination_cluster() {
    // Given port; else the ServiceEntry's only port; else the port the request came in on.
    let single = "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: one, namespace: default}\nspec:\n  hosts: [one.example.com]\n  ports: [{number: 8443, name: tls, protocol: TLS}]\n  resolution: DNS\n";
    let table = [
        (
            json!({"host": "api.example.com", "port": {"number": 443}}),
            "outbound|443||api.example.com",
        ),
        (
            json!({"host": "one.example.com"}),
            "outbound|8443||one.example.com",
        ),
        (
            json!({"host": "api.example.com"}),
            "outbound|80||api.example.com",
        ),
        (
            json!({"host": "reviews"}),
            "outbound|80||reviews.default.svc.cluster.local",
        ),
    ];
    for (dest, want) in table {
        let (s, _) = compile_rules(&format!(
            "{single}{}",
            vs("api", json!([{"route": [{"destination": dest}]}]))
        ));
        let RouteAction::Forward(f) = &routes(&s)[0].action else {
            panic!("forward");
        };
        assert_eq!(f.clusters[0].cluster, want, "{dest}");
    }
}

#[test]
fn invalid_matches_and_actions_are_dropped_not_widened() {
    let (r, d) = one_rule(json!({
        "match": [{"uri": {"regex": "(unclosed"}}, {"uri": {"prefix": "/ok"}}],
        "route": to_api(),
    }));
    assert_eq!(r[0].match_.any_of.len(), 1);
    assert!(has(&d, "SLC0201", "invalid regex"));
    let (r, d) = one_rule(
        json!({"match": [{"headers": {"@request.auth.claims.group": {"exact": "a"}}}], "route": to_api()}),
    );
    assert!(r.is_empty());
    assert!(has(&d, "SLC0201", "JWT claims"));
    let (r, d) = one_rule(
        json!({"route": to_api(), "corsPolicy": {"allowOrigins": [{"exact": "https://a"}]}}),
    );
    assert_eq!(r.len(), 1);
    assert!(has(&d, "SLC0006", "CORS"));
}

#[test]
fn direct_responses() {
    let table = [
        (
            json!({"status": 418, "body": {"string": "teapot"}}),
            418,
            Some("teapot"),
        ),
        (json!({"status": 204}), 204, None),
        (
            json!({"status": 200, "body": {"bytes": "aGVsbG8="}}),
            200,
            Some("hello"),
        ),
    ];
    for (given, status, body) in table {
        let (r, _) = one_rule(json!({"directResponse": given}));
        assert_eq!(
            r[0].action,
            RouteAction::DirectResponse {
                status,
                body: body.map(str::to_owned)
            }
        );
    }
}

#[test]
fn operations_name_the_destination_and_path() {
    let table = [
        (
            json!({"uri": {"prefix": "/api"}}),
            "api.example.com:443/api*",
        ),
        (
            json!({"uri": {"exact": "/health"}}),
            "api.example.com:443/health",
        ),
        (
            json!({"uri": {"regex": "/v[0-9]"}}),
            "api.example.com:443/v[0-9]",
        ),
        (json!({"method": {"exact": "GET"}}), "api.example.com:443/*"),
    ];
    for (m, want) in table {
        let (r, _) = one_rule(json!({"match": [m.clone()], "route": to_api()}));
        assert_eq!(r[0].operation.as_deref(), Some(want), "{m}");
    }
}

#[test]
fn substitutions_and_base64() {
    for (re2, want) in [
        (r"/\1/\2", "/${1}/${2}"),
        ("$x", "$$x"),
        (r"a\\b", r"a\b"),
        ("plain", "plain"),
    ] {
        assert_eq!(re2_substitution(re2), want, "{re2}");
    }
    for (b64, want) in [
        ("aGVsbG8=", Some(&b"hello"[..])),
        ("aGVsbG8", Some(&b"hello"[..])),
        ("", Some(&b""[..])),
        ("!!", None),
    ] {
        assert_eq!(decode_base64(b64).as_deref(), want, "{b64}");
    }
}
