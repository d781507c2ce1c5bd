//! `probe URL`: an HTTP GET that succeeds on status 200, for container health checks in
//! images without a shell or curl. Both binaries offer it. Plain `http://` only: the
//! probed ports are local.

use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Probes `url` and prints why it failed, prefixed with `program` (`mixr probe`).
pub async fn run(program: &str, url: &str, timeout: Duration) -> ExitCode {
    match tokio::time::timeout(timeout, status(url)).await {
        Ok(Ok(200)) => ExitCode::SUCCESS,
        Ok(Ok(code)) => {
            eprintln!("{program}: {url}: HTTP {code}");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("{program}: {url}: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("{program}: {url}: no answer within {timeout:?}");
            ExitCode::FAILURE
        }
    }
}

/// `http://HOST:PORT/PATH` into the address to connect to, the Host header and the path.
pub fn split_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs can be probed")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("not a valid http:// URL".into());
    }
    let address =
        if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !authority.ends_with(']') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
    Ok((address, authority.to_string(), path.to_string()))
}

async fn status(url: &str) -> Result<u16, String> {
    let (address, host, path) = split_url(url)?;
    let mut conn =
        tokio::net::TcpStream::connect(&address).await.map_err(|e| format!("cannot connect to {address}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: mixr-probe\r\n\r\n");
    conn.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = conn.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().and_then(|c| c.parse().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => Err(format!("not an HTTP answer: {:?}", line.lines().next().unwrap_or(""))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:15014/readyz").unwrap(),
            ("127.0.0.1:15014".into(), "127.0.0.1:15014".into(), "/readyz".into())
        );
        assert_eq!(split_url("http://mixr").unwrap(), ("mixr:80".into(), "mixr".into(), "/".into()));
        assert_eq!(split_url("http://[::1]:9/x").unwrap().0, "[::1]:9");
        assert!(
            split_url("https://x/").is_err() && split_url("http://u@x/").is_err() && split_url("http:///").is_err()
        );
    }
}
