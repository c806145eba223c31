//! The command-line clients: `send` posts one event to the ingress (as `kn event send`
//! does); `subscriptions`, `events`, `replay`, `deadletters` and `explain --admin` call
//! the admin API. Human tables by default, `-o json` or `-o yaml` for scripts: what this
//! module owns is how answers are shown, and which stored events a listing keeps.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub mod commands;
mod filter;
mod show;
mod yaml;

pub use filter::{event_time, EventFilter, Pattern};
pub use show::*;
pub use yaml::to_yaml;

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
    use crate::expr::filter::PartResult;
    use crate::router::explain::{RequestShape, SinkRequest, Verdict};

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
                requests: vec![],
            },
            Verdict {
                subscription: "b".into(),
                broker: "other".into(),
                matched: true,
                parts: vec![],
                requests: vec![
                    SinkRequest {
                        sink: "http://a/".into(),
                        shape: RequestShape::Request {
                            headers: vec![("content-type".into(), "text/plain".into())],
                            body: b"hi".to_vec(),
                        },
                    },
                    SinkRequest {
                        sink: "http://b/".into(),
                        shape: RequestShape::Request {
                            headers: vec![],
                            body: vec![0xff, 0],
                        },
                    },
                    SinkRequest {
                        sink: "http://c/".into(),
                        shape: RequestShape::Skipped("no counterpart".into()),
                    },
                    SinkRequest {
                        sink: "http://d/".into(),
                        shape: RequestShape::Failed("the transform failed: x".into()),
                    },
                ],
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
