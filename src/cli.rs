//! The command-line clients: `send` posts one event to the ingress (as `kn event send`
//! does); `subscriptions`, `events`, `replay`, `deadletters` and `explain --admin` call
//! the admin API. Human tables by default, `-o json` or `-o yaml` for scripts: what this
//! module owns is how answers are shown, and which stored events a listing keeps.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::expr::filter::PartResult;
use crate::router::explain::Verdict;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// `value` as `output` says: pretty JSON, a YAML document, or what `table` makes of it.
pub fn render(output: Output, value: &Value, table: impl FnOnce(&Value) -> String) -> String {
    match output {
        Output::Json => serde_json::to_string_pretty(value).unwrap_or_default(),
        Output::Yaml => to_yaml(value),
        Output::Table => table(value),
    }
}

/// A failed call: what to print, and whether it was the server's answer.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{status}: {detail}")]
    Refused { status: u16, detail: String },
}

/// Calls `url` and returns the JSON answer (`Null` for an empty one); a problem+json
/// answer becomes `CliError::Refused` with its detail.
pub async fn call(
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<(&str, Bytes)>,
    headers: &[(String, String)],
) -> Result<Value, CliError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let body = match body {
        Some((content_type, b)) => {
            req = req.header("content-type", content_type);
            b
        }
        None => Bytes::new(),
    };
    let req = req
        .body(Full::new(body))
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let unreachable = |reason: String| CliError::Unreachable {
        url: url.to_string(),
        reason,
    };
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| unreachable("no answer in 30 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    let json: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    if status >= 400 {
        return Err(CliError::Refused {
            status,
            detail: refusal(status, &json),
        });
    }
    Ok(json)
}

/// What a refusal says: a problem's `detail`, else the answer's text (its start), else
/// the status's reason phrase.
fn refusal(status: u16, answer: &Value) -> String {
    const SHOWN: usize = 200;
    let text = match answer {
        Value::Null => String::new(),
        Value::String(s) => s.trim().to_string(),
        other => other
            .get("detail")
            .and_then(Value::as_str)
            .map_or_else(|| other.to_string(), str::to_string),
    };
    if text.is_empty() {
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("refused");
        return format!("{reason} (the answer says no more)");
    }
    match text.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

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
    let list = verdicts
        .iter()
        .map(|v| {
            let parts: Vec<Value> = v
                .parts
                .iter()
                .map(|(part, r)| match r {
                    PartResult::Match => serde_json::json!({ "part": part, "result": "match" }),
                    PartResult::NoMatch => {
                        serde_json::json!({ "part": part, "result": "no_match" })
                    }
                    PartResult::Error(e) => {
                        serde_json::json!({ "part": part, "result": "error", "error": e })
                    }
                })
                .collect();
            serde_json::json!({
                "subscription": v.subscription,
                "broker": v.broker,
                "matched": v.matched,
                "parts": parts,
            })
        })
        .collect();
    Value::Array(list)
}

/// The verdicts of an admin API explain answer, to print as the local explain does.
pub fn verdicts_from_json(answer: &Value) -> Result<Vec<Verdict>, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "the broker's explain answer is not a list of verdicts: {answer}"
        ))
    };
    let text = |v: &Value| v.as_str().map(str::to_string).ok_or_else(bad);
    answer
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|v| {
            let parts = v["parts"]
                .as_array()
                .ok_or_else(bad)?
                .iter()
                .map(|p| {
                    let result = match p["result"].as_str() {
                        Some("match") => PartResult::Match,
                        Some("no_match") => PartResult::NoMatch,
                        Some("error") => PartResult::Error(cell(&p["error"])),
                        _ => return Err(bad()),
                    };
                    Ok((text(&p["part"])?, result))
                })
                .collect::<Result<_, _>>()?;
            Ok(Verdict {
                subscription: text(&v["subscription"])?,
                broker: text(&v["broker"])?,
                matched: v["matched"].as_bool().ok_or_else(bad)?,
                parts,
            })
        })
        .collect()
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

/// An attribute pattern of `events`: the exact text, or a prefix when it ends in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    pub fn parse(s: &str) -> Self {
        match s.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_string()),
            None => Pattern::Exact(s.to_string()),
        }
    }

    pub fn matches(&self, s: &str) -> bool {
        match self {
            Pattern::Exact(e) => s == e,
            Pattern::Prefix(p) => s.starts_with(p.as_str()),
        }
    }
}

/// Which stored events `events` shows: by type, by source, and those that arrived at or
/// after a time. The admin API lists by sequence only, so the client filters each page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub ty: Option<Pattern>,
    pub source: Option<Pattern>,
    /// RFC 3339 seconds and nanoseconds.
    pub since: Option<(i64, u32)>,
}

