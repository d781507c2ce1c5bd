//! The gateway's workers and listeners. Workers are threads with a runtime each, as the
//! sidecar's (`worker`): each has its own upstream pool, mixr channel and reporter, and its
//! own listener on every server port (SO_REUSEPORT). Ports follow the config: the control
//! task ([`control`]) compiles the plan when the config or a certificate changes, opens
//! the listeners of new ports on every worker and closes those of ports no longer served.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::Gateway;
use crate::body::reply;
use crate::listener::OpenConnection;
use crate::proxy::{Direction, UNKNOWN};
use crate::worker::Worker;

/// A listener for one worker: the server port it serves and when to stop.
pub struct Bind {
    pub port: u16,
    pub listener: std::net::TcpListener,
    pub stop: watch::Receiver<bool>,
}

/// The worker threads, and where to send each one the listeners it is to serve.
pub type Workers = (Vec<JoinHandle<()>>, Vec<mpsc::UnboundedSender<Bind>>);

/// Starts the worker threads; each serves the listeners it is sent until `shutdown`, then
/// flushes its reports.
pub fn spawn_workers(gw: Arc<Gateway>, shutdown: watch::Receiver<bool>) -> Result<Workers, String> {
    let mut threads = Vec::new();
    let mut senders = Vec::new();
    for n in 0..gw.options.workers.max(1) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Bind>();
        let gw = gw.clone();
        let mut shutdown = shutdown.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start worker runtime: {e}"))?;
        let t = std::thread::Builder::new()
            .name(format!("mixr-gateway-worker-{n}"))
            .spawn(move || {
                rt.block_on(async move {
                    let worker = Arc::new(Worker::start(&gw.proxy.stats, gw.proxy.policy.as_deref(), &gw.proxy.mesh));
                    loop {
                        tokio::select! {
                            bind = rx.recv() => match bind {
                                Some(b) => {
                                    tokio::spawn(accept(gw.clone(), worker.clone(), b, shutdown.clone()));
                                }
                                None => break,
                            },
                            _ = shutdown.changed() => break,
                        }
                    }
                    if let Some(r) = &worker.reporter {
                        r.flush().await;
                    }
                })
            })
            .map_err(|e| format!("cannot start worker thread: {e}"))?;
        threads.push(t);
        senders.push(tx);
    }
    Ok((threads, senders))
}

async fn accept(gw: Arc<Gateway>, worker: Arc<Worker>, bind: Bind, mut shutdown: watch::Receiver<bool>) {
    let Bind { port, listener, mut stop } = bind;
    let Ok(listener) = TcpListener::from_std(listener) else {
        tracing::error!(port, "worker cannot register a gateway listener");
        return;
    };
    let mut backoff = crate::listener::accept::Backoff::default();
    loop {
        let (sock, peer) = tokio::select! {
            a = crate::listener::accept::next(&listener, &mut backoff, "gateway") => a,
            _ = stop.changed() => return,
            _ = shutdown.changed() => return,
        };
        let Some(open) = gw.connections.try_open(gw.proxy.limits.max_connections) else {
            gw.proxy.stats.connections_refused.with_label_values(&["gateway"]).inc();
            continue;
        };
        let _ = sock.set_nodelay(true);
        let tls = gw.plan.load().ports.get(&port).is_some_and(|p| p.tls);
        let conn = super::handle::Conn { gw: gw.clone(), worker: worker.clone(), port, peer, tls: None };
        tokio::spawn(async move {
            if tls {
                serve_tls(conn, sock, open).await;
            } else {
                serve_plain(conn, sock, open).await;
            }
        });
    }
}

async fn serve_plain(conn: super::handle::Conn, sock: TcpStream, open: OpenConnection) {
    let limits = conn.gw.proxy.limits;
    let timeouts = crate::http1::server::Timeouts {
        head: limits.head_timeout,
        idle: limits.idle_timeout,
        body: limits.body_timeout,
    };
    let handler = super::handle::Plain { conn: Arc::new(conn), open: Arc::new(open) };
    crate::http1::server::serve(sock, &handler, &timeouts).await;
}

