//! How answers are shown as text: aligned tables, a record's or a subscription's
//! details, explain's verdicts (and their JSON, the admin API's shape).

use serde_json::Value;

use super::{to_yaml, CliError, Output};
use crate::router::explain::Verdict;

/// Prints rows as an aligned table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(headers.to_vec())];
    for r in rows {
        out.push(line(r.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

/// What `events --follow` prints for one poll's `events`: in a table, the header (when
/// `header`, the first time there is anything) and a row each; in JSON, one compact
/// object per line; in YAML, list items, so that the whole output is one YAML list.
pub fn follow_lines(output: Output, events: &[Value], header: bool) -> Vec<String> {
    if events.is_empty() {
        return Vec::new();
    }
    match output {
        Output::Json => events.iter().map(Value::to_string).collect(),
        Output::Yaml => to_yaml(&Value::Array(events.to_vec()))
            .lines()
            .map(str::to_string)
            .collect(),
        Output::Table => {
            let text = events_table(&Value::Array(events.to_vec()));
            text.lines()
                .skip(usize::from(!header))
                .map(str::to_string)
                .collect()
        }
    }
}

/// A JSON value as a table cell: strings bare, nothing as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The rows of `events` output.
pub fn events_table(events: &Value) -> String {
    let rows: Vec<Vec<String>> = events
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    vec![
                        cell(&e["seq"]),
                        cell(&e["arrival"]),
                        cell(&e["event"]["type"]),
                        cell(&e["event"]["source"]),
                        cell(&e["event"]["id"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["SEQ", "ARRIVAL", "TYPE", "SOURCE", "ID"], &rows)
}

/// The rows of `deadletters list` output.
pub fn dead_letters_table(letters: &Value) -> String {
    let rows: Vec<Vec<String>> = letters
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| {
                    vec![
                        cell(&l["id"]),
                        cell(&l["subscription"]),
                        cell(&l["sink"]),
                        cell(&l["seq"]),
                        cell(&l["attempts"]),
                        cell(&l["lastError"]),
                        cell(&l["time"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &[
            "ID",
            "SUBSCRIPTION",
            "SINK",
            "SEQ",
            "ATTEMPTS",
            "LAST ERROR",
            "TIME",
        ],
        &rows,
    )
}

/// `name  value` lines, the names padded to one width: a record shown field by field.
fn fields(rows: &[(String, String)]) -> String {
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}").trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// One row per lane of each subscription in `subs` (a list, or one subscription).
pub fn subscriptions_table(subs: &Value) -> String {
    let list = match subs {
        Value::Array(a) => a.clone(),
        one => vec![one.clone()],
    };
    let mut rows = Vec::new();
    for s in &list {
        let lanes = s["lanes"].as_array().cloned().unwrap_or_default();
        if lanes.is_empty() {
            rows.push(vec![cell(&s["name"]), cell(&s["broker"]), "-".into()]);
        }
        for l in &lanes {
            rows.push(vec![
                cell(&s["name"]),
                cell(&s["broker"]),
                cell(&l["sink"]),
                cell(&l["state"]),
                cell(&l["lag"]),
                cell(&l["inFlight"]),
                cell(&l["parked"]),
                cell(&l["delivered"]),
                cell(&l["deadLettered"]),
                cell(&l["lastError"]["message"]),
            ]);
        }
    }
    let headers = [
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
    ];
    // Every row as wide as the header, so that `table` can index each column.
    for r in &mut rows {
        r.resize(headers.len(), String::new());
    }
    table(&headers, &rows)
}

/// One subscription: where it is from, its filter part by part, its counts, then its
/// lanes as `subscriptions` lists them.
pub fn subscription_detail(sub: &Value) -> String {
    let f = &sub["filter"];
    let mut rows = vec![
        ("name".to_string(), cell(&sub["name"])),
        ("broker".to_string(), cell(&sub["broker"])),
        ("file".to_string(), cell(&sub["file"])),
    ];
    if let Some(attrs) = f["attributes"].as_object().filter(|a| !a.is_empty()) {
        let pairs: Vec<String> = attrs
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect();
        rows.push(("attributes".into(), pairs.join(", ")));
    }
    for (i, d) in f["filters"].as_array().into_iter().flatten().enumerate() {
        rows.push((format!("filters[{i}]"), d.to_string()));
    }
    if !f["cel"].is_null() {
        rows.push(("cel".into(), cell(&f["cel"])));
    }
    if rows.len() == 3 {
        rows.push(("filter".into(), "none: every event matches".into()));
    }
    for key in ["matched", "notMatched", "errors"] {
        rows.push((key.into(), cell(&sub[key])));
    }
    format!("{}\n\n{}", fields(&rows), subscriptions_table(sub))
}

/// One stored event: its place in the log, its attributes, then its data.
pub fn event_detail(record: &Value) -> String {
    let mut rows = vec![
        ("seq".to_string(), cell(&record["seq"])),
        ("arrival".to_string(), cell(&record["arrival"])),
        ("hops".to_string(), cell(&record["hops"])),
    ];
    let event = record["event"].as_object().cloned().unwrap_or_default();
    for (name, value) in &event {
        if name != "data" && name != "data_base64" {
            rows.push((name.clone(), cell(value)));
        }
    }
    let data = match (event.get("data"), event.get("data_base64")) {
        (Some(Value::String(text)), _) => format!("data:\n{text}"),
        (Some(json), _) => format!(
            "data:\n{}",
            serde_json::to_string_pretty(json).unwrap_or_default()
        ),
        (None, Some(b64)) => format!("data_base64:\n{}", cell(b64)),
        (None, None) => "data: none".to_string(),
    };
    format!("{}\n\n{data}", fields(&rows))
}

/// Explain's verdicts in the admin API's shape (`POST /api/v1/explain`), so that a local
/// `explain -o json` reads as the broker's does.
pub fn verdicts_json(verdicts: &[Verdict]) -> Value {
    crate::router::explain::to_json(verdicts)
}

/// The verdicts of an admin API explain answer, to print as the local explain does.
pub fn verdicts_from_json(answer: &Value) -> Result<Vec<Verdict>, CliError> {
    crate::router::explain::from_json(answer).ok_or_else(|| {
        CliError::Usage(format!(
            "the broker's explain answer is not a list of verdicts: {answer}"
        ))
    })
}

/// What `explain` prints for people: each verdict as [`Verdict`]'s `Display` writes it.
pub fn explain_text(verdicts: &[Verdict]) -> String {
    if verdicts.is_empty() {
        return "no subscriptions are configured".into();
    }
    verdicts
        .iter()
        .map(Verdict::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
