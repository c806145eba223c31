//! Explain: every subscription's verdict on one event, with each filter part's result
//! (and CEL errors) and, for a match, the request each sink would be sent, for
//! `switchyard explain` and the admin API. The verdicts are made here; the requests are
//! the delivery client's to build (`delivery::explain` fills them in).

use std::fmt;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::config::subscriptions::Subscription;
use crate::event::Event;
use crate::expr::activation::{self, Needs};
use crate::expr::filter::PartResult;

/// One subscription's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub subscription: String,
    pub broker: String,
    pub matched: bool,
    /// `(part, result)` in file order; empty for a subscription without a filter.
    pub parts: Vec<(String, PartResult)>,
    /// For a match, what each sink would be sent, in the subscription's order.
    pub requests: Vec<SinkRequest>,
}

/// What one sink would be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkRequest {
    /// The sink's URI, with credentials redacted.
    pub sink: String,
    pub shape: RequestShape,
}

/// A request, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestShape {
    /// `POST` to the sink with these headers (secret values redacted) and body.
    Request {
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// The sink's transform sends nothing for this event.
    Skipped(String),
    /// The sink's transform fails on this event (the event would be dead-lettered).
    Failed(String),
}

/// Explains `event` against every subscription (all brokers); `requests` are left empty.
pub fn explain<'a>(
    subscriptions: impl IntoIterator<Item = &'a Subscription>,
    event: &Event,
) -> Vec<Verdict> {
    let data = activation::parse_data(event);
    let base = activation::base();
    subscriptions
        .into_iter()
        .map(|s| {
            let mut needs = Needs::default();
            if let Some(c) = &s.filter.cel {
                needs.add(c.variables());
            }
            let act = activation::activation(&base, event, data.as_ref(), &needs);
            let parts = s
                .filter
                .explain(&crate::expr::cost::Input::new(event, data.as_ref()), &act);
            let matched = parts.iter().all(|(_, r)| *r == PartResult::Match);
            Verdict {
                subscription: s.name.clone(),
                broker: s.broker.clone(),
                matched,
                parts,
                requests: Vec::new(),
            }
        })
        .collect()
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = if self.matched { "MATCH   " } else { "no match" };
        write!(f, "{word} {} (broker {})", self.subscription, self.broker)?;
        if self.parts.is_empty() {
            write!(f, "\n    (no filter: every event matches)")?;
        }
        for (part, result) in &self.parts {
            match result {
                PartResult::Match => write!(f, "\n    {part}: match")?,
                PartResult::NoMatch => write!(f, "\n    {part}: no match")?,
                PartResult::Error(e) => write!(f, "\n    {part}: error: {e}")?,
            }
        }
        for r in &self.requests {
            match &r.shape {
                RequestShape::Request { headers, body } => {
                    write!(f, "\n    POST {}", r.sink)?;
                    for (name, value) in headers {
                        write!(f, "\n      {name}: {value}")?;
                    }
                    if body.is_empty() {
                        write!(f, "\n      (no body)")?;
                        continue;
                    }
                    writeln!(f)?;
                    let text = shown_body(body);
                    let lines: Vec<&str> = text.lines().collect();
                    for line in lines.iter().take(SHOWN_LINES) {
                        write!(f, "\n      {line}")?;
                    }
                    if lines.len() > SHOWN_LINES {
                        write!(
                            f,
                            "\n      … {} more lines ({} bytes in all; -o json shows the whole body)",
                            lines.len() - SHOWN_LINES,
                            body.len()
                        )?;
                    }
                }
                RequestShape::Skipped(why) => write!(f, "\n    {}: skipped: {why}", r.sink)?,
                RequestShape::Failed(e) => write!(
                    f,
                    "\n    {}: {e} (the event would be dead-lettered)",
                    r.sink
                )?,
            }
        }
        Ok(())
    }
}

/// The most lines of a body explain's text shows.
const SHOWN_LINES: usize = 40;

/// A body as explain's text shows it: JSON indented, other text as it is, bytes in
/// base64.
fn shown_body(body: &[u8]) -> String {
    let container = matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    );
    if container && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        if let Ok(text) = std::str::from_utf8(body) {
            return indent_json(text);
        }
    }
    match std::str::from_utf8(body) {
        Ok(text) => text.to_string(),
        Err(_) => format!(
            "({} bytes, base64) {}",
            body.len(),
            base64::engine::general_purpose::STANDARD.encode(body)
        ),
    }
}

