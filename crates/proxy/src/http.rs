//! HTTP chains: hyper serves HTTP/1.1 and h2c (or what ALPN chose after TLS termination);
//! each request goes through phases — record, virtual host, route, action — and its record is
//! carried by the response body, so the log line is written when the response ends.

pub mod forward;
pub mod headers;
pub mod path;
pub mod route;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use sluice_snapshot::route::{Redirect, RequestMatch, Route, RouteAction, VirtualHost};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::flow::{Bound, ConnCtx};
use crate::framing::{BothFramings, CONTENT_LENGTH_AND_CHUNKED, HeadScan};
use crate::rewind::Rewind;
use crate::shared::wait_true;
use crate::telemetry::{ByteCounts, HttpFields, Kind, Record};
use crate::upstream::pool::{Body, BoxError};
use crate::{Error, authz};

/// Envoy's client-certificate header, removed from every request.
const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Largest request head accepted (Envoy's default `max_request_headers_kb` is 60).
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Serves HTTP on `io` until the client closes or the proxy drains. `h2`: what ALPN chose
/// (`None` on plain chains: HTTP/1.1 or the h2c preface, told apart by the first bytes, which
/// must come within `first_byte_timeout`).
pub async fn serve<S>(io: S, ctx: Arc<ConnCtx>, h2: Option<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match h2 {
        Some(h2) => serve_as(io, ctx, h2).await,
        None => match sniff_h2c(io, ctx.shared.config.first_byte_timeout).await {
            Ok((io, h2)) => serve_as(io, ctx, h2).await,
            Err(why) => {
                tracing::debug!(peer = %ctx.info.peer, why, "http connection closed");
                if why == FIRST_BYTE_TIMEOUT || why == REQUEST_HEAD_TIMEOUT {
                    ctx.shared.telemetry.metrics.refused("limit", why);
                }
            }
        },
    }
}

const FIRST_BYTE_TIMEOUT: &str = "first_byte_timeout";
/// The `reason` of `sluice_refused_total{check="limit"}` for a connection closed because a
/// request head did not arrive in time.
pub(crate) const REQUEST_HEAD_TIMEOUT: &str = "request_head_timeout";
/// The header list h2 itself refuses (`431` on the stream, uncounted: its frame decoder
/// answers before the service runs). Requests between [`MAX_HEADER_BYTES`] and this reach the
/// service, which refuses and counts them; the backstop bounds what one stream's decoded
/// headers may hold (HPACK lets a few bytes stand for many).
const H2_HEADER_LIST_BACKSTOP: usize = 4 * MAX_HEADER_BYTES;

/// The `reason` for a request head hyper refused with `431` (too many bytes or fields).
pub(crate) const REQUEST_HEAD_TOO_LARGE: &str = "request_head_too_large";
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the bytes are, or cannot be, HTTP/2's connection preface. A client silent for
/// `timeout` (or one that closes first) is let go: HTTP clients speak first.
async fn sniff_h2c<S: AsyncRead + Unpin>(
    mut io: S,
    timeout: Duration,
) -> Result<(Rewind<S>, bool), &'static str> {
    use tokio::io::AsyncReadExt;
    let mut buf = bytes::BytesMut::with_capacity(H2_PREFACE.len());
    let read = tokio::time::timeout(timeout, async {
        while buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&buf) {
            let mut limited = (&mut io).take((H2_PREFACE.len() - buf.len()) as u64);
            if limited.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    match read {
        Err(_) if buf.is_empty() => Err(FIRST_BYTE_TIMEOUT),
        Err(_) => Err(REQUEST_HEAD_TIMEOUT),
        Ok(Err(_)) | Ok(Ok(())) if buf.is_empty() => Err("closed"),
        Ok(_) => {
            let h2 = buf.as_ref() == H2_PREFACE;
            Ok((Rewind::new(buf.freeze(), io), h2))
        }
    }
}

async fn serve_as<S>(io: S, ctx: Arc<ConnCtx>, h2: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The head timeout runs from a head's first byte (HeadScan below): hyper's would also
        // run while a kept-alive connection waits for its next request, which Envoy holds to
        // the connection's idle timeout instead.
        .header_read_timeout(None)
        // hyper's default already caps a head at 100 fields (Envoy's `max_headers_count`)
        // on the stack; setting `max_headers` would build that array anew per request.
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        // h2 answers a list over its own bound itself, before any service sees it: that
        // bound is the backstop, and the service refuses (and counts) what is over
        // MAX_HEADER_BYTES below it (request_shape).
        .max_header_list_size(H2_HEADER_LIST_BACKSTOP as u32)
        .max_concurrent_streams(1024);
    let builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    // When the connection last started a request (the idle timeout, Envoy's `idle_timeout`).
    let idle = Arc::new(Idle::default());
    let bound = Arc::new(Bound::new(ctx.clone()));
    let svc_bound = bound.clone();
    let svc_idle = idle.clone();
    // `Flow::into_ctx` gives every HTTP connection its own; one made here would do the same
    // job, short of learning from the forward path that the connection switched protocols.
    let framing = ctx.framing.clone().unwrap_or_default();
    let svc_framing = framing.clone();
    let svc = service_fn(move |mut req: Request<Incoming>| {
        let ctx = svc_bound.current();
        if !h2 && svc_framing.take_request() {
            req.extensions_mut().insert(BothFramings);
        }
        svc_idle.touch();
        async move { Ok::<_, Infallible>(handle(req, ctx).await) }
    });
    // HTTP/1 heads are watched for what hyper accepts and Envoy refuses (crate::framing), and
    // for how long each takes to arrive; HTTP/2 has no such framing.
    let io =
        HeadScan::new(io, framing, !h2).with_head_timeout(ctx.shared.config.request_head_timeout);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut drain = ctx.shared.drain.clone();
    let idle_timeout = ctx.shared.config.idle_timeout;
    let idled = async {
        loop {
            let deadline = idle.last() + idle_timeout;
            tokio::time::sleep_until(deadline).await;
            if idle.last() + idle_timeout <= tokio::time::Instant::now() {
                return;
            }
        }
    };
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, peer = %ctx.info.peer, "http connection");
                if let Some(why) = head_refused(&*e) {
                    ctx.shared.telemetry.metrics.refused("limit", why);
                }
            }
        }
        _ = wait_true(&mut drain) => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection during drain");
            }
        }
        () = bound.closing() => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection its new snapshot does not serve");
            }
        }
        () = idled => {
            // HTTP/2: GOAWAY, streams in flight finish, no new one starts. HTTP/1: closed
            // now, or after the response in flight.
            ctx.shared.telemetry.metrics.refused("limit", "idle_timeout");
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection at its idle timeout");
            }
        }
    }
}

