//! The producer-facing HTTP service: routes (`POST /`, `POST /brokers/{name}`), content
//! modes, limits, bearer tokens, status codes and problem+json errors. An event is
//! answered `202` only once the log has made it durable.

pub mod parse_errors;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{IngressConfig, IngressToken, TokenScope};
use crate::event::{binary, json, protobuf, Data, Event, EventError};
use crate::expr::dedupe_key::DedupeKey;
use crate::http::auth;
use crate::http::problem::Problem;
use crate::log::{AppendOutcome, Log, NewEvent};
use crate::metrics::{self, IngressSeries, Metrics};

/// How a request carries its events, decided from `Content-Type` alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentMode {
    Binary,
    StructuredJson,
    StructuredProtobuf,
    BatchJson,
    BatchProtobuf,
    /// `application/cloudevents…` with a format this broker does not read.
    Unsupported,
}

impl ContentMode {
    /// Classifies a `Content-Type` value (case-insensitive; parameters ignored).
    pub fn detect(content_type: Option<&[u8]>) -> ContentMode {
        let Some(raw) = content_type else {
            return ContentMode::Binary;
        };
        let essence = raw
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        const PREFIX: &[u8] = b"application/cloudevents";
        let Some(format) = essence
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .map(|_| &essence[PREFIX.len()..])
        else {
            return ContentMode::Binary;
        };
        for (name, mode) in [
            (&b"+json"[..], ContentMode::StructuredJson),
            (b"+protobuf", ContentMode::StructuredProtobuf),
            (b"-batch+json", ContentMode::BatchJson),
            (b"-batch+protobuf", ContentMode::BatchProtobuf),
        ] {
            if format.eq_ignore_ascii_case(name) {
                return mode;
            }
        }
        ContentMode::Unsupported
    }

    fn is_batch(self) -> bool {
        matches!(self, ContentMode::BatchJson | ContentMode::BatchProtobuf)
    }
}

/// What the ingress needs to serve.
pub struct Ingress {
    log: Log,
    config: IngressConfig,
    /// The dedupe key; `None` when dedupe is off.
    dedupe: Option<Arc<DedupeKey>>,
    metrics: Arc<Metrics>,
    /// Each broker of the log, by name, with its metric series.
    brokers: HashMap<Arc<str>, IngressSeries>,
    /// The body bytes all requests together may have buffered (`maxBufferedBodyBytes`).
    body_budget: Arc<Semaphore>,
    spans: crate::spans::Spans,
}

impl Ingress {
    /// The ingress of `log`'s brokers; `dedupe` is `None` when dedupe is off.
    pub fn new(
        log: Log,
        config: IngressConfig,
        dedupe: Option<Arc<DedupeKey>>,
        metrics: Arc<Metrics>,
    ) -> Ingress {
        let brokers = log
            .brokers()
            .map(|b| (b.clone(), metrics.ingress_series(b)))
            .collect();
        metrics.ingress_series_at_zero(&log.brokers().map(|b| &**b).collect::<Vec<_>>());
        let body_budget = Arc::new(Semaphore::new(
            usize::try_from(config.max_buffered_body_bytes)
                .unwrap_or(Semaphore::MAX_PERMITS)
                .min(Semaphore::MAX_PERMITS),
        ));
        Ingress {
            body_budget,
            log,
            config,
            dedupe,
            metrics,
            brokers,
            spans: crate::spans::Spans::off(),
        }
    }

    /// The ingress with each event's ingest span made in `spans`.
    pub fn with_spans(mut self, spans: crate::spans::Spans) -> Ingress {
        self.spans = spans;
        self
    }
}

/// One connection's state as the accept loop and its own watchdog see it: requests
/// under way, when it was last busy, its share of the body budget.
struct Activity {
    /// Requests under way.
    active: AtomicUsize,
    /// When a request last began or ended, in milliseconds since `Connections::epoch`.
    last_ms: AtomicU64,
    /// Asks the connection to close (it is the idlest one at the connection limit).
    shed: tokio::sync::Notify,
    /// The body bytes its requests may have buffered at once.
    body: Arc<Semaphore>,
    /// Where it is: [`WAITING`], [`HANDSHAKE`], [`SERVING`] or [`CLOSING`].
    phase: std::sync::atomic::AtomicU8,
}

