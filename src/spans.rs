//! OpenTelemetry spans of each event's way through the broker, exported over OTLP/HTTP
//! (protobuf) when `tracing.otlp.endpoint` is set:
//!
//! - `ingest <broker>` (server): the ingress decoding and storing the event; a child of
//!   the request's trace context (its `traceparent` header, else the event's own
//!   `traceparent` extension, linked when both are there and differ), or the root of a
//!   new trace;
//! - `route <broker>` (internal): the router deciding the event's subscriptions;
//! - `deliver <subscription>` and `dead-letter <subscription>` (client): one per
//!   attempt, whose span id is the `traceparent` parent the sink receives.
//!
//! The event is stored with its ingest span as its `traceparent`, so the route and
//! attempt spans, made later and on whichever instance, are children of it. A reply is
//! stored with the span of the attempt it answered as its `traceparent`.
//!
//! With no endpoint, [`Spans::off`] makes nothing and costs a branch per event.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags,
    TraceId, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::event::Event;
use crate::http::trace::{of_event, TraceParent, TRACESTATE};

/// The spans a server makes: none, or those it exports. Cloned into every part that
/// makes them.
#[derive(Clone, Default)]
pub struct Spans(Option<Arc<Exporting>>);

struct Exporting {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// How long the last spans may take to leave at shutdown.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// How long one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

impl Spans {
    /// No spans.
    pub fn off() -> Spans {
        Spans(None)
    }

    /// Spans exported to the collector at `endpoint` (its base URL: they are posted to
    /// `<endpoint>/v1/traces`), in batches from a thread of the SDK's. Must be called
    /// inside the runtime the export requests are to run on.
    ///
    /// The SDK's environment variables apply where the config says nothing:
    /// `OTEL_SERVICE_NAME` or a `service.name` in `OTEL_RESOURCE_ATTRIBUTES` (else
    /// `switchyard`), `OTEL_RESOURCE_ATTRIBUTES`,
    /// `OTEL_TRACES_SAMPLER` (parent-based, always on by default),
    /// `OTEL_EXPORTER_OTLP_HEADERS` and the `OTEL_BSP_*` batch settings.
    pub fn export(endpoint: &http::Uri) -> Result<Spans, String> {
        let url = format!("{}/v1/traces", endpoint.to_string().trim_end_matches('/'));
        let collector = Collector::new(&url)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(collector)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("tracing.otlp.endpoint: {e}"))?;
        // The SDK names the service `unknown_service` when the environment does not.
        let unnamed = opentelemetry_sdk::Resource::builder()
            .build()
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .is_none_or(|v| v.as_str().starts_with("unknown_service"));
        let mut resource = opentelemetry_sdk::Resource::builder()
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        if unnamed {
            resource = resource.with_service_name("switchyard");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("switchyard");
        Ok(Spans(Some(Arc::new(Exporting { provider, tracer }))))
    }

    /// Whether spans are made.
    pub fn on(&self) -> bool {
        self.0.is_some()
    }

