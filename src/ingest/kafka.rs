//! The Kafka [`Source`]: a consumer in a group with manual commits and an epoch fence on revoked partitions.
//!
//! [`KafkaSource`] consumes one topic (`data-ingestion`) in one consumer group (`ingestion-workers`)
//! with `enable.auto.commit=false`, `enable.auto.offset.store=false` and
//! `auto.offset.reset=earliest`, and commits "next offset to read" per partition when the caller
//! says a prefix of the partition is applied.
//!
//! # The fence
//!
//! Every assignment of a partition to this consumer gets an *epoch*, a number unique within the
//! source (a counter, never reused). [`AssignmentEvent::Assigned`] hands the caller a [`Lease`]
//! `(partition, epoch)` per partition; [`KafkaSource::commit_fenced`] takes the lease and refuses
//! with [`KafkaSourceError::StaleEpoch`] when the partition was revoked since (it is no longer
//! assigned, or assigned again under a newer epoch). The check and the bookkeeping happen under
//! the lock the rebalance callback takes, so a revocation is either before the check (the commit is
//! refused) or after it (the commit was made while the partition was ours); a revocation that
//! arrives during a commit waits for it, which librdkafka bounds (a commit waiting for an
//! unavailable coordinator gives up after `session.timeout.ms`). A flush that was in
//! flight when its partition moved to another consumer therefore cannot move the group's offset:
//! the new owner's commits are the only ones that count. Data written by that late flush is safe
//! anyway: each run's transaction records its applied `(partition, offset)` (see
//! [`crate::ingest::apply`]), so the new owner's replay of it is skipped.
//!
//! Rebalances run inside [`Source::poll`] (librdkafka serves its rebalance callback from the poll
//! of the consumer queue), in [`ConsumerContext::pre_rebalance`] / `post_rebalance`:
//! - on revoke, the source first commits the offsets the caller *staged* for those partitions
//!   ([`KafkaSource::stage`]) and not yet committed, synchronously, as Kafka's
//!   `onPartitionsRevoked` + `commitSync` idiom does; then it drops the partitions' epochs and
//!   queues [`AssignmentEvent::Revoked`];
//! - on assign, it gives each partition a fresh epoch and queues [`AssignmentEvent::Assigned`].
//!
//! With the default (eager) assignment protocol every rebalance revokes all partitions and assigns
//! the new set, so a partition kept across a rebalance also gets a new epoch: commits under the old
//! lease are refused and the caller picks up the new lease from the `Assigned` event.
//!
//! # How a pipeline reacts
//!
//! After each [`Source::poll`], call [`Source::take_assignment_events`] (or
//! [`KafkaSource::take_events`]) and handle the events in order, before routing the poll's records:
//! - `Revoked(partitions)`: stop routing records of those partitions and drop every
//!   per-partition state, buffered records included: the new owner reads them again from the
//!   group's committed offset, and the per-run checkpoints skip what was applied here. A flush
//!   still in flight may finish; its commit gets `StaleEpoch` from `commit_fenced`, which the
//!   pipeline logs and ignores. (A pipeline that wants to keep its progress can instead flush at
//!   once and [`stage`](KafkaSource::stage) the next offsets before the revocation: the revocation
//!   callback commits staged offsets while the partitions are still ours.)
//! - `Assigned(leases)`: start per-partition state with the lease; records of these partitions
//!   come from the group's committed offset (or the earliest, for a new group).
//!
//! A poll never returns a record read under a lease that the same poll revoked: such records are
//! dropped before the poll returns, so every record it returns belongs to a current lease and can
//! be routed to the state the events just started.
//!
//! Committing after every flush keeps the replay after a rebalance short; staging lets a pipeline
//! commit less often without losing progress on a revocation.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;

use crate::config::KafkaConfig;
pub use crate::ingest::source::{AssignmentEvent, Lease};
use crate::ingest::source::{Backlog, Record, Source, SourceError};

