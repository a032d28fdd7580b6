//! `matyan queue import`: appends records in the Kafka samples' JSON-lines format to the embedded
//! queue or, with `--kafka`, to a Kafka topic, e.g. to replay a topic dump.
//!
//! It is an append tool, like a producer: importing the same file twice appends every record
//! twice, at new offsets. Deduplication is the consumer's job (each run's applied offset).
//!
//! With `--kafka` the records are produced with their original keys, values and timestamps by an
//! idempotent producer (`acks=all`, Kafka's murmur2 partitioner on the key, so each run keeps one
//! partition and its order), and the command waits for every delivery report before it reports
//! success.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::{Args, Subcommand};
use futures_util::FutureExt as _;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use matyan::app::{AppError, open_database};
use matyan::config::{Backend, Config};
use matyan::ingest::kafka::{client_config, idempotent_producer_config};
use matyan::ingest::queue::{AppendRecord, DEFAULT_PARTITIONS, Queue};
use matyan::storage::kv::KvError;
use matyan::storage::layout::Dirs;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use serde::Deserialize;

use super::ConfigArgs;

/// `matyan queue ...`.
#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Append the records of a JSON-lines file (optionally gzipped), one object per line with
    /// key_b64, value_b64 and timestamp_ms, to the embedded queue. Each run appends again:
    /// importing a file twice stores its records twice.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// The records: JSON lines as in fixtures/kafka-samples, plain or gzip (detected from the content).
    #[arg(value_name = "FILE.jsonl[.gz]")]
    file: PathBuf,
    /// Topic to append to [default: kafka.data_ingestion_topic, i.e. data-ingestion].
    #[arg(long)]
    topic: Option<String>,
    /// Partition count of a new topic; for an existing topic it must equal the stored count
    /// [default: the stored count, or 6 for a new topic].
    #[arg(long, value_name = "N")]
    partitions: Option<u32>,
    /// Records per transaction at most; a transaction also stays under ingest.max_txn_bytes.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Print a progress line on stderr every N records.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    progress_every: u64,
    /// Produce to the Kafka topic (kafka.bootstrap_servers) instead of the embedded queue; the
    /// topic must exist. --partitions and --batch do not apply.
    #[arg(long)]
    kafka: bool,
    #[command(flatten)]
    common: ConfigArgs,
}

/// One line of the samples' format; fields other than these are ignored.
#[derive(Debug, Deserialize)]
struct SampleLine {
    /// `null` or absent for a null key.
    #[serde(default)]
    key_b64: Option<String>,
    value_b64: String,
    timestamp_ms: i64,
    /// The partition in the dumped topic, only compared with ours.
    #[serde(default)]
    partition: Option<i32>,
}

/// A decoded record waiting for its batch.
struct Pending {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    timestamp_ms: i64,
    file_partition: Option<i32>,
}

/// Counts of one import, for the progress lines and the summary.
#[derive(Debug, Default)]
struct Tally {
    records: u64,
    bytes: u64,
    /// Per partition: records, first and last offset appended.
    partitions: std::collections::BTreeMap<i32, (u64, i64, i64)>,
    /// Records whose partition in the file differs from the one the queue chose.
    moved: u64,
}

/// Runs `matyan queue ...`.
pub async fn run(args: QueueArgs) -> anyhow::Result<()> {
    match args.command {
        QueueCommand::Import(a) => import(a).await,
    }
}

