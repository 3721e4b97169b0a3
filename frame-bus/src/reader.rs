//! [`WalReader`]: a read-only view of a bus directory that works while the
//! gateway holds it open (`gateway wal stat|tail|cursors`).
//!
//! It opens RocksDB as a *secondary* instance (its own small info-log
//! directory under the system temp dir, removed on drop), which never takes
//! the primary's lock and never writes the bus. [`WalReader::refresh`]
//! catches up with what the primary wrote since (`--follow`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proto::FrameEnvelope;
use rocksdb::{IteratorMode, ReadOptions, DB};

use crate::keys::{
    frame_key, parse_frame_key, CF_CURSORS, CF_FRAMES, CF_META, FRAMES_UPPER, META_DELETED_THROUGH,
};
use crate::stats::Counters;
use crate::store::{edge_from_metadata, seek_edge, Edge};
use crate::{BusConfig, BusError};

/// One record read by a [`WalReader`].
#[derive(Debug, Clone)]
pub enum WalRecord {
    /// A frame whose CRC and seq check out.
    Frame(FrameEnvelope),
    /// A record that failed its checks (shown, never hidden, by inspection tools).
    Corrupt { seq: u64, error: String },
}

/// Read-only, lock-free access to a bus directory.
pub struct WalReader {
    db: DB,
    path: PathBuf,
    secondary: PathBuf,
}

impl WalReader {
    /// Opens the bus at `path` without locking it. Fails if `path` holds no bus.
    pub fn open(path: impl AsRef<Path>) -> Result<WalReader, BusError> {
        let path = path.as_ref().to_path_buf();
        if !path.join("CURRENT").is_file() {
            return Err(BusError::Io {
                path: path.clone(),
                source: Arc::new(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no frame bus in this directory (no RocksDB CURRENT file)",
                )),
            });
        }
        let secondary = std::env::temp_dir().join(format!(
            "gateway-wal-reader-{}-{}",
            std::process::id(),
            crate::store::now_ns()
        ));
        let (mut opts, cfs) = crate::store::rocksdb_options(&BusConfig::default());
        opts.create_if_missing(false);
        opts.create_missing_column_families(false);
        opts.set_max_open_files(-1);
        // A bus written before the `state` family existed has only three.
        let existing = DB::list_cf(&opts, &path).map_err(|e| BusError::from_rocksdb(e, &path))?;
        let cfs: Vec<_> = cfs
            .into_iter()
            .filter(|d| existing.iter().any(|n| n == d.name()))
            .collect();
        let db = DB::open_cf_descriptors_as_secondary(&opts, &path, &secondary, cfs)
            .map_err(|e| BusError::from_rocksdb(e, &path))?;
        Ok(WalReader { db, path, secondary })
    }

    /// The bus directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Catches up with writes the gateway made since open / the last refresh.
    pub fn refresh(&self) -> Result<(), BusError> {
        self.db
            .try_catch_up_with_primary()
            .map_err(|e| BusError::from_rocksdb(e, &self.path))
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, BusError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| BusError::Storage(format!("column family {name} missing")))
    }

    /// Every seq at or below this was deleted.
    pub fn deleted_through(&self) -> Result<u64, BusError> {
        let v = self
            .db
            .get_cf(self.cf(CF_META)?, META_DELETED_THROUGH)
            .map_err(|e| BusError::from_rocksdb(e, &self.path))?;
        Ok(v.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// First or last frame seq: one seek; when the block there is corrupt
    /// (RocksDB's checksum), from the SST file metadata instead.
    fn edge(&self, last: bool) -> Result<Option<u64>, BusError> {
        let cf = self.cf(CF_FRAMES)?;
        let edge = if last { Edge::Last } else { Edge::First };
        match seek_edge(&self.db, cf, &Counters::default(), edge) {
            Ok(found) => Ok(found.map(|(seq, _)| seq)),
            Err(e) if e.kind() == rocksdb::ErrorKind::Corruption => {
                Ok(edge_from_metadata(&self.db, cf, edge))
            }
            Err(e) => Err(BusError::from_rocksdb(e, &self.path)),
        }
    }

    /// Last stored seq (or the deletion floor when no frame is stored).
    pub fn head_seq(&self) -> Result<u64, BusError> {
        Ok(self.edge(true)?.unwrap_or(self.deleted_through()?))
    }

    /// Oldest stored seq (`head + 1` when empty).
    pub fn oldest_seq(&self) -> Result<u64, BusError> {
        match self.edge(false)? {
            Some(s) => Ok(s),
            None => Ok(self.head_seq()? + 1),
        }
    }

    /// Persisted consumer cursors `(name, last acknowledged seq)`, by name.
    pub fn cursors(&self) -> Result<Vec<(String, u64)>, BusError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_CURSORS)?, IteratorMode::Start) {
            let (k, v) = item.map_err(|e| BusError::from_rocksdb(e, &self.path))?;
            let name = String::from_utf8_lossy(&k).into_owned();
            match <[u8; 8]>::try_from(&v[..]) {
                Ok(b) => out.push((name, u64::from_be_bytes(b))),
                Err(_) => out.push((name, 0)),
            }
        }
        Ok(out)
    }

    /// Up to `max` records with seq ≥ `from`, in order. A block RocksDB
    /// cannot read (checksum mismatch) yields one [`WalRecord::Corrupt`]
    /// per seq it hides, up to the head, as the bus's own reads count them.
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<WalRecord>, BusError> {
        let mut out = Vec::new();
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(FRAMES_UPPER.to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_FRAMES)?, ro);
        it.seek(frame_key(from));
        // Seq 0 is never assigned; nothing at or below the floor exists.
        let mut next = from.max(self.deleted_through()? + 1);
        let mut head = None;
        while out.len() < max {
            if !it.valid() {
                match it.status() {
                    Ok(()) => break,
                    Err(e) if e.kind() == rocksdb::ErrorKind::Corruption => {
                        let head = match head {
                            Some(h) => h,
                            None => *head.insert(self.head_seq()?),
                        };
                        if next > head {
                            break;
                        }
                        out.push(WalRecord::Corrupt {
                            seq: next,
                            error: format!("rocksdb: {e}"),
                        });
                        next += 1;
                        it.seek(frame_key(next));
                        continue;
                    }
                    Err(e) => return Err(BusError::from_rocksdb(e, &self.path)),
                }
            }
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            let Some(seq) = parse_frame_key(k) else { break };
            out.push(match proto::decode_envelope(v) {
                Ok(env) if env.sequence_id == seq => WalRecord::Frame(env),
                Ok(env) => WalRecord::Corrupt {
                    seq,
                    error: format!("envelope carries seq {}", env.sequence_id),
                },
                Err(e) => WalRecord::Corrupt {
                    seq,
                    error: e.to_string(),
                },
            });
            next = seq + 1;
            it.next();
        }
        Ok(out)
    }
}

impl Drop for WalReader {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.secondary);
    }
}
