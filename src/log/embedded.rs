//! The embedded backend: [`Store`] behind the log's handles. Appends go to the
//! group-commit writer (`writer.rs`, a thread of its own); retention runs beside it
//! (`retention.rs`). Lane operations take the lane store's lock and touch memory, so
//! they are answered in place; a read of a few records is served in place too (they
//! are recent, in the OS page cache, and the read takes less than a hop to another
//! thread would); longer reads, searches by time and dead-letter writes go to the
//! blocking pool.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    fresh, retention, writer, Append, AppendOutcome, BoxFuture, BrokerStats, Damage, DeadLetter,
    DeadLetterBackend, EventBackend, Expired, GroupEntry, LaneBackend, LaneDepth, LaneEntry,
    LaneId, Log, LogError, LogRecord, LogResult, RouteProgress, Stored, SubscriptionState,
};
use crate::clock::SharedClock;
use crate::store::Store;

/// Reads of at most this many records are served in place.
const IN_PLACE_READ: usize = 16;

/// The embedded store as the writer, retention and the handles call it: blocking calls
/// (they do disk I/O, or take a lock and touch memory). [`Store`] provides it; tests wrap
/// a store to slow or fail its writes.
pub trait BlockingStore: Send + Sync + 'static {
    /// Writes one group: for each entry, drops duplicates (dedupe key seen at or after
    /// `now - window`), assigns sequence numbers, writes the records and dedupe entries
    /// atomically per broker, then makes everything durable as configured. Returns each
    /// entry's outcomes in order.
    fn write_group(
        &self,
        group: &[GroupEntry],
        now_unix_nanos: u64,
    ) -> Result<Vec<Vec<AppendOutcome>>, LogError>;

    /// Records from `from` (inclusive) on, at most `limit`.
    fn read(&self, broker: &str, from: u64, limit: usize) -> Result<Vec<LogRecord>, LogError>;

    /// The highest sequence number stored for `broker` (0 when empty).
    fn head(&self, broker: &str) -> Result<u64, LogError>;

    /// Removes dedupe entries first seen before `cutoff_unix_nanos`; returns how many.
    /// Runs beside appends: an entry stored again meanwhile is kept. Returns early,
    /// between two keys, once `stop` is set (at shutdown); the next sweep goes on from
    /// where this one stopped.
    fn expire_dedupe(
        &self,
        cutoff_unix_nanos: u64,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<usize, LogError>;

    /// Number of dedupe entries the broker's index holds.
    fn dedupe_entries(&self, broker: &str) -> usize;

    /// Makes everything written durable.
    fn sync(&self) -> Result<(), LogError>;

    /// Makes routing and delivery progress durable if any was written since the last
    /// sync (the writer calls it every 100 ms; routers and deliverers never flush).
    fn sync_progress(&self) -> Result<(), LogError>;

    /// The highest sequence number the router has decided (0 before any).
    fn router_cursor(&self, broker: &str) -> Result<u64, LogError>;

    /// Records routing decisions: every `(lane, seq)` entry, then the progress they
    /// complete (the router's cursor, or one subscription's backfill state), so that a
    /// crash that keeps the progress keeps every entry before it: no decision is lost.
    /// Recording an entry that is pending already changes nothing.
    fn record_routes(
        &self,
        broker: &str,
        entries: &[(LaneId, u64)],
        progress: &RouteProgress,
    ) -> Result<(), LogError>;

    /// The routing state of every subscription the router has seen for `broker`.
    fn subscription_states(
        &self,
        broker: &str,
    ) -> Result<Vec<(String, SubscriptionState)>, LogError>;

    /// The lanes of `broker` paused by the admin API.
    fn paused(&self, _broker: &str) -> Result<Vec<LaneId>, LogError> {
        Ok(Vec::new())
    }

    /// Pauses or resumes a lane, durably.
    fn set_paused(&self, _broker: &str, _lane: &LaneId, _paused: bool) -> Result<(), LogError> {
        Err(LogError::Unavailable(
            "this store cannot pause lanes".into(),
        ))
    }

    /// Removes a subscription's state and every pending entry of its lanes (all of them,
    /// or only the lanes of `sinks`); returns how many entries were dropped.
    fn drop_lanes(
        &self,
        broker: &str,
        subscription: &str,
        sinks: Option<&[String]>,
    ) -> Result<usize, LogError>;

    /// A lane's pending sequence numbers from `from` on, in order, at most `limit`.
    /// A lane's pending sequence numbers from `from` on, in order, at most `limit`.
    fn lane_pending(
        &self,
        broker: &str,
        lane: &LaneId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<u64>, LogError> {
        Ok(self
            .lane_entries(broker, lane, from, limit)?
            .into_iter()
            .map(|e| e.seq)
            .collect())
    }

    /// A lane's pending entries from `from` on.
    fn lane_entries(
        &self,
        broker: &str,
        lane: &LaneId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<LaneEntry>, LogError>;

    /// Removes finished entries (delivered, dead-lettered, gone) from a lane: each only
    /// if it is still the entry that was taken (a replay may have put it back since).
    fn finish(&self, broker: &str, lane: &LaneId, entries: &[LaneEntry]) -> Result<(), LogError>;

    /// Moves an entry from its lane to the lane's parked set, due at `due_unix_nanos`
    /// with `attempts` made, in one step (a crash keeps it in one place or the other).
    fn park(
        &self,
        broker: &str,
        lane: &LaneId,
        seq: u64,
        due_unix_nanos: u64,
        attempts: u32,
    ) -> Result<(), LogError>;

    /// Moves the lane's parked entries due by `now_unix_nanos` back into the lane;
    /// returns how many, and when the next one still parked is due.
    fn unpark_due(
        &self,
        broker: &str,
        lane: &LaneId,
        now_unix_nanos: u64,
    ) -> Result<(usize, Option<u64>), LogError>;

    /// How many entries of the lane are parked.
    fn parked(&self, broker: &str, lane: &LaneId) -> Result<usize, LogError>;

    /// The sequence of the lane's parked entry that is due first.
    fn next_parked(&self, broker: &str, lane: &LaneId) -> Result<Option<u64>, LogError>;

    /// Keeps a dead letter; returns its id.
    fn store_dead_letter(&self, letter: &DeadLetter) -> Result<u64, LogError>;

    /// Every dead letter kept, oldest first.
    fn dead_letters(&self) -> Result<Vec<(u64, DeadLetter)>, LogError>;

    /// One dead letter.
    fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, LogError>;

    /// Removes a dead letter; `false` when there was none with that id.
    fn delete_dead_letter(&self, id: u64) -> Result<bool, LogError>;

    /// Puts `seq` back into a lane as pending (a dead letter's redelivery).
    fn requeue(&self, broker: &str, lane: &LaneId, seq: u64) -> Result<(), LogError> {
        self.record_routes(broker, &[(lane.clone(), seq)], &RouteProgress::None)
    }

    /// Deletes the broker's oldest events, at most `limit`: those that arrived before
    /// `cutoff_unix_nanos`, then more until `free_bytes` of records are gone.
    fn expire_events(
        &self,
        broker: &str,
        cutoff_unix_nanos: u64,
        free_bytes: u64,
        limit: usize,
    ) -> Result<Expired, LogError>;

    /// The events and record bytes the broker stores now.
    fn stored(&self, broker: &str) -> Result<Stored, LogError>;

    /// The arrival time of the broker's oldest stored event.
    fn oldest_arrival(&self, broker: &str) -> Result<Option<u64>, LogError> {
        Ok(self
            .read(broker, 0, 1)?
            .first()
            .map(|r| r.arrival_unix_nanos))
    }

    /// Bytes the log takes on disk (every broker, and the backend's own overhead).
    fn disk_bytes(&self) -> Result<u64, LogError>;

    /// How many dead letters are kept.
    /// Damage found in `broker`'s log since it was opened.
    fn damage(&self, _broker: &str) -> Damage {
        Damage::default()
    }

    fn dead_letter_count(&self) -> Result<usize, LogError> {
        Ok(self.dead_letters()?.len())
    }

    /// Deletes the oldest dead letters while more than `max_count` are kept, and those
    /// stored before `cutoff_unix_nanos`; returns how many.
    fn expire_dead_letters(
        &self,
        max_count: u64,
        cutoff_unix_nanos: u64,
    ) -> Result<usize, LogError>;

    /// Events waiting in a lane: pending and parked.
    fn lane_depth(&self, broker: &str, lane: &LaneId) -> Result<u64, LogError> {
        Ok(
            (self.lane_pending(broker, lane, 0, usize::MAX)?.len() + self.parked(broker, lane)?)
                as u64,
        )
    }

    fn seq_at_time(&self, broker: &str, unix_nanos: u64) -> Result<u64, LogError>;
}

impl BlockingStore for Store {
    fn write_group(
        &self,
        group: &[GroupEntry],
        now_unix_nanos: u64,
    ) -> Result<Vec<Vec<AppendOutcome>>, LogError> {
        Ok(Store::write_group(self, group, now_unix_nanos)?)
    }

    fn read(&self, broker: &str, from: u64, limit: usize) -> Result<Vec<LogRecord>, LogError> {
        Ok(Store::read(self, broker, from, limit)?)
    }

    fn head(&self, broker: &str) -> Result<u64, LogError> {
        Ok(Store::head(self, broker)?)
    }

    fn expire_dedupe(
        &self,
        cutoff_unix_nanos: u64,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<usize, LogError> {
        Ok(Store::expire_dedupe(self, cutoff_unix_nanos, stop)?)
    }

    fn dedupe_entries(&self, broker: &str) -> usize {
        Store::dedupe_entries(self, broker)
    }

    fn sync(&self) -> Result<(), LogError> {
        Ok(Store::sync(self)?)
    }

    fn sync_progress(&self) -> Result<(), LogError> {
        Ok(Store::sync_progress(self)?)
    }

    fn router_cursor(&self, broker: &str) -> Result<u64, LogError> {
        Ok(Store::router_cursor(self, broker)?)
    }

    fn record_routes(
        &self,
        broker: &str,
        entries: &[(LaneId, u64)],
        progress: &RouteProgress,
    ) -> Result<(), LogError> {
        Ok(Store::record_routes(self, broker, entries, progress)?)
    }

    fn subscription_states(
        &self,
        broker: &str,
    ) -> Result<Vec<(String, SubscriptionState)>, LogError> {
        Ok(Store::subscription_states(self, broker)?)
    }

    fn paused(&self, broker: &str) -> Result<Vec<LaneId>, LogError> {
        Ok(Store::paused(self, broker))
    }

    fn set_paused(&self, broker: &str, lane: &LaneId, paused: bool) -> Result<(), LogError> {
        Ok(Store::set_paused(self, broker, lane, paused)?)
    }

    fn drop_lanes(
        &self,
        broker: &str,
        subscription: &str,
        sinks: Option<&[String]>,
    ) -> Result<usize, LogError> {
        Ok(Store::drop_lanes(self, broker, subscription, sinks)?)
    }

    fn lane_entries(
        &self,
        broker: &str,
        lane: &LaneId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<LaneEntry>, LogError> {
        Ok(Store::lane_entries(self, broker, lane, from, limit)?)
    }

    fn finish(&self, broker: &str, lane: &LaneId, entries: &[LaneEntry]) -> Result<(), LogError> {
        Ok(Store::finish(self, broker, lane, entries)?)
    }

    fn park(
        &self,
        broker: &str,
        lane: &LaneId,
        seq: u64,
        due_unix_nanos: u64,
        attempts: u32,
    ) -> Result<(), LogError> {
        Ok(Store::park(
            self,
            broker,
            lane,
            seq,
            due_unix_nanos,
            attempts,
        )?)
    }

    fn unpark_due(
        &self,
        broker: &str,
        lane: &LaneId,
        now_unix_nanos: u64,
    ) -> Result<(usize, Option<u64>), LogError> {
        Ok(Store::unpark_due(self, broker, lane, now_unix_nanos)?)
    }

    fn parked(&self, broker: &str, lane: &LaneId) -> Result<usize, LogError> {
        Ok(Store::parked(self, broker, lane)?)
    }

    fn next_parked(&self, broker: &str, lane: &LaneId) -> Result<Option<u64>, LogError> {
        Ok(Store::next_parked(self, broker, lane)?)
    }

    fn store_dead_letter(&self, letter: &DeadLetter) -> Result<u64, LogError> {
        Ok(Store::store_dead_letter(self, letter)?)
    }

    fn dead_letters(&self) -> Result<Vec<(u64, DeadLetter)>, LogError> {
        Ok(Store::dead_letters(self)?)
    }

    fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, LogError> {
        Ok(Store::dead_letter(self, id)?)
    }

    fn delete_dead_letter(&self, id: u64) -> Result<bool, LogError> {
        Ok(Store::delete_dead_letter(self, id)?)
    }

    fn expire_events(
        &self,
        broker: &str,
        cutoff_unix_nanos: u64,
        free_bytes: u64,
        limit: usize,
    ) -> Result<Expired, LogError> {
        Ok(Store::expire_events(
            self,
            broker,
            cutoff_unix_nanos,
            free_bytes,
            limit,
        )?)
    }

    fn stored(&self, broker: &str) -> Result<Stored, LogError> {
        Ok(Store::stored(self, broker)?)
    }

    fn oldest_arrival(&self, broker: &str) -> Result<Option<u64>, LogError> {
        Ok(Store::oldest_arrival(self, broker)?)
    }

    fn disk_bytes(&self) -> Result<u64, LogError> {
        Ok(Store::disk_bytes(self)?)
    }

    fn damage(&self, broker: &str) -> Damage {
        Store::damage(self, broker)
    }

    fn dead_letter_count(&self) -> Result<usize, LogError> {
        Ok(Store::dead_letter_count(self)?)
    }

    fn expire_dead_letters(
        &self,
        max_count: u64,
        cutoff_unix_nanos: u64,
    ) -> Result<usize, LogError> {
        Ok(Store::expire_dead_letters(
            self,
            max_count,
            cutoff_unix_nanos,
        )?)
    }

    fn lane_depth(&self, broker: &str, lane: &LaneId) -> Result<u64, LogError> {
        Ok(Store::lane_depth(self, broker, lane)?)
    }

    fn seq_at_time(&self, broker: &str, unix_nanos: u64) -> Result<u64, LogError> {
        Ok(Store::seq_at_time(self, broker, unix_nanos)?)
    }
}

/// What the log keeps: zero turns a bound off.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    /// Events that arrived longer ago than this are deleted.
    pub max_age: Duration,
    /// While the stored records of all brokers take more bytes than this, the oldest
    /// events are deleted.
    pub max_bytes: u64,
    /// The dead-letter store keeps at most this many letters.
    pub dead_letters_max_count: u64,
    /// Dead letters older than this are deleted.
    pub dead_letters_max_age: Duration,
}

/// Settings of the writer in front of a backend.
#[derive(Clone)]
pub struct WriterOptions {
    /// Where the writer counts groups, syncs and appends; `None` counts nothing.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// How long a dedupe key suppresses duplicates; zero turns dedupe off.
    pub dedupe_window: Duration,
    /// How many requests one group may take at most.
    pub max_group_requests: usize,
    /// How many requests may wait for the writer before producers wait too.
    pub queue_depth: usize,
    /// How much the log keeps, and the dead-letter store's bounds.
    pub retention: Retention,
    /// When appends are refused for want of space.
    pub space: SpaceLimits,
}

/// When the writer refuses appends (`503` with `Retry-After` at the ingress) instead of
/// letting the disk fill: a full disk fails every write at once, and sled (the dead
/// letters) cannot recover from a failed write without a restart, so the broker stops
/// short of one. Deliveries and retention go on, and appends resume by
/// themselves once there is room again.
#[derive(Debug, Clone, Default)]
pub struct SpaceLimits {
    /// The directory whose filesystem is watched.
    pub path: Option<std::path::PathBuf>,
    /// Appends stop while the filesystem has less free space than this; zero: never.
    pub min_free_bytes: u64,
    /// Appends stop while all brokers' stored records take at least this many bytes.
    pub quota_bytes: Option<u64>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            metrics: None,
            dedupe_window: Duration::from_secs(600),
            max_group_requests: 512,
            queue_depth: 4096,
            retention: Retention::default(),
            space: SpaceLimits::default(),
        }
    }
}

pub(super) struct AppendRequest {
    pub entry: GroupEntry,
    pub reply: oneshot::Sender<Result<Vec<AppendOutcome>, Arc<LogError>>>,
}

/// The embedded backend: appends go through the group-commit writer, the rest goes
/// straight to the store.
pub struct Embedded {
    store: Arc<dyn BlockingStore>,
    brokers: Vec<Arc<str>>,
    tx: mpsc::Sender<AppendRequest>,
    heads: Arc<HashMap<Arc<str>, watch::Sender<u64>>>,
    /// Per broker, the records just stored, decoded, for its router.
    fresh: Arc<HashMap<Arc<str>, fresh::Fresh>>,
    /// The error of the last group write, cleared by the next one that succeeds.
    failure: Arc<std::sync::Mutex<Option<String>>>,
    /// What the writer refuses appends for, so readiness can say so before an append.
    space: Arc<SpaceLimits>,
}

impl Log {
    /// Starts the embedded backend over `store` on the current runtime: its writer and
    /// retention. They stop, after writing what they already took, when `shutdown` is
    /// cancelled.
    pub fn start(
        store: Arc<dyn BlockingStore>,
        brokers: &[String],
        clock: SharedClock,
        options: WriterOptions,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Log, LogError> {
        let mut heads = HashMap::new();
        for b in brokers {
            let head = store.head(b)?;
            heads.insert(Arc::<str>::from(b.as_str()), watch::Sender::new(head));
        }
        let fresh: Arc<HashMap<Arc<str>, fresh::Fresh>> = Arc::new(
            heads
                .keys()
                .map(|b| (b.clone(), fresh::Fresh::default()))
                .collect(),
        );
        let heads = Arc::new(heads);
        tracker.spawn(retention::run(
            store.clone(),
            brokers
                .iter()
                .map(|b| Arc::<str>::from(b.as_str()))
                .collect(),
            clock.clone(),
            options.retention.clone(),
            options.metrics.clone(),
            shutdown.clone(),
        ));
        let log_clock = clock.clone();
        let (tx, rx) = mpsc::channel(options.queue_depth);
        let failure = Arc::default();
        let space = Arc::new(options.space.clone());
        crate::runtime::spawn_thread(
            "log-writer",
            tracker,
            writer::run(
                store.clone(),
                rx,
                writer::Outputs {
                    heads: heads.clone(),
                    fresh: fresh.clone(),
                    failure: Arc::clone(&failure),
                },
                clock,
                options,
                shutdown,
            ),
        );
        Ok(Log::new(
            Arc::new(Embedded {
                store,
                brokers: brokers
                    .iter()
                    .map(|b| Arc::<str>::from(b.as_str()))
                    .collect(),
                tx,
                heads,
                fresh,
                failure,
                space,
            }),
            log_clock,
        ))
    }
}

impl Embedded {
    /// Runs `f` on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn BlockingStore) -> LogResult<T> + Send + 'static,
    ) -> LogResult<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|_| LogError::Closed)?
    }

    /// Why appends are refused for want of disk space now, read from the filesystem:
    /// less free than `storage.minFreeBytes`.
    fn space_shortfall(space: &SpaceLimits) -> Option<String> {
        let (Some(path), min @ 1..) = (&space.path, space.min_free_bytes) else {
            return None;
        };
        match writer::free_bytes(path) {
            Ok(free) => writer::short_of_space(free, min),
            // As in the writer: a filesystem that cannot be asked does not stop appends.
            Err(_) => None,
        }
    }
}

