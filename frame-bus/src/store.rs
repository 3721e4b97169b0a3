//! The RocksDB instance and the state every part of the bus shares:
//! opening and recovery, reading ranges of frames, consumer cursors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use prost::bytes::BytesMut;
use proto::{FrameEnvelope, Message};
use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, IteratorMode, Options,
    ReadOptions, DB,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::keys::{self, frame_key, parse_frame_key, CF_CURSORS, CF_FRAMES, CF_META, CF_STATE};
use crate::stats::Counters;
use crate::{BusConfig, BusError};

/// In-memory state of one consumer cursor.
#[derive(Debug, Clone)]
pub(crate) struct CursorState {
    /// Last acknowledged seq.
    pub acked: u64,
    /// Last acknowledged seq known to be in RocksDB.
    pub persisted: u64,
    /// A live `Subscription` holds this name.
    pub active: bool,
    /// Frames skipped because retention dropped them before this consumer read them.
    pub skipped_dropped: u64,
    /// The stored record must be rewritten even if `acked == persisted`
    /// (new consumer, or a corrupt record found at open).
    pub needs_write: bool,
}

/// State shared by the handle, the writer, the retention task and subscriptions.
pub(crate) struct Shared {
    /// The open RocksDB instance. Swapped (under the write lock) only when the
    /// writer reopens the database after a write error, e.g. ENOSPC, which
    /// RocksDB itself does not recover from in-process.
    db: RwLock<Option<Arc<DB>>>,
    pub path: PathBuf,
    pub config: BusConfig,
    /// Last committed seq; only the writer stores it, after the write returned.
    pub head: AtomicU64,
    /// Every seq at or below this is deleted (retention/ack floor).
    pub deleted_through: AtomicU64,
    pub cursors: Mutex<HashMap<String, CursorState>>,
    /// Set by `ack`; cleared by the writer when it persisted cursors.
    pub cursors_dirty: AtomicBool,
    /// Serialises cursor writes (writer) with cursor deletes (`remove_consumer`).
    pub cursor_write_lock: Mutex<()>,
    /// Serialises retention passes (background thread and `run_retention`).
    pub retention_lock: Mutex<()>,
    /// Time stamp of the newest stored frame, so times stay non-decreasing across restarts.
    pub last_ts_at_open: u64,
    pub counters: Counters,
}

/// Reader name retention uses for its probes (its finds are not counted).
pub(crate) const RETENTION_READER: &str = "retention";

/// What reading a range yielded.
pub(crate) struct ReadOutcome {
    pub frames: Vec<FrameEnvelope>,
    /// Highest seq examined (valid or not); the reader resumes after it.
    pub last_examined: Option<u64>,
    /// The iteration reached the end of the requested range (nothing left to examine).
    pub reached_end: bool,
}

