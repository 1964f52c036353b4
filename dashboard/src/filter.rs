//! What a subscription selects, what a token grants, and the slow-consumer policies.
//!
//! Device ids are u64. Tags are free strings the server attaches to devices
//! ([`crate::Hub::set_tags`]); a tag pattern is either an exact tag (`site-a`) or a prefix ending
//! in `*` (`site-a/*` matches `site-a/line-1`). Token grants (`devices` in an operator token) are
//! `*` (every device), a device id (`42`), or `tag:<pattern>` (devices carrying a matching tag).

use std::collections::HashSet;

/// A set of device ids. FxHash instead of SipHash: membership is tested for every reading every
/// client scans (the fan-out hot path), and the keys come from operators' subscriptions, not from
/// untrusted input that could be chosen to collide.
pub type IdSet = HashSet<u64, rustc_hash::FxBuildHasher>;
use std::sync::Arc;

/// A tag or a tag prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TagPattern {
    /// The tag, or the prefix before the trailing `*`.
    prefix: String,
    /// Whether the whole tag must equal `prefix` (no trailing `*`).
    exact: bool,
}

impl TagPattern {
    /// Parses `tag` or `prefix*`; `None` when empty or when `*` appears before the end.
    pub fn parse(s: &str) -> Option<TagPattern> {
        let s = s.trim();
        let (prefix, exact) = match s.strip_suffix('*') {
            Some(p) => (p, false),
            None => (s, true),
        };
        if s.is_empty() || prefix.contains('*') {
            return None;
        }
        Some(TagPattern {
            prefix: prefix.to_string(),
            exact,
        })
    }

    /// Whether `tag` matches.
    pub fn matches(&self, tag: &str) -> bool {
        if self.exact {
            tag == self.prefix
        } else {
            tag.starts_with(&self.prefix)
        }
    }

    /// Whether every tag `other` matches is matched by `self` too.
    pub fn covers(&self, other: &TagPattern) -> bool {
        if self.exact {
            other.exact && other.prefix == self.prefix
        } else {
            other.prefix.starts_with(&self.prefix)
        }
    }
}

impl std::fmt::Display for TagPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.prefix)?;
        if !self.exact {
            f.write_str("*")?;
        }
        Ok(())
    }
}

/// What one subscription selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// Every device (`"devices": "*"`).
    All,
    /// These devices (sorted, no duplicates).
    Devices(Vec<u64>),
    /// Devices carrying a tag that matches.
    Tag(TagPattern),
}

impl Selector {
    /// The subscription kind used as a metric label.
    pub fn kind(&self) -> SubKind {
        match self {
            Selector::All => SubKind::All,
            Selector::Devices(ids) if ids.len() == 1 => SubKind::Device,
            Selector::Devices(_) => SubKind::Devices,
            Selector::Tag(_) => SubKind::Tag,
        }
    }
}

/// Kind of subscription, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubKind {
    /// One device id.
    Device,
    /// A list of device ids.
    Devices,
    /// Every device.
    All,
    /// A tag pattern.
    Tag,
}

impl SubKind {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            SubKind::Device => "device",
            SubKind::Devices => "devices",
            SubKind::All => "all",
            SubKind::Tag => "tag",
        }
    }
}

/// What happens to a subscription's readings when its client falls behind past its bound
/// (more unsent readings or bytes than `ClientLimits::max_backlog_*`). Chosen per subscription;
/// applied in exactly one place (`session::overflow`); every outcome is counted in metrics by
/// subscription kind and policy. A reading matching several subscriptions of one client gets the
/// strictest of their policies (`disconnect` > `drop_oldest` > `coalesce`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Policy {
    /// Keep only the newest value per (device, channel) of the backlog, send it in frames with
    /// the `COALESCED` flag, preceded by a `coalesced` message telling how many were dropped.
    /// For dashboards: the picture stays current, intermediate values are lost (and said so).
    #[default]
    Coalesce,
    /// Drop the oldest readings of the backlog, keep the newest frame's worth, and send a `gap`
    /// message with the dropped position range. For clients that backfill from the history API.
    DropOldest,
    /// Close the socket with 4009 "backlog overflow". For clients that must see every reading
    /// (they reconnect and resume, or backfill).
    Disconnect,
}

impl Policy {
    /// Parses the protocol name.
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "coalesce" => Some(Policy::Coalesce),
            "drop_oldest" => Some(Policy::DropOldest),
            "disconnect" => Some(Policy::Disconnect),
            _ => None,
        }
    }

    /// The protocol name (also the metric label).
    pub fn name(self) -> &'static str {
        match self {
            Policy::Coalesce => "coalesce",
            Policy::DropOldest => "drop_oldest",
            Policy::Disconnect => "disconnect",
        }
    }
}

