//! The CloudEvent model, its validation and its codecs: the HTTP binary binding, the
//! JSON format (single and batch) and the protobuf format (single and batch).
//!
//! The model is ours rather than `cloudevents-sdk`'s because the log must keep an event
//! exactly as it was received: the SDK parses `time` into a `DateTime` (the producer's
//! string is lost) and it accepts events that the spec forbids. Every decoder here
//! produces a [`Event`] that has passed [`validate`], or an [`EventError`] that names the
//! attribute at fault.

pub mod binary;
pub mod json;
pub mod proto;
pub mod protobuf;
pub mod validate;

use bytes::Bytes;

pub use validate::EventError;

/// The attributes every CloudEvent has, in the order the spec lists them.
pub const REQUIRED: [&str; 4] = ["id", "source", "specversion", "type"];

/// A context attribute's value, typed as the spec's type system types it.
///
/// Binary mode carries every attribute as text, so there the known attributes get their
/// spec type (`time` a timestamp, `dataschema` a URI, `source` a URI-reference) and
/// extensions are strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    Boolean(bool),
    Integer(i32),
    String(String),
    Binary(Bytes),
    Uri(String),
    UriRef(String),
    /// RFC 3339, exactly as the producer wrote it (validated, never reformatted).
    Timestamp(String),
}

impl AttrValue {
    /// The canonical string form (CloudEvents 1.0, "Type System"), as binary mode and
    /// CEL's string view use it.
    pub fn to_canonical_string(&self) -> String {
        match self {
            AttrValue::Boolean(b) => b.to_string(),
            AttrValue::Integer(i) => i.to_string(),
            AttrValue::Binary(b) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(b)
            }
            AttrValue::String(s)
            | AttrValue::Uri(s)
            | AttrValue::UriRef(s)
            | AttrValue::Timestamp(s) => s.clone(),
        }
    }

    /// The length of [`Self::to_canonical_string`], without building it.
    pub fn text_len(&self) -> usize {
        match self {
            AttrValue::Boolean(b) => {
                if *b {
                    4
                } else {
                    5
                }
            }
            AttrValue::Integer(i) => {
                let digits = i
                    .unsigned_abs()
                    .checked_ilog10()
                    .map_or(1, |d| d as usize + 1);
                digits + usize::from(*i < 0)
            }
            AttrValue::Binary(b) => b.len().div_ceil(3) * 4,
            AttrValue::String(s)
            | AttrValue::Uri(s)
            | AttrValue::UriRef(s)
            | AttrValue::Timestamp(s) => s.len(),
        }
    }

    /// The text of a string-like value, without allocating.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::String(s)
            | AttrValue::Uri(s)
            | AttrValue::UriRef(s)
            | AttrValue::Timestamp(s) => Some(s),
            _ => None,
        }
    }
}

/// An event's payload, in the form it arrived in, so that it can be sent on byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// Opaque bytes: a binary-mode body, `data_base64`, protobuf `binary_data`.
    Binary(Bytes),
    /// Text: a JSON-format string `data` with a non-JSON content type, protobuf `text_data`.
    Text(String),
    /// The JSON text of a JSON-format `data` member, exactly as it stood in the request.
    Json(Bytes),
    /// Protobuf `proto_data` (a `google.protobuf.Any`).
    Proto { type_url: String, value: Bytes },
}

impl Data {
    /// The bytes a binary-mode message carries as its body.
    pub fn body_bytes(&self) -> Bytes {
        match self {
            Data::Binary(b) | Data::Json(b) => b.clone(),
            Data::Text(s) => Bytes::copy_from_slice(s.as_bytes()),
            Data::Proto { value, .. } => value.clone(),
        }
    }

    /// How many bytes [`Data::body_bytes`] holds, without a copy.
    pub fn body_len(&self) -> usize {
        match self {
            Data::Binary(b) | Data::Json(b) => b.len(),
            Data::Text(s) => s.len(),
            Data::Proto { value, .. } => value.len(),
        }
    }
}

/// A validated CloudEvent: its context attributes in arrival order and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    attributes: Vec<(String, AttrValue)>,
    data: Option<Data>,
}

impl Event {
    /// Builds an event and validates it; the error names the first attribute at fault.
    pub fn new(
        attributes: Vec<(String, AttrValue)>,
        data: Option<Data>,
    ) -> Result<Self, EventError> {
        let event = Event { attributes, data };
        validate::validate(&event)?;
        Ok(event)
    }

    /// Builds an event without validating it: only for data that was validated before it
    /// was stored (the log's records).
    pub(crate) fn from_trusted(attributes: Vec<(String, AttrValue)>, data: Option<Data>) -> Self {
        Event { attributes, data }
    }

    /// Looks an attribute up by name.
    pub fn get(&self, name: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// The text of a string-like attribute.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(AttrValue::as_str)
    }

