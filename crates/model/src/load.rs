//! Files, directories and stdin → typed [`Resources`] plus diagnostics.
//!
//! Loading never stops at the first problem: every document that can be read is read, and
//! every one that cannot is a diagnostic naming file, line, column and field path. A typo is
//! never silently ignored.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::diag::{Diagnostic, codes};
use crate::resource::{IstioKind, Kind, ObjectMeta, OtherObject, Resource, Resources};
use crate::source::Source;
use crate::yaml;

mod walk;

pub use walk::{MAX_FILE_BYTES, MAX_TOTAL_BYTES, walk};

/// The result of loading: what could be read, and what was wrong.
#[derive(Debug, Default)]
pub struct Loaded {
    pub resources: Resources,
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Loads files and directories (recursively, `*.yaml`, `*.yml`, `*.json`, in name order, as
/// [`walk`] lists them); `-` reads standard input. Finding no resource at all is a warning:
/// a wrong path or an empty mount should not pass for a clean configuration.
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Loaded {
    let (files, diagnostics) = walk(paths);
    let mut loader = Loader::default();
    loader.loaded.diagnostics = diagnostics;
    let mut reader = walk::Reader::default();
    for file in files {
        let (shown, read) = if file == Path::new("-") {
            ("<stdin>".to_owned(), reader.read(std::io::stdin().lock()))
        } else {
            (file.display().to_string(), reader.file(&file))
        };
        match read {
            Ok(text) => loader.text(shown.into(), &text),
            Err(e) => {
                let d = walk::cannot_read(&shown, &e.to_string());
                loader.loaded.diagnostics.push(d);
            }
        }
    }
    let resources = &loader.loaded.resources;
    if resources.is_empty() && resources.others.is_empty() && !loader.loaded.has_errors() {
        loader.loaded.diagnostics.push(Diagnostic::warning(
            codes::EMPTY_INPUT,
            "no resources found in the given paths",
        ));
    }
    loader.finish()
}

/// Loads YAML text as if read from a file named `file`.
pub fn load_str(file: &str, text: &str) -> Loaded {
    let mut loader = Loader::default();
    loader.text(file.into(), text);
    loader.finish()
}

/// Loads one resource given as a JSON-shaped value (for tools and tests that build resources
/// in code); field positions are unknown, so messages point at `file` only.
pub fn load_value(file: &str, value: Value) -> Loaded {
    let mut loader = Loader::default();
    loader.object(value, Source::synthetic(file));
    loader.finish()
}

/// Parses YAML text into its documents as JSON-shaped values, with sluice's limits on depth
/// and alias expansion; the error names line and column.
pub fn parse_yaml(text: &str) -> Result<Vec<Value>, String> {
    yaml::parse(text)
        .map(|docs| docs.into_iter().map(|d| d.value).collect())
        .map_err(|e| format!("line {}, column {}: {}", e.line, e.column, e.message))
}

#[derive(Default)]
struct Loader {
    loaded: Loaded,
    order: u64,
}

impl Loader {
    fn finish(mut self) -> Loaded {
        let r = &mut self.loaded.resources;
        let d = &mut self.loaded.diagnostics;
        keep_last_definition(&mut r.service_entries, d);
        keep_last_definition(&mut r.gateways, d);
        keep_last_definition(&mut r.virtual_services, d);
        keep_last_definition(&mut r.destination_rules, d);
        keep_last_definition(&mut r.sidecars, d);
        keep_last_definition(&mut r.workload_entries, d);
        keep_last_definition(&mut r.envoy_filters, d);
        keep_last_definition(&mut r.authorization_policies, d);
        keep_last_definition(&mut r.peer_authentications, d);
        keep_last_definition(&mut r.telemetries, d);
        r.kube_services = crate::kube::services_as_entries(&r.others);
        self.loaded
    }

    fn text(&mut self, file: Arc<str>, text: &str) {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        match yaml::parse(text) {
            Err(e) => {
                let mut message = format!("invalid YAML: {}", e.message);
                if let Some(hint) = syntax_hint(text, &e) {
                    message.push_str(". ");
                    message.push_str(hint);
                }
                self.loaded
                    .diagnostics
                    .push(
                        Diagnostic::error(codes::YAML_SYNTAX, message).at(crate::Location {
                            file,
                            line: e.line,
                            column: e.column,
                        }),
                    );
            }
            Ok(docs) => {
                for doc in docs {
                    let source =
                        Source::new(file.clone(), doc.line, doc.column, Arc::new(doc.fields));
                    self.object(doc.value, source);
                }
            }
        }
    }

    fn object(&mut self, value: Value, source: Source) {
        let Value::Object(mut map) = value else {
            self.loaded.diagnostics.push(
                Diagnostic::error(
                    codes::SCHEMA,
                    "a resource must be a mapping with apiVersion, kind, metadata and spec",
                )
                .at(source.location()),
            );
            return;
        };
        let api_version = map.remove("apiVersion");
        let kind = map.remove("kind");
        match (api_version, kind) {
            (None, None) if map.contains_key("domain") => {
                // The rate-limit service's own file format: `domain` and `descriptors`.
                let meta = ObjectMeta {
                    name: std::path::Path::new(source.file())
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    ..ObjectMeta::default()
                };
                self.typed(
                    String::new(),
                    meta,
                    Value::Object(map),
                    "",
                    source,
                    |r, x| r.rate_limit_configs.push(x),
                );
            }
            (None, None) if map.contains_key("spec") => {
                // An IstioOperator overlay with no envelope, as istio.io's tasks publish them
                // for `istioctl install -f` (`spec: {meshConfig: …}`); `spec` is no MeshConfig
                // field. It is named after its file, as istioctl names it `installed-state`.
                let name = std::path::Path::new(source.file())
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_lowercase().replace(['_', '.'], "-"))
                    .unwrap_or_else(|| "installed-state".into());
                map.insert("metadata".into(), serde_json::json!({"name": name}));
                self.envelope(
                    "install.istio.io/v1alpha1".into(),
                    "IstioOperator".into(),
                    map,
                    source,
                )
            }
            (None, None) => {
                // istioctl's --meshConfigFile and the `mesh` key of the `istio` ConfigMap hold
                // a bare MeshConfig with no envelope.
                let meta = ObjectMeta {
                    name: "mesh".into(),
                    ..ObjectMeta::default()
                };
                self.typed(
                    String::new(),
                    meta,
                    Value::Object(map),
                    "",
                    source,
                    |r, x| r.mesh_configs.push(x),
                );
            }
            (Some(Value::String(av)), Some(Value::String(kind))) => {
                self.envelope(av, kind, map, source)
            }
            _ => self.loaded.diagnostics.push(
                Diagnostic::error(
                    codes::SCHEMA,
                    "apiVersion and kind must both be given as strings",
                )
                .at(source.location()),
            ),
        }
    }

    fn envelope(&mut self, av: String, kind: String, mut map: Map<String, Value>, source: Source) {
        let (group, version) = av.rsplit_once('/').unwrap_or(("", av.as_str()));
        let meta_value = map.remove("metadata").unwrap_or(Value::Object(Map::new()));
        let meta: ObjectMeta = match deserialize(meta_value, "metadata", &source) {
            Ok(m) => m,
            Err(d) => {
                let d = d.origin(format!("{kind} <unnamed>"));
                return self.loaded.diagnostics.push(d);
            }
        };
        let istio = group.ends_with(".istio.io");
        if let Some((field, message)) = invalid_name(&meta, istio) {
            self.loaded.diagnostics.push(
                Diagnostic::error(codes::SCHEMA, message)
                    .origin(kind.clone())
                    .at(source.location_of(field))
                    .path(field),
            );
            // The API server would reject the object, but it is still analyzed, as istioctl
            // analyzes files, unless its name is too long to repeat in every message about it.
            let long = |s: &str| s.len() > MAX_NAME_LEN;
            if long(&meta.name) || meta.namespace.as_deref().is_some_and(long) {
                return;
            }
        }
        let origin = match &meta.namespace {
            Some(ns) => format!("{kind} {ns}/{}", meta.name),
            None => format!("{kind} {}", meta.name),
        };
        if !istio {
            return self.other(av.clone(), kind, meta, map, source, &origin);
        }
        let Some(k) = Kind::from_name(&kind).filter(|k| k.group() == group) else {
            return self.loaded.diagnostics.push(
                Diagnostic::error(
                    codes::UNKNOWN_KIND,
                    format!("{kind} of {group} is not an Istio kind sluice knows"),
                )
                .origin(origin)
                .at(source.location_of("kind")),
            );
        };
        if !k.versions().contains(&version) {
            return self.loaded.diagnostics.push(
                Diagnostic::error(
                    codes::UNKNOWN_KIND,
                    format!(
                        "{av} is not an API version of {kind}; Istio serves {}",
                        k.versions()
                            .iter()
                            .map(|v| format!("{group}/{v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
                .origin(origin)
                .at(source.location_of("apiVersion")),
            );
        }
        if meta.name.is_empty() {
            self.loaded.diagnostics.push(
                Diagnostic::error(codes::SCHEMA, "metadata.name is required")
                    .origin(origin.clone())
                    .at(source.location_of("metadata"))
                    .path("metadata.name"),
            );
        }
        // The API server owns `status`; it carries no configuration.
        map.remove("status");
        let spec = map.remove("spec").unwrap_or(Value::Object(Map::new()));
        for key in map.keys() {
            self.loaded.diagnostics.push(
                Diagnostic::error(
                    codes::SCHEMA,
                    format!(
                        "unknown field `{key}`; a resource has apiVersion, kind, metadata, spec and status"
                    ),
                )
                .origin(origin.clone())
                .at(source.location_of(key))
                .path(key.clone()),
            );
        }
        macro_rules! push {
            ($field:ident) => {
                self.typed(av, meta, spec, "spec", source, |r, x| r.$field.push(x))
            };
        }
        match k {
            Kind::ServiceEntry => push!(service_entries),
            Kind::Gateway => push!(gateways),
            Kind::VirtualService => push!(virtual_services),
            Kind::DestinationRule => push!(destination_rules),
            Kind::Sidecar => push!(sidecars),
            Kind::WorkloadEntry => push!(workload_entries),
            Kind::EnvoyFilter => push!(envoy_filters),
            Kind::AuthorizationPolicy => push!(authorization_policies),
            Kind::PeerAuthentication => push!(peer_authentications),
            Kind::Telemetry => push!(telemetries),
            Kind::IstioOperator => push!(istio_operators),
            Kind::MeshConfig => push!(mesh_configs),
            Kind::RateLimitConfig => push!(rate_limit_configs),
        }
    }

    fn typed<T: DeserializeOwned + IstioKind>(
        &mut self,
        api_version: String,
        meta: ObjectMeta,
        spec: Value,
        base: &str,
        source: Source,
        add: impl FnOnce(&mut Resources, Resource<T>),
    ) {
        let source = source.with_order(self.order);
        self.order += 1;
        match deserialize::<T>(spec, base, &source) {
            Ok(spec) => add(
                &mut self.loaded.resources,
                Resource {
                    api_version,
                    meta,
                    spec,
                    source,
                },
            ),
            Err(d) => {
                let r = Resource {
                    api_version: String::new(),
                    meta,
                    spec: (),
                    source,
                };
                let d = d.origin(r.origin_of(T::KIND.name()));
                self.loaded.diagnostics.push(d);
            }
        }
    }

    fn other(
        &mut self,
        av: String,
        kind: String,
        meta: ObjectMeta,
        mut map: Map<String, Value>,
        source: Source,
        origin: &str,
    ) {
        if kind == "List" && av == "v1" {
            if let Some(Value::Array(items)) = map.remove("items") {
                for (i, item) in items.into_iter().enumerate() {
                    let nested = source.nested(&format!("items[{i}]"));
                    self.object(item, nested);
                }
            }
            return;
        }
        if kind == "ConfigMap"
            && av == "v1"
            && (meta.name == "istio" || meta.name.starts_with("istio-"))
            && let Some(Value::String(mesh)) = map.get("data").and_then(|d| d.get("mesh"))
        {
            return self.embedded_mesh_config(mesh.clone(), &source);
        }
        if kind == "ConfigMap" && av == "v1" && self.rate_limit_config_map(&meta, &map, &source) {
            return;
        }
        let core = matches!(
            av.as_str(),
            "v1" | "apps/v1" | "batch/v1" | "networking.k8s.io/v1" | "policy/v1"
        );
        if !core {
            self.loaded.diagnostics.push(
                Diagnostic::info(
                    codes::SKIPPED_KIND,
                    format!("{kind} ({av}) is not an Istio resource; sluice skips it"),
                )
                .origin(origin.to_owned())
                .at(source.location()),
            );
        }
        let mut body = Value::Object(map);
        if let Value::Object(m) = &mut body {
            m.insert("apiVersion".into(), Value::String(av.clone()));
        }
        self.loaded.resources.others.push(Resource {
            api_version: av,
            meta,
            spec: OtherObject { kind, body },
            source,
        });
    }

    /// A ConfigMap whose `*.yaml` data holds rate-limit service configurations (Istio's
    /// `ratelimit-config`): each document with a `domain` is one. False when it holds none, and
    /// the ConfigMap is an ordinary other object.
    fn rate_limit_config_map(
        &mut self,
        meta: &ObjectMeta,
        map: &Map<String, Value>,
        outer: &Source,
    ) -> bool {
        let Some(Value::Object(data)) = map.get("data") else {
            return false;
        };
        let mut found = false;
        for (key, text) in data {
            let Value::String(text) = text else { continue };
            if !(key.ends_with(".yaml") || key.ends_with(".yml")) {
                continue;
            }
            let Ok(docs) = yaml::parse(text) else {
                continue;
            };
            let field = format!("data.{key}");
            let at = outer.location_of(&field);
            for doc in docs {
                let Value::Object(body) = doc.value else {
                    continue;
                };
                if !body.contains_key("domain") {
                    continue;
                }
                found = true;
                // Positions inside the string are relative to it; point at the data key.
                let source = Source::new(at.file.clone(), at.line, at.column, Arc::default());
                self.typed(
                    String::new(),
                    meta.clone(),
                    Value::Object(body),
                    &field,
                    source,
                    |r, x| r.rate_limit_configs.push(x),
                );
            }
        }
        found
    }

    /// The `mesh` key of the `istio` ConfigMap is MeshConfig YAML inside a string.
    fn embedded_mesh_config(&mut self, text: String, outer: &Source) {
        let at = outer.location_of("data.mesh");
        match yaml::parse(&text) {
            Err(e) => self.loaded.diagnostics.push(
                Diagnostic::error(
                    codes::YAML_SYNTAX,
                    format!(
                        "invalid YAML in data.mesh (its line {}): {}",
                        e.line, e.message
                    ),
                )
                .at(at),
            ),
            Ok(docs) => {
                for doc in docs {
                    // Positions inside the string are relative to it; point at `data.mesh`.
                    let source = Source::new(at.file.clone(), at.line, at.column, Arc::default());
                    self.object(doc.value, source);
                }
            }
        }
    }
}

/// Longest Kubernetes object name (a DNS-1123 subdomain).
const MAX_NAME_LEN: usize = 253;
/// Longest namespace (a DNS-1123 label).
const MAX_LABEL_LEN: usize = 63;

/// Kubernetes' checks of `metadata.namespace` (a DNS-1123 label) and, for Istio's kinds,
/// `metadata.name` (a DNS-1123 subdomain): the field and the API server's message. Other kinds
/// have other name rules (RBAC's `system:` names), left to their own tools.
fn invalid_name(meta: &ObjectMeta, istio: bool) -> Option<(&'static str, String)> {
    const LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric \
                         characters or '-', and must start and end with an alphanumeric character";
    const SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
                             alphanumeric characters, '-' or '.', and must start and end with an \
                             alphanumeric character";
    let name = meta.name.as_str();
    let (field, value, max, rule) = match meta.namespace.as_deref() {
        Some(ns) if ns.len() > MAX_LABEL_LEN || !is_dns1123_label(ns) => {
            ("metadata.namespace", ns, MAX_LABEL_LEN, LABEL)
        }
        _ if istio
            && !name.is_empty()
            && (name.len() > MAX_NAME_LEN || !name.split('.').all(is_dns1123_label)) =>
        {
            ("metadata.name", name, MAX_NAME_LEN, SUBDOMAIN)
        }
        _ => return None,
    };
    let message = if value.len() > max {
        // A value too long to be a name is not worth repeating.
        let len = value.len();
        format!("{field}: Invalid value: {len} characters: must be no more than {max} characters")
    } else {
        format!("{field}: Invalid value: {value:?}: {rule}")
    };
    Some((field, message))
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, any length.
fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    b.first().is_some_and(inner)
        && b.last().is_some_and(inner)
        && b.iter().all(|c| inner(c) || *c == b'-')
}

/// Deserializes `value` as `T`; on failure, a diagnostic at the offending field's position.
fn deserialize<T: DeserializeOwned>(
    value: Value,
    base: &str,
    source: &Source,
) -> Result<T, Diagnostic> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.inner().to_string();
        let mut path = e.path().to_string();
        if path == "." {
            path.clear();
        }
        let mut path = match (base.is_empty(), path.is_empty()) {
            (true, _) => path,
            (false, true) => base.to_owned(),
            (false, false) => format!("{base}.{path}"),
        };
        if let Some(field) = between(&inner, "unknown field `", "`")
            && !path.ends_with(field)
        {
            // Point at the unknown field itself, not at its parent.
            path = if path.is_empty() {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            };
        }
        let mut message = format!("{path}: {inner}");
        if let Some(hint) = did_you_mean(&inner) {
            message.push_str(&format!(" (did you mean `{hint}`?)"));
        }
        Diagnostic::error(codes::SCHEMA, message)
            .at(source.location_of(&path))
            .path(path)
    })
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let len = s[from..].find(end)?;
    Some(&s[from..from + len])
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" (or variant), the expected name
/// closest to the one written, when it is close enough to be a typo.
fn did_you_mean(message: &str) -> Option<String> {
    let written = between(message, "unknown field `", "`")
        .or_else(|| between(message, "unknown variant `", "`"))?;
    let (_, expected) = message.split_once("expected ")?;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|cand| {
            (
                edit_distance(&written.to_lowercase(), &cand.to_lowercase()),
                cand,
            )
        })
        .filter(|(d, cand)| *d <= 2.max(cand.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_owned())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Advice for well-known mistakes, beyond what the YAML parser can say.
fn syntax_hint(text: &str, e: &yaml::SyntaxError) -> Option<&'static str> {
    let bare_braces = e.message.starts_with("`{}` stands where");
    if bare_braces && text.contains("kind: AuthorizationPolicy") {
        return Some(
            "To deny everything a policy selects, delete the `{}` line: an AuthorizationPolicy \
             whose spec has a `selector` and no `rules` (action ALLOW by default) allows nothing, \
             so every request to what it selects is denied; `spec: {}` does the same for every \
             workload of its namespace (all of the mesh in the root namespace istio-system). \
             Note that ALLOW policies add up: while any other ALLOW policy matches a request, \
             an allow-nothing policy changes nothing",
        );
    }
    if bare_braces {
        return Some("To give a field an empty value, write it as `field: {}`");
    }
    if text.contains('\t') && e.message.contains("tab") {
        return Some("YAML indentation must use spaces, not tabs");
    }
    None
}

/// Where the same kind/namespace/name is defined twice, the last definition is kept, as a
/// later `kubectl apply` replaces an earlier one; each replaced one is reported.
fn keep_last_definition<T: IstioKind>(list: &mut Vec<Resource<T>>, diags: &mut Vec<Diagnostic>) {
    let mut last: HashMap<(String, String), usize> = HashMap::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        last.insert((r.namespace().to_owned(), r.name().to_owned()), i);
    }
    if last.len() == list.len() {
        return;
    }
    let mut i = 0;
    list.retain(|r| {
        let idx = i;
        i += 1;
        let winner = last[&(r.namespace().to_owned(), r.name().to_owned())];
        if winner != idx {
            diags.push(
                Diagnostic::warning(
                    codes::DUPLICATE_RESOURCE,
                    format!(
                        "{} is defined again later; this definition is ignored",
                        r.origin()
                    ),
                )
                .origin(r.origin())
                .at(r.source.location()),
            );
        }
        winner == idx
    });
}

#[cfg(test)]
mod tests;
