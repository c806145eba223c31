//! Replies (Knative's `Prefer: reply` contract): a `200` whose body is a CloudEvent,
//! in binary or structured mode. `202`, and any answer without a CloudEvent, are plain
//! success.

use http::header::CONTENT_TYPE;

use super::client::Response;
use crate::event::{binary, json, Event, EventError};

/// What a successful answer carries.
#[derive(Debug)]
pub enum Reply {
    /// No reply: not a 200, or no CloudEvent in it.
    None,
    /// A valid reply event.
    Event(Event),
    /// Something that claims to be a CloudEvent but is not a valid one.
    Invalid(String),
}

/// Reads the reply, if any, out of a sink's answer.
pub fn parse(response: &Response) -> Reply {
    if response.status != 200 {
        return Reply::None;
    }
    let content_type = response
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let structured = content_type.starts_with("application/cloudevents+json");
    let binary_mode = response.headers.contains_key("ce-specversion");
    if !structured && !binary_mode {
        return Reply::None;
    }
    if response.truncated {
        return Reply::Invalid("the reply is larger than the response limit".into());
    }
    let decoded: Result<Event, EventError> = if structured {
        json::decode_event(&response.body)
    } else {
        binary::decode(&response.headers, response.body.clone())
    };
    match decoded {
        Ok(e) => Reply::Event(e),
        Err(e) => Reply::Invalid(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue};

    fn response(status: u16, headers: &[(&'static str, &str)], body: &'static str) -> Response {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        Response {
            status,
            headers: h,
            body: Bytes::from_static(body.as_bytes()),
            truncated: false,
        }
    }

    #[test]
    fn replies_are_200s_carrying_a_cloudevent() {
        let binary = [
            ("ce-specversion", "1.0"),
            ("ce-id", "r"),
            ("ce-source", "/sink"),
            ("ce-type", "reply"),
        ];
        assert!(matches!(
            parse(&response(200, &binary, "")),
            Reply::Event(_)
        ));
        assert!(matches!(parse(&response(202, &binary, "")), Reply::None));
        assert!(matches!(
            parse(&response(
                200,
                &[("content-type", "application/json")],
                "{}"
            )),
            Reply::None
        ));
        let structured = [("content-type", "application/cloudevents+json")];
        assert!(matches!(
            parse(&response(
                200,
                &structured,
                r#"{"specversion":"1.0","id":"r","source":"/s","type":"t"}"#
            )),
            Reply::Event(_)
        ));
        assert!(matches!(
            parse(&response(200, &structured, r#"{"specversion":"1.0"}"#)),
            Reply::Invalid(_)
        ));
    }
}
