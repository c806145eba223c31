//! The JSON event format (CloudEvents 1.0.2, `json-format.md`): single events
//! (`application/cloudevents+json`) and batches (`application/cloudevents-batch+json`).
//!
//! Decoding keeps `data` as the exact JSON text the producer sent (no re-serialising),
//! rejects duplicate members, and treats `null` as "absent" for optional attributes.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::validate::{coerce_known, EventError};
use super::{is_json_media_type, is_textual_media_type, AttrValue, Data, Event};

/// The members of one JSON object, in order, values left unparsed, and the first
/// member name that came twice (the object is then not an event).
struct Members<'a> {
    list: Vec<(Cow<'a, str>, &'a RawValue)>,
    duplicate: Option<Cow<'a, str>>,
}

fn read_members<'de, A: MapAccess<'de>>(mut map: A) -> Result<Members<'de>, A::Error> {
    let mut list: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::with_capacity(8);
    let mut duplicate = None;
    // Past a few members, a hash set of the names seen keeps the check linear.
    let mut seen: Option<std::collections::HashSet<Cow<'de, str>>> = None;
    while let Some(key) = map.next_key::<Cow<'de, str>>()? {
        let value = map.next_value()?;
        if duplicate.is_some() {
            continue; // the object is refused: only its well-formedness still matters
        }
        let repeated = match &mut seen {
            Some(set) => !set.insert(key.clone()),
            None => {
                let repeated = list.iter().any(|(k, _)| *k == key);
                if !repeated && list.len() >= 16 {
                    let mut set: std::collections::HashSet<Cow<'de, str>> =
                        list.iter().map(|(k, _)| k.clone()).collect();
                    set.insert(key.clone());
                    seen = Some(set);
                }
                repeated
            }
        };
        if repeated {
            duplicate = Some(key);
        } else {
            list.push((key, value));
        }
    }
    Ok(Members { list, duplicate })
}

/// A JSON value that should be an event (a body, or an element of a batch read in the
/// same pass as the array): an object's members, or the kind of value found instead.
enum Element<'a> {
    Object(Members<'a>),
    Other(&'static str),
}

impl<'de> serde::Deserialize<'de> for Element<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Element<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                read_members(map).map(Element::Object)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Element::Other("an array"))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Element::Other("a string"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Element::Other("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Element::Other("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Element::Other("a number"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Element::Other("a boolean"))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Element::Other("null"))
            }
        }
        d.deserialize_any(V)
    }
}

fn json_error(e: serde_json::Error) -> EventError {
    EventError::message(format!("not a valid JSON event: {e}"))
}

/// Decodes one event in the JSON format. `body` must hold `json` (its slices are kept).
pub fn decode_event(body: &Bytes) -> Result<Event, EventError> {
    let element: Element = serde_json::from_slice(body).map_err(json_error)?;
    from_element(body, element)
}

/// Decodes a JSON batch: an array of events, every one valid, or an error naming the
/// index. The array and its events are read in one pass over the body.
pub fn decode_batch(body: &Bytes) -> Result<Vec<Event>, EventError> {
    let elements: Vec<Element> = serde_json::from_slice(body)
        .map_err(|e| EventError::message(format!("a batch must be a JSON array of events: {e}")))?;
    elements
        .into_iter()
        .enumerate()
        .map(|(i, element)| from_element(body, element).map_err(|e| e.at(i)))
        .collect()
}

