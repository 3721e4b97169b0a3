//! End-to-end and crash tests of Gateway_Rust.
//!
//! Tests here start real processes (the `gateway` binary, helper binaries in
//! `src/bin/`) and real peers, and kill them with SIGKILL where the point is
//! durability. Helper binaries:
//!
//! * `wal_crash_child` — publishes to a frame bus as fast as it can and
//!   reports every acknowledged seq on stdout, so a parent can SIGKILL it at a
//!   random moment and check that every reported seq survived.
//!
//! Shared wire format of `wal_crash_child`'s stdout (one line per event):
//! `P <seq> <publisher> <counter>` for an acknowledged publish,
//! `A <seq>` for a consumer acknowledgement, `READY` once the bus is open.

/// Payload of publisher `p`'s `n`-th frame, as written by `wal_crash_child`.
pub fn crash_payload(publisher: u64, counter: u64) -> Vec<u8> {
    let mut v = format!("p{publisher}-n{counter}|").into_bytes();
    v.resize(96, (publisher * 7 + counter) as u8);
    v
}