/// A connection that has not sent its first byte.
const WAITING: u8 = 0;
/// In its TLS handshake.
const HANDSHAKE: u8 = 1;
/// Served by hyper.
const SERVING: u8 = 2;
/// Asked to close.
const CLOSING: u8 = 3;

/// A connection is shed only once it has been idle this long: one that has just
/// connected or answered is about to send its request.
const SHED_AFTER_IDLE: Duration = Duration::from_millis(100);

impl Activity {
    fn idle_for(&self, connections: &Connections) -> Duration {
        Duration::from_millis(
            connections
                .now_ms()
                .saturating_sub(self.last_ms.load(AtomicOrdering::Relaxed)),
        )
    }

    fn is_idle(&self) -> bool {
        self.active.load(AtomicOrdering::Relaxed) == 0
    }

    fn set_phase(&self, phase: u8, connections: &Connections) {
        self.last_ms
            .store(connections.now_ms(), AtomicOrdering::Relaxed);
        self.phase.store(phase, AtomicOrdering::Relaxed);
    }
}

/// Marks a request under way on its connection, until dropped.
struct Busy<'a>(&'a Activity, &'a Connections);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0
            .last_ms
            .store(self.1.now_ms(), AtomicOrdering::Relaxed);
        self.0.active.fetch_sub(1, AtomicOrdering::Relaxed);
    }
}

/// The open connections, so that at the connection limit the idlest can be shed.
struct Connections {
    epoch: std::time::Instant,
    next: AtomicU64,
    open: std::sync::Mutex<HashMap<u64, Arc<Activity>>>,
}

impl Connections {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn open(&self, body_budget: u64) -> (u64, Arc<Activity>) {
        let id = self.next.fetch_add(1, AtomicOrdering::Relaxed);
        let activity = Arc::new(Activity {
            active: AtomicUsize::new(0),
            last_ms: AtomicU64::new(self.now_ms()),
            shed: tokio::sync::Notify::new(),
            phase: std::sync::atomic::AtomicU8::new(WAITING),
            body: Arc::new(Semaphore::new(
                usize::try_from(body_budget)
                    .unwrap_or(Semaphore::MAX_PERMITS)
                    .min(Semaphore::MAX_PERMITS),
            )),
        });
        self.lock().insert(id, activity.clone());
        (id, activity)
    }

    fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn busy<'a>(&'a self, activity: &'a Activity) -> Busy<'a> {
        activity.active.fetch_add(1, AtomicOrdering::Relaxed);
        Busy(activity, self)
    }

