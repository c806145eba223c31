//! The client commands of the `switchyard` binary against a running broker: `send`,
//! `subscriptions`, `events`, `replay`, `deadletters` and `explain --admin`, in tables,
//! JSON and YAML.

mod common;

use std::process::Command;
use std::time::Duration;

use common::sink::{Answer, TestSink};
use common::{subscription, TestServer};

async fn run(args: Vec<String>) -> (i32, String, String) {
    run_with_stdin(args, "").await
}

/// Runs `switchyard ARGS` with `stdin` as its standard input.
async fn run_with_stdin(args: Vec<String>, stdin: &str) -> (i32, String, String) {
    let stdin = stdin.to_string();
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(&args)
            .env_remove("SWITCHYARD_ADMIN_TOKEN")
            .env_remove("SWITCHYARD_TOKEN")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
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

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A YAML document, read by the project's own parser, as JSON.
fn yaml(text: &str) -> serde_json::Value {
    fn convert(node: &switchyard::config::yaml::Node) -> serde_json::Value {
        use switchyard::config::yaml::Value as Y;
        match &node.value {
            Y::Null => serde_json::Value::Null,
            Y::Bool(b) => (*b).into(),
            Y::Int(i) => (*i).into(),
            Y::Float(f) => (*f).into(),
            Y::Str(s) => s.as_str().into(),
            Y::Seq(items) => items.iter().map(convert).collect(),
            Y::Map(entries) => entries
                .iter()
                .map(|(k, _, v)| (k.clone(), convert(v)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }
    let docs = switchyard::config::yaml::parse(text).unwrap_or_else(|e| panic!("{e:?}: {text}"));
    assert_eq!(docs.len(), 1, "{text}");
    convert(&docs[0])
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_show_each_lane_and_one_shows_its_filter_and_counts() {
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let refusing = TestSink::start(vec![], Answer::status(403)).await;
    let subs = [
        subscription("all", &format!("  sinks:\n    - uri: {}\n", sink.url("/"))),
        subscription(
            "failing",
            &format!(
                "  filter:\n    attributes: {{ type: refuse.me }}\n    cel: source == '/s'\n  sinks:\n    - uri: {}\n",
                refusing.url("/")
            ),
        ),
    ]
    .concat();
    let t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    let admin = format!("http://{}", t.server().admin_addr);
    let mut event = common::minimal("r-1");
    event["type"] = "refuse.me".into();
    event["source"] = "/s".into();
    assert_eq!(t.post_json(&event).await.status, 202);
    sink.wait_for(1, Duration::from_secs(20)).await;
    let failing = common::eventually("the dead letter", async || {
        let (code, out, err) = run(args(&[
            "subscriptions",
            "failing",
            "--admin",
            &admin,
            "-o",
            "json",
        ]))
        .await;
        assert_eq!(code, 0, "{err}");
        let v = json(&out);
        // Settled: the dead letter counted and its entry finished, so that the readings
        // below (as YAML) see the same lane.
        let lane = &v["lanes"][0];
        (lane["deadLettered"] == 1 && lane["inFlight"] == 0 && lane["lag"] == 0).then_some(v)
    })
    .await;
    assert_eq!(failing["name"], "failing");
    assert_eq!(failing["filter"]["cel"], "source == '/s'");
    assert_eq!(failing["matched"], 1);
    assert_eq!(failing["lanes"][0]["sink"], refusing.url("/"));

    let (code, out, err) = run(args(&["subscriptions", "--admin", &admin])).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    for column in [
        "SUBSCRIPTION",
        "BROKER",
        "SINK",
        "STATE",
        "LAG",
        "IN FLIGHT",
        "PARKED",
        "DELIVERED",
        "DEAD-LETTERED",
        "LAST ERROR",
    ] {
        assert!(lines[0].contains(column), "{out}");
    }
    assert_eq!(lines.len(), 3, "a row per lane: {out}");
    assert!(
        lines[1].starts_with("all ") && lines[1].contains(&sink.url("/")),
        "{out}"
    );
    assert!(
        lines[2].starts_with("failing ") && lines[2].contains("403"),
        "the last error: {out}"
    );

    let (code, out, err) = run(args(&["subscriptions", "failing", "--admin", &admin])).await;
    assert_eq!(code, 0, "{err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name}: {out}"))
            .trim()
            .to_string()
    };
    assert_eq!(field("attributes"), "type=refuse.me");
    assert_eq!(field("cel"), "source == '/s'");
    assert_eq!(field("matched"), "1");
    assert_eq!(field("notMatched"), "0");
    assert!(
        out.contains("DEAD-LETTERED") && out.contains("403"),
        "{out}"
    );

    // YAML reads back as the JSON; the lists and answers of the other commands too.
    let (_, out, _) = run(args(&[
        "subscriptions",
        "failing",
        "--admin",
        &admin,
        "-o",
        "yaml",
    ]))
    .await;
    assert_eq!(yaml(&out), failing, "{out}");
    let (_, as_json, _) = run(args(&["deadletters", "--admin", &admin, "-o", "json"])).await;
    let (_, as_yaml, _) = run(args(&[
        "deadletters",
        "list",
        "--admin",
        &admin,
        "-o",
        "yaml",
    ]))
    .await;
    assert_eq!(json(&as_json)[0]["subscription"], "failing");
    assert_eq!(yaml(&as_yaml), json(&as_json), "{as_yaml}");
    let (code, out, err) = run(args(&[
        "replay", "all", "--admin", &admin, "--from", "1", "-o", "yaml",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        yaml(&out),
        serde_json::json!({"queued": 1, "from": 1, "to": 1})
    );

    let (code, _, err) = run(args(&["subscriptions", "nope", "--admin", &admin])).await;
    assert_eq!(code, 1);
    assert!(err.contains("404") && err.contains("nope"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_filter_by_type_source_and_arrival_across_pages_and_get_shows_one() {
    let t = TestServer::start("").await;
    let admin = format!("http://{}", t.server().admin_addr);
    let post = async |id: &str, ty: &str, source: &str| {
        let mut e = common::minimal(id);
        e["type"] = ty.into();
        e["source"] = source.into();
        e["datacontenttype"] = "application/json".into();
        e["data"] = serde_json::json!({"n": id});
        assert_eq!(t.post_json(&e).await.status, 202);
    };
    post("e1", "a.one", "/x/1").await;
    // More than one page of the listing between the matches.
    for i in 0..149 {
        post(&format!("f{i}"), "filler", "/f").await;
    }
    t.pass(Duration::from_secs(3600)).await;
    post("e2", "a.two", "/y").await;
    post("e3", "b", "/x/2").await;
    let ids = async |extra: &[&str]| {
        let mut a = args(&["events", "--admin", &admin, "-o", "json"]);
        a.extend(args(extra));
        let (code, out, err) = run(a).await;
        assert_eq!(code, 0, "{extra:?}: {err}");
        json(&out)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["event"]["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&["--type", "a.one"]).await, ["e1"]);
    assert_eq!(ids(&["--type", "a.*"]).await, ["e1", "e2"]);
    assert_eq!(ids(&["--type", "a.*", "--limit", "1"]).await, ["e1"]);
    assert_eq!(ids(&["--source", "/x/*"]).await, ["e1", "e3"]);
    assert_eq!(ids(&["--source", "/x"]).await, Vec::<String>::new());
    assert_eq!(
        ids(&["--since", "2026-01-01T00:30:00Z"]).await,
        ["e2", "e3"]
    );
    assert_eq!(
        ids(&["--since", "2026-01-01T00:30:00Z", "--type", "b"]).await,
        ["e3"]
    );
    assert_eq!(ids(&["--after", "1", "--type", "a.*"]).await, ["e2"]);
    assert_eq!(ids(&["--limit", "2"]).await, ["e1", "f0"]);
    assert_eq!(
        ids(&["--limit", "200"]).await.len(),
        152,
        "past one API page"
    );
    let (code, out, _) = run(args(&["events", "--admin", &admin, "--type", "a.two"])).await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("SEQ") && lines[1].starts_with("151 "),
        "{out}"
    );
    let (code, _, err) = run(args(&["events", "--admin", &admin, "--since", "lunchtime"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("--since lunchtime"), "{err}");

    let (code, out, err) = run(args(&["events", "get", "1", "--admin", &admin])).await;
    assert_eq!(code, 0, "{err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name}: {out}"))
            .trim()
            .to_string()
    };
    assert_eq!(field("seq"), "1");
    assert_eq!(field("type"), "a.one");
    assert_eq!(field("source"), "/x/1");
    assert_eq!(field("arrival"), "2026-01-01T00:00:00Z");
    assert!(out.ends_with("data:\n{\n  \"n\": \"e1\"\n}\n"), "{out}");
    let (_, out, _) = run(args(&[
        "events", "get", "152", "--admin", &admin, "-o", "json",
    ]))
    .await;
    let record = json(&out);
    assert_eq!(record["seq"], 152);
    assert_eq!(record["event"]["id"], "e3");
    let (_, out, _) = run(args(&[
        "events", "get", "152", "--admin", &admin, "-o", "yaml",
    ]))
    .await;
    assert_eq!(yaml(&out), record, "{out}");
    let (code, _, err) = run(args(&["events", "get", "999", "--admin", &admin])).await;
    assert_eq!(code, 1);
    assert!(err.contains("404") && err.contains("999"), "{err}");

    // Following with a filter: only what passes, as it comes.
    let (followed, _) = tokio::join!(
        run_for(
            args(&["events", "--admin", &admin, "--follow", "--type", "a.*", "-o", "json"]),
            Duration::from_millis(3500),
        ),
        async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            post("skip", "filler", "/f").await;
            post("e4", "a.four", "/z").await;
        }
    );
    let ids: Vec<String> = followed
        .lines()
        .map(|l| json(l)["event"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["e1", "e2", "e4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_against_the_running_broker_says_what_the_local_explain_says() {
    let subs = [
        subscription(
            "failures",
            "  filter:\n    attributes: { type: dev.a }\n    cel: data.x == 1\n  sinks: [{ uri: 'http://127.0.0.1:9/' }]\n",
        ),
        subscription(
            "others",
            "  filter:\n    filters: [{ prefix: { type: dev.b } }]\n    cel: data.y == 1\n  sinks: [{ uri: 'http://127.0.0.1:9/' }]\n",
        ),
        subscription("everything", "  sinks: [{ uri: 'http://127.0.0.1:9/' }]\n"),
    ]
    .concat();
    let t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    let admin = format!("http://{}", t.server().admin_addr);
    let config = t.dir.path().join("local.yaml");
    std::fs::write(
        &config,
        format!(
            "subscriptions: [{}]\n",
            TestServer::subscriptions_dir(t.dir.path()).display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let event = r#"{"specversion":"1.0","id":"x1","source":"/s","type":"dev.a","datacontenttype":"application/json","data":{"x":1}}"#;
    let explain = async |how: &[&str], output: &str| {
        let mut a = args(&["explain", "--event", "-", "-o", output]);
        a.extend(args(how));
        let (code, out, err) = run_with_stdin(a, event).await;
        assert_eq!(code, 0, "{how:?}: {err}");
        out
    };
    let local = explain(&["-c", &config], "table").await;
    let remote = explain(&["--admin", &admin], "table").await;
    assert!(
        local.contains("MATCH    failures (broker default)\n    attributes: match\n    cel: match"),
        "{local}"
    );
    assert!(
        local.contains(
            "no match others (broker default)\n    filters[0]: no match\n    cel: error:"
        ),
        "{local}"
    );
    assert!(
        local.contains("MATCH    everything (broker default)\n    (no filter"),
        "{local}"
    );
    assert_eq!(remote, local);
    let local = json(&explain(&["-c", &config], "json").await);
    let remote = json(&explain(&["--admin", &admin], "json").await);
    assert_eq!(remote, local);
    assert_eq!(
        remote[0],
        serde_json::json!({"subscription": "failures", "broker": "default", "matched": true, "parts": [
            {"part": "attributes", "result": "match"}, {"part": "cel", "result": "match"}],
            "requests": [{"sink": "http://127.0.0.1:9/", "method": "POST", "headers": [
                ["ce-specversion", "1.0"], ["ce-id", "x1"], ["ce-source", "/s"], ["ce-type", "dev.a"],
                ["content-type", "application/json"], ["prefer", "reply"]],
                "body": "{\"x\":1}"}]})
    );
    assert_eq!(yaml(&explain(&["--admin", &admin], "yaml").await), remote);
    // Not an event: said, exit 1, from both.
    for how in [vec!["-c", config.as_str()], vec!["--admin", admin.as_str()]] {
        let mut a = args(&["explain", "--event", "-"]);
        a.extend(args(&how));
        let (code, _, err) = run_with_stdin(a, "{}").await;
        assert_eq!(code, 1, "{how:?}");
        assert!(
            err.contains("stdin: attribute 'specversion'"),
            "{how:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_sets_time_and_dataschema_and_posts_structured_mode_on_request() {
    use switchyard::event::Data;
    let t = TestServer::start("").await;
    let ingress = format!("http://{}/", t.server().ingress_addr);
    let send = async |extra: &[&str]| {
        let mut a = args(&["send", "--to", &ingress, "--type", "t", "--source", "/s"]);
        a.extend(args(extra));
        let (code, out, err) = run(a).await;
        assert_eq!(code, 0, "{extra:?}: {err}");
        out
    };
    send(&[
        "--id",
        "b-1",
        "--time",
        "2026-11-21T10:00:00.5Z",
        "--dataschema",
        "https://example.com/schema.json",
        "--data",
        r#"{"a":1}"#,
    ])
    .await;
    send(&[
        "--id",
        "s-1",
        "--structured",
        "--time",
        "2026-11-21T10:00:00.5Z",
        "--dataschema",
        "https://example.com/schema.json",
        "--subject",
        "ünï",
        "-e",
        "team=ci",
        "--data",
        r#"{"a":1}"#,
    ])
    .await;
    send(&[
        "--id",
        "s-2",
        "--structured",
        "--content-type",
        "text/plain",
        "--data",
        "hello",
    ])
    .await;
    let out = send(&["--id", "s-3", "--structured", "--time", "now", "-o", "yaml"]).await;
    assert_eq!(
        yaml(&out),
        serde_json::json!({"id": "s-3", "source": "/s", "type": "t"})
    );
    let records = t.records("default").await;
    let [binary, structured, text, now] = &records[..] else {
        panic!("{records:?}");
    };
    for e in [&binary.event, &structured.event] {
        assert_eq!(e.get_str("time"), Some("2026-11-21T10:00:00.5Z"), "{e:?}");
        assert_eq!(
            e.get_str("dataschema"),
            Some("https://example.com/schema.json")
        );
        assert_eq!(e.datacontenttype(), Some("application/json"));
    }
    // Binary mode stores the body's bytes; structured mode JSON data as JSON, text as text.
    assert!(matches!(binary.event.data(), Some(Data::Binary(_))));
    assert_eq!(
        structured.event.data(),
        Some(&Data::Json(bytes::Bytes::from_static(br#"{"a":1}"#)))
    );
    assert_eq!(structured.event.get_str("subject"), Some("ünï"));
    assert_eq!(structured.event.get_str("team"), Some("ci"));
    assert_eq!(text.event.data(), Some(&Data::Text("hello".into())));
    let time = now.event.get_str("time").expect("a time");
    assert!(
        switchyard::event::validate::parse_rfc3339(time).is_ok(),
        "{time}"
    );
    assert_eq!(now.event.data(), None);
    // An event that is not valid is refused before it is sent.
    let (code, _, err) = run(args(&[
        "send",
        "--to",
        &ingress,
        "--type",
        "t",
        "--source",
        "/s",
        "--structured",
        "--time",
        "lunchtime",
    ]))
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("time") && err.contains("lunchtime"), "{err}");
    assert_eq!(t.records("default").await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_lists_subscriptions_by_broker_then_as_in_the_files_locally_and_remotely() {
    let brokers = "brokers: [default, ci, audit, zeta]\n";
    let one = |name: &str, broker: &str| {
        subscription(
            name,
            &format!("  broker: {broker}\n  sinks: [{{ uri: 'http://127.0.0.1:9/' }}]\n"),
        )
    };
    let subs = [
        one("z1", "zeta"),
        one("d2", "default"),
        one("a1", "audit"),
        one("d1", "default"),
        one("c1", "ci"),
    ]
    .concat();
    let t = TestServer::start_with_subscriptions(brokers, &[("s.yaml", &subs)]).await;
    let admin = format!("http://{}", t.server().admin_addr);
    let config = t.dir.path().join("local.yaml");
    std::fs::write(
        &config,
        format!(
            "{brokers}subscriptions: [{}]\n",
            TestServer::subscriptions_dir(t.dir.path()).display()
        ),
    )
    .unwrap();
    let event = r#"{"specversion":"1.0","id":"o1","source":"/s","type":"t"}"#;
    let config = config.display().to_string();
    for how in [vec!["-c", config.as_str()], vec!["--admin", admin.as_str()]] {
        let mut a = args(&["explain", "--event", "-", "-o", "json"]);
        a.extend(args(&how));
        let (code, out, err) = run_with_stdin(a, event).await;
        assert_eq!(code, 0, "{how:?}: {err}");
        let names: Vec<String> = json(&out)
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["subscription"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["a1", "c1", "d2", "d1", "z1"], "{how:?}");
    }
}
