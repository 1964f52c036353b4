//! Embedded SQLite store: one database file in WAL mode, used without ever blocking the runtime.
//!
//! # Threads
//! - **Writer**: one `std::thread` owns the only read-write [`Connection`]. Every write (batches,
//!   presence, revocations, retention, ping) is a `Command` sent through a bounded channel and
//!   answered through a oneshot; a batch is one `BEGIN IMMEDIATE` transaction. The thread ends
//!   when the store is dropped or [`SqliteStore::close`]d.
//! - **Readers**: `read_connections` read-only connections, used on `spawn_blocking`. WAL lets
//!   them read the last committed snapshot while the writer writes.
//! - **Fsync** (under [`Synchronous::Full`]): answers the writer's commands once an fsync of the
//!   WAL that started after their commit has finished, so the writer commits the next batch
//!   while the disk flushes the last (`syncer`).
//! - **Checkpointer**: copies committed WAL pages into the database file every
//!   `CHECKPOINT_INTERVAL`, so the writer's own checkpoints (which let the WAL restart) are short.
//!
//! Other processes (the `ingest token revoke` CLI) may open the same file while the server runs:
//! their writes wait for the lock up to [`BUSY_TIMEOUT`].
//!
//! # Modules
//! - `schema`: migrations and connection settings.
//! - `write`: the writer thread (batches, presence, revocations) and the background checkpointer.
//! - `retention`: `delete_older_than`, in short chunks between the writer's other commands.
//! - `read`: the read-connection pool and every query.
//! - `yielding`: long statements offer their core to other threads (the writer's only while the
//!   machine has a core to spare).
//!
//! # Schema
//! Versioned by `PRAGMA user_version` = number of [`MIGRATIONS`] applied, each step in its own
//! transaction. A file with a newer version than this build knows is refused, never touched.
//! Device ids and sequence numbers are stored as the same 64 bits in a signed INTEGER
//! (`id as i64`); NaN values are stored as NULL.
//!
//! # The newest reading per series
//! A batch writes only `readings` (plus one dedup window and last-seen time per device): an
//! upsert into `latest` per reading doubled the B-tree work of every commit. The newest reading
//! of a series is read from the `readings_series` index instead (one seek per channel), so a read
//! sees every committed reading. `latest` keeps what the index can no longer give: retention
//! copies a series' newest reading into it before deleting that series' old readings, and
//! [`latest`](Store::latest) takes the newer of the two (equal times: the later write, which is
//! the index's).

mod read;
mod retention;
mod schema;
mod stage;
mod syncer;
mod write;
mod yielding;

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::{
    AggQuery, Bucket, DeviceInfo, Durable, Latest, Presence, RangeQuery, Revocation, Row, Store,
    StoreError, WriteBatch,
};
use crate::dedup::DedupWindow;
use read::{Lane, ReadPool};
pub use schema::{MIGRATIONS, configure_writer};
pub use stage::StagingLimits;
use write::{Checkpointer, Command, Writer};

/// Name of the database file in the data directory (plus its `-wal` and `-shm` companions).
pub const DB_FILE: &str = "telemux.sqlite3";
/// How long a statement waits for another connection's lock (another process writing, a
/// checkpoint) before failing with "database is locked".
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Commands queued for the writer thread before callers wait. Batches are large already; a few
/// queued keep the thread busy without holding much memory.
const WRITER_QUEUE: usize = 16;
/// Page cache of the writer connection, KiB: holds the hot right edge of every series' index.
const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// The writer checkpoints after a commit that leaves this many pages in the WAL (256 MiB of 4 KiB
/// pages). Under steady writes the background checkpointer never finds the WAL fully copied at
/// the start of a write, so the WAL only restarts from its beginning after such a checkpoint,
/// which runs inside the write lock. Smaller: more frequent stalls (at 64 MiB, 50-100 ms every
/// few seconds at 160k readings/s); larger: every page read searches more WAL-index segments and
/// the stall is rarer but longer. A/B at 1,000 devices x 64 readings, sync full (BENCHMARKS.md,
/// "WAL size"): at ~300k readings/s offered, 64 MiB / 256 MiB / 1 GiB acked 278k / 285k / 276k
/// readings/s with ack p99 304 / 141 / 499 ms.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 65_536;
/// How often the background checkpointer copies committed WAL pages into the database file.
/// Often, so the writer's own checkpoint (which stalls every ack behind it) finds little left to
/// copy: 250 -> 50 ms halved the half-load ack p99 with sync full (median of 4 runs: 160 -> 109
/// ms at 112k readings/s, shared machine) without costing throughput.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(50);
/// Page cache of the checkpoint connection, KiB (it reads pages from the WAL, not the cache).
const CHECKPOINTER_CACHE_KIB: i64 = 1024;
/// Page cache of each read connection, KiB.
const READER_CACHE_KIB: i64 = 16 * 1024;