/// The `reason` of `sluice_refused_total{check="limit"}` when an HTTP/1 connection ended at
/// one of its head limits: the head timeout (the gateway's: a head did not end in time after
/// its first byte, [`crate::framing::HeadTimedOut`]; the explicit proxy's, hyper's: a head,
/// or between requests the next one, did not arrive in time), or a head hyper answered `431`
/// itself (more bytes than `max_buf_size`, more than 100 fields; hyper's
/// `is_parse_too_large`). Read once, from the error the connection ends with: no work per
/// request.
pub(crate) fn head_refused(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let e = e.downcast_ref::<hyper::Error>()?;
    if e.is_timeout() || crate::framing::HeadTimedOut::is_cause_of(e) {
        Some(REQUEST_HEAD_TIMEOUT)
    } else if e.is_parse_too_large() {
        Some(REQUEST_HEAD_TOO_LARGE)
    } else {
        None
    }
}

/// When a connection last started a request.
struct Idle {
    start: tokio::time::Instant,
    /// Milliseconds from `start`.
    last_ms: std::sync::atomic::AtomicU64,
}

impl Default for Idle {
    fn default() -> Idle {
        Idle {
            start: tokio::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Idle {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.start
            + std::time::Duration::from_millis(
                self.last_ms.load(std::sync::atomic::Ordering::Relaxed),
            )
    }
}

/// Requests no route may take, whatever the routes say.
fn request_shape(ctx: &ConnCtx, parts: &Parts) -> Result<(), Error> {
    // Content-Length with Transfer-Encoding: hyper dropped the length (and will close the
    // connection after the response); Envoy's codec refuses the request, and so does sluice.
    if parts.extensions.get::<BothFramings>().is_some() {
        let metrics = &ctx.shared.telemetry.metrics;
        metrics.refused("framing", "content_length_and_chunked");
        return Err(Error::Http1Framing(CONTENT_LENGTH_AND_CHUNKED));
    }
    if parts.version == http::Version::HTTP_2 {
        let size = header_list_size(parts);
        if size > MAX_HEADER_BYTES {
            let metrics = &ctx.shared.telemetry.metrics;
            metrics.refused("limit", REQUEST_HEAD_TOO_LARGE);
            return Err(Error::HeaderListTooLarge(size));
        }
    }
    // Envoy without a `connect_matcher` route answers CONNECT 404 (`NR`): never forwarded.
    if parts.method == http::Method::CONNECT {
        return Err(Error::NoRoute);
    }
    Ok(())
}

/// An HTTP/2 request's header list size as RFC 9113 §6.5.2 (and h2's own bound) counts it:
/// every field's name and value octets plus 32, the pseudo-headers included.
fn header_list_size(parts: &Parts) -> usize {
    const FIELD: usize = 32;
    let pseudo = |name: &str, value: usize| name.len() + value + FIELD;
    let uri = &parts.uri;
    let mut size = pseudo(":method", parts.method.as_str().len())
        + uri.scheme_str().map_or(0, |s| pseudo(":scheme", s.len()))
        + uri
            .authority()
            .map_or(0, |a| pseudo(":authority", a.as_str().len()))
        + uri
            .path_and_query()
            .map_or(0, |p| pseudo(":path", p.as_str().len()));
    if let Some(protocol) = parts.extensions.get::<hyper::ext::Protocol>() {
        size += pseudo(":protocol", protocol.as_str().len());
    }
    for (name, value) in &parts.headers {
        size += name.as_str().len() + value.len() + FIELD;
    }
    size
}

/// The one Host header of a request. Two different ones are refused (request smuggling: a
/// proxy and the server behind it could each pick a different one); repeats of one value are
/// one.
pub(crate) fn single_host(headers: &http::HeaderMap) -> Result<Option<&str>, String> {
    let mut values = headers.get_all(header::HOST).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.any(|v| v != first) {
        return Err("two different Host headers".into());
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| "the Host header is not text".into())
}

/// The request's authority, canonical ([`crate::authority`]): the URI's (HTTP/2, absolute
/// form) or the Host header. A respelled authority is written back, so the routes, the
/// policies and the upstream all see the name that was decided on. Refused: a malformed
/// authority, a Host header that disagrees with the URI's authority or with another Host
/// header (400), and a name other than the TLS server name the request arrived under (421,
/// domain fronting). The error comes with the authority as received, for the log.
/// A request on a TLS session must name the host the session's SNI named.
fn check_fronting(ctx: &ConnCtx, raw: &str, name: &str) -> Result<(), (String, Error)> {
    match &ctx.info.sni {
        Some(sni) if name != sni => {
            ctx.shared
                .telemetry
                .metrics
                .refused("fronting", "host_differs_from_sni");
            Err((
                raw.to_owned(),
                Error::Fronting(format!("{name} requested on a TLS session for {sni}")),
            ))
        }
        _ => Ok(()),
    }
}

fn request_authority(ctx: &ConnCtx, parts: &mut Parts) -> Result<String, (String, Error)> {
    let host = single_host(&parts.headers).map_err(|e| (String::new(), Error::Downstream(e)))?;
    let raw = match (parts.uri.authority(), host) {
        (Some(a), Some(h)) if !crate::authority::same_authority(a.as_str(), h) => {
            return Err((
                a.as_str().to_owned(),
                Error::Downstream("the Host header differs from the request's authority".into()),
            ));
        }
        (Some(a), _) => a.as_str(),
        (None, Some(h)) => h,
        (None, None) => "",
    };
    if let Some(host) = crate::authority::canonical_name_authority(raw) {
        check_fronting(ctx, raw, host)?;
        return Ok(raw.to_owned());
    }
    let parsed = crate::authority::Authority::parse(raw).map_err(|e| {
        ctx.shared
            .telemetry
            .metrics
            .refused("authority", "malformed");
        (
            raw.to_owned(),
            Error::Downstream(format!("bad authority {e}")),
        )
    })?;
    if let crate::authority::Host::Name(name) = &parsed.host {
        check_fronting(ctx, raw, name)?;
    }
    let canonical = parsed.to_string();
    if canonical != raw {
        let value = HeaderValue::from_str(&canonical).map_err(|_| {
            (
                raw.to_owned(),
                Error::Downstream("unusable authority".into()),
            )
        })?;
        if parts.uri.authority().is_some() {
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.authority = canonical.parse().ok();
            parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
        }
        if parts.headers.contains_key(header::HOST) {
            parts.headers.insert(header::HOST, value);
        }
    }
    Ok(canonical)
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// One request on `ctx`'s chain (also the sidecar's entry, which picks the chain per request).
pub(crate) async fn handle(req: Request<Incoming>, ctx: Arc<ConnCtx>) -> Response<ResponseBody> {
    let (mut parts, body) = req.into_parts();
    let mut rec = Record::new(
        ctx.shared.telemetry.clone(),
        ctx.log.clone(),
        Kind::Http,
        ctx.info.local,
        ctx.info.peer,
        // Inside the mesh hop, the SNI the sidecar sent when the stream inside is plain.
        ctx.info.sni.clone().or_else(|| ctx.info.mesh_sni.clone()),
    );
    rec.set_peer(
        ctx.info.peer_identity.as_ref(),
        ctx.info.peer_identity.is_some(),
    );
    let (authority, authority_ok) = match request_authority(&ctx, &mut parts) {
        Ok(a) => (a, request_shape(&ctx, &parts)),
        Err((raw, e)) => (raw, Err(e)),
    };
    // A log, or a Telemetry tag value, may read the request's method, path and headers.
    let logged = ctx.log.as_ref().is_some_and(|s| s.capture);

    // A client could write any identity here; sluice never reads it, and nothing behind the
    // proxy should either (Envoy's `forward_client_cert_details: SANITIZE`).
    parts.headers.remove(XFCC);
    // What the gateway adds to every request (Envoy with use_remote_address).
    if !parts.headers.contains_key(X_REQUEST_ID) {
        parts.headers.insert(X_REQUEST_ID, headers::request_id());
    }
    let xff = match parts
        .headers
        .get(X_FORWARDED_FOR)
        .map(HeaderValue::as_bytes)
    {
        Some(prev) if !prev.trim_ascii().is_empty() => {
            let mut v = Vec::with_capacity(prev.len() + 2 + ctx.peer_ip.len());
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
            v.extend_from_slice(ctx.peer_ip.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
        _ => Some(ctx.peer_ip.clone()),
    };
    if let Some(v) = xff {
        parts.headers.insert(X_FORWARDED_FOR, v);
    }
    parts
        .headers
        .insert(X_FORWARDED_PROTO, HeaderValue::from_static(ctx.scheme()));
    // Before anything reads the path, as Envoy's connection manager does: authorization,
    // routing, the access log (Envoy's `%REQ(:PATH)%` is the normalised path) and the upstream
    // then see one path. A refused path is answered 400 in place of the authorization step.
    let normalized = path::apply(ctx.runtime.snapshot.path_normalization, &mut parts);
    // Method, path and headers only for an access log that may print them.
    rec.http = Some(Box::new(HttpFields {
        method: if logged {
            parts.method.as_str().to_owned()
        } else {
            String::new()
        },
        path: match parts.uri.path_and_query() {
            Some(p) if logged => p.as_str().to_owned(),
            _ if logged => "/".to_owned(),
            _ => String::new(),
        },
        protocol: protocol(parts.version),
        authority: authority.clone(),
        scheme: ctx.scheme(),
        request_headers: if logged {
            parts.headers.clone()
        } else {
            Default::default()
        },
        response_headers: Default::default(),
    }));

    let body = CountingBody {
        inner: body,
        counts: rec.counts.clone(),
    }
    .map_err(|e| -> BoxError { Box::new(e) })
    .boxed();

    // Authorization before routing, as Envoy's RBAC filter runs before its router: a denied
    // request reaches no upstream. The attributes are gathered only when policies apply.
    let authorized = if let Err(e) = authority_ok.and(normalized) {
        Err(e)
    } else if authz::enforced(&ctx.runtime.snapshot) {
        authz::authorize(
            &ctx.runtime.snapshot,
            &ctx.shared.telemetry,
            authz::Protocol::Http,
            &authz::http_request(&ctx.info, &parts, &authority),
        )
        .map(|by| rec.allowed_by = by)
    } else {
        Ok(())
    };
    // The route, once: the rate limit and the router both use it.
    let found = find_route(&ctx, &parts, &authority);
    if ctx.log.as_ref().is_some_and(|s| s.routed_host) {
        rec.routed_host = found
            .as_ref()
            .and_then(|f| routed_host(f.vhost, &authority));
    }
    // Then the rate limits, which Istio's EnvoyFilters insert before the router, in chain
    // order: local filters, the global one, local filters inserted after it.
    let side = crate::ratelimit::Side::BeforeGlobal;
    let authorized =
        authorized.and_then(|()| local_rate_limit(&ctx, &mut parts, found.as_ref(), side));
    let mut rate_limit_headers = Vec::new();
    let authorized = match authorized {
        Ok(()) => global_rate_limit(&ctx, &parts, &authority, found.as_ref())
            .await
            .map(|headers| rate_limit_headers = headers)
            .and_then(|()| {
                let side = crate::ratelimit::Side::AfterGlobal;
                local_rate_limit(&ctx, &mut parts, found.as_ref(), side)
            }),
        denied => denied,
    };
    let outcome = match (authorized, found) {
        (Ok(()), Some(found)) => {
            // Boxed: the future borrows `parts` across awaits, and hyper needs it provably
            // `Send`.
            let dispatched: Pin<Box<dyn Future<Output = _> + Send + '_>> = Box::pin(dispatch(
                &ctx, &mut parts, &authority, body, found, &mut rec,
            ));
            dispatched.await
        }
        (Ok(()), None) => Err(Error::NoRoute),
        (Err(denied), _) => Err(denied),
    };
    let (resp, guards) = match outcome {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, authority, "request failed");
            rec.fail(&e);
            (local_reply(&e), None)
        }
    };
    let mut resp = resp;
    if !rate_limit_headers.is_empty() {
        crate::ratelimit::apply_headers(&rate_limit_headers, resp.headers_mut());
    }
    rec.response_code = resp.status().as_u16();
    if let Some(h) = rec.http.as_mut()
        && logged
    {
        h.response_headers = resp.headers().clone();
    }
    let counts = rec.counts.clone();
    resp.map(|inner| ResponseBody {
        inner,
        rec: Some(rec),
        guards,
        counts,
    })
}

/// What the router chose for a request: its virtual host, and the route with the
/// alternative of its match that held (`None`: a virtual host but no route, still 404).
pub(crate) struct Found<'a> {
    vhost: &'a VirtualHost,
    route: Option<(&'a Route, Option<&'a RequestMatch>)>,
}

