//! Finding a client's next readings and making them one data frame: by the log's per-device
//! chains for a client watching a few devices, by scanning for the others. Several device frames
//! that wait for the client go into one frame (up to `max_batch_readings`); a frame holding a
//! contiguous run of positions is encoded once and its `Bytes` shared by every client sending
//! the same run (the hub's encode cache).

use bytes::Bytes;
use codecs::{FrameFlag, LiveRecord};
use tokio::time::Instant;

use super::{Outbound, SCAN_LIMIT, Session, Step};
use crate::filter::Resolved;
use crate::hub::{CacheKey, Format};
use crate::protocol;

/// Capacity of a client's chain-walk scratch kept between steps: a client that once fell far
/// behind does not keep a backlog-sized buffer for the rest of its connection.
const FOUND_KEEP: usize = 256;

impl Session {
    /// Most unsent readings the client may have before its policies apply.
    fn backlog_bound(&self) -> usize {
        let per = self.format.reading_bytes();
        self.limits
            .max_backlog_readings
            .min(self.limits.max_backlog_bytes / per)
            .max(1)
    }

    /// The next step of a client watching a few devices: walk their chains from the newest
    /// reading back to the cursor (only their readings are visited).
    pub(super) fn next_chained(&mut self, devices: &[u64], now: Instant) -> Step {
        let cursor = self.cursor;
        let bound = self.backlog_bound();
        let mut found = std::mem::take(&mut self.found);
        found.clear();
        let (head, walk) = self.hub.with_log(|log| {
            (
                log.head(),
                log.collect_devices(devices, cursor, bound, &mut found),
            )
        });
        if walk.lost || walk.over_limit {
            found.clear();
            found.shrink_to(FOUND_KEEP);
            self.found = found;
            // A watched device's reading was evicted (a gap first), or too many wait.
            let lost = walk
                .lost
                .then(|| self.hub.with_log(|log| log.lost_after(cursor)))
                .flatten();
            return self.overflow(lost, now);
        }
        // Each device's readings come newest first: one device (the usual wake-up) only needs
        // reversing; several need sorting.
        if found.is_sorted_by(|a, b| a.0 > b.0) {
            found.reverse();
        } else {
            found.sort_unstable_by_key(|(p, _)| *p);
        }
        if self.subs.iter().any(|s| s.start > cursor) {
            // A subscription made after a resume starts later than the cursor.
            found.retain(|(p, r)| self.classify(*p, r.device_id.get()).is_some());
        }
        let batch = self.limits.max_batch_readings;
        let take = found.len().min(batch);
        // Everything up to the head was collected, so the cursor may pass positions of other
        // devices: up to the head when all was taken, else up to the last reading taken.
        let upto = if found.len() > batch {
            found[batch - 1].0
        } else {
            head
        };
        self.scratch.clear();
        self.scratch.extend(found[..take].iter().map(|(_, r)| *r));
        let run = found.first().zip(found.get(take.wrapping_sub(1)));
        let run = run.map(|((first, _), (last, _))| (*first, *last));
        found.clear();
        found.shrink_to(FOUND_KEEP);
        self.found = found;
        self.finish_step(run, upto, head)
    }

    /// The next step of a client watching every device or many devices: scan the log after the
    /// cursor (at most [`SCAN_LIMIT`] entries per step).
    pub(super) fn next_scanned(&mut self, now: Instant) -> Step {
        let cursor = self.cursor;
        let (head, view_end, lost, view) = self.hub.with_log(|log| {
            let head = log.head();
            let upto = head.min(cursor.saturating_add(SCAN_LIMIT));
            (head, upto, log.lost_after(cursor), log.view(cursor, upto))
        });
        if self.cursor >= head {
            self.caught_up();
            return Step::Idle;
        }
        if lost.is_some() {
            return self.overflow(lost, now);
        }
        let bound = self.backlog_bound();
        let batch = self.limits.max_batch_readings;
        let everything = self
            .subs
            .iter()
            .any(|s| s.set == Resolved::All && s.start <= self.cursor);
        if everything && head - self.cursor > bound as u64 {
            return self.overflow(None, now);
        }
        self.scratch.clear();
        let mut matches = 0usize;
        let mut scanned_to = self.cursor;
        let mut first_in_batch = None;
        let mut last_in_batch = self.cursor;
        for (p, r) in view.iter() {
            if !everything && self.classify(p, r.device_id.get()).is_none() {
                scanned_to = p;
                continue;
            }
            matches += 1;
            if matches > bound {
                return self.overflow(None, now);
            }
            if self.scratch.len() < batch {
                self.scratch.push(*r);
                first_in_batch.get_or_insert(p);
                last_in_batch = p;
                scanned_to = p;
            } else if everything {
                break; // the backlog bound was checked arithmetically above
            }
        }
        // Everything scanned that was not put in this frame is taken up again next time.
        let upto = if self.scratch.len() == batch && matches > batch {
            last_in_batch
        } else {
            view_end.max(scanned_to)
        };
        self.finish_step(first_in_batch.map(|f| (f, last_in_batch)), upto, head)
    }

    /// Sends `scratch` (readings from `run.0` to `run.1`) as one frame and moves the cursor to
    /// `upto`; with nothing to send, only moves the cursor.
    fn finish_step(&mut self, run: Option<(u64, u64)>, upto: u64, head: u64) -> Step {
        let Some((first, last)) = run.filter(|_| !self.scratch.is_empty()) else {
            self.cursor = self.cursor.max(upto);
            if self.cursor >= head {
                self.caught_up();
                return Step::Idle;
            }
            return Step::Progress;
        };
        let contiguous = last - first + 1 == self.scratch.len() as u64;
        let key = contiguous.then_some(CacheKey {
            first,
            last,
            format: self.format,
        });
        let bytes = match key.as_ref().and_then(|k| self.hub.cached(k)) {
            Some(b) => b,
            None => {
                let b = encode(self.format, last, 0, &self.scratch);
                if let Some(k) = key {
                    self.hub.cache(k, b.clone());
                }
                b
            }
        };
        self.count_sent(self.scratch.len());
        self.cursor = upto;
        if self.cursor >= head {
            self.caught_up();
        }
        Step::Send(vec![Outbound::Data {
            position: last,
            format: self.format,
            bytes,
        }])
    }
}

/// Encodes one data frame whose last record sits at `position`.
pub fn encode(format: Format, position: u64, flags: u16, records: &[LiveRecord]) -> Bytes {
    match format {
        Format::Binary => {
            let mut out =
                Vec::with_capacity(codecs::Header::SIZE + records.len() * LiveRecord::SIZE);
            // At most `max_batch_readings` (validated <= 65535) records per frame.
            if codecs::encode_live(&mut out, position, flags, records).is_err() {
                out.clear();
            }
            Bytes::from(out)
        }
        Format::Json => protocol::readings_json(
            position,
            flags & FrameFlag::Coalesced as u16 != 0,
            records.iter().copied(),
        ),
    }
}
