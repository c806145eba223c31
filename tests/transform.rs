//! Sink transforms and `format: plain`: the shipped examples (Slack, GitHub
//! repository_dispatch, PagerDuty) delivered to test sinks that check the exact body; CEL
//! attributes and bodies on binary and structured sinks; a transform that fails
//! dead-letters at once; `check` names every mistake; `explain` shows the requests.

mod common;

use std::path::Path;
use std::time::Duration;

use common::sink::{Answer, Received, TestSink};
use common::{
    eventually, sample, subscription, subscription_errors, tekton_requests, Backend, TestServer,
};

const WAIT: Duration = Duration::from_secs(20);

/// The routing key the PagerDuty example reads from `PAGERDUTY_ROUTING_KEY`.
const ROUTING_KEY: &str = "R0UT1NGKEY0123456789abcdef012345";

/// An example subscription file with its sink's URI pointed at `uri`.
fn example(file: &str, uri: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/examples")
        .join(file);
    let text = std::fs::read_to_string(path).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("- uri: "))
        .expect("the example has a sink");
    let indent = &line[..line.find('-').unwrap()];
    text.replace(line, &format!("{indent}- uri: {uri}"))
}

fn fixture(name: &str) -> common::TektonRequest {
    tekton_requests()
        .into_iter()
        .find(|r| r.file.starts_with(name))
        .unwrap()
}

fn no_cloudevents_headers(r: &Received) {
    let ce: Vec<&str> = r
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("ce-") || *k == "prefer")
        .collect();
    assert!(ce.is_empty(), "a plain sink got {ce:?}");
}

/// Waits until the series `name{with…}` reads `value` in `/metrics`; returns the scrape.
async fn metric_reaches(t: &TestServer, name: &str, with: &[(&str, &str)], value: f64) -> String {
    eventually(
        &format!("{name} {with:?} = {value} in /metrics"),
        async || {
            let (_, m) = t.metrics().await;
            (sample(&m, name, with) == Some(value)).then_some(m)
        },
    )
    .await
}

