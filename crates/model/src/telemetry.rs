//! `Telemetry` (`telemetry.istio.io/v1`, `v1alpha1`): tracing, metrics and access logging of
//! workloads.

use std::collections::BTreeMap;

use crate::security::authorization_policy::PolicyTargetReference;
use crate::values::{Duration, WorkloadSelector};

/// Spec of a `Telemetry` resource.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Telemetry {
    /// Workloads (by label) the resource applies to; absent means the namespace (or mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<Tracing>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metrics>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<AccessLogging>,
}

/// `ProviderRef`: a provider named in MeshConfig's `extensionProviders` (or a built-in one such
/// as `envoy` or `prometheus`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRef {
    /// The provider's name (required).
    pub name: String,
}

/// `WorkloadMode`: the traffic direction, relative to the workload, a setting applies to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
pub enum WorkloadMode {
    #[default]
    #[serde(rename = "CLIENT_AND_SERVER")]
    ClientAndServer,
    #[serde(rename = "CLIENT")]
    Client,
    #[serde(rename = "SERVER")]
    Server,
}

/// `Tracing`.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<TracingSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// Percentage (0-100) of requests sampled when no upstream decision exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_sampling_percentage: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_span_reporting: Option<bool>,
    /// Extra span tags, by tag name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_tags: BTreeMap<String, CustomTag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_request_id_for_trace_sampling: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_istio_tags: Option<bool>,
}

/// `Tracing.TracingSelector`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingSelector {
    #[serde(default)]
    pub mode: WorkloadMode,
}

/// `Tracing.CustomTag`: one of `literal`, `environment`, `header`, `formatter`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomTag {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<LiteralTag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvironmentTag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<RequestHeaderTag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formatter: Option<FormatterTag>,
}

/// `Tracing.Literal`: a fixed tag value.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LiteralTag {
    pub value: String,
}

/// `Tracing.Environment`: the value of an environment variable of the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentTag {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_value: String,
}

/// `Tracing.RequestHeader`: the value of a request header.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestHeaderTag {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_value: String,
}

/// `Tracing.Formatter`: an access-log style formatter (`%REQ(:PATH)%`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FormatterTag {
    pub value: String,
}

/// `Metrics`.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metrics {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<MetricsOverrides>,
    /// How often metrics are reported (for providers that push).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporting_interval: Option<Duration>,
}

/// `MetricsOverrides`: changes to the metrics selected by `match`.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsOverrides {
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<MetricSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Tag (label) changes, by tag name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

/// `MetricSelector`: a standard metric (`metric`) or a custom one (`customMetric`), and a mode.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<IstioMetric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_metric: Option<String>,
    #[serde(default)]
    pub mode: WorkloadMode,
}

/// `MetricSelector.IstioMetric`: Istio's standard metrics.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IstioMetric {
    #[default]
    AllMetrics,
    /// `istio_requests_total`.
    RequestCount,
    /// `istio_request_duration_milliseconds`.
    RequestDuration,
    /// `istio_request_bytes`.
    RequestSize,
    /// `istio_response_bytes`.
    ResponseSize,
    /// `istio_tcp_connections_opened_total`.
    TcpOpenedConnections,
    /// `istio_tcp_connections_closed_total`.
    TcpClosedConnections,
    /// `istio_tcp_sent_bytes_total`.
    TcpSentBytes,
    /// `istio_tcp_received_bytes_total`.
    TcpReceivedBytes,
    /// `istio_request_messages_total`.
    GrpcRequestMessages,
    /// `istio_response_messages_total`.
    GrpcResponseMessages,
}

impl IstioMetric {
    /// The Prometheus name of the metric; `None` for `ALL_METRICS`.
    pub fn prometheus_name(self) -> Option<&'static str> {
        Some(match self {
            IstioMetric::AllMetrics => return None,
            IstioMetric::RequestCount => "istio_requests_total",
            IstioMetric::RequestDuration => "istio_request_duration_milliseconds",
            IstioMetric::RequestSize => "istio_request_bytes",
            IstioMetric::ResponseSize => "istio_response_bytes",
            IstioMetric::TcpOpenedConnections => "istio_tcp_connections_opened_total",
            IstioMetric::TcpClosedConnections => "istio_tcp_connections_closed_total",
            IstioMetric::TcpSentBytes => "istio_tcp_sent_bytes_total",
            IstioMetric::TcpReceivedBytes => "istio_tcp_received_bytes_total",
            IstioMetric::GrpcRequestMessages => "istio_request_messages_total",
            IstioMetric::GrpcResponseMessages => "istio_response_messages_total",
        })
    }
}

/// `MetricsOverrides.TagOverride`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagOverride {
    #[serde(default)]
    pub operation: TagOperation,
    /// A CEL expression giving the tag's value (`request.host`); used by `UPSERT` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `MetricsOverrides.TagOverride.Operation`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
pub enum TagOperation {
    #[default]
    #[serde(rename = "UPSERT")]
    Upsert,
    #[serde(rename = "REMOVE")]
    Remove,
}

