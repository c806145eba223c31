//! The web console in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, with the fantoccini client) against a running broker. Without the
//! token the console shows nothing but the sign-in; signed in it shows a lane's lag
//! move, redelivers a dead letter by a click (the sink gets it), lists the recent
//! events, replays and explains.
//!
//! The programs are `CHROMEDRIVER` and `CHROMIUM`, else `chromedriver` and `chromium` on
//! `PATH` (Debian's `chromium-driver` and `chromium`; `.ci/run` installs them). Without
//! them the test says so and does nothing, unless `BROWSER_REQUIRED` is set (CI sets
//! it), when it fails.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sink::{Answer, TestSink};
use common::{minimal, subscription, TestServer};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const TOKEN: &str = "console-secret";

/// A program from `var`, else `name` on `PATH`.
fn program(var: &str, name: &str) -> Option<PathBuf> {
    std::env::var_os(var).map(PathBuf::from).or_else(|| {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// chromedriver on a port of its own and a headless Chromium session through it.
struct Browser {
    driver: Child,
    client: Option<Client>,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Option<Browser> {
        let (Some(driver), Some(chromium)) = (
            program("CHROMEDRIVER", "chromedriver"),
            program("CHROMIUM", "chromium"),
        ) else {
            assert!(
                std::env::var_os("BROWSER_REQUIRED").is_none(),
                "BROWSER_REQUIRED is set but chromedriver or chromium is missing"
            );
            eprintln!("skipped: chromedriver and chromium are not on PATH");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        // Headless, and quiet: this machine's network is closed, so nothing that would
        // call out (updates, sync, background fetches) is started.
        let args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chromium, "args": args }),
        );
        // The client's TLS (unused here: the driver is plain HTTP) needs a provider
        // chosen, as the broker's is: ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = ClientBuilder::rustls()
            .expect("a WebDriver client")
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        Some(Browser {
            driver,
            client: Some(client),
            _profile: profile,
        })
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    /// The text of the first element `css` finds once `ok` holds for it; fails naming
    /// `what` after 20 s.
    async fn text_when(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        loop {
            if let Ok(e) = self.client().find(Locator::Css(css)).await {
                if let Ok(text) = e.text().await {
                    if ok(&text) {
                        return text;
                    }
                    last = text;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} ({css}: {last:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.client()
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.client().find(Locator::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    async fn count(&self, css: &str) -> usize {
        self.client()
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |v| v.len())
    }

    async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_needs_the_token_shows_lag_move_and_redelivers_a_dead_letter_by_a_click() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    // A sink that takes requests and never answers: what is routed to it stays in the
    // lane. And one that refuses, until it is fixed.
    let hole = TestSink::black_hole().await;
    let refusing = TestSink::start(vec![], Answer::status(400)).await;
    let subs = [
        subscription("notify", &format!("  filter:\n    attributes: {{ type: dev.switchyard.test }}\n  sinks:\n    - uri: {}\n  delivery: {{ maxInFlight: 1 }}\n", hole.url("/n"))),
        subscription("refuse", &format!("  filter:\n    attributes: {{ type: dev.switchyard.refused }}\n  sinks:\n    - uri: {}\n  delivery: {{ retry: 0 }}\n", refusing.url("/r"))),
    ]
    .concat();
    let mut t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    t.restart_with(|c| c.admin.token = Some(TOKEN.into())).await;
    let console = format!("http://{}/ui/", t.server().admin_addr);
    let lag = format!("tr[data-lane=\"notify {}\"] td.lag", hole.url("/n"));

    // Without the token: the sign-in, and nothing of the broker's.
    browser.client().goto(&console).await.unwrap();
    browser
        .text_when("#login-reason", "the sign-in", |s| {
            s.contains("needs its token")
        })
        .await;
    assert_eq!(
        browser.count("#lanes").await,
        0,
        "lanes shown without the token"
    );
    browser.type_into("#token", "not-the-token").await;
    browser.click("#sign-in").await;
    browser
        .text_when("#login-reason", "the refusal", |s| {
            s.contains("refused this token")
        })
        .await;
    assert_eq!(
        browser.count("#lanes").await,
        0,
        "lanes shown for a wrong token"
    );

    // Signed in: the lanes, live.
    browser.type_into("#token", TOKEN).await;
    browser.click("#sign-in").await;
    browser.text_when(&lag, "the lane", |s| s == "0").await;
    for i in 0..3 {
        assert_eq!(t.post_json(&minimal(&format!("l{i}"))).await.status, 202);
    }
    browser
        .text_when(&lag, "the lane's lag to move", |s| s == "3")
        .await;
    // The lane's state, live: sending, then paused through the API.
    let state = format!("tr[data-lane=\"notify {}\"] td.state", hole.url("/n"));
    browser
        .text_when(&state, "the lane sending", |s| s == "sending")
        .await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let pause = http::Request::post(format!(
        "http://{}/api/v1/subscriptions/notify/pause",
        t.server().admin_addr
    ))
    .header("authorization", format!("Bearer {TOKEN}"))
    .body(http_body_util::Full::new(bytes::Bytes::new()))
    .unwrap();
    assert_eq!(client.request(pause).await.unwrap().status(), 200);
    browser
        .text_when(&state, "the lane paused", |s| s == "paused")
        .await;

    // A dead letter, redelivered by a click once the sink is fixed.
    let mut refused = minimal("dl-1");
    refused["type"] = "dev.switchyard.refused".into();
    assert_eq!(t.post_json(&refused).await.status, 202);
    refusing.wait_for(1, Duration::from_secs(20)).await;
    browser.click("a[href='#deadletters']").await;
    browser
        .text_when("#deadletters tr[data-id]", "the dead letter", |s| {
            s.contains("dl-1") && s.contains("refuse")
        })
        .await;
    refusing.set_default(Answer::status(200));
    browser
        .click("#deadletters tr[data-id] button.redeliver")
        .await;
    let got = refusing.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(got[1].header("ce-id"), Some("dl-1"));
    browser
        .text_when("#status", "the redelivery said", |s| {
            s.contains("redelivered")
        })
        .await;
    browser
        .text_when("#no-dead-letters", "the store emptied", |s| {
            s.contains("empty")
        })
        .await;

    // The recent events, newest first, with their payloads.
    browser.click("a[href='#events']").await;
    browser
        .text_when("#events tr[data-seq]", "the newest event", |s| {
            s.contains("dl-1")
        })
        .await;
    assert_eq!(browser.count("#events tr[data-seq]").await, 4);

    // Replay of a range through a subscription.
    browser.click("a[href='#replay']").await;
    browser.click("#replay-from").await;
    browser.type_into("#replay-from", "1").await;
    browser.type_into("#replay-to", "2").await;
    browser.click("#replay-run").await;
    browser
        .text_when("#status", "the replay's answer", |s| {
            s.contains("2 event(s) queued")
        })
        .await;

    // Explain, part by part.
    browser.click("a[href='#explain']").await;
    browser
        .text_when("#explain-run", "the explain view", |s| s == "Explain")
        .await;
    browser
        .client()
        .execute(
            "document.getElementById('explain-event').value = arguments[0];",
            vec![json!(serde_json::to_string(&refused).unwrap())],
        )
        .await
        .unwrap();
    browser.click("#explain-run").await;
    let verdict = browser
        .text_when(
            "#verdicts li.match[data-subscription='refuse']",
            "the verdict",
            |s| !s.is_empty(),
        )
        .await;
    assert!(verdict.contains("attributes: match"), "{verdict}");
    assert_eq!(
        browser
            .count("#verdicts li.no-match[data-subscription='notify']")
            .await,
        1
    );
    browser.close().await;
}

#[tokio::test]
async fn the_consoles_files_carry_no_data_and_a_policy_that_keeps_them_to_themselves() {
    let mut t = TestServer::start("").await;
    t.restart_with(|c| c.admin.token = Some(TOKEN.into())).await;
    let admin = t.server().admin_addr;
    let get = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let page = get("/ui/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let lower = page.to_ascii_lowercase();
    assert!(
        lower.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{page}"
    );
    assert!(lower.contains("frame-ancestors 'none'"), "{page}");
    assert!(page.contains("<script src=\"/ui/app.js\""), "{page}");
    for path in ["/ui/app.js", "/ui/style.css"] {
        assert!(get(path).await.starts_with("HTTP/1.1 200"), "{path}");
    }
    assert!(get("/ui").await.starts_with("HTTP/1.1 308"));
    // The data stays behind the token.
    assert!(get("/api/v1/brokers").await.starts_with("HTTP/1.1 401"));
}
