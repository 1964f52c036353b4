//! One live client as a cursor into the hub's log: its subscriptions, its position, its route
//! in the hub (which publishes wake it), the batching of what it has not received yet (`batch`),
//! and the slow-consumer policies (applied in one place, `overflow`). Transport-free: the driver
//! feeds it control messages and asks it for the next data to send whenever it was woken and
//! the client can take more.

use crate::filter::IdSet;
use std::sync::Arc;

use bytes::Bytes;
use codecs::LiveRecord;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::close::Close;
use crate::config::ClientLimits;
use crate::filter::{Grants, Policy, Resolved, Selector, SubKind};
use crate::hub::{Format, Hub, PresenceEvent};
use crate::metrics as m;
use crate::protocol::{self, GapReason, Op, ProtocolError, SubscribeArgs};
use crate::route::{Inbox, Interest};

mod batch;
mod overflow;

pub use batch::encode;

/// Most subscriptions on one connection.
pub const MAX_SUBSCRIPTIONS: usize = 64;
/// Most devices listed in one snapshot or presence message.
pub const SNAPSHOT_MAX_DEVICES: usize = 10_000;
/// Most log entries one step scans before it yields (bounds the time of one step).
const SCAN_LIMIT: u64 = 65_536;
/// Most watched devices for which a client follows the log's per-device chains; a client
/// watching more (or every device, or tags) scans the log after its cursor instead, which is
/// cheaper once its devices are a large part of what is published.
pub const CHAIN_MAX_DEVICES: usize = 256;

/// How a client finds its readings in the log.
#[derive(Clone, Debug)]
enum Plan {
    /// Walk these devices' chains (sorted ids of the resolved subscriptions).
    Chains(Arc<[u64]>),
    /// Scan every entry after the cursor.
    Scan,
}

/// Something to send to the client.
#[derive(Clone, Debug, PartialEq)]
pub enum Outbound {
    /// Readings: a binary `Live` frame or the JSON `readings` text (shared `Bytes`).
    Data {
        /// Stream position of the last reading (the SSE event id).
        position: u64,
        /// How `bytes` is encoded.
        format: Format,
        /// The frame.
        bytes: Bytes,
    },
    /// A JSON reply or event (text); `kind` is its type (the SSE event name).
    Json {
        /// `reply`, `snapshot`, `online`, `offline`, `gap`, `coalesced`, `presence`.
        kind: &'static str,
        /// The JSON text.
        bytes: Bytes,
    },
    /// A heartbeat (WebSocket ping, SSE comment).
    Ping,
}

impl Outbound {
    fn json(kind: &'static str, bytes: Bytes) -> Outbound {
        Outbound::Json { kind, bytes }
    }

    /// Bytes this message holds (for the queue's byte bound).
    pub fn len(&self) -> usize {
        match self {
            Outbound::Data { bytes, .. } | Outbound::Json { bytes, .. } => bytes.len(),
            Outbound::Ping => 0,
        }
    }

    /// Whether the message carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one call of [`Session::next_batch`] produced.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Caught up: nothing to send until the head moves.
    Idle,
    /// Scanned part of the backlog without finding anything to send; call again.
    Progress,
    /// Send these, in order.
    Send(Vec<Outbound>),
    /// Close the connection.
    Close(Close),
}

/// One subscription.
#[derive(Clone, Debug)]
struct Subscription {
    /// Id given in the subscribe reply.
    id: u64,
    /// What the client asked for.
    selector: Selector,
    /// Metric label.
    kind: SubKind,
    /// Slow-consumer policy.
    policy: Policy,
    /// Readings at or before this position are not for this subscription.
    start: u64,
    /// Devices delivered now (selector within the grants, current tags).
    set: Resolved,
}

/// A live client's state (see the module docs).
pub struct Session {
    /// The shared log.
    hub: Arc<Hub>,
    /// Binary frames or JSON.
    format: Format,
    /// What the token allows.
    grants: Grants,
    /// Bounds.
    limits: ClientLimits,
    /// Subscriptions, in creation order.
    subs: Vec<Subscription>,
    /// Next subscription id.
    next_sub: u64,
    /// Everything at or before this position has been sent or deliberately skipped.
    cursor: u64,
    /// A `resume` set the cursor and the client has not caught up since (new subscriptions then
    /// start at the cursor, not at the head).
    resumed: bool,
    /// When the client first fell behind (cleared when it catches up).
    behind_since: Option<Instant>,
    /// Tags generation the subscriptions were resolved with.
    tags_generation: u64,
    /// Scratch for the records of one frame.
    scratch: Vec<LiveRecord>,
    /// Scratch for the readings one chain walk found.
    found: Vec<(u64, LiveRecord)>,
    /// How readings are found, computed on first use after the subscriptions or tags changed.
    plan: Option<Plan>,
    /// Id of this client in the hub's routing table.
    client: u64,
    /// Woken by the hub when a publish may concern this client; holds its presence events.
    inbox: Arc<Inbox>,
    /// The last step left readings after the cursor (ask again without waiting for a wake).
    more: bool,
    /// Counters of what was sent.
    sent: SentCounters,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.hub
            .set_interest(self.client, &self.inbox, Interest::Nothing);
    }
}

