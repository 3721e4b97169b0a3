//! Key and value encodings of the three column families (public so tools and
//! tests can inspect a bus directory).
//!
//! * `frames`:  key `frame:{seq:020}` (26 ASCII bytes, so byte order = numeric order),
//!   value = encoded `FrameEnvelope`.
//! * `cursors`: key = consumer name (UTF-8), value = last acknowledged seq, u64 big-endian.
//! * `state`:   key = consumer name, a 0x00 byte, then the consumer's own key;
//!   value = the consumer's bytes (see [`crate::Commit`]). Consumer names hold
//!   no control characters, so one consumer's keys never prefix another's.
//! * `meta`:    key `format_version` (u64 BE, currently 1; a newer one is refused at open),
//!   key `deleted_through`, value = u64 big-endian: every frame with a seq
//!   at or below it was deleted (by acknowledgement or retention). It keeps sequence
//!   numbers increasing even when every frame was deleted before a restart.

/// Column family holding the frames.
pub const CF_FRAMES: &str = "frames";
/// Column family holding consumer cursors.
pub const CF_CURSORS: &str = "cursors";
/// Column family holding stateful consumers' state, written with their cursor.
pub const CF_STATE: &str = "state";
/// Column family holding bus metadata.
pub const CF_META: &str = "meta";

pub(crate) const META_DELETED_THROUGH: &[u8] = b"deleted_through";
pub(crate) const META_FORMAT: &[u8] = b"format_version";
pub(crate) const FORMAT_VERSION: u64 = 1;

const PREFIX: &[u8] = b"frame:";
/// Length of every frame key.
pub(crate) const KEY_LEN: usize = 26;
/// Exclusive upper bound of all `frame:` keys (`;` follows `:` in ASCII).
pub(crate) const FRAMES_UPPER: &[u8] = b"frame;";

/// Encodes the key of `seq`.
pub fn frame_key(seq: u64) -> [u8; KEY_LEN] {
    let mut k = [b'0'; KEY_LEN];
    k[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut n = seq;
    let mut i = KEY_LEN;
    while n > 0 {
        i -= 1;
        k[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    k
}

/// Decodes a frame key; `None` for anything not exactly `frame:` + 20 digits.
pub fn parse_frame_key(key: &[u8]) -> Option<u64> {
    if key.len() != KEY_LEN || !key.starts_with(PREFIX) {
        return None;
    }
    let mut n: u64 = 0;
    for &b in &key[PREFIX.len()..] {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Key of `consumer`'s state entry `key` in the `state` column family.
pub fn state_key(consumer: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(consumer.len() + 1 + key.len());
    k.extend_from_slice(consumer.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// `[start, end)` covering every state key of `consumer`.
pub(crate) fn state_range(consumer: &str) -> (Vec<u8>, Vec<u8>) {
    let mut start = consumer.as_bytes().to_vec();
    let mut end = start.clone();
    start.push(0);
    end.push(1);
    (start, end)
}

/// Encodes a u64 value (cursor, meta).
pub(crate) fn encode_u64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Decodes a u64 value; `None` if it is not exactly 8 bytes.
pub(crate) fn decode_u64(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip_and_order() {
        for seq in [0, 1, 9, 10, 1234, u64::MAX / 3, u64::MAX] {
            let k = frame_key(seq);
            assert_eq!(std::str::from_utf8(&k).unwrap(), format!("frame:{seq:020}"));
            assert_eq!(parse_frame_key(&k), Some(seq));
        }
        assert!(frame_key(99) < frame_key(100));
        assert!(&frame_key(u64::MAX)[..] < FRAMES_UPPER);
    }

    #[test]
    fn malformed_keys_are_rejected() {
        for k in [
            &b""[..],
            b"frame:",
            b"frame:0000000000000000001",
            b"frame:000000000000000000012",
            b"frame:00000000000000000x01",
            b"frome:00000000000000000001",
            b"frame:99999999999999999999", // > u64::MAX
        ] {
            assert_eq!(parse_frame_key(k), None, "{:?}", String::from_utf8_lossy(k));
        }
    }

    #[test]
    fn state_keys_stay_inside_their_consumer_range() {
        let (a0, a1) = state_range("alerts");
        let k = state_key("alerts", b"rule/x");
        assert!(a0 <= k && k < a1);
        // A consumer whose name extends another's never falls in its range.
        let other = state_key("alerts2", b"");
        assert!(!(a0 <= other && other < a1));
        assert_eq!(&state_key("c", b"k")[..], b"c\0k");
    }

    #[test]
    fn u64_values() {
        assert_eq!(decode_u64(&encode_u64(42)), Some(42));
        assert_eq!(decode_u64(&[1, 2, 3]), None);
        assert_eq!(decode_u64(&[0; 9]), None);
    }
}
