//! Embedded SQLite store: one database file in WAL mode, used without ever blocking the runtime.
//!
//! # Threads
//! - **Writer**: one `std::thread` owns the only read-write [`Connection`]. Every write (batches,
//!   presence, revocations, retention, ping) is a `Command` sent through a bounded channel and
//!   answered through a oneshot; a batch is one `BEGIN IMMEDIATE` transaction. The thread ends
//!   when the store is dropped or [`SqliteStore::close`]d.
//! - **Readers**: `read_connections` read-only connections, used on `spawn_blocking`. WAL lets
//!   them read the last committed snapshot while the writer writes.
//! - **Checkpointer**: copies committed WAL pages into the database file every
//!   `CHECKPOINT_INTERVAL`, so the writer's own checkpoints (which let the WAL restart) are short.
//!
//! Other processes (the `ingest token revoke` CLI) may open the same file while the server runs:
//! their writes wait for the lock up to [`BUSY_TIMEOUT`].
//!
//! # Schema
//! Versioned by `PRAGMA user_version` = number of [`MIGRATIONS`] applied, each step in its own
//! transaction. A file with a newer version than this build knows is refused, never touched.
//! Device ids and sequence numbers are stored as the same 64 bits in a signed INTEGER
//! (`id as i64`); NaN values are stored as NULL.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::{
    Agg, AggQuery, Bucket, DeviceInfo, Latest, Presence, RangeQuery, Revocation, Row, Store,
    StoreError, WriteBatch,
};
use crate::dedup::DedupWindow;

/// Name of the database file in the data directory (plus its `-wal` and `-shm` companions).
pub const DB_FILE: &str = "telemux.sqlite3";
/// How long a statement waits for another connection's lock (another process writing, a
/// checkpoint) before failing with "database is locked".
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Commands queued for the writer thread before callers wait. Batches are large already; a few
/// queued keep the thread busy without holding much memory.
const WRITER_QUEUE: usize = 16;
/// Most rows one retention transaction deletes, so the write lock is held for milliseconds.
const DELETE_CHUNK_ROWS: u64 = 10_000;
/// Longest one retention transaction keeps going (many series with little to delete each).
const DELETE_CHUNK_TIME: Duration = Duration::from_millis(50);
/// Page cache of the writer connection, KiB: holds the hot right edge of every series' index.
const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// The writer checkpoints after a commit that leaves this many pages in the WAL (64 MiB of
/// 4 KiB pages). The background checkpointer has copied most of them by then, so this mostly
/// lets the WAL restart from its beginning; it bounds the WAL if the background copy lags.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 16_384;
/// How often the background checkpointer copies committed WAL pages into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);
/// Page cache of the checkpoint connection, KiB (it reads pages from the WAL, not the cache).
const CHECKPOINTER_CACHE_KIB: i64 = 1024;
/// Page cache of each read connection, KiB.
const READER_CACHE_KIB: i64 = 16 * 1024;

/// How hard a commit is pushed to disk (`PRAGMA synchronous`, WAL mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// `FULL`: the WAL is fsynced on every commit, so an acked reading survives power loss.
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
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Full,
            read_connections: 2,
        }
    }
}

/// Schema steps in order; `PRAGMA user_version` counts the steps applied. Append, never edit.
pub const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE readings (
        device_id INTEGER NOT NULL,
        channel INTEGER NOT NULL,
        ts_us INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        quality INTEGER NOT NULL,
        value REAL
    );
    CREATE INDEX readings_series ON readings (device_id, channel, ts_us, seq);
    CREATE TABLE latest (
        device_id INTEGER NOT NULL,
        channel INTEGER NOT NULL,
        ts_us INTEGER NOT NULL,
        value REAL,
        quality INTEGER NOT NULL,
        PRIMARY KEY (device_id, channel)
    ) WITHOUT ROWID;
    CREATE TABLE dedup (device_id INTEGER PRIMARY KEY, "window" BLOB NOT NULL);
    CREATE TABLE devices (
        device_id INTEGER PRIMARY KEY,
        online INTEGER NOT NULL DEFAULT 0,
        connected_at_us INTEGER,
        last_seen_us INTEGER,
        remote_addr TEXT
    );
    CREATE TABLE revocations (
        subject TEXT PRIMARY KEY,
        issued_before_s INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at_us INTEGER NOT NULL);
    "#,
];

