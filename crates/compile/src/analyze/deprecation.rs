//! IST0002: deprecated fields the model still reads, as Istio's `deprecation.FieldAnalyzer`
//! lists them. (Deprecations the webhook warns about, e.g. `mirrorPercent`, are validation's.)

use sluice_model::{Diagnostic, Level};

use super::registry::Registry;
use super::{finding, istio_codes};

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    for vs in &reg.resources.virtual_services {
        for (i, route) in vs.spec.http.iter().enumerate() {
            let percent = route
                .fault
                .as_ref()
                .and_then(|f| f.delay.as_ref())
                .and_then(|d| d.percent);
            // Istio reports the integer form only when it does something (> 0).
            if percent.is_some_and(|p| p > 0) {
                out.push(finding(
                    vs,
                    istio_codes::DEPRECATED,
                    Level::Warning,
                    &format!("spec.http[{i}].fault.delay.percent"),
                    "Deprecated: HTTPRoute.fault.delay.percent is deprecated; use \
                     HTTPRoute.fault.delay.percentage"
                        .into(),
                ));
            }
        }
    }
    for sc in &reg.resources.sidecars {
        let egress_proxy = sc
            .spec
            .outbound_traffic_policy
            .as_ref()
            .is_some_and(|p| p.egress_proxy.is_some());
        if egress_proxy {
            out.push(finding(
                sc,
                istio_codes::DEPRECATED,
                Level::Warning,
                "spec.outboundTrafficPolicy.egressProxy",
                "Deprecated: OutboundTrafficPolicy.EgressProxy ignored".into(),
            ));
        }
    }
}
