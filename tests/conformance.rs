//! The CloudEvents format conformance suites (cloudevents/conformance, format-tests
//! branch; see tests/fixtures/cloudevents/PROVENANCE.md), run through the real
//! ingress: every valid case is accepted and stored with the golden sample's attributes
//! and data; every invalid case is answered 400 and stores nothing. Both backends.

mod common;

use std::collections::BTreeMap;

use base64::Engine as _;
use common::{read_conformance, Backend, TestServer};
use prost::Message;
use serde_json::{json, Value};
use switchyard::event::proto::cloudevents::cloud_event::cloud_event_attribute_value::Attr;
use switchyard::event::proto::cloudevents::cloud_event::{self, CloudEventAttributeValue};
use switchyard::event::proto::cloudevents::{CloudEvent, CloudEventBatch};
use switchyard::event::validate::parse_rfc3339;
use switchyard::event::Event;

/// An event reduced to what the conformance README says must compare equal: every
/// attribute's value (timestamps as instants) and the data bytes.
type Normal = (BTreeMap<String, String>, Option<Vec<u8>>);

fn normalize(e: &Event) -> Normal {
    let attrs = e
        .attributes()
        .iter()
        .map(|(n, v)| {
            let s = v.to_canonical_string();
            let s = match parse_rfc3339(&s) {
                Ok((secs, nanos)) => format!("instant {secs}.{nanos:09}"),
                Err(_) => s,
            };
            (n.clone(), s)
        })
        .collect();
    (attrs, e.data().map(|d| d.body_bytes().to_vec()))
}

fn golden_attrs(id: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = [
        ("specversion", "1.0"),
        ("id", id),
        ("type", "io.cloudevents.test"),
        ("source", "https://cloudevents.io"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        let v = match parse_rfc3339(v) {
            Ok((secs, nanos)) => format!("instant {secs}.{nanos:09}"),
            Err(_) => v.to_string(),
        };
        m.insert(k.to_string(), v);
    }
    m
}

/// The golden sample events of format/README.md.
fn golden_event(sample: &str) -> Normal {
    match sample {
        "minimal" => (golden_attrs("minimal", &[]), None),
        "minimalWithTime" => (
            golden_attrs("minimalWithTime", &[("time", "2018-04-05T17:31:00Z")]),
            None,
        ),
        "minimalWithRelativeSource" => {
            let mut a = golden_attrs("minimalWithRelativeSource", &[]);
            a.insert("source".into(), "#fragment".into());
            (a, None)
        }
        "allCore" => (
            golden_attrs(
                "allCore",
                &[
                    ("datacontenttype", "text/plain"),
                    ("dataschema", "https://cloudevents.io/dataschema"),
                    ("subject", "tests"),
                    ("time", "2018-04-05T17:31:00Z"),
                ],
            ),
            None,
        ),
        // The README names this sample's id "simpleData"; every format's test file
        // (JSON and protobuf) uses "simpleTextData", which is what is compared.
        "simpleTextData" => (
            golden_attrs("simpleTextData", &[("datacontenttype", "text/plain")]),
            Some(b"Simple text".to_vec()),
        ),
        "allExtensionTypes" => (
            golden_attrs(
                "allExtensionTypes",
                &[
                    ("extinteger", "10"),
                    ("extboolean", "true"),
                    ("extstring", "text"),
                    ("extbinary", "TWE="),
                    ("exttimestamp", "2023-03-31T15:12:00Z"),
                    ("exturi", "https://cloudevents.io"),
                    ("exturiref", "//authority/path"),
                ],
            ),
            None,
        ),
        other => panic!("no golden sample {other}"),
    }
}

fn golden_batch(sample: &str) -> Vec<Normal> {
    match sample {
        "empty" => vec![],
        "minimal" => vec![golden_event("minimal")],
        "minimal2" => vec![golden_event("minimal"), golden_event("minimal")],
        "minimalAndAllCore" => vec![golden_event("minimal"), golden_event("allCore")],
        "minimalAndAllExtensionTypes" => {
            vec![golden_event("minimal"), golden_event("allExtensionTypes")]
        }
        other => panic!("no golden batch {other}"),
    }
}

/// A broker with dedupe off: the suites reuse ids on purpose.
async fn broker(b: Backend) -> TestServer {
    b.start("dedupe:\n  window: 0\n").await
}

async fn stored_since(t: &TestServer, before: usize) -> Vec<Normal> {
    t.records("default").await[before..]
        .iter()
        .map(|r| normalize(&r.event))
        .collect()
}

struct Case {
    id: String,
    valid: bool,
    batch: bool,
    sample: Option<String>,
    body: Vec<u8>,
}

async fn run_cases(b: Backend, content_type: &str, batch_content_type: &str, cases: Vec<Case>) {
    assert!(!cases.is_empty());
    let t = broker(b).await;
    for case in cases {
        let before = t.records("default").await.len();
        let ct = if case.batch {
            batch_content_type
        } else {
            content_type
        };
        let reply = t.post("/", &[("content-type", ct)], case.body).await;
        let stored = stored_since(&t, before).await;
        if case.valid {
            assert_eq!(reply.status, 202, "{}: {:?}", case.id, reply.json());
            let sample = case.sample.as_deref().unwrap();
            let want = if case.batch {
                golden_batch(sample)
            } else {
                vec![golden_event(sample)]
            };
            assert_eq!(
                stored, want,
                "{} stored differently from sample {sample}",
                case.id
            );
        } else {
            assert_eq!(reply.status, 400, "{} was not rejected", case.id);
            assert_eq!(reply.headers["content-type"], "application/problem+json");
            assert!(stored.is_empty(), "{} stored something", case.id);
        }
    }
}

fn json_cases(file: &str) -> Vec<Case> {
    let doc = read_conformance(file);
    let file_type = doc["testType"].as_str().unwrap().to_string();
    doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let ty = t["testType"].as_str().unwrap_or(&file_type);
            let batch = ty.ends_with("Batch");
            let payload = if batch { &t["batch"] } else { &t["event"] };
            Case {
                id: t["id"].as_str().unwrap().to_string(),
                valid: ty.starts_with("Valid"),
                batch,
                sample: t["sampleId"].as_str().map(str::to_string),
                body: serde_json::to_vec(payload).unwrap(),
            }
        })
        .collect()
}

