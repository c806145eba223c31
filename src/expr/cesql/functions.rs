//! The built-in functions (CESQL v1.0.0 §3.5, and the casting functions the TCK's
//! `casting_functions.yaml` exercises), resolved by name and arity when an expression
//! compiles. Names are case-insensitive (`spec_examples.yaml` calls `int(hop)`).

use std::borrow::Cow;

use super::eval::{cast_bool, cast_int, fail, to_str, Errors};
use super::{CompileError, ErrorKind, Value};

/// A resolved built-in function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Length,
    Concat,
    ConcatWs,
    Lower,
    Upper,
    Trim,
    Left,
    Right,
    Substring,
    Abs,
    Int,
    Bool,
    String,
    IsBool,
    IsInt,
    IsString,
}

/// Finds the function with that name and arity.
pub(super) fn resolve(name: &str, arity: usize, column: usize) -> Result<Function, CompileError> {
    use Function::*;
    let (f, ok) = match name.to_ascii_uppercase().as_str() {
        "LENGTH" => (Length, arity == 1),
        "CONCAT" => (Concat, true),
        "CONCAT_WS" => (ConcatWs, arity >= 1),
        "LOWER" => (Lower, arity == 1),
        "UPPER" => (Upper, arity == 1),
        "TRIM" => (Trim, arity == 1),
        "LEFT" => (Left, arity == 2),
        "RIGHT" => (Right, arity == 2),
        "SUBSTRING" => (Substring, arity == 2 || arity == 3),
        "ABS" => (Abs, arity == 1),
        "INT" => (Int, arity == 1),
        "BOOL" => (Bool, arity == 1),
        "STRING" => (String, arity == 1),
        "IS_BOOL" => (IsBool, arity == 1),
        "IS_INT" => (IsInt, arity == 1),
        "IS_STRING" => (IsString, arity == 1),
        _ => {
            return Err(CompileError {
                kind: ErrorKind::MissingFunction,
                column,
                message: format!("no function {name}"),
            })
        }
    };
    if !ok {
        return Err(CompileError {
            kind: ErrorKind::MissingFunction,
            column,
            message: format!("no function {name} with {arity} argument(s)"),
        });
    }
    Ok(f)
}

impl Function {
    /// The zero value of the function's return type, its result when an argument
    /// refers to a missing attribute.
    pub(super) fn zero(self) -> Value<'static> {
        use Function::*;
        match self {
            Length | Abs | Int => Value::Int(0),
            Bool | IsBool | IsInt | IsString => Value::Bool(false),
            _ => Value::Str(Cow::Borrowed("")),
        }
    }

    /// Applies the function to evaluated arguments (their count checked by `resolve`).
    pub(super) fn call<'a>(self, mut args: Vec<Value<'a>>, err: &mut Errors) -> Value<'a> {
        use Function::*;
        let eval_error = |err: &mut Errors, m| fail(err, ErrorKind::FunctionEvaluation, m);
        match self {
            Length => Value::Int(
                i32::try_from(to_str(take(&mut args, 0)).chars().count()).unwrap_or(i32::MAX),
            ),
            Concat => {
                let mut out = std::string::String::new();
                for a in args {
                    out.push_str(&to_str(a));
                }
                Value::Str(Cow::Owned(out))
            }
            ConcatWs => {
                let mut it = args.into_iter();
                let sep = to_str(it.next().unwrap_or(Value::Bool(false)));
                let mut out = std::string::String::new();
                for (i, a) in it.enumerate() {
                    if i > 0 {
                        out.push_str(&sep);
                    }
                    out.push_str(&to_str(a));
                }
                Value::Str(Cow::Owned(out))
            }
            Lower => Value::Str(Cow::Owned(to_str(take(&mut args, 0)).to_lowercase())),
            Upper => Value::Str(Cow::Owned(to_str(take(&mut args, 0)).to_uppercase())),
            Trim => Value::Str(match to_str(take(&mut args, 0)) {
                Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
                Cow::Owned(s) => Cow::Owned(s.trim().to_string()),
            }),
            Left | Right => {
                let n = cast_int(take(&mut args, 1), err);
                let s = to_str(take(&mut args, 0));
                if n < 0 {
                    eval_error(err, "LEFT and RIGHT need a length of 0 or more");
                    return Value::Str(s);
                }
                let count = s.chars().count();
                let n = n as usize;
                if count <= n {
                    return Value::Str(s);
                }
                let out: std::string::String = if self == Left {
                    s.chars().take(n).collect()
                } else {
                    s.chars().skip(count - n).collect()
                };
                Value::Str(Cow::Owned(out))
            }
            Substring => {
                let len = if args.len() == 3 {
                    Some(cast_int(take(&mut args, 2), err))
                } else {
                    None
                };
                let pos = cast_int(take(&mut args, 1), err);
                let s = to_str(take(&mut args, 0));
                let count = i64::try_from(s.chars().count()).unwrap_or(i64::MAX);
                let pos = i64::from(pos);
                if pos > count || pos < -count {
                    eval_error(err, "SUBSTRING's position is outside the string");
                    return Value::Str(Cow::Borrowed(""));
                }
                if len.is_some_and(|l| l < 0) {
                    eval_error(err, "SUBSTRING's length is negative");
                    return Value::Str(Cow::Borrowed(""));
                }
                if pos == 0 {
                    return Value::Str(Cow::Borrowed(""));
                }
                let start = if pos > 0 { pos - 1 } else { count + pos } as usize;
                let take_n = len.map_or(usize::MAX, |l| l as usize);
                Value::Str(Cow::Owned(s.chars().skip(start).take(take_n).collect()))
            }
            Abs => {
                let x = cast_int(take(&mut args, 0), err);
                match x.checked_abs() {
                    Some(a) => Value::Int(a),
                    None => {
                        fail(err, ErrorKind::Math, "ABS(-2147483648) overflows");
                        Value::Int(i32::MAX)
                    }
                }
            }
            Int => Value::Int(cast_int(take(&mut args, 0), err)),
            Bool => match take(&mut args, 0) {
                Value::Int(i) => Value::Bool(i != 0),
                v => Value::Bool(cast_bool(v, err)),
            },
            String => Value::Str(to_str(take(&mut args, 0))),
            IsBool => Value::Bool(match take(&mut args, 0) {
                Value::Bool(_) => true,
                Value::Int(_) => false,
                Value::Str(s) => s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false"),
            }),
            IsInt => Value::Bool(match take(&mut args, 0) {
                Value::Int(_) => true,
                Value::Bool(_) => false,
                Value::Str(s) => s.parse::<i32>().is_ok(),
            }),
            IsString => Value::Bool(matches!(take(&mut args, 0), Value::Str(_))),
        }
    }
}

fn take<'a>(args: &mut [Value<'a>], i: usize) -> Value<'a> {
    std::mem::replace(&mut args[i], Value::Bool(false))
}