/// The virtual host (most specific domain) and the first route that matches.
/// The request's host when its virtual host names it exactly (not by a wildcard or `*`): the
/// only host a metric label may carry, so that clients cannot mint label values.
fn routed_host(vhost: &VirtualHost, authority: &str) -> Option<Arc<str>> {
    let host = route::strip_port(authority);
    vhost.domains.iter().find_map(|d| match d {
        sluice_snapshot::HostMatch::Exact(e) if e.eq_ignore_ascii_case(host) => {
            Some(Arc::from(e.as_str()))
        }
        _ => None,
    })
}

fn find_route<'a>(ctx: &'a ConnCtx, parts: &Parts, authority: &str) -> Option<Found<'a>> {
    let vhost = ctx.virtual_host(route::strip_port(authority))?;
    let view = route::RequestView {
        path: parts.uri.path(),
        query: parts.uri.query(),
        method: parts.method.as_str(),
        authority,
        scheme: ctx.scheme(),
        headers: &parts.headers,
        port: ctx.info.listener_port,
    };
    Some(Found {
        vhost,
        route: route::find(&vhost.routes, &view),
    })
}

/// Envoy's local rate limit filters of the chain's route configuration, for the virtual host
/// and route this request selects (a request no route takes is limited too: the filter runs
/// before the router answers 404).
fn local_rate_limit(
    ctx: &ConnCtx,
    parts: &mut Parts,
    found: Option<&Found<'_>>,
    side: crate::ratelimit::Side,
) -> Result<(), Error> {
    if ctx.runtime.snapshot.rate_limits.is_empty() {
        return Ok(());
    }
    let Some(route_config) = ctx.route_config() else {
        return Ok(());
    };
    crate::ratelimit::check(
        &ctx.runtime.snapshot,
        &ctx.shared.rate_limits,
        &ctx.shared.telemetry.metrics,
        route_config,
        found.map(|f| f.vhost.name.as_str()),
        found.and_then(|f| f.route).map(|(r, _)| r.name.as_str()),
        &mut parts.headers,
        side,
    )
    .map_err(|limited| Error::RateLimited(Box::new(limited)))
}

