//! TLS configs built from PEM files. The server side (the ingress listener): a
//! certificate chain and key, and optionally a CA that every client must present a
//! certificate from (mutual TLS); a client without an acceptable certificate is turned
//! away during the handshake, before HTTP begins. The client side (deliveries to
//! sinks): a CA file as the only roots, or the system's and webpki's, and an optional
//! client certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// The certificates of a PEM file, at least one; errors name the file as `what`.
pub fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Builds the server config, offering HTTP/2 and HTTP/1.1 by ALPN.
/// Makes ring the process's default TLS provider, as every config this module builds
/// names it, for the libraries that take the default (the NATS client): with two
/// providers compiled in, as a test build's dev-dependencies bring, rustls would not
/// choose and would panic.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs(cert_file, "certificate file")?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("private key {}: {e}", key_file.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca, "client CA file")? {
                roots
                    .add(c)
                    .map_err(|e| format!("client CA file {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("client CA file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "certificate {} and key {}: {e}",
            cert_file.display(),
            key_file.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// `connector` with TLS by `tls` for `https` URIs (HTTP/1.1 or HTTP/2, as the server
/// offers), plain for `http` ones.
pub fn https_or_http<C>(
    tls: rustls::ClientConfig,
    connector: C,
) -> hyper_rustls::HttpsConnector<C> {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(connector)
}

/// Builds a rustls client config: the given CA file's certificates as the only roots
/// (or the system's plus webpki's), and a client certificate when given.
pub fn client_config(
    ca_file: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for c in read_certs(path, "CA file")? {
                roots
                    .add(c)
                    .map_err(|e| format!("CA file {}: {e}", path.display()))?;
            }
        }
        None => {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs(cert, "certificate")?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("private key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
    };
    // ALPN (h2, http/1.1) is set by the connector builder from enable_http1/enable_http2.
    Ok(config)
}
