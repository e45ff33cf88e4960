//! CEL, the Common Expression Language of Telemetry's `accessLogging[].filter.expression` and
//! `metrics[].overrides[].tagOverrides.*.value`: one parser for validation, the compiler and
//! the data plane, and the attributes the data plane provides, named and typed as Envoy names
//! them (Envoy's "Attributes" page: `request.*`, `response.*`, `source.*`, `destination.*`,
//! `connection.*`, `upstream.*`, `xds.*`).
//!
//! Parsing is bounded: an expression longer than [`MAX_LEN`] bytes, or with more than
//! [`MAX_OPERATORS`] operators, selections, indexes, calls and brackets, is refused before the
//! parser sees it, and the parser runs on a thread of its own with a large stack. The parser
//! (ANTLR-generated) and the evaluator recurse once per level of the expression, so these
//! bounds are what keeps a hostile expression from exhausting a stack when it is parsed here
//! or evaluated on a proxy worker.

use cel::common::ast::{EntryExpr, Expr};
use cel::{IdedExpr, Program};

/// Longest expression accepted, in bytes.
pub const MAX_LEN: usize = 2048;
/// Most operators, selections (`a.b`), indexes, calls and brackets in one expression: the
/// depth of its syntax tree cannot exceed it.
pub const MAX_OPERATORS: usize = 40;

/// The CEL type of an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    String,
    Int,
    Uint,
    Bool,
    Duration,
    Timestamp,
    /// `map<string, string>` (header names lower-cased).
    Map,
}

impl Type {
    pub fn name(self) -> &'static str {
        match self {
            Type::String => "string",
            Type::Int => "int",
            Type::Uint => "uint",
            Type::Bool => "bool",
            Type::Duration => "duration",
            Type::Timestamp => "timestamp",
            Type::Map => "map<string, string>",
        }
    }
}

/// Whether a metric label may take an attribute's value (the label's cardinality must stay
/// bounded by the configuration, never by what clients send).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// Bounded by the configuration or the proxy (response codes, cluster names).
    Yes,
    /// Straight from the client, or one value per request or connection (paths, headers,
    /// client ports, durations): absent where labels are computed, so a tag that reads it is
    /// `unknown`.
    No,
}

/// One attribute: `root.field`, its type, whether a label may use it, what it holds.
#[derive(Debug, Clone, Copy)]
pub struct Attribute {
    pub root: &'static str,
    pub field: &'static str,
    pub ty: Type,
    pub label: Label,
    pub doc: &'static str,
}

const fn attr(
    root: &'static str,
    field: &'static str,
    ty: Type,
    label: Label,
    doc: &'static str,
) -> Attribute {
    Attribute {
        root,
        field,
        ty,
        label,
        doc,
    }
}

