//! The behaviour every [`Store`] must have, as executable checks.
//!
//! # Using it for a new store
//! Open the store on an empty database and call [`run_all`] from an integration test:
//!
//! ```ignore
//! #[tokio::test]
//! async fn conformance() {
//!     let store = MyStore::open(/* a fresh, empty database */).await.unwrap();
//!     ingest::store::conformance::run_all(&store).await;
//! }
//! ```
//!
//! Each check panics with a message naming the behaviour that failed, so the individual
//! `pub async fn`s can also be called one per test for finer reports. Every check uses its own
//! device ids, channels and revocation subjects, so the checks may share one store, but they
//! must run one after the other ([`delete_older_than_removes_exactly_old_rows`] deletes every
//! reading below its cutoff, a time no other check writes after it). A store passes when its
//! data is as the checks read it back; how it stores it is free.
//!
//! Behaviour fixed here beyond the trait docs:
//! - NaN reads back as NaN; ±inf, negative, huge and subnormal values and timestamps round-trip
//!   exactly; device ids and sequence numbers use all 64 bits.
//! - `latest` keeps the reading with the greatest `ts_us` (equal times: the later write wins).
//! - Aggregates ignore NaN values (a bucket with only NaN gives NaN, `sum` included) but count
//!   every reading in `Bucket::count`; `Count`'s value is that count. Buckets start at multiples
//!   of the step (floor division for negative times). `First`/`Last` take the value (NaN too) at
//!   the smallest/greatest `(ts_us, seq)`.
//! - `last_seen_us` and revocations only move forward; a disconnect that carries an older
//!   `connected_at_us` than the recorded one (the old connection of a device that has already
//!   reconnected) changes nothing.

use std::collections::BTreeMap;

use super::{Agg, AggQuery, Bucket, Presence, RangeQuery, Revocation, Row, Store, WriteBatch};
use crate::dedup::DedupWindow;

/// Device ids of check `n` are `DEVICE_BASE + n * 0x1_0000 + i` (also `| 1 << 63` for high ids).
const DEVICE_BASE: u64 = 0x0C0F_0000_0000_0000;

fn device(check: u64, i: u64) -> u64 {
    DEVICE_BASE + check * 0x1_0000 + i
}

/// Runs every check, one after the other.
pub async fn run_all(store: &dyn Store) {
    empty_batch_is_accepted(store).await;
    rows_round_trip_exactly(store).await;
    range_orders_limits_and_pages(store).await;
    latest_moves_only_forward(store).await;
    aggregates_match_independent_computation(store).await;
    dedup_windows_round_trip_with_their_batch(store).await;
    presence_and_last_seen_are_listed(store).await;
    a_presence_storm_lands_in_order(store).await;
    committed_batches_are_read_at_once_and_made_durable_in_order(store).await;
    revocations_move_only_forward(store).await;
    delete_older_than_removes_exactly_old_rows(store).await;
    ping_succeeds(store).await;
}

fn row(device_id: u64, channel: u16, ts_us: i64, seq: u64, value: f64) -> Row {
    Row {
        device_id,
        seq,
        channel,
        quality: (seq % 7) as u16 * 0x1111,
        ts_us,
        value,
    }
}

fn rows_batch(rows: Vec<Row>) -> WriteBatch {
    WriteBatch {
        rows,
        ..WriteBatch::default()
    }
}

/// Same value, with every NaN equal to every NaN.
fn same_value(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

fn same_rows(a: &[Row], b: &[Row]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            (x.device_id, x.seq, x.channel, x.quality, x.ts_us)
                == (y.device_id, y.seq, y.channel, y.quality, y.ts_us)
                && same_value(x.value, y.value)
        })
}

/// Every row of one series, in stored order.
async fn all_rows(store: &dyn Store, device_id: u64, channel: u16) -> Vec<Row> {
    store
        .range(RangeQuery {
            device_id,
            channel,
            from_us: i64::MIN,
            to_us: i64::MAX,
            after: None,
            limit: u32::MAX,
        })
        .await
        .expect("range query over all time")
}