/// Reads the client hello, picks the server its SNI names, finishes the handshake with
/// that server's config and serves the connection; all of the handshake within the
/// request head timeout.
async fn serve_tls(mut conn: super::handle::Conn, sock: TcpStream, open: OpenConnection) {
    let gw = conn.gw.clone();
    let limits = gw.proxy.limits;
    let handshake = async {
        let acceptor = tokio_rustls::LazyConfigAcceptor::new(tokio_rustls::rustls::server::Acceptor::default(), sock);
        let start = acceptor.await.map_err(|e| e.to_string())?;
        let sni = start.client_hello().server_name().map(str::to_ascii_lowercase);
        let plan = gw.plan.load();
        let servers = plan.ports.get(&conn.port).map(|p| p.servers.as_slice()).unwrap_or_default();
        let index = super::tls::pick(servers.iter().map(|s| &s.server), sni.as_deref())
            .ok_or_else(|| format!("no server takes SNI {sni:?}"))?;
        let config = servers[index].tls.clone().ok_or("server without certificates")?;
        let server = servers[index].clone();
        let stream = start.into_stream(config).await.map_err(|e| e.to_string())?;
        let principal =
            stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(crate::mtls::identity::principal);
        Ok::<_, String>((stream, super::handle::TlsInfo { sni, principal, server }))
    };
    let (stream, info) = match tokio::time::timeout(limits.head_timeout, handshake).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            gw.stats.handshake_failures.inc();
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            gw.stats.handshake_failures.inc();
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    conn.tls = Some(Arc::new(info));
    // HTTP/1.1 takes the fast path as on plain ports; h2 (ALPN) is handed to hyper by its
    // preface.
    let timeouts = crate::http1::server::Timeouts {
        head: limits.head_timeout,
        idle: limits.idle_timeout,
        body: limits.body_timeout,
    };
    let handler = super::handle::Plain { conn: Arc::new(conn), open: Arc::new(open) };
    crate::http1::server::serve(stream, &handler, &timeouts).await;
}

/// Keeps the gateway's listeners in step with its plan until `shutdown`: checks the
/// config generation and the certificate files every second.
pub async fn control(
    gw: Arc<Gateway>,
    workers: Vec<mpsc::UnboundedSender<Bind>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut open: BTreeMap<u16, (SocketAddr, watch::Sender<bool>)> = BTreeMap::new();
    sync_listeners(&gw, &workers, &mut open, true)?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        if gw.refresh()
            && let Err(e) = sync_listeners(&gw, &workers, &mut open, false)
        {
            tracing::error!(error = %e, "gateway listeners");
        }
    }
}

fn sync_listeners(
    gw: &Gateway,
    workers: &[mpsc::UnboundedSender<Bind>],
    open: &mut BTreeMap<u16, (SocketAddr, watch::Sender<bool>)>,
    first: bool,
) -> Result<(), String> {
    let plan = gw.plan.load();
    let mut changed = first;
    open.retain(|port, (_, stop)| {
        let keep = plan.ports.contains_key(port);
        if !keep {
            let _ = stop.send(true);
            tracing::info!(port, "gateway port closed");
            changed = true;
        }
        keep
    });
    let mut result = Ok(());
    for port in plan.ports.keys() {
        if open.contains_key(port) {
            continue;
        }
        let want = SocketAddr::new(gw.options.bind, if gw.options.ephemeral_ports { 0 } else { *port });
        let bind = |a: SocketAddr| crate::worker::bind_shared(a).map_err(|e| format!("cannot listen on {a}: {e}"));
        let first = match bind(want) {
            Ok(l) => l,
            Err(e) => {
                result = Err(e);
                continue;
            }
        };
        let Ok(addr) = first.local_addr() else { continue };
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut listeners = vec![first];
        for _ in 1..workers.len() {
            match bind(addr) {
                Ok(l) => listeners.push(l),
                Err(e) => result = Err(e),
            }
        }
        for (w, l) in workers.iter().zip(listeners) {
            let _ = w.send(Bind { port: *port, listener: l, stop: stop_rx.clone() });
        }
        tracing::info!(port, %addr, "gateway port listening");
        open.insert(*port, (addr, stop_tx));
        changed = true;
    }
    if changed && let Some(path) = &gw.options.addr_file {
        let mut summary = gw.options.addr_summary.clone();
        for (port, (addr, _)) in open.iter() {
            summary.push_str(&format!("gateway.{port}={addr}\n"));
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &summary).and_then(|_| std::fs::rename(&tmp, path)).map_err(|e| e.to_string())?;
    }
    result
}

/// The answer to a request that found no server or route.
pub fn no_route(conn: &super::handle::Conn, started: std::time::Instant) -> hyper::Response<crate::body::ProxyBody> {
    let resp = reply(404, "no route (NR)\n");
    conn.gw.proxy.observe(&conn.worker, Direction::Outbound, UNKNOWN, "", 404, started);
    resp
}
