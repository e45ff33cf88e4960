//! istio.io task "Telemetry API: access logs" (`testdata/acceptance/istio-tasks/observability-logs-telemetry-api`).
//! The task sends its logs to an OpenTelemetry provider (`otel`, a Loki collector); its last
//! published file is not valid YAML, which `sluice analyze` reports with file, line and column.

use std::process::Command;

mod common;
mod istio_tasks;

use istio_tasks::task_file;

const TASK: &str = "observability-logs-telemetry-api";

fn analyze(file: &str) -> (Option<i32>, String) {
    let out = Command::new(common::bin())
        .arg("analyze")
        .arg(task_file(TASK, file))
        .output()
        .expect("run sluice analyze");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// 06 as published (nested double quotes): a located parse error, exit 2.
#[test]
fn the_published_file_06_is_invalid_yaml_with_a_located_error() {
    let (code, text) = analyze("06");
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("06-get_started_with_telemetry_api_6.yaml:10:79")
            && text.contains("invalid YAML"),
        "{text}"
    );
}

/// 01–05 (Telemetry v1 and v1alpha1, selectors, `disabled`, `match.mode`, filter expressions)
/// load and validate.
#[test]
fn the_telemetry_resources_01_to_05_load_and_validate() {
    for f in ["01", "02", "03", "04", "05"] {
        let (code, text) = analyze(f);
        assert_eq!(code, Some(0), "{f}: {text}");
    }
}

/// The doc test: 10 requests curl → httpbin `/status/200`, log lines counted per pod at the
/// `otel` provider — 10/10 with 01, 0/10 with 02, 0/0 with 03; with 04 only `/status/500`.
#[test]
#[ignore = "the `otel` provider is an envoyOtelAls extension provider (OTLP to a collector), which sluice does not export to (SLC0006); also 01 carries no namespace and is applied with `kubectl apply -n istio-system`, and the httpbin side is an inbound (SERVER) proxy, which sluice is not"]
fn otel_access_log_lines_per_workload() {
    panic!("envoyOtelAls access logging is not supported");
}
