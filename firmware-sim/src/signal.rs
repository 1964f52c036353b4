//! Plausible sensor signals so dashboards look real: a daily sine, noise, slow drift and
//! occasional spikes, different per device and channel.

use rand::Rng;
use rand::rngs::SmallRng;

/// Microseconds in a day.
const DAY_US: f64 = 86_400_000_000.0;

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
        self.drift += (rng.random::<f64>() - 0.5) * 0.01;
        let base = 20.0 + f64::from(channel % 7) * 5.0;
        let amplitude = 3.0 + f64::from(channel % 3);
        let day = (ts_us as f64 / DAY_US) * std::f64::consts::TAU + self.phase + f64::from(channel);
        let noise = (rng.random::<f64>() - 0.5) * 0.4;
        let spike = if rng.random::<f64>() < 0.001 {
            amplitude * 4.0
        } else {
            0.0
        };
        base + amplitude * day.sin() + noise + self.drift + spike
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
