//! What every device sent, frame by frame, so dashboard clients can check what they receive
//! against it: which readings belong to which frame, which reading of a frame carries the send
//! time, and how many readings a hole in a client's stream stands for.
//!
//! Only kept when dashboard clients run (8 + 8 bytes per frame: 16 MB for a million frames).
//!
//! Timestamps (written by [`crate::device`]): the readings of a frame have strictly increasing
//! times, all after the previous frame's last reading, and the **last reading's time is the
//! send time** (microseconds since the Unix epoch, the same clock as the dashboards'). So the
//! frame of a reading is the first frame whose last time is at or after the reading's time, and
//! device-to-dashboard latency is `receive time - ts_us` of a frame's last reading.

use std::sync::Mutex;

/// One frame in a device's ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Time of the frame's last reading (its send time), microseconds since the Unix epoch.
    pub last_ts: i64,
    /// Readings of this device up to and including this frame.
    pub cum: u64,
}

/// A frame found for a reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef {
    /// Index of the frame in the device's ledger.
    pub index: usize,
    /// Time of its last reading.
    pub last_ts: i64,
    /// Readings of the device before this frame.
    pub before: u64,
    /// Readings of the device up to and including this frame.
    pub cum: u64,
}

/// The frames of every device of the fleet, by device index.
#[derive(Debug)]
pub struct Ledger {
    /// Device id of index 0.
    first_device: u64,
    /// Frames per device, in send order (a device appends, clients read).
    devices: Vec<Mutex<Vec<Entry>>>,
}

impl Ledger {
    /// An empty ledger for `count` devices starting at id `first_device`.
    pub fn new(first_device: u64, count: u32) -> Ledger {
        Ledger {
            first_device,
            devices: (0..count).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// The device index of a device id, if it is one of the fleet.
    pub fn index(&self, device_id: u64) -> Option<usize> {
        let i = usize::try_from(device_id.checked_sub(self.first_device)?).ok()?;
        (i < self.devices.len()).then_some(i)
    }

    /// Device ids of the fleet.
    pub fn device_ids(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.devices.len() as u64).map(|i| self.first_device + i)
    }

    /// Records a frame of `readings` readings whose last reading is at `last_ts` (called before
    /// the frame goes on the wire, so no client can see it first).
    pub fn record(&self, index: usize, last_ts: i64, readings: u64) {
        if let Some(Ok(mut frames)) = self.devices.get(index).map(|m| m.lock()) {
            let cum = frames.last().map_or(0, |e| e.cum) + readings;
            frames.push(Entry { last_ts, cum });
        }
    }

    /// The frame a reading at `ts` belongs to (the first frame whose last reading is at or
    /// after `ts`), or `None` if the device sent no such frame.
    pub fn frame_of(&self, index: usize, ts: i64) -> Option<FrameRef> {
        self.frame_of_after(index, ts, None)
    }

    /// [`Ledger::frame_of`] for a client that last saw frame `previous` of this device: it
    /// looks at the next frame first (a client reading in order nearly always wants it), and
    /// only searches the ledger when that is not it.
    pub fn frame_of_after(
        &self,
        index: usize,
        ts: i64,
        previous: Option<usize>,
    ) -> Option<FrameRef> {
        let frames = self.devices.get(index)?.lock().ok()?;
        if let Some(p) = previous {
            let next = p + 1;
            let fits = |i: usize| frames.get(i).is_some_and(|e| e.last_ts >= ts);
            if fits(next) && frames.get(p).is_some_and(|e| e.last_ts < ts) {
                return Self::at(&frames, next);
            }
        }
        let i = frames.partition_point(|e| e.last_ts < ts);
        Self::at(&frames, i)
    }

    /// The first frame sent after `t_us` (its last reading later than `t_us`), or `None`.
    pub fn first_after(&self, index: usize, t_us: i64) -> Option<FrameRef> {
        let frames = self.devices.get(index)?.lock().ok()?;
        let i = frames.partition_point(|e| e.last_ts <= t_us);
        Self::at(&frames, i)
    }

    /// (frames, readings) the device sent in all.
    pub fn totals(&self, index: usize) -> (usize, u64) {
        self.devices
            .get(index)
            .and_then(|m| m.lock().ok())
            .map_or((0, 0), |f| (f.len(), f.last().map_or(0, |e| e.cum)))
    }

    fn at(frames: &[Entry], i: usize) -> Option<FrameRef> {
        let e = frames.get(i)?;
        Some(FrameRef {
            index: i,
            last_ts: e.last_ts,
            before: if i == 0 { 0 } else { frames[i - 1].cum },
            cum: e.cum,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_map_to_their_frame_and_counts_add_up() {
        let l = Ledger::new(100, 2);
        l.record(0, 1_000, 3);
        l.record(0, 2_000, 3);
        l.record(0, 3_000, 2);
        assert_eq!(l.index(101), Some(1));
        assert_eq!(l.index(99), None);
        assert_eq!(l.index(102), None);
        let f = l.frame_of(0, 1_500).expect("frame");
        assert_eq!((f.index, f.last_ts, f.before, f.cum), (1, 2_000, 3, 6));
        assert_eq!(l.frame_of(0, 2_000).map(|f| f.index), Some(1));
        assert_eq!(l.frame_of(0, 3_001), None);
        // The next-frame shortcut gives what the search gives, and falls back when it misses.
        for ts in [0, 1_000, 1_001, 2_000, 2_500, 3_000, 3_001] {
            for previous in [None, Some(0), Some(1), Some(2), Some(7)] {
                assert_eq!(
                    l.frame_of_after(0, ts, previous),
                    l.frame_of(0, ts),
                    "{ts} {previous:?}"
                );
            }
        }
        assert_eq!(l.first_after(0, 2_000).map(|f| f.index), Some(2));
        assert_eq!(l.first_after(0, 0).map(|f| f.index), Some(0));
        assert_eq!(l.totals(0), (3, 8));
        assert_eq!(l.totals(1), (0, 0));
    }
}
