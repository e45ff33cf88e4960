//! One record per HTTP request or TCP connection: it collects what happened and, when it is
//! dropped, writes the access-log line and the metrics. Whatever path a request takes, the
//! record is dropped on it, so nothing goes unlogged (ztunnel's `ConnectionResult`).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::time::Instant;

use http::HeaderMap;

use super::expr::{Facts, HttpFacts, LazyScope, Use};
use super::format::{Operator, Source, Value, format_time};
use super::metrics::{RequestLabels, Tags, TcpHandles, TcpLabels};
use super::writer::Filter;
use super::{Sinks, Telemetry};
use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A connection refused before any application ran (no chain, TLS failure): logged, not
    /// counted in Istio's metrics (Envoy's listener access log).
    Connection,
    Tcp,
    Http,
}

/// Byte counters shared with the streams and bodies that move the bytes.
#[derive(Debug, Default)]
pub struct ByteCounts {
    /// From the downstream.
    pub received: AtomicU64,
    /// To the downstream.
    pub sent: AtomicU64,
    /// When bytes last moved, in milliseconds since the stream's copy began (a TCP stream's
    /// idle timeout reads it; HTTP bodies leave it at 0).
    pub last_moved_ms: AtomicU64,
}

#[derive(Debug, Default)]
pub struct HttpFields {
    pub method: String,
    /// The path as the client sent it (Envoy's `x-envoy-original-path` when rewritten).
    pub path: String,
    pub protocol: &'static str,
    pub authority: String,
    /// `http` or `https`: how the request reached the proxy.
    pub scheme: &'static str,
    /// The downstream request's headers after the proxy's own additions (request id, XFF).
    pub request_headers: HeaderMap,
    pub response_headers: HeaderMap,
}

pub struct Record {
    telemetry: Arc<Telemetry>,
    sinks: Option<Arc<Sinks>>,
    pub kind: Kind,
    start: SystemTime,
    started: Instant,
    pub downstream_local: SocketAddr,
    pub downstream_remote: SocketAddr,
    pub sni: Option<String>,
    pub route_name: Option<String>,
    pub cluster: Option<Arc<str>>,
    /// The destination service host, for metrics.
    pub service: Option<Arc<str>>,
    /// The host a virtual host matched by name (an exact domain): what a metric label may say
    /// `request.host` is. Set only when a Telemetry tag value reads it.
    pub routed_host: Option<Arc<str>>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    flags: Vec<&'static str>,
    pub response_code: u16,
    pub details: Option<Cow<'static, str>>,
    pub termination: Option<Cow<'static, str>>,
    /// The ALLOW rule that let the flow through, as (Envoy's policy name, rule index), when
    /// ALLOW policies applied: what the egress map names beside an allowed decision.
    pub allowed_by: Option<(Arc<str>, usize)>,
    pub transport_failure: Option<String>,
    /// Why the client's TLS (or mesh mTLS) handshake failed.
    pub downstream_failure: Option<String>,
    /// The peer's SPIFFE ID (`spiffe://…`), from a certificate the mesh mTLS handshake
    /// verified; never from a header.
    pub peer_principal: Option<Arc<str>>,
    /// The flow arrived over mesh mTLS (Istio's `connection_security_policy="mutual_tls"`).
    pub mesh_mtls: bool,
    pub counts: Arc<ByteCounts>,
    pub attempts: u32,
    pub http: Option<Box<HttpFields>>,
    tcp: Option<TcpHandles>,
    armed: bool,
}

impl Record {
    pub fn new(
        telemetry: Arc<Telemetry>,
        sinks: Option<Arc<Sinks>>,
        kind: Kind,
        downstream_local: SocketAddr,
        downstream_remote: SocketAddr,
        sni: Option<String>,
    ) -> Record {
        Record {
            telemetry,
            sinks,
            kind,
            start: SystemTime::now(),
            started: Instant::now(),
            downstream_local,
            downstream_remote,
            sni,
            route_name: None,
            cluster: None,
            service: None,
            routed_host: None,
            upstream_host: None,
            upstream_local: None,
            flags: Vec::new(),
            response_code: 0,
            details: None,
            termination: None,
            allowed_by: None,
            transport_failure: None,
            downstream_failure: None,
            peer_principal: None,
            mesh_mtls: false,
            counts: Arc::new(ByteCounts::default()),
            attempts: 0,
            http: None,
            tcp: None,
            armed: true,
        }
    }

    /// Not logged: the connection was handed to HTTP, whose requests have their own records.
    pub fn disarm(&mut self) {
        self.armed = false;
    }

    pub fn add_flag(&mut self, flag: &'static str) {
        if flag != "-" && !self.flags.contains(&flag) {
            self.flags.push(flag);
        }
    }

