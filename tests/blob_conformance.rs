//! The blob-store conformance suite: written once, instantiated for every store — the local
//! directory always, S3 against a real SeaweedFS when `WEED_BIN` (or `weed` on the `PATH`)
//! names one (required when `CI` is set; see `tests/common/seaweed.rs`). Each S3 case starts
//! its own server and works in a bucket of its own.
//!
//! Then the S3 store's own behaviours: refused credentials (SigV4 is really verified) and an
//! unreachable endpoint (a retryable error).

mod common;

use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use matyan::blobs::{
    BlobError, BlobStore, DEFAULT_CONTENT_TYPE, LocalDirStore, MAX_DELETE_BATCH, MAX_LIST_PAGE, ObjectInfo, ObjectMeta,
    S3Store,
};

use common::seaweed::Seaweed;

/// A store under test and what keeps it alive (its directory or its server).
struct Fixture {
    store: Arc<dyn BlobStore>,
    _guard: Box<dyn std::any::Any + Send>,
}

async fn local(_case: &str) -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalDirStore::new(dir.path().join("blobs")));
    Some(Fixture { store, _guard: Box::new(dir) })
}

async fn s3(case: &str) -> Option<Fixture> {
    let server = Seaweed::start()?;
    let store = Arc::new(server.bucket(case).await);
    Some(Fixture { store, _guard: Box::new(server) })
}

fn is_not_found(r: Result<impl std::fmt::Debug, BlobError>) -> bool {
    matches!(r, Err(BlobError::NotFound { .. }))
}

fn is_invalid(r: Result<impl std::fmt::Debug, BlobError>) -> bool {
    match r {
        Err(e @ BlobError::InvalidKey { .. }) => !e.is_retryable(),
        _ => false,
    }
}

/// Every key of `prefix`, page by page of `page` keys; also returns the page sizes.
async fn list_all(store: &dyn BlobStore, prefix: &str, page: usize) -> (Vec<ObjectInfo>, Vec<usize>) {
    let (mut all, mut sizes, mut after) = (Vec::new(), Vec::new(), None);
    loop {
        let listing = store.list(prefix, after.as_deref(), page).await.unwrap();
        sizes.push(listing.objects.len());
        all.extend(listing.objects);
        match listing.next {
            Some(next) => after = Some(next),
            None => return (all, sizes),
        }
    }
}

async fn read_stream(store: &dyn BlobStore, key: &str) -> (ObjectMeta, Vec<u8>, usize) {
    let reader = store.open(key).await.unwrap();
    let chunks: Vec<_> = reader.body.try_collect().await.unwrap();
    let n = chunks.len();
    (reader.meta, chunks.concat(), n)
}

pub async fn put_get_head_and_open_keep_the_bytes_and_the_content_type(store: Arc<dyn BlobStore>) {
    let key = "3f2a/seq/images/0.png";
    store.put(key, b"\x89PNG one".to_vec(), Some("image/png")).await.unwrap();
    let blob = store.get(key).await.unwrap();
    assert_eq!((blob.bytes.as_slice(), blob.content_type.as_str()), (&b"\x89PNG one"[..], "image/png"));
    assert_eq!(store.head(key).await.unwrap(), ObjectMeta { size: 8, content_type: "image/png".into() });
    let (meta, bytes, _) = read_stream(&*store, key).await;
    assert_eq!((meta.size, meta.content_type.as_str(), bytes.as_slice()), (8, "image/png", &b"\x89PNG one"[..]));
    // Without a content type an object is an octet stream.
    store.put("run/weights.bin", vec![1, 2, 3], None).await.unwrap();
    assert_eq!(store.get("run/weights.bin").await.unwrap().content_type, DEFAULT_CONTENT_TYPE);
    assert_eq!(store.head("run/weights.bin").await.unwrap().content_type, DEFAULT_CONTENT_TYPE);
    // An empty object exists and is empty.
    store.put("run/empty", Vec::new(), Some("text/plain")).await.unwrap();
    assert_eq!(store.head("run/empty").await.unwrap(), ObjectMeta { size: 0, content_type: "text/plain".into() });
    assert_eq!(read_stream(&*store, "run/empty").await.1, b"");
    // Dots inside a name are just characters.
    store.put("run/..hidden/a..b", b"ok".to_vec(), None).await.unwrap();
    assert_eq!(store.get("run/..hidden/a..b").await.unwrap().bytes, b"ok");
}

