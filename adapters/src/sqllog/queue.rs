//! The bounded queue between `report()` and a slow sink (a database, a file, stdout),
//! shared by `sqllog` and `stdio`.
//!
//! - [`LogQueue::push`] never blocks or awaits: it appends under a short lock, or counts
//!   the entry as dropped when the queue is full (and warns at most every 10 s).
//! - A background task writes batches: as soon as a batch is full, and whatever is queued
//!   every flush interval. A failed write keeps its batch and is retried with backoff.
//! - [`LogQueue::flush`] writes everything queued, including a batch the task is writing,
//!   before it returns (graceful shutdown).
//!
//! Entries being written count against the capacity until they are written, so at most
//! `capacity` entries are ever held and the dropped count is exact.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::sync::Notify;

use super::entry::LogEntry;
use crate::variety::BoxFuture;

const OVERFLOW_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Where a queue's entries go.
pub trait Sink: Send + 'static {
    /// Writes a batch completely, or fails and leaves nothing half-written that a retry
    /// would duplicate (a database transaction), as far as the sink can.
    fn write<'a>(&'a mut self, batch: &'a [LogEntry]) -> BoxFuture<'a, Result<(), String>>;
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// The adapter, for metric names (`mixr_{adapter}_dropped_total`) and logs.
    pub adapter: &'static str,
    /// The handler, for the metrics' `handler` label and logs.
    pub handler: String,
    pub capacity: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
}

/// How long [`LogQueue::flush`] keeps retrying an unreachable sink: shutdown must end.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Failed writes the task still attempts after its handler is gone (a reload removed it).
const ATTEMPTS_AFTER_CLOSE: u32 = 5;

struct State {
    queue: VecDeque<LogEntry>,
    /// Entries taken out of `queue` and not yet written.
    in_flight: usize,
}

struct Writer {
    sink: Box<dyn Sink>,
    /// The batch being written; stays here if a write fails or is cancelled, and is
    /// written first next time, so nothing is lost or reordered.
    pending: Vec<LogEntry>,
}

struct Metrics {
    registry: Registry,
    dropped: IntCounter,
    written: IntCounter,
}

struct Shared {
    cfg: QueueConfig,
    state: Mutex<State>,
    /// Wakes the task when a batch is full or the handler is gone.
    wake: Notify,
    /// Held while writing: the task and `flush` never write at the same time.
    writer: tokio::sync::Mutex<Writer>,
    metrics: Metrics,
    overflow_warned: Mutex<Option<std::time::Instant>>,
    failing: AtomicBool,
    closed: AtomicBool,
}

/// The handle a handler owns. Dropping it lets the task write what is left and end.
pub struct LogQueue {
    shared: Arc<Shared>,
}

