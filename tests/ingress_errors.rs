//! Bad requests get the exact status and a problem+json body naming the attribute or
//! batch index, and lose nothing else: the valid events sent between them are all
//! stored, in order, and nothing more.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{Backend, TestServer};
use http::Method;
use prost::Message;
use serde_json::json;
use switchyard::event::proto::cloudevents::{CloudEvent, CloudEventBatch};

const TOKEN: &str = "s3cret-token";
const AUTH: (&str, &str) = ("authorization", "Bearer s3cret-token");

struct Bad {
    name: &'static str,
    method: Method,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: u16,
    attribute: Option<&'static str>,
    index: Option<u64>,
}

fn binary(
    name: &'static str,
    extra: &[(&'static str, &'static str)],
    drop: &str,
    status: u16,
    attribute: Option<&'static str>,
) -> Bad {
    let mut headers: Vec<(&str, &str)> = vec![
        ("ce-specversion", "1.0"),
        ("ce-id", "b-1"),
        ("ce-source", "/tests"),
        ("ce-type", "dev.switchyard.test"),
    ];
    headers.retain(|(k, _)| *k != drop);
    for (k, v) in extra {
        headers.retain(|(h, _)| h != k);
        headers.push((k, v));
    }
    headers.push(AUTH);
    Bad {
        name,
        method: Method::POST,
        path: "/",
        headers,
        body: b"{}".to_vec(),
        status,
        attribute,
        index: None,
    }
}

/// A POST to `/` with a content type and the token.
fn typed(
    name: &'static str,
    content_type: &'static str,
    body: impl Into<Vec<u8>>,
    status: u16,
    attribute: Option<&'static str>,
    index: Option<u64>,
) -> Bad {
    Bad {
        name,
        method: Method::POST,
        path: "/",
        headers: vec![("content-type", content_type), AUTH],
        body: body.into(),
        status,
        attribute,
        index,
    }
}

fn structured(
    name: &'static str,
    body: impl Into<Vec<u8>>,
    attribute: Option<&'static str>,
) -> Bad {
    typed(
        name,
        "application/cloudevents+json",
        body,
        400,
        attribute,
        None,
    )
}

fn event_with(extra: serde_json::Value) -> Vec<u8> {
    let mut e = json!({"specversion": "1.0", "id": "s-1", "source": "/tests", "type": "dev.switchyard.test"});
    for (k, v) in extra.as_object().unwrap() {
        e[k] = v.clone();
    }
    serde_json::to_vec(&e).unwrap()
}

