//! The `tekton-to-cdevents` preset against the Tekton corpus of tests/fixtures/tekton:
//! what it makes of each request is checked against the CDEvents v0.5.1 JSON schemas of
//! tests/fixtures/cdevents/schemas (formats asserted) and against the fixture it came from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::Value;
use switchyard::event::{self, AttrValue, Data, Event};
use switchyard::expr::transform::tekton::{self, Options, Translated};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The fixtures that have a CDEvents counterpart: file number, schema, CDEvents type and
/// the outcome a finished event must carry.
const TRANSLATABLE: [(&str, &str, &str, Option<&str>); 6] = [
    (
        "02",
        "taskrunstarted",
        "dev.cdevents.taskrun.started.0.3.0",
        None,
    ),
    (
        "05",
        "taskrunfinished",
        "dev.cdevents.taskrun.finished.0.3.0",
        Some("success"),
    ),
    (
        "06",
        "taskrunfinished",
        "dev.cdevents.taskrun.finished.0.3.0",
        Some("failure"),
    ),
    (
        "07",
        "pipelinerunstarted",
        "dev.cdevents.pipelinerun.started.0.3.0",
        None,
    ),
    (
        "09",
        "pipelinerunfinished",
        "dev.cdevents.pipelinerun.finished.0.3.0",
        Some("success"),
    ),
    (
        "10",
        "pipelinerunfinished",
        "dev.cdevents.pipelinerun.finished.0.3.0",
        Some("failure"),
    ),
];

/// The fixtures without one: taskrun queued, running and unknown, pipelinerun running.
const SKIPPED: [&str; 4] = ["01", "03", "04", "08"];

/// One Tekton request of the corpus: the fixture as written and the event it is.
struct Fixture {
    file: String,
    raw: Value,
    event: Event,
}

impl Fixture {
    fn from_raw(file: &str, raw: Value) -> Fixture {
        let bytes = serde_json::to_vec(&raw).unwrap();
        let event = event::from_file(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        Fixture {
            file: file.to_owned(),
            raw,
            event,
        }
    }

    fn header(&self, name: &str) -> &str {
        self.raw["headers"][name].as_str().unwrap()
    }

    /// The body's run object (`taskRun` or `pipelineRun`).
    fn run(&self) -> &Value {
        let body = self.raw["body"].as_object().unwrap();
        assert_eq!(body.len(), 1, "{}", self.file);
        body.values().next().unwrap()
    }
}

/// Every fixture that index.json lists, in its order.
fn tekton_fixtures() -> Vec<Fixture> {
    let dir = fixtures().join("tekton");
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let fixtures: Vec<Fixture> = index
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let file = entry["file"].as_str().unwrap();
            let raw = serde_json::from_slice(&std::fs::read(dir.join(file)).unwrap()).unwrap();
            Fixture::from_raw(file, raw)
        })
        .collect();
    assert_eq!(fixtures.len(), 10);
    fixtures
}

fn fixture(number: &str) -> Fixture {
    tekton_fixtures()
        .into_iter()
        .find(|f| f.file.starts_with(number))
        .unwrap()
}

/// The pipelinerun.queued event the corpus lacks, as its README describes it: 07 with
/// the queued type and an empty status.
fn queued_fixture() -> Fixture {
    let mut raw = fixture("07").raw;
    raw["headers"]["Ce-Type"] = "dev.tekton.event.pipelinerun.queued.v1".into();
    raw["headers"]["Ce-Id"] = "0d6e2f4c-3b1a-4e5f-9a8b-7c6d5e4f3a2b".into();
    raw["body"]["pipelineRun"]["status"] = serde_json::json!({});
    Fixture::from_raw("07-as-queued", raw)
}

/// A validator per CDEvents schema, by file stem, with the links/ schemas registered so
/// that `$ref: links/embeddedlinksarray` resolves, and `format` asserted.
fn validators() -> HashMap<String, jsonschema::Validator> {
    let read = |p: &Path| -> Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let dir = fixtures().join("cdevents/schemas");
    let mut links = Vec::new();
    for entry in std::fs::read_dir(dir.join("links")).unwrap() {
        let schema = read(&entry.unwrap().path());
        links.push((schema["$id"].as_str().unwrap().to_owned(), schema));
    }
    assert_eq!(links.len(), 8);
    let registry = jsonschema::Registry::new()
        .extend(links)
        .unwrap()
        .prepare()
        .unwrap();
    let mut validators = HashMap::new();
    for name in [
        "pipelinerunqueued",
        "pipelinerunstarted",
        "pipelinerunfinished",
        "taskrunstarted",
        "taskrunfinished",
    ] {
        let schema = read(&dir.join(format!("{name}.json")));
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .with_registry(&registry)
            .should_validate_formats(true)
            .offline()
            .build(&schema)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        validators.insert(name.to_owned(), validator);
    }
    validators
}

