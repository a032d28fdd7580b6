//! Our own directory, `matyan_rs` (⟨ours⟩): every tag and key shape in it, in one place (after
//! foundationdb-rs `recipes/leader_election/keys.rs`). The reference never reads or writes here;
//! everything is bookkeeping of this implementation. Callers build and decode keys only through
//! [`Ours`]; the values' formats are documented with their owners (linked below).
//!
//! Every key is ⟨ours⟩ followed by a packed FDB tuple whose first element is the tag:
//!
//! | Key | Value | Owner |
//! |---|---|---|
//! | `("schema_version",)` | the layout version of ⟨ours⟩, 8-byte little-endian `i64` ([`SCHEMA_VERSION`]) | here |
//! | `("applied", run, partition)` | mp(int): the run's highest applied offset in the partition | [`crate::ingest::apply`] |
//! | `("outbox", partition, offset)` | mp(map): a control event not yet published | [`crate::ingest::outbox`] |
//! | `("dlq", partition, offset)` | mp(map): a dead letter | [`crate::ingest::dlq`] |
//! | `("control_dlq", partition, offset)` | mp(map): a dead letter of the control consumer (positions of `control-events`) | [`crate::control`] |
//! | `("queue_meta", topic, "partitions")` | 8-byte LE: the topic's partition count | [`crate::ingest::queue`] |
//! | `("queue_end", topic, partition)` | 8-byte LE: the next offset to assign | [`crate::ingest::queue`] |
//! | `("queue_start", topic, partition)` | 8-byte LE: the first offset not trimmed | [`crate::ingest::queue`] |
//! | `("queue", topic, partition, offset, chunk)` | a chunk of the record's frame | [`crate::ingest::queue`] |
//! | `("consumer", group, topic, partition)` | 8-byte LE: the group's committed offset | [`crate::ingest::queue`] |
//! | `("job_lock",)` | mp({job, holder, token, expires_at}): the one storage job lock | [`crate::storage::job_lock`] |
//! | `("job_progress", job)` | mp({params, phase, cursor, done, cutoff, started_at}): how far a job got | [`crate::maintenance`] |
//!
//! Outbox events recorded by REST handlers (deleting an experiment or a tag) have no source
//! record: their partition is [`REST_PARTITION`] (-1, never a real partition) and their offset the
//! event's time in microseconds, moved past any key already taken.

use crate::storage::kv::{KvError, RetryableError, Transaction};
use crate::storage::tuple::{self, Elem};

/// The layout version of ⟨ours⟩ this build reads and writes. Stores written before the key
/// existed hold no version and have this layout.
pub const SCHEMA_VERSION: i64 = 1;

/// Tag of the schema-version key.
pub const SCHEMA_VERSION_TAG: &str = "schema_version";
/// Tag of checkpoint keys.
pub const APPLIED: &str = "applied";
/// Tag of outbox keys.
pub const OUTBOX: &str = "outbox";
/// Tag of dead-letter keys.
pub const DLQ: &str = "dlq";
/// Tag of the control consumer's dead letters: positions of another topic than ingestion's, so
/// they cannot share [`DLQ`]'s keys.
pub const CONTROL_DLQ: &str = "control_dlq";
/// Tag of a queue topic's partition count.
pub const QUEUE_META: &str = "queue_meta";
/// Tag of a queue partition's end offset.
pub const QUEUE_END: &str = "queue_end";
/// Tag of a queue partition's first untrimmed offset.
pub const QUEUE_START: &str = "queue_start";
/// Tag of queue record chunks.
pub const QUEUE: &str = "queue";
/// Tag of consumer groups' committed offsets.
pub const CONSUMER: &str = "consumer";
/// Tag of the storage job lock. The reference's lock is per job name in ⟨system⟩ and holds only an
/// expiry; ours is one key for every job (and `migrate`), so two jobs never rewrite the store at once.
/// The jobs the reference also runs hold its key too ([`crate::storage::job_lock`]).
pub const JOB_LOCK: &str = "job_lock";
/// Tag of the maintenance jobs' saved progress (the reference's jobs do not resume).
pub const JOB_PROGRESS: &str = "job_progress";