impl LogQueue {
    /// Creates the queue and, inside a tokio runtime, its background writer. Outside one
    /// (offline tools) entries are written by [`LogQueue::flush`] only.
    pub fn start(cfg: QueueConfig, sink: Box<dyn Sink>) -> LogQueue {
        let shared = Arc::new(Shared {
            metrics: Metrics::new(&cfg),
            state: Mutex::new(State { queue: VecDeque::new(), in_flight: 0 }),
            wake: Notify::new(),
            writer: tokio::sync::Mutex::new(Writer { sink, pending: Vec::new() }),
            overflow_warned: Mutex::new(None),
            failing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            cfg,
        });
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(run(shared.clone()));
            }
            Err(_) => tracing::warn!(
                handler = %shared.cfg.handler,
                "{} handler built outside a runtime: entries are written on flush only",
                shared.cfg.adapter
            ),
        }
        LogQueue { shared }
    }

    /// Queues entries; those that do not fit are counted as dropped.
    pub fn push(&self, entries: impl IntoIterator<Item = LogEntry>) {
        let s = &self.shared;
        let mut dropped = 0u64;
        let full_batch = {
            let mut st = s.lock_state();
            for e in entries {
                if st.queue.len() + st.in_flight < s.cfg.capacity {
                    st.queue.push_back(e);
                } else {
                    dropped += 1;
                }
            }
            st.queue.len() >= s.cfg.batch_size
        };
        if full_batch {
            s.wake.notify_one();
        }
        if dropped > 0 {
            s.metrics.dropped.inc_by(dropped);
            // A queue at its limit flips between full and not on every push: warn at most
            // once per interval, with the running total, rather than once per flip.
            let mut last = s.overflow_warned.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|at| at.elapsed() >= OVERFLOW_WARN_INTERVAL) {
                *last = Some(std::time::Instant::now());
                tracing::warn!(
                    handler = %s.cfg.handler,
                    capacity = s.cfg.capacity,
                    dropped_total = s.metrics.dropped.get(),
                    "{} queue is full: dropping log entries (counted in mixr_{}_dropped_total)",
                    s.cfg.adapter,
                    s.cfg.adapter
                );
            }
        }
    }

    /// Writes every queued entry (and a batch the task is writing) before returning,
    /// retrying a failing sink for up to [`FLUSH_TIMEOUT`].
    pub async fn flush(&self) {
        let s = &self.shared;
        let deadline = tokio::time::Instant::now() + FLUSH_TIMEOUT;
        let mut backoff = MIN_BACKOFF;
        loop {
            let result = s.drain(false).await;
            match result {
                Ok(()) => return,
                Err(e) => {
                    if tokio::time::Instant::now() + backoff > deadline {
                        tracing::error!(
                            handler = %s.cfg.handler, error = %e, unwritten = self.held(),
                            "{} flush gave up: entries not written", s.cfg.adapter
                        );
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Entries dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.metrics.dropped.get()
    }

    /// Entries written to the sink.
    pub fn written(&self) -> u64 {
        self.shared.metrics.written.get()
    }

    /// Entries queued or being written.
    pub fn held(&self) -> usize {
        let st = self.shared.lock_state();
        st.queue.len() + st.in_flight
    }

    /// `mixr_{adapter}_dropped_total` and `mixr_{adapter}_written_total` for this handler.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.shared.metrics.registry.gather()
    }
}

impl Drop for LogQueue {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
    }
}

impl Metrics {
    fn new(cfg: &QueueConfig) -> Metrics {
        // A private registry per handler: handlers come and go with reloads, and the
        // process-wide registry must not end up with a stale handler's collectors.
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> IntCounter {
            let opts = Opts::new(format!("mixr_{}_{name}", cfg.adapter), help);
            // Only a malformed metric name fails here, and the names are ours.
            let vec = IntCounterVec::new(opts, &["handler"]).expect("valid metric");
            if let Err(e) = registry.register(Box::new(vec.clone())) {
                tracing::error!(error = %e, "log queue metric not registered");
            }
            vec.with_label_values(&[cfg.handler.as_str()])
        };
        Metrics {
            dropped: counter("dropped_total", "Log entries dropped because the handler's queue was full."),
            written: counter("written_total", "Log entries written by the handler."),
            registry,
        }
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the queue consistent (pushes and pops
        // are single operations), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes batches until the queue is empty (or, with `full_only`, until less than a
    /// batch is left); stops at the first failure.
    async fn drain(&self, full_only: bool) -> Result<(), String> {
        let mut w = self.writer.lock().await;
        let w = &mut *w;
        loop {
            if w.pending.is_empty() {
                let mut st = self.lock_state();
                let n = st.queue.len().min(self.cfg.batch_size);
                if n == 0 || (full_only && n < self.cfg.batch_size) {
                    return Ok(());
                }
                w.pending.extend(st.queue.drain(..n));
                st.in_flight += n;
            }
            if let Err(e) = w.sink.write(&w.pending).await {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(handler = %self.cfg.handler, error = %e, "{} write failed; retrying", self.cfg.adapter);
                }
                return Err(e);
            }
            let n = w.pending.len();
            w.pending.clear();
            self.lock_state().in_flight -= n;
            self.metrics.written.inc_by(n as u64);
            if self.failing.swap(false, Ordering::Relaxed) {
                tracing::info!(handler = %self.cfg.handler, "{} writes recovered", self.cfg.adapter);
            }
        }
    }
}

/// The background writer. It holds the shared queue, not the handler: when the handler
/// is dropped it writes what is left and ends.
async fn run(shared: Arc<Shared>) {
    let mut backoff = MIN_BACKOFF;
    let mut retry = false;
    let mut failures_after_close = 0;
    // A ticker rather than a sleep per loop: under steady traffic full batches keep waking
    // the task, and a partial batch must still be written within one interval.
    let mut tick = tokio::time::interval(shared.cfg.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        // Woken because a batch filled up: write full batches only, and leave a partial
        // one to fill up until the next tick.
        let full_only = if shared.closed.load(Ordering::Relaxed) || retry {
            false
        } else {
            tokio::select! {
                _ = shared.wake.notified() => true,
                _ = tick.tick() => false,
            }
        };
        match shared.drain(full_only).await {
            Ok(()) => {
                backoff = MIN_BACKOFF;
                retry = false;
                if shared.closed.load(Ordering::Relaxed) && shared.lock_state().queue.is_empty() {
                    return;
                }
            }
            Err(_) => {
                if shared.closed.load(Ordering::Relaxed) {
                    failures_after_close += 1;
                    if failures_after_close >= ATTEMPTS_AFTER_CLOSE {
                        let st = shared.lock_state();
                        tracing::error!(
                            handler = %shared.cfg.handler, lost = st.queue.len() + st.in_flight,
                            "{} handler removed while its sink fails: entries lost", shared.cfg.adapter
                        );
                        return;
                    }
                }
                retry = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// A report handler that queues `logentry` instances (and, when asked, denied Checks) for a
/// sink: what sqllog and stdio share; they differ only in their sink.
pub struct QueuedLog {
    queue: LogQueue,
    check_denials: bool,
}

impl QueuedLog {
    pub fn new(queue: LogQueue, check_denials: bool) -> QueuedLog {
        QueuedLog { queue, check_denials }
    }

    /// Entries dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// Entries the sink has written.
    pub fn written(&self) -> u64 {
        self.queue.written()
    }
}

impl crate::variety::ReportHandler for QueuedLog {
    fn report(&self, instance_name: &str, instances: &[mixr_rules::snapshot::InstanceValues]) {
        let now = std::time::SystemTime::now();
        self.queue.push(instances.iter().map(|v| LogEntry::from_instance(instance_name, v, now)));
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.queue.flush())
    }

    fn wants_check_denials(&self) -> bool {
        self.check_denials
    }

    fn check_denied(&self, denial: &crate::variety::Denial) {
        if self.check_denials {
            self.queue.push([LogEntry::from_denial(denial)]);
        }
    }

    fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.queue.gather()
    }
}
