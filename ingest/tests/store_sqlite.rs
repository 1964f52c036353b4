//! The embedded SQLite store: the store conformance suite, plus what only SQLite has (a file that
//! is closed, reopened, migrated, shared with another process, killed mid-write).
//!
//! Throughput: `cargo test --release -p ingest --test store_sqlite -- --ignored --nocapture write_throughput`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ingest::dedup::DedupWindow;
use ingest::store::sqlite::{DB_FILE, SqliteOptions, SqliteStore, StagingLimits, Synchronous};
use ingest::store::{RangeQuery, Revocation, Row, Store, StoreError, WriteBatch, conformance};

fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(&dir.join(DB_FILE), SqliteOptions::default()).expect("open store")
}

/// Staging limits that hand every few batches to the mover and move a few devices per step, so
/// reads meet readings in `readings`, in the moving table and in the appending one at once.
const CHURN: StagingLimits = StagingLimits {
    rows: 7,
    rows_per_device: 0,
    age: Duration::from_secs(3600),
    move_rows: 5,
};

/// Default options with these staging limits.
fn staging(limits: StagingLimits) -> SqliteOptions {
    SqliteOptions {
        staging: limits,
        ..Default::default()
    }
}

fn open_churning(dir: &Path) -> SqliteStore {
    SqliteStore::open(&dir.join(DB_FILE), staging(CHURN)).expect("open store")
}

/// Read straight from the file: (readings in `readings`, every stored reading through the
/// `stored_readings` view, whether a move is part-way through a staging table).
fn stored_counts(path: &Path) -> (i64, i64, bool) {
    let conn = rusqlite::Connection::open(path).expect("open file");
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql);
    (
        count("SELECT count(*) FROM readings"),
        count("SELECT count(*) FROM stored_readings"),
        count("SELECT count(*) FROM staging_state WHERE moved_through IS NOT NULL") > 0,
    )
}

fn reading(device_id: u64, channel: u16, ts_us: i64, seq: u64) -> Row {
    Row {
        device_id,
        seq,
        channel,
        quality: 0,
        ts_us,
        value: ts_us as f64 * 0.5,
    }
}

/// One frame per device with `channels` readings each, plus the devices' dedup windows.
fn frames_batch(devices: u64, frames: u64, channels: u16, first_seq: u64) -> WriteBatch {
    let mut batch = WriteBatch::default();
    for d in 0..devices {
        let mut window = DedupWindow::new(1024);
        for f in 0..frames {
            let seq = first_seq + f;
            window.insert(seq);
            for c in 0..channels {
                batch
                    .rows
                    .push(reading(d + 1, c, seq as i64 * 1_000_000, seq));
            }
        }
        batch.dedup.push((d + 1, window));
        batch
            .last_seen
            .push((d + 1, (first_seq + frames) as i64 * 1_000_000));
    }
    batch
}

async fn series(store: &dyn Store, device_id: u64, channel: u16) -> Vec<Row> {
    let q = RangeQuery {
        device_id,
        channel,
        from_us: i64::MIN,
        to_us: i64::MAX,
        after: None,
        limit: u32::MAX,
    };
    store.range(q).await.expect("range")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    conformance::run_all(&store).await;
    store.close().await.expect("close");
}

/// The same behaviour while staged readings move into `readings` between every few commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_holds_while_staged_readings_move() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_churning(dir.path());
    conformance::run_all(&store).await;
    store.close().await.expect("close");
    let (moved, stored, _) = stored_counts(&dir.path().join(DB_FILE));
    assert!(moved > 0, "nothing was moved into readings");
    assert!(
        stored > moved,
        "nothing left staged: the reads never met staged rows"
    );
}

