//! The control protocol: JSON requests from the client, replies and events from the server, and
//! the JSON form of readings. u64 values (device ids, positions) are JSON strings; clients may
//! send them as numbers or strings.
//!
//! Requests: `{"id": <any>, "op": "subscribe" | "unsubscribe" | "resume" | "ping", ...}`.
//! Replies: `{"id": .., "ok": true, ...}` or `{"id": .., "ok": false, "error": code, "message": text}`.

use bytes::Bytes;
use codecs::LiveRecord;
use serde_json::{Map, Value, json};

use crate::filter::{Policy, Selector, TagPattern};
use crate::hub::DeviceState;
use crate::log::Lost;

/// Largest control message accepted, in bytes.
pub const MAX_CONTROL_BYTES: usize = 64 * 1024;
/// Most device ids in one subscription.
pub const MAX_DEVICES_PER_SUBSCRIPTION: usize = 10_000;

/// Why a control message was refused (the reply's `error` is [`ProtocolError::code`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Not JSON.
    #[error("message is not valid JSON: {0}")]
    BadJson(String),
    /// JSON, but not an object.
    #[error("expected a JSON object, found {0}")]
    NotAnObject(&'static str),
    /// A required field is absent.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field has the wrong type or value.
    #[error("invalid field `{field}`: expected {expected}, found {found}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is accepted.
        expected: &'static str,
        /// What was sent.
        found: String,
    },
    /// Fields that exclude each other.
    #[error("fields `{0}` and `{1}` exclude each other: send one")]
    ConflictingFields(&'static str, &'static str),
    /// `op` names no operation.
    #[error("unknown op `{0}`: expected subscribe, unsubscribe, resume or ping")]
    UnknownOp(String),
    /// The token does not grant these devices.
    #[error("not granted: your token does not allow watching {0}")]
    NotGranted(String),
    /// `unsubscribe` of a subscription that does not exist.
    #[error("unknown subscription {0}")]
    UnknownSubscription(u64),
    /// Too many subscriptions on one connection.
    #[error("too many subscriptions: at most {0} per connection")]
    TooManySubscriptions(usize),
    /// A binary message from the client (control messages are JSON text).
    #[error("binary messages are not accepted from clients: send JSON text control messages")]
    BinaryNotAccepted,
}

impl ProtocolError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ProtocolError::BadJson(_) => "bad_json",
            ProtocolError::NotAnObject(_) => "not_an_object",
            ProtocolError::MissingField(_) => "missing_field",
            ProtocolError::InvalidField { .. } => "invalid_field",
            ProtocolError::ConflictingFields(..) => "conflicting_fields",
            ProtocolError::UnknownOp(_) => "unknown_op",
            ProtocolError::NotGranted(_) => "not_granted",
            ProtocolError::UnknownSubscription(_) => "unknown_subscription",
            ProtocolError::TooManySubscriptions(_) => "too_many_subscriptions",
            ProtocolError::BinaryNotAccepted => "binary_not_accepted",
        }
    }
}

/// Arguments of `subscribe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeArgs {
    /// What to watch.
    pub selector: Selector,
    /// Slow-consumer policy.
    pub policy: Policy,
    /// Whether to send a snapshot (default true).
    pub snapshot: bool,
    /// The client already has this subscription's readings up to this position (its resume
    /// position, when it resubscribes after a reconnect). If the session has streamed past it
    /// already, the subscription starts at the head and a `late_subscription` gap for it says
    /// what to fetch from the history API.
    pub after: Option<u64>,
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Add a subscription.
    Subscribe(SubscribeArgs),
    /// Remove subscription `sub`.
    Unsubscribe {
        /// Subscription id from the subscribe reply.
        sub: u64,
    },
    /// Continue after `position`.
    Resume {
        /// The last position the client holds.
        position: u64,
    },
    /// Liveness check.
    Ping,
}

/// A request with its id (echoed in the reply; `null` if absent).
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Request id.
    pub id: Value,
    /// Operation.
    pub op: Op,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A u64 given as a JSON number or a decimal string.
pub fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 64 {
        format!("{}...", s.chars().take(64).collect::<String>())
    } else {
        s
    }
}

