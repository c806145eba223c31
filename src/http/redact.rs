//! How a sink's URI is shown outside its config (metrics labels, logs, the
//! `knativeerrordest` extension sent to a dead-letter sink): without credentials. A
//! user name and password in the authority and every query value (a bare one too) are
//! replaced, since a webhook URL's query often carries its token.

use std::borrow::Cow;

/// What stands in for each removed part.
const REDACTED: &str = "redacted";

/// `uri` with its user info and query values replaced by `redacted`.
pub fn redact(uri: &str) -> Cow<'_, str> {
    let (before_query, query) = match uri.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (uri, None),
    };
    let (before_query, fragment) = match query {
        Some(_) => (before_query, None),
        None => match before_query.split_once('#') {
            Some((b, f)) => (b, Some(f)),
            None => (before_query, None),
        },
    };
    // The authority runs from after "://" to the next '/'.
    let authority_start = before_query.find("://").map_or(0, |i| i + 3);
    let authority_end = before_query[authority_start..]
        .find('/')
        .map_or(before_query.len(), |i| authority_start + i);
    let userinfo = before_query[authority_start..authority_end].rfind('@');
    if userinfo.is_none() && query.is_none() {
        return Cow::Borrowed(uri);
    }
    let mut out = String::with_capacity(uri.len());
    match userinfo {
        Some(at) => {
            out.push_str(&before_query[..authority_start]);
            out.push_str(REDACTED);
            out.push_str(&before_query[authority_start + at..]);
        }
        None => out.push_str(before_query),
    }
    if let Some(q) = query {
        let (q, fragment) = match q.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (q, None),
        };
        out.push('?');
        for (i, pair) in q.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                // A bare value (`?s3cret`) may be the credential itself.
                None if pair.is_empty() => {}
                None => out.push_str(REDACTED),
            }
        }
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
    } else if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_replaced_and_the_rest_kept() {
        let table = [
            (
                "http://notify.ci.svc:8080/hook",
                "http://notify.ci.svc:8080/hook",
            ),
            (
                "https://user:pw@hooks.example.com/x",
                "https://redacted@hooks.example.com/x",
            ),
            (
                "https://hooks.example.com/x?token=s3cret&team=ci",
                "https://hooks.example.com/x?token=redacted&team=redacted",
            ),
            (
                "http://a:b@h:1/p?k=v#frag",
                "http://redacted@h:1/p?k=redacted#frag",
            ),
            ("http://h/p?s3cret", "http://h/p?redacted"),
            ("http://h/a@b", "http://h/a@b"),
        ];
        for (uri, want) in table {
            assert_eq!(redact(uri), want, "{uri}");
        }
    }
}
