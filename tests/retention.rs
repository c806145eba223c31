//! Retention and the log's own counts: `maxAge` and `maxBytes` delete the oldest
//! events, the disk space of deleted events is used again, lanes skip events deleted
//! under them, the dead-letter store keeps to its bounds, and the counts metrics read
//! (stored events and bytes, lane depth, parked, dead letters) stay right across writes
//! and a reopen.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::sink::{Answer, TestSink};
use common::{eventually, minimal, subscription, Backend, TestServer};
use switchyard::event::{AttrValue, Data, Event};
use switchyard::log::{
    record, Append, BlockingStore, DeadLetter, GroupEntry, LaneId, RouteProgress,
};
use switchyard::store::{Durability, Store};

fn open(dir: &std::path::Path) -> Store {
    let options = common::sled_options(dir, Durability::Relaxed, 0);
    // A log just dropped may still hold sled's file lock for a moment: its background
    // flusher (relaxed durability) ends on its own schedule.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(&options, &["default".to_string(), "other".to_string()]) {
            Ok(log) => return log,
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open the log: {e}"),
        }
    }
}

fn event(id: &str, data_len: usize) -> Event {
    Event::new(
        vec![
            ("specversion".into(), AttrValue::String("1.0".into())),
            ("id".into(), AttrValue::String(id.into())),
            ("source".into(), AttrValue::UriRef("/retention".into())),
            ("type".into(), AttrValue::String("t".into())),
        ],
        Some(Data::Text("x".repeat(data_len))),
    )
    .unwrap()
}

/// Appends `n` events of about `data_len` bytes to `broker`, arriving at `now`;
/// returns the record bytes written.
fn append(log: &Store, broker: &str, n: usize, data_len: usize, now: u64) -> u64 {
    let appends: Vec<Append> = (0..n)
        .map(|i| Append {
            record: Bytes::from(record::encode(
                broker,
                now,
                0,
                &event(&format!("e{i}"), data_len),
            )),
            dedupe_key: None,
            decoded: None,
        })
        .collect();
    let bytes = appends.iter().map(|a| a.record.len() as u64).sum();
    log.write_group(
        &[GroupEntry {
            broker: Arc::from(broker),
            appends,
        }],
        now,
    )
    .unwrap();
    bytes
}

#[test]
fn stored_counts_follow_appends_and_deletions_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let written = {
        let log = open(dir.path());
        let a = append(&log, "default", 10, 100, 1_000);
        let b = append(&log, "default", 5, 100, 2_000);
        append(&log, "other", 2, 10, 2_000);
        let stored = log.stored("default").unwrap();
        assert_eq!((stored.events, stored.bytes), (15, a + b));
        // The ten that arrived before 1 500 go by age; then one more, to free a byte
        // more than those ten held.
        let e = log.expire_events("default", 1_500, a + 1, 100).unwrap();
        assert_eq!((e.by_age, e.by_size), (10, 1));
        assert_eq!(e.bytes, a + b / 5);
        log.sync().unwrap();
        b - b / 5
    };
    let log = open(dir.path());
    let stored = log.stored("default").unwrap();
    assert_eq!((stored.events, stored.bytes), (4, written));
    assert_eq!(log.stored("other").unwrap().events, 2);
    assert_eq!(log.oldest_arrival("default").unwrap(), Some(2_000));
}

