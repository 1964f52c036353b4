//! telemux live hub: readings accepted by the server fan out to dashboards over WebSocket or
//! Server-Sent Events, with stream positions, resume after reconnect, per-client backpressure,
//! presence and snapshots.
//!
//! # Layout
//! - [`log`]: the shared ring of live readings (chunks, positions, eviction by time and bytes,
//!   what was lost).
//! - [`hub`]: the log plus latest values, presence, tags, the head notification and the cache of
//!   encoded frames; the server publishes here.
//! - [`route`]: which client tasks a device's publish or presence change reaches (device ->
//!   clients, like a broker's topic tree), and each client's inbox of presence events.
//! - [`filter`]: subscription selectors, token grants, slow-consumer policies.
//! - [`protocol`]: JSON control messages, replies, events, the JSON form of readings.
//! - [`session`]: one client as a cursor into the log: subscriptions, batching; its `overflow`
//!   submodule is the one place the slow-consumer policies apply.
//! - [`driver`]: the connection loop shared by all transports (heartbeats, deadlines, expiry).
//! - [`ws`]: the WebSocket transport, generic over a `Sink`/`Stream` of messages.
//! - [`sse`]: the Server-Sent Events transport.
//! - [`web`]: the web dashboard's files (`dashboard/web/`), embedded at compile time.
//! - [`close`]: close codes. [`config`]: settings. [`metrics`]: metric names.
//!
//! # Positions
//!
//! Every reading the hub receives gets a **stream position**: a u64, strictly increasing, one
//! per reading, shared by all devices (one stream). The first reading of a server run gets
//! `start + 1`, where `start` is the server's start time in microseconds since the Unix epoch;
//! each further reading gets the next integer. So positions of a later run are greater than
//! every position of an earlier run, as long as a run averages fewer than one reading per
//! microsecond (1M readings/s) over its lifetime, and a position tells roughly when its run
//! started. In JSON, positions are decimal strings (they exceed 2^53).
//!
//! A binary `Live` frame's header `seq` is the position of its last record; the JSON `readings`
//! message has it as `position`; SSE events have it as `id`. A client that keeps the last
//! position it received and presents it on reconnect (`resume`, or SSE `Last-Event-ID`) gets
//! exactly the readings after it that match its subscriptions, in order, with no gap and no
//! duplicate, if the log still holds them (the resume window: `resume_window` by arrival time
//! and `log_max_bytes`, whichever is smaller). Otherwise it gets a `gap` message naming the
//! missing position range and the reading-time range (`from_ts_us` is null when unknown, e.g.
//! for positions of an earlier run) so it can backfill from the HTTP history API, then the
//! oldest readings still held.
//!
//! # Clients are cursors
//!
//! A client holds a position into the shared log, not a copy of the data. A publish wakes only
//! the clients routed to that device ([`route`]; clients of every device or of tags are woken by
//! every publish). When it can take more, the client's task reads the readings after its cursor
//! that match its subscriptions and sends them as one frame (up to `max_batch_readings`, so
//! several device frames go into one when it is behind). A client watching up to
//! [`session::CHAIN_MAX_DEVICES`] devices follows the log's per-device chains and visits only
//! its devices' readings; the others scan the log after their cursor. A frame holding a
//! contiguous run of positions (one device frame, or everything) is encoded once and its `Bytes`
//! shared by every client sending it (the hub's encode cache). A client over its backlog bound
//! gets the policy of its subscriptions ([`filter::Policy`]); a client still behind after
//! `slow_deadline` is closed with 4008. Per-client memory is bounded by the outlet (a
//! WebSocket is written directly: beyond the socket's buffer (the server caps its unsent part,
//! `ingest --tcp-notsent-lowat`), up to two frames (one the socket
//! started writing, one held) plus a pending pong or close reply; SSE has a queue of
//! [`driver::OUT_QUEUE`] frames), the staged replies ([`driver::MAX_STAGED`]), the presence
//! inbox ([`route::PRESENCE_PER_CLIENT`]) and one overflow result (`max_backlog_readings`),
//! whatever the client does; the publisher does one
//! wake-up per publish per routed client and nothing per reading.

pub mod close;
pub mod config;
pub mod driver;
pub mod filter;
pub mod hub;
pub mod log;
pub mod metrics;
pub mod protocol;
pub mod route;
pub mod session;
pub mod sse;
pub mod web;
pub mod ws;

pub use close::Close;
pub use config::{ClientLimits, HubConfig};
pub use driver::{DriveOptions, Inbound};
pub use filter::{Grants, Policy, Selector};
pub use hub::{Format, Hub, PresenceEvent};
pub use session::{Outbound, Session};
