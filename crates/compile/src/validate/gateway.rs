//! Gateway validation (Istio's `ValidateGateway`, `validateServer`, `validateTLSOptions`).

use std::collections::BTreeSet;

use sluice_model::networking::Gateway;
use sluice_model::networking::gateway::{
    Port, Server, ServerTLSMode, ServerTLSSettings, TLSProtocol,
};

use super::Report;
use super::rules;

/// Annotation Istio puts on Gateways it derives from Kubernetes Gateway API resources; such
/// gateways may use names and `~/` hosts that users cannot write.
const GATEWAY_SEMANTICS_ANNOTATION: &str = "internal.istio.io/gateway-semantics";

pub(crate) fn validate(r: &mut Report<'_, Gateway>) {
    let gw = &r.resource().spec;
    let meta = &r.resource().meta;
    let gateway_semantics = meta
        .annotations
        .get(GATEWAY_SEMANTICS_ANNOTATION)
        .is_some_and(|v| v == "gateway");
    let name = meta.name.clone();

    if !rules::is_dns1123_label(&name) && !gateway_semantics {
        r.error("metadata.name", format!("invalid gateway name: {name:?}"));
    }
    if gw.servers.is_empty() {
        r.error("spec.servers", "gateway must have at least one server");
    }
    for (i, server) in gw.servers.iter().enumerate() {
        check_server(r, &format!("spec.servers[{i}]"), server, gateway_semantics);
    }

    let mut port_names = BTreeSet::new();
    for (i, server) in gw.servers.iter().enumerate() {
        let path = format!("spec.servers[{i}]");
        if !port_names.insert(server.port.name.as_str()) {
            r.error(
                &format!("{path}.port.name"),
                format!(
                    "port names in servers must be unique: duplicate name {}",
                    server.port.name
                ),
            );
        }
        let https_redirect = server
            .tls
            .as_ref()
            .is_some_and(|t| t.https_redirect == Some(true));
        if !server.port.protocol.is_http() && https_redirect {
            r.warning(
                &format!("{path}.tls.httpsRedirect"),
                "tls.httpsRedirect should only be used with http servers",
            );
        }
    }
}

/// How Go prints the `Port` proto in Istio's messages.
fn port_text(port: &Port) -> String {
    format!(
        "number:{} protocol:{:?} name:{:?}",
        port.number,
        port.protocol.as_str(),
        port.name
    )
}

fn check_server(r: &mut Report<'_, Gateway>, path: &str, server: &Server, gateway_semantics: bool) {
    if server.hosts.is_empty() {
        r.error(
            &format!("{path}.hosts"),
            "server config must contain at least one host",
        );
    }
    for (i, host) in server.hosts.iter().enumerate() {
        // Gateways Istio derives from the Gateway API use `~/host` for "no routes attached".
        let errs = match host.strip_prefix("~/") {
            Some(rest) if gateway_semantics => rules::gateway_host_errors(&format!("*/{rest}")),
            _ => rules::gateway_host_errors(host),
        };
        for e in errs {
            r.error(&format!("{path}.hosts[{i}]"), e);
        }
    }

    // validateServerPort
    let port = &server.port;
    let bind = server.bind.as_deref().unwrap_or_default();
    let unix_bind = bind.starts_with(rules::UNIX_ADDRESS_PREFIX);
    let mut port_ok = true;
    if (port.number > 0 || !unix_bind)
        && let Err(e) = rules::check_port(i64::from(port.number))
    {
        r.error(&format!("{path}.port.number"), e);
        port_ok = false;
    }
    if port.target_port.is_some_and(|t| t > 0) {
        r.error(
            &format!("{path}.port.targetPort"),
            "targetPort has no impact on Gateways",
        );
        port_ok = false;
    }
    if port.name.is_empty() {
        r.error(
            &format!("{path}.port.name"),
            format!("port name must be set: {}", port_text(port)),
        );
        port_ok = false;
    }

    // validateServerBind
    if let Some(socket) = bind.strip_prefix(rules::UNIX_ADDRESS_PREFIX) {
        if let Err(e) = rules::check_unix_address(socket) {
            r.error(&format!("{path}.bind"), e);
        }
        if port.number != 0 {
            r.error(
                &format!("{path}.port.number"),
                format!(
                    "port number must be 0 for unix domain socket: {}",
                    port_text(port)
                ),
            );
        }
    } else if !bind.is_empty()
        && let Err(e) = rules::check_ip(bind)
    {
        r.error(&format!("{path}.bind"), e);
    }

    if let Some(tls) = &server.tls {
        check_server_tls(r, &format!("{path}.tls"), tls);
    }

    if port_ok {
        let protocol = port.protocol;
        match &server.tls {
            None if protocol.is_tls() => r.error(
                &format!("{path}.tls"),
                "server must have TLS settings for HTTPS/TLS protocols",
            ),
            Some(tls) if !protocol.is_tls() => {
                let tls_path = format!("{path}.tls");
                if protocol.is_http() {
                    // Only a redirect (which keeps the default PASSTHROUGH mode) is allowed.
                    let passthrough = matches!(
                        tls.mode(),
                        ServerTLSMode::Passthrough | ServerTLSMode::AutoPassthrough
                    );
                    let has_files = [
                        &tls.ca_certificates,
                        &tls.private_key,
                        &tls.server_certificate,
                    ]
                    .into_iter()
                    .any(|f| f.as_deref().is_some_and(|s| !s.is_empty()));
                    if !passthrough || has_files {
                        r.error(
                            &tls_path,
                            "server cannot have TLS settings for plain text HTTP ports",
                        );
                    }
                } else {
                    r.error(
                        &tls_path,
                        "server cannot have TLS settings for non HTTPS/TLS ports",
                    );
                }
            }
            _ => {}
        }
    }
}

