//! A small recording HTTP(S) server the fakes are built on: it keeps every request it got
//! (method, path, version, headers, body) for the test's assertions and answers with what a
//! [`Handler`] says, which may be to stall.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::tls::TestPki;

/// Which HTTP versions a TLS server offers by ALPN (and speaks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `http/1.1` only.
    Http1,
    /// `h2` only: a client that cannot negotiate it fails the handshake, one that sends
    /// HTTP/1.1 anyway gets the connection closed (APNs).
    Http2,
    /// `h2` and `http/1.1`, the client's pick.
    Both,
}

/// One request as the server got it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When its body had arrived (benchmarks time pushes by it).
    pub at: std::time::Instant,
}

impl Recorded {
    /// A header's value as text, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// What the server answers to one request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Wait this long before answering (a stall is a very long one).
    pub delay: Option<Duration>,
}

impl Answer {
    /// `status` with an empty body.
    pub fn status(status: u16) -> Self {
        Answer {
            status: StatusCode::from_u16(status).expect("a valid status code"),
            headers: Vec::new(),
            body: Bytes::new(),
            delay: None,
        }
    }

    /// `200` with an empty body.
    pub fn ok() -> Self {
        Answer::status(200)
    }

    /// `status` with a JSON body.
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Answer::status(status)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    /// Never answers (within any test's patience).
    pub fn stall() -> Self {
        Answer::ok().delayed(Duration::from_secs(3600))
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

/// Decides the answer to a request (already recorded).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: &Recorded) -> Answer;
}

impl<F> Handler for F
where
    F: Fn(&Recorded) -> Answer + Send + Sync + 'static,
{
    fn handle(&self, req: &Recorded) -> Answer {
        self(req)
    }
}

/// A handler that answers from a queue, then with a default.
pub struct Scripted {
    queue: Mutex<VecDeque<Answer>>,
    default: Mutex<Answer>,
}

impl Scripted {
    pub fn new(default: Answer) -> Arc<Self> {
        Arc::new(Scripted {
            queue: Mutex::new(VecDeque::new()),
            default: Mutex::new(default),
        })
    }

    /// The answer to the next request not answered from the queue yet.
    pub fn push(&self, answer: Answer) {
        self.queue.lock().push_back(answer);
    }

    pub fn set_default(&self, answer: Answer) {
        *self.default.lock() = answer;
    }
}

impl Handler for Scripted {
    fn handle(&self, _req: &Recorded) -> Answer {
        let next = self.queue.lock().pop_front();
        next.unwrap_or_else(|| self.default.lock().clone())
    }
}

/// A running server; stops (with its connections) when dropped.
pub struct FakeServer {
    addr: SocketAddr,
    scheme: &'static str,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
    /// Dropped with the server: ends the delays of answers still pending (HTTP/2 serves each
    /// request on its own task, which aborting the connections does not reach).
    _shutdown: tokio::sync::watch::Sender<()>,
}

impl FakeServer {
    /// An HTTPS server on 127.0.0.1 with the PKI's server certificate.
    pub async fn https(
        pki: &TestPki,
        alpn: Alpn,
        handler: Arc<dyn Handler>,
    ) -> std::io::Result<Self> {
        let protocols: &[&[u8]] = match alpn {
            Alpn::Http1 => &[b"http/1.1"],
            Alpn::Http2 => &[b"h2"],
            Alpn::Both => &[b"h2", b"http/1.1"],
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config(protocols));
        Self::start(Some((acceptor, alpn)), handler).await
    }

    /// A plain HTTP server on 127.0.0.1 (HTTP/1.1, or HTTP/2 with prior knowledge).
    pub async fn http(handler: Arc<dyn Handler>) -> std::io::Result<Self> {
        Self::start(None, handler).await
    }

    async fn start(
        tls: Option<(tokio_rustls::TlsAcceptor, Alpn)>,
        handler: Arc<dyn Handler>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let recorded = requests.clone();
        let (shutdown, stopping) = tokio::sync::watch::channel(());
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it (on drop) aborts every connection too.
            let mut connections = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                };
                let Ok((tcp, _)) = accepted else { continue };
                let handler = handler.clone();
                let recorded = recorded.clone();
                let tls = tls.clone();
                let stopping = stopping.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        serve(req, handler.clone(), recorded.clone(), stopping.clone())
                    });
                    match tls {
                        Some((acceptor, alpn)) => {
                            // A failed handshake (unknown CA at the client, no common ALPN)
                            // just ends the connection, as a real server's would.
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let io = TokioIo::new(stream);
                            match alpn {
                                Alpn::Http2 => {
                                    let _ = hyper::server::conn::http2::Builder::new(
                                        TokioExecutor::new(),
                                    )
                                    .serve_connection(io, service)
                                    .await;
                                }
                                Alpn::Http1 => {
                                    let _ = hyper::server::conn::http1::Builder::new()
                                        .serve_connection(io, service)
                                        .await;
                                }
                                Alpn::Both => {
                                    let _ = hyper_util::server::conn::auto::Builder::new(
                                        TokioExecutor::new(),
                                    )
                                    .serve_connection(io, service)
                                    .await;
                                }
                            }
                        }
                        None => {
                            let _ =
                                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(tcp), service)
                                    .await;
                        }
                    }
                });
            }
        });
        Ok(FakeServer {
            addr,
            scheme,
            requests,
            task,
            _shutdown: shutdown,
        })
    }

    /// `https://127.0.0.1:port` (or `http://`).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// `https://localhost:port` (or `http://`).
    pub fn localhost_url(&self) -> String {
        format!("{}://localhost:{}", self.scheme, self.addr.port())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().clone()
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().len()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    req: http::Request<Incoming>,
    handler: Arc<dyn Handler>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    mut stopping: tokio::sync::watch::Receiver<()>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let (head, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let request = Recorded {
        method: head.method,
        path: head
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned()),
        version: head.version,
        headers: head.headers,
        body,
        at: std::time::Instant::now(),
    };
    recorded.lock().push(request.clone());
    let answer = handler.handle(&request);
    if let Some(delay) = answer.delay {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopping.changed() => {}
        }
    }
    let mut response = http::Response::new(Full::new(answer.body));
    *response.status_mut() = answer.status;
    for (name, value) in &answer.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}
