//! The connections to one sink host, shared by every lane that sends there: HTTP/1.1
//! connections taken one request at a time and handed back once the answer is read,
//! or one HTTP/2 connection that all requests share when the host offers `h2` (ALPN).
//!
//! A request takes an idle connection without a task or a lock held across an await:
//! a lane's deliveries run inside the lane's own task, and the connection is handed
//! back by the delivery that used it. A request that a kept connection could not take
//! (the host closed it while it was idle) goes out on the next one, and at last on a
//! new one; an error on a new connection is the attempt's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, HOST};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::Connection as _;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tower_service::Service as _;

use super::client::Response;
use super::outbound::{self, GuardedConnector};
use super::policy::Attempt;

/// What opens a connection to a sink: TCP through the outbound guard, then TLS for
/// `https` URIs (with `h2` and `http/1.1` offered).
pub type Connector = HttpsConnector<GuardedConnector>;

type Body = Full<Bytes>;

/// How long an idle connection is kept.
pub const IDLE_FOR: Duration = Duration::from_secs(90);

/// A kept HTTP/1.1 connection and when it was handed back.
struct Idle {
    conn: http1::SendRequest<Body>,
    since: Instant,
}

enum Conn {
    One(http1::SendRequest<Body>),
    Shared(http2::SendRequest<Body>),
}

/// Where the requests of the sinks on one host (and one TLS setting) go.
pub struct Endpoint {
    /// The most requests in flight to the host, shared by every endpoint on it.
    pub bound: Arc<Semaphore>,
    connector: Connector,
    /// `scheme://authority/`, what a connection is opened to.
    base: Uri,
    /// The `Host` an HTTP/1.1 request names: the authority without a default port.
    host: HeaderValue,
    /// Idle HTTP/1.1 connections, the one handed back last at the back.
    idle: Mutex<VecDeque<Idle>>,
    /// The HTTP/2 connection, when the host chose HTTP/2.
    shared: Mutex<Option<http2::SendRequest<Body>>>,
    idle_for: Duration,
    sweeping: AtomicBool,
}

impl Endpoint {
    /// The endpoint of `uri`'s scheme and authority. `Err` when `uri` has no host.
    pub fn new(bound: Arc<Semaphore>, connector: Connector, uri: &Uri) -> Result<Endpoint, String> {
        Self::with_idle_for(bound, connector, uri, IDLE_FOR)
    }