async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let config = args.common.load(|_| {})?;
    if args.kafka {
        return import_kafka(&args, &config).await;
    }
    if config.storage.backend == Backend::Memory {
        bail!("storage.backend is memory: records imported there would vanish when the command exits");
    }
    let topic = args.topic.clone().unwrap_or_else(|| config.kafka.data_ingestion_topic.clone());
    let budget = config.ingest.txn_bytes().as_usize();
    let reader = open_records(&args.file)?;

    let db = match open_database(&config.storage) {
        Ok(db) => db,
        Err(AppError::Storage(KvError::Locked(what))) => {
            bail!("the store is locked by another process ({what}): stop it (e.g. `matyan serve`) and import again")
        }
        Err(e) => return Err(e).context("cannot open the store"),
    };
    let dirs = Dirs::open(&db).await.context("cannot open the store's directories")?;
    let queue = match args.partitions {
        Some(n) => Queue::open(&db, &dirs.ours, &topic, n).await?,
        None => match Queue::open_existing(&db, &dirs.ours, &topic).await? {
            Some(q) => q,
            None => Queue::open(&db, &dirs.ours, &topic, DEFAULT_PARTITIONS).await?,
        },
    };

    let started = Instant::now();
    let mut tally = Tally::default();
    let mut batch: Vec<Pending> = Vec::new();
    let mut batch_cost = 0usize;
    let mut next_progress = args.progress_every;
    for (index, line) in reader.lines().enumerate() {
        let line_no = index + 1;
        let Some(pending) = read_line(&args.file, line_no, line, tally.records, "appended")? else {
            continue;
        };
        let cost = queue.append_cost(pending.key.as_deref(), &pending.value);
        if !batch.is_empty() && (batch.len() >= args.batch as usize || batch_cost + cost > budget) {
            flush(&queue, &mut batch, &mut tally).await?;
            batch_cost = 0;
            if tally.records >= next_progress {
                progress(&tally, started);
                next_progress = (tally.records / args.progress_every + 1) * args.progress_every;
            }
        }
        batch_cost += cost;
        batch.push(pending);
    }
    flush(&queue, &mut batch, &mut tally).await?;
    summary(queue.topic(), queue.partitions(), &tally, started);
    Ok(())
}

/// Delivery reports awaited at most at once; past it the import waits for the oldest ones.
const MAX_IN_FLIGHT: usize = 10_000;

/// `queue import --kafka`: produces every record to the topic and waits for every delivery.
async fn import_kafka(args: &ImportArgs, config: &Config) -> anyhow::Result<()> {
    if args.partitions.is_some() {
        bail!("--partitions does not apply with --kafka: the topic's partition count is the broker's");
    }
    let topic = args.topic.clone().unwrap_or_else(|| config.kafka.data_ingestion_topic.clone());
    let bootstrap = config.kafka.bootstrap_servers.clone();
    let reader = open_records(&args.file)?;
    let mut client = idempotent_producer_config(client_config(&config.kafka), Duration::from_secs(60));
    client.set("linger.ms", "5");
    let producer: FutureProducer = client.create().context("cannot create the kafka producer")?;
    let partitions = topic_partitions(&producer, &topic)
        .await
        .with_context(|| format!("cannot read the metadata of topic {topic:?} on {bootstrap}"))?;

    let started = Instant::now();
    let mut tally = Tally::default();
    let mut next_progress = args.progress_every;
    let mut in_flight = FuturesUnordered::new();
    for (index, line) in reader.lines().enumerate() {
        let line_no = index + 1;
        let Some(pending) = read_line(&args.file, line_no, line, tally.records, "delivered")? else {
            continue;
        };
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&topic).payload(pending.value.as_slice()).timestamp(pending.timestamp_ms);
        if let Some(key) = pending.key.as_deref() {
            record = record.key(key);
        }
        let (bytes, file_partition) = (pending.value.len() as u64, pending.file_partition);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    in_flight.push(delivery.map(move |r| (r, bytes, file_partition)));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The producer's queue is full: wait for a delivery (or a moment) and retry.
                    record = back;
                    match in_flight.next().await {
                        Some(done) => settle(done, &mut tally)?,
                        None => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                    }
                }
                Err((e, _)) => {
                    return Err(e).with_context(|| {
                        format!("{}: line {line_no}: cannot produce to {topic:?}", args.file.display())
                    });
                }
            }
        }
        while in_flight.len() >= MAX_IN_FLIGHT {
            if let Some(done) = in_flight.next().await {
                settle(done, &mut tally)?;
            }
        }
        if tally.records >= next_progress {
            progress(&tally, started);
            next_progress = (tally.records / args.progress_every + 1) * args.progress_every;
        }
    }
    while let Some(done) = in_flight.next().await {
        settle(done, &mut tally)?;
        if tally.records >= next_progress {
            progress(&tally, started);
            next_progress = (tally.records / args.progress_every + 1) * args.progress_every;
        }
    }
    summary(&topic, partitions, &tally, started);
    Ok(())
}

/// Counts one delivery report, or fails on a record the broker did not take.
fn settle<Canceled>(
    done: (Result<OwnedDeliveryResult, Canceled>, u64, Option<i32>),
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let (report, bytes, file_partition) = done;
    let delivery = match report {
        Ok(Ok(delivery)) => delivery,
        Ok(Err((e, _))) => {
            return Err(e).with_context(|| format!("a record was not delivered ({} delivered before)", tally.records));
        }
        Err(_) => bail!("the producer dropped a delivery report ({} delivered before)", tally.records),
    };
    tally.records += 1;
    tally.bytes += bytes;
    let entry = tally.partitions.entry(delivery.partition).or_insert((0, delivery.offset, delivery.offset));
    entry.0 += 1;
    entry.1 = entry.1.min(delivery.offset);
    entry.2 = entry.2.max(delivery.offset);
    if file_partition.is_some_and(|fp| fp != delivery.partition) {
        tally.moved += 1;
    }
    Ok(())
}

