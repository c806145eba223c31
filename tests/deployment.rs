//! The deployment files and the docs stay true: the Kubernetes config and subscriptions
//! validate, every metric the Grafana dashboard charts is one the broker exports, and
//! README's key table and the shipped config name every config key the broker has.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use switchyard::config::yaml::{self, Node, Value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn get<'a>(node: &'a Node, key: &str) -> Option<&'a Node> {
    match &node.value {
        Value::Map(e) => e.iter().find(|(k, _, _)| k == key).map(|(_, _, n)| n),
        _ => None,
    }
}

#[test]
fn readme_lists_every_config_key_with_its_default() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let table = switchyard::config::key_table();
    assert!(
        readme.contains(&table),
        "README's config table differs from the schema (src/config/mod.rs SCHEMA); it should read:\n{table}"
    );
}

#[test]
fn the_shipped_config_spells_out_every_key() {
    let text = std::fs::read_to_string(root().join("config/switchyard.yaml")).unwrap();
    let doc = yaml::parse(&text).unwrap().pop().unwrap();
    for key in switchyard::config::SCHEMA {
        let mut node = Some(&doc);
        for part in key.path.split('.') {
            node = node.and_then(|n| get(n, part));
        }
        // A key whose setting changes its meaning (a set `subscriptions` must exist) is
        // shown commented out.
        let leaf = key.path.rsplit('.').next().unwrap();
        assert!(
            node.is_some() || text.contains(&format!("# {leaf}: {}", key.default)),
            "config/switchyard.yaml does not show {}",
            key.path
        );
    }
}

#[test]
fn the_kubernetes_config_and_subscriptions_validate() {
    let text = std::fs::read_to_string(root().join("config/kubernetes/switchyard.yaml")).unwrap();
    let docs = yaml::parse(&text).unwrap();
    let config_map = |name: &str| {
        docs.iter()
            .find(|d| {
                get(d, "kind").and_then(Node::scalar_text).as_deref() == Some("ConfigMap")
                    && get(get(d, "metadata").unwrap(), "name")
                        .and_then(Node::scalar_text)
                        .as_deref()
                        == Some(name)
            })
            .and_then(|d| get(d, "data"))
            .unwrap_or_else(|| panic!("no ConfigMap {name}"))
    };
    let server = get(config_map("switchyard-config"), "switchyard.yaml")
        .unwrap()
        .scalar_text()
        .unwrap();
    let config = switchyard::config::from_yaml(
        Some(Path::new("switchyard.yaml")),
        &server,
        &Default::default(),
    )
    .expect("the server config validates");
    assert_eq!(
        config.subscriptions,
        vec![PathBuf::from("/etc/switchyard/subscriptions")]
    );
    let Value::Map(files) = &config_map("switchyard-subscriptions").value else {
        panic!()
    };
    let sources: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(k, _, v)| (PathBuf::from(k), v.scalar_text().unwrap()))
        .collect();
    let subs = switchyard::config::subscriptions::from_sources(
        &sources,
        &config.brokers,
        &config.delivery,
    )
    .expect("the subscriptions validate");
    assert_eq!(subs.len(), 2);
}

#[test]
fn the_dashboard_charts_only_exported_metrics() {
    let doc = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    let exported: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    let dashboard: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("config/grafana/switchyard.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for p in panels {
        let expr = p["targets"][0]["expr"].as_str().unwrap();
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("switchyard_") || w.starts_with("process_"))
            .collect();
        assert!(!names.is_empty(), "{expr}");
        for n in names {
            let base = n.trim_end_matches("_bucket");
            assert!(
                exported.contains(base),
                "the dashboard charts {n}, which is not exported"
            );
        }
    }
}
