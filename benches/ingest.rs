//! Ingest micro-benchmarks: decoding per content mode, encoding for delivery, and durable
//! append throughput by group size against a same-run baseline (the same bytes appended
//! to a plain file with one `fdatasync` per group: the physical ceiling for durable
//! ingest on this disk).
//!
//! `cargo bench --bench ingest`; see docs/performance.md.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderName, HeaderValue};
use switchyard::event::{binary, json, protobuf, Event};
use switchyard::log::{record, Append, GroupEntry};
use switchyard::store::{Durability, Store, StoreOptions};

fn tekton_request() -> (HeaderMap, Bytes) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tekton/05-taskrun-successful.json"
    );
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("tests/fixtures")).unwrap();
    let mut headers = HeaderMap::new();
    for (k, v) in fixture["headers"].as_object().unwrap() {
        headers.insert(
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(),
            HeaderValue::from_str(v.as_str().unwrap()).unwrap(),
        );
    }
    (
        headers,
        Bytes::from(serde_json::to_vec(&fixture["body"]).unwrap()),
    )
}

fn structured_1k(id: usize) -> serde_json::Value {
    serde_json::json!({
        "specversion": "1.0", "id": format!("evt-{id}"), "source": "/apis///namespaces/ci//build",
        "type": "dev.tekton.event.taskrun.successful.v1", "time": "2023-12-07T06:20:01.518567259Z",
        "datacontenttype": "application/json",
        "data": {"taskRun": {"metadata": {"name": "build", "namespace": "ci"}, "pad": "x".repeat(700)}}
    })
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let (headers, body) = tekton_request();
    g.throughput(Throughput::Elements(1));
    g.bench_function("binary/tekton-15KiB", |b| {
        b.iter(|| binary::decode(&headers, body.clone()).unwrap())
    });
    let one = Bytes::from(serde_json::to_vec(&structured_1k(0)).unwrap());
    g.bench_function("structured-json/1KiB", |b| {
        b.iter(|| json::decode_event(&one).unwrap())
    });
    let event = json::decode_event(&one).unwrap();
    let proto = Bytes::from(protobuf::encode_event(&event));
    g.bench_function("structured-protobuf/1KiB", |b| {
        b.iter(|| protobuf::decode_event(proto.clone()).unwrap())
    });
    let batch: Vec<serde_json::Value> = (0..100).map(structured_1k).collect();
    let batch_json = Bytes::from(serde_json::to_vec(&batch).unwrap());
    let events: Vec<Event> = json::decode_batch(&batch_json).unwrap();
    let batch_proto = Bytes::from(protobuf::encode_batch(&events));
    g.throughput(Throughput::Elements(100));
    g.bench_function("batch-json/100x1KiB", |b| {
        b.iter(|| json::decode_batch(&batch_json).unwrap())
    });
    g.bench_function("batch-protobuf/100x1KiB", |b| {
        b.iter(|| protobuf::decode_batch(batch_proto.clone()).unwrap())
    });
    g.finish();
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        path: dir.path().join("log"),
        durability: Durability::Fsync,
        cache_capacity: 64 << 20,
        dedupe_window_nanos: 600_000_000_000,
    };
    let log = Store::open(&options, &["default".to_string()]).unwrap();
    let event =
        json::decode_event(&Bytes::from(serde_json::to_vec(&structured_1k(0)).unwrap())).unwrap();
    let rec = Bytes::from(record::encode("default", 0, 0, &event));
    let mut baseline = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("baseline"))
        .unwrap();
    let broker: Arc<str> = Arc::from("default");
    let mut g = c.benchmark_group("append-fsync");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    let mut n = 0u64;
    for size in [1usize, 10, 100] {
        g.throughput(Throughput::Elements(size as u64));
        g.bench_with_input(BenchmarkId::new("sled", size), &size, |b, &size| {
            b.iter(|| {
                let appends = (0..size)
                    .map(|_| {
                        n += 1;
                        Append {
                            record: rec.clone(),
                            dedupe_key: Some(n.to_be_bytes().to_vec()),
                            decoded: None,
                        }
                    })
                    .collect();
                log.write_group(
                    &[GroupEntry {
                        broker: broker.clone(),
                        appends,
                    }],
                    n,
                )
                .unwrap()
            })
        });
        g.bench_with_input(
            BenchmarkId::new("file-fdatasync-baseline", size),
            &size,
            |b, &size| {
                b.iter(|| {
                    for _ in 0..size {
                        baseline.write_all(&rec).unwrap();
                    }
                    baseline.sync_data().unwrap();
                })
            },
        );
    }
    g.finish();
}

/// Encoding for delivery: binary mode (headers and body) and structured JSON, for the
/// Tekton event and the 1 KiB event (decoded once, outside the loop); and the log
/// record each event is stored as.
fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    let (headers, body) = tekton_request();
    let tekton = binary::decode(&headers, body).unwrap();
    let one =
        json::decode_event(&Bytes::from(serde_json::to_vec(&structured_1k(0)).unwrap())).unwrap();
    for (name, event) in [("tekton-15KiB", &tekton), ("1KiB", &one)] {
        g.bench_function(format!("binary/{name}"), |b| {
            b.iter(|| binary::encode(event))
        });
        g.bench_function(format!("structured-json/{name}"), |b| {
            b.iter(|| json::encode_event(event))
        });
        g.bench_function(format!("record/{name}"), |b| {
            b.iter(|| record::encode("default", 1, 0, event))
        });
    }
    g.finish();
}

criterion_group!(benches, decode, encode, append);
criterion_main!(benches);
