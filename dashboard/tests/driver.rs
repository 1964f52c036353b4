//! The connection loop over channels, with paused time: subscriptions, data forms, resume,
//! policies, the slow-consumer deadline, heartbeats, expiry, presence and shared frames.

mod support;

use std::time::Duration;

use codecs::FrameFlag;
use dashboard::close;
use dashboard::driver::{DriveOptions, Inbound, OUT_QUEUE};
use dashboard::{Format, Grants, Hub, HubConfig, Outbound};
use serde_json::Value;
use support::*;

#[tokio::test(start_paused = true)]
async fn subscribers_get_only_their_devices_in_position_order() {
    let hub = hub();
    let mut c = client(&hub);
    c.subscribe(r#""devices":[1,3]"#).await;
    hub.publish(1, [r(1, 10, 1.0), r(2, 10, 2.0)]);
    hub.publish(2, [r(1, 10, 9.0)]);
    hub.publish(3, [r(1, 11, 3.0)]);
    let mut got = Vec::new();
    let mut last = 0;
    while got.len() < 3 {
        let (seq, flags, recs) = c.data().await;
        assert_eq!(flags, 0);
        assert!(seq > last);
        last = seq;
        got.extend(recs);
    }
    assert_eq!(got, vec![(1, 1, 10, 1.0), (1, 2, 10, 2.0), (3, 1, 11, 3.0)]);
    assert_eq!(last, START + 4, "seq is the position of the last record");
}

#[tokio::test(start_paused = true)]
async fn json_form_carries_the_same_readings_with_string_ids() {
    let hub = hub();
    let mut c = start(
        &hub,
        Format::Json,
        Grants::All,
        limits(),
        DriveOptions::default(),
    );
    c.subscribe(r#""devices":"*""#).await;
    hub.publish(42, [r(7, 123, 21.5)]);
    let msg = c.next().await;
    let Outbound::Data {
        bytes,
        format: Format::Json,
        position,
    } = msg
    else {
        panic!("{msg:?}")
    };
    let v: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(v["type"], "readings");
    assert_eq!(v["position"], position.to_string());
    assert_eq!(v["readings"][0]["device"], "42");
    assert_eq!(v["readings"][0]["channel"], 7);
    assert_eq!(v["readings"][0]["value"], 21.5);
}

#[tokio::test(start_paused = true)]
async fn subscriptions_outside_the_grant_are_refused_with_a_reason() {
    let hub = hub();
    let grants = Grants::parse(&["1", "2"]).expect("grants");
    let mut c = start(
        &hub,
        Format::Binary,
        grants,
        limits(),
        DriveOptions::default(),
    );
    for body in [r#""devices":[1,3]"#, r#""devices":"*""#, r#""tag":"x""#] {
        c.send(&format!(r#"{{"id":5,"op":"subscribe",{body}}}"#))
            .await;
        let reply = c.json().await;
        assert_eq!(reply["id"], 5);
        assert_eq!(reply["ok"], false);
        assert_eq!(reply["error"], "not_granted", "{reply}");
    }
    c.subscribe(r#""devices":2"#).await;
}

#[tokio::test(start_paused = true)]
async fn bad_control_messages_get_specific_errors_and_the_socket_stays_usable() {
    let hub = hub();
    let mut c = client(&hub);
    for (text, code) in [
        ("not json", "bad_json"),
        ("[]", "not_an_object"),
        (r#"{"id":1}"#, "missing_field"),
        (r#"{"id":1,"op":"fly"}"#, "unknown_op"),
        (
            r#"{"id":1,"op":"unsubscribe","sub":99}"#,
            "unknown_subscription",
        ),
    ] {
        c.send(text).await;
        let reply = c.json().await;
        assert_eq!(reply["error"], code, "{text}: {reply}");
    }
    c.inbound.send(Inbound::Binary).await.expect("alive");
    assert_eq!(c.json().await["error"], "binary_not_accepted");
    c.send(r#"{"id":"p","op":"ping"}"#).await;
    let pong = c.json().await;
    assert_eq!(
        (pong["id"].as_str(), pong["ok"].as_bool()),
        (Some("p"), Some(true))
    );
}

#[tokio::test(start_paused = true)]
async fn unsubscribe_stops_delivery() {
    let hub = hub();
    let mut c = client(&hub);
    let (reply, _) = c.subscribe(r#""devices":1"#).await;
    let sub = reply["sub"].as_u64().expect("sub id");
    c.subscribe(r#""devices":2"#).await;
    c.send(&format!(r#"{{"id":2,"op":"unsubscribe","sub":{sub}}}"#))
        .await;
    assert_eq!(c.json().await["ok"], true);
    hub.publish(1, [r(1, 1, 1.0)]);
    hub.publish(2, [r(1, 1, 2.0)]);
    let (_, _, recs) = c.data().await;
    assert_eq!(recs, vec![(2, 1, 1, 2.0)]);
}

#[tokio::test(start_paused = true)]
async fn resume_within_the_log_gives_exactly_the_missed_readings() {
    let hub = hub();
    for i in 0..10 {
        hub.publish(1 + i % 2, [r(1, i as i64, i as f64)]);
    }
    let mut c = client(&hub);
    c.send(r#"{"id":1,"op":"resume","position":"1004"}"#).await;
    let reply = c.json().await;
    assert_eq!(
        (reply["ok"].as_bool(), reply["gap"].as_bool()),
        (Some(true), Some(false)),
        "{reply}"
    );
    c.subscribe(r#""devices":[1]"#).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(c.data().await.2.into_iter().map(|x| x.3));
    }
    // Positions 1005..=1010 hold readings 4..=9; device 1 has the even ones.
    assert_eq!(got, vec![4.0, 6.0, 8.0]);
    hub.publish(1, [r(1, 99, 99.0)]);
    assert_eq!(
        c.data().await.2,
        vec![(1, 1, 99, 99.0)],
        "then live, no duplicate"
    );
}

#[tokio::test(start_paused = true)]
async fn resume_beyond_the_window_gets_a_gap_with_positions_and_times() {
    let config = HubConfig {
        resume_window: Duration::from_secs(2),
        ..HubConfig::default()
    };
    let hub = Hub::with_start(config, START);
    hub.publish(1, [r(1, 100, 1.0), r(1, 200, 2.0)]);
    tokio::time::advance(Duration::from_secs(5)).await;
    hub.publish(1, [r(1, 300, 3.0)]);
    let mut c = client(&hub);
    c.send(r#"{"id":1,"op":"resume","position":"1000"}"#).await;
    assert_eq!(c.json().await["gap"], true);
    let gap = c.json().await;
    assert_eq!(gap["type"], "gap");
    assert_eq!(gap["reason"], "resume_window");
    assert_eq!(
        (gap["from_position"].as_str(), gap["to_position"].as_str()),
        (Some("1001"), Some("1002"))
    );
    assert_eq!(
        (gap["from_ts_us"].as_i64(), gap["to_ts_us"].as_i64()),
        (Some(100), Some(200))
    );
    c.subscribe(r#""devices":"*""#).await;
    assert_eq!(
        c.data().await.2,
        vec![(1, 1, 300, 3.0)],
        "then what the log still holds"
    );
    // A position of an earlier run (below this run's start): the gap's start time is unknown.
    c.send(r#"{"id":2,"op":"resume","position":"17"}"#).await;
    c.json().await;
    let gap = c.json().await;
    assert_eq!(gap["reason"], "restart");
    assert_eq!(gap["from_ts_us"], Value::Null);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_coalesced_then_closed_after_the_deadline() {
    let hub = hub();
    let mut c = client(&hub);
    c.subscribe(r#""devices":[1]"#).await;
    // The client reads nothing while 40 readings on 2 channels arrive (bound: 8).
    for i in 0..40 {
        hub.publish(1, [r(1 + (i % 2) as u16, i, i as f64)]);
        tokio::task::yield_now().await;
    }
    // What was queued before it fell behind is delivered, then the coalesced remainder.
    let mut frames = Vec::new();
    let coalesced = loop {
        match c.next().await {
            Outbound::Json {
                kind: "coalesced",
                bytes,
                ..
            } => break serde_json::from_slice::<Value>(&bytes).expect("json"),
            Outbound::Data { bytes, .. } => frames.push(decode(&bytes)),
            other => panic!("{other:?}"),
        }
    };
    assert!(
        coalesced["dropped"].as_u64().expect("dropped") > 0,
        "{coalesced}"
    );
    assert_eq!(coalesced["kept"], 2);
    let (_, flags, recs) = c.data().await;
    assert_eq!(flags, FrameFlag::Coalesced as u16);
    assert_eq!(
        recs,
        vec![(1, 1, 38, 38.0), (1, 2, 39, 39.0)],
        "the newest value per channel"
    );
    let delivered = frames.iter().map(|f| f.2.len() as u64).sum::<u64>();
    assert_eq!(
        delivered + coalesced["dropped"].as_u64().unwrap_or(0) + 2,
        40,
        "every reading sent or counted"
    );
    // It stops reading again while data keeps coming: closed after the deadline.
    for i in 40..200 {
        hub.publish(1, [r(1, i, i as f64)]);
        tokio::task::yield_now().await;
    }
    tokio::time::advance(Duration::from_millis(1100)).await;
    assert_eq!(c.closed().await, close::SLOW_CONSUMER);
}

#[tokio::test(start_paused = true)]
async fn drop_oldest_sends_a_gap_and_the_newest_frame() {
    let hub = hub();
    let mut c = client(&hub);
    c.subscribe(r#""devices":[1],"policy":"drop_oldest""#).await;
    for i in 0..20 {
        hub.publish(1, [r(1, i, i as f64)]);
    }
    let gap = c.json().await;
    assert_eq!(gap["type"], "gap");
    assert_eq!(gap["reason"], "drop_oldest");
    assert_eq!(gap["dropped"], 16);
    assert_eq!(
        (gap["from_position"].as_str(), gap["to_position"].as_str()),
        (Some("1001"), Some("1016"))
    );
    let (seq, flags, recs) = c.data().await;
    assert_eq!((seq, flags), (START + 20, 0));
    assert_eq!(
        recs.iter().map(|x| x.3).collect::<Vec<_>>(),
        vec![16.0, 17.0, 18.0, 19.0]
    );
}

#[tokio::test(start_paused = true)]
async fn disconnect_policy_closes_with_backlog_overflow() {
    let hub = hub();
    let mut c = client(&hub);
    c.subscribe(r#""devices":"*","policy":"disconnect""#).await;
    for i in 0..20 {
        hub.publish(1, [r(1, i, i as f64)]);
    }
    assert_eq!(c.closed().await, close::BACKLOG_OVERFLOW);
}

#[tokio::test(start_paused = true)]
async fn unanswered_pings_close_with_4001_and_pongs_keep_it_open() {
    let hub = hub();
    let mut c = client(&hub);
    c.send(r#"{"id":0,"op":"ping"}"#).await; // the loop runs (its ping timer started)
    assert_eq!(c.json().await["ok"], true);
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(c.next().await, Outbound::Ping);
        c.inbound.send(Inbound::Alive).await.expect("alive");
    }
    for _ in 0..2 {
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(c.next().await, Outbound::Ping);
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(c.closed().await, close::PING_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn token_expiry_closes_with_4003() {
    let hub = hub();
    let opts = DriveOptions {
        expires_at: Some(tokio::time::Instant::now() + Duration::from_secs(5)),
        ..DriveOptions::default()
    };
    let c = start(&hub, Format::Binary, Grants::All, limits(), opts);
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(c.closed().await, close::TOKEN_EXPIRED);
}

#[tokio::test(start_paused = true)]
async fn presence_events_and_the_snapshot_on_subscribe() {
    let hub = hub();
    hub.set_online(1, true, 50);
    hub.publish(1, [r(1, 10, 1.5), r(2, 10, 2.5)]);
    let mut c = client(&hub);
    let (_, snap) = c.subscribe(r#""devices":[1]"#).await;
    let dev = &snap["devices"][0];
    assert_eq!(dev["device"], "1");
    assert_eq!(dev["online"], true);
    assert_eq!(dev["channels"].as_array().map(Vec::len), Some(2));
    assert_eq!(dev["channels"][0]["value"], 1.5);
    hub.set_online(2, true, 60); // not subscribed
    hub.set_online(1, false, 70);
    let ev = c.json().await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["device"].as_str(),
            ev["at_us"].as_i64()
        ),
        (Some("offline"), Some("1"), Some(70))
    );
}

#[tokio::test(start_paused = true)]
async fn identical_subscriptions_share_the_encoded_frame() {
    let hub = hub();
    let mut a = client(&hub);
    let mut b = client(&hub);
    a.subscribe(r#""devices":"*""#).await;
    b.subscribe(r#""devices":"*""#).await;
    hub.publish(1, [r(1, 1, 1.0), r(1, 2, 2.0)]);
    let (Outbound::Data { bytes: x, .. }, Outbound::Data { bytes: y, .. }) =
        (a.next().await, b.next().await)
    else {
        panic!("data expected")
    };
    assert_eq!(x, y);
    assert_eq!(x.as_ptr(), y.as_ptr(), "one encoding, shared");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_reads_replies_is_closed_not_buffered_forever() {
    let hub = hub();
    let c = client(&hub);
    let mut sent = 0;
    for i in 0..(dashboard::driver::MAX_STAGED * 4) {
        let ping = Inbound::Text(format!(r#"{{"id":{i},"op":"ping"}}"#));
        if c.inbound.send(ping).await.is_err() {
            break; // the loop ended
        }
        sent += 1;
    }
    // It stopped reading requests once answers piled up, and closed at the deadline.
    assert!(
        sent < dashboard::driver::MAX_STAGED * 2,
        "{sent} requests read"
    );
    assert_eq!(c.closed().await, close::SLOW_CONSUMER);
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_requests_read_at_once_is_answered_in_full() {
    use dashboard::Session;
    use dashboard::driver::{MAX_STAGED, QueueOutlet, drive};
    use futures_util::StreamExt;

    let hub = hub();
    let session = Session::new(hub.clone(), Format::Binary, Grants::All, limits());
    // Every request is there at once, as when a client pipelines many into one TCP read.
    let n = MAX_STAGED * 3;
    let burst: Vec<Inbound> = (0..n)
        .map(|i| Inbound::Text(format!(r#"{{"id":{i},"op":"ping"}}"#)))
        .collect();
    let inbound = futures_util::stream::iter(burst).chain(futures_util::stream::pending());
    let (tx, mut rx) = tokio::sync::mpsc::channel(OUT_QUEUE);
    let task = tokio::spawn(async move {
        drive(
            session,
            inbound,
            &mut QueueOutlet::new(tx),
            DriveOptions::default(),
        )
        .await
    });
    let mut ids = Vec::new();
    while ids.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(1), rx.recv())
            .await
            .expect("a reply within 1s")
            .expect("the loop is still running");
        if let Outbound::Json { bytes, .. } = msg {
            let v: Value = serde_json::from_slice(&bytes).expect("json");
            ids.push(v["id"].as_u64().expect("reply id"));
        }
    }
    assert_eq!(
        ids,
        (0..n as u64).collect::<Vec<_>>(),
        "every request answered, in order"
    );
    assert!(!task.is_finished(), "the client is still connected");
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_with_1001() {
    let hub = hub();
    let opts = DriveOptions::default();
    let token = opts.shutdown.clone();
    let c = start(&hub, Format::Binary, Grants::All, limits(), opts);
    token.cancel();
    assert_eq!(c.closed().await, close::GOING_AWAY);
}

#[tokio::test(start_paused = true)]
async fn resubscribing_after_the_resumed_stream_moved_on_gets_a_late_subscription_gap() {
    let hub = hub();
    // Positions 1001..=1010 hold readings 0..=9 (reading time = value); device 1 has the even
    // ones, device 2 the odd ones.
    for i in 0..10 {
        hub.publish(1 + i % 2, [r(1, i as i64, i as f64)]);
    }
    let mut c = client(&hub);
    c.send(r#"{"id":1,"op":"resume","position":"1004"}"#).await;
    assert_eq!(c.json().await["gap"], false);
    // Sent right after the resume: starts at the resume position, no gap.
    c.subscribe(r#""devices":[1],"after":"1004""#).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(c.data().await.2.into_iter().map(|x| x.3));
    }
    assert_eq!(got, vec![4.0, 6.0, 8.0]);
    // The session has now streamed to the head; a second subscription from the same resume
    // burst cannot start at 1004 any more: it is told exactly what it misses.
    let (reply, _) = c.subscribe(r#""devices":[2],"after":"1004""#).await;
    let gap = c.json().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["reason"], "late_subscription");
    assert_eq!(gap["subs"], serde_json::json!([reply["sub"]]));
    assert_eq!(
        (gap["from_position"].as_str(), gap["to_position"].as_str()),
        (Some("1005"), Some("1010"))
    );
    assert_eq!(
        (gap["from_ts_us"].as_i64(), gap["to_ts_us"].as_i64()),
        (Some(4), Some(9)),
        "the readings of positions 1005..=1010"
    );
    // Then both subscriptions are live, nothing twice.
    hub.publish(2, [r(1, 50, 50.0)]);
    hub.publish(1, [r(1, 51, 51.0)]);
    let mut live = Vec::new();
    while live.len() < 2 {
        live.extend(c.data().await.2.into_iter().map(|x| (x.0, x.3)));
    }
    assert_eq!(live, vec![(2, 50.0), (1, 51.0)]);
}
