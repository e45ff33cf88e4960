//! PeerAuthentication validation: Istio's `ValidatePeerAuthentication`
//! (`pkg/config/validation/validation.go`) with its error texts.

use sluice_model::security::PeerAuthentication;

use super::Report;
use super::authorization_policy::{check_annotations, check_workload_selector};

pub(crate) fn validate(r: &mut Report<'_, PeerAuthentication>) {
    let spec = &r.resource().spec;
    check_annotations(r);

    let empty_selector = spec
        .selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty());
    if empty_selector && !spec.port_level_mtls.is_empty() {
        r.error(
            "spec.portLevelMtls",
            "mesh/namespace peer authentication cannot have port level mTLS",
        );
    }
    for key in spec.port_level_mtls.keys() {
        let in_range = key
            .trim()
            .parse::<u32>()
            .is_ok_and(|p| (1..=65535).contains(&p));
        if !in_range {
            r.error(
                &format!("spec.portLevelMtls.{key}"),
                format!("port must be in range 1..65535 (found {key:?})"),
            );
        }
    }
    check_workload_selector(r, spec.selector.as_ref(), "spec.selector");
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_model::Level;

    use crate::validate::validate as validate_all;

    #[test]
    fn rules() {
        let cases: &[(serde_json::Value, Option<(Level, &str)>)] = &[
            (json!({"mtls": {"mode": "STRICT"}}), None),
            (
                json!({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
                None,
            ),
            (
                json!({"portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
                Some((
                    Level::Error,
                    "mesh/namespace peer authentication cannot have port level mTLS",
                )),
            ),
            (
                json!({"selector": {}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
                Some((Level::Error, "cannot have port level mTLS")),
            ),
            (
                json!({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {"0": {"mode": "STRICT"}}}),
                Some((Level::Error, "port must be in range 1..65535")),
            ),
            (
                json!({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {"70000": {}}}),
                Some((Level::Error, "port must be in range 1..65535")),
            ),
            (
                json!({"selector": {"matchLabels": {"app": "a*"}}}),
                Some((Level::Error, "wildcard is not supported in selector")),
            ),
            (
                json!({"selector": {}}),
                Some((Level::Warning, "without labels")),
            ),
        ];
        for (spec, want) in cases {
            let loaded = sluice_model::load_value(
                "pa.yaml",
                json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                       "metadata": {"name": "pa", "namespace": "ns"}, "spec": spec}),
            );
            assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
            let d = validate_all(&loaded.resources);
            match want {
                None => assert!(d.is_empty(), "{spec}: {d:?}"),
                Some((level, text)) => assert!(
                    d.iter()
                        .any(|d| d.level == *level && d.message.contains(text)),
                    "{spec}: want {level} {text:?}, got {d:?}"
                ),
            }
        }
    }
}