pub async fn a_put_replaces_the_bytes_and_the_content_type(store: Arc<dyn BlobStore>) {
    let key = "run/notes.txt";
    store.put(key, b"first version".to_vec(), Some("text/plain")).await.unwrap();
    store.put(key, b"{}".to_vec(), Some("application/json")).await.unwrap();
    let blob = store.get(key).await.unwrap();
    assert_eq!((blob.bytes.as_slice(), blob.content_type.as_str()), (&b"{}"[..], "application/json"));
    // Without a type the old one is gone too (an S3 service may detect a type from the bytes, as
    // SeaweedFS does for an octet stream, so only the absence of the old one is common ground).
    store.put(key, b"x".to_vec(), None).await.unwrap();
    let meta = store.head(key).await.unwrap();
    assert_eq!(meta.size, 1);
    assert_ne!(meta.content_type, "application/json");
    let (all, _) = list_all(&*store, "run/", 10).await;
    assert_eq!(all, vec![ObjectInfo { key: key.into(), size: 1 }], "a replaced object is listed once");
}

pub async fn a_missing_key_is_not_found_and_deleting_it_succeeds(store: Arc<dyn BlobStore>) {
    assert!(is_not_found(store.get("nope/a.png").await));
    assert!(is_not_found(store.head("nope/a.png").await));
    assert!(is_not_found(store.open("nope/a.png").await));
    assert!(!BlobError::NotFound { key: String::new() }.is_retryable());
    store.delete("nope/a.png").await.unwrap();
    store.delete_many(&["nope/a".into(), "nope/b".into()]).await.unwrap();
    store.delete_many(&[]).await.unwrap();
    // A "directory" is not an object.
    store.put("a/b", b"x".to_vec(), None).await.unwrap();
    assert!(is_not_found(store.get("a").await));
    assert!(is_not_found(store.head("a/b/c").await));
    store.delete("a/b").await.unwrap();
    assert!(is_not_found(store.get("a/b").await));
    assert_eq!(list_all(&*store, "", 10).await.0, vec![]);
}

pub async fn keys_that_could_escape_are_refused_before_the_store_sees_them(store: Arc<dyn BlobStore>) {
    for key in ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a/", ".", "..", "a/..", "a\0b"] {
        assert!(is_invalid(store.get(key).await), "get {key:?}");
        assert!(is_invalid(store.head(key).await), "head {key:?}");
        assert!(is_invalid(store.open(key).await), "open {key:?}");
        assert!(is_invalid(store.put(key, b"x".to_vec(), None).await), "put {key:?}");
        assert!(is_invalid(store.delete(key).await), "delete {key:?}");
        assert!(is_invalid(store.delete_many(&["ok/a".into(), key.into()]).await), "delete_many {key:?}");
    }
    for prefix in ["run", "../", "/abs/", "a//", "./"] {
        assert!(is_invalid(store.list(prefix, None, 10).await), "list {prefix:?}");
    }
    assert!(matches!(store.list("run/", None, 0).await, Err(BlobError::Count { .. })));
    assert!(matches!(store.list("run/", None, MAX_LIST_PAGE + 1).await, Err(BlobError::Count { .. })));
    let too_many: Vec<String> = (0..=MAX_DELETE_BATCH).map(|i| format!("k/{i}")).collect();
    assert!(matches!(store.delete_many(&too_many).await, Err(BlobError::Count { .. })));
    assert_eq!(list_all(&*store, "", 10).await.0, vec![], "nothing was written");
}