/// The staging table's row limit grows with the devices in it (`rows_per_device`), counted
/// again from the table on reopen: a table of 5 devices takes 4 readings each (not the 10 of
/// `rows`) before it is moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_staging_row_limit_grows_with_the_devices_in_the_table() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(DB_FILE);
    let options = staging(StagingLimits {
        rows: 10,
        rows_per_device: 4,
        age: Duration::from_secs(3600),
        move_rows: 1_000,
    });
    let store = SqliteStore::open(&path, options.clone()).expect("open");
    // 5 devices x 2 channels: 10 readings per batch, the limit is 5 x 4 = 20.
    for seq in 1..=2 {
        store
            .write_batch(frames_batch(5, 1, 2, seq))
            .await
            .expect("batch");
    }
    store.close().await.expect("close");
    assert_eq!(
        stored_counts(&path).0,
        0,
        "20 readings of 5 devices: not due yet"
    );

    let store = SqliteStore::open(&path, options).expect("reopen");
    store
        .write_batch(frames_batch(5, 1, 2, 3))
        .await
        .expect("batch");
    // The reopened store counted 5 devices and 20 readings: due, so this batch went to the
    // other table and the first is moved while the writer is idle.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while stored_counts(&path).0 < 20 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored_counts(&path).0, 20, "the full table was moved");
    for d in 1..=5 {
        assert_eq!(series(&store, d, 1).await.len(), 3, "device {d}");
    }
    store.close().await.expect("close");
    assert_eq!(stored_counts(&path).1, 30, "every reading stored once");
}

/// Closing in the middle of a move and reopening moves the rest exactly once: every reading is
/// stored once, whichever table it was in when the store closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_interrupted_by_close_finishes_exactly_once() {
    const DEVICES: u64 = 400;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(DB_FILE);
    // Three batches fill the appending table; a one-reading batch hands it to the mover, which
    // then moves one device (and fsyncs) per step: the close comes long before the last step.
    let options = staging(StagingLimits {
        rows: 3 * DEVICES * 2,
        rows_per_device: 0,
        age: Duration::from_secs(3600),
        move_rows: 1,
    });
    let store = SqliteStore::open(&path, options.clone()).expect("open");
    for seq in 1..=3 {
        store
            .write_batch(frames_batch(DEVICES, 1, 2, seq))
            .await
            .expect("write");
    }
    let mut last = frames_batch(1, 1, 1, 4);
    last.dedup.clear();
    store.write_batch(last).await.expect("write");
    store.close().await.expect("close");
    let (moved, stored, mid_move) = stored_counts(&path);
    let total = (3 * DEVICES * 2 + 1) as i64;
    assert_eq!(stored, total, "every reading stored once");
    assert!(
        mid_move && moved > 0,
        "expected a close mid-move ({moved} moved)"
    );

    let store = SqliteStore::open(&path, options).expect("reopen");
    for d in [1, DEVICES / 2, DEVICES] {
        for c in 0..2 {
            let seqs: Vec<u64> = series(&store, d, c).await.iter().map(|r| r.seq).collect();
            let want: Vec<u64> = if d == 1 && c == 0 {
                vec![1, 2, 3, 4]
            } else {
                vec![1, 2, 3]
            };
            assert_eq!(seqs, want, "device {d} channel {c}");
        }
    }
    // The writer finishes the move on its own; pings prove it serves commands meanwhile.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stored_counts(&path).2 && Instant::now() < deadline {
        store.ping().await.expect("ping");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (moved, stored, mid_move) = stored_counts(&path);
    assert!(!mid_move, "the move did not finish");
    assert_eq!(
        moved,
        total - 1,
        "all but the appending table's reading moved"
    );
    assert_eq!(stored, total, "nothing moved twice or lost");
    store.close().await.expect("close");
}

