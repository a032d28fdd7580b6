//! The web UI on the API's own origin: serves a `matyan-ui` build the way `matyan-ui`'s server does.
//!
//! `matyan-ui` (FastAPI) renders `index-template.html` with Jinja, autoescaped, for every path, and
//! serves the build's files under `/static-files/`, a pre-compressed `x.gz` in place of `x` with
//! `Content-Encoding: gzip`. This module does the same for the paths no other route answers, under
//! `ui.base_path`, so the browser loads the UI and calls the API on one origin and needs no CORS.
//!
//! The UI's metrics explorer is `/metrics`, where the server has its Prometheus metrics: a browser
//! navigation there (`Accept: text/html`) gets the page, any other request the metrics.
//!
//! The page's API host base is `ui.api_host_base`, or, when that is empty, the origin the page was
//! requested from: the UI's JavaScript replaces an empty host base with `http://localhost:53800`,
//! so a relative one is not possible.

use std::io::Read as _;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use thiserror::Error;

use crate::config::UiConfig;

/// The template `matyan-ui` renders for every page.
pub const TEMPLATE: &str = "index-template.html";

/// Where the build's files are served, under the base path.
pub const STATIC_PREFIX: &str = "/static-files/";

/// The subdirectory of the installed `matyan_ui` package that holds the build.
pub const PACKAGE_SUBDIR: &str = "static";

/// The server's own areas. The UI answers no path under them, so an unknown API path stays a 404
/// instead of becoming the UI's page. (`/metrics/…` below `/metrics/` are the UI's explorer pages.)
const RESERVED: [&str; 3] = ["/api/", "/health/", "/admin/"];

/// The UI's metrics explorer, also the server's Prometheus route.
const METRICS_PAGE: &str = "/metrics/";

/// Bytes read per blocking read while a file streams out: a request holds this much of a file at a
/// time, whatever the file's size.
const CHUNK_BYTES: usize = 64 * 1024;

/// Why a UI build could not be loaded.
#[derive(Debug, Error)]
pub enum UiError {
    /// The directory cannot be resolved. (The io error is in the message, not a `source`, so a
    /// printed chain names it once.)
    #[error("ui dir {path}: {error}")]
    Dir { path: PathBuf, error: std::io::Error },
    /// Neither the directory nor its `static/` subdirectory holds the template.
    #[error(
        "ui dir {path}: no {TEMPLATE} in it or in its {PACKAGE_SUBDIR}/ subdirectory (give the `static` directory of the installed matyan-ui package)"
    )]
    NoTemplate { path: PathBuf },
    /// The template exists but cannot be read as text.
    #[error("cannot read {path}: {error}")]
    Template { path: PathBuf, error: std::io::Error },
}

/// A loaded UI build: its directory and its page, rendered once but for the API host base.
#[derive(Debug)]
pub struct UiBuild {
    /// The build directory, canonical: every served file must resolve inside it.
    root: PathBuf,
    base_path: String,
    /// The rendered page in parts, to be joined with the (escaped) API host base.
    page: Vec<String>,
    /// `ui.api_host_base` escaped; `None`: the origin of each request.
    host_base: Option<String>,
}

impl UiBuild {
    /// Loads the build of `config.dir` and renders its template; `None` when no directory is
    /// configured.
    pub fn load(config: &UiConfig) -> Result<Option<Self>, UiError> {
        if config.dir.as_os_str().is_empty() {
            return Ok(None);
        }
        let root = find_root(&config.dir)?;
        let path = root.join(TEMPLATE);
        let template = std::fs::read_to_string(&path).map_err(|error| UiError::Template { path, error })?;
        let host_base = (!config.api_host_base.is_empty()).then(|| escape(&config.api_host_base));
        tracing::info!(dir = %root.display(), base_path = %config.base_path, "serving the ui");
        Ok(Some(Self { page: render(&template, config), root, base_path: config.base_path.clone(), host_base }))
    }

