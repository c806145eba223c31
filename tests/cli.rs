//! The command line: the shipped config, `check`, exit code 64 before any port is
//! bound, and `serve` on embedded defaults.

mod common;

use std::path::Path;
use std::process::Command;

use common::process;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    c.env_remove("SWITCHYARD_CONFIG");
    c
}

#[test]
fn the_shipped_config_loads_and_spells_out_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/switchyard.yaml");
    let env = Default::default();
    let shipped =
        switchyard::config::load(Some(&path), &env).expect("config/switchyard.yaml is valid");
    let defaults = switchyard::config::from_yaml(None, "", &env).unwrap();
    assert_eq!(
        format!("{:?}", shipped.ingress),
        format!("{:?}", defaults.ingress)
    );
    assert_eq!(
        format!("{:?}", shipped.admin),
        format!("{:?}", defaults.admin)
    );
    assert_eq!(
        format!("{:?}", shipped.storage),
        format!("{:?}", defaults.storage)
    );
    assert_eq!(
        format!("{:?}", shipped.delivery),
        format!("{:?}", defaults.delivery)
    );
    assert_eq!(shipped.brokers, defaults.brokers);
    assert_eq!(shipped.subscriptions, defaults.subscriptions);
    assert_eq!(shipped.dedupe.window, defaults.dedupe.window);
    assert_eq!(shipped.dedupe.key.source(), defaults.dedupe.key.source());
    assert_eq!(shipped.replies.max_hops, defaults.replies.max_hops);
}

#[test]
fn check_prints_every_error_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "ingress:\n  maxEventBytes: huge\nstorage:\n  durability: sometimes\ncolour: blue\n",
    )
    .unwrap();
    let out = bin().arg("check").arg("-c").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = file.display();
    assert!(
        err.contains(&format!("{f}:2: ingress.maxEventBytes:")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{f}:4: storage.durability:")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{f}:5: colour: unknown key")),
        "{err}"
    );

    let ok = bin()
        .arg("check")
        .arg("-c")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/switchyard.yaml"))
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn serve_exits_64_on_a_bad_config_before_binding_any_port() {
    // Hold the configured port: had the broker tried to bind first, it would fail on
    // the port (exit 1) instead of on the config (exit 64).
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        format!(
            "ingress:\n  listen: 127.0.0.1:{port}\nstorage:\n  path: {}\n  durability: maybe\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = bin().arg("serve").arg("-c").arg(&file).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("storage.durability"));
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created for a bad config"
    );
    // A named config file that does not exist is a bad config too.
    let out = bin()
        .arg("serve")
        .arg("-c")
        .arg(dir.path().join("missing.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    // And so is a bad environment override.
    let out = bin()
        .arg("serve")
        .env("SWITCHYARD_STORAGE_DURABILITY", "maybe")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    drop(held);
}

#[test]
fn serve_without_a_config_file_runs_on_the_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    // Only the ports move (to free ones, from the environment); everything else is the
    // embedded defaults, ./data included.
    let broker = process::start(
        None,
        dir.path(),
        &[
            ("SWITCHYARD_INGRESS_LISTEN", "127.0.0.1:0"),
            ("SWITCHYARD_ADMIN_LISTEN", "127.0.0.1:0"),
        ],
    );
    assert!(
        broker
            .startup
            .iter()
            .any(|l| l.contains("embedded defaults")),
        "{:#?}",
        broker.startup
    );
    // Each key the environment set is named at start, with its variable.
    for (key, variable) in [
        ("ingress.listen", "SWITCHYARD_INGRESS_LISTEN"),
        ("admin.listen", "SWITCHYARD_ADMIN_LISTEN"),
    ] {
        assert!(
            broker
                .startup
                .iter()
                .any(|l| l.contains("set by the environment")
                    && l.contains(&format!("key={key}"))
                    && l.contains(&format!("variable={variable}"))),
            "{key}: {:#?}",
            broker.startup
        );
    }
    let ready = http_get(broker.admin, "/readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let status = http_post_event(broker.ingress);
    assert!(status.starts_with("HTTP/1.1 202"), "{status}");
    assert!(broker.terminate().success());
    assert!(dir.path().join("data/db").exists(), "the log is in ./data");
}

fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
    )
}

