//! IstioOperator and MeshConfig validation.
//!
//! MeshConfig follows Istio's `ValidateMeshConfig` (`pkg/config/validation/agent/validation.go`)
//! for the fields a user writes (timeouts, trust domains), and checks what sluice acts on more
//! closely: the access log format's `%OPERATOR%` tokens, the access log file. Every field sluice
//! does not act on is reported once, at its line, with `not_supported`.
//!
//! IstioOperator configures how Istio is installed on Kubernetes. sluice reads its `meshConfig`
//! and its egress gateway components (name, enabled, labels); everything else is reported at
//! Info level as not used by sluice.

use std::collections::BTreeMap;

use sluice_model::Level;
use sluice_model::diag::codes;
use sluice_model::mesh::{
    AccessLogEncoding, GatewayComponent, IstioComponents, IstioOperator, MeshConfig,
};
use sluice_model::values::Duration;

use super::Report;

pub(crate) fn validate(r: &mut Report<'_, IstioOperator>) {
    let spec = &r.resource().spec;

    let install_fields: [(&str, bool); 11] = [
        ("profile", spec.profile.is_some()),
        ("installPackagePath", spec.install_package_path.is_some()),
        ("hub", spec.hub.is_some()),
        ("tag", spec.tag.is_some()),
        ("resourceSuffix", spec.resource_suffix.is_some()),
        ("namespace", spec.namespace.is_some()),
        ("revision", spec.revision.is_some()),
        ("compatibilityVersion", spec.compatibility_version.is_some()),
        ("addonComponents", spec.addon_components.is_some()),
        ("values", spec.values.is_some()),
        ("unvalidatedValues", spec.unvalidated_values.is_some()),
    ];
    for (field, set) in install_fields {
        if set {
            info(
                r,
                &format!("spec.{field}"),
                format!(
                    "spec.{field} configures how Istio is installed on Kubernetes; it is not used \
                     by sluice"
                ),
            );
        }
    }

    if let Some(components) = &spec.components {
        check_components(r, components);
    }
    if let Some(mesh) = &spec.mesh_config {
        validate_mesh_config(r, mesh, "spec.meshConfig");
    }
}

fn info<T>(r: &mut Report<'_, T>, path: &str, message: String) {
    r.with_code(codes::NOT_SUPPORTED, Level::Info, path, message);
}

fn check_components(r: &mut Report<'_, IstioOperator>, c: &IstioComponents) {
    let others: [(&str, bool); 9] = [
        ("base", c.base.is_some()),
        ("pilot", c.pilot.is_some()),
        ("cni", c.cni.is_some()),
        ("ztunnel", c.ztunnel.is_some()),
        ("istiodRemote", c.istiod_remote.is_some()),
        ("policy", c.policy.is_some()),
        ("telemetry", c.telemetry.is_some()),
        ("gateway", c.gateway.is_some()),
        ("ingressGateways", !c.ingress_gateways.is_empty()),
    ];
    for (field, set) in others {
        if set {
            info(
                r,
                &format!("spec.components.{field}"),
                format!(
                    "component {field} is part of Istio's Kubernetes installation; it is not used \
                     by sluice"
                ),
            );
        }
    }
    for (i, gw) in c.egress_gateways.iter().enumerate() {
        check_egress_gateway(r, gw, &format!("spec.components.egressGateways[{i}]"));
    }
}

fn check_egress_gateway(r: &mut Report<'_, IstioOperator>, gw: &GatewayComponent, path: &str) {
    let name = gw.name.as_str();
    if name.is_empty() {
        r.warning(
            path,
            "egress gateway component has no name; Istio names its Deployment and Service after \
             it (istio-egressgateway)",
        );
    } else if !is_dns1123_subdomain(name) {
        r.error(
            &format!("{path}.name"),
            format!(
                "invalid value {path}.name: {name:?} (must be a Kubernetes object name: lower-case \
                 letters, digits, '-' and '.')"
            ),
        );
    }

    if gw.enabled == Some(false) {
        info(
            r,
            &format!("{path}.enabled"),
            format!(
                "egress gateway {name:?} is disabled: Istio does not deploy it; sluice takes no \
                 settings from it"
            ),
        );
    } else {
        // The labels Istio's gateway chart gives the pods: `app: istio-egressgateway` and
        // `istio: egressgateway` unless `label` says otherwise, plus every `label` entry.
        // Gateway resources select them.
        let mut labels = BTreeMap::from([
            ("app".to_owned(), "istio-egressgateway".to_owned()),
            ("istio".to_owned(), "egressgateway".to_owned()),
        ]);
        labels.extend(gw.label.clone());
        let list = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let at = if gw.label.is_empty() {
            format!("{path}.name")
        } else {
            format!("{path}.label")
        };
        info(
            r,
            &at,
            format!(
                "egress gateway {name:?}: its pods carry the labels {list}; run `sluice gateway \
                 --labels {list}` so that Gateway resources select sluice as they select those \
                 pods"
            ),
        );
    }

    if gw.namespace.is_some() {
        info(
            r,
            &format!("{path}.namespace"),
            format!(
                "{path}.namespace is the Kubernetes namespace the gateway is deployed in; it is \
                 not used by sluice"
            ),
        );
    }
    for (field, set) in [("hub", gw.hub.is_some()), ("tag", gw.tag.is_some())] {
        if set {
            info(
                r,
                &format!("{path}.{field}"),
                format!("{path}.{field} selects the proxy image; it is not used by sluice"),
            );
        }
    }
    if let Some(k8s) = &gw.k8s {
        check_k8s(r, k8s, &format!("{path}.k8s"));
    }
}

