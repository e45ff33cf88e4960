//! Telemetry's CEL expressions at run time: access-log filters and metric tag values,
//! evaluated once per request or connection when its record is written, over the attributes
//! each expression reads (`sluice_snapshot::cel::ATTRIBUTES`) — those and no others are
//! computed. A record of a snapshot without filters or tag values never gets here.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cel::objects::{Key, Map};
use cel::{Context, Value};
use http::HeaderMap;
use sluice_snapshot::cel::{ATTRIBUTES, Expression, Label, Needs, ROOTS};

/// CEL's standard functions, built once; each evaluation adds its variables in a child scope.
static ROOT: LazyLock<Context<'static>> = LazyLock::new(Context::default);

/// Longest label value kept (longer ones are cut): a label is an index key, not a payload.
const MAX_LABEL: usize = 256;

/// Parses `source`, or says why it cannot be used (logged by the caller).
pub fn compile(source: &str) -> Result<Arc<Expression>, String> {
    sluice_snapshot::cel::parse(source).map(Arc::new)
}

/// The HTTP side of a record.
pub struct HttpFacts<'a> {
    pub method: &'a str,
    /// The path with its query.
    pub path: &'a str,
    pub protocol: &'a str,
    pub authority: &'a str,
    pub scheme: &'a str,
    pub request_headers: &'a HeaderMap,
    pub response_headers: &'a HeaderMap,
}

/// What a record knows, borrowed from it: the attributes are computed from this.
pub struct Facts<'a> {
    pub http: Option<HttpFacts<'a>>,
    /// HTTP only (`None` for TCP: Envoy has no response code there).
    pub response_code: Option<u16>,
    pub code_details: Option<&'a str>,
    /// Envoy's response flags as its bit vector.
    pub flags: u64,
    pub start: SystemTime,
    pub duration: Duration,
    pub received: u64,
    pub sent: u64,
    pub downstream_local: SocketAddr,
    pub downstream_remote: SocketAddr,
    pub sni: Option<&'a str>,
    pub principal: Option<&'a str>,
    pub mtls: bool,
    pub termination: Option<&'a str>,
    pub downstream_failure: Option<&'a str>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    pub upstream_failure: Option<&'a str>,
    pub attempts: u32,
    pub cluster: Option<&'a str>,
    pub route_name: Option<&'a str>,
    /// The host a virtual host matched by name (exact domain), for labels.
    pub routed_host: Option<&'a str>,
}

/// What the values are for: a log filter sees every attribute as it is; a metric label sees
/// only bounded ones (`Label::Yes`), the host as routed and the method if standard.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Log,
    Label,
}

/// The variables of one evaluation: the attributes `needs`, computed from `facts`.
pub fn scope(facts: &Facts<'_>, needs: Needs, use_: Use) -> Context<'static> {
    let mut ctx = ROOT.new_inner_scope();
    for root in ROOTS {
        if !needs.any_of(root) {
            continue;
        }
        let mut map: HashMap<Key, Value> = HashMap::new();
        for (i, a) in ATTRIBUTES.iter().enumerate() {
            if a.root != *root || !needs.has(i) {
                continue;
            }
            if use_ == Use::Label && a.label == Label::No {
                continue;
            }
            if let Some(v) = value(facts, a.root, a.field, use_) {
                map.insert(Key::String(Arc::new(a.field.to_owned())), v);
            }
        }
        ctx.add_variable_from_value(*root, Value::Map(Map { map: Arc::new(map) }));
    }
    ctx
}

/// A scope computed on first use, then shared by every expression of one record.
pub struct LazyScope<'f> {
    facts: &'f Facts<'f>,
    needs: Needs,
    use_: Use,
    cell: OnceCell<Context<'static>>,
}

impl<'f> LazyScope<'f> {
    pub fn new(facts: &'f Facts<'f>, needs: Needs, use_: Use) -> LazyScope<'f> {
        LazyScope {
            facts,
            needs,
            use_,
            cell: OnceCell::new(),
        }
    }

    pub fn get(&self) -> &Context<'static> {
        self.cell
            .get_or_init(|| scope(self.facts, self.needs, self.use_))
    }
}

