//! Mesh-wide configuration: Istio's `MeshConfig` (the `mesh` key of the `istio` ConfigMap, or
//! `spec.meshConfig` of an `IstioOperator`) and the `IstioOperator` resource that carries it.
//!
//! `MeshConfig` has some eighty fields, most of them about things sluice does not do (Kubernetes
//! ingress, Envoy stats names…). The ones an egress gateway uses are typed here under their real
//! names; every other field is kept, untouched, in [`MeshConfig::other`] so that a later stage can
//! report it as "not used by sluice" instead of rejecting a valid Istio file.

use std::collections::BTreeMap;

use crate::values::Duration;

/// The subset of Istio's `MeshConfig` that sluice uses, plus everything else in `other`.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    /// What sidecars do with traffic to destinations not in the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    /// Where proxies write their access log (`/dev/stdout`); empty disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_file: Option<String>,
    /// Envoy-style access log format (`%RESPONSE_CODE%`…); empty means the default format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_encoding: Option<AccessLogEncoding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_tracing: Option<bool>,
    /// The default `ProxyConfig` of gateways and sidecars, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_config: Option<serde_json::Value>,
    /// Named providers that Telemetry and CUSTOM AuthorizationPolicies refer to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension_providers: Vec<ExtensionProvider>,
    /// Providers used when no Telemetry resource names any (`{tracing, metrics, accessLogging}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_providers: Option<serde_json::Value>,
    /// SPIFFE trust domain of the mesh (`cluster.local` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// Other trust domains whose identities are treated as this mesh's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domain_aliases: Vec<String>,
    /// The namespace whose resources apply to every namespace (`istio-system` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_auto_mtls: Option<bool>,
    /// Upstream connect timeout (Istio's default: 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_detection_timeout: Option<Duration>,
    /// Refresh rate of DNS-resolved clusters (Istio's default: 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_refresh_rate: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_service_export_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_virtual_service_export_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_destination_rule_export_to: Vec<String>,
    /// Mesh-wide locality load-balancing settings, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_controller_mode: Option<IngressControllerMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_selector: Option<String>,
    /// Every other field, as written: valid Istio, but not used by sluice.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `MeshConfig.OutboundTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    #[serde(default)]
    pub mode: OutboundTrafficPolicyMode,
}

/// `MeshConfig.OutboundTrafficPolicy.Mode`.
///
/// The proto's zero value is `REGISTRY_ONLY`, but Istio's default mesh configuration sets
/// `ALLOW_ANY` and user settings are merged over it, so an unset mode means `ALLOW_ANY` in
/// practice: that is this type's default.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
pub enum OutboundTrafficPolicyMode {
    /// Only destinations in the registry (services, ServiceEntries) are reachable.
    #[serde(rename = "REGISTRY_ONLY")]
    RegistryOnly,
    /// Unknown destinations are passed through.
    #[default]
    #[serde(rename = "ALLOW_ANY")]
    AllowAny,
}

/// `MeshConfig.AccessLogEncoding`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
pub enum AccessLogEncoding {
    #[default]
    #[serde(rename = "TEXT")]
    Text,
    #[serde(rename = "JSON")]
    Json,
}

/// `MeshConfig.H2UpgradePolicy`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
pub enum H2UpgradePolicy {
    #[default]
    #[serde(rename = "DO_NOT_UPGRADE")]
    DoNotUpgrade,
    #[serde(rename = "UPGRADE")]
    Upgrade,
}

/// `MeshConfig.IngressControllerMode`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
pub enum IngressControllerMode {
    #[default]
    #[serde(rename = "UNSPECIFIED")]
    Unspecified,
    #[serde(rename = "OFF")]
    Off,
    #[serde(rename = "DEFAULT")]
    Default,
    #[serde(rename = "STRICT")]
    Strict,
}