    /// The build directory served.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The build directory under `dir`: `dir` itself when it holds the template, else its `static/`
/// (the installed package's layout), canonical.
fn find_root(dir: &Path) -> Result<PathBuf, UiError> {
    let dir_error = |error| UiError::Dir { path: dir.to_path_buf(), error };
    let canonical = dir.canonicalize().map_err(dir_error)?;
    for candidate in [canonical.clone(), canonical.join(PACKAGE_SUBDIR)] {
        if candidate.join(TEMPLATE).is_file() {
            return candidate.canonicalize().map_err(dir_error);
        }
    }
    Err(UiError::NoTemplate { path: dir.to_path_buf() })
}

/// Renders the `{{ name }}` placeholders of `template` as `matyan-ui` does (Jinja with
/// autoescaping; an unknown name renders as nothing), returning the parts between the
/// `{{ api_host_base }}` placeholders, which are filled per request.
fn render(template: &str, config: &UiConfig) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else { break };
        let name = rest[start + 2..start + 2 + len].trim();
        let Some(current) = parts.last_mut() else { break };
        current.push_str(&rest[..start]);
        match name {
            "base_path" => current.push_str(&escape(&config.base_path)),
            "api_base_path" => current.push_str(&escape(&config.api_base_path)),
            "api_auth_token" => current.push_str(&escape(&config.api_auth_token)),
            "api_host_base" => parts.push(String::new()),
            _ => {}
        }
        rest = &rest[start + 2 + len + 2..];
    }
    if let Some(last) = parts.last_mut() {
        last.push_str(rest);
    }
    parts
}

/// Escapes as Jinja's autoescape (markupsafe) does, so the page is byte for byte `matyan-ui`'s.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Serves `build` on `router`: on the paths no route answers, and on `/metrics/` for browser
/// navigations (see the module docs). Call it after the last route is added.
pub fn attach<S: Clone + Send + Sync + 'static>(router: Router<S>, build: Arc<UiBuild>) -> Router<S> {
    let for_navigations = Arc::clone(&build);
    router
        .route_layer(middleware::from_fn(move |req: Request, next: Next| {
            let build = Arc::clone(&for_navigations);
            async move {
                if build.is_metrics_navigation(&req) { respond(build, req).await } else { next.run(req).await }
            }
        }))
        .fallback(move |req: Request| respond(build, req))
}

/// Answers a request no route matched: the page, a file of the build, or a 404 for the server's
/// own areas and for paths outside the base path. The path already ends with `/`.
pub async fn respond(build: Arc<UiBuild>, req: Request) -> Response {
    let path = req.uri().path();
    if RESERVED.iter().any(|p| path.starts_with(p)) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Some(rest) = strip_base(path, &build.base_path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET,HEAD")]).into_response();
    }
    match rest.strip_prefix(STATIC_PREFIX) {
        Some(file) => build.file(file, req.headers()).await,
        None => build.page(req.headers(), req.uri()),
    }
}

/// `path` below `base` (starting with `/`), or `None` when it is not below it.
fn strip_base<'a>(path: &'a str, base: &str) -> Option<&'a str> {
    path.strip_prefix(base).filter(|rest| rest.starts_with('/'))
}

impl UiBuild {
    /// Whether `req` is a browser opening the UI's metrics explorer (a page that asks for HTML),
    /// not a scraper or a `fetch` (which ask for text or anything).
    fn is_metrics_navigation(&self, req: &Request) -> bool {
        let accepts_html = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().to_ascii_lowercase().starts_with("text/html")));
        accepts_html
            && (req.method() == Method::GET || req.method() == Method::HEAD)
            && strip_base(req.uri().path(), &self.base_path) == Some(METRICS_PAGE)
    }

    /// The rendered page. It is not cached by the browser without asking: it names the current
    /// assets' versions and, without `ui.api_host_base`, depends on the request's origin.
    fn page(&self, headers: &HeaderMap, uri: &Uri) -> Response {
        let derived;
        let host_base = match &self.host_base {
            Some(base) => base,
            None => match request_origin(headers, uri) {
                Some(origin) => {
                    derived = escape(&origin);
                    &derived
                }
                None => return (StatusCode::BAD_REQUEST, "missing or malformed host header").into_response(),
            },
        };
        let body = self.page.join(host_base);
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], body)
            .into_response()
    }

    /// A file of the build; `raw` is its percent-encoded path below `/static-files/`.
    async fn file(&self, raw: &str, headers: &HeaderMap) -> Response {
        // `/static-files/x.js` arrives as `/static-files/x.js/`: the router's normalisation added the `/`.
        let raw = raw.strip_suffix('/').unwrap_or(raw);
        let Some(rel) = relative_path(raw) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let root = self.root.clone();
        let gzip_ok = accepts_gzip(headers);
        let asset = match tokio::task::spawn_blocking(move || open_asset(&root, &rel, gzip_ok)).await {
            Ok(Ok(Some(asset))) => asset,
            Ok(Ok(None)) => return StatusCode::NOT_FOUND.into_response(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, path = raw, "cannot open ui file");
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
            Err(e) => {
                tracing::warn!(error = %e, path = raw, "ui file task failed");
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
        };
        let mut head = HeaderMap::new();
        if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
            head.insert(header::ETAG, etag);
        }
        if asset.has_variants {
            head.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        }
        if etag_matches(headers, &asset.etag) {
            return (StatusCode::NOT_MODIFIED, head).into_response();
        }
        head.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        head.insert(header::CONTENT_LENGTH, HeaderValue::from(asset.len));
        if asset.gzipped {
            head.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        (head, Body::from_stream(stream(asset.file))).into_response()
    }
}