/// The partition count of `topic`, from the broker's metadata; fails when the topic is unknown.
async fn topic_partitions(producer: &FutureProducer, topic: &str) -> anyhow::Result<usize> {
    let producer = producer.clone();
    let name = topic.to_owned();
    let metadata = tokio::task::spawn_blocking(move || {
        producer.client().fetch_metadata(Some(&name), Timeout::After(std::time::Duration::from_secs(10)))
    })
    .await
    .context("metadata task failed")??;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        bail!("topic {topic:?} is not in the broker's metadata");
    };
    if let Some(e) = t.error() {
        bail!("topic {topic:?}: {:?} (create the topic first)", RDKafkaErrorCode::from(e));
    }
    if t.partitions().is_empty() {
        bail!("topic {topic:?} has no partitions (create the topic first)");
    }
    Ok(t.partitions().len())
}

/// Opens `path`, decompressing it when it starts with the gzip magic bytes.
fn open_records(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).with_context(|| format!("cannot read {}", path.display()))?;
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file))))
    } else {
        Ok(Box::new(BufReader::new(file)))
    }
}

/// Reads line `line_no` of `file`: `None` for a blank line, else its record. Errors name the file,
/// the line and how many records were already `verb` (appended, delivered) before it.
fn read_line(
    file: &std::path::Path,
    line_no: usize,
    line: std::io::Result<String>,
    done: u64,
    verb: &str,
) -> anyhow::Result<Option<Pending>> {
    let line = line.with_context(|| format!("{}: cannot read line {line_no}", file.display()))?;
    if line.trim().is_empty() {
        return Ok(None);
    }
    parse_line(&line)
        .map(Some)
        .with_context(|| format!("{}: line {line_no} ({done} records {verb} before it)", file.display()))
}

fn parse_line(line: &str) -> anyhow::Result<Pending> {
    let s: SampleLine = serde_json::from_str(line).context("not a record object")?;
    let key = s.key_b64.as_deref().map(|k| BASE64.decode(k)).transpose().context("key_b64 is not base64")?;
    let value = BASE64.decode(&s.value_b64).context("value_b64 is not base64")?;
    Ok(Pending { key, value, timestamp_ms: s.timestamp_ms, file_partition: s.partition })
}

async fn flush(queue: &Queue, batch: &mut Vec<Pending>, tally: &mut Tally) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let records: Vec<AppendRecord<'_>> =
        batch.iter().map(|p| (p.key.as_deref(), p.value.as_slice(), p.timestamp_ms)).collect();
    let placed = queue
        .append(&records)
        .await
        .with_context(|| format!("cannot append {} records ({} appended before them)", batch.len(), tally.records))?;
    for (p, &(partition, offset)) in batch.iter().zip(&placed) {
        tally.records += 1;
        tally.bytes += p.value.len() as u64;
        let entry = tally.partitions.entry(partition).or_insert((0, offset, offset));
        entry.0 += 1;
        entry.1 = entry.1.min(offset);
        entry.2 = entry.2.max(offset);
        if p.file_partition.is_some_and(|fp| fp != partition) {
            tally.moved += 1;
        }
    }
    batch.clear();
    Ok(())
}

fn progress(tally: &Tally, started: Instant) {
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "queue import: {} records, {:.1} MB appended ({:.0} records/s)",
        tally.records,
        tally.bytes as f64 / 1e6,
        tally.records as f64 / secs
    );
}

fn summary(topic: &str, partitions: impl std::fmt::Display, tally: &Tally, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "appended {} records ({:.1} MB of values) to topic {} ({} partitions) in {:.2} s",
        tally.records,
        tally.bytes as f64 / 1e6,
        topic,
        partitions,
        secs
    );
    for (partition, (count, first, last)) in &tally.partitions {
        println!("  partition {partition}: {count} records at offsets {first}..={last}");
    }
    if tally.moved > 0 {
        println!(
            "  note: {} records landed on another partition number than in the file \
             (the dumped topic had another partition count)",
            tally.moved
        );
    }
}