/// Valid JSON text indented two spaces a level, its members in their order.
fn indent_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', depth * 2));
    };
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                let close = if c == '{' { '}' } else { ']' };
                while chars.peek().is_some_and(|n| n.is_ascii_whitespace()) {
                    chars.next();
                }
                if chars.peek() == Some(&close) {
                    out.push(close);
                    chars.next();
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// Verdicts in the admin API's shape (`POST /api/v1/explain`), which a local
/// `explain -o json` prints too.
pub fn to_json(verdicts: &[Verdict]) -> Value {
    let list = verdicts
        .iter()
        .map(|v| {
            let parts: Vec<Value> = v
                .parts
                .iter()
                .map(|(part, r)| match r {
                    PartResult::Match => json!({ "part": part, "result": "match" }),
                    PartResult::NoMatch => json!({ "part": part, "result": "no_match" }),
                    PartResult::Error(e) => {
                        json!({ "part": part, "result": "error", "error": e })
                    }
                })
                .collect();
            let requests: Vec<Value> = v.requests.iter().map(request_json).collect();
            json!({
                "subscription": v.subscription,
                "broker": v.broker,
                "matched": v.matched,
                "parts": parts,
                "requests": requests,
            })
        })
        .collect();
    Value::Array(list)
}

fn request_json(r: &SinkRequest) -> Value {
    match &r.shape {
        RequestShape::Request { headers, body } => {
            let headers: Vec<Value> = headers.iter().map(|(n, v)| json!([n, v])).collect();
            let mut out = json!({ "sink": r.sink, "method": "POST", "headers": headers });
            match std::str::from_utf8(body) {
                Ok(text) => out["body"] = json!(text),
                Err(_) => {
                    out["bodyBase64"] =
                        json!(base64::engine::general_purpose::STANDARD.encode(body))
                }
            }
            out
        }
        RequestShape::Skipped(why) => json!({ "sink": r.sink, "skipped": why }),
        RequestShape::Failed(e) => json!({ "sink": r.sink, "error": e }),
    }
}

/// Reads verdicts back from [`to_json`]'s shape; `None` when `answer` is not in it.
pub fn from_json(answer: &Value) -> Option<Vec<Verdict>> {
    let text = |v: &Value| v.as_str().map(str::to_string);
    answer
        .as_array()?
        .iter()
        .map(|v| {
            let parts = v["parts"]
                .as_array()?
                .iter()
                .map(|p| {
                    let result = match p["result"].as_str()? {
                        "match" => PartResult::Match,
                        "no_match" => PartResult::NoMatch,
                        "error" => PartResult::Error(
                            p["error"]
                                .as_str()
                                .map_or_else(|| p["error"].to_string(), str::to_string),
                        ),
                        _ => return None,
                    };
                    Some((text(&p["part"])?, result))
                })
                .collect::<Option<_>>()?;
            let requests = match &v["requests"] {
                Value::Null => Vec::new(),
                list => list
                    .as_array()?
                    .iter()
                    .map(request_from_json)
                    .collect::<Option<_>>()?,
            };
            Some(Verdict {
                subscription: text(&v["subscription"])?,
                broker: text(&v["broker"])?,
                matched: v["matched"].as_bool()?,
                parts,
                requests,
            })
        })
        .collect()
}

fn request_from_json(r: &Value) -> Option<SinkRequest> {
    let sink = r["sink"].as_str()?.to_string();
    let shape = if let Some(why) = r["skipped"].as_str() {
        RequestShape::Skipped(why.to_string())
    } else if let Some(e) = r["error"].as_str() {
        RequestShape::Failed(e.to_string())
    } else {
        let headers = r["headers"]
            .as_array()?
            .iter()
            .map(|h| Some((h[0].as_str()?.to_string(), h[1].as_str()?.to_string())))
            .collect::<Option<_>>()?;
        let body = match (r["body"].as_str(), r["bodyBase64"].as_str()) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64).ok()?,
            (None, None) => return None,
        };
        RequestShape::Request { headers, body }
    };
    Some(SinkRequest { sink, shape })
}
