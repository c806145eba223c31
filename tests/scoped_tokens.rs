//! Scoped ingress tokens: a token limited to brokers, event types and sources sends what
//! its scope allows, and anything else is refused with 403 naming the attribute and the
//! scope (a batch whole, naming the index), storing nothing; a plain token still sends
//! anything; `check` names a scoped token's mistakes.

mod common;

use common::TestServer;

const SCOPED: &str = "tekton-only-token";
const PLAIN: &str = "any-event-token";

/// The tokens as a config file writes them.
const TOKENS: &str = "ingress:\n  tokens:\n    - any-event-token\n    - value: tekton-only-token\n      brokers: [ci]\n      types: ['dev.tekton.event.*']\n      sources: ['/apis/*', /tekton]\n";

async fn broker() -> TestServer {
    let tokens = switchyard::config::from_yaml(None, TOKENS, &Default::default())
        .unwrap()
        .ingress
        .tokens;
    let mut t = TestServer::start("brokers: [default, ci]\n").await;
    t.restart_with(|c| c.ingress.tokens = tokens).await;
    t
}

#[test]
fn a_config_file_scopes_a_token() {
    let tokens = switchyard::config::from_yaml(None, TOKENS, &Default::default())
        .unwrap()
        .ingress
        .tokens;
    assert_eq!(tokens.len(), 2);
    assert_eq!((tokens[0].value.as_str(), &tokens[0].scope), (PLAIN, &None));
    let scope = tokens[1].scope.as_ref().unwrap();
    assert_eq!(tokens[1].value, SCOPED);
    assert_eq!(scope.brokers, ["ci"]);
    assert_eq!(scope.types, ["dev.tekton.event.*"]);
    assert_eq!(scope.sources, ["/apis/*", "/tekton"]);
    assert!(
        !format!("{tokens:?}").contains(SCOPED),
        "the value is never printed"
    );
}

fn event(id: &str, ty: &str, source: &str) -> serde_json::Value {
    serde_json::json!({"specversion": "1.0", "id": id, "type": ty, "source": source})
}

async fn post(
    t: &TestServer,
    path: &str,
    token: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let batch = body.is_array();
    let content_type = if batch {
        "application/cloudevents-batch+json"
    } else {
        "application/cloudevents+json"
    };
    let reply = t
        .post(
            path,
            &[
                ("content-type", content_type),
                ("authorization", &format!("Bearer {token}")),
            ],
            serde_json::to_vec(body).unwrap(),
        )
        .await;
    (reply.status.as_u16(), reply.json())
}

#[tokio::test]
async fn a_scoped_token_sends_what_its_scope_allows_and_nothing_else() {
    let t = broker().await;
    let tekton = event(
        "1",
        "dev.tekton.event.taskrun.started.v1",
        "/apis///namespaces/ci//run",
    );
    let (status, body) = post(&t, "/brokers/ci", SCOPED, &tekton).await;
    assert_eq!(status, 202, "{body}");
    let exact = event("2", "dev.tekton.event.pipelinerun.failed.v1", "/tekton");
    assert_eq!(post(&t, "/brokers/ci", SCOPED, &exact).await.0, 202);

    // Another broker.
    let (status, body) = post(&t, "/", SCOPED, &tekton).await;
    assert_eq!(status, 403);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("broker 'default'"),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("its brokers: ci"),
        "{body}"
    );
    // Another type.
    let (status, body) = post(
        &t,
        "/brokers/ci",
        SCOPED,
        &event("3", "com.example.deploy", "/tekton"),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["attribute"], "type");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("dev.tekton.event.*"),
        "{body}"
    );
    // Another source: a prefix only where the scope says `*`.
    let (status, body) = post(
        &t,
        "/brokers/ci",
        SCOPED,
        &event("4", "dev.tekton.event.x", "/tekton/more"),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["attribute"], "source");
    // One event out of scope in a batch refuses the batch, naming its index.
    let batch = serde_json::json!([
        event("5", "dev.tekton.event.a", "/tekton"),
        event("6", "dev.tekton.event.b", "/tekton"),
        event("7", "dev.tekton.event.c", "/elsewhere"),
    ]);
    let (status, body) = post(&t, "/brokers/ci", SCOPED, &batch).await;
    assert_eq!(status, 403);
    assert_eq!(
        (&body["attribute"], &body["index"]),
        (&"source".into(), &2.into())
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("batch event 2: "),
        "{body}"
    );

    // A plain token sends anything, anywhere.
    assert_eq!(
        post(&t, "/", PLAIN, &event("8", "com.example.deploy", "/x"))
            .await
            .0,
        202
    );
    assert_eq!(post(&t, "/brokers/ci", PLAIN, &batch).await.0, 202);
    // A wrong token is still 401.
    assert_eq!(post(&t, "/brokers/ci", "nope", &tekton).await.0, 401);

    // Nothing refused was stored: ci holds 1, 2 and the plain token's batch.
    let ids: Vec<String> = t
        .records("ci")
        .await
        .iter()
        .map(|r| r.event.id().to_string())
        .collect();
    assert_eq!(ids, ["1", "2", "5", "6", "7"]);
    let ids: Vec<String> = t
        .records("default")
        .await
        .iter()
        .map(|r| r.event.id().to_string())
        .collect();
    assert_eq!(ids, ["8"]);
}

#[test]
fn check_names_a_scoped_tokens_mistakes() {
    let errors = |yaml: &str| {
        switchyard::config::from_yaml(None, yaml, &Default::default())
            .expect_err("refused")
            .0
    };
    let e = errors("ingress:\n  tokens:\n    - brokers: [ci]\n");
    assert!(
        e.iter()
            .any(|e| e.key == "ingress.tokens[0]" && e.message.contains("needs its value")),
        "{e:?}"
    );
    let e = errors("ingress:\n  tokens:\n    - value: t\n      kinds: [x]\n");
    assert!(
        e.iter().any(|e| e.key == "ingress.tokens[0].kinds"
            && e.line == 4
            && e.message.contains("unknown field")),
        "{e:?}"
    );
    let e = errors("ingress:\n  tokens:\n    - value: 'has space'\n      types: [x]\n");
    assert!(
        e.iter()
            .any(|e| e.key == "ingress.tokens[0].value" && e.message.contains("bearer token")),
        "{e:?}"
    );
    let e = errors("ingress:\n  tokens:\n    - value: t\n      types: x\n");
    assert!(
        e.iter()
            .any(|e| e.key == "ingress.tokens[0].types" && e.message.contains("list")),
        "{e:?}"
    );
}
