//! Frame types of the Gateway_Rust frame bus.
//!
//! Everything that travels through the gateway is a *frame*. This crate owns
//! the protobuf definition (`proto/frame.proto`, compiled at build time with
//! the pure-Rust `protox` compiler, so no system `protoc` is needed) and the
//! few rules every producer and consumer shares:
//!
//! * A WAL record is one encoded [`FrameEnvelope`]. Its `data` holds one
//!   encoded [`DataFrame`], [`EventFrame`] or [`CommandFrame`] according to
//!   `frame_type`, and `checksum` is the CRC32 of `data` ([`checksum`]).
//! * [`FrameEnvelope::verify`] / [`decode_envelope`] are the only way a reader
//!   should accept a record: they check decodability, the frame type and the
//!   CRC, and report each failure as a typed [`FrameError`], never a panic.
//! * Field numbers in `frame.proto` are never reused; fields may be added.
//!
//! This crate depends on nothing else in the workspace.

mod generated {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/gateway.frame.v1.rs"));
}

pub use generated::*;
pub use prost::bytes::Bytes;
pub use prost::Message;

/// Why a stored or received record is not an acceptable frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes are not a protobuf `FrameEnvelope`.
    #[error("undecodable frame envelope: {0}")]
    Decode(String),
    /// `checksum` does not match the CRC32 of `data`.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    /// `frame_type` is 0 or a number this build does not know.
    #[error("unknown frame type {0}")]
    UnknownType(i32),
}

/// CRC32 (IEEE) of a frame's payload, as stored in `FrameEnvelope.checksum`.
pub fn checksum(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

impl FrameEnvelope {
    /// Builds an envelope around an already encoded payload, computing its checksum.
    pub fn new(sequence_id: u64, timestamp_ns: u64, frame_type: FrameType, data: impl Into<Bytes>) -> Self {
        let data = data.into();
        let checksum = checksum(&data);
        FrameEnvelope {
            sequence_id,
            timestamp_ns,
            frame_type: frame_type as i32,
            data,
            checksum,
        }
    }

    /// Appends the envelope's protobuf encoding to `buf`: the same bytes as
    /// [`Message::encode`], without prost's `Bytes` clone (which allocates
    /// when it promotes a `Vec`-backed buffer) — the writer's hot path.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        use prost::encoding::{encode_key, encode_varint, WireType};
        if self.sequence_id != 0 {
            encode_key(1, WireType::Varint, buf);
            encode_varint(self.sequence_id, buf);
        }
        if self.timestamp_ns != 0 {
            encode_key(2, WireType::Varint, buf);
            encode_varint(self.timestamp_ns, buf);
        }
        if self.frame_type != 0 {
            encode_key(3, WireType::Varint, buf);
            // int32 is sign-extended to 64 bits on the wire.
            encode_varint(i64::from(self.frame_type) as u64, buf);
        }
        if !self.data.is_empty() {
            encode_key(4, WireType::LengthDelimited, buf);
            encode_varint(self.data.len() as u64, buf);
            buf.extend_from_slice(&self.data);
        }
        if self.checksum != 0 {
            encode_key(5, WireType::Varint, buf);
            encode_varint(u64::from(self.checksum), buf);
        }
    }

    /// Checks the checksum and the frame type; returns the frame type.
    pub fn verify(&self) -> Result<FrameType, FrameError> {
        let computed = checksum(&self.data);
        if computed != self.checksum {
            return Err(FrameError::Checksum {
                stored: self.checksum,
                computed,
            });
        }
        match FrameType::try_from(self.frame_type) {
            Ok(FrameType::Unspecified) | Err(_) => Err(FrameError::UnknownType(self.frame_type)),
            Ok(t) => Ok(t),
        }
    }

    /// Decodes the payload as a [`DataFrame`].
    pub fn data_frame(&self) -> Result<DataFrame, FrameError> {
        DataFrame::decode(self.data.clone()).map_err(|e| FrameError::Decode(e.to_string()))
    }

    /// Decodes the payload as an [`EventFrame`].
    pub fn event_frame(&self) -> Result<EventFrame, FrameError> {
        EventFrame::decode(self.data.clone()).map_err(|e| FrameError::Decode(e.to_string()))
    }

    /// Decodes the payload as a [`CommandFrame`].
    pub fn command_frame(&self) -> Result<CommandFrame, FrameError> {
        CommandFrame::decode(self.data.clone()).map_err(|e| FrameError::Decode(e.to_string()))
    }
}

/// Decodes and verifies one stored record (the payload is copied).
pub fn decode_envelope(bytes: &[u8]) -> Result<FrameEnvelope, FrameError> {
    decode_envelope_shared(Bytes::copy_from_slice(bytes))
}

/// Decodes and verifies one record held in a shared buffer; the payload is a
/// zero-copy slice of `bytes`.
pub fn decode_envelope_shared(bytes: Bytes) -> Result<FrameEnvelope, FrameError> {
    let env = FrameEnvelope::decode(bytes).map_err(|e| FrameError::Decode(e.to_string()))?;
    env.verify()?;
    Ok(env)
}

impl Value {
    /// A boolean value.
    pub fn bool(v: bool) -> Self {
        Value {
            kind: Some(value::Kind::BoolValue(v)),
        }
    }
    /// A signed integer value.
    pub fn int(v: i64) -> Self {
        Value {
            kind: Some(value::Kind::IntValue(v)),
        }
    }
    /// An unsigned integer value.
    pub fn uint(v: u64) -> Self {
        Value {
            kind: Some(value::Kind::UintValue(v)),
        }
    }
    /// A floating point value.
    pub fn float(v: f64) -> Self {
        Value {
            kind: Some(value::Kind::FloatValue(v)),
        }
    }
    /// A string value.
    pub fn string(v: impl Into<String>) -> Self {
        Value {
            kind: Some(value::Kind::StringValue(v.into())),
        }
    }
    /// A raw bytes value.
    pub fn bytes(v: impl Into<Bytes>) -> Self {
        Value {
            kind: Some(value::Kind::BytesValue(v.into())),
        }
    }
}
