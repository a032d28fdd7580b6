//! CORS as the reference's Starlette middleware answers it (spec `api.md` §1.3): configured origins
//! echoed back (never `*`), credentials allowed, every method, every requested header, preflights
//! cached for 600 s.
//!
//! The UI runs on another origin than the API and sends `Content-Type` and `X-Timezone-Offset` on
//! every request, so every request of the UI is preceded by a preflight `OPTIONS`; without this
//! layer the UI shows nothing at all.

use std::time::Duration;

use axum::http::{HeaderValue, Method};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

/// The methods Starlette lists for `allow_methods=["*"]`.
const METHODS: [Method; 7] =
    [Method::DELETE, Method::GET, Method::HEAD, Method::OPTIONS, Method::PATCH, Method::POST, Method::PUT];

/// How long a browser may cache a preflight answer (Starlette's default).
const MAX_AGE: Duration = Duration::from_secs(600);

/// Builds the CORS layer for the configured origins (`server.cors_origins`, env `CORS_ORIGINS`).
///
/// An origin `*` allows every origin, echoed back (a literal `*` is not valid with credentials).
/// An entry that is not a valid header value is skipped with a warning. A request from an origin
/// not in the list gets no `access-control-allow-origin` header, so the browser refuses the answer.
pub fn layer(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o.trim() == "*") {
        AllowOrigin::mirror_request()
    } else {
        let values: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| {
                let o = o.trim().trim_end_matches('/');
                HeaderValue::from_str(o)
                    .map_err(|_| tracing::warn!(origin = %o, "CORS origin is not a valid header value; skipped"))
                    .ok()
            })
            .collect();
        AllowOrigin::list(values)
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_credentials(true)
        .allow_methods(METHODS.to_vec())
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(MAX_AGE)
}
