//! Rules shared by several kinds: host names, ports, protocols, labels, `exportTo`, addresses,
//! regexes, percentages and durations.
//!
//! Each rule follows Istio's webhook (`pkg/config/validation`, `pkg/config/labels`,
//! `pkg/config/host`, `pkg/config/visibility`) and returns Istio's own message, so that users
//! who search for the text find Istio's documentation. Functions that can find one problem
//! return `Result<(), String>`; those that can find several return `Vec<String>` (empty when
//! the value is fine).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sluice_model::networking::service_entry::Protocol;
use sluice_model::values::Duration;

/// Longest DNS-1123 label.
pub const DNS1123_LABEL_MAX_LENGTH: usize = 63;
/// Longest DNS name.
pub const DNS_NAME_MAX_LENGTH: usize = 255;
/// Longest DNS prefix of a label key (`example.com/` in `example.com/name`).
const LABEL_KEY_PREFIX_MAX_LENGTH: usize = 253;
/// Longest regex Istio accepts (an approximation of Envoy's RE2 program-size limit).
pub const MAX_REGEX_LENGTH: usize = 1024;
/// Prefix of a Unix domain socket address (`unix:///var/run/app.sock`).
pub const UNIX_ADDRESS_PREFIX: &str = "unix://";

// ---------------------------------------------------------------------------------------------
// DNS names
// ---------------------------------------------------------------------------------------------

/// `[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?` without the length check.
fn is_label_shape(value: &str) -> bool {
    let b = value.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        }
        _ => false,
    }
}

/// A DNS label (RFC 1123): letters, digits and inner `-`, at most 63 characters. Istio accepts
/// upper-case letters too.
pub fn is_dns1123_label(value: &str) -> bool {
    value.len() <= DNS1123_LABEL_MAX_LENGTH && is_label_shape(value)
}

/// A DNS label that may also be `*`, or start with `*` or `*-` (`*foo`, `*-foo`).
pub fn is_wildcard_dns1123_label(value: &str) -> bool {
    if value.len() > DNS1123_LABEL_MAX_LENGTH {
        return false;
    }
    if value == "*" {
        return true;
    }
    let rest = value
        .strip_prefix("*-")
        .or_else(|| value.strip_prefix('*'))
        .unwrap_or(value);
    is_label_shape(rest)
}

/// Istio's `CheckDNS1123Preconditions`: not empty, at most 255 characters.
pub fn check_dns1123_preconditions(name: &str) -> Result<(), String> {
    if name.len() > DNS_NAME_MAX_LENGTH {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    Ok(())
}

/// Istio's `ValidateDNS1123Labels`: every dot-separated label is a DNS label (a trailing dot
/// is allowed) and the top-level label is not all digits.
pub fn check_dns1123_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let tld = parts.last().copied().unwrap_or_default();
    if is_go_atoi(tld) {
        return Err(format!(
            "domain name {domain:?} invalid (top level domain {tld:?} cannot be all-numeric)"
        ));
    }
    let last = parts.len() - 1;
    for (i, label) in parts.iter().enumerate() {
        if i == last && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "domain name {domain:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    Ok(())
}

/// Whether Go's `strconv.Atoi` accepts the string (optional sign, then decimal digits that fit
/// an int64).
fn is_go_atoi(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) && s.parse::<i64>().is_ok()
}

/// Istio's `ValidateFQDN`: a DNS name without wildcards.
pub fn check_fqdn(host: &str) -> Result<(), String> {
    check_dns1123_preconditions(host)?;
    check_dns1123_labels(host)
}

/// Istio's `ValidateWildcardDomain`: a DNS name whose first label may be a wildcard (`*`,
/// `*.example.com`; also `*foo.example.com`, which some kinds reject separately with
/// [`check_partial_wildcard`]).
pub fn check_wildcard_domain(host: &str) -> Result<(), String> {
    check_dns1123_preconditions(host)?;
    let (first, rest) = match host.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (host, None),
    };
    if !is_wildcard_dns1123_label(first) {
        return Err(format!(
            "domain name {host:?} invalid (label {first:?} invalid)"
        ));
    }
    match rest {
        // Istio names only `rest` here; naming the whole host tells the user which one it is.
        Some(rest) => check_dns1123_labels(rest).map_err(|_| labels_error(host, rest)),
        None => Ok(()),
    }
}

