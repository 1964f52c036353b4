//! Test support for the live endpoints: a dashboard WebSocket client (binary or JSON), an SSE
//! client over a raw socket (HTTP/1.1 chunked), operator tokens.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::TestServer;

/// An operator token for `devices` (ids, `*`, `tag:..`), valid for an hour.
pub fn operator(server: &TestServer, devices: &[&str]) -> String {
    server
        .authority
        .mint_operator(
            "test",
            devices.iter().map(|s| s.to_string()).collect(),
            Some(Duration::from_secs(3600)),
        )
        .expect("mint")
}

/// One thing a dashboard received.
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    /// A data frame: (position = header seq, flags, records (device, channel, ts_us, value)).
    Data(u64, u16, Vec<(u64, u16, i64, f64)>),
    /// A JSON message (reply, event, or JSON readings).
    Json(Value),
    /// The close frame (code, reason).
    Close(u16, String),
    /// The connection ended without a close frame, or nothing arrived in time.
    End,
}

/// A dashboard client over any stream.
pub struct Live<S> {
    pub ws: WebSocketStream<S>,
    next_id: u64,
}

pub type LiveClient = Live<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Connects to `/v1/live` with a bearer token and optional subprotocol.
pub async fn connect(server: &TestServer, token: &str, subprotocol: Option<&str>) -> LiveClient {
    let mut req = format!("ws://{}/v1/live", server.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    if let Some(p) = subprotocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().expect("header"));
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("live connect");
    if let Some(p) = subprotocol {
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(p)
        );
    }
    Live { ws, next_id: 1 }
}

/// Connects over a socket with a tiny receive buffer (so a client that stops reading fills the
/// path quickly).
pub async fn connect_small(server: &TestServer, token: &str) -> Live<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(server.addr).await.expect("connect");
    let mut req = format!("ws://{}/v1/live?token={token}", server.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().remove("authorization");
    let (ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .expect("live connect");
    Live { ws, next_id: 1 }
}

fn decode(bytes: &[u8]) -> Got {
    match codecs::decode(
        bytes,
        codecs::Direction::ServerToDashboard,
        &codecs::Limits::default(),
        0,
    ) {
        Ok(codecs::Frame::Live { header, records }) => Got::Data(
            header.seq.get(),
            header.flags.get(),
            records
                .iter()
                .map(|r| {
                    (
                        r.device_id.get(),
                        r.channel.get(),
                        r.ts_us.get(),
                        r.value.get(),
                    )
                })
                .collect(),
        ),
        other => panic!("not a live frame: {other:?}"),
    }
}

impl<S> Live<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    /// Sends a control message; returns its request id.
    pub async fn request(&mut self, op: &str, fields: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = serde_json::json!({"id": id, "op": op});
        if let (Some(m), Value::Object(f)) = (msg.as_object_mut(), fields) {
            m.extend(f);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send control");
        id
    }

    /// Reads data until it holds as many values as `target` says (the test lowers it once it
    /// knows how many were sent), checking that nothing is coalesced, positions increase and
    /// only presence events arrive besides data. `who` names the client in failures.
    pub async fn read_all(
        &mut self,
        target: tokio::sync::watch::Receiver<usize>,
        who: &str,
    ) -> Vec<f64> {
        let mut values = Vec::new();
        let mut last_pos = 0;
        while values.len() < *target.borrow() {
            match self.next(Duration::from_millis(200)).await {
                Got::Data(pos, flags, recs) => {
                    assert_eq!(flags, 0, "{who} is never coalesced");
                    assert!(pos > last_pos, "{who}: positions increase");
                    last_pos = pos;
                    values.extend(recs.into_iter().map(|r| r.3));
                }
                Got::Json(v) if v["type"] == "online" || v["type"] == "offline" => {}
                Got::Json(v) => panic!("{who} gets no other event: {v}"),
                Got::End => {} // quiet for a moment (the device may have stopped); check again
                other => panic!("{who}: {other:?} after {} readings", values.len()),
            }
        }
        values
    }

    /// Next message within `within` (pings skipped).
    pub async fn next(&mut self, within: Duration) -> Got {
        loop {
            let msg = match tokio::time::timeout(within, self.ws.next()).await {
                Ok(Some(Ok(m))) => m,
                _ => return Got::End,
            };
            return match msg {
                Message::Binary(b) => decode(&b),
                Message::Text(t) => Got::Json(serde_json::from_str(&t).expect("json text")),
                Message::Close(Some(f)) => Got::Close(u16::from(f.code), f.reason.to_string()),
                Message::Close(None) => Got::Close(1005, String::new()),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
        }
    }

    /// The reply to request `id` (events before it are skipped).
    pub async fn reply(&mut self, id: u64) -> Value {
        for _ in 0..100 {
            if let Got::Json(v) = self.next(Duration::from_secs(5)).await {
                if v.get("id") == Some(&Value::from(id)) {
                    return v;
                }
                continue;
            }
            panic!("no reply to request {id}");
        }
        panic!("no reply to request {id} among 100 messages");
    }

    /// Subscribes and returns (reply, snapshot); panics on refusal.
    pub async fn subscribe(&mut self, fields: Value) -> (Value, Value) {
        let id = self.request("subscribe", fields).await;
        let reply = self.reply(id).await;
        assert_eq!(reply["ok"], true, "subscribe refused: {reply}");
        let snapshot = self.event("snapshot").await;
        (reply, snapshot)
    }

    /// Next JSON event of `kind` (data frames and other events before it are skipped).
    pub async fn event(&mut self, kind: &str) -> Value {
        for _ in 0..10_000 {
            match self.next(Duration::from_secs(5)).await {
                Got::Json(v) if v["type"] == kind => return v,
                Got::Json(_) | Got::Data(..) => continue,
                other => panic!("waiting for a `{kind}` event, got {other:?}"),
            }
        }
        panic!("no `{kind}` event");
    }

    /// Binary records until `n` were received: (position of each frame's last record, records).
    pub async fn records(&mut self, n: usize) -> Vec<(u64, (u64, u16, i64, f64))> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next(Duration::from_secs(10)).await {
                Got::Data(pos, flags, recs) => {
                    assert_eq!(flags, 0, "no coalescing expected");
                    let len = recs.len();
                    for (i, r) in recs.into_iter().enumerate() {
                        // Only the last record's position is in the frame.
                        out.push((if i + 1 == len { pos } else { 0 }, r));
                    }
                }
                Got::Json(v) if v["type"] == "online" || v["type"] == "offline" => continue,
                other => panic!(
                    "waiting for {n} readings (have {}), got {other:?}",
                    out.len()
                ),
            }
        }
        out
    }
}

