//! HTTPS sinks: a sink's own CA and client certificate (mTLS), against a real TLS
//! server that requires a client certificate signed by its CA.

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
    Pki {
        dir,
        ca_pem: ca.pem(),
        server,
    }
}

/// An HTTPS sink that requires a client certificate from `pki`'s CA; counts requests.
async fn https_sink(pki: &Pki) -> (String, Arc<Mutex<usize>>) {
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
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/", listener.local_addr().unwrap());
    let count = Arc::new(Mutex::new(0usize));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, c) = (acceptor.clone(), c.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| {
                        *c.lock().unwrap() += 1;
                        async {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                bytes::Bytes::new(),
                            )))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (url, count)
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
    let defaults = switchyard::config::from_yaml(None, "", &Default::default())
        .unwrap()
        .delivery;
    let text = subscription(
        "s",
        "  sinks:\n    - uri: https://x/\n      tls: { caFile: /nonexistent/ca.pem }\n",
    );
    let errs = switchyard::config::subscriptions::from_sources(
        &[("s.yaml".into(), text)],
        &["default".into()],
        &defaults,
    )
    .unwrap_err()
    .0;
    assert_eq!(errs[0].key, "spec.sinks[0].tls");
    assert_eq!(errs[0].line, 8);
    assert!(
        errs[0].message.contains("/nonexistent/ca.pem"),
        "{}",
        errs[0].message
    );
}
