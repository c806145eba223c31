//! Test harness: a real broker on port 0 over a temp directory, and a plain HTTP client.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use switchyard::clock::ManualClock;
use switchyard::config;
use switchyard::log::LogRecord;
use switchyard::server::Server;

/// 2026-01-01T00:00:00Z, a fixed start for manual clocks.
pub const T0: u64 = 1_767_225_600_000_000_000;

/// How long the polling helpers wait before they fail.
pub const EVENTUALLY: std::time::Duration = std::time::Duration::from_secs(20);

/// Polls `probe` every 20 ms until it returns `Some`, and returns that; fails naming
/// `what` after `EVENTUALLY`.
pub async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Polls `cond` until it holds; fails naming `what` after `EVENTUALLY`.
pub async fn wait_until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    eventually(what, async || cond().await.then_some(())).await
}

/// The value of the first series `name{…}` in a `/metrics` text whose labels hold every
/// `(label, value)` of `with`.
pub fn sample(metrics: &str, name: &str, with: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let labels = series.strip_prefix(name)?.strip_prefix('{')?;
        with.iter()
            .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().unwrap())
    })
}

pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub struct TestServer {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub clock: ManualClock,
    pub yaml: String,
    /// What the broker stores its events and lanes in.
    pub backend: Backend,
    /// The nats-server a JetStream broker runs on (its own, one node).
    pub nats: Option<nats::Nats>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The storage a test's broker runs on: the suites that hold for both run against both
/// (see [`backends`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded store in the test's temporary directory.
    Embedded,
    /// A single-node nats-server of the test's own (`max_payload: 8MB`), started with the
    /// broker.
    JetStream,
    /// A cluster of three nats-servers of the test's own, the streams with three replicas
    /// (reads are answered by any of them).
    JetStreamCluster,
}

impl Backend {
    /// [`TestServer::start`] on this backend.
    pub async fn start(self, extra: &str) -> TestServer {
        TestServer::start_on(self, extra, &[]).await
    }

    /// [`TestServer::start_with_subscriptions`] on this backend.
    pub async fn start_with_subscriptions(self, extra: &str, files: &[(&str, &str)]) -> TestServer {
        TestServer::start_on(self, extra, files).await
    }

    /// [`TestServer::start_with`] on this backend.
    pub async fn start_with(self, config: impl FnOnce(&mut config::Config)) -> TestServer {
        let mut t = self.start("").await;
        t.restart_with(config).await;
        t
    }
}

