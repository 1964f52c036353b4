//! Which client tasks to wake when a device publishes or changes presence, like a broker's topic
//! tree: a client that watches a list of devices is woken only by those devices; a client that
//! watches every device (or tags, which can change) by every device.
//!
//! Waking is a `Notify` permit per client: at most one pending wake per client whatever the
//! publish rate, so a slow client costs the publisher one `notify_one` per publish of its
//! devices and holds nothing per reading (it stays a cursor into the log). Presence changes go
//! into the client's [`Inbox`], bounded at [`PRESENCE_PER_CLIENT`] events; a client that lets
//! more pile up is flagged as lagged and gets the presence of all its devices instead.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use crate::hub::PresenceEvent;

/// Presence events held per client until its task takes them; past this the client is re-sent
/// the presence of its devices (`presence` message) instead.
pub const PRESENCE_PER_CLIENT: usize = 256;

/// What the hub hands one client task: a wake-up and its presence events.
#[derive(Default)]
pub struct Inbox {
    /// Notified when a publish or presence change concerns the client.
    signal: Arc<Notify>,
    /// Presence changes of its devices, oldest first.
    presence: Mutex<VecDeque<PresenceEvent>>,
    /// Whether `presence` holds anything (checked without the lock).
    has_presence: AtomicBool,
    /// Events were dropped because the queue was full.
    lagged: AtomicBool,
}

impl Inbox {
    /// The wake-up signal.
    pub fn signal(&self) -> &Arc<Notify> {
        &self.signal
    }

    /// Queues a presence event (or flags the lag when full) and wakes the client.
    fn push_presence(&self, ev: PresenceEvent) {
        {
            let mut q = self.presence.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() < PRESENCE_PER_CLIENT {
                q.push_back(ev);
            } else {
                self.lagged.store(true, Ordering::Release);
            }
            self.has_presence.store(true, Ordering::Release);
        }
        self.signal.notify_one();
    }

    /// Takes the queued presence events; the bool says events were dropped since last time.
    pub fn take_presence(&self) -> (Vec<PresenceEvent>, bool) {
        if !self.has_presence.load(Ordering::Acquire) {
            return (Vec::new(), false);
        }
        let mut q = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        self.has_presence.store(false, Ordering::Release);
        let lagged = self.lagged.swap(false, Ordering::AcqRel);
        (q.drain(..).collect(), lagged)
    }
}

/// What wakes one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interest {
    /// Nothing (no subscription).
    Nothing,
    /// Every publish.
    Everything,
    /// Publishes of these devices (sorted, no duplicates).
    Devices(Vec<u64>),
}

/// A registered client: its id and its inbox.
type Waker = (u64, Arc<Inbox>);

/// The routing table (not synchronised; the hub wraps it in a lock).
#[derive(Default)]
pub struct Routes {
    /// Clients woken by a device's publishes.
    by_device: FxHashMap<u64, Vec<Waker>>,
    /// Clients woken by every publish.
    everything: Vec<Waker>,
    /// Current interest of each registered client (to undo it).
    interests: FxHashMap<u64, Interest>,
}

impl Routes {
    /// Replaces the interest of client `id` (reached through `inbox`).
    pub fn set(&mut self, id: u64, inbox: &Arc<Inbox>, interest: Interest) {
        match self.interests.remove(&id) {
            Some(Interest::Everything) => self.everything.retain(|(c, _)| *c != id),
            Some(Interest::Devices(ids)) => {
                for d in ids {
                    if let Some(list) = self.by_device.get_mut(&d) {
                        list.retain(|(c, _)| *c != id);
                        if list.is_empty() {
                            self.by_device.remove(&d);
                        }
                    }
                }
            }
            Some(Interest::Nothing) | None => {}
        }
        match &interest {
            Interest::Nothing => return,
            Interest::Everything => self.everything.push((id, inbox.clone())),
            Interest::Devices(ids) => {
                for d in ids {
                    self.by_device
                        .entry(*d)
                        .or_default()
                        .push((id, inbox.clone()));
                }
            }
        }
        self.interests.insert(id, interest);
    }

    /// The clients interested in `device`.
    fn interested(&self, device: u64) -> impl Iterator<Item = &Arc<Inbox>> {
        self.everything
            .iter()
            .chain(self.by_device.get(&device).into_iter().flatten())
            .map(|(_, inbox)| inbox)
    }

    /// Wakes every client interested in a publish of `device`; returns how many.
    pub fn wake(&self, device: u64) -> usize {
        let mut woken = 0;
        for inbox in self.interested(device) {
            inbox.signal.notify_one();
            woken += 1;
        }
        woken
    }

    /// Hands a presence change to every client interested in its device.
    pub fn presence(&self, ev: PresenceEvent) {
        for inbox in self.interested(ev.device_id) {
            inbox.push_presence(ev);
        }
    }

    /// Registered clients.
    pub fn clients(&self) -> usize {
        self.interests.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_publish_wakes_only_the_clients_of_that_device_and_the_broad_ones() {
        let mut routes = Routes::default();
        let (a, b, all) = (
            Arc::new(Inbox::default()),
            Arc::new(Inbox::default()),
            Arc::new(Inbox::default()),
        );
        routes.set(1, &a, Interest::Devices(vec![10, 11]));
        routes.set(2, &b, Interest::Devices(vec![11]));
        routes.set(3, &all, Interest::Everything);
        assert_eq!(routes.wake(10), 2);
        assert_eq!(routes.wake(12), 1);
        // `a` and `all` hold a permit, `b` does not.
        let woken = |i: &Arc<Inbox>| futures_util::FutureExt::now_or_never(i.signal.notified());
        assert!(woken(&a).is_some());
        assert!(woken(&b).is_none());
        assert!(woken(&all).is_some());
        routes.set(1, &a, Interest::Devices(vec![12]));
        assert_eq!(routes.wake(10), 1, "the old interest is gone");
        routes.set(3, &all, Interest::Nothing);
        routes.set(2, &b, Interest::Nothing);
        assert_eq!(routes.wake(11), 0);
        assert_eq!(routes.clients(), 1);
        routes.set(1, &a, Interest::Nothing);
        assert_eq!(routes.clients(), 0);
        assert!(routes.by_device.is_empty() && routes.everything.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn presence_goes_to_the_watchers_of_the_device_and_a_full_inbox_flags_the_lag() {
        let mut routes = Routes::default();
        let (a, b) = (Arc::new(Inbox::default()), Arc::new(Inbox::default()));
        routes.set(1, &a, Interest::Devices(vec![10]));
        routes.set(2, &b, Interest::Devices(vec![11]));
        let ev = |device_id, online| PresenceEvent {
            device_id,
            online,
            at_us: 5,
        };
        routes.presence(ev(10, true));
        assert_eq!(a.take_presence(), (vec![ev(10, true)], false));
        assert_eq!(b.take_presence(), (vec![], false));
        for i in 0..PRESENCE_PER_CLIENT + 3 {
            routes.presence(ev(10, i % 2 == 0));
        }
        let (events, lagged) = a.take_presence();
        assert_eq!(events.len(), PRESENCE_PER_CLIENT);
        assert!(lagged, "the client is told it missed events");
        assert_eq!(a.take_presence(), (vec![], false));
    }
}
