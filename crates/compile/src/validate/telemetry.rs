//! Telemetry validation: Istio's `ValidateTelemetry` (`pkg/config/validation/validation.go`)
//! with its error texts, plus sluice's findings: what it does not produce (traces, metrics
//! through providers other than Prometheus), and CEL expressions that read attributes sluice
//! does not provide, or that a metric label may not take. Access-log providers are checked
//! when compiling, where meshConfig's `extensionProviders` are known.

use sluice_model::telemetry::{
    AccessLogging, Metrics, ProviderRef, TagOperation, Telemetry, Tracing,
};
use sluice_snapshot::cel::{self, ATTRIBUTES, Label};

use super::Report;
use super::authorization_policy::{check_annotations, check_selector_and_targets};

/// The metrics provider sluice implements: `prometheus` (the `/stats/prometheus` metrics).
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
                    match cel::parse(v) {
                        Err(e) => r.warning(
                            &format!("{tpath}.value"),
                            format!(
                                "tagOverrides.value is not a valid CEL expression ({e}); the \
                                 proxies cannot compute this tag"
                            ),
                        ),
                        Ok(expr) => {
                            check_attributes(
                                r,
                                &expr,
                                &format!("{tpath}.value"),
                                "the label is `unknown`",
                            );
                            let names: Vec<String> = ATTRIBUTES
                                .iter()
                                .enumerate()
                                .filter(|(i, a)| expr.needs.has(*i) && a.label == Label::No)
                                .map(|(_, a)| format!("{}.{}", a.root, a.field))
                                .collect();
                            if !names.is_empty() {
                                r.not_supported(
                                    &format!("{tpath}.value"),
                                    format!(
                                        "{} comes from the client or changes with every request: \
                                         sluice never makes it a label value (unbounded \
                                         cardinality), so the label is `unknown`",
                                        names.join(", ")
                                    ),
                                );
                            }
                        }
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
        if let Some(filter) = &l.filter {
            let fpath = format!("{path}.filter.expression");
            match cel::parse(&filter.expression) {
                Err(e) => r.error(&fpath, format!("must be a valid CEL expression, {e}")),
                Ok(expr) => check_attributes(r, &expr, &fpath, "no entry is logged"),
            }
        }
        check_providers(r, &l.providers, &path);
    }
}

/// An expression reading what sluice does not provide fails when evaluated.
fn check_attributes(
    r: &mut Report<'_, Telemetry>,
    expr: &cel::Expression,
    path: &str,
    consequence: &str,
) {
    if expr.unknown.is_empty() {
        return;
    }
    r.warning(
        path,
        format!(
            "{} is not an attribute sluice provides (docs/telemetry.md lists them): the \
             expression fails where it reads it, and {consequence}",
            expr.unknown.join(", ")
        ),
    );
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
                json!({"accessLogging": [{"filter": {"expression": "request.nope == 1 || foo"}}]}),
                Level::Warning,
                "request.nope, foo is not an attribute sluice provides",
            ),
            (
                json!({"metrics": [{"overrides": [{"tagOverrides": {"a": {"value": "request.path"}}}]}]}),
                Level::Warning,
                "request.path comes from the client",
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
    fn an_invalid_expression_is_located_at_its_line() {
        let yaml = "apiVersion: telemetry.istio.io/v1alpha1\nkind: Telemetry\nmetadata: {name: t, namespace: ns}\nspec:\n  accessLogging:\n  - providers: [{name: envoy}]\n    filter:\n      expression: \"response.code = 400\"\n";
        let loaded = sluice_model::load_str("t.yaml", yaml);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let d = validate_all(&loaded.resources);
        let e = d
            .iter()
            .find(|d| d.message.contains("must be a valid CEL expression"))
            .unwrap_or_else(|| panic!("{d:?}"));
        assert_eq!(e.level, Level::Error);
        let at = e.location.as_ref().expect("located");
        assert_eq!((&*at.file, at.line), ("t.yaml", 8));
        assert!(e.message.contains("at 1:15: Syntax error"), "{}", e.message);
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