/// `MeshConfig.ExtensionProvider`: a name and exactly one provider configuration
/// (`envoyExtAuthzHttp`, `prometheus`, `envoyFileAccessLog`, `zipkin`…), kept as written.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    /// The name Telemetry and AuthorizationPolicy resources use (required).
    pub name: String,
    /// The provider's configuration, by provider kind.
    #[serde(flatten)]
    pub provider: BTreeMap<String, serde_json::Value>,
}

impl ExtensionProvider {
    /// The provider kind (`envoyFileAccessLog`, `prometheus`…) when exactly one is given.
    pub fn kind(&self) -> Option<&str> {
        let mut keys = self.provider.keys();
        match (keys.next(), keys.next()) {
            (Some(k), None) => Some(k.as_str()),
            _ => None,
        }
    }
}

impl MeshConfig {
    /// The effective outbound traffic policy mode (`ALLOW_ANY` unless set).
    pub fn outbound_mode(&self) -> OutboundTrafficPolicyMode {
        self.outbound_traffic_policy
            .map(|p| p.mode)
            .unwrap_or_default()
    }

    /// The extension provider with the given name.
    pub fn extension_provider(&self, name: &str) -> Option<&ExtensionProvider> {
        self.extension_providers.iter().find(|p| p.name == name)
    }
}

/// `IstioOperator` (`install.istio.io/v1alpha1`): sluice reads its `meshConfig` and its gateway
/// components; the rest is accepted as written.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioOperator {
    /// Base profile (`default`, `minimal`, `demo`…) or a path to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_package_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// Image tag; Istio accepts any scalar here (`tag: 1.20` is a number in YAML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<serde_json::Value>,
    /// Older operator API only (deprecated, never implemented by Istio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Istio 1.24+: behave like an older minor version (`1.23`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatibility_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_config: Option<MeshConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<IstioComponents>,
    /// Older operator API only (removed in 1.8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addon_components: Option<serde_json::Value>,
    /// Helm values overrides, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unvalidated_values: Option<serde_json::Value>,
}

/// `IstioComponentSpec`: which components are installed, and how.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioComponents {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pilot: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ztunnel: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istiod_remote: Option<serde_json::Value>,
    /// Older operator API only (removed in 1.8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<serde_json::Value>,
    /// Older operator API only (removed in 1.8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_gateways: Vec<GatewayComponent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_gateways: Vec<GatewayComponent>,
    /// A gateway not installed by default (1.24+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<serde_json::Value>,
}

