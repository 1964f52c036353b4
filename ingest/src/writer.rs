//! The batching writer: accepted frames queue here (bounded in frames and bytes), are committed
//! one transaction per batch together with the devices' dedup windows, and only then acked.
//!
//! Backpressure: a connection reserves queue space before it accepts a frame; while the queue
//! is full the reservation waits, the connection stops reading its socket, and TCP pushes back
//! on the device. Nothing accepted is ever dropped: a failed commit is retried until it succeeds
//! (and `/readyz` reports the stall meanwhile).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{error, warn};

use crate::devices::Device;
use crate::store::{Durable, Row, Store, WriteBatch};
use crate::telemetry as m;

/// A frame accepted at the edge, waiting for commit.
pub struct Accepted {
    /// Device that sent it.
    pub device_id: u64,
    /// Its sequence number.
    pub seq: u64,
    /// When it was received (us since the epoch), for presence.
    pub received_us: i64,
    /// The checked frame bytes (shared with the WebSocket message, not copied).
    pub frame: Bytes,
    /// The device's shared state, to mark the frame committed and publish the ack.
    pub device: Arc<Device>,
    /// Queue space held until the frame is committed.
    pub reservation: Reservation,
}

/// Queue space for one frame; returned to the queue when dropped.
pub struct Reservation {
    /// One frame slot.
    _frame: OwnedSemaphorePermit,
    /// The frame's bytes.
    _bytes: OwnedSemaphorePermit,
}

/// Writer tuning.
#[derive(Clone, Copy, Debug)]
pub struct WriterConfig {
    /// Commit once a batch holds this many readings.
    pub max_rows: usize,
    /// Commit at the latest this long after a batch's first frame.
    pub max_delay: Duration,
    /// Queue bound in frames.
    pub max_frames: usize,
    /// Queue bound in bytes.
    pub max_bytes: usize,
}

/// Health of the writer, read by `/readyz`.
#[derive(Debug, Default)]
pub struct WriterHealth {
    /// Frames queued and not yet committed.
    pub pending: AtomicU64,
    /// When the last commit succeeded (ms since the epoch; 0: never).
    pub last_commit_ms: AtomicI64,
    /// When the oldest uncommitted work started waiting (ms since the epoch; 0: none).
    pub waiting_since_ms: AtomicI64,
}

impl WriterHealth {
    /// Whether the writer has had work waiting longer than `stall` without a commit.
    pub fn stalled(&self, stall: Duration, now_ms: i64) -> bool {
        let since = self.waiting_since_ms.load(Ordering::Acquire);
        since != 0 && now_ms - since > stall.as_millis() as i64
    }
}

/// Handle the connections use to queue frames.
#[derive(Clone)]
pub struct Writer {
    /// Frame queue (bounded by the semaphores below, not by the channel).
    tx: mpsc::UnboundedSender<Accepted>,
    /// Free frame slots.
    frames: Arc<Semaphore>,
    /// Free bytes.
    bytes: Arc<Semaphore>,
    /// Largest single reservation (the whole byte budget).
    max_bytes: usize,
    /// Shared with `/readyz`.
    pub health: Arc<WriterHealth>,
}

impl Writer {
    /// Starts the writer task over `store`. The task ends when every `Writer` clone is dropped
    /// and the queue has been committed.
    pub fn spawn(
        store: Arc<dyn Store>,
        cfg: WriterConfig,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let health = Arc::new(WriterHealth::default());
        let writer = Writer {
            tx,
            frames: Arc::new(Semaphore::new(cfg.max_frames)),
            bytes: Arc::new(Semaphore::new(cfg.max_bytes)),
            max_bytes: cfg.max_bytes,
            health: health.clone(),
        };
        let task = tokio::spawn(run(store, cfg, rx, health));
        (writer, task)
    }

    /// Waits for queue space for a frame of `len` bytes (this wait is the backpressure).
    pub async fn reserve(&self, len: usize) -> Reservation {
        let len = len.clamp(1, self.max_bytes) as u32;
        let frame = self.frames.clone().acquire_owned().await;
        let bytes = self.bytes.clone().acquire_many_owned(len).await;
        match (frame, bytes) {
            (Ok(f), Ok(b)) => Reservation {
                _frame: f,
                _bytes: b,
            },
            // The semaphores are never closed while a Writer exists.
            _ => unreachable!("writer semaphores closed"),
        }
    }