/// A batch with nothing in it commits and changes nothing.
pub async fn empty_batch_is_accepted(store: &dyn Store) {
    store
        .write_batch(WriteBatch::default())
        .await
        .expect("an empty batch must be accepted");
}

/// Readings come back bit for bit: 64-bit ids and sequences, NaN, infinities, extreme times.
pub async fn rows_round_trip_exactly(store: &dyn Store) {
    let ids = [u64::MAX, 1 << 63, device(1, 0), 0];
    let values = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -1.5,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE / 4.0, // subnormal
        1e18,
        0.1,
    ];
    let times = [
        i64::MIN + 1_000_000,
        -1_000_000_000_000_000,
        -1,
        0,
        1_700_000_000_000_000,
        i64::MAX - 1,
    ];
    let mut rows = Vec::new();
    for (d, &device_id) in ids.iter().enumerate() {
        for channel in [0u16, 7, u16::MAX] {
            for (i, &ts_us) in times.iter().enumerate() {
                let seq = if i == 0 {
                    u64::MAX
                } else {
                    (d * 100 + i) as u64
                };
                let value = values[(i + d + channel as usize) % values.len()];
                let mut r = row(device_id, channel, ts_us, seq, value);
                r.quality = if i == 1 { u16::MAX } else { r.quality };
                rows.push(r);
            }
        }
    }
    rows.reverse(); // stored order must not depend on insertion order
    store
        .write_batch(rows_batch(rows.clone()))
        .await
        .expect("write rows");
    for &device_id in &ids {
        for channel in [0u16, 7, u16::MAX] {
            let mut expected: Vec<Row> = rows
                .iter()
                .filter(|r| r.device_id == device_id && r.channel == channel)
                .copied()
                .collect();
            expected.sort_by_key(|r| r.ts_us);
            let got = all_rows(store, device_id, channel).await;
            assert!(
                same_rows(&got, &expected),
                "device {device_id:#x} channel {channel}: stored rows differ\n expected {expected:?}\n got      {got:?}"
            );
        }
    }
}

/// `range` returns `[from, to)` of one series by `(ts_us, seq)`, at most `limit` rows, and pages
/// with `after` without losing or repeating a row.
pub async fn range_orders_limits_and_pages(store: &dyn Store) {
    let d = device(2, 0);
    let other = device(2, 1);
    // 60 readings on channel 3, two per timestamp (two frames), written in scrambled order over
    // three batches; noise on another channel and another device.
    let mut rows: Vec<Row> = (0..60u64)
        .map(|i| {
            row(
                d,
                3,
                1_000 + (i / 2) as i64 * 10,
                500 + (i % 2) * 1000 + i,
                i as f64,
            )
        })
        .collect();
    let mut scrambled = rows.clone();
    scrambled.sort_by_key(|r| (r.seq * 7919) % 61);
    for chunk in scrambled.chunks(20) {
        let mut batch = chunk.to_vec();
        batch.push(row(d, 4, chunk[0].ts_us, chunk[0].seq, -1.0));
        batch.push(row(other, 3, chunk[0].ts_us, chunk[0].seq, -2.0));
        store
            .write_batch(rows_batch(batch))
            .await
            .expect("write range rows");
    }
    rows.sort_by_key(|r| (r.ts_us, r.seq));

    let got = all_rows(store, d, 3).await;
    assert!(
        same_rows(&got, &rows),
        "range must return exactly the series, by (ts_us, seq)\n got {got:?}"
    );

    let query = |from_us, to_us, after, limit| RangeQuery {
        device_id: d,
        channel: 3,
        from_us,
        to_us,
        after,
        limit,
    };
    let window = store
        .range(query(1_050, 1_150, None, 1000))
        .await
        .expect("range");
    let expected: Vec<Row> = rows
        .iter()
        .filter(|r| (1_050..1_150).contains(&r.ts_us))
        .copied()
        .collect();
    assert_eq!(expected.len(), 20);
    assert!(
        same_rows(&window, &expected),
        "from is inclusive, to exclusive\n got {window:?}"
    );

    let limited = store
        .range(query(i64::MIN, i64::MAX, None, 5))
        .await
        .expect("range");
    assert!(
        same_rows(&limited, &rows[..5]),
        "limit keeps the oldest rows\n got {limited:?}"
    );
    let none = store
        .range(query(i64::MIN, i64::MAX, None, 0))
        .await
        .expect("range");
    assert!(none.is_empty(), "limit 0 returns nothing, got {none:?}");

    let mut paged = Vec::new();
    let mut after = None;
    for page in 0.. {
        assert!(page < 20, "pagination does not end");
        let got = store
            .range(query(1_000, 1_300, after, 7))
            .await
            .expect("range page");
        assert!(got.len() <= 7, "page of {} rows exceeds limit 7", got.len());
        let Some(last) = got.last() else { break };
        after = Some((last.ts_us, last.seq));
        paged.extend(got);
    }
    assert!(
        same_rows(&paged, &rows),
        "pages with `after` must add up to the whole range\n got {paged:?}"
    );
    for (after, limit) in [
        (None, 1000),
        (None, 5),
        (Some((1_050, 1_560)), 9),
        (None, 0),
    ] {
        let q = query(1_000, 1_300, after, limit);
        let keys = store.range_keys(q).await.expect("range_keys");
        let want: Vec<(i64, u64)> = store
            .range(q)
            .await
            .expect("range")
            .iter()
            .map(|r| (r.ts_us, r.seq))
            .collect();
        assert_eq!(keys, want, "range_keys = keys of range for {q:?}");
    }
}

