//! The load harness: runs the broker as a child process on a temporary directory,
//! local sinks, an open- or closed-loop load generator with HDR percentiles, and the
//! baselines each scenario is compared with, all in one invocation; prints a table and
//! writes a JSON report.
//!
//! ```text
//! cargo build --release --bin switchyard --example switchyard-bench
//! target/release/examples/switchyard-bench [--scenarios S1,S3,J1] [--seconds 10]
//!     [--backlog 1000000] [--rate 1000] [--fanout-rate R] [--ingest-rate R]
//!     [--out target/switchyard-bench/report.json]
//! ```
//!
//! Baselines, with the same client, payload and connection count:
//! - B-http: a bare hyper server that reads the body and answers 202;
//! - B-durable: the same server appending each body to a file through one writer
//!   thread with group commit and `fdatasync`, answering after the sync;
//! - B-deliver: a bare hyper client posting to the same sinks (for S4 on as many
//!   connections as the broker's lanes keep in flight, and again on 64);
//! - B-js (J1): a bare async-nats client, 64 tasks each publishing to a JetStream stream
//!   set up as the broker's and waiting for the acknowledgement.
//!
//! Both baseline servers run as child processes (this program, `--serve-baseline`), so
//! their CPU and memory are read from /proc exactly as the broker's are.
//!
//! The J scenarios (opt-in: `--scenarios J1,J1-R3,J2,J3,J4`) run the broker on the
//! JetStream backend, on nats-server processes the harness starts itself (one node, or a
//! cluster of three) from `NATS_SERVER_BIN` or `nats-server` on `PATH`; without one they
//! say they were skipped. `S4-flow` (opt-in) runs S4 with every lane's rate limit and
//! circuit breaker on, against S4 in alternated rounds.
//! See docs/performance.md for the method and the figures.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

type Body = Full<Bytes>;

/// Builds the request for event (or batch) number `id`, to `uri`.
type BuildRequest = dyn Fn(u64, &str) -> Request<Body> + Send + Sync;

// ---------------------------------------------------------------------------------
// Command line

struct Args {
    scenarios: Vec<String>,
    seconds: u64,
    /// Closed-loop ingest (S1, S2, S8) and S4 run this many rounds, each its baseline then
    /// the broker back to back; the round with the median ratio is reported, and every
    /// round's ratio is in the notes.
    rounds: usize,
    backlog: u64,
    /// S3's and S7's fixed rate (events/s): the targets are stated at 1,000; other
    /// rates compare the CPU per event of two builds, which, unlike a closed loop's
    /// throughput, does not move with the machine's other load.
    rate: f64,
    /// S4's ingest as an open loop at this rate (events/s, ten deliveries each)
    /// instead of a closed loop: CPU per event of two builds at the same load.
    fanout_rate: Option<f64>,
    /// S1's and S8's ingest (and their baselines) as an open loop at this rate
    /// (events/s) instead of a closed loop: CPU per event of two builds at the same
    /// load. The ratios then only say that both kept up.
    ingest_rate: Option<f64>,
    out: PathBuf,
    broker: PathBuf,
}

const USAGE: &str =
    "usage: switchyard-bench [--scenarios S1,S1-tekton,S1-256B,S2,S3,S4,S5,S6,S7,S8 \
(default), or any of them and S4-flow, J1,J1-R3,J2,J3,J4 (JetStream), by name only] [--seconds 10] [--rounds 3] [--backlog 1000000] [--rate 1000] [--fanout-rate R] [--ingest-rate R] \
[--out target/switchyard-bench/report.json] [--broker target/release/switchyard]";

fn parse_args() -> Args {
    let mut args = Args {
        scenarios: [
            "S1",
            "S1-tekton",
            "S1-256B",
            "S2",
            "S3",
            "S4",
            "S5",
            "S6",
            "S7",
            "S8",
        ]
        .map(String::from)
        .to_vec(),
        seconds: 10,
        rounds: 3,
        backlog: 1_000_000,
        rate: 1000.0,
        fanout_rate: None,
        ingest_rate: None,
        out: PathBuf::from("target/switchyard-bench/report.json"),
        broker: std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.parent()?.parent()?.join("switchyard")))
            .unwrap_or_else(|| PathBuf::from("target/release/switchyard")),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--scenarios" => {
                args.scenarios = value().split(',').map(str::to_string).collect();
            }
            "--seconds" => args.seconds = value().parse().expect("--seconds N"),
            "--rounds" => args.rounds = value().parse::<usize>().expect("--rounds N").max(1),
            "--backlog" => args.backlog = value().parse().expect("--backlog N"),
            "--rate" => args.rate = value().parse().expect("--rate EVENTS_PER_SECOND"),
            "--fanout-rate" => {
                args.fanout_rate = Some(value().parse().expect("--fanout-rate EVENTS_PER_SECOND"))
            }
            "--ingest-rate" => {
                args.ingest_rate = Some(value().parse().expect("--ingest-rate EVENTS_PER_SECOND"))
            }
            "--out" => args.out = PathBuf::from(value()),
            "--broker" => args.broker = PathBuf::from(value()),
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}\n{USAGE}"),
        }
    }
    args
}

// ---------------------------------------------------------------------------------
// Payloads

#[derive(Clone)]
struct Payload {
    name: &'static str,
    /// Builds the request for event number `id` (the body is shared).
    build: Arc<BuildRequest>,
    /// Events per request.
    events: u64,
}

fn structured_1k(id: u64) -> Value {
    json!({
        "specversion": "1.0", "id": id.to_string(), "source": "/bench",
        "type": "bench.t0", "datacontenttype": "application/json",
        "data": {"pipelineRun": {"name": "build", "namespace": "ci"}, "pad": "x".repeat(820)}
    })
}

fn payload_1k() -> Payload {
    Payload {
        name: "1 KiB structured",
        events: 1,
        build: Arc::new(|id, uri| {
            let body = serde_json::to_vec(&structured_1k(id)).unwrap();
            Request::post(uri)
                .header("content-type", "application/cloudevents+json")
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        }),
    }
}

/// 1 KiB events, but each of a type `bench.t<id % types>`.
fn payload_typed(types: u64) -> Payload {
    Payload {
        name: "1 KiB structured",
        events: 1,
        build: Arc::new(move |id, uri| {
            let mut e = structured_1k(id);
            e["type"] = format!("bench.t{}", id % types).into();
            Request::post(uri)
                .header("content-type", "application/cloudevents+json")
                .body(Full::new(Bytes::from(serde_json::to_vec(&e).unwrap())))
                .unwrap()
        }),
    }
}

fn payload_256b() -> Payload {
    let data = Bytes::from(format!(
        "{{\"status\":\"ok\",\"pad\":\"{}\"}}",
        "x".repeat(180)
    ));
    Payload {
        name: "256 B binary",
        events: 1,
        build: Arc::new(move |id, uri| {
            Request::post(uri)
                .header("ce-specversion", "1.0")
                .header("ce-id", id.to_string())
                .header("ce-source", "/bench")
                .header("ce-type", "bench.t0")
                .header("content-type", "application/json")
                .body(Full::new(data.clone()))
                .unwrap()
        }),
    }
}

fn payload_batch(n: u64) -> Payload {
    Payload {
        name: "batch of 100 x 1 KiB",
        events: n,
        build: Arc::new(move |id, uri| {
            let batch: Vec<Value> = (0..n).map(|i| structured_1k(id * n + i)).collect();
            Request::post(uri)
                .header("content-type", "application/cloudevents-batch+json")
                .body(Full::new(Bytes::from(serde_json::to_vec(&batch).unwrap())))
                .unwrap()
        }),
    }
}

fn payload_tekton() -> Payload {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tekton");
    let mut fixtures = Vec::new();
    for i in 1..=10 {
        let name = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with(&format!("{i:02}-")))
            .unwrap();
        let f: Value = serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap();
        let headers: Vec<(String, String)> = f["headers"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| {
                let k = k.to_ascii_lowercase();
                k.starts_with("ce-") && k != "ce-id" || k == "content-type"
            })
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap().to_string()))
            .collect();
        let body = Bytes::from(serde_json::to_vec(&f["body"]).unwrap());
        fixtures.push((headers, body));
    }
    let fixtures = Arc::new(fixtures);
    Payload {
        name: "Tekton binary (3-24 KiB)",
        events: 1,
        build: Arc::new(move |id, uri| {
            let (headers, body) = &fixtures[(id % 10) as usize];
            let mut r = Request::post(uri).header("ce-id", id.to_string());
            for (k, v) in headers {
                r = r.header(k, v);
            }
            r.body(Full::new(body.clone())).unwrap()
        }),
    }
}

// ---------------------------------------------------------------------------------
// Load generator

/// Send times (ns since the harness started) by event id, for end-to-end latency.
struct SendTimes {
    start: Instant,
    at: Vec<AtomicU64>,
}

