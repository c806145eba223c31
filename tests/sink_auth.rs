//! Sink identity: an OAuth2 token server (in the test) that issues short-lived tokens
//! and counts its requests, and a sink that accepts only a token the server issued and
//! has not expired or revoked; a token endpoint that fails first; a token file that is
//! rotated; a dead-letter sink with a token of its own. Every event arrives, each with a
//! valid token, and tokens are fetched once per lifetime, not once per event.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use common::sink::{Answer, TestSink};
use common::{eventually, subscription, TestServer};

const WAIT: Duration = Duration::from_secs(30);
const CLIENT: &str = "client-1";
const SECRET: &str = "s3cr3t/with+odd chars";

/// The token server and the sink share what was issued.
#[derive(Default)]
struct Issuer {
    /// Token → when it expires.
    valid: Mutex<HashMap<String, Instant>>,
    requests: AtomicU32,
    /// Answer this many token requests with 503 first.
    fail_first: AtomicU32,
    /// Bodies and `Authorization` headers of the token requests.
    seen: Mutex<Vec<(String, String)>>,
    /// Requests the sink accepted, by token, and ones it refused.
    accepted: Mutex<Vec<String>>,
    refused: AtomicU32,
}

async fn serve<F, Fut>(handler: F) -> String
where
    F: Fn(http::Request<Bytes>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<Full<Bytes>>> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            Ok::<_, Infallible>(
                                handler(http::Request::from_parts(parts, body)).await,
                            )
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    base
}

fn answer(status: u16, body: &str) -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// A token endpoint issuing tokens that live `lifetime`, and a sink that checks them.
async fn issuer_and_sink(lifetime: Duration) -> (Arc<Issuer>, String, String) {
    let issuer = Arc::new(Issuer::default());
    let i = issuer.clone();
    let token_url = serve(move |req| {
        let i = i.clone();
        async move {
            let n = i.requests.fetch_add(1, Ordering::SeqCst) + 1;
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            i.seen.lock().unwrap().push((
                String::from_utf8_lossy(req.body()).into_owned(),
                auth.clone(),
            ));
            if i.fail_first.load(Ordering::SeqCst) >= n {
                return answer(
                    503,
                    r#"{"error": "temporarily_unavailable", "error_description": "try later"}"#,
                );
            }
            use base64::Engine as _;
            // RFC 6749 §2.3.1: the id and secret form-encoded, then Basic.
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode("client-1:s3cr3t%2Fwith%2Bodd+chars")
            );
            if auth != want {
                return answer(401, r#"{"error": "invalid_client"}"#);
            }
            let token = format!("tok-{n}");
            i.valid
                .lock()
                .unwrap()
                .insert(token.clone(), Instant::now() + lifetime);
            answer(
                200,
                &format!(
                    r#"{{"access_token": "{token}", "token_type": "Bearer", "expires_in": {}}}"#,
                    lifetime.as_secs_f64()
                ),
            )
        }
    })
    .await;
    let i = issuer.clone();
    let sink = serve(move |req| {
        let i = i.clone();
        async move {
            let token = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("")
                .to_string();
            let ok = i
                .valid
                .lock()
                .unwrap()
                .get(&token)
                .is_some_and(|until| Instant::now() < *until);
            if ok {
                i.accepted.lock().unwrap().push(token);
                answer(200, "")
            } else {
                i.refused.fetch_add(1, Ordering::SeqCst);
                answer(401, "")
            }
        }
    })
    .await;
    (
        issuer,
        format!("{token_url}/oauth/token"),
        format!("{sink}/events"),
    )
}

