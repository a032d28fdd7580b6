//! Where the gateway's records go, acknowledged only once durable: [`RecordSink`], with the
//! embedded queue ([`QueueSink`]) and Kafka ([`KafkaSink`]) behind it.
//!
//! Records of concurrent frames share the work: the queue sink's one appender task takes every
//! frame waiting when it starts a transaction (group commit, bounded by `gateway.append_batch_bytes`),
//! and the Kafka sink leaves batching to librdkafka (`linger.ms`), so neither pays one round trip
//! per message as the reference gateway does.
//!
//! Order: a run's records are keyed by its id, so they land on one partition; one connection's
//! frames are published one after the other (the SDK is stop-and-wait, and so is the handler), and
//! a frame's records keep their order within the append or the producer's queue.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::ingest::queue::{AppendRecord, Queue};

/// One record for the ingestion topic, keyed by its run id.
#[derive(Debug, Clone)]
pub struct OutRecord {
    /// The Kafka key: the run id.
    pub key: String,
    /// The JSON value.
    pub value: Vec<u8>,
    /// The record timestamp, milliseconds since the epoch.
    pub timestamp_ms: i64,
}

/// Why records could not be made durable. None of them is acknowledged then.
#[derive(Debug, Clone, Error)]
pub enum SinkError {
    /// The embedded queue refused or failed the append (nothing of it was written).
    #[error("queue append failed: {0}")]
    Queue(String),
    /// Kafka did not acknowledge a record within the delivery timeout.
    #[error("kafka delivery failed: {0}")]
    Kafka(String),
    /// The sink is shutting down.
    #[error("the gateway is shutting down")]
    Closed,
}

/// Publishes records to the ingestion topic.
#[async_trait]
pub trait RecordSink: Send + Sync + std::fmt::Debug {
    /// Publishes `records` in order and returns once every one is durable: committed to the
    /// embedded queue, or acknowledged by every in-sync replica.
    async fn publish(&self, records: Vec<OutRecord>) -> Result<(), SinkError>;

    /// The sink's name, for logs and the readiness probe.
    fn name(&self) -> &'static str;
}

struct Request {
    records: Vec<OutRecord>,
    cost: usize,
    done: oneshot::Sender<Result<(), SinkError>>,
}

/// The embedded queue behind one appender task that commits the frames waiting together.
#[derive(Clone)]
pub struct QueueSink {
    tx: mpsc::Sender<Request>,
    queue: Queue,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("records", &self.records.len()).field("cost", &self.cost).finish()
    }
}

/// Frames waiting for the appender at most; further publishers wait for room.
const QUEUE_SINK_BACKLOG: usize = 1024;

impl QueueSink {
    /// Starts the appender task on the current tokio runtime. One transaction takes the waiting
    /// frames up to `batch_bytes` of [`Queue::append_cost`] (a larger frame goes alone).
    pub fn start(queue: Queue, batch_bytes: usize) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_SINK_BACKLOG);
        tokio::spawn(appender(queue.clone(), rx, batch_bytes));
        Self { tx, queue }
    }
}

impl std::fmt::Debug for QueueSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSink").field("topic", &self.queue.topic()).finish_non_exhaustive()
    }
}

#[async_trait]
impl RecordSink for QueueSink {
    async fn publish(&self, records: Vec<OutRecord>) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        let cost = records.iter().map(|r| self.queue.append_cost(Some(r.key.as_bytes()), &r.value)).sum();
        let (done, answer) = oneshot::channel();
        self.tx.send(Request { records, cost, done }).await.map_err(|_| SinkError::Closed)?;
        answer.await.map_err(|_| SinkError::Closed)?
    }

    fn name(&self) -> &'static str {
        "embedded_queue"
    }
}

async fn appender(queue: Queue, mut rx: mpsc::Receiver<Request>, batch_bytes: usize) {
    let mut carry: Option<Request> = None;
    loop {
        let first = match carry.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        let mut cost = first.cost;
        let mut batch = vec![first];
        while cost < batch_bytes {
            match rx.try_recv() {
                Ok(r) if cost + r.cost > batch_bytes => {
                    carry = Some(r);
                    break;
                }
                Ok(r) => {
                    cost += r.cost;
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let records: Vec<AppendRecord<'_>> = batch
            .iter()
            .flat_map(|r| r.records.iter().map(|o| (Some(o.key.as_bytes()), o.value.as_slice(), o.timestamp_ms)))
            .collect();
        let result = queue.append(&records).await.map(|_| ()).map_err(|e| SinkError::Queue(e.to_string()));
        if let Err(e) = &result {
            tracing::warn!(error = %e, frames = batch.len(), records = records.len(), "gateway append failed");
        }
        drop(records);
        for r in batch {
            // A publisher that went away (its connection closed) no longer waits for the answer.
            let _ = r.done.send(result.clone());
        }
    }
}

/// An idempotent Kafka producer (`acks=all`, murmur2 partitioner) on the ingestion topic.
pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink").field("topic", &self.topic).finish_non_exhaustive()
    }
}

/// How long a publisher waits for room in a full producer queue before trying again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

impl KafkaSink {
    /// A producer with `base` settings (brokers, security) publishing to `topic`; a record not
    /// acknowledged within `delivery_timeout` fails its frame.
    pub fn new(
        base: rdkafka::ClientConfig,
        topic: &str,
        delivery_timeout: Duration,
        linger: Duration,
    ) -> Result<Self, KafkaError> {
        let mut config = crate::ingest::kafka::idempotent_producer_config(base, delivery_timeout);
        config.set("linger.ms", linger.as_millis().to_string());
        Ok(Self { producer: config.create()?, topic: topic.to_owned() })
    }

    /// Waits until every queued record is delivered or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}

#[async_trait]
impl RecordSink for KafkaSink {
    async fn publish(&self, records: Vec<OutRecord>) -> Result<(), SinkError> {
        // Enqueued one by one in order (a full queue pauses this frame, it never reorders it), then
        // every delivery is awaited.
        let mut deliveries = Vec::with_capacity(records.len());
        for r in &records {
            let mut record =
                FutureRecord::to(&self.topic).key(r.key.as_bytes()).payload(&r.value).timestamp(r.timestamp_ms);
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                    }
                    Err((e, _)) => return Err(SinkError::Kafka(e.to_string())),
                }
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(SinkError::Kafka(e.to_string())),
                Err(_) => return Err(SinkError::Closed),
            }
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "kafka"
    }
}

/// A sink shared by the gateway and the REST routes that publish `delete_run`.
pub type SharedSink = Arc<dyn RecordSink>;
