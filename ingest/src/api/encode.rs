//! Serialisation of `/v1/series` results piece by piece, so a large result is written as it is
//! read from the store: JSON (`{"series":[...],"next_cursor":..}`) or CSV with a header row.
//! Device ids and sequence numbers are JSON strings (u64 does not fit a JS number); NaN values
//! are JSON `null` and an empty CSV field.

use std::fmt::Write as _;

use super::params::{Format, agg_name};
use crate::store::{Agg, Bucket, Row};

/// CSV header of raw readings.
pub const CSV_RAW_HEADER: &str = "device,channel,ts_ms,value,quality\n";
/// CSV header of aggregate buckets.
pub const CSV_AGG_HEADER: &str = "device,channel,bucket_start_ms,value,count\n";

/// What each series of the response carries.
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    /// Raw readings (`points`).
    Raw,
    /// Aggregate buckets (`buckets`) of this function and step.
    Agg {
        /// The function.
        agg: Agg,
        /// Bucket width (ms).
        step_ms: i64,
    },
}

/// Writes one response incrementally; every method appends to the caller's buffer.
#[derive(Debug)]
pub struct Encoder {
    /// JSON or CSV.
    format: Format,
    /// Raw or aggregate.
    shape: Shape,
    /// The series of the request, in order.
    pairs: std::sync::Arc<[(u64, u16)]>,
    /// Series opened so far (JSON: every series appears once, in order, even if empty).
    opened: usize,
    /// Whether the series `opened - 1` has an element written already (comma placement).
    has_items: bool,
}

/// A float as JSON (`null` for NaN and infinities).
fn json_f64(out: &mut String, v: f64) {
    if v.is_finite() {
        // `{}` of an f64 is the shortest decimal that round-trips, never exponent notation.
        let _ = write!(out, "{v}");
    } else {
        out.push_str("null");
    }
}

/// A float as a CSV field (empty for NaN and infinities).
fn csv_f64(out: &mut String, v: f64) {
    if v.is_finite() {
        let _ = write!(out, "{v}");
    }
}

impl Encoder {
    /// An encoder for a response over `pairs`.
    pub fn new(format: Format, shape: Shape, pairs: std::sync::Arc<[(u64, u16)]>) -> Encoder {
        Encoder {
            format,
            shape,
            pairs,
            opened: 0,
            has_items: false,
        }
    }

    /// The start of the body.
    pub fn begin(&mut self, out: &mut String) {
        match (self.format, self.shape) {
            (Format::Json, _) => out.push_str("{\"series\":["),
            (Format::Csv, Shape::Raw) => out.push_str(CSV_RAW_HEADER),
            (Format::Csv, Shape::Agg { .. }) => out.push_str(CSV_AGG_HEADER),
        }
    }

    /// Opens every series up to and including `index` (closing the one before).
    fn open_until(&mut self, out: &mut String, index: usize) {
        if self.format != Format::Json {
            return;
        }
        while self.opened <= index {
            if self.opened > 0 {
                out.push_str("]}");
                out.push(',');
            }
            let (d, c) = self.pairs[self.opened];
            let _ = write!(out, "{{\"device\":\"{d}\",\"channel\":{c},");
            match self.shape {
                Shape::Raw => out.push_str("\"points\":["),
                Shape::Agg { agg, step_ms } => {
                    let _ = write!(
                        out,
                        "\"agg\":\"{}\",\"step_ms\":{step_ms},\"buckets\":[",
                        agg_name(agg)
                    );
                }
            }
            self.opened += 1;
            self.has_items = false;
        }
    }

    fn separator(&mut self, out: &mut String) {
        if self.has_items {
            out.push(',');
        }
        self.has_items = true;
    }

