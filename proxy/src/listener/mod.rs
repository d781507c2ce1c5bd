//! Limits on what one caller can hold of a listener: time (to send a request head, to
//! stay idle between requests, to pause inside a request body) and connections (a
//! ceiling per listener). Both code paths apply them: the HTTP/1.1 fast path
//! (`http1::server`) and hyper, for the connections handed to it ([`conn`]).
//!
//! - [`accept`]: accept loops that back off when descriptors run out.
//! - [`conn`]: a connection served by hyper (idle time, request bodies).

pub mod accept;
pub mod conn;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Listener limits, from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From a connection's start (or a request's first byte, on a kept-alive connection)
    /// to the end of its request head.
    pub head_timeout: Duration,
    /// With no request in progress, between one response's end and the next request's
    /// first byte.
    pub idle_timeout: Duration,
    /// The longest wait for more of a request body.
    pub body_timeout: Duration,
    /// Connections one listener (all workers together) holds at once; more are closed
    /// as they are accepted.
    pub max_connections: usize,
}

pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_timeout: DEFAULT_HEAD_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Connections open on one listener, across its workers.
#[derive(Debug, Default)]
pub struct ConnectionCount {
    open: AtomicUsize,
}

impl ConnectionCount {
    /// Counts a new connection, unless `max` are open already.
    pub fn try_open(self: &Arc<Self>, max: usize) -> Option<OpenConnection> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(OpenConnection(self.clone()))
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
pub struct OpenConnection(Arc<ConnectionCount>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_past_the_limit_are_refused_until_one_closes() {
        let count = Arc::new(ConnectionCount::default());
        let held: Vec<_> = (0..3).map(|_| count.try_open(3).expect("under the limit")).collect();
        assert!(count.try_open(3).is_none());
        assert_eq!(count.open(), 3);
        drop(held);
        assert_eq!(count.open(), 0);
        assert!(count.try_open(3).is_some());
    }
}
