//! The Forward action: faults, weighted cluster, rewrites and header operations, mirrors,
//! attempts with retries and timeouts over pooled upstream connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::HeaderName;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use rand::Rng;
use sluice_snapshot::StringMatcher;
use sluice_snapshot::route::{Forward, RequestMatch, RetryPolicy, Rewrite, Route};
use tokio::time::Instant;

use super::headers;
use super::{Guards, route::strip_port};
use crate::Error;
use crate::flow::ConnCtx;
use crate::telemetry::Record;
use crate::upstream::ClusterRt;
use crate::upstream::lb::consistent::{self, RequestKeys};
use crate::upstream::lb::{Candidate, InflightGuard, Slot, pick_weighted};
use crate::upstream::outlier::Outcome;
use crate::upstream::pool::{Body, BoxError, PooledBody, SendError};

const X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
const X_ENVOY_DECORATOR_OPERATION: HeaderName =
    HeaderName::from_static("x-envoy-decorator-operation");
const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");

/// Request bodies up to this size are buffered so they can be retried and mirrored; larger
/// or unsized bodies are streamed once (no retries, no mirrors), as Envoy does past its
/// buffer limit.
const MAX_BUFFERED_BODY: u64 = 64 * 1024;
/// How long a buffered request body may take to arrive.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The request as it will go upstream, rebuilt for each attempt.
struct Outgoing {
    method: Method,
    path_and_query: PathAndQuery,
    authority: String,
    /// The `Host` header of an HTTP/1.1 request: the client's own when the authority is
    /// not rewritten (no copy, no parse), else built from `authority`.
    host: Option<HeaderValue>,
    headers: HeaderMap,
    body: BodySource,
    /// The request's hash for a consistent-hash cluster.
    hash: Option<u64>,
}

enum BodySource {
    Buffered(Bytes),
    Stream(Option<Body>),
}

impl Outgoing {
    /// The request's hash under `policy`, and the `Set-Cookie` a generated cookie needs.
    fn hash(
        &self,
        policy: &sluice_snapshot::LbPolicy,
        peer: SocketAddr,
    ) -> (Option<u64>, Option<HeaderValue>) {
        let keys = RequestKeys {
            method: self.method.as_str(),
            authority: &self.authority,
            path_and_query: self.path_and_query.as_str(),
            headers: &self.headers,
            peer,
        };
        consistent::request_hash(policy, &keys)
    }

    fn replayable(&self) -> bool {
        matches!(self.body, BodySource::Buffered(_))
    }

    /// The request for one attempt; `None` once a streamed body has been used.
    fn request(&mut self, h2: bool, scheme: &str) -> Option<Request<Body>> {
        let body = match &mut self.body {
            BodySource::Buffered(b) => Full::new(b.clone()).map_err(|n| match n {}).boxed(),
            BodySource::Stream(s) => s.take()?,
        };
        // A copy per attempt: a request on a pooled connection may have to go again.
        let mut headers = self.headers.clone();
        let (uri, version) = if h2 {
            let uri = format!("{scheme}://{}{}", self.authority, self.path_and_query);
            (uri.parse::<Uri>().ok()?, Version::HTTP_2)
        } else {
            let host = match &self.host {
                Some(h) => Some(h.clone()),
                None => HeaderValue::from_str(&self.authority).ok(),
            };
            if let Some(h) = host {
                headers.insert(header::HOST, h);
            }
            (Uri::from(self.path_and_query.clone()), Version::HTTP_11)
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = headers;
        Some(req)
    }

    fn mirror(&self) -> Option<Outgoing> {
        let BodySource::Buffered(b) = &self.body else {
            return None;
        };
        let host = strip_port(&self.authority);
        let authority = format!("{host}-shadow{}", &self.authority[host.len()..]);
        Some(Outgoing {
            method: self.method.clone(),
            path_and_query: self.path_and_query.clone(),
            authority,
            host: None,
            headers: self.headers.clone(),
            body: BodySource::Buffered(b.clone()),
            hash: None,
        })
    }
}

/// Where an attempt went, for the access log.
#[derive(Default)]
struct Upstream {
    host: Option<SocketAddr>,
    local: Option<SocketAddr>,
}

fn roll(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && rand::rng().random_range(0.0..100.0) < percent)
}

