//! Who a peer certificate names: its SPIFFE identity, as Istio's attributes spell it.

use tokio_rustls::rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// A verified mTLS peer: the workload its certificate was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// `cluster.local/ns/default/sa/sleep`: the SPIFFE ID without its scheme, as Istio 1.4
    /// set `source.principal` (and `source.user`).
    pub principal: String,
    pub namespace: String,
    pub service_account: String,
}

impl PeerIdentity {
    /// The identity a SPIFFE URI (`spiffe://TD/ns/NS/sa/SA`) names, when it is in
    /// `trust_domain` and has exactly that shape.
    pub fn from_spiffe(uri: &str, trust_domain: &str) -> Option<PeerIdentity> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (domain, path) = rest.split_once('/')?;
        if !domain.eq_ignore_ascii_case(trust_domain) {
            return None;
        }
        let mut parts = path.split('/');
        let (Some("ns"), Some(ns), Some("sa"), Some(sa), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if ns.is_empty() || sa.is_empty() {
            return None;
        }
        Some(PeerIdentity { principal: rest.to_string(), namespace: ns.to_string(), service_account: sa.to_string() })
    }

    /// The identity of a certificate (already verified against the mesh root) whose URI
    /// SANs name exactly one SPIFFE ID of `trust_domain`. Two would leave it ambiguous
    /// which workload is calling, so that is no identity.
    pub fn from_cert(cert: &CertificateDer<'_>, trust_domain: &str) -> Option<PeerIdentity> {
        let mut found = uri_sans(cert).into_iter().filter(|u| u.starts_with("spiffe://"));
        let first = found.next()?;
        if found.next().is_some() {
            return None;
        }
        PeerIdentity::from_spiffe(&first, trust_domain)
    }
}

/// A certificate's URI SANs.
pub fn uri_sans(cert: &CertificateDer<'_>) -> Vec<String> {
    sans(cert, false)
}

/// A certificate's URI and DNS SANs, as DestinationRule `subjectAltNames` lists them.
pub fn uri_and_dns_sans(cert: &CertificateDer<'_>) -> Vec<String> {
    sans(cert, true)
}

fn sans(cert: &CertificateDer<'_>, dns: bool) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(cert.as_ref()) else { return Vec::new() };
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    GeneralName::DNSName(d) if dns => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A verified client certificate's identity, as Istio's `source.principal`: its SPIFFE
/// URI SAN without the scheme (`cluster.local/ns/default/sa/sleep`), else another URI
/// SAN, else its subject. For certificates of any issuer (the gateway's MUTUAL servers).
pub fn principal(cert: &CertificateDer<'_>) -> Option<String> {
    let uris = uri_sans(cert);
    if let Some(spiffe) = uris.iter().find_map(|u| u.strip_prefix("spiffe://")) {
        return Some(spiffe.to_string());
    }
    if let Some(u) = uris.first() {
        return Some(u.clone());
    }
    let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let subject = cert.subject().to_string();
    (!subject.is_empty()).then_some(subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(uris: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.subject_alt_names = uris.iter().map(|u| rcgen::SanType::URI((*u).try_into().unwrap())).collect();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn spiffe_ids_of_the_trust_domain_with_the_istio_shape_only() {
        let id = PeerIdentity::from_spiffe("spiffe://cluster.local/ns/default/sa/sleep", "cluster.local").unwrap();
        assert_eq!(id.principal, "cluster.local/ns/default/sa/sleep");
        assert_eq!((id.namespace.as_str(), id.service_account.as_str()), ("default", "sleep"));
        for bad in [
            "spiffe://other.domain/ns/default/sa/sleep",
            "spiffe://cluster.local/ns/default/sa/sleep/extra",
            "spiffe://cluster.local/ns//sa/sleep",
            "spiffe://cluster.local/sa/sleep/ns/default",
            "https://cluster.local/ns/default/sa/sleep",
        ] {
            assert_eq!(PeerIdentity::from_spiffe(bad, "cluster.local"), None, "{bad}");
        }
    }

    #[test]
    fn a_certificate_naming_two_spiffe_ids_names_nobody() {
        let one = cert_with(&["spiffe://cluster.local/ns/a/sa/b"]);
        assert_eq!(PeerIdentity::from_cert(&one, "cluster.local").unwrap().principal, "cluster.local/ns/a/sa/b");
        let two = cert_with(&["spiffe://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/c/sa/d"]);
        assert_eq!(PeerIdentity::from_cert(&two, "cluster.local"), None);
        assert_eq!(PeerIdentity::from_cert(&cert_with(&[]), "cluster.local"), None);
    }

    #[test]
    fn the_principal_is_the_spiffe_uri_else_the_subject() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.subject_alt_names = vec![
            rcgen::SanType::DnsName("client.example.com".try_into().unwrap()),
            rcgen::SanType::URI("spiffe://cluster.local/ns/default/sa/sleep".try_into().unwrap()),
        ];
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(principal(cert.der()).as_deref(), Some("cluster.local/ns/default/sa/sleep"));
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "curl client");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(principal(cert.der()).as_deref(), Some("CN=curl client"));
    }
}
