//! The shared log of live readings: a ring of fixed-size chunks in which reading number `n` of
//! this server run sits at stream position `start + n`. Positions are consecutive, so an entry
//! stores no position and a position is found by arithmetic. The log is bounded by time (the
//! resume window, by arrival) and by bytes; eviction removes the oldest readings and remembers,
//! in coarse checkpoints, which reading times the evicted positions covered (for `gap`
//! messages).
//!
//! # Per-device index
//!
//! Every entry also links back to the previous entry of the same device (a distance in
//! positions), and the log keeps each device's newest position. A client watching a few devices
//! walks those chains back from the newest entry to its cursor ([`Log::collect_devices`]) and
//! visits only its devices' readings: the cost of a step is the readings it delivers plus one
//! lookup per watched device, not every reading published since the cursor.

use std::collections::VecDeque;
use std::sync::Arc;

use codecs::LiveRecord;
use rustc_hash::FxHashMap;

/// Readings per chunk: memory is allocated and released a chunk at a time.
pub const CHUNK_ENTRIES: usize = 4096;
/// Bytes one reading occupies in the log: the wire record, its arrival tick and its link to the
/// previous reading of the same device.
pub const ENTRY_BYTES: usize = LiveRecord::SIZE + 2 * std::mem::size_of::<u32>();
/// Bytes of one chunk.
pub const CHUNK_BYTES: usize = CHUNK_ENTRIES * ENTRY_BYTES;
/// Checkpoints kept about evicted readings (each covers about one chunk of positions): 16384
/// checkpoints describe the last 67M evicted readings in 512 KiB.
const MAX_CHECKPOINTS: usize = 16_384;
/// Most chunks the log holds, so that any two held positions are less than `u32::MAX` apart and
/// a link fits in a u32 (about 150 GiB of readings: no real bound is affected).
const MAX_CHUNKS: usize = (u32::MAX as usize - 1) / CHUNK_ENTRIES;
/// Link value: the device has no earlier reading in this run.
const LINK_NONE: u32 = 0;
/// Link value: the device's earlier reading is further back than a u32 reaches (long evicted).
const LINK_FAR: u32 = u32::MAX;

/// Arrival time unit of log entries: ticks of 100 ms since the hub started (u32: 13 years).
pub const TICK_MS: u64 = 100;

/// A full chunk: immutable, shared with readers (a reader clones the `Arc` under the lock and
/// scans without it, so a long scan never holds up publishers).
struct Sealed {
    /// The readings as sent on the wire, so a contiguous range encodes by copying.
    records: Arc<[LiveRecord]>,
    /// Arrival tick of each record (non-decreasing).
    at: Box<[u32]>,
    /// Per record: distance in positions back to the previous record of the same device
    /// ([`LINK_NONE`], [`LINK_FAR`] are special).
    links: Box<[u32]>,
}

/// What [`Log::collect_devices`] found besides the readings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    /// More readings than the limit wait (the collection stopped early).
    pub over_limit: bool,
    /// Some reading of a listed device after the cursor was already evicted.
    pub lost: bool,
}

/// What is known about a run of evicted positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Checkpoint {
    /// First evicted position covered.
    first: u64,
    /// Last evicted position covered.
    last: u64,
    /// Oldest reading time among them (us).
    min_ts: i64,
    /// Newest reading time among them (us).
    max_ts: i64,
}

/// Readings a client can no longer get from the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lost {
    /// First missing position.
    pub from_position: u64,
    /// Last missing position.
    pub to_position: u64,
    /// Oldest reading time in the range, if known (unknown for positions of an earlier run).
    pub from_ts_us: Option<i64>,
    /// Newest reading time in the range, if known.
    pub to_ts_us: Option<i64>,
}

/// A range of the log taken out of the lock: shared full chunks plus a copy of the part of the
/// open chunk in range.
pub struct View {
    /// `(position of the first record, chunk, start, end)`: records `chunk[start..end]`.
    sealed: Vec<(u64, Arc<[LiveRecord]>, usize, usize)>,
    /// Position of `open[0]`.
    open_first: u64,
    /// Copied records of the open chunk.
    open: Vec<LiveRecord>,
}

