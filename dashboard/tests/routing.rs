//! Fan-out by device: publishes wake only the clients of that device, clients find their
//! readings through the log's per-device chains, device frames are encoded once and shared,
//! frames waiting for a client are batched, and gaps are reported exactly when a watched
//! device's reading was lost (with paused time).

mod support;

use std::time::Duration;

use dashboard::filter::{Policy, Selector};
use dashboard::protocol::SubscribeArgs;
use dashboard::session::Step;
use dashboard::{ClientLimits, Format, Grants, Hub, HubConfig, Outbound, Session};
use futures_util::FutureExt;
use serde_json::Value;
use support::*;
use tokio::time::Instant;

fn devices(ids: &[u64]) -> SubscribeArgs {
    SubscribeArgs {
        selector: Selector::Devices(ids.to_vec()),
        policy: Policy::Coalesce,
        snapshot: false,
        after: None,
    }
}

fn session(hub: &std::sync::Arc<Hub>, limits: ClientLimits) -> Session {
    Session::new(hub.clone(), Format::Binary, Grants::All, limits)
}

/// The readings (device, value) of the data frames of a step, and the JSON event types.
fn contents(step: Step) -> (Vec<(u64, f64)>, Vec<String>) {
    let Step::Send(out) = step else {
        panic!("expected messages, got {step:?}")
    };
    let mut readings = Vec::new();
    let mut events = Vec::new();
    for o in out {
        match o {
            Outbound::Data { bytes, .. } => {
                readings.extend(decode(&bytes).2.into_iter().map(|x| (x.0, x.3)));
            }
            Outbound::Json { bytes, .. } => {
                let v: Value = serde_json::from_slice(&bytes).expect("json");
                events.push(v["type"].as_str().unwrap_or_default().to_string());
            }
            Outbound::Ping => {}
        }
    }
    (readings, events)
}