/// `latest` holds the newest reading per channel; older readings written later do not replace it.
pub async fn latest_moves_only_forward(store: &dyn Store) {
    let d = device(3, 0);
    let batch = vec![
        row(d, 1, 300, 3, 3.0),
        row(d, 1, 100, 1, 1.0), // older, later in the batch
        row(d, 2, 50, 1, f64::NAN),
    ];
    store.write_batch(rows_batch(batch)).await.expect("write");
    let got = store.latest(d).await.expect("latest");
    assert_eq!(got.len(), 2, "one latest per channel, got {got:?}");
    assert_eq!(
        (got[0].channel, got[0].ts_us, got[0].value),
        (1, 300, 3.0),
        "newest in the batch wins"
    );
    assert_eq!(got[0].quality, row(d, 1, 300, 3, 3.0).quality);
    assert!(
        got[1].channel == 2 && got[1].ts_us == 50 && got[1].value.is_nan(),
        "NaN latest: {got:?}"
    );

    store
        .write_batch(rows_batch(vec![
            row(d, 1, 200, 4, 9.0),
            row(d, 2, 60, 2, 6.0),
        ]))
        .await
        .expect("write");
    let got = store.latest(d).await.expect("latest");
    assert_eq!(
        (got[0].ts_us, got[0].value),
        (300, 3.0),
        "an older reading must not replace latest"
    );
    assert_eq!(
        (got[1].ts_us, got[1].value),
        (60, 6.0),
        "a newer reading replaces latest"
    );
    assert!(
        store.latest(device(3, 1)).await.expect("latest").is_empty(),
        "unknown device has no latest"
    );
}

