//! Turning a raw reading into a `proto::Sample` the same way in every
//! driver: scaling and offset, range quality, deadband.

use config::{DataType, TagConfig};
use proto::{value::Kind, Quality, Sample, Value};

/// The gateway clock: nanoseconds since the Unix epoch (0 before 1970).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

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

/// Remembers the last published sample of one tag to apply its deadband
/// and heartbeat (`max_report_interval`).
#[derive(Debug, Default, Clone)]
pub struct Deadband {
    /// (numeric value, quality, source time) of the last published sample.
    last: Option<(Option<f64>, i32, u64)>,
}

impl Deadband {
    /// Whether `s` should be published: always when the quality changed, the
    /// value is not numeric or the tag has no deadband; otherwise when it
    /// moved by more than `deadband` from the last published value, or when
    /// `max_report_interval` passed since then.
    pub fn admit(&mut self, tag: &TagConfig, s: &Sample) -> bool {
        let v = s.value.as_ref().and_then(numeric);
        let admit = match (tag.deadband, self.last, v) {
            (Some(db), Some((Some(prev), q, ts)), Some(v)) if q == s.quality && db > 0.0 => {
                let heartbeat = tag.max_report_interval.is_some_and(|i| {
                    s.source_ts_ns.saturating_sub(ts) >= u64::try_from(i.as_nanos()).unwrap_or(u64::MAX)
                });
                heartbeat || (v - prev).abs() > db
            }
            _ => true,
        };
        if admit {
            self.last = Some((v, s.quality, s.source_ts_ns));
        }
        admit
    }
}

/// The raw value to write for an engineering `value` of `tag`: inverse
/// scaling (`raw = (value - offset) / scaling`), then an exact conversion
/// to the tag's type. Out-of-range and fractional values for integer tags
/// are refused, never clamped: a write must not silently change a set-point.
pub fn raw_for_write(tag: &TagConfig, value: &Value) -> Result<Raw, String> {
    use DataType::*;
    let kind = value.kind.as_ref().ok_or("no value")?;
    match (tag.data_type, kind) {
        (Boolean, Kind::BoolValue(b)) => return Ok(Raw::Bool(*b)),
        (Boolean, _) => {
            return match numeric(value) {
                Some(f) if f == 0.0 || f == 1.0 => Ok(Raw::Bool(f == 1.0)),
                _ => Err("a bool tag takes true/false (or 0/1)".into()),
            }
        }
        (String, Kind::StringValue(s)) => return Ok(Raw::String(s.clone())),
        (ByteArray, Kind::BytesValue(b)) => return Ok(Raw::Bytes(b.to_vec())),
        (String | ByteArray | DateTime, _) => {
            return Err(format!(
                "a {:?} tag takes a {:?} value",
                tag.data_type, tag.data_type
            ))
        }
        _ => {}
    }
    let identity = tag.scaling == 1.0 && tag.offset == 0.0;
    // Integers without scaling stay exact (no f64 round trip for 64-bit values).
    if identity {
        match kind {
            Kind::IntValue(i) => return int_raw(tag.data_type, i128::from(*i)),
            Kind::UintValue(u) => return int_raw(tag.data_type, i128::from(*u)),
            _ => {}
        }
    }
    let eng = numeric(value).ok_or("not a number")?;
    if !eng.is_finite() {
        return Err(format!("{eng} is not a finite number"));
    }
    let raw = (eng - tag.offset) / tag.scaling;
    match tag.data_type {
        Float => Ok(Raw::Float(raw)),
        Double => Ok(Raw::Float(raw)),
        _ => {
            let r = raw.round();
            if (raw - r).abs() > 1e-9 * raw.abs().max(1.0) {
                return Err(format!(
                    "{eng} is not representable: raw value {raw} is not an integer"
                ));
            }
            // Beyond ±2^63 the conversion saturates and int_raw refuses it.
            int_raw(tag.data_type, r as i128)
        }
    }
}

