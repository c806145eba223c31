//! The events of a broker on NATS JetStream, through the log's event seam, against real
//! nats-server processes: appends acknowledged with their sequences, dedupe across two
//! instances, reads by sequence and by time, stats, a three-node cluster with three
//! replicas, a server that goes away and comes back, and the dead-letter store.

#[path = "common/nats.rs"]
mod nats;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchyard::event::{AttrValue, Event};
use switchyard::log::jetstream::{Credentials, JetStreamEvents, JetStreamOptions};
use switchyard::log::{record, Append, AppendOutcome, DeadLetter, DeadLetterBackend, EventBackend};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const T0: u64 = 1_767_225_600_000_000_000;

fn options(servers: Vec<String>, replicas: usize) -> JetStreamOptions {
    JetStreamOptions {
        servers,
        replicas,
        stream_prefix: "SWITCHYARD".into(),
        credentials: Credentials::None,
        tls: None,
        dedupe_window: Duration::from_secs(600),
        max_age: Duration::from_secs(7 * 86400),
        max_bytes: 0,
    }
}

fn event(id: &str) -> Event {
    Event::new(
        vec![
            ("specversion".into(), AttrValue::String("1.0".into())),
            ("id".into(), AttrValue::String(id.into())),
            ("source".into(), AttrValue::UriRef("/tekton".into())),
            ("type".into(), AttrValue::String("dev.tekton.event".into())),
        ],
        None,
    )
    .unwrap()
}

/// An append of `id` arrived at `at`, keyed by its id.
fn append(id: &str, at: u64) -> Append {
    Append {
        record: Bytes::from(record::encode("default", at, 0, &event(id))),
        dedupe_key: Some(id.as_bytes().to_vec()),
        decoded: None,
    }
}

async fn connect(opts: &JetStreamOptions, stop: &CancellationToken) -> Arc<JetStreamEvents> {
    JetStreamEvents::connect(
        opts,
        &["default".to_string()],
        stop.clone(),
        &TaskTracker::new(),
    )
    .await
    .expect("connects and creates the stream")
}

fn ids(records: &[switchyard::log::LogRecord]) -> Vec<String> {
    records.iter().map(|r| r.event.id().to_string()).collect()
}

#[tokio::test]
async fn appends_are_acknowledged_in_order_and_read_back_by_sequence_and_time() {
    let Some(bin) = nats::available() else { return };
    let server = nats::Nats::single(&bin);
    let stop = CancellationToken::new();
    let log = connect(&options(server.urls(), 1), &stop).await;
    let broker: Arc<str> = Arc::from("default");
    let out = log
        .append(
            broker.clone(),
            (0..5)
                .map(|i| append(&format!("e{i}"), T0 + i * 1_000))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(out, (1..=5).map(AppendOutcome::Stored).collect::<Vec<_>>());
    assert_eq!(log.head("default"), Some(5));
    assert_eq!(
        ids(&log.read("default", 1, 100).await.unwrap()),
        ["e0", "e1", "e2", "e3", "e4"]
    );
    let two = log.read("default", 3, 2).await.unwrap();
    assert_eq!((two[0].seq, ids(&two)), (3, vec!["e2".into(), "e3".into()]));
    assert_eq!(two[0].arrival_unix_nanos, T0 + 2_000);
    assert!(log.read("default", 6, 10).await.unwrap().is_empty());
    // A read longer than one batch comes back whole.
    let many: Vec<Append> = (5..605)
        .map(|i| append(&format!("e{i}"), T0 + i * 1_000))
        .collect();
    log.append(broker.clone(), many).await.unwrap();
    let all = log.read("default", 1, 1000).await.unwrap();
    assert_eq!(all.len(), 605);
    assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    // By time: the first event that arrived at or after it.
    assert_eq!(log.seq_at_time("default", T0 + 2_500).await.unwrap(), 4);
    assert_eq!(log.seq_at_time("default", 0).await.unwrap(), 1);
    assert_eq!(log.seq_at_time("default", u64::MAX).await.unwrap(), 606);
    let stats = log.stats("default").await.unwrap();
    assert_eq!(stats.stored.events, 605);
    assert!(stats.stored.bytes > 605 * 50);
    assert_eq!(stats.oldest_arrival, Some(T0));
    assert_eq!(log.refusing_appends().await, None);
    stop.cancel();
}

#[tokio::test]
async fn a_duplicate_is_refused_whichever_instance_takes_it() {
    let Some(bin) = nats::available() else { return };
    let server = nats::Nats::single(&bin);
    let stop = CancellationToken::new();
    let opts = options(server.urls(), 1);
    let (a, b) = (connect(&opts, &stop).await, connect(&opts, &stop).await);
    let broker: Arc<str> = Arc::from("default");
    assert_eq!(
        a.append(broker.clone(), vec![append("x", T0), append("y", T0)])
            .await
            .unwrap(),
        [AppendOutcome::Stored(1), AppendOutcome::Stored(2)]
    );
    // The other instance: the same key is the event stored at 1.
    assert_eq!(
        b.append(
            broker.clone(),
            vec![append("x", T0 + 1), append("z", T0 + 1)]
        )
        .await
        .unwrap(),
        [AppendOutcome::Duplicate(1), AppendOutcome::Stored(3)]
    );
    // Each instance's head follows the other's appends.
    let mut head = a.watch("default").unwrap();
    tokio::time::timeout(Duration::from_secs(5), head.wait_for(|h| *h == 3))
        .await
        .expect("instance a sees instance b's append")
        .unwrap();
    stop.cancel();
}

#[tokio::test]
async fn three_replicas_on_a_cluster_take_appends_with_a_node_down() {
    let Some(bin) = nats::available() else { return };
    let mut cluster = nats::Nats::cluster(&bin);
    let stop = CancellationToken::new();
    let log = connect(&options(cluster.urls(), 3), &stop).await;
    let broker: Arc<str> = Arc::from("default");
    // A new replicated stream may refuse the very first appends while its replicas
    // catch up (a producer would get 503 and retry): retry them, with the same keys.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let first = loop {
        let batch: Vec<Append> = (0..20).map(|i| append(&format!("a{i}"), T0)).collect();
        match log.append(broker.clone(), batch).await {
            Ok(out) => break out,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("first appends refused, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the cluster took no append: {e}"),
        }
    };
    assert_eq!(first.len(), 20);
    // One node of three dies: the other two are a quorum, and appends go on.
    cluster.nodes[2].kill();
    let mut stored = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stored < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "appends did not resume"
        );
        if let Ok(out) = log
            .append(broker.clone(), vec![append(&format!("b{stored}"), T0)])
            .await
        {
            // A retry of an append stored but not acknowledged is its duplicate.
            assert!(
                matches!(
                    out[0],
                    AppendOutcome::Stored(_) | AppendOutcome::Duplicate(_)
                ),
                "{out:?}"
            );
            stored += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let all = log.read("default", 1, 100).await.unwrap();
    assert_eq!(all.len(), 40, "{:?}", ids(&all));
    stop.cancel();
}

