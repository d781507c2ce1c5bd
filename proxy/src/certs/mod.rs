//! The workload certificate: a key made here that never leaves the process, a CSR sent to
//! mixr's certificate authority (Istio's `IstioCertificateService`, authenticated by this
//! workload's bootstrap token), and renewal at half the certificate's lifetime.
//!
//! - [`schedule`]: when to renew and how long to wait after a failure (pure, so tests
//!   drive it with any times they like).
//! - [`CertStore`]: the certificate in force, swapped atomically on renewal; TLS code
//!   reads it per handshake, so a renewal never drops a connection.
//! - [`run`]: the renewal loop.
//! - [`channel`]: TLS to mixr (`--mixr-ca`), with this certificate as client certificate.

pub mod channel;
pub mod schedule;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use mixr_proto::istio::v1::auth::IstioCertificateRequest;
use mixr_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;

/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// One issued certificate and its key.
#[derive(Debug, Clone)]
pub struct WorkloadCert {
    /// PEM, leaf first, root last.
    pub chain: Vec<String>,
    /// PEM (PKCS#8).
    pub key: String,
    pub spiffe: String,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// What the sidecar asks for, and with what.
#[derive(Debug, Clone)]
pub struct CertOptions {
    /// mixr's gRPC address (`host:port` or a URL).
    pub ca_addr: String,
    /// The file holding this workload's bootstrap token (re-read at each renewal, so a
    /// rotated token is picked up).
    pub token_file: PathBuf,
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
    pub ttl: Duration,
    /// TLS to the CA (server authentication only), when `--mixr-ca` is given.
    pub tls: Option<channel::MixrTls>,
}

impl CertOptions {
    pub fn spiffe(&self) -> String {
        format!("spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read the bootstrap token {0}: {1}")]
    Token(PathBuf, std::io::Error),
    #[error("cannot make a key or CSR: {0}")]
    Csr(String),
    #[error("cannot reach the CA at {0}: {1}")]
    Connect(String, String),
    #[error("the CA refused: {0}")]
    Refused(String),
    #[error("the CA's answer is not a usable certificate: {0}")]
    BadAnswer(String),
}

/// The certificate in force, if any, and renewal counts.
#[derive(Debug, Default)]
pub struct CertStore {
    current: ArcSwapOption<WorkloadCert>,
    pub renewals: AtomicU64,
    pub failures: AtomicU64,
}

impl CertStore {
    pub fn current(&self) -> Option<Arc<WorkloadCert>> {
        self.current.load_full()
    }

    pub(crate) fn install(&self, cert: WorkloadCert) {
        self.current.store(Some(Arc::new(cert)));
        self.renewals.fetch_add(1, Ordering::Relaxed);
    }
}

/// Asks the CA for a certificate with a new key.
pub async fn obtain(opts: &CertOptions) -> Result<WorkloadCert, CertError> {
    let token = std::fs::read_to_string(&opts.token_file).map_err(|e| CertError::Token(opts.token_file.clone(), e))?;
    let spiffe = opts.spiffe();
    let key = rcgen::KeyPair::generate().map_err(|e| CertError::Csr(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    let uri = spiffe.clone().try_into().map_err(|e: rcgen::Error| CertError::Csr(e.to_string()))?;
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    let csr = params.serialize_request(&key).and_then(|r| r.pem()).map_err(|e| CertError::Csr(e.to_string()))?;
    let connect_error = |e: &dyn std::fmt::Display| CertError::Connect(opts.ca_addr.clone(), e.to_string());
    let endpoint = endpoint(&opts.ca_addr, opts.tls.is_some()).map_err(|e| connect_error(&e))?;
    let channel = match &opts.tls {
        Some(tls) => endpoint.connect_with_connector(tls.ca_connector()).await,
        None => endpoint.connect().await,
    };
    let mut client = IstioCertificateServiceClient::new(channel.map_err(|e| connect_error(&e))?);
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        subject_id: String::new(),
        validity_duration: opts.ttl.as_secs().max(1) as i64,
    });
    let bearer = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| CertError::Token(opts.token_file.clone(), std::io::Error::other("not a header value")))?;
    req.metadata_mut().insert("authorization", bearer);
    req.set_timeout(Duration::from_secs(10));
    let chain = client.create_certificate(req).await.map_err(|s| CertError::Refused(s.message().to_string()))?;
    let chain = chain.into_inner().cert_chain;
    let leaf = chain.first().ok_or_else(|| CertError::BadAnswer("an empty chain".into()))?;
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(leaf.as_bytes()).map_err(|e| CertError::BadAnswer(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| CertError::BadAnswer(e.to_string()))?;
    let time = |t: x509_parser::time::ASN1Time| UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64);
    let names_us = cert.subject_alternative_name().ok().flatten().is_some_and(|san| {
        san.value
            .general_names
            .iter()
            .any(|n| matches!(n, x509_parser::extensions::GeneralName::URI(u) if *u == spiffe))
    });
    if !names_us {
        return Err(CertError::BadAnswer(format!("the certificate does not name {spiffe}")));
    }
    Ok(WorkloadCert {
        serial: cert.raw_serial_as_string(),
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
        chain,
        key: key.serialize_pem(),
        spiffe,
    })
}

/// A tonic endpoint for mixr's address (`host:port`, `http://` or `https://` URL). With
/// `tls`, the connection is made by a TLS connector of ours ([`channel`]): the URI stays
/// `http://` so tonic never tries TLS of its own, and requests name `https` as their scheme.
pub fn endpoint(addr: &str, tls: bool) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    let authority = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))?;
    match format!("https://{authority}").parse::<hyper::Uri>() {
        Ok(origin) if tls => Ok(endpoint.origin(origin)),
        _ => Ok(endpoint),
    }
}

/// Obtains the certificate and renews it at half its lifetime until `shutdown` turns
/// true. Failures are logged and retried with backoff; the certificate in force stays
/// until it expires.
pub async fn run(opts: CertOptions, store: Arc<CertStore>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut failures = 0u32;
    loop {
        let wait = match obtain(&opts).await {
            Ok(cert) => {
                failures = 0;
                let renew = schedule::renew_at(SystemTime::now(), cert.not_after);
                tracing::info!(spiffe = %cert.spiffe, serial = %cert.serial, "workload certificate obtained");
                store.install(cert);
                renew.duration_since(SystemTime::now()).unwrap_or_default()
            }
            Err(e) => {
                failures += 1;
                store.failures.fetch_add(1, Ordering::Relaxed);
                let held = store.current().map(|c| c.not_after);
                let wait = schedule::retry_after(failures, held, SystemTime::now());
                tracing::warn!(error = %e, retry_in = ?wait, "workload certificate not renewed");
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}
