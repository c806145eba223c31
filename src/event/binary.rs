//! The HTTP binary content mode (CloudEvents HTTP binding 1.0.2, 3.1): attributes in
//! `ce-` headers, `datacontenttype` in `Content-Type`, `data` as the body.
//!
//! Header values are percent-decoded exactly once and must then be valid UTF-8
//! (3.1.3.2). Double quotes have no special meaning: a value is never unquoted.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};

use super::validate::{coerce_known, EventError};
use super::{AttrValue, Data, Event};

/// Decodes a binary-mode message. An empty body means the event has no data.
pub fn decode(headers: &HeaderMap, body: Bytes) -> Result<Event, EventError> {
    let mut attributes: Vec<(String, AttrValue)> = Vec::with_capacity(8);
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        if attr == "datacontenttype" {
            return Err(EventError::attr(
                "datacontenttype",
                "in binary mode datacontenttype travels in Content-Type; the ce-datacontenttype header is not allowed",
            ));
        }
        super::validate::check_name(attr)?;
        if attributes.iter().any(|(n, _)| n == attr) {
            return Err(EventError::attr(attr, "the header appears more than once"));
        }
        let text = percent_decode(value.as_bytes()).map_err(|e| EventError::attr(attr, e))?;
        attributes.push((
            attr.to_string(),
            coerce_known(attr, AttrValue::String(text)),
        ));
    }
    if let Some(ct) = headers.get(CONTENT_TYPE) {
        let ct = std::str::from_utf8(ct.as_bytes())
            .map_err(|_| EventError::attr("datacontenttype", "Content-Type is not ASCII"))?;
        attributes.push((
            "datacontenttype".to_string(),
            AttrValue::String(ct.to_string()),
        ));
    }
    let data = (!body.is_empty()).then_some(Data::Binary(body));
    Event::new(attributes, data)
}

/// Percent-decodes a header value once, then requires strict UTF-8.
pub fn percent_decode(raw: &[u8]) -> Result<String, String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = raw.get(i + 1..i + 3).and_then(|h| {
                let h = std::str::from_utf8(h).ok()?;
                u8::from_str_radix(h, 16)
                    .ok()
                    .filter(|_| h.bytes().all(|b| b.is_ascii_hexdigit()))
            });
            match hex {
                Some(b) => out.push(b),
                None => return Err("has a '%' that is not followed by two hex digits".into()),
            }
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "is not valid UTF-8 after percent-decoding".into())
}

/// Percent-encodes a string for a header value: space, `"`, `%` and every byte outside
/// printable ASCII (HTTP binding 3.1.3.2). Borrows when nothing needs encoding.
pub fn percent_encode(s: &str) -> Cow<'_, str> {
    let escape = |b: u8| b == b' ' || b == b'"' || b == b'%' || !(0x21..=0x7E).contains(&b);
    if !s.bytes().any(escape) {
        return Cow::Borrowed(s);
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if escape(b) {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xF)] as char);
        } else {
            out.push(b as char);
        }
    }
    Cow::Owned(out)
}

/// The `ce-` header of an attribute; the context attributes' names are static.
fn header_name(attribute: &str) -> Option<HeaderName> {
    Some(HeaderName::from_static(match attribute {
        "specversion" => "ce-specversion",
        "id" => "ce-id",
        "source" => "ce-source",
        "type" => "ce-type",
        "subject" => "ce-subject",
        "time" => "ce-time",
        "dataschema" => "ce-dataschema",
        _ => return HeaderName::from_bytes(format!("ce-{attribute}").as_bytes()).ok(),
    }))
}

