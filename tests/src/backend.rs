//! Small HTTP backends for proxy tests: each answers with its name and what it received,
//! and can be told to fail or be slow (`/status/503`, `/sleep/200`, `/sleep/200/status/503`,
//! `/fail-first/2`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// What one backend saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub hits: AtomicUsize,
    /// TCP connections accepted.
    pub connections: AtomicUsize,
    pub hosts: Mutex<Vec<String>>,
    pub paths: Mutex<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
}

impl Backend {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    pub fn hits(&self) -> usize {
        self.seen.hits.load(Ordering::SeqCst)
    }
}

async fn answer(name: String, seen: Arc<Seen>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let n = seen.hits.fetch_add(1, Ordering::SeqCst) + 1;
    // `Upgrade: echo`: switch protocols and echo every byte back.
    if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
        let upgraded = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(io) = upgraded.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(io));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert("upgrade", "echo".parse().unwrap());
        r.headers_mut().insert("connection", "upgrade".parse().unwrap());
        return r;
    }
    let host = req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
    let path = req.uri().path().to_string();
    seen.hosts.lock().unwrap().push(host.clone());
    seen.paths.lock().unwrap().push(req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default());
    let echoed: Vec<String> = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-") || k.as_str() == "traceparent")
        .map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or("")))
        .collect();
    let body_len = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    let mut status = 200u16;
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["status", code, ..] => status = code.parse().unwrap_or(500),
        ["sleep", ms, "status", code, ..] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            status = code.parse().unwrap_or(500);
        }
        ["sleep", ms, ..] => tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await,
        ["fail-first", k, ..] if n <= k.parse().unwrap_or(0) => status = 503,
        _ => {}
    }
    let text = format!("{name} path={path} host={host} body={body_len} {}\n", echoed.join(" "));
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert("x-backend", name.parse().unwrap());
    r
}

/// Starts a backend on a free loopback port; it runs until the test's runtime ends.
pub async fn start(name: &str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let (n, s) = (name.to_string(), seen.clone());
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            s.connections.fetch_add(1, Ordering::SeqCst);
            let (n, s) = (n.clone(), s.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (n, s) = (n.clone(), s.clone());
                    async move { Ok::<_, Infallible>(answer(n, s, req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    Backend { name: name.to_string(), addr, seen }
}
