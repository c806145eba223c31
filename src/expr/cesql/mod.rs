//! CloudEvents SQL (CESQL v1.0.0), the `sql` dialect of the Subscriptions API: a
//! hand-written lexer and parser for the grammar in `CESQLParser.g4`/`CESQLLexer.g4`
//! (copied under `tests/fixtures/cesql/`), and an evaluator over [`Event`].
//!
//! An expression is compiled once (parsed to an AST, functions resolved by name and
//! arity, `LIKE` patterns pre-split) and evaluated per event without building any
//! context. Evaluation is total, as the spec requires: an error never stops it; the
//! failing operator yields its type's zero value and the first error is reported beside
//! the value (the spec's "complete evaluation mode").

mod eval;
mod functions;
mod lexer;
mod parser;

use std::borrow::Cow;
use std::sync::Arc;

use crate::event::Event;

pub use functions::Function;

/// The spec's error kinds (CESQL v1.0.0 §3.3, and the TCK's `error` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Parse,
    Math,
    Cast,
    MissingAttribute,
    MissingFunction,
    FunctionEvaluation,
    Generic,
}

impl ErrorKind {
    /// The TCK's name of the kind (`missingAttribute`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Parse => "parse",
            ErrorKind::Math => "math",
            ErrorKind::Cast => "cast",
            ErrorKind::MissingAttribute => "missingAttribute",
            ErrorKind::MissingFunction => "missingFunction",
            ErrorKind::FunctionEvaluation => "functionEvaluation",
            ErrorKind::Generic => "generic",
        }
    }
}

/// Why an expression does not compile: a syntax error, or a call of a function that
/// does not exist with that arity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct CompileError {
    /// [`ErrorKind::Parse`] or [`ErrorKind::MissingFunction`].
    pub kind: ErrorKind,
    /// 1-based character offset in the expression (its length + 1 at the end).
    pub column: usize,
    pub message: String,
}

/// An error raised while evaluating; the evaluation still has a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", .kind.as_str(), .detail)]
pub struct EvalError {
    pub kind: ErrorKind,
    pub detail: Detail,
}

/// What an [`EvalError`] says, kept allocation-free on the per-event path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detail {
    Message(&'static str),
    /// The attribute that the event does not have.
    Attribute(Arc<str>),
}

impl std::fmt::Display for Detail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Detail::Message(m) => f.write_str(m),
            Detail::Attribute(a) => write!(f, "the event has no attribute {a:?}"),
        }
    }
}

/// A CESQL value: the spec's three primitive types. Strings borrow from the event or
/// the expression where they can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Bool(bool),
    Int(i32),
    Str(Cow<'a, str>),
}

impl Value<'_> {
    /// The spec's name of the value's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Bool(_) => "Boolean",
            Value::Int(_) => "Integer",
            Value::Str(_) => "String",
        }
    }
}

impl std::fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// The result of evaluating an expression on one event: always a value, and the first
/// error raised on the way, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation<'a> {
    pub value: Value<'a>,
    pub error: Option<EvalError>,
}

/// A compiled CESQL expression.
#[derive(Debug, Clone)]
pub struct Expression {
    root: parser::Node,
    source: Arc<str>,
}

/// Two expressions are the same when they are written the same.
impl PartialEq for Expression {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Expression {}

impl Expression {
    /// Parses and resolves an expression.
    pub fn compile(source: &str) -> Result<Self, CompileError> {
        let root = parser::parse(source)?;
        Ok(Expression {
            root,
            source: source.into(),
        })
    }

    /// The expression's text, as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the expression on an event.
    pub fn evaluate<'a>(&'a self, event: &'a Event) -> Evaluation<'a> {
        let mut errors = eval::Errors::default();
        let value = eval::eval_top(&self.root, event, &mut errors);
        Evaluation {
            value,
            error: errors.first,
        }
    }

    /// Whether the expression matches the event, as a filter uses it: `true` only for a
    /// Boolean `true` with no error. A non-Boolean result is an error (the Subscriptions
    /// API requires a Boolean expression).
    pub fn matches(&self, event: &Event) -> Result<bool, EvalError> {
        let evaluation = self.evaluate(event);
        if let Some(e) = evaluation.error {
            return Err(e);
        }
        match evaluation.value {
            Value::Bool(b) => Ok(b),
            _ => Err(EvalError {
                kind: ErrorKind::Generic,
                detail: Detail::Message("the expression's value is not a Boolean"),
            }),
        }
    }
}
