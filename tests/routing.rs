//! Routing: subscriptions typical of Tekton and CDEvents users, against every fixture
//! of tests/fixtures/tekton and tests/fixtures/cdevents/as-cloudevent; exactly
//! which lanes get which events. Then startFrom backfills, hot reload, and removal. Each
//! runs on the embedded backend and on JetStream (`embedded::`, `jetstream::`, `jetstream_cluster::`).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::sink::TestSink;
use common::{minimal, subscription, testdata, wait_until, Backend, TestServer};

/// Sinks that accept and never answer: what the router puts in a lane stays pending
/// there (in flight) for the whole test, so lanes can be compared exactly.
struct Sinks {
    _hole: TestSink,
    notifier: String,
    pager: String,
    audit: String,
}

async fn sinks() -> Sinks {
    let hole = TestSink::black_hole().await;
    Sinks {
        notifier: hole.url("/notifier"),
        pager: hole.url("/pager"),
        audit: hole.url("/audit"),
        _hole: hole,
    }
}

fn subs(notifier: &str, pager: &str, audit: &str) -> String {
    let one = |name: &str, filter: &str| {
        subscription(
            name,
            &format!("  filter:\n{filter}  sinks:\n    - uri: {notifier}\n"),
        )
    };
    let mut s = String::new();
    s += &subscription(
        "all-pipelinerun-failures",
        &format!("  filter:\n    attributes:\n      type: dev.tekton.event.pipelinerun.failed.v1\n  sinks:\n    - uri: {notifier}\n    - uri: {pager}\n"),
    );
    s += &one("taskrun-outcomes", "    filters:\n      - prefix: { type: dev.tekton.event.taskrun. }\n      - any:\n          - suffix: { type: .successful.v1 }\n          - suffix: { type: .failed.v1 }\n");
    s += &one("ee-cd-namespace", "    cel: 'has(data.pipelineRun) ? data.pipelineRun.metadata.namespace == \"ee-cd\" : data.taskRun.metadata.namespace == \"ee-cd\"'\n");
    s += &one("pingcap-pipelineruns", "    cel: >-\n      has(data.pipelineRun) &&\n      data.pipelineRun.metadata.labels['tekton.dev/pipeline'] == 'pingcap-build-package'\n");
    s += &one("pingcap-taskruns", "    cel: \"has(data.taskRun) && 'tekton.dev/pipeline' in data.taskRun.metadata.labels && data.taskRun.metadata.labels['tekton.dev/pipeline'] == 'pingcap-build-package'\"\n");
    s += &one(
        "cdevents-all",
        "    filters:\n      - prefix: { type: dev.cdevents. }\n",
    );
    s += &one(
        "cdevents-pipelineruns",
        "    filters:\n      - prefix: { type: dev.cdevents.pipelinerun. }\n",
    );
    s += &one(
        "not-tekton",
        "    filters:\n      - not: { prefix: { type: dev.tekton. } }\n",
    );
    s += &one(
        "selflink-sources",
        "    filters:\n      - prefix: { source: /apis/tekton.dev/ }\n",
    );
    s += &one("curl-taskruns", "    filters:\n      - all:\n          - prefix: { type: dev.tekton.event.taskrun. }\n          - exact: { subject: curl-run-6gplk }\n");
    s += &one("started-or-running", "    filters:\n      - any:\n          - exact: { type: dev.tekton.event.pipelinerun.started.v1 }\n          - exact: { type: dev.tekton.event.pipelinerun.running.v1 }\n");
    s += &one("deploys-to-test123", "    cel: \"type.startsWith('dev.cdevents.service.deployed.') && data.subject.content.environment.id == 'test123'\"\n");
    s += &one("artifact-sboms", "    filters:\n      - prefix: { type: dev.cdevents.artifact. }\n    cel: has(data.subject.content.sbom)\n");
    s += &one("failed-outside-ee-cd", "    attributes:\n      type: dev.tekton.event.taskrun.failed.v1\n    cel: \"!source.contains('/namespaces/ee-cd/')\"\n");
    s += &subscription(
        "everything",
        &format!("  sinks:\n    - uri: {audit}\n      format: structured\n"),
    );
    s
}

