//! Watching config paths for changes, for both binaries' hot reload.
//!
//! Only events that can change what a load reads count: creating, modifying, removing and
//! renaming files. Reading a file (an `open`, which the reload itself does, or a `cat`) is
//! not a change. A burst of events becomes one call, once no event came for a short quiet
//! period. Whether the files really changed is for the caller to tell by
//! [`super::fingerprint`]: a save that wrote the same bytes loads nothing.
//!
//! Directories are watched recursively; a file is watched through its directory, since
//! editors and Kubernetes replace files by renaming over them (a ConfigMap mount swaps its
//! `..data` symlink atomically).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

/// How long the files must be quiet before the burst counts as one change.
const QUIET: Duration = Duration::from_millis(150);
/// The longest a steady stream of events delays the call.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// Whether an event may change what a load of the config reads.
pub fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any | EventKind::Other => true,
    }
}

/// What to watch for `path`, and how.
fn target(path: &Path) -> (PathBuf, RecursiveMode) {
    if path.is_dir() {
        (path.to_path_buf(), RecursiveMode::Recursive)
    } else {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        (parent.to_path_buf(), RecursiveMode::NonRecursive)
    }
}

/// Calls `on_change` (on a thread of its own) after each burst of changes under `paths`.
/// The watcher stops when the returned value is dropped. Paths that cannot be watched are
/// logged and skipped.
pub fn watch(
    paths: &[PathBuf],
    mut on_change: impl FnMut() + Send + 'static,
) -> Result<RecommendedWatcher, notify::Error> {
    let (tx, rx) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(e) if is_change(&e.kind) => {
            let _ = tx.send(());
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "config watch error"),
    })?;
    for path in paths {
        let (target, mode) = target(path);
        if let Err(e) = watcher.watch(&target, mode) {
            tracing::warn!(path = %target.display(), error = %e, "cannot watch; reload with SIGHUP");
        }
    }
    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            // Ends when the watcher, and with it the sender, is dropped.
            while rx.recv().is_ok() {
                let started = Instant::now();
                while started.elapsed() < MAX_DELAY && rx.recv_timeout(QUIET).is_ok() {}
                on_change();
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, RemoveKind, RenameMode};

    #[test]
    fn reads_and_metadata_are_not_changes() {
        assert!(!is_change(&EventKind::Access(AccessKind::Open(AccessMode::Read))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(!is_change(&EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime))));
        assert!(is_change(&EventKind::Create(CreateKind::File)));
        assert!(is_change(&EventKind::Modify(ModifyKind::Data(DataChange::Content))));
        assert!(is_change(&EventKind::Modify(ModifyKind::Name(RenameMode::Both))));
        assert!(is_change(&EventKind::Remove(RemoveKind::File)));
    }

    #[test]
    fn a_burst_of_writes_is_one_call_and_reading_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, "a: 1\n").unwrap();
        let (tx, rx) = mpsc::channel();
        let _w = watch(&[dir.path().to_path_buf()], move || {
            let _ = tx.send(());
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        for _ in 0..20 {
            let _ = std::fs::read_to_string(&file).unwrap();
        }
        assert!(rx.recv_timeout(Duration::from_millis(600)).is_err(), "reading is not a change");
        for i in 0..5 {
            std::fs::write(&file, format!("a: {i}\n")).unwrap();
        }
        rx.recv_timeout(Duration::from_secs(5)).expect("the writes are a change");
        assert!(rx.recv_timeout(Duration::from_millis(600)).is_err(), "one burst, one call");
    }
}
