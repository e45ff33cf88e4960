use std::collections::BTreeMap;

use sluice_model::Diagnostic;
use sluice_snapshot::AccessLog;
use sluice_snapshot::telemetry::{Metric, MetricOverride, Metrics, Tag, Telemetry};

use crate::lower::testing::{has, load};
use crate::lower::{CompileOptions, compile};

fn telemetry(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

fn mesh(spec: &str) -> String {
    format!(
        "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {{name: m, namespace: istio-system}}\nspec: {{meshConfig: {spec}}}\n"
    )
}

/// A sidecar of namespace `app` with labels `app=web`.
fn web() -> CompileOptions {
    let mut o = CompileOptions::sidecar("app");
    o.labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
    o
}

/// The snapshot's telemetry, and the findings (but the gateway's "no Gateway selects this
/// proxy").
fn run(yaml: &str, opts: &CompileOptions) -> (Telemetry, Vec<Diagnostic>) {
    let (s, mut d) = compile(&load(yaml), opts);
    d.retain(|d| d.code != "SLC0206");
    (s.telemetry, d)
}

fn stdout(filter: Option<&str>) -> AccessLog {
    AccessLog {
        path: Some("/dev/stdout".into()),
        format: None,
        json: false,
        filter: filter.map(str::to_owned),
    }
}

fn logs(yaml: &str, opts: &CompileOptions) -> Option<Vec<AccessLog>> {
    run(yaml, opts).0.access_logs
}

const GUIDE: &str = "{selector: {matchLabels: {istio: egressgateway}}, accessLogging: [{providers: [{name: envoy}], filter: {expression: 'true'}}], metrics: [{providers: [{name: prometheus}], overrides: [{match: {metric: REQUEST_COUNT}, tagOverrides: {destination_service: {value: request.host}}}, {match: {metric: REQUEST_DURATION}, tagOverrides: {destination_service: {value: request.host}}}]}]}";

#[test]
fn the_guide_telemetry_selects_the_egress_gateway() {
    let yaml = telemetry("egress-telemetry", "istio-system", GUIDE);
    let (t, d) = run(&yaml, &CompileOptions::gateway());
    assert_eq!(t.access_logs, Some(vec![stdout(Some("true"))]));
    let tag = MetricOverride {
        disabled: false,
        tags: BTreeMap::from([(
            "destination_service".to_owned(),
            Tag::Value("request.host".into()),
        )]),
    };
    assert_eq!(
        t.metrics,
        Metrics {
            disabled: false,
            overrides: BTreeMap::from([
                (Metric::RequestCount, tag.clone()),
                (Metric::RequestDuration, tag),
            ]),
        }
    );
    assert!(d.is_empty(), "{d:#?}");
    // Another workload of istio-system is not selected; one in another namespace neither
    // (a selector selects in its own namespace only, even the root namespace's).
    let mut other = CompileOptions::gateway();
    other.labels = BTreeMap::from([("istio".to_owned(), "ingressgateway".to_owned())]);
    assert_eq!(run(&yaml, &other).0, Telemetry::default());
    let mut elsewhere = web();
    elsewhere.labels = CompileOptions::gateway().labels;
    assert_eq!(run(&yaml, &elsewhere).0, Telemetry::default());
}

#[test]
fn without_telemetry_meshconfig_logging_applies() {
    let (s, _) = compile(
        &load(&mesh("{accessLogFile: /var/log/a.log}")),
        &CompileOptions::gateway(),
    );
    assert_eq!(s.telemetry, Telemetry::default());
    assert_eq!(s.access_log.path.as_deref(), Some("/var/log/a.log"));
    // meshConfig defaultProviders.accessLogging is Telemetry API configuration too.
    let yaml = mesh("{defaultProviders: {accessLogging: [envoy]}}");
    assert_eq!(logs(&yaml, &web()), Some(vec![stdout(None)]));
}

#[test]
fn levels_mesh_namespace_workload() {
    let root = telemetry(
        "mesh-default",
        "istio-system",
        "{accessLogging: [{providers: [{name: envoy}], filter: {expression: 'response.code >= 500'}}]}",
    );
    let ns = telemetry(
        "ns",
        "app",
        "{accessLogging: [{providers: [{name: envoy}], filter: {expression: 'response.code >= 400'}}]}",
    );
    let workload = telemetry(
        "web",
        "app",
        "{selector: {matchLabels: {app: web}}, accessLogging: [{providers: [{name: envoy}], filter: {expression: 'response.code == 404'}}]}",
    );
    let other = telemetry(
        "other",
        "app",
        "{selector: {matchLabels: {app: other}}, accessLogging: [{disabled: true}]}",
    );
    let cases: &[(Vec<&String>, Option<&str>)] = &[
        (vec![&root], Some("response.code >= 500")),
        (vec![&root, &ns], Some("response.code >= 400")),
        (vec![&root, &ns, &workload], Some("response.code == 404")),
        (vec![&ns, &workload], Some("response.code == 404")),
        (vec![&root, &ns, &other], Some("response.code >= 400")),
    ];
    for (files, want) in cases {
        let yaml: String = files.iter().map(|f| f.as_str()).collect();
        assert_eq!(logs(&yaml, &web()), Some(vec![stdout(*want)]), "{files:?}");
    }
    // A namespace-wide Telemetry of another namespace does not apply.
    assert_eq!(logs(&ns, &CompileOptions::sidecar("elsewhere")), None);
}

#[test]
fn disabled_turns_logging_off_even_with_meshconfig_logging() {
    let yaml = format!(
        "{}{}{}",
        mesh("{accessLogFile: /dev/stdout}"),
        telemetry(
            "ns",
            "app",
            "{accessLogging: [{providers: [{name: envoy}]}]}"
        ),
        telemetry(
            "web",
            "app",
            "{selector: {matchLabels: {app: web}}, accessLogging: [{disabled: true}]}"
        ),
    );
    assert_eq!(logs(&yaml, &web()), Some(vec![]));
    // Disabled for the server side only: the client side (sluice's) still logs.
    let yaml = telemetry(
        "ns",
        "app",
        "{accessLogging: [{providers: [{name: envoy}]}, {match: {mode: SERVER}, disabled: true}]}",
    );
    assert_eq!(logs(&yaml, &web()), Some(vec![stdout(None)]));
    // Enabled for the server side only: nothing for sluice.
    let yaml = telemetry(
        "ns",
        "app",
        "{accessLogging: [{match: {mode: SERVER}, providers: [{name: envoy}]}]}",
    );
    assert_eq!(logs(&yaml, &web()), Some(vec![]));
}

#[test]
fn ambiguous_and_unsupported_selection_is_reported() {
    let yaml = format!(
        "{}{}{}",
        telemetry(
            "b",
            "app",
            "{accessLogging: [{providers: [{name: envoy}], filter: {expression: 'false'}}]}"
        ),
        telemetry(
            "a",
            "app",
            "{accessLogging: [{providers: [{name: envoy}], filter: {expression: 'true'}}]}"
        ),
        telemetry(
            "gw",
            "app",
            "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: egress}], accessLogging: [{disabled: true}]}"
        ),
    );
    let (t, d) = run(&yaml, &web());
    // Same creation time (none): the first by name applies.
    assert_eq!(t.access_logs, Some(vec![stdout(Some("true"))]));
    assert!(
        has(
            &d,
            "SLC0201",
            "another Telemetry without selector in the namespace applies first (app/a"
        ),
        "{d:#?}"
    );
    assert!(
        has(&d, "SLC0006", "targetRef(s) are not supported"),
        "{d:#?}"
    );
    assert!(
        !d.iter().any(|d| d.message.contains("not lowered")),
        "{d:#?}"
    );
}

#[test]
fn extension_providers_and_their_formats() {
    let yaml = format!(
        "{}{}",
        mesh(
            "{extensionProviders: [{name: file, envoyFileAccessLog: {path: /var/log/egress.log, logFormat: {text: '%RESPONSE_CODE%'}}}, {name: json, envoyFileAccessLog: {logFormat: {labels: {code: '%RESPONSE_CODE%'}}}}, {name: otel, envoyOtelAls: {service: x, port: 4317}}]}"
        ),
        telemetry(
            "ns",
            "app",
            "{accessLogging: [{providers: [{name: file}, {name: json}, {name: otel}, {name: nowhere}]}]}"
        ),
    );
    let (t, d) = run(&yaml, &web());
    assert_eq!(
        t.access_logs,
        Some(vec![
            AccessLog {
                path: Some("/var/log/egress.log".into()),
                format: Some("%RESPONSE_CODE%".into()),
                json: false,
                filter: None,
            },
            AccessLog {
                path: Some("/dev/stdout".into()),
                format: Some(r#"{"code":"%RESPONSE_CODE%"}"#.into()),
                json: true,
                filter: None,
            },
        ])
    );
    assert!(
        has(&d, "SLC0006", "\"otel\" is of kind envoyOtelAls"),
        "{d:#?}"
    );
    assert!(
        has(
            &d,
            "SLC0006",
            "no meshConfig extensionProvider is named \"nowhere\""
        ),
        "{d:#?}"
    );
}

#[test]
fn a_filter_without_providers_is_not_applied_as_in_istio() {
    let yaml = format!(
        "{}{}",
        mesh("{defaultProviders: {accessLogging: [envoy]}}"),
        telemetry(
            "ns",
            "app",
            "{accessLogging: [{filter: {expression: 'response.code >= 400'}}]}"
        ),
    );
    let (t, d) = run(&yaml, &web());
    assert_eq!(t.access_logs, Some(vec![stdout(None)]));
    assert!(has(&d, "SLC0201", "the filter is not applied"), "{d:#?}");
}

#[test]
fn an_invalid_filter_logs_nothing() {
    let yaml = telemetry(
        "ns",
        "app",
        "{accessLogging: [{providers: [{name: envoy}], filter: {expression: 'response.code >='}}]}",
    );
    let (t, d) = run(&yaml, &web());
    assert_eq!(t.access_logs, Some(vec![stdout(Some("false"))]));
    assert!(has(&d, "SLC0201", "not a valid CEL expression"), "{d:#?}");
}

fn metrics(yaml: &str) -> (Metrics, Vec<Diagnostic>) {
    let (t, d) = run(yaml, &web());
    (t.metrics, d)
}

#[test]
fn metric_overrides_merge_mesh_namespace_workload() {
    let root = telemetry(
        "mesh",
        "istio-system",
        "{metrics: [{providers: [{name: prometheus}], overrides: [{tagOverrides: {request_protocol: {operation: REMOVE}, team: {value: \"'egress'\"}}}]}]}",
    );
    let ns = telemetry(
        "ns",
        "app",
        "{metrics: [{overrides: [{match: {metric: REQUEST_COUNT}, tagOverrides: {team: {value: \"'payments'\"}}}, {match: {metric: TCP_SENT_BYTES}, disabled: true}, {match: {metric: REQUEST_SIZE, mode: SERVER}, disabled: true}]}]}",
    );
    let workload = telemetry(
        "web",
        "app",
        "{selector: {matchLabels: {app: web}}, metrics: [{overrides: [{match: {metric: TCP_SENT_BYTES}, disabled: false}, {match: {metric: REQUEST_COUNT}, tagOverrides: {request_protocol: {value: request.protocol}}}]}]}",
    );
    let (m, d) = metrics(&format!("{root}{ns}{workload}"));
    assert!(d.is_empty(), "{d:#?}");
    assert!(!m.disabled);
    let count = &m.overrides[&Metric::RequestCount];
    assert_eq!(
        count.tags,
        BTreeMap::from([
            (
                "request_protocol".to_owned(),
                Tag::Value("request.protocol".into())
            ),
            ("team".to_owned(), Tag::Value("'payments'".into())),
        ])
    );
    let size = &m.overrides[&Metric::RequestSize];
    assert!(!size.disabled, "a SERVER override does not apply to sluice");
    assert_eq!(size.tags["request_protocol"], Tag::Remove);
    assert!(!m.overrides[&Metric::TcpSentBytes].disabled);
    // Without the workload level, TCP_SENT_BYTES stays disabled.
    let (m, _) = metrics(&format!("{root}{ns}"));
    assert!(m.overrides[&Metric::TcpSentBytes].disabled);
}

#[test]
fn all_metrics_disabled_and_providers_out_of_scope() {
    let off = telemetry(
        "mesh",
        "istio-system",
        "{metrics: [{providers: [{name: prometheus}], overrides: [{match: {metric: ALL_METRICS}, disabled: true}]}]}",
    );
    assert!(metrics(&off).0.disabled);
    // A namespace override after it enables the provider again.
    let on = telemetry(
        "ns",
        "app",
        "{metrics: [{overrides: [{match: {metric: REQUEST_COUNT}, disabled: false}]}]}",
    );
    assert!(!metrics(&format!("{off}{on}")).0.disabled);
    // Only another provider in scope: Istio configures no Prometheus stats.
    let other = telemetry(
        "ns",
        "app",
        "{metrics: [{providers: [{name: stackdriver}]}]}",
    );
    assert!(metrics(&other).0.disabled);
    // No default metrics provider and no Telemetry: none either.
    assert!(
        metrics(&mesh("{defaultProviders: {metrics: []}}"))
            .0
            .disabled
    );
    assert!(!metrics("").0.disabled);
}

#[test]
fn unsupported_metric_overrides_are_reported() {
    let yaml = telemetry(
        "ns",
        "app",
        "{metrics: [{overrides: [{match: {customMetric: my_metric}, disabled: true}, {match: {metric: GRPC_REQUEST_MESSAGES}, disabled: true}, {tagOverrides: {'bad-name': {value: 'true'}, broken: {value: 'request.host +'}}}]}]}",
    );
    let (m, d) = metrics(&yaml);
    assert!(has(&d, "SLC0006", "customMetric \"my_metric\""), "{d:#?}");
    assert!(has(&d, "SLC0006", "istio_request_messages_total"), "{d:#?}");
    assert!(
        has(&d, "SLC0201", "\"bad-name\" is not a Prometheus label name"),
        "{d:#?}"
    );
    assert!(has(&d, "SLC0201", "the label is `unknown`"), "{d:#?}");
    assert!(m.overrides.values().all(|o| !o.disabled));
    assert!(
        m.overrides
            .values()
            .all(|o| !o.tags.contains_key("bad-name"))
    );
}
