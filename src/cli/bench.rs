//! `matyan bench ...`: benchmarks that print figures, each against a baseline in the same run.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use matyan::bench::control::ControlBenchConfig;
use matyan::bench::gateway::GatewayBenchConfig;
use matyan::bench::ingest::{IngestBenchConfig, IngestReport};
use matyan::bench::memory::MemoryPeaks;
use matyan::bench::query::{QueryBenchConfig, QueryReport};
use matyan::bench::storage::{StorageBenchConfig, run_all};
use matyan::config::{BlobBackend, Config};
use matyan::ingest::queue_trim::TrimSettings;
use matyan::storage::kv::EmbeddedOptions;
use matyan::storage::layout::SequenceLayoutKind;

/// Parses a `--layout` value (and `migrate sequences --to`).
pub(super) fn parse_layout(s: &str) -> Result<SequenceLayoutKind, String> {
    match s {
        "key_per_step" => Ok(SequenceLayoutKind::KeyPerStep),
        "chunked" => Ok(SequenceLayoutKind::Chunked),
        other => Err(format!("unknown layout {other:?}: expected key_per_step or chunked")),
    }
}

/// Parses a `--blob-store` value.
fn parse_blob_store(s: &str) -> Result<BlobBackend, String> {
    match s {
        "local" => Ok(BlobBackend::Local),
        "s3" => Ok(BlobBackend::S3),
        other => Err(format!("unknown blob store {other:?}: expected local or s3")),
    }
}

/// The embedded engine's memory for the stores a benchmark writes (`[storage]` `cache_bytes` and
/// `memtable_bytes`; the defaults are the built-in configuration's).
#[derive(Debug, Args)]
struct StoreArgs {
    /// fjall's block cache, bytes.
    #[arg(long, default_value_t = EmbeddedOptions::default().cache_bytes)]
    cache_bytes: u64,
    /// fjall's memtable size, bytes.
    #[arg(long, default_value_t = EmbeddedOptions::default().memtable_bytes)]
    memtable_bytes: u64,
    /// fjall's background threads (memtable flushes and compaction).
    #[arg(long, default_value_t = EmbeddedOptions::default().engine_threads)]
    engine_threads: u32,
    /// How often freed memory goes back to the system, ms (0: never; one trimmer per process).
    #[arg(long, default_value_t = EmbeddedOptions::default().memory_trim_ms)]
    memory_trim_ms: u64,
    /// fjall's journals together at most, bytes.
    #[arg(long, default_value_t = EmbeddedOptions::default().journal_bytes)]
    journal_bytes: u64,
}

impl StoreArgs {
    /// The flags as the embedded store's settings, held to `[storage]`'s bounds.
    fn options(&self) -> anyhow::Result<EmbeddedOptions> {
        let mut config = Config::from_toml_str("bench", "")?;
        let storage = &mut config.storage;
        storage.cache_bytes = self.cache_bytes;
        storage.memtable_bytes = self.memtable_bytes;
        storage.engine_threads = self.engine_threads;
        storage.memory_trim_ms = self.memory_trim_ms;
        storage.journal_bytes = self.journal_bytes;
        config.validate().map_err(|e| {
            anyhow::anyhow!(
                "{e} (--cache-bytes, --memtable-bytes, --engine-threads, --memory-trim-ms and --journal-bytes are \
                 [storage]'s cache_bytes, memtable_bytes, engine_threads, memory_trim_ms and journal_bytes)"
            )
        })?;
        Ok(config.storage.embedded_options())
    }
}

