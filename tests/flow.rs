//! Flow control per lane, end to end with scripted sinks: a rate limit holds its rate
//! over thirty events (allowing the burst); a sink that fails opens the circuit breaker,
//! sees one probe per cooldown, and gets every event once it recovers, none
//! dead-lettered for the outage, each of the breaker's transitions logged once; a
//! `Retry-After` longer than the limit's wait wins; `check` names bad settings.

mod common;

use std::time::{Duration, Instant};

use common::sink::{Answer, TestSink};
use common::{eventually, sample, subscription, subscription_errors, TestServer};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_of_five_a_second_holds_over_thirty_events() {
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let spec = format!(
        "  sinks: [{{ uri: '{}' }}]\n  delivery:\n    rateLimit: {{ perSecond: 5, burst: 3 }}\n",
        sink.url("/")
    );
    let t =
        TestServer::start_with_subscriptions("", &[("s.yaml", &subscription("s", &spec))]).await;
    for i in 0..30 {
        assert_eq!(
            t.post_json(&common::minimal(&format!("e{i}"))).await.status,
            202
        );
    }
    let got = sink.wait_for(30, WAIT).await;
    let mut at: Vec<Instant> = got.iter().map(|r| r.at).collect();
    at.sort();
    // A full bucket lets the burst through at once; after that, one each 200 ms: the
    // n-th request (from 0) comes no sooner than (n + 1 - burst) / 5 s after the first.
    for (n, t_n) in at.iter().enumerate() {
        let least = Duration::from_millis(200 * (n as u64 + 1).saturating_sub(3));
        let took = t_n.duration_since(at[0]);
        assert!(
            took + Duration::from_millis(20) >= least,
            "request {n} came {took:?} after the first, before {least:?}"
        );
    }
    let (_, metrics) = t.metrics().await;
    let waited = sample(
        &metrics,
        "switchyard_lane_rate_limited_total",
        &[("subscription", "s")],
    )
    .unwrap();
    assert!(waited >= 27.0, "{waited} attempts waited for a token");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received().len(), 30, "each event once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_opens_the_breaker_gets_one_probe_per_cooldown_and_every_event_after() {
    // Ten failures, then the sink is back.
    let sink = TestSink::start(
        (0..10).map(|_| Answer::status(503)).collect(),
        Answer::status(200),
    )
    .await;
    let spec = format!(
        "  sinks: [{{ uri: '{}' }}]\n  delivery:\n    retry: 30\n    backoffDelay: PT0.05S\n    backoffMax: PT1S\n    circuitBreaker: {{ failures: 3, cooldown: PT1S }}\n",
        sink.url("/")
    );
    let t =
        TestServer::start_with_subscriptions("", &[("s.yaml", &subscription("s", &spec))]).await;
    for i in 0..5 {
        assert_eq!(
            t.post_json(&common::minimal(&format!("e{i}"))).await.status,
            202
        );
    }
    // While open the admin API (and so the CLI and the console) says so.
    let lane = eventually("the lane shown open", async || {
        let lane = t.admin_get("/api/v1/subscriptions/s").await["lanes"][0].clone();
        (lane["state"] == "open").then_some(lane)
    })
    .await;
    assert_eq!(lane["breaker"]["state"], "open");
    assert!(lane["breaker"]["since"].is_string());
    // 10 failed attempts, then the five events delivered.
    let got = sink.wait_for(15, WAIT).await;
    let mut at: Vec<Instant> = got.iter().map(|r| r.at).collect();
    at.sort();
    // The breaker opens at the third failure (attempts already under way may fail
    // after it). From then on every attempt is a probe, a cooldown (1 s, its doubling
    // capped by backoffMax) after the one before, until one succeeds: the eleventh
    // request. The four other events follow at once.
    let cooldown = Duration::from_millis(950);
    let first_probe = (1..at.len())
        .find(|&i| at[i].duration_since(at[i - 1]) >= cooldown)
        .expect("a cooldown");
    assert!(
        (3..=5).contains(&first_probe),
        "{first_probe} attempts before the breaker opened"
    );
    for i in first_probe..=10 {
        let gap = at[i].duration_since(at[i - 1]);
        assert!(
            gap >= cooldown,
            "request {i} came {gap:?} after the one before"
        );
    }
    for i in 11..15 {
        assert!(
            at[i].duration_since(at[10]) < cooldown,
            "closed: no more waits"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = sink.received();
    assert_eq!(got.len(), 15, "no attempt but the probes while open");
    let mut delivered: Vec<String> = got[10..]
        .iter()
        .map(|r| r.header("ce-id").unwrap().to_string())
        .collect();
    delivered.sort();
    assert_eq!(delivered, ["e0", "e1", "e2", "e3", "e4"]);
    assert!(
        t.dead_letters().await.is_empty(),
        "none dead-lettered for the outage"
    );
    let metrics = eventually("the breaker closed in /metrics", async || {
        let (_, m) = t.metrics().await;
        (sample(
            &m,
            "switchyard_lane_circuit_state",
            &[("subscription", "s"), ("state", "closed")],
        ) == Some(1.0))
        .then_some(m)
    })
    .await;
    assert_eq!(
        sample(
            &metrics,
            "switchyard_lane_circuit_state",
            &[("subscription", "s"), ("state", "open")]
        ),
        Some(0.0)
    );
    let lane = &t.admin_get("/api/v1/subscriptions/s").await["lanes"][0];
    assert_eq!(
        (&lane["state"], &lane["breaker"]["state"]),
        (&"sending".into(), &"closed".into())
    );
    // Opened once by the first failures and again by each failed probe.
    let failed_probes = 10 - first_probe;
    assert_eq!(
        sample(
            &metrics,
            "switchyard_lane_circuit_opened_total",
            &[("subscription", "s")]
        ),
        Some(1.0 + failed_probes as f64)
    );
}

#[test]
fn check_names_bad_flow_settings() {
    let cases = [
        (
            "    rateLimit: { perSecond: -1 }\n",
            "spec.delivery.rateLimit.perSecond",
            "0 to 1000000",
        ),
        (
            "    rateLimit: { perSecond: 5, burst: 0 }\n",
            "spec.delivery.rateLimit.burst",
            "out of range",
        ),
        (
            "    rateLimit: { perSecond: 5, every: 1 }\n",
            "spec.delivery.rateLimit.every",
            "unknown field",
        ),
        (
            "    circuitBreaker: { failures: 3, cooldown: 0 }\n",
            "spec.delivery.circuitBreaker.cooldown",
            "greater than zero",
        ),
        (
            "    circuitBreaker: { failures: many }\n",
            "spec.delivery.circuitBreaker.failures",
            "integer",
        ),
    ];
    for (delivery, key, message) in cases {
        let spec = format!("  sinks: [{{ uri: 'http://a/' }}]\n  delivery:\n{delivery}");
        let errors = subscription_errors(&spec);
        assert!(
            errors
                .iter()
                .any(|e| e.line == 8 && e.key == key && e.message.contains(message)),
            "{delivery}: wanted {key}: …{message}…, got {errors:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_longer_than_the_rate_limits_wait_wins() {
    // The limit would allow the retry within 10 ms; the sink asks for 2 s.
    let sink = TestSink::start(
        vec![Answer::status(503).header("retry-after", "2")],
        Answer::status(200),
    )
    .await;
    let spec = format!(
        "  sinks: [{{ uri: '{}' }}]\n  delivery:\n    backoffDelay: PT0.01S\n    rateLimit: {{ perSecond: 100, burst: 1 }}\n",
        sink.url("/")
    );
    let t =
        TestServer::start_with_subscriptions("", &[("s.yaml", &subscription("s", &spec))]).await;
    assert_eq!(t.post_json(&common::minimal("e")).await.status, 202);
    let got = sink.wait_for(2, WAIT).await;
    let gap = got[1].at.duration_since(got[0].at);
    assert!(
        gap >= Duration::from_millis(1950),
        "retried {gap:?} after a Retry-After of 2 s"
    );
    assert!(t.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_breaker_transition_is_logged_once_not_each_held_attempt() {
    // Four failures, then the sink is back. One attempt at a time, so the order is
    // fixed: two failures open the breaker, two failed probes open it again, the third
    // probe closes it; four more events wait behind it all the while.
    let sink = TestSink::start(
        (0..4).map(|_| Answer::status(503)).collect(),
        Answer::status(200),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let broker = common::process::start_with_subscription(
        dir.path(),
        &subscription(
            "s",
            &format!(
                "  sinks: [{{ uri: '{}' }}]\n  delivery: {{ retry: 20, backoffDelay: PT0.01S, maxInFlight: 1, circuitBreaker: {{ failures: 2, cooldown: PT0.3S }} }}\n",
                sink.url("/")
            ),
        ),
        &[],
    );
    for i in 0..5 {
        let answer = broker.post_structured(
            &format!(r#"{{"specversion":"1.0","id":"e{i}","source":"/p","type":"t"}}"#),
            &[],
        );
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    }
    sink.wait_for(9, WAIT).await;
    // The breaker's lines, in order, until it closed.
    let transitions = tokio::task::block_in_place(|| {
        let mut seen = Vec::new();
        while seen.last() != Some(&"closed") {
            let line = broker
                .lines
                .recv_timeout(Duration::from_secs(20))
                .expect("the breaker's lines");
            for (says, name) in [
                ("circuit breaker opened", "opened"),
                ("circuit breaker half-open", "half-open"),
                ("circuit breaker closed", "closed"),
            ] {
                if line.contains(says) {
                    seen.push(name);
                }
            }
        }
        seen
    });
    assert_eq!(
        transitions,
        [
            "opened",
            "half-open",
            "opened",
            "half-open",
            "opened",
            "half-open",
            "closed"
        ],
        "one line per transition"
    );
}