/// Envoy's access-log filter: logged when the expression is `true`; `false`, an error or any
/// other value does not log.
pub fn matches(expr: &Expression, ctx: &Context<'_>) -> bool {
    matches!(execute(expr, ctx), Some(Value::Bool(true)))
}

/// The expression's value, `None` when it fails — or panics: an evaluation runs while a
/// record is dropped, where a panic must not escape.
fn execute(expr: &Expression, ctx: &Context<'_>) -> Option<Value> {
    std::panic::catch_unwind(AssertUnwindSafe(|| expr.program.execute(ctx)))
        .ok()?
        .ok()
}

/// A metric label's value: the expression's value as text, `unknown` when it fails or is not
/// a scalar (as Istio's stats filter does).
pub fn label(expr: &Expression, ctx: &Context<'_>) -> Arc<str> {
    let text = match execute(expr, ctx) {
        Some(Value::String(s)) => s.as_str().to_owned(),
        Some(Value::Int(i)) => i.to_string(),
        Some(Value::UInt(u)) => u.to_string(),
        Some(Value::Float(f)) => f.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => return Arc::from("unknown"),
    };
    let mut end = text.len().min(MAX_LABEL);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Arc::from(&text[..end])
}

fn string(s: &str) -> Value {
    Value::String(Arc::new(s.to_owned()))
}

fn int(n: impl Into<i64>) -> Value {
    Value::Int(n.into())
}

