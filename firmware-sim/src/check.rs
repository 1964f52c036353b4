//! Checks what one dashboard client receives against the [`Ledger`] of what the devices sent:
//! every reading of a subscribed device sent after the subscription took effect must arrive
//! exactly once, in order. Counts holes (readings that never came), duplicates (a (device,
//! channel, ts_us) again, or older than one already received; a frame position not above the
//! previous one), the server's explicit `gap` and `coalesced` messages, and the
//! device-to-dashboard latency of each frame's last reading (`receive time - ts_us`, which the
//! device set to its send time).
//!
//! Per device the readings of a frame have strictly increasing (ts_us, channel), all after the
//! previous frame's, so "in order" is "(ts_us, channel) strictly increases per device".

use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::ledger::{FrameRef, Ledger};
use crate::stats::latency_histogram;

/// Latency samples are capped here (10 minutes, the histogram's range).
const MAX_LATENCY_US: u64 = 600_000_000;

/// What one client saw (summed over clients of a kind for the report).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Readings received (duplicates included).
    pub readings_received: u64,
    /// Readings that should have arrived: of subscribed devices, sent after the subscription.
    pub readings_expected: u64,
    /// Readings that never arrived (part of `readings_expected`).
    pub readings_missed: u64,
    /// Runs of missed readings of one device (a hole in the device's sequence).
    pub reading_holes: u64,
    /// Frames whose first position did not follow the previous frame's last (all-device
    /// clients only: their positions are contiguous; informational, the same loss is counted
    /// in `reading_holes`).
    pub position_holes: u64,
    /// `gap` messages from the server.
    pub gap_messages: u64,
    /// `coalesced` messages from the server.
    pub coalesced_messages: u64,
    /// Readings the server said it coalesced away.
    pub coalesced_dropped: u64,
    /// Readings received again, or older than one already received of the same device.
    pub repeated_readings: u64,
    /// Frames whose position was not above the previous frame's.
    pub positions_backwards: u64,
    /// Readings of devices the client did not subscribe to, or that no device sent.
    pub unexpected_readings: u64,
}

impl Counts {
    /// Gaps: explicit messages plus holes in a device's sequence.
    pub fn gaps(&self) -> u64 {
        self.gap_messages + self.coalesced_messages + self.reading_holes
    }

    /// Duplicates: readings again (or going backwards) plus positions going backwards.
    pub fn duplicates(&self) -> u64 {
        self.repeated_readings + self.positions_backwards
    }

    /// Adds another client's counts.
    pub fn add(&mut self, o: &Counts) {
        self.readings_received += o.readings_received;
        self.readings_expected += o.readings_expected;
        self.readings_missed += o.readings_missed;
        self.reading_holes += o.reading_holes;
        self.position_holes += o.position_holes;
        self.gap_messages += o.gap_messages;
        self.coalesced_messages += o.coalesced_messages;
        self.coalesced_dropped += o.coalesced_dropped;
        self.repeated_readings += o.repeated_readings;
        self.positions_backwards += o.positions_backwards;
        self.unexpected_readings += o.unexpected_readings;
    }
}

/// Where a client is in one subscribed device's sequence.
#[derive(Debug)]
struct Track {
    /// Device index in the ledger.
    index: usize,
    /// Readings of the device before the first one this client must get (set on the first
    /// reading received, or at the end).
    start_before: Option<u64>,
    /// Frame of the last reading received.
    frame: Option<FrameRef>,
    /// Readings of that frame received so far.
    seen: u64,
    /// (ts_us, channel) of the last reading received.
    last_key: (i64, u16),
}

/// Checks one client's stream.
#[derive(Debug)]
pub struct Checker {
    /// When the subscription was confirmed (Unix us): frames sent later must all arrive.
    subscribed_at_us: i64,
    /// Subscribed devices by id.
    tracks: FxHashMap<u64, Track>,
    /// Whether positions must be contiguous (subscribed to every device).
    contiguous: bool,
    /// Position of the last record of the previous frame (the subscribe reply's at first).
    last_position: Option<u64>,
    /// What was seen.
    pub counts: Counts,
    /// Device-to-dashboard latency of frames' last readings, microseconds.
    pub latency: Histogram<u64>,
    /// Readings sent (timestamped) before this Unix time are left out of `latency` (warm-up).
    pub latency_from_us: i64,
}

