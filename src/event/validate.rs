//! Strict CloudEvents 1.0 validation (spec 1.0.2, "Context Attributes" and "Type
//! System"): required attributes, attribute names, and the value rules of each type.
//! Pure functions, no I/O; every failure names the attribute.

use super::{AttrValue, Event};

/// Why an event (or a request carrying events) is not a valid CloudEvent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct EventError {
    /// The context attribute at fault (`data` and `data_base64` count as attributes here).
    pub attribute: Option<String>,
    /// The position in a batch.
    pub index: Option<usize>,
    /// What is wrong, for a person.
    pub detail: String,
}

impl EventError {
    pub fn attr(name: impl Into<String>, detail: impl Into<String>) -> Self {
        EventError {
            attribute: Some(name.into()),
            index: None,
            detail: detail.into(),
        }
    }

    /// An error about the message as a whole (not JSON, not protobuf, not an object).
    pub fn message(detail: impl Into<String>) -> Self {
        EventError {
            attribute: None,
            index: None,
            detail: detail.into(),
        }
    }

    /// The same error, placed at a batch index.
    pub fn at(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }

    fn describe(&self) -> String {
        let mut out = String::new();
        if let Some(i) = self.index {
            out.push_str(&format!("batch event {i}: "));
        }
        if let Some(a) = &self.attribute {
            out.push_str(&format!("attribute '{a}': "));
        }
        out.push_str(&self.detail);
        out
    }
}

/// Gives a string value of a known attribute its spec type: `time` a Timestamp,
/// `dataschema` a URI, `source` a URI-reference. Formats that carry attributes as text
/// (binary mode, JSON) use it; other values pass through.
pub fn coerce_known(name: &str, value: AttrValue) -> AttrValue {
    match (name, value) {
        ("time", AttrValue::String(s)) => AttrValue::Timestamp(s),
        ("dataschema", AttrValue::String(s)) => AttrValue::Uri(s),
        ("source", AttrValue::String(s)) => AttrValue::UriRef(s),
        (_, v) => v,
    }
}

/// Checks every rule of the spec that an event can break.
pub fn validate(event: &Event) -> Result<(), EventError> {
    for required in ["specversion", "id", "source", "type"] {
        if event.get(required).is_none() {
            return Err(EventError::attr(required, "required attribute is missing"));
        }
    }
    let mut seen = Names::with_capacity(event.attributes.len());
    for (name, value) in &event.attributes {
        check_name(name)?;
        if !seen.insert(name) {
            return Err(EventError::attr(
                name.as_str(),
                "attribute appears more than once",
            ));
        }
        check_value(name, value)?;
    }
    Ok(())
}

/// A set of names for duplicate checks, linear in the number of names: a scan of a
/// short list for the few attributes events usually have, a hash set past that (a
/// scan of every earlier name for each new one made a 200,000-member object take
/// tens of seconds).
pub(crate) struct Names<'a> {
    list: Vec<&'a str>,
    set: Option<std::collections::HashSet<&'a str>>,
}

impl<'a> Names<'a> {
    /// Up to this many names are kept in a list and scanned.
    const SCAN_MAX: usize = 16;

    pub(crate) fn with_capacity(n: usize) -> Self {
        Names {
            list: Vec::with_capacity(n.min(Self::SCAN_MAX)),
            set: None,
        }
    }

    /// Adds `name`; false if it was there already.
    pub(crate) fn insert(&mut self, name: &'a str) -> bool {
        if let Some(set) = &mut self.set {
            return set.insert(name);
        }
        if self.list.contains(&name) {
            return false;
        }
        if self.list.len() < Self::SCAN_MAX {
            self.list.push(name);
        } else {
            let mut set: std::collections::HashSet<&str> = self.list.drain(..).collect();
            set.insert(name);
            self.set = Some(set);
        }
        true
    }
}

