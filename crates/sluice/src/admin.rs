//! The admin API (default 127.0.0.1:15000): `/ready`, `/healthz`, `/stats/prometheus`,
//! `/config_dump`, `/clusters` (endpoint health), `/listeners` (addresses bound; both also
//! `?format=json`), `/stats` (Envoy's plain form), `/logging`. Served on its own listener so it
//! keeps answering while traffic is heavy.
//!
//! Read-only unless the operator says `--admin-writable`: then `POST /logging` changes the
//! log level, from loopback peers only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use sluice_proxy::accept::{self, ConnLimit};
use sluice_snapshot::Snapshot;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Connections the admin API holds open by default (probes and scrapers need a handful).
pub const MAX_CONNECTIONS: usize = 128;
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What the admin API reads; every field is shared with the running proxy.
#[derive(Clone)]
pub struct AdminState {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub ready: watch::Receiver<bool>,
    pub registry: Arc<Mutex<Registry>>,
    /// The running data plane, for `/clusters`.
    pub inspector: Option<sluice_proxy::inspect::Inspector>,
    /// `--admin-writable`: the endpoints that change state (`POST /logging`) answer.
    pub writable: bool,
    /// `--admin-max-connections`: more are closed as they are accepted, and counted.
    pub max_connections: usize,
    /// The egress map (`/ui`, `/api/map`, `/api/decisions`, `/api/config`); `None` serves
    /// nothing there.
    pub map: Option<crate::egress_map::MapState>,
    /// The proxy's telemetry, where connections refused at the admin API's connection limit
    /// are counted (`sluice_refused_total{check="limit",reason="admin_max_connections"}`).
    pub telemetry: Option<Arc<sluice_proxy::telemetry::Telemetry>>,
    /// Where the credentials `/certs` names come from.
    pub certs: crate::certs::Sources,
}