#[tokio::test]
async fn the_webhook_examples_send_exactly_the_bodies_their_endpoints_expect() {
    std::env::set_var("PAGERDUTY_ROUTING_KEY", ROUTING_KEY);
    std::env::set_var("GITHUB_AUTHORIZATION", "Bearer ghp_test");
    let slack = TestSink::start(vec![], Answer::status(200).body("ok")).await;
    let github = TestSink::start(vec![], Answer::status(204)).await;
    let pagerduty = TestSink::start(vec![], Answer::status(202)).await;
    let t = TestServer::start_with_subscriptions(
        "",
        &[
            (
                "slack.yaml",
                &example("slack.yaml", &slack.url("/services/T0/B0/X")),
            ),
            (
                "github.yaml",
                &example("github-dispatch.yaml", &github.url("/repos/o/r/dispatches")),
            ),
            (
                "pagerduty.yaml",
                &example("pagerduty.yaml", &pagerduty.url("/v2/enqueue")),
            ),
        ],
    )
    .await;
    for r in tekton_requests() {
        assert_eq!(t.post_tekton(&r).await.status, 202, "{}", r.file);
    }

    let got = slack.wait_for(1, WAIT).await;
    no_cloudevents_headers(&got[0]);
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    assert_eq!(
        std::str::from_utf8(&got[0].body).unwrap(),
        concat!(
            r#"{"blocks":[{"text":{"text":":x: PipelineRun <https://tekton.example.com/#/namespaces/ee-cd/pipelineruns/build-package-tikv-tikv-linux-9bn55|build-package-tikv-tikv-linux-9bn55> failed in namespace `ee-cd`","type":"mrkdwn"},"type":"section"},"#,
            r#"{"fields":[{"text":"*Pipeline*\npingcap-build-package","type":"mrkdwn"},{"text":"*Failed task*\nbuild-binaries","type":"mrkdwn"}],"type":"section"},"#,
            r#"{"elements":[{"text":"Tasks Completed: 3 (Failed: 1, Cancelled 0), Skipped: 1","type":"mrkdwn"}],"type":"context"}],"#,
            r#""text":"PipelineRun ee-cd/build-package-tikv-tikv-linux-9bn55 failed"}"#
        )
    );

    let got = pagerduty.wait_for(1, WAIT).await;
    no_cloudevents_headers(&got[0]);
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    assert_eq!(
        std::str::from_utf8(&got[0].body).unwrap(),
        format!(
            concat!(
                r#"{{"dedup_key":"tekton:ee-cd/build-package-tikv-tikv-linux-9bn55","event_action":"trigger","#,
                r#""links":[{{"href":"https://tekton.example.com/#/namespaces/ee-cd/pipelineruns/build-package-tikv-tikv-linux-9bn55","text":"The PipelineRun in the Tekton Dashboard"}}],"#,
                r#""payload":{{"class":"dev.tekton.event.pipelinerun.failed.v1","component":"pingcap-build-package","#,
                r#""custom_details":{{"completionTime":"2023-12-07T06:33:29Z","reason":"Failed","startTime":"2023-12-07T06:28:37Z"}},"#,
                r#""group":"ee-cd","severity":"error","source":"/apis///namespaces/ee-cd//build-package-tikv-tikv-linux-9bn55","#,
                r#""summary":"PipelineRun ee-cd/build-package-tikv-tikv-linux-9bn55 failed: Tasks Completed: 3 (Failed: 1, Cancelled 0), Skipped: 1","#,
                r#""timestamp":"2023-12-07T06:33:29.917677580+00:00"}},"routing_key":"{}"}}"#
            ),
            ROUTING_KEY
        )
    );

    let got = github.wait_for(1, WAIT).await;
    no_cloudevents_headers(&got[0]);
    assert_eq!(got[0].header("authorization"), Some("Bearer ghp_test"));
    assert_eq!(got[0].header("accept"), Some("application/vnd.github+json"));
    assert_eq!(got[0].header("user-agent"), Some("switchyard"));
    assert_eq!(got[0].header("x-github-api-version"), Some("2022-11-28"));
    let run =
        &serde_json::from_slice::<serde_json::Value>(&fixture("09").body).unwrap()["pipelineRun"];
    // The keys in sorted order, as the transform writes them.
    let expected = serde_json::json!({
        "client_payload": {
            "eventId": "5d2c7f8a-0e4b-4a3f-b1c9-7e6d5a4b3c21",
            "namespace": "ee-cd",
            "params": run["spec"]["params"],
            "pipeline": "pingcap-build-package",
            "pipelineRun": "build-package-tidb-linux-amd64-nmjrj",
            "results": run["status"]["pipelineResults"],
        },
        "event_type": "tekton-release",
    });
    assert_eq!(
        std::str::from_utf8(&got[0].body).unwrap(),
        serde_json::to_string(&expected).unwrap()
    );

    // Only the events each filter selects, once each.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(slack.received().len(), 1);
    assert_eq!(github.received().len(), 1);
    assert_eq!(pagerduty.received().len(), 1);
}

#[tokio::test]
async fn binary_and_structured_sinks_get_the_transformed_event_as_a_valid_cloudevent() {
    let binary = TestSink::start(vec![], Answer::status(200)).await;
    let structured = TestSink::start(vec![], Answer::status(200)).await;
    let sink = |uri: String, format: &str| {
        format!(
            r#"    - uri: {uri}
      format: {format}
      transform:
        attributes:
          type: '"com.example.run." + data.pipelineRun.metadata.name'
          subject: null
          namespace: data.pipelineRun.metadata.namespace
        data: '{{"run": data.pipelineRun.metadata.name, "failed": type.endsWith(".failed.v1")}}'
"#
        )
    };
    let spec = format!(
        "  filter:\n    attributes: {{ type: dev.tekton.event.pipelinerun.failed.v1 }}\n  sinks:\n{}{}",
        sink(binary.url("/b"), "binary"),
        sink(structured.url("/s"), "structured")
    );
    let t =
        TestServer::start_with_subscriptions("", &[("s.yaml", &subscription("s", &spec))]).await;
    assert_eq!(t.post_tekton(&fixture("10")).await.status, 202);

    let got = binary.wait_for(1, WAIT).await;
    let r = &got[0];
    assert_eq!(
        r.header("ce-type"),
        Some("com.example.run.build-package-tikv-tikv-linux-9bn55")
    );
    assert_eq!(r.header("ce-subject"), None, "removed");
    assert_eq!(r.header("ce-namespace"), Some("ee-cd"));
    assert_eq!(
        r.header("ce-id"),
        Some("96d36eac-c627-46cb-8579-344516ddd298"),
        "kept"
    );
    assert_eq!(r.header("ce-specversion"), Some("1.0"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("prefer"), Some("reply"));
    assert_eq!(
        &r.body[..],
        br#"{"failed":true,"run":"build-package-tikv-tikv-linux-9bn55"}"#
    );

    let got = structured.wait_for(1, WAIT).await;
    let r = &got[0];
    assert_eq!(
        r.header("content-type"),
        Some("application/cloudevents+json")
    );
    let event: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        event["type"],
        "com.example.run.build-package-tikv-tikv-linux-9bn55"
    );
    assert_eq!(event["namespace"], "ee-cd");
    assert_eq!(event["datacontenttype"], "application/json");
    assert!(event.get("subject").is_none());
    assert_eq!(
        event["data"],
        serde_json::json!({"failed": true, "run": "build-package-tikv-tikv-linux-9bn55"})
    );
    // The stored event is what the producer sent.
    let stored = &t.records("default").await[0].event;
    assert_eq!(stored.ty(), "dev.tekton.event.pipelinerun.failed.v1");
}