    /// Asks the connection with no request under way that has been idle the longest
    /// (one still silent, or one served between requests) to close; false when there is
    /// none. Connections in their TLS handshake or already closing are left alone.
    fn shed_idlest(&self) -> bool {
        let open = self.lock();
        let idlest = open
            .values()
            .filter(|a| {
                let phase = a.phase.load(AtomicOrdering::Relaxed);
                (phase == WAITING || phase == SERVING)
                    && a.is_idle()
                    && a.idle_for(self) >= SHED_AFTER_IDLE
            })
            .min_by_key(|a| a.last_ms.load(AtomicOrdering::Relaxed));
        match idlest {
            Some(a) => {
                a.shed.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Serves the ingress on `listener` until `shutdown` is cancelled, then lets the open
/// connections finish their requests (up to `drain` long).
pub async fn serve(
    ingress: Arc<Ingress>,
    listener: TcpListener,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let permits = Arc::new(Semaphore::new(ingress.config.max_connections));
    let tracker = tokio_util::task::TaskTracker::new();
    let connections = Arc::new(Connections {
        epoch: std::time::Instant::now(),
        next: AtomicU64::new(0),
        open: Default::default(),
    });
    let idle = ingress.config.header_read_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        // A peer that stops answering is cut off, whatever its streams are doing.
        .keep_alive_interval(idle)
        .keep_alive_timeout(idle);
    let acceptor = ingress
        .config
        .tls
        .as_ref()
        .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // Out of file descriptors, say: give the others a moment to close.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // At the limit, the new client waits (and the clients after it wait in the
        // backlog) while the connection idle the longest is asked to make room.
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let waiting = permits.clone().acquire_owned();
                tokio::pin!(waiting);
                let got = loop {
                    // None may have been idle long enough yet: look again while waiting.
                    connections.shed_idlest();
                    tokio::select! {
                        p = &mut waiting => break p.ok(),
                        _ = tokio::time::sleep(SHED_AFTER_IDLE) => {}
                        _ = shutdown.cancelled() => break None,
                    }
                };
                match got {
                    Some(p) => p,
                    None => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (id, activity) = connections.open(ingress.config.max_connection_body_bytes);
        let (ingress, connections, builder, acceptor, shutdown) = (
            ingress.clone(),
            connections.clone(),
            builder.clone(),
            acceptor.clone(),
            shutdown.clone(),
        );
        tracker.spawn(async move {
            let service = {
                let (connections, activity) = (connections.clone(), activity.clone());
                hyper::service::service_fn(move |req| {
                    let (ingress, connections, activity) =
                        (ingress.clone(), connections.clone(), activity.clone());
                    async move {
                        let _busy = connections.busy(&activity);
                        Ok::<_, std::convert::Infallible>(
                            handle(&ingress, req, &activity.body).await,
                        )
                    }
                })
            };
            // hyper's header timer starts at the first byte: a client that connects and
            // sends nothing would hold its slot forever. It gets the header read timeout
            // to start, and a TLS handshake gets the same bound.
            let mut byte = [0u8; 1];
            let first = tokio::select! {
                r = tokio::time::timeout(idle, stream.peek(&mut byte)) => matches!(r, Ok(Ok(1))),
                // Silent still: shed at the limit, or dropped at shutdown.
                _ = activity.shed.notified() => false,
                _ = shutdown.cancelled() => false,
            };
            if first {
                match acceptor {
                    None => {
                        let io = TokioIo::new(parse_errors::WithProblems::new(stream));
                        let conn = builder.serve_connection(io, service);
                        watch(conn, &activity, &connections, idle, &shutdown).await;
                    }
                    Some(acceptor) => {
                        activity.set_phase(HANDSHAKE, &connections);
                        let handshake = tokio::select! {
                            r = tokio::time::timeout(idle, acceptor.accept(stream)) => Some(r),
                            _ = shutdown.cancelled() => None,
                        };
                        match handshake {
                            None => {}
                            Some(Ok(Ok(tls))) => {
                                let io = TokioIo::new(parse_errors::WithProblems::new(tls));
                                let conn = builder.serve_connection(io, service);
                                watch(conn, &activity, &connections, idle, &shutdown).await;
                            }
                            Some(Ok(Err(e))) => {
                                tracing::debug!(error = %e, "TLS handshake failed")
                            }
                            Some(Err(_)) => tracing::debug!("TLS handshake timed out"),
                        }
                    }
                }
            }
            connections.close(id);
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!("ingress connections still open after the shutdown deadline");
    }
}

/// Serves one connection until it ends, closing it gracefully at shutdown, when it is
/// shed, or when it has had no request under way for `idle` (HTTP/1's keep-alive wait
/// is bounded by hyper's header timer as well; HTTP/2 has no such timer).
async fn watch<I, S>(
    conn: auto::Connection<'_, I, S, TokioExecutor>,
    activity: &Activity,
    connections: &Connections,
    idle: Duration,
    shutdown: &CancellationToken,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Full<Bytes>>>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    tokio::pin!(conn);
    // Idle from now: the handshake and the wait for the first byte are not idleness
    // between requests. A shed asked for before now is forgotten.
    activity.set_phase(SERVING, connections);
    let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        let close = tokio::select! {
            _ = conn.as_mut() => return,
            _ = shutdown.cancelled(), if closing.is_none() => {
                // The server's drain deadline bounds this one.
                Some(Duration::from_secs(3600))
            }
            _ = activity.shed.notified(), if closing.is_none() => {
                // Only a connection still idle: a request may have begun since.
                (activity.is_idle() && activity.idle_for(connections) >= SHED_AFTER_IDLE)
                    .then_some(idle)
            }
            _ = tick.tick() => match closing {
                // A peer that ignores the close (an HTTP/2 GOAWAY) is dropped once it
                // has no request under way; one under way is bounded by the body's
                // deadlines.
                Some(at) if tokio::time::Instant::now() >= at && activity.is_idle() => return,
                Some(_) => None,
                None => (activity.is_idle() && activity.idle_for(connections) >= idle)
                    .then_some(idle),
            },
        };
        if let Some(grace) = close {
            conn.as_mut().graceful_shutdown();
            activity.phase.store(CLOSING, AtomicOrdering::Relaxed);
            closing = Some(tokio::time::Instant::now() + grace);
        }
    }
}

/// Handles one request; its body is read within the connection's budget `connection`
/// and the ingress's own.
pub async fn handle(
    ingress: &Ingress,
    req: Request<Incoming>,
    connection: &Arc<Semaphore>,
) -> Response<Full<Bytes>> {
    let started = std::time::Instant::now();
    // Only configured brokers become label values.
    let broker = broker_of(req.uri().path()).and_then(|b| ingress.brokers.get_key_value(b));
    let label = broker.map_or(metrics::UNKNOWN_BROKER, |(b, _)| &**b);
    let response = match handle_inner(ingress, broker, req, connection).await {
        Ok(r) => r,
        Err(p) => {
            tracing::debug!(status = p.status.as_u16(), detail = %p.detail, "request rejected");
            if matches!(p.status.as_u16(), 400 | 413 | 415) {
                ingress
                    .metrics
                    .ingress_events
                    .with_label_values(&[label, "rejected"])
                    .inc();
            }
            p.into_response()
        }
    };
    let m = &ingress.metrics;
    let series = broker.map(|(_, series)| series);
    match series {
        Some(s) if response.status() == StatusCode::ACCEPTED => s.answered_202.inc(),
        _ => m
            .ingress_requests
            .with_label_values(&[label, response.status().as_str()])
            .inc(),
    }
    let elapsed = started.elapsed().as_secs_f64();
    match series {
        Some(s) => s.duration.observe(elapsed),
        None => m
            .ingress_duration
            .with_label_values(&[label])
            .observe(elapsed),
    }
    response
}

fn broker_of(path: &str) -> Option<&str> {
    if path == "/" {
        return Some("default");
    }
    let name = path.strip_prefix("/brokers/")?.trim_end_matches('/');
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// Handles one request to `broker` (`None`: the path names no broker of the log).
async fn handle_inner(
    ingress: &Ingress,
    broker: Option<(&Arc<str>, &IngressSeries)>,
    req: Request<Incoming>,
    connection: &Arc<Semaphore>,
) -> Result<Response<Full<Bytes>>, Problem> {
    let Some(broker_name) = broker_of(req.uri().path()) else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "Not Found",
            format!(
                "no route for {}; post events to / or /brokers/{{name}}",
                req.uri().path()
            ),
        ));
    };
    match *req.method() {
        Method::POST => {}
        Method::OPTIONS => return Ok(handshake(req.headers())),
        _ => {
            return Err(Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed",
                format!("{} is not allowed; send events with POST", req.method()),
            )
            .with_header(ALLOW, "POST, OPTIONS"))
        }
    }
    let scope = authorize(&ingress.config.tokens, req.headers())?;
    let Some((broker, series)) = broker else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "Unknown Broker",
            format!("there is no broker '{broker_name}'"),
        ));
    };
    if let Some(scope) = scope {
        if !TokenScope::allows(&scope.brokers, broker_name) {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "this token may not send to broker '{broker_name}' (its brokers: {})",
                    scope.brokers.join(", ")
                ),
            ));
        }
    }
    let mode = ContentMode::detect(req.headers().get(CONTENT_TYPE).map(HeaderValue::as_bytes));
    if mode == ContentMode::Unsupported {
        let ct = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Event Format",
            format!("'{ct}' is not a supported format; use application/cloudevents+json, +protobuf, or their -batch forms, or binary mode"),
        ));
    }
    let limit = if mode.is_batch() {
        ingress.config.max_batch_bytes
    } else {
        ingress.config.max_event_bytes
    };
    let began = ingress.spans.on().then(std::time::SystemTime::now);
    let (parts, body) = req.into_parts();
    // The budget's permits are held until the request is answered: the body's bytes
    // stay in memory until the event is stored.
    let (body, _budget) = read_body(
        &parts.headers,
        body,
        BodyLimits {
            limit,
            timeout: ingress.config.body_read_timeout,
            min_rate: ingress.config.min_body_rate,
            min_rate_after: ingress.config.min_body_rate_after,
        },
        [
            (connection, "ingress.maxConnectionBodyBytes"),
            (&ingress.body_budget, "ingress.maxBufferedBodyBytes"),
        ],
    )
    .await?;
    series.received_bytes.inc_by(body.len() as u64);
    let limits = AttributeLimits {
        count: ingress.config.max_attributes,
        bytes: ingress.config.max_attribute_bytes,
        event_bytes: ingress.config.max_event_bytes,
    };
    // W3C Trace Context of the request, kept with each event that has none of its own.
    let trace = parts
        .headers
        .get(crate::http::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::http::trace::TraceParent::parse);
    let tracestate = parts
        .headers
        .get(crate::http::trace::TRACESTATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let events = if body.len() > DECODE_INLINE_MAX {
        // Decoding a large body takes milliseconds of CPU: on a blocking thread, so
        // that the runtime's threads go on serving other requests and the probes.
        let headers = parts.headers;
        tokio::task::spawn_blocking(move || decode_within(mode, &headers, body, limits))
            .await
            .map_err(|_| {
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Shutting Down",
                    "the broker is stopping",
                )
            })??
    } else {
        decode_within(mode, &parts.headers, body, limits)?
    };
    if events.is_empty() {
        return Ok(accepted());
    }
    if let Some(scope) = scope {
        in_scope(scope, &events, mode.is_batch())?;
    }
    // The trace context is kept where it fits the attribute limits; an event at them
    // goes without it rather than being refused for what the producer did not send in it.
    let mut spans = Vec::new();
    let events = match (&trace, began) {
        // Each event's ingest span is the trace context it is stored with.
        (_, Some(began)) => events
            .into_iter()
            .map(|e| {
                let request = trace.as_ref().map(|tp| (tp, tracestate.as_deref()));
                let Some(mut span) = ingress.spans.ingest(broker, &e, request, began) else {
                    return e;
                };
                let state = match &trace {
                    Some(_) => tracestate.clone(),
                    None => e
                        .get_str(crate::http::trace::TRACESTATE)
                        .map(str::to_string),
                };
                let fits = trace_fits(&e, span.context(), state.as_deref(), limits);
                if !fits {
                    // Stored without it: its route and attempts are not under this span.
                    span.set("switchyard.trace_context", "dropped");
                }
                let context = span.context().clone();
                spans.push(span);
                if fits {
                    crate::http::trace::set_trace_context(e, &context, state.as_deref())
                } else {
                    e
                }
            })
            .collect(),
        (Some(tp), None) => events
            .into_iter()
            .map(|e| {
                // The event's own traceparent wins, and leaves it as it is.
                if e.get(crate::http::trace::TRACEPARENT).is_none()
                    && trace_fits(&e, tp, tracestate.as_deref(), limits)
                {
                    crate::http::trace::set_trace_context(e, tp, tracestate.as_deref())
                } else {
                    e
                }
            })
            .collect(),
        (None, None) => events,
    };
    let appends = events
        .into_iter()
        .map(|event| NewEvent {
            hops: 0,
            dedupe_key: ingress.dedupe.as_ref().and_then(|k| match k.key(&event) {
                Ok(key) => Some(key),
                Err(e) => {
                    tracing::debug!(error = %e, id = event.id(), "no dedupe key; the event is stored without dedupe");
                    None
                }
            }),
            event,
        })
        .collect();
    let appended = ingress.log.append(broker.clone(), appends).await;
    if let Err(e) = &appended {
        for span in &mut spans {
            span.fail(format!("not stored: {e}"));
        }
    }
    match appended {
        Ok(outcomes) => {
            for (mut span, outcome) in spans.into_iter().zip(&outcomes) {
                match outcome {
                    AppendOutcome::Stored(seq) => {
                        span.set("switchyard.seq", *seq as i64);
                        span.set("switchyard.outcome", "stored");
                    }
                    AppendOutcome::Duplicate(_) => span.set("switchyard.outcome", "duplicate"),
                }
            }
            let stored = outcomes
                .iter()
                .filter(|o| matches!(o, AppendOutcome::Stored(_)))
                .count() as u64;
            series.accepted.inc_by(stored);
            series.duplicate.inc_by(outcomes.len() as u64 - stored);
            Ok(accepted())
        }
        Err(e) if matches!(*e, crate::log::LogError::Full(_)) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Storage Full",
            format!("the log takes no more events until there is room: {e}"),
        )
        // Room comes back at retention's pace, not in a second.
        .with_header(RETRY_AFTER, "10")),
        Err(e) if e.is_unavailable() => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Storage Unavailable",
            format!("the log cannot take writes now: {e}"),
        )
        .with_header(RETRY_AFTER, "1")),
        Err(e) => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "Unknown Broker",
            e.to_string(),
        )),
    }
}

