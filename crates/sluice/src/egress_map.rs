//! The egress map: a read-only page on the admin API (`/ui`) that shows which workloads
//! reached which external hosts and what was decided, its JSON API (`/api/map`,
//! `/api/decisions`, `/api/config`), and `sluice map`, which merges several proxies' views.
//! docs/egress-map.md is the user's description.
//!
//! The page and its script are compiled into the binary (`include_str!`) and load nothing
//! else: it works offline, and a Content-Security-Policy of `'self'` says so to the browser.

pub mod config;
pub mod merge;

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use sluice_proxy::telemetry::decisions::{Decisions, DecisionsView, MapView};
use tokio::sync::watch;

pub use config::ConfigView;

const INDEX_HTML: &str = include_str!("egress_map/ui/index.html");
const MAP_JS: &str = include_str!("egress_map/ui/map.js");
const MAP_CSS: &str = include_str!("egress_map/ui/map.css");
/// Its own icon, so the browser does not ask for `/favicon.ico` (a 404 in its console).
const FAVICON: &str = "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'><path d='M2 4h5l3 4-3 4H2' fill='none' stroke='#2e7d32' stroke-width='2'/><circle cx='13' cy='8' r='2' fill='#c62828'/></svg>";

/// Nothing but this admin API: no script, style, image or connection elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Which proxy a page shows: every answer names it, so merged or side-by-side views never
/// confuse two gateways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Who {
    /// `gateway` or `sidecar`.
    pub role: String,
    /// The workload name (`source_workload` in the metrics).
    pub workload: String,
    /// This admin API's address.
    pub admin: String,
    /// The proxy's own SPIFFE ID, when it has a workload identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// `/api/map`: the proxy's edges, and who the proxy is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayMap {
    pub gateway: Who,
    #[serde(flatten)]
    pub map: MapView,
}

/// `/api/decisions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayDecisions {
    pub gateway: Who,
    #[serde(flatten)]
    pub decisions: DecisionsView,
}

/// `/api/config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayConfig {
    pub gateway: Who,
    pub config: ConfigView,
}

/// What the admin API reads for the map; shared with the running proxy.
#[derive(Clone)]
pub struct MapState {
    pub who: Arc<Who>,
    pub decisions: Arc<Decisions>,
    /// The config view of the snapshot in force, replaced with it on reload.
    pub config: watch::Receiver<Arc<ConfigView>>,
}

/// Answers the map's paths; `None` for any other path.
pub fn handle(state: &MapState, path: &str, query: Option<&str>) -> Option<Response<Full<Bytes>>> {
    let resp = match path {
        "/ui" | "/ui/" => asset("text/html; charset=utf-8", INDEX_HTML),
        "/ui/map.js" => asset("text/javascript; charset=utf-8", MAP_JS),
        "/ui/map.css" => asset("text/css; charset=utf-8", MAP_CSS),
        "/ui/favicon.svg" => asset("image/svg+xml", FAVICON),
        "/api/map" => json(&GatewayMap {
            gateway: (*state.who).clone(),
            map: state.decisions.map(),
        }),
        "/api/decisions" => json(&GatewayDecisions {
            gateway: (*state.who).clone(),
            decisions: state.decisions.decisions(since(query)),
        }),
        "/api/config" => json(&GatewayConfig {
            gateway: (*state.who).clone(),
            config: (**state.config.borrow()).clone(),
        }),
        _ => return None,
    };
    Some(resp)
}

/// `since=N` of the query; 0 (everything) when absent or not a number.
fn since(query: Option<&str>) -> u64 {
    query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("since="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn asset(content_type: &'static str, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    resp
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match serde_json::to_vec(value) {
        Ok(body) => (StatusCode::OK, body, "application/json"),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{e}\n").into_bytes(),
            "text/plain; charset=utf-8",
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> MapState {
        let (_, config) = watch::channel(Arc::new(ConfigView::default()));
        MapState {
            who: Arc::new(Who {
                role: "gateway".into(),
                workload: "istio-egressgateway".into(),
                admin: "127.0.0.1:15000".into(),
                identity: None,
            }),
            decisions: Arc::new(Decisions::default()),
            config,
        }
    }

    #[test]
    fn the_page_is_self_contained() {
        let s = state();
        for path in ["/ui", "/ui/map.js", "/ui/map.css"] {
            let resp = handle(&s, path, None).expect(path);
            assert_eq!(resp.status(), StatusCode::OK);
            assert!(resp.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        }
        for asset in [INDEX_HTML, MAP_JS, MAP_CSS] {
            assert!(
                !asset.contains("http://") && !asset.contains("https://"),
                "an external reference"
            );
        }
        assert!(handle(&s, "/stats", None).is_none());
    }

    #[test]
    fn the_api_names_the_gateway() {
        let s = state();
        let resp = handle(&s, "/api/map", None).expect("map");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(since(Some("since=42")), 42);
        assert_eq!(since(Some("x=1&since=7")), 7);
        assert_eq!(since(Some("since=-1")), 0);
        assert_eq!(since(None), 0);
    }
}
