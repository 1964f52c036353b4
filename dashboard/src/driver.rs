//! The connection loop shared by every transport: reads control messages, wakes when the hub
//! routes a publish to this client (its devices, or every publish for broad subscriptions) and
//! on presence changes, hands the session's output to the transport's [`Outlet`], and closes on
//! shutdown, token expiry, revocation, heartbeat loss or a client that stays behind past the
//! slow-consumer deadline.
//!
//! It is generic over the inbound stream and the outlet, so it runs the same over a WebSocket
//! (which writes into the socket itself), an SSE body, or channels in tests (with paused time).

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tokio_util::sync::{CancellationToken, PollSender};

use crate::close::{self, Close};
use crate::metrics as m;
use crate::session::{Outbound, Session, Step};

/// Messages a [`QueueOutlet`]'s queue holds. Small on purpose: what a client has not taken stays
/// in the shared log (as its cursor) instead of piling up per client.
pub const OUT_QUEUE: usize = 4;
/// Replies and events that may wait for the client. From half of this on, the loop stops
/// reading requests until answers went out, so a client that sends requests but does not read
/// the answers meets the slow-consumer deadline; going over it (events alone) closes with
/// 4008 "slow consumer".
pub const MAX_STAGED: usize = 256;
/// How long the final messages and the close frame may take once a connection ends.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What the transport read from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A text message (a JSON control message).
    Text(String),
    /// A binary message (refused with an error reply).
    Binary,
    /// A pong, or any other sign of life (a client ping).
    Alive,
    /// A message over the size limit.
    TooLarge,
    /// The client closed the connection.
    Closed,
    /// The transport failed.
    Lost,
}

/// Checks whether the client's token was revoked since it connected.
pub type RevocationCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// Everything the loop needs besides the session.
#[derive(Clone)]
pub struct DriveOptions {
    /// When the token expires (close 4003).
    pub expires_at: Option<Instant>,
    /// Cancelled at server shutdown (close 1001).
    pub shutdown: CancellationToken,
    /// Checked at every heartbeat (close 1008 when true).
    pub revoked: Option<RevocationCheck>,
    /// Whether the transport answers pings (WebSocket yes, SSE no): unanswered pings close
    /// the connection only then.
    pub expects_pongs: bool,
}

impl Default for DriveOptions {
    fn default() -> Self {
        DriveOptions {
            expires_at: None,
            shutdown: CancellationToken::new(),
            revoked: None,
            expects_pongs: true,
        }
    }
}

/// Where the driver puts what the client is to receive: the socket itself (WebSocket:
/// `ws::SocketOutlet`, one write per message and no queue in between) or a bounded queue that
/// the transport drains (SSE, tests: [`QueueOutlet`]). Whether it takes another message now is
/// how the driver knows that the client keeps up.
pub trait Outlet: Send {
    /// Ready when one more message may be given; Pending while the client has not taken what
    /// it was given (it is behind); an error once the client is gone.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Gone>>;
    /// Gives one message (after `poll_ready` said so).
    fn start_send(&mut self, out: Outbound) -> Result<(), Gone>;
    /// Ready once everything given is on its way to the client.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Gone>>;
    /// Ready once the client is known to be gone (polled while nothing is being sent).
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

/// The client can no longer be written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gone;

/// An [`Outlet`] that is a bounded queue (of [`OUT_QUEUE`] messages for SSE) drained by the
/// transport: a full queue means the client is behind.
pub struct QueueOutlet {
    /// Reserves a slot, then sends.
    tx: PollSender<Outbound>,
    /// Resolves when the receiving side is dropped.
    closed: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl QueueOutlet {
    /// An outlet into `tx`.
    pub fn new(tx: mpsc::Sender<Outbound>) -> QueueOutlet {
        let watch = tx.clone();
        QueueOutlet {
            tx: PollSender::new(tx),
            closed: Box::pin(async move { watch.closed().await }),
        }
    }
}

impl Outlet for QueueOutlet {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Gone>> {
        self.tx.poll_reserve(cx).map_err(|_| Gone)
    }