impl Session {
    /// A session starting live at the current head, with no subscription.
    pub fn new(hub: Arc<Hub>, format: Format, grants: Grants, limits: ClientLimits) -> Session {
        let cursor = hub.head();
        let tags_generation = hub.tags_generation();
        let (client, inbox) = hub.new_client();
        Session {
            hub,
            format,
            grants,
            limits,
            subs: Vec::new(),
            next_sub: 1,
            cursor,
            resumed: false,
            behind_since: None,
            tags_generation,
            scratch: Vec::new(),
            found: Vec::new(),
            plan: None,
            client,
            inbox,
            more: true,
            sent: SentCounters::new(format),
        }
    }

    /// The signal the hub notifies when a publish may concern this client (the driver waits on
    /// it between steps).
    pub fn signal(&self) -> Arc<Notify> {
        self.inbox.signal().clone()
    }

    /// The presence events for this client queued by the hub since last time (or the presence
    /// of all its devices if it missed some).
    pub fn take_presence(&self) -> Vec<Outbound> {
        let (events, lagged) = self.inbox.take_presence();
        if lagged {
            return vec![self.presence_resync()];
        }
        events
            .into_iter()
            .filter_map(|ev| self.on_presence(ev))
            .collect()
    }

    /// Whether the last [`Session::next_batch`] left readings to send (so the driver asks again
    /// without waiting for a wake-up).
    pub fn has_more(&self) -> bool {
        self.more
    }

    /// Registers in the hub which publishes wake this client (after its subscriptions changed).
    fn update_route(&mut self) {
        let interest = if self.subs.is_empty() {
            Interest::Nothing
        } else if self
            .subs
            .iter()
            .any(|s| !matches!(s.selector, Selector::Devices(_)))
        {
            // Every device, or tags (which may change): woken by every publish.
            Interest::Everything
        } else {
            // The selected ids, not only the granted ones: a grant by tag may come later, and
            // delivery filters by the resolved sets anyway.
            let mut ids: Vec<u64> = self
                .subs
                .iter()
                .flat_map(|s| match &s.selector {
                    Selector::Devices(ids) => ids.as_slice(),
                    _ => &[],
                })
                .copied()
                .collect();
            ids.sort_unstable();
            ids.dedup();
            Interest::Devices(ids)
        };
        self.hub.set_interest(self.client, &self.inbox, interest);
        self.plan = None;
        self.more = true;
    }

    /// How this client finds its readings (cached until subscriptions or tags change).
    fn plan(&mut self) -> Plan {
        if let Some(p) = &self.plan {
            return p.clone();
        }
        let plan = match self.union() {
            Resolved::Set(ids) if ids.len() <= CHAIN_MAX_DEVICES => {
                let mut ids: Vec<u64> = ids.iter().copied().collect();
                ids.sort_unstable();
                Plan::Chains(ids.into())
            }
            _ => Plan::Scan,
        };
        self.plan = Some(plan.clone());
        plan
    }

    /// The hub this client reads.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The client's position: everything at or before it was sent or reported as skipped.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The bounds of this client.
    pub fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    /// When the client fell behind, if it is behind.
    pub fn behind_since(&self) -> Option<Instant> {
        self.behind_since
    }

    /// Notes that nothing waits for the client (it took everything it was given).
    pub fn clear_behind(&mut self) {
        self.behind_since = None;
    }

    /// Notes that the client cannot take more while readings wait for it.
    pub fn mark_behind(&mut self, now: Instant) {
        self.behind_since.get_or_insert(now);
    }