#[tokio::test]
async fn appends_fail_while_the_server_is_gone_and_work_again_when_it_is_back() {
    let Some(bin) = nats::available() else { return };
    let mut server = nats::Nats::single(&bin);
    let stop = CancellationToken::new();
    let log = connect(&options(server.urls(), 1), &stop).await;
    let broker: Arc<str> = Arc::from("default");
    log.append(broker.clone(), vec![append("before", T0)])
        .await
        .unwrap();
    server.nodes[0].kill();
    let err = log
        .append(broker.clone(), vec![append("during", T0)])
        .await
        .expect_err("no server, no acknowledgement");
    assert!(err.is_unavailable(), "{err}");
    let why = log.refusing_appends().await.expect("readiness says why");
    assert!(why.contains("cannot be reached"), "{why}");
    server.nodes[0].restart();
    server.nodes[0].wait_ready(false);
    // The client reconnects by itself; the same key again is stored once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let out = loop {
        match log.append(broker.clone(), vec![append("during", T0)]).await {
            Ok(out) => break out,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("appends did not resume: {e}"),
        }
    };
    assert_eq!(log.refusing_appends().await, None);
    let all = ids(&log.read("default", 1, 10).await.unwrap());
    assert_eq!(all.first().map(String::as_str), Some("before"));
    assert_eq!(
        all.iter().filter(|i| *i == "during").count(),
        1,
        "{all:?}; {out:?}"
    );
    stop.cancel();
}

fn dead_letter(seq: u64) -> DeadLetter {
    DeadLetter {
        broker: "default".into(),
        subscription: "notify".into(),
        sink: "http://sink.example/".into(),
        seq,
        attempts: 3,
        last_status: Some(503),
        last_error: "503 Service Unavailable".into(),
        time_unix_nanos: T0 + seq,
        record: String::new(),
        dead_letter_sink_delivered: false,
    }
}

#[tokio::test]
async fn dead_letters_are_kept_listed_and_deleted_within_their_bound() {
    let Some(bin) = nats::available() else { return };
    let server = nats::Nats::single(&bin);
    let stop = CancellationToken::new();
    let opts = options(server.urls(), 1);
    let events = connect(&opts, &stop).await;
    let letters = events
        .dead_letters(&opts, 3, Duration::ZERO)
        .await
        .expect("the dead-letter stream");
    let mut ids = Vec::new();
    for seq in 1..=4 {
        ids.push(letters.store(&dead_letter(seq)).await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "ids grow: {ids:?}");
    // At most three are kept: the oldest went.
    assert_eq!(letters.count().await.unwrap(), 3);
    let listed = letters.list().await.unwrap();
    let seqs: Vec<u64> = listed.iter().map(|(_, l)| l.seq).collect();
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(listed[0].1, dead_letter(2));
    assert_eq!(letters.get(ids[2]).await.unwrap(), Some(dead_letter(3)));
    assert_eq!(
        letters.get(ids[0]).await.unwrap(),
        None,
        "dropped by the bound"
    );
    assert!(letters.delete(ids[2]).await.unwrap());
    assert!(!letters.delete(ids[2]).await.unwrap(), "deleted already");
    assert_eq!(letters.get(ids[2]).await.unwrap(), None);
    assert_eq!(letters.count().await.unwrap(), 2);
    // Another instance sees the same store.
    let other = connect(&opts, &stop)
        .await
        .dead_letters(&opts, 3, Duration::ZERO)
        .await
        .unwrap();
    let seqs: Vec<u64> = other
        .list()
        .await
        .unwrap()
        .iter()
        .map(|(_, l)| l.seq)
        .collect();
    assert_eq!(seqs, [2, 4]);
    stop.cancel();
}
