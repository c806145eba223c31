//! Inputs and clients that once stopped the broker or its delivery for everyone: each
//! is reproduced at a size that runs in seconds, and the test asserts what a user
//! would see instead (the limit named, the next event delivered, probes answered).

mod common;

use std::time::{Duration, Instant};

use common::sink::{Answer, TestSink};
use common::{minimal, subscription, TestServer};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

/// A structured event with `extensions` extension attributes `x0`, `x1`, ….
fn with_extensions(id: &str, extensions: usize) -> Value {
    let mut event = minimal(id);
    for i in 0..extensions {
        event[format!("x{i}")] = json!("v");
    }
    event
}

#[tokio::test]
async fn an_event_over_the_attribute_limits_is_refused_naming_the_limit() {
    let t = TestServer::start("").await;
    let r = t.post_json(&with_extensions("many", 24_600)).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let p = r.json();
    assert_eq!(p["limit"], "ingress.maxAttributes", "{p}");
    assert!(p["detail"].as_str().unwrap().contains("24604"), "{p}");

    let mut big = minimal("big");
    big["source"] = json!(format!("/{}", "s".repeat(70 * 1024)));
    let r = t.post_json(&big).await;
    assert_eq!(r.status, 413, "{:?}", r.body);
    assert_eq!(r.json()["limit"], "ingress.maxAttributeBytes");

    // In a batch the problem names the index, and nothing of the batch is stored.
    let batch = serde_json::to_vec(&json!([minimal("ok"), with_extensions("many", 100)])).unwrap();
    let r = t
        .post(
            "/",
            &[("content-type", "application/cloudevents-batch+json")],
            batch,
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["index"], 1);
    assert_eq!(r.json()["limit"], "ingress.maxAttributes");

    assert_eq!(t.post_json(&with_extensions("fine", 60)).await.status, 202);
    assert_eq!(t.records("default").await.len(), 1);
}

#[tokio::test]
async fn an_event_that_cannot_be_sent_is_dead_lettered_and_the_lane_delivers_the_next() {
    let sink = TestSink::start(Vec::new(), Answer::status(200)).await;
    let subs = subscription("s", &format!("  sinks:\n    - uri: {}\n", sink.url("/")));
    let mut t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    // Limits raised past what an HTTP header map holds (32,768 entries), as an event
    // stored before the limits were lowered would be.
    t.restart_with(|c| {
        c.ingress.max_attributes = 40_000;
        c.ingress.max_attribute_bytes = 1 << 20;
    })
    .await;
    assert_eq!(
        t.post_json(&with_extensions("unsendable", 33_000))
            .await
            .status,
        202
    );
    assert_eq!(t.post_json(&minimal("next")).await.status, 202);
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("ce-id"), Some("next"));
    let log = t.server().log.clone();
    let letters = common::eventually("the dead letter", async || {
        let letters = log.dead_letters().list().await.unwrap();
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].1.last_error.contains("more headers"),
        "{}",
        letters[0].1.last_error
    );
    assert_eq!(
        sink.received().len(),
        1,
        "nothing of the unsendable event was sent"
    );
}