/// Envoy's global rate limit filter of the chain's route configuration, for a request whose
/// route forwards (the filter does nothing without a route entry). `Ok` carries the
/// `x-ratelimit-*` headers for the response.
async fn global_rate_limit(
    ctx: &ConnCtx,
    parts: &Parts,
    authority: &str,
    found: Option<&Found<'_>>,
) -> Result<Vec<sluice_snapshot::ratelimit::HeaderToAdd>, Error> {
    use crate::ratelimit::global::{self, Decision, RequestFacts};
    let snapshot = &ctx.runtime.snapshot;
    if snapshot.rate_limits.is_empty() {
        return Ok(Vec::new());
    }
    let Some(limits) = ctx
        .route_config()
        .and_then(|rc| snapshot.rate_limits.get(rc))
    else {
        return Ok(Vec::new());
    };
    let (Some(filter), Some(found)) = (&limits.global, found) else {
        return Ok(Vec::new());
    };
    let Some((route, _)) = found.route else {
        return Ok(Vec::new());
    };
    let RouteAction::Forward(fwd) = &route.action else {
        return Ok(Vec::new());
    };
    let policies = limits
        .actions
        .lookup(&found.vhost.name, Some(route.name.as_str()));
    if policies.is_empty() {
        return Ok(Vec::new());
    }
    let facts = RequestFacts {
        headers: &parts.headers,
        method: parts.method.as_str(),
        path: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        authority,
        scheme: ctx.scheme(),
        remote: ctx.info.peer.ip(),
        principal: ctx.info.peer_identity.as_ref().map(|i| i.to_string()),
        cluster: fwd.clusters.first().map_or("", |c| c.cluster.as_str()),
    };
    match global::check(
        snapshot,
        ctx.shared.global_rate_limit.as_deref(),
        &ctx.shared.telemetry.metrics,
        filter,
        policies,
        &facts,
    )
    .await
    {
        Decision::Allow(headers) => Ok(headers),
        Decision::OverLimit { status, headers } => {
            Err(Error::RateLimited(Box::new(crate::ratelimit::Limited {
                status,
                headers,
                details: global::RATE_LIMITED,
            })))
        }
        Decision::Error { status } => Err(Error::RateLimitService(status)),
    }
}

