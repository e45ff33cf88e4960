use super::*;

fn guide(name: &str) -> String {
    format!("{}/../../testdata/guide/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_guides_invalid_deny_all_policy_is_reported_at_line_14_with_advice() {
    let loaded = load_paths(&[guide("authz-deny-all-egress.yaml")]);
    assert!(loaded.resources.is_empty());
    let [d] = loaded.diagnostics.as_slice() else {
        panic!("one diagnostic expected: {:?}", loaded.diagnostics)
    };
    let loc = d.location.as_ref().expect("located");
    assert!(loc.file.ends_with("authz-deny-all-egress.yaml"), "{loc}");
    assert_eq!((loc.line, loc.column), (14, 3));
    assert_eq!(d.code, codes::YAML_SYNTAX);
    assert!(d.message.contains("`{}`"), "{}", d.message);
    assert!(d.message.contains("no `rules`"), "{}", d.message);
}

#[test]
fn unknown_fields_are_errors_at_their_own_line_with_a_suggestion() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: se
spec:
  hosts: [a.com]
  resolutoin: DNS
";
    let loaded = load_str("se.yaml", text);
    let [d] = loaded.diagnostics.as_slice() else {
        panic!("{:?}", loaded.diagnostics)
    };
    assert_eq!(d.path.as_deref(), Some("spec.resolutoin"));
    let loc = d.location.as_ref().expect("located");
    assert_eq!((loc.line, loc.column), (7, 3));
    assert!(
        d.message.contains("did you mean `resolution`"),
        "{}",
        d.message
    );
    assert_eq!(d.origin.as_deref(), Some("ServiceEntry se"));
}

#[test]
fn wrong_api_versions_and_unknown_istio_kinds_are_errors() {
    let text = "\
apiVersion: networking.istio.io/v2
kind: Gateway
metadata: {name: g}
---
apiVersion: networking.istio.io/v1
kind: Gateways
metadata: {name: g}
";
    let loaded = load_str("x.yaml", text);
    assert_eq!(loaded.diagnostics.len(), 2, "{:?}", loaded.diagnostics);
    assert!(loaded.diagnostics[0].message.contains("v1beta1"));
    assert_eq!(
        loaded.diagnostics[0].location.as_ref().map(|l| l.line),
        Some(1)
    );
    assert_eq!(
        loaded.diagnostics[1].location.as_ref().map(|l| l.line),
        Some(6)
    );
}

#[test]
fn top_level_typos_and_missing_names_are_reported() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {}
sepc: {}
";
    let loaded = load_str("x.yaml", text);
    let msgs: Vec<_> = loaded
        .diagnostics
        .iter()
        .map(|d| d.message.as_str())
        .collect();
    assert!(
        msgs.iter().any(|m| m.contains("metadata.name is required")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("unknown field `sepc`")),
        "{msgs:?}"
    );
}

#[test]
fn non_istio_kinds_are_skipped_with_a_note() {
    let loaded = load_paths(&[guide("servicemonitor-egress.yaml")]);
    let [d] = loaded.diagnostics.as_slice() else {
        panic!("{:?}", loaded.diagnostics)
    };
    assert_eq!(d.level, crate::Level::Info);
    assert!(d.message.contains("ServiceMonitor"), "{}", d.message);
    assert_eq!(loaded.resources.others.len(), 1);
}

#[test]
fn lists_config_maps_and_bare_mesh_config_are_read() {
    let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: istio, namespace: istio-system}
  data:
    mesh: |
      outboundTrafficPolicy:
        mode: REGISTRY_ONLY
- apiVersion: networking.istio.io/v1
  kind: ServiceEntry
  metadata: {name: se, namespace: ns1}
  spec:
    hosts: [a.example.com]
";
    let loaded = load_str("list.yaml", text);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    assert_eq!(loaded.resources.mesh_configs.len(), 1);
    assert_eq!(loaded.resources.service_entries.len(), 1);
    let se = &loaded.resources.service_entries[0];
    assert_eq!(se.source.location().line, 11);
    assert_eq!(se.source.location_of("spec.hosts[0]").line, 15);

    let bare = load_str("mesh.yaml", "defaultConfig:\n  proxyMetadata: {A: \"1\"}\n");
    assert!(!bare.has_errors(), "{:?}", bare.diagnostics);
    assert_eq!(bare.resources.mesh_configs.len(), 1);
}