fn accepted() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

/// The CloudEvents webhook abuse-protection handshake (HTTP 1.1 Web Hooks for Event
/// Delivery, 4.1): allow the requesting origin, at any rate, for POST.
fn handshake(headers: &HeaderMap) -> Response<Full<Bytes>> {
    let origin = headers
        .get("webhook-request-origin")
        .cloned()
        .unwrap_or(HeaderValue::from_static("*"));
    let mut r = Response::new(Full::new(Bytes::new()));
    let h = r.headers_mut();
    h.insert("webhook-allowed-origin", origin);
    h.insert("webhook-allowed-rate", HeaderValue::from_static("*"));
    h.insert(ALLOW, HeaderValue::from_static("POST, OPTIONS"));
    r
}

/// Whether every event is one the token may send (its `types` and `sources`); the
/// first that is not refuses the request (a batch whole), naming the attribute, the
/// scope and the batch index.
fn in_scope(scope: &TokenScope, events: &[Event], batch: bool) -> Result<(), Problem> {
    for (i, event) in events.iter().enumerate() {
        for (attribute, value, allowed) in [
            ("type", event.ty(), &scope.types),
            ("source", event.source(), &scope.sources),
        ] {
            if TokenScope::allows(allowed, value) {
                continue;
            }
            let at = if batch {
                format!("batch event {i}: ")
            } else {
                String::new()
            };
            let mut p = Problem::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "{at}this token may not send {attribute} '{value}' (its {attribute}s: {}); nothing of the request was stored",
                    allowed.join(", ")
                ),
            );
            p.attribute = Some(attribute.to_string());
            p.index = batch.then(|| u32::try_from(i).unwrap_or(u32::MAX));
            return Err(p);
        }
    }
    Ok(())
}

