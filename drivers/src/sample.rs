//! Turning a raw reading into a `proto::Sample` the same way in every
//! driver: scaling and offset, range quality, deadband.

use config::{DataType, TagConfig};
use proto::{value::Kind, Quality, Sample, Value};

/// A value as read from the device, before scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    String(String),
    Bytes(Vec<u8>),
}

impl Raw {
    fn as_f64(&self) -> Option<f64> {
        match *self {
            Raw::Bool(b) => Some(f64::from(u8::from(b))),
            Raw::Int(i) => Some(i as f64),
            Raw::UInt(u) => Some(u as f64),
            Raw::Float(f) => Some(f),
            Raw::String(_) | Raw::Bytes(_) => None,
        }
    }

    fn into_value(self) -> Value {
        match self {
            Raw::Bool(b) => Value::bool(b),
            Raw::Int(i) => Value::int(i),
            Raw::UInt(u) => Value::uint(u),
            Raw::Float(f) => Value::float(f),
            Raw::String(s) => Value::string(s),
            Raw::Bytes(b) => Value::bytes(b),
        }
    }
}

/// The numeric value of a sample, for deadband and range checks.
pub fn numeric(v: &Value) -> Option<f64> {
    match v.kind.as_ref()? {
        Kind::BoolValue(b) => Some(f64::from(u8::from(*b))),
        Kind::IntValue(i) => Some(*i as f64),
        Kind::UintValue(u) => Some(*u as f64),
        Kind::FloatValue(f) => Some(*f),
        Kind::StringValue(_) | Kind::BytesValue(_) => None,
    }
}

/// A good reading of `tag`: engineering value, raw value and range quality.
///
/// Integers keep their integer type when `scaling == 1` and `offset == 0`
/// (no float rounding of counters); otherwise the engineering value is a
/// double. A value outside `min_value..=max_value` is kept with quality
/// UNCERTAIN.
pub fn reading(tag: &TagConfig, raw: Raw, ts_ns: u64) -> Sample {
    let identity = tag.scaling == 1.0 && tag.offset == 0.0;
    let value = match (&raw, identity) {
        (Raw::Int(_) | Raw::UInt(_) | Raw::Bool(_) | Raw::String(_) | Raw::Bytes(_), true) => {
            raw.clone().into_value()
        }
        (Raw::Bool(_) | Raw::String(_) | Raw::Bytes(_), false) => raw.clone().into_value(),
        _ => match raw.as_f64() {
            Some(f) => Value::float(f * tag.scaling + tag.offset),
            None => raw.clone().into_value(),
        },
    };
    let quality = match numeric(&value) {
        Some(v) if tag.min_value.is_some_and(|lo| v < lo) || tag.max_value.is_some_and(|hi| v > hi) => {
            Quality::Uncertain
        }
        _ => Quality::Good,
    };
    let raw_value = if identity { None } else { Some(raw.into_value()) };
    Sample {
        tag: tag.name.clone(),
        value: Some(value),
        raw_value,
        quality: quality as i32,
        source_ts_ns: ts_ns,
        error_code: 0,
    }
}

/// A failed reading: no value, quality BAD, the driver's error code.
pub fn failed(tag: &TagConfig, error_code: i32, ts_ns: u64) -> Sample {
    Sample {
        tag: tag.name.clone(),
        value: None,
        raw_value: None,
        quality: Quality::Bad as i32,
        source_ts_ns: ts_ns,
        error_code,
    }
}

/// Remembers the last published sample of one tag to apply its deadband.
#[derive(Debug, Default, Clone)]
pub struct Deadband {
    last: Option<(Option<f64>, i32)>,
}

impl Deadband {
    /// Whether `s` should be published: always when the quality changed, the
    /// value is not numeric or the tag has no deadband; otherwise only when
    /// it moved by more than `deadband` from the last published value.
    pub fn admit(&mut self, tag: &TagConfig, s: &Sample) -> bool {
        let v = s.value.as_ref().and_then(numeric);
        let admit = match (tag.deadband, self.last, v) {
            (Some(db), Some((Some(prev), q)), Some(v)) if q == s.quality && db > 0.0 => (v - prev).abs() > db,
            _ => true,
        };
        if admit {
            self.last = Some((v, s.quality));
        }
        admit
    }
}

/// Converts an f64 into the raw type of `data_type` (saturating, rounding).
pub fn raw_for(data_type: DataType, v: f64) -> Raw {
    use DataType::*;
    let v = if v.is_nan() { 0.0 } else { v };
    match data_type {
        Boolean => Raw::Bool(v != 0.0),
        Int8 => Raw::Int(v.round().clamp(i8::MIN as f64, i8::MAX as f64) as i64),
        Int16 => Raw::Int(v.round().clamp(i16::MIN as f64, i16::MAX as f64) as i64),
        Int32 => Raw::Int(v.round().clamp(i32::MIN as f64, i32::MAX as f64) as i64),
        Int64 | DateTime => Raw::Int(v.round() as i64),
        UInt8 => Raw::UInt(v.round().clamp(0.0, u8::MAX as f64) as u64),
        UInt16 => Raw::UInt(v.round().clamp(0.0, u16::MAX as f64) as u64),
        UInt32 => Raw::UInt(v.round().clamp(0.0, u32::MAX as f64) as u64),
        UInt64 => Raw::UInt(v.round().max(0.0) as u64),
        Float => Raw::Float(f64::from(v as f32)),
        Double => Raw::Float(v),
        String => Raw::String(format!("{v}")),
        ByteArray => Raw::Bytes(v.to_be_bytes().to_vec()),
    }
}
