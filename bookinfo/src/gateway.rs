//! Bookinfo's ingress gateway: `mixr-proxy --role gateway` with a config shaped like
//! Istio's `bookinfo-gateway.yaml` (a Gateway selecting `istio: ingressgateway` and the
//! VirtualService bound to it), on HTTP and on HTTPS with a certificate made at start for
//! `bookinfo.example.com` by a CA of the demo's own. Istio's ingress policies
//! (`mixer-rule-deny-ip`, `mixer-rule-ingress-denial`) can be turned on at start.

use std::path::Path;

/// The gateway's Gateway and VirtualService; `{dir}` holds the certificate files.
pub fn config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: bookinfo-gateway}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["bookinfo.example.com"]
    tls: {{mode: SIMPLE, serverCertificate: {d}/tls.crt, privateKey: {d}/tls.key}}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: bookinfo}}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - match:
    - uri: {{exact: /productpage}}
    - uri: {{prefix: /static}}
    - uri: {{exact: /login}}
    - uri: {{exact: /logout}}
    - uri: {{prefix: /api/v1/products}}
    route:
    - destination: {{host: productpage, port: {{number: 9080}}}}
"#
    )
}

/// A CA and a server certificate for `bookinfo.example.com`, PEM: (CA, certificate, key).
pub fn certificates() -> Result<(String, String, String), String> {
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = rcgen::KeyPair::generate().map_err(e)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.distinguished_name.push(rcgen::DnType::CommonName, "bookinfo demo CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let ca_pem = ca.self_signed(&ca_key).map_err(e)?.pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().map_err(e)?;
    let cert = rcgen::CertificateParams::new(vec!["bookinfo.example.com".to_string()])
        .map_err(e)?
        .signed_by(&key, &issuer)
        .map_err(e)?;
    Ok((ca_pem, cert.pem(), key.serialize_pem()))
}

/// Istio's ingress policies, as mixr config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IngressPolicy {
    #[default]
    None,
    /// `mixer-rule-deny-ip`: only clients from 10.57.0.0/16 come in through the gateway.
    DenyIp,
    /// `mixer-rule-ingress-denial`: the user john (`x-user: john`) may not reach
    /// productpage through the gateway.
    IngressDenial,
}

impl IngressPolicy {
    pub const NAMES: &'static str = "none, deny-ip, ingress-denial";

    pub fn parse(s: &str) -> Option<IngressPolicy> {
        Some(match s {
            "none" => IngressPolicy::None,
            "deny-ip" => IngressPolicy::DenyIp,
            "ingress-denial" => IngressPolicy::IngressDenial,
            _ => return None,
        })
    }

    pub fn config(self) -> Option<&'static str> {
        match self {
            IngressPolicy::None => None,
            IngressPolicy::DenyIp => Some(DENY_IP),
            IngressPolicy::IngressDenial => Some(INGRESS_DENIAL),
        }
    }
}

/// Shaped like Istio's `samples/bookinfo/policy/mixer-rule-deny-ip.yaml`.
pub const DENY_IP: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: whitelistip}
spec:
  compiledAdapter: listchecker
  params:
    overrides: ["10.57.0.0/16"]
    blacklist: false
    entryType: IP_ADDRESSES
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: sourceip}
spec:
  compiledTemplate: listentry
  params:
    value: source.ip | ip("0.0.0.0")
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: checkip}
spec:
  match: source.labels["istio"] == "ingressgateway"
  actions:
  - handler: whitelistip
    instances: [sourceip]
"#;

/// Shaped like Istio's `samples/bookinfo/policy/mixer-rule-ingress-denial.yaml`, written
/// on what the gateway sends: its own labels as the source, the routed service as the
/// destination.
pub const INGRESS_DENIAL: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: denyproductpagehandler}
spec:
  compiledAdapter: denier
  params:
    status: {code: 7, message: Not allowed}
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: denyproductpagerequest}
spec:
  compiledTemplate: checknothing
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: denyproductpage}
spec:
  match: source.labels["istio"] == "ingressgateway" && destination.service.name == "productpage" && request.headers["x-user"] == "john"
  actions:
  - handler: denyproductpagehandler
    instances: [denyproductpagerequest]
"#;
