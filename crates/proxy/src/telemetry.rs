//! Access logs and metrics: the [`Record`] of each request or connection, the access-log
//! formats and writer, Istio's metrics.

pub mod format;
pub mod metrics;
pub mod record;
pub mod writer;

use std::sync::Arc;

use prometheus_client::registry::Registry;

pub use metrics::Metrics;
pub use record::{ByteCounts, HttpFields, Kind, Record};
pub use writer::LogTarget;

/// The telemetry sinks shared by every connection.
pub struct Telemetry {
    pub metrics: Metrics,
    writers: writer::Writers,
}

impl Telemetry {
    pub fn new(registry: &mut Registry) -> Telemetry {
        Telemetry {
            metrics: Metrics::new(registry),
            writers: writer::Writers::default(),
        }
    }

    /// The access-log target a snapshot configures, if any.
    pub fn log_target(&self, config: &sluice_snapshot::AccessLog) -> Option<Arc<LogTarget>> {
        self.writers
            .target(config, &self.metrics.access_log_dropped)
    }
}
