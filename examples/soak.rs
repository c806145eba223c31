//! Crash soak: `kill -9` under full load, many times over, on one data directory.
//!
//! ```text
//! cargo build --release --bin switchyard --example soak
//! target/release/examples/soak [--cycles 20] [--seconds 3] [--clients 16] [--outage 600]
//! ```
//!
//! Each cycle starts the release broker on the same directory, drives it with
//! `--clients` concurrent producers for up to `--seconds` (killing it at a random point
//! in that time), and SIGKILLs it mid-load. Two subscriptions route to two local sinks:
//! `all` (every event) and `even` (events of type `even`), each with `maxInFlight: 32`.
//! The sinks answer 200 after a short random delay and 503 now and then.
//!
//! With `--outage S`, an outage follows the kills: the `even` sink answers every request
//! 503 for S seconds while a tenth of the producers keep sending; the
//! broker's resident memory is sampled every second, and the `all` lane's deliveries
//! during the outage are counted (a down sink must not hold other lanes back).
//!
//! After the last cycle the broker runs once more until every event that got a `202`
//! has reached every sink it matches, or is in the dead-letter store for it (an outage
//! outlasts the retries of some). The run fails (exit 1) if any is neither, or if the
//! duplicates pass their bound: per kill, what a lane had in flight plus what it
//! finished in the last progress-sync interval (100 ms) before the kill, at the
//! delivery rate of the kill phase, twice over.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

const MAX_IN_FLIGHT: u64 = 32;