/// Things that must live as long as the response body (in-flight counts, limits).
pub type Guards = Box<dyn std::any::Any + Send + Sync>;

async fn dispatch(
    ctx: &Arc<ConnCtx>,
    parts: &mut Parts,
    authority: &str,
    body: Body,
    found: Found<'_>,
    rec: &mut Record,
) -> Result<(Response<Body>, Option<Guards>), Error> {
    let (r, matched) = found.route.ok_or(Error::NoRoute)?;
    rec.route_name = Some(r.name.clone());
    match &r.action {
        RouteAction::DirectResponse { status, body } => {
            rec.details = Some("direct_response".into());
            if let Some(cluster) = &r.direct_cluster {
                let cluster: Arc<str> = Arc::from(cluster.as_str());
                rec.cluster = Some(cluster.clone());
                rec.service = Some(cluster);
            }
            let mut resp = text_response(*status, body.clone().unwrap_or_default());
            headers::apply(&r.response_headers, resp.headers_mut());
            Ok((resp, None))
        }
        RouteAction::Redirect(redirect) => {
            rec.details = Some("direct_response".into());
            let location = redirect_location(redirect, ctx.scheme(), authority, parts);
            let mut resp = text_response(redirect.status, String::new());
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            headers::apply(&r.response_headers, resp.headers_mut());
            Ok((resp, None))
        }
        RouteAction::Forward(fwd) => {
            forward::forward(ctx, parts, authority, body, r, fwd, matched, rec)
                .await
                .map(|(resp, guards)| (resp, Some(guards)))
        }
    }
}

