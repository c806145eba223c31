//! Sink transforms: what a sink is sent instead of the event as it was stored. A
//! transform is either CEL (a `data` expression for the body, an expression per
//! attribute, a `contentType`) over the same variables as filters, or a built-in preset
//! ([`tekton`]). It is compiled when the subscription loads and applied once per
//! delivery, before the first attempt.
//!
//! The body follows the value's type: a map or a list is JSON (`application/json`), a
//! string is text (`text/plain; charset=utf-8`), bytes are sent as they are
//! (`application/octet-stream`), other scalars are JSON, and `null` sends no body.
//! `contentType` overrides the media type. Map keys are written sorted, so the same
//! event always makes the same bytes. An attribute expression that gives `null` removes
//! the attribute. The result is checked as a CloudEvent like an ingress event is.
//! `values` (constants and secrets from the config) are read as `values.<name>`; that
//! name hides an extension attribute called `values`.
//!
//! A transform that fails on an event (a missing field, a value of the wrong type, an
//! invalid result) is an error naming the part at fault: the lane dead-letters the event
//! at once, since every retry would fail the same way.

use std::borrow::Cow;

use std::collections::HashMap;

use bytes::Bytes;
use cel::common::types::{CelMap, CelMapKey, CelString};
use cel::common::value::Val;
use cel::objects::Key;
use cel::Value;

use super::activation::{self, Needs};
use super::cost::Input;
use super::filter::CelFilter;

pub mod tekton;
use crate::event::validate::coerce_known;
use crate::event::{is_json_media_type, AttrValue, Data, Event};

/// The media type of a body made from a map, a list or another JSON value.
pub const JSON: &str = "application/json";
/// The media type of a body made from a string.
pub const TEXT: &str = "text/plain; charset=utf-8";
/// The media type of a body made from bytes.
pub const BYTES: &str = "application/octet-stream";

/// A compiled transform.
#[derive(Debug)]
pub struct Transform {
    kind: Kind,
    needs: Needs,
}

#[derive(Debug)]
enum Kind {
    Cel(Box<Shape>),
    Preset(Preset),
}

/// A CEL transform's parts, each optional.
#[derive(Debug, Default)]
pub struct Shape {
    /// The body.
    pub data: Option<CelFilter>,
    /// Attributes to set (`Some`) or remove (`None`), in config order.
    pub attributes: Vec<(String, Option<CelFilter>)>,
    /// The body's media type, instead of the one its value implies.
    pub content_type: Option<String>,
    /// Named values the expressions read as `values.<name>` (tokens, routing keys, a
    /// dashboard's address): what an expression needs that the event does not hold.
    pub values: Vec<Named>,
}

/// One of a transform's `values`.
#[derive(Debug, Clone)]
pub struct Named {
    pub name: String,
    pub value: String,
    /// Whether it came from a secret (an environment variable or a file): then
    /// `explain` shows it redacted.
    pub secret: bool,
}

/// The built-in transforms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preset {
    /// Tekton's run events as CDEvents.
    TektonToCdevents(tekton::Options),
}

impl Preset {
    /// The name the config uses.
    pub fn name(&self) -> &'static str {
        match self {
            Preset::TektonToCdevents(_) => "tekton-to-cdevents",
        }
    }
}

