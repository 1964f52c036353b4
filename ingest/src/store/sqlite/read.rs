//! Read side of the SQLite store: a small pool of read-only connections and every query.
//! WAL gives each statement the last committed snapshot, whatever the writer is doing.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::stage::{TABLES, unmoved};
use super::{db, from_sql};
use crate::dedup::DedupWindow;
use crate::store::{
    Agg, AggQuery, Bucket, DeviceInfo, Latest, RangeQuery, Revocation, Row, StoreError,
};

/// `SELECT {columns} FROM readings WHERE {filter}`, then the same over the visible rows of both
/// staging tables (see `stage`), joined by `UNION ALL`: one statement, so one snapshot. The
/// filter must fix `device_id = ?1`. In `columns`, `SRC` stands for the source's write order
/// (`readings` 0, a staging table its `gen`) and `RID` for the write order within it (the rowid).
fn readings_and_staged(columns: &str, filter: &str) -> String {
    let mut sql = format!(
        "SELECT {} FROM readings WHERE {filter}",
        columns.replace("SRC", "0").replace("RID", "rowid")
    );
    for table in TABLES {
        sql.push_str(" UNION ALL ");
        sql.push_str(&staged(table, columns, filter));
    }
    sql
}

/// `SELECT {columns} FROM {table} WHERE {filter}` over the rows of device `?1` that the move has
/// not reached yet (`readings_and_staged` tells what `SRC` and `RID` stand for).
fn staged(table: &str, columns: &str, filter: &str) -> String {
    // The device's readings through its rowid ranges (see `stage`), with the columns of `readings`.
    let rows = format!(
        "(SELECT t.rowid AS n, t.* FROM {table}_ranges r CROSS JOIN {table} t NOT INDEXED \
         ON t.rowid BETWEEN r.first AND r.last AND t.device_id = r.device_id \
         WHERE r.device_id = ?1)"
    );
    format!(
        "SELECT {} FROM {rows} WHERE {filter} AND {}",
        columns
            .replace(
                "SRC",
                &format!("(SELECT gen FROM staging_state WHERE name = '{table}')")
            )
            .replace("RID", "n"),
        unmoved(table, "?1")
    )
}

/// Every statement that reads readings, built once.
struct Statements {
    /// Readings of one series in a time range, oldest first (`?5` rows at most).
    range: String,
    /// `range` after the cursor `(?6, ?7)`; `?3` is the later of `from_us` and the cursor's
    /// time, so the index scan starts at the cursor.
    range_after: String,
    /// `range` / `range_after` without the values: answered from the indexes alone.
    range_keys: String,
    /// `range_after` without the values.
    range_keys_after: String,
    /// One aggregate statement per [`Agg`], in the order of [`Agg::ALL`].
    aggregates: [String; 7],
    /// The staged readings of device `?1`, with their write order (for `latest`).
    staged_of_device: String,
}

const SERIES: &str = "device_id = ?1 AND channel = ?2 AND ts_us >= ?3 AND ts_us < ?4";
const AFTER: &str = " AND (ts_us, seq) > (?6, ?7)";
/// Bucket start `b` of a reading: the floor of `ts_us / step` times step (SQL `%` truncates
/// toward zero, so negative times step back once).
const BUCKET: &str = "ts_us - ts_us % ?5 - (CASE WHEN ts_us % ?5 < 0 THEN ?5 ELSE 0 END) AS b";