/// The origin the request was made to: `http://` (or `https://` behind a proxy saying so with
/// `X-Forwarded-Proto`) and its `Host`, when that is a plain host and port.
fn request_origin(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let host =
        headers.get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()))?;
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b);
    if host.is_empty() || host.len() > 255 || !host.bytes().all(plain) {
        return None;
    }
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    Some(format!("{}://{host}", if https { "https" } else { "http" }))
}

/// The relative file path of a percent-encoded URL path: each segment decoded and a plain name
/// (not empty, `.` or `..`, without separators), so it cannot leave the directory it is joined to.
fn relative_path(raw: &str) -> Option<PathBuf> {
    let mut rel = PathBuf::new();
    for segment in raw.split('/') {
        let name = String::from_utf8(percent_decode(segment)?).ok()?;
        if name.contains(['/', '\\', '\0']) {
            return None;
        }
        let mut components = Path::new(&name).components();
        match (components.next(), components.next()) {
            (Some(Component::Normal(_)), None) => rel.push(&name),
            _ => return None,
        }
    }
    Some(rel)
}

/// Decodes `%XX` escapes; `None` for a malformed one.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
            let (hi, lo) = (hex(bytes.get(i + 1))?, hex(bytes.get(i + 2))?);
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Whether the client takes a gzip-encoded answer: no `Accept-Encoding` means any coding, else
/// `gzip` (or `*`) listed with a non-zero weight.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::ACCEPT_ENCODING) else { return true };
    let Ok(value) = value.to_str() else { return false };
    let weight_of = |wanted: &str| {
        value.split(',').find_map(|item| {
            let mut parts = item.split(';');
            let coding = parts.next()?.trim();
            if !coding.eq_ignore_ascii_case(wanted) {
                return None;
            }
            let q = parts.find_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()));
            Some(q.unwrap_or(1.0))
        })
    };
    weight_of("gzip").or_else(|| weight_of("x-gzip")).or_else(|| weight_of("*")).is_some_and(|q| q > 0.0)
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

/// An opened file of the build, with what its answer says about it.
struct Asset {
    file: std::fs::File,
    len: u64,
    etag: String,
    content_type: &'static str,
    /// Served as its `.gz` copy.
    gzipped: bool,
    /// Both the plain file and its `.gz` copy exist: the answer depends on `Accept-Encoding`.
    has_variants: bool,
}

/// Opens `rel` under `root`, or its `.gz` copy when the client takes gzip or when only the copy
/// exists (as `matyan-ui` does); `None` when neither is a file inside `root`. Blocking.
fn open_asset(root: &Path, rel: &Path, gzip_ok: bool) -> std::io::Result<Option<Asset>> {
    let plain = root.join(rel);
    let mut gz = plain.clone().into_os_string();
    gz.push(".gz");
    let (plain, gz) = (inside(root, &plain), inside(root, Path::new(&gz)));
    let has_variants = plain.is_some() && gz.is_some();
    let (path, gzipped) = match (plain, gz) {
        (_, Some(gz)) if gzip_ok => (gz, true),
        (Some(plain), _) => (plain, false),
        (None, Some(gz)) => (gz, true),
        (None, None) => return Ok(None),
    };
    let file = std::fs::File::open(&path)?;
    let meta = file.metadata()?;
    let modified = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default();
    let etag = format!("\"{:x}-{:x}{}\"", meta.len(), modified.as_nanos(), if gzipped { "-gz" } else { "" });
    Ok(Some(Asset { file, len: meta.len(), etag, content_type: content_type(rel), gzipped, has_variants }))
}

