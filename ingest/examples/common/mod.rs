//! What the benchmark examples share.

/// Positional argument `i` parsed as a number, or `default` when absent; the error names the
/// argument by its 1-based position.
pub fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> anyhow::Result<T> {
    match args.get(i) {
        Some(s) => s
            .parse()
            .map_err(|_| anyhow::anyhow!("argument {} ({s}) is not a number", i + 1)),
        None => Ok(default),
    }
}

/// A new database at `path` with the store's schema (created by `SqliteStore::open`), opened on
/// a connection with the store's own writer settings, so a benchmark measures SQLite exactly as
/// the store configures it.
pub fn store_connection(
    path: &std::path::Path,
    synchronous: ingest::store::sqlite::Synchronous,
) -> anyhow::Result<rusqlite::Connection> {
    use ingest::store::sqlite::{SqliteOptions, SqliteStore, configure_writer};
    tokio::runtime::Runtime::new()?.block_on(async {
        SqliteStore::open(
            path,
            SqliteOptions {
                synchronous,
                ..Default::default()
            },
        )?
        .close()
        .await
    })?;
    let conn = rusqlite::Connection::open(path)?;
    configure_writer(&conn, synchronous).map_err(anyhow::Error::msg)?;
    Ok(conn)
}
