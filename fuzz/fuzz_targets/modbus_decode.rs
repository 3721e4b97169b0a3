//! Fuzzes the Modbus register decoding of the drivers crate
//! (`drivers::modbus::codec`): register words → the typed value of one tag
//! under its byte/word order (numbers, strings, byte arrays, register
//! bits), then scaling, range quality and deadband (`drivers::sample`), as
//! the driver's poll does with a reply's registers.
//!
//! Input layout (6 header bytes, then the registers):
//! - `[0]` data type: index into the 14 `config::DataType`s (modulo).
//! - `[1]` flags: bits 0-1 the tag's byte order (ABCD, DCBA, BADC, CDAB),
//!   bit 2 set = the tag sets it (else the device's, bits 3-4), bit 5 set =
//!   input register (else holding register), bit 6 set = hand `decode` the
//!   registers as the driver does (exactly the tag's `count`, or none when
//!   the reply is shorter), clear = every register of the input (a length
//!   mismatch must be an `Err`, never a panic), bit 7 set = the tag reads a
//!   register bit (`bit = [2]`).
//! - `[2]` the bit number; `[3..5]` big-endian `length` of a string/bytes
//!   tag (0 = unset); `[5]` scaling profile (scaling, offset, range,
//!   deadband), index into `PROFILES` (modulo).
//! - the rest: registers, big-endian u16 each (an odd last byte is dropped).
//!
//! The tag is resolved with `config::modbus::resolve` (what config
//! validation and the driver's plan use); a tag config validation would
//! refuse (bad bit, length, data type, or a value wider than a request) is
//! skipped, as the gateway would never poll it. Checks:
//! - `codec::decode(data_type, byte_order, bit, registers)` never panics,
//!   and an `Ok` is of the data type's kind (bool for a bit, signed or
//!   unsigned integer, float, string, bytes of twice the register count).
//! - Integers, doubles, non-NaN floats and byte arrays decoded from exactly
//!   `count` registers encode back (`codec::encode`) to the same registers.
//! - `sample::reading` (or `sample::failed` on an error) and
//!   `Deadband::admit` never panic; a reading has a value and the first one
//!   is always admitted.
//! - Writing the engineering value back (`sample::raw_for_write`, then
//!   `codec::encode`, the driver's write path) never panics.

#![no_main]

use std::time::Duration;

use config::{ByteOrder, DataType, ModbusDevice, ModbusTag, Table, TagConfig, TagOptions};
use drivers::modbus::{codec, MALFORMED};
use drivers::sample::{self, Deadband, Raw};
use libfuzzer_sys::fuzz_target;

const HEADER: usize = 6;

/// Every data type, in declaration order (Int8, UInt8 and DateTime are
/// refused by `resolve` for Modbus).
const DATA_TYPES: [DataType; 14] = [
    DataType::Boolean,
    DataType::Int8,
    DataType::UInt8,
    DataType::Int16,
    DataType::UInt16,
    DataType::Int32,
    DataType::UInt32,
    DataType::Int64,
    DataType::UInt64,
    DataType::Float,
    DataType::Double,
    DataType::String,
    DataType::DateTime,
    DataType::ByteArray,
];

const ORDERS: [ByteOrder; 4] = [ByteOrder::ABCD, ByteOrder::DCBA, ByteOrder::BADC, ByteOrder::CDAB];

/// `(scaling, offset, min_value, max_value, deadband)`: realistic ones and
/// a few that overflow or underflow the engineering value.
type Profile = (f64, f64, Option<f64>, Option<f64>, Option<f64>);
const PROFILES: [Profile; 8] = [
    (1.0, 0.0, None, None, None),
    (0.1, 0.0, Some(0.0), Some(100.0), Some(0.5)),
    (0.01, -40.0, None, None, None),
    (10.0, 5.5, Some(-1e3), Some(1e3), None),
    (1e300, 0.0, None, None, Some(1.0)),
    (1e-300, -1e300, None, None, None),
    (1.0, 0.0, Some(0.0), Some(10.0), Some(2.0)),
    (2.5, 0.0, None, None, Some(1.0)),
];

/// A Modbus TCP device with the keys' defaults and `byte_order`.
fn device(byte_order: ByteOrder) -> ModbusDevice {
    ModbusDevice {
        unit_id: 1,
        address_base: None,
        byte_order,
        max_registers_per_request: 125,
        max_bits_per_request: 2000,
        max_gap: 0,
        one_request_per_tag: false,
        pause_between_requests: Duration::ZERO,
        close_connection_after_poll: false,
        busy_retries: 3,
        busy_retry_interval: Duration::from_millis(100),
        port: None,
        baud_rate: None,
        data_bits: None,
        parity: None,
        stop_bits: None,
    }
}