/// The message of [`check_dns1123_labels`] for `labels`, naming the whole `host` they are
/// part of.
fn labels_error(host: &str, labels: &str) -> String {
    let parts: Vec<&str> = labels.split('.').collect();
    let tld = parts.last().copied().unwrap_or_default();
    if is_go_atoi(tld) {
        return format!(
            "domain name {host:?} invalid (top level domain {tld:?} cannot be all-numeric)"
        );
    }
    // A trailing empty label (`istio.io.`) is allowed.
    let last = parts.len() - 1;
    let allowed = |i: usize, l: &str| (i == last && l.is_empty()) || is_dns1123_label(l);
    let bad = parts
        .iter()
        .enumerate()
        .find(|(i, l)| !allowed(*i, l))
        .map(|(_, l)| *l)
        .unwrap_or_default();
    format!("domain name {host:?} invalid (label {bad:?} invalid)")
}

/// Istio's `ValidateWildcardDomainForVirtualServiceBoundToGateway`: as
/// [`check_wildcard_domain`], but an SNI host may also be one of Istio's generated
/// `outbound_.<port>_.<subset>_.<host>` names.
pub fn check_wildcard_domain_for_gateway(sni: bool, host: &str) -> Result<(), String> {
    check_dns1123_preconditions(host)?;
    let first = host.split('.').next().unwrap_or_default();
    if sni && first == "outbound_" {
        // Istio: regexp "outbound_.([0-8].*).*" matched anywhere in the name.
        let matches = host.match_indices("outbound_").any(|(i, m)| {
            let after = &host[i + m.len()..];
            let mut chars = after.chars();
            chars.next().is_some() && chars.next().is_some_and(|c| ('0'..='8').contains(&c))
        });
        if !matches {
            return Err(format!(
                "domain name {host:?} invalid (label {first:?} invalid)"
            ));
        }
        return Ok(());
    }
    check_wildcard_domain(host)
}

/// Istio's `ValidatePartialWildCard`: a `*` is only allowed as the whole host or as a leading
/// `*.` label.
pub fn check_partial_wildcard(host: &str) -> Result<(), String> {
    if host.contains('*') && host.len() != 1 && !host.starts_with("*.") {
        return Err(format!("partial wildcard {host:?} not allowed"));
    }
    Ok(())
}

/// The `dnsName` part of a Gateway server host or Sidecar egress host (Istio's
/// `validateSidecarOrGatewayHostnamePart`): an FQDN or wildcard (`*`, `*.example.com`), never a
/// short name or partial wildcard; a Gateway also accepts an IP address.
fn hostname_part_errors(hostname: &str, is_gateway: bool) -> Vec<String> {
    let mut errs = Vec::new();
    if hostname != "*" && !hostname.contains('.') {
        errs.push("short names (non FQDN) are not allowed".to_owned());
    }
    if let Err(e) = check_wildcard_domain(hostname) {
        if !is_gateway {
            errs.push(e.clone());
        }
        if !is_valid_ip(hostname) {
            errs.push(e);
        }
    }
    if let Err(e) = check_partial_wildcard(hostname) {
        errs.push(e);
    }
    errs
}

/// Istio's `ValidateNamespaceSlashWildcardHostname` for `Gateway.servers[].hosts`:
/// `[namespace/]dnsName`, where the namespace is `*`, `.` or a DNS label.
pub fn gateway_host_errors(host: &str) -> Vec<String> {
    namespace_host_errors(host, true)
}

/// Istio's `ValidateNamespaceSlashWildcardHostname` for `Sidecar.egress[].hosts`:
/// `namespace/dnsName`, where the namespace is `*`, `.`, `~`, a DNS label, or `~` followed by
/// a DNS label (an exclusion).
pub fn sidecar_host_errors(host: &str) -> Vec<String> {
    namespace_host_errors(host, false)
}

fn namespace_host_errors(host: &str, is_gateway: bool) -> Vec<String> {
    let Some((ns, name)) = host.split_once('/') else {
        if is_gateway {
            return hostname_part_errors(host, true);
        }
        return vec!["host must be of form namespace/dnsName".to_owned()];
    };
    let mut errs = Vec::new();
    if ns.is_empty() || name.is_empty() {
        errs.push("config namespace and dnsName in host entry cannot be empty".to_owned());
    }
    let special = if is_gateway {
        matches!(ns, "*" | ".")
    } else {
        // `~` imports nothing; `~ns` excludes namespace `ns` from a wider import.
        matches!(ns, "*" | "." | "~") || ns.strip_prefix('~').is_some_and(is_dns1123_label)
    };
    if !special && !is_dns1123_label(ns) {
        let kind = if is_gateway { "gateway" } else { "sidecar" };
        errs.push(format!("invalid namespace value {ns:?} in {kind}"));
    }
    errs.extend(hostname_part_errors(name, is_gateway));
    errs
}

