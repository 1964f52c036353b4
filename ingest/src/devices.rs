//! Per-device state shared by the device's connection and the writer: the admission dedup
//! window, the frames still waiting for commit, the committed window, and where to send acks.
//!
//! The ack rule (invariant 1): the ack value is the highest sequence seen when nothing of the
//! device is waiting for commit, otherwise one below the lowest waiting sequence. So an ack N is
//! only ever sent when every frame <= N that reached the server is committed.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OnceCell, watch};
use tokio_util::sync::CancellationToken;

use crate::dedup::{DedupWindow, Verdict};
use crate::store::{Store, StoreError};

/// Why a connection is being closed from outside its own task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// A newer connection of the same device took over (close 4000 "replaced").
    Replaced,
    /// The device's token was revoked (close 1008 "token revoked").
    Revoked,
}

/// The device's current connection, as seen by others.
#[derive(Debug)]
pub struct Link {
    /// Connection id (for logs, and to detach only oneself).
    pub conn_id: u64,
    /// Latest cumulative ack to send; the connection sends a frame when it changes.
    pub acks: watch::Sender<u64>,
    /// Cancelled to close the connection; the reason is in `evicted`.
    pub close: CancellationToken,
    /// Why `close` was cancelled.
    pub evicted: Arc<Mutex<Option<Eviction>>>,
    /// The token the connection authenticated with (re-checked against new revocations).
    pub claims: crate::auth::Claims,
}

/// Mutable state of one device.
#[derive(Debug)]
pub struct DeviceState {
    /// Frames seen (stored, or queued to be): decides new vs duplicate at the edge.
    pub admission: DedupWindow,
    /// Frames committed: the window the writer stores with each batch.
    pub durable: DedupWindow,
    /// Sequences accepted but not yet committed.
    pub inflight: BTreeSet<u64>,
    /// Highest sequence that reached the server and was accepted or recognised as duplicate.
    pub max_seen: u64,
    /// Highest ack value sent (acks never go backwards).
    pub acked: u64,
    /// The connection to send acks to, if the device is connected.
    pub link: Option<Link>,
}

impl DeviceState {
    /// The ack value the rule allows now (0: nothing to acknowledge).
    pub fn ack_value(&self) -> u64 {
        match self.inflight.first() {
            Some(&lowest) => (lowest - 1).min(self.max_seen),
            None => self.max_seen,
        }
    }

    /// Publishes the current ack value to the connection if it moved forward.
    pub fn publish_ack(&mut self) {
        let ack = self.ack_value();
        if ack > self.acked {
            self.acked = ack;
            if let Some(link) = &self.link {
                link.acks.send_replace(ack);
            }
        }
    }

    /// Classifies and records a frame's sequence at the edge.
    pub fn admit(&mut self, seq: u64) -> Verdict {
        let verdict = self.admission.insert(seq);
        match verdict {
            Verdict::New => {
                self.inflight.insert(seq);
                self.max_seen = self.max_seen.max(seq);
            }
            Verdict::Duplicate => self.max_seen = self.max_seen.max(seq),
            Verdict::TooOld { .. } => {}
        }
        verdict
    }

    /// Marks a frame committed (called by the writer after the commit).
    pub fn committed(&mut self, seq: u64) {
        self.inflight.remove(&seq);
    }
}

/// One device: its state, loaded from the store on first use.
#[derive(Debug, Default)]
pub struct Device {
    /// Loaded on first use from the committed dedup window.
    state: OnceCell<Mutex<DeviceState>>,
}

impl Device {
    /// Locks the state (it must have been loaded with [`Registry::get`]).
    pub fn lock(&self) -> MutexGuard<'_, DeviceState> {
        // A poisoned lock means a panic while holding it; the state itself stays consistent
        // because every mutation is a single step, so keep going with it.
        match self.state.get() {
            Some(m) => m.lock().unwrap_or_else(|p| p.into_inner()),
            None => unreachable!("Device::lock before Registry::get loaded it"),
        }
    }
}

/// All devices seen since start.
pub struct Registry {
    /// Devices by id.
    devices: Mutex<HashMap<u64, Arc<Device>>>,
    /// Where committed dedup windows are loaded from.
    store: Arc<dyn Store>,
    /// Window size in sequence numbers.
    window: u32,
}

impl Registry {
    /// An empty registry over `store` with dedup windows of `window` sequences.
    pub fn new(store: Arc<dyn Store>, window: u32) -> Self {
        Registry {
            devices: Mutex::new(HashMap::new()),
            store,
            window,
        }
    }

    /// The device, with its state loaded from the store if this is its first use.
    pub async fn get(&self, device_id: u64) -> Result<Arc<Device>, StoreError> {
        let device = {
            let mut map = self.devices.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(device_id).or_default().clone()
        };
        device
            .state
            .get_or_try_init(|| async {
                let window = self
                    .store
                    .dedup_window(device_id, self.window)
                    .await?
                    .unwrap_or_else(|| DedupWindow::new(self.window));
                let high = window.high_water();
                Ok::<_, StoreError>(Mutex::new(DeviceState {
                    admission: window.clone(),
                    durable: window,
                    inflight: BTreeSet::new(),
                    max_seen: high,
                    // Everything up to the committed high-water mark is stored: the device hears
                    // it on connect, and re-sent frames <= it are acked again as duplicates.
                    acked: high,
                    link: None,
                }))
            })
            .await?;
        Ok(device)
    }

    /// Devices connected now.
    pub fn connected(&self) -> Vec<(u64, Arc<Device>)> {
        let map = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, d)| d.state.get().is_some() && d.lock().link.is_some())
            .map(|(id, d)| (*id, d.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> DeviceState {
        DeviceState {
            admission: DedupWindow::new(64),
            durable: DedupWindow::new(64),
            inflight: BTreeSet::new(),
            max_seen: 0,
            acked: 0,
            link: None,
        }
    }

    #[test]
    fn ack_waits_for_the_lowest_uncommitted_frame() {
        let mut s = state();
        for seq in 1..=5 {
            assert_eq!(s.admit(seq), Verdict::New);
        }
        assert_eq!(s.ack_value(), 0);
        s.committed(2);
        s.committed(3);
        assert_eq!(s.ack_value(), 0, "1 is not committed yet");
        s.committed(1);
        assert_eq!(s.ack_value(), 3);
        s.committed(5);
        assert_eq!(s.ack_value(), 3, "4 is not committed yet");
        s.committed(4);
        assert_eq!(s.ack_value(), 5);
    }

    #[test]
    fn duplicate_of_a_queued_frame_is_not_acked_before_commit() {
        let mut s = state();
        s.admit(1);
        s.committed(1);
        s.admit(2);
        assert_eq!(s.admit(2), Verdict::Duplicate);
        assert_eq!(s.ack_value(), 1);
        s.committed(2);
        assert_eq!(s.ack_value(), 2);
    }

    #[test]
    fn acks_never_go_backwards() {
        let mut s = state();
        s.admit(10);
        s.committed(10);
        s.publish_ack();
        assert_eq!(s.acked, 10);
        s.admit(7); // late, out of order
        s.publish_ack();
        assert_eq!(s.acked, 10);
        s.committed(7);
        s.publish_ack();
        assert_eq!(s.acked, 10);
    }
}