fn from_element(body: &Bytes, element: Element) -> Result<Event, EventError> {
    let members = match element {
        Element::Object(members) => members,
        Element::Other(kind) => {
            return Err(EventError::message(format!(
                "not a valid JSON event: {kind}, not a JSON object"
            )))
        }
    };
    if let Some(name) = members.duplicate {
        return Err(EventError::attr(
            name.as_ref(),
            format!("the JSON object has a duplicate member '{name}'"),
        ));
    }
    let mut attributes = Vec::with_capacity(members.list.len());
    let mut data_raw: Option<&RawValue> = None;
    let mut data_b64: Option<&RawValue> = None;
    for (name, raw) in &members.list {
        let raw: &RawValue = raw;
        if raw.get() == "null" {
            continue; // null means "not present" (json-format.md, 2.2 and 3.1)
        }
        match name.as_ref() {
            "data" => data_raw = Some(raw),
            "data_base64" => data_b64 = Some(raw),
            _ => {
                super::validate::check_name(name)?;
                let value = attr_from_json(name, raw)?;
                attributes.push((name.to_string(), coerce_known(name, value)));
            }
        }
    }
    let data = match (data_raw, data_b64) {
        (Some(_), Some(_)) => {
            return Err(EventError::attr(
                "data_base64",
                "an event may have 'data' or 'data_base64', not both",
            ))
        }
        (None, Some(raw)) => {
            let text: String = serde_json::from_str(raw.get())
                .map_err(|_| EventError::attr("data_base64", "must be a JSON string"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| {
                    EventError::attr("data_base64", format!("is not valid base64: {e}"))
                })?;
            Some(Data::Binary(Bytes::from(bytes)))
        }
        (Some(raw), None) => Some(data_from_json(body, raw, &attributes)?),
        (None, None) => None,
    };
    Event::new(attributes, data)
}

fn data_from_json(
    body: &Bytes,
    raw: &RawValue,
    attributes: &[(String, AttrValue)],
) -> Result<Data, EventError> {
    let content_type = attributes
        .iter()
        .find(|(n, _)| n == "datacontenttype")
        .and_then(|(_, v)| v.as_str());
    // Without a datacontenttype, JSON-format data is JSON (json-format.md, 3.1).
    let json_typed = content_type.is_none_or(is_json_media_type);
    let text = raw.get();
    if !json_typed && text.starts_with('"') {
        let s: String = serde_json::from_str(text)
            .map_err(|e| EventError::attr("data", format!("is not a valid JSON string: {e}")))?;
        return Ok(Data::Text(s));
    }
    Ok(Data::Json(slice_of(body, text.as_bytes())))
}

/// A zero-copy slice of `body` when `part` lies inside it (it always does for
/// members parsed from `body`), else a copy.
fn slice_of(body: &Bytes, part: &[u8]) -> Bytes {
    let start = part.as_ptr() as usize;
    let base = body.as_ptr() as usize;
    if start >= base && start + part.len() <= base + body.len() {
        body.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

fn attr_from_json(name: &str, raw: &RawValue) -> Result<AttrValue, EventError> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(text)
            .map(AttrValue::String)
            .map_err(|e| EventError::attr(name, format!("is not a valid JSON string: {e}"))),
        Some(b't' | b'f') => Ok(AttrValue::Boolean(text == "true")),
        Some(b'-' | b'0'..=b'9') => match serde_json::from_str::<i64>(text) {
            Ok(n) => i32::try_from(n).map(AttrValue::Integer).map_err(|_| {
                EventError::attr(name, "an Integer must be within the signed 32-bit range")
            }),
            Err(_) => Err(EventError::attr(
                name,
                format!("{text} is not an Integer: attribute numbers must be whole and 32-bit"),
            )),
        },
        _ => Err(EventError::attr(
            name,
            "attribute values must be JSON strings, integers or booleans",
        )),
    }
}

/// Encodes an event in the JSON format: attributes in their stored order, `data` as the
/// JSON text it arrived as, text as a JSON string, bytes as `data_base64`.
pub fn encode_event(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_event(event, &mut out);
    out
}

/// Encodes events as a JSON batch.
pub fn encode_batch<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, e) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_event(e, &mut out);
    }
    out.push(b']');
    out
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Whether `b` is one well-formed JSON value.
fn is_json(b: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(b).is_ok()
}

