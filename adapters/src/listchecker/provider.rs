//! Fetching a list from `providerUrl` (http://, https:// or file://).

use std::time::Duration;

use crate::params::redact_url;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("{path}: {source}")]
    File { path: String, source: std::io::Error },
}

#[derive(Clone)]
pub struct Provider {
    url: String,
    /// The URL as shown in logs and errors: without its password.
    shown: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("url", &self.shown).finish()
    }
}

impl Provider {
    pub fn new(url: &str, timeout: Duration) -> Provider {
        let client = reqwest::Client::builder().timeout(timeout).build().unwrap_or_else(|_| reqwest::Client::new());
        Provider { url: url.to_string(), shown: redact_url(url).into_owned(), client }
    }

    /// The URL as it may be shown: its password redacted.
    pub fn shown_url(&self) -> &str {
        &self.shown
    }

    pub async fn fetch(&self) -> Result<Vec<String>, FetchError> {
        let body = if let Some(path) = self.url.strip_prefix("file://") {
            tokio::fs::read_to_string(path)
                .await
                .map_err(|source| FetchError::File { path: path.to_string(), source })?
        } else {
            // reqwest's errors would print the URL, password and all.
            let http =
                |source: reqwest::Error| FetchError::Http { url: self.shown.clone(), source: source.without_url() };
            let resp = self.client.get(&self.url).send().await.map_err(http)?;
            if !resp.status().is_success() {
                return Err(FetchError::Status { url: self.shown.clone(), status: resp.status().as_u16() });
            }
            resp.text().await.map_err(http)?
        };
        Ok(parse_entries(&body))
    }
}

/// One entry a line (blank lines and `#` comments skipped); or, as Istio's IP lists were,
/// a YAML map holding a list (`whitelist: [...]`).
pub fn parse_entries(body: &str) -> Vec<String> {
    if let Ok(yaml_serde::Value::Mapping(m)) = yaml_serde::from_str::<yaml_serde::Value>(body) {
        let lists: Vec<String> = m
            .values()
            .filter_map(|v| v.as_sequence())
            .flatten()
            .filter_map(|v| match v {
                yaml_serde::Value::String(s) => Some(s.clone()),
                yaml_serde::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect();
        if !lists.is_empty() {
            return lists;
        }
    }
    body.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_yaml_lists() {
        assert_eq!(parse_entries("a\n\n# c\n b \n"), vec!["a", "b"]);
        assert_eq!(parse_entries("whitelist:\n- 10.0.0.0/8\n- 1.2.3.4\n"), vec!["10.0.0.0/8", "1.2.3.4"]);
    }
}
