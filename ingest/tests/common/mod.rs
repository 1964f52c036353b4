//! Test support: an in-process server on 127.0.0.1:0 with its own data directory, and a device
//! client speaking the real wire format over a real WebSocket.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use ingest::Config;
use ingest::auth::Authority;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A running in-process server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub authority: Arc<Authority>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ingest::ServerError>>>,
    _dir: Option<tempfile::TempDir>,
}

/// A config for tests: fast heartbeats, small batches, `normal` sync (tests need no fsync).
pub fn test_config(data_dir: &std::path::Path) -> Config {
    let mut c = Config::with_defaults(data_dir);
    c.listen = "127.0.0.1:0".parse().expect("addr");
    c.batch_max_delay = "2ms".parse().expect("duration");
    c.sqlite_synchronous = ingest::config::SyncMode::Normal;
    c.shutdown_timeout = "5s".parse().expect("duration");
    c
}

impl TestServer {
    /// Starts a server with a fresh data directory and `tweak` applied to the test config.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = TestServer::start_in(dir.path().to_path_buf(), tweak).await;
        s._dir = Some(dir);
        s
    }

    /// Starts a server over an existing data directory.
    pub async fn start_in(data_dir: PathBuf, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = test_config(&data_dir);
        tweak(&mut config);
        let listener = ingest::bind(config.listen, config.listen_backlog).expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let authority = Arc::new(Authority::load_or_create(&data_dir).expect("secret"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ingest::run(config, listener, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            data_dir,
            authority,
            stop: Some(stop),
            task: Some(task),
            _dir: None,
        }
    }

    /// Triggers graceful shutdown and waits for it.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server ran");
        }
    }

    /// Triggers graceful shutdown without waiting for it (see [`finished`](Self::finished)).
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits up to `within` for the server to stop by itself; its result, or `None` if it is
    /// still running.
    pub async fn finished(&mut self, within: Duration) -> Option<Result<(), ingest::ServerError>> {
        let task = self.task.as_mut()?;
        let result = tokio::time::timeout(within, task).await.ok()?;
        self.task = None;
        Some(result.expect("server task"))
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/devices/ws", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn token(&self, device_id: u64) -> String {
        self.authority.mint_device(device_id, None).expect("mint")
    }

    /// Connects device `device_id` with a valid token.
    pub async fn device(&self, device_id: u64) -> Device {
        Device::connect(&self.ws_url(), &self.token(device_id), device_id)
            .await
            .expect("connect")
    }

    /// Opens the store read-only-ish for assertions (a second SQLite connection, WAL).
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.data_dir.join(ingest::store::sqlite::DB_FILE))
            .expect("open db")
    }

    /// Stored readings of a device, as (seq, channel, ts_us, value).
    pub fn stored(&self, device_id: u64) -> Vec<(u64, u16, i64, f64)> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT seq, channel, ts_us, value FROM stored_readings WHERE device_id = ?1 ORDER BY seq, channel, ts_us")
            .expect("prepare");
        stmt.query_map([device_id as i64], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u16,
                r.get(2)?,
                r.get::<_, Option<f64>>(3)?.unwrap_or(f64::NAN),
            ))
        })
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What the server sent a device.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Ack(u64),
    Error {
        seq: u64,
        reason: u16,
        expected: u64,
        found: u64,
    },
    Close(u16, String),
    Ping,
    Other(String),
}

/// A device client.
pub struct Device {
    pub id: u64,
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    buf: Vec<u8>,
}

pub fn now_us() -> i64 {
    ingest::now_us()
}

/// A telemetry frame of `n` readings (values derived from seq so they can be checked).
pub fn frame(device_id: u64, seq: u64, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let records: Vec<codecs::Record> = (0..n)
        .map(|i| codecs::Record::new(i as u16 + 1, 0, i as u32, seq as f64 + i as f64 / 1000.0))
        .collect();
    codecs::encode_telemetry(
        &mut out,
        codecs::FrameMeta {
            device_id,
            seq,
            flags: 0,
        },
        now_us() - 1_000_000,
        &records,
    )
    .expect("encode");
    out
}