#[test]
fn a_later_definition_replaces_an_earlier_one_with_a_warning() {
    let doc =
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: n}\n";
    let loaded = load_str("dup.yaml", &format!("{doc}---\n{doc}"));
    assert_eq!(loaded.resources.gateways.len(), 1);
    assert_eq!(loaded.resources.gateways[0].source.location().line, 5);
    assert_eq!(loaded.diagnostics.len(), 1);
    assert_eq!(loaded.diagnostics[0].code, codes::DUPLICATE_RESOURCE);
}

#[test]
fn directories_load_recursively_and_skip_configmap_twins() {
    let dir = std::env::temp_dir().join(format!("sluice-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    std::fs::create_dir_all(dir.join("..data")).expect("mkdir");
    let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\n";
    std::fs::write(dir.join("sub/a.yaml"), gw).expect("write");
    std::fs::write(dir.join("..data/a.yaml"), gw).expect("write");
    std::fs::write(dir.join("notes.txt"), "not yaml").expect("write");
    let loaded = load_paths(&[&dir]);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    assert_eq!(loaded.resources.gateways.len(), 1);
}

#[test]
fn missing_files_are_errors_not_panics() {
    let loaded = load_paths(&["/nonexistent/sluice.yaml"]);
    assert_eq!(loaded.diagnostics.len(), 1);
    assert_eq!(loaded.diagnostics[0].code, codes::IO);
}

#[test]
fn edit_distance_finds_typos() {
    assert_eq!(edit_distance("resolutoin", "resolution"), 2);
    assert_eq!(
        did_you_mean("unknown variant `SIMPEL`, expected one of `DISABLE`, `SIMPLE`, `MUTUAL`"),
        Some("SIMPLE".into())
    );
    assert_eq!(did_you_mean("unknown field `zzz`, expected `hosts`"), None);
}

/// The rate-limit service's configuration: inside a ConfigMap (Istio's `ratelimit-config`) or
/// as a bare file; a mistake inside `config.yaml` is located at that key and named by path.
#[test]
fn rate_limit_service_configs_are_read_from_config_maps_and_bare_files() {
    let text = "\
apiVersion: v1
kind: ConfigMap
metadata: {name: ratelimit-config, namespace: default}
data:
  config.yaml: |
    domain: ratelimit
    descriptors:
      - key: PATH
        rate_limit: {unit: minute, requests_per_unit: 100}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated}
data:
  settings.yaml: |
    colour: blue
";
    let loaded = load_str("cm.yaml", text);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    assert_eq!(loaded.resources.rate_limit_configs.len(), 1);
    let rl = &loaded.resources.rate_limit_configs[0];
    assert_eq!(rl.spec.domain, "ratelimit");
    assert_eq!(rl.namespace(), "default");
    assert_eq!(rl.name(), "ratelimit-config");
    assert_eq!(
        loaded.resources.others.len(),
        1,
        "the unrelated ConfigMap stays an other"
    );

    let bare = load_str(
        "limits.yaml",
        "domain: egress\ndescriptors:\n- key: generic_key\n  value: partner\n",
    );
    assert!(!bare.has_errors(), "{:?}", bare.diagnostics);
    assert_eq!(bare.resources.rate_limit_configs[0].name(), "limits");

    let bad = load_str(
        "bad.yaml",
        "\
apiVersion: v1
kind: ConfigMap
metadata: {name: ratelimit-config}
data:
  config.yaml: |
    domain: d
    descriptors:
      - key: k
        rate_limit: {unit: fortnight, requests_per_unit: 1}
",
    );
    let d = bad
        .diagnostics
        .iter()
        .find(|d| d.level == crate::Level::Error)
        .expect("an error");
    assert!(d.message.contains("fortnight"), "{d}");
    assert!(d.to_string().contains("data.config.yaml"), "{d}");
    let at = d.location.as_ref().expect("located");
    assert_eq!((at.file.as_ref(), at.line), ("bad.yaml", 5), "{d}");
}