/// Attribute names: lower-case ASCII letters and digits, at least one (spec 1.0.2,
/// "Attribute Naming Convention"). `data` and `data_base64` are members, not attributes.
pub fn check_name(name: &str) -> Result<(), EventError> {
    if name.is_empty() {
        return Err(EventError::attr(name, "attribute name is empty"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(EventError::attr(
            name,
            "attribute names may only contain lower-case letters a-z and digits 0-9",
        ));
    }
    if name == "data" {
        return Err(EventError::attr(
            name,
            "'data' is reserved and cannot be an attribute",
        ));
    }
    Ok(())
}

fn expect_type(name: &str, value: &AttrValue, want: &str) -> EventError {
    let got = match value {
        AttrValue::Boolean(_) => "Boolean",
        AttrValue::Integer(_) => "Integer",
        AttrValue::String(_) => "String",
        AttrValue::Binary(_) => "Binary",
        AttrValue::Uri(_) => "URI",
        AttrValue::UriRef(_) => "URI-reference",
        AttrValue::Timestamp(_) => "Timestamp",
    };
    EventError::attr(name, format!("must be a {want}, not a {got}"))
}

fn check_value(name: &str, value: &AttrValue) -> Result<(), EventError> {
    // The core attributes have fixed types; extensions may be any type.
    match name {
        "specversion" => match value {
            AttrValue::String(s) if s == "1.0" => Ok(()),
            AttrValue::String(s) if s.is_empty() => {
                Err(EventError::attr(name, "must not be empty"))
            }
            AttrValue::String(s) if s == "0.3" => Err(EventError::attr(
                name,
                "CloudEvents 0.3 is not accepted; send specversion 1.0",
            )),
            AttrValue::String(s) => Err(EventError::attr(
                name,
                format!("unsupported specversion '{s}'; only 1.0 is accepted"),
            )),
            v => Err(expect_type(name, v, "String")),
        },
        "id" | "type" | "subject" => match value {
            AttrValue::String(s) => check_nonempty_string(name, s),
            v => Err(expect_type(name, v, "String")),
        },
        "source" => match value {
            AttrValue::UriRef(s) | AttrValue::String(s) | AttrValue::Uri(s) => {
                check_nonempty_string(name, s)?;
                check_uri_reference(s).map_err(|e| EventError::attr(name, e))
            }
            v => Err(expect_type(name, v, "URI-reference")),
        },
        "datacontenttype" => match value {
            AttrValue::String(s) => {
                check_nonempty_string(name, s)?;
                check_media_type(s).map_err(|e| EventError::attr(name, e))
            }
            v => Err(expect_type(name, v, "String")),
        },
        "dataschema" => match value {
            AttrValue::Uri(s) | AttrValue::String(s) => {
                check_nonempty_string(name, s)?;
                check_absolute_uri(s).map_err(|e| EventError::attr(name, e))
            }
            v => Err(expect_type(name, v, "URI")),
        },
        "time" => match value {
            AttrValue::Timestamp(s) | AttrValue::String(s) => parse_rfc3339(s)
                .map(|_| ())
                .map_err(|e| EventError::attr(name, e)),
            v => Err(expect_type(name, v, "Timestamp")),
        },
        _ => check_extension(name, value),
    }
}

fn check_extension(name: &str, value: &AttrValue) -> Result<(), EventError> {
    match value {
        AttrValue::Boolean(_) | AttrValue::Integer(_) | AttrValue::Binary(_) => Ok(()),
        AttrValue::String(s) => check_string(name, s),
        AttrValue::Uri(s) => check_absolute_uri(s).map_err(|e| EventError::attr(name, e)),
        AttrValue::UriRef(s) => check_uri_reference(s).map_err(|e| EventError::attr(name, e)),
        AttrValue::Timestamp(s) => parse_rfc3339(s)
            .map(|_| ())
            .map_err(|e| EventError::attr(name, e)),
    }
}

fn check_nonempty_string(name: &str, s: &str) -> Result<(), EventError> {
    if s.is_empty() {
        return Err(EventError::attr(name, "must not be empty"));
    }
    check_string(name, s)
}

/// The String type's character rules: no control characters (U+0000-U+001F,
/// U+007F-U+009F) and no Unicode noncharacters. (Rust strings cannot hold surrogates.)
pub fn check_string(name: &str, s: &str) -> Result<(), EventError> {
    for c in s.chars() {
        let cp = c as u32;
        if cp <= 0x1F || (0x7F..=0x9F).contains(&cp) {
            return Err(EventError::attr(
                name,
                format!("contains the control character U+{cp:04X}"),
            ));
        }
        if (0xFDD0..=0xFDEF).contains(&cp) || (cp & 0xFFFE) == 0xFFFE {
            return Err(EventError::attr(
                name,
                format!("contains the noncharacter U+{cp:04X}"),
            ));
        }
    }
    Ok(())
}

/// RFC 2046 media type: `type "/" subtype *( OWS ";" OWS token "=" ( token / quoted-string ) )`.
pub fn check_media_type(s: &str) -> Result<(), String> {
    let bad = || format!("'{s}' is not a media type (RFC 2046), e.g. application/json");
    let mut parts = s.split(';');
    let essence = parts.next().unwrap_or_default();
    let (ty, sub) = essence.split_once('/').ok_or_else(bad)?;
    if !is_token(ty) || !is_token(sub.trim_end()) {
        return Err(bad());
    }
    for param in parts {
        let param = param.trim_matches(|c| c == ' ' || c == '\t');
        let (k, v) = param.split_once('=').ok_or_else(bad)?;
        let quoted = v.len() >= 2 && v.starts_with('"') && v.ends_with('"');
        if !is_token(k) || !(is_token(v) || quoted) {
            return Err(bad());
        }
    }
    Ok(())
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// RFC 3986 characters allowed in a URI outside percent-encodings.
fn is_uri_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=".contains(&b)
}

/// RFC 3986 `URI-reference`: a URI or a relative reference. Checks the character set,
/// percent-encodings, the scheme when there is one, and at most one `#`.
pub fn check_uri_reference(s: &str) -> Result<(), String> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut hashes = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let ok = bytes.len() > i + 2
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(format!(
                    "'{s}' has a '%' that is not followed by two hex digits"
                ));
            }
            i += 3;
            continue;
        }
        if !is_uri_char(b) {
            return Err(format!(
                "'{s}' is not a URI reference: character {:?} must be percent-encoded",
                s[i..].chars().next().unwrap_or('?')
            ));
        }
        if b == b'#' {
            hashes += 1;
        }
        i += 1;
    }
    if hashes > 1 {
        return Err(format!("'{s}' is not a URI reference: more than one '#'"));
    }
    // A colon before any '/', '?' or '#' means a scheme, which must be well formed.
    let head_end = s.find(['/', '?', '#']).unwrap_or(s.len());
    if let Some(colon) = s[..head_end].find(':') {
        check_scheme(&s[..colon]).map_err(|e| format!("'{s}': {e}"))?;
    }
    Ok(())
}