/// What a transform made of an event.
#[derive(Debug)]
pub enum Shaped<'a> {
    /// The event to send.
    Event(Cow<'a, Event>),
    /// Nothing is sent for this event (a preset has no counterpart for it), and why.
    Skipped(&'static str),
}

/// Why a transform failed on one event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the transform failed: {0}")]
pub struct TransformError(pub String);

thread_local! {
    /// The base context of this thread's transform activations.
    static BASE: cel::Context<'static, 'static> = activation::base();
}

impl Transform {
    /// A CEL transform.
    pub fn cel(shape: Shape) -> Transform {
        let mut needs = Needs::default();
        for program in shape
            .data
            .iter()
            .chain(shape.attributes.iter().filter_map(|(_, p)| p.as_ref()))
        {
            needs.add(program.variables());
        }
        Transform {
            kind: Kind::Cel(Box::new(shape)),
            needs,
        }
    }

    /// A built-in transform.
    pub fn preset(preset: Preset) -> Transform {
        Transform {
            kind: Kind::Preset(preset),
            needs: Needs::default(),
        }
    }

    /// The values that are secrets, for `explain` to redact.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        let values: &[Named] = match &self.kind {
            Kind::Cel(shape) => &shape.values,
            Kind::Preset(_) => &[],
        };
        values.iter().filter(|v| v.secret).map(|v| v.value.as_str())
    }

    /// The preset, when it is one.
    pub fn as_preset(&self) -> Option<&Preset> {
        match &self.kind {
            Kind::Preset(p) => Some(p),
            Kind::Cel(_) => None,
        }
    }

    /// Applies the transform to `event`.
    pub fn apply<'a>(&self, event: &'a Event) -> Result<Shaped<'a>, TransformError> {
        match &self.kind {
            Kind::Preset(Preset::TektonToCdevents(options)) => {
                match tekton::to_cdevents(event, options).map_err(TransformError)? {
                    tekton::Translated::Event(e) => Ok(Shaped::Event(Cow::Owned(e))),
                    tekton::Translated::Skipped(why) => Ok(Shaped::Skipped(why)),
                }
            }
            Kind::Cel(_) => {
                let data = if self.needs.data {
                    activation::parse_data(event)
                } else {
                    None
                };
                BASE.with(|base| {
                    let ctx = activation::activation(base, event, data.as_ref(), &self.needs);
                    self.apply_with(event, &ctx, &Input::new(event, data.as_ref()))
                })
            }
        }
    }

    /// What the transform reads of an event: the activation given to
    /// [`Transform::apply_with`] binds at least this.
    pub fn needs(&self) -> &Needs {
        &self.needs
    }

    /// Applies the transform with an activation already built for `event`, as a caller
    /// that shares one activation between several uses of an event does.
    pub fn apply_with<'a>(
        &self,
        event: &'a Event,
        ctx: &cel::Context,
        input: &Input,
    ) -> Result<Shaped<'a>, TransformError> {
        let Kind::Cel(shape) = &self.kind else {
            return self.apply(event);
        };
        if shape.values.is_empty() {
            return shape
                .apply(event, ctx, input)
                .map(|e| Shaped::Event(Cow::Owned(e)));
        }
        let mut scope = ctx.new_inner_scope();
        let map: HashMap<CelMapKey<'_>, Box<dyn Val + '_>> = shape
            .values
            .iter()
            .map(|v| {
                let value: Box<dyn Val> = Box::new(CelString::from(v.value.clone()));
                (CelMapKey::from(v.name.clone()), value)
            })
            .collect();
        scope.add_variable_as_val("values", Box::new(CelMap::from(map)));
        shape
            .apply(event, &scope, input)
            .map(|e| Shaped::Event(Cow::Owned(e)))
    }
}

impl Shape {
    fn apply(
        &self,
        event: &Event,
        ctx: &cel::Context,
        input: &Input,
    ) -> Result<Event, TransformError> {
        let (mut attributes, mut data) = event.clone().into_parts();
        let mut content_type: Option<String> = None;
        if let Some(program) = &self.data {
            let value = program
                .value(ctx, input)
                .map_err(|e| TransformError(format!("data: {e}")))?;
            let (body, media_type) =
                body(&value).map_err(|e| TransformError(format!("data: {e}")))?;
            data = body;
            content_type = media_type.map(str::to_string);
        }
        for (name, program) in &self.attributes {
            let value = match program {
                None => None,
                Some(p) => attribute(
                    name,
                    &p.value(ctx, input)
                        .map_err(|e| TransformError(format!("attributes.{name}: {e}")))?,
                )
                .map_err(|e| TransformError(format!("attributes.{name}: {e}")))?,
            };
            let at = attributes.iter().position(|(n, _)| n == name);
            match (value, at) {
                (Some(v), Some(i)) => attributes[i].1 = v,
                (Some(v), None) => attributes.push((name.clone(), v)),
                (None, Some(i)) => {
                    attributes.remove(i);
                }
                (None, None) => {}
            }
        }
        if self.content_type.is_some() {
            content_type.clone_from(&self.content_type);
        }
        if self.data.is_some() || self.content_type.is_some() {
            attributes.retain(|(n, _)| n != "datacontenttype");
            if let (Some(t), true) = (content_type, data.is_some()) {
                attributes.push(("datacontenttype".into(), AttrValue::String(t)));
            }
        }
        // A JSON body keeps the JSON form only under a JSON media type; under another
        // it is the bytes of its text, so that every encoding sends it as it is.
        if let Some(Data::Json(b)) = &data {
            let json_typed = attributes
                .iter()
                .find(|(n, _)| n == "datacontenttype")
                .and_then(|(_, v)| v.as_str())
                .is_none_or(is_json_media_type);
            if !json_typed {
                data = Some(Data::Binary(b.clone()));
            }
        }
        Event::new(attributes, data)
            .map_err(|e| TransformError(format!("the result is not a valid CloudEvent: {e}")))
    }
}

/// The body a `data` value makes, and the media type it implies.
fn body(value: &Value) -> Result<(Option<Data>, Option<&'static str>), String> {
    Ok(match value {
        Value::Null => (None, None),
        Value::String(s) => (
            Some(Data::Binary(Bytes::copy_from_slice(s.as_bytes()))),
            Some(TEXT),
        ),
        Value::Bytes(b) => (
            Some(Data::Binary(Bytes::copy_from_slice(b.as_slice()))),
            Some(BYTES),
        ),
        other => {
            let mut out = Vec::with_capacity(256);
            write_json(other, &mut out)?;
            (Some(Data::Json(Bytes::from(out))), Some(JSON))
        }
    })
}

