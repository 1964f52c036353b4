//! `/v1/series` against the real server: readings go in through the device WebSocket (so the
//! store really holds them), then come back raw (every page, JSON and CSV) and aggregated
//! (checked against values computed here from what was sent), and every bad parameter gets a
//! 400 naming it.

mod api_support;
mod common;

use std::collections::BTreeMap;

use api_support::{Lcg, Schedule, Sent, base_us, get, operator, seed};
use common::{TestServer, metric, metrics_text};

/// Starts a server with small API limits and seeds device 7 (channels 1, 2) and 8 (channel 1).
async fn seeded() -> (TestServer, Vec<Sent>, i64) {
    let server = TestServer::start(|c| {
        c.api_max_rows = 500;
        c.api_max_series = 6;
        c.api_max_buckets = 1000;
        c.api_max_range = "2days".parse().expect("duration");
    })
    .await;
    let base = base_us();
    let mut rng = Lcg(42);
    // 12 frames x 40 readings per channel, 700 ms apart: 336 s of data per channel.
    let every_700ms = Schedule {
        base_us: base,
        spacing_us: 700_000,
        frames: 12,
        per_frame: 40,
    };
    let every_1300ms = Schedule {
        base_us: base + 350,
        spacing_us: 1_300_000,
        frames: 5,
        per_frame: 30,
    };
    let mut sent = seed(&server, 7, &[1, 2], every_700ms, &mut rng).await;
    sent.extend(seed(&server, 8, &[1], every_1300ms, &mut rng).await);
    (server, sent, base)
}

fn series_path(query: &str) -> String {
    format!("/v1/series?{query}")
}

#[tokio::test]
async fn bad_parameters_get_400_naming_the_parameter() {
    let (server, _, base) = seeded().await;
    let token = operator(&server, &["*"]);
    let from_ms = base / 1000;
    let ok = format!("device=7&channel=1&from={from_ms}");
    let cases: Vec<(String, u16, &str, Option<&str>)> = vec![
        (String::new(), 400, "missing_parameter", Some("device")),
        ("device=7".into(), 400, "missing_parameter", Some("channel")),
        (
            "device=7&channel=1".into(),
            400,
            "missing_parameter",
            Some("from"),
        ),
        (
            "device=x7&channel=1&from=0".into(),
            400,
            "invalid_parameter",
            Some("device"),
        ),
        (
            "device=7,,8&channel=1&from=0".into(),
            400,
            "invalid_parameter",
            Some("device"),
        ),
        (
            "device=7&channel=70000&from=0".into(),
            400,
            "invalid_parameter",
            Some("channel"),
        ),
        (
            "device=7&channel=-1&from=0".into(),
            400,
            "invalid_parameter",
            Some("channel"),
        ),
        (
            "device=7&channel=1&from=yesterday".into(),
            400,
            "invalid_parameter",
            Some("from"),
        ),
        (
            format!("{ok}&to=soon"),
            400,
            "invalid_parameter",
            Some("to"),
        ),
        (
            format!("{ok}&to={from_ms}"),
            400,
            "invalid_parameter",
            Some("from"),
        ),
        (
            format!("{ok}&to={}", from_ms - 1),
            400,
            "invalid_parameter",
            Some("from"),
        ),
        (
            format!("{ok}&step=0"),
            400,
            "invalid_parameter",
            Some("step"),
        ),
        (
            format!("{ok}&step=5x"),
            400,
            "invalid_parameter",
            Some("step"),
        ),
        (
            format!("{ok}&step=1m&agg=median"),
            400,
            "invalid_parameter",
            Some("agg"),
        ),
        (
            format!("{ok}&agg=avg"),
            400,
            "missing_parameter",
            Some("step"),
        ),
        (
            format!("{ok}&format=xml"),
            400,
            "invalid_parameter",
            Some("format"),
        ),
        (
            format!("{ok}&limit=0"),
            400,
            "invalid_parameter",
            Some("limit"),
        ),
        (
            format!("{ok}&limit=ten"),
            400,
            "invalid_parameter",
            Some("limit"),
        ),
        (format!("{ok}&limit=501"), 400, "over_limit", Some("limit")),
        (
            format!("{ok}&cursor=zz"),
            400,
            "invalid_parameter",
            Some("cursor"),
        ),
        (
            format!("{ok}&step=1m&limit=5"),
            400,
            "invalid_parameter",
            Some("limit"),
        ),
        (
            format!("{ok}&colour=red"),
            400,
            "unknown_parameter",
            Some("colour"),
        ),
        (
            format!("{ok}&from=1"),
            400,
            "duplicate_parameter",
            Some("from"),
        ),
        (
            format!("{ok}&format=json&format=csv"),
            400,
            "duplicate_parameter",
            Some("format"),
        ),
        (
            "device=7&channel=1&from=0".into(),
            400,
            "over_limit",
            Some("from"),
        ),
        (format!("{ok}&step=10ms"), 400, "over_limit", Some("step")),
        (
            format!("device=7,8&channel=1,2,3,4&from={from_ms}"),
            400,
            "over_limit",
            Some("channel"),
        ),
        (
            format!("device=999&channel=1&from={from_ms}"),
            404,
            "unknown_device",
            None,
        ),
    ];
    for (query, status, code, param) in cases {
        let r = get(server.addr, &series_path(&query), Some(&token)).await;
        assert_eq!(r.status, status, "{query}: {}", r.body);
        let body = r.json();
        assert_eq!(body["error"], code, "{query}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{query}"
        );
        match param {
            Some(p) => assert_eq!(body["parameter"], p, "{query}: {body}"),
            None => assert!(body.get("parameter").is_none(), "{query}: {body}"),
        }
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{query}"
        );
    }
    // Limits name the setting that holds them.
    let r = get(
        server.addr,
        &series_path(&format!("{ok}&limit=501")),
        Some(&token),
    )
    .await;
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap_or("")
            .contains("api_max_rows")
    );
    let r = get(
        server.addr,
        &series_path(&format!("{ok}&step=10ms")),
        Some(&token),
    )
    .await;
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap_or("")
            .contains("api_max_buckets")
    );
}

