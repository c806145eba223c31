//! The scrape-time view: routers' and lanes' counters and the log's positions, read
//! when Prometheus scrapes `/metrics`, so that no signal has two owners. The names,
//! help texts and labels are `metrics::STATE`'s.
//!
//! The log's part is asked through its handles, which may await, before the registry
//! is rendered ([`StateCollector::refresh`]); the collector then reads that snapshot.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};

use crate::clock::SharedClock;
use crate::delivery::Delivery;
use crate::log::{BrokerStats, LaneDepth, LaneId, Log};
use crate::metrics::{counter, state, state_descs};
use crate::router::reload::Reloader;
use crate::router::Routing;

/// Reads routers' and lanes' counters and the log's positions at scrape time.
pub struct StateCollector {
    log: Log,
    routing: Arc<Routing>,
    delivery: Arc<Delivery>,
    reloader: Arc<Reloader>,
    clock: SharedClock,
    descs: Vec<Desc>,
    snapshot: Mutex<LogSnapshot>,
    storage: Storage,
}

/// The storage bounds the alerts compare the log with.
#[derive(Debug, Clone, Default)]
pub struct Storage {
    /// The folder whose filesystem the log writes to (the embedded backend's
    /// `storage.path`); `None` on a backend a network away.
    pub path: Option<std::path::PathBuf>,
    /// `storage.minFreeBytes` (0: off).
    pub min_free_bytes: u64,
    /// `storage.retention.maxBytes` (0: no bound).
    pub max_bytes: u64,
}

/// What the log said at the last refresh.
#[derive(Default)]
struct LogSnapshot {
    /// Per broker: head, router cursor, stats.
    brokers: Vec<(Arc<str>, u64, u64, BrokerStats)>,
    disk_bytes: u64,
    /// The log's filesystem: free bytes and size, where it has one.
    filesystem: Option<(u64, u64)>,
    /// Per (broker, lane): what it holds, and the arrival of its oldest event.
    lanes: HashMap<(String, LaneId), (LaneDepth, Option<u64>)>,
    dead_letters: u64,
}

impl StateCollector {
    pub fn new(
        log: Log,
        routing: Arc<Routing>,
        delivery: Arc<Delivery>,
        reloader: Arc<Reloader>,
        clock: SharedClock,
    ) -> StateCollector {
        StateCollector {
            log,
            routing,
            delivery,
            reloader,
            clock,
            descs: state_descs(),
            snapshot: Mutex::default(),
            storage: Storage::default(),
        }
    }

    /// Reports `storage`'s bounds, and the free space of its filesystem at each refresh.
    pub fn with_storage(mut self, storage: Storage) -> StateCollector {
        self.storage = storage;
        self
    }

    /// Asks the log for its part of the next scrape. A part the log cannot answer
    /// reads as zero.
    pub async fn refresh(&self) {
        let mut next = LogSnapshot::default();
        for broker in self.log.brokers() {
            let head = self.log.head(broker).unwrap_or(0);
            let cursor = self.log.lanes().router_cursor(broker).await.unwrap_or(0);
            let stats = self.log.stats(broker).await.unwrap_or_default();
            next.brokers.push((broker.clone(), head, cursor, stats));
        }
        next.disk_bytes = self.log.disk_bytes().await.unwrap_or(0);
        if let Some(path) = self.storage.path.clone() {
            // statvfs is a system call, and on a network filesystem a slow one.
            next.filesystem = tokio::task::spawn_blocking(move || {
                Some((
                    crate::log::free_bytes(&path).ok()?,
                    crate::log::total_bytes(&path).ok()?,
                ))
            })
            .await
            .ok()
            .flatten();
        }
        let set = self.routing.current();
        for route in set.routes() {
            let broker = &route.subscription.broker;
            for lane in &route.lanes {
                let depth = self
                    .log
                    .lanes()
                    .depth(broker, lane)
                    .await
                    .unwrap_or_default();
                let arrival = match depth.oldest {
                    Some(seq) => self
                        .log
                        .get(broker, seq)
                        .await
                        .ok()
                        .flatten()
                        .map(|r| r.arrival_unix_nanos),
                    None => None,
                };
                next.lanes
                    .insert((broker.clone(), lane.clone()), (depth, arrival));
            }
        }
        next.dead_letters = self.log.dead_letters().count().await.unwrap_or(0);
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = next;
    }
}

