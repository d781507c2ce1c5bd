//! HTTP/2 upstream connections (hyper's client): one per endpoint, shared by every
//! request to it until it has carried `maxRequestsPerConnection` streams.
//!
//! A request that finds no connection while another request is opening one waits for
//! that attempt instead of opening its own, and shares its failure. Without this, a burst
//! of streams to a cold endpoint (a sidecar starting under gRPC load) opens a connection
//! per stream, each with its own buffers, and keeps only the last.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

use super::{Pool, PoolError, PoolKey, Slot, Target};
use crate::body::ProxyBody;

type Sender = http2::SendRequest<ProxyBody>;

/// How an attempt to open a connection ended: `None` while it runs.
type Outcome = Option<Result<(), String>>;

pub(super) struct Conn {
    sender: Sender,
    last_used: Instant,
    uses: u32,
}

/// An endpoint's HTTP/2 state: its shared connection and the attempt to open one.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) conn: Option<Conn>,
    dialing: Option<Dialing>,
    dials: u64,
}

struct Dialing {
    id: u64,
    outcome: watch::Receiver<Outcome>,
}

impl Shared {
    /// Whether the shared connection should be closed by the sweeper.
    pub(super) fn expired(&self, owner_alive: bool, now: Instant, idle_timeout: Duration) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| !owner_alive || c.sender.is_closed() || now.duration_since(c.last_used) >= idle_timeout)
    }

    /// A stream on the shared connection, if it is open and fresh. The stream that
    /// reaches `max` requests retires the connection: new requests get a new one, and this
    /// one closes once its streams finish.
    fn checkout(&mut self, max: u32, idle_timeout: Duration) -> Option<Sender> {
        let conn = self.conn.as_mut()?;
        let now = Instant::now();
        if conn.sender.is_closed() || now.duration_since(conn.last_used) >= idle_timeout {
            self.conn = None;
            return None;
        }
        conn.uses += 1;
        conn.last_used = now;
        let sender = conn.sender.clone();
        if max != 0 && conn.uses >= max {
            self.conn = None;
        }
        Some(sender)
    }
}

/// What a request does next to get a stream.
enum Next {
    Ready(Sender),
    /// Wait for another request's attempt to open a connection.
    Wait(watch::Receiver<Outcome>),
    /// Open a connection; the guard, when the connection is shared, tells the waiters.
    Dial(Option<DialGuard>),
}

/// Held by the request opening an endpoint's connection. Dropped (the attempt finished
/// or the request went away), it clears the attempt so the next request may try again.
struct DialGuard {
    pool: Weak<Mutex<super::Shared>>,
    key: PoolKey,
    id: u64,
    outcome: watch::Sender<Outcome>,
}

impl DialGuard {
    fn finish(self, outcome: Result<(), String>) {
        // The slot holds a receiver until the guard drops, so this cannot fail.
        let _ = self.outcome.send(Some(outcome));
    }
}

impl Drop for DialGuard {
    fn drop(&mut self) {
        let Some(pool) = self.pool.upgrade() else { return };
        let mut shared = pool.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = shared.h2.get_mut(&self.key)
            && slot.conns.dialing.as_ref().is_some_and(|d| d.id == self.id)
        {
            slot.conns.dialing = None;
        }
    }
}

impl Pool {
    /// Sends over HTTP/2 on the endpoint's shared connection. The URI must be absolute.
    pub async fn send_h2(&self, t: &Target<'_>, req: Request<ProxyBody>) -> Result<Response<ProxyBody>, PoolError> {
        let mut sender = self.h2_sender(t).await?;
        sender.ready().await.map_err(|e| PoolError::Send(t.address.to_string(), e))?;
        let resp = sender.send_request(req).await.map_err(|e| PoolError::Send(t.address.to_string(), e))?;
        Ok(resp.map(crate::body::stream))
    }

    async fn h2_sender(&self, t: &Target<'_>) -> Result<Sender, PoolError> {
        loop {
            match self.next_h2(t) {
                Next::Ready(sender) => return Ok(sender),
                Next::Wait(mut outcome) => {
                    // An error here: the request opening it went away first. Either way,
                    // look again: the connection is there, or this request opens one.
                    if let Ok(outcome) = outcome.wait_for(Option::is_some).await
                        && let Some(Err(e)) = outcome.as_ref()
                    {
                        return Err(PoolError::SharedConnect(t.address.to_string(), e.clone()));
                    }
                }
                Next::Dial(guard) => {
                    let opened = Box::pin(self.connect_h2(t)).await;
                    if let Some(guard) = guard {
                        guard.finish(opened.as_ref().map(|_| ()).map_err(ToString::to_string));
                    }
                    return opened;
                }
            }
        }
    }

    fn next_h2(&self, t: &Target<'_>) -> Next {
        let mut shared = self.lock();
        let slot = shared.h2.entry(t.key).or_insert_with(|| Slot {
            owner: Arc::downgrade(t.owner),
            idle_timeout: t.settings.idle_timeout,
            conns: Shared::default(),
        });
        let max = t.settings.max_requests_per_connection;
        if let Some(sender) = slot.conns.checkout(max, slot.idle_timeout) {
            return Next::Ready(sender);
        }
        // One stream per connection: nothing to share, nothing to wait for.
        if max == 1 {
            return Next::Dial(None);
        }
        if let Some(dialing) = &slot.conns.dialing {
            return Next::Wait(dialing.outcome.clone());
        }
        slot.conns.dials += 1;
        let id = slot.conns.dials;
        let (tx, rx) = watch::channel(None);
        slot.conns.dialing = Some(Dialing { id, outcome: rx });
        Next::Dial(Some(DialGuard { pool: Arc::downgrade(&self.shared), key: t.key, id, outcome: tx }))
    }

    /// Opens an HTTP/2 connection and, unless it may carry only this stream, makes it the
    /// endpoint's shared one.
    async fn connect_h2(&self, t: &Target<'_>) -> Result<Sender, PoolError> {
        let io = TokioIo::new(self.dial(t).await?);
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| PoolError::Handshake(t.address.to_string(), e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream h2 connection ended");
            }
        });
        let max = t.settings.max_requests_per_connection;
        if max != 1 {
            let mut shared = self.lock();
            if let Some(slot) = shared.h2.get_mut(&t.key) {
                slot.conns.conn = Some(Conn { sender: sender.clone(), last_used: Instant::now(), uses: 1 });
            }
        }
        Ok(sender)
    }
}
