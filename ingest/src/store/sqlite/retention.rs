//! Retention (`delete_older_than`): first the staged readings (see `stage`; seconds of data, one
//! statement per staging table), then series by series through the index, in short transactions
//! the writer thread runs between its other commands, so batches keep committing meanwhile.

use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::read::{FIRST_SERIES, NEXT_SERIES, newest_in_series};
use super::stage::{TABLES, unmoved};
use super::{Reply, to_sql};

/// Most rows one retention transaction deletes, so the write lock is held for milliseconds.
const DELETE_CHUNK_ROWS: u64 = 10_000;
/// Longest one retention transaction keeps going (many series with little to delete each).
const DELETE_CHUNK_TIME: Duration = Duration::from_millis(50);
const DELETE_SERIES_CHUNK: &str = "DELETE FROM readings WHERE rowid IN (SELECT rowid FROM readings \
     WHERE device_id = ?1 AND channel = ?2 AND ts_us < ?3 LIMIT ?4)";
/// Keeps a series' newest reading before retention deletes it (of equal times, the later).
const KEEP_LATEST: &str = "INSERT INTO latest (device_id, channel, ts_us, value, quality) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (device_id, channel) DO UPDATE SET \
     ts_us = excluded.ts_us, value = excluded.value, quality = excluded.quality \
     WHERE excluded.ts_us >= latest.ts_us";

/// Keeps the newest staged reading of each series that retention deletes from `{table}` (the
/// upsert keeps whichever of it and `latest`'s reading is newer; a newer reading elsewhere wins
/// on read anyway). `{visible}` is `stage::unmoved` for the table's rows.
const KEEP_STAGED_LATEST: &str = "INSERT INTO latest (device_id, channel, ts_us, value, quality) \
     SELECT device_id, channel, max(ts_us), value, quality FROM {table} \
     WHERE ts_us < ?1 AND {visible} GROUP BY device_id, channel \
     ON CONFLICT (device_id, channel) DO UPDATE SET \
     ts_us = excluded.ts_us, value = excluded.value, quality = excluded.quality \
     WHERE excluded.ts_us >= latest.ts_us";
const DELETE_STAGED: &str = "DELETE FROM {table} WHERE ts_us < ?1 AND {visible}";

/// Where a retention run is in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cursor {
    /// Before the staged readings.
    Staged,
    /// Before the first series.
    Start,
    /// At this `(device_id, channel)` series.
    At(i64, i64),
    /// Past the last series.
    Done,
}

/// A `delete_older_than` in progress.
pub(super) struct DeleteJob {
    /// Readings older than this are deleted.
    cutoff_us: i64,
    /// The series to delete from next.
    cursor: Cursor,
    /// Rows deleted so far (the answer).
    pub(super) deleted: u64,
    /// Where the answer goes.
    pub(super) reply: Reply<u64>,
}

impl DeleteJob {
    /// A job that starts at the first series.
    pub(super) fn new(cutoff_us: i64, reply: Reply<u64>) -> DeleteJob {
        DeleteJob {
            cutoff_us,
            cursor: Cursor::Staged,
            deleted: 0,
            reply,
        }
    }

    /// Deletes up to [`DELETE_CHUNK_ROWS`] rows in one transaction; true when nothing is left.
    /// Before deleting from a series, its newest reading is kept in `latest` if it is among the
    /// rows to delete (in this transaction, so `latest` reads never miss it).
    pub(super) fn step(&mut self, conn: &mut Connection) -> rusqlite::Result<bool> {
        let started = Instant::now();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut cursor = self.cursor;
        let mut budget = DELETE_CHUNK_ROWS;
        let mut deleted = 0;
        let mut kept_current = false;
        while budget > 0 && started.elapsed() < DELETE_CHUNK_TIME {
            let (device_id, channel) = match cursor {
                Cursor::Staged => {
                    deleted += delete_staged(&tx, self.cutoff_us)?;
                    cursor = Cursor::Start;
                    continue;
                }
                Cursor::Start => {
                    cursor = series(
                        tx.prepare_cached(FIRST_SERIES)?
                            .query_row([], pair)
                            .optional()?,
                    );
                    continue;
                }
                Cursor::At(d, c) => (d, c),
                Cursor::Done => break,
            };
            if !kept_current {
                keep_newest(&tx, device_id, channel, self.cutoff_us)?;
                kept_current = true;
            }
            let n = tx.prepare_cached(DELETE_SERIES_CHUNK)?.execute((
                device_id,
                channel,
                self.cutoff_us,
                budget as i64,
            ))? as u64;
            if n < budget {
                // This series has nothing older left: on to the next one in the index.
                let next = tx
                    .prepare_cached(NEXT_SERIES)?
                    .query_row((device_id, channel), pair)
                    .optional()?;
                cursor = series(next);
                kept_current = false;
            }
            budget -= n;
            deleted += n;
        }
        tx.commit()?;
        self.cursor = cursor;
        self.deleted += deleted;
        Ok(cursor == Cursor::Done)
    }
}

/// Deletes the visible staged readings older than `cutoff_us`, keeping each series' newest of
/// them in `latest`; returns how many.
fn delete_staged(conn: &Connection, cutoff_us: i64) -> rusqlite::Result<u64> {
    let mut deleted = 0;
    for table in TABLES {
        // Moved rows are deleted from `readings` instead.
        let visible = unmoved(table, &format!("{table}.device_id"));
        let fill = |sql: &str| sql.replace("{visible}", &visible).replace("{table}", table);
        conn.prepare_cached(&fill(KEEP_STAGED_LATEST))?
            .execute([cutoff_us])?;
        deleted += conn
            .prepare_cached(&fill(DELETE_STAGED))?
            .execute([cutoff_us])? as u64;
    }
    Ok(deleted)
}

fn pair(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, i64)> {
    Ok((r.get(0)?, r.get(1)?))
}

fn series(found: Option<(i64, i64)>) -> Cursor {
    found.map_or(Cursor::Done, |(d, c)| Cursor::At(d, c))
}

/// Copies the series' newest reading into `latest` when retention is about to delete it.
fn keep_newest(
    conn: &Connection,
    device_id: i64,
    channel: i64,
    cutoff_us: i64,
) -> rusqlite::Result<()> {
    if let Some(newest) = newest_in_series(conn, device_id, channel)?
        && newest.ts_us < cutoff_us
    {
        conn.prepare_cached(KEEP_LATEST)?.execute((
            device_id,
            channel,
            newest.ts_us,
            to_sql(newest.value),
            newest.quality,
        ))?;
    }
    Ok(())
}
