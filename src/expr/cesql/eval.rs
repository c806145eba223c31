//! Evaluation: implicit casts (CESQL v1.0.0 §3.7), operators, and the rule that an
//! operation on a missing attribute yields its type's zero value (§3.2).

use std::borrow::Cow;

use super::parser::{BinOp, Node, Pattern, PatternPart};
use super::{Detail, ErrorKind, EvalError, Value};
use crate::event::{AttrValue, Event, REQUIRED};

/// The errors of one evaluation: the first is reported; the count tells an operator
/// whether its operands raised any (then it yields its zero value, as the TCK's
/// `true AND (1 != 1 / 0)` being `false` shows).
#[derive(Debug, Default)]
pub(super) struct Errors {
    pub first: Option<EvalError>,
    pub count: u32,
}

impl Errors {
    fn record(&mut self, kind: ErrorKind, detail: Detail) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(EvalError { kind, detail });
        }
    }
}

/// Records an error.
pub(super) fn fail(err: &mut Errors, kind: ErrorKind, message: &'static str) {
    err.record(kind, Detail::Message(message));
}

/// Casts to Integer (as `INT`): Booleans are 1 and 0, strings must be decimal.
pub(super) fn cast_int(v: Value<'_>, err: &mut Errors) -> i32 {
    match v {
        Value::Int(i) => i,
        Value::Bool(b) => i32::from(b),
        Value::Str(s) => s.parse().unwrap_or_else(|_| {
            fail(err, ErrorKind::Cast, "the string is not an Integer");
            0
        }),
    }
}

/// The implicit cast to Boolean: strings `true`/`false` in any case; an Integer does
/// not cast (`NOT 10` is a cast error in `not_operator.yaml`).
pub(super) fn cast_bool(v: Value<'_>, err: &mut Errors) -> bool {
    match v {
        Value::Bool(b) => b,
        Value::Str(s) if s.eq_ignore_ascii_case("true") => true,
        Value::Str(s) if s.eq_ignore_ascii_case("false") => false,
        Value::Str(_) => {
            fail(err, ErrorKind::Cast, "the string is not a Boolean");
            false
        }
        Value::Int(_) => {
            fail(err, ErrorKind::Cast, "an Integer is not a Boolean");
            false
        }
    }
}