const INSERT_READING: &str = "INSERT INTO readings (device_id, channel, ts_us, seq, quality, value) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const UPSERT_LATEST: &str = "INSERT INTO latest (device_id, channel, ts_us, value, quality) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (device_id, channel) DO UPDATE SET \
     ts_us = excluded.ts_us, value = excluded.value, quality = excluded.quality \
     WHERE excluded.ts_us >= latest.ts_us";
const UPSERT_DEDUP: &str = r#"INSERT INTO dedup (device_id, "window") VALUES (?1, ?2)
     ON CONFLICT (device_id) DO UPDATE SET "window" = excluded."window""#;
const UPSERT_LAST_SEEN: &str = "INSERT INTO devices (device_id, last_seen_us) VALUES (?1, ?2) \
     ON CONFLICT (device_id) DO UPDATE SET last_seen_us = excluded.last_seen_us \
     WHERE devices.last_seen_us IS NULL OR excluded.last_seen_us > devices.last_seen_us";
/// A disconnect of an older connection (smaller `connected_at_us`) arriving after the device
/// reconnected is ignored, so the device stays online.
const UPSERT_PRESENCE: &str = "INSERT INTO devices (device_id, online, connected_at_us, remote_addr) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (device_id) DO UPDATE SET online = excluded.online, \
     connected_at_us = excluded.connected_at_us, remote_addr = excluded.remote_addr \
     WHERE devices.connected_at_us IS NULL OR excluded.connected_at_us >= devices.connected_at_us";
const UPSERT_REVOCATION: &str = "INSERT INTO revocations (subject, issued_before_s) VALUES (?1, ?2) \
     ON CONFLICT (subject) DO UPDATE SET issued_before_s = excluded.issued_before_s \
     WHERE excluded.issued_before_s > revocations.issued_before_s";
const DELETE_SERIES_CHUNK: &str = "DELETE FROM readings WHERE rowid IN (SELECT rowid FROM readings \
     WHERE device_id = ?1 AND channel = ?2 AND ts_us < ?3 LIMIT ?4)";
const RANGE: &str = "SELECT ts_us, seq, quality, value FROM readings \
     WHERE device_id = ?1 AND channel = ?2 AND ts_us >= ?3 AND ts_us < ?4 \
     ORDER BY ts_us, seq LIMIT ?5";
/// `?3` is the later of `from_us` and the cursor's time, so the index scan starts at the cursor.
const RANGE_AFTER: &str = "SELECT ts_us, seq, quality, value FROM readings \
     WHERE device_id = ?1 AND channel = ?2 AND ts_us >= ?3 AND ts_us < ?4 \
     AND (ts_us, seq) > (?6, ?7) ORDER BY ts_us, seq LIMIT ?5";

/// `RANGE` / `RANGE_AFTER` without the values: answered from the `readings_series` index alone.
const RANGE_KEYS: &str = "SELECT ts_us, seq FROM readings \
     WHERE device_id = ?1 AND channel = ?2 AND ts_us >= ?3 AND ts_us < ?4 \
     ORDER BY ts_us, seq LIMIT ?5";
const RANGE_KEYS_AFTER: &str = "SELECT ts_us, seq FROM readings \
     WHERE device_id = ?1 AND channel = ?2 AND ts_us >= ?3 AND ts_us < ?4 \
     AND (ts_us, seq) > (?6, ?7) ORDER BY ts_us, seq LIMIT ?5";

