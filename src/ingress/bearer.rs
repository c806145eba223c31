//! Reading a bearer token out of an `Authorization` header value, one parser for the
//! ingress and the admin listener alike.

/// The token of an `Authorization: Bearer <token>` value; `None` when the value is
/// another scheme or carries no token.
///
/// RFC 9110 §11.1 makes the auth scheme case-insensitive (`Bearer`, `bearer`, `BEARER`
/// are the same) and separates it from the credentials with one or more spaces
/// (`auth-scheme 1*SP token68`, §11.3 and RFC 6750 §2.1).
pub(crate) fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let (scheme, rest) = value.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii_start();
    // Only spaces separate scheme and token; a tab or an empty token is not a token.
    let separator = &rest[..rest.len() - token.len()];
    (!token.is_empty() && separator.iter().all(|&b| b == b' ')).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_case_insensitive_and_spaces_separate_the_token() {
        let table: &[(&str, Option<&str>)] = &[
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("bEaReR abc", Some("abc")),
            ("Bearer   abc", Some("abc")),
            ("Bearer a.b-c_d~e+f/g=", Some("a.b-c_d~e+f/g=")),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearer    ", None),
            ("Bearerabc", None),
            ("Bearer\tabc", None),
            ("Bearer \tabc", None),
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
}
