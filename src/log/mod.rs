//! The event log, as every other part of the broker sees it: three cheap-to-clone
//! handles, and the seam a storage backend fills.
//!
//! The log is the queue. Every event a producer got a `202` for is in it; everything
//! downstream reads it by sequence number, per broker.
//!
//! - [`Log`]: the events. Appends (the ingress, replies, and the lanes' dead letters'
//!   records), reads by sequence and by time (routing, delivery, browsing, replay), the
//!   head and its changes, and why appends are refused right now (readiness).
//! - [`Lanes`]: what the router decided and the deliverers still owe. A lane is one sink
//!   of one subscription; its entries are sequence numbers of the broker's log, pending
//!   or parked (a retry due later). The router records entries with the progress they
//!   complete; a deliverer takes entries, finishes them, or parks them.
//! - [`DeadLetters`]: events that could not be delivered, kept with why (delivery
//!   stores them; the admin API lists, redelivers and deletes them).
//!
//! # The backend seam
//!
//! A backend provides [`EventBackend`], [`LaneBackend`] and [`DeadLetterBackend`].
//! Their methods return futures (a backend may be a network away) or answer from memory
//! (the head, its watch, the records just stored), and they speak only the types of
//! [`crate::store`]'s data model: no file, segment or sled type crosses. What each must
//! hold:
//!
//! - `append` returns only once the events are durable as configured, each with its
//!   sequence number (consecutive per broker) or, inside the dedupe window, the sequence
//!   of the event it duplicates. The head moves only after that.
//! - `record_routes` stores a step's lane entries, then the progress they complete, so
//!   that progress kept after a crash implies every entry before it. Entries may come
//!   back after a crash (delivery is at least once); progress never runs ahead.
//! - `finish` removes an entry only if it is still the copy that was taken (its
//!   stamp), so that a put-back meanwhile (a replay, a redelivery) is delivered again.
//! - `park` moves an entry out of the lane until it is due, and `unpark_due` brings due
//!   ones back, in one step each: a crash keeps the entry in one place or the other.
//! - A dead letter is durable before `store` returns (it is the last record of an
//!   event); with it stored, the lane may finish the entry. A redelivery's `requeue` is
//!   durable before it returns, and only then is the letter deleted.
//!
//! The embedded backend (`embedded.rs`) runs [`crate::store::Store`]: a group-commit
//! writer thread in front of its segments, retention beside it, lane operations in
//! memory answered in place, disk reads in place when short and on the blocking pool
//! otherwise. The JetStream backend (`jetstream/`) maps the same contract onto a
//! distributed log shared by several instances: a stream per broker for the events
//! (publish acknowledged = durable), and a consumer per lane for its entries. Its lanes
//! are [`LaneBackend::shared`]: `entries` claims what it returns (a fetch), `finish` is
//! an ack, `park` a delayed negative ack, and one instance routes each broker
//! ([`LaneBackend::leadership`]).

mod embedded;
pub mod fresh;
pub mod jetstream;
mod retention;
mod writer;
pub use embedded::{BlockingStore, Retention, SpaceLimits, WriterOptions};
pub use writer::{free_bytes, total_bytes};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::event::Event;

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
    /// A backend a network away cannot be reached or did not answer.
    #[error("{0}")]
    Unavailable(String),
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

/// A future a backend returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A result of the log.
pub type LogResult<T> = Result<T, LogError>;

/// What a broker's log holds and has lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerStats {
    pub stored: Stored,
    /// The arrival time of the oldest event held.
    pub oldest_arrival: Option<u64>,
    pub damage: Damage,
    /// Dedupe keys held (inside the window, until swept).
    pub dedupe_entries: u64,
}

