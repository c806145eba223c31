//! OpenTelemetry span export (`tracing.otlp.endpoint`): a collector in the test takes
//! the broker's OTLP/HTTP requests, and the spans it gets are checked for their parent
//! links against each other and against the `traceparent` each sink received.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use prost::Message as _;

use common::sink::{Answer, TestSink};
use common::{subscription, TestServer};

const WAIT: Duration = Duration::from_secs(20);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver: keeps every export request posted to `/v1/traces` as
/// protobuf, refusing anything else with 400.
#[derive(Clone, Default)]
struct Collector {
    url: String,
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    refused: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = Collector {
            url: format!("http://{}", listener.local_addr().unwrap()),
            ..Collector::default()
        };
        let shared = c.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let c = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let c = c.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await.unwrap().to_bytes();
                                let protobuf = parts
                                    .headers
                                    .get("content-type")
                                    .is_some_and(|v| v == "application/x-protobuf");
                                let decoded = ExportTraceServiceRequest::decode(body.clone());
                                let status = match decoded {
                                    Ok(r)
                                        if protobuf
                                            && parts.method == http::Method::POST
                                            && parts.uri.path() == "/v1/traces" =>
                                    {
                                        c.requests.lock().unwrap().push(r);
                                        200
                                    }
                                    other => {
                                        c.refused.lock().unwrap().push(format!(
                                            "{} {} {:?}: {other:?}",
                                            parts.method,
                                            parts.uri,
                                            parts.headers.get("content-type")
                                        ));
                                        400
                                    }
                                };
                                let mut r = http::Response::new(Full::new(Bytes::new()));
                                *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                                r.headers_mut().insert(
                                    "content-type",
                                    http::HeaderValue::from_static("application/x-protobuf"),
                                );
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        c
    }

    fn spans(&self) -> Vec<Span> {
        assert_eq!(*self.refused.lock().unwrap(), Vec::<String>::new());
        self.requests
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| ss.spans.clone())
            .collect()
    }

    /// `service.name` of every export's resource.
    fn service_names(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_spans)
            .filter_map(|rs| rs.resource.as_ref())
            .filter_map(|r| text(&r.attributes, "service.name"))
            .collect()
    }
}