/// Parses a selector from a `devices` value (`"*"`, an id, or a list of ids).
pub fn parse_devices(v: &Value) -> Result<Selector, ProtocolError> {
    let bad = |found: &Value| ProtocolError::InvalidField {
        field: "devices",
        expected: "\"*\", a device id, or a list of device ids",
        found: short(found),
    };
    if v.as_str().is_some_and(|s| s.trim() == "*") {
        return Ok(Selector::All);
    }
    let mut ids: Vec<u64> = match v {
        Value::Array(items) => {
            if items.is_empty() || items.len() > MAX_DEVICES_PER_SUBSCRIPTION {
                return Err(ProtocolError::InvalidField {
                    field: "devices",
                    expected: "a list of 1 to 10000 device ids",
                    found: format!("{} ids", items.len()),
                });
            }
            items
                .iter()
                .map(|i| as_u64(i).ok_or_else(|| bad(i)))
                .collect::<Result<_, _>>()?
        }
        other => vec![as_u64(other).ok_or_else(|| bad(other))?],
    };
    ids.sort_unstable();
    ids.dedup();
    Ok(Selector::Devices(ids))
}

/// Parses a tag pattern value.
pub fn parse_tag(v: &Value) -> Result<Selector, ProtocolError> {
    v.as_str()
        .and_then(TagPattern::parse)
        .map(Selector::Tag)
        .ok_or_else(|| ProtocolError::InvalidField {
            field: "tag",
            expected: "a tag or a tag prefix ending in `*`",
            found: short(v),
        })
}

/// Parses a policy name.
pub fn parse_policy(v: &Value) -> Result<Policy, ProtocolError> {
    v.as_str()
        .and_then(Policy::parse)
        .ok_or_else(|| ProtocolError::InvalidField {
            field: "policy",
            expected: "\"coalesce\", \"drop_oldest\" or \"disconnect\"",
            found: short(v),
        })
}

/// Parses one control message. On error, also returns the request id if one could be read.
pub fn parse_request(text: &str) -> Result<Request, (Value, ProtocolError)> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| (Value::Null, ProtocolError::BadJson(e.to_string())))?;
    let Value::Object(obj) = v else {
        return Err((Value::Null, ProtocolError::NotAnObject(type_name(&v))));
    };
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    parse_op(&obj)
        .map(|op| Request { id: id.clone(), op })
        .map_err(|e| (id, e))
}

fn parse_op(obj: &Map<String, Value>) -> Result<Op, ProtocolError> {
    let op = obj.get("op").ok_or(ProtocolError::MissingField("op"))?;
    let op = op.as_str().ok_or_else(|| ProtocolError::InvalidField {
        field: "op",
        expected: "a string",
        found: short(op),
    })?;
    match op {
        "subscribe" => {
            let selector = match (obj.get("devices"), obj.get("tag")) {
                (Some(_), Some(_)) => {
                    return Err(ProtocolError::ConflictingFields("devices", "tag"));
                }
                (Some(d), None) => parse_devices(d)?,
                (None, Some(t)) => parse_tag(t)?,
                (None, None) => return Err(ProtocolError::MissingField("devices")),
            };
            let policy = obj
                .get("policy")
                .map(parse_policy)
                .transpose()?
                .unwrap_or_default();
            let snapshot = match obj.get("snapshot") {
                None => true,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(ProtocolError::InvalidField {
                        field: "snapshot",
                        expected: "true or false",
                        found: short(other),
                    });
                }
            };
            let after = obj
                .get("after")
                .map(|v| {
                    as_u64(v).ok_or_else(|| ProtocolError::InvalidField {
                        field: "after",
                        expected: "a stream position (decimal string)",
                        found: short(v),
                    })
                })
                .transpose()?;
            Ok(Op::Subscribe(SubscribeArgs {
                selector,
                policy,
                snapshot,
                after,
            }))
        }
        "unsubscribe" => {
            let v = obj.get("sub").ok_or(ProtocolError::MissingField("sub"))?;
            let sub = as_u64(v).ok_or_else(|| ProtocolError::InvalidField {
                field: "sub",
                expected: "a subscription id",
                found: short(v),
            })?;
            Ok(Op::Unsubscribe { sub })
        }
        "resume" => {
            let v = obj
                .get("position")
                .ok_or(ProtocolError::MissingField("position"))?;
            let position = as_u64(v).ok_or_else(|| ProtocolError::InvalidField {
                field: "position",
                expected: "a stream position (decimal string)",
                found: short(v),
            })?;
            Ok(Op::Resume { position })
        }
        "ping" => Ok(Op::Ping),
        other => Err(ProtocolError::UnknownOp(other.chars().take(64).collect())),
    }
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(v.to_string())
}

/// `{"id": .., "ok": true, ...fields}`.
pub fn ok_reply(id: &Value, fields: Value) -> Bytes {
    let mut obj = Map::new();
    obj.insert("id".into(), id.clone());
    obj.insert("ok".into(), Value::Bool(true));
    if let Value::Object(extra) = fields {
        obj.extend(extra);
    }
    to_bytes(&Value::Object(obj))
}