#[test]
fn lane_depth_and_parked_counts_follow_every_change_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let lane = LaneId::new("s", "http://sink/");
    let other = LaneId::new("s", "http://other/");
    {
        let log = open(dir.path());
        let entries: Vec<(LaneId, u64)> = (1..=5).map(|s| (lane.clone(), s)).collect();
        log.record_routes("default", &entries, &RouteProgress::Cursor(5))
            .unwrap();
        log.record_routes("default", &[(other.clone(), 1)], &RouteProgress::Cursor(5))
            .unwrap();
        // Routing the same decisions again (after a crash) adds nothing.
        log.record_routes("default", &entries, &RouteProgress::Cursor(5))
            .unwrap();
        assert_eq!(log.lane_depth("default", &lane).unwrap(), 5);
        // Two park: still waiting, so the depth holds.
        log.park("default", &lane, 1, 100, 3).unwrap();
        log.park("default", &lane, 2, 200, 3).unwrap();
        assert_eq!(log.lane_depth("default", &lane).unwrap(), 5);
        assert_eq!(log.parked("default", &lane).unwrap(), 2);
        assert_eq!(log.next_parked("default", &lane).unwrap(), Some(1));
        // Two finish.
        let taken = log.lane_entries("default", &lane, 0, 2).unwrap();
        assert_eq!(taken.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
        log.finish("default", &lane, &taken).unwrap();
        assert_eq!(log.lane_depth("default", &lane).unwrap(), 3);
        // A replay puts a finished one back, and a parked one (it merges when due).
        log.requeue("default", &lane, 3).unwrap();
        log.requeue("default", &lane, 1).unwrap();
        assert_eq!(log.lane_depth("default", &lane).unwrap(), 5);
        let (back, _) = log.unpark_due("default", &lane, 150).unwrap();
        assert_eq!(back, 1);
        assert_eq!(log.lane_depth("default", &lane).unwrap(), 4);
        assert_eq!(log.parked("default", &lane).unwrap(), 1);
        log.sync().unwrap();
    }
    let log = open(dir.path());
    assert_eq!(log.lane_depth("default", &lane).unwrap(), 4);
    assert_eq!(log.parked("default", &lane).unwrap(), 1);
    assert_eq!(log.lane_depth("default", &other).unwrap(), 1);
    // Removing the sink drops its pending and parked entries, and its counts.
    let dropped = log
        .drop_lanes("default", "s", Some(&["http://sink/".to_string()]))
        .unwrap();
    assert_eq!(dropped, 4);
    assert_eq!(log.lane_depth("default", &lane).unwrap(), 0);
    assert_eq!(log.parked("default", &lane).unwrap(), 0);
    assert_eq!(log.next_parked("default", &lane).unwrap(), None);
    assert_eq!(log.lane_depth("default", &other).unwrap(), 1);
}

fn letter(time: u64) -> DeadLetter {
    DeadLetter {
        broker: "default".into(),
        subscription: "s".into(),
        sink: "http://sink/".into(),
        seq: 1,
        attempts: 1,
        last_status: Some(400),
        last_error: "400".into(),
        time_unix_nanos: time,
        record: String::new(),
        dead_letter_sink_delivered: false,
    }
}

#[test]
fn the_dead_letter_store_keeps_to_its_count_and_age_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let ids: Vec<u64> = (1..=10)
        .map(|t| log.store_dead_letter(&letter(t * 100)).unwrap())
        .collect();
    assert_eq!(log.dead_letter_count().unwrap(), 10);
    // At most 6: the four oldest go.
    assert_eq!(log.expire_dead_letters(6, 0).unwrap(), 4);
    let kept: Vec<u64> = log
        .dead_letters()
        .unwrap()
        .iter()
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(kept, ids[4..]);
    // Older than 750: letters at 500, 600 and 700 go.
    assert_eq!(log.expire_dead_letters(100, 750).unwrap(), 3);
    assert_eq!(log.dead_letter_count().unwrap(), 3);
    assert!(log.delete_dead_letter(ids[9]).unwrap());
    assert_eq!(log.dead_letter_count().unwrap(), 2);
    drop(log);
    assert_eq!(open(dir.path()).dead_letter_count().unwrap(), 2);
}

/// Bytes the directory takes on disk (allocated blocks).
fn disk_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in walk(dir) {
        total += entry.blocks() * 512;
    }
    total
}

