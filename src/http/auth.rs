//! Bearer tokens: one parser of `Authorization` header values for the ingress and the
//! admin listener alike, and the comparison of a presented token with the accepted ones.

/// The token of an `Authorization: Bearer <token>` value; `None` when the value is
/// another scheme, carries no token, or carries something that is not one token.
///
/// RFC 9110 §11.1 makes the auth scheme case-insensitive (`Bearer`, `bearer`, `BEARER`
/// are the same) and separates it from the credentials with one or more spaces
/// (`auth-scheme 1*SP token68`, §11.3). The token is RFC 6750 §2.1's `b64token`:
/// letters, digits and `-._~+/`, then any number of `=`. Header parsing has already
/// trimmed whitespace around the whole value.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let (scheme, rest) = value.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii_start();
    // Only spaces separate scheme and token.
    let separator = &rest[..rest.len() - token.len()];
    (is_b64token(token) && separator.iter().all(|&b| b == b' ')).then_some(token)
}

/// Whether `token` is an RFC 6750 `b64token`, the only form a bearer token can take.
pub fn is_b64token(token: &[u8]) -> bool {
    let body_len = token.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    body_len > 0
        && token[..body_len]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// Whether `presented` is one of `accepted`. Every accepted token is compared, each in
/// time that depends only on the lengths, so the time taken does not say which one was
/// close.
pub fn is_accepted<'a>(presented: &[u8], accepted: impl IntoIterator<Item = &'a str>) -> bool {
    accepted_index(presented, accepted).is_some()
}

/// Which of `accepted` `presented` is (the first), comparing with every one of them in
/// constant time.
pub fn accepted<'a>(
    presented: &[u8],
    accepted: impl IntoIterator<Item = &'a str>,
) -> Option<usize> {
    accepted_index(presented, accepted)
}

fn accepted_index<'a>(
    presented: &[u8],
    accepted: impl IntoIterator<Item = &'a str>,
) -> Option<usize> {
    let mut found = None;
    for (i, token) in accepted.into_iter().enumerate() {
        if constant_time_eq(presented, token.as_bytes()) && found.is_none() {
            found = Some(i);
        }
    }
    found
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_case_insensitive_spaces_separate_and_the_value_is_one_token() {
        let table: &[(&str, Option<&str>)] = &[
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("bEaReR abc", Some("abc")),
            ("Bearer   abc", Some("abc")),
            ("Bearer a.b-c_d~e+f/g=", Some("a.b-c_d~e+f/g=")),
            ("Bearer YWJj==", Some("YWJj==")),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearer    ", None),
            ("Bearerabc", None),
            ("Bearer\tabc", None),
            ("Bearer \tabc", None),
            ("Bearer abc def", None),
            ("Bearer abc, Bearer def", None),
            ("Bearer abc\tdef", None),
            ("Bearer ==", None),
            ("Bearer a=b", None),
            ("Bearer ab\"c", None),
            ("Basic YWJj", None),
            ("Bear abc", None),
            ("", None),
            (" Bearer abc", None),
        ];
        for (value, want) in table {
            assert_eq!(
                bearer_token(value.as_bytes()),
                want.map(str::as_bytes),
                "{value:?}"
            );
        }
    }

    #[test]
    fn a_token_is_accepted_when_it_equals_any_of_several() {
        let accepted = ["old-token", "new-token"];
        assert!(is_accepted(b"old-token", accepted));
        assert!(is_accepted(b"new-token", accepted));
        assert!(!is_accepted(b"new-toke", accepted));
        assert!(!is_accepted(b"new-tokenx", accepted));
        assert!(!is_accepted(b"", accepted));
        assert!(!is_accepted(b"anything", []));
    }
}