fn http_post_event(addr: std::net::SocketAddr) -> String {
    let body = r#"{"taskRun":{}}"#;
    exchange(
        addr,
        &format!(
            "POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\nce-specversion: 1.0\r\nce-id: d-1\r\nce-source: /apis///namespaces/ci//build\r\nce-type: dev.tekton.event.taskrun.started.v1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn config_with_subscriptions(dir: &Path, subs: &str) -> std::path::PathBuf {
    let folder = dir.join("subs");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("routes.yaml"), subs).unwrap();
    let config = dir.join("switchyard.yaml");
    std::fs::write(&config, format!("subscriptions: [{}]\n", folder.display())).unwrap();
    config
}

#[test]
fn check_reports_key_errors_and_a_missing_subscriptions_folder_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    let missing = dir.path().join("no-such-folder");
    std::fs::write(
        &file,
        format!(
            "ingress:\n  maxEventBytes: huge\nstorage:\n  durability: sometimes\ncolour: blue\nsubscriptions: [{}]\n",
            missing.display()
        ),
    )
    .unwrap();
    let out = bin().arg("check").arg("-c").arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    for key in ["ingress.maxEventBytes", "storage.durability", "colour"] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("4 error(s)"), "{err}");
}

#[test]
fn a_config_that_does_not_validate_exits_64_from_check_explain_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    // A secret from an environment variable that is not set.
    std::fs::write(
        &file,
        "admin:\n  token: {valueFrom: {env: UNSET_ADMIN_TOKEN_FOR_TEST}}\n",
    )
    .unwrap();
    let event = dir.path().join("e.json");
    std::fs::write(
        &event,
        r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#,
    )
    .unwrap();
    for args in [
        vec!["check"],
        vec!["explain", "--event", event.to_str().unwrap()],
        vec!["serve"],
    ] {
        let out = bin()
            .args(&args)
            .arg("-c")
            .arg(&file)
            .env_remove("UNSET_ADMIN_TOKEN_FOR_TEST")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(
            err.contains("UNSET_ADMIN_TOKEN_FOR_TEST is not set"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn check_reports_subscription_errors_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_subscriptions(
        dir.path(),
        "apiVersion: switchyard.dev/v1alpha1\nkind: Subscription\nmetadata: { name: bad }\nspec:\n  filter:\n    cel: 'type =='\n  sinks: []\n",
    );
    let out = bin().arg("check").arg("-c").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = dir.path().join("subs/routes.yaml");
    assert!(
        err.contains(&format!(
            "{}:6: spec.filter.cel: CEL does not compile at column",
            file.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}:7: spec.sinks: is empty", file.display())),
        "{err}"
    );
    // serve refuses the same set with 64.
    let out = bin().arg("serve").arg("-c").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn explain_says_which_subscription_matches_a_tekton_request_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_subscriptions(
        dir.path(),
        "apiVersion: switchyard.dev/v1alpha1
kind: Subscription
metadata: { name: failures }
spec:
  filter:
    attributes: { type: dev.tekton.event.pipelinerun.failed.v1 }
    cel: data.pipelineRun.metadata.namespace == 'ee-cd'
  sinks: [{ uri: 'http://notifier/' }]
---
apiVersion: switchyard.dev/v1alpha1
kind: Subscription
metadata: { name: taskruns }
spec:
  filter:
    filters: [{ prefix: { type: dev.tekton.event.taskrun. } }]
    cel: data.taskRun.metadata.namespace == 'ee-cd'
  sinks: [{ uri: 'http://deployer/' }]
",
    );
    let fixture = common::testdata().join("tekton/10-pipelinerun-failed.json");
    let out = bin()
        .arg("explain")
        .arg("--event")
        .arg(&fixture)
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("MATCH    failures (broker default)\n    attributes: match\n    cel: match"),
        "{text}"
    );
    assert!(
        text.contains(
            "no match taskruns (broker default)\n    filters[0]: no match\n    cel: error:"
        ),
        "{text}"
    );
}

#[test]
fn the_example_subscriptions_validate() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.yaml");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    std::fs::write(
        &config,
        format!("subscriptions: [{}]\n", examples.display()),
    )
    .unwrap();
    let out = bin()
        .arg("check")
        .arg("-c")
        .arg(&config)
        .env("AUDIT_TOKEN", "t")
        .env("GITHUB_AUTHORIZATION", "Bearer t")
        .env("PAGERDUTY_ROUTING_KEY", "k")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("8 subscription(s)"), "{stdout}");
}

