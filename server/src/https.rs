//! The node's outbound HTTPS client (rustls, HTTP/1.1 and HTTP/2, an extra CA for tests): the
//! push providers and the identity provider's key set (`auth::idp`) are fetched with it.
//!
//! One [`HttpClient`] per use: its connection pool is what makes a burst of pushes cheap (one
//! TLS handshake per provider host, HTTP/2 streams multiplexed on it). Every request is bounded
//! by one timeout that covers connecting, the handshake, the answer's head and its body, and an
//! answer's body is read up to [`MAX_BODY`] only: providers answer in a few hundred bytes and a
//! key set in a few kilobytes, so a larger body is cut rather than buffered.

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How much of an answer's body is kept.
pub const MAX_BODY: usize = 64 * 1024;

/// An HTTP/2 connection (busy or idle in the pool) is pinged this often, so a dead one (NAT, load
/// balancer) is noticed before a push waits on it: APNs wants long-lived connections.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(60);

/// How the client reaches its servers.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// A PEM file of CA certificates trusted besides the public roots (the fakes' test CA, a
    /// corporate proxy's CA, a private identity provider's CA).
    pub extra_ca_pem: Option<PathBuf>,
    /// The bound on one request: connect, TLS, the answer's head and body.
    pub timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            extra_ca_pem: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why a request got no answer. Every variant is a transport failure (worth a retry) except
/// [`HttpError::Config`] and [`HttpError::Request`], which no retry fixes.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("reading the extra CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the extra CA file {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("building the TLS client: {0}")]
    Tls(#[source] rustls::Error),
    #[error("the request cannot be sent: {0}")]
    Request(String),
    #[error("connecting to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("TLS with {host}: {reason}")]
    Handshake { host: String, reason: String },
    #[error("no answer from {host} within {timeout:?}")]
    Timeout { host: String, timeout: Duration },
    #[error("HTTP with {host}: {reason}")]
    Protocol { host: String, reason: String },
}

impl HttpError {
    /// A failure of the network or the peer, not of this request or this node's setup: a later
    /// attempt may get through.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            HttpError::CaFile { .. }
                | HttpError::Config { .. }
                | HttpError::Tls(_)
                | HttpError::Request(_)
        )
    }
}

/// A server's answer, its body cut at [`MAX_BODY`].
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// The shared, pooled client; cloning shares the pool.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// HTTP/1.1 or HTTP/2, whichever the server picks by ALPN.
    pub fn new(cfg: &HttpConfig) -> Result<Self, HttpError> {
        Self::build(cfg, false)
    }

    /// HTTP/2 only (ALPN offers `h2` alone): APNs speaks nothing else.
    pub fn http2_only(cfg: &HttpConfig) -> Result<Self, HttpError> {
        Self::build(cfg, true)
    }

    fn build(cfg: &HttpConfig, h2_only: bool) -> Result<Self, HttpError> {
        let tls = tls_config(cfg.extra_ca_pem.as_deref())?;
        let mut tcp = HttpConnector::new();
        // The connector would refuse https URLs otherwise; TLS is the wrapper's job.
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(cfg.timeout));
        let schemes = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = if h2_only {
            schemes.enable_http2().wrap_connector(tcp)
        } else {
            schemes.enable_http1().enable_http2().wrap_connector(tcp)
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .http2_keep_alive_interval(H2_KEEP_ALIVE)
            .http2_keep_alive_timeout(Duration::from_secs(20))
            .http2_keep_alive_while_idle(true);
        if h2_only {
            builder.http2_only(true);
        }
        Ok(HttpClient {
            client: builder.build(connector),
            timeout: cfg.timeout,
        })
    }

    /// Sends `req` and reads the answer, all within the configured timeout.
    pub async fn send(&self, req: http::Request<Bytes>) -> Result<Reply, HttpError> {
        let host = req.uri().host().unwrap_or_default().to_owned();
        match req.uri().scheme_str() {
            Some("https") | Some("http") => {}
            _ => {
                return Err(HttpError::Request(format!(
                    "not an http(s) URL: {}",
                    req.uri()
                )))
            }
        }
        let req = req.map(Full::new);
        match tokio::time::timeout(self.timeout, self.exchange(req, &host)).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout {
                host,
                timeout: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        req: http::Request<Full<Bytes>>,
        host: &str,
    ) -> Result<Reply, HttpError> {
        let response = self
            .client
            .request(req)
            .await
            .map_err(|e| classify(&e, host))?;
        let (head, mut body) = response.into_parts();
        let mut kept = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| HttpError::Protocol {
                host: host.to_owned(),
                reason: chain(&e),
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let room = MAX_BODY - kept.len();
            if data.len() > room {
                kept.extend_from_slice(&data[..room]);
                // Dropping the rest of the body closes the stream (or the HTTP/1.1 connection):
                // an oversized answer costs no more memory than a full one.
                tracing::debug!(host, limit = MAX_BODY, "HTTP answer cut");
                break;
            }
            kept.extend_from_slice(&data);
        }
        Ok(Reply {
            status: head.status,
            headers: head.headers,
            body: kept.freeze(),
        })
    }
}

