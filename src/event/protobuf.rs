//! The protobuf event format (CloudEvents 1.0.2, `protobuf-format.md`): single events
//! (`application/cloudevents+protobuf`) and batches (`application/cloudevents-batch+protobuf`).

use bytes::Bytes;
use prost::Message;

use super::proto::cloudevents::cloud_event::{
    cloud_event_attribute_value::Attr, CloudEventAttributeValue,
};
use super::proto::cloudevents::{cloud_event, CloudEvent, CloudEventBatch};
use super::validate::{coerce_known, parse_rfc3339, EventError};
use super::{AttrValue, Data, Event};

/// Decodes one event in the protobuf format.
pub fn decode_event(body: Bytes) -> Result<Event, EventError> {
    let msg = CloudEvent::decode(body)
        .map_err(|e| EventError::message(format!("not a valid protobuf CloudEvent: {e}")))?;
    from_message(msg)
}

/// Decodes a protobuf batch; every event must be valid, else the error names its index.
pub fn decode_batch(body: Bytes) -> Result<Vec<Event>, EventError> {
    let batch = CloudEventBatch::decode(body)
        .map_err(|e| EventError::message(format!("not a valid protobuf CloudEventBatch: {e}")))?;
    batch
        .events
        .into_iter()
        .enumerate()
        .map(|(i, m)| from_message(m).map_err(|e| e.at(i)))
        .collect()
}

/// Turns a protobuf CloudEvent into a validated event. In proto3 an empty string is an
/// absent field, so empty required attributes are reported as missing.
pub fn from_message(msg: CloudEvent) -> Result<Event, EventError> {
    let mut attributes = Vec::with_capacity(4 + msg.attributes.len());
    for (name, value) in [
        ("specversion", msg.spec_version),
        ("id", msg.id),
        ("source", msg.source),
        ("type", msg.r#type),
    ] {
        if value.is_empty() {
            return Err(EventError::attr(
                name,
                "required attribute is missing or empty",
            ));
        }
        attributes.push((
            name.to_string(),
            coerce_known(name, AttrValue::String(value)),
        ));
    }
    for (name, value) in msg.attributes {
        let value = match value.attr {
            None => return Err(EventError::attr(name, "the attribute has no value")),
            Some(Attr::CeBoolean(b)) => AttrValue::Boolean(b),
            Some(Attr::CeInteger(i)) => AttrValue::Integer(i),
            Some(Attr::CeString(s)) => coerce_known(&name, AttrValue::String(s)),
            Some(Attr::CeBytes(b)) => AttrValue::Binary(b),
            Some(Attr::CeUri(s)) => AttrValue::Uri(s),
            Some(Attr::CeUriRef(s)) => AttrValue::UriRef(s),
            Some(Attr::CeTimestamp(t)) => {
                let nanos = u32::try_from(t.nanos)
                    .ok()
                    .filter(|n| *n < 1_000_000_000)
                    .ok_or_else(|| EventError::attr(&name, "timestamp nanos out of range"))?;
                AttrValue::Timestamp(format_rfc3339(t.seconds, nanos))
            }
        };
        attributes.push((name, value));
    }
    let data = msg.data.map(|d| match d {
        cloud_event::Data::BinaryData(b) => Data::Binary(b),
        cloud_event::Data::TextData(s) => Data::Text(s),
        cloud_event::Data::ProtoData(any) => Data::Proto {
            type_url: any.type_url,
            value: Bytes::from(any.value),
        },
    });
    Event::new(attributes, data)
}

/// Turns an event into its protobuf message. Timestamps keep their instant (the format
/// has no room for the original text).
pub fn to_message(event: &Event) -> CloudEvent {
    let mut msg = CloudEvent::default();
    for (name, value) in event.attributes() {
        let text = || value.to_canonical_string();
        match name.as_str() {
            "specversion" => msg.spec_version = text(),
            "id" => msg.id = text(),
            "source" => msg.source = text(),
            "type" => msg.r#type = text(),
            _ => {
                let attr = match value {
                    AttrValue::Boolean(b) => Attr::CeBoolean(*b),
                    AttrValue::Integer(i) => Attr::CeInteger(*i),
                    AttrValue::String(s) => Attr::CeString(s.clone()),
                    AttrValue::Binary(b) => Attr::CeBytes(b.clone()),
                    AttrValue::Uri(s) => Attr::CeUri(s.clone()),
                    AttrValue::UriRef(s) => Attr::CeUriRef(s.clone()),
                    AttrValue::Timestamp(s) => match parse_rfc3339(s) {
                        Ok((seconds, nanos)) => Attr::CeTimestamp(prost_types::Timestamp {
                            seconds,
                            nanos: nanos as i32,
                        }),
                        Err(_) => Attr::CeString(s.clone()),
                    },
                };
                msg.attributes
                    .insert(name.clone(), CloudEventAttributeValue { attr: Some(attr) });
            }
        }
    }
    msg.data = event.data().map(|d| match d {
        Data::Binary(b) | Data::Json(b) => cloud_event::Data::BinaryData(b.clone()),
        Data::Text(s) => cloud_event::Data::TextData(s.clone()),
        Data::Proto { type_url, value } => cloud_event::Data::ProtoData(prost_types::Any {
            type_url: type_url.clone(),
            value: value.to_vec(),
        }),
    });
    msg
}

/// Encodes one event in the protobuf format.
pub fn encode_event(event: &Event) -> Vec<u8> {
    to_message(event).encode_to_vec()
}

/// Encodes events as a protobuf batch.
pub fn encode_batch<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<u8> {
    CloudEventBatch {
        events: events.into_iter().map(to_message).collect(),
    }
    .encode_to_vec()
}

/// Formats seconds and nanoseconds since the epoch as RFC 3339 in UTC, with as many
/// fraction digits as needed (none for whole seconds).
pub fn format_rfc3339(seconds: i64, nanos: u32) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formatting_round_trips_through_the_parser() {
        for (s, n) in [
            (0, 0),
            (1_522_949_460, 0),
            (1_701_930_001, 518_567_259),
            (951_782_400, 500_000_000),
            (-1, 1),
        ] {
            let text = format_rfc3339(s, n);
            assert_eq!(parse_rfc3339(&text).unwrap(), (s, n), "{text}");
        }
        assert_eq!(format_rfc3339(1_522_949_460, 0), "2018-04-05T17:31:00Z");
    }

    #[test]
    fn a_message_with_an_empty_required_field_is_rejected_naming_it() {
        let msg = CloudEvent {
            id: "1".into(),
            source: "/s".into(),
            spec_version: "1.0".into(),
            ..Default::default()
        };
        let err = from_message(msg).unwrap_err();
        assert_eq!(err.attribute.as_deref(), Some("type"));
    }
}
