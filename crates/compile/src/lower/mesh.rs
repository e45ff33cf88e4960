//! Mesh-wide settings: the outbound traffic policy (meshConfig, overridden for a sidecar by its
//! Sidecar resource), meshConfig's access log (Telemetry resources replace it: `telemetry`),
//! the default retry policy, and the kinds the compiler does not lower into the snapshot.

use sluice_model::mesh::{AccessLogEncoding, OutboundTrafficPolicyMode};
use sluice_model::networking::Sidecar;
use sluice_model::networking::sidecar::OutboundTrafficPolicyMode as SidecarMode;
use sluice_model::networking::virtual_service::HTTPRetry;
use sluice_model::resource::IstioKind;
use sluice_model::{Diagnostic, Level, Resource};
use sluice_snapshot::{AccessLog, OutboundPolicy, PathNormalization, Role};

use super::Ctx;
use super::codes::{DROPPED, NOT_SUPPORTED};
use super::registry::istio_order;

/// The Sidecar resource that configures a sidecar (Istio's `getSidecarScope`): in the proxy's
/// namespace one whose workload selector matches, else one without selector, else the root
/// namespace's one without selector. Gateways use no Sidecar resource.
pub fn sidecar_resource<'a>(cx: &Ctx<'a>) -> Option<&'a Resource<Sidecar>> {
    if cx.role() != Role::Sidecar {
        return None;
    }
    let mut all: Vec<&Resource<Sidecar>> = cx.resources.sidecars.iter().collect();
    all.sort_by_key(|s| istio_order(s));
    let ns = cx.opts.namespace.as_str();
    let root = cx.reg.root_ns.as_str();
    all.iter()
        .copied()
        .find(|s| {
            s.namespace() == ns
                && s.spec
                    .workload_selector
                    .as_ref()
                    .is_some_and(|w| w.matches(&cx.opts.labels))
        })
        .or_else(|| {
            all.iter()
                .copied()
                .find(|s| s.namespace() == ns && s.spec.workload_selector.is_none())
        })
        .or_else(|| {
            all.iter()
                .copied()
                .find(|s| s.namespace() == root && s.spec.workload_selector.is_none())
        })
}

/// meshConfig `outboundTrafficPolicy` (ALLOW_ANY unless set), or the sidecar's Sidecar
/// resource's (`{}` there means REGISTRY_ONLY, the proto default).
pub fn outbound_policy(cx: &mut Ctx<'_>) -> OutboundPolicy {
    let mesh = match cx.mesh.outbound_mode() {
        OutboundTrafficPolicyMode::RegistryOnly => OutboundPolicy::RegistryOnly,
        OutboundTrafficPolicyMode::AllowAny => OutboundPolicy::AllowAny,
    };
    let Some(sc) = sidecar_resource(cx) else {
        return mesh;
    };
    for (set, field, what) in [
        (
            !sc.spec.egress.is_empty(),
            "spec.egress",
            "limiting what the sidecar imports (egress hosts): every visible service is used",
        ),
        (
            !sc.spec.ingress.is_empty(),
            "spec.ingress",
            "inbound listeners",
        ),
        (
            sc.spec.inbound_connection_pool.is_some(),
            "spec.inboundConnectionPool",
            "inbound connection limits",
        ),
    ] {
        if set {
            cx.unsupported(sc, field, what);
        }
    }
    match &sc.spec.outbound_traffic_policy {
        None => mesh,
        Some(p) => {
            if p.egress_proxy.is_some() {
                cx.unsupported(
                    sc,
                    "spec.outboundTrafficPolicy.egressProxy",
                    "sending unregistered traffic to an egress proxy",
                );
            }
            match p.mode() {
                SidecarMode::RegistryOnly => OutboundPolicy::RegistryOnly,
                SidecarMode::AllowAny => OutboundPolicy::AllowAny,
            }
        }
    }
}

/// meshConfig `accessLogFile`, `accessLogFormat`, `accessLogEncoding`: no file, no log.
pub fn access_log(cx: &Ctx<'_>) -> AccessLog {
    AccessLog {
        path: cx.mesh.access_log_file.clone().filter(|p| !p.is_empty()),
        format: cx.mesh.access_log_format.clone().filter(|f| !f.is_empty()),
        json: cx.mesh.access_log_encoding == Some(AccessLogEncoding::Json),
        filter: None,
    }
}

