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
