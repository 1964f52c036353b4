//! The writer thread (the store's only read-write connection) and the background checkpointer.

use std::collections::VecDeque;
use std::sync::mpsc::RecvTimeoutError;
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use super::retention::DeleteJob;
use super::stage::Stage;
use super::syncer::{Poison, Syncer};
use super::{CHECKPOINT_INTERVAL, Reply, db, to_sql};
use crate::store::{Durable, Presence, Revocation, Row, StoreError, WriteBatch};

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
pub(super) const UPSERT_REVOCATION: &str = "INSERT INTO revocations (subject, issued_before_s) VALUES (?1, ?2) \
     ON CONFLICT (subject) DO UPDATE SET issued_before_s = excluded.issued_before_s \
     WHERE excluded.issued_before_s > revocations.issued_before_s";

/// Most presence changes one transaction records (a reconnecting fleet queues thousands).
const PRESENCE_GROUP: usize = 1024;

/// What the writer thread is asked to do.
pub(super) enum Command {
    /// Commit a batch; the answer comes after the commit, durability after the fsync.
    Batch(WriteBatch, Reply<Durable>),
    /// Record a connect or disconnect.
    Presence(Presence, Reply<()>),
    /// Add or move forward a revocation.
    Revoke(Revocation, Reply<()>),
    /// Start a retention run.
    DeleteOlderThan(i64, Reply<u64>),
    /// Prove the store accepts writes.
    Ping(Reply<()>),
}