    /// Queues an accepted frame (its space was reserved, so this never waits).
    pub fn submit(&self, item: Accepted) -> Result<(), Accepted> {
        let now = crate::now_us() / 1000;
        let _ = self.health.waiting_since_ms.compare_exchange(
            0,
            now,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.health.pending.fetch_add(1, Ordering::AcqRel);
        self.tx.send(item).map_err(|e| e.0)
    }

    /// Frames queued now.
    pub fn queued_frames(&self) -> usize {
        self.health.pending.load(Ordering::Acquire) as usize
    }
}

async fn run(
    store: Arc<dyn Store>,
    cfg: WriterConfig,
    mut rx: mpsc::UnboundedReceiver<Accepted>,
    health: Arc<WriterHealth>,
) {
    // Acks wait for durability on their own task, so the next batch is built and committed
    // while the disk flushes the last one; batches are acked in commit order.
    let (committed, durable) = mpsc::unbounded_channel();
    let acker = tokio::spawn(ack_when_durable(durable, health.clone()));
    let mut items: Vec<Accepted> = Vec::new();
    loop {
        let Some(first) = rx.recv().await else { break };
        let deadline = tokio::time::Instant::now() + cfg.max_delay;
        let mut rows = reading_count(&first.frame);
        items.push(first);
        while rows < cfg.max_rows {
            // Take what is already queued without waiting, then wait until the deadline.
            let next = match rx.try_recv() {
                Ok(item) => Some(item),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .unwrap_or_default()
                }
            };
            let Some(item) = next else { break };
            rows += reading_count(&item.frame);
            items.push(item);
        }
        let batch = commit(&*store, std::mem::take(&mut items), rows).await;
        // Fails only if the acker panicked; the frames then stay unacked (devices resend them).
        let _ = committed.send(batch);
    }
    drop(committed);
    let _ = acker.await;
}

/// A committed batch waiting to be durable before its frames are acked.
struct Committed {
    /// Its frames (holding their queue space until acked).
    items: Vec<Accepted>,
    /// The devices it touched.
    devices: Vec<Arc<Device>>,
    /// Readings in it.
    rows: usize,
    durable: Durable,
}

/// Acks each committed batch, in order, once it is durable. A batch that cannot be made durable
/// (a failed fsync) is never acked: it and every later batch keep their queue space, so the
/// queue fills, devices are pushed back and `/readyz` reports the stall; the store reports the
/// failure ([`Store::failed`]) and the server stops, to be restarted.
async fn ack_when_durable(
    mut batches: mpsc::UnboundedReceiver<Committed>,
    health: Arc<WriterHealth>,
) {
    // Frames never to be acked; they keep their queue space.
    let mut unackable: Vec<Vec<Accepted>> = Vec::new();
    while let Some(batch) = batches.recv().await {
        if unackable.is_empty() {
            match batch.durable.wait().await {
                Ok(()) => {
                    acked(batch.items, &batch.devices, batch.rows, &health);
                    continue;
                }
                Err(e) => {
                    metrics::counter!(m::COMMIT_ERRORS).increment(1);
                    error!(error = %e, rows = batch.rows, "a committed batch is not durable: nothing more is acked until the server restarts (devices keep and resend their frames)");
                }
            }
        }
        unackable.push(batch.items);
    }
}

fn reading_count(frame: &[u8]) -> usize {
    codecs::decode::view(frame).map_or(0, |f| f.reading_count())
}