/// Writes a CEL value as JSON: map keys sorted (as text), bytes as base64, timestamps
/// in RFC 3339, durations as seconds with an `s` (the protobuf JSON mapping).
pub fn write_json(value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::UInt(u) => out.extend_from_slice(u.to_string().as_bytes()),
        Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => out.extend_from_slice(n.to_string().as_bytes()),
            None => return Err(format!("{f} is not a number JSON can hold")),
        },
        Value::String(s) => write_str(s, out),
        Value::Bytes(b) => {
            use base64::Engine as _;
            write_str(
                &base64::engine::general_purpose::STANDARD.encode(b.as_slice()),
                out,
            )
        }
        Value::Timestamp(t) => write_str(&t.to_rfc3339(), out),
        Value::Duration(d) => {
            let secs = d.num_milliseconds() as f64 / 1000.0;
            write_str(&format!("{secs}s"), out)
        }
        Value::List(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(item, out)?;
            }
            out.push(b']');
        }
        Value::Map(map) => {
            let mut entries: Vec<(Cow<str>, &Value)> =
                map.map.iter().map(|(k, v)| (key_text(k), v)).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(k, out);
                out.push(b':');
                write_json(v, out)?;
            }
            out.push(b'}');
        }
        other => return Err(format!("a {:?} cannot be sent", other.type_of())),
    }
    Ok(())
}