fn assert_valid(validators: &HashMap<String, jsonschema::Validator>, schema: &str, doc: &Value) {
    let errors: Vec<String> = validators[schema]
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{schema}: {errors:#?}\n{doc:#}");
}

/// The CDEvent of a translated event, or a panic naming why there is none.
fn translate(event: &Event, options: &Options) -> Event {
    match tekton::to_cdevents(event, options) {
        Ok(Translated::Event(e)) => e,
        other => panic!("{} not translated: {other:?}", event.ty()),
    }
}

/// The CloudEvent's data as the CDEvent document, checking that it is JSON-typed.
fn document(e: &Event) -> Value {
    assert_eq!(e.datacontenttype(), Some("application/json"));
    let Some(Data::Json(bytes)) = e.data() else {
        panic!("data is not JSON: {:?}", e.data())
    };
    serde_json::from_slice(bytes).unwrap()
}

fn is_uuid_v5(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
        && b[14] == b'5'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

/// Checks a translated fixture against its schema and its Tekton event.
fn check(
    validators: &HashMap<String, jsonschema::Validator>,
    f: &Fixture,
    (schema, ty, outcome): (&str, &str, Option<&str>),
) {
    let name = &f.file;
    let e = translate(&f.event, &Options::default());
    let doc = document(&e);
    assert_valid(validators, schema, &doc);

    let attributes: Vec<&str> = e.attributes().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        attributes,
        [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "datacontenttype"
        ],
        "{name}"
    );
    let (context, subject, content) =
        (&doc["context"], &doc["subject"], &doc["subject"]["content"]);
    assert_eq!(context["specversion"], "0.5.1", "{name}");
    assert_eq!(context["type"], ty, "{name}");
    assert_eq!(e.ty(), ty, "{name}");
    assert_eq!(context["source"], f.header("Ce-Source"), "{name}");
    assert_eq!(
        e.get("source"),
        Some(&AttrValue::UriRef(f.header("Ce-Source").into()))
    );
    assert_eq!(context["timestamp"], f.header("Ce-Time"), "{name}");
    assert_eq!(
        e.get("time"),
        Some(&AttrValue::Timestamp(f.header("Ce-Time").into()))
    );
    assert_eq!(context["id"], e.id(), "{name}");
    assert!(is_uuid_v5(e.id()), "{name}: {}", e.id());

    let run = f.run();
    let (ns, run_name) = (
        run["metadata"]["namespace"].as_str().unwrap(),
        run["metadata"]["name"].as_str().unwrap(),
    );
    assert_eq!(subject["id"], format!("{ns}/{run_name}"), "{name}");
    assert_eq!(e.get_str("subject"), subject["id"].as_str(), "{name}");
    let resource = if ty.contains(".taskrun.") {
        let task = run["spec"]["taskRef"]["name"].as_str().unwrap();
        assert_eq!(content["taskName"], task, "{name}");
        match run["metadata"]["labels"]["tekton.dev/pipelineRun"].as_str() {
            Some(parent) => assert_eq!(content["pipelineRun"]["id"], format!("{ns}/{parent}")),
            None => assert!(content.get("pipelineRun").is_none(), "{name}"),
        }
        "taskruns"
    } else {
        let pipeline = run["spec"]["pipelineRef"]["name"].as_str().unwrap();
        assert_eq!(content["pipelineName"], pipeline, "{name}");
        "pipelineruns"
    };
    assert_eq!(
        content["uri"],
        format!("https://kubernetes.default.svc/apis/tekton.dev/v1/namespaces/{ns}/{resource}/{run_name}"),
        "{name}"
    );

    assert_eq!(content["outcome"].as_str(), outcome, "{name}");
    match outcome {
        Some("failure") => {
            let message = run["status"]["conditions"][0]["message"].as_str().unwrap();
            assert!(!message.is_empty(), "{name}");
            assert_eq!(content["errors"], message.trim_end(), "{name}");
        }
        _ => assert!(content.get("errors").is_none(), "{name}"),
    }
}

#[test]
fn every_translatable_tekton_fixture_is_a_valid_cdevent() {
    let validators = validators();
    let all = tekton_fixtures();
    for f in &all {
        let number = &f.file[..2];
        let listed = TRANSLATABLE.iter().any(|t| t.0 == number) || SKIPPED.contains(&number);
        assert!(listed, "{} is in neither list", f.file);
    }
    for (number, schema, ty, outcome) in TRANSLATABLE {
        let f = all.iter().find(|f| f.file.starts_with(number)).unwrap();
        check(&validators, f, (schema, ty, outcome));
    }
    check(
        &validators,
        &queued_fixture(),
        (
            "pipelinerunqueued",
            "dev.cdevents.pipelinerun.queued.0.3.0",
            None,
        ),
    );
}

#[test]
fn run_states_without_a_cdevents_counterpart_are_skipped() {
    for f in tekton_fixtures() {
        if !SKIPPED.contains(&&f.file[..2]) {
            continue;
        }
        match tekton::to_cdevents(&f.event, &Options::default()) {
            Ok(Translated::Skipped(reason)) => {
                assert!(reason.contains(f.event.ty()), "{}: {reason}", f.file)
            }
            other => panic!("{}: {other:?}", f.file),
        }
    }
}

#[test]
fn other_event_types_are_skipped_whatever_their_data() {
    for ty in [
        "dev.tekton.event.customrun.started.v1",
        "dev.tekton.event.run.successful.v1",
        "dev.tekton.event.pipelinerun.unknown.v1",
        "com.example.order.created",
    ] {
        let e = tekton_event(ty, "e-1", b"not json at all");
        let got = tekton::to_cdevents(&e, &Options::default());
        assert!(matches!(got, Ok(Translated::Skipped(_))), "{ty}: {got:?}");
    }
}

#[test]
fn the_id_is_a_uuid_v5_of_the_tekton_source_and_id() {
    let f = fixture("10");
    let first = translate(&f.event, &Options::default());
    let again = translate(&f.event, &Options::default());
    assert_eq!(
        first, again,
        "a redelivery must translate to the same event"
    );
    let name = format!("{}#{}", f.header("Ce-Source"), f.header("Ce-Id"));
    assert_eq!(
        first.id(),
        tekton::uuid_v5(tekton::NAMESPACE_URL, name.as_bytes())
    );
    assert!(is_uuid_v5(first.id()), "{}", first.id());

    let mut raw = f.raw.clone();
    raw["headers"]["Ce-Id"] = "another-delivery".into();
    let other = translate(
        &Fixture::from_raw("10-other-id", raw).event,
        &Options::default(),
    );
    assert_ne!(other.id(), first.id());
    assert!(is_uuid_v5(other.id()), "{}", other.id());
    assert_eq!(document(&other)["context"]["id"], other.id());
}

#[test]
fn the_dashboard_url_option_links_the_dashboard_page() {
    let validators = validators();
    let options = Options {
        dashboard_url: Some("https://tekton.example.com/".into()),
    };
    let pipeline = translate(&fixture("10").event, &options);
    let doc = document(&pipeline);
    assert_valid(&validators, "pipelinerunfinished", &doc);
    assert_eq!(
        doc["subject"]["content"]["uri"],
        "https://tekton.example.com/#/namespaces/ee-cd/pipelineruns/build-package-tikv-tikv-linux-9bn55"
    );
    let task = translate(&fixture("02").event, &options);
    let doc = document(&task);
    assert_valid(&validators, "taskrunstarted", &doc);
    assert_eq!(
        doc["subject"]["content"]["uri"],
        "https://tekton.example.com/#/namespaces/ee-cd/taskruns/build-package-pingcap-tidb-linux-2hwws-build-images-6tm9r"
    );
}

#[test]
fn the_schemas_reject_a_bad_uri_timestamp_or_extra_field() {
    let validators = validators();
    let good = document(&translate(&fixture("09").event, &Options::default()));
    assert_valid(&validators, "pipelinerunfinished", &good);
    let validator = &validators["pipelinerunfinished"];
    for (pointer, value) in [
        ("/subject/content/uri", Value::from("not a uri")),
        ("/context/timestamp", Value::from("yesterday")),
        ("/subject/content/outcome", Value::from("maybe")),
    ] {
        let mut bad = good.clone();
        *bad.pointer_mut(pointer).unwrap() = value;
        assert!(!validator.is_valid(&bad), "{pointer} accepted");
    }
    let mut extra = good.clone();
    extra["subject"]["content"]["taskName"] = "x".into();
    assert!(!validator.is_valid(&extra), "extra content key accepted");
}

fn tekton_event(ty: &str, id: &str, data: &[u8]) -> Event {
    let attributes = vec![
        ("specversion".to_owned(), AttrValue::String("1.0".into())),
        ("id".to_owned(), AttrValue::String(id.into())),
        (
            "source".to_owned(),
            AttrValue::UriRef("/apis///namespaces/ns//r".into()),
        ),
        ("type".to_owned(), AttrValue::String(ty.into())),
        (
            "time".to_owned(),
            AttrValue::Timestamp("2024-01-01T00:00:00Z".into()),
        ),
    ];
    Event::new(attributes, Some(Data::Binary(Bytes::copy_from_slice(data)))).unwrap()
}

fn tekton_event_without_time(ty: &str, data: &str) -> Event {
    let (mut attributes, data) = tekton_event(ty, "e-1", data.as_bytes()).into_parts();
    attributes.retain(|(n, _)| n != "time");
    Event::new(attributes, data).unwrap()
}

#[test]
fn a_run_without_a_name_or_json_data_is_an_error() {
    let failed = "dev.tekton.event.pipelinerun.failed.v1";
    let err = tekton::to_cdevents(
        &tekton_event(failed, "e-1", br#"{"pipelineRun": {}}"#),
        &Options::default(),
    )
    .unwrap_err();
    assert_eq!(err, "the PipelineRun has no metadata.name");

    let err = tekton::to_cdevents(&tekton_event(failed, "e-1", b"<html>"), &Options::default())
        .unwrap_err();
    assert!(err.starts_with("the event's data is not JSON"), "{err}");

    let task = br#"{"pipelineRun": {"metadata": {"name": "r", "namespace": "ns"}}}"#;
    let err = tekton::to_cdevents(
        &tekton_event("dev.tekton.event.taskrun.failed.v1", "e-1", task),
        &Options::default(),
    )
    .unwrap_err();
    assert_eq!(err, "the event's data has no taskRun object");

    let no_namespace = br#"{"pipelineRun": {"metadata": {"name": "r"}}}"#;
    let err = tekton::to_cdevents(
        &tekton_event(failed, "e-1", no_namespace),
        &Options::default(),
    )
    .unwrap_err();
    assert_eq!(err, "the PipelineRun has no metadata.namespace");

    let odd = br#"{"pipelineRun": {"metadata": {"name": "a b", "namespace": "ns"}}}"#;
    let err =
        tekton::to_cdevents(&tekton_event(failed, "e-1", odd), &Options::default()).unwrap_err();
    assert_eq!(
        err,
        r#"the PipelineRun's metadata.name "a b" is not a Kubernetes object name"#
    );
}

#[test]
fn without_an_event_time_the_run_gives_the_timestamp() {
    let started = "dev.tekton.event.pipelinerun.started.v1";
    let run = r#"{"pipelineRun": {"metadata": {"name": "r", "namespace": "ns",
        "creationTimestamp": "2024-01-01T00:00:00Z"}, "status": {"startTime": "2024-01-01T00:00:05Z"}}}"#;
    let e = translate(
        &tekton_event_without_time(started, run),
        &Options::default(),
    );
    assert_eq!(e.get_str("time"), Some("2024-01-01T00:00:05Z"));
    assert_eq!(document(&e)["context"]["timestamp"], "2024-01-01T00:00:05Z");

    let bare = r#"{"pipelineRun": {"metadata": {"name": "r", "namespace": "ns"}}}"#;
    let err = tekton::to_cdevents(
        &tekton_event_without_time(started, bare),
        &Options::default(),
    )
    .unwrap_err();
    assert!(err.starts_with("the event has no time"), "{err}");
}