pub(crate) fn mode_name(mode: ServerTLSMode) -> &'static str {
    match mode {
        ServerTLSMode::Passthrough => "PASSTHROUGH",
        ServerTLSMode::Simple => "SIMPLE",
        ServerTLSMode::Mutual => "MUTUAL",
        ServerTLSMode::AutoPassthrough => "AUTO_PASSTHROUGH",
        ServerTLSMode::IstioMutual => "ISTIO_MUTUAL",
        ServerTLSMode::OptionalMutual => "OPTIONAL_MUTUAL",
    }
}

fn set(field: &Option<String>) -> bool {
    field.as_deref().is_some_and(|s| !s.is_empty())
}

/// Istio's `validateTLSOptions`, for Gateway servers and Sidecar ingress listeners.
pub(crate) fn check_server_tls<T>(r: &mut Report<'_, T>, path: &str, tls: &ServerTLSSettings) {
    let field = |f: &str| format!("{path}.{f}");
    if matches!(
        tls.min_protocol_version,
        Some(TLSProtocol::TlsV1_0 | TLSProtocol::TlsV1_1)
    ) && tls.cipher_suites.is_empty()
    {
        r.warning(
            &field("minProtocolVersion"),
            "TLS version below TLSV1_2 require setting compatible ciphers as by default they no \
             longer include compatible ciphers.",
        );
    }

    let mut valid = BTreeSet::new();
    let mut invalid = BTreeSet::new();
    let mut duplicate = BTreeSet::new();
    for cs in &tls.cipher_suites {
        if !rules::is_valid_cipher_suite(cs) {
            invalid.insert(cs.as_str());
        } else if !valid.insert(cs.as_str()) {
            duplicate.insert(cs.as_str());
        }
    }
    let list = |s: &BTreeSet<&str>| s.iter().copied().collect::<Vec<_>>().join(" ");
    if !invalid.is_empty() {
        r.warning(
            &field("cipherSuites"),
            format!("ignoring invalid cipher suites: [{}]", list(&invalid)),
        );
    }
    if !duplicate.is_empty() {
        r.warning(
            &field("cipherSuites"),
            format!("ignoring duplicate cipher suites: [{}]", list(&duplicate)),
        );
    }

    let mode = tls.mode();
    if mode == ServerTLSMode::IstioMutual {
        // ISTIO_MUTUAL uses the workload identity; certificate fields make no sense.
        if set(&tls.server_certificate) {
            r.error(
                &field("serverCertificate"),
                "ISTIO_MUTUAL TLS cannot have associated server certificate",
            );
        }
        if set(&tls.private_key) {
            r.error(
                &field("privateKey"),
                "ISTIO_MUTUAL TLS cannot have associated private key",
            );
        }
        if set(&tls.ca_certificates) {
            r.error(
                &field("caCertificates"),
                "ISTIO_MUTUAL TLS cannot have associated CA bundle",
            );
        }
        if set(&tls.credential_name) {
            r.error(
                &field("credentialName"),
                "ISTIO_MUTUAL TLS cannot have associated credentialName",
            );
        }
        return;
    }

    if matches!(
        mode,
        ServerTLSMode::Passthrough | ServerTLSMode::AutoPassthrough
    ) && (set(&tls.ca_crl)
        || set(&tls.server_certificate)
        || set(&tls.private_key)
        || set(&tls.ca_certificates)
        || set(&tls.credential_name))
    {
        r.warning(
            path,
            format!(
                "{} mode does not use certificates, they will be ignored",
                mode_name(mode)
            ),
        );
    }

    let terminating = matches!(
        mode,
        ServerTLSMode::Simple | ServerTLSMode::Mutual | ServerTLSMode::OptionalMutual
    );
    // With a credential (one or several names) the certificates come from a secret.
    if terminating && (set(&tls.credential_name) || !tls.credential_names.is_empty()) {
        return;
    }
    // `tlsCertificates` lists the server certificate/key pairs in place of the single fields.
    let has_cert_list = !tls.tls_certificates.is_empty();
    match mode {
        ServerTLSMode::Simple if !has_cert_list => {
            if !set(&tls.server_certificate) {
                r.error(path, "SIMPLE TLS requires a server certificate");
            }
            if !set(&tls.private_key) {
                r.error(path, "SIMPLE TLS requires a private key");
            }
        }
        ServerTLSMode::Mutual | ServerTLSMode::OptionalMutual => {
            if !has_cert_list {
                if !set(&tls.server_certificate) {
                    r.error(path, "MUTUAL TLS requires a server certificate");
                }
                if !set(&tls.private_key) {
                    r.error(path, "MUTUAL TLS requires a private key");
                }
            }
            let ca_in_list = tls.tls_certificates.iter().any(|c| set(&c.ca_certificates));
            if !set(&tls.ca_certificates) && !ca_in_list {
                r.error(path, "MUTUAL TLS requires a client CA bundle");
            }
        }
        _ => {}
    }
    if set(&tls.ca_crl) {
        if set(&tls.credential_name) {
            r.error(
                &field("caCrl"),
                "CRL is not supported with credentialName. CRL has to be specified in the credential",
            );
        }
        if mode == ServerTLSMode::Simple {
            r.error(&field("caCrl"), "CRL is not supported with SIMPLE TLS");
        }
    }
}
