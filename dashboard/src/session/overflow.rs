//! The one place where the slow-consumer policies apply ([`crate::filter::Policy`]): what a
//! client over its backlog bound gets instead of the full backlog.

use std::collections::{HashMap, VecDeque};

use codecs::{FrameFlag, LiveRecord};
use tokio::time::Instant;

use super::batch::encode;
use super::{Outbound, Session, Step};
use crate::close;
use crate::filter::{Policy, SubKind};
use crate::log::{Lost, View};
use crate::metrics as m;
use crate::protocol::{self, GapReason};

impl Session {
    /// The one place where the slow-consumer policies apply: the client has more unsent
    /// readings than its bound (or the log already evicted some it had not received).
    ///
    /// Each backlog reading gets the strictest policy of the subscriptions that deliver it:
    /// `disconnect` closes with 4009; `coalesce` keeps the newest value per (device, channel)
    /// (at most `max_backlog_readings` pairs) and reports the rest in a `coalesced` message;
    /// `drop_oldest` keeps the newest `max_batch_readings` and reports the rest in a `gap`.
    /// Readings the log evicted before the client got them are reported in a `gap` first. The
    /// cursor moves to the head; the client counts as behind until it catches up again.
    pub(super) fn overflow(&mut self, lost: Option<Lost>, now: Instant) -> Step {
        self.behind_since.get_or_insert(now);
        let mut out = Vec::new();
        let all_ids: Vec<u64> = self.subs.iter().map(|s| s.id).collect();
        if let Some(lost) = lost {
            if let Some(s) = self.subs.iter().find(|s| s.policy == Policy::Disconnect) {
                return self.policy_disconnect(s.kind);
            }
            metrics::counter!(m::GAPS, "reason" => GapReason::SlowConsumer.name()).increment(1);
            out.push(Outbound::json(
                "gap",
                protocol::gap_event(GapReason::SlowConsumer, Some(lost), &all_ids, None),
            ));
            self.cursor = lost.to_position;
        }
        let cursor = self.cursor;
        let (head, view): (u64, View) = self
            .hub
            .with_log(|log| (log.head(), log.view(cursor, log.head())));
        let from = self.cursor + 1;
        let pairs_max = self.limits.max_backlog_readings;
        let tail_max = self.limits.max_batch_readings;
        // Newest per (device, channel) for coalesce: (position, record, subscription index).
        let mut newest: HashMap<(u64, u16), (u64, LiveRecord, usize)> = HashMap::new();
        let mut tail: VecDeque<(u64, LiveRecord, usize)> = VecDeque::new();
        let mut coalesced = vec![0u64; self.subs.len()];
        let mut dropped = vec![0u64; self.subs.len()];
        let mut drop_range: Option<(u64, u64, i64, i64)> = None;
        for (p, r) in view.iter() {
            let Some(i) = self.classify(p, r.device_id.get()) else {
                continue;
            };
            match self.subs[i].policy {
                Policy::Disconnect => return self.policy_disconnect(self.subs[i].kind),
                Policy::Coalesce => {
                    let key = (r.device_id.get(), r.channel.get());
                    if let Some(old) = newest.get_mut(&key) {
                        coalesced[old.2] += 1;
                        *old = (p, *r, i);
                    } else if newest.len() < pairs_max {
                        newest.insert(key, (p, *r, i));
                    } else {
                        coalesced[i] += 1;
                    }
                }
                Policy::DropOldest => {
                    tail.push_back((p, *r, i));
                    if tail.len() > tail_max
                        && let Some((dp, dr, di)) = tail.pop_front()
                    {
                        dropped[di] += 1;
                        let ts = dr.ts_us.get();
                        drop_range = Some(match drop_range {
                            None => (dp, dp, ts, ts),
                            Some((f, _, lo, hi)) => (f, dp, lo.min(ts), hi.max(ts)),
                        });
                    }
                }
            }
        }
        let coalesced_total: u64 = coalesced.iter().sum();
        let dropped_total: u64 = dropped.iter().sum();
        for (i, s) in self.subs.iter().enumerate() {
            let kind = s.kind.label();
            if coalesced[i] > 0 {
                metrics::counter!(m::OVERFLOWS, "kind" => kind, "policy" => "coalesce")
                    .increment(1);
                metrics::counter!(m::COALESCED_READINGS, "kind" => kind).increment(coalesced[i]);
            }
            if dropped[i] > 0 {
                metrics::counter!(m::OVERFLOWS, "kind" => kind, "policy" => "drop_oldest")
                    .increment(1);
                metrics::counter!(m::DROPPED_READINGS, "kind" => kind).increment(dropped[i]);
            }
        }
        let subs_of = |counts: &[u64]| -> Vec<u64> {
            self.subs
                .iter()
                .zip(counts)
                .filter(|(_, n)| **n > 0)
                .map(|(s, _)| s.id)
                .collect()
        };
        if coalesced_total > 0 {
            out.push(Outbound::json(
                "coalesced",
                protocol::coalesced_event(
                    coalesced_total,
                    newest.len() as u64,
                    from,
                    head,
                    &subs_of(&coalesced),
                ),
            ));
        }
        if let Some((f, t, lo, hi)) = drop_range {
            metrics::counter!(m::GAPS, "reason" => GapReason::DropOldest.name()).increment(1);
            let lost = Lost {
                from_position: f,
                to_position: t,
                from_ts_us: Some(lo),
                to_ts_us: Some(hi),
            };
            out.push(Outbound::json(
                "gap",
                protocol::gap_event(
                    GapReason::DropOldest,
                    Some(lost),
                    &subs_of(&dropped),
                    Some(dropped_total),
                ),
            ));
        }
        let mut kept: Vec<(u64, LiveRecord)> = newest
            .into_values()
            .map(|(p, r, _)| (p, r))
            .chain(tail.into_iter().map(|(p, r, _)| (p, r)))
            .collect();
        kept.sort_unstable_by_key(|(p, _)| *p);
        let flags = if coalesced_total > 0 {
            FrameFlag::Coalesced as u16
        } else {
            0
        };
        for part in kept.chunks(self.limits.max_batch_readings) {
            self.scratch.clear();
            self.scratch.extend(part.iter().map(|(_, r)| *r));
            let position = part.last().map_or(head, |(p, _)| *p);
            self.count_sent(part.len());
            out.push(Outbound::Data {
                position,
                format: self.format,
                bytes: encode(self.format, position, flags, &self.scratch),
            });
        }
        self.cursor = head;
        self.more = false;
        Step::Send(out)
    }

    fn policy_disconnect(&self, kind: SubKind) -> Step {
        metrics::counter!(m::OVERFLOWS, "kind" => kind.label(), "policy" => "disconnect")
            .increment(1);
        metrics::counter!(m::POLICY_DISCONNECTS, "kind" => kind.label()).increment(1);
        Step::Close(close::BACKLOG_OVERFLOW)
    }
}
