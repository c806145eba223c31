//! The CESQL v1.0.0 TCK (tests/fixtures/cesql, copied from cloudevents/spec with its
//! PROVENANCE.md): every case of every file, as data, checked for its result and its
//! error kind. One test walks them all so that the per-file counts print together.

use std::path::{Path, PathBuf};

use switchyard::config::yaml::{self, Node, Value as Yaml};
use switchyard::event::{validate::coerce_known, AttrValue, Event};
use switchyard::expr::cesql::{ErrorKind, Expression, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cesql")
}

fn get<'a>(node: &'a Node, key: &str) -> Option<&'a Node> {
    match &node.value {
        Yaml::Map(entries) => entries.iter().find(|(k, _, _)| k == key).map(|(_, _, v)| v),
        _ => None,
    }
}

/// A scalar's text as written in the file: YAML turns `TRUE` or `0` into a Boolean or
/// an Integer, and the TCK means the expression text.
fn raw_text(node: &Node, lines: &[&str]) -> String {
    if let Yaml::Str(s) = &node.value {
        return s.clone();
    }
    let line = lines[node.line - 1];
    let (_, after) = line.split_once(':').expect("a `key: value` line");
    after.trim().to_string()
}

fn attr(name: &str, v: &Node) -> AttrValue {
    let value = match &v.value {
        Yaml::Bool(b) => AttrValue::Boolean(*b),
        Yaml::Int(i) => AttrValue::Integer(i32::try_from(*i).expect("a 32-bit integer")),
        // The PROVENANCE.md caveat: unquoted times stay the producer's string.
        other => AttrValue::String(
            Node::new(v.line, other.clone())
                .scalar_text()
                .expect("a scalar attribute"),
        ),
    };
    coerce_known(name, value)
}

fn attributes(map: Option<&Node>) -> Vec<(String, AttrValue)> {
    match map.map(|m| &m.value) {
        Some(Yaml::Map(entries)) => entries
            .iter()
            .map(|(k, _, v)| (k.clone(), attr(k, v)))
            .collect(),
        _ => Vec::new(),
    }
}

/// The case's event: `event` as given, or a valid event with `eventOverrides` applied.
fn event(case: &Node) -> Event {
    let attrs = if let Some(e) = get(case, "event") {
        attributes(Some(e))
    } else {
        let mut attrs: Vec<(String, AttrValue)> = [
            ("specversion", "1.0"),
            ("id", "myId"),
            ("source", "localhost.localdomain"),
            ("type", "myType"),
        ]
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                coerce_known(k, AttrValue::String(v.to_string())),
            )
        })
        .collect();
        for (k, v) in attributes(get(case, "eventOverrides")) {
            match attrs.iter_mut().find(|(n, _)| *n == k) {
                Some(slot) => slot.1 = v,
                None => attrs.push((k, v)),
            }
        }
        attrs
    };
    Event::new(attrs, None).expect("the TCK's events are valid")
}

fn expected_value(node: &Node) -> Value<'static> {
    match &node.value {
        Yaml::Bool(b) => Value::Bool(*b),
        Yaml::Int(i) => Value::Int(i32::try_from(*i).expect("a 32-bit result")),
        other => Value::Str(
            Node::new(node.line, other.clone())
                .scalar_text()
                .expect("a scalar result")
                .into(),
        ),
    }
}

fn error_kind(name: &str) -> ErrorKind {
    match name {
        "parse" => ErrorKind::Parse,
        "math" => ErrorKind::Math,
        "cast" => ErrorKind::Cast,
        "missingAttribute" => ErrorKind::MissingAttribute,
        "missingFunction" => ErrorKind::MissingFunction,
        "functionEvaluation" => ErrorKind::FunctionEvaluation,
        "generic" => ErrorKind::Generic,
        other => panic!("unknown TCK error kind {other}"),
    }
}

/// Runs one case; `Err` says how it failed.
fn run_case(case: &Node, lines: &[&str]) -> Result<(), String> {
    let expression = raw_text(get(case, "expression").ok_or("no expression")?, lines);
    let want_error = get(case, "error")
        .and_then(|e| e.scalar_text())
        .map(|e| error_kind(&e));
    let want_value = get(case, "result").map(expected_value);
    let event = event(case);
    let compiled = match Expression::compile(&expression) {
        Ok(c) => c,
        Err(e) => {
            return if want_error == Some(e.kind) {
                Ok(())
            } else {
                Err(format!(
                    "{expression:?}: compile error {e} ({:?}), expected {want_error:?}",
                    e.kind
                ))
            };
        }
    };
    let got = compiled.evaluate(&event);
    let got_kind = got.error.as_ref().map(|e| e.kind);
    if got_kind != want_error {
        return Err(format!(
            "{expression:?}: error {:?}, expected {want_error:?} (value {})",
            got.error, got.value
        ));
    }
    if let Some(want) = want_value {
        if got.value != want {
            return Err(format!(
                "{expression:?}: value {}, expected {want}",
                got.value
            ));
        }
    }
    Ok(())
}

#[test]
fn every_tck_case_passes_with_its_result_and_error_kind() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 18, "the TCK has 18 files");
    let (mut total, mut failures) = (0, Vec::new());
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let doc = yaml::parse(&text).unwrap().remove(0);
        let Some(Yaml::Seq(cases)) = get(&doc, "tests").map(|t| &t.value) else {
            panic!("{}: no tests", path.display())
        };
        let file = path.file_name().unwrap().to_string_lossy();
        let mut passed = 0;
        for case in cases {
            let name = get(case, "name")
                .and_then(|n| n.scalar_text())
                .unwrap_or_default();
            match run_case(case, &lines) {
                Ok(()) => passed += 1,
                Err(why) => failures.push(format!("{file}: {name}: {why}")),
            }
        }
        println!("{file}: {passed}/{} passed", cases.len());
        total += cases.len();
    }
    println!("total: {} cases, {} failed", total, failures.len());
    assert!(total >= 275, "expected the TCK's 275 cases, found {total}");
    assert!(
        failures.is_empty(),
        "failing TCK cases:\n{}",
        failures.join("\n")
    );
}

#[test]
fn matches_reports_the_first_error_and_needs_a_boolean() {
    let e = Event::new(
        vec![
            ("specversion".into(), AttrValue::String("1.0".into())),
            ("id".into(), AttrValue::String("1".into())),
            ("source".into(), AttrValue::UriRef("/s".into())),
            (
                "type".into(),
                AttrValue::String("dev.tekton.event.taskrun.failed.v1".into()),
            ),
            ("subject".into(), AttrValue::String("x".into())),
        ],
        None,
    )
    .unwrap();
    let ok = Expression::compile("type LIKE 'dev.tekton.%' AND subject = 'x'").unwrap();
    assert_eq!(ok.matches(&e), Ok(true));
    let missing = Expression::compile("missing = 1 OR 1 / 0 = 0").unwrap();
    assert_eq!(
        missing.matches(&e).unwrap_err().kind,
        ErrorKind::MissingAttribute
    );
    let not_bool = Expression::compile("LENGTH(type)").unwrap();
    assert_eq!(not_bool.matches(&e).unwrap_err().kind, ErrorKind::Generic);
}