    /// Envoy's `%RESPONSE_FLAGS%`: the flags in Envoy's own order (`UF,URX`, not in the order
    /// they were raised), so log parsers built for Envoy read them unchanged.
    pub fn flags(&self) -> Cow<'static, str> {
        envoy_order(&self.flags)
    }

    /// Records how a flow failed: its flag, details, transport failure reasons.
    pub fn fail(&mut self, err: &Error) {
        self.add_flag(err.response_flag());
        match self.kind {
            Kind::Http => self.details = Some(err.full_details()),
            Kind::Tcp | Kind::Connection => self.termination = Some(err.full_details()),
        }
        if let Some(reason) = err.transport_failure_reason() {
            self.transport_failure = Some(reason);
        }
        if let Some(reason) = err.downstream_failure_reason() {
            self.downstream_failure = Some(reason);
        }
    }

    /// Who the peer is, when the flow arrived over mesh mTLS.
    pub fn set_peer(&mut self, identity: Option<&sluice_identity::Identity>, mesh_mtls: bool) {
        self.peer_principal = identity.map(|id| Arc::from(id.to_string()));
        self.mesh_mtls = mesh_mtls;
    }

    /// Istio's `source_principal` label: the SPIFFE ID, or `unknown`.
    fn principal_label(&self) -> Arc<str> {
        self.peer_principal.clone().unwrap_or_else(unknown)
    }

    /// Istio's `connection_security_policy` label.
    fn security_label(&self) -> &'static str {
        if self.mesh_mtls { "mutual_tls" } else { "none" }
    }

    /// Counts the TCP connection as opened (its destination is known now).
    pub fn tcp_opened(&mut self) {
        if self.kind != Kind::Tcp || self.tcp.is_some() {
            return;
        }
        let labels = self.tcp_labels();
        let handles = match self.sinks.as_ref().and_then(|s| s.metrics.as_ref()) {
            None => self.telemetry.metrics.tcp_open(&labels),
            Some(rules) => {
                let facts = self.facts();
                let scope = LazyScope::new(&facts, rules.needs, Use::Label);
                let each = rules.tcp_labels(&labels, &scope);
                self.telemetry
                    .metrics
                    .tcp_open_each(each.each_ref().map(Option::as_ref))
            }
        };
        self.tcp = Some(handles);
    }

    /// What the CEL attributes of this record are computed from.
    fn facts(&self) -> Facts<'_> {
        Facts {
            http: self.http.as_deref().map(|h| HttpFacts {
                method: &h.method,
                path: &h.path,
                protocol: h.protocol,
                authority: &h.authority,
                scheme: h.scheme,
                request_headers: &h.request_headers,
                response_headers: &h.response_headers,
            }),
            response_code: (self.kind == Kind::Http).then_some(self.response_code),
            code_details: self.details.as_deref(),
            flags: flag_bits(&self.flags),
            start: self.start,
            duration: self.started.elapsed(),
            received: self.counts.received.load(Ordering::Relaxed),
            sent: self.counts.sent.load(Ordering::Relaxed),
            downstream_local: self.downstream_local,
            downstream_remote: self.downstream_remote,
            sni: self.sni.as_deref(),
            principal: self.peer_principal.as_deref(),
            mtls: self.mesh_mtls,
            termination: self.termination.as_deref(),
            downstream_failure: self.downstream_failure.as_deref(),
            upstream_host: self.upstream_host,
            upstream_local: self.upstream_local,
            upstream_failure: self.transport_failure.as_deref(),
            attempts: self.attempts,
            cluster: self.cluster.as_deref(),
            route_name: self.route_name.as_deref(),
            routed_host: self.routed_host.as_deref(),
        }
    }

    fn service_label(&self) -> Arc<str> {
        self.service.clone().unwrap_or_else(unknown)
    }

    fn tcp_labels(&self) -> TcpLabels {
        let service = self.service_label();
        TcpLabels {
            reporter: "source",
            source_workload: self.telemetry.workload.clone(),
            source_principal: self.principal_label(),
            destination_service: service.clone(),
            destination_service_name: service,
            destination_service_namespace: "unknown",
            destination_cluster: "unknown",
            request_protocol: "tcp",
            response_flags: self.flags(),
            connection_security_policy: self.security_label(),
            tags: Tags::default(),
        }
    }

    fn is_refusal(&self) -> bool {
        self.flags
            .iter()
            .any(|f| matches!(*f, "NR" | "UH" | "NC" | "DF"))
            || self.cluster.as_deref() == Some(sluice_snapshot::BLACK_HOLE_CLUSTER)
    }

    fn finish(&mut self) {
        let duration = self.started.elapsed();
        let received = self.counts.received.load(Ordering::Relaxed);
        let sent = self.counts.sent.load(Ordering::Relaxed);
        if self.kind == Kind::Http && self.response_code == 0 {
            // The request ended before a response head was produced: the client went away.
            self.add_flag("DC");
            self.details
                .get_or_insert(Cow::Borrowed("downstream_remote_disconnect"));
        }
        match self.kind {
            Kind::Http => {
                let service = self.service_label();
                let labels = RequestLabels {
                    reporter: "source",
                    source_workload: self.telemetry.workload.clone(),
                    source_principal: self.principal_label(),
                    destination_service: service.clone(),
                    destination_service_name: service,
                    destination_service_namespace: "unknown",
                    destination_cluster: "unknown",
                    request_protocol: "http",
                    response_code: self.response_code,
                    response_flags: self.flags(),
                    connection_security_policy: self.security_label(),
                    tags: Tags::default(),
                };
                let duration_ms = duration.as_secs_f64() * 1000.0;
                match self.sinks.as_ref().and_then(|s| s.metrics.as_ref()) {
                    None => self
                        .telemetry
                        .metrics
                        .request(&labels, duration_ms, received, sent),
                    Some(rules) => {
                        let facts = self.facts();
                        let scope = LazyScope::new(&facts, rules.needs, Use::Label);
                        let each = rules.request_labels(&labels, &scope);
                        self.telemetry.metrics.request_each(
                            each.each_ref().map(Option::as_ref),
                            duration_ms,
                            received,
                            sent,
                        );
                    }
                }
            }
            Kind::Tcp => {
                self.tcp_opened();
                if let Some(h) = &self.tcp {
                    if let Some(c) = &h.closed {
                        c.inc();
                    }
                    if let Some(c) = &h.sent {
                        c.inc_by(sent);
                    }
                    if let Some(c) = &h.received {
                        c.inc_by(received);
                    }
                }
            }
            Kind::Connection => {}
        }
        if self.is_refusal() {
            let host = self.http.as_ref().map(|h| h.authority.as_str());
            tracing::info!(
                target: "sluice::refused",
                host = host.unwrap_or("-"),
                sni = self.sni.as_deref().unwrap_or("-"),
                cluster = self.cluster.as_deref().unwrap_or("-"),
                flags = %self.flags(),
                details = self.details.as_deref().or(self.termination.as_deref()).unwrap_or("-"),
                downstream = %self.downstream_remote,
                port = self.downstream_local.port(),
                "refused"
            );
        }
        if let Some(sinks) = self.sinks.take() {
            self.write_logs(&sinks);
        }
        // Last: the egress map takes (moves) what the logs and metrics no longer read.
        let (start, flags) = (self.start, self.flags());
        let telemetry = Arc::clone(&self.telemetry);
        telemetry.decisions.record(self, start, flags);
    }

    /// One line to each access log whose filter (if any) selects this record. The filters'
    /// attributes are computed once, on the first filter; without filters, none are.
    fn write_logs(&self, sinks: &Sinks) {
        let Some(needs) = sinks.filters else {
            for log in &sinks.logs {
                log.write(log.format.render(self));
            }
            return;
        };
        let facts = self.facts();
        let scope = LazyScope::new(&facts, needs, Use::Log);
        for log in &sinks.logs {
            let selected = match &log.filter {
                None => true,
                Some(Filter::Never) => false,
                Some(Filter::Expr(e)) => super::expr::matches(e, scope.get()),
            };
            if selected {
                log.write(log.format.render(self));
            }
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            self.finish();
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl Record {
    fn request_header(&self, name: &str) -> Option<Cow<'_, str>> {
        let http = self.http.as_ref()?;
        match name {
            ":method" => Some(Cow::Borrowed(http.method.as_str())),
            ":path" => Some(Cow::Borrowed(http.path.as_str())),
            ":authority" | "host" => Some(Cow::Borrowed(http.authority.as_str())),
            _ => header(&http.request_headers, name).map(Cow::Borrowed),
        }
        .filter(|v| !v.is_empty())
    }

    fn response_header(&self, name: &str) -> Option<Cow<'_, str>> {
        let http = self.http.as_ref()?;
        match name {
            ":status" => Some(Cow::Owned(self.response_code.to_string())),
            _ => header(&http.response_headers, name).map(Cow::Borrowed),
        }
    }
}

