//! Delivery to real HTTP sinks that follow a script: fan-out, encodings, retries and
//! backoff, Retry-After, dead letters, parking, ordering, replies, large events. Each
//! runs on the embedded backend and on JetStream (`embedded::`, `jetstream::`, `jetstream_cluster::`).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::sink::{Answer, TestSink};
use common::{minimal, subscription, wait_until, Backend, TestServer};
use serde_json::Value;
use switchyard::log::LaneId;

const WAIT: Duration = Duration::from_secs(20);

async fn one_tekton_event_fans_out_to_five_sinks_across_three_subscriptions(b: Backend) {
    let sinks: Vec<TestSink> = futures_join(5).await;
    let u = |i: usize, p: &str| sinks[i].url(p);
    let subs = [
        subscription("failures", &format!("  filter:\n    attributes: {{ type: dev.tekton.event.pipelinerun.failed.v1 }}\n  sinks:\n    - uri: {}\n    - uri: {}\n", u(0, "/notify"), u(1, "/page"))),
        subscription("ee-cd", &format!("  filter:\n    cel: data.pipelineRun.metadata.namespace == 'ee-cd'\n  sinks:\n    - uri: {}\n    - uri: {}\n      format: structured\n", u(2, "/deploy"), u(3, "/audit"))),
        subscription("everything", &format!("  sinks:\n    - uri: {}\n", u(4, "/all"))),
    ]
    .concat();
    let t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    let request = common::tekton_requests()
        .into_iter()
        .find(|r| r.file == "10-pipelinerun-failed.json")
        .unwrap();
    assert_eq!(t.post_tekton(&request).await.status, 202);
    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let body = request.body.clone();
    for (i, sink) in sinks.iter().enumerate() {
        let got = sink.wait_for(1, WAIT).await;
        assert_eq!(got.len(), 1, "sink {i}");
        let r = &got[0];
        assert_eq!(r.header("prefer"), Some("reply"), "sink {i}");
        if i == 3 {
            // Structured: the same attributes and data, in one JSON document.
            assert_eq!(
                r.header("content-type"),
                Some("application/cloudevents+json")
            );
            let doc: Value = serde_json::from_slice(&r.body).unwrap();
            for (k, v) in &headers {
                if let Some(attr) = k.strip_prefix("ce-") {
                    assert_eq!(doc[attr].as_str(), Some(v.as_str()), "structured {attr}");
                }
            }
            assert_eq!(doc["datacontenttype"], "application/json");
            assert!(
                serde_json::to_vec(&doc["data"]).unwrap() == body,
                "structured data differs"
            );
        } else {
            for (k, v) in &headers {
                if k.starts_with("ce-") || k == "content-type" {
                    assert_eq!(r.header(k), Some(v.as_str()), "sink {i}: {k}");
                }
            }
            assert!(r.body.as_ref() == body.as_slice(), "sink {i}: data differs");
        }
    }
}

async fn futures_join(n: usize) -> Vec<TestSink> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(TestSink::start(Vec::new(), Answer::status(202)).await);
    }
    v
}

fn one_sink(name: &str, uri: &str, delivery: &str) -> String {
    subscription(name, &format!("  sinks:\n    - uri: {uri}\n{delivery}"))
}

