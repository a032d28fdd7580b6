//! JSON request bodies: a body sent as anything but JSON is a 415, and what does not parse, or has
//! the wrong shape, is a 422 (FastAPI's answer), never a 500.
//!
//! The media type is checked once for every REST route by [`require_json`], so no handler reads a
//! body a browser could send cross-site without a CORS preflight (`text/plain`, a form, or a typeless
//! blob): a page elsewhere cannot delete or archive runs (FastAPI's CVE-2021-32677). Deliberate
//! departures from FastAPI, which parses a body without `Content-Type` as JSON and answers a non-JSON
//! one with a 422: here both are a 415, since `fetch` and `sendBeacon` send a typeless body without a
//! preflight too. Every real client sends `application/json` (spec `api.md` §1.4, `clients.md` §1).

use axum::body::HttpBody as _;
use axum::extract::Request;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use serde::de::DeserializeOwned;

use super::ApiError;

/// Longest `Content-Type` echoed back in a 415.
const MAX_ECHO: usize = 100;

/// Whether `value` names a JSON media type: `application/json` or `application/*+json`, any
/// parameters (`; charset=utf-8`), any case (FastAPI's rule).
fn is_json(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", subtype)) => subtype == "json" || subtype.ends_with("+json"),
        _ => false,
    }
}

/// Why a request's body may not be read as JSON, if it may not: only requests that can carry a
/// body a handler reads and that do carry one are checked (the UI also sends the header on GETs).
fn media_type_error(req: &Request) -> Option<ApiError> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    if req.body().size_hint().exact() == Some(0) {
        return None;
    }
    let value = match req.headers().get(header::CONTENT_TYPE) {
        None => return Some(ApiError::UnsupportedMediaType("none".to_owned())),
        Some(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
    };
    if is_json(&value) {
        return None;
    }
    let mut shown = value;
    if shown.len() > MAX_ECHO {
        let cut = (0..=MAX_ECHO).rev().find(|i| shown.is_char_boundary(*i)).unwrap_or(0);
        shown.truncate(cut);
    }
    Some(ApiError::UnsupportedMediaType(shown))
}

/// Answers 415 to a request whose body is not sent as JSON, before its handler runs.
pub async fn require_json(req: Request, next: Next) -> Response {
    match media_type_error(&req) {
        Some(err) => err.into_response(),
        None => next.run(req).await,
    }
}

/// Pydantic's message for a missing body.
const REQUIRED: &str = "Field required";

fn parse_value(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::Validation(REQUIRED.into()));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::Validation(format!("Invalid request body: {e}")))
}

/// Parses a body that must be a JSON object into `T` (unknown keys are ignored by `T`).
pub fn object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value = parse_value(bytes)?;
    if !value.is_object() {
        return Err(ApiError::Validation("Input should be a valid dictionary or object".into()));
    }
    serde_json::from_value(value).map_err(|e| ApiError::Validation(format!("Invalid request body: {e}")))
}

/// Parses a body that must be a JSON array into a list of `T`.
pub fn list<T: DeserializeOwned>(bytes: &[u8]) -> Result<Vec<T>, ApiError> {
    let value = parse_value(bytes)?;
    if !value.is_array() {
        return Err(ApiError::Validation("Input should be a valid list".into()));
    }
    serde_json::from_value(value).map_err(|e| ApiError::Validation(format!("Invalid request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Named {
        #[allow(dead_code)]
        name: String,
    }

    #[test]
    fn wrong_shapes_are_422_with_a_message() {
        for bad in [&b""[..], b"  ", b"{", b"[]", b"{\"name\": 3}", b"{}"] {
            let err = object::<Named>(bad).unwrap_err();
            assert_eq!(err.status().as_u16(), 422, "{}", String::from_utf8_lossy(bad));
            assert!(!err.message().is_empty());
        }
        assert!(object::<Named>(b"{\"name\":\"x\",\"extra\":1}").is_ok());
        assert_eq!(list::<String>(b"{}").unwrap_err().message(), "Input should be a valid list");
        assert_eq!(list::<String>(b"[1]").unwrap_err().status().as_u16(), 422);
        assert_eq!(list::<String>(b"[\"a\"]").ok(), Some(vec!["a".to_owned()]));
        assert_eq!(list::<String>(b"").unwrap_err().message(), "Field required");
    }

    #[test]
    fn json_media_types_are_recognised_with_parameters_in_any_case() {
        for ok in
            ["application/json", "Application/JSON; charset=utf-8", " application/json ;x=y", "application/geo+json"]
        {
            assert!(is_json(ok), "{ok}");
        }
        for bad in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "json", "", "text/json"] {
            assert!(!is_json(bad), "{bad}");
        }
    }

    fn request(method: &str, content_type: Option<&str>, body: &'static str) -> Request {
        let mut req = Request::builder().method(method).uri("/x/");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.body(axum::body::Body::from(body)).unwrap()
    }

    #[test]
    fn only_bodies_not_sent_as_json_are_refused() {
        let refused = |m, ct, b| media_type_error(&request(m, ct, b)).map(|e| e.status().as_u16());
        assert_eq!(refused("POST", Some("text/plain"), "[\"a\"]"), Some(415));
        assert_eq!(refused("PUT", Some("application/x-www-form-urlencoded"), "a=b"), Some(415));
        assert_eq!(refused("POST", None, "[\"a\"]"), Some(415));
        assert_eq!(refused("POST", Some("application/json"), "[\"a\"]"), None);
        // No body to read, or a method whose body no handler reads.
        assert_eq!(refused("POST", Some("text/plain"), ""), None);
        assert_eq!(refused("POST", None, ""), None);
        assert_eq!(refused("GET", Some("text/plain"), "x"), None);
        let long = "text/".to_owned() + &"é".repeat(200);
        let req = Request::builder().method("POST").header("content-type", long).body(axum::body::Body::from("x"));
        let message = media_type_error(&req.unwrap()).unwrap().message();
        assert!(message.len() < 200, "{message}");
    }
}