/// How hard a commit is pushed to disk (`PRAGMA synchronous`, WAL mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// An acked reading survives power loss: every answer waits for an fsync of the WAL that
    /// started after its commit (one fsync serves every commit before it; the writer does not
    /// wait for it, see `syncer`).
    #[default]
    Full,
    /// `NORMAL`: a commit survives a process crash (kill -9) but the last commits before a power
    /// loss or OS crash may be lost (fsync only at checkpoints). Faster with small batches.
    Normal,
}

/// Options of [`SqliteStore::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Durability of a commit (default [`Synchronous::Full`]: ack means durable).
    pub synchronous: Synchronous,
    /// Read-only connections serving queries concurrently (default 2; at least 1 is opened).
    pub read_connections: usize,
    /// Nice value (0-19) of the writer and checkpoint threads. Above 0 they yield the CPU to
    /// the network and live threads when the machine is busy, so acks and live readings are not
    /// delayed behind a long commit; the writer still gets every idle cycle. Default 0.
    pub writer_nice: i32,
    /// When staged readings are moved into series order (see [`StagingLimits`]).
    pub staging: StagingLimits,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Full,
            read_connections: 2,
            writer_nice: 0,
            staging: StagingLimits::default(),
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// The embedded SQLite [`Store`].
pub struct SqliteStore {
    /// Commands to the writer thread; dropping it ends the thread.
    commands: mpsc::Sender<Command>,
    /// Read-only connections for queries.
    readers: Arc<ReadPool>,
    /// The writer thread, joined by [`close`](Self::close).
    writer: JoinHandle<()>,
    /// Set when an fsync fails (see `syncer`).
    poison: syncer::Poison,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `path`, starts the writer thread
    /// and opens the read connections. Blocking: call it before serving, or on `spawn_blocking`.
    pub fn open(path: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        let mut conn = open_migrated(path, options.synchronous)?;
        yielding::yield_within_statements_unless_saturated(&mut conn)
            .map_err(|e| open_error(format!("cannot install the progress handler: {e}")))?;
        let stage = stage::Stage::load(&conn, options.staging)
            .map_err(|e| open_error(format!("cannot read the staging state: {e}")))?;
        // Under FULL, commits skip SQLite's own fsync and the syncer acks after one of its own,
        // so the writer never waits for the disk (see `syncer`).
        // (Without powersafe overwrite a commit may rewrite the last sector of an earlier one,
        // so only SQLite's own FULL keeps acked commits safe: keep it.)
        let poison = syncer::Poison::default();
        let syncer = match options.synchronous {
            Synchronous::Full if powersafe_overwrite(&conn) => {
                let db_path = conn.path().unwrap_or_default().to_owned();
                conn.pragma_update(None, "synchronous", "NORMAL")
                    .map_err(|e| open_error(format!("cannot set synchronous: {e}")))?;
                Some(
                    syncer::Syncer::spawn(&db_path, poison.clone())
                        .map_err(|e| open_error(format!("cannot start the fsync thread: {e}")))?,
                )
            }
            Synchronous::Full | Synchronous::Normal => None,
        };
        let checkpointer = Connection::open(path)
            .and_then(|c| schema::configure_checkpointer(&c, options.synchronous).map(|()| c))
            .map_err(|e| open_error(format!("checkpoint connection: {e}")))?;
        let mut conns = Vec::with_capacity(options.read_connections.max(1));
        for _ in 0..options.read_connections.max(1) {
            conns.push(
                schema::open_reader(path)
                    .map_err(|e| open_error(format!("read connection: {e}")))?,
            );
        }
        let readers = Arc::new(ReadPool::new(conns));
        let (commands, receiver) = mpsc::channel(WRITER_QUEUE);
        let nice = options.writer_nice;
        let store_poison = poison.clone();
        let timer = write::writer_timer()
            .map_err(|e| open_error(format!("cannot start the writer's timer: {e}")))?;
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                write::lower_priority(nice);
                let checkpointer = Checkpointer::spawn(checkpointer, nice, poison.clone());
                Writer::new(conn, stage, syncer, poison, timer).run(receiver);
                checkpointer.stop();
            })
            .map_err(|e| open_error(format!("cannot start writer thread: {e}")))?;
        Ok(SqliteStore {
            commands,
            readers,
            writer,
            poison: store_poison,
        })
    }

    /// Records `revocation` in the database at `path` with one short-lived connection, for the
    /// `ingest token revoke` CLI while a server may be running on the same file. Unlike
    /// [`open`](Self::open) it starts no writer, so it never moves staged readings (two
    /// processes moving the same staging table would each copy the same devices).
    pub fn record_revocation(path: &Path, revocation: &Revocation) -> Result<(), StoreError> {
        open_migrated(path, Synchronous::Full)?
            .execute(
                write::UPSERT_REVOCATION,
                (&revocation.subject, revocation.issued_before_s),
            )
            .map(drop)
            .map_err(db)
    }

    /// Stops the writer after the commands already queued, and waits until it and the read
    /// connections have closed the file (so it can be reopened or copied).
    pub async fn close(self) -> Result<(), StoreError> {
        let SqliteStore {
            commands,
            readers,
            writer,
            poison: _,
        } = self;
        drop(commands);
        drop(readers);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(|e| StoreError::Database(format!("joining the writer thread: {e}")))?
            .map_err(|_| StoreError::Database("the writer thread panicked".into()))
    }

    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `query` on a read connection on the blocking pool.
    async fn read<T, F>(&self, lane: Lane, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = ReadPool::take(&self.readers, lane).await?;
        tokio::task::spawn_blocking(move || query(conn.get()))
            .await
            .map_err(|e| StoreError::Database(format!("read task failed: {e}")))?
    }
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