/// Binds `addr` and serves the admin API until the returned task is aborted. A request head
/// must arrive within `head_timeout` of the connection waiting for one, so a client that
/// sends nothing is closed then too.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    head_timeout: Duration,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let limit = ConnLimit::new(state.max_connections);
    Ok(tokio::spawn(async move {
        loop {
            let (stream, peer) = accept::next(&listener, "admin").await;
            let Some(permit) = limit.admit() else {
                tracing::debug!(%peer, "admin connection limit reached: closed");
                if let Some(t) = &state.telemetry {
                    t.metrics.refused("limit", "admin_max_connections");
                }
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, &req, peer)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(head_timeout)
                    .max_buf_size(MAX_HEAD_BYTES)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

fn handle(state: &AdminState, req: &Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    tracing::debug!(method = %req.method(), path = req.uri().path(), %peer, "admin request");
    if req.uri().path() == "/logging" {
        return logging(state, req, peer);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    if let Some(map) = &state.map
        && let Some(resp) = crate::egress_map::handle(map, req.uri().path(), req.uri().query())
    {
        return resp;
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/ready" => {
            if *state.ready.borrow() {
                text(StatusCode::OK, "LIVE\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n".into())
            }
        }
        "/stats/prometheus" | "/metrics" => match encode(state) {
            Some(body) => with_type(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            ),
            None => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding failed\n".into(),
            ),
        },
        "/stats" => stats(state, req.uri().query()),
        "/config_dump" => {
            let snapshot = state.snapshots.borrow().clone();
            match serde_json::to_string_pretty(&*snapshot) {
                Ok(json) => with_type(StatusCode::OK, "application/json", json + "\n"),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        "/certs" => {
            let snapshot = state.snapshots.borrow().clone();
            // A few small local files (each read bounded), on an admin request.
            let rows = crate::certs::list(&snapshot, &state.certs, std::time::SystemTime::now());
            match serde_json::to_string_pretty(&rows) {
                Ok(json) => with_type(StatusCode::OK, "application/json", json + "\n"),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        "/clusters" => {
            let clusters = state
                .inspector
                .as_ref()
                .map(|i| i.clusters())
                .unwrap_or_default();
            if req.uri().query() == Some("format=json") {
                match serde_json::to_string_pretty(&clusters) {
                    Ok(json) => with_type(StatusCode::OK, "application/json", json + "\n"),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                }
            } else {
                text(
                    StatusCode::OK,
                    sluice_proxy::inspect::render_text(&clusters),
                )
            }
        }
        "/listeners" => {
            let listeners = state
                .inspector
                .as_ref()
                .map(|i| i.listeners())
                .unwrap_or_default();
            if req.uri().query() == Some("format=json") {
                match serde_json::to_string_pretty(&listeners) {
                    Ok(json) => with_type(StatusCode::OK, "application/json", json + "\n"),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                }
            } else {
                text(
                    StatusCode::OK,
                    sluice_proxy::inspect::render_listeners(&listeners),
                )
            }
        }
        "/" => text(
            StatusCode::OK,
            "sluice admin: /ready /healthz /stats /stats/prometheus /config_dump /clusters \
             /listeners /certs /logging\n"
                .into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// The registry's OpenMetrics text, what `/stats/prometheus` serves and `/stats` reshapes.
fn encode(state: &AdminState) -> Option<String> {
    let mut body = String::new();
    let registry = state.registry.lock().ok()?;
    prometheus_client::encoding::text::encode(&mut body, &registry).ok()?;
    Some(body)
}

/// Envoy's `/stats`: `name: value` lines, `?filter=REGEX` keeps the names it finds something
/// in; `?format=prometheus` is `/stats/prometheus`.
fn stats(state: &AdminState, query: Option<&str>) -> Response<Full<Bytes>> {
    let params = query_pairs(query.unwrap_or(""));
    let filter = match params.iter().find(|(k, _)| k == "filter") {
        Some((_, f)) => match crate::stats::filter(f) {
            Ok(f) => Some(f),
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        },
        None => None,
    };
    let Some(encoded) = encode(state) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding failed\n".into(),
        );
    };
    if params
        .iter()
        .any(|(k, v)| k == "format" && v == "prometheus")
    {
        return with_type(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            encoded,
        );
    }
    text(
        StatusCode::OK,
        crate::stats::render(&encoded, filter.as_ref()),
    )
}

/// `/logging`: `GET` shows the levels; `POST ?level=L` (or `?LOGGER=L`, `?paths=LOGGER:L,…`)
/// changes them, as Envoy's does — from a loopback peer, and only with `--admin-writable`.
/// A `GET` that would change something is refused, as Envoy refuses it, so a crawler or a
/// prefetch never changes the level.
fn logging(state: &AdminState, req: &Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let query = req.uri().query().unwrap_or("").trim();
    let control = crate::logging::control();
    match *req.method() {
        Method::GET | Method::HEAD if query.is_empty() => match control {
            Some(c) => text(StatusCode::OK, c.render()),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the log filter of this process is not adjustable\n".into(),
            ),
        },
        Method::GET | Method::HEAD => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "changing the log level needs POST\n".into(),
        ),
        Method::POST => {
            // Loopback whatever the bind address: `--admin 0.0.0.0:15000` exposes the
            // read-only views, never a switch that floods the logs.
            if !peer.ip().to_canonical().is_loopback() {
                return text(
                    StatusCode::FORBIDDEN,
                    "POST /logging is accepted from loopback only\n".into(),
                );
            }
            if !state.writable {
                return text(
                    StatusCode::FORBIDDEN,
                    "the admin API is read-only; start sluice with --admin-writable \
                     (SLUICE_ADMIN_WRITABLE=true) to change the log level\n"
                        .into(),
                );
            }
            let Some(control) = control else {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the log filter of this process is not adjustable\n".into(),
                );
            };
            if query.is_empty() {
                return text(StatusCode::OK, control.render());
            }
            match control.apply_query(query) {
                Ok(()) => text(StatusCode::OK, control.render()),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET, and POST to change\n".into(),
        ),
    }
}

/// A query's `key=value` pairs, decoded (`%XX`, `+` as a space).
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `%XX` escapes and `+` decoded; an invalid escape is kept as it is, invalid UTF-8 replaced.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = hex {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body)
}

fn with_type(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}
