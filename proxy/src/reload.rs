//! Reloading traffic config when its files change (and on SIGHUP, in `cli`). A burst of
//! file events becomes one reload; an invalid config is rejected and the last good one
//! keeps routing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::proxy::Proxy;

pub fn watch(proxy: Arc<Proxy>) -> Option<notify::RecommendedWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if e.is_ok() {
            let _ = tx.send(());
        }
    })
    .ok()?;
    for path in &proxy.config_paths {
        let (target, mode) = if path.is_dir() {
            (path.clone(), RecursiveMode::Recursive)
        } else {
            let parent =
                path.parent().filter(|p| !p.as_os_str().is_empty()).map(PathBuf::from).unwrap_or_else(|| ".".into());
            (parent, RecursiveMode::NonRecursive)
        };
        if let Err(e) = watcher.watch(&target, mode) {
            tracing::warn!(path = %target.display(), error = %e, "cannot watch; reload with SIGHUP");
        }
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(Duration::from_millis(150)).await;
            while rx.try_recv().is_ok() {}
            let p = proxy.clone();
            let _ = tokio::task::spawn_blocking(move || p.reload_if_changed()).await;
        }
    });
    Some(watcher)
}
