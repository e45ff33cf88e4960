//! Sidecar validation (Istio's `ValidateSidecar`).

use std::collections::{BTreeMap, BTreeSet};

use sluice_model::networking::Sidecar;
use sluice_model::networking::gateway::ServerTLSMode;
use sluice_model::networking::sidecar::{
    CaptureMode, IstioEgressListener, IstioIngressListener, OutboundTrafficPolicy,
    OutboundTrafficPolicyMode, SidecarPort,
};

use super::Report;
use super::destination_rule::check_connection_pool;
use super::gateway::{check_server_tls, mode_name};
use super::rules;
use super::virtual_service::check_destination;

pub(crate) fn validate(r: &mut Report<'_, Sidecar>) {
    let sc = &r.resource().spec;
    let namespace = r.resource().namespace().to_owned();

    if let Some(sel) = &sc.workload_selector {
        let errs = rules::workload_selector_errors(&sel.labels);
        if !errs.is_empty() {
            // Istio stops here: the selector must be fixed first.
            for e in errs {
                r.error("spec.workloadSelector.labels", e);
            }
            return;
        }
        if sel.labels.is_empty() {
            r.warning(
                "spec.workloadSelector",
                format!(
                    "sidecar: {}, will be applied to all services in namespace",
                    rules::SELECTOR_WITHOUT_LABELS
                ),
            );
        }
    }

    if sc.egress.is_empty()
        && sc.ingress.is_empty()
        && sc.outbound_traffic_policy.is_none()
        && sc.inbound_connection_pool.is_none()
    {
        r.error("spec", "sidecar: empty configuration provided");
        return;
    }

    let mut ports = BTreeSet::new();
    for (i, ingress) in sc.ingress.iter().enumerate() {
        check_ingress(r, &format!("spec.ingress[{i}]"), ingress, &mut ports);
    }
    if let Some(pool) = &sc.inbound_connection_pool {
        check_connection_pool(r, "spec.inboundConnectionPool", pool);
    }

    let mut ports = BTreeSet::new();
    let mut sockets = BTreeSet::new();
    let mut catch_all_found = false;
    let last = sc.egress.len().saturating_sub(1);
    for (i, egress) in sc.egress.iter().enumerate() {
        let path = format!("spec.egress[{i}]");
        match &egress.port {
            None => {
                if catch_all_found {
                    r.error(
                        &path,
                        "sidecar: egress can have only one listener with empty port",
                    );
                    continue;
                }
                if i == last {
                    catch_all_found = true;
                } else {
                    r.error(
                        &path,
                        "sidecar: the egress listener with empty port should be the last listener \
                         in the list",
                    );
                }
            }
            Some(port) => {
                if port.target_port.is_some_and(|t| t > 0) {
                    r.error(
                        &format!("{path}.port.targetPort"),
                        "targetPort has no impact on Sidecars",
                    );
                }
                check_egress_port(r, &path, port, egress);
                let bind = egress.bind.as_deref().unwrap_or_default();
                if port.number.unwrap_or(0) == 0 {
                    if !sockets.insert(bind.to_owned()) {
                        r.error(
                            &format!("{path}.bind"),
                            "sidecar: unix domain socket values for listeners must be unique",
                        );
                    }
                } else if !ports.insert(port.number.unwrap_or(0)) {
                    r.error(
                        &format!("{path}.port.number"),
                        "sidecar: ports on IP bound listeners must be unique",
                    );
                }
            }
        }
        check_egress_hosts(r, &path, egress, &namespace);
    }

    if let Some(policy) = &sc.outbound_traffic_policy {
        check_outbound_traffic_policy(r, policy);
    }
}

fn check_port_number_name<T>(r: &mut Report<'_, T>, path: &str, port: &SidecarPort) {
    if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty())
        && let Err(e) = rules::check_port_name(name)
    {
        r.error(&format!("{path}.name"), e);
    }
}

