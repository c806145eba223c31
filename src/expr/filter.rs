//! Subscription filters and their evaluation: Knative-style exact `attributes`, the
//! CloudEvents Subscriptions API dialects (`exact`, `prefix`, `suffix`, `all`, `any`,
//! `not`, and `sql`: CESQL, see [`super::cesql`]), and CEL. All parts present must
//! match; no part at all matches everything.
//! Evaluation is pure: an event and its activation in, a decision (or, for `explain`,
//! each part's result) out.

use cel::{Context, Program, Value};

use super::cesql::{EvalError, Expression};
use super::cost::{self, Input};
use crate::event::{AttrValue, Event};

/// A Subscriptions API filter expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialect {
    /// Every named attribute equals its value (case-sensitive).
    Exact(Vec<(String, String)>),
    /// Every named attribute starts with its value.
    Prefix(Vec<(String, String)>),
    /// Every named attribute ends with its value.
    Suffix(Vec<(String, String)>),
    /// Every nested expression is true.
    All(Vec<Dialect>),
    /// At least one nested expression is true.
    Any(Vec<Dialect>),
    /// The nested expression is false.
    Not(Box<Dialect>),
    /// A CESQL expression is `true`; an evaluation error (or a non-Boolean value) makes
    /// the whole filter an error, which does not match.
    Sql(Expression),
}

/// How an attribute is compared with a filter value: as its canonical string (the
/// Subscriptions API compares attribute values as strings); a missing attribute never
/// matches, not even under `prefix: ""`-like values (which config forbids anyway).
fn attr_text<'e>(event: &'e Event, name: &str) -> Option<std::borrow::Cow<'e, str>> {
    match event.get(name)? {
        AttrValue::String(s)
        | AttrValue::Uri(s)
        | AttrValue::UriRef(s)
        | AttrValue::Timestamp(s) => Some(std::borrow::Cow::Borrowed(s)),
        other => Some(std::borrow::Cow::Owned(other.to_canonical_string())),
    }
}

impl Dialect {
    /// Whether the expression matches; an error is no match.
    pub fn matches(&self, event: &Event) -> bool {
        self.evaluate(event) == Ok(true)
    }

    /// The expression's value, or a `sql` evaluation error: `all` stops at its first
    /// `false` or error, `any` matches when a branch matches even if another failed
    /// (else the first error), and `not` never turns an error into a match.
    pub fn evaluate(&self, event: &Event) -> Result<bool, EvalError> {
        let each = |pairs: &[(String, String)], test: fn(&str, &str) -> bool| {
            pairs
                .iter()
                .all(|(name, want)| attr_text(event, name).is_some_and(|have| test(&have, want)))
        };
        Ok(match self {
            Dialect::Exact(p) => each(p, |have, want| have == want),
            Dialect::Prefix(p) => each(p, |have, want| have.starts_with(want)),
            Dialect::Suffix(p) => each(p, |have, want| have.ends_with(want)),
            Dialect::All(list) => {
                for d in list {
                    if !d.evaluate(event)? {
                        return Ok(false);
                    }
                }
                true
            }
            Dialect::Any(list) => {
                // A branch that fails does not stop another from matching.
                let mut failed = None;
                for d in list {
                    match d.evaluate(event) {
                        Ok(true) => return Ok(true),
                        Ok(false) => {}
                        Err(e) => {
                            failed.get_or_insert(e);
                        }
                    }
                }
                return failed.map_or(Ok(false), Err);
            }
            Dialect::Not(inner) => !inner.evaluate(event)?,
            Dialect::Sql(expr) => expr.matches(event)?,
        })
    }
}

/// A compiled CEL filter.
pub struct CelFilter {
    source: String,
    program: Program,
    variables: Vec<String>,
    /// Whether it has comprehensions: then each evaluation is held to the cost budget.
    loops: bool,
}

impl std::fmt::Debug for CelFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CelFilter").field(&self.source).finish()
    }
}

/// A CEL compile error: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CelCompileError {
    /// 1-based column in the expression.
    pub column: usize,
    pub message: String,
}

