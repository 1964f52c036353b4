//! Storage invariants over real sockets (ARCHITECTURE.md invariants 1-3): an ack means the rows
//! are committed, every frame is stored exactly once whatever is re-sent, the dedup state outlives
//! the process, a full writer queue pushes back without dropping anything accepted, and a graceful
//! shutdown leaves nothing acknowledged unstored. The process-boundary crash test is in
//! `crash.rs`.

mod common;
mod firmware;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use firmware::{AckHook, Firmware, Row, assert_exactly_once, readable_upto, resent, rows_of};

/// Reason code of `sequence_too_old` on the wire.
const SEQUENCE_TOO_OLD: u16 = codecs::Reason::SequenceTooOld as u16;

/// How long a test waits for a reply or for progress before it fails.
const WAIT: Duration = Duration::from_secs(20);

/// Lifts the per-device rate limits (these tests send as fast as the socket allows) and keeps
/// server pings out of the way of `Device::next`'s per-message timeout.
fn unthrottled(c: &mut ingest::Config) {
    c.device_frames_per_sec = 10_000_000;
    c.device_readings_per_sec = 1_000_000_000;
    c.ping_interval = "1h".parse().expect("duration");
}

/// Sends frames `seqs` of `dev`, `n` readings each; returns the bytes sent by sequence.
async fn send_all(
    dev: &mut Device,
    seqs: impl IntoIterator<Item = u64>,
    n: usize,
) -> Vec<(u64, Vec<u8>)> {
    let mut sent = Vec::new();
    for seq in seqs {
        let f = frame(dev.id, seq, n);
        dev.send_raw(f.clone()).await;
        sent.push((seq, f));
    }
    sent
}

/// The readings of `frames`, each once.
fn rows(frames: &[(u64, Vec<u8>)]) -> Vec<Row> {
    frames.iter().flat_map(|(s, f)| rows_of(*s, f)).collect()
}

