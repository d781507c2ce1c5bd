//! The active config and its replacement. A [`Runtime`] is immutable; [`ConfigStore`]
//! swaps whole runtimes atomically (arc-swap), so a request sees one config from start to
//! end, and a rejected config never replaces the last good one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use mixr_adapters::{BuildContext, HandlerSet, Registry};
use mixr_rules::config::{ConfigError, add_lines, fingerprint, load_paths};
use mixr_rules::snapshot::{Snapshot, build};

use crate::metrics::{HandlerMetrics, Metrics};

#[derive(Debug)]
pub struct Runtime {
    pub snapshot: Snapshot,
    pub handlers: HandlerSet,
    pub generation: u64,
    pub loaded_at: SystemTime,
    /// Self-metric series of each handler, by the snapshot's handler index.
    handler_metrics: Vec<HandlerMetrics>,
    fingerprint: u64,
}

impl Runtime {
    /// A runtime with no config (nothing matches; everything is allowed).
    pub fn empty() -> Runtime {
        Runtime {
            snapshot: Snapshot::empty(),
            handlers: HandlerSet::default(),
            generation: 0,
            loaded_at: SystemTime::now(),
            handler_metrics: Vec::new(),
            fingerprint: 0,
        }
    }

    /// The self-metric series of the snapshot's handler `h` (every handler has them: they
    /// are built with the snapshot).
    pub fn handler_metrics(&self, h: usize) -> Option<&HandlerMetrics> {
        self.handler_metrics.get(h)
    }

    /// The display name (`name.namespace`) of the snapshot's handler `h`, without
    /// formatting it again.
    pub fn handler_name(&self, h: usize) -> std::borrow::Cow<'_, str> {
        match self.handler_metrics.get(h) {
            Some(m) => std::borrow::Cow::Borrowed(m.name.as_str()),
            None => std::borrow::Cow::Owned(self.snapshot.handlers[h].display_name()),
        }
    }
}

/// Loads and compiles config files into a snapshot (what `mixr validate` runs too).
/// Errors from loading come first, then those found compiling what did load.
pub fn compile_config(
    paths: &[PathBuf],
    default_namespace: &str,
    registry: &Registry,
) -> Result<Snapshot, Vec<ConfigError>> {
    let (set, mut errors) = load_paths(paths, default_namespace);
    match build(&set, registry) {
        Ok(snapshot) if errors.is_empty() => return Ok(snapshot),
        Ok(_) => {}
        Err(more) => errors.extend(more),
    }
    add_lines(&mut errors);
    Err(errors)
}

#[derive(Debug, PartialEq)]
pub enum ReloadOutcome {
    Unchanged,
    Applied { generation: u64 },
    Rejected { errors: Vec<String> },
}

#[derive(Debug)]
pub struct ConfigStore {
    current: ArcSwap<Runtime>,
    paths: Vec<PathBuf>,
    default_namespace: String,
    registry: Registry,
    ctx: BuildContext,
    metrics: Metrics,
    /// Fingerprint of the files last loaded, good or bad: a config is compiled (and its
    /// errors logged) once per change, not once per file event.
    reloading: std::sync::Mutex<Option<u64>>,
}

impl ConfigStore {
    /// Loads the first config; an invalid one is an error (nothing would serve).
    pub fn open(
        paths: Vec<PathBuf>,
        default_namespace: String,
        registry: Registry,
        ctx: BuildContext,
        metrics: Metrics,
    ) -> Result<ConfigStore, Vec<String>> {
        let store = ConfigStore {
            current: ArcSwap::from_pointee(Runtime::empty()),
            paths,
            default_namespace,
            registry,
            ctx,
            metrics,
            reloading: std::sync::Mutex::new(None),
        };
        // The caller reports a first config's errors (once): nothing serves without it.
        match store.load(true, false) {
            ReloadOutcome::Rejected { errors } => Err(errors),
            _ => Ok(store),
        }
    }

    /// The active runtime. Cheap: callers hold it for one request.
    pub fn current(&self) -> arc_swap::Guard<Arc<Runtime>> {
        self.current.load()
    }

    /// The active runtime as an owned handle, for calls that wait (quota adapters).
    pub fn current_full(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Re-reads the config. Unless `force`, an unchanged file tree is left alone.
    pub fn reload(&self, force: bool) -> ReloadOutcome {
        self.load(force, true)
    }

    fn load(&self, force: bool, log_rejection: bool) -> ReloadOutcome {
        let mut last_attempt = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let fp = fingerprint(&self.paths);
        let previous = self.current.load_full();
        if !force && (fp == previous.fingerprint || *last_attempt == Some(fp)) {
            return ReloadOutcome::Unchanged;
        }
        *last_attempt = Some(fp);
        let compiled = compile_config(&self.paths, &self.default_namespace, &self.registry).and_then(|snapshot| {
            let handlers = self.registry.build_handlers(&snapshot, Some(&previous.handlers), &self.ctx).map_err(
                |mut errors| {
                    add_lines(&mut errors);
                    errors
                },
            )?;
            Ok((snapshot, handlers))
        });
        match compiled {
            Ok((snapshot, handlers)) => {
                let generation = previous.generation + 1;
                tracing::info!(
                    generation,
                    rules = snapshot.rules.len(),
                    handlers = snapshot.handlers.len(),
                    instances = snapshot.instances.len(),
                    "config loaded"
                );
                let handler_metrics =
                    snapshot.handlers.iter().map(|h| HandlerMetrics::new(&self.metrics, h.display_name())).collect();
                self.current.store(Arc::new(Runtime {
                    snapshot,
                    handlers,
                    generation,
                    loaded_at: SystemTime::now(),
                    handler_metrics,
                    fingerprint: fp,
                }));
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                self.metrics.config_generation.set(generation as i64);
                ReloadOutcome::Applied { generation }
            }
            Err(errors) => {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                if log_rejection {
                    for e in &errors {
                        tracing::error!(error = %e, "config rejected");
                    }
                    tracing::warn!(generation = previous.generation, "keeping the last good config");
                }
                self.metrics.config_reloads.with_label_values(&["failed"]).inc();
                ReloadOutcome::Rejected { errors }
            }
        }
    }
}