/// The events of every broker (see the module documentation).
pub trait EventBackend: Send + Sync + 'static {
    /// The brokers, as the log names them.
    fn brokers(&self) -> &[Arc<str>];

    /// Appends events to one broker; resolves once they are durable.
    fn append(
        &self,
        broker: Arc<str>,
        appends: Vec<Append>,
    ) -> BoxFuture<'_, Result<Vec<AppendOutcome>, Arc<LogError>>>;

    /// The highest stored sequence number of `broker` (0 when empty).
    fn head(&self, broker: &str) -> Option<u64>;

    /// A receiver that sees the head of `broker` move.
    fn watch(&self, broker: &str) -> Option<watch::Receiver<u64>>;

    /// The records of `broker` from `from` on (at most `limit`) that were just stored,
    /// decoded, taken out; empty when the record at `from` is not among them. A backend
    /// without such a handoff returns nothing, and the router reads instead.
    fn take_fresh(&self, broker: &str, from: u64, limit: usize) -> Vec<Arc<LogRecord>>;

    /// Records from `from` (inclusive) on, at most `limit`, in order; records gone
    /// (retention, damage) are skipped.
    fn read<'a>(
        &'a self,
        broker: &'a str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'a, LogResult<Vec<LogRecord>>>;

    /// The first sequence that arrived at or after `unix_nanos` (the head + 1 if none).
    fn seq_at_time<'a>(&'a self, broker: &'a str, unix_nanos: u64)
        -> BoxFuture<'a, LogResult<u64>>;

    fn stats<'a>(&'a self, broker: &'a str) -> BoxFuture<'a, LogResult<BrokerStats>>;

    /// Bytes the log takes on disk, where the backend can tell.
    fn disk_bytes(&self) -> BoxFuture<'_, LogResult<u64>>;

    /// Why appends fail or would be refused now (readiness says so before producers
    /// find out); `None` while they succeed.
    fn refusing_appends(&self) -> BoxFuture<'_, Option<String>>;
}

/// Every broker's lanes (see the module documentation).
pub trait LaneBackend: Send + Sync + 'static {
    /// The highest sequence number the router has decided (0 before any).
    fn router_cursor<'a>(&'a self, broker: &'a str) -> BoxFuture<'a, LogResult<u64>>;

    /// Records routing decisions, then the progress they complete. Recording an entry
    /// that is pending already changes nothing.
    fn record_routes<'a>(
        &'a self,
        broker: &'a str,
        entries: &'a [(LaneId, u64)],
        progress: &'a RouteProgress,
    ) -> BoxFuture<'a, LogResult<()>>;

    /// Puts `seq` back into a lane as pending (a dead letter's redelivery), durably:
    /// the caller deletes the letter next.
    fn requeue<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        seq: u64,
    ) -> BoxFuture<'a, LogResult<()>>;

    /// The routing state of every subscription the router has recorded for `broker`.
    fn subscription_states<'a>(
        &'a self,
        broker: &'a str,
    ) -> BoxFuture<'a, LogResult<Vec<(String, SubscriptionState)>>>;

    /// The lanes of `broker` paused by the admin API (durably: a pause survives a
    /// restart, and holds for every instance).
    fn paused<'a>(&'a self, broker: &'a str) -> BoxFuture<'a, LogResult<Vec<LaneId>>>;

    /// Pauses or resumes a lane, durably before it returns.
    fn set_paused<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        paused: bool,
    ) -> BoxFuture<'a, LogResult<()>>;

    /// Removes a subscription's state and every entry of its lanes (all of them, or
    /// only the lanes of `sinks`); returns how many entries were dropped.
    fn drop_lanes<'a>(
        &'a self,
        broker: &'a str,
        subscription: &'a str,
        sinks: Option<&'a [String]>,
    ) -> BoxFuture<'a, LogResult<usize>>;

    /// A lane's pending entries from `from` on, in order, at most `limit`.
    fn entries<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'a, LogResult<Vec<LaneEntry>>>;

    /// The events of a lane's unfinished entries (waiting, taken or parked), in log order,
    /// at most `limit`, without taking any: what the lane still owes its sink.
    fn unfinished<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        limit: usize,
    ) -> BoxFuture<'a, LogResult<Vec<u64>>> {
        Box::pin(async move {
            Ok(self
                .entries(broker, lane, 0, limit)
                .await?
                .into_iter()
                .map(|e| e.seq)
                .collect())
        })
    }

    /// Removes finished entries, each only if it is still the copy that was taken.
    fn finish<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        entries: &'a [LaneEntry],
    ) -> BoxFuture<'a, LogResult<()>>;

    /// Moves an entry to the lane's parked set, due at `due_unix_nanos` with
    /// `attempts` made.
    fn park<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        seq: u64,
        due_unix_nanos: u64,
        attempts: u32,
    ) -> BoxFuture<'a, LogResult<()>>;

    /// Moves the parked entries due by `now_unix_nanos` back into the lane; returns how
    /// many, and when the next one still parked is due.
    fn unpark_due<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
        now_unix_nanos: u64,
    ) -> BoxFuture<'a, LogResult<(usize, Option<u64>)>>;

    /// What the lane holds now.
    fn depth<'a>(
        &'a self,
        broker: &'a str,
        lane: &'a LaneId,
    ) -> BoxFuture<'a, LogResult<LaneDepth>>;

    /// Whether the lanes are shared with other instances. A shared lane's `entries`
    /// hands each entry to one instance at a time (a claim, released by `finish`,
    /// `park`, or the instance's death), so a deliverer asks only for what it starts
    /// at once and takes nothing from the in-process feed.
    fn shared(&self) -> bool {
        false
    }

    /// Prepares a lane before its deliverer takes entries (a backend that keeps
    /// per-lane state on the servers creates or updates it to `spec`).
    fn open<'a>(
        &'a self,
        _broker: &'a str,
        _lane: &'a LaneId,
        _spec: LaneSpec,
    ) -> BoxFuture<'a, LogResult<()>> {
        Box::pin(async { Ok(()) })
    }

    /// A receiver that moves when entries may have arrived in a shared lane (`None`:
    /// the in-process feed and the router's `routed` say so).
    fn wake(&self, _broker: &str, _lane: &LaneId) -> Option<watch::Receiver<u64>> {
        None
    }

    /// Whether this instance routes `broker` now, as it changes (`None`: always). Of
    /// instances sharing lanes, one routes at a time.
    fn leadership(&self, _broker: &str) -> Option<watch::Receiver<bool>> {
        None
    }
}