#[tokio::test]
async fn tokens_and_grants_are_checked() {
    let (server, _, base) = seeded().await;
    let path = series_path(&format!("device=7,8&channel=1&from={}", base / 1000));
    let r = get(server.addr, &path, None).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, "missing_token".into())
    );
    let r = get(server.addr, &path, Some("not.a.token")).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, "invalid_token".into())
    );
    let r = get(server.addr, &path, Some(&server.token(7))).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, "wrong_token_kind".into())
    );
    let only8 = operator(&server, &["8"]);
    let r = get(server.addr, &path, Some(&only8)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "device_not_granted");
    assert_eq!(r.json()["device"], "7");
    let path8 = series_path(&format!(
        "device=8&channel=1&from={}&token={only8}",
        base / 1000
    ));
    let r = get(server.addr, &path8, None).await;
    assert_eq!(r.status, 200, "the query-parameter token works: {}", r.body);
}

/// The buckets of `(device, channel)` computed here: (start_ms, value, count).
fn expected_buckets(
    sent: &[Sent],
    d: u64,
    c: u16,
    step_us: i64,
    agg: &str,
) -> Vec<(i64, f64, u64)> {
    let mut by: BTreeMap<i64, Vec<(i64, f64)>> = BTreeMap::new();
    for &(dd, cc, ts, v) in sent {
        if dd == d && cc == c {
            by.entry(ts.div_euclid(step_us) * step_us)
                .or_default()
                .push((ts, v));
        }
    }
    by.into_iter()
        .map(|(start, mut vs)| {
            vs.sort_by_key(|&(ts, _)| ts);
            let values: Vec<f64> = vs.iter().map(|&(_, v)| v).collect();
            let n = values.len();
            let value = match agg {
                "avg" => values.iter().sum::<f64>() / n as f64,
                "sum" => values.iter().sum(),
                "min" => values.iter().copied().fold(f64::INFINITY, f64::min),
                "max" => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                "count" => n as f64,
                "first" => values[0],
                "last" => values[n - 1],
                other => panic!("agg {other}"),
            };
            (start / 1000, value, n as u64)
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test]
async fn aggregates_match_values_computed_from_the_readings_sent() {
    let (server, sent, base) = seeded().await;
    let token = operator(&server, &["*"]);
    let from_ms = base / 1000;
    let to_ms = from_ms + 400_000;
    for step in ["10s", "1m", "7000ms"] {
        let step_us: i64 = match step {
            "10s" => 10_000_000,
            "1m" => 60_000_000,
            _ => 7_000_000,
        };
        for agg in ["avg", "min", "max", "sum", "count", "first", "last"] {
            let q = format!(
                "device=7&device=8&channel=1,2&from={from_ms}&to={to_ms}&step={step}&agg={agg}"
            );
            let r = get(server.addr, &series_path(&q), Some(&token)).await;
            assert_eq!(r.status, 200, "{q}: {}", r.body);
            let body = r.json();
            let series = body["series"].as_array().expect("series");
            let pairs: Vec<(u64, u16)> = vec![(7, 1), (7, 2), (8, 1), (8, 2)];
            assert_eq!(series.len(), pairs.len(), "every pair appears");
            for (s, &(d, c)) in series.iter().zip(&pairs) {
                assert_eq!(s["device"], d.to_string());
                assert_eq!(s["channel"], c);
                assert_eq!(s["agg"], agg);
                assert_eq!(s["step_ms"], step_us / 1000);
                let want = expected_buckets(&sent, d, c, step_us, agg);
                let got: Vec<(i64, f64, u64)> = s["buckets"]
                    .as_array()
                    .expect("buckets")
                    .iter()
                    .map(|b| {
                        (
                            b["start_ms"].as_i64().expect("start"),
                            b["value"].as_f64().expect("value"),
                            b["count"].as_u64().expect("count"),
                        )
                    })
                    .collect();
                assert_eq!(got.len(), want.len(), "{q} {d}/{c}: bucket count");
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!((g.0, g.2), (w.0, w.2), "{q} {d}/{c}: bucket start/count");
                    assert!(
                        close(g.1, w.1),
                        "{q} {d}/{c} bucket {}: got {} want {}",
                        g.0,
                        g.1,
                        w.1
                    );
                }
            }
            // The CSV form carries the same buckets.
            let r = get(
                server.addr,
                &series_path(&format!("{q}&format=csv")),
                Some(&token),
            )
            .await;
            assert_eq!(r.status, 200);
            assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
            let mut lines = r.body.lines();
            assert_eq!(
                lines.next(),
                Some("device,channel,bucket_start_ms,value,count")
            );
            let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
            let json_rows: usize = series
                .iter()
                .map(|s| s["buckets"].as_array().map_or(0, Vec::len))
                .sum();
            assert_eq!(rows.len(), json_rows, "{q}: csv lines");
            let want = expected_buckets(&sent, 7, 1, step_us, agg);
            for (row, w) in rows
                .iter()
                .filter(|r| r[0] == "7" && r[1] == "1")
                .zip(&want)
            {
                assert_eq!(row[2].parse::<i64>().expect("start"), w.0);
                assert!(close(row[3].parse::<f64>().expect("value"), w.1));
                assert_eq!(row[4].parse::<u64>().expect("count"), w.2);
            }
        }
    }
}

/// Every point of a raw JSON page, as (device, channel, ts_us, value), in body order.
fn points(body: &serde_json::Value) -> Vec<Sent> {
    let mut out = Vec::new();
    for s in body["series"].as_array().expect("series") {
        let d: u64 = s["device"]
            .as_str()
            .expect("device string")
            .parse()
            .expect("id");
        let c = s["channel"].as_u64().expect("channel") as u16;
        for p in s["points"].as_array().expect("points") {
            let ts_us = p["ts_us"].as_i64().expect("ts_us");
            assert_eq!(p["ts_ms"].as_i64(), Some(ts_us.div_euclid(1000)));
            assert!(p["seq"].is_string(), "seq is a string");
            out.push((d, c, ts_us, p["value"].as_f64().expect("value")));
        }
    }
    out
}

/// The readings sent, in the order the API returns them: series in request order, then time.
fn in_api_order(sent: &[Sent], pairs: &[(u64, u16)]) -> Vec<Sent> {
    let mut out = Vec::new();
    for &(d, c) in pairs {
        let mut s: Vec<Sent> = sent
            .iter()
            .copied()
            .filter(|r| r.0 == d && r.1 == c)
            .collect();
        s.sort_by_key(|r| r.2);
        out.extend(s);
    }
    out
}

#[tokio::test]
async fn raw_pages_walk_to_exactly_the_rows_sent() {
    let (server, sent, base) = seeded().await;
    let token = operator(&server, &["*"]);
    let q = format!(
        "device=8,7&channel=2&channel=1&from={}&limit=37",
        base / 1000
    );
    let pairs = [(8, 2), (8, 1), (7, 2), (7, 1)];
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => series_path(&format!("{q}&cursor={c}")),
            None => series_path(&q),
        };
        let r = get(server.addr, &path, Some(&token)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("transfer-encoding"), Some("chunked"), "streamed");
        let body = r.json();
        assert_eq!(body["series"].as_array().map(Vec::len), Some(4));
        let page = points(&body);
        assert!(page.len() <= 37, "page over the limit: {}", page.len());
        got.extend(page);
        pages += 1;
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let want = in_api_order(&sent, &pairs);
    assert_eq!(got.len(), want.len(), "rows over {pages} pages");
    assert_eq!(got, want, "exactly the rows sent, in order, none twice");
    assert_eq!(pages, want.len().div_ceil(37));

    // A cursor is bound to its query.
    let first = get(server.addr, &series_path(&q), Some(&token))
        .await
        .json();
    let c = first["next_cursor"].as_str().expect("cursor");
    let other = format!("device=7&channel=1&from={}&cursor={c}", base / 1000);
    let r = get(server.addr, &series_path(&other), Some(&token)).await;
    assert_eq!(
        (r.status, r.json()["parameter"].clone()),
        (400, "cursor".into())
    );
}

