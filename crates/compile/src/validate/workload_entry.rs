//! WorkloadEntry validation (Istio's `ValidateWorkloadEntry`). The same rules check the
//! `endpoints` of a STATIC ServiceEntry, with the service's port names known.

use std::collections::BTreeSet;

use sluice_model::networking::WorkloadEntry;

use super::Report;
use super::rules;

pub(crate) fn validate(r: &mut Report<'_, WorkloadEntry>) {
    let we = r.resource().spec.clone();
    check_workload_entry(r, "spec", &we, None, true);
}

/// Istio's `validateWorkloadEntry`. `base` is the entry's path (`spec`, or
/// `spec.endpoints[2]`); `service_ports` are the port names of the enclosing ServiceEntry;
/// `allow_fqdn` is false where only IP addresses (or Unix sockets) are allowed (STATIC).
pub(crate) fn check_workload_entry<T>(
    r: &mut Report<'_, T>,
    base: &str,
    we: &WorkloadEntry,
    service_ports: Option<&BTreeSet<&str>>,
    allow_fqdn: bool,
) {
    let addr = we.address.as_deref().unwrap_or_default();
    let addr_path = format!("{base}.address");
    if addr.is_empty() {
        match we.network.as_deref().filter(|n| !n.is_empty()) {
            None => {
                r.error(base, "address is required");
                return;
            }
            Some(network) => r.warning(
                &format!("{base}.network"),
                format!("address is unset with network {network:?}"),
            ),
        }
    }

    let mut unix_endpoint = false;
    if let Some(path) = addr.strip_prefix(rules::UNIX_ADDRESS_PREFIX) {
        unix_endpoint = true;
        if let Err(e) = rules::check_unix_address(path) {
            r.error(&addr_path, e);
        }
        if !we.ports.is_empty() {
            r.error(
                &format!("{base}.ports"),
                format!("unix endpoint {addr} must not include ports"),
            );
        }
    } else if !addr.is_empty() && !rules::is_valid_ip(addr) {
        if !allow_fqdn {
            r.error(
                &addr_path,
                format!("endpoint address {addr:?} is not a valid IP address"),
            );
        } else if rules::check_fqdn(addr).is_err() {
            r.error(
                &addr_path,
                format!("endpoint address {addr:?} is not a valid FQDN or an IP address"),
            );
        }
    }

    check_endpoint_ports(r, base, we, service_ports);
    for e in rules::label_errors(&we.labels) {
        r.error(&format!("{base}.labels"), e);
    }
    if unix_endpoint && service_ports.is_some_and(|p| p.len() != 1) {
        r.error(base, "exactly 1 service port required for unix endpoints");
    }
}

/// The `ports` map of an endpoint: names the service defines, valid names, valid numbers.
pub(crate) fn check_endpoint_ports<T>(
    r: &mut Report<'_, T>,
    base: &str,
    we: &WorkloadEntry,
    service_ports: Option<&BTreeSet<&str>>,
) {
    for (name, port) in &we.ports {
        let path = format!("{base}.ports.{name}");
        if service_ports.is_some_and(|p| !p.contains(name.as_str())) {
            r.error(
                &path,
                format!("endpoint port {port} is not defined by the service entry"),
            );
        }
        if let Err(e) = rules::check_port_name(name) {
            r.error(&path, e);
        }
        if let Err(e) = rules::check_port(i64::from(*port)) {
            r.error(&path, e);
        }
    }
}