    pub fn id(&self) -> &str {
        self.get_str("id").unwrap_or_default()
    }

    pub fn source(&self) -> &str {
        self.get_str("source").unwrap_or_default()
    }

    pub fn ty(&self) -> &str {
        self.get_str("type").unwrap_or_default()
    }

    pub fn specversion(&self) -> &str {
        self.get_str("specversion").unwrap_or_default()
    }

    pub fn datacontenttype(&self) -> Option<&str> {
        self.get_str("datacontenttype")
    }

    /// Every attribute, in the order the producer sent them.
    pub fn attributes(&self) -> &[(String, AttrValue)] {
        &self.attributes
    }

    pub fn data(&self) -> Option<&Data> {
        self.data.as_ref()
    }

    pub fn into_parts(self) -> (Vec<(String, AttrValue)>, Option<Data>) {
        (self.attributes, self.data)
    }
}

/// Reads an event from a file, for offline tools (`switchyard explain`): a
/// structured-mode JSON event, or an HTTP request as the Tekton test corpus writes it
/// (`{"headers": {...}, "body": ...}`, binary or structured by its `Content-Type`).
pub fn from_file(bytes: &[u8]) -> Result<Event, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let (Some(headers), Some(body)) = (
        value.get("headers").and_then(|h| h.as_object()),
        value.get("body"),
    ) else {
        return json::decode_event(&Bytes::copy_from_slice(bytes)).map_err(|e| e.to_string());
    };
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|e| format!("header {k}: {e}"))?;
        let value = http::HeaderValue::from_str(v.as_str().unwrap_or_default())
            .map_err(|e| format!("header {k}: {e}"))?;
        map.append(name, value);
    }
    let body = match body {
        serde_json::Value::String(s) => Bytes::from(s.clone()),
        other => Bytes::from(serde_json::to_vec(other).map_err(|e| e.to_string())?),
    };
    let structured = map
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.to_ascii_lowercase()
                .starts_with("application/cloudevents+json")
        });
    let event = if structured {
        json::decode_event(&body)
    } else {
        binary::decode(&map, body)
    };
    event.map_err(|e| e.to_string())
}

/// Whether a media type is JSON (`application/json`, `text/json`, `*/*+json`), which
/// decides how the JSON format carries `data`. Parameters are ignored.
pub fn is_json_media_type(media_type: &str) -> bool {
    let essence = media_type.split(';').next().unwrap_or_default().trim();
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    let suffix = sub.len().checked_sub(5).and_then(|at| sub.get(at..));
    (ty.eq_ignore_ascii_case("application") || ty.eq_ignore_ascii_case("text"))
        && sub.eq_ignore_ascii_case("json")
        || suffix.is_some_and(|s| s.eq_ignore_ascii_case("+json"))
}

/// Whether a media type is text that the JSON format can carry as a string: `text/*`,
/// XML (`application/xml`, `*/*+xml`) and JSON, in UTF-8 (a `charset` other than UTF-8
/// or US-ASCII is not).
pub fn is_textual_media_type(media_type: &str) -> bool {
    let mut parts = media_type.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    let utf8 = parts.all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
            let v = v.trim().trim_matches('"');
            ["utf-8", "utf8", "us-ascii"]
                .iter()
                .any(|c| v.eq_ignore_ascii_case(c))
        }
        _ => true,
    });
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    let suffix = sub.len().checked_sub(4).and_then(|at| sub.get(at..));
    utf8 && (ty.eq_ignore_ascii_case("text")
        || ty.eq_ignore_ascii_case("application") && sub.eq_ignore_ascii_case("xml")
        || suffix.is_some_and(|s| s.eq_ignore_ascii_case("+xml"))
        || is_json_media_type(essence))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textual_media_types_are_recognised() {
        for yes in [
            "text/plain",
            "text/plain; charset=utf-8",
            "Text/CSV; charset=\"UTF-8\"",
            "application/xml",
            "application/atom+xml",
            "application/json",
            "application/vnd.api+json; charset=us-ascii",
        ] {
            assert!(is_textual_media_type(yes), "{yes}");
        }
        for no in [
            "application/octet-stream",
            "image/png",
            "text/plain; charset=iso-8859-1",
            "application/protobuf",
            "xml",
        ] {
            assert!(!is_textual_media_type(no), "{no}");
        }
    }

    #[test]
    fn json_media_types_are_recognised() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "text/json",
            "application/cloudevents+json",
            "application/vnd.x+json",
        ] {
            assert!(is_json_media_type(yes), "{yes}");
        }
        for no in [
            "text/plain",
            "application/octet-stream",
            "application/jsonx",
            "json",
            "",
        ] {
            assert!(!is_json_media_type(no), "{no}");
        }
    }
}