impl Statements {
    fn build() -> Statements {
        let ordered = |columns: &str, filter: &str| {
            format!(
                "{} ORDER BY 1, 2 LIMIT ?5",
                readings_and_staged(columns, filter)
            )
        };
        let readings = format!(
            "({})",
            readings_and_staged("ts_us, seq, value, SRC AS src, RID AS rid", SERIES)
        );
        let grouped = |agg: &str| {
            format!(
                "SELECT b, {agg}, count(*) FROM (SELECT {BUCKET}, value FROM {readings}) GROUP BY b ORDER BY b"
            )
        };
        let ranked = |order: &str| {
            format!(
                "SELECT b, value, n FROM (SELECT b, value, \
                 row_number() OVER (PARTITION BY b ORDER BY {order}) AS rn, \
                 count(*) OVER (PARTITION BY b) AS n FROM \
                 (SELECT {BUCKET}, ts_us, seq, src, rid, value FROM {readings})) \
                 WHERE rn = 1 ORDER BY b"
            )
        };
        let aggregate = |agg: Agg| match agg {
            Agg::Avg => grouped("avg(value)"),
            Agg::Min => grouped("min(value)"),
            Agg::Max => grouped("max(value)"),
            Agg::Sum => grouped("sum(value)"),
            Agg::Count => grouped("count(*)"),
            Agg::First => ranked("ts_us, seq, src, rid"),
            Agg::Last => ranked("ts_us DESC, seq DESC, src DESC, rid DESC"),
        };
        let staged_of_device = TABLES
            .iter()
            .map(|t| {
                staged(
                    t,
                    "channel, ts_us, value, quality, SRC, RID",
                    "device_id = ?1",
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        Statements {
            range: ordered("ts_us, seq, quality, value", SERIES),
            range_after: ordered("ts_us, seq, quality, value", &format!("{SERIES}{AFTER}")),
            range_keys: ordered("ts_us, seq", SERIES),
            range_keys_after: ordered("ts_us, seq", &format!("{SERIES}{AFTER}")),
            aggregates: Agg::ALL.map(aggregate),
            staged_of_device,
        }
    }

    fn aggregate(&self, agg: Agg) -> &str {
        &self.aggregates[agg as usize]
    }
}

static STATEMENTS: LazyLock<Statements> = LazyLock::new(Statements::build);

/// The next channel (after `?2`) of a device that has readings in `readings`: one index seek.
pub(super) const NEXT_CHANNEL: &str = "SELECT channel FROM readings \
     WHERE device_id = ?1 AND channel > ?2 ORDER BY channel LIMIT 1";
/// The series after `(?1, ?2)` that has readings, in index order: one index seek.
pub(super) const NEXT_SERIES: &str = "SELECT device_id, channel FROM readings \
     WHERE (device_id, channel) > (?1, ?2) ORDER BY device_id, channel LIMIT 1";
/// The first series that has readings.
pub(super) const FIRST_SERIES: &str =
    "SELECT device_id, channel FROM readings ORDER BY device_id, channel LIMIT 1";
/// The newest reading of a series in `readings`: the greatest `ts_us`, of equal times the later
/// write (the greater rowid; rowids only grow while newer rows exist). Two seeks into the index.
pub(super) const NEWEST_IN_SERIES: &str = "SELECT ts_us, value, quality FROM readings \
     WHERE device_id = ?1 AND channel = ?2 AND ts_us = \
     (SELECT max(ts_us) FROM readings WHERE device_id = ?1 AND channel = ?2) \
     ORDER BY rowid DESC LIMIT 1";
/// What retention kept of each series' newest reading (see the module doc).
const LATEST_KEPT: &str =
    "SELECT channel, ts_us, value, quality FROM latest WHERE device_id = ?1 ORDER BY channel";

/// Read-only connections handed out one query at a time.
pub(super) struct ReadPool {
    /// One permit per idle connection in `conns`.
    permits: Arc<Semaphore>,
    /// Bulk reads (history queries, listings) may hold all connections but one, so a device
    /// that connects never waits behind long API queries for its dedup window.
    bulk: Arc<Semaphore>,
    /// Idle connections.
    conns: Mutex<Vec<Connection>>,
}

impl ReadPool {
    /// A pool of the given (already opened and configured) connections.
    pub(super) fn new(conns: Vec<Connection>) -> ReadPool {
        ReadPool {
            permits: Arc::new(Semaphore::new(conns.len())),
            bulk: Arc::new(Semaphore::new(conns.len().saturating_sub(1).max(1))),
            conns: Mutex::new(conns),
        }
    }

    /// Waits for an idle connection.
    pub(super) async fn take(pool: &Arc<ReadPool>, lane: Lane) -> Result<PooledConn, StoreError> {
        let bulk = match lane {
            Lane::Bulk => Some(
                pool.bulk
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| StoreError::Closed)?,
            ),
            Lane::Urgent => None,
        };
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
            _bulk: bulk,
        })
    }
}

