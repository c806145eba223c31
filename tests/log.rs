//! The log behind the ingress: dedupe inside and after the window, restarts, group
//! commit, and 503 when storage cannot take writes. What the ingress sees of dedupe runs
//! on both backends (`embedded::`, `jetstream::`, `jetstream_cluster::`).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{minimal, Backend, TestServer};
use serde_json::json;
use switchyard::clock::ManualClock;
use switchyard::ingress::{self, Ingress};
use switchyard::log::{
    AppendOutcome, BlockingStore, GroupEntry, Log, LogError, LogRecord, WriterOptions,
};
use switchyard::log::{
    DeadLetter, Expired, LaneEntry, LaneId, RouteProgress, Stored, SubscriptionState,
};
use switchyard::store::{Durability, Store, StoreOptions};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

async fn a_duplicate_inside_the_window_is_acknowledged_but_stored_once(b: Backend) {
    let t = b.start("dedupe:\n  window: 4s\n").await;
    assert_eq!(t.post_json(&minimal("same")).await.status, 202);
    t.pass(Duration::from_secs(2)).await;
    assert_eq!(t.post_json(&minimal("same")).await.status, 202);
    assert_eq!(t.records("default").await.len(), 1);
    // Same id from another source is another event.
    let mut other = minimal("same");
    other["source"] = json!("/elsewhere");
    assert_eq!(t.post_json(&other).await.status, 202);
    assert_eq!(t.records("default").await.len(), 2);
}

async fn after_the_window_the_same_event_is_stored_again(b: Backend) {
    let t = b.start("dedupe:\n  window: 2s\n").await;
    assert_eq!(t.post_json(&minimal("again")).await.status, 202);
    t.pass(Duration::from_secs(3)).await;
    assert_eq!(t.post_json(&minimal("again")).await.status, 202);
    let records = t.records("default").await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].seq, 2);
}

async fn duplicates_inside_one_batch_are_stored_once(b: Backend) {
    let t = b.start("").await;
    let batch = json!([minimal("a"), minimal("b"), minimal("a")]);
    let reply = t
        .post(
            "/",
            &[("content-type", "application/cloudevents-batch+json")],
            serde_json::to_vec(&batch).unwrap(),
        )
        .await;
    assert_eq!(reply.status, 202, "{:?}", reply.json());
    let ids: Vec<String> = t
        .records("default")
        .await
        .iter()
        .map(|r| r.event.id().to_string())
        .collect();
    assert_eq!(ids, ["a", "b"]);
}

async fn the_dedupe_key_is_a_cel_expression(b: Backend) {
    // Tekton can send the same state twice with different ids: key on what it is about.
    let t = b.start("dedupe:\n  key: 'type + \"/\" + subject'\n").await;
    for id in ["1", "2"] {
        let mut e = minimal(id);
        e["subject"] = json!("taskrun-x");
        assert_eq!(t.post_json(&e).await.status, 202);
    }
    // No subject: the key cannot be computed, so the event is stored without dedupe.
    assert_eq!(t.post_json(&minimal("3")).await.status, 202);
    assert_eq!(t.post_json(&minimal("3")).await.status, 202);
    assert_eq!(t.records("default").await.len(), 3);
}

async fn a_zero_window_turns_dedupe_off(b: Backend) {
    let t = b.start("dedupe:\n  window: 0\n").await;
    assert_eq!(t.post_json(&minimal("x")).await.status, 202);
    assert_eq!(t.post_json(&minimal("x")).await.status, 202);
    assert_eq!(t.records("default").await.len(), 2);
}

async fn a_restart_keeps_every_acknowledged_event_and_the_dedupe_index(b: Backend) {
    let mut t = b.start("").await;
    for i in 0..50 {
        assert_eq!(t.post_json(&minimal(&format!("e{i}"))).await.status, 202);
    }
    let before = t.records("default").await;
    t.restart().await;
    assert_eq!(t.records("default").await, before);
    assert_eq!(t.server().log.head("default"), Some(50));
    // Still a duplicate after the restart.
    assert_eq!(t.post_json(&minimal("e7")).await.status, 202);
    assert_eq!(t.post_json(&minimal("new")).await.status, 202);
    let after = t.records("default").await;
    assert_eq!(after.len(), 51);
    assert_eq!(after[50].seq, 51);
}

