//! Damaged storage found at start-up, with the real binary: a record whose frame fails
//! its checksum is reported with its sequence and skipped, the rest delivered; an index
//! that sled cut short at a bad checksum is rebuilt from the segments; records gone
//! from the segments are reported with the lost sequence range. Never a panic.

mod common;

use std::path::Path;
use std::time::Duration;

use common::process;
use common::sink::{Answer, TestSink};

fn config(dir: &Path, subscriptions: &str) -> std::path::PathBuf {
    let subs = dir.join("subs");
    std::fs::create_dir_all(&subs).unwrap();
    std::fs::write(subs.join("s.yaml"), subscriptions).unwrap();
    let path = dir.join("switchyard.yaml");
    std::fs::write(
        &path,
        format!(
            "ingress:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nstorage:\n  path: {}\nsubscriptions: [{}]\n",
            dir.join("data").display(),
            subs.display()
        ),
    )
    .unwrap();
    path
}

fn post(addr: std::net::SocketAddr, id: &str, data: &str) {
    use std::io::{Read, Write};
    let body =
        format!(r#"{{"specversion":"1.0","id":"{id}","source":"/c","type":"t","data":"{data}"}}"#);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/cloudevents+json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 202"), "{id}: {out}");
}

/// Reads the broker's lines until one contains every part of `want`, or panics with
/// what it said.
fn expect_line(broker: &process::Broker, want: &[&str]) -> String {
    let mut seen: Vec<String> = broker.startup.clone();
    if let Some(l) = seen.iter().find(|l| want.iter().all(|w| l.contains(w))) {
        return l.clone();
    }
    loop {
        match broker.lines.recv_timeout(Duration::from_secs(20)) {
            Ok(l) if want.iter().all(|w| l.contains(w)) => return l,
            Ok(l) => seen.push(l),
            Err(_) => panic!(
                "no line with {want:?}; the broker said:\n{}",
                seen.join("\n")
            ),
        }
    }
}

fn metric(admin: std::net::SocketAddr, line_start: &str) -> Option<String> {
    admin_get(admin, "/metrics")
        .lines()
        .find(|l| l.starts_with(line_start))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_does_not_decode_is_reported_with_its_sequence_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let cfg = config(dir.path(), "");
    let broker = process::start(Some(&cfg), dir.path(), &[]);
    for i in 1..=5 {
        post(broker.ingress, &format!("e{i}"), "payload");
    }
    assert!(broker.terminate().success());

    // Damage two records the way a bad disk would: a flipped bit in one, the other
    // overwritten whole.
    {
        use std::os::unix::fs::FileExt;
        let (segment, third) = frame(dir.path(), 3);
        let (_, fourth) = frame(dir.path(), 4);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&segment)
            .unwrap();
        let mut byte = [0u8];
        let at = third.0 + third.1 - 1;
        f.read_exact_at(&mut byte, at).unwrap();
        f.write_all_at(&[byte[0] ^ 0x10], at).unwrap();
        f.write_all_at(&vec![0xff; fourth.1 as usize], fourth.0)
            .unwrap();
    }
    // A subscription from the start of the log reads every record.
    config(
        dir.path(),
        &format!("apiVersion: switchyard.dev/v1alpha1\nkind: Subscription\nmetadata: {{ name: all }}\nspec:\n  startFrom: earliest\n  sinks: [{{ uri: '{}' }}]\n", sink.url("/all")),
    );
    let broker = process::start(Some(&cfg), dir.path(), &[]);
    for seq in ["seq=3", "seq=4"] {
        let line = expect_line(&broker, &["ERROR", "corrupt", seq]);
        assert!(line.contains("broker=default"), "{line}");
    }
    let got = sink.wait_for(3, Duration::from_secs(20)).await;
    let mut ids: Vec<&str> = got.iter().filter_map(|r| r.header("ce-id")).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["e1", "e2", "e5"],
        "the undamaged records are delivered"
    );
    assert_eq!(
        metric(
            broker.admin,
            "switchyard_log_damaged_records{broker=\"default\",kind=\"corrupt\"}"
        )
        .as_deref(),
        Some("switchyard_log_damaged_records{broker=\"default\",kind=\"corrupt\"} 2")
    );
    // Still taking events.
    post(broker.ingress, "after", "payload");
    assert!(broker.terminate().success());
}