fn walk(dir: &std::path::Path) -> Vec<std::fs::Metadata> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            out.extend(walk(&entry.path()));
        }
        out.push(meta);
    }
    out
}

#[test]
fn the_space_of_deleted_events_is_used_again_so_the_disk_stays_bounded() {
    // Five rounds of 8 MiB of 2 KiB events, each deleted by retention before the next:
    // without reuse the files would hold 40 MiB; sled reuses the freed segments, so
    // the disk stays near what one round takes.
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut sizes = Vec::new();
    let mut logical = 0;
    for round in 0..5u64 {
        for _ in 0..8 {
            logical = append(&log, "default", 512, 2000, round + 1);
        }
        log.sync().unwrap();
        sizes.push(disk_usage(dir.path()));
        loop {
            let e = log.expire_events("default", u64::MAX, 0, 1000).unwrap();
            if e.by_age == 0 {
                break;
            }
        }
        log.sync().unwrap();
    }
    let one_round = logical * 8;
    eprintln!(
        "disk after each round of {} KiB written: {:?} KiB",
        one_round >> 10,
        sizes.iter().map(|s| s >> 10).collect::<Vec<_>>()
    );
    let last = *sizes.last().unwrap();
    assert!(
        last < 2 * sizes[0],
        "the disk grew from {} to {} KiB over 5 rounds",
        sizes[0] >> 10,
        last >> 10
    );
    assert!(
        last < 4 * one_round,
        "{} KiB for {} KiB",
        last >> 10,
        one_round >> 10
    );
}

async fn max_age_deletes_events_older_than_the_maximum_age(b: Backend) {
    let mut t = b.start("").await;
    t.restart_with(|c| c.storage.retention_max_age = Duration::from_secs(2))
        .await;
    for i in 0..3 {
        assert_eq!(t.post_json(&minimal(&format!("old{i}"))).await.status, 202);
    }
    t.pass(Duration::from_secs(1)).await;
    assert_eq!(t.post_json(&minimal("young")).await.status, 202);
    t.pass(Duration::from_millis(1500)).await;
    // Retention looks every second: the three old ones go, the young one stays.
    eventually("only the young event to stay", async || {
        let records = t.records("default").await;
        (records.len() == 1 && records[0].event.id() == "young").then_some(())
    })
    .await;
    // Sequence numbers keep counting after the deletion.
    assert_eq!(t.post_json(&minimal("new")).await.status, 202);
    let records = t.records("default").await;
    assert_eq!(records.last().unwrap().seq, 5);
}

