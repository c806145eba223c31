//! Outbound security: Standard Webhooks signatures checked by an independent
//! implementation, and the addresses deliveries refuse (cloud metadata, the broker's
//! own admin listener). Redirects are shown not followed in tests/delivery.rs.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::sink::{Answer, TestSink};
use common::{minimal, subscription, wait_until, TestServer, T0};
use switchyard::delivery::client::{webhook_headers, Message};
use switchyard::log::LaneId;

const WAIT: Duration = Duration::from_secs(20);
// Two secrets, as during a rotation: the receiver may know either.
const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW: &str = "whsec_dGhlIG5ldyBzZWNyZXQsIGFmdGVyIHJvdGF0aW9u";

#[test]
fn the_signature_matches_the_specifications_example() {
    // The example in the Standard Webhooks specification: this id, timestamp, payload
    // and secret sign to this value.
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(OLD.trim_start_matches("whsec_"))
        .unwrap();
    let message = Message {
        id: "msg_p5jXN8AQM9LWM0D4loKWxJek".into(),
        unix_secs: 1614265330,
        hop: None,
    };
    let headers = webhook_headers(&[key], &message, br#"{"test": 2432232314}"#);
    assert_eq!(
        headers[2],
        (
            "webhook-signature",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_string()
        )
    );
    assert_eq!(headers[1].1, "1614265330");
}

#[tokio::test]
async fn signed_deliveries_verify_with_either_secret_and_keep_their_id_across_retries() {
    // The binary sink answers its first request 503, so there is a retry to compare.
    let retrying = TestSink::start(vec![Answer::status(503)], Answer::status(200)).await;
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let subs = [
        subscription("binary", &format!("  sinks:\n    - uri: {}\n      signing:\n        secrets: [{OLD}, {{ valueFrom: {{ env: SWITCHYARD_TEST_WEBHOOK_SECRET }} }}]\n  delivery: {{ backoffDelay: 10ms }}\n", retrying.url("/binary"))),
        subscription("structured", &format!("  sinks:\n    - uri: {}\n      format: structured\n      signing: {{ secrets: [{NEW}] }}\n", sink.url("/structured"))),
        subscription("plain", &format!("  sinks:\n    - uri: {}\n", sink.url("/plain"))),
    ]
    .concat();
    std::env::set_var("SWITCHYARD_TEST_WEBHOOK_SECRET", NEW);
    let t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    // Receivers check the timestamp against their own clock: bring the broker's to now.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t.clock.advance(Duration::from_nanos(now - T0));

    let mut event = minimal("signed-1");
    event["data"] = serde_json::json!({"pipelineRun": "build-42"});
    assert_eq!(t.post_json(&event).await.status, 202);
    let mut got = sink.wait_for(2, WAIT).await;
    got.extend(retrying.wait_for(2, WAIT).await);
    let at = |path: &str| -> Vec<&common::sink::Received> {
        got.iter().filter(|r| r.path == path).collect()
    };
    let old = standardwebhooks::Webhook::new(OLD).unwrap();
    let new = standardwebhooks::Webhook::new(NEW).unwrap();

    // Binary: the first attempt got 503, the retry 200; both carry the same id.
    let binary = at("/binary");
    assert_eq!(binary.len(), 2, "a 503 and its retry");
    assert_eq!(
        binary[0].header("webhook-id"),
        binary[1].header("webhook-id")
    );
    for r in &binary {
        assert_eq!(r.header("ce-id"), Some("signed-1"));
        old.verify(&r.body, &r.headers)
            .expect("verifies with the old secret");
        new.verify(&r.body, &r.headers)
            .expect("verifies with the new secret");
        let sigs = r.header("webhook-signature").unwrap();
        assert_eq!(
            sigs.split(' ').count(),
            2,
            "one signature per secret: {sigs}"
        );
    }
    // A changed body does not verify.
    let mut tampered = binary[0].body.to_vec();
    tampered[0] ^= 1;
    assert!(old.verify(&tampered, &binary[0].headers).is_err());

    // Structured: the signature covers the whole JSON event.
    let structured = at("/structured");
    assert_eq!(structured.len(), 1);
    new.verify(&structured[0].body, &structured[0].headers)
        .expect("verifies with its secret");
    assert!(old
        .verify(&structured[0].body, &structured[0].headers)
        .is_err());

    // A sink without signing gets no signature headers.
    let plain = at("/plain");
    assert_eq!(plain.len(), 1);
    assert!(plain[0].header("webhook-signature").is_none());
}

#[test]
fn a_bad_signing_secret_is_a_config_error_that_does_not_print_it() {
    let errs = common::subscription_errors(
        "  sinks:\n    - uri: http://x/\n      signing:\n        secrets: [whsec_b2s=, not-a-whsec-hunter2]\n",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].key, "spec.sinks[0].signing.secrets[1]");
    assert!(!errs[0].to_string().contains("hunter2"), "{}", errs[0]);
}