/// How long a blocking seek waits for librdkafka.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long each broker query of a backlog reading (committed offsets, watermarks) may wait.
const BACKLOG_TIMEOUT: Duration = Duration::from_secs(5);

pub use super::source_error::KafkaSourceError;

/// One assigned partition's fence state.
#[derive(Debug, Clone, Copy)]
struct Slot {
    epoch: u64,
    /// The highest next-offset staged by the caller.
    staged: Option<i64>,
    /// The highest next-offset committed through this source under this epoch.
    committed: Option<i64>,
}

/// Epochs, staged offsets and pending events, shared by the source and its rebalance callbacks.
#[derive(Debug, Default)]
struct Fence {
    last_epoch: u64,
    slots: BTreeMap<i32, Slot>,
    events: VecDeque<AssignmentEvent>,
}

impl Fence {
    fn check(&self, lease: Lease) -> Result<(), KafkaSourceError> {
        let current = self.slots.get(&lease.partition).map(|s| s.epoch);
        if current == Some(lease.epoch) {
            Ok(())
        } else {
            Err(KafkaSourceError::StaleEpoch { partition: lease.partition, epoch: lease.epoch, current })
        }
    }
}

/// The consumer context: turns librdkafka's rebalance callbacks into fence updates and events.
pub struct FenceContext {
    topic: String,
    fence: Arc<Mutex<Fence>>,
}

impl ClientContext for FenceContext {}

impl FenceContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        let mut out: Vec<i32> =
            tpl.elements().iter().filter(|e| e.topic() == self.topic).map(|e| e.partition()).collect();
        out.sort_unstable();
        out
    }
}

impl ConsumerContext for FenceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else { return };
        let partitions = self.partitions(tpl);
        let mut fence = self.fence.lock();
        // Commit what the caller staged and not yet committed while the partitions are still ours.
        let mut pending = TopicPartitionList::new();
        for p in &partitions {
            if let Some(slot) = fence.slots.get(p)
                && let Some(staged) = slot.staged.filter(|s| slot.committed.is_none_or(|c| *s > c))
                && let Err(e) = pending.add_partition_offset(&self.topic, *p, Offset::Offset(staged))
            {
                tracing::warn!(partition = *p, error = %e, "cannot stage offset for the revocation commit");
            }
        }
        if pending.count() > 0 {
            match consumer.commit(&pending, CommitMode::Sync) {
                Ok(()) => tracing::info!(partitions = ?partitions, "committed staged offsets before revocation"),
                Err(e) => tracing::warn!(error = %e, "commit of staged offsets before revocation failed"),
            }
        }
        for p in &partitions {
            fence.slots.remove(p);
        }
        fence.events.push_back(AssignmentEvent::Revoked(partitions.clone()));
        drop(fence);
        crate::metrics::kafka_rebalance("revoked", partitions.len());
        tracing::info!(topic = %self.topic, partitions = ?partitions, "partitions revoked");
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = self.partitions(tpl);
                let mut fence = self.fence.lock();
                let mut leases = Vec::with_capacity(partitions.len());
                for p in partitions {
                    fence.last_epoch += 1;
                    let epoch = fence.last_epoch;
                    fence.slots.insert(p, Slot { epoch, staged: None, committed: None });
                    leases.push(Lease { partition: p, epoch });
                }
                fence.events.push_back(AssignmentEvent::Assigned(leases.clone()));
                drop(fence);
                crate::metrics::kafka_rebalance("assigned", leases.len());
                tracing::info!(topic = %self.topic, leases = ?leases, "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance failed"),
        }
    }
}