/// Runs each named `async fn(Backend)` of the calling test file as three tests,
/// `embedded::NAME`, `jetstream::NAME` and `jetstream_cluster::NAME` (the latter two on
/// nats-servers of their own; without the program they say so and pass, unless
/// `NATS_REQUIRED` is set).
#[allow(unused_macros)]
macro_rules! backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Backend::Embedded).await
                }
            )*
        }
        mod jetstream {
            $(
                #[tokio::test]
                async fn $name() {
                    if $crate::common::nats::available().is_some() {
                        super::$name($crate::common::Backend::JetStream).await
                    }
                }
            )*
        }
        mod jetstream_cluster {
            $(
                #[tokio::test]
                async fn $name() {
                    if $crate::common::nats::available().is_some() {
                        super::$name($crate::common::Backend::JetStreamCluster).await
                    }
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use backends;

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// The config every test starts from: loopback ports, the temp dir (and the test's
/// nats-server on JetStream), plus `extra` YAML.
fn config_for(dir: &Path, nats: Option<&nats::Nats>, extra: &str) -> config::Config {
    let mut storage = format!("storage:\n  path: {}\n", dir.join("data").display());
    if let Some(n) = nats {
        storage.push_str(&format!(
            "  backend: jetstream\n  jetstream:\n    servers: [{}]\n    replicas: {}\n",
            n.urls().join(", "),
            n.nodes.len()
        ));
    }
    let yaml =
        format!("ingress:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n{storage}{extra}");
    config::from_yaml(None, &yaml, &BTreeMap::new()).expect("test config is valid")
}

impl TestServer {
    /// Starts a broker; `extra` is YAML appended to the base config (top-level keys
    /// other than ingress/admin/storage).
    pub async fn start(extra: &str) -> TestServer {
        TestServer::start_with_subscriptions(extra, &[]).await
    }

    /// Starts a broker with subscription files `(name, text)` in its folder (hot
    /// reloaded from there).
    pub async fn start_with_subscriptions(extra: &str, files: &[(&str, &str)]) -> TestServer {
        TestServer::start_on(Backend::Embedded, extra, files).await
    }

    async fn start_on(backend: Backend, extra: &str, files: &[(&str, &str)]) -> TestServer {
        let nats = match backend {
            Backend::Embedded => None,
            Backend::JetStream => {
                let bin = nats::binary().expect("a nats-server for the JetStream backend");
                // Room for the suites' 4 MiB events (the servers' default is 1 MiB).
                Some(nats::Nats::single_with(&bin, "max_payload: 8MB\n"))
            }
            Backend::JetStreamCluster => {
                let bin = nats::binary().expect("a nats-server for the JetStream backend");
                Some(nats::Nats::cluster_with(&bin, "max_payload: 8MB\n"))
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let subs = dir.path().join("subscriptions");
        std::fs::create_dir_all(&subs).unwrap();
        for (name, text) in files {
            std::fs::write(subs.join(name), text).unwrap();
        }
        let extra = format!("subscriptions: [{}]\n{extra}", subs.display());
        let clock = ManualClock::new(T0);
        let mut t = TestServer {
            server: None,
            dir,
            clock,
            yaml: extra,
            backend,
            nats,
            client: Client::builder(TokioExecutor::new()).build_http(),
        };
        t.restart().await;
        t
    }

    /// Starts with a full config (for tests of ingress settings).
    pub async fn start_with(config: impl FnOnce(&mut config::Config)) -> TestServer {
        let mut t = TestServer::start("").await;
        t.restart_with(config).await;
        t
    }

    /// Stops the broker and starts it again with its config changed by `tweak`.
    pub async fn restart_with(&mut self, tweak: impl FnOnce(&mut config::Config)) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
        let mut c = config_for(self.dir.path(), self.nats.as_ref(), &self.yaml);
        tweak(&mut c);
        self.server = Some(Self::launch(c, &self.clock).await);
    }

    async fn launch(c: config::Config, clock: &ManualClock) -> Server {
        let ingress = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let subs =
            switchyard::config::subscriptions::load(&c).expect("test subscriptions are valid");
        Server::start(c, subs, ingress, admin, Arc::new(clock.clone()))
            .await
            .unwrap()
    }

    /// Stops the broker (if running) and starts it again on the same directory.
    pub async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
        let c = config_for(self.dir.path(), self.nats.as_ref(), &self.yaml);
        self.server = Some(Self::launch(c, &self.clock).await);
    }

    /// Another instance of the same broker: the same config, subscriptions and NATS
    /// servers (on JetStream the instances share the events, lanes and pauses), its own
    /// listeners and data directory.
    pub async fn another_instance(&self) -> Server {
        let mut c = config_for(self.dir.path(), self.nats.as_ref(), &self.yaml);
        c.storage.path = self.dir.path().join("data-another");
        Self::launch(c, &self.clock).await
    }

    /// Stops the broker, which finishes what it was doing (it is not started again).
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }

    /// Lets `d` pass for the broker: the embedded backend reads the test's clock, which
    /// moves on; JetStream's dedupe window and redelivery delays run on the servers' own
    /// clocks, so there the test waits it out as well.
    pub async fn pass(&self, d: std::time::Duration) {
        self.clock.advance(d);
        if self.backend != Backend::Embedded {
            tokio::time::sleep(d).await;
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.server().ingress_addr, path)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .client
            .request(req.body(Full::new(body.into())).unwrap())
            .await
            .expect("request sent");
        let (parts, body) = resp.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        self.request(Method::POST, path, headers, body).await
    }

    /// Posts one structured-mode JSON event.
    pub async fn post_json(&self, event: &serde_json::Value) -> Reply {
        self.post(
            "/",
            &[("content-type", "application/cloudevents+json")],
            serde_json::to_vec(event).unwrap(),
        )
        .await
    }

    /// `GET` an admin API path (no token): the answer's JSON.
    pub async fn admin_get(&self, path: &str) -> serde_json::Value {
        let uri = format!("http://{}{path}", self.server().admin_addr);
        let resp = self.client.get(uri.parse().unwrap()).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)
    }

    /// `GET /metrics` on the admin listener: the answer's `Content-Type` and its text.
    pub async fn metrics(&self) -> (String, String) {
        let uri = format!("http://{}/metrics", self.server().admin_addr);
        let resp = self.client.get(uri.parse().unwrap()).await.unwrap();
        assert_eq!(resp.status(), 200);
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (content_type, String::from_utf8(body.to_vec()).unwrap())
    }

    /// The dead letters the broker keeps, oldest first.
    pub async fn dead_letters(&self) -> Vec<switchyard::log::DeadLetter> {
        let letters = self.server().log.dead_letters().list().await;
        letters
            .expect("the dead letters can be read")
            .into_iter()
            .map(|(_, l)| l)
            .collect()
    }

    /// Every record of a broker's log (asked again while a cluster does not answer for
    /// a moment, a leader being elected).
    pub async fn records(&self, broker: &str) -> Vec<LogRecord> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match self.server().log.read(broker, 1, usize::MAX).await {
                Ok(records) => return records,
                Err(e) if e.is_unavailable() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("the log cannot be read: {e}"),
            }
        }
    }
}

