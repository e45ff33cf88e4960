//! Telemetry resources (`telemetry.istio.io` v1alpha1 and v1) applied to this proxy, as Istio
//! applies them (`pilot/pkg/model/telemetry.go`):
//!
//! - Selection (`applicableTelemetries`): the root namespace's Telemetry without selector (the
//!   mesh default), then the proxy namespace's one without selector, then the first one of
//!   the proxy's namespace whose `selector.matchLabels` the proxy's labels satisfy. "First" is
//!   Istio's order: creation time, then name; a later one at the same level is left out (and
//!   reported here; `analyze` reports IST0159/IST0160). Telemetries with `targetRef(s)` are
//!   not applied (reported).
//! - Access logging (`mergeLogs`): the providers of the most specific level that names any,
//!   else meshConfig `defaultProviders.accessLogging`; entries are applied in order (mesh,
//!   namespace, workload), an entry without providers using its parent's, `disabled: true`
//!   removing a provider, the last filter given for a provider kept. Only entries whose
//!   `match.mode` includes `CLIENT` apply: a gateway's and a sidecar's outbound traffic is
//!   Istio's CLIENT. When no Telemetry configures logging and no default provider exists,
//!   meshConfig's `accessLogFile` applies (`None` here).
//! - Metrics (`mergeMetrics`): the `prometheus` provider's overrides, mesh → namespace →
//!   workload, each overriding what came before per metric and per tag; `ALL_METRICS`
//!   disabled drops the provider (a later override enables it again). No `prometheus`
//!   provider in scope means no Istio metrics, as in Istio.

use std::collections::{BTreeMap, BTreeSet};

use sluice_model::telemetry::{
    AccessLogging, IstioMetric, MetricsOverrides, TagOperation, Telemetry, WorkloadMode,
};
use sluice_model::{Diagnostic, Level, Resource};
use sluice_snapshot::AccessLog;
use sluice_snapshot::telemetry::{Metric, MetricOverride, Metrics, Tag, Telemetry as Compiled};

use super::codes::{DROPPED, NOT_SUPPORTED};
use super::registry::istio_order;
use super::{Ctx, Origin};

/// The built-in access log provider: Envoy's file access log on standard output, in Istio's
/// default text format (Istio's default `extensionProviders` entry `envoy`).
const ENVOY: &str = "envoy";
const PROMETHEUS: &str = "prometheus";
const DEV_STDOUT: &str = "/dev/stdout";

/// The Telemetries that apply to this proxy, least specific first.
pub(crate) fn applicable<'a>(cx: &mut Ctx<'a>) -> Vec<&'a Resource<Telemetry>> {
    let mut all: Vec<&'a Resource<Telemetry>> = cx.resources.telemetries.iter().collect();
    all.sort_by_key(|t| istio_order(t));
    let ns = cx.opts.namespace.clone();
    let root = cx.reg.root_ns.clone();
    let mut out = Vec::new();
    let in_scope = |t: &Resource<Telemetry>| t.namespace() == ns || t.namespace() == root;
    for t in all.iter().copied().filter(|t| in_scope(t)) {
        if t.spec.all_target_refs().next().is_some() {
            let path = if t.spec.target_ref.is_some() {
                "spec.targetRef"
            } else {
                "spec.targetRefs"
            };
            cx.report(
                t,
                NOT_SUPPORTED,
                Level::Warning,
                path,
                "Telemetry targetRef(s) are not supported: sluice applies Telemetry by namespace \
                 and selector.matchLabels only, and does not apply this one",
            );
        }
    }
    let namespace_wide = |t: &&Resource<Telemetry>| {
        t.spec.all_target_refs().next().is_none()
            && t.spec
                .selector
                .as_ref()
                .is_none_or(|s| s.match_labels.is_empty())
    };
    let mut levels = vec![(root.clone(), "without selector in the root namespace")];
    if ns != root {
        levels.push((ns.clone(), "without selector in the namespace"));
    }
    for (level_ns, what) in levels {
        let mut found = all
            .iter()
            .copied()
            .filter(|t| t.namespace() == level_ns)
            .filter(namespace_wide);
        if let Some(first) = found.next() {
            out.push(first);
            for later in found {
                ignored(cx, later, first, what);
            }
        }
    }
    let mut selecting = all.iter().copied().filter(|t| {
        t.namespace() == ns
            && t.spec.all_target_refs().next().is_none()
            && t.spec
                .selector
                .as_ref()
                .is_some_and(|s| !s.match_labels.is_empty() && s.matches(&cx.opts.labels))
    });
    if let Some(first) = selecting.next() {
        out.push(first);
        for later in selecting {
            ignored(cx, later, first, "selecting this workload");
        }
    }
    out
}