/// Buckets for every [`Agg`] equal a computation done here from the written rows.
pub async fn aggregates_match_independent_computation(store: &dyn Store) {
    let d = device(4, 0);
    let mut rows = Vec::new();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for i in 0..400u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let ts_us = -2_500 + (x % 7_000) as i64; // negative times too
        let value = if x.is_multiple_of(11) {
            f64::NAN
        } else {
            (x % 10_000) as f64 / 7.0 - 500.0
        };
        rows.push(row(d, 5, ts_us, i + 1, value));
    }
    // Ties in ts_us (first/last decided by seq), bucket edges, an all-NaN bucket, a lone reading.
    rows.extend([
        row(d, 5, -2_000, 10_000, 1.0),
        row(d, 5, -2_000, 9_999, 2.0),
        row(d, 5, 0, 10_001, 3.0),
        row(d, 5, -1, 10_002, 4.0),
        row(d, 5, 20_500, 10_003, f64::NAN),
        row(d, 5, 20_600, 10_004, f64::NAN),
        row(d, 5, 30_999, 10_005, 42.0),
    ]);
    let noise = vec![row(d, 6, 100, 1, 1e9), row(device(4, 1), 5, 100, 1, 1e9)];
    store
        .write_batch(rows_batch(rows[..200].to_vec()))
        .await
        .expect("write");
    store
        .write_batch(rows_batch(rows[200..].to_vec()))
        .await
        .expect("write");
    store.write_batch(rows_batch(noise)).await.expect("write");

    for (from_us, to_us, step_us) in [
        (-2_300, 31_000, 1_000),
        (i64::MIN, i64::MAX, 333),
        (-5_000, 40_000, 10_000_000),
        (0, 50, 1),
    ] {
        for agg in Agg::ALL {
            let query = AggQuery {
                device_id: d,
                channel: 5,
                from_us,
                to_us,
                step_us,
                agg,
            };
            let got = store.aggregate(query).await.expect("aggregate");
            let expected = expected_buckets(&rows, from_us, to_us, step_us, agg);
            let matches = got.len() == expected.len()
                && got.iter().zip(&expected).all(|(g, e)| {
                    g.start_us == e.start_us && g.count == e.count && close(g.value, e.value)
                });
            assert!(
                matches,
                "aggregate {agg:?} step {step_us} over [{from_us}, {to_us})\n expected {expected:?}\n got      {got:?}"
            );
        }
    }
}

/// Equal, both NaN, or within 1e-9 relative (sums may be computed in another order).
fn close(a: f64, b: f64) -> bool {
    same_value(a, b) || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn expected_buckets(rows: &[Row], from_us: i64, to_us: i64, step_us: i64, agg: Agg) -> Vec<Bucket> {
    let mut buckets: BTreeMap<i64, Vec<&Row>> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.ts_us >= from_us && r.ts_us < to_us)
    {
        buckets
            .entry(r.ts_us.div_euclid(step_us) * step_us)
            .or_default()
            .push(r);
    }
    buckets
        .into_iter()
        .map(|(start_us, rs)| {
            let values: Vec<f64> = rs.iter().map(|r| r.value).filter(|v| !v.is_nan()).collect();
            let or_nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
            let value = match agg {
                Agg::Avg => or_nan(
                    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64),
                ),
                Agg::Min => or_nan(values.iter().copied().reduce(f64::min)),
                Agg::Max => or_nan(values.iter().copied().reduce(f64::max)),
                Agg::Sum => or_nan((!values.is_empty()).then(|| values.iter().sum())),
                Agg::Count => rs.len() as f64,
                Agg::First => {
                    rs.iter()
                        .min_by_key(|r| (r.ts_us, r.seq))
                        .expect("non-empty")
                        .value
                }
                Agg::Last => {
                    rs.iter()
                        .max_by_key(|r| (r.ts_us, r.seq))
                        .expect("non-empty")
                        .value
                }
            };
            Bucket {
                start_us,
                value,
                count: rs.len() as u64,
            }
        })
        .collect()
}

