//! `PeerAuthentication` (`security.istio.io/v1`, `v1beta1`): the mTLS a workload requires of the
//! connections it accepts.

use std::collections::BTreeMap;

use crate::values::WorkloadSelector;

/// Spec of a `PeerAuthentication`.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    /// Workloads (by label) the policy applies to; absent means the whole namespace (or mesh,
    /// in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// mTLS settings for the workload; absent inherits from the namespace or mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// Per-port mTLS settings, keyed by the workload's port number written as a string (YAML
    /// map keys are strings; `8080:` arrives as `"8080"`). Only valid with a selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<String, MutualTls>,
}

/// `PeerAuthentication.MutualTLS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    #[serde(default)]
    pub mode: MtlsMode,
}

/// `PeerAuthentication.MutualTLS.Mode`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
pub enum MtlsMode {
    /// Inherit from the parent scope; PERMISSIVE when there is none.
    #[default]
    #[serde(rename = "UNSET")]
    Unset,
    /// Plain text only.
    #[serde(rename = "DISABLE")]
    Disable,
    /// Plain text or mTLS.
    #[serde(rename = "PERMISSIVE")]
    Permissive,
    /// mTLS with a client certificate is required.
    #[serde(rename = "STRICT")]
    Strict,
}

/// A `portLevelMtls` key that is not a port number (1-65535).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("portLevelMtls key {0:?} is not a port number (1-65535)")]
pub struct InvalidPortKey(pub String);

impl PeerAuthentication {
    /// `portLevelMtls` with its keys parsed as port numbers.
    pub fn port_level_mtls_by_port(&self) -> Result<BTreeMap<u16, MutualTls>, InvalidPortKey> {
        self.port_level_mtls
            .iter()
            .map(|(k, v)| match k.trim().parse::<u16>() {
                Ok(port) if port != 0 => Ok((port, *v)),
                _ => Err(InvalidPortKey(k.clone())),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: serde_json::Value) -> Result<PeerAuthentication, String> {
        serde_json::from_value::<PeerAuthentication>(v).map_err(|e| e.to_string())
    }

    #[test]
    fn strict_with_port_exception_parses() {
        let pa = parse(json!({
            "selector": {"matchLabels": {"istio": "egressgateway"}},
            "mtls": {"mode": "STRICT"},
            "portLevelMtls": {"8080": {"mode": "DISABLE"}, "9090": {}}
        }))
        .expect("peer authentication");
        assert_eq!(pa.mtls.map(|m| m.mode), Some(MtlsMode::Strict));
        let by_port = pa.port_level_mtls_by_port().expect("ports");
        assert_eq!(by_port.get(&8080).map(|m| m.mode), Some(MtlsMode::Disable));
        assert_eq!(by_port.get(&9090).map(|m| m.mode), Some(MtlsMode::Unset));
    }

    #[test]
    fn empty_spec_inherits() {
        let pa = parse(json!({})).expect("empty");
        assert_eq!(pa, PeerAuthentication::default());
        assert_eq!(MtlsMode::default(), MtlsMode::Unset);
    }

    #[test]
    fn non_numeric_port_key_is_named() {
        let pa = parse(json!({"portLevelMtls": {"http": {"mode": "STRICT"}}})).expect("parses");
        assert_eq!(
            pa.port_level_mtls_by_port(),
            Err(InvalidPortKey("http".to_owned()))
        );
    }

    #[test]
    fn unknown_field_is_rejected_by_name() {
        let err = parse(json!({"mtls": {"mode": "STRICT", "strict": true}})).expect_err("field");
        assert!(err.contains("strict"), "{err}");
        let err = parse(json!({"portLevelTls": {}})).expect_err("top-level field");
        assert!(err.contains("portLevelTls"), "{err}");
    }

    #[test]
    fn unknown_mode_is_rejected_by_name() {
        let err = parse(json!({"mtls": {"mode": "ISTIO_MUTUAL"}})).expect_err("mode");
        assert!(err.contains("ISTIO_MUTUAL"), "{err}");
    }
}
