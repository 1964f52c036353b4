//! Evidence for the storage-layout decision (issue 5): what one reading costs the SQLite writer
//! when batches are small and every series already has its own index leaves, for the store's
//! layout against a staging layout, side by side on the same SQLite and connection settings.
//!
//! - **direct** (the store today): each commit inserts `COMMIT_FRAMES` frames into `readings`,
//!   sorted in `readings_series` order, as the server's writer does.
//! - **staging** (the candidate this measured; the store now stages in a cheaper form, see
//!   `ingest/src/store/sqlite/stage.rs`, so "direct" is the store before that): each commit appends the same frames, in
//!   arrival order, to an unindexed-by-series `staging` table (index on `device_id` only, so a
//!   frame dirties one index page, not one per channel); then everything staged is moved into
//!   `readings` in transactions of `CHUNK_DEVICES` devices each, sorted by series, and the
//!   staging table is emptied. Reported: the append cost, the move cost, and the longest move
//!   transaction (how long it would hold the write lock, delaying acks).
//!
//! Both run with a background thread checkpointing every 50 ms on its own connection, as the
//! store's checkpointer does, and both start from a database prefilled with `PREFILL` frames per device (so series have their
//! own leaves, the steady state of a long-running server), and both are timed over the same
//! `FRAMES` frames. Nothing here is a server: no network, no dedup, no acks.
//!
//! `cargo run --release -p ingest --example layout -- DEVICES CHANNELS PREFILL COMMIT_FRAMES FRAMES CHUNK_DEVICES SYNC`
//! (defaults 1000 64 100 160 20000 5 full). Prints a Markdown table.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{arg, store_connection};
use ingest::store::sqlite::{DB_FILE, Synchronous};
use rusqlite::{Connection, TransactionBehavior};

/// One reading as the store keeps it: (device, channel, ts_us, seq, value).
type Reading = (i64, i64, i64, i64, f64);

const INSERT: &str = "INSERT INTO readings (device_id, channel, ts_us, seq, quality, value) \
     VALUES (?1, ?2, ?3, ?4, 0, ?5)";
const STAGE: &str = "INSERT INTO staging (device_id, channel, ts_us, seq, quality, value) \
     VALUES (?1, ?2, ?3, ?4, 0, ?5)";
const STAGING_SCHEMA: &str = "CREATE TABLE staging (device_id INTEGER NOT NULL, \
     channel INTEGER NOT NULL, ts_us INTEGER NOT NULL, seq INTEGER NOT NULL, \
     quality INTEGER NOT NULL, value REAL); CREATE INDEX staging_device ON staging (device_id);";
const MOVE: &str = "INSERT INTO readings (device_id, channel, ts_us, seq, quality, value) \
     SELECT device_id, channel, ts_us, seq, quality, value FROM staging \
     WHERE device_id >= ?1 AND device_id < ?2 ORDER BY device_id, channel, ts_us, seq, rowid";

struct Shape {
    devices: i64,
    channels: i64,
}

impl Shape {
    /// The readings of frame number `f` (device `f % devices`, one reading per channel).
    fn frame(&self, f: i64, out: &mut Vec<Reading>) {
        let device = f % self.devices;
        let seq = f / self.devices + 1;
        let ts_us = seq * 1_000_000 + device;
        out.extend((1..=self.channels).map(|c| (device, c, ts_us, seq, f as f64 * 0.5)));
    }
}

/// A new database `dir/name/` with the store's schema and writer settings.
fn open(dir: &Path, name: &str, synchronous: Synchronous) -> anyhow::Result<Connection> {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub)?;
    store_connection(&sub.join(DB_FILE), synchronous)
}

/// A thread copying committed WAL pages into the database file every 50 ms
/// (`wal_checkpoint(PASSIVE)`), as the store's checkpointer thread does.
struct Checkpointer {
    /// Dropped to stop the thread.
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    /// Starts checkpointing the database that `conn` has open, on a connection of its own.
    fn start(conn: &Connection) -> anyhow::Result<Checkpointer> {
        let path = conn
            .path()
            .ok_or_else(|| anyhow::anyhow!("the database has no file to checkpoint"))?;
        let own = Connection::open(path)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(Duration::from_millis(50))
            {
                let _ = own.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            }
        });
        Ok(Checkpointer { stop, thread })
    }

    /// Stops the thread and waits for it.
    fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// Inserts `rows` with `sql` in one transaction.
fn commit(conn: &mut Connection, sql: &str, rows: &[Reading]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(sql)?;
        for r in rows {
            insert.execute(*r)?;
        }
    }
    tx.commit()
}

/// Prefills `per_device` frames per device, one sorted transaction per round of devices.
fn prefill(conn: &mut Connection, shape: &Shape, per_device: i64) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for round in 0..per_device {
        rows.clear();
        for f in round * shape.devices..(round + 1) * shape.devices {
            shape.frame(f, &mut rows);
        }
        rows.sort_by_key(|r| (r.0, r.1, r.2, r.3));
        commit(conn, INSERT, &rows)?;
    }
    Ok(())
}