fn headers(h: &HeaderMap) -> Value {
    let mut map: HashMap<Key, Value> = HashMap::new();
    for name in h.keys() {
        let joined = h
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
            .collect::<Vec<_>>()
            .join(",");
        map.insert(
            Key::String(Arc::new(name.as_str().to_owned())),
            Value::String(Arc::new(joined)),
        );
    }
    Value::Map(Map { map: Arc::new(map) })
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn value(f: &Facts<'_>, root: &str, field: &str, use_: Use) -> Option<Value> {
    let http = f.http.as_ref();
    Some(match (root, field) {
        ("request", "path") => string(http?.path),
        ("request", "url_path") => string(http?.path.split('?').next().unwrap_or_default()),
        ("request", "query") => string(http?.path.split_once('?').map_or("", |(_, q)| q)),
        ("request", "host") => match use_ {
            Use::Log => string(http?.authority),
            Use::Label => {
                http?;
                string(f.routed_host.unwrap_or("unknown"))
            }
        },
        ("request", "scheme") => string(http?.scheme),
        ("request", "method") => {
            let m = http?.method;
            match use_ {
                Use::Label if !METHODS.contains(&m) => string("unknown"),
                _ => string(m),
            }
        }
        ("request", "headers") => headers(http?.request_headers),
        ("request", "referer") => string(header(http?.request_headers, "referer")?),
        ("request", "useragent") => string(header(http?.request_headers, "user-agent")?),
        ("request", "id") => string(header(http?.request_headers, "x-request-id")?),
        ("request", "protocol") => string(http?.protocol),
        ("request", "time") => {
            let since = f.start.duration_since(UNIX_EPOCH).ok()?;
            let at = chrono::DateTime::from_timestamp(
                i64::try_from(since.as_secs()).ok()?,
                since.subsec_nanos(),
            )?;
            Value::Timestamp(at.fixed_offset())
        }
        ("request", "duration") => Value::Duration(chrono::Duration::from_std(f.duration).ok()?),
        ("request", "size") => int(i64::try_from(f.received).unwrap_or(i64::MAX)),
        ("response", "code") => int(f.response_code?),
        ("response", "code_details") => string(f.code_details?),
        ("response", "flags") => int(i64::try_from(f.flags).unwrap_or(i64::MAX)),
        ("response", "headers") => headers(http?.response_headers),
        ("response", "size") => int(i64::try_from(f.sent).unwrap_or(i64::MAX)),
        ("source", "address") => string(&f.downstream_remote.to_string()),
        ("source", "port") => int(f.downstream_remote.port()),
        ("source", "principal") => string(f.principal?),
        ("destination", "address") => string(&f.downstream_local.to_string()),
        ("destination", "port") => int(f.downstream_local.port()),
        ("connection", "mtls") => Value::Bool(f.mtls),
        ("connection", "requested_server_name") | ("connection", "sni") => string(f.sni?),
        ("connection", "uri_san_peer_certificate") => string(f.principal?),
        ("connection", "termination_details") => string(f.termination?),
        ("connection", "transport_failure_reason") => string(f.downstream_failure?),
        ("upstream", "address") => string(&f.upstream_host?.to_string()),
        ("upstream", "port") => int(f.upstream_host?.port()),
        ("upstream", "local_address") => string(&f.upstream_local?.to_string()),
        ("upstream", "transport_failure_reason") => string(f.upstream_failure?),
        ("upstream", "request_attempt_count") => Value::UInt(u64::from(f.attempts)),
        ("xds", "cluster_name") => string(f.cluster?),
        ("xds", "route_name") => string(f.route_name?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn facts<'a>(req: &'a HeaderMap, resp: &'a HeaderMap) -> Facts<'a> {
        let addr = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        Facts {
            http: Some(HttpFacts {
                method: "BREW",
                path: "/api/v1?x=1",
                protocol: "HTTP/1.1",
                authority: "Evil.example:80",
                scheme: "http",
                request_headers: req,
                response_headers: resp,
            }),
            response_code: Some(503),
            code_details: Some("upstream_reset_before_response_started"),
            flags: 0x20,
            start: SystemTime::now(),
            duration: Duration::from_millis(1500),
            received: 10,
            sent: 20,
            downstream_local: addr(80),
            downstream_remote: addr(40000),
            sni: None,
            principal: None,
            mtls: false,
            termination: None,
            downstream_failure: None,
            upstream_host: Some(addr(8443)),
            upstream_local: None,
            upstream_failure: None,
            attempts: 2,
            cluster: Some("outbound|443||api.github.com"),
            route_name: None,
            routed_host: None,
        }
    }

    fn eval(src: &str, use_: Use) -> Result<Value, String> {
        let mut req = HeaderMap::new();
        req.append("x-a", "1".parse().expect("value"));
        req.append("x-a", "2".parse().expect("value"));
        req.insert("user-agent", "curl/8".parse().expect("value"));
        let resp = HeaderMap::new();
        let f = facts(&req, &resp);
        let e = compile(src)?;
        let ctx = scope(&f, e.needs, use_);
        e.program.execute(&ctx).map_err(|e| e.to_string())
    }

    #[test]
    fn log_attributes() {
        for (src, want) in [
            ("response.code >= 400", true),
            ("response.code == 503u", true),
            ("response.flags == 0x20", true),
            (
                "request.url_path == '/api/v1' && request.query == 'x=1'",
                true,
            ),
            ("request.path.startsWith('/api')", true),
            ("request.headers['x-a'] == '1,2'", true),
            ("request.useragent.matches('^curl/')", true),
            ("request.host == 'Evil.example:80'", true),
            ("request.duration > duration('1s')", true),
            ("request.duration > duration('2s')", false),
            (
                "upstream.port == 8443 && upstream.request_attempt_count == 2u",
                true,
            ),
            ("xds.cluster_name.endsWith('api.github.com')", true),
            ("!connection.mtls && source.port == 40000", true),
            ("has(request.referer)", false),
        ] {
            assert_eq!(eval(src, Use::Log), Ok(Value::Bool(want)), "{src}");
        }
        // Absent attributes are errors, not false: a filter reading one does not log.
        assert!(eval("connection.sni == 'x'", Use::Log).is_err());
    }

    #[test]
    fn labels_take_no_client_input() {
        let of = |src: &str| {
            let req = HeaderMap::new();
            let f = facts(&req, &req);
            let e = compile(src).expect("parses");
            let ctx = scope(&f, e.needs, Use::Label);
            label(&e, &ctx).to_string()
        };
        // Not routed by name: the host a client sent is not a label value.
        assert_eq!(of("request.host"), "unknown");
        assert_eq!(of("request.method"), "unknown");
        assert_eq!(of("request.path"), "unknown");
        assert_eq!(of("response.code"), "503");
        assert_eq!(of("xds.cluster_name"), "outbound|443||api.github.com");
        assert_eq!(of("'x'.repeat"), "unknown");
        let req = HeaderMap::new();
        let mut f = facts(&req, &req);
        f.routed_host = Some("api.github.com");
        let e = compile("request.host").expect("parses");
        assert_eq!(
            &*label(&e, &scope(&f, e.needs, Use::Label)),
            "api.github.com"
        );
    }
}