/// Readings of the query's series in its range with their bucket start `b`, the floor of
/// `ts_us / step` times step (SQL `%` truncates toward zero, so negative times step back once).
macro_rules! bucketed {
    ($columns:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM readings WHERE device_id = ?1 AND channel = ?2 AND ts_us >= ?3 AND ts_us < ?4"
        )
    };
}
macro_rules! grouped {
    ($agg:literal) => {
        concat!(
            "SELECT b, ",
            $agg,
            ", count(*) FROM (",
            bucketed!(
                "ts_us - ts_us % ?5 - (CASE WHEN ts_us % ?5 < 0 THEN ?5 ELSE 0 END) AS b, value"
            ),
            ") GROUP BY b ORDER BY b"
        )
    };
}
macro_rules! ranked {
    ($order:literal) => {
        concat!(
            "SELECT b, value, n FROM (SELECT b, value, ",
            "row_number() OVER (PARTITION BY b ORDER BY ",
            $order,
            ") AS rn, count(*) OVER (PARTITION BY b) AS n FROM (",
            bucketed!(
                "ts_us - ts_us % ?5 - (CASE WHEN ts_us % ?5 < 0 THEN ?5 ELSE 0 END) AS b, \
                 ts_us, seq, rowid AS rid, value"
            ),
            ")) WHERE rn = 1 ORDER BY b"
        )
    };
}

fn aggregate_sql(agg: Agg) -> &'static str {
    match agg {
        Agg::Avg => grouped!("avg(value)"),
        Agg::Min => grouped!("min(value)"),
        Agg::Max => grouped!("max(value)"),
        Agg::Sum => grouped!("sum(value)"),
        Agg::Count => grouped!("count(*)"),
        Agg::First => ranked!("ts_us, seq, rid"),
        Agg::Last => ranked!("ts_us DESC, seq DESC, rid DESC"),
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What the writer thread is asked to do.
enum Command {
    Batch(WriteBatch, Reply<()>),
    Presence(Presence, Reply<()>),
    Revoke(Revocation, Reply<()>),
    DeleteOlderThan(i64, Reply<u64>),
    Ping(Reply<()>),
}

/// The embedded SQLite [`Store`].
pub struct SqliteStore {
    /// Commands to the writer thread; dropping it ends the thread.
    commands: mpsc::Sender<Command>,
    /// Read-only connections for queries.
    readers: Arc<ReadPool>,
    /// The writer thread, joined by [`close`](Self::close).
    writer: JoinHandle<()>,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `path`, starts the writer thread
    /// and opens the read connections. Blocking: call it before serving, or on `spawn_blocking`.
    pub fn open(path: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        let mut conn = Connection::open(path).map_err(|e| open_error(e.to_string()))?;
        // Before anything writes (even the journal mode) to a file from a newer build.
        conn.busy_timeout(BUSY_TIMEOUT)
            .and_then(|()| conn.pragma_query_value(None, "user_version", |r| r.get(0)))
            .map_err(|e| open_error(format!("cannot read user_version: {e}")))
            .and_then(|v| known_version(v).map_err(open_error))?;
        configure_writer(&conn, options.synchronous).map_err(open_error)?;
        migrate(&mut conn).map_err(open_error)?;
        let checkpointer = Connection::open(path)
            .and_then(|c| configure_checkpointer(&c, options.synchronous).map(|()| c))
            .map_err(|e| open_error(format!("checkpoint connection: {e}")))?;
        let mut conns = Vec::with_capacity(options.read_connections.max(1));
        for _ in 0..options.read_connections.max(1) {
            conns.push(open_reader(path).map_err(|e| open_error(format!("read connection: {e}")))?);
        }
        let readers = Arc::new(ReadPool {
            permits: Arc::new(Semaphore::new(conns.len())),
            conns: Mutex::new(conns),
        });
        let (commands, receiver) = mpsc::channel(WRITER_QUEUE);
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let checkpointer = Checkpointer::spawn(checkpointer);
                Writer {
                    conn,
                    deletes: VecDeque::new(),
                }
                .run(receiver);
                checkpointer.stop();
            })
            .map_err(|e| open_error(format!("cannot start writer thread: {e}")))?;
        Ok(SqliteStore {
            commands,
            readers,
            writer,
        })
    }

    /// Stops the writer after the commands already queued, and waits until it and the read
    /// connections have closed the file (so it can be reopened or copied).
    pub async fn close(self) -> Result<(), StoreError> {
        let SqliteStore {
            commands,
            readers,
            writer,
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
    async fn read<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = ReadPool::take(&self.readers).await?;
        tokio::task::spawn_blocking(move || query(conn.get()))
            .await
            .map_err(|e| StoreError::Database(format!("read task failed: {e}")))?
    }
}