impl CelFilter {
    /// Compiles `source` and holds it to the limits of [`cost`].
    pub fn compile(source: &str) -> Result<CelFilter, CelCompileError> {
        let checked = cost::compile(source).map_err(|r| CelCompileError {
            column: r.column,
            message: r.message,
        })?;
        let variables = checked
            .program
            .references()
            .variables()
            .into_iter()
            .map(str::to_string)
            .collect();
        Ok(CelFilter {
            source: source.to_string(),
            program: checked.program,
            variables,
            loops: checked.loops,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The variables the expression reads.
    pub fn variables(&self) -> &[String] {
        &self.variables
    }

    /// Runs the expression: `Ok(true/false)` for a boolean result, `Err` for an
    /// evaluation error, a result that is not a boolean, or an evaluation that could
    /// pass the cost budget for this event (then it is not run).
    pub fn evaluate(&self, activation: &Context, input: &Input) -> Result<bool, String> {
        match self.value(activation, input)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!(
                "the result is {:?}, not a boolean",
                other.type_of()
            )),
        }
    }

    /// Runs the expression for its value, whatever its type (a sink transform's use),
    /// held to the same cost budget.
    pub fn value(&self, activation: &Context, input: &Input) -> Result<Value, String> {
        if self.loops {
            cost::within_budget(&self.program, input)?;
        }
        self.program.execute(activation).map_err(|e| e.to_string())
    }
}

/// A subscription's whole filter.
#[derive(Debug, Default)]
pub struct Filter {
    /// Exact matches on attributes (Knative Trigger style).
    pub attributes: Vec<(String, String)>,
    /// Subscriptions API expressions, ANDed.
    pub filters: Vec<Dialect>,
    pub cel: Option<CelFilter>,
}

/// The outcome of one filter part, for `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartResult {
    Match,
    NoMatch,
    Error(String),
}

/// The result of evaluating a filter on one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Match,
    NoMatch,
    /// The CEL part or a `sql` filter failed (error or non-boolean): no match, counted
    /// apart.
    Error,
}

impl Filter {
    /// Whether the filter has no parts (it matches everything).
    pub fn is_empty(&self) -> bool {
        self.attributes.is_empty() && self.filters.is_empty() && self.cel.is_none()
    }

    fn attributes_match(&self, event: &Event) -> bool {
        self.attributes
            .iter()
            .all(|(name, want)| attr_text(event, name).is_some_and(|have| have == *want))
    }

    /// Decides one event. Cheap parts run first; CEL only when they all matched.
    pub fn decide(&self, input: &Input, activation: &Context) -> Decision {
        let event = input.event;
        if !self.attributes_match(event) {
            return Decision::NoMatch;
        }
        for d in &self.filters {
            match d.evaluate(event) {
                Ok(true) => {}
                Ok(false) => return Decision::NoMatch,
                Err(_) => return Decision::Error,
            }
        }
        match self.cel.as_ref().map(|c| c.evaluate(activation, input)) {
            None | Some(Ok(true)) => Decision::Match,
            Some(Ok(false)) => Decision::NoMatch,
            Some(Err(_)) => Decision::Error,
        }
    }