impl View {
    /// Contiguous runs, oldest first, each with the position of its first record.
    pub fn runs(&self) -> impl Iterator<Item = (u64, &[LiveRecord])> + '_ {
        self.sealed
            .iter()
            .map(|(p, c, s, e)| (*p, &c[*s..*e]))
            .chain((!self.open.is_empty()).then_some((self.open_first, &self.open[..])))
    }

    /// Every record with its position, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &LiveRecord)> + '_ {
        self.runs().flat_map(|(first, run)| {
            run.iter()
                .enumerate()
                .map(move |(i, r)| (first + i as u64, r))
        })
    }
}

/// The ring of readings (not synchronised; the hub wraps it in a lock).
pub struct Log {
    /// Full chunks, oldest first.
    sealed: VecDeque<Sealed>,
    /// The chunk being filled (after the sealed ones).
    open_records: Vec<LiveRecord>,
    /// Arrival ticks of `open_records`.
    open_at: Vec<u32>,
    /// Links of `open_records` (see [`Sealed::links`]).
    open_links: Vec<u32>,
    /// Newest position of each device that published in this run (the heads of the per-device
    /// chains; one entry per device, kept after eviction so a lost reading is still detected).
    newest: FxHashMap<u64, u64>,
    /// Position of the first slot of the first chunk (sealed or open).
    base: u64,
    /// Slots of the first chunk already evicted.
    skip: usize,
    /// Newest position given out (`start` while the log never held a reading).
    head: u64,
    /// Head at creation: positions of this run are greater.
    start: u64,
    /// Checkpoints of evicted positions, oldest first.
    checkpoints: VecDeque<Checkpoint>,
    /// Entries older than this many ticks are evicted.
    window_ticks: u32,
    /// Most chunks held (sealed + open).
    max_chunks: usize,
}

impl Log {
    /// An empty log whose first reading gets position `start + 1`.
    pub fn new(start: u64, window_ticks: u32, max_bytes: usize) -> Log {
        Log {
            sealed: VecDeque::new(),
            open_records: Vec::new(),
            open_at: Vec::new(),
            open_links: Vec::new(),
            newest: FxHashMap::default(),
            base: start + 1,
            skip: 0,
            head: start,
            start,
            checkpoints: VecDeque::new(),
            window_ticks,
            max_chunks: (max_bytes / CHUNK_BYTES).clamp(2, MAX_CHUNKS),
        }
    }

    /// Newest position given out (the position before this run's first reading if none).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The position before this run's first reading (the server's start time in us).
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Oldest position still held (`head + 1` when empty).
    pub fn oldest(&self) -> u64 {
        self.base + self.skip as u64
    }

    /// Readings held.
    pub fn len(&self) -> usize {
        (self.head + 1 - self.oldest()) as usize
    }

    /// Whether no reading is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes allocated for readings.
    pub fn bytes(&self) -> usize {
        let open = if self.open_records.capacity() > 0 {
            1
        } else {
            0
        };
        (self.sealed.len() + open) * CHUNK_BYTES
    }

    /// Appends a reading that arrived at `tick`; returns its position.
    pub fn push(&mut self, record: LiveRecord, tick: u32) -> u64 {
        let position = self.head + 1;
        let previous = self.newest.insert(record.device_id.get(), position);
        self.push_linked(record, tick, previous)
    }

    /// Appends one device's readings (all with that `device_id`) that arrived at `tick`;
    /// returns the first and last positions given, if any. One index update per call.
    pub fn push_device(
        &mut self,
        device: u64,
        records: &[LiveRecord],
        tick: u32,
    ) -> Option<(u64, u64)> {
        let first = self.head + 1;
        let last = self.head + records.len() as u64;
        let (head, rest) = records.split_first()?;
        debug_assert!(records.iter().all(|r| r.device_id.get() == device));
        let previous = self.newest.insert(device, last);
        self.push_linked(*head, tick, previous);
        for r in rest {
            let p = self.head;
            self.push_linked(*r, tick, Some(p));
        }
        Some((first, last))
    }