/// NaN is stored as NULL.
fn to_sql(value: f64) -> Option<f64> {
    (!value.is_nan()).then_some(value)
}

fn from_sql(value: Option<f64>) -> f64 {
    value.unwrap_or(f64::NAN)
}

/// A read-write connection to the database at `path`, configured as the writer's and migrated to
/// this build's schema (a file from a newer build is refused before anything is written).
fn open_migrated(path: &Path, synchronous: Synchronous) -> Result<Connection, StoreError> {
    let open_error = |reason: String| StoreError::Open {
        path: path.display().to_string(),
        reason,
    };
    let mut conn = Connection::open(path).map_err(|e| open_error(e.to_string()))?;
    // Before anything writes (even the journal mode) to a file from a newer build.
    conn.busy_timeout(BUSY_TIMEOUT)
        .and_then(|()| conn.pragma_query_value(None, "user_version", |r| r.get(0)))
        .map_err(|e| open_error(format!("cannot read user_version: {e}")))
        .and_then(|v| schema::known_version(v).map_err(open_error))?;
    configure_writer(&conn, synchronous).map_err(open_error)?;
    schema::migrate(&mut conn).map_err(open_error)?;
    Ok(conn)
}

/// Whether this SQLite build assumes powersafe overwrite (the Unix default), which the fsync
/// thread relies on (see `syncer`).
fn powersafe_overwrite(conn: &Connection) -> bool {
    let options: rusqlite::Result<Vec<String>> = conn
        .prepare("PRAGMA compile_options")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect());
    options.is_ok_and(|o| !o.iter().any(|x| x == "POWERSAFE_OVERWRITE=0"))
}

#[async_trait]
impl Store for SqliteStore {
    async fn commit_batch(&self, batch: WriteBatch) -> Result<Durable, StoreError> {
        self.call(|reply| Command::Batch(batch, reply)).await
    }

    async fn dedup_window(
        &self,
        device_id: u64,
        window: u32,
    ) -> Result<Option<DedupWindow>, StoreError> {
        self.read(Lane::Urgent, move |conn| {
            read::dedup_window(conn, device_id, window)
        })
        .await
    }

    async fn set_presence(&self, presence: Presence) -> Result<(), StoreError> {
        self.call(|reply| Command::Presence(presence, reply)).await
    }