/// `matyan bench ...`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Write N metric points of one run through the Matyan layout in budgeted transactions, read
    /// the series back; on memory (baseline), fjall and redb.
    Storage(StorageArgs),
    /// Ingest N `log_metric` records of the golden shape through the pipeline from the embedded
    /// queue (and, with --kafka, from a topic), against the source's bare read rate.
    Ingest(IngestArgs),
    /// Time run search, indexed run search, metric search and a whole-series get-batch through the
    /// in-process router on R runs × 3 metrics × S steps plus one B-step run.
    Query(QueryArgs),
    /// N concurrent SDK-protocol WebSocket clients (100-message frames, stop-and-wait) against the
    /// whole `matyan serve` stack in process, against the embedded queue's append rate.
    Gateway(GatewayArgs),
    /// Decode N `log_metric` records of the golden shape with the decoder's one-pass path, against
    /// its serde_json path (the path before, still the fallback), rounds alternated on one thread.
    Decode(DecodeArgs),
    /// Deletes R runs of B blobs each through the REST API of the whole `matyan serve` stack in
    /// process, until every object is gone, against the janitor alone on the store.
    Control(ControlArgs),
}

#[derive(Debug, Args)]
struct DecodeArgs {
    /// Records decoded per path and round.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Timed rounds per path, alternated.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

#[derive(Debug, Args)]
struct ControlArgs {
    /// Runs deleted.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Blobs of each run.
    #[arg(long, default_value_t = 1_000)]
    blobs: usize,
    /// Scratch directory for the stores [default: a temporary directory, removed after].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Blob stores to measure, one after the other, the local one first as the baseline
    /// (comma-separated: local, s3). S3 is the bucket the configuration names (`BLOB_BACKEND_TYPE`,
    /// `S3_*` or `--config`), created if missing [default: local, and s3 when the configuration
    /// selects it].
    #[arg(long, value_delimiter = ',', value_parser = parse_blob_store)]
    blob_store: Vec<BlobBackend>,
    /// Configuration file (TOML); the environment applies over it, as for every role.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct GatewayArgs {
    /// Concurrent clients, one run each.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Points each client logs.
    #[arg(long, default_value_t = 62_500)]
    points: u64,
    /// Messages per frame (the SDK's batch size).
    #[arg(long, default_value_t = 100)]
    frame: usize,
    /// Scratch directory for the stores [default: a temporary directory, removed after].
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct IngestArgs {
    /// `log_metric` records (points) to ingest.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Runs the records are spread over.
    #[arg(long, default_value_t = 8)]
    runs: u32,
    /// Partitions of the embedded queue and the Kafka topic.
    #[arg(long, default_value_t = 6)]
    partitions: u32,
    /// Records per append transaction (also the visibility sampling period).
    #[arg(long, default_value_t = 500)]
    append_batch: usize,
    /// Kafka bootstrap servers: also produce to a fresh topic, read it with a bare consumer and
    /// ingest it through the Kafka source.
    #[arg(long)]
    kafka: Option<String>,
    /// Sequence layouts to measure, one after the other on fresh stores (comma-separated:
    /// key_per_step, chunked): a before/after pair in one invocation.
    #[arg(long, value_delimiter = ',', default_value = "key_per_step,chunked", value_parser = parse_layout)]
    layout: Vec<SequenceLayoutKind>,
    #[command(flatten)]
    store: StoreArgs,
    /// Run the live phase with the queue trimmer of `matyan serve` every this many ms (`[queue]`
    /// trim_interval_ms, with the built-in retention and batch); 0 runs it without.
    #[arg(long, default_value_t = 0)]
    trim_interval_ms: u64,
    /// Scratch directory for the stores [default: a temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct QueryArgs {
    /// Runs with three metrics each.
    #[arg(long, default_value_t = 1_000)]
    runs: u32,
    /// Steps per metric of those runs.
    #[arg(long, default_value_t = 10_000)]
    steps: u32,
    /// Steps of the big run's metric.
    #[arg(long, default_value_t = 1_000_000)]
    big_steps: u32,
    /// Timed repetitions of each request (after one warm-up).
    #[arg(long, default_value_t = 5)]
    reps: u32,
    /// Sequence layouts to measure, one after the other on fresh stores (comma-separated:
    /// key_per_step, chunked): a before/after pair in one invocation.
    #[arg(long, value_delimiter = ',', default_value = "key_per_step,chunked", value_parser = parse_layout)]
    layout: Vec<SequenceLayoutKind>,
    #[command(flatten)]
    store: StoreArgs,
    /// Store directory [default: a temporary directory, removed after]; a store there that an
    /// earlier run populated with the same --runs, --steps and --big-steps is reused.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct StorageArgs {
    /// Points to write.
    #[arg(long, default_value_t = 1_000_000)]
    points: u64,
    /// Byte budget per transaction (FoundationDB's accounting; its limit is 10,000,000).
    #[arg(long, default_value_t = 5_000_000)]
    txn_budget_bytes: usize,
    /// Sequence layouts to measure, one after the other on fresh stores (comma-separated:
    /// key_per_step, chunked): a before/after pair in one invocation.
    #[arg(long, value_delimiter = ',', default_value = "key_per_step,chunked", value_parser = parse_layout)]
    layout: Vec<SequenceLayoutKind>,
    /// Scratch directory for the embedded stores [default: a temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Runs `matyan bench ...`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Storage(a) => storage(a).await,
        BenchCommand::Ingest(a) => ingest(a).await,
        BenchCommand::Query(a) => query(a).await,
        BenchCommand::Gateway(a) => gateway(a).await,
        BenchCommand::Decode(a) => decode(&a),
        BenchCommand::Control(a) => control(a).await,
    }
}

fn decode(args: &DecodeArgs) -> anyhow::Result<()> {
    use matyan::bench::decode::{DecodeBenchConfig, DecodePath, DecodeRound};
    anyhow::ensure!((1..=1_000_000_000).contains(&args.records), "--records must be between 1 and 1000000000");
    anyhow::ensure!((1..=100).contains(&args.rounds), "--rounds must be between 1 and 100");
    let cfg = DecodeBenchConfig { records: args.records, rounds: args.rounds };
    eprintln!("{} records per path, {} rounds alternated ...", cfg.records, cfg.rounds);
    let rounds = matyan::bench::decode::run(&cfg).context("benchmark failed")?;
    println!(
        "{:<22} {:>5} {:>10} {:>8} {:>10} {:>14}",
        "path", "round", "records", "secs", "ns_per_rec", "records_per_s"
    );
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "{:<22} {:>5} {:>10} {:>8.3} {:>10.1} {:>14.0}",
            r.path.name(),
            i / 2 + 1,
            r.records,
            r.secs,
            r.ns_per_record(),
            r.records as f64 / r.secs.max(1e-9)
        );
    }
    let best = |path: DecodePath| {
        rounds.iter().filter(|r| r.path == path).map(DecodeRound::ns_per_record).fold(f64::INFINITY, f64::min)
    };
    let (one_pass, serde) = (best(DecodePath::OnePass), best(DecodePath::Serde));
    println!(
        "best round: one pass {one_pass:.1} ns/record, serde_json raw values {serde:.1} ns/record: {:.2}x",
        serde / one_pass
    );
    Ok(())
}

