//! Istio's `Gateway`: which proxies it selects (`selector`), and the servers they open
//! (port, protocol, hosts, TLS). Certificate files are named here and read by the gateway
//! role (`gateway::tls`), which keeps the last good ones when a file goes bad.

use std::path::{Path, PathBuf};

use mixr_rules::config::{ConfigError, Param};

use super::hosts::HostPattern;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub name: String,
    pub namespace: String,
    /// Labels a proxy must all carry to be this gateway.
    pub selector: Vec<(String, String)>,
    pub servers: Vec<Server>,
}

impl Gateway {
    /// `namespace/name`, as VirtualServices' `gateways` name it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether a proxy with `labels` is this gateway. An empty selector selects every
    /// gateway proxy, as in Istio.
    pub fn selects(&self, labels: &[(String, String)]) -> bool {
        self.selector.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Https,
    Http2,
    Grpc,
}

impl Protocol {
    /// Whether connections to the server are TLS.
    pub fn is_tls(self) -> bool {
        self == Protocol::Https
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHost {
    /// `ns/host`: only VirtualServices of `ns` may serve it; `None` for `*/host` or a bare
    /// host. `./host` is the Gateway's own namespace.
    pub namespace: Option<String>,
    pub host: HostPattern,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Simple,
    Mutual,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// Plain HTTP requests to this server get a 301 to `https://`.
    pub https_redirect: bool,
    /// `None` on a plain server that only redirects.
    pub mode: Option<TlsMode>,
    pub server_certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub ca_certificates: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub port: u16,
    pub port_name: String,
    pub protocol: Protocol,
    pub hosts: Vec<ServerHost>,
    pub tls: Option<ServerTls>,
}

impl Server {
    /// Whether the server takes requests for `host` (lower-case, no port); the namespace
    /// restriction of the entry that matched, if any.
    pub fn host_match(&self, host: &str) -> Option<Option<&str>> {
        self.hosts.iter().find(|h| h.host.matches(host)).map(|h| h.namespace.as_deref())
    }

    /// Whether the server takes a TLS client hello naming `sni` (or none).
    pub fn takes_sni(&self, sni: Option<&str>) -> bool {
        match sni {
            Some(s) => self.hosts.iter().any(|h| h.host.matches(&s.to_ascii_lowercase())),
            None => true,
        }
    }
}

pub(crate) fn gateway(p: Param<'_>, name: String, namespace: String) -> Result<Gateway, ConfigError> {
    let o = p.obj()?;
    let selector = o
        .get("selector", |p| {
            let mut out = Vec::new();
            for (k, v) in p.entries()? {
                let path = format!("{}.{k}", p.path());
                out.push((k, Param::new(v, p.loc, &path).text()?));
            }
            Ok(out)
        })?
        .unwrap_or_default();
    let base = Path::new(p.loc.file.as_ref()).parent().map(Path::to_path_buf).unwrap_or_default();
    let servers = o
        .require("servers", |p| {
            let mut out = Vec::new();
            for (v, path) in p.list()? {
                out.push(server(Param::new(&v, p.loc, &path), &namespace, &base)?);
            }
            Ok(out)
        })?
        .into_iter()
        .collect::<Vec<_>>();
    o.finish()?;
    Ok(Gateway { name, namespace, selector, servers })
}

fn server(p: Param<'_>, namespace: &str, base: &Path) -> Result<Server, ConfigError> {
    let o = p.obj()?;
    let (port, port_name, protocol) = o.require("port", |p| {
        let po = p.obj()?;
        let number = po.require("number", |p| {
            let n = p.i64()?;
            u16::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| p.error(format!("{n} is not a port")))
        })?;
        let name = po.get("name", |p| p.text())?.unwrap_or_default();
        let protocol = po.require("protocol", |p| match p.text()?.to_ascii_uppercase().as_str() {
            "HTTP" => Ok(Protocol::Http),
            "HTTPS" => Ok(Protocol::Https),
            "HTTP2" => Ok(Protocol::Http2),
            "GRPC" => Ok(Protocol::Grpc),
            other => Err(p.error(format!("protocol {other} is not served (HTTP, HTTPS, HTTP2, GRPC are)"))),
        })?;
        let _ = po.raw("targetPort");
        po.finish()?;
        Ok((number, name, protocol))
    })?;
    let hosts = o.require("hosts", |p| {
        let mut out = Vec::new();
        for (i, h) in p.string_list()?.iter().enumerate() {
            let at = |m: String| ConfigError::new(p.loc, format!("{}[{i}]", p.path()), m);
            let (ns, host) = match h.split_once('/') {
                Some((".", host)) => (Some(namespace.to_string()), host),
                Some(("*", host)) => (None, host),
                Some((ns, host)) if !ns.is_empty() => (Some(ns.to_string()), host),
                Some(_) => return Err(at(format!("{h:?}: expected namespace/host"))),
                None => (None, h.as_str()),
            };
            out.push(ServerHost { namespace: ns, host: HostPattern::parse(host).map_err(at)? });
        }
        if out.is_empty() {
            return Err(p.error("a server needs at least one host"));
        }
        Ok(out)
    })?;
    let tls = o.get("tls", |p| {
        let t = p.obj()?;
        let file = |p: Param<'_>| -> Result<PathBuf, ConfigError> {
            let f = PathBuf::from(p.text()?);
            Ok(if f.is_relative() { base.join(f) } else { f })
        };
        let https_redirect = t.get("httpsRedirect", |p| p.bool())?.unwrap_or(false);
        let mode = t.get("mode", |p| match p.text()?.as_str() {
            "SIMPLE" => Ok(TlsMode::Simple),
            "MUTUAL" => Ok(TlsMode::Mutual),
            other => Err(p.error(format!("tls mode {other} is not served (SIMPLE and MUTUAL are)"))),
        })?;
        let tls = ServerTls {
            https_redirect,
            mode,
            server_certificate: t.get("serverCertificate", file)?,
            private_key: t.get("privateKey", file)?,
            ca_certificates: t.get("caCertificates", file)?,
        };
        // Accepted as Istio's; not applied (rustls' defaults: TLS 1.2 and 1.3, its suites).
        for k in [
            "subjectAltNames",
            "minProtocolVersion",
            "maxProtocolVersion",
            "cipherSuites",
            "verifyCertificateSpki",
            "verifyCertificateHash",
        ] {
            let _ = t.raw(k);
        }
        if t.raw("credentialName").is_some() {
            return Err(p.error("credentialName (Kubernetes secrets through SDS) is not served; name files"));
        }
        t.finish()?;
        match tls.mode {
            Some(_) if tls.server_certificate.is_none() || tls.private_key.is_none() => {
                Err(p.error("SIMPLE and MUTUAL need serverCertificate and privateKey"))
            }
            Some(TlsMode::Mutual) if tls.ca_certificates.is_none() => Err(p.error("MUTUAL needs caCertificates")),
            _ => Ok(tls),
        }
    })?;
    let _ = o.raw("name");
    let _ = o.raw("bind");
    let _ = o.raw("defaultEndpoint");
    o.finish()?;
    let needs_cert = protocol.is_tls() && tls.as_ref().and_then(|t| t.mode).is_none();
    if needs_cert {
        return Err(p.error("an HTTPS server needs tls.mode SIMPLE or MUTUAL with its certificate"));
    }
    if !protocol.is_tls() && tls.as_ref().is_some_and(|t| t.mode.is_some()) {
        return Err(p.error(format!("tls.mode on a {protocol:?} server: only HTTPS servers terminate TLS")));
    }
    Ok(Server { port, port_name, protocol, hosts, tls })
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;

