//! The dedupe key: a CEL expression over an event's attributes (and `data` when it
//! uses it), compiled once at config load and evaluated once per event at ingress.
//! The log's writer owns the index; this module only computes keys.

use cel::common::ast::{Expr, IdedExpr, LiteralValue};
use cel::{Program, Value};

use crate::event::{AttrValue, Event};
use crate::expr::activation::{self, Needs};

/// A compiled dedupe key expression.
pub struct DedupeKey {
    source: String,
    program: Program,
    /// The variables the expression reads; only these are bound per event.
    needs: Needs,
    /// When the expression only joins attributes and string literals with `+` (the
    /// default key does): its parts, so that keys of string attributes are joined
    /// without evaluating CEL.
    concat: Option<Vec<Part>>,
    /// Whether it has comprehensions: then each evaluation is held to the cost budget.
    loops: bool,
}

/// Keys longer than this are stored as their SHA-256 digest: a key is kept in every
/// stored frame and in the index's verification, and a source may be kilobytes long.
pub const MAX_KEY_BYTES: usize = 1024;

/// What a digest starts with (a byte UTF-8 never has, so no string key starts so).
const DIGEST_PREFIX: &[u8] = b"\xffsha256:";

/// `key` itself, or past [`MAX_KEY_BYTES`] its digest. A key that starts as a digest
/// does (only a `bytes` key can) is hashed too, so a key kept as it is never equals a
/// digest.
fn bounded(key: Vec<u8>) -> Vec<u8> {
    if key.len() <= MAX_KEY_BYTES && !key.starts_with(DIGEST_PREFIX) {
        return key;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &key);
    let mut out = Vec::with_capacity(DIGEST_PREFIX.len() + digest.as_ref().len());
    out.extend_from_slice(DIGEST_PREFIX);
    out.extend_from_slice(digest.as_ref());
    out
}

/// One operand of a key that joins strings.
#[derive(Debug, PartialEq, Eq)]
enum Part {
    Attribute(String),
    Literal(String),
}

/// Variables that are not attributes: bound to the attribute map and to `data`. (A type
/// name such as `int` is shadowed by an attribute of that name, and `join` falls back
/// to CEL when the event has none.)
const NOT_ATTRIBUTES: &[&str] = &["attributes", "data"];

/// The parts of `expr` when it is a join of identifiers and string literals with `+`.
fn concat_parts(expr: &IdedExpr, out: &mut Vec<Part>) -> Option<()> {
    match &expr.expr {
        Expr::Ident(name) if !NOT_ATTRIBUTES.contains(&name.as_str()) => {
            out.push(Part::Attribute(name.clone()))
        }
        Expr::Literal(LiteralValue::String(s)) => out.push(Part::Literal(s.to_string())),
        Expr::Call(call) if call.func_name == "_+_" && call.target.is_none() => {
            let [a, b] = call.args.as_slice() else {
                return None;
            };
            concat_parts(a, out)?;
            concat_parts(b, out)?;
        }
        _ => return None,
    }
    Some(())
}

impl std::fmt::Debug for DedupeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupeKey")
            .field("source", &self.source)
            .finish()
    }
}

