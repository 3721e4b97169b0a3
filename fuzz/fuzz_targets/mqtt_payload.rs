//! Fuzzes the MQTT payload → samples mapping of the drivers crate
//! (`drivers::mqtt::payload`): a message payload read by a tag's route
//! (format json / plain / raw, JSON pointer or the whole payload, timestamp
//! pointer and format), then scaling, range quality and deadband
//! (`drivers::sample`), as the driver does with each received message.
//!
//! The first input byte chooses the mapping, the rest is the payload:
//! - bits 0-4: a tag of `SPECS` (modulo): data types, JSON pointers (one
//!   with an RFC 6901 escape), whole-payload json/plain/raw tags;
//! - bits 5-7: 0-4 = the timestamp format (epoch_s, epoch_ms, epoch_us,
//!   epoch_ns, rfc3339) of the tags with a timestamp pointer; 5 = no
//!   timestamp pointer (the receive time); 6-7 = every tag of `SPECS` reads
//!   the same message, as the tags of one device on one topic do (the JSON
//!   document is parsed once and shared), with the timestamp format of
//!   bits 0-4 (modulo 5).
//!
//! Routes are built as `drivers::mqtt::router::Router::new` builds them from
//! a validated device file (`pointer` = `None` for address `"payload"`; only
//! json tags have a timestamp pointer). Checks:
//! - `Message::read` never panics; an `Ok` value is of the tag's data type
//!   and within its range (what `Reason::OutOfRange` promises), and its time
//!   is the receive time when the route has no timestamp pointer;
//! - a message read by many tags gives each the same result as a fresh
//!   message read by that tag alone (the shared JSON parse changes nothing);
//! - `sample::reading` and `Deadband::admit` never panic on what it returns.

#![no_main]

use config::{DataType, MqttTag, PayloadFormat, TagConfig, TagOptions, TimestampFormat};
use drivers::mqtt::payload::Message;
use drivers::mqtt::router::Route;
use drivers::sample::{self, Deadband, Raw};
use libfuzzer_sys::fuzz_target;

/// One tag of the mapping.
struct Spec {
    name: &'static str,
    data_type: DataType,
    format: PayloadFormat,
    /// A JSON pointer, or `"payload"` for the whole payload.
    address: &'static str,
    timestamp_pointer: Option<&'static str>,
    scaling: f64,
    offset: f64,
    min_value: Option<f64>,
    max_value: Option<f64>,
    deadband: Option<f64>,
}

const fn spec(
    name: &'static str,
    data_type: DataType,
    format: PayloadFormat,
    address: &'static str,
    timestamp_pointer: Option<&'static str>,
) -> Spec {
    Spec {
        name,
        data_type,
        format,
        address,
        timestamp_pointer,
        scaling: 1.0,
        offset: 0.0,
        min_value: None,
        max_value: None,
        deadband: None,
    }
}

static SPECS: [Spec; 24] = {
    use DataType::*;
    use PayloadFormat::{Json, Plain, Raw};
    [
        Spec {
            scaling: 0.1,
            min_value: Some(-40.0),
            max_value: Some(150.0),
            deadband: Some(0.5),
            ..spec("oil_temp", Double, Json, "/sensors/0/temp", Some("/ts"))
        },
        spec(
            "pressure",
            Float,
            Json,
            "/sensors/1/pressure",
            Some("/sensors/1/ts"),
        ),
        spec("running", Boolean, Json, "/state/running", Some("/ts")),
        spec("strokes", UInt32, Json, "/count", Some("/ts")),
        spec("mode", String, Json, "/mode", None),
        spec("level", Int16, Json, "/a~1b/level", None),
        spec("small", Int8, Json, "/arr/3", None),
        spec("tiny", UInt8, Json, "/arr/0", None),
        spec("total", UInt64, Json, "/total", Some("/meta/time")),
        spec("delta", Int64, Json, "/delta", None),
        spec("wide", Int32, Json, "/wide", None),
        spec("word", UInt16, Json, "/word", None),
        spec("blob", ByteArray, Json, "/bytes", None),
        spec("when", DateTime, Json, "/when", None),
        Spec {
            offset: -273.15,
            ..spec("whole", Double, Json, "payload", None)
        },
        Spec {
            scaling: 0.1,
            offset: -10.0,
            max_value: Some(100.0),
            ..spec("plain_temp", Float, Plain, "payload", None)
        },
        spec("door", Boolean, Plain, "payload", None),
        spec("alarm", String, Plain, "payload", None),
        spec("since", DateTime, Plain, "payload", None),
        spec("counter", UInt64, Plain, "payload", None),
        spec("power", Float, Raw, "payload", None),
        spec("energy", Double, Raw, "payload", None),
        spec("raw_word", Int16, Raw, "payload", None),
        spec("frame", ByteArray, Raw, "payload", None),
    ]
};

