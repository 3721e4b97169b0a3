//! Payload → value of one tag: the three formats (JSON with pointers,
//! plain text, raw bytes), coercion to the tag's `data_type`, and message
//! timestamps. Every failure has a [`Reason`], the `reason` label of
//! `gateway_mqtt_parse_errors_total`; nothing here panics on any input.

use config::{DataType, PayloadFormat, TagConfig, TimestampFormat};
use serde_json::Value as Json;

use super::router::Route;
use crate::sample::Raw;

/// Why a message (or one tag's part of it) was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Larger than `max_payload`.
    TooLarge,
    /// Empty payload (or only whitespace, for text).
    Empty,
    /// Text expected, the bytes are not UTF-8.
    NotUtf8,
    /// `format = "json"` and the payload does not parse.
    NotJson,
    /// The tag's JSON pointer selects nothing.
    MissingPointer,
    /// JSON `null` where a value was expected.
    Null,
    /// The value cannot become the tag's type (text for a number, an
    /// object for a bool, a 3-byte raw payload for a Float, …).
    WrongType,
    /// A number that does not fit the tag's type (300 for an Int8, 1.5
    /// for an integer tag, NaN or infinite).
    OutOfRange,
    /// The timestamp pointer selects nothing, or not a valid time.
    BadTimestamp,
    /// A message on a subscribed filter that no tag takes (overlapping
    /// subscriptions of a persistent session, or a leftover one).
    Unmatched,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::Empty => "empty",
            Reason::NotUtf8 => "not_utf8",
            Reason::NotJson => "not_json",
            Reason::MissingPointer => "missing_pointer",
            Reason::Null => "null",
            Reason::WrongType => "wrong_type",
            Reason::OutOfRange => "out_of_range",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::Unmatched => "unmatched",
        }
    }
}

/// The payload of one message, parsed as JSON at most once for all the
/// tags it feeds.
pub struct Message<'a> {
    pub payload: &'a [u8],
    json: Option<Result<Json, Reason>>,
}

