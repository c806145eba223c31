//! TLS both ways: HTTPS sinks with their own CA and client certificate (mTLS) against a
//! real TLS server that requires one, and the ingress serving HTTPS, with and without
//! client-certificate authentication.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{minimal, subscription, TestServer};
use http::Response;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use switchyard::log::LaneId;

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    server: (String, String),
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, written as files.
fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issue = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let server = issue(vec!["127.0.0.1".into(), "localhost".into()]);
    let client = issue(vec!["switchyard-client".into()]);
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("client.pem"), &client.0).unwrap();
    std::fs::write(dir.path().join("client-key.pem"), &client.1).unwrap();
    std::fs::write(dir.path().join("server.pem"), &server.0).unwrap();
    std::fs::write(dir.path().join("server-key.pem"), &server.1).unwrap();
    Pki {
        dir,
        ca_pem: ca.pem(),
        server,
    }
}

/// An HTTPS sink that requires a client certificate from `pki`'s CA; counts requests.
async fn https_sink(pki: &Pki) -> (String, Arc<Mutex<usize>>) {
    let (url, count, _) = https_sink_offering(pki, vec![]).await;
    (url, count)
}

/// What an HTTPS sink saw: the HTTP version of each request, and the connections.
#[derive(Default)]
struct Seen {
    versions: Mutex<Vec<http::Version>>,
    connections: std::sync::atomic::AtomicUsize,
}