/// Checks `Authorization: Bearer <token>` against every configured token in constant
/// time; no tokens configured means the ingress is open. `Ok(Some(scope))` when the
/// token presented is a scoped one.
fn authorize<'t>(
    tokens: &'t [IngressToken],
    headers: &HeaderMap,
) -> Result<Option<&'t TokenScope>, Problem> {
    if tokens.is_empty() {
        return Ok(None);
    }
    let unauthorized = |detail: &str| {
        Problem::new(StatusCode::UNAUTHORIZED, "Unauthorized", detail)
            .with_header(WWW_AUTHENTICATE, "Bearer")
    };
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(unauthorized(
            "this broker needs an Authorization: Bearer token",
        ));
    };
    let presented = auth::bearer_token(value.as_bytes())
        .ok_or_else(|| unauthorized("the Authorization header must be 'Bearer <token>'"))?;
    match auth::accepted(presented, tokens.iter().map(|t| t.value.as_str())) {
        Some(i) => Ok(tokens[i].scope.as_ref()),
        None => Err(unauthorized("the bearer token is not valid")),
    }
}

/// What bounds a request body.
#[derive(Debug, Clone, Copy)]
struct BodyLimits {
    limit: u64,
    timeout: Duration,
    /// Bytes per second on average, required after `min_rate_after`; 0 is off.
    min_rate: u64,
    min_rate_after: Duration,
}

