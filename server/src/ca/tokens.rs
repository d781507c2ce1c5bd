//! Who may ask for which identity: bootstrap tokens, one per service account, kept hashed in
//! a file mixr reads (and reads again when it changes), so the file grants nothing to whoever
//! reads it.
//!
//! ```yaml
//! # namespace/serviceaccount: sha256 of the token, in hex
//! default/bookinfo-productpage: sha256:4f6c...e1
//! ```
//!
//! `mixr ca-token NAMESPACE/SERVICEACCOUNT` makes a token and prints the line to add.
//! Tokens are 256 random bits, so an unsalted hash is enough: there is nothing to guess.

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest, Sha256};

/// A workload identity: what a certificate's SPIFFE ID names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccount {
    /// `namespace/name`, both DNS labels as Kubernetes requires.
    pub fn parse(text: &str) -> Result<ServiceAccount, String> {
        let (namespace, name) =
            text.split_once('/').ok_or_else(|| format!("{text:?}: expected namespace/serviceaccount"))?;
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                && !s.starts_with('-')
                && !s.ends_with('-')
        };
        if !label(namespace) || !label(name) {
            return Err(format!("{text:?}: namespace and service account must be lower-case DNS names"));
        }
        Ok(ServiceAccount { namespace: namespace.into(), name: name.into() })
    }

    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!("spiffe://{trust_domain}/ns/{}/sa/{}", self.namespace, self.name)
    }
}

impl std::fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `sha256:<hex>` of a token.
pub fn hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A new token: 32 random bytes from the system's source, as hex.
pub fn generate() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Hashed tokens by hash.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TokenStore {
    by_hash: HashMap<String, ServiceAccount>,
}

impl TokenStore {
    pub fn parse(text: &str) -> Result<TokenStore, String> {
        let mut by_hash = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (account, digest) =
                line.split_once(':').ok_or_else(|| format!("line {}: expected NAMESPACE/SA: sha256:HEX", n + 1))?;
            let account = ServiceAccount::parse(account.trim()).map_err(|e| format!("line {}: {e}", n + 1))?;
            let digest = digest.trim().trim_matches(|c| c == '"' || c == '\'');
            let hex = digest.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("line {}: expected sha256: and 64 hex digits", n + 1));
            }
            by_hash.insert(digest.to_ascii_lowercase(), account);
        }
        Ok(TokenStore { by_hash })
    }

    pub fn load(path: &Path) -> Result<TokenStore, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        TokenStore::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The service account a token stands for.
    pub fn identify(&self, token: &str) -> Option<&ServiceAccount> {
        self.by_hash.get(&hash(token))
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_identify_their_service_account_only() {
        let token = generate().unwrap();
        assert_eq!(token.len(), 64);
        assert_ne!(token, generate().unwrap());
        let text =
            format!("# bootstrap tokens\ndefault/productpage: {}\nshop/cart: \"{}\"\n", hash(&token), hash("other"));
        let store = TokenStore::parse(&text).unwrap();
        assert_eq!(store.len(), 2);
        assert_eq!(store.identify(&token).unwrap().to_string(), "default/productpage");
        assert_eq!(
            store.identify("other").unwrap().spiffe_id("cluster.local"),
            "spiffe://cluster.local/ns/shop/sa/cart"
        );
        assert!(store.identify("guess").is_none());
        assert!(!text.contains(&token), "the file holds no token");
        for bad in ["productpage: sha256:00", "a/b: md5:1234", "A/b: sha256:", "a/: x"] {
            assert!(TokenStore::parse(bad).is_err(), "{bad}");
        }
    }
}
