//! The web UI on the API's origin (`matyan serve --ui-dir DIR`): the page rendered from the build's
//! `index-template.html` as `matyan-ui` renders it, the build's files under `/static-files/` (the
//! shipped `.gz` copies with `Content-Encoding: gzip`), deep paths, refused traversals, and the API,
//! probes and metrics left alone. Against `fixtures/ui/`, a tiny build with the real placeholders.

mod common;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use matyan::app::AppState;
use matyan::config::UiConfig;
use matyan::http::ui::UiBuild;
use matyan::storage::kv::Database;
use matyan::storage::layout::Layout;
use tower::ServiceExt as _;

use common::server::{get, start, terminate, wait_for_addr};

const HOST: &str = "127.0.0.1:53999";

fn fixture_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/ui"))
}

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(fixture_dir().join(rel)).unwrap()
}

/// The in-process app serving the UI of `dir`, with the `[ui]` settings changed by `configure`.
async fn app_with(dir: &Path, configure: impl FnOnce(&mut UiConfig)) -> AppState {
    let db = Database::memory();
    let layout = Layout::open(&db).await.unwrap();
    let state = common::app_state_with(&db, &layout, |c| {
        c.metrics.enabled = false;
        c.ui.dir = dir.to_path_buf();
        configure(&mut c.ui);
    });
    state.config.validate().unwrap();
    let build = UiBuild::load(&state.config.ui).unwrap();
    assert!(build.is_some());
    state.with_ui(build)
}

async fn app() -> AppState {
    app_with(&fixture_dir(), |_| {}).await
}

async fn request(
    state: &AppState,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(path).header(header::HOST, HOST);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = matyan::http::service(state.clone()).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let head = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24).await.unwrap();
    (status, head, body.to_vec())
}

async fn get_ok(state: &AppState, path: &str) -> (HeaderMap, Vec<u8>) {
    let (status, head, body) = request(state, "GET", path, &[]).await;
    assert_eq!(status, StatusCode::OK, "{path}: {}", String::from_utf8_lossy(&body));
    (head, body)
}

fn header<'a>(head: &'a HeaderMap, name: &str) -> &'a str {
    head.get(name).map_or("", |v| v.to_str().unwrap())
}

/// The fixture's template rendered by hand: what `matyan-ui`'s Jinja makes of it.
fn rendered(base_path: &str, api_base_path: &str, host_base: &str, token: &str) -> String {
    String::from_utf8(fixture("index-template.html"))
        .unwrap()
        .replace("{{ base_path }}", base_path)
        .replace("{{ api_base_path }}", api_base_path)
        .replace("{{ api_host_base }}", host_base)
        .replace("{{ api_auth_token }}", token)
}