/// Istio's `validateGatewayNames` for one entry of `VirtualService.gateways` (or of a match's
/// `gateways`): `mesh`, a Gateway name, `namespace/name`, or the legacy `name.namespace…` FQDN.
pub fn gateway_name_errors(name: &str) -> Vec<String> {
    let Some((ns, gw)) = name.split_once('/') else {
        return check_fqdn(name).err().into_iter().collect();
    };
    let mut errs = Vec::new();
    if ns.is_empty() || gw.is_empty() {
        errs.push("config namespace and gateway name cannot be empty".to_owned());
    }
    if !is_dns1123_label(ns) {
        errs.push(format!("invalid value for namespace: {ns:?}"));
    }
    if !is_dns1123_label(gw) {
        errs.push(format!("invalid value for gateway name: {gw:?}"));
    }
    errs
}

/// Istio's warning for a gateway named in the legacy `name.namespace[.svc…]` form.
pub fn legacy_gateway_name_warning(name: &str) -> Option<String> {
    if name.contains('/') || !name.contains('.') {
        return None;
    }
    let mut parts = name.split('.');
    let gw = parts.next().unwrap_or_default();
    let ns = parts.next().unwrap_or_default();
    Some(format!(
        "using legacy gatewayName format {name:?}; prefer the <namespace>/<name> format: \"{ns}/{gw}\""
    ))
}

/// Istio's `host.Name.Matches`: two hosts (either may be a `*` wildcard) that share at least
/// one concrete name.
pub fn hosts_overlap(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(a_rest), Some(b_rest)) => {
            if a.len() < b.len() {
                b_rest.ends_with(a_rest)
            } else {
                a_rest.ends_with(b_rest)
            }
        }
        (Some(a_rest), None) => b.ends_with(a_rest),
        (None, Some(b_rest)) => a.ends_with(b_rest),
        (None, None) => a == b,
    }
}

/// Istio's `host.Name.SubsetOf`: every name `host` matches is also matched by `of`.
pub fn host_subset_of(host: &str, of: &str) -> bool {
    match (host.strip_prefix('*'), of.strip_prefix('*')) {
        (Some(h_rest), Some(o_rest)) => host.len() >= of.len() && h_rest.ends_with(o_rest),
        (Some(_), None) => false,
        (None, Some(o_rest)) => host.ends_with(o_rest),
        (None, None) => host == of,
    }
}

// ---------------------------------------------------------------------------------------------
// Ports and protocols
// ---------------------------------------------------------------------------------------------

/// Istio's `ValidatePort`: 1..=65535.
pub fn check_port(port: i64) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!("port number {port} must be in the range 1..65535"))
    }
}

/// Istio's `ValidatePortName`: a port name is a DNS label.
pub fn check_port_name(name: &str) -> Result<(), String> {
    if is_dns1123_label(name) {
        Ok(())
    } else {
        Err(format!("invalid port name: {name}"))
    }
}

