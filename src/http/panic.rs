//! Turns a panic in a request handler into the 500 error envelope instead of a dropped connection,
//! counted in `matyan_http_panics_total` and logged as one line with the route and the message.
//!
//! The panic hook this layer installs stays quiet for panics raised while a request is polled (the
//! layer logs them, without a backtrace of tens of kilobytes); every other panic goes to the hook
//! that was installed before. A panic in a streaming response body, polled after the handler
//! returned, is not caught: hyper still drops that connection.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};

use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::FutureExt as _;

/// Longest panic message logged (it may quote request data).
const MAX_MESSAGE: usize = 256;

thread_local! {
    /// Requests being polled on this thread right now.
    static POLLING: Cell<u32> = const { Cell::new(0) };
    /// Where the last panic of a request polled on this thread was raised.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Installs, once per process, the hook that leaves request panics to [`catch`].
fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if POLLING.with(Cell::get) > 0 {
                let at = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
                LOCATION.with(|l| *l.borrow_mut() = at);
            } else {
                previous(info);
            }
        }));
    });
}

/// Counts a poll in [`POLLING`] until dropped, also when the poll unwinds.
struct Polling;

impl Polling {
    fn enter() -> Self {
        POLLING.with(|c| c.set(c.get() + 1));
        Polling
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        POLLING.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// A future marked as a request's for the panic hook while it is polled.
struct Marked<F>(Pin<Box<F>>);

impl<F: Future> Future for Marked<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _polling = Polling::enter();
        self.0.as_mut().poll(cx)
    }
}

/// The message of a panic payload, on one line and clipped.
fn message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    let mut one_line = text.replace(['\n', '\r'], " ");
    if one_line.len() > MAX_MESSAGE {
        let cut = (0..=MAX_MESSAGE).rev().find(|i| one_line.is_char_boundary(*i)).unwrap_or(0);
        one_line.truncate(cut);
        one_line.push('…');
    }
    one_line
}

/// Runs the rest of the request, answering a panic with the 500 envelope (spec `api.md` §1.7:
/// an unhandled exception is `Internal server error`).
pub async fn catch(req: Request, next: Next) -> Response {
    install_hook();
    let method = super::method_label(req.method());
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    match AssertUnwindSafe(Marked(Box::pin(next.run(req)))).catch_unwind().await {
        Ok(response) => response,
        Err(payload) => {
            let at = LOCATION.with(|l| l.borrow_mut().take()).unwrap_or_default();
            tracing::error!(method, route = %route, panic = %message(payload.as_ref()), at = %at, "request handler panicked");
            crate::metrics::http_panic(method, route);
            super::api::envelope(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::middleware;
    use axum::routing::get;
    use tower::ServiceExt as _;

    use super::*;

    async fn boom() -> &'static str {
        panic!("boom at {}", "the handler")
    }

    async fn status_and_body(app: Router, uri: &str) -> (u16, serde_json::Value) {
        let resp = app.oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    #[test]
    fn a_panicking_handler_answers_the_500_envelope_and_is_counted() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let app = Router::new()
            .route("/boom/{id}/", get(boom))
            .route("/fine/", get(|| async { "fine" }))
            .layer(middleware::from_fn(catch));
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (panicked, fine) = metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                (status_and_body(app.clone(), "/boom/abc/").await, status_and_body(app, "/fine/").await)
            })
        });
        let envelope = serde_json::json!({
            "error": {"code": "internal_error", "message": "Internal server error"},
            "detail": "Internal server error",
        });
        assert_eq!(panicked, (500, envelope));
        assert_eq!(fine.0, 200);
        let rendered = handle.render();
        assert!(
            rendered.contains(r#"matyan_http_panics_total{method="GET",path_template="/boom/{id}/"} 1"#),
            "{rendered}"
        );
    }

    #[test]
    fn panic_messages_are_one_clipped_line() {
        assert_eq!(message(&"a\nb"), "a b");
        assert_eq!(message(&String::from("x")), "x");
        assert_eq!(message(&42), "a panic without a message");
        let long = message(&"é".repeat(500));
        assert!(long.len() <= MAX_MESSAGE + '…'.len_utf8() && long.ends_with('…'), "{long}");
    }
}
