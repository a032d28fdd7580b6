//! The real SDK (`matyan-client`) against `matyan serve` whose blob store is S3 (a SeaweedFS
//! with SigV4 verified): the SDK uploads an artifact and an image through the S3 presigned URLs
//! the gateway hands out, and both read back through REST from the bucket.
//!
//! Needs `MATYAN_SDK_PYTHON` and `WEED_BIN` (both installed by `.ci/run`); skipped without them
//! outside CI.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::seaweed::{ACCESS_KEY, SECRET_KEY, Seaweed};
use common::server::{self, Server};
use matyan::blobs::BlobStore;

const RUN: &str = "6e1d2f3a4b5c6d7e8f90a1b2c3d4e5f6";

/// Logs an artifact and an image of `run` with the SDK, then waits for the uploads.
const SCRIPT: &str = r#"
import pathlib, struct, sys, zlib
from matyan_client import Image, Run

def png():
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"\x00\xff\x00\x00"
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

run = Run(run_hash=sys.argv[1])
path = pathlib.Path(sys.argv[2])
path.write_bytes(b"weights " * 4096)
run.log_artifact(str(path), name="ckpt/model.pt")
run.track(Image(png(), caption="tiny"), name="img", step=0)
if not run._ws.wait_for_flush(300):
    sys.exit("the SDK did not flush")
run.close()
"#;

#[test]
fn the_real_sdk_uploads_an_artifact_and_an_image_to_s3_through_presigned_urls_and_both_read_back() {
    let Some(python) = common::sdk::python() else { return };
    let Some(s3) = Seaweed::start() else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = runtime.block_on(s3.bucket("sdk"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let child = Command::new(env!("CARGO_BIN_EXE_matyan"))
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .args(["--host", "127.0.0.1", "--port", "0"])
        .envs([
            ("BLOB_BACKEND_TYPE", "s3"),
            ("S3_ENDPOINT", s3.endpoint.as_str()),
            ("S3_BUCKET", store.bucket()),
            ("S3_ACCESS_KEY", ACCESS_KEY),
            ("S3_SECRET_KEY", SECRET_KEY),
            ("RUST_LOG", "warn"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start matyan serve");
    let mut serve = Server(child);
    let addr = server::wait_for_addr(&mut serve, &data);
    let url = format!("http://{addr}");

    let out = Command::new(&python)
        .args(["-c", SCRIPT, RUN])
        .arg(dir.path().join("model.pt"))
        .envs([("MATYAN_FRONTIER_URL", url.as_str()), ("MATYAN_BACKEND_URL", url.as_str())])
        .env("LOGURU_LEVEL", "WARNING")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run the SDK");
    assert!(out.status.success(), "the SDK script failed: {}", String::from_utf8_lossy(&out.stderr));

    // The bytes went to the bucket, not to a local directory.
    let model = runtime.block_on(store.get(&format!("{RUN}/ckpt/model.pt"))).unwrap();
    assert_eq!(model.bytes, b"weights ".repeat(4096));
    let image = runtime.block_on(store.get(&format!("{RUN}/seq/img/0.png"))).unwrap();
    assert!(image.bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert_eq!(image.content_type, "image/png", "the content type the SDK signed is kept");
    assert!(!data.join("blobs").exists(), "nothing was written to the local store");

    // The blob_ref reaches storage asynchronously: wait until the artifact is listed.
    let path = format!("/api/v1/rest/runs/{RUN}/artifacts/download/?path=ckpt/model.pt");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let (status, body) = server::get(addr, &path);
        if status == 200 || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_bytes(), b"weights ".repeat(4096).as_slice());

    let status = server::terminate(serve);
    assert!(status.success(), "matyan serve exited with {status}");
}
