//! The hub: the one shared log of live readings, the latest value per (device, channel), device
//! presence and tags, the head position, the routing table that says which client tasks a
//! device's readings wake, and the cache of encoded frames that clients share.
//!
//! Publishing never blocks on clients and never waits for storage: it appends to the log under
//! a short write lock, updates the latest values, bumps the head position (a `watch`), and wakes
//! the clients routed to that device ([`crate::route`]); presence changes take the same route. Clients only hold a cursor (a
//! position); the data is stored once, and a frame is encoded once for all clients that send
//! the same positions.

use std::collections::HashMap;

use crate::filter::IdSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};

use bytes::Bytes;
use codecs::{LiveRecord, Reading};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::HubConfig;
use crate::filter::{Grants, Resolved, Selector};
use crate::log::{Log, TICK_MS};
use crate::metrics as m;
use crate::route::{Inbox, Interest, Routes};

/// Channels whose latest value is kept per device (for snapshots); more are not tracked.
const MAX_CHANNELS_PER_DEVICE: usize = 256;
/// Encoded frames kept per cache shard for sharing between clients that send the same positions.
const ENCODE_CACHE_SLOTS: usize = 16;
/// Shards of the encode cache (by last position), so client tasks on different cores rarely
/// contend for one lock.
const ENCODE_CACHE_SHARDS: usize = 8;

/// A device came online or went offline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresenceEvent {
    /// The device.
    pub device_id: u64,
    /// Connected now.
    pub online: bool,
    /// When it changed (us since the epoch).
    pub at_us: i64,
}

/// Newest reading of one channel, as kept for snapshots.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChannelLatest {
    /// Channel id.
    pub channel: u16,
    /// Stream position of the reading.
    pub position: u64,
    /// Reading time (us).
    pub ts_us: i64,
    /// Value.
    pub value: f64,
    /// Quality bits.
    pub quality: u16,
}

/// What the hub knows about one device.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceState {
    /// Connected now; `None` if the hub never heard of its connection.
    pub online: Option<bool>,
    /// When presence last changed (us since the epoch).
    pub since_us: Option<i64>,
    /// Newest reading per channel (by reading time), at most 256 channels.
    pub channels: Vec<ChannelLatest>,
    /// Tags the server attached.
    pub tags: Arc<[String]>,
}

/// How encoded data is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Binary codecs `Live` frames (the default).
    Binary,
    /// JSON text (`telemux.json` subprotocol, and SSE).
    Json,
}

impl Format {
    /// Estimated encoded bytes per reading (for the byte bound of a client's backlog).
    pub fn reading_bytes(self) -> usize {
        match self {
            Format::Binary => LiveRecord::SIZE,
            Format::Json => 96,
        }
    }
}

/// Key of a cached encoded frame: every reading in positions `first..=last` (a contiguous run,
/// so the key alone fixes the content: any client sending exactly these positions sends the
/// same bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheKey {
    /// First position.
    pub first: u64,
    /// Last position (the frame's `seq`).
    pub last: u64,
    /// Encoding.
    pub format: Format,
}

/// A few recently encoded frames (round-robin replacement).
#[derive(Default)]
struct EncodeCache {
    /// Slots.
    slots: Vec<(CacheKey, Bytes)>,
    /// Next slot to replace.
    next: usize,
}

/// Device table: latest values, presence, tags.
#[derive(Default)]
struct Devices {
    /// Per device.
    by_id: HashMap<u64, DeviceState>,
}

/// The live hub (see the module docs).
pub struct Hub {
    /// Settings.
    config: HubConfig,
    /// Monotonic origin of the log's arrival ticks.
    epoch: Instant,
    /// The shared log.
    log: RwLock<Log>,
    /// Latest values, presence, tags.
    devices: RwLock<Devices>,
    /// Bumped whenever tags change, so clients re-resolve tag subscriptions.
    tags_generation: AtomicU64,
    /// Head position; receivers wake on every publish.
    head: watch::Sender<u64>,
    /// Shared encoded frames, sharded by last position.
    cache: [Mutex<EncodeCache>; ENCODE_CACHE_SHARDS],
    /// Which clients a device's publish wakes.
    routes: RwLock<Routes>,
    /// Next client id for [`Hub::new_client`].
    next_client: AtomicU64,
    /// Metric handles of the hot paths, looked up once (on first use: after the server has
    /// installed its recorder) instead of at every publish and every frame sent.
    metrics: OnceLock<HubMetrics>,
}