    /// Handles one JSON control message; returns the reply, then any events it causes.
    pub fn handle_text(&mut self, text: &str) -> Vec<Outbound> {
        let request = match protocol::parse_request(text) {
            Ok(r) => r,
            Err((id, e)) => return vec![self.refuse(&id, &e)],
        };
        let id = request.id;
        match request.op {
            Op::Subscribe(args) => match self.subscribe(args) {
                Ok((sub, events)) => {
                    let reply = protocol::ok_reply(
                        &id,
                        json!({"sub": sub, "position": self.cursor.to_string()}),
                    );
                    let mut out = vec![Outbound::json("reply", reply)];
                    out.extend(events);
                    out
                }
                Err(e) => vec![self.refuse(&id, &e)],
            },
            Op::Unsubscribe { sub } => match self.unsubscribe(sub) {
                Ok(()) => vec![Outbound::json(
                    "reply",
                    protocol::ok_reply(&id, json!({"sub": sub})),
                )],
                Err(e) => vec![self.refuse(&id, &e)],
            },
            Op::Resume { position } => {
                let events = self.resume(position);
                let reply = protocol::ok_reply(
                    &id,
                    json!({"position": self.cursor.to_string(), "gap": !events.is_empty()}),
                );
                let mut out = vec![Outbound::json("reply", reply)];
                out.extend(events);
                out
            }
            Op::Ping => {
                let fields = json!({
                    "pong": true,
                    "head": self.hub.head().to_string(),
                    "position": self.cursor.to_string(),
                    "server_time_us": crate::hub::wall_us(),
                });
                vec![Outbound::json("reply", protocol::ok_reply(&id, fields))]
            }
        }
    }

    /// The answer to a binary message from the client.
    pub fn handle_binary(&mut self) -> Outbound {
        self.refuse(&Value::Null, &ProtocolError::BinaryNotAccepted)
    }

    fn refuse(&self, id: &Value, e: &ProtocolError) -> Outbound {
        metrics::counter!(m::CONTROL_ERRORS, "code" => e.code()).increment(1);
        Outbound::json("reply", protocol::error_reply(id, e))
    }