#[tokio::test]
async fn max_bytes_deletes_the_oldest_events_and_counts_them() {
    let mut t = TestServer::start("").await;
    t.restart_with(|c| {
        c.storage.retention_max_age = Duration::ZERO;
        c.storage.retention_max_bytes = 4096;
    })
    .await;
    let mut big = minimal("first");
    big["data"] = "y".repeat(3000).into();
    assert_eq!(t.post_json(&big).await.status, 202);
    for i in 0..20 {
        assert_eq!(t.post_json(&minimal(&format!("s{i}"))).await.status, 202);
    }
    let log = t.server().log.clone();
    eventually("the log to shrink under maxBytes", async || {
        (log.stats("default").await.unwrap().stored.bytes <= 4096).then_some(())
    })
    .await;
    let records = t.records("default").await;
    // The big first event went, and only as many after it as needed; the newest stayed.
    assert_eq!(records.last().unwrap().event.id(), "s19");
    assert!(records.iter().all(|r| r.event.id() != "first"));
    let first_kept = records.first().unwrap().seq;
    assert!(first_kept <= 3, "kept from seq {first_kept}");
    assert_eq!(records.len() as u64, 21 - first_kept + 1);
    // Retention counts what it deleted once the deletion returns: right after the
    // stored bytes move, not necessarily before this test looks.
    let expected = format!(" {}", first_kept - 1);
    eventually("the deletions to be counted", async || {
        let metrics = t.server().metrics.render();
        let deleted = metrics.lines().find(|l| {
            l.starts_with("switchyard_log_retention_deleted_events_total")
                && l.contains(r#"reason="max_bytes""#)
        });
        deleted
            .is_some_and(|l| l.ends_with(&expected))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_lane_skips_events_deleted_while_it_waited_and_counts_them() {
    // An ordered lane whose sink holds the first delivery for a second: meanwhile the
    // events behind it age out of the log.
    let sink = TestSink::start(
        vec![Answer::status(200).after(Duration::from_millis(1500))],
        Answer::status(200),
    )
    .await;
    let subs = subscription(
        "slow",
        &format!(
            "  sinks:\n    - uri: {}\n  delivery: {{ ordering: ordered }}\n",
            sink.url("/")
        ),
    );
    let mut t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    t.restart_with(|c| c.storage.retention_max_age = Duration::from_secs(60))
        .await;
    for i in 0..3 {
        assert_eq!(t.post_json(&minimal(&format!("old{i}"))).await.status, 202);
    }
    sink.wait_for(1, Duration::from_secs(10)).await;
    t.clock.advance(Duration::from_secs(61));
    assert_eq!(t.post_json(&minimal("young")).await.status, 202);
    let log = t.server().log.clone();
    eventually("old1 and old2 to be deleted", async || {
        (log.stats("default").await.unwrap().stored.events == 1).then_some(())
    })
    .await;
    // old0 was already being sent; old1 and old2 are gone; young is delivered.
    let got = sink.wait_for(2, Duration::from_secs(10)).await;
    let ids: Vec<&str> = got.iter().filter_map(|r| r.header("ce-id")).collect();
    assert_eq!(ids, ["old0", "young"]);
    let stats = t
        .server()
        .delivery
        .stats("default", &LaneId::new("slow", sink.url("/")));
    let counts = eventually("the lane to count its outcomes", async || {
        let gone = stats.gone.load(std::sync::atomic::Ordering::Relaxed);
        let delivered = stats.delivered.load(std::sync::atomic::Ordering::Relaxed);
        (gone + delivered == 4).then_some((gone, delivered))
    })
    .await;
    assert_eq!(counts, (2, 2), "(gone, delivered)");
}

async fn the_dead_letter_store_bound_applies_in_a_running_broker(b: Backend) {
    let sink = TestSink::start(vec![], Answer::status(400)).await;
    // Ordered, so that letters are stored in sequence order.
    let subs = subscription(
        "bad",
        &format!(
            "  sinks:\n    - uri: {}\n  delivery: {{ ordering: ordered }}\n",
            sink.url("/")
        ),
    );
    let mut t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    t.restart_with(|c| c.storage.dead_letters_max_count = 2)
        .await;
    for i in 0..5 {
        assert_eq!(t.post_json(&minimal(&format!("d{i}"))).await.status, 202);
    }
    sink.wait_for(5, Duration::from_secs(10)).await;
    let log = t.server().log.clone();
    // Every letter is stored (the newest is there) and the oldest three were deleted.
    let kept = eventually("the store to keep its bound", async || {
        let letters = log.dead_letters().list().await.unwrap();
        // The embedded store counts what it deletes; a JetStream stream discards its
        // oldest by its own limit, uncounted.
        let deleted = b != Backend::Embedded
            || t.server()
                .metrics
                .render()
                .contains("switchyard_deadletter_retention_deleted_total 3");
        (deleted && letters.last().is_some_and(|(_, l)| l.seq == 5)).then_some(letters)
    })
    .await;
    let seqs: Vec<u64> = kept.iter().map(|(_, l)| l.seq).collect();
    assert_eq!(seqs, [4, 5]);
}

common::backends! {
    max_age_deletes_events_older_than_the_maximum_age,
    the_dead_letter_store_bound_applies_in_a_running_broker,
}
