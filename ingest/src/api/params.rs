//! Query-string parsing and validation for the history API: unknown and duplicated parameters,
//! device ids, channels, times (RFC 3339 or epoch milliseconds), steps, aggregates, formats and
//! limits. Every refusal names the parameter and what it takes.

use std::collections::HashMap;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::error::ApiError;
use crate::store::Agg;

/// Parameter every operator route accepts: the token, for clients that cannot set headers.
pub const TOKEN: &str = "token";

/// The decoded query string of one request.
#[derive(Debug, Default)]
pub struct Params {
    /// Values by name, in order of appearance.
    values: HashMap<String, Vec<String>>,
}

impl Params {
    /// Decodes `raw` and refuses names outside `allowed` (plus `token`).
    pub fn parse(raw: &str, allowed: &'static [&'static str]) -> Result<Params, ApiError> {
        let mut values: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            if k != TOKEN && !allowed.contains(&&*k) {
                let takes = ALLOWED_TEXT
                    .iter()
                    .find(|(names, _)| *names == allowed)
                    .map_or("see /v1/openapi.json", |(_, text)| *text);
                return Err(ApiError::UnknownParameter(
                    k.chars().take(64).collect(),
                    takes,
                ));
            }
            values
                .entry(k.into_owned())
                .or_default()
                .push(v.into_owned());
        }
        Ok(Params { values })
    }

    /// The single value of `name`, if given; more than one is an error.
    pub fn scalar(&self, name: &'static str) -> Result<Option<&str>, ApiError> {
        match self.values.get(name).map(Vec::as_slice) {
            None | Some([]) => Ok(None),
            Some([one]) => Ok(Some(one)),
            Some(_) => Err(ApiError::DuplicateParameter(name.to_string())),
        }
    }

    /// Every value of a repeatable parameter, comma-separated lists split, blanks refused.
    pub fn list(&self, name: &'static str) -> Result<Vec<&str>, ApiError> {
        let mut out = Vec::new();
        for v in self.values.get(name).into_iter().flatten() {
            for item in v.split(',') {
                let item = item.trim();
                if item.is_empty() {
                    return Err(ApiError::invalid(name, "a non-empty value", v));
                }
                out.push(item);
            }
        }
        Ok(out)
    }
}

/// Parameters of each route, with the text an unknown-parameter error shows.
pub const DEVICES_PARAMS: &[&str] = &["q", "tag"];
/// `/v1/devices/{id}` and `/latest` take only the token.
pub const DEVICE_PARAMS: &[&str] = &[];
/// `/v1/series`.
pub const SERIES_PARAMS: &[&str] = &[
    "device", "channel", "from", "to", "step", "agg", "limit", "cursor", "format",
];
const ALLOWED_TEXT: &[(&[&str], &str)] = &[
    (DEVICES_PARAMS, "q, tag, token"),
    (DEVICE_PARAMS, "token"),
    (
        SERIES_PARAMS,
        "device, channel, from, to, step, agg, limit, cursor, format, token",
    ),
];

/// A device id: a u64 in decimal.
pub fn device_id(param: &'static str, s: &str) -> Result<u64, ApiError> {
    s.trim()
        .parse()
        .map_err(|_| ApiError::invalid(param, "a device id (decimal, 0..=18446744073709551615)", s))
}

/// A channel id: a u16 in decimal.
pub fn channel(s: &str) -> Result<u16, ApiError> {
    s.trim()
        .parse()
        .map_err(|_| ApiError::invalid("channel", "a channel id (decimal, 0..=65535)", s))
}

/// A time as microseconds since the epoch: epoch milliseconds (an integer) or RFC 3339
/// (`2026-11-23T04:20:00Z`, `2026-11-23T05:20:00.5+01:00`).
pub fn time_us(param: &'static str, s: &str) -> Result<i64, ApiError> {
    const EXPECTED: &str =
        "an RFC 3339 time (like 2026-11-23T04:20:00Z) or epoch milliseconds (like 1763871600000)";
    let t = s.trim();
    let numeric = !t.is_empty()
        && t.strip_prefix('-')
            .unwrap_or(t)
            .bytes()
            .all(|b| b.is_ascii_digit());
    if numeric {
        return t
            .parse::<i64>()
            .ok()
            .and_then(|ms| ms.checked_mul(1000))
            .ok_or_else(|| ApiError::invalid(param, EXPECTED, s));
    }
    let dt =
        OffsetDateTime::parse(t, &Rfc3339).map_err(|_| ApiError::invalid(param, EXPECTED, s))?;
    i64::try_from(dt.unix_timestamp_nanos() / 1000)
        .map_err(|_| ApiError::invalid(param, EXPECTED, s))
}

