//! TLS termination for the gateway's HTTPS servers, with rustls (ring provider).
//!
//! Each server with `tls.mode` gets a rustls `ServerConfig` of its own, built at config
//! load (or when its files change) from the PEM files it names: the certificate chain and
//! key, and for MUTUAL the CAs that client certificates must chain to. A connection reads
//! the client hello first and takes the config of the first server on its port whose hosts
//! match the SNI ([`pick`]); so one port serves several hosts with their own certificates
//! and modes. A connection keeps the config it started with: replacing certificates never
//! drops one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::gateway::{Server, ServerTls, TlsMode};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {error}")]
    File { what: &'static str, path: PathBuf, error: String },
    #[error("{what} {path}: no PEM {kind} in it")]
    Empty { what: &'static str, path: PathBuf, kind: &'static str },
    #[error("serverCertificate and privateKey do not go together: {0}")]
    Key(rustls::Error),
    #[error("caCertificates {path}: {error}")]
    Roots { path: PathBuf, error: String },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = |error: String| TlsError::File { what, path: path.to_path_buf(), error };
    let pem = std::fs::read(path).map_err(|e| file(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| file(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.to_path_buf(), kind: "certificate" });
    }
    Ok(certs)
}

/// The rustls config of one server, from its files. Offers h2 and http/1.1 (ALPN).
pub fn server_config(tls: &ServerTls) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let missing = |what: &'static str| TlsError::File { what, path: PathBuf::new(), error: "not given".into() };
    let cert_path = tls.server_certificate.as_deref().ok_or_else(|| missing("serverCertificate"))?;
    let key_path = tls.private_key.as_deref().ok_or_else(|| missing("privateKey"))?;
    let chain = certs("serverCertificate", cert_path)?;
    let key_pem = std::fs::read(key_path).map_err(|e| TlsError::File {
        what: "privateKey",
        path: key_path.to_path_buf(),
        error: e.to_string(),
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError::Empty { what: "privateKey", path: key_path.to_path_buf(), kind: "private key" }
        }
        e => TlsError::File { what: "privateKey", path: key_path.to_path_buf(), error: e.to_string() },
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Key)?;
    let builder = match tls.mode {
        Some(TlsMode::Mutual) => {
            let ca_path = tls.ca_certificates.as_deref().ok_or_else(|| missing("caCertificates"))?;
            let mut roots = rustls::RootCertStore::empty();
            for ca in certs("caCertificates", ca_path)? {
                roots.add(ca).map_err(|e| TlsError::Roots { path: ca_path.to_path_buf(), error: e.to_string() })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Roots { path: ca_path.to_path_buf(), error: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(TlsError::Key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server (index among `servers`) a client hello naming `sni` goes to: the first TLS
/// server whose hosts match it, or the first TLS server when the hello names none.
pub fn pick<'s>(servers: impl Iterator<Item = &'s Server>, sni: Option<&str>) -> Option<usize> {
    servers.enumerate().find(|(_, s)| s.protocol.is_tls() && s.takes_sni(sni)).map(|(i, _)| i)
}

/// What the files of every TLS server are now, to see when one changes: their names,
/// sizes, modification times and contents.
pub fn files_fingerprint<'s>(servers: impl Iterator<Item = &'s Server>) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    for tls in servers.filter_map(|s| s.tls.as_ref()) {
        for p in [&tls.server_certificate, &tls.private_key, &tls.ca_certificates].into_iter().flatten() {
            p.hash(&mut h);
            std::fs::read(p).unwrap_or_default().hash(&mut h);
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn missing_or_bad_files_are_errors_naming_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example.com".into()]).unwrap().self_signed(&key).unwrap();
        let good_cert = write(dir.path(), "tls.crt", &cert.pem());
        let good_key = write(dir.path(), "tls.key", &key.serialize_pem());
        let other = rcgen::KeyPair::generate().unwrap();
        let other_key = write(dir.path(), "other.key", &other.serialize_pem());
        let garbage = write(dir.path(), "garbage.pem", "not pem at all");
        let tls = |cert: &Path, key: &Path, ca: Option<&Path>| ServerTls {
            https_redirect: false,
            mode: Some(if ca.is_some() { TlsMode::Mutual } else { TlsMode::Simple }),
            server_certificate: Some(cert.to_path_buf()),
            private_key: Some(key.to_path_buf()),
            ca_certificates: ca.map(Path::to_path_buf),
        };
        assert!(server_config(&tls(&good_cert, &good_key, None)).is_ok());
        assert!(server_config(&tls(&good_cert, &good_key, Some(&good_cert))).is_ok());
        let err = |t: ServerTls| server_config(&t).unwrap_err().to_string();
        let missing = dir.path().join("missing.crt");
        assert!(err(tls(&missing, &good_key, None)).starts_with(&format!("serverCertificate {}:", missing.display())));
        assert_eq!(
            err(tls(&garbage, &good_key, None)),
            format!("serverCertificate {}: no PEM certificate in it", garbage.display())
        );
        assert_eq!(
            err(tls(&good_cert, &garbage, None)),
            format!("privateKey {}: no PEM private key in it", garbage.display())
        );
        assert!(
            err(tls(&good_cert, &other_key, None)).starts_with("serverCertificate and privateKey do not go together")
        );
        assert!(err(tls(&good_cert, &good_key, Some(&garbage))).starts_with("caCertificates"));
    }
}
