//! Sink identity: the bearer token a sink's requests carry, from a file (read again when
//! it changes: a Kubernetes projected service-account token with an audience) or from an
//! OAuth2 token endpoint (the client credentials grant, RFC 6749 §4.4). A token is
//! obtained once and shared by the lane's attempts, refreshed before it expires (at 80%
//! of `expires_in`), and dropped after a `401` so that the next attempt gets a new one.
//! A token endpoint that fails makes the attempt fail like a sink that does, with the
//! reason as the lane's last error. Secrets and tokens are never logged.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};

use crate::config::subscriptions::{HeldToken, SinkAuth, TokenSource};

/// A token file is looked at again at most this often (a stat, and a read when it
/// changed).
const FILE_RECHECK: Duration = Duration::from_secs(1);

/// A token without `expires_in` is used this long before it is fetched again.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// A token is fetched again after a day at the latest, whatever its `expires_in`.
const LONGEST_LIFETIME: Duration = Duration::from_secs(86_400);

/// The most of a token endpoint's answer that is read.
const ANSWER_MAX: usize = 64 * 1024;

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<super::outbound::GuardedConnector>,
    Full<Bytes>,
>;

/// The `Authorization` value for the sink's next request, obtaining a token when the
/// one held is stale; `Err` says why none could be had.
pub async fn authorization(
    auth: &SinkAuth,
    client: &Client,
    timeout: Duration,
) -> Result<HeaderValue, String> {
    let mut held = auth.held.lock().await;
    let now = Instant::now();
    let fresh = held.as_ref().filter(|t| now < t.fresh_until).cloned();
    let token = match fresh {
        Some(t) => t,
        None => {
            let got = match &auth.source {
                TokenSource::File(path) => read_file(path, held.as_ref()),
                // Half the attempt's time, so that a token endpoint that hangs is named
                // as the reason rather than the attempt timing out.
                TokenSource::OAuth2 { .. } => {
                    tokio::time::timeout(timeout / 2, fetch(&auth.source, client))
                        .await
                        .unwrap_or_else(|_| {
                            Err(format!(
                                "the OAuth2 token endpoint did not answer within {} ms",
                                (timeout / 2).as_millis()
                            ))
                        })
                }
            };
            match got {
                Ok(t) => {
                    *auth.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    *held = Some(t.clone());
                    t
                }
                Err(e) => {
                    *auth.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                    return Err(e);
                }
            }
        }
    };
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.value))
        .map_err(|_| "the token holds characters a header cannot carry".to_string())?;
    value.set_sensitive(true);
    Ok(value)
}

/// Drops the token held if it is still the one `used` carried (the sink answered
/// `401`): the next request gets a new one. A newer token, fetched meanwhile, stays.
pub async fn forget(auth: &SinkAuth, used: &HeaderValue) {
    let mut held = auth.held.lock().await;
    let same = held
        .as_ref()
        .is_some_and(|t| used.as_bytes() == format!("Bearer {}", t.value).as_bytes());
    if !same {
        return;
    }
    if let (TokenSource::File(_), Some(t)) = (&auth.source, held.as_mut()) {
        // The file is read again, whether or not it changed.
        t.fresh_until = Instant::now();
        t.file_stamp = None;
    } else {
        *held = None;
    }
}

/// Why the last try to obtain a token failed.
pub fn last_failure(auth: &SinkAuth) -> Option<String> {
    auth.failure
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

fn read_file(path: &std::path::Path, held: Option<&HeldToken>) -> Result<HeldToken, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    let stamp = meta.modified().ok().map(|m| (m, meta.len()));
    let fresh_until = Instant::now() + FILE_RECHECK;
    if let Some(t) = held.filter(|t| stamp.is_some() && t.file_stamp == stamp) {
        return Ok(HeldToken {
            fresh_until,
            ..t.clone()
        });
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    let value = text.trim().to_string();
    if value.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    Ok(HeldToken {
        value,
        fresh_until,
        file_stamp: stamp,
    })
}

/// `application/x-www-form-urlencoded` of one value.
fn form(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

async fn fetch(source: &TokenSource, client: &Client) -> Result<HeldToken, String> {
    use base64::Engine as _;
    let TokenSource::OAuth2 {
        token_url,
        client_id,
        client_secret,
        scopes,
        audience,
    } = source
    else {
        unreachable!("fetch is for OAuth2");
    };
    let mut body = String::from("grant_type=client_credentials");
    if !scopes.is_empty() {
        body.push_str(&format!("&scope={}", form(&scopes.join(" "))));
    }
    if let Some(a) = audience {
        body.push_str(&format!("&audience={}", form(a)));
    }
    // Client authentication with HTTP Basic, the credentials form-encoded first
    // (RFC 6749 §2.3.1).
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        form(client_id),
        form(client_secret)
    ));
    let mut authorization = HeaderValue::from_str(&format!("Basic {basic}"))
        .map_err(|_| "the client id or secret cannot be sent".to_string())?;
    authorization.set_sensitive(true);
    let request = Request::post(token_url.clone())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(http::header::ACCEPT, "application/json")
        .header(AUTHORIZATION, authorization)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("cannot reach the OAuth2 token endpoint {token_url}: {e}"))?;
    let status = response.status();
    let mut answer = Vec::new();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| format!("the OAuth2 token endpoint's answer broke off: {e}"))?;
        if let Ok(data) = frame.into_data() {
            answer.extend_from_slice(&data);
            if answer.len() > ANSWER_MAX {
                return Err("the OAuth2 token endpoint's answer is too long".into());
            }
        }
    }
    let json: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
    if !status.is_success() {
        // RFC 6749 §5.2: `error`, `error_description`.
        let why = [&json["error"], &json["error_description"]]
            .iter()
            .filter_map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(": ");
        return Err(format!(
            "the OAuth2 token endpoint {token_url} answered HTTP {}{}",
            status.as_u16(),
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            }
        ));
    }
    let Some(value) = json["access_token"].as_str().filter(|t| !t.is_empty()) else {
        return Err(format!(
            "the OAuth2 token endpoint {token_url} answered without an access_token"
        ));
    };
    if let Some(kind) = json["token_type"].as_str() {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(format!(
                "the OAuth2 token endpoint {token_url} issued a {kind} token, not a bearer token"
            ));
        }
    }
    let lifetime = json["expires_in"]
        .as_f64()
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s * 0.8).ok())
        .map_or(DEFAULT_LIFETIME, |d| d.min(LONGEST_LIFETIME));
    Ok(HeldToken {
        value: value.to_string(),
        fresh_until: Instant::now() + lifetime,
        file_stamp: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_leaves_unreserved_bytes_and_encodes_the_rest() {
        assert_eq!(form("a b+c/d:é"), "a+b%2Bc%2Fd%3A%C3%A9");
        assert_eq!(form("Az09-._*"), "Az09-._*");
    }

    #[test]
    fn a_token_file_is_read_again_only_when_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let t = read_file(&path, None).unwrap();
        assert_eq!(t.value, "first");
        let again = read_file(&path, Some(&t)).unwrap();
        assert_eq!(again.value, "first");
        std::fs::write(&path, "second-token\n").unwrap();
        assert_eq!(read_file(&path, Some(&t)).unwrap().value, "second-token");
        std::fs::write(&path, "  \n").unwrap();
        assert!(read_file(&path, None).unwrap_err().contains("empty"));
    }
}