struct Args {
    cycles: usize,
    seconds: f64,
    clients: usize,
    outage: f64,
    binary: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        cycles: 20,
        seconds: 3.0,
        clients: 16,
        outage: 0.0,
        binary: PathBuf::from("target/release/switchyard"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--cycles" => a.cycles = value.parse().expect("--cycles N"),
            "--seconds" => a.seconds = value.parse().expect("--seconds S"),
            "--clients" => a.clients = value.parse().expect("--clients N"),
            "--outage" => a.outage = value.parse().expect("--outage SECONDS"),
            "--binary" => a.binary = PathBuf::from(value),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// What one sink received: deliveries per event id.
#[derive(Default)]
struct Received {
    counts: Mutex<HashMap<String, u64>>,
    requests: AtomicU64,
    /// While set, every request is answered 503.
    down: std::sync::atomic::AtomicBool,
}

async fn sink(received: Arc<Received>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let received = received.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let received = received.clone();
                        async move {
                            let id = req
                                .headers()
                                .get("ce-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let _ = req.into_body().collect().await;
                            let n = received.requests.fetch_add(1, Ordering::Relaxed);
                            // Now and then a 503; otherwise a 200 after up to 5 ms.
                            let down = received.down.load(Ordering::Relaxed);
                            let status = if down || n % 50 == 7 { 503 } else { 200 };
                            tokio::time::sleep(Duration::from_micros(n * 7919 % 5000)).await;
                            if status == 200 {
                                *received.counts.lock().unwrap().entry(id).or_default() += 1;
                            }
                            let mut r = http::Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

fn write_config(dir: &Path, all: SocketAddr, even: SocketAddr) -> PathBuf {
    let subs = dir.join("subs.yaml");
    std::fs::write(
        &subs,
        format!(
            "apiVersion: switchyard.dev/v1alpha1\nkind: Subscription\nmetadata: {{ name: all }}\nspec:\n  sinks: [{{ uri: 'http://{all}/all' }}]\n  delivery: {{ maxInFlight: {MAX_IN_FLIGHT}, backoffDelay: 20ms }}\n---\napiVersion: switchyard.dev/v1alpha1\nkind: Subscription\nmetadata: {{ name: even }}\nspec:\n  filter: {{ attributes: {{ type: even }} }}\n  sinks: [{{ uri: 'http://{even}/even' }}]\n  delivery: {{ maxInFlight: {MAX_IN_FLIGHT}, backoffDelay: 20ms }}\n"
        ),
    )
    .unwrap();
    let config = dir.join("switchyard.yaml");
    std::fs::write(
        &config,
        format!(
            "ingress:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nstorage:\n  path: {}\n  durability: fsync\nsubscriptions: [{}]\n",
            dir.join("data").display(),
            subs.display()
        ),
    )
    .unwrap();
    config
}

/// Starts the broker and returns it with its ingress and admin addresses once it is
/// ready.
fn start(binary: &Path, config: &Path) -> (Child, SocketAddr, SocketAddr) {
    let mut child = Command::new(binary)
        .args(["serve", "-c"])
        .arg(config)
        .env_remove("SWITCHYARD_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (build it with cargo build --release)",
                binary.display()
            )
        });
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let field = |line: &str, name: &str| -> SocketAddr {
        let start = line.find(name).unwrap() + name.len();
        line[start..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (ingress, admin) = loop {
        let line = lines
            .next()
            .expect("the broker exited before it was ready")
            .unwrap();
        if line.contains("switchyard ready") {
            break (field(&line, "ingress="), field(&line, "admin="));
        }
    };
    // Keep draining its output so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, ingress, admin)
}

/// The ids of the events in the dead-letter store for `subscription`.
async fn dead_lettered(admin: SocketAddr, subscription: &str) -> std::collections::HashSet<String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri = format!("http://{admin}/api/v1/deadletters?subscription={subscription}");
    let Ok(response) = client.get(uri.parse().unwrap()).await else {
        return Default::default();
    };
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let letters: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
    letters
        .iter()
        .filter_map(|l| Some(l["event"]["id"].as_str()?.to_string()))
        .collect()
}

/// Posts events until `stop`; acknowledged ids go to `acked` with whether they are even.
async fn load(
    addr: SocketAddr,
    clients: usize,
    cycle: usize,
    acked: Arc<Mutex<Vec<(String, bool)>>>,
    stop: Instant,
) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, acked) = (client.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                let id = format!("k{cycle}-c{c}-{n}");
                let even = n.is_multiple_of(2);
                n += 1;
                let body = format!(
                    r#"{{"specversion":"1.0","id":"{id}","source":"/soak","type":"{}","data":{{"pad":"{}"}}}}"#,
                    if even { "even" } else { "odd" },
                    "x".repeat(1000)
                );
                let req = http::Request::post(format!("http://{addr}/"))
                    .header("content-type", "application/cloudevents+json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                match client.request(req).await {
                    Ok(r) if r.status() == 202 => acked.lock().unwrap().push((id, even)),
                    Ok(r) => panic!("{id}: unexpected status {}", r.status()),
                    Err(_) => return, // killed
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let dir = tempfile::tempdir().unwrap();
    let (all, even) = (Arc::new(Received::default()), Arc::new(Received::default()));
    let config = write_config(
        dir.path(),
        sink(all.clone()).await,
        sink(even.clone()).await,
    );
    let acked = Arc::new(Mutex::new(Vec::new()));
    let began = Instant::now();
    for cycle in 0..a.cycles {
        let (mut child, addr, _) = start(&a.binary, &config);
        // Kill at a point between a quarter of the time and all of it.
        let fraction = 0.25 + 0.75 * ((cycle * 7919 % 1000) as f64 / 1000.0);
        let kill_at = Instant::now() + Duration::from_secs_f64(a.seconds * fraction);
        let load = tokio::spawn(load(
            addr,
            a.clients,
            cycle,
            acked.clone(),
            kill_at + Duration::from_secs(60),
        ));
        tokio::time::sleep_until(kill_at.into()).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let _ = load.await;
        println!(
            "cycle {:>2}: killed at {:>4.0} ms; {} events acknowledged so far",
            cycle + 1,
            a.seconds * fraction * 1000.0,
            acked.lock().unwrap().len()
        );
    }
    // The last run: an outage first, if asked for; then no load, until every
    // acknowledged event reached its sinks.
    // Duplicates come from the kills: bound them with the delivery rate of that phase.
    let kill_phase = began.elapsed();
    let kill_phase_requests = (
        all.requests.load(Ordering::Relaxed),
        even.requests.load(Ordering::Relaxed),
    );
    let (mut child, addr, admin) = start(&a.binary, &config);
    let mut outage_report = None;
    if a.outage > 0.0 {
        even.down.store(true, Ordering::Relaxed);
        let all_before = all.requests.load(Ordering::Relaxed);
        let end = Instant::now() + Duration::from_secs_f64(a.outage);
        let load = tokio::spawn(load(
            addr,
            (a.clients / 10).max(1),
            a.cycles,
            acked.clone(),
            end,
        ));
        let mut peak_rss = 0u64;
        let mut samples = Vec::new();
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss = rss_kib(child.id());
            peak_rss = peak_rss.max(rss);
            samples.push(rss);
        }
        let _ = load.await;
        even.down.store(false, Ordering::Relaxed);
        let first_minute_peak = samples.iter().take(60).copied().max().unwrap_or(0);
        outage_report = Some((
            all.requests.load(Ordering::Relaxed) - all_before,
            first_minute_peak,
            peak_rss,
        ));
    }
    let acked = acked.lock().unwrap().clone();
    let want_even = acked.iter().filter(|(_, e)| *e).count();
    // Long enough for an event parked at the end of an outage: backoffMax is 5 minutes.
    let deadline = Instant::now() + Duration::from_secs(480);
    // An event ends delivered, or in the dead-letter store (retries run out while a
    // sink is down): missing is neither.
    let mut letters_all = std::collections::HashSet::<String>::new();
    let mut letters_even = std::collections::HashSet::<String>::new();
    let missing = loop {
        let missing_all = {
            let got = all.counts.lock().unwrap();
            acked
                .iter()
                .filter(|(id, _)| !got.contains_key(id) && !letters_all.contains(id))
                .count()
        };
        let missing_even = {
            let got = even.counts.lock().unwrap();
            acked
                .iter()
                .filter(|(id, e)| *e && !got.contains_key(id) && !letters_even.contains(id))
                .count()
        };
        if missing_all + missing_even == 0 || Instant::now() > deadline {
            break (missing_all, missing_even);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        letters_all = dead_lettered(admin, "all").await;
        letters_even = dead_lettered(admin, "even").await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let elapsed = began.elapsed();
    let dups = |r: &Received| -> u64 { r.counts.lock().unwrap().values().map(|c| c - 1).sum() };
    let (dup_all, dup_even) = (dups(&all), dups(&even));
    // Per kill and lane: the in-flight window, plus what the lane finished in the 100 ms
    // before a progress sync (at the soak's average delivery rate), twice over for margin.
    let bound = |requests: u64| {
        let rate = requests as f64 / kill_phase.as_secs_f64();
        let per_kill = MAX_IN_FLIGHT as f64 + 2.0 * 0.1 * rate;
        (per_kill * a.cycles as f64).ceil() as u64
    };
    let (bound_all, bound_even) = (bound(kill_phase_requests.0), bound(kill_phase_requests.1));
    println!();
    println!(
        "{} kill -9 cycles in {:.0} s; {} events acknowledged ({} even)",
        a.cycles,
        elapsed.as_secs_f64(),
        acked.len(),
        want_even
    );
    println!(
        "lane all : missing {:>6}, dead-lettered {:>6}, duplicates {:>6} (bound {bound_all})",
        missing.0,
        letters_all.len(),
        dup_all,
    );
    println!(
        "lane even: missing {:>6}, dead-lettered {:>6}, duplicates {:>6} (bound {bound_even})",
        missing.1,
        letters_even.len(),
        dup_even,
    );
    if let Some((all_requests, first_minute, peak)) = outage_report {
        println!(
            "outage of the even sink for {:.0} s: lane all took {all_requests} requests meanwhile; broker RSS peak {} MiB in the first minute, {} MiB over the whole outage",
            a.outage,
            first_minute / 1024,
            peak / 1024
        );
    }
    let ok = missing == (0, 0) && dup_all <= bound_all && dup_even <= bound_even;
    println!(
        "{}",
        if ok {
            "PASS: every acknowledged event reached every matching sink"
        } else {
            "FAIL"
        }
    );
    if !ok {
        std::process::exit(1);
    }
}