async fn json_format_valid_events_are_stored_as_the_golden_samples(b: Backend) {
    let cases = json_cases("cloudevents/format/json/valid-events.json");
    assert_eq!(cases.len(), 10);
    run_cases(
        b,
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
        cases,
    )
    .await;
}

async fn json_format_invalid_events_are_rejected(b: Backend) {
    let cases = json_cases("cloudevents/format/json/invalid-events.json");
    assert_eq!(cases.len(), 25);
    run_cases(
        b,
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
        cases,
    )
    .await;
}

async fn json_format_batches(b: Backend) {
    let mut cases = json_cases("cloudevents/format/json/valid-batches.json");
    cases.extend(json_cases("cloudevents/format/json/invalid-batches.json"));
    assert_eq!(cases.len(), 8);
    run_cases(
        b,
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
        cases,
    )
    .await;
}

/// Builds a protobuf message from the conformance files' JSON mapping.
fn proto_event(v: &Value) -> CloudEvent {
    let s = |k: &str, alt: &str| {
        v.get(k)
            .or_else(|| v.get(alt))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let b64 = |x: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(x.as_str().unwrap())
            .unwrap()
    };
    let mut msg = CloudEvent {
        id: s("id", "id"),
        source: s("source", "source"),
        spec_version: s("specVersion", "spec_version"),
        r#type: s("type", "type"),
        ..Default::default()
    };
    if let Some(attrs) = v["attributes"].as_object() {
        for (name, value) in attrs {
            let attr =
                value
                    .as_object()
                    .unwrap()
                    .iter()
                    .next()
                    .map(|(kind, x)| match kind.as_str() {
                        "ceBoolean" => Attr::CeBoolean(x.as_bool().unwrap()),
                        "ceInteger" => Attr::CeInteger(x.as_i64().unwrap() as i32),
                        "ceString" => Attr::CeString(x.as_str().unwrap().into()),
                        "ceBytes" => Attr::CeBytes(b64(x).into()),
                        "ceUri" => Attr::CeUri(x.as_str().unwrap().into()),
                        "ceUriRef" => Attr::CeUriRef(x.as_str().unwrap().into()),
                        "ceTimestamp" => {
                            let (seconds, nanos) = parse_rfc3339(x.as_str().unwrap()).unwrap();
                            Attr::CeTimestamp(prost_types::Timestamp {
                                seconds,
                                nanos: nanos as i32,
                            })
                        }
                        other => panic!("unknown attribute kind {other}"),
                    });
            msg.attributes
                .insert(name.clone(), CloudEventAttributeValue { attr });
        }
    }
    if let Some(t) = v.get("textData").or_else(|| v.get("text_data")) {
        msg.data = Some(cloud_event::Data::TextData(t.as_str().unwrap().into()));
    }
    if let Some(b) = v.get("binaryData").or_else(|| v.get("binary_data")) {
        msg.data = Some(cloud_event::Data::BinaryData(b64(b).into()));
    }
    msg
}

