//! What a dashboard that never reads costs the server's kernel: with the default unsent limit
//! (`--tcp-notsent-lowat`) it is seen as behind after kilobytes, not after an autotuned send
//! buffer of megabytes. A test binary of its own: it reads the process-wide slow-consumer
//! counter, which other tests' closes would move.

mod common;
mod live_support;

use common::*;
use live_support::*;
use serde_json::json;

/// Readings per device frame.
const PER_FRAME: usize = 20;
/// Most frames the device sends.
const MAX_FRAMES: u64 = 40_000;
/// Frames the device sends before it waits for their ack.
const WINDOW: u64 = 16;

/// Sends frames of `PER_FRAME` readings from device `id` until the server closed a dashboard
/// as a slow consumer (or `MAX_FRAMES`); returns the readings sent by then.
async fn send_until_slow_close(server: &TestServer, id: u64) -> u64 {
    let closes = "telemux_live_slow_consumer_disconnects_total";
    let before = metric(&metrics_text(server.addr).await, closes, &[]);
    let mut dev = server.device(id).await;
    for seq in 1..=MAX_FRAMES {
        dev.send(seq, PER_FRAME).await;
        if seq % WINDOW == 0 {
            dev.wait_ack(seq).await;
            if metric(&metrics_text(server.addr).await, closes, &[]) > before {
                return seq * PER_FRAME as u64;
            }
        }
    }
    panic!("no client was closed as a slow consumer after {MAX_FRAMES} frames");
}

/// How the stalled dashboard connects.
#[derive(Clone, Copy, Debug)]
enum Transport {
    WebSocket,
    Sse,
}

/// Readings device 3 sends before a dashboard that never reads is closed as a slow consumer
/// (`--live-slow-deadline` 500ms after the server could not write to it), with
/// `--tcp-notsent-lowat` at `lowat` and otherwise the default settings (no `--tcp-send-buffer`:
/// the kernel autotunes the send buffer, up to 4 MiB).
async fn readings_until_a_stalled_client_is_closed(transport: Transport, lowat: u32) -> u64 {
    let server = TestServer::start(|c| {
        c.device_frames_per_sec = 100_000;
        c.live_slow_deadline = "500ms".parse().expect("duration");
        c.tcp_notsent_lowat = lowat;
        assert_eq!(c.tcp_send_buffer, 0, "kernel autotuning");
    })
    .await;
    let token = operator(&server, &["*"]);
    match transport {
        Transport::WebSocket => {
            let mut stalled = connect(&server, &token, None).await;
            stalled.subscribe(json!({"devices": [3]})).await;
            send_until_slow_close(&server, 3).await
        }
        Transport::Sse => {
            let path = format!("/v1/live/sse?devices=3&token={token}");
            let stalled = Sse::open(server.addr, &path, &[]).await;
            assert_eq!(stalled.status, 200, "{}", stalled.head);
            send_until_slow_close(&server, 3).await
        }
    }
}

/// A client that never reads is seen as behind once about `--tcp-notsent-lowat` (32 KiB) waits
/// unsent, not once an autotuned send buffer is full: its policy and deadline apply while what
/// it missed is recent, and it holds kilobytes of the server's kernel memory, not megabytes.
/// The same for a WebSocket and an SSE client (each route sets the limit on its socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_behind_after_kilobytes_not_megabytes() {
    for transport in [Transport::WebSocket, Transport::Sse] {
        let limited = readings_until_a_stalled_client_is_closed(transport, 32 * 1024).await;
        let unlimited = readings_until_a_stalled_client_is_closed(transport, 0).await;
        eprintln!(
            "{transport:?}: closed after {limited} readings with the limit, {unlimited} without"
        );
        // Measured here: WebSocket ~18,000-22,000 against ~153,000 (the 4 MiB buffer holds
        // ~135,000 binary readings); SSE ~18,000 against ~64,000 (JSON: ~4x the bytes a reading).
        let factor = match transport {
            Transport::WebSocket => 4,
            Transport::Sse => 2,
        };
        assert!(
            limited * factor < unlimited,
            "{transport:?}: {limited} readings sent before the close with the limit, {unlimited} without"
        );
    }
}
