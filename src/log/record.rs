//! A log record's encoding: the event exactly as received plus what the broker adds,
//! as the protobuf `switchyard.v1.Record` (`proto/switchyard/v1/record.proto`).

use bytes::Bytes;
use prost::Message;

use crate::event::proto::record::{attribute, stored_event, Attribute, Record, StoredEvent};
use crate::event::{AttrValue, Data, Event};

/// One stored event and its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The position in its broker's log, from 1.
    pub seq: u64,
    pub broker: String,
    /// When the broker accepted the event, nanoseconds since the Unix epoch.
    pub arrival_unix_nanos: u64,
    /// How many replies deep the event is (0 for an event a producer posted).
    pub hops: u32,
    pub event: Event,
}

/// Encodes an event and its metadata as a record.
pub fn encode(broker: &str, arrival_unix_nanos: u64, hops: u32, event: &Event) -> Vec<u8> {
    let attributes = event
        .attributes()
        .iter()
        .map(|(name, value)| Attribute {
            name: name.clone(),
            value: Some(match value {
                AttrValue::Boolean(b) => attribute::Value::CeBoolean(*b),
                AttrValue::Integer(i) => attribute::Value::CeInteger(*i),
                AttrValue::String(s) => attribute::Value::CeString(s.clone()),
                AttrValue::Binary(b) => attribute::Value::CeBytes(b.clone()),
                AttrValue::Uri(s) => attribute::Value::CeUri(s.clone()),
                AttrValue::UriRef(s) => attribute::Value::CeUriRef(s.clone()),
                AttrValue::Timestamp(s) => attribute::Value::CeTimestamp(s.clone()),
            }),
        })
        .collect();
    let data = event.data().map(|d| match d {
        Data::Binary(b) => stored_event::Data::BinaryData(b.clone()),
        Data::Text(s) => stored_event::Data::TextData(s.clone()),
        Data::Json(b) => stored_event::Data::JsonData(b.clone()),
        Data::Proto { type_url, value } => stored_event::Data::ProtoData(prost_types::Any {
            type_url: type_url.clone(),
            value: value.to_vec(),
        }),
    });
    Record {
        broker: broker.to_string(),
        arrival_unix_nanos,
        hops,
        event: Some(StoredEvent { attributes, data }),
    }
    .encode_to_vec()
}

/// Decodes a stored record; `None` when the bytes are not a record (corruption).
pub fn decode(seq: u64, bytes: Bytes) -> Option<LogRecord> {
    let record = Record::decode(bytes).ok()?;
    let stored = record.event?;
    let mut attributes = Vec::with_capacity(stored.attributes.len());
    for a in stored.attributes {
        let value = match a.value? {
            attribute::Value::CeBoolean(b) => AttrValue::Boolean(b),
            attribute::Value::CeInteger(i) => AttrValue::Integer(i),
            attribute::Value::CeString(s) => AttrValue::String(s),
            attribute::Value::CeBytes(b) => AttrValue::Binary(b),
            attribute::Value::CeUri(s) => AttrValue::Uri(s),
            attribute::Value::CeUriRef(s) => AttrValue::UriRef(s),
            attribute::Value::CeTimestamp(s) => AttrValue::Timestamp(s),
        };
        attributes.push((a.name, value));
    }
    let data = stored.data.map(|d| match d {
        stored_event::Data::BinaryData(b) => Data::Binary(b),
        stored_event::Data::TextData(s) => Data::Text(s),
        stored_event::Data::JsonData(b) => Data::Json(b),
        stored_event::Data::ProtoData(any) => Data::Proto {
            type_url: any.type_url,
            value: Bytes::from(any.value),
        },
    });
    Some(LogRecord {
        seq,
        broker: record.broker,
        arrival_unix_nanos: record.arrival_unix_nanos,
        hops: record.hops,
        event: Event::from_trusted(attributes, data),
    })
}
