//! Envoy access-log format strings: parsed once into literals and command operators, then
//! rendered per record as text or as a JSON object.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

/// Istio's default text format (`meshConfig.accessLogFormat` unset).
pub const ISTIO_TEXT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON keys (`accessLogEncoding: JSON`).
pub const ISTIO_JSON: &[(&str, &str)] = &[
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    StartTime(Option<String>),
    /// `REQ(main?alt)`: header names lower-cased; `:path` and friends are pseudo-headers.
    Req(String, Option<String>),
    Resp(String, Option<String>),
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    RequestedServerName,
    RouteName,
    UpstreamRequestAttemptCount,
    /// The verified peer's SPIFFE ID (mesh mTLS).
    DownstreamPeerUriSan,
    DownstreamTransportFailureReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    Op {
        op: Operator,
        max_len: Option<usize>,
    },
}

/// A value an operator yields for one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Str(Cow<'a, str>),
    Num(u64),
    Missing,
}

/// What a format reads from: implemented by the telemetry record.
pub trait Source {
    fn value(&self, op: &Operator) -> Value<'_>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFormat {
    Text(Format),
    Json(Vec<(String, Format)>),
}

impl LogFormat {
    /// The format of `snapshot.access_log`: `format` is a text format, or with `json` a JSON
    /// object of key → format (Istio's `accessLogFormat` under `accessLogEncoding: JSON`).
    pub fn new(format: Option<&str>, json: bool) -> LogFormat {
        if json {
            let keys: Vec<(String, Format)> = match format.and_then(|f| {
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(f).ok()
            }) {
                Some(map) => map
                    .into_iter()
                    .map(|(k, v)| {
                        let text = match v {
                            serde_json::Value::String(s) => s,
                            other => other.to_string(),
                        };
                        (k, Format::parse(&text))
                    })
                    .collect(),
                None => ISTIO_JSON
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), Format::parse(v)))
                    .collect(),
            };
            LogFormat::Json(keys)
        } else {
            let mut text = Format::parse(format.unwrap_or(ISTIO_TEXT));
            text.ensure_newline();
            LogFormat::Text(text)
        }
    }

    /// One line, with its trailing newline.
    pub fn render(&self, src: &dyn Source) -> String {
        match self {
            LogFormat::Text(f) => f.render_text(src),
            LogFormat::Json(keys) => {
                let mut obj = serde_json::Map::new();
                for (k, f) in keys {
                    obj.insert(k.clone(), f.render_json(src));
                }
                let mut line = serde_json::Value::Object(obj).to_string();
                line.push('\n');
                line
            }
        }
    }
}

impl Format {
    pub fn parse(s: &str) -> Format {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            literal.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix('%') {
                literal.push('%');
                rest = tail;
                continue;
            }
            match parse_operator(after) {
                Some((op, max_len, used)) => {
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Op { op, max_len });
                    rest = &after[used..];
                }
                None => {
                    // Not an operator we know: printed as written, up to its closing `%`.
                    match after.find('%') {
                        Some(end) => {
                            literal.push('%');
                            literal.push_str(&after[..=end]);
                            rest = &after[end + 1..];
                        }
                        None => {
                            literal.push('%');
                            rest = after;
                        }
                    }
                }
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Format { parts }
    }

    fn ensure_newline(&mut self) {
        match self.parts.last_mut() {
            Some(Part::Literal(l)) if l.ends_with('\n') => {}
            Some(Part::Literal(l)) => l.push('\n'),
            _ => self.parts.push(Part::Literal("\n".into())),
        }
    }