/// `AccessLogging`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogging {
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<LogSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Which requests/connections are logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<AccessLogFilter>,
}

/// `AccessLogging.LogSelector`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogSelector {
    #[serde(default)]
    pub mode: WorkloadMode,
}

/// `AccessLogging.Filter`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogFilter {
    /// A CEL expression; the entry is logged when it is true (`response.code >= 400`).
    #[serde(default)]
    pub expression: String,
}

impl Telemetry {
    /// All target references, `targetRef` first, then `targetRefs`.
    pub fn all_target_refs(&self) -> impl Iterator<Item = &PolicyTargetReference> {
        self.target_ref.iter().chain(self.target_refs.iter())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: serde_json::Value) -> Result<Telemetry, String> {
        serde_json::from_value::<Telemetry>(v).map_err(|e| e.to_string())
    }

    #[test]
    fn guide_telemetry_parses() {
        // guide/telemetry-egress.yaml, spec.
        let t = parse(json!({
            "selector": {"matchLabels": {"istio": "egressgateway"}},
            "accessLogging": [{
                "providers": [{"name": "envoy"}],
                "filter": {"expression": "true"}
            }],
            "metrics": [{
                "providers": [{"name": "prometheus"}],
                "overrides": [
                    {
                        "match": {"metric": "REQUEST_COUNT"},
                        "tagOverrides": {"destination_service": {"value": "request.host"}}
                    },
                    {
                        "match": {"metric": "REQUEST_DURATION"},
                        "tagOverrides": {"destination_service": {"value": "request.host"}}
                    }
                ]
            }]
        }))
        .expect("guide telemetry");
        let log = &t.access_logging[0];
        assert_eq!(log.providers[0].name, "envoy");
        assert_eq!(
            log.filter.as_ref().map(|f| f.expression.as_str()),
            Some("true")
        );
        let m = &t.metrics[0];
        assert_eq!(m.providers[0].name, "prometheus");
        assert_eq!(m.overrides.len(), 2);
        let first = &m.overrides[0];
        let sel = first.match_.as_ref().expect("match");
        assert_eq!(sel.metric, Some(IstioMetric::RequestCount));
        assert_eq!(sel.mode, WorkloadMode::ClientAndServer);
        let tag = &first.tag_overrides["destination_service"];
        assert_eq!(tag.operation, TagOperation::Upsert);
        assert_eq!(tag.value.as_deref(), Some("request.host"));
        assert_eq!(
            m.overrides[1].match_.as_ref().and_then(|s| s.metric),
            Some(IstioMetric::RequestDuration)
        );
        assert_eq!(
            IstioMetric::RequestCount.prometheus_name(),
            Some("istio_requests_total")
        );
    }

    #[test]
    fn every_field_round_trips() {
        let v = json!({
            "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "egress"}],
            "tracing": [{
                "match": {"mode": "SERVER"},
                "providers": [{"name": "zipkin"}],
                "randomSamplingPercentage": 12.5,
                "disableSpanReporting": false,
                "customTags": {
                    "a": {"literal": {"value": "x"}},
                    "b": {"environment": {"name": "POD", "defaultValue": "?"}},
                    "c": {"header": {"name": "x-id"}},
                    "d": {"formatter": {"value": "%REQ(:PATH)%"}}
                },
                "useRequestIdForTraceSampling": true,
                "enableIstioTags": true
            }],
            "metrics": [{
                "overrides": [{
                    "match": {"customMetric": "my_metric", "mode": "CLIENT"},
                    "disabled": true,
                    "tagOverrides": {"x": {"operation": "REMOVE"}}
                }],
                "reportingInterval": "15s"
            }],
            "accessLogging": [{"match": {"mode": "CLIENT"}, "disabled": true}]
        });
        let t = parse(v.clone()).expect("full telemetry");
        assert_eq!(t.tracing[0].random_sampling_percentage, Some(12.5));
        assert_eq!(
            t.metrics[0].reporting_interval,
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            t.metrics[0].overrides[0].tag_overrides["x"].operation,
            TagOperation::Remove
        );
        assert_eq!(t.all_target_refs().count(), 1);
        assert_eq!(serde_json::to_value(&t).ok(), Some(v));
    }

    #[test]
    fn unknown_field_is_rejected_by_name() {
        let err =
            parse(json!({"accessLogging": [{"providers": [{"name": "envoy"}], "format": "x"}]}))
                .expect_err("unknown field");
        assert!(err.contains("format"), "{err}");
    }

    #[test]
    fn unknown_enum_value_is_rejected_by_name() {
        let err =
            parse(json!({"metrics": [{"overrides": [{"match": {"metric": "REQUEST_BYTES"}}]}]}))
                .expect_err("unknown metric");
        assert!(err.contains("REQUEST_BYTES"), "{err}");
        let err = parse(json!({"accessLogging": [{"match": {"mode": "BOTH"}}]}))
            .expect_err("unknown mode");
        assert!(err.contains("BOTH"), "{err}");
        let err = parse(json!({"metrics": [{"reportingInterval": "soon"}]})).expect_err("duration");
        assert!(err.contains("soon"), "{err}");
    }
}