/// `{"specversion":"1.0",…,"m0":0,"m1":0,…}` with `members` extra members, the last a
/// repeat of the first when `duplicate`.
fn wide_object(members: usize, duplicate: bool) -> Vec<u8> {
    let mut out = String::with_capacity(members * 12 + 100);
    out.push_str(r#"{"specversion":"1.0","id":"wide","source":"/s","type":"t""#);
    for i in 0..members {
        out.push_str(&format!(r#","m{i}":"v""#));
    }
    if duplicate {
        out.push_str(r#","m0":"v""#);
    }
    out.push('}');
    out.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_event_with_200000_members_is_refused_at_once_while_probes_answer() {
    let t = TestServer::start("").await;
    let livez = format!("http://{}/livez", t.server().admin_addr);
    for duplicate in [false, true] {
        let body = wide_object(200_000, duplicate);
        assert!(body.len() > 2_000_000);
        let started = Instant::now();
        let big = t.post(
            "/",
            &[("content-type", "application/cloudevents+json")],
            body,
        );
        let probes = async {
            let client = reqwest_like();
            let mut slowest = Duration::ZERO;
            for _ in 0..10 {
                let asked = Instant::now();
                let r = client.get(livez.parse().unwrap()).await.unwrap();
                assert_eq!(r.status(), 200);
                slowest = slowest.max(asked.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            slowest
        };
        let (r, slowest_probe) = tokio::join!(big, probes);
        let took = started.elapsed();
        assert_eq!(r.status, 400, "{:?}", r.body);
        if duplicate {
            // The duplicate comes after the members that pass the limit: the limit of
            // members or the duplicate, whichever the decoder meets, is named.
            let p = r.json();
            assert!(
                p["limit"] == "ingress.maxAttributes" || p["attribute"] == "m0",
                "{p}"
            );
        }
        // Seconds, not the minute a check of each member against all earlier ones took.
        assert!(took < Duration::from_secs(10), "refused after {took:?}");
        assert!(
            slowest_probe < Duration::from_secs(2),
            "/livez took {slowest_probe:?}"
        );
    }
    assert_eq!(t.post_json(&minimal("after")).await.status, 202);
}

fn reqwest_like() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// The first error `check` gives for a subscription whose filter is `cel`.
fn cel_error(cel: &str) -> String {
    common::subscription_errors(&format!(
        "  filter:\n    cel: '{cel}'\n  sinks:\n    - uri: http://127.0.0.1:1/\n"
    ))[0]
        .to_string()
}

/// `range` mapped `levels` deep.
fn nested_maps(range: &str, levels: usize) -> String {
    (0..levels).fold("x0".to_string(), |inner, i| {
        format!("{range}.map(x{i}, {inner})")
    })
}

#[test]
fn cel_filters_too_deep_or_too_long_are_check_errors_naming_the_limit() {
    let table = [
        (
            vec!["1"; 2_000].join(" + ") + " > 0",
            "deeper than 64 levels",
        ),
        (vec!["1"; 8_000].join(" + ") + " > 0", "limit is 16384"),
        // Ten elements mapped eight deep: 10^8 steps for any event.
        (
            format!("size({}) > 0", nested_maps("[1,2,3,4,5,6,7,8,9,10]", 8)),
            "more than 4 comprehensions",
        ),
        // Forty elements mapped four deep: 2.56 million steps for any event.
        (
            format!(
                "size({}) > 0",
                nested_maps(&format!("[{}]", vec!["1"; 40].join(",")), 4)
            ),
            "too costly",
        ),
        ("subject.matches(\"(\")".to_string(), "not a valid regex"),
    ];
    for (cel, want) in table {
        let error = cel_error(&cel);
        assert!(error.contains(want), "{want}: {error}");
    }
}

#[tokio::test]
async fn an_expensive_filter_is_an_error_for_its_subscription_while_the_others_route() {
    let sink = TestSink::start(Vec::new(), Answer::status(200)).await;
    let costly = "data.items.exists(a, data.items.exists(b, data.items.exists(c, a + b + c < 0)))";
    let subs = [
        subscription(
            "costly",
            &format!(
                "  filter:\n    cel: '{costly}'\n  sinks:\n    - uri: {}\n",
                sink.url("/costly")
            ),
        ),
        subscription(
            "plain",
            &format!("  sinks:\n    - uri: {}\n", sink.url("/plain")),
        ),
    ]
    .concat();
    let t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    // A deep expression written into the folder of a running broker is refused by the
    // reload, which keeps the subscriptions it has.
    let deep = vec!["1"; 8_000].join(" + ") + " > 0";
    t.write_subscriptions(
        "deep.yaml",
        &subscription(
            "deep",
            &format!(
                "  filter:\n    cel: '{deep}'\n  sinks:\n    - uri: {}\n",
                sink.url("/deep")
            ),
        ),
    );
    assert!(t.server().reloader.reload().is_err());
    let mut event = minimal("wide");
    // 300 items: 300^3 steps, far past the budget; 3 items: well inside it.
    event["data"] = json!({ "items": (0..300).collect::<Vec<_>>() });
    let started = Instant::now();
    assert_eq!(t.post_json(&event).await.status, 202);
    let mut small = minimal("small");
    small["data"] = json!({ "items": [-5, 1, 2] });
    assert_eq!(t.post_json(&small).await.status, 202);
    let got = sink.wait_for(3, WAIT).await;
    let paths: Vec<(&str, &str)> = got
        .iter()
        .map(|r| (r.path.as_str(), r.header("ce-id").unwrap()))
        .collect();
    assert!(paths.contains(&("/plain", "wide")), "{paths:?}");
    assert!(paths.contains(&("/plain", "small")), "{paths:?}");
    assert!(paths.contains(&("/costly", "small")), "{paths:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let stats = t.server().routing.stats("costly");
    assert_eq!(stats.errors.load(std::sync::atomic::Ordering::Relaxed), 1);
    // explain says why.
    let set = t.server().routing.current();
    let stored =
        switchyard::event::json::decode_event(&serde_json::to_vec(&event).unwrap().into()).unwrap();
    let verdicts =
        switchyard::router::explain::explain(set.routes().map(|r| &r.subscription), &stored);
    let costly = verdicts
        .iter()
        .find(|v| v.subscription == "costly")
        .unwrap();
    let (part, result) = &costly.parts[0];
    assert_eq!(part, "cel");
    assert!(
        matches!(result, switchyard::expr::filter::PartResult::Error(e) if e.contains("budget")),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_source_longer_than_64_kib_is_deduplicated_by_its_digest_and_fails_no_one_else() {
    let mut t = TestServer::start("").await;
    t.restart_with(|c| c.ingress.max_attribute_bytes = 1 << 20)
        .await;
    let mut long = minimal("long");
    long["source"] = json!(format!("/{}", "s".repeat(70 * 1024)));
    let (one, two) = (minimal("other-1"), minimal("other-2"));
    let (a, b, c) = tokio::join!(t.post_json(&long), t.post_json(&one), t.post_json(&two));
    for r in [&a, &b, &c] {
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
    assert_eq!(t.post_json(&long).await.status, 202);
    let records = t.records("default").await;
    assert_eq!(records.len(), 3, "the repeat is a duplicate");
}

/// Opens `n` connections that each send `first` and then nothing more.
async fn silent_connections(
    addr: std::net::SocketAddr,
    n: usize,
    first: &'static [u8],
) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt as _;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(first).await.unwrap();
        out.push(s);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_http2_connections_are_cut_and_a_producer_gets_through() {
    let t = TestServer::start_with(|c| {
        c.ingress.header_read_timeout = Duration::from_millis(400);
        c.ingress.max_connections = 16;
    })
    .await;
    // The HTTP/2 preface and an empty SETTINGS frame, then silence: more of them than
    // there are connection slots.
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let _silent = silent_connections(t.server().ingress_addr, 24, PREFACE).await;
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), t.post_json(&minimal("through")))
        .await
        .expect("a producer is served while silent HTTP/2 connections are open");
    assert_eq!(r.status, 202);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_slower_than_the_minimum_rate_are_cut_and_a_producer_gets_through() {
    let t = TestServer::start_with(|c| {
        c.ingress.max_connections = 8;
        c.ingress.min_body_rate = 1024;
        c.ingress.min_body_rate_after = Duration::from_millis(500);
    })
    .await;
    let addr = t.server().ingress_addr;
    // More tricklers than slots, each a byte every 100 ms.
    let tricklers: Vec<_> = (0..12)
        .map(|_| {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/cloudevents+json\r\ncontent-length: 100000\r\n\r\n{").await.unwrap();
                let mut answer = Vec::new();
                for _ in 0..100 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if s.write_all(b" ").await.is_err() {
                        break;
                    }
                    let mut buf = [0u8; 1024];
                    if let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
                    {
                        answer.extend_from_slice(&buf[..n]);
                        break;
                    }
                }
                String::from_utf8_lossy(&answer).into_owned()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), t.post_json(&minimal("through")))
        .await
        .expect("a producer is served while bodies trickle");
    assert_eq!(r.status, 202);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let mut cut = 0;
    for tr in tricklers {
        let answer = tr.await.unwrap();
        if answer.starts_with("HTTP/1.1 408") {
            assert!(answer.contains("ingress.minBodyRate"), "{answer}");
            cut += 1;
        }
    }
    assert!(cut >= 8, "{cut} tricklers were cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_under_way_are_bounded_in_all_and_the_request_past_it_gets_503() {
    let t = TestServer::start_with(|c| c.ingress.max_buffered_body_bytes = 3 << 20).await;
    let addr = t.server().ingress_addr;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // Each sends 1 MiB of a 4 MiB body and waits.
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/cloudevents+json\r\ncontent-length: 4000000\r\n\r\n").await.unwrap();
        s.write_all(&vec![b' '; 1 << 20]).await.unwrap();
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await
        {
            refused = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            break;
        }
        held.push(s);
    }
    let answer = refused.expect("a body past the budget is refused");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("ingress.maxBufferedBodyBytes"), "{answer}");
    assert_eq!(held.len(), 3);
    drop(held);
    assert_eq!(t.post_json(&minimal("after")).await.status, 202);
}

/// `GET` on the admin listener; the body as text.
async fn admin_get(t: &TestServer, path: &str) -> (u16, String) {
    let url: hyper::Uri = format!("http://{}{path}", t.server().admin_addr)
        .parse()
        .unwrap();
    let r = reqwest_like().get(url).await.unwrap();
    let status = r.status().as_u16();
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn events_the_ingress_accepts_are_shown_exactly_by_the_admin_api() {
    let t = TestServer::start("").await;
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let digits = "9".repeat(5_000);
    let cases = [
        deep.as_str(),
        "1e999",
        digits.as_str(),
        r#""\ud800""#,
        r#"{"a":1}"#,
    ];
    for (i, data) in cases.iter().enumerate() {
        let body = format!(
            r#"{{"specversion":"1.0","id":"odd-{i}","source":"/s","type":"t","data":{data}}}"#
        );
        let r = t
            .post(
                "/",
                &[("content-type", "application/cloudevents+json")],
                body,
            )
            .await;
        assert_eq!(r.status, 202, "{data:.40}: {:?}", r.body);
    }
    let (status, page) = admin_get(&t, "/api/v1/brokers/default/events?limit=10").await;
    assert_eq!(status, 200);
    assert!(!page.contains("\"event\":null"), "{page:.200}");
    for data in cases {
        assert!(
            page.contains(&format!(r#""data":{data}"#)),
            "{data:.40} is shown"
        );
    }
    let (status, one) = admin_get(&t, "/api/v1/brokers/default/events/2").await;
    assert_eq!(status, 200);
    assert!(one.contains(r#""data":1e999"#), "{one}");
}

#[tokio::test]
async fn a_listing_of_large_events_is_one_bounded_page() {
    let t = TestServer::start("").await;
    let big = "x".repeat(3 << 20);
    for i in 0..6 {
        let mut e = minimal(&format!("big-{i}"));
        e["data"] = json!(big);
        assert_eq!(t.post_json(&e).await.status, 202);
    }
    let (status, page) = admin_get(&t, "/api/v1/brokers/default/events?limit=1000").await;
    assert_eq!(status, 200);
    let events: Vec<Value> = serde_json::from_str(&page).unwrap();
    // The page stops after the event that takes it past 8 MiB.
    assert_eq!(events.len(), 3, "{} bytes", page.len());
    assert!(page.len() < 12 << 20, "{} bytes", page.len());
    let last = events[2]["seq"].as_u64().unwrap();
    let (_, next) = admin_get(
        &t,
        &format!("/api/v1/brokers/default/events?limit=1000&after={last}"),
    )
    .await;
    let next: Vec<Value> = serde_json::from_str(&next).unwrap();
    assert_eq!(next.len(), 3);
    assert_eq!(next[0]["event"]["id"], "big-3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_to_one_host_share_a_bounded_number_of_connections() {
    // A sink that accepts connections and never answers: every delivery holds one.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            open.push(s);
        }
    });
    let subs: String = (0..300)
        .map(|i| subscription(&format!("s{i}"), &format!("  sinks:\n    - uri: {url}\n")))
        .collect();
    let t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    assert_eq!(t.post_json(&minimal("fan")).await.status, 202);
    let count = || accepted.load(std::sync::atomic::Ordering::Relaxed);
    common::wait_until("the host's connections are all open", async || {
        count() >= switchyard::delivery::client::MAX_PER_HOST
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(), switchyard::delivery::client::MAX_PER_HOST);
    hold.abort();
}

#[tokio::test]
async fn credentials_in_a_sink_uri_appear_neither_in_metrics_nor_in_the_dead_letter() {
    let sink = TestSink::start(Vec::new(), Answer::status(400)).await;
    let dls = TestSink::start(Vec::new(), Answer::status(200)).await;
    let uri = format!("{}?token=s3cret-value", sink.url("/hook"));
    let subs = subscription(
        "s",
        &format!(
            "  sinks:\n    - uri: {uri}\n  delivery:\n    deadLetterSink: {{ uri: {} }}\n",
            dls.url("/")
        ),
    );
    let t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    assert_eq!(t.post_json(&minimal("c")).await.status, 202);
    let got = dls.wait_for(1, WAIT).await;
    let dest = got[0].header("ce-knativeerrordest").unwrap();
    assert!(!dest.contains("s3cret"), "{dest}");
    assert!(dest.contains("token=redacted"), "{dest}");
    assert_eq!(sink.received().len(), 1, "the sink itself was called");
    let (_, metrics) = admin_get(&t, "/metrics").await;
    assert!(
        metrics.contains("token=redacted"),
        "the lane's series are there"
    );
    assert!(!metrics.contains("s3cret"));
}

#[tokio::test]
async fn requests_hyper_cannot_parse_get_a_problem_json_answer() {
    let t = TestServer::start("").await;
    let addr = t.server().ingress_addr;
    let many: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
    let big = format!("x-big: {}\r\n", "a".repeat(100 * 1024));
    let heads = [
        (
            "two lengths",
            "content-length: 2\r\ncontent-length: 3\r\n".to_string(),
            400,
        ),
        ("negative length", "content-length: -1\r\n".to_string(), 400),
        ("signed length", "content-length: +2\r\n".to_string(), 400),
        (
            "identity",
            "transfer-encoding: identity\r\n".to_string(),
            400,
        ),
        (
            "NUL byte",
            "x-nul: a\0b\r\ncontent-length: 0\r\n".to_string(),
            400,
        ),
        ("120 headers", many, 431),
        ("a 100 KiB header", big, 431),
    ];
    for (what, headers, status) in heads {
        let request = format!("POST / HTTP/1.1\r\nhost: x\r\n{headers}\r\n{{}}");
        let answer = tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(request.as_bytes());
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
        .await
        .unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {answer}"
        );
        assert!(
            answer.contains("content-type: application/problem+json"),
            "{what}: {answer}"
        );
        let body = answer.split_once("\r\n\r\n").unwrap().1;
        let p: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
        assert_eq!(p["status"], status, "{what}");
    }
    assert_eq!(t.post_json(&minimal("after")).await.status, 202);
}

/// This process's resident memory, from /proc/self/status.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_share_one_connection_body_budget() {
    use futures_util::StreamExt as _;
    use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
    let t = TestServer::start_with(|c| c.ingress.max_connection_body_bytes = 8 << 20).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<BoxBody<bytes::Bytes, std::convert::Infallible>>();
    // 16 streams on one connection, each sending 4 MiB of a body it never ends.
    let chunk = bytes::Bytes::from(vec![b' '; 4 << 20]);
    let before = rss_bytes();
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let frames =
            futures_util::stream::once(std::future::ready(Ok::<_, std::convert::Infallible>(
                hyper::body::Frame::data(chunk.clone()),
            )))
            .chain(futures_util::stream::pending());
        let req = http::Request::post(t.url("/"))
            .header("content-type", "application/cloudevents+json")
            .body(BodyExt::boxed(StreamBody::new(frames)))
            .unwrap();
        let client = client.clone();
        requests.spawn(async move {
            let r = client.request(req).await.ok()?;
            let status = r.status().as_u16();
            let body = r.into_body().collect().await.ok()?.to_bytes();
            Some((status, String::from_utf8_lossy(&body).into_owned()))
        });
    }
    let mut refused = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(done)) = tokio::time::timeout_at(deadline, requests.join_next()).await {
        if let Some((status, body)) = done.unwrap() {
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("ingress.maxConnectionBodyBytes"), "{body}");
            refused += 1;
        }
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(refused >= 12, "{refused} streams were refused");
    // The connection's 8 MiB, HTTP/2's windows and the client's own buffers; the
    // streams' 64 MiB would be buffered without the budget.
    assert!(
        grown < 40 << 20,
        "resident memory grew by {} MiB",
        grown >> 20
    );
    requests.abort_all();
    assert_eq!(t.post_json(&minimal("after")).await.status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_that_answers_pings_is_closed_at_the_idle_limit() {
    let t = TestServer::start_with(|c| c.ingress.header_read_timeout = Duration::from_millis(400))
        .await;
    let stream = tokio::net::TcpStream::connect(t.server().ingress_addr)
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Full<bytes::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
    let ended = tokio::spawn(conn);
    let req = http::Request::post(t.url("/"))
        .header("content-type", "application/cloudevents+json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            serde_json::to_vec(&minimal("h2")).unwrap(),
        )))
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 202);
    // The client's connection task answers the server's pings; with no stream open,
    // the server closes the connection once it has been idle for headerReadTimeout.
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .expect("the idle connection was closed by the server")
        .unwrap()
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_the_idlest_connection_makes_room() {
    let t = TestServer::start_with(|c| {
        c.ingress.max_connections = 4;
        c.ingress.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let addr = t.server().ingress_addr;
    // Four kept-alive connections, each idle after one request: every slot is taken,
    // and none would be cut for 30 s.
    let mut idle = Vec::new();
    for i in 0..4 {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = minimal(&format!("keep-{i}")).to_string();
        s.write_all(format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/cloudevents+json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes()).await.unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 202"));
        idle.push(s);
    }
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), t.post_json(&minimal("new")))
        .await
        .expect("the new client got a slot");
    assert_eq!(r.status, 202);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
