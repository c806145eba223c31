//! Several `switchyard serve` processes on one JetStream form one broker: real
//! nats-server processes, real brokers (killed with SIGKILL where a test says so), real
//! HTTP sinks. Skipped without nats-server unless NATS_REQUIRED is set.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::nats::{self, Nats};
use common::process::{self, Broker};
use common::sink::{Answer, TestSink};

/// A fleet: its NATS servers, and a directory with the subscription files and the
/// config every instance starts from (each with its own data directory).
struct Fleet {
    nats: Nats,
    dir: tempfile::TempDir,
    prefix: &'static str,
    replicas: usize,
    /// More YAML under `storage.jetstream` (credentials, TLS), indented.
    extra: String,
    /// The servers' URLs are given with `tls://` instead of `nats://`.
    tls_urls: bool,
}

/// A subscription file's document: `name` with `spec` (YAML indented under `spec:`).
fn subscription(name: &str, spec: &str) -> String {
    format!("apiVersion: switchyard.dev/v1alpha1\nkind: Subscription\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

/// The spec of a subscription of broker `default` with one sink and `delivery` keys.
fn to_sink(sink: &TestSink, delivery: &str) -> String {
    let delivery = if delivery.is_empty() {
        String::new()
    } else {
        format!("  delivery:\n{delivery}")
    };
    format!(
        "  broker: default\n{delivery}  sinks:\n    - uri: {}\n",
        sink.url("/")
    )
}

impl Fleet {
    /// A fleet on `nats`, streams named from `prefix` with `replicas` copies, whose
    /// subscriptions are `documents`.
    fn new(nats: Nats, prefix: &'static str, replicas: usize, documents: &[String]) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let subs = dir.path().join("subs");
        std::fs::create_dir_all(&subs).unwrap();
        std::fs::write(subs.join("routes.yaml"), documents.join("---\n")).unwrap();
        Fleet {
            nats,
            dir,
            prefix,
            replicas,
            extra: String::new(),
            tls_urls: false,
        }
    }

    /// Writes instance `name`'s config; returns its path.
    fn config(&self, name: &str) -> std::path::PathBuf {
        let dir = self.dir.path();
        let servers: Vec<String> = self
            .nats
            .urls()
            .iter()
            .map(|s| match (self.tls_urls, s.strip_prefix("nats://")) {
                (true, Some(rest)) => format!("\"tls://{rest}\""),
                _ => format!("\"{s}\""),
            })
            .collect();
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "ingress:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n\
                 storage:\n  path: {}\n  backend: jetstream\n  jetstream:\n    servers: [{}]\n    streamPrefix: {}\n    replicas: {}\n{}\
                 subscriptions: [{}]\nshutdown:\n  gracePeriod: PT2S\n",
                dir.join(format!("{name}-data")).display(),
                servers.join(", "),
                self.prefix,
                self.replicas,
                self.extra,
                dir.join("subs").display(),
            ),
        )
        .unwrap();
        path
    }

    /// Starts instance `name` and waits until it is ready.
    fn start(&self, name: &str) -> Broker {
        process::start(Some(&self.config(name)), self.dir.path(), &[])
    }
}