impl EventFilter {
    /// The filter of `--type`, `--source` and `--since`; a time that is not RFC 3339 is
    /// a usage error.
    pub fn new(
        ty: Option<&str>,
        source: Option<&str>,
        since: Option<&str>,
    ) -> Result<Self, CliError> {
        let since = since
            .map(|t| {
                crate::event::validate::parse_rfc3339(t)
                    .map_err(|e| CliError::Usage(format!("--since {t}: {e}")))
            })
            .transpose()?;
        Ok(EventFilter {
            ty: ty.map(Pattern::parse),
            source: source.map(Pattern::parse),
            since,
        })
    }

    /// Whether every record passes (no flag was given).
    pub fn is_empty(&self) -> bool {
        self == &EventFilter::default()
    }

    /// Whether a record of the events listing (`{seq, arrival, event}`) passes.
    pub fn matches(&self, record: &Value) -> bool {
        let attr = |name: &str| record["event"][name].as_str().unwrap_or_default();
        self.ty.as_ref().is_none_or(|p| p.matches(attr("type")))
            && self
                .source
                .as_ref()
                .is_none_or(|p| p.matches(attr("source")))
            && self.since.is_none_or(|since| {
                record["arrival"]
                    .as_str()
                    .and_then(|a| crate::event::validate::parse_rfc3339(a).ok())
                    .is_some_and(|arrival| arrival >= since)
            })
    }
}

/// `--time` of `send`: `now` is this moment in RFC 3339; anything else is sent as given
/// (the broker validates it).
pub fn event_time(arg: &str) -> String {
    if arg != "now" {
        return arg.to_string();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    crate::event::protobuf::format_rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

/// A JSON value as a YAML block document: maps and lists in block style (`{}` and `[]`
/// when empty), null, booleans and numbers as JSON writes them, every string
/// double-quoted. A double-quoted YAML scalar takes JSON's escapes, so strings stay JSON
/// text, except that characters YAML may not hold literally are escaped too.
pub fn to_yaml(value: &Value) -> String {
    let mut lines = Vec::new();
    yaml_block(value, &mut lines);
    lines.join("\n")
}

fn yaml_block(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = yaml_key(k);
                if is_yaml_block(v) {
                    out.push(format!("{key}:"));
                    let mut inner = Vec::new();
                    yaml_block(v, &mut inner);
                    out.extend(inner.into_iter().map(|l| format!("  {l}")));
                } else {
                    out.push(format!("{key}: {}", yaml_scalar(v)));
                }
            }
        }
        Value::Array(list) if !list.is_empty() => {
            for item in list {
                let mut inner = Vec::new();
                yaml_block(item, &mut inner);
                for (i, l) in inner.into_iter().enumerate() {
                    out.push(if i == 0 {
                        format!("- {l}")
                    } else {
                        format!("  {l}")
                    });
                }
            }
        }
        scalar => out.push(yaml_scalar(scalar)),
    }
}

