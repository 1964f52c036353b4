//! Staging: how a batch commits without paying one index page per reading.
//!
//! `readings_series` keeps every series' readings together, so once a fleet has more series than
//! a batch has readings, nearly every reading of a commit lands on an index page of its own
//! (written to the WAL, then copied again by the checkpoint). A batch is therefore appended to
//! a staging table instead, in write order (rowids only grow, so the new rows fill the table's
//! last pages: no index, no page split), grouped by device, with one row per device and batch in
//! `{table}_ranges` saying which rowids hold that device's readings. Staged readings are later
//! moved into `readings` many per series at a time, which is what makes the move cheap
//! (BENCHMARKS.md, "Storage layout").
//!
//! # Two generations
//! Two staging tables take turns. The *appending* one (the greater `gen` in `staging_state`)
//! receives every batch. Once it holds [`StagingLimits::rows`] readings or is
//! [`StagingLimits::age`] old, and the other table is empty, the two swap: the full one becomes
//! the *moving* one, and the writer moves it into `readings` one device range per transaction
//! ([`Stage::move_step`]), while no batch waits for the writer, spread over three quarters of the
//! time the table took to fill ([`Pace`]) so that moving never takes a core away from the
//! server at once. Each step inserts the readings
//! of devices `(moved_through, upper]` and sets `moved_through = upper` in the same
//! transaction, so a crash anywhere moves nothing twice and loses nothing. Once every device is
//! moved, `moved_through` is set to `i64::MAX` (no row of the table is visible any more) and the
//! rows are deleted [`CLEAR_ROWS`] at a time; the step that empties the table also empties its
//! ranges and clears `moved_through`. (One `DELETE` of a million staged rows held the write lock
//! for ~0.35 s, and every ack waited for it.) If moving falls behind (the appending table is
//! due while the other still moves), a step follows every batch and takes twice what the batch
//! brought (a clear step at least [`CLEAR_ROWS`]), so moving catches up without a long step.
//!
//! # Reads
//! A staged reading is visible while its device is above its table's `moved_through` (or that is
//! NULL); at or below, the same reading is in `readings`. Every query reads `readings` plus the
//! visible rows of both tables (found through the device's ranges) in one statement, so it sees
//! one snapshot (see `read`). Of equal times, the later write is the one from the newer source:
//! `readings` (source 0), then the tables by `gen`; within a source, the greater rowid.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction};

use crate::telemetry as m;

/// The two staging tables (the columns of `readings`; each has a `{name}_ranges` table).
pub(super) const TABLES: [&str; 2] = ["staging_a", "staging_b"];

/// SQL condition: a row of staging table `table` whose device is `device` (an SQL expression)
/// has not been moved yet, so it is read from staging (once moved, it is read from `readings`).
pub(super) fn unmoved(table: &str, device: &str) -> String {
    format!(
        "(SELECT coalesce({device} > moved_through, 1) FROM staging_state WHERE name = '{table}')"
    )
}

/// The appending table's row limit is at most this many times [`StagingLimits::rows`] however
/// many devices it holds (disk and read cost stay bounded).
pub const MAX_ROWS_FACTOR: u64 = 16;

/// Staged readings one step deletes once a table is all moved (about 10 ms of write lock).
const CLEAR_ROWS: i64 = 16_384;

/// When the appending table is handed to the mover, and how much one move step moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StagingLimits {
    /// Readings the appending table holds at least before it is moved (default 1,000,000: at 64
    /// channels per frame and 1,000 devices, about 15 readings per series per move).
    pub rows: u64,
    /// Readings per device in the appending table before it is moved, so a larger fleet (more
    /// series) still gives each series several readings per move (default 1,000; the limit is
    /// this times the devices in the table, between `rows` and [`MAX_ROWS_FACTOR`] x `rows`).
    /// At 10,000 devices x 64 channels, 1,000,000 rows gave each series 1.6 readings per move:
    /// moving fell behind and acks waited seconds (`BENCHMARKS.md`).
    pub rows_per_device: u64,
    /// Oldest the appending table gets before it is moved, if it holds anything (default 30 s),
    /// so a quiet fleet's readings also reach series order.
    pub age: Duration,
    /// Readings one move transaction takes at least (whole devices, so it may take more; default
    /// 2,048: about 3 ms of write lock on the benchmark machine, which the next batch may wait
    /// for). Steps run while no batch waits; once moving falls behind appending (see
    /// `Stage::move_behind`) a step follows every batch and takes twice what it brought, so
    /// moving catches up.
    pub move_rows: u64,
}

impl Default for StagingLimits {
    fn default() -> Self {
        StagingLimits {
            rows: 1_000_000,
            rows_per_device: 1_000,
            age: Duration::from_secs(30),
            move_rows: 2_048,
        }
    }
}

