//! The client commands of the `switchyard` binary against a running broker: `send`,
//! `events`, `replay` and `deadletters`, in tables and in JSON.

mod common;

use std::process::Command;
use std::time::Duration;

use common::sink::{Answer, TestSink};
use common::{subscription, TestServer};

async fn run(args: Vec<String>) -> (i32, String, String) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(&args)
            .env_remove("SWITCHYARD_ADMIN_TOKEN")
            .env_remove("SWITCHYARD_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_events_replay_and_deadletters_from_the_command_line() {
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let refusing = TestSink::start(vec![], Answer::status(403)).await;
    let subs = [
        subscription("all", &format!("  sinks:\n    - uri: {}\n", sink.url("/"))),
        subscription(
            "failing",
            &format!(
                "  filter:\n    attributes: {{ type: refuse.me }}\n  sinks:\n    - uri: {}\n",
                refusing.url("/")
            ),
        ),
    ]
    .concat();
    let t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    let ingress = format!("http://{}/", t.server().ingress_addr);
    let admin = format!("http://{}", t.server().admin_addr);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.json");
    std::fs::write(&data, r#"{"pipelineRun":{"metadata":{"name":"build"}}}"#).unwrap();
    let (code, out, err) = run(args(&[
        "send",
        "--to",
        &ingress,
        "--type",
        "dev.tekton.event.pipelinerun.failed.v1",
        "--source",
        "/cli/test",
        "--id",
        "cli-1",
        "--subject",
        "build ünï",
        "--data",
        &format!("@{}", data.display()),
        "-e",
        "team=ci",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "accepted cli-1");
    let stored = &t.records("default").await[0].event;
    assert_eq!(stored.source(), "/cli/test");
    assert_eq!(
        stored.get_str("subject"),
        Some("build ünï"),
        "percent-encoded on the way"
    );
    assert_eq!(stored.get_str("team"), Some("ci"));
    assert_eq!(
        stored.data().unwrap().body_bytes().as_ref(),
        std::fs::read(&data).unwrap().as_slice()
    );
    // A bad attribute name is caught before sending; a bad value is refused by the broker.
    let (code, _, err) = run(args(&[
        "send", "--to", &ingress, "--type", "t", "--source", "/s", "-e", "Bad=1",
    ]))
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("--extension Bad"), "{err}");
    let (code, _, err) = run(args(&[
        "send",
        "--to",
        &ingress,
        "--type",
        "t",
        "--source",
        "not a uri",
    ]))
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("400") && err.contains("source"), "{err}");

    let (code, out, err) = run(args(&["events", "--admin", &admin])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().next().unwrap().starts_with("SEQ"), "{out}");
    assert!(
        out.contains("dev.tekton.event.pipelinerun.failed.v1") && out.contains("cli-1"),
        "{out}"
    );
    let (_, out, _) = run(args(&["events", "--admin", &admin, "-o", "json"])).await;
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json[0]["event"]["id"], "cli-1");

    sink.wait_for(1, Duration::from_secs(20)).await;
    let (code, out, err) = run(args(&["replay", "all", "--admin", &admin, "--from", "1"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("1 event(s) queued"), "{out}");
    sink.wait_for(2, Duration::from_secs(20)).await;
    let (code, _, err) = run(args(&["replay", "nope", "--admin", &admin, "--from", "1"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");

    let (code, _, _) = run(args(&[
        "send",
        "--to",
        &ingress,
        "--type",
        "refuse.me",
        "--source",
        "/s",
        "--id",
        "r-1",
    ]))
    .await;
    assert_eq!(code, 0);
    let mut id = None;
    for _ in 0..200 {
        let (_, out, _) = run(args(&["deadletters", "--admin", &admin, "-o", "json"])).await;
        let letters: serde_json::Value = serde_json::from_str(&out).unwrap();
        if let Some(first) = letters.as_array().and_then(|a| a.first()) {
            id = first["id"].as_u64();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = id.expect("a dead letter").to_string();
    let (_, out, _) = run(args(&[
        "deadletters",
        "list",
        "--admin",
        &admin,
        "--subscription",
        "failing",
    ]))
    .await;
    assert!(out.contains("ID") && out.contains("HTTP 403"), "{out}");
    let (code, out, _) = run(args(&["deadletters", "delete", &id, "--admin", &admin])).await;
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("dead letter {id} deleted"));
    let (code, _, err) = run(args(&["deadletters", "redeliver", &id, "--admin", &admin])).await;
    assert_eq!(code, 1, "it is gone");
    assert!(err.contains("404"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_says_the_id_it_made_up_prints_json_and_names_a_refusal() {
    let t = TestServer::start("").await;
    let ingress = format!("http://{}/", t.server().ingress_addr);
    // No --id: the one made up is printed, and is the stored event's.
    let (code, out, err) = run(args(&[
        "send", "--to", &ingress, "--type", "t", "--source", "/s",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    let made_up = out
        .trim()
        .strip_prefix("accepted ")
        .expect(&out)
        .to_string();
    assert!(!made_up.is_empty());
    assert_eq!(t.records("default").await[0].event.id(), made_up);
    let (code, out, err) = run(args(&[
        "send", "--to", &ingress, "--type", "t", "--source", "/s", "--id", "j-1", "-o", "json",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(
        json,
        serde_json::json!({"id": "j-1", "source": "/s", "type": "t"})
    );
    // A URL that answers 404 with nothing to say, and the broker's own 404 with a problem.
    let nothing = TestSink::start(vec![], Answer::status(404)).await;
    let (code, _, err) = run(args(&[
        "send",
        "--to",
        &nothing.url("/"),
        "--type",
        "t",
        "--source",
        "/s",
    ]))
    .await;
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "switchyard: 404: Not Found (the answer says no more)"
    );
    let (code, _, err) = run(args(&[
        "send",
        "--to",
        &format!("{ingress}brokers/nope"),
        "--type",
        "t",
        "--source",
        "/s",
    ]))
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("404") && err.contains("nope"), "{err}");
    assert!(!err.contains("null"), "{err}");
}

/// Runs `switchyard ARGS` for `for_how_long`, then stops it; returns its stdout.
async fn run_for(args: Vec<String>, for_how_long: Duration) -> String {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(&args)
            .env_remove("SWITCHYARD_ADMIN_TOKEN")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(for_how_long);
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_prints_one_header_and_one_json_object_per_line() {
    let t = TestServer::start("").await;
    let admin = format!("http://{}", t.server().admin_addr);
    for i in 0..2 {
        assert_eq!(
            t.post_json(&common::minimal(&format!("f{i}"))).await.status,
            202
        );
    }
    let follow = |output: &'static str| {
        let admin = admin.clone();
        async move {
            run_for(
                args(&["events", "--admin", &admin, "--follow", "-o", output]),
                Duration::from_millis(3500),
            )
            .await
        }
    };
    // Events arrive while each follows: they are printed as rows (lines) of their own.
    let (table, _) = tokio::join!(follow("table"), async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(t.post_json(&common::minimal("f2")).await.status, 202);
    });
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("SEQ")).count(),
        1,
        "{table}"
    );
    assert_eq!(lines.len(), 4, "the header and three rows: {table}");
    assert!(lines[3].contains("f2"), "{table}");
    let (json, _) = tokio::join!(follow("json"), async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(t.post_json(&common::minimal("f3")).await.status, 202);
    });
    let ids: Vec<String> = json
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect(l);
            v["event"]["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids, ["f0", "f1", "f2", "f3"]);
}
