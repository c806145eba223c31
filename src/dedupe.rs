//! The dedupe key: a CEL expression over an event's attributes (and `data` when it
//! uses it), compiled once at config load and evaluated once per event at ingress.
//! The log's writer owns the index; this module only computes keys.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value};

use crate::event::{AttrValue, Data, Event};

/// A compiled dedupe key expression.
pub struct DedupeKey {
    source: String,
    env: Arc<Env>,
    program: Program,
    /// The variables the expression reads; only these are bound per event.
    variables: Vec<String>,
}

impl std::fmt::Debug for DedupeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupeKey")
            .field("source", &self.source)
            .finish()
    }
}

impl DedupeKey {
    /// Compiles `source`; the error carries CEL's line and column.
    pub fn compile(source: &str) -> Result<Self, String> {
        let env = Arc::new(Env::stdlib());
        let program = env.compile(source).map_err(|e| {
            e.errors
                .iter()
                .map(|e| format!("column {}: {}", e.pos.1 + 1, e.msg))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let variables = program
            .references()
            .variables()
            .into_iter()
            .map(str::to_string)
            .collect();
        Ok(DedupeKey {
            source: source.to_string(),
            env,
            program,
            variables,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The key of `event`, as bytes. An error (an attribute the expression needs is
    /// absent, or the result is not a scalar) means the event cannot be deduplicated.
    pub fn key(&self, event: &Event) -> Result<Vec<u8>, String> {
        let mut ctx = Context::with_env(self.env.clone());
        for var in &self.variables {
            match var.as_str() {
                "attributes" => {
                    let map: HashMap<Key, Value> = event
                        .attributes()
                        .iter()
                        .map(|(n, v)| (Key::String(Arc::new(n.clone())), attr_to_cel(v)))
                        .collect();
                    ctx.add_variable_from_value(
                        "attributes",
                        Value::Map(Map { map: Arc::new(map) }),
                    );
                }
                "data" => {
                    if let Some(d) = event.data() {
                        ctx.add_variable_from_value(
                            "data",
                            data_to_cel(d, event.datacontenttype()),
                        );
                    }
                }
                name => {
                    if let Some(v) = event.get(name) {
                        ctx.add_variable_from_value(name.to_string(), attr_to_cel(v));
                    }
                }
            }
        }
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

/// An attribute as CEL sees it: strings, ints, bools, bytes, and `time`-typed values
/// as timestamps.
pub fn attr_to_cel(v: &AttrValue) -> Value {
    match v {
        AttrValue::Boolean(b) => Value::Bool(*b),
        AttrValue::Integer(i) => Value::Int(i64::from(*i)),
        AttrValue::Binary(b) => Value::Bytes(Arc::new(b.to_vec())),
        AttrValue::String(s) | AttrValue::Uri(s) | AttrValue::UriRef(s) => {
            Value::String(Arc::new(s.clone()))
        }
        AttrValue::Timestamp(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => Value::Timestamp(t),
            Err(_) => Value::String(Arc::new(s.clone())),
        },
    }
}

/// `data` as CEL sees it: JSON as maps, lists and values; text as a string; else bytes.
pub fn data_to_cel(d: &Data, content_type: Option<&str>) -> Value {
    match d {
        Data::Json(raw) => serde_json::from_slice::<serde_json::Value>(raw)
            .map(json_to_cel)
            .unwrap_or_else(|_| Value::Bytes(Arc::new(raw.to_vec()))),
        Data::Binary(b) if content_type.is_none_or(crate::event::is_json_media_type) => {
            match serde_json::from_slice::<serde_json::Value>(b) {
                Ok(v) => json_to_cel(v),
                Err(_) => Value::Bytes(Arc::new(b.to_vec())),
            }
        }
        Data::Binary(b) if content_type.is_some_and(|c| c.starts_with("text/")) => {
            match std::str::from_utf8(b) {
                Ok(s) => Value::String(Arc::new(s.to_string())),
                Err(_) => Value::Bytes(Arc::new(b.to_vec())),
            }
        }
        Data::Binary(b) | Data::Proto { value: b, .. } => Value::Bytes(Arc::new(b.to_vec())),
        Data::Text(s) => Value::String(Arc::new(s.clone())),
    }
}

fn json_to_cel(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(Arc::new(s)),
        serde_json::Value::Array(a) => {
            Value::List(Arc::new(a.into_iter().map(json_to_cel).collect()))
        }
        serde_json::Value::Object(o) => {
            let map: HashMap<Key, Value> = o
                .into_iter()
                .map(|(k, v)| (Key::String(Arc::new(k)), json_to_cel(v)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn a_missing_attribute_is_an_error_not_a_key() {
        let k = DedupeKey::compile("subject").unwrap();
        assert!(k.key(&event(&[], None)).is_err());
    }

    #[test]
    fn compile_errors_name_the_column() {
        let err = DedupeKey::compile("source + + id").unwrap_err();
        assert!(err.contains("column"), "{err}");
    }
}