#[allow(clippy::too_many_arguments)]
pub async fn forward(
    ctx: &Arc<ConnCtx>,
    parts: &mut Parts,
    authority: &str,
    body: Body,
    route: &Route,
    fwd: &Forward,
    matched: Option<&RequestMatch>,
    rec: &mut Record,
) -> Result<(Response<Body>, Guards), Error> {
    if let Some(fault) = &fwd.fault {
        // Envoy's fault filter counts under the connection manager's stat prefix, which Istio
        // names `outbound_0.0.0.0_<port>`.
        let stat_prefix = || format!("outbound_0.0.0.0_{}", ctx.info.listener_port);
        let metrics = &ctx.shared.telemetry.metrics;
        if let Some(delay) = &fault.delay
            && roll(delay.percent)
        {
            rec.add_flag("DI");
            metrics.fault_injected(&stat_prefix(), false);
            tokio::time::sleep(delay.delay).await;
        }
        if let Some(abort) = &fault.abort
            && roll(abort.percent)
        {
            metrics.fault_injected(&stat_prefix(), true);
            return Err(Error::FaultAbort(abort.status));
        }
    }
    let wc = pick_weighted(&fwd.clusters)
        .ok_or_else(|| Error::UnknownCluster("(route without destination)".into()))?;
    let c = ctx
        .runtime
        .cluster(&wc.cluster)
        .ok_or_else(|| Error::UnknownCluster(wc.cluster.clone()))?;
    rec.cluster = Some(c.name.clone());
    rec.service = Some(c.service_for(ctx.info.requested.as_ref()));

    // The upstream request head.
    // An HTTP/1.1 upgrade (WebSocket and the like) keeps its Upgrade header end to end, as
    // Istio's routes allow websocket upgrades; the connection then becomes a byte tunnel.
    // HTTP/2 has no Upgrade: toward an h2 cluster the request goes as a plain one.
    let upgrade = upgrade_requested(&parts.headers).filter(|_| !c.cluster.http2);
    // The client's headers are not used again: moved, not copied.
    let mut hdrs = std::mem::take(&mut parts.headers);
    let te_trailers = hdrs
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers::strip_hop_by_hop(&mut hdrs);
    if te_trailers {
        hdrs.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(protocol) = &upgrade {
        hdrs.insert(header::UPGRADE, protocol.clone());
        hdrs.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let mut host = hdrs.remove(header::HOST);
    let original = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut path_and_query = original.clone();
    let mut new_authority = authority.to_owned();
    if let Some(rw) = &fwd.rewrite {
        if let Some(p) = rewrite_path(rw, matched, parts.uri.path(), parts.uri.query())
            .and_then(|p| PathAndQuery::try_from(p).ok())
        {
            path_and_query = p;
            if let Ok(v) = HeaderValue::from_str(original.as_str()) {
                hdrs.insert(X_ENVOY_ORIGINAL_PATH, v);
            }
        }
        if let Some(a) = &rw.authority {
            new_authority = a.clone();
            host = None;
        }
    }
    // The client's Host names what is routed; an absolute-form or h2 request carries its
    // authority in the URI instead.
    if host
        .as_ref()
        .is_some_and(|h| h.as_bytes() != new_authority.as_bytes())
    {
        host = None;
    }
    // Envoy on an egress connection manager (Istio's sidecar outbound) propagates the route's
    // decorator to the upstream: `x-envoy-decorator-operation: httpbin.org:80/*`.
    if ctx.runtime.snapshot.role == sluice_snapshot::Role::Sidecar
        && let Some(v) = route
            .operation
            .as_deref()
            .and_then(|op| HeaderValue::from_str(op).ok())
    {
        hdrs.insert(X_ENVOY_DECORATOR_OPERATION, v);
    }
    headers::apply(&route.request_headers, &mut hdrs);
    headers::apply(&wc.request_headers, &mut hdrs);

    let body = buffer_if_small(body).await?;
    let mut out = Outgoing {
        method: parts.method.clone(),
        path_and_query,
        authority: new_authority,
        host,
        headers: hdrs,
        body,
        hash: None,
    };
    let (hash, set_cookie) = out.hash(&c.cluster.lb, ctx.info.peer);
    out.hash = hash;
    let dns_host = strip_port(&out.authority).to_owned();

    for m in &fwd.mirrors {
        if roll(m.percent)
            && let Some(mirror) = out.mirror()
        {
            spawn_mirror(
                ctx.clone(),
                m.cluster.clone(),
                dns_host.clone(),
                mirror,
                fwd.timeout,
            );
        }
    }

    let state = &c.state;
    let started = Instant::now();
    let mut upstream = Upstream::default();
    let attempts = attempts(
        ctx,
        c,
        &dns_host,
        &mut out,
        fwd.retry.as_ref(),
        rec,
        &mut upstream,
    );
    let result = match fwd.timeout {
        Some(t) => match tokio::time::timeout(t, attempts).await {
            Ok(r) => r,
            Err(_) => {
                state.stats.upstream_rq_timeout.inc();
                Err(Error::Timeout)
            }
        },
        None => attempts.await,
    };
    rec.upstream_host = upstream.host;
    rec.upstream_local = upstream.local;
    let (mut resp, guards) = result?;
    let service_time = started.elapsed().as_millis();
    check_response(&resp)?;
    let switched = upgrade.is_some() && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    if switched {
        // What the client sends from now on is no request: not scanned as one.
        if let Some(framing) = &ctx.framing {
            framing.switch();
        }
        let downstream = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let upstream = hyper::upgrade::on(&mut resp);
        match downstream {
            Some(downstream) => spawn_tunnel(downstream, upstream, rec.counts.clone()),
            None => {
                return Err(Error::Downstream(
                    "an upgrade over a connection that cannot switch".into(),
                ));
            }
        }
    }

    if rec.details.is_none() {
        rec.details = Some("via_upstream".into());
    }
    let (mut head, body) = resp.into_parts();
    let switched_to = switched
        .then(|| head.headers.get(header::UPGRADE).cloned())
        .flatten();
    headers::strip_hop_by_hop(&mut head.headers);
    if let Some(protocol) = switched_to {
        head.headers.insert(header::UPGRADE, protocol);
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    headers::apply(&wc.response_headers, &mut head.headers);
    headers::apply(&route.response_headers, &mut head.headers);
    if let Some(cookie) = set_cookie {
        head.headers.append(header::SET_COOKIE, cookie);
    }
    head.headers.insert(
        X_ENVOY_UPSTREAM_SERVICE_TIME,
        HeaderValue::from(service_time as u64),
    );
    head.version = Version::HTTP_11;
    let body = body.map_err(|e| -> BoxError { Box::new(e) }).boxed();
    // Envoy's route timeout runs until the response is complete: a body still streaming
    // when it fires is cut.
    let body = match fwd.timeout {
        Some(t) if !switched => Deadline {
            inner: body,
            at: Box::pin(tokio::time::sleep_until(started + t)),
            timeouts: state.stats.upstream_rq_timeout.clone(),
        }
        .boxed(),
        _ => body,
    };
    Ok((Response::from_parts(head, body), guards))
}

async fn buffer_if_small(body: Body) -> Result<BodySource, Error> {
    let small = body
        .size_hint()
        .exact()
        .is_some_and(|n| n <= MAX_BUFFERED_BODY)
        || body.is_end_stream();
    if !small {
        return Ok(BodySource::Stream(Some(body)));
    }
    let read = async {
        let mut body = body;
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| Error::Downstream(format!("reading the request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if (buf.len() + data.len()) as u64 > MAX_BUFFERED_BODY {
                    return Err(Error::Downstream(
                        "request body larger than announced".into(),
                    ));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(BodySource::Buffered(buf.freeze()))
    };
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(r) => r,
        Err(_) => Err(Error::Downstream("request body timeout".into())),
    }
}

/// Envoy's rewrite: `uri` replaces the matched prefix (the whole path for exact and regex
/// matches; a route without a path match is a `/` prefix); `uri_regex` substitutes.
pub fn rewrite_path(
    rw: &Rewrite,
    matched: Option<&RequestMatch>,
    path: &str,
    query: Option<&str>,
) -> Option<String> {
    let new_path = if let Some((re, with)) = &rw.uri_regex {
        re.replace_all(path, &envoy_substitution(with))
    } else if let Some(uri) = &rw.uri {
        match matched.and_then(|m| m.path.as_ref()) {
            Some(StringMatcher::Prefix(p)) => {
                let rest = path.get(p.len()..).unwrap_or("");
                format!("{uri}{rest}")
            }
            Some(_) => uri.clone(),
            None => format!("{uri}{}", path.get(1..).unwrap_or("")),
        }
    } else {
        return None;
    };
    let new_path = if new_path.is_empty() {
        "/".to_owned()
    } else {
        new_path
    };
    Some(match query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    })
}

/// RE2 substitutions (`\1`) in Rust's syntax (`${1}`).
fn envoy_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut n = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    n.push(d);
                    chars.next();
                }
                out.push_str(&format!("${{{n}}}"));
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

/// How [`reset_error`] ends the reason of a stream the upstream refused with HTTP/2's
/// `REFUSED_STREAM`.
const REFUSED_STREAM: &str = "(refused stream)";

/// When to retry, from Envoy's `retry_on` conditions and retriable status codes: read once
/// per request into bits, so that each check is a mask (comparing the condition strings on
/// every check cost 3 % of a request's instructions).
struct RetryOn {
    on: u16,
    codes: Vec<u16>,
}

/// Envoy's retry conditions, as bits of [`RetryOn::on`].
mod cond {
    pub const FIVE_XX: u16 = 1;
    pub const GATEWAY_ERROR: u16 = 1 << 1;
    pub const RESET: u16 = 1 << 2;
    pub const CONNECT_FAILURE: u16 = 1 << 3;
    pub const RESET_BEFORE_REQUEST: u16 = 1 << 4;
    pub const REFUSED_STREAM: u16 = 1 << 5;
    pub const RETRIABLE_4XX: u16 = 1 << 6;
    pub const ENVOY_RATELIMITED: u16 = 1 << 7;
    pub const CANCELLED: u16 = 1 << 8;
    pub const DEADLINE_EXCEEDED: u16 = 1 << 9;
    pub const INTERNAL: u16 = 1 << 10;
    pub const RESOURCE_EXHAUSTED: u16 = 1 << 11;
    pub const UNAVAILABLE: u16 = 1 << 12;

    /// The bit of a condition named in lower case.
    pub fn bit(name: &str) -> Option<u16> {
        Some(match name {
            "5xx" => FIVE_XX,
            "gateway-error" => GATEWAY_ERROR,
            "reset" => RESET,
            "connect-failure" => CONNECT_FAILURE,
            "reset-before-request" => RESET_BEFORE_REQUEST,
            "refused-stream" => REFUSED_STREAM,
            "retriable-4xx" => RETRIABLE_4XX,
            "envoy-ratelimited" => ENVOY_RATELIMITED,
            "cancelled" => CANCELLED,
            "deadline-exceeded" => DEADLINE_EXCEEDED,
            "internal" => INTERNAL,
            "resource-exhausted" => RESOURCE_EXHAUSTED,
            "unavailable" => UNAVAILABLE,
            _ => return None,
        })
    }
}

impl RetryOn {
    fn new(policy: &RetryPolicy) -> Self {
        let mut on = 0;
        let mut codes = Vec::new();
        for c in policy.retry_on.iter().map(|c| c.trim()) {
            let bit = cond::bit(c).or_else(|| {
                c.bytes()
                    .any(|b| b.is_ascii_uppercase())
                    .then(|| cond::bit(&c.to_ascii_lowercase()))
                    .flatten()
            });
            if let Some(bit) = bit {
                on |= bit;
            } else if let Ok(code) = c.parse() {
                codes.push(code);
            }
        }
        RetryOn { on, codes }
    }

    fn has(&self, conds: u16) -> bool {
        self.on & conds != 0
    }

    fn status(&self, s: u16) -> bool {
        (self.has(cond::FIVE_XX) && s >= 500)
            || (self.has(cond::GATEWAY_ERROR) && matches!(s, 502..=504))
            || (self.has(cond::RETRIABLE_4XX) && s == 409)
            || self.codes.contains(&s)
    }

    /// Envoy's `wouldRetryFromHeaders`: the status, `x-envoy-ratelimited`, and the gRPC status
    /// of a trailers-only response; never a response marked `x-envoy-overloaded`.
    /// A header is looked up only when a condition of the policy reads it (each lookup hashes
    /// the name: three per response were ≈1.5 % of a request's instructions).
    fn response<B>(&self, resp: &Response<B>) -> bool {
        const OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
        const RATELIMITED: HeaderName = HeaderName::from_static("x-envoy-ratelimited");
        const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
        const GRPC: u16 = cond::CANCELLED
            | cond::DEADLINE_EXCEEDED
            | cond::RESOURCE_EXHAUSTED
            | cond::INTERNAL
            | cond::UNAVAILABLE;
        let h = resp.headers();
        let grpc = || {
            h.get(&GRPC_STATUS)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u32>().ok())
                .and_then(|code| match code {
                    1 => Some(cond::CANCELLED),
                    4 => Some(cond::DEADLINE_EXCEEDED),
                    8 => Some(cond::RESOURCE_EXHAUSTED),
                    13 => Some(cond::INTERNAL),
                    14 => Some(cond::UNAVAILABLE),
                    _ => None,
                })
        };
        let retry = self.status(resp.status().as_u16())
            || (self.has(cond::ENVOY_RATELIMITED) && h.contains_key(&RATELIMITED))
            || (self.has(GRPC) && grpc().is_some_and(|c| self.has(c)));
        retry && !h.contains_key(&OVERLOADED)
    }

    /// Envoy's `wouldRetryFromReset`: `5xx`, `gateway-error` and `reset` retry any reset or
    /// per-try timeout, `connect-failure` and `reset-before-request` only a failed connection
    /// (nothing was sent), `refused-stream` only an HTTP/2 stream the upstream refused
    /// (`REFUSED_STREAM`) — never a request that may have been processed.
    fn error(&self, e: &Error) -> bool {
        match e {
            Error::Connect { .. } | Error::UpstreamTls(_) => self.has(
                cond::FIVE_XX
                    | cond::GATEWAY_ERROR
                    | cond::RESET
                    | cond::CONNECT_FAILURE
                    | cond::RESET_BEFORE_REQUEST,
            ),
            Error::UpstreamReset(reason) => {
                self.has(cond::FIVE_XX | cond::GATEWAY_ERROR | cond::RESET)
                    || (self.has(cond::REFUSED_STREAM) && reason.ends_with(REFUSED_STREAM))
            }
            Error::Timeout => self.has(cond::FIVE_XX | cond::GATEWAY_ERROR | cond::RESET),
            _ => false,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn attempts(
    ctx: &Arc<ConnCtx>,
    c: &Arc<ClusterRt>,
    dns_host: &str,
    out: &mut Outgoing,
    policy: Option<&RetryPolicy>,
    rec: &mut Record,
    upstream: &mut Upstream,
) -> Result<(Response<PooledBody>, Guards), Error> {
    let (cluster, state) = (&c.cluster, &c.state);
    let retry = policy.map(RetryOn::new);
    let max_attempts = match policy {
        Some(p) if out.replayable() => p.attempts.saturating_add(1),
        _ => 1,
    };
    let per_try = policy.and_then(|p| p.per_try_timeout);
    let mut n = 0u32;
    // The retry in flight holds a slot of the cluster's `max_retries` (Envoy's retry circuit
    // breaker) from the decision to retry until the next decision.
    let mut _retry_slot: Option<Slot> = None;
    let mut tried: Vec<SocketAddr> = Vec::new();
    loop {
        n += 1;
        rec.attempts = n;
        let mut picked = None;
        let one = attempt(ctx, c, dns_host, out, upstream, &mut picked, &tried);
        let r = match per_try {
            Some(t) => match tokio::time::timeout(t, one).await {
                Ok(r) => r,
                Err(_) => {
                    state.stats.upstream_rq_per_try_timeout.inc();
                    if let (Some(d), Some(addr)) = (&state.outlier, picked) {
                        d.report(addr, Outcome::Timeout);
                    }
                    Err(Error::Timeout)
                }
            },
            None => one.await,
        };
        tried.extend(picked);
        let retriable = match (&r, &retry) {
            (Ok((resp, _)), Some(retry)) => retry.response(resp),
            (Err(e), Some(retry)) => retry.error(e),
            (_, None) => false,
        };
        if !retriable {
            return r;
        }
        if n >= max_attempts {
            if max_attempts > 1 {
                rec.add_flag("URX");
            }
            return r;
        }
        // Envoy's `RetryStatus::NoOverflow`: the retry is not made, the attempt's own
        // outcome (the upstream's response, or its failure) is the answer, flagged `UO`.
        _retry_slot = None;
        let Some(slot) = Slot::try_take(state, |s| &s.retries, cluster.limits.max_retries, false)
        else {
            state.stats.upstream_rq_retry_overflow.inc();
            rec.add_flag("UO");
            return r;
        };
        _retry_slot = Some(slot);
        state.stats.upstream_rq_retry.inc();
        if let Err(e) = &r {
            tracing::debug!(error = %e, attempt = n, "retrying");
        }
        drop(r);
        // Envoy's backoff: 25ms base, doubling, jittered, at most 250ms.
        let base = 25u64 << (n - 1).min(4);
        let wait = rand::rng().random_range(0..=base.min(250));
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// Istio's `HostSelectionRetryMaxAttempts`: a retry picks again up to this many times while
/// the load balancer keeps choosing an endpoint already tried (the `previous_hosts` predicate
/// Istio sets unless `retryIgnorePreviousHosts: false`), then takes the last choice.
const HOST_SELECTION_RETRIES: usize = 5;

/// One attempt: an endpoint (preferably not one of `tried`), a connection, the request, the
/// response head.
async fn attempt(
    ctx: &Arc<ConnCtx>,
    c: &Arc<ClusterRt>,
    dns_host: &str,
    out: &mut Outgoing,
    upstream: &mut Upstream,
    picked: &mut Option<SocketAddr>,
    tried: &[SocketAddr],
) -> Result<(Response<PooledBody>, Guards), Error> {
    let (cluster, state) = (&c.cluster, &c.state);
    let ups = &ctx.shared.upstreams;
    let requested = ctx.info.requested.as_ref().map(|(h, p)| (h.as_str(), *p));
    let candidates = ups
        .endpoints(c, Some(dns_host), ctx.info.original_dst, requested)
        .await?;
    let untried = candidates.iter().any(|c| !tried.contains(&c.addr));
    let mut choice = None;
    for i in 0..=HOST_SELECTION_RETRIES {
        // A consistent hash would pick the same endpoint again: Envoy's Maglev mutates the
        // hash per host-selection attempt (most bits flipped), which moves a ring lookup too.
        let hash = match i {
            0 => out.hash,
            i => out.hash.map(|h| h ^ (u64::MAX - i as u64 + 1)),
        };
        let (candidate, inflight) = state
            .pick(&cluster.lb, &candidates, hash)
            .ok_or(Error::NoHealthyUpstream("no endpoint".into()))?;
        let again = untried && tried.contains(&candidate.addr);
        choice = Some((candidate, inflight));
        if !again {
            break;
        }
    }
    let (candidate, inflight) = choice.ok_or(Error::NoHealthyUpstream("no endpoint".into()))?;
    upstream.host = Some(candidate.addr);
    *picked = Some(candidate.addr);
    let r = exchange(ctx, c, candidate, inflight, out, upstream).await;
    if let Some(d) = &state.outlier
        && let Some(o) = outcome(&r)
    {
        d.report(candidate.addr, o);
    }
    r
}

/// What an attempt's result tells outlier detection about its endpoint (nothing when the
/// request never reached it, or failed on the client's side).
fn outcome<B>(r: &Result<(Response<B>, Guards), Error>) -> Option<Outcome> {
    match r {
        Ok((resp, _)) => Some(Outcome::Status(resp.status().as_u16())),
        Err(Error::Timeout) => Some(Outcome::Timeout),
        Err(
            Error::Connect { .. }
            | Error::UpstreamTls(_)
            | Error::UpstreamReset(_)
            | Error::UpstreamProtocol(_),
        ) => Some(Outcome::ConnectFailed),
        Err(_) => None,
    }
}

/// The request on a connection to the picked endpoint, up to the response head.
async fn exchange(
    ctx: &Arc<ConnCtx>,
    c: &Arc<ClusterRt>,
    candidate: &Candidate,
    inflight: InflightGuard,
    out: &mut Outgoing,
    upstream: &mut Upstream,
) -> Result<(Response<PooledBody>, Guards), Error> {
    let (cluster, state) = (&c.cluster, &c.state);
    let ups = &ctx.shared.upstreams;
    let requests = Slot::try_take(state, |s| &s.requests, cluster.limits.max_requests, false)
        .ok_or_else(|| {
            state.stats.upstream_rq_pending_overflow.inc();
            Error::Overflow("max_requests")
        })?;
    state.stats.upstream_rq_total.inc();
    let scheme = if cluster.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut unsent: Option<Request<Body>> = None;
    // A pooled connection may turn out closed: the request then goes on another one.
    for _ in 0..3 {
        let conn = ups.http_connection(c, candidate).await?;
        upstream.local = conn.local;
        let reused = conn.reused;
        let req = match unsent.take() {
            Some(r) => r,
            None => out
                .request(conn.is_h2(), scheme)
                .ok_or_else(|| Error::UpstreamReset("request body already sent".into()))?,
        };
        let sent = conn
            .send(&state.pool, req, cluster.limits.max_requests_per_connection)
            .await;
        match sent {
            Ok(resp) => return Ok((resp, Box::new((inflight, requests)))),
            Err(SendError::Unsent(req, _)) if reused => unsent = Some(*req),
            Err(SendError::Failed(e))
                if reused && out.replayable() && (e.is_canceled() || e.is_incomplete_message()) => {
            }
            Err(SendError::Unsent(_, e) | SendError::Failed(e)) => return Err(reset_error(&e)),
        }
    }
    Err(Error::UpstreamReset(
        "pooled connections closed under the request".into(),
    ))
}

/// The `Upgrade` protocol of an HTTP/1.1 request that asks to switch (`Connection: upgrade`).
fn upgrade_requested(h: &HeaderMap) -> Option<HeaderValue> {
    let asks = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| h.get(header::UPGRADE).cloned()).flatten()
}

/// Envoy refuses responses HTTP forbids rather than relaying them truncated or ambiguous.
fn check_response<B>(resp: &Response<B>) -> Result<(), Error> {
    let status = resp.status().as_u16();
    if !(100..=599).contains(&status) {
        return Err(Error::UpstreamProtocol(format!("status {status}")));
    }
    let h = resp.headers();
    if h.contains_key(header::CONTENT_LENGTH) && h.contains_key(header::TRANSFER_ENCODING) {
        return Err(Error::UpstreamProtocol(
            "both content-length and transfer-encoding".into(),
        ));
    }
    Ok(())
}

/// Copies bytes both ways between the switched downstream and upstream connections.
fn spawn_tunnel(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    counts: Arc<crate::telemetry::ByteCounts>,
) {
    tokio::spawn(async move {
        let (Ok(down), Ok(up)) = (downstream.await, upstream.await) else {
            tracing::debug!("upgrade: a side went away before switching");
            return;
        };
        let mut down = hyper_util::rt::TokioIo::new(down);
        let mut up = hyper_util::rt::TokioIo::new(up);
        match tokio::io::copy_bidirectional(&mut down, &mut up).await {
            Ok((from_client, to_client)) => {
                use std::sync::atomic::Ordering::Relaxed;
                counts.received.fetch_add(from_client, Relaxed);
                counts.sent.fetch_add(to_client, Relaxed);
            }
            Err(e) => tracing::debug!(error = %e, "upgraded connection ended"),
        }
    });
}

/// A failed exchange: a TLS alert from the upstream (TLS 1.3 reports a refused client
/// certificate only after the handshake) is a TLS failure (`UF`), anything else a reset.
fn reset_error(e: &hyper::Error) -> Error {
    // The request body is the client's: its framing error is the client's (`DPE`, 400), not
    // a reset to count against the upstream.
    if e.is_user() && std::error::Error::source(e).is_some() {
        return Error::Downstream(format!("request body: {e}"));
    }
    // A response head HTTP/1.1 cannot parse (a status outside three digits, bad framing).
    if e.is_parse() || e.is_parse_status() {
        return Error::UpstreamProtocol(e.to_string());
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(tls) = s.downcast_ref::<rustls::Error>() {
            return Error::UpstreamTls(tls.to_string());
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Error::UpstreamTls(tls.to_string());
        }
        // h2's `Reason` for REFUSED_STREAM, as it prints (h2 is not a direct dependency).
        if s.to_string()
            .ends_with("refused stream before processing any application logic")
        {
            return Error::UpstreamReset(format!("{e} {REFUSED_STREAM}"));
        }
        source = s.source();
    }
    Error::UpstreamReset(e.to_string())
}

/// A response body cut with an error (the downstream stream is reset) once the route timeout
/// fires, counted in `upstream_rq_timeout`.
struct Deadline {
    inner: Body,
    at: std::pin::Pin<Box<tokio::time::Sleep>>,
    timeouts: prometheus_client::metrics::counter::Counter,
}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        if self.at.as_mut().poll(cx).is_ready() {
            self.timeouts.inc();
            return std::task::Poll::Ready(Some(Err("upstream request timeout".into())));
        }
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Sends a copy of the request to `cluster`, ignoring the result (Envoy's shadowing).
fn spawn_mirror(
    ctx: Arc<ConnCtx>,
    cluster: String,
    dns_host: String,
    mut out: Outgoing,
    timeout: Option<Duration>,
) {
    tokio::spawn(async move {
        let Some(c) = ctx.runtime.cluster(&cluster).cloned() else {
            return;
        };
        out.hash = out.hash(&c.cluster.lb, ctx.info.peer).0;
        let mut upstream = Upstream::default();
        let limit = timeout.unwrap_or(Duration::from_secs(30));
        let run = async {
            let mut picked = None;
            let (resp, _guards) = attempt(
                &ctx,
                &c,
                &dns_host,
                &mut out,
                &mut upstream,
                &mut picked,
                &[],
            )
            .await?;
            let _ = resp.into_body().collect().await;
            Ok::<(), Error>(())
        };
        if let Ok(Err(e)) = tokio::time::timeout(limit, run).await {
            tracing::debug!(error = %e, cluster = c.cluster.name, "mirror");
        }
    });
}

#[cfg(test)]
mod tests {
    use sluice_snapshot::matching::Regex;

    use super::*;

    fn m(path: StringMatcher) -> RequestMatch {
        RequestMatch {
            path: Some(path),
            ..Default::default()
        }
    }

    #[test]
    fn rewrites_like_envoy() {
        let uri = |u: &str| Rewrite {
            uri: Some(u.into()),
            ..Default::default()
        };
        let prefix = m(StringMatcher::Prefix("/old".into()));
        let exact = m(StringMatcher::Exact("/old/x".into()));
        let table = [
            (
                uri("/new"),
                Some(&prefix),
                "/old/x",
                Some("a=1"),
                "/new/x?a=1",
            ),
            (uri("/new"), Some(&exact), "/old/x", None, "/new"),
            (uri("/v2/"), None, "/x", None, "/v2/x"),
            (uri(""), Some(&prefix), "/old", None, "/"),
        ];
        for (rw, matched, path, query, want) in table {
            assert_eq!(
                rewrite_path(&rw, matched, path, query).as_deref(),
                Some(want)
            );
        }
        let regex = Rewrite {
            uri_regex: Some((
                Regex::new("^/service/([^/]+)(/.*)$").expect("re"),
                "\\2/instance/\\1".into(),
            )),
            ..Default::default()
        };
        assert_eq!(
            rewrite_path(&regex, None, "/service/foo/v1/api", None).as_deref(),
            Some("/v1/api/instance/foo")
        );
        assert_eq!(rewrite_path(&Rewrite::default(), None, "/x", None), None);
    }

    #[test]
    fn retry_conditions() {
        let p = RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            retry_on: vec![
                "connect-failure".into(),
                "retriable-status-codes".into(),
                "503".into(),
            ],
        };
        let r = RetryOn::new(&p);
        assert!(r.status(503));
        assert!(!r.status(500));
        assert!(r.error(&Error::Connect {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            reason: "x".into()
        }));
        assert!(!r.error(&Error::Timeout));
        let p5 = RetryPolicy {
            retry_on: vec!["5xx".into()],
            ..p
        };
        let r = RetryOn::new(&p5);
        assert!(r.status(500) && r.error(&Error::Timeout));
    }

    /// Envoy's `wouldRetryFromReset` / `wouldRetryFromHeaders`, condition by condition.
    #[test]
    fn retry_conditions_follow_envoy() {
        let on = |conds: &[&str]| RetryPolicy {
            attempts: 1,
            per_try_timeout: None,
            retry_on: conds.iter().map(|c| (*c).to_owned()).collect(),
        };
        let connect = Error::Connect {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            reason: "refused".into(),
        };
        let reset = Error::UpstreamReset("connection closed before message completed".into());
        let refused = Error::UpstreamReset(format!("http2 error {REFUSED_STREAM}"));
        // (conditions, connect failure, reset, refused stream, per-try timeout)
        let table: [(&[&str], bool, bool, bool, bool); 6] = [
            (&["5xx"], true, true, true, true),
            (&["gateway-error"], true, true, true, true),
            (&["reset"], true, true, true, true),
            (&["connect-failure"], true, false, false, false),
            (&["reset-before-request"], true, false, false, false),
            (&["refused-stream"], false, false, true, false),
        ];
        for (conds, c, r, rs, t) in table {
            let p = on(conds);
            let retry = RetryOn::new(&p);
            assert_eq!(
                [
                    retry.error(&connect),
                    retry.error(&reset),
                    retry.error(&refused),
                    retry.error(&Error::Timeout)
                ],
                [c, r, rs, t],
                "{conds:?}"
            );
        }
        let resp = |status: u16, headers: &[(&str, &str)]| {
            let mut b = Response::builder().status(status);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).expect("response")
        };
        let grpc = on(&[
            "cancelled",
            "deadline-exceeded",
            "internal",
            "resource-exhausted",
            "unavailable",
        ]);
        let retry = RetryOn::new(&grpc);
        for code in ["1", "4", "8", "13", "14"] {
            assert!(
                retry.response(&resp(200, &[("grpc-status", code)])),
                "{code}"
            );
        }
        assert!(!retry.response(&resp(200, &[("grpc-status", "2")])));
        assert!(!retry.response(&resp(503, &[])));
        // x-envoy-overloaded vetoes whichever condition matched.
        let overloaded = ("x-envoy-overloaded", "true");
        assert!(!retry.response(&resp(200, &[("grpc-status", "14"), overloaded])));
        let p = on(&["envoy-ratelimited", "5xx"]);
        let retry = RetryOn::new(&p);
        assert!(retry.response(&resp(429, &[("x-envoy-ratelimited", "true")])));
        assert!(retry.response(&resp(503, &[])));
        assert!(!retry.response(&resp(503, &[overloaded])));
        assert!(!retry.response(&resp(429, &[("x-envoy-ratelimited", "true"), overloaded])));
        // No gRPC condition in the policy: a gRPC status is not a reason.
        assert!(!retry.response(&resp(200, &[("grpc-status", "14")])));
        let p = on(&["retriable-4xx"]);
        let retry = RetryOn::new(&p);
        assert!(retry.response(&resp(409, &[])) && !retry.response(&resp(404, &[])));
    }
}
