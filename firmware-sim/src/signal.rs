//! Plausible sensor signals so dashboards look real: a daily sine, noise, slow drift and
//! occasional spikes, different per device and channel.

use std::sync::OnceLock;

use rand::Rng;
use rand::rngs::SmallRng;

/// Microseconds in a day.
const DAY_US: f64 = 86_400_000_000.0;

/// (sin, cos) of every channel's phase offset (the channel number, in radians), built once.
fn channel_offset(channel: u16) -> (f64, f64) {
    static TABLE: OnceLock<Vec<(f64, f64)>> = OnceLock::new();
    TABLE.get_or_init(|| (0..=u16::MAX).map(|c| f64::from(c).sin_cos()).collect())
        [usize::from(channel)]
}

/// Signal generator state of one device.
#[derive(Debug)]
pub struct Signal {
    /// Per-device phase so devices differ.
    phase: f64,
    /// Slow random walk added to every channel.
    drift: f64,
}

impl Signal {
    /// A generator for one device.
    pub fn new(rng: &mut SmallRng) -> Self {
        Signal {
            phase: rng.random::<f64>() * std::f64::consts::TAU,
            drift: 0.0,
        }
    }

    /// Value of `channel` at `ts_us`.
    pub fn value(&mut self, rng: &mut SmallRng, channel: u16, ts_us: i64) -> f64 {
        let day = self.day(ts_us);
        self.value_at(rng, channel, day)
    }

    /// This device's daily-sine angle at `ts_us`, as (sin, cos), for [`value_at`](Self::value_at).
    pub fn day(&self, ts_us: i64) -> (f64, f64) {
        ((ts_us as f64 / DAY_US) * std::f64::consts::TAU + self.phase).sin_cos()
    }

    /// Value of `channel` at the angle `day` from [`day`](Self::day): no trigonometry per
    /// reading (the channel's phase offset comes from a table), which was a tenth of the
    /// simulator's CPU at 64 readings per frame.
    pub fn value_at(&mut self, rng: &mut SmallRng, channel: u16, day: (f64, f64)) -> f64 {
        self.drift += (rng.random::<f64>() - 0.5) * 0.01;
        let base = 20.0 + f64::from(channel % 7) * 5.0;
        let amplitude = 3.0 + f64::from(channel % 3);
        // sin(day + channel) by the angle-sum identity.
        let (sin_c, cos_c) = channel_offset(channel);
        let sine = day.0 * cos_c + day.1 * sin_c;
        let noise = (rng.random::<f64>() - 0.5) * 0.4;
        let spike = if rng.random::<f64>() < 0.001 {
            amplitude * 4.0
        } else {
            0.0
        };
        base + amplitude * sine + noise + self.drift + spike
    }

    /// An environmental sample at `ts_us`: temperature C, humidity %, pressure hPa, battery mV.
    pub fn environment(&mut self, rng: &mut SmallRng, ts_us: i64) -> (f32, f32, f32, u16) {
        let t = self.value(rng, 0, ts_us);
        let h = (55.0 - (t - 20.0) * 2.0).clamp(5.0, 100.0);
        let p = 1013.0 + self.drift * 10.0 + (rng.random::<f64>() - 0.5);
        let battery = 3700.0 - (ts_us as f64 / DAY_US).fract() * 50.0;
        (t as f32, h as f32, p as f32, battery as u16)
    }
}