/// The outbox partition of control events recorded by REST handlers (no source record caused
/// them, so no real partition applies).
pub const REST_PARTITION: i32 = -1;

/// Where an outbox event is keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxAt {
    /// At the source record that caused it (a `delete_run`): written once per record, a replay
    /// overwrites it with the same event.
    Record {
        /// The record's partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
    },
    /// At [`REST_PARTITION`] and the first free offset from `micros` on (a REST handler's event:
    /// no record caused it, and two events of one microsecond must both be kept).
    Rest {
        /// The event's time in POSIX microseconds.
        micros: i64,
    },
}

/// A key of ⟨ours⟩ that does not have the shape its tag says, or a value that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OursError {
    /// The key under a tag is not the integers its shape says (`(partition, offset)` under
    /// [`OUTBOX`] and [`DLQ`], `(offset, chunk)` under a queue partition), or they are out of range.
    #[error("{tag} key does not have its shape: {detail}")]
    NotAPosition {
        /// The tag whose shape the key lacks.
        tag: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The schema-version value is not an 8-byte little-endian integer of at least 1.
    #[error("schema version value is not an 8-byte version: {0:02x?}")]
    BadVersion(Vec<u8>),
    /// The store was written by another layout version than this build's.
    #[error("the matyan_rs directory has layout version {stored}; this build reads version {SCHEMA_VERSION}")]
    OtherVersion {
        /// The stored version.
        stored: i64,
    },
}

/// Errors of reading or checking the schema version.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The KV layer failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The stored version does not decode or is not this build's.
    #[error(transparent)]
    Ours(#[from] OursError),
}

impl RetryableError for SchemaError {
    fn kv_error(&self) -> Option<&KvError> {
        match self {
            SchemaError::Kv(e) => Some(e),
            SchemaError::Ours(_) => None,
        }
    }
}

/// The keys of ⟨ours⟩ under one directory prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ours {
    prefix: Vec<u8>,
}

impl Ours {
    /// The keys under the directory prefix `prefix` ([`Dirs::ours`](super::Dirs::ours)).
    pub fn new(prefix: &[u8]) -> Self {
        Self { prefix: prefix.to_vec() }
    }

