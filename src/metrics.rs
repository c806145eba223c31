//! Every metric Switchyard exports, in one place: names (`switchyard_` prefix, base
//! units, `_total` for counters), help texts and labels. Labels are bounded by the
//! config (broker, subscription, sink, outcome, status class), never by event id,
//! source or type. Counters of the moving parts (ingress, log writer) are updated where
//! things happen; the state of routers and lanes is read at scrape time from the
//! counters they already keep, so no signal has two owners.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::clock::SharedClock;
use crate::delivery::Delivery;
use crate::log::Log;
use crate::router::reload::Reloader;
use crate::router::Routing;

/// The broker label for requests to a broker that does not exist (so that a client
/// cannot create label values).
pub const UNKNOWN_BROKER: &str = "unknown";

/// One broker's ingress series that every accepted request updates.
pub struct IngressSeries {
    pub received_bytes: IntCounter,
    pub accepted: IntCounter,
    pub duplicate: IntCounter,
    /// `switchyard_ingress_requests_total` with code 202.
    pub answered_202: IntCounter,
    pub duration: Histogram,
}

/// The metrics the moving parts update.
pub struct Metrics {
    registry: Registry,
    pub ingress_requests: IntCounterVec,
    pub ingress_events: IntCounterVec,
    pub ingress_duration: HistogramVec,
    pub ingress_bytes: IntCounterVec,
    pub log_appended: IntCounterVec,
    pub log_group_size: Histogram,
    pub log_sync_duration: Histogram,
    pub log_retention_deleted: IntCounterVec,
    pub deadletter_retention_deleted: prometheus::IntCounter,
    pub delivery_duration: HistogramVec,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric")
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let m = Metrics {
            ingress_requests: counter("switchyard_ingress_requests_total", "HTTP requests to the ingress, by broker and status code.", &["broker", "code"]),
            ingress_events: counter("switchyard_ingress_events_total", "Events posted, by outcome: accepted (stored), duplicate (inside the dedupe window), rejected (invalid request; counted once per request).", &["broker", "outcome"]),
            ingress_duration: HistogramVec::new(
                HistogramOpts::new("switchyard_ingress_request_duration_seconds", "Time from request to answer, durable write included.")
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
                &["broker"],
            )
            .expect("a valid metric"),
            ingress_bytes: counter("switchyard_ingress_received_bytes_total", "Request body bytes received.", &["broker"]),
            log_appended: counter("switchyard_log_appended_events_total", "Events appended to the log (posted and replies).", &["broker"]),
            log_group_size: Histogram::with_opts(
                HistogramOpts::new("switchyard_log_group_size", "Requests per group commit.").buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
            )
            .expect("a valid metric"),
            log_sync_duration: Histogram::with_opts(
                HistogramOpts::new("switchyard_log_write_duration_seconds", "Time to write and sync one group.")
                    .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25]),
            )
            .expect("a valid metric"),
            log_retention_deleted: counter("switchyard_log_retention_deleted_events_total", "Events deleted by retention, by reason: max_age (older than storage.retention.maxAge), max_bytes (oldest while the log was over storage.retention.maxBytes).", &["broker", "reason"]),
            deadletter_retention_deleted: prometheus::IntCounter::new("switchyard_deadletter_retention_deleted_total", "Dead letters deleted by the store's bounds (storage.deadLetters.maxCount, maxAge).").expect("a valid metric"),
            delivery_duration: HistogramVec::new(
                HistogramOpts::new("switchyard_delivery_duration_seconds", "Time from an event's first attempt (or its return from the parked set) to delivered or dead-lettered.")
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
                &["subscription", "sink"],
            )
            .expect("a valid metric"),
            registry,
        };
        for c in [
            Box::new(m.ingress_requests.clone()) as Box<dyn Collector>,
            Box::new(m.ingress_events.clone()),
            Box::new(m.ingress_duration.clone()),
            Box::new(m.ingress_bytes.clone()),
            Box::new(m.log_appended.clone()),
            Box::new(m.log_group_size.clone()),
            Box::new(m.log_sync_duration.clone()),
            Box::new(m.log_retention_deleted.clone()),
            Box::new(m.deadletter_retention_deleted.clone()),
            Box::new(m.delivery_duration.clone()),
        ] {
            m.registry.register(c).expect("metric names are unique");
        }
        let build = IntGaugeVec::new(
            Opts::new("switchyard_build_info", "Always 1; the version is a label."),
            &["version"],
        )
        .expect("a valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m.registry
            .register(Box::new(build))
            .expect("metric names are unique");
        #[cfg(target_os = "linux")]
        {
            let _ = m.registry.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        Arc::new(m)
    }

    /// The ingress series of one broker, looked up once. A labelled series is found by
    /// hashing its label values under a lock: five times a request, when looked up per
    /// request. They start at zero, so that they are there before the first event.
    pub fn ingress_series(&self, broker: &str) -> IngressSeries {
        IngressSeries {
            received_bytes: self.ingress_bytes.with_label_values(&[broker]),
            accepted: self.ingress_events.with_label_values(&[broker, "accepted"]),
            duplicate: self
                .ingress_events
                .with_label_values(&[broker, "duplicate"]),
            answered_202: self.ingress_requests.with_label_values(&[broker, "202"]),
            duration: self.ingress_duration.with_label_values(&[broker]),
        }
    }

    /// Adds the collector of routers' and lanes' state.
    pub fn watch_state(
        &self,
        log: Log,
        routing: Arc<Routing>,
        delivery: Arc<Delivery>,
        reloader: Arc<Reloader>,
        clock: SharedClock,
    ) {
        let _ = self.registry.register(Box::new(StateCollector {
            log,
            routing,
            delivery,
            reloader,
            clock,
            descs: state_descs(),
        }));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Reads routers' and lanes' counters and the log's positions at scrape time.
struct StateCollector {
    log: Log,
    routing: Arc<Routing>,
    delivery: Arc<Delivery>,
    reloader: Arc<Reloader>,
    clock: SharedClock,
    descs: Vec<Desc>,
}

const STATE: &[(&str, &str, &[&str])] = &[
    ("switchyard_log_head_sequence", "The highest sequence number in the broker's log.", &["broker"]),
    ("switchyard_router_lag_events", "Events appended but not yet routed.", &["broker"]),
    ("switchyard_router_filter_results_total", "Filter decisions per subscription: match, no_match, error (CEL errors and non-boolean results).", &["subscription", "result"]),
    ("switchyard_router_dropped_entries_total", "Pending lane entries dropped because their subscription or sink was removed.", &["subscription"]),
    ("switchyard_delivery_attempts_total", "Delivery attempts by the class of their answer: 2xx, 3xx, 4xx, 5xx, or error (no answer).", &["subscription", "sink", "class"]),
    ("switchyard_deliveries_total", "Events finished per lane, by outcome: delivered, dead_lettered, gone (no longer in the log).", &["subscription", "sink", "outcome"]),
    ("switchyard_lane_parked_total", "Times an event was parked for a long wait.", &["subscription", "sink"]),
    ("switchyard_lane_in_flight", "Deliveries in flight.", &["subscription", "sink"]),
    ("switchyard_replies_total", "Replies, by outcome: appended, dropped (hop limit), invalid.", &["subscription", "sink", "outcome"]),
    ("switchyard_deadletter_store_entries", "Events in the dead-letter store.", &[]),
    ("switchyard_subscription_reloads_total", "Subscription reloads, by result: applied, rejected (the new set was invalid; the running set stayed).", &["result"]),
    ("switchyard_log_stored_events", "Events the broker's log holds now.", &["broker"]),
    ("switchyard_log_stored_bytes", "Bytes of the records the broker's log holds now (what storage.retention.maxBytes bounds).", &["broker"]),
    ("switchyard_log_disk_bytes", "Bytes the log's files take on disk (all brokers, with the backend's own overhead).", &[]),
    ("switchyard_lane_lag_events", "Events waiting in the lane: pending, in flight and parked.", &["subscription", "sink"]),
    ("switchyard_lane_oldest_pending_age_seconds", "Age of the oldest event waiting in the lane (0 when none is).", &["subscription", "sink"]),
    ("switchyard_lane_parked_events", "Events of the lane parked for a long wait now.", &["subscription", "sink"]),
    ("switchyard_log_damaged_records", "Records found damaged since start: corrupt (do not decode; skipped) or lost (stored before the last start, gone when it opened).", &["broker", "kind"]),
];

/// A metric of the `STATE` table by name.
fn state(name: &str) -> (&'static str, &'static str, &'static [&'static str]) {
    *STATE
        .iter()
        .find(|(n, _, _)| *n == name)
        .expect("a metric of the STATE table")
}

fn state_descs() -> Vec<Desc> {
    STATE
        .iter()
        .map(|(name, help, labels)| {
            Desc::new(
                (*name).into(),
                (*help).into(),
                labels.iter().map(|l| (*l).to_string()).collect(),
                Default::default(),
            )
            .expect("a valid metric")
        })
        .collect()
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
        let in_flight = gauge("switchyard_lane_in_flight");
        let replies = count("switchyard_replies_total");
        let dead = gauge("switchyard_deadletter_store_entries");
        let reloads = count("switchyard_subscription_reloads_total");
        let stored_events = gauge("switchyard_log_stored_events");
        let stored_bytes = gauge("switchyard_log_stored_bytes");
        let disk = gauge("switchyard_log_disk_bytes");
        let lane_lag = gauge("switchyard_lane_lag_events");
        let oldest = {
            let (n, d, l) = state("switchyard_lane_oldest_pending_age_seconds");
            prometheus::GaugeVec::new(Opts::new(n, d), l).expect("a valid metric")
        };
        let parked_now = gauge("switchyard_lane_parked_events");
        let damaged = gauge("switchyard_log_damaged_records");
        reloads
            .with_label_values(&["applied"])
            .inc_by(self.reloader.applied.load(Ordering::Relaxed));
        reloads
            .with_label_values(&["rejected"])
            .inc_by(self.reloader.failures.load(Ordering::Relaxed));

        let backend = self.log.backend();
        for broker in self.log.brokers() {
            let top = self.log.head(broker).unwrap_or(0);
            head.with_label_values(&[broker]).set(top as i64);
            let cursor = backend.router_cursor(broker).unwrap_or(0);
            lag.with_label_values(&[broker])
                .set(top.saturating_sub(cursor) as i64);
            let stored = backend.stored(broker).unwrap_or_default();
            let damage = backend.damage(broker);
            damaged
                .with_label_values(&[broker, "corrupt"])
                .set(damage.corrupt as i64);
            damaged
                .with_label_values(&[broker, "lost"])
                .set(damage.lost as i64);
            stored_events
                .with_label_values(&[broker])
                .set(stored.events as i64);
            stored_bytes
                .with_label_values(&[broker])
                .set(stored.bytes as i64);
        }
        disk.with_label_values::<&str>(&[])
            .set(backend.disk_bytes().map_or(0, |n| n as i64));
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
                ] {
                    outcomes
                        .with_label_values(&[name, sink, outcome])
                        .inc_by(n.load(Ordering::Relaxed));
                }
                parked
                    .with_label_values(&[name, sink])
                    .inc_by(l.parked.load(Ordering::Relaxed));
                in_flight
                    .with_label_values(&[name, sink])
                    .set(l.in_flight.load(Ordering::Relaxed));
                for (outcome, n) in [
                    ("appended", &l.replies_appended),
                    ("dropped", &l.replies_dropped),
                    ("invalid", &l.replies_invalid),
                ] {
                    replies
                        .with_label_values(&[name, sink, outcome])
                        .inc_by(n.load(Ordering::Relaxed));
                }
                lane_lag
                    .with_label_values(&[name, sink])
                    .set(backend.lane_depth(broker, lane).map_or(0, |n| n as i64));
                parked_now
                    .with_label_values(&[name, sink])
                    .set(backend.parked(broker, lane).map_or(0, |n| n as i64));
                let age = backend
                    .lane_oldest_arrival(broker, lane)
                    .ok()
                    .flatten()
                    .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1e9);
                oldest.with_label_values(&[name, sink]).set(age);
            }
        }
        dead.with_label_values::<&str>(&[])
            .set(backend.dead_letter_count().map(|n| n as i64).unwrap_or(0));
        let mut out = Vec::new();
        for c in [
            &head as &dyn Collector,
            &lag,
            &filter,
            &dropped,
            &attempts,
            &outcomes,
            &parked,
            &in_flight,
            &replies,
            &dead,
            &reloads,
            &stored_events,
            &stored_bytes,
            &disk,
            &lane_lag,
            &oldest,
            &parked_now,
            &damaged,
        ] {
            out.extend(c.collect());
        }
        out
    }
}
