//! The HTTP client that delivers events: kept connections (HTTP/1.1 and HTTP/2),
//! `https` with rustls and the system's plus the webpki roots, or a sink's own CA and
//! client certificate. Redirects are never followed. A response body is read up to a
//! limit and no further. Sinks that ask for it get Standard Webhooks signatures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::connections::{Connector, Endpoint};
use super::outbound::{Guard, GuardedConnector};
use super::policy::Attempt;
use crate::config::subscriptions::{Sink, SinkFormat};
use crate::event::{binary, json, Data, Event};
use crate::expr::transform::Shaped;
use crate::http::tls::client_config;
use crate::router::explain::RequestShape;

type HttpsClient = Client<HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// What names one message to its sink: the `webhook-id` (the same on every attempt,
/// so a receiver can drop repeats) and the send time, for signed requests.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub unix_secs: i64,
    /// The trace context this send is (its attempt's span, when spans are exported);
    /// `None` sends a new span id of the event's own trace context, if it has one.
    pub hop: Option<crate::http::trace::TraceParent>,
}

/// The Standard Webhooks headers for `body`: `webhook-id`, `webhook-timestamp`, and
/// `webhook-signature` holding `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` for
/// each key, space-separated.
pub fn webhook_headers(
    keys: &[Vec<u8>],
    message: &Message,
    body: &[u8],
) -> [(&'static str, String); 3] {
    use base64::Engine as _;
    let timestamp = message.unix_secs.to_string();
    let signatures: Vec<String> = keys
        .iter()
        .map(|key| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
            let mut ctx = ring::hmac::Context::with_key(&key);
            ctx.update(message.id.as_bytes());
            ctx.update(b".");
            ctx.update(timestamp.as_bytes());
            ctx.update(b".");
            ctx.update(body);
            let tag = ctx.sign();
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
            )
        })
        .collect();
    [
        ("webhook-id", message.id.clone()),
        ("webhook-timestamp", timestamp),
        ("webhook-signature", signatures.join(" ")),
    ]
}

/// An event that cannot be put into an HTTP request: more headers than a header map
/// holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the event cannot be sent as an HTTP request: it needs more headers than HTTP allows")]
pub struct Unsendable;

/// A sink's answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    /// The body, at most the limit long.
    pub body: Bytes,
    /// Whether the body was longer than the limit (and the rest was not read).
    pub truncated: bool,
}

/// What opens connections to sinks with `tls`: TCP through `guard`, TLS for `https`.
pub(super) fn connector_for(tls: rustls::ClientConfig, guard: &Arc<Guard>) -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let http = GuardedConnector {
        inner: http,
        guard: guard.clone(),
    };
    crate::http::tls::https_or_http(tls, http)
}

/// A pooled client (for the token requests of sinks with `auth`).
fn client_for(tls: rustls::ClientConfig, guard: &Arc<Guard>) -> HttpsClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(super::connections::IDLE_FOR)
        .build(connector_for(tls, guard))
}

/// The most requests in flight to one host (`host:port`) from all lanes together, and
/// so the most connections to it: thousands of subscriptions to one sink share them
/// rather than open one each (and run the broker out of file descriptors).
pub const MAX_PER_HOST: usize = 256;

/// `scheme://authority`, and the sink URI of a sink with its own TLS settings.
type EndpointKey = (String, Option<String>);

/// Sends events to sinks over kept connections ([`Endpoint`]).
pub struct Sender {
    /// The in-flight bound of each host, by `host:port`.
    hosts: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// The endpoints, by scheme and authority, and the sink URI of a sink that brings
    /// its own TLS settings.
    endpoints: Mutex<HashMap<EndpointKey, Arc<Endpoint>>>,
    connector: Connector,
    /// The client token requests go through.
    default: HttpsClient,
    guard: Arc<Guard>,
    body_limit: usize,
}

impl Sender {
    /// `body_limit` bounds how much of any answer is read; `guard` says where
    /// connections may not go.
    pub fn new(body_limit: usize, guard: Guard) -> Result<Sender, String> {
        let guard = Arc::new(guard);
        let tls = client_config(None, None)?;
        Ok(Sender {
            hosts: Mutex::default(),
            endpoints: Mutex::default(),
            connector: connector_for(tls.clone(), &guard),
            default: client_for(tls, &guard),
            guard,
            body_limit,
        })
    }