async fn retries_on_503_then_delivers_waiting_as_the_backoff_says(b: Backend) {
    let sink = TestSink::start(
        vec![Answer::status(503), Answer::status(503)],
        Answer::status(200),
    )
    .await;
    let subs = one_sink(
        "s",
        &sink.url("/"),
        "  delivery:\n    retry: 5\n    backoffPolicy: exponential\n    backoffDelay: 200ms\n",
    );
    let t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    assert_eq!(t.post_json(&minimal("r1")).await.status, 202);
    let got = sink.wait_for(3, WAIT).await;
    // Exponential from 200 ms with jitter in [½, 1]: at least 100 ms, then 200 ms.
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(100),
        "{:?}",
        got[1].at - got[0].at
    );
    assert!(
        got[2].at - got[1].at >= Duration::from_millis(200),
        "{:?}",
        got[2].at - got[1].at
    );
    let stats = t
        .server()
        .delivery
        .stats("default", &LaneId::new("s", sink.url("/")));
    wait_until("the delivery", async || {
        stats.delivered.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(stats.attempts.load(Ordering::Relaxed), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received().len(), 3, "no attempt after the success");
}

async fn retry_after_on_429_is_honoured(b: Backend) {
    let sink = TestSink::start(
        vec![Answer::status(429).header("retry-after", "2")],
        Answer::status(200),
    )
    .await;
    let subs = one_sink("s", &sink.url("/"), "  delivery:\n    backoffDelay: 10ms\n");
    let t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    assert_eq!(t.post_json(&minimal("ra")).await.status, 202);
    let got = sink.wait_for(2, WAIT).await;
    assert!(
        got[1].at - got[0].at >= Duration::from_secs(2),
        "{:?}",
        got[1].at - got[0].at
    );
}

async fn a_400_is_not_retried_and_goes_to_the_dead_letter_sink_once_with_the_error_extensions(
    b: Backend,
) {
    let sink = TestSink::start(vec![], Answer::status(400).body("bad field: x")).await;
    let dls = TestSink::start(vec![], Answer::status(200)).await;
    let subs = one_sink(
        "s",
        &sink.url("/"),
        &format!(
            "  delivery:\n    backoffDelay: 10ms\n    deadLetterSink: {{ uri: '{}' }}\n",
            dls.url("/dlq")
        ),
    );
    let t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    assert_eq!(t.post_json(&minimal("dl")).await.status, 202);
    let got = dls.wait_for(1, WAIT).await;
    let r = &got[0];
    assert_eq!(r.header("ce-id"), Some("dl"));
    assert_eq!(
        r.header("ce-knativeerrordest"),
        Some(sink.url("/").as_str())
    );
    assert_eq!(r.header("ce-knativeerrorcode"), Some("400"));
    let data = base64::engine::general_purpose::STANDARD
        .decode(r.header("ce-knativeerrordata").unwrap())
        .unwrap();
    assert_eq!(data, b"bad field: x");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received().len(), 1, "a 400 is final");
    assert_eq!(dls.received().len(), 1, "exactly one dead-letter delivery");
    let letters = t.server().log.dead_letters().list().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].1.last_status, Some(400));
    assert_eq!(letters[0].1.attempts, 1);
    assert!(letters[0].1.dead_letter_sink_delivered);
    // The lane is empty once the dead letter is committed.
    let lane = LaneId::new("s", sink.url("/"));
    let log = t.server().log.clone();
    let deadline = Instant::now() + WAIT;
    while !log
        .lanes()
        .pending("default", &lane, 10)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn timeouts_and_refused_connections_are_retried(b: Backend) {
    // First a sink that answers too late, then one that is not listening yet.
    let slow = TestSink::start(
        vec![Answer::status(200).after(Duration::from_secs(3))],
        Answer::status(200),
    )
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let later = format!("http://127.0.0.1:{port}/");
    let subs = [
        one_sink(
            "slow",
            &slow.url("/"),
            "  delivery:\n    timeout: 500ms\n    backoffDelay: 50ms\n",
        ),
        one_sink(
            "later",
            &later,
            "  delivery:\n    backoffDelay: 100ms\n    backoffPolicy: linear\n    retry: 20\n",
        ),
    ]
    .concat();
    let t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    assert_eq!(t.post_json(&minimal("tr")).await.status, 202);
    let got = slow.wait_for(2, WAIT).await;
    assert!(got[1].at - got[0].at >= Duration::from_millis(500));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Now start listening on the refused port.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    drop(stream);
    let stats = t
        .server()
        .delivery
        .stats("default", &LaneId::new("later", later.as_str()));
    assert!(
        stats.attempts.load(Ordering::Relaxed) >= 2,
        "refused connections were retried"
    );
}

