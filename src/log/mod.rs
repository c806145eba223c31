//! The event log: storage behind one narrow interface ([`LogBackend`]), and the
//! group-commit writer in front of it ([`Log`]).
//!
//! The log is the queue. Every event a producer got a `202` for is in it; everything
//! downstream (routing, delivery) reads it by sequence number. sled is the embedded
//! backend; a NATS JetStream backend can implement the same trait.

mod embedded;
pub mod fresh;
mod retention;
mod writer;
pub use writer::{free_bytes, total_bytes};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::SharedClock;
pub use crate::store::events::record;
use crate::store::StoreError;
pub use crate::store::{
    Append, AppendOutcome, Damage, DeadLetter, Decoded, Expired, GroupEntry, LaneEntry, LaneId,
    LogRecord, RouteProgress, Stored, SubscriptionState,
};

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the log is shutting down")]
    Closed,
    /// Writes are refused before the disk fills up: the reason names the bound.
    #[error("{0}")]
    Full(String),
}

impl From<std::io::Error> for LogError {
    fn from(e: std::io::Error) -> LogError {
        LogError::Store(StoreError::Io(e))
    }
}

impl LogError {
    /// Whether a producer should retry later (the condition may pass) rather than fix
    /// its request.
    pub fn is_unavailable(&self) -> bool {
        !matches!(self, LogError::Store(StoreError::UnknownBroker(_)))
    }
}

/// The storage interface. Calls block (they do disk I/O); the writer and readers call
/// them off the async runtime.
pub trait LogBackend: Send + Sync + 'static {
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

    /// Number of dedupe entries held (for tests and metrics).
    fn dedupe_entries(&self) -> usize;

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

    /// The arrival time of the oldest event the lane still holds: its first pending
    /// entry, or the parked entry due first (parked entries are, almost always, older).
    fn lane_oldest_arrival(&self, broker: &str, lane: &LaneId) -> Result<Option<u64>, LogError> {
        let pending = self.lane_pending(broker, lane, 0, 1)?.first().copied();
        let parked = self.next_parked(broker, lane)?;
        let Some(seq) = pending.into_iter().chain(parked).min() else {
            return Ok(None);
        };
        Ok(self
            .read(broker, seq, 1)?
            .first()
            .filter(|r| r.seq == seq)
            .map(|r| r.arrival_unix_nanos))
    }

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
/// letting the disk fill: sled cannot recover from a failed write without a restart, so
/// the broker stops short of one. Deliveries and retention go on, and appends resume by
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

struct AppendRequest {
    entry: GroupEntry,
    reply: oneshot::Sender<Result<Vec<AppendOutcome>, Arc<LogError>>>,
}

/// A cheap-to-clone handle on the log: appends go through the group-commit writer,
/// reads go straight to the backend.
#[derive(Clone)]
pub struct Log {
    backend: Arc<dyn LogBackend>,
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
    /// Starts the writer for `backend` on the current runtime. It stops, after
    /// writing what it already took, when `shutdown` is cancelled.
    pub fn start(
        backend: Arc<dyn LogBackend>,
        brokers: &[String],
        clock: SharedClock,
        options: WriterOptions,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Log, LogError> {
        let mut heads = HashMap::new();
        for b in brokers {
            let head = backend.head(b)?;
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
            backend.clone(),
            brokers
                .iter()
                .map(|b| Arc::<str>::from(b.as_str()))
                .collect(),
            clock.clone(),
            options.retention.clone(),
            options.metrics.clone(),
            shutdown.clone(),
        ));
        let (tx, rx) = mpsc::channel(options.queue_depth);
        let failure = Arc::default();
        let space = Arc::new(options.space.clone());
        crate::runtime::spawn_thread(
            "log-writer",
            tracker,
            writer::run(
                backend.clone(),
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
        Ok(Log {
            backend,
            tx,
            heads,
            fresh,
            failure,
            space,
        })
    }

    /// Why appends are refused for want of disk space now, read from the filesystem:
    /// less free than `storage.minFreeBytes`. A system call (statvfs) each time; call
    /// it off the async runtime.
    pub fn space_shortfall(&self) -> Option<String> {
        let (Some(path), min @ 1..) = (&self.space.path, self.space.min_free_bytes) else {
            return None;
        };
        match free_bytes(path) {
            Ok(free) => writer::short_of_space(free, min),
            // As in the writer: a filesystem that cannot be asked does not stop appends.
            Err(_) => None,
        }
    }

    /// Why the last write failed, while writes fail.
    pub fn write_failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The records of `broker` from `from` on (at most `limit`) that were just stored,
    /// decoded, taken out; empty when the record at `from` is not among them.
    pub fn take_fresh(&self, broker: &str, from: u64, limit: usize) -> Vec<Arc<LogRecord>> {
        self.fresh
            .get(broker)
            .map_or_else(Vec::new, |f| f.take(from, limit))
    }

    /// The broker's name as the log holds it, if the log has that broker.
    pub fn broker(&self, name: &str) -> Option<Arc<str>> {
        self.heads.get_key_value(name).map(|(k, _)| k.clone())
    }

    /// Appends events to one broker and waits until they are durable.
    pub async fn append(
        &self,
        broker: Arc<str>,
        appends: Vec<Append>,
    ) -> Result<Vec<AppendOutcome>, Arc<LogError>> {
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
    }

    /// The highest stored sequence number of `broker`.
    pub fn head(&self, broker: &str) -> Option<u64> {
        self.heads.get(broker).map(|h| *h.borrow())
    }

    /// A receiver that sees the head of `broker` move.
    pub fn watch(&self, broker: &str) -> Option<watch::Receiver<u64>> {
        self.heads.get(broker).map(watch::Sender::subscribe)
    }

    /// Reads records from `from` on, off the async runtime.
    pub async fn read(
        &self,
        broker: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        let backend = self.backend.clone();
        let broker = broker.to_string();
        tokio::task::spawn_blocking(move || backend.read(&broker, from, limit))
            .await
            .map_err(|_| LogError::Closed)?
    }

    /// A lane's pending sequence numbers, off the async runtime.
    pub async fn lane_pending(
        &self,
        broker: &str,
        lane: &LaneId,
        limit: usize,
    ) -> Result<Vec<u64>, LogError> {
        let backend = self.backend.clone();
        let (broker, lane) = (broker.to_string(), lane.clone());
        tokio::task::spawn_blocking(move || backend.lane_pending(&broker, &lane, 0, limit))
            .await
            .map_err(|_| LogError::Closed)?
    }

    /// The brokers this log has.
    pub fn brokers(&self) -> impl Iterator<Item = &Arc<str>> {
        self.heads.keys()
    }

    /// The backend, for callers that manage their own blocking.
    pub fn backend(&self) -> &Arc<dyn LogBackend> {
        &self.backend
    }
}