    pub fn render_text(&self, src: &dyn Source) -> String {
        let mut out = String::with_capacity(256);
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Op { op, max_len } => match src.value(op) {
                    Value::Str(s) => out.push_str(truncate(&s, *max_len)),
                    Value::Num(n) => out.push_str(&n.to_string()),
                    Value::Missing => out.push('-'),
                },
            }
        }
        out
    }

    fn render_json(&self, src: &dyn Source) -> serde_json::Value {
        if let [Part::Op { op, max_len }] = self.parts.as_slice() {
            return match src.value(op) {
                Value::Str(s) => serde_json::Value::String(truncate(&s, *max_len).to_owned()),
                Value::Num(n) => serde_json::Value::from(n),
                Value::Missing => serde_json::Value::Null,
            };
        }
        serde_json::Value::String(self.render_text(src))
    }
}

fn truncate(s: &str, max: Option<usize>) -> &str {
    match max {
        Some(n) if s.len() > n => {
            let mut end = n;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            &s[..end]
        }
        _ => s,
    }
}

/// Parses `NAME`, `NAME(arg)`, optionally `:N`, up to and including the closing `%`.
/// Returns the operator, its max length, and the bytes used.
fn parse_operator(s: &str) -> Option<(Operator, Option<usize>, usize)> {
    let name_len = s
        .bytes()
        .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        .count();
    if name_len == 0 {
        return None;
    }
    let name = &s[..name_len];
    let mut i = name_len;
    let mut arg = None;
    if s[i..].starts_with('(') {
        let close = s[i..].find(')')? + i;
        arg = Some(&s[i + 1..close]);
        i = close + 1;
    }
    let mut max_len = None;
    if s[i..].starts_with(':') {
        let digits = s[i + 1..].bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        max_len = s[i + 1..i + 1 + digits].parse().ok();
        i += 1 + digits;
    }
    if !s[i..].starts_with('%') {
        return None;
    }
    let op = operator(name, arg)?;
    Some((op, max_len, i + 1))
}

fn header_arg(arg: Option<&str>) -> Option<(String, Option<String>)> {
    let arg = arg?.trim();
    if arg.is_empty() {
        return None;
    }
    let (main, alt) = match arg.split_once('?') {
        Some((m, a)) => (m, Some(a.to_ascii_lowercase())),
        None => (arg, None),
    };
    Some((main.to_ascii_lowercase(), alt))
}

fn operator(name: &str, arg: Option<&str>) -> Option<Operator> {
    use Operator::*;
    let plain = |op: Operator| if arg.is_none() { Some(op) } else { None };
    match name {
        "START_TIME" => Some(StartTime(arg.map(str::to_owned))),
        "REQ" => header_arg(arg).map(|(m, a)| Req(m, a)),
        "RESP" => header_arg(arg).map(|(m, a)| Resp(m, a)),
        "PROTOCOL" => plain(Protocol),
        "RESPONSE_CODE" => plain(ResponseCode),
        "RESPONSE_FLAGS" => plain(ResponseFlags),
        "RESPONSE_CODE_DETAILS" => plain(ResponseCodeDetails),
        "CONNECTION_TERMINATION_DETAILS" => plain(ConnectionTerminationDetails),
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => plain(UpstreamTransportFailureReason),
        "BYTES_RECEIVED" => plain(BytesReceived),
        "BYTES_SENT" => plain(BytesSent),
        "DURATION" => plain(Duration),
        "UPSTREAM_HOST" => plain(UpstreamHost),
        "UPSTREAM_CLUSTER" => plain(UpstreamCluster),
        "UPSTREAM_LOCAL_ADDRESS" => plain(UpstreamLocalAddress),
        "DOWNSTREAM_LOCAL_ADDRESS" => plain(DownstreamLocalAddress),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => plain(DownstreamLocalAddressWithoutPort),
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
            plain(DownstreamRemoteAddress)
        }
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
        | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            plain(DownstreamRemoteAddressWithoutPort)
        }
        "REQUESTED_SERVER_NAME" => plain(RequestedServerName),
        "ROUTE_NAME" => plain(RouteName),
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => plain(UpstreamRequestAttemptCount),
        "DOWNSTREAM_PEER_URI_SAN" => plain(DownstreamPeerUriSan),
        "DOWNSTREAM_TRANSPORT_FAILURE_REASON" => plain(DownstreamTransportFailureReason),
        _ => None,
    }
}