/// Whether `raw` is the kind of value `data_type` decodes to.
fn kind_matches(data_type: DataType, bit: Option<u8>, registers: usize, raw: &Raw) -> bool {
    use DataType::*;
    if bit.is_some() {
        return matches!(raw, Raw::Bool(_));
    }
    match (data_type, raw) {
        (Int16 | Int32 | Int64, Raw::Int(_)) => true,
        (UInt16 | UInt32 | UInt64, Raw::UInt(_)) => true,
        (Float | Double, Raw::Float(_)) => true,
        (String, Raw::String(_)) => true,
        (ByteArray, Raw::Bytes(b)) => b.len() == registers * 2,
        _ => false,
    }
}

/// Whether encoding `raw` must give back the registers it came from.
fn round_trips(data_type: DataType, raw: &Raw) -> bool {
    use DataType::*;
    match (data_type, raw) {
        (Int16 | UInt16 | Int32 | UInt32 | Int64 | UInt64 | Double | ByteArray, _) => true,
        // f32 → f64 → f32 keeps every value but not every NaN payload.
        (Float, Raw::Float(f)) => !f.is_nan(),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let data_type = DATA_TYPES[usize::from(data[0]) % DATA_TYPES.len()];
    let flags = data[1];
    let tag_order = (flags & 0b100 != 0).then_some(ORDERS[usize::from(flags & 0b11)]);
    let device_order = ORDERS[usize::from((flags >> 3) & 0b11)];
    let table = if flags & 0b10_0000 != 0 {
        Table::Input
    } else {
        Table::Holding
    };
    let as_driver = flags & 0b100_0000 != 0;
    let bit = (flags & 0b1000_0000 != 0).then_some(data[2]);
    let length = u16::from_be_bytes([data[3], data[4]]);
    let (scaling, offset, min_value, max_value, deadband) = PROFILES[usize::from(data[5]) % PROFILES.len()];
    let words: Vec<u16> = data[HEADER..]
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();

    let dev = device(device_order);
    let opts = ModbusTag {
        table: Some(table),
        bit,
        byte_order: tag_order,
        length: (length != 0).then_some(length),
    };
    let mut tag = TagConfig::new("fuzz", "0", data_type, TagOptions::Modbus(opts.clone()));
    tag.access = config::Access::ReadWrite;
    tag.scaling = scaling;
    tag.offset = offset;
    tag.min_value = min_value;
    tag.max_value = max_value;
    tag.deadband = deadband;
    let Ok(point) = config::modbus::resolve(&dev, &tag, &opts) else {
        return;
    };
    if point.count > dev.max_registers_per_request {
        return;
    }
    let count = usize::from(point.count);
    let registers: &[u16] = if as_driver {
        words.get(..count).unwrap_or(&[])
    } else {
        &words
    };

    let ts = 1_700_000_000_000_000_000;
    let s = match codec::decode(tag.data_type, point.byte_order, point.bit, registers) {
        Ok(raw) => {
            assert!(
                kind_matches(tag.data_type, point.bit, registers.len(), &raw),
                "{:?} decoded as {raw:?}",
                tag.data_type
            );
            if point.bit.is_none() && registers.len() == count && round_trips(tag.data_type, &raw) {
                assert_eq!(
                    codec::encode(tag.data_type, point.byte_order, point.count, &raw),
                    Ok(registers.to_vec()),
                    "{:?} {:?} does not encode back from {raw:?}",
                    tag.data_type,
                    point.byte_order
                );
            }
            let s = sample::reading(&tag, raw, ts);
            assert!(s.value.is_some(), "a reading without a value");
            s
        }
        Err(_) => sample::failed(&tag, MALFORMED, ts),
    };
    let mut db = Deadband::default();
    assert!(
        db.admit(&tag, &s),
        "the first sample of a tag is always published"
    );
    let _ = db.admit(&tag, &s);

    // The write path: engineering value → raw → registers.
    if let Some(value) = &s.value {
        if let Ok(raw) = sample::raw_for_write(&tag, value) {
            let _ = codec::encode(tag.data_type, point.byte_order, point.count, &raw);
        }
    }
});