    /// Adds a subscription; returns its id and the snapshot to send after the reply.
    pub fn subscribe(
        &mut self,
        args: SubscribeArgs,
    ) -> Result<(u64, Vec<Outbound>), ProtocolError> {
        if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(ProtocolError::TooManySubscriptions(MAX_SUBSCRIPTIONS));
        }
        let hub = self.hub.clone();
        if !self.grants.permits(&args.selector, |id| hub.tags_of(id)) {
            return Err(ProtocolError::NotGranted(describe(&args.selector)));
        }
        let id = self.next_sub;
        self.next_sub += 1;
        let head = self.hub.head();
        if self.subs.is_empty() && !self.resumed {
            self.cursor = self.cursor.max(head);
        }
        let start = if self.resumed { self.cursor } else { head };
        let set = self.hub.resolve(&args.selector, &self.grants);
        let mut events = Vec::new();
        if args.snapshot {
            let (devices, truncated) = self.hub.snapshot(&set, SNAPSHOT_MAX_DEVICES);
            events.push(Outbound::json(
                "snapshot",
                protocol::snapshot_event(id, head, &devices, truncated),
            ));
        }
        // Resubscribing after a resume, but the session already streamed past the client's
        // position for its other subscriptions: say exactly which readings this one misses.
        // (While still `resumed` the subscription starts at the resume outcome, which covers it.)
        let missed = match args.after {
            Some(after) if !self.resumed => self.hub.with_log(|log| log.span(after, start)),
            _ => None,
        };
        if let Some(missed) = missed {
            metrics::counter!(m::GAPS, "reason" => GapReason::LateSubscription.name()).increment(1);
            events.push(Outbound::json(
                "gap",
                protocol::gap_event(GapReason::LateSubscription, Some(missed), &[id], None),
            ));
        }
        self.subs.push(Subscription {
            id,
            kind: args.selector.kind(),
            selector: args.selector,
            policy: args.policy,
            start,
            set,
        });
        self.update_route();
        Ok((id, events))
    }

    /// Removes a subscription.
    pub fn unsubscribe(&mut self, sub: u64) -> Result<(), ProtocolError> {
        let before = self.subs.len();
        self.subs.retain(|s| s.id != sub);
        if self.subs.len() == before {
            return Err(ProtocolError::UnknownSubscription(sub));
        }
        self.update_route();
        Ok(())
    }

    /// Continues after `position`: exactly the readings after it if the log still holds them,
    /// otherwise a `gap` (returned) and the oldest readings still held.
    pub fn resume(&mut self, position: u64) -> Vec<Outbound> {
        self.hub.evict_expired();
        let (head, lost) = self
            .hub
            .with_log(|log| (log.head(), log.lost_after(position)));
        let mut out = Vec::new();
        if position > head {
            // Not a position this server gave out (another server, or a clock that went back).
            metrics::counter!(m::RESUMES, "outcome" => "gap").increment(1);
            metrics::counter!(m::GAPS, "reason" => GapReason::UnknownPosition.name()).increment(1);
            out.push(Outbound::json(
                "gap",
                protocol::gap_event(GapReason::UnknownPosition, None, &[], None),
            ));
            self.cursor = head;
        } else if let Some(lost) = lost {
            let reason = if position < self.hub.start() {
                GapReason::Restart
            } else {
                GapReason::ResumeWindow
            };
            metrics::counter!(m::RESUMES, "outcome" => "gap").increment(1);
            metrics::counter!(m::GAPS, "reason" => reason.name()).increment(1);
            out.push(Outbound::json(
                "gap",
                protocol::gap_event(reason, Some(lost), &[], None),
            ));
            self.cursor = lost.to_position;
        } else {
            metrics::counter!(m::RESUMES, "outcome" => "exact").increment(1);
            self.cursor = position;
        }
        self.resumed = true;
        self.more = true;
        for s in &mut self.subs {
            s.start = self.cursor;
        }
        out
    }

    /// The event for a presence change, if the client watches that device.
    pub fn on_presence(&self, ev: PresenceEvent) -> Option<Outbound> {
        self.subs
            .iter()
            .any(|s| s.set.contains(ev.device_id))
            .then(|| {
                let kind = if ev.online { "online" } else { "offline" };
                Outbound::json(
                    kind,
                    protocol::presence_event(ev.device_id, ev.online, ev.at_us),
                )
            })
    }

    /// The presence of every watched device (after the task missed presence events).
    pub fn presence_resync(&self) -> Outbound {
        metrics::counter!(m::PRESENCE_LAGGED).increment(1);
        let set = self.union();
        let (devices, truncated) = self.hub.snapshot(&set, SNAPSHOT_MAX_DEVICES);
        Outbound::json(
            "presence",
            protocol::presence_list_event(&devices, truncated),
        )
    }

    /// All watched devices.
    fn union(&self) -> Resolved {
        let mut ids = IdSet::default();
        for s in &self.subs {
            match &s.set {
                Resolved::All => return Resolved::All,
                Resolved::Set(set) => ids.extend(set.iter().copied()),
            }
        }
        Resolved::Set(Arc::new(ids))
    }

    /// Re-resolves tag subscriptions (and tag grants) when tags changed.
    fn refresh_tags(&mut self) {
        let generation = self.hub.tags_generation();
        if generation == self.tags_generation {
            return;
        }
        self.tags_generation = generation;
        self.plan = None;
        for s in &mut self.subs {
            s.set = self.hub.resolve(&s.selector, &self.grants);
        }
    }

    /// The strictest subscription that delivers the reading at `position` of `device`.
    #[inline]
    fn classify(&self, position: u64, device: u64) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, s) in self.subs.iter().enumerate() {
            if position > s.start
                && s.set.contains(device)
                && best.is_none_or(|b| self.subs[b].policy < s.policy)
            {
                best = Some(i);
            }
        }
        best
    }

    fn caught_up(&mut self) {
        self.behind_since = None;
        self.resumed = false;
        self.more = false;
    }

    /// Produces what to send next: one data frame of at most `max_batch_readings` readings
    /// after the cursor that match the subscriptions (several device frames batched into one
    /// when the client is behind), or, when the client is over its backlog bound, what its
    /// policies make of the backlog.
    pub fn next_batch(&mut self, now: Instant) -> Step {
        if self.subs.is_empty() {
            if !self.resumed {
                self.cursor = self.cursor.max(self.hub.head());
                self.behind_since = None;
            }
            self.more = false;
            return Step::Idle;
        }
        self.refresh_tags();
        // Cleared when a step reaches the head (`caught_up`) or the overflow moves the cursor
        // there; a later publish wakes the client again.
        self.more = true;
        match self.plan() {
            Plan::Chains(devices) => self.next_chained(&devices, now),
            Plan::Scan => self.next_scanned(now),
        }
    }

    fn count_sent(&self, readings: usize) {
        self.sent.readings.increment(readings as u64);
        self.sent.frames.increment(1);
    }
}

/// The counters every data frame sent bumps, looked up in the metrics registry once per client
/// instead of once per frame (a labelled lookup hashes its key: ~1% of the server at 100k
/// frames/s out).
struct SentCounters {
    /// Readings delivered to this client.
    readings: metrics::Counter,
    /// Frames sent, labelled with the client's format.
    frames: metrics::Counter,
}

impl SentCounters {
    fn new(format: Format) -> SentCounters {
        let label = match format {
            Format::Binary => "binary",
            Format::Json => "json",
        };
        SentCounters {
            readings: metrics::counter!(m::READINGS_FANNED_OUT),
            frames: metrics::counter!(m::FRAMES_SENT, "format" => label),
        }
    }
}

/// Human description of a selector for error messages.
fn describe(selector: &Selector) -> String {
    match selector {
        Selector::All => "all devices (`*`)".into(),
        Selector::Devices(ids) => {
            let shown: Vec<String> = ids.iter().take(10).map(u64::to_string).collect();
            let more = if ids.len() > 10 { ", ..." } else { "" };
            format!("devices [{}{more}]", shown.join(", "))
        }
        Selector::Tag(p) => format!("tag `{p}`"),
    }
}
