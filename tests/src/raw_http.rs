//! HTTP/1.1 as bytes on a socket, for tests whose subject is the wire itself: an app that
//! records each request exactly as it arrived and answers what the test tells it, a
//! client that sends any bytes and reads responses back, and `mixr-proxy` started under a
//! wrapper command (`prlimit`, to run it short of file descriptors).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a read waits before a test gives up on it.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One request as the app received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request line and fields, as sent (without the blank line).
    pub head: String,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Received {
    /// The request target of the request line.
    pub fn target(&self) -> &str {
        self.head.lines().next().and_then(|l| l.split(' ').nth(1)).unwrap_or("")
    }

    /// Every value of the field `name` (any case), in order.
    pub fn fields(&self, name: &str) -> Vec<String> {
        fields(&self.head, name)
    }
}

fn fields(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

type Answer = Arc<dyn Fn(&Received) -> Vec<u8> + Send + Sync>;

/// An app on a free loopback port, answering each request with what `answer` returns
/// (a whole response, bytes as they go on the wire). After a `101` it holds the
/// connection without reading HTTP from it.
#[derive(Clone)]
pub struct RawApp {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl RawApp {
    pub async fn start(answer: impl Fn(&Received) -> Vec<u8> + Send + Sync + 'static) -> RawApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind raw app");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer: Answer = Arc::new(answer);
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve_app(sock, answer.clone(), log.clone()));
            }
        });
        RawApp { addr, seen }
    }

    /// Answers `200 OK` with a body naming the target.
    pub async fn ok() -> RawApp {
        RawApp::start(|r| ok_response(&format!("saw {}", r.target()))).await
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Received {
        self.received().pop().expect("the app received a request")
    }
}

/// A `200 OK` with `body`.
pub fn ok_response(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

async fn serve_app(mut sock: TcpStream, answer: Answer, seen: Arc<Mutex<Vec<Received>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_head(&mut sock, &mut buf, None).await else { return };
        let head = String::from_utf8_lossy(&buf[..end - 4]).to_string();
        buf.drain(..end);
        let body = match read_body(&mut sock, &mut buf, &head, false).await {
            Some((body, _)) => body,
            None => {
                // What arrived before the connection ended is still what the app got.
                seen.lock().unwrap().push(Received { head, body: Vec::new() });
                return;
            }
        };
        let received = Received { head, body };
        let response = answer(&received);
        seen.lock().unwrap().push(received);
        if sock.write_all(&response).await.is_err() {
            return;
        }
        if response.starts_with(b"HTTP/1.1 101") {
            let mut sink = [0u8; 1024];
            while matches!(sock.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
    }
}

/// Reads until `buf` holds a whole head; returns where it ends (after the blank line).
/// `None` when the peer closed or `deadline` passed first.
async fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>, deadline: Option<Instant>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        if !read_more(sock, buf, deadline).await {
            return None;
        }
    }
}