#[tokio::test]
async fn the_page_is_the_template_rendered_with_the_api_on_the_origin_it_was_requested_from() {
    let state = app().await;
    let (head, body) = get_ok(&state, "/").await;
    assert_eq!(header(&head, "content-type"), "text/html; charset=utf-8");
    let page = String::from_utf8(body).unwrap();
    assert_eq!(page, rendered("", "/api/v1", &format!("http://{HOST}"), ""));
    assert!(page.contains(&format!(r#"window.API_HOST_BASE="http://{HOST}""#)), "{page}");
    assert!(!page.contains("{{"), "every placeholder is filled: {page}");

    // Behind a proxy that terminates TLS, the page calls https.
    let (_, _, body) = request(&state, "GET", "/runs", &[("x-forwarded-proto", "https")]).await;
    assert!(String::from_utf8(body).unwrap().contains(&format!(r#"window.API_HOST_BASE="https://{HOST}""#)));
}

#[tokio::test]
async fn configured_settings_are_rendered_escaped_as_jinja_does_and_the_ui_moves_under_its_base_path() {
    let state = app_with(&fixture_dir(), |ui| {
        ui.api_host_base = "https://matyan.example.com".into();
        ui.api_base_path = "/tracker/api/v1".into();
        ui.base_path = "/ui".into();
        ui.api_auth_token = r#"t"o<k>e'n&"#.into();
    })
    .await;
    let (_, body) = get_ok(&state, "/ui/").await;
    let page = String::from_utf8(body).unwrap();
    assert_eq!(page, rendered("/ui", "/tracker/api/v1", "https://matyan.example.com", "t&#34;o&lt;k&gt;e&#39;n&amp;"));
    assert_eq!(get_ok(&state, "/ui/runs/abc").await.1, page.as_bytes());
    let (_, js) = get_ok(&state, "/ui/static-files/static/js/main.js").await;
    assert_eq!(js, fixture("static/js/main.js.gz"));
    // Outside the base path there is no UI.
    for path in ["/", "/runs/", "/static-files/static/js/main.js", "/uix/"] {
        assert_eq!(request(&state, "GET", path, &[]).await.0, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn deep_paths_with_or_without_a_trailing_slash_get_the_page() {
    let state = app().await;
    let page = get_ok(&state, "/").await.1;
    for path in [
        "/runs",
        "/runs/",
        "/runs/5eed000000000000/metrics",
        "/metrics/abc/",
        "/experiments/x?select=O-abc",
        "/%2e%2e/",
    ] {
        assert_eq!(get_ok(&state, path).await.1, page, "{path}");
    }
    let (status, head, body) = request(&state, "HEAD", "/runs/x", &[]).await;
    assert_eq!((status, header(&head, "content-type"), body.len()), (StatusCode::OK, "text/html; charset=utf-8", 0));
    let (status, head, _) = request(&state, "POST", "/runs/x", &[]).await;
    assert_eq!((status, header(&head, "allow")), (StatusCode::METHOD_NOT_ALLOWED, "GET,HEAD"));
}

#[tokio::test]
async fn a_file_with_a_gz_copy_is_served_gzipped_with_its_own_type_and_plain_to_a_client_without_gzip() {
    let state = app().await;
    for path in ["/static-files/static/js/main.js", "/static-files/static/js/main.js/?version=f5b4"] {
        let (head, body) = get_ok(&state, path).await;
        assert_eq!(header(&head, "content-encoding"), "gzip", "{path}");
        assert_eq!(header(&head, "content-type"), "text/javascript; charset=utf-8", "{path}");
        assert_eq!(header(&head, "vary"), "accept-encoding", "{path}");
        assert_eq!(header(&head, "content-length"), fixture("static/js/main.js.gz").len().to_string());
        assert_eq!(body, fixture("static/js/main.js.gz"), "{path}");
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut unzipped).unwrap();
        assert_eq!(unzipped, fixture("static/js/main.js"));
    }
    let (status, head, body) =
        request(&state, "GET", "/static-files/static/js/main.js", &[("accept-encoding", "identity")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&head, "content-encoding"), "");
    assert_eq!(body, fixture("static/js/main.js"));

    // A file without a copy is served as it is, with its type; a known version is not sent again.
    let (head, body) = get_ok(&state, "/static-files/manifest.json").await;
    assert_eq!((header(&head, "content-type"), header(&head, "content-encoding")), ("application/json", ""));
    assert_eq!(body, fixture("manifest.json"));
    let etag = header(&head, "etag").to_owned();
    assert!(etag.starts_with('"'), "{etag:?}");
    let (status, _, body) = request(&state, "GET", "/static-files/manifest.json", &[("if-none-match", &etag)]).await;
    assert_eq!((status, body.len()), (StatusCode::NOT_MODIFIED, 0));
    let (head, _) = get_ok(&state, "/static-files/favicon.ico").await;
    assert_eq!(header(&head, "content-type"), "image/vnd.microsoft.icon");
}

#[tokio::test]
async fn paths_out_of_the_build_and_missing_files_are_refused() {
    // A copy of the build beside a secret file, with symlinks pointing out of it.
    let dir = tempfile::tempdir().unwrap();
    let build = dir.path().join("build");
    std::fs::create_dir_all(build.join("static/js")).unwrap();
    for rel in ["index-template.html", "static/js/main.js", "static/js/main.js.gz"] {
        std::fs::copy(fixture_dir().join(rel), build.join(rel)).unwrap();
    }
    std::fs::write(dir.path().join("secret.txt"), "not for the browser").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), build.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(dir.path(), build.join("up")).unwrap();
    // A symlink inside the build stays servable.
    std::os::unix::fs::symlink(build.join("static/js/main.js"), build.join("alias.js")).unwrap();
    let state = app_with(&build, |_| {}).await;

    for path in [
        "/static-files/../secret.txt",
        "/static-files/%2e%2e/secret.txt",
        "/static-files/%2E%2E%2Fsecret.txt",
        "/static-files/static/..%2f..%2fsecret.txt",
        "/static-files/%2Fetc%2Fpasswd",
        "/static-files//etc/passwd",
        "/static-files/link.txt",
        "/static-files/up/secret.txt",
        "/static-files/%00",
        "/static-files/static/js/missing.js",
        "/static-files/static/js/",
        "/static-files/",
    ] {
        let (status, _, body) = request(&state, "GET", path, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(!String::from_utf8_lossy(&body).contains("not for the browser"), "{path}");
    }
    let (head, _) = get_ok(&state, "/static-files/alias.js").await;
    assert_eq!(header(&head, "content-type"), "text/javascript; charset=utf-8");
}

#[tokio::test]
async fn the_api_probes_and_admin_routes_are_not_shadowed_by_the_ui() {
    let state = app().await;
    let (head, body) = get_ok(&state, "/api/v1/rest/projects").await;
    assert_eq!(header(&head, "content-type"), "application/json");
    assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
    assert_eq!(get_ok(&state, "/health/live/").await.1, br#"{"status":"ok"}"#);
    for path in ["/api/v1/rest/no-such-route/", "/api/", "/health/nope", "/admin/nope/"] {
        let (status, head, _) = request(&state, "GET", path, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_ne!(header(&head, "content-type"), "text/html; charset=utf-8", "{path}");
    }
}

#[tokio::test]
async fn metrics_go_to_scrapers_and_the_metrics_explorer_page_to_browsers() {
    let db = Database::memory();
    let layout = Layout::open(&db).await.unwrap();
    let state = common::app_state_with(&db, &layout, |c| c.ui.dir = fixture_dir());
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle();
    let state = AppState { metrics: Some(handle), ..state };
    let state = state.clone().with_ui(UiBuild::load(&state.config.ui).unwrap());

    let scrape = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
    for accept in [scrape, "*/*"] {
        let (status, head, _) = request(&state, "GET", "/metrics", &[("accept", accept)]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(header(&head, "content-type").starts_with("text/plain"), "{accept}: {head:?}");
    }
    let navigation = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let (status, head, body) = request(&state, "GET", "/metrics?select=O-abc", &[("accept", navigation)]).await;
    assert_eq!((status, header(&head, "content-type")), (StatusCode::OK, "text/html; charset=utf-8"));
    assert!(String::from_utf8(body).unwrap().contains("window.API_HOST_BASE"));
}

#[test]
fn the_package_directory_is_accepted_for_the_build_inside_it() {
    let dir = tempfile::tempdir().unwrap();
    let build = dir.path().join("matyan_ui").join("static");
    std::fs::create_dir_all(&build).unwrap();
    std::fs::copy(fixture_dir().join("index-template.html"), build.join("index-template.html")).unwrap();
    let config = UiConfig {
        dir: dir.path().join("matyan_ui"),
        api_host_base: String::new(),
        api_base_path: "/api/v1".into(),
        base_path: String::new(),
        api_auth_token: String::new(),
    };
    let loaded = UiBuild::load(&config).unwrap().unwrap();
    assert_eq!(loaded.root(), build.canonicalize().unwrap());
}

#[test]
fn serve_with_ui_dir_serves_the_ui_on_its_own_origin() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let ui_dir = fixture_dir();
    let mut server = start(&data_dir, &["--ui-dir", ui_dir.to_str().unwrap()]);
    let addr = wait_for_addr(&mut server, &data_dir);
    let (status, page) = get(addr, "/runs/5eed000000000000");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&format!(r#"window.API_HOST_BASE="http://{addr}""#)), "{page}");
    assert_eq!(get(addr, "/health/ready/").0, 200);
    assert_eq!(get(addr, "/api/v1/rest/projects/").0, 200);
    assert_eq!(terminate(server).code(), Some(0));
}

#[test]
fn serve_and_api_refuse_a_ui_dir_without_the_template_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("not-a-build");
    std::fs::create_dir_all(&empty).unwrap();
    let missing = dir.path().join("missing");
    for (role, ui_dir, says) in [
        ("serve", &empty, "index-template.html"),
        ("api", &empty, "index-template.html"),
        ("serve", &missing, "No such file or directory"),
    ] {
        let data_dir = dir.path().join(format!("data-{role}"));
        let out = Command::new(env!("CARGO_BIN_EXE_matyan"))
            .args([role, "--port", "0", "--host", "127.0.0.1", "--ui-dir"])
            .arg(ui_dir)
            .arg("--data-dir")
            .arg(&data_dir)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{role}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&ui_dir.display().to_string()) && stderr.contains(says), "{role}: {stderr}");
        assert!(!data_dir.exists(), "{role}: nothing is created before the ui dir is accepted");
    }
}
