//! The admin API (default 127.0.0.1:15000): `/ready`, `/healthz`, `/stats/prometheus`,
//! `/config_dump`, `/clusters` (endpoint health), `/listeners` (addresses bound; both also
//! `?format=json`). Served on its own listener so it keeps answering while traffic is heavy.

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

/// Connections the admin API holds open (probes and scrapers need a handful).
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
    let limit = ConnLimit::new(MAX_CONNECTIONS);
    Ok(tokio::spawn(async move {
        loop {
            let (stream, peer) = accept::next(&listener, "admin").await;
            let Some(permit) = limit.admit() else {
                tracing::debug!(%peer, "admin connection limit reached: closed");
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, &req)) }
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

fn handle(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
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
        "/stats/prometheus" | "/metrics" => {
            let mut body = String::new();
            let encoded = match state.registry.lock() {
                Ok(registry) => prometheus_client::encoding::text::encode(&mut body, &registry),
                Err(_) => Err(std::fmt::Error),
            };
            match encoded {
                Ok(()) => with_type(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding failed\n".into(),
                ),
            }
        }
        "/config_dump" => {
            let snapshot = state.snapshots.borrow().clone();
            match serde_json::to_string_pretty(&*snapshot) {
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
            "sluice admin: /ready /healthz /stats/prometheus /config_dump /clusters /listeners\n"
                .into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
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