    const GW: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["default/bookinfo.example.com", "./*.example.org", "*/x.example.net"]
    tls:
      mode: MUTUAL
      serverCertificate: certs/tls.crt
      privateKey: /abs/tls.key
      caCertificates: ca.crt
"#;

    #[test]
    fn a_gateway_loads_with_its_servers_hosts_and_certificate_paths() {
        let (cfg, errors) = load_str("/etc/gw/gw.yaml", GW, "istio-system");
        assert!(errors.is_empty(), "{errors:?}");
        let gw = &cfg.gateways[0];
        assert_eq!(gw.key(), "istio-system/bookinfo-gateway");
        assert!(gw.selects(&[("istio".into(), "ingressgateway".into()), ("x".into(), "y".into())]));
        assert!(!gw.selects(&[("istio".into(), "egressgateway".into())]));
        let https = &gw.servers[1];
        assert_eq!(https.port, 443);
        assert_eq!(https.host_match("bookinfo.example.com"), Some(Some("default")));
        assert_eq!(https.host_match("a.example.org"), Some(Some("istio-system")));
        assert_eq!(https.host_match("x.example.net"), Some(None));
        assert_eq!(https.host_match("other.example.com"), None);
        let tls = https.tls.as_ref().unwrap();
        assert_eq!(tls.server_certificate.as_deref(), Some(std::path::Path::new("/etc/gw/certs/tls.crt")));
        assert_eq!(tls.private_key.as_deref(), Some(std::path::Path::new("/abs/tls.key")));
        assert!(gw.servers[0].tls.as_ref().unwrap().https_redirect);
    }

    #[test]
    fn unserved_protocols_modes_and_missing_certificates_are_errors_at_their_key() {
        for (text, want) in [
            ("port: {number: 31400, name: tcp, protocol: TCP}\n    hosts: ['*']", "protocol TCP is not served"),
            ("port: {number: 443, name: https, protocol: HTTPS}\n    hosts: ['*']", "needs tls.mode"),
            (
                "port: {number: 443, name: https, protocol: HTTPS}\n    hosts: ['*']\n    tls: {mode: PASSTHROUGH}",
                "tls mode PASSTHROUGH is not served",
            ),
            (
                "port: {number: 443, name: https, protocol: HTTPS}\n    hosts: ['*']\n    tls: {mode: SIMPLE}",
                "need serverCertificate and privateKey",
            ),
            ("port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['a.*.com']", "spec.servers[0].hosts[0]"),
        ] {
            let doc = format!(
                "apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata: {{name: g}}\nspec:\n  servers:\n  - {text}\n"
            );
            let (_, errors) = load_str("g.yaml", &doc, "default");
            let all = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
            assert!(all.contains(want), "{text}: {all}");
        }
    }
}