fn ignored(cx: &mut Ctx<'_>, later: &Resource<Telemetry>, first: &Resource<Telemetry>, what: &str) {
    cx.report(
        later,
        DROPPED,
        Level::Warning,
        "spec",
        format!(
            "another Telemetry {what} applies first ({}/{}, older or first by name, as Istio \
             orders them): this one is not applied",
            first.namespace(),
            first.name()
        ),
    );
}

/// Compiles what the applicable Telemetries say for this proxy.
pub(crate) fn build(cx: &mut Ctx<'_>) -> Compiled {
    let applied = applicable(cx);
    let providers = Providers::of(cx);
    Compiled {
        access_logs: access_logs(cx, &applied, &providers),
        metrics: metrics(cx, &applied, &providers),
    }
}

/// meshConfig `extensionProviders` merged over Istio's defaults (`prometheus`, `stackdriver`,
/// `envoy`), as `ApplyMeshConfig` merges them: a provider of the same name replaces the
/// default's configuration.
struct Providers {
    list: Vec<(String, String, serde_json::Value)>,
}

impl Providers {
    fn of(cx: &Ctx<'_>) -> Providers {
        let mut list: Vec<(String, String, serde_json::Value)> = vec![
            (
                PROMETHEUS.into(),
                "prometheus".into(),
                serde_json::json!({}),
            ),
            (
                "stackdriver".into(),
                "stackdriver".into(),
                serde_json::json!({}),
            ),
            (
                ENVOY.into(),
                "envoyFileAccessLog".into(),
                serde_json::json!({"path": DEV_STDOUT}),
            ),
        ];
        for p in &cx.mesh.extension_providers {
            let Some(kind) = p.kind() else { continue };
            let config = p.provider.get(kind).cloned().unwrap_or_default();
            match list.iter_mut().find(|(n, _, _)| *n == p.name) {
                Some(e) => {
                    e.1 = kind.to_owned();
                    e.2 = config;
                }
                None => list.push((p.name.clone(), kind.to_owned(), config)),
            }
        }
        Providers { list }
    }

    /// Istio's `fetchProvider`: by name, ignoring case.
    fn get(&self, name: &str) -> Option<(&str, &serde_json::Value)> {
        self.list
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, k, c)| (k.as_str(), c))
    }

    fn is_prometheus(&self, name: &str) -> bool {
        self.get(name).is_some_and(|(k, _)| k == "prometheus")
    }
}

/// meshConfig `defaultProviders.<key>`, when set.
fn default_providers(cx: &Ctx<'_>, key: &str) -> Option<Vec<String>> {
    let list = cx.mesh.default_providers.as_ref()?.get(key)?.as_array()?;
    Some(
        list.iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
    )
}

fn names(providers: &[sluice_model::telemetry::ProviderRef]) -> Vec<String> {
    providers.iter().map(|p| p.name.clone()).collect()
}

/// Whether an entry whose `match.mode` is `mode` applies to sluice's traffic (CLIENT).
fn applies_to_client(mode: WorkloadMode) -> bool {
    mode != WorkloadMode::Server
}

