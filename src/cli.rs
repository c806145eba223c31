//! The command-line clients: `send` posts one event to the ingress (as `kn event send`
//! does); `events`, `replay` and `deadletters` call the admin API. Human tables by
//! default, `-o json` for scripts.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
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
/// object per line.
pub fn follow_lines(output: Output, events: &[Value], header: bool) -> Vec<String> {
    if events.is_empty() {
        return Vec::new();
    }
    match output {
        Output::Json => events.iter().map(Value::to_string).collect(),
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
    fn ids_differ() {
        assert_ne!(new_id(), new_id());
    }
}