/// A grant string of an operator token that is not `*`, an id or `tag:<pattern>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid device grant `{found}`: expected `*`, a device id, or `tag:<tag>` / `tag:<prefix>*`"
)]
pub struct GrantError {
    /// The refused grant.
    pub found: String,
}

/// What an operator token may watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grants {
    /// Every device.
    All,
    /// These device ids and the devices carrying these tags.
    Some {
        /// Granted ids.
        ids: IdSet,
        /// Granted tag patterns.
        tags: Vec<TagPattern>,
    },
}

impl Grants {
    /// Parses the `devices` claim of an operator token. An empty list grants nothing.
    pub fn parse<S: AsRef<str>>(grants: &[S]) -> Result<Grants, GrantError> {
        let mut ids = IdSet::default();
        let mut tags = Vec::new();
        for g in grants {
            let g = g.as_ref().trim();
            if g == "*" {
                return Ok(Grants::All);
            }
            if let Some(p) = g.strip_prefix("tag:") {
                tags.push(TagPattern::parse(p).ok_or_else(|| GrantError { found: g.into() })?);
            } else {
                ids.insert(g.parse().map_err(|_| GrantError { found: g.into() })?);
            }
        }
        Ok(Grants::Some { ids, tags })
    }

    /// Whether a device with these tags may be watched.
    pub fn allows(&self, device_id: u64, tags: &[String]) -> bool {
        match self {
            Grants::All => true,
            Grants::Some { ids, tags: grants } => {
                ids.contains(&device_id) || tags.iter().any(|t| grants.iter().any(|g| g.matches(t)))
            }
        }
    }

    /// Whether a subscription with this selector is within the grants (`tags_of` gives the
    /// current tags of a device). Delivery also filters by the grants, whatever tags do later.
    pub fn permits(&self, selector: &Selector, tags_of: impl Fn(u64) -> Arc<[String]>) -> bool {
        match (self, selector) {
            (Grants::All, _) => true,
            (Grants::Some { .. }, Selector::All) => false,
            (Grants::Some { .. }, Selector::Devices(d)) => {
                d.iter().all(|&id| self.allows(id, &tags_of(id)))
            }
            (Grants::Some { tags, .. }, Selector::Tag(p)) => tags.iter().any(|g| g.covers(p)),
        }
    }
}

/// The devices a subscription delivers right now (selector resolved against the current tags,
/// intersected with the grants).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Every device.
    All,
    /// These devices.
    Set(Arc<IdSet>),
}

impl Resolved {
    /// Whether the device is selected.
    #[inline]
    pub fn contains(&self, device_id: u64) -> bool {
        match self {
            Resolved::All => true,
            Resolved::Set(s) => s.contains(&device_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_tags(_: u64) -> Arc<[String]> {
        Arc::from(Vec::new())
    }

    #[test]
    fn tag_patterns_match_exactly_or_by_prefix() {
        let exact = TagPattern::parse("site-a").expect("pattern");
        let prefix = TagPattern::parse("site-*").expect("pattern");
        assert!(exact.matches("site-a") && !exact.matches("site-ab"));
        assert!(prefix.matches("site-a") && prefix.matches("site-b") && !prefix.matches("x"));
        assert!(prefix.covers(&exact) && !exact.covers(&prefix));
        assert!(TagPattern::parse("a*b").is_none() && TagPattern::parse("").is_none());
    }

    #[test]
    fn grants_parse_and_limit_selectors() {
        assert_eq!(Grants::parse(&["*"]), Ok(Grants::All));
        let g = Grants::parse(&["1", "2", "tag:line-*"]).expect("grants");
        assert!(g.permits(&Selector::Devices(vec![1, 2]), no_tags));
        assert!(!g.permits(&Selector::Devices(vec![1, 3]), no_tags));
        assert!(!g.permits(&Selector::All, no_tags));
        let tagged = |_| Arc::from(vec!["line-4".to_string()]);
        assert!(g.permits(&Selector::Devices(vec![9]), tagged));
        let line = TagPattern::parse("line-4").expect("pattern");
        assert!(g.permits(&Selector::Tag(line), no_tags));
        let site = TagPattern::parse("site").expect("pattern");
        assert!(!g.permits(&Selector::Tag(site), no_tags));
        assert!(Grants::parse(&["abc"]).is_err());
        assert!(Grants::parse(&["tag:"]).is_err());
    }

    #[test]
    fn policies_order_by_strictness() {
        assert!(Policy::Disconnect > Policy::DropOldest && Policy::DropOldest > Policy::Coalesce);
        for p in [Policy::Coalesce, Policy::DropOldest, Policy::Disconnect] {
            assert_eq!(Policy::parse(p.name()), Some(p));
        }
    }
}
