//! `WorkloadEntry` (networking.istio.io): one non-Kubernetes workload (a VM, a bare-metal host,
//! an external endpoint). The same shape is used for the `endpoints` of a `ServiceEntry`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Istio's `WorkloadEntry` spec. Also the element type of `ServiceEntry.endpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    /// IP address, DNS name (only with DNS resolution) or `unix:///path` socket, without port.
    /// May be empty when `network` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,

    /// Service port name to this endpoint's port number. Takes precedence over the service
    /// port's `targetPort`; a port missing here is reached on the service port's own number.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,

    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// The L3 network the endpoint lives in (for multi-network meshes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,

    /// Failure domain as `region/zone/subzone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,

    /// Relative load-balancing weight of this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,

    /// Service account of the workload's proxy; implies the workload speaks Istio mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

impl WorkloadEntry {
    /// The endpoint port for a service port: the `ports` entry for its name if there is one,
    /// else the given fallback (the service port's `targetPort`, or its number).
    pub fn port_for(&self, service_port_name: &str, fallback: u32) -> u32 {
        self.ports
            .get(service_port_name)
            .copied()
            .unwrap_or(fallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn full_workload_entry_parses() {
        let we: WorkloadEntry = serde_json::from_value(json!({
            "address": "2.2.2.2",
            "ports": {"http": 8080, "grpc": 70000},
            "labels": {"app": "details-legacy", "instance-id": "vm1"},
            "network": "vpc-1",
            "locality": "us-east1/us-east1-b",
            "weight": 3,
            "serviceAccount": "details-legacy"
        }))
        .expect("parses");
        assert_eq!(we.address.as_deref(), Some("2.2.2.2"));
        assert_eq!(we.port_for("http", 80), 8080);
        assert_eq!(we.port_for("other", 80), 80);
        // Range is validation's job: 70000 must still parse.
        assert_eq!(we.ports.get("grpc"), Some(&70000));
        assert_eq!(we.weight, Some(3));
        assert_eq!(we.service_account.as_deref(), Some("details-legacy"));
    }

    #[test]
    fn address_may_be_omitted_when_network_is_set() {
        let we: WorkloadEntry =
            serde_json::from_value(json!({"network": "cluster-2", "labels": {"app": "foo"}}))
                .expect("parses");
        assert_eq!(we.address, None);
        assert_eq!(we.network.as_deref(), Some("cluster-2"));
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err =
            serde_json::from_value::<WorkloadEntry>(json!({"address": "1.1.1.1", "port": 80}))
                .expect_err("unknown field");
        assert!(err.to_string().contains("unknown field `port`"), "{err}");
    }

    #[test]
    fn wrong_port_type_is_rejected() {
        let err = serde_json::from_value::<WorkloadEntry>(json!({"ports": {"http": "eighty"}}))
            .expect_err("string port");
        assert!(err.to_string().contains("eighty"), "{err}");
    }
}
