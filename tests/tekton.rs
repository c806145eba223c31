//! The ten Tekton Pipelines requests of tests/fixtures/tekton, posted as Tekton
//! posts them (binary mode), are accepted and read back from the log byte-identical.

mod common;

use common::{tekton_requests, Backend};
use switchyard::event::Data;

async fn the_ten_tekton_requests_are_stored_byte_identical(b: Backend) {
    let t = b.start("").await;
    let requests = tekton_requests();
    assert_eq!(requests.len(), 10);
    for r in &requests {
        assert_eq!(r.content_mode, "binary", "{}", r.file);
        let reply = t.post_tekton(r).await;
        assert_eq!(reply.status, 202, "{}: {:?}", r.file, reply.json());
    }
    let records = t.records("default").await;
    assert_eq!(records.len(), 10);
    for (record, r) in records.iter().zip(&requests) {
        let (name, headers, body) = (&r.file, &r.headers, &r.body);
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
        assert_eq!(&*record.broker, "default");
        assert_eq!(record.hops, 0);
    }
    // The original `time` text survives, nanoseconds and all.
    assert_eq!(
        records[1].event.get_str("time"),
        Some("2023-12-07T06:20:01.518567259Z")
    );
}

common::backends! {
    the_ten_tekton_requests_are_stored_byte_identical,
}