impl Device {
    /// Connects with `Authorization: Bearer`.
    pub async fn connect(
        url: &str,
        token: &str,
        id: u64,
    ) -> Result<Device, tokio_tungstenite::tungstenite::Error> {
        let mut req = url.into_client_request()?;
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Device {
            id,
            ws,
            buf: Vec::new(),
        })
    }

    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(Bytes::from(bytes)))
            .await
            .expect("send");
    }

    /// Sends a telemetry frame with `n` readings.
    pub async fn send(&mut self, seq: u64, n: usize) {
        let f = frame(self.id, seq, n);
        self.send_raw(f).await;
    }

    /// Next reply (pings are answered by the library and skipped), within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Reply> {
        loop {
            let msg = tokio::time::timeout(within, self.ws.next()).await.ok()??;
            let msg = match msg {
                Ok(m) => m,
                Err(e) => return Some(Reply::Other(e.to_string())),
            };
            return Some(match msg {
                Message::Binary(b) => match codecs::decode(
                    &b,
                    codecs::Direction::ServerToDevice,
                    &codecs::Limits::default(),
                    now_us(),
                ) {
                    Ok(codecs::Frame::Ack { header }) => Reply::Ack(header.seq.get()),
                    Ok(codecs::Frame::Error { header, body }) => Reply::Error {
                        seq: header.seq.get(),
                        reason: body.reason.get(),
                        expected: body.expected.get(),
                        found: body.found.get(),
                    },
                    other => Reply::Other(format!("{other:?}")),
                },
                Message::Close(Some(f)) => Reply::Close(u16::from(f.code), f.reason.to_string()),
                Message::Close(None) => Reply::Close(u16::from(CloseCode::Status), String::new()),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => Reply::Other(format!("{other:?}")),
            });
        }
    }

    /// Waits for an ack >= `seq` (skipping lower acks); panics on anything else.
    pub async fn wait_ack(&mut self, seq: u64) -> u64 {
        loop {
            match self.next(Duration::from_secs(10)).await {
                Some(Reply::Ack(a)) if a >= seq => return a,
                Some(Reply::Ack(_)) => continue,
                other => panic!("device {}: waiting for ack {seq}, got {other:?}", self.id),
            }
        }
    }

    /// Waits for the close frame, skipping acks and errors; returns its code and reason.
    pub async fn wait_close(&mut self) -> (u16, String) {
        loop {
            match self.next(Duration::from_secs(10)).await {
                Some(Reply::Close(code, reason)) => return (code, reason),
                Some(Reply::Ack(_) | Reply::Error { .. }) => continue,
                other => panic!("device {}: waiting for close, got {other:?}", self.id),
            }
        }
    }
}

/// Sends `GET path` with `headers` on a new connection (`Connection: close`).
async fn send_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    s
}

/// Plain HTTP GET returning (status, body) without an HTTP client crate; status 0 when the
/// server answered nothing.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut s = send_get(addr, path, headers).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `GET path` with extra headers: the whole response, its headers, and the body (chunked
/// bodies decoded; the history API streams).
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpReply {
    use tokio::io::AsyncReadExt;
    let mut s = send_get(addr, path, headers).await;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .expect("response within 30s")
        .expect("read");
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head")
        + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(&raw[head_end..])
    } else {
        raw[head_end..].to_vec()
    };
    HttpReply {
        status,
        headers,
        body: String::from_utf8(body).expect("utf-8 body"),
    }
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            panic!("truncated chunked body");
        };
        let size_text = String::from_utf8_lossy(&b[..eol]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        assert!(b.len() >= size + 2, "truncated chunk");
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

// ---- Edge test support (added for tests/edge_*.rs) ----

impl Device {
    /// Connects without an `Authorization` header (the token, if any, is in `url`).
    pub async fn connect_url(
        url: &str,
        id: u64,
    ) -> Result<Device, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Device {
            id,
            ws,
            buf: Vec::new(),
        })
    }

    /// Sends one binary message; `false` if the connection is already gone.
    pub async fn try_send_raw(&mut self, bytes: Vec<u8>) -> bool {
        self.ws
            .send(Message::Binary(Bytes::from(bytes)))
            .await
            .is_ok()
    }

    /// Like [`Device::next`], but reports pings (the library still answers them on the next read).
    pub async fn next_with_pings(&mut self, within: Duration) -> Option<Reply> {
        let msg = tokio::time::timeout(within, self.ws.next()).await.ok()??;
        Some(match msg {
            Ok(Message::Ping(_)) => Reply::Ping,
            Ok(Message::Close(Some(f))) => Reply::Close(u16::from(f.code), f.reason.to_string()),
            Ok(Message::Binary(b)) => match codecs::decode(
                &b,
                codecs::Direction::ServerToDevice,
                &codecs::Limits::default(),
                now_us(),
            ) {
                Ok(codecs::Frame::Ack { header }) => Reply::Ack(header.seq.get()),
                other => Reply::Other(format!("{other:?}")),
            },
            other => Reply::Other(format!("{other:?}")),
        })
    }
}

/// An HTTP response read off a raw socket.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status, self.body
            )
        })
    }
}

/// Sends a well-formed WebSocket upgrade request for `path` (with `headers` added) on a raw
/// socket. Returns the response (with its body when it is not a 101) and the socket, which a 101
/// leaves open as a WebSocket that this side never reads or answers unless the caller does.
pub async fn ws_upgrade(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (HttpReply, TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk).await.expect("read head");
            assert!(n > 0, "connection closed before the response head: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut body = buf[head_end..].to_vec();
        if status != 101 {
            let len = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .expect("content-length on a refusal");
            while body.len() < len {
                let n = s.read(&mut chunk).await.expect("read body");
                assert!(n > 0, "connection closed in the body");
                body.extend_from_slice(&chunk[..n]);
            }
        }
        HttpReply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).to_string(),
        }
    };
    let reply = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("upgrade response within 5s");
    (reply, s)
}

/// Reads a raw socket until the peer closes it (or `within` passes) and returns every byte.
pub async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    out
}

/// Splits unmasked server-to-client WebSocket frames into (opcode, payload).
pub fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let (len, start) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 if bytes.len() >= 10 => (
                u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            n if n < 126 => (n as usize, 2),
            _ => break,
        };
        let Some(payload) = bytes.get(start..start + len) else {
            break;
        };
        out.push((opcode, payload.to_vec()));
        bytes = &bytes[start + len..];
    }
    out
}

/// The body of `GET /metrics`.
pub async fn metrics_text(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics", &[]).await;
    assert_eq!(status, 200, "/metrics: {body}");
    body
}

/// Sum of the samples of `name` whose labels include `labels` (0 when there is none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(series, value)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