/// The headers and body of an event in binary mode.
pub fn encode(event: &Event) -> (Vec<(HeaderName, HeaderValue)>, Bytes) {
    let mut headers = Vec::with_capacity(event.attributes().len());
    for (name, value) in event.attributes() {
        let text = value
            .as_str()
            .map_or_else(|| Cow::Owned(value.to_canonical_string()), Cow::Borrowed);
        if name == "datacontenttype" {
            // Content-Type is an HTTP header with its own syntax, not a ce- header: it is
            // sent as the (validated) media type, never percent-encoded.
            if let Ok(v) = HeaderValue::from_str(&text) {
                headers.push((CONTENT_TYPE, v));
            }
            continue;
        }
        // Percent-encoding leaves only visible ASCII, always a valid header value.
        if let (Some(h), Ok(v)) = (
            header_name(name),
            HeaderValue::from_str(&percent_encode(&text)),
        ) {
            headers.push((h, v));
        }
    }
    let body = event.data().map(Data::body_bytes).unwrap_or_default();
    (headers, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    fn base() -> Vec<(&'static str, &'static [u8])> {
        vec![
            ("ce-specversion", b"1.0"),
            ("ce-id", b"1"),
            ("ce-source", b"/s"),
            ("ce-type", b"t"),
        ]
    }

    fn subject_of(raw: &[u8]) -> Result<String, EventError> {
        let mut pairs = base();
        pairs.push(("ce-subject", raw));
        decode(&headers(&pairs), Bytes::new()).map(|e| e.get_str("subject").unwrap().to_string())
    }

    #[test]
    fn header_values_are_percent_decoded_once() {
        let table: &[(&[u8], &str)] = &[
            (b"plain", "plain"),
            (b"with%20space", "with space"),
            (b"%22quoted%22", "\"quoted\""),
            (b"\"literal quotes\"", "\"literal quotes\""),
            (b"100%25", "100%"),
            (b"%2541", "%41"),
            (b"caf%C3%A9", "caf\u{e9}"),
            (b"%E2%82%AC%F0%9F%9A%80", "\u{20ac}\u{1f680}"),
            (b"caf\xc3\xa9", "caf\u{e9}"),
        ];
        for (raw, want) in table {
            assert_eq!(
                subject_of(raw).unwrap(),
                *want,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn invalid_utf8_and_bad_escapes_are_rejected_naming_the_attribute() {
        for raw in [
            &b"%C3%28"[..],
            b"%FF",
            b"%ED%A0%80",
            b"\xff",
            b"50%",
            b"%zz",
            b"%4",
        ] {
            let err = subject_of(raw).unwrap_err();
            assert_eq!(
                err.attribute.as_deref(),
                Some("subject"),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        // Control characters decoded from escapes are still forbidden in Strings.
        assert!(subject_of(b"a%0Ab").is_err());
    }

    #[test]
    fn ce_datacontenttype_is_rejected() {
        let mut pairs = base();
        pairs.push(("ce-datacontenttype", b"application/json"));
        let err = decode(&headers(&pairs), Bytes::new()).unwrap_err();
        assert_eq!(err.attribute.as_deref(), Some("datacontenttype"));
    }

    #[test]
    fn encoding_writes_each_attribute_as_its_header_exactly() {
        let attributes = vec![
            ("specversion".into(), AttrValue::String("1.0".into())),
            ("id".into(), AttrValue::String("a b".into())),
            ("source".into(), AttrValue::UriRef("/s".into())),
            ("type".into(), AttrValue::String("t".into())),
            (
                "time".into(),
                AttrValue::Timestamp("2024-01-01T00:00:00Z".into()),
            ),
            (
                "subject".into(),
                AttrValue::String("café \"x\" 100%".into()),
            ),
            ("comexampleflag".into(), AttrValue::Boolean(true)),
            ("comexamplecount".into(), AttrValue::Integer(-7)),
            (
                "datacontenttype".into(),
                AttrValue::String("text/plain".into()),
            ),
        ];
        let event = Event::new(attributes, Some(Data::Binary(Bytes::from_static(b"hi")))).unwrap();
        let (headers, body) = encode(&event);
        let got: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect();
        let want: Vec<(&str, &[u8])> = vec![
            ("ce-specversion", b"1.0"),
            ("ce-id", b"a%20b"),
            ("ce-source", b"/s"),
            ("ce-type", b"t"),
            ("ce-time", b"2024-01-01T00:00:00Z"),
            ("ce-subject", b"caf%C3%A9%20%22x%22%20100%25"),
            ("ce-comexampleflag", b"true"),
            ("ce-comexamplecount", b"-7"),
            ("content-type", b"text/plain"),
        ];
        assert_eq!(got, want);
        assert_eq!(&body[..], b"hi");
        assert!(matches!(percent_encode("plain/value"), Cow::Borrowed(_)));
    }

    #[test]
    fn encoding_then_decoding_gives_the_same_event() {
        let mut pairs = base();
        pairs.push(("ce-subject", b"caf%C3%A9 %22x%22 100%25"));
        pairs.push(("content-type", b"application/json; charset=utf-8"));
        let e = decode(&headers(&pairs), Bytes::from_static(b"{\"a\":1}")).unwrap();
        let (hs, body) = encode(&e);
        let mut map = HeaderMap::new();
        for (k, v) in hs {
            map.append(k, v);
        }
        assert_eq!(decode(&map, body).unwrap(), e);
    }
}