fn int_raw(dt: DataType, v: i128) -> Result<Raw, String> {
    use DataType::*;
    let (lo, hi): (i128, i128) = match dt {
        Int8 => (i8::MIN.into(), i8::MAX.into()),
        Int16 => (i16::MIN.into(), i16::MAX.into()),
        Int32 => (i32::MIN.into(), i32::MAX.into()),
        Int64 => (i64::MIN.into(), i64::MAX.into()),
        UInt8 => (0, u8::MAX.into()),
        UInt16 => (0, u16::MAX.into()),
        UInt32 => (0, u32::MAX.into()),
        UInt64 => (0, u64::MAX.into()),
        Float | Double => return Ok(Raw::Float(v as f64)),
        _ => return Err(format!("{dt:?} is not numeric")),
    };
    if v < lo || v > hi {
        return Err(format!("raw value {v} is out of range for {dt:?} ({lo}..={hi})"));
    }
    Ok(if lo < 0 {
        Raw::Int(v as i64)
    } else {
        Raw::UInt(v as u64)
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tag(dt: DataType, scaling: f64, offset: f64) -> TagConfig {
        let mut t = TagConfig::new(
            "t",
            "40001",
            dt,
            config::TagOptions::Modbus(config::ModbusTag::default()),
        );
        t.access = config::Access::ReadWrite;
        t.scaling = scaling;
        t.offset = offset;
        t
    }

    #[test]
    fn writes_invert_scaling_and_refuse_what_does_not_fit() {
        let t = tag(DataType::UInt16, 0.1, -10.0);
        assert_eq!(raw_for_write(&t, &Value::float(32.5)), Ok(Raw::UInt(425)));
        assert!(
            raw_for_write(&t, &Value::float(7000.0)).is_err(),
            "70100 > u16::MAX"
        );
        assert!(raw_for_write(&t, &Value::float(-20.0)).is_err(), "negative raw");
        assert!(
            raw_for_write(&t, &Value::float(1.23)).is_err(),
            "112.3 is not an integer"
        );
        assert!(raw_for_write(&t, &Value::float(f64::NAN)).is_err());
        assert!(raw_for_write(&t, &Value::string("1")).is_err());
        let exact = tag(DataType::UInt64, 1.0, 0.0);
        assert_eq!(
            raw_for_write(&exact, &Value::uint(u64::MAX)),
            Ok(Raw::UInt(u64::MAX))
        );
        assert!(raw_for_write(&exact, &Value::int(-1)).is_err());
        let b = tag(DataType::Boolean, 1.0, 0.0);
        assert_eq!(raw_for_write(&b, &Value::bool(true)), Ok(Raw::Bool(true)));
        assert_eq!(raw_for_write(&b, &Value::int(0)), Ok(Raw::Bool(false)));
        assert!(raw_for_write(&b, &Value::int(2)).is_err());
        let f = tag(DataType::Float, 2.0, 0.0);
        assert_eq!(raw_for_write(&f, &Value::float(3.0)), Ok(Raw::Float(1.5)));
    }

    #[test]
    fn deadband_heartbeat_republishes_a_quiet_value() {
        let mut t = tag(DataType::Double, 1.0, 0.0);
        t.deadband = Some(1.0);
        t.max_report_interval = Some(Duration::from_secs(10));
        let s = |v: f64, ts_s: u64| reading(&t, Raw::Float(v), ts_s * 1_000_000_000);
        let mut db = Deadband::default();
        assert!(db.admit(&t, &s(5.0, 0)));
        assert!(!db.admit(&t, &s(5.5, 1)), "inside the deadband");
        assert!(db.admit(&t, &s(6.1, 2)), "moved by more than 1");
        assert!(!db.admit(&t, &s(6.1, 11)), "9 s since the last publish");
        assert!(db.admit(&t, &s(6.1, 12)), "heartbeat after 10 s");
        assert!(db.admit(&t, &failed(&t, 2, 13)), "quality change");
    }
}
