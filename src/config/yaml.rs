//! YAML documents as a tree of nodes that remember where they were written, so that
//! validation can name the file, line and key of every error.
//!
//! Parsing is `saphyr` (the maintained successor of yaml-rust, YAML 1.2, pure Rust): its
//! marked tree gives every node a line, which a serde derive cannot report for more than
//! the first error.

use std::sync::Arc;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

/// A YAML node.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// 1-based line in the file (0 for values from the environment).
    pub line: usize,
    /// The environment variable this value came from, when it did.
    pub env: Option<Arc<str>>,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order; each key with its own line.
    Map(Vec<(String, usize, Node)>),
}

impl Node {
    pub fn new(line: usize, value: Value) -> Self {
        Node {
            line,
            env: None,
            value,
        }
    }

    /// How the node's type is called in messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The text of a scalar, as written (numbers and booleans too).
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// A YAML syntax error: line and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// Parses every document in `src`.
pub fn parse(src: &str) -> Result<Vec<Node>, SyntaxError> {
    let docs = MarkedYaml::load_from_str(src).map_err(|e| SyntaxError {
        line: e.marker().line(),
        message: e.info().to_string(),
    })?;
    docs.iter().map(convert).collect()
}

fn convert(node: &MarkedYaml) -> Result<Node, SyntaxError> {
    let line = node.span.start.line();
    let value = match &node.data {
        YamlData::Value(s) => scalar(s),
        YamlData::Representation(text, _, _) => Value::Str(text.to_string()),
        YamlData::Sequence(items) => {
            Value::Seq(items.iter().map(convert).collect::<Result<_, _>>()?)
        }
        YamlData::Mapping(map) => {
            let mut entries = Vec::with_capacity(map.len());
            for (k, v) in map {
                let key = match &k.data {
                    YamlData::Value(s) => match scalar(s) {
                        Value::Str(s) => s,
                        other => Node::new(0, other).scalar_text().unwrap_or_default(),
                    },
                    _ => {
                        return Err(SyntaxError {
                            line: k.span.start.line(),
                            message: "mapping keys must be plain strings".into(),
                        })
                    }
                };
                entries.push((key, k.span.start.line(), convert(v)?));
            }
            Value::Map(entries)
        }
        YamlData::Tagged(_, inner) => return convert(inner),
        YamlData::Alias(_) => {
            return Err(SyntaxError {
                line,
                message: "YAML aliases are not supported".into(),
            })
        }
        YamlData::BadValue => {
            return Err(SyntaxError {
                line,
                message: "a value does not match its tag".into(),
            })
        }
    };
    Ok(Node::new(line, value))
}

fn scalar(s: &Scalar) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Int(*i),
        Scalar::FloatingPoint(f) => Value::Float(f.into_inner()),
        Scalar::String(s) => Value::Str(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_remember_their_lines() {
        let docs = parse("a: 1\nb:\n  c: [x, 2]\n").unwrap();
        let Value::Map(entries) = &docs[0].value else {
            panic!()
        };
        assert_eq!(entries[0].0, "a");
        assert_eq!(entries[0].1, 1);
        assert_eq!(entries[1].1, 2);
        let Value::Map(inner) = &entries[1].2.value else {
            panic!()
        };
        assert_eq!(inner[0].1, 3);
    }

    #[test]
    fn duplicate_keys_are_syntax_errors() {
        assert!(parse("a: 1\na: 2\n").is_err());
    }
}