async fn control(args: ControlArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=100_000).contains(&args.runs), "--runs must be between 1 and 100000");
    anyhow::ensure!((1..=1_000_000).contains(&args.blobs), "--blobs must be between 1 and 1000000");
    let config = Config::load(args.config.as_deref(), |var| std::env::var(var).ok())?;
    config.validate()?;
    let mut stores = args.blob_store.clone();
    if stores.is_empty() {
        stores = vec![BlobBackend::Local, config.blobs.backend];
    }
    // The local store first: it is the baseline S3 is read against.
    stores.sort_by_key(|s| *s != BlobBackend::Local);
    stores.dedup();
    let (dir, scratch) = scratch_dir(args.dir)?;
    let mut reports = Vec::new();
    for store in &stores {
        let mut config = config.clone();
        config.blobs.backend = *store;
        let cfg = ControlBenchConfig { runs: args.runs, blobs_per_run: args.blobs, config };
        let name = store_name(*store);
        eprintln!("{name}: {} runs x {} blobs under {} ...", cfg.runs, cfg.blobs_per_run, dir.display());
        let result = matyan::bench::control::run(&dir.join(name), &cfg).await;
        match result {
            Ok(report) => reports.push((name, report)),
            Err(e) => {
                if scratch {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                return Err(e).context(format!("benchmark on the {name} store failed"));
            }
        }
    }
    if scratch {
        let _ = std::fs::remove_dir_all(&dir);
    }
    print_control(&reports);
    Ok(())
}