/// Reads a body within its limits, taking its bytes from each budget (the
/// connection's, the ingress's) as they arrive; the permits are handed back with it.
async fn read_body(
    headers: &HeaderMap,
    mut body: Incoming,
    limits: BodyLimits,
    budgets: [(&Arc<Semaphore>, &'static str); 2],
) -> Result<(Bytes, Vec<tokio::sync::OwnedSemaphorePermit>), Problem> {
    let limit = limits.limit;
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Content Too Large",
            format!("the body is larger than the limit of {limit} bytes"),
        )
    };
    // A declared length over the limit is refused before any of the body is read.
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let started = tokio::time::Instant::now();
    let deadline = started + limits.timeout;
    // One timer: the body's deadline, or before it the next check of the body's rate
    // (from `min_rate_after` on, four times a second).
    let first_check = (limits.min_rate > 0).then_some(started + limits.min_rate_after);
    let wake = tokio::time::sleep_until(first_check.map_or(deadline, |c| c.min(deadline)));
    tokio::pin!(wake);
    let mut buf = bytes::BytesMut::with_capacity(
        declared.map_or(0, |n| usize::try_from(n.min(1 << 20)).unwrap_or(0)),
    );
    let mut permits: [Option<tokio::sync::OwnedSemaphorePermit>; 2] = [None, None];
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            () = &mut wake => {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(Problem::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "Request Timeout",
                        "the body was not received in time (ingress.bodyReadTimeout)",
                    )
                    .with_limit("ingress.bodyReadTimeout"));
                }
                let elapsed = now - started;
                if (buf.len() as f64) < limits.min_rate as f64 * elapsed.as_secs_f64() {
                    return Err(Problem::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "Request Timeout",
                        format!(
                            "the body arrived at {:.0} bytes/s; after {:?} it must average at least {} bytes/s (ingress.minBodyRate)",
                            buf.len() as f64 / elapsed.as_secs_f64(),
                            limits.min_rate_after,
                            limits.min_rate
                        ),
                    )
                    .with_limit("ingress.minBodyRate"));
                }
                wake.as_mut().reset((now + Duration::from_millis(250)).min(deadline));
                continue;
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "Incomplete Body",
                format!("the body could not be read: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if buf.len() as u64 + data.len() as u64 > limit {
            return Err(too_large());
        }
        let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
        for (held, (budget, key)) in permits.iter_mut().zip(budgets) {
            let permit = budget.clone().try_acquire_many_owned(n).map_err(|_| {
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Busy",
                    format!("too many request bodies are being received at once ({key})"),
                )
                .with_limit(key)
                .with_header(RETRY_AFTER, "1")
            })?;
            // One permit per budget, grown frame by frame.
            match held {
                Some(h) => h.merge(permit),
                None => *held = Some(permit),
            }
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), permits.into_iter().flatten().collect()))
}