/// Values the common `frame(device, seq, n)` helper puts in a frame.
pub fn frame_values(seq: u64, n: usize) -> Vec<f64> {
    (0..n).map(|i| seq as f64 + i as f64 / 1000.0).collect()
}

/// An SSE client over a raw socket (decodes HTTP/1.1 chunked transfer encoding).
pub struct Sse {
    pub status: u16,
    pub head: String,
    sock: TcpStream,
    /// Decoded body bytes not yet returned as events.
    body: Vec<u8>,
    /// Raw bytes not yet decoded.
    raw: Vec<u8>,
    chunked: bool,
}

/// One SSE event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

impl Sse {
    /// `GET path` with extra headers; returns after the response head.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut sock = TcpStream::connect(addr).await.expect("connect");
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        sock.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut chunk))
                .await
                .expect("response head in time")
                .expect("read");
            assert!(n > 0, "closed before the response head");
            raw.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_string();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        Sse {
            status,
            head,
            sock,
            body: Vec::new(),
            raw: raw[end..].to_vec(),
            chunked,
        }
    }

    /// The whole (non-streaming) body, e.g. of an error response.
    pub async fn full_body(mut self) -> String {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.sock.read_to_end(&mut self.raw))
            .await;
        self.decode();
        String::from_utf8_lossy(&self.body).to_string()
    }

    fn decode(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).to_string();
            let Ok(size) = usize::from_str_radix(size_text.trim(), 16) else {
                return;
            };
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            let start = line_end + 2;
            self.body.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
    }

    /// The next event (comments and `retry:` skipped), or `None` if nothing came in `within` or
    /// the stream ended.
    pub async fn next(&mut self, within: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.decode();
            while let Some(i) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8_lossy(&self.body[..i]).to_string();
                self.body.drain(..i + 2);
                let mut ev = Event {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut has_data = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        ev.data = serde_json::from_str(v).expect("event data is JSON");
                        has_data = true;
                    }
                }
                if has_data {
                    return Some(ev);
                }
            }
            let mut chunk = [0u8; 8192];
            let n = match tokio::time::timeout_at(deadline, self.sock.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => return None,
            };
            self.raw.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next event named `kind` (others skipped).
    pub async fn event(&mut self, kind: &str) -> Event {
        loop {
            match self.next(Duration::from_secs(10)).await {
                Some(e) if e.event == kind => return e,
                Some(_) => continue,
                None => panic!("stream ended waiting for `{kind}`"),
            }
        }
    }
}
