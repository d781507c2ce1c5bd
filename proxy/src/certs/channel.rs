//! TLS to mixr's gRPC port (`--mixr-ca`): mixr's server certificate must chain to the
//! given roots, and the sidecar proves itself with its workload certificate.
//!
//! - The client certificate is read from the [`CertStore`] at each handshake
//!   ([`StoreResolver`]), so a renewed certificate is used by the next connection without
//!   a restart. While none is held, the handshake goes on without one: mixr then refuses
//!   Check and Report (UNAUTHENTICATED) and the sidecar's fail policy applies. Such a
//!   connection ends at its first use after a certificate arrives ([`Provisional`]), so
//!   the channel reconnects with it instead of being refused for as long as it lives.
//! - `--mixr-ca mesh` trusts the root of the workload certificate's chain (its last PEM),
//!   also read at each handshake ([`MeshRootVerifier`]).
//! - The certificate authority's client connects with server authentication only: it has
//!   no certificate yet, and the CA authenticates it by its bootstrap token.
//! - The server name checked is the host of mixr's address (a DNS name or an IP).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

use super::{CertStore, WorkloadCert};

/// Where the roots for mixr's server certificate come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MixrCa {
    File(PathBuf),
    /// The root of the workload certificate's chain.
    Mesh,
}

impl MixrCa {
    /// `mesh`, or a file name (`./mesh` for a file of that name).
    pub fn parse(text: &str) -> MixrCa {
        if text == "mesh" { MixrCa::Mesh } else { MixrCa::File(PathBuf::from(text)) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("--mixr-ca {}: {reason}", .path.display())]
    Roots { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Tls(rustls::Error),
}

/// The TLS settings of every connection to mixr: one per process, shared by the workers.
#[derive(Debug, Clone)]
pub struct MixrTls {
    /// With the workload certificate as client certificate (Check, Report).
    mutual: Arc<rustls::ClientConfig>,
    /// Without a client certificate (the certificate authority's client).
    server_only: Arc<rustls::ClientConfig>,
    /// Whether the roots are the mesh root of the workload certificate.
    pub mesh: bool,
    certs: Arc<CertStore>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The roots in a PEM file.
fn file_roots(path: &Path) -> Result<rustls::RootCertStore, ChannelError> {
    let fail = |reason: String| ChannelError::Roots { path: path.to_path_buf(), reason };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    roots_in(&pem).map_err(fail)
}

fn roots_in(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    let mut store = rustls::RootCertStore::empty();
    for cert in certs {
        store.add(cert).map_err(|e| format!("not a usable root: {e}"))?;
    }
    Ok(store)
}

impl MixrTls {
    /// Reads the roots (a file at once; the mesh root at each handshake).
    pub fn new(ca: &MixrCa, certs: Arc<CertStore>) -> Result<MixrTls, ChannelError> {
        let provider = provider();
        let verifier: Arc<dyn ServerCertVerifier> = match ca {
            MixrCa::File(path) => {
                WebPkiServerVerifier::builder_with_provider(Arc::new(file_roots(path)?), provider.clone())
                    .build()
                    .map_err(|e| ChannelError::Roots { path: path.clone(), reason: e.to_string() })?
            }
            MixrCa::Mesh => Arc::new(MeshRootVerifier { certs: certs.clone(), provider: provider.clone() }),
        };
        let config = |client_cert: bool| -> Result<Arc<rustls::ClientConfig>, ChannelError> {
            let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(ChannelError::Tls)?
                .dangerous()
                // Either webpki against the roots, or that per handshake (`MeshRootVerifier`).
                .with_custom_certificate_verifier(verifier.clone());
            let mut config = if client_cert {
                builder.with_client_cert_resolver(Arc::new(StoreResolver::new(certs.clone(), provider.clone())))
            } else {
                builder.with_no_client_auth()
            };
            config.alpn_protocols = vec![b"h2".to_vec()];
            // A resumed session would keep the identity of the certificate it began with;
            // after a renewal, each new connection must show the new one. Connections to
            // mixr are few and long-lived, so full handshakes cost nothing that matters.
            config.resumption = rustls::client::Resumption::disabled();
            Ok(Arc::new(config))
        };
        Ok(MixrTls { mutual: config(true)?, server_only: config(false)?, mesh: *ca == MixrCa::Mesh, certs })
    }

    /// The connector of Check and Report channels (with the workload certificate).
    pub fn connector(&self) -> MixrConnector {
        MixrConnector { config: self.mutual.clone(), certs: Some(self.certs.clone()) }
    }

    /// The connector of the certificate authority's client (no client certificate).
    pub fn ca_connector(&self) -> MixrConnector {
        MixrConnector { config: self.server_only.clone(), certs: None }
    }
}

/// TCP, then TLS, to the host and port of the URI it is asked for: a tonic connector
/// (`Endpoint::connect_with_connector_lazy`).
#[derive(Debug, Clone)]
pub struct MixrConnector {
    config: Arc<rustls::ClientConfig>,
    /// Where the client certificate comes from (none for the CA's client).
    certs: Option<Arc<CertStore>>,
}

/// The host and port of `uri`, and the name the server's certificate must hold (an IP
/// address or a DNS name).
pub fn target(uri: &hyper::Uri) -> io::Result<(String, u16, ServerName<'static>)> {
    let host = uri.host().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in mixr's address"))?;
    // `[::1]` in a URI, `::1` as an address and a name.
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(443);
    let name = ServerName::try_from(host.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: not a server name: {e}")))?;
    Ok((host, port, name))
}

impl tower_service::Service<hyper::Uri> for MixrConnector {
    type Response = TokioIo<Provisional<TlsStream<TcpStream>>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let connector = TlsConnector::from(self.config.clone());
        let certs = self.certs.clone();
        Box::pin(async move {
            let (host, port, name) = target(&uri)?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            // Read before the handshake: a certificate that arrives during it only costs
            // one reconnection.
            let waiting_for = certs.filter(|c| c.current().is_none());
            let tls = connector.connect(name, tcp).await?;
            Ok(TokioIo::new(Provisional { inner: tls, waiting_for }))
        })
    }
}

/// A connection to mixr, made without a client certificate when it is `waiting_for` one:
/// once the store holds a certificate, its next read or write fails, and the channel
/// connects again, this time with it.
#[derive(Debug)]
pub struct Provisional<T> {
    inner: T,
    waiting_for: Option<Arc<CertStore>>,
}

impl<T> Provisional<T> {
    fn superseded(&self) -> io::Result<()> {
        match &self.waiting_for {
            Some(certs) if certs.current().is_some() => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "a workload certificate arrived: reconnecting to mixr with it",
            )),
            _ => Ok(()),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Provisional<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.superseded()?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Provisional<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.superseded()?;
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.superseded()?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The workload certificate as client certificate, as held at the handshake. The parsed
/// key is kept for the certificate it came from, so repeated handshakes do not parse again.
#[derive(Debug)]
struct StoreResolver {
    certs: Arc<CertStore>,
    provider: Arc<CryptoProvider>,
    parsed: Mutex<Option<(String, Arc<CertifiedKey>)>>,
}

impl StoreResolver {
    fn new(certs: Arc<CertStore>, provider: Arc<CryptoProvider>) -> StoreResolver {
        StoreResolver { certs, provider, parsed: Mutex::new(None) }
    }
}

/// A rustls certified key from a workload certificate: the chain without its root (the
/// server has it; sending it proves nothing) and the key.
fn certified_key(cert: &WorkloadCert, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let mut chain = Vec::with_capacity(cert.chain.len());
    for pem in &cert.chain {
        chain.push(CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("the chain: {e}"))?);
    }
    if chain.len() > 1 {
        chain.pop();
    }
    let key = PrivateKeyDer::from_pem_slice(cert.key.as_bytes()).map_err(|e| format!("the key: {e}"))?;
    let key = provider.key_provider.load_private_key(key).map_err(|e| format!("the key: {e}"))?;
    Ok(CertifiedKey::new(chain, key))
}

impl ResolvesClientCert for StoreResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let cert = self.certs.current()?;
        let mut parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((serial, key)) = parsed.as_ref()
            && *serial == cert.serial
        {
            return Some(key.clone());
        }
        match certified_key(&cert, &self.provider) {
            Ok(key) => {
                let key = Arc::new(key);
                *parsed = Some((cert.serial.clone(), key.clone()));
                Some(key)
            }
            Err(e) => {
                // Not expected (the certificate was checked when it arrived); mixr will
                // refuse the calls, and this says why.
                tracing::warn!(error = %e, "the workload certificate cannot be used for TLS to mixr");
                None
            }
        }
    }

    fn has_certs(&self) -> bool {
        self.certs.current().is_some()
    }
}

/// Verifies mixr's certificate against the root of the workload certificate held at the
/// handshake; with none held there is no mesh root to trust yet, and the handshake fails.
#[derive(Debug)]
struct MeshRootVerifier {
    certs: Arc<CertStore>,
    provider: Arc<CryptoProvider>,
}

/// The mesh root of a workload certificate: the last PEM of its chain.
fn mesh_roots(cert: &WorkloadCert) -> Result<rustls::RootCertStore, String> {
    let root = cert.chain.last().ok_or("an empty chain")?;
    roots_in(root.as_bytes())
}

impl ServerCertVerifier for MeshRootVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = self.certs.current().ok_or_else(|| {
            rustls::Error::General("--mixr-ca mesh: no workload certificate yet, so no mesh root to trust".into())
        })?;
        let roots = mesh_roots(&cert).map_err(|e| rustls::Error::General(format!("the mesh root: {e}")))?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("the mesh root: {e}")))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_of_mixrs_address() {
        let name = |u: &str| target(&u.parse().unwrap()).map(|(h, p, n)| (h, p, format!("{n:?}")));
        let (host, port, n) = name("http://127.0.0.1:9091").unwrap();
        assert_eq!((host.as_str(), port), ("127.0.0.1", 9091));
        assert!(n.contains("IpAddress"), "{n}");
        let (host, _, n) = name("http://mixr.istio-system.svc:9091").unwrap();
        assert_eq!(host, "mixr.istio-system.svc");
        assert!(n.contains("DnsName"), "{n}");
        let (host, port, _) = name("http://[::1]:9091").unwrap();
        assert_eq!((host.as_str(), port), ("::1", 9091));
        assert!(name("/no/host").is_err());
    }

    #[tokio::test]
    async fn a_connection_without_a_certificate_ends_when_one_arrives() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let store = Arc::new(CertStore::default());
        let (a, mut b) = tokio::io::duplex(64);
        let mut conn = Provisional { inner: a, waiting_for: Some(store.clone()) };
        conn.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        b.read_exact(&mut buf).await.unwrap();
        store.install(WorkloadCert {
            chain: Vec::new(),
            key: String::new(),
            spiffe: String::new(),
            serial: "01".into(),
            not_before: std::time::SystemTime::now(),
            not_after: std::time::SystemTime::now(),
        });
        assert_eq!(conn.write_all(b"ping").await.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(conn.read(&mut buf).await.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
        let (a, _b) = tokio::io::duplex(64);
        let mut with_cert = Provisional { inner: a, waiting_for: None };
        with_cert.write_all(b"ping").await.unwrap();
    }

    #[test]
    fn mixr_ca_mesh_is_a_keyword() {
        assert_eq!(MixrCa::parse("mesh"), MixrCa::Mesh);
        assert_eq!(MixrCa::parse("./mesh"), MixrCa::File("./mesh".into()));
    }

    #[test]
    fn bad_root_files_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();
        let store = Arc::new(CertStore::default());
        for path in [junk, dir.path().join("missing.pem")] {
            let e = MixrTls::new(&MixrCa::File(path.clone()), store.clone()).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--mixr-ca {}: ", path.display())), "{e}");
        }
        assert!(MixrTls::new(&MixrCa::Mesh, store).unwrap().mesh);
    }

    #[test]
    fn the_client_certificate_follows_the_store() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let workload = |serial: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let leaf =
                rcgen::CertificateParams::new(vec!["w.example".into()]).unwrap().signed_by(&key, &issuer).unwrap();
            WorkloadCert {
                chain: vec![leaf.pem(), ca_cert.pem()],
                key: key.serialize_pem(),
                spiffe: String::new(),
                serial: serial.into(),
                not_before: std::time::SystemTime::now(),
                not_after: std::time::SystemTime::now(),
            }
        };
        let store = Arc::new(CertStore::default());
        let resolver = StoreResolver::new(store.clone(), provider());
        assert!(!resolver.has_certs());
        assert!(resolver.resolve(&[], &[]).is_none(), "none held: no client certificate");
        let first = workload("01");
        store.install(first.clone());
        let key = resolver.resolve(&[], &[]).unwrap();
        assert_eq!(key.cert.len(), 1, "the leaf, not the root");
        assert_eq!(key.cert[0], CertificateDer::from_pem_slice(first.chain[0].as_bytes()).unwrap());
        assert!(Arc::ptr_eq(&key, &resolver.resolve(&[], &[]).unwrap()), "parsed once per certificate");
        let second = workload("02");
        store.install(second.clone());
        let key = resolver.resolve(&[], &[]).unwrap();
        assert_eq!(key.cert[0], CertificateDer::from_pem_slice(second.chain[0].as_bytes()).unwrap(), "renewed");
        assert_eq!(mesh_roots(&second).unwrap().len(), 1);
    }
}
