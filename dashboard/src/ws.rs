//! The WebSocket transport: runs a session over any `Sink`/`Stream` of tungstenite messages (a
//! real upgraded socket in the server, channels in tests). The server accepts and upgrades the
//! socket (with small buffers) and hands it here.

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::close::{self, Close};
use crate::driver::{self, CLOSE_GRACE, DriveOptions, Inbound, OUT_QUEUE};
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

async fn write_all<S>(sink: &mut S, rx: &mut mpsc::Receiver<Outbound>) -> Result<(), WsError>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    while let Some(out) = rx.recv().await {
        sink.send(message(out)).await?;
    }
    Ok(())
}

/// Serves one live client over a WebSocket until it ends; returns the close sent (or why the
/// connection was lost). The close frame carries the code and reason of [`crate::close`].
pub async fn serve<S>(socket: S, session: Session, opts: DriveOptions) -> Close
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    metrics::gauge!(m::CLIENTS, "transport" => "ws").increment(1.0);
    let (mut sink, stream) = socket.split();
    let inbound = stream
        .map(inbound)
        .chain(futures_util::stream::iter([Inbound::Lost]));
    let (tx, mut rx) = mpsc::channel::<Outbound>(OUT_QUEUE);
    let close = {
        let driver = driver::drive(session, inbound, &tx, opts);
        let writer = write_all(&mut sink, &mut rx);
        tokio::pin!(driver, writer);
        tokio::select! {
            biased;
            c = &mut driver => c,
            _ = &mut writer => close::CONNECTION_LOST,
        }
    };
    drop(tx);
    if close != close::CONNECTION_LOST {
        let frame = CloseFrame {
            code: CloseCode::from(close.code),
            reason: close.reason.into(),
        };
        let finish = async {
            if driver::drain_before_close(close) {
                write_all(&mut sink, &mut rx).await?;
            }
            rx.close();
            // After the client's close the library answers it itself; `close` then flushes.
            if close == close::NORMAL {
                sink.close().await
            } else {
                sink.send(Message::Close(Some(frame))).await
            }
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, finish).await;
    }
    metrics::gauge!(m::CLIENTS, "transport" => "ws").decrement(1.0);
    driver::record_close(close);
    close
}