#[test]
fn json_logs_are_one_object_per_line_and_a_lane_failure_names_its_lane_and_event() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 refuses connections; with no retries the event is dead-lettered at once.
    let config = config_with_subscriptions(
        dir.path(),
        "apiVersion: switchyard.dev/v1alpha1\nkind: Subscription\nmetadata: { name: nowhere }\nspec:\n  sinks:\n    - uri: http://127.0.0.1:1/hook\n  delivery: { retry: 0 }\n",
    );
    let broker = process::start(
        Some(&config),
        dir.path(),
        &[
            ("SWITCHYARD_INGRESS_LISTEN", "127.0.0.1:0"),
            ("SWITCHYARD_ADMIN_LISTEN", "127.0.0.1:0"),
            ("SWITCHYARD_LOG_FORMAT", "json"),
        ],
    );
    let parse = |line: &str| -> serde_json::Value {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"))
    };
    for line in &broker.startup {
        let v = parse(line);
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
    assert!(http_post_event(broker.ingress).starts_with("HTTP/1.1 202"));
    let failure = loop {
        let line = broker
            .lines
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a dead-letter line");
        let v = parse(&line);
        if v["fields"]["message"] == "dead-lettered" {
            break v;
        }
    };
    assert_eq!(failure["level"], "WARN");
    assert_eq!(failure["span"]["broker"], "default");
    assert_eq!(failure["span"]["subscription"], "nowhere");
    assert_eq!(failure["span"]["sink"], "http://127.0.0.1:1/hook");
    assert_eq!(failure["fields"]["event_id"], "d-1");
    assert!(broker.terminate().success());
}