/// Builds the client settings every Kafka client of ours shares: brokers and, when set, the
/// security protocol and SASL settings (`KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*`).
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap_servers);
    let protocol = cfg.security_protocol.trim();
    if !protocol.is_empty() {
        c.set("security.protocol", protocol.to_ascii_lowercase());
    }
    let mechanism = cfg.sasl_mechanism.trim();
    if !mechanism.is_empty() {
        c.set("sasl.mechanism", mechanism.to_ascii_uppercase());
    }
    if !cfg.sasl_username.is_empty() {
        c.set("sasl.username", &cfg.sasl_username);
        c.set("sasl.password", &cfg.sasl_password);
    }
    c
}

/// The settings of our producers over `base` (brokers, security): idempotent with `acks=all`,
/// Kafka's murmur2 partitioner (a key lands on the partition the Java client picks), and
/// `delivery_timeout` per message.
pub fn idempotent_producer_config(base: ClientConfig, delivery_timeout: Duration) -> ClientConfig {
    let mut config = base;
    config
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", delivery_timeout.as_millis().to_string());
    config
}

/// A [`Source`] over a Kafka consumer group, with fenced commits (see the module docs).
pub struct KafkaSource {
    consumer: Arc<StreamConsumer<FenceContext>>,
    topic: String,
    group: String,
    fence: Arc<Mutex<Fence>>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource").field("topic", &self.topic).field("group", &self.group).finish()
    }
}