impl Shared {
    /// The current RocksDB handle (cheap clone; hold it only for one operation).
    /// Fails only if a reopen after a write error could not open the database again.
    pub fn db(&self) -> Result<Arc<DB>, BusError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(BusError::Unavailable)
    }

    /// Closes and reopens the database in place, then re-reads head, floor
    /// and cursors from disk. Used by the writer after a failed write: a
    /// RocksDB instance that hit ENOSPC (or another hard I/O error) on its
    /// WAL stays read-only until reopened. Readers block on the lock for the
    /// duration; handles they hold are waited for (bounded).
    /// Returns the recovered head.
    pub fn reopen(&self) -> Result<Recovered, BusError> {
        // 1. Take the failed instance out; readers now get `Unavailable` at
        //    once (subscriptions wait asynchronously) instead of blocking.
        let Some(mut old) = self.db.write().unwrap_or_else(|p| p.into_inner()).take() else {
            return self.open_into_slot();
        };
        // 2. Wait, without any lock, for handles handed out before (a read, a compaction).
        let mut waited = Duration::ZERO;
        loop {
            match Arc::try_unwrap(old) {
                Ok(db) => {
                    drop(db); // closes the instance: RocksDB allows one per directory
                    break;
                }
                Err(still_shared) if waited < Duration::from_secs(10) => {
                    old = still_shared;
                    std::thread::sleep(Duration::from_millis(5));
                    waited += Duration::from_millis(5);
                }
                Err(still_shared) => {
                    *self.db.write().unwrap_or_else(|p| p.into_inner()) = Some(still_shared);
                    return Err(BusError::Storage(
                        "reopen: database handle still in use after 10 s".into(),
                    ));
                }
            }
        }
        self.open_into_slot()
    }

    /// Opens the database into the empty slot and adopts what recovery found.
    /// On failure the slot stays empty (`Unavailable`) and the writer retries.
    fn open_into_slot(&self) -> Result<Recovered, BusError> {
        let (opts, cfs) = rocksdb_options(&self.config);
        let db = DB::open_cf_descriptors(&opts, &self.path, cfs)
            .map_err(|e| BusError::from_rocksdb(e, &self.path))?;
        // Counters were counted at the first open; do not count the same records again.
        let rec = recover(&db, &self.path, &Counters::default())?;
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
        // The db lock is released before the cursor lock is taken (lock order: cursors → db).
        self.deleted_through
            .fetch_max(rec.deleted_through, Ordering::AcqRel);
        self.head.fetch_max(rec.head, Ordering::AcqRel);
        let mut map = self.cursors();
        for (name, st) in map.iter_mut() {
            st.persisted = rec.cursors.get(name).map_or(0, |c| c.persisted);
            st.needs_write = true;
        }
        drop(map);
        self.cursors_dirty.store(true, Ordering::Release);
        Ok(rec)
    }

    pub fn cursors(&self) -> MutexGuard<'_, HashMap<String, CursorState>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every update is a single field store), so poisoning is ignored.
        self.cursors.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Lowest seq that may still be stored.
    pub fn oldest(&self) -> u64 {
        self.deleted_through.load(Ordering::Acquire) + 1
    }

    pub fn storage_err(&self, e: rocksdb::Error) -> BusError {
        BusError::from_rocksdb(e, &self.path)
    }

    /// Examines up to `max` records with seq in `from..=to` and returns the
    /// valid ones. The stored values are copied into one buffer per call and
    /// every payload is a zero-copy slice of it (one allocation per chunk, not
    /// per frame). Corrupt records are counted, logged once per call with
    /// their seqs, and skipped.
    pub fn read_range(&self, from: u64, to: u64, max: usize, reader: &str) -> Result<ReadOutcome, BusError> {
        let mut out = ReadOutcome {
            frames: Vec::with_capacity(max.min(to.saturating_sub(from) as usize + 1)),
            last_examined: None,
            reached_end: false,
        };
        if from > to || max == 0 {
            return Ok(out);
        }
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(frame_key(from).to_vec());
        match to.checked_add(1) {
            Some(end) => opts.set_iterate_upper_bound(frame_key(end).to_vec()),
            None => opts.set_iterate_upper_bound(keys::FRAMES_UPPER.to_vec()),
        }
        let db = self.db()?;
        let mut it = db.raw_iterator_cf_opt(cf(&db, CF_FRAMES), opts);
        it.seek(frame_key(from));
        let mut bad: Vec<(u64, String)> = Vec::new();
        let mut malformed = 0u64;
        let mut chunk = BytesMut::new();
        let mut records: Vec<(u64, usize, usize)> = Vec::new();
        loop {
            if !it.valid() {
                match it.status() {
                    Ok(()) => {
                        out.reached_end = true;
                        break;
                    }
                    // RocksDB found its own block corrupt: count the seq it
                    // could not read and step past it, never stopping the reader.
                    Err(e) if e.kind() == rocksdb::ErrorKind::Corruption => {
                        let at = out.last_examined.map_or(from, |s| s + 1);
                        if at > to {
                            out.reached_end = true;
                            break;
                        }
                        bad.push((at, format!("rocksdb: {e}")));
                        out.last_examined = Some(at);
                        if at == to {
                            out.reached_end = true;
                            break;
                        }
                        // Bounded work per call: the caller resumes after `at`.
                        if bad.len() + records.len() >= max {
                            break;
                        }
                        it.seek(frame_key(at + 1));
                        continue;
                    }
                    Err(e) => return Err(self.storage_err(e)),
                }
            }
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            match parse_frame_key(k) {
                None => malformed += 1,
                Some(seq) => {
                    out.last_examined = Some(seq);
                    let start = chunk.len();
                    chunk.extend_from_slice(v);
                    records.push((seq, start, chunk.len()));
                    if records.len() + bad.len() >= max {
                        break;
                    }
                }
            }
            it.next();
        }
        drop(it);
        let chunk = chunk.freeze();
        for (seq, start, end) in records {
            match proto::decode_envelope_shared(chunk.slice(start..end)) {
                Ok(env) if env.sequence_id == seq => out.frames.push(env),
                Ok(env) => bad.push((
                    seq,
                    format!("envelope carries seq {} under key seq {seq}", env.sequence_id),
                )),
                Err(e) => bad.push((seq, e.to_string())),
            }
        }
        bad.sort_by_key(|b| b.0);
        if malformed > 0 {
            self.counters
                .malformed_keys
                .fetch_add(malformed, Ordering::Relaxed);
            warn!(
                reader,
                count = malformed,
                from,
                to,
                "skipped keys outside the frame:{{seq:020}} format"
            );
        }
        // Retention's probes would count the same records again every pass.
        if !bad.is_empty() && reader != RETENTION_READER {
            self.counters
                .corrupt_frames
                .fetch_add(bad.len() as u64, Ordering::Relaxed);
            let seqs: Vec<u64> = bad.iter().map(|b| b.0).take(32).collect();
            warn!(
                reader,
                count = bad.len(),
                first_seq = bad[0].0,
                last_seq = bad[bad.len() - 1].0,
                ?seqs,
                error = %bad[0].1,
                "skipped corrupt frames"
            );
        }
        Ok(out)
    }

    /// Timestamp and seq of the first readable frame at or after `seq` (up to `head`).
    pub fn first_frame_at_or_after(&self, seq: u64, head: u64) -> Result<Option<(u64, u64)>, BusError> {
        let mut from = seq;
        while from <= head {
            let r = self.read_range(from, head, 1, RETENTION_READER)?;
            if let Some(f) = r.frames.first() {
                return Ok(Some((f.sequence_id, f.timestamp_ns)));
            }
            match r.last_examined {
                Some(s) if s < head => from = s + 1,
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Approximate on-disk bytes of the frame column family (SST files + memtables).
    pub fn approx_bytes(&self) -> u64 {
        let Ok(db) = self.db() else { return 0 };
        let cf = cf(&db, CF_FRAMES);
        let sst = db
            .property_int_value_cf(cf, "rocksdb.total-sst-files-size")
            .ok()
            .flatten()
            .unwrap_or(0);
        let mem = db
            .property_int_value_cf(cf, "rocksdb.size-all-mem-tables")
            .ok()
            .flatten()
            .unwrap_or(0);
        sst + mem
    }
}

/// Wall-clock time in ns since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The exact RocksDB options the bus opens its database with (database
/// options and the four column family descriptors). Public so benchmarks
/// and tools can open a database configured identically.
pub fn rocksdb_options(config: &BusConfig) -> (Options, Vec<ColumnFamilyDescriptor>) {
    let mut db = Options::default();
    db.create_if_missing(true);
    db.create_missing_column_families(true);
    db.set_max_background_jobs(2);
    db.set_bytes_per_sync(1 << 20);
    db.set_max_total_wal_size(256 << 20);
    db.set_keep_log_file_num(3);
    db.set_max_log_file_size(4 << 20);
    db.set_recycle_log_file_num(0);

    let mut frames = Options::default();
    frames.set_write_buffer_size(config.write_buffer_bytes);
    frames.set_max_write_buffer_number(3);
    frames.set_target_file_size_base(64 << 20);
    frames.set_compression_type(DBCompressionType::Lz4);
    let mut table = BlockBasedOptions::default();
    table.set_block_size(16 << 10);
    frames.set_block_based_table_factory(&table);

    let mut small = Options::default();
    small.set_write_buffer_size(1 << 20);

    let cfs = vec![
        ColumnFamilyDescriptor::new(CF_FRAMES, frames),
        ColumnFamilyDescriptor::new(CF_CURSORS, small.clone()),
        ColumnFamilyDescriptor::new(CF_STATE, small.clone()),
        ColumnFamilyDescriptor::new(CF_META, small),
    ];
    (db, cfs)
}

/// What recovery found on disk.
pub(crate) struct Recovered {
    pub head: u64,
    pub deleted_through: u64,
    pub last_ts: u64,
    pub cursors: HashMap<String, CursorState>,
    pub cursors_dirty: bool,
}

/// Opens (or creates) the bus at `path` and recovers head, floor and cursors
/// without scanning the frames: one seek to the last key, one read of `meta`,
/// and a scan of the (small) cursor column family.
pub(crate) fn open(
    path: &Path,
    config: BusConfig,
) -> Result<(Shared, watch::Sender<u64>, watch::Receiver<u64>), BusError> {
    std::fs::create_dir_all(path).map_err(|source| BusError::Io {
        path: path.to_path_buf(),
        source: Arc::new(source),
    })?;
    let (opts, cfs) = rocksdb_options(&config);
    let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| BusError::from_rocksdb(e, path))?;
    let counters = Counters::default();
    let rec = recover(&db, path, &counters)?;
    info!(path = %path.display(), head = rec.head, oldest = rec.deleted_through + 1, consumers = rec.cursors.len(), "frame bus opened");
    let (head_tx, head_rx) = watch::channel(rec.head);
    let shared = Shared {
        db: RwLock::new(Some(Arc::new(db))),
        path: path.to_path_buf(),
        config,
        head: AtomicU64::new(rec.head),
        deleted_through: AtomicU64::new(rec.deleted_through),
        cursors: Mutex::new(rec.cursors),
        cursors_dirty: AtomicBool::new(rec.cursors_dirty),
        cursor_write_lock: Mutex::new(()),
        retention_lock: Mutex::new(()),
        last_ts_at_open: rec.last_ts,
        counters,
    };
    Ok((shared, head_tx, head_rx))
}

/// Column family handle; the four families are created at open
/// (`create_missing_column_families`), so a missing one is a programming error.
pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> &'a ColumnFamily {
    db.cf_handle(name).expect("column family created at open")
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Edge {
    First,
    Last,
}

/// The seq (and time stamp) of the first or last frame, by one seek
/// (malformed keys are stepped over and counted). A RocksDB error, e.g. a
/// block checksum mismatch, is returned as is.
pub(crate) fn seek_edge(
    db: &DB,
    frames_cf: &ColumnFamily,
    counters: &Counters,
    edge: Edge,
) -> Result<Option<(u64, u64)>, rocksdb::Error> {
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(keys::FRAMES_UPPER.to_vec());
    let mut it = db.raw_iterator_cf_opt(frames_cf, ro);
    match edge {
        Edge::Last => it.seek_to_last(),
        Edge::First => it.seek(frame_key(0)),
    }
    while it.valid() {
        match it.key().and_then(parse_frame_key) {
            Some(seq) => {
                let ts = it
                    .value()
                    .and_then(|v| FrameEnvelope::decode(v).ok())
                    .map_or(0, |env| env.timestamp_ns);
                return Ok(Some((seq, ts)));
            }
            None => {
                counters.malformed_keys.fetch_add(1, Ordering::Relaxed);
                match edge {
                    Edge::Last => it.prev(),
                    Edge::First => it.next(),
                }
            }
        }
    }
    it.status().map(|()| None)
}

/// The first or last frame seq without reading a data block: the smallest
/// or largest key of every SST file of the frames family (file metadata)
/// and a memtable-only seek. Used when the block at that end is corrupt.
/// A range tombstone's bound can be a file's largest key, so the head found
/// this way may be one past the last frame: one seq is then never used.
pub(crate) fn edge_from_metadata(db: &DB, frames_cf: &ColumnFamily, edge: Edge) -> Option<u64> {
    let files = db.live_files().unwrap_or_default();
    let keys = files
        .iter()
        .filter(|f| f.column_family_name == CF_FRAMES)
        .filter_map(|f| match edge {
            Edge::Last => f.end_key.as_deref(),
            Edge::First => f.start_key.as_deref(),
        })
        .filter_map(parse_frame_key);
    let sst = match edge {
        Edge::Last => keys.max(),
        Edge::First => keys.min(),
    };
    let mut ro = ReadOptions::default();
    ro.set_read_tier(rocksdb::ReadTier::Memtable);
    ro.set_iterate_upper_bound(keys::FRAMES_UPPER.to_vec());
    let mut it = db.raw_iterator_cf_opt(frames_cf, ro);
    match edge {
        Edge::Last => it.seek_to_last(),
        Edge::First => it.seek(frame_key(0)),
    }
    let mem = if it.valid() {
        it.key().and_then(parse_frame_key)
    } else {
        None
    };
    match (sst, mem, edge) {
        (Some(a), Some(b), Edge::Last) => Some(a.max(b)),
        (Some(a), Some(b), Edge::First) => Some(a.min(b)),
        (a, b, _) => a.or(b),
    }
}

/// Reads head, floor, newest time stamp and cursors from an open database.
pub(crate) fn recover(db: &DB, path: &Path, counters: &Counters) -> Result<Recovered, BusError> {
    let meta = cf(db, CF_META);
    let frames_cf = cf(db, CF_FRAMES);

    // Format version: written on creation; a newer one is refused, not misread.
    match db.get_cf(meta, keys::META_FORMAT) {
        Ok(Some(v)) => match keys::decode_u64(&v) {
            Some(n) if n <= keys::FORMAT_VERSION => {}
            Some(n) => {
                return Err(BusError::UnsupportedFormat {
                    found: n,
                    supported: keys::FORMAT_VERSION,
                })
            }
            None => warn!(
                len = v.len(),
                "meta format_version has a wrong length; assuming version 1"
            ),
        },
        Ok(None) => db
            .put_cf(meta, keys::META_FORMAT, keys::encode_u64(keys::FORMAT_VERSION))
            .map_err(|e| BusError::from_rocksdb(e, path))?,
        Err(e) => return Err(BusError::from_rocksdb(e, path)),
    }

    // Floor: everything at or below it was deleted.
    let mut deleted_through = match db.get_cf(meta, keys::META_DELETED_THROUGH) {
        Ok(Some(v)) => match keys::decode_u64(&v) {
            Some(n) => n,
            None => {
                warn!(
                    len = v.len(),
                    "meta deleted_through has a wrong length; recovering it from the frame keys"
                );
                0
            }
        },
        Ok(None) => 0,
        Err(e) => return Err(BusError::from_rocksdb(e, path)),
    };

    // Last and first parseable frame keys: seeks, not scans (malformed
    // keys are skipped and counted). A corrupt block at either end must
    // not keep the bus closed: the edge is then taken from metadata.
    let (last_key_seq, last_ts_at_open) = match seek_edge(db, frames_cf, counters, Edge::Last) {
        Ok(found) => found.unwrap_or((0, 0)),
        Err(e) if e.kind() == rocksdb::ErrorKind::Corruption => {
            let seq = edge_from_metadata(db, frames_cf, Edge::Last).unwrap_or(0);
            warn!(error = %e, head = seq, "the block holding the newest frame is corrupt; head recovered from the SST file metadata and the memtable (its frames are reported corrupt when read)");
            (seq, 0)
        }
        Err(e) => return Err(BusError::from_rocksdb(e, path)),
    };
    if deleted_through == 0 && last_key_seq > 0 {
        let first_key_seq = match seek_edge(db, frames_cf, counters, Edge::First) {
            Ok(found) => found.map(|(seq, _)| seq),
            Err(e) if e.kind() == rocksdb::ErrorKind::Corruption => {
                let seq = edge_from_metadata(db, frames_cf, Edge::First);
                warn!(error = %e, oldest = seq, "the block holding the oldest frame is corrupt; the oldest seq recovered from the SST file metadata and the memtable");
                seq
            }
            Err(e) => return Err(BusError::from_rocksdb(e, path)),
        };
        if let Some(first) = first_key_seq {
            deleted_through = deleted_through.max(first.saturating_sub(1));
        }
    }

    // Cursors.
    let mut cursors = HashMap::new();
    let cursors_cf = cf(db, CF_CURSORS);
    let mut dirty = false;
    for item in db.iterator_cf(cursors_cf, IteratorMode::Start) {
        let (k, v) = item.map_err(|e| BusError::from_rocksdb(e, path))?;
        let Ok(name) = String::from_utf8(k.to_vec()) else {
            counters.corrupt_cursors.fetch_add(1, Ordering::Relaxed);
            warn!(key = ?k, "ignoring cursor with a non-UTF-8 consumer name");
            continue;
        };
        let (acked, persisted) = match keys::decode_u64(&v) {
            Some(n) => (n, n),
            None => {
                counters.corrupt_cursors.fetch_add(1, Ordering::Relaxed);
                warn!(consumer = %name, len = v.len(), "cursor value is not 8 bytes; the consumer replays from the oldest stored frame");
                dirty = true;
                // acked = floor replays everything retained; the record is rewritten.
                (deleted_through, deleted_through)
            }
        };
        let needs_write = dirty && keys::decode_u64(&v).is_none();
        cursors.insert(
            name,
            CursorState {
                acked,
                persisted,
                active: false,
                skipped_dropped: 0,
                needs_write,
            },
        );
    }

    // A cursor is never above head: it bounds head from below if `meta` was lost.
    let max_cursor = cursors
        .values()
        .map(|c: &CursorState| c.persisted)
        .max()
        .unwrap_or(0);
    let head = last_key_seq.max(deleted_through).max(max_cursor);
    Ok(Recovered {
        head,
        deleted_through,
        last_ts: last_ts_at_open,
        cursors,
        cursors_dirty: dirty,
    })
}
