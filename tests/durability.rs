//! Durability of the real binary: 32 concurrent clients, SIGKILL mid-load, restart on
//! the same directory; every event that got a 202 is in the log.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use switchyard::log::sled::{Durability, SledLog, SledOptions};
use switchyard::log::LogBackend;

const CLIENTS: usize = 32;

fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("switchyard.yaml");
    std::fs::write(
        &path,
        format!(
            "ingress:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nstorage:\n  path: {}\n  durability: fsync\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

async fn load(addr: std::net::SocketAddr, acked: Arc<Mutex<Vec<String>>>, stop: Instant) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = client.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < stop {
                let id = format!("c{c}-{n}");
                n += 1;
                // A Tekton-sized body, so that some records go through sled's blob files.
                let body = Bytes::from(format!(
                    "{{\"taskRun\":{{\"name\":\"{id}\",\"pad\":\"{}\"}}}}",
                    "x".repeat(if n % 10 == 0 { 200_000 } else { 2_000 })
                ));
                let req = http::Request::post(format!("http://{addr}/"))
                    .header("ce-specversion", "1.0")
                    .header("ce-id", &id)
                    .header("ce-source", "/durability")
                    .header("ce-type", "dev.tekton.event.taskrun.started.v1")
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .unwrap();
                match client.request(req).await {
                    Ok(r) if r.status() == 202 => acked.lock().unwrap().push(id),
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => return, // the broker was killed
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let broker = process::start(Some(&config), dir.path(), &[]);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let load_task = tokio::spawn(load(
        broker.ingress,
        acked.clone(),
        Instant::now() + Duration::from_secs(30),
    ));
    // Kill once enough events are acknowledged (bounded: at most 20 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 1500 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.kill();
    load_task.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 100,
        "only {} events were acknowledged before the kill",
        acked.len()
    );

    // Restart on the same directory; it serves again.
    let broker = process::start(Some(&config), dir.path(), &[]);
    let probe = Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>()
        .request(
            http::Request::post(format!("http://{}/", broker.ingress))
                .header("content-type", "application/cloudevents+json")
                .body(Full::new(Bytes::from_static(
                    br#"{"specversion":"1.0","id":"probe","source":"/p","type":"t"}"#,
                )))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(probe.status(), 202);
    assert!(broker.terminate().success());

    let options = SledOptions {
        path: dir.path().join("data"),
        durability: Durability::Fsync,
        cache_capacity: 16 << 20,
        dedupe_window_nanos: 0,
    };
    let log = SledLog::open(&options, &["default".to_string()]).unwrap();
    let stored: std::collections::HashSet<String> = log
        .read("default", 1, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| r.event.id().to_string())
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events were lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(stored.contains("probe"));
}