/// Istio's `ValidateProtocol`: empty (sniffed) or one of Istio's protocol names, any case.
pub fn check_protocol(name: &str) -> Result<(), String> {
    if name.is_empty() || Protocol::parse(name).is_some() {
        Ok(())
    } else {
        Err(format!("unsupported protocol: {name}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Labels and selectors
// ---------------------------------------------------------------------------------------------

/// `(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`: Kubernetes' qualified name, without length.
fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// A label key (Istio's `validateTagKey`): `[dns.prefix/]name`, the name a qualified name of at
/// most 63 characters, the prefix dot-separated DNS labels of at most 253 characters.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let invalid = || format!("invalid tag key: {key:?}");
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if !is_qualified_name(name) {
        return Err(invalid());
    }
    if let Some(prefix) = prefix {
        if !prefix.split('.').all(is_label_shape) {
            return Err(invalid());
        }
        if prefix.len() > LABEL_KEY_PREFIX_MAX_LENGTH {
            return Err(format!("invalid tag key: {key:?} (DNS prefix is too long)"));
        }
    }
    if name.len() > DNS1123_LABEL_MAX_LENGTH {
        return Err(format!("invalid tag key: {key:?} (name is too long)"));
    }
    Ok(())
}

/// A label value: empty, or a qualified name.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_qualified_name(value) {
        Ok(())
    } else {
        Err(format!("invalid tag value: {value:?}"))
    }
}

/// Istio's `labels.Instance.Validate`: every key and value of a label map.
pub fn label_errors(labels: &BTreeMap<String, String>) -> Vec<String> {
    let mut errs = Vec::new();
    for (k, v) in labels {
        errs.extend(check_label_key(k).err());
        errs.extend(check_label_value(v).err());
    }
    errs
}

/// Istio's `validateWorkloadSelector` errors (the `matchLabels` / `labels` of a workload
/// selector): no empty keys, no `*` in keys or values.
pub fn workload_selector_errors(labels: &BTreeMap<String, String>) -> Vec<String> {
    let mut errs = Vec::new();
    for (k, v) in labels {
        if k.is_empty() {
            errs.push(format!(
                "empty key is not supported in selector: {:?}",
                format!("{k}={v}")
            ));
        }
        if k.contains('*') || v.contains('*') {
            errs.push(format!(
                "wildcard is not supported in selector: {:?}",
                format!("{k}={v}")
            ));
        }
    }
    errs
}

/// Istio's warning for a workload selector with no labels (it selects every workload).
pub const SELECTOR_WITHOUT_LABELS: &str = "workload selector specified without labels";

// ---------------------------------------------------------------------------------------------
// exportTo
// ---------------------------------------------------------------------------------------------

/// One `exportTo` entry (Istio's `visibility.Instance.Validate`): `.`, `*` or a namespace
/// name. `~` (exported to no one) is only meaningful for a ServiceEntry and is checked by
/// [`export_to_errors`].
pub fn check_export_to_entry(entry: &str) -> Result<(), String> {
    match entry {
        "." | "*" => Ok(()),
        "~" => Err("exportTo ~ (none) is not allowed for Istio configuration objects".into()),
        _ if is_dns1123_label(entry) => Ok(()),
        _ => Err("only .,*,~, or a valid DNS 1123 label is allowed as exportTo entry".into()),
    }
}

/// What carries the `exportTo` list: the rules differ slightly by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportToOwner {
    /// A ServiceEntry may also use `~` (visible to no one but its own workloads).
    ServiceEntry,
    /// A DestinationRule with a `workloadSelector` may only be exported to its own namespace.
    DestinationRuleWithSelector,
    /// VirtualService, DestinationRule without selector.
    Other,
}

