//! The ten Tekton Pipelines requests of ../shared/testdata/tekton, posted as Tekton
//! posts them (binary mode), are accepted and read back from the log byte-identical.

mod common;

use common::{testdata, TestServer};
use serde_json::Value;
use switchyard::event::Data;

fn fixtures() -> Vec<(String, Value)> {
    let dir = testdata().join("tekton");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(|c: char| c.is_ascii_digit())
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_ten_tekton_requests_are_stored_byte_identical() {
    let t = TestServer::start("").await;
    let fixtures = fixtures();
    assert_eq!(fixtures.len(), 10);
    let mut sent = Vec::new();
    for (name, f) in &fixtures {
        assert_eq!(f["content_mode"], "binary", "{name}");
        // Hop-by-hop and length headers are the client's to set.
        let headers: Vec<(String, String)> = f["headers"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.to_ascii_lowercase().as_str(),
                    "content-length" | "connection" | "host"
                )
            })
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let body = serde_json::to_vec(&f["body"]).unwrap();
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let reply = t
            .post(f["path"].as_str().unwrap(), &refs, body.clone())
            .await;
        assert_eq!(reply.status, 202, "{name}: {:?}", reply.json());
        sent.push((name, headers, body));
    }
    let records = t.records("default").await;
    assert_eq!(records.len(), 10);
    for (record, (name, headers, body)) in records.iter().zip(&sent) {
        let e = &record.event;
        for (k, v) in headers {
            let k = k.to_ascii_lowercase();
            if let Some(attr) = k.strip_prefix("ce-") {
                assert_eq!(
                    e.get(attr).map(|a| a.to_canonical_string()).as_deref(),
                    Some(v.as_str()),
                    "{name}: {attr}"
                );
            }
            if k == "content-type" {
                assert_eq!(e.datacontenttype(), Some(v.as_str()), "{name}");
            }
        }
        let ce_headers = headers
            .iter()
            .filter(|(k, _)| k.to_ascii_lowercase().starts_with("ce-"))
            .count();
        assert_eq!(
            e.attributes().len(),
            ce_headers + 1,
            "{name}: only the sent attributes are stored"
        );
        assert_eq!(
            e.data(),
            Some(&Data::Binary(body.clone().into())),
            "{name}: data is byte-identical"
        );
        assert_eq!(record.broker, "default");
        assert_eq!(record.hops, 0);
    }
    // The original `time` text survives, nanoseconds and all.
    assert_eq!(
        records[1].event.get_str("time"),
        Some("2023-12-07T06:20:01.518567259Z")
    );
}
