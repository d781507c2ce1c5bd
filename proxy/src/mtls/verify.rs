//! The server check for ISTIO_MUTUAL: the chain must lead to the mesh root and the leaf
//! must name one SPIFFE ID of our trust domain. Mesh certificates carry no DNS names, so
//! webpki's name check (which would refuse every one of them) is the part replaced;
//! signatures, validity and key usage are webpki's.

use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

use super::identity::PeerIdentity;

#[derive(Debug)]
pub struct MeshServerVerifier {
    roots: Arc<rustls::RootCertStore>,
    trust_domain: String,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl MeshServerVerifier {
    pub fn new(roots: Arc<rustls::RootCertStore>, trust_domain: &str) -> MeshServerVerifier {
        MeshServerVerifier {
            roots,
            trust_domain: trust_domain.to_string(),
            algorithms: super::provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        if PeerIdentity::from_cert(end_entity, &self.trust_domain).is_none() {
            return Err(Error::InvalidCertificate(CertificateError::NotValidForName));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