impl KafkaSource {
    /// Creates the source of the configured group on the data-ingestion topic, with the
    /// configured session timeout and heartbeat, and subscribes.
    pub fn from_config(cfg: &KafkaConfig) -> Result<Self, KafkaSourceError> {
        let mut base = client_config(cfg);
        base.set("session.timeout.ms", cfg.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", cfg.heartbeat_interval_ms.to_string());
        Self::new(base, &cfg.consumer_group, &cfg.data_ingestion_topic)
    }

    /// Creates a consumer in `group` with `base` settings (brokers, security; see
    /// [`client_config`]) and subscribes it to `topic`. The settings that make commits ours
    /// (`enable.auto.commit=false`, `enable.auto.offset.store=false`) and the reference's
    /// `auto.offset.reset=earliest` override whatever `base` says.
    pub fn new(base: ClientConfig, group: &str, topic: &str) -> Result<Self, KafkaSourceError> {
        let fence = Arc::new(Mutex::new(Fence::default()));
        let context = FenceContext { topic: topic.to_owned(), fence: Arc::clone(&fence) };
        let mut config = base;
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        let consumer: StreamConsumer<FenceContext> =
            config.create_with_context(context).map_err(KafkaSourceError::client("create consumer"))?;
        consumer.subscribe(&[topic]).map_err(KafkaSourceError::client("subscribe"))?;
        tracing::info!(topic, group, "kafka source subscribed");
        Ok(Self { consumer: Arc::new(consumer), topic: topic.to_owned(), group: group.to_owned(), fence })
    }

    /// Returns the topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Returns the consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Removes and returns the assignment changes seen since the last call, oldest first.
    pub fn take_events(&self) -> Vec<AssignmentEvent> {
        self.fence.lock().events.drain(..).collect()
    }

    /// Returns the current leases, in partition order.
    pub fn leases(&self) -> Vec<Lease> {
        self.fence.lock().slots.iter().map(|(p, s)| Lease { partition: *p, epoch: s.epoch }).collect()
    }

    /// Returns the current lease of `partition`, `None` when it is not assigned.
    pub fn lease(&self, partition: i32) -> Option<Lease> {
        self.fence.lock().slots.get(&partition).map(|s| Lease { partition, epoch: s.epoch })
    }

    /// Records `next_offset` as applied under `lease` without committing it now: the next
    /// [`commit_fenced`](Self::commit_fenced) of the partition or its revocation commits it.
    /// Refused with [`KafkaSourceError::StaleEpoch`] once the lease is stale.
    pub fn stage(&self, lease: Lease, next_offset: i64) -> Result<(), SourceError> {
        if next_offset < 0 {
            return Err(SourceError::InvalidOffset { partition: lease.partition, offset: next_offset });
        }
        let mut fence = self.fence.lock();
        fence.check(lease)?;
        if let Some(slot) = fence.slots.get_mut(&lease.partition) {
            slot.staged = Some(slot.staged.map_or(next_offset, |s| s.max(next_offset)));
        }
        Ok(())
    }

    /// Commits `next_offset` (one past the last record applied) of `lease.partition` for the
    /// group, unless the lease is stale: then nothing is committed and the error is
    /// [`KafkaSourceError::StaleEpoch`]. The commit is synchronous (it returns once the broker
    /// acknowledged it) and runs on a blocking thread.
    pub async fn commit_fenced(&self, lease: Lease, next_offset: i64) -> Result<(), SourceError> {
        if next_offset < 0 {
            return Err(SourceError::InvalidOffset { partition: lease.partition, offset: next_offset });
        }
        let consumer = Arc::clone(&self.consumer);
        let fence = Arc::clone(&self.fence);
        let topic = self.topic.clone();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || -> Result<(), KafkaSourceError> {
            // The lock is held across the broker call so a revocation cannot slip between the
            // check and the commit: the rebalance callback waits for the commit to finish.
            let mut fence = fence.lock();
            fence.check(lease)?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, lease.partition, Offset::Offset(next_offset))
                .map_err(KafkaSourceError::client("commit"))?;
            consumer.commit(&tpl, CommitMode::Sync).map_err(KafkaSourceError::client("commit"))?;
            if let Some(slot) = fence.slots.get_mut(&lease.partition) {
                slot.committed = Some(slot.committed.map_or(next_offset, |c| c.max(next_offset)));
            }
            Ok(())
        })
        .await
        .map_err(|e| KafkaSourceError::Task { operation: "commit", detail: e.to_string() })?;
        let outcome = match &result {
            Ok(()) => "ok",
            Err(KafkaSourceError::StaleEpoch { .. }) => "stale_epoch",
            Err(_) => "error",
        };
        crate::metrics::kafka_commit(outcome, started.elapsed().as_secs_f64());
        match result {
            Err(e @ KafkaSourceError::StaleEpoch { .. }) => {
                tracing::warn!(partition = lease.partition, epoch = lease.epoch, next_offset, "stale commit refused");
                Err(e.into())
            }
            other => Ok(other?),
        }
    }

    /// Drops the subscription: the revocation (which commits staged offsets) runs on the next
    /// [`Source::poll`]. Dropping the source also closes the consumer: librdkafka's close serves
    /// the revocation and leaves the group, blocking the dropping thread until it is done, so the
    /// partitions move at once instead of after the session timeout.
    pub fn unsubscribe(&self) {
        self.consumer.unsubscribe();
    }

    fn single(&self, partition: i32) -> Result<TopicPartitionList, SourceError> {
        if !self.fence.lock().slots.contains_key(&partition) {
            return Err(SourceError::NotAssigned { partition });
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        Ok(tpl)
    }

    /// Converts a message into a record, with the epoch of its partition's lease, if the partition
    /// is assigned.
    fn accept(&self, msg: &rdkafka::message::BorrowedMessage<'_>) -> Option<(u64, Record)> {
        if msg.topic() != self.topic {
            return None;
        }
        // `None`: fetched before a revocation and delivered after it; the new owner reads it again.
        let epoch = self.fence.lock().slots.get(&msg.partition()).map(|s| s.epoch)?;
        let record = Record {
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            timestamp_ms: msg.timestamp().to_millis().unwrap_or(0),
        };
        Some((epoch, record))
    }
}

