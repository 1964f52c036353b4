//! Which client tasks to wake when a device publishes, like a broker's topic tree: a client that
//! watches a list of devices is woken only by those devices' readings; a client that watches
//! every device (or tags, which can change) is woken by every publish.
//!
//! Waking is a `Notify` permit per client: at most one pending wake per client whatever the
//! publish rate, so a slow client costs the publisher one `notify_one` per publish of its
//! devices and holds nothing per reading (it stays a cursor into the log).

use std::sync::Arc;

use rustc_hash::FxHashMap;
use tokio::sync::Notify;

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

/// A registered client: its id and its wake-up signal.
type Waker = (u64, Arc<Notify>);

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
    /// Replaces the interest of client `id` (woken through `signal`).
    pub fn set(&mut self, id: u64, signal: &Arc<Notify>, interest: Interest) {
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
            Interest::Everything => self.everything.push((id, signal.clone())),
            Interest::Devices(ids) => {
                for d in ids {
                    self.by_device
                        .entry(*d)
                        .or_default()
                        .push((id, signal.clone()));
                }
            }
        }
        self.interests.insert(id, interest);
    }

    /// Wakes every client interested in a publish of `device`; returns how many.
    pub fn wake(&self, device: u64) -> usize {
        let mut woken = 0;
        for (_, n) in self
            .everything
            .iter()
            .chain(self.by_device.get(&device).into_iter().flatten())
        {
            n.notify_one();
            woken += 1;
        }
        woken
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
            Arc::new(Notify::new()),
            Arc::new(Notify::new()),
            Arc::new(Notify::new()),
        );
        routes.set(1, &a, Interest::Devices(vec![10, 11]));
        routes.set(2, &b, Interest::Devices(vec![11]));
        routes.set(3, &all, Interest::Everything);
        assert_eq!(routes.wake(10), 2);
        assert_eq!(routes.wake(12), 1);
        // `a` and `all` hold a permit, `b` does not.
        assert!(futures_util::FutureExt::now_or_never(a.notified()).is_some());
        assert!(futures_util::FutureExt::now_or_never(b.notified()).is_none());
        assert!(futures_util::FutureExt::now_or_never(all.notified()).is_some());
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
}