    fn with_idle_for(
        bound: Arc<Semaphore>,
        connector: Connector,
        uri: &Uri,
        idle_for: Duration,
    ) -> Result<Endpoint, String> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(format!("{uri} is not an absolute URI"));
        };
        let base = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| e.to_string())?;
        let default_port = match scheme.as_str() {
            "https" => 443,
            _ => 80,
        };
        let host = match authority.port_u16() {
            Some(port) if port != default_port => format!("{}:{port}", authority.host()),
            _ => authority.host().to_string(),
        };
        Ok(Endpoint {
            bound,
            connector,
            base,
            host: HeaderValue::from_str(&host).map_err(|e| e.to_string())?,
            idle: Mutex::default(),
            shared: Mutex::default(),
            idle_for,
            sweeping: AtomicBool::new(false),
        })
    }

    /// How many idle HTTP/1.1 connections are kept.
    #[cfg(test)]
    fn idle_connections(&self) -> usize {
        self.lock_idle().len()
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_shared(&self) -> std::sync::MutexGuard<'_, Option<http2::SendRequest<Body>>> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `request` (its URI absolute) and reads the answer's body up to `limit`.
    pub async fn exchange(
        self: &Arc<Self>,
        mut request: Request<Body>,
        limit: usize,
    ) -> Result<Response, Attempt> {
        let absolute = request.uri().clone();
        let origin = absolute
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
        let response = loop {
            let (conn, reused) = self.take().await?;
            let (sent, one) = match conn {
                Conn::One(mut conn) => {
                    *request.uri_mut() = origin.clone();
                    request
                        .headers_mut()
                        .entry(HOST)
                        .or_insert_with(|| self.host.clone());
                    (conn.try_send_request(request).await, Some(conn))
                }
                Conn::Shared(mut conn) => {
                    *request.uri_mut() = absolute.clone();
                    let sent = conn.try_send_request(request).await;
                    if sent.is_err() {
                        // Not taken again: the next try opens a new connection rather
                        // than spin on one that is going away.
                        *self.lock_shared() = None;
                    }
                    (sent, None)
                }
            };
            match sent {
                Ok(response) => break (response, one),
                Err(mut e) => match e.take_message() {
                    // Not sent: a kept connection the host closed. The next one, or a
                    // new one.
                    Some(back) if reused => request = back,
                    _ => return Err(Attempt::Broken),
                },
            }
        };
        let (response, one) = response;
        let (parts, mut body) = response.into_parts();
        let mut buf = BytesMut::new();
        let mut truncated = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Attempt::Broken)?;
            if let Ok(data) = frame.into_data() {
                let room = limit.saturating_sub(buf.len());
                if data.len() > room {
                    buf.extend_from_slice(&data[..room]);
                    truncated = true;
                    break;
                }
                buf.extend_from_slice(&data);
            }
        }
        drop(body);
        // A connection whose answer was not read to its end is not kept: dropping it
        // closes it.
        if let (Some(conn), false) = (one, truncated) {
            self.hand_back(conn);
        }
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: buf.freeze(),
            truncated,
        })
    }

    /// A connection to send on: the HTTP/2 one, the idle HTTP/1.1 one handed back
    /// last, or a new one; and whether it was kept (rather than opened for this).
    async fn take(self: &Arc<Self>) -> Result<(Conn, bool), Attempt> {
        let shared = self.lock_shared().clone();
        if let Some(conn) = shared {
            if !conn.is_closed() {
                return Ok((Conn::Shared(conn), true));
            }
        }
        loop {
            let Some(idle) = self.lock_idle().pop_back() else {
                break;
            };
            let mut conn = idle.conn;
            if idle.since.elapsed() >= self.idle_for || conn.is_closed() {
                continue;
            }
            // Ready once its connection has finished the last exchange.
            if conn.ready().await.is_ok() {
                return Ok((Conn::One(conn), true));
            }
        }
        // Boxed: most requests take a kept connection, and would carry the state of
        // opening one.
        Box::pin(self.open()).await.map(|conn| (conn, false))
    }

    fn hand_back(self: &Arc<Self>, conn: http1::SendRequest<Body>) {
        if conn.is_closed() {
            return;
        }
        self.lock_idle().push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }

    async fn open(self: &Arc<Self>) -> Result<Conn, Attempt> {
        let mut connector = self.connector.clone();
        let connecting = async {
            std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
            connector.call(self.base.clone()).await
        };
        let io = connecting.await.map_err(|e| {
            if outbound::is_refused(&*e) {
                Attempt::Refused
            } else {
                Attempt::ConnectError
            }
        })?;
        if io.connected().is_negotiated_h2() {
            let (conn, connection) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(|_| Attempt::ConnectError)?;
            tokio::spawn(connection);
            let mut shared = self.lock_shared();
            if shared.as_ref().is_none_or(|c| c.is_closed()) {
                *shared = Some(conn.clone());
            }
            return Ok(Conn::Shared(conn));
        }
        let (conn, connection) = http1::handshake(io)
            .await
            .map_err(|_| Attempt::ConnectError)?;
        tokio::spawn(connection);
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self), self.idle_for));
        }
        Ok(Conn::One(conn))
    }
}

