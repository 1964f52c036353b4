//! Schema migrations and the settings of each kind of connection.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::{
    BUSY_TIMEOUT, CHECKPOINTER_CACHE_KIB, READER_CACHE_KIB, Synchronous, WAL_AUTOCHECKPOINT_PAGES,
    WRITER_CACHE_KIB,
};

/// Schema steps in order; `PRAGMA user_version` counts the steps applied. Append, never edit.
///
/// `latest` is no longer upserted per reading: it holds what retention kept of each series'
/// newest reading (see the module doc); reads take the newer of it and the index.
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
    // 2: staging tables (see `stage`): batches append here in write order (rowid), the writer
    // moves them into `readings` in series order. `staging_x_ranges` has one row per device and
    // batch: the rowids `first..=last` of that device's readings in the batch. `gen` orders the
    // two tables (the greater is appending); `moved_through` is the last device (as stored)
    // already moved, NULL for none.
    r#"
    CREATE TABLE staging_a (
        device_id INTEGER NOT NULL,
        channel INTEGER NOT NULL,
        ts_us INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        quality INTEGER NOT NULL,
        value REAL
    );
    CREATE TABLE staging_a_ranges (
        device_id INTEGER NOT NULL,
        first INTEGER NOT NULL,
        last INTEGER NOT NULL,
        PRIMARY KEY (device_id, first)
    ) WITHOUT ROWID;
    CREATE TABLE staging_b (
        device_id INTEGER NOT NULL,
        channel INTEGER NOT NULL,
        ts_us INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        quality INTEGER NOT NULL,
        value REAL
    );
    CREATE TABLE staging_b_ranges (
        device_id INTEGER NOT NULL,
        first INTEGER NOT NULL,
        last INTEGER NOT NULL,
        PRIMARY KEY (device_id, first)
    ) WITHOUT ROWID;
    CREATE TABLE staging_state (
        name TEXT PRIMARY KEY,
        gen INTEGER NOT NULL,
        moved_through INTEGER
    ) WITHOUT ROWID;
    INSERT INTO staging_state (name, gen) VALUES ('staging_a', 2), ('staging_b', 1);
    -- Every stored reading, wherever it is now: for people and tools reading the file.
    CREATE VIEW stored_readings AS
    SELECT device_id, channel, ts_us, seq, quality, value FROM readings
    UNION ALL
    SELECT device_id, channel, ts_us, seq, quality, value FROM staging_a s
    WHERE (SELECT coalesce(s.device_id > moved_through, 1) FROM staging_state
           WHERE name = 'staging_a')
    UNION ALL
    SELECT device_id, channel, ts_us, seq, quality, value FROM staging_b s
    WHERE (SELECT coalesce(s.device_id > moved_through, 1) FROM staging_state
           WHERE name = 'staging_b');
    "#,
];

fn synchronous_level(synchronous: Synchronous) -> &'static str {
    match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    }
}

/// Applies the writer connection's settings (WAL, `synchronous`, page cache, checkpointing).
/// Public so the bare-insert benchmark measures SQLite configured as the store's writer. (At
/// `Full` the store's writer then runs `synchronous = NORMAL` and fsyncs on its own thread; the
/// bare loop keeps SQLite's FULL, an fsync inside each commit, under 1% of a 262,144-row batch.)
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

/// Settings of the background checkpoint connection.
pub(super) fn configure_checkpointer(
    conn: &Connection,
    synchronous: Synchronous,
) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", synchronous_level(synchronous))?;
    conn.pragma_update(None, "cache_size", -CHECKPOINTER_CACHE_KIB)
}

/// Opens one read-only connection.
pub(super) fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let mut conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
    super::yielding::yield_within_statements(&mut conn)?;
    Ok(conn)
}

/// `user_version` as the number of migrations applied, if this build knows them all.
pub(super) fn known_version(version: i64) -> Result<usize, String> {
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
pub(super) fn migrate(conn: &mut Connection) -> Result<(), String> {
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