fn proto_cases(file: &str) -> Vec<Case> {
    let doc = read_conformance(file);
    doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let (kind, payload) = ["validSingle", "validBatch", "invalidSingle", "invalidBatch"]
                .iter()
                .find_map(|k| t.get(*k).map(|p| (*k, p)))
                .unwrap();
            let batch = kind.ends_with("Batch");
            let body = if batch {
                let events = payload["events"]
                    .as_array()
                    .map(|a| a.iter().map(proto_event).collect())
                    .unwrap_or_default();
                CloudEventBatch { events }.encode_to_vec()
            } else {
                proto_event(payload).encode_to_vec()
            };
            Case {
                id: t["id"].as_str().unwrap().to_string(),
                valid: kind.starts_with("valid"),
                batch,
                sample: t["sampleId"].as_str().map(str::to_string),
                body,
            }
        })
        .collect()
}

async fn protobuf_format_valid_and_invalid_events(b: Backend) {
    let mut cases = proto_cases("cloudevents/format/protobuf/valid-events.json");
    assert_eq!(cases.len(), 6);
    let invalid = proto_cases("cloudevents/format/protobuf/invalid-events.json");
    assert_eq!(invalid.len(), 20);
    cases.extend(invalid);
    run_cases(
        b,
        "application/cloudevents+protobuf",
        "application/cloudevents-batch+protobuf",
        cases,
    )
    .await;
}

async fn protobuf_format_batches(b: Backend) {
    let mut cases = proto_cases("cloudevents/format/protobuf/valid-batches.json");
    cases.extend(proto_cases(
        "cloudevents/format/protobuf/invalid-batches.json",
    ));
    assert_eq!(cases.len(), 7);
    run_cases(
        b,
        "application/cloudevents+protobuf",
        "application/cloudevents-batch+protobuf",
        cases,
    )
    .await;
}

async fn an_event_built_by_the_cloudevents_sdk_is_stored_as_the_sdk_sees_it(b: Backend) {
    use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
    let sdk = EventBuilderV10::new()
        .id("sdk-1")
        .source("https://example.com/sdk")
        .ty("dev.switchyard.sdk")
        .subject("built elsewhere")
        .time("2024-05-06T07:08:09.123Z")
        .extension("attempt", 3i64)
        .data(
            "application/json",
            json!({"hello": "world", "n": [1, 2, 3]}),
        )
        .build()
        .unwrap();
    let t = broker(b).await;
    let reply = t
        .post(
            "/",
            &[("content-type", "application/cloudevents+json")],
            serde_json::to_vec(&sdk).unwrap(),
        )
        .await;
    assert_eq!(reply.status, 202, "{:?}", reply.json());
    let stored = &t.records("default").await[0].event;
    assert_eq!(stored.id(), sdk.id());
    assert_eq!(stored.source(), sdk.source().as_str());
    assert_eq!(stored.ty(), sdk.ty());
    assert_eq!(stored.get_str("subject"), sdk.subject());
    assert_eq!(stored.get("attempt").unwrap().to_canonical_string(), "3");
    // Read back through the SDK: the stored JSON encoding is a valid event to it too.
    let back: cloudevents::Event =
        serde_json::from_slice(&switchyard::event::json::encode_event(stored)).unwrap();
    assert_eq!(back.time(), sdk.time());
    assert_eq!(back.data(), sdk.data());
}

common::backends! {
    json_format_valid_events_are_stored_as_the_golden_samples,
    json_format_invalid_events_are_rejected,
    json_format_batches,
    protobuf_format_valid_and_invalid_events,
    protobuf_format_batches,
    an_event_built_by_the_cloudevents_sdk_is_stored_as_the_sdk_sees_it,
}
