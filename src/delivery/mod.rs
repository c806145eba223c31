//! Delivery: one deliverer per lane (a subscription's sink), the HTTP client, the retry
//! policy (pure functions), dead letters and replies. A slow or dead sink stalls its own
//! lane and nothing else.

pub mod auth;
pub mod client;
pub mod connections;
pub mod flow;
pub mod lane;
pub mod outbound;
pub mod policy;
pub mod reply;
pub mod schedule;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::clock::SharedClock;
use crate::log::{LaneId, Log};
use crate::router::{RouteSet, Routing};
use client::Sender;
use lane::{LaneContext, LaneStats};

type LaneKey = (String, LaneId);

/// Explains `event` against `subscriptions` ([`crate::router::explain::explain`]), with
/// the request each sink of a matching subscription would be sent.
pub fn explain<'a>(
    subscriptions: impl IntoIterator<Item = &'a crate::config::subscriptions::Subscription>,
    event: &crate::event::Event,
) -> Vec<crate::router::explain::Verdict> {
    let subscriptions: Vec<_> = subscriptions.into_iter().collect();
    let mut verdicts = crate::router::explain::explain(subscriptions.iter().copied(), event);
    for (verdict, sub) in verdicts.iter_mut().zip(&subscriptions) {
        if verdict.matched {
            verdict.requests = sub
                .sinks
                .iter()
                .map(|sink| crate::router::explain::SinkRequest {
                    sink: crate::http::redact::redact(&sink.uri.to_string()).into_owned(),
                    shape: client::preview(sink, event, &sub.broker),
                })
                .collect();
        }
    }
    verdicts
}

struct Running {
    route: Arc<crate::router::Route>,
    stop: CancellationToken,
    abort: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops the lane now, attempts under way included (a reload replaced or removed it).
    fn cancel(&self) {
        self.stop.cancel();
        self.abort.cancel();
    }
}

/// Settings of every lane.
#[derive(Clone, Default)]
pub struct DeliveryOptions {
    /// `replies.maxHops`.
    pub max_hops: u32,
    /// Where lanes observe their delivery durations; `None` observes nothing.
    pub durations: Option<prometheus::HistogramVec>,
    /// The dedupe key replies are appended with, as the ingress's events are; `None`
    /// when dedupe is off.
    pub dedupe: Option<Arc<crate::expr::dedupe_key::DedupeKey>>,
    /// Where each attempt's span is made.
    pub spans: crate::spans::Spans,
}

/// The deliverers of every lane, kept in line with the running subscription set.
pub struct Delivery {
    log: Log,
    routing: Arc<Routing>,
    sender: Arc<Sender>,
    clock: SharedClock,
    max_hops: u32,
    dedupe: Option<Arc<crate::expr::dedupe_key::DedupeKey>>,
    spans: crate::spans::Spans,
    running: Mutex<HashMap<LaneKey, Running>>,
    stats: Mutex<HashMap<LaneKey, Arc<LaneStats>>>,
    /// Where lanes observe their delivery durations (by subscription and sink).
    durations: Option<prometheus::HistogramVec>,
    /// Cancelled when the shutdown grace period is over: attempts still under way end.
    abort: CancellationToken,
}