/// `path` resolved (symlinks followed) when it is a regular file inside `root`: a symlink out of
/// the build is refused like a missing file.
fn inside(root: &Path, path: &Path) -> Option<PathBuf> {
    let resolved = path.canonicalize().ok()?;
    (resolved.starts_with(root) && resolved.is_file()).then_some(resolved)
}

/// The media type of a build file by its extension (of the uncompressed name).
fn content_type(rel: &Path) -> &'static str {
    let ext = rel.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "py" => "text/x-python; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/vnd.microsoft.icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "eot" => "application/vnd.ms-fontobject",
        "wasm" => "application/wasm",
        "gz" => "application/gzip",
        _ => "application/octet-stream",
    }
}

/// The file's bytes, read a chunk at a time on the blocking pool as the client takes them.
fn stream(file: std::fs::File) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::try_unfold(file, |mut file| async move {
        let (file, chunk) = tokio::task::spawn_blocking(move || {
            let mut chunk = vec![0; CHUNK_BYTES];
            let n = file.read(&mut chunk)?;
            chunk.truncate(n);
            Ok::<_, std::io::Error>((file, chunk))
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok((!chunk.is_empty()).then(|| (Bytes::from(chunk), file)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> UiConfig {
        UiConfig {
            dir: PathBuf::new(),
            api_host_base: String::new(),
            api_base_path: "/api/v1".into(),
            base_path: String::new(),
            api_auth_token: String::new(),
        }
    }

    #[test]
    fn placeholders_render_escaped_like_jinja_and_split_at_the_host_base() {
        let c = UiConfig { base_path: "/ui".into(), api_auth_token: "a\"b'<&>".into(), ..config() };
        let parts = render(
            "<a href=\"{{ base_path }}/x\">{{api_base_path}}|{{ api_host_base }}|{{ api_auth_token }}{{ nope }}",
            &c,
        );
        assert_eq!(parts, vec!["<a href=\"/ui/x\">/api/v1|", "|a&#34;b&#39;&lt;&amp;&gt;"]);
        assert_eq!(render("no placeholders {{ unclosed", &c), vec!["no placeholders {{ unclosed"]);
    }

    #[test]
    fn paths_that_could_leave_the_directory_are_refused() {
        assert_eq!(relative_path("static/js/main.js"), Some(PathBuf::from("static/js/main.js")));
        assert_eq!(relative_path("runtime~main%20x.js"), Some(PathBuf::from("runtime~main x.js")));
        for bad in [
            "",
            "a//b",
            "..",
            "a/../b",
            "%2e%2e",
            "%2E%2E/x",
            "a%2f..%2fb",
            ".",
            "/etc/passwd",
            "a%5cb",
            "a%00",
            "%zz",
            "%2",
        ] {
            assert_eq!(relative_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn gzip_is_taken_unless_the_client_declines_it() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            accepts_gzip(&h)
        };
        assert!(accepts_gzip(&HeaderMap::new()));
        assert!(with("gzip, deflate, br"));
        assert!(with("br;q=1.0, GZIP;q=0.5"));
        assert!(with("*"));
        assert!(!with("identity"));
        assert!(!with("gzip;q=0, *"));
        assert!(!with("br"));
    }

    #[test]
    fn the_origin_comes_from_the_host_and_forwarded_proto() {
        let uri: Uri = "/".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(request_origin(&h, &uri), None);
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:53800"));
        assert_eq!(request_origin(&h, &uri).as_deref(), Some("http://127.0.0.1:53800"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https, http"));
        assert_eq!(request_origin(&h, &uri).as_deref(), Some("https://127.0.0.1:53800"));
        h.insert(header::HOST, HeaderValue::from_static("evil\"><script>"));
        assert_eq!(request_origin(&h, &uri), None);
    }

    #[test]
    fn paths_outside_the_base_path_are_not_the_uis() {
        assert_eq!(strip_base("/runs/", ""), Some("/runs/"));
        assert_eq!(strip_base("/ui/runs/", "/ui"), Some("/runs/"));
        assert_eq!(strip_base("/ui/", "/ui"), Some("/"));
        assert_eq!(strip_base("/uix/", "/ui"), None);
        assert_eq!(strip_base("/", "/ui"), None);
    }
}
