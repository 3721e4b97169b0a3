//! Fuzzes the decoding of a stored frame bus record (`proto`): arbitrary
//! bytes as one WAL record.
//!
//! Checks, for every input:
//! - `proto::decode_envelope_shared` (the reader's zero-copy path) and
//!   `proto::decode_envelope` never panic and agree; an error renders
//!   (`Display`) without a panic.
//! - An envelope they accept verifies (`FrameEnvelope::verify`: CRC32 and a
//!   known frame type), re-encodes with `FrameEnvelope::encode_into` (the
//!   writer's hot path) to exactly the bytes of prost's `encode_to_vec`, and
//!   those bytes decode back to the same envelope.
//! - The payload decodes as the frame type the envelope claims
//!   (`FrameEnvelope::data_frame` / `event_frame` / `command_frame`) without
//!   a panic. This is done also when the CRC does not match (the envelope
//!   decoded with `prost::Message::decode`, unverified), so the fuzzer
//!   reaches the payload decoders without having to forge a CRC32.
//! - A decoded `DataFrame` or `CommandFrame` re-encodes to a fixed point
//!   (decode ∘ encode keeps the bytes). `EventFrame` is left out of that
//!   check: its `attributes` map encodes in hash order.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::{
    decode_envelope, decode_envelope_shared, Bytes, CommandFrame, DataFrame, FrameEnvelope, FrameType,
    Message,
};

fuzz_target!(|data: &[u8]| {
    let shared = decode_envelope_shared(Bytes::copy_from_slice(data));
    let copied = decode_envelope(data);
    assert_eq!(shared, copied, "zero-copy and copying decoders disagree");

    match &shared {
        Ok(env) => {
            let t = env.verify().expect("an accepted envelope verifies");
            assert_ne!(t, FrameType::Unspecified, "an accepted envelope has a frame type");
            let mut buf = Vec::new();
            env.encode_into(&mut buf);
            assert_eq!(
                buf,
                env.encode_to_vec(),
                "encode_into differs from Message::encode"
            );
            assert_eq!(
                decode_envelope(&buf).as_ref(),
                Ok(env),
                "a re-encoded envelope decodes to another one"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }

    // The payload, whether or not the checksum matched.
    let env = match shared {
        Ok(env) => env,
        Err(_) => match FrameEnvelope::decode(data) {
            Ok(env) => env,
            Err(_) => return,
        },
    };
    let _ = env.verify().map_err(|e| e.to_string());
    match FrameType::try_from(env.frame_type) {
        Ok(FrameType::Data) => match env.data_frame() {
            Ok(frame) => {
                for s in &frame.samples {
                    let _ = s.quality();
                }
                let once = frame.encode_to_vec();
                let again = DataFrame::decode(once.as_slice()).expect("a re-encoded DataFrame decodes");
                assert_eq!(
                    again.encode_to_vec(),
                    once,
                    "DataFrame encoding is not a fixed point"
                );
            }
            Err(e) => {
                let _ = e.to_string();
            }
        },
        Ok(FrameType::Event) => match env.event_frame() {
            Ok(frame) => {
                let _ = (frame.kind(), frame.level());
                let _ = frame.encode_to_vec();
            }
            Err(e) => {
                let _ = e.to_string();
            }
        },
        Ok(FrameType::Command) => match env.command_frame() {
            Ok(frame) => {
                let once = frame.encode_to_vec();
                let again = CommandFrame::decode(once.as_slice()).expect("a re-encoded CommandFrame decodes");
                assert_eq!(
                    again.encode_to_vec(),
                    once,
                    "CommandFrame encoding is not a fixed point"
                );
            }
            Err(e) => {
                let _ = e.to_string();
            }
        },
        // A heartbeat carries no payload message; 0 and unknown numbers are
        // refused by `verify` above.
        Ok(FrameType::Heartbeat) | Ok(FrameType::Unspecified) | Err(_) => {}
    }
});