/// A read connection that goes back to its pool when dropped (also when the query panics).
pub(super) struct PooledConn {
    conn: Option<Connection>,
    pool: Arc<ReadPool>,
    /// Released after the connection is back in the pool (fields drop after `drop`).
    _permit: OwnedSemaphorePermit,
    /// The bulk lane's permit, for bulk reads.
    _bulk: Option<OwnedSemaphorePermit>,
}

/// Which reads may take the last free connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lane {
    /// On a device's connect path (its dedup window): any free connection.
    Urgent,
    /// Everything else: all connections but one.
    Bulk,
}

impl PooledConn {
    /// The connection (present until dropped).
    pub(super) fn get(&self) -> &Connection {
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

/// The committed dedup window of a device.
pub(super) fn dedup_window(
    conn: &Connection,
    device_id: u64,
    window: u32,
) -> Result<Option<DedupWindow>, StoreError> {
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
}

/// Every known device, by id.
pub(super) fn devices(conn: &Connection) -> Result<Vec<DeviceInfo>, StoreError> {
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
    let mut devices: Vec<DeviceInfo> = rows
        .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
        .map_err(db)?;
    // By u64 id: SQL orders the stored i64, which puts ids >= 2^63 first.
    devices.sort_unstable_by_key(|d| d.device_id);
    Ok(devices)
}

/// The newest reading of one series from the index, if it has readings.
pub(super) fn newest_in_series(
    conn: &Connection,
    device_id: i64,
    channel: i64,
) -> rusqlite::Result<Option<Latest>> {
    conn.prepare_cached(NEWEST_IN_SERIES)?
        .query_row((device_id, channel), |r| {
            Ok(Latest {
                channel: channel as u16,
                ts_us: r.get(0)?,
                value: from_sql(r.get(1)?),
                quality: r.get(2)?,
            })
        })
        .optional()
}

/// Newest reading per channel of a device: the newest of the index's (one seek per channel),
/// the staged readings' (see `stage`), and what retention kept in `latest`. Of equal times the
/// later write wins: staged over `readings` (a staged reading was written after every reading
/// of its device already moved), both over `latest`. The index is read first: retention copies
/// a newest reading into `latest` before (in the same transaction as) deleting it, so a reading
/// deleted between the two steps is found in `latest`.
pub(super) fn latest(conn: &Connection, device_id: u64) -> Result<Vec<Latest>, StoreError> {
    let d = device_id as i64;
    // Channel -> (newest reading, its write order: source, rowid).
    let mut newest: BTreeMap<u16, (Latest, (i64, i64))> = BTreeMap::new();
    let mut next = conn.prepare_cached(NEXT_CHANNEL).map_err(db)?;
    let mut after = -1i64;
    while let Some(channel) = next
        .query_row((d, after), |r| r.get::<_, i64>(0))
        .optional()
        .map_err(db)?
    {
        if let Some(l) = newest_in_series(conn, d, channel).map_err(db)? {
            newest.insert(l.channel, (l, (0, 0)));
        }
        after = channel;
    }
    let mut staged = conn
        .prepare_cached(&STATEMENTS.staged_of_device)
        .map_err(db)?;
    let mut rows = staged.query([d]).map_err(db)?;
    while let Some(r) = rows.next().map_err(db)? {
        let l = Latest {
            channel: r.get(0).map_err(db)?,
            ts_us: r.get(1).map_err(db)?,
            value: from_sql(r.get(2).map_err(db)?),
            quality: r.get(3).map_err(db)?,
        };
        let order: (i64, i64) = (r.get(4).map_err(db)?, r.get(5).map_err(db)?);
        match newest.get(&l.channel) {
            Some((n, o)) if (n.ts_us, *o) > (l.ts_us, order) => {}
            _ => {
                newest.insert(l.channel, (l, order));
            }
        }
    }
    let mut kept = conn.prepare_cached(LATEST_KEPT).map_err(db)?;
    let rows = kept
        .query_map([d], |r| {
            Ok(Latest {
                channel: r.get(0)?,
                ts_us: r.get(1)?,
                value: from_sql(r.get(2)?),
                quality: r.get(3)?,
            })
        })
        .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
        .map_err(db)?;
    for l in rows {
        // Equal times: the index's or the staged reading is the later write.
        match newest.get(&l.channel) {
            Some((n, _)) if n.ts_us >= l.ts_us => {}
            _ => {
                newest.insert(l.channel, (l, (-1, 0)));
            }
        }
    }
    Ok(newest.into_values().map(|(l, _)| l).collect())
}

/// Raw readings of one series, oldest first.
pub(super) fn range(conn: &Connection, q: RangeQuery) -> Result<Vec<Row>, StoreError> {
    let sql = &*STATEMENTS;
    range_with(conn, q, (&sql.range, &sql.range_after), |r| {
        Ok(Row {
            device_id: q.device_id,
            channel: q.channel,
            ts_us: r.get(0)?,
            seq: r.get::<_, i64>(1)? as u64,
            quality: r.get(2)?,
            value: from_sql(r.get(3)?),
        })
    })
}

/// The `(ts_us, seq)` keys `range` would return, from the indexes alone.
pub(super) fn range_keys(conn: &Connection, q: RangeQuery) -> Result<Vec<(i64, u64)>, StoreError> {
    let sql = &*STATEMENTS;
    range_with(conn, q, (&sql.range_keys, &sql.range_keys_after), |r| {
        Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
    })
}

/// Runs a range query (`sql.0` from the start, `sql.1` after the query's cursor), mapping rows.
fn range_with<T>(
    conn: &Connection,
    q: RangeQuery,
    sql: (&str, &str),
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let (d, c, limit) = (q.device_id as i64, q.channel, i64::from(q.limit));
    let rows = match q.after {
        None => conn.prepare_cached(sql.0).and_then(|mut s| {
            s.query_map((d, c, q.from_us, q.to_us, limit), map)?
                .collect()
        }),
        Some((ts_us, seq)) => conn.prepare_cached(sql.1).and_then(|mut s| {
            let from_us = q.from_us.max(ts_us);
            s.query_map((d, c, from_us, q.to_us, limit, ts_us, seq as i64), map)?
                .collect()
        }),
    };
    rows.map_err(db)
}

/// Time-bucketed aggregates of one series (step and range checked by the caller).
pub(super) fn aggregate(conn: &Connection, q: AggQuery) -> Result<Vec<Bucket>, StoreError> {
    let mut s = conn
        .prepare_cached(STATEMENTS.aggregate(q.agg))
        .map_err(db)?;
    let args = (q.device_id as i64, q.channel, q.from_us, q.to_us, q.step_us);
    let rows = s.query_map(args, |r| {
        Ok(Bucket {
            start_us: r.get(0)?,
            value: from_sql(r.get(1)?),
            count: r.get::<_, i64>(2)? as u64,
        })
    });
    rows.and_then(Iterator::collect).map_err(db)
}

/// All revocations, by subject.
pub(super) fn revocations(conn: &Connection) -> Result<Vec<Revocation>, StoreError> {
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
}
