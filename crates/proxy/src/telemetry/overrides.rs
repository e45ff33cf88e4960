//! Telemetry's metric overrides at run time: which of Istio's metrics are recorded, and each
//! one's labels with tags removed, replaced or added (`tagOverrides`). Compiled once per
//! snapshot; a snapshot without overrides has none of this, and its records build Istio's
//! labels as they always did.

use std::sync::Arc;

use sluice_snapshot::cel::{Expression, Needs, attribute};
use sluice_snapshot::telemetry::{Metric, Metrics, Tag};

use super::expr::{self, LazyScope};
use super::metrics::{RequestLabels, Tags, TcpLabels};

enum TagRule {
    Remove,
    /// `None`: the expression does not parse; the label is `unknown`.
    Value(Option<Arc<Expression>>),
}

#[derive(Default)]
struct Rule {
    disabled: bool,
    /// Sorted by label name.
    tags: Vec<(Arc<str>, TagRule)>,
}

pub struct MetricRules {
    /// No Istio metric is recorded.
    pub disabled: bool,
    /// By [`Metric::ALL`] order.
    rules: [Rule; 8],
    /// What the tag values read.
    pub needs: Needs,
}

fn index(m: Metric) -> usize {
    Metric::ALL.iter().position(|x| *x == m).unwrap_or(0)
}

impl MetricRules {
    pub fn new(m: &Metrics) -> MetricRules {
        let mut rules: [Rule; 8] = Default::default();
        let mut needs = Needs::default();
        for (metric, o) in &m.overrides {
            let rule = &mut rules[index(*metric)];
            rule.disabled = o.disabled;
            for (name, tag) in &o.tags {
                let t = match tag {
                    Tag::Remove => TagRule::Remove,
                    Tag::Value(src) => match expr::compile(src) {
                        Ok(e) => {
                            needs = needs.union(e.needs);
                            TagRule::Value(Some(e))
                        }
                        Err(e) => {
                            tracing::error!(
                                tag = %name,
                                expression = %src,
                                error = %e,
                                "a Telemetry tag value does not parse: the label is `unknown`"
                            );
                            TagRule::Value(None)
                        }
                    },
                };
                rule.tags.push((Arc::from(name.as_str()), t));
            }
        }
        MetricRules {
            disabled: m.disabled,
            rules,
            needs,
        }
    }

    /// A tag value reads the request's host (the router then says whether it routed it by
    /// name).
    pub fn reads_host(&self) -> bool {
        attribute("request", "host").is_some_and(|i| self.needs.has(i))
    }

    fn rule(&self, m: Metric) -> &Rule {
        &self.rules[index(m)]
    }

    /// The labels of `istio_requests_total`, `…_duration_milliseconds`, `istio_request_bytes`
    /// and `istio_response_bytes` (`None`: not recorded).
    pub fn request_labels(
        &self,
        base: &RequestLabels,
        scope: &LazyScope<'_>,
    ) -> [Option<RequestLabels>; 4] {
        [
            Metric::RequestCount,
            Metric::RequestDuration,
            Metric::RequestSize,
            Metric::ResponseSize,
        ]
        .map(|m| self.labels(m, base, scope, RequestLabels::clear, |l, t| l.tags = t))
    }

    /// The labels of the TCP connections opened, closed, bytes sent and received.
    pub fn tcp_labels(&self, base: &TcpLabels, scope: &LazyScope<'_>) -> [Option<TcpLabels>; 4] {
        [
            Metric::TcpOpenedConnections,
            Metric::TcpClosedConnections,
            Metric::TcpSentBytes,
            Metric::TcpReceivedBytes,
        ]
        .map(|m| self.labels(m, base, scope, TcpLabels::clear, |l, t| l.tags = t))
    }

    fn labels<L: Clone>(
        &self,
        m: Metric,
        base: &L,
        scope: &LazyScope<'_>,
        clear: fn(&mut L, &str) -> bool,
        set: fn(&mut L, Tags),
    ) -> Option<L> {
        let rule = self.rule(m);
        if self.disabled || rule.disabled {
            return None;
        }
        let mut labels = base.clone();
        if rule.tags.is_empty() {
            return Some(labels);
        }
        let mut tags = Vec::with_capacity(rule.tags.len());
        for (name, t) in &rule.tags {
            clear(&mut labels, name);
            let value = match t {
                TagRule::Remove => None,
                TagRule::Value(Some(e)) => Some(expr::label(e, scope.get())),
                TagRule::Value(None) => Some(Arc::from("unknown")),
            };
            tags.push((name.clone(), value));
        }
        set(&mut labels, Tags(Some(tags.into_boxed_slice())));
        Some(labels)
    }
}