/// [`https_sink`], offering the ALPN protocols `alpn`.
async fn https_sink_offering(
    pki: &Pki,
    alpn: Vec<Vec<u8>>,
) -> (String, Arc<Mutex<usize>>, Arc<Seen>) {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(pki.server.0.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(pki.server.1.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let mut config = config;
    config.alpn_protocols = alpn;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/", listener.local_addr().unwrap());
    let count = Arc::new(Mutex::new(0usize));
    let seen = Arc::new(Seen::default());
    let (c, sn) = (count.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, c, sn) = (acceptor.clone(), c.clone(), sn.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                sn.connections.fetch_add(1, Ordering::SeqCst);
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        *c.lock().unwrap() += 1;
                        sn.versions.lock().unwrap().push(req.version());
                        async {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                bytes::Bytes::new(),
                            )))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (url, count, seen)
}

#[tokio::test]
async fn a_sink_that_offers_http2_gets_every_event_over_one_http2_connection() {
    let pki = pki();
    let (url, count, seen) =
        https_sink_offering(&pki, vec![b"h2".to_vec(), b"http/1.1".to_vec()]).await;
    let d = pki.dir.path().display();
    let subs = subscription(
        "h2",
        &format!("  sinks:\n    - uri: {url}\n      tls: {{ caFile: {d}/ca.pem, certFile: {d}/client.pem, keyFile: {d}/client-key.pem }}\n  delivery: {{ maxInFlight: 8 }}\n"),
    );
    let t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    let wait_for = |n: usize| {
        let count = count.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while *count.lock().unwrap() < n {
                assert!(Instant::now() < deadline, "not delivered over HTTP/2");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(t.post_json(&minimal("h2-0")).await.status, 202);
    wait_for(1).await;
    for i in 1..40 {
        assert_eq!(t.post_json(&minimal(&format!("h2-{i}"))).await.status, 202);
    }
    wait_for(40).await;
    let versions = seen.versions.lock().unwrap().clone();
    assert_eq!(versions.len(), 40);
    assert!(
        versions.iter().all(|v| *v == http::Version::HTTP_2),
        "{versions:?}"
    );
    assert_eq!(
        seen.connections.load(Ordering::SeqCst),
        1,
        "the requests share the first HTTP/2 connection"
    );
}

#[tokio::test]
async fn a_sink_with_its_own_ca_and_client_certificate_gets_events_over_mtls() {
    let pki = pki();
    let (url, count) = https_sink(&pki).await;
    let d = pki.dir.path().display();
    let subs = [
        subscription("mtls", &format!("  sinks:\n    - uri: {url}\n      tls: {{ caFile: {d}/ca.pem, certFile: {d}/client.pem, keyFile: {d}/client-key.pem }}\n")),
        // Same CA, no client certificate: the server refuses the handshake.
        subscription("no-cert", &format!("  sinks:\n    - uri: {url}x\n      tls: {{ caFile: {d}/ca.pem }}\n  delivery: {{ backoffDelay: 20ms, retry: 2 }}\n")),
    ]
    .concat();
    let t = TestServer::start_with_subscriptions("", &[("s.yaml", &subs)]).await;
    assert_eq!(t.post_json(&minimal("tls-1")).await.status, 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    while *count.lock().unwrap() < 1 {
        assert!(Instant::now() < deadline, "not delivered over mTLS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = t
        .server()
        .delivery
        .stats("default", &LaneId::new("no-cert", format!("{url}x")));
    while refused.dead_lettered.load(Ordering::Relaxed) < 1 {
        assert!(
            Instant::now() < deadline,
            "the handshake without a client certificate was not retried to the end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        refused.attempts.load(Ordering::Relaxed),
        3,
        "connect errors are retried"
    );
    assert_eq!(
        *count.lock().unwrap(),
        1,
        "only the lane with the client certificate got through"
    );
}

#[test]
fn a_missing_ca_file_is_a_config_error_with_its_line() {
    let errs = common::subscription_errors(
        "  sinks:\n    - uri: https://x/\n      tls: { caFile: /nonexistent/ca.pem }\n",
    );
    assert_eq!(errs[0].key, "spec.sinks[0].tls");
    assert_eq!(errs[0].line, 8);
    assert!(
        errs[0].message.contains("/nonexistent/ca.pem"),
        "{}",
        errs[0].message
    );
}

/// Posts one event over HTTPS with `config`; the status, or why the connection failed.
async fn post_https(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
    id: &str,
) -> Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = http::Request::post("/")
        .header("content-type", "application/cloudevents+json")
        .body(Full::new(bytes::Bytes::from(minimal(id).to_string())))
        .unwrap();
    let response = send
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    Ok(response.status().as_u16())
}

fn ingress_tls(pki: &Pki, client_ca: bool) -> switchyard::config::IngressTls {
    let d = pki.dir.path();
    let ca = client_ca.then(|| d.join("ca.pem"));
    let config = switchyard::http::tls::server_config(
        &d.join("server.pem"),
        &d.join("server-key.pem"),
        ca.as_deref(),
    )
    .unwrap();
    switchyard::config::IngressTls {
        cert_file: d.join("server.pem"),
        key_file: d.join("server-key.pem"),
        client_ca_file: ca,
        config: Arc::new(config),
    }
}

#[tokio::test]
async fn the_ingress_serves_https_and_with_a_client_ca_admits_only_its_certificates() {
    use switchyard::http::tls::client_config as tls_config;
    let other = pki(); // an unrelated CA
    let pki = pki();
    let d = pki.dir.path();
    let ca = d.join("ca.pem");
    let mine = (d.join("client.pem"), d.join("client-key.pem"));
    let theirs = (
        other.dir.path().join("client.pem"),
        other.dir.path().join("client-key.pem"),
    );
    let with = |cert: Option<&(std::path::PathBuf, std::path::PathBuf)>| {
        tls_config(Some(&ca), cert.map(|(c, k)| (c.as_path(), k.as_path()))).unwrap()
    };

    // TLS without client certificates: any client that trusts the CA gets in.
    let mut t = TestServer::start("").await;
    t.restart_with(|c| c.ingress.tls = Some(ingress_tls(&pki, false)))
        .await;
    let addr = t.server().ingress_addr;
    assert_eq!(post_https(addr, with(None), "tls").await, Ok(202));
    // Plain HTTP to a TLS listener does not get an answer.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = minimal("plain").to_string();
        let request = format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/cloudevents+json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        assert!(
            !answer.starts_with(b"HTTP/"),
            "a plain HTTP request got an HTTP answer"
        );
    }

    // Mutual TLS: only certificates from the client CA complete the handshake.
    t.restart_with(|c| c.ingress.tls = Some(ingress_tls(&pki, true)))
        .await;
    let addr = t.server().ingress_addr;
    assert_eq!(post_https(addr, with(Some(&mine)), "mtls").await, Ok(202));
    for (what, config) in [
        ("no certificate", with(None)),
        ("another CA's certificate", with(Some(&theirs))),
    ] {
        let got = post_https(addr, config, what).await;
        assert!(got.is_err(), "{what}: {got:?}");
    }
    assert_eq!(
        t.server().log.head("default"),
        Some(2),
        "exactly the two admitted events were stored"
    );
}

#[test]
fn ingress_tls_files_are_checked_at_load_with_their_key() {
    let load = |text: &str| {
        switchyard::config::from_yaml(
            Some(std::path::Path::new("c.yaml")),
            text,
            &Default::default(),
        )
    };
    let errs = load("ingress:\n  tls:\n    certFile: /nonexistent/cert.pem\n")
        .unwrap_err()
        .0;
    assert_eq!(
        (errs[0].key.as_str(), errs[0].line),
        ("ingress.tls.keyFile", 3),
        "{errs:?}"
    );
    let errs = load("ingress:\n  tls:\n    certFile: /nonexistent/cert.pem\n    keyFile: /nonexistent/key.pem\n").unwrap_err().0;
    assert_eq!(
        (errs[0].key.as_str(), errs[0].line),
        ("ingress.tls", 3),
        "{errs:?}"
    );
    assert!(
        errs[0].message.contains("/nonexistent/cert.pem"),
        "{}",
        errs[0].message
    );
    let errs = load("ingress:\n  tls:\n    clientCaFile: /x/ca.pem\n")
        .unwrap_err()
        .0;
    assert_eq!(errs[0].key, "ingress.tls.clientCaFile", "{errs:?}");
}