    /// Sends the spans not yet exported, and stops exporting (at shutdown).
    pub async fn shutdown(&self) {
        let Some(ex) = self.0.clone() else {
            return;
        };
        let flushed =
            tokio::task::spawn_blocking(move || ex.provider.shutdown_with_timeout(SHUTDOWN_FLUSH))
                .await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "the last spans could not be exported");
        }
    }

    /// Starts the ingest span of `event` on `broker`, begun at `started` (when its
    /// request was read). `request` is the ingress request's trace context
    /// (`traceparent`, `tracestate`), when it had a well-formed one.
    pub fn ingest(
        &self,
        broker: &str,
        event: &Event,
        request: Option<(&TraceParent, Option<&str>)>,
        started: SystemTime,
    ) -> Option<OpenSpan> {
        let ex = self.0.as_ref()?;
        let own = of_event(event).and_then(|tp| remote(&tp, event.get_str(TRACESTATE)));
        let (parent, links) = match request.and_then(|(tp, state)| remote(tp, state)) {
            // The transport's context is the parent; the producer's own, when it is
            // another, is linked (it says where the event was made).
            Some(r) => {
                let other = own.filter(|o| o.span_id() != r.span_id());
                (Some(r), other.map(Link::with_context).into_iter().collect())
            }
            None => (own, Vec::new()),
        };
        let builder = ex
            .tracer
            .span_builder(format!("ingest {broker}"))
            .with_kind(SpanKind::Server)
            .with_start_time(started)
            .with_attributes(event_attributes(broker, event))
            .with_links(links);
        OpenSpan::new(ex.tracer.build_with_context(builder, &under(parent)))
    }

    /// Records the route span of `event`, as `route` says it was decided. Nothing for an
    /// event without trace context.
    pub fn route(&self, route: &Route<'_>, event: &Event) {
        let Some(ex) = self.0.as_ref() else {
            return;
        };
        let Some(parent) = parent_of(event) else {
            return;
        };
        let mut attributes = event_attributes(route.broker, event);
        attributes.extend([
            KeyValue::new("switchyard.seq", route.seq as i64),
            KeyValue::new("switchyard.matched", route.matched as i64),
            KeyValue::new("switchyard.lane_entries", route.entries as i64),
        ]);
        if route.backfill {
            attributes.push(KeyValue::new("switchyard.backfill", true));
        }
        let builder = ex
            .tracer
            .span_builder(format!("route {}", route.broker))
            .with_kind(SpanKind::Internal)
            .with_start_time(route.started)
            .with_attributes(attributes);
        ex.tracer
            .build_with_context(builder, &under(Some(parent)))
            .end_with_timestamp(route.ended);
    }

    /// Starts the span of one attempt to send `event` (the stored one, before any
    /// transform) to `sink`: `kind` is `deliver` or `dead-letter`. `None` for an event
    /// without trace context.
    pub fn attempt(&self, kind: &str, target: &Target<'_>, event: &Event) -> Option<OpenSpan> {
        let ex = self.0.as_ref()?;
        let parent = parent_of(event)?;
        let mut attributes = event_attributes(target.broker, event);
        attributes.extend([
            KeyValue::new("switchyard.subscription", target.subscription.to_string()),
            KeyValue::new("switchyard.seq", target.seq as i64),
            KeyValue::new("switchyard.attempt", i64::from(target.attempt)),
            KeyValue::new("http.request.method", "POST"),
        ]);
        // The sink's host and port, never its path or query: a webhook's URL often
        // carries its secret there.
        if let Ok(uri) = target.sink.parse::<http::Uri>() {
            if let Some(host) = uri.host() {
                attributes.push(KeyValue::new("server.address", host.to_string()));
            }
            let port = uri.port_u16().or(match uri.scheme_str() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            });
            if let Some(port) = port {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
            if let Some(scheme) = uri.scheme_str() {
                attributes.push(KeyValue::new("url.scheme", scheme.to_string()));
            }
        }
        let builder = ex
            .tracer
            .span_builder(format!("{kind} {}", target.subscription))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes);
        OpenSpan::new(ex.tracer.build_with_context(builder, &under(Some(parent))))
    }
}

/// One event's routing, for its span.
pub struct Route<'a> {
    pub broker: &'a str,
    pub seq: u64,
    pub started: SystemTime,
    pub ended: SystemTime,
    /// The subscriptions that matched.
    pub matched: usize,
    /// The lane entries that made.
    pub entries: usize,
    /// Decided for a new subscription's backfill, not as it arrived.
    pub backfill: bool,
}

/// What an attempt span is about.
pub struct Target<'a> {
    pub broker: &'a str,
    pub subscription: &'a str,
    /// The sink's URI (only its host and port go into the span).
    pub sink: &'a str,
    pub seq: u64,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// A span under way: ended when dropped, or by [`OpenSpan::end`].
pub struct OpenSpan {
    span: opentelemetry_sdk::trace::Span,
    context: TraceParent,
}

impl OpenSpan {
    /// `None` for a span without a valid context (the provider has shut down: a request
    /// answered during shutdown keeps the context it came with).
    fn new(span: opentelemetry_sdk::trace::Span) -> Option<OpenSpan> {
        if !span.span_context().is_valid() {
            return None;
        }
        let context = traceparent(span.span_context());
        Some(OpenSpan { span, context })
    }

