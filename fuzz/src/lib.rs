//! The fuzz targets' bodies, one function per target, so that `tests/fuzz_regressions.rs`
//! in the main crate replays kept inputs through exactly the same code.

use std::sync::OnceLock;

use switchyard::event::{AttrValue, Data, Event};
use switchyard::expr::activation::{self, Needs};
use switchyard::expr::cesql::Expression;
use switchyard::expr::filter::CelFilter;

/// Binary mode: the input is "name: value" lines, a blank line, then the body.
pub fn binary_headers(input: &[u8]) {
    let split = input
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(input.len());
    let (head, body) = input.split_at(split);
    let mut headers = http::HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    let body = bytes::Bytes::copy_from_slice(body.get(2..).unwrap_or_default());
    if let Ok(event) = switchyard::event::binary::decode(&headers, body) {
        // What decodes must encode.
        let _ = switchyard::event::binary::encode(&event);
        let _ = switchyard::event::json::encode_event(&event);
    }
}

/// Structured mode, JSON format: whatever decodes, encodes and decodes again.
pub fn structured_json(input: &[u8]) {
    let body = bytes::Bytes::copy_from_slice(input);
    if let Ok(event) = switchyard::event::json::decode_event(&body) {
        let again = switchyard::event::json::encode_event(&event);
        switchyard::event::json::decode_event(&bytes::Bytes::from(again))
            .expect("an encoded event decodes");
    }
}

/// Batch mode, JSON format.
pub fn batch_json(input: &[u8]) {
    let body = bytes::Bytes::copy_from_slice(input);
    if let Ok(events) = switchyard::event::json::decode_batch(&body) {
        let again = switchyard::event::json::encode_batch(&events);
        let back = switchyard::event::json::decode_batch(&bytes::Bytes::from(again))
            .expect("an encoded batch decodes");
        assert_eq!(back.len(), events.len());
    }
}

/// Structured and batch mode, protobuf format.
pub fn protobuf(input: &[u8]) {
    let body = bytes::Bytes::copy_from_slice(input);
    if let Ok(event) = switchyard::event::protobuf::decode_event(body.clone()) {
        let again = switchyard::event::protobuf::encode_event(&event);
        switchyard::event::protobuf::decode_event(bytes::Bytes::from(again))
            .expect("an encoded event decodes");
    }
    let _ = switchyard::event::protobuf::decode_batch(body);
}

fn defaults() -> &'static switchyard::config::DeliveryConfig {
    static D: OnceLock<switchyard::config::DeliveryConfig> = OnceLock::new();
    D.get_or_init(|| {
        switchyard::config::from_yaml(None, "", &Default::default())
            .expect("the embedded defaults load")
            .delivery
    })
}

/// Subscription files: any text is loaded or refused with errors, never a panic.
pub fn subscription_yaml(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let _ = switchyard::config::subscriptions::from_sources(
        &[("s.yaml".into(), text.to_string())],
        &["default".into()],
        defaults(),
    );
}

/// CEL filters: any expression compiles or is refused, and what compiles is run against
/// an event with attributes, an extension and JSON data.
pub fn cel_filter(input: &[u8]) {
    let Ok(source) = std::str::from_utf8(input) else {
        return;
    };
    let Ok(filter) = CelFilter::compile(source) else {
        return;
    };
    let event = Event::new(
        vec![
            ("specversion".into(), AttrValue::String("1.0".into())),
            ("id".into(), AttrValue::String("fuzz-1".into())),
            ("source".into(), AttrValue::UriRef("/apis/tekton".into())),
            (
                "type".into(),
                AttrValue::String("dev.tekton.event.pipelinerun.failed.v1".into()),
            ),
            (
                "time".into(),
                AttrValue::Timestamp("2026-11-21T10:00:00Z".into()),
            ),
            ("attempt".into(), AttrValue::Integer(3)),
            (
                "datacontenttype".into(),
                AttrValue::String("application/json".into()),
            ),
        ],
        Some(Data::Json(bytes::Bytes::from_static(
            br#"{"pipelineRun":{"metadata":{"namespace":"ci","labels":{"app":"x"}},"status":{"conditions":[{"reason":"Failed"}]}},"n":[1,2.5,-3]}"#,
        ))),
    )
    .expect("a valid event");
    let mut needs = Needs::default();
    needs.add(filter.variables());
    let data = activation::parse_data(&event);
    let base = activation::base();
    let ctx = activation::activation(&base, &event, data.as_ref(), &needs);
    let _ = filter.evaluate(
        &ctx,
        &switchyard::expr::cost::Input::new(&event, data.as_ref()),
    );
}

/// CESQL (`sql` filters): any text compiles or is refused with a column inside it (or
/// just past its end), and what compiles evaluates on an event without panicking.
pub fn cesql(input: &[u8]) {
    let Ok(source) = std::str::from_utf8(input) else {
        return;
    };
    let expr = match Expression::compile(source) {
        Ok(e) => e,
        Err(e) => {
            assert!(
                e.column >= 1 && e.column <= source.chars().count() + 1,
                "{e}"
            );
            return;
        }
    };
    let event = Event::new(
        vec![
            ("specversion".into(), AttrValue::String("1.0".into())),
            ("id".into(), AttrValue::String("fuzz-1".into())),
            ("source".into(), AttrValue::UriRef("/apis/tekton".into())),
            (
                "type".into(),
                AttrValue::String("dev.tekton.event.pipelinerun.failed.v1".into()),
            ),
            ("subject".into(), AttrValue::String("ümlaut 12".into())),
            ("attempt".into(), AttrValue::Integer(3)),
            ("urgent".into(), AttrValue::Boolean(true)),
        ],
        None,
    )
    .expect("a valid event");
    let _ = expr.evaluate(&event);
    let _ = expr.matches(&event);
}
