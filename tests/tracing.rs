//! W3C trace context across the broker: the producer's `traceparent` is kept with the
//! event (the distributed-tracing extension) and every request the broker sends for it,
//! a delivery, a dead-letter delivery, the delivery of a reply, carries the same trace id
//! with a new span id of its own.

mod common;

use std::time::Duration;

use common::sink::{Answer, TestSink};
use common::{subscription, TestServer};

const WAIT: Duration = Duration::from_secs(20);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// `(trace id, span id)` of a `traceparent` header.
fn ids(value: Option<&str>) -> (String, String) {
    let v = value.expect("a traceparent header");
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!((parts.len(), parts[0], parts[3]), (4, "00", "01"), "{v}");
    (parts[1].to_string(), parts[2].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_of_an_event_carries_its_trace_with_a_span_of_its_own() {
    // The first sink answers with a reply event; the reply goes to the second. The
    // third refuses for good, so its event goes to the dead-letter sink.
    let replying = TestSink::start(
        vec![],
        Answer::reply("reply-1", "/replier", "dev.example.reply"),
    )
    .await;
    let replies = TestSink::start(vec![], Answer::status(200)).await;
    let refusing = TestSink::start(vec![], Answer::status(400)).await;
    let dls = TestSink::start(vec![], Answer::status(200)).await;
    let subs = [
        subscription("first", &format!("  filter:\n    attributes: {{ type: dev.example.ping }}\n  sinks: [{{ uri: '{}' }}]\n", replying.url("/"))),
        subscription("replies", &format!("  filter:\n    attributes: {{ type: dev.example.reply }}\n  sinks: [{{ uri: '{}' }}]\n", replies.url("/"))),
        subscription("refused", &format!("  filter:\n    attributes: {{ type: dev.example.ping }}\n  sinks: [{{ uri: '{}' }}]\n  delivery: {{ deadLetterSink: {{ uri: '{}' }} }}\n", refusing.url("/"), dls.url("/"))),
    ]
    .concat();
    let t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let r = t
        .post(
            "/",
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "ping-1"),
                ("ce-source", "/producer"),
                ("ce-type", "dev.example.ping"),
                ("traceparent", &traceparent),
                ("tracestate", "vendor=x"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 202);
    // Kept with the event, as the distributed-tracing extension.
    let stored = &t.records("default").await[0].event;
    assert_eq!(stored.get_str("traceparent"), Some(traceparent.as_str()));
    assert_eq!(stored.get_str("tracestate"), Some("vendor=x"));

    let delivered = &replying.wait_for(1, WAIT).await[0];
    let (trace, span) = ids(delivered.header("traceparent"));
    assert_eq!(trace, TRACE);
    assert_ne!(span, PARENT, "a new span id for the hop");
    assert_eq!(delivered.header("tracestate"), Some("vendor=x"));
    assert_eq!(
        delivered.header("ce-traceparent"),
        Some(traceparent.as_str()),
        "the extension as stored"
    );

    let reply = &replies.wait_for(1, WAIT).await[0];
    assert_eq!(reply.header("ce-id"), Some("reply-1"));
    let (reply_trace, reply_span) = ids(reply.header("traceparent"));
    assert_eq!(reply_trace, TRACE, "the reply continues the trace");
    assert!(reply_span != PARENT && reply_span != span);

    let letter = &dls.wait_for(1, WAIT).await[0];
    let (dl_trace, dl_span) = ids(letter.header("traceparent"));
    assert_eq!(dl_trace, TRACE);
    assert!(dl_span != PARENT && dl_span != span);
    let attempt = &refusing.received()[0];
    assert_ne!(ids(attempt.header("traceparent")).1, dl_span);
}

#[tokio::test]
async fn an_events_own_traceparent_wins_and_a_malformed_header_is_ignored() {
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let spec = format!("  sinks: [{{ uri: '{}' }}]\n", sink.url("/"));
    let t =
        TestServer::start_with_subscriptions("", &[("s.yaml", &subscription("s", &spec))]).await;
    let own = format!("00-{TRACE}-{PARENT}-00");
    let base = [
        ("ce-specversion", "1.0"),
        ("ce-source", "/p"),
        ("ce-type", "t"),
    ];
    let t = &t;
    let post = |id: &'static str, extra: Vec<(&'static str, String)>| {
        let mut headers: Vec<(&str, String)> =
            base.iter().map(|(k, v)| (*k, v.to_string())).collect();
        headers.push(("ce-id", id.to_string()));
        headers.extend(extra);
        async move {
            let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            t.post("/", &refs, "").await.status
        }
    };
    let other = "00-11111111111111111111111111111111-2222222222222222-01".to_string();
    assert_eq!(
        post(
            "own",
            vec![("ce-traceparent", own.clone()), ("traceparent", other)]
        )
        .await,
        202
    );
    assert_eq!(
        post("bad", vec![("traceparent", "00-nonsense".to_string())]).await,
        202
    );
    let got = sink.wait_for(2, WAIT).await;
    let by_id = |id: &str| {
        got.iter()
            .find(|r| r.header("ce-id") == Some(id))
            .unwrap()
            .clone()
    };
    let (trace, _) = {
        let v = by_id("own");
        let value = v.header("traceparent").unwrap().to_string();
        let parts: Vec<String> = value.split('-').map(str::to_string).collect();
        (parts[1].clone(), parts[3].clone())
    };
    assert_eq!(trace, TRACE, "the event's own context, not the request's");
    let bad = by_id("bad");
    assert_eq!(bad.header("traceparent"), None);
    assert_eq!(bad.header("ce-traceparent"), None);
}

#[test]
fn the_log_lines_of_a_traced_event_carry_its_trace_id() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 refuses: the event is retried once, then dead-lettered.
    let broker = common::process::start_with_subscription(
        dir.path(),
        "apiVersion: switchyard.dev/v1alpha1\nkind: Subscription\nmetadata: { name: s }\nspec:\n  sinks: [{ uri: 'http://127.0.0.1:1/' }]\n  delivery: { retry: 1, backoffDelay: 10ms }\n",
        &[("SWITCHYARD_LOG", "debug")],
    );
    let answer = broker.post_structured(
        r#"{"specversion":"1.0","id":"traced","source":"/p","type":"t"}"#,
        &[&format!("traceparent: 00-{TRACE}-{PARENT}-01")],
    );
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let mut about_it = Vec::new();
    loop {
        let line = broker
            .lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the dead-letter line");
        if line.contains("attempt failed") || line.contains("dead-lettered") {
            about_it.push(line.clone());
        }
        if line.contains("dead-lettered") {
            break;
        }
    }
    assert!(about_it.len() >= 2, "{about_it:?}");
    for line in &about_it {
        assert!(line.contains(TRACE), "no trace id in: {line}");
    }
}

#[tokio::test]
async fn an_event_at_the_attribute_limits_is_stored_without_the_trace_context() {
    let t = TestServer::start_with(|c| c.ingress.max_attributes = 5).await;
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    for (id, extra) in [("room", None), ("full", Some(("ce-x", "y")))] {
        let mut headers = vec![
            ("ce-specversion", "1.0"),
            ("ce-id", id),
            ("ce-source", "/p"),
            ("ce-type", "t"),
            ("traceparent", traceparent.as_str()),
        ];
        headers.extend(extra);
        assert_eq!(t.post("/", &headers, "").await.status, 202, "{id}");
    }
    let records = t.records("default").await;
    let by_id = |id: &str| records.iter().find(|r| r.event.id() == id).unwrap();
    assert_eq!(
        by_id("room").event.get_str("traceparent"),
        Some(traceparent.as_str())
    );
    assert_eq!(by_id("full").event.attributes().len(), 5);
    assert_eq!(
        by_id("full").event.get_str("traceparent"),
        None,
        "a sixth attribute would pass ingress.maxAttributes"
    );
}