async fn a_long_wait_parks_the_event_and_other_lanes_keep_flowing_across_a_restart(b: Backend) {
    // The down sink asks to come back in 6 s: longer than the park threshold.
    let down = TestSink::start(
        vec![Answer::status(503).header("retry-after", "6")],
        Answer::status(200),
    )
    .await;
    let up = TestSink::start(vec![], Answer::status(200)).await;
    let subs = [
        one_sink(
            "down",
            &down.url("/"),
            "  delivery:\n    backoffDelay: 10ms\n",
        ),
        one_sink("up", &up.url("/"), ""),
    ]
    .concat();
    let mut t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    assert_eq!(t.post_json(&minimal("p1")).await.status, 202);
    let lane = LaneId::new("down", down.url("/"));
    down.wait_for(1, WAIT).await;
    let log = t.server().log.clone();
    wait_until("the event to park", async || {
        log.lanes().depth("default", &lane).await.unwrap().parked == 1
    })
    .await;
    // Newer events keep flowing to the healthy sink while one is parked.
    assert_eq!(t.post_json(&minimal("p2")).await.status, 202);
    up.wait_for(2, WAIT).await;
    // Restart while parked: the parked entry survives and is delivered when due (the
    // embedded backend's wall clock is the test's: move it past the due time; JetStream
    // hands the entry out again once its delay has passed).
    drop(log);
    t.restart().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_due = down.received();
    assert_eq!(
        before_due
            .iter()
            .filter(|r| r.header("ce-id") == Some("p1"))
            .count(),
        1,
        "not resent before it is due"
    );
    t.clock.advance(Duration::from_secs(7));
    let got = down.wait_for(3, WAIT).await;
    let p1 = got
        .iter()
        .filter(|r| r.header("ce-id") == Some("p1"))
        .count();
    assert_eq!(p1, 2, "p1 was sent twice: refused, then once due");
    assert!(got.iter().any(|r| r.header("ce-id") == Some("p2")));
    // Once the delivery is committed (just after the sink answered), nothing is parked.
    let log = t.server().log.clone();
    wait_until("the parked entry to be finished", async || {
        let depth = log.lanes().depth("default", &lane).await.unwrap();
        depth.parked == 0 && depth.pending == 0
    })
    .await;
}

async fn an_ordered_lane_delivers_in_log_order_through_failures(b: Backend) {
    let script: Vec<Answer> = (0..5)
        .flat_map(|_| {
            [
                Answer::status(503),
                Answer::status(503),
                Answer::status(200),
            ]
        })
        .collect();
    let sink = TestSink::start(script, Answer::status(200)).await;
    let subs = one_sink(
        "o",
        &sink.url("/"),
        "  delivery:\n    ordering: ordered\n    backoffDelay: 20ms\n",
    );
    let t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    for i in 0..5 {
        assert_eq!(t.post_json(&minimal(&format!("o{i}"))).await.status, 202);
    }
    let got = sink.wait_for(15, WAIT).await;
    let ids: Vec<&str> = got.iter().filter_map(|r| r.header("ce-id")).collect();
    let expected: Vec<String> = (0..5)
        .flat_map(|i| std::iter::repeat_n(format!("o{i}"), 3))
        .collect();
    assert_eq!(ids, expected);
}