/// A minimal valid structured event with the given id.
pub fn minimal(id: &str) -> serde_json::Value {
    serde_json::json!({"specversion": "1.0", "id": id, "source": "/test", "type": "dev.switchyard.test"})
}

/// Reads a conformance file (they start with a UTF-8 BOM).
pub fn read_conformance(rel: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(testdata().join(rel)).unwrap();
    serde_json::from_str(text.trim_start_matches('\u{feff}')).unwrap()
}

#[path = "process.rs"]
pub mod process;

impl TestServer {
    /// Waits (bounded) until the broker's router has decided every stored event.
    pub async fn wait_routed(&self, broker: &str) {
        let log = &self.server().log;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let head = log.head(broker).unwrap();
            // A cluster may not answer for a moment (a leader being elected): asked again.
            let cursor = log.lanes().router_cursor(broker).await;
            let states = log.lanes().subscription_states(broker).await;
            let (cursor, states) = match (cursor, states) {
                (Ok(c), Ok(s)) => (c, s),
                (Err(e), _) | (_, Err(e)) if e.is_unavailable() => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "routing state unreadable: {e}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
                (Err(e), _) | (_, Err(e)) => panic!("{e}"),
            };
            let backfilling = states.iter().any(|(_, s)| s.backfill.is_some());
            if cursor >= head && !backfilling {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "routing did not catch up: cursor {cursor}, head {head}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// A lane's pending sequence numbers.
    pub async fn lane(&self, broker: &str, subscription: &str, sink: &str) -> Vec<u64> {
        let lane = switchyard::log::LaneId::new(subscription, sink);
        self.server()
            .log
            .lanes()
            .pending(broker, &lane, usize::MAX)
            .await
            .unwrap()
    }

    /// Writes `text` as a subscription file in the test's folder.
    pub fn write_subscriptions(&self, file: &str, text: &str) {
        let dir = self.dir.path().join("subscriptions");
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, dir.join(file)).unwrap();
    }

    /// The folder `write_subscriptions` writes to, for the config.
    pub fn subscriptions_dir(dir: &Path) -> PathBuf {
        dir.join("subscriptions")
    }
}

/// A subscription document.
pub fn subscription(name: &str, spec: &str) -> String {
    format!("apiVersion: switchyard.dev/v1alpha1\nkind: Subscription\nmetadata:\n  name: {name}\nspec:\n{spec}---\n")
}

/// Options for a sled log in `dir/data` with a small cache.
pub fn sled_options(
    dir: &Path,
    durability: switchyard::store::Durability,
    dedupe_window_nanos: u64,
) -> switchyard::store::StoreOptions {
    switchyard::store::StoreOptions {
        path: dir.join("data"),
        durability,
        cache_capacity: 8 << 20,
        dedupe_window_nanos,
    }
}

/// The config errors of one subscription file `s.yaml` holding subscription `s` with
/// `spec`, loaded against the default delivery settings; fails if it loads.
pub fn subscription_errors(spec: &str) -> Vec<config::ConfigError> {
    let defaults = config::from_yaml(None, "", &Default::default())
        .unwrap()
        .delivery;
    config::subscriptions::from_sources(
        &[("s.yaml".into(), subscription("s", spec))],
        &["default".into()],
        &defaults,
    )
    .expect_err("the subscription is refused")
    .0
}

pub mod nats;
pub mod sink;

/// One request of the Tekton corpus (tests/fixtures/tekton), as a client sends it.
pub struct TektonRequest {
    pub file: String,
    pub path: String,
    pub content_mode: String,
    /// The fixture's headers, less `Content-Length` and `Connection` (the client's own).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl TektonRequest {
    pub fn header_refs(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Every request of the Tekton corpus, in file order.
pub fn tekton_requests() -> Vec<TektonRequest> {
    let dir = testdata().join("tekton");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let fx: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            TektonRequest {
                file: p.file_name().unwrap().to_string_lossy().into_owned(),
                path: fx["path"].as_str().unwrap_or("/").to_string(),
                content_mode: fx["content_mode"].as_str().unwrap_or_default().to_string(),
                headers: fx["headers"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .filter(|(k, _)| {
                        !matches!(
                            k.to_ascii_lowercase().as_str(),
                            "content-length" | "connection" | "host"
                        )
                    })
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect(),
                body: serde_json::to_vec(&fx["body"]).unwrap(),
            }
        })
        .collect()
}

impl TestServer {
    /// Posts one Tekton corpus request as Tekton would.
    pub async fn post_tekton(&self, r: &TektonRequest) -> Reply {
        self.post(&r.path, &r.header_refs(), r.body.clone()).await
    }
}
