//! `type = "file"`: every frame, decoded, as one JSON object per line
//! (the same shape as `gateway wal tail --json`).
//!
//! Guarantee: a batch is written, `fdatasync`ed, and only then acknowledged
//! on the bus. After a crash between the write and the ack, the replayed
//! frames are recognised by their `seq` (the last line's seq is read at
//! start) and skipped, so each frame is in the file exactly once. When the
//! file passes `max_file_size` it is renamed to `<path>.1` (replacing the
//! previous one) and a new file starts.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use config::FileSinkConfig;
use tracing::info;

use super::{SinkContext, SinkError};
use crate::frame_json;
use crate::metrics::SinkLabel;
use crate::status::lock;
use crate::supervisor::wait_true;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The `seq` of the last complete line of `path` (0 if none).
fn last_seq(path: &Path) -> Result<u64, SinkError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(path)(e)),
    };
    let len = f.metadata().map_err(io_err(path))?.len();
    let start = len.saturating_sub(1 << 20);
    f.seek(SeekFrom::Start(start)).map_err(io_err(path))?;
    let mut last = 0;
    for line in BufReader::new(f).lines() {
        let Ok(line) = line else { continue };
        // Only complete JSON objects count: a torn last line is ignored.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if let Some(s) = v.get("seq").and_then(|s| s.as_u64()) {
                last = last.max(s);
            }
        }
    }
    Ok(last)
}

/// Cuts a torn (unterminated) last line left by a crash mid-write.
fn truncate_torn_tail(path: &Path) -> Result<(), SinkError> {
    let Ok(mut f) = OpenOptions::new().read(true).write(true).open(path) else {
        return Ok(());
    };
    let len = f.metadata().map_err(io_err(path))?.len();
    if len == 0 {
        return Ok(());
    }
    let window = len.min(1 << 20);
    f.seek(SeekFrom::Start(len - window)).map_err(io_err(path))?;
    let mut buf = Vec::with_capacity(window as usize);
    f.read_to_end(&mut buf).map_err(io_err(path))?;
    if buf.last() == Some(&b'\n') {
        return Ok(());
    }
    let keep = buf
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(len - window, |i| len - window + i as u64 + 1);
    f.set_len(keep).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// `<path>.1`: where a full file is moved.
fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

fn open_append(path: &Path) -> Result<File, SinkError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let existed = path.exists();
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    if !existed {
        sync_dir(path)?;
    }
    Ok(f)
}

/// fsyncs the directory holding `path`, so a new or renamed file's entry
/// survives a power cut (otherwise acknowledged lines could vanish with it).
fn sync_dir(path: &Path) -> Result<(), SinkError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Runs the sink until shutdown.
pub async fn run(ctx: SinkContext, cfg: FileSinkConfig, path: PathBuf) -> Result<(), SinkError> {
    let label = SinkLabel {
        sink: ctx.name.clone(),
    };
    let mut shutdown = ctx.shutdown.clone();
    let mut sub = ctx.bus.subscribe(&ctx.name, None)?;
    let (mut file, mut written_through) = tokio::task::block_in_place(|| {
        truncate_torn_tail(&path)?;
        let through = last_seq(&path)?.max(last_seq(&rotated(&path))?);
        Ok::<_, SinkError>((open_append(&path)?, through))
    })?;
    // A WAL that was reset (deleted) restarts at seq 1: lines from the old
    // one must not make the sink skip new frames.
    let head = ctx.bus.head_seq();
    if written_through > head {
        tracing::warn!(
            sink = ctx.name,
            written_through,
            head,
            "the archive is ahead of the WAL (was the WAL reset?); appending without de-duplication"
        );
        written_through = 0;
    }
    info!(sink = ctx.name, path = %path.display(), from = sub.position(), written_through, "file sink started");
    let mut buf = Vec::with_capacity(64 << 10);
    loop {
        let frames = tokio::select! {
            biased;
            _ = wait_true(&mut shutdown) => return Ok(()),
            r = sub.recv_batch(cfg.batch_size) => r?,
        };
        let Some(last) = frames.last().map(|f| f.sequence_id) else {
            continue;
        };
        buf.clear();
        let mut n = 0u64;
        for f in frames.iter().filter(|f| f.sequence_id > written_through) {
            serde_json::to_writer(&mut buf, &frame_json::frame(f)).map_err(|e| io_err(&path)(e.into()))?;
            buf.push(b'\n');
            n += 1;
        }
        if n > 0 {
            let written = tokio::task::block_in_place(|| {
                file.write_all(&buf).map_err(io_err(&path))?;
                file.sync_data().map_err(io_err(&path))?;
                if let Some(max) = cfg.max_file_size {
                    if file.metadata().map_err(io_err(&path))?.len() >= max {
                        let old = rotated(&path);
                        std::fs::rename(&path, &old).map_err(io_err(&path))?;
                        file = open_append(&path)?;
                        info!(sink = ctx.name, rotated_to = %old.display(), "file sink rotated");
                    }
                }
                Ok::<_, SinkError>(())
            });
            if let Err(e) = written {
                ctx.metrics.sink_failures.get_or_create(&label).inc();
                lock(&ctx.state).last_error = Some(e.to_string());
                return Err(e);
            }
        }
        written_through = written_through.max(last);
        sub.ack(last)?;
        ctx.metrics.sink_written.get_or_create(&label).inc_by(n);
        let mut st = lock(&ctx.state);
        st.written += n;
        st.last_error = None;
    }
}
