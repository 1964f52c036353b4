//! Connection and rate limits: how many devices may be connected, how fast one IP may open
//! connections, and how fast one device may send. Each refusal is counted (see `telemetry`).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Counts open device connections against a maximum.
#[derive(Debug)]
pub struct ConnectionLimit {
    /// Connections open now.
    open: AtomicUsize,
    /// Most allowed.
    max: usize,
}

/// Holds one connection slot; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<ConnectionLimit>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionLimit {
    /// A limit of `max` connections.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnectionLimit {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// Takes a slot, or `None` when `max` are open.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let prev = self.open.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionSlot(self.clone()))
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

fn nz(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v.max(1)).unwrap_or(NonZeroU32::MIN)
}

/// New-connection rate per client IP address.
pub struct ConnectRate {
    /// Token bucket per IP.
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl ConnectRate {
    /// `per_sec` sustained, `burst` at once.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        ConnectRate {
            limiter: RateLimiter::keyed(Quota::per_second(nz(per_sec)).allow_burst(nz(burst))),
        }
    }

    /// Whether `ip` may open a connection now.
    pub fn check(&self, ip: IpAddr) -> bool {
        self.limiter.check_key(&ip).is_ok()
    }

    /// Forgets idle IPs (call periodically: otherwise memory grows with every IP ever seen).
    pub fn retain_recent(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// Which per-device limit a frame broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceLimit {
    /// Frames per second.
    Frames,
    /// Readings per second.
    Readings,
}

impl DeviceLimit {
    /// Label value in metrics.
    pub fn label(self) -> &'static str {
        match self {
            DeviceLimit::Frames => "device_frames",
            DeviceLimit::Readings => "device_readings",
        }
    }
}

/// Token buckets of one device connection: frames/s and readings/s, each `burst` deep (in
/// seconds of its rate), so frames that arrive together after waiting in the socket are not
/// taken for a device over its rate.
pub struct DeviceRate {
    /// Frames bucket.
    frames: DefaultDirectRateLimiter,
    /// Readings bucket.
    readings: DefaultDirectRateLimiter,
    /// Readings per second (a frame may not carry more than one second's worth).
    readings_per_sec: u32,
}

impl DeviceRate {
    /// Buckets for `frames_per_sec` and `readings_per_sec`, `burst` deep (at least one second).
    pub fn new(frames_per_sec: u32, readings_per_sec: u32, burst: Duration) -> Self {
        let depth = |per_sec: u32| {
            let n = (f64::from(per_sec) * burst.as_secs_f64().max(1.0)).min(f64::from(u32::MAX));
            Quota::per_second(nz(per_sec)).allow_burst(nz(n as u32))
        };
        DeviceRate {
            frames: RateLimiter::direct(depth(frames_per_sec)),
            readings: RateLimiter::direct(depth(readings_per_sec)),
            readings_per_sec,
        }
    }

    /// Takes one frame carrying `readings` readings; the limit broken, if any.
    pub fn check(&self, readings: usize) -> Result<(), DeviceLimit> {
        if self.frames.check().is_err() {
            return Err(DeviceLimit::Frames);
        }
        let n = u32::try_from(readings).unwrap_or(u32::MAX);
        if n > self.readings_per_sec {
            return Err(DeviceLimit::Readings);
        }
        match self.readings.check_n(nz(n)) {
            Ok(Ok(())) => Ok(()),
            _ => Err(DeviceLimit::Readings),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limit_refuses_past_max_and_frees_on_drop() {
        let limit = ConnectionLimit::new(2);
        let a = limit.try_acquire().expect("first");
        let _b = limit.try_acquire().expect("second");
        assert!(limit.try_acquire().is_none());
        drop(a);
        assert!(limit.try_acquire().is_some());
    }

    #[test]
    fn device_rate_refuses_bursts_past_the_quota() {
        let second = Duration::from_secs(1);
        let rate = DeviceRate::new(5, 1000, second);
        let ok = (0..20).filter(|_| rate.check(1).is_ok()).count();
        assert_eq!(ok, 5, "a one-second burst of 5 frames");
        let rate = DeviceRate::new(100, 10, second);
        assert_eq!(rate.check(11), Err(DeviceLimit::Readings));
    }

    #[test]
    fn a_deeper_bucket_takes_that_many_seconds_at_once_and_no_more() {
        let rate = DeviceRate::new(5, 1000, Duration::from_secs(10));
        let ok = (0..100).filter(|_| rate.check(1).is_ok()).count();
        assert_eq!(ok, 50, "ten seconds' worth of frames at once");
        let rate = DeviceRate::new(1000, 10, Duration::from_secs(3));
        assert_eq!(
            rate.check(11),
            Err(DeviceLimit::Readings),
            "still one second per frame"
        );
        assert!(
            (0..3).all(|_| rate.check(10).is_ok()),
            "three seconds of readings"
        );
        assert_eq!(rate.check(10), Err(DeviceLimit::Readings));
    }

    #[test]
    fn connect_rate_is_per_ip() {
        let rate = ConnectRate::new(1, 2);
        let a: IpAddr = "127.0.0.2".parse().expect("ip");
        let b: IpAddr = "127.0.0.3".parse().expect("ip");
        assert!(rate.check(a) && rate.check(a));
        assert!(!rate.check(a));
        assert!(rate.check(b), "another IP is not affected");
    }
}