/// Posts the ten Tekton requests (seq 1-10), then each CDEvent structured and binary
/// (seq 11-16: artifact, artifact, pipelinerun, pipelinerun, service, service).
async fn post_fixtures(t: &TestServer) {
    for r in common::tekton_requests() {
        assert_eq!(t.post_tekton(&r).await.status, 202, "{}", r.file);
    }
    let cd = testdata().join("cdevents/as-cloudevent");
    for name in [
        "artifact_published",
        "pipelinerun_started",
        "service_deployed",
    ] {
        let structured = std::fs::read(cd.join(format!("{name}.structured.json"))).unwrap();
        assert_eq!(
            t.post(
                "/",
                &[("content-type", "application/cloudevents+json")],
                structured
            )
            .await
            .status,
            202
        );
        let raw = std::fs::read_to_string(cd.join(format!("{name}.binary.http"))).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let headers: Vec<(&str, &str)> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(": "))
            .filter(|(k, _)| !matches!(k.to_ascii_lowercase().as_str(), "content-length" | "host"))
            .collect();
        assert_eq!(t.post("/", &headers, body.to_string()).await.status, 202);
    }
}

async fn the_routing_table_sends_each_fixture_to_exactly_the_lanes_it_matches(b: Backend) {
    let Sinks {
        notifier,
        pager,
        audit,
        _hole,
    } = sinks().await;
    let _ = (&notifier, &pager, &audit);
    // The CDEvents fixtures all share one source and id: dedupe would keep only one.
    let t = b
        .start_with_subscriptions(
            "dedupe:\n  window: 0\n",
            &[("tekton.yaml", &subs(&notifier, &pager, &audit))],
        )
        .await;
    post_fixtures(&t).await;
    t.wait_routed("default").await;
    let expected: &[(&str, &str, &[u64])] = &[
        ("all-pipelinerun-failures", notifier.as_str(), &[10]),
        ("all-pipelinerun-failures", pager.as_str(), &[10]),
        ("taskrun-outcomes", notifier.as_str(), &[5, 6]),
        (
            "ee-cd-namespace",
            notifier.as_str(),
            &[2, 3, 5, 6, 7, 8, 9, 10],
        ),
        ("pingcap-pipelineruns", notifier.as_str(), &[9, 10]),
        ("pingcap-taskruns", notifier.as_str(), &[5, 6]),
        ("cdevents-all", notifier.as_str(), &[11, 12, 13, 14, 15, 16]),
        ("cdevents-pipelineruns", notifier.as_str(), &[13, 14]),
        ("not-tekton", notifier.as_str(), &[11, 12, 13, 14, 15, 16]),
        ("selflink-sources", notifier.as_str(), &[4]),
        ("curl-taskruns", notifier.as_str(), &[1, 4]),
        ("started-or-running", notifier.as_str(), &[7, 8]),
        ("deploys-to-test123", notifier.as_str(), &[15, 16]),
        ("artifact-sboms", notifier.as_str(), &[11, 12]),
        ("failed-outside-ee-cd", notifier.as_str(), &[]),
        (
            "everything",
            audit.as_str(),
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
        ),
    ];
    for (sub, sink, seqs) in expected {
        assert_eq!(
            t.lane("default", sub, sink).await,
            *seqs,
            "lane {sub} -> {sink}"
        );
    }
    // A sink a subscription does not have has no lane.
    assert!(t
        .lane("default", "taskrun-outcomes", pager.as_str())
        .await
        .is_empty());
    // The CEL that reads data.taskRun fails on CDEvents: no match, counted as errors.
    let stats = t.server().routing.stats("ee-cd-namespace");
    assert_eq!(stats.matched.load(Ordering::Relaxed), 8);
    assert_eq!(stats.errors.load(Ordering::Relaxed), 6);
    assert_eq!(stats.not_matched.load(Ordering::Relaxed), 2);
}

