//! Access logs and metrics: the [`Record`] of each request or connection, the access-log
//! formats and writer, Istio's metrics, and what Telemetry resources change in them (filters
//! and tag values in CEL, evaluated when a record is written).

pub mod decisions;
pub mod expr;
pub mod format;
pub mod metrics;
pub mod overrides;
pub mod record;
pub mod writer;

use std::sync::Arc;

use prometheus_client::registry::Registry;
use sluice_snapshot::Snapshot;

pub use metrics::Metrics;
pub use overrides::MetricRules;
pub use record::{ByteCounts, HttpFields, Kind, Record};
pub use writer::LogTarget;

/// The telemetry sinks shared by every connection.
pub struct Telemetry {
    pub metrics: Metrics,
    writers: writer::Writers,
    /// This proxy's workload name, the `source_workload` of what it reports.
    pub workload: Arc<str>,
    /// Recent decisions and per-edge counts, for the admin API's egress map (`/ui`).
    pub decisions: Arc<decisions::Decisions>,
}

/// What one snapshot's records are written to: its access logs (with their filters) and, when
/// Telemetry changes Istio's metrics, the changes. Built once per snapshot
/// ([`Telemetry::sinks`]); `None` there when records have nothing to do beyond Istio's
/// standard metrics.
pub struct Sinks {
    pub logs: Vec<Arc<LogTarget>>,
    /// What the logs' filters read (`None`: no log has a filter, and writing a line costs
    /// what it cost before Telemetry).
    pub filters: Option<sluice_snapshot::cel::Needs>,
    pub metrics: Option<MetricRules>,
    /// A log or a tag value may read the request's method, path or headers: the record keeps
    /// them.
    pub capture: bool,
    /// A tag value reads `request.host`: the router says whether it routed the host by name.
    pub routed_host: bool,
}

impl Telemetry {
    pub fn new(registry: &mut Registry) -> Telemetry {
        Telemetry {
            metrics: Metrics::new(registry),
            writers: writer::Writers::default(),
            workload: Arc::from("unknown"),
            decisions: Arc::default(),
        }
    }

    /// Names this proxy's workload in what it reports (`source_workload`).
    pub fn with_workload(mut self, name: &str) -> Telemetry {
        self.workload = Arc::from(name);
        self
    }

    /// Makes the access-log writers reopen their files (after logrotate moved them).
    pub fn log_reopener(&self) -> writer::Reopener {
        self.writers.reopener()
    }

    /// The access-log target a snapshot's access-log configuration names, if any. Must be
    /// called inside the tokio runtime (it may start a writer task).
    pub fn log_target(&self, config: &sluice_snapshot::AccessLog) -> Option<Arc<LogTarget>> {
        self.writers
            .target(config, &self.metrics.access_log_dropped)
    }

    /// What `snapshot`'s records are written to: Telemetry's access logs when it configures
    /// logging (an empty list when it turns logging off), else meshConfig's; Telemetry's
    /// metric changes. Parses the CEL expressions: call it off the request path, once per
    /// snapshot, inside the tokio runtime.
    pub fn sinks(&self, snapshot: &Snapshot) -> Option<Arc<Sinks>> {
        let configs = match &snapshot.telemetry.access_logs {
            Some(logs) => logs.as_slice(),
            None => std::slice::from_ref(&snapshot.access_log),
        };
        let logs: Vec<Arc<LogTarget>> = configs.iter().filter_map(|c| self.log_target(c)).collect();
        let metrics = (!snapshot.telemetry.metrics.is_default())
            .then(|| MetricRules::new(&snapshot.telemetry.metrics));
        if logs.is_empty() && metrics.is_none() {
            return None;
        }
        let tags_read_request = metrics.as_ref().is_some_and(|m| m.needs.any_of("request"));
        let routed_host = metrics.as_ref().is_some_and(MetricRules::reads_host);
        let filters = logs
            .iter()
            .filter_map(|l| match &l.filter {
                Some(writer::Filter::Expr(e)) => Some(e.needs),
                Some(writer::Filter::Never) => Some(Default::default()),
                None => None,
            })
            .reduce(|a, b| a.union(b));
        Some(Arc::new(Sinks {
            capture: !logs.is_empty() || tags_read_request,
            filters,
            logs,
            metrics,
            routed_host,
        }))
    }
}
