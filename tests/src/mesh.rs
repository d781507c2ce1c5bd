//! A small mesh for mTLS tests: mixr with its CA trusting a token per service account,
//! and sidecars that obtain their workload certificates from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls;

use crate::{Mixr, MixrProxy, ca_token, eventually};

pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub mixr: Mixr,
    /// `ns/sa` → the file holding its bootstrap token.
    tokens: Vec<(String, PathBuf)>,
}

impl Mesh {
    /// mixr on `mixer_config` (Mixer rules), with its CA trusting one token per account.
    pub fn start(accounts: &[&str], mixer_config: &str) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let mut lines = String::new();
        let mut tokens = Vec::new();
        for account in accounts {
            let (token, line) = ca_token(account);
            lines.push_str(&line);
            lines.push('\n');
            let file = dir.path().join(format!("{}.token", account.replace('/', "_")));
            std::fs::write(&file, token).unwrap();
            tokens.push((account.to_string(), file));
        }
        let token_list = dir.path().join("tokens.yaml");
        std::fs::write(&token_list, lines).unwrap();
        let config = dir.path().join("mixer.yaml");
        std::fs::write(&config, mixer_config).unwrap();
        let data = dir.path().join("data");
        let mixr = Mixr::start(
            &[&config],
            &["--ca-tokens", token_list.to_str().unwrap(), "--data-dir", data.to_str().unwrap()],
        );
        Mesh { dir, mixr, tokens }
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    /// The mesh root (PEM) and its key, as mixr generated them in its data directory.
    pub fn root(&self) -> (String, String) {
        let ca = self.dir.path().join("data").join("ca");
        (
            std::fs::read_to_string(ca.join("root-cert.pem")).unwrap(),
            std::fs::read_to_string(ca.join("root-key.pem")).unwrap(),
        )
    }

    /// A sidecar for `account` (`ns/sa`) on `config`, enforcing through mixr, with a
    /// workload certificate; returns once it holds one.
    pub async fn sidecar(&self, account: &str, config: &[&Path], extra: &[&str]) -> MixrProxy {
        let (ns, sa) = account.split_once('/').unwrap();
        let token = &self.tokens.iter().find(|(a, _)| a == account).expect("an account of the mesh").1;
        let mut args = vec![
            "--namespace",
            ns,
            "--service-account",
            sa,
            "--mixr",
            &self.mixr.grpc,
            "--ca-token-file",
            token.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let proxy = MixrProxy::start(config, &args);
        let held = eventually(Duration::from_secs(15), || async { spiffe(&proxy).await.is_some() }).await;
        assert!(held, "{account}: no workload certificate: {}", proxy.logs());
        proxy
    }
}

/// The workload certificate a sidecar holds (its admin `/certs`).
pub async fn certs(proxy: &MixrProxy) -> serde_json::Value {
    let Ok(resp) = reqwest::get(format!("http://{}/certs", proxy.admin)).await else { return serde_json::Value::Null };
    serde_json::from_str(&resp.text().await.unwrap_or_default()).unwrap_or_default()
}

pub async fn spiffe(proxy: &MixrProxy) -> Option<String> {
    certs(proxy).await["spiffe"].as_str().map(str::to_string)
}

/// A date, as (year, month, day).
pub type Ymd = (i32, u8, u8);

/// A client certificate for `spiffe` signed by `issuer_pem`/`issuer_key`, valid between
/// the two dates.
pub fn leaf(
    issuer_pem: &str,
    issuer_key: &str,
    spiffe: &str,
    not_before: Ymd,
    not_after: Ymd,
) -> crate::gateway::Issued {
    let issuer_key = rcgen::KeyPair::from_pem(issuer_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(issuer_pem, issuer_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(spiffe.try_into().unwrap())];
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth, rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let cert = params.signed_by(&key, &issuer).unwrap();
    crate::gateway::Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}

/// Accepts any server certificate: these tests probe the sidecar's check of the client.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// GETs `path` from a sidecar's inbound listener over TLS presenting `client`; the status,
/// or the error (a refused handshake shows here).
pub async fn mtls_get(addr: &str, client: &crate::gateway::Issued, path: &str) -> Result<u16, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(client.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(chain, key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("reviews").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req =
        hyper::Request::get(path).header("host", "reviews").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
    // TLS 1.3 reports a refused client certificate after the handshake, on first read.
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

/// A TCP relay to `target` that keeps every byte it carries, each way: what an on-path
/// observer sees.
pub struct Tap {
    pub addr: std::net::SocketAddr,
    pub upstream_bytes: Arc<std::sync::Mutex<Vec<u8>>>,
    pub downstream_bytes: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Tap {
    pub async fn start(target: String) -> Tap {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up: Arc<std::sync::Mutex<Vec<u8>>> = Default::default();
        let down: Arc<std::sync::Mutex<Vec<u8>>> = Default::default();
        let (u, d) = (up.clone(), down.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else { continue };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (u, d) = (u.clone(), d.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        u.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = sw.shutdown().await;
                });
                tokio::spawn(async move {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        d.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = cw.shutdown().await;
                });
            }
        });
        Tap { addr, upstream_bytes: up, downstream_bytes: down }
    }
}