/// The hub's metric handles (a `metrics::counter!` lookup hashes the name and labels: a
/// labelled one per frame sent was ~1% of the server at 100k frames/s out).
struct HubMetrics {
    cache_hits: metrics::Counter,
    cache_misses: metrics::Counter,
    published: metrics::Counter,
    evicted: metrics::Counter,
    wakeups: metrics::Counter,
    log_readings: metrics::Gauge,
    log_bytes: metrics::Gauge,
}

impl HubMetrics {
    fn new() -> HubMetrics {
        HubMetrics {
            cache_hits: metrics::counter!(m::ENCODE_CACHE, "result" => "hit"),
            cache_misses: metrics::counter!(m::ENCODE_CACHE, "result" => "miss"),
            published: metrics::counter!(m::READINGS_PUBLISHED),
            evicted: metrics::counter!(m::LOG_EVICTED),
            wakeups: metrics::counter!(m::WAKEUPS),
            log_readings: metrics::gauge!(m::LOG_READINGS),
            log_bytes: metrics::gauge!(m::LOG_BYTES),
        }
    }
}

/// The wall clock in microseconds since the epoch.
pub fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Hub {
    /// A hub whose positions start at the current wall-clock time in microseconds (see the crate
    /// docs, "Positions").
    pub fn new(config: HubConfig) -> Arc<Hub> {
        Hub::with_start(config, wall_us().max(0) as u64)
    }

    /// A hub whose first reading gets position `start + 1` (tests use small numbers).
    pub fn with_start(config: HubConfig, start: u64) -> Arc<Hub> {
        let window_ticks = u32::try_from(
            config
                .resume_window
                .as_millis()
                .div_ceil(u128::from(TICK_MS)),
        )
        .unwrap_or(u32::MAX);
        let log = Log::new(start, window_ticks, config.log_max_bytes);
        let (head, _) = watch::channel(start);
        Arc::new(Hub {
            config,
            epoch: Instant::now(),
            log: RwLock::new(log),
            devices: RwLock::new(Devices::default()),
            tags_generation: AtomicU64::new(0),
            head,
            cache: std::array::from_fn(|_| Mutex::new(EncodeCache::default())),
            routes: RwLock::new(Routes::default()),
            next_client: AtomicU64::new(1),
            metrics: OnceLock::new(),
        })
    }

    fn hub_metrics(&self) -> &HubMetrics {
        self.metrics.get_or_init(HubMetrics::new)
    }

    /// Settings.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    fn tick(&self) -> u32 {
        let ms = Instant::now()
            .saturating_duration_since(self.epoch)
            .as_millis();
        u32::try_from(ms / u128::from(TICK_MS)).unwrap_or(u32::MAX)
    }

    fn read_log(&self) -> RwLockReadGuard<'_, Log> {
        self.log.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with the log locked for reading (keep it short: publishers wait).
    pub fn with_log<R>(&self, f: impl FnOnce(&Log) -> R) -> R {
        f(&self.read_log())
    }

    /// Appends a device's freshly accepted readings; returns the positions given, if any.
    pub fn publish(
        &self,
        device_id: u64,
        readings: impl IntoIterator<Item = Reading>,
    ) -> Option<(u64, u64)> {
        let tick = self.tick();
        let records: Vec<LiveRecord> = readings
            .into_iter()
            .map(|r| LiveRecord::new(device_id, r.channel, r.quality, r.ts_us, r.value))
            .collect();
        let (positions, evicted, len, bytes) = {
            let mut log = self.log.write().unwrap_or_else(|e| e.into_inner());
            let positions = log.push_device(device_id, &records, tick);
            let evicted = log.evict(tick);
            (positions, evicted, log.len(), log.bytes())
        };
        let (first, last) = positions?;
        // Newest reading per channel of this publish (by reading time), for snapshots.
        let mut latest: Vec<ChannelLatest> = Vec::new();
        for (position, r) in (first..).zip(&records) {
            let c = ChannelLatest {
                channel: r.channel.get(),
                position,
                ts_us: r.ts_us.get(),
                value: r.value.get(),
                quality: r.quality.get(),
            };
            match latest.iter_mut().find(|l| l.channel == c.channel) {
                Some(l) if l.ts_us <= c.ts_us => *l = c,
                Some(_) => {}
                None => latest.push(c),
            }
        }
        let hm = self.hub_metrics();
        hm.published.increment(last - first + 1);
        if evicted > 0 {
            hm.evicted.increment(evicted);
        }
        hm.log_readings.set(len as f64);
        hm.log_bytes.set(bytes as f64);
        {
            let mut devices = self.devices.write().unwrap_or_else(|e| e.into_inner());
            let state = devices.by_id.entry(device_id).or_default();
            for c in latest {
                let tracked = state.channels.len();
                match state.channels.iter_mut().find(|l| l.channel == c.channel) {
                    Some(l) if l.ts_us <= c.ts_us => *l = c,
                    Some(_) => {}
                    None if tracked < MAX_CHANNELS_PER_DEVICE => state.channels.push(c),
                    None => {}
                }
            }
        }
        self.head.send_replace(last);
        let woken = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .wake(device_id);
        hm.wakeups.increment(woken as u64);
        Some((first, last))
    }

    /// A new client id and its inbox (see [`Hub::set_interest`]).
    pub fn new_client(&self) -> (u64, Arc<Inbox>) {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        (id, Arc::new(Inbox::default()))
    }

    /// Says which publishes and presence changes reach client `id` from now on
    /// (`Interest::Nothing` when it leaves).
    pub fn set_interest(&self, id: u64, inbox: &Arc<Inbox>, interest: Interest) {
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        routes.set(id, inbox, interest);
        metrics::gauge!(m::ROUTED_CLIENTS).set(routes.clients() as f64);
    }

    /// Appends the readings of an accepted device frame.
    pub fn publish_frame(&self, device_id: u64, frame: &codecs::Frame<'_>) -> Option<(u64, u64)> {
        self.publish(device_id, frame.readings())
    }

    /// Records a device's connect or disconnect and tells the subscribers of that device.
    pub fn set_online(&self, device_id: u64, online: bool, at_us: i64) {
        {
            let mut devices = self.devices.write().unwrap_or_else(|e| e.into_inner());
            let state = devices.by_id.entry(device_id).or_default();
            state.online = Some(online);
            state.since_us = Some(at_us);
        }
        // Only the clients watching that device (or every device) hear of it.
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .presence(PresenceEvent {
                device_id,
                online,
                at_us,
            });
    }

    /// Replaces a device's tags (tag subscriptions and tag grants are re-resolved by clients).
    pub fn set_tags(&self, device_id: u64, tags: Vec<String>) {
        {
            let mut devices = self.devices.write().unwrap_or_else(|e| e.into_inner());
            devices.by_id.entry(device_id).or_default().tags = Arc::from(tags);
        }
        self.tags_generation.fetch_add(1, Ordering::Release);
    }

    /// Changes whenever tags change.
    pub fn tags_generation(&self) -> u64 {
        self.tags_generation.load(Ordering::Acquire)
    }

    /// A device's tags.
    pub fn tags_of(&self, device_id: u64) -> Arc<[String]> {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        devices
            .by_id
            .get(&device_id)
            .map_or_else(|| Arc::from(Vec::new()), |d| d.tags.clone())
    }

    /// Newest position given out.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// The position before this run's first reading (the start time in us).
    pub fn start(&self) -> u64 {
        self.read_log().start()
    }

    /// A receiver of the head position (wakes on every publish).
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Evicts what is older than the resume window now (publishing does this too).
    pub fn evict_expired(&self) {
        let tick = self.tick();
        let evicted = self
            .log
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .evict(tick);
        if evicted > 0 {
            metrics::counter!(m::LOG_EVICTED).increment(evicted);
        }
    }

    /// The devices a selector delivers under these grants, with the current tags.
    pub fn resolve(&self, selector: &Selector, grants: &Grants) -> Resolved {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        let granted = |id: u64| {
            let tags = devices.by_id.get(&id).map(|d| &d.tags[..]).unwrap_or(&[]);
            grants.allows(id, tags)
        };
        let set: IdSet = match selector {
            Selector::All if *grants == Grants::All => return Resolved::All,
            Selector::All => match grants {
                Grants::All => return Resolved::All,
                Grants::Some { ids, .. } => ids
                    .iter()
                    .copied()
                    .chain(devices.by_id.keys().copied())
                    .filter(|&id| granted(id))
                    .collect(),
            },
            Selector::Devices(ids) => ids.iter().copied().filter(|&id| granted(id)).collect(),
            Selector::Tag(p) => devices
                .by_id
                .iter()
                .filter(|(_, d)| d.tags.iter().any(|t| p.matches(t)))
                .map(|(&id, _)| id)
                .filter(|&id| granted(id))
                .collect(),
        };
        Resolved::Set(Arc::new(set))
    }

    /// The state of the selected devices (at most `max` devices, lowest ids first); the bool
    /// says whether the list was cut.
    pub fn snapshot(&self, set: &Resolved, max: usize) -> (Vec<(u64, DeviceState)>, bool) {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<u64> = match set {
            Resolved::All => devices.by_id.keys().copied().collect(),
            Resolved::Set(s) => s.iter().copied().collect(),
        };
        ids.sort_unstable();
        let truncated = ids.len() > max;
        ids.truncate(max);
        let out = ids
            .into_iter()
            .map(|id| (id, devices.by_id.get(&id).cloned().unwrap_or_default()))
            .collect();
        (out, truncated)
    }

    fn cache_shard(&self, key: &CacheKey) -> std::sync::MutexGuard<'_, EncodeCache> {
        let shard = &self.cache[(key.last % ENCODE_CACHE_SHARDS as u64) as usize];
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A frame encoded earlier for exactly this key, if still cached.
    pub fn cached(&self, key: &CacheKey) -> Option<Bytes> {
        let hit = self
            .cache_shard(key)
            .slots
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, b)| b.clone());
        let hm = self.hub_metrics();
        match hit {
            Some(_) => hm.cache_hits.increment(1),
            None => hm.cache_misses.increment(1),
        }
        hit
    }

    /// Remembers an encoded frame for other clients sending the same positions.
    pub fn cache(&self, key: CacheKey, bytes: Bytes) {
        let mut cache = self.cache_shard(&key);
        if cache.slots.len() < ENCODE_CACHE_SLOTS {
            cache.slots.push((key, bytes));
        } else {
            let i = cache.next;
            cache.slots[i] = (key, bytes);
            cache.next = (i + 1) % ENCODE_CACHE_SLOTS;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(channel: u16, ts_us: i64, value: f64) -> Reading {
        Reading {
            channel,
            quality: 0,
            ts_us,
            value,
        }
    }

    #[tokio::test]
    async fn publish_assigns_consecutive_positions_and_wakes_watchers() {
        let hub = Hub::with_start(HubConfig::default(), 500);
        let mut head = hub.watch_head();
        let got = hub.publish(7, [reading(1, 10, 1.0), reading(2, 10, 2.0)]);
        assert_eq!(got, Some((501, 502)));
        assert!(head.has_changed().expect("sender alive"));
        assert_eq!(*head.borrow_and_update(), 502);
        assert_eq!(hub.publish(7, []), None);
    }

    #[tokio::test]
    async fn latest_values_keep_the_newest_reading_time_per_channel() {
        let hub = Hub::with_start(HubConfig::default(), 0);
        hub.publish(1, [reading(1, 20, 2.0)]);
        hub.publish(1, [reading(1, 10, 1.0)]); // replayed older reading
        hub.set_online(1, true, 5);
        let (snap, truncated) = hub.snapshot(&Resolved::All, 10);
        assert!(!truncated);
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].1.online, Some(true));
        assert_eq!(snap[0].1.channels.len(), 1);
        assert_eq!(snap[0].1.channels[0].value, 2.0);
    }

    #[tokio::test]
    async fn tag_selectors_resolve_against_current_tags_within_grants() {
        let hub = Hub::with_start(HubConfig::default(), 0);
        hub.set_tags(1, vec!["line-a".into()]);
        hub.set_tags(2, vec!["line-b".into()]);
        hub.set_tags(3, vec!["site".into()]);
        let sel = Selector::Tag(crate::filter::TagPattern::parse("line-*").expect("pattern"));
        match hub.resolve(&sel, &Grants::All) {
            Resolved::Set(s) => assert_eq!(s.len(), 2),
            other => panic!("{other:?}"),
        }
        let grants = Grants::parse(&["1"]).expect("grants");
        match hub.resolve(&sel, &grants) {
            Resolved::Set(s) => assert_eq!(s.iter().copied().collect::<Vec<_>>(), vec![1]),
            other => panic!("{other:?}"),
        }
    }
}
