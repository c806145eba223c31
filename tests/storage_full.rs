//! Storage trouble: the log at its hard quota (`onMaxBytes: refuseWrites`) and a disk
//! that fills up (a small tmpfs, when this process may mount one). In both, producers
//! get `503` with `Retry-After`, everything already acknowledged stays readable, and
//! appends resume by themselves once there is room.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{minimal, wait_until, TestServer};

/// Posts `event`s with ids `{prefix}-{n}` until one is refused; returns the acked ids
/// and the refusal.
async fn fill(
    t: &TestServer,
    prefix: &str,
    data: &str,
    limit: usize,
) -> (Vec<String>, common::Reply) {
    let mut acked = Vec::new();
    for n in 0..limit {
        let id = format!("{prefix}-{n}");
        let mut event = minimal(&id);
        event["data"] = serde_json::Value::String(data.to_string());
        let reply = t.post_json(&event).await;
        if reply.status != 202 {
            return (acked, reply);
        }
        acked.push(id);
    }
    panic!("{limit} events were all accepted");
}

fn assert_full(reply: &common::Reply, names: &str) {
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    assert_eq!(reply.headers["retry-after"], "10");
    assert_eq!(reply.headers["content-type"], "application/problem+json");
    let problem = reply.json();
    assert_eq!(problem["title"], "Storage Full");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains(names), "{detail}");
}

async fn stored_ids(t: &TestServer) -> Vec<String> {
    t.records("default")
        .await
        .iter()
        .map(|r| r.event.id().to_string())
        .collect()
}

#[tokio::test]
async fn at_the_hard_quota_appends_get_503_and_resume_when_retention_frees_room() {
    let mut t = TestServer::start("").await;
    let quota = |c: &mut switchyard::config::Config| {
        c.storage.retention_max_bytes = 64 << 10;
        c.storage.refuse_at_max_bytes = true;
        c.storage.retention_max_age = Duration::from_secs(3600);
        c.dedupe.window = Duration::ZERO;
    };
    t.restart_with(quota).await;
    let data = "q".repeat(2048);
    let (acked, refused) = fill(&t, "quota", &data, 1000).await;
    assert_full(&refused, "storage.retention.maxBytes");
    assert!(
        acked.len() >= 25,
        "64 KiB holds at least 25 events of 2 KiB: {}",
        acked.len()
    );
    // Refusing is not deleting: every acknowledged event is still there.
    assert_eq!(stored_ids(&t).await, acked);
    // Still refused while nothing changes.
    assert_eq!(t.post_json(&minimal("still-full")).await.status, 503);
    // After a restart, readiness says why before any append is refused.
    t.restart_with(quota).await;
    let why = t.server().log.refusing_appends().await;
    assert!(
        why.as_deref().is_some_and(|w| w.contains("refuseWrites")),
        "{why:?}"
    );

    // An hour later retention deletes them all by age; appends resume.
    t.clock.advance(Duration::from_secs(2 * 3600));
    wait_until("retention frees the quota", async || {
        t.post_json(&minimal("after-retention")).await.status == 202
    })
    .await;
    assert_eq!(stored_ids(&t).await, ["after-retention"]);
    assert_eq!(t.server().log.refusing_appends().await, None);
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(Mount(dir.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn on_a_filling_disk_appends_stop_short_of_full_and_resume_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mount = match Mount::tmpfs(dir.path(), "24m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: cannot mount a small filesystem here ({why})");
            return;
        }
    };
    let data_dir = mount.0.join("data");
    // Something else on the same disk takes most of it.
    let filler = mount.0.join("filler");
    std::fs::write(&filler, vec![0u8; 12 << 20]).unwrap();

    let mut t = TestServer::start("").await;
    let path = data_dir.clone();
    t.restart_with(move |c| {
        c.storage.path = path;
        c.storage.min_free_bytes = 4 << 20;
        c.dedupe.window = Duration::ZERO;
    })
    .await;
    let data = "d".repeat(4096);
    let (acked, refused) = fill(&t, "disk", &data, 10_000).await;
    assert_full(&refused, "storage.minFreeBytes");
    assert!(!acked.is_empty());
    let free = switchyard::log::free_bytes(&data_dir).unwrap();
    assert!(free > 0, "the disk never filled: {free} bytes still free");
    assert_eq!(
        stored_ids(&t).await,
        acked,
        "nothing stored was lost or damaged"
    );

    // The other tenant frees its space: appends resume without a restart.
    std::fs::remove_file(&filler).unwrap();
    wait_until("appends resume", async || {
        t.post_json(&minimal("after-space")).await.status == 202
    })
    .await;
    // And everything survives a restart.
    t.restart_with({
        let path = data_dir.clone();
        move |c| c.storage.path = path
    })
    .await;
    let mut expected = acked.clone();
    expected.push("after-space".into());
    assert_eq!(stored_ids(&t).await, expected);
    drop(t);
    drop(mount);
}

fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn a_min_free_bytes_above_the_disk_size_is_warned_of_and_readyz_says_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    // 1 EiB: more than any disk this runs on has, let alone has free.
    let broker = common::process::start(
        None,
        dir.path(),
        &[
            ("SWITCHYARD_INGRESS_LISTEN", "127.0.0.1:0"),
            ("SWITCHYARD_ADMIN_LISTEN", "127.0.0.1:0"),
            ("SWITCHYARD_STORAGE_MIN_FREE_BYTES", "1048576TiB"),
        ],
    );
    let warning = broker
        .startup
        .iter()
        .find(|l| l.contains("WARN"))
        .unwrap_or_else(|| panic!("no warning at start-up: {:#?}", broker.startup));
    assert!(
        warning.contains("storage.minFreeBytes is larger than the whole filesystem"),
        "{warning}"
    );

    let ready = exchange(
        broker.admin,
        "GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(
        ready.contains("not ready: the disk holding the log has")
            && ready.contains("less than storage.minFreeBytes (1152921504606846976)"),
        "{ready}"
    );

    let body = r#"{"specversion":"1.0","id":"full-1","source":"/s","type":"t"}"#;
    let post = exchange(
        broker.ingress,
        &format!(
            "POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/cloudevents+json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(post.starts_with("HTTP/1.1 503"), "{post}");
    assert!(
        post.to_ascii_lowercase()
            .contains("\r\nretry-after: 10\r\n"),
        "{post}"
    );
    assert!(post.contains("storage.minFreeBytes"), "{post}");
    assert!(broker.terminate().success());
}

#[tokio::test]
async fn readyz_says_not_ready_while_less_than_min_free_bytes_is_free() {
    let mut t = TestServer::start("").await;
    let readyz = |t: &TestServer| {
        let url = format!("http://{}/readyz", t.server().admin_addr);
        async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            let resp = client.get(url.parse().unwrap()).await.unwrap();
            let status = resp.status().as_u16();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    assert_eq!(readyz(&t).await.0, 200);
    // What the disk has free now, plus a GiB: short of it, as a filling disk would be.
    let data = t.dir.path().join("data");
    let free = switchyard::log::free_bytes(&data).unwrap();
    t.restart_with(move |c| c.storage.min_free_bytes = free + (1 << 30))
        .await;
    let (status, body) = readyz(&t).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("storage.minFreeBytes"), "{body}");
    // A lower minimum: ready again.
    t.restart_with(|c| c.storage.min_free_bytes = 1).await;
    assert_eq!(readyz(&t).await, (200, "ready\n".to_string()));
}
