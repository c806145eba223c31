//! Every metric Switchyard exports, in one place: names (`switchyard_` prefix, base
//! units, `_total` for counters), help texts and labels. Labels are bounded by the
//! config (broker, subscription, sink, outcome, status class), never by event id,
//! source or type. Counters of the moving parts (ingress, log writer) are updated where
//! things happen; the state of routers and lanes is read at scrape time from the
//! counters they already keep (`admin::scrape`), so no signal has two owners. This
//! module imports no other part of the broker.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The broker label for requests to a broker that does not exist (so that a client
/// cannot create label values).
pub const UNKNOWN_BROKER: &str = "unknown";

/// Every status code the ingress answers from its handler (431 and the like, for a
/// request head that does not parse, come from the HTTP layer before it).
pub const INGRESS_CODES: &[&str] = &[
    "200", "202", "400", "401", "403", "404", "405", "408", "413", "415", "503",
];

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

/// A counter family, as the collectors build them.
pub fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
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

    /// Creates, at zero, the series alerts watch that the ingress has not moved yet:
    /// every status code it can answer for a broker, the unknown broker's 404, and
    /// every event outcome. A series that appeared only at its first increment would
    /// hide that increment from `rate()` and `increase()`.
    pub fn ingress_series_at_zero(&self, brokers: &[&str]) {
        for broker in brokers {
            for code in INGRESS_CODES {
                self.ingress_requests.with_label_values(&[broker, code]);
            }
            for outcome in ["accepted", "duplicate", "rejected"] {
                self.ingress_events.with_label_values(&[broker, outcome]);
            }
        }
        self.ingress_requests
            .with_label_values(&[UNKNOWN_BROKER, "404"]);
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

    /// Adds a collector whose series are read at scrape time (the state of routers,
    /// lanes and the log, which their owners already count).
    pub fn register(&self, collector: Box<dyn Collector>) {
        let _ = self.registry.register(collector);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The series read at scrape time: name, help and labels. `admin::scrape` fills them.
pub const STATE: &[(&str, &str, &[&str])] = &[
    ("switchyard_log_head_sequence", "The highest sequence number in the broker's log.", &["broker"]),
    ("switchyard_router_lag_events", "Events appended but not yet routed.", &["broker"]),
    ("switchyard_router_filter_results_total", "Filter decisions per subscription: match, no_match, error (CEL errors and non-boolean results).", &["subscription", "result"]),
    ("switchyard_router_dropped_entries_total", "Pending lane entries dropped because their subscription or sink was removed.", &["subscription"]),
    ("switchyard_delivery_attempts_total", "Delivery attempts by the class of their answer: 2xx, 3xx, 4xx, 5xx, or error (no answer).", &["subscription", "sink", "class"]),
    ("switchyard_deliveries_total", "Events finished per lane, by outcome: delivered, dead_lettered, gone (no longer in the log), skipped (the sink's transform sends nothing for it).", &["subscription", "sink", "outcome"]),
    ("switchyard_transform_failures_total", "Events the sink's transform failed on; each is dead-lettered at once.", &["subscription", "sink"]),
    ("switchyard_lane_parked_total", "Times an event was parked for a long wait.", &["subscription", "sink"]),
    ("switchyard_lane_in_flight", "Deliveries in flight.", &["subscription", "sink"]),
    ("switchyard_lane_circuit_state", "1 for the state the lane's circuit breaker is in (closed, open, half-open), 0 for the others; lanes with a breaker only.", &["subscription", "sink", "state"]),
    ("switchyard_lane_circuit_opened_total", "Times the lane's circuit breaker opened.", &["subscription", "sink"]),
    ("switchyard_lane_rate_limited_total", "Attempts that waited for the lane's rate limit.", &["subscription", "sink"]),
    ("switchyard_lane_rate_limited_seconds_total", "Time attempts waited for the lane's rate limit, in all.", &["subscription", "sink"]),
    ("switchyard_deadletter_sink_deliveries_total", "Dead letters sent to the subscription's dead-letter sink, by outcome: delivered, failed (its retries ran out; the letter is in the store only).", &["subscription", "sink", "outcome"]),
    ("switchyard_replies_total", "Replies, by outcome: appended, duplicate (inside the dedupe window), dropped (hop limit), invalid.", &["subscription", "sink", "outcome"]),
    ("switchyard_deadletter_store_entries", "Events in the dead-letter store.", &[]),
    ("switchyard_subscription_reloads_total", "Subscription reloads, by result: applied, rejected (the new set was invalid; the running set stayed).", &["result"]),
    ("switchyard_log_stored_events", "Events the broker's log holds now.", &["broker"]),
    ("switchyard_log_stored_bytes", "Bytes of the records the broker's log holds now (what storage.retention.maxBytes bounds).", &["broker"]),
    ("switchyard_log_disk_bytes", "Bytes the log's files take on disk (all brokers, with the backend's own overhead).", &[]),
    ("switchyard_log_filesystem_free_bytes", "Free bytes of the filesystem holding storage.path (the embedded backend).", &[]),
    ("switchyard_log_filesystem_size_bytes", "Size of the filesystem holding storage.path (the embedded backend).", &[]),
    ("switchyard_log_min_free_bytes", "storage.minFreeBytes: with less free space the ingress answers 503 (0: off; the embedded backend).", &[]),
    ("switchyard_log_retention_max_bytes", "storage.retention.maxBytes: past it the oldest events are deleted (0: no bound).", &[]),
    ("switchyard_lane_lag_events", "Events waiting in the lane: pending, in flight and parked.", &["subscription", "sink"]),
    ("switchyard_lane_oldest_pending_age_seconds", "Age of the oldest event waiting in the lane (0 when none is).", &["subscription", "sink"]),
    ("switchyard_lane_parked_events", "Events of the lane parked for a long wait now.", &["subscription", "sink"]),
    ("switchyard_dedupe_entries", "Dedupe keys the broker's index holds (first seen inside the window, until swept).", &["broker"]),
    ("switchyard_log_damaged_records", "Records found damaged since start: corrupt (do not decode; skipped) or lost (stored before the last start, gone when it opened).", &["broker", "kind"]),
];

/// A metric of the `STATE` table by name.
pub fn state(name: &str) -> (&'static str, &'static str, &'static [&'static str]) {
    *STATE
        .iter()
        .find(|(n, _, _)| *n == name)
        .expect("a metric of the STATE table")
}

/// The descriptors of every `STATE` series.
pub fn state_descs() -> Vec<Desc> {
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
