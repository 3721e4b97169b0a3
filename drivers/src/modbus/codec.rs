//! Registers ↔ typed values for one tag, in the tag's byte order.
//!
//! Registers travel as big-endian 16-bit words. A value's bytes are the
//! registers' bytes (high byte first) after undoing its [`ByteOrder`]:
//! `CDAB` and `DCBA` reverse the register order, `BADC` and `DCBA` swap
//! the two bytes of each register; the result is read big-endian. Both
//! steps are their own inverse, so encoding applies the same steps to the
//! value's big-endian bytes. Strings (and byte arrays) only take the byte
//! swap: their registers are always in address order.

use config::{ByteOrder, DataType};

use crate::sample::Raw;

/// Registers of one value → its bytes, big-endian, order undone.
fn value_bytes(regs: &[u16], order: ByteOrder, words_too: bool) -> Vec<u8> {
    let mut bytes: Vec<u8> = Vec::with_capacity(regs.len() * 2);
    let mut push = |r: u16| {
        let [hi, lo] = r.to_be_bytes();
        if order.swaps_bytes() {
            bytes.extend_from_slice(&[lo, hi]);
        } else {
            bytes.extend_from_slice(&[hi, lo]);
        }
    };
    if words_too && order.reverses_words() {
        regs.iter().rev().copied().for_each(&mut push);
    } else {
        regs.iter().copied().for_each(&mut push);
    }
    bytes
}

/// The inverse of [`value_bytes`]: big-endian bytes (even length) → registers.
fn registers(bytes: &[u8], order: ByteOrder, words_too: bool) -> Vec<u16> {
    let mut regs: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            let (hi, lo) = (c[0], c.get(1).copied().unwrap_or(0));
            if order.swaps_bytes() {
                u16::from_be_bytes([lo, hi])
            } else {
                u16::from_be_bytes([hi, lo])
            }
        })
        .collect();
    if words_too && order.reverses_words() {
        regs.reverse();
    }
    regs
}

fn array<const N: usize>(b: &[u8]) -> Result<[u8; N], String> {
    b.try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", b.len()))
}

/// Decodes the registers of one tag (exactly the registers it spans).
pub fn decode(dt: DataType, order: ByteOrder, bit: Option<u8>, regs: &[u16]) -> Result<Raw, String> {
    if let Some(b) = bit {
        let r = regs.first().ok_or("no register for the bit")?;
        return Ok(Raw::Bool(r >> b & 1 == 1));
    }
    let numeric = !matches!(dt, DataType::String | DataType::ByteArray);
    let b = value_bytes(regs, order, numeric);
    Ok(match dt {
        DataType::Int16 => Raw::Int(i16::from_be_bytes(array(&b)?).into()),
        DataType::UInt16 => Raw::UInt(u16::from_be_bytes(array(&b)?).into()),
        DataType::Int32 => Raw::Int(i32::from_be_bytes(array(&b)?).into()),
        DataType::UInt32 => Raw::UInt(u32::from_be_bytes(array(&b)?).into()),
        DataType::Int64 => Raw::Int(i64::from_be_bytes(array(&b)?)),
        DataType::UInt64 => Raw::UInt(u64::from_be_bytes(array(&b)?)),
        DataType::Float => Raw::Float(f32::from_be_bytes(array(&b)?).into()),
        DataType::Double => Raw::Float(f64::from_be_bytes(array(&b)?)),
        DataType::String => {
            let end = b.iter().rposition(|&c| c != 0 && c != b' ').map_or(0, |i| i + 1);
            // A NUL inside the string ends it (C strings in PLC memory).
            let text = &b[..end];
            let text = text.split(|&c| c == 0).next().unwrap_or(&[]);
            Raw::String(String::from_utf8_lossy(text).into_owned())
        }
        DataType::ByteArray => Raw::Bytes(b),
        DataType::Boolean | DataType::Int8 | DataType::UInt8 | DataType::DateTime => {
            return Err(format!("{dt:?} cannot be decoded from registers"))
        }
    })
}

