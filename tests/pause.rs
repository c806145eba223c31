//! Lane control: a paused lane sends nothing while its events keep being routed into it,
//! stays paused across a restart, and sends everything once resumed, on every backend;
//! the command line pauses, resumes, and redelivers a subscription's dead letters at once
//! (all of them, or one sink's); on JetStream a pause made on one instance holds on the
//! others.

mod common;

use std::process::Command;
use std::time::Duration;

use common::sink::{Answer, TestSink};
use common::{eventually, subscription, Backend, TestServer};

const WAIT: Duration = Duration::from_secs(30);

/// `POST` to the admin API: the status and the answer's JSON.
async fn post(
    t: &TestServer,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    call(http::Method::POST, t.server().admin_addr, path, body).await
}

/// A request to the admin API at `admin`: the status and the answer's JSON.
async fn call(
    method: http::Method,
    admin: std::net::SocketAddr,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = client.request(request).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

fn lane<'a>(sub: &'a serde_json::Value, sink: &str) -> &'a serde_json::Value {
    sub["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["sink"] == sink)
        .unwrap()
}

async fn a_paused_lane_sends_nothing_stays_paused_across_a_restart_and_resumes(b: Backend) {
    let held = TestSink::start(vec![], Answer::status(200)).await;
    let other = TestSink::start(vec![], Answer::status(200)).await;
    let spec = format!(
        "  sinks:\n    - uri: {}\n    - uri: {}\n",
        held.url("/held"),
        other.url("/other")
    );
    let mut t = b
        .start_with_subscriptions("", &[("s.yaml", &subscription("s", &spec))])
        .await;
    let (status, sub) = post(
        &t,
        "/api/v1/subscriptions/s/pause",
        Some(serde_json::json!({"sink": held.url("/held")})),
    )
    .await;
    assert_eq!(status, 200, "{sub}");
    assert_eq!(lane(&sub, &held.url("/held"))["state"], "paused");
    assert_eq!(lane(&sub, &other.url("/other"))["state"], "sending");
    for i in 0..3 {
        assert_eq!(
            t.post_json(&common::minimal(&format!("e{i}"))).await.status,
            202
        );
    }
    other.wait_for(3, WAIT).await;
    // Routed into the paused lane, and waiting there.
    eventually("the paused lane's lag", async || {
        let sub = t.admin_get("/api/v1/subscriptions/s").await;
        (lane(&sub, &held.url("/held"))["lag"] == 3).then_some(())
    })
    .await;
    assert!(held.received().is_empty(), "a paused lane sends nothing");

    t.restart().await;
    assert_eq!(t.post_json(&common::minimal("e3")).await.status, 202);
    other.wait_for(4, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(held.received().is_empty(), "still paused after the restart");
    let sub = t.admin_get("/api/v1/subscriptions/s").await;
    assert_eq!(lane(&sub, &held.url("/held"))["state"], "paused");

    let (status, sub) = post(&t, "/api/v1/subscriptions/s/resume", None).await;
    assert_eq!(status, 200, "{sub}");
    assert_eq!(lane(&sub, &held.url("/held"))["state"], "sending");
    let got = held.wait_for(4, WAIT).await;
    let mut ids: Vec<&str> = got.iter().map(|r| r.header("ce-id").unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["e0", "e1", "e2", "e3"]);
    // Unknown names are said.
    let (status, problem) = post(
        &t,
        "/api/v1/subscriptions/s/pause",
        Some(serde_json::json!({"sink": "http://nope/"})),
    )
    .await;
    assert_eq!(status, 404);
    assert!(problem["detail"].as_str().unwrap().contains("http://nope/"));
    assert_eq!(
        post(&t, "/api/v1/subscriptions/nope/pause", None).await.0,
        404
    );
}

common::backends! {
    a_paused_lane_sends_nothing_stays_paused_across_a_restart_and_resumes,
}

fn cli(t: &TestServer, list: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(list)
        .args(["--admin", &format!("http://{}", t.server().admin_addr)])
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_pauses_resumes_and_redelivers_a_subscriptions_dead_letters() {
    // Refused for good at first, so the events are dead-lettered; then accepted.
    let sink = TestSink::start(vec![], Answer::status(400)).await;
    let spec = format!("  sinks: [{{ uri: '{}' }}]\n", sink.url("/"));
    let t =
        TestServer::start_with_subscriptions("", &[("s.yaml", &subscription("s", &spec))]).await;
    for i in 0..3 {
        assert_eq!(
            t.post_json(&common::minimal(&format!("e{i}"))).await.status,
            202
        );
    }
    eventually("three dead letters", async || {
        (t.dead_letters().await.len() == 3).then_some(())
    })
    .await;
    sink.set_default(Answer::status(200));

    let (code, out, err) =
        tokio::task::block_in_place(|| cli(&t, &["subscriptions", "pause", "s"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().nth(1).unwrap().contains("paused"), "{out}");
    let (code, out, err) = tokio::task::block_in_place(|| {
        cli(&t, &["deadletters", "redeliver", "--subscription", "s"])
    });
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "3 dead letter(s) requeued");
    assert!(t.dead_letters().await.is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sink.received().len(),
        3,
        "the requeued events wait in the paused lane"
    );

    let (code, out, err) =
        tokio::task::block_in_place(|| cli(&t, &["subscriptions", "resume", "s", "-o", "json"]));
    assert_eq!(code, 0, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["lanes"][0]["paused"], false);
    sink.wait_for(6, WAIT).await;
    let (code, _, err) = tokio::task::block_in_place(|| cli(&t, &["deadletters", "redeliver"]));
    assert_eq!(code, 2, "an id or --subscription is needed: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_by_sink_requeues_only_that_sinks_dead_letters() {
    let a = TestSink::start(vec![], Answer::status(400)).await;
    let b = TestSink::start(vec![], Answer::status(400)).await;
    let spec = format!(
        "  sinks: [{{ uri: '{}' }}, {{ uri: '{}' }}]\n",
        a.url("/a"),
        b.url("/b")
    );
    let t =
        TestServer::start_with_subscriptions("", &[("s.yaml", &subscription("s", &spec))]).await;
    for i in 0..2 {
        assert_eq!(
            t.post_json(&common::minimal(&format!("e{i}"))).await.status,
            202
        );
    }
    eventually("four dead letters", async || {
        (t.dead_letters().await.len() == 4).then_some(())
    })
    .await;
    a.set_default(Answer::status(200));
    b.set_default(Answer::status(200));
    let a_url = a.url("/a");
    let (code, out, err) = tokio::task::block_in_place(|| {
        cli(
            &t,
            &[
                "deadletters",
                "redeliver",
                "--subscription",
                "s",
                "--sink",
                &a_url,
            ],
        )
    });
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "2 dead letter(s) requeued");
    a.wait_for(4, WAIT).await;
    let left = t.dead_letters().await;
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|l| l.sink == b.url("/b")), "{left:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.received().len(), 2, "the other sink's letters stay put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_made_on_one_jetstream_instance_holds_on_the_others() {
    if common::nats::available().is_none() {
        return;
    }
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let spec = format!("  sinks: [{{ uri: '{}' }}]\n", sink.url("/"));
    let t = Backend::JetStream
        .start_with_subscriptions("", &[("s.yaml", &subscription("s", &spec))])
        .await;
    let other = t.another_instance().await;
    let (status, sub) = post(&t, "/api/v1/subscriptions/s/pause", None).await;
    assert_eq!(status, 200, "{sub}");
    // The other instance reads the pause from the shared state within a second or so.
    let started = std::time::Instant::now();
    eventually("the other instance shows the lane paused", async || {
        let (_, sub) = call(
            http::Method::GET,
            other.admin_addr,
            "/api/v1/subscriptions/s",
            None,
        )
        .await;
        (sub["lanes"][0]["state"] == "paused").then_some(())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "seen after {:?}",
        started.elapsed()
    );
    // Events posted to either instance wait: neither sends them.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    for i in 0..4 {
        let ingress = if i % 2 == 0 {
            t.server().ingress_addr
        } else {
            other.ingress_addr
        };
        let request = http::Request::post(format!("http://{ingress}/"))
            .header("content-type", "application/cloudevents+json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                common::minimal(&format!("e{i}")).to_string(),
            )))
            .unwrap();
        assert_eq!(client.request(request).await.unwrap().status(), 202);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        sink.received().is_empty(),
        "a paused lane sends nothing on any instance"
    );
    // Resumed on the other instance: the events go out.
    let (status, sub) = call(
        http::Method::POST,
        other.admin_addr,
        "/api/v1/subscriptions/s/resume",
        None,
    )
    .await;
    assert_eq!(status, 200, "{sub}");
    let got = sink.wait_for(4, WAIT).await;
    let mut ids: Vec<&str> = got.iter().map(|r| r.header("ce-id").unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["e0", "e1", "e2", "e3"]);
    other.stop().await;
}