    /// The span as a `traceparent`: the parent of what follows it.
    pub fn context(&self) -> &TraceParent {
        &self.context
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.span.set_attribute(KeyValue::new(key, value));
    }

    /// Marks the span failed, with what went wrong.
    pub fn fail(&mut self, why: impl Into<Cow<'static, str>>) {
        self.span.set_status(Status::error(why));
    }

    pub fn end(mut self) {
        self.span.end();
    }
}

/// The CloudEvents semantic conventions' attributes of `event`, and its broker.
fn event_attributes(broker: &str, event: &Event) -> Vec<KeyValue> {
    let mut out = vec![
        KeyValue::new("switchyard.broker", broker.to_string()),
        KeyValue::new("cloudevents.event_id", event.id().to_string()),
        KeyValue::new("cloudevents.event_source", event.source().to_string()),
        KeyValue::new("cloudevents.event_type", event.ty().to_string()),
        KeyValue::new(
            "cloudevents.event_spec_version",
            event.specversion().to_string(),
        ),
    ];
    if let Some(subject) = event.get_str("subject") {
        out.push(KeyValue::new(
            "cloudevents.event_subject",
            subject.to_string(),
        ));
    }
    out
}

/// The context a stored event's spans are children of: its `traceparent`.
fn parent_of(event: &Event) -> Option<SpanContext> {
    of_event(event).and_then(|tp| remote(&tp, event.get_str(TRACESTATE)))
}

fn under(parent: Option<SpanContext>) -> Context {
    match parent {
        Some(p) => Context::new().with_remote_span_context(p),
        None => Context::new(),
    }
}

fn remote(tp: &TraceParent, tracestate: Option<&str>) -> Option<SpanContext> {
    let trace_id = TraceId::from_hex(&tp.trace_id).ok()?;
    let span_id = SpanId::from_hex(&tp.parent_id).ok()?;
    let flags = u8::from_str_radix(&tp.flags, 16).ok()?;
    let state = tracestate
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        state,
    ))
}

fn traceparent(cx: &SpanContext) -> TraceParent {
    TraceParent {
        trace_id: cx.trace_id().to_string(),
        parent_id: cx.span_id().to_string(),
        flags: format!("{:02x}", cx.trace_flags().to_u8()),
    }
}

/// The exporter's HTTP client: the runtime's own connections (the SDK's batch thread
/// has no reactor, so each request runs as a task of the runtime), with the system's
/// and webpki's roots for an `https` collector. The collector is the operator's, not a
/// subscription's: the delivery guard does not apply.
struct Collector {
    url: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    /// Whether the last export failed (each change is logged once).
    failing: AtomicBool,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").field("url", &self.url).finish()
    }
}

/// The most of a collector's answer that is read.
const ANSWER_MAX: usize = 1 << 20;

impl Collector {
    fn new(url: &str) -> Result<Collector, String> {
        let tls = crate::http::tls::client_config(None, None)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(EXPORT_TIMEOUT));
        let https = crate::http::tls::https_or_http(tls, http);
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "span export needs a tokio runtime".to_string())?;
        Ok(Collector {
            url: crate::http::redact::redact(url).into_owned(),
            client: Client::builder(TokioExecutor::new()).build(https),
            runtime,
            failing: AtomicBool::new(false),
        })
    }

    fn outcome(&self, error: Option<String>) {
        match error {
            Some(why) if !self.failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                collector = %self.url,
                error = %why,
                "cannot export spans; they are dropped until the collector takes them"
            ),
            None if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(collector = %self.url, "spans are exported again")
            }
            _ => {}
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Collector {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let request = request.map(Full::new);
        let sent = self.runtime.spawn(async move {
            let exchange = async {
                let response = client.request(request).await?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, ANSWER_MAX).collect().await?.to_bytes();
                Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
            };
            match tokio::time::timeout(EXPORT_TIMEOUT, exchange).await {
                Ok(r) => r,
                Err(_) => Err("the collector did not answer in time".into()),
            }
        });
        let result = match sent.await {
            Ok(r) => r,
            Err(_) => Err("the broker is stopping".into()),
        };
        self.outcome(match &result {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("the collector answered {}", r.status())),
            Err(e) => Some(e.to_string()),
        });
        result
    }
}