    /// The directory prefix.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    fn key(&self, elems: &[Elem]) -> Vec<u8> {
        tuple::pack_with_prefix(&self.prefix, elems)
    }

    /// `("schema_version",)`.
    pub fn schema_version(&self) -> Vec<u8> {
        self.key(&[Elem::from(SCHEMA_VERSION_TAG)])
    }

    /// `("applied", run, partition)`: the checkpoint of `run` in `partition`.
    pub fn checkpoint(&self, run: &str, partition: i32) -> Vec<u8> {
        self.key(&[Elem::from(APPLIED), Elem::from(run), Elem::from(partition)])
    }

    /// `("outbox", partition, offset)`: the control event of the record at `partition`/`offset`.
    pub fn outbox(&self, partition: i32, offset: i64) -> Vec<u8> {
        self.key(&[Elem::from(OUTBOX), Elem::from(partition), Elem::from(offset)])
    }

    /// `("dlq", partition, offset)`: the dead letter of the record at `partition`/`offset`.
    pub fn dead_letter(&self, partition: i32, offset: i64) -> Vec<u8> {
        self.key(&[Elem::from(DLQ), Elem::from(partition), Elem::from(offset)])
    }

    /// `("control_dlq", partition, offset)`: a dead letter of the control consumer.
    pub fn control_dead_letter(&self, partition: i32, offset: i64) -> Vec<u8> {
        self.key(&[Elem::from(CONTROL_DLQ), Elem::from(partition), Elem::from(offset)])
    }

    /// The range of every key of `tag` ([`OUTBOX`] or [`DLQ`]), in `(partition, offset)` order.
    pub fn positions(&self, tag: &'static str) -> (Vec<u8>, Vec<u8>) {
        tuple::range(&self.prefix, &[Elem::from(tag)])
    }

    /// Decodes a key of `tag` ([`OUTBOX`] or [`DLQ`]) strictly into its `(partition, offset)`.
    pub fn decode_position(&self, tag: &'static str, key: &[u8]) -> Result<(i32, i64), OursError> {
        let bad = |detail: String| OursError::NotAPosition { tag, detail };
        let base = self.key(&[Elem::from(tag)]);
        let rest = key.strip_prefix(base.as_slice()).ok_or_else(|| bad("another tag".to_owned()))?;
        match tuple::unpack(rest).map_err(|e| bad(e.to_string()))?.as_slice() {
            [Elem::Int(p), Elem::Int(o)] => Ok((
                i32::try_from(*p).map_err(|_| bad(format!("partition {p}")))?,
                i64::try_from(*o).map_err(|_| bad(format!("offset {o}")))?,
            )),
            other => Err(bad(format!("{} elements", other.len()))),
        }
    }

    /// Writes the encoded outbox `event` at `at`, in `tx`: the one writer of outbox keys.
    pub async fn put_outbox(&self, tx: &Transaction, at: OutboxAt, event: &[u8]) -> Result<(), KvError> {
        match at {
            OutboxAt::Record { partition, offset } => tx.set(&self.outbox(partition, offset), event),
            OutboxAt::Rest { micros } => {
                let mut offset = micros;
                loop {
                    let key = self.outbox(REST_PARTITION, offset);
                    if tx.get(&key, false).await?.is_none() {
                        tx.set(&key, event);
                        break;
                    }
                    offset += 1;
                }
            }
        }
        Ok(())
    }

    /// `("queue_meta", topic, "partitions")`.
    pub fn queue_meta(&self, topic: &str) -> Vec<u8> {
        self.key(&[Elem::from(QUEUE_META), Elem::from(topic), Elem::from("partitions")])
    }

    /// `("queue_end", topic, partition)`.
    pub fn queue_end(&self, topic: &str, partition: i32) -> Vec<u8> {
        self.key(&[Elem::from(QUEUE_END), Elem::from(topic), Elem::from(partition)])
    }

    /// `("queue_start", topic, partition)`.
    pub fn queue_start(&self, topic: &str, partition: i32) -> Vec<u8> {
        self.key(&[Elem::from(QUEUE_START), Elem::from(topic), Elem::from(partition)])
    }

    /// `("queue", topic, partition, offset, chunk)`.
    pub fn queue_record(&self, topic: &str, partition: i32, offset: i64, chunk: usize) -> Vec<u8> {
        let elems =
            [Elem::from(QUEUE), Elem::from(topic), Elem::from(partition), Elem::from(offset), Elem::Int(chunk as i128)];
        self.key(&elems)
    }

    /// `("queue",)`: the prefix of every record chunk of every topic (and of nothing else: the
    /// packed string ends with its terminator). Stores created between ADR 0012 and ADR 0013 keep
    /// it apart whole; newer ones keep each partition's prefix apart.
    pub fn queue_records(&self) -> Vec<u8> {
        self.key(&[Elem::from(QUEUE)])
    }

    /// `("queue", topic, partition, offset)`: where the chunks of the record at `offset` start (the
    /// first key at or after every chunk of earlier offsets).
    pub fn queue_offset(&self, topic: &str, partition: i32, offset: i64) -> Vec<u8> {
        self.key(&[Elem::from(QUEUE), Elem::from(topic), Elem::from(partition), Elem::from(offset)])
    }

    /// The key prefix of a queue partition's record chunks, for [`Ours::decode_queue_record`], and
    /// what the store keeps apart for the partition.
    pub fn queue_partition_prefix(&self, topic: &str, partition: i32) -> Vec<u8> {
        self.key(&[Elem::from(QUEUE), Elem::from(topic), Elem::from(partition)])
    }

    /// Decodes a record chunk key of the queue partition whose prefix is `base`
    /// ([`Ours::queue_partition_prefix`]) strictly into its `(offset, chunk)`, without allocating.
    pub fn decode_queue_record(&self, base: &[u8], key: &[u8]) -> Result<(i64, i64), OursError> {
        let bad = |detail: &str| OursError::NotAPosition { tag: QUEUE, detail: detail.to_owned() };
        let rest = key.strip_prefix(base).ok_or_else(|| bad("outside partition"))?;
        let [o, c] = tuple::unpack_ints::<2>(rest).ok_or_else(|| bad("expected (offset, chunk)"))?;
        Ok((
            i64::try_from(o).map_err(|_| bad("offset out of range"))?,
            i64::try_from(c).map_err(|_| bad("chunk out of range"))?,
        ))
    }

    /// The range of every record chunk of a queue partition.
    pub fn queue_partition(&self, topic: &str, partition: i32) -> (Vec<u8>, Vec<u8>) {
        tuple::range(&self.prefix, &[Elem::from(QUEUE), Elem::from(topic), Elem::from(partition)])
    }

    /// `("consumer", group, topic, partition)`.
    pub fn consumer(&self, group: &str, topic: &str, partition: i32) -> Vec<u8> {
        self.key(&[Elem::from(CONSUMER), Elem::from(group), Elem::from(topic), Elem::from(partition)])
    }

    /// `("job_lock",)`: the one storage job lock.
    pub fn job_lock(&self) -> Vec<u8> {
        self.key(&[Elem::from(JOB_LOCK)])
    }

    /// `("job_progress", job)`: where the job named `job` saves how far it got.
    pub fn job_progress(&self, job: &str) -> Vec<u8> {
        self.key(&[Elem::from(JOB_PROGRESS), Elem::from(job)])
    }

    /// The range of every consumer group's committed offsets, in `(group, topic, partition)` order.
    pub fn consumers(&self) -> (Vec<u8>, Vec<u8>) {
        tuple::range(&self.prefix, &[Elem::from(CONSUMER)])
    }

    /// Decodes a consumer key strictly into its `(group, topic, partition)`.
    pub fn decode_consumer(&self, key: &[u8]) -> Result<(String, String, i32), OursError> {
        let bad = |detail: String| OursError::NotAPosition { tag: CONSUMER, detail };
        let base = self.key(&[Elem::from(CONSUMER)]);
        let rest = key.strip_prefix(base.as_slice()).ok_or_else(|| bad("another tag".to_owned()))?;
        match tuple::unpack(rest).map_err(|e| bad(e.to_string()))?.as_slice() {
            [Elem::Str(group), Elem::Str(topic), Elem::Int(p)] => {
                Ok((group.clone(), topic.clone(), i32::try_from(*p).map_err(|_| bad(format!("partition {p}")))?))
            }
            _ => Err(bad("expected (group, topic, partition)".to_owned())),
        }
    }

    /// The range of every queue topic's meta keys, in topic order.
    pub fn queue_metas(&self) -> (Vec<u8>, Vec<u8>) {
        tuple::range(&self.prefix, &[Elem::from(QUEUE_META)])
    }

    /// Decodes a `("queue_meta", topic, "partitions")` key strictly into its topic.
    pub fn decode_queue_meta(&self, key: &[u8]) -> Result<String, OursError> {
        let bad = |detail: String| OursError::NotAPosition { tag: QUEUE_META, detail };
        let base = self.key(&[Elem::from(QUEUE_META)]);
        let rest = key.strip_prefix(base.as_slice()).ok_or_else(|| bad("another tag".to_owned()))?;
        match tuple::unpack(rest).map_err(|e| bad(e.to_string()))?.as_slice() {
            [Elem::Str(topic), Elem::Str(name)] if name == "partitions" => Ok(topic.clone()),
            _ => Err(bad("expected (topic, \"partitions\")".to_owned())),
        }
    }

    /// Reads the stored schema version, strictly decoded (`None`: never written).
    pub async fn read_schema_version(&self, tx: &Transaction) -> Result<Option<i64>, SchemaError> {
        match tx.get(&self.schema_version(), false).await? {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode_schema_version(&bytes)?)),
        }
    }

    /// Fails when the store holds another version than [`SCHEMA_VERSION`] (or one that does not
    /// decode); a store without the key (every store so far) has this layout and passes. Reads
    /// only, so opening a store leaves it as it was.
    pub async fn check_schema_version(&self, tx: &Transaction) -> Result<(), SchemaError> {
        match self.read_schema_version(tx).await? {
            None | Some(SCHEMA_VERSION) => Ok(()),
            Some(stored) => Err(OursError::OtherVersion { stored }.into()),
        }
    }

    /// Writes [`SCHEMA_VERSION`] when no version is stored; fails when another one is. For the
    /// change that first moves a key of ⟨ours⟩: it writes the version its stores then have.
    pub async fn ensure_schema_version(&self, tx: &Transaction) -> Result<(), SchemaError> {
        match self.read_schema_version(tx).await? {
            None => {
                tx.set(&self.schema_version(), &SCHEMA_VERSION.to_le_bytes());
                Ok(())
            }
            Some(SCHEMA_VERSION) => Ok(()),
            Some(stored) => Err(OursError::OtherVersion { stored }.into()),
        }
    }
}

