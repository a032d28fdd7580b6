//! `matyan serve` as a user runs it: the real binary on a free port and a temporary data directory,
//! probed over HTTP, then stopped by SIGTERM.

mod common;

use std::process::Command;

use common::server::{get, start, terminate, wait_for_addr};

#[test]
fn serve_answers_probes_and_metrics_then_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut server = start(&data_dir, &[]);
    let addr = wait_for_addr(&mut server, &data_dir);

    for path in ["/health/live/", "/health/live"] {
        assert_eq!(get(addr, path), (200, r#"{"status":"ok"}"#.to_owned()), "{path}");
    }
    for path in ["/health/ready/", "/health/ready"] {
        let (status, body) = get(addr, path);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.contains(r#""status":"ok""#), "{path}: {body}");
        assert!(body.contains(r#""ingest":"ok""#), "serve runs the ingestion pipeline: {body}");
    }
    assert_eq!(get(addr, "/no/such/route/").0, 404);
    for path in ["/metrics/", "/metrics"] {
        let (status, body) = get(addr, path);
        assert_eq!(status, 200, "{path}");
        assert!(body.contains("matyan_build_info"), "{path}: {body}");
        assert!(body.contains("matyan_http_requests_total"), "{path}: {body}");
        assert!(body.contains("matyan_health_ready_checks_total"), "{path}: {body}");
    }
    // The embedded store was created under the data directory.
    assert!(data_dir.join("fjall").is_dir());

    let status = terminate(server);
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(!data_dir.join("serve.addr").exists(), "serve.addr left behind");
}

#[test]
fn serve_reopens_its_store_after_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    for _ in 0..2 {
        let mut server = start(&data_dir, &[]);
        let addr = wait_for_addr(&mut server, &data_dir);
        assert_eq!(get(addr, "/health/ready/").0, 200);
        assert_eq!(terminate(server).code(), Some(0));
    }
}

#[test]
fn serve_refuses_a_bad_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[ingest]\nmax_txn_bytes = 20000000\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_matyan"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ingest.max_txn_bytes: 20000000 exceeds"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing is created before the config is accepted");

    let out = Command::new(env!("CARGO_BIN_EXE_matyan"))
        .args(["serve", "--port", "0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("INGEST_MAX_MESSAGES_PER_TXN", "many")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INGEST_MAX_MESSAGES_PER_TXN"), "{stderr}");
}

#[test]
fn serve_trims_the_embedded_queue_once_every_record_is_ingested() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let imported = Command::new(env!("CARGO_BIN_EXE_matyan"))
        .args(["queue", "import", common::GOLDEN_10K, "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    let records = common::golden_records().len() as f64;
    let config = dir.path().join("trim.toml");
    std::fs::write(&config, "[queue]\ntrim_interval_ms = 100\n").unwrap();
    let mut server = start(&data_dir, &["--config", config.to_str().unwrap()]);
    let addr = wait_for_addr(&mut server, &data_dir);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let (mut trimmed, mut held) = (0.0, f64::NAN);
    while std::time::Instant::now() < deadline {
        let (_, body) = get(addr, "/metrics/");
        trimmed = common::server::metric_sum(&body, "matyan_queue_trimmed_records_total", "data-ingestion");
        held = common::server::metric_sum(&body, "matyan_queue_records", "data-ingestion");
        if trimmed == records {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!((trimmed, held), (records, 0.0), "every ingested record is trimmed and none is held");
    // The embedded engine's own account, read at the scrape: 10,000 records went through its
    // memtable and were read back through its block cache.
    let (_, body) = get(addr, "/metrics/");
    let part = |p: &str| common::server::metric_sum(&body, "matyan_storage_engine_memory_bytes", &format!("\"{p}\""));
    assert!(part("memtables") > 0.0 && part("block_cache") >= 0.0, "{body}");
    assert!(common::server::metric_sum(&body, "matyan_storage_engine_tables", "\"all\"") >= 1.0, "{body}");
    // The worker-health gauge of the lag reporter (set every second): once nothing waits, no
    // partition has a commit age.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let body = loop {
        let (_, body) = get(addr, "/metrics/");
        let age = common::server::metric_sum(&body, "matyan_ingest_commit_age_seconds", "");
        if (body.contains("matyan_ingest_commit_age_seconds{partition=\"0\"}") && age == 0.0)
            || std::time::Instant::now() > deadline
        {
            break body;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(body.contains("matyan_ingest_commit_age_seconds{partition=\"0\"}"), "{body}");
    assert_eq!(common::server::metric_sum(&body, "matyan_ingest_commit_age_seconds", ""), 0.0, "{body}");
    assert_eq!(terminate(server).code(), Some(0));
}

#[test]
fn serve_refuses_to_start_in_production_with_the_development_blob_uri_key_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_matyan"))
        .args(["serve", "--port", "0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("MATYAN_ENVIRONMENT", "production")
        .env_remove("BLOB_URI_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("blobs.uri_secret") && stderr.contains("BLOB_URI_SECRET"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing is created before the config is accepted");
}