impl Source for KafkaSource {
    /// Returns up to `max_records` records, waiting at most `timeout` for the first. Rebalance
    /// callbacks run inside this call; read their events with [`KafkaSource::take_events`]. Records
    /// read before a revocation of their partition in this call are dropped (they belong to a
    /// stale lease).
    async fn poll(&self, max_records: usize, timeout: Duration) -> Result<Vec<Record>, SourceError> {
        let mut out: Vec<(u64, Record)> = Vec::new();
        if max_records == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + timeout;
        while out.len() < max_records {
            let next = if out.is_empty() {
                let remaining = deadline.saturating_duration_since(Instant::now());
                tokio::time::timeout(remaining, self.consumer.recv()).await.ok()
            } else {
                // Drain what is already fetched without waiting again.
                self.consumer.recv().now_or_never()
            };
            let Some(next) = next else { break };
            match next {
                Ok(msg) => {
                    if let Some(record) = self.accept(&msg) {
                        out.push(record);
                    }
                }
                Err(e) => {
                    // Broker-side errors (a partition leader moving, a fetch failure) are reported
                    // here and librdkafka retries by itself; a fatal error fails the poll.
                    if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
                        return Err(KafkaSourceError::Client { operation: "poll", source: e }.into());
                    }
                    tracing::warn!(error = %e, "kafka consumer error");
                    if !out.is_empty() {
                        break;
                    }
                }
            }
        }
        // A rebalance during this call revoked (and perhaps re-assigned under a new epoch) some
        // partitions: what was read before it is the new owner's to read again.
        let fence = self.fence.lock();
        let before = out.len();
        let records: Vec<Record> = out
            .into_iter()
            .filter(|(epoch, r)| fence.slots.get(&r.partition).is_some_and(|s| s.epoch == *epoch))
            .map(|(_, r)| r)
            .collect();
        drop(fence);
        if records.len() < before {
            tracing::debug!(dropped = before - records.len(), "records of revoked leases dropped from a poll");
        }
        Ok(records)
    }

    /// Commits under the partition's *current* lease: refused only when the partition is not
    /// assigned. A pipeline that holds a lease should call [`KafkaSource::commit_fenced`], which
    /// also refuses a partition revoked and assigned again since the lease was taken.
    async fn commit(&self, partition: i32, next_offset: i64) -> Result<(), SourceError> {
        let lease = self.lease(partition).ok_or(SourceError::NotAssigned { partition })?;
        self.commit_fenced(lease, next_offset).await
    }

    fn seek(&self, partition: i32, offset: i64) -> Result<(), SourceError> {
        if offset < 0 {
            return Err(SourceError::InvalidOffset { partition, offset });
        }
        self.single(partition)?;
        self.consumer
            .seek(&self.topic, partition, Offset::Offset(offset), Timeout::After(SEEK_TIMEOUT))
            .map_err(|e| SourceError::from(KafkaSourceError::client("seek")(e)))
    }

    fn assignment(&self) -> Vec<i32> {
        self.fence.lock().slots.keys().copied().collect()
    }

    fn pause(&self, partition: i32) -> Result<(), SourceError> {
        let tpl = self.single(partition)?;
        self.consumer.pause(&tpl).map_err(|e| SourceError::from(KafkaSourceError::client("pause")(e)))
    }

    fn resume(&self, partition: i32) -> Result<(), SourceError> {
        let tpl = self.single(partition)?;
        self.consumer.resume(&tpl).map_err(|e| SourceError::from(KafkaSourceError::client("resume")(e)))
    }

    fn take_assignment_events(&self) -> Vec<AssignmentEvent> {
        self.take_events()
    }

    fn lease(&self, partition: i32) -> Option<Lease> {
        KafkaSource::lease(self, partition)
    }

    /// Asks the broker, on a blocking thread, for the group's committed offsets of the assigned
    /// partitions and each one's watermarks: the backlog is the high watermark minus the committed
    /// offset (the low watermark when the group has none, as `auto.offset.reset=earliest` reads).
    async fn backlog(&self) -> Result<Vec<Backlog>, SourceError> {
        let partitions = self.assignment();
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let consumer = Arc::clone(&self.consumer);
        let topic = self.topic.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<Vec<Backlog>, KafkaSourceError> {
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                tpl.add_partition(&topic, *p);
            }
            let committed = consumer
                .committed_offsets(tpl, Timeout::After(BACKLOG_TIMEOUT))
                .map_err(KafkaSourceError::client("committed offsets"))?;
            let mut out = Vec::with_capacity(partitions.len());
            for p in partitions {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p, Timeout::After(BACKLOG_TIMEOUT))
                    .map_err(KafkaSourceError::client("fetch watermarks"))?;
                let group = committed.find_partition(&topic, p).and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
                out.push(Backlog { partition: p, end: high, committed: group.unwrap_or(low).max(low) });
            }
            Ok(out)
        })
        .await
        .map_err(|e| KafkaSourceError::Task { operation: "backlog", detail: e.to_string() })?;
        Ok(result?)
    }

    async fn commit_leased(&self, lease: Lease, next_offset: i64) -> Result<(), SourceError> {
        self.commit_fenced(lease, next_offset).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_fresh_only_under_its_own_epoch() {
        let mut fence = Fence::default();
        fence.slots.insert(2, Slot { epoch: 7, staged: None, committed: None });
        assert!(fence.check(Lease { partition: 2, epoch: 7 }).is_ok());
        let stale = fence.check(Lease { partition: 2, epoch: 6 }).unwrap_err();
        assert!(matches!(stale, KafkaSourceError::StaleEpoch { partition: 2, epoch: 6, current: Some(7) }));
        let gone = fence.check(Lease { partition: 3, epoch: 7 }).unwrap_err();
        assert!(matches!(gone, KafkaSourceError::StaleEpoch { current: None, .. }));
        assert!(!gone.is_retryable());
    }

    #[test]
    fn client_config_carries_security_settings_only_when_set() {
        let mut cfg = KafkaConfig {
            bootstrap_servers: "k:9092".into(),
            data_ingestion_topic: "data-ingestion".into(),
            control_events_topic: "control-events".into(),
            consumer_group: "ingestion-workers".into(),
            dead_letter_topic: "data-ingestion-dlq".into(),
            security_protocol: "SASL_SSL".into(),
            sasl_mechanism: "plain".into(),
            sasl_username: String::new(),
            sasl_password: String::new(),
            session_timeout_ms: 45_000,
            heartbeat_interval_ms: 3_000,
        };
        let c = client_config(&cfg);
        assert_eq!(c.get("bootstrap.servers"), Some("k:9092"));
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("PLAIN"));
        assert_eq!(c.get("sasl.username"), None);
        cfg.sasl_username = "u".into();
        cfg.sasl_password = "p".into();
        let c = client_config(&cfg);
        assert_eq!((c.get("sasl.username"), c.get("sasl.password")), (Some("u"), Some("p")));
    }

    #[test]
    fn every_security_protocol_and_sasl_mechanism_config_accepts_makes_a_client() {
        // librdkafka refuses `ssl`/`sasl_ssl` and SCRAM when built without OpenSSL (it was: the
        // config accepted them and the role failed at start-up). Creating a client does not connect.
        use crate::config::{KAFKA_SASL_MECHANISMS, KAFKA_SECURITY_PROTOCOLS};
        for protocol in KAFKA_SECURITY_PROTOCOLS {
            for mechanism in KAFKA_SASL_MECHANISMS {
                let cfg = KafkaConfig {
                    bootstrap_servers: "127.0.0.1:1".into(),
                    security_protocol: (*protocol).into(),
                    sasl_mechanism: (*mechanism).into(),
                    sasl_username: "u".into(),
                    sasl_password: "p".into(),
                    ..crate::config::Config::load(None, |_| None).unwrap().kafka
                };
                let made = client_config(&cfg).create::<rdkafka::producer::BaseProducer>();
                assert!(made.is_ok(), "{protocol} + {mechanism}: {:?}", made.err());
            }
        }
    }
}