/// `{"id": .., "ok": false, "error": code, "message": text}`.
pub fn error_reply(id: &Value, e: &ProtocolError) -> Bytes {
    to_bytes(&json!({"id": id, "ok": false, "error": e.code(), "message": e.to_string()}))
}

/// Why a `gap` was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapReason {
    /// `resume` with a position older than the log holds (beyond the resume window).
    ResumeWindow,
    /// `resume` with a position of an earlier server run.
    Restart,
    /// `resume` with a position this server never gave out.
    UnknownPosition,
    /// The client fell so far behind that the log evicted readings it had not received.
    SlowConsumer,
    /// The `drop_oldest` policy dropped readings of a client over its bound.
    DropOldest,
    /// A `subscribe` with `after` arrived when the session had already streamed past that
    /// position: the new subscription's readings in between are not sent (fetch them from the
    /// history API). Concerns only the subscriptions listed in `subs`; the client's position
    /// is unchanged.
    LateSubscription,
}

impl GapReason {
    /// Protocol name (also the metric label).
    pub fn name(self) -> &'static str {
        match self {
            GapReason::ResumeWindow => "resume_window",
            GapReason::Restart => "restart",
            GapReason::UnknownPosition => "unknown_position",
            GapReason::SlowConsumer => "slow_consumer",
            GapReason::DropOldest => "drop_oldest",
            GapReason::LateSubscription => "late_subscription",
        }
    }
}

fn opt_pos(p: Option<u64>) -> Value {
    p.map_or(Value::Null, |p| Value::String(p.to_string()))
}

/// A `gap` event: readings in positions `[from_position, to_position]` (reading times
/// `[from_ts_us, to_ts_us]`, each null if unknown) will not be delivered; backfill them from the
/// history API.
pub fn gap_event(
    reason: GapReason,
    lost: Option<Lost>,
    subs: &[u64],
    dropped: Option<u64>,
) -> Bytes {
    let mut v = json!({
        "type": "gap",
        "reason": reason.name(),
        "from_position": opt_pos(lost.map(|l| l.from_position)),
        "to_position": opt_pos(lost.map(|l| l.to_position)),
        "from_ts_us": lost.and_then(|l| l.from_ts_us),
        "to_ts_us": lost.and_then(|l| l.to_ts_us),
    });
    if !subs.is_empty() {
        v["subs"] = json!(subs);
    }
    if let Some(n) = dropped {
        v["dropped"] = json!(n);
    }
    to_bytes(&v)
}

/// A `coalesced` event: `dropped` older values were replaced by the newest per (device,
/// channel) (`kept` readings, sent next in frames with the `COALESCED` flag). `to_position` is
/// the client's position after them.
pub fn coalesced_event(dropped: u64, kept: u64, from: u64, to: u64, subs: &[u64]) -> Bytes {
    to_bytes(&json!({
        "type": "coalesced",
        "dropped": dropped,
        "kept": kept,
        "from_position": from.to_string(),
        "to_position": to.to_string(),
        "subs": subs,
    }))
}

/// An `online` / `offline` event.
pub fn presence_event(device_id: u64, online: bool, at_us: i64) -> Bytes {
    to_bytes(&json!({
        "type": if online { "online" } else { "offline" },
        "device": device_id.to_string(),
        "at_us": at_us,
    }))
}

fn device_json(id: u64, d: &DeviceState, with_channels: bool) -> Value {
    let mut v = json!({
        "device": id.to_string(),
        "online": d.online,
        "since_us": d.since_us,
    });
    if with_channels {
        v["tags"] = json!(&d.tags[..]);
        v["channels"] = Value::Array(
            d.channels
                .iter()
                .map(|c| {
                    json!({
                        "channel": c.channel,
                        "ts_us": c.ts_us,
                        "value": finite(c.value),
                        "quality": c.quality,
                        "position": c.position.to_string(),
                    })
                })
                .collect(),
        );
    }
    v
}