    /// Every part's result, named as in the subscription file
    /// (`attributes`, `filters[0]`, `cel`).
    pub fn explain(&self, input: &Input, activation: &Context) -> Vec<(String, PartResult)> {
        let event = input.event;
        let bool_result = |b: bool| {
            if b {
                PartResult::Match
            } else {
                PartResult::NoMatch
            }
        };
        let mut parts = Vec::new();
        if !self.attributes.is_empty() {
            parts.push((
                "attributes".to_string(),
                bool_result(self.attributes_match(event)),
            ));
        }
        for (i, d) in self.filters.iter().enumerate() {
            let r = match d.evaluate(event) {
                Ok(b) => bool_result(b),
                Err(e) => PartResult::Error(format!("sql: {e}")),
            };
            parts.push((format!("filters[{i}]"), r));
        }
        if let Some(c) = &self.cel {
            let r = match c.evaluate(activation, input) {
                Ok(b) => bool_result(b),
                Err(e) => PartResult::Error(e),
            };
            parts.push(("cel".to_string(), r));
        }
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::activation::{activation, base, parse_data, Needs};

    fn event(extra: &[(&str, AttrValue)]) -> Event {
        let mut attrs = vec![
            ("specversion".to_string(), AttrValue::String("1.0".into())),
            ("id".to_string(), AttrValue::String("1".into())),
            (
                "source".to_string(),
                AttrValue::UriRef("/apis///namespaces/ci//build".into()),
            ),
            (
                "type".to_string(),
                AttrValue::String("dev.tekton.event.taskrun.failed.v1".into()),
            ),
        ];
        attrs.extend(extra.iter().map(|(n, v)| (n.to_string(), v.clone())));
        Event::new(attrs, None).unwrap()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn dialects_follow_the_subscriptions_api() {
        let e = event(&[
            ("subject", AttrValue::String("build".into())),
            ("attempt", AttrValue::Integer(3)),
            ("urgent", AttrValue::Boolean(true)),
        ]);
        let table: Vec<(Dialect, bool)> = vec![
            (
                Dialect::Exact(pairs(&[("type", "dev.tekton.event.taskrun.failed.v1")])),
                true,
            ),
            (
                Dialect::Exact(pairs(&[("type", "dev.tekton.event.taskrun.FAILED.v1")])),
                false,
            ),
            (
                Dialect::Exact(pairs(&[
                    ("type", "dev.tekton.event.taskrun.failed.v1"),
                    ("subject", "build"),
                ])),
                true,
            ),
            (
                Dialect::Exact(pairs(&[
                    ("type", "dev.tekton.event.taskrun.failed.v1"),
                    ("subject", "other"),
                ])),
                false,
            ),
            // A missing attribute never matches, in any dialect.
            (Dialect::Exact(pairs(&[("dataschema", "x")])), false),
            (Dialect::Prefix(pairs(&[("missing", "a")])), false),
            (Dialect::Suffix(pairs(&[("missing", "a")])), false),
            (
                Dialect::Not(Box::new(Dialect::Exact(pairs(&[("missing", "a")])))),
                true,
            ),
            (Dialect::Prefix(pairs(&[("source", "/apis/")])), true),
            (Dialect::Prefix(pairs(&[("source", "/APIS/")])), false),
            (Dialect::Suffix(pairs(&[("type", ".failed.v1")])), true),
            // Extensions compare as their canonical strings.
            (Dialect::Exact(pairs(&[("attempt", "3")])), true),
            (Dialect::Exact(pairs(&[("urgent", "true")])), true),
            (Dialect::Prefix(pairs(&[("attempt", "3")])), true),
            (
                Dialect::All(vec![
                    Dialect::Prefix(pairs(&[("type", "dev.tekton.")])),
                    Dialect::Suffix(pairs(&[("type", ".v1")])),
                ]),
                true,
            ),
            (
                Dialect::All(vec![
                    Dialect::Prefix(pairs(&[("type", "dev.tekton.")])),
                    Dialect::Suffix(pairs(&[("type", ".v2")])),
                ]),
                false,
            ),
            (
                Dialect::Any(vec![
                    Dialect::Exact(pairs(&[("type", "x")])),
                    Dialect::Suffix(pairs(&[("type", ".v1")])),
                ]),
                true,
            ),
            (
                Dialect::Any(vec![
                    Dialect::Exact(pairs(&[("type", "x")])),
                    Dialect::Exact(pairs(&[("type", "y")])),
                ]),
                false,
            ),
            (
                Dialect::Not(Box::new(Dialect::Prefix(pairs(&[("type", "dev.tekton.")])))),
                false,
            ),
            (
                Dialect::Not(Box::new(Dialect::Not(Box::new(Dialect::Prefix(pairs(&[
                    ("type", "dev.tekton."),
                ])))))),
                true,
            ),
        ];
        for (i, (d, want)) in table.iter().enumerate() {
            assert_eq!(d.matches(&e), *want, "row {i}: {d:?}");
        }
    }

    #[test]
    fn sql_errors_never_match_but_another_any_branch_can() {
        let sql = |s: &str| Dialect::Sql(Expression::compile(s).unwrap());
        let e = event(&[]);
        let failing = || sql("subject = 'x'");
        let table: Vec<(Dialect, Result<bool, ()>)> = vec![
            (sql("type LIKE 'dev.tekton.%'"), Ok(true)),
            (failing(), Err(())),
            (Dialect::Not(Box::new(failing())), Err(())),
            (Dialect::Any(vec![failing(), sql("TRUE")]), Ok(true)),
            (Dialect::Any(vec![failing(), sql("FALSE")]), Err(())),
            (Dialect::All(vec![sql("FALSE"), failing()]), Ok(false)),
            (Dialect::All(vec![failing(), sql("FALSE")]), Err(())),
        ];
        for (d, want) in table {
            assert_eq!(d.evaluate(&e).map_err(|_| ()), want, "{d:?}");
        }
        let filter = Filter {
            filters: vec![failing()],
            ..Filter::default()
        };
        assert_eq!(decide(&filter, &e), Decision::Error);
    }

    fn decide(filter: &Filter, e: &Event) -> Decision {
        let mut needs = Needs::default();
        if let Some(c) = &filter.cel {
            needs.add(c.variables());
        }
        let data = parse_data(e);
        let base = base();
        let act = activation(&base, e, data.as_ref(), &needs);
        filter.decide(&Input::new(e, data.as_ref()), &act)
    }

    #[test]
    fn cel_sees_attributes_typed_and_errors_do_not_match() {
        let e = event(&[
            ("time", AttrValue::Timestamp("2024-01-02T03:04:05Z".into())),
            ("attempt", AttrValue::Integer(3)),
        ]);
        let f = |src: &str| Filter {
            cel: Some(CelFilter::compile(src).unwrap()),
            ..Filter::default()
        };
        assert_eq!(
            decide(&f("type.endsWith('.failed.v1')"), &e),
            Decision::Match
        );
        assert_eq!(decide(&f("attempt > 2"), &e), Decision::Match);
        assert_eq!(
            decide(&f("time > timestamp('2024-01-01T00:00:00Z')"), &e),
            Decision::Match
        );
        assert_eq!(decide(&f("has(attributes.subject)"), &e), Decision::NoMatch);
        assert_eq!(decide(&f("'attempt' in attributes"), &e), Decision::Match);
        assert_eq!(decide(&f("subject == 'x'"), &e), Decision::Error);
        assert_eq!(decide(&f("type"), &e), Decision::Error);
        assert_eq!(decide(&Filter::default(), &e), Decision::Match);
        // `matches`, as a method and as a function, with a pattern compiled once.
        assert_eq!(
            decide(&f("type.matches('^dev[.]tekton[.].*failed')"), &e),
            Decision::Match
        );
        assert_eq!(
            decide(&f("matches(source, '^/apis/+namespaces/ci/')"), &e),
            Decision::Match
        );
        assert_eq!(decide(&f("type.matches('^x')"), &e), Decision::NoMatch);
        // A literal pattern is checked when it compiles; one built per event, when it runs.
        assert!(CelFilter::compile("type.matches('(unclosed')").is_err());
        assert_eq!(decide(&f("type.matches(type + '(')"), &e), Decision::Error);
    }

    #[test]
    fn all_parts_must_match() {
        let e = event(&[]);
        let f = Filter {
            attributes: pairs(&[("type", "dev.tekton.event.taskrun.failed.v1")]),
            filters: vec![Dialect::Prefix(pairs(&[("source", "/apis/")]))],
            cel: Some(CelFilter::compile("id == '2'").unwrap()),
        };
        assert_eq!(decide(&f, &e), Decision::NoMatch);
        let mut needs = Needs::default();
        needs.add(f.cel.as_ref().unwrap().variables());
        let base = base();
        let act = activation(&base, &e, None, &needs);
        assert_eq!(
            f.explain(&Input::new(&e, None), &act),
            vec![
                ("attributes".into(), PartResult::Match),
                ("filters[0]".into(), PartResult::Match),
                ("cel".into(), PartResult::NoMatch)
            ]
        );
    }

    #[test]
    fn compile_errors_carry_the_column() {
        let err = CelFilter::compile("type == 'a' &&").unwrap_err();
        assert!(err.column > 1, "{err:?}");
    }
}