/// A dedup window reads back as written, is replaced by the next batch's, and is resized on read.
pub async fn dedup_windows_round_trip_with_their_batch(store: &dyn Store) {
    let (a, b) = (device(5, 0), u64::MAX - 5);
    assert!(
        store
            .dedup_window(a, 1024)
            .await
            .expect("dedup_window")
            .is_none(),
        "no window before any batch"
    );
    let mut wa = DedupWindow::new(1024);
    let mut wb = DedupWindow::new(1024);
    for s in [1u64, 2, 5, 700, 1500] {
        wa.insert(s);
    }
    wb.insert(u64::MAX - 1);
    let batch = WriteBatch {
        rows: vec![row(a, 0, 10, 1500, 1.0), row(b, 0, 10, u64::MAX - 1, 2.0)],
        dedup: vec![(a, wa.clone()), (b, wb.clone())],
        last_seen: vec![],
    };
    store.write_batch(batch).await.expect("write");
    let got = store.dedup_window(a, 1024).await.expect("dedup_window");
    assert_eq!(got.as_ref(), Some(&wa), "window of device a as written");
    assert_eq!(
        all_rows(store, a, 0).await.len(),
        1,
        "the batch's reading is there with its window"
    );
    assert_eq!(
        store.dedup_window(b, 1024).await.expect("dedup_window"),
        Some(wb),
        "64-bit id and high-water"
    );
    let resized = store.dedup_window(a, 128).await.expect("dedup_window");
    assert_eq!(
        resized,
        DedupWindow::from_bytes(&wa.to_bytes(), 128),
        "a smaller configured window keeps the newest part"
    );

    wa.insert(1501);
    let batch = WriteBatch {
        rows: vec![],
        dedup: vec![(a, wa.clone())],
        last_seen: vec![],
    };
    store.write_batch(batch).await.expect("write window only");
    assert_eq!(
        store.dedup_window(a, 1024).await.expect("dedup_window"),
        Some(wa),
        "the next batch replaces the window"
    );
}

/// Presence upserts, last-seen times from batches, and the device list by u64 id.
pub async fn presence_and_last_seen_are_listed(store: &dyn Store) {
    let (a, b, high) = (device(6, 0), device(6, 1), device(6, 2) | 1 << 63);
    let presence = |device_id, online, connected_at_us, at_us, addr: &str| Presence {
        device_id,
        online,
        connected_at_us,
        at_us,
        remote_addr: addr.to_string(),
    };
    store
        .set_presence(presence(high, true, 1_000, 1_000, "192.0.2.9:4000"))
        .await
        .expect("presence");
    store
        .set_presence(presence(a, true, 1_000, 1_000, "192.0.2.1:5000"))
        .await
        .expect("presence");
    let seen = |pairs: Vec<(u64, i64)>| WriteBatch {
        last_seen: pairs,
        ..WriteBatch::default()
    };
    store
        .write_batch(seen(vec![(a, 1_500), (b, 2_000)]))
        .await
        .expect("last seen");
    store
        .write_batch(seen(vec![(a, 1_200)]))
        .await
        .expect("older last seen");

    let mine = |all: Vec<super::DeviceInfo>| -> Vec<super::DeviceInfo> {
        all.into_iter()
            .filter(|d| [a, b, high].contains(&d.device_id))
            .collect()
    };
    let got = mine(store.devices().await.expect("devices"));
    let ids: Vec<u64> = got.iter().map(|d| d.device_id).collect();
    assert_eq!(
        ids,
        vec![a, b, high],
        "devices listed by u64 id (ids >= 2^63 last)"
    );
    assert!(got[0].online, "a connected");
    assert_eq!(got[0].connected_at_us, Some(1_000));
    assert_eq!(got[0].remote_addr.as_deref(), Some("192.0.2.1:5000"));
    assert_eq!(
        got[0].last_seen_us,
        Some(1_500),
        "last seen only moves forward"
    );
    assert!(
        !got[1].online,
        "a device known only from frames is not online: {:?}",
        got[1]
    );
    assert_eq!(
        (
            got[1].connected_at_us,
            got[1].last_seen_us,
            got[1].remote_addr.clone()
        ),
        (None, Some(2_000), None)
    );
    assert!(
        got[2].online && got[2].last_seen_us.is_none(),
        "{:?}",
        got[2]
    );

    // a reconnects (new connection at 3000); the old connection's disconnect arrives afterwards.
    store
        .set_presence(presence(a, true, 3_000, 3_000, "192.0.2.1:5001"))
        .await
        .expect("presence");
    store
        .set_presence(presence(a, false, 1_000, 3_100, "192.0.2.1:5000"))
        .await
        .expect("stale presence");
    let got = mine(store.devices().await.expect("devices"));
    assert!(
        got[0].online,
        "a stale disconnect must not mark a reconnected device offline: {:?}",
        got[0]
    );
    assert_eq!(got[0].connected_at_us, Some(3_000));
    assert_eq!(got[0].remote_addr.as_deref(), Some("192.0.2.1:5001"));

    store
        .set_presence(presence(a, false, 3_000, 4_000, "192.0.2.1:5001"))
        .await
        .expect("presence");
    let got = mine(store.devices().await.expect("devices"));
    assert!(
        !got[0].online,
        "disconnect of the current connection: {:?}",
        got[0]
    );
    assert_eq!(
        got[0].connected_at_us,
        Some(3_000),
        "connected_at is kept after a disconnect"
    );
    assert_eq!(
        got[0].last_seen_us,
        Some(1_500),
        "presence does not touch last seen"
    );
}

