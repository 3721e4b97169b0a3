//! What storage must hold, computed from what was published, and how far
//! the destinations are from it.
//!
//! A sample is identified by `(device, tag, source timestamp)`: InfluxDB
//! keeps one point per series and timestamp, so a replayed sample
//! overwrites itself there, and a sample stored under another key is a
//! duplicate. The gateway must store:
//! * every number of the MQTT stream the broker confirmed to the publisher
//!   (value `n` under its own timestamp), whether or not it reached the bus
//!   — a gateway that acknowledged a message it had not stored lost it;
//! * every sample of every `DATA` frame on the bus (the file sink's archive,
//!   itself checked for gaps and repeated seqs), Modbus and OPC UA included;
//! * every `ALERT_FIRED` event of the bus as one `alert_history` row, and
//!   every `DATA` frame on the northbound topic (at least once).
//!
//! [`check`] is a pure function of the collected [`Observed`], so the
//! self-test (`tests/tests/faults.rs`) can remove one point and add one
//! duplicate and watch the verdict turn to fail.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::Value;

use super::Verdict;

/// The device and tag of the numbered MQTT stream.
pub const STREAM_DEVICE: &str = "seq";
pub const STREAM_TAG: &str = "n";

/// One point read back from InfluxDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    pub device: String,
    pub tag: String,
    pub ts_ns: u64,
    /// `value_uint` (the stream's numbers), if the point has one.
    pub uint: Option<u64>,
}

/// Everything collected after a scenario.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The file sink's archive: every frame on the bus, as JSON.
    pub archive: Vec<Value>,
    /// `(n, timestamp ms)` of every stream message the broker confirmed.
    pub stream: Vec<(u64, u64)>,
    /// Every point of `device_data` in InfluxDB.
    pub influx: Vec<Point>,
    /// `seq` of every frame message the northbound subscriber received.
    pub north_seqs: Vec<u64>,
    /// `event_id` of every `alert_history` row.
    pub pg_alert_ids: Vec<String>,
    /// Frames the bus dropped by retention (its metric).
    pub retention_dropped: u64,
    /// Seqs reported corrupt (not a gap in the archive).
    pub corrupt_seqs: BTreeSet<u64>,
}

/// The figures of one scenario.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Samples storage must hold (distinct keys).
    pub published: u64,
    /// Of those, in InfluxDB.
    pub stored: u64,
    /// Published and not in InfluxDB.
    pub lost: u64,
    /// Stream numbers stored more than once (under another key) plus
    /// alerts fired twice for one excursion.
    pub duplicated: u64,
    /// Points in InfluxDB nobody published.
    pub unexpected: u64,
    /// Stream points whose value is not their number.
    pub mismatched: u64,
    /// Frames dropped by the bus's retention.
    pub dropped_by_retention: u64,
    /// Frames the archive holds twice (same seq).
    pub bus_repeated: u64,
    /// Seqs missing from the archive (neither stored nor reported corrupt).
    pub bus_gaps: u64,
    /// `DATA` frames that never reached the northbound subscriber.
    pub north_missing: u64,
    /// Northbound messages received more than once (at-least-once).
    pub north_redelivered: u64,
    pub alerts_fired: u64,
    pub alerts_stored: u64,
    pub alerts_lost: u64,
    /// Stream numbers the broker confirmed (part of `published`).
    pub stream_confirmed: u64,
    /// Examples of lost keys, for the failure message.
    pub lost_examples: Vec<String>,
}

impl Counts {
    /// Pass when nothing was lost, duplicated, invented or altered.
    pub fn verdict(&self) -> Verdict {
        let mut bad = Vec::new();
        let mut flag = |n: u64, what: &str| {
            if n > 0 {
                bad.push(format!("{n} {what}"));
            }
        };
        flag(self.lost, "lost");
        flag(self.duplicated, "duplicated");
        flag(self.unexpected, "unexpected points");
        flag(self.mismatched, "wrong values");
        flag(self.bus_repeated, "frames archived twice");
        flag(self.bus_gaps, "seqs missing from the archive");
        flag(self.north_missing, "frames missing northbound");
        flag(self.alerts_lost, "alerts missing from PostgreSQL");
        if self.published == 0 {
            bad.push("nothing was published".into());
        }
        if bad.is_empty() {
            Verdict::Pass
        } else {
            let mut why = bad.join(", ");
            if !self.lost_examples.is_empty() {
                why.push_str(&format!(" (e.g. {})", self.lost_examples.join("; ")));
            }
            Verdict::Fail(why)
        }
    }
}

type Key = (String, String, u64);