/// Istio's `mergeLogs` for the CLIENT mode, then each provider resolved to a file access log.
fn access_logs(
    cx: &mut Ctx<'_>,
    applied: &[&Resource<Telemetry>],
    providers: &Providers,
) -> Option<Vec<AccessLog>> {
    let defaults = default_providers(cx, "accessLogging").unwrap_or_default();
    let levels: Vec<&Resource<Telemetry>> = applied
        .iter()
        .copied()
        .filter(|t| !t.spec.access_logging.is_empty())
        .collect();
    if levels.is_empty() && defaults.is_empty() {
        return None;
    }
    // Provider → (filter, where the filter was written); the last entry naming it wins.
    let mut filters: BTreeMap<String, Option<(String, Origin)>> = BTreeMap::new();
    let mut scope = defaults.clone();
    for t in &levels {
        let mut level_names = BTreeSet::new();
        for (i, l) in t.spec.access_logging.iter().enumerate() {
            for p in names(&l.providers) {
                let f = l.filter.as_ref().map(|f| {
                    let path = format!("spec.accessLogging[{i}].filter.expression");
                    (f.expression.clone(), Origin::of(t, &path))
                });
                filters.insert(p.clone(), f);
                level_names.insert(p);
            }
        }
        if !level_names.is_empty() {
            scope = level_names.into_iter().collect();
        }
    }
    let scope: BTreeSet<String> = scope.into_iter().collect();
    // Provider → where it was last enabled (`None`: meshConfig's default providers).
    let mut enabled: BTreeMap<String, Option<Origin>> = BTreeMap::new();
    if levels.is_empty() {
        for d in &defaults {
            enabled.insert(d.clone(), None);
        }
    }
    let mut parent = defaults;
    for t in &levels {
        for (i, l) in t.spec.access_logging.iter().enumerate() {
            let mut entry = names(&l.providers);
            if entry.is_empty() {
                entry = parent.clone();
            }
            parent = entry.clone();
            let mode = l.match_.map(|m| m.mode).unwrap_or_default();
            for p in entry {
                if !scope.contains(&p) || !applies_to_client(mode) {
                    continue;
                }
                if l.disabled == Some(true) {
                    enabled.remove(&p);
                } else {
                    enabled.insert(p, Some(Origin::of(t, &entry_path(l, i))));
                }
            }
            if l.providers.is_empty() && l.filter.is_some() && l.disabled != Some(true) {
                // Istio keys filters by the providers an entry names (`mergeLogs`).
                cx.report(
                    t,
                    DROPPED,
                    Level::Warning,
                    &format!("spec.accessLogging[{i}].filter"),
                    "this entry names no providers, and Istio applies a filter only to the \
                     providers of its own entry: the filter is not applied (name the provider, \
                     e.g. providers: [{name: envoy}])",
                );
            }
        }
    }
    let mut logs = Vec::new();
    for (name, origin) in enabled {
        let filter = filters.get(&name).cloned().flatten();
        if let Some(log) = resolve_log(cx, providers, &name, origin.as_ref(), filter)
            && !logs.contains(&log)
        {
            logs.push(log);
        }
    }
    Some(logs)
}

/// A warning at `at`, or at meshConfig for what its default providers enable.
fn report_at(cx: &mut Ctx<'_>, at: Option<&Origin>, code: &'static str, message: String) {
    let d = match at {
        Some(o) => o.diag(code, Level::Warning, message),
        None => {
            let mut d = Diagnostic::new(
                code,
                Level::Warning,
                format!("meshConfig defaultProviders.accessLogging: {message}"),
            );
            if let Some(l) = &cx.mesh_origin {
                d = d.at(l.clone());
            }
            d
        }
    };
    cx.diags.push(d);
}

fn entry_path(l: &AccessLogging, i: usize) -> String {
    if l.providers.is_empty() {
        format!("spec.accessLogging[{i}]")
    } else {
        format!("spec.accessLogging[{i}].providers")
    }
}

