//! Round-trip and checksum tests of the frame protocol.

use proto::{
    checksum, decode_envelope, value, CommandFrame, DataFrame, EventFrame, EventKind, FrameEnvelope,
    FrameError, FrameType, Message, Quality, Sample, Value,
};

fn sample(tag: &str, v: Value) -> Sample {
    Sample {
        tag: tag.into(),
        raw_value: Some(v.clone()),
        value: Some(v),
        quality: Quality::Good as i32,
        source_ts_ns: 1_700_000_000_123_456_789,
        error_code: 0,
    }
}

#[test]
fn data_frame_round_trips_every_value_kind() {
    let frame = DataFrame {
        device_id: "plc-1".into(),
        samples: vec![
            sample("b", Value::bool(true)),
            sample("i", Value::int(-42)),
            sample("u", Value::uint(u64::MAX)),
            sample("f", Value::float(21.5)),
            sample("s", Value::string("läuft")),
            sample("y", Value::bytes(vec![0, 255, 7])),
            Sample {
                tag: "bad".into(),
                quality: Quality::Bad as i32,
                error_code: 2,
                ..Default::default()
            },
        ],
    };
    let bytes = frame.encode_to_vec();
    let env = FrameEnvelope::new(7, 99, FrameType::Data, bytes);
    let stored = env.encode_to_vec();
    let back = decode_envelope(&stored).expect("valid envelope");
    assert_eq!(back, env);
    assert_eq!(back.verify(), Ok(FrameType::Data));
    let decoded = back.data_frame().expect("data frame");
    assert_eq!(decoded, frame);
    assert_eq!(
        decoded.samples[3].value.as_ref().and_then(|v| v.kind.clone()),
        Some(value::Kind::FloatValue(21.5))
    );
    assert_eq!(decoded.samples[6].quality(), Quality::Bad);
}

#[test]
fn event_and_command_frames_round_trip() {
    let ev = EventFrame {
        event_id: "rule-3/1700000000".into(),
        kind: EventKind::AlertFired as i32,
        device_id: "boiler".into(),
        tag: "temp".into(),
        value: Some(Value::float(101.0)),
        attributes: [("k".to_string(), "v".to_string())].into(),
        ..Default::default()
    };
    let env = FrameEnvelope::new(1, 2, FrameType::Event, ev.encode_to_vec());
    assert_eq!(
        decode_envelope(&env.encode_to_vec())
            .unwrap()
            .event_frame()
            .unwrap(),
        ev
    );

    let cmd = CommandFrame {
        command_id: "c1".into(),
        device_id: "plc".into(),
        tag: "setpoint".into(),
        value: Some(Value::int(5)),
        issued_ts_ns: 3,
        origin: "api".into(),
    };
    let env = FrameEnvelope::new(2, 3, FrameType::Command, cmd.encode_to_vec());
    assert_eq!(
        decode_envelope(&env.encode_to_vec())
            .unwrap()
            .command_frame()
            .unwrap(),
        cmd
    );
}

#[test]
fn encode_into_matches_prost_encoding() {
    for (seq, ts, t, data) in [
        (0u64, 0u64, FrameType::Unspecified, vec![]),
        (1, 2, FrameType::Data, vec![1, 2, 3]),
        (u64::MAX, u64::MAX - 1, FrameType::Heartbeat, vec![0; 300]),
        (300, 1_700_000_000_000_000_000, FrameType::Event, b"x".to_vec()),
    ] {
        let mut env = FrameEnvelope::new(seq, ts, t, data);
        let mut buf = Vec::new();
        env.encode_into(&mut buf);
        assert_eq!(buf, env.encode_to_vec());
        env.frame_type = -5; // negative int32: sign-extended varint
        env.checksum = 0;
        buf.clear();
        env.encode_into(&mut buf);
        assert_eq!(buf, env.encode_to_vec());
    }
}

#[test]
fn checksum_is_crc32_of_data() {
    // Standard CRC-32/ISO-HDLC check value.
    assert_eq!(checksum(b"123456789"), 0xCBF4_3926);
    let env = FrameEnvelope::new(1, 1, FrameType::Heartbeat, b"123456789".to_vec());
    assert_eq!(env.checksum, 0xCBF4_3926);
}

#[test]
fn flipped_payload_bit_is_a_checksum_error() {
    let mut env = FrameEnvelope::new(1, 1, FrameType::Data, vec![1, 2, 3, 4]);
    let mut data = env.data.to_vec();
    data[2] ^= 0x10;
    env.data = data.into();
    let stored = env.encode_to_vec();
    assert!(matches!(
        decode_envelope(&stored),
        Err(FrameError::Checksum { .. })
    ));
}

#[test]
fn unknown_or_unspecified_type_is_rejected() {
    let mut env = FrameEnvelope::new(1, 1, FrameType::Data, vec![]);
    env.frame_type = 0;
    assert_eq!(env.verify(), Err(FrameError::UnknownType(0)));
    env.frame_type = 77;
    assert_eq!(env.verify(), Err(FrameError::UnknownType(77)));
}

#[test]
fn garbage_never_panics() {
    // Deterministic pseudo-random garbage of every length up to 256 bytes.
    let mut state: u32 = 0x1234_5678;
    for len in 0..256usize {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        // Either an error or (rarely) a valid envelope; never a panic.
        let _ = decode_envelope(&bytes);
        let _ = DataFrame::decode(bytes.as_slice());
    }
    // A truncated valid record is an error.
    let env = FrameEnvelope::new(5, 6, FrameType::Data, vec![9; 40]);
    let stored = env.encode_to_vec();
    assert!(decode_envelope(&stored[..stored.len() - 3]).is_err());
}
