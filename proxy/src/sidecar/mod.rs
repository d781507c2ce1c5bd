//! The sidecar role: one workload's two sides, each a listener on every worker.
//!
//! - [`outbound`]: the app calling out, routed by the mesh's VirtualServices through the
//!   shared pipeline (`forward`);
//! - [`inbound`]: callers reaching the app, checked through mixr, then to `--app-addr`.
//!
//! This module binds both listeners on every worker thread and serves their
//! connections (the HTTP/1.1 fast path, hyper for the rest). Like the gateway, it sits
//! above the pipeline's modules; none of them depends on it.

pub mod inbound;
pub mod outbound;
pub mod passthrough;
pub mod tcp;
pub mod transparent;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{ProxyBody, reply};
use crate::listener::OpenConnection;
use crate::listener::conn::{ClientBody, ConnState, Tracked};
use crate::proxy::{Direction, Proxy, UNKNOWN};
use crate::worker::Worker;

/// Serves HTTP/1.1 and h2c on `listener` until `shutdown` turns true.
pub async fn serve(
    proxy: Arc<Proxy>,
    worker: Arc<Worker>,
    listener: TcpListener,
    dir: Direction,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = crate::listener::accept::Backoff::default();
    let timeouts = crate::http1::server::Timeouts {
        head: proxy.limits.head_timeout,
        idle: proxy.limits.idle_timeout,
        body: proxy.limits.body_timeout,
    };
    loop {
        let (sock, peer) = tokio::select! {
            a = crate::listener::accept::next(&listener, &mut backoff, dir.reporter_kind()) => a,
            _ = shutdown.changed() => return,
        };
        // Past the ceiling a connection is closed at once: the caller sees it end rather
        // than wait in the backlog, and the ones being served go on.
        let Some(open) = proxy.connections(dir).try_open(proxy.limits.max_connections) else {
            proxy.stats.connections_refused.with_label_values(&[dir.reporter_kind()]).inc();
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let handler = Listener {
            proxy: proxy.clone(),
            worker: worker.clone(),
            dir,
            peer,
            open: Arc::new(open),
            original: None,
            mtls_peer: None,
        };
        tokio::spawn(async move {
            let mut handler = handler;
            let sock = match dir {
                Direction::Inbound => match inbound::accept(&mut handler, sock).await {
                    Some(crate::mtls::accept::Inbound::Plain(sock)) => sock,
                    Some(crate::mtls::accept::Inbound::Mutual(tls, _)) => {
                        return crate::http1::server::serve(*tls, &handler, &timeouts).await;
                    }
                    None => return,
                },
                Direction::Outbound => sock,
            };
            // A connection the capture rules redirected here that is not HTTP is proxied as TCP.
            let Some((sock, original)) = transparent::claim(&handler.proxy, &handler.worker, dir, sock, peer).await
            else {
                return;
            };
            handler.original = original;
            crate::http1::server::serve(sock, &handler, &timeouts).await
        });
    }
}

/// One accepted connection's requests, whichever path serves them.
#[derive(Clone)]
struct Listener {
    proxy: Arc<Proxy>,
    worker: Arc<Worker>,
    dir: Direction,
    peer: SocketAddr,
    /// Counts the connection against `--max-connections` while any clone lives: an
    /// upgraded connection's splice keeps one.
    open: Arc<OpenConnection>,
    /// Where the connection was going, when the capture rules redirected it here.
    original: Option<SocketAddr>,
    /// The caller's verified identity, on an mTLS connection.
    mtls_peer: Option<crate::mtls::Peer>,
}

impl<IO> crate::http1::server::Handle<IO> for Listener
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    async fn handle(&self, mut req: Request<ProxyBody>) -> Response<ProxyBody> {
        let Listener { proxy, worker, dir, peer, .. } = self;
        if let Err(why) = crate::ingress::admit(&mut req, proxy.ingress) {
            tracing::debug!(error = %why, "request refused");
            let mut resp = reply(400, format!("bad request: {why}\n"));
            resp.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
            proxy.observe(worker, *dir, UNKNOWN, "", 400, Instant::now());
            return resp;
        }
        if let Some(original) = self.original {
            req.extensions_mut().insert(crate::capture::OriginalDst(original));
        }
        if let Some(peer) = &self.mtls_peer {
            req.extensions_mut().insert(peer.clone());
        }
        let mut resp = crate::trace::traced(proxy.tracer.as_ref(), *dir, req, |req| async {
            match dir {
                Direction::Outbound => proxy.outbound(worker, req, *peer).await,
                Direction::Inbound => proxy.inbound(worker, req, *peer).await,
            }
        })
        .await;
        let status = resp.status();
        crate::http1::strip_bodiless_framing(status, resp.headers_mut());
        resp
    }

    /// hyper serves h2c, upgrades and whatever else the fast path leaves to it, under the
    /// same limits (`listener::conn`).
    async fn fallback(&self, io: crate::http1::server::Rewind<IO>) {
        let limits = self.proxy.limits;
        let state = ConnState::new();
        let listener = self.clone();
        let conn = state.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let listener = listener.clone();
            let conn = conn.clone();
            async move {
                let busy = conn.begin();
                let mut req = req;
                if req.headers().contains_key(hyper::header::UPGRADE) {
                    // An upgraded connection outlives this one's task; it counts until it ends.
                    req.extensions_mut().insert(listener.open.clone());
                }
                // HTTP/2 fails a stream alone; an HTTP/1.1 body fault ends the connection.
                let h1 = req.version() != hyper::Version::HTTP_2;
                let req = req.map(|b| ClientBody::new(b, limits.body_timeout, h1.then(|| conn.clone())).boxed_unsync());
                // Boxed: the request's future is several kilobytes, and hyper moves it.
                let mut resp = Box::pin(<Listener as crate::http1::server::Handle<IO>>::handle(&listener, req)).await;
                if let Some(fault) = conn.fault().filter(|_| h1) {
                    resp = fault.response();
                }
                Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, busy)))
            }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // hyper's timer runs from when it starts waiting for a head, idle time included.
        builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.head_timeout.min(limits.idle_timeout));
        let serve = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::select! {
            biased;
            result = serve => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended");
                }
            }
            () = state.idle(limits.idle_timeout) => tracing::debug!("idle connection closed"),
        }
    }
}

