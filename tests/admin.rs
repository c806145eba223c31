//! The admin API through real HTTP: subscriptions and lanes, replay of a time range,
//! the stored events, dead letters (list, redeliver, delete), explain, the admin token,
//! and docs/admin-api.yaml against the routes.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::sink::{Answer, TestSink};
use common::{minimal, subscription, wait_until, Backend, TestServer};
use http::Method;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

async fn call(
    t: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", t.server().admin_addr));
    if let Some(tok) = token {
        req = req.header("authorization", format!("Bearer {tok}"));
    }
    let body = body
        .map(|b| serde_json::to_vec(&b).unwrap())
        .unwrap_or_default();
    let resp = client
        .request(
            req.header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

const TOKEN: &str = "admin-secret";

async fn every_admin_endpoint_works_through_http(b: Backend) {
    let sink = TestSink::start(vec![], Answer::status(200)).await;
    let bad = TestSink::start(vec![], Answer::status(400)).await;
    let subs = [
        subscription("notify", &format!("  filter:\n    attributes: {{ type: dev.switchyard.test }}\n  sinks:\n    - uri: {}\n", sink.url("/n"))),
        subscription("refuse", &format!("  filter:\n    filters: [{{ prefix: {{ subject: bad }} }}]\n  sinks:\n    - uri: {}\n  delivery: {{ retry: 0 }}\n", bad.url("/b"))),
    ]
    .concat();
    let mut t = b.start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    t.restart_with(|c| c.admin.token = Some(TOKEN.into())).await;
    // Five events a minute apart (the broker's clock is the test's).
    for i in 1..=5 {
        assert_eq!(t.post_json(&minimal(&format!("e{i}"))).await.status, 202);
        t.clock.advance(Duration::from_secs(60));
    }
    sink.wait_for(5, WAIT).await;

    // Subscriptions and their lanes.
    let (status, list) = call(&t, Method::GET, "/api/v1/subscriptions", Some(TOKEN), None).await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["notify", "refuse"]);
    // The sink has the five; the lane counts each once it has read the answer.
    let one = common::eventually("the lane to count five deliveries", async || {
        let (status, one) = call(
            &t,
            Method::GET,
            "/api/v1/subscriptions/notify",
            Some(TOKEN),
            None,
        )
        .await;
        assert_eq!(status, 200);
        (one["lanes"][0]["delivered"] == 5).then_some(one)
    })
    .await;
    assert_eq!(one["filter"]["attributes"]["type"], "dev.switchyard.test");
    assert_eq!(one["matched"], 5);
    let lane = &one["lanes"][0];
    assert_eq!(lane["sink"], sink.url("/n"));
    assert_eq!(lane["delivered"], 5);
    assert_eq!(
        call(
            &t,
            Method::GET,
            "/api/v1/subscriptions/nope",
            Some(TOKEN),
            None
        )
        .await
        .0,
        404
    );

    // Stored events, with paging.
    let (status, events) = call(
        &t,
        Method::GET,
        "/api/v1/brokers/default/events?after=1&limit=2",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let seqs: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3]);
    assert_eq!(events[0]["event"]["id"], "e2");
    assert_eq!(events[0]["arrival"], "2026-01-01T00:01:00Z");
    let (status, e4) = call(
        &t,
        Method::GET,
        "/api/v1/brokers/default/events/4",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!((status, e4["event"]["id"].as_str()), (200, Some("e4")));
    assert_eq!(
        call(
            &t,
            Method::GET,
            "/api/v1/brokers/default/events/99",
            Some(TOKEN),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        call(
            &t,
            Method::GET,
            "/api/v1/brokers/nope/events",
            Some(TOKEN),
            None
        )
        .await
        .0,
        404
    );

    // Replay of a time range: events that arrived from minute 2 until minute 4.
    let body = json!({"from": "2026-01-01T00:02:00Z", "to": "2026-01-01T00:04:00Z"});
    assert_eq!(
        call(
            &t,
            Method::POST,
            "/api/v1/subscriptions/notify/replay",
            None,
            Some(body.clone())
        )
        .await
        .0,
        401,
        "mutating calls need the token"
    );
    let (status, replayed) = call(
        &t,
        Method::POST,
        "/api/v1/subscriptions/notify/replay",
        Some(TOKEN),
        Some(body),
    )
    .await;
    assert_eq!(status, 202, "{replayed}");
    assert_eq!(replayed["queued"], 2);
    let got = sink.wait_for(7, WAIT).await;
    let mut again: Vec<&str> = got[5..].iter().filter_map(|r| r.header("ce-id")).collect();
    again.sort();
    assert_eq!(
        again,
        ["e3", "e4"],
        "the replayed range, in any order (the lane is unordered)"
    );

    // Dead letters: list, redeliver (after the sink is fixed), delete.
    let mut refused = minimal("x1");
    refused["subject"] = "bad-1".into();
    assert_eq!(t.post_json(&refused).await.status, 202);
    refused["id"] = "x2".into();
    assert_eq!(t.post_json(&refused).await.status, 202);
    wait_until("two dead letters", async || {
        call(
            &t,
            Method::GET,
            "/api/v1/deadletters?subscription=refuse",
            Some(TOKEN),
            None,
        )
        .await
        .1
        .as_array()
        .map_or(0, Vec::len)
            == 2
    })
    .await;
    let (_, letters) = call(
        &t,
        Method::GET,
        "/api/v1/deadletters?subscription=refuse",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(letters[0]["lastStatus"], 400);
    assert_eq!(letters[0]["event"]["id"], "x1");
    assert_eq!(
        call(
            &t,
            Method::GET,
            "/api/v1/deadletters?subscription=notify",
            Some(TOKEN),
            None
        )
        .await
        .1,
        json!([])
    );
    let (first, second) = (
        letters[0]["id"].as_u64().unwrap(),
        letters[1]["id"].as_u64().unwrap(),
    );
    bad.set_default(Answer::status(200));
    let (status, _) = call(
        &t,
        Method::POST,
        &format!("/api/v1/deadletters/{first}/redeliver"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let got = bad.wait_for(3, WAIT).await;
    assert_eq!(got[2].header("ce-id"), Some("x1"));
    assert_eq!(
        call(
            &t,
            Method::DELETE,
            &format!("/api/v1/deadletters/{second}"),
            None,
            None
        )
        .await
        .0,
        401
    );
    assert_eq!(
        call(
            &t,
            Method::DELETE,
            &format!("/api/v1/deadletters/{second}"),
            Some(TOKEN),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        call(
            &t,
            Method::DELETE,
            &format!("/api/v1/deadletters/{second}"),
            Some(TOKEN),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        call(&t, Method::GET, "/api/v1/deadletters", Some(TOKEN), None)
            .await
            .1,
        json!([])
    );

    // Explain.
    let mut probe = minimal("p");
    probe["subject"] = "bad-probe".into();
    let (status, verdicts) = call(
        &t,
        Method::POST,
        "/api/v1/explain",
        Some(TOKEN),
        Some(probe),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(verdicts[0]["subscription"], "notify");
    assert_eq!(verdicts[0]["matched"], true);
    assert_eq!(
        verdicts[1]["parts"][0],
        json!({"part": "filters[0]", "result": "match"})
    );
    assert_eq!(
        call(
            &t,
            Method::POST,
            "/api/v1/explain",
            Some(TOKEN),
            Some(json!({"id": 1}))
        )
        .await
        .0,
        400
    );

    // Health and metrics stay open.
    assert_eq!(
        call(&t, Method::GET, "/readyz", Some(TOKEN), None).await.0,
        200
    );
}

#[test]
fn the_openapi_document_describes_exactly_the_routes() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/admin-api.yaml"),
    )
    .unwrap();
    let docs = switchyard::config::yaml::parse(&text).unwrap();
    let mut documented = Vec::new();
    if let switchyard::config::yaml::Value::Map(top) = &docs[0].value {
        let paths = &top.iter().find(|(k, _, _)| k == "paths").unwrap().2;
        if let switchyard::config::yaml::Value::Map(paths) = &paths.value {
            for (path, _, ops) in paths {
                if let switchyard::config::yaml::Value::Map(ops) = &ops.value {
                    for (method, _, _) in ops {
                        documented.push((method.to_ascii_uppercase(), path.clone()));
                    }
                }
            }
        }
    }
    let mut routes: Vec<(String, String)> = switchyard::admin::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    routes.sort();
    assert_eq!(documented, routes);
}

#[tokio::test]
async fn readyz_names_what_the_server_is_waiting_for() {
    use std::sync::Arc;
    use switchyard::admin::{self, Admin, Health};
    let health = Arc::new(Health::default());
    let admin = Arc::new(Admin {
        health: health.clone(),
        metrics: switchyard::metrics::Metrics::new(),
        token: None,
        metrics_public: true,
        health_public: true,
        api: Default::default(),
        scrape: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(admin::serve(admin, listener, stop.clone()));
    let get = |path: &'static str| async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let resp = client
            .get(format!("http://{addr}{path}").parse().unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    };
    health.set_not_ready("opening the log in /var/lib/switchyard");
    assert_eq!(
        get("/readyz").await,
        (
            503,
            "not ready: opening the log in /var/lib/switchyard\n".to_string()
        )
    );
    // The process is alive all along.
    assert_eq!(get("/livez").await.0, 200);
    health.set_not_ready("loading subscriptions");
    assert_eq!(get("/readyz").await.1, "not ready: loading subscriptions\n");
    health.set_ready();
    assert_eq!(get("/readyz").await, (200, "ready\n".to_string()));
    stop.cancel();
}

#[tokio::test]
async fn the_admin_token_guards_every_api_call_and_public_opens_metrics_and_health() {
    let mut t = TestServer::start("").await;
    t.restart_with(|c| c.admin.token = Some(TOKEN.into())).await;
    let status = |r: (u16, Value)| r.0;
    for path in ["/api/v1/subscriptions", "/api/v1/brokers/default/events"] {
        assert_eq!(
            status(call(&t, Method::GET, path, None, None).await),
            401,
            "{path} without the token"
        );
        assert_eq!(
            status(call(&t, Method::GET, path, Some("wrong"), None).await),
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            status(call(&t, Method::GET, path, Some(TOKEN), None).await),
            200,
            "{path} with the token"
        );
    }
    // By default (`public: [metrics, health]`) scrapes and probes need no token.
    for path in ["/metrics", "/livez", "/readyz"] {
        assert_eq!(
            status(call(&t, Method::GET, path, None, None).await),
            200,
            "{path}"
        );
    }
    // With nothing public, they need it too.
    t.restart_with(|c| {
        c.admin.token = Some(TOKEN.into());
        c.admin.metrics_public = false;
        c.admin.health_public = false;
    })
    .await;
    for path in ["/metrics", "/livez", "/readyz"] {
        assert_eq!(
            status(call(&t, Method::GET, path, None, None).await),
            401,
            "{path}"
        );
        assert_eq!(
            status(call(&t, Method::GET, path, Some(TOKEN), None).await),
            200,
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_admin_token_is_accepted_whatever_the_case_of_the_bearer_scheme() {
    // RFC 9110 §11.1: the auth scheme is case-insensitive, as the ingress already had it.
    let mut t = TestServer::start("").await;
    t.restart_with(|c| c.admin.token = Some(TOKEN.into())).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let status = |authorization: String| {
        let request = http::Request::get(format!(
            "http://{}/api/v1/subscriptions",
            t.server().admin_addr
        ))
        .header("authorization", authorization)
        .body(Full::default())
        .unwrap();
        let sent = client.request(request);
        async move { sent.await.unwrap().status().as_u16() }
    };
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR", "Bearer  "] {
        assert_eq!(status(format!("{scheme} {TOKEN}")).await, 200, "{scheme:?}");
    }
    for refused in [
        format!("Basic {TOKEN}"),
        format!("Bearer{TOKEN}"),
        format!("BEARER {TOKEN}x"),
    ] {
        assert_eq!(status(refused.clone()).await, 401, "{refused:?}");
    }
}

common::backends! {
    every_admin_endpoint_works_through_http,
}
