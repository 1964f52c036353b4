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
//! (later fsyncs can succeed without them), so from then on every answer is an error: the
//! store no longer acks anything, and the operator restarts it (recovery reads the WAL from
//! disk, not from the cache).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::store::StoreError;
use crate::telemetry as m;

/// An answer to send once the commit it follows is on disk (or the fsync failed).
pub(super) type Answer = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// The thread that fsyncs the WAL and then sends the answers waiting for it.
pub(super) struct Syncer {
    answers: mpsc::Sender<Answer>,
    thread: JoinHandle<()>,
}

impl Syncer {
    /// Starts the thread for the database at `db_path` (its WAL is `{db_path}-wal`).
    pub(super) fn spawn(db_path: &str) -> std::io::Result<Syncer> {
        let files = Files {
            wal: PathBuf::from(format!("{db_path}-wal")),
            db: PathBuf::from(db_path),
            open: None,
        };
        let (answers, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sqlite-fsync".into())
            .spawn(move || run(files, receiver))?;
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

/// The file an fsync covers: the WAL, or the database file while there is no WAL (SQLite
/// deletes it only after checkpointing everything into the database file).
struct Files {
    wal: PathBuf,
    db: PathBuf,
    /// The open WAL and its inode, reopened when the path names another file.
    open: Option<(File, u64)>,
}

impl Files {
    fn sync(&mut self) -> Result<(), String> {
        let wal_inode = match std::fs::metadata(&self.wal) {
            Ok(meta) => Some(meta.ino()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", self.wal.display())),
        };
        let Some(inode) = wal_inode else {
            self.open = None;
            return File::open(&self.db)
                .and_then(|f| f.sync_data())
                .map_err(|e| format!("fsync {}: {e}", self.db.display()));
        };
        if self.open.as_ref().is_none_or(|(_, open)| *open != inode) {
            let file =
                File::open(&self.wal).map_err(|e| format!("open {}: {e}", self.wal.display()))?;
            self.open = Some((file, inode));
        }
        let (file, _) = self.open.as_ref().expect("opened above");
        file.sync_data()
            .map_err(|e| format!("fsync {}: {e}", self.wal.display()))
    }
}

fn run(mut files: Files, answers: mpsc::Receiver<Answer>) {
    // Set by the first failed fsync, for good (see the module doc).
    let mut failed: Option<String> = None;
    while let Ok(first) = answers.recv() {
        // Every answer queued now follows a commit that returned before this fsync starts.
        let group: Vec<Answer> = std::iter::once(first).chain(answers.try_iter()).collect();
        if failed.is_none() {
            let started = Instant::now();
            if let Err(e) = files.sync() {
                tracing::error!(error = %e, "fsync of the store failed: nothing is acked any more; restart the server");
                failed = Some(e);
            }
            metrics::histogram!(m::FSYNC_SECONDS).record(started.elapsed().as_secs_f64());
        }
        for answer in group {
            answer(match &failed {
                None => Ok(()),
                Some(e) => Err(StoreError::Database(format!(
                    "an fsync failed ({e}); the store acks nothing until restarted"
                ))),
            });
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
    fn answers_follow_an_fsync_of_the_wal_or_of_the_database_without_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("t.db");
        std::fs::write(&db, b"db").expect("db");
        let syncer = Syncer::spawn(db.to_str().expect("utf-8")).expect("spawn");
        let (sender, results) = std::sync::mpsc::channel();
        // No WAL yet: the database file is synced.
        syncer.after_sync(answer_into(&sender));
        assert!(matches!(results.recv(), Ok(Ok(()))));
        // A WAL appears, is replaced by another file: each is synced in turn.
        std::fs::write(dir.path().join("t.db-wal"), b"one").expect("wal");
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
    }

    #[test]
    fn a_failed_fsync_fails_every_later_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Neither the WAL nor the database exists: the fsync cannot happen.
        let db = dir.path().join("missing.db");
        let syncer = Syncer::spawn(db.to_str().expect("utf-8")).expect("spawn");
        let (sender, results) = std::sync::mpsc::channel();
        syncer.after_sync(answer_into(&sender));
        let first = results.recv().expect("answered");
        assert!(matches!(&first, Err(StoreError::Database(e)) if e.contains("missing.db")));
        // Even once the file exists, nothing is acked any more.
        std::fs::write(&db, b"db").expect("db");
        syncer.after_sync(answer_into(&sender));
        let later = results.recv().expect("answered");
        assert!(matches!(&later, Err(StoreError::Database(e)) if e.contains("until restarted")));
        syncer.stop();
    }
}