/// Mozilla's roots (webpki-roots) plus the extra CA file's certificates, TLS 1.2 and 1.3 with
/// ring.
fn tls_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, HttpError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca {
        let pem = std::fs::read(path).map_err(|source| HttpError::CaFile {
            path: path.to_owned(),
            source,
        })?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| HttpError::Config {
                path: path.to_owned(),
                reason: format!("not PEM certificates: {e}"),
            })?;
        if certs.is_empty() {
            return Err(HttpError::Config {
                path: path.to_owned(),
                reason: "no CERTIFICATE block".to_owned(),
            });
        }
        for cert in certs {
            roots.add(cert).map_err(|e| HttpError::Config {
                path: path.to_owned(),
                reason: format!("a certificate is not a usable CA: {e}"),
            })?;
        }
    }
    let provider = ring_provider();
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(HttpError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Sorts a client error into connect / TLS / protocol by what caused it.
fn classify(err: &hyper_util::client::legacy::Error, host: &str) -> HttpError {
    let host = host.to_owned();
    let reason = chain(err);
    if caused_by_tls(err) {
        HttpError::Handshake { host, reason }
    } else if err.is_connect() {
        HttpError::Connect { host, reason }
    } else {
        HttpError::Protocol { host, reason }
    }
}

fn caused_by_tls(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        // tokio-rustls hands a TLS failure up as an io::Error, which the connector wraps in
        // another; io::Error's `source` skips the error it wraps, so each is opened by hand.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            next = Some(inner);
            continue;
        }
        next = e.source();
    }
    false
}

/// The error and its causes on one line (hyper's top-level messages alone say little).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = e.source();
    }
    text
}