/// Commits frames `first..first + frames` in transactions of `per_commit` frames, each
/// sorted in index order if `sorted`, inserted with `sql`. Returns the time spent.
fn stream(
    conn: &mut Connection,
    shape: &Shape,
    (first, frames, per_commit): (i64, i64, i64),
    sql: &str,
    sorted: bool,
) -> anyhow::Result<Duration> {
    let mut rows = Vec::new();
    let started = Instant::now();
    let mut f = first;
    while f < first + frames {
        rows.clear();
        let end = (f + per_commit).min(first + frames);
        for g in f..end {
            shape.frame(g, &mut rows);
        }
        if sorted {
            rows.sort_by_key(|r| (r.0, r.1, r.2, r.3));
        }
        commit(conn, sql, &rows)?;
        f = end;
    }
    Ok(started.elapsed())
}

/// Moves every staged reading into `readings`, `chunk` devices per transaction, then empties
/// `staging`. Returns (total time, longest transaction).
fn move_staged(
    conn: &mut Connection,
    devices: i64,
    chunk: i64,
) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let mut longest = Duration::ZERO;
    let mut from = 0;
    while from < devices {
        let t = Instant::now();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached(MOVE)?.execute((from, from + chunk))?;
        if from + chunk >= devices {
            tx.execute("DELETE FROM staging", [])?;
        }
        tx.commit()?;
        longest = longest.max(t.elapsed());
        from += chunk;
    }
    Ok((started.elapsed(), longest))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shape = Shape {
        devices: arg(&args, 0, 1000)?,
        channels: arg(&args, 1, 64)?,
    };
    let prefill_per_device: i64 = arg(&args, 2, 100)?;
    let per_commit: i64 = arg(&args, 3, 160)?;
    let frames: i64 = arg(&args, 4, 20_000)?;
    let chunk: i64 = arg(&args, 5, 5)?;
    let synchronous = match args.get(6).map(String::as_str) {
        None | Some("full") => Synchronous::Full,
        Some("normal") => Synchronous::Normal,
        Some(other) => anyhow::bail!("argument 7 (SYNC) is {other}; expected full or normal"),
    };
    if shape.devices < 1 || shape.channels < 1 || per_commit < 1 || frames < 1 || chunk < 1 {
        anyhow::bail!("DEVICES, CHANNELS, COMMIT_FRAMES, FRAMES and CHUNK_DEVICES must be >= 1");
    }
    let dir: PathBuf = std::env::temp_dir().join(format!("telemux-layout-{}", std::process::id()));
    let first = prefill_per_device * shape.devices;
    let readings = (frames * shape.channels) as f64;

    let mut direct = open(&dir, "direct", synchronous)?;
    prefill(&mut direct, &shape, prefill_per_device)?;
    let copier = Checkpointer::start(&direct)?;
    let direct_time = stream(
        &mut direct,
        &shape,
        (first, frames, per_commit),
        INSERT,
        true,
    )?;
    copier.stop();
    drop(direct);

    let mut staged = open(&dir, "staging", synchronous)?;
    prefill(&mut staged, &shape, prefill_per_device)?;
    staged.execute_batch(STAGING_SCHEMA)?;
    let copier = Checkpointer::start(&staged)?;
    let append_time = stream(
        &mut staged,
        &shape,
        (first, frames, per_commit),
        STAGE,
        false,
    )?;
    let (move_time, longest) = move_staged(&mut staged, shape.devices, chunk)?;
    copier.stop();
    let moved: i64 = staged.query_row("SELECT count(*) FROM readings", [], |r| r.get(0))?;
    drop(staged);
    let _ = std::fs::remove_dir_all(&dir);
    let expected = (first + frames) * shape.channels;
    if moved != expected {
        anyhow::bail!("staging layout stored {moved} readings, expected {expected}");
    }

    let us = |d: Duration| d.as_secs_f64() * 1e6 / readings;
    let per_s = |d: Duration| readings / d.as_secs_f64();
    let staging_time = append_time + move_time;
    println!(
        "{} devices x {} channels, {} frames/device prefilled, commits of {} frames ({} readings), {} frames timed, moves of {} devices, sync {:?}\n",
        shape.devices,
        shape.channels,
        prefill_per_device,
        per_commit,
        per_commit * shape.channels,
        frames,
        chunk,
        synchronous
    );
    println!("| layout | step | readings/s | µs per reading | longest move transaction |");
    println!("|---|---|---|---|---|");
    println!(
        "| direct (store today) | commit into `readings` | {:.0} | {:.2} | - |",
        per_s(direct_time),
        us(direct_time)
    );
    println!(
        "| staging | append | {:.0} | {:.2} | - |",
        per_s(append_time),
        us(append_time)
    );
    println!(
        "| staging | move into `readings` | {:.0} | {:.2} | {:.0} ms |",
        per_s(move_time),
        us(move_time),
        longest.as_secs_f64() * 1e3
    );
    println!(
        "| staging | append + move | {:.0} | {:.2} | - |",
        per_s(staging_time),
        us(staging_time)
    );
    println!(
        "\nstaging / direct throughput: {:.2}x",
        direct_time.as_secs_f64() / staging_time.as_secs_f64()
    );
    Ok(())
}
