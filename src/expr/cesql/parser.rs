//! The parser of `CESQLParser.g4`, by precedence climbing. The grammar's alternatives
//! give the precedence, tightest first: `NOT x` and `-x` (whose operand is itself only
//! a prefix operation or an atom), `LIKE`, `IN`, `* / %`, `+ -`, comparisons, and
//! `AND`/`OR`/`XOR` on one right-associative level.

use std::sync::Arc;

use super::functions::{self, Function};
use super::lexer::{parse_error, tokenize, Tok, Token};
use super::CompileError;

/// An expression node.
#[derive(Debug, Clone)]
pub(super) enum Node {
    Bool(bool),
    Int(i32),
    Str(Box<str>),
    /// An attribute, its name lowercased (CloudEvents names are lowercase).
    Attr(Arc<str>),
    Exists(Box<str>),
    Not(Box<Node>),
    Neg(Box<Node>),
    Binary(BinOp, Box<Node>, Box<Node>),
    Like {
        operand: Box<Node>,
        pattern: Pattern,
        negated: bool,
    },
    In {
        operand: Box<Node>,
        set: Vec<Node>,
        negated: bool,
    },
    Call(Function, Vec<Node>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BinOp {
    And,
    Or,
    Xor,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

/// A `LIKE` pattern, split when the expression compiles. The common shapes (`abc`,
/// `abc%`, `%abc`) are plain string tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Pattern {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    General(Vec<PatternPart>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PatternPart {
    /// `%`: any run of characters.
    Any,
    /// `_`: one character.
    One,
    Char(char),
}

impl Pattern {
    /// Splits a pattern: `%` and `_` are wildcards, `\%` and `\_` match themselves, and
    /// a backslash before anything else is a backslash.
    pub(super) fn compile(text: &str) -> Pattern {
        let mut parts = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '%' => parts.push(PatternPart::Any),
                '_' => parts.push(PatternPart::One),
                '\\' if matches!(chars.peek(), Some('%' | '_')) => {
                    parts.push(PatternPart::Char(chars.next().unwrap_or('\\')));
                }
                c => parts.push(PatternPart::Char(c)),
            }
        }
        let literal = |ps: &[PatternPart]| -> Option<Box<str>> {
            ps.iter()
                .map(|p| match p {
                    PatternPart::Char(c) => Some(*c),
                    _ => None,
                })
                .collect::<Option<String>>()
                .map(String::into_boxed_str)
        };
        if let Some(s) = literal(&parts) {
            return Pattern::Exact(s);
        }
        if let Some((PatternPart::Any, rest)) = parts.split_last() {
            if let Some(s) = literal(rest) {
                return Pattern::Prefix(s);
            }
        }
        if let Some((PatternPart::Any, rest)) = parts.split_first() {
            if let Some(s) = literal(rest) {
                return Pattern::Suffix(s);
            }
        }
        Pattern::General(parts)
    }
}

/// The longest expression accepted, as for CEL filters (docs/reliability.md, "Limits
/// that keep one input from stopping the rest").
const MAX_SOURCE_BYTES: usize = 16 * 1024;

/// How deep the parser (and so the evaluator) may recurse: enough for a chain of a
/// couple of hundred `AND`s, which nests one level per operator, and far below what
/// overflows a 2 MiB thread stack in a debug build.
const MAX_DEPTH: usize = 256;

/// Parses a whole expression.
pub(super) fn parse(src: &str) -> Result<Node, CompileError> {
    if src.len() > MAX_SOURCE_BYTES {
        return Err(parse_error(
            1,
            format!("the expression is longer than {MAX_SOURCE_BYTES} bytes"),
        ));
    }
    let tokens = tokenize(src)?;
    let mut p = Parser {
        tokens,
        at: 0,
        depth: 0,
    };
    let node = p.expr(LOGIC)?;
    let t = p.peek();
    if t.tok != Tok::Eof {
        return Err(unexpected(t));
    }
    Ok(node)
}

const LOGIC: u8 = 1;
const COMPARE: u8 = 2;
const ADD: u8 = 3;
const MUL: u8 = 4;
const IN: u8 = 5;
const LIKE: u8 = 6;

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
}

