//! The accept loop's guards. At most `max` connections at once: every connection is a file
//! descriptor, and so is every file the store opens; a node that accepted connections until the
//! process ran out of descriptors would fail its store too. Past the limit, new connections wait
//! in the kernel's backlog until one closes.
//!
//! And `--max-connections-per-ip-per-sec`: a connection that comes over its remote address's
//! rate is still accepted, but marked ([`PeerInfo::over_rate`]), so that its requests can be
//! refused with a status that names the limit (`transport::limits`) rather than a reset the
//! client cannot tell from a network failure; it is closed [`OVER_RATE_LINGER`] after it was
//! accepted, so a flood holds no more descriptors than the rate lets through.

use crate::domain::limits::{Buckets, Limit};
use futures_util::Stream;
use std::{
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

/// Descriptors kept free for the store, logs and the like.
const RESERVED_FDS: u64 = 256;
/// How long a connection over the per-address rate stays open: time to send its requests and
/// read their refusals.
pub const OVER_RATE_LINGER: Duration = Duration::from_secs(10);
/// How often the per-address buckets that refilled are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How many connections fit in this process's open-file limit.
pub fn connection_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    };
    soft.saturating_sub(RESERVED_FDS).max(16) as usize
}

/// What the servers learn of a connection: tonic's server (and the WebSocket handshake server,
/// `ws/upgrades.rs`) put it in the extensions of each request that comes on it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// `Some(limit)`: the connection came over `--max-connections-per-ip-per-sec` (= `limit`),
    /// and its requests are to be refused.
    pub over_rate: Option<u32>,
}

impl PeerInfo {
    /// The connection a request came on, when a server of this node put it there.
    pub fn of(extensions: &axum::http::Extensions) -> Option<&PeerInfo> {
        extensions.get::<PeerInfo>()
    }

    /// The refusal of a request on a connection over the per-address rate, if it is one.
    pub fn refusal(&self) -> Option<crate::Error> {
        let limit = self.over_rate?;
        Some(Limit::ConnectionsPerIp.refusal(limit, "too many new connections from this address"))
    }
}

/// New connections per remote address per second, in bursts of up to twice that.
pub struct ConnectionRate {
    per_sec: u32,
    buckets: Buckets<IpAddr>,
}

impl ConnectionRate {
    /// `None` when `per_sec` is 0 (no limit).
    pub fn new(per_sec: u32) -> Option<ConnectionRate> {
        (per_sec > 0).then(|| ConnectionRate {
            per_sec,
            buckets: Buckets::new(per_sec, per_sec.saturating_mul(2)),
        })
    }

    /// Whether a new connection from `ip` at `now` is within the rate (and counts it).
    pub fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        self.buckets.take(rate_key(ip), now).is_ok()
    }

    pub fn sweep(&self, now: Instant) -> usize {
        self.buckets.sweep(now)
    }
}

/// Whose bucket a connection from `ip` takes from: an IPv4 address (also when mapped into
/// IPv6), or an IPv6 address's /64, which is what one host or household is given: a client
/// that rotates addresses inside its /64 gains nothing.
fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// The standard health service: its checks are answered on a connection over the rate too
/// (probes share an address with everything else behind a NAT or on a node, and a refused probe
/// would make the node look dead), as are the plain HTTP probes and metrics, which this does
/// not guard.
const HEALTH_SERVICE: &str = "/grpc.health.v1.Health/";

/// Middleware on the gRPC routes (inside gRPC-web, which translates the status for browsers):
/// every call on a connection over the per-address rate is refused with RESOURCE_EXHAUSTED
/// naming the limit.
pub async fn refuse_over_rate(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(e) = PeerInfo::of(req.extensions()).and_then(PeerInfo::refusal) {
        if !req.uri().path().starts_with(HEALTH_SERVICE) {
            return super::status::status(&e).into_http();
        }
    }
    next.run(req).await
}

/// An accepted connection: gives its slot back when it closes.
pub struct Limited {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    peer: PeerInfo,
    /// When a connection over the rate reads as closed.
    closes: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Accepted connections, at most `max` open at once; `TCP_NODELAY` on each; with `rate`, the
/// ones over it marked.
pub fn incoming(
    listener: TcpListener,
    max: usize,
    rate: Option<ConnectionRate>,
) -> impl Stream<Item = io::Result<Limited>> {
    let slots = Arc::new(Semaphore::new(max));
    let state = (listener, slots, rate, Instant::now());
    futures_util::stream::unfold(state, |(listener, slots, rate, mut swept)| async move {
        let slot = match slots.clone().acquire_owned().await {
            Ok(slot) => slot,
            Err(_) => return None,
        };
        let item = listener.accept().await.map(|(stream, remote)| {
            let _ = stream.set_nodelay(true);
            let now = Instant::now();
            let over_rate = match &rate {
                Some(rate) => {
                    if now.saturating_duration_since(swept) >= SWEEP_EVERY {
                        rate.sweep(now);
                        swept = now;
                    }
                    (!rate.admit(remote.ip(), now)).then_some(rate.per_sec)
                }
                None => None,
            };
            if let Some(limit) = over_rate {
                tracing::debug!(
                    ip = %remote.ip(),
                    limit,
                    "connection over --max-connections-per-ip-per-sec: its requests are refused"
                );
            }
            Limited {
                stream,
                _slot: slot,
                closes: over_rate.map(|_| Box::pin(tokio::time::sleep(OVER_RATE_LINGER))),
                peer: PeerInfo {
                    remote: Some(remote),
                    over_rate,
                },
            }
        });
        Some((item, (listener, slots, rate, swept)))
    })
}

impl Connected for Limited {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // A connection over the rate ends as if the client had closed it.
        if let Some(closes) = self.closes.as_mut() {
            if closes.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_bucket_and_ipv6_hosts_share_their_64() {
        let rate = ConnectionRate::new(2).unwrap();
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..4 {
            assert!(rate.admit(a, t0), "a burst of twice the rate");
        }
        assert!(!rate.admit(a, t0));
        assert!(rate.admit("192.0.2.2".parse().unwrap(), t0));
        // The same IPv4 address mapped into IPv6 is the same client.
        assert!(!rate.admit("::ffff:192.0.2.1".parse().unwrap(), t0));
        assert!(
            rate.admit(a, t0 + Duration::from_millis(500)),
            "2 per second"
        );
        assert!(!rate.admit(a, t0 + Duration::from_millis(500)));

        let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
        for i in 0..4 {
            assert!(rate.admit(v6(&format!("2001:db8:1:2::{i}")), t0));
        }
        assert!(!rate.admit(v6("2001:db8:1:2:ffff::9"), t0), "same /64");
        assert!(rate.admit(v6("2001:db8:1:3::1"), t0), "another /64");
        assert_eq!(rate_key(v6("2001:db8:1:2:aa::1")), v6("2001:db8:1:2::"));
        assert!(ConnectionRate::new(0).is_none(), "0: no limit");
    }

    #[test]
    fn a_connection_over_the_rate_is_refused_naming_the_limit() {
        let peer = PeerInfo {
            remote: None,
            over_rate: Some(20),
        };
        let e = peer.refusal().unwrap();
        assert_eq!(
            e.to_string(),
            "too many new connections from this address: the limit is 20 per second \
             (--max-connections-per-ip-per-sec)"
        );
        let fine = PeerInfo {
            remote: None,
            over_rate: None,
        };
        assert!(fine.refusal().is_none());
    }
}
