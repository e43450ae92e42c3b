//! A tiny HTTP/1.1 GET over a raw TcpStream (for /healthz and /readyz).

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

/// `GET path` with `Connection: close`; reads until the server closes (or 10 s pass).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: chat-tests\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        // Read until EOF; fall back to Content-Length if the server keeps the socket open.
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                if let Some(len) = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                {
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
        }
        parse(&buf)
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), fut)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "http_get timed out"))?
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse(buf: &[u8]) -> std::io::Result<HttpResponse> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = find(buf, b"\r\n\r\n").ok_or_else(|| {
        bad(&format!(
            "no end of headers in response: {:?}",
            String::from_utf8_lossy(buf)
        ))
    })?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad(&format!(
            "not an HTTP/1.x status line: {status_line:?}"
        )));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(&format!("bad status line {status_line:?}")))?;
    Ok(HttpResponse {
        status,
        head,
        body: buf[end + 4..].to_vec(),
    })
}