    /// Appends a record whose device's previous reading sits at `previous`.
    fn push_linked(&mut self, record: LiveRecord, tick: u32, previous: Option<u64>) -> u64 {
        if self.open_records.len() == CHUNK_ENTRIES {
            let records: Arc<[LiveRecord]> = Arc::from(std::mem::take(&mut self.open_records));
            let at = std::mem::take(&mut self.open_at).into_boxed_slice();
            let links = std::mem::take(&mut self.open_links).into_boxed_slice();
            self.sealed.push_back(Sealed { records, at, links });
        }
        if self.open_records.capacity() == 0 {
            self.open_records.reserve_exact(CHUNK_ENTRIES);
            self.open_at.reserve_exact(CHUNK_ENTRIES);
            self.open_links.reserve_exact(CHUNK_ENTRIES);
        }
        let position = self.head + 1;
        let link = match previous {
            None => LINK_NONE,
            Some(p) => u32::try_from(position - p)
                .ok()
                .filter(|&d| d != LINK_FAR)
                .unwrap_or(LINK_FAR),
        };
        self.open_records.push(record);
        self.open_at.push(tick);
        self.open_links.push(link);
        self.head = position;
        position
    }

    /// Records and ticks of the first chunk (sealed or open).
    fn first_chunk(&self) -> (&[LiveRecord], &[u32]) {
        match self.sealed.front() {
            Some(s) => (&s.records, &s.at),
            None => (&self.open_records, &self.open_at),
        }
    }

    /// Evicts what is past the byte bound, then what is older than the window at `now_tick`;
    /// returns how many readings were evicted.
    pub fn evict(&mut self, now_tick: u32) -> u64 {
        let mut evicted = 0u64;
        while self.sealed.len() + 1 > self.max_chunks {
            let n = self.first_chunk().0.len() - self.skip;
            self.evict_front(n);
            evicted += n as u64;
        }
        let cutoff = now_tick.saturating_sub(self.window_ticks);
        loop {
            let (records, at) = self.first_chunk();
            let n = at[self.skip..].partition_point(|&t| t < cutoff);
            if n == 0 {
                break;
            }
            let whole = self.skip + n == records.len();
            self.evict_front(n);
            evicted += n as u64;
            if !whole {
                break;
            }
        }
        evicted
    }

