//! Sinks that misbehave, side by side with a healthy one: one that resets the
//! connection in the middle of its answer, one that flaps between 503 and 200, and one
//! that answers with a 100 MiB body. Every event ends delivered or dead-lettered, the
//! healthy lane gets everything, and the broker never holds a whole huge answer.
//! (Sinks that are down, slow, or send 429 storms are in tests/delivery.rs.)

mod common;

use std::sync::atomic::Ordering;

use common::sink::{Answer, TestSink};
use common::{minimal, subscription, wait_until, TestServer};
use switchyard::log::LaneId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EVENTS: u64 = 20;

/// A sink that reads each request, starts a 200 answer, and resets the connection
/// before the answer is complete.
async fn resetting_sink() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/reset", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial")
                    .await;
                // Linger 0: close with a reset, not a clean end.
                let _ = s.set_zero_linger();
                drop(s);
            });
        }
    });
    url
}

/// The peak resident set of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_sinks_end_every_event_and_leave_the_healthy_lane_alone() {
    let healthy = TestSink::start(vec![], Answer::status(200)).await;
    // 503, 200, 503, 200, ... for as long as it is asked.
    let flapping = TestSink::start(
        (0..4 * EVENTS)
            .map(|i| Answer::status(if i % 2 == 0 { 503 } else { 200 }))
            .collect(),
        Answer::status(200),
    )
    .await;
    let huge_body = bytes::Bytes::from(vec![b'z'; 100 << 20]);
    let huge = TestSink::start(vec![], Answer::status(200).body(huge_body.clone())).await;
    let reset = resetting_sink().await;
    let lanes = [
        ("healthy", healthy.url("/ok")),
        ("flapping", flapping.url("/flap")),
        ("huge", huge.url("/huge")),
        ("reset", reset.clone()),
    ];
    let subs: String = lanes
        .iter()
        .map(|(name, uri)| {
            // The flapping lane is ordered, one request at a time, so that every event
            // meets exactly one 503 and then a 200; so is the huge one, so that at most
            // one answer is being read at a time and the memory bound below is exact.
            let ordering = if matches!(*name, "flapping" | "huge") {
                ", ordering: ordered"
            } else {
                ""
            };
            subscription(
                name,
                &format!("  sinks: [{{ uri: '{uri}' }}]\n  delivery: {{ retry: 3, backoffDelay: 10ms{ordering} }}\n"),
            )
        })
        .collect();
    let t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    let before = peak_rss();
    for i in 0..EVENTS {
        assert_eq!(t.post_json(&minimal(&format!("m-{i}"))).await.status, 202);
    }
    let stats = |name: &str, uri: &str| {
        t.server()
            .delivery
            .stats("default", &LaneId::new(name, uri))
    };
    for (name, uri) in &lanes {
        let s = stats(name, uri);
        wait_until(&format!("every event of lane {name} ends"), async || {
            s.delivered.load(Ordering::Relaxed) + s.dead_lettered.load(Ordering::Relaxed) == EVENTS
        })
        .await;
    }
    let delivered = |name: &str, uri: &str| stats(name, uri).delivered.load(Ordering::Relaxed);
    assert_eq!(delivered("healthy", &lanes[0].1), EVENTS);
    assert_eq!(
        healthy.received().len() as u64,
        EVENTS,
        "the healthy sink got each event once"
    );
    assert_eq!(
        delivered("flapping", &lanes[1].1),
        EVENTS,
        "a 503 is retried; the next 200 delivers"
    );
    assert_eq!(
        flapping.received().len() as u64,
        2 * EVENTS,
        "one 503 and one 200 each"
    );
    assert_eq!(
        delivered("huge", &lanes[2].1),
        EVENTS,
        "a 200 with a huge body is a delivery"
    );
    let resets = stats("reset", &reset);
    assert_eq!(
        resets.dead_lettered.load(Ordering::Relaxed),
        EVENTS,
        "a reset answer is never a delivery"
    );
    assert_eq!(
        resets.attempts.load(Ordering::Relaxed),
        EVENTS * 4,
        "each tried 1 + retry times"
    );
    // Twenty 100 MiB answers went by; reading any one whole would have raised the peak
    // by 100 MiB. The broker reads at most ingress.maxEventBytes (4 MiB) of an answer.
    let grown = peak_rss().saturating_sub(before);
    assert!(grown < 64 << 20, "peak memory grew by {} MiB", grown >> 20);
    drop(huge_body);
}
