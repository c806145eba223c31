//! Wiring: opens the log, starts the writer, the ingress and the admin listener, and
//! shuts them down in order (stop accepting, finish in-flight requests, write and sync
//! what the writer holds) under a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Health};
use crate::clock::SharedClock;
use crate::config::subscriptions::Subscription;
use crate::config::Config;
use crate::delivery::client::Sender;
use crate::delivery::Delivery;
use crate::ingress::{self, Ingress};
use crate::log::{Log, LogError, WriterOptions};
use crate::metrics::Metrics;
use crate::spans::Spans;
use crate::store::{Store, StoreOptions};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("TLS set-up failed: {0}")]
    Tls(String),
    #[error("span export set-up failed: {0}")]
    Tracing(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
use crate::router::reload::Reloader;
use crate::router::Routing;

/// Warns when `storage.minFreeBytes` is more than the whole filesystem holding the log
/// can ever have free: the broker starts, but refuses every append (and `/readyz`
/// says not ready) until the setting is lowered.
fn warn_if_min_free_exceeds_disk(path: &std::path::Path, min_free_bytes: u64) {
    if min_free_bytes == 0 {
        return;
    }
    match crate::log::total_bytes(path) {
        Ok(total) if min_free_bytes > total => tracing::warn!(
            min_free_bytes,
            filesystem_bytes = total,
            path = %path.display(),
            "storage.minFreeBytes is larger than the whole filesystem holding the log: every append will be refused (503) and /readyz will say not ready"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "cannot read the size of the log's filesystem"),
    }
}

/// Opens the log on JetStream: the events, the lanes and the dead letters, streams
/// and bucket created or updated to the config.
async fn open_jetstream(
    options: &crate::log::jetstream::JetStreamOptions,
    config: &Config,
    clock: SharedClock,
    stop: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(Log, usize), LogError> {
    use crate::log::jetstream::{lanes::JetStreamLanes, JetStreamEvents};
    let named = |e: LogError| {
        LogError::Unavailable(format!(
            "{e} (storage.jetstream: servers, credentials, tls, replicas)"
        ))
    };
    // The streams' limits are the rest of the config's: dedupe and retention.
    let options = &crate::log::jetstream::JetStreamOptions {
        dedupe_window: config.dedupe.window,
        max_age: config.storage.retention_max_age,
        max_bytes: config.storage.retention_max_bytes,
        ..options.clone()
    };
    let events = JetStreamEvents::connect(options, &config.brokers, stop.clone(), tracker)
        .await
        .map_err(named)?;
    let max_payload = events.max_payload();
    let lanes = JetStreamLanes::start(&events, options, clock.clone(), stop, tracker)
        .await
        .map_err(named)?;
    let dead_letters = events
        .dead_letters(
            options,
            config.storage.dead_letters_max_count,
            config.storage.dead_letters_max_age,
        )
        .await
        .map_err(named)?;
    Ok((
        Log::from_parts(events, lanes, Arc::new(dead_letters), clock),
        max_payload,
    ))
}

/// Lowers `ingress.maxEventBytes` to what one JetStream message of `max_payload` bytes
/// holds (the event's record, and its dead letter), saying so: an event the servers
/// would refuse gets `413` at the ingress rather than `503` from the log.
fn fit_events_to(config: &mut Config, max_payload: usize) {
    let largest = crate::log::jetstream::JetStreamEvents::largest_event(max_payload);
    if config.ingress.max_event_bytes > largest {
        tracing::warn!(
            configured = config.ingress.max_event_bytes,
            limit = largest,
            max_payload,
            "ingress.maxEventBytes is lowered to what the NATS servers' max_payload holds \
             with its dead letter; raise max_payload in the servers' config (8MB holds \
             the 4 MiB default) to keep it"
        );
        config.ingress.max_event_bytes = largest;
    }
}

/// A running server.
pub struct Server {
    pub ingress_addr: std::net::SocketAddr,
    pub admin_addr: std::net::SocketAddr,
    pub log: Log,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub routing: Arc<Routing>,
    pub delivery: Arc<Delivery>,
    pub reloader: Arc<Reloader>,
    shutdown: CancellationToken,
    done: JoinHandle<()>,
}

impl Server {
    /// Starts on listeners the caller bound (tests bind port 0).
    /// Routes for the already validated `subscriptions`.
    pub async fn start(
        mut config: Config,
        subscriptions: Vec<Subscription>,
        ingress_listener: TcpListener,
        admin_listener: TcpListener,
        clock: SharedClock,
    ) -> Result<Server, ServerError> {
        let started = Instant::now();
        crate::http::tls::install_default_provider();
        let spans = match &config.tracing.otlp_endpoint {
            None => Spans::off(),
            Some(endpoint) => {
                let spans = Spans::export(endpoint).map_err(ServerError::Tracing)?;
                tracing::info!(collector = %crate::http::redact::redact(&endpoint.to_string()), "spans are exported (OTLP over HTTP)");
                spans
            }
        };
        // One budget for the whole shutdown: requests, then deliveries, share it.
        let grace = config.shutdown_grace_period;
        let health = Arc::new(Health::default());
        let shutdown = CancellationToken::new();
        let ingress_addr = ingress_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let metrics = Metrics::new();
        let admin = Arc::new(admin::Admin {
            health: health.clone(),
            metrics: metrics.clone(),
            token: config.admin.token.clone(),
            metrics_public: config.admin.metrics_public,
            health_public: config.admin.health_public,
            api: Default::default(),
            scrape: Default::default(),
        });
        let admin_task = tokio::spawn(admin::serve(
            admin.clone(),
            admin_listener,
            shutdown.clone(),
        ));

        let writer_stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let log = if let Some(options) = config.storage.jetstream.clone() {
            health.set_not_ready(format!(
                "connecting to the NATS servers ({})",
                options.servers.join(", ")
            ));
            let (log, max_payload) = open_jetstream(
                &options,
                &config,
                clock.clone(),
                writer_stop.clone(),
                &tracker,
            )
            .await?;
            fit_events_to(&mut config, max_payload);
            log
        } else {
            let options = StoreOptions {
                path: config.storage.path.clone(),
                durability: config.storage.durability,
                cache_capacity: config.storage.cache_capacity,
                dedupe_window_nanos: u64::try_from(config.dedupe.window.as_nanos())
                    .unwrap_or(u64::MAX),
            };
            let brokers = config.brokers.clone();
            health.set_not_ready(format!(
                "opening the log in {}",
                config.storage.path.display()
            ));
            let backend = tokio::task::spawn_blocking(move || Store::open(&options, &brokers))
                .await
                .map_err(|_| LogError::Closed)?
                .map_err(LogError::from)?;
            warn_if_min_free_exceeds_disk(&config.storage.path, config.storage.min_free_bytes);
            Log::start(
                Arc::new(backend),
                &config.brokers,
                clock.clone(),
                WriterOptions {
                    dedupe_window: config.dedupe.window,
                    metrics: Some(metrics.clone()),
                    retention: crate::log::Retention {
                        max_age: config.storage.retention_max_age,
                        // As a hard quota, maxBytes refuses appends and deletes nothing.
                        max_bytes: if config.storage.refuse_at_max_bytes {
                            0
                        } else {
                            config.storage.retention_max_bytes
                        },
                        dead_letters_max_count: config.storage.dead_letters_max_count,
                        dead_letters_max_age: config.storage.dead_letters_max_age,
                    },
                    space: crate::log::SpaceLimits {
                        path: Some(config.storage.path.clone()),
                        min_free_bytes: config.storage.min_free_bytes,
                        quota_bytes: (config.storage.refuse_at_max_bytes
                            && config.storage.retention_max_bytes > 0)
                            .then_some(config.storage.retention_max_bytes),
                    },
                    ..WriterOptions::default()
                },
                writer_stop.clone(),
                &tracker,
            )?
        };
        for b in &config.brokers {
            tracing::info!(broker = %b, head = log.head(b).unwrap_or(0), "log opened");
            // Present from the start, so that a scrape shows it before the first deletion.
            for reason in ["max_age", "max_bytes"] {
                metrics
                    .log_retention_deleted
                    .with_label_values(&[b.as_str(), reason]);
            }
        }
        health.set_not_ready("loading subscriptions");
        tracing::info!(subscriptions = subscriptions.len(), "subscriptions loaded");
        let routing = Arc::new(Routing::start(
            log.clone(),
            subscriptions,
            spans.clone(),
            writer_stop.clone(),
            &tracker,
        ));
        let reloader = Reloader::new(config.clone(), routing.clone());
        let reloader_task = tokio::spawn(reloader.clone().run(shutdown.clone()));
        let body_limit = usize::try_from(config.ingress.max_event_bytes).unwrap_or(usize::MAX);
        let guard = crate::delivery::outbound::Guard {
            allowed: config.delivery.allow_addresses.clone(),
            admin: Some(admin_addr),
        };
        let sender = Arc::new(Sender::new(body_limit, guard).map_err(ServerError::Tls)?);
        let delivery_stop = CancellationToken::new();
        let delivery_abort = CancellationToken::new();
        let (delivery, delivery_task) = Delivery::start(
            log.clone(),
            routing.clone(),
            sender,
            clock.clone(),
            crate::delivery::DeliveryOptions {
                max_hops: config.replies.max_hops,
                durations: Some(metrics.delivery_duration.clone()),
                dedupe: (!config.dedupe.window.is_zero()).then(|| config.dedupe.key.clone()),
                spans: spans.clone(),
            },
            delivery_stop.clone(),
            delivery_abort.clone(),
        );
        let ingress = Arc::new(
            Ingress::new(
                log.clone(),
                config.ingress.clone(),
                (!config.dedupe.window.is_zero()).then(|| config.dedupe.key.clone()),
                metrics.clone(),
            )
            .with_spans(spans.clone()),
        );
        let view = Arc::new(
            admin::scrape::StateCollector::new(
                log.clone(),
                routing.clone(),
                delivery.clone(),
                reloader.clone(),
                clock.clone(),
            )
            .with_storage(admin::scrape::Storage {
                path: config
                    .storage
                    .jetstream
                    .is_none()
                    .then(|| config.storage.path.clone()),
                min_free_bytes: config.storage.min_free_bytes,
                max_bytes: config.storage.retention_max_bytes,
            }),
        );
        metrics.register(Box::new(admin::scrape::Registered(view.clone())));
        let _ = admin.scrape.set(view);
        let _ = admin.api.set(admin::api::Api {
            log: log.clone(),
            routing: routing.clone(),
            delivery: delivery.clone(),
            clock,
        });
        let ingress_task = tokio::spawn(ingress::serve(
            ingress,
            ingress_listener,
            shutdown.clone(),
            grace,
        ));
        health.set_ready();
        tracing::info!(
            ingress = %ingress_addr,
            admin = %admin_addr,
            ready_ms = started.elapsed().as_millis() as u64,
            "switchyard ready"
        );
        let stop = shutdown.clone();
        let h = health.clone();
        let done = tokio::spawn(async move {
            stop.cancelled().await;
            let deadline = tokio::time::Instant::now() + grace;
            h.set_not_ready("shutting down");
            tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down");
            let _ = ingress_task.await;
            // Lanes finish the attempts under way and commit; replies still need the
            // writer. Past the grace period the attempts are cancelled: their events stay
            // pending and are sent again after the restart.
            delivery_stop.cancel();
            let mut delivery_task = delivery_task;
            if tokio::time::timeout_at(deadline, &mut delivery_task)
                .await
                .is_err()
            {
                tracing::warn!("deliveries still under way after shutdown.gracePeriod; cancelled, their events stay pending");
                delivery_abort.cancel();
                // Every attempt ends at the abort; the lanes then commit and stop.
                let _ = delivery_task.await;
            }
            writer_stop.cancel();
            tracker.close();
            tracker.wait().await;
            // The spans of everything that ended, sent before the server says it stopped.
            spans.shutdown().await;
            // Everything that holds the log has ended, so the data directory is free
            // (sled's lock released) when `stop` returns.
            let _ = reloader_task.await;
            let _ = tokio::time::timeout(Duration::from_secs(5), admin_task).await;
            tracing::info!("switchyard stopped");
        });
        Ok(Server {
            ingress_addr,
            admin_addr,
            log,
            health,
            metrics,
            routing,
            delivery,
            reloader,
            shutdown,
            done,
        })
    }

    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, finishes in-flight work, syncs the log, and returns.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
    }

    /// Waits until the server has stopped (after its shutdown token is cancelled).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}