async fn a_reply_feeds_a_second_subscription_and_a_reply_loop_stops_at_the_hop_limit(b: Backend) {
    let replier = replying_sink().await;
    let downstream = TestSink::start(vec![], Answer::status(202)).await;
    let subs = [
        subscription("ask", &format!("  filter:\n    attributes: {{ type: dev.switchyard.test }}\n  sinks:\n    - uri: {}\n", replier.url("/"))),
        subscription("replies", &format!("  filter:\n    attributes: {{ type: dev.switchyard.reply }}\n  sinks:\n    - uri: {}\n", downstream.url("/"))),
    ]
    .concat();
    let t = b
        .start_with_subscriptions("dedupe:\n  window: 0\n", &[("s.yaml", &subs)])
        .await;
    assert_eq!(t.post_json(&minimal("q")).await.status, 202);
    let got = downstream.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("ce-id"), Some("reply-1"));
    let records = t.records("default").await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].hops, 1);

    // A sink that replies with what it gets, routed back to itself.
    let echo = TestSink::start(
        vec![],
        Answer::reply("echo", "/echo", "dev.switchyard.echo"),
    )
    .await;
    let subs = subscription("loop", &format!("  filter:\n    filters: [{{ prefix: {{ type: dev.switchyard.e }} }}]\n  sinks:\n    - uri: {}\n", echo.url("/")));
    let t = b
        .start_with_subscriptions(
            "dedupe:\n  window: 0\nreplies:\n  maxHops: 3\n",
            &[("s.yaml", &subs)],
        )
        .await;
    let mut first = minimal("start");
    first["type"] = "dev.switchyard.echo".into();
    assert_eq!(t.post_json(&first).await.status, 202);
    let stats = t
        .server()
        .delivery
        .stats("default", &LaneId::new("loop", echo.url("/")));
    wait_until("a reply dropped at the hop limit", async || {
        stats.replies_dropped.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(stats.replies_appended.load(Ordering::Relaxed), 3);
    assert_eq!(echo.received().len(), 4, "the original and three replies");
    let hops: Vec<u32> = t.records("default").await.iter().map(|r| r.hops).collect();
    assert_eq!(hops, [0, 1, 2, 3]);
}

async fn a_4_mib_event_is_delivered_byte_identical(b: Backend) {
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let subs = one_sink("big", &sink.url("/"), "");
    let t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    let body: Vec<u8> = (0..4 * 1024 * 1024 - 64)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let reply = t
        .post(
            "/",
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "big"),
                ("ce-source", "/big"),
                ("ce-type", "t"),
                ("content-type", "application/octet-stream"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(reply.status, 202);
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].body.len(), body.len());
    assert!(got[0].body.as_ref() == body.as_slice(), "the body differs");
}