/// What a backend needs to know of a lane to hold its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneSpec {
    pub max_in_flight: u32,
    /// One entry out at a time, fleet-wide, in log order.
    pub ordered: bool,
    /// How long an entry handed out may go without word from its deliverer before it
    /// is handed to another instance.
    pub claim_timeout: std::time::Duration,
}

/// What a lane holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneDepth {
    pub pending: u64,
    pub parked: u64,
    /// The sequence of the oldest event the lane still holds: its first pending entry,
    /// or the parked entry due first.
    pub oldest: Option<u64>,
}

/// The dead letters of every broker (see the module documentation).
pub trait DeadLetterBackend: Send + Sync + 'static {
    /// Keeps a letter, durably; returns its id.
    fn store<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, LogResult<u64>>;
    /// Every letter, oldest first.
    fn list(&self) -> BoxFuture<'_, LogResult<Vec<(u64, DeadLetter)>>>;
    fn get(&self, id: u64) -> BoxFuture<'_, LogResult<Option<DeadLetter>>>;
    /// Removes a letter; `false` when there was none with that id.
    fn delete(&self, id: u64) -> BoxFuture<'_, LogResult<bool>>;
    fn count(&self) -> BoxFuture<'_, LogResult<u64>>;
}

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event: Event,
    /// How many replies deep it is (0 from a producer).
    pub hops: u32,
    /// The dedupe key, when dedupe is on and the event has one.
    pub dedupe_key: Option<Vec<u8>>,
}

/// The events handle; [`Log::lanes`] and [`Log::dead_letters`] give the other two.
#[derive(Clone)]
pub struct Log {
    events: Arc<dyn EventBackend>,
    clock: SharedClock,
    lanes: Lanes,
    dead_letters: DeadLetters,
}

impl Log {
    /// The log of a backend that provides all three parts; `clock` stamps arrivals.
    pub fn new<B: EventBackend + LaneBackend + DeadLetterBackend>(
        backend: Arc<B>,
        clock: SharedClock,
    ) -> Log {
        Log {
            events: backend.clone(),
            clock,
            lanes: Lanes(backend.clone()),
            dead_letters: DeadLetters(backend),
        }
    }