fn text(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
        .map(|v| match v {
            Value::StringValue(s) => s,
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

fn attr(span: &Span, key: &str) -> Option<String> {
    text(&span.attributes, key)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    let mut found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    found.sort_by_key(|s| attr(s, "switchyard.attempt"));
    found
}

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    match named(spans, name)[..] {
        [s] => s,
        ref other => panic!("{} spans named {name}: {spans:#?}", other.len()),
    }
}

/// `(trace id, parent id)` of a `traceparent` header.
fn ids(value: Option<&str>) -> (String, String) {
    let v = value.expect("a traceparent header");
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    (parts[1].to_string(), parts[2].to_string())
}

fn otlp(collector: &Collector) -> String {
    format!(
        "tracing:\n  otlp:\n    endpoint: '{}'\ndelivery:\n  backoffDelay: PT0.01S\n",
        collector.url
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_routing_and_every_attempt_are_spans_linked_to_their_parents() {
    let collector = Collector::start().await;
    // The first sink fails once, then takes the event; the second refuses for good, so
    // its event goes to the dead-letter sink.
    let flaky = TestSink::start(vec![Answer::status(503)], Answer::status(200)).await;
    let refusing = TestSink::start(vec![], Answer::status(400)).await;
    let dls = TestSink::start(vec![], Answer::status(200)).await;
    // A webhook URL with its secret in the path, as Slack's are.
    let dls_url = dls.url("/services/T0/B0/s3cr3t");
    let subs = [
        subscription(
            "flaky",
            &format!("  sinks: [{{ uri: '{}' }}]\n", flaky.url("/")),
        ),
        subscription(
            "refused",
            &format!(
                "  sinks: [{{ uri: '{}' }}]\n  delivery: {{ deadLetterSink: {{ uri: '{}' }} }}\n",
                refusing.url("/"),
                dls_url
            ),
        ),
    ]
    .concat();
    let mut t = TestServer::start_with_subscriptions(&otlp(&collector), &[("s.yaml", &subs)]).await;
    let r = t
        .post(
            "/",
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "ping-1"),
                ("ce-source", "/producer"),
                ("ce-type", "dev.example.ping"),
                ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 202);
    let attempts = flaky.wait_for(2, WAIT).await;
    let letter = dls.wait_for(1, WAIT).await.remove(0);
    let refused = refusing.wait_for(1, WAIT).await.remove(0);
    common::wait_until("the dead letter is stored", async || {
        !t.dead_letters().await.is_empty()
    })
    .await;
    // Stopping sends what is left in the batch.
    t.stop().await;
    let spans = collector.spans();
    assert_eq!(collector.service_names()[0], "switchyard");
    for s in &spans {
        assert_eq!(
            hex(&s.trace_id),
            TRACE,
            "{} keeps the producer's trace",
            s.name
        );
    }

    let ingest = one(&spans, "ingest default");
    assert_eq!(
        hex(&ingest.parent_span_id),
        PARENT,
        "a child of the request"
    );
    assert_eq!(ingest.kind, SpanKind::Server as i32);
    assert_eq!(
        attr(ingest, "cloudevents.event_id").as_deref(),
        Some("ping-1")
    );
    assert_eq!(
        attr(ingest, "cloudevents.event_type").as_deref(),
        Some("dev.example.ping")
    );
    assert_eq!(
        attr(ingest, "switchyard.outcome").as_deref(),
        Some("stored")
    );
    let ingest_id = hex(&ingest.span_id);
    // The event goes on from the ingest span: its stored traceparent.
    for received in [&attempts[0], &attempts[1], &refused, &letter] {
        assert_eq!(
            received.header("ce-traceparent"),
            Some(format!("00-{TRACE}-{ingest_id}-01").as_str())
        );
    }

    let route = one(&spans, "route default");
    assert_eq!(hex(&route.parent_span_id), ingest_id);
    assert_eq!(attr(route, "switchyard.matched").as_deref(), Some("2"));
    assert!(route.start_time_unix_nano >= ingest.start_time_unix_nano);

    // One span per attempt, each the parent the sink was told of.
    let delivers = named(&spans, "deliver flaky");
    assert_eq!(delivers.len(), 2, "{delivers:#?}");
    for (span, received) in delivers.iter().zip(&attempts) {
        assert_eq!(hex(&span.parent_span_id), ingest_id);
        assert_eq!(span.kind, SpanKind::Client as i32);
        assert_eq!(
            ids(received.header("traceparent")),
            (TRACE.to_string(), hex(&span.span_id))
        );
    }
    assert_eq!(
        attr(delivers[0], "switchyard.attempt").as_deref(),
        Some("1")
    );
    assert_eq!(
        attr(delivers[0], "http.response.status_code").as_deref(),
        Some("503")
    );
    let failed = delivers[0].status.as_ref().expect("a status");
    assert_eq!(failed.code, StatusCode::Error as i32);
    assert!(failed.message.contains("503"), "{}", failed.message);
    assert_eq!(
        attr(delivers[1], "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_ne!(
        delivers[1].status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );

    let refused_span = one(&spans, "deliver refused");
    assert_eq!(hex(&refused_span.parent_span_id), ingest_id);
    assert_eq!(
        ids(refused.header("traceparent")).1,
        hex(&refused_span.span_id)
    );
    let dead = one(&spans, "dead-letter refused");
    assert_eq!(hex(&dead.parent_span_id), ingest_id);
    assert_eq!(ids(letter.header("traceparent")).1, hex(&dead.span_id));
    // The sink's host and port, never the path that holds its secret.
    let port = dls.base.rsplit(':').next().unwrap().to_string();
    assert_eq!(
        (attr(dead, "server.address"), attr(dead, "server.port")),
        (Some("127.0.0.1".to_string()), Some(port))
    );
    for s in &spans {
        for kv in &s.attributes {
            let value = text(std::slice::from_ref(kv), &kv.key).unwrap_or_default();
            assert!(!value.contains("s3cr3t"), "{} {}: {value}", s.name, kv.key);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untraced_event_starts_a_trace_and_its_reply_follows_the_attempt_it_answered() {
    let collector = Collector::start().await;
    let replying = TestSink::start(
        vec![],
        Answer::reply("reply-1", "/replier", "dev.example.reply"),
    )
    .await;
    let replies = TestSink::start(vec![], Answer::status(200)).await;
    let subs = [
        subscription("first", &format!("  filter:\n    attributes: {{ type: dev.example.ping }}\n  sinks: [{{ uri: '{}' }}]\n", replying.url("/"))),
        subscription("replies", &format!("  filter:\n    attributes: {{ type: dev.example.reply }}\n  sinks: [{{ uri: '{}' }}]\n", replies.url("/"))),
    ]
    .concat();
    let mut t = TestServer::start_with_subscriptions(&otlp(&collector), &[("s.yaml", &subs)]).await;
    let r = t
        .post_json(&serde_json::json!({
            "specversion": "1.0", "id": "ping-1", "source": "/producer", "type": "dev.example.ping"
        }))
        .await;
    assert_eq!(r.status, 202);
    let first = replying.wait_for(1, WAIT).await.remove(0);
    let reply = replies.wait_for(1, WAIT).await.remove(0);
    t.stop().await;
    let spans = collector.spans();

    let ingest = one(&spans, "ingest default");
    assert!(ingest.parent_span_id.is_empty(), "the root of a new trace");
    let trace = hex(&ingest.trace_id);
    let deliver = one(&spans, "deliver first");
    assert_eq!(hex(&deliver.parent_span_id), hex(&ingest.span_id));
    assert_eq!(
        ids(first.header("traceparent")),
        (trace.clone(), hex(&deliver.span_id))
    );
    // The reply is stored with the attempt it answered as its trace context; it is
    // routed and delivered under that span.
    assert_eq!(
        reply.header("ce-traceparent"),
        Some(format!("00-{trace}-{}-01", hex(&deliver.span_id)).as_str())
    );
    let routes = named(&spans, "route default");
    assert_eq!(routes.len(), 2, "the event's and the reply's");
    let reply_route = routes
        .iter()
        .find(|s| attr(s, "cloudevents.event_id").as_deref() == Some("reply-1"))
        .unwrap();
    assert_eq!(hex(&reply_route.parent_span_id), hex(&deliver.span_id));
    let reply_deliver = one(&spans, "deliver replies");
    assert_eq!(hex(&reply_deliver.parent_span_id), hex(&deliver.span_id));
    assert_eq!(
        ids(reply.header("traceparent")),
        (trace, hex(&reply_deliver.span_id))
    );
}

#[tokio::test]
async fn a_collector_that_is_down_costs_no_event() {
    // Nothing listens on port 1: every export fails; deliveries go on.
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let spec = format!("  sinks: [{{ uri: '{}' }}]\n", sink.url("/"));
    let mut t = TestServer::start_with_subscriptions(
        "tracing:\n  otlp:\n    endpoint: 'http://127.0.0.1:1'\n",
        &[("s.yaml", &subscription("s", &spec))],
    )
    .await;
    for i in 0..3 {
        let r = t.post_json(&common::minimal(&format!("e{i}"))).await;
        assert_eq!(r.status, 202);
    }
    let got = sink.wait_for(3, WAIT).await;
    for r in &got {
        assert!(r.header("traceparent").is_some());
    }
    // The stop's last flush fails too, and the stop still ends.
    tokio::time::timeout(WAIT, t.stop())
        .await
        .expect("the broker stops");
}

#[tokio::test]
async fn the_request_context_is_the_parent_and_the_events_own_is_linked() {
    let collector = Collector::start().await;
    let mut t = TestServer::start(&otlp(&collector)).await;
    let other_trace = "11111111111111111111111111111111";
    let r = t
        .post(
            "/",
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "own"),
                ("ce-source", "/p"),
                ("ce-type", "t"),
                ("ce-traceparent", &format!("00-{TRACE}-{PARENT}-01")),
                (
                    "traceparent",
                    &format!("00-{other_trace}-2222222222222222-01"),
                ),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 202);
    let stored = t.records("default").await.remove(0).event;
    t.stop().await;
    let spans = collector.spans();
    let ingest = one(&spans, "ingest default");
    assert_eq!(
        (hex(&ingest.trace_id), hex(&ingest.parent_span_id)),
        (other_trace.to_string(), "2222222222222222".to_string())
    );
    let links: Vec<(String, String)> = ingest
        .links
        .iter()
        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
        .collect();
    assert_eq!(links, [(TRACE.to_string(), PARENT.to_string())]);
    assert_eq!(
        stored.get_str("traceparent"),
        Some(format!("00-{other_trace}-{}-01", hex(&ingest.span_id)).as_str()),
        "stored with its ingest span"
    );
}

#[tokio::test]
async fn an_unsampled_trace_is_passed_on_and_not_exported() {
    let collector = Collector::start().await;
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let spec = format!("  sinks: [{{ uri: '{}' }}]\n", sink.url("/"));
    let mut t = TestServer::start_with_subscriptions(
        &otlp(&collector),
        &[("s.yaml", &subscription("s", &spec))],
    )
    .await;
    let r = t
        .post(
            "/",
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "quiet"),
                ("ce-source", "/p"),
                ("ce-type", "t"),
                ("traceparent", &format!("00-{TRACE}-{PARENT}-00")),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 202);
    let got = sink.wait_for(1, WAIT).await.remove(0);
    t.stop().await;
    let header = got.header("traceparent").expect("the trace is passed on");
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!((parts[1], parts[3]), (TRACE, "00"), "{header}");
    assert_ne!(parts[2], PARENT, "a span id of the hop's own");
    let stored = got.header("ce-traceparent").unwrap();
    assert!(
        stored.ends_with("-00") && !stored.contains(PARENT),
        "{stored}"
    );
    assert!(
        collector.spans().is_empty(),
        "the producer chose not to sample: {:#?}",
        collector.spans()
    );
}

#[tokio::test]
async fn an_event_stored_without_its_trace_context_says_so_on_its_ingest_span() {
    let collector = Collector::start().await;
    let endpoint: http::Uri = collector.url.parse().unwrap();
    let mut t = TestServer::start_with(|c| {
        c.tracing.otlp_endpoint = Some(endpoint);
        c.ingress.max_attributes = 5;
    })
    .await;
    let r = t
        .post(
            "/",
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "full"),
                ("ce-source", "/p"),
                ("ce-type", "t"),
                ("ce-x", "y"),
                ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 202);
    let stored = t.records("default").await.remove(0).event;
    assert_eq!(stored.get_str("traceparent"), None);
    t.stop().await;
    let spans = collector.spans();
    let ingest = one(&spans, "ingest default");
    assert_eq!(
        attr(ingest, "switchyard.trace_context").as_deref(),
        Some("dropped")
    );
    assert!(named(&spans, "route default").is_empty(), "{spans:#?}");
}