/// RFC 3986 absolute `URI`: a scheme, then a URI reference's characters.
pub fn check_absolute_uri(s: &str) -> Result<(), String> {
    let head_end = s.find(['/', '?', '#']).unwrap_or(s.len());
    if !s[..head_end].contains(':') {
        return Err(format!("'{s}' is not an absolute URI: it has no scheme"));
    }
    check_uri_reference(s)
}

fn check_scheme(scheme: &str) -> Result<(), String> {
    let mut chars = scheme.bytes();
    match chars.next() {
        Some(b) if b.is_ascii_alphabetic() => {}
        _ => return Err("a URI scheme must start with a letter".into()),
    }
    if chars.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
        Ok(())
    } else {
        Err(format!("'{scheme}' is not a valid URI scheme"))
    }
}

/// Parses an RFC 3339 `date-time` strictly into seconds since the Unix epoch and
/// nanoseconds. Seconds are required, the offset must be `Z` or `±hh:mm` with
/// `hh` ≤ 23 and `mm` ≤ 59, and the date must exist.
pub fn parse_rfc3339(s: &str) -> Result<(i64, u32), String> {
    let bad = |why: &str| format!("'{s}' is not an RFC 3339 timestamp: {why}");
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| -> Option<u32> {
        let part = b.get(from..from + n)?;
        part.iter().try_fold(0u32, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    };
    let sep = |at: usize, want: &[u8]| b.get(at).is_some_and(|c| want.contains(c));
    if b.len() < 20 {
        return Err(bad("too short; the form is 2018-04-05T17:31:00Z"));
    }
    let (Some(year), Some(month), Some(day)) = (digits(0, 4), digits(5, 2), digits(8, 2)) else {
        return Err(bad("the date must be YYYY-MM-DD"));
    };
    if !sep(4, b"-") || !sep(7, b"-") || !sep(10, b"Tt") {
        return Err(bad("the date must be YYYY-MM-DD followed by 'T'"));
    }
    let (Some(hour), Some(minute), Some(second)) = (digits(11, 2), digits(14, 2), digits(17, 2))
    else {
        return Err(bad("the time must be hh:mm:ss"));
    };
    if !sep(13, b":") || !sep(16, b":") {
        return Err(bad("the time must be hh:mm:ss"));
    }
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("no such time of day"));
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if sep(i, b".") {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return Err(bad("a '.' must be followed by digits"));
        }
        for _ in (i - start).min(9)..9 {
            nanos *= 10;
        }
    }
    let offset_secs: i64 = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() => {
            let (Some(oh), Some(om)) = (digits(i + 1, 2), digits(i + 4, 2)) else {
                return Err(bad("the offset must be Z or ±hh:mm"));
            };
            if !sep(i + 3, b":") || oh > 23 || om > 59 {
                return Err(bad("the offset must be Z or ±hh:mm within ±23:59"));
            }
            let o = i64::from(oh * 3600 + om * 60);
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return Err(bad("the offset must be Z or ±hh:mm")),
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    Ok((secs, nanos))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's civil algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_accepts_the_spec_forms_and_compares_instants() {
        let utc = parse_rfc3339("2018-04-05T17:31:00Z").unwrap();
        assert_eq!(utc, (1_522_949_460, 0));
        assert_eq!(parse_rfc3339("2018-04-05T18:31:00+01:00").unwrap(), utc);
        assert_eq!(parse_rfc3339("2018-04-05T16:31:00-01:00").unwrap(), utc);
        assert_eq!(
            parse_rfc3339("2018-04-05T17:31:00.000000000Z").unwrap(),
            utc
        );
        assert_eq!(
            parse_rfc3339("2023-12-07T06:20:01.518567259Z").unwrap().1,
            518_567_259
        );
        assert_eq!(
            parse_rfc3339("2020-02-29t00:00:00.5z").unwrap().1,
            500_000_000
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), (0, 0));
    }

    #[test]
    fn rfc3339_rejects_what_the_conformance_suite_rejects() {
        for bad in [
            "lunchtime",
            "2018-04-05T18:31Z",
            "2018-04-05T18:31:00X",
            "2018-04-05T18:31:00+25:00",
            "2018-04-05T18:31:00+xx:00",
            "2018-04-05T18:31:00+05",
            "2018-04-05 18:31:00Z",
            "2019-02-29T00:00:00Z",
            "2018-13-01T00:00:00Z",
            "2018-04-05T24:00:00Z",
            "2018-04-05T18:31:00.Z",
            "2018-04-05T18:31:00Z ",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn media_types_follow_rfc_2046() {
        for ok in [
            "text/plain",
            "application/json; charset=utf-8",
            "application/cloudevents+json",
            "a/b;x=\"y z\"",
        ] {
            assert!(check_media_type(ok).is_ok(), "{ok}");
        }
        for bad in [
            "xyz",
            "",
            "text/",
            "/plain",
            "text/plain; charset",
            "te xt/plain",
        ] {
            assert!(check_media_type(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uri_references_and_absolute_uris() {
        for ok in [
            "#fragment",
            "/apis///namespaces/ee-cd//name",
            "https://cloudevents.io",
            "//authority/path",
            "urn:uuid:6e8bc430",
            "a%20b",
        ] {
            assert!(check_uri_reference(ok).is_ok(), "{ok}");
        }
        for bad in ["a b", "x%zz", "https://x/#a#b", "1http://x", "caf\u{e9}"] {
            assert!(check_uri_reference(bad).is_err(), "{bad}");
        }
        assert!(check_absolute_uri("https://cloudevents.io/dataschema").is_ok());
        assert!(check_absolute_uri("/relative").is_err());
        assert!(check_absolute_uri("#frag").is_err());
    }

    #[test]
    fn strings_reject_control_characters_and_noncharacters() {
        assert!(check_string("subject", "tab\tbad").is_err());
        assert!(check_string("subject", "del\u{7f}").is_err());
        assert!(check_string("subject", "c1\u{85}").is_err());
        assert!(check_string("subject", "non\u{fffe}").is_err());
        assert!(check_string("subject", "non\u{fdd0}").is_err());
        assert!(check_string("subject", "ünïcödé ✓ 🚀").is_ok());
    }

    #[test]
    fn names_are_lower_case_letters_and_digits() {
        assert!(check_name("extinteger").is_ok());
        assert!(check_name("abc123").is_ok());
        for bad in ["", "MyExtension", "my.extension", "my_ext", "data"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
