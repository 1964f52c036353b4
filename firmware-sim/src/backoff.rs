//! Reconnect backoff: exponential with full jitter (AWS architecture blog, "Exponential Backoff
//! and Jitter"), reset after a stable connection, so a server restart does not bring every
//! device back in the same instant.

use std::time::Duration;

use rand::Rng;

/// Backoff state of one device.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// First ceiling.
    base: Duration,
    /// Largest ceiling.
    cap: Duration,
    /// Failed attempts since the last reset.
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay, uniformly random in `[0, ceiling]`; grows the ceiling for next time.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = ceiling.as_nanos().min(u128::from(u64::MAX)) as u64;
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// After a stable connection: start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_stay_within_zero_and_a_growing_capped_ceiling() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        let mut b = Backoff::new(base, cap);
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            let ceiling = b.ceiling();
            ceilings.push(ceiling);
            let d = b.next_delay(&mut rng);
            assert!(
                d <= ceiling && ceiling <= cap,
                "{d:?} within [0, {ceiling:?}]"
            );
        }
        assert!(
            ceilings.windows(2).all(|w| w[0] <= w[1]),
            "ceilings never shrink: {ceilings:?}"
        );
        assert_eq!(ceilings[0], base);
        assert_eq!(ceilings[3], base * 8);
        assert_eq!(*ceilings.last().unwrap_or(&Duration::ZERO), cap);
        b.reset();
        assert_eq!(b.ceiling(), base);
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..200).map(|_| b.next_delay(&mut rng)).collect();
        let low = delays
            .iter()
            .filter(|d| **d < Duration::from_millis(500))
            .count();
        assert!(
            (60..140).contains(&low),
            "about half below the midpoint, got {low}/200"
        );
    }
}