fn store_name(store: BlobBackend) -> &'static str {
    match store {
        BlobBackend::Local => "local",
        BlobBackend::S3 => "s3",
    }
}

/// One row per store and phase; the local store's rate of the same phase is the baseline column.
fn print_control(reports: &[(&str, matyan::bench::control::ControlReport)]) {
    let rate = |objects: u64, secs: f64| objects as f64 / secs.max(1e-9);
    let local = reports.iter().find(|(name, _)| *name == "local").map(|(_, r)| r);
    println!(
        "{:<6} {:<32} {:>10} {:>8} {:>14} {:>9}",
        "store", "phase", "objects", "secs", "objects_per_s", "vs_local"
    );
    for (name, r) in reports {
        let phases = [
            ("janitor alone", r.janitor_secs, local.map(|l| rate(l.objects, l.janitor_secs))),
            ("REST DELETE to last object gone", r.end_to_end_secs, local.map(|l| rate(l.objects, l.end_to_end_secs))),
        ];
        for (phase, secs, baseline) in phases {
            let vs = baseline.map_or_else(|| "-".to_owned(), |b| format!("{:.1} %", rate(r.objects, secs) / b * 100.0));
            println!("{name:<6} {phase:<32} {:>10} {secs:>8.3} {:>14.0} {vs:>9}", r.objects, rate(r.objects, secs));
        }
    }
    for (name, r) in reports {
        let q = |p| {
            matyan::bench::control::percentile(&r.per_run_secs, p).map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"))
        };
        println!(
            "{name}: per run, DELETE to last object gone (s): p50 {} p99 {} max {}; end to end / janitor alone: {:.1} %",
            q(0.5),
            q(0.99),
            q(1.0),
            r.janitor_secs / r.end_to_end_secs.max(1e-9) * 100.0
        );
    }
}

