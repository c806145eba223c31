//! One lane's deliverer: sends the lane's pending events to its sink with at most
//! `maxInFlight` in flight (`ordering: ordered`: one at a time, in log order), retries
//! with backoff, parks long waits durably, dead-letters what cannot be delivered, and
//! appends replies. Finished entries are removed from the lane at least every 100 ms
//! and at shutdown, so a crash re-sends at most the in-flight window.
//!
//! A lane that keeps up takes new entries, events included, from its feed
//! ([`crate::router::feed`]); when the feed is off (the lane fell behind, or entries
//! went back below where it had read) it reads its lane in the lane store, from the start after a
//! put-back, until it has caught up and can turn the feed on again.

use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use futures_util::FutureExt as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::client::{Message, Response, Sender};
use super::flow::{Breaker, Bucket, Gate, Transition};
use super::policy::{self, Attempt, Verdict};
use super::reply::{self, Reply};
use super::schedule::{Finished, Schedule, Take};
use crate::clock::SharedClock;
use crate::config::subscriptions::{Ordering, ReplyMode, Sink, SinkFormat, Subscription};
use crate::event::{AttrValue, Event};
use crate::expr::transform::Shaped;
use crate::http::trace::{of_event, TraceParent};
use crate::log::{record, AppendOutcome, DeadLetter, LaneId, LaneSpec, Log, LogRecord, NewEvent};
use crate::router::feed::Feeds;
use crate::spans::{OpenSpan, Target};

/// A wait longer than this parks the event durably instead of holding an in-flight slot.
pub const PARK_AFTER: Duration = Duration::from_secs(5);

/// A shared lane's claim on an entry lasts one attempt's timeout and this much more
/// without word from its instance (claims under way are renewed).
pub const CLAIM_MARGIN: Duration = Duration::from_secs(5);

/// How often finished entries are removed from the lane.
pub const COMMIT_EVERY: Duration = Duration::from_millis(100);

/// Every this many commits a lane reads its lane store entries from the start once, a check
/// that nothing pending was passed over, whatever the feed said.
const REREAD_EVERY: u32 = 10;

/// At most this much of a failed answer goes into `knativeerrordata` (Knative's limit).
const ERROR_DATA_MAX: usize = 1024;

