//! Storage behind one trait, so the embedded SQLite store and the PostgreSQL/TimescaleDB store
//! serve the same server and pass the same conformance tests (`conformance`).
//!
//! Device ids are u64 on the wire and in this API; SQL engines without unsigned 64-bit integers
//! store the same bits as a signed i64 (`device_id as i64`), so every id round-trips exactly.

pub mod conformance;
pub mod sqlite;

use async_trait::async_trait;
use serde::Serialize;

use crate::dedup::DedupWindow;

/// One stored reading.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Row {
    /// Device the reading came from.
    pub device_id: u64,
    /// Sequence number of the frame that carried it.
    pub seq: u64,
    /// Channel id.
    pub channel: u16,
    /// Quality bits.
    pub quality: u16,
    /// Reading time, microseconds since the Unix epoch.
    pub ts_us: i64,
    /// Value (NaN is stored as SQL NULL and read back as NaN).
    pub value: f64,
}

/// Everything one transaction commits: readings, the dedup windows that now include their frames,
/// and the devices' last-frame times. All of it or none of it becomes durable.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    /// Readings to insert.
    pub rows: Vec<Row>,
    /// Dedup window of every device with a frame in this batch, as of the end of the batch.
    pub dedup: Vec<(u64, DedupWindow)>,
    /// `(device, last frame received at, us)` for presence.
    pub last_seen: Vec<(u64, i64)>,
}

/// Presence change of a device connection.
#[derive(Clone, Debug, PartialEq)]
pub struct Presence {
    /// The device.
    pub device_id: u64,
    /// Whether it is connected now.
    pub online: bool,
    /// When the current (or last) connection started, us since the epoch.
    pub connected_at_us: i64,
    /// When the change happened, us since the epoch.
    pub at_us: i64,
    /// Peer address of the connection.
    pub remote_addr: String,
}

/// What the store knows about a device.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceInfo {
    /// The device.
    pub device_id: u64,
    /// Connected now (as last recorded).
    pub online: bool,
    /// Start of the current or last connection (us), if it ever connected.
    pub connected_at_us: Option<i64>,
    /// Last frame received (us), if any.
    pub last_seen_us: Option<i64>,
    /// Peer address of the current or last connection.
    pub remote_addr: Option<String>,
}

/// Newest reading of one channel.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Latest {
    /// Channel id.
    pub channel: u16,
    /// Reading time (us).
    pub ts_us: i64,
    /// Value.
    pub value: f64,
    /// Quality bits.
    pub quality: u16,
}

/// Raw readings of one device and channel in `[from_us, to_us)`, oldest first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RangeQuery {
    /// The device.
    pub device_id: u64,
    /// The channel.
    pub channel: u16,
    /// Inclusive start (us).
    pub from_us: i64,
    /// Exclusive end (us).
    pub to_us: i64,
    /// Resume after this `(ts_us, seq)` (pagination cursor), if given.
    pub after: Option<(i64, u64)>,
    /// At most this many rows.
    pub limit: u32,
}

/// Aggregate function of an aggregate query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Agg {
    /// Arithmetic mean.
    Avg,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Sum of values.
    Sum,
    /// Number of readings.
    Count,
    /// Value of the earliest reading in the bucket.
    First,
    /// Value of the latest reading in the bucket.
    Last,
}

impl Agg {
    /// Every aggregate function, in declaration order (`agg as usize` indexes it).
    pub const ALL: [Agg; 7] = [
        Agg::Avg,
        Agg::Min,
        Agg::Max,
        Agg::Sum,
        Agg::Count,
        Agg::First,
        Agg::Last,
    ];
}

/// Time-bucketed aggregate of one device and channel over `[from_us, to_us)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AggQuery {
    /// The device.
    pub device_id: u64,
    /// The channel.
    pub channel: u16,
    /// Inclusive start (us).
    pub from_us: i64,
    /// Exclusive end (us).
    pub to_us: i64,
    /// Bucket width (us); buckets start at multiples of it since the epoch.
    pub step_us: i64,
    /// Function applied per bucket.
    pub agg: Agg,
}

/// One aggregate bucket (only buckets with readings are returned).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Bucket {
    /// Bucket start (us).
    pub start_us: i64,
    /// Aggregate value.
    pub value: f64,
    /// Readings in the bucket.
    pub count: u64,
}

