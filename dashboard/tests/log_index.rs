//! The log's per-device index against a brute-force scan of the whole log, on random publishes
//! with time eviction (proptest).

use codecs::LiveRecord;
use dashboard::log::{Log, Walk};
use proptest::prelude::*;

/// One publish: a device, how many readings, how many ticks later than the previous one.
fn publishes() -> impl Strategy<Value = Vec<(u64, usize, u32)>> {
    prop::collection::vec((0u64..12, 1usize..6, 0u32..3), 1..400)
}

proptest! {
    /// The per-device walk finds exactly what a scan of the whole log finds, and reports a
    /// loss exactly when an evicted reading of a watched device came after the cursor.
    #[test]
    fn device_walk_matches_a_full_scan(
        ops in publishes(),
        watched in prop::collection::vec(0u64..14, 0..6),
        after_frac in 0.0f64..1.0,
        limit in 0usize..60,
    ) {
        let start = 1_000u64;
        let mut log = Log::new(start, 20, 1 << 24);
        let mut all: Vec<(u64, u64)> = Vec::new(); // (position, device) of every push
        let mut tick = 0u32;
        for (i, (device, n, dt)) in ops.iter().enumerate() {
            tick += dt;
            let recs: Vec<LiveRecord> = (0..*n)
                .map(|k| LiveRecord::new(*device, k as u16, 0, i as i64, 0.0))
                .collect();
            let (first, last) = log.push_device(*device, &recs, tick).expect("non-empty");
            for p in first..=last {
                all.push((p, *device));
            }
            log.evict(tick);
        }
        let head = log.head();
        let after = start + ((head - start) as f64 * after_frac) as u64;
        let mut watched = watched;
        watched.sort_unstable();
        watched.dedup();
        let want: Vec<(u64, u64)> = log
            .view(after, head)
            .iter()
            .filter(|(_, r)| watched.contains(&r.device_id.get()))
            .map(|(p, r)| (p, r.device_id.get()))
            .collect();
        let want_lost = all
            .iter()
            .any(|&(p, d)| p > after && p < log.oldest() && watched.contains(&d));

        let mut got = Vec::new();
        let walk = log.collect_devices(&watched, after, usize::MAX, &mut got);
        got.sort_unstable_by_key(|(p, _)| *p);
        let got: Vec<(u64, u64)> = got.iter().map(|(p, r)| (*p, r.device_id.get())).collect();
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(walk.lost, want_lost);
        prop_assert!(!walk.over_limit);

        let mut bounded = Vec::new();
        let walk = log.collect_devices(&watched, after, limit, &mut bounded);
        prop_assert_eq!(walk.over_limit, want.len() > limit);
        prop_assert_eq!(bounded.len(), want.len().min(limit + 1));
    }
}

#[test]
fn pushing_one_reading_at_a_time_links_like_pushing_a_run() {
    let mut log = Log::new(0, 10, 1 << 20);
    log.push(LiveRecord::new(1, 1, 0, 1, 1.0), 0);
    log.push(LiveRecord::new(2, 1, 0, 1, 1.0), 0);
    log.push(LiveRecord::new(1, 2, 0, 2, 2.0), 0);
    let mut out = Vec::new();
    let walk = log.collect_devices(&[1, 9], 0, 10, &mut out);
    assert_eq!(walk, Walk::default());
    out.sort_unstable_by_key(|(p, _)| *p);
    assert_eq!(out.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![1, 3]);
}