/// Every attribute the data plane provides (at most 64: [`Needs`] is a bit set over them).
pub const ATTRIBUTES: &[Attribute] = &[
    attr(
        "request",
        "path",
        Type::String,
        Label::No,
        "the path with its query, as the upstream sees it",
    ),
    attr(
        "request",
        "url_path",
        Type::String,
        Label::No,
        "the path without its query",
    ),
    attr(
        "request",
        "query",
        Type::String,
        Label::No,
        "the query, without `?`",
    ),
    attr(
        "request",
        "host",
        Type::String,
        Label::Yes,
        "the authority (`:authority`/`Host`); as a label, the routed host (a virtual host matched it by name) or `unknown`",
    ),
    attr(
        "request",
        "scheme",
        Type::String,
        Label::Yes,
        "`http` or `https`: how the request reached the proxy",
    ),
    attr(
        "request",
        "method",
        Type::String,
        Label::Yes,
        "the method; as a label, one of the nine standard methods or `unknown`",
    ),
    attr(
        "request",
        "headers",
        Type::Map,
        Label::No,
        "request headers by lower-case name (repeated headers joined by `,`)",
    ),
    attr(
        "request",
        "referer",
        Type::String,
        Label::No,
        "the `referer` header",
    ),
    attr(
        "request",
        "useragent",
        Type::String,
        Label::No,
        "the `user-agent` header",
    ),
    attr(
        "request",
        "id",
        Type::String,
        Label::No,
        "the `x-request-id` header",
    ),
    attr(
        "request",
        "protocol",
        Type::String,
        Label::Yes,
        "`HTTP/1.0`, `HTTP/1.1` or `HTTP/2`",
    ),
    attr(
        "request",
        "time",
        Type::Timestamp,
        Label::No,
        "when the request (or connection) started",
    ),
    attr(
        "request",
        "duration",
        Type::Duration,
        Label::No,
        "how long the request (or connection) took",
    ),
    attr(
        "request",
        "size",
        Type::Int,
        Label::No,
        "bytes received from the client: the request body (HTTP), the stream (TCP)",
    ),
    attr(
        "response",
        "code",
        Type::Int,
        Label::Yes,
        "the HTTP status sent to the client (HTTP only)",
    ),
    attr(
        "response",
        "code_details",
        Type::String,
        Label::Yes,
        "Envoy's response code details (`via_upstream`, `route_not_found`…)",
    ),
    attr(
        "response",
        "flags",
        Type::Int,
        Label::Yes,
        "Envoy's response flags as its bit vector (`UF` is 0x20, `NR` 0x100…)",
    ),
    attr(
        "response",
        "headers",
        Type::Map,
        Label::No,
        "response headers by lower-case name",
    ),
    attr(
        "response",
        "size",
        Type::Int,
        Label::No,
        "bytes sent to the client: the response body (HTTP), the stream (TCP)",
    ),
    attr(
        "source",
        "address",
        Type::String,
        Label::No,
        "the client's address, `ip:port`",
    ),
    attr("source", "port", Type::Int, Label::No, "the client's port"),
    attr(
        "source",
        "principal",
        Type::String,
        Label::Yes,
        "the client's SPIFFE ID (`spiffe://…`), from a certificate verified over mesh mTLS",
    ),
    attr(
        "destination",
        "address",
        Type::String,
        Label::Yes,
        "the proxy's address the client connected to, `ip:port`",
    ),
    attr(
        "destination",
        "port",
        Type::Int,
        Label::Yes,
        "the proxy's port the client connected to",
    ),
    attr(
        "connection",
        "mtls",
        Type::Bool,
        Label::Yes,
        "the client connected over mesh mTLS with a verified certificate",
    ),
    attr(
        "connection",
        "requested_server_name",
        Type::String,
        Label::No,
        "the SNI the client sent",
    ),
    attr(
        "connection",
        "sni",
        Type::String,
        Label::No,
        "the same as `connection.requested_server_name`",
    ),
    attr(
        "connection",
        "uri_san_peer_certificate",
        Type::String,
        Label::Yes,
        "the verified peer's SPIFFE ID",
    ),
    attr(
        "connection",
        "termination_details",
        Type::String,
        Label::No,
        "why sluice closed a TCP connection",
    ),
    attr(
        "connection",
        "transport_failure_reason",
        Type::String,
        Label::No,
        "why the client's TLS handshake failed",
    ),
    attr(
        "upstream",
        "address",
        Type::String,
        Label::Yes,
        "the upstream endpoint, `ip:port`",
    ),
    attr(
        "upstream",
        "port",
        Type::Int,
        Label::Yes,
        "the upstream endpoint's port",
    ),
    attr(
        "upstream",
        "local_address",
        Type::String,
        Label::No,
        "the proxy's address on the upstream connection",
    ),
    attr(
        "upstream",
        "transport_failure_reason",
        Type::String,
        Label::No,
        "why the upstream connection failed",
    ),
    attr(
        "upstream",
        "request_attempt_count",
        Type::Uint,
        Label::Yes,
        "upstream attempts made (retries included)",
    ),
    attr(
        "xds",
        "cluster_name",
        Type::String,
        Label::Yes,
        "the upstream cluster (`outbound|443||api.github.com`)",
    ),
    attr(
        "xds",
        "route_name",
        Type::String,
        Label::Yes,
        "the route's name",
    ),
];

/// The roots of [`ATTRIBUTES`].
pub const ROOTS: &[&str] = &[
    "request",
    "response",
    "source",
    "destination",
    "connection",
    "upstream",
    "xds",
];

/// CEL's type names, which are identifiers too (`type(x) == int`).
const TYPE_NAMES: &[&str] = &[
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
];

/// The index in [`ATTRIBUTES`] of `root.field`.
pub fn attribute(root: &str, field: &str) -> Option<usize> {
    ATTRIBUTES
        .iter()
        .position(|a| a.root == root && a.field == field)
}

/// A set of attributes (bits over [`ATTRIBUTES`]): what an expression reads, so that the data
/// plane computes those and nothing else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Needs(pub u64);

impl Needs {
    pub fn has(self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }

    pub fn union(self, other: Needs) -> Needs {
        Needs(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Any attribute of `root`.
    pub fn any_of(self, root: &str) -> bool {
        ATTRIBUTES
            .iter()
            .enumerate()
            .any(|(i, a)| a.root == root && self.has(i))
    }

    fn add(&mut self, i: usize) {
        self.0 |= 1 << i;
    }

    fn add_root(&mut self, root: &str) {
        for (i, a) in ATTRIBUTES.iter().enumerate() {
            if a.root == root {
                self.add(i);
            }
        }
    }
}

/// A parsed expression, with the attributes it reads.
#[derive(Debug)]
pub struct Expression {
    pub source: String,
    pub program: Program,
    pub needs: Needs,
    /// `root.field` (or bare identifiers) the expression reads that no attribute provides: it
    /// fails when evaluated.
    pub unknown: Vec<String>,
}

/// Parses `source` (bounded; see the module's documentation). The error says what is wrong as
/// CEL's parser says it, with its position.
pub fn parse(source: &str) -> Result<Expression, String> {
    precheck(source)?;
    let owned = source.to_owned();
    let parsed = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("cel-parse".into())
            .stack_size(32 << 20)
            .spawn_scoped(s, || Program::compile(&owned).map_err(|e| e.to_string()))
            .map_err(|e| format!("cannot start the CEL parser: {e}"))?
            .join()
            .map_err(|_| "the CEL parser failed on this expression".to_owned())?
    });
    let program = parsed.map_err(|e| tidy(&e))?;
    let mut walk = Walk::default();
    walk.expr(program.expression());
    Ok(Expression {
        source: source.to_owned(),
        program,
        needs: walk.needs,
        unknown: walk.unknown,
    })
}

/// cel-rust's messages: `ERROR: <input>:1:17: Syntax error: …` then the source and a caret,
/// per error. Kept: the first line of each error, without the `<input>` prefix.
fn tidy(msg: &str) -> String {
    let errors: Vec<String> = msg
        .lines()
        .filter_map(|l| l.strip_prefix("ERROR: "))
        .map(|l| l.strip_prefix("<input>:").unwrap_or(l).to_owned())
        .collect();
    if errors.is_empty() {
        msg.to_owned()
    } else {
        format!("at {}", errors.join("; at "))
    }
}

/// Refuses what could make the parser or the evaluator recurse too deep.
fn precheck(src: &str) -> Result<(), String> {
    if src.trim().is_empty() {
        return Err("the expression is empty".to_owned());
    }
    if src.len() > MAX_LEN {
        return Err(format!(
            "the expression is {} bytes long; sluice accepts at most {MAX_LEN}",
            src.len()
        ));
    }
    let b = src.as_bytes();
    let mut ops = 0usize;
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' | b'\'' => quote = Some(c),
            b'&' | b'|' | b'=' if b.get(i + 1) == Some(&c) => {
                ops += 1;
                i += 1;
            }
            b'<' | b'>' | b'!' if b.get(i + 1) == Some(&b'=') => {
                ops += 1;
                i += 1;
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'!' | b'<' | b'>' | b'?' | b'.' | b'(' | b'['
            | b'{' => ops += 1,
            _ => {}
        }
        i += 1;
    }
    if ops > MAX_OPERATORS {
        return Err(format!(
            "the expression has {ops} operators, selections and brackets; sluice accepts at \
             most {MAX_OPERATORS}"
        ));
    }
    Ok(())
}

/// Collects the attributes an expression reads.
#[derive(Default)]
struct Walk {
    needs: Needs,
    unknown: Vec<String>,
    /// Variables bound by comprehensions (`.map(x, …)`, `.all(x, …)`).
    bound: Vec<String>,
}

impl Walk {
    fn note_unknown(&mut self, what: String) {
        if !self.unknown.contains(&what) {
            self.unknown.push(what);
        }
    }

    fn ident(&mut self, name: &str) {
        if self.bound.iter().any(|b| b == name) || TYPE_NAMES.contains(&name) {
            return;
        }
        if ROOTS.contains(&name) {
            self.needs.add_root(name);
        } else {
            self.note_unknown(name.to_owned());
        }
    }

