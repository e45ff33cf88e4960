//! `AuthorizationPolicy` (`security.istio.io/v1`, `v1beta1`): access control on workloads.
//!
//! Field names and enum values are Istio's own; every field of the CRD is represented, and
//! unknown fields or enum values are rejected when deserializing.

use crate::values::WorkloadSelector;

/// Spec of an `AuthorizationPolicy`.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// Workloads (by label) the policy applies to; absent means every workload of the namespace
    /// (or of the mesh, in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// A single resource (a Kubernetes Gateway) the policy is attached to instead of a selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Resources the policy is attached to instead of a selector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// A request matches the policy when it matches at least one rule. No rules: nothing matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// What happens to matching requests.
    #[serde(default)]
    pub action: Action,
    /// The extension provider that decides for the `CUSTOM` action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

/// Istio's `PolicyTargetReference`: the resource a policy is attached to. Shared by the kinds
/// that accept `targetRef`/`targetRefs` (AuthorizationPolicy, Telemetry, EnvoyFilter…).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group of the target (`gateway.networking.k8s.io`); empty means the core group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Kind of the target, e.g. `Gateway` or `Service` (required).
    pub kind: String,
    /// Name of the target (required).
    pub name: String,
    /// Namespace of the target; Istio only accepts the policy's own namespace (empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// `AuthorizationPolicy.Action`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
pub enum Action {
    /// Allow a request only if it matches the rules (Istio's default).
    #[default]
    #[serde(rename = "ALLOW")]
    Allow,
    /// Deny a request that matches any rule.
    #[serde(rename = "DENY")]
    Deny,
    /// Mark a matching request for auditing; does not change the decision.
    #[serde(rename = "AUDIT")]
    Audit,
    /// Delegate the decision to the extension named by `provider`.
    #[serde(rename = "CUSTOM")]
    Custom,
}

/// `AuthorizationPolicy.ExtensionProvider`: a provider declared in MeshConfig's
/// `extensionProviders`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    #[serde(default)]
    pub name: String,
}

/// A rule matches when one of `from`, one of `to` and all of `when` match; an empty rule
/// matches every request.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<From>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<To>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// `Rule.From`: one source.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct From {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// `Rule.To`: one operation.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct To {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// Who sends the request. All set fields must match (AND); within a field any value may match
/// (OR). Values support exact, `prefix*`, `*suffix` and `*` (presence) matching.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities from the mTLS certificate: `<trust-domain>/ns/<ns>/sa/<sa>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// Request identities from a JWT: `<iss>/<sub>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    /// Namespaces of the peer's identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Source addresses of the connection: single IPs or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// Client addresses from `X-Forwarded-For` or the PROXY protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
    /// Service accounts of the peer, `<ns>/<sa>` or `<sa>` (policy's namespace); cannot be
    /// combined with `principals` or `namespaces`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
}

/// What the request does. All set fields must match (AND); within a field any value may match.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// HTTP hosts (`:authority`), matched case-insensitively.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Destination ports of the connection, written as strings in Istio (`"443"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    /// HTTP methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Normalized HTTP paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// An extra condition on an Istio attribute (`request.headers[x]`, `source.ip`…).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// The attribute's name (required).
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

impl AuthorizationPolicy {
    /// All target references, `targetRef` first, then `targetRefs`.
    pub fn all_target_refs(&self) -> impl Iterator<Item = &PolicyTargetReference> {
        self.target_ref.iter().chain(self.target_refs.iter())
    }
}

impl Operation {
    /// `ports` parsed as port numbers; the error names the first value that is not one.
    pub fn port_numbers(&self) -> Result<Vec<u16>, String> {
        parse_ports(&self.ports)
    }

    /// `notPorts` parsed as port numbers; the error names the first value that is not one.
    pub fn not_port_numbers(&self) -> Result<Vec<u16>, String> {
        parse_ports(&self.not_ports)
    }
}

