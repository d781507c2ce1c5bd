//! Reloading traffic config when its files change (and on SIGHUP, in `cli`), through
//! `mixr_rules::config::watch`: only real changes count, a burst is one reload, and a
//! config is loaded (and an invalid one reported) once per change of the files'
//! fingerprint. An invalid config is rejected and the last good one keeps routing.

use std::sync::Arc;

use mixr_rules::config::fingerprint;

use crate::proxy::Proxy;

pub fn watch(proxy: Arc<Proxy>) -> Option<notify::RecommendedWatcher> {
    let paths = proxy.config_paths.clone();
    let mut last_attempt = fingerprint(&paths);
    let watcher = mixr_rules::config::watch::watch(&paths, move || {
        let fp = fingerprint(&proxy.config_paths);
        if fp != last_attempt {
            last_attempt = fp;
            proxy.reload_if_changed();
        }
    });
    match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch config files; reload with SIGHUP");
            None
        }
    }
}

/// Keeps the addresses of `resolution: DNS` ServiceEntries current (`dns`), loading the
/// config again when they change, until `shutdown`.
pub async fn resolve(proxy: Arc<Proxy>, shutdown: tokio::sync::watch::Receiver<bool>) {
    let wanted = {
        let proxy = proxy.clone();
        move || proxy.tables.load().dns_names.clone()
    };
    let changed = {
        let proxy = proxy.clone();
        move || {
            let _ = proxy.reload();
        }
    };
    crate::dns::run(proxy.dns.clone(), wanted, changed, shutdown).await;
}
