//! Gateway_Rust configuration: the TOML schema of `gateway.toml` and
//! `devices/*.toml`, loading, `${ENV}` substitution and validation with
//! errors that name file, line, column and field.
//!
//! Invariant: a configuration that fails validation never starts any part of
//! the gateway. This crate does no device or storage I/O; it depends only on
//! `proto`.
//!
//! The schema arrives with the runtime issue; the foundation only fixes the
//! crate's place in the dependency graph (`gateway → config → proto`).