/// Builds the batch and commits it (retrying until it succeeds).
async fn commit(store: &dyn Store, items: Vec<Accepted>, rows: usize) -> Committed {
    let mut batch = WriteBatch {
        rows: Vec::with_capacity(rows),
        dedup: Vec::new(),
        last_seen: Vec::new(),
    };
    let mut touched: HashMap<u64, (Arc<Device>, i64)> = HashMap::new();
    for item in items.iter() {
        if let Some(frame) = codecs::decode::view(&item.frame) {
            batch.rows.extend(frame.readings().map(|r| Row {
                device_id: item.device_id,
                seq: item.seq,
                channel: r.channel,
                quality: r.quality,
                ts_us: r.ts_us,
                value: r.value,
            }));
        }
        item.device.lock().durable.insert(item.seq);
        let entry = touched
            .entry(item.device_id)
            .or_insert_with(|| (item.device.clone(), item.received_us));
        entry.1 = entry.1.max(item.received_us);
    }
    for (id, (device, seen)) in &touched {
        batch.dedup.push((*id, device.lock().durable.clone()));
        batch.last_seen.push((*id, *seen));
    }
    let n = batch.rows.len();
    let mut backoff = Duration::from_millis(50);
    let durable = loop {
        let started = Instant::now();
        match store.commit_batch(batch.clone()).await {
            Ok(durable) => {
                metrics::histogram!(m::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
                break durable;
            }
            Err(e) => {
                metrics::counter!(m::COMMIT_ERRORS).increment(1);
                error!(error = %e, rows = n, retry_in = ?backoff, "batch commit failed; retrying (nothing is dropped)");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    Committed {
        items,
        devices: touched.into_values().map(|(device, _)| device).collect(),
        rows: n,
        durable,
    }
}

/// Marks a durable batch's frames committed, publishes the devices' acks and frees the queue
/// space.
fn acked(mut items: Vec<Accepted>, devices: &[Arc<Device>], n: usize, health: &WriterHealth) {
    metrics::histogram!(m::BATCH_ROWS).record(n as f64);
    metrics::counter!(m::ROWS_STORED).increment(n as u64);
    for item in items.iter() {
        item.device.lock().committed(item.seq);
    }
    for device in devices {
        device.lock().publish_ack();
    }
    let acked_us = crate::now_us();
    let wait = metrics::histogram!(m::ACK_WAIT_SECONDS);
    for item in items.iter() {
        wait.record((acked_us - item.received_us).max(0) as f64 / 1e6);
    }
    let done = items.len() as u64;
    items.clear(); // releases the reservations: queue space frees up
    let left = health.pending.fetch_sub(done, Ordering::AcqRel) - done;
    let now = crate::now_us() / 1000;
    health.last_commit_ms.store(now, Ordering::Release);
    health
        .waiting_since_ms
        .store(if left == 0 { 0 } else { now }, Ordering::Release);
    if left > 0 && n == 0 {
        warn!("committed a batch without readings");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::Verdict;
    use crate::devices::Registry;
    use crate::store::StoreError;
    use crate::store::sqlite::{SqliteOptions, SqliteStore};

    /// Frame `seq` of `device`, admitted at the edge and holding one slot of `queue`.
    async fn accepted(device: &Arc<Device>, seq: u64, queue: &Arc<Semaphore>) -> Accepted {
        assert_eq!(device.lock().admit(seq), Verdict::New);
        let (Ok(frame), Ok(bytes)) = (
            queue.clone().acquire_owned().await,
            queue.clone().acquire_owned().await,
        ) else {
            panic!("queue closed");
        };
        Accepted {
            device_id: 7,
            seq,
            received_us: crate::now_us(),
            frame: Bytes::new(),
            device: device.clone(),
            reservation: Reservation {
                _frame: frame,
                _bytes: bytes,
            },
        }
    }

    async fn committed(
        device: &Arc<Device>,
        seq: u64,
        queue: &Arc<Semaphore>,
        durable: Durable,
    ) -> Committed {
        Committed {
            items: vec![accepted(device, seq, queue).await],
            devices: vec![device.clone()],
            rows: 1,
            durable,
        }
    }

    #[tokio::test]
    async fn a_batch_is_acked_once_durable_and_nothing_is_acked_after_a_failed_fsync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("t.sqlite3"), SqliteOptions::default())
            .expect("store");
        let registry = Registry::new(Arc::new(store), 64);
        let device = registry.get(7).await.expect("device");
        let queue = Arc::new(Semaphore::new(100));
        let health = Arc::new(WriterHealth::default());
        health.pending.store(3, Ordering::Release);
        let (batches, receiver) = mpsc::unbounded_channel();
        let acker = tokio::spawn(ack_when_durable(receiver, health.clone()));

        // Committed, not yet durable: no ack, the queue space stays held.
        let (synced, pending) = tokio::sync::oneshot::channel();
        let _ = batches.send(committed(&device, 1, &queue, Durable::pending(pending)).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(device.lock().acked, 0);
        assert_eq!(queue.available_permits(), 98);
        let _ = synced.send(Ok(()));
        for _ in 0..200 {
            if device.lock().acked == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(device.lock().acked, 1, "acked once durable");
        assert_eq!(queue.available_permits(), 100, "queue space freed");
        assert_eq!(health.pending.load(Ordering::Acquire), 2);

        // The next batch's fsync fails: neither it nor a later (durable) batch is acked.
        let (synced, pending) = tokio::sync::oneshot::channel();
        let _ = batches.send(committed(&device, 2, &queue, Durable::pending(pending)).await);
        let _ = batches.send(committed(&device, 3, &queue, Durable::done()).await);
        let _ = synced.send(Err(StoreError::Database("fsync failed".into())));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(device.lock().acked, 1, "nothing acked after the failure");
        assert_eq!(
            queue.available_permits(),
            96,
            "their queue space stays held"
        );
        assert_eq!(
            health.pending.load(Ordering::Acquire),
            2,
            "still pending for /readyz"
        );
        drop(batches);
        acker.await.expect("acker");
        assert_eq!(device.lock().acked, 1);
        assert!(device.lock().inflight.contains(&2) && device.lock().inflight.contains(&3));
    }
}
