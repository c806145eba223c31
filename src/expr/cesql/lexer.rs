//! Tokens of `CESQLLexer.g4`. Keywords are case-insensitive (the TCK's
//! `case_sensitivity.yaml`); columns are 1-based character offsets.

use super::{CompileError, ErrorKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tok {
    LParen,
    RParen,
    Comma,
    Star,
    Slash,
    Percent,
    Plus,
    Minus,
    Eq,
    /// `!=` and `<>`.
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Xor,
    Not,
    Like,
    Exists,
    In,
    True,
    False,
    /// A string literal, unescaped.
    Str(String),
    /// The digits of an integer literal (its sign is the parser's business).
    Int(String),
    /// `[a-zA-Z0-9]+`: an attribute, or a function name when letters only.
    Ident(String),
    /// `[A-Za-z][A-Za-z_]*` with an underscore: only a function name.
    FnName(String),
    Eof,
}

/// A token and the column where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Token {
    pub tok: Tok,
    pub column: usize,
}

pub(super) fn parse_error(column: usize, message: impl Into<String>) -> CompileError {
    CompileError {
        kind: ErrorKind::Parse,
        column,
        message: message.into(),
    }
}

/// Splits an expression into tokens, ending with [`Tok::Eof`].
pub(super) fn tokenize(src: &str) -> Result<Vec<Token>, CompileError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        let (tok, len) = match c {
            ' ' | '\t' | '\r' | '\n' => {
                i += 1;
                continue;
            }
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            ',' => (Tok::Comma, 1),
            '*' => (Tok::Star, 1),
            '/' => (Tok::Slash, 1),
            '%' => (Tok::Percent, 1),
            '+' => (Tok::Plus, 1),
            '-' => (Tok::Minus, 1),
            '=' => (Tok::Eq, 1),
            '!' if chars.get(i + 1) == Some(&'=') => (Tok::Ne, 2),
            '<' => match chars.get(i + 1) {
                Some('>') => (Tok::Ne, 2),
                Some('=') => (Tok::Le, 2),
                _ => (Tok::Lt, 1),
            },
            '>' => match chars.get(i + 1) {
                Some('=') => (Tok::Ge, 2),
                _ => (Tok::Gt, 1),
            },
            '\'' | '"' => string(&chars, i)?,
            c if c.is_ascii_alphanumeric() || c == '_' => word(&chars, i)?,
            other => {
                return Err(parse_error(
                    column,
                    format!("unexpected character {other:?}"),
                ))
            }
        };
        out.push(Token { tok, column });
        i += len;
    }
    out.push(Token {
        tok: Tok::Eof,
        column: chars.len() + 1,
    });
    Ok(out)
}

/// A quoted string from `chars[start]`: `\` escapes the next character and a doubled
/// quote stands for itself (`DQUOTA_STRING`, `SQUOTA_STRING`). `\'`, `\"` and `\\` lose
/// their backslash; any other escape is kept as written, so that `LIKE` still sees
/// `\%` and `\_`.
fn string(chars: &[char], start: usize) -> Result<(Tok, usize), CompileError> {
    let quote = chars[start];
    let mut text = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None => return Err(parse_error(start + 1, "unterminated string literal")),
            Some('\\') => match chars.get(i + 1) {
                None => return Err(parse_error(start + 1, "unterminated string literal")),
                Some(&c @ ('\'' | '"' | '\\')) => {
                    text.push(c);
                    i += 2;
                }
                Some(&c) => {
                    text.push('\\');
                    text.push(c);
                    i += 2;
                }
            },
            Some(&c) if c == quote => {
                if chars.get(i + 1) == Some(&quote) {
                    text.push(quote);
                    i += 2;
                } else {
                    return Ok((Tok::Str(text), i + 1 - start));
                }
            }
            Some(&c) => {
                text.push(c);
                i += 1;
            }
        }
    }
}

fn word(chars: &[char], start: usize) -> Result<(Tok, usize), CompileError> {
    let end = chars[start..]
        .iter()
        .position(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
        .map_or(chars.len(), |n| start + n);
    let text: String = chars[start..end].iter().collect();
    let len = end - start;
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok((Tok::Int(text), len));
    }
    if text.contains('_') {
        let first_is_letter = text.as_bytes()[0].is_ascii_alphabetic();
        if !first_is_letter || text.bytes().any(|b| b.is_ascii_digit()) {
            return Err(parse_error(
                start + 1,
                format!("invalid identifier {text:?}"),
            ));
        }
        return Ok((Tok::FnName(text), len));
    }
    let tok = match text.to_ascii_uppercase().as_str() {
        "AND" => Tok::And,
        "OR" => Tok::Or,
        "XOR" => Tok::Xor,
        "NOT" => Tok::Not,
        "LIKE" => Tok::Like,
        "EXISTS" => Tok::Exists,
        "IN" => Tok::In,
        "TRUE" => Tok::True,
        "FALSE" => Tok::False,
        _ => Tok::Ident(text),
    };
    Ok((tok, len))
}