impl SendTimes {
    fn new(capacity: usize) -> Arc<SendTimes> {
        Arc::new(SendTimes {
            start: Instant::now(),
            at: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        })
    }
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

#[derive(Default)]
struct LoadResult {
    requests: u64,
    events: u64,
    failures: u64,
    elapsed: Duration,
    latency: Option<Histogram<u64>>,
    /// Event ids acknowledged with 2xx (only when asked to keep them).
    acked: Vec<u64>,
}

struct Load {
    uri: String,
    addr: SocketAddr,
    connections: usize,
    /// Requests per second in all; `None` sends as fast as answers come (closed loop).
    rate: Option<f64>,
    duration: Duration,
    /// Stop after this many requests in all.
    max_requests: u64,
    payload: Payload,
    times: Option<Arc<SendTimes>>,
    keep_acked: bool,
    /// Stops the load early (when set).
    stop: Arc<AtomicBool>,
    first_id: u64,
}

async fn run_load(load: Load) -> LoadResult {
    let next_id = Arc::new(AtomicU64::new(load.first_id));
    let started = Instant::now();
    let load = Arc::new(load);
    let mut tasks = Vec::new();
    for c in 0..load.connections {
        let load = load.clone();
        let next_id = next_id.clone();
        tasks.push(tokio::spawn(async move {
            let mut result = LoadResult {
                latency: Some(Histogram::new_with_bounds(1, 120_000_000, 3).unwrap()),
                ..LoadResult::default()
            };
            let Ok(stream) = tokio::net::TcpStream::connect(load.addr).await else {
                result.failures += 1;
                return result;
            };
            let _ = stream.set_nodelay(true);
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            // Open loop: this connection's share of the rate, on a fixed schedule;
            // latency counts from when a request was due, not from when it went out.
            let interval = load
                .rate
                .map(|r| Duration::from_secs_f64(load.connections as f64 / r));
            let offset = interval.map(|i| i.mul_f64(c as f64 / load.connections as f64));
            let mut k = 0u32;
            loop {
                if started.elapsed() >= load.duration || load.stop.load(Ordering::Relaxed) {
                    break;
                }
                let due = match (interval, offset) {
                    (Some(i), Some(o)) => {
                        let due = started + o + i * k;
                        k += 1;
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    _ => Instant::now(),
                };
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                if id - load.first_id >= load.max_requests {
                    break;
                }
                if let Some(t) = &load.times {
                    for e in 0..load.payload.events {
                        if let Some(slot) = t.at.get((id * load.payload.events + e) as usize) {
                            slot.store(t.now(), Ordering::Relaxed);
                        }
                    }
                }
                let request = (load.payload.build)(id, &load.uri);
                if sender.ready().await.is_err() {
                    result.failures += 1;
                    break;
                }
                match sender.send_request(request).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let _ = resp.into_body().collect().await;
                        result.requests += 1;
                        if ok {
                            result.events += load.payload.events;
                            let us = due.elapsed().as_micros() as u64;
                            let _ = result.latency.as_mut().unwrap().record(us.max(1));
                            if load.keep_acked {
                                result.acked.push(id);
                            }
                        } else {
                            result.failures += 1;
                        }
                    }
                    Err(_) => {
                        result.failures += 1;
                        break;
                    }
                }
            }
            result
        }));
    }
    let mut total = LoadResult {
        latency: Some(Histogram::new_with_bounds(1, 120_000_000, 3).unwrap()),
        ..LoadResult::default()
    };
    for t in tasks {
        let r = t.await.unwrap();
        total.requests += r.requests;
        total.events += r.events;
        total.failures += r.failures;
        total
            .latency
            .as_mut()
            .unwrap()
            .add(r.latency.unwrap())
            .unwrap();
        total.acked.extend(r.acked);
    }
    total.elapsed = started.elapsed();
    total
}

// ---------------------------------------------------------------------------------
// Sinks

#[derive(Clone, Copy, PartialEq)]
enum SinkMode {
    Ok,
    /// Every other request answers 503.
    HalfFailing,
    /// Never answers in time.
    Hang,
}

struct Sink {
    addr: SocketAddr,
    received: AtomicU64,
    ok: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    times: Option<Arc<SendTimes>>,
    mode: SinkMode,
}

impl Sink {
    async fn start(mode: SinkMode, times: Option<Arc<SendTimes>>) -> Arc<Sink> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, mode, times)
    }

    fn serve(
        listener: tokio::net::TcpListener,
        mode: SinkMode,
        times: Option<Arc<SendTimes>>,
    ) -> Arc<Sink> {
        let sink = Arc::new(Sink {
            addr: listener.local_addr().unwrap(),
            received: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            latency: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).unwrap()),
            times,
            mode,
        });
        let s = sink.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let _ = stream.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        async move { Ok::<_, hyper::Error>(s.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        sink
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let n = self.received.fetch_add(1, Ordering::Relaxed);
        let id = req
            .headers()
            .get("ce-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        let id = id.or_else(|| {
            let v: Value = serde_json::from_slice(body.as_ref().ok()?).ok()?;
            v["id"].as_str()?.parse().ok()
        });
        let status = match self.mode {
            SinkMode::Ok => 200,
            SinkMode::HalfFailing if n.is_multiple_of(2) => 503,
            SinkMode::HalfFailing => 200,
            SinkMode::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                200
            }
        };
        if status == 200 {
            self.ok.fetch_add(1, Ordering::Relaxed);
            if let (Some(t), Some(id)) = (&self.times, id) {
                if let Some(sent) = t.at.get(id as usize).map(|a| a.load(Ordering::Relaxed)) {
                    if sent > 0 {
                        let us = (t.now().saturating_sub(sent) / 1000).max(1);
                        let _ = self.latency.lock().unwrap().record(us);
                    }
                }
            }
        }
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

// ---------------------------------------------------------------------------------
// Child processes: the broker and the baseline servers