/// The collector registered with the metrics: the shared view.
pub struct Registered(pub Arc<StateCollector>);

impl Collector for Registered {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let gauge = |name: &str| {
            let (n, d, l) = state(name);
            IntGaugeVec::new(Opts::new(n, d), l).expect("a valid metric")
        };
        let count = |name: &str| {
            let (n, d, l) = state(name);
            counter(n, d, l)
        };
        let head = gauge("switchyard_log_head_sequence");
        let lag = gauge("switchyard_router_lag_events");
        let filter = count("switchyard_router_filter_results_total");
        let dropped = count("switchyard_router_dropped_entries_total");
        let attempts = count("switchyard_delivery_attempts_total");
        let outcomes = count("switchyard_deliveries_total");
        let parked = count("switchyard_lane_parked_total");
        let transform_failures = count("switchyard_transform_failures_total");
        let circuit = gauge("switchyard_lane_circuit_state");
        let circuit_opened = count("switchyard_lane_circuit_opened_total");
        let rate_limited = count("switchyard_lane_rate_limited_total");
        let rate_limited_seconds = {
            let (n, d, l) = state("switchyard_lane_rate_limited_seconds_total");
            prometheus::CounterVec::new(Opts::new(n, d), l).expect("a valid metric")
        };
        let in_flight = gauge("switchyard_lane_in_flight");
        let replies = count("switchyard_replies_total");
        let dls = count("switchyard_deadletter_sink_deliveries_total");
        let dead = gauge("switchyard_deadletter_store_entries");
        let reloads = count("switchyard_subscription_reloads_total");
        let stored_events = gauge("switchyard_log_stored_events");
        let stored_bytes = gauge("switchyard_log_stored_bytes");
        let disk = gauge("switchyard_log_disk_bytes");
        let fs_free = gauge("switchyard_log_filesystem_free_bytes");
        let fs_size = gauge("switchyard_log_filesystem_size_bytes");
        let min_free = gauge("switchyard_log_min_free_bytes");
        let max_bytes = gauge("switchyard_log_retention_max_bytes");
        let lane_lag = gauge("switchyard_lane_lag_events");
        let oldest = {
            let (n, d, l) = state("switchyard_lane_oldest_pending_age_seconds");
            prometheus::GaugeVec::new(Opts::new(n, d), l).expect("a valid metric")
        };
        let parked_now = gauge("switchyard_lane_parked_events");
        let damaged = gauge("switchyard_log_damaged_records");
        let dedupe = gauge("switchyard_dedupe_entries");
        reloads
            .with_label_values(&["applied"])
            .inc_by(self.reloader.applied.load(Ordering::Relaxed));
        reloads
            .with_label_values(&["rejected"])
            .inc_by(self.reloader.failures.load(Ordering::Relaxed));