/// `k8s` settings: one Info for the Deployment settings, one per overlay, saying what each
/// overlay does (the volumes it mounts) so that its files can be given to sluice directly.
fn check_k8s(r: &mut Report<'_, IstioOperator>, k8s: &serde_json::Value, path: &str) {
    let Some(map) = k8s.as_object() else { return };
    let settings: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "overlays")
        .collect();
    if !settings.is_empty() {
        info(
            r,
            path,
            format!(
                "k8s settings ({}) configure the Kubernetes Deployment of the gateway; they are \
                 not used by sluice",
                settings.join(", ")
            ),
        );
    }
    let Some(overlays) = map.get("overlays").and_then(|o| o.as_array()) else {
        return;
    };
    for (i, overlay) in overlays.iter().enumerate() {
        let kind = overlay.get("kind").and_then(|v| v.as_str()).unwrap_or("?");
        let name = overlay.get("name").and_then(|v| v.as_str()).unwrap_or("?");
        let mut mounts = Vec::new();
        let mut secrets = Vec::new();
        for patch in overlay
            .get("patches")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
        {
            let value = patch.get("value");
            if let Some(m) = value
                .and_then(|v| v.get("mountPath"))
                .and_then(|m| m.as_str())
            {
                mounts.push(m.to_owned());
            }
            if let Some(s) = value
                .and_then(|v| v.pointer("/secret/secretName"))
                .and_then(|s| s.as_str())
            {
                secrets.push(s.to_owned());
            }
        }
        let mut what = String::new();
        if !secrets.is_empty() || !mounts.is_empty() {
            what = format!(
                " (mounting {}{}{})",
                if secrets.is_empty() {
                    String::new()
                } else {
                    format!("Secret {}", secrets.join(", "))
                },
                if secrets.is_empty() || mounts.is_empty() {
                    ""
                } else {
                    " at "
                },
                mounts.join(", ")
            );
        }
        let advice = match (secrets.is_empty(), mounts.is_empty()) {
            (false, false) => format!(
                ": put the Secret's files in {} on sluice's host yourself",
                mounts.join(", ")
            ),
            (true, false) => format!(": put those files in {} yourself", mounts.join(", ")),
            (false, true) => ": give sluice the Secret's files directly".to_owned(),
            (true, true) => String::new(),
        };
        info(
            r,
            &format!("{path}.overlays[{i}]"),
            format!(
                "this overlay patches the Kubernetes {kind} {name}{what}; sluice does not apply \
                 Kubernetes overlays{advice}"
            ),
        );
    }
}

/// Kubernetes object names (DNS-1123 subdomains).
fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// `base` is the path of the MeshConfig inside its resource (`spec.meshConfig`, or empty for a
/// bare MeshConfig document).
pub(crate) fn validate_mesh_config<T>(r: &mut Report<'_, T>, mesh: &MeshConfig, base: &str) {
    let at = |field: &str| {
        if base.is_empty() {
            field.to_owned()
        } else {
            format!("{base}.{field}")
        }
    };

    if let Some(file) = &mesh.access_log_file
        && !file.is_empty()
        && !file.starts_with('/')
    {
        r.warning(
            &at("accessLogFile"),
            format!(
                "accessLogFile {file:?} is not an absolute path: it is opened relative to the \
                 proxy's working directory (write /dev/stdout to log to standard output)"
            ),
        );
    }
    if let Some(format) = &mesh.access_log_format {
        let path = at("accessLogFormat");
        match mesh.access_log_encoding.unwrap_or_default() {
            AccessLogEncoding::Text => check_format_string(r, format, &path),
            AccessLogEncoding::Json => check_json_format(r, format, &path),
        }
    }

    if let Some(d) = mesh.connect_timeout
        && let Err(e) = check_connect_timeout(d)
    {
        r.error(
            &at("connectTimeout"),
            format!("invalid connect timeout: {e}"),
        );
    }
    if let Some(d) = mesh.protocol_detection_timeout
        && !d.0.subsec_nanos().is_multiple_of(1_000_000)
    {
        r.error(
            &at("protocolDetectionTimeout"),
            "invalid protocol detection timeout: only durations to ms precision are supported",
        );
    }
    if let Some(d) = mesh.dns_refresh_rate
        && let Err(e) = check_duration(d)
    {
        r.error(
            &at("dnsRefreshRate"),
            format!("invalid dns refresh rate: {e}"),
        );
    }

    if let Some(td) = &mesh.trust_domain
        && let Err(e) = check_trust_domain(td)
    {
        r.error(&at("trustDomain"), format!("trustDomain: {e}"));
    }
    for (i, alias) in mesh.trust_domain_aliases.iter().enumerate() {
        if let Err(e) = check_trust_domain(alias) {
            r.error(
                &at(&format!("trustDomainAliases[{i}]")),
                format!("trustDomainAliases[{i}], domain `{alias}` : {e}"),
            );
        }
    }
    if let Some(ns) = &mesh.root_namespace
        && !is_dns1123_label(ns)
    {
        r.warning(
            &at("rootNamespace"),
            format!("rootNamespace {ns:?} is not a valid namespace name"),
        );
    }

    if let Some(pn) = mesh.other.get("pathNormalization") {
        check_path_normalization(r, pn, &at("pathNormalization"));
    }
    check_extension_providers(r, mesh, &at("extensionProviders"));
    if let Some(dp) = &mesh.default_providers {
        check_default_providers(r, dp, &at("defaultProviders"));
    }
    report_unused_fields(r, mesh, &at);
}