/// A moved staging table is emptied a slice at a time; a restart in the middle of that (crafted
/// here: everything copied into `readings`, a third of the staged rows deleted) neither shows
/// the rest again nor loses anything, and the writer finishes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_table_cleared_part_way_is_finished_after_reopen() {
    const DEVICES: u64 = 50;
    const CHANNELS: u16 = 400;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(DB_FILE);
    // Nothing is moved on its own: the table never reaches its row or age limit.
    let options = staging(StagingLimits {
        rows: 1_000_000,
        rows_per_device: 0,
        age: Duration::from_secs(3600),
        move_rows: 2_048,
    });
    let store = SqliteStore::open(&path, options.clone()).expect("open");
    for seq in 1..=3 {
        store
            .write_batch(frames_batch(DEVICES, 1, CHANNELS, seq))
            .await
            .expect("write");
    }
    store.close().await.expect("close");
    let total = (3 * DEVICES * u64::from(CHANNELS)) as i64;
    {
        let conn = rusqlite::Connection::open(&path).expect("open file");
        let staged: String = conn
            .query_row(
                "SELECT name FROM staging_state ORDER BY gen DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .expect("appending table");
        conn.execute_batch(&format!(
            "BEGIN;
             INSERT INTO readings (device_id, channel, ts_us, seq, quality, value)
               SELECT device_id, channel, ts_us, seq, quality, value FROM {staged};
             UPDATE staging_state SET gen = -1, moved_through = 9223372036854775807
               WHERE name = '{staged}';
             DELETE FROM {staged} WHERE rowid <= {third};
             COMMIT;",
            third = total / 3
        ))
        .expect("craft a part-way clear");
    }
    assert_eq!(
        stored_counts(&path),
        (total, total, true),
        "the rows left in the cleared table are not counted"
    );

    let store = SqliteStore::open(&path, options).expect("reopen");
    for d in [1, DEVICES] {
        for c in [0, CHANNELS - 1] {
            let seqs: Vec<u64> = series(&store, d, c).await.iter().map(|r| r.seq).collect();
            assert_eq!(seqs, vec![1, 2, 3], "device {d} channel {c}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while stored_counts(&path).2 && Instant::now() < deadline {
        store.ping().await.expect("ping");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        stored_counts(&path),
        (total, total, false),
        "the clear finished, nothing lost or doubled"
    );
    store
        .write_batch(frames_batch(DEVICES, 1, CHANNELS, 4))
        .await
        .expect("write after the clear");
    let seqs: Vec<u64> = series(&store, 1, 0).await.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    store.close().await.expect("close");
    let conn = rusqlite::Connection::open(&path).expect("open file");
    let left: i64 = conn
        .query_row(
            "SELECT (SELECT count(*) FROM staging_a) + (SELECT count(*) FROM staging_b)",
            [],
            |r| r.get(0),
        )
        .expect("count staged");
    assert_eq!(left, total / 3, "only the new batch is staged");
}

#[tokio::test]
async fn committed_data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    store
        .write_batch(frames_batch(3, 4, 2, 10))
        .await
        .expect("write");
    let revocation = Revocation {
        subject: "device:9".into(),
        issued_before_s: 77,
    };
    store.revoke(revocation.clone()).await.expect("revoke");
    store.close().await.expect("close");

    let store = open(dir.path());
    assert_eq!(
        series(&store, 2, 1).await.len(),
        4,
        "readings of device 2 channel 1"
    );
    let window = store
        .dedup_window(3, 1024)
        .await
        .expect("dedup")
        .expect("window of device 3");
    assert_eq!(window.high_water(), 13);
    assert_eq!(store.latest(1).await.expect("latest").len(), 2);
    assert_eq!(
        store.revocations().await.expect("revocations"),
        vec![revocation]
    );
    store.close().await.expect("close");
}

#[tokio::test]
async fn failed_batch_leaves_no_reading_window_or_last_seen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    store
        .write_batch(frames_batch(1, 1, 1, 1))
        .await
        .expect("first batch");
    // Another connection makes the schema refuse device 666's dedup window, which is written
    // after its readings in the same transaction.
    let sql = rusqlite::Connection::open(dir.path().join(DB_FILE)).expect("raw connection");
    sql.execute_batch(
        "CREATE TRIGGER refuse_666 BEFORE INSERT ON dedup WHEN NEW.device_id = 666 \
         BEGIN SELECT RAISE(ABORT, 'refused by test'); END;",
    )
    .expect("create trigger");

    let mut batch = frames_batch(1, 1, 1, 2); // device 1: would move forward
    batch.rows.push(reading(666, 0, 5, 1));
    batch.dedup.push((666, DedupWindow::new(64)));
    batch.last_seen.push((666, 5));
    match store.write_batch(batch.clone()).await {
        Err(StoreError::Database(reason)) => {
            assert!(reason.contains("refused by test"), "{reason}")
        }
        other => panic!("expected the batch to fail, got {other:?}"),
    }
    assert!(
        series(&store, 666, 0).await.is_empty(),
        "readings of a failed batch are rolled back"
    );
    assert_eq!(
        series(&store, 1, 0).await.len(),
        1,
        "the whole batch is rolled back, other devices too"
    );
    assert_eq!(
        store
            .dedup_window(1, 1024)
            .await
            .expect("dedup")
            .map(|w| w.high_water()),
        Some(1)
    );
    assert!(store.latest(666).await.expect("latest").is_empty());
    assert!(
        store
            .devices()
            .await
            .expect("devices")
            .iter()
            .all(|d| d.device_id != 666)
    );

    sql.execute_batch("DROP TRIGGER refuse_666")
        .expect("drop trigger");
    store
        .write_batch(batch)
        .await
        .expect("the same batch commits once allowed");
    assert_eq!(series(&store, 666, 0).await.len(), 1);
    assert_eq!(
        store
            .dedup_window(1, 1024)
            .await
            .expect("dedup")
            .map(|w| w.high_water()),
        Some(2)
    );
    store.close().await.expect("close");
}

