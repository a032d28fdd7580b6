//! `matyan serve`: every role in one process on one port: the SDK gateway, ingestion, the control
//! workers (blob cleanup of deleted runs), the REST API, probes and metrics, on the configured storage (embedded by default), until SIGINT or
//! SIGTERM.
//!
//! With `ingest.source = "embedded"` (the default) the gateway appends to the embedded durable
//! queue and the pipeline consumes it; with `"kafka"` (`--source kafka`) the gateway and the REST
//! deletions produce to `kafka.data_ingestion_topic` and the pipeline consumes that topic instead,
//! so the process can also sit behind the reference gateway. The control workers read the
//! embedded queue's control topic (fed by the outbox publisher they bring) or, with `"kafka"`,
//! `kafka.control_events_topic` in the group `control.consumer_group`.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use matyan::actors::{IngestPipeline, PipelineConfig, PipelineHandle};
use matyan::app::AppState;
use matyan::config::IngestSource;
use matyan::gateway::{Gateway, QueueSink, RecordSink};
use matyan::ingest::queue::append_retry;
use matyan::ingest::queue::{DEFAULT_PARTITIONS, INGESTION_GROUP};
use matyan::ingest::queue_trim::{QueueTrimmer, TrimSettings};
use matyan::ingest::{EmbeddedSource, Queue};

use super::common;
use super::control_workers::Control;
use super::kafka_ingest::KafkaIngest;
use super::{ConfigArgs, ListenArgs};

/// Flags of `matyan serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: ConfigArgs,
    #[command(flatten)]
    pub listen: ListenArgs,
    /// Enables the chaos admin route `POST /admin/chaos/kill/` [default: ingest.chaos].
    #[arg(long)]
    pub chaos: bool,
    /// What to ingest: the embedded queue, or the Kafka topic (brokers from
    /// KAFKA_BOOTSTRAP_SERVERS) [default: ingest.source, i.e. embedded].
    #[arg(long, value_enum, value_name = "SOURCE")]
    pub source: Option<IngestSource>,
}

/// The ingestion this process runs.
enum Ingest {
    Embedded(PipelineHandle),
    Kafka(Box<KafkaIngest>),
}

/// Runs the server until a shutdown signal, then removes `serve.addr` and closes the store.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.common.load(|c| {
        args.listen.apply(c);
        if args.chaos {
            c.ingest.chaos = true;
        }
        if let Some(source) = args.source {
            c.ingest.source = source;
        }
    })?;
    let handle = common::install_metrics(&config)?;
    let data_dir = config.storage.data_dir.clone();
    let host = config.server.host.clone();
    let port = config.server.port;
    let ui = matyan::http::ui::UiBuild::load(&config.ui)?;
    let state = common::open_state(config, handle).await?.with_ui(ui);
    let (state, ingest, control) = match state.config.ingest.source {
        IngestSource::Embedded => {
            let queue = ingestion_queue(&state).await?;
            let sink = QueueSink::start(queue.clone(), state.config.gateway.append_batch_bytes);
            let pipeline = start_embedded_ingest(&state, queue).await?;
            let control = Control::start_embedded(&state).await?;
            let state =
                with_gateway(state, Arc::new(sink)).with_pipeline(pipeline.clone()).with_control(control.handle());
            (state, Ingest::Embedded(pipeline), control)
        }
        IngestSource::Kafka => {
            let sink = common::kafka_sink(&state.config)?;
            let ingest = KafkaIngest::start(&state)?;
            let control = Control::start_kafka(&state)?;
            let state =
                with_gateway(state, Arc::new(sink)).with_pipeline(ingest.pipeline()).with_control(control.handle());
            (state, Ingest::Kafka(Box::new(ingest)), control)
        }
    };
    let gateway = state.gateway.clone();
    let trimmer = state.config.queue.trim_interval().map(|interval| {
        let ours = state.layout.dirs.ours.clone();
        QueueTrimmer::spawn(state.db.clone(), ours, interval, TrimSettings::from_config(&state.config.queue))
    });

    let (listener, _) = common::bind(&host, port).await?;
    let served = common::serve_api_until_signal(listener, state, &data_dir).await;
    // Open SDK connections end after the frame they are handling (every answered frame is
    // durable), then ingestion stops before the store closes: every run flushed, every watermark
    // committed.
    if let Some(gateway) = gateway {
        gateway.close_connections();
    }
    let drained = match ingest {
        Ingest::Embedded(pipeline) => pipeline.shutdown().await.context("ingest pipeline did not shut down cleanly"),
        Ingest::Kafka(ingest) => ingest.shutdown().await,
    };
    // After ingestion, so the outbox events of its last deletions are published first.
    let controlled = control.shutdown().await;
    if let Some(trimmer) = trimmer {
        trimmer.stop();
    }
    served?;
    drained?;
    controlled?;
    // The router (and with it the last handle on the store) was dropped when serving ended: every
    // committed transaction is already synced, so dropping closes the store cleanly.
    tracing::info!("stopped");
    Ok(())
}

/// The state with a gateway publishing to `sink` and storing uploads in the blob store.
fn with_gateway(state: AppState, sink: Arc<dyn RecordSink>) -> AppState {
    let gateway = Gateway::new(&state.config, sink, Arc::clone(&state.blobs.store));
    state.with_gateway(gateway)
}

/// The embedded queue's ingestion topic, created with 6 partitions if absent, retried within
/// `[storage.retry]`'s time budget.
async fn ingestion_queue(state: &AppState) -> anyhow::Result<Queue> {
    let topic = state.config.kafka.data_ingestion_topic.as_str();
    let ours = &state.layout.dirs.ours;
    let queue = match Queue::open_existing(&state.db, ours, topic).await? {
        Some(queue) => queue,
        None => Queue::open(&state.db, ours, topic, DEFAULT_PARTITIONS).await?,
    };
    Ok(queue.with_retry(append_retry(&state.config.storage.retry.options())))
}

/// Starts the ingest pipeline on the embedded `queue` as the consumer group `ingestion-workers`.
async fn start_embedded_ingest(state: &AppState, queue: Queue) -> anyhow::Result<PipelineHandle> {
    let topic = queue.topic().to_owned();
    let partitions = queue.partitions();
    let source = EmbeddedSource::new(queue, INGESTION_GROUP)
        .await
        .with_context(|| format!("cannot open the consumer of topic {topic:?}"))?;
    let pipeline = IngestPipeline::start(
        state.db.clone(),
        (*state.layout).clone(),
        Arc::new(source),
        PipelineConfig::from_config(&state.config),
    )
    .context("cannot start the ingest pipeline")?;
    tracing::info!(
        topic,
        partitions,
        group = INGESTION_GROUP,
        chaos = state.config.ingest.chaos,
        "ingest pipeline consuming the embedded queue"
    );
    Ok(pipeline)
}
