//! The Server-Sent Events transport (`GET /v1/live/sse`): the same session, JSON data, no
//! inbound messages. Readings are `event: readings` with `id:` = the position of the last
//! reading, so a browser's `EventSource` resumes by itself through `Last-Event-ID`; other events
//! (`snapshot`, `online`, `offline`, `gap`, `coalesced`, `presence`) carry no id. Heartbeats are
//! comment lines. The stream ends with `event: close` and `{"code", "reason"}` (the WebSocket
//! close codes).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::close::{self, Close};
use crate::driver::{self, CLOSE_GRACE, DriveOptions, OUT_QUEUE, QueueOutlet};
use crate::metrics as m;
use crate::session::{Outbound, Session};

/// How long a browser waits before reconnecting after the stream ends (the `retry:` field).
const RETRY_MS: u32 = 2000;

/// The body of an SSE response: formats the session's output as it is pulled.
pub struct SseBody {
    /// Output of the driver.
    rx: mpsc::Receiver<Outbound>,
    /// Whether the `retry:` preamble was sent.
    started: bool,
    /// Events to send before the driver's output (a resume `gap`, snapshots).
    initial: std::collections::VecDeque<Outbound>,
}

/// The text of one outbound item as an SSE event.
pub fn event(out: &Outbound) -> Bytes {
    let mut s = Vec::with_capacity(out.len() + 48);
    match out {
        Outbound::Data {
            position, bytes, ..
        } => {
            s.extend_from_slice(format!("id: {position}\nevent: readings\ndata: ").as_bytes());
            s.extend_from_slice(bytes);
            s.extend_from_slice(b"\n\n");
        }
        Outbound::Json { kind, bytes } => {
            s.extend_from_slice(format!("event: {kind}\ndata: ").as_bytes());
            s.extend_from_slice(bytes);
            s.extend_from_slice(b"\n\n");
        }
        Outbound::Ping => s.extend_from_slice(b": ping\n\n"),
    }
    Bytes::from(s)
}

impl Stream for SseBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if !self.started {
            self.started = true;
            return Poll::Ready(Some(Ok(Bytes::from(format!("retry: {RETRY_MS}\n\n")))));
        }
        if let Some(out) = self.initial.pop_front() {
            return Poll::Ready(Some(Ok(event(&out))));
        }
        self.rx.poll_recv(cx).map(|o| o.map(|out| Ok(event(&out))))
    }
}

/// The response body and the task that feeds it (spawn the task; it ends when the client goes
/// away, the token expires, the client is too slow, or at shutdown). `initial` is sent first
/// (what `Session::resume` and `Session::subscribe` returned while setting up).
pub fn serve(
    session: Session,
    initial: Vec<Outbound>,
    opts: DriveOptions,
) -> (SseBody, impl Future<Output = Close> + Send) {
    let (tx, rx) = mpsc::channel::<Outbound>(OUT_QUEUE);
    let task = async move {
        metrics::gauge!(m::CLIENTS, "transport" => "sse").increment(1.0);
        let opts = DriveOptions {
            expects_pongs: false,
            ..opts
        };
        let mut outlet = QueueOutlet::new(tx.clone());
        let close =
            driver::drive(session, futures_util::stream::pending(), &mut outlet, opts).await;
        drop(outlet);
        if close != close::CONNECTION_LOST {
            let body = serde_json::json!({"code": close.code, "reason": close.reason});
            let last = Outbound::Json {
                kind: "close",
                bytes: Bytes::from(body.to_string()),
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, tx.send(last)).await;
        }
        metrics::gauge!(m::CLIENTS, "transport" => "sse").decrement(1.0);
        driver::record_close(close);
        close
    };
    let body = SseBody {
        rx,
        started: false,
        initial: initial.into(),
    };
    (body, task)
}