/// `GatewayComponentSpec`: one ingress or egress gateway deployment.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayComponent {
    /// Deployment name (`istio-egressgateway`).
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Extra pod labels; Istio adds `istio: egressgateway` etc. itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<serde_json::Value>,
    /// Kubernetes settings (resources, replicas, overlays…), kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn mesh(v: serde_json::Value) -> Result<MeshConfig, String> {
        serde_json::from_value::<MeshConfig>(v).map_err(|e| e.to_string())
    }

    fn operator(v: serde_json::Value) -> Result<IstioOperator, String> {
        serde_json::from_value::<IstioOperator>(v).map_err(|e| e.to_string())
    }

    const GUIDE_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\"\n%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT%\n%DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%\n\"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\"\n\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

    #[test]
    fn guide_mesh_config_parses() {
        // guide/mesh-config.yaml: an IstioOperator whose spec is only meshConfig.
        let op = operator(json!({
            "meshConfig": {
                "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
                "accessLogFile": "/dev/stdout",
                "accessLogFormat": GUIDE_FORMAT
            }
        }))
        .expect("guide mesh config");
        let mc = op.mesh_config.expect("meshConfig");
        assert_eq!(mc.outbound_mode(), OutboundTrafficPolicyMode::RegistryOnly);
        assert_eq!(mc.access_log_file.as_deref(), Some("/dev/stdout"));
        assert!(
            mc.access_log_format.as_deref().is_some_and(
                |f| f.contains("%RESPONSE_FLAGS%") && f.ends_with("%UPSTREAM_HOST%\"\n")
            )
        );
        assert!(mc.other.is_empty());
    }

    #[test]
    fn guide_operator_with_egress_gateway_parses() {
        // guide/istio-operator-egress.yaml, spec.
        let op = operator(json!({
            "profile": "default",
            "components": {
                "egressGateways": [{
                    "name": "istio-egressgateway",
                    "enabled": true,
                    "k8s": {
                        "resources": {
                            "requests": {"cpu": "100m", "memory": "128Mi"},
                            "limits": {"cpu": "500m", "memory": "256Mi"}
                        },
                        "replicas": 2,
                        "affinity": {"podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [{
                                "weight": 100,
                                "podAffinityTerm": {
                                    "labelSelector": {"matchLabels": {"istio": "egressgateway"}},
                                    "topologyKey": "kubernetes.io/hostname"
                                }
                            }]
                        }}
                    }
                }]
            }
        }))
        .expect("guide operator");
        assert_eq!(op.profile.as_deref(), Some("default"));
        assert!(op.mesh_config.is_none());
        let components = op.components.expect("components");
        let gw = &components.egress_gateways[0];
        assert_eq!(gw.name, "istio-egressgateway");
        assert_eq!(gw.enabled, Some(true));
        assert_eq!(
            gw.k8s.as_ref().and_then(|k| k.pointer("/replicas")),
            Some(&json!(2))
        );
        assert!(components.ingress_gateways.is_empty());
    }

    #[test]
    fn guide_certificate_overlay_parses() {
        // guide/egress-gateway-certs.yaml, spec.
        let op = operator(json!({
            "components": {"egressGateways": [{
                "name": "istio-egressgateway",
                "enabled": true,
                "k8s": {"overlays": [{
                    "kind": "Deployment",
                    "name": "istio-egressgateway",
                    "patches": [
                        {
                            "path": "spec.template.spec.containers[0].volumeMounts[-1]",
                            "value": {"name": "external-certs", "mountPath": "/etc/istio/external-certs", "readOnly": true}
                        },
                        {
                            "path": "spec.template.spec.volumes[-1]",
                            "value": {"name": "external-certs", "secret": {"secretName": "external-api-certs"}}
                        }
                    ]
                }]}
            }]}
        }))
        .expect("certs overlay");
        let gw = &op.components.expect("components").egress_gateways[0];
        assert_eq!(
            gw.k8s
                .as_ref()
                .and_then(|k| k.pointer("/overlays/0/patches/1/value/secret/secretName")),
            Some(&json!("external-api-certs"))
        );
    }

    #[test]
    fn mesh_config_keeps_unknown_fields_in_other() {
        let mc = mesh(json!({
            "outboundTrafficPolicy": {"mode": "ALLOW_ANY"},
            "enableTracing": true,
            "trustDomain": "example.org",
            "trustDomainAliases": ["old.example.org"],
            "connectTimeout": "5s",
            "accessLogEncoding": "JSON",
            "h2UpgradePolicy": "UPGRADE",
            "defaultConfig": {"holdApplicationUntilProxyStarts": true},
            "extensionProviders": [
                {"name": "otel", "opentelemetry": {"service": "otel.svc", "port": 4317}},
                {"name": "authz", "envoyExtAuthzHttp": {"service": "authz.svc", "port": 8000}}
            ],
            "enablePrometheusMerge": false,
            "proxyHttpPort": 15080
        }))
        .expect("mesh config");
        assert_eq!(mc.outbound_mode(), OutboundTrafficPolicyMode::AllowAny);
        assert_eq!(mc.enable_tracing, Some(true));
        assert_eq!(mc.connect_timeout, Some(Duration::from_secs(5)));
        assert_eq!(mc.access_log_encoding, Some(AccessLogEncoding::Json));
        assert_eq!(mc.h2_upgrade_policy, Some(H2UpgradePolicy::Upgrade));
        assert_eq!(
            mc.extension_provider("otel").and_then(|p| p.kind()),
            Some("opentelemetry")
        );
        assert_eq!(
            mc.extension_provider("authz").and_then(|p| p.kind()),
            Some("envoyExtAuthzHttp")
        );
        assert_eq!(mc.other.len(), 2);
        assert_eq!(mc.other.get("enablePrometheusMerge"), Some(&json!(false)));
        assert_eq!(mc.other.get("proxyHttpPort"), Some(&json!(15080)));
        // Kept fields survive serialization, next to the typed ones.
        let back = serde_json::to_value(&mc).expect("serialize");
        assert_eq!(back.get("proxyHttpPort"), Some(&json!(15080)));
        assert_eq!(back.get("trustDomain"), Some(&json!("example.org")));
    }

    #[test]
    fn mesh_config_defaults() {
        let mc = mesh(json!({})).expect("empty");
        assert_eq!(mc.outbound_mode(), OutboundTrafficPolicyMode::AllowAny);
        let mc = mesh(json!({"outboundTrafficPolicy": {}})).expect("empty policy");
        assert_eq!(mc.outbound_mode(), OutboundTrafficPolicyMode::AllowAny);
    }

    #[test]
    fn mesh_config_rejects_bad_values_of_known_fields() {
        let err = mesh(json!({"outboundTrafficPolicy": {"mode": "VIRTUAL_SERVICE_ONLY"}}))
            .expect_err("removed mode");
        assert!(err.contains("VIRTUAL_SERVICE_ONLY"), "{err}");
        let err = mesh(json!({"outboundTrafficPolicy": {"mode": "ALLOW_ANY", "egressProxy": {}}}))
            .expect_err("unknown field inside a typed field");
        assert!(err.contains("egressProxy"), "{err}");
        let err = mesh(json!({"connectTimeout": "10"})).expect_err("duration without unit");
        assert!(err.contains("10"), "{err}");
        let err = mesh(json!({"extensionProviders": [{"prometheus": {}}]})).expect_err("no name");
        assert!(err.contains("name"), "{err}");
    }

    #[test]
    fn operator_rejects_unknown_spec_fields() {
        let err = operator(json!({"profile": "default", "meshconfig": {}})).expect_err("typo");
        assert!(err.contains("meshconfig"), "{err}");
        let err = operator(json!({"components": {"egressGateway": []}})).expect_err("typo");
        assert!(err.contains("egressGateway"), "{err}");
        let err =
            operator(json!({"components": {"egressGateways": [{"name": "g", "labels": {}}]}}))
                .expect_err("labels is spelled label");
        assert!(err.contains("labels"), "{err}");
    }

    #[test]
    fn operator_accepts_every_spec_field() {
        let op = operator(json!({
            "profile": "minimal", "installPackagePath": "/tmp/x", "hub": "docker.io/istio",
            "tag": 1.2, "resourceSuffix": "x", "namespace": "istio-system", "revision": "1-24",
            "compatibilityVersion": "1.23",
            "meshConfig": {"accessLogEncoding": "TEXT"},
            "components": {
                "base": {"enabled": true}, "pilot": {"enabled": true}, "cni": {"enabled": false},
                "ztunnel": {"enabled": false}, "istiodRemote": {"enabled": false},
                "policy": {}, "telemetry": {}, "gateway": {},
                "ingressGateways": [{"name": "istio-ingressgateway", "label": {"app": "in"}}]
            },
            "addonComponents": {}, "values": {"global": {"proxy": {}}}, "unvalidatedValues": {}
        }))
        .expect("all fields");
        assert_eq!(op.tag, Some(json!(1.2)));
        assert_eq!(
            op.mesh_config.and_then(|m| m.access_log_encoding),
            Some(AccessLogEncoding::Text)
        );
        let ingress = &op.components.expect("components").ingress_gateways[0];
        assert_eq!(ingress.label.get("app").map(String::as_str), Some("in"));
    }
}
