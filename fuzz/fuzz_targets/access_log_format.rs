//! `sluice_proxy::telemetry::format`: Envoy access-log format strings (meshConfig
//! `accessLogFormat`, Telemetry providers) parsed with `Format::parse` / `LogFormat::new`, and
//! rendered from a real `telemetry::Record` (request fields, headers, names all from the input)
//! and from a source whose values come straight from the input.
//!
//! Input: one flags byte (bit 0: JSON encoding), then UTF-8 text: the format, a NUL, then the
//! record's fields as `key=value` lines (see `record`).
//!
//! Invariants: never panics (`%OP:N%` truncation inside multi-byte characters, unterminated
//! operators, `START_TIME` patterns); a text line ends with `\n`; a JSON line is one JSON
//! object and `\n`; a format without `%` renders as itself.
#![no_main]

use std::borrow::Cow;
use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use http::header::{HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use prometheus_client::registry::Registry;
use sluice_proxy::telemetry::format::{Format, LogFormat, Operator, Source, Value};
use sluice_proxy::telemetry::{HttpFields, Kind, Record, Telemetry};

/// Yields the input's values in turn: a number as `Num`, `-` as `Missing`, the rest as `Str`.
struct Values<'a> {
    values: Vec<&'a str>,
    next: Cell<usize>,
}

impl Source for Values<'_> {
    fn value(&self, _op: &Operator) -> Value<'_> {
        if self.values.is_empty() {
            return Value::Missing;
        }
        let i = self.next.get();
        self.next.set(i.wrapping_add(1));
        let v = self.values[i % self.values.len()];
        match v {
            "-" => Value::Missing,
            _ => match v.parse::<u64>() {
                Ok(n) => Value::Num(n),
                Err(_) => Value::Str(Cow::Borrowed(v)),
            },
        }
    }
}

fn telemetry() -> Arc<Telemetry> {
    static TELEMETRY: OnceLock<Arc<Telemetry>> = OnceLock::new();
    TELEMETRY
        .get_or_init(|| Arc::new(Telemetry::new(&mut Registry::default())))
        .clone()
}

const FLAGS: &[&str] = &[
    "UH", "UF", "NR", "URX", "DC", "UAEX", "RL", "-", "DPE", "XX",
];

/// A record filled from `key=value` lines: method, path, authority, protocol (h1/h2/any),
/// sni, route, cluster, details, termination, transport, downstream, peer, code, attempts,
/// flag (an index), kind (tcp/conn), `req:<name>=…`, `resp:<name>=…`.
fn record(lines: &str) -> Record {
    let local = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 443));
    let remote = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 40000));
    let mut r = Record::new(telemetry(), None, Kind::Http, local, remote, None);
    r.disarm(); // never logged nor counted: the metrics registry must not grow with the input
    let mut http = HttpFields::default();
    for line in lines.lines() {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        match k {
            "method" => http.method = v.to_owned(),
            "path" => http.path = v.to_owned(),
            "authority" => http.authority = v.to_owned(),
            "protocol" => {
                http.protocol = match v {
                    "h1" => "HTTP/1.1",
                    "h2" => "HTTP/2",
                    _ => "",
                }
            }
            "sni" => r.sni = Some(v.to_owned()),
            "route" => r.route_name = Some(v.to_owned()),
            "cluster" => r.cluster = Some(Arc::from(v)),
            "details" => r.details = Some(Cow::Owned(v.to_owned())),
            "termination" => r.termination = Some(Cow::Owned(v.to_owned())),
            "transport" => r.transport_failure = Some(v.to_owned()),
            "downstream" => r.downstream_failure = Some(v.to_owned()),
            "peer" => r.peer_principal = Some(Arc::from(v)),
            "code" => r.response_code = v.parse().unwrap_or(0),
            "attempts" => r.attempts = v.parse().unwrap_or(0),
            "upstream" => r.upstream_host = v.parse().ok(),
            "flag" => r.add_flag(FLAGS[v.len() % FLAGS.len()]),
            "kind" if v == "tcp" => r.kind = Kind::Tcp,
            "kind" if v == "conn" => r.kind = Kind::Connection,
            _ => {
                let (headers, name) = if let Some(n) = k.strip_prefix("req:") {
                    (&mut http.request_headers, n)
                } else if let Some(n) = k.strip_prefix("resp:") {
                    (&mut http.response_headers, n)
                } else {
                    continue;
                };
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_bytes(v.as_bytes()),
                ) {
                    headers.append(n, v);
                }
            }
        }
    }
    if r.kind == Kind::Http {
        r.http = Some(Box::new(http));
    }
    r
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (format, fields) = text.split_once('\0').unwrap_or((text, ""));
    let json = flags & 1 == 1;

    let parsed = Format::parse(format);
    let values = Values {
        values: fields.lines().collect(),
        next: Cell::new(0),
    };
    let line = parsed.render_text(&values);
    if !format.contains('%') {
        assert_eq!(line, format, "a format without operators renders as itself");
    }

    let record = record(fields);
    let log = LogFormat::new(Some(format), json);
    let line = log.render(&record);
    assert!(line.ends_with('\n'), "a log line without its newline");
    if let LogFormat::Json(_) = log {
        match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(serde_json::Value::Object(_)) => {}
            other => panic!("JSON log line {line:?} reads {other:?}"),
        }
    }
    let _ = log.render(&values);
});