/// Closes the endpoint's connections that have been idle `idle_for`, until the
/// endpoint is dropped.
async fn sweep(endpoint: Weak<Endpoint>, idle_for: Duration) {
    let every = (idle_for / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(endpoint) = endpoint.upgrade() else {
            return;
        };
        endpoint
            .lock_idle()
            .retain(|i| i.since.elapsed() < idle_for && !i.conn.is_closed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn connector() -> Connector {
        let tls = crate::http::tls::client_config(None, None).unwrap();
        super::super::client::connector_for(tls, &Arc::new(outbound::Guard::default()))
    }

    /// A server that answers 200 and counts the connections it accepted.
    async fn server() -> (Uri, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}/hook?x=1", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
                            let said = format!(
                                "{} {}",
                                req.headers()["host"].to_str().unwrap(),
                                req.uri()
                            );
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from(said),
                            )))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        (uri, accepted)
    }

    fn post(uri: &Uri) -> Request<Body> {
        let mut r = Request::new(Full::new(Bytes::from_static(b"{}")));
        *r.method_mut() = http::Method::POST;
        *r.uri_mut() = uri.clone();
        r
    }

    #[tokio::test]
    async fn requests_reuse_a_kept_connection_in_origin_form_with_the_host() {
        let (uri, accepted) = server().await;
        let e = Arc::new(Endpoint::new(Arc::new(Semaphore::new(8)), connector(), &uri).unwrap());
        for _ in 0..5 {
            let r = e.exchange(post(&uri), 1024).await.unwrap();
            assert_eq!(r.status, 200);
            let host = uri.authority().unwrap().as_str();
            assert_eq!(&r.body[..], format!("{host} /hook?x=1").as_bytes());
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for five requests"
        );
        assert_eq!(e.idle_connections(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_that_are_all_kept() {
        let (uri, accepted) = server().await;
        let e = Arc::new(Endpoint::new(Arc::new(Semaphore::new(8)), connector(), &uri).unwrap());
        let sends: Vec<_> = (0..4).map(|_| e.exchange(post(&uri), 1024)).collect();
        for r in futures_util::future::join_all(sends).await {
            assert_eq!(r.unwrap().status, 200);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        assert_eq!(e.idle_connections(), 4);
        // The next four take the kept ones.
        let sends: Vec<_> = (0..4).map(|_| e.exchange(post(&uri), 1024)).collect();
        for r in futures_util::future::join_all(sends).await {
            assert_eq!(r.unwrap().status, 200);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_connection_the_host_closed_while_idle_costs_no_failure() {
        // A server that closes each connection after one answer, without saying so.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = accepted.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            while let Ok((mut tcp, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(2).any(|w| w == b"{}") {
                        let n = tcp.read(&mut buf).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                    }
                    tcp.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                });
            }
        });
        let e = Arc::new(Endpoint::new(Arc::new(Semaphore::new(8)), connector(), &uri).unwrap());
        for _ in 0..3 {
            assert_eq!(e.exchange(post(&uri), 1024).await.unwrap().status, 202);
            // The server has closed it by now.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_time() {
        let (uri, accepted) = server().await;
        let e = Arc::new(
            Endpoint::with_idle_for(
                Arc::new(Semaphore::new(8)),
                connector(),
                &uri,
                Duration::from_millis(200),
            )
            .unwrap(),
        );
        e.exchange(post(&uri), 1024).await.unwrap();
        assert_eq!(e.idle_connections(), 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(e.idle_connections(), 0, "swept");
        e.exchange(post(&uri), 1024).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_host_header_leaves_out_a_default_port() {
        let bound = || Arc::new(Semaphore::new(1));
        let host = |u: &str| {
            Endpoint::new(bound(), connector(), &u.parse().unwrap())
                .unwrap()
                .host
        };
        assert_eq!(host("http://sink.example:80/a"), "sink.example");
        assert_eq!(host("https://sink.example:443/a"), "sink.example");
        assert_eq!(host("http://sink.example:8080/a"), "sink.example:8080");
        assert_eq!(host("https://[::1]:8443/"), "[::1]:8443");
    }
}
