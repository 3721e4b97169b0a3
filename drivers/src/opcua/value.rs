//! OPC UA values to samples and back.
//!
//! - Status: Good → GOOD; Uncertain → UNCERTAIN with the value kept; Bad →
//!   BAD without a value. A Good code with info bits (Overflow: the
//!   server's queue dropped values) stays GOOD with the code kept. `error_code` holds the 32-bit StatusCode
//!   reinterpreted as `i32` (so Bad codes are negative, Uncertain codes
//!   positive, Good 0); errors the gateway detects itself are given the
//!   matching OPC UA code (`BadTypeMismatch`, `BadOutOfRange`, …).
//! - Time: the tag's [`TimestampSource`] chooses between SourceTimestamp,
//!   ServerTimestamp and the gateway clock, falling back in that order.
//! - Types: the tag's `data_type` is what the gateway publishes. A numeric
//!   value of another numeric OPC UA type is converted when it fits exactly
//!   (an Int32 node read by an Int64 tag); anything else is
//!   `BadTypeMismatch`, never a silent rounding.
//! - Arrays: one JSON string sample, or one sample per element named
//!   `tag[i]` ([`ArrayMode`]).
//! - DateTime values are milliseconds since the Unix epoch (as for MQTT).

use config::{ArrayMode, DataType, TagConfig, TimestampSource};
use opcua::types::{ByteString, DataValue, DateTime, StatusCode, UAString, Variant};
use proto::{Quality, Sample};

use crate::sample::{self, Raw};

/// `error_code` of a StatusCode.
pub fn code(s: StatusCode) -> i32 {
    s.bits() as i32
}

/// Nanoseconds since the Unix epoch of an OPC UA DateTime (`None` for the
/// null time and anything before 1970).
pub fn unix_ns(t: &DateTime) -> Option<u64> {
    if t.is_null() {
        return None;
    }
    let c = t.as_chrono();
    let ns = c.timestamp_nanos_opt()?;
    u64::try_from(ns).ok().filter(|n| *n > 0)
}

/// The sample time of `dv`.
pub fn timestamp(dv: &DataValue, source: TimestampSource, now_ns: u64) -> u64 {
    let src = dv.source_timestamp.as_ref().and_then(unix_ns);
    let srv = dv.server_timestamp.as_ref().and_then(unix_ns);
    match source {
        TimestampSource::Source => src.or(srv).unwrap_or(now_ns),
        TimestampSource::Server => srv.unwrap_or(now_ns),
        TimestampSource::Gateway => now_ns,
    }
}

/// The samples of one value of `tag` (several for an array read as elements).
pub fn samples(tag: &TagConfig, dv: DataValue, array_mode: ArrayMode, ts_ns: u64) -> Vec<Sample> {
    let status = dv.status.unwrap_or(StatusCode::Good);
    if status.is_bad() {
        return vec![sample::failed(tag, code(status), ts_ns)];
    }
    let mut out = match dv.value {
        None | Some(Variant::Empty) => {
            return vec![sample::failed(tag, code(StatusCode::BadNoData), ts_ns)];
        }
        Some(Variant::Array(a)) => match array_mode {
            ArrayMode::Json => vec![match array_json(tag.data_type, &a.values) {
                Ok(json) => sample::reading(tag, Raw::String(json), ts_ns),
                Err(c) => sample::failed(tag, code(c), ts_ns),
            }],
            ArrayMode::Elements => a
                .values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let mut s = match raw(tag.data_type, v) {
                        Ok(r) => sample::reading(tag, r, ts_ns),
                        Err(c) => sample::failed(tag, code(c), ts_ns),
                    };
                    s.tag = format!("{}[{i}]", tag.name);
                    s
                })
                .collect(),
        },
        Some(v) => vec![match raw(tag.data_type, &v) {
            Ok(r) => sample::reading(tag, r, ts_ns),
            Err(c) => sample::failed(tag, code(c), ts_ns),
        }],
    };
    if status.is_uncertain() {
        for s in &mut out {
            if s.quality == Quality::Good as i32 {
                s.quality = Quality::Uncertain as i32;
                s.error_code = code(status);
            }
        }
    } else if status.bits() != 0 {
        // Good with info bits (e.g. Overflow 0x480: the server's queue
        // dropped values): the value is good, the code says what happened.
        for s in &mut out {
            if s.error_code == 0 {
                s.error_code = code(status);
            }
        }
    }
    out
}