/// A fleet reconnecting at once: many presence changes queued together (with other writes
/// between them) are all recorded, in the order they were made.
pub async fn a_presence_storm_lands_in_order(store: &dyn Store) {
    const N: u64 = 300;
    let presence = |i: u64, online: bool, connected_at_us: i64, port: u16| Presence {
        device_id: device(11, i),
        online,
        connected_at_us,
        at_us: connected_at_us,
        remote_addr: format!("192.0.2.3:{port}"),
    };
    // Per device, in this order: connect (1000), reconnect (2000), the first connection's late
    // disconnect (ignored: older), then every third device disconnects for good; a batch with
    // last-seen times is queued in the middle of the storm.
    let mut changes = Vec::new();
    for i in 0..N {
        changes.push(presence(i, true, 1_000, 1));
        changes.push(presence(i, true, 2_000, 2));
    }
    for i in 0..N {
        changes.push(presence(i, false, 1_000, 1));
        if i.is_multiple_of(3) {
            changes.push(presence(i, false, 2_000, 2));
        }
    }
    let (first, second) = changes.split_at(changes.len() / 2);
    let send = |list: &[Presence]| {
        futures_util::future::join_all(list.iter().map(|p| store.set_presence(p.clone())))
    };
    let seen = WriteBatch {
        last_seen: (0..N).map(|i| (device(11, i), 5_000)).collect(),
        ..WriteBatch::default()
    };
    let (a, batch, b) = tokio::join!(send(first), store.write_batch(seen), send(second));
    for result in a.into_iter().chain(b) {
        result.expect("presence");
    }
    batch.expect("last seen");

    let all = store.devices().await.expect("devices");
    let mine: Vec<_> = all
        .into_iter()
        .filter(|d| (device(11, 0)..device(11, N)).contains(&d.device_id))
        .collect();
    assert_eq!(mine.len(), N as usize, "every device recorded");
    for d in &mine {
        let i = d.device_id - device(11, 0);
        assert_eq!(d.online, !i.is_multiple_of(3), "device {i}: {d:?}");
        assert_eq!(d.connected_at_us, Some(2_000), "device {i}: {d:?}");
        assert_eq!(d.remote_addr.as_deref(), Some("192.0.2.3:2"), "device {i}");
        assert_eq!(d.last_seen_us, Some(5_000), "device {i}");
    }
}

/// A revocation only moves forward in time.
pub async fn revocations_move_only_forward(store: &dyn Store) {
    let (s1, s2) = ("device:conformance-7-a", "jti:conformance-7-b");
    let revoke = |subject: &str, issued_before_s| Revocation {
        subject: subject.to_string(),
        issued_before_s,
    };
    let mine = |all: Vec<Revocation>| -> Vec<Revocation> {
        all.into_iter()
            .filter(|r| r.subject.contains("conformance-7-"))
            .collect()
    };
    store.revoke(revoke(s1, 100)).await.expect("revoke");
    store.revoke(revoke(s2, 5)).await.expect("revoke");
    store.revoke(revoke(s1, 50)).await.expect("revoke older");
    let mut got = mine(store.revocations().await.expect("revocations"));
    got.sort_by(|x, y| x.subject.cmp(&y.subject));
    assert_eq!(
        got,
        vec![revoke(s1, 100), revoke(s2, 5)],
        "an older revoke must not lower the time"
    );
    store.revoke(revoke(s1, 200)).await.expect("revoke newer");
    let got = mine(store.revocations().await.expect("revocations"));
    assert!(
        got.contains(&revoke(s1, 200)),
        "a newer revoke moves forward: {got:?}"
    );
}