    /// Builds the request for `event` (already transformed, when the sink transforms) as
    /// `sink` wants it: binary (every attribute as a percent-encoded `ce-` header, `data`
    /// as the body), structured JSON, or plain (the body and its `Content-Type` alone);
    /// `Prefer: reply` unless plain; the signature headers when the sink signs; the
    /// sink's own headers last.
    ///
    /// `Err` when the headers would pass what an HTTP header map can hold (the ingress's
    /// attribute limits keep events well inside it; an event stored before a limit was
    /// lowered may not be).
    pub fn request(
        sink: &Sink,
        event: &Event,
        message: &Message,
    ) -> Result<Request<Full<Bytes>>, Unsendable> {
        let mut headers =
            HeaderMap::try_with_capacity(event.attributes().len() + 4).map_err(|_| Unsendable)?;
        let body = match sink.format {
            SinkFormat::Binary => {
                let (ce, body) = binary::encode(event);
                for (name, value) in ce {
                    headers.try_append(name, value).map_err(|_| Unsendable)?;
                }
                body
            }
            SinkFormat::Structured => {
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/cloudevents+json"),
                );
                Bytes::from(json::encode_event(event))
            }
            SinkFormat::Plain => {
                let body = event.data().map(Data::body_bytes).unwrap_or_default();
                if !body.is_empty() {
                    if let Some(t) = event
                        .datacontenttype()
                        .and_then(|t| HeaderValue::from_str(t).ok())
                    {
                        headers.insert(CONTENT_TYPE, t);
                    }
                }
                body
            }
        };
        if sink.format != SinkFormat::Plain {
            // Asks the sink for a reply event (Knative's `Prefer: reply`); a plain sink
            // is no CloudEvents consumer and its answer is never read as one.
            headers.insert(
                HeaderName::from_static("prefer"),
                HeaderValue::from_static("reply"),
            );
        }
        // A new hop of the event's trace (the distributed-tracing extension's context).
        let hop = message
            .hop
            .clone()
            .or_else(|| crate::http::trace::of_event(event).map(|tp| tp.child()));
        if let Some(tp) = hop {
            if let Ok(v) = HeaderValue::from_str(&tp.to_string()) {
                headers.insert(HeaderName::from_static("traceparent"), v);
            }
            if let Some(v) = event
                .get_str(crate::http::trace::TRACESTATE)
                .filter(|s| s.len() <= crate::http::trace::TRACESTATE_MAX)
                .and_then(|s| HeaderValue::from_str(s).ok())
            {
                headers.insert(HeaderName::from_static("tracestate"), v);
            }
        }
        if let Some(signing) = &sink.signing {
            for (name, value) in webhook_headers(&signing.keys, message, &body) {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.append(HeaderName::from_static(name), v);
                }
            }
        }
        for (name, value) in &sink.headers {
            headers
                .try_append(name.clone(), value.clone())
                .map_err(|_| Unsendable)?;
        }
        if body.is_empty() {
            // An event without data: hyper would send neither Content-Length nor
            // Transfer-Encoding, and a sink that requires a length answers 411
            // (RFC 9110 §8.6: a POST without content should say 0).
            headers.insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from_static("0"),
            );
        }
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = sink.uri.clone();
        *request.headers_mut() = headers;
        Ok(request)
    }

    /// The in-flight bound of `uri`'s host, shared by every sink on it.
    fn host_bound(&self, uri: &http::Uri) -> Arc<tokio::sync::Semaphore> {
        // The authority as written (a URI without a port and one with the default port
        // count apart: a bound twice as wide, never a narrower one).
        let key = uri.authority().map_or("", |a| a.as_str());
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bound) = hosts.get(key) {
            return bound.clone();
        }
        let bound = Arc::new(tokio::sync::Semaphore::new(MAX_PER_HOST));
        hosts.insert(key.to_string(), bound.clone());
        bound
    }

    /// Where `sink`'s requests go: its host's in-flight bound and the connections kept
    /// to it, shared with every sink on the same host (and, for a sink with its own
    /// TLS settings, only with itself). A lane looks it up once, and hands it to each
    /// [`Sender::send`].
    pub fn endpoint(&self, sink: &Sink) -> Arc<Endpoint> {
        let uri = &sink.uri;
        let origin = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map_or("", |a| a.as_str())
        );
        let key = (origin, sink.tls.as_ref().map(|_| uri.to_string()));
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = endpoints.get(&key) {
            return e.clone();
        }
        let connector = match &sink.tls {
            None => self.connector.clone(),
            Some(tls) => connector_for((*tls.config).clone(), &self.guard),
        };
        // Sinks are absolute http(s) URIs (the config checks them).
        let endpoint = Arc::new(
            Endpoint::new(self.host_bound(uri), connector, uri)
                .expect("a sink URI is absolute with a host"),
        );
        endpoints.insert(key, endpoint.clone());
        endpoint
    }

    /// One attempt: send, then read the answer's body up to the limit, all within
    /// `timeout`. A sink with `auth` gets its bearer token (obtained first when the one
    /// held is stale); after a `401` the token is dropped and the request sent once more
    /// with a new one, inside the same attempt.
    /// `endpoint` is the sink's ([`Sender::endpoint`]).
    pub async fn send(
        &self,
        sink: &Sink,
        endpoint: &Arc<Endpoint>,
        event: &Event,
        message: &Message,
        timeout: Duration,
    ) -> Result<Response, Attempt> {
        let request = Self::request(sink, event, message).map_err(|_| Attempt::Unsendable)?;
        // Waiting for a slot of the sink's host is not part of the attempt's timeout:
        // a queued attempt has sent nothing yet (the lane's abort still ends the wait).
        let _slot = endpoint
            .bound
            .acquire()
            .await
            .map_err(|_| Attempt::Broken)?;
        let attempt = async move {
            let Some(auth) = &sink.auth else {
                return endpoint.exchange(request, self.body_limit).await;
            };
            let (parts, body) = request.into_parts();
            for last in [false, true] {
                let mut request = Request::from_parts(parts.clone(), body.clone());
                let value = Box::pin(super::auth::authorization(auth, &self.default, timeout))
                    .await
                    .map_err(|_| Attempt::Credentials)?;
                request
                    .headers_mut()
                    .insert(http::header::AUTHORIZATION, value.clone());
                let response = endpoint.exchange(request, self.body_limit).await?;
                if response.status != 401 || last {
                    return Ok(response);
                }
                super::auth::forget(auth, &value).await;
            }
            unreachable!("the second pass returns")
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or(Err(Attempt::Timeout))
    }
}