impl Checker {
    /// A checker for a client subscribed to `devices` (ids outside the fleet are ignored),
    /// confirmed at `subscribed_at_us`; `position`: the subscribe reply's (positions start after
    /// it), `contiguous`: whether the client gets every position (subscribed to all devices).
    pub fn new(
        ledger: &Ledger,
        devices: &[u64],
        subscribed_at_us: i64,
        position: Option<u64>,
        contiguous: bool,
    ) -> Checker {
        let tracks = devices
            .iter()
            .filter_map(|&id| {
                let index = ledger.index(id)?;
                Some((
                    id,
                    Track {
                        index,
                        start_before: None,
                        frame: None,
                        seen: 0,
                        last_key: (i64::MIN, 0),
                    },
                ))
            })
            .collect();
        Checker {
            subscribed_at_us,
            tracks,
            contiguous,
            last_position: position,
            counts: Counts::default(),
            latency: latency_histogram(),
            latency_from_us: i64::MIN,
        }
    }

    /// A data frame whose last record is at `position` and which holds `count` records.
    pub fn on_position(&mut self, position: u64, count: u64, coalesced: bool) {
        if let Some(prev) = self.last_position {
            if position <= prev {
                self.counts.positions_backwards += 1;
                return;
            }
            if self.contiguous && !coalesced && position.saturating_sub(count) != prev {
                self.counts.position_holes += 1;
            }
        }
        self.last_position = Some(position);
    }

    /// Position of the last record received (to resume after), if any was received.
    pub fn position(&self) -> Option<u64> {
        self.last_position
    }

    /// A `gap` message.
    pub fn on_gap(&mut self) {
        self.counts.gap_messages += 1;
    }

    /// A `coalesced` message saying `dropped` readings were replaced by newer ones.
    pub fn on_coalesced(&mut self, dropped: u64) {
        self.counts.coalesced_messages += 1;
        self.counts.coalesced_dropped += dropped;
    }

    /// One reading, received at `now_us` (Unix us).
    pub fn on_reading(&mut self, ledger: &Ledger, device: u64, channel: u16, ts: i64, now_us: i64) {
        self.counts.readings_received += 1;
        let Some(t) = self.tracks.get_mut(&device) else {
            self.counts.unexpected_readings += 1;
            return;
        };
        let key = (ts, channel);
        if t.frame.is_some() && key <= t.last_key {
            self.counts.repeated_readings += 1;
            return;
        }
        let next_frame = match t.frame {
            Some(f) => ts > f.last_ts,
            None => true,
        };
        if next_frame {
            let Some(g) = ledger.frame_of_after(t.index, ts, t.frame.map(|f| f.index)) else {
                self.counts.unexpected_readings += 1;
                return;
            };
            let missed = match t.frame {
                // The rest of the previous frame, then every frame in between.
                Some(f) => (f.cum - f.before).saturating_sub(t.seen) + (g.before - f.cum),
                None => {
                    // Frames sent after the subscription must all arrive; earlier ones may.
                    let from = ledger
                        .first_after(t.index, self.subscribed_at_us)
                        .filter(|f| f.index < g.index);
                    let start = from.map_or(g.before, |f| f.before);
                    t.start_before = Some(start);
                    g.before - start
                }
            };
            if missed > 0 {
                self.counts.reading_holes += 1;
                self.counts.readings_missed += missed;
            }
            t.frame = Some(g);
            t.seen = 0;
        }
        t.seen += 1;
        t.last_key = key;
        if ts >= self.latency_from_us && t.frame.is_some_and(|f| f.last_ts == ts) {
            let us = now_us.saturating_sub(ts).max(1) as u64;
            let _ = self.latency.record(us.min(MAX_LATENCY_US));
        }
    }

    /// Whether every reading the devices sent that this client must get has arrived (call once
    /// the devices stopped sending).
    pub fn complete(&self, ledger: &Ledger) -> bool {
        self.tracks.values().all(|t| {
            let (_, total) = ledger.totals(t.index);
            match t.frame {
                Some(f) => f.before + t.seen >= total,
                None => ledger.first_after(t.index, self.subscribed_at_us).is_none(),
            }
        })
    }

