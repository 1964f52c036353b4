//! `GET /v1/series`: readings of several (device, channel) series over `[from, to)`, raw with a
//! row `limit` and cursor pagination, or bucketed by `step` with `agg` computed by the store's
//! SQL. The body is streamed: a producer task reads the store a page at a time into a small
//! bounded channel, so a large result never sits in memory and a slow client slows only its own
//! producer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{Instrument, warn};
use warp::Reply;

use super::cursor::{Cursor, query_hash};
use super::encode::{Encoder, Shape};
use super::error::ApiError;
use super::params::{self, Format, Params, SERIES_PARAMS};
use super::{Request, known_devices};
use crate::store::{Agg, AggQuery, RangeQuery, Row, Store, StoreError};
use crate::telemetry as m;

/// Rows read from the store per query while paging a raw result.
const PAGE_ROWS: u32 = 2000;
/// Keys read per query while finding where a CSV page ends (no values: cheap to read).
const PLAN_ROWS: u32 = 20_000;
/// `limit` when none is given (capped by `api_max_rows`).
const DEFAULT_LIMIT: u32 = 1000;
/// Bytes gathered before a chunk is handed to the connection.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks buffered between the producer and the connection (the per-request memory bound is
/// about this times `CHUNK_BYTES` plus one page).
const QUEUE_CHUNKS: usize = 4;

/// A validated `/v1/series` request.
#[derive(Debug)]
struct SeriesQuery {
    /// Every (device, channel) pair, devices in request order, then channels.
    pairs: Arc<[(u64, u16)]>,
    /// Inclusive start (us).
    from_us: i64,
    /// Exclusive end (us).
    to_us: i64,
    /// Aggregate step (us) and function, or `None` for raw readings.
    agg: Option<(i64, Agg)>,
    /// Raw: most rows in this response.
    limit: u32,
    /// Raw: where this page starts.
    cursor: Option<Cursor>,
    /// Body format.
    format: Format,
}

/// Distinct values, first occurrence order.
fn dedup<T: PartialEq + Copy>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