/// Compares what was published with what is stored.
pub fn check(o: &Observed) -> Counts {
    let mut c = Counts {
        dropped_by_retention: o.retention_dropped,
        stream_confirmed: o.stream.len() as u64,
        ..Counts::default()
    };

    // The bus, as archived: each seq once, no gap but reported corruption.
    let mut seqs: BTreeMap<u64, u32> = BTreeMap::new();
    let mut bus_samples: HashSet<Key> = HashSet::new();
    let mut data_seqs: BTreeSet<u64> = BTreeSet::new();
    let mut alerts_by_seq: BTreeMap<u64, (String, String)> = BTreeMap::new();
    for f in &o.archive {
        let Some(seq) = f["seq"].as_u64() else {
            continue;
        };
        *seqs.entry(seq).or_default() += 1;
        if f["type"] == "DATA" {
            data_seqs.insert(seq);
            let device = f["device"].as_str().unwrap_or_default();
            for s in f["samples"].as_array().into_iter().flatten() {
                bus_samples.insert((
                    device.to_string(),
                    s["tag"].as_str().unwrap_or_default().to_string(),
                    s["ts_ns"].as_u64().unwrap_or(0),
                ));
            }
        } else if f["kind"] == "ALERT_FIRED" || f["kind"] == "ALERT_RESOLVED" {
            alerts_by_seq.insert(
                seq,
                (
                    f["kind"].as_str().unwrap_or_default().to_string(),
                    f["rule_id"].as_str().unwrap_or_default().to_string(),
                ),
            );
        }
    }
    c.bus_repeated = seqs.values().map(|&n| u64::from(n - 1)).sum();
    if let Some((&first, _)) = seqs.iter().next() {
        let last = *seqs.keys().next_back().unwrap_or(&first);
        // Frames before the first archived one were deleted by nobody but
        // retention; the archive is a consumer from seq 1.
        c.bus_gaps = (1..=last)
            .filter(|s| !seqs.contains_key(s) && !o.corrupt_seqs.contains(s))
            .count() as u64;
    }

    // What storage must hold.
    let stream_key = |ts_ms: u64| {
        (
            STREAM_DEVICE.to_string(),
            STREAM_TAG.to_string(),
            ts_ms * 1_000_000,
        )
    };
    let mut expected: HashSet<Key> = bus_samples;
    let mut number_of: HashMap<u64, u64> = HashMap::new();
    for &(n, ts_ms) in &o.stream {
        expected.insert(stream_key(ts_ms));
        number_of.insert(ts_ms * 1_000_000, n);
    }
    c.published = expected.len() as u64;

    let mut stored_keys: HashSet<Key> = HashSet::new();
    let mut per_number: HashMap<u64, u64> = HashMap::new();
    for p in &o.influx {
        let key = (p.device.clone(), p.tag.clone(), p.ts_ns);
        if p.device == STREAM_DEVICE && p.tag == STREAM_TAG {
            if let Some(n) = p.uint {
                *per_number.entry(n).or_default() += 1;
                if let Some(&want) = number_of.get(&p.ts_ns) {
                    if want != n {
                        c.mismatched += 1;
                    }
                }
            }
        }
        if !expected.contains(&key) {
            c.unexpected += 1;
        }
        stored_keys.insert(key);
    }
    c.stored = expected.intersection(&stored_keys).count() as u64;
    let mut lost: Vec<&Key> = expected.difference(&stored_keys).collect();
    lost.sort();
    c.lost = lost.len() as u64;
    c.lost_examples = lost
        .iter()
        .take(3)
        .map(|(d, t, ts)| format!("{d}/{t}@{ts}"))
        .collect();
    c.duplicated = per_number.values().map(|&k| k - 1).sum();

    // Northbound: every DATA frame at least once.
    let received: HashSet<u64> = o.north_seqs.iter().copied().collect();
    let north_missing: Vec<u64> = data_seqs
        .iter()
        .copied()
        .filter(|s| !received.contains(s))
        .collect();
    c.north_missing = north_missing.len() as u64;
    if let (Some(first), Some(last)) = (north_missing.first(), north_missing.last()) {
        c.lost_examples
            .push(format!("northbound seqs {first}..={last} missing"));
    }
    c.north_redelivered = o.north_seqs.len() as u64 - received.len() as u64;

    // Alerts: each FIRED once in PostgreSQL; a rule firing again while it
    // was firing (no RESOLVED between) is a duplicate.
    let fired: BTreeSet<&str> = o
        .archive
        .iter()
        .filter(|f| f["kind"] == "ALERT_FIRED")
        .filter_map(|f| f["event_id"].as_str())
        .collect();
    let in_pg: HashSet<&str> = o.pg_alert_ids.iter().map(String::as_str).collect();
    c.alerts_fired = fired.len() as u64;
    c.alerts_stored = fired.iter().filter(|id| in_pg.contains(*id)).count() as u64;
    c.alerts_lost = c.alerts_fired - c.alerts_stored;
    let mut firing: HashMap<&str, bool> = HashMap::new();
    for (kind, rule) in alerts_by_seq.values() {
        let was = firing.insert(rule, kind == "ALERT_FIRED").unwrap_or(false);
        if was && kind == "ALERT_FIRED" {
            c.duplicated += 1;
        }
    }
    c
}