/// What `sink` would be sent for `event`, for `explain`: the transform applied and the
/// request built as a delivery builds it, with the values of the sink's own headers and
/// of the signature redacted.
pub fn preview(sink: &Sink, event: &Event, broker: &str) -> RequestShape {
    let shaped;
    let event = match &sink.transform {
        None => event,
        Some(t) => match t.apply(event) {
            Ok(Shaped::Event(e)) => {
                shaped = e;
                &*shaped
            }
            Ok(Shaped::Skipped(why)) => return RequestShape::Skipped(why.to_string()),
            Err(e) => return RequestShape::Failed(e.to_string()),
        },
    };
    let message = Message {
        id: format!("{broker}-<seq>"),
        unix_secs: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
        hop: None,
    };
    match Sender::request(sink, event, &message) {
        Ok(mut request) => {
            if sink.auth.is_some() {
                // The token is not fetched to explain; it is never shown anyway.
                let mut value = http::HeaderValue::from_static("Bearer (the sink's auth)");
                value.set_sensitive(true);
                request
                    .headers_mut()
                    .insert(http::header::AUTHORIZATION, value);
            }
            let headers = request
                .headers()
                .iter()
                .map(|(name, value)| {
                    let shown = if value.is_sensitive() || name == "webhook-signature" {
                        "(redacted)".to_string()
                    } else {
                        String::from_utf8_lossy(value.as_bytes()).into_owned()
                    };
                    (name.as_str().to_string(), shown)
                })
                .collect();
            let mut body = futures_util::FutureExt::now_or_never(request.body().clone().collect())
                .and_then(Result::ok)
                .map(|b| b.to_bytes().to_vec())
                .unwrap_or_default();
            if let (Some(t), Ok(text)) = (&sink.transform, std::str::from_utf8(&body)) {
                let mut text = text.to_string();
                for secret in t.secrets().filter(|s| !s.is_empty()) {
                    text = text.replace(secret, "(redacted)");
                }
                body = text.into_bytes();
            }
            RequestShape::Request { headers, body }
        }
        Err(e) => RequestShape::Failed(e.to_string()),
    }
}