fn key_text(key: &Key) -> Cow<'_, str> {
    match key {
        Key::String(s) => Cow::Borrowed(s.as_str()),
        Key::Int(i) => Cow::Owned(i.to_string()),
        Key::Uint(u) => Cow::Owned(u.to_string()),
        Key::Bool(b) => Cow::Owned(b.to_string()),
    }
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    // Writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The attribute a value makes; `None` removes it.
fn attribute(name: &str, value: &Value) -> Result<Option<AttrValue>, String> {
    Ok(Some(match value {
        Value::Null => {
            if crate::event::REQUIRED.contains(&name) {
                return Err("is null, and every CloudEvent has this attribute".into());
            }
            return Ok(None);
        }
        Value::String(s) => coerce_known(name, AttrValue::String(s.to_string())),
        Value::Bool(b) => AttrValue::Boolean(*b),
        Value::Int(i) => AttrValue::Integer(
            i32::try_from(*i)
                .map_err(|_| format!("{i} is outside the 32-bit range of an Integer attribute"))?,
        ),
        Value::UInt(u) => AttrValue::Integer(
            i32::try_from(*u)
                .map_err(|_| format!("{u} is outside the 32-bit range of an Integer attribute"))?,
        ),
        Value::Bytes(b) => AttrValue::Binary(Bytes::copy_from_slice(b.as_slice())),
        Value::Timestamp(t) => AttrValue::Timestamp(t.to_rfc3339()),
        other => {
            return Err(format!(
                "is a {:?}; an attribute is a string, an integer, a boolean, bytes or a timestamp",
                other.type_of()
            ))
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cel(src: &str) -> CelFilter {
        CelFilter::compile(src).unwrap()
    }

    fn event(data: &str) -> Event {
        crate::event::json::decode_event(&Bytes::from(format!(
            r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":"x","datacontenttype":"application/json","data":{data}}}"#
        )))
        .unwrap()
    }

    fn shaped(t: &Transform, e: &Event) -> Event {
        match t.apply(e).unwrap() {
            Shaped::Event(e) => e.into_owned(),
            Shaped::Skipped(why) => panic!("skipped: {why}"),
        }
    }

    fn body_of(e: &Event) -> String {
        String::from_utf8(e.data().unwrap().body_bytes().to_vec()).unwrap()
    }

    #[test]
    fn a_map_becomes_a_json_body_with_sorted_keys() {
        let t = Transform::cel(Shape {
            data: Some(cel(
                r#"{"text": "run " + data.name + " failed", "blocks": [1, 2.5, true, null], "a": {"z": 1, "b": b"hi"}}"#,
            )),
            ..Shape::default()
        });
        let out = shaped(&t, &event(r#"{"name":"build"}"#));
        assert_eq!(
            body_of(&out),
            r#"{"a":{"b":"aGk=","z":1},"blocks":[1,2.5,true,null],"text":"run build failed"}"#
        );
        assert_eq!(out.datacontenttype(), Some(JSON));
        assert_eq!(out.id(), "1", "attributes stay as they were");
    }

    #[test]
    fn a_string_is_text_bytes_are_bytes_and_null_is_no_body() {
        let e = event(r#"{"name":"build"}"#);
        let text = shaped(
            &Transform::cel(Shape {
                data: Some(cel(r#""hello " + data.name"#)),
                ..Shape::default()
            }),
            &e,
        );
        assert_eq!(body_of(&text), "hello build");
        assert_eq!(text.datacontenttype(), Some(TEXT));
        let bytes = shaped(
            &Transform::cel(Shape {
                data: Some(cel(r#"b"\x00\x01""#)),
                ..Shape::default()
            }),
            &e,
        );
        assert_eq!(bytes.data().unwrap().body_bytes().as_ref(), [0, 1]);
        assert_eq!(bytes.datacontenttype(), Some(BYTES));
        let none = shaped(
            &Transform::cel(Shape {
                data: Some(cel("null")),
                ..Shape::default()
            }),
            &e,
        );
        assert!(none.data().is_none());
        assert_eq!(none.datacontenttype(), None);
    }

    #[test]
    fn content_type_overrides_the_implied_one() {
        let t = Transform::cel(Shape {
            data: Some(cel(r#"{"k": 1}"#)),
            content_type: Some("application/vnd.example+json".into()),
            ..Shape::default()
        });
        let out = shaped(&t, &event("{}"));
        assert_eq!(out.datacontenttype(), Some("application/vnd.example+json"));
        assert!(matches!(out.data(), Some(Data::Json(_))));
        let t = Transform::cel(Shape {
            data: Some(cel(r#"{"k": 1}"#)),
            content_type: Some("text/plain".into()),
            ..Shape::default()
        });
        let out = shaped(&t, &event("{}"));
        assert!(
            matches!(out.data(), Some(Data::Binary(_))),
            "JSON text under a non-JSON type is its bytes"
        );
        assert_eq!(body_of(&out), r#"{"k":1}"#);
    }

    #[test]
    fn attributes_are_set_added_and_removed() {
        let t = Transform::cel(Shape {
            attributes: vec![
                ("type".into(), Some(cel(r#""com.example." + type"#))),
                ("subject".into(), None),
                ("runname".into(), Some(cel("data.name"))),
                ("attempt".into(), Some(cel("3"))),
                ("time".into(), Some(cel(r#""2024-01-25T15:18:47Z""#))),
            ],
            ..Shape::default()
        });
        let out = shaped(&t, &event(r#"{"name":"build"}"#));
        assert_eq!(out.ty(), "com.example.t");
        assert!(out.get("subject").is_none());
        assert_eq!(out.get_str("runname"), Some("build"));
        assert_eq!(out.get("attempt"), Some(&AttrValue::Integer(3)));
        assert_eq!(
            out.get("time"),
            Some(&AttrValue::Timestamp("2024-01-25T15:18:47Z".into()))
        );
        assert_eq!(body_of(&out), r#"{"name":"build"}"#, "the body is kept");
    }

    #[test]
    fn failures_name_the_part_at_fault() {
        let e = event(r#"{"name":"build"}"#);
        let fails = |shape: Shape| Transform::cel(shape).apply(&e).unwrap_err().0;
        let missing = fails(Shape {
            data: Some(cel("data.nope")),
            ..Shape::default()
        });
        assert!(missing.starts_with("data: "), "{missing}");
        let wrong = fails(Shape {
            attributes: vec![("type".into(), Some(cel("[1]")))],
            ..Shape::default()
        });
        assert!(wrong.starts_with("attributes.type: is a List"), "{wrong}");
        let removed = fails(Shape {
            attributes: vec![("source".into(), Some(cel("null")))],
            ..Shape::default()
        });
        assert!(
            removed.contains("every CloudEvent has this attribute"),
            "{removed}"
        );
        let invalid = fails(Shape {
            attributes: vec![("time".into(), Some(cel(r#""yesterday""#)))],
            ..Shape::default()
        });
        assert!(invalid.contains("not a valid CloudEvent"), "{invalid}");
        assert!(invalid.contains("time"), "{invalid}");
        let big = fails(Shape {
            attributes: vec![("n".into(), Some(cel("4294967296")))],
            ..Shape::default()
        });
        assert!(big.contains("32-bit"), "{big}");
    }

    #[test]
    fn the_same_event_makes_the_same_bytes() {
        let t = Transform::cel(Shape {
            data: Some(cel(
                r#"{"e": "x", "d": 1, "c": [{"b": 2, "a": 1}], "b": "y", "a": "z"}"#,
            )),
            ..Shape::default()
        });
        let e = event("{}");
        let first = body_of(&shaped(&t, &e));
        for _ in 0..20 {
            assert_eq!(body_of(&shaped(&t, &e)), first);
        }
        assert_eq!(
            first,
            r#"{"a":"z","b":"y","c":[{"a":1,"b":2}],"d":1,"e":"x"}"#
        );
    }
}