        let snapshot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        for (broker, top, cursor, stats) in &snapshot.brokers {
            let broker: &str = broker;
            head.with_label_values(&[broker]).set(*top as i64);
            lag.with_label_values(&[broker])
                .set(top.saturating_sub(*cursor) as i64);
            damaged
                .with_label_values(&[broker, "corrupt"])
                .set(stats.damage.corrupt as i64);
            damaged
                .with_label_values(&[broker, "lost"])
                .set(stats.damage.lost as i64);
            stored_events
                .with_label_values(&[broker])
                .set(stats.stored.events as i64);
            stored_bytes
                .with_label_values(&[broker])
                .set(stats.stored.bytes as i64);
            dedupe
                .with_label_values(&[broker])
                .set(stats.dedupe_entries as i64);
        }
        disk.with_label_values::<&str>(&[])
            .set(snapshot.disk_bytes as i64);
        if let Some((free, size)) = snapshot.filesystem {
            fs_free.with_label_values::<&str>(&[]).set(free as i64);
            fs_size.with_label_values::<&str>(&[]).set(size as i64);
        }
        if self.storage.path.is_some() {
            min_free
                .with_label_values::<&str>(&[])
                .set(self.storage.min_free_bytes as i64);
        }
        max_bytes
            .with_label_values::<&str>(&[])
            .set(self.storage.max_bytes as i64);
        let now = self.clock.now_unix_nanos();
        let set = self.routing.current();
        for route in set.routes() {
            let name = route.subscription.name.as_str();
            let broker = route.subscription.broker.as_str();
            let s = &route.stats;
            filter
                .with_label_values(&[name, "match"])
                .inc_by(s.matched.load(Ordering::Relaxed));
            filter
                .with_label_values(&[name, "no_match"])
                .inc_by(s.not_matched.load(Ordering::Relaxed));
            filter
                .with_label_values(&[name, "error"])
                .inc_by(s.errors.load(Ordering::Relaxed));
            dropped
                .with_label_values(&[name])
                .inc_by(s.dropped.load(Ordering::Relaxed));
            for lane in &route.lanes {
                let l = self.delivery.stats(broker, lane);
                let sink = crate::http::redact::redact(&lane.sink);
                let sink = sink.as_ref();
                for (class, n) in l.attempts_by_class() {
                    attempts.with_label_values(&[name, sink, class]).inc_by(n);
                }
                for (outcome, n) in [
                    ("delivered", &l.delivered),
                    ("dead_lettered", &l.dead_lettered),
                    ("gone", &l.gone),
                    ("skipped", &l.skipped),
                ] {
                    outcomes
                        .with_label_values(&[name, sink, outcome])
                        .inc_by(n.load(Ordering::Relaxed));
                }
                parked
                    .with_label_values(&[name, sink])
                    .inc_by(l.parked.load(Ordering::Relaxed));
                transform_failures
                    .with_label_values(&[name, sink])
                    .inc_by(l.transform_failed.load(Ordering::Relaxed));
                if let Some((now, _)) = *l.breaker.lock().unwrap_or_else(|p| p.into_inner()) {
                    for state in ["closed", "open", "half-open"] {
                        circuit
                            .with_label_values(&[name, sink, state])
                            .set(i64::from(state == now));
                    }
                }
                circuit_opened
                    .with_label_values(&[name, sink])
                    .inc_by(l.breaker_opened.load(Ordering::Relaxed));
                rate_limited
                    .with_label_values(&[name, sink])
                    .inc_by(l.rate_limited.load(Ordering::Relaxed));
                rate_limited_seconds
                    .with_label_values(&[name, sink])
                    .inc_by(l.rate_limited_nanos.load(Ordering::Relaxed) as f64 / 1e9);
                in_flight
                    .with_label_values(&[name, sink])
                    .set(l.in_flight.load(Ordering::Relaxed));
                for (outcome, n) in [
                    ("appended", &l.replies_appended),
                    ("dropped", &l.replies_dropped),
                    ("invalid", &l.replies_invalid),
                    ("duplicate", &l.replies_duplicate),
                ] {
                    replies
                        .with_label_values(&[name, sink, outcome])
                        .inc_by(n.load(Ordering::Relaxed));
                }
                for (outcome, n) in [
                    ("delivered", &l.dead_letter_sink_delivered),
                    ("failed", &l.dead_letter_sink_failed),
                ] {
                    dls.with_label_values(&[name, sink, outcome])
                        .inc_by(n.load(Ordering::Relaxed));
                }
                let (depth, arrival) = snapshot
                    .lanes
                    .get(&(broker.to_string(), lane.clone()))
                    .copied()
                    .unwrap_or_default();
                lane_lag
                    .with_label_values(&[name, sink])
                    .set((depth.pending + depth.parked) as i64);
                parked_now
                    .with_label_values(&[name, sink])
                    .set(depth.parked as i64);
                let age = arrival.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1e9);
                oldest.with_label_values(&[name, sink]).set(age);
            }
        }
        dead.with_label_values::<&str>(&[])
            .set(snapshot.dead_letters as i64);
        let mut out = Vec::new();
        for c in [
            &head as &dyn Collector,
            &lag,
            &filter,
            &dropped,
            &attempts,
            &outcomes,
            &parked,
            &transform_failures,
            &circuit,
            &circuit_opened,
            &rate_limited,
            &rate_limited_seconds,
            &in_flight,
            &replies,
            &dls,
            &dead,
            &reloads,
            &stored_events,
            &stored_bytes,
            &disk,
            &fs_free,
            &fs_size,
            &min_free,
            &max_bytes,
            &lane_lag,
            &oldest,
            &parked_now,
            &damaged,
            &dedupe,
        ] {
            out.extend(c.collect());
        }
        out
    }
}