fn check_ingress(
    r: &mut Report<'_, Sidecar>,
    path: &str,
    ingress: &IstioIngressListener,
    ports: &mut BTreeSet<u32>,
) {
    let port = &ingress.port;
    let port_path = format!("{path}.port");
    if port.target_port.is_some_and(|t| t > 0) {
        r.error(
            &format!("{port_path}.targetPort"),
            "targetPort has no impact on Sidecars",
        );
    }
    check_port_number_name(r, &port_path, port);
    let number = port.number.unwrap_or(0);
    if let Err(e) = rules::check_port(i64::from(number)) {
        r.error(&format!("{port_path}.number"), e);
    }
    if let Some(bind) = ingress.bind.as_deref().filter(|b| !b.is_empty())
        && let Err(e) = rules::check_ip(bind)
    {
        r.error(&format!("{path}.bind"), e);
    }
    if !ports.insert(number) {
        r.error(
            &format!("{port_path}.number"),
            "sidecar: ports on IP bound listeners must be unique",
        );
    }

    if let Some(endpoint) = ingress
        .default_endpoint
        .as_deref()
        .filter(|e| !e.is_empty())
    {
        check_default_endpoint(r, &format!("{path}.defaultEndpoint"), endpoint);
    }

    if let Some(tls) = &ingress.tls {
        let tls_path = format!("{path}.tls");
        if !tls.subject_alt_names.is_empty() {
            r.error(
                &tls_path,
                "sidecar: subjectAltNames is not supported in ingress tls",
            );
        }
        if tls.https_redirect == Some(true) {
            r.error(&tls_path, "sidecar: httpsRedirect is not supported");
        }
        if tls
            .credential_name
            .as_deref()
            .is_some_and(|c| !c.is_empty())
        {
            r.error(
                &tls_path,
                "sidecar: credentialName is not currently supported",
            );
        }
        if !tls.credential_names.is_empty() {
            r.error(
                &tls_path,
                "sidecar: credentialNames is not currently supported",
            );
        }
        if !tls.tls_certificates.is_empty() {
            r.error(
                &tls_path,
                "sidecar: tlsCertificates is not currently supported",
            );
        }
        let mode = tls.mode();
        if matches!(
            mode,
            ServerTLSMode::IstioMutual | ServerTLSMode::AutoPassthrough
        ) {
            r.error(
                &format!("{tls_path}.mode"),
                format!(
                    "configuration is invalid: cannot set mode to {} in sidecar ingress tls",
                    mode_name(mode)
                ),
            );
        }
        check_server_tls(r, &tls_path, tls);
    }

    if let Some(pool) = &ingress.connection_pool {
        let pool_path = format!("{path}.connectionPool");
        check_connection_pool(r, &pool_path, pool);
        if pool.http.is_some() && !port.protocol.is_some_and(|p| p.is_http()) {
            r.warning(
                &format!("{pool_path}.http"),
                format!(
                    "sidecar: HTTP connection pool settings are configured for port {number} ({:?}) \
                     but its protocol is not HTTP ({}); only TCP settings will apply",
                    port.name.as_deref().unwrap_or_default(),
                    port.protocol.map_or("", |p| p.as_str())
                ),
            );
        }
    }
}

/// Go's `net.SplitHostPort`: `host:port`, `[v6]:port`, `:port`.
fn split_host_port(addr: &str) -> Result<(&str, &str), String> {
    let missing = || format!("address {addr}: missing port in address");
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("address {addr}: missing ']' in address"))?;
        let port = after.strip_prefix(':').ok_or_else(missing)?;
        (host, port)
    } else {
        let (host, port) = addr.rsplit_once(':').ok_or_else(missing)?;
        if host.contains(':') {
            return Err(format!("address {addr}: too many colons in address"));
        }
        (host, port)
    };
    Ok((host, port))
}

fn check_default_endpoint(r: &mut Report<'_, Sidecar>, path: &str, endpoint: &str) {
    if let Some(socket) = endpoint.strip_prefix(rules::UNIX_ADDRESS_PREFIX) {
        if let Err(e) = rules::check_unix_address(socket) {
            r.error(path, e);
        }
        return;
    }
    let (host, port) = match split_host_port(endpoint) {
        Ok(hp) => hp,
        Err(e) => {
            r.error(path, e);
            ("", "")
        }
    };
    if !host.is_empty() && !matches!(host, "127.0.0.1" | "0.0.0.0" | "::1" | "::") {
        r.error(
            path,
            "sidecar: defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,[::1]:port,\
             [::]:port,unix://filepath or unset",
        );
    }
    match port.parse::<i64>() {
        Ok(n) => {
            if let Err(e) = rules::check_port(n) {
                r.error(path, e);
            }
        }
        Err(_) => r.error(
            path,
            format!(
                "sidecar: defaultEndpoint port ({port}) is not a number: strconv.Atoi: parsing \
                 {port:?}: invalid syntax"
            ),
        ),
    }
}

