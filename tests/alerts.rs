//! The alert rules that ship (config/prometheus/alerts.yaml, and the same groups as a
//! PrometheusRule in config/kubernetes/monitoring/): every metric they read is one the
//! broker exports, every alert has a unit test, and promtool checks the rules and runs
//! those tests (config/prometheus/alerts.test.yaml).
//!
//! promtool comes with Debian's `prometheus` package (`.ci/run` installs it). Without it
//! the promtool test says so and does nothing, unless `PROMTOOL_REQUIRED` is set (CI
//! sets it), when it fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use switchyard::config::yaml::{self, Node, Value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn parse(rel: &str) -> Node {
    let text = std::fs::read_to_string(root().join(rel)).unwrap();
    yaml::parse(&text)
        .unwrap_or_else(|e| panic!("{rel}:{}: {}", e.line, e.message))
        .remove(0)
}

fn get<'a>(node: &'a Node, key: &str) -> Option<&'a Node> {
    match &node.value {
        Value::Map(e) => e.iter().find(|(k, _, _)| k == key).map(|(_, _, n)| n),
        _ => None,
    }
}

fn items(node: Option<&Node>) -> &[Node] {
    match node.map(|n| &n.value) {
        Some(Value::Seq(items)) => items,
        _ => &[],
    }
}

/// A node as JSON, lines left out: two files' groups compare as values.
fn json(node: &Node) -> serde_json::Value {
    match &node.value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::Float(f) => (*f).into(),
        Value::Str(s) => s.clone().into(),
        Value::Seq(items) => items.iter().map(json).collect(),
        Value::Map(entries) => entries
            .iter()
            .map(|(k, _, v)| (k.clone(), json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

/// Every rule of the shipped rules file: (alert name, expression).
fn rules() -> Vec<(String, String)> {
    let doc = parse("config/prometheus/alerts.yaml");
    let out: Vec<(String, String)> = items(get(&doc, "groups"))
        .iter()
        .flat_map(|g| items(get(g, "rules")))
        .map(|r| {
            let text = |k: &str| get(r, k).and_then(Node::scalar_text).unwrap_or_default();
            (text("alert"), text("expr"))
        })
        .collect();
    assert!(out.len() >= 9, "{out:?}");
    out
}

/// The metric names docs/metrics.md lists (tests/metrics.rs holds the list to a scrape).
fn exported() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_alert_reads_only_metrics_the_broker_exports() {
    let exported = exported();
    assert!(exported.contains("switchyard_deliveries_total"));
    for (alert, expr) in rules() {
        let mut read = Vec::new();
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("switchyard_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            read.push(name);
        }
        assert!(!read.is_empty(), "{alert} reads no metric of the broker");
        for name in read {
            assert!(
                exported.contains(&name),
                "{alert} reads {name}, which the broker does not export"
            );
        }
    }
}

#[test]
fn every_alert_has_a_unit_test_that_fires_it() {
    let tests = parse("config/prometheus/alerts.test.yaml");
    let fired: BTreeSet<String> = items(get(&tests, "tests"))
        .iter()
        .flat_map(|t| items(get(t, "alert_rule_test")))
        .filter(|case| !items(get(case, "exp_alerts")).is_empty())
        .filter_map(|case| get(case, "alertname").and_then(Node::scalar_text))
        .collect();
    for (alert, _) in rules() {
        assert!(fired.contains(&alert), "no unit test fires {alert}");
    }
}

#[test]
fn the_prometheus_rule_holds_the_same_groups_as_the_rules_file() {
    let file = parse("config/prometheus/alerts.yaml");
    let rule = parse("config/kubernetes/monitoring/prometheusrule.yaml");
    assert_eq!(
        get(&rule, "kind").and_then(Node::scalar_text).as_deref(),
        Some("PrometheusRule")
    );
    let spec = get(&rule, "spec").expect("spec");
    assert_eq!(
        json(get(spec, "groups").expect("spec.groups")),
        json(get(&file, "groups").expect("groups")),
        "config/kubernetes/monitoring/prometheusrule.yaml differs from config/prometheus/alerts.yaml"
    );
    let kustomization =
        std::fs::read_to_string(root().join("config/kubernetes/monitoring/kustomization.yaml"))
            .unwrap();
    assert!(
        kustomization.contains("prometheusrule.yaml"),
        "the monitoring kustomization does not apply the PrometheusRule"
    );
}

/// promtool, or `None` after saying why the test does nothing (or failing, when
/// `PROMTOOL_REQUIRED` is set).
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("PROMTOOL_REQUIRED").is_none(),
            "PROMTOOL_REQUIRED is set but promtool is not on PATH"
        );
        eprintln!("skipped: promtool is not on PATH (Debian's prometheus package has it)");
    }
    found
}

#[test]
fn promtool_checks_the_rules_and_passes_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let dir = root().join("config/prometheus");
    for args in [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts.test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