fn parse(req: &Request) -> Result<SeriesQuery, ApiError> {
    let cfg = &req.app.config;
    let p = Params::parse(&req.query, SERIES_PARAMS)?;
    let devices = dedup(
        p.list("device")?
            .into_iter()
            .map(|d| params::device_id("device", d))
            .collect::<Result<Vec<_>, _>>()?,
    );
    let channels = dedup(
        p.list("channel")?
            .into_iter()
            .map(params::channel)
            .collect::<Result<Vec<_>, _>>()?,
    );
    if devices.is_empty() {
        return Err(ApiError::MissingParameter(
            "device",
            "give one or more device ids (repeat `device` or separate with commas)",
        ));
    }
    if channels.is_empty() {
        return Err(ApiError::MissingParameter(
            "channel",
            "give one or more channel ids (repeat `channel` or separate with commas)",
        ));
    }
    let series = devices.len() * channels.len();
    if series > cfg.api_max_series as usize {
        return Err(ApiError::OverLimit {
            param: "channel",
            what: "the number of series (devices x channels)",
            found: series.to_string(),
            limit: cfg.api_max_series.to_string(),
            setting: "api_max_series",
        });
    }
    let pairs: Arc<[(u64, u16)]> = devices
        .iter()
        .flat_map(|&d| channels.iter().map(move |&c| (d, c)))
        .collect();
    let from_us = match p.scalar("from")? {
        Some(s) => params::time_us("from", s)?,
        None => {
            return Err(ApiError::MissingParameter(
                "from",
                "the start of the range, RFC 3339 or epoch milliseconds",
            ));
        }
    };
    let to_given = p
        .scalar("to")?
        .map(|s| params::time_us("to", s))
        .transpose()?;
    let format = p
        .scalar("format")?
        .map_or(Ok(Format::Json), params::format)?;
    let step = p.scalar("step")?.map(params::step_us).transpose()?;
    let agg = p.scalar("agg")?.map(params::agg).transpose()?;
    let limit = p.scalar("limit")?;
    let cursor = p.scalar("cursor")?;
    let agg = match (step, agg) {
        (Some(step), agg) => {
            for (name, given) in [("limit", limit), ("cursor", cursor)] {
                if let Some(value) = given {
                    return Err(ApiError::invalid(
                        name,
                        "no value: aggregates (`step`) are not paged; their size is bounded by api_max_buckets",
                        value,
                    ));
                }
            }
            Some((step, agg.unwrap_or(Agg::Avg)))
        }
        (None, Some(_)) => {
            return Err(ApiError::MissingParameter(
                "step",
                "`agg` needs a bucket width `step` (like 10s, 1m, 1h)",
            ));
        }
        (None, None) => None,
    };
    let hash = query_hash(&pairs, from_us);
    let cursor = cursor.map(|c| Cursor::decode(c, hash)).transpose()?;
    let to_us = match (to_given, cursor) {
        (Some(to), Some(c)) if to != c.to_us => {
            return Err(ApiError::invalid(
                "cursor",
                "a cursor from the same query (its `to` differs)",
                cursor_text(&p),
            ));
        }
        (Some(to), _) => to,
        (None, Some(c)) => c.to_us,
        (None, None) => crate::now_us(),
    };
    if cursor.is_some_and(|c| c.series as usize >= pairs.len()) {
        return Err(ApiError::invalid(
            "cursor",
            "a cursor from the same query",
            cursor_text(&p),
        ));
    }
    if from_us >= to_us {
        return Err(ApiError::invalid(
            "from",
            "a time before `to` (which defaults to now)",
            p.scalar("from")?.unwrap_or(""),
        ));
    }
    let range_us = to_us.saturating_sub(from_us);
    let max_range_us = i64::try_from(cfg.api_max_range.0.as_micros()).unwrap_or(i64::MAX);
    if range_us > max_range_us {
        return Err(ApiError::OverLimit {
            param: "from",
            what: "the range to - from",
            found: format!("{} ms", range_us / 1000),
            limit: format!("{} ({} ms)", cfg.api_max_range, max_range_us / 1000),
            setting: "api_max_range",
        });
    }
    if let Some((step_us, _)) = agg {
        let buckets = (range_us as i128 + step_us as i128 - 1) / step_us as i128;
        if buckets > i128::from(cfg.api_max_buckets) {
            return Err(ApiError::OverLimit {
                param: "step",
                what: "the bucket count per series, (to - from) / step",
                found: buckets.to_string(),
                limit: cfg.api_max_buckets.to_string(),
                setting: "api_max_buckets",
            });
        }
    }
    let limit = match limit {
        Some(s) => params::limit(s, cfg.api_max_rows)?,
        None => DEFAULT_LIMIT.min(cfg.api_max_rows),
    };
    Ok(SeriesQuery {
        pairs,
        from_us,
        to_us,
        agg,
        limit,
        cursor,
        format,
    })
}

fn cursor_text(p: &Params) -> &str {
    p.scalar("cursor").ok().flatten().unwrap_or("")
}

/// `GET /v1/series`.
pub async fn get(req: Request) -> Result<warp::reply::Response, ApiError> {
    let q = parse(&req)?;
    let known = known_devices(&req.app, &req.operator).await?;
    for &(device, _) in q.pairs.iter() {
        if !req
            .operator
            .grants
            .allows(device, &req.app.hub.tags_of(device))
        {
            return Err(ApiError::NotGranted(device));
        }
        if !known.contains_key(&device) {
            return Err(ApiError::UnknownDevice(device));
        }
    }
    let store = req.app.store.clone();
    let mut planned = None;
    if q.agg.is_none() && q.format == Format::Csv {
        // CSV has no place for the cursor after the rows, and headers go first: find where
        // this page ends before streaming it (keys only, from the index; memory stays bounded),
        // then stream exactly up to that end, so rows committed in between neither shift the
        // page (a skipped row) nor the cursor (a repeated one).
        planned = Some(page_end(&store, &q).await?);
    }
    let next_cursor_header = planned.flatten().map(|c| c.encode());
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, StoreError>>(QUEUE_CHUNKS);
    let format = q.format;
    tokio::spawn(produce(store, q, planned, tx).in_current_span());
    let first = match rx.recv().await {
        Some(Ok(b)) => b,
        Some(Err(e)) => return Err(e.into()),
        None => Bytes::new(),
    };
    let body = Chunks {
        first: Some(first),
        rx,
    };
    let mut resp = warp::reply::stream(body).into_response();
    let h = resp.headers_mut();
    let content_type = match format {
        Format::Json => "application/json",
        Format::Csv => "text/csv; charset=utf-8",
    };
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    if let Some(c) = next_cursor_header.and_then(|c| http::HeaderValue::from_str(&c).ok()) {
        h.insert("x-next-cursor", c);
    }
    Ok(resp)
}

