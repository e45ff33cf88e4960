//! Telemetry validation: Istio's `ValidateTelemetry` (`pkg/config/validation/validation.go`)
//! with its error texts, plus sluice's `not_supported` findings for what it does not produce
//! (traces) and providers it does not use.

use sluice_model::telemetry::{
    AccessLogging, Metrics, ProviderRef, TagOperation, Telemetry, Tracing,
};

use super::Report;
use super::authorization_policy::{check_annotations, check_selector_and_targets};

/// The providers sluice itself implements: `envoy` (access log lines written as MeshConfig's
/// `accessLogFile`/`accessLogFormat` say) and `prometheus` (the `/stats/prometheus` metrics).
const ACCESS_LOG_PROVIDER: &str = "envoy";
const METRICS_PROVIDER: &str = "prometheus";

pub(crate) fn validate(r: &mut Report<'_, Telemetry>) {
    let spec = &r.resource().spec;
    check_annotations(r);
    check_selector_and_targets(
        r,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    check_metrics(r, &spec.metrics);
    check_tracing(r, &spec.tracing);
    check_access_logging(r, &spec.access_logging);
}

/// Istio's `validateTelemetryProviders`: every provider is named.
fn check_providers(r: &mut Report<'_, Telemetry>, providers: &[ProviderRef], path: &str) {
    if let Some(k) = providers.iter().position(|p| p.name.is_empty()) {
        r.error(
            &format!("{path}.providers[{k}].name"),
            "providers.name may not be empty",
        );
    }
}

/// Providers sluice does not implement for this kind of telemetry, one finding each.
fn report_unused_providers(
    r: &mut Report<'_, Telemetry>,
    providers: &[ProviderRef],
    path: &str,
    supported: &str,
    what: &str,
) {
    for (k, p) in providers.iter().enumerate() {
        if !p.name.is_empty() && p.name != supported {
            r.not_supported(
                &format!("{path}.providers[{k}]"),
                format!(
                    "sluice produces {what} only through the provider {supported:?}; provider {:?} \
                     is not used by sluice",
                    p.name
                ),
            );
        }
    }
}

fn check_metrics(r: &mut Report<'_, Telemetry>, metrics: &[Metrics]) {
    for (i, m) in metrics.iter().enumerate() {
        let path = format!("spec.metrics[{i}]");
        check_providers(r, &m.providers, &path);
        report_unused_providers(r, &m.providers, &path, METRICS_PROVIDER, "metrics");
        if m.reporting_interval.is_some() {
            r.not_supported(
                &format!("{path}.reportingInterval"),
                "sluice's metrics are scraped from /stats/prometheus when the scraper asks; \
                 reportingInterval (for providers that push) is not used",
            );
        }
        for (j, o) in m.overrides.iter().enumerate() {
            let opath = format!("{path}.overrides[{j}]");
            for (tag, to) in &o.tag_overrides {
                let tpath = format!("{opath}.tagOverrides.{tag}");
                if tag.is_empty() {
                    r.warning(&tpath, "tagOverrides.name may not be empty");
                }
                let has_value = to.value.as_deref().is_some_and(|v| !v.is_empty());
                match to.operation {
                    TagOperation::Upsert if !has_value => r.error(
                        &tpath,
                        "tagOverrides.value must be set when operation is UPSERT",
                    ),
                    TagOperation::Remove if has_value => r.error(
                        &format!("{tpath}.value"),
                        "tagOverrides.value may only be set when operation is UPSERT",
                    ),
                    _ => {}
                }
                if let Some(v) = to.value.as_deref().filter(|v| !v.is_empty()) {
                    // Istio's webhook does not parse this one; the proxies reject it later.
                    if let Err(e) = cel::check_syntax(v) {
                        r.warning(
                            &format!("{tpath}.value"),
                            format!(
                                "tagOverrides.value is not a valid CEL expression ({e}); the \
                                 proxies cannot compute this tag"
                            ),
                        );
                    }
                }
            }
            if let Some(sel) = &o.match_ {
                if sel.custom_metric.as_deref() == Some("") {
                    r.error(
                        &format!("{opath}.match.customMetric"),
                        "customMetric may not be empty",
                    );
                }
                if sel.metric.is_some() && sel.custom_metric.is_some() {
                    r.error(
                        &format!("{opath}.match"),
                        "only one of metric or customMetric may be set",
                    );
                }
            }
        }
    }
}

fn check_tracing(r: &mut Report<'_, Telemetry>, tracing: &[Tracing]) {
    if tracing.len() > 1 {
        r.warning(
            "spec.tracing",
            "multiple tracing is not currently supported",
        );
    }
    for (i, t) in tracing.iter().enumerate() {
        let path = format!("spec.tracing[{i}]");
        if t.providers.len() > 1 {
            r.warning(
                &format!("{path}.providers"),
                "multiple providers is not currently supported",
            );
        }
        check_providers(r, &t.providers, &path);
        if let Some(p) = t.random_sampling_percentage
            && !(0.0..=100.0).contains(&p)
        {
            r.error(
                &format!("{path}.randomSamplingPercentage"),
                "randomSamplingPercentage must be in range [0.0, 100.0]",
            );
        }
        for (name, tag) in &t.custom_tags {
            let tpath = format!("{path}.customTags.{name}");
            if name.is_empty() {
                r.error(&tpath, "tag name may not be empty");
            }
            if tag.literal.as_ref().is_some_and(|l| l.value.is_empty()) {
                r.error(&tpath, "literal tag value may not be empty");
            }
            if tag.header.as_ref().is_some_and(|h| h.name.is_empty()) {
                r.error(&tpath, "header tag name may not be empty");
            }
            if tag.environment.as_ref().is_some_and(|e| e.name.is_empty()) {
                r.error(&tpath, "environment tag name may not be empty");
            }
            let kinds = usize::from(tag.literal.is_some())
                + usize::from(tag.environment.is_some())
                + usize::from(tag.header.is_some())
                + usize::from(tag.formatter.is_some());
            if kinds > 1 {
                r.error(
                    &tpath,
                    "only one of literal, environment, header or formatter may be set",
                );
            }
        }
        r.not_supported(
            &path,
            "sluice does not produce traces (no tracing provider is implemented); this tracing \
             configuration is ignored",
        );
    }
}

fn check_access_logging(r: &mut Report<'_, Telemetry>, logging: &[AccessLogging]) {
    for (i, l) in logging.iter().enumerate() {
        let path = format!("spec.accessLogging[{i}]");
        if let Some(filter) = &l.filter
            && let Err(e) = cel::check_syntax(&filter.expression)
        {
            r.error(
                &format!("{path}.filter.expression"),
                format!("must be a valid CEL expression, {e}"),
            );
        }
        check_providers(r, &l.providers, &path);
        report_unused_providers(r, &l.providers, &path, ACCESS_LOG_PROVIDER, "access logs");
    }
}

/// A syntax check of CEL expressions (the Common Expression Language of `filter.expression`
/// and `tagOverrides.value`), following the grammar of cel-spec's `langdef.md`. It answers
/// what Istio's `cel.Env.Parse` answers: is this text an expression; it does not type-check.
pub(crate) mod cel {
    #[derive(Debug, Clone, PartialEq)]
    enum Tok {
        Ident(String),
        Int,
        Str,
        Punct(&'static str),
    }

    const PUNCTS: [&str; 25] = [
        "&&", "||", "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "!", "?", ":", ".",
        ",", "(", ")", "[", "]", "{", "}", "=",
    ];

    const RESERVED: [&str; 15] = [
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
    ];

    fn lex(src: &str) -> Result<Vec<(Tok, usize)>, String> {
        let b = src.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if c.is_ascii_whitespace() {
                i += 1;
            } else if c == b'/' && b.get(i + 1) == Some(&b'/') {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            } else if c.is_ascii_alphabetic() || c == b'_' {
                let start = i;
                // string prefixes: r"..", b"..", rb"..", br".."
                let mut j = i;
                while j < b.len() && j - i < 2 && matches!(b[j], b'r' | b'R' | b'b' | b'B') {
                    j += 1;
                }
                if j > i && j < b.len() && matches!(b[j], b'"' | b'\'') {
                    let raw = src[i..j].to_ascii_lowercase().contains('r');
                    i = lex_string(b, j, raw)?;
                    out.push((Tok::Str, start));
                    continue;
                }
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push((Tok::Ident(src[start..i].to_owned()), start));
            } else if c.is_ascii_digit()
                || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
            {
                let start = i;
                if c == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X')) {
                    i += 2;
                    let digits = i;
                    while i < b.len() && b[i].is_ascii_hexdigit() {
                        i += 1;
                    }
                    if i == digits {
                        return Err(format!("malformed hexadecimal number at position {start}"));
                    }
                } else {
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                        i += 1;
                        while i < b.len() && b[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                    if matches!(b.get(i), Some(b'e' | b'E')) {
                        i += 1;
                        if matches!(b.get(i), Some(b'+' | b'-')) {
                            i += 1;
                        }
                        let digits = i;
                        while i < b.len() && b[i].is_ascii_digit() {
                            i += 1;
                        }
                        if i == digits {
                            return Err(format!("malformed exponent at position {start}"));
                        }
                    }
                }
                if matches!(b.get(i), Some(b'u' | b'U')) {
                    i += 1;
                }
                out.push((Tok::Int, start));
            } else if c == b'"' || c == b'\'' {
                let start = i;
                i = lex_string(b, i, false)?;
                out.push((Tok::Str, start));
            } else if let Some(p) = PUNCTS.iter().find(|p| src[i..].starts_with(**p)) {
                if *p == "=" {
                    return Err(format!(
                        "unexpected '=' at position {i} (comparison is written '==')"
                    ));
                }
                out.push((Tok::Punct(p), i));
                i += p.len();
            } else {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(format!("unexpected character {ch:?} at position {i}"));
            }
        }
        Ok(out)
    }

    /// Skips a quoted string starting at `start` (the quote); returns the index after it.
    fn lex_string(b: &[u8], start: usize, raw: bool) -> Result<usize, String> {
        let q = b[start];
        let triple = b.get(start + 1) == Some(&q) && b.get(start + 2) == Some(&q);
        let mut i = start + if triple { 3 } else { 1 };
        while i < b.len() {
            let c = b[i];
            if c == b'\\' && !raw {
                i += 2;
                continue;
            }
            if triple {
                if c == q && b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q) {
                    return Ok(i + 3);
                }
            } else if c == q {
                return Ok(i + 1);
            } else if c == b'\n' {
                break;
            }
            i += 1;
        }
        Err(format!("unterminated string starting at position {start}"))
    }

    struct Parser {
        toks: Vec<(Tok, usize)>,
        pos: usize,
        end: usize,
        depth: usize,
    }

    const MAX_DEPTH: usize = 100;

    impl Parser {
        fn peek(&self) -> Option<&Tok> {
            self.toks.get(self.pos).map(|(t, _)| t)
        }

        fn at(&self) -> usize {
            self.toks.get(self.pos).map_or(self.end, |(_, p)| *p)
        }

        fn eat(&mut self, p: &str) -> bool {
            if matches!(self.peek(), Some(Tok::Punct(q)) if *q == p) {
                self.pos += 1;
                true
            } else {
                false
            }
        }

        fn expect(&mut self, p: &str) -> Result<(), String> {
            if self.eat(p) {
                Ok(())
            } else {
                Err(self.unexpected(&format!("expected '{p}'")))
            }
        }

        fn unexpected(&self, what: &str) -> String {
            match self.peek() {
                None => format!("{what} at end of input"),
                Some(t) => {
                    let shown = match t {
                        Tok::Ident(s) => s.clone(),
                        Tok::Punct(p) => (*p).to_owned(),
                        Tok::Int => "number".to_owned(),
                        Tok::Str => "string".to_owned(),
                    };
                    format!("{what}, found '{shown}' at position {}", self.at())
                }
            }
        }

        fn expr(&mut self) -> Result<(), String> {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err("expression nested too deeply".to_owned());
            }
            self.binary(0)?;
            if self.eat("?") {
                self.binary(0)?;
                self.expect(":")?;
                self.expr()?;
            }
            self.depth -= 1;
            Ok(())
        }

        /// Binary operators by precedence level: `||`, `&&`, relations, additive,
        /// multiplicative.
        fn binary(&mut self, level: usize) -> Result<(), String> {
            const LEVELS: [&[&str]; 5] = [
                &["||"],
                &["&&"],
                &["==", "!=", "<", "<=", ">", ">="],
                &["+", "-"],
                &["*", "/", "%"],
            ];
            let Some(ops) = LEVELS.get(level) else {
                return self.unary();
            };
            self.binary(level + 1)?;
            loop {
                let is_op = match self.peek() {
                    Some(Tok::Punct(p)) => ops.contains(p),
                    Some(Tok::Ident(s)) => level == 2 && s == "in",
                    _ => false,
                };
                if !is_op {
                    return Ok(());
                }
                self.pos += 1;
                self.binary(level + 1)?;
            }
        }

        fn unary(&mut self) -> Result<(), String> {
            while self.eat("!") || self.eat("-") {}
            self.member()
        }

        fn member(&mut self) -> Result<(), String> {
            self.primary()?;
            loop {
                if self.eat(".") {
                    self.ident()?;
                    if self.eat("(") {
                        self.list(")")?;
                    }
                } else if self.eat("[") {
                    self.expr()?;
                    self.expect("]")?;
                } else if matches!(self.peek(), Some(Tok::Punct("{")))
                    && self
                        .toks
                        .get(self.pos.wrapping_sub(1))
                        .is_some_and(|(t, _)| matches!(t, Tok::Ident(_)))
                {
                    // message construction: `Type{field: value}`
                    self.pos += 1;
                    self.fields()?;
                } else {
                    return Ok(());
                }
            }
        }

        fn ident(&mut self) -> Result<(), String> {
            match self.peek() {
                Some(Tok::Ident(s)) if !RESERVED.contains(&s.as_str()) => {
                    self.pos += 1;
                    Ok(())
                }
                _ => Err(self.unexpected("expected an identifier")),
            }
        }

        fn primary(&mut self) -> Result<(), String> {
            match self.peek().cloned() {
                Some(Tok::Int | Tok::Str) => {
                    self.pos += 1;
                    Ok(())
                }
                Some(Tok::Ident(s)) => {
                    if RESERVED.contains(&s.as_str()) {
                        return Err(self.unexpected("reserved word"));
                    }
                    self.pos += 1;
                    if self.eat("(") {
                        self.list(")")?;
                    }
                    Ok(())
                }
                Some(Tok::Punct(".")) => {
                    self.pos += 1;
                    self.ident()
                }
                Some(Tok::Punct("(")) => {
                    self.pos += 1;
                    self.expr()?;
                    self.expect(")")
                }
                Some(Tok::Punct("[")) => {
                    self.pos += 1;
                    self.list("]")
                }
                Some(Tok::Punct("{")) => {
                    self.pos += 1;
                    self.map()
                }
                _ => Err(self.unexpected("expected an expression")),
            }
        }

        /// `expr, expr, …` then `close` (a trailing comma is allowed).
        fn list(&mut self, close: &str) -> Result<(), String> {
            if self.eat(close) {
                return Ok(());
            }
            loop {
                self.expr()?;
                if self.eat(close) {
                    return Ok(());
                }
                self.expect(",")?;
                if self.eat(close) {
                    return Ok(());
                }
            }
        }

        fn map(&mut self) -> Result<(), String> {
            if self.eat("}") {
                return Ok(());
            }
            loop {
                self.expr()?;
                self.expect(":")?;
                self.expr()?;
                if self.eat("}") {
                    return Ok(());
                }
                self.expect(",")?;
                if self.eat("}") {
                    return Ok(());
                }
            }
        }

        fn fields(&mut self) -> Result<(), String> {
            if self.eat("}") {
                return Ok(());
            }
            loop {
                self.ident()?;
                self.expect(":")?;
                self.expr()?;
                if self.eat("}") {
                    return Ok(());
                }
                self.expect(",")?;
                if self.eat("}") {
                    return Ok(());
                }
            }
        }
    }

    /// `Ok` when `src` is a syntactically valid CEL expression.
    pub(crate) fn check_syntax(src: &str) -> Result<(), String> {
        let toks = lex(src)?;
        let mut p = Parser {
            toks,
            pos: 0,
            end: src.len(),
            depth: 0,
        };
        p.expr()?;
        if p.pos < p.toks.len() {
            return Err(p.unexpected("unexpected input after the expression"));
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::check_syntax;

        #[test]
        fn accepts_cel() {
            for ok in [
                "true",
                "response.code >= 400",
                "request.host",
                "response.code >= 400 && request.url_path.startsWith('/api')",
                "has(request.headers['x-id']) ? 'a' : \"b\"",
                "connection.mtls || !(source.address in ['1.2.3.4', '5.6.7.8'])",
                "size(request.headers) > 2u && 1.5e3 > 0.5 && -1 < 0x1F",
                "{'a': 1, 'b': [1, 2,]}['a'] == 1",
                "r'raw\\d' + b\"bytes\" + '''multi\nline'''",
                "google.protobuf.Duration{seconds: 1} > duration('0s')",
                "request.headers['user-agent'].matches('^curl/.*') // comment",
                ".request.host",
            ] {
                assert_eq!(check_syntax(ok), Ok(()), "{ok}");
            }
        }

        #[test]
        fn rejects_what_cel_rejects() {
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
                "if a",
                "a && && b",
                "#",
                "[1, 2",
                "{1: }",
            ] {
                assert!(check_syntax(bad).is_err(), "{bad:?} should be rejected");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_model::{Diagnostic, Level};

    use crate::validate::validate as validate_all;

    fn diags(spec: serde_json::Value) -> Vec<Diagnostic> {
        let loaded = sluice_model::load_value(
            "t.yaml",
            json!({"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
                   "metadata": {"name": "t", "namespace": "ns"}, "spec": spec}),
        );
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        validate_all(&loaded.resources)
    }

    fn has(d: &[Diagnostic], level: Level, text: &str) -> bool {
        d.iter()
            .any(|d| d.level == level && d.message.contains(text))
    }

    #[test]
    fn rules() {
        let cases: &[(serde_json::Value, Level, &str)] = &[
            (
                json!({"accessLogging": [{"filter": {"expression": "response.code >="}}]}),
                Level::Error,
                "must be a valid CEL expression",
            ),
            (
                json!({"metrics": [{"providers": [{"name": ""}]}]}),
                Level::Error,
                "providers.name may not be empty",
            ),
            (
                json!({"metrics": [{"overrides": [{"match": {"customMetric": ""}}]}]}),
                Level::Error,
                "customMetric may not be empty",
            ),
            (
                json!({"metrics": [{"overrides": [{"tagOverrides": {"a": {"operation": "REMOVE", "value": "x"}}}]}]}),
                Level::Error,
                "may only be set when operation is UPSERT",
            ),
            (
                json!({"metrics": [{"overrides": [{"tagOverrides": {"a": {"value": "request.host +"}}}]}]}),
                Level::Warning,
                "tagOverrides.value is not a valid CEL expression",
            ),
            (
                json!({"tracing": [{"customTags": {"a": {"literal": {"value": ""}}}}]}),
                Level::Error,
                "literal tag value may not be empty",
            ),
            (
                json!({"tracing": [{"customTags": {"a": {"header": {"name": ""}}}}]}),
                Level::Error,
                "header tag name may not be empty",
            ),
            (
                json!({"tracing": [{"randomSamplingPercentage": -1}]}),
                Level::Error,
                "randomSamplingPercentage",
            ),
            (
                json!({"tracing": [{"providers": [{"name": "zipkin"}]}]}),
                Level::Warning,
                "does not produce traces",
            ),
            (
                json!({"accessLogging": [{"providers": [{"name": "otel"}]}]}),
                Level::Warning,
                "provider \"otel\" is not used by sluice",
            ),
            (
                json!({"metrics": [{"providers": [{"name": "stackdriver"}], "reportingInterval": "10s"}]}),
                Level::Warning,
                "reportingInterval",
            ),
            (json!({"selector": {}}), Level::Warning, "without labels"),
        ];
        for (spec, level, text) in cases {
            let d = diags(spec.clone());
            assert!(
                has(&d, *level, text),
                "{spec}: want {level} {text:?}, got {d:?}"
            );
        }
    }

    #[test]
    fn guide_telemetry_is_clean() {
        let d = diags(json!({
            "selector": {"matchLabels": {"istio": "egressgateway"}},
            "accessLogging": [{"providers": [{"name": "envoy"}], "filter": {"expression": "true"}}],
            "metrics": [{"providers": [{"name": "prometheus"}], "overrides": [
                {"match": {"metric": "REQUEST_COUNT"},
                 "tagOverrides": {"destination_service": {"value": "request.host"}}}
            ]}]
        }));
        assert!(d.is_empty(), "{d:?}");
    }
}