impl Delivery {
    /// Starts a deliverer for every lane of the running set, and follows the set as it
    /// is reloaded, until `shutdown`; the returned task ends when every lane has stopped.
    /// After `shutdown`, attempts under way may finish until `abort`.
    pub fn start(
        log: Log,
        routing: Arc<Routing>,
        sender: Arc<Sender>,
        clock: SharedClock,
        options: DeliveryOptions,
        shutdown: CancellationToken,
        abort: CancellationToken,
    ) -> (Arc<Delivery>, JoinHandle<()>) {
        let delivery = Arc::new(Delivery {
            log,
            routing: routing.clone(),
            sender,
            clock,
            max_hops: options.max_hops,
            dedupe: options.dedupe,
            spans: options.spans,
            running: Mutex::default(),
            stats: Mutex::default(),
            durations: options.durations,
            abort,
        });
        if delivery.log.lanes().shared() {
            // Another instance may pause or resume a lane: its word is read once a second.
            let me = delivery.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => break,
                    }
                    me.refresh_pauses().await;
                }
            });
        }
        let me = delivery.clone();
        let supervisor = tokio::spawn(async move {
            let mut sets = routing.subscribe();
            loop {
                let set = sets.borrow_and_update().clone();
                me.reconcile(&set);
                tokio::select! {
                    r = sets.changed() => if r.is_err() { break },
                    _ = shutdown.cancelled() => break,
                }
            }
            let running: Vec<Running> = me
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain()
                .map(|(_, r)| r)
                .collect();
            for r in &running {
                r.stop.cancel();
            }
            for r in running {
                let _ = r.task.await;
            }
        });
        (delivery, supervisor)
    }

    /// Pauses (`true`) or resumes a lane: durably first, then at once here (and
    /// within a second on the other instances that share the lanes).
    pub async fn set_paused(
        &self,
        broker: &str,
        lane: &LaneId,
        paused: bool,
    ) -> crate::log::LogResult<()> {
        self.log.lanes().set_paused(broker, lane, paused).await?;
        let stats = self.stats(broker, lane);
        let was = stats
            .paused
            .swap(paused, std::sync::atomic::Ordering::Relaxed);
        if was != paused {
            tracing::info!(broker, subscription = %lane.subscription, sink = %crate::http::redact::redact(&lane.sink), paused, "lane {}", if paused { "paused" } else { "resumed" });
        }
        if !paused {
            stats.resumed.notify_waiters();
        }
        Ok(())
    }

    /// Reads which lanes are paused from the backend into their counters.
    async fn refresh_pauses(&self) {
        let lanes: Vec<(String, LaneId, Arc<LaneStats>)> = self
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((b, l), s)| (b.clone(), l.clone(), s.clone()))
            .collect();
        let mut brokers: Vec<&str> = lanes.iter().map(|(b, _, _)| b.as_str()).collect();
        brokers.sort_unstable();
        brokers.dedup();
        for broker in brokers {
            let Ok(paused) = self.log.lanes().paused(broker).await else {
                continue;
            };
            for (_, lane, stats) in lanes.iter().filter(|(b, _, _)| b == broker) {
                let now = paused.contains(lane);
                if stats.paused.swap(now, std::sync::atomic::Ordering::Relaxed) && !now {
                    stats.resumed.notify_waiters();
                }
            }
        }
    }

    /// A lane's counters.
    pub fn stats(&self, broker: &str, lane: &LaneId) -> Arc<LaneStats> {
        let mut map = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((broker.to_string(), lane.clone()))
            .or_insert_with(|| {
                Arc::new(LaneStats {
                    duration: self.durations.as_ref().map(|h| {
                        h.with_label_values(&[
                            lane.subscription.as_str(),
                            crate::http::redact::redact(&lane.sink).as_ref(),
                        ])
                    }),
                    ..LaneStats::default()
                })
            })
            .clone()
    }

    /// Drops a removed lane's counters and its duration series, so that no series
    /// outlives its lane (a lane added again starts from zero).
    fn forget(&self, key: &LaneKey) {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        if let Some(h) = &self.durations {
            let sink = crate::http::redact::redact(&key.1.sink);
            let _ = h.remove_label_values(&[key.1.subscription.as_str(), sink.as_ref()]);
        }
    }

    /// Starts lanes that are new or whose subscription changed, stops lanes that are gone.
    fn reconcile(&self, set: &RouteSet) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut wanted: HashMap<LaneKey, (Arc<crate::router::Route>, usize)> = HashMap::new();
        for route in set.routes() {
            for (i, lane) in route.lanes.iter().enumerate() {
                wanted.insert(
                    (route.subscription.broker.clone(), lane.clone()),
                    (route.clone(), i),
                );
            }
        }
        let gone: Vec<LaneKey> = running
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(r) = running.remove(&key) {
                r.cancel();
            }
            self.forget(&key);
        }
        for (key, (route, sink_index)) in wanted {
            let previous = match running.remove(&key) {
                Some(r) if Arc::ptr_eq(&r.route, &route) => {
                    running.insert(key, r);
                    continue;
                }
                Some(r) => {
                    r.cancel();
                    Some(r.task)
                }
                None => None,
            };
            let Some(routed) = self.routing.routed(&key.0) else {
                continue;
            };
            let Some(broker) = self.log.broker(&key.0) else {
                continue;
            };
            let Some(feeds) = self.routing.feeds(&key.0) else {
                continue;
            };
            let ctx = Arc::new(LaneContext {
                broker,
                lane: key.1.clone(),
                sink: route.subscription.sinks[sink_index].clone(),
                subscription: route.clone(),
                log: self.log.clone(),
                feeds,
                sender: self.sender.clone(),
                endpoint: self.sender.endpoint(&route.subscription.sinks[sink_index]),
                clock: self.clock.clone(),
                max_hops: self.max_hops,
                dedupe: self.dedupe.clone(),
                spans: self.spans.clone(),
                stats: self.stats(&key.0, &key.1),
                abort: self.abort.child_token(),
                flow: Mutex::new(lane::FlowState::new(
                    &route.subscription.delivery.flow,
                    route.subscription.delivery.retry.backoff_max,
                )),
                flow_changed: tokio::sync::Notify::new(),
            });
            let stop = CancellationToken::new();
            let s = stop.clone();
            let abort = ctx.abort.clone();
            // A changed subscription's lane restarts only after the old deliverer has
            // stopped, so no entry is sent by both.
            // Every line a lane logs carries its broker, subscription and sink.
            let span = tracing::info_span!(
                "lane",
                broker = %key.0,
                subscription = %key.1.subscription,
                sink = %crate::http::redact::redact(&key.1.sink)
            );
            let task = tokio::spawn(
                async move {
                    if let Some(old) = previous {
                        let _ = old.await;
                    }
                    ctx.run(routed, s).await;
                }
                .instrument(span),
            );
            running.insert(
                key,
                Running {
                    route,
                    stop,
                    abort,
                    task,
                },
            );
        }
    }
}