/// A token revocation: every token of `subject` issued at or before `issued_before_s` is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Revocation {
    /// Token subject (`device:<id>` or `operator:<name>`), or `jti:<id>` for a single token.
    pub subject: String,
    /// Tokens issued at or before this time (seconds since the epoch) are refused.
    pub issued_before_s: i64,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database engine reported an error.
    #[error("database error: {0}")]
    Database(String),
    /// The store's worker is gone (shut down or crashed).
    #[error("store is closed")]
    Closed,
    /// Stored data could not be read back (corrupt dedup window, ...).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// Opening or migrating the store failed.
    #[error("cannot open store at {path}: {reason}")]
    Open {
        /// Where.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Resolves once a committed batch would survive power loss (see [`Store::commit_batch`]).
#[must_use = "a batch is acked only once it is durable"]
pub struct Durable(Option<tokio::sync::oneshot::Receiver<Result<(), StoreError>>>);

impl Durable {
    /// A batch that was durable when its commit returned.
    pub fn done() -> Durable {
        Durable(None)
    }

    /// A batch made durable by someone else, who answers on `receiver`.
    pub fn pending(receiver: tokio::sync::oneshot::Receiver<Result<(), StoreError>>) -> Durable {
        Durable(Some(receiver))
    }

    /// Waits until the batch is durable. An error means it may not be (a failed fsync): it must
    /// not be acked.
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            None => Ok(()),
            Some(receiver) => receiver.await.unwrap_or(Err(StoreError::Closed)),
        }
    }
}

/// The operations the server needs from a time-series store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Commits the batch's readings, dedup windows and last-seen times in one transaction, and
    /// returns once it is durable.
    async fn write_batch(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.commit_batch(batch).await?.wait().await
    }
    /// Commits like [`write_batch`](Store::write_batch) but returns as soon as the batch is
    /// committed (visible to reads, ordered before every later batch), with a [`Durable`] that
    /// resolves once it is on disk: the caller commits its next batch while the disk flushes
    /// this one, and acks this one after [`Durable::wait`].
    async fn commit_batch(&self, batch: WriteBatch) -> Result<Durable, StoreError>;
    /// The committed dedup window of a device (`window` is the configured size), if any.
    async fn dedup_window(
        &self,
        device_id: u64,
        window: u32,
    ) -> Result<Option<DedupWindow>, StoreError>;
    /// Records a connect or disconnect.
    async fn set_presence(&self, presence: Presence) -> Result<(), StoreError>;
    /// Every known device, by id.
    async fn devices(&self) -> Result<Vec<DeviceInfo>, StoreError>;
    /// Newest reading per channel of a device, by channel.
    async fn latest(&self, device_id: u64) -> Result<Vec<Latest>, StoreError>;
    /// Raw readings, oldest first, by `(ts_us, seq)`.
    async fn range(&self, query: RangeQuery) -> Result<Vec<Row>, StoreError>;
    /// The `(ts_us, seq)` keys of what [`range`](Store::range) returns for the same query.
    /// Finding where a page ends needs no values, and a store whose series index covers the keys
    /// answers this from the index alone; the default reads the full rows.
    async fn range_keys(&self, query: RangeQuery) -> Result<Vec<(i64, u64)>, StoreError> {
        Ok(self
            .range(query)
            .await?
            .into_iter()
            .map(|r| (r.ts_us, r.seq))
            .collect())
    }
    /// Time-bucketed aggregates computed by the database, by bucket start.
    async fn aggregate(&self, query: AggQuery) -> Result<Vec<Bucket>, StoreError>;
    /// Deletes readings older than `cutoff_us`; returns how many.
    async fn delete_older_than(&self, cutoff_us: i64) -> Result<u64, StoreError>;
    /// Adds (or moves forward) a revocation.
    async fn revoke(&self, revocation: Revocation) -> Result<(), StoreError>;
    /// All revocations.
    async fn revocations(&self) -> Result<Vec<Revocation>, StoreError>;
    /// Proves the store accepts writes now (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;
    /// Resolves, with the reason, once the store can never commit again (its writer stopped
    /// unexpectedly, or a failed fsync left what is on disk unknown). The server then stops
    /// with an error so its supervisor restarts it: nothing unacked is lost (devices resend
    /// it), while a server left running would accept frames it can never ack. A store that
    /// cannot fail this way never resolves (the default).
    async fn failed(&self) -> String {
        std::future::pending().await
    }
}