impl DedupeKey {
    /// Compiles `source`; the error carries CEL's column.
    pub fn compile(source: &str) -> Result<Self, String> {
        let checked = crate::expr::cost::compile(source)
            .map_err(|r| format!("column {}: {}", r.column, r.message))?;
        let (program, loops) = (checked.program, checked.loops);
        let variables: Vec<String> = program
            .references()
            .variables()
            .into_iter()
            .map(str::to_string)
            .collect();
        let mut needs = Needs::default();
        needs.add(&variables);
        let mut parts = Vec::new();
        // A single operand is not a join: CEL hands back a non-string as it is. (A join
        // of two attributes that are not strings is not a join either: `join` leaves it
        // to CEL.)
        let concat = concat_parts(program.expression(), &mut parts)
            .filter(|()| parts.len() > 1)
            .map(|()| parts);
        Ok(DedupeKey {
            source: source.to_string(),
            program,
            needs,
            concat,
            loops,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The key of `event`, as bytes. An error (an attribute the expression needs is
    /// absent, or the result is not a scalar) means the event cannot be deduplicated.
    pub fn key(&self, event: &Event) -> Result<Vec<u8>, String> {
        self.unbounded_key(event).map(bounded)
    }

    fn unbounded_key(&self, event: &Event) -> Result<Vec<u8>, String> {
        if let Some(key) = self.concat.as_ref().and_then(|parts| join(parts, event)) {
            return Ok(key);
        }
        let data = if self.needs.data {
            activation::parse_data(event)
        } else {
            None
        };
        if self.loops {
            let input = crate::expr::cost::Input::new(event, data.as_ref());
            crate::expr::cost::within_budget(&self.program, &input)?;
        }
        let base = activation::base();
        let ctx = activation::activation(&base, event, data.as_ref(), &self.needs);
        match self.program.execute(&ctx).map_err(|e| e.to_string())? {
            Value::String(s) => Ok(s.as_bytes().to_vec()),
            Value::Bytes(b) => Ok(b.to_vec()),
            Value::Int(i) => Ok(i.to_string().into_bytes()),
            Value::UInt(u) => Ok(u.to_string().into_bytes()),
            Value::Bool(b) => Ok(b.to_string().into_bytes()),
            other => Err(format!(
                "the dedupe key must be a string, not {:?}",
                other.type_of()
            )),
        }
    }
}

/// The key of a join, when every attribute it names is a string on `event` (anything
/// else, absent or typed, is left to CEL, which gives the same key or the error).
fn join(parts: &[Part], event: &Event) -> Option<Vec<u8>> {
    let mut key = Vec::with_capacity(64);
    for part in parts {
        match part {
            Part::Literal(s) => key.extend_from_slice(s.as_bytes()),
            Part::Attribute(name) => match event.get(name)? {
                AttrValue::String(s) | AttrValue::Uri(s) | AttrValue::UriRef(s) => {
                    key.extend_from_slice(s.as_bytes())
                }
                _ => return None,
            },
        }
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AttrValue, Data};
    use bytes::Bytes;

    fn event(extra: &[(&str, AttrValue)], data: Option<Data>) -> Event {
        let mut attrs = vec![
            ("specversion".to_string(), AttrValue::String("1.0".into())),
            ("id".to_string(), AttrValue::String("abc".into())),
            ("source".to_string(), AttrValue::UriRef("/s".into())),
            ("type".to_string(), AttrValue::String("t".into())),
        ];
        attrs.extend(extra.iter().map(|(n, v)| (n.to_string(), v.clone())));
        Event::new(attrs, data).unwrap()
    }

    #[test]
    fn the_default_key_joins_source_and_id() {
        let k = DedupeKey::compile(r#"source + "\n" + id"#).unwrap();
        assert_eq!(k.key(&event(&[], None)).unwrap(), b"/s\nabc");
    }

    #[test]
    fn keys_can_read_data_and_attributes() {
        let k = DedupeKey::compile(r#"type + ":" + data.taskRun.metadata.uid"#).unwrap();
        let d = Data::Json(Bytes::from_static(
            br#"{"taskRun":{"metadata":{"uid":"u-1"}}}"#,
        ));
        assert_eq!(k.key(&event(&[], Some(d))).unwrap(), b"t:u-1");
        let k = DedupeKey::compile(r#"has(attributes.subject) ? subject : id"#).unwrap();
        assert_eq!(k.key(&event(&[], None)).unwrap(), b"abc");
        assert_eq!(
            k.key(&event(&[("subject", AttrValue::String("s1".into()))], None))
                .unwrap(),
            b"s1"
        );
    }

    /// The key CEL itself computes, for comparison with the joined one.
    fn by_cel(k: &DedupeKey, e: &Event) -> Result<Vec<u8>, String> {
        let plain = DedupeKey {
            concat: None,
            ..DedupeKey::compile(k.source()).unwrap()
        };
        plain.key(e)
    }

    #[test]
    fn a_join_of_attributes_and_strings_gives_the_key_cel_gives() {
        let joins = [
            r#"source + "\n" + id"#,
            r#"type + ':' + subject + "/" + id"#,
            r#""p-" + id"#,
            "source + id",
            "count + count",
            "int + '-' + id",
            r#"source + "\n" + count"#,
            r#"source + "\n" + time"#,
        ];
        let events = [
            event(&[], None),
            event(&[("subject", AttrValue::String("s1".into()))], None),
            event(&[("count", AttrValue::Integer(3))], None),
            event(&[("int", AttrValue::String("i".into()))], None),
            event(
                &[("time", AttrValue::Timestamp("2026-01-01T00:00:00Z".into()))],
                None,
            ),
        ];
        for source in joins {
            let k = DedupeKey::compile(source).unwrap();
            assert!(k.concat.is_some(), "{source} is a join");
            for e in &events {
                // Absent and typed attributes fall back to CEL: the same error or key.
                assert_eq!(k.key(e), by_cel(&k, e), "{source}");
            }
        }
        let k = DedupeKey::compile(r#"source + "\n" + id"#).unwrap();
        assert_eq!(k.key(&events[0]).unwrap(), b"/s\nabc");
        // Not joins: evaluated by CEL.
        for source in [
            "id",
            "id + string(1)",
            "attributes.id + '-'",
            "id - id",
            "data + id",
        ] {
            assert!(
                DedupeKey::compile(source).unwrap().concat.is_none(),
                "{source}"
            );
        }
    }

    #[test]
    fn a_missing_attribute_is_an_error_not_a_key() {
        let k = DedupeKey::compile("subject").unwrap();
        assert!(k.key(&event(&[], None)).is_err());
    }

    #[test]
    fn a_key_past_the_limit_is_its_digest() {
        let k = DedupeKey::compile(r#"source + "\n" + id"#).unwrap();
        let long = |source: &str| {
            event(&[], None)
                .into_parts()
                .0
                .into_iter()
                .map(|(n, v)| match n.as_str() {
                    "source" => (n, AttrValue::UriRef(source.to_string())),
                    _ => (n, v),
                })
                .collect::<Vec<_>>()
        };
        let key = |source: &str| k.key(&Event::new(long(source), None).unwrap()).unwrap();
        let a = format!("/{}", "a".repeat(70 * 1024));
        let b = format!("/{}", "b".repeat(70 * 1024));
        assert!(key(&a).len() <= 64);
        assert_eq!(key(&a), key(&a));
        assert_ne!(key(&a), key(&b));
        assert_eq!(key("/s"), b"/s\nabc");
    }

    #[test]
    fn compile_errors_name_the_column() {
        let err = DedupeKey::compile("source + + id").unwrap_err();
        assert!(err.contains("column"), "{err}");
    }
}