fn exchange(addr: SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Posts one event in binary mode; returns the whole answer.
fn post_reply(addr: SocketAddr, id: &str) -> String {
    let body = format!(r#"{{"n":"{id}"}}"#);
    exchange(
        addr,
        &format!(
            "POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\nce-specversion: 1.0\r\nce-id: {id}\r\nce-source: /fleet\r\nce-type: dev.switchyard.test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// Posts one event; returns the status code.
fn post(addr: SocketAddr, id: &str) -> u16 {
    post_reply(addr, id)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn get(addr: SocketAddr, path: &str) -> String {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
    )
}

/// Posts, retrying while the fleet is not ready for it yet (a stream or consumer
/// being created answers 503, as a producer would retry).
fn post_accepted(addr: SocketAddr, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let code = post(addr, id);
        if code == 202 {
            return;
        }
        assert!(Instant::now() < deadline, "{id} was answered {code}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The ids the sink got, in order of arrival.
fn ids(sink: &TestSink) -> Vec<String> {
    sink.received()
        .iter()
        .filter_map(|r| r.header("ce-id").map(str::to_string))
        .collect()
}

fn counts(ids: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for id in ids {
        *m.entry(id.clone()).or_insert(0) += 1;
    }
    m
}

async fn wait_for_ids(sink: &TestSink, want: &[String], within: Duration, brokers: &[&Broker]) {
    let deadline = Instant::now() + within;
    loop {
        let got = counts(&ids(sink));
        let missing: Vec<&String> = want.iter().filter(|id| !got.contains_key(*id)).collect();
        if missing.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            // What the brokers said, for the failure's reader.
            for (i, b) in brokers.iter().enumerate() {
                for line in b.lines.try_iter().filter(|l| !l.contains("IO error")) {
                    eprintln!("broker {i}: {line}");
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the sink never got {} of {} events, e.g. {:?}",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deliver_every_event_once_whichever_took_it() {
    let Some(bin) = nats::available() else { return };
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let fleet = Fleet::new(
        Nats::single(&bin),
        "FLEET1",
        1,
        &[subscription("fleet", &to_sink(&sink, ""))],
    );
    let (a, b) = (fleet.start("a"), fleet.start("b"));
    let want: Vec<String> = (0..40).map(|i| format!("e-{i}")).collect();
    for (i, id) in want.iter().enumerate() {
        post_accepted(if i % 2 == 0 { a.ingress } else { b.ingress }, id);
    }
    // The same event again, at the other instance: a duplicate inside the window.
    assert_eq!(post(b.ingress, "e-0"), 202);
    wait_for_ids(&sink, &want, Duration::from_secs(30), &[&a, &b]).await;
    // Time for a second delivery, were the lanes not shared.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = counts(&ids(&sink));
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(got.len(), want.len());
    // Both instances see the fleet's log and its lanes.
    for broker in [&a, &b] {
        let events = get(broker.admin, "/api/v1/brokers/default/events?limit=100");
        assert!(events.starts_with("HTTP/1.1 200"), "{events}");
        assert!(events.contains("e-39"), "{events}");
    }
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_leaves_its_work_to_the_survivor() {
    let Some(bin) = nats::available() else { return };
    // Slow answers keep deliveries in flight at the instance that dies.
    let sink = TestSink::start(
        vec![],
        Answer::status(200).after(Duration::from_millis(300)),
    )
    .await;
    let delivery = "    timeout: PT2S\n    maxInFlight: 4\n";
    let fleet = Fleet::new(
        Nats::single(&bin),
        "FLEET2",
        1,
        &[subscription("fleet", &to_sink(&sink, delivery))],
    );
    let (a, b) = (fleet.start("a"), fleet.start("b"));
    let want: Vec<String> = (0..60).map(|i| format!("k-{i}")).collect();
    for id in &want[..30] {
        post_accepted(a.ingress, id);
    }
    let killed = Instant::now();
    a.kill();
    for id in &want[30..] {
        post_accepted(b.ingress, id);
    }
    // The lease (5 s) and the claims (timeout + 5 s) run out; the survivor routes and
    // delivers what the dead instance had taken.
    wait_for_ids(&sink, &want, Duration::from_secs(45), &[&b]).await;
    let took = killed.elapsed();
    let got = counts(&ids(&sink));
    let extra: usize = got.values().map(|n| n - 1).sum();
    // Only what was in flight at the dead instance may come twice.
    assert!(extra <= 8, "{extra} duplicates: {got:?}");
    eprintln!("every event delivered {took:?} after the kill; {extra} duplicates");
    assert!(b.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_lane_keeps_the_log_order_across_instances_and_a_kill() {
    let Some(bin) = nats::available() else { return };
    let sink = TestSink::start(vec![], Answer::status(200).after(Duration::from_millis(50))).await;
    let delivery = "    ordering: ordered\n    timeout: PT2S\n";
    let fleet = Fleet::new(
        Nats::single(&bin),
        "FLEET3",
        1,
        &[subscription("fleet", &to_sink(&sink, delivery))],
    );
    let (a, b) = (fleet.start("a"), fleet.start("b"));
    let want: Vec<String> = (0..30).map(|i| format!("o-{i:02}")).collect();
    for id in &want {
        post_accepted(b.ingress, id);
    }
    // Midway, one of the two delivering instances dies.
    while ids(&sink).len() < 10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill();
    wait_for_ids(&sink, &want, Duration::from_secs(45), &[&b]).await;
    let got = ids(&sink);
    // One in flight at a time: an event may come again right after itself (its
    // instance died before the acknowledgement), never after a later one.
    let mut collapsed = got.clone();
    collapsed.dedup();
    assert_eq!(collapsed, want, "arrivals: {got:?}");
    assert!(b.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_parking_and_dead_letters_hold_across_the_fleet() {
    let Some(bin) = nats::available() else { return };
    // First a long Retry-After (parked, not held), then success.
    let park = TestSink::start(
        vec![Answer::status(503).header("retry-after", "7")],
        Answer::status(200),
    )
    .await;
    // Always failing: dead-lettered after its retries.
    let broken = TestSink::start(vec![], Answer::status(500)).await;
    // Parked after the first attempt, then out of retries: the attempts made before the
    // park come back with the entry, whichever instance takes it.
    let parked_out = TestSink::start(vec![], Answer::status(503).header("retry-after", "6")).await;
    // Waits of 5 s held in place: the delivery outlasts its claim (timeout 1 s + 5 s)
    // and must renew it, or another instance would start it again.
    let held = TestSink::start(vec![], Answer::status(503).header("retry-after", "5")).await;
    let fleet = Fleet::new(
        Nats::single(&bin),
        "FLEET4",
        1,
        &[
            subscription("parks", &to_sink(&park, "")),
            subscription(
                "fails",
                &to_sink(&broken, "    retry: 2\n    backoffDelay: PT0.1S\n"),
            ),
            subscription(
                "parked-out",
                &to_sink(&parked_out, "    retry: 1\n    backoffDelay: PT0.1S\n"),
            ),
            subscription(
                "held",
                &to_sink(
                    &held,
                    "    retry: 3\n    backoffDelay: PT0.1S\n    timeout: PT1S\n",
                ),
            ),
        ],
    );
    let (a, b) = (fleet.start("a"), fleet.start("b"));
    post_accepted(a.ingress, "p-1");
    let sent = park.wait_for(2, Duration::from_secs(30)).await;
    let waited = sent[1].at - sent[0].at;
    assert!(
        waited >= Duration::from_millis(6500),
        "the parked retry came after {waited:?}, before its Retry-After"
    );
    // Each dead letter, with the attempts the sink saw, listed by both instances.
    for (name, sink, attempts) in [
        ("fails", &broken, 3),
        ("parked-out", &parked_out, 2),
        ("held", &held, 4),
    ] {
        sink.wait_for(attempts, Duration::from_secs(30)).await;
        for broker in [&a, &b] {
            let letter = dead_letter(broker, name);
            assert!(
                letter.contains(&format!("\"attempts\":{attempts}")),
                "{name}: {letter}"
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(broken.received().len(), 3, "attempts after the dead letter");
    assert_eq!(
        parked_out.received().len(),
        2,
        "attempts after the dead letter"
    );
    let held_at: Vec<Instant> = held.received().iter().map(|r| r.at).collect();
    // Over 15 s its claim would have run out twice; whichever instance took it again
    // would have started over.
    assert_eq!(held_at.len(), 4, "a held delivery started again elsewhere");
    assert!(held_at[3] - held_at[0] >= Duration::from_secs(14));
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

/// The listing of `subscription`'s dead letters at `broker`, once it has one.
fn dead_letter(broker: &Broker, subscription: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let letters = get(
            broker.admin,
            &format!("/api/v1/deadletters?subscription={subscription}"),
        );
        if letters.contains("\"seq\"") {
            return letters;
        }
        assert!(
            Instant::now() < deadline,
            "no dead letter listed: {letters}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_server_gone_ingress_refuses_and_recovers_without_a_restart() {
    let Some(bin) = nats::available() else { return };
    gone_and_back(Nats::single(&bin), "FLEET5", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_whole_cluster_stopped_and_started_nothing_acknowledged_is_lost() {
    let Some(bin) = nats::available() else { return };
    gone_and_back(Nats::cluster(&bin), "FLEET7", 3).await;
}

/// Every server of `nats` stopped, then started again on the same data: `503` with
/// `Retry-After` meanwhile, `/readyz` says why, then ingest and delivery go on without
/// a restart, and what was acknowledged before is delivered.
async fn gone_and_back(nats: Nats, prefix: &'static str, replicas: usize) {
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let mut fleet = Fleet::new(
        nats,
        prefix,
        replicas,
        &[subscription("fleet", &to_sink(&sink, ""))],
    );
    let a = fleet.start("a");
    post_accepted(a.ingress, "before");
    for node in &mut fleet.nats.nodes {
        node.kill();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let reply = post_reply(a.ingress, "during");
        if reply.starts_with("HTTP/1.1 503") {
            break reply;
        }
        assert!(Instant::now() < deadline, "still accepting: {reply}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        refused.to_ascii_lowercase().contains("retry-after:"),
        "{refused}"
    );
    let ready = get(a.admin, "/readyz");
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains("NATS"), "{ready}");
    let clustered = fleet.nats.nodes.len() > 1;
    for node in &mut fleet.nats.nodes {
        node.restart();
    }
    for node in &mut fleet.nats.nodes {
        node.wait_ready(clustered);
    }
    post_accepted(a.ingress, "after");
    wait_for_ids(
        &sink,
        &["before".to_string(), "after".to_string()],
        Duration::from_secs(45),
        &[&a],
    )
    .await;
    assert!(a.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_three_dies_under_load_and_nothing_acknowledged_is_lost() {
    let Some(bin) = nats::available() else { return };
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let mut fleet = Fleet::new(
        Nats::cluster(&bin),
        "FLEET6",
        3,
        &[subscription("fleet", &to_sink(&sink, ""))],
    );
    let a = fleet.start("a");
    let ingress = a.ingress;
    // A producer at about 40 events/s, as Tekton's controller would retry on a 503.
    let producer = std::thread::spawn(move || {
        let (mut accepted, mut refused) = (Vec::new(), Vec::new());
        let started = Instant::now();
        for i in 0..600 {
            let id = format!("r-{i}");
            match post(ingress, &id) {
                202 => accepted.push(id),
                _ => refused.push((i, started.elapsed())),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (accepted, refused)
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    fleet.nats.nodes[0].kill();
    let (accepted, refused) = producer.join().unwrap();
    // The node may have led the stream: until a new leader is elected, appends are
    // refused (503, Retry-After). The window is measured, then ingest goes on.
    let window = match (refused.first(), refused.last()) {
        (Some((_, first)), Some((_, last))) => *last - *first,
        _ => Duration::ZERO,
    };
    eprintln!(
        "{} accepted, {} refused with a node of three down; 503s for {window:?}",
        accepted.len(),
        refused.len()
    );
    assert!(
        window < Duration::from_secs(10),
        "503s for {window:?} with two nodes of three up"
    );
    assert!(
        refused.last().is_none_or(|(i, _)| *i < 560),
        "ingest did not resume: {refused:?}"
    );
    // Everything acknowledged reaches the sink; the node rejoins.
    wait_for_ids(&sink, &accepted, Duration::from_secs(45), &[&a]).await;
    fleet.nats.nodes[0].restart();
    fleet.nats.nodes[0].wait_ready(true);
    assert!(a.terminate().success());
}

/// Runs `serve` on a fleet's config expected to fail at start; returns what it said.
fn refused_start(fleet: &Fleet, name: &str) -> String {
    let config = fleet.config(name);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("serve")
        .arg("-c")
        .arg(&config)
        .env_remove("SWITCHYARD_CONFIG")
        .current_dir(fleet.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A start that should have been refused and was not is killed, not waited on.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{name} started and kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut said = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut said).unwrap();
    assert!(!status.success(), "{name} exited 0: {said}");
    said
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_only_the_servers_can_refuse_stops_the_start_naming_the_key() {
    let Some(bin) = nats::available() else { return };
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let documents = [subscription("fleet", &to_sink(&sink, ""))];
    // Three copies asked of one server.
    let mut fleet = Fleet::new(Nats::single(&bin), "BAD", 3, &documents);
    let said = refused_start(&fleet, "replicas");
    assert!(said.contains("storage.jetstream"), "{said}");
    assert!(said.contains("cannot create or update stream"), "{said}");
    // A server that requires a token, and a wrong one.
    fleet.replicas = 1;
    fleet.extra = "    token: wrong\n".into();
    let url = fleet.nats.nodes[0].url();
    let port = fleet.nats.nodes[0].port;
    fleet.nats.nodes[0].kill();
    let mut guarded = std::process::Command::new(&bin)
        .args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--auth",
            "right",
        ])
        .arg("-sd")
        .arg(fleet.dir.path().join("guarded"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server on {url} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let said = refused_start(&fleet, "token");
    assert!(said.contains("storage.jetstream"), "{said}");
    assert!(said.to_lowercase().contains("authorization"), "{said}");
    // TLS asked of a server that has none.
    fleet.extra = "    token: right\n".into();
    fleet.tls_urls = true;
    let said = refused_start(&fleet, "tls");
    assert!(said.contains("cannot connect to"), "{said}");
    assert!(said.contains("storage.jetstream"), "{said}");
    fleet.tls_urls = false;
    // Nothing listening there at all.
    let _ = guarded.kill();
    let _ = guarded.wait();
    fleet.extra = String::new();
    let said = refused_start(&fleet, "unreachable");
    assert!(said.contains("cannot connect to"), "{said}");
    assert!(said.contains("storage.jetstream"), "{said}");
}

/// Posts `size` bytes of binary-mode data as event `id`; returns the whole answer.
fn post_sized(addr: SocketAddr, id: &str, size: usize) -> String {
    let body = "x".repeat(size);
    exchange(
        addr,
        &format!(
            "POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\nce-specversion: 1.0\r\nce-id: {id}\r\nce-source: /fleet\r\nce-type: dev.switchyard.test\r\ncontent-type: text/plain\r\ncontent-length: {size}\r\n\r\n{body}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_servers_max_payload_cannot_hold_is_refused_as_too_large() {
    let Some(bin) = nats::available() else { return };
    let sink = TestSink::start(vec![], Answer::status(400)).await;
    let dls = TestSink::start(vec![], Answer::status(200)).await;
    // The servers' default max_payload is 1 MiB; the broker's ingress default is 4 MiB.
    let fleet = Fleet::new(
        Nats::single(&bin),
        "FLEETSIZE",
        1,
        &[subscription(
            "big",
            &to_sink(
                &sink,
                &format!("    deadLetterSink: {{ uri: '{}' }}\n", dls.url("/")),
            ),
        )],
    );
    let a = fleet.start("a");
    let largest = switchyard::log::jetstream::JetStreamEvents::largest_event(1 << 20) as usize;
    let refused = post_sized(a.ingress, "too-big", largest + 1);
    assert!(refused.starts_with("HTTP/1.1 413"), "{refused}");
    assert!(refused.contains(&format!("{largest} bytes")), "{refused}");
    // The largest that fits is stored, delivered and, refused by its sink, dead-lettered
    // whole: the letter fits in a message too.
    let fits = post_sized(a.ingress, "fits", largest);
    assert!(fits.starts_with("HTTP/1.1 202"), "{fits}");
    let letters = dls.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(letters[0].header("ce-id"), Some("fits"));
    assert_eq!(letters[0].body.len(), largest);
    let listed = common::eventually("the dead letter in the store", async || {
        let r = get(a.admin, "/api/v1/deadletters");
        r.contains("\"fits\"").then_some(r)
    })
    .await;
    assert!(listed.starts_with("HTTP/1.1 200"), "{listed}");
    assert!(a.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_started_together_on_a_fresh_cluster_all_become_ready() {
    let Some(bin) = nats::available() else { return };
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    // A Deployment's replicas start at once: their creates of the same streams, bucket
    // and consumers queue at the cluster's meta leader.
    let fleet = Fleet::new(
        Nats::cluster(&bin),
        "FLEETTOGETHER",
        3,
        &[subscription("together", &to_sink(&sink, ""))],
    );
    let (a, b, c) = std::thread::scope(|s| {
        let (a, b, c) = (
            s.spawn(|| fleet.start("a")),
            s.spawn(|| fleet.start("b")),
            s.spawn(|| fleet.start("c")),
        );
        (a.join().unwrap(), b.join().unwrap(), c.join().unwrap())
    });
    for (i, broker) in [&a, &b, &c].into_iter().enumerate() {
        post_accepted(broker.ingress, &format!("t-{i}"));
    }
    let want: Vec<String> = (0..3).map(|i| format!("t-{i}")).collect();
    wait_for_ids(&sink, &want, Duration::from_secs(30), &[&a, &b, &c]).await;
    for broker in [a, b, c] {
        assert!(broker.terminate().success());
    }
}
