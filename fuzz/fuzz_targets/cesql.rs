//! CESQL (`sql` filters): any text compiles or is refused with a column inside it (or
//! just past its end), and what compiles evaluates on an event without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchyard::event::{AttrValue, Event};
use switchyard::expr::cesql::Expression;

fuzz_target!(|input: &[u8]| {
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
});