/// `MeshConfig.ProxyPathNormalization.NormalizationType`, by its proto names.
const PATH_NORMALIZATIONS: [&str; 5] = [
    "DEFAULT",
    "NONE",
    "BASE",
    "MERGE_SLASHES",
    "DECODE_AND_MERGE_SLASHES",
];

/// `pathNormalization: {normalization: …}`, which the model keeps as written: an unknown mode
/// is refused as the model refuses the other enums of MeshConfig (Istio's proto parsing fails
/// on it).
fn check_path_normalization<T>(r: &mut Report<'_, T>, pn: &serde_json::Value, path: &str) {
    let Some(map) = pn.as_object() else {
        r.error(
            path,
            format!("{path}: invalid type: expected struct ProxyPathNormalization"),
        );
        return;
    };
    for (key, value) in map {
        let at = format!("{path}.{key}");
        if key != "normalization" {
            r.warning(
                &at,
                format!(
                    "{key} is not a field of pathNormalization (only normalization is); it is \
                     ignored"
                ),
            );
            continue;
        }
        let known = value.as_str().filter(|v| PATH_NORMALIZATIONS.contains(v));
        if known.is_none() {
            let written = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            let expected = PATH_NORMALIZATIONS.map(|v| format!("`{v}`")).join(", ");
            let hint = PATH_NORMALIZATIONS
                .iter()
                .map(|v| (edit_distance(&written.to_ascii_uppercase(), v), *v))
                .filter(|(d, _)| *d <= 2)
                .min_by_key(|(d, _)| *d)
                .map(|(_, v)| format!(" (did you mean `{v}`?)"))
                .unwrap_or_default();
            r.error(
                &at,
                format!("{at}: unknown variant `{written}`, expected one of {expected}{hint}"),
            );
        }
    }
}

/// Istio's `ValidateDuration`: at least 1ms, to ms precision.
fn check_duration(d: Duration) -> Result<(), String> {
    let d = d.as_std();
    if d < std::time::Duration::from_millis(1) {
        return Err("duration must be greater than 1ms".to_owned());
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err("only durations to ms precision are supported".to_owned());
    }
    Ok(())
}

/// Istio's `ValidateConnectTimeout`: a duration between 1ms and 1h.
fn check_connect_timeout(d: Duration) -> Result<(), String> {
    check_duration(d)?;
    if d.as_std() > std::time::Duration::from_secs(3600) {
        return Err(format!("time {d} must be >1ms and <1h0m0s"));
    }
    Ok(())
}

/// Istio's `ValidateTrustDomain`: dot-separated DNS-1123 labels (a trailing dot allowed).
fn check_trust_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("empty domain name not allowed".to_owned());
    }
    let parts: Vec<&str> = domain.split('.').collect();
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() {
            break;
        }
        if !is_dns1123_label(label) {
            return Err(format!("trust domain name {domain:?} invalid"));
        }
    }
    Ok(())
}

/// The extension provider kinds sluice implements: none yet; its own access log and metrics
/// are the built-in `envoy` and `prometheus` providers.
fn check_extension_providers<T>(r: &mut Report<'_, T>, mesh: &MeshConfig, path: &str) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in mesh.extension_providers.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if p.name.is_empty() {
            r.warning(
                &at,
                "extension provider has no name; nothing can refer to it",
            );
        } else if !seen.insert(p.name.as_str()) {
            r.warning(
                &at,
                format!("duplicate extension provider name {:?}", p.name),
            );
        }
        match p.kind() {
            None if p.provider.is_empty() => r.warning(
                &at,
                format!("extension provider {:?} names no provider kind", p.name),
            ),
            None => r.warning(
                &at,
                format!(
                    "extension provider {:?} names several provider kinds ({}); exactly one is \
                     expected",
                    p.name,
                    p.provider.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
            Some(kind) => r.not_supported(
                &at,
                format!(
                    "extension provider {:?} ({kind}) is not used by sluice: sluice implements \
                     only its built-in providers, `envoy` (access log) and `prometheus` (metrics)",
                    p.name
                ),
            ),
        }
    }
}