/// Formats a time as Envoy's default `%START_TIME%` (`2024-05-01T12:00:00.123Z`), or with a
/// strftime-like `pattern` (`%Y %m %d %H %M %S %s %3f %z %%`).
pub fn format_time(t: SystemTime, pattern: Option<&str>) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let Some(pattern) = pattern else {
        return format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{millis:03}Z");
    };
    let mut out = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&format!("{y:04}")),
            Some('m') => out.push_str(&format!("{mo:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('s') => out.push_str(&secs.to_string()),
            Some('z') => out.push_str("+0000"),
            Some('3') if chars.peek() == Some(&'f') => {
                chars.next();
                out.push_str(&format!("{millis:03}"));
            }
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    struct Fake;
    impl Source for Fake {
        fn value(&self, op: &Operator) -> Value<'_> {
            match op {
                Operator::ResponseCode => Value::Num(200),
                Operator::Req(h, _) if h == ":method" => Value::Str("GET".into()),
                Operator::Req(h, Some(alt)) if h == "x-envoy-original-path" => {
                    assert_eq!(alt, ":path");
                    Value::Str("/long/path".into())
                }
                Operator::RequestedServerName => Value::Str("api.github.com".into()),
                _ => Value::Missing,
            }
        }
    }

    #[test]
    fn parses_operators_literals_and_unknowns() {
        let f = Format::parse(
            "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH):5% %BOGUS% 100%% %RESPONSE_CODE% %REQUESTED_SERVER_NAME% %UPSTREAM_HOST% %",
        );
        assert_eq!(
            f.render_text(&Fake),
            "GET /long %BOGUS% 100% 200 api.github.com - %"
        );
    }

    #[test]
    fn istio_default_text_parses_without_literal_operators() {
        let LogFormat::Text(f) = LogFormat::new(None, false) else {
            panic!("text")
        };
        let ops = f
            .parts
            .iter()
            .filter(|p| matches!(p, Part::Op { .. }))
            .count();
        assert_eq!(ops, 24);
        assert!(
            f.parts
                .iter()
                .all(|p| !matches!(p, Part::Literal(l) if l.contains('%'))),
            "{f:?}"
        );
        let line = f.render_text(&Fake);
        assert!(
            line.starts_with("[-] \"GET /long/path -\" 200 - "),
            "{line}"
        );
        assert!(line.ends_with("api.github.com -\n"), "{line}");
    }

    #[test]
    fn json_keeps_types() {
        let f = LogFormat::new(
            Some(
                r#"{"code":"%RESPONSE_CODE%","sni":"%REQUESTED_SERVER_NAME%","x":"a %RESPONSE_CODE%","none":"%ROUTE_NAME%"}"#,
            ),
            true,
        );
        let line = f.render(&Fake);
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["code"], 200);
        assert_eq!(v["sni"], "api.github.com");
        assert_eq!(v["x"], "a 200");
        assert!(v["none"].is_null());
        let default = LogFormat::new(None, true).render(&Fake);
        let v: serde_json::Value = serde_json::from_str(&default).expect("json");
        assert_eq!(v["method"], "GET");
    }

    #[test]
    fn formats_time() {
        let t = UNIX_EPOCH + Duration::from_millis(1_714_564_800_123);
        assert_eq!(format_time(t, None), "2024-05-01T12:00:00.123Z");
        assert_eq!(
            format_time(t, Some("%Y/%m/%d %s.%3f")),
            "2024/05/01 1714564800.123"
        );
    }

    #[test]
    fn fuzz_format_parse() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let alphabet = b"%()?:ABCDEQRSTU_0123 x\n";
        for _ in 0..5000 {
            let len = rng.random_range(0..40);
            let s: String = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
                .collect();
            let _ = Format::parse(&s).render_text(&Fake);
        }
    }
}