#[tokio::test(start_paused = true)]
async fn a_device_subscriber_is_woken_only_by_its_devices() {
    let hub = hub();
    let mut s = session(&hub, limits());
    s.subscribe(devices(&[1, 3])).expect("subscribed");
    let signal = s.signal();
    assert!(signal.notified().now_or_never().is_none(), "no wake yet");
    hub.publish(2, [r(1, 1, 1.0)]);
    assert!(
        signal.notified().now_or_never().is_none(),
        "another device's publish does not wake it"
    );
    hub.publish(3, [r(1, 2, 2.0)]);
    assert!(
        signal.notified().now_or_never().is_some(),
        "its device does"
    );
    let (readings, _) = contents(s.next_batch(Instant::now()));
    assert_eq!(readings, vec![(3, 2.0)]);
    assert_eq!(s.next_batch(Instant::now()), Step::Idle);
    assert!(!s.has_more());
    // After unsubscribing, nothing wakes it.
    s.unsubscribe(1).expect("unsubscribed");
    hub.publish(3, [r(1, 3, 3.0)]);
    assert!(signal.notified().now_or_never().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_client_behind_gets_several_device_frames_in_one_frame() {
    let hub = hub();
    let mut s = session(&hub, limits()); // at most 4 readings per frame
    s.subscribe(devices(&[1, 2])).expect("subscribed");
    hub.publish(1, [r(1, 1, 1.0), r(2, 1, 2.0)]);
    hub.publish(9, [r(1, 1, 9.0)]);
    hub.publish(2, [r(1, 2, 3.0)]);
    hub.publish(1, [r(1, 3, 4.0), r(2, 3, 5.0)]);
    let (first, _) = contents(s.next_batch(Instant::now()));
    assert_eq!(first, vec![(1, 1.0), (1, 2.0), (2, 3.0), (1, 4.0)]);
    assert!(s.has_more(), "one reading is left for the next frame");
    let (second, _) = contents(s.next_batch(Instant::now()));
    assert_eq!(second, vec![(1, 5.0)]);
    assert_eq!(s.cursor(), hub.head());
}

#[tokio::test(start_paused = true)]
async fn device_subscribers_share_one_encoding_of_a_device_frame() {
    let hub = hub();
    let mut a = client(&hub);
    let mut b = client(&hub);
    a.subscribe(r#""devices":[1]"#).await;
    b.subscribe(r#""devices":[1,2]"#).await;
    hub.publish(1, [r(1, 1, 1.0), r(1, 2, 2.0)]);
    let (Outbound::Data { bytes: x, .. }, Outbound::Data { bytes: y, .. }) =
        (a.next().await, b.next().await)
    else {
        panic!("data expected")
    };
    assert_eq!(x.as_ptr(), y.as_ptr(), "one encoding, shared");
    assert_eq!(decode(&x).2.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_quiet_device_subscriber_gets_no_gap_when_only_other_devices_were_evicted() {
    let config = HubConfig {
        resume_window: Duration::from_secs(2),
        ..HubConfig::default()
    };
    let hub = Hub::with_start(config, START);
    let mut s = session(&hub, limits());
    s.subscribe(devices(&[1])).expect("subscribed");
    for i in 0..50 {
        hub.publish(2, [r(1, i, i as f64)]);
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    hub.publish(2, [r(1, 50, 50.0)]); // evicts the 50 older readings of device 2
    hub.publish(1, [r(1, 51, 51.0)]);
    let (readings, events) = contents(s.next_batch(Instant::now()));
    assert_eq!(readings, vec![(1, 51.0)]);
    assert!(
        events.is_empty(),
        "nothing of device 1 was lost: {events:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_device_subscriber_behind_an_evicted_reading_of_its_device_gets_a_gap() {
    let config = HubConfig {
        resume_window: Duration::from_secs(2),
        ..HubConfig::default()
    };
    let hub = Hub::with_start(config, START);
    let mut s = session(&hub, limits());
    s.subscribe(devices(&[1])).expect("subscribed");
    hub.publish(1, [r(1, 1, 1.0)]);
    hub.publish(2, [r(1, 2, 2.0)]);
    tokio::time::advance(Duration::from_secs(5)).await;
    hub.publish(1, [r(1, 3, 3.0)]);
    let (readings, events) = contents(s.next_batch(Instant::now()));
    assert_eq!(events, vec!["gap".to_string()]);
    assert_eq!(readings, vec![(1, 3.0)], "then what the log still holds");
    assert_eq!(s.cursor(), hub.head());
}

#[tokio::test(start_paused = true)]
async fn presence_changes_reach_only_the_watchers_of_that_device() {
    let hub = hub();
    let mut s = session(&hub, limits());
    let mut other = session(&hub, limits());
    s.subscribe(devices(&[1])).expect("subscribed");
    other.subscribe(devices(&[2])).expect("subscribed");
    let signal = s.signal();
    hub.set_online(2, true, 10);
    assert!(signal.notified().now_or_never().is_none(), "not its device");
    assert!(s.take_presence().is_empty());
    hub.set_online(1, true, 11);
    assert!(signal.notified().now_or_never().is_some());
    let got = s.take_presence();
    assert_eq!(got.len(), 1);
    let Outbound::Json { kind, bytes } = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(*kind, "online");
    let v: Value = serde_json::from_slice(bytes).expect("json");
    assert_eq!(v["device"], "1");
    assert_eq!(
        other.take_presence().len(),
        1,
        "device 2's watcher got its own"
    );
}

mod exact_delivery {
    use super::*;
    use proptest::prelude::*;

    /// Steps a session once; returns the readings (device, value) it sent, in order.
    fn step(s: &mut Session) -> Vec<(u64, f64)> {
        match s.next_batch(Instant::now()) {
            Step::Send(out) => {
                let mut got = Vec::new();
                let mut last = 0;
                for o in out {
                    let Outbound::Data { bytes, .. } = o else {
                        panic!("only data expected within the bound: {o:?}")
                    };
                    let (seq, flags, recs) = decode(&bytes);
                    assert_eq!(flags, 0, "never coalesced within the bound");
                    assert!(seq > last);
                    last = seq;
                    got.extend(recs.into_iter().map(|x| (x.0, x.3)));
                }
                got
            }
            Step::Idle | Step::Progress => Vec::new(),
            Step::Close(c) => panic!("closed: {c:?}"),
        }
    }

    proptest! {
        /// Whatever the interleaving of publishes and steps, a client on a device list (chains)
        /// and a client on every device (scan) each get exactly the readings of their devices,
        /// in publish order, no gap, no duplicate.
        #[test]
        fn every_client_gets_exactly_its_devices_in_order(
            publishes in prop::collection::vec((0u64..8, 1usize..4, any::<bool>()), 1..150),
            watched in prop::collection::btree_set(0u64..10, 1..5),
            batch in 1usize..7,
        ) {
            let hub = hub();
            let limits = ClientLimits {
                max_backlog_readings: 1 << 20,
                max_backlog_bytes: 1 << 30,
                max_batch_readings: batch,
                ..limits()
            };
            let watched: Vec<u64> = watched.into_iter().collect();
            let mut listed = session(&hub, limits.clone());
            listed.subscribe(devices(&watched)).expect("subscribed");
            let mut all = session(&hub, limits);
            all.subscribe(SubscribeArgs {
                selector: Selector::All,
                policy: Policy::Coalesce,
                snapshot: false,
                after: None,
            })
            .expect("subscribed");
            let (mut got_listed, mut got_all) = (Vec::new(), Vec::new());
            let mut sent = Vec::new();
            let mut value = 0.0;
            for (device, n, step_now) in publishes {
                let readings: Vec<_> = (0..n)
                    .map(|k| {
                        value += 1.0;
                        sent.push((device, value));
                        r(k as u16, value as i64, value)
                    })
                    .collect();
                hub.publish(device, readings);
                if step_now {
                    got_listed.extend(step(&mut listed));
                    got_all.extend(step(&mut all));
                }
            }
            for _ in 0..sent.len() + 1 {
                got_listed.extend(step(&mut listed));
                got_all.extend(step(&mut all));
            }
            let want: Vec<(u64, f64)> =
                sent.iter().copied().filter(|(d, _)| watched.contains(d)).collect();
            prop_assert_eq!(got_listed, want);
            prop_assert_eq!(got_all, sent);
            prop_assert_eq!(listed.next_batch(Instant::now()), Step::Idle);
            prop_assert_eq!(listed.cursor(), hub.head());
        }
    }
}
