//! Where the control consumer sends records it cannot act on: the dead-letter topic with origin
//! headers (`matyan control`, `serve --source kafka`), or our keyspace under
//! `("control_dlq", partition, offset)` (`matyan serve` on the embedded queue).
//!
//! Like ingestion's, a dead letter is durable before the record's offset counts as done, and
//! writing it again on a replay is harmless (same key, or a duplicate on the topic).

use crate::clock::now_secs;
use crate::ingest::apply::{Applier, ApplyError, DeadLetter};
use crate::ingest::dlq::{DeadLetterError, EmbeddedDeadLetters, KafkaDeadLetters, Rejected};
use crate::storage::kv::{Database, RetryOptions};

/// The dead-letter sink of the control consumer.
#[derive(Clone)]
pub enum ControlDeadLetters {
    /// The dead-letter topic.
    Kafka(KafkaDeadLetters),
    /// Our directory of the store (its `db`, `applier` and `retry`).
    Embedded(Box<EmbeddedDeadLetters>),
}

impl std::fmt::Debug for ControlDeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlDeadLetters::Kafka(k) => f.debug_tuple("Kafka").field(&k.topic()).finish(),
            ControlDeadLetters::Embedded(_) => f.write_str("Embedded"),
        }
    }
}

impl ControlDeadLetters {
    /// The sink writing to our keyspace of `db`.
    pub fn embedded(db: Database, applier: Applier, retry: RetryOptions) -> Self {
        ControlDeadLetters::Embedded(Box::new(EmbeddedDeadLetters { db, applier, retry }))
    }

    /// Writes one dead letter and returns once it is durable.
    pub async fn send(&self, rejected: &Rejected<'_>) -> Result<(), DeadLetterError> {
        match self {
            ControlDeadLetters::Kafka(k) => k.send(rejected).await?,
            ControlDeadLetters::Embedded(e) => {
                let EmbeddedDeadLetters { db, applier, retry } = &**e;
                let letter = DeadLetter {
                    reason: rejected.reason.to_owned(),
                    key: rejected.key.map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: Some(rejected.value.to_vec()),
                    timestamp: now_secs(),
                    message_type: rejected.message_type.map(str::to_owned),
                    detail: rejected.detail.clone(),
                };
                let (letter, partition, offset) = (&letter, rejected.partition, rejected.offset);
                db.run(retry, |tx| async move {
                    applier.write_control_dead_letter(&tx, partition, offset, letter)?;
                    Ok::<(), ApplyError>(())
                })
                .await?;
            }
        }
        tracing::warn!(
            topic = rejected.topic,
            partition = rejected.partition,
            offset = rejected.offset,
            reason = rejected.reason,
            detail = %rejected.detail,
            "control event dead-lettered"
        );
        Ok(())
    }
}