pub async fn listing_pages_through_2500_objects_by_1000_and_batch_deletes_remove_them(store: Arc<dyn BlobStore>) {
    const N: usize = 2_500;
    let keys: Vec<String> = (0..N).map(|i| format!("run/seq/images/{i:05}.png")).collect();
    futures_util::stream::iter(keys.iter().enumerate())
        .for_each_concurrent(16, |(i, key)| {
            let store = Arc::clone(&store);
            async move { store.put(key, vec![7; i % 5], Some("image/png")).await.unwrap() }
        })
        .await;
    store.put("run/a.txt", b"a".to_vec(), None).await.unwrap();
    store.put("runner/x", b"x".to_vec(), None).await.unwrap();
    let (all, pages) = list_all(&*store, "run/", MAX_LIST_PAGE).await;
    assert_eq!(pages, vec![1000, 1000, 501], "S3's 1,000-key pages");
    let want: Vec<String> = std::iter::once("run/a.txt".to_owned()).chain(keys.iter().cloned()).collect();
    assert_eq!(all.iter().map(|o| o.key.clone()).collect::<Vec<_>>(), want, "key order, runner/ left out");
    assert_eq!(all[4], ObjectInfo { key: "run/seq/images/00003.png".into(), size: 3 });
    // A page starts after its cursor, even one that names no object.
    let page = store.list("run/seq/", Some("run/seq/images/02497.pngz"), 10).await.unwrap();
    assert_eq!(
        page.objects.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
        ["run/seq/images/02498.png", "run/seq/images/02499.png"]
    );
    assert_eq!(page.next, None);
    for batch in want.chunks(MAX_DELETE_BATCH) {
        store.delete_many(batch).await.unwrap();
    }
    store.delete_many(&want[..MAX_DELETE_BATCH]).await.unwrap();
    assert_eq!(list_all(&*store, "run/", MAX_LIST_PAGE).await.0, vec![]);
    assert_eq!(store.get("runner/x").await.unwrap().bytes, b"x");
}

pub async fn a_20_mb_object_round_trips_whole_and_streamed(store: Arc<dyn BlobStore>) {
    let size = 20 * 1024 * 1024 + 17;
    let bytes: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    store.put("run/ckpt/model.pt", bytes.clone(), Some("application/x-torch")).await.unwrap();
    assert_eq!(store.head("run/ckpt/model.pt").await.unwrap().size, size as u64);
    assert!(store.get("run/ckpt/model.pt").await.unwrap().bytes == bytes, "get returns the whole object");
    let (meta, streamed, chunks) = read_stream(&*store, "run/ckpt/model.pt").await;
    assert_eq!((meta.size, meta.content_type.as_str()), (size as u64, "application/x-torch"));
    assert!(streamed == bytes, "the stream carries the whole object in order");
    assert!(chunks > 1, "a large object streams in chunks, not held whole ({chunks} chunk)");
}

macro_rules! blob_conformance_suite {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let Some(fixture) = super::$backend(stringify!($name)).await else { return };
                        super::$name(Arc::clone(&fixture.store)).await;
                    }
                };
            }

            case!(put_get_head_and_open_keep_the_bytes_and_the_content_type);
            case!(a_put_replaces_the_bytes_and_the_content_type);
            case!(a_missing_key_is_not_found_and_deleting_it_succeeds);
            case!(keys_that_could_escape_are_refused_before_the_store_sees_them);
            case!(listing_pages_through_2500_objects_by_1000_and_batch_deletes_remove_them);
            case!(a_20_mb_object_round_trips_whole_and_streamed);
        }
    };
}

blob_conformance_suite!(local);
blob_conformance_suite!(s3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_refuses_wrong_credentials_so_sigv4_is_really_verified() {
    let Some(server) = Seaweed::start() else { return };
    let good = server.bucket("creds").await;
    good.put("run/a.txt", b"a".to_vec(), None).await.unwrap();
    let mut settings = server.settings(good.bucket());
    settings.secret_key = "not-the-secret".to_owned();
    let forged = S3Store::new(&settings);
    for result in [
        forged.get("run/a.txt").await.map(|_| ()),
        forged.put("run/b.txt", b"b".to_vec(), None).await,
        forged.delete_many(&["run/a.txt".into()]).await,
        forged.list("run/", None, 10).await.map(|_| ()),
    ] {
        let e = result.unwrap_err();
        assert!(matches!(e, BlobError::Remote { retryable: false, .. }), "{e}");
    }
    settings.access_key = "nobody".to_owned();
    let e = S3Store::new(&settings).head("run/a.txt").await.unwrap_err();
    assert!(matches!(e, BlobError::Remote { retryable: false, .. }), "an unknown access key: {e}");
    // Nothing changed behind the refusals.
    let (all, _) = list_all(&good, "run/", 10).await;
    assert_eq!(all, vec![ObjectInfo { key: "run/a.txt".into(), size: 1 }]);
}

#[tokio::test]
async fn an_unreachable_s3_endpoint_is_a_retryable_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let settings = matyan::blobs::S3Settings {
        endpoint: format!("http://127.0.0.1:{port}"),
        public_endpoint: String::new(),
        bucket: "b".into(),
        region: "us-east-1".into(),
        access_key: "a".into(),
        secret_key: "s".into(),
        force_path_style: true,
        max_attempts: 2,
        connect_timeout: std::time::Duration::from_secs(2),
        attempt_timeout: std::time::Duration::from_secs(5),
    };
    let store = S3Store::new(&settings);
    for result in [store.get("run/a").await.map(|_| ()), store.list("run/", None, 10).await.map(|_| ())] {
        let e = result.unwrap_err();
        assert!(e.is_retryable(), "{e}");
    }
}