fn opt<'a>(v: Option<Cow<'a, str>>) -> Value<'a> {
    v.map(Value::Str).unwrap_or(Value::Missing)
}

fn addr<'a>(a: Option<SocketAddr>) -> Value<'a> {
    a.map(|a| Value::Str(Cow::Owned(a.to_string())))
        .unwrap_or(Value::Missing)
}

impl Source for Record {
    fn value(&self, op: &Operator) -> Value<'_> {
        match op {
            Operator::StartTime(f) => Value::Str(Cow::Owned(format_time(self.start, f.as_deref()))),
            Operator::Req(main, alt) => opt(self
                .request_header(main)
                .or_else(|| alt.as_deref().and_then(|a| self.request_header(a)))),
            Operator::Resp(main, alt) => opt(self
                .response_header(main)
                .or_else(|| alt.as_deref().and_then(|a| self.response_header(a)))),
            Operator::Protocol => match &self.http {
                Some(h) => Value::Str(Cow::Borrowed(h.protocol)),
                None => Value::Missing,
            },
            Operator::ResponseCode => Value::Num(u64::from(self.response_code)),
            Operator::ResponseFlags => Value::Str(self.flags()),
            Operator::ResponseCodeDetails => opt(self.details.as_deref().map(Cow::Borrowed)),
            Operator::ConnectionTerminationDetails => {
                opt(self.termination.as_deref().map(Cow::Borrowed))
            }
            Operator::UpstreamTransportFailureReason => {
                opt(self.transport_failure.as_deref().map(Cow::Borrowed))
            }
            Operator::BytesReceived => Value::Num(self.counts.received.load(Ordering::Relaxed)),
            Operator::BytesSent => Value::Num(self.counts.sent.load(Ordering::Relaxed)),
            Operator::Duration => Value::Num(self.started.elapsed().as_millis() as u64),
            Operator::UpstreamHost => addr(self.upstream_host),
            Operator::UpstreamCluster => opt(self.cluster.as_deref().map(Cow::Borrowed)),
            Operator::UpstreamLocalAddress => addr(self.upstream_local),
            Operator::DownstreamLocalAddress => addr(Some(self.downstream_local)),
            Operator::DownstreamLocalAddressWithoutPort => {
                Value::Str(Cow::Owned(self.downstream_local.ip().to_string()))
            }
            Operator::DownstreamRemoteAddress => addr(Some(self.downstream_remote)),
            Operator::DownstreamRemoteAddressWithoutPort => {
                Value::Str(Cow::Owned(self.downstream_remote.ip().to_string()))
            }
            Operator::RequestedServerName => opt(self.sni.as_deref().map(Cow::Borrowed)),
            Operator::RouteName => opt(self.route_name.as_deref().map(Cow::Borrowed)),
            Operator::UpstreamRequestAttemptCount => Value::Num(u64::from(self.attempts)),
            Operator::DownstreamPeerUriSan => {
                opt(self.peer_principal.as_deref().map(Cow::Borrowed))
            }
            Operator::DownstreamTransportFailureReason => {
                opt(self.downstream_failure.as_deref().map(Cow::Borrowed))
            }
        }
    }
}

