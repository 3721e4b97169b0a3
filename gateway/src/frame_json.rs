//! Frames as JSON (JSON Lines of `wal tail --json` and the file sink) and as
//! one human-readable line (`wal tail`).

use proto::{FrameEnvelope, FrameType};
use serde_json::{json, Value as Json};

use crate::status::{quality_str, rfc3339, value_json};

fn type_name(t: i32) -> &'static str {
    match FrameType::try_from(t) {
        Ok(FrameType::Data) => "DATA",
        Ok(FrameType::Command) => "COMMAND",
        Ok(FrameType::Event) => "EVENT",
        Ok(FrameType::Heartbeat) => "HEARTBEAT",
        _ => "UNSPECIFIED",
    }
}

/// `{"seq", "ts", "ts_ns", "type", …decoded payload}`; an undecodable payload
/// gives `"error"` instead of the payload fields.
pub fn frame(f: &FrameEnvelope) -> Json {
    let mut out = json!({
        "seq": f.sequence_id,
        "ts": rfc3339(f.timestamp_ns),
        "ts_ns": f.timestamp_ns,
        "type": type_name(f.frame_type),
    });
    let payload = match FrameType::try_from(f.frame_type) {
        Ok(FrameType::Data) => f.data_frame().map(|d| {
            json!({
                "device": d.device_id,
                "samples": d.samples.iter().map(|s| json!({
                    "tag": s.tag,
                    "value": s.value.as_ref().map_or(Json::Null, value_json),
                    "raw_value": s.raw_value.as_ref().map_or(Json::Null, value_json),
                    "quality": quality_str(s.quality),
                    "ts_ns": s.source_ts_ns,
                    "error_code": s.error_code,
                })).collect::<Vec<_>>(),
            })
        }),
        Ok(FrameType::Event) => f.event_frame().map(|e| {
            json!({
                "event_id": e.event_id,
                "kind": proto::EventKind::try_from(e.kind).map_or("UNKNOWN", |k| k.as_str_name()),
                "device": e.device_id,
                "tag": e.tag,
                "rule_id": e.rule_id,
                "level": e.level,
                "message": e.message,
                "value": e.value.as_ref().map_or(Json::Null, value_json),
                "status": e.status,
                "event_ts_ns": e.event_ts_ns,
                "attributes": e.attributes,
            })
        }),
        Ok(FrameType::Command) => f.command_frame().map(|c| {
            json!({
                "command_id": c.command_id,
                "device": c.device_id,
                "tag": c.tag,
                "value": c.value.as_ref().map_or(Json::Null, value_json),
                "issued_ts_ns": c.issued_ts_ns,
                "origin": c.origin,
            })
        }),
        _ => Ok(json!({ "bytes": f.data.len() })),
    };
    if let Json::Object(m) = &mut out {
        match payload {
            Ok(Json::Object(p)) => m.extend(p),
            Ok(_) => {}
            Err(e) => {
                m.insert("error".into(), json!(e.to_string()));
            }
        }
    }
    out
}

/// `#seq  time  TYPE  device  tag=value …` (BAD samples as `tag=BAD(code)`,
/// UNCERTAIN ones with a `?`).
pub fn human(f: &FrameEnvelope) -> String {
    let head = format!(
        "#{:<10} {} {:<9}",
        f.sequence_id,
        rfc3339(f.timestamp_ns),
        type_name(f.frame_type)
    );
    match FrameType::try_from(f.frame_type) {
        Ok(FrameType::Data) => match f.data_frame() {
            Ok(d) => {
                let mut line = format!("{head} {}", d.device_id);
                for s in &d.samples {
                    let v = s.value.as_ref().map_or(Json::Null, value_json);
                    match quality_str(s.quality) {
                        "BAD" => line.push_str(&format!(" {}=BAD({})", s.tag, s.error_code)),
                        "UNCERTAIN" => line.push_str(&format!(" {}={v}?", s.tag)),
                        _ => line.push_str(&format!(" {}={v}", s.tag)),
                    }
                }
                line
            }
            Err(e) => format!("{head} <undecodable: {e}>"),
        },
        _ => {
            let j = frame(f);
            format!("{head} {j}")
        }
    }
}
