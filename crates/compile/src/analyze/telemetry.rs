//! Telemetry checks: one Telemetry per workload (IST0101, IST0159, IST0160; see
//! [`workload_selectors`](super::workload_selectors)), access logging that names no provider
//! where the mesh has no default (IST0157), and the deprecated Lightstep provider (IST0002), as
//! Istio's `telemetry.*` analyzers.

use sluice_model::{Diagnostic, Level};

use super::registry::Registry;
use super::workload_selectors::{self, Kind, Selecting};
use super::{finding, istio_codes};

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    selectors(reg, out);
    providers(reg, out);
    lightstep(reg, out);
}

fn selectors(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    // Only Telemetries with neither selector nor targetRef are namespace-wide; one with a
    // targetRef applies to the Gateway or Service it names, which pods cannot tell.
    let items: Vec<Selecting<'_, _>> = reg
        .resources
        .telemetries
        .iter()
        .filter(|t| t.spec.all_target_refs().next().is_none())
        .map(|t| Selecting {
            resource: t,
            selector: t
                .spec
                .selector
                .as_ref()
                .map(|s| &s.match_labels)
                .filter(|l| !l.is_empty()),
            selector_path: "spec.selector.matchLabels",
        })
        .collect();
    let kind = Kind {
        plural: "Telemetries",
        same_pod: istio_codes::CONFLICTING_TELEMETRY_SELECTORS,
        no_selector: istio_codes::MULTIPLE_TELEMETRIES_WITHOUT_SELECTOR,
    };
    workload_selectors::analyze(reg, &kind, &items, out);
}

/// IST0157: an access-logging entry without providers uses the mesh's default providers; with
/// none configured it does nothing.
fn providers(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    let has_default = reg
        .resources
        .mesh_config()
        .and_then(|(m, _)| m.default_providers.as_ref())
        .and_then(|d| d.get("accessLogging"))
        .and_then(|a| a.as_array())
        .is_some_and(|a| !a.is_empty());
    if has_default {
        return;
    }
    for t in &reg.resources.telemetries {
        for (i, logging) in t.spec.access_logging.iter().enumerate() {
            if logging.disabled == Some(true) || !logging.providers.is_empty() {
                continue;
            }
            out.push(finding(
                t,
                istio_codes::INVALID_TELEMETRY_PROVIDER,
                Level::Warning,
                &format!("spec.accessLogging[{i}]"),
                format!(
                    "The Telemetry {} in namespace {:?} with empty providers will be ignored.",
                    t.name(),
                    t.namespace()
                ),
            ));
        }
    }
}

/// IST0002: tracing through a Lightstep provider, which Istio deprecated (Lightstep's
/// collector speaks OpenTelemetry).
fn lightstep(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    let Some((mesh, _)) = reg.resources.mesh_config() else {
        return;
    };
    let lightstep: Vec<&str> = mesh
        .extension_providers
        .iter()
        .filter(|p| p.kind() == Some("lightstep"))
        .map(|p| p.name.as_str())
        .collect();
    if lightstep.is_empty() {
        return;
    }
    for t in &reg.resources.telemetries {
        for (i, tracing) in t.spec.tracing.iter().enumerate() {
            for (j, p) in tracing.providers.iter().enumerate() {
                if !lightstep.contains(&p.name.as_str()) {
                    continue;
                }
                out.push(finding(
                    t,
                    istio_codes::DEPRECATED,
                    Level::Warning,
                    &format!("spec.tracing[{i}].providers[{j}]"),
                    format!(
                        "Deprecated: the Lightstep provider {:?} is deprecated; use an \
                         OpenTelemetry provider instead",
                        p.name
                    ),
                ));
            }
        }
    }
}