    /// Raw readings of series `index`.
    pub fn rows(&mut self, out: &mut String, index: usize, rows: &[Row]) {
        self.open_until(out, index);
        for r in rows {
            let ts_ms = r.ts_us.div_euclid(1000);
            match self.format {
                Format::Json => {
                    self.separator(out);
                    let _ = write!(out, "{{\"ts_ms\":{ts_ms},\"ts_us\":{},\"value\":", r.ts_us);
                    json_f64(out, r.value);
                    let _ = write!(out, ",\"quality\":{},\"seq\":\"{}\"}}", r.quality, r.seq);
                }
                Format::Csv => {
                    let _ = write!(out, "{},{},{ts_ms},", r.device_id, r.channel);
                    csv_f64(out, r.value);
                    let _ = writeln!(out, ",{}", r.quality);
                }
            }
        }
    }

    /// Aggregate buckets of series `index`.
    pub fn buckets(&mut self, out: &mut String, index: usize, buckets: &[Bucket]) {
        self.open_until(out, index);
        let (d, c) = self.pairs[index];
        for b in buckets {
            let start_ms = b.start_us.div_euclid(1000);
            match self.format {
                Format::Json => {
                    self.separator(out);
                    let _ = write!(out, "{{\"start_ms\":{start_ms},\"value\":");
                    json_f64(out, b.value);
                    let _ = write!(out, ",\"count\":{}}}", b.count);
                }
                Format::Csv => {
                    let _ = write!(out, "{d},{c},{start_ms},");
                    csv_f64(out, b.value);
                    let _ = writeln!(out, ",{}", b.count);
                }
            }
        }
    }

    /// The end of the body (JSON: remaining empty series and `next_cursor`).
    pub fn end(&mut self, out: &mut String, next_cursor: Option<&str>) {
        if self.format != Format::Json {
            return;
        }
        if !self.pairs.is_empty() {
            self.open_until(out, self.pairs.len() - 1);
            out.push_str("]}");
        }
        out.push(']');
        if let Shape::Raw = self.shape {
            match next_cursor {
                Some(c) => {
                    let _ = write!(out, ",\"next_cursor\":\"{c}\"");
                }
                None => out.push_str(",\"next_cursor\":null"),
            }
        }
        out.push('}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ts_us: i64, value: f64) -> Row {
        Row {
            device_id: 7,
            seq: 9,
            channel: 1,
            quality: 0,
            ts_us,
            value,
        }
    }

    #[test]
    fn json_lists_every_series_in_order_and_nan_as_null() {
        let pairs: std::sync::Arc<[(u64, u16)]> = vec![(7, 1), (7, 2), (8, 1)].into();
        let mut e = Encoder::new(Format::Json, Shape::Raw, pairs);
        let mut out = String::new();
        e.begin(&mut out);
        e.rows(&mut out, 1, &[row(1500, 2.0), row(-1, f64::NAN)]);
        e.end(&mut out, Some("ab"));
        let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
        let series = v["series"].as_array().expect("series");
        assert_eq!(series.len(), 3);
        assert_eq!(series[0]["points"], serde_json::json!([]));
        assert_eq!(series[1]["points"][0]["ts_ms"], 1);
        assert_eq!(series[1]["points"][0]["value"], 2.0);
        assert_eq!(series[1]["points"][1]["ts_ms"], -1);
        assert!(series[1]["points"][1]["value"].is_null());
        assert_eq!(series[2]["device"], "8");
        assert_eq!(v["next_cursor"], "ab");
    }

    #[test]
    fn csv_has_a_header_and_one_line_per_reading() {
        let pairs: std::sync::Arc<[(u64, u16)]> = vec![(7, 1)].into();
        let mut e = Encoder::new(Format::Csv, Shape::Raw, pairs);
        let mut out = String::new();
        e.begin(&mut out);
        e.rows(&mut out, 0, &[row(2000, 0.5), row(3000, f64::NAN)]);
        e.end(&mut out, None);
        assert_eq!(out, format!("{CSV_RAW_HEADER}7,1,2,0.5,0\n7,1,3,,0\n"));
    }
}
