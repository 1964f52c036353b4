//! The writer thread (the store's only read-write connection) and the background checkpointer.

use std::collections::VecDeque;
use std::sync::mpsc::RecvTimeoutError;
use std::thread::JoinHandle;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use super::retention::DeleteJob;
use super::stage::Stage;
use super::{CHECKPOINT_INTERVAL, Reply, db, to_sql};
use crate::store::{Presence, Revocation, StoreError, WriteBatch};

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

/// What the writer thread is asked to do.
pub(super) enum Command {
    /// Commit a batch.
    Batch(WriteBatch, Reply<()>),
    /// Record a connect or disconnect.
    Presence(Presence, Reply<()>),
    /// Add or move forward a revocation.
    Revoke(Revocation, Reply<()>),
    /// Start a retention run.
    DeleteOlderThan(i64, Reply<u64>),
    /// Prove the store accepts writes.
    Ping(Reply<()>),
}

/// A thread copying committed WAL pages into the database file (`wal_checkpoint(PASSIVE)`,
/// which waits for nobody), so the writer's own checkpoints are short.
pub(super) struct Checkpointer {
    /// Dropped to stop the thread.
    stop: std::sync::mpsc::Sender<()>,
    /// The thread, if it could be started.
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread on its own connection, at nice value `nice`.
    pub(super) fn spawn(conn: Connection, nice: i32) -> Checkpointer {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let run = move || {
            lower_priority(nice);
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

    /// Stops the thread and waits for it.
    pub(super) fn stop(self) {
        drop(self.stop);
        if let Some(thread) = self.thread {
            let _ = thread.join();
        }
    }
}

/// Gives the calling thread nice value `nice` (Linux: per thread). Lowering one's own priority
/// needs no privilege; if it fails anyway the thread runs at normal priority, which is only
/// slower for the other threads, so it is logged and ignored.
pub(super) fn lower_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
        let result = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
        };
        if result != 0 {
            tracing::warn!(
                nice,
                error = %std::io::Error::last_os_error(),
                "cannot lower the storage thread's priority"
            );
        }
    }
}

/// The writer thread's state.
pub(super) struct Writer {
    /// The only read-write connection of this store.
    conn: Connection,
    /// Retention runs in progress, advanced one chunk between other commands.
    deletes: VecDeque<DeleteJob>,
    /// The staging tables batches append to, moved into `readings` between commands.
    stage: Stage,
}

impl Writer {
    /// The writer over the store's only read-write connection.
    pub(super) fn new(conn: Connection, stage: Stage) -> Writer {
        Writer {
            conn,
            deletes: VecDeque::new(),
            stage,
        }
    }

    /// Serves commands until every sender is gone.
    pub(super) fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let command = if self.deletes.is_empty() && !self.stage.has_move_work() {
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
            self.move_step();
        }
    }

    /// Moves the next device range of staged readings into `readings`. A failure (disk full,
    /// I/O error) leaves everything where it was: the staged readings stay visible and the next
    /// step tries again.
    fn move_step(&mut self) {
        if let Err(e) = self.stage.move_step(&mut self.conn) {
            tracing::warn!(error = %e, "moving staged readings failed; retrying");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn handle(&mut self, command: Command) {
        // A failed send means the caller stopped waiting; the outcome stands either way.
        match command {
            Command::Batch(batch, reply) => {
                let _ =
                    reply.send(write_batch(&mut self.conn, &mut self.stage, &batch).map_err(db));
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
                self.deletes.push_back(DeleteJob::new(cutoff_us, reply));
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

/// Commits one batch: readings (appended to the staging table, see `stage`), dedup windows,
/// last-seen times (no `latest`: see the module doc).
fn write_batch(
    conn: &mut Connection,
    stage: &mut Stage,
    batch: &WriteBatch,
) -> rusqlite::Result<()> {
    if batch.rows.is_empty() && batch.dedup.is_empty() && batch.last_seen.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let table = stage.table_for_batch(&tx)?;
    {
        // In arrival order: a frame's readings are consecutive, so they share one page of the
        // staging table's device index.
        let mut insert = tx.prepare_cached(&format!(
            "INSERT INTO {table} (device_id, channel, ts_us, seq, quality, value) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        ))?;
        for row in &batch.rows {
            insert.execute((
                row.device_id as i64,
                row.channel,
                row.ts_us,
                row.seq as i64,
                row.quality,
                to_sql(row.value),
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
    tx.commit()?;
    stage.committed(table, batch.rows.len() as u64);
    Ok(())
}