/// Bodies up to this size are decoded on the runtime's thread; larger ones on a
/// blocking thread (a 64 KiB JSON event decodes in well under a millisecond).
const DECODE_INLINE_MAX: usize = 64 * 1024;

/// `ingress.maxAttributes` and `ingress.maxAttributeBytes`.
#[derive(Debug, Clone, Copy)]
struct AttributeLimits {
    count: usize,
    bytes: u64,
    /// The largest event's data, held to each event of a batch (a single event's body is
    /// held to it as it is read).
    event_bytes: u64,
}

/// Decodes a body and holds every event to the attribute limits.
fn decode_within(
    mode: ContentMode,
    headers: &HeaderMap,
    body: Bytes,
    limits: AttributeLimits,
) -> Result<Vec<Event>, Problem> {
    let events = decode(mode, headers, body).map_err(Problem::from)?;
    let batch = mode.is_batch();
    for (i, event) in events.iter().enumerate() {
        let checked = check_attribute_limits(event, limits).and_then(|()| {
            if batch {
                check_data_limit(event, limits.event_bytes)
            } else {
                Ok(())
            }
        });
        checked.map_err(|mut p| {
            p.index = batch.then(|| u32::try_from(i).unwrap_or(u32::MAX));
            p
        })?;
    }
    Ok(events)
}

/// Whether an event of a batch keeps within `ingress.maxEventBytes`, as it would have to
/// when sent alone (and as it must to be delivered alone).
fn check_data_limit(event: &Event, limit: u64) -> Result<(), Problem> {
    let bytes = event.data().map_or(0, Data::body_len) as u64;
    if bytes > limit {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Event Too Large",
            format!(
                "the event's data takes {bytes} bytes; the limit is {limit} (ingress.maxEventBytes)"
            ),
        )
        .with_limit("ingress.maxEventBytes"));
    }
    Ok(())
}

/// Whether `event` with this trace context set stays within the attribute limits.
fn trace_fits(
    event: &Event,
    traceparent: &crate::http::trace::TraceParent,
    tracestate: Option<&str>,
    limits: AttributeLimits,
) -> bool {
    let (count, bytes) =
        crate::http::trace::attributes_with_trace_context(event, traceparent, tracestate);
    count <= limits.count && bytes <= limits.bytes
}

