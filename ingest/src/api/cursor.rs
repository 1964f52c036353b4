//! The opaque pagination cursor of raw `/v1/series` results: where the next page starts (series
//! index and the `(ts_us, seq)` of the last row sent), bound to the query it came from so a
//! cursor replayed against another query is refused instead of silently skipping data.
//! The cursor also carries the query's end time, so pages of a query whose `to` defaulted to
//! "now" keep the first page's end. Encoded as lowercase hex of a fixed 34-byte layout.

use super::error::ApiError;

/// Layout version, first byte of every cursor.
const VERSION: u8 = 1;
/// Encoded length in bytes: version, query hash (4), series index (4), has-position (1),
/// ts_us (8), seq (8), to_us (8).
const LEN: usize = 34;

/// A position in a multi-series raw result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// Hash of the query the cursor belongs to (see [`query_hash`]).
    pub query: u32,
    /// End of the query's range (us), fixed by the first page.
    pub to_us: i64,
    /// Index of the series (in request order) where the next page starts.
    pub series: u32,
    /// Resume after this `(ts_us, seq)` in that series; `None` starts at its beginning.
    pub after: Option<(i64, u64)>,
}

impl Cursor {
    /// The cursor as sent to clients.
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(LEN);
        b.push(VERSION);
        b.extend_from_slice(&self.query.to_be_bytes());
        b.extend_from_slice(&self.series.to_be_bytes());
        let (has, ts, seq) = match self.after {
            Some((ts, seq)) => (1u8, ts, seq),
            None => (0, 0, 0),
        };
        b.push(has);
        b.extend_from_slice(&ts.to_be_bytes());
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&self.to_us.to_be_bytes());
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Parses a cursor and checks it belongs to the query with hash `query`.
    pub fn decode(s: &str, query: u32) -> Result<Cursor, ApiError> {
        let malformed =
            || ApiError::invalid("cursor", "a `next_cursor` value returned by this server", s);
        if s.len() != LEN * 2 || !s.is_ascii() {
            return Err(malformed());
        }
        let bytes = (0..LEN)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| malformed())?;
        let u32_at = |i: usize| bytes[i..i + 4].try_into().map(u32::from_be_bytes);
        let u64_at = |i: usize| bytes[i..i + 8].try_into().map(u64::from_be_bytes);
        let (Ok(hash), Ok(series), Ok(ts), Ok(seq), Ok(to)) =
            (u32_at(1), u32_at(5), u64_at(10), u64_at(18), u64_at(26))
        else {
            return Err(malformed());
        };
        if bytes[0] != VERSION || bytes[9] > 1 {
            return Err(malformed());
        }
        if hash != query {
            return Err(ApiError::invalid(
                "cursor",
                "a cursor from the same query (same devices, channels and from)",
                s,
            ));
        }
        Ok(Cursor {
            query: hash,
            to_us: to as i64,
            series,
            after: (bytes[9] == 1).then_some((ts as i64, seq)),
        })
    }
}

/// FNV-1a hash of what makes a raw query: its series, in order, and its start (the end travels
/// in the cursor itself).
pub fn query_hash(pairs: &[(u64, u16)], from_us: i64) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    for (d, c) in pairs {
        eat(&d.to_be_bytes());
        eat(&c.to_be_bytes());
    }
    eat(&from_us.to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_tampering() {
        for after in [None, Some((-5, 0)), Some((1_763_871_600_000_000, u64::MAX))] {
            let c = Cursor {
                query: 77,
                to_us: 123,
                series: 3,
                after,
            };
            assert_eq!(Cursor::decode(&c.encode(), 77).expect("decode"), c);
        }
        let good = Cursor {
            query: 77,
            to_us: -1,
            series: 0,
            after: None,
        }
        .encode();
        assert!(Cursor::decode(&good, 78).is_err(), "other query");
        assert!(Cursor::decode("zz", 77).is_err());
        assert!(Cursor::decode(&good.replacen('0', "g", 1), 77).is_err());
        assert!(Cursor::decode(&format!("02{}", &good[2..]), 77).is_err());
    }
}