#[tokio::test]
async fn expired_dedupe_entries_are_swept() {
    let t = TestServer::start("dedupe:\n  window: 2s\n").await;
    for i in 0..5 {
        assert_eq!(t.post_json(&minimal(&format!("s{i}"))).await.status, 202);
    }
    let log = t.server().log.clone();
    let held = async || log.stats("default").await.unwrap().dedupe_entries;
    assert_eq!(held().await, 5);
    t.clock.advance(Duration::from_secs(3));
    // The writer sweeps at most a second apart; wait a bounded time for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while held().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dedupe entries were not swept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A backend that can be told to fail, and counts the groups it is given.
struct Flaky {
    inner: Store,
    failing: AtomicBool,
    groups: AtomicUsize,
    delay: Duration,
    /// How long each progress sync takes (milliseconds), and how many there were.
    progress_delay_ms: AtomicUsize,
    progress_syncs: AtomicUsize,
    /// How long each dedupe sweep takes unless stopped, and how many began.
    sweep_hold: Duration,
    sweeps: AtomicUsize,
}

impl Flaky {
    fn new(inner: Store, delay: Duration) -> Flaky {
        Flaky {
            inner,
            failing: AtomicBool::new(false),
            groups: AtomicUsize::new(0),
            delay,
            progress_delay_ms: AtomicUsize::new(0),
            progress_syncs: AtomicUsize::new(0),
            sweep_hold: Duration::ZERO,
            sweeps: AtomicUsize::new(0),
        }
    }
}

impl BlockingStore for Flaky {
    fn write_group(
        &self,
        group: &[GroupEntry],
        now: u64,
    ) -> Result<Vec<Vec<AppendOutcome>>, LogError> {
        self.groups.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        if self.failing.load(Ordering::SeqCst) {
            return Err(LogError::from(std::io::Error::other(
                "disk full (simulated)",
            )));
        }
        BlockingStore::write_group(&self.inner, group, now)
    }
    fn read(&self, broker: &str, from: u64, limit: usize) -> Result<Vec<LogRecord>, LogError> {
        BlockingStore::read(&self.inner, broker, from, limit)
    }
    fn head(&self, broker: &str) -> Result<u64, LogError> {
        BlockingStore::head(&self.inner, broker)
    }
    fn expire_dedupe(&self, cutoff: u64, stop: &AtomicBool) -> Result<usize, LogError> {
        self.sweeps.fetch_add(1, Ordering::SeqCst);
        // A sweep that takes long (a high rate's minute of keys), unless told to stop.
        let until = std::time::Instant::now() + self.sweep_hold;
        while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
        BlockingStore::expire_dedupe(&self.inner, cutoff, stop)
    }
    fn dedupe_entries(&self, broker: &str) -> usize {
        BlockingStore::dedupe_entries(&self.inner, broker)
    }
    fn sync(&self) -> Result<(), LogError> {
        BlockingStore::sync(&self.inner)
    }
    fn sync_progress(&self) -> Result<(), LogError> {
        self.progress_syncs.fetch_add(1, Ordering::SeqCst);
        let ms = self.progress_delay_ms.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(ms as u64));
        BlockingStore::sync_progress(&self.inner)
    }
    fn router_cursor(&self, broker: &str) -> Result<u64, LogError> {
        BlockingStore::router_cursor(&self.inner, broker)
    }
    fn record_routes(
        &self,
        broker: &str,
        entries: &[(LaneId, u64)],
        progress: &RouteProgress,
    ) -> Result<(), LogError> {
        BlockingStore::record_routes(&self.inner, broker, entries, progress)
    }
    fn subscription_states(
        &self,
        broker: &str,
    ) -> Result<Vec<(String, SubscriptionState)>, LogError> {
        BlockingStore::subscription_states(&self.inner, broker)
    }
    fn drop_lanes(
        &self,
        broker: &str,
        subscription: &str,
        sinks: Option<&[String]>,
    ) -> Result<usize, LogError> {
        BlockingStore::drop_lanes(&self.inner, broker, subscription, sinks)
    }
    fn lane_entries(
        &self,
        broker: &str,
        lane: &LaneId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<LaneEntry>, LogError> {
        BlockingStore::lane_entries(&self.inner, broker, lane, from, limit)
    }
    fn finish(&self, broker: &str, lane: &LaneId, entries: &[LaneEntry]) -> Result<(), LogError> {
        BlockingStore::finish(&self.inner, broker, lane, entries)
    }
    fn park(
        &self,
        broker: &str,
        lane: &LaneId,
        seq: u64,
        due: u64,
        attempts: u32,
    ) -> Result<(), LogError> {
        BlockingStore::park(&self.inner, broker, lane, seq, due, attempts)
    }
    fn unpark_due(
        &self,
        broker: &str,
        lane: &LaneId,
        now: u64,
    ) -> Result<(usize, Option<u64>), LogError> {
        BlockingStore::unpark_due(&self.inner, broker, lane, now)
    }
    fn parked(&self, broker: &str, lane: &LaneId) -> Result<usize, LogError> {
        BlockingStore::parked(&self.inner, broker, lane)
    }
    fn next_parked(&self, broker: &str, lane: &LaneId) -> Result<Option<u64>, LogError> {
        BlockingStore::next_parked(&self.inner, broker, lane)
    }
    fn store_dead_letter(&self, letter: &DeadLetter) -> Result<u64, LogError> {
        BlockingStore::store_dead_letter(&self.inner, letter)
    }
    fn dead_letters(&self) -> Result<Vec<(u64, DeadLetter)>, LogError> {
        BlockingStore::dead_letters(&self.inner)
    }
    fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, LogError> {
        BlockingStore::dead_letter(&self.inner, id)
    }
    fn delete_dead_letter(&self, id: u64) -> Result<bool, LogError> {
        BlockingStore::delete_dead_letter(&self.inner, id)
    }
    fn expire_events(
        &self,
        broker: &str,
        cutoff: u64,
        free_bytes: u64,
        limit: usize,
    ) -> Result<Expired, LogError> {
        BlockingStore::expire_events(&self.inner, broker, cutoff, free_bytes, limit)
    }
    fn stored(&self, broker: &str) -> Result<Stored, LogError> {
        BlockingStore::stored(&self.inner, broker)
    }
    fn disk_bytes(&self) -> Result<u64, LogError> {
        BlockingStore::disk_bytes(&self.inner)
    }
    fn expire_dead_letters(&self, max_count: u64, cutoff: u64) -> Result<usize, LogError> {
        BlockingStore::expire_dead_letters(&self.inner, max_count, cutoff)
    }
    fn seq_at_time(&self, broker: &str, unix_nanos: u64) -> Result<u64, LogError> {
        BlockingStore::seq_at_time(&self.inner, broker, unix_nanos)
    }
}

async fn flaky_ingress(delay: Duration) -> (Arc<Flaky>, std::net::SocketAddr, tempfile::TempDir) {
    let (backend, addr, dir, _) = flaky_ingress_and_log(delay).await;
    (backend, addr, dir)
}

async fn flaky_ingress_and_log(
    delay: Duration,
) -> (Arc<Flaky>, std::net::SocketAddr, tempfile::TempDir, Log) {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        path: dir.path().join("data"),
        durability: Durability::Fsync,
        cache_capacity: 8 << 20,
        dedupe_window_nanos: 0,
    };
    let brokers = vec!["default".to_string()];
    let backend = Arc::new(Flaky::new(Store::open(&options, &brokers).unwrap(), delay));
    let clock = Arc::new(ManualClock::new(common::T0));
    let options = WriterOptions {
        dedupe_window: Duration::ZERO,
        ..WriterOptions::default()
    };
    let log = Log::start(
        backend.clone(),
        &brokers,
        clock.clone(),
        options,
        CancellationToken::new(),
        &TaskTracker::new(),
    )
    .unwrap();
    let config = switchyard::config::from_yaml(None, "", &Default::default())
        .unwrap()
        .ingress;
    let ingress = Arc::new(Ingress::new(
        log.clone(),
        config,
        None,
        switchyard::metrics::Metrics::new(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ingress::serve(
        ingress,
        listener,
        CancellationToken::new(),
        Duration::from_secs(1),
    ));
    (backend, addr, dir, log)
}

async fn post_to(addr: std::net::SocketAddr, id: &str) -> (u16, Option<String>) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = http::Request::post(format!("http://{addr}/"))
        .header("content-type", "application/cloudevents+json")
        .body(http_body_util::Full::new(Bytes::from(
            serde_json::to_vec(&minimal(id)).unwrap(),
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (resp.status().as_u16(), retry_after)
}

#[tokio::test]
async fn the_router_is_handed_each_stored_event_as_the_log_holds_it() {
    let (backend, addr, _dir, log) = flaky_ingress_and_log(Duration::ZERO).await;
    for id in ["f1", "f2", "f3"] {
        assert_eq!(post_to(addr, id).await.0, 202);
    }
    // What the router takes without reading the log is what the log holds.
    let fresh: Vec<_> = log
        .take_fresh("default", 1, 10)
        .iter()
        .map(|r| (**r).clone())
        .collect();
    let stored = backend.read("default", 1, 10).unwrap();
    assert_eq!(stored.len(), 3);
    assert_eq!(fresh, stored);
    // Taken once: a router that must go back (a failed step) reads the log.
    assert!(log.take_fresh("default", 1, 10).is_empty());
    assert_eq!(post_to(addr, "f4").await.0, 202);
    assert_eq!(log.take_fresh("default", 4, 10).len(), 1);
}

#[tokio::test]
async fn when_storage_fails_ingress_answers_503_and_resumes_when_it_recovers() {
    let (backend, addr, _dir, log) = flaky_ingress_and_log(Duration::ZERO).await;
    assert_eq!(post_to(addr, "before").await.0, 202);
    assert_eq!(log.refusing_appends().await, None);
    backend.failing.store(true, Ordering::SeqCst);
    let (status, retry_after) = post_to(addr, "during").await;
    assert_eq!(status, 503);
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Readiness reports the failure (GET /readyz answers 503 with it) until a write works.
    let failure = log
        .refusing_appends()
        .await
        .expect("the failure is reported");
    assert!(failure.contains("disk"), "{failure}");
    backend.failing.store(false, Ordering::SeqCst);
    assert_eq!(post_to(addr, "after").await.0, 202);
    assert_eq!(log.refusing_appends().await, None);
    let ids: Vec<String> = backend
        .read("default", 1, 10)
        .unwrap()
        .iter()
        .map(|r| r.event.id().to_string())
        .collect();
    assert_eq!(ids, ["before", "after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_a_group_commit() {
    // A slow disk (20 ms a group) makes requests queue up behind each write.
    let (backend, addr, _dir) = flaky_ingress(Duration::from_millis(20)).await;
    let sends: Vec<_> = (0..64)
        .map(|i| tokio::spawn(async move { post_to(addr, &format!("c{i}")).await }))
        .collect();
    for s in sends {
        assert_eq!(s.await.unwrap().0, 202);
    }
    let groups = backend.groups.load(Ordering::SeqCst);
    assert!(groups < 32, "64 requests took {groups} groups");
    assert_eq!(backend.read("default", 1, 100).unwrap().len(), 64);
}

#[tokio::test]
async fn the_head_watch_sees_appends() {
    let t = TestServer::start("").await;
    let mut head = t.server().log.watch("default").unwrap();
    assert_eq!(*head.borrow_and_update(), 0);
    assert_eq!(t.post_json(&minimal("w1")).await.status, 202);
    tokio::time::timeout(Duration::from_secs(5), head.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*head.borrow(), 1);
    assert!(t.server().log.watch("nope").is_none());
}

#[tokio::test]
async fn relaxed_durability_stores_and_keeps_events_across_a_clean_restart() {
    let mut t = TestServer::start_with(|c| c.storage.durability = Durability::Relaxed).await;
    for i in 0..20 {
        assert_eq!(t.post_json(&minimal(&format!("r{i}"))).await.status, 202);
    }
    let stop = t.server.take().unwrap();
    stop.stop().await;
    let options = StoreOptions {
        path: t.dir.path().join("data"),
        durability: Durability::Relaxed,
        cache_capacity: 8 << 20,
        dedupe_window_nanos: 0,
    };
    let log = Store::open(&options, &["default".to_string()]).unwrap();
    assert_eq!(log.read("default", 1, 100).unwrap().len(), 20);
}

#[test]
fn finishing_an_entry_keeps_it_when_a_replay_put_it_back_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        path: dir.path().join("data"),
        durability: Durability::Relaxed,
        cache_capacity: 8 << 20,
        dedupe_window_nanos: 0,
    };
    let log = Store::open(&options, &["default".to_string()]).unwrap();
    let lane = LaneId::new("s", "http://sink/");
    log.record_routes(
        "default",
        &[(lane.clone(), 1), (lane.clone(), 2)],
        &RouteProgress::Cursor(2),
    )
    .unwrap();
    // A deliverer takes both entries...
    let taken = log.lane_entries("default", &lane, 0, 10).unwrap();
    // ...a replay puts 2 back before the deliverer commits...
    log.requeue("default", &lane, 2).unwrap();
    log.finish("default", &lane, &taken).unwrap();
    // ...so 1 is finished and 2 is pending again.
    assert_eq!(log.lane_pending("default", &lane, 0, 10).unwrap(), [2]);
    let again = log.lane_entries("default", &lane, 0, 10).unwrap();
    log.finish("default", &lane, &again).unwrap();
    assert!(log
        .lane_pending("default", &lane, 0, 10)
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_synced_back_to_back_when_a_sync_outlasts_the_interval() {
    let (backend, _addr, _dir, _log) = flaky_ingress_and_log(Duration::ZERO).await;
    // Each sync takes 250 ms, longer than the 100 ms interval: ticks fall while one runs.
    backend.progress_delay_ms.store(250, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = backend.progress_syncs.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let syncs = backend.progress_syncs.load(Ordering::SeqCst) - before;
    // Back to back that is about six in 1.5 s. An idle writer that skipped the ticks
    // falling during a sync never synced again: lane progress went unsaved, and a
    // crash resent everything delivered since.
    assert!(syncs >= 4, "{syncs} progress syncs in 1.5 s");
}

/// A log on `dir` with a one-minute dedupe window, for the sweep tests.
fn open_keyed(dir: &std::path::Path) -> Store {
    let options = common::sled_options(dir, Durability::Fsync, 60_000_000_000);
    // A dropped store's sled threads may hold the file lock a moment longer on a busy
    // machine: a reopen waits for it, briefly.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(&options, &["default".to_string()]) {
            Ok(store) => return store,
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Writes one keyed record per key to `default` at `now`; returns each outcome.
fn keyed(log: &Store, keys: &[&str], now: u64) -> Vec<AppendOutcome> {
    keyed_with_data(log, keys, now, None)
}

/// [`keyed`], each event carrying `data`.
fn keyed_with_data(
    log: &Store,
    keys: &[&str],
    now: u64,
    data: Option<switchyard::event::Data>,
) -> Vec<AppendOutcome> {
    let event = switchyard::event::Event::new(
        vec![
            (
                "specversion".into(),
                switchyard::event::AttrValue::String("1.0".into()),
            ),
            (
                "id".into(),
                switchyard::event::AttrValue::String("x".into()),
            ),
            (
                "source".into(),
                switchyard::event::AttrValue::UriRef("/s".into()),
            ),
            (
                "type".into(),
                switchyard::event::AttrValue::String("t".into()),
            ),
        ],
        data,
    )
    .unwrap();
    let appends = keys
        .iter()
        .map(|k| switchyard::log::Append {
            record: Bytes::from(switchyard::store::events::record::encode(
                "default", now, 0, &event,
            )),
            dedupe_key: Some(k.as_bytes().to_vec()),
            decoded: None,
        })
        .collect();
    let group = [GroupEntry {
        broker: Arc::from("default"),
        appends,
    }];
    log.write_group(&group, now).unwrap().remove(0)
}

#[test]
fn expiry_drops_keys_by_arrival_and_keeps_a_key_stored_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_keyed(dir.path());
    let s = 1_000_000_000u64;
    let t0 = common::T0;
    keyed(&log, &["a", "b", "c"], t0);
    keyed(&log, &["d"], t0 + 10 * s);
    // "a" comes back after its window: stored again (seq 5), first seen at t0 + 70 s.
    assert_eq!(
        keyed(&log, &["a"], t0 + 70 * s),
        vec![AppendOutcome::Stored(5)]
    );
    assert_eq!(log.dedupe_entries("default"), 5);
    // Keys go a partition (an eighth of the one-minute window) at a time: those first
    // seen at t0 once the cutoff passes t0 + 7.5 s.
    assert_eq!(log.expire_dedupe(t0 + 5 * s, &go()).unwrap(), 0);
    assert_eq!(log.expire_dedupe(t0 + 8 * s, &go()).unwrap(), 3);
    assert_eq!(log.dedupe_entries("default"), 2);
    // "a" was stored again since and is still a duplicate; "b" is not any more.
    assert_eq!(
        keyed(&log, &["a", "b"], t0 + 71 * s),
        vec![AppendOutcome::Duplicate(5), AppendOutcome::Stored(6)]
    );
    // A reopen loads only keys that can still suppress something: those first seen
    // within a window of the newest record ("d", at t0 + 10 s, cannot).
    drop(log);
    let log = open_keyed(dir.path());
    assert_eq!(log.dedupe_entries("default"), 2);
    assert_eq!(
        keyed(&log, &["a", "b", "d"], t0 + 72 * s),
        vec![
            AppendOutcome::Duplicate(5),
            AppendOutcome::Duplicate(6),
            AppendOutcome::Stored(7)
        ]
    );
}

/// A sweep's stop flag, not set.
fn go() -> AtomicBool {
    AtomicBool::new(false)
}

#[test]
fn keys_of_closed_segments_come_back_after_a_reopen_with_or_without_their_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_keyed(dir.path());
    let s = 1_000_000_000u64;
    let t0 = common::T0;
    // 1 MiB events: the first segment (16 MiB) closes after about sixteen.
    let data = || {
        Some(switchyard::event::Data::Binary(Bytes::from(vec![
            7u8;
            1 << 20
        ])))
    };
    for i in 0..20 {
        keyed_with_data(&log, &[&format!("k{i}")], t0 + i * s, data());
    }
    drop(log);
    let segments = dir.path().join("data/segments/default");
    let sidecars = || {
        let mut names: Vec<String> = std::fs::read_dir(&segments)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".keys"))
            .collect();
        names.sort();
        names
    };
    // The closed segment has its sidecar; the one being written has none yet.
    assert_eq!(sidecars(), ["00000000000000000001.keys"]);
    for round in ["with the sidecar", "without it"] {
        let log = open_keyed(dir.path());
        assert_eq!(log.dedupe_entries("default"), 20, "{round}");
        // k0 is in the closed segment, k19 in the active one.
        assert_eq!(
            keyed(&log, &["k0", "k19"], t0 + 30 * s),
            vec![AppendOutcome::Duplicate(1), AppendOutcome::Duplicate(20)],
            "{round}"
        );
        drop(log);
        std::fs::remove_file(segments.join("00000000000000000001.keys")).unwrap();
    }
    // Without its sidecar the segment was read, and its sidecar written again.
    let log = open_keyed(dir.path());
    assert_eq!(sidecars(), ["00000000000000000001.keys"]);
    assert_eq!(
        keyed(&log, &["k3"], t0 + 31 * s),
        vec![AppendOutcome::Duplicate(4)]
    );
    // Retention takes the first segment, and its sidecar with it.
    log.expire_events("default", t0 + 18 * s, 0, 100).unwrap();
    assert_eq!(sidecars(), Vec::<String>::new());
    assert_eq!(
        keyed(&log, &["k3"], t0 + 32 * s),
        vec![AppendOutcome::Stored(21)]
    );
}

#[tokio::test]
async fn shutdown_stops_a_dedupe_sweep_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let brokers = vec!["default".to_string()];
    let inner = Store::open(
        &common::sled_options(dir.path(), Durability::Fsync, 10_000_000_000),
        &brokers,
    )
    .unwrap();
    let backend = Arc::new(Flaky {
        // Each sweep would take a minute if nothing stopped it.
        sweep_hold: Duration::from_secs(60),
        ..Flaky::new(inner, Duration::ZERO)
    });
    let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
    let options = WriterOptions {
        dedupe_window: Duration::from_secs(10),
        ..WriterOptions::default()
    };
    let clock = Arc::new(ManualClock::new(common::T0));
    let _log = Log::start(
        backend.clone(),
        &brokers,
        clock,
        options,
        shutdown.clone(),
        &tracker,
    )
    .unwrap();
    // The first sweep starts at once.
    common::wait_until("a sweep to start", async || {
        backend.sweeps.load(Ordering::SeqCst) > 0
    })
    .await;
    shutdown.cancel();
    tracker.close();
    let stopped = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
    assert!(stopped.is_ok(), "the writer waited for the whole sweep");
}

#[test]
fn a_key_whose_record_retention_deleted_is_stored_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_keyed(dir.path());
    let s = 1_000_000_000u64;
    let t0 = common::T0;
    keyed(&log, &["a", "b"], t0);
    keyed(&log, &["c"], t0 + 20 * s);
    // Retention takes the two oldest records, inside the dedupe window: the event is
    // not in the log any more, so it is not a duplicate of anything.
    let expired = log.expire_events("default", t0 + s, 0, 100).unwrap();
    assert_eq!(expired.by_age, 2);
    assert_eq!(
        keyed(&log, &["a", "c"], t0 + 21 * s),
        vec![AppendOutcome::Stored(4), AppendOutcome::Duplicate(3)]
    );
}

#[test]
fn a_segment_missing_from_the_middle_of_the_log_is_reported_lost() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_keyed(dir.path());
    let data = || {
        Some(switchyard::event::Data::Binary(Bytes::from(vec![
            7u8;
            1 << 20
        ])))
    };
    // 1 MiB events: three segments of about sixteen.
    for i in 0..40 {
        keyed_with_data(&log, &[&format!("k{i}")], common::T0, data());
    }
    drop(log);
    let segments = dir.path().join("data/segments/default");
    let mut firsts: Vec<u64> = std::fs::read_dir(&segments)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().unwrap().parse().ok())
        .collect();
    firsts.sort();
    assert_eq!(firsts.len(), 3, "{firsts:?}");
    std::fs::remove_file(segments.join(format!("{:020}", firsts[1]))).unwrap();

    let log = open_keyed(dir.path());
    assert_eq!(log.damage("default").lost, firsts[2] - firsts[1]);
    // The rest reads back, around the hole.
    let seqs: Vec<u64> = log
        .read("default", 1, 100)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    let expected: Vec<u64> = (1..firsts[1]).chain(firsts[2]..=40).collect();
    assert_eq!(seqs, expected);
}

common::backends! {
    a_duplicate_inside_the_window_is_acknowledged_but_stored_once,
    after_the_window_the_same_event_is_stored_again,
    duplicates_inside_one_batch_are_stored_once,
    the_dedupe_key_is_a_cel_expression,
    a_zero_window_turns_dedupe_off,
    a_restart_keeps_every_acknowledged_event_and_the_dedupe_index,
}