/// One HTTP/1.1 `PUT` of `body` to `url` (`http://host:port/path?query`); the status code.
fn http_put(url: &str, content_type: &str, body: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, target) = rest.split_at(rest.find('/').unwrap());
    let mut stream = std::net::TcpStream::connect(authority).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "PUT {target} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_presigned_put_urls_name_the_public_endpoint_and_sign_the_content_type() {
    let Some(server) = Seaweed::start() else { return };
    let store = server.bucket("presign").await;
    // The public endpoint is another name of the same server, as a proxy's would be.
    let mut settings = server.settings(store.bucket());
    settings.public_endpoint = server.endpoint.replace("127.0.0.1", "localhost");
    let public = S3Store::new(&settings);
    let expires = std::time::Duration::from_secs(600);
    let url = public.presign_put("run/ckpt/model.pt", "application/x-torch", expires).await.unwrap().unwrap();
    assert!(url.starts_with(&format!("{}/{}/run/ckpt/model.pt?", settings.public_endpoint, store.bucket())), "{url}");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    // Another content type breaks the signature; the signed one stores the bytes with it.
    let status = tokio::task::spawn_blocking({
        let url = url.clone();
        move || http_put(&url, "text/plain", b"forged")
    })
    .await
    .unwrap();
    assert_eq!(status, 403);
    assert!(matches!(store.head("run/ckpt/model.pt").await, Err(BlobError::NotFound { .. })));
    let status = tokio::task::spawn_blocking(move || http_put(&url, "application/x-torch", b"weights")).await.unwrap();
    assert_eq!(status, 200);
    let blob = store.get("run/ckpt/model.pt").await.unwrap();
    assert_eq!((blob.bytes.as_slice(), blob.content_type.as_str()), (&b"weights"[..], "application/x-torch"));
    assert!(matches!(public.presign_put("../x", "a/b", expires).await, Err(BlobError::InvalidKey { .. })));
    let local = LocalDirStore::new(server.data_dir().join("unused"));
    assert_eq!(local.presign_put("run/a", "a/b", expires).await.unwrap(), None, "the gateway signs its own route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_calls_while_the_server_is_down_are_retryable_and_succeed_once_it_is_back() {
    let Some(mut server) = Seaweed::start() else { return };
    let store = server.bucket("outage").await;
    store.put("run/a.txt", b"a".to_vec(), Some("text/plain")).await.unwrap();
    server.stop();
    let mut settings = server.settings(store.bucket());
    settings.max_attempts = 1;
    let impatient = S3Store::new(&settings);
    for result in [
        impatient.get("run/a.txt").await.map(|_| ()),
        impatient.delete_many(&["run/a.txt".into()]).await,
        impatient.list("run/", None, 10).await.map(|_| ()),
    ] {
        let e = result.unwrap_err();
        assert!(e.is_retryable(), "{e}");
    }
    // The same ports and data: the object written before the outage is still there.
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match store.get("run/a.txt").await {
            Ok(blob) => {
                assert_eq!((blob.bytes.as_slice(), blob.content_type.as_str()), (&b"a"[..], "text/plain"));
                return;
            }
            Err(e) if e.is_retryable() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("after the restart: {e}; log:\n{}", server.log()),
        }
    }
}
