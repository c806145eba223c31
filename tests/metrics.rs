//! `/metrics`: the scrape parses, counters move as events flow, and docs/metrics.md
//! lists exactly the metrics the broker exports.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::sink::{Answer, TestSink};
use common::{eventually, minimal, subscription, Backend, TestServer};

/// Scrapes `/metrics`: every sample by its full series (name and labels), and the
/// declared metric names.
async fn scrape(t: &TestServer) -> (BTreeMap<String, f64>, BTreeSet<String>) {
    let (content_type, text) = t.metrics().await;
    assert!(content_type.starts_with("text/plain; version=0.0.4"));
    let mut samples = BTreeMap::new();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            names.insert(rest.split_whitespace().next().unwrap().to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            samples.insert(
                series.to_string(),
                value
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("unparsable sample: {line}")),
            );
        }
    }
    (samples, names)
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn counters_move_as_events_flow_and_the_doc_lists_every_metric() {
    let ok = TestSink::start(vec![Answer::status(503)], Answer::status(200)).await;
    let bad = TestSink::start(vec![], Answer::status(400)).await;
    let subs = [
        subscription("ok", &format!("  filter:\n    attributes: {{ type: good }}\n  sinks:\n    - uri: {}\n  delivery: {{ backoffDelay: 10ms }}\n", ok.url("/"))),
        // With a circuit breaker, so that its series are there too.
        subscription("bad", &format!("  filter:\n    cel: subject == 'x'\n  sinks:\n    - uri: {}\n  delivery: {{ circuitBreaker: {{ failures: 5 }} }}\n", bad.url("/"))),
    ]
    .concat();
    let t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    // Each broker's ingress series are there at zero before its first event, so that
    // a rate over them starts with the broker.
    let (before, _) = scrape(&t).await;
    for series in [
        r#"switchyard_ingress_events_total{broker="default",outcome="accepted"}"#,
        r#"switchyard_ingress_events_total{broker="default",outcome="duplicate"}"#,
        r#"switchyard_ingress_requests_total{broker="default",code="202"}"#,
        r#"switchyard_ingress_received_bytes_total{broker="default"}"#,
        r#"switchyard_ingress_request_duration_seconds_count{broker="default"}"#,
    ] {
        assert_eq!(before.get(series), Some(&0.0), "{series}");
    }
    // The unknown broker has its 404s at zero, and nothing else.
    let unknown: Vec<&String> = before
        .keys()
        .filter(|k| k.contains(r#"broker="unknown""#))
        .collect();
    assert_eq!(
        unknown,
        [r#"switchyard_ingress_requests_total{broker="unknown",code="404"}"#]
    );
    let mut good = minimal("m1");
    good["type"] = "good".into();
    assert_eq!(t.post_json(&good).await.status, 202);
    assert_eq!(t.post_json(&good).await.status, 202); // a duplicate
    let mut to_bad = minimal("m2");
    to_bad["subject"] = "x".into();
    assert_eq!(t.post_json(&to_bad).await.status, 202);
    assert_eq!(
        t.post(
            "/",
            &[("content-type", "application/cloudevents+json")],
            "{"
        )
        .await
        .status,
        400
    );
    assert_eq!(
        t.post(
            "/brokers/nope",
            &[("content-type", "application/cloudevents+json")],
            "{}"
        )
        .await
        .status,
        404
    );

    let (samples, names) = eventually("the deliveries in /metrics", async || {
        let (samples, names) = scrape(&t).await;
        let done = value(&samples, r#"switchyard_deliveries_total{outcome="delivered",sink="OK",subscription="ok"}"#.replace("OK", &ok.url("/")).as_str()) == 1.0
            && value(&samples, r#"switchyard_deliveries_total{outcome="dead_lettered",sink="BAD",subscription="bad"}"#.replace("BAD", &bad.url("/")).as_str()) == 1.0
            // The lane counts the letter before the store has it.
            && value(&samples, "switchyard_deadletter_store_entries") == 1.0;
        done.then_some((samples, names))
    })
    .await;
    let v = |s: &str| value(&samples, s);
    assert_eq!(
        v(r#"switchyard_ingress_events_total{broker="default",outcome="accepted"}"#),
        2.0
    );
    assert_eq!(
        v(r#"switchyard_ingress_events_total{broker="default",outcome="duplicate"}"#),
        1.0
    );
    assert_eq!(
        v(r#"switchyard_ingress_events_total{broker="default",outcome="rejected"}"#),
        1.0
    );
    assert_eq!(
        v(r#"switchyard_ingress_requests_total{broker="default",code="202"}"#),
        3.0
    );
    assert_eq!(
        v(r#"switchyard_ingress_requests_total{broker="unknown",code="404"}"#),
        1.0
    );
    assert_eq!(
        v(r#"switchyard_log_appended_events_total{broker="default"}"#),
        2.0
    );
    assert_eq!(v(r#"switchyard_log_head_sequence{broker="default"}"#), 2.0);
    assert_eq!(
        v(r#"switchyard_router_filter_results_total{result="match",subscription="ok"}"#),
        1.0
    );
    assert_eq!(
        v(r#"switchyard_router_filter_results_total{result="no_match",subscription="ok"}"#),
        1.0
    );
    // The CEL filter reads `subject`, which the first event does not have.
    assert_eq!(
        v(r#"switchyard_router_filter_results_total{result="error",subscription="bad"}"#),
        1.0
    );
    let ok_sink = ok.url("/");
    assert_eq!(
        v(&format!(
            r#"switchyard_delivery_attempts_total{{class="5xx",sink="{ok_sink}",subscription="ok"}}"#
        )),
        1.0,
        "the retry"
    );
    assert_eq!(
        v(&format!(
            r#"switchyard_delivery_attempts_total{{class="2xx",sink="{ok_sink}",subscription="ok"}}"#
        )),
        1.0
    );
    assert_eq!(v("switchyard_deadletter_store_entries"), 1.0);
    assert!(v("process_resident_memory_bytes") > 0.0);
    assert_eq!(
        v(&format!(
            r#"switchyard_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );

    // docs/metrics.md and the scrape name the same metrics.
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md"),
    )
    .unwrap();
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    let missing_from_doc: Vec<&String> = names.difference(&documented).collect();
    let missing_from_scrape: Vec<&String> = documented.difference(&names).collect();
    assert!(
        missing_from_doc.is_empty(),
        "exported but not documented: {missing_from_doc:?}"
    );
    assert!(
        missing_from_scrape.is_empty(),
        "documented but not exported: {missing_from_scrape:?}"
    );
}

async fn lane_gauges_show_a_backlog_while_the_sink_is_down_and_clear_when_it_drains(b: Backend) {
    // The sink is down and asks to come back later than the park threshold (5 s): every
    // event parks.
    let sink = TestSink::start(vec![], Answer::status(503).header("retry-after", "6")).await;
    let subs = subscription(
        "slow",
        &format!(
            "  sinks:\n    - uri: {}\n  delivery: {{ retry: 5 }}\n",
            sink.url("/")
        ),
    );
    let t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    for i in 0..3 {
        assert_eq!(t.post_json(&minimal(&format!("g{i}"))).await.status, 202);
    }
    let lane = |name: &str| format!(r#"{name}{{sink="{}",subscription="slow"}}"#, sink.url("/"));
    let samples = eventually("the events to park", async || {
        let (samples, _) = scrape(&t).await;
        (value(&samples, &lane("switchyard_lane_parked_events")) == 3.0).then_some(samples)
    })
    .await;
    let v = |s: &str| value(&samples, s);
    assert_eq!(v(&lane("switchyard_lane_lag_events")), 3.0);
    assert_eq!(v(r#"switchyard_log_stored_events{broker="default"}"#), 3.0);
    assert!(v(r#"switchyard_log_stored_bytes{broker="default"}"#) > 3.0 * 50.0);
    if b == Backend::Embedded {
        // Each event's dedupe key is held for the window (10 minutes by default); on
        // JetStream the stream holds them.
        assert_eq!(v(r#"switchyard_dedupe_entries{broker="default"}"#), 3.0);
        assert!(v("switchyard_log_disk_bytes") > 0.0);
    }
    // The broker's clock moves 30 s: the oldest waiting event is 30 s old (by the
    // arrival time it recorded).
    t.clock.advance(Duration::from_secs(30));
    let (samples, _) = scrape(&t).await;
    let age = value(
        &samples,
        &lane("switchyard_lane_oldest_pending_age_seconds"),
    );
    assert!((30.0..31.0).contains(&age), "oldest pending age {age}");

    // The sink comes back and the parked events come due: the lane drains.
    sink.set_default(Answer::status(200));
    t.pass(Duration::from_secs(7)).await;
    let samples = eventually("the lane to drain", async || {
        let (samples, _) = scrape(&t).await;
        let delivered = value(
            &samples,
            &format!(
                r#"switchyard_deliveries_total{{outcome="delivered",sink="{}",subscription="slow"}}"#,
                sink.url("/")
            ),
        );
        let drained = value(&samples, &lane("switchyard_lane_lag_events")) == 0.0;
        (delivered == 3.0 && drained).then_some(samples)
    })
    .await;
    let v = |s: &str| value(&samples, s);
    assert_eq!(v(&lane("switchyard_lane_parked_events")), 0.0);
    assert_eq!(v(&lane("switchyard_lane_oldest_pending_age_seconds")), 0.0);
    assert_eq!(v(&lane("switchyard_delivery_duration_seconds_count")), 3.0);
}

#[tokio::test]
async fn the_series_alerts_watch_are_there_at_zero_before_anything_happens() {
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let subs = subscription("s", &format!("  sinks:\n    - uri: {}\n", sink.url("/")));
    let t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    let (samples, _) = scrape(&t).await;
    let zero = |series: &str| {
        assert_eq!(
            samples.get(series),
            Some(&0.0),
            "{series} is not there at zero"
        );
    };
    for code in [
        "202", "400", "401", "404", "405", "408", "413", "415", "503",
    ] {
        zero(&format!(
            r#"switchyard_ingress_requests_total{{broker="default",code="{code}"}}"#
        ));
    }
    zero(r#"switchyard_ingress_requests_total{broker="unknown",code="404"}"#);
    for outcome in ["accepted", "duplicate", "rejected"] {
        zero(&format!(
            r#"switchyard_ingress_events_total{{broker="default",outcome="{outcome}"}}"#
        ));
    }
    let lane = |name: &str, label: &str| {
        format!(
            r#"{name}{{{label},sink="{}",subscription="s"}}"#,
            sink.url("/")
        )
    };
    for outcome in ["delivered", "dead_lettered", "gone"] {
        zero(&lane(
            "switchyard_deliveries_total",
            &format!(r#"outcome="{outcome}""#),
        ));
    }
    for class in ["2xx", "3xx", "4xx", "5xx", "error"] {
        zero(&lane(
            "switchyard_delivery_attempts_total",
            &format!(r#"class="{class}""#),
        ));
    }
}

#[tokio::test]
async fn no_series_outlives_its_lane() {
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let subs =
        |name: &str| subscription(name, &format!("  sinks:\n    - uri: {}\n", sink.url("/")));
    let t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs("gone"))]).await;
    assert_eq!(t.post_json(&minimal("d1")).await.status, 202);
    sink.wait_for(1, Duration::from_secs(10)).await;
    let of_gone = |samples: &BTreeMap<String, f64>| -> Vec<String> {
        samples
            .keys()
            .filter(|k| k.contains(r#"subscription="gone""#))
            .cloned()
            .collect()
    };
    let before = eventually("the delivery's duration in /metrics", async || {
        let (samples, _) = scrape(&t).await;
        let series = of_gone(&samples);
        series
            .iter()
            .any(|k| k.starts_with("switchyard_delivery_duration_seconds_count"))
            .then_some(series)
    })
    .await;
    assert!(before.len() > 5, "{before:?}");
    // The subscription goes: every series of its lane goes with it.
    t.write_subscriptions("s.yaml", &subs("other"));
    t.server().reloader.reload().unwrap();
    eventually("the removed lane's series to go", async || {
        let (samples, _) = scrape(&t).await;
        of_gone(&samples).is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_dead_letter_sinks_outcome_is_counted() {
    let refuses = TestSink::start(vec![], Answer::status(400)).await;
    let dls = TestSink::start(vec![], Answer::status(200)).await;
    let broken_dls = TestSink::start(vec![], Answer::status(500)).await;
    let sub = |name: &str, dls: &TestSink| {
        subscription(
            name,
            &format!(
                "  sinks:\n    - uri: {}\n  delivery:\n    retry: 0\n    deadLetterSink: {{ uri: '{}' }}\n",
                refuses.url(&format!("/{name}")),
                dls.url("/")
            ),
        )
    };
    let subs = [sub("kept", &dls), sub("lost", &broken_dls)].concat();
    let t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    assert_eq!(t.post_json(&minimal("d1")).await.status, 202);
    let series = |name: &str, outcome: &str| {
        format!(
            r#"switchyard_deadletter_sink_deliveries_total{{outcome="{outcome}",sink="{}",subscription="{name}"}}"#,
            refuses.url(&format!("/{name}"))
        )
    };
    let samples = eventually("both dead letters counted", async || {
        let (samples, _) = scrape(&t).await;
        (value(&samples, &series("kept", "delivered")) == 1.0
            && value(&samples, &series("lost", "failed")) == 1.0)
            .then_some(samples)
    })
    .await;
    assert_eq!(samples.get(&series("kept", "failed")), Some(&0.0));
    assert_eq!(samples.get(&series("lost", "delivered")), Some(&0.0));
}

common::backends! {
    lane_gauges_show_a_backlog_while_the_sink_is_down_and_clear_when_it_drains,
}
