//! Acks after an fsync of the WAL, without the writer waiting for the disk.
//!
//! With `synchronous = FULL` every commit waited for its own fsync of the WAL, and the writer
//! thread did nothing else meanwhile: at half load the fsync was most of a batch's time. Under
//! [`Synchronous::Full`](super::Synchronous::Full) the writer's connection now runs at
//! `synchronous = NORMAL` (a commit writes its WAL frames, no fsync) and hands each answer to
//! this thread, which sends it only after an `fdatasync` of the WAL that *started after* the
//! commit returned. The writer meanwhile prepares and commits the next batch; answers that
//! arrive during one fsync share the next (group commit). An ack still means durable:
//! - the acked commit's frames were written before the fsync began, so the fsync persists them,
//!   and WAL recovery replays every complete commit up to the first torn frame;
//! - a checkpoint (ours or SQLite's) fsyncs the WAL before it copies pages into the database
//!   file and fsyncs the database before the WAL restarts, so overwriting old WAL frames never
//!   loses a commit.
//!
//! A commit that is not yet synced is visible to reads; lost in a power cut, it was not acked,
//! so its device resends it and the dedup window keeps it exactly once.
//!
//! If an fsync fails, the kernel may already have dropped the dirty pages it could not write
//! (later fsyncs can succeed without them), so the store is [`Poison`]ed: every answer from then
//! on is an error, the writer commits, moves and deletes nothing more (a later batch's dedup
//! window must not reach the disk without the readings it covers), and the checkpointer stops
//! (it must not copy pages the kernel may have dropped into the database file). The server then
//! stops with an error ([`Store::failed`](crate::store::Store::failed)), so its supervisor
//! restarts it; it recovers from what is on disk, and devices resend what was not acked.
//! Errors that lose nothing (the WAL cannot be opened or stat'ed for a moment) are retried.
//!
//! This relies on SQLite's powersafe-overwrite default (a commit never rewrites the sectors of
//! an earlier one); the store falls back to SQLite's own `synchronous = FULL` when built
//! without it (`SqliteStore::open`).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::store::StoreError;
use crate::telemetry as m;

/// An answer to send once the commit it follows is on disk (or the fsync failed).
pub(super) type Answer = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Set, for good, when the store can no longer tell what is on disk (an fsync failed); shared by
/// the syncer, the writer, the checkpointer and [`Store::failed`](crate::store::Store::failed).
#[derive(Clone, Debug, Default)]
pub(super) struct Poison(Arc<PoisonState>);

#[derive(Debug, Default)]
struct PoisonState {
    why: OnceLock<String>,
    /// Wakes [`Poison::wait`]ers once `why` is set.
    set: tokio::sync::Notify,
}

impl Poison {
    /// Records why; the first reason stands.
    pub(super) fn set(&self, why: String) {
        if self.0.why.set(why.clone()).is_ok() {
            tracing::error!(error = %why, "an fsync of the store failed: nothing more is written or acked; the server stops");
            self.0.set.notify_waiters();
        }
    }

    /// Resolves with [`reason`](Self::reason) once the store is poisoned.
    pub(super) async fn wait(&self) -> String {
        loop {
            // Registered before the check, so a `set` in between still wakes this waiter.
            let notified = self.0.set.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.reason() {
                return reason;
            }
            notified.await;
        }
    }

    /// The error every write gets once poisoned.
    pub(super) fn error(&self) -> Option<StoreError> {
        self.reason().map(StoreError::Database)
    }

    /// What [`error`](Self::error) says, once poisoned.
    pub(super) fn reason(&self) -> Option<String> {
        self.0.why.get().map(|why| {
            format!("an fsync failed ({why}); the store writes and acks nothing until restarted")
        })
    }
}

/// The thread that fsyncs the WAL and then sends the answers waiting for it.
pub(super) struct Syncer {
    answers: mpsc::Sender<Answer>,
    thread: JoinHandle<()>,
}