/// Whether an event keeps within the attribute limits: each attribute is a header when
/// it is delivered in binary mode, and sinks bound their headers.
fn check_attribute_limits(event: &Event, limits: AttributeLimits) -> Result<(), Problem> {
    let count = event.attributes().len();
    if count > limits.count {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "Too Many Attributes",
            format!(
                "the event has {count} attributes; the limit is {} (ingress.maxAttributes)",
                limits.count
            ),
        )
        .with_limit("ingress.maxAttributes"));
    }
    let bytes: u64 = event
        .attributes()
        .iter()
        .map(|(n, v)| (n.len() + v.text_len()) as u64)
        .sum();
    if bytes > limits.bytes {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Attributes Too Large",
            format!(
                "the event's attributes take {bytes} bytes; the limit is {} (ingress.maxAttributeBytes)",
                limits.bytes
            ),
        )
        .with_limit("ingress.maxAttributeBytes"));
    }
    Ok(())
}

fn decode(mode: ContentMode, headers: &HeaderMap, body: Bytes) -> Result<Vec<Event>, EventError> {
    match mode {
        ContentMode::Binary => {
            if !headers.contains_key("ce-specversion")
                && headers.keys().all(|k| !k.as_str().starts_with("ce-"))
            {
                return Err(EventError::attr(
                    "specversion",
                    "no CloudEvent found: binary mode needs ce-* headers, structured mode an application/cloudevents+json body",
                ));
            }
            binary::decode(headers, body).map(|e| vec![e])
        }
        ContentMode::StructuredJson => json::decode_event(&body).map(|e| vec![e]),
        ContentMode::StructuredProtobuf => protobuf::decode_event(body).map(|e| vec![e]),
        ContentMode::BatchJson => json::decode_batch(&body),
        ContentMode::BatchProtobuf => protobuf::decode_batch(body),
        ContentMode::Unsupported => Err(EventError::message("unsupported format")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_modes_are_detected_case_insensitively() {
        let table: &[(Option<&str>, ContentMode)] = &[
            (None, ContentMode::Binary),
            (Some("application/json"), ContentMode::Binary),
            (Some("text/plain; charset=utf-8"), ContentMode::Binary),
            (
                Some("application/cloudevents+json"),
                ContentMode::StructuredJson,
            ),
            (
                Some("Application/CloudEvents+JSON; charset=UTF-8"),
                ContentMode::StructuredJson,
            ),
            (
                Some("application/cloudevents+protobuf"),
                ContentMode::StructuredProtobuf,
            ),
            (
                Some("application/cloudevents-batch+json"),
                ContentMode::BatchJson,
            ),
            (
                Some("APPLICATION/CLOUDEVENTS-BATCH+PROTOBUF"),
                ContentMode::BatchProtobuf,
            ),
            (
                Some("application/cloudevents+xml"),
                ContentMode::Unsupported,
            ),
            (Some("application/cloudevents"), ContentMode::Unsupported),
        ];
        for (ct, want) in table {
            assert_eq!(ContentMode::detect(ct.map(str::as_bytes)), *want, "{ct:?}");
        }
    }

    #[test]
    fn routes_map_to_brokers() {
        assert_eq!(broker_of("/"), Some("default"));
        assert_eq!(broker_of("/brokers/ci"), Some("ci"));
        assert_eq!(broker_of("/brokers/ci/"), Some("ci"));
        assert_eq!(broker_of("/brokers/"), None);
        assert_eq!(broker_of("/brokers/a/b"), None);
        assert_eq!(broker_of("/other"), None);
    }

    #[test]
    fn tokens_are_checked() {
        let tokens = vec![IngressToken::from("old"), IngressToken::from("new-token")];
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(authorize(&tokens, &with("Bearer new-token")).is_ok());
        assert!(authorize(&tokens, &with("bearer old")).is_ok());
        assert!(authorize(&tokens, &with("Bearer nope")).is_err());
        assert!(authorize(&tokens, &with("Basic b2xk")).is_err());
        assert!(authorize(&tokens, &HeaderMap::new()).is_err());
        assert!(authorize(&[], &HeaderMap::new()).is_ok());
    }
}