/// meshConfig `pathNormalization.normalization` (kept as written by the model). Validation
/// refuses a value Istio does not know; compiled anyway, it lowers to `BASE`, Istio's default,
/// so that a typo never switches normalisation off.
pub fn path_normalization(cx: &Ctx<'_>) -> PathNormalization {
    let mode = cx
        .mesh
        .other
        .get("pathNormalization")
        .and_then(|p| p.get("normalization"))
        .and_then(|n| n.as_str());
    match mode {
        Some("NONE") => PathNormalization::None,
        Some("MERGE_SLASHES") => PathNormalization::MergeSlashes,
        Some("DECODE_AND_MERGE_SLASHES") => PathNormalization::DecodeAndMergeSlashes,
        _ => PathNormalization::Base,
    }
}

/// meshConfig `defaultHttpRetryPolicy` (kept as written by the model), parsed.
pub fn default_retry(cx: &mut Ctx<'_>) -> Option<HTTPRetry> {
    let raw = cx.mesh.other.get("defaultHttpRetryPolicy")?.clone();
    match serde_json::from_value::<HTTPRetry>(raw) {
        Ok(r) => Some(r),
        Err(e) => {
            let mut d = Diagnostic::error(
                DROPPED,
                format!(
                    "meshConfig defaultHttpRetryPolicy cannot be read ({e}): Istio's default retry policy is used"
                ),
            );
            if let Some(l) = &cx.mesh_origin {
                d = d.at(l.clone());
            }
            cx.diags.push(d);
            None
        }
    }
}

/// Kinds read by the model and checked by `analyze`, but not lowered into the snapshot (yet):
/// each one that could apply to this proxy is reported, so nobody believes it enforced.
/// (AuthorizationPolicy is compiled apart, by `crate::authz`.)
pub fn report_unlowered(cx: &mut Ctx<'_>) {
    let res = cx.resources;
    let ns = cx.opts.namespace.clone();
    let root = cx.reg.root_ns.clone();
    let applies = |r_ns: &str| r_ns == ns || r_ns == root;
    for r in res
        .peer_authentications
        .iter()
        .filter(|r| applies(r.namespace()))
    {
        warn(
            cx,
            r,
            "PeerAuthentication is not lowered into the snapshot yet",
        );
    }
    // EnvoyFilters: the local rate limit is lowered (`ratelimit`); validation reports every
    // other patch. Telemetry is lowered (`telemetry`): it and validation report what of it
    // is not applied (tracing, targetRefs, custom metrics, providers sluice lacks).
    for r in &res.workload_entries {
        warn(
            cx,
            r,
            "WorkloadEntry is not used as an endpoint yet (ServiceEntry endpoints are)",
        );
    }
}