#[tokio::test]
async fn csv_pages_follow_the_next_cursor_header() {
    let (server, sent, base) = seeded().await;
    let token = operator(&server, &["*"]);
    let to_ms = base / 1000 + 3_600_000;
    // 480 rows per series: pages that end inside a series, and pages that end exactly at one.
    for limit in [100, 480] {
        let q = format!(
            "device=7&channel=1,2&from={}&to={to_ms}&format=csv&limit={limit}",
            base / 1000
        );
        let mut rows = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => series_path(&format!("{q}&cursor={c}")),
                None => series_path(&q),
            };
            let r = get(server.addr, &path, Some(&token)).await;
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
            let mut lines = r.body.lines();
            assert_eq!(lines.next(), Some("device,channel,ts_ms,value,quality"));
            let page: Vec<(u64, u16, i64, f64)> = lines
                .map(|l| {
                    let f: Vec<&str> = l.split(',').collect();
                    assert_eq!(f.len(), 5, "{l}");
                    assert_eq!(f[4], "0", "quality");
                    (
                        f[0].parse().expect("device"),
                        f[1].parse().expect("channel"),
                        f[2].parse().expect("ts_ms"),
                        f[3].parse().expect("value"),
                    )
                })
                .collect();
            assert!(page.len() <= limit);
            rows.extend(page);
            match r.header("x-next-cursor") {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let want: Vec<(u64, u16, i64, f64)> = in_api_order(&sent, &[(7, 1), (7, 2)])
            .into_iter()
            .map(|(d, c, ts, v)| (d, c, ts.div_euclid(1000), v))
            .collect();
        assert_eq!(rows, want, "limit {limit}");
    }
}