/// Encodes a raw value (already converted to `dt`'s range) into `count`
/// registers.
pub fn encode(dt: DataType, order: ByteOrder, count: u16, raw: &Raw) -> Result<Vec<u16>, String> {
    let wrong = || format!("value {raw:?} does not match data_type {dt:?}");
    let b: Vec<u8> = match (dt, raw) {
        (DataType::Int16, Raw::Int(i)) => i16::try_from(*i).map_err(|_| wrong())?.to_be_bytes().to_vec(),
        (DataType::UInt16, Raw::UInt(u)) => u16::try_from(*u).map_err(|_| wrong())?.to_be_bytes().to_vec(),
        (DataType::Int32, Raw::Int(i)) => i32::try_from(*i).map_err(|_| wrong())?.to_be_bytes().to_vec(),
        (DataType::UInt32, Raw::UInt(u)) => u32::try_from(*u).map_err(|_| wrong())?.to_be_bytes().to_vec(),
        (DataType::Int64, Raw::Int(i)) => i.to_be_bytes().to_vec(),
        (DataType::UInt64, Raw::UInt(u)) => u.to_be_bytes().to_vec(),
        (DataType::Float, Raw::Float(f)) => {
            let v = *f as f32;
            if f.is_finite() && !v.is_finite() {
                return Err(format!("{f} is beyond the float32 range"));
            }
            v.to_be_bytes().to_vec()
        }
        (DataType::Double, Raw::Float(f)) => f.to_be_bytes().to_vec(),
        (DataType::String, Raw::String(s)) => {
            let mut b = s.as_bytes().to_vec();
            let cap = usize::from(count) * 2;
            if b.len() > cap {
                return Err(format!(
                    "string of {} bytes does not fit {count} registers ({cap} bytes)",
                    b.len()
                ));
            }
            b.resize(cap, 0);
            b
        }
        (DataType::ByteArray, Raw::Bytes(v)) => {
            let cap = usize::from(count) * 2;
            if v.len() != cap {
                return Err(format!(
                    "expected {cap} bytes for {count} registers, got {}",
                    v.len()
                ));
            }
            v.clone()
        }
        _ => return Err(wrong()),
    };
    let numeric = !matches!(dt, DataType::String | DataType::ByteArray);
    Ok(registers(&b, order, numeric))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ByteOrder::*;

    #[test]
    fn int32_in_every_order() {
        // -123456789 = 0xF8A432EB
        let cases = [
            (ABCD, [0xF8A4, 0x32EB]),
            (CDAB, [0x32EB, 0xF8A4]),
            (BADC, [0xA4F8, 0xEB32]),
            (DCBA, [0xEB32, 0xA4F8]),
        ];
        for (order, regs) in cases {
            assert_eq!(
                decode(DataType::Int32, order, None, &regs),
                Ok(Raw::Int(-123_456_789)),
                "{order:?}"
            );
            assert_eq!(
                encode(DataType::Int32, order, 2, &Raw::Int(-123_456_789)).as_deref(),
                Ok(&regs[..]),
                "{order:?}"
            );
        }
    }

    #[test]
    fn sixty_four_bit_orders_round_trip() {
        let v = std::f64::consts::E;
        let be = v.to_be_bytes();
        let abcd: Vec<u16> = be.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
        assert_eq!(decode(DataType::Double, ABCD, None, &abcd), Ok(Raw::Float(v)));
        let le = v.to_le_bytes();
        let dcba: Vec<u16> = le.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
        assert_eq!(decode(DataType::Double, DCBA, None, &dcba), Ok(Raw::Float(v)));
        for order in [ABCD, BADC, CDAB, DCBA] {
            let regs = encode(DataType::UInt64, order, 4, &Raw::UInt(12_345_678_901_234_567_890)).unwrap();
            assert_eq!(
                decode(DataType::UInt64, order, None, &regs),
                Ok(Raw::UInt(12_345_678_901_234_567_890))
            );
        }
    }

    #[test]
    fn sixteen_bit_byte_swap_and_bits() {
        assert_eq!(
            decode(DataType::UInt16, DCBA, None, &[0x3412]),
            Ok(Raw::UInt(0x1234))
        );
        assert_eq!(
            decode(DataType::UInt16, CDAB, None, &[0x3412]),
            Ok(Raw::UInt(0x3412))
        );
        assert_eq!(
            decode(DataType::Int16, ABCD, None, &[0xFB2E]),
            Ok(Raw::Int(-1234))
        );
        let bits: Vec<bool> = (0..16)
            .map(|b| decode(DataType::Boolean, ABCD, Some(b), &[0xA009]) == Ok(Raw::Bool(true)))
            .collect();
        let set: Vec<usize> = bits
            .iter()
            .enumerate()
            .filter(|(_, b)| **b)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(set, [0, 3, 13, 15]);
    }

    #[test]
    fn strings_trim_and_swap() {
        let regs = [0x5055, 0x4D50, 0x2D37, 0x0000, 0x0000]; // "PUMP-7" + NULs
        assert_eq!(
            decode(DataType::String, ABCD, None, &regs),
            Ok(Raw::String("PUMP-7".into()))
        );
        let swapped = [0x4241, 0x3231, 0x2020]; // "AB12  " byte-swapped
        assert_eq!(
            decode(DataType::String, DCBA, None, &swapped),
            Ok(Raw::String("AB12".into()))
        );
        assert_eq!(
            encode(DataType::String, ABCD, 5, &Raw::String("PUMP-7".into())).as_deref(),
            Ok(&regs[..])
        );
        assert!(encode(DataType::String, ABCD, 1, &Raw::String("long".into())).is_err());
    }

    #[test]
    fn wrong_lengths_are_errors_not_panics() {
        assert!(decode(DataType::Int32, ABCD, None, &[1]).is_err());
        assert!(decode(DataType::Double, ABCD, None, &[]).is_err());
        assert!(decode(DataType::Boolean, ABCD, Some(3), &[]).is_err());
        assert!(encode(DataType::Int16, ABCD, 1, &Raw::Int(70_000)).is_err());
        assert!(encode(DataType::UInt16, ABCD, 1, &Raw::Int(1)).is_err());
    }
}
