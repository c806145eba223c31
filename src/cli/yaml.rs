//! `-o yaml`: a JSON value as a YAML document (block maps and lists; every string
//! double-quoted with JSON's escapes, which YAML reads the same).

use std::fmt::Write as _;

use serde_json::Value;

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
