//! DestinationRule `tls` for outbound connections: ISTIO_MUTUAL with the workload
//! certificate ([`super::Mesh`]); MUTUAL and SIMPLE with the files the rule names, read
//! when the cluster is built (config load); DISABLE (or no `tls`) stays plaintext.

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::{Mesh, provider};
use crate::config::{ClientTls, ClientTlsMode};

/// Where the system's CA bundle is on Debian and most distributions: SIMPLE without
/// `caCertificates` verifies against it.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug)]
pub enum UpstreamTls {
    Mesh {
        server_name: ServerName<'static>,
        sans: Vec<String>,
    },
    Files {
        config: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
        sans: Vec<String>,
    },
    /// Files that could not be used: connections fail, saying this.
    Broken(String),
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("mTLS (ISTIO_MUTUAL): {0}")]
    Mesh(#[from] super::MtlsError),
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
    #[error("the server's certificate names none of subjectAltNames {0:?}")]
    SubjectAltNames(Vec<String>),
    #[error("TLS settings unusable: {0}")]
    Broken(String),
}

impl UpstreamTls {
    /// The TLS of connections to `host`, or `None` for plaintext.
    pub fn new(tls: &ClientTls, host: &str) -> Option<UpstreamTls> {
        if tls.mode == ClientTlsMode::Disable {
            return None;
        }
        // A destination whose name cannot be sent as SNI still gets TLS, never plaintext:
        // the mesh verifier does not read the name; the others then fail, saying why.
        let name = tls.sni.as_deref().unwrap_or(host);
        let server_name = match ServerName::try_from(name.to_string()) {
            Ok(n) => n,
            Err(_) if tls.mode == ClientTlsMode::IstioMutual => {
                ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
            }
            Err(e) => return Some(UpstreamTls::Broken(format!("{name:?} is not a server name: {e}"))),
        };
        let sans = tls.subject_alt_names.clone();
        match tls.mode {
            ClientTlsMode::Disable => None,
            ClientTlsMode::IstioMutual => Some(UpstreamTls::Mesh { server_name, sans }),
            ClientTlsMode::Simple | ClientTlsMode::Mutual => Some(match files_config(tls) {
                Ok(config) => UpstreamTls::Files { config, server_name, sans },
                Err(e) => UpstreamTls::Broken(e),
            }),
        }
    }

    pub fn is_mesh(&self) -> bool {
        matches!(self, UpstreamTls::Mesh { .. })
    }

    /// Whether a connection can be made now; else why not, for the 503 the caller gets.
    pub fn ready(&self, mesh: Option<&Mesh>) -> Result<(), UpstreamTlsError> {
        match self {
            UpstreamTls::Mesh { .. } => {
                mesh.ok_or(super::MtlsError::NoCertificate)?.ready()?;
                Ok(())
            }
            UpstreamTls::Files { .. } => Ok(()),
            UpstreamTls::Broken(e) => Err(UpstreamTlsError::Broken(e.clone())),
        }
    }

    /// The handshake over a fresh TCP connection.
    pub async fn connect(&self, mesh: Option<&Mesh>, tcp: TcpStream) -> Result<TlsStream<TcpStream>, UpstreamTlsError> {
        let (config, server_name, sans) = match self {
            UpstreamTls::Mesh { server_name, sans } => {
                (mesh.ok_or(super::MtlsError::NoCertificate)?.client_config()?, server_name, sans)
            }
            UpstreamTls::Files { config, server_name, sans } => (config.clone(), server_name, sans),
            UpstreamTls::Broken(e) => return Err(UpstreamTlsError::Broken(e.clone())),
        };
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(server_name.clone(), tcp)
            .await
            .map_err(UpstreamTlsError::Handshake)?;
        if !sans.is_empty() {
            let names = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(super::identity::uri_and_dns_sans)
                .unwrap_or_default();
            if !names.iter().any(|n| sans.contains(n)) {
                return Err(UpstreamTlsError::SubjectAltNames(sans.clone()));
            }
        }
        Ok(stream)
    }
}

fn read_certs(what: &str, path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn files_config(tls: &ClientTls) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let (what, ca) = match &tls.ca_certificates {
        Some(p) => ("caCertificates", p.clone()),
        None => ("the system CA bundle", SYSTEM_ROOTS.into()),
    };
    for c in read_certs(what, &ca)? {
        roots.add(c).map_err(|e| format!("{what} {}: {e}", ca.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&tls.client_certificate, &tls.private_key) {
        (Some(cert), Some(key)) if tls.mode == ClientTlsMode::Mutual => {
            let chain = read_certs("clientCertificate", cert)?;
            let key_pem = std::fs::read(key).map_err(|e| format!("privateKey {}: {e}", key.display()))?;
            let key =
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("privateKey {}: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("clientCertificate and privateKey: {e}"))?
        }
        (_, _) if tls.mode == ClientTlsMode::Mutual => {
            return Err("MUTUAL needs clientCertificate and privateKey".into());
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(mode: ClientTlsMode, ca: Option<&str>, sni: Option<&str>) -> ClientTls {
        ClientTls {
            mode,
            client_certificate: None,
            private_key: None,
            ca_certificates: ca.map(Into::into),
            subject_alt_names: Vec::new(),
            sni: sni.map(Into::into),
        }
    }

    #[test]
    fn tls_is_never_quietly_dropped_to_plaintext() {
        assert!(UpstreamTls::new(&tls(ClientTlsMode::Disable, None, None), "reviews").is_none());
        assert!(matches!(
            UpstreamTls::new(&tls(ClientTlsMode::IstioMutual, None, None), "not a name!"),
            Some(UpstreamTls::Mesh { .. })
        ));
        let broken = |t: ClientTls| match UpstreamTls::new(&t, "reviews") {
            Some(UpstreamTls::Broken(why)) => why,
            other => panic!("{other:?}"),
        };
        assert!(broken(tls(ClientTlsMode::Simple, Some("/nonexistent/ca.pem"), None)).contains("caCertificates"));
        assert!(broken(tls(ClientTlsMode::Simple, None, Some("not a name!"))).contains("not a server name"));
        let mut mutual = tls(ClientTlsMode::Mutual, Some("/nonexistent/ca.pem"), None);
        mutual.ca_certificates = None;
        assert!(matches!(UpstreamTls::new(&mutual, "reviews"), Some(UpstreamTls::Broken(_))));
    }
}