fn warn<T: IstioKind>(cx: &mut Ctx<'_>, r: &Resource<T>, msg: &str) {
    cx.report(r, NOT_SUPPORTED, Level::Warning, "spec", msg);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::testing::{codes, gateway, has, sidecar};

    fn mesh(spec: &str) -> String {
        format!(
            "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {{name: m, namespace: istio-system}}\nspec: {{meshConfig: {spec}}}\n"
        )
    }

    fn sidecar_resource(name: &str, ns: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
        )
    }

    #[test]
    fn outbound_policy_from_mesh_and_sidecar_resources() {
        let registry_only = mesh("{outboundTrafficPolicy: {mode: REGISTRY_ONLY}}");
        // (YAML, sidecar namespace or gateway, expected)
        let table: Vec<(String, Option<&str>, OutboundPolicy)> = vec![
            (String::new(), None, OutboundPolicy::AllowAny),
            (String::new(), Some("app"), OutboundPolicy::AllowAny),
            (registry_only.clone(), None, OutboundPolicy::RegistryOnly),
            (
                registry_only.clone(),
                Some("app"),
                OutboundPolicy::RegistryOnly,
            ),
            // `outboundTrafficPolicy: {}` is the proto default, REGISTRY_ONLY.
            (
                sidecar_resource("default", "app", "{outboundTrafficPolicy: {}}"),
                Some("app"),
                OutboundPolicy::RegistryOnly,
            ),
            (
                format!(
                    "{registry_only}{}",
                    sidecar_resource(
                        "default",
                        "istio-system",
                        "{outboundTrafficPolicy: {mode: ALLOW_ANY}}"
                    )
                ),
                Some("app"),
                OutboundPolicy::AllowAny,
            ),
            (
                format!(
                    "{}{}",
                    sidecar_resource(
                        "root",
                        "istio-system",
                        "{outboundTrafficPolicy: {mode: ALLOW_ANY}}"
                    ),
                    sidecar_resource(
                        "mine",
                        "app",
                        "{outboundTrafficPolicy: {mode: REGISTRY_ONLY}}"
                    )
                ),
                Some("app"),
                OutboundPolicy::RegistryOnly,
            ),
            (
                sidecar_resource(
                    "selective",
                    "app",
                    "{workloadSelector: {labels: {app: other}}, outboundTrafficPolicy: {}}",
                ),
                Some("app"),
                OutboundPolicy::AllowAny,
            ),
            // Gateways use no Sidecar resource.
            (
                sidecar_resource("default", "istio-system", "{outboundTrafficPolicy: {}}"),
                None,
                OutboundPolicy::AllowAny,
            ),
        ];
        for (yaml, ns, want) in table {
            let (s, _) = match ns {
                Some(ns) => sidecar(&yaml, ns),
                None => gateway(&yaml),
            };
            assert_eq!(s.outbound_policy, want, "{ns:?}: {yaml}");
        }
    }

    #[test]
    fn access_log_from_mesh_config() {
        let table = [
            (String::new(), AccessLog::default()),
            (
                mesh("{accessLogFile: /dev/stdout}"),
                AccessLog {
                    path: Some("/dev/stdout".into()),
                    format: None,
                    json: false,
                    filter: None,
                },
            ),
            (
                mesh(
                    "{accessLogFile: /var/log/a.log, accessLogEncoding: JSON, accessLogFormat: '%RESPONSE_CODE%'}",
                ),
                AccessLog {
                    path: Some("/var/log/a.log".into()),
                    format: Some("%RESPONSE_CODE%".into()),
                    json: true,
                    filter: None,
                },
            ),
            (mesh("{accessLogFile: ''}"), AccessLog::default()),
        ];
        for (yaml, want) in table {
            assert_eq!(gateway(&yaml).0.access_log, want, "{yaml}");
        }
    }

    #[test]
    fn path_normalization_from_mesh_config() {
        let table = [
            (String::new(), PathNormalization::Base),
            (
                mesh("{pathNormalization: {normalization: DEFAULT}}"),
                PathNormalization::Base,
            ),
            (mesh("{pathNormalization: {}}"), PathNormalization::Base),
            (
                mesh("{pathNormalization: {normalization: NONE}}"),
                PathNormalization::None,
            ),
            (
                mesh("{pathNormalization: {normalization: BASE}}"),
                PathNormalization::Base,
            ),
            (
                mesh("{pathNormalization: {normalization: MERGE_SLASHES}}"),
                PathNormalization::MergeSlashes,
            ),
            (
                mesh("{pathNormalization: {normalization: DECODE_AND_MERGE_SLASHES}}"),
                PathNormalization::DecodeAndMergeSlashes,
            ),
            (
                mesh("{pathNormalization: {normalization: MERGE_SLASH}}"),
                PathNormalization::Base,
            ),
        ];
        for (yaml, want) in table {
            assert_eq!(gateway(&yaml).0.path_normalization, want, "{yaml}");
            // Istio gives sidecars the same connection manager settings.
            assert_eq!(sidecar(&yaml, "app").0.path_normalization, want, "{yaml}");
        }
    }

    #[test]
    fn kinds_not_in_the_snapshot_are_reported() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: elsewhere, namespace: other}\nspec: {mtls: {mode: STRICT}}\n";
        let (_, d) = gateway(yaml);
        assert!(has(&d, "SLC0006", "PeerAuthentication is not lowered"));
        let unlowered = codes(&d).into_iter().filter(|c| *c == "SLC0006").count();
        assert_eq!(
            unlowered, 1,
            "only what applies to this proxy's namespace or the root: {d:#?}"
        );
        let (_, d) = sidecar(
            &sidecar_resource("s", "app", "{egress: [{hosts: ['./*']}]}"),
            "app",
        );
        assert!(has(&d, "SLC0006", "egress hosts"), "{d:#?}");
    }
}