#[test]
fn a_metadata_address_as_a_sink_is_refused_at_load_unless_allowed() {
    let load = |yaml: &str, uri: &str| {
        let c = switchyard::config::from_yaml(None, yaml, &Default::default()).unwrap();
        let text = subscription("s", &format!("  sinks:\n    - uri: {uri}\n"));
        switchyard::config::subscriptions::from_sources(
            &[("s.yaml".into(), text)],
            &["default".into()],
            &c.delivery,
        )
        .map_err(|e| e.0)
    };
    for uri in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
    ] {
        let errs = load("", uri).unwrap_err();
        assert_eq!(
            (errs[0].key.as_str(), errs[0].line),
            ("spec.sinks[0].uri", 7),
            "{uri}: {errs:?}"
        );
        assert!(errs[0].message.contains("metadata"), "{}", errs[0].message);
    }
    let allow = "delivery:\n  allowAddresses: [169.254.169.254]\n";
    assert!(load(allow, "http://169.254.169.254/").is_ok());
    assert!(
        load(allow, "http://[fd00:ec2::254]/").is_err(),
        "only the listed one"
    );
}

#[tokio::test]
async fn a_sink_that_is_the_admin_listener_is_refused_without_a_request() {
    // Subscriptions are read from the test folder, so one can be added while it runs.
    let t = TestServer::start("").await;
    let admin = t.server().admin_addr;
    // A host name, so it is the connected address, not the text, that is checked.
    let uri = format!("http://localhost:{}/api/v1/subscriptions", admin.port());
    t.write_subscriptions(
        "s.yaml",
        &subscription("loop", &format!("  sinks:\n    - uri: {uri}\n")),
    );
    t.server().reloader.reload().unwrap();
    assert_eq!(t.post_json(&minimal("to-admin")).await.status, 202);
    let stats = t
        .server()
        .delivery
        .stats("default", &LaneId::new("loop", &uri));
    wait_until("the event is dead-lettered", async || {
        stats.dead_lettered.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(
        stats.attempts.load(Ordering::Relaxed),
        1,
        "refusal is final"
    );
    // The counter moves before the letter is stored: wait for the letter itself.
    let letters = common::eventually("the dead letter is stored", async || {
        let l = t.server().log.dead_letters().list().await.unwrap();
        (!l.is_empty()).then_some(l)
    })
    .await;
    let letter = &letters[0].1;
    assert!(
        letter.last_error.contains("admin listener"),
        "{}",
        letter.last_error
    );
    // Had the request gone out, the admin listener would have answered it (405).
    assert_eq!(letter.last_status, None, "no answer: nothing was sent");
}

#[tokio::test]
async fn a_header_value_http_cannot_carry_is_a_config_error_naming_the_header_not_the_value() {
    // The usual way in: a token exported with its trailing newline (`echo` without -n),
    // or a secret file with a line break inside. Such a value cannot go on the wire;
    // it used to be left out of every request without a word.
    let secret = "Bearer hunter2-4f1e";
    std::env::set_var("SWITCHYARD_TEST_HEADER_NEWLINE", format!("{secret}\n"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{secret}\nX-Injected: yes\n")).unwrap();
    let errs = common::subscription_errors(&format!(
        "  sinks:\n    - uri: http://x/\n      headers:\n        Authorization: {{ valueFrom: {{ env: SWITCHYARD_TEST_HEADER_NEWLINE }} }}\n        X-Api-Key: {{ valueFrom: {{ file: {} }} }}\n",
        file.display()
    ));
    let found: Vec<(&str, usize)> = errs.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        found,
        [
            ("spec.sinks[0].headers.Authorization", 9),
            ("spec.sinks[0].headers.X-Api-Key", 10)
        ],
        "{errs:?}"
    );
    for e in &errs {
        let printed = e.to_string();
        assert!(printed.starts_with("s.yaml:"), "{printed}");
        assert!(
            printed.contains("not a valid HTTP header value"),
            "{printed}"
        );
        assert!(
            !printed.contains("hunter2"),
            "the secret is printed: {printed}"
        );
    }

    // A running broker re-reads secrets when it reloads: a rotated file that gained a
    // newline is refused the same way, and the running set stays.
    std::fs::write(&file, "good-token\n").unwrap();
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let text = |uri: String| {
        subscription(
            "keyed",
            &format!(
                "  sinks:\n    - uri: {uri}\n      headers:\n        X-Api-Key: {{ valueFrom: {{ file: {} }} }}\n",
                file.display()
            ),
        )
    };
    let t = TestServer::start_with_subscriptions("", &[("s.yaml", &text(sink.url("/a")))]).await;
    std::fs::write(&file, "rotated\ntoken\n").unwrap();
    t.write_subscriptions("s.yaml", &text(sink.url("/b")));
    let errs = t.server().reloader.reload().unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].key, "spec.sinks[0].headers.X-Api-Key");
    assert!(!errs[0].to_string().contains("rotated"), "{}", errs[0]);
    assert_eq!(t.post_json(&minimal("keyed-1")).await.status, 202);
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].path, "/a", "the running set is unchanged");
    assert_eq!(got[0].header("x-api-key"), Some("good-token"));
}