/// `defaultProviders`: `{tracing, metrics, accessLogging}`, each a list of provider names.
fn check_default_providers<T>(r: &mut Report<'_, T>, dp: &serde_json::Value, path: &str) {
    let Some(map) = dp.as_object() else { return };
    for (kind, names) in map {
        let at = format!("{path}.{kind}");
        let names: Vec<&str> = names
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str())
            .collect();
        match kind.as_str() {
            "tracing" if !names.is_empty() => r.not_supported(
                &at,
                "sluice does not produce traces; defaultProviders.tracing is not used",
            ),
            "metrics" | "accessLogging" => {
                let supported = if kind == "metrics" {
                    "prometheus"
                } else {
                    "envoy"
                };
                for n in names.iter().filter(|n| **n != supported) {
                    r.not_supported(
                        &at,
                        format!(
                            "sluice's {kind} provider is {supported:?}; provider {n:?} is not \
                             used by sluice"
                        ),
                    );
                }
            }
            _ => {}
        }
    }
}

/// MeshConfig fields sluice has a typed place for but does not act on, with the reason.
fn unused_typed_fields(mesh: &MeshConfig) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    if mesh.enable_tracing == Some(true) {
        out.push(("enableTracing", "sluice does not produce traces"));
    }
    let fields: [(&str, bool, &str); 8] = [
        (
            "defaultConfig",
            mesh.default_config.is_some(),
            "it configures Istio's Envoy proxies (ProxyConfig)",
        ),
        (
            "localityLbSetting",
            mesh.locality_lb_setting.is_some(),
            "sluice does not balance by locality",
        ),
        (
            "h2UpgradePolicy",
            mesh.h2_upgrade_policy.is_some(),
            "sluice does not upgrade HTTP/1.1 connections to HTTP/2",
        ),
        (
            "protocolDetectionTimeout",
            mesh.protocol_detection_timeout.is_some(),
            "sluice does not sniff protocols; the port's protocol decides",
        ),
        (
            "ingressClass",
            mesh.ingress_class.is_some(),
            "it concerns Kubernetes Ingress resources",
        ),
        (
            "ingressService",
            mesh.ingress_service.is_some(),
            "it concerns Kubernetes Ingress resources",
        ),
        (
            "ingressControllerMode",
            mesh.ingress_controller_mode.is_some(),
            "it concerns Kubernetes Ingress resources",
        ),
        (
            "ingressSelector",
            mesh.ingress_selector.is_some(),
            "it concerns Kubernetes Ingress resources",
        ),
    ];
    out.extend(
        fields
            .into_iter()
            .filter(|(_, set, _)| *set)
            .map(|(name, _, why)| (name, why)),
    );
    out
}

fn report_unused_fields<T>(r: &mut Report<'_, T>, mesh: &MeshConfig, at: &dyn Fn(&str) -> String) {
    for (field, why) in unused_typed_fields(mesh) {
        r.not_supported(
            &at(field),
            format!("MeshConfig field {field} is not used by sluice: {why}"),
        );
    }
    for key in mesh.other.keys() {
        // Read from `other` by the compiler, and checked by validate_mesh_config.
        if key == "pathNormalization" {
            continue;
        }
        let path = at(key);
        if MESH_CONFIG_FIELDS.contains(&key.as_str()) {
            r.not_supported(
                &path,
                format!("MeshConfig field {key} is valid Istio but not used by sluice"),
            );
        } else {
            let hint = nearest_field(key)
                .map(|f| format!(" (did you mean {f}?)"))
                .unwrap_or_default();
            r.warning(
                &path,
                format!("{key} is not a MeshConfig field Istio knows{hint}; it is ignored"),
            );
        }
    }
}

/// Every MeshConfig field of Istio's `mesh/v1alpha1/config.proto` (JSON names), including
/// deprecated and removed ones that old files still carry.
const MESH_CONFIG_FIELDS: &[&str] = &[
    "proxyListenPort",
    "proxyInboundListenPort",
    "proxyHttpPort",
    "connectTimeout",
    "protocolDetectionTimeout",
    "tcpKeepalive",
    "ingressClass",
    "ingressService",
    "ingressControllerMode",
    "ingressSelector",
    "enableTracing",
    "accessLogFile",
    "accessLogFormat",
    "accessLogEncoding",
    "enableEnvoyAccessLogService",
    "disableEnvoyListenerLog",
    "defaultConfig",
    "outboundTrafficPolicy",
    "inboundTrafficPolicy",
    "configSources",
    "enableAutoMtls",
    "trustDomain",
    "trustDomainAliases",
    "caCertificates",
    "defaultServiceExportTo",
    "defaultVirtualServiceExportTo",
    "defaultDestinationRuleExportTo",
    "rootNamespace",
    "localityLbSetting",
    "dnsRefreshRate",
    "h2UpgradePolicy",
    "inboundClusterStatName",
    "outboundClusterStatName",
    "certificates",
    "thriftConfig",
    "serviceSettings",
    "enablePrometheusMerge",
    "verifyCertificateAtClient",
    "ca",
    "extensionProviders",
    "defaultProviders",
    "discoverySelectors",
    "pathNormalization",
    "defaultHttpRetryPolicy",
    "meshMTLS",
    "tlsDefaults",
    "serviceScopeConfigs",
    "ambientMesh",
    "meshNetworks",
    // Removed from the API, still found in old files.
    "mixerCheckServer",
    "mixerReportServer",
    "disablePolicyChecks",
    "policyCheckFailOpen",
    "sidecarToTelemetrySessionAffinity",
    "sdsUdsPath",
    "sdsRefreshDelay",
    "enableSdsTokenMount",
    "sdsUseK8sSaJwt",
    "reportBatchMaxEntries",
    "reportBatchMaxTime",
    "authPolicy",
    "rdsRefreshDelay",
    "mixerAddress",
    "enableClientSidePolicyCheck",
    "drainDuration",
    "parentShutdownDuration",
    "proxyAdminPort",
];

