//! `matyan bench ingest`, `matyan bench query`, `matyan bench gateway`, `matyan bench decode` and `matyan bench control` at tiny scale: the reports' counts match what
//! was asked for (no timing is asserted). `bench control` also runs on S3 (SeaweedFS, see
//! `tests/common/seaweed.rs`).

mod common;

use matyan::bench::ingest::{IngestBenchConfig, run as run_ingest};
use matyan::bench::query::{QueryBenchConfig, lr_matches, run as run_query};
use matyan::storage::layout::SequenceLayoutKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_bench_reports_every_point_stored() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = IngestBenchConfig { records: 1_200, runs: 3, append_batch: 100, ..Default::default() };
    let report = run_ingest(dir.path(), &cfg).await.unwrap();
    assert_eq!(report.stored_points, 1_200);
    assert!(report.kafka_stored_points.is_none());
    let phases: Vec<&str> = report.rows.iter().map(|r| r.phase).collect();
    assert_eq!(
        phases,
        ["embedded append", "embedded pipeline", "embedded queue read (ceiling)", "embedded pipeline (backlog)"]
    );
    for r in &report.rows {
        assert_eq!((r.records, r.points), (1_203, 1_200), "{r:?}");
        assert!(r.secs > 0.0, "{r:?}");
    }
    // Every phase after the append is sampled: the process is resident, and the store's memtable
    // holds what was appended and applied.
    for r in &report.rows[1..] {
        let m = r.memory.unwrap_or_else(|| panic!("{} has no memory samples", r.phase));
        assert!(m.rss_kib >= m.first_rss_kib && m.first_rss_kib > 0, "{r:?}");
        assert!(m.engine.write_buffer_bytes > 0 && m.engine.total_bytes() >= m.engine.write_buffer_bytes, "{r:?}");
    }
    let pipeline = &report.rows[1];
    assert_eq!(pipeline.samples, 13, "one sample per append batch holding a point");
    assert!(pipeline.p50_ms.unwrap() <= pipeline.p99_ms.unwrap());
}

#[test]
fn decode_bench_times_both_paths_alternated_on_the_records_asked_for() {
    use matyan::bench::decode::{DecodeBenchConfig, DecodePath, run};
    let rounds = run(&DecodeBenchConfig { records: 2_000, rounds: 2 }).unwrap();
    let paths: Vec<DecodePath> = rounds.iter().map(|r| r.path).collect();
    assert_eq!(paths, [DecodePath::Serde, DecodePath::OnePass, DecodePath::Serde, DecodePath::OnePass]);
    for r in &rounds {
        assert_eq!(r.records, 2_000, "{r:?}");
        assert!(r.secs > 0.0 && r.ns_per_record() > 0.0, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_bench_with_the_trimmer_stores_every_point_and_reads_the_ceiling_on_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let settings = matyan::ingest::queue_trim::TrimSettings { retain: 0, batch: 100 };
    let trim = Some((std::time::Duration::from_millis(100), settings));
    let cfg = IngestBenchConfig { records: 1_200, runs: 3, append_batch: 100, trim, ..Default::default() };
    let report = run_ingest(dir.path(), &cfg).await.unwrap();
    assert_eq!(report.stored_points, 1_200);
    let phases: Vec<&str> = report.rows.iter().map(|r| r.phase).collect();
    assert_eq!(
        phases,
        ["embedded append", "embedded pipeline", "embedded queue read (ceiling)", "embedded pipeline (backlog)"]
    );
    // What it trimmed depends on when the pipeline committed its offsets; never more than was sent.
    let trimmed = report.live_trim.expect("the trimmer ran");
    assert!(trimmed.during + trimmed.after <= 1_203, "{trimmed:?}");
    assert!(report.live_disk_bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_bench_answers_have_the_expected_counts() {
    for layout in [SequenceLayoutKind::KeyPerStep, SequenceLayoutKind::Chunked] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = QueryBenchConfig { runs: 6, steps: 40, big_steps: 7_000, reps: 2, layout, ..Default::default() };
        let report = run_query(dir.path(), &cfg).await.unwrap();
        assert_eq!(report.points_written, (6 * 3 + 16) * 40 + 7_000);
        let counts: Vec<u64> = report.rows.iter().map(|r| r.count).collect();
        assert_eq!(counts, [8, lr_matches(6), 6, 7_000, 16 * 40], "{layout:?}");
        for r in &report.rows {
            assert!(r.error.is_none() && r.median_secs <= r.p95_secs && r.bytes > 0, "{r:?}");
        }
    }
    assert_eq!(lr_matches(20), 10, "half the runs match lr > 0.01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_bench_has_every_point_accepted_and_applied_in_each_phase() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = matyan::bench::gateway::GatewayBenchConfig { clients: 3, points_per_client: 250, frame_messages: 100 };
    let rows = matyan::bench::gateway::run(dir.path(), &cfg).await.unwrap();
    let phases: Vec<&str> = rows.iter().map(|r| r.phase).collect();
    assert_eq!(phases, ["queue append, 1 task", "gateway alone accepted", "gateway accepted", "gateway stored"]);
    for r in &rows {
        assert_eq!(r.points, 750, "{r:?}");
        assert!(r.secs > 0.0, "{r:?}");
    }
    // The stack's memory is sampled over its accepting and storing together, on the stored row.
    let sampled: Vec<bool> = rows.iter().map(|r| r.memory.is_some()).collect();
    assert_eq!(sampled, [true, true, false, true]);
    // 3 frames per client (100, 100, 50): nine latencies, ordered percentiles.
    assert!(rows[1].p50_ms.unwrap() <= rows[1].p99_ms.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_bench_removes_every_blob_of_every_deleted_run_in_both_phases() {
    let dir = tempfile::tempdir().unwrap();
    let config = matyan::config::Config::from_toml_str("test", "").unwrap();
    let cfg = matyan::bench::control::ControlBenchConfig { runs: 3, blobs_per_run: 40, config };
    let report = matyan::bench::control::run(dir.path(), &cfg).await.unwrap();
    assert_eq!(report.objects, 120);
    assert_eq!(report.removed, (120, 120), "the janitor removed each object once in each phase");
    assert_eq!(report.per_run_secs.len(), 3);
    assert!(report.janitor_secs > 0.0 && report.end_to_end_secs > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_bench_on_s3_removes_every_blob_of_every_deleted_run_from_the_bucket_in_both_phases() {
    let Some(seaweed) = common::seaweed::Seaweed::start() else { return };
    let bucket = seaweed.bucket("bench-control").await;
    let mut config = matyan::config::Config::from_toml_str("test", "").unwrap();
    seaweed.configure(&mut config, bucket.bucket());
    let dir = tempfile::tempdir().unwrap();
    let cfg = matyan::bench::control::ControlBenchConfig { runs: 2, blobs_per_run: 30, config };
    let report = matyan::bench::control::run(dir.path(), &cfg).await.unwrap();
    assert_eq!(report.objects, 60);
    assert_eq!(report.removed, (60, 60), "the janitor removed each object once in each phase");
    use matyan::blobs::BlobStore as _;
    let left = bucket.list("", None, 1_000).await.unwrap();
    assert!(left.objects.is_empty(), "objects left in the bucket: {:?}", left.objects);
    assert!(!dir.path().join("baseline").exists(), "the baseline ran on the bucket, not a directory");
}