fn table() -> Vec<Bad> {
    let ok = json!({"specversion": "1.0", "id": "x", "source": "/tests", "type": "t"});
    let mut bad_member = ok.clone();
    bad_member.as_object_mut().unwrap().remove("id");
    let proto_ok = CloudEvent {
        id: "p".into(),
        source: "/p".into(),
        spec_version: "1.0".into(),
        r#type: "t".into(),
        ..Default::default()
    };
    let proto_bad = CloudEvent {
        r#type: String::new(),
        ..proto_ok.clone()
    };
    let oversize = vec![b'x'; 70 * 1024];
    let rows = vec![
        binary(
            "binary: no specversion",
            &[],
            "ce-specversion",
            400,
            Some("specversion"),
        ),
        binary("binary: no id", &[], "ce-id", 400, Some("id")),
        binary("binary: no source", &[], "ce-source", 400, Some("source")),
        binary("binary: no type", &[], "ce-type", 400, Some("type")),
        binary("binary: empty id", &[("ce-id", "")], "", 400, Some("id")),
        binary(
            "binary: specversion 0.3",
            &[("ce-specversion", "0.3")],
            "",
            400,
            Some("specversion"),
        ),
        binary(
            "binary: specversion 2.0",
            &[("ce-specversion", "2.0")],
            "",
            400,
            Some("specversion"),
        ),
        binary(
            "binary: bad attribute name",
            &[("ce-my_ext", "x")],
            "",
            400,
            Some("my_ext"),
        ),
        binary(
            "binary: time garbage",
            &[("ce-time", "lunchtime")],
            "",
            400,
            Some("time"),
        ),
        binary(
            "binary: time without seconds",
            &[("ce-time", "2018-04-05T18:31Z")],
            "",
            400,
            Some("time"),
        ),
        binary(
            "binary: relative dataschema",
            &[("ce-dataschema", "/schema")],
            "",
            400,
            Some("dataschema"),
        ),
        binary(
            "binary: ce-datacontenttype header",
            &[("ce-datacontenttype", "application/json")],
            "",
            400,
            Some("datacontenttype"),
        ),
        binary(
            "binary: content-type not a media type",
            &[("content-type", "xyz")],
            "",
            400,
            Some("datacontenttype"),
        ),
        binary(
            "binary: invalid UTF-8 after decoding",
            &[("ce-subject", "%FF%FE")],
            "",
            400,
            Some("subject"),
        ),
        binary(
            "binary: broken percent escape",
            &[("ce-subject", "50%")],
            "",
            400,
            Some("subject"),
        ),
        binary(
            "binary: control character",
            &[("ce-subject", "line%0Abreak")],
            "",
            400,
            Some("subject"),
        ),
        binary(
            "binary: source with a space",
            &[("ce-source", "/a%20b")],
            "",
            400,
            Some("source"),
        ),
        typed(
            "binary: no CloudEvent at all",
            "application/json",
            b"{}".to_vec(),
            400,
            Some("specversion"),
            None,
        ),
        structured("structured: not JSON", "{not json", None),
        structured("structured: an array", "[]", None),
        structured(
            "structured: duplicate key",
            r#"{"specversion":"1.0","id":"a","id":"b","source":"/s","type":"t"}"#,
            Some("id"),
        ),
        structured(
            "structured: data and data_base64",
            event_with(json!({"data": "x", "data_base64": "eA=="})),
            Some("data_base64"),
        ),
        structured(
            "structured: bad base64",
            event_with(json!({"data_base64": "!!notbase64"})),
            Some("data_base64"),
        ),
        structured(
            "structured: capitalised extension",
            event_with(json!({"MyExt": "x"})),
            Some("MyExt"),
        ),
        structured(
            "structured: fractional extension",
            event_with(json!({"ext": 1.5})),
            Some("ext"),
        ),
        structured(
            "structured: object extension",
            event_with(json!({"ext": {"a": 1}})),
            Some("ext"),
        ),
        structured(
            "structured: integer overflow",
            event_with(json!({"ext": 4_294_967_296u64})),
            Some("ext"),
        ),
        structured(
            "structured: empty subject",
            event_with(json!({"subject": ""})),
            Some("subject"),
        ),
        structured(
            "structured: control character in type",
            event_with(json!({"type": "a\u{7}b"})),
            Some("type"),
        ),
        structured(
            "structured: bad time offset",
            event_with(json!({"time": "2018-04-05T18:31:00+25:00"})),
            Some("time"),
        ),
        typed(
            "batch: invalid member",
            "application/cloudevents-batch+json",
            serde_json::to_vec(&json!([ok, ok, bad_member])).unwrap(),
            400,
            Some("id"),
            Some(2),
        ),
        typed(
            "batch: a member larger than maxEventBytes",
            "application/cloudevents-batch+json",
            serde_json::to_vec(&json!([ok, {
                "specversion": "1.0", "id": "big", "source": "/s", "type": "t",
                "data": "x".repeat(64 * 1024 + 1)
            }]))
            .unwrap(),
            413,
            None,
            Some(1),
        ),
        typed(
            "batch: not an array",
            "application/cloudevents-batch+json",
            serde_json::to_vec(&ok).unwrap(),
            400,
            None,
            None,
        ),
        typed(
            "batch: non-object member",
            "application/cloudevents-batch+json",
            br#"["not an event"]"#.to_vec(),
            400,
            None,
            Some(0),
        ),
        typed(
            "protobuf: garbage",
            "application/cloudevents+protobuf",
            vec![0xff, 0xff, 0xff, 0x01],
            400,
            None,
            None,
        ),
        Bad {
            name: "protobuf batch: invalid member",
            method: Method::POST,
            path: "/",
            headers: vec![
                ("content-type", "application/cloudevents-batch+protobuf"),
                AUTH,
            ],
            body: CloudEventBatch {
                events: vec![proto_ok, proto_bad],
            }
            .encode_to_vec(),
            status: 400,
            attribute: Some("type"),
            index: Some(1),
        },
        Bad {
            name: "oversize event",
            method: Method::POST,
            path: "/",
            headers: vec![
                ("ce-specversion", "1.0"),
                ("ce-id", "big"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
                AUTH,
            ],
            body: oversize,
            status: 413,
            attribute: None,
            index: None,
        },
        Bad {
            name: "GET",
            method: Method::GET,
            path: "/",
            headers: vec![AUTH],
            body: vec![],
            status: 405,
            attribute: None,
            index: None,
        },
        Bad {
            name: "PUT",
            method: Method::PUT,
            path: "/",
            headers: vec![AUTH],
            body: vec![],
            status: 405,
            attribute: None,
            index: None,
        },
        Bad {
            name: "unknown broker",
            method: Method::POST,
            path: "/brokers/nope",
            headers: vec![("content-type", "application/cloudevents+json"), AUTH],
            body: serde_json::to_vec(&ok).unwrap(),
            status: 404,
            attribute: None,
            index: None,
        },
        Bad {
            name: "unknown path",
            method: Method::POST,
            path: "/events",
            headers: vec![AUTH],
            body: vec![],
            status: 404,
            attribute: None,
            index: None,
        },
        typed(
            "unknown structured format",
            "application/cloudevents+xml",
            b"<event/>".to_vec(),
            415,
            None,
            None,
        ),
        Bad {
            name: "missing token",
            method: Method::POST,
            path: "/",
            headers: vec![("content-type", "application/cloudevents+json")],
            body: serde_json::to_vec(&ok).unwrap(),
            status: 401,
            attribute: None,
            index: None,
        },
        Bad {
            name: "wrong token",
            method: Method::POST,
            path: "/",
            headers: vec![
                ("content-type", "application/cloudevents+json"),
                ("authorization", "Bearer s3cret-tokem"),
            ],
            body: serde_json::to_vec(&ok).unwrap(),
            status: 401,
            attribute: None,
            index: None,
        },
    ];
    rows
}

async fn tokened_broker(b: Backend) -> TestServer {
    b.start_with(|c| {
        c.ingress.tokens = vec!["old-token".into(), TOKEN.into()];
        c.ingress.max_event_bytes = 64 * 1024;
    })
    .await
}

/// Sends raw bytes on a fresh connection and returns the status code of the answer.
fn raw_status(addr: std::net::SocketAddr, request: &[u8], half_close: bool) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(request).unwrap();
    if half_close {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

async fn bad_requests_get_exact_statuses_and_lose_nothing_else(b: Backend) {
    let t = tokened_broker(b).await;
    let rows = table();
    assert!(rows.len() >= 30, "the table has {} rows", rows.len());
    let mut good = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let reply = t
            .request(row.method.clone(), row.path, &row.headers, row.body.clone())
            .await;
        assert_eq!(
            reply.status.as_u16(),
            row.status,
            "{}: {:?}",
            row.name,
            reply.json()
        );
        assert_eq!(
            reply.headers["content-type"], "application/problem+json",
            "{}",
            row.name
        );
        let problem = reply.json();
        assert_eq!(problem["status"], row.status, "{}", row.name);
        assert!(
            problem["title"].is_string() && problem["detail"].is_string(),
            "{}: {problem}",
            row.name
        );
        assert_eq!(
            problem["attribute"].as_str(),
            row.attribute,
            "{}: {problem}",
            row.name
        );
        assert_eq!(
            problem["index"].as_u64(),
            row.index,
            "{}: {problem}",
            row.name
        );
        if row.status == 405 {
            assert_eq!(reply.headers["allow"], "POST, OPTIONS");
        }
        if row.status == 401 {
            assert_eq!(reply.headers["www-authenticate"], "Bearer");
        }
        let id = format!("good-{i}");
        let ok = t
            .post(
                "/",
                &[
                    ("ce-specversion", "1.0"),
                    ("ce-id", &id),
                    ("ce-source", "/tests"),
                    ("ce-type", "ok"),
                    ("authorization", "Bearer old-token"),
                ],
                "fine",
            )
            .await;
        assert_eq!(ok.status, 202, "valid event after '{}'", row.name);
        good.push(id);
    }
    let stored: Vec<String> = t
        .records("default")
        .await
        .iter()
        .map(|r| r.event.id().to_string())
        .collect();
    assert_eq!(stored, good);
}

#[tokio::test]
async fn a_declared_oversize_body_is_refused_before_it_is_sent() {
    let t = tokened_broker(Backend::Embedded).await;
    let addr = t.server().ingress_addr;
    let status = tokio::task::spawn_blocking(move || {
        let req = format!("POST / HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\nce-specversion: 1.0\r\nce-id: 1\r\nce-source: /s\r\nce-type: t\r\ncontent-length: 100000000\r\n\r\n");
        raw_status(addr, req.as_bytes(), false)
    })
    .await
    .unwrap();
    assert_eq!(status, 413);
}

async fn a_truncated_body_is_a_client_error_and_stores_nothing(b: Backend) {
    let t = tokened_broker(b).await;
    let addr = t.server().ingress_addr;
    let status = tokio::task::spawn_blocking(move || {
        let req = format!("POST / HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/cloudevents+json\r\ncontent-length: 500\r\n\r\n{{\"specversion\":\"1.0\",");
        raw_status(addr, req.as_bytes(), true)
    })
    .await
    .unwrap();
    assert_eq!(status, 400);
    assert!(t.records("default").await.is_empty());
}

#[tokio::test]
async fn options_answers_the_webhook_handshake() {
    let t = TestServer::start("").await;
    let reply = t
        .request(
            Method::OPTIONS,
            "/",
            &[("webhook-request-origin", "tekton.example.com")],
            "",
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.headers["webhook-allowed-origin"],
        "tekton.example.com"
    );
    assert_eq!(reply.headers["allow"], "POST, OPTIONS");
}

async fn named_brokers_have_their_own_logs(b: Backend) {
    let t = b.start("brokers: [default, ci]\n").await;
    let ok = |id: &str| json!({"specversion": "1.0", "id": id, "source": "/s", "type": "t"});
    let ct = [("content-type", "application/cloudevents+json")];
    assert_eq!(
        t.post(
            "/brokers/ci",
            &ct,
            serde_json::to_vec(&ok("to-ci")).unwrap()
        )
        .await
        .status,
        202
    );
    assert_eq!(
        t.post("/", &ct, serde_json::to_vec(&ok("to-default")).unwrap())
            .await
            .status,
        202
    );
    assert_eq!(
        t.post(
            "/brokers/default",
            &ct,
            serde_json::to_vec(&ok("to-default-2")).unwrap()
        )
        .await
        .status,
        202
    );
    let ids = |rs: Vec<switchyard::log::LogRecord>| {
        rs.iter()
            .map(|r| r.event.id().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(t.records("ci").await), ["to-ci"]);
    assert_eq!(
        ids(t.records("default").await),
        ["to-default", "to-default-2"]
    );
}

#[tokio::test]
async fn a_slow_client_is_cut_off_by_the_header_timeout() {
    let t = TestServer::start_with(|c| {
        c.ingress.header_read_timeout = std::time::Duration::from_millis(300)
    })
    .await;
    let addr = t.server().ingress_addr;
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\n").unwrap();
        let mut buf = Vec::new();
        // The server answers 408 or just closes; either way the read ends.
        s.read_to_end(&mut buf).is_ok()
    })
    .await
    .unwrap();
    assert!(closed);
    // Others are still served.
    let reply = t.post_json(&common::minimal("after-slowloris")).await;
    assert_eq!(reply.status, 202);
}

#[tokio::test]
async fn connections_over_the_limit_wait_while_every_one_is_busy() {
    let t = TestServer::start_with(|c| c.ingress.max_connections = 1).await;
    let addr = t.server().ingress_addr;
    // One connection in the middle of a request takes the only slot (an idle one would
    // be closed to make room: tests/hardening.rs).
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/cloudevents+json\r\ncontent-length: 100\r\n\r\n{",
    )
    .unwrap();
    let waiting = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        t.post_json(&common::minimal("queued")),
    )
    .await;
    assert!(
        waiting.is_err(),
        "a second connection was served beyond the limit"
    );
    drop(idle);
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        t.post_json(&common::minimal("served")),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 202);
}

common::backends! {
    bad_requests_get_exact_statuses_and_lose_nothing_else,
    a_truncated_body_is_a_client_error_and_stores_nothing,
    named_brokers_have_their_own_logs,
}
