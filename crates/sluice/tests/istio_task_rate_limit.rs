//! istio.io task "Enabling Rate Limits using Envoy" (`testdata/acceptance/istio-tasks/rate-limit`).
//! The behaviour is tested elsewhere with the same files: the global limit (01–03: the
//! rate-limit service's ConfigMap, the `filter-ratelimit` / `filter-ratelimit-svc` EnvoyFilters)
//! in `crates/proxy/tests/rate_limit.rs` and `crates/sluice/tests/global_rate_limit.rs` (two
//! gateways, one Redis); here the task's files go through the `sluice` binary as published.

use std::process::Command;

mod common;
mod istio_tasks;

use istio_tasks::task_file;

const TASK: &str = "rate-limit";

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

/// Every file but the bookinfo ingress one loads and validates unchanged.
#[test]
fn the_task_files_load_and_validate() {
    for f in ["01", "02", "03", "05", "06", "07"] {
        let (code, text) = analyze(f);
        assert_eq!(code, Some(0), "{f}: {text}");
        assert!(!text.contains("Error ["), "{f}: {text}");
    }
}

/// 04 is the bookinfo ingress VirtualService (`gateways: [bookinfo-gateway]`), an ingress
/// example: alone it references a Gateway that is not among the inputs, reported as Istio does.
#[test]
fn the_bookinfo_virtual_service_alone_names_a_missing_gateway() {
    let (code, text) = analyze("04");
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("IST0101") && text.contains("bookinfo-gateway"),
        "{text}"
    );
}
