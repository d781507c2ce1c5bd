//! TLS on mixr's gRPC port (`--tls-cert`, `--tls-key`, `--client-ca`), and the one place
//! where callers without a mesh certificate are turned away.
//!
//! - The handshake: mixr's certificate; with a client CA, a certificate the client offers
//!   must chain to it (or the handshake fails), but offering none is allowed. A sidecar
//!   that holds no certificate yet must still reach `CreateCertificate`, which
//!   authenticates it by its bootstrap token instead.
//! - [`ClientCertLayer`]: every other method needs a verified client certificate; a call
//!   without one is answered UNAUTHENTICATED before any service sees it, logged (peer,
//!   method, never the payload) and counted (`mixr_grpc_unauthenticated_total`).
//! - [`Conn`]: a connection of the gRPC port, plain or TLS, whose connect info says
//!   whether the peer proved a client certificate.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::http;
use prometheus::IntCounterVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::listen::{Guarded, Throttled};

/// The one method a caller without a client certificate may call: it is how a workload
/// gets its first certificate (authenticated by its bootstrap token).
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// Methods counted by name in `mixr_grpc_unauthenticated_total`; any other path is
/// counted as `other`, so a caller cannot grow the metric's label set.
const KNOWN_METHODS: &[&str] = &[
    "/istio.mixer.v1.Mixer/Check",
    "/istio.mixer.v1.Mixer/Report",
    "/envoy.service.auth.v3.Authorization/Check",
    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// What the refused caller is told.
pub const REFUSAL: &str = "a client certificate from the mesh is required";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCa {
    /// Roots read from this file (PEM).
    File(PathBuf),
    /// The root of mixr's own certificate authority: workload certificates it issued.
    Mesh,
}

impl ClientCa {
    /// `mesh`, or a file name (`./mesh` for a file of that name).
    pub fn parse(text: &str) -> ClientCa {
        if text == "mesh" { ClientCa::Mesh } else { ClientCa::File(PathBuf::from(text)) }
    }
}

#[derive(Debug, Clone)]
pub struct TlsOptions {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<ClientCa>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--{flag} {}: {reason}", .path.display())]
    File { flag: &'static str, path: PathBuf, reason: String },
    #[error("--client-ca mesh: the certificate authority is off (give --ca-tokens, or a --client-ca file)")]
    NoMesh,
    #[error("--tls-cert {} with --tls-key {}: {reason}", .cert.display(), .key.display())]
    Config { cert: PathBuf, key: PathBuf, reason: String },
}

fn file_error(flag: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File { flag, path: path.to_path_buf(), reason: reason.to_string() }
}

/// Every certificate in a PEM file; an error when there is none.
fn certificates(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = std::fs::read(path).map_err(|e| file_error(flag, path, e))?;
    certificates_in(&text).map_err(|reason| file_error(flag, path, reason))
}

fn certificates_in(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

/// Roots for client certificates.
fn roots(flag: &'static str, path: &Path, pem: &[u8]) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in certificates_in(pem).map_err(|reason| file_error(flag, path, reason))? {
        store.add(cert).map_err(|e| file_error(flag, path, format!("not a usable root: {e}")))?;
    }
    Ok(store)
}

/// The server's TLS config from the flags' files. `mesh_root` is the CA's root (PEM), when
/// the CA is on. Errors name the flag and the file.
pub fn server_config(opts: &TlsOptions, mesh_root: Option<&str>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates("tls-cert", &opts.cert)?;
    let key_pem = std::fs::read(&opts.key).map_err(|e| file_error("tls-key", &opts.key, e))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| file_error("tls-key", &opts.key, format!("no PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config { cert: opts.cert.clone(), key: opts.key.clone(), reason: e.to_string() })?;
    let builder = match &opts.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = match ca {
                ClientCa::File(path) => {
                    let pem = std::fs::read(path).map_err(|e| file_error("client-ca", path, e))?;
                    roots("client-ca", path, &pem)?
                }
                ClientCa::Mesh => {
                    let root = mesh_root.ok_or(TlsError::NoMesh)?;
                    roots("client-ca", Path::new("mesh"), root.as_bytes())?
                }
            };
            // Verified when offered, not required: see the module comment. The gate is
            // `ClientCertLayer`.
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config {
                    cert: opts.cert.clone(),
                    key: opts.key.clone(),
                    reason: format!("client roots: {e}"),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| TlsError::Config {
        cert: opts.cert.clone(),
        key: opts.key.clone(),
        reason: e.to_string(),
    })?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Who is on the other end of a gRPC connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub tcp: TcpConnectInfo,
    /// The peer proved a client certificate that chains to the client CA (the verifier
    /// fails the handshake of any other offered certificate).
    pub client_cert: bool,
}

/// A gRPC connection, plain or TLS.
pub enum Conn {
    Plain(Guarded),
    Tls(Box<tokio_rustls::server::TlsStream<Guarded>>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conn::Plain(g) => f.debug_tuple("Plain").field(g).finish(),
            Conn::Tls(t) => f.debug_tuple("Tls").field(t.get_ref().0).finish(),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            Conn::Plain(g) => PeerInfo { tcp: g.connect_info(), client_cert: false },
            Conn::Tls(t) => {
                let (io, session) = t.get_ref();
                PeerInfo {
                    tcp: io.connect_info(),
                    client_cert: session.peer_certificates().is_some_and(|c| !c.is_empty()),
                }
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(g) => Pin::new(g).poll_read(cx, buf),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(g) => Pin::new(g).poll_write(cx, data),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(g) => Pin::new(g).poll_write_vectored(cx, bufs),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(g) => g.is_write_vectored(),
            Conn::Tls(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(g) => Pin::new(g).poll_flush(cx),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(g) => Pin::new(g).poll_shutdown(cx),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The gRPC port's connections: as accepted, or after a TLS handshake each (run
/// concurrently, each within `handshake_timeout`, so a slow peer delays no other).
/// Failed handshakes are logged and counted here; the server never sees them.
pub fn incoming(
    mut accepted: mpsc::Receiver<io::Result<Guarded>>,
    tls: Option<(Arc<rustls::ServerConfig>, Duration)>,
    handshake_errors: prometheus::IntCounter,
) -> mpsc::Receiver<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let throttle = Arc::new(Throttled::default());
        while let Some(conn) = accepted.recv().await {
            let Ok(conn) = conn else { continue };
            let Some((config, timeout)) = &tls else {
                if tx.send(Ok(Conn::Plain(conn))).await.is_err() {
                    return;
                }
                continue;
            };
            let (acceptor, timeout, tx) = (TlsAcceptor::from(config.clone()), *timeout, tx.clone());
            let (throttle, errors) = (throttle.clone(), handshake_errors.clone());
            tokio::spawn(async move {
                let peer = conn.connect_info().remote_addr();
                let error = match tokio::time::timeout(timeout, acceptor.accept(conn)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(Conn::Tls(Box::new(stream)))).await;
                        return;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no TLS handshake within the timeout".to_string(),
                };
                errors.inc();
                // A scanner or a plaintext client can fail handshakes as fast as it
                // connects: at most one line a second.
                if throttle.ready() {
                    tracing::warn!(peer = ?peer, error = %error, "gRPC TLS handshake failed");
                }
            });
        }
    });
    rx
}

/// Counters of callers turned away on the gRPC port.
#[derive(Debug, Clone)]
pub struct Refusals {
    pub unauthenticated: IntCounterVec,
    pub handshake_errors: prometheus::IntCounter,
}

impl Refusals {
    pub fn register(registry: &prometheus::Registry) -> Refusals {
        let unauthenticated = IntCounterVec::new(
            prometheus::Opts::new(
                "mixr_grpc_unauthenticated_total",
                "gRPC calls refused for want of a mesh client certificate, by method.",
            ),
            &["method"],
        )
        .expect("valid metric");
        let handshake_errors = prometheus::IntCounter::new(
            "mixr_grpc_tls_handshake_errors_total",
            "TLS handshakes on the gRPC port that failed (a plaintext client, an untrusted client certificate, a timeout).",
        )
        .expect("valid metric");
        for c in [
            Box::new(unauthenticated.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(handshake_errors.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                tracing::error!(error = %e, "TLS metric not registered");
            }
        }
        Refusals { unauthenticated, handshake_errors }
    }
}

/// The label of `path` in `mixr_grpc_unauthenticated_total`.
pub fn method_label(path: &str) -> &'static str {
    KNOWN_METHODS.iter().find(|m| **m == path).copied().unwrap_or("other")
}

/// Whether a call to `path` from `peer` may proceed when client certificates are required.
pub fn admitted(path: &str, peer: Option<&PeerInfo>) -> bool {
    path == CREATE_CERTIFICATE || peer.is_some_and(|p| p.client_cert)
}

/// Wraps every service of the gRPC port: when `require` is set, refuses calls without a
/// verified client certificate (except [`CREATE_CERTIFICATE`]). Either way, it gives the
/// services the TCP connect info under the type tonic's `remote_addr()` reads.
#[derive(Debug, Clone)]
pub struct ClientCertLayer {
    pub require: Option<Refusals>,
}

impl<S> tower_layer::Layer<S> for ClientCertLayer {
    type Service = ClientCertService<S>;

    fn layer(&self, inner: S) -> ClientCertService<S> {
        ClientCertService { inner, require: self.require.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct ClientCertService<S> {
    inner: S,
    require: Option<Refusals>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower_service::Service<http::Request<tonic::body::Body>> for ClientCertService<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let peer = req.extensions().get::<PeerInfo>().cloned();
        if let Some(refusals) = &self.require
            && !admitted(req.uri().path(), peer.as_ref())
        {
            let method = method_label(req.uri().path());
            refusals.unauthenticated.with_label_values(&[method]).inc();
            // The path is logged as the caller sent it only when it is a known method:
            // an arbitrary path is the caller's text, bounded like the metric.
            tracing::warn!(
                peer = ?peer.as_ref().and_then(|p| p.tcp.remote_addr()),
                method,
                "gRPC call refused: no client certificate from the mesh"
            );
            let status = tonic::Status::unauthenticated(REFUSAL);
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        if let Some(p) = peer {
            req.extensions_mut().insert(p.tcp);
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(client_cert: bool) -> PeerInfo {
        PeerInfo { tcp: TcpConnectInfo { local_addr: None, remote_addr: None }, client_cert }
    }

    #[test]
    fn only_certificate_requests_pass_without_a_client_certificate() {
        assert!(admitted(CREATE_CERTIFICATE, None));
        assert!(admitted(CREATE_CERTIFICATE, Some(&peer(false))));
        for path in KNOWN_METHODS.iter().copied().chain(["/x.Y/Z", "", "/istio.v1.auth.IstioCertificateService/Other"])
        {
            assert!(!admitted(path, None), "{path}");
            assert!(!admitted(path, Some(&peer(false))), "{path}");
            assert!(admitted(path, Some(&peer(true))), "{path}");
        }
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label("/istio.mixer.v1.Mixer/Check"), "/istio.mixer.v1.Mixer/Check");
        assert_eq!(method_label("/evil/AAAAAAAA"), "other");
        assert_eq!(method_label(CREATE_CERTIFICATE), "other");
    }

    #[test]
    fn client_ca_mesh_is_a_keyword() {
        assert_eq!(ClientCa::parse("mesh"), ClientCa::Mesh);
        assert_eq!(ClientCa::parse("./mesh"), ClientCa::File("./mesh".into()));
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn bad_files_are_named_with_their_flag() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        let cert_file = write(dir.path(), "cert.pem", &cert.pem());
        let key_file = write(dir.path(), "key.pem", &key.serialize_pem());
        let junk = write(dir.path(), "junk.pem", "hello");
        let opts = |cert: &Path, key: &Path, client_ca: Option<ClientCa>| TlsOptions {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca,
        };
        assert!(server_config(&opts(&cert_file, &key_file, None), None).is_ok());
        let root = cert.pem();
        assert!(server_config(&opts(&cert_file, &key_file, Some(ClientCa::Mesh)), Some(&root)).is_ok());

        let missing = dir.path().join("missing.pem");
        let err = |o: TlsOptions| server_config(&o, None).unwrap_err().to_string();
        let e = err(opts(&missing, &key_file, None));
        assert!(e.starts_with("--tls-cert ") && e.contains("missing.pem"), "{e}");
        let e = err(opts(&junk, &key_file, None));
        assert!(e.starts_with("--tls-cert ") && e.contains("no PEM certificate"), "{e}");
        let e = err(opts(&cert_file, &junk, None));
        assert!(e.starts_with("--tls-key ") && e.contains("junk.pem"), "{e}");
        let e = err(opts(&cert_file, &key_file, Some(ClientCa::File(junk.clone()))));
        assert!(e.starts_with("--client-ca ") && e.contains("junk.pem"), "{e}");
        let e = err(opts(&cert_file, &key_file, Some(ClientCa::Mesh)));
        assert!(e.contains("--ca-tokens"), "{e}");
        // A key that is not the certificate's.
        let other = rcgen::KeyPair::generate().unwrap();
        let other_file = write(dir.path(), "other.pem", &other.serialize_pem());
        let e = err(opts(&cert_file, &other_file, None));
        assert!(e.starts_with("--tls-cert "), "{e}");
    }
}