/// The body: the first chunk (read before answering, so an early store error is a clean 500),
/// then whatever the producer sends.
struct Chunks {
    /// The chunk already read.
    first: Option<Bytes>,
    /// The rest, from the producer.
    rx: mpsc::Receiver<Result<Bytes, StoreError>>,
}

impl futures_util::Stream for Chunks {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(b) = self.first.take() {
            return Poll::Ready(Some(Ok(b)));
        }
        self.rx
            .poll_recv(cx)
            .map(|o| o.map(|r| r.map_err(std::io::Error::other)))
    }
}

/// A step of a raw result: rows of one series, or the end with the next page's cursor.
enum Page {
    /// Rows of the series at this index.
    Rows(usize, Vec<Row>),
    /// No more rows in this response; the cursor says where the next page starts, if any.
    End(Option<Cursor>),
}

/// Walks the raw rows of a query in `(series, ts_us, seq)` order, up to its limit.
struct Pager {
    store: Arc<dyn Store>,
    pairs: Arc<[(u64, u16)]>,
    from_us: i64,
    to_us: i64,
    hash: u32,
    /// Rows still allowed in this response.
    remaining: u32,
    /// Current series.
    index: usize,
    /// Last row read in the current series.
    after: Option<(i64, u64)>,
    /// The page's end found beforehand (`page_end`), if any: the page stops exactly there
    /// instead of after `remaining` rows. `Some(None)`: no next page, read to the end.
    planned: Option<Option<Cursor>>,
}

impl Pager {
    fn new(store: Arc<dyn Store>, q: &SeriesQuery, planned: Option<Option<Cursor>>) -> Pager {
        Pager {
            store,
            pairs: q.pairs.clone(),
            from_us: q.from_us,
            to_us: q.to_us,
            hash: query_hash(&q.pairs, q.from_us),
            remaining: q.limit,
            index: q.cursor.map_or(0, |c| c.series as usize),
            after: q.cursor.and_then(|c| c.after),
            planned,
        }
    }

    /// Up to `limit` rows of a series after the current position in it.
    async fn fetch(
        &self,
        device_id: u64,
        channel: u16,
        limit: u32,
    ) -> Result<Vec<Row>, StoreError> {
        self.store
            .range(RangeQuery {
                device_id,
                channel,
                from_us: self.from_us,
                to_us: self.to_us,
                after: self.after,
                limit,
            })
            .await
    }

    /// Moves on to the next series, from its start.
    fn next_series(&mut self) {
        self.index += 1;
        self.after = None;
    }

    /// After a fetch that asked for `want` rows and got `fetched`, ending at `last`: a short
    /// fetch means this series is exhausted, otherwise the next fetch starts after `last`.
    fn advance(&mut self, fetched: usize, want: u32, last: Option<&Row>) {
        if (fetched as u32) < want {
            self.next_series();
        } else if let Some(last) = last {
            self.after = Some((last.ts_us, last.seq));
        }
    }

    async fn next(&mut self) -> Result<Page, StoreError> {
        if let Some(end) = self.planned {
            return self.next_planned(end).await;
        }
        while let Some(&(device_id, channel)) = self.pairs.get(self.index) {
            // At the limit, one probe row says whether a next page exists.
            let want = if self.remaining == 0 {
                1
            } else {
                self.remaining.min(PAGE_ROWS)
            };
            let rows = self.fetch(device_id, channel, want).await?;
            if self.remaining == 0 {
                if !rows.is_empty() {
                    return Ok(Page::End(Some(Cursor {
                        query: self.hash,
                        to_us: self.to_us,
                        series: self.index as u32,
                        after: self.after,
                    })));
                }
                self.next_series();
                continue;
            }
            let index = self.index;
            self.remaining -= rows.len() as u32;
            self.advance(rows.len(), want, rows.last());
            if !rows.is_empty() {
                return Ok(Page::Rows(index, rows));
            }
        }
        Ok(Page::End(None))
    }