/// The known field closest to `key` by edit distance (at most 2), for typo hints.
fn nearest_field(key: &str) -> Option<&'static str> {
    MESH_CONFIG_FIELDS
        .iter()
        .map(|f| {
            (
                edit_distance(&key.to_ascii_lowercase(), &f.to_ascii_lowercase()),
                *f,
            )
        })
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, f)| f)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// JSON encoding: the format is a JSON object whose values are format strings.
fn check_json_format<T>(r: &mut Report<'_, T>, format: &str, path: &str) {
    match serde_json::from_str::<serde_json::Value>(format) {
        Ok(serde_json::Value::Object(map)) => {
            for (k, v) in &map {
                if let Some(s) = v.as_str() {
                    check_format_string(r, s, path);
                } else if !v.is_number() && !v.is_boolean() && !v.is_null() {
                    r.warning(
                        path,
                        format!(
                            "accessLogFormat key {k:?} has a nested value; JSON access log formats \
                             map keys to format strings"
                        ),
                    );
                }
            }
        }
        _ => r.warning(
            path,
            "accessLogEncoding is JSON but accessLogFormat is not a JSON object of format \
             strings (e.g. {\"code\": \"%RESPONSE_CODE%\"}); Istio falls back to its default \
             JSON format",
        ),
    }
}

/// Checks the `%OPERATOR%` tokens of an Envoy format string: malformed tokens are errors (Envoy
/// refuses the format, so the proxies would reject the listener); unknown operators are
/// warnings (the list follows Envoy's access-log documentation and may lag a newer Envoy).
fn check_format_string<T>(r: &mut Report<'_, T>, format: &str, path: &str) {
    for problem in format_problems(format) {
        match problem {
            FormatProblem::Malformed(msg) => r.error(path, msg),
            FormatProblem::Unknown(msg) => r.warning(path, msg),
        }
    }
}

#[derive(Debug, PartialEq)]
enum FormatProblem {
    Malformed(String),
    Unknown(String),
}