/// rustls with ring, as the project chose (not aws-lc-rs). rustls 0.23.48 deprecates ring's
/// provider because it lacks the post-quantum key exchange (X25519MLKEM768, aws-lc-rs only);
/// classic X25519 is what the push services, identity providers and the fakes negotiate today.
#[allow(deprecated)]
fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;
    use push_fakes::server::{Alpn, Answer, FakeServer, Scripted};
    use push_fakes::tls::TestPki;
    use std::time::Instant;

    /// A config trusting `pki`'s CA, and the directory holding its file.
    fn trusting(pki: &TestPki, timeout: Duration) -> (tempfile::TempDir, HttpConfig) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        pki.write_ca_pem(&path).unwrap();
        let cfg = HttpConfig {
            extra_ca_pem: Some(path),
            timeout,
        };
        (dir, cfg)
    }

    fn post(url: &str, body: &'static str) -> http::Request<Bytes> {
        http::Request::post(url)
            .header("content-type", "text/plain")
            .header("x-test", "yes")
            .body(Bytes::from_static(body.as_bytes()))
            .unwrap()
    }

    #[tokio::test]
    async fn the_extra_ca_is_trusted_and_alpn_picks_the_version() {
        let pki = TestPki::shared();
        let (_dir, cfg) = trusting(pki, Duration::from_secs(5));
        let both = FakeServer::https(
            pki,
            Alpn::Both,
            Scripted::new(Answer::status(202).body("fine")),
        )
        .await
        .unwrap();
        let h1 = FakeServer::https(pki, Alpn::Http1, Scripted::new(Answer::ok()))
            .await
            .unwrap();
        let client = HttpClient::new(&cfg).unwrap();

        let reply = client
            .send(post(&format!("{}/a?b=c", both.url()), "hello"))
            .await
            .unwrap();
        assert_eq!(reply.status, http::StatusCode::ACCEPTED);
        assert_eq!(reply.body, Bytes::from_static(b"fine"));
        let got = both.requests();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].method, http::Method::POST);
        assert_eq!(got[0].path, "/a?b=c");
        assert_eq!(got[0].version, http::Version::HTTP_2, "h2 is offered first");
        assert_eq!(got[0].header("x-test"), Some("yes"));
        assert_eq!(got[0].body, Bytes::from_static(b"hello"));

        // The certificate names localhost too.
        client
            .send(post(&format!("{}/x", h1.localhost_url()), ""))
            .await
            .unwrap();
        assert_eq!(h1.requests()[0].version, http::Version::HTTP_11);
    }

    #[tokio::test]
    async fn an_unknown_ca_is_a_tls_error() {
        let pki = TestPki::shared();
        let server = FakeServer::https(pki, Alpn::Both, Scripted::new(Answer::ok()))
            .await
            .unwrap();
        let public_roots_only = HttpClient::new(&HttpConfig {
            extra_ca_pem: None,
            timeout: Duration::from_secs(5),
        })
        .unwrap();
        let err = public_roots_only
            .send(post(&server.url(), ""))
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Handshake { .. }), "{err:?}");
        assert!(err.is_transient());

        let other = TestPki::generate();
        let (_dir, cfg) = trusting(&other, Duration::from_secs(5));
        let err = HttpClient::new(&cfg)
            .unwrap()
            .send(post(&server.url(), ""))
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Handshake { .. }), "{err:?}");
        assert_eq!(server.request_count(), 0);
    }

    #[tokio::test]
    async fn a_stalled_answer_times_out() {
        let pki = TestPki::shared();
        let (_dir, cfg) = trusting(pki, Duration::from_millis(300));
        let script = Scripted::new(Answer::ok());
        script.push(Answer::stall());
        let server = FakeServer::https(pki, Alpn::Both, script).await.unwrap();
        let client = HttpClient::new(&cfg).unwrap();
        let started = Instant::now();
        let err = client.send(post(&server.url(), "")).await.unwrap_err();
        assert!(matches!(err, HttpError::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
        // The next request is answered (the stall was one request's).
        let reply = client.send(post(&server.url(), "")).await.unwrap();
        assert_eq!(reply.status, http::StatusCode::OK);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_transient_connect_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = HttpClient::new(&HttpConfig::default()).unwrap();
        let err = client
            .send(post(&format!("https://127.0.0.1:{port}/"), ""))
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Connect { .. }), "{err:?}");
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn a_large_body_is_cut() {
        let pki = TestPki::shared();
        let (_dir, cfg) = trusting(pki, Duration::from_secs(5));
        let big = vec![b'x'; 3 * MAX_BODY];
        let server = FakeServer::https(pki, Alpn::Http1, Scripted::new(Answer::ok().body(big)))
            .await
            .unwrap();
        let reply = HttpClient::new(&cfg)
            .unwrap()
            .send(post(&server.url(), ""))
            .await
            .unwrap();
        assert_eq!(reply.body.len(), MAX_BODY);
    }

    #[tokio::test]
    async fn http2_only_refuses_a_server_without_h2() {
        let pki = TestPki::shared();
        let (_dir, cfg) = trusting(pki, Duration::from_secs(5));
        let client = HttpClient::http2_only(&cfg).unwrap();
        let h1 = FakeServer::https(pki, Alpn::Http1, Scripted::new(Answer::ok()))
            .await
            .unwrap();
        let err = client.send(post(&h1.url(), "")).await.unwrap_err();
        assert!(matches!(err, HttpError::Handshake { .. }), "{err:?}");
        assert_eq!(h1.request_count(), 0);

        let h2 = FakeServer::https(pki, Alpn::Http2, Scripted::new(Answer::ok()))
            .await
            .unwrap();
        client.send(post(&h2.url(), "")).await.unwrap();
        assert_eq!(h2.requests()[0].version, http::Version::HTTP_2);
    }

    #[tokio::test]
    async fn plain_http_works() {
        let script = Scripted::new(Answer::ok());
        script.push(Answer::status(429).header("retry-after", "2"));
        let server = FakeServer::http(script).await.unwrap();
        let client = HttpClient::new(&HttpConfig::default()).unwrap();
        let reply = client.send(post(&server.url(), "x")).await.unwrap();
        assert_eq!(reply.status, http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reply.headers.get("retry-after").unwrap(), "2");
    }

    #[tokio::test]
    async fn a_bad_ca_file_or_url_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = HttpConfig {
            extra_ca_pem: Some(dir.path().join("nope.pem")),
            timeout: Duration::from_secs(1),
        };
        assert!(matches!(
            HttpClient::new(&missing),
            Err(HttpError::CaFile { .. })
        ));
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let empty = HttpConfig {
            extra_ca_pem: Some(path),
            timeout: Duration::from_secs(1),
        };
        let err = HttpClient::new(&empty).unwrap_err();
        assert!(matches!(err, HttpError::Config { .. }), "{err:?}");
        assert!(!err.is_transient());

        let client = HttpClient::new(&HttpConfig::default()).unwrap();
        let req = http::Request::post("ftp://example.org/")
            .body(Bytes::new())
            .unwrap();
        assert!(matches!(client.send(req).await, Err(HttpError::Request(_))));
    }
}