/// One enabled provider as a file access log, or a finding about why it writes nothing.
fn resolve_log(
    cx: &mut Ctx<'_>,
    providers: &Providers,
    name: &str,
    origin: Option<&Origin>,
    filter: Option<(String, Origin)>,
) -> Option<AccessLog> {
    let Some((kind, config)) = providers.get(name) else {
        report_at(
            cx,
            origin,
            NOT_SUPPORTED,
            format!(
                "no meshConfig extensionProvider is named {name:?}: nothing is logged through \
                 it (Istio ignores it too)"
            ),
        );
        return None;
    };
    if kind != "envoyFileAccessLog" {
        report_at(
            cx,
            origin,
            NOT_SUPPORTED,
            format!(
                "access log provider {name:?} is of kind {kind}: sluice writes file access logs \
                 (envoyFileAccessLog) only, and logs nothing through this one"
            ),
        );
        return None;
    }
    let path = config
        .get("path")
        .and_then(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or(DEV_STDOUT)
        .to_owned();
    let mut format = None;
    let mut json = false;
    if let Some(f) = config.get("logFormat") {
        if let Some(text) = f.get("text").and_then(|t| t.as_str()) {
            format = Some(text.to_owned()).filter(|t| !t.is_empty());
        } else if let Some(labels) = f.get("labels") {
            json = true;
            format = labels
                .as_object()
                .filter(|m| !m.is_empty())
                .map(|m| serde_json::Value::Object(m.clone()).to_string());
        }
        if f.get("omitEmptyValues").is_some() {
            report_at(
                cx,
                origin,
                NOT_SUPPORTED,
                format!(
                    "extensionProvider {name:?}: logFormat.omitEmptyValues is not supported; \
                     empty values are written as Envoy writes them by default"
                ),
            );
        }
    }
    let filter = filter.map(|(expr, at)| match sluice_snapshot::cel::parse(&expr) {
        Ok(_) => expr,
        Err(e) => {
            cx.diags.push(at.diag(
                DROPPED,
                Level::Error,
                format!("filter.expression is not a valid CEL expression ({e}): nothing is logged"),
            ));
            // An entry no expression selects: Envoy refuses such a filter, so nothing is
            // logged rather than everything.
            "false".to_owned()
        }
    });
    Some(AccessLog {
        path: Some(path),
        format,
        json,
        filter,
    })
}

/// Istio's `mergeMetrics` for the `prometheus` provider and the CLIENT mode.
fn metrics(cx: &mut Ctx<'_>, applied: &[&Resource<Telemetry>], providers: &Providers) -> Metrics {
    let defaults = default_providers(cx, "metrics").unwrap_or_else(|| vec![PROMETHEUS.to_owned()]);
    let entries: Vec<(&Resource<Telemetry>, usize)> = applied
        .iter()
        .flat_map(|t| (0..t.spec.metrics.len()).map(move |i| (*t, i)))
        .collect();
    let mut scope = defaults.clone();
    for (t, i) in &entries {
        let n = names(&t.spec.metrics[*i].providers);
        if !n.is_empty() {
            scope = n;
        }
    }
    let scope: BTreeSet<String> = scope.into_iter().collect();
    // Is a prometheus provider configured (Istio: a key in its `providers` map)?
    let mut configured = entries.is_empty() && defaults.iter().any(|d| providers.is_prometheus(d));
    let mut all_disabled = false;
    let mut overrides: BTreeMap<Metric, MetricOverride> = BTreeMap::new();
    let mut parent = defaults;
    for (t, i) in entries {
        let m = &t.spec.metrics[i];
        let mut entry = names(&m.providers);
        if entry.is_empty() {
            entry = parent.clone();
        }
        parent = entry.clone();
        let prometheus = entry
            .iter()
            .any(|p| scope.contains(p) && providers.is_prometheus(p));
        if !prometheus {
            continue;
        }
        configured = true;
        for (j, o) in m.overrides.iter().enumerate() {
            let path = format!("spec.metrics[{i}].overrides[{j}]");
            let selector = o.match_.as_ref();
            let metric = selector.and_then(|s| s.metric);
            let custom = selector.and_then(|s| s.custom_metric.as_deref());
            // Istio's `isAllMetrics`: `metric: ALL_METRICS` written out.
            if custom.is_none()
                && metric == Some(IstioMetric::AllMetrics)
                && o.disabled == Some(true)
            {
                all_disabled = true;
                continue;
            }
            all_disabled = false;
            let mode = selector.map(|s| s.mode).unwrap_or_default();
            if !applies_to_client(mode) {
                continue;
            }
            let targets: Vec<Metric> = match (custom, metric) {
                (Some(c), _) => {
                    cx.report(
                        t,
                        NOT_SUPPORTED,
                        Level::Warning,
                        &format!("{path}.match.customMetric"),
                        format!(
                            "customMetric {c:?}: sluice records Istio's standard metrics only; \
                             this override is not applied"
                        ),
                    );
                    continue;
                }
                (None, None | Some(IstioMetric::AllMetrics)) => Metric::ALL.to_vec(),
                (None, Some(m)) => match standard(m) {
                    Some(m) => vec![m],
                    None => {
                        cx.report(
                            t,
                            NOT_SUPPORTED,
                            Level::Warning,
                            &format!("{path}.match.metric"),
                            format!(
                                "sluice does not record {} (gRPC message counts): this override \
                                 is not applied",
                                m.prometheus_name().unwrap_or("this metric")
                            ),
                        );
                        continue;
                    }
                },
            };
            let tags = tags(cx, t, o, &path);
            for target in targets {
                let entry = overrides.entry(target).or_default();
                if let Some(d) = o.disabled {
                    entry.disabled = d;
                }
                for (k, v) in &tags {
                    entry.tags.insert(k.clone(), v.clone());
                }
            }
        }
    }
    overrides.retain(|_, o| *o != MetricOverride::default());
    Metrics {
        disabled: !configured || all_disabled,
        overrides,
    }
}

fn standard(m: IstioMetric) -> Option<Metric> {
    Some(match m {
        IstioMetric::RequestCount => Metric::RequestCount,
        IstioMetric::RequestDuration => Metric::RequestDuration,
        IstioMetric::RequestSize => Metric::RequestSize,
        IstioMetric::ResponseSize => Metric::ResponseSize,
        IstioMetric::TcpOpenedConnections => Metric::TcpOpenedConnections,
        IstioMetric::TcpClosedConnections => Metric::TcpClosedConnections,
        IstioMetric::TcpSentBytes => Metric::TcpSentBytes,
        IstioMetric::TcpReceivedBytes => Metric::TcpReceivedBytes,
        IstioMetric::AllMetrics
        | IstioMetric::GrpcRequestMessages
        | IstioMetric::GrpcResponseMessages => return None,
    })
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn label_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

fn tags(
    cx: &mut Ctx<'_>,
    t: &Resource<Telemetry>,
    o: &MetricsOverrides,
    path: &str,
) -> Vec<(String, Tag)> {
    let mut out = Vec::new();
    for (name, to) in &o.tag_overrides {
        let tpath = format!("{path}.tagOverrides.{name}");
        if !label_name_ok(name) {
            cx.report(
                t,
                DROPPED,
                Level::Warning,
                &tpath,
                format!(
                    "{name:?} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*): this tag \
                     override is not applied"
                ),
            );
            continue;
        }
        let tag = match to.operation {
            TagOperation::Remove => Tag::Remove,
            TagOperation::Upsert => {
                let value = to.value.clone().unwrap_or_default();
                if let Err(e) = sluice_snapshot::cel::parse(&value) {
                    cx.report(
                        t,
                        DROPPED,
                        Level::Warning,
                        &format!("{tpath}.value"),
                        format!(
                            "tagOverrides.value is not a valid CEL expression ({e}): the label \
                             is `unknown`"
                        ),
                    );
                }
                Tag::Value(value)
            }
        };
        out.push((name.clone(), tag));
    }
    out
}

#[cfg(test)]
mod tests;