/// The segment file and the (offset, length) of record `seq`'s frame, from the
/// segment's index file (per record: where its frame ends, the record's length; two
/// big-endian u32). The test logs fit one segment, which starts at 1.
fn frame(dir: &Path, seq: u64) -> (std::path::PathBuf, (u64, u64)) {
    let segment = dir.join("data/segments/default/00000000000000000001");
    let index = std::fs::read(segment.with_extension("idx")).unwrap();
    let end_of = |seq: u64| -> u64 {
        if seq == 0 {
            return 0;
        }
        let at = (seq as usize - 1) * 8;
        u64::from(u32::from_be_bytes(index[at..at + 4].try_into().unwrap()))
    };
    let offset = end_of(seq - 1);
    (segment, (offset, end_of(seq) - offset))
}

/// The status line and body of an admin GET.
fn admin_get(admin: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn write_300(dir: &Path, cfg: &Path) {
    let broker = process::start(Some(cfg), dir, &[]);
    let data = "x".repeat(300);
    for i in 1..=300 {
        post(broker.ingress, &format!("l{i}"), &data);
    }
    assert!(broker.terminate().success());
}

#[test]
fn an_index_file_cut_short_is_rebuilt_from_the_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    write_300(dir.path(), &cfg);
    // The segment's index file loses its second half and gets a torn entry instead, as
    // a power loss before its background sync can leave it.
    let (segment, _) = frame(dir.path(), 1);
    let index = segment.with_extension("idx");
    {
        let mut bytes = std::fs::read(&index).unwrap();
        bytes.truncate(150 * 8);
        bytes.extend_from_slice(&[0xde; 5]);
        std::fs::write(&index, bytes).unwrap();
    }
    let broker = process::start(Some(&cfg), dir.path(), &[]);
    let line = expect_line(&broker, &["indexed again", "first=151", "last=300"]);
    assert!(!broker.startup.iter().any(|l| l.contains("panicked")));
    assert!(
        !broker.startup.iter().any(|l| l.contains("are gone")),
        "{line}"
    );
    for seq in [1, 150, 299, 300] {
        let answer = admin_get(
            broker.admin,
            &format!("/api/v1/brokers/default/events/{seq}"),
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{seq}: {answer}");
        assert!(answer.contains(&format!("\"l{seq}\"")), "{seq}: {answer}");
    }
    // The dedupe keys are still known: the same event again is not stored.
    post(broker.ingress, "l300", &"x".repeat(300));
    post(broker.ingress, "after", "payload");
    let answer = admin_get(broker.admin, "/api/v1/brokers/default/events/301");
    assert!(answer.contains("\"after\""), "{answer}");
    assert!(broker.terminate().success());
}

#[test]
fn records_gone_from_the_segments_are_reported_with_the_lost_range() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    write_300(dir.path(), &cfg);
    // The segment loses its end from record 200 on, as a disk that lost writes would.
    let (segment, (offset, _)) = frame(dir.path(), 200);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(offset)
        .unwrap();
    let broker = process::start(Some(&cfg), dir.path(), &[]);
    expect_line(
        &broker,
        &[
            "ERROR",
            "records were stored but are gone",
            "first=200",
            "last=300",
        ],
    );
    assert!(!broker.startup.iter().any(|l| l.contains("panicked")));
    assert_eq!(
        metric(
            broker.admin,
            "switchyard_log_damaged_records{broker=\"default\",kind=\"lost\"}",
        )
        .as_deref(),
        Some("switchyard_log_damaged_records{broker=\"default\",kind=\"lost\"} 101")
    );
    let answer = admin_get(broker.admin, "/api/v1/brokers/default/events/199");
    assert!(answer.contains("\"l199\""), "{answer}");
    // The broker goes on: new events are taken.
    post(broker.ingress, "after", "payload");
    assert!(broker.terminate().success());
}
