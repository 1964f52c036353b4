//! Issue 6, fan-out under a stalled client: one dashboard that never reads stays within its
//! memory bound and is disconnected (4008 "slow consumer"), while 50 other dashboards on the
//! same device keep receiving every reading, in order, never coalesced.

mod common;
mod live_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use live_support::*;
use serde_json::json;

/// Dashboards that keep reading.
const FAST_CLIENTS: usize = 50;
/// Readings per device frame.
const PER_FRAME: usize = 50;
/// Pause between device frames (up to ~200 frames, 10,000 readings per second).
const FRAME_PAUSE: Duration = Duration::from_millis(5);
/// Frames the device sends before it waits for their ack.
const WINDOW: u64 = 16;
/// Most frames the device sends (the test stops it earlier, once the stalled client is closed).
const MAX_FRAMES: u64 = 3_000;
/// The server's kernel send buffer per connection (`--tcp-send-buffer`; Linux doubles it).
const SEND_BUFFER: usize = 16 * 1024;
/// Most readings per live frame.
const MAX_BATCH: usize = 256;
/// Shared log bound.
const LOG_MAX_BYTES: usize = 4 * 1024 * 1024;
/// What may reach a client that stopped reading, whatever the server holds for it: both
/// kernels' buffers (the client's receive buffer is 4 KiB, the server's send buffer
/// `SEND_BUFFER`, each doubled by Linux) and one frame being written, with 2x slack.
const STALLED_BYTES_BOUND: usize = 2 * (2 * 4096 + 2 * SEND_BUFFER + 32 + MAX_BATCH * 28);

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_bounded_and_closed_while_fifty_others_get_everything_in_order()
 {
    let server = TestServer::start(|c| {
        c.live_max_backlog_readings = 4096;
        c.live_max_batch_readings = MAX_BATCH;
        c.live_slow_deadline = "2s".parse().expect("duration");
        c.live_log_max_bytes = LOG_MAX_BYTES;
        c.device_frames_per_sec = 100_000;
        c.tcp_send_buffer = SEND_BUFFER;
    })
    .await;
    let token = operator(&server, &["*"]);
    let slow_metric = "telemux_live_slow_consumer_disconnects_total";
    let before = metric(&metrics_text(server.addr).await, slow_metric, &[]);

    let mut fast = Vec::new();
    for _ in 0..FAST_CLIENTS {
        let mut c = connect(&server, &token, None).await;
        c.subscribe(json!({"devices": [1]})).await;
        fast.push(c);
    }
    // The stalled client subscribes like the others, then never reads again.
    let mut stalled = connect_small(&server, &token).await;
    stalled.subscribe(json!({"devices": [1]})).await;
    let rss_before = rss_kib();

    // The device sends until told to stop, WINDOW frames ahead of its acks.
    let stop = Arc::new(AtomicBool::new(false));
    let sent_frames = Arc::new(AtomicU64::new(0));
    let mut dev = server.device(1).await;
    let device = {
        let stop = stop.clone();
        let sent_frames = sent_frames.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for seq in 1..=MAX_FRAMES {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                dev.send(seq, PER_FRAME).await;
                sent_frames.store(seq, Ordering::Relaxed);
                if seq % WINDOW == 0 {
                    dev.wait_ack(seq).await;
                }
                last = seq;
                tokio::time::sleep(FRAME_PAUSE).await;
            }
            if last % WINDOW != 0 {
                dev.wait_ack(last).await;
            }
            last
        })
    };

    // Each fast client reads everything as it comes, checking order as it goes.
    let (target_tx, target_rx) = tokio::sync::watch::channel(usize::MAX);
    let mut readers = Vec::new();
    for (i, mut client) in fast.into_iter().enumerate() {
        let target_rx = target_rx.clone();
        readers.push(tokio::spawn(async move {
            client.read_all(target_rx, &format!("client {i}")).await
        }));
    }

    // The stalled client is closed as a slow consumer while the device keeps sending.
    let mut peak_rss = rss_before;
    let mut closed_at_frame = None;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak_rss = peak_rss.max(rss_kib());
        if metric(&metrics_text(server.addr).await, slow_metric, &[]) > before {
            closed_at_frame = Some(sent_frames.load(Ordering::Relaxed));
            break;
        }
    }
    let closed_at_frame =
        closed_at_frame.expect("the stalled client was closed as a slow consumer");
    // Now it reads what reached it (bounded by the kernel buffers), then the close frame (the
    // server waits up to 2 s for the close frame to get through).
    let drain = tokio::spawn(async move {
        let mut bytes = 0usize;
        loop {
            match stalled.next(Duration::from_secs(5)).await {
                Got::Data(_, _, recs) => bytes += 32 + recs.len() * 28,
                Got::Json(v) => bytes += v.to_string().len(),
                other => return (bytes, other),
            }
        }
    });
    // Keep the device going for two more seconds, and until it sent 5x what may have reached
    // the stalled client: the others must not notice any of this.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..200 {
        if sent_frames.load(Ordering::Relaxed) as usize * PER_FRAME * 28 > 5 * STALLED_BYTES_BOUND {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let last = device.await.expect("device task");
    peak_rss = peak_rss.max(rss_kib());
    assert!(
        last > closed_at_frame + 20,
        "the device kept sending after the close ({closed_at_frame} -> {last} frames)"
    );

    target_tx
        .send(last as usize * PER_FRAME)
        .expect("readers alive");
    let want: Vec<f64> = (1..=last)
        .flat_map(|s| frame_values(s, PER_FRAME))
        .collect();
    for (i, r) in readers.into_iter().enumerate() {
        let values = tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .expect("fast reader done")
            .expect("fast reader");
        assert_eq!(values.len(), want.len(), "client {i}: every reading");
        assert!(values == want, "client {i}: every reading, in order");
    }

    let (bytes, end) = drain.await.expect("stalled drain");
    assert_eq!(end, Got::Close(4008, "slow consumer".into()));
    let sent_bytes = last as usize * PER_FRAME * 28;
    eprintln!(
        "stalled client got {bytes} bytes (bound {STALLED_BYTES_BOUND}); device sent {sent_bytes} bytes in {last} frames, closed at frame {closed_at_frame}; rss {rss_before} -> peak {peak_rss} KiB"
    );
    assert!(
        bytes <= STALLED_BYTES_BOUND,
        "the stalled client got at most its buffers' worth: {bytes} bytes (bound {STALLED_BYTES_BOUND}) of {sent_bytes}"
    );
    assert!(
        sent_bytes > 5 * STALLED_BYTES_BOUND,
        "the device sent well past that bound ({sent_bytes} bytes)"
    );
    // The shared log stays within its bound, and the process did not grow with the stall.
    let text = metrics_text(server.addr).await;
    let log_bytes = metric(&text, "telemux_live_log_bytes", &[]);
    assert!(log_bytes <= LOG_MAX_BYTES as f64, "log {log_bytes} bytes");
    let growth_mib = peak_rss.saturating_sub(rss_before) / 1024;
    assert!(
        growth_mib < 64,
        "memory stayed flat while the client was stalled: +{growth_mib} MiB"
    );
}