impl Syncer {
    /// Starts the thread for the database at `db_path` (its WAL is `{db_path}-wal`); a failed
    /// fsync sets `poison`.
    pub(super) fn spawn(db_path: &str, poison: Poison) -> std::io::Result<Syncer> {
        let wal = Wal {
            path: PathBuf::from(format!("{db_path}-wal")),
            open: None,
        };
        let (answers, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sqlite-fsync".into())
            .spawn(move || run(wal, receiver, poison))?;
        Ok(Syncer { answers, thread })
    }

    /// Sends `answer` after the next fsync that starts from now on. Call it after the commit.
    pub(super) fn after_sync(&self, answer: Answer) {
        if let Err(mpsc::SendError(answer)) = self.answers.send(answer) {
            answer(Err(StoreError::Database(
                "the fsync thread has stopped".into(),
            )));
        }
    }

    /// Sends every answer still waiting (after a last fsync) and ends the thread.
    pub(super) fn stop(self) {
        drop(self.answers);
        let _ = self.thread.join();
    }
}

/// Why an fsync could not confirm anything.
enum SyncError {
    /// Nothing is lost (the WAL could not be opened or stat'ed just now): try again.
    Retry(String),
    /// What is on disk is unknown: poison the store.
    Failed(String),
}

/// The WAL file, kept open so its fsync also reports write-back errors that happened since.
struct Wal {
    path: PathBuf,
    /// The open WAL and its (device, inode), reopened when the path names another file.
    open: Option<(File, (u64, u64))>,
}

impl Wal {
    fn sync(&mut self) -> Result<(), SyncError> {
        let id = match std::fs::metadata(&self.path) {
            Ok(meta) => (meta.dev(), meta.ino()),
            // The writer's connection keeps the WAL while the store is open; without it the
            // commits went to a deleted file (another process removed it).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SyncError::Failed(format!(
                    "{} is gone while the store is open",
                    self.path.display()
                )));
            }
            Err(e) => return Err(SyncError::Retry(format!("{}: {e}", self.path.display()))),
        };
        // A file we hold open keeps its inode number, so an equal (device, inode) is that file.
        if self.open.as_ref().is_none_or(|(_, open)| *open != id) {
            let file = File::open(&self.path)
                .map_err(|e| SyncError::Retry(format!("open {}: {e}", self.path.display())))?;
            self.open = Some((file, id));
        }
        let Some((file, _)) = &self.open else {
            unreachable!("opened above")
        };
        file.sync_data()
            .map_err(|e| SyncError::Failed(format!("fsync {}: {e}", self.path.display())))
    }
}

/// Pause before trying an fsync again after an error that lost nothing.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

fn run(mut wal: Wal, answers: mpsc::Receiver<Answer>, poison: Poison) {
    while let Ok(first) = answers.recv() {
        // Every answer queued now follows a commit that returned before this fsync starts.
        let group: Vec<Answer> = std::iter::once(first).chain(answers.try_iter()).collect();
        let mut retrying = false;
        while poison.error().is_none() {
            let started = Instant::now();
            match wal.sync() {
                Ok(()) => {
                    metrics::histogram!(m::FSYNC_SECONDS).record(started.elapsed().as_secs_f64());
                    break;
                }
                Err(SyncError::Failed(why)) => poison.set(why),
                Err(SyncError::Retry(why)) => {
                    if !retrying {
                        tracing::warn!(error = %why, "cannot fsync the store yet; acks wait and it is retried");
                        retrying = true;
                    }
                    std::thread::sleep(RETRY_PAUSE);
                }
            }
        }
        for answer in group {
            answer(poison.error().map_or(Ok(()), Err));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer_into(sender: &std::sync::mpsc::Sender<Result<(), StoreError>>) -> Answer {
        let sender = sender.clone();
        Box::new(move |result| {
            let _ = sender.send(result);
        })
    }

    #[test]
    fn answers_follow_an_fsync_of_the_wal_even_once_it_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("t.db");
        std::fs::write(dir.path().join("t.db-wal"), b"one").expect("wal");
        let poison = Poison::default();
        let syncer = Syncer::spawn(db.to_str().expect("utf-8"), poison.clone()).expect("spawn");
        let (sender, results) = std::sync::mpsc::channel();
        syncer.after_sync(answer_into(&sender));
        assert!(matches!(results.recv(), Ok(Ok(()))));
        std::fs::remove_file(dir.path().join("t.db-wal")).expect("rm");
        std::fs::write(dir.path().join("t.db-wal"), b"two").expect("wal");
        for _ in 0..100 {
            syncer.after_sync(answer_into(&sender));
        }
        syncer.stop();
        drop(sender);
        let answered: Vec<_> = results.iter().collect();
        assert_eq!(answered.len(), 100, "stop answers everything queued");
        assert!(answered.iter().all(Result::is_ok));
        assert!(poison.error().is_none());
    }

    #[test]
    fn a_missing_wal_poisons_the_store_for_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        // No WAL: whatever was committed went to a file that is gone.
        let db = dir.path().join("missing.db");
        let poison = Poison::default();
        let syncer = Syncer::spawn(db.to_str().expect("utf-8"), poison.clone()).expect("spawn");
        let (sender, results) = std::sync::mpsc::channel();
        syncer.after_sync(answer_into(&sender));
        let first = results.recv().expect("answered");
        assert!(matches!(&first, Err(StoreError::Database(e)) if e.contains("missing.db-wal")));
        assert!(
            poison.error().is_some(),
            "the writer and checkpointer see it"
        );
        // Even once the file exists, nothing is acked any more.
        std::fs::write(dir.path().join("missing.db-wal"), b"wal").expect("wal");
        syncer.after_sync(answer_into(&sender));
        let later = results.recv().expect("answered");
        assert!(matches!(&later, Err(StoreError::Database(e)) if e.contains("until restarted")));
        syncer.stop();
    }
}