/// Casts to String (as `STRING`); never fails.
pub(super) fn to_str(v: Value<'_>) -> Cow<'_, str> {
    match v {
        Value::Str(s) => s,
        Value::Bool(b) => Cow::Borrowed(if b { "true" } else { "false" }),
        Value::Int(i) => Cow::Owned(i.to_string()),
    }
}

/// Casts `v` to the type of `like`, for `=` and `IN` (§3.7: the ambiguous operator is
/// chosen by its right operand's type).
fn cast_like<'a>(v: Value<'a>, like: &Value<'_>, err: &mut Errors) -> Value<'a> {
    match like {
        Value::Bool(_) => Value::Bool(cast_bool(v, err)),
        Value::Int(_) => Value::Int(cast_int(v, err)),
        Value::Str(_) => Value::Str(to_str(v)),
    }
}

/// Evaluates the root: a missing attribute alone is `false`.
pub(super) fn eval_top<'a>(node: &'a Node, event: &'a Event, err: &mut Errors) -> Value<'a> {
    eval(node, event, err).unwrap_or(Value::Bool(false))
}

/// `None` when the node is an attribute the event lacks (the error is recorded); every
/// operator turns that into its own zero value.
fn eval<'a>(node: &'a Node, event: &'a Event, err: &mut Errors) -> Option<Value<'a>> {
    macro_rules! operand {
        ($n:expr, $zero:expr) => {{
            let before = err.count;
            match eval($n, event, err) {
                Some(v) if err.count == before => v,
                _ => return Some($zero),
            }
        }};
    }
    let v = match node {
        Node::Bool(b) => Value::Bool(*b),
        Node::Int(i) => Value::Int(*i),
        Node::Str(s) => Value::Str(Cow::Borrowed(s)),
        Node::Attr(name) => match event.get(name) {
            Some(a) => attr_value(a),
            None => {
                err.record(ErrorKind::MissingAttribute, Detail::Attribute(name.clone()));
                return None;
            }
        },
        Node::Exists(name) => Value::Bool(REQUIRED.contains(&&**name) || event.get(name).is_some()),
        Node::Not(x) => {
            let v = operand!(x, Value::Bool(false));
            Value::Bool(!cast_bool(v, err))
        }
        Node::Neg(x) => {
            let v = operand!(x, Value::Int(0));
            let i = cast_int(v, err);
            Value::Int(i.checked_neg().unwrap_or_else(|| {
                fail(err, ErrorKind::Math, "the negation overflows");
                0
            }))
        }
        Node::Binary(op @ (BinOp::And | BinOp::Or | BinOp::Xor), l, r) => {
            let lv = operand!(l, Value::Bool(false));
            let lb = cast_bool(lv, err);
            match (op, lb) {
                (BinOp::And, false) => return Some(Value::Bool(false)),
                (BinOp::Or, true) => return Some(Value::Bool(true)),
                _ => {}
            }
            let rv = operand!(r, Value::Bool(false));
            let rb = cast_bool(rv, err);
            Value::Bool(match op {
                BinOp::Xor => lb ^ rb,
                _ => rb,
            })
        }
        Node::Binary(op @ (BinOp::Eq | BinOp::Ne), l, r) => {
            let lv = operand!(l, Value::Bool(false));
            let rv = operand!(r, Value::Bool(false));
            let before = err.count;
            let lv = cast_like(lv, &rv, err);
            if err.count != before {
                return Some(Value::Bool(false));
            }
            Value::Bool((lv == rv) == (*op == BinOp::Eq))
        }
        Node::Binary(op @ (BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge), l, r) => {
            let lv = operand!(l, Value::Bool(false));
            let rv = operand!(r, Value::Bool(false));
            let (a, b) = (cast_int(lv, err), cast_int(rv, err));
            Value::Bool(match op {
                BinOp::Lt => a < b,
                BinOp::Le => a <= b,
                BinOp::Gt => a > b,
                _ => a >= b,
            })
        }
        Node::Binary(op, l, r) => {
            let lv = operand!(l, Value::Int(0));
            let rv = operand!(r, Value::Int(0));
            let (a, b) = (cast_int(lv, err), cast_int(rv, err));
            let result = match op {
                BinOp::Add => a.checked_add(b),
                BinOp::Sub => a.checked_sub(b),
                BinOp::Mul => a.checked_mul(b),
                BinOp::Div | BinOp::Mod if b == 0 => {
                    fail(err, ErrorKind::Math, "division by zero");
                    return Some(Value::Int(0));
                }
                // Rust's `/` and `%` truncate, as the spec requires.
                BinOp::Div => a.checked_div(b),
                _ => a.checked_rem(b),
            };
            Value::Int(result.unwrap_or_else(|| {
                fail(err, ErrorKind::Math, "the integer operation overflows");
                0
            }))
        }
        Node::Like {
            operand,
            pattern,
            negated,
        } => {
            let v = operand!(operand, Value::Bool(false));
            Value::Bool(like(pattern, &to_str(v)) != *negated)
        }
        Node::In {
            operand,
            set,
            negated,
        } => {
            let lv = operand!(operand, Value::Bool(false));
            let mut found = false;
            for item in set {
                let iv = operand!(item, Value::Bool(false));
                let before = err.count;
                let iv = cast_like(iv, &lv, err);
                if err.count == before && iv == lv {
                    found = true;
                    break;
                }
            }
            Value::Bool(found != *negated)
        }
        Node::Call(f, args) => {
            let mut values = Vec::with_capacity(args.len());
            for a in args {
                values.push(operand!(a, f.zero()));
            }
            f.call(values, err)
        }
    };
    Some(v)
}

/// An attribute as a CESQL value: Boolean and Integer extensions keep their type;
/// URIs and timestamps are strings (§3.1), as are base64 binaries.
fn attr_value(a: &AttrValue) -> Value<'_> {
    match a {
        AttrValue::Boolean(b) => Value::Bool(*b),
        AttrValue::Integer(i) => Value::Int(*i),
        AttrValue::Binary(_) => Value::Str(Cow::Owned(a.to_canonical_string())),
        AttrValue::String(s)
        | AttrValue::Uri(s)
        | AttrValue::UriRef(s)
        | AttrValue::Timestamp(s) => Value::Str(Cow::Borrowed(s)),
    }
}

/// Whether `text` matches a `LIKE` pattern.
pub(super) fn like(pattern: &Pattern, text: &str) -> bool {
    match pattern {
        Pattern::Exact(s) => text == &**s,
        Pattern::Prefix(s) => text.starts_with(&**s),
        Pattern::Suffix(s) => text.ends_with(&**s),
        Pattern::General(parts) => like_general(parts, text),
    }
}

/// Wildcard matching with one backtrack point (the last `%`), linear in practice and
/// quadratic at worst; positions are byte offsets on character boundaries.
fn like_general(parts: &[PatternPart], text: &str) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if let Some(part) = parts.get(p) {
            let next = text[t..].chars().next();
            match (part, next) {
                (PatternPart::Any, _) => {
                    star = Some((p + 1, t));
                    p += 1;
                    continue;
                }
                (PatternPart::One, Some(c)) => {
                    p += 1;
                    t += c.len_utf8();
                    continue;
                }
                (PatternPart::Char(want), Some(c)) if *want == c => {
                    p += 1;
                    t += c.len_utf8();
                    continue;
                }
                _ => {}
            }
        } else if t == text.len() {
            return true;
        }
        let Some((sp, st)) = star else {
            return false;
        };
        let Some(c) = text[st..].chars().next() else {
            return false;
        };
        star = Some((sp, st + c.len_utf8()));
        p = sp;
        t = st + c.len_utf8();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_backtracks_over_percent() {
        let p = Pattern::compile("a%b%c");
        assert!(like(&p, "azzzbzzzc"));
        assert!(!like(&p, "azzzbzzz"));
        assert!(like(&Pattern::compile("_é_"), "xéy"));
        assert!(!like(&Pattern::compile("._._."), "abcd."));
    }
}