fn synchronous_level(synchronous: Synchronous) -> &'static str {
    match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    }
}

/// Applies the writer connection's settings (WAL, `synchronous`, page cache, checkpointing).
/// Public so the bare-insert benchmark measures SQLite configured exactly as the store is.
pub fn configure_writer(conn: &Connection, synchronous: Synchronous) -> Result<(), String> {
    let level = synchronous_level(synchronous);
    let mode: String = conn
        .busy_timeout(BUSY_TIMEOUT)
        .and_then(|()| conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)))
        .map_err(|e| format!("cannot enable WAL: {e}"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("expected journal_mode wal, SQLite kept {mode}"));
    }
    conn.pragma_update(None, "synchronous", level)
        .and_then(|()| conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB))
        .and_then(|()| conn.pragma_update(None, "temp_store", "MEMORY"))
        .and_then(|()| conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES))
        .map_err(|e| format!("cannot configure the connection: {e}"))
}

fn configure_checkpointer(conn: &Connection, synchronous: Synchronous) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", synchronous_level(synchronous))?;
    conn.pragma_update(None, "cache_size", -CHECKPOINTER_CACHE_KIB)
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
    Ok(conn)
}

/// `user_version` as the number of migrations applied, if this build knows them all.
fn known_version(version: i64) -> Result<usize, String> {
    let known = MIGRATIONS.len();
    match usize::try_from(version) {
        Ok(applied) if applied <= known => Ok(applied),
        Ok(_) => Err(format!(
            "schema version {version} is newer than this build knows ({known}); \
             run a newer telemux or restore a matching backup"
        )),
        Err(_) => Err(format!(
            "schema version {version} is not one telemux writes"
        )),
    }
}

/// Applies the missing [`MIGRATIONS`], one transaction each (taken with the write lock, so two
/// processes opening a new file at once do not both migrate).
fn migrate(conn: &mut Connection) -> Result<(), String> {
    let known = MIGRATIONS.len();
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| format!("cannot lock for migration: {e}"))?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| format!("cannot read user_version: {e}"))?;
        let applied = known_version(version)?;
        if applied == known {
            return Ok(());
        }
        tx.execute_batch(MIGRATIONS[applied])
            .and_then(|()| tx.pragma_update(None, "user_version", applied as i64 + 1))
            .and_then(|()| tx.commit())
            .map_err(|e| format!("migration to schema version {}: {e}", applied + 1))?;
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

/// A thread copying committed WAL pages into the database file (`wal_checkpoint(PASSIVE)`,
/// which waits for nobody), so the writer's own checkpoints are short.
struct Checkpointer {
    /// Dropped to stop the thread.
    stop: std::sync::mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn spawn(conn: Connection) -> Checkpointer {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let run = move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_INTERVAL) {
                let copied = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                if let Err(e) = copied {
                    // Harmless: the writer's checkpoint still bounds the WAL.
                    tracing::debug!(error = %e, "background checkpoint failed");
                }
            }
        };
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(run)
            .inspect_err(|e| tracing::warn!(error = %e, "no background checkpointer thread"))
            .ok();
        Checkpointer { stop, thread }
    }

    fn stop(self) {
        drop(self.stop);
        if let Some(thread) = self.thread {
            let _ = thread.join();
        }
    }
}

/// The writer thread's state.
struct Writer {
    /// The only read-write connection of this store.
    conn: Connection,
    /// Retention runs in progress, advanced one chunk between other commands.
    deletes: VecDeque<DeleteJob>,
}