impl EventBackend for Embedded {
    fn brokers(&self) -> &[Arc<str>] {
        &self.brokers
    }

    fn append(
        &self,
        broker: Arc<str>,
        appends: Vec<Append>,
    ) -> BoxFuture<'_, Result<Vec<AppendOutcome>, Arc<LogError>>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            let request = AppendRequest {
                entry: GroupEntry { broker, appends },
                reply,
            };
            self.tx
                .send(request)
                .await
                .map_err(|_| Arc::new(LogError::Closed))?;
            rx.await.map_err(|_| Arc::new(LogError::Closed))?
        })
    }

    fn head(&self, broker: &str) -> Option<u64> {
        self.heads.get(broker).map(|h| *h.borrow())
    }

    fn watch(&self, broker: &str) -> Option<watch::Receiver<u64>> {
        self.heads.get(broker).map(watch::Sender::subscribe)
    }

    fn take_fresh(&self, broker: &str, from: u64, limit: usize) -> Vec<Arc<LogRecord>> {
        self.fresh
            .get(broker)
            .map_or_else(Vec::new, |f| f.take(from, limit))
    }

    fn read<'a>(
        &'a self,
        broker: &'a str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'a, LogResult<Vec<LogRecord>>> {
        if limit <= IN_PLACE_READ {
            return Box::pin(std::future::ready(self.store.read(broker, from, limit)));
        }
        let broker = broker.to_string();
        Box::pin(self.blocking(move |s| s.read(&broker, from, limit)))
    }

    fn seq_at_time<'a>(
        &'a self,
        broker: &'a str,
        unix_nanos: u64,
    ) -> BoxFuture<'a, LogResult<u64>> {
        let broker = broker.to_string();
        Box::pin(self.blocking(move |s| s.seq_at_time(&broker, unix_nanos)))
    }

    fn stats<'a>(&'a self, broker: &'a str) -> BoxFuture<'a, LogResult<BrokerStats>> {
        let store = &self.store;
        Box::pin(std::future::ready((|| {
            Ok(BrokerStats {
                stored: store.stored(broker)?,
                oldest_arrival: store.oldest_arrival(broker)?,
                damage: store.damage(broker),
                dedupe_entries: store.dedupe_entries(broker) as u64,
            })
        })()))
    }

    fn disk_bytes(&self) -> BoxFuture<'_, LogResult<u64>> {
        Box::pin(self.blocking(|s| s.disk_bytes()))
    }

    fn refusing_appends(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move {
            let failing = self
                .failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(failing) = failing {
                return Some(format!("the log cannot write: {failing}"));
            }
            if let Some(full) = writer::quota_refusal(
                self.store.as_ref(),
                &self.space,
                self.brokers.iter().cloned(),
            ) {
                return Some(full);
            }
            // statvfs is a system call, and on a network filesystem a slow one.
            let space = self.space.clone();
            tokio::task::spawn_blocking(move || Embedded::space_shortfall(&space))
                .await
                .unwrap_or_default()
        })
    }
}

