//! Routing: one router per broker reads the log from its own cursor, decides every
//! subscription once per event with one shared activation, and records each match in
//! the lane of every sink of that subscription. The lane entries are stored before the
//! cursor moves past them, so a crash never loses a decision (one it interrupts is made
//! again); then the router hands the entries, events included, to the running lanes'
//! feeds ([`feed`]).
//!
//! A new subscription starts per its `startFrom` (`latest`: with the next event;
//! `earliest` or a time: a backfill from the retained log, recorded step by step the
//! same way). A removed subscription takes its lanes with it; their pending entries
//! are counted as dropped.

pub mod explain;
pub mod feed;
pub mod reconcile;
pub mod reload;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cel::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::subscriptions::{StartFrom, Subscription};
use crate::event::Event;
use crate::expr::activation::{self, Needs};
use crate::expr::filter::Decision;
use crate::log::{LaneId, Lanes, Log, LogError, RouteProgress, SubscriptionState};
use crate::spans::Spans;
use feed::Feeds;

/// Decides every route for one event with one shared activation: `data` is parsed at
/// most once, and only when some filter reads it.
/// `base` is [`activation::base`], built once by the caller and shared by its events.
pub fn decide_all(
    base: &Context<'static, 'static>,
    routes: &[Arc<Route>],
    needs: &Needs,
    event: &Event,
    mut each: impl FnMut(&Route, Decision),
) {
    let data = if needs.data {
        activation::parse_data(event)
    } else {
        None
    };
    let act = activation::activation(base, event, data.as_ref(), needs);
    let input = crate::expr::cost::Input::new(event, data.as_ref());
    for route in routes {
        each(route, route.subscription.filter.decide(&input, &act));
    }
}

/// Events a router decides per step (one read, one write of entries and cursor).
const BATCH: usize = 256;

/// A subscription as the router holds it: the config, its lanes and its counters.
pub struct Route {
    pub subscription: Subscription,
    pub lanes: Vec<LaneId>,
    pub stats: Arc<RouteStats>,
}

/// The running set of subscriptions, grouped by broker.
#[derive(Default)]
pub struct RouteSet {
    by_broker: HashMap<String, (Vec<Arc<Route>>, Needs)>,
}

impl RouteSet {
    /// Groups `subscriptions` by broker; counters come from `stats` (kept by name, so
    /// they survive reloads).
    pub fn new(subscriptions: Vec<Subscription>, stats: &StatsMap) -> Self {
        let mut by_broker: HashMap<String, (Vec<Arc<Route>>, Needs)> = HashMap::new();
        for s in subscriptions {
            let lanes = s
                .sinks
                .iter()
                .map(|k| LaneId::new(s.name.clone(), k.uri.to_string()))
                .collect();
            let entry = by_broker.entry(s.broker.clone()).or_default();
            if let Some(c) = &s.filter.cel {
                entry.1.add(c.variables());
            }
            let stats = stats_for(stats, &s.name);
            entry.0.push(Arc::new(Route {
                subscription: s,
                lanes,
                stats,
            }));
        }
        RouteSet { by_broker }
    }

    /// The routes of one broker and what their filters read.
    pub fn broker(&self, broker: &str) -> (&[Arc<Route>], Needs) {
        match self.by_broker.get(broker) {
            Some((routes, needs)) => (routes, needs.clone()),
            None => (&[], Needs::default()),
        }
    }