#[test]
fn names_fall_back_from_the_ref_to_the_labels_to_the_run() {
    let content = |ty: &str, body: &str| -> Value {
        let e = translate(
            &tekton_event(ty, "e-1", body.as_bytes()),
            &Options::default(),
        );
        document(&e)["subject"]["content"].clone()
    };
    let started = "dev.tekton.event.taskrun.started.v1";
    let labelled = r#"{"taskRun": {"metadata": {"name": "r", "namespace": "ns", "labels":
        {"tekton.dev/pipelineTask": "build", "tekton.dev/pipelineRun": "p"}}}}"#;
    let c = content(started, labelled);
    assert_eq!(c["taskName"], "build");
    assert_eq!(c["pipelineRun"]["id"], "ns/p");
    let c = content(
        started,
        r#"{"taskRun": {"metadata": {"name": "r", "namespace": "ns"}}}"#,
    );
    assert_eq!(c["taskName"], "r");
    assert!(c.get("pipelineRun").is_none());

    let embedded = r#"{"pipelineRun": {"metadata": {"name": "r", "namespace": "ns",
        "labels": {}}, "spec": {"pipelineSpec": {"tasks": []}}}}"#;
    let c = content("dev.tekton.event.pipelinerun.started.v1", embedded);
    assert_eq!(c["pipelineName"], "r");
}

#[test]
fn a_finished_run_without_a_succeeded_condition_is_an_error_outcome() {
    let validators = validators();
    let body = r#"{"taskRun": {"metadata": {"name": "r", "namespace": "ns"}, "status": {}}}"#;
    let e = translate(
        &tekton_event("dev.tekton.event.taskrun.failed.v1", "e-1", body.as_bytes()),
        &Options::default(),
    );
    let doc = document(&e);
    assert_valid(&validators, "taskrunfinished", &doc);
    assert_eq!(doc["subject"]["content"]["outcome"], "error");
    assert_eq!(
        doc["subject"]["content"]["errors"],
        "the run has no Succeeded condition"
    );
}