#[tokio::test]
async fn a_plain_sink_gets_the_body_alone_and_its_answer_is_not_a_reply() {
    // The answer looks like a structured CloudEvent; from a plain sink it is no reply.
    let reply = r#"{"specversion":"1.0","id":"r1","source":"/sink","type":"reply"}"#;
    let sink = TestSink::start(
        vec![],
        Answer::status(200)
            .header("content-type", "application/cloudevents+json")
            .body(reply),
    )
    .await;
    let spec = format!(
        "  sinks:\n    - uri: {}\n      format: plain\n",
        sink.url("/hook")
    );
    let t =
        TestServer::start_with_subscriptions("", &[("s.yaml", &subscription("s", &spec))]).await;
    let sent = br#"{"hello":"world"}"#;
    let r = t
        .post(
            "/",
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "1"),
                ("ce-source", "/src"),
                ("ce-type", "t"),
                ("content-type", "application/json"),
            ],
            &sent[..],
        )
        .await;
    assert_eq!(r.status, 202);
    let got = sink.wait_for(1, WAIT).await;
    no_cloudevents_headers(&got[0]);
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    assert_eq!(&got[0].body[..], sent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.records("default").await.len(), 1, "no reply was appended");
}

async fn a_transform_that_fails_dead_letters_at_once_and_the_lane_goes_on(b: Backend) {
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let dls = TestSink::start(vec![], Answer::status(200)).await;
    let spec = format!(
        "  sinks:\n    - uri: {}\n      format: plain\n      transform:\n        data: '{{\"text\": \"run \" + data.name}}'\n  delivery:\n    retry: 5\n    deadLetterSink: {{ uri: '{}' }}\n",
        sink.url("/hook"),
        dls.url("/dls")
    );
    let t = b
        .start_with_subscriptions("", &[("s.yaml", &subscription("s", &spec))])
        .await;
    let mut event = common::minimal("no-name");
    event["data"] = serde_json::json!({"other": 1});
    assert_eq!(t.post_json(&event).await.status, 202);
    let mut event = common::minimal("named");
    event["data"] = serde_json::json!({"name": "build"});
    assert_eq!(t.post_json(&event).await.status, 202);

    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(&got[0].body[..], br#"{"text":"run build"}"#);
    let letters = eventually("the dead letter", async || {
        let l = t.server().log.dead_letters().list().await.unwrap();
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0].1;
    assert_eq!(
        letter.attempts, 0,
        "no attempt: every one would fail the same way"
    );
    assert!(
        letter
            .last_error
            .starts_with("the transform failed: data: "),
        "{}",
        letter.last_error
    );
    assert!(letter.last_error.contains("name"), "{}", letter.last_error);
    // The dead-letter sink gets the event as it was stored, not transformed.
    let got = dls.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("ce-id"), Some("no-name"));
    assert_eq!(&got[0].body[..], br#"{"other":1}"#);
    assert_eq!(
        sink.received().len(),
        1,
        "the failed event never reached the sink"
    );
    let metrics = metric_reaches(
        &t,
        "switchyard_transform_failures_total",
        &[("subscription", "s")],
        1.0,
    )
    .await;
    assert_eq!(
        sample(
            &metrics,
            "switchyard_deliveries_total",
            &[("subscription", "s"), ("outcome", "dead_lettered")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "switchyard_deliveries_total",
            &[("subscription", "s"), ("outcome", "delivered")]
        ),
        Some(1.0)
    );
}

common::backends! {
    a_transform_that_fails_dead_letters_at_once_and_the_lane_goes_on,
}

#[test]
fn check_names_each_transform_mistake_with_its_line_and_field() {
    let sink = |transform: &str, format: &str| {
        format!(
            "  sinks:\n    - uri: http://a/\n      format: {format}\n      transform:\n{transform}"
        )
    };
    let cases = [
        (
            sink("        data: '{\"a\": }'\n", "binary"),
            10,
            "spec.sinks[0].transform.data",
            "CEL does not compile at column",
        ),
        (
            sink("        attributes:\n          source: null\n", "binary"),
            11,
            "spec.sinks[0].transform.attributes.source",
            "cannot be removed",
        ),
        (
            sink(
                "        attributes:\n          specversion: '\"2.0\"'\n",
                "binary",
            ),
            11,
            "spec.sinks[0].transform.attributes.specversion",
            "cannot be changed",
        ),
        (
            sink(
                "        attributes:\n          datacontenttype: '\"a/b\"'\n",
                "binary",
            ),
            11,
            "spec.sinks[0].transform.attributes.datacontenttype",
            "contentType",
        ),
        (
            sink(
                "        attributes:\n          Bad-Name: '\"x\"'\n",
                "binary",
            ),
            11,
            "spec.sinks[0].transform.attributes.Bad-Name",
            "not a CloudEvents attribute name",
        ),
        (
            sink("        attributes:\n          x: '\"y\"'\n", "plain"),
            10,
            "spec.sinks[0].transform.attributes",
            "format: plain",
        ),
        (
            sink("        contentType: 'not a type'\n", "binary"),
            10,
            "spec.sinks[0].transform.contentType",
            "not a media type",
        ),
        (
            sink("        preset: tekton-to-slack\n", "binary"),
            10,
            "spec.sinks[0].transform.preset",
            "tekton-to-cdevents",
        ),
        (
            sink(
                "        preset: tekton-to-cdevents\n        data: '1'\n",
                "binary",
            ),
            11,
            "spec.sinks[0].transform.data",
            "does not combine",
        ),
        (
            sink(
                "        dashboardUrl: https://d\n        data: '1'\n",
                "binary",
            ),
            10,
            "spec.sinks[0].transform.dashboardUrl",
            "preset",
        ),
        (
            sink(
                "        preset: tekton-to-cdevents\n        dashboardUrl: 'not a url'\n",
                "binary",
            ),
            11,
            "spec.sinks[0].transform.dashboardUrl",
            "absolute",
        ),
        (
            sink(
                "        values:\n          2x: a\n        data: '1'\n",
                "binary",
            ),
            11,
            "spec.sinks[0].transform.values.2x",
            "values.2x",
        ),
        (
            sink("        {}\n", "binary"),
            10,
            "spec.sinks[0].transform",
            "is empty",
        ),
        (
            sink("        dataa: '1'\n", "binary"),
            10,
            "spec.sinks[0].transform.dataa",
            "unknown field",
        ),
    ];
    for (spec, line, key, message) in cases {
        let errors = subscription_errors(&spec);
        assert!(
            errors
                .iter()
                .any(|e| e.line == line && e.key == key && e.message.contains(message)),
            "{spec}\nwanted line {line} {key}: …{message}…, got {errors:#?}"
        );
    }
}

#[tokio::test]
async fn explain_shows_each_sinks_request_with_secrets_redacted() {
    std::env::set_var("PAGERDUTY_ROUTING_KEY", ROUTING_KEY);
    let sink = TestSink::start(vec![], Answer::status(202)).await;
    let t = TestServer::start_with_subscriptions(
        "",
        &[(
            "pagerduty.yaml",
            &example("pagerduty.yaml", &sink.url("/v2/enqueue")),
        )],
    )
    .await;
    let event = switchyard::event::from_file(
        &std::fs::read(common::testdata().join("tekton/10-pipelinerun-failed.json")).unwrap(),
    )
    .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = http::Request::post(format!("http://{}/api/v1/explain", t.server().admin_addr))
        .header("content-type", "application/cloudevents+json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            switchyard::event::json::encode_event(&event),
        )))
        .unwrap();
    let resp = client.request(request).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let verdicts: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let request = &verdicts[0]["requests"][0];
    assert_eq!(request["sink"], sink.url("/v2/enqueue"));
    assert_eq!(request["method"], "POST");
    assert_eq!(
        request["headers"],
        serde_json::json!([["content-type", "application/json"]])
    );
    let sent: serde_json::Value = serde_json::from_str(request["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["routing_key"], "(redacted)");
    assert_eq!(sent["event_action"], "trigger");
    assert!(!String::from_utf8_lossy(&body).contains(ROUTING_KEY));
    // Explaining sends nothing.
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn the_cdevents_preset_sends_each_run_state_as_a_cdevent_and_skips_the_rest() {
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let spec = format!(
        "  filter:\n    filters:\n      - prefix: {{ type: dev.tekton.event. }}\n  sinks:\n    - uri: {}\n      transform:\n        preset: tekton-to-cdevents\n        dashboardUrl: https://tekton.example.com/\n",
        sink.url("/cdevents")
    );
    let t =
        TestServer::start_with_subscriptions("", &[("s.yaml", &subscription("s", &spec))]).await;
    for r in tekton_requests() {
        assert_eq!(t.post_tekton(&r).await.status, 202, "{}", r.file);
    }
    // 02 taskrun started, 05 and 06 finished, 07 pipelinerun started, 09 and 10 finished.
    let got = sink.wait_for(6, WAIT).await;
    let mut types: Vec<&str> = got.iter().map(|r| r.header("ce-type").unwrap()).collect();
    types.sort();
    assert_eq!(
        types,
        [
            "dev.cdevents.pipelinerun.finished.0.3.0",
            "dev.cdevents.pipelinerun.finished.0.3.0",
            "dev.cdevents.pipelinerun.started.0.3.0",
            "dev.cdevents.taskrun.finished.0.3.0",
            "dev.cdevents.taskrun.finished.0.3.0",
            "dev.cdevents.taskrun.started.0.3.0",
        ]
    );
    let failed = got
        .iter()
        .find(|r| r.header("ce-subject") == Some("ee-cd/build-package-tikv-tikv-linux-9bn55"))
        .expect("the failed PipelineRun");
    assert_eq!(failed.header("content-type"), Some("application/json"));
    assert_eq!(
        failed.header("ce-source"),
        Some("/apis///namespaces/ee-cd//build-package-tikv-tikv-linux-9bn55")
    );
    let cdevent: serde_json::Value = serde_json::from_slice(&failed.body).unwrap();
    assert_eq!(cdevent["context"]["id"], failed.header("ce-id").unwrap());
    assert_eq!(cdevent["subject"]["content"]["outcome"], "failure");
    assert_eq!(
        cdevent["subject"]["content"]["uri"],
        "https://tekton.example.com/#/namespaces/ee-cd/pipelineruns/build-package-tikv-tikv-linux-9bn55"
    );
    let metrics = metric_reaches(
        &t,
        "switchyard_deliveries_total",
        &[("subscription", "s"), ("outcome", "skipped")],
        4.0,
    )
    .await;
    assert_eq!(
        sample(
            &metrics,
            "switchyard_deliveries_total",
            &[("subscription", "s"), ("outcome", "delivered")]
        ),
        Some(6.0)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sink.received().len(),
        6,
        "running, unknown and queued TaskRuns send nothing"
    );
}

#[tokio::test]
async fn a_dead_letter_sink_with_a_transform_gets_the_shaped_letter() {
    let refusing = TestSink::start(vec![], Answer::status(400)).await;
    let dls = TestSink::start(vec![], Answer::status(200)).await;
    let spec = format!(
        "  sinks: [{{ uri: '{}' }}]\n  delivery:\n    deadLetterSink:\n      uri: '{}'\n      format: plain\n      transform:\n        data: '{{\"text\": \"could not deliver \" + id + \" (HTTP \" + string(knativeerrorcode) + \")\"}}'\n",
        refusing.url("/"),
        dls.url("/alert")
    );
    let t =
        TestServer::start_with_subscriptions("", &[("s.yaml", &subscription("s", &spec))]).await;
    assert_eq!(t.post_json(&common::minimal("lost-1")).await.status, 202);
    let got = dls.wait_for(1, WAIT).await;
    no_cloudevents_headers(&got[0]);
    assert_eq!(
        std::str::from_utf8(&got[0].body).unwrap(),
        r#"{"text":"could not deliver lost-1 (HTTP 400)"}"#
    );
}