impl<'a> Message<'a> {
    pub fn new(payload: &'a [u8]) -> Message<'a> {
        Message { payload, json: None }
    }

    fn json(&mut self) -> Result<&Json, Reason> {
        if self.json.is_none() {
            let parsed = if self.payload.iter().all(u8::is_ascii_whitespace) {
                Err(Reason::Empty)
            } else {
                serde_json::from_slice::<Json>(self.payload).map_err(|_| Reason::NotJson)
            };
            self.json = Some(parsed);
        }
        match self.json.as_ref() {
            Some(Ok(j)) => Ok(j),
            Some(Err(r)) => Err(*r),
            None => Err(Reason::NotJson),
        }
    }

    /// The value of `tag` (read by `route`) and its source time (the
    /// payload's timestamp, or `received_ns`).
    pub fn read(&mut self, route: &Route, tag: &TagConfig, received_ns: u64) -> Result<(Raw, u64), Reason> {
        let raw = match route.format {
            PayloadFormat::Json => {
                let doc = self.json()?;
                let v = match &route.pointer {
                    None => doc,
                    Some(p) => doc.pointer(p).ok_or(Reason::MissingPointer)?,
                };
                from_json(tag.data_type, v)?
            }
            PayloadFormat::Plain => {
                let text = std::str::from_utf8(self.payload)
                    .map_err(|_| Reason::NotUtf8)?
                    .trim();
                if text.is_empty() {
                    return Err(Reason::Empty);
                }
                if tag.data_type == DataType::String {
                    Raw::String(text.to_string())
                } else {
                    from_json(tag.data_type, &Json::String(text.to_string()))?
                }
            }
            PayloadFormat::Raw => from_bytes(tag.data_type, self.payload)?,
        };
        let ts = match &route.timestamp {
            None => received_ns,
            Some((pointer, format)) => {
                let doc = self.json()?;
                let v = doc.pointer(pointer).ok_or(Reason::BadTimestamp)?;
                timestamp(v, *format).ok_or(Reason::BadTimestamp)?
            }
        };
        Ok((raw, ts))
    }
}

fn text_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "1" | "yes" => Some(true),
        "false" | "off" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// Integer bounds of an integer type.
fn int_range(dt: DataType) -> (i128, i128) {
    use DataType::*;
    match dt {
        Int8 => (i8::MIN.into(), i8::MAX.into()),
        Int16 => (i16::MIN.into(), i16::MAX.into()),
        Int32 => (i32::MIN.into(), i32::MAX.into()),
        UInt8 => (0, u8::MAX.into()),
        UInt16 => (0, u16::MAX.into()),
        UInt32 => (0, u32::MAX.into()),
        UInt64 => (0, u64::MAX.into()),
        _ => (i64::MIN.into(), i64::MAX.into()),
    }
}

fn int_raw(dt: DataType, v: i128) -> Result<Raw, Reason> {
    let (lo, hi) = int_range(dt);
    if v < lo || v > hi {
        return Err(Reason::OutOfRange);
    }
    Ok(if lo < 0 {
        Raw::Int(v as i64)
    } else {
        Raw::UInt(v as u64)
    })
}

/// A JSON number (or a numeric string) for an integer tag: exact, never
/// rounded (1.5 is out of range for an integer tag).
fn int_from(dt: DataType, n: &serde_json::Number) -> Result<Raw, Reason> {
    if let Some(i) = n.as_i64() {
        return int_raw(dt, i.into());
    }
    if let Some(u) = n.as_u64() {
        return int_raw(dt, u.into());
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1.8e19 => int_raw(dt, f as i128),
        _ => Err(Reason::OutOfRange),
    }
}

fn number_of(s: &str) -> Option<serde_json::Number> {
    let s = s.trim();
    if let Ok(i) = s.parse::<i64>() {
        return Some(i.into());
    }
    if let Ok(u) = s.parse::<u64>() {
        return Some(u.into());
    }
    s.parse::<f64>().ok().and_then(serde_json::Number::from_f64)
}

/// Coerces a JSON value to `dt`.
pub fn from_json(dt: DataType, v: &Json) -> Result<Raw, Reason> {
    use DataType::*;
    if v.is_null() {
        return Err(Reason::Null);
    }
    match dt {
        Boolean => match v {
            Json::Bool(b) => Ok(Raw::Bool(*b)),
            Json::Number(n) => match n.as_f64() {
                Some(0.0) => Ok(Raw::Bool(false)),
                Some(1.0) => Ok(Raw::Bool(true)),
                _ => Err(Reason::OutOfRange),
            },
            Json::String(s) => text_bool(s).map(Raw::Bool).ok_or(Reason::WrongType),
            _ => Err(Reason::WrongType),
        },
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => match v {
            Json::Number(n) => int_from(dt, n),
            Json::Bool(b) => int_raw(dt, i128::from(u8::from(*b))),
            Json::String(s) => match number_of(s) {
                Some(n) => int_from(dt, &n),
                None => Err(Reason::WrongType),
            },
            _ => Err(Reason::WrongType),
        },
        Float | Double => {
            let f = match v {
                Json::Number(n) => n.as_f64().ok_or(Reason::OutOfRange)?,
                Json::Bool(b) => f64::from(u8::from(*b)),
                Json::String(s) => s.trim().parse::<f64>().map_err(|_| Reason::WrongType)?,
                _ => return Err(Reason::WrongType),
            };
            if !f.is_finite() || (dt == Float && f.abs() > f64::from(f32::MAX)) {
                return Err(Reason::OutOfRange);
            }
            Ok(Raw::Float(f))
        }
        String => Ok(Raw::String(match v {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        })),
        ByteArray => match v {
            Json::String(s) => Ok(Raw::Bytes(s.as_bytes().to_vec())),
            Json::Array(items) => items
                .iter()
                .map(|i| {
                    i.as_u64()
                        .and_then(|b| u8::try_from(b).ok())
                        .ok_or(Reason::WrongType)
                })
                .collect::<Result<Vec<u8>, Reason>>()
                .map(Raw::Bytes),
            _ => Err(Reason::WrongType),
        },
        // Milliseconds since the epoch, from a number or an RFC 3339 string.
        DateTime => match v {
            Json::Number(n) => int_from(Int64, n),
            Json::String(s) => match (number_of(s), parse_rfc3339(s)) {
                (Some(n), _) => int_from(Int64, &n),
                (None, Some(ns)) => Ok(Raw::Int((ns / 1_000_000) as i64)),
                (None, None) => Err(Reason::WrongType),
            },
            _ => Err(Reason::WrongType),
        },
    }
}

/// Raw bytes for `dt`: whole for bytes and text, big-endian with the
/// width of the type for numbers, one byte 0/1 for a bool.
pub fn from_bytes(dt: DataType, b: &[u8]) -> Result<Raw, Reason> {
    use DataType::*;
    if b.is_empty() {
        return Err(Reason::Empty);
    }
    let arr = |n: usize| -> Result<[u8; 8], Reason> {
        if b.len() != n {
            return Err(Reason::WrongType);
        }
        let mut out = [0u8; 8];
        out[8 - n..].copy_from_slice(b);
        Ok(out)
    };
    Ok(match dt {
        ByteArray => Raw::Bytes(b.to_vec()),
        String => Raw::String(std::str::from_utf8(b).map_err(|_| Reason::NotUtf8)?.to_string()),
        Boolean => match b {
            [0] => Raw::Bool(false),
            [1] => Raw::Bool(true),
            [_] => return Err(Reason::OutOfRange),
            _ => return Err(Reason::WrongType),
        },
        Int8 => Raw::Int(i64::from(
            b.first()
                .copied()
                .filter(|_| b.len() == 1)
                .ok_or(Reason::WrongType)? as i8,
        )),
        UInt8 => Raw::UInt(u64::from(
            *b.first().filter(|_| b.len() == 1).ok_or(Reason::WrongType)?,
        )),
        Int16 => Raw::Int(i64::from(u64::from_be_bytes(arr(2)?) as u16 as i16)),
        UInt16 => Raw::UInt(u64::from_be_bytes(arr(2)?)),
        Int32 => Raw::Int(i64::from(u64::from_be_bytes(arr(4)?) as u32 as i32)),
        UInt32 => Raw::UInt(u64::from_be_bytes(arr(4)?)),
        Int64 => Raw::Int(u64::from_be_bytes(arr(8)?) as i64),
        UInt64 => Raw::UInt(u64::from_be_bytes(arr(8)?)),
        Float => {
            let f = f32::from_bits(u64::from_be_bytes(arr(4)?) as u32);
            if !f.is_finite() {
                return Err(Reason::OutOfRange);
            }
            Raw::Float(f64::from(f))
        }
        Double => {
            let f = f64::from_bits(u64::from_be_bytes(arr(8)?));
            if !f.is_finite() {
                return Err(Reason::OutOfRange);
            }
            Raw::Float(f)
        }
        DateTime => return Err(Reason::WrongType),
    })
}

/// A payload timestamp in nanoseconds since the epoch.
pub fn timestamp(v: &Json, format: TimestampFormat) -> Option<u64> {
    use TimestampFormat::*;
    if format == Rfc3339 {
        return v.as_str().and_then(parse_rfc3339);
    }
    let scale = match format {
        EpochS => 1e9,
        EpochMs => 1e6,
        EpochUs => 1e3,
        _ => 1.0,
    };
    // Integers stay exact (nanoseconds do not fit an f64's 53 bits).
    let n = match v {
        Json::Number(n) => n.clone(),
        Json::String(s) => number_of(s)?,
        _ => return None,
    };
    if let Some(u) = n.as_u64() {
        return u.checked_mul(scale as u64);
    }
    let f = n.as_f64()? * scale;
    (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then_some(f as u64)
}

/// RFC 3339 (`2026-11-24T08:00:00.5+08:00`, `…Z`, a space instead of `T`)
/// → nanoseconds since the epoch; `None` for anything else or before 1970.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.trim();
    if !s.is_ascii() || s.len() < 20 {
        return None;
    }
    let (base, offset_s): (&str, i64) = if let Some(b) = s.strip_suffix(['Z', 'z']) {
        (b, 0)
    } else {
        let (b, off) = s.split_at(s.len() - 6);
        let sign = match off.as_bytes()[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let (h, m) = off[1..].split_once(':')?;
        let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
        if h > 23 || m > 59 {
            return None;
        }
        (b, sign * (h * 3600 + m * 60))
    };
    let normalized = format!("{}Z", base.replacen(' ', "T", 1));
    let t = humantime::parse_rfc3339(&normalized).ok()?;
    let ns = i128::try_from(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos()).ok()?;
    u64::try_from(ns - i128::from(offset_s) * 1_000_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_coercion() {
        use DataType::*;
        assert_eq!(from_json(Int16, &json!(300)), Ok(Raw::Int(300)));
        assert_eq!(from_json(Int8, &json!(300)), Err(Reason::OutOfRange));
        assert_eq!(from_json(UInt16, &json!(-1)), Err(Reason::OutOfRange));
        assert_eq!(from_json(Int32, &json!(1.5)), Err(Reason::OutOfRange));
        assert_eq!(from_json(Int32, &json!(2.0)), Ok(Raw::Int(2)));
        assert_eq!(from_json(Int32, &json!("42")), Ok(Raw::Int(42)));
        assert_eq!(from_json(Int32, &json!("abc")), Err(Reason::WrongType));
        assert_eq!(from_json(UInt64, &json!(u64::MAX)), Ok(Raw::UInt(u64::MAX)));
        assert_eq!(from_json(Double, &json!("23.5")), Ok(Raw::Float(23.5)));
        assert_eq!(from_json(Double, &json!({"a": 1})), Err(Reason::WrongType));
        assert_eq!(from_json(Float, &json!(1e300)), Err(Reason::OutOfRange));
        assert_eq!(from_json(Boolean, &json!("ON")), Ok(Raw::Bool(true)));
        assert_eq!(from_json(Boolean, &json!(2)), Err(Reason::OutOfRange));
        assert_eq!(from_json(Boolean, &json!([1])), Err(Reason::WrongType));
        assert_eq!(from_json(String, &json!(1.5)), Ok(Raw::String("1.5".into())));
        assert_eq!(from_json(Double, &json!(null)), Err(Reason::Null));
        assert_eq!(
            from_json(ByteArray, &json!([1, 2, 255])),
            Ok(Raw::Bytes(vec![1, 2, 255]))
        );
        assert_eq!(from_json(ByteArray, &json!([256])), Err(Reason::WrongType));
        assert_eq!(
            from_json(DateTime, &json!("2026-11-24T00:00:01Z")),
            Ok(Raw::Int(1_795_478_401_000))
        );
    }

    #[test]
    fn raw_bytes() {
        use DataType::*;
        assert_eq!(from_bytes(Int16, &[0xff, 0xfe]), Ok(Raw::Int(-2)));
        assert_eq!(from_bytes(UInt32, &[0, 0, 1, 0]), Ok(Raw::UInt(256)));
        assert_eq!(from_bytes(Float, &1.5f32.to_be_bytes()), Ok(Raw::Float(1.5)));
        assert_eq!(from_bytes(Float, &[0, 0, 0]), Err(Reason::WrongType));
        assert_eq!(
            from_bytes(Double, &f64::NAN.to_be_bytes()),
            Err(Reason::OutOfRange)
        );
        assert_eq!(from_bytes(String, &[0xff]), Err(Reason::NotUtf8));
        assert_eq!(from_bytes(Boolean, &[2]), Err(Reason::OutOfRange));
        assert_eq!(from_bytes(Int8, &[0x80]), Ok(Raw::Int(-128)));
        assert_eq!(from_bytes(ByteArray, &[]), Err(Reason::Empty));
    }

    #[test]
    fn timestamps() {
        use TimestampFormat::*;
        assert_eq!(
            timestamp(&json!(1_700_000_000), EpochS),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(
            timestamp(&json!(1_700_000_000.5), EpochS),
            Some(1_700_000_000_500_000_000)
        );
        assert_eq!(
            timestamp(&json!(1_700_000_000_123u64), EpochMs),
            Some(1_700_000_000_123_000_000)
        );
        assert_eq!(
            timestamp(&json!(1_700_000_000_123_456_789u64), EpochNs),
            Some(1_700_000_000_123_456_789)
        );
        assert_eq!(timestamp(&json!(-5), EpochMs), None);
        assert_eq!(timestamp(&json!("x"), EpochMs), None);
        let z = parse_rfc3339("2026-11-24T00:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2026-11-24T08:00:00+08:00"), Some(z));
        assert_eq!(parse_rfc3339("2026-11-23 19:00:00-05:00"), Some(z));
        assert_eq!(parse_rfc3339("2026-11-24T00:00:00.25Z"), Some(z + 250_000_000));
        assert_eq!(timestamp(&json!("2026-11-24T00:00:00Z"), Rfc3339), Some(z));
        assert_eq!(parse_rfc3339("2026-13-24T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-11-24T00:00:00+99:00"), None);
        assert_eq!(parse_rfc3339("2026-11-24T00:00:00é0:00"), None);
    }
}