impl Writer {
    fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let command = if self.deletes.is_empty() {
                match commands.blocking_recv() {
                    Some(command) => Some(command),
                    None => break,
                }
            } else {
                match commands.try_recv() {
                    Ok(command) => Some(command),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            };
            if let Some(command) = command {
                self.handle(command);
            }
            self.delete_step();
        }
    }

    fn handle(&mut self, command: Command) {
        // A failed send means the caller stopped waiting; the outcome stands either way.
        match command {
            Command::Batch(batch, reply) => {
                let _ = reply.send(write_batch(&mut self.conn, &batch).map_err(db));
            }
            Command::Presence(p, reply) => {
                let result = self
                    .conn
                    .prepare_cached(UPSERT_PRESENCE)
                    .and_then(|mut s| {
                        s.execute((
                            p.device_id as i64,
                            p.online,
                            p.connected_at_us,
                            &p.remote_addr,
                        ))
                    })
                    .map(drop);
                let _ = reply.send(result.map_err(db));
            }
            Command::Revoke(r, reply) => {
                let result = self
                    .conn
                    .prepare_cached(UPSERT_REVOCATION)
                    .and_then(|mut s| s.execute((&r.subject, r.issued_before_s)))
                    .map(drop);
                let _ = reply.send(result.map_err(db));
            }
            Command::DeleteOlderThan(cutoff_us, reply) => {
                match DeleteJob::start(&self.conn, cutoff_us, reply) {
                    Ok(job) => self.deletes.push_back(job),
                    Err((e, reply)) => {
                        let _ = reply.send(Err(db(e)));
                    }
                }
            }
            Command::Ping(reply) => {
                let now_us = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as i64);
                let result = self
                    .conn
                    .prepare_cached(
                        "INSERT INTO heartbeat (id, at_us) VALUES (1, ?1) \
                         ON CONFLICT (id) DO UPDATE SET at_us = excluded.at_us",
                    )
                    .and_then(|mut s| s.execute([now_us]))
                    .map(drop);
                let _ = reply.send(result.map_err(db));
            }
        }
    }

    /// Runs one chunk of the oldest retention job; answers it when done or failed.
    fn delete_step(&mut self) {
        let Some(job) = self.deletes.front_mut() else {
            return;
        };
        match job.step(&mut self.conn) {
            Ok(false) => {}
            Ok(true) => {
                let job = self.deletes.pop_front().expect("front exists");
                let _ = job.reply.send(Ok(job.deleted));
            }
            Err(e) => {
                let job = self.deletes.pop_front().expect("front exists");
                let _ = job.reply.send(Err(StoreError::Database(format!(
                    "retention stopped after deleting {} rows: {e}",
                    job.deleted
                ))));
            }
        }
    }
}

/// Commits one batch: readings, the newest reading per series, dedup windows, last-seen times.
fn write_batch(conn: &mut Connection, batch: &WriteBatch) -> rusqlite::Result<()> {
    if batch.rows.is_empty() && batch.dedup.is_empty() && batch.last_seen.is_empty() {
        return Ok(());
    }
    // In index order, so consecutive inserts land on the same index page; the last row of each
    // series is its newest (stable sort: of equal (ts_us, seq), the later in the batch).
    let mut rows: Vec<&Row> = batch.rows.iter().collect();
    rows.sort_by_key(|r| (r.device_id as i64, r.channel, r.ts_us, r.seq as i64));
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(INSERT_READING)?;
        for row in &rows {
            insert.execute((
                row.device_id as i64,
                row.channel,
                row.ts_us,
                row.seq as i64,
                row.quality,
                to_sql(row.value),
            ))?;
        }
        let mut latest = tx.prepare_cached(UPSERT_LATEST)?;
        let newest = rows.iter().enumerate().filter(|&(i, r)| {
            rows.get(i + 1)
                .is_none_or(|n| (n.device_id, n.channel) != (r.device_id, r.channel))
        });
        for (_, row) in newest {
            latest.execute((
                row.device_id as i64,
                row.channel,
                row.ts_us,
                to_sql(row.value),
                row.quality,
            ))?;
        }
        let mut dedup = tx.prepare_cached(UPSERT_DEDUP)?;
        for (device_id, window) in &batch.dedup {
            dedup.execute((*device_id as i64, window.to_bytes()))?;
        }
        let mut seen = tx.prepare_cached(UPSERT_LAST_SEEN)?;
        for (device_id, at_us) in &batch.last_seen {
            seen.execute((*device_id as i64, at_us))?;
        }
    }
    tx.commit()
}

