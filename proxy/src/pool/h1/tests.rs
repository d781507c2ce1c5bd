use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Frame;
use prometheus::IntCounter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::body::{BoxError, ProxyBody, empty, full};
use crate::pool::{Pool, PoolError};
use crate::route::Upstream;
use crate::upstream::Cluster;

/// What a scripted origin answers on each connection, in order; `None` closes it.
type Script = Vec<Option<&'static [u8]>>;

/// An origin that answers raw bytes: the request heads (and bodies) it read go to the
/// returned log, one entry per request, and it counts the connections it accepted.
async fn origin(script: Script) -> (SocketAddr, Arc<Mutex<Vec<String>>>, Arc<Mutex<usize>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(Mutex::new(0));
    let (log2, accepted2) = (log.clone(), accepted.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            *accepted2.lock().unwrap() += 1;
            let (script, log) = (script.clone(), log2.clone());
            tokio::spawn(async move {
                for answer in script {
                    let Some(answer) = answer else { return };
                    let Some(request) = read_request(&mut sock).await else { return };
                    log.lock().unwrap().push(request);
                    if sock.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, log, accepted)
}

/// Reads one request head and whatever body it declares (by length or chunked).
async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<String> {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        if sock.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        seen.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&seen).to_lowercase();
    if let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length: ")) {
        let mut body = vec![0u8; len.trim().parse().ok()?];
        sock.read_exact(&mut body).await.ok()?;
        seen.extend(body);
    } else if head.contains("transfer-encoding: chunked") {
        while !seen.ends_with(b"0\r\n\r\n") {
            if sock.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            seen.push(byte[0]);
        }
    }
    Some(String::from_utf8_lossy(&seen).to_string())
}

fn pool() -> Pool {
    Pool::new(IntCounter::new("opened", "connections opened").unwrap())
}

fn cluster(addr: SocketAddr) -> Arc<Cluster> {
    let upstream = Upstream { address: addr.ip().to_string(), port: addr.port(), labels: vec![] };
    Arc::new(Cluster::new("c".into(), vec![upstream], Default::default()))
}

async fn send(pool: &Pool, c: &Arc<Cluster>, req: Request<ProxyBody>) -> Result<hyper::Response<ProxyBody>, PoolError> {
    let picked = c.pick(None).unwrap();
    pool.send_h1(&picked.target(), req).await
}

fn get(method: &str) -> Request<ProxyBody> {
    Request::builder().method(method).uri("/x?y=1").header("host", "origin").body(empty()).unwrap()
}

#[tokio::test]
async fn chunked_responses_keep_their_trailers_and_their_connection() {
    const ANSWER: &[u8] =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-app: 1\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n";
    let (addr, log, accepted) = origin(vec![Some(ANSWER), Some(ANSWER)]).await;
    let (pool, c) = (pool(), cluster(addr));
    for _ in 0..2 {
        let resp = send(&pool, &c, get("GET")).await.unwrap();
        assert_eq!(resp.headers()["x-app"], "1");
        assert!(!resp.headers().contains_key("transfer-encoding"), "framing is per connection");
        let collected = resp.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-sum"], "42");
        assert_eq!(collected.to_bytes(), "hello world");
    }
    assert_eq!(*accepted.lock().unwrap(), 1, "the second request reused the connection");
    assert!(log.lock().unwrap()[0].starts_with("GET /x?y=1 HTTP/1.1\r\nhost: origin\r\n"));
}

#[tokio::test]
async fn close_delimited_responses_end_with_their_connection() {
    let (addr, _, accepted) = origin(vec![Some(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"), None]).await;
    let (pool, c) = (pool(), cluster(addr));
    for _ in 0..2 {
        let body = send(&pool, &c, get("GET")).await.unwrap().into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "until the end");
    }
    assert_eq!(*accepted.lock().unwrap(), 2);
    assert_eq!(pool.idle(), 0);
}

#[tokio::test]
async fn interim_answers_are_skipped_and_head_responses_have_no_body() {
    let (addr, _, accepted) = origin(vec![
        Some(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"),
        Some(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"),
        Some(b"HTTP/1.1 204 No Content\r\n\r\n"),
        Some(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nend"),
    ])
    .await;
    let (pool, c) = (pool(), cluster(addr));
    let resp = send(&pool, &c, get("GET")).await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    let resp = send(&pool, &c, get("HEAD")).await.unwrap();
    assert_eq!(resp.headers()["content-length"], "1000");
    assert!(resp.into_body().collect().await.unwrap().to_bytes().is_empty());
    let resp = send(&pool, &c, get("GET")).await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "");
    let resp = send(&pool, &c, get("GET")).await.unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "end");
    assert_eq!(*accepted.lock().unwrap(), 1);
}

#[tokio::test]
async fn request_bodies_go_by_length_or_chunked_without_hop_by_hop_fields() {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let (addr, log, _) = origin(vec![Some(OK), Some(OK), Some(OK)]).await;
    let (pool, c) = (pool(), cluster(addr));
    let req = Request::builder()
        .method("POST")
        .uri("/upload")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "for this link only")
        .header("keep-alive", "timeout=5")
        .header("x-end", "to end")
        .body(full("small body"))
        .unwrap();
    send(&pool, &c, req).await.unwrap().into_body().collect().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let req = Request::builder().method("PUT").uri("/stream").body(ChannelBody(rx).boxed_unsync()).unwrap();
    let sending = tokio::spawn(async move {
        for part in ["one,", "two,", "three"] {
            tx.send(Bytes::from(part)).await.unwrap();
        }
    });
    send(&pool, &c, req).await.unwrap().into_body().collect().await.unwrap();
    sending.await.unwrap();
    send(&pool, &c, Request::builder().method("POST").uri("/").body(empty()).unwrap()).await.unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log[0], "POST /upload HTTP/1.1\r\nx-end: to end\r\ncontent-length: 10\r\n\r\nsmall body");
    assert_eq!(
        log[1],
        "PUT /stream HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n"
    );
    assert_eq!(log[2], "POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n", "a bodiless POST still says so");
}

/// A request body of unknown length, fed through a channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test]
async fn an_early_answer_arrives_while_the_request_body_is_still_streaming() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 64];
        let _ = sock.read(&mut head).await;
        let _ = sock.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo much").await;
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    });
    let (pool, c) = (pool(), cluster(addr));
    // The body never ends: the answer must not wait for it.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(Bytes::from_static(b"first part")).await.unwrap();
    let req = Request::builder().method("POST").uri("/").body(ChannelBody(rx).boxed_unsync()).unwrap();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(2), send(&pool, &c, req)).await.unwrap().unwrap();
    assert_eq!(resp.status(), 413);
    let body = tokio::time::timeout(std::time::Duration::from_secs(2), resp.into_body().collect()).await.unwrap();
    assert_eq!(body.unwrap().to_bytes(), "too much");
    drop(tx);
    assert_eq!(pool.idle(), 0, "a connection whose request never finished is not reused");
}

