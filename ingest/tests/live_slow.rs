//! A dashboard that stops reading is coalesced, then closed with 4008 "slow consumer" after the
//! deadline, while a fast dashboard on the same server keeps receiving every reading in order.

mod common;
mod live_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use live_support::*;
use serde_json::json;

/// Readings per device frame.
const PER_FRAME: usize = 20;
/// Most frames the device sends (the test stops it earlier).
const MAX_FRAMES: u64 = 40_000;
/// Frames the device sends before it waits for their ack.
const WINDOW: u64 = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_coalesced_then_closed_while_a_fast_client_loses_nothing() {
    let server = TestServer::start(|c| {
        c.live_max_backlog_readings = 4096;
        c.live_max_batch_readings = 256;
        c.live_slow_deadline = "3s".parse().expect("duration");
        c.device_frames_per_sec = 100_000;
        c.tcp_send_buffer = 16 * 1024;
    })
    .await;
    let token = operator(&server, &["*"]);
    let slow_metric = "telemux_live_slow_consumer_disconnects_total";
    let before = metric(&metrics_text(server.addr).await, slow_metric, &[]);

    let mut fast = connect(&server, &token, None).await;
    fast.subscribe(json!({"devices": [1]})).await;
    let mut slow = connect_small(&server, &token).await;
    slow.subscribe(json!({"devices": [1]})).await;

    // The device sends until told to stop, WINDOW frames ahead of its acks.
    let stop = Arc::new(AtomicBool::new(false));
    let mut dev = server.device(1).await;
    let device = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for seq in 1..=MAX_FRAMES {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                dev.send(seq, PER_FRAME).await;
                if seq % WINDOW == 0 {
                    dev.wait_ack(seq).await;
                }
                last = seq;
            }
            if last % WINDOW != 0 {
                dev.wait_ack(last).await;
            }
            last
        })
    };
    // The fast client reads everything as it comes.
    let (target_tx, target_rx) = tokio::sync::watch::channel(usize::MAX);
    let reader = tokio::spawn(async move { fast.read_all(target_rx, "the fast client").await });

    // The slow client alternates: stops reading, then reads until it was coalesced.
    let mut coalesced = None;
    let mut flagged_frame = false;
    for round in 0..20 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut frames = 0;
        let until = tokio::time::Instant::now() + Duration::from_millis(300);
        while tokio::time::Instant::now() < until {
            match slow.next(Duration::from_millis(50)).await {
                Got::Json(v) if v["type"] == "coalesced" => coalesced = Some(v),
                Got::Data(_, flags, _) if flags == codecs::FrameFlag::Coalesced as u16 => {
                    flagged_frame = true
                }
                Got::Data(..) => frames += 1,
                Got::Json(_) | Got::End => {}
                other => panic!("slow client closed while it still read: {other:?}"),
            }
        }
        let _ = (round, frames);
        if coalesced.is_some() && flagged_frame {
            break;
        }
    }
    let coalesced = coalesced.expect("the slow client was coalesced");
    assert!(
        flagged_frame,
        "coalesced readings come in frames with the COALESCED flag"
    );
    assert!(
        coalesced["dropped"].as_u64().is_some_and(|n| n > 0),
        "{coalesced}"
    );

    // Now it stops reading for good: closed after the deadline while data keeps coming.
    let mut closed = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if metric(&metrics_text(server.addr).await, slow_metric, &[]) > before {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the slow client was disconnected as a slow consumer"
    );
    let mut end = Got::End;
    for _ in 0..100_000 {
        match slow.next(Duration::from_secs(5)).await {
            Got::Data(..) | Got::Json(_) => continue,
            other => {
                end = other;
                break;
            }
        }
    }
    assert_eq!(end, Got::Close(4008, "slow consumer".into()));

    stop.store(true, Ordering::Relaxed);
    let last = device.await.expect("device task");
    target_tx
        .send(last as usize * PER_FRAME)
        .expect("reader alive");
    let values = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("fast reader done")
        .expect("fast reader");
    let want: Vec<f64> = (1..=last)
        .flat_map(|s| frame_values(s, PER_FRAME))
        .collect();
    assert_eq!(values.len(), want.len());
    assert!(values == want, "the fast client got every reading in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_while_behind_still_gets_the_close_reply() {
    let server = TestServer::start(|c| {
        c.live_slow_deadline = "60s".parse().expect("duration");
        c.device_frames_per_sec = 100_000;
        c.tcp_send_buffer = 16 * 1024;
    })
    .await;
    let token = operator(&server, &["*"]);
    let mut slow = connect_small(&server, &token).await;
    slow.subscribe(json!({"devices": [1]})).await;

    // Far more than the two socket buffers hold: the server is left with data it cannot write.
    let mut dev = server.device(1).await;
    for seq in 1..=400 {
        dev.send(seq, PER_FRAME).await;
        if seq % WINDOW == 0 {
            dev.wait_ack(seq).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The client closes without having read, then reads what was on its way: the data, then
    // the server's answer to its close (not a dropped connection).
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    slow.ws
        .send(tokio_tungstenite::tungstenite::Message::Close(Some(
            CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            },
        )))
        .await
        .expect("close sent");
    let mut data = 0;
    let end = loop {
        match slow.next(Duration::from_secs(5)).await {
            Got::Data(..) => data += 1,
            Got::Json(_) => {}
            other => break other,
        }
    };
    assert!(data > 0, "data was waiting when the client closed");
    assert_eq!(end, Got::Close(1000, "bye".into()));
}