/// An array as JSON text, its elements converted to `dt` first.
fn array_json(dt: DataType, values: &[Variant]) -> Result<String, StatusCode> {
    let items = values
        .iter()
        .map(|v| {
            Ok(match raw(dt, v)? {
                Raw::Bool(b) => serde_json::Value::Bool(b),
                Raw::Int(i) => serde_json::Value::from(i),
                Raw::UInt(u) => serde_json::Value::from(u),
                Raw::Float(f) => serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into),
                Raw::String(s) => serde_json::Value::String(s),
                Raw::Bytes(b) => serde_json::Value::from(b),
            })
        })
        .collect::<Result<Vec<_>, StatusCode>>()?;
    Ok(serde_json::Value::Array(items).to_string())
}

/// A scalar value read as `dt`.
pub fn raw(dt: DataType, v: &Variant) -> Result<Raw, StatusCode> {
    use DataType as D;
    let int = |i: i128| -> Result<Raw, StatusCode> {
        let (lo, hi): (i128, i128) = match dt {
            D::Int8 => (i8::MIN.into(), i8::MAX.into()),
            D::Int16 => (i16::MIN.into(), i16::MAX.into()),
            D::Int32 => (i32::MIN.into(), i32::MAX.into()),
            D::Int64 => (i64::MIN.into(), i64::MAX.into()),
            D::UInt8 => (0, u8::MAX.into()),
            D::UInt16 => (0, u16::MAX.into()),
            D::UInt32 => (0, u32::MAX.into()),
            D::UInt64 => (0, u64::MAX.into()),
            // Exact only up to 2^53 (a double) or 2^24 (a float).
            D::Float | D::Double => {
                let f = if dt == D::Float {
                    f64::from(i as f32)
                } else {
                    i as f64
                };
                return if f as i128 == i {
                    Ok(Raw::Float(f))
                } else {
                    Err(StatusCode::BadOutOfRange)
                };
            }
            _ => return Err(StatusCode::BadTypeMismatch),
        };
        if i < lo || i > hi {
            Err(StatusCode::BadOutOfRange)
        } else if lo < 0 {
            Ok(Raw::Int(i as i64))
        } else {
            Ok(Raw::UInt(i as u64))
        }
    };
    match v {
        Variant::Boolean(b) => match dt {
            D::Boolean => Ok(Raw::Bool(*b)),
            _ => Err(StatusCode::BadTypeMismatch),
        },
        Variant::SByte(i) => int((*i).into()),
        Variant::Byte(i) => int((*i).into()),
        Variant::Int16(i) => int((*i).into()),
        Variant::UInt16(i) => int((*i).into()),
        Variant::Int32(i) => int((*i).into()),
        Variant::UInt32(i) => int((*i).into()),
        Variant::Int64(i) => int((*i).into()),
        Variant::UInt64(i) => int((*i).into()),
        Variant::Float(f) => match dt {
            D::Float | D::Double => Ok(Raw::Float(f64::from(*f))),
            _ => Err(StatusCode::BadTypeMismatch),
        },
        Variant::Double(f) => match dt {
            D::Double => Ok(Raw::Float(*f)),
            // A double that a float holds exactly (1.5) is a float.
            D::Float if f64::from(*f as f32) == *f || f.is_nan() => Ok(Raw::Float(*f)),
            _ => Err(StatusCode::BadTypeMismatch),
        },
        Variant::String(s) => match dt {
            D::String => Ok(Raw::String(s.value().clone().unwrap_or_default())),
            _ => Err(StatusCode::BadTypeMismatch),
        },
        Variant::LocalizedText(t) => match dt {
            D::String => Ok(Raw::String(t.text.value().clone().unwrap_or_default())),
            _ => Err(StatusCode::BadTypeMismatch),
        },
        Variant::DateTime(t) => match dt {
            D::DateTime => {
                let ms = t.as_chrono().timestamp_millis();
                Ok(Raw::Int(ms))
            }
            D::String => Ok(Raw::String(t.as_chrono().to_rfc3339())),
            _ => Err(StatusCode::BadTypeMismatch),
        },
        Variant::ByteString(b) => match dt {
            D::ByteArray => Ok(Raw::Bytes(b.value.clone().unwrap_or_default())),
            _ => Err(StatusCode::BadTypeMismatch),
        },
        Variant::Guid(g) if dt == D::String => Ok(Raw::String(g.to_string())),
        Variant::NodeId(n) if dt == D::String => Ok(Raw::String(n.to_string())),
        Variant::StatusCode(c) => match dt {
            D::UInt32 | D::UInt64 | D::Int64 => int(c.bits().into()),
            D::String => Ok(Raw::String(c.to_string())),
            _ => Err(StatusCode::BadTypeMismatch),
        },
        _ => Err(StatusCode::BadTypeMismatch),
    }
}