/// Envoy's redirect: each part replaced when the redirect sets it, kept otherwise.
pub fn redirect_location(r: &Redirect, scheme: &str, authority: &str, parts: &Parts) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(scheme);
    let host_with_port = r.authority.as_deref().unwrap_or(authority);
    let host = route::strip_port(host_with_port);
    let port = if let Some(p) = r.port {
        Some(p.to_string())
    } else if r.port_from_scheme {
        None
    } else if r.authority.is_some() {
        // A new authority carries its own port, if any.
        host_with_port
            .strip_prefix(host)
            .and_then(|p| p.strip_prefix(':'))
            .map(str::to_owned)
    } else {
        authority
            .strip_prefix(host)
            .and_then(|p| p.strip_prefix(':'))
            .map(str::to_owned)
    };
    let default_port = match scheme {
        "https" => "443",
        _ => "80",
    };
    let port = port.filter(|p| p != default_port);
    let path = match &r.uri {
        Some(uri) if uri.contains('?') => uri.clone(),
        Some(uri) => match parts.uri.query() {
            Some(q) => format!("{uri}?{q}"),
            None => uri.clone(),
        },
        None => parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into()),
    };
    match port {
        Some(p) => format!("{scheme}://{host}:{p}{path}"),
        None => format!("{scheme}://{host}{path}"),
    }
}