async fn new_subscriptions_start_from_latest_earliest_or_a_time(b: Backend) {
    let Sinks {
        notifier,
        pager,
        audit,
        _hole,
    } = sinks().await;
    let _ = (&notifier, &pager, &audit);
    let t = b.start("").await;
    for i in 1..=3 {
        assert_eq!(t.post_json(&minimal(&format!("old-{i}"))).await.status, 202);
    }
    t.clock.advance(Duration::from_secs(60));
    for i in 4..=5 {
        assert_eq!(t.post_json(&minimal(&format!("new-{i}"))).await.status, 202);
    }
    t.wait_routed("default").await;
    // The clock started at 2026-01-01T00:00:00Z; the second pair arrived a minute later.
    let sinks = format!("  sinks: [{{uri: '{notifier}'}}]\n");
    let text = [
        subscription("from-latest", &sinks),
        subscription("from-earliest", &format!("{sinks}  startFrom: earliest\n")),
        subscription(
            "from-time",
            &format!("{sinks}  startFrom: 2026-01-01T00:00:30Z\n"),
        ),
    ]
    .concat();
    t.write_subscriptions("start.yaml", &text);
    t.server().reloader.reload().unwrap();
    // `latest` is the next event after the router has taken the new set on; it does so
    // between batches, so wait for that before posting.
    common::wait_until("the router takes the new subscriptions on", async || {
        let states = t
            .server()
            .log
            .lanes()
            .subscription_states("default")
            .await
            .unwrap();
        states.iter().any(|(name, _)| name == "from-latest")
    })
    .await;
    assert_eq!(t.post_json(&minimal("after")).await.status, 202);
    t.wait_routed("default").await;
    assert_eq!(
        t.lane("default", "from-latest", notifier.as_str()).await,
        [6]
    );
    assert_eq!(
        t.lane("default", "from-earliest", notifier.as_str()).await,
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(
        t.lane("default", "from-time", notifier.as_str()).await,
        [4, 5, 6]
    );
}

async fn hot_reload_adds_changes_and_removes_while_events_flow_and_rejects_an_invalid_set(
    b: Backend,
) {
    let Sinks {
        notifier,
        pager,
        audit,
        _hole,
    } = sinks().await;
    let _ = (&notifier, &pager, &audit);
    let sinks = format!("  sinks: [{{uri: '{notifier}'}}]\n");
    let a = subscription(
        "a",
        &format!("  filter:\n    attributes: {{ type: t1 }}\n{sinks}"),
    );
    let t = b.start_with_subscriptions("", &[("a.yaml", &a)]).await;
    let post = |id: &str, ty: &str| {
        let mut e = minimal(id);
        e["type"] = ty.into();
        e
    };
    assert_eq!(t.post_json(&post("1", "t1")).await.status, 202); // seq 1
    t.wait_routed("default").await;

    // Add b (watched file): picked up without a signal.
    t.write_subscriptions(
        "b.yaml",
        &subscription(
            "b",
            &format!("  filter:\n    attributes: {{ type: t2 }}\n{sinks}"),
        ),
    );
    wait_until("b to be loaded", async || {
        t.server().routing.current().len() == 2
    })
    .await;
    assert_eq!(t.post_json(&post("2", "t2")).await.status, 202); // seq 2
                                                                 // Change a's filter to t2: it applies from the next routed event.
    t.write_subscriptions(
        "a.yaml",
        &subscription(
            "a",
            &format!("  filter:\n    attributes: {{ type: t2 }}\n{sinks}"),
        ),
    );
    wait_until("a's change to be loaded", async || {
        t.server().reloader.applied.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert_eq!(t.post_json(&post("3", "t2")).await.status, 202); // seq 3
    t.wait_routed("default").await;
    assert_eq!(t.lane("default", "a", notifier.as_str()).await, [1, 3]);
    assert_eq!(t.lane("default", "b", notifier.as_str()).await, [2, 3]);

    // An invalid edit is rejected whole; the running set keeps working.
    let failures = t.server().reloader.failures.load(Ordering::Relaxed);
    t.write_subscriptions("b.yaml", &subscription("b", "  sinks: []\n"));
    wait_until("the invalid edit to be rejected", async || {
        t.server().reloader.failures.load(Ordering::Relaxed) > failures
    })
    .await;
    assert_eq!(t.post_json(&post("4", "t2")).await.status, 202); // seq 4
    t.wait_routed("default").await;
    assert_eq!(t.lane("default", "b", notifier.as_str()).await, [2, 3, 4]);

    // Remove b: its lane goes, pending entries counted as dropped.
    std::fs::remove_file(t.dir.path().join("subscriptions/b.yaml")).unwrap();
    wait_until("b to be removed", async || {
        t.server().routing.current().len() == 1
    })
    .await;
    assert_eq!(t.post_json(&post("5", "t2")).await.status, 202); // seq 5
    t.wait_routed("default").await;
    assert!(t.lane("default", "b", notifier.as_str()).await.is_empty());
    assert_eq!(
        t.server()
            .routing
            .stats("b")
            .dropped
            .load(Ordering::Relaxed),
        3
    );
    assert_eq!(
        t.lane("default", "a", notifier.as_str()).await,
        [1, 3, 4, 5]
    );
}

async fn removing_a_sink_drops_its_lane_and_adding_one_starts_it_at_the_next_event(b: Backend) {
    let Sinks {
        notifier,
        pager,
        audit,
        _hole,
    } = sinks().await;
    let _ = (&notifier, &pager, &audit);
    let one = subscription("s", &format!("  sinks: [{{uri: '{notifier}'}}]\n"));
    let t = b.start_with_subscriptions("", &[("s.yaml", &one)]).await;
    assert_eq!(t.post_json(&minimal("1")).await.status, 202);
    t.wait_routed("default").await;
    t.write_subscriptions(
        "s.yaml",
        &subscription("s", &format!("  sinks: [{{uri: '{pager}'}}]\n")),
    );
    t.server().reloader.reload().unwrap();
    assert_eq!(t.post_json(&minimal("2")).await.status, 202);
    t.wait_routed("default").await;
    assert!(t.lane("default", "s", notifier.as_str()).await.is_empty());
    assert_eq!(t.lane("default", "s", pager.as_str()).await, [2]);
}

async fn routing_state_survives_a_restart_without_doubling(b: Backend) {
    let Sinks {
        notifier,
        pager,
        audit,
        _hole,
    } = sinks().await;
    let _ = (&notifier, &pager, &audit);
    let every = subscription("every", &format!("  sinks: [{{uri: '{notifier}'}}]\n"));
    let mut t = b.start_with_subscriptions("", &[("e.yaml", &every)]).await;
    for i in 0..300 {
        assert_eq!(t.post_json(&minimal(&format!("r{i}"))).await.status, 202);
    }
    t.restart().await;
    assert_eq!(t.post_json(&minimal("after")).await.status, 202);
    t.wait_routed("default").await;
    assert_eq!(
        t.lane("default", "every", notifier.as_str()).await,
        (1..=301).collect::<Vec<u64>>()
    );
}

common::backends! {
    the_routing_table_sends_each_fixture_to_exactly_the_lanes_it_matches,
    new_subscriptions_start_from_latest_earliest_or_a_time,
    hot_reload_adds_changes_and_removes_while_events_flow_and_rejects_an_invalid_set,
    removing_a_sink_drops_its_lane_and_adding_one_starts_it_at_the_next_event,
    routing_state_survives_a_restart_without_doubling,
}