    fn expr(&mut self, e: &IdedExpr) {
        match &e.expr {
            Expr::Select(s) => match &s.operand.expr {
                Expr::Ident(root)
                    if ROOTS.contains(&root.as_str()) && !self.bound.contains(root) =>
                {
                    match attribute(root, &s.field) {
                        Some(i) => self.needs.add(i),
                        None => self.note_unknown(format!("{root}.{}", s.field)),
                    }
                }
                _ => self.expr(&s.operand),
            },
            Expr::Ident(name) => self.ident(name),
            Expr::Call(c) => {
                if let Some(t) = &c.target {
                    self.expr(t);
                }
                for a in &c.args {
                    self.expr(a);
                }
            }
            Expr::Comprehension(c) => {
                self.expr(&c.iter_range);
                let depth = self.bound.len();
                self.bound.push(c.iter_var.clone());
                if let Some(v) = &c.iter_var2 {
                    self.bound.push(v.clone());
                }
                self.bound.push(c.accu_var.clone());
                for e in [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                    self.expr(e);
                }
                self.bound.truncate(depth);
            }
            Expr::List(l) => {
                for e in &l.elements {
                    self.expr(e);
                }
            }
            Expr::Map(m) => self.entries(m.entries.iter().map(|e| &e.expr)),
            Expr::Struct(s) => self.entries(s.entries.iter().map(|e| &e.expr)),
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    fn entries<'a>(&mut self, entries: impl Iterator<Item = &'a EntryExpr>) {
        for e in entries {
            match e {
                EntryExpr::StructField(f) => self.expr(&f.value),
                EntryExpr::MapEntry(m) => {
                    self.expr(&m.key);
                    self.expr(&m.value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_fit_the_bit_set() {
        assert!(ATTRIBUTES.len() <= 64);
        for a in ATTRIBUTES {
            assert!(ROOTS.contains(&a.root), "{}", a.root);
            assert_eq!(
                attribute(a.root, a.field).map(|i| ATTRIBUTES[i].field),
                Some(a.field)
            );
        }
    }

    #[test]
    fn accepts_cel() {
        for ok in [
            "true",
            "response.code >= 400",
            "request.host",
            "response.code >= 400 && request.url_path.startsWith('/api')",
            "has(request.headers.x) ? 'a' : \"b\"",
            "connection.mtls || !(source.address in ['1.2.3.4', '5.6.7.8'])",
            "size(request.headers) > 2u && 1.5e3 > 0.5 && -1 < 0x1F",
            "{'a': 1, 'b': [1, 2,]}['a'] == 1",
            "request.duration > duration('1s')",
            "request.headers['user-agent'].matches('^curl/.*')",
            "[1, 2].all(x, x > 0)",
            "'a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z.a.b.c.d.e.f.g.h.i.j.k' != ''",
        ] {
            let e = parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert!(e.unknown.is_empty(), "{ok}: {:?}", e.unknown);
        }
    }

    #[test]
    fn rejects_what_cel_rejects_with_a_position() {
        for bad in [
            "",
            "response.code >=",
            "response.code = 400",
            "(a",
            "a)",
            "'unterminated",
            "a b",
            "a.",
            "a ? b",
            "a && && b",
            "#",
            "[1, 2",
            "{1: }",
        ] {
            let err = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(!err.is_empty());
        }
        let err = parse("response.code >=").err().unwrap_or_default();
        assert!(err.starts_with("at 1:17: Syntax error"), "{err}");
    }

    #[test]
    fn hostile_expressions_are_refused_before_parsing() {
        let deep = [
            vec!["1"; 500].join(" + "),
            "(".repeat(300) + "1" + &")".repeat(300),
            "[".repeat(300) + &"]".repeat(300),
            "a".to_owned() + &".b".repeat(300),
            "!".repeat(300) + "true",
            "x".repeat(MAX_LEN + 1),
        ];
        for e in deep {
            assert!(parse(&e).is_err(), "{}…", &e[..20]);
        }
        // Right at the bound: parsed, and evaluated on a small stack.
        let at_bound = vec!["1"; MAX_OPERATORS + 1].join("+");
        let e = parse(&at_bound).expect("at the bound");
        let ok = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let ctx = cel::Context::default();
                e.program.execute(&ctx).is_ok()
            })
            .expect("thread")
            .join()
            .expect("no overflow");
        assert!(ok);
    }

    #[test]
    fn needs_are_what_the_expression_reads() {
        let e = parse("response.code >= 400 && request.headers['x-a'] == 'b'").expect("parses");
        let code = attribute("response", "code").expect("code");
        let headers = attribute("request", "headers").expect("headers");
        assert_eq!(e.needs, Needs((1 << code) | (1 << headers)));
        assert!(e.needs.any_of("request") && !e.needs.any_of("upstream"));
        let e = parse("request.nope == 1 || foo || [1].exists(x, x == 1) || int(1) == 1")
            .expect("parses");
        assert_eq!(e.unknown, vec!["request.nope".to_owned(), "foo".to_owned()]);
        // A root read whole needs all its attributes.
        let e = parse("size(request) > 0").expect("parses");
        assert!(
            ATTRIBUTES
                .iter()
                .enumerate()
                .all(|(i, a)| e.needs.has(i) == (a.root == "request"))
        );
    }

    #[test]
    fn docs_list_every_attribute() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/telemetry.md"
        ))
        .expect("docs/telemetry.md");
        for a in ATTRIBUTES {
            let name = format!("| `{}.{}` |", a.root, a.field);
            let row = doc
                .lines()
                .find(|l| l.starts_with(&name))
                .unwrap_or_else(|| panic!("docs/telemetry.md lacks {name}"));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let ty = a.ty.name().split('<').next().unwrap_or_default();
            assert_eq!(cells[2], ty, "{row}");
            let label_ok = matches!(cells[3], "yes" | "routed" | "standard");
            assert_eq!(label_ok, a.label == Label::Yes, "{row}");
        }
    }
}