/// A `delete_older_than` in progress: series by series through the index, in chunks.
struct DeleteJob {
    cutoff_us: i64,
    /// Every series with readings (from `latest`, which has a row for each).
    series: Vec<(i64, i64)>,
    /// Index in `series` of the next series to delete from.
    next: usize,
    deleted: u64,
    reply: Reply<u64>,
}

impl DeleteJob {
    fn start(
        conn: &Connection,
        cutoff_us: i64,
        reply: Reply<u64>,
    ) -> Result<DeleteJob, (rusqlite::Error, Reply<u64>)> {
        let series = conn
            .prepare_cached("SELECT device_id, channel FROM latest")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect());
        match series {
            Ok(series) => Ok(DeleteJob {
                cutoff_us,
                series,
                next: 0,
                deleted: 0,
                reply,
            }),
            Err(e) => Err((e, reply)),
        }
    }

    /// Deletes up to [`DELETE_CHUNK_ROWS`] rows in one transaction; true when nothing is left.
    fn step(&mut self, conn: &mut Connection) -> rusqlite::Result<bool> {
        let started = Instant::now();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut budget = DELETE_CHUNK_ROWS;
        let mut deleted = 0;
        {
            let mut delete = tx.prepare_cached(DELETE_SERIES_CHUNK)?;
            while self.next < self.series.len()
                && budget > 0
                && started.elapsed() < DELETE_CHUNK_TIME
            {
                let (device_id, channel) = self.series[self.next];
                let n = delete.execute((device_id, channel, self.cutoff_us, budget as i64))? as u64;
                if n < budget {
                    self.next += 1; // this series has nothing older left
                }
                budget -= n;
                deleted += n;
            }
        }
        tx.commit()?;
        self.deleted += deleted;
        Ok(self.next >= self.series.len())
    }
}

/// Read-only connections handed out one query at a time.
struct ReadPool {
    /// One permit per idle connection in `conns`.
    permits: Arc<Semaphore>,
    /// Idle connections.
    conns: Mutex<Vec<Connection>>,
}

impl ReadPool {
    async fn take(pool: &Arc<ReadPool>) -> Result<PooledConn, StoreError> {
        let permit = pool
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let conn = pool
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        Ok(PooledConn {
            conn: Some(conn.ok_or(StoreError::Closed)?),
            pool: pool.clone(),
            _permit: permit,
        })
    }
}

/// A read connection that goes back to its pool when dropped (also when the query panics).
struct PooledConn {
    conn: Option<Connection>,
    pool: Arc<ReadPool>,
    /// Released after the connection is back in the pool (fields drop after `drop`).
    _permit: OwnedSemaphorePermit,
}

