//! Mutual TLS between sidecars, with the workload certificate mixr's CA issued
//! (`certs`): Istio's ISTIO_MUTUAL.
//!
//! - [`identity`]: the SPIFFE identity a peer certificate names (`source.principal`).
//! - [`mode`]: which inbound traffic a workload takes (STRICT, PERMISSIVE, DISABLE), from
//!   PeerAuthentication and Istio 1.4's authentication Policy, selected at config load.
//! - [`accept`]: an inbound connection: a TLS ClientHello is told from plaintext by its
//!   first byte, so PERMISSIVE serves both on one port.
//! - [`upstream`]: DestinationRule `tls` for outbound connections (ISTIO_MUTUAL, MUTUAL,
//!   SIMPLE; DISABLE stays plaintext).
//! - [`verify`]: peers must chain to the mesh root and name a SPIFFE ID of our trust
//!   domain; a server's DNS name means nothing in the mesh.
//!
//! [`Mesh`] builds rustls configs from the certificate in force and rebuilds them when
//! renewal installs a new one; each handshake takes the configs current then, so a
//! renewal never drops a connection and the next handshake already uses the new
//! certificate.

pub mod accept;
pub mod identity;
pub mod mode;
pub mod upstream;
pub mod verify;

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::certs::{CertStore, WorkloadCert};

pub use identity::PeerIdentity;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MtlsError {
    #[error("no workload certificate yet")]
    NoCertificate,
    #[error("the workload certificate expired")]
    Expired,
    #[error("the workload certificate is unusable: {0}")]
    Unusable(String),
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configs of one workload certificate.
struct Built {
    cert: Arc<WorkloadCert>,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

/// The sidecar's side of the mesh: its certificate store and trust domain.
pub struct Mesh {
    certs: Arc<CertStore>,
    pub trust_domain: String,
    built: ArcSwapOption<Built>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

impl Mesh {
    pub fn new(certs: Arc<CertStore>, trust_domain: impl Into<String>) -> Mesh {
        Mesh { certs, trust_domain: trust_domain.into(), built: ArcSwapOption::empty() }
    }

    /// The configs for the certificate in force, built once per certificate.
    fn built(&self) -> Result<Arc<Built>, MtlsError> {
        let cert = self.certs.current().ok_or(MtlsError::NoCertificate)?;
        if cert.not_after <= SystemTime::now() {
            return Err(MtlsError::Expired);
        }
        if let Some(b) = self.built.load_full()
            && Arc::ptr_eq(&b.cert, &cert)
        {
            return Ok(b);
        }
        let built = Arc::new(build(cert, &self.trust_domain)?);
        self.built.store(Some(built.clone()));
        Ok(built)
    }

    /// Whether mTLS can be spoken now, and if not, why.
    pub fn ready(&self) -> Result<(), MtlsError> {
        self.built().map(|_| ())
    }

    /// For inbound handshakes: our certificate, and a client certificate required that
    /// chains to the mesh root.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, MtlsError> {
        self.built().map(|b| b.server.clone())
    }

    /// For ISTIO_MUTUAL upstreams: our certificate, and a server that chains to the mesh
    /// root with a SPIFFE ID of the trust domain.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, MtlsError> {
        self.built().map(|b| b.client.clone())
    }
}

fn build(cert: Arc<WorkloadCert>, trust_domain: &str) -> Result<Built, MtlsError> {
    let unusable = |e: &dyn std::fmt::Display| MtlsError::Unusable(e.to_string());
    let chain = cert
        .chain
        .iter()
        .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(&e))?;
    let root = chain.last().cloned().ok_or_else(|| MtlsError::Unusable("an empty chain".into()))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).map_err(|e| unusable(&e))?;
    let roots = Arc::new(roots);
    let key = || PrivateKeyDer::from_pem_slice(cert.key.as_bytes()).map_err(|e| unusable(&e));
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| unusable(&e))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable(&e))?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain.clone(), key()?)
        .map_err(|e| unusable(&e))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let verifier = verify::MeshServerVerifier::new(roots, trust_domain);
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key()?)
        .map_err(|e| unusable(&e))?;
    Ok(Built { cert, server: Arc::new(server), client: Arc::new(client) })
}

/// An inbound request's verified mTLS peer, carried as a request extension from the
/// connection to the handlers.
#[derive(Debug, Clone)]
pub struct Peer(pub Arc<PeerIdentity>);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A workload certificate for `spiffe` from a new CA, valid for an hour.
    fn workload_cert(spiffe: &str) -> WorkloadCert {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.subject_alt_names = vec![rcgen::SanType::URI(spiffe.try_into().unwrap())];
        leaf.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = leaf.signed_by(&key, &issuer).unwrap();
        WorkloadCert {
            chain: vec![leaf.pem(), ca_cert.pem()],
            key: key.serialize_pem(),
            spiffe: spiffe.into(),
            serial: "1".into(),
            not_before: SystemTime::now() - Duration::from_secs(60),
            not_after: SystemTime::now() + Duration::from_secs(3600),
        }
    }

    /// One exchange from `client` to `server`; how the client's handshake went.
    async fn exchange(server: &Mesh, client: &Mesh) -> rustls::HandshakeKind {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config().unwrap());
        let serve = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(sock).await.unwrap();
            let peer = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
            tls.write_all(b"ok").await.unwrap();
            tls.shutdown().await.unwrap();
            PeerIdentity::from_cert(&peer, "cluster.local").unwrap()
        });
        let connector = tokio_rustls::TlsConnector::from(client.client_config().unwrap());
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("reviews").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ok");
        assert_eq!(serve.await.unwrap().principal, "cluster.local/ns/default/sa/sleep");
        tls.get_ref().1.handshake_kind().unwrap()
    }

    #[tokio::test]
    async fn sidecars_resume_sessions_and_take_a_renewed_certificate_at_the_next_handshake() {
        let cert = workload_cert("spiffe://cluster.local/ns/default/sa/sleep");
        let mesh = || {
            let store = Arc::new(CertStore::default());
            store.install(cert.clone());
            Mesh::new(store, "cluster.local")
        };
        let (server, client) = (mesh(), mesh());
        assert_eq!(exchange(&server, &client).await, rustls::HandshakeKind::Full);
        assert_eq!(exchange(&server, &client).await, rustls::HandshakeKind::Resumed, "the second connection resumes");
        // A renewal builds new configs: the next handshake is a full one with the new certificate.
        client.certs.install(cert.clone());
        assert_eq!(exchange(&server, &client).await, rustls::HandshakeKind::Full);
        let none = Mesh::new(Arc::new(CertStore::default()), "cluster.local");
        assert_eq!(none.ready(), Err(MtlsError::NoCertificate));
        let mut expired = cert;
        expired.not_after = SystemTime::now() - Duration::from_secs(1);
        none.certs.install(expired);
        assert_eq!(none.ready(), Err(MtlsError::Expired));
    }
}
