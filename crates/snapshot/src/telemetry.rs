//! What the Telemetry resources (`telemetry.istio.io`) that apply to this proxy configure,
//! compiled for the proxy's traffic (sluice's is all outbound: Istio's `CLIENT` mode): the
//! access logs that replace meshConfig's, each with its CEL filter, and the changes to Istio's
//! standard metrics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::AccessLog;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Telemetry {
    /// `None`: no Telemetry configures access logging, and `Snapshot::access_log`
    /// (meshConfig's `accessLogFile`) applies. `Some`: these logs replace it; empty when
    /// logging is turned off (`disabled: true`, or no provider left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_logs: Option<Vec<AccessLog>>,
    #[serde(default, skip_serializing_if = "Metrics::is_default")]
    pub metrics: Metrics,
}

impl Telemetry {
    pub fn is_default(&self) -> bool {
        *self == Telemetry::default()
    }
}

/// Changes to Istio's standard metrics (`istio_requests_total`…).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Metrics {
    /// None of Istio's metrics are recorded: the `prometheus` provider is not in scope, or
    /// `ALL_METRICS` is disabled.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    /// By metric, what changes; a metric not here is recorded as Istio defines it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<Metric, MetricOverride>,
}

impl Metrics {
    pub fn is_default(&self) -> bool {
        *self == Metrics::default()
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Istio's standard metrics that sluice records (`MetricSelector.IstioMetric`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Metric {
    /// `istio_requests_total`
    RequestCount,
    /// `istio_request_duration_milliseconds`
    RequestDuration,
    /// `istio_request_bytes`
    RequestSize,
    /// `istio_response_bytes`
    ResponseSize,
    /// `istio_tcp_connections_opened_total`
    TcpOpenedConnections,
    /// `istio_tcp_connections_closed_total`
    TcpClosedConnections,
    /// `istio_tcp_sent_bytes_total`
    TcpSentBytes,
    /// `istio_tcp_received_bytes_total`
    TcpReceivedBytes,
}

impl Metric {
    pub const ALL: [Metric; 8] = [
        Metric::RequestCount,
        Metric::RequestDuration,
        Metric::RequestSize,
        Metric::ResponseSize,
        Metric::TcpOpenedConnections,
        Metric::TcpClosedConnections,
        Metric::TcpSentBytes,
        Metric::TcpReceivedBytes,
    ];
}

/// What changes for one metric.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MetricOverride {
    /// The metric is not recorded.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    /// Label changes, by label name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, Tag>,
}

/// One label change (`tagOverrides`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tag {
    /// `REMOVE`: the label is not exported.
    Remove,
    /// `UPSERT`: the label's value is this CEL expression's (`unknown` when it fails).
    Value(String),
}