/// The listeners of one worker.
pub struct WorkerListeners {
    pub outbound: std::net::TcpListener,
    pub inbound: std::net::TcpListener,
}

/// Binds `workers` listener pairs on the same two addresses (port 0 is resolved by the first).
pub fn bind_all(
    outbound: SocketAddr,
    inbound: SocketAddr,
    workers: usize,
) -> Result<(Vec<WorkerListeners>, SocketAddr, SocketAddr), String> {
    let bind = |a: SocketAddr| crate::worker::bind_shared(a).map_err(|e| format!("cannot listen on {a}: {e}"));
    let first = WorkerListeners { outbound: bind(outbound)?, inbound: bind(inbound)? };
    let local = |l: &std::net::TcpListener| l.local_addr().map_err(|e| e.to_string());
    let (outbound, inbound) = (local(&first.outbound)?, local(&first.inbound)?);
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(WorkerListeners { outbound: bind(outbound)?, inbound: bind(inbound)? });
    }
    Ok((all, outbound, inbound))
}

/// Starts one thread per listener pair. Each serves until `shutdown` turns true, then
/// flushes its reports and ends.
pub fn spawn_all(
    proxy: Arc<Proxy>,
    listeners: Vec<WorkerListeners>,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, String> {
    let mut threads = Vec::new();
    for (n, l) in listeners.into_iter().enumerate() {
        let proxy = proxy.clone();
        let shutdown = shutdown.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start worker runtime: {e}"))?;
        let t = std::thread::Builder::new()
            .name(format!("mixr-proxy-worker-{n}"))
            .spawn(move || rt.block_on(run(proxy, l, shutdown)))
            .map_err(|e| format!("cannot start worker thread: {e}"))?;
        threads.push(t);
    }
    Ok(threads)
}

async fn run(proxy: Arc<Proxy>, l: WorkerListeners, shutdown: watch::Receiver<bool>) {
    let worker = Arc::new(Worker::start(&proxy.stats, proxy.policy.as_deref(), &proxy.mesh));
    let (Ok(outbound), Ok(inbound)) = (TcpListener::from_std(l.outbound), TcpListener::from_std(l.inbound)) else {
        tracing::error!("worker cannot register its listeners");
        return;
    };
    let out = tokio::spawn(serve(proxy.clone(), worker.clone(), outbound, Direction::Outbound, shutdown.clone()));
    let inb = tokio::spawn(serve(proxy.clone(), worker.clone(), inbound, Direction::Inbound, shutdown));
    let _ = tokio::join!(out, inb);
    if let Some(r) = &worker.reporter {
        r.flush().await;
    }
}