#[test]
fn secrets_never_appear_in_logs_metrics_explain_check_or_the_admin_api() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let ingress_token = "ingress-tok-7f3a91e0";
    let admin_token = "admin-tok-c2e8b4d6";
    let header_secret = "hdr-val-99d1a7c3";
    let signing_key = "sign-key-5b7e2f10";
    let whsec = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(signing_key)
    );
    let oauth_secret = "oauth-sec-1d4e6a2b";
    let file_token = "file-tok-8c3b5e7f";
    let admin_file = dir.path().join("admin-token");
    std::fs::write(&admin_file, format!("{admin_token}\n")).unwrap();
    let token_file = dir.path().join("sink-token");
    std::fs::write(&token_file, format!("{file_token}\n")).unwrap();
    // Port 1 refuses connections: the event is dead-lettered, so the letter and the
    // failure line are part of what is checked.
    let config = config_with_subscriptions(
        dir.path(),
        &format!("apiVersion: switchyard.dev/v1alpha1\nkind: Subscription\nmetadata: {{ name: guarded }}\nspec:\n  sinks:\n    - uri: http://127.0.0.1:1/hook\n      headers:\n        Authorization: {{ valueFrom: {{ env: T_HEADER }} }}\n      signing: {{ secrets: [{{ valueFrom: {{ env: T_SIGNING }} }}] }}\n    - uri: http://127.0.0.1:1/oauth\n      auth:\n        oauth2: {{ tokenUrl: 'http://127.0.0.1:1/token', clientId: c, clientSecret: {{ valueFrom: {{ env: T_OAUTH }} }} }}\n    - uri: http://127.0.0.1:1/file\n      auth: {{ bearerTokenFile: {} }}\n  delivery: {{ retry: 1, backoffDelay: 10ms }}\n", token_file.display()),
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "ingress:\n  tokens: [{{ valueFrom: {{ env: T_INGRESS }} }}]\nadmin:\n  token: {{ valueFrom: {{ file: {} }} }}\n",
        admin_file.display()
    ));
    std::fs::write(&config, text).unwrap();
    let env = [
        ("T_INGRESS", ingress_token),
        ("T_HEADER", header_secret),
        ("T_SIGNING", whsec.as_str()),
        ("T_OAUTH", oauth_secret),
        ("SWITCHYARD_INGRESS_LISTEN", "127.0.0.1:0"),
        ("SWITCHYARD_ADMIN_LISTEN", "127.0.0.1:0"),
    ];
    let mut seen: Vec<String> = Vec::new();
    let mut broker = process::start(
        Some(&config),
        dir.path(),
        &[&env[..], &[("SWITCHYARD_LOG", "debug")]].concat(),
    );
    seen.extend(broker.startup.iter().cloned());

    let post = |token: &str| {
        let body = r#"{"specversion":"1.0","id":"s-1","source":"/s","type":"t"}"#;
        exchange(
            broker.ingress,
            &format!(
                "POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer {token}\r\ncontent-type: application/cloudevents+json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let wrong = post(&format!("{ingress_token}x"));
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let ok = post(ingress_token);
    assert!(ok.starts_with("HTTP/1.1 202"), "{ok}");
    seen.extend([wrong, ok]);
    let admin_get = |path: &str, token: &str| {
        exchange(
            broker.admin,
            &format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer {token}\r\n\r\n"),
        )
    };
    // The dead letter is there once the failure line is.
    loop {
        let line = broker
            .lines
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a dead-letter line");
        let done = line.contains("dead-lettered");
        seen.push(line);
        if done {
            break;
        }
    }
    for path in [
        "/api/v1/subscriptions",
        "/api/v1/subscriptions/guarded",
        "/api/v1/deadletters",
        "/api/v1/brokers/default/events",
        "/metrics",
    ] {
        let answer = admin_get(path, admin_token);
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        seen.push(answer);
    }
    let refused = admin_get("/api/v1/subscriptions", "not-the-token");
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    seen.push(refused);
    for args in [
        vec![
            "check".to_string(),
            "-c".into(),
            config.display().to_string(),
        ],
        vec![
            "explain".to_string(),
            "-c".into(),
            config.display().to_string(),
            "--event".into(),
            common::testdata()
                .join("tekton/10-pipelinerun-failed.json")
                .display()
                .to_string(),
        ],
    ] {
        let out = bin().args(&args).envs(env).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        seen.push(String::from_utf8_lossy(&out.stdout).into_owned());
        seen.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let pid = libc::pid_t::try_from(broker.child.id()).unwrap();
    // SAFETY: kill(2) with the pid of our own child and a valid signal number.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(broker.child.wait().unwrap().success());
    seen.extend(broker.lines.try_iter());

    let all = seen.join("\n");
    assert!(
        all.len() > 2000,
        "the run said too little to be a check: {all}"
    );
    for secret in [
        ingress_token,
        admin_token,
        header_secret,
        signing_key,
        &whsec,
        oauth_secret,
        file_token,
    ] {
        assert!(!all.contains(secret), "{secret} leaked:\n{all}");
    }
}

#[test]
fn check_reports_a_metadata_address_in_any_ipv4_notation_and_a_port_out_of_range() {
    // Each of these is 169.254.169.254 to the system resolver (inet_aton notation).
    let notations = [
        "2852039166",
        "0xa9fea9fe",
        "0251.0376.0251.0376",
        "169.254.43518",
    ];
    let mut subs = String::new();
    for (i, host) in notations.iter().enumerate() {
        subs.push_str(&format!(
            "apiVersion: switchyard.dev/v1alpha1\nkind: Subscription\nmetadata: {{ name: s{i} }}\nspec:\n  sinks:\n    - uri: http://{host}/latest/meta-data/\n---\n"
        ));
    }
    subs.push_str("apiVersion: switchyard.dev/v1alpha1\nkind: Subscription\nmetadata: { name: port }\nspec:\n  sinks: [{ uri: 'http://notifier:99999/' }]\n");
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_subscriptions(dir.path(), &subs);
    let out = bin().arg("check").arg("-c").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = dir.path().join("subs/routes.yaml").display().to_string();
    for (i, host) in notations.iter().enumerate() {
        // Seven lines a document; the uri is the sixth.
        let line = 7 * i + 6;
        assert!(
            err.contains(&format!(
                "{file}:{line}: spec.sinks[0].uri: is a cloud metadata address"
            )),
            "{host}: {err}"
        );
    }
    assert!(
        err.contains(&format!(
            "{file}:33: spec.sinks[0].uri: '99999' is not a port"
        )),
        "{err}"
    );
    assert!(err.contains("5 error(s)"), "{err}");

    // Allowing the address allows it in every notation; the port stays an error.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("delivery:\n  allowAddresses: [169.254.169.254]\n");
    std::fs::write(&config, text).unwrap();
    let out = bin().arg("check").arg("-c").arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("metadata"), "{err}");
    assert!(err.contains("'99999' is not a port"), "{err}");
    assert!(err.contains("1 error(s)"), "{err}");
}

#[test]
fn a_command_whose_reader_is_gone_ends_without_a_panic() {
    use std::os::fd::FromRawFd;
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    // A pipe whose read end is closed before the command runs: every write to it fails.
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two descriptors; each is owned exactly once below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe {
        libc::close(fds[0]);
    }
    let write_end = unsafe { std::process::Stdio::from_raw_fd(fds[1]) };
    let out = bin()
        .arg("check")
        .current_dir(dir.path())
        .stdout(write_end)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}

#[test]
fn the_docs_and_the_help_name_the_admin_token_flag_the_cli_has() {
    let out = bin().args(["events", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--token"), "{help}");
    assert!(help.contains("every API call needs it, reads"), "{help}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let security = std::fs::read_to_string(root.join("docs/security.md")).unwrap();
    assert!(security.contains("`--token` or `SWITCHYARD_ADMIN_TOKEN`"));
    for doc in ["README.md", "docs/security.md", "docs/operations.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        assert!(
            !text.contains("--admin-token"),
            "{doc} names a flag the CLI lacks"
        );
    }
}

#[test]
fn the_readme_explain_example_prints_what_the_readme_shows() {
    // The README's steps, in a copy of the repository's folders they touch.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for folder in ["config/subscriptions", "tests/fixtures/tekton"] {
        std::fs::create_dir_all(d.join(folder)).unwrap();
    }
    for (from, to) in [
        ("config/switchyard.yaml", "config/switchyard.yaml"),
        (
            "config/examples/tekton.yaml",
            "config/subscriptions/tekton.yaml",
        ),
        (
            "tests/fixtures/tekton/10-pipelinerun-failed.json",
            "tests/fixtures/tekton/10-pipelinerun-failed.json",
        ),
    ] {
        std::fs::copy(root.join(from), d.join(to)).unwrap();
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let run = |args: &[&str]| {
        let out = bin()
            .args(args)
            .current_dir(d)
            .env("AUDIT_TOKEN", "change-me")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let checked = run(&["check"]);
    assert!(
        readme.contains(&format!("`check` prints `{}`", checked.trim())),
        "README does not show: {checked}"
    );
    let explained = run(&[
        "explain",
        "--event",
        "tests/fixtures/tekton/10-pipelinerun-failed.json",
    ]);
    let lines: Vec<&str> = explained.lines().collect();
    let audit = lines
        .iter()
        .position(|l| l.starts_with("MATCH    audit-everything"))
        .expect("audit-everything matches");
    let shown = [
        &lines[..3],
        &lines[audit..audit + 7],
        &lines[lines.len() - 1..],
    ]
    .concat();
    for line in shown {
        assert!(
            readme.contains(line),
            "README does not show {line:?}:\n{explained}"
        );
    }
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = bin().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        // Subcommands, and a flag of one (fish names it without its dashes).
        for word in ["deadletters", "subscriptions", "structured"] {
            assert!(script.contains(word), "the {shell} script lacks {word}");
        }
    }
    let out = bin().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
}

#[test]
fn explain_reads_the_event_from_stdin_and_prints_the_api_shape_in_json() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_subscriptions(
        dir.path(),
        "apiVersion: switchyard.dev/v1alpha1\nkind: Subscription\nmetadata: { name: pings }\nspec:\n  filter:\n    attributes: { type: ping }\n  sinks: [{ uri: 'http://127.0.0.1:9/' }]\n",
    );
    let explain = |output: &str| {
        let mut child = bin()
            .args(["explain", "--event", "-", "-o", output, "-c"])
            .arg(&config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(br#"{"specversion":"1.0","id":"1","source":"/s","type":"pong"}"#)
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        explain("table"),
        "no match pings (broker default)\n    attributes: no match\n"
    );
    let json: serde_json::Value = serde_json::from_str(&explain("json")).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{"subscription": "pings", "broker": "default", "matched": false,
            "parts": [{"part": "attributes", "result": "no_match"}], "requests": []}])
    );
}