/// The value to write to a node of `tag`'s type, from the engineering
/// value of a command (inverse scaling and exact range checks included).
pub fn variant_for_write(tag: &TagConfig, value: &proto::Value) -> Result<Variant, String> {
    use DataType as D;
    let raw = sample::raw_for_write(tag, value)?;
    let out_of_range = || format!("value out of range for {:?}", tag.data_type);
    Ok(match (tag.data_type, raw) {
        (D::Boolean, Raw::Bool(b)) => Variant::Boolean(b),
        (D::Int8, Raw::Int(i)) => Variant::SByte(i8::try_from(i).map_err(|_| out_of_range())?),
        (D::UInt8, Raw::UInt(u)) => Variant::Byte(u8::try_from(u).map_err(|_| out_of_range())?),
        (D::Int16, Raw::Int(i)) => Variant::Int16(i16::try_from(i).map_err(|_| out_of_range())?),
        (D::UInt16, Raw::UInt(u)) => Variant::UInt16(u16::try_from(u).map_err(|_| out_of_range())?),
        (D::Int32, Raw::Int(i)) => Variant::Int32(i32::try_from(i).map_err(|_| out_of_range())?),
        (D::UInt32, Raw::UInt(u)) => Variant::UInt32(u32::try_from(u).map_err(|_| out_of_range())?),
        (D::Int64, Raw::Int(i)) => Variant::Int64(i),
        (D::UInt64, Raw::UInt(u)) => Variant::UInt64(u),
        (D::Float, Raw::Float(f)) => {
            let x = f as f32;
            if f.is_finite() && !x.is_finite() {
                return Err(out_of_range());
            }
            Variant::Float(x)
        }
        (D::Double, Raw::Float(f)) => Variant::Double(f),
        (D::String, Raw::String(s)) => Variant::String(UAString::from(s)),
        (D::ByteArray, Raw::Bytes(b)) => Variant::ByteString(ByteString::from(b)),
        (dt, r) => return Err(format!("cannot write {r:?} to a {dt:?} node")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::{OpcuaTag, TagOptions};

    fn tag(dt: DataType) -> TagConfig {
        TagConfig::new("t", "ns=2;s=x", dt, TagOptions::Opcua(OpcuaTag::default()))
    }

    fn dv(v: Variant, status: StatusCode) -> DataValue {
        DataValue {
            value: Some(v),
            status: Some(status),
            ..DataValue::default()
        }
    }

    #[test]
    fn numbers_convert_only_when_exact() {
        assert_eq!(raw(DataType::Int64, &Variant::Int32(-5)), Ok(Raw::Int(-5)));
        assert_eq!(
            raw(DataType::UInt64, &Variant::UInt64(u64::MAX)),
            Ok(Raw::UInt(u64::MAX))
        );
        assert_eq!(
            raw(DataType::Int16, &Variant::Int32(70_000)),
            Err(StatusCode::BadOutOfRange)
        );
        assert_eq!(
            raw(DataType::UInt8, &Variant::SByte(-1)),
            Err(StatusCode::BadOutOfRange)
        );
        assert_eq!(
            raw(DataType::Int32, &Variant::Double(1.0)),
            Err(StatusCode::BadTypeMismatch)
        );
        assert_eq!(raw(DataType::Double, &Variant::Float(1.5)), Ok(Raw::Float(1.5)));
        assert_eq!(
            raw(DataType::Float, &Variant::Double(0.1)),
            Err(StatusCode::BadTypeMismatch)
        );
        assert_eq!(
            raw(DataType::Double, &Variant::UInt64(u64::MAX)),
            Err(StatusCode::BadOutOfRange),
            "2^64-1 is not a double"
        );
        assert_eq!(
            raw(DataType::Boolean, &Variant::Int32(1)),
            Err(StatusCode::BadTypeMismatch)
        );
    }

    #[test]
    fn status_maps_to_quality_and_code() {
        let t = tag(DataType::Double);
        let s = samples(
            &t,
            dv(Variant::Double(5.5), StatusCode::UncertainLastUsableValue),
            ArrayMode::Json,
            1,
        );
        assert_eq!(s[0].quality, Quality::Uncertain as i32);
        assert_eq!(
            s[0].error_code,
            StatusCode::UncertainLastUsableValue.bits() as i32
        );
        assert!(s[0].value.is_some());
        let s = samples(
            &t,
            dv(Variant::Double(0.0), StatusCode::BadSensorFailure),
            ArrayMode::Json,
            1,
        );
        assert_eq!(s[0].quality, Quality::Bad as i32);
        assert!(s[0].value.is_none());
        assert!(s[0].error_code < 0);
        // Good with the Overflow info bit: GOOD, the code kept.
        let overflow = StatusCode::from(0x0000_0480u32);
        let s = samples(&t, dv(Variant::Double(1.0), overflow), ArrayMode::Json, 1);
        assert_eq!((s[0].quality, s[0].error_code), (Quality::Good as i32, 0x480));
        let s = samples(
            &t,
            dv(Variant::String("x".into()), StatusCode::Good),
            ArrayMode::Json,
            1,
        );
        assert_eq!(s[0].error_code, code(StatusCode::BadTypeMismatch));
    }

    #[test]
    fn arrays_as_json_or_elements() {
        let t = tag(DataType::Double);
        let arr = Variant::from(vec![1.5f64, -2.25, 3.0]);
        let s = samples(&t, dv(arr.clone(), StatusCode::Good), ArrayMode::Json, 1);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].value, Some(proto::Value::string("[1.5,-2.25,3.0]")));
        let s = samples(&t, dv(arr, StatusCode::Good), ArrayMode::Elements, 1);
        let names: Vec<&str> = s.iter().map(|s| s.tag.as_str()).collect();
        assert_eq!(names, ["t[0]", "t[1]", "t[2]"]);
        assert_eq!(s[1].value, Some(proto::Value::float(-2.25)));
    }

    #[test]
    fn timestamps_fall_back_source_server_gateway() {
        let src = DateTime::from(1_767_323_045_123_456_000i64 / 100 + 116_444_736_000_000_000);
        let srv = DateTime::from(1_767_323_046_000_000_000i64 / 100 + 116_444_736_000_000_000);
        let both = DataValue {
            source_timestamp: Some(src),
            server_timestamp: Some(srv),
            ..DataValue::default()
        };
        assert_eq!(
            timestamp(&both, TimestampSource::Source, 7),
            1_767_323_045_123_456_000
        );
        assert_eq!(
            timestamp(&both, TimestampSource::Server, 7),
            1_767_323_046_000_000_000
        );
        assert_eq!(timestamp(&both, TimestampSource::Gateway, 7), 7);
        let server_only = DataValue {
            server_timestamp: Some(srv),
            ..DataValue::default()
        };
        assert_eq!(
            timestamp(&server_only, TimestampSource::Source, 7),
            1_767_323_046_000_000_000
        );
        // A null or pre-1970 time is no time: the next clock is used.
        let null = DataValue {
            source_timestamp: Some(DateTime::null()),
            ..DataValue::default()
        };
        assert_eq!(timestamp(&null, TimestampSource::Source, 7), 7);
        let old = DataValue {
            source_timestamp: Some(DateTime::from(1_000i64)),
            ..DataValue::default()
        };
        assert_eq!(timestamp(&old, TimestampSource::Source, 7), 7);
    }

    #[test]
    fn writes_use_the_node_type() {
        let mut t = tag(DataType::Int16);
        t.access = config::Access::ReadWrite;
        assert_eq!(
            variant_for_write(&t, &proto::Value::int(-3)),
            Ok(Variant::Int16(-3))
        );
        assert!(variant_for_write(&t, &proto::Value::int(40_000)).is_err());
        let mut t = tag(DataType::Double);
        t.scaling = 2.0;
        assert_eq!(
            variant_for_write(&t, &proto::Value::float(5.0)),
            Ok(Variant::Double(2.5))
        );
    }
}
