//! `/v1/devices`, `/v1/devices/{id}` and `/latest` against the real server: names and tags from
//! the config, presence, newest stored values, filters, grants (filtered in listings, 403 by id),
//! 401 and 404.

mod api_support;
mod common;

use api_support::{Lcg, Schedule, base_us, get, operator, seed};
use common::TestServer;
use serde_json::{Value, json};

async fn server() -> TestServer {
    TestServer::start(|c| {
        c.device_names = vec!["7:Pump-7".into(), "9:spare".into()];
        c.device_tags = vec!["7:site-a".into(), "8:site-b".into(), "8:north".into()];
    })
    .await
}

fn ids(body: &Value) -> Vec<String> {
    body["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["id"].as_str().expect("id is a string").to_string())
        .collect()
}

#[tokio::test]
async fn listing_shows_names_tags_presence_and_latest_values() {
    let server = server().await;
    let base = base_us();
    let mut rng = Lcg(7);
    let schedule = Schedule {
        base_us: base,
        spacing_us: 1_000_000,
        frames: 3,
        per_frame: 10,
    };
    let sent7 = seed(&server, 7, &[1, 2], schedule, &mut rng).await;
    // Device 8 stays connected while the listing is read, with one NaN reading.
    let mut dev8 = server.device(8).await;
    let mut frame = Vec::new();
    codecs::encode_telemetry(
        &mut frame,
        codecs::FrameMeta {
            device_id: 8,
            seq: 1,
            flags: 0,
        },
        base,
        &[codecs::Record::new(3, 1, 0, f64::NAN)],
    )
    .expect("encode");
    dev8.send_raw(frame).await;
    dev8.wait_ack(1).await;

    let token = operator(&server, &["*"]);
    let r = get(server.addr, "/v1/devices", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(
        ids(&body),
        ["7", "8", "9"],
        "sorted by id; 9 is only configured"
    );
    let d = &body["devices"];
    assert_eq!(d[0]["name"], "Pump-7");
    assert_eq!(d[0]["tags"], json!(["site-a"]));
    assert!(d[0]["last_seen_ms"].as_i64().is_some());
    assert!(d[0]["connected_at_ms"].as_i64().is_some());
    for c in [1u16, 2] {
        let last = sent7
            .iter()
            .filter(|r| r.1 == c)
            .max_by_key(|r| r.2)
            .expect("sent");
        let l = d[0]["latest"]
            .as_array()
            .expect("latest")
            .iter()
            .find(|l| l["channel"] == c)
            .expect("channel in latest");
        assert_eq!(l["ts_us"], last.2);
        assert_eq!(l["ts_ms"], last.2.div_euclid(1000));
        assert_eq!(l["value"].as_f64(), Some(last.3));
    }
    assert_eq!(d[1]["online"], true, "connected now");
    assert_eq!(d[1]["name"], Value::Null);
    assert_eq!(d[1]["latest"][0]["value"], Value::Null, "NaN is null");
    assert_eq!(d[1]["latest"][0]["quality"], 1, "the FAULT bit");
    assert_eq!(
        d[2],
        json!({"id": "9", "name": "spare", "tags": [], "online": false,
               "connected_at_ms": null, "last_seen_ms": null, "latest": []})
    );

    let one = get(server.addr, "/v1/devices/7", Some(&token)).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json(), d[0]);
    let latest = get(server.addr, "/v1/devices/7/latest", Some(&token)).await;
    assert_eq!(latest.status, 200);
    assert_eq!(
        latest.json(),
        json!({"device": "7", "latest": d[0]["latest"]})
    );
    let latest9 = get(server.addr, "/v1/devices/9/latest", Some(&token)).await;
    assert_eq!(latest9.json(), json!({"device": "9", "latest": []}));
}

#[tokio::test]
async fn filters_match_id_name_and_tags() {
    let server = server().await;
    let token = operator(&server, &["*"]);
    let cases = [
        ("q=pump", vec!["7"]),
        ("q=SITE", vec!["7", "8"]),
        ("q=9", vec!["9"]),
        ("q=nothing-like-this", vec![]),
        ("tag=north", vec!["8"]),
        ("tag=site", vec![]),
        ("q=site&tag=site-a", vec!["7"]),
    ];
    for (query, want) in cases {
        let r = get(server.addr, &format!("/v1/devices?{query}"), Some(&token)).await;
        assert_eq!(r.status, 200, "{query}: {}", r.body);
        assert_eq!(ids(&r.json()), want, "{query}");
    }
    for (query, code, param) in [
        ("colour=red", "unknown_parameter", "colour"),
        ("q=a&q=b", "duplicate_parameter", "q"),
        ("tag=", "invalid_parameter", "tag"),
    ] {
        let r = get(server.addr, &format!("/v1/devices?{query}"), Some(&token)).await;
        assert_eq!(r.status, 400, "{query}");
        assert_eq!(r.json()["error"], code, "{query}");
        assert_eq!(r.json()["parameter"], param, "{query}");
    }
}

#[tokio::test]
async fn grants_filter_listings_and_refuse_other_devices() {
    let server = server().await;
    let site_a = operator(&server, &["tag:site-a"]);
    let r = get(server.addr, "/v1/devices", Some(&site_a)).await;
    assert_eq!(ids(&r.json()), ["7"], "only granted devices are listed");
    for path in ["/v1/devices/8", "/v1/devices/8/latest", "/v1/devices/9"] {
        let r = get(server.addr, path, Some(&site_a)).await;
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        assert_eq!(r.json()["error"], "device_not_granted", "{path}");
    }
    assert_eq!(
        get(server.addr, "/v1/devices/7", Some(&site_a))
            .await
            .status,
        200
    );
    let only8 = operator(&server, &["8"]);
    assert_eq!(
        ids(&get(server.addr, "/v1/devices", Some(&only8)).await.json()),
        ["8"]
    );
    let none = operator(&server, &[]);
    assert_eq!(
        ids(&get(server.addr, "/v1/devices", Some(&none)).await.json()),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn unknown_devices_bad_ids_and_missing_tokens_get_json_errors() {
    let server = server().await;
    let token = operator(&server, &["*"]);
    let cases = [
        (
            "/v1/devices/12345",
            Some(token.as_str()),
            404,
            "unknown_device",
        ),
        (
            "/v1/devices/12345/latest",
            Some(token.as_str()),
            404,
            "unknown_device",
        ),
        (
            "/v1/devices/pump",
            Some(token.as_str()),
            400,
            "invalid_parameter",
        ),
        (
            "/v1/devices/99999999999999999999",
            Some(token.as_str()),
            400,
            "invalid_parameter",
        ),
        (
            "/v1/devices/7?x=1",
            Some(token.as_str()),
            400,
            "unknown_parameter",
        ),
        ("/v1/devices", None, 401, "missing_token"),
        ("/v1/devices/7", Some("garbage"), 401, "invalid_token"),
    ];
    for (path, token, status, code) in cases {
        let r = get(server.addr, path, token).await;
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert_eq!(r.json()["error"], code, "{path}");
    }
    let device_token = server.token(7);
    let r = get(server.addr, "/v1/devices", Some(&device_token)).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, "wrong_token_kind".into())
    );
    let r = get(server.addr, &format!("/v1/devices?token={token}"), None).await;
    assert_eq!(r.status, 200, "query-parameter token: {}", r.body);
    let r = api_support::get_with(
        server.addr,
        "/v1/devices",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (403, "origin_not_allowed".into())
    );
}

/// After a crash the store can still say a device is online (its disconnect was never written);
/// a restarted server has no connection from it, so the API says offline, keeping last-seen.
#[tokio::test]
async fn a_device_the_restarted_server_has_not_heard_from_is_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = TestServer::start_in(dir.path().to_path_buf(), |_| {}).await;
    let mut dev = first.device(5).await;
    let mut frame = Vec::new();
    codecs::encode_telemetry(
        &mut frame,
        codecs::FrameMeta {
            device_id: 5,
            seq: 1,
            flags: 0,
        },
        base_us(),
        &[codecs::Record::new(1, 0, 0, 2.5)],
    )
    .expect("encode");
    dev.send_raw(frame).await;
    dev.wait_ack(1).await;
    drop(dev);
    first.shutdown().await;
    // What a crash leaves behind: the stored flag still says connected.
    let changed = first
        .db()
        .execute("UPDATE devices SET online = 1 WHERE device_id = 5", [])
        .expect("update");
    assert_eq!(changed, 1, "the device row exists");

    let second = TestServer::start_in(dir.path().to_path_buf(), |_| {}).await;
    let token = operator(&second, &["*"]);
    let r = get(second.addr, "/v1/devices/5", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["online"], false, "{v}");
    assert!(v["last_seen_ms"].is_i64(), "last seen is kept: {v}");
    assert_eq!(v["latest"][0]["value"], 2.5, "{v}");
}