fn unexpected(t: &Token) -> CompileError {
    let what = match &t.tok {
        Tok::Eof => "unexpected end of expression".to_string(),
        Tok::Str(s) => format!("unexpected string {s:?}"),
        Tok::Int(s) | Tok::Ident(s) | Tok::FnName(s) => format!("unexpected {s:?}"),
        other => format!("unexpected {other:?}"),
    };
    parse_error(t.column, what)
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.at]
    }

    fn peek2(&self) -> &Tok {
        self.tokens.get(self.at + 1).map_or(&Tok::Eof, |t| &t.tok)
    }

    fn next(&mut self) -> Token {
        let t = self.tokens[self.at].clone();
        if t.tok != Tok::Eof {
            self.at += 1;
        }
        t
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<Token, CompileError> {
        let t = self.next();
        if t.tok == tok {
            Ok(t)
        } else {
            let mut e = unexpected(&t);
            e.message = format!("{}, expected {what}", e.message);
            Err(e)
        }
    }

    /// Counts one level of recursion; the caller calls [`Self::leave`] when done (an
    /// error ends the parse, so its path need not).
    fn enter(&mut self) -> Result<(), CompileError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(parse_error(
                self.peek().column,
                format!("the expression nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn expr(&mut self, min: u8) -> Result<Node, CompileError> {
        self.enter()?;
        let node = self.expr_inner(min)?;
        self.leave();
        Ok(node)
    }

    fn unary(&mut self) -> Result<Node, CompileError> {
        self.enter()?;
        let node = self.unary_inner()?;
        self.leave();
        Ok(node)
    }

    fn expr_inner(&mut self, min: u8) -> Result<Node, CompileError> {
        let mut lhs = self.unary()?;
        loop {
            let negated = self.peek().tok == Tok::Not;
            let op_tok = if negated {
                self.peek2()
            } else {
                &self.peek().tok
            };
            let prec = match op_tok {
                Tok::Like => LIKE,
                Tok::In => IN,
                _ if negated => break,
                Tok::Star | Tok::Slash | Tok::Percent => MUL,
                Tok::Plus | Tok::Minus => ADD,
                Tok::Eq | Tok::Ne | Tok::Lt | Tok::Le | Tok::Gt | Tok::Ge => COMPARE,
                Tok::And | Tok::Or | Tok::Xor => LOGIC,
                _ => break,
            };
            if prec < min {
                break;
            }
            if negated {
                self.next();
            }
            let op = self.next();
            lhs = match op.tok {
                Tok::Like => {
                    let t = self.next();
                    let Tok::Str(text) = &t.tok else {
                        let mut e = unexpected(&t);
                        e.message = format!("{}, expected a string literal after LIKE", e.message);
                        return Err(e);
                    };
                    Node::Like {
                        operand: Box::new(lhs),
                        pattern: Pattern::compile(text),
                        negated,
                    }
                }
                Tok::In => {
                    self.expect(Tok::LParen, "'(' after IN")?;
                    let mut set = vec![self.expr(LOGIC)?];
                    while self.peek().tok == Tok::Comma {
                        self.next();
                        set.push(self.expr(LOGIC)?);
                    }
                    self.expect(Tok::RParen, "',' or ')'")?;
                    Node::In {
                        operand: Box::new(lhs),
                        set,
                        negated,
                    }
                }
                ref t => {
                    let op = match t {
                        Tok::Star => BinOp::Mul,
                        Tok::Slash => BinOp::Div,
                        Tok::Percent => BinOp::Mod,
                        Tok::Plus => BinOp::Add,
                        Tok::Minus => BinOp::Sub,
                        Tok::Eq => BinOp::Eq,
                        Tok::Ne => BinOp::Ne,
                        Tok::Lt => BinOp::Lt,
                        Tok::Le => BinOp::Le,
                        Tok::Gt => BinOp::Gt,
                        Tok::Ge => BinOp::Ge,
                        Tok::And => BinOp::And,
                        Tok::Or => BinOp::Or,
                        _ => BinOp::Xor,
                    };
                    // The logic level is right-associative (`<assoc=right>`).
                    let rhs = self.expr(if prec == LOGIC { prec } else { prec + 1 })?;
                    Node::Binary(op, Box::new(lhs), Box::new(rhs))
                }
            };
        }
        Ok(lhs)
    }

    fn unary_inner(&mut self) -> Result<Node, CompileError> {
        let t = self.next();
        match t.tok {
            Tok::Not => Ok(Node::Not(Box::new(self.unary()?))),
            Tok::Minus | Tok::Plus if matches!(self.peek().tok, Tok::Int(_)) => {
                let digits = self.next();
                let Tok::Int(d) = &digits.tok else {
                    unreachable!()
                };
                integer(d, t.tok == Tok::Minus, t.column).map(Node::Int)
            }
            Tok::Minus => Ok(Node::Neg(Box::new(self.unary()?))),
            Tok::Int(d) => integer(&d, false, t.column).map(Node::Int),
            Tok::Str(s) => Ok(Node::Str(s.into_boxed_str())),
            Tok::True => Ok(Node::Bool(true)),
            Tok::False => Ok(Node::Bool(false)),
            Tok::LParen => {
                let inner = self.expr(LOGIC)?;
                self.expect(Tok::RParen, "')'")?;
                Ok(inner)
            }
            Tok::Exists => {
                let id = self.next();
                match id.tok {
                    Tok::Ident(name) => Ok(Node::Exists(name.to_ascii_lowercase().into())),
                    _ => {
                        let mut e = unexpected(&id);
                        e.message =
                            format!("{}, expected an attribute name after EXISTS", e.message);
                        Err(e)
                    }
                }
            }
            Tok::Ident(name)
                if self.peek().tok == Tok::LParen
                    && name.bytes().all(|b| b.is_ascii_alphabetic()) =>
            {
                self.call(&name, t.column)
            }
            Tok::FnName(name) => {
                if self.peek().tok != Tok::LParen {
                    let mut e = unexpected(self.peek());
                    e.message = format!("{}, expected '(' after function {name}", e.message);
                    return Err(e);
                }
                self.call(&name, t.column)
            }
            Tok::Ident(name) => Ok(Node::Attr(name.to_ascii_lowercase().into())),
            _ => Err(unexpected(&t)),
        }
    }

    fn call(&mut self, name: &str, column: usize) -> Result<Node, CompileError> {
        self.expect(Tok::LParen, "'('")?;
        let mut args = Vec::new();
        if self.peek().tok != Tok::RParen {
            args.push(self.expr(LOGIC)?);
            while self.peek().tok == Tok::Comma {
                self.next();
                args.push(self.expr(LOGIC)?);
            }
        }
        self.expect(Tok::RParen, "',' or ')'")?;
        let f = functions::resolve(name, args.len(), column)?;
        Ok(Node::Call(f, args))
    }
}

/// An integer literal with its sign; the spec's Integer is 32-bit signed.
fn integer(digits: &str, negative: bool, column: usize) -> Result<i32, CompileError> {
    let text = if negative {
        format!("-{digits}")
    } else {
        digits.to_string()
    };
    text.parse::<i32>()
        .map_err(|_| parse_error(column, format!("integer {text} is out of the 32-bit range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(src: &str) -> usize {
        parse(src).expect_err(src).column
    }

    #[test]
    fn parse_errors_name_the_column_of_the_offending_token() {
        assert_eq!(column("ABC("), 5);
        assert_eq!(column("x LIKE 123"), 8);
        assert_eq!(column("type = 'a' AND"), 15);
        assert_eq!(column("(a = 1"), 7);
        assert_eq!(column("a IN ()"), 7);
        assert_eq!(column("a = 'open"), 5);
        assert_eq!(column("a # b"), 3);
        assert_eq!(column("a = 2147483648"), 5);
        assert_eq!(column("EXISTS 'x'"), 8);
        assert_eq!(column("a b"), 3);
        assert_eq!(column("MY_FN"), 6);
    }

    #[test]
    fn deep_nesting_and_long_sources_are_refused_not_a_stack_overflow() {
        let deep = format!("{}TRUE{}", "(".repeat(300), ")".repeat(300));
        assert!(parse(&deep).unwrap_err().message.contains("nests deeper"));
        assert!(parse(&"NOT ".repeat(300))
            .unwrap_err()
            .message
            .contains("nests deeper"));
        let chain = vec!["a = 1"; 100].join(" AND ");
        assert!(parse(&chain).is_ok());
        let long = format!("'{}' = 'a'", "x".repeat(17 * 1024));
        assert!(parse(&long).unwrap_err().message.contains("longer than"));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        assert_eq!(column("'é' = ="), 7);
    }

    #[test]
    fn unknown_functions_and_wrong_arity_are_missing_function_errors() {
        let e = parse("a = NOPE(1)").unwrap_err();
        assert_eq!(
            (e.kind, e.column),
            (super::super::ErrorKind::MissingFunction, 5)
        );
        let e = parse("CONCAT_WS()").unwrap_err();
        assert_eq!(e.kind, super::super::ErrorKind::MissingFunction);
    }

    #[test]
    fn the_most_negative_integer_is_a_literal() {
        assert!(matches!(parse("-2147483648").unwrap(), Node::Int(i32::MIN)));
    }

    #[test]
    fn patterns_split_into_the_common_shapes() {
        assert_eq!(Pattern::compile("abc%"), Pattern::Prefix("abc".into()));
        assert_eq!(Pattern::compile("%abc"), Pattern::Suffix("abc".into()));
        assert_eq!(Pattern::compile("a\\%"), Pattern::Exact("a%".into()));
        assert!(matches!(Pattern::compile("a_c"), Pattern::General(_)));
    }
}