fn finite(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// A `snapshot` event: the latest value per channel and the online status of each device of
/// subscription `sub` (`position`: the head when it was taken).
pub fn snapshot_event(
    sub: u64,
    position: u64,
    devices: &[(u64, DeviceState)],
    truncated: bool,
) -> Bytes {
    to_bytes(&json!({
        "type": "snapshot",
        "sub": sub,
        "position": position.to_string(),
        "truncated": truncated,
        "devices": devices.iter().map(|(id, d)| device_json(*id, d, true)).collect::<Vec<_>>(),
    }))
}

/// A `presence` event: the online status of the client's devices (sent when the client's task
/// missed presence events).
pub fn presence_list_event(devices: &[(u64, DeviceState)], truncated: bool) -> Bytes {
    to_bytes(&json!({
        "type": "presence",
        "truncated": truncated,
        "devices": devices.iter().map(|(id, d)| device_json(*id, d, false)).collect::<Vec<_>>(),
    }))
}

/// The JSON form of a data frame:
/// `{"type":"readings","position":"P","coalesced":false,"readings":[{"device":"7","channel":1,"ts_us":..,"value":..,"quality":0}]}`
/// (`value` is null when not finite; the binary form carries the exact bits).
pub fn readings_json(
    position: u64,
    coalesced: bool,
    records: impl Iterator<Item = LiveRecord>,
) -> Bytes {
    use std::fmt::Write;
    let mut s = String::with_capacity(96 + 96 * records.size_hint().0);
    let _ = write!(
        s,
        r#"{{"type":"readings","position":"{position}","coalesced":{coalesced},"readings":["#
    );
    for (i, r) in records.enumerate() {
        if i > 0 {
            s.push(',');
        }
        let value = r.value.get();
        let _ = write!(
            s,
            r#"{{"device":"{}","channel":{},"ts_us":{},"value":"#,
            r.device_id.get(),
            r.channel.get(),
            r.ts_us.get()
        );
        if value.is_finite() {
            // `{:?}` of an f64 round-trips exactly and always has a digit after the point.
            let _ = write!(s, "{value:?}");
        } else {
            s.push_str("null");
        }
        let _ = write!(s, r#","quality":{}}}"#, r.quality.get());
    }
    s.push_str("]}");
    Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ProtocolError {
        parse_request(text).expect_err("refused").1
    }

    #[test]
    fn requests_parse_with_ids_and_defaults() {
        let r = parse_request(r#"{"id":1,"op":"subscribe","devices":["7",3,7]}"#).expect("ok");
        assert_eq!(r.id, json!(1));
        assert_eq!(
            r.op,
            Op::Subscribe(SubscribeArgs {
                selector: Selector::Devices(vec![3, 7]),
                policy: Policy::Coalesce,
                snapshot: true,
                after: None,
            })
        );
        let r = parse_request(r#"{"id":"a","op":"subscribe","devices":"*","policy":"disconnect"}"#)
            .expect("ok");
        assert!(matches!(
            r.op,
            Op::Subscribe(SubscribeArgs {
                selector: Selector::All,
                policy: Policy::Disconnect,
                ..
            })
        ));
        let r = parse_request(r#"{"id":2,"op":"resume","position":"18446744073709551615"}"#)
            .expect("ok");
        assert_eq!(r.op, Op::Resume { position: u64::MAX });
    }

    #[test]
    fn refusals_name_the_problem() {
        assert_eq!(err("{").code(), "bad_json");
        assert_eq!(err("[1]"), ProtocolError::NotAnObject("an array"));
        assert_eq!(err(r#"{"id":1}"#), ProtocolError::MissingField("op"));
        assert_eq!(err(r#"{"op":"dance"}"#).code(), "unknown_op");
        assert_eq!(
            err(r#"{"op":"subscribe"}"#),
            ProtocolError::MissingField("devices")
        );
        assert_eq!(
            err(r#"{"op":"subscribe","devices":"x"}"#).code(),
            "invalid_field"
        );
        assert_eq!(
            err(r#"{"op":"subscribe","devices":1,"tag":"a"}"#).code(),
            "conflicting_fields"
        );
        assert_eq!(
            err(r#"{"op":"subscribe","devices":1,"policy":"yolo"}"#).code(),
            "invalid_field"
        );
        assert_eq!(
            err(r#"{"op":"subscribe","devices":1,"after":"soon"}"#).code(),
            "invalid_field"
        );
        assert_eq!(
            err(r#"{"op":"resume"}"#),
            ProtocolError::MissingField("position")
        );
        let (id, _) = parse_request(r#"{"id":9,"op":"nope"}"#).expect_err("refused");
        assert_eq!(id, json!(9), "the id is echoed even on errors");
    }

    #[test]
    fn readings_json_is_valid_json_with_string_ids() {
        let recs = [
            LiveRecord::new(u64::MAX, 1, 2, 1_700_000_000_000_000, 21.5),
            LiveRecord::new(2, 0xF000, 1, 5, f64::NAN),
        ];
        let b = readings_json(42, true, recs.into_iter());
        let v: Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["position"], "42");
        assert_eq!(v["coalesced"], true);
        assert_eq!(v["readings"][0]["device"], u64::MAX.to_string());
        assert_eq!(v["readings"][0]["value"], 21.5);
        assert_eq!(v["readings"][0]["ts_us"], 1_700_000_000_000_000i64);
        assert_eq!(v["readings"][1]["value"], Value::Null);
    }
}
