//! mixr's certificate authority over Istio's CreateCertificate API: only a caller with a
//! bootstrap token gets a certificate, and only for its own service account; the tokens
//! file is reloaded; the root made at first start is kept.

use std::time::Duration;

use mixr_e2e::{Mixr, ca_token as token, eventually};
use mixr_proto::istio::v1::auth::IstioCertificateRequest;
use mixr_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use rcgen::{CertificateParams, KeyPair, SanType};
use tonic::Code;

fn csr(spiffe: &str) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(spiffe.to_string().try_into().unwrap())];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

async fn ask(mixr: &Mixr, token: Option<&str>, spiffe: &str, seconds: i64) -> Result<Vec<String>, tonic::Status> {
    let mut client = IstioCertificateServiceClient::connect(format!("http://{}", mixr.grpc)).await.unwrap();
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr(spiffe),
        subject_id: String::new(),
        validity_duration: seconds,
    });
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    client.create_certificate(req).await.map(|r| r.into_inner().cert_chain)
}

#[tokio::test]
async fn certificates_go_only_to_the_service_account_a_token_stands_for() {
    let dir = tempfile::tempdir().unwrap();
    let (product_token, product_line) = token("default/productpage");
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(&tokens, format!("# bootstrap tokens, hashed\n{product_line}\n")).unwrap();
    assert!(!std::fs::read_to_string(&tokens).unwrap().contains(&product_token));
    let config = dir.path().join("empty.yaml");
    std::fs::write(&config, "").unwrap();
    let data = dir.path().join("data");
    let mixr = Mixr::start(
        &[&config],
        &["--ca-tokens", tokens.to_str().unwrap(), "--data-dir", data.to_str().unwrap(), "--workload-cert-ttl", "1h"],
    );
    let own = "spiffe://cluster.local/ns/default/sa/productpage";

    let refused = ask(&mixr, None, own, 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(ask(&mixr, Some("guessed"), own, 0).await.unwrap_err().code(), Code::Unauthenticated);
    let other = ask(&mixr, Some(&product_token), "spiffe://cluster.local/ns/default/sa/reviews", 0).await.unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied, "{other:?}");

    let chain = ask(&mixr, Some(&product_token), own, 86_400).await.unwrap();
    assert_eq!(chain.len(), 2);
    let root_pem = std::fs::read_to_string(data.join("ca/root-cert.pem")).unwrap();
    assert_eq!(chain[1], root_pem, "the root made at first start, kept in the data directory");
    let (_, leaf) = x509_parser::pem::parse_x509_pem(chain[0].as_bytes()).unwrap();
    let leaf = leaf.parse_x509().unwrap();
    let (_, root) = x509_parser::pem::parse_x509_pem(root_pem.as_bytes()).unwrap();
    let root = root.parse_x509().unwrap();
    leaf.verify_signature(Some(root.public_key())).expect("the leaf chains to the root");
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(format!("{:?}", san.value.general_names).contains(own));
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert_eq!(lifetime, 3600 + 60, "capped at --workload-cert-ttl");

    // A new service account joins: its line is added, no restart.
    let (reviews_token, reviews_line) = token("default/reviews");
    std::fs::write(&tokens, format!("{product_line}\n{reviews_line}\n")).unwrap();
    let ok = eventually(Duration::from_secs(10), || async {
        ask(&mixr, Some(&reviews_token), "spiffe://cluster.local/ns/default/sa/reviews", 0).await.is_ok()
    })
    .await;
    assert!(ok, "{}", mixr.logs());
    let logs = mixr.logs();
    assert!(logs.contains("certificate request refused") && !logs.contains("BEGIN CERTIFICATE REQUEST"), "{logs}");
    assert!(!logs.contains(&product_token));
}