    fn start_send(&mut self, out: Outbound) -> Result<(), Gone> {
        self.tx.send_item(out).map_err(|_| Gone)
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Gone>> {
        Poll::Ready(Ok(()))
    }

    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.closed.as_mut().poll(cx)
    }
}

/// What the outlet said in one turn of the loop.
enum OutletEvent {
    /// It takes another message.
    Ready,
    /// It just stopped taking messages (the client is behind from now on).
    Blocked,
    /// Everything given is on its way.
    Flushed,
    /// The client is gone.
    Gone,
}

/// Polls the outlet for what the loop is waiting for: room for a message while messages wait,
/// else the flush of what was given, else the client going away. `blocked` is set when the
/// outlet stops taking messages (reported once, so the loop arms the slow-consumer deadline).
fn poll_outlet<O: Outlet>(
    out: &mut O,
    cx: &mut Context<'_>,
    want_send: bool,
    flushed: bool,
    blocked: &mut bool,
) -> Poll<OutletEvent> {
    if want_send {
        return match out.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(OutletEvent::Ready),
            Poll::Ready(Err(Gone)) => Poll::Ready(OutletEvent::Gone),
            Poll::Pending if !*blocked => {
                *blocked = true;
                Poll::Ready(OutletEvent::Blocked)
            }
            Poll::Pending => Poll::Pending,
        };
    }
    if !flushed {
        return out.poll_flush(cx).map(|r| match r {
            Ok(()) => OutletEvent::Flushed,
            Err(Gone) => OutletEvent::Gone,
        });
    }
    out.poll_gone(cx).map(|()| OutletEvent::Gone)
}

/// A time far enough away to stand for "never" in a `select!` branch that is disabled anyway.
fn never() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Runs one client until the connection ends; returns why.
pub async fn drive<I, O>(
    mut session: Session,
    mut inbound: I,
    out: &mut O,
    opts: DriveOptions,
) -> Close
where
    I: Stream<Item = Inbound> + Unpin,
    O: Outlet,
{
    let signal = session.signal();
    // Whether readings may wait for the client: set by a wake-up from the hub or a control
    // message, cleared when the session reports it reached the head. A publish after that
    // leaves a permit in `signal`, so no wake-up is lost.
    let mut dirty = true;
    // One wait kept across loop turns (re-armed after it fires), not a new registration with
    // the `Notify` at every turn.
    let mut wake = std::pin::pin!(signal.clone().notified_owned());
    let limits = session.limits().clone();
    let mut ping =
        tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut unanswered = 0u32;
    let mut staged: VecDeque<Outbound> = VecDeque::new();
    let mut inbound_open = true;
    // Whether everything given to the outlet was flushed, and whether it stopped taking more.
    let mut flushed = true;
    let mut blocked = false;
    // Created once, not at every turn of the loop (each creation costs a lock or a clock read).
    // A child token: polling a token locks its node, and a thousand clients polling the
    // server's own token at every turn contended for one lock.
    let shutdown_token = opts.shutdown.child_token();
    let mut shutdown = std::pin::pin!(shutdown_token.cancelled());
    let mut expiry = std::pin::pin!(sleep_until(opts.expires_at.unwrap_or_else(never)));
    loop {
        let want_send = !staged.is_empty() || dirty;
        if !want_send {
            // Nothing waits for the client: whatever it was behind on, it has been given.
            session.clear_behind();
        } else if blocked {
            // Readings wait and the client has not taken what it was given.
            session.mark_behind(Instant::now());
        }
        let deadline = session.behind_since().map(|t| t + limits.slow_deadline);
        tokio::select! {
            biased;
            _ = &mut shutdown => return close::GOING_AWAY,
            _ = &mut expiry, if opts.expires_at.is_some() => {
                return close::TOKEN_EXPIRED;
            }
            _ = sleep_until(deadline.unwrap_or_else(never)), if deadline.is_some() => {
                metrics::counter!(m::SLOW_CONSUMER_DISCONNECTS).increment(1);
                return close::SLOW_CONSUMER;
            }
            // Before the outlet: a client that is always behind (the outlet always ready) must
            // still get its control messages and pongs read. Not while answers pile up: a burst
            // of requests then waits in the socket (TCP backpressure) until they went out.
            msg = inbound.next(), if inbound_open && staged.len() < MAX_STAGED / 2 => match msg {
                Some(Inbound::Text(text)) => {
                    unanswered = 0;
                    staged.extend(session.handle_text(&text));
                    dirty = true;
                }
                Some(Inbound::Binary) => staged.push_back(session.handle_binary()),
                Some(Inbound::Alive) => unanswered = 0,
                Some(Inbound::TooLarge) => return close::TOO_LARGE,
                Some(Inbound::Closed) => return close::NORMAL,
                Some(Inbound::Lost) => return close::CONNECTION_LOST,
                None => inbound_open = false,
            },
            event = poll_fn(|cx| poll_outlet(out, cx, want_send, flushed, &mut blocked)) => {
                match event {
                    OutletEvent::Ready => {
                        blocked = false;
                        if staged.is_empty() {
                            match session.next_batch(Instant::now()) {
                                Step::Send(msgs) => staged.extend(msgs),
                                Step::Close(c) => return c,
                                Step::Idle | Step::Progress => {}
                            }
                            dirty = session.has_more();
                            // Presence events that came while the client was busy with data.
                            staged.extend(session.take_presence());
                        }
                        if let Some(msg) = staged.pop_front() {
                            if out.start_send(msg).is_err() {
                                return close::CONNECTION_LOST;
                            }
                            flushed = false;
                        }
                    }
                    OutletEvent::Blocked => {} // the next turn marks the client behind
                    OutletEvent::Flushed => flushed = true,
                    OutletEvent::Gone => return close::CONNECTION_LOST,
                }
            }
            _ = &mut wake, if !dirty => {
                dirty = true;
                wake.set(signal.clone().notified_owned());
                staged.extend(session.take_presence());
            }
            _ = ping.tick() => {
                if opts.revoked.as_ref().is_some_and(|r| r()) {
                    return close::REVOKED;
                }
                if opts.expects_pongs && limits.missed_pongs > 0 && unanswered >= limits.missed_pongs {
                    return close::PING_TIMEOUT;
                }
                unanswered += 1;
                // A client that does not take what it is given is not pinged (the deadline
                // deals with it), nor is a second ping queued behind the first.
                if !blocked && !staged.contains(&Outbound::Ping) {
                    staged.push_back(Outbound::Ping);
                }
            }
        }
        if staged.len() > MAX_STAGED {
            metrics::counter!(m::SLOW_CONSUMER_DISCONNECTS).increment(1);
            return close::SLOW_CONSUMER;
        }
    }
}

/// Counts a finished connection.
pub fn record_close(close: Close) {
    metrics::counter!(m::CLIENTS_CLOSED, "reason" => close.reason).increment(1);
}
