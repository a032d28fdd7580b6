//! Artifact downloads (spec `api.md` §7.3) against the in-process router: one artifact with its
//! content type and file name, and every artifact as a streamed ZIP64 archive that Python's
//! `zipfile` reads; over the local store, and over S3 (SeaweedFS, see `tests/common/seaweed.rs`).

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use futures_util::StreamExt;
use matyan::app::AppState;
use matyan::storage::kv::Database;
use matyan::storage::layout::Layout;
use matyan::storage::value::Value;
use serde_json::json;
use tower::ServiceExt as _;

use common::{NOW, RUN};

const R: &str = "/api/v1/rest";

/// An answer: status, headers and the body with the number of frames it came in.
struct Answer {
    status: u16,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
    frames: usize,
}

async fn get(state: &AppState, uri: &str) -> Answer {
    let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let work = async {
        let resp = matyan::http::service(state.clone()).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut stream = resp.into_body().into_data_stream();
        let (mut body, mut frames) = (Vec::new(), 0);
        while let Some(frame) = stream.next().await {
            body.extend_from_slice(&frame.unwrap());
            frames += 1;
        }
        Answer { status, headers, body, frames }
    };
    tokio::time::timeout(Duration::from_secs(60), work).await.unwrap()
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers.get(name).map_or("", |v| v.to_str().unwrap())
}

/// A run whose `__blobs__` records `artifacts` (path, object key, content type).
async fn state_with(artifacts: &[(&str, &str, &str)], configure: impl FnOnce(&mut matyan::config::Config)) -> AppState {
    let db = Database::memory();
    let layout = Layout::open(&db).await.unwrap();
    let tx = db.create_trx().unwrap();
    layout.runs.create_run(&tx, RUN, NOW, None).await.unwrap();
    for (path, key, ty) in artifacts {
        let entry = Value::from(&json!({"s3_key": key, "content_type": ty}));
        layout.runs.set_attrs(&tx, RUN, &["__blobs__".to_owned(), (*path).to_owned()], &entry, NOW).await.unwrap();
    }
    tx.commit().await.unwrap();
    common::app_state_with(&db, &layout, configure)
}

async fn local_state(artifacts: &[(&str, &str, &str)]) -> (AppState, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    (state_with(artifacts, |c| c.blobs.dir = path).await, dir)
}

fn model_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 253) as u8).collect()
}

#[tokio::test]
async fn an_artifact_downloads_with_its_content_type_and_file_name() {
    let key = format!("{RUN}/ckpt/model.pt");
    let (state, _dir) = local_state(&[("ckpt/model.pt", &key, "application/x-torch")]).await;
    let bytes = model_bytes(3 * 1024 * 1024);
    state.blobs.store.put(&key, bytes.clone(), Some("application/x-torch")).await.unwrap();
    let a = get(&state, &format!("{R}/runs/{RUN}/artifacts/download/?path=ckpt/model.pt")).await;
    assert_eq!(a.status, 200);
    assert!(a.body == bytes);
    assert!(a.frames > 1, "the object is streamed in chunks, not sent whole");
    assert_eq!(header(&a, "content-type"), "application/x-torch");
    assert_eq!(header(&a, "content-disposition"), "attachment; filename=\"model.pt\"");
    assert_eq!(header(&a, "content-length"), bytes.len().to_string());
    // Without the trailing slash too, and a percent-encoded path.
    let a = get(&state, &format!("{R}/runs/{RUN}/artifacts/download?path=ckpt%2Fmodel.pt")).await;
    assert_eq!((a.status, a.body.len()), (200, bytes.len()));
}

#[tokio::test]
async fn a_download_needs_a_path_and_is_404_for_an_unknown_run_path_or_sequence_blob() {
    let key = format!("{RUN}/a.txt");
    let seq_key = format!("{RUN}/seq/images/0.png");
    let (state, _dir) =
        local_state(&[("a.txt", &key, "text/plain"), ("seq/images/0.png", &seq_key, "image/png")]).await;
    state.blobs.store.put(&key, b"a".to_vec(), None).await.unwrap();
    state.blobs.store.put(&seq_key, b"png".to_vec(), None).await.unwrap();
    assert_eq!(get(&state, &format!("{R}/runs/{RUN}/artifacts/download/")).await.status, 422);
    assert_eq!(get(&state, &format!("{R}/runs/nope/artifacts/download/?path=a.txt")).await.status, 404);
    assert_eq!(get(&state, &format!("{R}/runs/{RUN}/artifacts/download/?path=b.txt")).await.status, 404);
    let a = get(&state, &format!("{R}/runs/{RUN}/artifacts/download/?path=seq/images/0.png")).await;
    assert_eq!(a.status, 404, "image and audio blobs are not artifacts");
    assert_eq!(get(&state, &format!("{R}/runs/{RUN}/artifacts/download/?path=a.txt")).await.body, b"a");
}

#[tokio::test]
async fn a_recorded_artifact_whose_object_is_missing_is_a_404_naming_the_object_where_the_reference_answers_500() {
    let key = format!("{RUN}/lost.bin");
    let (state, _dir) = local_state(&[("lost.bin", &key, "application/octet-stream")]).await;
    let a = get(&state, &format!("{R}/runs/{RUN}/artifacts/download/?path=lost.bin")).await;
    assert_eq!(a.status, 404);
    let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains(&key) && detail.contains("missing from the blob store"), "{detail}");
}