#[tokio::test]
async fn reopening_migrates_once_and_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(DB_FILE);
    for _ in 0..3 {
        let store = open(dir.path());
        store
            .write_batch(frames_batch(1, 1, 1, 1))
            .await
            .expect("write");
        store.close().await.expect("close");
    }
    let sql = rusqlite::Connection::open(&path).expect("raw connection");
    let version: i64 = sql
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("version");
    assert_eq!(version, ingest::store::sqlite::MIGRATIONS.len() as i64);
    let (_, stored, _) = stored_counts(&path);
    assert_eq!(stored, 3, "data kept across reopenings");
    let mode: String = sql
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "wal");

    sql.pragma_update(None, "user_version", 99)
        .expect("set version");
    drop(sql);
    match SqliteStore::open(&path, SqliteOptions::default()) {
        Err(StoreError::Open { reason, .. }) => {
            assert!(
                reason.contains("99") && reason.contains("newer"),
                "unclear reason: {reason}"
            )
        }
        Err(other) => panic!("expected StoreError::Open, got {other:?}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

/// Moving waits while batches queue, but not for ever: with writers that never let the queue
/// go quiet, staged readings stay near two staging tables' worth and everything ends up moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_keeps_pace_while_batches_queue() {
    const WRITERS: u64 = 8;
    const BATCHES: u64 = 60;
    const LIMITS: StagingLimits = StagingLimits {
        rows: 64,
        rows_per_device: 0,
        age: Duration::from_secs(3600),
        move_rows: 4,
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(DB_FILE);
    let options = staging(LIMITS);
    let store = Arc::new(SqliteStore::open(&path, options).expect("open store"));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (path, done) = (path.clone(), done.clone());
        tokio::task::spawn_blocking(move || {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let (moved, stored, _) = stored_counts(&path);
                most = most.max(stored - moved);
                std::thread::sleep(Duration::from_millis(5));
            }
            most
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for b in 0..BATCHES {
                    // 4 devices x 1 frame x 2 channels = 8 readings per batch.
                    let batch = frames_batch(4, 1, 2, (w * BATCHES + b) * 10);
                    store.write_batch(batch).await.expect("write");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer task");
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let most_staged = sampler.await.expect("sampler");
    let total = (WRITERS * BATCHES * 8) as i64;
    // A moving table (at most two tables' worth: its own, plus what came while the one before
    // it finished), an appending one up to its limit, and a batch per writer in flight. Without
    // the catch-up rule moving would wait for a quiet queue and staging would grow towards all
    // 3,840 readings.
    let bound = 3 * LIMITS.rows as i64 + (WRITERS * 8) as i64;
    assert!(
        most_staged <= bound,
        "{most_staged} readings staged at once (bound {bound}, {total} written)"
    );
    let (_, stored, _) = stored_counts(&path);
    assert_eq!(stored, total, "every reading stored exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_whole_batches_while_the_writer_commits() {
    let dir = tempfile::tempdir().expect("temp dir");
    reads_see_whole_batches(open(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_whole_batches_while_staged_readings_move() {
    let dir = tempfile::tempdir().expect("temp dir");
    reads_see_whole_batches(open_churning(dir.path())).await;
    let (moved, _, _) = stored_counts(&dir.path().join(DB_FILE));
    assert!(moved > 0, "nothing was moved into readings");
}

/// Three readers never see part of a batch, a reading twice or rows going away while `store`
/// commits 40 batches of one series.
async fn reads_see_whole_batches(store: SqliteStore) {
    const BATCHES: u64 = 40;
    const ROWS: u64 = 500;
    let store = Arc::new(store);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for b in 0..BATCHES {
                let rows = (0..ROWS)
                    .map(|i| reading(7, 0, (b * ROWS + i) as i64, b))
                    .collect();
                store
                    .write_batch(WriteBatch {
                        rows,
                        ..WriteBatch::default()
                    })
                    .await
                    .expect("write");
            }
        })
    };
    let mut readers = Vec::new();
    for _ in 0..3 {
        let store = store.clone();
        readers.push(tokio::spawn(async move {
            let mut last = 0;
            let mut reads = 0;
            while last < (BATCHES * ROWS) as usize {
                let rows = series(store.as_ref(), 7, 0).await;
                let n = rows.len();
                assert!(
                    rows.windows(2).all(|w| w[0].ts_us < w[1].ts_us),
                    "a read saw a reading twice or out of order"
                );
                assert_eq!(
                    n % ROWS as usize,
                    0,
                    "a read saw part of a batch ({n} rows)"
                );
                assert!(n >= last, "rows went from {last} to {n}");
                last = n;
                reads += 1;
            }
            reads
        }));
    }
    writer.await.expect("writer task");
    for r in readers {
        assert!(r.await.expect("reader task") > 0);
    }
}

#[tokio::test]
async fn retention_deletes_across_chunks_and_series() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    // 25_000 old readings in one series (three chunks), 300 in others, and newer ones.
    let mut rows: Vec<Row> = (0..25_000).map(|i| reading(1, 0, i, i as u64)).collect();
    rows.extend((0..300).map(|i| reading(2, (i % 3) as u16, i, i as u64)));
    rows.extend((0..100).map(|i| reading(1, 0, 1_000_000 + i, i as u64)));
    store
        .write_batch(WriteBatch {
            rows,
            ..WriteBatch::default()
        })
        .await
        .expect("write");
    let deleted = store.delete_older_than(1_000_000).await.expect("delete");
    assert_eq!(deleted, 25_300);
    assert_eq!(series(&store, 1, 0).await.len(), 100);
    assert!(series(&store, 2, 1).await.is_empty());
    store.close().await.expect("close");
}

/// `latest` is read from the index; retention keeps a series' newest reading before deleting it,
/// so `latest` still answers for a series whose readings are all gone, across a reopen too.
#[tokio::test]
async fn latest_survives_retention_of_its_readings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    let mut old = reading(7, 2, 50, 1);
    old.value = 1.5;
    let rows = vec![
        reading(7, 1, 100, 1),
        reading(7, 1, 200, 2),
        old,
        reading(7, 1, 5_000_000, 3),
    ];
    store
        .write_batch(WriteBatch {
            rows,
            ..WriteBatch::default()
        })
        .await
        .expect("write");
    assert_eq!(store.delete_older_than(1_000_000).await.expect("delete"), 3);
    assert!(
        series(&store, 7, 2).await.is_empty(),
        "channel 2 was deleted"
    );
    let got = store.latest(7).await.expect("latest");
    let got: Vec<(u16, i64, f64)> = got.iter().map(|l| (l.channel, l.ts_us, l.value)).collect();
    assert_eq!(got, vec![(1, 5_000_000, 2_500_000.0), (2, 50, 1.5)]);

    // An older reading does not replace the kept one; one at the same time (a later write) does.
    let mut older = reading(7, 2, 40, 4);
    older.value = 9.0;
    store
        .write_batch(WriteBatch {
            rows: vec![older],
            ..WriteBatch::default()
        })
        .await
        .expect("write older");
    let kept = store.latest(7).await.expect("latest")[1];
    assert_eq!((kept.ts_us, kept.value), (50, 1.5), "older must not win");
    let mut same_time = reading(7, 2, 50, 5);
    same_time.value = 7.0;
    store
        .write_batch(WriteBatch {
            rows: vec![same_time],
            ..WriteBatch::default()
        })
        .await
        .expect("write same time");
    store.close().await.expect("close");

    let store = open(dir.path());
    let got = store.latest(7).await.expect("latest after reopen");
    let got: Vec<(u16, i64, f64)> = got.iter().map(|l| (l.channel, l.ts_us, l.value)).collect();
    assert_eq!(
        got,
        vec![(1, 5_000_000, 2_500_000.0), (2, 50, 7.0)],
        "equal times: the later write wins"
    );
    store.close().await.expect("close");
}

#[tokio::test]
async fn revocation_written_by_another_open_store_is_seen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = open(dir.path());
    server
        .write_batch(frames_batch(2, 2, 2, 1))
        .await
        .expect("write");
    // What `ingest token revoke` does while the server runs.
    let cli = open(dir.path());
    let revocation = Revocation {
        subject: "device:2".into(),
        issued_before_s: 1_700_000_000,
    };
    cli.revoke(revocation.clone())
        .await
        .expect("revoke from the second store");
    cli.close().await.expect("close cli");
    assert_eq!(
        server.revocations().await.expect("revocations"),
        vec![revocation]
    );
    server
        .write_batch(frames_batch(2, 2, 2, 3))
        .await
        .expect("server still writes");
    server.ping().await.expect("ping");
    server.close().await.expect("close");
}

/// Environment variable naming the database the kill -9 child writes to.
const CHILD_DB: &str = "TELEMUX_STORE_KILL9_DB";
/// Readings per batch of the kill -9 child.
const CHILD_ROWS: u64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_batches_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(DB_FILE);
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "kill9_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut acked = 0;
    while acked < 30 {
        let line = lines
            .next()
            .expect("child ended early")
            .expect("read child");
        if let Some(n) = line.strip_prefix("acked ") {
            acked = n.parse().expect("batch number");
        }
    }
    child.kill().expect("kill -9"); // SIGKILL on Unix
    child.wait().expect("reap child");
    for line in lines {
        if let Some(n) = line.expect("read child").strip_prefix("acked ") {
            acked = n.parse().expect("batch number");
        }
    }

    let store = SqliteStore::open(
        &path,
        SqliteOptions {
            synchronous: Synchronous::Normal,
            ..Default::default()
        },
    )
    .expect("reopen after kill");
    let rows = series(&store, 42, 0).await;
    let stored = rows.len() as u64 / CHILD_ROWS;
    assert_eq!(
        rows.len() as u64 % CHILD_ROWS,
        0,
        "a batch was stored in part"
    );
    assert!(stored >= acked, "{acked} batches acked, {stored} stored");
    let window = store
        .dedup_window(42, 1024)
        .await
        .expect("dedup")
        .expect("window");
    assert_eq!(
        window.high_water(),
        stored,
        "dedup window committed with exactly its readings"
    );
    store.close().await.expect("close");
}

/// Child process of `acked_batches_survive_kill_9`: writes batches forever, printing each ack.
#[tokio::test]
#[ignore = "child process of acked_batches_survive_kill_9"]
async fn kill9_child() {
    use std::io::Write;
    let Some(path) = std::env::var_os(CHILD_DB) else {
        return;
    };
    // Staged readings move every few batches, so the kill also lands in a move.
    let options = SqliteOptions {
        synchronous: Synchronous::Normal,
        staging: StagingLimits {
            rows: 3 * CHILD_ROWS,
            rows_per_device: 0,
            age: Duration::from_secs(3600),
            move_rows: 1,
        },
        ..Default::default()
    };
    let store = SqliteStore::open(Path::new(&path), options).expect("open");
    let mut window = DedupWindow::new(1024);
    for seq in 1.. {
        window.insert(seq);
        let rows = (0..CHILD_ROWS)
            .map(|i| reading(42, 0, (seq * CHILD_ROWS + i) as i64, seq))
            .collect();
        let batch = WriteBatch {
            rows,
            dedup: vec![(42, window.clone())],
            last_seen: vec![(42, seq as i64)],
        };
        store.write_batch(batch).await.expect("write");
        let mut out = std::io::stdout().lock();
        writeln!(out, "acked {seq}")
            .and_then(|()| out.flush())
            .expect("stdout");
    }
}

/// Rows/s of `write_batch` with 10k-row batches; run with `--release --ignored --nocapture`.
/// Timed after a warm-up, so every series already has more rows than an index page holds (each
/// commit then rewrites one index page per series, as in a long-running server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement"]
async fn write_throughput() {
    const WARM_UP: u64 = 30;
    const TIMED: u64 = 100;
    for synchronous in [Synchronous::Normal, Synchronous::Full] {
        // (devices, frames per device, channels per frame) per 10k-row batch
        for (devices, frames, channels) in [(100u64, 10u64, 10u16), (1_000, 2, 5)] {
            let dir = tempfile::tempdir().expect("temp dir");
            let options = SqliteOptions {
                synchronous,
                ..Default::default()
            };
            let store = SqliteStore::open(&dir.path().join(DB_FILE), options).expect("open");
            let mut batches = (0..WARM_UP + TIMED)
                .map(|b| frames_batch(devices, frames, channels, 1 + b * frames));
            for batch in batches.by_ref().take(WARM_UP as usize) {
                store.write_batch(batch).await.expect("write");
            }
            let batches: Vec<WriteBatch> = batches.collect();
            let rows: usize = batches.iter().map(|b| b.rows.len()).sum();
            let cpu_before = thread_cpu_secs("sqlite-writer");
            let started = Instant::now();
            for batch in batches {
                store.write_batch(batch).await.expect("write");
            }
            let secs = started.elapsed().as_secs_f64();
            let cpu = thread_cpu_secs("sqlite-writer") - cpu_before;
            println!(
                "synchronous={synchronous:?} {devices} devices x {frames} frames x {channels} channels: \
                 {rows} rows in {secs:.2}s = {:.0} rows/s ({:.0} rows per writer CPU second)",
                rows as f64 / secs,
                rows as f64 / cpu
            );
            store.close().await.expect("close");
        }
    }
}

/// CPU time (user + system) of this process's threads named `name`, from /proc (Linux).
fn thread_cpu_secs(name: &str) -> f64 {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let after_name = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split(' ').collect();
        // utime and stime are fields 14 and 15 of stat; 12 and 13 after "pid (comm) ".
        ticks += fields
            .get(11)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
        ticks += fields
            .get(12)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    }
    ticks as f64 / 100.0 // USER_HZ
}

/// Nice values of this process's threads named `name` (Linux: /proc/self/task/*/stat, field 19).
#[cfg(target_os = "linux")]
fn thread_nice_values(name: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ..." : comm may hold spaces, so split after the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != name {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // After "(comm)": state is field 3, so nice (field 19) is index 16.
        if let Some(nice) = fields.get(16).and_then(|f| f.parse().ok()) {
            out.push(nice);
        }
    }
    out
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn writer_and_checkpoint_threads_run_at_the_configured_nice_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(
        &dir.path().join(DB_FILE),
        SqliteOptions {
            writer_nice: 7,
            ..Default::default()
        },
    )
    .expect("open");
    store
        .write_batch(frames_batch(1, 1, 1, 1))
        .await
        .expect("write");
    // Other tests of this binary run stores at nice 0 meanwhile; ours are the ones at 7.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let writer = thread_nice_values("sqlite-writer");
        let checkpoint = thread_nice_values("sqlite-checkpoi");
        if writer.contains(&7) && checkpoint.contains(&7) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "writer threads at {writer:?}, checkpoint threads at {checkpoint:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store.close().await.expect("close");
}
