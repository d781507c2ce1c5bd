//! Connections the capture rules redirected to a listener: HTTP keeps the listener's usual
//! path (outbound routes by Host), anything else is proxied as TCP to where it was going
//! ([`super::tcp`]). Connections made to the listener itself (explicit mode) never come
//! here, so an app calling 127.0.0.1:15001 with a Host works as before.
//!
//! The hook: the listener's accept loop hands each connection to [`claim`] in the
//! connection's task, before serving it as HTTP (proxy.rs, `serve`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::proxy::{Direction, Proxy};
use crate::worker::Worker;

/// How long a redirected connection may stay silent before it is taken for TCP: a
/// server-first protocol (MySQL, SMTP) waits for the server, which must get the
/// connection. Istio's default protocol detection timeout.
pub const DETECTION_TIMEOUT: Duration = Duration::from_millis(100);

/// The HTTP/1.x methods the sniffing knows, and HTTP/2's preface.
const HTTP_STARTS: [&[u8]; 10] =
    [b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ", b"PRI * HTTP/2"];

#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    Http,
    Tcp,
}

/// What the first bytes say; `None` while they could still be either.
pub fn classify(first: &[u8]) -> Option<Sniffed> {
    if first.is_empty() {
        return None;
    }
    let mut undecided = false;
    for start in HTTP_STARTS {
        if first.starts_with(start) {
            return Some(Sniffed::Http);
        }
        undecided |= start.starts_with(first);
    }
    if undecided { None } else { Some(Sniffed::Tcp) }
}

/// Waits for the first bytes (peeked: they stay in the socket) until they decide, the
/// caller closes its side, or the detection timeout passes.
pub async fn sniff(sock: &TcpStream) -> Sniffed {
    let deadline = tokio::time::Instant::now() + DETECTION_TIMEOUT;
    let mut buf = [0u8; 16];
    let mut seen = 0;
    loop {
        match tokio::time::timeout_at(deadline, sock.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                if let Some(s) = classify(&buf[..n]) {
                    return s;
                }
                if n == seen {
                    // Nothing new arrived: peek would return at once again.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                seen = n;
                if tokio::time::Instant::now() >= deadline {
                    return Sniffed::Tcp;
                }
            }
            _ => return Sniffed::Tcp,
        }
    }
}

/// The connection back for HTTP serving, with where it was going when it was redirected;
/// `None` when it was redirected and is not HTTP (then it has been proxied as TCP by the
/// time this returns).
pub async fn claim(
    proxy: &Arc<Proxy>,
    worker: &Arc<Worker>,
    dir: Direction,
    sock: TcpStream,
    peer: SocketAddr,
) -> Option<(TcpStream, Option<SocketAddr>)> {
    let Some(original) = crate::capture::original_dst::redirected(&sock) else { return Some((sock, None)) };
    match sniff(&sock).await {
        Sniffed::Http => Some((sock, Some(original))),
        Sniffed::Tcp => {
            super::tcp::proxy(proxy, worker, dir, sock, peer, original).await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_tell_http_from_tcp() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Sniffed::Http));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Some(Sniffed::Http));
        assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Some(Sniffed::Http));
        // A prefix of a method waits for more.
        assert_eq!(classify(b"PO"), None);
        assert_eq!(classify(b"PRI * "), None);
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"ping\n"), Some(Sniffed::Tcp));
        assert_eq!(classify(b"GETX"), Some(Sniffed::Tcp));
        assert_eq!(classify(&[0x16, 0x03, 0x01]), Some(Sniffed::Tcp), "TLS is TCP here");
    }

    #[tokio::test]
    async fn a_silent_caller_is_taken_for_tcp_after_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (sock, _) = listener.accept().await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(sniff(&sock).await, Sniffed::Tcp);
        assert!(started.elapsed() >= DETECTION_TIMEOUT);
        // Bytes trickling in: "GE" then "T /" is HTTP, and nothing was consumed.
        client.try_write(b"GE").unwrap();
        let sniffing = tokio::spawn(async move {
            let s = sniff(&sock).await;
            (s, sock)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.try_write(b"T / HTTP/1.1\r\n").unwrap();
        let (s, sock) = sniffing.await.unwrap();
        assert_eq!(s, Sniffed::Http);
        let mut buf = [0u8; 4];
        sock.peek(&mut buf).await.unwrap();
        assert_eq!(&buf, b"GET ");
    }
}
