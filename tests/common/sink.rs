//! A real HTTP sink for tests: it records every request and answers by a script
//! (`503, 503, 200`), then by a default answer; an answer can be delayed or never come.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// One answer of the script.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// How long to wait before answering (`None`: never answer).
    pub delay: Option<Duration>,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            delay: Some(Duration::ZERO),
        }
    }

    /// Never answers (the request hangs until the client gives up).
    pub fn hang() -> Answer {
        Answer {
            delay: None,
            ..Answer::status(200)
        }
    }

    /// A 200 that is a binary-mode reply event with these attributes.
    pub fn reply(id: &str, source: &str, ty: &str) -> Answer {
        Answer::status(200)
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", source)
            .header("ce-type", ty)
    }

    pub fn header(mut self, k: &str, v: &str) -> Answer {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    pub fn body(mut self, b: impl Into<Bytes>) -> Answer {
        self.body = b.into();
        self
    }

    pub fn after(mut self, d: Duration) -> Answer {
        self.delay = Some(d);
        self
    }
}

/// A request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone)]
pub struct TestSink {
    pub base: String,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
    default: Arc<Mutex<Answer>>,
}

impl TestSink {
    /// Starts a sink on a free loopback port.
    pub async fn start(script: Vec<Answer>, default: Answer) -> TestSink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink = TestSink {
            base: format!("http://{}", listener.local_addr().unwrap()),
            received: Arc::default(),
            script: Arc::new(Mutex::new(script.into())),
            default: Arc::new(Mutex::new(default)),
        };
        let s = sink.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let s = s.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|c| c.to_bytes())
                                    .unwrap_or_default();
                                let answer = {
                                    let next = s.script.lock().unwrap().pop_front();
                                    next.unwrap_or_else(|| s.default.lock().unwrap().clone())
                                };
                                s.received.lock().unwrap().push(Received {
                                    at: Instant::now(),
                                    path: parts.uri.path().to_string(),
                                    headers: parts.headers,
                                    body,
                                });
                                match answer.delay {
                                    None => std::future::pending::<()>().await,
                                    Some(d) => tokio::time::sleep(d).await,
                                }
                                let mut r = Response::new(Full::new(answer.body.clone()));
                                *r.status_mut() = StatusCode::from_u16(answer.status).unwrap();
                                for (k, v) in &answer.headers {
                                    r.headers_mut().insert(
                                        http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                        v.parse().unwrap(),
                                    );
                                }
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        },
                    );
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        sink
    }

    /// A sink that accepts and never answers: deliveries to it stay in flight.
    pub async fn black_hole() -> TestSink {
        TestSink::start(Vec::new(), Answer::hang()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn set_default(&self, a: Answer) {
        *self.default.lock().unwrap() = a;
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` requests have arrived; returns them.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "the sink got {} of {n} requests in {within:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