fn write_event(event: &Event, out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (name, value)) in event.attributes().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, name);
        out.push(b':');
        match value {
            AttrValue::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            AttrValue::Integer(n) => out.extend_from_slice(n.to_string().as_bytes()),
            other => write_str(out, &other.to_canonical_string()),
        }
    }
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match event.data() {
        None => {}
        Some(Data::Json(raw)) => {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(raw);
        }
        Some(Data::Text(s)) => {
            out.extend_from_slice(b",\"data\":");
            write_str(out, s);
        }
        // Bytes that are JSON by their content type go in as JSON (json-format.md, 3.1),
        // so a binary-mode Tekton event reads the same in structured mode.
        Some(Data::Binary(b))
            if event.datacontenttype().is_some_and(is_json_media_type) && is_json(b) =>
        {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(b);
        }
        // Text is text (json-format.md, 3.1): bytes of a textual type that are UTF-8
        // go in as a string. JSON that does not parse stays bytes, exactly.
        Some(Data::Binary(b))
            if event
                .datacontenttype()
                .is_some_and(|t| is_textual_media_type(t) && !is_json_media_type(t)) =>
        {
            match std::str::from_utf8(b) {
                Ok(text) => {
                    out.extend_from_slice(b",\"data\":");
                    write_str(out, text);
                }
                Err(_) => {
                    out.extend_from_slice(b",\"data_base64\":");
                    write_str(out, &b64(b));
                }
            }
        }
        Some(Data::Binary(b)) | Some(Data::Proto { value: b, .. }) => {
            out.extend_from_slice(b",\"data_base64\":");
            write_str(out, &b64(b));
        }
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<Event, EventError> {
        decode_event(&Bytes::copy_from_slice(s.as_bytes()))
    }

    const MIN: &str = r#""specversion":"1.0","id":"1","source":"/s","type":"t""#;

    #[test]
    fn json_data_is_kept_byte_for_byte() {
        let e = decode(&format!(
            r#"{{{MIN},"data": {{ "b":1,  "a" : [1, 2.50] }} }}"#
        ))
        .unwrap();
        assert_eq!(
            e.data(),
            Some(&Data::Json(Bytes::from_static(
                br#"{ "b":1,  "a" : [1, 2.50] }"#
            )))
        );
    }

    #[test]
    fn text_data_with_a_non_json_type_is_text() {
        let e = decode(&format!(
            r#"{{{MIN},"datacontenttype":"text/plain","data":"a\nb"}}"#
        ))
        .unwrap();
        assert_eq!(e.data(), Some(&Data::Text("a\nb".into())));
    }

    #[test]
    fn duplicate_members_are_rejected_naming_the_member() {
        let err = decode(&format!(r#"{{{MIN},"id":"2"}}"#)).unwrap_err();
        assert_eq!(err.attribute.as_deref(), Some("id"));
    }

    #[test]
    fn text_bytes_are_written_as_a_string_and_other_bytes_in_base64() {
        let with = |ct: &str, data: &'static [u8]| {
            let e = Event::new(
                vec![
                    ("specversion".into(), AttrValue::String("1.0".into())),
                    ("id".into(), AttrValue::String("1".into())),
                    ("source".into(), AttrValue::UriRef("/s".into())),
                    ("type".into(), AttrValue::String("t".into())),
                    ("datacontenttype".into(), AttrValue::String(ct.into())),
                ],
                Some(Data::Binary(Bytes::from_static(data))),
            )
            .unwrap();
            let doc: serde_json::Value = serde_json::from_slice(&encode_event(&e)).unwrap();
            (doc["data"].clone(), doc["data_base64"].clone())
        };
        assert_eq!(with("text/csv", b"a,b").0, "a,b");
        assert_eq!(with("text/plain; charset=utf-8", b"x").0, "x");
        assert_eq!(with("text/plain", b"\xff").1, "/w==");
        assert_eq!(with("application/octet-stream", b"x").1, "eA==");
        assert_eq!(with("application/json", b"{not json").1, "e25vdCBqc29u");
    }

    #[test]
    fn data_base64_must_be_valid() {
        let err = decode(&format!(r#"{{{MIN},"data_base64":"@@@"}}"#)).unwrap_err();
        assert_eq!(err.attribute.as_deref(), Some("data_base64"));
        let ok = decode(&format!(r#"{{{MIN},"data_base64":"TWE="}}"#)).unwrap();
        assert_eq!(ok.data(), Some(&Data::Binary(Bytes::from_static(b"Ma"))));
    }

    #[test]
    fn string_attributes_are_unescaped_and_raw_control_characters_refused() {
        let e = decode(&format!(
            r#"{{{MIN},"plain":"a/b c","esc":"a\/\u00e9\"b"}}"#
        ))
        .unwrap();
        assert_eq!(e.get_str("plain"), Some("a/b c"));
        assert_eq!(e.get_str("esc"), Some("a/é\"b"));
        let err = decode(&format!("{{{MIN},\"ctl\":\"a\u{1}b\"}}")).unwrap_err();
        assert!(err.to_string().contains("control character"), "{err}");
    }

    #[test]
    fn a_batch_names_the_index_of_the_event_that_is_wrong() {
        let batch = |items: &[&str]| {
            decode_batch(&Bytes::from(format!("[{}]", items.join(",")))).map(|v| v.len())
        };
        let ok = format!("{{{MIN}}}");
        let dup = format!(r#"{{{MIN},"id":"2"}}"#);
        assert_eq!(batch(&[&ok, &ok]), Ok(2));
        assert_eq!(batch(&[]), Ok(0));
        for (other, kind) in [
            ("[1,{}]", "an array"),
            ("\"x\"", "a string"),
            ("7", "a number"),
            ("true", "a boolean"),
            ("null", "null"),
        ] {
            let err = batch(&[&ok, &ok, other]).unwrap_err();
            assert_eq!(err.index, Some(2), "{other}");
            assert!(err.detail.contains(kind), "{other}: {err}");
        }
        let err = batch(&[&ok, &dup, &ok]).unwrap_err();
        assert_eq!((err.attribute.as_deref(), err.index), (Some("id"), Some(1)));
        let err = batch(&[&ok, r#"{"id":"#]).unwrap_err();
        assert!(
            err.detail.starts_with("a batch must be a JSON array"),
            "{err}"
        );
        let err = decode_batch(&Bytes::from_static(b"{}")).unwrap_err();
        assert!(
            err.detail.starts_with("a batch must be a JSON array"),
            "{err}"
        );
    }

    #[test]
    fn integers_outside_32_bits_are_rejected() {
        let err = decode(&format!(r#"{{{MIN},"ext":2147483648}}"#)).unwrap_err();
        assert_eq!(err.attribute.as_deref(), Some("ext"));
        assert!(decode(&format!(r#"{{{MIN},"ext":-2147483648}}"#)).is_ok());
    }

    #[test]
    fn encoding_then_decoding_gives_the_same_event() {
        let src = format!(
            r#"{{{MIN},"time":"2018-04-05T18:31:00+01:00","ext":7,"flag":false,"data":{{"x":"y"}}}}"#
        );
        let e = decode(&src).unwrap();
        let again = decode_event(&Bytes::from(encode_event(&e))).unwrap();
        assert_eq!(e, again);
    }
}