#[tokio::test]
async fn rfc3339_and_epoch_ms_select_the_same_rows() {
    let (server, _, base) = seeded().await;
    let token = operator(&server, &["*"]);
    let from_ms = base / 1000 + 60_000;
    let to_ms = from_ms + 120_000;
    let as_ms = format!("device=7&channel=1&from={from_ms}&to={to_ms}");
    // The same instants written with a +02:00 offset.
    let rfc = |ms: i64| {
        let secs = ms / 1000 + 7200;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}%2B02:00",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            ms.rem_euclid(1000)
        )
    };
    let as_rfc = format!("device=7&channel=1&from={}&to={}", rfc(from_ms), rfc(to_ms));
    let a = get(server.addr, &series_path(&as_ms), Some(&token)).await;
    let b = get(server.addr, &series_path(&as_rfc), Some(&token)).await;
    assert_eq!((a.status, b.status), (200, 200), "{}", b.body);
    assert!(!points(&a.json()).is_empty());
    assert_eq!(a.json(), b.json());
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[tokio::test]
async fn api_requests_and_errors_are_counted() {
    let (server, _, base) = seeded().await;
    let token = operator(&server, &["*"]);
    let before = metrics_text(server.addr).await;
    let ok = series_path(&format!("device=7&channel=1&from={}", base / 1000));
    assert_eq!(get(server.addr, &ok, Some(&token)).await.status, 200);
    let bad = series_path("device=7&channel=1&from=never");
    assert_eq!(get(server.addr, &bad, Some(&token)).await.status, 400);
    let after = metrics_text(server.addr).await;
    let ok_delta = metric(
        &after,
        "telemux_api_requests_total",
        &[("route", "series"), ("status", "200")],
    ) - metric(
        &before,
        "telemux_api_requests_total",
        &[("route", "series"), ("status", "200")],
    );
    let err_delta = metric(
        &after,
        "telemux_api_errors_total",
        &[("route", "series"), ("code", "invalid_parameter")],
    ) - metric(
        &before,
        "telemux_api_errors_total",
        &[("route", "series"), ("code", "invalid_parameter")],
    );
    // Other tests in this binary share the process-wide recorder, so at least.
    assert!(ok_delta >= 1.0, "{ok_delta}");
    assert!(err_delta >= 1.0, "{err_delta}");
}