struct Proc {
    child: Child,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    dir: PathBuf,
    rss_peak: Arc<AtomicU64>,
    sampling: Arc<AtomicBool>,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf with a valid name has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// CPU time (user + system) of process `pid` so far (zero once it is gone).
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // After the command: state(0) ... utime(11) stime(12).
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / clock_ticks())
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) of the process so far.
    fn cpu(&self) -> Duration {
        cpu_of(self.pid())
    }

    fn status_kib(&self, key: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Peak resident memory so far (the kernel's high-water mark), in bytes.
    fn peak_rss(&self) -> u64 {
        (self.status_kib("VmHWM:") * 1024).max(self.rss_peak.load(Ordering::Relaxed))
    }

    fn start_sampling(&self) {
        let (pid, peak, on) = (self.pid(), self.rss_peak.clone(), self.sampling.clone());
        on.store(true, Ordering::Relaxed);
        std::thread::spawn(move || {
            while on.load(Ordering::Relaxed) {
                let kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
                match kib {
                    Some(k) => {
                        peak.fetch_max(k * 1024, Ordering::Relaxed);
                    }
                    None => break,
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }

    fn kill9(mut self) -> PathBuf {
        self.sampling.store(false, Ordering::Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir.clone()
    }

    fn stop(mut self) {
        self.sampling.store(false, Ordering::Relaxed);
        // SAFETY: kill(2) on our own child's pid with a valid signal.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn field(line: &str, name: &str) -> Option<SocketAddr> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    line[start..].split_whitespace().next()?.parse().ok()
}

/// Where a broker under test keeps its log.
#[derive(Clone, Copy)]
enum Backend<'a> {
    /// The embedded log in the broker's directory, with this `storage.durability`.
    Embedded(&'static str),
    /// JetStream on `nats`, `replicas` copies of each stream, the default prefix.
    JetStream {
        nats: &'a NatsServers,
        replicas: usize,
    },
}

impl Backend<'_> {
    /// The `storage` section's keys beside `path`, in YAML's flow style.
    fn storage_yaml(&self) -> String {
        match self {
            Backend::Embedded(durability) => format!("durability: {durability}"),
            Backend::JetStream { nats, replicas } => {
                let servers: Vec<String> = nats.urls().iter().map(|u| format!("'{u}'")).collect();
                format!(
                    "backend: jetstream, jetstream: {{ servers: [{}], replicas: {replicas} }}",
                    servers.join(", ")
                )
            }
        }
    }

    /// The nats-server processes' CPU so far (none on the embedded backend).
    fn nats_cpu(&self) -> Option<Duration> {
        match self {
            Backend::Embedded(_) => None,
            Backend::JetStream { nats, .. } => Some(nats.cpu()),
        }
    }
}

/// Starts the broker on `dir` with `subscriptions` (YAML) on `backend`.
fn start_broker(bin: &Path, dir: &Path, subscriptions: &str, backend: &Backend) -> (Proc, Instant) {
    let subs = dir.join("subscriptions");
    std::fs::create_dir_all(&subs).unwrap();
    std::fs::write(subs.join("bench.yaml"), subscriptions).unwrap();
    let config = dir.join("switchyard.yaml");
    std::fs::write(
        &config,
        format!(
            "ingress: {{ listen: 127.0.0.1:0 }}\nadmin: {{ listen: 127.0.0.1:0 }}\nstorage: {{ path: {}, {} }}\nsubscriptions: [{}]\n",
            dir.join("data").display(),
            backend.storage_yaml(),
            subs.display()
        ),
    )
    .unwrap();
    let spawned = Instant::now();
    let mut child = Command::new(bin)
        .args(["serve", "-c"])
        .arg(&config)
        .env("SWITCHYARD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (build it: cargo build --release)",
                bin.display()
            )
        });
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("switchyard ready") {
                let _ = tx.send(line);
            } else if line.contains("ERROR") {
                eprintln!("broker: {line}");
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the broker became ready");
    let proc = Proc {
        child,
        addr: field(&line, "ingress").unwrap(),
        admin: field(&line, "admin"),
        dir: dir.to_path_buf(),
        rss_peak: Arc::default(),
        sampling: Arc::default(),
    };
    (proc, spawned)
}

/// Starts `--serve-baseline KIND DIR [EXTRA...]` and reads the address it prints.
fn start_baseline(kind: &str, dir: &Path, extra: &[String]) -> Proc {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--serve-baseline", kind])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    Proc {
        child,
        addr: line.trim().parse().expect("the baseline's address"),
        admin: None,
        dir: dir.to_path_buf(),
        rss_peak: Arc::default(),
        sampling: Arc::default(),
    }
}

/// The baseline servers (`--serve-baseline http|durable|sled|sled-batch|sled-relaxed
/// DIR`): print the address, serve.
fn serve_baseline(kind: &str, dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let durable = kind == "durable" || kind.starts_with("sled");
    type Ack = tokio::sync::oneshot::Sender<()>;
    let (tx, rx) = std::sync::mpsc::channel::<(Bytes, Ack)>();
    if kind.starts_with("sled") {
        // B-sled (a diagnostic, not a target's baseline): the same writer thread, but
        // each group goes through Switchyard's storage layer (segment append, its index
        // file and fdatasync; no sled write per record) with the broker's default cache. It isolates
        // the storage layer's cost from the rest of the broker. `sled`: each body one
        // record, as it came, no dedupe. `sled-batch` (for S2): each body cut into 100
        // records, each with a dedupe key of its own, as the broker stores a batch.
        // `sled-relaxed` (beside S8): `sled` with durability `relaxed` (no sync per
        // group; the segments are synced in the background).
        use switchyard::log::{Append, GroupEntry};
        use switchyard::store::{Durability, Store, StoreOptions};
        let split = if kind == "sled-batch" { 100 } else { 1 };
        let log = Store::open(
            &StoreOptions {
                path: dir.join("sled"),
                durability: if kind == "sled-relaxed" {
                    Durability::Relaxed
                } else {
                    Durability::Fsync
                },
                cache_capacity: 12 << 20,
                dedupe_window_nanos: if split > 1 { 600_000_000_000 } else { 0 },
            },
            &["default".to_string()],
        )
        .unwrap();
        let broker: Arc<str> = Arc::from("default");
        std::thread::spawn(move || {
            let mut keys = 0u64;
            while let Ok(first) = rx.recv() {
                let mut group = vec![first];
                while let Ok(more) = rx.try_recv() {
                    group.push(more);
                }
                let entries: Vec<GroupEntry> = group
                    .iter()
                    .map(|(body, _)| GroupEntry {
                        broker: broker.clone(),
                        appends: if split == 1 {
                            vec![Append {
                                record: body.clone(),
                                dedupe_key: None,
                                decoded: None,
                            }]
                        } else {
                            let size = body.len().div_ceil(split).max(1);
                            (0..body.len())
                                .step_by(size)
                                .map(|at| {
                                    keys += 1;
                                    Append {
                                        record: body.slice(at..(at + size).min(body.len())),
                                        dedupe_key: Some(format!("/bench\n{keys}").into_bytes()),
                                        decoded: None,
                                    }
                                })
                                .collect()
                        },
                    })
                    .collect();
                log.write_group(&entries, 1).unwrap();
                for (_, ack) in group {
                    let _ = ack.send(());
                }
            }
        });
    } else if durable {
        let mut file = std::fs::File::create(dir.join("baseline.log")).unwrap();
        std::thread::spawn(move || {
            // One writer: take what is queued, write it, one fdatasync, then answer all.
            while let Ok(first) = rx.recv() {
                let mut group = vec![first];
                while let Ok(more) = rx.try_recv() {
                    group.push(more);
                }
                for (body, _) in &group {
                    file.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
                    file.write_all(body).unwrap();
                }
                file.sync_data().unwrap();
                for (_, ack) in group {
                    let _ = ack.send(());
                }
            }
        });
    }
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        if durable {
                            let (ack, done) = tokio::sync::oneshot::channel();
                            let _ = tx.send((body, ack));
                            let _ = done.await;
                        }
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .status(202)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

// ---------------------------------------------------------------------------------
// NATS servers (the J scenarios)

/// The nats-server binary (`NATS_SERVER_BIN`, else `nats-server` on `PATH`, 2.10 or
/// newer, as the JetStream backend needs), or why there is none.
fn nats_binary() -> Result<PathBuf, String> {
    let path = match std::env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
            .ok_or("nats-server is not on PATH and NATS_SERVER_BIN is not set")?,
    };
    let out = Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // "nats-server: v2.12.1"
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let version = text.rsplit('v').next().unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (2, 10) {
        return Err(format!(
            "{} is nats-server {version}; 2.10 or newer is needed",
            path.display()
        ));
    }
    Ok(path)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One nats-server process.
struct NatsNode {
    child: Child,
    port: u16,
    monitor: u16,
}

impl NatsNode {
    /// Whether the monitor's `/healthz` answers 200 (`js-enabled-only`: only that
    /// JetStream is on; a cluster's full check also wants its meta leader).
    fn healthy(&self, js_only: bool) -> bool {
        use std::io::Read as _;
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.monitor)) else {
            return false;
        };
        let path = if js_only {
            "/healthz?js-enabled-only=true"
        } else {
            "/healthz"
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200")
    }
}

/// One JetStream node, or a cluster of three, on free loopback ports with their data in
/// a temporary directory; stopped (and the data removed) when dropped.
struct NatsServers {
    nodes: Vec<NatsNode>,
    dir: PathBuf,
}

impl NatsServers {
    /// Starts `n` nodes (a cluster when more than one) and waits until they serve
    /// JetStream.
    fn start(bin: &Path, n: usize, name: &str) -> NatsServers {
        let dir = tempdir(&format!("nats-{name}"));
        // The broker takes events of up to 4 MiB; the servers' default is 1 MiB.
        let conf = dir.join("nats.conf");
        std::fs::write(&conf, "max_payload: 8MB\n").unwrap();
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let (port, monitor) = (free_port(), free_port());
            let mut args: Vec<String> = vec![
                "-js".into(),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-m".into(),
                monitor.to_string(),
                "-sd".into(),
                dir.join(format!("n{i}")).display().to_string(),
                "-n".into(),
                format!("n{i}"),
                "-c".into(),
                conf.display().to_string(),
            ];
            if n > 1 {
                let others: Vec<String> = (0..n)
                    .filter(|j| *j != i)
                    .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
                    .collect();
                args.extend([
                    "--cluster_name".into(),
                    "switchyard-bench".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", routes[i]),
                    "--routes".into(),
                    others.join(","),
                ]);
            }
            let child = Command::new(bin)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            nodes.push(NatsNode {
                child,
                port,
                monitor,
            });
        }
        let servers = NatsServers { nodes, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &servers.nodes {
            while !node.healthy(n == 1) {
                assert!(
                    Instant::now() < deadline,
                    "nats-server on port {} did not become ready",
                    node.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        servers
    }

    /// `nats://127.0.0.1:PORT` of every node.
    fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The CPU time of every node so far, summed.
    fn cpu(&self) -> Duration {
        self.cpu_each().into_iter().sum()
    }

    /// The CPU time of each node so far.
    fn cpu_each(&self) -> Vec<Duration> {
        self.nodes.iter().map(|n| cpu_of(n.child.id())).collect()
    }

    /// A JetStream context on a client connected to every node, as the broker's is.
    async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::ConnectOptions::new()
            .name("switchyard-bench")
            .connect(self.urls())
            .await
            .expect("the bench connects to its nats-server");
        async_nats::jetstream::new(client)
    }

    /// Deletes every stream (a key-value bucket is one too), so that the next run starts
    /// on empty servers, as a fresh data directory does on the embedded backend.
    async fn clear(&self) {
        use futures_util::StreamExt as _;
        let js = self.jetstream().await;
        let names: Vec<String> = js
            .stream_names()
            .filter_map(|n| async move { n.ok() })
            .collect()
            .await;
        for name in names {
            let _ = js.delete_stream(&name).await;
        }
    }
}

impl Drop for NatsServers {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The settings of the broker's events stream (`src/log/jetstream`) at the broker's
/// defaults (`dedupe.window` 10m, `storage.retention.maxAge` 7d and `maxBytes` 10GiB),
/// for B-js's stream `name`.
fn bench_stream(name: &str, replicas: usize) -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream;
    stream::Config {
        name: name.into(),
        subjects: vec![format!("{name}.events")],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        allow_direct: true,
        discard: stream::DiscardPolicy::Old,
        retention: stream::RetentionPolicy::Limits,
        max_age: Duration::from_secs(7 * 24 * 3600),
        max_bytes: 10 << 30,
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    }
}

/// The message id the broker gives an event with the default dedupe key
/// (`source + "\n" + id`): the key's SHA-256 in hex.
fn message_id(source: &str, id: u64) -> String {
    use std::fmt::Write as _;
    let key = format!("{source}\n{id}");
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// B-js: `tasks` concurrent tasks on one client, each publishing a 1 KiB event (the
/// broker's body, with the broker's message id) to a fresh stream set up as the
/// broker's and waiting for the acknowledgement, for `seconds`. Its CPU is this
/// process's (the client's); the servers' is beside it.
async fn baseline_jetstream(
    nats: &NatsServers,
    replicas: usize,
    tasks: usize,
    seconds: u64,
) -> Row {
    use async_nats::jetstream::message::PublishMessage;
    let js = nats.jetstream().await;
    let name = "BENCH-js";
    js.create_stream(bench_stream(name, replicas))
        .await
        .expect("B-js creates its stream");
    wait_for_leader(&js, name).await;
    let subject = format!("{name}.events");
    let (own0, nats0) = (cpu_of(std::process::id()), nats.cpu());
    let started = Instant::now();
    let next_id = Arc::new(AtomicU64::new(0));
    let mut running = Vec::new();
    for _ in 0..tasks {
        let (js, subject, next_id) = (js.clone(), subject.clone(), next_id.clone());
        running.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).unwrap();
            let (mut acked, mut failed) = (0u64, 0u64);
            while started.elapsed() < Duration::from_secs(seconds) {
                let sent = Instant::now();
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let body = Bytes::from(serde_json::to_vec(&structured_1k(id)).unwrap());
                let message = PublishMessage::build()
                    .payload(body)
                    .message_id(message_id("/bench", id));
                let ok = match js.send_publish(subject.clone(), message).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    acked += 1;
                    let _ = h.record((sent.elapsed().as_micros() as u64).max(1));
                } else {
                    failed += 1;
                }
            }
            (acked, failed, h)
        }));
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).unwrap();
    let (mut acked, mut failed) = (0, 0);
    for t in running {
        let (a, f, th) = t.await.unwrap();
        acked += a;
        failed += f;
        h.add(th).unwrap();
    }
    let elapsed = started.elapsed();
    let own = per_event(Some(own0), Some(cpu_of(std::process::id())), acked);
    let nats_cpu = per_event(Some(nats0), Some(nats.cpu()), acked);
    nats.clear().await;
    let mut row = row(
        "B-js",
        &format!("bare async-nats client, {tasks} tasks, publish + ack"),
        "1 KiB structured",
        acked as f64 / elapsed.as_secs_f64(),
        "events/s",
        &h,
    );
    row.cpu_us_per_event = own;
    row.nats_cpu_us_per_event = nats_cpu;
    row.notes = format!("{failed} failed publishes; replicas {replicas}");
    row
}

/// B-http-js's server (`--serve-baseline http-js DIR URLS REPLICAS`, a diagnostic
/// beside J1): a bare hyper server that publishes each body to a fresh stream set up as
/// the broker's (with a message id, as the broker's dedupe sets one) and answers 202 once
/// JetStream acknowledged it: the least HTTP in, JetStream-durable can cost.
fn serve_baseline_js(servers: Vec<String>, replicas: usize) {
    use async_nats::jetstream::message::PublishMessage;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let client = async_nats::connect(servers)
            .await
            .expect("B-http-js connects");
        let js = async_nats::jetstream::new(client);
        let name = "BENCH-http-js";
        js.create_stream(bench_stream(name, replicas))
            .await
            .expect("B-http-js creates its stream");
        wait_for_leader(&js, name).await;
        let subject: Arc<str> = Arc::from(format!("{name}.events"));
        let next_id = Arc::new(AtomicU64::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            let (js, subject, next_id) = (js.clone(), subject.clone(), next_id.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (js, subject, next_id) = (js.clone(), subject.clone(), next_id.clone());
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        let message = PublishMessage::build()
                            .payload(body)
                            .message_id(message_id("/bench", id));
                        let ok = match js.send_publish(subject.to_string(), message).await {
                            Ok(ack) => ack.await.is_ok(),
                            Err(_) => false,
                        };
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .status(if ok { 202 } else { 503 })
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// Waits (30 s at most) until stream `name` has a leader, as the broker does before its
/// first append: a replicated stream takes appends once it has one.
async fn wait_for_leader(js: &async_nats::jetstream::Context, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = match js.get_stream_no_info(name).await {
            Ok(s) => s.get_info().await.ok(),
            Err(_) => None,
        };
        if info.is_some_and(|i| i.cluster.is_none_or(|c| c.leader.is_some())) {
            return;
        }
        assert!(Instant::now() < deadline, "stream {name} has no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// B-http-js under J1's load (1 KiB, 64 connections, closed loop), its CPU and the
/// servers'.
async fn baseline_http_js(nats: &NatsServers, replicas: usize, seconds: u64) -> Row {
    let dir = tempdir("b-http-js");
    let extra = [nats.urls().join(","), replicas.to_string()];
    let proc = start_baseline("http-js", &dir, &extra);
    let nats0 = nats.cpu();
    let (r, cpu, rss) = measured(&proc, load(&proc, "/", payload_1k(), 64, seconds)).await;
    let nats_cpu = per_event(Some(nats0), Some(nats.cpu()), r.events);
    proc.stop();
    let _ = std::fs::remove_dir_all(&dir);
    nats.clear().await;
    let mut row = row(
        "B-http-js",
        "bare HTTP server publishing to JetStream (64 connections)",
        "1 KiB structured",
        r.events as f64 / r.elapsed.as_secs_f64(),
        "events/s",
        r.latency.as_ref().unwrap(),
    );
    row.cpu_us_per_event = Some(cpu);
    row.nats_cpu_us_per_event = nats_cpu;
    row.peak_rss_mib = Some(rss);
    row.notes = format!(
        "diagnostic: HTTP in, publish, 202 on the ack; {} failed requests",
        r.failures
    );
    row
}

// ---------------------------------------------------------------------------------
// Measuring a run

#[derive(Clone, Default, serde::Serialize)]
struct Row {
    scenario: String,
    what: String,
    payload: String,
    rate: f64,
    unit: String,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    cpu_us_per_event: Option<f64>,
    /// The nats-server processes' CPU per event, summed over the nodes (J scenarios).
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_cpu_us_per_event: Option<f64>,
    peak_rss_mib: Option<f64>,
    baseline: Option<String>,
    ratio: Option<f64>,
    /// Every round's ratio, in the order run (closed-loop ingest and S4; see `--rounds`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    round_ratios: Vec<f64>,
    target: String,
    met: Option<bool>,
    notes: String,
}

/// CPU µs per event between two readings of a CPU clock, when there is one.
fn per_event(before: Option<Duration>, after: Option<Duration>, events: u64) -> Option<f64> {
    let (before, after) = (before?, after?);
    Some(after.saturating_sub(before).as_secs_f64() * 1e6 / events.max(1) as f64)
}

fn percentiles(h: &Histogram<u64>) -> (f64, f64, f64) {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    (ms(0.5), ms(0.99), ms(0.999))
}

fn row(
    scenario: &str,
    what: &str,
    payload: &str,
    rate: f64,
    unit: &str,
    h: &Histogram<u64>,
) -> Row {
    let (p50, p99, p999) = percentiles(h);
    Row {
        scenario: scenario.into(),
        what: what.into(),
        payload: payload.into(),
        rate,
        unit: unit.into(),
        p50_ms: p50,
        p99_ms: p99,
        p999_ms: p999,
        ..Row::default()
    }
}

/// Runs a load against a server process and measures its CPU and memory.
async fn measured(proc: &Proc, load: Load) -> (LoadResult, f64, f64) {
    let cpu0 = proc.cpu();
    let r = run_load(load).await;
    let cpu = proc.cpu().saturating_sub(cpu0);
    let per_event = cpu.as_secs_f64() * 1e6 / r.events.max(1) as f64;
    (r, per_event, proc.peak_rss() as f64 / (1 << 20) as f64)
}

fn load(proc: &Proc, path: &str, payload: Payload, connections: usize, seconds: u64) -> Load {
    Load {
        uri: format!("http://{}{path}", proc.addr),
        addr: proc.addr,
        connections,
        rate: None,
        duration: Duration::from_secs(seconds),
        max_requests: u64::MAX,
        payload,
        times: None,
        keep_acked: false,
        stop: Arc::default(),
        first_id: 0,
    }
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A baseline server's throughput and latency under the same load.
async fn baseline_server(
    kind: &str,
    payload: &Payload,
    connections: usize,
    seconds: u64,
    rate: Option<f64>,
) -> Row {
    let dir = tempdir(&format!("b-{kind}"));
    let proc = start_baseline(kind, &dir, &[]);
    let mut l = load(&proc, "/", payload.clone(), connections, seconds);
    l.rate = rate;
    let (r, cpu, rss) = measured(&proc, l).await;
    proc.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let name = match kind {
        "http" => "B-http",
        "sled" | "sled-batch" | "sled-relaxed" => "B-sled",
        _ => "B-durable",
    };
    let mut row = row(
        name,
        &format!("{name} ({connections} connections)"),
        payload.name,
        r.events as f64 / r.elapsed.as_secs_f64(),
        "events/s",
        r.latency.as_ref().unwrap(),
    );
    row.cpu_us_per_event = Some(cpu);
    row.peak_rss_mib = Some(rss);
    row
}

/// What a closed-loop ingest comparison runs: the broker's side and its baseline's.
struct Comparison {
    scenario: &'static str,
    what: &'static str,
    unit: &'static str,
    payload: Payload,
    durability: &'static str,
    /// The baseline's kind (`serve_baseline`).
    baseline: &'static str,
    /// B-sled's kind and its note, run once beside the first round.
    diagnostic: (&'static str, &'static str),
    /// An open loop at this rate instead of a closed one (`--ingest-rate`).
    rate: Option<f64>,
}

/// A broker on a fresh directory under 64 connections for `seconds`: its row, no ratio.
async fn broker_ingest(bin: &Path, c: &Comparison, seconds: u64) -> Row {
    let dir = tempdir(&c.scenario.to_lowercase());
    let (broker, _) = start_broker(bin, &dir, "", &Backend::Embedded(c.durability));
    let mut l = load(&broker, "/", c.payload.clone(), 64, seconds);
    l.rate = c.rate;
    let (r, cpu, rss) = measured(&broker, l).await;
    broker.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let mut row = row(
        c.scenario,
        c.what,
        c.payload.name,
        r.events as f64 / r.elapsed.as_secs_f64(),
        c.unit,
        r.latency.as_ref().unwrap(),
    );
    row.cpu_us_per_event = Some(cpu);
    row.peak_rss_mib = Some(rss);
    row.notes = format!("{} failed requests", r.failures);
    row
}

/// J1's broker side (and J4's): closed-loop ingest of 1 KiB events on 64 connections,
/// split evenly over `instances` brokers with the same config on `nats` (each on ports
/// of its own), for `seconds`. The row's CPU is the brokers' summed, beside the servers'.
async fn jetstream_ingest(
    bin: &Path,
    scenario: &str,
    nats: &NatsServers,
    replicas: usize,
    instances: usize,
    seconds: u64,
) -> Row {
    let backend = Backend::JetStream { nats, replicas };
    let mut brokers = Vec::new();
    for i in 0..instances {
        let dir = tempdir(&format!("{}-{i}", scenario.to_lowercase()));
        brokers.push(start_broker(bin, &dir, "", &backend).0);
    }
    let cpu0: Vec<Duration> = brokers.iter().map(Proc::cpu).collect();
    let (nats0, each0, client0) = (nats.cpu(), nats.cpu_each(), cpu_of(std::process::id()));
    let connections = 64 / instances;
    let mut loads = Vec::new();
    for (i, broker) in brokers.iter().enumerate() {
        let mut l = load(broker, "/", payload_1k(), connections, seconds);
        // Ids of their own per ingress: the dedupe key (`source` and `id`) holds
        // across the fleet.
        l.first_id = i as u64 * 1_000_000_000;
        loads.push(tokio::spawn(run_load(l)));
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).unwrap();
    let (mut events, mut failures, mut elapsed, mut per_instance) =
        (0, 0, Duration::ZERO, Vec::new());
    for l in loads {
        let r = l.await.unwrap();
        events += r.events;
        failures += r.failures;
        elapsed = elapsed.max(r.elapsed);
        per_instance.push(r.events);
        h.add(r.latency.unwrap()).unwrap();
    }
    let cpu: Duration = brokers
        .iter()
        .zip(&cpu0)
        .map(|(b, c0)| b.cpu().saturating_sub(*c0))
        .sum();
    let nats_cpu = per_event(Some(nats0), Some(nats.cpu()), events);
    // Per node: the streams' leaders do more than their followers.
    let nodes: Vec<String> = nats
        .cpu_each()
        .iter()
        .zip(&each0)
        .map(|(c, c0)| {
            format!(
                "{:.0}",
                c.saturating_sub(*c0).as_secs_f64() * 1e6 / events.max(1) as f64
            )
        })
        .collect();
    // The HTTP load generator's (this process's): on the same two cores as the rest.
    let client = per_event(Some(client0), Some(cpu_of(std::process::id())), events);
    let rss = brokers.iter().map(Proc::peak_rss).max().unwrap_or(0);
    for b in brokers {
        let dir = b.dir.clone();
        b.stop();
        let _ = std::fs::remove_dir_all(dir);
    }
    nats.clear().await;
    let what = if instances == 1 {
        "broker ingest (64 connections)".to_string()
    } else {
        format!("{instances} brokers, ingest ({connections} connections each)")
    };
    let mut row = row(
        scenario,
        &what,
        "1 KiB structured",
        events as f64 / elapsed.as_secs_f64(),
        "events/s",
        &h,
    );
    row.cpu_us_per_event = Some(cpu.as_secs_f64() * 1e6 / events.max(1) as f64);
    row.nats_cpu_us_per_event = nats_cpu;
    row.peak_rss_mib = Some(rss as f64 / (1 << 20) as f64);
    row.notes = format!(
        "{failures} failed requests; replicas {replicas}; the HTTP load generator's CPU {:.0} µs/event",
        client.unwrap_or(0.0)
    );
    if nodes.len() > 1 {
        row.notes = format!(
            "{}; the servers' CPU by node {} µs/event",
            row.notes,
            nodes.join(" / ")
        );
    }
    if instances > 1 {
        let each: Vec<String> = per_instance.iter().map(u64::to_string).collect();
        row.notes = format!(
            "{}; events per instance {}; CPU and RSS: the brokers' summed and the largest",
            row.notes,
            each.join(" and ")
        );
    }
    row
}

/// The round (a baseline row and the broker's row measured right after it) whose
/// ratio is the median (the higher middle one of an even number), the broker's row carrying its ratio, every round's ratio,
/// and a note of each round's rates.
fn median_round(rounds: Vec<(Row, Row)>) -> (Row, Row) {
    let ratios: Vec<f64> = rounds.iter().map(|(b, r)| r.rate / b.rate).collect();
    let rates: Vec<String> = rounds
        .iter()
        .zip(&ratios)
        .map(|((b, r), q)| format!("{:.0} vs {:.0} ({q:.2})", r.rate, b.rate))
        .collect();
    let mut order: Vec<usize> = (0..rounds.len()).collect();
    order.sort_by(|&a, &b| ratios[a].total_cmp(&ratios[b]));
    let median = order[order.len() / 2];
    let (base, mut row) = rounds.into_iter().nth(median).expect("at least one round");
    row.baseline = Some(base.scenario.clone());
    row.ratio = Some(ratios[median]);
    row.round_ratios = ratios;
    if rates.len() > 1 {
        row.notes = format!(
            "{}; rounds (broker vs baseline, ratio): {}; the median round is shown",
            row.notes,
            rates.join(", ")
        );
    }
    (base, row)
}

/// S1's comparison: single events with `fsync`, against B-durable.
fn ingest_comparison(scenario: &'static str, payload: Payload, rate: Option<f64>) -> Comparison {
    Comparison {
        scenario,
        what: "broker ingest (64 connections)",
        unit: "events/s",
        payload,
        durability: "fsync",
        baseline: "durable",
        diagnostic: (
            "sled",
            "diagnostic: the storage layer alone (Store::write_group: segment append, index file, sync)",
        ),
        rate,
    }
}

// ---------------------------------------------------------------------------------
// Scenarios

struct Bench {
    args: Args,
    rows: Vec<Row>,
}

fn subscription(name: &str, filter: &str, sinks: &[String], delivery: &str) -> String {
    let sinks: String = sinks.iter().map(|s| format!("    - uri: {s}\n")).collect();
    format!(
        "apiVersion: switchyard.dev/v1alpha1\nkind: Subscription\nmetadata: {{ name: {name} }}\nspec:\n{filter}  sinks:\n{sinks}{delivery}---\n"
    )
}

impl Bench {
    fn push(&mut self, row: Row) {
        println!(
            "{:<10} {:<44} {:>10.0} {:<12} p50 {:>7.2} p99 {:>7.2} p99.9 {:>7.2} ms {}{}{}{}",
            row.scenario,
            row.what,
            row.rate,
            row.unit,
            row.p50_ms,
            row.p99_ms,
            row.p999_ms,
            row.cpu_us_per_event
                .map_or(String::new(), |c| format!("cpu {c:.0} µs/ev ")),
            row.nats_cpu_us_per_event
                .map_or(String::new(), |c| format!("nats {c:.0} µs/ev ")),
            row.peak_rss_mib
                .map_or(String::new(), |r| format!("rss {r:.0} MiB ")),
            row.ratio
                .map_or(String::new(), |r| format!("ratio {r:.2} {}", row.target)),
        );
        self.rows.push(row);
    }

    /// Runs `c` in `--rounds` rounds and pushes the median round's baseline row and
    /// B-sled's; returns the broker's row with its ratio, for the caller's target.
    async fn compare_in_rounds(&mut self, c: Comparison) -> Row {
        let secs = self.args.seconds;
        let (mut rounds, mut diagnostic) = (Vec::new(), None);
        for round in 0..self.args.rounds {
            let base = baseline_server(c.baseline, &c.payload, 64, secs, c.rate).await;
            if round == 0 {
                let (kind, notes) = c.diagnostic;
                let mut sled = baseline_server(kind, &c.payload, 64, secs, c.rate).await;
                sled.ratio = Some(sled.rate / base.rate);
                sled.baseline = Some(base.scenario.clone());
                sled.notes = notes.into();
                diagnostic = Some(sled);
            }
            let row = broker_ingest(&self.args.broker, &c, secs).await;
            rounds.push((base, row));
        }
        let (base, row) = median_round(rounds);
        self.push(base);
        if let Some(d) = diagnostic {
            self.push(d);
        }
        row
    }

    /// S1 (and S8): single events, 64 connections, against B-durable (B-http).
    async fn ingest(&mut self, scenario: &'static str, payload: Payload, relaxed: bool) {
        let target = if relaxed { 0.8 } else { 0.9 };
        let comparison = if relaxed {
            Comparison {
                durability: "relaxed",
                baseline: "http",
                diagnostic: (
                    "sled-relaxed",
                    "diagnostic: the storage layer alone, durability relaxed (Store::write_group: segment append and index file)",
                ),
                ..ingest_comparison(scenario, payload, self.args.ingest_rate)
            }
        } else {
            ingest_comparison(scenario, payload, self.args.ingest_rate)
        };
        let mut row = self.compare_in_rounds(comparison).await;
        let ratio = row.ratio.expect("set by median_round");
        let p99_ok = relaxed || row.p99_ms <= 20.0;
        // At a fixed rate both sides keep up: the run compares CPU, not the target.
        row.met = self
            .args
            .ingest_rate
            .is_none()
            .then_some(ratio >= target && p99_ok);
        row.target = if relaxed {
            format!(">= {target} x B-http")
        } else {
            format!(">= {target} x B-durable; p99 <= 20 ms")
        };
        self.push(row);
    }

    /// S2: batches of 100 against B-durable fed the same batches (one append per batch:
    /// group size 100 in records).
    async fn batches(&mut self) {
        let mut row = self
            .compare_in_rounds(Comparison {
                what: "broker ingest, batches (64 connections)",
                unit: "records/s",
                diagnostic: (
                    "sled-batch",
                    "diagnostic: the storage layer alone, each batch stored as 100 records with dedupe keys",
                ),
                rate: None,
                ..ingest_comparison("S2", payload_batch(100), None)
            })
            .await;
        row.met = Some(row.ratio.expect("set by median_round") >= 0.7);
        row.target = ">= 0.7 x B-durable".into();
        self.push(row);
    }

    /// B-deliver: a bare client posting to sinks at `rate` (or as fast as it can).
    async fn baseline_deliver(
        &mut self,
        sinks: usize,
        connections: usize,
        rate: Option<f64>,
    ) -> Row {
        let times = SendTimes::new(50_000_000);
        let mut all = Vec::new();
        for _ in 0..sinks {
            all.push(Sink::start(SinkMode::Ok, Some(times.clone())).await);
        }
        let per_sink = connections.div_ceil(sinks).max(1);
        let secs = self.args.seconds;
        // This process is the client and the sinks: their CPU, per delivery.
        let own0 = cpu_of(std::process::id());
        let mut tasks = Vec::new();
        for (i, sink) in all.iter().enumerate() {
            let l = Load {
                uri: sink.url(),
                addr: sink.addr,
                connections: per_sink,
                rate: rate.map(|r| r / sinks as f64),
                duration: Duration::from_secs(secs),
                max_requests: u64::MAX,
                payload: payload_1k(),
                times: Some(times.clone()),
                keep_acked: false,
                stop: Arc::default(),
                first_id: i as u64 * 10_000_000,
            };
            tasks.push(tokio::spawn(run_load(l)));
        }
        let mut delivered = 0;
        let mut elapsed = Duration::ZERO;
        let mut h = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).unwrap();
        for t in tasks {
            let r = t.await.unwrap();
            delivered += r.events;
            elapsed = elapsed.max(r.elapsed);
            h.add(r.latency.unwrap()).unwrap();
        }
        let own = per_event(Some(own0), Some(cpu_of(std::process::id())), delivered);
        let mut row = row(
            "B-deliver",
            &format!("bare client -> {sinks} sink(s), {connections} connections"),
            "1 KiB structured",
            delivered as f64 / elapsed.as_secs_f64(),
            "deliveries/s",
            &h,
        );
        row.notes = format!(
            "client and sinks {:.1} µs of CPU per delivery",
            own.unwrap_or(0.0)
        );
        row
    }

    /// S3: end to end at a fixed rate through 10 subscriptions of one sink each (each
    /// event matches one of them).
    async fn end_to_end(
        &mut self,
        scenario: &str,
        rate: f64,
        failing: bool,
        backend: &Backend<'_>,
    ) -> Option<f64> {
        let secs = self.args.seconds;
        let times = SendTimes::new((rate as usize) * (secs as usize + 5) + 1000);
        let mut sinks = Vec::new();
        for i in 0..10 {
            let mode = match (failing, i) {
                (true, 0) => SinkMode::HalfFailing,
                (true, 1) => SinkMode::Hang,
                _ => SinkMode::Ok,
            };
            sinks.push(Sink::start(mode, Some(times.clone())).await);
        }
        let subs: String = (0..10)
            .map(|i| {
                subscription(
                    &format!("s{i}"),
                    &format!("  filter:\n    attributes: {{ type: bench.t{i} }}\n"),
                    &[sinks[i].url()],
                    "  delivery: { timeout: PT1S, backoffDelay: PT0.05S }\n",
                )
            })
            .collect();
        let dir = tempdir(scenario);
        let (broker, _) = start_broker(&self.args.broker, &dir, &subs, backend);
        let mut l = load(&broker, "/", payload_typed(10), 64, secs);
        l.rate = Some(rate);
        l.times = Some(times.clone());
        let nats0 = backend.nats_cpu();
        let (r, cpu, rss) = measured(&broker, l).await;
        let nats_cpu = per_event(nats0, backend.nats_cpu(), r.events);
        // Let deliveries catch up.
        let healthy: Vec<&Arc<Sink>> = if failing {
            sinks[2..].iter().collect()
        } else {
            sinks.iter().collect()
        };
        let expected = r.events * healthy.len() as u64 / 10;
        let deadline = Instant::now() + Duration::from_secs(30);
        while healthy
            .iter()
            .map(|s| s.ok.load(Ordering::Relaxed))
            .sum::<u64>()
            < expected.saturating_sub(10)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        broker.stop();
        let _ = std::fs::remove_dir_all(&dir);
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        for s in &healthy {
            h.add(&*s.latency.lock().unwrap()).unwrap();
        }
        let delivered: u64 = healthy.iter().map(|s| s.ok.load(Ordering::Relaxed)).sum();
        let what = if failing {
            "send -> healthy sinks (1 half-503, 1 hanging)"
        } else {
            "send -> sink receipt, 10 subscriptions"
        };
        let mut row = row(
            scenario,
            what,
            "1 KiB structured",
            r.events as f64 / r.elapsed.as_secs_f64(),
            "events/s",
            &h,
        );
        row.cpu_us_per_event = Some(cpu);
        row.nats_cpu_us_per_event = nats_cpu;
        row.peak_rss_mib = Some(rss);
        row.notes = format!(
            "{delivered} of {expected} expected deliveries to healthy sinks; ingest p99 {:.2} ms",
            percentiles(r.latency.as_ref().unwrap()).1
        );
        let p99 = row.p99_ms;
        self.push(row);
        Some(p99)
    }

    async fn s3(&mut self) -> Option<f64> {
        let rate = self.args.rate;
        let durable =
            baseline_server("durable", &payload_1k(), 64, self.args.seconds, Some(rate)).await;
        let mut deliver = self.baseline_deliver(10, 64, Some(rate)).await;
        deliver.scenario = "B-deliver".into();
        let bound = 2.0 * (durable.p99_ms + deliver.p99_ms);
        self.push(durable);
        self.push(deliver);
        let p99 = self
            .end_to_end("S3", rate, false, &Backend::Embedded("fsync"))
            .await?;
        if let Some(last) = self.rows.last_mut() {
            last.baseline = Some("2 x (B-durable p99 + B-deliver p99)".into());
            last.ratio = Some(p99 / (bound / 3.0));
            last.target = format!("p99 <= {bound:.2} ms");
            last.met = Some(p99 <= bound);
        }
        Some(p99)
    }

    async fn s7(&mut self, s3_p99: Option<f64>) {
        let p99 = self
            .end_to_end("S7", self.args.rate, true, &Backend::Embedded("fsync"))
            .await;
        if let (Some(last), Some(base), Some(p99)) = (self.rows.last_mut(), s3_p99, p99) {
            last.baseline = Some("S3 p99".into());
            last.ratio = Some(p99 / base);
            last.target = "healthy p99 <= 1.5 x S3 p99".into();
            last.met = Some(p99 <= 1.5 * base);
        }
    }

    /// S4: 100 subscriptions (attribute and CEL filters, some on data), each event
    /// matching 10, against B-deliver to the same 10 sinks.
    async fn s4(&mut self) {
        // The baseline holds as many requests in flight as the broker's ten matching
        // lanes do (each at `maxInFlight`, written out below, the default): a lane
        // behind its work keeps that many connections busy, so the broker runs S4 on
        // 320 connections, and a client on 64 would not be the same client.
        let in_flight = 32;
        // In rounds, as the closed-loop ingest is (`compare_in_rounds`): B-deliver, then
        // the broker.
        let (mut rounds, mut deliver_64) = (Vec::new(), None);
        for round in 0..self.args.rounds {
            let deliver = self.baseline_deliver(10, 10 * in_flight, None).await;
            if round == 0 {
                // For the record, the same client on the 64 connections the other rows use.
                let mut d = self.baseline_deliver(10, 64, None).await;
                d.scenario = "B-deliver-64".into();
                deliver_64 = Some(d);
            }
            let row = self
                .fanout("S4", in_flight, &Backend::Embedded("fsync"))
                .await;
            rounds.push((deliver, row));
        }
        let (deliver, mut row) = median_round(rounds);
        let deliver_64 = deliver_64.expect("run in the first round");
        let ratio = row.ratio.expect("set by median_round");
        row.target = ">= 0.8 x B-deliver".into();
        // At a fixed rate the run compares CPU, not the target.
        row.met = self.args.fanout_rate.is_none().then_some(ratio >= 0.8);
        row.notes = format!(
            "{}; {:.2} x B-deliver-64 (its first round)",
            row.notes,
            row.rate / deliver_64.rate
        );
        self.push(deliver);
        self.push(deliver_64);
        self.push(row);
    }

    /// One run of S4's broker on `backend` (its row named `scenario`): the load, then the
    /// wait for every delivery.
    async fn fanout(&mut self, scenario: &str, in_flight: usize, backend: &Backend<'_>) -> Row {
        self.fanout_with(scenario, in_flight, backend, "").await
    }

    /// [`Bench::fanout`], each subscription's `delivery` given `extra` (YAML flow
    /// mapping entries) too.
    async fn fanout_with(
        &mut self,
        scenario: &str,
        in_flight: usize,
        backend: &Backend<'_>,
        extra: &str,
    ) -> Row {
        let secs = self.args.seconds;
        let times = SendTimes::new(20_000_000);
        let mut sinks = Vec::new();
        for _ in 0..10 {
            sinks.push(Sink::start(SinkMode::Ok, Some(times.clone())).await);
        }
        // Ten groups of ten, each group on a sink of its own; the first subscription of
        // each group (type t0) matches, so the ten deliveries of an event go to the ten
        // sinks, as the baseline's do.
        let mut subs = String::new();
        for i in 0..100 {
            let group = i / 10;
            let ty = if i % 10 == 0 {
                "bench.t0".to_string()
            } else {
                format!("bench.t{}", i % 10)
            };
            let filter = match group % 3 {
                0 => format!("  filter:\n    attributes: {{ type: {ty} }}\n"),
                1 => format!("  filter:\n    cel: type == '{ty}' && source == '/bench'\n"),
                _ => format!(
                    "  filter:\n    cel: type == '{ty}' && data.pipelineRun.namespace == 'ci'\n"
                ),
            };
            subs.push_str(&subscription(
                &format!("f{i}"),
                &filter,
                &[sinks[group].url()],
                &format!("  delivery: {{ maxInFlight: {in_flight}{extra} }}\n"),
            ));
        }
        let dir = tempdir(&scenario.to_lowercase());
        let (broker, _) = start_broker(&self.args.broker, &dir, &subs, backend);
        let mut l = load(&broker, "/", payload_1k(), 64, secs);
        l.times = Some(times.clone());
        l.rate = self.args.fanout_rate;
        let started = Instant::now();
        let cpu0 = broker.cpu();
        let nats0 = backend.nats_cpu();
        // This process is the load and the sinks.
        let own0 = cpu_of(std::process::id());
        let r = run_load(l).await;
        let expected = r.events * 10;
        // On JetStream (J2) the drain of a 10 s closed loop takes about 100 s here.
        let deadline = Instant::now() + Duration::from_secs(600);
        let total = || {
            sinks
                .iter()
                .map(|s| s.ok.load(Ordering::Relaxed))
                .sum::<u64>()
        };
        while total() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = started.elapsed();
        let delivered = total();
        let own = per_event(Some(own0), Some(cpu_of(std::process::id())), delivered);
        // The broker's CPU from the first event until the last delivery, per event.
        let cpu = broker.cpu().saturating_sub(cpu0).as_secs_f64() * 1e6 / r.events.max(1) as f64;
        let nats_cpu = per_event(nats0, backend.nats_cpu(), r.events);
        let rss = broker.peak_rss() as f64 / (1 << 20) as f64;
        broker.stop();
        let _ = std::fs::remove_dir_all(&dir);
        let rate = delivered as f64 / took.as_secs_f64();
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        for s in &sinks {
            h.add(&*s.latency.lock().unwrap()).unwrap();
        }
        let mut row = row(
            scenario,
            "fan-out, 100 subscriptions, 10 match",
            "1 KiB structured",
            rate,
            "deliveries/s",
            &h,
        );
        row.cpu_us_per_event = Some(cpu);
        row.nats_cpu_us_per_event = nats_cpu;
        row.peak_rss_mib = Some(rss);
        row.notes = format!(
            "{} events ingested{}, {delivered} of {expected} deliveries in {:.1} s; CPU per delivery: broker {:.1} µs, load and sinks {:.1} µs",
            r.events,
            self.args
                .fanout_rate
                .map(|r| format!(" at {r} events/s"))
                .unwrap_or_default(),
            took.as_secs_f64(),
            cpu / 10.0,
            own.unwrap_or(0.0),
        );
        row
    }

    /// The nats-server processes of a J scenario (`nodes` of them), or `None` after
    /// saying that the scenario was skipped, and why.
    fn nats(&mut self, scenario: &str, nodes: usize) -> Option<NatsServers> {
        match nats_binary() {
            Ok(bin) => Some(NatsServers::start(&bin, nodes, &scenario.to_lowercase())),
            Err(why) => {
                println!("{scenario:<10} skipped: {why}");
                self.rows.push(Row {
                    scenario: scenario.into(),
                    what: "skipped".into(),
                    notes: format!("skipped: {why}"),
                    ..Row::default()
                });
                None
            }
        }
    }

    /// J1 (one node, `replicas: 1`) and J1-R3 (three nodes, `replicas: 3`): S1's load
    /// on the broker on JetStream, against B-js on the same servers, in rounds.
    async fn j1(&mut self, scenario: &str, replicas: usize) {
        let Some(nats) = self.nats(scenario, if replicas > 1 { 3 } else { 1 }) else {
            return;
        };
        let secs = self.args.seconds;
        let (mut rounds, mut diagnostic) = (Vec::new(), None);
        for round in 0..self.args.rounds {
            let base = baseline_jetstream(&nats, replicas, 64, secs).await;
            if round == 0 {
                let mut d = baseline_http_js(&nats, replicas, secs).await;
                d.ratio = Some(d.rate / base.rate);
                d.baseline = Some(base.scenario.clone());
                diagnostic = Some(d);
            }
            let row = jetstream_ingest(&self.args.broker, scenario, &nats, replicas, 1, secs).await;
            rounds.push((base, row));
        }
        let diagnostic: Row = diagnostic.expect("run in the first round");
        // Against the broker's run of the same round, right after it.
        let first = rounds[0].1.rate / diagnostic.rate;
        let (base, mut row) = median_round(rounds);
        let ratio = row.ratio.expect("set by median_round");
        row.target = ">= 0.7 x B-js".into();
        row.met = Some(ratio >= 0.7);
        row.notes = format!(
            "{}; the first round's {first:.2} x B-http-js (both in the first round)",
            row.notes
        );
        self.push(base);
        self.push(diagnostic);
        self.push(row);
    }

    /// S4-flow: S4 with every lane's rate limit (set too high to hold anything back)
    /// and circuit breaker on, against S4 without them, in alternated rounds: what
    /// flow control costs a delivery.
    async fn s4_flow(&mut self) {
        let flow =
            ", rateLimit: { perSecond: 1000000, burst: 1000000 }, circuitBreaker: { failures: 10 }";
        let mut rounds = Vec::new();
        for _ in 0..self.args.rounds {
            let base = self.fanout("S4", 32, &Backend::Embedded("fsync")).await;
            let row = self
                .fanout_with("S4-flow", 32, &Backend::Embedded("fsync"), flow)
                .await;
            rounds.push((base, row));
        }
        let (base, mut row) = median_round(rounds);
        row.target = "~1 x S4 (issue 24: no measurable growth)".into();
        self.push(base);
        self.push(row);
    }

    /// J2: S4 on JetStream (one node), against S4 on the embedded backend, in rounds.
    async fn j2(&mut self) {
        let Some(nats) = self.nats("J2", 1) else {
            return;
        };
        let backend = Backend::JetStream {
            nats: &nats,
            replicas: 1,
        };
        let mut rounds = Vec::new();
        for _ in 0..self.args.rounds {
            let base = self.fanout("S4", 32, &Backend::Embedded("fsync")).await;
            let row = self.fanout("J2", 32, &backend).await;
            nats.clear().await;
            rounds.push((base, row));
        }
        let (base, mut row) = median_round(rounds);
        row.target = ">= 0.7 x S4".into();
        row.met = row.ratio.map(|r| r >= 0.7);
        self.push(base);
        self.push(row);
    }

    /// J3: S3 on JetStream (one node), against S3 on the embedded backend: the ratio
    /// of the p99s.
    async fn j3(&mut self) {
        let Some(nats) = self.nats("J3", 1) else {
            return;
        };
        let rate = self.args.rate;
        let Some(base) = self
            .end_to_end("S3", rate, false, &Backend::Embedded("fsync"))
            .await
        else {
            return;
        };
        let backend = Backend::JetStream {
            nats: &nats,
            replicas: 1,
        };
        let Some(p99) = self.end_to_end("J3", rate, false, &backend).await else {
            return;
        };
        if let Some(last) = self.rows.last_mut() {
            last.baseline = Some("S3 p99".into());
            last.ratio = Some(p99 / base);
            last.target = "reported: p99 / S3 p99".into();
            last.notes = format!("{}; p99 {p99:.2} ms, S3's {base:.2} ms", last.notes);
        }
    }

    /// J4: J1's ingest on the three-node cluster (`replicas: 3`) through one broker
    /// instance, then through two sharing it (the load split over both ingresses), in
    /// rounds; the CPU per event of the brokers and of the servers for a projection.
    async fn j4(&mut self) {
        let Some(nats) = self.nats("J4", 3) else {
            return;
        };
        let secs = self.args.seconds;
        let mut rounds = Vec::new();
        for _ in 0..self.args.rounds {
            let one = jetstream_ingest(&self.args.broker, "J4-1", &nats, 3, 1, secs).await;
            let two = jetstream_ingest(&self.args.broker, "J4-2", &nats, 3, 2, secs).await;
            rounds.push((one, two));
        }
        let (one, mut two) = median_round(rounds);
        two.target = "reported: throughput and CPU per event".into();
        two.notes = two.notes.replace(
            "(broker vs baseline, ratio)",
            "(two instances vs one, ratio)",
        );
        let cpu = |r: &Row| {
            format!(
                "brokers {:.0} µs, nats-servers {:.0} µs",
                r.cpu_us_per_event.unwrap_or(0.0),
                r.nats_cpu_us_per_event.unwrap_or(0.0)
            )
        };
        two.notes = format!(
            "{}; CPU per event with one instance: {}; with two: {}",
            two.notes,
            cpu(&one),
            cpu(&two)
        );
        self.push(one);
        self.push(two);
    }

    /// S5 and S6: a backlog while the only sink is down, the drain when it returns,
    /// then kill -9 under load and a restart on the stored log.
    async fn backlog(&mut self, want_s5: bool, want_s6: bool) {
        let n = self.args.backlog;
        let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sink_addr = down.local_addr().unwrap();
        drop(down);
        let subs = subscription("backlog", "", &[format!("http://{sink_addr}/")], "");
        let dir = tempdir("s5");
        let (broker, _) = start_broker(&self.args.broker, &dir, &subs, &Backend::Embedded("fsync"));
        broker.start_sampling();
        let batches = n.div_ceil(100);
        let mut l = load(&broker, "/", payload_batch(100), 16, 24 * 3600);
        l.max_requests = batches;
        let ingest = run_load(l).await;
        let logical = ingest.events * 1024;
        println!(
            "S5: {} events stored in {:.1} s",
            ingest.events,
            ingest.elapsed.as_secs_f64()
        );
        let rss_backlog = broker.peak_rss();
        // The sink comes back.
        let sink = {
            let listener = tokio::net::TcpListener::bind(sink_addr).await.unwrap();
            Sink::serve(listener, SinkMode::Ok, None)
        };
        let started = Instant::now();
        let deadline = started + Duration::from_secs(1800);
        while sink.ok.load(Ordering::Relaxed) < ingest.events && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let drain = started.elapsed();
        let delivered = sink.ok.load(Ordering::Relaxed);
        let disk = dir_bytes(&dir.join("data"));
        let rss = broker.peak_rss();
        if want_s5 {
            let h = Histogram::<u64>::new(3).unwrap();
            let mut row = row(
                "S5",
                "backlog while the sink is down, then drain",
                "batches of 100 x 1 KiB",
                delivered as f64 / drain.as_secs_f64(),
                "deliveries/s (drain)",
                &h,
            );
            row.peak_rss_mib = Some(rss as f64 / (1 << 20) as f64);
            row.ratio = Some(disk as f64 / logical as f64);
            row.baseline = Some("disk / logical bytes".into());
            row.target = "RSS <= 200 MiB; disk <= 2.5 x logical".into();
            row.met = Some(rss <= 200 << 20 && disk as f64 <= 2.5 * logical as f64);
            row.notes = format!(
                "{} events; ingest {:.0} events/s; peak RSS {:.0} MiB while the backlog built, {:.0} MiB overall; disk {:.0} MiB for {:.0} MiB logical; drained {delivered} in {:.1} s",
                ingest.events,
                ingest.events as f64 / ingest.elapsed.as_secs_f64(),
                rss_backlog as f64 / (1 << 20) as f64,
                rss as f64 / (1 << 20) as f64,
                disk as f64 / (1 << 20) as f64,
                logical as f64 / (1 << 20) as f64,
                drain.as_secs_f64()
            );
            self.push(row);
        }
        if !want_s6 {
            broker.stop();
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        // S6: single events under load, kill -9 mid-flight, restart, count.
        let stop = Arc::new(AtomicBool::new(false));
        let mut l = load(&broker, "/", payload_1k(), 32, 3600);
        l.keep_acked = true;
        l.stop = stop.clone();
        l.first_id = 100_000_000;
        let running = tokio::spawn(run_load(l));
        tokio::time::sleep(Duration::from_secs(3)).await;
        let dir = broker.kill9();
        stop.store(true, Ordering::Relaxed);
        let acked = running.await.unwrap().acked;
        let (broker, spawned) =
            start_broker(&self.args.broker, &dir, &subs, &Backend::Embedded("fsync"));
        let admin = broker.admin.unwrap();
        let ready = loop {
            if http_get(admin, "/readyz").await.0 == 200 {
                break spawned.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        // Every acknowledged id is stored: the last ones, read back through the admin API.
        let metrics = http_get(admin, "/metrics").await.1;
        let head: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("switchyard_log_head_sequence{broker=\"default\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut stored = std::collections::HashSet::new();
        let mut after = head.saturating_sub(acked.len() as u64 + 1000);
        loop {
            let (_, body) = http_get(
                admin,
                &format!("/api/v1/brokers/default/events?after={after}&limit=1000"),
            )
            .await;
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let Some(events) = v.as_array().filter(|e| !e.is_empty()) else {
                break;
            };
            for e in events {
                if let Some(id) = e["event"]["id"]
                    .as_str()
                    .and_then(|i| i.parse::<u64>().ok())
                {
                    stored.insert(id);
                }
                after = after.max(e["seq"].as_u64().unwrap_or(after));
            }
        }
        let lost = acked.iter().filter(|id| !stored.contains(id)).count();
        broker.stop();
        let _ = std::fs::remove_dir_all(&dir);
        let h = Histogram::<u64>::new(3).unwrap();
        let mut row = row(
            "S6",
            "restart after kill -9 with the stored log",
            "1 KiB structured",
            0.0,
            "",
            &h,
        );
        row.target = "start to /readyz <= 2 s; 0 acknowledged lost".into();
        row.met = Some(ready <= Duration::from_secs(2) && lost == 0);
        row.notes = format!(
            "{} events stored; start to /readyz 200 in {:.0} ms; {} acknowledged during the kill window, {lost} lost",
            head,
            ready.as_secs_f64() * 1000.0,
            acked.len()
        );
        self.push(row);
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.blocks() * 512
            };
        }
    }
    total
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let client =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Body>();
    match client
        .get(format!("http://{addr}{path}").parse().unwrap())
        .await
    {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
        Err(_) => (0, String::new()),
    }
}

fn machine() -> BTreeMap<&'static str, String> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let mut m = BTreeMap::new();
    m.insert("cpu", cpu);
    m.insert(
        "cores",
        std::thread::available_parallelism()
            .map_or(0, |n| n.get())
            .to_string(),
    );
    m.insert(
        "kernel",
        read("/proc/sys/kernel/osrelease").trim().to_string(),
    );
    m.insert(
        "memory",
        read("/proc/meminfo")
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
    );
    m
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--serve-baseline") {
        if argv[2] == "http-js" {
            let replicas = argv[5].parse().expect("replicas");
            serve_baseline_js(argv[4].split(',').map(String::from).collect(), replicas);
        } else {
            serve_baseline(&argv[2], Path::new(&argv[3]));
        }
        return;
    }
    let args = parse_args();
    assert!(
        args.broker.exists(),
        "no broker at {}: cargo build --release --bin switchyard",
        args.broker.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut bench = Bench { args, rows: Vec::new() };
        let want = |s: &str| bench.args.scenarios.iter().any(|x| x == s);
        let (s1, s1t, s1s, s2, s3, s4, s5, s6, s7, s8) = (
            want("S1"), want("S1-tekton"), want("S1-256B"), want("S2"), want("S3"), want("S4"), want("S5"), want("S6"), want("S7"), want("S8"),
        );
        let (j1, j1r3, j2, j3, j4) = (want("J1"), want("J1-R3"), want("J2"), want("J3"), want("J4"));
        let s4_flow = want("S4-flow");
        if s1 {
            bench.ingest("S1", payload_1k(), false).await;
        }
        if s1t {
            bench.ingest("S1-tekton", payload_tekton(), false).await;
        }
        if s1s {
            bench.ingest("S1-256B", payload_256b(), false).await;
        }
        if s2 {
            bench.batches().await;
        }
        let mut s3_p99 = None;
        if s3 || s7 {
            s3_p99 = bench.s3().await;
        }
        if s7 {
            bench.s7(s3_p99).await;
        }
        if s4 {
            bench.s4().await;
        }
        if s4_flow {
            bench.s4_flow().await;
        }
        if s8 {
            bench.ingest("S8", payload_1k(), true).await;
        }
        if s5 || s6 {
            bench.backlog(s5, s6).await;
        }
        if j1 {
            bench.j1("J1", 1).await;
        }
        if j1r3 {
            bench.j1("J1-R3", 3).await;
        }
        if j2 {
            bench.j2().await;
        }
        if j3 {
            bench.j3().await;
        }
        if j4 {
            bench.j4().await;
        }
        let report = json!({ "machine": machine(), "seconds": bench.args.seconds, "rounds": bench.args.rounds, "rows": bench.rows });
        if let Some(parent) = bench.args.out.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&bench.args.out, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
        println!("\nreport: {}", bench.args.out.display());
        println!("\n| scenario | what | payload | rate | p50 / p99 / p99.9 ms | CPU µs/event | peak RSS MiB | vs | ratio | target | met |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for r in bench.rows.iter().filter(|r| r.what != "skipped") {
            println!(
                "| {} | {} | {} | {:.0} {} | {:.2} / {:.2} / {:.2} | {}{} | {} | {} | {} | {} | {} |",
                r.scenario, r.what, r.payload, r.rate, r.unit, r.p50_ms, r.p99_ms, r.p999_ms,
                r.cpu_us_per_event.map_or("".into(), |c| format!("{c:.0}")),
                r.nats_cpu_us_per_event.map_or("".into(), |c| format!(" + nats {c:.0}")),
                r.peak_rss_mib.map_or("".into(), |c| format!("{c:.0}")),
                r.baseline.clone().unwrap_or_default(),
                r.ratio.map_or("".into(), |c| format!("{c:.2}")),
                r.target,
                r.met.map_or("", |m| if m { "yes" } else { "no" }),
            );
        }
        for r in &bench.rows {
            if !r.notes.is_empty() {
                println!("- {}: {}", r.scenario, r.notes);
            }
        }
    });
}
