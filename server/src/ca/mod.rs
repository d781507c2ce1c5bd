//! mixr's certificate authority, in Citadel's role: it signs SPIFFE workload certificates
//! (`spiffe://TRUST_DOMAIN/ns/NS/sa/SA`) for callers that prove which service account they
//! are ([`tokens`]), over Istio's `CreateCertificate` API (`grpc::ca`).
//!
//! - The root key and certificate come from files (`--ca-cert`, `--ca-key`), or a
//!   self-signed root (ECDSA P-256, ten years) is made at first start and kept in the data
//!   directory (`ca/root-cert.pem`, `ca/root-key.pem`, the key readable by mixr only).
//! - A certificate names exactly the identity the caller's token stands for: the CSR must
//!   ask for that SPIFFE ID and nothing else, and is signed with its own key (proof of
//!   possession). What else the CSR asks (subject, usages) is not copied: a workload
//!   certificate is always a non-CA leaf for TLS clients and servers.
//! - Lifetime: what the caller asks, at most `--workload-cert-ttl` (24 h), backdated one
//!   minute for clock skew.

pub mod tokens;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use tokens::ServiceAccount;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("root certificate: {0}")]
    Root(String),
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(String),
    #[error("the request asks for {asked}, but the caller is {allowed}")]
    WrongIdentity { asked: String, allowed: String },
    #[error("signing failed: {0}")]
    Signing(String),
}

/// Where the root comes from.
#[derive(Debug, Clone)]
pub enum RootSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Made once and kept in this directory.
    Generated(PathBuf),
}

pub struct Authority {
    trust_domain: String,
    max_ttl: Duration,
    root_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("trust_domain", &self.trust_domain).field("max_ttl", &self.max_ttl).finish()
    }
}

const ROOT_CERT: &str = "root-cert.pem";
const ROOT_KEY: &str = "root-key.pem";

impl Authority {
    pub fn open(source: &RootSource, trust_domain: &str, max_ttl: Duration) -> Result<Authority, CaError> {
        let (cert_pem, key_pem) = match source {
            RootSource::Files { cert, key } => (read(cert)?, read(key)?),
            RootSource::Generated(dir) => {
                let (cert, key) = (dir.join(ROOT_CERT), dir.join(ROOT_KEY));
                if !cert.exists() || !key.exists() {
                    make_root(dir, trust_domain)?;
                }
                (read(&cert)?, read(&key)?)
            }
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Root(format!("the key: {e}")))?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| CaError::Root(format!("the certificate: {e}")))?;
        Ok(Authority { trust_domain: trust_domain.to_string(), max_ttl, root_pem: cert_pem, issuer })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Signs `csr_pem` for `account`: the leaf and the root, PEM.
    pub fn sign(
        &self,
        csr_pem: &str,
        account: &ServiceAccount,
        requested: Option<Duration>,
    ) -> Result<Vec<String>, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::BadCsr(e.to_string()))?;
        let allowed = account.spiffe_id(&self.trust_domain);
        let asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        if asked != [allowed.as_str()] {
            return Err(CaError::WrongIdentity { asked: asked.join(", "), allowed });
        }
        let ttl = requested.filter(|d| !d.is_zero()).map_or(self.max_ttl, |d| d.min(self.max_ttl));
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::try_from(ttl).map_err(|e| CaError::Signing(e.to_string()))?;
        params.subject_alt_names =
            vec![SanType::URI(allowed.clone().try_into().map_err(|e: rcgen::Error| CaError::Signing(e.to_string()))?)];
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&csr.public_key, &self.issuer).map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(vec![leaf.pem(), self.root_pem.clone()])
    }
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|e| CaError::Root(format!("{}: {e}", path.display())))
}

/// Makes a self-signed root in `dir`, its key readable by the owner only.
fn make_root(dir: &Path, trust_domain: &str) -> Result<(), CaError> {
    let fail = |e: &dyn std::fmt::Display| CaError::Root(format!("making a root in {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
    let key = KeyPair::generate().map_err(|e| fail(&e))?;
    let mut params = CertificateParams::default();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(3650);
    params.distinguished_name.push(DnType::OrganizationName, trust_domain);
    params.distinguished_name.push(DnType::CommonName, "mixr root CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).map_err(|e| fail(&e))?;
    let key_path = dir.join(ROOT_KEY);
    write_private(&key_path, &key.serialize_pem()).map_err(|e| fail(&e))?;
    std::fs::write(dir.join(ROOT_CERT), cert.pem()).map_err(|e| fail(&e))?;
    tracing::info!(dir = %dir.display(), "made a self-signed root certificate for the mesh");
    Ok(())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(uris: &[&str]) -> (String, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris.iter().map(|u| SanType::URI((*u).to_string().try_into().unwrap())).collect();
        (params.serialize_request(&key).unwrap().pem().unwrap(), key)
    }

    fn account(text: &str) -> ServiceAccount {
        ServiceAccount::parse(text).unwrap()
    }

    #[test]
    fn signs_exactly_the_callers_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::open(
            &RootSource::Generated(dir.path().join("ca")),
            "cluster.local",
            Duration::from_secs(86_400),
        )
        .unwrap();
        let (pem, _) = csr(&["spiffe://cluster.local/ns/default/sa/productpage"]);
        let chain = ca.sign(&pem, &account("default/productpage"), Some(Duration::from_secs(3600))).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], ca.root_pem());
        let (_, leaf) = x509_parser::pem::parse_x509_pem(chain[0].as_bytes()).unwrap();
        let leaf = leaf.parse_x509().unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            "[URI(\"spiffe://cluster.local/ns/default/sa/productpage\")]"
        );
        assert!(!leaf.is_ca());
        let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
        assert_eq!(lifetime, 3600 + 60, "as asked, backdated a minute");

        for wrong in [
            vec!["spiffe://cluster.local/ns/default/sa/reviews"],
            vec!["spiffe://cluster.local/ns/default/sa/productpage", "spiffe://cluster.local/ns/default/sa/reviews"],
            vec!["spiffe://evil.example/ns/default/sa/productpage"],
            vec![],
        ] {
            let (pem, _) = csr(&wrong);
            assert!(
                matches!(ca.sign(&pem, &account("default/productpage"), None), Err(CaError::WrongIdentity { .. })),
                "{wrong:?}"
            );
        }
        assert!(matches!(ca.sign("not a csr", &account("a/b"), None), Err(CaError::BadCsr(_))));
    }

    #[test]
    fn lifetimes_are_capped_and_the_root_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let source = RootSource::Generated(dir.path().join("ca"));
        let ca = Authority::open(&source, "cluster.local", Duration::from_secs(60)).unwrap();
        let (pem, _) = csr(&["spiffe://cluster.local/ns/a/sa/b"]);
        let chain = ca.sign(&pem, &account("a/b"), Some(Duration::from_secs(86_400 * 365))).unwrap();
        let (_, leaf) = x509_parser::pem::parse_x509_pem(chain[0].as_bytes()).unwrap();
        let leaf = leaf.parse_x509().unwrap();
        assert_eq!(leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp(), 120);
        let again = Authority::open(&source, "cluster.local", Duration::from_secs(60)).unwrap();
        assert_eq!(again.root_pem(), ca.root_pem(), "the root made at first start is kept");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca").join(ROOT_KEY)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