/// A lane's counters.
#[derive(Debug, Default)]
pub struct LaneStats {
    pub attempts: AtomicU64,
    /// Attempts by the class of their answer: 2xx, 3xx, 4xx, 5xx, no answer.
    pub attempts_class: [AtomicU64; 5],
    /// Deliveries in flight now.
    pub in_flight: std::sync::atomic::AtomicI64,
    pub delivered: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Events parked (each time one is).
    pub parked: AtomicU64,
    /// Events the lane found gone from the log (retention) and skipped.
    pub gone: AtomicU64,
    /// Events the sink's transform sends nothing for (a preset without a counterpart).
    pub skipped: AtomicU64,
    /// Events the sink's transform failed on (each dead-lettered at once).
    pub transform_failed: AtomicU64,
    pub replies_appended: AtomicU64,
    pub replies_dropped: AtomicU64,
    pub replies_invalid: AtomicU64,
    /// Replies the dedupe window found already stored.
    pub replies_duplicate: AtomicU64,
    /// Dead letters the dead-letter sink took, and those it did not (after its retries).
    pub dead_letter_sink_delivered: AtomicU64,
    pub dead_letter_sink_failed: AtomicU64,
    /// The last failure and when (ns since the epoch).
    pub last_error: Mutex<Option<(String, u64)>>,
    /// The circuit breaker's state and since when (ns since the epoch); `None` without
    /// a breaker.
    pub breaker: Mutex<Option<(&'static str, u64)>>,
    /// Times the breaker opened.
    pub breaker_opened: AtomicU64,
    /// Whether the lane is paused (the admin API): it sends nothing, and its events wait.
    pub paused: std::sync::atomic::AtomicBool,
    /// Woken when the lane is resumed.
    pub resumed: tokio::sync::Notify,
    /// Attempts that waited for the rate limit, and how long in all (ns).
    pub rate_limited: AtomicU64,
    pub rate_limited_nanos: AtomicU64,
    /// Time from the first attempt to delivered or dead-lettered, when measured.
    pub duration: Option<prometheus::Histogram>,
}

impl LaneStats {
    /// Attempts per answer class, as the metrics label them.
    pub fn attempts_by_class(&self) -> [(&'static str, u64); 5] {
        let n = |i: usize| self.attempts_class[i].load(AtomicOrdering::Relaxed);
        [
            ("2xx", n(0)),
            ("3xx", n(1)),
            ("4xx", n(2)),
            ("5xx", n(3)),
            ("error", n(4)),
        ]
    }

    fn count_attempt(&self, attempt: Attempt) {
        let i = match attempt {
            Attempt::Status(s) if (200..300).contains(&s) => 0,
            Attempt::Status(s) if (300..400).contains(&s) => 1,
            Attempt::Status(s) if (400..500).contains(&s) => 2,
            Attempt::Status(_) => 3,
            _ => 4,
        };
        self.attempts_class[i].fetch_add(1, AtomicOrdering::Relaxed);
    }
}

/// Everything a lane's deliveries need.
pub struct LaneContext {
    pub broker: Arc<str>,
    pub lane: LaneId,
    pub subscription: Arc<crate::router::Route>,
    pub sink: Sink,
    pub log: Log,
    /// The broker's lane feeds (this lane's is attached while it runs).
    pub feeds: Arc<Feeds>,
    pub sender: Arc<Sender>,
    /// Where the sink's requests go ([`Sender::endpoint`]).
    pub endpoint: Arc<crate::delivery::connections::Endpoint>,
    pub clock: SharedClock,
    pub max_hops: u32,
    /// The dedupe key replies are appended with (`None`: dedupe is off).
    pub dedupe: Option<Arc<crate::expr::dedupe_key::DedupeKey>>,
    /// Where each attempt's span is made.
    pub spans: crate::spans::Spans,
    pub stats: Arc<LaneStats>,
    /// Cancels attempts under way: when the lane is replaced or removed, or when the
    /// shutdown grace period is over. (`stop` only ends what comes after them.)
    pub abort: CancellationToken,
    /// The lane's rate limit and circuit breaker.
    pub flow: Mutex<FlowState>,
    /// Woken when the breaker's state changes (a probe ended, it opened).
    pub flow_changed: tokio::sync::Notify,
}

/// A lane's flow control: the decisions ([`super::flow`]) and the monotonic time they
/// count from.
pub struct FlowState {
    bucket: Option<Bucket>,
    breaker: Option<Breaker>,
    origin: tokio::time::Instant,
}

impl FlowState {
    /// Flow control as `flow` configures it; a breaker's cooldown doubles up to
    /// `backoff_max`.
    pub fn new(flow: &crate::config::Flow, backoff_max: Duration) -> FlowState {
        FlowState {
            bucket: flow
                .rate_limit
                .map(|r| Bucket::new(r.per_second, r.burst, 0)),
            breaker: flow
                .circuit_breaker
                .map(|b| Breaker::new(b.failures, b.cooldown, backoff_max, 0)),
            origin: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A lane's deliveries under way, polled by the lane's own task (a task each would cost
/// a spawn and a wake-up more per delivery).
type InFlight =
    FuturesUnordered<std::pin::Pin<Box<dyn std::future::Future<Output = (u64, Outcome)> + Send>>>;

/// What flow control says about the next attempt.
enum Admission {
    Go {
        probe: bool,
    },
    /// Park the event for this long (the breaker's cooldown, or a slow rate).
    Park(Duration),
    Stopped,
}

/// How one event's delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    DeadLettered,
    /// Moved to the parked set; no longer the lane's to finish.
    Parked,
    /// No longer in the log.
    Gone,
    /// The sink's transform sends nothing for it.
    Skipped,
    /// Shutdown came first; the entry stays pending.
    Stopped,
}

fn jitter_sample(seq: u64) -> f64 {
    // A fresh RandomState is randomly keyed: enough randomness for jitter.
    let x = std::collections::hash_map::RandomState::new().hash_one(seq);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

impl LaneContext {
    fn sub(&self) -> &Subscription {
        &self.subscription.subscription
    }

    /// The message a delivery of `seq` is, to `sink`: the same id on every attempt (only
    /// a signing sink is sent it).
    fn message(&self, seq: u64, suffix: &str, sink: &Sink) -> Message {
        Message {
            id: match sink.signing {
                Some(_) => format!("{}-{seq}{suffix}", self.broker),
                None => String::new(),
            },
            unix_secs: (self.clock.now_unix_nanos() / 1_000_000_000) as i64,
            hop: None,
        }
    }

    /// What went wrong with an attempt, for the last error and the dead letter: the
    /// token endpoint's or token file's own words when the token could not be had.
    fn failure_text(&self, result: &Result<Response, Attempt>) -> String {
        failure_text(&self.sink, result)
    }

    fn note_error(&self, error: String) {
        let now = self.clock.now_unix_nanos();
        *self
            .stats
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((error, now));
    }

    /// Whether the lane has a rate limit or a breaker (most have neither, and skip it all).
    fn flow_control(&self) -> bool {
        let flow = &self.sub().delivery.flow;
        flow.rate_limit.is_some() || flow.circuit_breaker.is_some()
    }

    fn lock_flow(&self) -> std::sync::MutexGuard<'_, FlowState> {
        self.flow.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a breaker transition: logged once, shown in the stats.
    fn breaker_moved(&self, transition: Option<Transition>, breaker: &Breaker) {
        let Some(t) = transition else { return };
        let now = self.clock.now_unix_nanos();
        *self.stats.breaker.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((breaker.state().0.name(), now));
        match t {
            Transition::Opened { cooldown } => {
                self.stats
                    .breaker_opened
                    .fetch_add(1, AtomicOrdering::Relaxed);
                tracing::warn!(cooldown_ms = cooldown.as_millis() as u64, "circuit breaker opened: no attempts until the cooldown is over, then one probe");
            }
            Transition::HalfOpened => {
                tracing::info!("circuit breaker half-open: one probe goes out")
            }
            Transition::Closed => {
                tracing::info!("circuit breaker closed: the sink answered the probe")
            }
        }
        self.flow_changed.notify_waiters();
    }

    /// Waits until flow control lets an attempt out. A wait costs the event none of its
    /// retries; one longer than [`PARK_AFTER`] is not waited here but parked.
    async fn admit(&self, stop: &CancellationToken) -> Admission {
        let mut limited_since: Option<tokio::time::Instant> = None;
        loop {
            // Looked at on every turn: a lane paused while an attempt waits for a token
            // or a probe sends nothing.
            if self.stats.paused.load(AtomicOrdering::Relaxed) {
                // A shared lane's claim would run out while it waits: the entry goes
                // back, parked, and comes out again when the lane is resumed.
                if self.log.lanes().shared() {
                    return Admission::Park(Duration::ZERO);
                }
                let resumed = self.stats.resumed.notified();
                tokio::select! {
                    _ = resumed => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.cancelled() => return Admission::Stopped,
                }
                continue;
            }
            if !self.flow_control() {
                return Admission::Go { probe: false };
            }
            // Registered before the state is read, so a change in between still wakes.
            let changed = self.flow_changed.notified();
            let wait = {
                let mut flow = self.lock_flow();
                let now = flow.now();
                let FlowState {
                    bucket, breaker, ..
                } = &mut *flow;
                let (gate, transition) = match breaker.as_mut() {
                    Some(b) => b.gate(now),
                    None => (Gate::Go, None),
                };
                if let Some(b) = breaker.as_ref() {
                    self.breaker_moved(transition, b);
                }
                match gate {
                    Gate::Wait(d) => d,
                    gate => match bucket.as_mut().map(|b| b.take(now)) {
                        Some(Err(d)) => {
                            if gate == Gate::Probe {
                                if let Some(b) = breaker.as_mut() {
                                    b.abandon_probe();
                                }
                            }
                            limited_since.get_or_insert_with(tokio::time::Instant::now);
                            Some(d)
                        }
                        _ => {
                            if let Some(t) = limited_since {
                                self.stats
                                    .rate_limited
                                    .fetch_add(1, AtomicOrdering::Relaxed);
                                self.stats.rate_limited_nanos.fetch_add(
                                    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX),
                                    AtomicOrdering::Relaxed,
                                );
                            }
                            return Admission::Go {
                                probe: gate == Gate::Probe,
                            };
                        }
                    },
                }
            };
            if let Some(long) = wait.filter(|w| *w > PARK_AFTER) {
                return Admission::Park(long);
            }
            // Without a deadline (a probe is out), look again now and then anyway.
            let wait = wait.unwrap_or(Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changed => {}
                _ = stop.cancelled() => return Admission::Stopped,
            }
        }
    }

    /// Tells the breaker how an attempt ended: `Some(true)` the sink is there (any
    /// answer that is not retried), `Some(false)` a failure worth a retry, `None` no
    /// outcome (the attempt was cut short).
    fn record(&self, outcome: Option<bool>, probe: bool) {
        if self.sub().delivery.flow.circuit_breaker.is_none() {
            return;
        }
        let mut flow = self.lock_flow();
        let now = flow.now();
        let Some(breaker) = flow.breaker.as_mut() else {
            return;
        };
        match outcome {
            Some(up) => {
                let transition = breaker.record(up, probe, now);
                self.breaker_moved(transition, breaker);
            }
            None if probe => {
                breaker.abandon_probe();
                self.flow_changed.notify_waiters();
            }
            None => {}
        }
    }

    /// Runs the lane until `stop`. What to do next is the [`Schedule`]'s to decide; this
    /// loop reads and writes the lane store, starts deliveries and waits.
    pub async fn run(self: Arc<Self>, mut routed: watch::Receiver<u64>, stop: CancellationToken) {
        let delivery = &self.sub().delivery;
        let mut plan = Schedule::new(
            delivery.max_in_flight as usize,
            delivery.ordering == Ordering::Ordered,
            REREAD_EVERY,
        );
        let mut in_flight: InFlight = FuturesUnordered::new();
        *self.stats.breaker.lock().unwrap_or_else(|p| p.into_inner()) = delivery
            .flow
            .circuit_breaker
            .map(|_| ("closed", self.clock.now_unix_nanos()));
        let mut commit = tokio::time::interval(COMMIT_EVERY);
        commit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let feed = self.feeds.attach(&self.lane);
        // A shared lane (other instances take from it too) claims what it takes: it
        // asks for what it can start now, when woken or once a second for entries
        // handed back (a claim that timed out, a parked entry due).
        let lanes = self.log.lanes().clone();
        let shared = lanes.shared();
        if shared && !self.open_shared(&lanes, &stop).await {
            self.feeds.detach(&self.lane, &feed);
            return;
        }
        let mut wake = lanes.wake(&self.broker, &self.lane);
        // A pause outlives restarts: read before anything is sent.
        match lanes.paused(&self.broker).await {
            Ok(paused) => self
                .stats
                .paused
                .store(paused.contains(&self.lane), AtomicOrdering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "cannot read whether the lane is paused"),
        }
        let (mut poll, mut more, mut ticks) = (true, false, 0u32);
        loop {
            let now = self.clock.now_unix_nanos();
            // A paused lane starts nothing: its entries stay pending, and parked ones
            // stay parked, until it is resumed.
            let paused = self.stats.paused.load(AtomicOrdering::Relaxed);
            if paused {
                poll = true;
            }
            if !paused && plan.must_unpark(now) {
                match self
                    .log
                    .lanes()
                    .unpark_due(&self.broker, &self.lane, now)
                    .await
                {
                    Ok((back, next)) => plan.unparked(back, next),
                    Err(e) => tracing::warn!(error = %e, "cannot read parked entries"),
                }
            }
            let read = if paused {
                None
            } else if shared {
                let room = plan.room(stop.is_cancelled());
                (room > 0 && std::mem::take(&mut poll)).then_some((0, room))
            } else {
                match plan.take(stop.is_cancelled()) {
                    Take::Nothing => None,
                    Take::Reread { limit } => {
                        feed.turn_off();
                        Some((0, limit))
                    }
                    Take::Feed { from, limit } => match feed.take(from, limit) {
                        Some(records) => {
                            for record in records {
                                if plan.admit_fed(record.seq) {
                                    self.start(&mut in_flight, record.seq, 0, Some(record), &stop);
                                }
                            }
                            None
                        }
                        // The feed is off: the lane store has them.
                        None => Some((from, limit)),
                    },
                }
            };
            if let Some((from, limit)) = read {
                match self
                    .log
                    .lanes()
                    .entries(&self.broker, &self.lane, from, limit)
                    .await
                {
                    Ok(entries) => {
                        more = entries.len() >= limit;
                        let (start, caught_up) = plan.admit_read(entries, limit);
                        for entry in start {
                            self.start(&mut in_flight, entry.seq, entry.attempts, None, &stop);
                        }
                        if caught_up && !shared {
                            feed.turn_on(plan.scan_from());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the lane"),
                }
            }
            let park_wait = plan.park_wait(self.clock.now_unix_nanos());
            tokio::select! {
                Some((seq, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                    self.stats.in_flight.fetch_sub(1, AtomicOrdering::Relaxed);
                    plan.finished(seq, match outcome {
                        Outcome::Delivered
                        | Outcome::DeadLettered
                        | Outcome::Gone
                        | Outcome::Skipped => Finished::Done,
                        Outcome::Parked => Finished::Parked,
                        Outcome::Stopped => Finished::Stopped,
                    });
                    if shared {
                        // A claim released at once lets the next entry go (an ordered
                        // lane's next one is held back until then, fleet-wide).
                        self.commit(&mut plan).await;
                        if outcome == Outcome::Stopped && !stop.is_cancelled() {
                            // It could not be delivered now (its event could not be
                            // read): handed back to the fleet rather than kept claimed.
                            let now = self.clock.now_unix_nanos();
                            if let Err(e) = lanes.park(&self.broker, &self.lane, seq, now, 0).await {
                                tracing::warn!(seq, error = %e, "cannot hand an entry back; it returns when its claim times out");
                            }
                        }
                        poll |= more || outcome != Outcome::Stopped;
                    }
                }
                // New entries: the router wakes this lane through its feed; the broker's
                // `routed` moves for put-backs and backfills, which may lie below where
                // the lane has read.
                _ = feed.pushed() => poll = true,
                r = routed.changed() => {
                    if r.is_err() {
                        break;
                    }
                    plan.put_back();
                    poll = true;
                }
                r = changed(&mut wake) => {
                    if r.is_err() {
                        wake = None;
                    }
                    poll = true;
                }
                _ = commit.tick() => {
                    self.commit(&mut plan).await;
                    plan.ticked();
                    ticks = ticks.wrapping_add(1);
                    poll |= ticks.is_multiple_of(10);
                }
                // A paused lane unparks nothing: it waits for the resume instead.
                _ = tokio::time::sleep(park_wait.unwrap_or(Duration::from_secs(3600))), if park_wait.is_some() && !paused => {},
                _ = self.stats.resumed.notified(), if paused => poll = true,
                // With deliveries in flight, stopping waits for them: an attempt under
                // way finishes (unless aborted), then they stop at their next step and
                // leave their entries pending.
                _ = stop.cancelled(), if in_flight.is_empty() => break,
            }
        }
        self.commit(&mut plan).await;
        if shared {
            // What this instance still holds goes back to the fleet now, not when its
            // claims time out.
            let now = self.clock.now_unix_nanos();
            for seq in plan.busy().collect::<Vec<_>>() {
                let _ = lanes.park(&self.broker, &self.lane, seq, now, 0).await;
            }
        }
        self.feeds.detach(&self.lane, &feed);
        // Deliveries still in the set were dropped with it; their entries stay pending.
        self.stats.in_flight.store(0, AtomicOrdering::Relaxed);
    }

    /// Prepares a shared lane in its backend, retrying until it can or the lane
    /// stops (`false`).
    async fn open_shared(&self, lanes: &crate::log::Lanes, stop: &CancellationToken) -> bool {
        let retry = &self.sub().delivery.retry;
        let spec = LaneSpec {
            max_in_flight: self.sub().delivery.max_in_flight,
            ordered: self.sub().delivery.ordering == Ordering::Ordered,
            claim_timeout: retry.timeout + CLAIM_MARGIN,
        };
        loop {
            match lanes.open(&self.broker, &self.lane, spec).await {
                Ok(()) => return true,
                Err(e) => tracing::warn!(error = %e, "cannot open the lane; retrying in a second"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.cancelled() => return false,
            }
        }
    }

    /// Starts the delivery of `seq` (its event when the feed had it).
    fn start(
        self: &Arc<Self>,
        in_flight: &mut InFlight,
        seq: u64,
        attempts: u32,
        record: Option<Arc<LogRecord>>,
        stop: &CancellationToken,
    ) {
        let me = self.clone();
        let stop = stop.clone();
        self.stats.in_flight.fetch_add(1, AtomicOrdering::Relaxed);
        in_flight.push(Box::pin(async move {
            // A panic in a delivery must not take the lane with it (it would stay at one
            // in flight and send nothing more): the entry stays pending.
            let outcome = AssertUnwindSafe(me.deliver(seq, attempts, record, stop))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    tracing::error!(
                        seq,
                        panic = panic_text(&*panic),
                        "a delivery panicked; the event stays pending"
                    );
                    Outcome::Stopped
                });
            (seq, outcome)
        }));
    }

    async fn commit(&self, plan: &mut Schedule) {
        let seqs = plan.to_commit();
        if seqs.is_empty() {
            return;
        }
        if let Err(e) = self
            .log
            .lanes()
            .finish(&self.broker, &self.lane, &seqs)
            .await
        {
            tracing::warn!(error = %e, "cannot commit finished entries; they will be sent again");
            plan.commit_failed(seqs);
        }
    }

    /// Delivers one event: attempts with short waits in between, parking for long ones,
    /// dead-lettering at the end.
    async fn deliver(
        self: Arc<Self>,
        seq: u64,
        attempts: u32,
        record: Option<Arc<LogRecord>>,
        stop: CancellationToken,
    ) -> Outcome {
        // The feed's event, or one another lane read lately, or a read of the log.
        let read = match record.or_else(|| self.feeds.recent(seq)) {
            Some(record) => Ok(Some(record)),
            None => Box::pin(self.log.get(&self.broker, seq)).await.map(|r| {
                let record = r.map(Arc::new);
                if let Some(r) = &record {
                    self.feeds.remember(r);
                }
                record
            }),
        };
        let record = match read {
            Ok(Some(record)) => record,
            Ok(None) => {
                // Logged once per lane; every one is counted.
                if self.stats.gone.fetch_add(1, AtomicOrdering::Relaxed) == 0 {
                    tracing::warn!(seq, "an event is no longer in the log (deleted by retention, or corrupt: see the log's error) before it was delivered; skipped, and further ones are counted (outcome gone)");
                }
                return Outcome::Gone;
            }
            Err(e) => {
                tracing::warn!(seq, error = %e, "cannot read the event");
                return Outcome::Stopped;
            }
        };
        let started = std::time::Instant::now();
        // Every line logged about an event of a trace carries its trace id (a span only
        // for those: most events have none, and pay nothing).
        let span = match of_event(&record.event) {
            Some(tp) => tracing::info_span!("event", seq, trace_id = %tp.trace_id),
            None => tracing::Span::none(),
        };
        let outcome = match AssertUnwindSafe(self.attempt_until_done(&record, attempts, &stop))
            .catch_unwind()
            .instrument(span)
            .await
        {
            Ok(outcome) => outcome,
            // Trying again would panic again: the event is dead-lettered with the reason,
            // and the lane goes on with the next one.
            Err(panic) => {
                // A probe it may have held is handed on, or the breaker would wait for
                // it for good.
                if let Some(b) = self.lock_flow().breaker.as_mut() {
                    b.abandon_probe();
                }
                self.flow_changed.notify_waiters();
                let error = format!(
                    "the delivery could not be made: it panicked ({})",
                    panic_text(&*panic)
                );
                tracing::error!(seq, event_id = record.event.id(), %error, "delivery panicked");
                self.note_error(error.clone());
                Box::pin(self.dead_letter(&record, attempts + 1, &Err(Attempt::Unsendable), error))
                    .await;
                Outcome::DeadLettered
            }
        };
        if matches!(outcome, Outcome::Delivered | Outcome::DeadLettered) {
            if let Some(h) = &self.stats.duration {
                h.observe(started.elapsed().as_secs_f64());
            }
        }
        outcome
    }

    /// Sends `record` until it is delivered, dead-lettered, parked, or the lane stops.
    async fn attempt_until_done(
        &self,
        record: &LogRecord,
        mut attempts: u32,
        stop: &CancellationToken,
    ) -> Outcome {
        let seq = record.seq;
        let spec = &self.sub().delivery;
        // Shaped once: the same event makes the same request on every attempt.
        let shaped;
        let event = match &self.sink.transform {
            None => &record.event,
            Some(transform) => match transform.apply(&record.event) {
                Ok(Shaped::Event(e)) => {
                    shaped = e;
                    &*shaped
                }
                Ok(Shaped::Skipped(why)) => {
                    self.stats.skipped.fetch_add(1, AtomicOrdering::Relaxed);
                    tracing::debug!(
                        seq,
                        event_id = record.event.id(),
                        why,
                        "skipped by the sink's transform"
                    );
                    return Outcome::Skipped;
                }
                // Every attempt would fail the same way: dead-lettered now, with the reason.
                Err(e) => {
                    self.stats
                        .transform_failed
                        .fetch_add(1, AtomicOrdering::Relaxed);
                    let error = e.to_string();
                    self.note_error(error.clone());
                    Box::pin(self.dead_letter(record, attempts, &Err(Attempt::Unsendable), error))
                        .await;
                    return Outcome::DeadLettered;
                }
            },
        };
        loop {
            if stop.is_cancelled() {
                return Outcome::Stopped;
            }
            let probe = match self.admit(stop).await {
                Admission::Go { probe } => probe,
                Admission::Stopped => return Outcome::Stopped,
                Admission::Park(wait) => return Box::pin(self.park(seq, attempts, wait)).await,
            };
            attempts += 1;
            self.stats.attempts.fetch_add(1, AtomicOrdering::Relaxed);
            let mut message = self.message(seq, "", &self.sink);
            let span = self.attempt_span("deliver", &self.lane.sink, seq, attempts, record);
            message.hop = span.as_ref().map(|s| s.context().clone());
            let result = tokio::select! {
                r = self.sender.send(&self.sink, &self.endpoint, event, &message, spec.retry.timeout) => r,
                // At shutdown an attempt under way may finish (shutdown.gracePeriod).
                _ = self.abort.cancelled() => {
                    if let Some(mut span) = span {
                        span.fail("cancelled: the shutdown grace period was over");
                    }
                    self.record(None, probe);
                    return Outcome::Stopped;
                }
            };
            self.end_attempt_span(span, &self.sink, &result);
            let attempt = match &result {
                Ok(r) => Attempt::Status(r.status),
                Err(a) => *a,
            };
            self.stats.count_attempt(attempt);
            let verdict = policy::classify(attempt);
            // An attempt that reached no sink says nothing of it.
            let reached = !matches!(
                attempt,
                Attempt::Unsendable | Attempt::Refused | Attempt::Credentials
            );
            self.record(reached.then_some(verdict != Verdict::Retry), probe);
            match verdict {
                Verdict::Success => {
                    if let Ok(response) = &result {
                        if !self.handle_reply(record, response, message.hop).await {
                            // The reply could not be appended: the delivery is not done.
                            self.note_error("a reply could not be stored".into());
                            if let Some(o) =
                                self.wait_or_park(seq, attempts, None, None, stop).await
                            {
                                return o;
                            }
                            continue;
                        }
                    }
                    self.stats.delivered.fetch_add(1, AtomicOrdering::Relaxed);
                    return Outcome::Delivered;
                }
                Verdict::Retry if attempts <= spec.retry.count => {
                    let (status, retry_after) = match &result {
                        Ok(r) => (
                            Some(r.status),
                            r.headers
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| policy::retry_after(v, SystemTime::now())),
                        ),
                        Err(_) => (None, None),
                    };
                    self.note_error(self.failure_text(&result));
                    tracing::debug!(seq, event_id = record.event.id(), attempts, error = %self.failure_text(&result), "attempt failed; retrying");
                    if let Some(o) = self
                        .wait_or_park(seq, attempts, status, retry_after, stop)
                        .await
                    {
                        return o;
                    }
                }
                _ => {
                    self.note_error(self.failure_text(&result));
                    Box::pin(self.dead_letter(
                        record,
                        attempts,
                        &result,
                        self.failure_text(&result),
                    ))
                    .await;
                    return Outcome::DeadLettered;
                }
            }
        }
    }

    /// Waits before the next attempt, or parks the event when the wait is long.
    /// `Some(outcome)` ends the delivery.
    async fn wait_or_park(
        &self,
        seq: u64,
        attempts: u32,
        status: Option<u16>,
        retry_after: Option<Duration>,
        stop: &CancellationToken,
    ) -> Option<Outcome> {
        let spec = &self.sub().delivery;
        let backoff = policy::backoff(
            spec.retry.backoff_policy,
            spec.retry.backoff_delay,
            spec.retry.backoff_max,
            attempts,
            jitter_sample(seq),
        );
        let wait = policy::next_wait(backoff, status, retry_after, spec.retry.retry_after_max);
        if wait > PARK_AFTER {
            return Some(Box::pin(self.park(seq, attempts, wait)).await);
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => None,
            _ = stop.cancelled() => Some(Outcome::Stopped),
        }
    }

    /// Parks `seq` for `wait`, its `attempts` kept.
    async fn park(&self, seq: u64, attempts: u32, wait: Duration) -> Outcome {
        let due = self
            .clock
            .now_unix_nanos()
            .saturating_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX));
        match self
            .log
            .lanes()
            .park(&self.broker, &self.lane, seq, due, attempts)
            .await
        {
            Ok(()) => {
                self.stats.parked.fetch_add(1, AtomicOrdering::Relaxed);
                tracing::debug!(seq, wait_ms = wait.as_millis() as u64, "parked");
                Outcome::Parked
            }
            Err(e) => {
                tracing::warn!(seq, error = %e, "cannot park; the event stays pending");
                Outcome::Stopped
            }
        }
    }

    /// The span of attempt number `attempt` to send `record` to `sink`, when spans are
    /// exported and the event has trace context.
    fn attempt_span(
        &self,
        kind: &str,
        sink: &str,
        seq: u64,
        attempt: u32,
        record: &LogRecord,
    ) -> Option<OpenSpan> {
        let target = Target {
            broker: &self.broker,
            subscription: &self.sub().name,
            sink,
            seq,
            attempt,
        };
        self.spans.attempt(kind, &target, &record.event)
    }

    /// Ends the span of an attempt to send to `sink` with its answer, failed unless the
    /// answer is a success.
    fn end_attempt_span(
        &self,
        span: Option<OpenSpan>,
        sink: &Sink,
        result: &Result<Response, Attempt>,
    ) {
        let Some(mut span) = span else {
            return;
        };
        let attempt = match result {
            Ok(r) => {
                span.set("http.response.status_code", i64::from(r.status));
                Attempt::Status(r.status)
            }
            Err(a) => *a,
        };
        if policy::classify(attempt) != Verdict::Success {
            span.fail(failure_text(sink, result));
        }
        span.end();
    }

    /// Appends a reply when there is one. `false` when a reply could not be stored.
    /// `hop` is the trace context of the attempt answered (its span, when spans are
    /// exported): the reply's, unless the reply names its own.
    async fn handle_reply(
        &self,
        record: &LogRecord,
        response: &Response,
        hop: Option<TraceParent>,
    ) -> bool {
        // A plain sink is no CloudEvents consumer: its answers are not replies.
        if self.sub().reply == ReplyMode::Ignore || self.sink.format == SinkFormat::Plain {
            return true;
        }
        match reply::parse(response) {
            Reply::None => true,
            Reply::Invalid(why) => {
                self.stats
                    .replies_invalid
                    .fetch_add(1, AtomicOrdering::Relaxed);
                tracing::warn!(
                    seq = record.seq,
                    event_id = record.event.id(),
                    why,
                    "the sink replied with an invalid CloudEvent; ignored"
                );
                true
            }
            Reply::Event(event) => {
                let hops = record.hops + 1;
                if hops > self.max_hops {
                    self.stats
                        .replies_dropped
                        .fetch_add(1, AtomicOrdering::Relaxed);
                    tracing::warn!(
                        seq = record.seq,
                        event_id = record.event.id(),
                        hops,
                        reply_id = event.id(),
                        "reply dropped at the hop limit (replies.maxHops)"
                    );
                    return true;
                }
                // The reply is the next hop of the event's trace, unless it names its own.
                let hop = hop.or_else(|| of_event(&record.event).map(|tp| tp.child()));
                let event = match hop {
                    Some(tp) => crate::http::trace::with_trace_context(
                        event,
                        &tp,
                        record.event.get_str(crate::http::trace::TRACESTATE),
                    ),
                    None => event,
                };
                // Deduplicated as the ingress's events are: a sink that replies to a
                // redelivered event makes no second reply downstream.
                let dedupe_key = self.dedupe.as_ref().and_then(|k| k.key(&event).ok());
                let append = NewEvent {
                    event,
                    hops,
                    dedupe_key,
                };
                // Boxed: a reply is rare, and every delivery's state would hold the append's.
                match Box::pin(self.log.append(self.broker.clone(), vec![append])).await {
                    Ok(outcomes) => {
                        let counter = match outcomes.first() {
                            Some(AppendOutcome::Duplicate(_)) => &self.stats.replies_duplicate,
                            _ => &self.stats.replies_appended,
                        };
                        counter.fetch_add(1, AtomicOrdering::Relaxed);
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot append the reply");
                        false
                    }
                }
            }
        }
    }

    /// Keeps the event in the dead-letter store, then sends it to the dead-letter sink
    /// (if any) with Knative's error extensions, retried with the same policy.
    async fn dead_letter(
        &self,
        record: &LogRecord,
        attempts: u32,
        last: &Result<Response, Attempt>,
        error: String,
    ) {
        self.stats
            .dead_lettered
            .fetch_add(1, AtomicOrdering::Relaxed);
        let (status, body) = match last {
            Ok(r) => (Some(r.status), r.body.clone()),
            Err(_) => (None, Bytes::new()),
        };
        let mut letter = DeadLetter {
            broker: self.broker.to_string(),
            subscription: self.sub().name.clone(),
            sink: self.lane.sink.clone(),
            seq: record.seq,
            attempts,
            last_status: status,
            last_error: error,
            time_unix_nanos: self.clock.now_unix_nanos(),
            record: record::to_base64(record),
            dead_letter_sink_delivered: false,
        };
        if let Some(dls) = self.sub().delivery.dead_letter_sink.clone() {
            let event = with_error_extensions(&record.event, &self.lane.sink, status, &body);
            letter.dead_letter_sink_delivered = self.send_dead_letter(&dls, &event, record).await;
            let counter = if letter.dead_letter_sink_delivered {
                &self.stats.dead_letter_sink_delivered
            } else {
                &self.stats.dead_letter_sink_failed
            };
            counter.fetch_add(1, AtomicOrdering::Relaxed);
        }
        tracing::warn!(seq = record.seq, event_id = record.event.id(), attempts, error = %letter.last_error, to_sink = letter.dead_letter_sink_delivered, "dead-lettered");
        if let Err(e) = self.log.dead_letters().store(&letter).await {
            tracing::error!(seq = record.seq, event_id = record.event.id(), error = %e, "cannot store the dead letter");
        }
    }

    /// Sends `event` (the dead letter of `record`) to the dead-letter sink.
    async fn send_dead_letter(&self, dls: &Sink, event: &Event, record: &LogRecord) -> bool {
        let (seq, spec) = (record.seq, &self.sub().delivery);
        let shaped;
        let event = match &dls.transform {
            None => event,
            Some(transform) => match transform.apply(event) {
                Ok(Shaped::Event(e)) => {
                    shaped = e;
                    &*shaped
                }
                Ok(Shaped::Skipped(_)) => return true,
                Err(e) => {
                    tracing::warn!(seq, event_id = event.id(), error = %e, "the dead-letter sink's transform failed; the dead letter is in the store only");
                    return false;
                }
            },
        };
        for attempt in 1..=spec.retry.count + 1 {
            let mut message = self.message(seq, "-dead-letter", dls);
            let uri = dls.uri.to_string();
            let span = self.attempt_span("dead-letter", &uri, seq, attempt, record);
            message.hop = span.as_ref().map(|s| s.context().clone());
            let endpoint = self.sender.endpoint(dls);
            let result = self
                .sender
                .send(dls, &endpoint, event, &message, spec.retry.timeout)
                .await;
            self.end_attempt_span(span, dls, &result);
            match result {
                Ok(r) if policy::classify(Attempt::Status(r.status)) == Verdict::Success => {
                    return true
                }
                Ok(r) if policy::classify(Attempt::Status(r.status)) == Verdict::Permanent => {
                    return false
                }
                _ => {}
            }
            if attempt <= spec.retry.count {
                // The dead-letter path waits in place, each wait capped at the park threshold.
                let wait = policy::backoff(
                    spec.retry.backoff_policy,
                    spec.retry.backoff_delay,
                    spec.retry.backoff_max,
                    attempt,
                    jitter_sample(seq),
                );
                tokio::time::sleep(wait.min(PARK_AFTER)).await;
            }
        }
        false
    }
}

/// What went wrong with an attempt to send to `sink`: the token endpoint's or token
/// file's own words when the token could not be had.
fn failure_text(sink: &Sink, result: &Result<Response, Attempt>) -> String {
    if let (Err(Attempt::Credentials), Some(auth)) = (result, &sink.auth) {
        if let Some(why) = super::auth::last_failure(auth) {
            return why;
        }
    }
    describe(result)
}

/// Resolves when `wake` moves (never without one).
async fn changed(wake: &mut Option<watch::Receiver<u64>>) -> Result<(), watch::error::RecvError> {
    match wake {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

fn describe(result: &Result<Response, Attempt>) -> String {
    match result {
        Ok(r) => format!("HTTP {}", r.status),
        Err(Attempt::ConnectError) => "connection failed".into(),
        Err(Attempt::Timeout) => "timed out".into(),
        Err(Attempt::Broken) => "connection broken".into(),
        Err(Attempt::Refused) => "refused: the sink's address is a cloud metadata address or the broker's admin listener (see delivery.allowAddresses)".into(),
        Err(Attempt::Unsendable) => super::client::Unsendable.to_string(),
        Err(Attempt::Credentials) => "the sink's token could not be had".into(),
        Err(Attempt::Status(s)) => format!("HTTP {s}"),
    }
}

/// The message a panic carried.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// The event as the dead-letter sink gets it: Knative's `knativeerrordest` (the sink),
/// `knativeerrorcode` (the last status) and `knativeerrordata` (base64 of at most 1024
/// bytes of the last answer's body) added.
pub fn with_error_extensions(event: &Event, sink: &str, status: Option<u16>, body: &[u8]) -> Event {
    let (mut attributes, data) = event.clone().into_parts();
    attributes.retain(|(n, _)| !n.starts_with("knativeerror"));
    attributes.push((
        "knativeerrordest".into(),
        AttrValue::String(crate::http::redact::redact(sink).into_owned()),
    ));
    if let Some(s) = status {
        attributes.push(("knativeerrorcode".into(), AttrValue::Integer(i32::from(s))));
    }
    if !body.is_empty() {
        let data = base64::engine::general_purpose::STANDARD
            .encode(&body[..body.len().min(ERROR_DATA_MAX)]);
        attributes.push(("knativeerrordata".into(), AttrValue::String(data)));
    }
    Event::new(attributes, data).unwrap_or_else(|_| event.clone())
}
