//! `mixr-proxy --role gateway` for tests: started on free loopback ports, certificates
//! made with rcgen (a CA, server certificates for some hosts, client certificates with a
//! SPIFFE identity), and an HTTPS client that names any SNI and may present a certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::binary;

/// A running gateway. Killed on drop if still running.
pub struct MixrGateway {
    child: Child,
    pub admin: String,
    pub stats: String,
    _dir: tempfile::TempDir,
    addr_file: PathBuf,
    pub log: PathBuf,
}

impl MixrGateway {
    /// Starts `mixr-proxy --role gateway` on free ports with `labels` (`istio=ingressgateway`)
    /// and waits until every server port in `ports` listens (at most 20 s).
    pub fn start(config: &[&Path], ports: &[u16], extra: &[&str]) -> MixrGateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr_file = dir.path().join("addrs");
        let log = dir.path().join("gateway.log");
        let mut cmd = Command::new(binary("mixr-proxy"));
        cmd.args(["--role", "gateway", "--gateway-bind", "127.0.0.1", "--gateway-ephemeral-ports"]);
        cmd.args(["--admin-addr", "127.0.0.1:0", "--stats-addr", "127.0.0.1:0", "--worker-threads", "2"]);
        cmd.args(["--workload", "istio-ingressgateway", "--namespace", "istio-system"]);
        cmd.arg("--addr-file").arg(&addr_file);
        for c in config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(extra).stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log file"));
        cmd.env("RUST_LOG", "info,mixr_proxy=debug");
        let child = cmd.spawn().expect("start mixr-proxy --role gateway");
        let mut gw = MixrGateway { child, admin: String::new(), stats: String::new(), _dir: dir, addr_file, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(t) = std::fs::read_to_string(&gw.addr_file) {
                let field = |k: &str| t.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).map(str::to_string);
                if let (Some(a), Some(s)) = (field("admin"), field("stats"))
                    && ports.iter().all(|p| field(&format!("gateway.{p}")).is_some())
                {
                    gw.admin = a;
                    gw.stats = s;
                    return gw;
                }
            }
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!("gateway exited with {status}: {}", gw.logs());
            }
            assert!(Instant::now() < deadline, "gateway did not listen in time: {}", gw.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where the server port `port` listens now, if it does.
    pub fn port(&self, port: u16) -> Option<SocketAddr> {
        let t = std::fs::read_to_string(&self.addr_file).ok()?;
        t.lines().find_map(|l| l.strip_prefix(&format!("gateway.{port}="))).and_then(|a| a.parse().ok())
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        self.port(port).unwrap_or_else(|| panic!("gateway port {port} not listening: {}", self.logs()))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.stats)).await.unwrap().text().await.unwrap()
    }
}

impl Drop for MixrGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A certificate authority of our own.
pub struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

/// A certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).unwrap();
        Ca { pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// A server certificate for `hosts`.
    pub fn server(&self, hosts: &[&str]) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// A client certificate with a SPIFFE URI SAN (`spiffe://` + `identity`).
    pub fn client(&self, identity: &str) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "client");
        params.subject_alt_names = vec![rcgen::SanType::URI(format!("spiffe://{identity}").try_into().unwrap())];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

/// What an HTTPS exchange gave.
#[derive(Debug)]
pub struct HttpsAnswer {
    pub status: u16,
    pub body: String,
    /// The protocol ALPN settled.
    pub alpn: Option<String>,
    /// The leaf certificate the server presented (DER).
    pub server_cert: Vec<u8>,
}

/// A TLS connection to the gateway.
pub type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Connects over TLS to `addr`, naming `sni`, trusting `ca_pem`, offering `alpn`,
/// presenting `client` if given.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    ca_pem: &str,
    client: Option<&Issued>,
    alpn: &[&str],
) -> Result<Tls, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match client {
        Some(c) => {
            let chain = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
            let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())
}

/// GETs `path` over TLS from `addr`, naming `sni` (and `host` in the Host field), trusting
/// `ca_pem`, offering `alpn`, presenting `client` if given. Errors are the handshake's or
/// the exchange's, as text.
#[allow(clippy::too_many_arguments)]
pub async fn https_get(
    addr: SocketAddr,
    sni: &str,
    host: &str,
    path: &str,
    ca_pem: &str,
    client: Option<&Issued>,
    alpn: &[&str],
    headers: &[(&str, &str)],
) -> Result<HttpsAnswer, String> {
    let tls = tls_connect(addr, sni, ca_pem, client, alpn).await?;
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
    let server_cert = session.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    let io = hyper_util::rt::TokioIo::new(tls);
    let mut req = hyper::Request::get(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = if alpn.as_deref() == Some("h2") {
        let uri = format!("https://{host}{path}");
        let req = req.uri(uri).body(Empty::<Bytes>::new()).unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let req = req.header("host", host).body(Empty::<Bytes>::new()).unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(HttpsAnswer { status, body: String::from_utf8_lossy(&body).into_owned(), alpn, server_cert })
}

/// Writes `text` to `dir/name` atomically (a rename), as a secret mount would change.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    p
}
