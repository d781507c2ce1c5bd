//! Accepting connections on mixr's ports, bounded whatever callers do:
//!
//! - at most `max_connections` at once per listener; one more is accepted and closed at
//!   once (a refusal the caller sees, rather than a backlog it waits in);
//! - a new connection must send its first bytes (the HTTP/2 preface, a request head)
//!   within `handshake_timeout`, and, where set, may stay silent no longer than
//!   `idle_timeout`;
//! - when the process runs out of file descriptors (EMFILE, ENFILE) or buffers, the accept
//!   loop sleeps, 5 ms doubling to 1 s, instead of spinning, and says so at most once a
//!   second.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Sleep;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    /// Bytes a connection must send before the handshake deadline no longer applies (24:
    /// the HTTP/2 connection preface).
    pub handshake_bytes: usize,
}

/// A log line that is written at most once a second.
#[derive(Debug, Default)]
pub struct Throttled {
    last_ms: AtomicU64,
}

impl Throttled {
    /// Whether a line may be written now.
    pub fn ready(&self) -> bool {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let now = START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1000;
        let last = self.last_ms.load(Ordering::Relaxed);
        now >= last + 1000 && self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// Errors after which accepting again at once would fail the same way.
pub fn is_exhaustion(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// Accepts on `listener` until the returned receiver is dropped.
pub fn accept_loop(listener: TcpListener, limits: Limits, port: &'static str) -> mpsc::Receiver<io::Result<Guarded>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let (exhausted, full) = (Throttled::default(), Throttled::default());
        let mut backoff = Duration::from_millis(5);
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) if is_exhaustion(&e) => {
                    if exhausted.ready() {
                        tracing::warn!(port, error = %e, backoff_ms = backoff.as_millis() as u64, "cannot accept connections; backing off");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
                Err(e) => {
                    tracing::debug!(port, error = %e, "accept failed");
                    continue;
                }
            };
            backoff = Duration::from_millis(5);
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                if full.ready() {
                    tracing::warn!(
                        port,
                        max = limits.max_connections,
                        "connection limit reached; closing new connections"
                    );
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            if tx.send(Ok(Guarded::new(stream, permit, limits))).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// A connection with its slot and deadlines.
pub struct Guarded {
    inner: TcpStream,
    _slot: OwnedSemaphorePermit,
    handshake: Option<(usize, Pin<Box<Sleep>>)>,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded").field("peer", &self.inner.peer_addr().ok()).finish()
    }
}

impl Guarded {
    fn new(inner: TcpStream, slot: OwnedSemaphorePermit, limits: Limits) -> Guarded {
        Guarded {
            inner,
            _slot: slot,
            handshake: Some((limits.handshake_bytes.max(1), Box::pin(tokio::time::sleep(limits.handshake_timeout)))),
            idle: limits.idle_timeout.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
        }
    }

    fn touched(&mut self) {
        if let Some((d, sleep)) = &mut self.idle {
            sleep.as_mut().reset(tokio::time::Instant::now() + *d);
        }
    }

    /// An error once a deadline has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if let Some((_, deadline)) = &mut self.handshake
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Some(io::Error::new(io::ErrorKind::TimedOut, "no handshake within the timeout"));
        }
        if let Some((_, deadline)) = &mut self.idle
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Some(io::Error::new(io::ErrorKind::TimedOut, "connection idle past the timeout"));
        }
        None
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.touched();
            if let Some((left, _)) = &mut self.handshake {
                *left = left.saturating_sub(read);
                if *left == 0 {
                    self.handshake = None;
                }
            }
        }
        polled
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touched();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touched();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn listener(limits: Limits) -> (std::net::SocketAddr, mpsc::Receiver<io::Result<Guarded>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        (addr, accept_loop(l, limits, "test"))
    }

    const LIMITS: Limits = Limits {
        max_connections: 2,
        handshake_timeout: Duration::from_millis(200),
        idle_timeout: Some(Duration::from_millis(400)),
        handshake_bytes: 4,
    };

    #[tokio::test]
    async fn silent_and_idle_connections_time_out() {
        let (addr, mut rx) = listener(LIMITS).await;
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut conn = rx.recv().await.unwrap().unwrap();
        let started = Instant::now();
        let err = conn.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));

        let mut talker = TcpStream::connect(addr).await.unwrap();
        let mut conn = rx.recv().await.unwrap().unwrap();
        talker.write_all(b"PRI * more").await.unwrap();
        let mut buf = [0u8; 16];
        assert!(conn.read(&mut buf).await.unwrap() > 0, "the handshake arrived in time");
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.to_string(), "connection idle past the timeout");
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_closed() {
        let (addr, mut rx) = listener(Limits { handshake_timeout: Duration::from_secs(30), ..LIMITS }).await;
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let held = [rx.recv().await.unwrap().unwrap(), rx.recv().await.unwrap().unwrap()];
        let mut third = TcpStream::connect(addr).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut [0u8; 1])).await.unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "the third connection is closed: {n:?}");
        drop(held);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _c = TcpStream::connect(addr).await.unwrap();
        assert!(rx.recv().await.unwrap().is_ok(), "a slot freed is used again");
    }

    #[test]
    fn throttled_lines_are_at_most_one_a_second() {
        let t = Throttled::default();
        assert!(t.ready());
        assert!((0..1000).all(|_| !t.ready()));
    }
}