/// A bucket width in microseconds: `500ms`, `10s`, `1m`, `1h`, `1d`, or an integer of
/// milliseconds; at least 1 ms, at most [`MAX_STEP_MS`].
pub fn step_us(s: &str) -> Result<i64, ApiError> {
    const EXPECTED: &str = "a positive duration: an integer with unit ms, s, m, h or d (like 500ms, 10s, 1m, 1h, 1d), or milliseconds";
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let unit_ms: u64 = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(ApiError::invalid("step", EXPECTED, s)),
    };
    let ms = num
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .filter(|&ms| (1..=MAX_STEP_MS).contains(&ms))
        .ok_or_else(|| ApiError::invalid("step", EXPECTED, s))?;
    Ok(ms as i64 * 1000)
}

/// Largest step in ms: any step whose microseconds fit an i64 (about 290,000 years) is a
/// valid bucket width; the bucket-count limit bounds the work, not the step.
pub const MAX_STEP_MS: u64 = (i64::MAX / 1000) as u64;

/// An aggregate function name.
pub fn agg(s: &str) -> Result<Agg, ApiError> {
    Ok(match s.trim() {
        "avg" => Agg::Avg,
        "min" => Agg::Min,
        "max" => Agg::Max,
        "sum" => Agg::Sum,
        "count" => Agg::Count,
        "first" => Agg::First,
        "last" => Agg::Last,
        _ => {
            return Err(ApiError::invalid(
                "agg",
                "one of avg, min, max, sum, count, first, last",
                s,
            ));
        }
    })
}

/// The name of an aggregate function, as the API spells it.
pub fn agg_name(agg: Agg) -> &'static str {
    match agg {
        Agg::Avg => "avg",
        Agg::Min => "min",
        Agg::Max => "max",
        Agg::Sum => "sum",
        Agg::Count => "count",
        Agg::First => "first",
        Agg::Last => "last",
    }
}

/// Response body format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/json` (the default).
    Json,
    /// `text/csv` with a header row.
    Csv,
}

/// `json` or `csv`.
pub fn format(s: &str) -> Result<Format, ApiError> {
    match s.trim() {
        "json" => Ok(Format::Json),
        "csv" => Ok(Format::Csv),
        _ => Err(ApiError::invalid("format", "json or csv", s)),
    }
}

/// A row limit in `1..=max` (over `max`: the limit error names the setting).
pub fn limit(s: &str, max: u32) -> Result<u32, ApiError> {
    let n: u64 = s
        .trim()
        .parse()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| ApiError::invalid("limit", format!("an integer from 1 to {max}"), s))?;
    if n > u64::from(max) {
        return Err(ApiError::OverLimit {
            param: "limit",
            what: "the requested row count",
            found: n.to_string(),
            limit: max.to_string(),
            setting: "api_max_rows",
        });
    }
    Ok(n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_accept_rfc3339_with_offsets_and_epoch_ms() {
        assert_eq!(time_us("from", "1000").expect("ms"), 1_000_000);
        assert_eq!(time_us("from", "-5").expect("negative ms"), -5000);
        assert_eq!(
            time_us("from", "1970-01-01T00:00:01.5Z").expect("rfc3339"),
            1_500_000
        );
        assert_eq!(
            time_us("from", "1970-01-01T01:00:01+01:00").expect("offset"),
            1_000_000
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "1e3",
            "99999999999999999999",
        ] {
            let e = time_us("to", bad).expect_err(bad);
            assert_eq!(e.parameter(), Some("to"), "{bad}");
        }
    }

    #[test]
    fn steps_take_units_and_refuse_zero_or_junk() {
        assert_eq!(step_us("500ms").expect("ms"), 500_000);
        assert_eq!(step_us("10s").expect("s"), 10_000_000);
        assert_eq!(step_us("1m").expect("m"), 60_000_000);
        assert_eq!(step_us("1h").expect("h"), 3_600_000_000);
        assert_eq!(step_us("1d").expect("d"), 86_400_000_000);
        assert_eq!(step_us("250").expect("bare ms"), 250_000);
        assert_eq!(step_us("9999d").expect("long"), 9999 * 86_400_000_000);
        for bad in ["0", "0s", "-1s", "1w", "s", "1.5s", "99999999999999999d"] {
            assert!(step_us(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_and_duplicate_parameters_are_named() {
        let e = Params::parse("device=1&colour=red", SERIES_PARAMS).expect_err("unknown");
        assert_eq!(e.code(), "unknown_parameter");
        assert_eq!(e.parameter(), Some("colour"));
        let p = Params::parse("from=1&from=2&device=1,2&device=3", SERIES_PARAMS).expect("parse");
        assert_eq!(p.scalar("from").expect_err("dup").parameter(), Some("from"));
        assert_eq!(p.list("device").expect("list"), vec!["1", "2", "3"]);
        let p = Params::parse("device=1,,2", SERIES_PARAMS).expect("parse");
        assert!(p.list("device").is_err());
    }

    #[test]
    fn limit_over_the_maximum_names_the_setting() {
        assert_eq!(limit("10", 100).expect("ok"), 10);
        let e = limit("101", 100).expect_err("over");
        assert_eq!(e.code(), "over_limit");
        assert!(e.to_string().contains("api_max_rows"), "{e}");
        assert_eq!(
            limit("0", 100).expect_err("zero").code(),
            "invalid_parameter"
        );
    }
}