async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=10_000).contains(&args.clients), "--clients must be between 1 and 10000");
    anyhow::ensure!(args.points > 0, "--points must be positive");
    anyhow::ensure!((1..=1000).contains(&args.frame), "--frame must be between 1 and 1000");
    let (dir, scratch) = scratch_dir(args.dir)?;
    let cfg = GatewayBenchConfig { clients: args.clients, points_per_client: args.points, frame_messages: args.frame };
    eprintln!(
        "{} clients x {} points in frames of {} under {} ...",
        cfg.clients,
        cfg.points_per_client,
        cfg.frame_messages,
        dir.display()
    );
    let result = matyan::bench::gateway::run(&dir, &cfg).await;
    if scratch {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let rows = result.context("benchmark failed")?;
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    println!(
        "{:<24} {:>10} {:>8} {:>12} {:>8} {:>8} {:>9}",
        "phase", "points", "secs", "points_per_s", "p50_ms", "p99_ms", "peak_MiB"
    );
    for r in &rows {
        println!(
            "{:<24} {:>10} {:>8.3} {:>12.0} {:>8} {:>8} {:>9}",
            r.phase,
            r.points,
            r.secs,
            r.points_per_sec(),
            ms(r.p50_ms),
            ms(r.p99_ms),
            r.peak_rss_kib.map_or_else(|| "-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0)),
        );
    }
    print_engine_memory(rows.iter().filter_map(|r| Some((r.phase, r.memory?))));
    let find = |p: &str| rows.iter().find(|r| r.phase == p);
    for (a, b) in [("gateway alone accepted", "queue append, 1 task"), ("gateway stored", "gateway alone accepted")] {
        if let (Some(x), Some(y)) = (find(a), find(b)) {
            println!("{a} / {b}: {:.1} %", x.points_per_sec() / y.points_per_sec() * 100.0);
        }
    }
    Ok(())
}

async fn storage(args: StorageArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.points > 0, "--points must be positive");
    anyhow::ensure!(
        (100_000..=10_000_000).contains(&args.txn_budget_bytes),
        "--txn-budget-bytes must be between 100000 and 10000000"
    );
    let scratch = args.dir.is_none();
    let dir = match args.dir {
        Some(d) => d,
        None => tempfile_dir()?,
    };
    println!(
        "{:<13} {:<8} {:>10} {:>6} {:>10} {:>14} {:>10} {:>12} {:>12}",
        "layout", "backend", "points", "txns", "write_s", "points_per_s", "read_s", "bytes_per_pt", "alloc_per_pt"
    );
    for layout in args.layout {
        let cfg = StorageBenchConfig {
            points: args.points,
            txn_budget_bytes: args.txn_budget_bytes,
            layout,
            ..Default::default()
        };
        let sub = dir.join(layout.as_str());
        eprintln!("writing {} points per backend, {}, under {} ...", cfg.points, layout.as_str(), sub.display());
        let reports = run_all(&sub, &cfg).await.context("benchmark failed")?;
        if scratch {
            let _ = std::fs::remove_dir_all(&sub);
        }
        print_storage(layout, &reports);
    }
    if scratch {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn print_storage(layout: SequenceLayoutKind, reports: &[matyan::bench::storage::StorageBenchReport]) {
    for r in reports {
        println!(
            "{:<13} {:<8} {:>10} {:>6} {:>10.3} {:>14.0} {:>10.3} {:>12.1} {:>12.1}",
            layout.as_str(),
            r.backend,
            r.points,
            r.txns,
            r.write_secs,
            r.write_rate(),
            r.read_secs,
            r.bytes_per_point(),
            r.allocated_per_point()
        );
    }
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.records > 0 && args.runs > 0, "--records and --runs must be positive");
    anyhow::ensure!((1..=256).contains(&args.partitions), "--partitions must be between 1 and 256");
    anyhow::ensure!((1..=10_000).contains(&args.append_batch), "--append-batch must be between 1 and 10000");
    let store = args.store.options()?;
    let trim = trim_settings(args.trim_interval_ms)?;
    let (dir, scratch) = scratch_dir(args.dir)?;
    for layout in args.layout {
        let cfg = IngestBenchConfig {
            records: args.records,
            runs: args.runs,
            partitions: args.partitions,
            append_batch: args.append_batch,
            kafka: args.kafka.clone(),
            layout,
            store,
            trim,
            ..Default::default()
        };
        let sub = dir.join(layout.as_str());
        eprintln!(
            "ingesting {} points over {} runs, {}, under {} ...",
            cfg.records,
            cfg.runs,
            layout.as_str(),
            sub.display()
        );
        let result = matyan::bench::ingest::run(&sub, &cfg).await;
        if scratch {
            let _ = std::fs::remove_dir_all(&sub);
        }
        println!("layout: {}, allocator: {}", layout.as_str(), matyan::alloc::describe());
        print_ingest(&result.context("benchmark failed")?, trim);
    }
    if scratch {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// The live phase's trimmer for `--trim-interval-ms`: the built-in `[queue]` with that interval,
/// held to its bounds; `None` for 0.
fn trim_settings(interval_ms: u64) -> anyhow::Result<Option<(std::time::Duration, TrimSettings)>> {
    let mut config = Config::from_toml_str("bench", "")?;
    config.queue.trim_interval_ms = interval_ms;
    config.validate().map_err(|e| anyhow::anyhow!("{e} (--trim-interval-ms is [queue]'s trim_interval_ms)"))?;
    Ok(config.queue.trim_interval().map(|interval| (interval, TrimSettings::from_config(&config.queue))))
}

fn print_ingest(report: &IngestReport, trim: Option<(std::time::Duration, TrimSettings)>) {
    match trim {
        Some((interval, settings)) => {
            let t = report.live_trim;
            println!(
                "live phase trimmer: every {} ms, {} records a transaction, {} kept; trimmed {} records in the \
                 phase, {} more by a pass after it ({:.3} s)",
                interval.as_millis(),
                settings.batch,
                settings.retain,
                t.map_or(0, |t| t.during),
                t.map_or(0, |t| t.after),
                t.map_or(0.0, |t| t.after_secs),
            )
        }
        None => println!("live phase trimmer: off"),
    }
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    println!(
        "{:<30} {:>8} {:>8} {:>8} {:>9} {:>12} {:>13} {:>12} {:>8} {:>8} {:>7} {:>8}",
        "phase",
        "records",
        "points",
        "secs",
        "startup_s",
        "points_per_s",
        "records_per_s",
        "steady_rec_s",
        "p50_ms",
        "p99_ms",
        "samples",
        "peak_MiB"
    );
    for r in &report.rows {
        println!(
            "{:<30} {:>8} {:>8} {:>8.3} {:>9} {:>12.0} {:>13.0} {:>12.0} {:>8} {:>8} {:>7} {:>8}",
            r.phase,
            r.records,
            r.points,
            r.secs,
            r.startup_secs.map_or_else(|| "-".to_owned(), |s| format!("{s:.3}")),
            r.points_per_sec(),
            r.records_per_sec(),
            r.steady_records_per_sec(),
            ms(r.p50_ms),
            ms(r.p99_ms),
            r.samples,
            r.peak_rss_kib.map_or_else(|| "-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0)),
        );
    }
    print_engine_memory(report.rows.iter().filter_map(|r| Some((r.phase, r.memory?))));
    let find = |p: &str| report.rows.iter().find(|r| r.phase == p);
    for (a, b, label) in [
        ("embedded pipeline", "embedded queue read (ceiling)", "embedded pipeline / queue read"),
        ("embedded pipeline (backlog)", "embedded queue read (ceiling)", "embedded pipeline (backlog) / queue read"),
        ("kafka pipeline", "kafka bare consumer (ceiling)", "kafka pipeline / bare consumer"),
    ] {
        if let (Some(a), Some(b)) = (find(a), find(b)) {
            let whole = a.records_per_sec() / b.records_per_sec() * 100.0;
            let steady = a.steady_records_per_sec() / b.steady_records_per_sec() * 100.0;
            println!("{label}: {whole:.1} % (after the first record: {steady:.1} %)");
        }
    }
    let kafka = report.kafka_stored_points.map_or_else(String::new, |n| format!(", kafka {n}"));
    println!("stored points read back: embedded {}{kafka}", report.stored_points);
    println!(
        "live store on disk at the end of its phase{}, tables and journal: {:.1} MiB",
        if trim.is_some() { " (after the trimmer's last pass)" } else { "" },
        report.live_disk_bytes as f64 / (1024.0 * 1024.0)
    );
}

/// The engine's parts of each phase's memory (their largest samples; they need not peak together).
fn print_engine_memory<'a>(rows: impl Iterator<Item = (&'a str, MemoryPeaks)>) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let sampled: Vec<_> = rows.collect();
    if sampled.is_empty() {
        return;
    }
    println!(
        "{:<30} {:>9} {:>8} {:>9} {:>9} {:>11} {:>6} {:>9} {:>10} {:>9} {:>10} {:>6} {:>4} {:>8} {:>10}",
        "memory (largest samples)",
        "rss0_MiB",
        "rss_MiB",
        "heap_MiB",
        "free_MiB",
        "memtab_MiB",
        "sealed",
        "cache_MiB",
        "filter_MiB",
        "index_MiB",
        "parts_MiB",
        "tables",
        "l0",
        "versions",
        "vmemt_MiB"
    );
    for (phase, m) in sampled {
        let e = m.engine;
        println!(
            "{:<30} {:>9.1} {:>8.1} {:>9.1} {:>9.1} {:>11.1} {:>6} {:>9.1} {:>10.1} {:>9.1} {:>10.1} {:>6} {:>4} {:>8} {:>10.1}",
            phase,
            m.first_rss_kib as f64 / 1024.0,
            m.rss_kib as f64 / 1024.0,
            mib(m.heap_in_use_bytes),
            mib(m.heap_free_bytes),
            mib(e.write_buffer_bytes),
            e.sealed_memtables,
            mib(e.cache_bytes),
            mib(e.pinned_filter_bytes),
            mib(e.pinned_index_bytes),
            mib(e.total_bytes()),
            e.tables,
            e.l0_tables,
            e.versions,
            mib(e.version_memtable_bytes)
        );
    }
}

async fn query(args: QueryArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.runs > 0 && args.steps > 0 && args.big_steps > 0 && args.reps > 0,
        "--runs, --steps, --big-steps and --reps must be positive"
    );
    let store = args.store.options()?;
    let (dir, scratch) = scratch_dir(args.dir)?;
    for layout in args.layout {
        let cfg = QueryBenchConfig {
            runs: args.runs,
            steps: args.steps,
            big_steps: args.big_steps,
            reps: args.reps,
            layout,
            store,
        };
        let sub = dir.join(layout.as_str());
        eprintln!(
            "storing {} runs x 3 metrics x {} steps + 1 run x {} steps, {}, under {} ...",
            cfg.runs,
            cfg.steps,
            cfg.big_steps,
            layout.as_str(),
            sub.display()
        );
        let result = matyan::bench::query::run(&sub, &cfg).await;
        if scratch {
            let _ = std::fs::remove_dir_all(&sub);
        }
        println!("layout: {}", layout.as_str());
        print_query(&result.context("benchmark failed")?);
    }
    if scratch {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn print_query(report: &QueryReport) {
    if report.reused {
        println!(
            "setup: reused a store of {} points, {:.1} MiB on disk",
            report.points_written,
            report.disk_bytes as f64 / (1024.0 * 1024.0)
        );
    } else {
        println!(
            "setup: {} points in {:.1} s ({:.0} points/s), {:.1} MiB on disk",
            report.points_written,
            report.setup_secs,
            report.points_written as f64 / report.setup_secs,
            report.disk_bytes as f64 / (1024.0 * 1024.0)
        );
    }
    println!(
        "{:<32} {:>9} {:>7} {:>12} {:>10} {:>10}",
        "request", "count", "unit", "body_bytes", "median_ms", "p95_ms"
    );
    for r in &report.rows {
        println!(
            "{:<32} {:>9} {:>7} {:>12} {:>10.1} {:>10.1}",
            r.name,
            r.count,
            r.unit,
            r.bytes,
            r.median_secs * 1e3,
            r.p95_secs * 1e3
        );
        if let Some(e) = &r.error {
            println!("    failed: {e}");
        }
    }
}

/// The scratch directory: `dir`, or a fresh temporary one (second value: remove it afterwards).
fn scratch_dir(dir: Option<PathBuf>) -> anyhow::Result<(PathBuf, bool)> {
    match dir {
        Some(d) => Ok((d, false)),
        None => Ok((tempfile_dir()?, true)),
    }
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("matyan-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(memory_trim_ms: u64, engine_threads: u32) -> StoreArgs {
        let d = EmbeddedOptions::default();
        StoreArgs {
            cache_bytes: d.cache_bytes,
            memtable_bytes: d.memtable_bytes,
            engine_threads,
            memory_trim_ms,
            journal_bytes: d.journal_bytes,
        }
    }

    #[test]
    fn store_flags_are_held_to_the_storage_bounds_and_named_in_the_error() {
        assert_eq!(store(1000, 2).options().unwrap(), EmbeddedOptions::default());
        assert_eq!(store(0, 1).options().unwrap().memory_trim_ms, 0, "0 turns the trim off");
        let e = store(5, 2).options().unwrap_err().to_string();
        assert!(e.contains("storage.memory_trim_ms") && e.contains("--memory-trim-ms"), "{e}");
        let e = store(1000, 0).options().unwrap_err().to_string();
        assert!(e.contains("storage.engine_threads") && !e.contains("storage.memory_trim_ms"), "{e}");
    }
}
