//! Shared by the simulator's integration tests: an in-process ingest server on 127.0.0.1 with its
//! own data directory, and simulator configs built from flags.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use firmware_sim::config::SimConfig;

/// A running in-process ingest server.
pub struct Server {
    pub addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ingest::ServerError>>>,
}

impl Server {
    pub async fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        Server::start_at(dir, "127.0.0.1:0".parse().expect("addr")).await
    }

    /// A server on `listen` over the data directory `dir` (a restart when it held one before).
    pub async fn start_at(dir: tempfile::TempDir, listen: std::net::SocketAddr) -> Server {
        let mut config = ingest::Config::with_defaults(dir.path());
        config.listen = listen;
        config.sqlite_synchronous = ingest::config::SyncMode::Normal;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        ingest::auth::Authority::load_or_create(dir.path()).expect("secret");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(ingest::run(config, listener, async move {
            let _ = stopped.await;
        }));
        Server {
            addr,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn secret(&self) -> String {
        self.dir.path().join("token-secret").display().to_string()
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task").expect("server ran");
        }
    }

    /// Stops the server, waits `down`, and starts it again on the same port and data.
    pub async fn restart(mut self, down: Duration) -> Server {
        self.stop().await;
        tokio::time::sleep(down).await;
        let addr = self.addr;
        Server::start_at(self.dir, addr).await
    }

    /// (device, seq) -> readings stored, for every stored frame.
    pub fn stored(&self) -> Vec<(u64, u64, u64)> {
        let db =
            rusqlite::Connection::open(self.dir.path().join("telemux.sqlite3")).expect("open db");
        let mut stmt = db
            .prepare("SELECT device_id, seq, count(*) FROM stored_readings GROUP BY device_id, seq ORDER BY device_id, seq")
            .expect("prepare");
        stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    }

    /// Readings stored per device.
    pub fn stored_per_device(&self) -> HashMap<u64, u64> {
        let db = rusqlite::Connection::open(Path::new(&self.dir.path().join("telemux.sqlite3")))
            .expect("open db");
        let mut stmt = db
            .prepare("SELECT device_id, count(*) FROM stored_readings GROUP BY device_id")
            .expect("prepare");
        stmt.query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    }
}

/// A simulator config from flags (quiet).
pub fn sim(args: &[&str]) -> SimConfig {
    let mut all = vec!["firmware-sim", "--quiet"];
    all.extend_from_slice(args);
    SimConfig::parse_from(all)
}