pub fn text_response(status: u16, body: String) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = Response::new(
        Full::new(Bytes::from(body.clone()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    if !body.is_empty() {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    resp
}

/// The proxy's own answer for a failed request.
fn local_reply(e: &Error) -> Response<Body> {
    let mut resp = text_response(e.http_status(), e.body());
    if let Error::RateLimited(limited) = e {
        crate::ratelimit::apply_headers(&limited.headers, resp.headers_mut());
    }
    resp
}

/// The downstream request body, counting bytes received.
struct CountingBody {
    inner: Incoming,
    counts: Arc<ByteCounts>,
}

impl HttpBody for CountingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r
            && let Some(d) = frame.data_ref()
        {
            self.counts
                .received
                .fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body sent downstream. It owns the request's record: when the body ends (or
/// is dropped, if the client goes away) the record is dropped and logged.
pub struct ResponseBody {
    inner: Body,
    rec: Option<Record>,
    guards: Option<Guards>,
    counts: Arc<ByteCounts>,
}

impl ResponseBody {
    fn finish(&mut self) {
        self.guards.take();
        self.rec.take();
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.counts
                        .sent
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(rec) = this.rec.as_mut() {
                    rec.add_flag("UPE");
                    rec.termination = Some("upstream_body_error".into());
                }
                this.finish();
            }
            Poll::Ready(None) => this.finish(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str) -> Parts {
        let (p, _) = Request::builder()
            .uri(uri)
            .body(())
            .expect("request")
            .into_parts();
        p
    }

    #[test]
    fn redirects_replace_what_they_set() {
        let r = |uri: Option<&str>, authority: Option<&str>, scheme: Option<&str>, port| Redirect {
            uri: uri.map(str::to_owned),
            authority: authority.map(str::to_owned),
            scheme: scheme.map(str::to_owned),
            port,
            port_from_scheme: false,
            status: 301,
        };
        let p = parts("/old?x=1");
        assert_eq!(
            redirect_location(&r(Some("/new"), None, None, None), "http", "a.com:8080", &p),
            "http://a.com:8080/new?x=1"
        );
        assert_eq!(
            redirect_location(
                &r(None, Some("b.com"), Some("https"), None),
                "http",
                "a.com",
                &p
            ),
            "https://b.com/old?x=1"
        );
        assert_eq!(
            redirect_location(&r(None, None, None, Some(8443)), "https", "a.com", &p),
            "https://a.com:8443/old?x=1"
        );
        let mut from_scheme = r(None, None, Some("https"), None);
        from_scheme.port_from_scheme = true;
        assert_eq!(
            redirect_location(&from_scheme, "http", "a.com:8080", &p),
            "https://a.com/old?x=1"
        );
    }
}