/// Istio's value of a label nothing filled in.
fn unknown() -> Arc<str> {
    static UNKNOWN: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("unknown"));
    UNKNOWN.clone()
}

fn envoy_order(flags: &[&'static str]) -> Cow<'static, str> {
    match flags {
        [] => return Cow::Borrowed("-"),
        [one] => return Cow::Borrowed(one),
        _ => {}
    }
    let mut flags = flags.to_vec();
    flags.sort_by_key(|f| {
        ENVOY_FLAG_ORDER
            .iter()
            .position(|o| o == f)
            .unwrap_or(ENVOY_FLAG_ORDER.len())
    });
    Cow::Owned(flags.join(","))
}

/// Envoy's response flags as its bit vector (`response.flags`): each flag's bit is its place in
/// Envoy's `ResponseFlag` enum, which is also the order it prints them in.
fn flag_bits(flags: &[&'static str]) -> u64 {
    flags
        .iter()
        .filter_map(|f| ENVOY_FLAG_ORDER.iter().position(|o| o == f))
        .fold(0, |bits, i| bits | (1 << i))
}

/// The order in which Envoy prints response flags (`StreamInfo::ResponseFlagUtils`).
const ENVOY_FLAG_ORDER: &[&str] = &[
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
];

#[cfg(test)]
mod flag_order_tests {
    #[test]
    fn flags_print_in_envoys_order() {
        assert_eq!(super::envoy_order(&["URX", "UF"]), "UF,URX");
        assert_eq!(super::envoy_order(&["NR"]), "NR");
        assert_eq!(super::envoy_order(&[]), "-");
    }

    #[test]
    fn flags_as_envoys_bit_vector() {
        assert_eq!(super::flag_bits(&["UF"]), 0x20);
        assert_eq!(super::flag_bits(&["NR", "UH"]), 0x100 | 0x2);
        assert_eq!(super::flag_bits(&["DC"]), 0x4000);
        assert_eq!(super::flag_bits(&[]), 0);
    }
}
