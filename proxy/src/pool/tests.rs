use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::body::empty;
use crate::config::TrafficPolicy;
use crate::route::Upstream;
use crate::upstream::Cluster;
use http_body_util::BodyExt;
use hyper_util::rt::TokioExecutor;

/// A local origin that counts the TCP connections it accepted. With `keep_alive` off it
/// closes each connection after one response.
async fn origin(keep_alive: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(crate::body::full("hello")))
                });
                let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                b.http1().keep_alive(keep_alive);
                let _ = b.serve_connection(TokioIo::new(sock), svc).await;
            });
        }
    });
    (addr, accepted)
}

fn pool() -> Pool {
    Pool::new(IntCounter::new("opened", "connections opened").unwrap())
}

fn cluster(addr: SocketAddr, pool: ConnectionPool) -> Arc<Cluster> {
    let upstream = Upstream { address: addr.ip().to_string(), port: addr.port(), labels: vec![] };
    Arc::new(Cluster::new("c".into(), vec![upstream], TrafficPolicy { connection_pool: pool, ..Default::default() }))
}

async fn get(pool: &Pool, c: &Arc<Cluster>, http2: bool) -> Result<String, PoolError> {
    let picked = c.pick(None).unwrap();
    let target = picked.target();
    let req = Request::builder()
        .uri(if http2 { format!("http://{}/", target.address) } else { "/".to_string() })
        .header(hyper::header::HOST, "origin")
        .body(empty())
        .unwrap();
    let resp = if http2 { pool.send_h2(&target, req).await? } else { pool.send_h1(&target, req).await? };
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok(String::from_utf8_lossy(&body).to_string())
}

#[tokio::test]
async fn http1_connections_are_kept_alive_and_reused() {
    let (addr, accepted) = origin(true).await;
    let c = cluster(addr, ConnectionPool::default());
    let pool = pool();
    for _ in 0..5 {
        assert_eq!(get(&pool, &c, false).await.unwrap(), "hello");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle(), 1);
}

#[tokio::test]
async fn max_requests_per_connection_opens_new_connections() {
    let (addr, accepted) = origin(true).await;
    let c = cluster(addr, ConnectionPool { max_requests_per_connection: Some(2), ..Default::default() });
    let pool = pool();
    for _ in 0..5 {
        get(&pool, &c, false).await.unwrap();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "2 + 2 + 1 requests");
    assert_eq!(pool.opened.get(), 3, "every connection is counted");
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() {
    let (addr, accepted) = origin(true).await;
    let c = cluster(addr, ConnectionPool { idle_timeout: Some(Duration::from_secs(30)), ..Default::default() });
    let pool = pool();
    get(&pool, &c, false).await.unwrap();
    assert_eq!(pool.sweep(Instant::now() + Duration::from_secs(29)), 0, "still fresh");
    assert_eq!(pool.sweep(Instant::now() + Duration::from_secs(31)), 1, "idle too long");
    assert_eq!(pool.idle(), 0);
    get(&pool, &c, false).await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connections_of_a_replaced_cluster_are_swept() {
    let (addr, _) = origin(true).await;
    let c = cluster(addr, ConnectionPool::default());
    let pool = pool();
    get(&pool, &c, false).await.unwrap();
    drop(c);
    assert_eq!(pool.sweep(Instant::now()), 1);
}

#[tokio::test]
async fn a_connection_the_server_closed_is_not_reused() {
    let (addr, accepted) = origin(false).await;
    let c = cluster(addr, ConnectionPool::default());
    let pool = pool();
    for _ in 0..3 {
        assert_eq!(get(&pool, &c, false).await.unwrap(), "hello");
        // Let the reactor see the close before the next checkout.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn http2_streams_share_a_connection_up_to_the_limit() {
    let (addr, accepted) = origin(true).await;
    let shared = cluster(addr, ConnectionPool::default());
    let pool = pool();
    let (a, b, c) = tokio::join!(get(&pool, &shared, true), get(&pool, &shared, true), get(&pool, &shared, true));
    assert_eq!((a.unwrap(), b.unwrap(), c.unwrap()), ("hello".into(), "hello".into(), "hello".into()));
    get(&pool, &shared, true).await.unwrap();
    assert!(accepted.load(Ordering::SeqCst) <= 3, "concurrent first requests may race to connect");
    let before = accepted.load(Ordering::SeqCst);
    get(&pool, &shared, true).await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), before, "later requests reuse the connection");

    let (addr, accepted) = origin(true).await;
    let one = cluster(addr, ConnectionPool { max_requests_per_connection: Some(1), ..Default::default() });
    for _ in 0..3 {
        get(&pool, &one, true).await.unwrap();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "one stream per connection");
}

#[tokio::test]
async fn connect_timeout_bounds_a_connect_that_hangs() {
    // A listener that never accepts: once its backlog is full, the kernel drops further
    // SYNs and connects hang.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await {
            fillers.push(s);
        }
    }
    let c = cluster(addr, ConnectionPool { connect_timeout: Some(Duration::from_millis(200)), ..Default::default() });
    let started = Instant::now();
    let err = get(&pool(), &c, false).await.unwrap_err();
    assert!(matches!(err, PoolError::ConnectTimeout(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// `n` HTTP/2 requests at once, their answers in order.
async fn burst(pool: &Pool, c: &Arc<Cluster>, n: usize) -> Vec<Result<String, PoolError>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (pool, c) = (pool.clone(), c.clone());
            tokio::spawn(async move { get(&pool, &c, true).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

#[tokio::test]
async fn a_burst_of_http2_streams_to_a_cold_endpoint_opens_one_connection() {
    let (addr, accepted) = origin(true).await;
    let c = cluster(addr, ConnectionPool::default());
    let pool = pool();
    for answer in burst(&pool, &c, 50).await {
        assert_eq!(answer.unwrap(), "hello");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the streams waited for the connection being opened");
    assert_eq!(pool.opened.get(), 1);
}

#[tokio::test]
async fn streams_waiting_for_a_connection_share_its_failure() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let c = cluster(closed, ConnectionPool::default());
    let pool = pool();
    let answers = burst(&pool, &c, 20).await;
    assert!(answers.iter().all(Result::is_err), "nothing listens there");
    assert_eq!(pool.opened.get(), 1, "one attempt for all of them");
    assert!(answers.iter().any(|a| matches!(a, Err(PoolError::SharedConnect(..)))));
    // The failure is not remembered: the next request tries again.
    assert!(get(&pool, &c, true).await.is_err());
    assert_eq!(pool.opened.get(), 2);
}

#[tokio::test]
async fn a_stream_waiting_for_an_abandoned_connection_attempt_opens_its_own() {
    use std::future::Future;
    use std::task::{Context, Waker};
    let (addr, _) = origin(true).await;
    let c = cluster(addr, ConnectionPool::default());
    let pool = pool();
    let mut cx = Context::from_waker(Waker::noop());
    // Polled once: it starts opening the connection (its connect cannot finish before
    // the runtime turns), then it is dropped, as when a caller goes away.
    let mut opening = Box::pin(get(&pool, &c, true));
    assert!(opening.as_mut().poll(&mut cx).is_pending());
    let mut waiting = Box::pin(get(&pool, &c, true));
    assert!(waiting.as_mut().poll(&mut cx).is_pending(), "waits for the attempt under way");
    drop(opening);
    assert_eq!(waiting.await.unwrap(), "hello");
    assert_eq!(pool.opened.get(), 2, "the abandoned attempt and its own");
    assert_eq!(pool.idle(), 1);
}