    /// The log of three separate parts (a backend whose events, lanes and dead
    /// letters are different objects).
    pub fn from_parts(
        events: Arc<dyn EventBackend>,
        lanes: Arc<dyn LaneBackend>,
        dead_letters: Arc<dyn DeadLetterBackend>,
        clock: SharedClock,
    ) -> Log {
        Log {
            events,
            clock,
            lanes: Lanes(lanes),
            dead_letters: DeadLetters(dead_letters),
        }
    }

    pub fn lanes(&self) -> &Lanes {
        &self.lanes
    }

    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    /// The brokers this log has.
    pub fn brokers(&self) -> impl Iterator<Item = &Arc<str>> {
        self.events.brokers().iter()
    }

    /// The broker's name as the log holds it, if the log has that broker.
    pub fn broker(&self, name: &str) -> Option<Arc<str>> {
        self.events
            .brokers()
            .iter()
            .find(|b| &***b == name)
            .cloned()
    }

    /// Appends events to one broker, arrived now, and waits until they are durable.
    /// They are encoded here, on the caller's task, so that many requests encode at
    /// once rather than one after another in the backend.
    pub async fn append(
        &self,
        broker: Arc<str>,
        events: Vec<NewEvent>,
    ) -> Result<Vec<AppendOutcome>, Arc<LogError>> {
        let now = self.clock.now_unix_nanos();
        let appends = events
            .into_iter()
            .map(|e| Append {
                record: Bytes::from(record::encode(&broker, now, e.hops, &e.event)),
                dedupe_key: e.dedupe_key,
                // Handed to the router once stored, which then need not decode it.
                decoded: Some(Decoded {
                    arrival_unix_nanos: now,
                    hops: e.hops,
                    event: e.event,
                }),
            })
            .collect();
        self.events.append(broker, appends).await
    }

    /// The highest stored sequence number of `broker`.
    pub fn head(&self, broker: &str) -> Option<u64> {
        self.events.head(broker)
    }

    /// A receiver that sees the head of `broker` move.
    pub fn watch(&self, broker: &str) -> Option<watch::Receiver<u64>> {
        self.events.watch(broker)
    }

    /// See [`EventBackend::take_fresh`].
    pub fn take_fresh(&self, broker: &str, from: u64, limit: usize) -> Vec<Arc<LogRecord>> {
        self.events.take_fresh(broker, from, limit)
    }

    /// Records from `from` on, at most `limit`.
    pub async fn read(&self, broker: &str, from: u64, limit: usize) -> LogResult<Vec<LogRecord>> {
        self.events.read(broker, from, limit).await
    }

    /// The record at `seq`, if the log holds it.
    pub async fn get(&self, broker: &str, seq: u64) -> LogResult<Option<LogRecord>> {
        let mut records = self.events.read(broker, seq, 1).await?;
        Ok(records
            .first()
            .is_some_and(|r| r.seq == seq)
            .then(|| records.swap_remove(0)))
    }

    /// The first sequence that arrived at or after `unix_nanos`.
    pub async fn seq_at_time(&self, broker: &str, unix_nanos: u64) -> LogResult<u64> {
        self.events.seq_at_time(broker, unix_nanos).await
    }

    pub async fn stats(&self, broker: &str) -> LogResult<BrokerStats> {
        self.events.stats(broker).await
    }

    pub async fn disk_bytes(&self) -> LogResult<u64> {
        self.events.disk_bytes().await
    }

    /// Why appends fail or would be refused now.
    pub async fn refusing_appends(&self) -> Option<String> {
        self.events.refusing_appends().await
    }
}

/// The lanes handle.
#[derive(Clone)]
pub struct Lanes(Arc<dyn LaneBackend>);

impl Lanes {
    pub async fn router_cursor(&self, broker: &str) -> LogResult<u64> {
        self.0.router_cursor(broker).await
    }