fn is_yaml_block(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => yaml_quoted(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// A key plain when it can only read as that string (a letter or `_`, then letters,
/// digits, `_`, `-`, `.`, and no word that YAML 1.1 or 1.2 reads as null or a boolean);
/// quoted otherwise.
fn yaml_key(k: &str) -> String {
    const WORDS: [&str; 9] = ["null", "true", "false", "yes", "no", "on", "off", "y", "n"];
    let plain = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !WORDS.iter().any(|w| k.eq_ignore_ascii_case(w));
    if plain {
        k.to_string()
    } else {
        yaml_quoted(k)
    }
}

/// A double-quoted YAML scalar. Escaped beyond JSON's rules: DEL and the C1 controls
/// (not printable, YAML 1.2 section 5.1), NEL, LS and PS (line breaks to YAML 1.1), and
/// U+FEFF, U+FFFE, U+FFFF (a byte order mark and non-characters).
fn yaml_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if matches!(
                c as u32,
                0..=0x1f | 0x7f..=0x9f | 0x2028 | 0x2029 | 0xfeff | 0xfffe | 0xffff
            ) =>
            {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A fresh event id: time and randomness, like a UUID's purpose without the format.
pub fn new_id() -> String {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let r = std::collections::hash_map::RandomState::new().hash_one(nanos);
    format!("{nanos:x}-{r:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONGER\nxyz  1\nq    22");
    }

    #[test]
    fn yaml_writes_block_maps_and_lists_and_quotes_every_string() {
        let v = serde_json::json!({
            "name": "a",
            "lanes": [{"sink": "http://x/", "lag": 0}, {"sink": "b", "lastError": null}],
            "filter": {"attributes": {}, "filters": [], "cel": "type == 'x'"},
            "nested": [[1, 2], []],
            "true": true,
            "a key": 1.5,
        });
        assert_eq!(
            to_yaml(&v),
            [
                "\"a key\": 1.5",
                "filter:",
                "  attributes: {}",
                "  cel: \"type == 'x'\"",
                "  filters: []",
                "lanes:",
                "  - lag: 0",
                "    sink: \"http://x/\"",
                "  - lastError: null",
                "    sink: \"b\"",
                "name: \"a\"",
                "nested:",
                "  - - 1",
                "    - 2",
                "  - []",
                "\"true\": true",
            ]
            .join("\n")
        );
        assert_eq!(to_yaml(&Value::Null), "null");
        assert_eq!(to_yaml(&serde_json::json!([])), "[]");
        assert_eq!(to_yaml(&serde_json::json!({})), "{}");
    }

    /// The YAML parser's tree as JSON, to compare with what was written.
    fn yaml_to_json(node: &crate::config::yaml::Node) -> Value {
        use crate::config::yaml::Value as Y;
        match &node.value {
            Y::Null => Value::Null,
            Y::Bool(b) => Value::Bool(*b),
            Y::Int(i) => Value::from(*i),
            Y::Float(f) => Value::from(*f),
            Y::Str(s) => Value::String(s.clone()),
            Y::Seq(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
            Y::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, _, v)| (k.clone(), yaml_to_json(v)))
                    .collect(),
            ),
        }
    }

    #[test]
    fn yaml_round_trips_through_the_config_parser() {
        let tricky = [
            "",
            "true",
            "null",
            "~",
            "1",
            "0x1f",
            "1e3",
            "- item",
            "key: value",
            "# not a comment",
            "'single'",
            "\"double\"",
            "back\\slash",
            "line\nbreak\r\ttab",
            "\u{0}\u{1b}\u{7f}",
            "\u{85}\u{2028}\u{2029}\u{feff}\u{fffe}",
            "ünïcødé 🚂",
            "  spaces  ",
            "{[&*!|>%@`",
        ];
        let v = serde_json::json!({
            "strings": tricky,
            "keys": tricky.iter().map(|k| (k.to_string(), Value::from(*k))).collect::<serde_json::Map<_, _>>(),
            "numbers": [0, -7, 9_007_199_254_740_993_i64, 1.5, -0.25, 1e-7, 6.02e23],
            "flags": [true, false, null],
            "deep": {"a": [{"b": [[], {}, [{"c": {"d": [1]}}]]}], "e": {}},
            "list of lists": [[["x"]], [[]]],
        });
        let text = to_yaml(&v);
        let docs = crate::config::yaml::parse(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert_eq!(docs.len(), 1, "{text}");
        assert_eq!(yaml_to_json(&docs[0]), v, "{text}");
        for scalar in [Value::Null, Value::from("x: y"), Value::from(-3)] {
            let docs = crate::config::yaml::parse(&to_yaml(&scalar)).unwrap();
            assert_eq!(yaml_to_json(&docs[0]), scalar);
        }
    }

    #[test]
    fn event_filters_match_exactly_or_by_prefix_and_by_arrival() {
        let record = |ty: &str, source: &str, arrival: &str| serde_json::json!({"seq": 1, "arrival": arrival, "event": {"type": ty, "source": source}});
        let r = record("dev.tekton.run.failed", "/ci/build", "2026-01-01T01:00:00Z");
        let f = |ty, source, since| EventFilter::new(ty, source, since).unwrap();
        assert!(f(None, None, None).is_empty());
        assert!(f(None, None, None).matches(&r));
        assert!(f(Some("dev.tekton.run.failed"), None, None).matches(&r));
        assert!(!f(Some("dev.tekton.run"), None, None).matches(&r), "exact");
        assert!(f(Some("dev.tekton.*"), Some("/ci/*"), None).matches(&r));
        assert!(!f(Some("dev.tekton.*"), Some("/cd/*"), None).matches(&r));
        assert!(f(Some("*"), None, None).matches(&r));
        assert!(
            f(None, None, Some("2026-01-01T01:00:00Z")).matches(&r),
            "inclusive"
        );
        assert!(
            f(None, None, Some("2026-01-01T02:00:00+02:00")).matches(&r),
            "an offset"
        );
        assert!(!f(None, None, Some("2026-01-01T01:00:00.000000001Z")).matches(&r));
        assert!(EventFilter::new(None, None, Some("yesterday")).is_err());
    }

    #[test]
    fn verdicts_read_back_from_the_api_shape_print_as_they_were() {
        let verdicts = vec![
            Verdict {
                subscription: "a".into(),
                broker: "default".into(),
                matched: false,
                parts: vec![
                    ("attributes".into(), PartResult::Match),
                    ("filters[0]".into(), PartResult::NoMatch),
                    ("cel".into(), PartResult::Error("no such key: x".into())),
                ],
            },
            Verdict {
                subscription: "b".into(),
                broker: "other".into(),
                matched: true,
                parts: vec![],
            },
        ];
        let json = verdicts_json(&verdicts);
        assert_eq!(
            json[0]["parts"][2],
            serde_json::json!({"part": "cel", "result": "error", "error": "no such key: x"})
        );
        assert_eq!(verdicts_from_json(&json).unwrap(), verdicts);
        assert!(verdicts_from_json(&serde_json::json!({"detail": "x"})).is_err());
        assert_eq!(explain_text(&[]), "no subscriptions are configured");
    }

    #[test]
    fn ids_differ() {
        assert_ne!(new_id(), new_id());
    }
}