const FORMATS: [TimestampFormat; 5] = [
    TimestampFormat::EpochS,
    TimestampFormat::EpochMs,
    TimestampFormat::EpochUs,
    TimestampFormat::EpochNs,
    TimestampFormat::Rfc3339,
];

/// Receive time of every message.
const RECEIVED_NS: u64 = 1_795_478_400_000_000_000;

/// The tag config and the route of `s` (timestamps in `ts_format`, or none).
fn tag(s: &Spec, ts_format: Option<TimestampFormat>) -> (TagConfig, Route) {
    let timestamp_pointer = ts_format.and(s.timestamp_pointer);
    let opts = MqttTag {
        topic: Some("plant/{device}/{tag}".into()),
        format: Some(s.format),
        timestamp_pointer: timestamp_pointer.map(Into::into),
        timestamp_format: ts_format,
    };
    let mut t = TagConfig::new(s.name, s.address, s.data_type, TagOptions::Mqtt(opts));
    t.scaling = s.scaling;
    t.offset = s.offset;
    t.min_value = s.min_value;
    t.max_value = s.max_value;
    t.deadband = s.deadband;
    let route = Route {
        tag: 0,
        format: s.format,
        pointer: (s.address != "payload").then(|| s.address.to_string()),
        timestamp: timestamp_pointer.zip(ts_format).map(|(p, f)| (p.to_string(), f)),
    };
    (t, route)
}

/// Whether `raw` is a value of `data_type`, within its range.
fn fits(data_type: DataType, raw: &Raw) -> bool {
    use DataType::*;
    match (data_type, raw) {
        (Boolean, Raw::Bool(_)) => true,
        (Int8, Raw::Int(i)) => i8::try_from(*i).is_ok(),
        (Int16, Raw::Int(i)) => i16::try_from(*i).is_ok(),
        (Int32, Raw::Int(i)) => i32::try_from(*i).is_ok(),
        (Int64 | DateTime, Raw::Int(_)) => true,
        (UInt8, Raw::UInt(u)) => u8::try_from(*u).is_ok(),
        (UInt16, Raw::UInt(u)) => u16::try_from(*u).is_ok(),
        (UInt32, Raw::UInt(u)) => u32::try_from(*u).is_ok(),
        (UInt64, Raw::UInt(_)) => true,
        (Float, Raw::Float(f)) => f.is_finite() && f.abs() <= f64::from(f32::MAX),
        (Double, Raw::Float(f)) => f.is_finite(),
        (String, Raw::String(_)) => true,
        (ByteArray, Raw::Bytes(_)) => true,
        _ => false,
    }
}

/// Reads one tag from `msg` and turns the value into a sample.
fn read(msg: &mut Message<'_>, t: &TagConfig, route: &Route, db: &mut Deadband) {
    let result = msg.read(route, t, RECEIVED_NS);
    if let Ok((raw, ts)) = &result {
        assert!(
            fits(t.data_type, raw),
            "tag {:?} ({:?}) read {raw:?}",
            t.name,
            t.data_type
        );
        if route.timestamp.is_none() {
            assert_eq!(
                *ts, RECEIVED_NS,
                "tag {:?}: a time without a timestamp pointer",
                t.name
            );
        }
    }
    // The same tag alone on a fresh message: the shared parse changes nothing.
    let alone = Message::new(msg.payload).read(route, t, RECEIVED_NS);
    assert_eq!(
        result, alone,
        "tag {:?}: shared and fresh messages disagree",
        t.name
    );
    if let Ok((raw, ts)) = result {
        let s = sample::reading(t, raw, ts);
        let _ = db.admit(t, &s);
        let _ = db.admit(t, &s);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let index = usize::from(selector & 0x1f);
    let mode = selector >> 5;
    let mut msg = Message::new(payload);
    if mode >= 6 {
        let ts_format = Some(FORMATS[index % FORMATS.len()]);
        for s in &SPECS {
            let (t, route) = tag(s, ts_format);
            read(&mut msg, &t, &route, &mut Deadband::default());
        }
    } else {
        let ts_format = FORMATS.get(usize::from(mode)).copied();
        let (t, route) = tag(&SPECS[index % SPECS.len()], ts_format);
        read(&mut msg, &t, &route, &mut Deadband::default());
    }
});