/// Istio's `validateExportTo` for a whole list: entry syntax, duplicates (`.` counts as the
/// resource's own namespace), `*` and `~` only on their own.
pub fn export_to_errors(
    namespace: &str,
    export_to: &[String],
    owner: ExportToOwner,
) -> Vec<String> {
    let mut errs = Vec::new();
    if export_to.is_empty() {
        return errs;
    }
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for e in export_to {
        let key = if e == "." { namespace } else { e.as_str() };
        if seen.contains(key) {
            if key != e {
                errs.push(format!(
                    "duplicate entries in exportTo: . and current namespace {namespace}"
                ));
            } else {
                errs.push(format!("duplicate entries in exportTo for entry {e}"));
            }
        } else if owner == ExportToOwner::ServiceEntry && e == "~" {
            seen.insert(key);
        } else {
            // `.` was replaced by the namespace, so it is checked as a namespace name.
            match check_export_to_entry(key) {
                Ok(()) => {
                    seen.insert(key);
                }
                Err(err) => errs.push(err),
            }
        }
    }
    if owner == ExportToOwner::DestinationRuleWithSelector && !seen.is_empty() {
        if seen.contains(namespace) {
            if seen.len() > 1 {
                errs.push(
                    "destination rule with workload selector cannot have multiple entries in exportTo"
                        .into(),
                );
            }
        } else {
            errs.push(
                "destination rule with workload selector cannot have exportTo beyond current namespace"
                    .into(),
            );
        }
    }
    if seen.contains("*") && export_to.len() > 1 {
        errs.push(
            "cannot have both public (*) and non-public exportTo values for a resource".into(),
        );
    }
    if seen.contains("~") && export_to.len() > 1 {
        errs.push("cannot export service entry to no one (~) and someone".into());
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------------------------

/// Whether the string is an IPv4 or IPv6 address (no brackets, no prefix length).
pub fn is_valid_ip(addr: &str) -> bool {
    addr.parse::<IpAddr>().is_ok()
}

/// Istio's `ValidateIPAddress`.
pub fn check_ip(addr: &str) -> Result<(), String> {
    if is_valid_ip(addr) {
        Ok(())
    } else {
        Err(format!("{addr} is not a valid IP"))
    }
}

/// Istio's `ValidateIPSubnet`: an address, or a CIDR block (`10.0.0.0/8`, `2001:db8::/32`).
pub fn check_ip_subnet(subnet: &str) -> Result<(), String> {
    if subnet.matches('/').count() == 1 {
        return check_cidr(subnet);
    }
    check_ip(subnet)
}

/// A CIDR block, as Go's `netip.ParsePrefix` reads it (host bits may be set).
pub fn check_cidr(cidr: &str) -> Result<(), String> {
    let valid = cidr.split_once('/').is_some_and(|(_, bits)| {
        // Go refuses a sign or leading zeros in the prefix length; ipnet would take "+8"/"08".
        !bits.is_empty()
            && bits.bytes().all(|c| c.is_ascii_digit())
            && (bits == "0" || !bits.starts_with('0'))
    }) && cidr.parse::<ipnet::IpNet>().is_ok();
    if valid {
        Ok(())
    } else {
        Err(format!("{cidr} is not a valid CIDR block"))
    }
}

/// Istio's `ValidateUnixAddress` (the path after `unix://`): absolute, not a directory; an
/// abstract socket (`@name`) is allowed.
pub fn check_unix_address(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("unix address must not be empty".into());
    }
    if addr.starts_with('@') {
        return Ok(());
    }
    if !addr.starts_with('/') || addr.ends_with('/') {
        return Err(format!("{addr} is not an absolute path to a file"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Regexes, percentages, durations, headers
// ---------------------------------------------------------------------------------------------

/// Istio's `validateStringRegexp`: at most 1024 characters, and compiles. Istio (and Envoy)
/// use RE2; Rust's `regex` crate has the same syntax family (no backreferences, no
/// look-around), so a regex it refuses would be refused by RE2 too in practice. `field` names
/// the field in the message (Istio writes e.g. `"uri"`).
pub fn check_regex(re: &str, field: &str) -> Result<(), String> {
    if re.len() > MAX_REGEX_LENGTH {
        return Err(format!(
            "{field:?}: regex is too large, max length allowed is 1024"
        ));
    }
    match regex::Regex::new(re) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "{field:?}: error parsing regexp: {}; Istio uses RE2 style regex-based match \
             (https://github.com/google/re2/wiki/Syntax)",
            regex_error_summary(&e)
        )),
    }
}

/// The one-line reason of a regex error (the crate's message is a multi-line diagram).
fn regex_error_summary(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::to_owned)
        .unwrap_or_else(|| text.lines().last().unwrap_or_default().trim().to_owned())
}

/// Istio's `ValidatePercent`: an integer percentage 0..=100.
pub fn check_percent(value: i64) -> Result<(), String> {
    if (0..=100).contains(&value) {
        Ok(())
    } else {
        Err(format!("percentage {value} is not in range 0..100"))
    }
}

/// Istio's `validatePercentage` for a fractional `Percent`: 0, or 0.0001..=100.
pub fn check_fractional_percent(value: f64) -> Result<(), String> {
    if !(0.0..=100.0).contains(&value) || (value > 0.0 && value < 0.0001) {
        Err(format!(
            "percentage {value} is neither 0.0, nor in range [0.0001, 100.0]"
        ))
    } else {
        Ok(())
    }
}

/// Istio's `ValidateDuration`: at least 1ms, whole milliseconds.
pub fn check_duration(d: Duration) -> Result<(), String> {
    let d = d.as_std();
    if d < std::time::Duration::from_millis(1) {
        return Err("duration must be greater than 1ms".into());
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err("only durations to ms precision are supported".into());
    }
    Ok(())
}

/// Istio's `ValidateHTTPHeaderName`: `^[-_A-Za-z0-9]+$`.
pub fn check_http_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return Err(format!("header name {name} is not a valid header name"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TLS parameters
// ---------------------------------------------------------------------------------------------

/// The cipher suites Istio accepts in `tls.cipherSuites` (BoringSSL names, `bssl ciphers
/// -openssl-name ALL` without PSK).
pub const VALID_CIPHER_SUITES: [&str; 15] = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
];

/// Istio's `IsValidCipherSuite`: a known suite, `ALL`, empty, or an OpenSSL cipher-list
/// expression starting with an operator (`-`, `+`, `!`, `[`), which Istio does not parse.
pub fn is_valid_cipher_suite(cs: &str) -> bool {
    match cs.chars().next() {
        None => true,
        Some(_) if cs == "ALL" => true,
        Some(c) if !c.is_alphanumeric() => true,
        Some(_) => VALID_CIPHER_SUITES.contains(&cs),
    }
}

/// The ECDH curves Istio accepts in `meshConfig.tlsDefaults.ecdhCurves`.
pub const VALID_ECDH_CURVES: [&str; 7] = [
    "P-224",
    "P-256",
    "P-521",
    "P-384",
    "X25519",
    "X25519Kyber768Draft00",
    "X25519MLKEM768",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<E>(r: Result<(), E>) -> bool {
        r.is_ok()
    }

    #[test]
    fn dns_labels() {
        let table = [
            ("a", true),
            ("foo-bar", true),
            ("Foo9", true),
            ("9abc", true),
            ("-a", false),
            ("a-", false),
            ("a_b", false),
            ("", false),
            ("a.b", false),
            (&"a".repeat(63), true),
            (&"a".repeat(64), false),
        ];
        for (label, want) in table {
            assert_eq!(is_dns1123_label(label), want, "{label:?}");
        }
        let wild = [
            ("*", true),
            ("*foo", true),
            ("*-foo", true),
            ("foo", true),
            ("f*o", false),
            ("**", false),
            ("*-", false),
            ("", false),
        ];
        for (label, want) in wild {
            assert_eq!(is_wildcard_dns1123_label(label), want, "{label:?}");
        }
    }

    #[test]
    fn fqdn_rules() {
        let table: &[(&str, Result<(), &str>)] = &[
            ("istio.io", Ok(())),
            ("istio.io.", Ok(())),
            ("a.b.c.d", Ok(())),
            ("localhost", Ok(())),
            ("", Err("empty domain name not allowed")),
            (
                "1.1.1.1",
                Err("top level domain \"1\" cannot be all-numeric"),
            ),
            ("a..b", Err("label \"\" invalid")),
            ("-", Err("domain name \"-\" invalid (label \"-\" invalid)")),
            ("*.istio.io", Err("label \"*\" invalid")),
            ("foo_bar.com", Err("label \"foo_bar\" invalid")),
        ];
        for (host, want) in table {
            let got = check_fqdn(host);
            match want {
                Ok(()) => assert!(got.is_ok(), "{host:?}: {got:?}"),
                Err(part) => {
                    let msg = got.expect_err(host);
                    assert!(msg.contains(part), "{host:?}: {msg}");
                }
            }
        }
        let long = format!("{}.com", "a.".repeat(130));
        assert!(check_fqdn(&long).is_err_and(|e| e.contains("too long (max 255)")));
    }

    #[test]
    fn wildcard_domain_rules() {
        let table = [
            ("*", true),
            ("*.istio.io", true),
            ("*foo.istio.io", true), // ValidateWildcardDomain allows it; partial check rejects
            ("istio.io", true),
            ("foo.*.istio.io", false),
            ("*.*.io", false),
            ("*.", true),
            ("**.io", false),
            ("*.1", false),
            ("", false),
        ];
        for (host, want) in table {
            assert_eq!(ok(check_wildcard_domain(host)), want, "{host:?}");
        }
        let partial = [
            ("*", true),
            ("*.a.com", true),
            ("a.com", true),
            ("*a.com", false),
            ("a.*.com", false),
        ];
        for (host, want) in partial {
            assert_eq!(ok(check_partial_wildcard(host)), want, "{host:?}");
        }
        assert_eq!(
            check_wildcard_domain("foo.ba!r"),
            Err(r#"domain name "foo.ba!r" invalid (label "ba!r" invalid)"#.into())
        );
        assert_eq!(
            check_wildcard_domain("foo.*.com"),
            Err(r#"domain name "foo.*.com" invalid (label "*" invalid)"#.into())
        );
        assert_eq!(
            check_wildcard_domain("*.1"),
            Err(r#"domain name "*.1" invalid (top level domain "1" cannot be all-numeric)"#.into())
        );
        assert!(
            check_partial_wildcard("*bar.com")
                .is_err_and(|e| e == r#"partial wildcard "*bar.com" not allowed"#)
        );
        assert!(check_wildcard_domain_for_gateway(true, "outbound_.80_._.e2e.foobar.mesh").is_ok());
        assert!(check_wildcard_domain_for_gateway(true, "outbound_.x_._.e2e.foobar.mesh").is_err());
        assert!(
            check_wildcard_domain_for_gateway(false, "outbound_.80_._.e2e.foobar.mesh").is_err()
        );
    }

    #[test]
    fn gateway_and_sidecar_hosts() {
        let gateway = [
            ("foo.bar.com", 0),
            ("*", 0),
            ("*.bar.com", 0),
            ("ns1/foo.bar.com", 0),
            ("./foo.bar.com", 0),
            ("*/foo.bar.com", 0),
            ("1.1.1.1", 0),
            ("ns/1.1.1.1", 0),
            ("~/foo.bar.com", 1),
            ("foo", 1),
            ("*bar.com", 1),
            ("ns$/foo.bar.com", 1),
            ("/foo.bar.com", 2),
            ("ns/", 3),
        ];
        for (host, n) in gateway {
            let errs = gateway_host_errors(host);
            assert_eq!(errs.len(), n, "{host:?}: {errs:?}");
        }
        assert!(gateway_host_errors("foo")[0].contains("short names"));
        assert!(gateway_host_errors("ns$/a.com")[0].contains("invalid namespace value"));

        let sidecar = [
            ("*/*", 0),
            ("./*", 0),
            ("~/*", 0),
            ("~ns1/*", 0),
            ("~Bad_NS/*", 1),
            ("ns1/foo.bar.com", 0),
            ("*/*.bar.com", 0),
            ("foo.bar.com", 1),
            ("ns1/1.1.1.1", 1),
            ("ns1/foo", 1),
            ("ns1/*foo.com", 1),
        ];
        for (host, n) in sidecar {
            let errs = sidecar_host_errors(host);
            assert_eq!(errs.len(), n, "{host:?}: {errs:?}");
        }
        assert_eq!(
            sidecar_host_errors("foo.bar.com"),
            vec!["host must be of form namespace/dnsName"]
        );
    }

    #[test]
    fn gateway_names() {
        let table = [
            ("mesh", 0),
            ("my-gateway", 0),
            ("istio-system/egressgateway", 0),
            ("gw.ns.svc.cluster.local", 0),
            ("ns/", 2),
            ("/gw", 2),
            ("ns/gw.x", 1),
            ("Bad_Name", 1),
        ];
        for (name, n) in table {
            let errs = gateway_name_errors(name);
            assert_eq!(errs.len(), n, "{name:?}: {errs:?}");
        }
        assert_eq!(
            legacy_gateway_name_warning("gw.ns.svc.cluster.local").as_deref(),
            Some(
                "using legacy gatewayName format \"gw.ns.svc.cluster.local\"; prefer the \
                 <namespace>/<name> format: \"ns/gw\""
            )
        );
        assert_eq!(legacy_gateway_name_warning("ns/gw"), None);
        assert_eq!(legacy_gateway_name_warning("mesh"), None);
    }

    #[test]
    fn host_matching() {
        let overlap = [
            ("a.com", "a.com", true),
            ("a.com", "b.com", false),
            ("*.com", "a.com", true),
            ("*.a.com", "*.com", true),
            ("*", "a.com", true),
            ("*.a.com", "b.com", false),
        ];
        for (a, b, want) in overlap {
            assert_eq!(hosts_overlap(a, b), want, "{a} ~ {b}");
            assert_eq!(hosts_overlap(b, a), want, "{b} ~ {a}");
        }
        let subset = [
            ("a.com", "*.com", true),
            ("*.a.com", "*.com", true),
            ("*.com", "*.a.com", false),
            ("*.com", "a.com", false),
            ("a.com", "a.com", true),
            ("a.com", "*", true),
        ];
        for (h, of, want) in subset {
            assert_eq!(host_subset_of(h, of), want, "{h} ⊆ {of}");
        }
    }

    #[test]
    fn ports_names_protocols() {
        let ports = [
            (0, false),
            (1, true),
            (80, true),
            (65535, true),
            (65536, false),
            (-1, false),
        ];
        for (port, want) in ports {
            assert_eq!(ok(check_port(port)), want, "{port}");
        }
        assert_eq!(
            check_port(65536),
            Err("port number 65536 must be in the range 1..65535".into())
        );
        for (name, want) in [
            ("http", true),
            ("http-web", true),
            ("", false),
            ("Http_1", false),
        ] {
            assert_eq!(ok(check_port_name(name)), want, "{name:?}");
        }
        for (p, want) in [
            ("", true),
            ("http", true),
            ("TLS", true),
            ("grpc-web", true),
            ("quic", false),
        ] {
            assert_eq!(ok(check_protocol(p)), want, "{p:?}");
        }
    }

    #[test]
    fn labels() {
        let keys = [
            ("app", true),
            ("app.kubernetes.io/name", true),
            ("example.com/my_key.x", true),
            ("a/b/c", false),
            ("-app", false),
            ("", false),
            ("/name", false),
            ("bad prefix/name", false),
            (&"k".repeat(64), false),
            (&format!("{}/k", "a".repeat(254)), false),
        ];
        for (k, want) in keys {
            assert_eq!(ok(check_label_key(k)), want, "{k:?}");
        }
        assert!(check_label_key(&"k".repeat(64)).is_err_and(|e| e.contains("name is too long")));
        let values = [
            ("", true),
            ("v1", true),
            ("a.b_c-d", true),
            ("-v", false),
            ("v v", false),
        ];
        for (v, want) in values {
            assert_eq!(ok(check_label_value(v)), want, "{v:?}");
        }
        let labels = BTreeMap::from([
            ("good".to_owned(), "@bad".to_owned()),
            ("$k".to_owned(), "v".to_owned()),
        ]);
        assert_eq!(label_errors(&labels).len(), 2);
        let sel = BTreeMap::from([
            ("".to_owned(), "v".to_owned()),
            ("app".to_owned(), "*".to_owned()),
        ]);
        assert_eq!(workload_selector_errors(&sel).len(), 2);
    }

    #[test]
    fn export_to() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        let table: &[(&[&str], ExportToOwner, usize)] = &[
            (&[], ExportToOwner::Other, 0),
            (&["."], ExportToOwner::Other, 0),
            (&["*"], ExportToOwner::Other, 0),
            (&["ns1", "ns2"], ExportToOwner::Other, 0),
            (&["~"], ExportToOwner::ServiceEntry, 0),
            (&["~"], ExportToOwner::Other, 1),
            (&["~", "ns1"], ExportToOwner::ServiceEntry, 1),
            (&["*", "ns1"], ExportToOwner::Other, 1),
            (&[".", "default"], ExportToOwner::Other, 1),
            (&["ns1", "ns1"], ExportToOwner::Other, 1),
            (&["bad_ns"], ExportToOwner::Other, 1),
            (&["."], ExportToOwner::DestinationRuleWithSelector, 0),
            (&["default"], ExportToOwner::DestinationRuleWithSelector, 0),
            (&["ns1"], ExportToOwner::DestinationRuleWithSelector, 1),
            (&[".", "ns1"], ExportToOwner::DestinationRuleWithSelector, 1),
        ];
        for (list, owner, n) in table {
            let errs = export_to_errors("default", &s(list), *owner);
            assert_eq!(errs.len(), *n, "{list:?} {owner:?}: {errs:?}");
        }
        assert_eq!(
            export_to_errors("default", &s(&["default", "."]), ExportToOwner::Other),
            vec!["duplicate entries in exportTo: . and current namespace default"]
        );
        assert_eq!(
            export_to_errors("default", &s(&[".", "default"]), ExportToOwner::Other),
            vec!["duplicate entries in exportTo for entry default"]
        );
    }

    #[test]
    fn addresses() {
        let subnets = [
            ("1.1.1.1", true),
            ("10.0.0.0/8", true),
            ("10.1.2.3/8", true),
            ("2001:db8::/32", true),
            ("::1", true),
            ("001:db8::", true),
            ("1.1.1.1/33", false),
            ("1.1.1.1/", false),
            ("1.1.1.1/+8", false),
            ("1.1.1.1/08", false),
            ("1.1.1/24", false),
            ("foo.bar", false),
            ("1.1.1.1/8/8", false),
            ("", false),
        ];
        for (s, want) in subnets {
            assert_eq!(ok(check_ip_subnet(s)), want, "{s:?}");
        }
        assert_eq!(check_ip("foo.bar"), Err("foo.bar is not a valid IP".into()));
        assert_eq!(
            check_ip_subnet("1.1.1.1/33"),
            Err("1.1.1.1/33 is not a valid CIDR block".into())
        );
        for (a, want) in [
            ("/var/run/a.sock", true),
            ("@abstract", true),
            ("rel/a", false),
            ("/dir/", false),
            ("", false),
        ] {
            assert_eq!(ok(check_unix_address(a)), want, "{a:?}");
        }
    }

    #[test]
    fn regexes_percentages_durations_headers() {
        assert!(check_regex("^/api/v[0-9]+$", "uri").is_ok());
        let err = check_regex("[", "uri").expect_err("unclosed class");
        assert!(err.starts_with("\"uri\": error parsing regexp: "), "{err}");
        assert!(err.contains("Istio uses RE2"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        assert!(check_regex(&"a".repeat(1025), "uri").is_err_and(|e| e.contains("too large")));
        for (p, want) in [(0, true), (100, true), (101, false), (-1, false)] {
            assert_eq!(ok(check_percent(p)), want, "{p}");
        }
        for (p, want) in [
            (0.0, true),
            (0.0001, true),
            (0.00001, false),
            (100.0, true),
            (100.5, false),
            (-1.0, false),
        ] {
            assert_eq!(ok(check_fractional_percent(p)), want, "{p}");
        }
        for (d, want) in [
            ("1ms", true),
            ("10s", true),
            ("0s", false),
            ("500us", false),
            ("1.5ms", false),
        ] {
            let dur = Duration::parse(d).expect(d);
            assert_eq!(ok(check_duration(dur)), want, "{d}");
        }
        for (h, want) in [
            ("x-user", true),
            ("X_Y", true),
            ("", false),
            (":authority", false),
            ("a b", false),
        ] {
            assert_eq!(ok(check_http_header_name(h)), want, "{h:?}");
        }
    }
}
