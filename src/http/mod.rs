//! The HTTP API (axum): builds the router, normalises trailing slashes and records request metrics.
//!
//! - `health.rs`: `/health/live/`, `/health/ready/`;
//! - `metrics.rs`: `/metrics/` (Prometheus exposition);
//! - `admin.rs`: `/admin/…` operator routes, loopback clients only.
//! - `api/`: the REST API under `/api/v1/rest` (one file per area);
//! - `stream.rs`: the binary streaming codec shared by every streaming route (pure, no IO);
//! - `cors.rs`: CORS for the configured origins (for a UI served from another origin);
//! - `openapi.rs`: the OpenAPI document of the REST routes (`/api/v1/rest/openapi.json`);
//! - `panic.rs`: a panicking handler answers the 500 envelope, counted and logged on one line;
//! - `ui.rs`: the web UI build (`--ui-dir`) on the paths no route answers, outside the areas above.
//!
//! Routes are declared with a trailing slash, as the reference declares them; a path without one is
//! given one before routing, so both forms answer alike and nothing is redirected (a redirect breaks
//! CORS preflights and the UI's `fetch`).

mod admin;
pub mod api;
mod cors;
mod health;
mod metrics;
pub mod openapi;
mod panic;
pub mod stream;
pub mod ui;

use std::convert::Infallible;
use std::future::Future;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::app::AppState;

/// The router with every route, the request-metrics middleware and the state applied. Paths must
/// already end with `/` (see [`service`]).
pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/health/live/", get(health::live))
        .route("/health/ready/", get(health::ready))
        .route("/admin/kv/dump/", get(admin::kv_dump))
        .route("/admin/chaos/kill/", axum::routing::post(admin::chaos_kill))
        .route("/admin/maintenance/", axum::routing::post(admin::maintenance))
        .route("/api/v1/rest/openapi.json/", get(openapi::document))
        .merge(api::routes());
    if let Some(gateway) = &state.gateway {
        router = router.merge(gateway.routes());
    }
    if state.metrics.is_some() {
        router = router.route("/metrics/", get(metrics::render));
    }
    if let Some(ui) = state.ui.clone() {
        router = ui::attach(router, ui);
    }
    let cors = cors::layer(&state.config.server.cors_origins);
    router.layer(middleware::from_fn(panic::catch)).layer(cors).layer(middleware::from_fn(track)).with_state(state)
}

/// The router behind trailing-slash normalisation: what the listener serves.
pub fn service(
    state: AppState,
) -> impl tower::Service<
    Request,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    router(state).map_request(add_trailing_slash as fn(Request) -> Request)
}

/// Serves `state` on `listener` until `shutdown` completes, then waits for open requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let svc = service(state);
    axum::serve(listener, axum::ServiceExt::<Request>::into_make_service_with_connect_info::<std::net::SocketAddr>(svc))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Health probes and metrics only (`/health/live/`, `/health/ready/`, `/metrics/`): the listener of
/// roles without the REST API, such as `matyan ingest`.
pub fn probes_router(state: AppState) -> Router {
    let mut router =
        Router::new().route("/health/live/", get(health::live)).route("/health/ready/", get(health::ready));
    if state.metrics.is_some() {
        router = router.route("/metrics/", get(metrics::render));
    }
    router.layer(middleware::from_fn(track)).with_state(state)
}

/// Serves [`probes_router`] (behind trailing-slash normalisation) on `listener` until `shutdown`
/// completes.
pub async fn serve_probes(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let svc = probes_router(state).map_request(add_trailing_slash as fn(Request) -> Request);
    axum::serve(listener, axum::ServiceExt::<Request>::into_make_service(svc)).with_graceful_shutdown(shutdown).await
}

/// Serves a role's own `router` (the gateway role's) behind trailing-slash normalisation and request
/// metrics on `listener` until `shutdown` completes.
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let svc = router.layer(middleware::from_fn(track)).map_request(add_trailing_slash as fn(Request) -> Request);
    axum::serve(listener, axum::ServiceExt::<Request>::into_make_service(svc)).with_graceful_shutdown(shutdown).await
}

/// Appends `/` to a path that lacks one, keeping the query string.
fn add_trailing_slash(mut req: Request) -> Request {
    let uri = req.uri();
    if uri.path().ends_with('/') {
        return req;
    }
    let path_and_query = match uri.query() {
        Some(q) => format!("{}/?{q}", uri.path()),
        None => format!("{}/", uri.path()),
    };
    let mut parts = uri.clone().into_parts();
    // A path that does not parse after appending `/` is left as it was and routes to a 404.
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(new) = Uri::from_parts(parts) {
            *req.uri_mut() = new;
        }
    }
    req
}

/// Records `matyan_http_requests_total` and `matyan_http_request_duration_seconds`, labelled by the
/// matched route template so raw paths (with run ids) never become labels.
async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let template =
        req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    crate::metrics::http_request(method, template, response.status().as_u16(), start.elapsed().as_secs_f64());
    response
}

/// A bounded label for the request method.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalised(uri: &str) -> String {
        let req = Request::builder().uri(uri).body(axum::body::Body::empty()).unwrap();
        add_trailing_slash(req).uri().to_string()
    }

    #[test]
    fn a_trailing_slash_is_added_before_the_query() {
        assert_eq!(normalised("/health/live"), "/health/live/");
        assert_eq!(normalised("/health/live/"), "/health/live/");
        assert_eq!(normalised("/api/v1/rest/runs/search/run?q=x&p=1"), "/api/v1/rest/runs/search/run/?q=x&p=1");
        assert_eq!(normalised("/"), "/");
    }

    async fn memory_state() -> AppState {
        let mut config = crate::config::Config::from_toml_str("test", "").unwrap();
        config.storage.backend = crate::config::Backend::Memory;
        AppState::open(config, None).await.unwrap()
    }

    async fn get(state: &AppState, path: &str) -> (u16, String) {
        let req = Request::builder().uri(path).body(axum::body::Body::empty()).unwrap();
        let resp = service(state.clone()).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn probes_answer_with_and_without_trailing_slash() {
        let state = memory_state().await;
        for path in ["/health/live/", "/health/live"] {
            assert_eq!(get(&state, path).await, (200, r#"{"status":"ok"}"#.to_owned()), "{path}");
        }
        for path in ["/health/ready/", "/health/ready"] {
            let (status, body) = get(&state, path).await;
            assert_eq!(status, 200, "{path}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["status"], "ok");
            assert_eq!(v["checks"]["fdb"], "ok");
        }
    }

    #[tokio::test]
    async fn unknown_paths_and_disabled_metrics_are_not_found() {
        let state = memory_state().await;
        assert_eq!(get(&state, "/nope").await.0, 404);
        assert_eq!(get(&state, "/metrics/").await.0, 404);
    }
}