    /// Evicts the `n` oldest held readings of the first chunk.
    fn evict_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let (records, _) = self.first_chunk();
        let from = self.skip;
        let to = from + n;
        let first = self.base + from as u64;
        let (mut min_ts, mut max_ts) = (i64::MAX, i64::MIN);
        for r in &records[from..to] {
            min_ts = min_ts.min(r.ts_us.get());
            max_ts = max_ts.max(r.ts_us.get());
        }
        let chunk_len = records.len();
        let last = first + n as u64 - 1;
        match self.checkpoints.back_mut() {
            Some(cp) if cp.last + 1 == first && cp.last - cp.first < CHUNK_ENTRIES as u64 => {
                cp.last = last;
                cp.min_ts = cp.min_ts.min(min_ts);
                cp.max_ts = cp.max_ts.max(max_ts);
            }
            _ => {
                if self.checkpoints.len() == MAX_CHECKPOINTS {
                    self.checkpoints.pop_front();
                }
                self.checkpoints.push_back(Checkpoint {
                    first,
                    last,
                    min_ts,
                    max_ts,
                });
            }
        }
        self.skip = to;
        if self.skip == chunk_len && !self.sealed.is_empty() {
            self.sealed.pop_front();
            self.base += chunk_len as u64;
            self.skip = 0;
        } else if self.skip == CHUNK_ENTRIES {
            // The open chunk is full and entirely evicted: drop it, the next push opens another.
            self.open_records = Vec::new();
            self.open_at = Vec::new();
            self.open_links = Vec::new();
            self.base += CHUNK_ENTRIES as u64;
            self.skip = 0;
        }
    }

    /// The record at `position`, if held.
    pub fn get(&self, position: u64) -> Option<&LiveRecord> {
        self.entry(position).map(|(r, _)| r)
    }

    /// The record at `position` and its link, if held.
    #[inline]
    fn entry(&self, position: u64) -> Option<(&LiveRecord, u32)> {
        if position < self.oldest() || position > self.head {
            return None;
        }
        let i = (position - self.base) as usize;
        let (c, off) = (i / CHUNK_ENTRIES, i % CHUNK_ENTRIES);
        match self.sealed.get(c) {
            Some(s) => Some((s.records.get(off)?, *s.links.get(off)?)),
            None => Some((self.open_records.get(off)?, *self.open_links.get(off)?)),
        }
    }

    /// Appends to `out` every held reading of `devices` in positions `(after, head]` (per
    /// device newest first; callers sort by position), walking the per-device chains: the cost
    /// is the readings found plus one lookup per device. Stops once `out` grew by more than
    /// `limit` (`over_limit`). `lost` says a reading of one of the devices after `after` was
    /// evicted (the caller owes the client a `gap`).
    pub fn collect_devices(
        &self,
        devices: &[u64],
        after: u64,
        limit: usize,
        out: &mut Vec<(u64, LiveRecord)>,
    ) -> Walk {
        let mut walk = Walk::default();
        let oldest = self.oldest();
        let stop = out.len().saturating_add(limit);
        for d in devices {
            let Some(&newest) = self.newest.get(d) else {
                continue;
            };
            let mut p = newest;
            while p > after {
                let Some((record, link)) = self.entry(p) else {
                    // Positions after `after` but before the oldest held: evicted.
                    walk.lost = true;
                    break;
                };
                out.push((p, *record));
                if out.len() > stop {
                    walk.over_limit = true;
                    return walk;
                }
                match link {
                    LINK_NONE => break,
                    LINK_FAR => {
                        walk.lost |= after.saturating_add(1) < oldest;
                        break;
                    }
                    back => p -= u64::from(back),
                }
            }
        }
        walk
    }

    /// The held records in positions `(after, upto]`, taken out of the lock (cheap: full chunks
    /// are shared, only the open chunk's part is copied).
    pub fn view(&self, after: u64, upto: u64) -> View {
        let from = after.saturating_add(1).max(self.oldest());
        let to = upto.min(self.head);
        let open_first = self.base + (self.sealed.len() * CHUNK_ENTRIES) as u64;
        let mut view = View {
            sealed: Vec::new(),
            open_first,
            open: Vec::new(),
        };
        if from > to {
            return view;
        }
        let mut pos = from;
        while pos <= to && pos < open_first {
            let i = (pos - self.base) as usize;
            let Some(s) = self.sealed.get(i / CHUNK_ENTRIES) else {
                break;
            };
            let off = i % CHUNK_ENTRIES;
            let end = s.records.len().min(off + (to - pos + 1) as usize);
            view.sealed.push((pos, s.records.clone(), off, end));
            pos += (end - off) as u64;
        }
        if pos <= to {
            let off = (pos - open_first) as usize;
            let end = self.open_records.len().min(off + (to - pos + 1) as usize);
            if let Some(part) = self.open_records.get(off..end) {
                view.open_first = pos;
                view.open = part.to_vec();
            }
        }
        view
    }

    /// Positions `(after, upto]` and the time range of their readings: held readings are
    /// scanned, evicted ones come from the checkpoints (`lost_after`). `None` if empty.
    pub fn span(&self, after: u64, upto: u64) -> Option<Lost> {
        let upto = upto.min(self.head);
        if after >= upto {
            return None;
        }
        let evicted = self.lost_after(after);
        let mut min_ts = evicted.and_then(|l| l.from_ts_us);
        let mut max_ts = evicted.and_then(|l| l.to_ts_us);
        let evicted_unknown = evicted.is_some_and(|l| l.from_ts_us.is_none());
        for (_, r) in self.view(after, upto).iter() {
            let ts = r.ts_us.get();
            min_ts = Some(min_ts.map_or(ts, |m| m.min(ts)));
            max_ts = Some(max_ts.map_or(ts, |m| m.max(ts)));
        }
        Some(Lost {
            from_position: after + 1,
            to_position: upto,
            from_ts_us: if evicted_unknown { None } else { min_ts },
            to_ts_us: max_ts,
        })
    }

    /// What a client that has everything up to `after` can no longer get, if anything.
    pub fn lost_after(&self, after: u64) -> Option<Lost> {
        let oldest = self.oldest();
        if after >= self.head || after.saturating_add(1) >= oldest {
            return None;
        }
        let from = after + 1;
        let to = oldest - 1;
        let mut min_ts = None::<i64>;
        let mut max_ts = None::<i64>;
        let mut covered_from = None;
        for cp in self.checkpoints.iter().rev() {
            if cp.last < from {
                break;
            }
            min_ts = Some(min_ts.map_or(cp.min_ts, |m| m.min(cp.min_ts)));
            max_ts = Some(max_ts.map_or(cp.max_ts, |m| m.max(cp.max_ts)));
            covered_from = Some(cp.first);
        }
        // The oldest time is known only if the checkpoints cover the whole range (not for
        // positions of an earlier run, nor for ranges older than the checkpoints kept).
        let complete = from > self.start && covered_from.is_some_and(|f| f <= from);
        Some(Lost {
            from_position: from,
            to_position: to,
            from_ts_us: if complete { min_ts } else { None },
            to_ts_us: max_ts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(device: u64, ts: i64) -> LiveRecord {
        LiveRecord::new(device, 1, 0, ts, ts as f64)
    }

    #[test]
    fn positions_count_up_from_the_start() {
        let mut log = Log::new(1000, 10, 1 << 20);
        assert_eq!(log.head(), 1000);
        assert_eq!(log.oldest(), 1001);
        assert!(log.is_empty());
        assert_eq!(log.push(rec(1, 5), 0), 1001);
        assert_eq!(log.push(rec(1, 6), 0), 1002);
        assert_eq!(log.get(1002).map(|r| r.ts_us.get()), Some(6));
        assert_eq!(log.get(1000), None);
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn runs_cover_exactly_the_requested_range_across_chunks() {
        let mut log = Log::new(0, 10, 1 << 24);
        for i in 0..(CHUNK_ENTRIES as i64 * 2 + 10) {
            log.push(rec(1, i), 0);
        }
        let got: Vec<i64> = log
            .view(CHUNK_ENTRIES as u64 - 5, CHUNK_ENTRIES as u64 + 5)
            .iter()
            .map(|(_, x)| x.ts_us.get())
            .collect();
        let want: Vec<i64> = (CHUNK_ENTRIES as i64 - 5..CHUNK_ENTRIES as i64 + 5).collect();
        assert_eq!(got, want);
        assert_eq!(log.view(0, 0).iter().count(), 0);
        let tail: Vec<u64> = log
            .view(2 * CHUNK_ENTRIES as u64 + 5, u64::MAX)
            .iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(
            tail,
            (2 * CHUNK_ENTRIES as u64 + 6..=2 * CHUNK_ENTRIES as u64 + 10).collect::<Vec<_>>()
        );
    }

    #[test]
    fn time_eviction_remembers_what_was_lost() {
        let mut log = Log::new(100, 10, 1 << 24);
        for i in 0..5 {
            log.push(rec(1, 1_000 + i), 0);
        }
        for i in 0..5 {
            log.push(rec(1, 2_000 + i), 20);
        }
        assert_eq!(log.evict(25), 5);
        assert_eq!(log.oldest(), 106);
        let lost = log.lost_after(102).expect("lost");
        assert_eq!((lost.from_position, lost.to_position), (103, 105));
        assert_eq!((lost.from_ts_us, lost.to_ts_us), (Some(1_000), Some(1_004)));
        assert_eq!(
            log.lost_after(105),
            None,
            "nothing lost after the newest evicted"
        );
        let before_restart = log.lost_after(50).expect("lost");
        assert_eq!(
            before_restart.from_ts_us, None,
            "unknown for an earlier run"
        );
        assert_eq!(before_restart.from_position, 51);
    }

    #[test]
    fn byte_bound_evicts_whole_chunks_and_an_emptied_log_continues_positions() {
        let mut log = Log::new(0, u32::MAX, 2 * CHUNK_BYTES);
        for i in 0..(CHUNK_ENTRIES * 3) as i64 {
            log.push(rec(1, i), 0);
        }
        log.evict(0);
        assert!(log.bytes() <= 2 * CHUNK_BYTES);
        assert_eq!(log.oldest(), CHUNK_ENTRIES as u64 + 1);
        let mut small = Log::new(0, 1, 1 << 20);
        small.push(rec(1, 1), 0);
        small.evict(10);
        assert!(small.is_empty());
        assert_eq!(small.push(rec(1, 2), 10), 2);
        assert_eq!(small.get(2).map(|r| r.ts_us.get()), Some(2));
        assert_eq!(small.oldest(), 2);
    }
}