fn oauth2_spec(sink: &str, token_url: &str) -> String {
    format!(
        "  sinks:\n    - uri: {sink}\n      auth:\n        oauth2:\n          tokenUrl: {token_url}\n          clientId: {CLIENT}\n          clientSecret: {{ valueFrom: {{ env: SINK_AUTH_TEST_SECRET }} }}\n          scopes: [events.write, audit]\n          audience: https://sink.example\n  delivery: {{ retry: 10, backoffDelay: PT0.1S, maxInFlight: 4 }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_tokens_are_fetched_once_per_lifetime_shared_and_refreshed() {
    std::env::set_var("SINK_AUTH_TEST_SECRET", SECRET);
    let (issuer, token_url, sink) = issuer_and_sink(Duration::from_secs(2)).await;
    let t = TestServer::start_with_subscriptions(
        "",
        &[(
            "s.yaml",
            &subscription("s", &oauth2_spec(&sink, &token_url)),
        )],
    )
    .await;
    // Twenty events over about five seconds: two and a half token lifetimes.
    for i in 0..20 {
        assert_eq!(
            t.post_json(&common::minimal(&format!("e{i}"))).await.status,
            202
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eventually("every event accepted", async || {
        (issuer.accepted.lock().unwrap().len() >= 20).then_some(())
    })
    .await;
    let fetched = issuer.requests.load(Ordering::SeqCst);
    // Refreshed at 80% of two seconds over five seconds: three or four fetches, never
    // one per event.
    assert!(
        (2..=5).contains(&fetched),
        "{fetched} token requests for 20 events"
    );
    assert_eq!(
        issuer.refused.load(Ordering::SeqCst),
        0,
        "no request went out with a stale token"
    );
    let (body, _) = issuer.seen.lock().unwrap()[0].clone();
    assert_eq!(body, "grant_type=client_credentials&scope=events.write+audit&audience=https%3A%2F%2Fsink.example");
    // None of it went into the broker's dead letters, and the secret into no answer.
    assert!(t.dead_letters().await.is_empty());
    let subs = t.admin_get("/api/v1/subscriptions").await.to_string();
    assert!(!subs.contains("s3cr3t") && !subs.contains("tok-"), "{subs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_replaced_after_the_sinks_401_and_a_failing_endpoint_is_retried() {
    std::env::set_var("SINK_AUTH_TEST_SECRET", SECRET);
    let (issuer, token_url, sink) = issuer_and_sink(Duration::from_secs(3600)).await;
    issuer.fail_first.store(2, Ordering::SeqCst);
    let t = TestServer::start_with_subscriptions(
        "",
        &[(
            "s.yaml",
            &subscription("s", &oauth2_spec(&sink, &token_url)),
        )],
    )
    .await;
    assert_eq!(t.post_json(&common::minimal("first")).await.status, 202);
    // The endpoint's own words are the lane's last error meanwhile.
    let error = eventually(
        "the token endpoint's failure as the last error",
        async || {
            let e = t.admin_get("/api/v1/subscriptions/s").await["lanes"][0]["lastError"]
                ["message"]
                .clone();
            e.as_str().map(str::to_string)
        },
    )
    .await;
    assert!(
        error.contains("token endpoint")
            && error.contains("HTTP 503")
            && error.contains("temporarily_unavailable"),
        "{error}"
    );
    assert!(!error.contains("s3cr3t"));
    eventually("the first event", async || {
        (issuer.accepted.lock().unwrap().len() == 1).then_some(())
    })
    .await;
    assert_eq!(
        issuer.requests.load(Ordering::SeqCst),
        3,
        "two failures, then a token"
    );
    // The token is revoked: the sink answers 401, the broker fetches another and sends
    // again in the same attempt.
    issuer.valid.lock().unwrap().clear();
    assert_eq!(t.post_json(&common::minimal("second")).await.status, 202);
    eventually("the second event", async || {
        (issuer.accepted.lock().unwrap().len() == 2).then_some(())
    })
    .await;
    assert_eq!(issuer.refused.load(Ordering::SeqCst), 1);
    assert_eq!(issuer.requests.load(Ordering::SeqCst), 4);
    assert_eq!(issuer.accepted.lock().unwrap()[1], "tok-4");
    assert!(t.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "first-token\n").unwrap();
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let spec = format!(
        "  sinks:\n    - uri: {}\n      auth: {{ bearerTokenFile: {} }}\n",
        sink.url("/"),
        file.display()
    );
    let t =
        TestServer::start_with_subscriptions("", &[("s.yaml", &subscription("s", &spec))]).await;
    assert_eq!(t.post_json(&common::minimal("a")).await.status, 202);
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("authorization"), Some("Bearer first-token"));
    // Kubernetes writes a new projected token; within a second the next request has it.
    std::fs::write(&file, "second-token-longer\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(t.post_json(&common::minimal("b")).await.status, 202);
    let got = sink.wait_for(2, WAIT).await;
    assert_eq!(
        got[1].header("authorization"),
        Some("Bearer second-token-longer")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_sink_sends_its_own_token_and_the_sink_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (sink_token, dls_token) = (dir.path().join("sink"), dir.path().join("dls"));
    std::fs::write(&sink_token, "sink-token\n").unwrap();
    std::fs::write(&dls_token, "dls-token\n").unwrap();
    let refusing = TestSink::start(vec![], Answer::status(400)).await;
    let dls = TestSink::start(vec![], Answer::status(200)).await;
    let spec = format!(
        "  sinks:\n    - uri: {}\n      auth: {{ bearerTokenFile: {} }}\n  delivery:\n    deadLetterSink:\n      uri: {}\n      auth: {{ bearerTokenFile: {} }}\n",
        refusing.url("/"),
        sink_token.display(),
        dls.url("/dead"),
        dls_token.display()
    );
    let t =
        TestServer::start_with_subscriptions("", &[("s.yaml", &subscription("s", &spec))]).await;
    assert_eq!(t.post_json(&common::minimal("d")).await.status, 202);
    let letter = dls.wait_for(1, WAIT).await.remove(0);
    assert_eq!(letter.header("authorization"), Some("Bearer dls-token"));
    assert_eq!(letter.header("ce-id"), Some("d"));
    assert_eq!(
        refusing.received()[0].header("authorization"),
        Some("Bearer sink-token")
    );
}

#[test]
fn check_names_sink_auth_mistakes() {
    let errors = |auth: &str| {
        common::subscription_errors(&format!(
            "  sinks:\n    - uri: http://a/\n      auth:\n{auth}"
        ))
    };
    let has = |errs: &[switchyard::config::ConfigError], key: &str, text: &str| {
        errs.iter()
            .any(|e| e.key == key && e.message.contains(text))
    };
    let e = errors("        oauth2: { clientId: x, clientSecret: y }\n");
    assert!(
        has(&e, "spec.sinks[0].auth.oauth2.tokenUrl", "missing"),
        "{e:?}"
    );
    let e = errors("        oauth2: { tokenUrl: 'http://169.254.169.254/token', clientId: x, clientSecret: y }\n");
    assert!(
        has(&e, "spec.sinks[0].auth.oauth2.tokenUrl", "metadata"),
        "{e:?}"
    );
    let e = errors("        bearerTokenFile: /nonexistent/token\n");
    assert!(
        has(&e, "spec.sinks[0].auth.bearerTokenFile", "cannot read"),
        "{e:?}"
    );
    let e = errors("        bearerTokenFile: /etc/hostname\n        oauth2: {}\n");
    assert!(has(&e, "spec.sinks[0].auth", "one of"), "{e:?}");
}