/// Decodes a schema-version value: exactly 8 bytes, little-endian, at least 1.
pub fn decode_schema_version(bytes: &[u8]) -> Result<i64, OursError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| OursError::BadVersion(bytes.to_vec()))?;
    match i64::from_le_bytes(array) {
        v if v >= 1 => Ok(v),
        _ => Err(OursError::BadVersion(bytes.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::kv::Database;

    #[test]
    fn positions_decode_strictly_and_only_under_their_own_tag() {
        let ours = Ours::new(b"\x15\x07");
        assert_eq!(ours.decode_position(OUTBOX, &ours.outbox(REST_PARTITION, 42)), Ok((-1, 42)));
        assert_eq!(ours.decode_position(DLQ, &ours.dead_letter(3, 7)), Ok((3, 7)));
        assert!(ours.decode_position(DLQ, &ours.outbox(3, 7)).is_err(), "another tag");
        let three =
            tuple::pack_with_prefix(ours.prefix(), &[Elem::from(DLQ), Elem::from(1), Elem::from(2), Elem::from(3)]);
        assert!(ours.decode_position(DLQ, &three).is_err(), "three elements");
        let wide = tuple::pack_with_prefix(ours.prefix(), &[Elem::from(DLQ), Elem::Int(1 << 40), Elem::from(2)]);
        assert!(ours.decode_position(DLQ, &wide).is_err(), "a partition beyond i32");
    }

    #[test]
    fn a_schema_version_is_exactly_eight_little_endian_bytes_of_at_least_one() {
        assert_eq!(decode_schema_version(&1i64.to_le_bytes()), Ok(1));
        assert!(decode_schema_version(&[1]).is_err());
        assert!(decode_schema_version(&[1, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_schema_version(&0i64.to_le_bytes()).is_err());
        assert!(decode_schema_version(&(-3i64).to_le_bytes()).is_err());
    }

    #[tokio::test]
    async fn a_store_without_a_version_gets_this_one_and_a_store_of_another_version_is_refused() {
        let db = Database::memory();
        let ours = Ours::new(b"\x15\x07");
        let tx = db.create_trx().expect("tx");
        assert_eq!(ours.read_schema_version(&tx).await.expect("reads"), None);
        ours.ensure_schema_version(&tx).await.expect("written");
        assert_eq!(ours.read_schema_version(&tx).await.expect("reads"), Some(SCHEMA_VERSION));
        ours.ensure_schema_version(&tx).await.expect("the same version is fine");
        tx.set(&ours.schema_version(), &2i64.to_le_bytes());
        let refused = ours.ensure_schema_version(&tx).await.expect_err("another version");
        assert!(refused.to_string().contains("layout version 2"), "{refused}");
    }
}
