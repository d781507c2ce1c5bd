use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Handle, Rewind, Timeouts, serve};

const TIMEOUTS: Timeouts = Timeouts {
    head: std::time::Duration::from_secs(10),
    idle: std::time::Duration::from_secs(60),
    body: std::time::Duration::from_secs(60),
};
use crate::body::{BoxError, ProxyBody, full};

/// Answers with what it saw; `/stream` answers with a body of unknown length and a
/// trailer. Counts the connections handed to the fallback.
#[derive(Clone, Default)]
struct Echo {
    fallbacks: Arc<AtomicUsize>,
}

impl Handle for Echo {
    async fn handle(&self, req: Request<ProxyBody>) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        if parts.uri.path() == "/stream" {
            let frames: Vec<Result<Frame<bytes::Bytes>, BoxError>> = vec![
                Ok(Frame::data(bytes::Bytes::from_static(b"part one,"))),
                Ok(Frame::data(bytes::Bytes::from_static(b" part two"))),
                Ok(Frame::trailers(
                    [(hyper::header::HeaderName::from_static("x-total"), hyper::header::HeaderValue::from_static("2"))]
                        .into_iter()
                        .collect(),
                )),
            ];
            return Response::new(Frames(frames.into()).boxed_unsync());
        }
        let host = parts.headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("-").to_string();
        let text = format!("{} {} host={} body={}", parts.method, parts.uri, host, String::from_utf8_lossy(&body));
        let mut resp = Response::new(full(text));
        resp.headers_mut().insert("x-seen", hyper::header::HeaderValue::from_static("yes"));
        resp
    }

    async fn fallback(&self, io: Rewind) {
        self.fallbacks.fetch_add(1, Ordering::SeqCst);
        let echo = self.clone();
        let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let echo = echo.clone();
            async move { Ok::<_, std::convert::Infallible>(echo.handle(req.map(crate::body::stream)).await) }
        });
        let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        let _ = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), svc).await;
    }
}

/// Frames handed out one per poll.
struct Frames(std::collections::VecDeque<Result<Frame<bytes::Bytes>, BoxError>>);

impl hyper::body::Body for Frames {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<bytes::Bytes>, BoxError>>> {
        std::task::Poll::Ready(self.0.pop_front())
    }
}

async fn listener(echo: Echo) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let echo = echo.clone();
            tokio::spawn(async move { serve(sock, &echo, &TIMEOUTS).await });
        }
    });
    addr
}

/// Sends raw bytes and reads until the peer closes or `until` appears `count` times.
async fn exchange(sock: &mut TcpStream, send: &[u8], until: &str, count: usize) -> String {
    sock.write_all(send).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while String::from_utf8_lossy(&got).matches(until).count() < count {
        match tokio::time::timeout_at(deadline, sock.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => panic!("{e}"),
        }
    }
    String::from_utf8_lossy(&got).to_string()
}

#[tokio::test]
async fn kept_alive_and_pipelined_requests_are_answered_in_order() {
    let echo = Echo::default();
    let addr = listener(echo.clone()).await;
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let got = exchange(&mut sock, b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n", "host=a", 1).await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("x-seen: yes\r\n") && got.contains("\r\ndate: "), "{got}");
    assert!(got.contains("content-length: 21\r\n") && got.ends_with("GET /one host=a body="), "{got}");
    // Two at once, the second with a small body, on the same connection.
    let two = b"GET /two HTTP/1.1\r\nHost: b\r\n\r\nPOST /three HTTP/1.1\r\nHost: c\r\nContent-Length: 5\r\n\r\nhello";
    let got = exchange(&mut sock, two, "body=", 2).await;
    let first = got.find("GET /two host=b body=").unwrap();
    let second = got.find("POST /three host=c body=hello").unwrap();
    assert!(first < second, "{got}");
    assert_eq!(echo.fallbacks.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn bodies_of_unknown_length_go_chunked_with_trailers_for_who_asked() {
    let addr = listener(Echo::default()).await;
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let got = exchange(&mut sock, b"GET /stream HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n", "\r\n\r\n", 2).await;
    assert!(got.contains("transfer-encoding: chunked\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\n9\r\npart one,\r\n9\r\n part two\r\n0\r\nx-total: 2\r\n\r\n"), "{got}");
    let got = exchange(&mut sock, b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n", "0\r\n\r\n", 1).await;
    assert!(got.ends_with("9\r\n part two\r\n0\r\n\r\n"), "no trailers unless asked for: {got}");
}

#[tokio::test]
async fn head_answers_and_connection_close() {
    let addr = listener(Echo::default()).await;
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let got = exchange(&mut sock, b"HEAD /h HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "never", 1).await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n") && got.contains("connection: close\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\n"), "a HEAD answer has no body: {got}");
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_connection_closes() {
    let addr = listener(Echo::default()).await;
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let got = exchange(&mut sock, b"GET /x HTTP/1.1\r\nHo st: a\r\n\r\n", "never", 1).await;
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let got =
        exchange(&mut sock, b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "never", 1).await;
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    // Both framings, in either order: refused, never handed to a parser that picks one.
    for head in [
        "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    ] {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        let got = exchange(&mut sock, format!("{head}3\r\nabc\r\n0\r\n\r\n").as_bytes(), "never", 1).await;
        assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    }
}

#[tokio::test]
async fn what_the_fast_path_does_not_take_is_served_by_the_fallback() {
    let echo = Echo::default();
    let addr = listener(echo.clone()).await;
    // A chunked request body, after a fast-path request on the same connection.
    let mut sock = TcpStream::connect(addr).await.unwrap();
    exchange(&mut sock, b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n", "body=", 1).await;
    let chunked = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let got = exchange(&mut sock, chunked, "body=abc", 1).await;
    assert!(got.contains("POST /up host=a body=abc"), "{got}");
    // HTTP/1.0, and a body too large to read whole.
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let got = exchange(&mut sock, b"GET /old HTTP/1.0\r\nHost: a\r\n\r\n", "never", 1).await;
    assert!(got.contains("GET /old host=a"), "{got}");
    let big = vec![b'x'; super::MAX_INLINE_BODY as usize + 1];
    let mut req = format!("PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", big.len()).into_bytes();
    req.extend_from_slice(&big);
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let got = exchange(&mut sock, &req, "xxxx", 1).await;
    assert!(got.contains("PUT /big host=a body=xxx"), "{}", &got[..got.len().min(300)]);
    // h2c with prior knowledge.
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut h2, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder().uri(format!("http://{addr}/h2")).body(crate::body::empty()).unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).starts_with("GET http://"), "{body:?}");
    assert_eq!(echo.fallbacks.load(Ordering::SeqCst), 4);
}