    /// Rows up to the planned `end` (the last row of the page is `end.after` in series
    /// `end.series`; `None`: every remaining row).
    async fn next_planned(&mut self, end: Option<Cursor>) -> Result<Page, StoreError> {
        while let Some(&(device_id, channel)) = self.pairs.get(self.index) {
            if let Some(c) = end {
                let series = c.series as usize;
                if self.index > series || (self.index == series && c.after.is_none()) {
                    break; // the page ends before this series
                }
            }
            let upto = end
                .filter(|c| self.index == c.series as usize)
                .and_then(|c| c.after);
            let mut rows = self.fetch(device_id, channel, PAGE_ROWS).await?;
            let fetched = rows.len();
            if let Some(upto) = upto {
                rows.retain(|r| (r.ts_us, r.seq) <= upto);
            }
            let index = self.index;
            let at_end = rows.len() < fetched || rows.last().map(|r| (r.ts_us, r.seq)) == upto;
            if upto.is_some() && at_end {
                self.index = self.pairs.len(); // reached the planned end
            } else {
                self.advance(fetched, PAGE_ROWS, rows.last());
            }
            if !rows.is_empty() {
                return Ok(Page::Rows(index, rows));
            }
        }
        Ok(Page::End(end))
    }
}

/// Where the raw page of `q` ends: the cursor of the next page, if rows remain. Walks the same
/// rows as [`Pager`], keys only.
async fn page_end(store: &Arc<dyn Store>, q: &SeriesQuery) -> Result<Option<Cursor>, StoreError> {
    let mut remaining = q.limit;
    let mut index = q.cursor.map_or(0, |c| c.series as usize);
    let mut after = q.cursor.and_then(|c| c.after);
    while let Some(&(device_id, channel)) = q.pairs.get(index) {
        let want = if remaining == 0 {
            1
        } else {
            remaining.min(PLAN_ROWS)
        };
        let keys = store
            .range_keys(RangeQuery {
                device_id,
                channel,
                from_us: q.from_us,
                to_us: q.to_us,
                after,
                limit: want,
            })
            .await?;
        if remaining == 0 {
            if !keys.is_empty() {
                return Ok(Some(Cursor {
                    query: query_hash(&q.pairs, q.from_us),
                    to_us: q.to_us,
                    series: index as u32,
                    after,
                }));
            }
            index += 1;
            after = None;
            continue;
        }
        remaining -= keys.len() as u32;
        match keys.last() {
            Some(&last) if keys.len() as u32 == want => after = Some(last),
            _ => {
                index += 1;
                after = None;
            }
        }
    }
    Ok(None)
}

/// Reads the result from the store and sends it in chunks until done or the client is gone.
async fn produce(
    store: Arc<dyn Store>,
    q: SeriesQuery,
    planned: Option<Option<Cursor>>,
    tx: mpsc::Sender<Result<Bytes, StoreError>>,
) {
    let shape = match q.agg {
        None => Shape::Raw,
        Some((step_us, agg)) => Shape::Agg {
            agg,
            step_ms: step_us / 1000,
        },
    };
    let mut enc = Encoder::new(q.format, shape, q.pairs.clone());
    let mut out = String::new();
    enc.begin(&mut out);
    let result: Result<(), StoreError> = async {
        match q.agg {
            Some((step_us, agg)) => {
                for (i, &(device_id, channel)) in q.pairs.iter().enumerate() {
                    let buckets = store
                        .aggregate(AggQuery {
                            device_id,
                            channel,
                            from_us: q.from_us,
                            to_us: q.to_us,
                            step_us,
                            agg,
                        })
                        .await?;
                    enc.buckets(&mut out, i, &buckets);
                    if out.len() >= CHUNK_BYTES && !flush(&tx, &mut out).await {
                        return Ok(());
                    }
                }
                enc.end(&mut out, None);
            }
            None => {
                let mut pager = Pager::new(store.clone(), &q, planned);
                loop {
                    match pager.next().await? {
                        Page::Rows(i, rows) => {
                            enc.rows(&mut out, i, &rows);
                            if out.len() >= CHUNK_BYTES && !flush(&tx, &mut out).await {
                                return Ok(());
                            }
                        }
                        Page::End(c) => {
                            enc.end(&mut out, c.map(|c| c.encode()).as_deref());
                            break;
                        }
                    }
                }
            }
        }
        flush(&tx, &mut out).await;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        warn!(error = %e, "series stream aborted by a store error");
        metrics::counter!(m::API_ERRORS, "route" => "series", "code" => "stream_aborted")
            .increment(1);
        let _ = tx.send(Err(e)).await;
    }
}

/// Sends the gathered bytes; `false` when the client has gone away.
async fn flush(tx: &mpsc::Sender<Result<Bytes, StoreError>>, out: &mut String) -> bool {
    if out.is_empty() {
        return true;
    }
    let chunk = Bytes::from(std::mem::take(out));
    tx.send(Ok(chunk)).await.is_ok()
}
