//! The dedupe key: a CEL expression over an event's attributes (and `data` when it
//! uses it), compiled once at config load and evaluated once per event at ingress.
//! The log's writer owns the index; this module only computes keys.

use cel::{Program, Value};

use crate::event::Event;
use crate::router::activation::{self, Needs};

/// A compiled dedupe key expression.
pub struct DedupeKey {
    source: String,
    program: Program,
    /// The variables the expression reads; only these are bound per event.
    needs: Needs,
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
        let program = activation::env().compile(source).map_err(|e| {
            e.errors
                .iter()
                .map(|e| format!("column {}: {}", e.pos.1 + 1, e.msg))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let variables: Vec<String> = program
            .references()
            .variables()
            .into_iter()
            .map(str::to_string)
            .collect();
        let mut needs = Needs::default();
        needs.add(&variables);
        Ok(DedupeKey {
            source: source.to_string(),
            program,
            needs,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The key of `event`, as bytes. An error (an attribute the expression needs is
    /// absent, or the result is not a scalar) means the event cannot be deduplicated.
    pub fn key(&self, event: &Event) -> Result<Vec<u8>, String> {
        let data = if self.needs.data {
            activation::parse_data(event)
        } else {
            None
        };
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