fn check_egress_port(
    r: &mut Report<'_, Sidecar>,
    path: &str,
    port: &SidecarPort,
    egress: &IstioEgressListener,
) {
    let port_path = format!("{path}.port");
    check_port_number_name(r, &port_path, port);
    let bind = egress.bind.as_deref().unwrap_or_default();
    let number = port.number.unwrap_or(0);
    if number == 0 {
        match bind.strip_prefix(rules::UNIX_ADDRESS_PREFIX) {
            None => r.error(
                &format!("{path}.bind"),
                "sidecar: ports with 0 value must have a unix domain socket bind address",
            ),
            Some(socket) => {
                if let Err(e) = rules::check_unix_address(socket) {
                    r.error(&format!("{path}.bind"), e);
                }
            }
        }
        if !matches!(
            egress.capture_mode,
            None | Some(CaptureMode::Default | CaptureMode::None)
        ) {
            r.error(
                &format!("{path}.captureMode"),
                "sidecar: captureMode must be DEFAULT/NONE for unix domain socket listeners",
            );
        }
    } else {
        if let Err(e) = rules::check_port(i64::from(number)) {
            r.error(&format!("{port_path}.number"), e);
        }
        if !bind.is_empty()
            && let Err(e) = rules::check_ip(bind)
        {
            r.error(&format!("{path}.bind"), e);
        }
    }
}

fn check_egress_hosts(
    r: &mut Report<'_, Sidecar>,
    path: &str,
    egress: &IstioEgressListener,
    namespace: &str,
) {
    if egress.hosts.is_empty() {
        r.error(
            &format!("{path}.hosts"),
            "sidecar: egress listener must contain at least one host",
        );
        return;
    }
    // namespace -> imported names, to spot hosts that an earlier entry already imports.
    let mut imported: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (i, host) in egress.hosts.iter().enumerate() {
        let host_path = format!("{path}.hosts[{i}]");
        if let Some((ns, name)) = host.split_once('/') {
            // `~ns/…` entries exclude rather than import: they never duplicate an import.
            if ns == "~" || !ns.starts_with('~') {
                let ns = if ns == "." { namespace } else { ns };
                let names = imported.entry(ns.to_owned()).or_default();
                let duplicate = if name == "*" {
                    !names.is_empty()
                } else {
                    names.contains(name) || names.contains("*")
                };
                if duplicate && ns != "~" {
                    r.warning(&host_path, format!("duplicated egress host: {host}"));
                }
                names.insert(name.to_owned());
            }
        }
        for e in rules::sidecar_host_errors(host) {
            r.error(&host_path, e);
        }
    }
    if imported.get("*").is_some_and(|names| names.contains("*")) {
        let others = imported
            .keys()
            .filter(|ns| *ns != "*" && *ns != "~")
            .count();
        if others > 0 {
            r.warning(
                &format!("{path}.hosts"),
                "`*/*` host select all resources, no other hosts can be added",
            );
        }
    }
}

fn check_outbound_traffic_policy(r: &mut Report<'_, Sidecar>, policy: &OutboundTrafficPolicy) {
    let Some(proxy) = &policy.egress_proxy else {
        return;
    };
    let path = "spec.outboundTrafficPolicy.egressProxy";
    if policy.mode() != OutboundTrafficPolicyMode::AllowAny {
        r.error(
            path,
            "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode",
        );
        return;
    }
    if let Err(e) = rules::check_fqdn(&proxy.host) {
        r.error(&format!("{path}.host"), e);
    }
    if proxy.port.is_none() {
        r.error(path, "sidecar: egress_proxy port must be non-nil");
        return;
    }
    check_destination(r, path, proxy);
}