/// Envoy's command operators (access-log "Command Operators" documentation). Those in
/// [`ARG_REQUIRED`] need `(…)`; those in [`ARG_OPTIONAL`] accept it.
const OPERATORS: &[&str] = &[
    "START_TIME",
    "START_TIME_LOCAL",
    "EMIT_TIME",
    "EMIT_TIME_LOCAL",
    "REQUEST_HEADERS_BYTES",
    "BYTES_RECEIVED",
    "BYTES_RETRANSMITTED",
    "PACKETS_RETRANSMITTED",
    "UPSTREAM_WIRE_BYTES_RECEIVED",
    "UPSTREAM_HEADER_BYTES_RECEIVED",
    "DOWNSTREAM_WIRE_BYTES_RECEIVED",
    "DOWNSTREAM_HEADER_BYTES_RECEIVED",
    "PROTOCOL",
    "UPSTREAM_PROTOCOL",
    "RESPONSE_CODE",
    "RESPONSE_CODE_DETAILS",
    "CONNECTION_TERMINATION_DETAILS",
    "RESPONSE_HEADERS_BYTES",
    "RESPONSE_TRAILERS_BYTES",
    "BYTES_SENT",
    "UPSTREAM_WIRE_BYTES_SENT",
    "UPSTREAM_HEADER_BYTES_SENT",
    "DOWNSTREAM_WIRE_BYTES_SENT",
    "DOWNSTREAM_HEADER_BYTES_SENT",
    "DURATION",
    "COMMON_DURATION",
    "CUSTOM_FLAGS",
    "REQUEST_DURATION",
    "REQUEST_TX_DURATION",
    "RESPONSE_DURATION",
    "RESPONSE_TX_DURATION",
    "DOWNSTREAM_HANDSHAKE_DURATION",
    "ROUNDTRIP_DURATION",
    "RESPONSE_FLAGS",
    "RESPONSE_FLAGS_LONG",
    "UPSTREAM_HOST",
    "UPSTREAM_HOST_NAME",
    "UPSTREAM_HOST_NAME_WITHOUT_PORT",
    "UPSTREAM_CLUSTER",
    "UPSTREAM_CLUSTER_RAW",
    "UPSTREAM_LOCAL_ADDRESS",
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_LOCAL_PORT",
    "UPSTREAM_REMOTE_ADDRESS",
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_REMOTE_PORT",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT",
    "UPSTREAM_TLS_CIPHER",
    "UPSTREAM_TLS_VERSION",
    "UPSTREAM_TLS_SESSION_ID",
    "UPSTREAM_PEER_ISSUER",
    "UPSTREAM_PEER_CERT",
    "UPSTREAM_PEER_SUBJECT",
    "UPSTREAM_PEER_URI_SAN",
    "UPSTREAM_PEER_DNS_SAN",
    "UPSTREAM_PEER_IP_SAN",
    "UPSTREAM_LOCAL_URI_SAN",
    "UPSTREAM_LOCAL_DNS_SAN",
    "UPSTREAM_LOCAL_IP_SAN",
    "UPSTREAM_LOCAL_SUBJECT",
    "UPSTREAM_PEER_CERT_V_START",
    "UPSTREAM_PEER_CERT_V_END",
    "UPSTREAM_TRANSPORT_FAILURE_REASON",
    "UPSTREAM_CONNECTION_POOL_READY_DURATION",
    "UPSTREAM_CONNECTION_ID",
    "UPSTREAM_DETECTED_CLOSE_TYPE",
    "UPSTREAM_FILTER_STATE",
    "UPSTREAM_METADATA",
    "DOWNSTREAM_REMOTE_ADDRESS",
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_REMOTE_PORT",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_DIRECT_REMOTE_PORT",
    "DOWNSTREAM_LOCAL_ADDRESS",
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_LOCAL_PORT",
    "DOWNSTREAM_DIRECT_LOCAL_ADDRESS",
    "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_DIRECT_LOCAL_PORT",
    "DOWNSTREAM_LOCAL_URI_SAN",
    "DOWNSTREAM_PEER_URI_SAN",
    "DOWNSTREAM_LOCAL_DNS_SAN",
    "DOWNSTREAM_PEER_DNS_SAN",
    "DOWNSTREAM_LOCAL_IP_SAN",
    "DOWNSTREAM_PEER_IP_SAN",
    "DOWNSTREAM_LOCAL_EMAIL_SAN",
    "DOWNSTREAM_PEER_EMAIL_SAN",
    "DOWNSTREAM_LOCAL_OTHERNAME_SAN",
    "DOWNSTREAM_PEER_OTHERNAME_SAN",
    "DOWNSTREAM_LOCAL_SUBJECT",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_PEER_ISSUER",
    "DOWNSTREAM_TLS_SESSION_ID",
    "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_PEER_FINGERPRINT_256",
    "DOWNSTREAM_PEER_FINGERPRINT_1",
    "DOWNSTREAM_PEER_SERIAL",
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256",
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1",
    "DOWNSTREAM_PEER_CHAIN_SERIALS",
    "DOWNSTREAM_PEER_CERT",
    "DOWNSTREAM_PEER_CERT_V_START",
    "DOWNSTREAM_PEER_CERT_V_END",
    "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
    "DOWNSTREAM_DETECTED_CLOSE_TYPE",
    "CONNECTION_ID",
    "STREAM_ID",
    "REQUESTED_SERVER_NAME",
    "ROUTE_NAME",
    "VIRTUAL_CLUSTER_NAME",
    "HOSTNAME",
    "LOCAL_REPLY_BODY",
    "FILTER_CHAIN_NAME",
    "ACCESS_LOG_TYPE",
    "UNIQUE_ID",
    "TRACE_ID",
    "GRPC_STATUS",
    "GRPC_STATUS_NUMBER",
    "REQ",
    "RESP",
    "TRAILER",
    "REQ_WITHOUT_QUERY",
    "QUERY_PARAM",
    "PATH",
    "DYNAMIC_METADATA",
    "CLUSTER_METADATA",
    "METADATA",
    "FILTER_STATE",
    "ENVIRONMENT",
    "CEL",
];

const ARG_REQUIRED: &[&str] = &[
    "REQ",
    "RESP",
    "TRAILER",
    "REQ_WITHOUT_QUERY",
    "QUERY_PARAM",
    "DYNAMIC_METADATA",
    "CLUSTER_METADATA",
    "UPSTREAM_METADATA",
    "METADATA",
    "FILTER_STATE",
    "UPSTREAM_FILTER_STATE",
    "ENVIRONMENT",
    "CEL",
    "COMMON_DURATION",
];

const ARG_OPTIONAL: &[&str] = &[
    "START_TIME",
    "START_TIME_LOCAL",
    "EMIT_TIME",
    "EMIT_TIME_LOCAL",
    "DOWNSTREAM_PEER_CERT_V_START",
    "DOWNSTREAM_PEER_CERT_V_END",
    "UPSTREAM_PEER_CERT_V_START",
    "UPSTREAM_PEER_CERT_V_END",
    "PATH",
    "GRPC_STATUS",
];

