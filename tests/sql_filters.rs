//! The `sql` (CESQL) filter dialect in subscriptions: compile errors reported by
//! `check` with file, line and column; events routed through `sql` filters combined
//! with the other dialects, `attributes` and `cel`; evaluation errors counted as
//! errors and shown by `explain`.

mod common;

use std::process::Command;
use std::sync::atomic::Ordering;

use common::sink::TestSink;
use common::{subscription, subscription_errors, TestServer};
use switchyard::config::subscriptions::from_sources;

fn event(id: &str, ty: &str, subject: Option<&str>) -> serde_json::Value {
    let mut e = serde_json::json!({"specversion": "1.0", "id": id, "source": "/ci", "type": ty});
    if let Some(s) = subject {
        e["subject"] = s.into();
    }
    e
}

#[test]
fn check_reports_a_cesql_syntax_error_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("subs");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("routes.yaml"),
        "apiVersion: switchyard.dev/v1alpha1\nkind: Subscription\nmetadata: { name: bad }\nspec:\n  filter:\n    filters:\n      - prefix: { type: dev. }\n      - sql: \"type LIKE 'dev.%' AND (subject = 'x'\"\n  sinks: [{ uri: 'http://a/' }]\n",
    )
    .unwrap();
    let config = dir.path().join("switchyard.yaml");
    std::fs::write(&config, format!("subscriptions: [{}]\n", folder.display())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .env_remove("SWITCHYARD_CONFIG")
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}:8: spec.filter.filters[1].sql: CESQL does not compile at column 37: unexpected end of expression, expected ')'",
        folder.join("routes.yaml").display()
    );
    assert!(err.contains(&want), "{err}");
}

#[test]
fn unknown_functions_and_non_string_sql_are_config_errors() {
    let sinks = "  sinks: [{uri: 'http://a/'}]\n";
    let errors = subscription_errors(&format!(
        "{sinks}  filter:\n    filters:\n      - all:\n          - sql: \"LOWER(type, 1) = 'a'\"\n          - sql: [not, a, string]\n"
    ));
    let found: Vec<(usize, &str, &str)> = errors
        .iter()
        .map(|e| (e.line, e.key.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].0, 10);
    assert_eq!(found[0].1, "spec.filter.filters[0].all[0].sql");
    assert!(
        found[0]
            .2
            .contains("column 1: no function LOWER with 2 argument(s)"),
        "{found:?}"
    );
    assert_eq!(found[1].1, "spec.filter.filters[0].all[1].sql");
}

#[tokio::test]
async fn events_route_through_sql_filters_and_evaluation_errors_are_counted() {
    let hole = TestSink::black_hole().await;
    let sink = hole.url("/sink");
    let sub = |name: &str, filter: &str| {
        subscription(
            name,
            &format!("  filter:\n{filter}  sinks:\n    - uri: {sink}\n"),
        )
    };
    let subs = [
        sub(
            "tekton-x",
            "    filters:\n      - sql: \"type LIKE 'dev.tekton.%' AND subject = 'x'\"\n",
        ),
        sub(
            "combined",
            "    attributes: { source: /ci }\n    filters:\n      - prefix: { type: dev. }\n      - any:\n          - sql: \"subject IN ('x', 'y')\"\n          - suffix: { type: .failed.v1 }\n      - not: { sql: \"LENGTH(id) > 3\" }\n    cel: \"id != '2'\"\n",
        ),
        // `INT('x')` is a cast error; an event without `subject` a missing attribute.
        sub("attempts", "    filters:\n      - sql: \"INT(subject) >= 2\"\n"),
    ]
    .concat();
    let t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    let events = [
        event("1", "dev.tekton.event.taskrun.started.v1", Some("x")),
        event("2", "dev.tekton.event.taskrun.started.v1", Some("y")),
        event("3", "dev.tekton.event.taskrun.failed.v1", None),
        event("4", "dev.cdevents.taskrun.started.0.3.0", Some("y")),
        event("long", "dev.tekton.event.taskrun.started.v1", Some("x")),
        event("6", "com.example.other", Some("3")),
    ];
    for e in &events {
        assert_eq!(t.post_json(e).await.status, 202);
    }
    t.wait_routed("default").await;
    assert_eq!(t.lane("default", "tekton-x", &sink).await, vec![1, 5]);
    assert_eq!(t.lane("default", "combined", &sink).await, vec![1, 3, 4]);
    assert_eq!(t.lane("default", "attempts", &sink).await, vec![6]);
    let stats = t.server().routing.stats("attempts");
    assert_eq!(stats.matched.load(Ordering::Relaxed), 1);
    assert_eq!(
        stats.errors.load(Ordering::Relaxed),
        5,
        "INT('x'), INT('y') and a missing subject"
    );
    assert_eq!(stats.not_matched.load(Ordering::Relaxed), 0);
    // Event 3 has no subject: `subject = 'x'` is false with a missing-attribute error.
    let stats = t.server().routing.stats("tekton-x");
    assert_eq!(stats.matched.load(Ordering::Relaxed), 2);
    assert_eq!(stats.errors.load(Ordering::Relaxed), 1);
    assert_eq!(stats.not_matched.load(Ordering::Relaxed), 3);
}

#[test]
fn explain_shows_a_sql_evaluation_error_as_an_error_part() {
    let text = subscription(
        "attempts",
        "  filter:\n    filters:\n      - prefix: { type: dev. }\n      - sql: \"INT(subject) >= 2\"\n  sinks: [{ uri: 'http://a/' }]\n",
    );
    let defaults = switchyard::config::from_yaml(None, "", &Default::default())
        .unwrap()
        .delivery;
    let subs = from_sources(&[("s.yaml".into(), text)], &["default".into()], &defaults).unwrap();
    let decode = |e: serde_json::Value| {
        switchyard::event::json::decode_event(&serde_json::to_vec(&e).unwrap().into()).unwrap()
    };
    let explained = |e| {
        switchyard::router::explain::explain(subs.iter(), &decode(e))
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        explained(event("1", "dev.a", Some("x"))),
        "no match attempts (broker default)\n    filters[0]: match\n    filters[1]: error: sql: cast: the string is not an Integer"
    );
    assert_eq!(
        explained(event("1", "dev.a", None)),
        "no match attempts (broker default)\n    filters[0]: match\n    filters[1]: error: sql: missingAttribute: the event has no attribute \"subject\""
    );
    assert_eq!(
        explained(event("1", "dev.a", Some("7"))),
        "MATCH    attempts (broker default)\n    filters[0]: match\n    filters[1]: match"
    );
}