fn parse_ports(ports: &[String]) -> Result<Vec<u16>, String> {
    ports
        .iter()
        .map(|p| match p.trim().parse::<u16>() {
            Ok(n) if n != 0 => Ok(n),
            _ => Err(p.clone()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    fn parse(v: serde_json::Value) -> Result<AuthorizationPolicy, String> {
        serde_json::from_value::<AuthorizationPolicy>(v).map_err(|e| e.to_string())
    }

    #[test]
    fn guide_egress_policy_parses() {
        // guide/authz-egress-policy.yaml, spec.
        let ap = parse(json!({
            "selector": {"matchLabels": {"istio": "egressgateway"}},
            "action": "ALLOW",
            "rules": [
                {
                    "from": [{"source": {"principals": ["cluster.local/ns/default/sa/frontend"]}}],
                    "to": [{"operation": {"hosts": ["api.github.com"], "ports": ["443"]}}]
                },
                {
                    "from": [{"source": {"principals": [
                        "cluster.local/ns/default/sa/backend",
                        "cluster.local/ns/payments/sa/payment-processor"
                    ]}}],
                    "to": [{"operation": {"hosts": ["api.stripe.com"], "ports": ["443"]}}]
                },
                {
                    "from": [{"source": {"namespaces": ["data", "analytics"]}}],
                    "to": [{"operation": {"hosts": ["external-db.example.com"], "ports": ["5432"]}}]
                }
            ]
        }))
        .expect("guide policy");
        assert_eq!(ap.action, Action::Allow);
        assert_eq!(
            ap.selector.as_ref().map(|s| s.match_labels.clone()),
            Some(BTreeMap::from([(
                "istio".to_owned(),
                "egressgateway".to_owned()
            )]))
        );
        assert_eq!(ap.rules.len(), 3);
        let src = ap.rules[1].from[0].source.as_ref().expect("source");
        assert_eq!(src.principals.len(), 2);
        assert_eq!(
            src.principals[1],
            "cluster.local/ns/payments/sa/payment-processor"
        );
        let op = ap.rules[2].to[0].operation.as_ref().expect("operation");
        assert_eq!(op.hosts, ["external-db.example.com"]);
        assert_eq!(op.port_numbers(), Ok(vec![5432]));
        assert_eq!(
            ap.rules[2].from[0]
                .source
                .as_ref()
                .map(|s| s.namespaces.clone()),
            Some(vec!["data".to_owned(), "analytics".to_owned()])
        );
    }

    #[test]
    fn production_setup_policy_parses() {
        // guide/production-egress-setup.yaml, the AuthorizationPolicy document's spec.
        let ap = parse(json!({
            "selector": {"matchLabels": {"istio": "egressgateway"}},
            "action": "ALLOW",
            "rules": [{
                "from": [{"source": {"principals": [
                    "cluster.local/ns/production/sa/payment-service",
                    "cluster.local/ns/production/sa/checkout-service"
                ]}}],
                "to": [{"operation": {"hosts": ["api.payment-provider.com"], "ports": ["443"]}}]
            }]
        }))
        .expect("production policy");
        let rule = &ap.rules[0];
        assert_eq!(
            rule.from[0].source.as_ref().map(|s| s.principals.len()),
            Some(2)
        );
        assert_eq!(
            rule.to[0].operation.as_ref().map(|o| o.ports.clone()),
            Some(vec!["443".to_owned()])
        );
    }

    #[test]
    fn empty_spec_defaults_to_allow_with_no_rules() {
        // guide/authz-deny-all-egress.yaml: selector and `{}` — allow nothing.
        let ap = parse(json!({"selector": {"matchLabels": {"istio": "egressgateway"}}}))
            .expect("deny all");
        assert_eq!(ap.action, Action::Allow);
        assert!(ap.rules.is_empty());
    }

    #[test]
    fn every_field_round_trips() {
        let v = json!({
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "egress"}],
            "action": "CUSTOM",
            "provider": {"name": "ext-authz"},
            "rules": [{
                "from": [{"source": {
                    "principals": ["a"], "notPrincipals": ["b"],
                    "requestPrincipals": ["iss/sub"], "notRequestPrincipals": ["x/y"],
                    "namespaces": ["n"], "notNamespaces": ["m"],
                    "ipBlocks": ["10.0.0.0/8"], "notIpBlocks": ["10.1.0.0/16"],
                    "remoteIpBlocks": ["1.2.3.4"], "notRemoteIpBlocks": ["5.6.7.8"],
                    "serviceAccounts": ["ns/sa"], "notServiceAccounts": ["sa2"]
                }}],
                "to": [{"operation": {
                    "hosts": ["h"], "notHosts": ["nh"], "ports": ["80"], "notPorts": ["81"],
                    "methods": ["GET"], "notMethods": ["POST"], "paths": ["/a*"], "notPaths": ["/b"]
                }}],
                "when": [{"key": "request.headers[x-a]", "values": ["1"], "notValues": ["2"]}]
            }]
        });
        let ap = parse(v.clone()).expect("full policy");
        assert_eq!(ap.action, Action::Custom);
        assert_eq!(
            ap.provider.as_ref().map(|p| p.name.as_str()),
            Some("ext-authz")
        );
        assert_eq!(ap.all_target_refs().count(), 1);
        assert_eq!(ap.rules[0].when[0].not_values, ["2"]);
        assert_eq!(serde_json::to_value(&ap).ok(), Some(v));
        let single = parse(json!({"targetRef": {"kind": "Gateway", "name": "g"}})).expect("ref");
        assert_eq!(
            single
                .all_target_refs()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["g"]
        );
    }

    #[test]
    fn unknown_field_is_rejected_by_name() {
        let err = parse(json!({"rules": [{"to": [{"operation": {"host": ["x"]}}]}]}))
            .expect_err("unknown field");
        assert!(err.contains("host"), "{err}");
        let err = parse(json!({"actions": "DENY"})).expect_err("unknown top-level field");
        assert!(err.contains("actions"), "{err}");
    }

    #[test]
    fn unknown_action_is_rejected_by_name() {
        let err = parse(json!({"action": "REJECT"})).expect_err("unknown action");
        assert!(err.contains("REJECT"), "{err}");
        let err = parse(json!({"action": "allow"})).expect_err("case matters");
        assert!(err.contains("allow"), "{err}");
    }

    #[test]
    fn ports_that_are_not_numbers_are_named() {
        let op = Operation {
            ports: vec!["443".into(), "https".into()],
            not_ports: vec!["0".into()],
            ..Operation::default()
        };
        assert_eq!(op.port_numbers(), Err("https".to_owned()));
        assert_eq!(op.not_port_numbers(), Err("0".to_owned()));
    }
}