    /// Every route: by broker name, each broker's in the files' order (so that what
    /// lists them, `explain` and the admin API, lists them the same way every time).
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        let mut brokers: Vec<_> = self.by_broker.iter().collect();
        brokers.sort_unstable_by(|a, b| a.0.cmp(b.0));
        brokers.into_iter().flat_map(|(_, (r, _))| r.iter())
    }

    pub fn len(&self) -> usize {
        self.by_broker.values().map(|(r, _)| r.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counters of one subscription's filter results.
#[derive(Debug, Default)]
pub struct RouteStats {
    pub matched: AtomicU64,
    pub not_matched: AtomicU64,
    /// CEL errors and non-boolean results (counted as no match).
    pub errors: AtomicU64,
    /// Pending lane entries dropped when the subscription or a sink was removed.
    pub dropped: AtomicU64,
}

/// Every subscription's counters, by name.
pub type StatsMap = Arc<Mutex<HashMap<String, Arc<RouteStats>>>>;

fn stats_for(map: &StatsMap, name: &str) -> Arc<RouteStats> {
    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
    m.entry(name.to_string()).or_default().clone()
}

/// The handle on the routers: swap the subscription set, read counters and lanes.
pub struct Routing {
    set: watch::Sender<Arc<RouteSet>>,
    stats: StatsMap,
    log: Log,
    /// Per broker, bumped whenever lane entries were written below where lanes may
    /// have read (a backfill, a replay, a redelivery); new entries wake their lanes
    /// through the feeds.
    routed: HashMap<String, watch::Sender<u64>>,
    /// Per broker, the feeds of its running lanes.
    feeds: HashMap<String, Arc<Feeds>>,
}

impl Routing {
    /// Starts one router per broker of `log`.
    pub fn start(
        log: Log,
        subscriptions: Vec<Subscription>,
        spans: Spans,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Routing {
        let stats: StatsMap = Arc::default();
        let (tx, _) = watch::channel(Arc::new(RouteSet::new(subscriptions, &stats)));
        let mut routed = HashMap::new();
        let mut feeds = HashMap::new();
        for broker in log.brokers() {
            let routed_tx = watch::Sender::new(0);
            routed.insert(broker.to_string(), routed_tx.clone());
            let broker_feeds = Arc::new(Feeds::default());
            feeds.insert(broker.to_string(), broker_feeds.clone());
            let router = BrokerRouter {
                broker: broker.to_string(),
                log: log.clone(),
                stats: stats.clone(),
                routed: routed_tx,
                feeds: broker_feeds,
                backfills: Mutex::default(),
                spans: spans.clone(),
            };
            crate::runtime::spawn_thread(
                &format!("router-{broker}"),
                tracker,
                router.run(tx.subscribe(), shutdown.clone()),
            );
        }
        Routing {
            routed,
            feeds,
            set: tx,
            stats,
            log,
        }
    }

    /// Replaces the running set; each router reconciles before its next step, so an
    /// event appended after this returns is decided by the new set.
    pub fn replace(&self, subscriptions: Vec<Subscription>) {
        self.set
            .send_replace(Arc::new(RouteSet::new(subscriptions, &self.stats)));
    }

    /// A receiver that sees the running set change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<RouteSet>> {
        self.set.subscribe()
    }

    /// Wakes the broker's deliverers: lane entries were written outside the router (a
    /// replay, a redelivery), possibly below where the lanes have read.
    pub fn notify_routed(&self, broker: &str) {
        if let Some(tx) = self.routed.get(broker) {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// A receiver that moves whenever entries were put back into the broker's lanes
    /// (a backfill step, a replay, a redelivery).
    pub fn routed(&self, broker: &str) -> Option<watch::Receiver<u64>> {
        self.routed.get(broker).map(watch::Sender::subscribe)
    }

    /// The feeds of the broker's running lanes.
    pub fn feeds(&self, broker: &str) -> Option<Arc<Feeds>> {
        self.feeds.get(broker).cloned()
    }

    /// The running set.
    pub fn current(&self) -> Arc<RouteSet> {
        self.set.borrow().clone()
    }

    /// A subscription's counters.
    pub fn stats(&self, subscription: &str) -> Arc<RouteStats> {
        stats_for(&self.stats, subscription)
    }

    /// A lane's pending sequence numbers (for tests and for the deliverer).
    pub async fn lane_pending(
        &self,
        broker: &str,
        lane: &LaneId,
        limit: usize,
    ) -> Result<Vec<u64>, LogError> {
        self.log.lanes().pending(broker, lane, limit).await
    }
}

struct BrokerRouter {
    broker: String,
    log: Log,
    stats: StatsMap,
    routed: watch::Sender<u64>,
    feeds: Arc<Feeds>,
    /// The subscriptions with a backfill still to do, as last stored: read back after
    /// each reconcile and kept up to date by each backfill step (this router is the
    /// only writer of its broker's subscription states), so that a step does not read
    /// every subscription's state from the lane store.
    backfills: Mutex<Vec<(String, SubscriptionState)>>,
    spans: Spans,
}

/// What deciding a run of events made: the lane entries, and with spans on each
/// event's decision, for its route span once the entries are stored.
#[derive(Default)]
struct Decided<'a> {
    entries: Vec<(LaneId, u64)>,
    spans: Vec<RouteSpan<'a>>,
}

struct RouteSpan<'a> {
    event: &'a Event,
    seq: u64,
    started: std::time::SystemTime,
    ended: std::time::SystemTime,
    matched: usize,
    entries: usize,
}

/// What one step did.
enum Step {
    /// Routed or backfilled something; go again.
    Progress,
    /// Nothing to do until the head or the set moves; everything up to this
    /// sequence is decided.
    Idle(u64),
}

impl BrokerRouter {
    async fn run(self, mut set_rx: watch::Receiver<Arc<RouteSet>>, shutdown: CancellationToken) {
        let Some(mut head) = self.log.watch(&self.broker) else {
            return;
        };
        // This loop has a thread of its own (`runtime::spawn_thread`): the embedded
        // backend answers each step's reads and lane writes in place, on it.
        let lanes = self.log.lanes().clone();
        let mut set = set_rx.borrow_and_update().clone();
        let mut reconciled = false;
        // Of instances sharing the lanes, the one holding the lease routes.
        let mut leading = lanes.leadership(&self.broker);
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if let Some(rx) = &mut leading {
                if !*rx.borrow_and_update() {
                    // Whoever routed meanwhile may have changed the stored state.
                    reconciled = false;
                    tokio::select! {
                        r = rx.changed() => if r.is_err() { break },
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
            }
            // A set replaced before an event was appended must decide that event.
            if set_rx.has_changed().unwrap_or(false) {
                set = set_rx.borrow_and_update().clone();
                reconciled = false;
            }
            let step = if reconciled {
                self.step(&lanes, &set).await
            } else {
                match self.reconcile(&lanes, &set).await {
                    Ok(()) => self.step(&lanes, &set).await,
                    Err(e) => Err(e),
                }
            };
            match step {
                Ok(Step::Progress) => {
                    reconciled = true;
                    continue;
                }
                Ok(Step::Idle(cursor)) => {
                    reconciled = true;
                    tracing::debug!(broker = %self.broker, cursor, "router idle");
                }
                Err(e) => {
                    tracing::error!(broker = %self.broker, error = %e, "routing failed; retrying in a second");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {},
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
            }
            tokio::select! {
                biased;
                r = set_rx.changed() => {
                    if r.is_err() { break }
                    set = set_rx.borrow_and_update().clone();
                    reconciled = false;
                }
                r = head.changed() => if r.is_err() { break },
                r = lost(&mut leading) => if r.is_err() { break },
                _ = shutdown.cancelled() => break,
            }
        }
    }

    /// Brings the stored routing state in line with `set` ([`reconcile::diff`]): drops
    /// removed subscriptions and sinks, registers new subscriptions with their backfill.
    async fn reconcile(&self, lanes: &Lanes, set: &RouteSet) -> Result<(), LogError> {
        let (routes, _) = set.broker(&self.broker);
        let known: HashMap<String, SubscriptionState> = lanes
            .subscription_states(&self.broker)
            .await?
            .into_iter()
            .collect();
        let wanted: Vec<reconcile::Wanted> = routes
            .iter()
            .map(|r| reconcile::Wanted {
                name: r.subscription.name.clone(),
                sinks: r.lanes.iter().map(|l| l.sink.clone()).collect(),
                start_from: r.subscription.start_from,
            })
            .collect();
        let cursor = lanes.router_cursor(&self.broker).await?;
        for change in reconcile::diff(&known, &wanted) {
            let (name, state) = match change {
                reconcile::Change::Remove { subscription } => {
                    let dropped = lanes.drop_lanes(&self.broker, &subscription, None).await?;
                    stats_for(&self.stats, &subscription)
                        .dropped
                        .fetch_add(dropped as u64, Ordering::Relaxed);
                    tracing::info!(broker = %self.broker, subscription = %subscription, dropped, "subscription removed; its pending lane entries were dropped");
                    continue;
                }
                reconcile::Change::DropSinks {
                    subscription,
                    sinks,
                } => {
                    let dropped = lanes
                        .drop_lanes(&self.broker, &subscription, Some(&sinks))
                        .await?;
                    stats_for(&self.stats, &subscription)
                        .dropped
                        .fetch_add(dropped as u64, Ordering::Relaxed);
                    let gone: Vec<_> = sinks
                        .iter()
                        .map(|s| crate::http::redact::redact(s))
                        .collect();
                    tracing::info!(subscription = %subscription, sinks = ?gone, dropped, "sinks removed; their pending lane entries were dropped");
                    continue;
                }
                reconcile::Change::Update {
                    subscription,
                    state,
                } => (subscription, state),
                reconcile::Change::Add {
                    subscription,
                    sinks,
                    start_from,
                } => {
                    let from = match start_from {
                        StartFrom::Latest => cursor + 1,
                        StartFrom::Earliest => 1,
                        StartFrom::Time(t) => self.log.seq_at_time(&self.broker, t).await?,
                    };
                    let state = reconcile::added(sinks, from, cursor);
                    tracing::info!(broker = %self.broker, subscription = %subscription, backfill = ?state.backfill, "subscription added");
                    (subscription, state)
                }
            };
            lanes
                .record_routes(&self.broker, &[], &RouteProgress::Subscription(name, state))
                .await?;
        }
        *self.backfills.lock().unwrap_or_else(|p| p.into_inner()) = lanes
            .subscription_states(&self.broker)
            .await?
            .into_iter()
            .filter(|(_, state)| state.backfill.is_some())
            .collect();
        Ok(())
    }

    /// Decides `routes` for one event, counts each decision, and collects the lane entries
    /// of the matches (and, with spans on, the decision for the event's route span).
    fn collect<'a>(
        &self,
        base: &Context<'static, 'static>,
        routes: &[Arc<Route>],
        needs: &Needs,
        event: &'a Event,
        seq: u64,
        out: &mut Decided<'a>,
    ) {
        let started = self.spans.on().then(std::time::SystemTime::now);
        let (before, mut matched) = (out.entries.len(), 0);
        decide_all(base, routes, needs, event, |route, decision| {
            let counter = match decision {
                Decision::Match => {
                    matched += 1;
                    out.entries
                        .extend(route.lanes.iter().map(|l| (l.clone(), seq)));
                    &route.stats.matched
                }
                Decision::NoMatch => &route.stats.not_matched,
                Decision::Error => &route.stats.errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
        if let Some(started) = started {
            out.spans.push(RouteSpan {
                event,
                seq,
                started,
                ended: std::time::SystemTime::now(),
                matched,
                entries: out.entries.len() - before,
            });
        }
    }

    /// Exports the route spans of decisions now stored (a step that fails is decided
    /// again, and spans only what it stored).
    fn spans_of(&self, decided: &Decided<'_>, backfill: bool) {
        for s in &decided.spans {
            self.spans.route(
                &crate::spans::Route {
                    broker: &self.broker,
                    seq: s.seq,
                    started: s.started,
                    ended: s.ended,
                    matched: s.matched,
                    entries: s.entries,
                    backfill,
                },
                s.event,
            );
        }
    }

    /// One step: a backfill chunk if any is pending, else the next batch of new events.
    async fn step(&self, lanes: &Lanes, set: &RouteSet) -> Result<Step, LogError> {
        let (routes, needs) = set.broker(&self.broker);
        let backfills = self
            .backfills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (name, state) in backfills {
            let Some((next, end)) = state.backfill else {
                continue;
            };
            let Some(route) = routes.iter().find(|r| r.subscription.name == name) else {
                continue;
            };
            let records = self
                .log
                .read(&self.broker, next, BATCH.min((end - next + 1) as usize))
                .await?;
            let mut sub_needs = Needs::default();
            if let Some(c) = &route.subscription.filter.cel {
                sub_needs.add(c.variables());
            }
            let mut decided = Decided::default();
            let mut last = next.saturating_sub(1);
            {
                let base = activation::base();
                for r in records.iter().filter(|r| r.seq <= end) {
                    self.collect(
                        &base,
                        std::slice::from_ref(route),
                        &sub_needs,
                        &r.event,
                        r.seq,
                        &mut decided,
                    );
                    last = r.seq;
                }
            }
            // Records may be gone (retention): the chunk still ends where it was asked to.
            if records.is_empty() || last < next {
                last = (next + BATCH as u64 - 1).min(end);
            }
            let backfill = (last < end).then_some((last + 1, end));
            let new_state = SubscriptionState {
                sinks: state.sinks,
                backfill,
            };
            lanes
                .record_routes(
                    &self.broker,
                    &decided.entries,
                    &RouteProgress::Subscription(name.clone(), new_state.clone()),
                )
                .await?;
            self.spans_of(&decided, true);
            let mut cached = self.backfills.lock().unwrap_or_else(|p| p.into_inner());
            cached.retain(|(n, _)| *n != name);
            if new_state.backfill.is_some() {
                cached.push((name, new_state));
            }
            if !decided.entries.is_empty() {
                // Below where the lanes have read: they read the store for these.
                self.routed.send_modify(|n| *n += 1);
            }
            return Ok(Step::Progress);
        }
        let cursor = lanes.router_cursor(&self.broker).await?;
        let head = self.log.head(&self.broker).unwrap_or(0);
        if head <= cursor {
            return Ok(Step::Idle(cursor));
        }
        // The records just stored, as the ingress decoded them, when the router keeps up;
        // else read back from the log.
        let mut records = self.log.take_fresh(&self.broker, cursor + 1, BATCH);
        if records.is_empty() {
            records = self
                .log
                .read(&self.broker, cursor + 1, BATCH)
                .await?
                .into_iter()
                .map(Arc::new)
                .collect();
        }
        let mut decided = Decided::default();
        let mut last = cursor;
        {
            let base = activation::base();
            for r in &records {
                self.collect(&base, routes, &needs, &r.event, r.seq, &mut decided);
                last = r.seq;
            }
        }
        if records.is_empty() {
            last = head.min(cursor + BATCH as u64);
        }
        lanes
            .record_routes(&self.broker, &decided.entries, &RouteProgress::Cursor(last))
            .await?;
        self.spans_of(&decided, false);
        // Wakes each lane that got entries (and only those).
        self.feeds.push(&decided.entries, &records);
        Ok(Step::Progress)
    }
}

/// Resolves when the leadership changes (never where every instance leads).
async fn lost(leading: &mut Option<watch::Receiver<bool>>) -> Result<(), watch::error::RecvError> {
    match leading {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}
