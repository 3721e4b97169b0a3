#!/usr/bin/env python3
"""Writes the seed corpus of the `frame_envelope` fuzz target.

Encodes a few FrameEnvelopes (proto/proto/frame.proto) by hand, fields in
number order and default values left out, as prost and
`FrameEnvelope::encode_into` write them, with `checksum` the CRC32 (IEEE,
zlib's, the same as crc32fast) of `data`. Run from anywhere:

    python3 fuzz/scripts/frame_envelope_seeds.py
"""

import os
import struct
import zlib

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus", "frame_envelope")

VARINT, I64, LEN = 0, 1, 2
DATA, COMMAND, EVENT, HEARTBEAT = 1, 2, 3, 4


def varint(n):
    n &= (1 << 64) - 1  # negative int32/int64: two's complement, 10 bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field, wire):
    return varint(field << 3 | wire)


def f_varint(field, n):
    return key(field, VARINT) + varint(n) if n else b""


def f_bytes(field, b):
    if isinstance(b, str):
        b = b.encode()
    return key(field, LEN) + varint(len(b)) + b if b else b""


def f_msg(field, b):
    # A present sub-message is written even when empty.
    return key(field, LEN) + varint(len(b)) + b


def f_double(field, x):
    return key(field, I64) + struct.pack("<d", x) if x != 0.0 else b""


def value(kind, v):
    if kind == "bool":
        return key(1, VARINT) + varint(int(v))
    if kind == "int":
        return key(2, VARINT) + varint(v)
    if kind == "uint":
        return key(3, VARINT) + varint(v)
    if kind == "float":
        return key(4, I64) + struct.pack("<d", v)
    if kind == "string":
        return f_msg(5, v.encode())
    if kind == "bytes":
        return f_msg(6, v)
    raise ValueError(kind)


def sample(tag, val=None, raw=None, quality=0, ts=0, error_code=0):
    b = f_bytes(1, tag)
    if val is not None:
        b += f_msg(2, value(*val))
    if raw is not None:
        b += f_msg(3, value(*raw))
    return b + f_varint(4, quality) + f_varint(5, ts) + f_varint(6, error_code)


def envelope(seq, ts, frame_type, data, checksum=None):
    crc = zlib.crc32(data) if checksum is None else checksum
    return f_varint(1, seq) + f_varint(2, ts) + f_varint(3, frame_type) + f_bytes(4, data) + f_varint(5, crc)


def main():
    os.makedirs(OUT, exist_ok=True)
    ts = 1_795_478_400_123_456_789
    data_frame = f_bytes(1, "plc-1") + b"".join(
        f_msg(2, s)
        for s in [
            sample("flow", ("float", 23.5), ("uint", 235), ts=ts),
            sample("running", ("bool", True), ts=ts),
            sample("level", ("int", -12), ts=ts),
            sample("recipe", ("string", "PKG-500g"), ts=ts),
            sample("blob", ("bytes", b"\x00\xff\x07"), ts=ts),
            sample("pressure", quality=1, ts=ts, error_code=-1),
            sample("temp", ("float", 101.5), quality=2, ts=ts),
        ]
    )
    attrs = [("threshold_value", "95"), ("by", "operator")]
    event_frame = (
        f_bytes(1, "6f1c2b9e-0000-5000-8000-000000000001")
        + f_varint(2, 1)  # ALERT_FIRED
        + f_bytes(3, "boiler-1")
        + f_bytes(4, "water_temp")
        + f_bytes(5, "boiler-overtemp")
        + f_varint(6, 2)  # WARNING
        + f_bytes(7, "water_temp 96.2 > 95")
        + f_msg(8, value("float", 96.2))
        + f_varint(10, ts)
        + b"".join(f_msg(11, f_bytes(1, k) + f_bytes(2, v)) for k, v in attrs)
    )
    status_frame = (
        f_bytes(1, "status-plc-1-1") + f_varint(2, 4) + f_bytes(3, "plc-1") + f_bytes(9, "Offline") + f_varint(10, ts)
    )
    command_frame = (
        f_bytes(1, "cmd-42")
        + f_bytes(2, "plc-1")
        + f_bytes(3, "fill_setpoint")
        + f_msg(4, value("float", 42.5))
        + f_varint(5, ts)
        + f_bytes(6, "api:operator")
    )
    seeds = {
        "data-frame.bin": envelope(1, ts, DATA, data_frame),
        "event-alert-fired.bin": envelope(2, ts, EVENT, event_frame),
        "event-device-status.bin": envelope(3, ts, EVENT, status_frame),
        "command-frame.bin": envelope(4, ts, COMMAND, command_frame),
        "heartbeat.bin": envelope(5, ts, HEARTBEAT, b""),
        # Refused by `verify`; the target still decodes the payload.
        "data-frame-bad-crc.bin": envelope(6, ts, DATA, data_frame, checksum=0xDEADBEEF),
        "unknown-frame-type.bin": envelope(7, ts, 9, b"\x0a\x01x"),
    }
    for name, b in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(b)


if __name__ == "__main__":
    main()