/// A lane store call, answered in place.
fn now<T: Send + 'static>(r: LogResult<T>) -> BoxFuture<'static, LogResult<T>> {
    Box::pin(std::future::ready(r))
}

impl LaneBackend for Embedded {
    fn router_cursor<'a>(&'a self, broker: &'a str) -> BoxFuture<'a, LogResult<u64>> {
        now(self.store.router_cursor(broker))
    }

    fn record_routes<'a>(
        &'a self,
        broker: &'a str,
        entries: &'a [(LaneId, u64)],
        progress: &'a RouteProgress,
    ) -> BoxFuture<'a, LogResult<()>> {
        now(self.store.record_routes(broker, entries, progress))
    }

    fn requeue<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        seq: u64,
    ) -> BoxFuture<'a, LogResult<()>> {
        let (broker, lane) = (broker.to_string(), lane.clone());
        Box::pin(self.blocking(move |s| {
            s.requeue(&broker, &lane, seq)?;
            s.sync()
        }))
    }

    fn subscription_states<'a>(
        &'a self,
        broker: &'a str,
    ) -> BoxFuture<'a, LogResult<Vec<(String, SubscriptionState)>>> {
        now(self.store.subscription_states(broker))
    }

    fn paused<'a>(&'a self, broker: &'a str) -> BoxFuture<'a, LogResult<Vec<LaneId>>> {
        now(self.store.paused(broker))
    }

    fn set_paused<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        paused: bool,
    ) -> BoxFuture<'a, LogResult<()>> {
        now(self.store.set_paused(broker, lane, paused))
    }

    fn drop_lanes<'a>(
        &'a self,
        broker: &'a str,
        subscription: &'a str,
        sinks: Option<&'a [String]>,
    ) -> BoxFuture<'a, LogResult<usize>> {
        now(self.store.drop_lanes(broker, subscription, sinks))
    }

    fn entries<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'a, LogResult<Vec<LaneEntry>>> {
        now(self.store.lane_entries(broker, lane, from, limit))
    }

    fn finish<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        entries: &'a [LaneEntry],
    ) -> BoxFuture<'a, LogResult<()>> {
        now(self.store.finish(broker, lane, entries))
    }

    fn park<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        seq: u64,
        due_unix_nanos: u64,
        attempts: u32,
    ) -> BoxFuture<'a, LogResult<()>> {
        now(self.store.park(broker, lane, seq, due_unix_nanos, attempts))
    }

    fn unpark_due<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        now_unix_nanos: u64,
    ) -> BoxFuture<'a, LogResult<(usize, Option<u64>)>> {
        now(self.store.unpark_due(broker, lane, now_unix_nanos))
    }

    fn depth<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
    ) -> BoxFuture<'a, LogResult<LaneDepth>> {
        let store = &self.store;
        now((|| {
            let pending = store
                .lane_entries(broker, lane, 0, 1)?
                .first()
                .map(|e| e.seq);
            let next_parked = store.next_parked(broker, lane)?;
            let parked = store.parked(broker, lane)? as u64;
            let total = store.lane_depth(broker, lane)?;
            Ok(LaneDepth {
                pending: total - parked,
                parked,
                oldest: pending.into_iter().chain(next_parked).min(),
            })
        })())
    }
}

impl DeadLetterBackend for Embedded {
    fn store<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, LogResult<u64>> {
        let letter = letter.clone();
        Box::pin(self.blocking(move |s| s.store_dead_letter(&letter)))
    }

    fn list(&self) -> BoxFuture<'_, LogResult<Vec<(u64, DeadLetter)>>> {
        Box::pin(self.blocking(|s| s.dead_letters()))
    }

    fn get(&self, id: u64) -> BoxFuture<'_, LogResult<Option<DeadLetter>>> {
        Box::pin(self.blocking(move |s| s.dead_letter(id)))
    }

    fn delete(&self, id: u64) -> BoxFuture<'_, LogResult<bool>> {
        Box::pin(self.blocking(move |s| s.delete_dead_letter(id)))
    }

    fn count(&self) -> BoxFuture<'_, LogResult<u64>> {
        now(self.store.dead_letter_count().map(|n| n as u64))
    }
}