/// Reads `archive` with Python's `zipfile` (what a user's unzip tool stands for here): checks
/// every CRC and returns `[name, mode, bytes as hex]` per member.
fn python_members(archive: &[u8]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.zip");
    std::fs::write(&path, archive).unwrap();
    let script = "import json, sys, zipfile\n\
        z = zipfile.ZipFile(sys.argv[1])\n\
        assert z.testzip() is None\n\
        print(json.dumps([[i.filename, i.external_attr >> 16, i.compress_type, z.read(i).hex()] for i in z.infolist()]))";
    let out = std::process::Command::new("python3").args(["-c", script]).arg(&path).output().expect("python3 runs");
    assert!(out.status.success(), "python's zipfile refused the archive: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn check_download_all(state: &AppState, big: &[u8]) {
    let a = get(state, &format!("{R}/runs/{RUN}/artifacts/download-all/")).await;
    assert_eq!(a.status, 200);
    assert_eq!(header(&a, "content-type"), "application/zip");
    assert_eq!(header(&a, "content-disposition"), format!("attachment; filename=\"{RUN}-artifacts.zip\""));
    assert!(a.frames > 2, "the archive is streamed while the objects are read");
    let members = python_members(&a.body);
    let expected =
        json!(
            [["ckpt/model.pt", 0o100_600, 0, hex::encode(big)], ["notes/é.txt", 0o100_600, 0, hex::encode("hello")],]
        );
    assert_eq!(members, expected, "stored members named by artifact path, mode 0600; the missing object left out");
}

#[tokio::test]
async fn download_all_streams_a_zip64_archive_of_every_artifact_and_leaves_out_a_missing_object() {
    let model = format!("{RUN}/ckpt/model.pt");
    let notes = format!("{RUN}/notes/é.txt");
    let lost = format!("{RUN}/lost.bin");
    let seq = format!("{RUN}/seq/images/0.png");
    let artifacts = [
        ("ckpt/model.pt", model.as_str(), "application/x-torch"),
        ("lost.bin", lost.as_str(), "application/octet-stream"),
        ("notes/é.txt", notes.as_str(), "text/plain"),
        ("seq/images/0.png", seq.as_str(), "image/png"),
    ];
    let (state, _dir) = local_state(&artifacts).await;
    let big = model_bytes(2 * 1024 * 1024 + 3);
    state.blobs.store.put(&model, big.clone(), None).await.unwrap();
    state.blobs.store.put(&notes, b"hello".to_vec(), None).await.unwrap();
    state.blobs.store.put(&seq, b"png".to_vec(), None).await.unwrap();
    check_download_all(&state, &big).await;
}

#[tokio::test]
async fn download_all_is_404_for_an_unknown_run_or_a_run_without_artifacts() {
    let (state, _dir) = local_state(&[]).await;
    assert_eq!(get(&state, &format!("{R}/runs/{RUN}/artifacts/download-all/")).await.status, 404);
    assert_eq!(get(&state, &format!("{R}/runs/nope/artifacts/download-all/")).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_download_from_an_s3_store_with_their_content_type() {
    let Some(server) = common::seaweed::Seaweed::start() else { return };
    let bucket = server.bucket("artifacts").await;
    let model = format!("{RUN}/ckpt/model.pt");
    let notes = format!("{RUN}/notes/é.txt");
    let lost = format!("{RUN}/lost.bin");
    let artifacts = [
        ("ckpt/model.pt", model.as_str(), "application/x-torch"),
        ("lost.bin", lost.as_str(), "application/octet-stream"),
        ("notes/é.txt", notes.as_str(), "text/plain"),
    ];
    let state = state_with(&artifacts, |c| server.configure(c, bucket.bucket())).await;
    let big = model_bytes(2 * 1024 * 1024 + 3);
    state.blobs.store.put(&model, big.clone(), Some("application/x-torch")).await.unwrap();
    state.blobs.store.put(&notes, b"hello".to_vec(), Some("text/plain")).await.unwrap();
    let a = get(&state, &format!("{R}/runs/{RUN}/artifacts/download/?path=ckpt/model.pt")).await;
    assert_eq!((a.status, header(&a, "content-type")), (200, "application/x-torch"));
    assert!(a.body == big);
    assert_eq!(get(&state, &format!("{R}/runs/{RUN}/artifacts/download/?path=lost.bin")).await.status, 404);
    check_download_all(&state, &big).await;
}

#[tokio::test]
async fn run_info_names_each_artifact_by_an_s3_uri_in_the_configured_bucket() {
    let key = format!("{RUN}/ckpt/model.pt");
    let state = state_with(&[("ckpt/model.pt", &key, "application/x-torch")], |c| {
        c.blobs.s3_bucket = "team-artifacts".to_owned();
    })
    .await;
    let a = get(&state, &format!("{R}/runs/{RUN}/info/")).await;
    assert_eq!(a.status, 200);
    let info: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(
        info["artifacts"],
        json!([{"name": "model.pt", "path": "ckpt/model.pt", "uri": format!("s3://team-artifacts/{key}")}])
    );
}