    pub async fn record_routes(
        &self,
        broker: &str,
        entries: &[(LaneId, u64)],
        progress: &RouteProgress,
    ) -> LogResult<()> {
        self.0.record_routes(broker, entries, progress).await
    }

    /// Puts `seq` back into a lane as pending, durably (a dead letter's redelivery).
    pub async fn requeue(&self, broker: &str, lane: &LaneId, seq: u64) -> LogResult<()> {
        self.0.requeue(broker, lane, seq).await
    }

    pub async fn subscription_states(
        &self,
        broker: &str,
    ) -> LogResult<Vec<(String, SubscriptionState)>> {
        self.0.subscription_states(broker).await
    }

    /// The lanes of `broker` paused by the admin API.
    pub async fn paused(&self, broker: &str) -> LogResult<Vec<LaneId>> {
        self.0.paused(broker).await
    }

    /// Pauses or resumes a lane, durably.
    pub async fn set_paused(&self, broker: &str, lane: &LaneId, paused: bool) -> LogResult<()> {
        self.0.set_paused(broker, lane, paused).await
    }

    pub async fn drop_lanes(
        &self,
        broker: &str,
        subscription: &str,
        sinks: Option<&[String]>,
    ) -> LogResult<usize> {
        self.0.drop_lanes(broker, subscription, sinks).await
    }

    pub async fn entries(
        &self,
        broker: &str,
        lane: &LaneId,
        from: u64,
        limit: usize,
    ) -> LogResult<Vec<LaneEntry>> {
        self.0.entries(broker, lane, from, limit).await
    }

    /// The events a lane still owes its sink, in log order, at most `limit`; takes nothing
    /// (see [`LaneBackend::unfinished`]).
    pub async fn pending(&self, broker: &str, lane: &LaneId, limit: usize) -> LogResult<Vec<u64>> {
        self.0.unfinished(broker, lane, limit).await
    }

    pub async fn finish(
        &self,
        broker: &str,
        lane: &LaneId,
        entries: &[LaneEntry],
    ) -> LogResult<()> {
        self.0.finish(broker, lane, entries).await
    }

    pub async fn park(
        &self,
        broker: &str,
        lane: &LaneId,
        seq: u64,
        due_unix_nanos: u64,
        attempts: u32,
    ) -> LogResult<()> {
        self.0
            .park(broker, lane, seq, due_unix_nanos, attempts)
            .await
    }

    pub async fn unpark_due(
        &self,
        broker: &str,
        lane: &LaneId,
        now_unix_nanos: u64,
    ) -> LogResult<(usize, Option<u64>)> {
        self.0.unpark_due(broker, lane, now_unix_nanos).await
    }

    pub async fn depth(&self, broker: &str, lane: &LaneId) -> LogResult<LaneDepth> {
        self.0.depth(broker, lane).await
    }

    /// See [`LaneBackend::shared`].
    pub fn shared(&self) -> bool {
        self.0.shared()
    }

    pub async fn open(&self, broker: &str, lane: &LaneId, spec: LaneSpec) -> LogResult<()> {
        self.0.open(broker, lane, spec).await
    }

    pub fn wake(&self, broker: &str, lane: &LaneId) -> Option<watch::Receiver<u64>> {
        self.0.wake(broker, lane)
    }

    pub fn leadership(&self, broker: &str) -> Option<watch::Receiver<bool>> {
        self.0.leadership(broker)
    }
}

/// The dead-letters handle.
#[derive(Clone)]
pub struct DeadLetters(Arc<dyn DeadLetterBackend>);

impl DeadLetters {
    pub async fn store(&self, letter: &DeadLetter) -> LogResult<u64> {
        self.0.store(letter).await
    }

    pub async fn list(&self) -> LogResult<Vec<(u64, DeadLetter)>> {
        self.0.list().await
    }

    pub async fn get(&self, id: u64) -> LogResult<Option<DeadLetter>> {
        self.0.get(id).await
    }

    pub async fn delete(&self, id: u64) -> LogResult<bool> {
        self.0.delete(id).await
    }

    pub async fn count(&self) -> LogResult<u64> {
        self.0.count().await
    }
}