impl Command {
    /// Answers the command with `error` without doing it.
    fn fail(self, error: StoreError) {
        // A failed send means the caller stopped waiting.
        match self {
            Command::Batch(_, reply) => {
                let _ = reply.send(Err(error));
            }
            Command::Presence(_, reply) | Command::Revoke(_, reply) | Command::Ping(reply) => {
                let _ = reply.send(Err(error));
            }
            Command::DeleteOlderThan(_, reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }
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
    /// Starts the thread on its own connection, at nice value `nice`. It stops for good once
    /// the store is poisoned, and poisons it when a checkpoint fails on I/O (an fsync of the WAL
    /// or the database file may have failed: the next attempt could copy pages the kernel
    /// dropped).
    pub(super) fn spawn(conn: Connection, nice: i32, poison: Poison) -> Checkpointer {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let run = move || {
            lower_priority(nice);
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_INTERVAL) {
                if poison.error().is_some() {
                    break;
                }
                let copied = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                match copied {
                    Ok(()) => {}
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::SystemIoFailure =>
                    {
                        poison.set(format!("background checkpoint: {e}"));
                        break;
                    }
                    // Harmless (busy, ...): the writer's checkpoint still bounds the WAL.
                    Err(e) => tracing::debug!(error = %e, "background checkpoint failed"),
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

/// The next command, or None once `deadline` passes without one; `Err` when every sender is
/// gone. The thread sleeps until either comes: `timer` (a runtime of its own, time only) wakes
/// it at the deadline, at most about a millisecond late, and the channel at a command at once.
fn recv_until(
    timer: &tokio::runtime::Runtime,
    commands: &mut mpsc::Receiver<Command>,
    deadline: Instant,
) -> Result<Option<Command>, ()> {
    // The timeout is made inside `block_on`: a tokio timer needs its runtime when created.
    let received =
        timer.block_on(async { tokio::time::timeout_at(deadline.into(), commands.recv()).await });
    match received {
        Ok(Some(command)) => Ok(Some(command)),
        Ok(None) => Err(()),
        Err(_elapsed) => Ok(None),
    }
}

/// A runtime for the writer thread's timed waits (tokio's channel has no blocking receive with
/// a timeout). It only runs the writer's own waits: no tasks, no I/O driver.
pub(super) fn writer_timer() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
}

/// The writer thread's state.
pub(super) struct Writer {
    /// The only read-write connection of this store.
    conn: Connection,
    /// Retention runs in progress, advanced one chunk between other commands.
    deletes: VecDeque<DeleteJob>,
    /// The staging tables batches append to, moved into `readings` between commands.
    stage: Stage,
    /// Under `Synchronous::Full`: sends each answer once the WAL is fsynced after its commit
    /// (the connection itself runs at `synchronous = NORMAL`). `None`: answers go at once.
    syncer: Option<Syncer>,
    /// Set once an fsync failed: from then on nothing is written (see `syncer`).
    poison: Poison,
    /// Wakes the thread when a paced move step is due (see `recv_until`).
    timer: tokio::runtime::Runtime,
}

impl Writer {
    /// The writer over the store's only read-write connection.
    pub(super) fn new(
        conn: Connection,
        stage: Stage,
        syncer: Option<Syncer>,
        poison: Poison,
        timer: tokio::runtime::Runtime,
    ) -> Writer {
        Writer {
            conn,
            deletes: VecDeque::new(),
            stage,
            syncer,
            poison,
            timer,
        }
    }

    /// Serves commands until every sender is gone.
    pub(super) fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        // A command taken from the queue while gathering presence changes, served next.
        let mut held: Option<Command> = None;
        loop {
            let command = if held.is_some() {
                held.take()
            } else if self.deletes.is_empty() && !self.stage.has_move_work() {
                match commands.blocking_recv() {
                    Some(command) => Some(command),
                    None => break,
                }
            } else if let Some(due) = self.stage.move_due().filter(|_| self.deletes.is_empty()) {
                // Moving ahead of its pace: wait for a command until the next step is due.
                match recv_until(&self.timer, &mut commands, due) {
                    Ok(command) => command,
                    Err(()) => break,
                }
            } else {
                match commands.try_recv() {
                    Ok(command) => Some(command),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            };
            match command {
                Some(Command::Presence(p, reply)) => {
                    let mut group = vec![(p, reply)];
                    while group.len() < PRESENCE_GROUP {
                        match commands.try_recv() {
                            Ok(Command::Presence(p, reply)) => group.push((p, reply)),
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.presence(group);
                }
                Some(command) => self.handle(command),
                None => {}
            }
            self.delete_step();
            // Moving waits while batches queue (they carry acks), unless moving has fallen
            // behind appending: then one step follows every batch, so it keeps pace.
            let due = self
                .stage
                .move_due()
                .is_some_and(|due| due <= Instant::now());
            if (held.is_none() && commands.is_empty() && due) || self.stage.move_behind() {
                self.move_step();
            }
        }
        if let Some(syncer) = self.syncer.take() {
            syncer.stop();
        }
    }

    /// Sends `result` once it is durable: a success after the next fsync (under
    /// `Synchronous::Full`), a failure at once.
    fn answer<T: Send + 'static>(&self, reply: Reply<T>, result: Result<T, StoreError>) {
        // A failed send means the caller stopped waiting; the outcome stands either way.
        match (result, &self.syncer) {
            (Ok(value), Some(syncer)) => syncer.after_sync(Box::new(move |synced| {
                let _ = reply.send(synced.map(|()| value));
            })),
            (result, _) => {
                let _ = reply.send(result);
            }
        }
    }

    /// Moves the next device range of staged readings into `readings`. A failure (disk full,
    /// I/O error) leaves everything where it was: the staged readings stay visible and the next
    /// step tries again.
    fn move_step(&mut self) {
        if !self.stage.has_move_work() || self.poison.error().is_some() {
            return;
        }
        // A move needs no fsync of its own: lost in a power cut, it leaves its readings staged
        // (still stored, still read), and the next batch's fsync makes it durable anyway.
        if let Err(e) = self.stage.move_step(&mut self.conn) {
            tracing::warn!(error = %e, "moving staged readings failed; retrying");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn handle(&mut self, command: Command) {
        if let Some(e) = self.poison.error() {
            command.fail(e);
            return;
        }
        match command {
            Command::Batch(batch, reply) => {
                let written = write_batch(&mut self.conn, &mut self.stage, &batch).map_err(db);
                // The caller learns of the commit at once and of its durability after the
                // fsync, so it can build the next batch meanwhile.
                let durable = written.map(|()| match &self.syncer {
                    None => Durable::done(),
                    Some(syncer) => {
                        let (synced, durable) = tokio::sync::oneshot::channel();
                        syncer.after_sync(Box::new(move |result| {
                            let _ = synced.send(result);
                        }));
                        Durable::pending(durable)
                    }
                });
                // A failed send means the caller stopped waiting; the outcome stands either way.
                let _ = reply.send(durable);
            }
            Command::Presence(p, reply) => self.presence(vec![(p, reply)]),
            Command::Revoke(r, reply) => {
                let result = self
                    .conn
                    .prepare_cached(UPSERT_REVOCATION)
                    .and_then(|mut s| s.execute((&r.subject, r.issued_before_s)))
                    .map(drop);
                self.answer(reply, result.map_err(db));
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
                self.answer(reply, result.map_err(db));
            }
        }
    }

    /// Records presence changes, in queue order, in one transaction, and answers each once it
    /// is durable. (One transaction each cost a commit, with an fsync, per connect and disconnect:
    /// a fleet of 1,000 reconnecting at once held every ack up for ~0.25 s.)
    fn presence(&mut self, group: Vec<(Presence, Reply<()>)>) {
        let written = match self.poison.reason() {
            Some(why) => Err(why),
            None => record_presence(&mut self.conn, group.iter().map(|(p, _)| p))
                .map_err(|e| e.to_string()),
        };
        for (_, reply) in group {
            self.answer(reply, written.clone().map_err(StoreError::Database));
        }
    }

    /// Runs one chunk of the oldest retention job; answers it when done or failed.
    fn delete_step(&mut self) {
        let Some(job) = self.deletes.front_mut() else {
            return;
        };
        if let Some(e) = self.poison.error() {
            let job = self.deletes.pop_front().expect("front exists");
            let _ = job.reply.send(Err(e));
            return;
        }
        match job.step(&mut self.conn) {
            Ok(false) => {}
            Ok(true) => {
                let job = self.deletes.pop_front().expect("front exists");
                self.answer(job.reply, Ok(job.deleted));
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

/// Records presence changes, in order, in one transaction.
fn record_presence<'a>(
    conn: &mut Connection,
    changes: impl Iterator<Item = &'a Presence>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut upsert = tx.prepare_cached(UPSERT_PRESENCE)?;
        for p in changes {
            upsert.execute((
                p.device_id as i64,
                p.online,
                p.connected_at_us,
                &p.remote_addr,
            ))?;
        }
    }
    tx.commit()
}

/// Readings one multi-row `INSERT` statement of a batch takes.
const ROWS_PER_INSERT: usize = 32;

/// `INSERT INTO {table} (rowid, ...) VALUES (?, ...), ...` for `rows` readings.
fn insert_rows(table: &str, rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?, ?, ?)"; rows].join(", ");
    format!(
        "INSERT INTO {table} (rowid, device_id, channel, ts_us, seq, quality, value) \
         VALUES {values}"
    )
}

/// Binds `row`, stored at `rowid`, to the seven parameters after the first `offset` of an
/// `insert_rows` statement.
fn bind_row(
    statement: &mut rusqlite::Statement<'_>,
    offset: usize,
    row: &Row,
    rowid: i64,
) -> rusqlite::Result<()> {
    statement.raw_bind_parameter(offset + 1, rowid)?;
    statement.raw_bind_parameter(offset + 2, row.device_id as i64)?;
    statement.raw_bind_parameter(offset + 3, row.channel)?;
    statement.raw_bind_parameter(offset + 4, row.ts_us)?;
    statement.raw_bind_parameter(offset + 5, row.seq as i64)?;
    statement.raw_bind_parameter(offset + 6, row.quality)?;
    statement.raw_bind_parameter(offset + 7, to_sql(row.value))
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
    // Grouped by device (stable: each device's readings stay in write order), so each device's
    // readings take consecutive rowids: one `ranges` row per device, appended at the table's end.
    let mut rows: Vec<&Row> = batch.rows.iter().collect();
    rows.sort_by_key(|r| r.device_id);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (table, base) = stage.table_for_batch(&tx)?;
    let mut devices = Vec::new();
    {
        let mut many = tx.prepare_cached(&insert_rows(table, ROWS_PER_INSERT))?;
        let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
        let mut rowid = base;
        for chunk in &mut chunks {
            for (i, row) in chunk.iter().enumerate() {
                rowid += 1;
                bind_row(&mut many, i * 7, row, rowid)?;
            }
            many.raw_execute()?;
        }
        let mut one = tx.prepare_cached(&insert_rows(table, 1))?;
        for row in chunks.remainder() {
            rowid += 1;
            bind_row(&mut one, 0, row, rowid)?;
            one.raw_execute()?;
        }
        let mut range = tx.prepare_cached(&format!(
            "INSERT INTO {table}_ranges (device_id, first, last) VALUES (?1, ?2, ?3)"
        ))?;
        let mut start = base + 1;
        for run in rows.chunk_by(|a, b| a.device_id == b.device_id) {
            let last = start + run.len() as i64 - 1;
            range.execute((run[0].device_id as i64, start, last))?;
            devices.push(run[0].device_id as i64);
            start = last + 1;
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
    stage.committed(table, batch.rows.len() as u64, devices);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::{StagingLimits, Synchronous, configure_writer, schema};

    #[test]
    fn a_timed_wait_ends_at_a_command_at_the_deadline_or_when_the_senders_are_gone() {
        let timer = writer_timer().expect("timer");
        let (tx, mut rx) = mpsc::channel::<Command>(4);
        // Nothing comes: the wait ends at the deadline, not before.
        let start = Instant::now();
        let waited = recv_until(
            &timer,
            &mut rx,
            start + std::time::Duration::from_millis(30),
        );
        assert!(
            matches!(waited, Ok(None)),
            "a command or Err before the deadline"
        );
        assert!(start.elapsed() >= std::time::Duration::from_millis(30));
        // A command sent from another thread ends the wait (a deadline far off is not reached).
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let (reply, _answer) = tokio::sync::oneshot::channel();
            tx.blocking_send(Command::Ping(reply)).expect("send");
        });
        let far = Instant::now() + std::time::Duration::from_secs(3600);
        let got = recv_until(&timer, &mut rx, far);
        assert!(matches!(got, Ok(Some(Command::Ping(_)))), "not the ping");
        sender.join().expect("sender");
        // Every sender gone: `Err`, at once.
        assert!(recv_until(&timer, &mut rx, far).is_err());
    }

    #[test]
    fn a_poisoned_writer_writes_nothing_and_answers_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = Connection::open(dir.path().join("t.sqlite3")).expect("open");
        configure_writer(&conn, Synchronous::Normal).expect("configure");
        schema::migrate(&mut conn).expect("migrate");
        let stage = Stage::load(&conn, StagingLimits::default()).expect("stage");
        let poison = Poison::default();
        let mut writer = Writer::new(
            conn,
            stage,
            None,
            poison.clone(),
            writer_timer().expect("timer"),
        );
        let batch = WriteBatch {
            rows: vec![Row {
                device_id: 1,
                seq: 1,
                channel: 1,
                quality: 0,
                ts_us: 1,
                value: 1.0,
            }],
            ..WriteBatch::default()
        };

        let (reply, answer) = tokio::sync::oneshot::channel();
        writer.handle(Command::Batch(batch.clone(), reply));
        assert!(
            matches!(answer.blocking_recv(), Ok(Ok(_))),
            "healthy: committed"
        );

        poison.set("fsync t.sqlite3-wal: Input/output error".into());
        let (reply, answer) = tokio::sync::oneshot::channel();
        writer.handle(Command::Batch(batch, reply));
        let refused = answer.blocking_recv().expect("answered");
        assert!(
            matches!(&refused, Err(StoreError::Database(e)) if e.contains("Input/output error")),
            "{:?}",
            refused.err()
        );
        let (reply, answer) = tokio::sync::oneshot::channel();
        writer.presence(vec![(
            Presence {
                device_id: 1,
                online: true,
                connected_at_us: 1,
                at_us: 1,
                remote_addr: "192.0.2.1:1".into(),
            },
            reply,
        )]);
        assert!(matches!(answer.blocking_recv(), Ok(Err(_))));
        let staged: i64 = writer
            .conn
            .query_row("SELECT count(*) FROM stored_readings", [], |r| r.get(0))
            .expect("count");
        assert_eq!(staged, 1, "only the batch before the poison");
    }
}
