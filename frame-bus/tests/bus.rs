//! Frame bus behaviour: order, gaps, consumers, reopen, corruption, retention.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use frame_bus::{BusConfig, BusError, FrameBus, StartFrom, SyncMode};
use proto::{FrameEnvelope, FrameType, Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_publishers_get_ordered_gapless_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path());
    const PER: u64 = 2_000;
    let mut tasks = Vec::new();
    for p in 0..8u64 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..PER {
                let id = p * 1_000_000 + i;
                // Mix single publishes and small batches.
                if i % 10 == 0 {
                    let r = bus
                        .publish_batch(vec![
                            (FrameType::Data, payload(id, 32)),
                            (FrameType::Event, payload(id, 16)),
                        ])
                        .await
                        .unwrap();
                    assert_eq!(r.len(), 2);
                    got.push((r.first, id, 32));
                    got.push((r.last, id, 16));
                } else {
                    let s = bus.publish(FrameType::Data, payload(id, 32)).await.unwrap();
                    got.push((s, id, 32));
                }
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let got = t.await.unwrap();
        // Each publisher sees its own seqs strictly increasing.
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
        all.extend(got);
    }
    let total = all.len() as u64;
    assert_eq!(total, 8 * (PER + PER / 10));
    let seqs: HashSet<u64> = all.iter().map(|a| a.0).collect();
    assert_eq!(seqs.len() as u64, total, "no seq assigned twice");
    assert_eq!(*seqs.iter().min().unwrap(), 1);
    assert_eq!(*seqs.iter().max().unwrap(), total, "no gaps");
    assert_eq!(bus.head_seq(), total);

    // A reader sees exactly those frames, in order, with the right payloads.
    all.sort();
    let mut sub = bus.subscribe("reader", None).unwrap();
    for (seq, id, len) in &all {
        let f = sub.recv().await.unwrap();
        assert_eq!(f.sequence_id, *seq);
        assert_eq!(f.data, payload(*id, *len));
    }
    let st = bus.stats();
    assert_eq!(st.frames_published_total, total);
    assert!(st.fsyncs_total >= 1 && st.fsyncs_total <= st.batches_written_total);
    assert!(
        st.batches_written_total < total,
        "group commit packed several frames per batch"
    );
    assert_eq!(st.publish_latency.count, 8 * PER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seqs_continue_after_reopen_and_frames_keep_their_times() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = open(dir.path());
        publish_n(&bus, 0, 10, 8).await;
        bus.close();
    }
    let bus = open(dir.path());
    assert_eq!(bus.head_seq(), 10);
    assert_eq!(bus.publish(FrameType::Heartbeat, vec![]).await.unwrap(), 11);
    let mut sub = bus.subscribe("c", None).unwrap();
    let mut last_ts = 0;
    for seq in 1..=11 {
        let f = sub.recv().await.unwrap();
        assert_eq!(f.sequence_id, seq);
        assert!(f.timestamp_ns >= last_ts, "times are non-decreasing");
        last_ts = f.timestamp_ns;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_resume_after_reopen_at_their_own_speed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = open(dir.path());
        publish_n(&bus, 1, 100, 20).await;
        let mut fast = bus.subscribe("fast", None).unwrap();
        let mut slow = bus.subscribe("slow", None).unwrap();
        for _ in 0..100 {
            let f = fast.recv().await.unwrap();
            fast.ack(f.sequence_id).unwrap();
        }
        for _ in 0..30 {
            let f = slow.recv().await.unwrap();
            slow.ack(f.sequence_id).unwrap();
        }
        // Read but not acknowledged: must be redelivered.
        for _ in 0..10 {
            slow.recv().await.unwrap();
        }
        // Ack beyond head is refused; ack backwards is ignored.
        assert!(matches!(slow.ack(1_000), Err(BusError::AckBeyondHead { .. })));
        slow.ack(5).unwrap();
        // The same name cannot be subscribed twice at once.
        assert!(matches!(
            bus.subscribe("slow", None),
            Err(BusError::ConsumerBusy(_))
        ));
        bus.flush_cursors().await.unwrap();
        let st = bus.stats();
        let slow_st = st.consumers.iter().find(|c| c.name == "slow").unwrap();
        assert_eq!(
            (slow_st.cursor, slow_st.persisted_cursor, slow_st.lag),
            (30, 30, 70)
        );
        drop((fast, slow));
        bus.close();
    }
    let bus = open(dir.path());
    publish_n(&bus, 101, 20, 20).await;
    let mut fast = bus.subscribe("fast", None).unwrap();
    let mut slow = bus.subscribe("slow", None).unwrap();
    assert_eq!(
        fast.recv().await.unwrap().sequence_id,
        101,
        "fast resumes after its cursor"
    );
    for seq in 31..=120 {
        assert_eq!(
            slow.recv().await.unwrap().sequence_id,
            seq,
            "slow never skips an unacked frame"
        );
    }
    // Live tail: a frame published now wakes both.
    let b2 = bus.clone();
    let h = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        b2.publish(FrameType::Data, b"live".to_vec()).await.unwrap()
    });
    let live = slow.recv().await.unwrap();
    assert_eq!(&live.data[..], b"live");
    assert_eq!(live.sequence_id, h.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_are_persisted_without_an_explicit_flush() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = FrameBus::open(
            dir.path(),
            BusConfig {
                cursor_flush_interval: Duration::from_millis(10),
                ..config()
            },
        )
        .unwrap();
        publish_n(&bus, 0, 5, 8).await;
        let mut sub = bus.subscribe("c", None).unwrap();
        for _ in 0..3 {
            let f = sub.recv().await.unwrap();
            sub.ack(f.sequence_id).unwrap();
        }
        // Wait (bounded) until the writer persisted the ack on its own timer.
        for _ in 0..500 {
            if bus.stats().consumers[0].persisted_cursor == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(bus.stats().consumers[0].persisted_cursor, 3);
    }
    // Read the cursor back from disk directly.
    let db = raw_db(dir.path());
    let cf = db.cf_handle(frame_bus::column_families::CURSORS).unwrap();
    assert_eq!(db.get_cf(cf, b"c").unwrap().unwrap(), 3u64.to_be_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_positions_for_new_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path());
    publish_n(&bus, 0, 5, 8).await;
    let mut latest = bus.subscribe("latest", Some(StartFrom::Latest)).unwrap();
    let mut earliest = bus.subscribe("earliest", Some(StartFrom::Earliest)).unwrap();
    let s = bus.publish(FrameType::Data, b"x".to_vec()).await.unwrap();
    assert_eq!(latest.recv().await.unwrap().sequence_id, s);
    assert_eq!(earliest.recv().await.unwrap().sequence_id, 1);
    assert!(matches!(
        bus.subscribe("", None),
        Err(BusError::InvalidConsumerName(_))
    ));
    assert!(matches!(
        bus.subscribe("a\nb", None),
        Err(BusError::InvalidConsumerName(_))
    ));
    assert!(matches!(
        bus.publish_batch(vec![]).await,
        Err(BusError::EmptyBatch)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_bus_ends_waiting_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path());
    publish_n(&bus, 0, 2, 8).await;
    let mut sub = bus.subscribe("c", None).unwrap();
    let h = tokio::spawn(async move {
        let mut n = 0;
        loop {
            match sub.recv().await {
                Ok(_) => n += 1,
                Err(BusError::Closed) => return n,
                Err(e) => panic!("{e}"),
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    bus.close();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .unwrap()
            .unwrap(),
        2
    );
    assert!(matches!(
        bus.publish(FrameType::Data, vec![1]).await,
        Err(BusError::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_are_skipped_counted_and_do_not_stop_consumers() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = open(dir.path());
        publish_n(&bus, 1, 10, 40).await;
        let sub = bus.subscribe("bad-cursor", None).unwrap();
        sub.ack(4).unwrap();
        drop(sub);
        bus.flush_cursors().await.unwrap();
        bus.close();
    }
    {
        let db = raw_db(dir.path());
        let frames = db.cf_handle(frame_bus::column_families::FRAMES).unwrap();
        let key = |s: u64| frame_bus::keys::frame_key(s);
        // seq 3: one payload bit flipped, checksum left as stored -> CRC mismatch.
        let mut env = FrameEnvelope::decode(db.get_cf(frames, key(3)).unwrap().unwrap().as_slice()).unwrap();
        let mut data = env.data.to_vec();
        data[5] ^= 0x01;
        env.data = data.into();
        db.put_cf(frames, key(3), env.encode_to_vec()).unwrap();
        // seq 5: garbage bytes.
        db.put_cf(frames, key(5), [0xff, 0xff, 0xff, 0x07, 0x01]).unwrap();
        // seq 6: truncated record.
        let v = db.get_cf(frames, key(6)).unwrap().unwrap();
        db.put_cf(frames, key(6), &v[..v.len() / 2]).unwrap();
        // seq 7: a valid envelope stored under the wrong key.
        let mut env = FrameEnvelope::decode(db.get_cf(frames, key(7)).unwrap().unwrap().as_slice()).unwrap();
        env.sequence_id = 70;
        db.put_cf(frames, key(7), env.encode_to_vec()).unwrap();
        // Keys outside the format, inside and after the key range.
        db.put_cf(frames, b"frame:0000000000000000000x", b"junk").unwrap();
        db.put_cf(frames, b"frame:00000000000000000008-extra", b"junk")
            .unwrap();
        db.put_cf(frames, b"frame:zzz", b"junk").unwrap();
        // A cursor of the wrong length.
        let cursors = db.cf_handle(frame_bus::column_families::CURSORS).unwrap();
        db.put_cf(cursors, b"bad-cursor", [1, 2, 3]).unwrap();
        // A meta value of the wrong length.
        let meta = db.cf_handle(frame_bus::column_families::META).unwrap();
        db.put_cf(meta, b"deleted_through", [9]).unwrap();
    }
    let bus = open(dir.path());
    assert_eq!(bus.head_seq(), 10, "head recovered past malformed keys");
    let mut sub = bus.subscribe("reader", None).unwrap();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let f = sub.recv().await.unwrap();
        assert_eq!(f.data, payload(f.sequence_id, 40), "delivered frames are intact");
        seen.push(f.sequence_id);
    }
    assert_eq!(seen, vec![1, 2, 4, 8, 9, 10]);
    // Publishing continues after the last stored seq.
    assert_eq!(bus.publish(FrameType::Data, payload(11, 40)).await.unwrap(), 11);
    assert_eq!(sub.recv().await.unwrap().sequence_id, 11);
    let st = bus.stats();
    assert_eq!(st.corrupt_frames_total, 4);
    assert!(st.malformed_keys_total >= 2);
    assert_eq!(st.corrupt_cursors_total, 1);
    // The consumer whose cursor was unreadable replays from the oldest frame.
    let mut replay = bus.subscribe("bad-cursor", None).unwrap();
    assert_eq!(replay.recv().await.unwrap().sequence_id, 1);
}

/// Bytes flipped in an SST file (RocksDB's block checksum catches them,
/// not our CRC), in the only data block, so the seeks for the oldest and
/// the newest frame at open both hit it: the bus still opens, with the
/// right head, reports the unreadable frames and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_sst_block_at_both_ends_does_not_keep_the_bus_closed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = open(dir.path());
        publish_n(&bus, 1, 100, 40).await;
        bus.close();
    }
    {
        let db = raw_db(dir.path());
        let frames = db.cf_handle(frame_bus::column_families::FRAMES).unwrap();
        db.flush_cf(frames).unwrap();
    }
    // The frames' SST is the largest (the other families hold a few keys).
    let sst = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sst"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("an SST file after the flush");
    let mut bytes = std::fs::read(&sst).unwrap();
    assert!(bytes.len() > 2000, "{} bytes", bytes.len());
    bytes[20] ^= 0xFF;
    std::fs::write(&sst, bytes).unwrap();

    // The inspection view (`gateway wal tail`) shows each hidden seq.
    {
        let r = frame_bus::WalReader::open(dir.path()).unwrap();
        assert_eq!(r.head_seq().unwrap(), 100);
        let recs = r.read(0, 1000).unwrap();
        let corrupt: Vec<u64> = recs
            .iter()
            .filter_map(|r| match r {
                frame_bus::WalRecord::Corrupt { seq, .. } => Some(*seq),
                frame_bus::WalRecord::Frame(_) => None,
            })
            .collect();
        assert_eq!(corrupt, (1..=100).collect::<Vec<u64>>());
    }
    let bus = open(dir.path());
    assert_eq!(bus.head_seq(), 100, "head from the file metadata");
    let mut sub = bus.subscribe("reader", None).unwrap();
    assert_eq!(
        bus.publish(FrameType::Data, payload(101, 40)).await.unwrap(),
        101,
        "publishing continues after the last stored seq"
    );
    let f = sub.recv().await.unwrap();
    assert_eq!(f.sequence_id, 101, "the unreadable block is skipped");
    assert_eq!(f.data, payload(101, 40));
    assert_eq!(
        bus.stats().corrupt_frames_total,
        100,
        "each unreadable seq counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_only_what_every_consumer_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path());
    publish_n(&bus, 1, 200, 30).await;
    let a = bus.subscribe("a", None).unwrap();
    let b = bus.subscribe("b", None).unwrap();
    a.ack(150).unwrap();
    b.ack(60).unwrap();
    // Acks only in memory do not count until persisted.
    let before = bus.run_retention().unwrap();
    bus.flush_cursors().await.unwrap();
    let r = bus.run_retention().unwrap();
    assert_eq!(before.deleted_acked + r.deleted_acked, 60);
    assert_eq!(r.deleted_through, 60);
    assert_eq!((r.dropped_age, r.dropped_size), (0, 0));
    let st = bus.stats();
    assert_eq!((st.oldest_seq, st.stored_frames), (61, 140));
    assert_eq!(st.frames_deleted_acked_total, 60);
    assert_eq!(st.frames_dropped_age_total + st.frames_dropped_size_total, 0);
    // b resumes at 61; a new earliest consumer starts at the oldest stored frame.
    drop(b);
    let mut b = bus.subscribe("b", None).unwrap();
    assert_eq!(b.recv().await.unwrap().sequence_id, 61);
    let mut c = bus.subscribe("c", None).unwrap();
    assert_eq!(c.recv().await.unwrap().sequence_id, 61);
    // Unregistering a consumer releases its frames.
    drop(c);
    assert!(bus.remove_consumer("c").unwrap());
    b.ack(150).unwrap();
    bus.flush_cursors().await.unwrap();
    assert_eq!(bus.run_retention().unwrap().deleted_through, 150);

    // The floor survives a restart even when every frame is deleted.
    a.ack(200).unwrap();
    b.ack(200).unwrap();
    bus.flush_cursors().await.unwrap();
    assert_eq!(bus.run_retention().unwrap().deleted_through, 200);
    assert_eq!(bus.stats().stored_frames, 0);
    drop((a, b));
    bus.close();
    drop(bus);
    let bus = open(dir.path());
    assert_eq!(bus.head_seq(), 200);
    assert_eq!(
        bus.publish(FrameType::Data, vec![1]).await.unwrap(),
        201,
        "seqs never restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_drops_and_counts_old_frames() {
    let dir = tempfile::tempdir().unwrap();
    let bus = FrameBus::open(
        dir.path(),
        BusConfig {
            retention: retention(Some(Duration::from_secs(2)), None, Duration::from_secs(3600)),
            ..config()
        },
    )
    .unwrap();
    let sub = bus.subscribe("slow", None).unwrap();
    publish_n(&bus, 1, 100, 30).await;
    sub.ack(40).unwrap();
    bus.flush_cursors().await.unwrap();
    // Frames 1..=100 become older than max_age; 101..=150 stay young.
    tokio::time::sleep(Duration::from_secs(3)).await;
    publish_n(&bus, 101, 50, 30).await;
    let r = bus.run_retention().unwrap();
    assert_eq!(r.deleted_through, 100);
    assert_eq!(r.deleted_acked, 40);
    assert_eq!(r.dropped_age, 60);
    let st = bus.stats();
    assert_eq!(st.frames_dropped_age_total, 60);
    assert_eq!(st.oldest_seq, 101);
    // The consumer that was behind skips the dropped range and counts it.
    drop(sub);
    let mut sub = bus.subscribe("slow", None).unwrap();
    assert_eq!(sub.recv().await.unwrap().sequence_id, 101);
    let c = &bus.stats().consumers[0];
    assert_eq!(c.skipped_dropped, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_keeps_the_bus_under_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    const MAX: u64 = 4 << 20;
    let bus = FrameBus::open(
        dir.path(),
        BusConfig {
            retention: retention(None, Some(MAX), Duration::from_secs(3600)),
            write_buffer_bytes: 1 << 20,
            ..config()
        },
    )
    .unwrap();
    // ~16 MiB of incompressible frames in batches.
    let mut rng = fastrand::Rng::with_seed(7);
    for chunk in 0..64u64 {
        let batch = (0..256)
            .map(|_| {
                let mut v = vec![0u8; 1024];
                rng.fill(&mut v);
                (FrameType::Data, v)
            })
            .collect();
        let r = bus.publish_batch(batch).await.unwrap();
        assert_eq!(r.first, chunk * 256 + 1);
    }
    let before = bus.stats();
    assert!(
        before.approx_bytes > MAX,
        "test wrote more than the limit: {}",
        before.approx_bytes
    );
    let r = bus.run_retention().unwrap();
    assert!(r.dropped_size > 0);
    let st = bus.stats();
    assert!(
        st.approx_bytes <= MAX,
        "after retention {} > {}",
        st.approx_bytes,
        MAX
    );
    assert_eq!(st.frames_dropped_size_total, r.dropped_size);
    assert_eq!(st.oldest_seq, r.deleted_through + 1);
    // What remains is contiguous and readable up to head.
    let mut sub = bus.subscribe("after", None).unwrap();
    let mut expect = st.oldest_seq;
    while expect <= st.head_seq {
        let batch = tokio::time::timeout(Duration::from_secs(60), sub.recv_batch(4096))
            .await
            .expect("remaining frames delivered")
            .unwrap();
        for f in batch {
            assert_eq!(f.sequence_id, expect);
            expect += 1;
        }
    }
    assert_eq!(bus.stats().corrupt_frames_total, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sync_mode_stores_the_same_frames() {
    for mode in [SyncMode::Batch, SyncMode::Always, SyncMode::None] {
        let dir = tempfile::tempdir().unwrap();
        {
            let bus = FrameBus::open(
                dir.path(),
                BusConfig {
                    sync: mode,
                    ..config()
                },
            )
            .unwrap();
            let mut tasks = Vec::new();
            for p in 0..4u64 {
                let bus = bus.clone();
                tasks.push(tokio::spawn(
                    async move { publish_n(&bus, p * 1000, 100, 16).await },
                ));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let st = bus.stats();
            assert_eq!(st.head_seq, 400);
            match mode {
                SyncMode::None => assert_eq!(st.fsyncs_total, 0),
                SyncMode::Always => assert_eq!(st.fsyncs_total, st.batches_written_total),
                SyncMode::Batch => assert!(st.fsyncs_total > 0),
            }
        }
        let bus = open(dir.path());
        assert_eq!(bus.head_seq(), 400, "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_retention_deletes_acknowledged_frames_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let bus = FrameBus::open(
        dir.path(),
        BusConfig {
            retention: retention(
                Some(Duration::from_secs(24 * 3600)),
                None,
                Duration::from_millis(20),
            ),
            cursor_flush_interval: Duration::from_millis(10),
            ..config()
        },
    )
    .unwrap();
    let sub = bus.subscribe("sink", None).unwrap();
    publish_n(&bus, 1, 50, 16).await;
    sub.ack(30).unwrap();
    // No explicit flush or retention call: the writer's timer persists the
    // cursor and the retention thread deletes behind it (bounded wait).
    let mut oldest = 0;
    for _ in 0..1000 {
        oldest = bus.stats().oldest_seq;
        if oldest == 31 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(oldest, 31);
    let st = bus.stats();
    assert_eq!(
        (st.frames_deleted_acked_total, st.frames_dropped_age_total),
        (30, 0)
    );
}

/// `commit`: frames, state and cursor land together and survive a reopen;
/// a removed consumer loses its state with its cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_writes_frames_state_and_cursor_together() {
    use frame_bus::Commit;
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = open(dir.path());
        publish_n(&bus, 1, 10, 10).await;
        // Unknown consumers and acks beyond head are refused before anything is written.
        assert!(matches!(
            bus.commit("engine", Commit::default()).await,
            Err(BusError::UnknownConsumer(_))
        ));
        let mut sub = bus.subscribe("engine", Some(StartFrom::Earliest)).unwrap();
        assert!(matches!(
            bus.commit(
                "engine",
                Commit {
                    ack: Some(99),
                    ..Commit::default()
                }
            )
            .await,
            Err(BusError::AckBeyondHead { .. })
        ));
        for _ in 0..4 {
            sub.recv().await.unwrap();
        }
        let r = bus
            .commit(
                "engine",
                Commit {
                    ack: Some(4),
                    state: vec![
                        (b"rule/a".to_vec(), Some(b"pending".to_vec())),
                        (b"rule/b".to_vec(), Some(b"active".to_vec())),
                    ],
                    publish: vec![(FrameType::Event, b"fired b".to_vec())],
                },
            )
            .await
            .unwrap();
        assert_eq!(r, Some(frame_bus::SeqRange { first: 11, last: 11 }));
        // A later commit deletes one key and moves only the cursor.
        let r = bus
            .commit(
                "engine",
                Commit {
                    ack: Some(6),
                    state: vec![(b"rule/a".to_vec(), None)],
                    publish: vec![],
                },
            )
            .await
            .unwrap();
        assert_eq!(r, None);
        // Another consumer's state is separate.
        let _other = bus.subscribe("engine2", None).unwrap();
        bus.commit(
            "engine2",
            Commit {
                state: vec![(b"rule/a".to_vec(), Some(b"x".to_vec()))],
                ..Commit::default()
            },
        )
        .await
        .unwrap();
        let st = bus.stats();
        let c = st.consumers.iter().find(|c| c.name == "engine").unwrap();
        assert_eq!(
            (c.cursor, c.persisted_cursor),
            (6, 6),
            "commit persists the cursor at once"
        );
        drop(sub);
        bus.close();
    }
    let bus = open(dir.path());
    assert_eq!(
        bus.load_state("engine").unwrap(),
        vec![(b"rule/b".to_vec(), b"active".to_vec())]
    );
    assert_eq!(
        bus.load_state("engine2").unwrap(),
        vec![(b"rule/a".to_vec(), b"x".to_vec())]
    );
    let mut sub = bus.subscribe("engine", None).unwrap();
    assert_eq!(
        sub.recv().await.unwrap().sequence_id,
        7,
        "resumes after the committed cursor"
    );
    drop(sub);
    assert!(bus.remove_consumer("engine").unwrap());
    assert!(
        bus.load_state("engine").unwrap().is_empty(),
        "state goes with the cursor"
    );
    assert_eq!(bus.load_state("engine2").unwrap().len(), 1);
}