impl PooledConn {
    fn get(&self) -> &Connection {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool
                .conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn write_batch(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.call(|reply| Command::Batch(batch, reply)).await
    }

    async fn dedup_window(
        &self,
        device_id: u64,
        window: u32,
    ) -> Result<Option<DedupWindow>, StoreError> {
        self.read(move |conn| {
            let bytes: Option<Vec<u8>> = conn
                .prepare_cached(r#"SELECT "window" FROM dedup WHERE device_id = ?1"#)
                .and_then(|mut s| s.query_row([device_id as i64], |r| r.get(0)).optional())
                .map_err(db)?;
            bytes
                .map(|b| {
                    DedupWindow::from_bytes(&b, window).ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "dedup window of device {device_id}: expected 8 + 8n bytes, found {}",
                            b.len()
                        ))
                    })
                })
                .transpose()
        })
        .await
    }

    async fn set_presence(&self, presence: Presence) -> Result<(), StoreError> {
        self.call(|reply| Command::Presence(presence, reply)).await
    }

    async fn devices(&self) -> Result<Vec<DeviceInfo>, StoreError> {
        let mut devices = self
            .read(|conn| {
                let mut s = conn
                    .prepare_cached(
                        "SELECT device_id, online, connected_at_us, last_seen_us, remote_addr FROM devices",
                    )
                    .map_err(db)?;
                let rows = s.query_map([], |r| {
                    Ok(DeviceInfo {
                        device_id: r.get::<_, i64>(0)? as u64,
                        online: r.get(1)?,
                        connected_at_us: r.get(2)?,
                        last_seen_us: r.get(3)?,
                        remote_addr: r.get(4)?,
                    })
                });
                rows.and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>).map_err(db)
            })
            .await?;
        // By u64 id: SQL orders the stored i64, which puts ids >= 2^63 first.
        devices.sort_unstable_by_key(|d| d.device_id);
        Ok(devices)
    }

    async fn latest(&self, device_id: u64) -> Result<Vec<Latest>, StoreError> {
        self.read(move |conn| {
            let mut s = conn
                .prepare_cached(
                    "SELECT channel, ts_us, value, quality FROM latest WHERE device_id = ?1 ORDER BY channel",
                )
                .map_err(db)?;
            let rows = s.query_map([device_id as i64], |r| {
                Ok(Latest {
                    channel: r.get(0)?,
                    ts_us: r.get(1)?,
                    value: from_sql(r.get(2)?),
                    quality: r.get(3)?,
                })
            });
            rows.and_then(Iterator::collect).map_err(db)
        })
        .await
    }

    async fn range(&self, q: RangeQuery) -> Result<Vec<Row>, StoreError> {
        if q.limit == 0 || q.from_us >= q.to_us {
            return Ok(Vec::new());
        }
        self.read(move |conn| {
            let map = |r: &rusqlite::Row<'_>| {
                Ok(Row {
                    device_id: q.device_id,
                    channel: q.channel,
                    ts_us: r.get(0)?,
                    seq: r.get::<_, i64>(1)? as u64,
                    quality: r.get(2)?,
                    value: from_sql(r.get(3)?),
                })
            };
            let (d, c, limit) = (q.device_id as i64, q.channel, i64::from(q.limit));
            let rows = match q.after {
                None => conn.prepare_cached(RANGE).and_then(|mut s| {
                    s.query_map((d, c, q.from_us, q.to_us, limit), map)?
                        .collect()
                }),
                Some((ts_us, seq)) => conn.prepare_cached(RANGE_AFTER).and_then(|mut s| {
                    let from_us = q.from_us.max(ts_us);
                    s.query_map((d, c, from_us, q.to_us, limit, ts_us, seq as i64), map)?
                        .collect()
                }),
            };
            rows.map_err(db)
        })
        .await
    }

    async fn range_keys(&self, q: RangeQuery) -> Result<Vec<(i64, u64)>, StoreError> {
        if q.limit == 0 || q.from_us >= q.to_us {
            return Ok(Vec::new());
        }
        self.read(move |conn| {
            let map = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64));
            let (d, c, limit) = (q.device_id as i64, q.channel, i64::from(q.limit));
            let keys = match q.after {
                None => conn.prepare_cached(RANGE_KEYS).and_then(|mut s| {
                    s.query_map((d, c, q.from_us, q.to_us, limit), map)?
                        .collect()
                }),
                Some((ts_us, seq)) => conn.prepare_cached(RANGE_KEYS_AFTER).and_then(|mut s| {
                    let from_us = q.from_us.max(ts_us);
                    s.query_map((d, c, from_us, q.to_us, limit, ts_us, seq as i64), map)?
                        .collect()
                }),
            };
            keys.map_err(db)
        })
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
        self.read(move |conn| {
            let mut s = conn.prepare_cached(aggregate_sql(q.agg)).map_err(db)?;
            let args = (q.device_id as i64, q.channel, q.from_us, q.to_us, q.step_us);
            let rows = s.query_map(args, |r| {
                Ok(Bucket {
                    start_us: r.get(0)?,
                    value: from_sql(r.get(1)?),
                    count: r.get::<_, i64>(2)? as u64,
                })
            });
            rows.and_then(Iterator::collect).map_err(db)
        })
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
        self.read(|conn| {
            let mut s = conn
                .prepare_cached("SELECT subject, issued_before_s FROM revocations ORDER BY subject")
                .map_err(db)?;
            let rows = s.query_map([], |r| {
                Ok(Revocation {
                    subject: r.get(0)?,
                    issued_before_s: r.get(1)?,
                })
            });
            rows.and_then(Iterator::collect).map_err(db)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(Command::Ping).await
    }
}