async fn read_more(sock: &mut TcpStream, buf: &mut Vec<u8>, deadline: Option<Instant>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    let read = match deadline {
        Some(d) => match tokio::time::timeout_at(d.into(), sock.read(&mut chunk)).await {
            Ok(r) => r,
            Err(_) => return false,
        },
        None => sock.read(&mut chunk).await,
    };
    match read {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Reads the body a head announces from `buf` and the socket: its length, chunks (with
/// the trailer block, returned as text) or, for a response without either, up to the
/// close. `None` when the connection ended or the read timed out first.
async fn read_body(sock: &mut TcpStream, buf: &mut Vec<u8>, head: &str, response: bool) -> Option<(Vec<u8>, String)> {
    let deadline = Some(Instant::now() + READ_TIMEOUT);
    let chunked = fields(head, "transfer-encoding").iter().any(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = fields(head, "content-length").first().and_then(|v| v.parse::<usize>().ok());
    if chunked {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                if !read_more(sock, buf, deadline).await {
                    return None;
                }
            };
            let line = String::from_utf8_lossy(&buf[..line_end]).to_string();
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).ok()?;
            buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers, up to the blank line.
                let end = loop {
                    if buf.starts_with(b"\r\n") {
                        break 2;
                    }
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    if !read_more(sock, buf, deadline).await {
                        return None;
                    }
                };
                let trailers = String::from_utf8_lossy(&buf[..end]).trim().to_string();
                buf.drain(..end);
                return Some((body, trailers));
            }
            while buf.len() < size + 2 {
                if !read_more(sock, buf, deadline).await {
                    return None;
                }
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    }
    match length {
        Some(n) => {
            while buf.len() < n {
                if !read_more(sock, buf, deadline).await {
                    return None;
                }
            }
            Some((buf.drain(..n).collect(), String::new()))
        }
        None if response => {
            while read_more(sock, buf, deadline).await {}
            Some((std::mem::take(buf), String::new()))
        }
        None => Some((Vec::new(), String::new())),
    }
}

/// A response as the client read it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The status line and fields (without the blank line).
    pub head: String,
    pub body: Vec<u8>,
    /// The trailer block of a chunked body, as text.
    pub trailers: String,
}

impl Response {
    pub fn fields(&self, name: &str) -> Vec<String> {
        fields(&self.head, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// A client connection speaking raw bytes.
pub struct Client {
    pub sock: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: &str) -> Client {
        Client { sock: TcpStream::connect(addr).await.expect("connect"), buf: Vec::new() }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.expect("send");
    }

    /// Reads one response; `None` when the connection closed (or nothing came within
    /// 5 s). `head_request`: the response to a HEAD, which has no body.
    pub async fn response(&mut self, head_request: bool) -> Option<Response> {
        let deadline = Instant::now() + READ_TIMEOUT;
        let end = read_head(&mut self.sock, &mut self.buf, Some(deadline)).await?;
        let head = String::from_utf8_lossy(&self.buf[..end - 4]).to_string();
        self.buf.drain(..end);
        let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
        let (body, trailers) = if head_request || status < 200 || status == 204 || status == 304 {
            (Vec::new(), String::new())
        } else {
            read_body(&mut self.sock, &mut self.buf, &head, true).await?
        };
        Some(Response { status, head, body, trailers })
    }

    /// Sends `bytes` and reads one response.
    pub async fn exchange(&mut self, bytes: &[u8]) -> Option<Response> {
        self.send(bytes).await;
        self.response(bytes.starts_with(b"HEAD ")).await
    }

    /// Whether the peer closes the connection (or resets it) within `within`, whatever
    /// it sends first; the bytes it sent are returned either way.
    pub async fn closed_within(&mut self, within: Duration) -> (bool, String) {
        let deadline = tokio::time::Instant::now() + within;
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.sock.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (true, String::from_utf8_lossy(&self.buf).to_string()),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return (false, String::from_utf8_lossy(&self.buf).to_string()),
            }
        }
    }
}

/// Opens a connection, sends `bytes` and reads one response.
pub async fn exchange(addr: &str, bytes: &[u8]) -> Option<Response> {
    Client::connect(addr).await.exchange(bytes).await
}

/// A `mixr-proxy` started under a wrapper command. Killed on drop if still running.
pub struct WrappedProxy {
    child: Child,
    pub outbound: String,
    pub inbound: String,
    pub admin: String,
    pub stats: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl WrappedProxy {
    /// Runs `wrapper... mixr-proxy --config <paths> <extra...>` on free loopback ports
    /// and waits (at most 20 s) until it listens.
    pub fn start(wrapper: &[&str], config: &[&Path], extra: &[&str]) -> WrappedProxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr_file = dir.path().join("addrs");
        let log = dir.path().join("proxy.log");
        let (program, args) = wrapper.split_first().expect("a wrapper command");
        let mut cmd = Command::new(program);
        cmd.args(args).arg(crate::binary("mixr-proxy"));
        for flag in ["--outbound-addr", "--inbound-addr", "--admin-addr", "--stats-addr"] {
            cmd.arg(flag).arg("127.0.0.1:0");
        }
        cmd.arg("--addr-file").arg(&addr_file);
        for c in config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(extra).stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = cmd.spawn().expect("start the wrapped mixr-proxy");
        let deadline = Instant::now() + Duration::from_secs(20);
        let text = loop {
            if let Ok(t) = std::fs::read_to_string(&addr_file) {
                break t;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mixr-proxy exited with {status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "mixr-proxy did not start listening in time");
            std::thread::sleep(Duration::from_millis(20));
        };
        let field = |k: &str| {
            text.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).unwrap_or_else(|| panic!("no {k}")).to_string()
        };
        WrappedProxy {
            outbound: field("outbound"),
            inbound: field("inbound"),
            admin: field("admin"),
            stats: field("stats"),
            child,
            log,
            _dir: dir,
        }
    }

    /// The process id of the proxy (the wrapper `exec`s it, as `prlimit` does).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// User plus system CPU time the process has used, from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
        // The kernel's USER_HZ, 100 on Linux.
        Duration::from_millis(ticks * 10)
    }
}

impl Drop for WrappedProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