    async fn devices(&self) -> Result<Vec<DeviceInfo>, StoreError> {
        self.read(Lane::Bulk, read::devices).await
    }

    async fn latest(&self, device_id: u64) -> Result<Vec<Latest>, StoreError> {
        self.read(Lane::Bulk, move |conn| read::latest(conn, device_id))
            .await
    }

    async fn range(&self, q: RangeQuery) -> Result<Vec<Row>, StoreError> {
        if q.limit == 0 || q.from_us >= q.to_us {
            return Ok(Vec::new());
        }
        self.read(Lane::Bulk, move |conn| read::range(conn, q))
            .await
    }

    async fn range_keys(&self, q: RangeQuery) -> Result<Vec<(i64, u64)>, StoreError> {
        if q.limit == 0 || q.from_us >= q.to_us {
            return Ok(Vec::new());
        }
        self.read(Lane::Bulk, move |conn| read::range_keys(conn, q))
            .await
    }

    async fn aggregate(&self, q: AggQuery) -> Result<Vec<Bucket>, StoreError> {
        if q.step_us <= 0 {
            return Err(StoreError::Database(format!(
                "aggregate step must be a positive number of microseconds, found {}",
                q.step_us
            )));
        }
        if q.from_us >= q.to_us {
            return Ok(Vec::new());
        }
        self.read(Lane::Bulk, move |conn| read::aggregate(conn, q))
            .await
    }

    async fn delete_older_than(&self, cutoff_us: i64) -> Result<u64, StoreError> {
        self.call(|reply| Command::DeleteOlderThan(cutoff_us, reply))
            .await
    }

    async fn revoke(&self, revocation: Revocation) -> Result<(), StoreError> {
        self.call(|reply| Command::Revoke(revocation, reply)).await
    }

    async fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        self.read(Lane::Urgent, read::revocations).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(Command::Ping).await
    }

    async fn failed(&self) -> String {
        // The writer only returns once every sender is gone, and this store holds the only
        // one: a closed queue here means the thread died (a panic: its message is on stderr).
        tokio::select! {
            () = self.commands.closed() => {
                "the store's writer thread stopped unexpectedly (its panic message is on stderr)".into()
            }
            reason = self.poison.wait() => reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `failed` resolves within a moment.
    async fn failed_now(store: &SqliteStore) -> Option<String> {
        tokio::time::timeout(Duration::from_millis(50), store.failed())
            .await
            .ok()
    }

    #[tokio::test]
    async fn failed_resolves_once_an_fsync_poisons_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            SqliteStore::open(&dir.path().join(DB_FILE), SqliteOptions::default()).expect("open");
        store.ping().await.expect("ping");
        assert_eq!(failed_now(&store).await, None, "a healthy store");
        let waiting = {
            let poison = store.poison.clone();
            tokio::spawn(async move { poison.wait().await })
        };
        // Let the waiter register before the poison is set.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        store
            .poison
            .set("fsync t.sqlite3-wal: Input/output error".into());
        let why = failed_now(&store).await.expect("resolved");
        assert!(why.contains("Input/output error"), "{why}");
        let woken = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a waiter from before the poison is woken")
            .expect("task");
        assert_eq!(woken, why);
        store.close().await.expect("close");
    }

    #[tokio::test]
    async fn failed_resolves_once_the_writer_thread_dies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let SqliteStore {
            commands,
            readers,
            writer,
            poison,
        } = SqliteStore::open(&dir.path().join(DB_FILE), SqliteOptions::default()).expect("open");
        drop(commands);
        writer.join().expect("the real writer stops cleanly");
        // A writer that dies the way a bug would kill it: a panic, dropping its queue.
        let (commands, queue) = mpsc::channel(WRITER_QUEUE);
        let writer = std::thread::spawn(move || {
            let _queue = queue;
            panic!("a bug in the writer (expected by this test)");
        });
        let store = SqliteStore {
            commands,
            readers,
            writer,
            poison,
        };
        let why = tokio::time::timeout(Duration::from_secs(5), store.failed())
            .await
            .expect("resolved");
        assert!(why.contains("stopped unexpectedly"), "{why}");
        assert!(matches!(store.ping().await, Err(StoreError::Closed)));
        assert!(
            matches!(store.close().await, Err(StoreError::Database(e)) if e.contains("panicked"))
        );
    }
}