    /// Ends the check: readings sent and never received count as missed (call once the devices
    /// stopped sending and the client stopped receiving).
    pub fn finish(&mut self, ledger: &Ledger) {
        for t in self.tracks.values_mut() {
            let (_, total) = ledger.totals(t.index);
            let (start, got_to) = match t.frame {
                Some(f) => (t.start_before.unwrap_or(f.before), f.before + t.seen),
                None => {
                    let start = ledger
                        .first_after(t.index, self.subscribed_at_us)
                        .map_or(total, |f| f.before);
                    (start, start)
                }
            };
            self.counts.readings_expected += total.saturating_sub(start);
            let tail = total.saturating_sub(got_to);
            if tail > 0 {
                self.counts.reading_holes += 1;
                self.counts.readings_missed += tail;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Device 1 sends 3 frames of 2 readings (channels 1, 2) at 100/200, 300/400, 500/600 us.
    fn ledger() -> Ledger {
        let l = Ledger::new(1, 1);
        for last in [200, 400, 600] {
            l.record(0, last, 2);
        }
        l
    }

    fn feed(c: &mut Checker, l: &Ledger, readings: &[(u16, i64)]) {
        for &(ch, ts) in readings {
            c.on_reading(l, 1, ch, ts, ts + 1000);
        }
    }

    #[test]
    fn a_complete_stream_has_no_gap_nor_duplicate_and_one_latency_per_frame() {
        let l = ledger();
        let mut c = Checker::new(&l, &[1], 0, None, false);
        feed(
            &mut c,
            &l,
            &[(1, 100), (2, 200), (1, 300), (2, 400), (1, 500), (2, 600)],
        );
        assert!(c.complete(&l));
        c.finish(&l);
        assert_eq!(c.counts.readings_received, 6);
        assert_eq!(c.counts.readings_expected, 6);
        assert_eq!((c.counts.gaps(), c.counts.duplicates()), (0, 0));
        assert_eq!(c.latency.len(), 3);
        assert!(
            c.latency.equivalent(c.latency.max(), 1000),
            "max is 1000 us (within the histogram's precision)"
        );
    }

    #[test]
    fn frames_sent_during_the_warm_up_are_checked_but_not_timed() {
        let l = ledger();
        let mut c = Checker::new(&l, &[1], 0, None, false);
        c.latency_from_us = 300;
        feed(
            &mut c,
            &l,
            &[(1, 100), (2, 200), (1, 300), (2, 400), (1, 500), (2, 600)],
        );
        c.finish(&l);
        assert_eq!(c.counts.readings_received, 6, "every reading still checked");
        assert_eq!(c.counts.gaps(), 0);
        assert_eq!(c.latency.len(), 2, "frames ending at 400 and 600 only");
    }

    #[test]
    fn holes_duplicates_and_reordering_are_counted() {
        let l = ledger();
        let mut c = Checker::new(&l, &[1], 0, None, false);
        // Frame 2 lost entirely, frame 1 missing its second reading, one repeat, one backwards.
        feed(
            &mut c,
            &l,
            &[(1, 100), (1, 100), (1, 500), (1, 300), (2, 600)],
        );
        c.finish(&l);
        assert_eq!(c.counts.readings_missed, 3);
        assert_eq!(c.counts.reading_holes, 1);
        assert_eq!(c.counts.repeated_readings, 2);
        assert_eq!(c.counts.readings_expected, 6);
    }

    #[test]
    fn frames_before_the_subscription_may_be_missed_later_ones_not() {
        let l = ledger();
        // Subscribed at 250: frame 0 (sent at 200) may be missing, frames 1 and 2 must come.
        let mut c = Checker::new(&l, &[1], 250, None, false);
        feed(&mut c, &l, &[(1, 500), (2, 600)]);
        c.finish(&l);
        assert_eq!(c.counts.readings_expected, 4);
        assert_eq!(c.counts.readings_missed, 2, "frame 1 never came");
        let mut c = Checker::new(&l, &[1], 250, None, false);
        c.finish(&l);
        assert_eq!(c.counts.readings_missed, 4, "nothing came");
    }

    #[test]
    fn positions_must_increase_and_be_contiguous_for_all_device_clients() {
        let l = ledger();
        let mut c = Checker::new(&l, &[1], 0, Some(10), true);
        c.on_position(12, 2, false);
        c.on_position(15, 2, false); // 13 missing
        c.on_position(15, 1, false); // not above 15
        assert_eq!(c.counts.position_holes, 1);
        assert_eq!(c.counts.positions_backwards, 1);
    }
}
