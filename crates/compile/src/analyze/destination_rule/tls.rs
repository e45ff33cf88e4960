//! Upstream TLS of a DestinationRule: SIMPLE/MUTUAL verifies the server (IST0128/IST0129, as
//! Istio's `destinationrule.CaCertificateAnalyzer`), and the mode suits what flows to the host
//! (sluice's SLC0104, SLC0105, SLC0108).

use sluice_model::networking::destination_rule::{ClientTLSMode, ClientTLSSettings, TrafficPolicy};
use sluice_model::networking::{DestinationRule, VirtualService};
use sluice_model::{Diagnostic, Level, Resource};

use super::super::registry::Registry;
use super::super::virtual_service::destinations;
use super::super::{codes, finding, hosts, istio_codes};

pub(super) fn analyze(
    reg: &Registry<'_>,
    dr: &Resource<DestinationRule>,
    host: &str,
    out: &mut Vec<Diagnostic>,
) {
    for (path, port, tls) in tls_settings(&dr.spec) {
        server_verification(dr, host, &path, port, tls, out);
        tls_fits_traffic(reg, dr, host, &path, port, tls, out);
    }
}

/// Every TLS setting of the rule with its path and the port it is limited to.
fn tls_settings(dr: &DestinationRule) -> Vec<(String, Option<u32>, &ClientTLSSettings)> {
    fn policy<'a>(
        base: String,
        tp: &'a TrafficPolicy,
        list: &mut Vec<(String, Option<u32>, &'a ClientTLSSettings)>,
    ) {
        if let Some(tls) = &tp.tls {
            list.push((format!("{base}.tls"), None, tls));
        }
        for (i, pls) in tp.port_level_settings.iter().enumerate() {
            if let Some(tls) = &pls.tls {
                let port = pls.port.map(|p| p.number);
                list.push((format!("{base}.portLevelSettings[{i}].tls"), port, tls));
            }
        }
    }
    let mut list = Vec::new();
    if let Some(tp) = &dr.traffic_policy {
        policy("spec.trafficPolicy".into(), tp, &mut list);
    }
    for (i, s) in dr.subsets.iter().enumerate() {
        if let Some(tp) = &s.traffic_policy {
            policy(format!("spec.subsets[{i}].trafficPolicy"), tp, &mut list);
        }
    }
    list
}

/// IST0128/IST0129: SIMPLE or MUTUAL without a CA to check the server against.
fn server_verification(
    dr: &Resource<DestinationRule>,
    host: &str,
    path: &str,
    port: Option<u32>,
    tls: &ClientTLSSettings,
    out: &mut Vec<Diagnostic>,
) {
    let mode = tls.mode();
    // A credentialName secret carries the CA too, but Istio reads it only for the gateways a
    // rule with workloadSelector applies to; elsewhere it is no CA.
    let credential_ca = tls.credential_name.is_some() && dr.spec.workload_selector.is_some();
    if !matches!(mode, ClientTLSMode::Simple | ClientTLSMode::Mutual)
        || tls.ca_certificates.is_some()
        || credential_ca
        || tls.insecure_skip_verify == Some(true)
    {
        return;
    }
    let mode_name = match mode {
        ClientTLSMode::Simple => "SIMPLE",
        _ => "MUTUAL",
    };
    let trust = " (sluice then verifies the server against the platform trust store, which \
                 honours SSL_CERT_FILE)";
    let (code, message) = match port {
        None => (
            istio_codes::NO_SERVER_CERT_VERIFICATION_DR,
            format!(
                "DestinationRule {} in namespace {} has TLS mode set to {mode_name} but no \
                 caCertificates are set to validate server identity for host: {host}{trust}",
                dr.name(),
                dr.namespace()
            ),
        ),
        Some(p) => (
            istio_codes::NO_SERVER_CERT_VERIFICATION_PORT,
            format!(
                "DestinationRule {} in namespace {} has TLS mode set to {mode_name} but no \
                 caCertificates are set to validate server identity for host: {host} at port {p}{trust}",
                dr.name(),
                dr.namespace()
            ),
        ),
    };
    out.push(finding(
        dr,
        code,
        Level::Warning,
        &format!("{path}.mode"),
        message,
    ));
}

/// sluice's checks that the TLS mode suits what flows to the host.
fn tls_fits_traffic(
    reg: &Registry<'_>,
    dr: &Resource<DestinationRule>,
    host: &str,
    path: &str,
    port: Option<u32>,
    tls: &ClientTLSSettings,
    out: &mut Vec<Diagnostic>,
) {
    match tls.mode() {
        ClientTLSMode::Simple | ClientTLSMode::Mutual => {
            // Where plain HTTP/TCP also goes to that port, the setting does what it says for
            // that traffic, and sluice leaves the passthrough connections alone.
            if let Some((vs, route_path)) = routed(reg, host, port, true)
                && routed(reg, host, port, false).is_none()
            {
                out.push(finding(
                    dr,
                    codes::TLS_ON_PASSTHROUGH,
                    Level::Warning,
                    &format!("{path}.mode"),
                    format!(
                        "this rule originates TLS toward {host}, but VirtualService {}/{} routes \
                         already-encrypted traffic there ({route_path}, TLS passthrough): Envoy \
                         would wrap TLS in TLS and the upstream handshake fails. sluice passes \
                         such connections through untouched and applies this setting only to \
                         plain HTTP/TCP sent to {host}; if there is none, delete the tls block",
                        vs.namespace(),
                        vs.name()
                    ),
                ));
            }
        }
        ClientTLSMode::IstioMutual => {
            if reg.is_external(host, dr.namespace()) {
                out.push(finding(
                    dr,
                    codes::MESH_TLS_TO_EXTERNAL,
                    Level::Error,
                    &format!("{path}.mode"),
                    format!(
                        "ISTIO_MUTUAL toward {host}, which a MESH_EXTERNAL ServiceEntry registers: \
                         an external service holds no mesh certificate, so the handshake cannot \
                         succeed. Use SIMPLE or MUTUAL to originate TLS to it, or DISABLE"
                    ),
                ));
            }
            if reg.is_gateway_service(host)
                && let Some(port) = port
            {
                let listening = reg
                    .active_gateways()
                    .any(|g| g.spec.servers.iter().any(|s| s.port.number == port));
                if !listening {
                    out.push(finding(
                        dr,
                        codes::NO_GATEWAY_SERVER_FOR_PORT,
                        Level::Error,
                        &format!("{path}.mode"),
                        format!(
                            "mesh mTLS toward the egress gateway on port {port}, but no Gateway \
                             server of that gateway listens on port {port}: connections there are \
                             refused"
                        ),
                    ));
                }
            }
        }
        ClientTLSMode::Disable => {}
    }
}

/// A route to `host` (on `port`, if given) that is a TLS passthrough route (`tls`) or a plain
/// HTTP/TCP one (`!tls`).
fn routed<'a>(
    reg: &Registry<'a>,
    host: &str,
    port: Option<u32>,
    tls: bool,
) -> Option<(&'a Resource<VirtualService>, String)> {
    reg.resources.virtual_services.iter().find_map(|vs| {
        destinations(&vs.spec)
            .into_iter()
            .filter(|d| d.tls == tls)
            .find(|d| {
                hosts::qualify(&d.dest.host, vs.namespace()) == host
                    && (port.is_none()
                        || d.dest.port.map(|p| p.number) == port
                        || d.dest.port.is_none())
            })
            .map(|d| (vs, d.path))
    })
}