#[tokio::test]
async fn malformed_or_truncated_answers_are_errors() {
    let (addr, _, _) = origin(vec![Some(b"HTTP/1.1 two hundred\r\n\r\n")]).await;
    let (pool, c) = (pool(), cluster(addr));
    let err = send(&pool, &c, get("GET")).await.unwrap_err();
    assert!(matches!(err, PoolError::Http1(_, super::H1Error::Head(_))), "{err}");
    let (addr, _, _) = origin(vec![Some(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n")]).await;
    let err = send(&pool, &cluster(addr), get("GET")).await.unwrap_err();
    assert!(err.to_string().contains("conflicting content-length"), "{err}");
    let (addr, _, _) = origin(vec![Some(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"), None]).await;
    let c = cluster(addr);
    let resp = send(&pool, &c, get("GET")).await.unwrap();
    assert!(resp.into_body().collect().await.is_err(), "a body cut short is an error, not a short body");
    assert_eq!(pool.idle(), 0);
}

#[tokio::test]
async fn a_kept_alive_connection_the_origin_closed_is_replaced_for_a_safe_request() {
    // One answer per connection, then the origin closes it, though it said keep-alive.
    let (addr, log, accepted) = origin(vec![Some(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"), None]).await;
    let (pool, c) = (pool(), cluster(addr));
    for _ in 0..3 {
        let resp = send(&pool, &c, get("GET")).await.unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(*accepted.lock().unwrap(), 3);
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_head_without_host_gets_the_callers_authority() {
    const OK: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
    let (addr, log, _) = origin(vec![Some(OK), Some(OK), Some(OK)]).await;
    let (pool, c) = (pool(), cluster(addr));
    let picked = c.pick(None).unwrap();
    // As an h2c caller's request arrives: the authority is in the URI, not in a header.
    let (bare, _) = Request::builder().uri("http://reviews:9080/r").body(empty()).unwrap().into_parts();
    pool.send_h1_head(&picked.target(), &bare, Some("reviews:9080"), empty()).await.unwrap();
    let (hosted, _) = get("GET").into_parts();
    pool.send_h1_head(&picked.target(), &hosted, Some("reviews:9080"), empty()).await.unwrap();
    pool.send_h1_head(&picked.target(), &bare, Some("bad\r\nx-injected: 1"), empty()).await.unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log[0], "GET /r HTTP/1.1\r\nhost: reviews:9080\r\n\r\n");
    assert_eq!(log[1], "GET /x?y=1 HTTP/1.1\r\nhost: origin\r\n\r\n", "the caller's own Host stays");
    assert_eq!(log[2], "GET /r HTTP/1.1\r\n\r\n", "a value that would break the head is not sent");
}

#[tokio::test]
async fn an_idle_connection_keeps_a_small_write_buffer_only() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let io = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let mut conn = super::Conn::new(crate::pool::io::plain(io));
    conn.out.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    let mut conn = conn.idle();
    assert!(conn.out.capacity() > 0, "a head-sized buffer is kept for the next request");
    conn.out.extend_from_slice(&[b'x'; 2 * super::KEPT_WRITE_BUFFER]);
    assert_eq!(conn.idle().out.capacity(), 0, "a body-sized buffer is not held by an idle connection");
}
