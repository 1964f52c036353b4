//! The store's own limit, for comparison with end-to-end ingest: a bare loop of prepared
//! inserts into the same schema (created through `SqliteStore`, connection configured by the
//! store's own `configure_writer`), one transaction per batch of the server's default
//! `--batch-max-rows`; no server, no dedup, no acks, no sorting (the store no longer writes
//! `latest` per reading either: both write exactly the `readings` rows and their index).
//!
//! `cargo run --release -p ingest --example bare_insert -- ROWS BATCH SYNC DEVICES CHANNELS`
//! (SYNC: full|normal). Rows come frame by frame as devices send them: device `f % DEVICES`,
//! channels `1..=CHANNELS`. Prints one JSON line `{"rows":..,"seconds":..,"rows_per_s":..}`.

mod common;

use std::time::Instant;

use common::{arg, store_connection};
use ingest::store::sqlite::{DB_FILE, Synchronous};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rows: u64 = arg(&args, 0, 2_000_000)?;
    let batch: u64 = arg(&args, 1, 262_144)?;
    let sync = args.get(2).cloned().unwrap_or_else(|| "full".into());
    let devices: u64 = arg(&args, 3, 1000)?;
    let channels: u64 = arg(&args, 4, 64)?;
    let synchronous = if sync == "normal" {
        Synchronous::Normal
    } else {
        Synchronous::Full
    };
    let dir = std::env::temp_dir().join(format!("telemux-bare-insert-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(DB_FILE);
    let mut conn = store_connection(&path, synchronous)?;
    let base_ts = ingest::now_us();
    let started = Instant::now();
    let mut done = 0u64;
    while done < rows {
        let n = batch.min(rows - done);
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO readings (device_id, channel, ts_us, seq, quality, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for i in done..done + n {
                let frame = i / channels;
                let device = frame % devices;
                let seq = frame / devices + 1;
                insert.execute((
                    device as i64,
                    (i % channels + 1) as i64,
                    base_ts + i as i64,
                    seq as i64,
                    0i64,
                    i as f64 * 0.5,
                ))?;
            }
        }
        tx.commit()?;
        done += n;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"rows\":{done},\"seconds\":{secs:.3},\"rows_per_s\":{:.0}}}",
        done as f64 / secs
    );
    drop(conn);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
