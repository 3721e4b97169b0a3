//! Gateway_Rust device drivers (Modbus TCP/RTU, OPC-UA, MQTT, simulator):
//! device I/O in, `proto::DataFrame`s out.
//!
//! Invariant: a driver never talks to a sink or to storage; it hands frames
//! to whatever publisher the gateway wires in (the frame bus), and a
//! malformed device reply is counted and skipped, never a panic.
//!
//! The drivers arrive with their own issues; the foundation only fixes the
//! crate's place in the dependency graph (`gateway → drivers → proto`).
