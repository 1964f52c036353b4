//! Per-device duplicate detection: a high-water mark plus a sliding bitmap of the last W sequence
//! numbers (the anti-replay window of IPsec, RFC 4303 section 3.4.3), so frames re-sent after a
//! reconnect or redelivered out of order by a broker are recognised without remembering every
//! sequence ever seen.

/// Default window size in sequence numbers.
pub const DEFAULT_WINDOW: u32 = 1024;

/// What the window says about a sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Never seen: store it.
    New,
    /// Seen before (stored, or queued to be stored): acknowledge again, store nothing.
    Duplicate,
    /// Older than the window: the server cannot tell whether it was stored, so it refuses it.
    TooOld {
        /// Lowest sequence the window still covers.
        lowest: u64,
    },
}

/// Dedup state of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DedupWindow {
    /// Highest sequence seen (0: none yet).
    high: u64,
    /// Bit i (of word i/64) set: sequence `high - i` was seen. Bit 0 is `high` itself.
    bits: Box<[u64]>,
}

impl DedupWindow {
    /// An empty window covering `size` sequence numbers (rounded up to a multiple of 64, at least 64).
    pub fn new(size: u32) -> Self {
        let words = (size.max(1) as usize).div_ceil(64);
        DedupWindow {
            high: 0,
            bits: vec![0; words].into_boxed_slice(),
        }
    }

    /// Number of sequence numbers covered.
    pub fn size(&self) -> u64 {
        self.bits.len() as u64 * 64
    }

    /// Highest sequence seen (0 if none).
    pub fn high_water(&self) -> u64 {
        self.high
    }

    /// Classifies `seq` without changing the window.
    pub fn check(&self, seq: u64) -> Verdict {
        if seq > self.high {
            return Verdict::New;
        }
        let back = self.high - seq;
        if back >= self.size() {
            return Verdict::TooOld {
                lowest: self.high.saturating_sub(self.size() - 1).max(1),
            };
        }
        if self.bit(back) {
            Verdict::Duplicate
        } else {
            Verdict::New
        }
    }

    /// Records `seq` as seen. Returns the verdict `check` would have given.
    pub fn insert(&mut self, seq: u64) -> Verdict {
        let verdict = self.check(seq);
        if verdict != Verdict::New {
            return verdict;
        }
        if seq > self.high {
            self.shift(seq - self.high);
            self.high = seq;
        }
        let back = self.high - seq;
        self.bits[(back / 64) as usize] |= 1 << (back % 64);
        verdict
    }

    fn bit(&self, back: u64) -> bool {
        self.bits[(back / 64) as usize] & (1 << (back % 64)) != 0
    }

    /// Moves every bit `by` positions further back (older), dropping what falls off the end.
    fn shift(&mut self, by: u64) {
        let n = self.bits.len();
        if by >= self.size() {
            self.bits.iter_mut().for_each(|w| *w = 0);
            return;
        }
        let words = (by / 64) as usize;
        let bits = (by % 64) as u32;
        for i in (0..n).rev() {
            let src = i.checked_sub(words);
            let hi = src.map_or(0, |s| self.bits[s]);
            let lo = src
                .and_then(|s| s.checked_sub(1))
                .map_or(0, |s| self.bits[s]);
            self.bits[i] = if bits == 0 {
                hi
            } else {
                (hi << bits) | (lo >> (64 - bits))
            };
        }
    }

    /// Serialized form for storage: high-water mark (8 bytes LE) then the bitmap words (LE).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.bits.len() * 8);
        out.extend_from_slice(&self.high.to_le_bytes());
        for w in self.bits.iter() {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Restores a window saved by [`to_bytes`](Self::to_bytes), resized to `size` (a smaller
    /// window keeps the newest part). `None` if the bytes are malformed.
    pub fn from_bytes(bytes: &[u8], size: u32) -> Option<Self> {
        if bytes.len() < 8 || !(bytes.len() - 8).is_multiple_of(8) {
            return None;
        }
        let high = u64::from_le_bytes(bytes[..8].try_into().ok()?);
        let mut w = DedupWindow::new(size);
        w.high = high;
        for (i, chunk) in bytes[8..].chunks_exact(8).enumerate().take(w.bits.len()) {
            w.bits[i] = u64::from_le_bytes(chunk.try_into().ok()?);
        }
        Some(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_duplicate_and_too_old() {
        let mut w = DedupWindow::new(64);
        assert_eq!(w.insert(1), Verdict::New);
        assert_eq!(w.insert(1), Verdict::Duplicate);
        assert_eq!(w.insert(3), Verdict::New);
        assert_eq!(w.check(2), Verdict::New, "a gap stays fillable");
        assert_eq!(w.insert(2), Verdict::New);
        assert_eq!(w.insert(2), Verdict::Duplicate);
        assert_eq!(w.insert(100), Verdict::New);
        assert_eq!(
            w.check(37),
            Verdict::New,
            "37 is the lowest covered and was never seen"
        );
        assert_eq!(w.check(36), Verdict::TooOld { lowest: 37 });
        assert_eq!(w.check(3), Verdict::TooOld { lowest: 37 });
    }

    #[test]
    fn shifting_across_words_keeps_bits() {
        let mut w = DedupWindow::new(256);
        for s in [10u64, 11, 75, 140, 141] {
            w.insert(s);
        }
        w.insert(200);
        for s in [10u64, 11, 75, 140, 141, 200] {
            assert_eq!(w.check(s), Verdict::Duplicate, "seq {s}");
        }
        for s in [12u64, 74, 76, 139, 199] {
            assert_eq!(w.check(s), Verdict::New, "seq {s}");
        }
        w.insert(10 + 256);
        assert_eq!(w.check(10), Verdict::TooOld { lowest: 11 });
        assert_eq!(w.check(11), Verdict::Duplicate);
    }

    #[test]
    fn matches_a_naive_model() {
        // A deterministic pseudo-random walk of sequence numbers against a set-based model.
        let mut w = DedupWindow::new(128);
        let mut seen = std::collections::BTreeSet::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut top = 1u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            top += x % 4;
            let seq = top.saturating_sub(x % 160).max(1);
            let high = seen.last().copied().unwrap_or(0);
            let model = if seq > high {
                Verdict::New
            } else if high - seq >= 128 {
                Verdict::TooOld {
                    lowest: (high - 127).max(1),
                }
            } else if seen.contains(&seq) {
                Verdict::Duplicate
            } else {
                Verdict::New
            };
            assert_eq!(w.insert(seq), model, "seq {seq}");
            if model == Verdict::New {
                seen.insert(seq);
            }
        }
    }

    #[test]
    fn bytes_round_trip() {
        let mut w = DedupWindow::new(1024);
        for s in [5u64, 900, 1000, 1001] {
            w.insert(s);
        }
        let back = DedupWindow::from_bytes(&w.to_bytes(), 1024).expect("valid bytes");
        assert_eq!(back, w);
        assert!(DedupWindow::from_bytes(&[1, 2, 3], 1024).is_none());
    }
}