/// The writer's view of the staging tables (it is the only one that changes them).
pub(super) struct Stage {
    limits: StagingLimits,
    /// Index into [`TABLES`] of the appending table.
    appending: usize,
    /// The other table's move, if it holds readings.
    moving: Option<Moving>,
    /// Readings in the appending table.
    appended: u64,
    /// Devices with readings in the appending table (its row limit grows with them).
    devices: HashSet<i64>,
    /// When the appending table received its first reading (None: empty).
    since: Option<Instant>,
    /// Readings of the last batch, so a move step keeps pace with what batches bring.
    last_batch: u64,
    /// Per table, the greatest rowid given out since it was last emptied: rowids (write order)
    /// are never reused while `ranges` rows may still name them.
    last_rowid: [i64; 2],
}

/// A table being moved into `readings`.
#[derive(Clone, Copy, Debug)]
struct Moving {
    /// Index into [`TABLES`].
    table: usize,
    /// Devices (as stored, i64) up to and including this one are moved already.
    moved_through: Option<i64>,
    /// How fast to move (None: as fast as batches allow, e.g. a table left by the last run).
    pace: Option<Pace>,
}

/// Spreads a table's move (and the clearing after it) over three quarters of the time the
/// table took to fill (at most of [`StagingLimits::age`]), instead of moving it flat out: a
/// move of a million readings is about a second of one core's time, and taken at once it
/// starved the live fan-out of CPU on a 2-core machine (live p99 went from ~15 ms to 70-170 ms
/// for that second, `BENCHMARKS.md`). Three quarters leave room for the fleet's rate to grow
/// by a third before moving falls behind (which then takes over: a step after every batch,
/// unpaced).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Pace {
    /// When the move started.
    started: Instant,
    /// Over how long the work is spread.
    span: Duration,
    /// Work to do: rows to move plus rows to delete afterwards.
    total: u64,
    /// Work done so far.
    done: u64,
}

/// The part of a table's fill time over which its move is spread (see [`Pace`]).
const SPAN_OF_FILL: f64 = 0.75;

impl Pace {
    /// Pacing for moving `rows` readings that took `filled` to stage, from `now`. A fill time
    /// over `max_fill` (a table that waited for the other one to empty) counts as `max_fill`.
    pub(super) fn new(now: Instant, filled: Duration, max_fill: Duration, rows: u64) -> Pace {
        Pace {
            started: now,
            span: filled.min(max_fill).mul_f64(SPAN_OF_FILL),
            total: rows.saturating_mul(2),
            done: 0,
        }
    }

    /// When the next step may run: at once while the work done is behind a straight line
    /// from nothing at `started` to everything at `started + span`, else when the line
    /// reaches it.
    pub(super) fn next_due(&self) -> Instant {
        if self.total == 0 || self.done >= self.total {
            return self.started; // more work than expected (a table left by a crash): go on
        }
        let fraction = self.done as f64 / self.total as f64;
        self.started + self.span.mul_f64(fraction)
    }
}