/// The next reply that is not an ack (acks still arriving for earlier frames are skipped).
async fn next_non_ack(dev: &mut Device) -> Option<Reply> {
    loop {
        match dev.next(WAIT).await {
            Some(Reply::Ack(_)) => continue,
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ack_arrives_only_after_rows_are_in_the_store() {
    const DEVICES: u64 = 6;
    const FRAMES: u64 = 400;
    const READINGS: usize = 5;
    let mut server = TestServer::start(unthrottled).await;
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for id in 1..=DEVICES {
        let device = server.device(id).await;
        let db = server.db();
        let violations = violations.clone();
        // Runs in the socket reader, as each ack arrives: rows of every frame <= ack must be
        // readable already, each exactly once.
        let hook: AckHook = Box::new(move |ack| {
            let found = tokio::task::block_in_place(|| readable_upto(&db, id, ack));
            let want = (ack * READINGS as u64, ack);
            if found != want {
                violations.lock().expect("violations").push(format!(
                    "device {id}: ack {ack} received while the store held {} readings of {} frames <= {ack} (expected {} of {})",
                    found.0, found.1, want.0, want.1
                ));
            }
        });
        tasks.push(tokio::spawn(async move {
            let mut fw = Firmware::new(id, READINGS);
            // A window smaller than the run keeps acks and sends interleaved.
            let session = fw.stream(device, FRAMES, 64, Some(hook)).await;
            (fw, session)
        }));
    }
    for task in tasks {
        let (fw, session) = task.await.expect("device task");
        assert!(
            session.complete,
            "device {}: only acked {} of {FRAMES}",
            fw.id, fw.acked
        );
        assert!(session.errors.is_empty(), "errors: {:?}", session.errors);
        assert!(
            fw.acks.len() > 1 && fw.acks.contains(&FRAMES),
            "device {}: acks checked {:?}",
            fw.id,
            fw.acks
        );
        assert_exactly_once(
            fw.id,
            &server.stored(fw.id),
            &fw.expected_rows(),
            "after the run",
        );
    }
    let violations = std::mem::take(&mut *violations.lock().expect("violations"));
    assert!(
        violations.is_empty(),
        "acks before commit: {:?}",
        &violations[..violations.len().min(10)]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frames_resent_after_reconnect_are_stored_exactly_once() {
    const N: u64 = 120;
    const READINGS: usize = 3;
    let mut server = TestServer::start(unthrottled).await;

    // Device 1 disconnects after everything was acked; device 2 with the second half unacked.
    for (id, wait_for_all) in [(1u64, true), (2u64, false)] {
        let mut dev = server.device(id).await;
        let mut sent = send_all(&mut dev, 1..=N / 2, READINGS).await;
        assert_eq!(dev.wait_ack(N / 2).await, N / 2);
        sent.extend(send_all(&mut dev, N / 2 + 1..=N, READINGS).await);
        if wait_for_all {
            assert_eq!(dev.wait_ack(N).await, N);
        }
        drop(dev); // no close frame: the connection just goes away

        let mut dev = server.device(id).await;
        match dev.next(WAIT).await {
            Some(Reply::Ack(a)) => assert!(
                (N / 2..=N).contains(&a),
                "device {id}: ack on reconnect {a}, expected at least {}",
                N / 2
            ),
            other => panic!("device {id}: expected an ack on reconnect, got {other:?}"),
        }
        for (_, f) in &sent {
            dev.send_raw(resent(f)).await;
        }
        assert_eq!(
            dev.wait_ack(N).await,
            N,
            "device {id}: acks cover every frame"
        );
        // A new frame after the resends: its ack proves every resend was handled.
        sent.extend(send_all(&mut dev, [N + 1], READINGS).await);
        assert_eq!(dev.wait_ack(N + 1).await, N + 1);
        assert_exactly_once(id, &server.stored(id), &rows(&sent), "after resending all");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicates_on_one_connection_are_acked_again_and_stored_once() {
    const READINGS: usize = 4;
    let mut server = TestServer::start(unthrottled).await;
    let mut dev = server.device(3).await;
    let mut sent = send_all(&mut dev, 1..=10, READINGS).await;
    assert_eq!(dev.wait_ack(10).await, 10);

    // Duplicates of committed frames are acked again at once.
    for seq in [4u64, 10, 1] {
        dev.send(seq, READINGS).await;
        assert_eq!(
            dev.next(WAIT).await,
            Some(Reply::Ack(10)),
            "duplicate of committed frame {seq}"
        );
    }
    // A duplicate right behind its original (probably not committed yet) is acked by the commit.
    sent.extend(send_all(&mut dev, [11], READINGS).await);
    dev.send(11, READINGS).await;
    assert_eq!(dev.wait_ack(11).await, 11);
    sent.extend(send_all(&mut dev, [12], READINGS).await);
    assert_eq!(dev.wait_ack(12).await, 12);

    assert_exactly_once(3, &server.stored(3), &rows(&sent), "after duplicates");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_order_frames_within_the_window_are_stored_once_each() {
    const N: u64 = 300;
    const READINGS: usize = 2;
    let mut server = TestServer::start(unthrottled).await;
    let mut dev = server.device(4).await;
    // A deterministic shuffle of 1..=N (all within the default 1024 window), with every
    // seventh frame delivered a second time further on.
    let mut order: Vec<u64> = (1..=N).collect();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let again: Vec<u64> = order.iter().copied().step_by(7).collect();
    for (i, seq) in again.into_iter().enumerate() {
        let at = (i * 7 + 20).min(order.len());
        order.insert(at, seq);
    }
    let mut sent = Vec::new();
    for seq in order {
        let f = frame(4, seq, READINGS);
        dev.send_raw(f.clone()).await;
        sent.push((seq, f));
    }
    // Stored readings must equal the first copy of each sequence.
    sent.sort_by_key(|(s, _)| *s);
    sent.dedup_by_key(|(s, _)| *s);
    assert_eq!(dev.wait_ack(N).await, N);
    // Acks only move forward, so a frame behind the others gives no ack of its own; a new frame
    // after them does, once everything before it is committed.
    sent.extend(send_all(&mut dev, [N + 1], READINGS).await);
    assert_eq!(dev.wait_ack(N + 1).await, N + 1);
    assert_exactly_once(
        4,
        &server.stored(4),
        &rows(&sent),
        "after out-of-order delivery",
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frame_older_than_the_dedup_window_is_refused_and_not_stored() {
    const READINGS: usize = 2;
    let mut server = TestServer::start(|c| {
        unthrottled(c);
        c.dedup_window = 64;
    })
    .await;
    let mut dev = server.device(5).await;
    let mut sent = send_all(&mut dev, 101..=200, READINGS).await;
    assert_eq!(dev.wait_ack(200).await, 200);
    let lowest = 200 - 64 + 1;

    // Never sent before, but older than the window: the server cannot tell, so it refuses.
    dev.send(10, READINGS).await;
    assert_eq!(
        next_non_ack(&mut dev).await,
        Some(Reply::Error {
            seq: 10,
            reason: SEQUENCE_TOO_OLD,
            expected: lowest,
            found: 10
        })
    );
    // Stored earlier and now out of the window: refused again, still stored once.
    dev.send_raw(resent(&frame(5, 101, READINGS))).await;
    assert_eq!(
        next_non_ack(&mut dev).await,
        Some(Reply::Error {
            seq: 101,
            reason: SEQUENCE_TOO_OLD,
            expected: lowest,
            found: 101
        })
    );
    // The connection stays open and keeps working.
    sent.extend(send_all(&mut dev, [201], READINGS).await);
    assert_eq!(dev.wait_ack(201).await, 201);
    assert_exactly_once(5, &server.stored(5), &rows(&sent), "after too-old frames");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedup_state_survives_a_restart() {
    const N: u64 = 50;
    const READINGS: usize = 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = TestServer::start_in(dir.path().to_path_buf(), unthrottled).await;
    let mut dev = first.device(6).await;
    let mut sent = send_all(&mut dev, 1..=N, READINGS).await;
    assert_eq!(dev.wait_ack(N).await, N);
    first.shutdown().await;
    drop(dev);

    let mut second = TestServer::start_in(dir.path().to_path_buf(), unthrottled).await;
    let mut dev = second.device(6).await;
    assert_eq!(
        dev.next(WAIT).await,
        Some(Reply::Ack(N)),
        "on connect, the device hears what is already stored"
    );
    for (_, f) in &sent {
        dev.send_raw(resent(f)).await;
    }
    assert_eq!(dev.wait_ack(N).await, N, "resent frames are acked again");
    sent.extend(send_all(&mut dev, [N + 1], READINGS).await);
    assert_eq!(dev.wait_ack(N + 1).await, N + 1);
    assert_exactly_once(6, &second.stored(6), &rows(&sent), "after the restart");
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_writer_queue_pushes_back_without_losing_accepted_frames() {
    const DEVICES: u64 = 16;
    const FRAMES: u64 = 150;
    let mut server = TestServer::start(|c| {
        unthrottled(c);
        c.queue_max_frames = 4;
        c.max_frame_bytes = 4096;
        c.queue_max_bytes = 4096; // two of the largest frames below
    })
    .await;
    let mut tasks = Vec::new();
    for id in 1..=DEVICES {
        let device = server.device(100 + id).await;
        // Frame sizes from 56 bytes to 1.9 KB, so both queue bounds bind.
        let readings = 1 + (id as usize * 37) % 120;
        tasks.push(tokio::spawn(async move {
            let mut fw = Firmware::new(100 + id, readings);
            // No ack-based flow control: only TCP and the queue slow the device down.
            let session = fw.stream(device, FRAMES, FRAMES as usize, None).await;
            (fw, session)
        }));
    }
    for task in tasks {
        let (fw, session) = task.await.expect("device task");
        assert!(
            session.complete,
            "device {}: acked {} of {FRAMES} (close {:?}, errors {:?})",
            fw.id, fw.acked, session.close, session.errors
        );
        assert_exactly_once(
            fw.id,
            &server.stored(fw.id),
            &fw.expected_rows(),
            "under backpressure",
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_leaves_nothing_acked_unstored() {
    const DEVICES: u64 = 5;
    const READINGS: usize = 6;
    let mut server = TestServer::start(unthrottled).await;
    let mut tasks = Vec::new();
    let mut progress = Vec::new();
    for id in 1..=DEVICES {
        let device = server.device(200 + id).await;
        let mut fw = Firmware::new(200 + id, READINGS);
        progress.push(fw.progress());
        tasks.push(tokio::spawn(async move {
            // More than can be sent before the shutdown: the stream is cut mid-way.
            let session = fw.stream(device, 1_000_000, 32, None).await;
            (fw, session)
        }));
    }
    // Mid-stream: every device has had some frames acked.
    let streaming = async {
        while progress.iter().any(|p| p.load(Ordering::Acquire) < 40) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(WAIT, streaming)
        .await
        .expect("devices streaming");
    server.shutdown().await;

    for task in tasks {
        let (fw, session) = tokio::time::timeout(WAIT, task)
            .await
            .expect("device session ends after shutdown")
            .expect("device task");
        assert_eq!(
            session.close,
            Some((1001, "going away".to_string())),
            "device {}: close frame",
            fw.id
        );
        assert!(fw.acked >= 40 && fw.acked <= fw.last_sent());
        let stored = server.stored(fw.id);
        // Every acked frame is stored exactly once...
        let acked: Vec<Row> = stored.iter().copied().filter(|r| r.0 <= fw.acked).collect();
        assert_exactly_once(
            fw.id,
            &acked,
            &fw.expected_rows_where(|s| s <= fw.acked),
            "acked frames after shutdown",
        );
        // ...and the final ack covers everything stored: nothing is stored unacknowledged.
        assert_exactly_once(
            fw.id,
            &stored,
            &fw.expected_rows_where(|s| s <= fw.acked),
            "all stored frames after shutdown (final ack)",
        );
    }
}
