//! Properties of the codecs, over generated events and bytes (proptest): whatever the
//! encoders write, the decoders read back as the same event, in every content mode
//! and in the log's record; and no input, however malformed, makes a decoder panic.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use switchyard::event::{binary, json, protobuf, AttrValue, Data, Event};
use switchyard::log::{record, LogRecord};

fn timestamp() -> impl Strategy<Value = String> {
    (
        1970u32..2100,
        1u32..=12,
        1u32..=28,
        0u32..24,
        0u32..60,
        0u32..60,
        proptest::option::of(0u32..1_000_000_000),
    )
        .prop_map(|(y, mo, d, h, mi, s, nanos)| match nanos {
            Some(n) => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{n:09}Z"),
            None => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
        })
}

/// An extension name: lower-case letters and digits, not one the spec defines.
fn extension_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,19}".prop_filter("not a spec attribute", |n| {
        !matches!(
            n.as_str(),
            "id" | "source"
                | "specversion"
                | "type"
                | "datacontenttype"
                | "dataschema"
                | "subject"
                | "time"
                | "data"
                | "data_base64"
        )
    })
}

fn extension_value() -> impl Strategy<Value = AttrValue> {
    prop_oneof![
        any::<String>()
            .prop_filter("non-empty", |s| !s.is_empty())
            .prop_map(AttrValue::String),
        any::<i32>().prop_map(AttrValue::Integer),
        any::<bool>().prop_map(AttrValue::Boolean),
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|i| serde_json::json!(i)),
        any::<String>().prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map("[a-z]{1,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid event: the required attributes, some optional ones and extensions, and data
/// that fits its content type.
fn event() -> impl Strategy<Value = Event> {
    let data = prop_oneof![
        Just((None, None)),
        // A top-level `null` is left out: the JSON format reads `"data": null` as no data.
        json_value()
            .prop_filter("not null", |v| !v.is_null())
            .prop_map(|v| (
                Some("application/json".to_string()),
                Some(Data::Json(Bytes::from(serde_json::to_vec(&v).unwrap())))
            )),
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|b| (
            Some("application/octet-stream".to_string()),
            Some(Data::Binary(Bytes::from(b)))
        )),
    ];
    (
        "[!-~]{1,40}",
        "(/[a-z0-9._-]{0,12}){1,3}|https://[a-z]{1,10}\\.example/[a-z0-9]{0,10}",
        "[a-z][a-z0-9.]{0,40}",
        proptest::option::of("[ -~]{1,30}"),
        proptest::option::of(timestamp()),
        proptest::collection::btree_map(extension_name(), extension_value(), 0..4),
        data,
    )
        .prop_map(
            |(id, source, ty, subject, time, extensions, (content_type, data))| {
                let mut attributes = vec![
                    ("specversion".to_string(), AttrValue::String("1.0".into())),
                    ("id".to_string(), AttrValue::String(id)),
                    ("source".to_string(), AttrValue::UriRef(source)),
                    ("type".to_string(), AttrValue::String(ty)),
                ];
                if let Some(s) = subject {
                    attributes.push(("subject".into(), AttrValue::String(s)));
                }
                if let Some(t) = time {
                    attributes.push(("time".into(), AttrValue::Timestamp(t)));
                }
                if let Some(ct) = content_type {
                    attributes.push(("datacontenttype".into(), AttrValue::String(ct)));
                }
                attributes.extend(extensions);
                Event::new(attributes, data).expect("the generator makes valid events")
            },
        )
}

/// Attributes by name, as canonical strings: what survives every mode (binary mode
/// carries extensions as text).
fn canonical(e: &Event) -> std::collections::BTreeMap<String, String> {
    e.attributes()
        .iter()
        .map(|(k, v)| (k.clone(), v.to_canonical_string()))
        .collect()
}

fn sorted(e: &Event) -> Vec<(String, AttrValue)> {
    let mut a = e.attributes().to_vec();
    a.sort_by(|x, y| x.0.cmp(&y.0));
    a
}

/// As [`sorted`], with `time` as the instant it names: protobuf carries a
/// `google.protobuf.Timestamp`, not the producer's text (trailing zeros of the fraction
/// do not survive).
fn sorted_instants(e: &Event) -> Vec<(String, AttrValue)> {
    sorted(e)
        .into_iter()
        .map(|(k, v)| match v {
            AttrValue::Timestamp(t) => {
                let at = chrono::DateTime::parse_from_rfc3339(&t).unwrap();
                (
                    k,
                    AttrValue::String(format!("{}", at.timestamp_nanos_opt().unwrap())),
                )
            }
            v => (k, v),
        })
        .collect()
}

/// Events with what [`event`] leaves out: every attribute type, text and protobuf data.
fn every_kind() -> impl Strategy<Value = Event> {
    let data = prop_oneof![
        Just(None),
        "[ -~]{0,40}".prop_map(|t| Some(Data::Text(t))),
        (
            "[a-z./]{0,20}",
            proptest::collection::vec(any::<u8>(), 0..32)
        )
            .prop_map(|(u, v)| {
                Some(Data::Proto {
                    type_url: u,
                    value: Bytes::from(v),
                })
            }),
    ];
    (
        proptest::collection::vec(any::<u8>(), 0..16),
        any::<i32>(),
        any::<bool>(),
        data,
    )
        .prop_map(|(bytes, int, flag, data)| {
            let attributes = vec![
                ("specversion".to_string(), AttrValue::String("1.0".into())),
                ("id".to_string(), AttrValue::String("1".into())),
                ("source".to_string(), AttrValue::UriRef("/s".into())),
                ("type".to_string(), AttrValue::String("t".into())),
                (
                    "dataschema".to_string(),
                    AttrValue::Uri("https://x.example/s".into()),
                ),
                (
                    "time".to_string(),
                    AttrValue::Timestamp("2024-01-01T00:00:00Z".into()),
                ),
                ("bin".to_string(), AttrValue::Binary(Bytes::from(bytes))),
                ("int".to_string(), AttrValue::Integer(int)),
                ("flag".to_string(), AttrValue::Boolean(flag)),
            ];
            Event::new(attributes, data).expect("valid")
        })
}

/// A record as prost writes it, from its generated structs.
fn prost_record(broker: &str, arrival: u64, hops: u32, e: &Event) -> Vec<u8> {
    use prost::Message;
    use switchyard::event::proto::record::{
        attribute, stored_event, Attribute, Record, StoredEvent,
    };
    let attributes = e
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
    let data = e.data().map(|d| match d {
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
        arrival_unix_nanos: arrival,
        hops,
        event: Some(StoredEvent { attributes, data }),
    }
    .encode_to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn structured_json_reads_back_the_event_it_wrote(e in event()) {
        let back = json::decode_event(&Bytes::from(json::encode_event(&e))).unwrap();
        prop_assert_eq!(sorted(&back), sorted(&e));
        prop_assert_eq!(back.data(), e.data());
    }

    #[test]
    fn a_stored_record_reads_back_exactly_as_the_event_kept_in_memory(
        e in event(),
        arrival in any::<u64>(),
        hops in 0u32..16,
    ) {
        // Routing and delivery use the decoded event for new records and the stored
        // bytes for older ones: the two must not differ in anything.
        let bytes = record::encode("default", arrival, hops, &e);
        let back = record::decode(7, Bytes::from(bytes)).unwrap();
        let kept = LogRecord { seq: 7, broker: "default".into(), arrival_unix_nanos: arrival, hops, event: e };
        prop_assert_eq!(back, kept);
    }

    #[test]
    fn a_record_is_written_byte_for_byte_as_prost_writes_its_message(
        e in prop_oneof![event(), every_kind()],
        arrival in prop_oneof![Just(0u64), any::<u64>()],
        hops in prop_oneof![Just(0u32), any::<u32>()],
        broker in prop_oneof![Just(String::new()), "[a-z-]{1,20}"],
    ) {
        // Records are written without prost's structs; what is on disk must stay the
        // `switchyard.v1.Record` message every other reader decodes.
        prop_assert_eq!(
            record::encode(&broker, arrival, hops, &e),
            prost_record(&broker, arrival, hops, &e)
        );
    }

    #[test]
    fn a_json_batch_reads_back_every_event_in_order(events in proptest::collection::vec(event(), 0..5)) {
        let back = json::decode_batch(&Bytes::from(json::encode_batch(&events))).unwrap();
        prop_assert_eq!(back.len(), events.len());
        for (b, e) in back.iter().zip(&events) {
            prop_assert_eq!(sorted(b), sorted(e));
            prop_assert_eq!(b.data(), e.data());
        }
    }

    #[test]
    fn protobuf_reads_back_the_event_it_wrote(e in event()) {
        let back = protobuf::decode_event(Bytes::from(protobuf::encode_event(&e))).unwrap();
        prop_assert_eq!(sorted_instants(&back), sorted_instants(&e));
        prop_assert_eq!(back.data().map(Data::body_bytes), e.data().map(Data::body_bytes));
    }

    #[test]
    fn a_protobuf_batch_reads_back_every_event(events in proptest::collection::vec(event(), 0..5)) {
        let back = protobuf::decode_batch(Bytes::from(protobuf::encode_batch(&events))).unwrap();
        prop_assert_eq!(back.len(), events.len());
        for (b, e) in back.iter().zip(&events) {
            prop_assert_eq!(sorted_instants(b), sorted_instants(e));
        }
    }

    #[test]
    fn binary_mode_reads_back_every_attribute_and_the_body(e in event()) {
        let (headers, body) = binary::encode(&e);
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(k, v);
        }
        let back = binary::decode(&map, body).unwrap();
        prop_assert_eq!(canonical(&back), canonical(&e));
        // An empty body and no body are the same HTTP message: both read as no data.
        let body = |e: &Event| e.data().map(Data::body_bytes).filter(|b| !b.is_empty());
        prop_assert_eq!(body(&back), body(&e));
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let b = Bytes::from(bytes);
        let _ = json::decode_event(&b);
        let _ = json::decode_batch(&b);
        let _ = protobuf::decode_event(b.clone());
        let _ = protobuf::decode_batch(b.clone());
    }

    #[test]
    fn arbitrary_headers_never_panic_the_binary_decoder(
        headers in proptest::collection::vec(("ce-[a-z]{0,12}|content-type|[a-z-]{1,12}", proptest::collection::vec(any::<u8>(), 0..64)), 0..8),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(&value)) {
                map.append(n, v);
            }
        }
        let _ = binary::decode(&map, Bytes::from(body));
    }
}
