//! A log record's encoding: the event exactly as received plus what the broker adds,
//! as the protobuf `switchyard.v1.Record` (`proto/switchyard/v1/record.proto`).

use bytes::Bytes;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;

use crate::event::proto::record::{attribute, stored_event, Record};
use crate::event::{AttrValue, Data, Event};

/// One stored event and its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The position in its broker's log, from 1.
    pub seq: u64,
    pub broker: std::sync::Arc<str>,
    /// When the broker accepted the event, nanoseconds since the Unix epoch.
    pub arrival_unix_nanos: u64,
    /// How many replies deep the event is (0 for an event a producer posted).
    pub hops: u32,
    pub event: Event,
}

/// Encodes an event and its metadata as a record: the bytes prost writes for
/// `switchyard.v1.Record`, written straight from the event (no copy of its attributes
/// into prost's structs first).
/// A stored record as a dead letter keeps it: encoded, base64.
pub fn to_base64(record: &LogRecord) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(encode(
        &record.broker,
        record.arrival_unix_nanos,
        record.hops,
        &record.event,
    ))
}

pub fn encode(broker: &str, arrival_unix_nanos: u64, hops: u32, event: &Event) -> Vec<u8> {
    let attributes: Vec<usize> = event
        .attributes()
        .iter()
        .map(|(name, value)| attribute_len(name, value))
        .collect();
    let data_len = event.data().map_or(0, data_len);
    let stored_len = attributes
        .iter()
        .map(|&n| delimited_len(1, n))
        .sum::<usize>()
        + data_len;
    let mut buf = Vec::with_capacity(
        field_len(1, broker.as_bytes())
            + varint_len(2, arrival_unix_nanos)
            + varint_len(3, u64::from(hops))
            + delimited_len(4, stored_len),
    );
    put_field(1, broker.as_bytes(), &mut buf);
    put_varint(2, arrival_unix_nanos, &mut buf);
    put_varint(3, u64::from(hops), &mut buf);
    put_header(4, stored_len, &mut buf);
    for ((name, value), len) in event.attributes().iter().zip(attributes) {
        put_header(1, len, &mut buf);
        put_attribute(name, value, &mut buf);
    }
    if let Some(data) = event.data() {
        put_data(data, &mut buf);
    }
    buf
}

// What prost writes, field by field: proto3 leaves out a scalar field at its default
// (0, "") unless the field is in a `oneof`; a message field is its length and bytes.

fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A string or bytes field outside a `oneof`: left out when empty.
fn field_len(tag: u32, bytes: &[u8]) -> usize {
    if bytes.is_empty() {
        0
    } else {
        delimited_len(tag, bytes.len())
    }
}

fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

fn put_header(tag: u32, len: usize, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn put_delimited(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    put_header(tag, bytes.len(), buf);
    buf.extend_from_slice(bytes);
}

fn put_field(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    if !bytes.is_empty() {
        put_delimited(tag, bytes, buf);
    }
}

fn put_varint(tag: u32, v: u64, buf: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v, buf);
    }
}

/// An attribute's value: its `oneof` field number and, for the length-delimited ones,
/// its bytes.
fn attribute_value(value: &AttrValue) -> (u32, &[u8]) {
    match value {
        AttrValue::Boolean(_) => (2, &[]),
        AttrValue::Integer(_) => (3, &[]),
        AttrValue::String(s) => (4, s.as_bytes()),
        AttrValue::Binary(b) => (5, b),
        AttrValue::Uri(s) => (6, s.as_bytes()),
        AttrValue::UriRef(s) => (7, s.as_bytes()),
        AttrValue::Timestamp(s) => (8, s.as_bytes()),
    }
}

/// An `int32` is written as its 64-bit sign extension.
fn integer(i: i32) -> u64 {
    i64::from(i) as u64
}

fn attribute_len(name: &str, value: &AttrValue) -> usize {
    field_len(1, name.as_bytes())
        + match value {
            AttrValue::Boolean(_) => key_len(2) + 1,
            AttrValue::Integer(i) => key_len(3) + encoded_len_varint(integer(*i)),
            other => {
                let (tag, bytes) = attribute_value(other);
                delimited_len(tag, bytes.len())
            }
        }
}

fn put_attribute(name: &str, value: &AttrValue, buf: &mut Vec<u8>) {
    put_field(1, name.as_bytes(), buf);
    match value {
        AttrValue::Boolean(b) => {
            encode_key(2, WireType::Varint, buf);
            encode_varint(u64::from(*b), buf);
        }
        AttrValue::Integer(i) => {
            encode_key(3, WireType::Varint, buf);
            encode_varint(integer(*i), buf);
        }
        other => {
            let (tag, bytes) = attribute_value(other);
            put_delimited(tag, bytes, buf);
        }
    }
}

fn data_len(data: &Data) -> usize {
    match data {
        Data::Binary(b) => delimited_len(2, b.len()),
        Data::Text(s) => delimited_len(3, s.len()),
        Data::Json(b) => delimited_len(4, b.len()),
        Data::Proto { type_url, value } => delimited_len(5, any_len(type_url, value)),
    }
}

/// The length of a `google.protobuf.Any`.
fn any_len(type_url: &str, value: &[u8]) -> usize {
    field_len(1, type_url.as_bytes()) + field_len(2, value)
}

fn put_data(data: &Data, buf: &mut Vec<u8>) {
    match data {
        Data::Binary(b) => put_delimited(2, b, buf),
        Data::Text(s) => put_delimited(3, s.as_bytes(), buf),
        Data::Json(b) => put_delimited(4, b, buf),
        Data::Proto { type_url, value } => {
            put_header(5, any_len(type_url, value), buf);
            put_field(1, type_url.as_bytes(), buf);
            put_field(2, value, buf);
        }
    }
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
        broker: record.broker.into(),
        arrival_unix_nanos: record.arrival_unix_nanos,
        hops: record.hops,
        event: Event::from_trusted(attributes, data),
    })
}
