//! The store's own limit, for comparison with end-to-end ingest: a bare loop of prepared
//! inserts into the same schema (opened through `SqliteStore`, so the schema and pragmas are the
//! real ones), one transaction per batch, no server, no dedup, no acks.
//!
//! `cargo run --release -p ingest --example bare_insert -- ROWS BATCH SYNC` (SYNC: full|normal);
//! prints one JSON line `{"rows":..,"seconds":..,"rows_per_s":..}`.

use std::time::Instant;

use ingest::store::sqlite::{DB_FILE, SqliteOptions, SqliteStore, Synchronous};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rows: u64 = args.next().map_or(Ok(2_000_000), |s| s.parse())?;
    let batch: u64 = args.next().map_or(Ok(8192), |s| s.parse())?;
    let sync = args.next().unwrap_or_else(|| "full".into());
    let dir = tempfile_dir()?;
    let path = dir.join(DB_FILE);
    let rt = tokio::runtime::Runtime::new()?;
    let synchronous = if sync == "normal" { Synchronous::Normal } else { Synchronous::Full };
    rt.block_on(async {
        let store = SqliteStore::open(&path, SqliteOptions { synchronous, ..Default::default() })?;
        store.close().await
    })?;
    let mut conn = rusqlite::Connection::open(&path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if sync == "normal" { "NORMAL" } else { "FULL" })?;
    let base_ts = ingest::now_us();
    let started = Instant::now();
    let mut done = 0u64;
    while done < rows {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO readings (device_id, channel, ts_us, seq, quality, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for i in 0..batch.min(rows - done) {
                let n = done + i;
                let device = (n / 16) % 1000;
                insert.execute((device as i64, (n % 16) as i64, base_ts + n as i64, (n / 16000) as i64, 0i64, n as f64 * 0.5))?;
            }
        }
        tx.commit()?;
        done += batch.min(rows - done);
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{{\"rows\":{done},\"seconds\":{secs:.3},\"rows_per_s\":{:.0}}}", done as f64 / secs);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("telemux-bare-insert-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