async fn redirects_are_not_followed_and_count_as_final(b: Backend) {
    let target = TestSink::start(vec![], Answer::status(200)).await;
    let sink = TestSink::start(
        vec![],
        Answer::status(301).header("location", &target.url("/moved")),
    )
    .await;
    let subs = one_sink("r", &sink.url("/"), "  delivery:\n    backoffDelay: 10ms\n");
    let t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    assert_eq!(t.post_json(&minimal("moved")).await.status, 202);
    let stats = t
        .server()
        .delivery
        .stats("default", &LaneId::new("r", sink.url("/")));
    wait_until("the dead letter", async || {
        stats.dead_lettered.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(sink.received().len(), 1);
    assert!(target.received().is_empty(), "the redirect was followed");
}

async fn reply_ignore_turns_replies_off(b: Backend) {
    let replier = TestSink::start(vec![], Answer::reply("r", "/r", "reply")).await;
    let subs = one_sink("quiet", &replier.url("/"), "  reply: ignore\n");
    let t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    assert_eq!(t.post_json(&minimal("q")).await.status, 202);
    let stats = t
        .server()
        .delivery
        .stats("default", &LaneId::new("quiet", replier.url("/")));
    wait_until("the delivery", async || {
        stats.delivered.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(stats.replies_appended.load(Ordering::Relaxed), 0);
    assert_eq!(t.records("default").await.len(), 1, "no reply was appended");
}

async fn a_failing_dead_letter_sink_leaves_the_event_in_the_store(b: Backend) {
    let sink = TestSink::start(vec![], Answer::status(422)).await;
    let dls = TestSink::start(vec![], Answer::status(500)).await;
    let subs = one_sink("s", &sink.url("/"), &format!("  delivery:\n    retry: 2\n    backoffDelay: 10ms\n    deadLetterSink: {{ uri: '{}' }}\n", dls.url("/")));
    let t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    assert_eq!(t.post_json(&minimal("lost?")).await.status, 202);
    dls.wait_for(3, WAIT).await;
    let log = t.server().log.clone();
    wait_until("the dead letter in the store", async || {
        log.dead_letters().list().await.unwrap().len() == 1
    })
    .await;
    let letter = &log.dead_letters().list().await.unwrap()[0].1;
    assert!(!letter.dead_letter_sink_delivered);
    assert_eq!(letter.last_status, Some(422));
    assert_eq!(letter.subscription, "s");
    // The stored record is the event.
    let record = base64::engine::general_purpose::STANDARD
        .decode(&letter.record)
        .unwrap();
    let decoded = switchyard::store::events::record::decode(letter.seq, record.into()).unwrap();
    assert_eq!(decoded.event.id(), "lost?");
}

async fn a_lane_keeps_at_most_max_in_flight_requests_open(b: Backend) {
    let hole = TestSink::black_hole().await;
    let subs = one_sink(
        "narrow",
        &hole.url("/"),
        "  delivery:\n    maxInFlight: 3\n",
    );
    let t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    for i in 0..10 {
        assert_eq!(t.post_json(&minimal(&format!("w{i}"))).await.status, 202);
    }
    hole.wait_for(3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hole.received().len(),
        3,
        "more than maxInFlight requests were sent"
    );
}

async fn an_answer_body_is_read_up_to_the_limit_and_no_further(b: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A sink that announces 100 MiB, sends 2 MiB, then stalls.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 104857600\r\n\r\n")
                    .await;
                let _ = s.write_all(&vec![b'x'; 2 << 20]).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    let subs = one_sink("big-answer", &url, "  delivery:\n    timeout: 15s\n");
    let mut t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    t.restart_with(|c| c.ingress.max_event_bytes = 1 << 20)
        .await;
    assert_eq!(t.post_json(&minimal("a")).await.status, 202);
    let stats = t
        .server()
        .delivery
        .stats("default", &LaneId::new("big-answer", url.as_str()));
    let started = Instant::now();
    wait_until("the delivery", async || {
        stats.delivered.load(Ordering::Relaxed) == 1
    })
    .await;
    // Reading the whole announced body would have waited for the 15 s timeout.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stats.attempts.load(Ordering::Relaxed), 1);
}

async fn shutdown_waits_for_a_hung_delivery_only_as_long_as_the_grace_period(b: Backend) {
    let hole = TestSink::black_hole().await;
    let subs = one_sink("hung", &hole.url("/"), "");
    let mut t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    t.restart_with(|c| c.shutdown_grace_period = Duration::from_millis(700))
        .await;
    assert_eq!(t.post_json(&minimal("h1")).await.status, 202);
    hole.wait_for(1, WAIT).await;
    // The sink never answers (the attempt timeout is 30 s): shutdown gives up after
    // the grace period, and the event stays pending for the next start.
    let started = Instant::now();
    t.server.take().unwrap().stop().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(10),
        "shutdown took {took:?}"
    );
    t.restart().await;
    assert_eq!(t.lane("default", "hung", &hole.url("/")).await, [1]);
}

async fn shutdown_lets_an_attempt_under_way_finish_and_commits_it(b: Backend) {
    let slow = TestSink::start(
        vec![Answer::status(200).after(Duration::from_millis(600))],
        Answer::status(200),
    )
    .await;
    let subs = one_sink("slow", &slow.url("/"), "");
    let mut t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    assert_eq!(t.post_json(&minimal("f1")).await.status, 202);
    slow.wait_for(1, WAIT).await;
    // Stop while the sink is still answering: the answer is awaited and committed.
    let started = Instant::now();
    t.server.take().unwrap().stop().await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    t.restart().await;
    assert!(t.lane("default", "slow", &slow.url("/")).await.is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(slow.received().len(), 1, "not sent again after the restart");
}

/// Posts `ids` as one `application/cloudevents-batch+json` request.
async fn post_batch(t: &TestServer, ids: impl Iterator<Item = String>) {
    let batch: Vec<Value> = ids.map(|id| minimal(&id)).collect();
    let r = t
        .post(
            "/",
            &[("content-type", "application/cloudevents-batch+json")],
            serde_json::to_vec(&batch).unwrap(),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
}

/// The ids the sink got, sorted, and whether any came twice.
fn ids_once(sink: &TestSink) -> (Vec<String>, Vec<String>) {
    let mut ids: Vec<String> = sink
        .received()
        .iter()
        .filter_map(|r| r.header("ce-id").map(str::to_string))
        .collect();
    ids.sort();
    let mut twice: Vec<String> = ids
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0].clone())
        .collect();
    twice.dedup();
    ids.dedup();
    (ids, twice)
}

async fn a_lane_far_behind_its_feed_catches_up_with_every_event_once(b: Backend) {
    // The first requests are held for two seconds, so the lane stops taking entries
    // while more than its in-memory feed holds (512) arrive; it then has to find them
    // in the log, catch up, and go back to its feed for what comes after.
    let sink = TestSink::start(
        Vec::new(),
        Answer::status(202).after(Duration::from_secs(2)),
    )
    .await;
    let subs = one_sink(
        "behind",
        &sink.url("/"),
        "  delivery:\n    maxInFlight: 4\n",
    );
    let t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    post_batch(&t, (0..4).map(|i| format!("a{i:04}"))).await;
    sink.wait_for(4, WAIT).await;
    post_batch(&t, (4..1300).map(|i| format!("a{i:04}"))).await;
    sink.set_default(Answer::status(202));
    sink.wait_for(1300, WAIT).await;
    // Then single events, which the lane takes from its feed again.
    for i in 1300..1340 {
        assert_eq!(t.post_json(&minimal(&format!("a{i:04}"))).await.status, 202);
    }
    sink.wait_for(1340, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ids, twice) = ids_once(&sink);
    let expected: Vec<String> = (0..1340).map(|i| format!("a{i:04}")).collect();
    assert_eq!(ids, expected, "every event delivered");
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    assert_eq!(sink.received().len(), 1340);
}

async fn an_ordered_lane_behind_its_feed_stays_in_log_order(b: Backend) {
    let sink = TestSink::start(
        Vec::new(),
        Answer::status(202).after(Duration::from_secs(1)),
    )
    .await;
    let subs = one_sink(
        "in-order",
        &sink.url("/"),
        "  delivery:\n    ordering: ordered\n",
    );
    let t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    post_batch(&t, std::iter::once("o0000".to_string())).await;
    sink.wait_for(1, WAIT).await;
    post_batch(&t, (1..700).map(|i| format!("o{i:04}"))).await;
    sink.set_default(Answer::status(202));
    for i in 700..720 {
        assert_eq!(t.post_json(&minimal(&format!("o{i:04}"))).await.status, 202);
    }
    let got = sink.wait_for(720, WAIT).await;
    let ids: Vec<String> = got
        .iter()
        .filter_map(|r| r.header("ce-id").map(str::to_string))
        .collect();
    let expected: Vec<String> = (0..720).map(|i| format!("o{i:04}")).collect();
    assert_eq!(ids, expected);
}

async fn an_event_without_data_is_sent_with_content_length_zero(b: Backend) {
    // A sink that requires a length (411 without one) takes it.
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let subs = one_sink("s", &sink.url("/"), "");
    let t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    let r = t
        .post(
            "/",
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "no-data"),
                ("ce-source", "/tekton"),
                ("ce-type", "dev.tekton.event.taskrun.started.v1"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 202);
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("ce-id"), Some("no-data"));
    assert_eq!(got[0].header("content-length"), Some("0"));
    assert!(got[0].body.is_empty());
}

async fn a_reply_repeated_inside_the_dedupe_window_is_stored_and_delivered_once(b: Backend) {
    // A sink that answers every event with the same reply, as one replying to a
    // redelivered event would.
    let replier = replying_sink().await;
    let downstream = TestSink::start(vec![], Answer::status(202)).await;
    let subs = [
        subscription("ask", &format!("  filter:\n    attributes: {{ type: dev.switchyard.test }}\n  sinks:\n    - uri: {}\n", replier.url("/"))),
        subscription("replies", &format!("  filter:\n    attributes: {{ type: dev.switchyard.reply }}\n  sinks:\n    - uri: {}\n", downstream.url("/"))),
    ]
    .concat();
    let t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    assert_eq!(t.post_json(&minimal("q1")).await.status, 202);
    assert_eq!(t.post_json(&minimal("q2")).await.status, 202);
    replier.wait_for(2, WAIT).await;
    let stats = t
        .server()
        .delivery
        .stats("default", &LaneId::new("ask", replier.url("/")));
    common::wait_until("both replies counted", async || {
        stats
            .replies_appended
            .load(std::sync::atomic::Ordering::Relaxed)
            + stats
                .replies_duplicate
                .load(std::sync::atomic::Ordering::Relaxed)
            == 2
    })
    .await;
    assert_eq!(
        stats
            .replies_duplicate
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    t.wait_routed("default").await;
    let ids: Vec<String> = t
        .records("default")
        .await
        .iter()
        .map(|r| r.event.id().to_string())
        .collect();
    assert_eq!(ids, ["q1", "q2", "reply-1"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = downstream.received();
    assert_eq!(got.len(), 1, "the reply reached downstream once");
}

async fn text_sent_in_binary_mode_reaches_a_structured_sink_as_a_string(b: Backend) {
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let subs = subscription(
        "s",
        &format!(
            "  sinks:\n    - uri: {}\n      format: structured\n",
            sink.url("/")
        ),
    );
    let t = b
        .start_with_subscriptions("dedupe:\n  window: 0\n", &[("s.yaml", &subs)])
        .await;
    let cases: [(&str, &[u8]); 6] = [
        ("text/plain", b"plain text"),
        ("text/plain; charset=utf-8", "caf\u{e9}".as_bytes()),
        ("text/csv", b"a,b\n1,2\n"),
        ("application/xml", b"<a>1</a>"),
        // Not text, or not UTF-8: bytes, in base64.
        ("application/octet-stream", b"bytes"),
        ("text/plain", b"\xff\xfe"),
    ];
    for (i, (content_type, body)) in cases.iter().enumerate() {
        let id = i.to_string();
        let headers = [
            ("ce-specversion", "1.0"),
            ("ce-id", id.as_str()),
            ("ce-source", "/text"),
            ("ce-type", "dev.switchyard.text"),
            ("content-type", content_type),
        ];
        assert_eq!(t.post("/", &headers, body.to_vec()).await.status, 202);
    }
    let got = sink.wait_for(cases.len(), WAIT).await;
    for r in &got {
        let doc: Value = serde_json::from_slice(&r.body).unwrap();
        let i: usize = doc["id"].as_str().unwrap().parse().unwrap();
        let (content_type, body) = cases[i];
        assert_eq!(doc["datacontenttype"], content_type);
        if i < 4 {
            assert_eq!(
                doc["data"],
                std::str::from_utf8(body).unwrap(),
                "{content_type}"
            );
            assert!(doc.get("data_base64").is_none(), "{doc}");
        } else {
            let b64 = base64::engine::general_purpose::STANDARD.encode(body);
            assert_eq!(doc["data_base64"], b64, "{content_type}");
            assert!(doc.get("data").is_none(), "{doc}");
        }
    }
}

/// A sink that answers every event with the same reply, `reply-1` of type
/// `dev.switchyard.reply`.
async fn replying_sink() -> TestSink {
    TestSink::start(
        vec![],
        Answer::reply("reply-1", "/replier", "dev.switchyard.reply"),
    )
    .await
}

common::backends! {
    text_sent_in_binary_mode_reaches_a_structured_sink_as_a_string,
    one_tekton_event_fans_out_to_five_sinks_across_three_subscriptions,
    retries_on_503_then_delivers_waiting_as_the_backoff_says,
    retry_after_on_429_is_honoured,
    a_400_is_not_retried_and_goes_to_the_dead_letter_sink_once_with_the_error_extensions,
    timeouts_and_refused_connections_are_retried,
    a_long_wait_parks_the_event_and_other_lanes_keep_flowing_across_a_restart,
    an_ordered_lane_delivers_in_log_order_through_failures,
    a_reply_feeds_a_second_subscription_and_a_reply_loop_stops_at_the_hop_limit,
    a_4_mib_event_is_delivered_byte_identical,
    redirects_are_not_followed_and_count_as_final,
    reply_ignore_turns_replies_off,
    a_failing_dead_letter_sink_leaves_the_event_in_the_store,
    a_lane_keeps_at_most_max_in_flight_requests_open,
    an_answer_body_is_read_up_to_the_limit_and_no_further,
    shutdown_waits_for_a_hung_delivery_only_as_long_as_the_grace_period,
    shutdown_lets_an_attempt_under_way_finish_and_commits_it,
    a_lane_far_behind_its_feed_catches_up_with_every_event_once,
    an_ordered_lane_behind_its_feed_stays_in_log_order,
    an_event_without_data_is_sent_with_content_length_zero,
    a_reply_repeated_inside_the_dedupe_window_is_stored_and_delivered_once,
}