impl Stage {
    /// Reads the staging state as the last run left it.
    pub(super) fn load(conn: &Connection, limits: StagingLimits) -> rusqlite::Result<Stage> {
        let mut state = [(0i64, None::<i64>); 2];
        for (i, table) in TABLES.iter().enumerate() {
            state[i] = conn.query_row(
                "SELECT gen, moved_through FROM staging_state WHERE name = ?1",
                [table],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
        }
        let appending = usize::from(state[1].0 > state[0].0);
        let other = 1 - appending;
        let holds = |t: usize| -> rusqlite::Result<bool> {
            conn.query_row(
                &format!("SELECT EXISTS (SELECT 1 FROM {})", TABLES[t]),
                [],
                |r| r.get(0),
            )
        };
        let moving = holds(other)?.then_some(Moving {
            table: other,
            moved_through: state[other].1,
            pace: None,
        });
        let appended: i64 = conn.query_row(
            &format!("SELECT count(*) FROM {}", TABLES[appending]),
            [],
            |r| r.get(0),
        )?;
        let devices = conn
            .prepare(&format!(
                "SELECT DISTINCT device_id FROM {}_ranges",
                TABLES[appending]
            ))?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<HashSet<i64>>>()?;
        let mut last_rowid = [0; 2];
        for (i, table) in TABLES.iter().enumerate() {
            last_rowid[i] = conn.query_row(
                &format!(
                    "SELECT max(coalesce((SELECT max(rowid) FROM {table}), 0), \
                     coalesce((SELECT max(last) FROM {table}_ranges), 0))"
                ),
                [],
                |r| r.get(0),
            )?;
        }
        Ok(Stage {
            last_rowid,
            limits,
            appending,
            moving,
            appended: appended as u64,
            devices,
            since: (appended > 0).then(Instant::now),
            last_batch: 0,
        })
    }

    /// Whether the mover has work (the writer then waits for commands only until a step is due).
    pub(super) fn has_move_work(&self) -> bool {
        self.moving.is_some()
    }

    /// When the next move step is due, if a table is being moved: now (or earlier) when it is
    /// unpaced, behind, or behind its pace; later when the move is ahead of its pace (see
    /// [`Pace`]).
    pub(super) fn move_due(&self) -> Option<Instant> {
        let moving = self.moving?;
        match moving.pace {
            Some(pace) if !self.move_behind() => Some(pace.next_due()),
            _ => Some(Instant::now()),
        }
    }

    /// Whether moving has fallen behind: the appending table is due for its swap while the
    /// other one is still being moved. Steps then run after every batch and take twice as many
    /// readings as the last batch brought; otherwise they take `move_rows` and run only while
    /// no batch waits.
    pub(super) fn move_behind(&self) -> bool {
        self.moving.is_some() && self.appending_due()
    }

    /// Whether the appending table has reached its row or age limit.
    fn appending_due(&self) -> bool {
        self.appended >= self.rows_limit()
            || self.since.is_some_and(|t| t.elapsed() >= self.limits.age)
    }

    /// Readings the appending table takes before it is due: `rows_per_device` per device in it,
    /// at least `rows`, at most `MAX_ROWS_FACTOR` x `rows`.
    fn rows_limit(&self) -> u64 {
        let rows = self.limits.rows;
        (self.devices.len() as u64)
            .saturating_mul(self.limits.rows_per_device)
            .clamp(rows, rows.saturating_mul(MAX_ROWS_FACTOR))
    }

    /// The table a batch appends to, after making it the newest generation if the current one
    /// is due for moving (within `tx`, the batch's transaction), and the greatest rowid it has
    /// given out (the batch takes the rowids after it). Call [`committed`](Self::committed) once
    /// `tx` commits.
    pub(super) fn table_for_batch(
        &self,
        tx: &Transaction<'_>,
    ) -> rusqlite::Result<(&'static str, i64)> {
        if !self.swap_due() {
            return Ok((TABLES[self.appending], self.last_rowid[self.appending]));
        }
        let next = 1 - self.appending;
        tx.prepare_cached(
            "UPDATE staging_state SET gen = (SELECT max(gen) FROM staging_state) + 1, \
             moved_through = NULL WHERE name = ?1",
        )?
        .execute([TABLES[next]])?;
        Ok((TABLES[next], self.last_rowid[next]))
    }

    fn swap_due(&self) -> bool {
        self.moving.is_none() && self.appended > 0 && self.appending_due()
    }

    /// Records a committed batch of `rows` readings of `devices` appended to `table`.
    pub(super) fn committed(
        &mut self,
        table: &str,
        rows: u64,
        devices: impl IntoIterator<Item = i64>,
    ) {
        if table != TABLES[self.appending] {
            let now = Instant::now();
            let filled = self.since.map_or(Duration::ZERO, |t| now.duration_since(t));
            self.moving = Some(Moving {
                table: self.appending,
                moved_through: None,
                pace: Some(Pace::new(now, filled, self.limits.age, self.appended)),
            });
            self.appending = 1 - self.appending;
            self.appended = 0;
            self.devices.clear();
            self.since = None;
        }
        self.devices.extend(devices);
        self.last_rowid[self.appending] += rows as i64;
        if rows > 0 {
            self.appended += rows;
            self.since.get_or_insert_with(Instant::now);
        }
        metrics::gauge!(m::STAGED_READINGS).set(self.appended as f64);
        self.last_batch = rows;
    }

    /// Moves the next device range of the moving table into `readings` in one transaction;
    /// after the last range the table is emptied. Returns the readings moved.
    pub(super) fn move_step(&mut self, conn: &mut Connection) -> rusqlite::Result<u64> {
        let Some(moving) = self.moving else {
            return Ok(0);
        };
        let table = TABLES[moving.table];
        let from = match moving.moved_through {
            None => Some(i64::MIN),
            Some(d) => d.checked_add(1),
        };
        // Behind, a step takes twice what the last batch appended, a move step and then a
        // clear step alike: the moving table is moved and cleared while the appending one
        // grows by at most as much as it held, so neither grows without end.
        let budget = if self.move_behind() {
            self.limits.move_rows.max(self.last_batch.saturating_mul(2))
        } else {
            self.limits.move_rows
        }
        .max(1);
        let started = Instant::now();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // The device whose readings reach the budget (all of them go), or None: the rest.
        let upper: Option<i64> = match from {
            None => None,
            Some(from) => {
                let mut per_device = tx.prepare_cached(&format!(
                    "SELECT device_id, sum(last - first + 1) FROM {table}_ranges \
                     WHERE device_id >= ?1 GROUP BY device_id ORDER BY device_id"
                ))?;
                let mut devices = per_device.query([from])?;
                let mut taken = 0u64;
                let mut upper = None;
                while let Some(row) = devices.next()? {
                    taken += row.get::<_, i64>(1)? as u64;
                    if taken >= budget {
                        upper = Some(row.get(0)?);
                        break;
                    }
                }
                upper
            }
        };
        // CROSS JOIN and NOT INDEXED pin the plan: each range row, then its rowids (without
        // statistics SQLite may otherwise scan the table or build a temporary index over it).
        let moved = match from {
            None => 0,
            Some(from) => tx
                .prepare_cached(&format!(
                    "INSERT INTO readings (device_id, channel, ts_us, seq, quality, value) \
                     SELECT t.device_id, t.channel, t.ts_us, t.seq, t.quality, t.value \
                     FROM {table}_ranges r CROSS JOIN {table} t NOT INDEXED \
                     ON t.rowid BETWEEN r.first AND r.last AND t.device_id = r.device_id \
                     WHERE r.device_id >= ?1 AND r.device_id <= ?2 \
                     ORDER BY t.device_id, t.channel, t.ts_us, t.seq, t.rowid"
                ))?
                .execute((from, upper.unwrap_or(i64::MAX)))? as u64,
        };
        let mut emptied = false;
        let mut cleared = 0u64;
        let set_moved_through = |through: i64| {
            tx.prepare_cached("UPDATE staging_state SET moved_through = ?2 WHERE name = ?1")?
                .execute((table, through))
        };
        match upper {
            Some(upper) => {
                set_moved_through(upper)?;
            }
            None => {
                // Every device counts as moved (no read sees these rows any more) and the rows
                // go `CLEAR_ROWS` at a time (behind: at least the step's budget), so no single
                // step holds the write lock long.
                if moving.moved_through != Some(i64::MAX) {
                    set_moved_through(i64::MAX)?;
                }
                cleared = tx
                    .prepare_cached(&format!(
                        "DELETE FROM {table} WHERE rowid < (SELECT min(rowid) FROM {table}) + ?1"
                    ))?
                    .execute([CLEAR_ROWS.max(budget as i64)])? as u64;
                let left: bool =
                    tx.query_row(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), [], |r| {
                        r.get(0)
                    })?;
                if !left {
                    tx.execute_batch(&format!(
                        "DELETE FROM {table}_ranges; \
                         UPDATE staging_state SET moved_through = NULL WHERE name = '{table}';"
                    ))?;
                    emptied = true;
                }
            }
        }
        tx.commit()?;
        metrics::histogram!(m::MOVE_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::counter!(m::MOVED_READINGS).increment(moved);
        if emptied {
            self.last_rowid[moving.table] = 0;
        }
        let pace = moving.pace.map(|p| Pace {
            done: p.done + moved + cleared,
            ..p
        });
        self.moving = (!emptied).then_some(Moving {
            table: moving.table,
            moved_through: Some(upper.unwrap_or(i64::MAX)),
            pace,
        });
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_move_follows_a_straight_line_over_its_span() {
        let t0 = Instant::now();
        // 1,000 rows staged over 8 s: 2,000 rows of work (move, then clear) over 6 s.
        let mut pace = Pace::new(t0, Duration::from_secs(8), Duration::from_secs(30), 1_000);
        assert_eq!(pace.span, Duration::from_secs(6));
        assert_eq!(
            pace.next_due(),
            t0,
            "nothing done: the first step is due at once"
        );
        pace.done = 500;
        assert_eq!(pace.next_due(), t0 + Duration::from_millis(1_500));
        pace.done = 1_999;
        assert!(pace.next_due() < t0 + Duration::from_secs(6));
        pace.done = 2_000;
        assert_eq!(pace.next_due(), t0, "more work than counted: go on at once");
    }

    #[test]
    fn a_table_filled_in_no_time_is_moved_without_waiting() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0, Duration::ZERO, Duration::from_secs(30), 10_000);
        pace.done = 5_000;
        assert_eq!(pace.next_due(), t0);
    }

    #[test]
    fn a_table_that_waited_long_is_paced_as_if_filled_in_the_age_limit() {
        let t0 = Instant::now();
        // Half an hour since its first reading (it waited for the other table), 30 s age limit.
        let pace = Pace::new(
            t0,
            Duration::from_secs(1_800),
            Duration::from_secs(30),
            1_000,
        );
        assert_eq!(pace.span, Duration::from_millis(22_500));
    }
}