/// Walks an Envoy format string: literal text, `%%` (a literal percent) and
/// `%NAME%`, `%NAME(args)%`, `%NAME(args):LEN%` tokens.
fn format_problems(format: &str) -> Vec<FormatProblem> {
    let mut out = Vec::new();
    let b = format.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'%') {
            i += 2;
            continue;
        }
        let start = i;
        let mut j = i + 1;
        while j < b.len() && (b[j].is_ascii_uppercase() || b[j].is_ascii_digit() || b[j] == b'_') {
            j += 1;
        }
        let name = &format[i + 1..j];
        if name.is_empty() {
            out.push(FormatProblem::Malformed(format!(
                "access log format: a '%' at position {start} starts no command operator \
                 (operators are written %NAME%; write %% for a literal percent)"
            )));
            i += 1;
            continue;
        }
        let mut has_args = false;
        if b.get(j) == Some(&b'(') {
            match format[j..].find(')') {
                Some(close) => {
                    has_args = true;
                    j += close + 1;
                }
                None => {
                    out.push(FormatProblem::Malformed(format!(
                        "access log format: %{name}( at position {start} has no closing ')'"
                    )));
                    break;
                }
            }
        }
        if b.get(j) == Some(&b':') {
            let digits = j + 1;
            let mut k = digits;
            while k < b.len() && b[k].is_ascii_digit() {
                k += 1;
            }
            if k > digits {
                j = k;
            }
        }
        if b.get(j) != Some(&b'%') {
            out.push(FormatProblem::Malformed(format!(
                "access log format: command operator %{name} at position {start} is not closed by \
                 '%'"
            )));
            i = j.max(i + 1);
            continue;
        }
        i = j + 1;
        if !OPERATORS.contains(&name) {
            out.push(FormatProblem::Unknown(format!(
                "access log format: %{name}% is not an Envoy command operator"
            )));
        } else if ARG_REQUIRED.contains(&name) && !has_args {
            out.push(FormatProblem::Malformed(format!(
                "access log format: %{name}% needs an argument, e.g. %{name}(…)%"
            )));
        } else if has_args && !ARG_REQUIRED.contains(&name) && !ARG_OPTIONAL.contains(&name) {
            out.push(FormatProblem::Malformed(format!(
                "access log format: %{name}% takes no argument"
            )));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_model::{Diagnostic, Level};

    use super::*;
    use crate::validate::validate as validate_all;

    const GUIDE_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\"\n%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT%\n%DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%\n\"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\"\n\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

    fn operator(spec: serde_json::Value) -> Vec<Diagnostic> {
        let loaded = sluice_model::load_value(
            "io.yaml",
            json!({"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
                   "metadata": {"name": "io", "namespace": "istio-system"}, "spec": spec}),
        );
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        validate_all(&loaded.resources)
    }

    fn has(d: &[Diagnostic], level: Level, text: &str) -> bool {
        d.iter()
            .any(|d| d.level == level && d.message.contains(text))
    }

    #[test]
    fn format_strings() {
        assert_eq!(format_problems(GUIDE_FORMAT), vec![]);
        let ok = [
            "%START_TIME(%Y/%m/%dT%H:%M:%S%z)%",
            "100%% %RESPONSE_CODE%",
            "%REQ(:PATH):10% %DYNAMIC_METADATA(istio.mixer:status)%",
            "%UPSTREAM_TRANSPORT_FAILURE_REASON% %ROUTE_NAME% %REQUESTED_SERVER_NAME%",
            "plain text",
        ];
        for f in ok {
            assert_eq!(format_problems(f), vec![], "{f}");
        }
        let malformed = [
            "%RESPONSE_CODE",
            "%REQ(:PATH%",
            "% RESPONSE_CODE%",
            "%REQ%",
            "%RESPONSE_CODE(x)%",
        ];
        for f in malformed {
            let p = format_problems(f);
            assert!(
                p.iter().any(|p| matches!(p, FormatProblem::Malformed(_))),
                "{f}: {p:?}"
            );
        }
        let p = format_problems("%RESPONSE_COD%");
        assert!(matches!(p.as_slice(), [FormatProblem::Unknown(m)] if m.contains("RESPONSE_COD")));
    }

    #[test]
    fn durations_and_trust_domains() {
        let ms = Duration::from_millis;
        assert!(check_connect_timeout(ms(10)).is_ok());
        assert!(check_connect_timeout(Duration::from_secs(7200)).is_err());
        assert!(check_connect_timeout(Duration(std::time::Duration::from_micros(500))).is_err());
        assert!(check_duration(Duration(std::time::Duration::from_micros(1500))).is_err());
        for ok in ["cluster.local", "example.org.", "td"] {
            assert!(check_trust_domain(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Cluster.local", "a..b", "-a.b", "a_b.c"] {
            assert!(check_trust_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mesh_config_rules() {
        let cases: &[(serde_json::Value, Level, &str)] = &[
            (
                json!({"trustDomain": "Bad_Domain"}),
                Level::Error,
                "trustDomain: trust domain name",
            ),
            (
                json!({"trustDomainAliases": ["ok.org", "bad domain"]}),
                Level::Error,
                "trustDomainAliases[1], domain `bad domain`",
            ),
            (
                json!({"connectTimeout": "2h"}),
                Level::Error,
                "invalid connect timeout",
            ),
            (
                json!({"accessLogFile": "logs/access.log"}),
                Level::Warning,
                "not an absolute path",
            ),
            (
                json!({"accessLogFormat": "%RESPONSE_CODE"}),
                Level::Error,
                "not closed by '%'",
            ),
            (
                json!({"accessLogEncoding": "JSON", "accessLogFormat": "%RESPONSE_CODE%"}),
                Level::Warning,
                "not a JSON object",
            ),
            (
                json!({"accessLogEncoding": "JSON", "accessLogFormat": "{\"code\": \"%RESPONSE_COD%\"}"}),
                Level::Warning,
                "%RESPONSE_COD% is not an Envoy command operator",
            ),
            (
                json!({"enableTracing": true}),
                Level::Warning,
                "enableTracing is not used by sluice",
            ),
            (
                json!({"enablePrometheusMerge": true}),
                Level::Warning,
                "valid Istio but not used",
            ),
            (
                json!({"acessLogFile": "/dev/stdout"}),
                Level::Warning,
                "did you mean accessLogFile?",
            ),
            (
                json!({"extensionProviders": [{"name": "otel", "opentelemetry": {"service": "o", "port": 4317}}]}),
                Level::Warning,
                "extension provider \"otel\" (opentelemetry) is not used by sluice",
            ),
            (
                json!({"defaultProviders": {"accessLogging": ["otel"]}}),
                Level::Warning,
                "provider \"otel\" is not used by sluice",
            ),
            (
                json!({"pathNormalization": {"normalization": "MERGE_SLASH"}}),
                Level::Error,
                "unknown variant `MERGE_SLASH`, expected one of `DEFAULT`, `NONE`, `BASE`, \
                 `MERGE_SLASHES`, `DECODE_AND_MERGE_SLASHES` (did you mean `MERGE_SLASHES`?)",
            ),
            (
                json!({"pathNormalization": {"normalization": 3}}),
                Level::Error,
                "unknown variant `3`",
            ),
            (
                json!({"pathNormalization": "BASE"}),
                Level::Error,
                "expected struct ProxyPathNormalization",
            ),
            (
                json!({"pathNormalization": {"mode": "BASE"}}),
                Level::Warning,
                "mode is not a field of pathNormalization",
            ),
        ];
        for (mesh, level, text) in cases {
            let d = operator(json!({"meshConfig": mesh}));
            assert!(
                has(&d, *level, text),
                "{mesh}: want {level} {text:?}, got {d:?}"
            );
            let path = d
                .iter()
                .find(|d| d.message.contains(text))
                .and_then(|d| d.path.clone());
            assert!(
                path.is_some_and(|p| p.starts_with("spec.meshConfig.")),
                "{mesh}: findings sit under spec.meshConfig"
            );
        }
    }

    #[test]
    fn every_path_normalization_is_accepted_and_used() {
        for mode in PATH_NORMALIZATIONS {
            let d = operator(json!({"meshConfig": {"pathNormalization": {"normalization": mode}}}));
            assert!(d.is_empty(), "{mode}: {d:?}");
        }
        let d = operator(json!({"meshConfig": {"pathNormalization": {"normalization": "BAD"}}}));
        let path = d.iter().find(|d| d.is_error()).and_then(|d| d.path.clone());
        assert_eq!(
            path.as_deref(),
            Some("spec.meshConfig.pathNormalization.normalization")
        );
    }

    #[test]
    fn guide_mesh_config_is_clean() {
        let d = operator(json!({"meshConfig": {
            "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
            "accessLogFile": "/dev/stdout",
            "accessLogFormat": GUIDE_FORMAT
        }}));
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn bare_mesh_config_paths_have_no_prefix() {
        let loaded = sluice_model::load_str(
            "mesh.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  namespace: istio-system\ndata:\n  mesh: |\n    enableTracing: true\n",
        );
        let d = validate_all(&loaded.resources);
        if let Some(f) = d.iter().find(|d| d.message.contains("enableTracing")) {
            assert_eq!(f.path.as_deref(), Some("enableTracing"));
        }
    }

    #[test]
    fn operator_components() {
        let d = operator(json!({
            "profile": "default",
            "values": {"global": {}},
            "components": {
                "pilot": {"enabled": true},
                "egressGateways": [
                    {"name": "istio-egressgateway", "enabled": true, "label": {"app": "egress"},
                     "k8s": {"replicas": 2, "overlays": [{"kind": "Deployment", "name": "istio-egressgateway",
                        "patches": [{"path": "spec.template.spec.volumes[-1]",
                                     "value": {"name": "c", "secret": {"secretName": "certs"}}},
                                    {"path": "x", "value": {"name": "c", "mountPath": "/etc/certs"}}]}]}},
                    {"name": "Bad_Name"},
                    {"name": "off", "enabled": false}
                ]
            }
        }));
        assert!(
            has(
                &d,
                Level::Info,
                "spec.profile configures how Istio is installed"
            ),
            "{d:?}"
        );
        assert!(has(&d, Level::Info, "spec.values configures"), "{d:?}");
        assert!(has(&d, Level::Info, "component pilot"), "{d:?}");
        assert!(
            has(&d, Level::Info, "--labels app=egress,istio=egressgateway"),
            "{d:?}"
        );
        assert!(
            has(&d, Level::Info, "put the Secret's files in /etc/certs"),
            "{d:?}"
        );
        assert!(has(&d, Level::Info, "k8s settings (replicas)"), "{d:?}");
        assert!(
            has(&d, Level::Info, "mounting Secret certs at /etc/certs"),
            "{d:?}"
        );
        assert!(has(&d, Level::Error, "\"Bad_Name\""), "{d:?}");
        assert!(has(&d, Level::Info, "\"off\" is disabled"), "{d:?}");
        assert!(
            d.iter().all(|d| d.code == "SLC0006" || d.is_error()),
            "{d:?}"
        );
    }
}