/// `delete_older_than` removes exactly the readings with `ts_us < cutoff`, of every series, and
/// says how many.
pub async fn delete_older_than_removes_exactly_old_rows(store: &dyn Store) {
    const CUTOFF: i64 = i64::MIN / 2;
    // Clears whatever an earlier test left below the cutoff, so the count below is ours.
    store
        .delete_older_than(CUTOFF)
        .await
        .expect("delete (clearing)");
    let ids = [device(8, 0), u64::MAX - 8];
    let mut rows = Vec::new();
    for &d in &ids {
        for channel in [1u16, 2] {
            for i in 0..25i64 {
                rows.push(row(d, channel, CUTOFF - 1_000 + i * 60, i as u64, i as f64)); // 17 old
            }
        }
    }
    let old = rows.iter().filter(|r| r.ts_us < CUTOFF).count() as u64;
    assert_eq!(old, 4 * 17);
    rows.push(row(ids[0], 1, CUTOFF, 99, f64::NAN)); // exactly at the cutoff: kept
    store
        .write_batch(rows_batch(rows.clone()))
        .await
        .expect("write");

    let deleted = store.delete_older_than(CUTOFF).await.expect("delete");
    assert_eq!(deleted, old, "count of deleted readings");
    for &d in &ids {
        for channel in [1u16, 2] {
            let mut expected: Vec<Row> = rows
                .iter()
                .filter(|r| r.device_id == d && r.channel == channel && r.ts_us >= CUTOFF)
                .copied()
                .collect();
            expected.sort_by_key(|r| (r.ts_us, r.seq));
            let got = all_rows(store, d, channel).await;
            assert!(
                same_rows(&got, &expected),
                "device {d:#x} channel {channel} after delete\n expected {expected:?}\n got {got:?}"
            );
        }
    }
    assert_eq!(
        store.delete_older_than(CUTOFF).await.expect("delete again"),
        0,
        "nothing left to delete"
    );
}

/// A batch is readable as soon as [`Store::commit_batch`] returns, before it is durable; batches
/// committed back to back, without waiting for durability in between, all become durable and
/// keep their commit order (the later dedup window wins).
pub async fn committed_batches_are_read_at_once_and_made_durable_in_order(store: &dyn Store) {
    let id = device(12, 0);
    let mut pending = Vec::new();
    for seq in 1..=20u64 {
        let mut window = DedupWindow::new(64);
        for s in 1..=seq {
            window.insert(s);
        }
        let batch = WriteBatch {
            rows: vec![row(id, 1, seq as i64 * 1_000, seq, seq as f64)],
            dedup: vec![(id, window)],
            last_seen: vec![(id, seq as i64)],
        };
        let durable = store.commit_batch(batch).await.expect("commit");
        let rows = all_rows(store, id, 1).await;
        assert_eq!(
            rows.len(),
            seq as usize,
            "batch {seq} readable once committed"
        );
        pending.push(durable);
    }
    for (i, durable) in pending.into_iter().enumerate() {
        durable
            .wait()
            .await
            .unwrap_or_else(|e| panic!("batch {} durable: {e}", i + 1));
    }
    let window = store
        .dedup_window(id, 64)
        .await
        .expect("dedup window")
        .expect("stored");
    assert_eq!(window.high_water(), 20, "the last batch's window stands");
}

/// `ping` answers Ok on a writable store.
pub async fn ping_succeeds(store: &dyn Store) {
    store.ping().await.expect("ping on a writable store");
}
