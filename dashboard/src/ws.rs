//! The WebSocket transport: runs a session over any `Sink`/`Stream` of tungstenite messages (a
//! real upgraded socket in the server, channels in tests). The server accepts and upgrades the
//! socket (with small buffers) and hands it here.

use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::close::{self, Close};
use crate::driver::{self, CLOSE_GRACE, DriveOptions, Gone, Inbound, Outlet};
use crate::hub::Format;
use crate::metrics as m;
use crate::session::{Outbound, Session};

/// Subprotocol that selects JSON text data instead of binary frames.
pub const JSON_SUBPROTOCOL: &str = "telemux.json";
/// Subprotocol name for the default binary form (optional to request).
pub const BINARY_SUBPROTOCOL: &str = "telemux.v1";

fn inbound(msg: Result<Message, WsError>) -> Inbound {
    match msg {
        Ok(Message::Text(t)) => Inbound::Text(t.as_str().to_owned()),
        Ok(Message::Binary(_)) => Inbound::Binary,
        Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => Inbound::Alive,
        Ok(Message::Close(_)) => Inbound::Closed,
        Err(WsError::Capacity(CapacityError::MessageTooLong { .. })) => Inbound::TooLarge,
        Err(_) => Inbound::Lost,
    }
}

/// The WebSocket message for an outbound item.
pub fn message(out: Outbound) -> Message {
    match out {
        Outbound::Data {
            format: Format::Binary,
            bytes,
            ..
        } => Message::Binary(bytes),
        Outbound::Data { bytes, .. } | Outbound::Json { bytes, .. } => {
            // Our JSON is valid UTF-8; a failed check would be a bug, sent as an empty text.
            Message::Text(Utf8Bytes::try_from(bytes).unwrap_or_default())
        }
        Outbound::Ping => Message::Ping(Bytes::new()),
    }
}

/// The [`Outlet`] of a WebSocket: messages go straight into the socket (the server configures
/// no write buffer, so each is one write), and a socket that does not take more is a client
/// that is behind.
struct SocketOutlet<'a, S> {
    sink: &'a mut S,
}

impl<S> Outlet for SocketOutlet<'_, S>
where
    S: Sink<Message, Error = WsError> + Unpin + Send,
{
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Gone>> {
        self.sink.poll_ready_unpin(cx).map_err(|_| Gone)
    }

    fn start_send(&mut self, out: Outbound) -> Result<(), Gone> {
        self.sink.start_send_unpin(message(out)).map_err(|_| Gone)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Gone>> {
        self.sink.poll_flush_unpin(cx).map_err(|_| Gone)
    }

    fn poll_gone(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending // the inbound half reports a lost connection
    }
}

/// Serves one live client over a WebSocket until it ends; returns the close sent (or why the
/// connection was lost). The close frame carries the code and reason of [`crate::close`].
///
/// The socket should have no write buffer (`write_buffer_size(0)`, as the server configures
/// it): then a message given is a message written, and a socket that does not take more is
/// what tells the hub that the client is behind, so per-client memory stays bounded.
pub async fn serve<S>(socket: S, session: Session, opts: DriveOptions) -> Close
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin + Send,
{
    metrics::gauge!(m::CLIENTS, "transport" => "ws").increment(1.0);
    let (mut sink, stream) = socket.split();
    let inbound = stream
        .map(inbound)
        .chain(futures_util::stream::iter([Inbound::Lost]));
    let close = driver::drive(
        session,
        inbound,
        &mut SocketOutlet { sink: &mut sink },
        opts,
    )
    .await;
    if close != close::CONNECTION_LOST {
        // What was given to the socket goes first (the close frame is written after it).
        let finish = async {
            // After the client's close the library answers it itself; `close` then flushes.
            // A message the split sink still holds then fails (SendAfterClosing), but only after
            // the flush before it wrote the library's reply (the test
            // `a_client_that_closes_while_behind_still_gets_the_close_reply` checks this).
            if close == close::NORMAL {
                sink.close().await
            } else {
                let frame = CloseFrame {
                    code: CloseCode::from(close.code),
                    reason: close.reason.into(),
                };
                sink.send(Message::Close(Some(frame))).await
            }
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, finish).await;
    }
    metrics::gauge!(m::CLIENTS, "transport" => "ws").decrement(1.0);
    driver::record_close(close);
    close
}
